//! The audit log viewer (`/ops/audit`): filters, keyset paging, bad filter values, and the
//! "Verify chain" button on an intact and on a tampered log.

use std::collections::BTreeSet;

use serde_json::json;

use super::Operator;
use super::support::stack::*;
use super::support::{self, Backend};
use crate::on_both_backends;
use samvault::storage::audit;

/// The sequence numbers of the entries a page lists, in page order.
fn seqs(page: &str) -> Vec<i64> {
    page.split("<tr>\n<td class=\"num\">")
        .skip(1)
        .map(|rest| rest.split('<').next().unwrap().parse().unwrap())
        .collect()
}

/// The "older entries" link of a page, if any.
fn older_link(page: &str) -> Option<String> {
    let end = page.find("\" rel=\"next\">Older entries")?;
    let start = page[..end].rfind("href=\"")? + "href=\"".len();
    // The page escapes `&` in attributes (askama writes `&#38;`).
    Some(page[start..end].replace("&#38;", "&").replace("&amp;", "&"))
}

/// Every entry the viewer shows for `query`, following the "older entries" links.
async fn all_pages(op: &mut Operator<'_>, query: &str) -> (Vec<i64>, usize) {
    let mut path = format!("/ops/audit?{query}");
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let (status, page, _) = op.get(&path).await;
        assert_eq!(status, 200, "{path}: {page}");
        let on_page = seqs(&page);
        assert!(on_page.len() <= 50, "a page is bounded");
        seen.extend(on_page);
        pages += 1;
        assert!(pages < 100, "paging ends: {path}");
        match older_link(&page) {
            Some(next) => path = next,
            None => return (seen, pages),
        }
    }
}

async fn max_seq(stack: &Stack) -> i64 {
    use sqlx::Row;
    let db = stack.db().await;
    sqlx::query("SELECT COALESCE(MAX(seq), 0) AS n FROM audit_log")
        .fetch_one(db.pool())
        .await
        .unwrap()
        .try_get("n")
        .unwrap()
}

async fn verify(op: &mut Operator<'_>) -> (u16, String) {
    let csrf = op.csrf("/ops/audit").await;
    let (status, page, _) = op.post("/ops/audit/verify", &[("csrf", &csrf)]).await;
    (status, page)
}

async fn filters_paging_and_chain_verification(backend: Backend) {
    let Some(db) = support::fresh_database(backend).await else {
        return;
    };
    let stack = Stack::start(&db.url, StackOptions::default()).await;

    // Without a session: sign in first, and nothing is verified or recorded.
    let mut stranger = Operator::new(&stack);
    let (status, _, headers) = stranger.get("/ops/audit").await;
    assert_eq!(
        (status, &headers["location"]),
        (303, &"/ops/signin".parse().unwrap())
    );
    let (status, _, location) = stranger.post("/ops/audit/verify", &[("csrf", "x")]).await;
    assert_eq!((status, location.as_deref()), (303, Some("/ops/signin")));

    stack.consent("jane@contoso.example").await;
    let mut op = Operator::signed_in(&stack, "alice", "viewer").await;

    // 120 more entries, alternately for two tenants, so that paging has work to do.
    let direct = stack.audited_db().await;
    let mut wingtip_entries = BTreeSet::new();
    for i in 0..120 {
        let tenant = if i % 2 == 0 { CONTOSO } else { WINGTIP };
        let seq = audit::append(
            &direct,
            "test",
            "test.paging",
            Some(tenant),
            json!({ "i": i }),
            samvault::storage::now(),
        )
        .await
        .unwrap();
        if tenant == WINGTIP {
            wingtip_entries.insert(seq);
        }
    }
    let last = max_seq(&stack).await;
    assert!(last > 120);

    // Every entry exactly once, newest first, over bounded pages.
    let (seen, pages) = all_pages(&mut op, "").await;
    assert_eq!(seen, (1..=last).rev().collect::<Vec<_>>());
    assert!(pages >= 3, "{pages} pages");

    // Filters: by action, by action and tenant (across pages), by actor.
    let (consents, _) = all_pages(&mut op, "action=consent").await;
    assert_eq!(consents.len(), 1, "one consent: {consents:?}");
    // Back from an older page to the newest one, filters kept.
    let (_, page, _) = op.get("/ops/audit?action=test.paging&before=40").await;
    assert!(
        page.contains("<a href=\"/ops/audit?action=test.paging\">Newest entries</a>"),
        "{page}"
    );
    let (_, page, _) = op.get("/ops/audit?action=consent").await;
    assert!(
        page.contains("partner:jane@contoso.example") && page.contains(CONTOSO),
        "{page}"
    );
    assert!(!page.contains("test.paging"), "{page}");
    let (wingtip, pages) =
        all_pages(&mut op, &format!("action=test.paging&tenant={WINGTIP}")).await;
    assert_eq!(
        wingtip.iter().copied().collect::<BTreeSet<_>>(),
        wingtip_entries
    );
    assert_eq!(wingtip.len(), 60, "each entry once");
    assert_eq!(pages, 2);
    // Upper-case tenant ids are the same tenant.
    let (upper, _) = all_pages(&mut op, &format!("tenant={}", WINGTIP.to_uppercase())).await;
    assert_eq!(upper.len(), 60);
    let (alice, _) = all_pages(&mut op, "actor=ops:alice").await;
    assert_eq!(alice.len(), 2, "sign-in and password change: {alice:?}");
    let (nobody, _) = all_pages(&mut op, "actor=ops:mallory").await;
    assert!(nobody.is_empty());

    // Dates (UTC days): today holds everything, tomorrow and yesterday nothing.
    let day = |offset: i64| {
        samvault::storage::rfc3339(samvault::storage::now() + offset * 86_400)[..10].to_string()
    };
    let (today, _) = all_pages(&mut op, &format!("from={}&to={}", day(0), day(0))).await;
    assert_eq!(today.len() as i64, last);
    let (_, page, _) = op.get(&format!("/ops/audit?from={}", day(1))).await;
    assert!(
        seqs(&page).is_empty() && page.contains("No audit entries match these filters."),
        "{page}"
    );
    let (yesterday, _) = all_pages(&mut op, &format!("to={}", day(-1))).await;
    assert!(yesterday.is_empty());

    // Bad filter values: a 400 page, never a 500.
    for query in [
        "tenant=contoso".to_string(),
        "from=2026-13-01".into(),
        "to=tomorrow".into(),
        "before=abc".into(),
        "before=-5".into(),
        "before=99999999999999999999999".into(),
        "actor=a%01b".into(),
        format!("action={}", "x".repeat(201)),
        format!("from={}&to={}", day(1), day(0)),
    ] {
        let (status, page, _) = op.get(&format!("/ops/audit?{query}")).await;
        assert_eq!(status, 400, "{query}: {page}");
    }

    // Bytes that are not UTF-8 are read as U+FFFD, which no actor has.
    let (status, page, _) = op.get("/ops/audit?actor=%FF").await;
    assert_eq!(status, 200, "{page}");
    assert!(seqs(&page).is_empty());

    // Verify on an intact log, as a viewer.
    let before = max_seq(&stack).await;
    let (status, page) = verify(&mut op).await;
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains(&format!("{before} entries, chain intact")),
        "{page}"
    );
    let (verifications, _) = all_pages(&mut op, "action=ops.audit.verify").await;
    assert_eq!(
        verifications,
        vec![before + 1],
        "the verification is audited"
    );

    // Without the session's CSRF token: refused, and not recorded.
    let (status, _, _) = op.post("/ops/audit/verify", &[]).await;
    assert_eq!(status, 403);
    let (status, _, _) = op.post("/ops/audit/verify", &[("csrf", "forged")]).await;
    assert_eq!(status, 403);
    assert_eq!(max_seq(&stack).await, before + 1);

    // Someone edits one entry in the database: the chain is broken exactly there.
    let tampered = consents[0];
    sqlx::query("UPDATE audit_log SET detail = $1 WHERE seq = $2")
        .bind(r#"{"upn":"someone-else@contoso.example"}"#)
        .bind(tampered)
        .execute(direct.pool())
        .await
        .unwrap();
    let (status, page) = verify(&mut op).await;
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains(&format!("The chain is broken at entry #{tampered}")),
        "{page}"
    );
    assert!(!page.contains("chain intact"), "{page}");
    let (_, page, _) = op.get("/ops/audit?action=ops.audit.verify").await;
    assert!(
        page.contains(&format!("&#34;broken_at&#34;:{tampered}"))
            || page.contains(&format!("\"broken_at\":{tampered}")),
        "{page}"
    );

    // The old unkeyed scheme let a database writer recompute every hash after an edit; the
    // MACs need the vault's audit key, so the chain stays broken.
    support::recompute_plain_chain(&direct, 1).await;
    let (status, page) = verify(&mut op).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("The chain is broken at entry #1"), "{page}");
}

on_both_backends!(filters_paging_and_chain_verification);
