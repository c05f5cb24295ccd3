//! The token request log: one row per call to the token endpoint, inserted in batches.

use super::{Db, StorageError};

/// One token request as the security report needs it (no token material).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestRecord {
    pub at: i64,
    pub client_id: String,
    pub tenant_id: String,
    pub resource: String,
    pub purpose: String,
    /// `issued`, or the problem code the caller got.
    pub outcome: String,
    pub cached: bool,
    /// Whether the issued token's `amr` carried `mfa`; `None` when no token was issued.
    pub mfa: Option<bool>,
}

const COLUMNS: usize = 8;

/// Inserts a batch with one multi-row statement; also moves each client's `last_used_at`.
pub async fn insert_batch(db: &Db, records: &[RequestRecord]) -> Result<(), StorageError> {
    if records.is_empty() {
        return Ok(());
    }
    let mut sql = String::from(
        "INSERT INTO token_requests (at, client_id, tenant_id, resource, purpose, outcome, cached, mfa) VALUES ",
    );
    for i in 0..records.len() {
        let n = i * COLUMNS;
        let row: Vec<String> = (1..=COLUMNS).map(|c| format!("${}", n + c)).collect();
        sql.push_str(&format!(
            "{}({})",
            if i == 0 { "" } else { ", " },
            row.join(", ")
        ));
    }
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    for r in records {
        query = query
            .bind(r.at)
            .bind(&r.client_id)
            .bind(&r.tenant_id)
            .bind(&r.resource)
            .bind(&r.purpose)
            .bind(&r.outcome)
            .bind(i64::from(r.cached))
            .bind(r.mfa.map(i64::from));
    }
    let mut tx = db.begin_write().await?;
    query.execute(&mut *tx).await?;
    let mut last_used = std::collections::BTreeMap::<&str, i64>::new();
    for r in records {
        let at = last_used.entry(r.client_id.as_str()).or_insert(r.at);
        *at = (*at).max(r.at);
    }
    for (client, at) in last_used {
        sqlx::query("UPDATE clients SET last_used_at = $2 WHERE client_id = $1 AND (last_used_at IS NULL OR last_used_at < $2)")
            .bind(client)
            .bind(at)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// The most recent requests, newest first (the security report's download).
pub async fn latest(db: &Db, limit: i64) -> Result<Vec<RequestRecord>, StorageError> {
    use sqlx::Row;
    let rows = sqlx::query(
        "SELECT at, client_id, tenant_id, resource, purpose, outcome, cached, mfa FROM token_requests ORDER BY id DESC LIMIT $1",
    )
    .bind(limit)
    .fetch_all(db.pool())
    .await?;
    rows.iter()
        .map(|r| {
            Ok(RequestRecord {
                at: r.try_get("at")?,
                client_id: r.try_get("client_id")?,
                tenant_id: r.try_get("tenant_id")?,
                resource: r.try_get("resource")?,
                purpose: r.try_get("purpose")?,
                outcome: r.try_get("outcome")?,
                cached: super::flag(r.try_get("cached")?),
                mfa: r.try_get::<Option<i64>, _>("mfa")?.map(super::flag),
            })
        })
        .collect()
}
