//! The audit log: append-only and hash-chained, so a deleted or edited row breaks the chain.
//!
//! Each row's hash is SHA-256 over the previous hash and the row's canonical fields.
//! Appends are serialised (a process-wide lock, plus a transaction-scoped advisory lock on
//! PostgreSQL for replicas) so the chain never forks.

use sha2::{Digest, Sha256};
use sqlx::Row;
use tokio::sync::Mutex;

use super::{Backend, Db, StorageError};

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
    let last = sqlx::query("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
        .fetch_optional(&mut *tx)
        .await?;
    let (seq, prev) = match last {
        Some(row) => (
            row.try_get::<i64, _>("seq")? + 1,
            row.try_get::<String, _>("hash")?,
        ),
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

/// Walks the whole chain; returns the first sequence number that does not verify.
pub async fn verify(db: &Db) -> Result<Result<u64, i64>, StorageError> {
    let rows = sqlx::query("SELECT seq, at, actor, action, tenant_id, detail, prev_hash, hash FROM audit_log ORDER BY seq")
        .fetch_all(db.pool())
        .await?;
    let mut prev = GENESIS.to_string();
    for (expected_seq, row) in (1..).zip(rows.iter()) {
        let seq: i64 = row.try_get("seq")?;
        let tenant: Option<String> = row.try_get("tenant_id")?;
        let stored_prev: String = row.try_get("prev_hash")?;
        let stored: String = row.try_get("hash")?;
        let computed = row_hash(
            &prev,
            seq,
            row.try_get("at")?,
            &row.try_get::<String, _>("actor")?,
            &row.try_get::<String, _>("action")?,
            tenant.as_deref(),
            &row.try_get::<String, _>("detail")?,
        );
        if seq != expected_seq || stored_prev != prev || stored != computed {
            return Ok(Err(seq));
        }
        prev = stored;
    }
    Ok(Ok(rows.len() as u64))
}

pub async fn recent(db: &Db, limit: i64) -> Result<Vec<AuditEvent>, StorageError> {
    let rows = sqlx::query("SELECT seq, at, actor, action, tenant_id, detail FROM audit_log ORDER BY seq DESC LIMIT $1")
        .bind(limit)
        .fetch_all(db.pool())
        .await?;
    rows.iter()
        .map(|row| {
            let detail: String = row.try_get("detail")?;
            Ok(AuditEvent {
                seq: row.try_get("seq")?,
                at: row.try_get("at")?,
                actor: row.try_get("actor")?,
                action: row.try_get("action")?,
                tenant_id: row.try_get("tenant_id")?,
                detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::String(detail)),
            })
        })
        .collect()
}
