//! The rotation engine: keeps every grant alive past the 90-day inactivity expiry.
//!
//! A scheduler inside `samvault serve` leases due grants one at a time (`rotate_at` passed,
//! nobody else working on them) and redeems each for the partner's primary resource with a
//! bounded number of workers. Successes move `rotate_at` to `SAMVAULT_ROTATE_AFTER` from now
//! (minus a random spread); failures move it by an exponential backoff or exactly by the
//! IdP's `Retry-After`, so failing grants never take healthy grants' turns. When the CPV
//! app's own credential is rejected, one alarm is raised and rotation pauses with backoff,
//! probing with a single grant, until a redemption succeeds again.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::broker::{APP_CREDENTIALS_ALARM, Broker, BrokerError};
use crate::storage::{now, rotation};

/// Longest the scheduler sleeps without looking at the database: new consents (possibly on
/// another replica) are picked up this quickly. The look is one indexed query.
const MAX_IDLE: Duration = Duration::from_secs(5);
/// First and longest pause while the app-credential alarm is raised.
const ALARM_PAUSE_MIN: Duration = Duration::from_secs(30);
const ALARM_PAUSE_MAX: Duration = Duration::from_secs(900);

#[derive(Clone, Debug)]
pub struct SchedulerSettings {
    /// Redemptions in flight at once (SAMVAULT_ROTATION_CONCURRENCY).
    pub concurrency: usize,
}

/// Counts of one scheduler pass (also what `samvault rotate` prints).
#[derive(Debug, Default)]
pub struct PassStats {
    pub succeeded: AtomicU64,
    pub failed: AtomicU64,
    pub skipped: AtomicU64,
}

impl PassStats {
    pub fn total(&self) -> u64 {
        self.succeeded.load(Ordering::Relaxed)
            + self.failed.load(Ordering::Relaxed)
            + self.skipped.load(Ordering::Relaxed)
    }
}

pub struct Scheduler {
    broker: Broker,
    settings: SchedulerSettings,
}

impl Scheduler {
    pub fn new(broker: Broker, settings: SchedulerSettings) -> Self {
        Self { broker, settings }
    }

    /// Runs until the task is aborted.
    pub fn spawn(self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move { self.run().await })
    }

    async fn run(self) {
        let db = self.broker.db().clone();
        let rotate_after = self.broker.settings().rotate_after.as_secs() as i64;
        match rotation::clamp_schedule(&db, rotate_after).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                grants = n,
                "rotation: schedules brought forward to SAMVAULT_ROTATE_AFTER"
            ),
            Err(e) => tracing::warn!(error = %e, "rotation: cannot adjust schedules"),
        }
        let mut pause = ALARM_PAUSE_MIN;
        loop {
            let alarm = rotation::alarm(&db, APP_CREDENTIALS_ALARM)
                .await
                .ok()
                .flatten();
            if alarm.is_some() {
                self.broker.note_alarm();
            }
            let workers = if alarm.is_some() {
                1
            } else {
                self.settings.concurrency.max(1)
            };
            // While the alarm is up, one grant probes whether the app's credential works again.
            let stats = self.pass(workers, alarm.is_some()).await;
            if alarm.is_some() {
                tracing::warn!(
                    pause_s = pause.as_secs(),
                    "rotation paused: the CPV app's credentials are rejected"
                );
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(ALARM_PAUSE_MAX);
                continue;
            }
            pause = ALARM_PAUSE_MIN;
            if stats.total() > 0 {
                tracing::info!(
                    succeeded = stats.succeeded.load(Ordering::Relaxed),
                    failed = stats.failed.load(Ordering::Relaxed),
                    "rotation pass finished"
                );
            }
            let sleep = match rotation::next_due_at(&db).await {
                Ok(Some(next)) => {
                    Duration::from_secs((next - now()).clamp(1, MAX_IDLE.as_secs() as i64) as u64)
                }
                Ok(None) => MAX_IDLE,
                Err(e) => {
                    tracing::warn!(error = %e, "rotation: cannot read the schedule");
                    Duration::from_secs(5)
                }
            };
            tokio::time::sleep(sleep).await;
        }
    }

    /// Redeems due grants with `workers` concurrent workers until none is due (or, when
    /// `probe`, after the first attempt).
    pub async fn pass(&self, workers: usize, probe: bool) -> Arc<PassStats> {
        let stats = Arc::new(PassStats::default());
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..workers {
            let broker = self.broker.clone();
            let stats = stats.clone();
            set.spawn(async move {
                loop {
                    let owner = broker.lease_owner();
                    let claimed =
                        rotation::claim_due(broker.db(), &owner, now(), broker.lease_secs()).await;
                    let tenant = match claimed {
                        Ok(Some(tenant)) => tenant,
                        Ok(None) => break,
                        Err(e) => {
                            tracing::warn!(error = %e, "rotation: cannot claim due grants");
                            break;
                        }
                    };
                    match broker.rotate_leased(&tenant, &owner).await {
                        None => stats.skipped.fetch_add(1, Ordering::Relaxed),
                        Some(Ok(_)) => stats.succeeded.fetch_add(1, Ordering::Relaxed),
                        Some(Err(error)) => {
                            log_failure(&tenant, &error);
                            stats.failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                    if probe {
                        break;
                    }
                }
            });
        }
        while set.join_next().await.is_some() {}
        stats
    }
}

fn log_failure(tenant: &crate::domain::TenantId, error: &BrokerError) {
    tracing::debug!(tenant.id = %tenant, error = %error, "scheduled rotation failed");
}
