//! End to end, as a CPV would run it: the real `samvault` binary (`serve`, `client create`,
//! `partners list`) against the real `samvault dev-idp`, on SQLite and on PostgreSQL.
//! A plain HTTP client walks the onboarding page, the IdP's sign-in form and the callback.
#![allow(clippy::too_many_lines)] // scenarios read top to bottom

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use samvault::storage::audit::{self, AuditEvent, AuditFilter};
use serde_json::Value;
use support::Backend;
use support::stack::*;
use support::webhook::*;

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
    // The audit key's creation, invite.create and Trent's consent, and nothing for the
    // refused attempt.
    assert_eq!(
        stack.cli(&["audit", "verify"]).lines().next(),
        Some("audit chain intact: 3 events")
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

/// Who holds Contoso's grant and what backs it: the partner's consenter, its grant versions
/// (each with whether it is still sealed) and its consent rows. A refused consent leaves all
/// of it as it was.
async fn contoso_grant(stack: &Stack) -> (String, Vec<(i64, bool)>, i64) {
    use sqlx::Row;
    let db = stack.db().await;
    let consenter = sqlx::query("SELECT consented_by FROM partners WHERE tenant_id = $1")
        .bind(CONTOSO)
        .fetch_one(db.pool())
        .await
        .unwrap()
        .try_get::<String, _>(0)
        .unwrap();
    let versions = sqlx::query(
        "SELECT version, CAST(CASE WHEN sealed IS NULL THEN 0 ELSE 1 END AS BIGINT) AS live FROM grants WHERE tenant_id = $1 ORDER BY version",
    )
    .bind(CONTOSO)
    .fetch_all(db.pool())
    .await
    .unwrap()
    .iter()
    .map(|r| (r.try_get::<i64, _>(0).unwrap(), r.try_get::<i64, _>(1).unwrap() == 1))
    .collect();
    let consents = stack
        .scalar(
            "SELECT COUNT(*) FROM consents WHERE tenant_id = $1",
            CONTOSO,
        )
        .await;
    (consenter, versions, consents)
}

async fn audited(stack: &Stack, action: &str) -> Vec<AuditEvent> {
    let filter = AuditFilter {
        action: Some(action.into()),
        ..AuditFilter::default()
    };
    audit::search(&stack.db().await, &filter, 50).await.unwrap()
}

/// Creates an invitation with the CLI (`--tenant` when given); returns its URL.
fn invitation(stack: &Stack, tenant: Option<&str>) -> String {
    let mut args = vec!["invite", "create", "--json"];
    if let Some(tenant) = tenant {
        args.extend(["--tenant", tenant]);
    }
    let invite: Value = serde_json::from_str(&stack.cli(&args)).unwrap();
    invite["url"].as_str().unwrap().to_string()
}

/// Issue 17 §1: while Contoso holds a usable grant, a consent by another user of Contoso
/// replaces it only when that user holds an Entra admin role or came through an invitation
/// pinned to Contoso. Anyone else is told who holds the grant and how to get an invitation,
/// and nothing changes; every change of hands is audited with both users and sent as a
/// signed `partner.consenter_changed` webhook event.
async fn a_live_grant_changes_hands_only_with_authority(backend: Backend) {
    let Some(db) = support::fresh_database(backend).await else {
        return;
    };
    let (receiver, hook) = Receiver::start().await;
    let stack = Stack::start(&db.url, with_webhook(StackOptions::default(), &hook)).await;
    stack.consent("jane@contoso.example").await;
    let held = contoso_grant(&stack).await;
    assert_eq!(held.1, vec![(1, true)]);

    // Sam, a Sales Agent of Contoso: refused, with who holds the grant (masked) and what to do.
    let sam = Browser::new(&stack)
        .consent("sam@contoso.example", true, "accept")
        .await;
    assert_eq!(sam.status, 409, "{}", sam.body);
    for shown in [
        "Jane Doe",
        "j***@contoso.example",
        "invitation",
        "Nothing was stored",
    ] {
        assert!(sam.body.contains(shown), "{shown:?} missing: {}", sam.body);
    }
    assert!(!sam.body.contains("jane@contoso.example"), "{}", sam.body);
    assert_eq!(contoso_grant(&stack).await, held, "nothing changed");
    assert_eq!(audited(&stack, "consent").await.len(), 1);
    // An invitation for any tenant is no authority over Contoso's grant, and is not used up.
    let open_invitation = invitation(&stack, None);
    let again = Browser::new(&stack)
        .consent_from(&open_invitation, "sam@contoso.example", true, "accept")
        .await;
    assert_eq!(again.status, 409, "{}", again.body);
    assert_eq!(contoso_grant(&stack).await, held, "nothing changed");
    assert_eq!(
        Browser::new(&stack).get(&open_invitation).await.status(),
        200
    );

    // Jane renews her own grant: replaced, but the consenter did not change.
    stack.consent("jane@contoso.example").await;
    assert_eq!(contoso_grant(&stack).await.1.len(), 2);
    assert!(
        audited(&stack, "partner.consenter_changed")
            .await
            .is_empty()
    );

    // Grace, a Global Administrator of Contoso (`wids`): replaces Jane's grant.
    stack.consent("grace@contoso.example").await;
    let changed = audited(&stack, "partner.consenter_changed").await;
    assert_eq!(changed.len(), 1, "{changed:?}");
    assert_eq!(changed[0].actor, "partner:grace@contoso.example");
    assert_eq!(changed[0].tenant_id.as_deref(), Some(CONTOSO));
    assert_eq!(changed[0].detail["previous"]["upn"], "jane@contoso.example");
    assert_eq!(
        changed[0].detail["consenter"]["upn"],
        "grace@contoso.example"
    );
    assert!(changed[0].detail["previous"]["oid"].is_string());
    assert_eq!(changed[0].detail["because"], "Global Administrator");

    // Sam through an invitation pinned to Contoso: replaces Grace's grant.
    let pinned = invitation(&stack, Some(CONTOSO));
    let done = Browser::new(&stack)
        .consent_from(&pinned, "sam@contoso.example", true, "accept")
        .await;
    assert_eq!(done.status, 200, "{}", done.body);
    let (consenter, versions, consents) = contoso_grant(&stack).await;
    assert_eq!(consenter, "sam@contoso.example");
    assert_eq!(versions.last(), Some(&(4, true)));
    assert_eq!(consents, 4);
    let changed = audited(&stack, "partner.consenter_changed").await;
    assert_eq!(changed.len(), 2, "{changed:?}");
    assert_eq!(
        changed[0].detail["previous"]["upn"],
        "grace@contoso.example"
    );
    assert_eq!(changed[0].detail["consenter"]["upn"], "sam@contoso.example");
    assert_eq!(
        changed[0].detail["because"],
        "invitation pinned to this tenant"
    );

    // Both changes reach the webhook, signed, with both users.
    eventually(
        Duration::from_secs(10),
        "two consenter_changed events",
        || async { receiver.of_kind("partner.consenter_changed").len() == 2 },
    )
    .await;
    let events = receiver.of_kind("partner.consenter_changed");
    // Deliveries run concurrently: the receiver may see them in either order.
    let mut hands: Vec<(&str, &str)> = events
        .iter()
        .map(|e| {
            assert_eq!(e["tenant_id"], CONTOSO);
            (
                e["previous_consenter"]["upn"].as_str().unwrap(),
                e["consenter"]["upn"].as_str().unwrap(),
            )
        })
        .collect();
    hands.sort_unstable();
    assert_eq!(
        hands,
        [
            ("grace@contoso.example", "sam@contoso.example"),
            ("jane@contoso.example", "grace@contoso.example")
        ]
    );
    assert!(
        stack
            .cli(&["audit", "verify"])
            .starts_with("audit chain intact")
    );
}

/// Issue 17 §6: an invitation is claimed in the consent's own transaction. Two browsers that
/// opened the same link and finish their sign-ins at the same moment: one consent is
/// recorded, the other gets the "already used" page and stores nothing.
async fn an_invitation_is_used_once_however_fast(backend: Backend) {
    let Some(db) = support::fresh_database(backend).await else {
        return;
    };
    let stack = Stack::start(&db.url, StackOptions::default()).await;
    let url = invitation(&stack, None);
    let (mut jane, mut trent) = (Browser::new(&stack), Browser::new(&stack));
    let to_jane = jane.start(&url).await;
    let to_trent = trent.start(&url).await;
    let jane_back = jane
        .sign_in(&to_jane, "jane@contoso.example", true, "accept")
        .await;
    let trent_back = trent
        .sign_in(&to_trent, "trent@wingtip.example", true, "accept")
        .await;
    let (a, b) = tokio::join!(jane.get(&jane_back), trent.get(&trent_back));
    let mut answers = Vec::new();
    for response in [a, b] {
        answers.push((response.status().as_u16(), response.text().await.unwrap()));
    }
    let mut statuses: Vec<u16> = answers.iter().map(|a| a.0).collect();
    statuses.sort();
    assert_eq!(statuses, [200, 410], "{answers:?}");
    let (_, refused) = answers.iter().find(|a| a.0 == 410).unwrap();
    assert!(refused.contains("already used"), "{refused}");
    assert!(refused.contains("Nothing was stored"), "{refused}");

    let partners = stack.partners();
    assert_eq!(partners.len(), 1, "{partners:?}");
    for (sql, expected) in [
        ("SELECT COUNT(*) FROM consents WHERE tenant_id <> $1", 1),
        ("SELECT COUNT(*) FROM grants WHERE tenant_id <> $1", 1),
        (
            "SELECT COUNT(*) FROM invitations WHERE used_at IS NOT NULL AND id <> $1",
            1,
        ),
    ] {
        assert_eq!(stack.scalar(sql, "").await, expected, "{sql}");
    }
    assert_eq!(audited(&stack, "consent").await.len(), 1);
}

/// Issue 17 §6: with `SAMVAULT_ONBOARDING=invitation`, `/onboard` without an invitation says
/// onboarding is by invitation and `/onboard/start` refuses; invitation links work as ever,
/// and so does self-service revoke.
async fn onboarding_by_invitation_only(backend: Backend) {
    let Some(db) = support::fresh_database(backend).await else {
        return;
    };
    let stack = Stack::start(
        &db.url,
        StackOptions::default().env("SAMVAULT_ONBOARDING", "invitation"),
    )
    .await;
    let mut browser = Browser::new(&stack);
    let landing = browser.get(&format!("{}/onboard", stack.sv())).await;
    assert_eq!(landing.status(), 403);
    let page = landing.text().await.unwrap();
    assert!(page.contains("Onboarding is by invitation"), "{page}");
    assert!(!page.contains("Grant consent"), "{page}");

    // A start form without its invitation, with a valid CSRF token from an invitation page.
    let url = invitation(&stack, None);
    let html = browser.get(&url).await.text().await.unwrap();
    let started = browser
        .post_form(
            &format!("{}/onboard/start", stack.sv()),
            &[("csrf", &field(&html, "csrf"))],
        )
        .await;
    assert_eq!(started.status(), 403);
    assert!(
        started
            .text()
            .await
            .unwrap()
            .contains("Onboarding is by invitation")
    );
    assert!(stack.partners().is_empty());

    let done = Browser::new(&stack)
        .consent_from(&url, "jane@contoso.example", true, "accept")
        .await;
    assert_eq!(done.status, 200, "{}", done.body);
    let revoke = Browser::new(&stack)
        .get(&format!("{}/onboard/revoke", stack.sv()))
        .await;
    assert_eq!(revoke.status(), 200);
}

on_both_backends!(
    an_https_idp_behind_a_private_ca,
    consent_to_token_to_expiry,
    refusals_store_nothing,
    invitations_pin_the_tenant,
    a_live_grant_changes_hands_only_with_authority,
    an_invitation_is_used_once_however_fast,
    onboarding_by_invitation_only
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
