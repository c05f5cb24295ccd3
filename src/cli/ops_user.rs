//! `samvault ops-user`: the ops dashboard's users.

use std::process::ExitCode;

use clap::Subcommand;
use serde_json::json;

use samvault::app;
use samvault::config::Config;
use samvault::ops::{password, totp};
use samvault::storage::ops_users::{self, Role};
use samvault::storage::{Db, now, rfc3339};

use super::audit;
use super::output::Output;

#[derive(Subcommand)]
pub enum Command {
    /// Create a dashboard user. Prints a one-time password (to be changed at first sign-in)
    /// and the TOTP secret for an authenticator app, once.
    Create {
        /// The user's sign-in name (`--name` as in REFERENCE §3.1 works too).
        #[arg(long, alias = "name")]
        username: String,
        /// viewer (read), operator (rotate, access check, invitations), admin (revoke, clients)
        #[arg(long)]
        role: String,
        #[arg(long)]
        json: bool,
    },
    /// List dashboard users (no secrets).
    List,
    /// Disable a user at once (a phished or departed account): their open sessions are
    /// refused at the next request.
    Disable {
        #[arg(long)]
        username: String,
    },
}

pub async fn run(command: Command, config: &Config) -> anyhow::Result<ExitCode> {
    let db = match &command {
        Command::List => app::open_db(config).await?,
        _ => super::audit::audited_db(config).await?,
    };
    match command {
        Command::Create {
            username,
            role,
            json,
        } => create(&db, config, &username, &role, Output::new(json)).await?,
        Command::Disable { username } => disable(&db, &username).await?,
        Command::List => list(&db).await?,
    }
    Ok(ExitCode::SUCCESS)
}

/// The names the sign-in form and the audit log can carry unescaped.
fn valid_username(username: &str) -> bool {
    (1..=64).contains(&username.len())
        && username
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._@-".contains(&b))
}

async fn create(
    db: &Db,
    config: &Config,
    username: &str,
    role: &str,
    out: Output,
) -> anyhow::Result<()> {
    let role = Role::parse(role).map_err(|e| anyhow::anyhow!("--role: {e}"))?;
    anyhow::ensure!(
        valid_username(username),
        "--username: 1 to 64 letters, digits, '.', '_', '@' or '-'"
    );
    let vault = app::open_vault(config, db).await?;
    let initial = password::generate();
    let secret = totp::generate_secret();
    let sealed = vault
        .seal(&secret, &ops_users::totp_context(username))
        .await?;
    let hash = password::hash(&initial);
    let created = ops_users::create(db, username, role, &hash, &sealed, now()).await?;
    anyhow::ensure!(created, "an ops user named {username} already exists");
    let detail = json!({ "username": username, "role": role.as_str() });
    audit::record(db, "ops_user.create", None, detail).await?;
    let (uri, totp_secret) = (
        totp::otpauth_uri(&config.entra.app_name, username, &secret),
        totp::base32(&secret),
    );
    out.record(
        || {
            json!({
                // `name` is REFERENCE §3.1's key; `username` matches the flag.
                "name": username, "username": username, "role": role.as_str(),
                "password": initial.as_str(), "totp_secret": totp_secret,
                "otpauth_uri": uri,
            })
        },
        || {
            format!(
                "created {} user {username}\n\
                 one-time password (change it at first sign-in): {}\n\
                 TOTP secret for the authenticator app: {totp_secret}\n\
                 or import: {uri}\n\
                 none of these is shown again",
                role.as_str(),
                initial.as_str()
            )
        },
    );
    Ok(())
}

async fn disable(db: &Db, username: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        ops_users::disable(db, username, now()).await?,
        "no enabled ops user named {username}"
    );
    let detail = json!({ "username": username });
    audit::record(db, "ops_user.disable", None, detail).await?;
    Output::text().line(format_args!(
        "disabled {username}: their sessions end at their next request"
    ));
    Ok(())
}

async fn list(db: &Db) -> anyhow::Result<()> {
    for user in ops_users::list(db).await? {
        let disabled = if user.disabled_at.is_some() {
            "\tdisabled"
        } else {
            ""
        };
        Output::text().line(format_args!(
            "{}\t{}\tlast sign-in {}{disabled}",
            user.username,
            user.role.as_str(),
            user.last_sign_in_at.map_or("never".into(), rfc3339),
        ));
    }
    Ok(())
}
