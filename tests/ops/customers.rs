//! The customers of a partner on its dashboard page (issue 16): the list (status, reason,
//! last sync, last token, grants applied), sync, consent all, consent one, remove with a typed
//! confirmation, the customer access check, the overview's customers per status — against the
//! dev IdP's demo directory, where Contoso's customers are Adatum, Northwind and Tailspin
//! (whose delegated-admin relationship ended) — with their roles, CSRF and audit rows.

use serde_json::{Value, json};

use super::support::stack::*;
use super::support::{self, Backend};
use super::{Operator, page_text};
use crate::on_both_backends;

const ADATUM: &str = "7b1e0c3a-5d2f-4c8e-9a6b-00000000c001";
const NORTHWIND: &str = "7b1e0c3a-5d2f-4c8e-9a6b-00000000c002";
const TAILSPIN: &str = "7b1e0c3a-5d2f-4c8e-9a6b-00000000c003";
/// Wingtip's customer: not Contoso's.
const LITWARE: &str = "7b1e0c3a-5d2f-4c8e-9a6b-00000000c004";
const GRAPH: &str = "https://graph.microsoft.com";
/// A customer the tests add to Contoso's Partner Center list after the first sync.
const FOURTH_COFFEE: &str = "7b1e0c3a-5d2f-4c8e-9a6b-00000000c0f4";

/// A stack whose customers are consented only when someone asks (so each step's effect is
/// the step's own), with Contoso consented.
async fn contoso_stack(db_url: &str) -> Stack {
    let options = StackOptions::default().env("SAMVAULT_CUSTOMER_AUTO_CONSENT", "false");
    let stack = Stack::start(db_url, options).await;
    stack.consent("jane@contoso.example").await;
    stack
}

fn detail() -> String {
    format!("/ops/partners/{CONTOSO}")
}

/// The table row of one customer on a partner's page (empty when it is not listed).
fn row<'a>(page: &'a str, customer: &str) -> &'a str {
    let marker = format!("<tr id=\"customer-{customer}\"");
    let Some(start) = page.find(&marker) else {
        return "";
    };
    let end = page[start..]
        .find("</tr>")
        .map_or(page.len(), |e| start + e);
    &page[start..end]
}

/// The customers section of a partner's page.
fn customers_section(page: &str) -> &str {
    let start = page
        .find("<h2 id=\"customers\">")
        .unwrap_or_else(|| panic!("no customers section: {page}"));
    let end = page[start..]
        .find("<h2>Consent history</h2>")
        .map_or(page.len(), |e| start + e);
    &page[start..end]
}

/// Whether `customer`'s row shows `status` as its badge.
fn shows_status(page: &str, customer: &str, status: &str) -> bool {
    row(page, customer).contains(&format!("<span class=\"badge {status}\">{status}</span>"))
}

/// The customer as the dev IdP knows it: its relationship and the apps consented there.
async fn sim_customer(stack: &Stack, customer: &str) -> Value {
    stack
        .sim(
            reqwest::Method::GET,
            &format!("customers/{customer}"),
            Value::Null,
        )
        .await
}

async fn consented_in_sim(stack: &Stack, customer: &str) -> bool {
    let view = sim_customer(stack, customer).await;
    view["consents"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["application_id"] == DEMO_CLIENT_ID)
}

/// Audit rows of `action` by `actor` about Contoso whose detail names `customer` ("" for any).
async fn audited(stack: &Stack, action: &str, actor: &str, customer: &str) -> i64 {
    use sqlx::Row;
    let db = stack.db().await;
    sqlx::query(
        "SELECT COUNT(*) AS n FROM audit_log WHERE action = $1 AND actor = $2 \
         AND tenant_id = $3 AND detail LIKE $4",
    )
    .bind(action)
    .bind(actor)
    .bind(CONTOSO)
    .bind(format!("%{customer}%"))
    .fetch_one(db.pool())
    .await
    .unwrap()
    .try_get::<i64, _>("n")
    .unwrap()
}

async fn customer_status(stack: &Stack, customer: &str) -> String {
    use sqlx::Row;
    let db = stack.db().await;
    sqlx::query(
        "SELECT status FROM customers WHERE partner_tenant_id = $1 AND customer_tenant_id = $2",
    )
    .bind(CONTOSO)
    .bind(customer)
    .fetch_one(db.pool())
    .await
    .unwrap()
    .try_get("status")
    .unwrap()
}

/// Everything a page shows is free of token material: no JWT, no refresh token of the IdP's.
async fn assert_no_tokens(stack: &Stack, page: &str) {
    assert!(!page.contains("eyJ"), "a JWT on the page: {page}");
    let grants = stack.sim(reqwest::Method::GET, "grants", Value::Null).await;
    for grant in grants.as_array().unwrap() {
        let rt = grant["refresh_token"].as_str().unwrap();
        assert!(!page.contains(rt), "a refresh token on the page");
    }
}

/// An integration with `customers:issue` asks for a Graph token in `customer` of Contoso.
async fn customer_token(stack: &Stack, customer: &str) -> (u16, Value) {
    let args = [
        "client",
        "create",
        "--name",
        "customers",
        "--json",
        "--permission",
        "customers:issue",
        "--resource",
        GRAPH,
    ];
    let created: Value = serde_json::from_str(&stack.cli(&args)).unwrap();
    let response = stack
        .http
        .post(format!(
            "{}/api/v1/partners/{CONTOSO}/customers/{customer}/token",
            stack.sv()
        ))
        .basic_auth(
            created["client_id"].as_str().unwrap(),
            created["client_secret"].as_str(),
        )
        .json(&json!({ "resource": GRAPH, "purpose": "dashboard test" }))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// One line of the customer access check: the row of `customer`.
fn check_row<'a>(page: &'a str, customer: &str) -> &'a str {
    let start = page
        .find(&format!("<tr id=\"check-{customer}\""))
        .unwrap_or_else(|| panic!("{customer} not checked: {page}"));
    let end = page[start..]
        .find("</tr>")
        .map_or(page.len(), |e| start + e);
    &page[start..end]
}

/// An operator syncs Contoso's customers, consents one, checks access to each, consents
/// all, removes one with a typed confirmation; the page shows each outcome, every action
/// has its audit row under the operator's name, and the overview counts customers per
/// status.
async fn operators_sync_consent_check_and_remove_customers(backend: Backend) {
    let Some(db) = support::fresh_database(backend).await else {
        return;
    };
    let stack = contoso_stack(&db.url).await;
    let detail = detail();
    let mut olga = Operator::signed_in(&stack, "olga", "operator").await;
    let (status, page, _) = olga.get(&detail).await;
    assert_eq!(status, 200, "{page}");
    let section = customers_section(&page);
    for button in [
        ">Sync customers</button>",
        ">Consent all</button>",
        ">Customer access check</button>",
    ] {
        assert!(section.contains(button), "{button}: {section}");
    }
    let csrf = field(&page, "csrf");

    // Sync: Partner Center's list becomes the table, each customer unconsented.
    let (status, page, location) = olga
        .post(&format!("{detail}/customers/sync"), &[("csrf", &csrf)])
        .await;
    assert_eq!(
        (status, location.as_deref()),
        (303, Some(detail.as_str())),
        "{page}"
    );
    let (_, page, _) = olga.get(&detail).await;
    let text = page_text(&page);
    assert!(text.contains("Synced:"), "the outcome is shown: {text}");
    for (customer, name, domain) in [
        (ADATUM, "Adatum", "adatum.example"),
        (NORTHWIND, "Northwind", "northwind.example"),
        (TAILSPIN, "Tailspin", "tailspin.example"),
    ] {
        let row = row(&page, customer);
        assert!(row.contains(name) && row.contains(domain), "{name}: {row}");
        assert!(shows_status(&page, customer, "unconsented"), "{row}");
        assert!(row.contains(" UTC"), "last sync shown: {row}");
        assert!(row.contains(">Consent</button>"), "{row}");
    }
    assert!(
        row(&page, LITWARE).is_empty(),
        "Wingtip's customer is not Contoso's"
    );
    assert_eq!(audited(&stack, "customer.sync", "ops:olga", "").await, 1);

    // A customer added to the Partner Center list appears at the next sync, not before.
    stack
        .sim(
            reqwest::Method::POST,
            &format!("partners/{CONTOSO}/customers"),
            json!({ "id": FOURTH_COFFEE, "name": "Fourth Coffee", "domain": "fourthcoffee.example" }),
        )
        .await;
    let (_, page, _) = olga.get(&detail).await;
    assert!(row(&page, FOURTH_COFFEE).is_empty());
    let (status, _, _) = olga
        .post(&format!("{detail}/customers/sync"), &[("csrf", &csrf)])
        .await;
    assert_eq!(status, 303);
    let (_, page, _) = olga.get(&detail).await;
    assert!(shows_status(&page, FOURTH_COFFEE, "unconsented"), "{page}");
    assert_eq!(audited(&stack, "customer.sync", "ops:olga", "").await, 2);

    // Consent one: Partner Center creates the app's consent in Adatum only.
    let (status, page, location) = olga
        .post(
            &format!("{detail}/customers/{ADATUM}/consent"),
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(
        (status, location.as_deref()),
        (303, Some(detail.as_str())),
        "{page}"
    );
    assert!(consented_in_sim(&stack, ADATUM).await);
    assert!(!consented_in_sim(&stack, NORTHWIND).await);
    let (_, page, _) = olga.get(&detail).await;
    assert!(shows_status(&page, ADATUM, "consented"), "{page}");
    assert!(
        row(&page, ADATUM).contains("Directory.Read.All"),
        "grants applied: {}",
        row(&page, ADATUM)
    );
    assert!(shows_status(&page, NORTHWIND, "unconsented"));
    assert_eq!(
        audited(&stack, "customer.consent", "ops:olga", ADATUM).await,
        1
    );

    // The customer access check: one redemption per customer for the first customer
    // resource; issued where consented, not consented, no delegated access where the
    // relationship ended. Never a token.
    let calls = stack.refresh_calls().await;
    let (status, page, _) = olga
        .post(&format!("{detail}/customers/check"), &[("csrf", &csrf)])
        .await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("https://graph.microsoft.com"), "{page}");
    for (customer, outcome) in [
        (ADATUM, ">issued<"),
        (NORTHWIND, ">not consented<"),
        (FOURTH_COFFEE, ">not consented<"),
        (TAILSPIN, ">no delegated access<"),
    ] {
        let line = check_row(&page, customer);
        assert!(line.contains(outcome), "{customer}: {line}");
    }
    assert!(
        check_row(&page, TAILSPIN).contains("AADSTS50020"),
        "{}",
        check_row(&page, TAILSPIN)
    );
    assert_eq!(
        stack.refresh_calls().await,
        calls + 4,
        "one redemption per customer"
    );
    assert_no_tokens(&stack, &page).await;
    assert_eq!(
        audited(&stack, "ops.customer.check", "ops:olga", TAILSPIN).await,
        1
    );
    // What the check learnt is on the partner's page: Tailspin's status and its reason. The
    // check's tokens were never handed out: Adatum's last token is still "never".
    let (_, page, _) = olga.get(&detail).await;
    assert!(
        row(&page, ADATUM).contains("<td>never</td>"),
        "{}",
        row(&page, ADATUM)
    );
    assert!(shows_status(&page, TAILSPIN, "access_denied"), "{page}");
    assert!(
        row(&page, TAILSPIN).contains("50020"),
        "the reason: {}",
        row(&page, TAILSPIN)
    );
    assert_eq!(customer_status(&stack, TAILSPIN).await, "access_denied");

    // An integration's token for Adatum is its last token.
    let (status, body) = customer_token(&stack, ADATUM).await;
    assert_eq!(status, 200, "{body}");
    let mut last_token = String::new();
    for _ in 0..100 {
        let (_, page, _) = olga.get(&detail).await;
        last_token = row(&page, ADATUM).to_string();
        if !last_token.contains("<td>never</td>") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(!last_token.contains("<td>never</td>"), "{last_token}");

    // The overview counts customers per status.
    let (status, page, _) = olga.get("/ops").await;
    assert_eq!(status, 200);
    let text = page_text(&page);
    for expected in [
        "4 Customers in all",
        "1 Consented",
        "2 Unconsented",
        "1 Access denied",
        "0 Consent failed",
        "0 Removed",
        "0 Gone",
    ] {
        assert!(
            text.contains(expected),
            "overview says {expected:?}: {text}"
        );
    }

    // Consent all: Northwind and Fourth Coffee are consented too.
    let (status, _, location) = olga
        .post(&format!("{detail}/customers/consent"), &[("csrf", &csrf)])
        .await;
    assert_eq!((status, location.as_deref()), (303, Some(detail.as_str())));
    assert!(consented_in_sim(&stack, NORTHWIND).await);
    assert!(consented_in_sim(&stack, FOURTH_COFFEE).await);
    let (_, page, _) = olga.get(&detail).await;
    assert!(shows_status(&page, NORTHWIND, "consented"), "{page}");
    assert!(shows_status(&page, FOURTH_COFFEE, "consented"), "{page}");
    assert!(audited(&stack, "customer.consent", "ops:olga", NORTHWIND).await >= 1);

    // Remove: the operator types the customer's domain or name; anything else changes
    // nothing.
    assert!(
        row(&page, NORTHWIND).contains("<label for=\"remove-"),
        "{}",
        row(&page, NORTHWIND)
    );
    let remove = format!("{detail}/customers/{NORTHWIND}/remove");
    for typed in [
        "",
        "adatum.example",
        "Northwind Traders",
        CONTOSO,
        NORTHWIND,
    ] {
        let (status, page, _) = olga
            .post(&remove, &[("csrf", &csrf), ("confirm", typed)])
            .await;
        assert_eq!(status, 400, "{typed:?}: {page}");
        assert!(
            page_text(&page).contains("does not match"),
            "{typed:?}: {page}"
        );
    }
    assert!(
        consented_in_sim(&stack, NORTHWIND).await,
        "nothing removed yet"
    );
    assert_eq!(audited(&stack, "customer.remove", "ops:olga", "").await, 0);
    let (status, _, location) = olga
        .post(
            &remove,
            &[("csrf", &csrf), ("confirm", " NorthWind.Example ")],
        )
        .await;
    assert_eq!((status, location.as_deref()), (303, Some(detail.as_str())));
    assert!(
        !consented_in_sim(&stack, NORTHWIND).await,
        "the consent is deleted"
    );
    assert!(consented_in_sim(&stack, ADATUM).await, "only Northwind's");
    let (_, page, _) = olga.get(&detail).await;
    assert!(shows_status(&page, NORTHWIND, "removed"), "{page}");
    assert!(
        !row(&page, NORTHWIND).contains(">Remove</button>"),
        "nothing left to remove: {}",
        row(&page, NORTHWIND)
    );
    assert_eq!(
        audited(&stack, "customer.remove", "ops:olga", NORTHWIND).await,
        1
    );
    // By name works as well (any case).
    let (status, _, _) = olga
        .post(
            &format!("{detail}/customers/{FOURTH_COFFEE}/remove"),
            &[("csrf", &csrf), ("confirm", "fourth coffee")],
        )
        .await;
    assert_eq!(status, 303);
    assert_eq!(customer_status(&stack, FOURTH_COFFEE).await, "removed");
    let (_, page, _) = olga.get("/ops").await;
    assert!(
        page_text(&page).contains("2 Removed"),
        "{}",
        page_text(&page)
    );
}

/// A viewer sees the customers but no button, and every customer action they (or a form
/// without this session's CSRF token) post is refused and changes nothing; bad and unknown
/// ids get clear 4xx pages.
async fn viewers_see_customers_and_hostile_ids_are_refused(backend: Backend) {
    let Some(db) = support::fresh_database(backend).await else {
        return;
    };
    let stack = contoso_stack(&db.url).await;
    // 60 more customers: the page lists 50 at a time.
    let more: Vec<Value> = (1..=60)
        .map(|k| json!({ "id": format!("7b1e0c3a-5d2f-4c8e-9a6b-1000000{k:05}"), "name": format!("Customer {k:02}") }))
        .collect();
    stack
        .sim(
            reqwest::Method::POST,
            &format!("partners/{CONTOSO}/customers"),
            json!({ "customers": more }),
        )
        .await;
    let detail = detail();
    let mut olga = Operator::signed_in(&stack, "olga", "operator").await;
    let csrf = olga.csrf(&detail).await;
    let (status, _, _) = olga
        .post(&format!("{detail}/customers/sync"), &[("csrf", &csrf)])
        .await;
    assert_eq!(status, 303);

    let mut vera = Operator::signed_in(&stack, "vera", "viewer").await;
    let (status, page, _) = vera.get(&detail).await;
    assert_eq!(status, 200, "{page}");
    let section = customers_section(&page);
    for customer in [ADATUM, NORTHWIND, TAILSPIN] {
        assert!(shows_status(&page, customer, "unconsented"), "{section}");
    }
    for button in [
        "Sync customers",
        "Consent all",
        "Customer access check",
        ">Consent</button>",
        ">Remove</button>",
    ] {
        assert!(!section.contains(button), "a viewer sees {button}");
    }
    // 63 customers in tenant-id order, 50 on the first page, the rest behind "More customers".
    let first: Vec<&str> = page
        .match_indices("<tr id=\"customer-")
        .map(|(at, _)| &page[at + 17..at + 53])
        .collect();
    assert_eq!(first.len(), 50, "{section}");
    assert_eq!(&first[..3], &[ADATUM, NORTHWIND, TAILSPIN]);
    let marker = "<a href=\"";
    let more_at = section
        .find(">More customers</a>")
        .expect("a link to the next customers");
    let start = section[..more_at].rfind(marker).unwrap() + marker.len();
    let next = section[start..more_at]
        .split('"')
        .next()
        .unwrap()
        .replace("&#38;", "&")
        .replace("&amp;", "&");
    let (status, rest, _) = vera.get(&next).await;
    assert_eq!(status, 200, "{next}: {rest}");
    let second: Vec<&str> = rest
        .match_indices("<tr id=\"customer-")
        .map(|(at, _)| &rest[at + 17..at + 53])
        .collect();
    assert_eq!(second.len(), 13, "{next}");
    assert!(
        second.iter().all(|c| !first.contains(c)),
        "no customer twice"
    );
    assert!(!customers_section(&rest).contains(">More customers</a>"));
    let viewer_csrf = field(&page, "csrf");
    let calls = stack.refresh_calls().await;
    let actions = [
        format!("{detail}/customers/sync"),
        format!("{detail}/customers/consent"),
        format!("{detail}/customers/check"),
        format!("{detail}/customers/{ADATUM}/consent"),
        format!("{detail}/customers/{ADATUM}/remove"),
    ];
    for path in &actions {
        let (status, page, _) = vera
            .post(
                path,
                &[("csrf", &viewer_csrf), ("confirm", "adatum.example")],
            )
            .await;
        assert_eq!(status, 403, "viewer {path}: {page}");
        // An operator's form without this session's token is refused as well.
        for form in [
            vec![],
            vec![("csrf", "forged"), ("confirm", "adatum.example")],
        ] {
            let (status, _, _) = olga.post(path, &form).await;
            assert_eq!(status, 403, "{path} with {form:?}");
        }
    }
    assert_eq!(stack.refresh_calls().await, calls, "no redemption");
    assert!(!consented_in_sim(&stack, ADATUM).await, "no consent");
    assert_eq!(customer_status(&stack, ADATUM).await, "unconsented");
    for action in [
        "customer.sync",
        "customer.consent",
        "customer.remove",
        "ops.customer.check",
    ] {
        assert_eq!(audited(&stack, action, "ops:vera", "").await, 0, "{action}");
    }

    // Hostile ids: a malformed customer or partner id is a 400, an unknown one (or another
    // partner's customer) a 404; never a 500, and nothing changes.
    let unknown = "00000000-0000-4000-8000-0000000000ff";
    let cases = [
        (format!("{detail}/customers/not-a-guid/consent"), 400),
        (format!("{detail}/customers/%3Cscript%3E/remove"), 400),
        (format!("{detail}/customers/{unknown}/consent"), 404),
        (format!("{detail}/customers/{unknown}/remove"), 404),
        (format!("{detail}/customers/{LITWARE}/consent"), 404),
        (format!("{detail}/customers/{LITWARE}/remove"), 404),
        (format!("/ops/partners/{unknown}/customers/sync"), 404),
        (format!("/ops/partners/{unknown}/customers/consent"), 404),
        (format!("/ops/partners/{unknown}/customers/check"), 404),
        (
            format!("/ops/partners/{unknown}/customers/{ADATUM}/consent"),
            404,
        ),
        (
            format!("/ops/partners/{WINGTIP}/customers/{LITWARE}/remove"),
            404,
        ),
        ("/ops/partners/not-a-tenant/customers/sync".to_string(), 400),
    ];
    for (path, expected) in &cases {
        let (status, page, _) = olga
            .post(path, &[("csrf", &csrf), ("confirm", "litware.example")])
            .await;
        assert_eq!(status, *expected, "{path}: {page}");
        assert!(page.contains("<h1"), "a page that says why: {page}");
    }
    for query in [
        "customers_after=nope",
        "customers_after=%00",
        "customers_after=a&customers_after=b",
    ] {
        let (status, _, _) = olga.get(&format!("{detail}?{query}")).await;
        assert_eq!(status, 400, "{query}");
    }
    assert!(!consented_in_sim(&stack, LITWARE).await);
    assert_eq!(customer_status(&stack, ADATUM).await, "unconsented");
    assert_eq!(audited(&stack, "customer.remove", "ops:olga", "").await, 0);
    assert_eq!(audited(&stack, "customer.consent", "ops:olga", "").await, 0);
}

on_both_backends!(
    operators_sync_consent_check_and_remove_customers,
    viewers_see_customers_and_hostile_ids_are_refused
);
