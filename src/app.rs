//! Assembly: from a [`Config`] to a running service. Tests build an [`App`] on port 0.

use std::sync::Arc;

use tokio::net::TcpListener;

use crate::broker::Broker;
use crate::config::{Config, KeyProviderConfig, LogFormat};
use crate::http::{self, AppState};
use crate::idp::IdpClient;
use crate::storage::Db;
use crate::vault::{LocalKeyProvider, Vault};

/// Connects to the database and applies migrations.
pub async fn open_db(config: &Config) -> anyhow::Result<Db> {
    let db = Db::connect(&config.database_url)
        .await
        .map_err(|e| anyhow::anyhow!("DATABASE_URL: cannot open the database: {e}"))?;
    db.migrate().await?;
    Ok(db)
}

/// Opens the configured key provider (creating the local key file on first run).
pub fn open_vault(config: &Config) -> anyhow::Result<Vault> {
    match &config.key_provider {
        KeyProviderConfig::Local(path) => {
            let (provider, created) = LocalKeyProvider::open_or_create(path)?;
            if created {
                tracing::warn!(path = %path.display(), "created a new local key-encryption key (mode 0600); back it up: without it no sealed refresh token can be opened");
            }
            tracing::warn!(
                "the key-encryption key is a local file; in production use azure-keyvault so a stolen disk does not hold both the key and the data"
            );
            Ok(Vault::new(Arc::new(provider)))
        }
        KeyProviderConfig::AzureKeyVault(_) => anyhow::bail!(
            "SAMVAULT_KEY_PROVIDER: azure-keyvault is not available in this version; use local:PATH"
        ),
    }
}

/// A built service bound to its listener, ready to run.
pub struct App {
    pub state: AppState,
    listener: TcpListener,
}

impl App {
    pub async fn build(config: Config) -> anyhow::Result<App> {
        let idp = IdpClient::new(&config)?;
        let db = open_db(&config).await?;
        let vault = open_vault(&config)?;
        let broker = Broker::new(
            db.clone(),
            vault.clone(),
            idp.clone(),
            config.primary_resource(),
        );
        let listener = TcpListener::bind(config.listen).await.map_err(|e| {
            anyhow::anyhow!("SAMVAULT_LISTEN: cannot listen on {}: {e}", config.listen)
        })?;
        let state = AppState {
            config: Arc::new(config),
            db,
            vault,
            idp,
            broker,
        };
        Ok(App { state, listener })
    }

    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.listener
            .local_addr()
            .expect("bound listener has an address")
    }

    /// Serves until Ctrl-C / SIGTERM.
    pub async fn run(self) -> anyhow::Result<()> {
        let router = http::router(self.state.clone());
        tracing::info!(listen = %self.local_addr(), public_url = %self.state.config.public_url, "samvault serving");
        axum::serve(self.listener, router)
            .with_graceful_shutdown(shutdown_signal())
            .await?;
        Ok(())
    }
}

pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = terminate => {} }
}

/// Logs go to stderr, as text or JSON. Token strings never reach a log line: secrets are
/// `SecretString`s and spans skip arguments (see docs/LOGGING.md).
pub fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,tower_sessions=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
