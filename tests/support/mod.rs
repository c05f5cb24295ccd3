//! Helpers shared by the integration tests (`mod support;` in each test file).
//!
//! Every test gets its own fresh, empty database, so tests run in parallel and the same
//! test body runs against SQLite and PostgreSQL in one `cargo test`:
//!
//! ```ignore
//! mod support;
//! use support::*;
//!
//! both_backends!(partners_round_trip, |url| async move {
//!     let db = open(&url).await;
//!     // ...
//! });
//! ```
//!
//! This generates `partners_round_trip::sqlite` and `partners_round_trip::postgres`.
//! PostgreSQL comes from `SAMVAULT_TEST_POSTGRES` (an admin URL, default
//! [`DEFAULT_POSTGRES`]). When it is unreachable the PostgreSQL variant prints
//! `skipped: ...` and passes, unless `CI` is set, where it fails: CI must test both.

// Each test file uses a different subset of these helpers.
#![allow(dead_code)]

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use samvault::domain::TenantId;
use samvault::storage::Db;
use samvault::vault::{LocalKeyProvider, Vault};
use secrecy::SecretString;
use sqlx::{Connection, Executor};

pub const DEFAULT_POSTGRES: &str = "postgres://postgres@127.0.0.1:5432/postgres";
const POSTGRES_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A fresh, empty database that disappears when this value is dropped.
pub struct TestDb {
    pub url: String,
    pub backend: Backend,
    /// PostgreSQL: the admin URL and the database name to drop.
    postgres: Option<(String, String)>,
    /// SQLite: the directory holding the database file.
    _dir: Option<tempfile::TempDir>,
}

impl std::fmt::Debug for TestDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestDb")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// The PostgreSQL admin URL the tests create their databases through.
pub fn postgres_admin_url() -> String {
    std::env::var("SAMVAULT_TEST_POSTGRES")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_POSTGRES.to_string())
}

/// Whether we run in CI, where a missing PostgreSQL is a failure rather than a skip.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.trim(), "" | "0" | "false" | "FALSE" | "False"))
}

/// Creates a fresh empty database. `None` means "skip this test": PostgreSQL is not
/// reachable and we are not in CI (a message has been printed). In CI that panics instead.
pub async fn fresh_database(backend: Backend) -> Option<TestDb> {
    match backend {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().expect("create a temporary directory");
            let url = format!("sqlite://{}/t.db?mode=rwc", dir.path().display());
            Some(TestDb {
                url,
                backend,
                postgres: None,
                _dir: Some(dir),
            })
        }
        Backend::Postgres => {
            let admin = postgres_admin_url();
            let mut conn = match tokio::time::timeout(
                POSTGRES_CONNECT_TIMEOUT,
                sqlx::PgConnection::connect(&admin),
            )
            .await
            {
                Ok(Ok(conn)) => conn,
                Ok(Err(e)) => return postgres_unreachable(&admin, &e.to_string()),
                Err(_) => return postgres_unreachable(&admin, "connection timed out"),
            };
            let name = format!("samvault_t_{}", uuid::Uuid::new_v4().simple());
            conn.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .await
                .unwrap_or_else(|e| panic!("CREATE DATABASE {name} via {}: {e}", redact(&admin)));
            let _ = conn.close().await;
            let mut url = url::Url::parse(&admin)
                .unwrap_or_else(|e| panic!("SAMVAULT_TEST_POSTGRES is not a URL: {e}"));
            url.set_path(&format!("/{name}"));
            Some(TestDb {
                url: url.to_string(),
                backend,
                postgres: Some((admin, name)),
                _dir: None,
            })
        }
    }
}

fn postgres_unreachable(admin: &str, why: &str) -> Option<TestDb> {
    let admin = redact(admin);
    if in_ci() {
        panic!(
            "PostgreSQL not reachable at {admin} ({why}); CI is set, so PostgreSQL tests must run. \
             Start PostgreSQL or set SAMVAULT_TEST_POSTGRES (./scripts/test does both)."
        );
    }
    eprintln!("skipped: PostgreSQL not reachable at {admin} ({why})");
    None
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_string(),
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some((admin, name)) = self.postgres.take() else {
            return;
        };
        // Drop may run inside a tokio runtime (which cannot block on another one), so the
        // clean-up gets its own thread and a small runtime. FORCE ends the pool's sessions.
        let outcome = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime.block_on(async move {
                let drop_it = async {
                    let mut conn = sqlx::PgConnection::connect(&admin).await?;
                    conn.execute(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .await?;
                    conn.close().await
                };
                match tokio::time::timeout(Duration::from_secs(30), drop_it).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(format!("{name}: {e}")),
                    Err(_) => Err(format!("{name}: timed out")),
                }
            })
        })
        .join();
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("warning: could not drop test database {e}"),
            Err(_) => eprintln!("warning: test database clean-up thread panicked"),
        }
    }
}

/// Runs `body` with the URL of a fresh database of `backend`; returns early (the test
/// passes) when PostgreSQL is skipped. The database is dropped afterwards, even on panic.
pub async fn run_on<F, Fut>(backend: Backend, body: F)
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = ()>,
{
    let Some(db) = fresh_database(backend).await else {
        return;
    };
    body(db.url.clone()).await;
    drop(db);
}

/// One async test body, two `#[tokio::test]`s: `$name::sqlite` and `$name::postgres`.
/// The body is a closure taking the database URL: `|url| async move { ... }`.
#[macro_export]
macro_rules! both_backends {
    ($name:ident, $body:expr $(,)?) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                $crate::support::run_on($crate::support::Backend::Sqlite, $body).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                $crate::support::run_on($crate::support::Backend::Postgres, $body).await;
            }
        }
    };
}

/// For scenario functions `async fn name(backend: Backend)` defined in the test file: one
/// `#[tokio::test]` per backend, as `sqlite::name` and `postgres::name`.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread")]
            async fn $name() { super::$name($crate::support::Backend::Sqlite).await }
            )*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread")]
            async fn $name() { super::$name($crate::support::Backend::Postgres).await }
            )*
        }
    };
}

/// The audit key storage tests chain with (the service opens its own from the vault).
pub const TEST_AUDIT_KEY: [u8; 32] = [0x5a; 32];

/// Connects to `url`, applies the migrations, and gives the handle the audit chain's key
/// ([`TEST_AUDIT_KEY`], every entry keyed).
pub async fn open(url: &str) -> Db {
    open_unaudited(url).await.with_audit_chain(test_chain(1))
}

/// The audit chain of [`open`], keyed from entry `first_keyed` on.
pub fn test_chain(first_keyed: i64) -> samvault::storage::audit::Chain {
    use samvault::storage::audit::{Chain, ChainKey};
    Chain::new(ChainKey::from_bytes(&TEST_AUDIT_KEY).unwrap(), first_keyed)
}

/// Connects to `url` and applies the migrations; the handle cannot write to the audit log.
pub async fn open_unaudited(url: &str) -> Db {
    let db = Db::connect(&SecretString::from(url.to_string()))
        .await
        .unwrap_or_else(|e| panic!("connect to test database: {e}"));
    db.migrate()
        .await
        .unwrap_or_else(|e| panic!("migrate test database: {e}"));
    db
}

/// A vault over a fresh `LocalKeyProvider` key file. Keep the directory alive as long as
/// the key file is needed (the provider itself holds the key in memory).
pub struct TestVault {
    pub vault: Vault,
    pub key_path: std::path::PathBuf,
    pub dir: tempfile::TempDir,
}

pub fn local_vault() -> TestVault {
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let key_path = dir.path().join("samvault.key");
    let (provider, created) =
        LocalKeyProvider::open_or_create(&key_path).expect("create local key file");
    assert!(created, "the key file should be new");
    TestVault {
        vault: Vault::new(Arc::new(provider)),
        key_path,
        dir,
    }
}

/// A random, valid tenant id.
pub fn new_tenant() -> TenantId {
    TenantId::parse(&uuid::Uuid::new_v4().to_string()).expect("a v4 UUID is a tenant id")
}

/// Whether `needle` occurs anywhere in `haystack`.
pub fn contains_bytes(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

pub mod customers;
pub mod keyvault;
pub mod ops;
pub mod revoke;
pub mod stack;
pub mod webhook;

/// The unkeyed SHA-256 a row's hash was before issue 17: length-prefixed fields after the
/// previous hash. Anyone with write access can recompute it.
pub fn plain_hash(prev: &str, row: &sqlx::any::AnyRow) -> String {
    use sha2::{Digest, Sha256};
    use sqlx::Row;
    let seq: i64 = row.try_get("seq").unwrap();
    let at: i64 = row.try_get("at").unwrap();
    let tenant: Option<String> = row.try_get("tenant_id").unwrap();
    let mut h = Sha256::new();
    for part in [
        prev.to_string(),
        seq.to_string(),
        at.to_string(),
        row.try_get::<String, _>("actor").unwrap(),
        row.try_get::<String, _>("action").unwrap(),
        tenant.unwrap_or_default(),
        row.try_get::<String, _>("detail").unwrap(),
    ] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    hex::encode(h.finalize())
}

/// What a database writer without the vault's key can do: recompute every plain hash and
/// link from entry `from` on, after rewriting rows.
pub async fn recompute_plain_chain(db: &Db, from: i64) {
    use sqlx::Row;
    let rows = sqlx::query(
        "SELECT seq, at, actor, action, tenant_id, detail, prev_hash, hash FROM audit_log ORDER BY seq",
    )
    .fetch_all(db.pool())
    .await
    .unwrap();
    let mut prev = "0".repeat(64);
    for row in &rows {
        let seq: i64 = row.try_get("seq").unwrap();
        if seq < from {
            prev = row.try_get("hash").unwrap();
            continue;
        }
        let hash = plain_hash(&prev, row);
        sqlx::query("UPDATE audit_log SET prev_hash = $1, hash = $2 WHERE seq = $3")
            .bind(&prev)
            .bind(&hash)
            .bind(seq)
            .execute(db.pool())
            .await
            .unwrap();
        prev = hash;
    }
}

/// Entries as a samvault from before the audit key wrote them: plain SHA-256 chain.
pub async fn unkeyed_entries(db: &Db, n: i64) {
    for seq in 1..=n {
        sqlx::query(
            "INSERT INTO audit_log (seq, at, actor, action, tenant_id, detail, prev_hash, hash) \
             VALUES ($1, $2, 'cli', 'client.create', NULL, '{}', '', '')",
        )
        .bind(seq)
        .bind(1_700_000_000 + seq)
        .execute(db.pool())
        .await
        .unwrap();
    }
    recompute_plain_chain(db, 1).await;
}
