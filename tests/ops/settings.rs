//! Invitations (operators create and expire them; the URL is shown once and works until
//! expired) and the keys page (its counts are the database's).

use super::Operator;
use super::support::stack::*;
use super::support::{self, Backend};
use crate::on_both_backends;

async fn invitation_count(stack: &Stack) -> i64 {
    stack
        .scalar("SELECT COUNT(*) FROM invitations WHERE id <> $1", "")
        .await
}

async fn audit_count(stack: &Stack, action: &str) -> i64 {
    stack
        .scalar("SELECT COUNT(*) FROM audit_log WHERE action = $1", action)
        .await
}

async fn operators_create_and_expire_invitations(backend: Backend) {
    let Some(db) = support::fresh_database(backend).await else {
        return;
    };
    let stack = Stack::start(&db.url, StackOptions::default()).await;
    let mut otto = Operator::signed_in(&stack, "otto", "operator").await;
    let (status, page, _) = otto.get("/ops/invitations").await;
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains("No invitation has been created yet."),
        "{page}"
    );
    let csrf = field(&page, "csrf");

    // Bad input: a clear 400 and nothing created.
    for (tenant, days) in [
        ("", "0"),
        ("", "31"),
        ("", "-1"),
        ("", "seven"),
        ("", ""),
        ("contoso.example", "7"),
        ("{6f3a2a5e-0c1d-4a3b-8f4e-1c2d3e4f5a01}", "7"),
    ] {
        let (status, page, _) = otto
            .post(
                "/ops/invitations",
                &[("csrf", &csrf), ("tenant", tenant), ("days", days)],
            )
            .await;
        assert_eq!(status, 400, "{tenant:?} {days:?}: {page}");
    }
    let (status, _, _) = otto
        .post(
            "/ops/invitations",
            &[("csrf", &csrf), ("days", "7"), ("days", "30")],
        )
        .await;
    assert_eq!(status, 400, "a repeated field");
    assert_eq!(invitation_count(&stack).await, 0);

    // Created for Contoso: the URL is shown once and opens the onboarding page.
    let (status, page, _) = otto
        .post(
            "/ops/invitations",
            &[("csrf", &csrf), ("tenant", CONTOSO), ("days", "7")],
        )
        .await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("<label for=\"onboarding_url\">"), "{page}");
    let url = field(&page, "onboarding_url");
    assert!(
        url.starts_with(&format!("{}/onboard/i/", stack.sv())),
        "{url}"
    );
    let token = url.rsplit('/').next().unwrap().to_string();
    let onboarding = stack.http.get(&url).send().await.unwrap();
    assert_eq!(onboarding.status(), 200);
    assert!(onboarding.text().await.unwrap().contains("Grant consent"));

    // Listed as open, pinned to Contoso, without its token (nor in the database).
    let (_, list, _) = otto.get("/ops/invitations").await;
    assert!(
        list.contains(">open</span>") && list.contains(CONTOSO),
        "{list}"
    );
    assert!(!list.contains(&token), "the list shows an invitation token");
    assert!(!contains(&stack.database_dump(), &token));
    assert!(
        !stack.log(0).contains(&token),
        "an invitation token is in the log"
    );

    // Expired on the page: the link is refused from then on.
    let id = samvault::onboarding::invitation_id(&token);
    let expire = format!("/ops/invitations/{id}/expire");
    assert!(list.contains(&format!("action=\"{expire}\"")), "{list}");
    let (status, _, location) = otto.post(&expire, &[("csrf", &csrf)]).await;
    assert_eq!(
        (status, location.as_deref()),
        (303, Some("/ops/invitations"))
    );
    let refused = stack.http.get(&url).send().await.unwrap();
    assert_eq!(refused.status(), 410);
    assert!(refused.text().await.unwrap().contains("expired"));
    let (_, list, _) = otto.get("/ops/invitations").await;
    assert!(list.contains(">expired</span>"), "{list}");
    assert!(!list.contains(&format!("action=\"{expire}\"")), "{list}");
    // Nothing left to expire; ids that are not digests are not looked up.
    for path in [
        expire.clone(),
        format!("/ops/invitations/{}/expire", "0".repeat(64)),
        "/ops/invitations/not-an-id/expire".to_string(),
        "/ops/invitations/%00/expire".to_string(),
    ] {
        let (status, _, _) = otto.post(&path, &[("csrf", &csrf)]).await;
        assert_eq!(status, 404, "{path}");
    }

    // Paging: bad page numbers are refused; a page past the end is empty.
    for query in [
        "?page=0",
        "?page=-1",
        "?page=two",
        "?page=1&page=2",
        "?page=1001",
    ] {
        let (status, _, _) = otto.get(&format!("/ops/invitations{query}")).await;
        assert_eq!(status, 400, "{query}");
    }
    let (status, page, _) = otto.get("/ops/invitations?page=2").await;
    assert_eq!(status, 200);
    assert!(page.contains("No invitations on this page."), "{page}");

    assert_eq!(audit_count(&stack, "ops.invitation.create").await, 1);
    assert_eq!(audit_count(&stack, "ops.invitation.expire").await, 1);
}

async fn viewers_cannot_create_or_expire_invitations(backend: Backend) {
    let Some(db) = support::fresh_database(backend).await else {
        return;
    };
    let stack = Stack::start(&db.url, StackOptions::default()).await;
    let out = stack.cli(&["invite", "create", "--json"]);
    let url: serde_json::Value = serde_json::from_str(&out).unwrap();
    let url = url["url"].as_str().unwrap().to_string();
    let id = samvault::onboarding::invitation_id(url.rsplit('/').next().unwrap());
    let expire = format!("/ops/invitations/{id}/expire");

    let mut vera = Operator::signed_in(&stack, "vera", "viewer").await;
    let (status, page, _) = vera.get("/ops/invitations").await;
    assert_eq!(status, 200);
    assert!(
        page.contains(">open</span>"),
        "a viewer sees the list: {page}"
    );
    assert!(!page.contains("action=\"/ops/invitations\""), "{page}");
    assert!(!page.contains(&expire), "{page}");
    let csrf = field(&page, "csrf");
    let (status, _, _) = vera
        .post("/ops/invitations", &[("csrf", &csrf), ("days", "7")])
        .await;
    assert_eq!(status, 403);
    let (status, _, _) = vera.post(&expire, &[("csrf", &csrf)]).await;
    assert_eq!(status, 403);

    // An operator without the session's CSRF token is refused as well.
    let mut otto = Operator::signed_in(&stack, "otto", "operator").await;
    let (status, _, _) = otto.post("/ops/invitations", &[("days", "7")]).await;
    assert_eq!(status, 403);
    let (status, _, _) = otto.post(&expire, &[("csrf", "forged")]).await;
    assert_eq!(status, 403);

    assert_eq!(invitation_count(&stack).await, 1, "nothing was created");
    assert_eq!(stack.http.get(&url).send().await.unwrap().status(), 200);
}

/// The figure in the `num` cell of the table row that starts with `what`.
fn records(page: &str, what: &str) -> i64 {
    let row = page
        .split("<tr>")
        .find(|row| row.starts_with(&format!("<td>{what}</td>")))
        .unwrap_or_else(|| panic!("no row for {what}: {page}"));
    let cell = row.split("<td class=\"num\">").nth(1).unwrap();
    cell.split('<').next().unwrap().parse().unwrap()
}

async fn keys_page_counts_what_is_sealed(backend: Backend) {
    let Some(db) = support::fresh_database(backend).await else {
        return;
    };
    let stack = Stack::start(&db.url, StackOptions::default()).await;
    stack.consent("jane@contoso.example").await;
    let mut vera = Operator::signed_in(&stack, "vera", "viewer").await;
    let (status, page, _) = vera.get("/ops/keys").await;
    assert_eq!(status, 200, "{page}");

    use sqlx::Row;
    let db = stack.db().await;
    let kek: String = sqlx::query("SELECT kek_id FROM grants")
        .fetch_one(db.pool())
        .await
        .unwrap()
        .try_get("kek_id")
        .unwrap();
    assert!(kek.starts_with("local:"), "{kek}");
    assert!(page.contains("local key file"), "{page}");
    assert!(
        page.contains(&format!("<dd class=\"mono\">{kek}</dd>")),
        "the current key: {page}"
    );
    assert!(page.contains("samvault keys rotate"), "{page}");
    assert!(page.contains("No key rotation has run yet."), "{page}");

    // One consent: one refresh token sealed under the current key, nothing shredded.
    assert_eq!(records(&page, "refresh tokens (grant versions)"), 1);
    // Sessions (the consent's, vera's) are sealed under one session key, which the KEK wraps.
    assert!(
        stack
            .scalar("SELECT COUNT(*) FROM sessions WHERE key_id <> $1", "")
            .await
            >= 2
    );
    let session_keys = stack
        .scalar("SELECT COUNT(*) FROM session_keys WHERE kek_id = $1", &kek)
        .await;
    assert_eq!(session_keys, 1);
    assert_eq!(records(&page, "session keys"), session_keys);
    assert_eq!(records(&page, "ops users&#39; TOTP secrets"), 1);
    assert!(
        page.contains("<dt>Shredded refresh-token versions</dt><dd>0</dd>")
            && page.contains("<dt>Sealed records under other keys</dt><dd>0</dd>"),
        "{page}"
    );

    // `samvault keys status` says the same as the page.
    let status: serde_json::Value =
        serde_json::from_str(&stack.cli(&["keys", "status", "--json"])).unwrap();
    assert_eq!(status["current_kek_id"], kek.as_str());
    assert_eq!(status["not_under_current_key"], 0);
    let cli_records = |what: &str| {
        status["sealed"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["what"] == what)
            .map(|r| r["records"].as_i64().unwrap())
            .sum::<i64>()
    };
    assert_eq!(cli_records("refresh tokens (grant versions)"), 1);
    assert_eq!(cli_records("ops users' TOTP secrets"), 1);
    assert_eq!(cli_records("session keys"), session_keys);

    // After a purge the grant is shredded: counted as such, no longer as sealed.
    let contoso = samvault::domain::TenantId::parse(CONTOSO).unwrap();
    samvault::storage::partners::shred_all(&db, &contoso, samvault::storage::now())
        .await
        .unwrap();
    let (_, page, _) = vera.get("/ops/keys").await;
    assert!(
        page.contains("<dt>Shredded refresh-token versions</dt><dd>1</dd>"),
        "{page}"
    );
    assert!(
        !page.contains("<td>refresh tokens (grant versions)</td>"),
        "{page}"
    );

    // A rotation moves every sealed record onto a new key; the page shows the job and the
    // new current key, with nothing left under the old one.
    let out = stack.cli(&["keys", "rotate"]);
    let (_, page, _) = vera.get("/ops/keys").await;
    let status: serde_json::Value =
        serde_json::from_str(&stack.cli(&["keys", "status", "--json"])).unwrap();
    let new_kek = status["current_kek_id"].as_str().unwrap();
    assert_ne!(new_kek, kek);
    assert!(out.contains(&format!("retired {kek}")), "{out}");
    assert!(
        page.contains(&format!(
            "<dt>Last rotation onto</dt><dd class=\"mono\">{new_kek}</dd>"
        )) && page.contains("<dt>Sealed records under other keys</dt><dd>0</dd>")
            && !page.contains("not finished"),
        "{page}"
    );
    // Every sealed record but the new session key the rotation made under the new key.
    let moved = status["sealed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["records"].as_i64().unwrap())
        .sum::<i64>()
        - 1;
    assert!(
        page.contains(&format!("<dt>Data keys re-wrapped</dt><dd>{moved}</dd>")),
        "every sealed record ({moved}) was re-wrapped: {page}"
    );
}

on_both_backends!(
    operators_create_and_expire_invitations,
    viewers_cannot_create_or_expire_invitations,
    keys_page_counts_what_is_sealed
);
