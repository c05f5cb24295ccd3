//! The partners section: the list (search, status filter, sort orders, keyset pages), a
//! partner's page, and the actions on it (rotate, access check, onboarding link, revoke),
//! with their roles, CSRF and audit.

use std::collections::BTreeSet;

use super::Operator;
use super::support::stack::*;
use super::support::{self, Backend};
use crate::on_both_backends;

const XSS: &str = "<script>alert(1)</script>";

/// Whether the page shows [`XSS`] as text: escaped (askama writes numeric entities), never raw.
fn shows_as_text(page: &str) -> bool {
    let escaped = [
        "&#60;script&#62;alert(1)&#60;/script&#62;",
        "&lt;script&gt;alert(1)&lt;/script&gt;",
    ];
    !page.contains(XSS) && escaped.iter().any(|e| page.contains(e))
}

/// Tenant ids linked from a page (each listed partner's name links to its page), in order.
fn listed(page: &str) -> Vec<String> {
    let marker = "<a href=\"/ops/partners/";
    page.match_indices(marker)
        .map(|(at, _)| page[at + marker.len()..at + marker.len() + 36].to_string())
        .collect()
}

/// The "Next page" link of a list page, unescaped.
fn next_link(page: &str) -> Option<String> {
    let end = page.find("\" rel=\"next\"")?;
    let start = page[..end].rfind("href=\"")? + "href=\"".len();
    Some(page[start..end].replace("&#38;", "&").replace("&amp;", "&"))
}

/// The part of a page between two headings.
fn section<'a>(page: &'a str, from: &str, to: &str) -> &'a str {
    let start = page
        .find(from)
        .unwrap_or_else(|| panic!("no {from} in {page}"));
    let end = page[start..].find(to).map_or(page.len(), |e| start + e);
    &page[start..end]
}

/// Imports `n` partners with (fake) refresh tokens through `samvault partners import`:
/// tenant k is generated tenant k, named "Partner k" (k = 7: "Blue Yonder Airlines"),
/// with the domain importk.example.
fn import_partners(stack: &Stack, n: u32) {
    let path = stack.dir.path().join("import.jsonl");
    let mut lines = String::new();
    for k in 1..=n {
        let name = if k == 7 {
            "Blue Yonder Airlines".to_string()
        } else {
            format!("Partner {k:03}")
        };
        lines.push_str(
            &serde_json::json!({
                "tenant_id": generated_tenant(k), "refresh_token": format!("0.A-not-a-real-token-{k}"),
                "upn": format!("admin@import{k}.example"), "name": name, "mfa": true,
            })
            .to_string(),
        );
        lines.push('\n');
    }
    std::fs::write(&path, lines).unwrap();
    stack.cli(&["partners", "import", "--file", path.to_str().unwrap()]);
}

async fn execute(stack: &Stack, sql: &'static str, value: &str, tenant: &str) {
    let db = stack.db().await;
    let done = sqlx::query(sql)
        .bind(value)
        .bind(tenant)
        .execute(db.pool())
        .await
        .unwrap();
    assert_eq!(done.rows_affected(), 1, "{sql}");
}

async fn list_searches_filters_and_pages(backend: Backend) {
    let Some(db) = support::fresh_database(backend).await else {
        return;
    };
    // Imported grants are due at once; without the scheduler their statuses stay as set here.
    let stack = Stack::start(
        &db.url,
        StackOptions::default().env("SAMVAULT_SCHEDULER", "false"),
    )
    .await;
    stack.consent("jane@contoso.example").await;
    import_partners(&stack, 120);
    for k in 1..=3 {
        execute(
            &stack,
            "UPDATE partners SET status = $1 WHERE tenant_id = $2",
            "reconsent_required",
            &generated_tenant(k),
        )
        .await;
    }
    execute(
        &stack,
        "UPDATE partners SET status_reason = $1 WHERE tenant_id = $2",
        XSS,
        &generated_tenant(1),
    )
    .await;
    execute(
        &stack,
        "UPDATE partners SET display_name = $1 WHERE tenant_id = $2",
        XSS,
        &generated_tenant(120),
    )
    .await;
    let mut viewer = Operator::signed_in(&stack, "vera", "viewer").await;

    // Search by name (any case), by whole or partial tenant id, by domain.
    let t42 = generated_tenant(42);
    for (query, expected) in [
        ("q=yonder", vec![generated_tenant(7)]),
        ("q=CONTOSO", vec![CONTOSO.to_string()]),
        (&format!("q={t42}") as &str, vec![t42.clone()]),
        (
            &format!("q={}", t42.to_uppercase()) as &str,
            vec![t42.clone()],
        ),
        ("q=000000000042", vec![t42.clone()]),
        ("q=import42.example", vec![t42.clone()]),
        ("q=Partner+0%25", vec![]),
        ("q=nobody", vec![]),
        ("status=active&q=Partner+002", vec![]),
        (
            "status=reconsent_required&q=Partner+002",
            vec![generated_tenant(2)],
        ),
        (
            "status=reconsent_required",
            (1..=3).map(generated_tenant).collect(),
        ),
        (
            "status=reconsent_required&sort=status",
            (1..=3).map(generated_tenant).collect(),
        ),
        ("status=revoked", vec![]),
    ] {
        let (status, page, _) = viewer.get(&format!("/ops/partners?{query}")).await;
        assert_eq!(status, 200, "{query}: {page}");
        assert_eq!(listed(&page), expected, "{query}");
        if expected.is_empty() {
            assert!(page.contains("No partner matches."), "{query}");
        }
    }

    // Every order pages through all 121 partners exactly once, 50 at a time.
    for sort in ["name", "expiry", "status", "last_refresh"] {
        let mut seen = Vec::new();
        let mut sizes = Vec::new();
        let mut path = Some(format!("/ops/partners?sort={sort}"));
        while let Some(here) = path {
            let (status, page, _) = viewer.get(&here).await;
            assert_eq!(status, 200, "{here}: {page}");
            assert_eq!(page.contains(">First page</a>"), !seen.is_empty(), "{here}");
            let rows = listed(&page);
            sizes.push(rows.len());
            seen.extend(rows);
            path = next_link(&page);
        }
        assert_eq!(sizes, [50, 50, 21], "{sort}");
        let distinct: BTreeSet<&String> = seen.iter().collect();
        assert_eq!(distinct.len(), 121, "{sort}: each partner once");
        if sort == "name" {
            // Blue Yonder Airlines < Contoso < Partner 001 in every collation.
            let at = |t: &str| seen.iter().position(|s| s == t).unwrap();
            assert!(at(&generated_tenant(7)) < at(CONTOSO), "{seen:?}");
            assert!(at(CONTOSO) < at(&generated_tenant(1)), "{seen:?}");
        }
        if sort == "status" {
            // active (118), then reconsent_required (3).
            assert_eq!(
                &seen[118..],
                &(1..=3).map(generated_tenant).collect::<Vec<_>>()
            );
        }
    }
    // A filtered list pages with its filter kept.
    let (_, page, _) = viewer.get("/ops/partners?q=Partner&sort=expiry").await;
    let next = next_link(&page).expect("more than 50 partners are named Partner");
    assert!(
        next.contains("q=Partner") && next.contains("sort=expiry"),
        "{next}"
    );
    let (_, page, _) = viewer.get(&next).await;
    assert_eq!(listed(&page).len(), 50);

    // Hostile names and reasons are text, on the list and on the partner's page.
    let (_, page, _) = viewer.get("/ops/partners?q=script").await;
    assert_eq!(listed(&page), vec![generated_tenant(120)]);
    assert!(shows_as_text(&page), "{page}");
    let (status, page, _) = viewer
        .get(&format!("/ops/partners/{}", generated_tenant(120)))
        .await;
    assert_eq!(status, 200);
    assert!(shows_as_text(&page), "{page}");
    let (_, page, _) = viewer
        .get(&format!("/ops/partners/{}", generated_tenant(1)))
        .await;
    assert!(shows_as_text(&page), "{page}");

    // Bad parameters: a 400 page, never a 500.
    let name_cursor = {
        let (_, page, _) = viewer.get("/ops/partners").await;
        let next = next_link(&page).unwrap();
        next.split("cursor=").nth(1).unwrap().to_string()
    };
    let long = format!("q={}", "x".repeat(101));
    let foreign = format!("sort=expiry&cursor={name_cursor}");
    for query in [
        "status=sleeping",
        "sort=random",
        "cursor=not-a-cursor",
        "cursor=%FF%FE",
        "q=a%00b",
        "q=a&q=b",
        long.as_str(),
        foreign.as_str(),
    ] {
        let (status, page, _) = viewer.get(&format!("/ops/partners?{query}")).await;
        assert_eq!(status, 400, "{query}: {page}");
    }
    let (status, _, _) = viewer.get("/ops/partners/not-a-tenant").await;
    assert_eq!(status, 400);
    let (status, _, _) = viewer.get(&format!("/ops/partners/{FABRIKAM}")).await;
    assert_eq!(status, 404);
}

/// Everything the page shows is free of token material: no JWT and no refresh token the
/// dev IdP issued.
async fn assert_no_tokens(stack: &Stack, page: &str) {
    assert!(!page.contains("eyJ"), "a JWT on the page: {page}");
    let grants = stack
        .sim(reqwest::Method::GET, "grants", serde_json::Value::Null)
        .await;
    for grant in grants.as_array().unwrap() {
        let rt = grant["refresh_token"].as_str().unwrap();
        assert!(!page.contains(rt), "a refresh token on the page");
    }
}

async fn operators_rotate_check_and_invite_admins_revoke(backend: Backend) {
    let Some(db) = support::fresh_database(backend).await else {
        return;
    };
    // Consent covers all three configured resources, so the access check can issue each.
    let stack = Stack::start(
        &db.url,
        StackOptions::default().env(
            "SAMVAULT_CONSENT_SCOPES",
            "https://api.partnercenter.microsoft.com/user_impersonation https://graph.microsoft.com/User.Read https://management.azure.com/user_impersonation offline_access openid profile",
        ),
    )
    .await;
    stack.consent("jane@contoso.example").await;
    let creds = stack.client(&[PARTNER_CENTER]);
    let (status, _) = stack.token(&creds, CONTOSO, token_body()).await;
    assert_eq!(status, 200, "the partner works before anything happens");
    let detail = format!("/ops/partners/{CONTOSO}");
    let mut olga = Operator::signed_in(&stack, "olga", "operator").await;

    // The partner's page: facts, the consent by jane with MFA, operator buttons only.
    let (status, page, _) = olga.get(&detail).await;
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains("<dt>Consented by</dt><dd>jane@contoso.example"),
        "{page}"
    );
    let consents = section(&page, "Consent history", "Latest rotation attempts");
    assert!(consents.contains("jane@contoso.example"), "{consents}");
    assert!(
        consents.contains("<td>yes</td>") && consents.contains("mfa"),
        "{consents}"
    );
    assert!(page.contains(">Rotate now</button>") && page.contains(">Access check</button>"));
    assert!(
        !page.contains("Revoke and purge"),
        "an operator sees no revoke button"
    );
    let csrf = field(&page, "csrf");

    // Rotate now: one more IdP redemption, an attempt recorded, shown on the page.
    let calls = stack.refresh_calls().await;
    let (status, _, location) = olga
        .post(&format!("{detail}/rotate"), &[("csrf", &csrf)])
        .await;
    assert_eq!((status, location.as_deref()), (303, Some(detail.as_str())));
    assert_eq!(stack.refresh_calls().await, calls + 1);
    let manual = "SELECT COUNT(*) FROM rotation_attempts WHERE tenant_id = $1 AND source = 'manual' AND outcome = 'success'";
    assert_eq!(stack.scalar(manual, CONTOSO).await, 1);
    let (_, page, _) = olga.get(&detail).await;
    assert!(
        page.contains("Rotated:"),
        "the outcome is shown once: {page}"
    );
    let attempts = section(&page, "Latest rotation attempts", "Status changes");
    assert!(
        attempts.contains("<td>manual</td>") && attempts.contains(">success<"),
        "{attempts}"
    );
    let (_, page, _) = olga.get(&detail).await;
    assert!(!page.contains("Rotated:"), "only once");

    // Access check: a real redemption per configured resource, each issued with MFA.
    let calls = stack.refresh_calls().await;
    let (status, page, _) = olga
        .post(&format!("{detail}/check"), &[("csrf", &csrf)])
        .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(
        stack.refresh_calls().await,
        calls + 3,
        "the cache is bypassed"
    );
    for resource in [
        PARTNER_CENTER,
        "https://graph.microsoft.com",
        "https://management.azure.com",
    ] {
        let row = section(
            &page,
            &format!("<td class=\"mono\">{resource}</td>"),
            "</tr>",
        );
        assert!(row.contains(">issued<") && row.contains("yes"), "{row}");
    }
    assert!(
        page.contains("user_impersonation") && page.contains("User.Read"),
        "scp shown: {page}"
    );
    assert_no_tokens(&stack, &page).await;
    let checks = "SELECT COUNT(*) FROM rotation_attempts WHERE tenant_id = $1 AND source = 'check'";
    assert_eq!(stack.scalar(checks, CONTOSO).await, 3);
    let held = "SELECT COUNT(*) FROM grants WHERE tenant_id = $1 AND sealed IS NOT NULL";
    assert_eq!(
        stack.scalar(held, CONTOSO).await,
        2,
        "each new RT written back; two kept"
    );

    // Onboarding link: shown once in a labelled readonly field, pinned to the tenant.
    let (status, page, _) = olga
        .post(&format!("{detail}/invite"), &[("csrf", &csrf)])
        .await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("<label for=\"invitation-url\">"), "{page}");
    let marker = "readonly value=\"";
    let start = page.find(marker).unwrap() + marker.len();
    let url = page[start..].split('"').next().unwrap().to_string();
    assert!(
        url.starts_with(&format!("{}/onboard/i/", stack.sv())),
        "{url}"
    );
    let invited = "SELECT COUNT(*) FROM invitations WHERE tenant_id = $1";
    assert_eq!(stack.scalar(invited, CONTOSO).await, 1);
    let landing = stack.http.get(&url).send().await.unwrap();
    assert_eq!(landing.status(), 200);
    assert!(landing.text().await.unwrap().contains("Grant consent"));

    // An operator cannot revoke; forms without this session's CSRF token do nothing.
    let attempts_before = stack
        .scalar(
            "SELECT COUNT(*) FROM rotation_attempts WHERE tenant_id = $1",
            CONTOSO,
        )
        .await;
    let (status, _, _) = olga
        .post(
            &format!("{detail}/revoke"),
            &[("csrf", &csrf), ("confirm", CONTOSO)],
        )
        .await;
    assert_eq!(status, 403);
    for form in [vec![], vec![("csrf", "forged")]] {
        for act in ["rotate", "check", "invite"] {
            let (status, _, _) = olga.post(&format!("{detail}/{act}"), &form).await;
            assert_eq!(status, 403, "{act} with {form:?}");
        }
    }
    assert_eq!(
        stack
            .scalar(
                "SELECT COUNT(*) FROM rotation_attempts WHERE tenant_id = $1",
                CONTOSO
            )
            .await,
        attempts_before
    );
    assert_eq!(stack.scalar(invited, CONTOSO).await, 1);
    assert_eq!(stack.partner(CONTOSO).unwrap()["status"], "active");

    // Every action is in the audit log under the operator's name.
    for action in [
        "ops.partner.rotate",
        "ops.partner.check",
        "ops.partner.invite",
    ] {
        let db = stack.db().await;
        let row: (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM audit_log WHERE action = $1 AND actor = 'ops:olga' AND tenant_id = $2",
        )
        .bind(action)
        .bind(CONTOSO)
        .fetch_one(db.pool())
        .await
        .unwrap();
        assert_eq!(row.0, 1, "{action}");
    }

    // An admin revokes: a mistyped confirmation is refused, the right one shreds everything.
    let mut alice = Operator::signed_in(&stack, "alice", "admin").await;
    let (_, page, _) = alice.get(&detail).await;
    assert!(page.contains("<label for=\"confirm\">"), "{page}");
    let csrf = field(&page, "csrf");
    for typed in ["", WINGTIP, "contoso"] {
        let (status, _, _) = alice
            .post(
                &format!("{detail}/revoke"),
                &[("csrf", &csrf), ("confirm", typed)],
            )
            .await;
        assert_eq!(status, 400, "{typed:?}");
    }
    assert_eq!(stack.scalar(held, CONTOSO).await, 2, "nothing shredded yet");
    let (status, _, location) = alice
        .post(
            &format!("{detail}/revoke"),
            &[("csrf", &csrf), ("confirm", &CONTOSO.to_uppercase())],
        )
        .await;
    assert_eq!((status, location.as_deref()), (303, Some(detail.as_str())));
    assert_eq!(stack.scalar(held, CONTOSO).await, 0, "no sealed bytes left");
    let keys = "SELECT COUNT(*) FROM grants WHERE tenant_id = $1 AND (wrapped_key IS NOT NULL OR kek_id IS NOT NULL)";
    assert_eq!(
        stack.scalar(keys, CONTOSO).await,
        0,
        "no wrapped data key left"
    );
    assert_eq!(stack.partner(CONTOSO).unwrap()["status"], "revoked");
    let (_, page, _) = alice.get(&detail).await;
    assert!(
        page.contains("Revoked:") && page.contains("crypto-shredded"),
        "{page}"
    );
    let revoked =
        "SELECT COUNT(*) FROM audit_log WHERE action = 'ops.partner.revoke' AND tenant_id = $1";
    assert_eq!(stack.scalar(revoked, CONTOSO).await, 1);

    // The token API refuses the partner, even though a token was cached before.
    let (status, problem) = stack.token(&creds, CONTOSO, token_body()).await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (409, Some("reconsent_required"))
    );
}

async fn viewers_see_no_actions_and_cannot_post_them(backend: Backend) {
    let Some(db) = support::fresh_database(backend).await else {
        return;
    };
    let stack = Stack::start(&db.url, StackOptions::default()).await;
    stack.consent("jane@contoso.example").await;
    let detail = format!("/ops/partners/{CONTOSO}");
    let mut vera = Operator::signed_in(&stack, "vera", "viewer").await;
    let (status, page, _) = vera.get(&detail).await;
    assert_eq!(status, 200, "{page}");
    for button in [
        "Rotate now",
        "Access check",
        "Onboarding link",
        "Revoke and purge",
    ] {
        assert!(!page.contains(button), "a viewer sees {button}");
    }
    // The page's own CSRF token (sign-out form) does not make a viewer an operator.
    let csrf = field(&page, "csrf");
    let calls = stack.refresh_calls().await;
    for act in ["rotate", "check", "invite", "revoke"] {
        let (status, page, _) = vera
            .post(
                &format!("{detail}/{act}"),
                &[("csrf", &csrf), ("confirm", CONTOSO)],
            )
            .await;
        assert_eq!(status, 403, "{act}: {page}");
    }
    assert_eq!(stack.refresh_calls().await, calls, "no redemption");
    for (sql, expected) in [
        (
            "SELECT COUNT(*) FROM rotation_attempts WHERE tenant_id = $1",
            0,
        ),
        ("SELECT COUNT(*) FROM invitations WHERE tenant_id = $1", 0),
        (
            "SELECT COUNT(*) FROM grants WHERE tenant_id = $1 AND sealed IS NOT NULL",
            1,
        ),
        (
            "SELECT COUNT(*) FROM audit_log WHERE action LIKE 'ops.partner.%' AND tenant_id = $1",
            0,
        ),
    ] {
        assert_eq!(stack.scalar(sql, CONTOSO).await, expected, "{sql}");
    }
    assert_eq!(stack.partner(CONTOSO).unwrap()["status"], "active");

    // Signed out, the pages send to sign-in and the actions do nothing either.
    let mut stranger = Operator::new(&stack);
    let (status, _, headers) = stranger.get("/ops/partners").await;
    assert_eq!(
        (status, &headers["location"]),
        (303, &"/ops/signin".parse().unwrap())
    );
    let (status, _, _) = stranger
        .post(&format!("{detail}/rotate"), &[("csrf", "x")])
        .await;
    assert_eq!(status, 303);
    assert_eq!(stack.refresh_calls().await, calls);
}

/// A revocation made on one replica reaches the others' token caches within a second (the
/// broker's status watch): replica 1 served Contoso from its cache, and stops once replica 0
/// revokes it. PostgreSQL only: replicas need a shared database.
#[tokio::test(flavor = "multi_thread")]
async fn a_revocation_reaches_every_replica() {
    let Some(db) = support::fresh_database(Backend::Postgres).await else {
        return;
    };
    let stack = Stack::start(&db.url, StackOptions::default().replicas(2)).await;
    stack.consent("jane@contoso.example").await;
    let creds = stack.client(&[PARTNER_CENTER]);
    stack.cache_on_every_replica(&creds, CONTOSO).await;

    let mut alice = Operator::signed_in(&stack, "alice", "admin").await;
    let detail = format!("/ops/partners/{CONTOSO}");
    let csrf = alice.csrf(&detail).await;
    let (status, _, _) = alice
        .post(
            &format!("{detail}/revoke"),
            &[("csrf", &csrf), ("confirm", CONTOSO)],
        )
        .await;
    assert_eq!(status, 303);
    eventually(
        std::time::Duration::from_secs(5),
        "replica 1 refuses the revoked partner",
        || async { stack.token_at(1, &creds, CONTOSO, token_body()).await.0 == 409 },
    )
    .await;
}

on_both_backends!(
    list_searches_filters_and_pages,
    operators_rotate_check_and_invite_admins_revoke,
    viewers_see_no_actions_and_cannot_post_them
);
