//! `samvault client`: integration clients and their secrets.

use std::process::ExitCode;

use clap::Subcommand;
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;

use samvault::app;
use samvault::config::Config;
use samvault::domain::Resource;
use samvault::storage::clients::{self, Client, NewClient, Permission};
use samvault::storage::{Db, now, rfc3339};

use super::audit;
use super::output::{Output, Table, fields};
use super::shared::wait_for_services_to_notice;

#[derive(Subcommand)]
pub enum Command {
    /// Create a client; prints its id and its secret once.
    Create(CreateOpts),
    List {
        #[arg(long)]
        json: bool,
    },
    Revoke {
        client_id: String,
    },
    /// Roll a client's secrets without downtime: add a new one, move the integration to
    /// it, then revoke the old one.
    #[command(subcommand)]
    Secret(SecretCommand),
}

#[derive(clap::Args)]
pub struct CreateOpts {
    #[arg(long)]
    name: String,
    /// Audience this client may ask for (repeatable).
    #[arg(long = "resource", required = true)]
    resources: Vec<String>,
    /// Partner tenant this client may use (repeatable; default: all partners).
    #[arg(long = "partner")]
    partners: Vec<String>,
    /// tokens:issue, partners:read or customers:issue (repeatable; default: tokens:issue and
    /// partners:read; customers:issue is granted only when named).
    #[arg(long = "permission")]
    permissions: Vec<String>,
    /// Token requests per minute.
    #[arg(long, default_value_t = 600)]
    rate_limit: i64,
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
pub enum SecretCommand {
    /// Adds a secret; prints it once.
    Add {
        client_id: String,
        #[arg(long)]
        json: bool,
    },
    /// Lists a client's secret ids and dates.
    List { client_id: String },
    /// Revokes one secret.
    Revoke {
        client_id: String,
        secret_id: String,
    },
}

pub async fn run(command: Command, config: &Config) -> anyhow::Result<ExitCode> {
    // Listing needs neither the vault nor the audit key.
    let db = match &command {
        Command::List { .. } | Command::Secret(SecretCommand::List { .. }) => {
            app::open_db(config).await?
        }
        _ => super::audit::audited_db(config).await?,
    };
    match command {
        Command::Create(opts) => create(&db, opts, config).await?,
        Command::List { json } => list(&db, Output::new(json)).await?,
        Command::Revoke { client_id } => revoke(&db, &client_id).await?,
        Command::Secret(SecretCommand::Add { client_id, json }) => {
            add_secret(&db, &client_id, Output::new(json)).await?
        }
        Command::Secret(SecretCommand::List { client_id }) => list_secrets(&db, &client_id).await?,
        Command::Secret(SecretCommand::Revoke {
            client_id,
            secret_id,
        }) => revoke_secret(&db, &client_id, &secret_id).await?,
    }
    Ok(ExitCode::SUCCESS)
}

async fn create(db: &Db, opts: CreateOpts, config: &Config) -> anyhow::Result<()> {
    // No --permission means both: the common case, as REFERENCE §3.1 documents.
    let permissions = if opts.permissions.is_empty() {
        [Permission::TokensIssue, Permission::PartnersRead]
            .map(|p| p.as_str().to_string())
            .to_vec()
    } else {
        opts.permissions
    };
    let new = NewClient::parse(
        &opts.name,
        &permissions,
        &opts.resources,
        &opts.partners,
        opts.rate_limit,
        &config.entra.resources,
    )?;
    let (client_id, secret) = create_client(db, &new).await?;
    let secret = secret.expose_secret();
    Output::new(opts.json).record(
        || json!({ "client_id": client_id, "client_secret": secret }),
        || {
            let lines = fields(&[("client_id", &client_id), ("client_secret", secret)]);
            format!("{lines}\n(the secret is shown once; samvault stores only its SHA-256)")
        },
    );
    Ok(())
}

/// Creates a client and records it in the audit log; returns `(client_id, secret)`.
pub async fn create_client(db: &Db, new: &NewClient) -> anyhow::Result<(String, SecretString)> {
    let (client_id, secret) = clients::issue(db, new, now()).await?;
    let detail = json!({
        "client_id": client_id, "name": new.name,
        "resources": new.resources, "partners": new.partners,
        "permissions": permission_names(&new.permissions),
    });
    audit::record(db, "client.create", None, detail).await?;
    Ok((client_id, secret))
}

fn permission_names(permissions: &[Permission]) -> Vec<&'static str> {
    permissions.iter().map(|p| p.as_str()).collect()
}

async fn list(db: &Db, out: Output) -> anyhow::Result<()> {
    let list = clients::list(db).await?;
    out.list(&list, client_json, || {
        let mut table = Table::titled(&[
            ("CLIENT ID", 36),
            ("NAME", 24),
            ("STATE", 8),
            ("RESOURCES", 0),
        ]);
        for c in &list {
            let state = if c.revoked_at.is_some() {
                "revoked"
            } else {
                "active"
            };
            let resources: Vec<_> = c.resources.iter().map(Resource::as_str).collect();
            table.row([
                c.client_id.as_str(),
                c.name.as_str(),
                state,
                &resources.join(" "),
            ]);
        }
        table
    });
    Ok(())
}

fn client_json(c: &Client) -> serde_json::Value {
    json!({
        "client_id": c.client_id, "name": c.name,
        "permissions": permission_names(&c.permissions),
        "resources": c.resources, "partners": c.partners,
        "rate_limit_per_minute": c.rate_limit_per_minute,
        "created_at": rfc3339(c.created_at), "last_used_at": c.last_used_at.map(rfc3339),
        "revoked_at": c.revoked_at.map(rfc3339),
    })
}

async fn revoke(db: &Db, client_id: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        clients::revoke(db, client_id, now()).await?,
        "no active client {client_id}"
    );
    let detail = json!({ "client_id": client_id });
    audit::record(db, "client.revoke", None, detail).await?;
    wait_for_services_to_notice().await;
    Output::text().line(format_args!("revoked {client_id}"));
    Ok(())
}

async fn add_secret(db: &Db, client_id: &str, out: Output) -> anyhow::Result<()> {
    let (secret_id, secret) = clients::add_secret(db, client_id, now())
        .await?
        .ok_or_else(|| anyhow::anyhow!("no active client {client_id}"))?;
    let detail = json!({ "client_id": client_id, "secret_id": secret_id });
    audit::record(db, "client.secret.add", None, detail).await?;
    let secret = secret.expose_secret();
    out.record(
        || json!({ "client_id": client_id, "secret_id": secret_id, "client_secret": secret }),
        || {
            let lines = fields(&[("secret_id", &secret_id), ("client_secret", secret)]);
            format!("{lines}\n(shown once)")
        },
    );
    Ok(())
}

async fn list_secrets(db: &Db, client_id: &str) -> anyhow::Result<()> {
    for (id, created, revoked) in clients::secrets(db, client_id).await? {
        let state = revoked.map_or_else(
            || "active".to_string(),
            |r| format!("revoked {}", rfc3339(r)),
        );
        Output::text().line(format_args!("{id}  created {}  {state}", rfc3339(created)));
    }
    Ok(())
}

async fn revoke_secret(db: &Db, client_id: &str, secret_id: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        clients::revoke_secret(db, client_id, secret_id, now()).await?,
        "no active secret {secret_id} for client {client_id}"
    );
    let detail = json!({ "client_id": client_id, "secret_id": secret_id });
    audit::record(db, "client.secret.revoke", None, detail).await?;
    wait_for_services_to_notice().await;
    Output::text().line(format_args!("revoked secret {secret_id}"));
    Ok(())
}
