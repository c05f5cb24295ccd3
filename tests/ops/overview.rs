//! The overview: partners per status, the expiry-horizon chart, the last 7 days of rotation,
//! the next grants due — figures read from a stack where Contoso consented and was redeemed.

use super::support::stack::*;
use super::support::{self, Backend};
use super::{Operator, page_text};
use crate::on_both_backends;

async fn overview_shows_status_horizon_history_and_next_due(backend: Backend) {
    let Some(db) = support::fresh_database(backend).await else {
        return;
    };
    let stack = Stack::start(&db.url, StackOptions::default()).await;
    stack.consent("jane@contoso.example").await;
    // A token request on a cold cache redeems the grant: one successful attempt today.
    let creds = stack.client(&[PARTNER_CENTER]);
    let (status, body) = stack.token(&creds, CONTOSO, token_body()).await;
    assert_eq!(status, 200, "{body}");

    let mut viewer = Operator::signed_in(&stack, "vera", "viewer").await;
    let (status, page, headers) = viewer.get("/ops").await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(headers["cache-control"], "no-store");
    let text = page_text(&page);

    assert!(text.contains("1 Partners in all"), "{text}");
    assert!(text.contains("1 Active"), "{text}");
    assert!(text.contains("0 Revoked"), "{text}");
    assert!(
        text.contains("The app's credentials are accepted by Entra."),
        "{text}"
    );
    // Contoso was just redeemed: 90 days left, the last bucket; nothing urgent.
    assert!(page.contains("<svg class=\"chart\""), "{page}");
    assert!(text.contains("76–90 d 1"), "{text}");
    assert!(text.contains("expired 0"), "{text}");
    assert!(
        text.contains("No usable grant is within 14 days of the limit."),
        "{text}"
    );
    assert!(
        text.contains("1 successful redemptions, 0 failed"),
        "{text}"
    );
    // The next rotation due is Contoso's, with a link to its page.
    assert!(
        page.contains(&format!("href=\"/ops/partners/{CONTOSO}\"")),
        "{page}"
    );
    assert!(text.contains("Contoso"), "{text}");
    // The serving process lists itself, with a fresh heartbeat.
    let pid = stack.replicas[0].pid();
    assert!(
        page.contains(&format!("<td class=\"num\">{pid}</td>")),
        "process {pid} listed: {page}"
    );
    assert!(text.contains("s ago"), "{text}");
    assert!(!text.contains("silent for"), "{text}");
}

/// While a later app credential stands in for a refused one, the overview says which.
async fn overview_names_a_refused_app_credential(backend: Backend) {
    let Some(db) = support::fresh_database(backend).await else {
        return;
    };
    let options = StackOptions::default().env("SAMVAULT_CLIENT_SECRET_NEXT", "next-secret");
    let stack = Stack::start(&db.url, options).await;
    let post = reqwest::Method::POST;
    let next = serde_json::json!({ "secret": "next-secret" });
    stack.sim(post.clone(), "app/secrets", next).await;
    stack.consent("jane@contoso.example").await;
    let current = serde_json::json!({ "secret": "samvault-demo-secret" });
    stack.sim(post, "app/secret/expire", current).await;
    let creds = stack.client(&[PARTNER_CENTER]);
    let (status, body) = stack.token(&creds, CONTOSO, token_body()).await;
    assert_eq!(status, 200, "{body}");

    let mut viewer = Operator::signed_in(&stack, "vera", "viewer").await;
    let (status, page, _) = viewer.get("/ops").await;
    assert_eq!(status, 200, "{page}");
    let text = page_text(&page);
    assert!(
        text.contains("An app credential is refused; a later one works"),
        "{text}"
    );
    assert!(
        text.contains(
            "SAMVAULT_CLIENT_SECRET rejected: AADSTS7000222; using SAMVAULT_CLIENT_SECRET_NEXT"
        ),
        "{text}"
    );
}

on_both_backends!(
    overview_shows_status_horizon_history_and_next_due,
    overview_names_a_refused_app_credential
);
