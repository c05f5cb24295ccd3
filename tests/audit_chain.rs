//! Issue 17 items 7 and 8 with real processes: the audit chain against someone who can write
//! to the database (a rewrite with recomputed hashes, a cut tail against the anchor file),
//! the modes of the files samvault creates, and plain http refused beside an https public URL.
#![allow(clippy::too_many_lines)] // scenarios read top to bottom

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use samvault::audit_chain::{self, AuditChainError, Settings};
use samvault::storage::audit;
use support::stack::*;
use support::{Backend, recompute_plain_chain};

/// `samvault audit verify` as a process: whether it exited 0, and everything it printed.
fn verify(stack: &Stack) -> (bool, String) {
    let out = stack.command(&["audit", "verify"]).output().unwrap();
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), printed)
}

/// `n` more audit entries, each written by a CLI process (`invite.create`).
fn audit_entries(stack: &Stack, n: usize) {
    for _ in 0..n {
        stack.cli(&["invite", "create", "--json"]);
    }
}

async fn last_seq(stack: &Stack) -> i64 {
    use sqlx::Row;
    sqlx::query("SELECT COALESCE(MAX(seq), 0) AS n FROM audit_log")
        .fetch_one(stack.db().await.pool())
        .await
        .unwrap()
        .try_get("n")
        .unwrap()
}

/// A stack whose processes keep the audit head in `anchor` (outside the database).
async fn stack_with_anchor(db_url: &str, anchor: &Path) -> Stack {
    let options =
        StackOptions::default().env("SAMVAULT_AUDIT_ANCHOR_FILE", &anchor.display().to_string());
    Stack::start(db_url, options).await
}

async fn a_cut_tail_is_found_against_the_anchor_file(backend: Backend) {
    let Some(db) = support::fresh_database(backend).await else {
        return;
    };
    let outside = tempfile::tempdir().unwrap();
    let anchor = outside.path().join("audit.anchor");
    let stack = stack_with_anchor(&db.url, &anchor).await;
    audit_entries(&stack, 5);
    let (intact, printed) = verify(&stack);
    assert!(intact, "an untouched log verifies: {printed}");
    assert!(printed.contains("audit chain intact"), "{printed}");
    let head = last_seq(&stack).await;
    let written = std::fs::read_to_string(&anchor).expect("the anchor file is written");
    assert!(
        written.starts_with(&format!("{head}:")),
        "the anchor names the head #{head}: {written}"
    );

    // Someone with write access cuts the last two entries off: every link left is intact.
    sqlx::query("DELETE FROM audit_log WHERE seq > $1")
        .bind(head - 2)
        .execute(stack.db().await.pool())
        .await
        .unwrap();
    let (intact, printed) = verify(&stack);
    assert!(!intact, "a cut tail must not verify: {printed}");
    assert!(
        printed.contains(&format!(
            "names event {head}, the log ends at event {}",
            head - 2
        )),
        "{printed}"
    );

    // Entries written after the cut do not move the anchor: the evidence stays. (They differ
    // from the ones cut: an identical entry in the same second would have the same MAC.)
    for _ in 0..3 {
        stack.cli(&["invite", "create", "--expires", "1d"]);
    }
    assert_eq!(std::fs::read_to_string(&anchor).unwrap(), written);
    let (intact, printed) = verify(&stack);
    assert!(!intact, "still refused after new entries: {printed}");
}

async fn a_rewrite_with_recomputed_plain_hashes_fails_verification(backend: Backend) {
    let Some(db) = support::fresh_database(backend).await else {
        return;
    };
    let stack = Stack::start(&db.url, StackOptions::default()).await;
    audit_entries(&stack, 3);
    let (intact, printed) = verify(&stack);
    assert!(intact, "{printed}");
    let target = last_seq(&stack).await - 1;
    let direct = stack.db().await;
    sqlx::query("UPDATE audit_log SET actor = 'ops:nobody', detail = '{}' WHERE seq = $1")
        .bind(target)
        .execute(direct.pool())
        .await
        .unwrap();
    // The whole chain recomputed from the first entry, as the old unkeyed scheme allowed.
    recompute_plain_chain(&direct, 1).await;
    let (intact, printed) = verify(&stack);
    assert!(!intact, "a recomputed chain must not verify: {printed}");
    assert!(printed.contains("audit chain broken at event"), "{printed}");
}

on_both_backends!(
    a_cut_tail_is_found_against_the_anchor_file,
    a_rewrite_with_recomputed_plain_hashes_fails_verification
);

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// SQLite on a fresh path: the database, its WAL and shared-memory files, the process lock,
/// the local key file and the anchor file are readable by their owner only.
#[tokio::test(flavor = "multi_thread")]
async fn the_files_samvault_creates_are_its_own() {
    let db = support::fresh_database(Backend::Sqlite).await.unwrap();
    let database = PathBuf::from(
        db.url
            .strip_prefix("sqlite://")
            .unwrap()
            .split('?')
            .next()
            .unwrap(),
    );
    assert!(!database.exists(), "a fresh path");
    let outside = tempfile::tempdir().unwrap();
    let anchor = outside.path().join("audit.anchor");
    let stack = stack_with_anchor(&db.url, &anchor).await;
    stack.consent("jane@contoso.example").await;
    audit_entries(&stack, 1);
    let with_suffix = |suffix: &str| PathBuf::from(format!("{}{suffix}", database.display()));
    for path in [
        database.clone(),
        with_suffix("-wal"),
        with_suffix("-shm"),
        with_suffix(".lock"),
        stack.dir.path().join("samvault.key"),
        anchor.clone(),
    ] {
        assert_eq!(mode(&path), 0o600, "{}", path.display());
    }
}

/// `samvault serve` with an https public URL and `setting` pointing at plain http.
fn serve_with(dir: &Path, setting: &str, value: &str) -> std::process::Output {
    let dir = dir.join(setting);
    std::fs::create_dir_all(&dir).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_samvault"));
    cmd.arg("serve")
        .env_clear()
        .env(
            "DATABASE_URL",
            format!("sqlite://{}/t.db?mode=rwc", dir.display()),
        )
        .env(
            "SAMVAULT_KEY_PROVIDER",
            format!("local:{}/k.key", dir.display()),
        )
        .env("SAMVAULT_LISTEN", format!("127.0.0.1:{}", free_port()))
        .env("SAMVAULT_PUBLIC_URL", "https://samvault.example.com")
        .env("SAMVAULT_CLIENT_ID", DEMO_CLIENT_ID)
        .env("SAMVAULT_CLIENT_SECRET", DEMO_CLIENT_SECRET)
        .env("SAMVAULT_WEBHOOK_SECRET", "webhook-secret")
        .env(setting, value)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    // A service that accepted the setting would serve forever: give it 20 s.
    let mut child = cmd.spawn().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn plain_http_beside_an_https_public_url_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    for (setting, value) in [
        ("SAMVAULT_AUTHORITY", "http://login.example.com"),
        ("SAMVAULT_WEBHOOK_URL", "http://hooks.example.com/samvault"),
    ] {
        let out = serve_with(dir.path(), setting, value);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{setting}={value} was accepted");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        assert!(
            stderr.contains(&format!("configuration: {setting}:")) && stderr.contains("https"),
            "{stderr}"
        );
    }
    for setting in ["SAMVAULT_AUTHORITY", "SAMVAULT_WEBHOOK_URL"] {
        let db = dir.path().join(setting).join("t.db");
        assert!(!db.exists(), "refused before anything");
    }
}

/// Loopback http (the dev IdP, a local webhook receiver) stays accepted with an https public
/// URL: the service starts and answers.
#[tokio::test(flavor = "multi_thread")]
async fn loopback_http_is_accepted_beside_an_https_public_url() {
    let db = support::fresh_database(Backend::Sqlite).await.unwrap();
    let options = StackOptions::default()
        .replicas(0)
        .env("SAMVAULT_WEBHOOK_URL", "http://localhost:9/hook")
        .env("SAMVAULT_WEBHOOK_SECRET", "webhook-secret");
    let mut stack = Stack::start(&db.url, options).await;
    assert!(stack.idp.starts_with("http://127.0.0.1:"));
    stack.replicas[0].public_url = Some("https://samvault.example.com".into());
    stack.start_replica(0).await;
}

// ---------------------------------------------------------------------------------------
// The key: sealed once by the vault, opened by every process, moved by `keys rotate`
// ---------------------------------------------------------------------------------------

async fn verified(db: &samvault::storage::Db) -> Result<audit::Verified, audit::Broken> {
    audit::verify(db, &[]).await.unwrap()
}

both_backends!(
    the_audit_key_is_sealed_once_and_opened_by_every_process,
    |url| async move {
        let raw = support::open_unaudited(&url).await;
        let vault = support::local_vault();
        let first = audit_chain::open(raw.clone(), &vault.vault, &Settings::default())
            .await
            .unwrap();
        let keyed = audit::search(&first, &Default::default(), 10)
            .await
            .unwrap();
        assert_eq!(keyed.len(), 1);
        assert_eq!(
            (keyed[0].seq, keyed[0].action.as_str()),
            (1, "audit.chain_keyed")
        );
        // A second process opens the same key: their entries form one chain.
        let second = audit_chain::open(raw.clone(), &vault.vault, &Settings::default())
            .await
            .unwrap();
        audit::append(
            &second,
            "cli",
            "client.create",
            None,
            serde_json::json!({}),
            1,
        )
        .await
        .unwrap();
        assert_eq!(verified(&first).await.unwrap().entries, 2);
        // No key is created twice.
        assert_eq!(audit::next_seq(&raw).await.unwrap(), 3);

        // Another key file cannot open it: the process stops rather than chain with a new key.
        let other = support::local_vault();
        let refused = audit_chain::open(raw.clone(), &other.vault, &Settings::default()).await;
        assert!(
            matches!(refused, Err(AuditChainError::Vault(_))),
            "{refused:?}"
        );
        // Nor can the first keyed entry be moved to pass rewritten entries off as older ones.
        sqlx::query("UPDATE audit_key SET first_seq = 3")
            .execute(raw.pool())
            .await
            .unwrap();
        let refused = audit_chain::open(raw.clone(), &vault.vault, &Settings::default()).await;
        assert!(
            matches!(refused, Err(AuditChainError::Vault(_))),
            "{refused:?}"
        );
    }
);

both_backends!(
    a_log_from_before_the_key_is_keyed_from_its_next_entry,
    |url| async move {
        let raw = support::open_unaudited(&url).await;
        support::unkeyed_entries(&raw, 2).await;
        let vault = support::local_vault();
        let db = audit_chain::open(raw, &vault.vault, &Settings::default())
            .await
            .unwrap();
        let intact = verified(&db).await.unwrap();
        assert_eq!((intact.entries, intact.first_keyed), (3, 3));
        let event = &audit::search(&db, &Default::default(), 1).await.unwrap()[0];
        assert_eq!(event.action, "audit.chain_keyed");
        assert_eq!(event.detail["unkeyed_entries"], 2);
    }
);

both_backends!(keys_rotate_moves_the_audit_key_too, |url| async move {
    use samvault::key_rotation::{self, Target};
    use samvault::storage::sealed;
    let raw = support::open_unaudited(&url).await;
    let vault = support::local_vault();
    let db = audit_chain::open(raw.clone(), &vault.vault, &Settings::default())
        .await
        .unwrap();
    let old = vault.vault.provider().current_kek_id();
    let report = key_rotation::rotate(&db, &vault.vault, Target::NewKey, "cli", |_| {})
        .await
        .unwrap();
    assert_eq!(report.moved.get("audit chain key"), Some(&1));
    assert_eq!(report.retired, [old]);
    let counts = sealed::count_by_kek(&db).await.unwrap();
    let key = counts.iter().find(|c| c.what == "audit chain key").unwrap();
    assert_eq!(key.kek_id, report.target_kek_id);
    // Opened again under the new KEK alone: the same key, the chain still intact.
    let reopened = audit_chain::open(raw, &vault.vault, &Settings::default())
        .await
        .unwrap();
    assert!(verified(&reopened).await.is_ok());
});

both_backends!(
    an_anchor_file_in_a_missing_directory_is_refused,
    |url| async move {
        let raw = support::open_unaudited(&url).await;
        let vault = support::local_vault();
        let settings = Settings {
            anchor_file: Some(PathBuf::from("/nonexistent-samvault-dir/audit.anchor")),
            checkpoint_every: 0,
        };
        let refused = audit_chain::open(raw, &vault.vault, &settings).await;
        let err = refused.expect_err("refused").to_string();
        assert!(err.starts_with("SAMVAULT_AUDIT_ANCHOR_FILE:"), "{err}");
    }
);
