//! Customer work in the background of `serve` (unless `SAMVAULT_SCHEDULER=false`): a sync
//! of each partner after each of its consents (found by following `consents` by id, so a
//! consent on any replica counts) and every SAMVAULT_CUSTOMER_SYNC_INTERVAL; the pushes due
//! (new customers, failed ones after their backoff, consented ones whose grants changed)
//! with a few workers, all paced by the process's Partner Center budget.
//!
//! Stopping claims nothing more and lets the work in flight finish (a verification writes
//! the partner's new refresh token back), for at most the grace given.

use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;

use super::Customers;
use super::consent::Pushed;
use crate::domain::TenantId;
use crate::storage::customers as store;
use crate::storage::{StorageError, now};

/// Pushes in flight at once: enough to keep Partner Center's 50 calls a second busy while
/// each call and its verification take tens of milliseconds.
pub const WORKERS: usize = 24;
/// How often the scheduler looks for new consents and due work.
const TICK: Duration = Duration::from_millis(500);
/// A claimed push or sync is someone's for this long (longer than a throttled call may
/// keep retrying); a process that dies leaves it due again after that.
const CLAIM_SECS: i64 = 600;
/// Syncs in flight at once.
const SYNC_WORKERS: usize = 2;

/// A scheduler running in the background.
pub struct Running {
    task: tokio::task::JoinHandle<()>,
    stop: watch::Sender<bool>,
}

impl Running {
    /// Claims nothing more; waits up to `grace` for the work in flight, then aborts it.
    pub async fn stop(self, grace: Duration) {
        let _ = self.stop.send(true);
        let mut task = self.task;
        if tokio::time::timeout(grace, &mut task).await.is_err() {
            tracing::warn!("customers: work still running at shutdown was cancelled");
            task.abort();
        }
    }
}

/// What one worker did.
enum Done {
    Synced,
    Pushed,
}

impl Customers {
    pub fn spawn_scheduler(&self) -> Running {
        let (stop, stopped) = watch::channel(false);
        let customers = self.clone();
        let task = tokio::spawn(async move { customers.schedule(stopped).await });
        Running { task, stop }
    }

    async fn schedule(self, stopped: watch::Receiver<bool>) {
        let mut seen = loop {
            match self.prepare().await {
                Ok(seen) => break seen,
                Err(e) => {
                    tracing::warn!(error = %e, "customers: cannot read the schedule; trying again")
                }
            }
            if *stopped.borrow() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(5)).await;
        };
        let mut work: JoinSet<Done> = JoinSet::new();
        let (mut syncing, mut pushing) = (0, 0);
        let mut looked = tokio::time::Instant::now() - TICK;
        let mut stopped = stopped;
        while !*stopped.borrow() {
            if looked.elapsed() >= TICK {
                looked = tokio::time::Instant::now();
                if let Err(e) = self.follow_consents(&mut seen).await {
                    tracing::warn!(error = %e, "customers: cannot read new consents");
                }
            }
            self.fill(&mut work, &mut syncing, &mut pushing).await;
            tokio::select! {
                Some(done) = work.join_next(), if !work.is_empty() => match done {
                    Ok(Done::Synced) => syncing -= 1,
                    Ok(Done::Pushed) => pushing -= 1,
                    Err(e) => {
                        tracing::error!(error = %e, "customers: a worker failed");
                        (syncing, pushing) = (0, work.len());
                    }
                },
                () = tokio::time::sleep(TICK) => {}
                _ = stopped.changed() => {}
            }
        }
        while work.join_next().await.is_some() {}
    }

    /// At start: partners never synced are due now, and consented customers whose grants
    /// differ from SAMVAULT_CUSTOMER_GRANTS get a push. Returns the newest consent's id.
    async fn prepare(&self) -> Result<i64, StorageError> {
        let db = &self.inner.db;
        let at = now();
        let unsynced = store::schedule_unsynced(db, at).await?;
        let regrant = store::schedule_regrant(db, &self.inner.grants_text, at).await?;
        if unsynced + regrant > 0 {
            tracing::info!(
                partners = unsynced,
                customers = regrant,
                "customers: syncs and pushes due at start"
            );
        }
        store::last_consent_id(db).await
    }

    /// A partner that consented since `seen` is synced now.
    async fn follow_consents(&self, seen: &mut i64) -> Result<(), StorageError> {
        let (last, partners) = store::consents_after(&self.inner.db, *seen).await?;
        for partner in partners {
            store::schedule_sync(&self.inner.db, &partner, now()).await?;
        }
        *seen = last;
        Ok(())
    }

    /// Claims due syncs and pushes while workers are free.
    async fn fill(&self, work: &mut JoinSet<Done>, syncing: &mut usize, pushing: &mut usize) {
        let db = &self.inner.db;
        let at = now();
        if *syncing < SYNC_WORKERS {
            let free = (SYNC_WORKERS - *syncing) as i64;
            match store::claim_due_syncs(db, at, at + CLAIM_SECS, free).await {
                Ok(partners) => {
                    for partner in partners {
                        *syncing += 1;
                        let customers = self.clone();
                        work.spawn(async move {
                            let _ = customers.sync(&partner, "scheduler").await;
                            Done::Synced
                        });
                    }
                }
                Err(e) => tracing::warn!(error = %e, "customers: cannot claim syncs"),
            }
        }
        if *pushing < WORKERS {
            let free = (WORKERS - *pushing) as i64;
            match store::claim_due_consents(db, None, at, at + CLAIM_SECS, free).await {
                Ok(rows) => {
                    for row in rows {
                        *pushing += 1;
                        let customers = self.clone();
                        work.spawn(async move {
                            customers.push_logged(&row, "scheduler").await;
                            Done::Pushed
                        });
                    }
                }
                Err(e) => tracing::warn!(error = %e, "customers: cannot claim pushes"),
            }
        }
    }

    async fn push_logged(&self, row: &store::CustomerRow, actor: &str) -> Option<Pushed> {
        match self.consent(row, actor).await {
            Ok(pushed) => Some(pushed),
            Err(e) => {
                tracing::warn!(tenant.id = %row.partner_tenant_id, customer.id = %row.customer_tenant_id, error = %e, "customers: a push could not be recorded");
                None
            }
        }
    }

    /// Pushes every due customer of `partner` (the CLI's `customers consent`) with
    /// [`WORKERS`] workers, until none is due; returns how many pushes ran.
    pub async fn push_due(&self, partner: &TenantId, actor: &str) -> Result<u64, StorageError> {
        let mut work: JoinSet<()> = JoinSet::new();
        let mut ran = 0;
        loop {
            let free = WORKERS.saturating_sub(work.len()) as i64;
            let at = now();
            let rows = if free > 0 {
                store::claim_due_consents(&self.inner.db, Some(partner), at, at + CLAIM_SECS, free)
                    .await?
            } else {
                Vec::new()
            };
            for row in rows {
                ran += 1;
                let customers = self.clone();
                let actor = actor.to_string();
                work.spawn(async move {
                    customers.push_logged(&row, &actor).await;
                });
            }
            if work.join_next().await.is_none() {
                return Ok(ran);
            }
        }
    }
}
