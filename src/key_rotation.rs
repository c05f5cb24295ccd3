//! `samvault keys rotate`: moves every sealed record onto a new key-encryption key.
//!
//! Only the wrapped data keys change (unwrap with the old KEK, wrap with the new one); the
//! sealed payloads are untouched, so a rotation is cheap and never exposes a refresh token.
//! It runs online, beside a serving `samvault serve`: each record moves by compare-and-swap
//! (a row the service re-sealed or shredded meanwhile is left alone), and the service follows
//! the new KEK within one refresh interval. Progress is derived from the data (records not yet
//! under the target KEK), and the job's target is recorded in `key_rotations`, so a rotation
//! killed half-way is resumed onto the same KEK by running the command again.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::storage::sealed::{self, RowKey, SealedTable};
use crate::storage::session_keys::{self, SessionKeyError};
use crate::storage::{Db, StorageError, audit, now};
use crate::vault::{KeyProvider, Vault, VaultError};

/// Rows read per batch; each moves by its own compare-and-swap.
const BATCH: i64 = 200;
/// Passes over the tables before giving up on records that keep arriving under an old KEK (a
/// replica that never picks up the new one).
const MAX_PASSES: usize = 10;
/// Beyond the provider's refresh bound: time for a record sealed just before a service
/// refreshed to reach the database.
const SETTLE: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum KeyRotationError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error(transparent)]
    SessionKey(#[from] SessionKeyError),
    #[error(
        "{remaining} sealed records could not be moved onto {target} (first error: {first_error}); nothing was lost, run the command again once the cause is fixed"
    )]
    Incomplete {
        target: String,
        remaining: i64,
        first_error: String,
    },
}

/// Which KEK a rotation moves records onto.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// Create a new KEK version first (the usual rotation), unless an interrupted rotation
    /// is waiting to be resumed.
    NewKey,
    /// The provider's current KEK: the second half of a move between providers
    /// (`SAMVAULT_PREVIOUS_KEY_PROVIDERS`), or a rotation whose new key was made elsewhere.
    Current,
}

/// Where a rotation stands, for a progress bar.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    pub moved: i64,
    /// Records that were not under the target when the job (re)started.
    pub total: i64,
}

/// What a finished rotation did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    pub target_kek_id: String,
    /// Whether this run resumed a rotation a crash or an interrupt had left unfinished.
    pub resumed: bool,
    /// Records moved onto the target by this run, per kind of sealed data.
    pub moved: BTreeMap<&'static str, i64>,
    /// Old KEK versions nothing references any more that the provider removed.
    pub retired: Vec<String>,
    /// Old KEK versions nothing references any more that live elsewhere (a previous provider,
    /// a Key Vault version): safe to remove or disable by hand.
    pub unreferenced: Vec<String>,
}

impl Report {
    pub fn total_moved(&self) -> i64 {
        self.moved.values().sum()
    }
}

fn table_name(table: SealedTable) -> &'static str {
    match table {
        SealedTable::Grants => "refresh tokens",
        SealedTable::SessionKeys => "session keys",
        SealedTable::OpsTotp => "ops users' TOTP secrets",
        SealedTable::AuditKey => "audit chain key",
    }
}

/// Runs (or resumes) a key rotation to completion; `progress` is called after every batch.
pub async fn rotate(
    db: &Db,
    vault: &Vault,
    target: Target,
    actor: &str,
    mut progress: impl FnMut(Progress),
) -> Result<Report, KeyRotationError> {
    let provider = vault.provider();
    provider.refresh().await?;
    let Started {
        job,
        resumed,
        current_since,
    } = start_or_resume(db, provider, target).await?;
    let kek = job.target_kek_id.clone();
    // Sessions move onto a new session key too (services take it up within a minute): the
    // old one stays readable to whoever holds the old KEK, until its sessions are gone.
    session_keys::add(db, vault).await?;
    let before: Vec<String> = sealed::count_by_kek(db)
        .await?
        .into_iter()
        .filter(|c| c.kek_id != kek)
        .map(|c| c.kek_id)
        .collect();
    let (moved, done) = move_all(db, vault, &job, current_since, &mut progress).await?;
    sealed::update_rotation(db, &job.id, job.rewrapped + done, Some(now())).await?;
    let (retired, unreferenced) = retire_unreferenced(db, provider, before).await?;
    let report = Report {
        target_kek_id: kek,
        resumed,
        moved,
        retired,
        unreferenced,
    };
    audit::append(
        db,
        actor,
        "keys.rotate",
        None,
        serde_json::json!({
            "kek_id": report.target_kek_id,
            "resumed": report.resumed,
            "rewrapped": report.total_moved(),
            "retired": report.retired,
        }),
        now(),
    )
    .await?;
    Ok(report)
}

/// The job a run works on, and when its KEK became current for running services: they may
/// wrap with the old one for up to two refresh intervals after that.
struct Started {
    job: sealed::KeyRotation,
    resumed: bool,
    current_since: i64,
}

async fn start_or_resume(
    db: &Db,
    provider: &dyn KeyProvider,
    target: Target,
) -> Result<Started, KeyRotationError> {
    let unfinished = sealed::unfinished_rotation(db).await?;
    // Resume only onto the KEK the provider still calls current; otherwise the old job is
    // superseded (someone rotated again) and this run starts afresh.
    if let Some(job) = unfinished {
        if job.target_kek_id == provider.current_kek_id() {
            let current_since = job.started_at;
            return Ok(Started {
                job,
                resumed: true,
                current_since,
            });
        }
        sealed::update_rotation(db, &job.id, job.rewrapped, Some(now())).await?;
    }
    let (kek, current_since) = match target {
        Target::NewKey => (provider.create_kek().await?, now()),
        // Already current for the services (they were restarted onto it).
        Target::Current => (provider.current_kek_id(), 0),
    };
    Ok(Started {
        job: sealed::start_rotation(db, &kek, now()).await?,
        resumed: false,
        current_since,
    })
}

/// Passes over the tables until nothing is left under another KEK, even after the services
/// have had time to pick up the target. Returns the records moved, per kind and in all.
async fn move_all(
    db: &Db,
    vault: &Vault,
    job: &sealed::KeyRotation,
    current_since: i64,
    progress: &mut impl FnMut(Progress),
) -> Result<(BTreeMap<&'static str, i64>, i64), KeyRotationError> {
    let kek = &job.target_kek_id;
    let total = sealed::count_not_under(db, kek).await?;
    let mut moved: BTreeMap<&'static str, i64> = BTreeMap::new();
    let mut done = 0;
    progress(Progress { moved: 0, total });
    let mut pass = 0;
    loop {
        pass += 1;
        let (pass_moved, first_error) =
            move_pass(db, vault, kek, &mut moved, &mut done, total, progress).await?;
        sealed::update_rotation(db, &job.id, job.rewrapped + done, None).await?;
        let mut remaining = sealed::count_not_under(db, kek).await?;
        if remaining == 0 {
            // A serving process may wrap with the old KEK until its next refresh, and insert
            // the record a moment later: wait that long, then look again before calling the
            // job done (and retiring the old key).
            let interval = vault.provider().refresh_interval().as_secs() as i64;
            let refreshed_by = current_since + 2 * interval;
            let wait = Duration::from_secs(refreshed_by.saturating_sub(now()).max(0) as u64);
            tokio::time::sleep(wait + SETTLE).await;
            remaining = sealed::count_not_under(db, kek).await?;
            if remaining == 0 {
                return Ok((moved, done));
            }
        }
        if pass_moved == 0 || pass >= MAX_PASSES {
            return Err(KeyRotationError::Incomplete {
                target: kek.clone(),
                remaining,
                first_error: first_error.unwrap_or_else(|| {
                    "records keep arriving under an old key: is a replica running without the new key?"
                        .into()
                }),
            });
        }
    }
}

/// Old KEK versions nothing references any more: removed when the provider owns them
/// (`retired`), otherwise left for a person to remove (`unreferenced`).
async fn retire_unreferenced(
    db: &Db,
    provider: &dyn KeyProvider,
    before: Vec<String>,
) -> Result<(Vec<String>, Vec<String>), KeyRotationError> {
    let still: Vec<String> = sealed::count_by_kek(db)
        .await?
        .into_iter()
        .map(|c| c.kek_id)
        .collect();
    let (mut retired, mut unreferenced) = (Vec::new(), Vec::new());
    for old in before.into_iter().filter(|id| !still.contains(id)) {
        if provider.owns(&old) && provider.retire(&old).await? {
            retired.push(old);
        } else {
            unreferenced.push(old);
        }
    }
    Ok((retired, unreferenced))
}

/// One keyset pass over every sealed table. Returns the records moved (or found already moved
/// by someone else) and the first error met; rows that fail are skipped, not retried, so a
/// record that cannot be opened never stalls the others.
async fn move_pass(
    db: &Db,
    vault: &Vault,
    kek: &str,
    moved: &mut BTreeMap<&'static str, i64>,
    done: &mut i64,
    total: i64,
    progress: &mut impl FnMut(Progress),
) -> Result<(i64, Option<String>), KeyRotationError> {
    let (mut pass_moved, mut first_error) = (0, None);
    for table in SealedTable::ALL {
        let mut after = RowKey::default();
        loop {
            let rows = sealed::not_under(db, table, kek, &after, BATCH).await?;
            let Some(last) = rows.last() else { break };
            after = last.at.clone();
            for row in &rows {
                let new = match vault.rewrap(&row.wrapped).await {
                    Ok(new) => new,
                    Err(e) => {
                        first_error.get_or_insert_with(|| e.to_string());
                        continue;
                    }
                };
                if sealed::swap_wrapped_key(db, row, &new).await? {
                    *moved.entry(table_name(table)).or_default() += 1;
                    *done += 1;
                }
                // A lost race means the row was re-sealed or shredded: progress all the same.
                pass_moved += 1;
            }
            progress(Progress {
                moved: *done,
                total: total.max(*done),
            });
        }
    }
    Ok((pass_moved, first_error))
}
