//! Assembly: from a [`Config`] to a running service. Tests build an [`App`] on port 0.

use std::sync::Arc;

use axum::serve::ListenerExt;
use tokio::net::TcpListener;

use crate::broker::request_log::RequestLog;
use crate::broker::{Broker, BrokerSettings};
use crate::clients::ClientAuth;
use crate::config::{Config, KeyProviderConfig, LogFormat};
use crate::customers::Customers;
use crate::customers::token::CustomerTokens;
use crate::http::{self, AppState};
use crate::idp::IdpClient;
use crate::metrics::Metrics;
use crate::notify::Notifier;
use crate::rotation::liveness::Liveness;
use crate::rotation::{Scheduler, SchedulerSettings};
use crate::storage::sessions::SealedSessionStore;
use crate::storage::{Db, sealed};
use crate::vault::azure::AzureSettings;
use crate::vault::{AzureKeyVaultProvider, KeyProvider, LocalKeyProvider, Vault};

/// Connects to the database and applies migrations.
pub async fn open_db(config: &Config) -> anyhow::Result<Db> {
    let db = Db::connect(&config.server.database_url)
        .await
        .map_err(|e| anyhow::anyhow!("DATABASE_URL: cannot open the database: {e}"))?;
    db.migrate().await?;
    Ok(db)
}

/// `db` able to write to and verify the audit log: the chain's key opened with `vault`
/// (created the first time), the anchor file and checkpoints of the configuration.
pub async fn audited(db: Db, vault: &Vault, config: &Config) -> anyhow::Result<Db> {
    let settings = crate::audit_chain::Settings::from_config(config);
    Ok(crate::audit_chain::open(db, vault, &settings).await?)
}

/// Opens the configured key providers (creating the local key file on first run; asking Key
/// Vault for its key's current version): the one that wraps, and any previous ones kept to
/// unwrap older records during a migration.
pub async fn open_vault(config: &Config, db: &Db) -> anyhow::Result<Vault> {
    refuse_a_new_key_for_sealed_records(config, db).await?;
    let primary = open_key_provider(config, &config.keys.provider, true).await?;
    let mut previous = Vec::new();
    for provider in &config.keys.previous_providers {
        previous.push(open_key_provider(config, provider, false).await?);
    }
    Ok(Vault::with_previous(primary, previous))
}

/// A local key file is made on first run, not beside records another key sealed: the new key
/// would open none of them, and the stray file would pass for the right one. A move to a new
/// key names the old one in `SAMVAULT_PREVIOUS_KEY_PROVIDERS`.
async fn refuse_a_new_key_for_sealed_records(config: &Config, db: &Db) -> anyhow::Result<()> {
    let KeyProviderConfig::Local(path) = &config.keys.provider else {
        return Ok(());
    };
    if path.exists() || !config.keys.previous_providers.is_empty() {
        return Ok(());
    }
    if let Some(sealed) = sealed::count_by_kek(db).await?.first() {
        anyhow::bail!(
            "SAMVAULT_KEY_PROVIDER: key file {} does not exist, but this database holds {} sealed by key {}: \
             set SAMVAULT_KEY_PROVIDER to the key file that sealed them (a new key would open none of them)",
            path.display(),
            sealed.what,
            sealed.kek_id
        );
    }
    Ok(())
}

async fn open_key_provider(
    config: &Config,
    provider: &KeyProviderConfig,
    primary: bool,
) -> anyhow::Result<Arc<dyn KeyProvider>> {
    match provider {
        KeyProviderConfig::Local(path) => {
            if !primary && !path.exists() {
                anyhow::bail!(
                    "SAMVAULT_PREVIOUS_KEY_PROVIDERS: key file {} does not exist",
                    path.display()
                );
            }
            let (provider, created) = LocalKeyProvider::open_or_create(path)?;
            if created {
                tracing::warn!(path = %path.display(), "created a new local key-encryption key (mode 0600); back it up: without it no sealed refresh token can be opened");
            }
            if primary {
                tracing::warn!(
                    "the key-encryption key is a local file; in production use azure-keyvault so a stolen disk does not hold both the key and the data"
                );
            }
            Ok(Arc::new(provider))
        }
        KeyProviderConfig::AzureKeyVault(url) => {
            let setting = if primary {
                "SAMVAULT_KEY_PROVIDER"
            } else {
                "SAMVAULT_PREVIOUS_KEY_PROVIDERS"
            };
            // The Azure SDKs' own variables (AZURE_CLIENT_ID, …), read where they are set.
            let env = |name: &str| std::env::var(name).ok();
            let settings = AzureSettings::from_env(&env, config.keys.extra_ca_file.clone())
                .map_err(|e| anyhow::anyhow!("{setting}: {e}"))?;
            let provider = AzureKeyVaultProvider::connect(url, settings)
                .await
                .map_err(|e| anyhow::anyhow!("{setting}: Key Vault key {url}: {e}"))?;
            Ok(Arc::new(provider))
        }
    }
}

/// Everything samvault runs on, opened from a [`Config`]: what `serve` and `rotate` share.
pub struct Services {
    pub config: Arc<Config>,
    pub db: Db,
    pub vault: Vault,
    pub idp: IdpClient,
    pub broker: Broker,
    /// Access tokens in the partners' customer tenants, over the broker.
    pub customer_tokens: CustomerTokens,
    pub notifier: Notifier,
    /// Customer work (discovery, CPV consent), on the same broker and budget.
    pub customers: Customers,
    /// The process's counters, recorded by the broker, the notifier and the HTTP layer.
    pub metrics: Arc<Metrics>,
    /// Held for the process's life on SQLite: one writer process per database file.
    _sqlite_lock: Option<std::fs::File>,
}

impl Services {
    pub async fn open(config: Config) -> anyhow::Result<Services> {
        let sqlite_lock = sqlite_single_process_lock(&config)?;
        Self::assemble(config, sqlite_lock).await
    }

    /// For a short command that must work beside a running `serve` even on SQLite
    /// (`partners purge` in an emergency): no process lock. Safe because everything it writes
    /// about a partner is done under that partner's lease in the database.
    pub async fn open_beside_server(config: Config) -> anyhow::Result<Services> {
        Self::assemble(config, None).await
    }

    async fn assemble(
        config: Config,
        sqlite_lock: Option<std::fs::File>,
    ) -> anyhow::Result<Services> {
        let idp = IdpClient::new(&config)?;
        let db = open_db(&config).await?;
        let vault = open_vault(&config, &db).await?;
        let db = audited(db, &vault, &config).await?;
        let metrics = Arc::new(Metrics::new());
        let notifier = Notifier::new(db.clone(), &config, metrics.clone());
        let settings = BrokerSettings {
            primary: config.primary_resource(),
            rotate_after: config.rotation.rotate_after,
            expiry_warn: config.rotation.expiry_warn,
        };
        let broker = Broker::new(
            db.clone(),
            vault.clone(),
            idp.clone(),
            settings,
            notifier.clone(),
            metrics.clone(),
        );
        let customer_tokens = CustomerTokens::new(
            broker.clone(),
            notifier.clone(),
            config.customers.idp_rotation,
        );
        let customers = Customers::new(
            &config,
            idp.client_id(),
            broker.clone(),
            notifier.clone(),
            metrics.clone(),
        )?;
        Ok(Services {
            customers,
            config: Arc::new(config),
            db,
            vault,
            idp,
            broker,
            customer_tokens,
            notifier,
            metrics,
            _sqlite_lock: sqlite_lock,
        })
    }
}

/// SQLite is the single-node default: a second `serve` (or `rotate`) on the same file is
/// refused with a clear message instead of two schedulers sharing one file.
fn sqlite_single_process_lock(config: &Config) -> anyhow::Result<Option<std::fs::File>> {
    use secrecy::ExposeSecret;
    let Some(path) = crate::storage::sqlite_file(config.server.database_url.expose_secret()) else {
        return Ok(None);
    };
    let path = path.display();
    let lock_path = format!("{path}.lock");
    let mut options = std::fs::OpenOptions::new();
    options.create(true).truncate(false).write(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let file = options
        .open(&lock_path)
        .map_err(|e| anyhow::anyhow!("DATABASE_URL: cannot create {lock_path}: {e}"))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "DATABASE_URL: another samvault process is already serving {path}; SQLite is for one process \
             (stop it, or use PostgreSQL to run replicas)"
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            anyhow::bail!("DATABASE_URL: cannot lock {lock_path}: {e}")
        }
    }
}

/// A built service bound to its listener, ready to run.
pub struct App {
    pub state: AppState,
    services: Services,
    listener: TcpListener,
    request_log_writer: tokio::task::JoinHandle<()>,
    /// Writes the count of failed sign-ins for unknown names every minute.
    sign_in_audit: tokio::task::JoinHandle<()>,
}

impl App {
    pub async fn build(config: Config) -> anyhow::Result<App> {
        let listen = config.server.listen;
        let services = Services::open(config).await?;
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|e| anyhow::anyhow!("SAMVAULT_LISTEN: cannot listen on {listen}: {e}"))?;
        let (request_log, request_log_writer) = RequestLog::spawn(services.db.clone());
        let auth = Arc::new(ClientAuth::new(services.db.clone()));
        // Ends by itself when the last handle to `auth` is gone.
        auth.spawn_revocation_watch();
        services.broker.spawn_status_watch();
        services.vault.spawn_refresh();
        // Times one argon2 check, which a sign-in for an unknown name then takes as long as.
        tokio::spawn(crate::ops::password::calibrate());
        let sign_in = Arc::new(crate::ops::SignInLimits::default());
        let sign_in_audit = sign_in.noise_flushing(services.db.clone());
        // One key-provider call at most: sessions are sealed under the session key.
        let sessions = SealedSessionStore::open(services.db.clone(), services.vault.clone())
            .await
            .map_err(|e| {
                anyhow::anyhow!("SAMVAULT_KEY_PROVIDER: cannot open the session key: {e}")
            })?;
        sessions.spawn_upkeep();
        let state = AppState::new(crate::http::Shared {
            config: services.config.clone(),
            db: services.db.clone(),
            vault: services.vault.clone(),
            idp: services.idp.clone(),
            broker: services.broker.clone(),
            customer_tokens: services.customer_tokens.clone(),
            notifier: services.notifier.clone(),
            auth: auth.clone(),
            limiter: Arc::default(),
            request_log,
            metrics: services.metrics.clone(),
            metrics_access: crate::http::metrics::MetricsAccess::new(
                services.db.clone(),
                services.metrics.clone(),
                services.config.server.metrics_token.as_ref(),
            ),
            sign_in,
            customers: services.customers.clone(),
            onboard_limit: crate::http::onboard::OnboardLimit::new(services.config.onboarding.rate),
            sessions,
            readiness: Default::default(),
        });
        Ok(App {
            state,
            services,
            listener,
            request_log_writer,
            sign_in_audit,
        })
    }

    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.listener
            .local_addr()
            .expect("bound listener has an address")
    }

    /// Serves (with the rotation scheduler and webhook delivery) until Ctrl-C / SIGTERM.
    pub async fn run(self) -> anyhow::Result<()> {
        let _log = LogsOffRequestPath::start();
        let router = http::router(self.state.clone());
        let config = &self.services.config;
        tracing::info!(listen = %self.local_addr(), public_url = %config.server.public_url, "samvault serving");
        // Before the scheduler: a predecessor killed mid-redemption gets its leases reaped and
        // its partners redeemed first.
        let liveness = Liveness::start(self.services.broker.clone()).await;
        let scheduler = config.rotation.scheduler.then(|| {
            Scheduler::new(
                self.services.broker.clone(),
                SchedulerSettings {
                    concurrency: config.rotation.concurrency,
                },
            )
            .spawn()
        });
        let customers = (config.rotation.scheduler && config.customers.background)
            .then(|| self.services.customers.spawn_scheduler());
        let delivery = self.services.notifier.spawn_delivery();
        // The socket peer's address reaches handlers (`http::client_address`).
        let service = router.into_make_service_with_connect_info::<std::net::SocketAddr>();
        axum::serve(self.listener.tap_io(no_delay), service)
            .with_graceful_shutdown(shutdown_signal())
            .await?;
        self.sign_in_audit.abort();
        if let Err(e) = self.state.sign_in.noise.flush(&self.services.db).await {
            tracing::warn!(error = %e, "could not audit the last sign-in failures of unknown users");
        }
        // Redemptions in flight store their new refresh tokens before the process ends.
        let grace = crate::rotation::STOP_GRACE;
        tokio::join!(
            async {
                if let Some(s) = scheduler {
                    s.stop(grace).await;
                }
            },
            async {
                if let Some(c) = customers {
                    c.stop(grace).await;
                }
            }
        );
        liveness.leave().await;
        delivery.abort();
        // The router (and with it every request log sender) is gone: let the writer flush.
        drop(self.state);
        let _ =
            tokio::time::timeout(std::time::Duration::from_secs(5), self.request_log_writer).await;
        Ok(())
    }
}

/// Small request/response exchanges must not wait for Nagle's algorithm.
fn no_delay(stream: &mut tokio::net::TcpStream) {
    let _ = stream.set_nodelay(true);
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

/// Logs go to stderr, as text or JSON; colours only on a terminal. Token strings never reach
/// a log line: secrets are `SecretString`s and spans skip arguments (see docs/LOGGING.md).
pub fn init_tracing(format: LogFormat) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,tower_sessions=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(LogWriter);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// While `serve` runs, the writer thread that takes its log lines (see [`LogWriter`]).
static OFF_REQUEST_PATH: std::sync::RwLock<Option<tracing_appender::non_blocking::NonBlocking>> =
    std::sync::RwLock::new(None);

/// Log lines go to stderr from the thread that logs them, except while `serve` runs: then a
/// thread of their own writes them, so no request waits on a write to a slow disk or pipe.
struct LogWriter;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = tracing_subscriber::fmt::writer::EitherWriter<
        tracing_appender::non_blocking::NonBlocking,
        std::io::Stderr,
    >;

    fn make_writer(&'a self) -> Self::Writer {
        use tracing_subscriber::fmt::writer::EitherWriter;
        let off_path = OFF_REQUEST_PATH
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match &*off_path {
            Some(writer) => EitherWriter::A(writer.clone()),
            None => EitherWriter::B(std::io::stderr()),
        }
    }
}

/// Held while `serve` runs: log lines are written by their own thread. Dropping it writes
/// every line still queued (the process may end right after) and goes back to stderr.
#[must_use]
struct LogsOffRequestPath(Option<tracing_appender::non_blocking::WorkerGuard>);

impl LogsOffRequestPath {
    fn start() -> Self {
        // Never lossy: under a burst a request rather waits for the writer than a line is lost.
        let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
            .lossy(false)
            .thread_name("samvault-log")
            .finish(std::io::stderr());
        *OFF_REQUEST_PATH
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(writer);
        Self(Some(guard))
    }
}

impl Drop for LogsOffRequestPath {
    fn drop(&mut self) {
        OFF_REQUEST_PATH
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        // Waits (up to a second) until the writer thread has written what it holds.
        drop(self.0.take());
    }
}
