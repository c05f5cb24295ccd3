//! `samvault invite`: onboarding invitations.

use std::process::ExitCode;

use clap::Subcommand;
use serde_json::json;

use samvault::config::{self, Config};
use samvault::domain::TenantId;
use samvault::storage::rfc3339;

use super::audit;
use super::output::Output;
use super::shared::create_invitation;

#[derive(Subcommand)]
pub enum Command {
    /// Create an onboarding URL.
    Create {
        /// Restrict the invitation to one partner tenant.
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long, default_value = "7d")]
        expires: String,
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(command: Command, config: &Config) -> anyhow::Result<ExitCode> {
    let Command::Create {
        tenant,
        expires,
        json,
    } = command;
    let tenant = tenant
        .map(|t| TenantId::parse(&t).map_err(|e| anyhow::anyhow!("--tenant: {e}")))
        .transpose()?;
    let lifetime =
        config::parse_duration(&expires).map_err(|e| anyhow::anyhow!("--expires: {e}"))?;
    let db = super::audit::audited_db(config).await?;
    let (url, expires_at) = create_invitation(
        &db,
        &config.server.public_url,
        tenant.as_ref(),
        lifetime.as_secs() as i64,
    )
    .await?;
    let tenant = tenant.as_ref().map(TenantId::as_str);
    let detail = json!({ "expires_at": expires_at });
    audit::record(&db, "invite.create", tenant, detail).await?;
    let expires_at = rfc3339(expires_at);
    Output::new(json).record(
        || json!({ "url": url.as_str(), "expires_at": expires_at }),
        || format!("{url}\n(expires {expires_at})"),
    );
    Ok(ExitCode::SUCCESS)
}
