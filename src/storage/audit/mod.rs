//! The audit log: append-only and hash-chained, so a deleted or edited row breaks the chain.
//!
//! Each row's hash is SHA-256 over the previous hash and the row's canonical fields.
//! Appends are serialised (a process-wide lock, plus a transaction-scoped advisory lock on
//! PostgreSQL for replicas) so the chain never forks.

use sha2::{Digest, Sha256};
use tokio::sync::Mutex;

use super::{Backend, Db, FromRow, SqlBuilder, StorageError};

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

fn row_hash(
    prev: &str,
    seq: i64,
    at: i64,
    actor: &str,
    action: &str,
    tenant: Option<&str>,
    detail: &str,
) -> String {
    let mut h = Sha256::new();
    for part in [
        prev,
        &seq.to_string(),
        &at.to_string(),
        actor,
        action,
        tenant.unwrap_or(""),
        detail,
    ] {
        // Length-prefix every field so no two different rows serialise alike.
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    hex::encode(h.finalize())
}

/// Appends one event. `detail` must never hold secrets (callers pass ids, names, outcomes).
pub async fn append(
    db: &Db,
    actor: &str,
    action: &str,
    tenant: Option<&str>,
    detail: serde_json::Value,
    at: i64,
) -> Result<i64, StorageError> {
    let _guard = APPEND.lock().await;
    let mut tx = db.begin_write().await?;
    if db.backend() == Backend::Postgres {
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(AUDIT_LOCK_KEY)
            .execute(&mut *tx)
            .await?;
    }
    let last: Option<(i64, String)> =
        sqlx::query_as("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&mut *tx)
            .await?;
    let (seq, prev) = match last {
        Some((seq, hash)) => (seq + 1, hash),
        None => (1, GENESIS.to_string()),
    };
    let detail = detail.to_string();
    let hash = row_hash(&prev, seq, at, actor, action, tenant, &detail);
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
    .bind(&hash)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(seq)
}

/// Rows per read while verifying: the walk holds one page in memory, not the whole log.
const VERIFY_PAGE: i64 = 1000;

/// Walks the whole chain; returns the number of entries, or the first sequence number that
/// does not verify. Reads pages of [`VERIFY_PAGE`] rows through the read connections, so a
/// long log neither fills memory nor holds SQLite's single writer connection; rows appended
/// during the walk are simply walked too.
pub async fn verify(db: &Db) -> Result<Result<u64, i64>, StorageError> {
    let mut prev = GENESIS.to_string();
    let mut expected_seq: i64 = 1;
    loop {
        let rows: Vec<ChainRow> = sqlx::query_as(
            "SELECT seq, at, actor, action, tenant_id, detail, prev_hash, hash FROM audit_log \
             WHERE seq >= $1 ORDER BY seq LIMIT $2",
        )
        .bind(expected_seq)
        .bind(VERIFY_PAGE)
        .fetch_all(db.reader())
        .await?;
        let page = rows.len() as i64;
        for row in rows {
            let EventRow {
                seq,
                at,
                actor,
                action,
                tenant_id,
                detail,
            } = &row.event;
            let computed = row_hash(
                &prev,
                *seq,
                *at,
                actor,
                action,
                tenant_id.as_deref(),
                detail,
            );
            if *seq != expected_seq || row.prev_hash != prev || row.hash != computed {
                return Ok(Err(*seq));
            }
            prev = row.hash;
            expected_seq += 1;
        }
        if page < VERIFY_PAGE {
            // The end of the log. (Rows cut off its end leave no trace in the chain: the
            // shorter chain verifies, as it always has.)
            return Ok(Ok((expected_seq - 1) as u64));
        }
    }
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
