//! tower-sessions store over samvault's own database, with every row sealed by the vault.
//!
//! Sessions carry the onboarding flow's PKCE verifier and nonce (and later the ops user's
//! identity), so rows are sealed like refresh tokens: a database reader learns only that a
//! session exists and when it expires.

use async_trait::async_trait;
use secrecy::ExposeSecret;
use tower_sessions::session::{Id, Record};
use tower_sessions::session_store::{Error, Result, SessionStore};

use super::{Db, SealedColumns};
use crate::vault::{Sealed, Vault};

#[derive(Clone)]
pub struct SealedSessionStore {
    db: Db,
    vault: Vault,
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

fn context(id: &Id) -> String {
    format!("samvault:session:{id}")
}

fn backend(e: impl std::fmt::Display) -> Error {
    Error::Backend(e.to_string())
}

impl SealedSessionStore {
    pub fn new(db: Db, vault: Vault) -> Self {
        Self { db, vault }
    }

    async fn seal(&self, record: &Record) -> Result<Sealed> {
        let json = zeroize::Zeroizing::new(
            serde_json::to_vec(record).map_err(|e| Error::Encode(e.to_string()))?,
        );
        self.vault
            .seal(&json, &context(&record.id))
            .await
            .map_err(backend)
    }

    /// Removes expired rows; called from a periodic task.
    pub async fn delete_expired(&self) -> std::result::Result<u64, sqlx::Error> {
        let done = sqlx::query("DELETE FROM sessions WHERE expires_at < $1")
            .bind(super::now())
            .execute(self.db.pool())
            .await?;
        Ok(done.rows_affected())
    }
}

#[async_trait]
impl SessionStore for SealedSessionStore {
    async fn create(&self, record: &mut Record) -> Result<()> {
        // Ids are 128 random bits; on the astronomically unlikely collision, draw again.
        loop {
            let sealed = self.seal(record).await?;
            let done = sqlx::query(
                "INSERT INTO sessions (id, kek_id, wrapped_key, sealed, expires_at) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO NOTHING",
            )
            .bind(row_key(&record.id))
            .bind(&sealed.wrapped_key.kek_id)
            .bind(sealed.wrapped_key.bytes.as_slice())
            .bind(sealed.record.as_bytes())
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
        let sealed = self.seal(record).await?;
        sqlx::query(
            "INSERT INTO sessions (id, kek_id, wrapped_key, sealed, expires_at) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (id) DO UPDATE SET kek_id = $2, wrapped_key = $3, sealed = $4, expires_at = $5",
        )
        .bind(row_key(&record.id))
        .bind(&sealed.wrapped_key.kek_id)
        .bind(sealed.wrapped_key.bytes.as_slice())
        .bind(sealed.record.as_bytes())
        .bind(record.expiry_date.unix_timestamp())
        .execute(self.db.pool())
        .await
        .map_err(backend)?;
        Ok(())
    }

    async fn load(&self, id: &Id) -> Result<Option<Record>> {
        let row: Option<SealedColumns> = sqlx::query_as(
            "SELECT kek_id, wrapped_key, sealed FROM sessions WHERE id = $1 AND expires_at > $2",
        )
        .bind(row_key(id))
        .bind(super::now())
        .fetch_optional(self.db.pool())
        .await
        .map_err(backend)?;
        let Some(row) = row else { return Ok(None) };
        let sealed = row.into_sealed().map_err(backend)?;
        // A row that no longer opens (key rotated away, tampered) is treated as no session.
        let Ok(plain) = self.vault.open(&sealed, &context(id)).await else {
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
