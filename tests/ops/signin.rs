//! Signing in: password + TOTP, forced password change, lockout, CSRF, session renewal, headers.

use super::support::stack::*;
use super::support::{self, Backend};
use super::{Account, Operator, page_text};
use crate::on_both_backends;
use samvault::ops::totp;
async fn sign_in_with_password_and_totp(backend: Backend) {
    let Some(db) = support::fresh_database(backend).await else {
        return;
    };
    let stack = Stack::start(&db.url, StackOptions::default()).await;
    stack.consent("jane@contoso.example").await;
    let alice = Account::create(&stack, "alice", "admin");
    let mut op = Operator::new(&stack);

    // Without a session every /ops page goes to sign-in.
    for path in ["/ops", "/ops/password"] {
        let (status, _, headers) = op.get(path).await;
        assert_eq!(status, 303, "{path}");
        assert_eq!(headers["location"], "/ops/signin");
    }
    let (_, page, headers) = op.get("/ops/signin").await;
    assert!(
        page.contains("<label for=\"code\">"),
        "labelled inputs: {page}"
    );
    assert_eq!(headers["cache-control"], "no-store");
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("frame-ancestors 'none'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert_eq!(headers["referrer-policy"], "no-referrer");
    assert!(
        headers.get("strict-transport-security").is_none(),
        "an http public URL (the demo) gets no HSTS"
    );

    // Wrong code, wrong password, unknown user: the same refusal.
    let wrong_code = if alice.code(0) == "000000" {
        "000001"
    } else {
        "000000"
    };
    for (user, password, code) in [
        ("alice", alice.password.as_str(), wrong_code),
        ("alice", "not-the-password", alice.code(0).as_str()),
        ("mallory", "whatever-password", alice.code(0).as_str()),
    ] {
        let (status, page, _) = op.sign_in(user, password, code).await;
        assert_eq!(status, 401, "{user}");
        assert!(
            page.contains("Wrong user name, password or code."),
            "{page}"
        );
    }

    // A form without the session's CSRF token is refused, even with good credentials.
    let (status, _, _) = op
        .post(
            "/ops/signin",
            &[
                ("username", "alice"),
                ("password", &alice.password),
                ("code", &alice.code(0)),
            ],
        )
        .await;
    assert_eq!(status, 403);

    // Password + code: a new session id, then the forced password change.
    let before = op.cookie();
    let first_step = totp::step(samvault::storage::now());
    let first_code = totp::code(&alice.secret, first_step);
    let next_code = totp::code(&alice.secret, first_step + 1);
    let (status, _, location) = op.sign_in("alice", &alice.password, &first_code).await;
    assert_eq!((status, location.as_deref()), (303, Some("/ops/password")));
    assert_ne!(op.cookie(), before, "the session id is renewed at sign-in");
    let (status, _, headers) = op.get("/ops").await;
    assert_eq!(
        (status, &headers["location"]),
        (303, &"/ops/password".parse().unwrap())
    );
    let (_, page, _) = op.get("/ops/password").await;
    assert!(page.contains("first sign-in"), "{page}");
    let csrf = field(&page, "csrf");
    let new_password = "a new and long passphrase";
    let (status, page, _) = op
        .post(
            "/ops/password",
            &[
                ("csrf", &csrf),
                ("current", &alice.password),
                ("new", "short"),
                ("confirm", "short"),
            ],
        )
        .await;
    assert_eq!(status, 400);
    assert!(page.contains("at least 12 characters"), "{page}");
    let (status, _, location) = op
        .post(
            "/ops/password",
            &[
                ("csrf", &csrf),
                ("current", &alice.password),
                ("new", new_password),
                ("confirm", new_password),
            ],
        )
        .await;
    assert_eq!((status, location.as_deref()), (303, Some("/ops")));

    // The overview: the partner consented in this test, counted by status.
    let (status, page, headers) = op.get("/ops").await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(headers["cache-control"], "no-store");
    assert!(page.contains("alice (admin)"), "{page}");
    assert!(page_text(&page).contains("1 Active"), "{page}");

    // Sign out: the session no longer opens the dashboard.
    let csrf = field(&page, "csrf");
    let (status, _, location) = op.post("/ops/signout", &[("csrf", &csrf)]).await;
    assert_eq!((status, location.as_deref()), (303, Some("/ops/signin")));
    assert_eq!(op.get("/ops").await.0, 303);

    // The code used above is refused a second time; the old password no longer works; the
    // next step's code with the new password does.
    let (status, _, _) = op.sign_in("alice", new_password, &first_code).await;
    assert_eq!(status, 401, "a TOTP code is accepted once");
    let (status, _, _) = op.sign_in("alice", &alice.password, &next_code).await;
    assert_eq!(status, 401, "the initial password was replaced");
    let (status, _, location) = op.sign_in("alice", new_password, &next_code).await;
    assert_eq!((status, location.as_deref()), (303, Some("/ops")));

    // Nothing secret in the database or the log.
    let dump = stack.database_dump();
    for secret in [
        alice.password.as_str(),
        new_password,
        &totp::base32(&alice.secret),
    ] {
        assert!(!contains(&dump, secret), "a secret is in the database");
        assert!(!stack.log(0).contains(secret), "a secret is in the log");
    }
}

async fn repeated_failures_lock_the_account(backend: Backend) {
    let Some(db) = support::fresh_database(backend).await else {
        return;
    };
    let stack = Stack::start(&db.url, StackOptions::default()).await;
    let bob = Account::create(&stack, "bob", "viewer");
    let mut op = Operator::new(&stack);
    for _ in 0..5 {
        assert_eq!(
            op.sign_in("bob", "wrong-password-x", &bob.code(0)).await.0,
            401
        );
    }
    // Locked: even the right password and code are refused now, and say so.
    let (status, page, _) = op.sign_in("bob", &bob.password, &bob.code(0)).await;
    assert_eq!(status, 401);
    assert!(page.contains("locked"), "{page}");
    let stored = stack
        .scalar(
            "SELECT failed_attempts FROM ops_users WHERE username = $1",
            "bob",
        )
        .await;
    assert_eq!(
        stored, 5,
        "a refusal while locked does not count as an attempt"
    );
}

async fn a_disabled_user_is_signed_out_at_once(backend: Backend) {
    let Some(db) = support::fresh_database(backend).await else {
        return;
    };
    let stack = Stack::start(&db.url, StackOptions::default()).await;
    let mut mallory = Operator::signed_in(&stack, "mallory", "admin").await;
    assert_eq!(mallory.get("/ops").await.0, 200);
    // REFERENCE §3.1 spells the flag --name; both spellings create a user.
    let out = stack.cli(&[
        "ops-user", "create", "--name", "zed", "--role", "viewer", "--json",
    ]);
    let out: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(out["name"], "zed", "the documented JSON key");
    assert!(out["password"].is_string() && out["otpauth_uri"].is_string());
    let out = stack.cli(&["ops-user", "disable", "--username", "mallory"]);
    assert!(out.contains("disabled mallory"), "{out}");
    let (status, _, headers) = mallory.get("/ops").await;
    assert_eq!(
        (status, &headers["location"]),
        (303, &"/ops/signin".parse().unwrap()),
        "the open session is refused"
    );
    let refused = stack
        .command(&["ops-user", "disable", "--username", "mallory"])
        .output()
        .unwrap();
    assert!(!refused.status.success(), "already disabled");
    assert_eq!(
        stack
            .scalar(
                "SELECT COUNT(*) FROM audit_log WHERE action = $1",
                "ops_user.disable"
            )
            .await,
        1
    );
}

/// Served as https (a TLS terminator in front): every response tells browsers never to come
/// back over http, and the session cookie is `Secure`.
async fn https_public_url_sends_hsts(backend: Backend) {
    let Some(db) = support::fresh_database(backend).await else {
        return;
    };
    let mut stack = Stack::start(&db.url, StackOptions::default()).await;
    stack.replicas[0].public_url = Some("https://samvault.example".into());
    stack.kill_replica(0);
    stack.start_replica(0).await;
    let mut op = Operator::new(&stack);
    for path in ["/ops/signin", "/healthz", "/onboard"] {
        let (status, _, headers) = op.get(path).await;
        assert_eq!(status, 200, "{path}");
        assert_eq!(
            headers["strict-transport-security"], "max-age=31536000",
            "{path}"
        );
        if path != "/healthz" {
            let cookie = headers["set-cookie"].to_str().unwrap();
            assert!(cookie.contains("Secure"), "{path}: {cookie}");
        }
    }
}

on_both_backends!(
    https_public_url_sends_hsts,
    a_disabled_user_is_signed_out_at_once,
    sign_in_with_password_and_totp,
    repeated_failures_lock_the_account
);
