//! The `replicas` table: which `samvault serve` processes are running, so that the leases
//! of one that died can be taken back (see `rotation::liveness`).

use super::{Db, FromRow, StorageError};

/// One serving process as it registered itself.
#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct Replica {
    /// Every lease owner this process writes starts with `instance:`.
    pub instance: String,
    /// Where `pid` means something: the kernel boot and pid namespace (Linux only).
    pub machine: Option<String>,
    pub pid: i64,
    /// The process's start time in kernel ticks: with `pid`, names one process for good.
    pub process_start: Option<String>,
    pub started_at: i64,
    pub seen_at: i64,
}

/// Registers (or re-registers) a process, or records its heartbeat.
pub async fn heartbeat(db: &Db, me: &Replica) -> Result<(), StorageError> {
    sqlx::query(
        "INSERT INTO replicas (instance, machine, pid, process_start, started_at, seen_at)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (instance) DO UPDATE SET seen_at = $6",
    )
    .bind(&me.instance)
    .bind(me.machine.as_deref())
    .bind(me.pid)
    .bind(me.process_start.as_deref())
    .bind(me.started_at)
    .bind(me.seen_at)
    .execute(db.pool())
    .await?;
    Ok(())
}

/// Every registered process but `me`.
pub async fn others(db: &Db, me: &str) -> Result<Vec<Replica>, StorageError> {
    Ok(all(db)
        .await?
        .into_iter()
        .filter(|r| r.instance != me)
        .collect())
}

/// Every registered process, the longest running first (for the ops overview too).
pub async fn all(db: &Db) -> Result<Vec<Replica>, StorageError> {
    Ok(sqlx::query_as(
        "SELECT instance, machine, pid, process_start, started_at, seen_at FROM replicas \
         ORDER BY started_at, instance",
    )
    .fetch_all(db.reader())
    .await?)
}

/// Takes back every lease a dead process held and makes those partners due now: the
/// redemption each lease covered may have been cut between the IdP's answer and the
/// write-back, and an IdP with a rotation grace accepts the stored refresh token again only
/// for a short while. Forgets the process. Returns the partners concerned.
pub async fn reap(db: &Db, dead: &str, now: i64) -> Result<Vec<String>, StorageError> {
    let mut tx = db.begin_write().await?;
    // `instance:` prefix, compared as a string (no LIKE: no wildcard to escape).
    let tenants = sqlx::query_scalar(
        "UPDATE partners SET lease_owner = NULL, lease_until = 0,
             rotate_at = CASE WHEN rotate_at > $2 THEN $2 ELSE rotate_at END
         WHERE substr(lease_owner, 1, length(CAST($1 AS TEXT)) + 1) = CAST($1 AS TEXT) || ':'
         RETURNING tenant_id",
    )
    .bind(dead)
    .bind(now)
    .fetch_all(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM replicas WHERE instance = $1")
        .bind(dead)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(tenants)
}

/// A clean stop: the process holds no lease any more (the scheduler stopped, requests are
/// done), so it simply leaves.
pub async fn leave(db: &Db, me: &str) -> Result<(), StorageError> {
    sqlx::query("DELETE FROM replicas WHERE instance = $1")
        .bind(me)
        .execute(db.pool())
        .await?;
    Ok(())
}
