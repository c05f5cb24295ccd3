//! The ops dashboard in a real browser: Debian's Chromium driven by playwright-core
//! (tests/browser/*.mjs) against a spawned samvault and dev IdP, on SQLite and PostgreSQL.
//! `./scripts/test` installs Chromium and the npm package; without them this test fails with
//! the command to run (it never skips).
//!
//! Screenshots of every page visited are written to `target/screenshots/<backend>/`.
#![allow(clippy::too_many_lines)] // scenarios read top to bottom

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};
use support::Backend;
use support::stack::*;

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// The folder the screenshots of one backend's run go to.
fn screenshots(backend: Backend) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/screenshots")
        .join(format!("{backend:?}").to_lowercase())
}

fn require_tools() {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "{chromium} is missing: run ./scripts/test (it installs Debian's chromium)"
    );
    assert!(
        browser_dir().join("node_modules/playwright-core").exists(),
        "playwright-core is missing: run ./scripts/test or `npm ci --prefix tests/browser`"
    );
}

fn ops_user(stack: &Stack, username: &str, role: &str) -> Value {
    let created = support::ops::create_ops_user(stack, username, role);
    json!({
        "username": username,
        "password": created["password"],
        "totp_secret": created["totp_secret"],
    })
}

/// Runs one browser script against `stack`; panics with its output if it fails.
fn run_script(script: &str, stack: &Stack, backend: Backend, env: &[(&str, String)]) {
    let dir = screenshots(backend);
    let _ = std::fs::remove_dir_all(&dir);
    let output = Command::new("node")
        .arg(browser_dir().join(script))
        .env("SV_URL", stack.sv())
        .env("SCREENSHOTS", &dir)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{script} failed ({}):\n{stdout}\n{stderr}\nsamvault log:\n{}",
        output.status,
        stack.log(0)
    );
    eprintln!("{stdout}screenshots: {}", dir.display());
}

async fn dashboard_in_chromium(backend: Backend) {
    require_tools();
    let Some(db) = support::fresh_database(backend).await else {
        return;
    };
    // Customers are consented by the admin's click only (each step's effect is its own).
    let options = StackOptions::default().env("SAMVAULT_CUSTOMER_AUTO_CONSENT", "false");
    let stack = Stack::start(&db.url, options).await;
    let accounts = json!({
        "admin": ops_user(&stack, "alice", "admin"),
        "viewer": ops_user(&stack, "victor", "viewer"),
    });
    let (id, secret) = stack.client(&[PARTNER_CENTER]);
    run_script(
        "dashboard.mjs",
        &stack,
        backend,
        &[
            ("TENANT", CONTOSO.to_string()),
            ("RESOURCE", PARTNER_CENTER.to_string()),
            ("ACCOUNTS", accounts.to_string()),
            ("CLIENT", json!({ "id": id, "secret": secret }).to_string()),
        ],
    );
}

// The two backends run one after the other: two Chromiums at once on a 2-core CI machine
// only make both slower.
#[tokio::test(flavor = "multi_thread")]
async fn dashboard_in_chromium_on_both_backends() {
    dashboard_in_chromium(Backend::Sqlite).await;
    dashboard_in_chromium(Backend::Postgres).await;
}
