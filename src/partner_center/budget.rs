//! Partner Center's limit for the Control Panel Vendor APIs, 50 requests a second per
//! application id, kept by pacing: time is cut into windows of 1/50 s (plus a little
//! margin) and each window admits one call. Partner Center judges a sliding second, so
//! evenly spaced calls are never refused where bursts of 50 at a window's edge would be.
//!
//! Every Partner Center call of the process takes its window here (syncs, consents, the
//! CLI's work), in the order asked. On PostgreSQL, replicas also claim each window in
//! `partner_center_budget` (one `INSERT … ON CONFLICT DO NOTHING`: whoever inserts the row
//! owns the window), so together they stay under the limit and a busy replica takes the
//! windows the others leave; SQLite serves one process. A 429 pauses the whole process for
//! its `Retry-After`.

use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::storage::{Backend, Db, customers};

/// Partner Center's limit per application id and second.
pub const CALLS_PER_SECOND: u64 = 50;
/// One window per call: 1/50 s and a 2.5 % margin for clocks and scheduling.
pub const WINDOW: Duration = Duration::from_micros(1_000_000 / CALLS_PER_SECOND * 1025 / 1000);
/// Windows older than this are deleted from the shared table.
const KEEP_WINDOWS: i64 = 500;

pub struct Budget {
    app_id: String,
    /// Present on PostgreSQL: the table replicas share.
    shared: Option<Db>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The next window this process may use.
    next: i64,
    /// No call before this window (a 429's Retry-After).
    paused_until: i64,
    /// Claims since the shared table was last pruned.
    claims: u64,
}

impl std::fmt::Debug for Budget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Budget")
            .field("app_id", &self.app_id)
            .field("shared", &self.shared.is_some())
            .finish_non_exhaustive()
    }
}

/// The window the wall clock is in now (wall clock: replicas share the numbering).
fn current_window() -> i64 {
    let micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64);
    micros / WINDOW.as_micros() as i64
}

fn window_start(window: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros((window.max(0) as u64) * WINDOW.as_micros() as u64)
}

impl Budget {
    /// The budget of application `app_id`; shared through `db` when it is PostgreSQL.
    pub fn new(app_id: &str, db: &Db) -> Budget {
        Budget {
            app_id: app_id.to_ascii_lowercase(),
            shared: (db.backend() == Backend::Postgres).then(|| db.clone()),
            state: Mutex::default(),
        }
    }

    /// Waits for this call's window. A database error on the shared table falls back to
    /// this process's own pacing: a 429 is retried anyway.
    pub async fn acquire(&self) {
        let mut window = self.reserve(None);
        if let Some(db) = &self.shared {
            loop {
                match customers::take_window(db, &self.app_id, window).await {
                    Ok(true) => break,
                    Ok(false) => window = self.reserve(Some(window)),
                    Err(e) => {
                        tracing::warn!(error = %e, "Partner Center budget: shared table unavailable");
                        break;
                    }
                }
            }
            self.prune(db, window).await;
        }
        if let Ok(wait) = window_start(window).duration_since(SystemTime::now()) {
            tokio::time::sleep(wait).await;
        }
    }

    /// The next free window of this process (after `taken`, one another replica owns).
    fn reserve(&self, taken: Option<i64>) -> i64 {
        let mut state = self.state.lock().expect("budget lock");
        let window = current_window()
            .max(state.next)
            .max(state.paused_until)
            .max(taken.map_or(0, |t| t + 1));
        state.next = window + 1;
        window
    }

    /// Partner Center answered 429: no call of this process for `retry_after`.
    pub fn pause(&self, retry_after: Duration) {
        let windows = retry_after.as_micros() / WINDOW.as_micros();
        let until = current_window() + windows as i64;
        let mut state = self.state.lock().expect("budget lock");
        state.paused_until = state.paused_until.max(until);
    }

    async fn prune(&self, db: &Db, window: i64) {
        let due = {
            let mut state = self.state.lock().expect("budget lock");
            state.claims += 1;
            state.claims.is_multiple_of(KEEP_WINDOWS as u64)
        };
        if due && let Err(e) = customers::prune_windows(db, window - KEEP_WINDOWS).await {
            tracing::warn!(error = %e, "Partner Center budget: pruning failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_a_little_longer_than_a_fiftieth() {
        assert_eq!(WINDOW, Duration::from_micros(20_500));
    }

    #[tokio::test]
    async fn calls_are_paced_one_window_apart() {
        let db = Db::connect(&secrecy::SecretString::from("sqlite::memory:"))
            .await
            .unwrap();
        let budget = Budget::new("app", &db);
        let start = std::time::Instant::now();
        for _ in 0..11 {
            budget.acquire().await;
        }
        // Ten gaps of a window each, the first call at once.
        let took = start.elapsed();
        assert!(took >= WINDOW * 9, "{took:?}");
        assert!(took < WINDOW * 14, "{took:?}");
        budget.pause(Duration::from_millis(300));
        let paused = std::time::Instant::now();
        budget.acquire().await;
        assert!(
            paused.elapsed() >= Duration::from_millis(250),
            "{:?}",
            paused.elapsed()
        );
    }
}
