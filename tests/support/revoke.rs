//! Partner self-service revoke at `/onboard/revoke` driven as a partner admin would: the
//! identity-only sign-in and the "Revoke and delete" confirmation. Used by tests/revoke.rs
//! and the secret scan (tests/secrets.rs).

use super::stack::{Browser, Stack, field};

/// What a revoke sign-in came back with: the callback's answer and the callback URL.
pub struct SignedIn {
    pub status: u16,
    pub body: String,
    pub callback: String,
}

/// Opens the revoke page in `browser`, presses "Sign in to revoke" and returns the IdP's
/// authorize URL, checking that it asks for identity only.
pub async fn start_revoke(stack: &Stack, browser: &mut Browser<'_>) -> String {
    let page = browser.get(&format!("{}/onboard/revoke", stack.sv())).await;
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains("Sign in to revoke"), "{html}");
    let started = browser
        .post_form(
            &format!("{}/onboard/revoke/start", stack.sv()),
            &[("csrf", &field(&html, "csrf"))],
        )
        .await;
    assert_eq!(started.status(), 303);
    let authorize = started.headers()["location"].to_str().unwrap().to_string();
    assert!(authorize.starts_with(&stack.idp), "{authorize}");
    let query: std::collections::HashMap<String, String> = url::Url::parse(&authorize)
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect();
    // Identity only: no offline_access (no refresh token), no Partner Center permission.
    assert_eq!(query["scope"], "openid profile", "{authorize}");
    assert_eq!(query["prompt"], "login");
    assert_eq!(query["code_challenge_method"], "S256");
    assert!(!query["state"].is_empty() && !query["nonce"].is_empty());
    authorize
}

/// The whole sign-in: revoke page, the dev IdP's form as `upn` (with MFA when `mfa`), and
/// the callback.
pub async fn sign_in_to_revoke(
    stack: &Stack,
    browser: &mut Browser<'_>,
    upn: &str,
    mfa: bool,
    decision: &str,
) -> SignedIn {
    let authorize = start_revoke(stack, browser).await;
    let callback = browser.sign_in(&authorize, upn, mfa, decision).await;
    assert!(
        callback.starts_with(&format!("{}/onboard/callback", stack.sv())),
        "{callback}"
    );
    let response = browser.get(&callback).await;
    SignedIn {
        status: response.status().as_u16(),
        body: response.text().await.unwrap(),
        callback,
    }
}

/// Presses "Revoke and delete" on a confirmation page, optionally naming another tenant.
pub async fn confirm(
    stack: &Stack,
    browser: &mut Browser<'_>,
    page: &str,
    tenant: Option<&str>,
) -> (u16, String) {
    let named = tenant.map_or_else(|| field(page, "tenant"), str::to_string);
    let response = browser
        .post_form(
            &format!("{}/onboard/revoke/confirm", stack.sv()),
            &[("csrf", &field(page, "csrf")), ("tenant", &named)],
        )
        .await;
    (response.status().as_u16(), response.text().await.unwrap())
}
