//! Sign-ins that fail for a name that is no user, and sign-ins the address throttle refused,
//! are counted and written to the audit log as one entry per [`WINDOW`] rather than one each:
//! a flood of them neither fills the log nor queues behind its single writer. The entry is
//! `ops.sign_in_failed` by `ops:(unknown)`, as single failures were, with the counts and the
//! window in its detail. Failures against real users stay one entry each (the account lock
//! bounds them).

use std::sync::Mutex;
use std::time::Duration;

use crate::storage::{Db, StorageError, audit, now};

/// How often the counts are written (and once more at shutdown).
pub const WINDOW: Duration = Duration::from_secs(60);

#[derive(Default)]
pub struct SignInNoise {
    counts: Mutex<Counts>,
}

#[derive(Default, Clone, Copy, Debug, PartialEq, Eq)]
struct Counts {
    unknown_users: u64,
    throttled: u64,
    /// Unix seconds of the first and last one counted.
    from: i64,
    until: i64,
}

impl Counts {
    fn is_empty(&self) -> bool {
        self.unknown_users == 0 && self.throttled == 0
    }

    fn add(&mut self, other: Counts) {
        if other.is_empty() {
            return;
        }
        self.from = if self.is_empty() {
            other.from
        } else {
            self.from.min(other.from)
        };
        self.until = self.until.max(other.until);
        self.unknown_users += other.unknown_users;
        self.throttled += other.throttled;
    }
}

impl SignInNoise {
    /// A sign-in failed at `at` for a name that is no user.
    pub fn unknown_user(&self, at: i64) {
        self.count(Counts {
            unknown_users: 1,
            throttled: 0,
            from: at,
            until: at,
        });
    }

    /// The address throttle refused a sign-in at `at`.
    pub fn throttled(&self, at: i64) {
        self.count(Counts {
            unknown_users: 0,
            throttled: 1,
            from: at,
            until: at,
        });
    }

    fn count(&self, one: Counts) {
        self.counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .add(one);
    }

    /// Writes what was counted since the last write as one audit entry (none if nothing was).
    /// On failure the counts are kept for the next write.
    pub async fn flush(&self, db: &Db) -> Result<(), StorageError> {
        let counts = std::mem::take(&mut *self.counts.lock().unwrap_or_else(|e| e.into_inner()));
        if counts.is_empty() {
            return Ok(());
        }
        let detail = serde_json::json!({
            "count": counts.unknown_users,
            "throttled": counts.throttled,
            "from": counts.from,
            "until": counts.until,
        });
        let written = audit::append(
            db,
            "ops:(unknown)",
            "ops.sign_in_failed",
            None,
            detail,
            now(),
        )
        .await;
        if written.is_err() {
            self.count(counts);
        }
        written.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_add_up_over_their_window() {
        let noise = SignInNoise::default();
        noise.unknown_user(100);
        noise.throttled(90);
        noise.unknown_user(130);
        let counts = *noise.counts.lock().unwrap();
        assert_eq!(
            counts,
            Counts {
                unknown_users: 2,
                throttled: 1,
                from: 90,
                until: 130
            }
        );
    }
}
