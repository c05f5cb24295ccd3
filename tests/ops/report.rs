//! The security report (`/ops/security`) and its two CSV downloads: the MFA share per client
//! after real token requests, refusals with their problem code, partners consented without
//! MFA, and CSV-injection defence.

use std::time::Duration;

use serde_json::Value;

use super::Operator;
use super::support::stack::*;
use super::support::{self, Backend};
use crate::on_both_backends;

const PAGES: [&str; 3] = [
    "/ops/security",
    "/ops/security/clients.csv",
    "/ops/security/requests.csv",
];

const REQUESTS_HEADER: [&str; 9] = [
    "time",
    "client_id",
    "tenant_id",
    "resource",
    "purpose",
    "outcome",
    "cached",
    "mfa",
    "customer_tenant_id",
];

/// RFC 4180 as the service writes it: CRLF rows, quoted fields with doubled quotes.
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut cell = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                cell.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => cell.push(c),
            (false, '"') => quoted = true,
            (false, ',') => row.push(std::mem::take(&mut cell)),
            (false, '\r') if chars.peek() == Some(&'\n') => {
                chars.next();
                row.push(std::mem::take(&mut cell));
                rows.push(std::mem::take(&mut row));
            }
            (false, c) => cell.push(c),
        }
    }
    assert!(
        cell.is_empty() && row.is_empty(),
        "the last row ends with CRLF"
    );
    rows
}

/// Downloads a CSV, checking the headers of a download.
async fn download(op: &mut Operator<'_>, path: &str) -> Vec<Vec<String>> {
    let (status, body, headers) = op.get(path).await;
    assert_eq!(status, 200, "{path}: {body}");
    assert_eq!(headers["content-type"], "text/csv; charset=utf-8");
    let disposition = headers["content-disposition"].to_str().unwrap();
    assert!(
        disposition.starts_with("attachment; filename=\"samvault-security-")
            && disposition.ends_with(".csv\""),
        "{disposition}"
    );
    assert_eq!(headers["cache-control"], "no-store");
    parse_csv(&body)
}

/// Waits for the request log's batch write (about a second) until the requests file has
/// `rows` rows besides its header.
async fn wait_for_requests(stack: &Stack, op: &Operator<'_>, rows: usize) {
    let cookie = op.cookie().expect("signed in");
    eventually(
        Duration::from_secs(15),
        &format!("{rows} rows in requests.csv"),
        || {
            let request = stack
                .http
                .get(format!("{}/ops/security/requests.csv", stack.sv()))
                .header("cookie", cookie.clone());
            async move {
                let body = request.send().await.unwrap().text().await.unwrap();
                parse_csv(&body).len() == rows + 1
            }
        },
    )
    .await;
}

fn client_named(stack: &Stack, name: &str) -> (String, String) {
    let created: Value = serde_json::from_str(&stack.cli(&[
        "client",
        "create",
        "--name",
        name,
        "--resource",
        PARTNER_CENTER,
        "--json",
    ]))
    .unwrap();
    (
        created["client_id"].as_str().unwrap().into(),
        created["client_secret"].as_str().unwrap().into(),
    )
}

/// The row of `client_id` in the clients file, as a map from column to value.
fn client_row(csv: &[Vec<String>], client_id: &str) -> std::collections::HashMap<String, String> {
    let header = &csv[0];
    let row = csv[1..]
        .iter()
        .find(|r| r[0] == client_id)
        .unwrap_or_else(|| panic!("{client_id} in {csv:?}"));
    header.iter().cloned().zip(row.iter().cloned()).collect()
}

async fn mfa_share_per_client_and_downloads(backend: Backend) {
    let Some(db) = support::fresh_database(backend).await else {
        return;
    };
    let stack = Stack::start(&db.url, StackOptions::default()).await;

    // Without a session every address of the report goes to sign-in.
    let mut stranger = Operator::new(&stack);
    for path in PAGES {
        let (status, _, headers) = stranger.get(path).await;
        assert_eq!(
            (status, &headers["location"]),
            (303, &"/ops/signin".parse().unwrap()),
            "{path}"
        );
    }

    stack.consent("jane@contoso.example").await;
    let mut op = Operator::signed_in(&stack, "alice", "viewer").await;

    // Nothing yet: honest empty states, and files with only their header.
    let (status, page, _) = op.get("/ops/security").await;
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains("No token requests in the last 7 days."),
        "{page}"
    );
    assert!(page.contains("Every partner consented with MFA."), "{page}");
    assert_eq!(
        download(&mut op, "/ops/security/requests.csv").await,
        vec![REQUESTS_HEADER.map(String::from).to_vec()]
    );
    assert_eq!(
        download(&mut op, "/ops/security/clients.csv").await.len(),
        1
    );

    // Four requests for Contoso (one exchange, three from the cache) and one refusal.
    let creds = stack.client(&[PARTNER_CENTER]);
    for i in 0..4 {
        let (status, body) = stack.token(&creds, CONTOSO, token_body()).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["mfa"], true);
        assert_eq!(body["cached"], i > 0, "{body}");
    }
    let unknown = support::new_tenant().to_string();
    let (status, body) = stack.token(&creds, &unknown, token_body()).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("partner_not_found"))
    );
    // A client whose name is a spreadsheet formula.
    let formula = "=HYPERLINK(\"http://evil.example\",\"open me\")";
    let formula_client = client_named(&stack, formula);
    let (status, _) = stack.token(&formula_client, CONTOSO, token_body()).await;
    assert_eq!(status, 200);

    wait_for_requests(&stack, &op, 6).await;
    let requests = download(&mut op, "/ops/security/requests.csv").await;
    assert_eq!(requests[0], REQUESTS_HEADER);
    assert_eq!(requests.len(), 7, "one row per request made: {requests:?}");
    let ours: Vec<&Vec<String>> = requests[1..].iter().filter(|r| r[1] == creds.0).collect();
    assert_eq!(ours.len(), 5);
    let issued: Vec<&&Vec<String>> = ours.iter().filter(|r| r[5] == "issued").collect();
    assert_eq!(issued.len(), 4);
    for row in &issued {
        assert_eq!(
            (
                row[2].as_str(),
                row[3].as_str(),
                row[4].as_str(),
                row[7].as_str()
            ),
            (CONTOSO, PARTNER_CENTER, "nightly invoice sync", "yes"),
            "{row:?}"
        );
        assert!(
            time::OffsetDateTime::parse(&row[0], &time::format_description::well_known::Rfc3339)
                .is_ok(),
            "RFC 3339 time: {row:?}"
        );
    }
    assert_eq!(
        issued.iter().filter(|r| r[6] == "yes").count(),
        3,
        "three from the cache"
    );
    let refused: Vec<&&Vec<String>> = ours.iter().filter(|r| r[5] != "issued").collect();
    assert_eq!(refused.len(), 1);
    assert_eq!(
        (
            refused[0][2].as_str(),
            refused[0][5].as_str(),
            refused[0][6].as_str(),
            refused[0][7].as_str()
        ),
        (unknown.as_str(), "partner_not_found", "no", ""),
    );

    // The summary: our client at 100 % (the refusal carried no token, so it is not counted
    // against the share).
    let clients = download(&mut op, "/ops/security/clients.csv").await;
    assert_eq!(clients.len(), 3, "{clients:?}");
    let row = client_row(&clients, &creds.0);
    for (column, value) in [
        ("client_name", "test"),
        ("requests", "5"),
        ("issued", "4"),
        ("issued_mfa", "4"),
        ("cached", "3"),
        ("mfa_share_percent", "100"),
        ("verdict", "meets"),
    ] {
        assert_eq!(row[column], value, "{column}: {row:?}");
    }
    // CSV injection: the formula comes out as text.
    let raw = op.get("/ops/security/clients.csv").await.1;
    assert!(raw.contains("\"'=HYPERLINK("), "{raw}");
    assert_eq!(
        client_row(&clients, &formula_client.0)["client_name"],
        format!("'{formula}")
    );

    // The page: overall and per client, with the window's dates.
    let (_, page, _) = op.get("/ops/security").await;
    assert!(page.contains(&creds.0), "{page}");
    assert!(page.contains("100 %"), "{page}");
    assert!(page.contains("Meets the requirement"), "{page}");
    assert!(!page.contains("Below target"), "{page}");
    let today = samvault::storage::rfc3339(samvault::storage::now())[..10].to_string();
    assert!(page.contains(&today), "the window's end date: {page}");
    assert!(
        page.contains("&#61;HYPERLINK") || page.contains("=HYPERLINK"),
        "{page}"
    );
    assert!(!page.contains("<script"), "{page}");
}

async fn a_consent_without_mfa_puts_its_clients_below_target(backend: Backend) {
    let Some(db) = support::fresh_database(backend).await else {
        return;
    };
    // This CPV lets consents without MFA through: the report is where it shows.
    let stack = Stack::start(
        &db.url,
        StackOptions::default().env("SAMVAULT_REQUIRE_MFA", "false"),
    )
    .await;
    stack.consent("jane@contoso.example").await;
    let john = Browser::new(&stack)
        .consent("john@fabrikam.example", false, "accept")
        .await;
    assert_eq!(john.status, 200, "{}", john.body);
    let mut op = Operator::signed_in(&stack, "alice", "viewer").await;

    let creds = stack.client(&[PARTNER_CENTER]);
    for tenant in [CONTOSO, FABRIKAM] {
        let (status, body) = stack.token(&creds, tenant, token_body()).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["mfa"], tenant == CONTOSO);
    }
    wait_for_requests(&stack, &op, 2).await;

    let requests = download(&mut op, "/ops/security/requests.csv").await;
    let mfa_of = |tenant: &str| {
        requests[1..]
            .iter()
            .find(|r| r[2] == tenant)
            .map(|r| r[7].clone())
    };
    assert_eq!(mfa_of(CONTOSO).as_deref(), Some("yes"));
    assert_eq!(mfa_of(FABRIKAM).as_deref(), Some("no"));

    let row = client_row(
        &download(&mut op, "/ops/security/clients.csv").await,
        &creds.0,
    );
    assert_eq!(
        (
            row["issued"].as_str(),
            row["issued_mfa"].as_str(),
            row["mfa_share_percent"].as_str(),
            row["verdict"].as_str()
        ),
        ("2", "1", "50", "below_target")
    );

    let (_, page, _) = op.get("/ops/security").await;
    assert!(page.contains("50 %"), "{page}");
    assert!(page.contains("Below target"), "{page}");
    assert!(page.contains("consent again with MFA"), "{page}");
    // The consents: one with MFA, Fabrikam without, named with who consented.
    assert!(
        page.contains("1 partner consented with MFA; 1 without."),
        "{page}"
    );
    assert!(
        page.contains(FABRIKAM) && page.contains("john@fabrikam.example"),
        "{page}"
    );
    assert!(
        !page.contains("Every partner consented with MFA."),
        "{page}"
    );
}

on_both_backends!(
    mfa_share_per_client_and_downloads,
    a_consent_without_mfa_puts_its_clients_below_target
);
