//! Storage: one set of queries over SQLite (the embedded default) and PostgreSQL.
//!
//! sqlx's `Any` driver picks the backend from `DATABASE_URL` at run time, so every query
//! is written once in the SQL both dialects share (`$n` parameters, `ON CONFLICT`,
//! `RETURNING`, integers for times and flags). Each backend has its own migrations folder
//! because DDL differs (BLOB/BYTEA, AUTOINCREMENT/BIGSERIAL). Where behaviour must differ
//! (row locks on PostgreSQL), [`Backend`] says which one is in use.

pub mod audit;
pub mod clients;
pub mod customer_tokens;
pub mod customers;
pub mod invitations;
pub mod ops_signin;
pub mod ops_users;
pub mod outbox;
pub mod partners;
pub mod replicas;
pub mod requests;
pub mod rotation;
pub mod sealed;
pub mod session_keys;
pub mod sessions;
mod sql;
pub mod stats;

use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{AnyPool, Executor, SqlSafeStr};
/// `#[derive(FromRow)]`: every query reads its columns into a row type by name.
use sqlx_macros::FromRow;

use crate::domain::TenantId;
use crate::vault::{Sealed, SealedRecord, VaultError, WrappedKey};
use sql::SqlBuilder;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored data is inconsistent: {0}")]
    Corrupt(String),
    /// An audit entry was written or verified through a handle without the chain's key
    /// (`crate::audit_chain::open` gives it one).
    #[error("the audit chain's key is not open")]
    NoAuditKey,
}

/// The database handle shared by every part of the service.
#[derive(Clone)]
pub struct Db {
    pool: AnyPool,
    /// On SQLite, read-only connections beside the single writer (WAL readers never wait
    /// for a write), for the reads on the request path; on PostgreSQL, `pool` itself.
    reader: AnyPool,
    backend: Backend,
    /// The audit chain's key and outside heads, once opened (`Db::with_audit_chain`).
    audit: Option<Arc<audit::Chain>>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

/// Migrations are compiled into the binary, one list per backend.
macro_rules! migrations {
    ($dir:literal: $($version:literal $name:literal),* $(,)?) => {
        vec![$(Migration::new(
            $version,
            Cow::Borrowed($name),
            MigrationType::Simple,
            include_str!(concat!("../../migrations/", $dir, "/", $name, ".sql")).into_sql_str(),
            false,
        )),*]
    };
}

fn migrator(backend: Backend) -> Migrator {
    let migrations = match backend {
        Backend::Sqlite => {
            migrations!("sqlite": 1 "0001_initial", 2 "0002_rotation", 3 "0003_token_requests", 4 "0004_request_summary", 5 "0005_ops_users", 6 "0006_partner_list", 7 "0007_audit_filters", 8 "0008_rotation_days", 9 "0009_key_rotations", 10 "0010_replicas", 11 "0011_consent_grant_version", 12 "0012_ops_session_epoch", 13 "0013_customers", 14 "0014_customer_requests", 15 "0015_audit_key", 16 "0016_session_keys")
        }
        Backend::Postgres => {
            migrations!("postgres": 1 "0001_initial", 2 "0002_rotation", 3 "0003_token_requests", 4 "0004_request_summary", 5 "0005_ops_users", 6 "0006_partner_list", 7 "0007_audit_filters", 8 "0008_rotation_days", 9 "0009_key_rotations", 10 "0010_replicas", 11 "0011_consent_grant_version", 12 "0012_ops_session_epoch", 13 "0013_customers", 14 "0014_customer_requests", 15 "0015_audit_key", 16 "0016_session_keys")
        }
    };
    Migrator::with_migrations(migrations)
}

impl Db {
    /// Connects (creating the SQLite file if the URL says `mode=rwc`).
    pub async fn connect(url: &SecretString) -> Result<Self, StorageError> {
        install_default_drivers();
        let url = url.expose_secret();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            Backend::Postgres
        };
        let options = AnyPoolOptions::new()
            // SQLite takes one writer at a time; with several connections, writers meet
            // SQLITE_BUSY and sleep in its busy handler (1, 2, 5 … 100 ms). One connection
            // queues them in the pool instead, which is far faster under load.
            .max_connections(match backend {
                Backend::Sqlite => 1,
                Backend::Postgres => 16,
            })
            .acquire_timeout(Duration::from_secs(10));
        let options = if backend == Backend::Sqlite {
            options.after_connect(|conn, _| {
                Box::pin(async move {
                    // WAL lets readers proceed during a write; the busy timeout turns brief
                    // writer contention into a wait instead of an error.
                    conn.execute("PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL")
                        .await?;
                    Ok(())
                })
            })
        } else {
            options
        };
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        if backend == Backend::Sqlite && !in_memory {
            create_owner_only(url);
        }
        let pool = options.connect(url).await?;
        let reader = if backend == Backend::Sqlite && !in_memory {
            // The writer connected first, so the file exists and is in WAL mode.
            AnyPoolOptions::new()
                .max_connections(2)
                .acquire_timeout(Duration::from_secs(10))
                .after_connect(|conn, _| {
                    Box::pin(async move {
                        conn.execute("PRAGMA busy_timeout = 10000; PRAGMA query_only = ON")
                            .await?;
                        Ok(())
                    })
                })
                .connect(url)
                .await?
        } else {
            pool.clone()
        };
        Ok(Self {
            pool,
            reader,
            backend,
            audit: None,
        })
    }

    /// This handle (and its clones) appends to and verifies the audit chain with `chain`.
    pub fn with_audit_chain(mut self, chain: audit::Chain) -> Self {
        self.audit = Some(Arc::new(chain));
        self
    }

    pub fn audit_chain(&self) -> Option<&audit::Chain> {
        self.audit.as_deref()
    }

    pub async fn migrate(&self) -> Result<(), StorageError> {
        migrator(self.backend).run(&self.pool).await?;
        Ok(())
    }

    /// Starts a transaction that is going to write. On SQLite this is `BEGIN IMMEDIATE`,
    /// which takes the write lock up front: a transaction that reads before it writes then
    /// waits its turn (busy timeout) instead of failing with "database is locked"
    /// (SQLITE_BUSY / SQLITE_BUSY_SNAPSHOT) when another connection writes in between.
    pub async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, StorageError> {
        Ok(match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        })
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// For reads that must not queue behind a write (client authentication, the grants the
    /// rotation engine redeems). Never for a read that a write depends on: that belongs in
    /// the write's transaction.
    pub fn reader(&self) -> &AnyPool {
        &self.reader
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// For `/readyz`: one round trip.
    pub async fn ping(&self) -> Result<(), StorageError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}

/// The file a `sqlite:` URL names, as sqlx reads it (percent-decoded); `None` for another
/// database or an in-memory one.
pub fn sqlite_file(url: &str) -> Option<PathBuf> {
    use std::str::FromStr;
    if !url.starts_with("sqlite:") || url.contains(":memory:") || url.contains("mode=memory") {
        return None;
    }
    let options = sqlx::sqlite::SqliteConnectOptions::from_str(url).ok()?;
    let path = options.get_filename();
    (!path.as_os_str().is_empty()).then(|| path.to_path_buf())
}

/// Creates a missing SQLite file (`mode=rwc`) readable by its owner only, before SQLite
/// creates it with the umask's mode. SQLite gives its `-wal` and `-shm` files the database
/// file's mode. An existing file is left as it is.
fn create_owner_only(url: &str) {
    let Some(path) = sqlite_file(url).filter(|_| url.contains("mode=rwc")) else {
        return;
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    // Already there, or a path SQLite will report on itself.
    let _ = options.open(&path);
}

/// Seconds since the Unix epoch, the one time representation in the database.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A stored time as RFC 3339 (UTC), the form the API, the CLI and events show.
pub fn rfc3339(unix: i64) -> String {
    use time::format_description::well_known::Rfc3339;
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

/// Converts a stored 0/1 flag.
pub(crate) fn flag(value: i64) -> bool {
    value != 0
}

/// Parses a stored tenant id; `whose` says where it was found.
fn stored_tenant(id: &str, whose: impl std::fmt::Display) -> Result<TenantId, StorageError> {
    TenantId::parse(id).map_err(|e| StorageError::Corrupt(format!("{whose}: {e}")))
}

/// The three columns a vault-sealed record is stored in (selected under these names).
#[derive(FromRow)]
struct SealedColumns {
    kek_id: String,
    wrapped_key: Vec<u8>,
    sealed: Vec<u8>,
}

impl SealedColumns {
    fn into_sealed(self) -> Result<Sealed, VaultError> {
        Ok(Sealed {
            wrapped_key: WrappedKey {
                kek_id: self.kek_id,
                bytes: self.wrapped_key,
            },
            record: SealedRecord::decode(self.sealed)?,
        })
    }
}
