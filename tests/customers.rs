//! Customers of the partners (issue 16, SPEC §6): storage on both databases, then discovery
//! and CPV consent against the real dev IdP and samvault processes.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::Method;
use samvault::domain::{CustomerStatus, TenantId};
use samvault::storage::Db;
use samvault::storage::audit::{self, AuditEvent, AuditFilter};
use samvault::storage::customers::{self, ListedCustomer};
use samvault::storage::partners::{self, NewConsent, StoredGrant, grant_context};
use serde_json::{Value, json};
use support::stack::*;
use support::webhook::*;
use support::*;

const T0: i64 = 1_700_000_000;

/// A partner row to hang customers on (customers reference their partner).
async fn partner(db: &Db) -> TenantId {
    let tenant = new_tenant();
    let vault = local_vault();
    let consent = NewConsent {
        tenant_id: tenant.clone(),
        display_name: "Contoso".into(),
        domain: Some("contoso.example".into()),
        upn: "jane@contoso.example".into(),
        oid: None,
        user_name: None,
        mfa: true,
        amr: vec!["pwd".into(), "mfa".into()],
        scopes: "https://api.partnercenter.microsoft.com/user_impersonation".into(),
        invitation_id: None,
    };
    let grant = StoredGrant {
        version: 1,
        sealed: vault
            .vault
            .seal(b"rt", &grant_context(&tenant, 1))
            .await
            .unwrap(),
    };
    partners::record_consent(db, &consent, &grant, T0, T0 + 86_400)
        .await
        .unwrap();
    tenant
}

fn listed(id: &TenantId, name: &str) -> ListedCustomer {
    ListedCustomer {
        customer_tenant_id: id.clone(),
        pc_customer_id: id.as_str().to_string(),
        name: name.into(),
        domain: Some(format!("{}.example", name.to_lowercase())),
    }
}

both_backends!(storage_round_trip, |url| async move {
    let db = open(&url).await;
    let p = partner(&db).await;
    let (a, b, c) = (new_tenant(), new_tenant(), new_tenant());
    let changes = customers::upsert_listed(
        &db,
        &p,
        &[listed(&a, "Adatum"), listed(&b, "Northwind")],
        T0,
        Some(T0),
    )
    .await
    .unwrap();
    assert_eq!(changes.len(), 2, "two new customers");
    assert!(changes.iter().all(|c| c.from.is_none()));

    let row = customers::get(&db, &p, &a).await.unwrap().unwrap();
    assert_eq!(row.status, CustomerStatus::Unconsented);
    assert_eq!(row.name, "Adatum");
    assert_eq!(row.domain.as_deref(), Some("adatum.example"));
    assert_eq!((row.first_seen_at, row.last_seen_at), (T0, T0));
    assert_eq!(row.next_consent_at, Some(T0));
    assert!(
        customers::get(&db, &new_tenant(), &a)
            .await
            .unwrap()
            .is_none()
    );

    // The next sync lists A (renamed) and C; B vanished.
    let changes = customers::upsert_listed(
        &db,
        &p,
        &[listed(&a, "Adatum2"), listed(&c, "Tailspin")],
        T0 + 10,
        None,
    )
    .await
    .unwrap();
    assert_eq!(changes.len(), 1, "only C is new: {changes:?}");
    let known = customers::listed_ids(&db, &p).await.unwrap();
    assert_eq!(known.len(), 3);
    let unlisted: Vec<_> = known.into_iter().filter(|(id, _)| *id == b).collect();
    let gone = customers::mark_gone(&db, &p, &unlisted, T0 + 10, "not listed")
        .await
        .unwrap();
    assert_eq!(gone.len(), 1);
    assert_eq!(gone[0].customer_tenant_id, b);
    assert_eq!(gone[0].from, Some(CustomerStatus::Unconsented));
    let row = customers::get(&db, &p, &a).await.unwrap().unwrap();
    assert_eq!(
        (row.name.as_str(), row.first_seen_at, row.last_seen_at),
        ("Adatum2", T0, T0 + 10)
    );
    let row = customers::get(&db, &p, &c).await.unwrap().unwrap();
    assert_eq!(row.next_consent_at, None, "no automatic consent asked");
    let row = customers::get(&db, &p, &b).await.unwrap().unwrap();
    assert_eq!(
        (row.status, row.status_changed_at),
        (CustomerStatus::Gone, T0 + 10)
    );
    assert!(
        customers::mark_gone(&db, &p, &unlisted, T0 + 10, "x")
            .await
            .unwrap()
            .is_empty(),
        "already gone"
    );

    // Listed again: unconsented again.
    let back =
        customers::upsert_listed(&db, &p, &[listed(&b, "Northwind")], T0 + 20, Some(T0 + 20))
            .await
            .unwrap();
    assert_eq!(back[0].from, Some(CustomerStatus::Gone));
    let row = customers::get(&db, &p, &b).await.unwrap().unwrap();
    assert_eq!(
        (row.status, row.next_consent_at),
        (CustomerStatus::Unconsented, Some(T0 + 20))
    );

    // set_status reports a change of status only.
    let prev = customers::set_status(
        &db,
        &p,
        &a,
        CustomerStatus::AccessDenied,
        Some("50020"),
        T0 + 30,
    )
    .await
    .unwrap();
    assert_eq!(prev, Some(CustomerStatus::Unconsented));
    let same = customers::set_status(
        &db,
        &p,
        &a,
        CustomerStatus::AccessDenied,
        Some("again"),
        T0 + 40,
    )
    .await
    .unwrap();
    assert_eq!(same, None);
    let row = customers::get(&db, &p, &a).await.unwrap().unwrap();
    assert_eq!(
        (row.reason.as_deref(), row.status_changed_at),
        (Some("again"), T0 + 30)
    );
    let unknown = customers::set_status(&db, &p, &new_tenant(), CustomerStatus::Gone, None, T0)
        .await
        .unwrap();
    assert_eq!(unknown, None);

    customers::touch_token(&db, &p, &c, T0 + 50).await.unwrap();
    let row = customers::get(&db, &p, &c).await.unwrap().unwrap();
    assert_eq!(row.last_token_at, Some(T0 + 50));

    // Keyset pages in tenant-id order.
    let mut ids = [a.clone(), b.clone(), c.clone()];
    ids.sort_by(|x, y| x.as_str().cmp(y.as_str()));
    let first = customers::list(&db, &p, None, 2).await.unwrap();
    assert_eq!(
        first
            .iter()
            .map(|r| r.customer_tenant_id.clone())
            .collect::<Vec<_>>(),
        ids[..2]
    );
    let rest = customers::list(&db, &p, Some(&first[1].customer_tenant_id), 2)
        .await
        .unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].customer_tenant_id, ids[2]);

    let counts = customers::counts_by_status(&db).await.unwrap();
    assert_eq!(
        counts,
        [
            (CustomerStatus::Unconsented, 2),
            (CustomerStatus::AccessDenied, 1)
        ]
    );
});

// ---- against the dev IdP and samvault processes ----

const ADATUM: &str = "7b1e0c3a-5d2f-4c8e-9a6b-00000000c001";
const NORTHWIND: &str = "7b1e0c3a-5d2f-4c8e-9a6b-00000000c002";
const TAILSPIN: &str = "7b1e0c3a-5d2f-4c8e-9a6b-00000000c003";
const GRAPH_APP: &str = "00000003-0000-0000-c000-000000000000";

/// A test on both databases against a fresh stack.
macro_rules! stack_test {
    ($name:ident, $body:ident) => {
        mod $name {
            use super::*;
            #[tokio::test(flavor = "multi_thread")]
            async fn sqlite() {
                super::$body(Backend::Sqlite).await;
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn postgres() {
                super::$body(Backend::Postgres).await;
            }
        }
    };
}

/// `customers list --partner CONTOSO --json`, by customer tenant id.
fn customers_of(stack: &Stack) -> BTreeMap<String, Value> {
    let out = stack.cli(&["customers", "list", "--partner", CONTOSO, "--json"]);
    serde_json::from_str::<Vec<Value>>(&out)
        .unwrap()
        .into_iter()
        .map(|c| (c["customer_tenant_id"].as_str().unwrap().to_string(), c))
        .collect()
}

fn statuses(stack: &Stack) -> BTreeMap<String, String> {
    customers_of(stack)
        .into_iter()
        .map(|(id, c)| (id, c["status"].as_str().unwrap().to_string()))
        .collect()
}

fn expect(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Adatum and Northwind consented, Tailspin's relationship ended.
fn demo_outcome() -> BTreeMap<String, String> {
    expect(&[
        (ADATUM, "consented"),
        (NORTHWIND, "consented"),
        (TAILSPIN, "access_denied"),
    ])
}

async fn wait_for_statuses(stack: &Stack, want: &BTreeMap<String, String>, secs: u64) {
    let mut last = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while tokio::time::Instant::now() < deadline {
        last = statuses(stack);
        if &last == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!(
        "statuses never became {want:?}; last {last:?}\n{}",
        stack.log(0)
    );
}

async fn audited(stack: &Stack, action: &str) -> Vec<AuditEvent> {
    let filter = AuditFilter {
        action: Some(action.into()),
        ..AuditFilter::default()
    };
    audit::search(&stack.db().await, &filter, 500)
        .await
        .unwrap()
}

/// The app's consent in a customer tenant as the dev IdP holds it: its Graph scopes.
async fn consented_scopes(stack: &Stack, customer: &str) -> Option<Vec<String>> {
    let view = stack
        .sim(Method::GET, &format!("customers/{customer}"), Value::Null)
        .await;
    let consent = view["consents"]
        .as_array()?
        .iter()
        .find(|c| c["application_id"] == DEMO_CLIENT_ID)?
        .clone();
    let grant = consent["grants"]
        .as_array()?
        .iter()
        .find(|g| g["enterprise_application_id"] == GRAPH_APP)?
        .clone();
    Some(
        grant["scopes"]
            .as_array()?
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect(),
    )
}

fn pc_counter(counters: &Value, group: &str, key: &str) -> u64 {
    counters["partner_center"][group][key].as_u64().unwrap_or(0)
}

/// Runs a CLI command that may fail: (success, stdout, stderr).
fn cli_any(stack: &Stack, args: &[&str]) -> (bool, String, String) {
    let out = stack.command(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn sync_stores_customers_and_marks_gone(backend: Backend) {
    let Some(db) = fresh_database(backend).await else {
        return;
    };
    let stack = Stack::start(&db.url, StackOptions::default()).await;
    stack.consent("jane@contoso.example").await;
    let out = stack.cli(&["customers", "sync", "--partner", CONTOSO]);
    assert_eq!(
        out.trim(),
        format!("{CONTOSO}: 3 customers listed, 3 new, 0 gone")
    );
    let listed = customers_of(&stack);
    assert_eq!(listed.len(), 3, "{listed:?}");
    assert_eq!(listed[ADATUM]["name"], "Adatum");
    assert_eq!(listed[ADATUM]["domain"], "adatum.example");
    assert_eq!(listed[TAILSPIN]["status"], "unconsented");
    // Wingtip's customer is not Contoso's.
    assert!(!listed.contains_key("7b1e0c3a-5d2f-4c8e-9a6b-00000000c004"));

    stack
        .sim(
            Method::DELETE,
            &format!("partners/{CONTOSO}/customers/{NORTHWIND}"),
            Value::Null,
        )
        .await;
    let out = stack.cli(&["customers", "sync", "--partner", CONTOSO]);
    assert_eq!(
        out.trim(),
        format!("{CONTOSO}: 2 customers listed, 0 new, 1 gone")
    );
    let listed = customers_of(&stack);
    assert_eq!(listed[NORTHWIND]["status"], "gone");
    assert!(
        listed[NORTHWIND]["reason"]
            .as_str()
            .unwrap()
            .contains("no longer lists")
    );
    assert_eq!(listed[ADATUM]["status"], "unconsented");
    assert_eq!(audited(&stack, "customer.sync").await.len(), 2);
    let gone = audited(&stack, "customer.status").await;
    assert_eq!(gone.len(), 1);
    assert_eq!(gone[0].detail["customer_tenant_id"], NORTHWIND);
    assert_eq!(gone[0].detail["to"], "gone");
    // Listed in pages: the dev IdP counted one list call per sync (3 customers, pages of 500).
    assert_eq!(pc_counter(&stack.counters().await, "succeeded", "list"), 2);
}
stack_test!(
    sync_stores_the_demo_customers_and_marks_removed_ones_gone,
    sync_stores_customers_and_marks_gone
);

async fn auto_consent(backend: Backend) {
    let Some(db) = fresh_database(backend).await else {
        return;
    };
    let (receiver, url) = Receiver::start().await;
    let options = with_webhook(StackOptions::default().customers(), &url);
    let stack = Stack::start(&db.url, options).await;
    stack.consent("jane@contoso.example").await;
    wait_for_statuses(&stack, &demo_outcome(), 30).await;
    let listed = customers_of(&stack);
    let reason = listed[TAILSPIN]["reason"].as_str().unwrap();
    assert!(
        reason.contains("AADSTS50020") && reason.contains("GDAP"),
        "{reason}"
    );
    assert_eq!(
        listed[ADATUM]["grants"],
        format!("{GRAPH_APP}=Directory.Read.All")
    );
    assert_eq!(
        consented_scopes(&stack, ADATUM).await.unwrap(),
        ["Directory.Read.All"]
    );

    let consents = audited(&stack, "customer.consent").await;
    assert_eq!(consents.len(), 3, "{consents:?}");
    assert!(
        consents
            .iter()
            .all(|e| e.actor == "scheduler" && e.tenant_id.as_deref() == Some(CONTOSO))
    );
    eventually(Duration::from_secs(10), "webhook events", || async {
        receiver.of_kind("customer.consented").len() == 2
            && receiver.of_kind("customer.status_changed").len() == 1
    })
    .await;
    let denied = &receiver.of_kind("customer.status_changed")[0];
    assert_eq!(denied["customer_tenant_id"], TAILSPIN);
    assert_eq!(denied["tenant_id"], CONTOSO);
    assert_eq!(denied["to_status"], "access_denied");
    assert_eq!(denied["code"], "AADSTS50020");

    let metrics = stack
        .http
        .get(format!("{}/metrics", stack.sv()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "samvault_customers{status=\"consented\"} 2",
        "samvault_customers{status=\"access_denied\"} 1",
        "samvault_partner_center_requests_total{operation=\"consent_create\",outcome=\"success\"} 3",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "missing {line}\n{metrics}"
        );
    }
}
stack_test!(
    customers_are_consented_automatically_after_a_consent,
    auto_consent
);

async fn throttling(backend: Backend) {
    let Some(db) = fresh_database(backend).await else {
        return;
    };
    let (receiver, url) = Receiver::start().await;
    let options = with_webhook(StackOptions::default().customers(), &url);
    let stack = Stack::start(&db.url, options).await;
    stack
        .sim(
            Method::POST,
            "partner-center/faults",
            json!({ "status": 429, "retry_after": 2, "duration_secs": 10 }),
        )
        .await;
    stack.consent("jane@contoso.example").await;
    wait_for_statuses(&stack, &demo_outcome(), 60).await;
    let counters = stack.counters().await;
    assert!(
        counters["partner_center"]["faulted"].as_u64().unwrap() >= 2,
        "{counters}"
    );
    assert_eq!(pc_counter(&counters, "succeeded", "consent_create"), 3);
    // Never shown as a failure: no push recorded as failed, no such event.
    let consents = audited(&stack, "customer.consent").await;
    assert!(
        consents
            .iter()
            .all(|e| e.detail["status"] != "consent_failed"),
        "{consents:?}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(receiver.of_kind("customer.consent_failed").is_empty());
    let metrics = stack
        .http
        .get(format!("{}/metrics", stack.sv()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("outcome=\"throttled\""), "{metrics}");
}
stack_test!(
    throttled_partner_center_is_waited_for_never_a_failure,
    throttling
);

async fn partner_center_down(backend: Backend) {
    let Some(db) = fresh_database(backend).await else {
        return;
    };
    let (receiver, url) = Receiver::start().await;
    let options = with_webhook(StackOptions::default().customers(), &url)
        .env("SAMVAULT_CUSTOMER_AUTO_CONSENT", "false");
    let stack = Stack::start(&db.url, options).await;
    stack.consent("jane@contoso.example").await;
    let unconsented = expect(&[
        (ADATUM, "unconsented"),
        (NORTHWIND, "unconsented"),
        (TAILSPIN, "unconsented"),
    ]);
    wait_for_statuses(&stack, &unconsented, 20).await;
    stack
        .sim(
            Method::POST,
            "partner-center/faults",
            json!({ "status": 503, "duration_secs": 4 }),
        )
        .await;
    let (ok, out, err) = cli_any(&stack, &["customers", "consent", "--partner", CONTOSO]);
    assert!(!ok, "a failed push fails the command: {out}");
    assert!(out.contains("consent_failed: 3"), "{out}");
    assert!(err.contains("Partner Center answered HTTP 503"), "{err}");
    let listed = customers_of(&stack);
    let reason = listed[ADATUM]["reason"].as_str().unwrap();
    assert!(
        reason.contains("HTTP 503") && reason.contains("retries automatically"),
        "{reason}"
    );
    assert_eq!(listed[ADATUM]["consent_failures"], 1);
    eventually(Duration::from_secs(10), "consent_failed events", || async {
        receiver.of_kind("customer.consent_failed").len() == 3
    })
    .await;
    // Retried later by the scheduler, after the backoff (15 s ± 20 %).
    wait_for_statuses(&stack, &demo_outcome(), 60).await;
}
stack_test!(
    partner_center_down_is_consent_failed_then_retried,
    partner_center_down
);

async fn regrant(backend: Backend) {
    let Some(db) = fresh_database(backend).await else {
        return;
    };
    let stack = Stack::start(&db.url, StackOptions::default()).await;
    stack.consent("jane@contoso.example").await;
    stack.cli(&["customers", "sync", "--partner", CONTOSO]);
    let mut first = stack.command(&[
        "customers",
        "consent",
        "--partner",
        CONTOSO,
        "--customer",
        ADATUM,
    ]);
    first.env(
        "SAMVAULT_CUSTOMER_GRANTS",
        "https://graph.microsoft.com=User.Read.All",
    );
    assert!(first.output().unwrap().status.success());
    assert_eq!(
        consented_scopes(&stack, ADATUM).await.unwrap(),
        ["User.Read.All"]
    );
    let before = stack.counters().await;

    // Other grants configured: Partner Center answers 409, samvault deletes, then creates.
    stack.cli(&[
        "customers",
        "consent",
        "--partner",
        CONTOSO,
        "--customer",
        ADATUM,
    ]);
    assert_eq!(
        consented_scopes(&stack, ADATUM).await.unwrap(),
        ["Directory.Read.All"]
    );
    let after = stack.counters().await;
    let delta = |group, key| pc_counter(&after, group, key) - pc_counter(&before, group, key);
    assert_eq!(delta("succeeded", "consent_delete"), 1);
    assert_eq!(delta("succeeded", "consent_create"), 1);
    assert_eq!(delta("refused", "409"), 1);
    let consents = audited(&stack, "customer.consent").await;
    assert_eq!(consents[0].detail["replaced"], true, "{:?}", consents[0]);
    assert_eq!(consents[0].actor, "cli");

    // The same grants again: nothing is sent.
    stack.cli(&[
        "customers",
        "consent",
        "--partner",
        CONTOSO,
        "--customer",
        ADATUM,
    ]);
    assert_eq!(
        stack.counters().await["partner_center"],
        after["partner_center"]
    );
    assert_eq!(statuses(&stack)[ADATUM], "consented");
}
stack_test!(a_consent_with_other_grants_is_deleted_then_created, regrant);

async fn remove(backend: Backend) {
    let Some(db) = fresh_database(backend).await else {
        return;
    };
    let (receiver, url) = Receiver::start().await;
    let stack = Stack::start(&db.url, with_webhook(StackOptions::default(), &url)).await;
    stack.consent("jane@contoso.example").await;
    stack.cli(&["customers", "sync", "--partner", CONTOSO]);
    stack.cli(&[
        "customers",
        "consent",
        "--partner",
        CONTOSO,
        "--customer",
        ADATUM,
    ]);
    assert!(consented_scopes(&stack, ADATUM).await.is_some());
    let out = stack.cli(&[
        "customers",
        "remove",
        "--partner",
        CONTOSO,
        "--customer",
        ADATUM,
    ]);
    assert!(out.contains("removed"), "{out}");
    assert_eq!(consented_scopes(&stack, ADATUM).await, None);
    let listed = customers_of(&stack);
    assert_eq!(listed[ADATUM]["status"], "removed");
    assert_eq!(listed[ADATUM]["grants"], Value::Null);
    let removals = audited(&stack, "customer.remove").await;
    assert_eq!(removals.len(), 1);
    assert_eq!(removals[0].detail["existed"], true);
    eventually(Duration::from_secs(10), "customer.removed", || async {
        receiver.of_kind("customer.removed").len() == 1
    })
    .await;
    let removed = &receiver.of_kind("customer.removed")[0];
    assert_eq!(
        (
            removed["from_status"].as_str(),
            removed["to_status"].as_str()
        ),
        (Some("consented"), Some("removed"))
    );
    // An unknown customer is refused, nothing changes.
    let (ok, _, err) = cli_any(
        &stack,
        &[
            "customers",
            "remove",
            "--partner",
            CONTOSO,
            "--customer",
            WINGTIP,
        ],
    );
    assert!(!ok && err.contains("no customer"), "{err}");
}
stack_test!(customers_remove_takes_the_consent_away, remove);

/// The demo: after Jane consents Contoso, within seconds Adatum and Northwind are consented
/// and Tailspin (relationship ended) is access_denied.
#[tokio::test(flavor = "multi_thread")]
async fn the_demo_consents_contosos_customers_within_seconds() {
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let (sv_port, idp_port) = (free_port(), free_port());
    let sv = format!("http://127.0.0.1:{sv_port}");
    let idp = format!("http://127.0.0.1:{idp_port}");
    let child = Command::new(env!("CARGO_BIN_EXE_samvault"))
        .args(["demo", "--listen", &format!("127.0.0.1:{sv_port}")])
        .args(["--idp-listen", &format!("127.0.0.1:{idp_port}")])
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let child = Proc(child);
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    wait_ready(&http, &format!("{sv}/healthz")).await;
    let db_url = format!("sqlite://{}", dir.path().join("samvault-demo.db").display());
    let stack = Stack::attach(dir, idp, sv, http).keep_alive(child);
    let done = Browser::new(&stack)
        .consent("jane@contoso.example", true, "accept")
        .await;
    assert!(
        done.body.contains("Consent recorded for Contoso"),
        "{}",
        done.body
    );
    let consented = std::time::Instant::now();
    let db = open(&db_url).await;
    let contoso = TenantId::parse(CONTOSO).unwrap();
    let want = demo_outcome();
    let mut last = BTreeMap::new();
    while consented.elapsed() < Duration::from_secs(10) {
        last = customers::list(&db, &contoso, None, 10)
            .await
            .unwrap()
            .into_iter()
            .map(|c| (c.customer_tenant_id.to_string(), c.status.to_string()))
            .collect();
        if last == want {
            eprintln!(
                "demo outcome {:.1} s after the consent",
                consented.elapsed().as_secs_f64()
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("demo customers after 10 s: {last:?}");
}

both_backends!(partner_center_windows_are_taken_once, |url| async move {
    use samvault::partner_center::budget::{Budget, WINDOW};
    let db = open(&url).await;
    assert!(customers::take_window(&db, "app", 7).await.unwrap());
    assert!(
        !customers::take_window(&db, "app", 7).await.unwrap(),
        "taken"
    );
    assert!(
        customers::take_window(&db, "other", 7).await.unwrap(),
        "per application"
    );
    assert_eq!(customers::prune_windows(&db, 8).await.unwrap(), 2);
    if db.backend() != samvault::storage::Backend::Postgres {
        return; // SQLite serves one process: its budget is the process's own.
    }
    // Two replicas' budgets of one application share its 50 calls a second.
    let (a, b) = (Budget::new("app", &db), Budget::new("APP", &db));
    let started = std::time::Instant::now();
    let run = |budget: Budget| async move {
        for _ in 0..20 {
            budget.acquire().await;
        }
    };
    tokio::join!(run(a), run(b));
    let took = started.elapsed();
    assert!(
        took >= WINDOW * 38,
        "40 calls need 39 windows, took {took:?}"
    );
    assert!(took < WINDOW * 60, "{took:?}");
});

both_backends!(storage_consent_work_and_syncs, |url| async move {
    use customers::ConsentRecord;
    let db = open(&url).await;
    let p = partner(&db).await;
    let (a, b) = (new_tenant(), new_tenant());
    customers::upsert_listed(&db, &p, &[listed(&a, "A"), listed(&b, "B")], T0, Some(T0))
        .await
        .unwrap();
    // Claims: due rows only, leased (not claimed twice), one partner's when asked.
    assert!(
        customers::claim_due_consents(&db, None, T0 - 1, T0 + 600, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let other = new_tenant();
    assert!(
        customers::claim_due_consents(&db, Some(&other), T0, T0 + 600, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let claimed = customers::claim_due_consents(&db, Some(&p), T0, T0 + 600, 1)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].next_consent_at, Some(T0 + 600));
    let rest = customers::claim_due_consents(&db, None, T0, T0 + 600, 10)
        .await
        .unwrap();
    assert_eq!(rest.len(), 1);
    assert_ne!(rest[0].customer_tenant_id, claimed[0].customer_tenant_id);

    // A failure counts and reschedules; a consent resets and clears.
    let failed = customers::record_consent_failure(&db, &p, &a, "503", Some("g1"), T0 + 15, T0)
        .await
        .unwrap();
    assert_eq!(failed, Some((CustomerStatus::Unconsented, 1)));
    let row = customers::get(&db, &p, &a).await.unwrap().unwrap();
    assert_eq!(
        (row.status, row.consent_failures, row.next_consent_at),
        (CustomerStatus::ConsentFailed, 1, Some(T0 + 15))
    );
    assert_eq!(row.grants_applied.as_deref(), Some("g1"));
    customers::postpone_consent(&db, &p, &a, T0 + 30)
        .await
        .unwrap();
    let row = customers::get(&db, &p, &a).await.unwrap().unwrap();
    assert_eq!(
        (row.consent_failures, row.next_consent_at),
        (1, Some(T0 + 30))
    );
    let record = ConsentRecord {
        status: CustomerStatus::Consented,
        reason: None,
        grants_applied: Some("g2"),
    };
    let from = customers::record_consent(&db, &p, &a, record, T0 + 40)
        .await
        .unwrap();
    assert_eq!(from, Some(CustomerStatus::ConsentFailed));
    let row = customers::get(&db, &p, &a).await.unwrap().unwrap();
    assert_eq!(
        (
            row.consent_failures,
            row.next_consent_at,
            row.status_changed_at
        ),
        (0, None, T0 + 40)
    );

    // Grants changed: consented customers with other grants are due again; by hand, all.
    assert_eq!(
        customers::schedule_regrant(&db, "g2", T0 + 50)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        customers::schedule_regrant(&db, "g3", T0 + 50)
            .await
            .unwrap(),
        1
    );
    let removed = ConsentRecord {
        status: CustomerStatus::Removed,
        reason: Some("x"),
        grants_applied: None,
    };
    customers::record_consent(&db, &p, &b, removed, T0 + 50)
        .await
        .unwrap();
    assert_eq!(
        customers::schedule_consent(&db, &p, Some(&b), T0 + 60)
            .await
            .unwrap(),
        1
    );
    let row = customers::get(&db, &p, &b).await.unwrap().unwrap();
    assert_eq!(
        (row.status, row.next_consent_at),
        (CustomerStatus::Unconsented, Some(T0 + 60))
    );
    assert_eq!(
        customers::schedule_consent(&db, &p, None, T0 + 70)
            .await
            .unwrap(),
        2
    );

    // Syncs: a usable partner without a row is due; claimed once; recorded.
    assert_eq!(customers::schedule_unsynced(&db, T0).await.unwrap(), 1);
    assert_eq!(customers::schedule_unsynced(&db, T0).await.unwrap(), 0);
    assert_eq!(
        customers::claim_due_syncs(&db, T0, T0 + 600, 5)
            .await
            .unwrap(),
        std::slice::from_ref(&p)
    );
    assert!(
        customers::claim_due_syncs(&db, T0, T0 + 600, 5)
            .await
            .unwrap()
            .is_empty()
    );
    customers::record_sync(&db, &p, T0 + 5, T0 + 86_400, None)
        .await
        .unwrap();
    customers::record_sync(&db, &p, T0 + 6, T0 + 300, Some("down"))
        .await
        .unwrap();
    let sync = customers::sync_state(&db, &p).await.unwrap().unwrap();
    assert_eq!(
        (
            sync.last_sync_at,
            sync.next_sync_at,
            sync.last_error.as_deref()
        ),
        (Some(T0 + 5), T0 + 300, Some("down"))
    );
    customers::schedule_sync(&db, &p, T0 + 10).await.unwrap();
    customers::schedule_sync(&db, &p, T0 + 20).await.unwrap();
    assert_eq!(
        customers::sync_state(&db, &p)
            .await
            .unwrap()
            .unwrap()
            .next_sync_at,
        T0 + 10,
        "sooner wins"
    );

    // Consents are followed by id.
    let last = customers::last_consent_id(&db).await.unwrap();
    assert!(last >= 1);
    let (seen, partners) = customers::consents_after(&db, last - 1).await.unwrap();
    assert_eq!((seen, partners), (last, vec![p.clone()]));
    assert!(
        customers::consents_after(&db, last)
            .await
            .unwrap()
            .1
            .is_empty()
    );
});

async fn strict_rotation(backend: Backend) {
    let Some(db) = fresh_database(backend).await else {
        return;
    };
    let options = StackOptions::default()
        .customers()
        .idp_arg("--strict-rotation")
        .env("SAMVAULT_IDP_ROTATION", "strict");
    let mut stack = Stack::start(&db.url, options).await;
    stack.consent("jane@contoso.example").await;
    wait_for_statuses(&stack, &demo_outcome(), 30).await;
    stack.stop_replica(0);
    // Every verification went through the partner's single-flight and wrote its new refresh
    // token back in order: the partner's grant is alive.
    stack.cli(&["rotate", "--partner", CONTOSO]);
    assert_eq!(stack.partner(CONTOSO).unwrap()["status"], "active");
}
stack_test!(
    strict_rotation_verifies_in_the_partners_single_flight,
    strict_rotation
);
