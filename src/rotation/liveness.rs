//! Replica liveness: a lease whose holder died is taken back in a second, not when it runs out.
//!
//! A lease left by a killed process used to block its partner for its whole life (30 s), and
//! the redemption it covered may have been cut after the IdP spent the refresh token and
//! before the new one was stored. An IdP with strict rotation and a grace period (Okta,
//! Auth0, Cognito: 30–60 s) still accepts the stored token for that grace only, so the
//! redemption must be retried at once. Each `serve` process registers in `replicas` and
//! heartbeats every second; every process judges the others:
//!
//! - on the same kernel and pid namespace, exactly: the process with that pid and start time
//!   no longer exists (a restart after a crash, a container restarted in its pod);
//! - elsewhere, by silence: no heartbeat for [`SILENT_FOR`], judged only by a process whose
//!   own heartbeats have gone through for that long (after a database outage everyone is
//!   silent for a while, and nobody is dead).
//!
//! A dead process's leases are released and its partners made due now, so the scheduler
//! redeems them again first thing.

use std::time::{Duration, Instant};

use crate::broker::Broker;
use crate::storage::now;
use crate::storage::replicas::{self, Replica};

/// How often a process says it is alive.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// Silence after which a process on another machine is judged dead. Well under the lease
/// (30 s) and the usual rotation grace periods (30–60 s).
pub const SILENT_FOR: Duration = Duration::from_secs(10);

const REAPED: &str = "a samvault process died holding leases: they are released and the \
                      partners redeemed again now (a redemption it cut short may have spent \
                      their token)";

/// Which process this is, in terms the process table can check.
#[derive(Debug, Clone)]
struct ProcessIdentity {
    machine: Option<String>,
    pid: i64,
    start: Option<String>,
}

impl ProcessIdentity {
    fn current() -> Self {
        let pid = std::process::id();
        Self {
            machine: machine(),
            pid: pid.into(),
            start: process_start(pid.into()),
        }
    }
}

/// The kernel boot and the pid namespace: where a pid names one process.
fn machine() -> Option<String> {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let pid_ns = std::fs::read_link("/proc/self/ns/pid").ok()?;
    Some(format!("{}/{}", boot.trim(), pid_ns.display()))
}

/// A process's start time in clock ticks since boot (field 22 of `/proc/PID/stat`), which
/// with its pid names it for good: a reused pid has another start time.
fn process_start(pid: i64) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from its end.
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(19).map(str::to_string)
}

/// Whether `other` is dead, judged by `me` whose heartbeats have gone through for `healthy_for`.
fn is_dead(other: &Replica, me: &ProcessIdentity, now: i64, healthy_for: Duration) -> bool {
    if other.machine.is_some() && other.machine == me.machine && other.process_start.is_some() {
        return process_start(other.pid) != other.process_start;
    }
    healthy_for >= SILENT_FOR && now - other.seen_at > SILENT_FOR.as_secs() as i64
}

/// The heartbeat of a serving process, until [`Liveness::leave`].
pub struct Liveness {
    task: tokio::task::JoinHandle<()>,
    broker: Broker,
}

impl Liveness {
    /// Registers this process and reaps the dead ones at once (a restart after a crash
    /// recovers its own predecessor's leases before the scheduler's first pass), then every
    /// second.
    pub async fn start(broker: Broker) -> Self {
        let mut beat = Heartbeat::new(broker.clone());
        beat.once().await;
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(HEARTBEAT).await;
                beat.once().await;
            }
        });
        Self { task, broker }
    }

    /// A clean stop, once nothing holds a lease any more.
    pub async fn leave(self) {
        self.task.abort();
        let _ = self.task.await;
        if let Err(e) = replicas::leave(self.broker.db(), self.broker.instance()).await {
            // The row is reaped by the next process that starts or by silence.
            tracing::warn!(error = %e, "could not unregister this process");
        }
    }
}

struct Heartbeat {
    broker: Broker,
    me: ProcessIdentity,
    started_at: i64,
    healthy_since: Option<Instant>,
    last_ok: Option<Instant>,
}

impl Heartbeat {
    fn new(broker: Broker) -> Self {
        Self {
            broker,
            me: ProcessIdentity::current(),
            started_at: now(),
            healthy_since: None,
            last_ok: None,
        }
    }

    async fn once(&mut self) {
        let db = self.broker.db();
        let row = Replica {
            instance: self.broker.instance().to_string(),
            machine: self.me.machine.clone(),
            pid: self.me.pid,
            process_start: self.me.start.clone(),
            started_at: self.started_at,
            seen_at: now(),
        };
        if let Err(e) = replicas::heartbeat(db, &row).await {
            tracing::debug!(error = %e, "heartbeat failed");
            self.healthy_since = None;
            return;
        }
        let at = Instant::now();
        // A gap in our own heartbeats (a database outage, a stalled host) restarts the count.
        if self.last_ok.is_none_or(|t| at - t > 3 * HEARTBEAT) {
            self.healthy_since = Some(at);
        }
        self.last_ok = Some(at);
        let healthy_for = self.healthy_since.map_or(Duration::ZERO, |t| at - t);
        let Ok(others) = replicas::others(db, &row.instance).await else {
            return;
        };
        for other in others {
            if !is_dead(&other, &self.me, now(), healthy_for) {
                continue;
            }
            match replicas::reap(db, &other.instance, now()).await {
                Ok(partners) if partners.is_empty() => {
                    tracing::info!(replica = %other.instance, "a stopped samvault process was forgotten");
                }
                Ok(partners) => {
                    self.broker
                        .metrics()
                        .record_leases_reclaimed(partners.len() as u64);
                    tracing::warn!(replica = %other.instance, partners = partners.len(), "{REAPED}");
                }
                Err(e) => {
                    tracing::warn!(replica = %other.instance, error = %e, "could not reap a dead process");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica(machine: Option<&str>, pid: i64, start: Option<&str>, seen_at: i64) -> Replica {
        Replica {
            instance: "x".into(),
            machine: machine.map(str::to_string),
            pid,
            process_start: start.map(str::to_string),
            started_at: 0,
            seen_at,
        }
    }

    #[test]
    fn this_process_is_alive_and_a_reused_pid_is_not() {
        let me = ProcessIdentity::current();
        let Some(machine) = me.machine.clone() else {
            return; // not Linux: only silence is judged
        };
        let start = me.start.clone().expect("own start time");
        let alive = replica(Some(&machine), me.pid, Some(&start), 0);
        assert!(!is_dead(&alive, &me, 1_000_000, Duration::from_secs(3600)));
        let earlier = replica(Some(&machine), me.pid, Some("1"), 1_000_000);
        assert!(is_dead(&earlier, &me, 1_000_000, Duration::ZERO));
        let gone = replica(Some(&machine), i64::from(u32::MAX), Some(&start), 1_000_000);
        assert!(is_dead(&gone, &me, 1_000_000, Duration::ZERO));
        // Without its start time a pid proves nothing: only silence counts then.
        let unnamed = replica(Some(&machine), i64::from(u32::MAX), None, 1_000_000);
        assert!(!is_dead(&unnamed, &me, 1_000_000, Duration::ZERO));
    }

    #[test]
    fn another_machine_is_dead_only_after_silence_seen_by_a_healthy_judge() {
        let me = ProcessIdentity::current();
        let other = replica(Some("another-boot/pid:[1]"), 1, Some("1"), 100);
        assert!(!is_dead(&other, &me, 105, Duration::from_secs(60)));
        assert!(is_dead(&other, &me, 111, Duration::from_secs(60)));
        // Just back from an outage ourselves: everyone looks silent, nobody is judged.
        assert!(!is_dead(&other, &me, 111, Duration::from_secs(2)));
    }
}
