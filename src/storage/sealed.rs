//! Where sealed data lives, counted by the key-encryption key that wraps it: what the keys
//! page shows, and what a key rotation has left to re-wrap. Read-only.
//!
//! Every table that stores vault-sealed data is listed in [`SEALED_TABLES`]; a new one must
//! be added there, or the keys page (and a rotation's progress) would not see it.

use sqlx::Row;

use super::{Db, StorageError};

/// What is sealed, and the query that counts its records per KEK id. Crypto-shredded grant
/// versions (sealed payload and wrapped key set to NULL) are left out: nothing is sealed.
const SEALED_TABLES: [(&str, &str); 3] = [
    (
        "refresh tokens (grant versions)",
        "SELECT kek_id, COUNT(*) AS n FROM grants WHERE sealed IS NOT NULL GROUP BY kek_id ORDER BY kek_id",
    ),
    (
        "sessions",
        "SELECT kek_id, COUNT(*) AS n FROM sessions GROUP BY kek_id ORDER BY kek_id",
    ),
    (
        "ops users' TOTP secrets",
        "SELECT totp_kek_id AS kek_id, COUNT(*) AS n FROM ops_users GROUP BY totp_kek_id ORDER BY totp_kek_id",
    ),
];

/// How many records of one kind are sealed under one KEK version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SealedCount {
    pub what: &'static str,
    pub kek_id: String,
    pub records: i64,
}

/// Sealed records per kind and KEK id, in the order of [`SEALED_TABLES`].
pub async fn count_by_kek(db: &Db) -> Result<Vec<SealedCount>, StorageError> {
    let mut counts = Vec::new();
    for (what, sql) in SEALED_TABLES {
        for row in sqlx::query(sql).fetch_all(db.pool()).await? {
            let kek_id: Option<String> = row.try_get("kek_id")?;
            counts.push(SealedCount {
                what,
                // A sealed grant without a KEK id cannot be opened; show it rather than hide it.
                kek_id: kek_id.unwrap_or_else(|| "(none)".to_string()),
                records: row.try_get("n")?,
            });
        }
    }
    Ok(counts)
}

/// Grant versions whose sealed payload was destroyed (rotated out or purged).
pub async fn shredded_grants(db: &Db) -> Result<i64, StorageError> {
    let row = sqlx::query("SELECT COUNT(*) AS n FROM grants WHERE shredded_at IS NOT NULL")
        .fetch_one(db.pool())
        .await?;
    Ok(row.try_get("n")?)
}
