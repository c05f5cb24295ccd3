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
        let rows = sqlx::query(
            "SELECT seq, at, actor, action, tenant_id, detail, prev_hash, hash FROM audit_log \
             WHERE seq >= $1 ORDER BY seq LIMIT $2",
        )
        .bind(expected_seq)
        .bind(VERIFY_PAGE)
        .fetch_all(db.reader())
        .await?;
        for row in &rows {
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
            expected_seq += 1;
        }
        if (rows.len() as i64) < VERIFY_PAGE {
            // The end of the log. (Rows cut off its end leave no trace in the chain: the
            // shorter chain verifies, as it always has.)
            return Ok(Ok((expected_seq - 1) as u64));
        }
    }
}

fn event_from_row(row: &sqlx::any::AnyRow) -> Result<AuditEvent, StorageError> {
    let detail: String = row.try_get("detail")?;
    Ok(AuditEvent {
        seq: row.try_get("seq")?,
        at: row.try_get("at")?,
        actor: row.try_get("actor")?,
        action: row.try_get("action")?,
        tenant_id: row.try_get("tenant_id")?,
        detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::String(detail)),
    })
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
    // Only these fixed fragments reach the SQL text; every value is a bound parameter.
    let mut conditions: Vec<&str> = Vec::new();
    let mut text_values: Vec<&str> = Vec::new();
    let mut number_values: Vec<i64> = Vec::new();
    for (value, column) in [
        (&filter.actor, "actor"),
        (&filter.action, "action"),
        (&filter.tenant_id, "tenant_id"),
    ] {
        if let Some(value) = value {
            conditions.push(column);
            text_values.push(value);
        }
    }
    let mut sql =
        String::from("SELECT seq, at, actor, action, tenant_id, detail FROM audit_log WHERE 1 = 1");
    let mut n = 0;
    for column in &conditions {
        n += 1;
        sql.push_str(&format!(" AND {column} = ${n}"));
    }
    for (value, condition) in [
        (filter.from, "at >="),
        (filter.until, "at <"),
        (filter.before_seq, "seq <"),
    ] {
        if let Some(value) = value {
            n += 1;
            sql.push_str(&format!(" AND {condition} ${n}"));
            number_values.push(value);
        }
    }
    sql.push_str(&format!(" ORDER BY seq DESC LIMIT ${}", n + 1));
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    for value in text_values {
        query = query.bind(value);
    }
    for value in number_values {
        query = query.bind(value);
    }
    let rows = query.bind(limit).fetch_all(db.reader()).await?;
    rows.iter().map(event_from_row).collect()
}

pub async fn recent(db: &Db, limit: i64) -> Result<Vec<AuditEvent>, StorageError> {
    search(db, &AuditFilter::default(), limit).await
}
