//! The rotation engine: keeps every grant alive past the 90-day inactivity expiry.
//!
//! A scheduler inside `samvault serve` leases due grants one at a time (`rotate_at` passed,
//! nobody else working on them) and redeems each for the partner's primary resource with a
//! bounded number of workers. Successes move `rotate_at` to `SAMVAULT_ROTATE_AFTER` from now
//! (minus a random spread); failures move it by an exponential backoff or exactly by the
//! IdP's `Retry-After`, so failing grants never take healthy grants' turns. When the CPV
//! app's own credential is rejected, one alarm is raised and rotation pauses with backoff,
//! probing with a single grant, until a redemption succeeds again.
//!
//! Stopping ([`Running::stop`], on SIGTERM) claims nothing more and lets the redemptions in
//! flight store their new refresh tokens: cancelling one between the IdP's answer and the
//! write-back would drop a token the IdP already issued, and an IdP that kills a refresh
//! token at its first use (reuse detection) would leave the partner with a dead one.

pub mod liveness;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::watch;

use crate::backoff::Backoff;
use crate::broker::{APP_CREDENTIALS_ALARM, Broker, BrokerError};
use crate::storage::{now, rotation};

/// Longest the scheduler sleeps without looking at the database: new consents (possibly on
/// another replica) are picked up this quickly. The look is one indexed query.
const MAX_IDLE: Duration = Duration::from_secs(5);
/// How long a stop waits for redemptions in flight: longer than one IdP call may take (20 s).
pub const STOP_GRACE: Duration = Duration::from_secs(25);
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

/// A scheduler running in the background.
pub struct Running {
    task: tokio::task::JoinHandle<()>,
    stop: watch::Sender<bool>,
}

impl Running {
    /// Claims no more grants, waits up to `grace` for the redemptions in flight to finish
    /// (their write-back included), and aborts whatever is still running after that.
    pub async fn stop(self, grace: Duration) {
        let _ = self.stop.send(true);
        let mut task = self.task;
        if tokio::time::timeout(grace, &mut task).await.is_err() {
            tracing::warn!(
                grace_s = grace.as_secs(),
                "rotation: redemptions still running at shutdown were cancelled"
            );
            task.abort();
        }
    }
}

impl Scheduler {
    pub fn new(broker: Broker, settings: SchedulerSettings) -> Self {
        Self { broker, settings }
    }

    /// Runs until stopped.
    pub fn spawn(self) -> Running {
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(async move { self.run(stopped).await });
        Running { task, stop }
    }

    async fn run(self, mut stopped: watch::Receiver<bool>) {
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
        // Pauses taken since the alarm was raised.
        let mut paused = 0;
        loop {
            if *stopped.borrow() {
                return;
            }
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
            let stats = self.pass(workers, alarm.is_some(), &stopped).await;
            if alarm.is_some() {
                paused += 1;
                let pause = alarm_pause(paused);
                tracing::warn!(
                    pause_s = pause.as_secs(),
                    "rotation paused: the CPV app's credentials are rejected"
                );
                if sleep_unless_stopped(pause, &mut stopped).await {
                    return;
                }
                continue;
            }
            paused = 0;
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
            if sleep_unless_stopped(sleep, &mut stopped).await {
                return;
            }
        }
    }

    /// Redeems due grants with `workers` concurrent workers until none is due (or, when
    /// `probe`, after the first attempt), claiming nothing once `stopped`.
    pub async fn pass(
        &self,
        workers: usize,
        probe: bool,
        stopped: &watch::Receiver<bool>,
    ) -> Arc<PassStats> {
        let stats = Arc::new(PassStats::default());
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..workers {
            let broker = self.broker.clone();
            let stats = stats.clone();
            let stopped = stopped.clone();
            set.spawn(async move {
                while !*stopped.borrow() {
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

/// The `n`-th pause (1-based) while the app-credential alarm is raised: doubling from the
/// shortest to the longest.
fn alarm_pause(n: u32) -> Duration {
    const PAUSE: Backoff = Backoff::new(ALARM_PAUSE_MIN, 2).capped_at(ALARM_PAUSE_MAX);
    PAUSE.delay(n.into())
}

/// Sleeps for `duration`; true when the scheduler was stopped meanwhile.
async fn sleep_unless_stopped(duration: Duration, stopped: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(duration) => false,
        // A dropped sender means nobody can stop us any more: that is a stop too.
        _ = stopped.wait_for(|stop| *stop) => true,
    }
}

fn log_failure(tenant: &crate::domain::TenantId, error: &BrokerError) {
    tracing::debug!(tenant.id = %tenant, error = %error, "scheduled rotation failed");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The schedule the alarm pause has always had: 30 s doubling to 15 min, no jitter.
    #[test]
    fn the_alarm_pause_doubles_from_30_s_to_15_min() {
        let schedule: Vec<u64> = (1..=8).map(|n| alarm_pause(n).as_secs()).collect();
        assert_eq!(schedule, [30, 60, 120, 240, 480, 900, 900, 900]);
        assert_eq!(alarm_pause(0), ALARM_PAUSE_MIN);
        assert_eq!(alarm_pause(u32::MAX >> 20), ALARM_PAUSE_MAX);
    }
}
