//! Ops dashboard users: role, argon2id password hash, sealed TOTP secret, lockout state.

use sqlx::Row;

use super::{Db, StorageError, flag};
use crate::vault::{Sealed, SealedRecord, VaultError, WrappedKey};

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

const COLUMNS: &str = "username, role, password_hash, must_change_password, totp_kek_id, totp_wrapped_key, \
     totp_sealed, totp_last_step, failed_attempts, locked_until, created_at, last_sign_in_at, disabled_at";

fn from_row(row: &sqlx::any::AnyRow) -> Result<OpsUser, StorageError> {
    let role: String = row.try_get("role")?;
    let username: String = row.try_get("username")?;
    Ok(OpsUser {
        role: Role::parse(&role)
            .map_err(|e| StorageError::Corrupt(format!("ops user {username}: {e}")))?,
        password_hash: row.try_get("password_hash")?,
        must_change_password: flag(row.try_get("must_change_password")?),
        totp: Sealed {
            wrapped_key: WrappedKey {
                kek_id: row.try_get("totp_kek_id")?,
                bytes: row.try_get("totp_wrapped_key")?,
            },
            record: SealedRecord::decode(row.try_get("totp_sealed")?).map_err(
                |e: VaultError| StorageError::Corrupt(format!("ops user {username}: {e}")),
            )?,
        },
        totp_last_step: row.try_get("totp_last_step")?,
        failed_attempts: row.try_get("failed_attempts")?,
        locked_until: row.try_get("locked_until")?,
        created_at: row.try_get("created_at")?,
        last_sign_in_at: row.try_get("last_sign_in_at")?,
        disabled_at: row.try_get("disabled_at")?,
        username,
    })
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
    let sql = format!("SELECT {COLUMNS} FROM ops_users WHERE username = $1");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(username)
        .fetch_optional(db.pool())
        .await?;
    row.as_ref().map(from_row).transpose()
}

pub async fn list(db: &Db) -> Result<Vec<OpsUser>, StorageError> {
    let sql = format!("SELECT {COLUMNS} FROM ops_users ORDER BY username");
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .fetch_all(db.pool())
        .await?;
    rows.iter().map(from_row).collect()
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
        sqlx::query("SELECT failed_attempts FROM ops_users WHERE username = $1")
            .bind(username)
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| r.try_get("failed_attempts"))
            .transpose()?;
    let Some(failures) = failures.map(|n| n + 1) else {
        return Ok(());
    };
    let locked_until = (failures >= free_attempts)
        .then(|| at + (60i64 << (failures - free_attempts).min(11)).min(86_400));
    sqlx::query("UPDATE ops_users SET failed_attempts = $2, locked_until = $3 WHERE username = $1")
        .bind(username)
        .bind(failures)
        .bind(locked_until)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
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
