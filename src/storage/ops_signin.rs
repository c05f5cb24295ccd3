//! Signing ops users in without races: an attempt is reserved (counted) in the database before
//! its password is checked, so parallel attempts cannot outrun the lockout; a sign-in or a
//! password change is accepted only against the password hash that was checked; and each user
//! has a session epoch, incremented by a password change or a disable, that every dashboard
//! session must match.

use super::{Db, StorageError};

/// What reserving a sign-in attempt (or a current-password check) found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// Counted as a failure until it succeeds: check the credentials now.
    Reserved,
    /// The account is locked until then (Unix seconds): check nothing.
    Locked {
        until: i64,
    },
    NoSuchUser,
}

/// Reserves one attempt for `username` at `at`: counts it as a failure (a success clears the
/// count) and, from `free_attempts` failures on, locks the account for a minute, doubling with
/// each further failure, at most a day. One conditional `UPDATE`, atomic on both backends (a
/// row lock on PostgreSQL, the single writer on SQLite): of N simultaneous attempts at most the
/// free ones are reserved, and the others find the account locked.
pub async fn reserve_attempt(
    db: &Db,
    username: &str,
    at: i64,
    free_attempts: i64,
) -> Result<Attempt, StorageError> {
    // 60 << 11 is past a day, hence the cap before the shift gets there.
    let counted: Option<i64> = sqlx::query_scalar(
        "UPDATE ops_users SET failed_attempts = failed_attempts + 1, locked_until = CASE \
           WHEN failed_attempts + 1 < $3 THEN locked_until \
           WHEN failed_attempts + 1 - $3 >= 11 THEN $2 + 86400 \
           ELSE $2 + (60 << CAST(failed_attempts + 1 - $3 AS INTEGER)) END \
         WHERE username = $1 AND (locked_until IS NULL OR locked_until <= $2) \
         RETURNING failed_attempts",
    )
    .bind(username)
    .bind(at)
    .bind(free_attempts)
    .fetch_optional(db.pool())
    .await?;
    if counted.is_some() {
        return Ok(Attempt::Reserved);
    }
    let locked: Option<Option<i64>> =
        sqlx::query_scalar("SELECT locked_until FROM ops_users WHERE username = $1")
            .bind(username)
            .fetch_optional(db.pool())
            .await?;
    Ok(match locked {
        None => Attempt::NoSuchUser,
        Some(until) => Attempt::Locked {
            until: until.unwrap_or(at),
        },
    })
}

/// A successful sign-in with the code of `totp_step`, by the password whose hash is
/// `checked_hash`: clears the failures and returns the session epoch to carry. `None` (and
/// nothing recorded) when the code's step or a later one was already used (a replay), the
/// password changed since it was checked, or the user was disabled meanwhile.
pub async fn accept_sign_in(
    db: &Db,
    username: &str,
    checked_hash: &str,
    totp_step: i64,
    at: i64,
) -> Result<Option<i64>, StorageError> {
    Ok(sqlx::query_scalar(
        "UPDATE ops_users SET totp_last_step = $3, failed_attempts = 0, locked_until = NULL, \
         last_sign_in_at = $4 WHERE username = $1 AND password_hash = $2 AND disabled_at IS NULL \
         AND (totp_last_step IS NULL OR totp_last_step < $3) RETURNING session_epoch",
    )
    .bind(username)
    .bind(checked_hash)
    .bind(totp_step)
    .bind(at)
    .fetch_optional(db.pool())
    .await?)
}

/// Replaces the password whose hash is `checked_hash` (the current one, just checked) and
/// starts a new session epoch, which ends every session of the user signed in before; the
/// caller's session takes the returned epoch. Clears the failures. `None` when the password
/// changed meanwhile (nothing is changed then).
pub async fn change_password(
    db: &Db,
    username: &str,
    checked_hash: &str,
    new_hash: &str,
) -> Result<Option<i64>, StorageError> {
    Ok(sqlx::query_scalar(
        "UPDATE ops_users SET password_hash = $3, must_change_password = 0, \
         session_epoch = session_epoch + 1, failed_attempts = 0, locked_until = NULL \
         WHERE username = $1 AND password_hash = $2 RETURNING session_epoch",
    )
    .bind(username)
    .bind(checked_hash)
    .bind(new_hash)
    .fetch_optional(db.pool())
    .await?)
}

/// The epoch a session of `username` must carry to be valid (`None`: no such user). Read on
/// every dashboard request, so through the read connections: an epoch only moves by a
/// committed write, which every read started after it sees.
pub async fn session_epoch(db: &Db, username: &str) -> Result<Option<i64>, StorageError> {
    Ok(
        sqlx::query_scalar("SELECT session_epoch FROM ops_users WHERE username = $1")
            .bind(username)
            .fetch_optional(db.reader())
            .await?,
    )
}
