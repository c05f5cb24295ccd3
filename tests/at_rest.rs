//! REFERENCE §2: "a database dump alone must yield nothing". A copy of a database that real
//! consents, redemptions, an ops user and onboarding sessions filled is opened with a
//! different key file: every sealed record and the session key (which seals the sessions),
//! one by one, refuse to open, and the copy holds no refresh token the IdP issued. With the
//! service's own key file the same records open, so the refusals come from the key and
//! nothing else.
#![allow(clippy::too_many_lines)] // scenarios read top to bottom

mod support;

use std::collections::HashMap;
use std::sync::Arc;

use samvault::domain::TenantId;
use samvault::storage::Db;
use samvault::storage::ops_users::totp_context;
use samvault::storage::partners::grant_context;
use samvault::storage::sealed;
use samvault::storage::sessions::row_key;
use samvault::vault::{LocalKeyProvider, Sealed, SealedRecord, Vault, VaultError, WrappedKey};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use sqlx::Row;
use support::Backend;
use support::stack::*;

/// A sealed record as a database copy holds it, with the context it was sealed under.
struct Record {
    what: String,
    context: String,
    sealed: Sealed,
}

fn sealed_from(row: &sqlx::any::AnyRow, columns: [&str; 3]) -> Sealed {
    let [kek_id, wrapped_key, record] = columns;
    Sealed {
        wrapped_key: WrappedKey {
            kek_id: row.try_get(kek_id).unwrap(),
            bytes: row.try_get(wrapped_key).unwrap(),
        },
        record: SealedRecord::decode(row.try_get(record).unwrap()).unwrap(),
    }
}

/// Every record in `db` sealed under a data key of its own (refresh tokens, TOTP secrets).
async fn sealed_records(db: &Db) -> Vec<Record> {
    let mut records = Vec::new();
    let grants = "SELECT tenant_id, version, kek_id, wrapped_key, sealed FROM grants WHERE sealed IS NOT NULL";
    for row in sqlx::query(grants).fetch_all(db.pool()).await.unwrap() {
        let tenant: String = row.try_get("tenant_id").unwrap();
        let version: i64 = row.try_get("version").unwrap();
        records.push(Record {
            what: format!("refresh token {tenant} v{version}"),
            context: grant_context(&TenantId::parse(&tenant).unwrap(), version),
            sealed: sealed_from(&row, ["kek_id", "wrapped_key", "sealed"]),
        });
    }
    let users = "SELECT username, totp_kek_id, totp_wrapped_key, totp_sealed FROM ops_users";
    for row in sqlx::query(users).fetch_all(db.pool()).await.unwrap() {
        let username: String = row.try_get("username").unwrap();
        records.push(Record {
            what: format!("TOTP secret of {username}"),
            context: totp_context(&username),
            sealed: sealed_from(&row, ["totp_kek_id", "totp_wrapped_key", "totp_sealed"]),
        });
    }
    let keys = "SELECT first_seq, kek_id, wrapped_key, sealed FROM audit_key";
    for row in sqlx::query(keys).fetch_all(db.pool()).await.unwrap() {
        let first_seq: i64 = row.try_get("first_seq").unwrap();
        records.push(Record {
            what: "audit chain key".into(),
            context: samvault::storage::audit::key_context(first_seq),
            sealed: sealed_from(&row, ["kek_id", "wrapped_key", "sealed"]),
        });
    }
    records
}

/// The session keys in `db`: data keys wrapped by the KEK, which seal every session row.
async fn session_keys(db: &Db) -> Vec<(String, WrappedKey)> {
    let rows = "SELECT id, kek_id, wrapped_key FROM session_keys";
    let mut keys = Vec::new();
    for row in sqlx::query(rows).fetch_all(db.pool()).await.unwrap() {
        let wrapped = WrappedKey {
            kek_id: row.try_get("kek_id").unwrap(),
            bytes: row.try_get("wrapped_key").unwrap(),
        };
        keys.push((row.try_get("id").unwrap(), wrapped));
    }
    keys
}

/// A session row as a copy holds it: its key's id, its context, its sealed bytes. Rows are
/// keyed by a digest of the session id, so the context comes from the cookies of the
/// browsers that made them (`sessions`: id by row key); a row no browser made fails the test.
async fn session_rows(
    db: &Db,
    sessions: &HashMap<String, String>,
) -> Vec<(String, String, SealedRecord)> {
    let mut rows = Vec::new();
    let query = "SELECT id, key_id, sealed FROM sessions";
    for row in sqlx::query(query).fetch_all(db.pool()).await.unwrap() {
        let key: String = row.try_get("id").unwrap();
        let id = sessions
            .get(&key)
            .unwrap_or_else(|| panic!("session row {key} was made by no browser of this test"));
        rows.push((
            row.try_get("key_id").unwrap(),
            format!("samvault:session:{id}"),
            SealedRecord::decode(row.try_get("sealed").unwrap()).unwrap(),
        ));
    }
    rows
}

/// A vault over a key file: the service's own, or a fresh one ("another key").
fn vault_over(path: &std::path::Path) -> Vault {
    let (provider, _) = LocalKeyProvider::open_or_create(path).unwrap();
    Vault::new(Arc::new(provider))
}

/// The database as someone who copied it holds it. SQLite: the files, copied with the
/// service stopped. PostgreSQL: the rows themselves (the same database, read directly).
async fn copy_of(stack: &Stack, into: &std::path::Path) -> Db {
    let url = match stack.db_url.strip_prefix("sqlite://") {
        Some(rest) => {
            let path = rest.split('?').next().unwrap();
            for suffix in ["", "-wal"] {
                let from = format!("{path}{suffix}");
                if std::path::Path::new(&from).exists() {
                    std::fs::copy(&from, into.join(format!("copy.db{suffix}"))).unwrap();
                }
            }
            format!("sqlite://{}?mode=rwc", into.join("copy.db").display())
        }
        None => stack.db_url.clone(),
    };
    Db::connect(&SecretString::from(url)).await.unwrap()
}

async fn a_database_copied_without_the_key_file_yields_nothing(backend: Backend) {
    let Some(db) = support::fresh_database(backend).await else {
        return;
    };
    let mut stack = Stack::start(&db.url, StackOptions::default()).await;
    // Three partners consent in browsers we keep (their session cookies name the rows).
    let mut browsers = Vec::new();
    for upn in [
        "jane@contoso.example",
        "trent@wingtip.example",
        "admin@tenant-1.example",
    ] {
        let mut browser = Browser::new(&stack);
        let done = browser.consent(upn, true, "accept").await;
        assert_eq!(done.status, 200, "{}", done.body);
        browsers.push(browser);
    }
    // Redemptions store second versions of Contoso's and Wingtip's refresh tokens.
    let creds = stack.client(&[PARTNER_CENTER]);
    for tenant in [CONTOSO, WINGTIP] {
        assert_eq!(stack.token(&creds, tenant, token_body()).await.0, 200);
    }
    let ops_user: Value = serde_json::from_str(&stack.cli(&[
        "ops-user", "create", "--name", "alice", "--role", "admin", "--json",
    ]))
    .unwrap();
    let totp_secret = ops_user["totp_secret"].as_str().unwrap().to_string();
    let issued: Vec<String> = stack
        .sim(reqwest::Method::GET, "grants", Value::Null)
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["refresh_token"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(issued.len(), 5, "three consents and two redemptions");
    let sessions: HashMap<String, String> = browsers
        .iter()
        .map(|b| {
            let id = b
                .cookie()
                .unwrap()
                .strip_prefix("samvault_session=")
                .unwrap();
            (row_key(&id.parse().unwrap()), id.to_string())
        })
        .collect();
    drop(browsers);
    stack.kill_replica(0);

    let dir = tempfile::tempdir().unwrap();
    let copy = copy_of(&stack, dir.path()).await;
    let records = sealed_records(&copy).await;
    let keys = session_keys(&copy).await;
    let session_rows = session_rows(&copy, &sessions).await;
    // Every table that holds sealed data is covered: the storage layer's own count agrees.
    let declared: i64 = sealed::count_by_kek(&copy)
        .await
        .unwrap()
        .iter()
        .map(|c| c.records)
        .sum();
    assert_eq!(
        (records.len() + keys.len()) as i64,
        declared,
        "a sealed table was left out"
    );
    assert_eq!(keys.len(), 1, "one session key seals every session");
    assert!(session_rows.len() >= 3, "the three consents' sessions");
    let count = |prefix: &str| {
        records
            .iter()
            .filter(|r| r.what.starts_with(prefix))
            .count()
    };
    assert_eq!(count("refresh token"), 5);
    assert_eq!(count("TOTP secret"), 1);
    assert_eq!(count("audit chain key"), 1);

    let own_key = vault_over(&stack.dir.path().join("samvault.key"));
    let another_key = vault_over(&dir.path().join("another.key"));
    let another_kek_id = another_key.provider().current_kek_id().to_string();
    for record in &records {
        // The control: with the service's key the record opens to what was sealed.
        let plain = own_key
            .open(&record.sealed, &record.context)
            .await
            .unwrap_or_else(|e| {
                panic!("{}: the service's own key cannot open it: {e}", record.what)
            });
        let plain = plain.expose_secret();
        if record.what.starts_with("refresh token") {
            assert!(
                issued.iter().any(|rt| rt.as_bytes() == plain.as_slice()),
                "{}",
                record.what
            );
        } else if record.what.starts_with("TOTP") {
            assert_eq!(samvault::ops::totp::base32(plain), totp_secret);
        }
        // Another key file cannot open it as stored...
        match another_key.open(&record.sealed, &record.context).await {
            Ok(_) => panic!("{}: opened without the service's key", record.what),
            Err(VaultError::ProviderUnavailable(e)) => {
                panic!("{}: not a refusal: {e}", record.what)
            }
            Err(_) => {}
        }
        // ...nor once relabelled as its own: the data key's unwrapping fails authentication.
        let mut relabelled = record.sealed.clone();
        relabelled.wrapped_key.kek_id = another_kek_id.clone();
        let refused = another_key.open(&relabelled, &record.context).await;
        assert!(
            matches!(refused, Err(VaultError::Integrity)),
            "{}: {:?}",
            record.what,
            refused.err()
        );
    }

    // The session key opens with the service's key file only, and with it every session.
    for (id, wrapped) in &keys {
        let held = own_key
            .hold(wrapped)
            .await
            .unwrap_or_else(|e| panic!("session key {id}: the service's own key: {e}"));
        for (_, context, sealed) in session_rows.iter().filter(|(key, ..)| key == id) {
            let plain = held.open(sealed, context).unwrap();
            let record: Value = serde_json::from_slice(plain.expose_secret()).unwrap();
            assert!(record["data"].is_object(), "{context}");
        }
        match another_key.hold(wrapped).await {
            Ok(_) => panic!("session key {id}: opened without the service's key"),
            Err(VaultError::ProviderUnavailable(e)) => panic!("session key {id}: {e}"),
            Err(_) => {}
        }
        let relabelled = WrappedKey {
            kek_id: another_kek_id.clone(),
            bytes: wrapped.bytes.clone(),
        };
        assert!(
            matches!(
                another_key.hold(&relabelled).await,
                Err(VaultError::Integrity)
            ),
            "session key {id}"
        );
    }

    // And the copy's bytes hold none of the refresh tokens the IdP issued, nor the TOTP secret.
    let dump = stack.database_dump();
    assert!(dump.len() > 10_000, "the dump is real");
    for token in &issued {
        assert!(!contains(&dump, token), "a refresh token in clear");
        assert!(
            !contains(&dump, &token[3..40]),
            "part of a refresh token in clear"
        );
    }
    assert!(!contains(&dump, &totp_secret), "the TOTP secret in clear");
}

on_both_backends!(
    a_database_copied_without_the_key_file_yields_nothing,
    a_missing_key_file_is_not_replaced_beside_sealed_records
);

/// A command pointed at a key file that is not there, beside a database whose records were
/// sealed by another key, refuses and names the setting, before it creates a key: a new key
/// would open none of the records, and the stray file would look like the right one. With the
/// old key named as a previous provider (a move to a new local key), the new file is made.
async fn a_missing_key_file_is_not_replaced_beside_sealed_records(backend: Backend) {
    let Some(db) = support::fresh_database(backend).await else {
        return;
    };
    let stack = Stack::start(&db.url, StackOptions::default()).await;
    let mut browser = Browser::new(&stack);
    assert_eq!(
        browser
            .consent("jane@contoso.example", true, "accept")
            .await
            .status,
        200
    );
    stack.client(&[PARTNER_CENTER]);
    let elsewhere = stack.dir.path().join("elsewhere.key");
    let with_key = |key: &std::path::Path| {
        let mut cmd = stack.command(&[
            "client",
            "create",
            "--name",
            "x",
            "--resource",
            PARTNER_CENTER,
        ]);
        cmd.env("SAMVAULT_KEY_PROVIDER", format!("local:{}", key.display()));
        cmd
    };

    for _ in 0..2 {
        let out = with_key(&elsewhere).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "refused");
        assert!(
            stderr.contains("SAMVAULT_KEY_PROVIDER") && stderr.contains("does not exist"),
            "names the setting and the missing file: {stderr}"
        );
        assert!(!elsewhere.exists(), "no key file was created");
    }

    let previous = format!("local:{}", stack.dir.path().join("samvault.key").display());
    let out = with_key(&elsewhere)
        .env("SAMVAULT_PREVIOUS_KEY_PROVIDERS", &previous)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(elsewhere.exists(), "a move to a new key makes it");
}
