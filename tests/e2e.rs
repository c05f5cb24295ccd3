//! End to end, as a CPV would run it: the real `samvault` binary (`serve`, `client create`,
//! `partners list`) against the real `samvault dev-idp`, on SQLite and on PostgreSQL.
//! A plain HTTP client walks the onboarding page, the IdP's sign-in form and the callback.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use support::Backend;
use support::stack::*;

const TENANT_1: &str = "00000000-0000-4000-8000-000000000001";

/// How many refresh-token versions samvault has stored for a tenant.
async fn grant_versions(stack: &Stack, tenant: &str) -> i64 {
    stack
        .scalar("SELECT COUNT(*) FROM grants WHERE tenant_id = $1", tenant)
        .await
}

async fn consent_to_token_to_expiry(backend: Backend) {
    let Some(db) = support::fresh_database(backend).await else {
        return;
    };
    let mut stack = Stack::start(&db.url, StackOptions::default()).await;
    let mut seen_secrets: Vec<String> = Vec::new();

    // Jane of Contoso consents with MFA: a success page naming Contoso.
    let mut browser = Browser::new(&stack);
    let done = browser
        .consent("jane@contoso.example", true, "accept")
        .await;
    assert_eq!(done.status, 200, "{}", done.body);
    assert!(
        done.body.contains("Consent recorded for Contoso"),
        "{}",
        done.body
    );
    assert!(done.body.contains(CONTOSO) && done.body.contains("jane@contoso.example"));
    assert!(done.body.contains("satisfied"), "MFA shown as satisfied");
    let contoso = stack.partner(CONTOSO).expect("Contoso stored");
    assert_eq!(contoso["status"], "active");
    assert_eq!(contoso["mfa"], true);

    // The same callback again: its state was used once and is gone.
    let replay = browser.get(done.callback_url.as_deref().unwrap()).await;
    assert_eq!(replay.status(), 400);

    // An integration client from the CLI, against the same database.
    let created: Value = serde_json::from_str(&stack.cli(&[
        "client",
        "create",
        "--name",
        "billing",
        "--json",
        "--resource",
        PARTNER_CENTER,
    ]))
    .unwrap();
    let creds = (
        created["client_id"].as_str().unwrap().to_string(),
        created["client_secret"].as_str().unwrap().to_string(),
    );
    seen_secrets.push(creds.1.clone());
    let body = serde_json::json!({ "resource": PARTNER_CENTER, "purpose": "nightly invoice sync" });

    let (status, first) = stack.token(&creds, CONTOSO, body.clone()).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["cached"], false);
    assert_eq!(first["token_type"], "Bearer");
    assert_eq!(first["mfa"], true);
    let claims = jwt_claims(first["access_token"].as_str().unwrap());
    assert_eq!(claims["aud"], PARTNER_CENTER);
    assert_eq!(claims["tid"], CONTOSO);
    seen_secrets.push(first["access_token"].as_str().unwrap().to_string());
    let (status, second) = stack.token(&creds, CONTOSO, body.clone()).await;
    assert_eq!(status, 200);
    assert_eq!(second["cached"], true);
    assert_eq!(second["access_token"], first["access_token"]);

    // Wrong secret, missing purpose, a resource the client is not scoped for.
    let (status, problem) = stack
        .token(
            &(creds.0.clone(), "svs_wrong".into()),
            CONTOSO,
            body.clone(),
        )
        .await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (401, Some("invalid_client"))
    );
    let (status, problem) = stack
        .token(
            &creds,
            CONTOSO,
            serde_json::json!({ "resource": PARTNER_CENTER }),
        )
        .await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (400, Some("invalid_request"))
    );
    let (status, problem) = stack
        .token(
            &creds,
            CONTOSO,
            serde_json::json!({ "resource": "https://graph.microsoft.com", "purpose": "x" }),
        )
        .await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (403, Some("resource_not_allowed"))
    );

    // Wingtip and generated tenant 1 consent too; neither is redeemed yet.
    for upn in ["trent@wingtip.example", "admin@tenant-1.example"] {
        let done = Browser::new(&stack).consent(upn, true, "accept").await;
        assert_eq!(done.status, 200, "{}", done.body);
    }

    // 60 days later a (cold) token call redeems once and stores a new version.
    stack
        .sim(
            reqwest::Method::POST,
            "clock/advance",
            serde_json::json!({ "days": 60 }),
        )
        .await;
    let before = stack.refresh_calls().await;
    let (status, wingtip) = stack.token(&creds, WINGTIP, body.clone()).await;
    assert_eq!(status, 200, "{wingtip}");
    assert_eq!(wingtip["cached"], false);
    seen_secrets.push(wingtip["access_token"].as_str().unwrap().to_string());
    assert_eq!(stack.refresh_calls().await, before + 1);
    let versions = grant_versions(&stack, WINGTIP).await;
    assert_eq!(versions, 2, "the new refresh token is stored as version 2");

    // 91 idle days: tenant 1's refresh token has expired.
    stack
        .sim(
            reqwest::Method::POST,
            "clock/advance",
            serde_json::json!({ "days": 31 }),
        )
        .await;
    let (status, problem) = stack.token(&creds, TENANT_1, body.clone()).await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (409, Some("reconsent_required")),
        "{problem}"
    );
    assert!(
        problem["detail"].as_str().unwrap().contains("AADSTS700082"),
        "{problem}"
    );
    let tenant1 = stack.partner(TENANT_1).unwrap();
    assert_eq!(tenant1["status"], "reconsent_required");
    assert_eq!(tenant1["status_code"], "700082");

    // A restarted service still opens what it sealed.
    stack.kill_replica(0);
    stack.start_replica(0).await;
    let (status, again) = stack.token(&creds, WINGTIP, body.clone()).await;
    assert_eq!(status, 200, "{again}");
    seen_secrets.push(again["access_token"].as_str().unwrap().to_string());

    // No refresh token, access token or client secret is in the database or the log.
    let grants = stack.sim(reqwest::Method::GET, "grants", Value::Null).await;
    for grant in grants.as_array().unwrap() {
        seen_secrets.push(grant["refresh_token"].as_str().unwrap().to_string());
    }
    assert!(seen_secrets.len() >= 8);
    let dump = stack.database_dump();
    let log = std::fs::read(stack.log_path(0)).unwrap();
    assert!(
        contains(&log, "refresh token redeemed"),
        "the log is being captured"
    );
    for secret in &seen_secrets {
        assert!(
            !contains(&dump, secret),
            "a secret is in the database in clear"
        );
        assert!(!contains(&log, secret), "a secret is in the log");
    }
}

async fn refusals_store_nothing(backend: Backend) {
    let Some(db) = support::fresh_database(backend).await else {
        return;
    };
    let stack = Stack::start(
        &db.url,
        StackOptions::default().env("SAMVAULT_CONSENT_TIMEOUT", "1s"),
    )
    .await;

    // John of Fabrikam signs in without MFA: explained, nothing stored.
    let john = Browser::new(&stack)
        .consent("john@fabrikam.example", false, "accept")
        .await;
    assert_eq!(john.status, 403);
    assert!(
        john.body
            .contains("Multi-factor authentication is required"),
        "{}",
        john.body
    );
    // Jane without MFA: Contoso enforces it, the IdP refuses with AADSTS50076.
    let jane = Browser::new(&stack)
        .consent("jane@contoso.example", false, "accept")
        .await;
    assert_eq!(jane.status, 403);
    assert!(jane.body.contains("AADSTS50076"), "{}", jane.body);
    // Declined consent.
    let deny = Browser::new(&stack)
        .consent("jane@contoso.example", true, "deny")
        .await;
    assert_eq!(deny.status, 403);
    assert!(
        deny.body.contains("Consent was not granted"),
        "{}",
        deny.body
    );

    // Forged state, missing state, no session at all, expired state.
    let mut browser = Browser::new(&stack);
    let authorize = browser.start(&format!("{}/onboard", stack.sv())).await;
    let callback = browser
        .sign_in(&authorize, "jane@contoso.example", true, "accept")
        .await;
    let forged = callback.replace("state=", "state=forged");
    assert_eq!(browser.get(&forged).await.status(), 400);
    // The forged attempt consumed the pending sign-in: the genuine response is now refused too.
    assert_eq!(browser.get(&callback).await.status(), 400);
    let missing = callback.split("&state=").next().unwrap().to_string();
    assert_eq!(Browser::new(&stack).get(&missing).await.status(), 400);

    let mut other_browser = Browser::new(&stack);
    let authorize = browser.start(&format!("{}/onboard", stack.sv())).await;
    let callback = browser
        .sign_in(&authorize, "jane@contoso.example", true, "accept")
        .await;
    let stolen = other_browser.get(&callback).await;
    assert_eq!(
        stolen.status(),
        400,
        "a state is bound to the browser that started it"
    );

    let authorize = browser.start(&format!("{}/onboard", stack.sv())).await;
    let callback = browser
        .sign_in(&authorize, "jane@contoso.example", true, "accept")
        .await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let expired = browser.get(&callback).await;
    assert_eq!(expired.status(), 400);
    assert!(expired.text().await.unwrap().contains("expired"));

    // Posting the start form without the page's CSRF token.
    let response = stack
        .http
        .post(format!("{}/onboard/start", stack.sv()))
        .form(&[("csrf", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);

    assert!(
        stack.partners().is_empty(),
        "nothing was stored: {:?}",
        stack.partners()
    );
    assert!(stack.partner(FABRIKAM).is_none());
}

async fn invitations_pin_the_tenant(backend: Backend) {
    let Some(db) = support::fresh_database(backend).await else {
        return;
    };
    let stack = Stack::start(&db.url, StackOptions::default()).await;
    let invite: Value =
        serde_json::from_str(&stack.cli(&["invite", "create", "--tenant", WINGTIP, "--json"]))
            .unwrap();
    let url = invite["url"].as_str().unwrap();
    assert!(url.starts_with(&format!("{}/onboard/i/", stack.sv())));

    // Jane (Contoso) cannot use Wingtip's invitation.
    let mut browser = Browser::new(&stack);
    let authorize = browser.start(url).await;
    assert!(
        authorize.contains(&format!("/{WINGTIP}/oauth2/v2.0/authorize")),
        "{authorize}"
    );
    let done = Browser::new(&stack)
        .consent_from(url, "trent@wingtip.example", true, "accept")
        .await;
    assert_eq!(done.status, 200, "{}", done.body);
    assert!(done.body.contains("Wingtip"));
    // Used once; the link now says so.
    let again = Browser::new(&stack).get(url).await;
    assert_eq!(again.status(), 410);
    let unknown = Browser::new(&stack)
        .get(&format!("{}/onboard/i/nope", stack.sv()))
        .await;
    assert_eq!(unknown.status(), 410);
    // invite.create and Trent's consent, and nothing for the refused attempt.
    assert_eq!(
        stack.cli(&["audit", "verify"]).trim_end(),
        "audit chain intact: 2 events"
    );
}

/// Entra ID is HTTPS only, and behind a TLS-inspecting proxy its certificate comes from the
/// proxy's CA. The dev IdP over HTTPS with a test CA: samvault trusts it through
/// `SAMVAULT_EXTRA_CA_FILE` for every call (signing keys, code redemption, refresh, a forced
/// rotation), and the same IdP without that setting is an outage, never trusted.
async fn an_https_idp_behind_a_private_ca(backend: Backend) {
    let Some(db) = support::fresh_database(backend).await else {
        return;
    };
    let mut stack = Stack::start(&db.url, StackOptions::default().idp_over_https()).await;
    assert!(stack.idp.starts_with("https://"), "{}", stack.idp);
    stack.consent("jane@contoso.example").await;
    let creds = stack.client(&[PARTNER_CENTER]);
    let (status, body) = stack.token(&creds, CONTOSO, token_body()).await;
    assert_eq!(status, 200, "{body}");
    let redeemed = grant_versions(&stack, CONTOSO).await;

    // `samvault rotate` with the service stopped (SQLite allows one process).
    stack.kill_replica(0);
    let untrusting = stack
        .command(&["rotate", "--partner", CONTOSO])
        .env_remove("SAMVAULT_EXTRA_CA_FILE")
        .output()
        .unwrap();
    let summary = String::from_utf8_lossy(&untrusting.stdout);
    assert_eq!(untrusting.status.code(), Some(1), "{summary}");
    assert!(summary.contains("0 succeeded, 1 failed"), "{summary}");
    assert_eq!(
        grant_versions(&stack, CONTOSO).await,
        redeemed,
        "nothing replaced"
    );
    assert_eq!(stack.partner(CONTOSO).unwrap()["status"], "active");

    let out = stack.cli(&["rotate", "--partner", CONTOSO]);
    assert!(out.contains("1 succeeded, 0 failed"), "{out}");
    assert!(grant_versions(&stack, CONTOSO).await > redeemed);
}

on_both_backends!(
    an_https_idp_behind_a_private_ca,
    consent_to_token_to_expiry,
    refusals_store_nothing,
    invitations_pin_the_tenant
);

/// `samvault demo` (the README's first command) starts both servers and prints a client and a
/// curl line that work once Jane has consented.
#[tokio::test(flavor = "multi_thread")]
async fn demo_prints_working_credentials() {
    demo_end_to_end(&[]).await;
}

/// The same demo with the CPV app proving itself by certificate: every call to the IdP carries
/// a client assertion and none a secret.
#[tokio::test(flavor = "multi_thread")]
async fn demo_with_a_certificate_instead_of_a_secret() {
    let stack = demo_end_to_end(&["--certificate"]).await;
    let counters = stack.counters().await;
    let auth = &counters["client_auth"];
    assert!(
        auth["client_assertion"].as_u64().unwrap_or(0) >= 2,
        "the code and the refresh token were redeemed with assertions: {counters}"
    );
    assert_eq!(auth.get("client_secret"), None, "{counters}");
    assert!(
        stack
            .dir
            .path()
            .join("samvault-demo-cert/cpv-app.crt")
            .exists()
    );
}

async fn demo_end_to_end(extra_args: &[&str]) -> Stack {
    let dir = tempfile::tempdir().unwrap();
    let (sv_port, idp_port) = (free_port(), free_port());
    let sv = format!("http://127.0.0.1:{sv_port}");
    let idp = format!("http://127.0.0.1:{idp_port}");
    let child = Command::new(env!("CARGO_BIN_EXE_samvault"))
        .args([
            "demo",
            "--listen",
            &format!("127.0.0.1:{sv_port}"),
            "--idp-listen",
            &format!("127.0.0.1:{idp_port}"),
        ])
        .args(extra_args)
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = Proc(child);
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    wait_ready(&http, &format!("{sv}/healthz")).await;
    // The banner is printed before serving starts; read it without blocking on the open pipe.
    let mut stdout = child.0.stdout.take().unwrap();
    let banner = tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut text = String::new();
        let mut buf = [0u8; 4096];
        while !text.contains("Ctrl-C stops the demo") {
            let n = stdout.read(&mut buf).unwrap();
            assert!(n > 0, "demo exited early: {text}");
            text.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        text
    })
    .await
    .unwrap();
    let value_after = |label: &str| {
        banner
            .split(label)
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    };
    let creds = (value_after("client_id:"), value_after("client_secret:"));
    assert!(
        banner.contains(&format!("curl -s -u '{}:{}'", creds.0, creds.1)),
        "{banner}"
    );
    assert!(dir.path().join("samvault-demo.db").exists());
    assert!(dir.path().join("samvault-demo.key").exists());

    let stack = Stack::attach(dir, idp, sv, http);
    let done = Browser::new(&stack)
        .consent("jane@contoso.example", true, "accept")
        .await;
    assert!(
        done.body.contains("Consent recorded for Contoso"),
        "{}",
        done.body
    );
    let (status, token) = stack
        .token(
            &creds,
            CONTOSO,
            serde_json::json!({ "resource": PARTNER_CENTER, "purpose": "demo" }),
        )
        .await;
    assert_eq!(status, 200, "{token}");
    assert_eq!(
        jwt_claims(token["access_token"].as_str().unwrap())["tid"],
        CONTOSO
    );
    stack.keep_alive(child)
}
