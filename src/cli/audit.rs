//! `samvault audit`: the audit log; and how the other commands record what they did in it.

use std::process::ExitCode;

use clap::Subcommand;

use samvault::app;
use samvault::config::Config;
use samvault::storage::{Db, audit, now};

use super::output::Output;

#[derive(Subcommand)]
pub enum Command {
    /// Check the audit log's hash chain.
    Verify,
}

/// Exits with failure when the chain is broken, so a cron job or a script notices.
pub async fn run(command: Command, config: &Config) -> anyhow::Result<ExitCode> {
    let Command::Verify = command;
    let db = app::open_db(config).await?;
    Ok(match audit::verify(&db).await? {
        Ok(rows) => {
            Output::text().line(format_args!("audit chain intact: {rows} events"));
            ExitCode::SUCCESS
        }
        Err(seq) => {
            Output::text().line(format_args!("audit chain broken at event {seq}"));
            ExitCode::FAILURE
        }
    })
}

/// Appends what a command did to the audit log, with `cli` as the actor.
pub async fn record(
    db: &Db,
    action: &str,
    tenant: Option<&str>,
    detail: serde_json::Value,
) -> anyhow::Result<()> {
    audit::append(db, "cli", action, tenant, detail, now()).await?;
    Ok(())
}
