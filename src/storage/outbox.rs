//! The webhook outbox (`webhook_outbox`): events written beside the status change that caused
//! them, claimed and delivered by the webhook worker (`notify`).

use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Backend, Db, StorageError};

/// Attempts after which a row is left undelivered (and an error logged).
pub const MAX_ATTEMPTS: i64 = 20;

/// A row claimed for delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxRow {
    pub id: i64,
    /// The event's JSON, sent as is.
    pub body: String,
    /// Attempts made before this one.
    pub attempts: i64,
}

impl sqlx::FromRow<'_, AnyRow> for OutboxRow {
    fn from_row(row: &AnyRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            id: row.try_get("id")?,
            body: row.try_get("body")?,
            attempts: row.try_get("attempts")?,
        })
    }
}

/// Claims due rows and leases them in one statement. PostgreSQL skips rows another replica
/// holds; SQLite serialises writers, which gives the same guarantee.
const CLAIM_POSTGRES: &str = "UPDATE webhook_outbox SET next_attempt_at = $1 WHERE id IN (\
     SELECT id FROM webhook_outbox \
     WHERE delivered_at IS NULL AND next_attempt_at <= $2 AND attempts < $3 \
     ORDER BY next_attempt_at, id LIMIT $4 FOR UPDATE SKIP LOCKED) \
     RETURNING id, body, attempts";
const CLAIM_SQLITE: &str = "UPDATE webhook_outbox SET next_attempt_at = $1 WHERE id IN (\
     SELECT id FROM webhook_outbox \
     WHERE delivered_at IS NULL AND next_attempt_at <= $2 AND attempts < $3 \
     ORDER BY next_attempt_at, id LIMIT $4) \
     RETURNING id, body, attempts";

/// Writes an event's `body` to the outbox, due at `now`.
pub async fn insert(db: &Db, body: &str, now: i64) -> Result<(), StorageError> {
    insert_with(db.pool(), body, now).await
}

/// [`insert`] on any executor, such as the transaction that records the status change, so
/// the event is committed (or rolled back) with it.
pub async fn insert_with<'e, E>(executor: E, body: &str, now: i64) -> Result<(), StorageError>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    sqlx::query(
        "INSERT INTO webhook_outbox (created_at, body, attempts, next_attempt_at) VALUES ($1, $2, 0, $3)",
    )
    .bind(now)
    .bind(body)
    .bind(now)
    .execute(executor)
    .await?;
    Ok(())
}

/// Up to `limit` undelivered rows due at `now` with fewer than `max_attempts` attempts,
/// leased until `lease_until` so no other worker sends them meanwhile.
pub async fn claim_due(
    db: &Db,
    now: i64,
    lease_until: i64,
    max_attempts: i64,
    limit: i64,
) -> Result<Vec<OutboxRow>, StorageError> {
    let claim = match db.backend() {
        Backend::Postgres => CLAIM_POSTGRES,
        Backend::Sqlite => CLAIM_SQLITE,
    };
    Ok(sqlx::query_as(claim)
        .bind(lease_until)
        .bind(now)
        .bind(max_attempts)
        .bind(limit)
        .fetch_all(db.pool())
        .await?)
}

/// Row `id` was delivered at `now`, on attempt number `attempts`.
pub async fn mark_delivered(db: &Db, id: i64, attempts: i64, now: i64) -> Result<(), StorageError> {
    sqlx::query("UPDATE webhook_outbox SET delivered_at = $1, attempts = $2 WHERE id = $3")
        .bind(now)
        .bind(attempts)
        .bind(id)
        .execute(db.pool())
        .await?;
    Ok(())
}

/// Attempt number `attempts` of row `id` failed with `error`; the next is due at `retry_at`.
pub async fn mark_failed(
    db: &Db,
    id: i64,
    attempts: i64,
    retry_at: i64,
    error: &str,
) -> Result<(), StorageError> {
    sqlx::query(
        "UPDATE webhook_outbox SET attempts = $1, next_attempt_at = $2, last_error = $3 WHERE id = $4",
    )
    .bind(attempts)
    .bind(retry_at)
    .bind(error)
    .bind(id)
    .execute(db.pool())
    .await?;
    Ok(())
}

/// Deletes rows delivered before `before` (Unix seconds); undelivered rows stay.
pub async fn prune_delivered(db: &Db, before: i64) -> Result<u64, StorageError> {
    let done = sqlx::query(
        "DELETE FROM webhook_outbox WHERE delivered_at IS NOT NULL AND delivered_at < $1",
    )
    .bind(before)
    .execute(db.pool())
    .await?;
    Ok(done.rows_affected())
}
