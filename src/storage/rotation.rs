//! What the rotation engine needs from the database: leases, due grants, attempts, alarms.
//!
//! A lease is the cross-replica per-partner lock: whoever holds an unexpired lease on a
//! partner is the only one allowed to redeem its refresh token. Leases are taken with one
//! conditional `UPDATE` (PostgreSQL adds `FOR UPDATE SKIP LOCKED` when picking due grants, so
//! replicas never wait on each other's rows) and simply run out if their holder crashes.

use super::{Backend, Db, FromRow, StorageError, stored_tenant};
use crate::domain::TenantId;

/// Statuses whose grants are redeemed by the scheduler, for `concat!` into static SQL.
macro_rules! usable {
    () => {
        "status IN ('active', 'at_risk')"
    };
}

/// Takes the lease on one partner if nobody holds an unexpired one.
pub async fn acquire_lease(
    db: &Db,
    tenant: &TenantId,
    owner: &str,
    now: i64,
    lease_secs: i64,
) -> Result<bool, StorageError> {
    let done = sqlx::query(
        "UPDATE partners SET lease_owner = $2, lease_until = $4 WHERE tenant_id = $1 AND (lease_owner IS NULL OR lease_until <= $3)",
    )
    .bind(tenant.as_str())
    .bind(owner)
    .bind(now)
    .bind(now + lease_secs)
    .execute(db.pool())
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Releases a lease, only if it is still ours.
pub async fn release_lease(db: &Db, tenant: &TenantId, owner: &str) -> Result<(), StorageError> {
    sqlx::query("UPDATE partners SET lease_owner = NULL, lease_until = 0 WHERE tenant_id = $1 AND lease_owner = $2")
        .bind(tenant.as_str())
        .bind(owner)
        .execute(db.pool())
        .await?;
    Ok(())
}

/// Picks the most overdue usable grant nobody is working on and leases it, atomically.
pub async fn claim_due(
    db: &Db,
    owner: &str,
    now: i64,
    lease_secs: i64,
) -> Result<Option<TenantId>, StorageError> {
    let sql = match db.backend() {
        Backend::Postgres => {
            "UPDATE partners SET lease_owner = $1, lease_until = $3 WHERE tenant_id = (
                 SELECT tenant_id FROM partners
                 WHERE status IN ('active', 'at_risk') AND rotate_at <= $2 AND (lease_owner IS NULL OR lease_until <= $2)
                 ORDER BY rotate_at LIMIT 1 FOR UPDATE SKIP LOCKED)
             RETURNING tenant_id"
        }
        // One process per SQLite database: the statement itself is atomic.
        Backend::Sqlite => {
            "UPDATE partners SET lease_owner = $1, lease_until = $3 WHERE tenant_id = (
                 SELECT tenant_id FROM partners
                 WHERE status IN ('active', 'at_risk') AND rotate_at <= $2 AND (lease_owner IS NULL OR lease_until <= $2)
                 ORDER BY rotate_at LIMIT 1)
             RETURNING tenant_id"
        }
    };
    let tenant: Option<String> = sqlx::query_scalar(sql)
        .bind(owner)
        .bind(now)
        .bind(now + lease_secs)
        .fetch_optional(db.pool())
        .await?;
    tenant
        .map(|t| stored_tenant(&t, format_args!("partner {t}")))
        .transpose()
}

/// When the next usable grant becomes due (for the scheduler's sleep).
pub async fn next_due_at(db: &Db) -> Result<Option<i64>, StorageError> {
    Ok(sqlx::query_scalar(concat!(
        "SELECT MIN(rotate_at) AS next FROM partners WHERE ",
        usable!()
    ))
    .fetch_one(db.pool())
    .await?)
}

/// Tenants to rotate from the command line: the due ones, or every usable one.
pub async fn usable_tenants(
    db: &Db,
    due_before: Option<i64>,
) -> Result<Vec<TenantId>, StorageError> {
    let tenants: Vec<String> = match due_before {
        Some(now) => {
            sqlx::query_scalar(concat!(
                "SELECT tenant_id FROM partners WHERE ",
                usable!(),
                " AND rotate_at <= $1 ORDER BY rotate_at"
            ))
            .bind(now)
            .fetch_all(db.pool())
            .await?
        }
        None => {
            sqlx::query_scalar(concat!(
                "SELECT tenant_id FROM partners WHERE ",
                usable!(),
                " ORDER BY rotate_at"
            ))
            .fetch_all(db.pool())
            .await?
        }
    };
    tenants
        .iter()
        .map(|t| stored_tenant(t, format_args!("partner {t}")))
        .collect()
}

/// After a failure: count it and set when to try again.
pub async fn record_failure(
    db: &Db,
    tenant: &TenantId,
    retry_at: i64,
) -> Result<i64, StorageError> {
    let failures: Option<i64> = sqlx::query_scalar("UPDATE partners SET failures = failures + 1, rotate_at = $2 WHERE tenant_id = $1 RETURNING failures")
        .bind(tenant.as_str())
        .bind(retry_at)
        .fetch_optional(db.pool())
        .await?;
    Ok(failures.unwrap_or(0))
}

/// Pushes a grant's next attempt without counting a failure (the app-credential pause).
pub async fn postpone(db: &Db, tenant: &TenantId, retry_at: i64) -> Result<(), StorageError> {
    sqlx::query("UPDATE partners SET rotate_at = $2 WHERE tenant_id = $1")
        .bind(tenant.as_str())
        .bind(retry_at)
        .execute(db.pool())
        .await?;
    Ok(())
}

/// Consecutive failures so far (read before a success resets them).
pub async fn failures(db: &Db, tenant: &TenantId) -> Result<i64, StorageError> {
    let failures: Option<i64> =
        sqlx::query_scalar("SELECT failures FROM partners WHERE tenant_id = $1")
            .bind(tenant.as_str())
            .fetch_optional(db.pool())
            .await?;
    Ok(failures.unwrap_or(0))
}

#[allow(clippy::too_many_arguments)]
pub async fn record_attempt(
    db: &Db,
    tenant: &TenantId,
    at: i64,
    source: &str,
    outcome: &str,
    code: Option<&str>,
    duration_ms: i64,
) -> Result<(), StorageError> {
    let mut tx = db.begin_write().await?;
    insert_attempt(&mut tx, tenant, at, source, outcome, code, duration_ms).await?;
    tx.commit().await?;
    Ok(())
}

/// Records an attempt inside a caller's transaction: the row, and its day's count in
/// `rotation_days` (what the overview charts; migration 0008).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn insert_attempt(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    tenant: &TenantId,
    at: i64,
    source: &str,
    outcome: &str,
    code: Option<&str>,
    duration_ms: i64,
) -> Result<(), StorageError> {
    sqlx::query("INSERT INTO rotation_attempts (tenant_id, at, source, outcome, code, duration_ms) VALUES ($1, $2, $3, $4, $5, $6)")
        .bind(tenant.as_str())
        .bind(at)
        .bind(source)
        .bind(outcome)
        .bind(code)
        .bind(duration_ms)
        .execute(&mut **tx)
        .await?;
    let success = i64::from(outcome == "success");
    sqlx::query(
        "INSERT INTO rotation_days (day, successes, failures) VALUES ($1, $2, $3)
         ON CONFLICT (day) DO UPDATE SET successes = rotation_days.successes + excluded.successes,
             failures = rotation_days.failures + excluded.failures",
    )
    .bind(at.div_euclid(86_400))
    .bind(success)
    .bind(1 - success)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Raises a global alarm; returns true when it was not already raised.
pub async fn raise_alarm(
    db: &Db,
    name: &str,
    code: Option<&str>,
    detail: &str,
    now: i64,
) -> Result<bool, StorageError> {
    let done = sqlx::query("INSERT INTO alarms (name, code, detail, since) VALUES ($1, $2, $3, $4) ON CONFLICT (name) DO NOTHING")
        .bind(name)
        .bind(code)
        .bind(detail)
        .bind(now)
        .execute(db.pool())
        .await?;
    if done.rows_affected() == 0 {
        // Keep the latest code (e.g. the secret expired after having been merely invalid).
        sqlx::query("UPDATE alarms SET code = $2, detail = $3 WHERE name = $1")
            .bind(name)
            .bind(code)
            .bind(detail)
            .execute(db.pool())
            .await?;
    }
    Ok(done.rows_affected() == 1)
}

/// Clears a global alarm; returns true when it was raised.
pub async fn clear_alarm(db: &Db, name: &str) -> Result<bool, StorageError> {
    let done = sqlx::query("DELETE FROM alarms WHERE name = $1")
        .bind(name)
        .execute(db.pool())
        .await?;
    Ok(done.rows_affected() == 1)
}

#[derive(Clone, Debug, FromRow)]
pub struct Alarm {
    pub name: String,
    pub code: Option<String>,
    pub detail: String,
    pub since: i64,
}

pub async fn alarm(db: &Db, name: &str) -> Result<Option<Alarm>, StorageError> {
    Ok(
        sqlx::query_as("SELECT name, code, detail, since FROM alarms WHERE name = $1")
            .bind(name)
            .fetch_optional(db.pool())
            .await?,
    )
}

/// Brings every schedule within `rotate_after` of its last refresh (after the setting was
/// shortened, grants must not wait for the old, longer interval).
pub async fn clamp_schedule(db: &Db, rotate_after_secs: i64) -> Result<u64, StorageError> {
    let done = sqlx::query("UPDATE partners SET rotate_at = last_refresh_at + $1 WHERE rotate_at > last_refresh_at + $1 AND failures = 0")
        .bind(rotate_after_secs)
        .execute(db.pool())
        .await?;
    Ok(done.rows_affected())
}

/// A recorded redemption attempt.
#[derive(Clone, Debug, FromRow)]
pub struct AttemptRecord {
    pub at: i64,
    pub source: String,
    pub outcome: String,
    /// The AADSTS code, if Entra gave one.
    pub code: Option<String>,
    pub duration_ms: i64,
}

/// A tenant's latest redemption attempts, newest first.
pub async fn attempts(
    db: &Db,
    tenant: &TenantId,
    limit: i64,
) -> Result<Vec<AttemptRecord>, StorageError> {
    Ok(sqlx::query_as(
        "SELECT at, source, outcome, code, duration_ms FROM rotation_attempts
         WHERE tenant_id = $1 ORDER BY at DESC, id DESC LIMIT $2",
    )
    .bind(tenant.as_str())
    .bind(limit)
    .fetch_all(db.reader())
    .await?)
}
