//! The guard every dashboard URL shares: without a session, every page and every action goes
//! to sign-in and changes nothing; a viewer reads every page but is refused every action that
//! changes something (except signing out and verifying the audit chain, which is read-only).
//! The URL list is checked against the routes declared in src/http/ops/, so a new route
//! cannot be added without being listed (and so guarded) here.

use super::Operator;
use super::support::stack::*;
use super::support::{self, Backend};
use crate::on_both_backends;

const CLIENT: &str = "00000000-0000-4000-8000-0000000000c1";
const SECRET: &str = "00000000-0000-4000-8000-0000000000e1";
/// Contoso's customer Adatum in the dev IdP's demo directory.
const CUSTOMER: &str = "7b1e0c3a-5d2f-4c8e-9a6b-00000000c001";
const INVITATION: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Every signed-in page (GET), with concrete ids.
fn pages() -> Vec<String> {
    [
        "/ops",
        "/ops/partners",
        "/ops/partners/{tenant_id}",
        "/ops/integrations",
        "/ops/security",
        "/ops/security/clients.csv",
        "/ops/security/requests.csv",
        "/ops/audit",
        "/ops/invitations",
        "/ops/keys",
    ]
    .iter()
    .map(|p| concrete(p))
    .collect()
}

/// Every action (POST) a viewer may not take.
fn actions() -> Vec<String> {
    [
        "/ops/partners/{tenant_id}/rotate",
        "/ops/partners/{tenant_id}/check",
        "/ops/partners/{tenant_id}/revoke",
        "/ops/partners/{tenant_id}/invite",
        "/ops/partners/{tenant_id}/customers/sync",
        "/ops/partners/{tenant_id}/customers/consent",
        "/ops/partners/{tenant_id}/customers/check",
        "/ops/partners/{tenant_id}/customers/{customer_id}/consent",
        "/ops/partners/{tenant_id}/customers/{customer_id}/remove",
        "/ops/integrations",
        "/ops/integrations/{client_id}/secrets",
        "/ops/integrations/{client_id}/secrets/{secret_id}/revoke",
        "/ops/integrations/{client_id}/revoke",
        "/ops/invitations",
        "/ops/invitations/{id}/expire",
    ]
    .iter()
    .map(|p| concrete(p))
    .collect()
}

/// Routes that are not behind the guard, or are read-only actions any role may take.
const OPEN_OR_READ_ONLY: [&str; 4] = [
    "/ops/signin",
    "/ops/password",
    "/ops/signout",
    "/ops/audit/verify",
];

fn concrete(path: &str) -> String {
    path.replace("{tenant_id}", CONTOSO)
        .replace("{client_id}", CLIENT)
        .replace("{secret_id}", SECRET)
        .replace("{id}", INVITATION)
        .replace("{customer_id}", CUSTOMER)
}

/// The `/ops…` paths declared with `.route(` anywhere under src/http/ops/ (rustfmt may put
/// the path on the line after `.route(`).
fn declared_routes() -> Vec<String> {
    let mut files = vec![std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/http/ops")];
    let mut routes = Vec::new();
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(std::fs::read_dir(path).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        let source = std::fs::read_to_string(path).unwrap();
        for chunk in source.split(".route(").skip(1) {
            let path = chunk.trim_start().trim_start_matches('"');
            let path = path.split('"').next().unwrap();
            if path.starts_with("/ops") {
                routes.push(path.to_string());
            }
        }
    }
    routes
}

#[test]
fn every_declared_route_is_listed_here() {
    let listed: Vec<String> = [pages(), actions()].concat();
    let declared = declared_routes();
    assert!(declared.len() >= 20, "found the routes: {declared:?}");
    for route in declared {
        let known =
            listed.contains(&concrete(&route)) || OPEN_OR_READ_ONLY.contains(&route.as_str());
        assert!(known, "{route} is not listed in tests/ops/guard.rs");
    }
}

/// Contoso still active and never redeemed, no client or invitation created.
async fn assert_nothing_changed(stack: &Stack) {
    assert_eq!(stack.partner(CONTOSO).unwrap()["status"], "active");
    assert_eq!(
        stack
            .scalar("SELECT COUNT(*) FROM clients WHERE client_id <> $1", "")
            .await,
        0,
        "no client created"
    );
    assert_eq!(
        stack
            .scalar("SELECT COUNT(*) FROM invitations WHERE id <> $1", "")
            .await,
        0,
        "no invitation created"
    );
    assert_eq!(
        stack
            .scalar(
                "SELECT COUNT(*) FROM rotation_attempts WHERE tenant_id = $1",
                CONTOSO
            )
            .await,
        0,
        "nothing redeemed"
    );
}

async fn without_a_session_everything_goes_to_sign_in(backend: Backend) {
    let Some(db) = support::fresh_database(backend).await else {
        return;
    };
    let stack = Stack::start(&db.url, StackOptions::default()).await;
    stack.consent("jane@contoso.example").await;
    let mut anonymous = Operator::new(&stack);
    for path in pages() {
        let (status, _, headers) = anonymous.get(&path).await;
        assert_eq!(status, 303, "GET {path}");
        assert_eq!(headers["location"], "/ops/signin", "GET {path}");
    }
    for path in actions()
        .into_iter()
        .chain(["/ops/audit/verify".to_string()])
    {
        let (status, _, location) = anonymous
            .post(&path, &[("csrf", "x"), ("confirm", CONTOSO), ("name", "x")])
            .await;
        assert_eq!(
            (status, location.as_deref()),
            (303, Some("/ops/signin")),
            "POST {path}"
        );
    }
    assert_nothing_changed(&stack).await;
}

async fn a_viewer_reads_everything_and_changes_nothing(backend: Backend) {
    let Some(db) = support::fresh_database(backend).await else {
        return;
    };
    let stack = Stack::start(&db.url, StackOptions::default()).await;
    stack.consent("jane@contoso.example").await;
    let mut viewer = Operator::signed_in(&stack, "vera", "viewer").await;
    for path in pages() {
        let (status, body, headers) = viewer.get(&path).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        assert_eq!(headers["cache-control"], "no-store", "GET {path}");
    }
    let csrf = viewer.csrf("/ops").await;
    for path in actions() {
        let (status, page, _) = viewer
            .post(
                &path,
                &[
                    ("csrf", csrf.as_str()),
                    ("confirm", CONTOSO),
                    ("name", "x"),
                    ("tenant_id", CONTOSO),
                    ("days", "7"),
                ],
            )
            .await;
        assert_eq!(status, 403, "POST {path}: {page}");
    }
    assert_nothing_changed(&stack).await;
}

on_both_backends!(
    without_a_session_everything_goes_to_sign_in,
    a_viewer_reads_everything_and_changes_nothing
);
