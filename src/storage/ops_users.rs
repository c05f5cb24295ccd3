//! Ops dashboard users: role, argon2id password hash, sealed TOTP secret, lockout state.

use std::time::Duration;

use super::{Db, FromRow, SealedColumns, StorageError, flag};
use crate::backoff::Backoff;
use crate::vault::{Sealed, VaultError};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Viewer,
    Operator,
    Admin,
}

impl Role {
    pub fn parse(value: &str) -> Result<Self, &'static str> {
        match value {
            "viewer" => Ok(Self::Viewer),
            "operator" => Ok(Self::Operator),
            "admin" => Ok(Self::Admin),
            _ => Err("role must be viewer, operator or admin"),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Operator => "operator",
            Self::Admin => "admin",
        }
    }
}

/// An ops user as stored. `Debug` leaves out the hash and the sealed secret.
#[derive(Clone)]
pub struct OpsUser {
    pub username: String,
    pub role: Role,
    pub password_hash: String,
    pub must_change_password: bool,
    pub totp: Sealed,
    pub totp_last_step: Option<i64>,
    pub failed_attempts: i64,
    pub locked_until: Option<i64>,
    pub created_at: i64,
    pub last_sign_in_at: Option<i64>,
    pub disabled_at: Option<i64>,
}

impl std::fmt::Debug for OpsUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpsUser")
            .field("username", &self.username)
            .field("role", &self.role)
            .field("failed_attempts", &self.failed_attempts)
            .field("locked_until", &self.locked_until)
            .finish_non_exhaustive()
    }
}

/// The AAD that binds a sealed TOTP secret to its user.
pub fn totp_context(username: &str) -> String {
    format!("ops-user:{username}")
}

/// The columns of an [`OpsUserRow`], for `concat!` into static SQL: the TOTP secret under
/// the names [`SealedColumns`] reads.
macro_rules! ops_user_columns {
    () => {
        "username, role, password_hash, must_change_password, totp_kek_id AS kek_id, \
         totp_wrapped_key AS wrapped_key, totp_sealed AS sealed, totp_last_step, failed_attempts, \
         locked_until, created_at, last_sign_in_at, disabled_at"
    };
}

#[derive(FromRow)]
struct OpsUserRow {
    username: String,
    role: String,
    password_hash: String,
    must_change_password: i64,
    #[sqlx(flatten)]
    totp: SealedColumns,
    totp_last_step: Option<i64>,
    failed_attempts: i64,
    locked_until: Option<i64>,
    created_at: i64,
    last_sign_in_at: Option<i64>,
    disabled_at: Option<i64>,
}

impl TryFrom<OpsUserRow> for OpsUser {
    type Error = StorageError;

    fn try_from(row: OpsUserRow) -> Result<Self, StorageError> {
        let username = row.username;
        let corrupt =
            |e: &dyn std::fmt::Display| StorageError::Corrupt(format!("ops user {username}: {e}"));
        Ok(OpsUser {
            role: Role::parse(&row.role).map_err(|e| corrupt(&e))?,
            password_hash: row.password_hash,
            must_change_password: flag(row.must_change_password),
            totp: row
                .totp
                .into_sealed()
                .map_err(|e: VaultError| corrupt(&e))?,
            totp_last_step: row.totp_last_step,
            failed_attempts: row.failed_attempts,
            locked_until: row.locked_until,
            created_at: row.created_at,
            last_sign_in_at: row.last_sign_in_at,
            disabled_at: row.disabled_at,
            username,
        })
    }
}

/// Creates a user who must change the given password at first sign-in. `false` if the name
/// is taken.
pub async fn create(
    db: &Db,
    username: &str,
    role: Role,
    password_hash: &str,
    totp: &Sealed,
    at: i64,
) -> Result<bool, StorageError> {
    let done = sqlx::query(
        "INSERT INTO ops_users (username, role, password_hash, must_change_password, totp_kek_id, \
         totp_wrapped_key, totp_sealed, failed_attempts, created_at) \
         VALUES ($1, $2, $3, 1, $4, $5, $6, 0, $7) ON CONFLICT (username) DO NOTHING",
    )
    .bind(username)
    .bind(role.as_str())
    .bind(password_hash)
    .bind(&totp.wrapped_key.kek_id)
    .bind(totp.wrapped_key.bytes.as_slice())
    .bind(totp.record.as_bytes())
    .bind(at)
    .execute(db.pool())
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn get(db: &Db, username: &str) -> Result<Option<OpsUser>, StorageError> {
    let row: Option<OpsUserRow> = sqlx::query_as(concat!(
        "SELECT ",
        ops_user_columns!(),
        " FROM ops_users WHERE username = $1"
    ))
    .bind(username)
    .fetch_optional(db.pool())
    .await?;
    row.map(OpsUser::try_from).transpose()
}

pub async fn list(db: &Db) -> Result<Vec<OpsUser>, StorageError> {
    let rows: Vec<OpsUserRow> = sqlx::query_as(concat!(
        "SELECT ",
        ops_user_columns!(),
        " FROM ops_users ORDER BY username"
    ))
    .fetch_all(db.pool())
    .await?;
    rows.into_iter().map(OpsUser::try_from).collect()
}

/// A failed sign-in: counts it and, from `free_attempts` failures on, locks the account for
/// a time that doubles with each further failure (1 min, 2, 4 … capped at a day).
pub async fn record_failure(
    db: &Db,
    username: &str,
    at: i64,
    free_attempts: i64,
) -> Result<(), StorageError> {
    let mut tx = db.begin_write().await?;
    let failures: Option<i64> =
        sqlx::query_scalar("SELECT failed_attempts FROM ops_users WHERE username = $1")
            .bind(username)
            .fetch_optional(&mut *tx)
            .await?;
    let Some(failures) = failures.map(|n| n + 1) else {
        return Ok(());
    };
    let locked_until = lockout_secs(failures, free_attempts).map(|secs| at + secs);
    sqlx::query("UPDATE ops_users SET failed_attempts = $2, locked_until = $3 WHERE username = $1")
        .bind(username)
        .bind(failures)
        .bind(locked_until)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// How long `failures` consecutive failures lock an account: nothing before `free_attempts`,
/// then 1 min doubling with each further failure, at most a day.
fn lockout_secs(failures: i64, free_attempts: i64) -> Option<i64> {
    const LOCKOUT: Backoff =
        Backoff::new(Duration::from_secs(60), 2).capped_at(Duration::from_secs(86_400));
    let attempt = failures.saturating_sub(free_attempts).saturating_add(1);
    (failures >= free_attempts).then(|| LOCKOUT.delay(attempt).as_secs() as i64)
}

/// A successful sign-in with the code of `totp_step`. `false` (and nothing recorded) when
/// that step, or a later one, was already used: the code was replayed in a race.
pub async fn record_sign_in(
    db: &Db,
    username: &str,
    totp_step: i64,
    at: i64,
) -> Result<bool, StorageError> {
    let done = sqlx::query(
        "UPDATE ops_users SET totp_last_step = $2, failed_attempts = 0, locked_until = NULL, \
         last_sign_in_at = $3 WHERE username = $1 AND (totp_last_step IS NULL OR totp_last_step < $2)",
    )
    .bind(username)
    .bind(totp_step)
    .bind(at)
    .execute(db.pool())
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn set_password(
    db: &Db,
    username: &str,
    password_hash: &str,
    must_change: bool,
) -> Result<bool, StorageError> {
    let done = sqlx::query(
        "UPDATE ops_users SET password_hash = $2, must_change_password = $3, \
         session_epoch = session_epoch + 1 WHERE username = $1",
    )
    .bind(username)
    .bind(password_hash)
    .bind(i64::from(must_change))
    .execute(db.pool())
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Disables a user (a phished or departed account): the guard refuses every session of a
/// disabled user at its next request, and the new session epoch keeps them refused should
/// the user be enabled again. Returns false for an unknown or already disabled user.
pub async fn disable(db: &Db, username: &str, now: i64) -> Result<bool, StorageError> {
    let done = sqlx::query(
        "UPDATE ops_users SET disabled_at = $2, session_epoch = session_epoch + 1 \
         WHERE username = $1 AND disabled_at IS NULL",
    )
    .bind(username)
    .bind(now)
    .execute(db.pool())
    .await?;
    Ok(done.rows_affected() == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The schedule sign-in lockouts have always had.
    #[test]
    fn lockouts_double_from_a_minute_to_a_day_after_the_free_attempts() {
        assert_eq!(lockout_secs(0, 5), None);
        assert_eq!(lockout_secs(4, 5), None);
        let schedule: Vec<i64> = (5..=18).filter_map(|f| lockout_secs(f, 5)).collect();
        assert_eq!(
            schedule,
            [
                60, 120, 240, 480, 960, 1920, 3840, 7680, 15360, 30720, 61440, 86400, 86400, 86400
            ]
        );
        assert_eq!(lockout_secs(1_000_000, 5), Some(86_400));
        assert_eq!(lockout_secs(1, 1), Some(60));
    }
}
