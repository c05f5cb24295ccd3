//! tower-sessions store over samvault's own database, with every row sealed.
//!
//! Sessions carry the onboarding flow's PKCE verifier and nonce (and the ops user's identity),
//! so rows are sealed: a database reader learns only that a session exists and when it
//! expires. They are sealed under the session key ([`SessionKeys`]), not under a data key of
//! their own: a new session costs no key-provider call, since anyone can make one.

use std::sync::Arc;

use async_trait::async_trait;
use secrecy::ExposeSecret;
use tower_sessions::session::{Id, Record};
use tower_sessions::session_store::{Error, Result, SessionStore};

use super::Db;
pub use super::session_keys::SessionKeyError;
use super::session_keys::{REFRESH_EVERY, SessionKeys};
use crate::vault::{SealedRecord, Vault};

#[derive(Clone)]
pub struct SealedSessionStore {
    db: Db,
    keys: Arc<SessionKeys>,
}

impl std::fmt::Debug for SealedSessionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealedSessionStore")
    }
}

/// The row's key: a SHA-256 of the session id, never the id itself. The id is the cookie's
/// value, so a leaked database must not hand out live sessions to replay.
pub fn row_key(id: &Id) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(format!("samvault:session-row:{id}")))
}

/// What a session row is sealed with as associated data: its id, so a row copied under
/// another id does not open.
pub fn context(id: &Id) -> String {
    format!("samvault:session:{id}")
}

fn backend(e: impl std::fmt::Display) -> Error {
    Error::Backend(e.to_string())
}

impl SealedSessionStore {
    /// Opens the session key (see [`SessionKeys::open`]): at most one key-provider call.
    pub async fn open(db: Db, vault: Vault) -> std::result::Result<Self, SessionKeyError> {
        let keys = SessionKeys::open(db.clone(), vault).await?;
        Ok(Self {
            db,
            keys: Arc::new(keys),
        })
    }

    /// Seals the record under the current session key: `(key id, sealed bytes)`.
    fn seal(&self, record: &Record) -> Result<(String, SealedRecord)> {
        let json = zeroize::Zeroizing::new(
            serde_json::to_vec(record).map_err(|e| Error::Encode(e.to_string()))?,
        );
        let current = self.keys.current();
        Ok((current.id, current.key.seal(&json, &context(&record.id))))
    }

    /// Removes expired rows.
    pub async fn delete_expired(&self) -> std::result::Result<u64, sqlx::Error> {
        let done = sqlx::query("DELETE FROM sessions WHERE expires_at < $1")
            .bind(super::now())
            .execute(self.db.pool())
            .await?;
        Ok(done.rows_affected())
    }

    /// Every [`REFRESH_EVERY`]: expired rows removed, the newest session key taken up (or a
    /// new one made when due), keys no row names any more forgotten.
    pub async fn upkeep(&self) -> std::result::Result<(), SessionKeyError> {
        self.delete_expired().await?;
        self.keys.refresh().await
    }

    pub fn spawn_upkeep(&self) -> tokio::task::JoinHandle<()> {
        let store = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(REFRESH_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                if let Err(e) = store.upkeep().await {
                    tracing::warn!(error = %e, "session upkeep failed; tried again in a minute");
                }
            }
        })
    }
}

#[async_trait]
impl SessionStore for SealedSessionStore {
    async fn create(&self, record: &mut Record) -> Result<()> {
        // Ids are 128 random bits; on the astronomically unlikely collision, draw again.
        loop {
            let (key_id, sealed) = self.seal(record)?;
            let done = sqlx::query(
                "INSERT INTO sessions (id, key_id, sealed, expires_at) VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO NOTHING",
            )
            .bind(row_key(&record.id))
            .bind(&key_id)
            .bind(sealed.as_bytes())
            .bind(record.expiry_date.unix_timestamp())
            .execute(self.db.pool())
            .await
            .map_err(backend)?;
            if done.rows_affected() == 1 {
                return Ok(());
            }
            record.id = Id::default();
        }
    }

    async fn save(&self, record: &Record) -> Result<()> {
        let (key_id, sealed) = self.seal(record)?;
        sqlx::query(
            "INSERT INTO sessions (id, key_id, sealed, expires_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (id) DO UPDATE SET key_id = $2, sealed = $3, expires_at = $4",
        )
        .bind(row_key(&record.id))
        .bind(&key_id)
        .bind(sealed.as_bytes())
        .bind(record.expiry_date.unix_timestamp())
        .execute(self.db.pool())
        .await
        .map_err(backend)?;
        Ok(())
    }

    async fn load(&self, id: &Id) -> Result<Option<Record>> {
        let row: Option<(String, Vec<u8>)> =
            sqlx::query_as("SELECT key_id, sealed FROM sessions WHERE id = $1 AND expires_at > $2")
                .bind(row_key(id))
                .bind(super::now())
                .fetch_optional(self.db.pool())
                .await
                .map_err(backend)?;
        let Some((key_id, sealed)) = row else {
            return Ok(None);
        };
        // A row that does not open (its key gone or unreadable, tampered) is no session.
        let key = match self.keys.get(&key_id).await {
            Ok(Some(key)) => key,
            Ok(None) => return Ok(None),
            Err(e) => {
                tracing::warn!(error = %e, "a session's key cannot be opened now");
                return Ok(None);
            }
        };
        let Ok(sealed) = SealedRecord::decode(sealed) else {
            return Ok(None);
        };
        let Ok(plain) = key.open(&sealed, &context(id)) else {
            return Ok(None);
        };
        serde_json::from_slice(plain.expose_secret())
            .map(Some)
            .map_err(|e| Error::Decode(e.to_string()))
    }

    async fn delete(&self, id: &Id) -> Result<()> {
        sqlx::query("DELETE FROM sessions WHERE id = $1")
            .bind(row_key(id))
            .execute(self.db.pool())
            .await
            .map_err(backend)?;
        Ok(())
    }
}
