//! The session key: one data key that seals session rows, wrapped by the key-encryption key
//! and stored in `session_keys`, unwrapped once per process. Sealing a session then costs no
//! key-provider call, so a stranger (every cookie-less page makes a session) cannot make
//! samvault call Key Vault; replicas and restarts share the key through the database.
//!
//! A new key is made once the newest is a day old ([`ROLL_AFTER`]) and by `keys rotate`, so no
//! key seals sessions for long; running processes take the newest up within
//! [`REFRESH_EVERY`]. An older key is kept while a session row names it. `keys rotate` also
//! re-wraps these rows like every sealed record (`storage::sealed`).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use super::{Db, FromRow, StorageError, now};
use crate::vault::{HeldKey, Vault, VaultError, WrappedKey};

/// The newest key's age (seconds) at which a new one is made.
pub const ROLL_AFTER: i64 = 86_400;
/// How often a running process looks for a newer key and forgets unused ones.
pub const REFRESH_EVERY: Duration = Duration::from_secs(60);
/// A key younger than this (seconds) is never deleted: another process may have just made it
/// and not sealed anything with it yet.
const KEEP_AT_LEAST: i64 = 3_600;

#[derive(Debug, thiserror::Error)]
pub enum SessionKeyError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Vault(#[from] VaultError),
}

impl From<sqlx::Error> for SessionKeyError {
    fn from(e: sqlx::Error) -> Self {
        Self::Storage(e.into())
    }
}

#[derive(FromRow)]
struct KeyRow {
    id: String,
    kek_id: String,
    wrapped_key: Vec<u8>,
    created_at: i64,
}

impl KeyRow {
    fn wrapped(&self) -> WrappedKey {
        WrappedKey {
            kek_id: self.kek_id.clone(),
            bytes: self.wrapped_key.clone(),
        }
    }
}

/// The key new sessions are sealed with.
#[derive(Clone)]
pub struct CurrentKey {
    pub id: String,
    pub key: Arc<HeldKey>,
    created_at: i64,
}

/// The session keys this process holds: the current one, and every other it met.
pub struct SessionKeys {
    db: Db,
    vault: Vault,
    current: RwLock<CurrentKey>,
    /// `None`: a stored key that cannot be opened here (another key file, tampered); it is
    /// not asked for again.
    known: RwLock<HashMap<String, Option<Arc<HeldKey>>>>,
}

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKeys")
    }
}

/// A new session key wrapped under the current KEK, stored; what services take up at their
/// next refresh (`keys rotate` makes one, so sessions move off a key that may have leaked).
pub async fn add(db: &Db, vault: &Vault) -> Result<CurrentKey, SessionKeyError> {
    let (key, wrapped) = vault.new_held_key().await?;
    let (id, created_at) = (uuid::Uuid::new_v4().to_string(), now());
    sqlx::query(
        "INSERT INTO session_keys (id, kek_id, wrapped_key, created_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(&id)
    .bind(&wrapped.kek_id)
    .bind(&wrapped.bytes)
    .bind(created_at)
    .execute(db.pool())
    .await?;
    Ok(CurrentKey {
        id,
        key: Arc::new(key),
        created_at,
    })
}

async fn newest(db: &Db) -> Result<Option<KeyRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, kek_id, wrapped_key, created_at FROM session_keys
         ORDER BY created_at DESC, id DESC LIMIT 1",
    )
    .fetch_optional(db.pool())
    .await
}

impl SessionKeys {
    /// The newest stored key, unwrapped (one key-provider call), or a new one (one wrap) when
    /// there is none, it is due, or it cannot be opened with this process's keys.
    pub async fn open(db: Db, vault: Vault) -> Result<Self, SessionKeyError> {
        let current = match newest(&db).await? {
            Some(row) if now() - row.created_at < ROLL_AFTER => {
                match vault.hold(&row.wrapped()).await {
                    Ok(key) => Some(CurrentKey {
                        id: row.id,
                        key: Arc::new(key),
                        created_at: row.created_at,
                    }),
                    Err(VaultError::ProviderUnavailable(e)) => {
                        return Err(VaultError::ProviderUnavailable(e).into());
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "the newest session key cannot be opened; making a new one (sessions under it end)");
                        None
                    }
                }
            }
            _ => None,
        };
        let current = match current {
            Some(current) => current,
            None => add(&db, &vault).await?,
        };
        let known = HashMap::from([(current.id.clone(), Some(current.key.clone()))]);
        Ok(Self {
            db,
            vault,
            current: RwLock::new(current),
            known: RwLock::new(known),
        })
    }

    pub fn current(&self) -> CurrentKey {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn remembered(&self, id: &str) -> Option<Option<Arc<HeldKey>>> {
        let known = self.known.read().unwrap_or_else(|e| e.into_inner());
        known.get(id).cloned()
    }

    fn remember(&self, id: &str, key: Option<Arc<HeldKey>>) {
        let mut known = self.known.write().unwrap_or_else(|e| e.into_inner());
        known.insert(id.to_string(), key);
    }

    /// The key `id`: from memory, or read and unwrapped the first time this process meets it
    /// (ids come from session rows samvault wrote, so at most once per stored key). `None`
    /// when no such key is stored or it cannot be opened here.
    pub async fn get(&self, id: &str) -> Result<Option<Arc<HeldKey>>, SessionKeyError> {
        if let Some(known) = self.remembered(id) {
            return Ok(known);
        }
        let row: Option<KeyRow> = sqlx::query_as(
            "SELECT id, kek_id, wrapped_key, created_at FROM session_keys WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(self.db.pool())
        .await?;
        let Some(row) = row else { return Ok(None) };
        self.unwrap_row(&row).await
    }

    async fn unwrap_row(&self, row: &KeyRow) -> Result<Option<Arc<HeldKey>>, SessionKeyError> {
        match self.vault.hold(&row.wrapped()).await {
            Ok(key) => {
                let key = Arc::new(key);
                self.remember(&row.id, Some(key.clone()));
                Ok(Some(key))
            }
            // Not remembered: the provider may be back at the next look.
            Err(e @ VaultError::ProviderUnavailable(_)) => Err(e.into()),
            Err(e) => {
                tracing::warn!(key = %row.id, error = %e, "a session key cannot be opened; its sessions are treated as ended");
                self.remember(&row.id, None);
                Ok(None)
            }
        }
    }

    /// Takes up the newest stored key (another replica's, or the one `keys rotate` made),
    /// makes a new one when it is due, and deletes old keys no session row names any more.
    pub async fn refresh(&self) -> Result<(), SessionKeyError> {
        let at = now();
        let current = self.current();
        let next = match newest(&self.db).await? {
            Some(row) if at - row.created_at >= ROLL_AFTER => None,
            Some(row) if row.id == current.id => Some(current),
            // The current key's row was deleted (an operator ending every session).
            Some(row) if row.created_at < current.created_at => None,
            Some(row) => match self.unwrap_row(&row).await? {
                Some(key) => Some(CurrentKey {
                    id: row.id,
                    key,
                    created_at: row.created_at,
                }),
                None => Some(current),
            },
            None => None,
        };
        let next = match next {
            Some(next) => next,
            None => {
                let made = add(&self.db, &self.vault).await?;
                tracing::info!(key = %made.id, "a new session key seals new sessions");
                self.remember(&made.id, Some(made.key.clone()));
                made
            }
        };
        let id = next.id.clone();
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = next;
        self.forget_unused(&id, at).await
    }

    async fn forget_unused(&self, current: &str, at: i64) -> Result<(), SessionKeyError> {
        let deleted: Vec<(String,)> = sqlx::query_as(
            "DELETE FROM session_keys WHERE id <> $1 AND created_at < $2
             AND NOT EXISTS (SELECT 1 FROM sessions WHERE sessions.key_id = session_keys.id)
             RETURNING id",
        )
        .bind(current)
        .bind(at - KEEP_AT_LEAST)
        .fetch_all(self.db.pool())
        .await?;
        let mut known = self.known.write().unwrap_or_else(|e| e.into_inner());
        for (id,) in deleted {
            known.remove(&id);
        }
        Ok(())
    }
}
