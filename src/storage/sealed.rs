//! Where sealed data lives, counted by the key-encryption key that wraps it: what the keys
//! page shows, what a key rotation has left to re-wrap, and the compare-and-swap that moves
//! one record onto a new KEK.
//!
//! Every table that stores vault-sealed data is listed in [`SEALED_TABLES`]; a new one must
//! be added there and to [`SealedTable`], or the keys page and a rotation would not see it.

use super::{Db, FromRow, StorageError};
use crate::vault::WrappedKey;

/// What is sealed, and the query that counts its records per KEK id. Crypto-shredded grant
/// versions (sealed payload and wrapped key set to NULL) are left out: nothing is sealed.
const SEALED_TABLES: [(&str, &str); 4] = [
    (
        "refresh tokens (grant versions)",
        "SELECT kek_id, COUNT(*) AS n FROM grants WHERE sealed IS NOT NULL GROUP BY kek_id ORDER BY kek_id",
    ),
    // Session rows are sealed under a session key, which is what the KEK wraps.
    (
        "session keys",
        "SELECT kek_id, COUNT(*) AS n FROM session_keys GROUP BY kek_id ORDER BY kek_id",
    ),
    (
        "ops users' TOTP secrets",
        "SELECT totp_kek_id AS kek_id, COUNT(*) AS n FROM ops_users GROUP BY totp_kek_id ORDER BY totp_kek_id",
    ),
    (
        "audit chain key",
        "SELECT kek_id, COUNT(*) AS n FROM audit_key GROUP BY kek_id ORDER BY kek_id",
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
        let rows: Vec<(Option<String>, i64)> = sqlx::query_as(sql).fetch_all(db.pool()).await?;
        for (kek_id, records) in rows {
            counts.push(SealedCount {
                what,
                // A sealed grant without a KEK id cannot be opened; show it rather than hide it.
                kek_id: kek_id.unwrap_or_else(|| "(none)".to_string()),
                records,
            });
        }
    }
    Ok(counts)
}

/// Grant versions whose sealed payload was destroyed (rotated out or purged).
pub async fn shredded_grants(db: &Db) -> Result<i64, StorageError> {
    Ok(
        sqlx::query_scalar("SELECT COUNT(*) AS n FROM grants WHERE shredded_at IS NOT NULL")
            .fetch_one(db.pool())
            .await?,
    )
}

/// The tables whose rows carry a wrapped data key, for re-wrapping during a key rotation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SealedTable {
    Grants,
    SessionKeys,
    OpsTotp,
    /// The audit chain's HMAC key (`storage::audit`).
    AuditKey,
}

impl SealedTable {
    pub const ALL: [SealedTable; 4] = [
        Self::Grants,
        Self::SessionKeys,
        Self::OpsTotp,
        Self::AuditKey,
    ];

    /// Rows not wrapped under `$1` after the keyset position, in key order (`$2`, `$3` are the
    /// last key seen; `$4` the batch size). Shredded grants have nothing to re-wrap.
    fn select_sql(self) -> &'static str {
        match self {
            Self::Grants => {
                "SELECT tenant_id AS k, version AS n, kek_id, wrapped_key FROM grants
                 WHERE sealed IS NOT NULL AND kek_id <> $1 AND (tenant_id > $2 OR (tenant_id = $2 AND version > $3))
                 ORDER BY tenant_id, version LIMIT $4"
            }
            Self::SessionKeys => {
                "SELECT id AS k, kek_id, wrapped_key FROM session_keys
                 WHERE kek_id <> $1 AND id > $2 ORDER BY id LIMIT $3"
            }
            Self::OpsTotp => {
                "SELECT username AS k, totp_kek_id AS kek_id, totp_wrapped_key AS wrapped_key FROM ops_users
                 WHERE totp_kek_id <> $1 AND username > $2 ORDER BY username LIMIT $3"
            }
            Self::AuditKey => {
                "SELECT name AS k, kek_id, wrapped_key FROM audit_key
                 WHERE kek_id <> $1 AND name > $2 ORDER BY name LIMIT $3"
            }
        }
    }

    /// Compare-and-swap of one row's wrapped key: `$1`, `$2` new; `$3` old KEK id, `$4` old
    /// wrapped key; `$5` (and `$6`) the row key. A row changed meanwhile (re-sealed by the
    /// running service, or shredded) is left alone.
    fn swap_sql(self) -> &'static str {
        match self {
            Self::Grants => {
                "UPDATE grants SET kek_id = $1, wrapped_key = $2
                 WHERE kek_id = $3 AND wrapped_key = $4 AND tenant_id = $5 AND version = $6"
            }
            Self::SessionKeys => {
                "UPDATE session_keys SET kek_id = $1, wrapped_key = $2
                 WHERE kek_id = $3 AND wrapped_key = $4 AND id = $5"
            }
            Self::OpsTotp => {
                "UPDATE ops_users SET totp_kek_id = $1, totp_wrapped_key = $2
                 WHERE totp_kek_id = $3 AND totp_wrapped_key = $4 AND username = $5"
            }
            Self::AuditKey => {
                "UPDATE audit_key SET kek_id = $1, wrapped_key = $2
                 WHERE kek_id = $3 AND wrapped_key = $4 AND name = $5"
            }
        }
    }
}

/// Where a row is: its table and primary key (grants are keyed by tenant and version).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct RowKey {
    pub key: String,
    pub version: i64,
}

/// One row's wrapped data key, as found by [`not_under`].
#[derive(Clone, Debug)]
pub struct WrappedRow {
    pub table: SealedTable,
    pub at: RowKey,
    pub wrapped: WrappedKey,
}

/// Up to `limit` rows of `table` whose data key is not wrapped under `kek_id`, after `after`.
pub async fn not_under(
    db: &Db,
    table: SealedTable,
    kek_id: &str,
    after: &RowKey,
    limit: i64,
) -> Result<Vec<WrappedRow>, StorageError> {
    /// Only grants have a version (`n`); the other tables' rows are keyed by `k` alone.
    #[derive(FromRow)]
    struct KeyedRow {
        k: String,
        #[sqlx(default)]
        n: i64,
        kek_id: Option<String>,
        wrapped_key: Option<Vec<u8>>,
    }
    let query = sqlx::query_as(table.select_sql())
        .bind(kek_id)
        .bind(&after.key);
    let query = match table {
        SealedTable::Grants => query.bind(after.version).bind(limit),
        SealedTable::SessionKeys | SealedTable::OpsTotp | SealedTable::AuditKey => {
            query.bind(limit)
        }
    };
    let rows: Vec<KeyedRow> = query.fetch_all(db.pool()).await?;
    Ok(rows
        .into_iter()
        .map(|row| WrappedRow {
            table,
            at: RowKey {
                key: row.k,
                version: row.n,
            },
            wrapped: WrappedKey {
                kek_id: row.kek_id.unwrap_or_default(),
                bytes: row.wrapped_key.unwrap_or_default(),
            },
        })
        .collect())
}

/// Replaces the row's wrapped key with `new` if it still holds the one read; returns whether it
/// did (false: the row was re-sealed or shredded meanwhile, which is just as good).
pub async fn swap_wrapped_key(
    db: &Db,
    row: &WrappedRow,
    new: &WrappedKey,
) -> Result<bool, StorageError> {
    let query = sqlx::query(row.table.swap_sql())
        .bind(&new.kek_id)
        .bind(&new.bytes)
        .bind(&row.wrapped.kek_id)
        .bind(&row.wrapped.bytes)
        .bind(&row.at.key);
    let query = match row.table {
        SealedTable::Grants => query.bind(row.at.version),
        SealedTable::SessionKeys | SealedTable::OpsTotp | SealedTable::AuditKey => query,
    };
    Ok(query.execute(db.pool()).await?.rows_affected() == 1)
}

/// Sealed records whose data key is not wrapped under `kek_id`: what a rotation has left.
pub async fn count_not_under(db: &Db, kek_id: &str) -> Result<i64, StorageError> {
    Ok(count_by_kek(db)
        .await?
        .iter()
        .filter(|c| c.kek_id != kek_id)
        .map(|c| c.records)
        .sum())
}

/// A `samvault keys rotate` job: which KEK it moves records onto, and how far it got.
#[derive(Clone, Debug, PartialEq, Eq, FromRow)]
pub struct KeyRotation {
    pub id: String,
    pub target_kek_id: String,
    pub started_at: i64,
    pub finished_at: Option<i64>,
    pub rewrapped: i64,
}

/// The latest rotation that meets a condition, as static SQL.
macro_rules! latest_rotation {
    ($condition:literal) => {
        concat!(
            "SELECT id, target_kek_id, started_at, finished_at, rewrapped FROM key_rotations
             WHERE ",
            $condition,
            " ORDER BY started_at DESC, id LIMIT 1"
        )
    };
}

/// The rotation left unfinished by a crash or an interrupt, if any (the latest one).
pub async fn unfinished_rotation(db: &Db) -> Result<Option<KeyRotation>, StorageError> {
    Ok(sqlx::query_as(latest_rotation!("finished_at IS NULL"))
        .fetch_optional(db.pool())
        .await?)
}

/// The latest rotation, finished or not (the keys page).
pub async fn latest_rotation(db: &Db) -> Result<Option<KeyRotation>, StorageError> {
    Ok(sqlx::query_as(latest_rotation!("TRUE"))
        .fetch_optional(db.pool())
        .await?)
}

pub async fn start_rotation(
    db: &Db,
    target_kek_id: &str,
    at: i64,
) -> Result<KeyRotation, StorageError> {
    let id = uuid::Uuid::new_v4().to_string();
    sqlx::query(
        "INSERT INTO key_rotations (id, target_kek_id, started_at, rewrapped) VALUES ($1, $2, $3, 0)",
    )
    .bind(&id)
    .bind(target_kek_id)
    .bind(at)
    .execute(db.pool())
    .await?;
    Ok(KeyRotation {
        id,
        target_kek_id: target_kek_id.to_string(),
        started_at: at,
        finished_at: None,
        rewrapped: 0,
    })
}

/// Records progress (`finished_at` set when the job is done).
pub async fn update_rotation(
    db: &Db,
    id: &str,
    rewrapped: i64,
    finished_at: Option<i64>,
) -> Result<(), StorageError> {
    sqlx::query("UPDATE key_rotations SET rewrapped = $2, finished_at = $3 WHERE id = $1")
        .bind(id)
        .bind(rewrapped)
        .bind(finished_at)
        .execute(db.pool())
        .await?;
    Ok(())
}
