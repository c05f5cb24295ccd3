//! samvault against the answers Entra ID really gives (docs/ENTRA_FIDELITY.md), end to end:
//! the real `samvault dev-idp` and `samvault serve`, on SQLite and on PostgreSQL.
//!
//! - a resource the app was never granted: Entra answers `invalid_client` 650057 (not in the
//!   app registration) or `invalid_resource` 500011 (no such service principal), and neither
//!   is about the app's credential nor the partner's grant: 422, partner unchanged;
//! - a redirect URI that differs at redemption: `invalid_client` 500112, which names no
//!   credential: a page naming `SAMVAULT_PUBLIC_URL`, no fallback, no credential alarm;
//! - a signing key that rolls in the middle of onboarding: consents keep working.
#![allow(clippy::too_many_lines)] // scenarios read top to bottom

mod support;

use reqwest::Method;
use serde_json::{Value, json};
use support::Backend;
use support::stack::*;

/// Listed in Microsoft's catalogue of first-party APIs, absent from the demo app's registration.
const EXCHANGE: &str = "https://outlook.office365.com";
/// An API with no service principal in any tenant of the simulated directory.
const UNKNOWN_API: &str = "https://api.contoso-cpv.example";
const GRAPH: &str = "https://graph.microsoft.com";
const TENANT_1: &str = "00000000-0000-4000-8000-000000000001";
const TENANT_2: &str = "00000000-0000-4000-8000-000000000002";
/// A second secret of the demo app (`SAMVAULT_CLIENT_SECRET_NEXT`): a fallback would use it.
const NEXT_SECRET: &str = "fidelity-next-secret";

/// Jane's refresh token as the dev IdP holds it, to ask it directly what Entra answers.
async fn jane_refresh_token(stack: &Stack) -> String {
    let grants = stack.sim(Method::GET, "grants", Value::Null).await;
    grants
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|g| g["upn"] == "jane@contoso.example" && g["valid"] == true)
        .expect("jane holds a live refresh token")["refresh_token"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The dev IdP's token endpoint asked directly for `resource` with Jane's refresh token.
async fn idp_answer(stack: &Stack, resource: &str) -> (u16, Value) {
    let refresh_token = jane_refresh_token(stack).await;
    let response = stack
        .http
        .post(format!("{}/{CONTOSO}/oauth2/v2.0/token", stack.idp))
        .form(&[
            ("grant_type", "refresh_token"),
            ("client_id", DEMO_CLIENT_ID),
            ("client_secret", DEMO_CLIENT_SECRET),
            ("refresh_token", refresh_token.as_str()),
            ("scope", &format!("{resource}/.default offline_access")),
        ])
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

async fn alarms(stack: &Stack) -> Vec<String> {
    use sqlx::Row;
    let db = stack.db().await;
    sqlx::query("SELECT name FROM alarms")
        .fetch_all(db.pool())
        .await
        .unwrap()
        .iter()
        .map(|row| row.get::<String, _>(0))
        .collect()
}

/// What a refused app credential would leave behind, looked for everywhere a person reads.
async fn assert_no_credential_alarm(stack: &Stack, pages: &[&str]) {
    assert_eq!(alarms(stack).await, Vec::<String>::new(), "no alarm raised");
    let dump = stack.database_dump();
    let mut places: Vec<(String, String)> = vec![(
        "database".into(),
        String::from_utf8_lossy(&dump).into_owned(),
    )];
    for (i, replica) in stack.replicas.iter().enumerate() {
        places.push((format!("log of replica {i}"), stack.log(i)));
        let metrics = stack
            .http
            .get(format!("{}/metrics", replica.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            metrics.contains("samvault_app_credentials_alarm 0"),
            "replica {i}: {metrics}"
        );
        places.push((format!("metrics of replica {i}"), metrics));
    }
    places.extend(pages.iter().map(|p| ("page".to_string(), p.to_string())));
    for (place, text) in &places {
        for needle in [
            "SAMVAULT_CLIENT_SECRET rejected",
            "secret rejected",
            "SAMVAULT_CLIENT_SECRET_NEXT",
        ] {
            assert!(!text.contains(needle), "{place} mentions {needle:?}");
        }
    }
}

/// A resource the app was never granted: the dev IdP answers as Entra does, and the token API
/// answers 422 `resource_not_consented` while the partner stays healthy.
async fn a_resource_never_granted_is_not_consented(backend: Backend) {
    let Some(db) = support::fresh_database(backend).await else {
        return;
    };
    let resources = format!("{PARTNER_CENTER} {GRAPH} {EXCHANGE} {UNKNOWN_API}");
    let options = StackOptions::default().env("SAMVAULT_RESOURCES", &resources);
    let stack = Stack::start(&db.url, options).await;
    stack.consent("jane@contoso.example").await;

    // What Entra answers: not in the app registration, no such service principal, no consent.
    for (resource, error, code, suberror) in [
        (EXCHANGE, "invalid_client", 650057, None),
        (UNKNOWN_API, "invalid_resource", 500011, None),
        (GRAPH, "invalid_grant", 65001, Some("consent_required")),
    ] {
        let (status, body) = idp_answer(&stack, resource).await;
        let seen = (status, body["error"].as_str(), body["error_codes"].clone());
        assert_eq!(
            seen,
            (400, Some(error), json!([code])),
            "{resource}: {body}"
        );
        assert_eq!(body["suberror"].as_str(), suberror, "{resource}: {body}");
    }

    let creds = stack.client(&[PARTNER_CENTER, GRAPH, EXCHANGE, UNKNOWN_API]);
    for (resource, code) in [(EXCHANGE, 650057), (UNKNOWN_API, 500011), (GRAPH, 65001)] {
        let body = json!({ "resource": resource, "purpose": "mailbox audit" });
        let (status, problem) = stack.token(&creds, CONTOSO, body).await;
        assert_eq!(status, 422, "{resource}: {problem}");
        assert_eq!(problem["code"], "resource_not_consented", "{resource}");
        assert!(
            problem["detail"]
                .as_str()
                .unwrap_or("")
                .contains(&code.to_string()),
            "{resource}: the detail names AADSTS{code}: {problem}"
        );
    }
    let contoso = stack.partner(CONTOSO).unwrap();
    assert_eq!(contoso["status"], "active", "{contoso}");
    let (status, body) = stack.token(&creds, CONTOSO, token_body()).await;
    assert_eq!(status, 200, "the primary resource still works: {body}");
    assert_no_credential_alarm(&stack, &[]).await;
}

/// A consent that `samvault` finishes under another `SAMVAULT_PUBLIC_URL` than it started
/// with (a deploy changed it while the partner admin was at Microsoft, or replicas disagree):
/// Entra sees another redirect URI at redemption (`invalid_client` 500112). The page names
/// the setting to fix; no second credential is tried, nothing says a secret was rejected and
/// no credential alarm is raised.
async fn a_redirect_uri_that_differs_names_the_public_url(backend: Backend) {
    let Some(db) = support::fresh_database(backend).await else {
        return;
    };
    let options = StackOptions::default().env("SAMVAULT_CLIENT_SECRET_NEXT", NEXT_SECRET);
    let mut stack = Stack::start(&db.url, options).await;
    let secret = json!({ "secret": NEXT_SECRET });
    stack.sim(Method::POST, "app/secrets", secret).await;

    let mut browser = Browser::new(&stack);
    let authorize = browser.start(&format!("{}/onboard", stack.sv())).await;
    let callback = browser
        .sign_in(&authorize, "jane@contoso.example", true, "accept")
        .await;
    let cookie = browser.cookie().expect("a session").to_string();
    // The same listener, now configured with another public address (one the app
    // registration also has, as every loopback address is registered on the demo app).
    let moved = stack.sv().replace("127.0.0.1", "localhost");
    stack.stop_replica(0);
    stack.replicas[0].public_url = Some(moved);
    stack.start_replica(0).await;
    let response = stack
        .http
        .get(&callback)
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let page = response.text().await.unwrap();
    assert!((400..500).contains(&status), "{status}: {page}");
    assert!(page.contains("SAMVAULT_PUBLIC_URL"), "{page}");
    assert!(page.contains("AADSTS500112"), "{page}");

    let counters = stack.counters().await;
    assert_eq!(counters["errors"]["500112"], 1, "{counters}");
    assert_eq!(
        counters["token_calls"]["authorization_code"], 1,
        "no second credential was tried: {counters}"
    );
    assert!(stack.partner(CONTOSO).is_none(), "nothing was stored");
    assert!(
        stack.log(0).contains("SAMVAULT_PUBLIC_URL"),
        "operators are told in the log too"
    );
    assert_no_credential_alarm(&stack, &[&page]).await;

    // Back on the address the browser uses, the consent completes.
    stack.stop_replica(0);
    stack.replicas[0].public_url = None;
    stack.start_replica(0).await;
    stack.consent("jane@contoso.example").await;
    assert_no_credential_alarm(&stack, &[]).await;
}

async fn rotate_keys(stack: &Stack, emergency: bool) -> Value {
    let body = json!({ "emergency": emergency });
    stack.sim(Method::POST, "keys/rotate", body).await
}

/// One consent whose signing key rolls while the partner admin is on Microsoft's page.
async fn consent_across_a_roll(stack: &Stack, upn: &str, emergency: bool) {
    let mut browser = Browser::new(stack);
    let authorize = browser.start(&format!("{}/onboard", stack.sv())).await;
    let keys = rotate_keys(stack, emergency).await;
    let callback = browser.sign_in(&authorize, upn, true, "accept").await;
    let response = browser.get(&callback).await;
    let status = response.status().as_u16();
    let page = response.text().await.unwrap();
    assert_eq!(
        status, 200,
        "consent of {upn} after the roll to {keys}: {page}"
    );
}

/// Signing keys roll (Entra's regular roll twice, then an emergency one) while partners are
/// consenting: every consent completes, including with a key published after samvault last
/// read the JWKS and with one nobody had seen.
async fn consents_survive_a_signing_key_roll(backend: Backend) {
    let Some(db) = support::fresh_database(backend).await else {
        return;
    };
    let stack = Stack::start(&db.url, StackOptions::default()).await;
    stack.consent("jane@contoso.example").await;
    let jwks: Value = stack
        .http
        .get(format!("{}/common/discovery/v2.0/keys", stack.idp))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(jwks["keys"].as_array().unwrap().len() > 1, "{jwks}");

    consent_across_a_roll(&stack, "trent@wingtip.example", false).await;
    consent_across_a_roll(&stack, "admin@tenant-1.example", false).await;
    consent_across_a_roll(&stack, "admin@tenant-2.example", true).await;
    stack.consent("jane@contoso.example").await;
    let statuses = stack.statuses();
    for tenant in [CONTOSO, WINGTIP, TENANT_1, TENANT_2] {
        assert_eq!(
            statuses.get(tenant).map(String::as_str),
            Some("active"),
            "{statuses:?}"
        );
    }
}

on_both_backends!(
    a_resource_never_granted_is_not_consented,
    a_redirect_uri_that_differs_names_the_public_url,
    consents_survive_a_signing_key_roll,
);
