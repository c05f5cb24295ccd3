//! `samvault rotate`: redeems the chosen grants now, with the configured concurrency and a
//! progress bar on stderr.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Instant;

use samvault::app::Services;
use samvault::broker::{BrokerError, Source};
use samvault::config::Config;
use samvault::domain::TenantId;
use samvault::storage::{now, rotation};

use super::output::{Output, parenthesised};
use super::per_partner::{parse_partner, spawn_each};
use super::progress::ProgressBar;

#[derive(clap::Args)]
#[group(required = true, multiple = false)]
pub struct Opts {
    /// Grants whose scheduled rotation time has passed.
    #[arg(long)]
    due: bool,
    /// Every usable grant.
    #[arg(long)]
    all: bool,
    /// One partner.
    #[arg(long, value_name = "TENANT_ID")]
    partner: Option<String>,
}

/// Fails when any rotation failed, so a cron job or a script notices.
pub async fn run(opts: Opts, config: Config) -> anyhow::Result<ExitCode> {
    let services = Services::open(config).await?;
    let tenants = match &opts.partner {
        Some(tenant) => vec![parse_partner(tenant)?],
        None => rotation::usable_tenants(&services.db, opts.due.then(now)).await?,
    };
    let total = tenants.len() as u64;
    let started = Instant::now();
    let broker = services.broker.clone();
    let concurrency = services.config.rotation.concurrency;
    let mut set = spawn_each(tenants, concurrency, move |tenant| {
        let broker = broker.clone();
        async move { broker.rotate(&tenant, Source::Manual).await.map(drop) }
    });
    let (mut tally, mut done) = (Tally::default(), 0);
    let mut bar = ProgressBar::new("rotating");
    while let Some(joined) = set.join_next().await {
        done += 1;
        if let Ok((tenant, result)) = joined {
            tally.record(&tenant, result);
        }
        bar.show(done, total);
    }
    bar.finish();
    tally.print(total, started);
    Ok(tally.exit_code())
}

/// Successes, and failures counted by their reason.
#[derive(Default)]
struct Tally {
    succeeded: u64,
    failures: BTreeMap<String, u64>,
}

impl Tally {
    fn record(&mut self, tenant: &TenantId, result: Result<(), BrokerError>) {
        match result {
            Ok(()) => self.succeeded += 1,
            Err(e) => {
                tracing::debug!(tenant.id = %tenant, error = %e, "rotation failed");
                *self.failures.entry(e.to_string()).or_default() += 1;
            }
        }
    }

    fn failed(&self) -> u64 {
        self.failures.values().sum()
    }

    fn print(&self, total: u64, started: Instant) {
        let detail: Vec<String> = self
            .failures
            .iter()
            .map(|(reason, n)| format!("{reason}: {n}"))
            .collect();
        Output::text().line(format_args!(
            "rotated {total} partners in {:.1}s: {} succeeded, {} failed{}",
            started.elapsed().as_secs_f64(),
            self.succeeded,
            self.failed(),
            parenthesised(&detail)
        ));
    }

    fn exit_code(&self) -> ExitCode {
        if self.failed() == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    }
}
