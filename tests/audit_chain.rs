//! Issue 17 items 7 and 8 with real processes: the audit chain against someone who can write
//! to the database (a rewrite with recomputed hashes, a cut tail against the anchor file),
//! the modes of the files samvault creates, and plain http refused beside an https public URL.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

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
    let options = StackOptions::default().env(
        "SAMVAULT_AUDIT_ANCHOR_FILE",
        &anchor.display().to_string(),
    );
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
        printed.contains(&format!("names event {head}, the log ends at event {}", head - 2)),
        "{printed}"
    );

    // Entries written after the cut do not move the anchor: the evidence stays.
    audit_entries(&stack, 3);
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
