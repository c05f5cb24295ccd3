//! Partner self-service revoke at `/onboard/revoke` (REFERENCE §3.3), over real HTTP against the
//! real `samvault serve` and `samvault dev-idp`, on SQLite and PostgreSQL: a partner admin
//! signs in with `openid profile` only, sees what samvault holds, and purges it; everyone
//! else is refused and nothing changes.
#![allow(clippy::too_many_lines)] // scenarios read top to bottom

mod support;

use std::time::Duration;

use samvault::storage::audit::{self, AuditFilter};
use serde_json::Value;
use support::Backend;
use support::revoke::*;
use support::stack::*;

/// Every refresh token the dev IdP issued for `tenant`.
async fn issued_refresh_tokens(stack: &Stack, tenant: &str) -> Vec<String> {
    let grants = stack.sim(reqwest::Method::GET, "grants", Value::Null).await;
    grants
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| g["tenant_id"] == tenant)
        .map(|g| g["refresh_token"].as_str().unwrap().to_string())
        .collect()
}

/// Grant versions of `tenant` that still hold anything sealed.
async fn sealed_versions(stack: &Stack, tenant: &str) -> i64 {
    stack
        .scalar(
            "SELECT COUNT(*) FROM grants WHERE tenant_id = $1 AND (sealed IS NOT NULL OR wrapped_key IS NOT NULL OR kek_id IS NOT NULL)",
            tenant,
        )
        .await
}

/// The sealed bytes (wrapped keys and ciphertexts) of `tenant`'s grants as stored now.
async fn sealed_bytes(stack: &Stack, tenant: &str) -> Vec<Vec<u8>> {
    use sqlx::Row;
    let db = stack.db().await;
    let rows = sqlx::query(
        "SELECT wrapped_key, sealed FROM grants WHERE tenant_id = $1 AND sealed IS NOT NULL",
    )
    .bind(tenant)
    .fetch_all(db.pool())
    .await
    .unwrap();
    rows.iter()
        .flat_map(|r| {
            [
                r.try_get::<Vec<u8>, _>("wrapped_key").unwrap(),
                r.try_get::<Vec<u8>, _>("sealed").unwrap(),
            ]
        })
        .collect()
}

/// What a database export holds: the live rows, not the disk's free pages (SECURITY.md §4:
/// SQLite's freed pages and WAL keep old bytes until reused). SQLite: `VACUUM INTO` a copy.
fn export(stack: &Stack) -> Vec<u8> {
    let Some(path) = stack.db_url.strip_prefix("sqlite://") else {
        return stack.database_dump();
    };
    let path = path.split('?').next().unwrap();
    let copy = stack.dir.path().join("export.db");
    let _ = std::fs::remove_file(&copy);
    let out = std::process::Command::new("sqlite3")
        .arg(path)
        .arg(format!("VACUUM INTO '{}'", copy.display()))
        .output()
        .expect("sqlite3 runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(copy).unwrap()
}

/// Everything about Contoso's grant that a refusal must leave as it was.
async fn contoso_holding(stack: &Stack) -> (String, i64, Vec<Vec<u8>>) {
    let status = stack.partner(CONTOSO).unwrap()["status"]
        .as_str()
        .unwrap()
        .to_string();
    (
        status,
        sealed_versions(stack, CONTOSO).await,
        sealed_bytes(stack, CONTOSO).await,
    )
}

async fn jane_revokes_contoso(backend: Backend) {
    let Some(db) = support::fresh_database(backend).await else {
        return;
    };
    let stack = Stack::start(&db.url, StackOptions::default()).await;
    stack.consent("jane@contoso.example").await;
    stack.consent("trent@wingtip.example").await;
    let creds = stack.client(&[PARTNER_CENTER]);
    // A token for Contoso now sits in samvault's cache: the revocation must reach it too.
    assert_eq!(stack.token(&creds, CONTOSO, token_body()).await.0, 200);
    let (_, cached) = stack.token(&creds, CONTOSO, token_body()).await;
    assert_eq!(cached["cached"], true);
    let stored = sealed_bytes(&stack, CONTOSO).await;
    assert_eq!(
        stored.len(),
        4,
        "two sealed versions: consent and redemption"
    );
    let tokens_before = issued_refresh_tokens(&stack, CONTOSO).await;

    let mut browser = Browser::new(&stack);
    let signed_in =
        sign_in_to_revoke(&stack, &mut browser, "jane@contoso.example", true, "accept").await;
    assert_eq!(signed_in.status, 200, "{}", signed_in.body);
    let page = &signed_in.body;
    for shown in [
        "What samvault holds for Contoso",
        "jane@contoso.example",
        CONTOSO,
        "you gave the consent samvault holds",
        "active",
        "Revoke and delete",
    ] {
        assert!(page.contains(shown), "{shown:?} missing: {page}");
    }
    assert_eq!(field(page, "tenant"), CONTOSO);
    // The sign-in asked for identity only: the IdP issued no refresh token for it.
    assert_eq!(issued_refresh_tokens(&stack, CONTOSO).await, tokens_before);
    for token in &tokens_before {
        assert!(
            !page.contains(token.as_str()),
            "a refresh token on the page"
        );
    }
    // Signing in changed nothing yet.
    assert_eq!(stack.token(&creds, CONTOSO, token_body()).await.0, 200);

    let (status, done) = confirm(&stack, &mut browser, page, None).await;
    assert_eq!(status, 200, "{done}");
    for shown in [
        "Contoso's grant is revoked",
        "Enterprise applications",
        "5a7e3c1d-0000-4000-8000-00000000c0de",
        "/onboard",
    ] {
        assert!(done.contains(shown), "{shown:?} missing: {done}");
    }

    // At once: the token API refuses Contoso, cached token or not.
    let (status, problem) = stack.token(&creds, CONTOSO, token_body()).await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (409, Some("reconsent_required")),
        "{problem}"
    );
    assert_eq!(stack.partner(CONTOSO).unwrap()["status"], "revoked");
    // Crypto-shredded: the rows remain as history, nothing sealed in any of them, and an
    // export of the database holds neither the wrapped keys nor the ciphertexts.
    assert_eq!(
        stack
            .scalar("SELECT COUNT(*) FROM grants WHERE tenant_id = $1", CONTOSO)
            .await,
        2
    );
    assert_eq!(sealed_versions(&stack, CONTOSO).await, 0);
    let export = export(&stack);
    for bytes in &stored {
        assert!(
            !support::contains_bytes(&export, bytes),
            "sealed material of Contoso is still in the database"
        );
    }
    for token in issued_refresh_tokens(&stack, CONTOSO).await {
        assert!(!contains(&export, &token), "a refresh token in clear");
    }

    // The audit log names the partner admin: UPN in the actor, object id and tenant beside.
    let jane_oid = {
        use sqlx::Row;
        let db = stack.db().await;
        let row = sqlx::query("SELECT oid FROM consents WHERE tenant_id = $1")
            .bind(CONTOSO)
            .fetch_one(db.pool())
            .await
            .unwrap();
        row.try_get::<String, _>("oid").unwrap()
    };
    let filter = AuditFilter {
        action: Some("partner.revoke".into()),
        ..AuditFilter::default()
    };
    let events = audit::search(&stack.db().await, &filter, 10).await.unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].actor, "partner:jane@contoso.example");
    assert_eq!(events[0].tenant_id.as_deref(), Some(CONTOSO));
    assert_eq!(events[0].detail["oid"], jane_oid.as_str());
    assert_eq!(events[0].detail["shredded"], 2);
    assert!(
        stack
            .cli(&["audit", "verify"])
            .starts_with("audit chain intact")
    );

    // The confirmation works once; the callback too.
    let (status, _) = confirm(&stack, &mut browser, page, None).await;
    assert_eq!(status, 400);
    assert_eq!(browser.get(&signed_in.callback).await.status(), 400);
    // Nothing left: Jane signing in again is told so.
    let again = sign_in_to_revoke(
        &stack,
        &mut Browser::new(&stack),
        "jane@contoso.example",
        true,
        "accept",
    )
    .await;
    assert_eq!(again.status, 404, "{}", again.body);
    assert!(again.body.contains("Nothing to revoke"));
    // Wingtip was not touched.
    assert_eq!(stack.token(&creds, WINGTIP, token_body()).await.0, 200);
    assert_eq!(stack.partner(WINGTIP).unwrap()["status"], "active");
}

async fn only_the_consenter_or_an_admin_may_revoke(backend: Backend) {
    let Some(db) = support::fresh_database(backend).await else {
        return;
    };
    let stack = Stack::start(&db.url, StackOptions::default()).await;
    stack.consent("jane@contoso.example").await;
    let creds = stack.client(&[PARTNER_CENTER]);
    let before = contoso_holding(&stack).await;
    let confirm_url = format!("{}/onboard/revoke/confirm", stack.sv());

    // Sam, a Sales Agent of Contoso who did not consent: refused, and no form to post.
    let mut sam = Browser::new(&stack);
    let refused = sign_in_to_revoke(&stack, &mut sam, "sam@contoso.example", true, "accept").await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert!(
        refused.body.contains("You cannot revoke this grant"),
        "{}",
        refused.body
    );
    assert!(!refused.body.contains("Revoke and delete"));
    // Even with this session's CSRF token, a hand-made confirmation has no sign-in behind it.
    let landing = sam.get(&format!("{}/onboard/revoke", stack.sv())).await;
    let csrf = field(&landing.text().await.unwrap(), "csrf");
    let forged = sam
        .post_form(&confirm_url, &[("csrf", &csrf), ("tenant", CONTOSO)])
        .await;
    assert_eq!(forged.status(), 400);

    // Trent of Wingtip, which never consented: nothing to revoke for his tenant.
    let mut trent = Browser::new(&stack);
    let nothing =
        sign_in_to_revoke(&stack, &mut trent, "trent@wingtip.example", true, "accept").await;
    assert_eq!(nothing.status, 404, "{}", nothing.body);
    assert!(nothing.body.contains("Nothing to revoke"));

    // Once Wingtip consents, Trent may revoke Wingtip, but a form naming Contoso is refused.
    stack.consent("trent@wingtip.example").await;
    let mut trent = Browser::new(&stack);
    let wingtip =
        sign_in_to_revoke(&stack, &mut trent, "trent@wingtip.example", true, "accept").await;
    assert_eq!(wingtip.status, 200, "{}", wingtip.body);
    assert_eq!(field(&wingtip.body, "tenant"), WINGTIP);
    let (status, body) = confirm(&stack, &mut trent, &wingtip.body, Some(CONTOSO)).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("Wrong organisation"), "{body}");
    assert_eq!(stack.partner(WINGTIP).unwrap()["status"], "active");

    // Declined at the IdP, MFA skipped, no CSRF token, a forged or stolen state.
    let mut jane = Browser::new(&stack);
    let declined = sign_in_to_revoke(&stack, &mut jane, "jane@contoso.example", true, "deny").await;
    assert_eq!(declined.status, 403, "{}", declined.body);
    assert!(
        declined.body.contains("Sign-in was cancelled"),
        "{}",
        declined.body
    );
    assert!(
        declined.body.contains("href=\"/onboard/revoke\""),
        "{}",
        declined.body
    );
    let no_mfa =
        sign_in_to_revoke(&stack, &mut jane, "jane@contoso.example", false, "accept").await;
    assert_eq!(no_mfa.status, 403, "{}", no_mfa.body);
    assert!(no_mfa.body.contains("AADSTS50076"), "{}", no_mfa.body);
    let no_csrf = stack
        .http
        .post(format!("{}/onboard/revoke/start", stack.sv()))
        .form(&[("csrf", "")])
        .send()
        .await
        .unwrap();
    assert_eq!(no_csrf.status(), 400);
    let authorize = start_revoke(&stack, &mut jane).await;
    let callback = jane
        .sign_in(&authorize, "jane@contoso.example", true, "accept")
        .await;
    let stolen = Browser::new(&stack).get(&callback).await;
    assert_eq!(
        stolen.status(),
        400,
        "a state is bound to the browser that started it"
    );
    let authorize = start_revoke(&stack, &mut jane).await;
    let callback = jane
        .sign_in(&authorize, "jane@contoso.example", true, "accept")
        .await;
    let forged = jane.get(&callback.replace("state=", "state=forged")).await;
    assert_eq!(forged.status(), 400);
    assert_eq!(
        jane.get(&callback).await.status(),
        400,
        "the forged answer used it up"
    );

    assert_eq!(
        contoso_holding(&stack).await,
        before,
        "Contoso's grant is untouched"
    );
    assert_eq!(stack.token(&creds, CONTOSO, token_body()).await.0, 200);
    let filter = AuditFilter {
        action: Some("partner.revoke".into()),
        ..AuditFilter::default()
    };
    assert!(
        audit::search(&stack.db().await, &filter, 10)
            .await
            .unwrap()
            .is_empty()
    );

    // Grace, a Global Administrator of Contoso (`wids` in her id_token), may revoke Jane's grant.
    let mut grace = Browser::new(&stack);
    let admin =
        sign_in_to_revoke(&stack, &mut grace, "grace@contoso.example", true, "accept").await;
    assert_eq!(admin.status, 200, "{}", admin.body);
    assert!(
        admin
            .body
            .contains("you are a Global Administrator of this organisation")
    );
    let (status, done) = confirm(&stack, &mut grace, &admin.body, None).await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(stack.partner(CONTOSO).unwrap()["status"], "revoked");
    let events = audit::search(&stack.db().await, &filter, 10).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].actor, "partner:grace@contoso.example");
    assert_eq!(events[0].tenant_id.as_deref(), Some(CONTOSO));
}

/// `upn` signs in to revoke, with MFA.
async fn revoke_as(stack: &Stack, browser: &mut Browser<'_>, upn: &str) -> SignedIn {
    sign_in_to_revoke(stack, browser, upn, true, "accept").await
}

/// Issue 17 §1: revoke rights are judged against the consent behind the grant being revoked.
/// Sam, a Sales Agent whose consent over Jane's live grant was refused, is no consenter and
/// may not revoke; once he replaced it through an invitation pinned to Contoso, he may, and
/// Jane, whose grant is gone, may not.
async fn revoke_rights_follow_the_grant(backend: Backend) {
    let Some(db) = support::fresh_database(backend).await else {
        return;
    };
    let stack = Stack::start(&db.url, StackOptions::default()).await;
    stack.consent("jane@contoso.example").await;
    let refused = Browser::new(&stack)
        .consent("sam@contoso.example", true, "accept")
        .await;
    assert_eq!(refused.status, 409, "{}", refused.body);
    let sam = revoke_as(&stack, &mut Browser::new(&stack), "sam@contoso.example").await;
    assert_eq!(sam.status, 403, "{}", sam.body);

    let invite: Value =
        serde_json::from_str(&stack.cli(&["invite", "create", "--tenant", CONTOSO, "--json"]))
            .unwrap();
    let url = invite["url"].as_str().unwrap();
    let done = Browser::new(&stack)
        .consent_from(url, "sam@contoso.example", true, "accept")
        .await;
    assert_eq!(done.status, 200, "{}", done.body);
    let jane = revoke_as(&stack, &mut Browser::new(&stack), "jane@contoso.example").await;
    assert_eq!(jane.status, 403, "{}", jane.body);
    let mut browser = Browser::new(&stack);
    let sam = revoke_as(&stack, &mut browser, "sam@contoso.example").await;
    assert_eq!(sam.status, 200, "{}", sam.body);
    assert!(sam.body.contains("you gave the consent samvault holds"));
    let (status, revoked) = confirm(&stack, &mut browser, &sam.body, None).await;
    assert_eq!(status, 200, "{revoked}");
    assert_eq!(stack.partner(CONTOSO).unwrap()["status"], "revoked");
}

/// Two replicas on one PostgreSQL: a partner revoked on one is refused by the other within
/// its status watch's poll, although that replica holds a cached access token.
#[tokio::test(flavor = "multi_thread")]
async fn a_partner_revocation_reaches_every_replica() {
    let Some(db) = support::fresh_database(Backend::Postgres).await else {
        return;
    };
    let stack = Stack::start(&db.url, StackOptions::default().replicas(2)).await;
    stack.consent("jane@contoso.example").await;
    let creds = stack.client(&[PARTNER_CENTER]);
    stack.cache_on_every_replica(&creds, CONTOSO).await;

    let mut browser = Browser::new(&stack);
    let signed_in =
        sign_in_to_revoke(&stack, &mut browser, "jane@contoso.example", true, "accept").await;
    assert_eq!(signed_in.status, 200, "{}", signed_in.body);
    let (status, done) = confirm(&stack, &mut browser, &signed_in.body, None).await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(
        stack.token_at(0, &creds, CONTOSO, token_body()).await.0,
        409
    );
    eventually(
        Duration::from_secs(3),
        "replica 1 refuses the revoked partner",
        || async { stack.token_at(1, &creds, CONTOSO, token_body()).await.0 == 409 },
    )
    .await;
}

on_both_backends!(
    jane_revokes_contoso,
    only_the_consenter_or_an_admin_may_revoke,
    revoke_rights_follow_the_grant
);
