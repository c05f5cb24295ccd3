//! What the log says about error pages: an internal failure behind a page (here, the table a
//! page reads is gone) is logged exactly once, as an error naming the request's method and
//! route; a refusal (4xx) is the person's mistake, not samvault's, and is no error line.

use super::Operator;
use super::support::stack::*;
use super::support::{self, Backend};
use crate::on_both_backends;

/// The log's error lines (JSON, one event a line) from byte `from` on.
fn errors_since(stack: &Stack, from: usize) -> Vec<serde_json::Value> {
    stack.log(0)[from..]
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|event| event["level"] == "ERROR")
        .collect()
}

async fn rename_table(stack: &Stack, from: &str, to: &str) {
    let db = stack.db().await;
    let sql = format!("ALTER TABLE {from} RENAME TO {to}");
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .execute(db.pool())
        .await
        .unwrap();
}

/// Waits for `n` error lines after byte `from`, then a moment more so a second line for the
/// same failure (if any) would be there too.
async fn settled_errors(stack: &Stack, from: usize, n: usize) -> Vec<serde_json::Value> {
    eventually(
        std::time::Duration::from_secs(5),
        "the error line",
        || async { errors_since(stack, from).len() >= n },
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    errors_since(stack, from)
}

async fn an_internal_error_on_a_page_is_logged_once(backend: Backend) {
    let Some(db) = support::fresh_database(backend).await else {
        return;
    };
    let options = StackOptions::default().env("SAMVAULT_LOG_FORMAT", "json");
    let stack = Stack::start(&db.url, options).await;
    let mut admin = Operator::signed_in(&stack, "ada", "admin").await;
    let csrf = admin.csrf("/ops").await;

    // Refusals: no error line.
    let start = stack.log(0).len();
    let unknown = "/ops/partners/6f3a2a5e-0c1d-4a3b-8f4e-1c2d3e4f5a99";
    assert_eq!(admin.get(unknown).await.0, 404);
    assert_eq!(admin.get("/ops/audit?from=soon").await.0, 400);
    let (status, _, _) = admin
        .post("/ops/invitations", &[("csrf", "forged"), ("days", "7")])
        .await;
    assert_eq!(status, 403);
    assert_eq!(Operator::new(&stack).get("/onboard/i/unknown").await.0, 410);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(errors_since(&stack, start), Vec::<serde_json::Value>::new());

    // A page whose table is gone: a 503 page, one error line with the route.
    rename_table(&stack, "audit_log", "audit_log_gone").await;
    let start = stack.log(0).len();
    let (status, page, _) = admin.get("/ops/audit").await;
    assert_eq!(status, 503, "{page}");
    assert!(page.contains("samvault is unavailable"), "{page}");
    let errors = settled_errors(&stack, start, 1).await;
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(errors[0].to_string().contains("/ops/audit"), "{errors:#?}");

    // An action (a POST) whose table is gone.
    rename_table(&stack, "invitations", "invitations_gone").await;
    let start = stack.log(0).len();
    let (status, page, _) = admin
        .post("/ops/invitations", &[("csrf", &csrf), ("days", "7")])
        .await;
    assert_eq!(status, 503, "{page}");
    let errors = settled_errors(&stack, start, 1).await;
    assert_eq!(errors.len(), 1, "{errors:#?}");
    let line = errors[0].to_string();
    assert!(
        line.contains("POST") && line.contains("/ops/invitations"),
        "{line}"
    );

    // An onboarding page: the route is logged, never the invitation token in its path.
    let token = "QmFkVG9rZW5Gb3JBbkludml0YXRpb25UaGF0SXNOb3RUaGVyZQ";
    let start = stack.log(0).len();
    let (status, page, _) = Operator::new(&stack)
        .get(&format!("/onboard/i/{token}"))
        .await;
    assert_eq!(status, 503, "{page}");
    assert!(page.contains("Temporarily unavailable"), "{page}");
    let errors = settled_errors(&stack, start, 1).await;
    assert_eq!(errors.len(), 1, "{errors:#?}");
    let line = errors[0].to_string();
    assert!(line.contains("/onboard/i/"), "{line}");
    assert!(
        !stack.log(0).contains(token),
        "the invitation token is in the log"
    );
}

on_both_backends!(an_internal_error_on_a_page_is_logged_once);
