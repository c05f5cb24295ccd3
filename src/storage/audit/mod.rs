//! The audit log: append-only and chained, so a deleted, edited or inserted row breaks the
//! chain, even for someone who can write to the database.
//!
//! Each row's `hash` is a MAC, under a key the vault seals (`chain.rs`), of the previous
//! row's `hash` and the row's canonical fields; rows from before the key keep plain SHA-256
//! hashes. Appends are serialised (a process-wide lock, plus a transaction-scoped advisory
//! lock on PostgreSQL for replicas) so the chain never forks. Each append also records the
//! new head outside the database when configured (`anchor.rs`), which is what shows rows cut
//! off the end.

mod anchor;
mod chain;
mod verify;

pub use anchor::{AnchorState, Head, read as read_anchor};
pub use chain::{Chain, ChainKey, CheckpointEvent};
pub use verify::{Broken, Verified, verify};

use tokio::sync::Mutex;

use super::{Backend, Db, FromRow, SealedColumns, SqlBuilder, StorageError};
use crate::vault::Sealed;
use chain::Fields;

static APPEND: Mutex<()> = Mutex::const_new(());
/// Arbitrary constant naming the audit chain's advisory lock on PostgreSQL.
const AUDIT_LOCK_KEY: i64 = 0x5a4d_7661_756c_7401;
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Clone, Debug)]
pub struct AuditEvent {
    pub seq: i64,
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub tenant_id: Option<String>,
    pub detail: serde_json::Value,
}

type WriteTx = sqlx::Transaction<'static, sqlx::Any>;

/// A write transaction that holds the chain: nobody else appends until it ends.
async fn begin_chain(db: &Db) -> Result<WriteTx, StorageError> {
    let mut tx = db.begin_write().await?;
    if db.backend() == Backend::Postgres {
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(AUDIT_LOCK_KEY)
            .execute(&mut *tx)
            .await?;
    }
    Ok(tx)
}

/// The next entry's number and the hash it chains to.
async fn next_link(tx: &mut WriteTx) -> Result<(i64, String), StorageError> {
    let last: Option<(i64, String)> =
        sqlx::query_as("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&mut **tx)
            .await?;
    Ok(match last {
        Some((seq, hash)) => (seq + 1, hash),
        None => (1, GENESIS.to_string()),
    })
}

/// Appends one event. `detail` must never hold secrets (callers pass ids, names, outcomes).
/// Needs the chain's key ([`Db::with_audit_chain`]); then writes the new head to the anchor
/// file (returning once it is on disk), unless the file names a head the log no longer holds
/// (kept as evidence).
pub async fn append(
    db: &Db,
    actor: &str,
    action: &str,
    tenant: Option<&str>,
    detail: serde_json::Value,
    at: i64,
) -> Result<i64, StorageError> {
    let chain = db.audit_chain().ok_or(StorageError::NoAuditKey)?;
    let guard = APPEND.lock().await;
    let mut tx = begin_chain(db).await?;
    let (seq, prev) = next_link(&mut tx).await?;
    let detail = detail.to_string();
    let entry = Fields {
        seq,
        at,
        actor,
        action,
        tenant,
        detail: &detail,
    };
    let head = Head {
        seq,
        mac: chain.seal(&prev, &entry),
    };
    sqlx::query(
        "INSERT INTO audit_log (seq, at, actor, action, tenant_id, detail, prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(seq)
    .bind(at)
    .bind(actor)
    .bind(action)
    .bind(tenant)
    .bind(&detail)
    .bind(&prev)
    .bind(&head.mac)
    .execute(&mut *tx)
    .await?;
    if let Some(body) = chain.checkpoint(&head, at) {
        super::outbox::insert_with(&mut *tx, &body, at).await?;
    }
    tx.commit().await?;
    // Outside the append lock: one anchor write covers every append that queued behind it.
    drop(guard);
    if let Some(anchor) = chain.anchor() {
        anchor.advance(db, head).await;
    }
    Ok(seq)
}

/// What the anchor file says about the log now (start-up reports a lost anchor).
pub async fn check_anchor(db: &Db) -> Result<Option<AnchorState>, StorageError> {
    match db.audit_chain().and_then(Chain::anchor) {
        Some(anchor) => Ok(Some(anchor.state(db).await?)),
        None => Ok(None),
    }
}

/// The audit key as stored: sealed by the vault, with the first entry it chains.
pub struct StoredKey {
    pub first_seq: i64,
    pub sealed: Sealed,
}

/// The associated data the audit key is sealed under: the first keyed entry is bound to the
/// key, so moving it (to pass rewritten entries off as pre-key ones) makes the key unopenable.
pub fn key_context(first_seq: i64) -> String {
    format!("samvault:audit-key:first-seq:{first_seq}")
}

/// The one row of `audit_key`.
const KEY_NAME: &str = "audit";

pub async fn stored_key(db: &Db) -> Result<Option<StoredKey>, StorageError> {
    #[derive(FromRow)]
    struct KeyRow {
        first_seq: i64,
        #[sqlx(flatten)]
        sealed: SealedColumns,
    }
    let row: Option<KeyRow> = sqlx::query_as(
        "SELECT first_seq, kek_id, wrapped_key, sealed FROM audit_key WHERE name = $1",
    )
    .bind(KEY_NAME)
    .fetch_optional(db.pool())
    .await?;
    row.map(|row| {
        Ok(StoredKey {
            first_seq: row.first_seq,
            sealed: row
                .sealed
                .into_sealed()
                .map_err(|e| StorageError::Corrupt(format!("audit key: {e}")))?,
        })
    })
    .transpose()
}

/// The number the next entry will get.
pub async fn next_seq(db: &Db) -> Result<i64, StorageError> {
    Ok(
        sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) + 1 AS n FROM audit_log")
            .fetch_one(db.pool())
            .await?,
    )
}

/// Stores the audit key sealed for `first_seq`, if no key is stored yet and `first_seq` is
/// still the next entry's number. `false`: another process stored one first, or an entry was
/// appended meanwhile (seal again for the new number).
pub async fn store_key(
    db: &Db,
    first_seq: i64,
    sealed: &Sealed,
    at: i64,
) -> Result<bool, StorageError> {
    let mut tx = begin_chain(db).await?;
    if next_link(&mut tx).await?.0 != first_seq {
        return Ok(false);
    }
    let stored = sqlx::query(
        "INSERT INTO audit_key (name, first_seq, kek_id, wrapped_key, sealed, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (name) DO NOTHING",
    )
    .bind(KEY_NAME)
    .bind(first_seq)
    .bind(&sealed.wrapped_key.kek_id)
    .bind(&sealed.wrapped_key.bytes)
    .bind(sealed.record.as_bytes())
    .bind(at)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    tx.commit().await?;
    Ok(stored)
}

/// An `audit_log` row's event, with its detail still JSON text.
#[derive(FromRow)]
struct EventRow {
    seq: i64,
    at: i64,
    actor: String,
    action: String,
    tenant_id: Option<String>,
    detail: String,
}

/// An event with the hashes that chain it to the previous one.
#[derive(FromRow)]
struct ChainRow {
    #[sqlx(flatten)]
    event: EventRow,
    prev_hash: String,
    hash: String,
}

impl From<EventRow> for AuditEvent {
    fn from(row: EventRow) -> Self {
        AuditEvent {
            seq: row.seq,
            at: row.at,
            actor: row.actor,
            action: row.action,
            tenant_id: row.tenant_id,
            detail: serde_json::from_str(&row.detail)
                .unwrap_or(serde_json::Value::String(row.detail)),
        }
    }
}

/// What the ops audit viewer asks for; every field narrows the result.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditFilter {
    pub actor: Option<String>,
    pub action: Option<String>,
    pub tenant_id: Option<String>,
    /// Unix seconds, inclusive.
    pub from: Option<i64>,
    /// Unix seconds, exclusive.
    pub until: Option<i64>,
    /// Keyset paging: only entries older than this sequence number.
    pub before_seq: Option<i64>,
}

/// Entries matching `filter`, newest first, at most `limit` of them.
pub async fn search(
    db: &Db,
    filter: &AuditFilter,
    limit: i64,
) -> Result<Vec<AuditEvent>, StorageError> {
    let mut sql = SqlBuilder::new(
        db.backend(),
        "SELECT seq, at, actor, action, tenant_id, detail FROM audit_log",
    );
    for (value, condition) in [
        (&filter.actor, "actor = "),
        (&filter.action, "action = "),
        (&filter.tenant_id, "tenant_id = "),
    ] {
        if let Some(value) = value {
            sql.and_where(condition).push_bind(value.as_str());
        }
    }
    for (value, condition) in [
        (filter.from, "at >= "),
        (filter.until, "at < "),
        (filter.before_seq, "seq < "),
    ] {
        if let Some(value) = value {
            sql.and_where(condition).push_bind(value);
        }
    }
    sql.push(" ORDER BY seq DESC LIMIT ").push_bind(limit);
    let rows: Vec<EventRow> = sql.build_query_as().fetch_all(db.reader()).await?;
    Ok(rows.into_iter().map(AuditEvent::from).collect())
}

pub async fn recent(db: &Db, limit: i64) -> Result<Vec<AuditEvent>, StorageError> {
    search(db, &AuditFilter::default(), limit).await
}
