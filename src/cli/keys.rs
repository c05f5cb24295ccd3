//! `samvault keys`: the key-encryption keys, their use and their online rotation.

use std::process::ExitCode;

use clap::Subcommand;
use serde_json::{Value, json};

use samvault::app;
use samvault::config::Config;
use samvault::key_rotation::{self, Report, Target};
use samvault::storage::sealed::{self, SealedCount};

use super::output::{Output, Table, parenthesised};
use super::progress::ProgressBar;

#[derive(Subcommand)]
pub enum Command {
    /// Sealed records per key-encryption key version, and which key seals new records.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Creates a new key-encryption key and re-wraps every data key with it, online (payloads
    /// untouched); resumes an interrupted rotation; retires keys nothing references any more.
    Rotate {
        /// Re-wrap onto the current key without creating one: the second step of a move
        /// between providers (SAMVAULT_PREVIOUS_KEY_PROVIDERS).
        #[arg(long)]
        onto_current: bool,
    },
}

pub async fn run(command: Command, config: &Config) -> anyhow::Result<ExitCode> {
    match command {
        Command::Status { json } => status(config, Output::new(json)).await?,
        Command::Rotate { onto_current } => rotate(config, onto_current).await?,
    }
    Ok(ExitCode::SUCCESS)
}

async fn status(config: &Config, out: Output) -> anyhow::Result<()> {
    let db = app::open_db(config).await?;
    let vault = app::open_vault(config, &db).await?;
    let status = Status {
        provider: vault.provider().kind(),
        current: vault.provider().current_kek_id(),
        counts: sealed::count_by_kek(&db).await?,
        shredded: sealed::shredded_grants(&db).await?,
    };
    out.record(|| status.json(), || status.text());
    Ok(())
}

/// What `keys status` shows.
struct Status {
    provider: &'static str,
    current: String,
    counts: Vec<SealedCount>,
    shredded: i64,
}

impl Status {
    /// Sealed records a rotation has yet to move onto the current key.
    fn elsewhere(&self) -> i64 {
        self.counts
            .iter()
            .filter(|c| c.kek_id != self.current)
            .map(|c| c.records)
            .sum()
    }

    fn json(&self) -> Value {
        let sealed: Vec<Value> = self
            .counts
            .iter()
            .map(|c| json!({ "what": c.what, "kek_id": c.kek_id, "records": c.records }))
            .collect();
        json!({
            "provider": self.provider, "current_kek_id": self.current, "sealed": sealed,
            "shredded_grant_versions": self.shredded, "not_under_current_key": self.elsewhere(),
        })
    }

    fn text(&self) -> String {
        let mut table = Table::untitled(&[34, 9, 0]).right_aligned(1);
        for c in &self.counts {
            table.row([c.what, &c.records.to_string(), &c.kek_id]);
        }
        format!(
            "key provider: {}\ncurrent key-encryption key: {}\n\n{table}\n\
             shredded refresh-token versions: {}\n\
             sealed records under other keys: {}",
            self.provider,
            self.current,
            self.shredded,
            self.elsewhere()
        )
    }
}

/// `samvault keys rotate`: see [`samvault::key_rotation`].
async fn rotate(config: &Config, onto_current: bool) -> anyhow::Result<()> {
    let db = app::open_db(config).await?;
    let vault = app::open_vault(config, &db).await?;
    let db = app::audited(db, &vault, config).await?;
    let target = if onto_current {
        Target::Current
    } else {
        Target::NewKey
    };
    let started = std::time::Instant::now();
    let mut bar = ProgressBar::new("re-wrapping");
    let report = key_rotation::rotate(&db, &vault, target, "cli", |p| {
        bar.show(p.moved as u64, p.total as u64)
    })
    .await?;
    bar.finish();
    print_report(&report, started.elapsed().as_secs_f64());
    Ok(())
}

fn print_report(report: &Report, seconds: f64) {
    let out = Output::text();
    let kinds: Vec<String> = report
        .moved
        .iter()
        .map(|(what, n)| format!("{n} {what}"))
        .collect();
    out.line(format_args!(
        "{} {} sealed records onto {} in {seconds:.1}s{}",
        if report.resumed {
            "resumed: re-wrapped"
        } else {
            "re-wrapped"
        },
        report.total_moved(),
        report.target_kek_id,
        parenthesised(&kinds),
    ));
    for kek in &report.retired {
        out.line(format_args!(
            "retired {kek}: no record references it any more"
        ));
    }
    for kek in &report.unreferenced {
        out.line(format_args!(
            "{kek} is no longer referenced: remove it from SAMVAULT_PREVIOUS_KEY_PROVIDERS, or disable that key version in its vault"
        ));
    }
}
