//! `samvault audit`: the audit log; and how the other commands record what they did in it.

use std::process::ExitCode;

use clap::Subcommand;

use samvault::app;
use samvault::config::Config;
use samvault::storage::audit::{self, Broken, Head, Verified};
use samvault::storage::{Db, now};

use super::output::Output;

#[derive(Subcommand)]
pub enum Command {
    /// Check the audit log's chain (MACs under the audit key) and that it still holds the head
    /// in SAMVAULT_AUDIT_ANCHOR_FILE and every --checkpoint.
    Verify {
        /// A head kept outside the database, as `SEQ:MAC` (an `audit.checkpoint` webhook
        /// event's `audit_head`, an older anchor file). Repeatable.
        #[arg(long, value_name = "SEQ:MAC", value_parser = Head::parse)]
        checkpoint: Vec<Head>,
    },
}

/// Exits with failure when the chain is broken, so a cron job or a script notices.
pub async fn run(command: Command, config: &Config) -> anyhow::Result<ExitCode> {
    let Command::Verify { checkpoint } = command;
    let db = audited_db(config).await?;
    let out = Output::text();
    Ok(match audit::verify(&db, &checkpoint).await? {
        Ok(verified) => {
            for line in intact(&verified, config) {
                out.line(format_args!("{line}"));
            }
            ExitCode::SUCCESS
        }
        Err(broken) => {
            out.line(format_args!("{}", broken_line(&broken)));
            ExitCode::FAILURE
        }
    })
}

/// What an intact log prints: the count first (scripts read it), then what was checked.
fn intact(verified: &Verified, config: &Config) -> Vec<String> {
    let mut lines = vec![format!("audit chain intact: {} events", verified.entries)];
    let unkeyed = verified.first_keyed - 1;
    if unkeyed > 0 {
        lines.push(format!(
            "events 1 to {unkeyed} predate the audit key (plain SHA-256); the first keyed event seals them"
        ));
    }
    for head in &verified.heads {
        lines.push(format!("holds the head {head}"));
    }
    if config.audit.anchor_file.is_none() {
        lines.push(
            "no SAMVAULT_AUDIT_ANCHOR_FILE: events cut off the end would go unnoticed".into(),
        );
    }
    lines
}

/// One line saying what is wrong (the first word after "audit" says which kind).
fn broken_line(broken: &Broken) -> String {
    match broken {
        Broken::Entry(seq) => format!("audit chain broken at event {seq}"),
        Broken::Cut { head, last } => format!(
            "audit log cut: a head kept outside the database (anchor or checkpoint) names event {head}, \
             the log ends at event {last}"
        ),
        Broken::Rewritten { head } => format!(
            "audit log rewritten: event {head} differs from the head kept outside the database"
        ),
        Broken::Anchor(why) => format!("audit anchor unusable: {why}"),
    }
}

/// The database with the audit chain's key opened (the vault is opened for it): what a
/// command needs to write to or verify the audit log.
pub async fn audited_db(config: &Config) -> anyhow::Result<Db> {
    let db = app::open_db(config).await?;
    let vault = app::open_vault(config, &db).await?;
    app::audited(db, &vault, config).await
}

/// Appends what a command did to the audit log, with `cli` as the actor. `db` must come from
/// [`audited_db`] (or `Services`).
pub async fn record(
    db: &Db,
    action: &str,
    tenant: Option<&str>,
    detail: serde_json::Value,
) -> anyhow::Result<()> {
    audit::append(db, "cli", action, tenant, detail, now()).await?;
    Ok(())
}
