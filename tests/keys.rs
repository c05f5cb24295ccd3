//! `samvault keys rotate`, end to end: a real `serve` answering token requests while the
//! command re-wraps every data key onto a new key-encryption key, killed half-way and run
//! again.
#![allow(clippy::too_many_lines)] // scenarios read top to bottom

mod support;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use support::Backend;
use support::stack::*;

/// Generated partners consented before the rotation (the load consents as many more during it).
const PARTNERS: u32 = 12;
/// Sealed records added beside the partners' grants, so the rotation runs long enough to be
/// killed half-way.
const FILLER_SESSION_KEYS: usize = 2500;

fn key_file(stack: &Stack) -> std::path::PathBuf {
    stack.dir.path().join("samvault.key")
}

fn key_lines(stack: &Stack) -> usize {
    std::fs::read_to_string(key_file(stack))
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count()
}

fn keys_status(stack: &Stack) -> Value {
    serde_json::from_str(&stack.cli(&["keys", "status", "--json"])).unwrap()
}

/// Adds `n` session keys wrapped with the stack's own key file, as the service makes them
/// (half an hour old: older than the service's own, so it never takes them up, and too young
/// to be forgotten while the test runs).
async fn add_session_keys(stack: &Stack, n: usize) {
    use samvault::vault::{LocalKeyProvider, Vault};
    let (provider, created) = LocalKeyProvider::open_or_create(&key_file(stack)).unwrap();
    assert!(!created, "the service created the key file");
    let vault = Vault::new(Arc::new(provider));
    let db = stack.db().await;
    let created_at = samvault::storage::now() - 1800;
    for i in 0..n {
        let (_, wrapped) = vault.new_held_key().await.unwrap();
        sqlx::query(
            "INSERT INTO session_keys (id, kek_id, wrapped_key, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(format!("filler-{i:05}"))
        .bind(&wrapped.kek_id)
        .bind(&wrapped.bytes)
        .bind(created_at)
        .execute(db.pool())
        .await
        .unwrap();
    }
}

/// Until `stop`: token requests for the partners consented before (cache hits), and new
/// consents each followed by a first token request (a fresh grant sealed, then unwrapped and
/// re-sealed by the exchange) while the keys move. Returns successes and failures.
fn load(
    stack: Arc<Stack>,
    creds: (String, String),
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(u64, Vec<(u16, String)>)> {
    tokio::spawn(async move {
        let (mut ok, mut failures) = (0u64, Vec::new());
        let mut outcome = |status: u16, body: String| {
            if status == 200 {
                ok += 1;
            } else {
                failures.push((status, body));
            }
        };
        let mut next_new = PARTNERS + 1;
        let mut i = 0u32;
        while !stop.load(Ordering::Relaxed) {
            let mut tenants = vec![1 + i % PARTNERS];
            if i.is_multiple_of(4) && next_new <= 2 * PARTNERS {
                let done = Browser::new(&stack)
                    .consent(&format!("admin@tenant-{next_new}.example"), true, "accept")
                    .await;
                outcome(done.status, done.body);
                tenants.push(next_new);
                next_new += 1;
            }
            for k in tenants {
                let body = json!({ "resource": PARTNER_CENTER, "purpose": "key rotation load" });
                let (status, body) = stack.token(&creds, &generated_tenant(k), body).await;
                outcome(status, body.to_string());
            }
            i += 1;
        }
        (ok, failures)
    })
}

/// Runs `keys rotate` and SIGKILLs it once its progress shows some, not all, records moved.
fn rotate_and_kill_half_way(stack: &Stack) -> (u64, u64) {
    let mut child = Proc(
        stack
            .command(&["keys", "rotate"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stderr = BufReader::new(child.0.stderr.take().unwrap());
    // Progress lines off a terminal: "re-wrapping DONE/TOTAL", one per tenth.
    let progress = stderr.lines().map(Result::unwrap).find_map(|line| {
        let (done, total) = line.strip_prefix("re-wrapping ")?.split_once('/')?;
        Some((done.parse().unwrap(), total.parse().unwrap()))
    });
    // Dropping the process kills it (SIGKILL) and reaps it.
    drop(child);
    progress.expect("keys rotate printed progress before it ended")
}

async fn rotation_under_load_survives_a_kill(backend: Backend) {
    let Some(db) = support::fresh_database(backend).await else {
        return;
    };
    let stack = Stack::start(&db.url, StackOptions::default().tenants(2 * PARTNERS)).await;
    for k in 1..=PARTNERS {
        stack.consent(&format!("admin@tenant-{k}.example")).await;
    }
    add_session_keys(&stack, FILLER_SESSION_KEYS).await;
    let before = keys_status(&stack);
    let old_kek = before["current_kek_id"].as_str().unwrap().to_string();
    assert_eq!(before["not_under_current_key"], 0);
    assert_eq!(key_lines(&stack), 1);

    let stack = Arc::new(stack);
    // Far above the load: every request must pass the rate limiter.
    let creds = stack.client_with_rate_limit(&[PARTNER_CENTER], 1_000_000);
    let stop = Arc::new(AtomicBool::new(false));
    let load = load(stack.clone(), creds.clone(), stop.clone());

    let (done, total) = rotate_and_kill_half_way(&stack);
    assert!(
        done < total,
        "killed before the end ({done}/{total} re-wrapped)"
    );
    let half = keys_status(&stack);
    let new_kek = half["current_kek_id"].as_str().unwrap().to_string();
    assert_ne!(new_kek, old_kek, "the killed run had created a new key");
    assert!(
        half["not_under_current_key"].as_i64().unwrap() > 0,
        "the kill left records under the old key: {half}"
    );
    assert_eq!(key_lines(&stack), 2, "both keys kept until the job is done");

    // Run again: the interrupted job is resumed onto the same key, not a third one.
    let out = stack.cli(&["keys", "rotate"]);
    assert!(
        out.starts_with("resumed: re-wrapped"),
        "a re-run resumes: {out}"
    );
    assert!(out.contains(&new_kek), "{out}");
    assert!(out.contains(&format!("retired {old_kek}")), "{out}");

    // Keep the load running a little after the rotation, then stop it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let (ok, failures) = load.await.unwrap();
    let consented_during = stack.partners().len() as u32 - PARTNERS;
    assert!(
        consented_during > 0,
        "partners consented during the rotation"
    );
    assert!(
        failures.is_empty(),
        "{} of {} token requests failed during the rotation, first: {:?}",
        failures.len(),
        ok + failures.len() as u64,
        failures.first()
    );
    assert!(ok > 0, "the load ran");
    eprintln!(
        "keys rotate killed at {done}/{total} re-wrapped, resumed to the end; {ok} token requests and {consented_during} consents during it, 0 failed"
    );

    let after = keys_status(&stack);
    assert_eq!(after["current_kek_id"], new_kek.as_str());
    assert_eq!(after["not_under_current_key"], 0, "{after}");
    for row in after["sealed"].as_array().unwrap() {
        assert_eq!(row["kek_id"], new_kek.as_str(), "{after}");
    }
    assert_eq!(
        key_lines(&stack),
        1,
        "the old key was retired from the key file"
    );
    // Every partner still gets a token opened under the new key, on a replica started now.
    let mut stack = Arc::into_inner(stack).unwrap();
    stack.kill_replica(0);
    stack.start_replica(0).await;
    for k in 1..=PARTNERS + consented_during {
        let (status, body) = stack
            .token(
                &creds,
                &generated_tenant(k),
                json!({ "resource": PARTNER_CENTER, "purpose": "after rotation" }),
            )
            .await;
        assert_eq!(status, 200, "partner {k}: {body}");
    }
    let audit = stack.cli(&["audit", "verify"]);
    assert!(audit.contains("intact"), "{audit}");
    drop(stack);
    drop(db);
}

on_both_backends!(rotation_under_load_survives_a_kill);
