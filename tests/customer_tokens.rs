//! Customer-tenant tokens (REFERENCE §6) against the real dev IdP and `samvault serve`, on both
//! databases: `POST /api/v1/partners/{tid}/customers/{cid}/token` and
//! `GET /api/v1/partners/{tid}/customers`; refusals classified per customer; every
//! redemption's new refresh token stored; concurrency under both IdP rotation modes.
#![allow(clippy::too_many_lines)] // scenarios read top to bottom

mod support;

use std::time::{Duration, Instant};

use samvault::domain::{CustomerStatus, TenantId};
use samvault::storage::customers;
use samvault::storage::partners::{self, grant_context};
use samvault::vault::{LocalKeyProvider, Vault};
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use support::Backend;
use support::customers::*;
use support::ops::Operator;
use support::stack::*;

const GRAPH: &str = "https://graph.microsoft.com";
const ARM: &str = "https://management.azure.com";
const JANE: &str = "jane@contoso.example";

/// Partners consent to Graph and ARM too, so they can be asked for their own tokens there.
const CONSENT_SCOPES: &str = "https://api.partnercenter.microsoft.com/user_impersonation https://graph.microsoft.com/User.Read https://management.azure.com/user_impersonation offline_access openid profile";

fn options() -> StackOptions {
    StackOptions::default().env("SAMVAULT_CONSENT_SCOPES", CONSENT_SCOPES)
}

fn tenant(id: &str) -> TenantId {
    TenantId::parse(id).unwrap()
}

fn create(stack: &Stack, args: &[&str]) -> (String, String) {
    let mut all = vec!["client", "create", "--name", "customers", "--json"];
    all.extend_from_slice(args);
    let created: Value = serde_json::from_str(&stack.cli(&all)).unwrap();
    (
        created["client_id"].as_str().unwrap().into(),
        created["client_secret"].as_str().unwrap().into(),
    )
}

/// A client that may obtain customer-tenant tokens for every resource, and read partners.
fn issuer(stack: &Stack) -> (String, String) {
    create(
        stack,
        &[
            "--resource",
            PARTNER_CENTER,
            "--resource",
            GRAPH,
            "--resource",
            ARM,
            "--permission",
            "customers:issue",
            "--permission",
            "tokens:issue",
            "--permission",
            "partners:read",
            "--rate-limit",
            "100000",
        ],
    )
}

async fn customer_token(
    stack: &Stack,
    creds: &(String, String),
    partner: &str,
    customer: &str,
    resource: &str,
) -> (u16, Value) {
    let body = json!({ "resource": resource, "purpose": "customer inventory" });
    let request = customer_token_request(stack, creds, partner, customer, &body);
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    assert_eq!(response.headers()["cache-control"], "no-store");
    (status, response.json().await.unwrap())
}

async fn customer_row(stack: &Stack, partner: &str, customer: &str) -> customers::CustomerRow {
    let db = stack.db().await;
    customers::get(&db, &tenant(partner), &tenant(customer))
        .await
        .unwrap()
        .unwrap()
}

/// A refusal: its status and problem code.
fn refused(answer: (u16, Value)) -> (u16, String) {
    (
        answer.0,
        answer.1["code"].as_str().unwrap_or("").to_string(),
    )
}

/// Every refresh token the IdP issued for `partner`, in order, and samvault's current one
/// (opened with the key file): samvault has stored one version for each of them, and its
/// current one is valid at the IdP; `newest`: it is the last one issued (one redemption at
/// a time; overlapping ones may commit in another order).
async fn grants_agree(stack: &Stack, partner: &str, newest: bool) -> usize {
    let grants = stack.sim(reqwest::Method::GET, "grants", Value::Null).await;
    let issued: Vec<&Value> = grants
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| g["tenant_id"] == partner)
        .collect();
    let db = stack.db().await;
    let key = stack.dir.path().join("samvault.key");
    let (provider, _) = LocalKeyProvider::open_or_create(&key).unwrap();
    let vault = Vault::new(std::sync::Arc::new(provider));
    let partner_id = tenant(partner);
    let current = partners::current_grant(&db, &partner_id)
        .await
        .unwrap()
        .unwrap();
    let opened = vault
        .open(
            &current.sealed,
            &grant_context(&partner_id, current.version),
        )
        .await
        .unwrap();
    let stored = String::from_utf8(opened.expose_secret().clone()).unwrap();
    let at = issued
        .iter()
        .position(|g| g["refresh_token"] == stored.as_str())
        .expect("samvault holds a refresh token the IdP issued");
    assert_eq!(issued[at]["valid"], true, "{}", issued[at]);
    if newest {
        assert_eq!(
            at + 1,
            issued.len(),
            "samvault holds the newest refresh token"
        );
    }
    assert_eq!(
        current.version as usize,
        issued.len(),
        "one stored version per refresh token issued"
    );
    issued.len()
}

/// A customer token for Adatum: the customer's tenant, Jane's identity; cached next time;
/// the customer consented; the request log, the CSV and the MFA share name it.
async fn tokens_for_a_customer(backend: Backend) {
    let Some(db) = support::fresh_database(backend).await else {
        return;
    };
    let stack = Stack::start(&db.url, options()).await;
    stack.consent(JANE).await;
    seed(&stack, CONTOSO, &[ADATUM, NORTHWIND, TAILSPIN]).await;
    let creds = issuer(&stack);
    consent_in(&stack, &creds, CONTOSO, &[ADATUM, NORTHWIND]).await;

    let (status, answer) = customer_token(&stack, &creds, CONTOSO, ADATUM, GRAPH).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        (
            answer["tenant_id"].as_str(),
            answer["customer_tenant_id"].as_str(),
            answer["cached"].as_bool(),
            answer["mfa"].as_bool(),
        ),
        (Some(CONTOSO), Some(ADATUM), Some(false), Some(true))
    );
    let claims = jwt_claims(answer["access_token"].as_str().unwrap());
    assert_eq!(claims["tid"], ADATUM, "{claims}");
    assert_eq!(claims["upn"], JANE, "{claims}");
    assert_eq!(claims["aud"], GRAPH, "{claims}");
    let (status, again) = customer_token(&stack, &creds, CONTOSO, ADATUM, GRAPH).await;
    assert_eq!((status, again["cached"].as_bool()), (200, Some(true)));
    assert_eq!(again["access_token"], answer["access_token"]);
    assert_eq!(
        customer_row(&stack, CONTOSO, ADATUM).await.status,
        CustomerStatus::Consented
    );
    // The partner's own token is another cache entry: a partner Graph token is Contoso's.
    let (status, own) = stack
        .token(
            &creds,
            CONTOSO,
            json!({ "resource": GRAPH, "purpose": "own" }),
        )
        .await;
    assert_eq!(
        (status, own["cached"].as_bool()),
        (200, Some(false)),
        "{own}"
    );
    assert_eq!(
        jwt_claims(own["access_token"].as_str().unwrap())["tid"],
        CONTOSO
    );

    // The list: every customer with its status, paged.
    let (status, list) = get(
        &stack,
        &creds,
        &format!("/api/v1/partners/{CONTOSO}/customers"),
    )
    .await;
    assert_eq!(status, 200, "{list}");
    let listed: Vec<(&str, &str)> = list["customers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["customer_tenant_id"].as_str().unwrap(),
                c["status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        [
            (ADATUM, "consented"),
            (NORTHWIND, "unconsented"),
            (TAILSPIN, "unconsented")
        ]
    );
    let path = format!("/api/v1/partners/{CONTOSO}/customers?limit=2");
    let (_, first) = get(&stack, &creds, &path).await;
    assert_eq!(first["next"], NORTHWIND);
    let (_, rest) = get(&stack, &creds, &format!("{path}&after={NORTHWIND}")).await;
    assert_eq!(rest["customers"][0]["customer_tenant_id"], TAILSPIN);
    assert!(rest["next"].is_null());
    request_log_names_the_customer(&stack, &creds).await;
}

async fn get(stack: &Stack, creds: &(String, String), path: &str) -> (u16, Value) {
    let response = stack
        .http
        .get(format!("{}{path}", stack.sv()))
        .basic_auth(&creds.0, Some(&creds.1))
        .send()
        .await
        .unwrap();
    (
        response.status().as_u16(),
        response.json().await.unwrap_or(Value::Null),
    )
}

/// The request log's rows carry the customer tenant and the purpose; so does the security
/// report's CSV; the client's MFA share counts the customer tokens; `last_token_at` is set.
async fn request_log_names_the_customer(stack: &Stack, creds: &(String, String)) {
    eventually(Duration::from_secs(10), "customer requests logged", || async {
        stack
            .scalar(
                "SELECT COUNT(*) FROM token_requests WHERE customer_tenant_id = $1 AND purpose = 'customer inventory'",
                ADATUM,
            )
            .await
            == 2
    })
    .await;
    eventually(Duration::from_secs(10), "every request logged", || async {
        stack
            .scalar(
                "SELECT COUNT(*) FROM token_requests WHERE client_id = $1",
                &creds.0,
            )
            .await
            == 4
    })
    .await;
    let row = customer_row(stack, CONTOSO, ADATUM).await;
    assert!(row.last_token_at.is_some(), "{row:?}");
    let mut op = Operator::signed_in(stack, "viewer", "viewer").await;
    let (status, csv, _) = op.get("/ops/security/requests.csv").await;
    assert_eq!(status, 200);
    let header = csv.lines().next().unwrap();
    assert!(header.ends_with(",customer_tenant_id"), "{header}");
    let customer_rows = csv
        .lines()
        .filter(|l| l.ends_with(ADATUM) && l.contains("customer inventory"))
        .count();
    assert_eq!(customer_rows, 2, "{csv}");
    let (_, clients, _) = op.get("/ops/security/clients.csv").await;
    let mine = clients.lines().find(|l| l.starts_with(&creds.0)).unwrap();
    let cells: Vec<&str> = mine.split(',').collect();
    // requests, issued, issued_mfa: the consent's PC token, two Adatum tokens, Contoso's own.
    assert_eq!(&cells[2..5], ["4", "4", "4"], "{mine}");
}

/// Who may ask: customers:issue, and a partner scope that covers the customers.
async fn permissions_and_scope(backend: Backend) {
    let Some(db) = support::fresh_database(backend).await else {
        return;
    };
    let stack = Stack::start(&db.url, options()).await;
    stack.consent(JANE).await;
    seed(&stack, CONTOSO, &[ADATUM]).await;
    let all = issuer(&stack);
    consent_in(&stack, &all, CONTOSO, &[ADATUM]).await;

    let default = create(&stack, &["--resource", GRAPH]);
    assert_eq!(
        refused(customer_token(&stack, &default, CONTOSO, ADATUM, GRAPH).await),
        (403, "permission_denied".into()),
        "customers:issue is not in the default set"
    );
    let wingtip_only = create(
        &stack,
        &[
            "--resource",
            GRAPH,
            "--permission",
            "customers:issue",
            "--partner",
            WINGTIP,
        ],
    );
    assert_eq!(
        refused(customer_token(&stack, &wingtip_only, CONTOSO, ADATUM, GRAPH).await),
        (403, "partner_not_allowed".into())
    );
    let contoso_only = create(
        &stack,
        &[
            "--resource",
            GRAPH,
            "--permission",
            "customers:issue",
            "--partner",
            CONTOSO,
        ],
    );
    let (status, answer) = customer_token(&stack, &contoso_only, CONTOSO, ADATUM, GRAPH).await;
    assert_eq!(status, 200, "{answer}");
    let before = stack.refresh_calls().await;
    assert_eq!(
        refused(customer_token(&stack, &contoso_only, CONTOSO, ADATUM, ARM).await),
        (403, "resource_not_allowed".into())
    );
    // The list wants partners:read and the partner's scope.
    let listing = format!("/api/v1/partners/{CONTOSO}/customers");
    assert_eq!(get(&stack, &contoso_only, &listing).await.0, 403);
    assert_eq!(get(&stack, &all, &listing).await.0, 200);
    let wingtip_reader = create(&stack, &["--resource", GRAPH, "--partner", WINGTIP]);
    assert_eq!(get(&stack, &wingtip_reader, &listing).await.0, 403);
    let unknown = format!("/api/v1/partners/{WINGTIP}/customers");
    assert_eq!(
        refused(get(&stack, &all, &unknown).await),
        (404, "partner_not_found".into())
    );

    // Unknown customers: a random tenant, another partner's customer; an unknown partner.
    let stranger = uuid::Uuid::new_v4().to_string();
    for customer in [stranger.as_str(), LITWARE] {
        assert_eq!(
            refused(customer_token(&stack, &all, CONTOSO, customer, GRAPH).await),
            (404, "customer_not_found".into()),
            "{customer}"
        );
    }
    assert_eq!(
        refused(customer_token(&stack, &all, WINGTIP, LITWARE, GRAPH).await),
        (404, "partner_not_found".into())
    );
    assert_eq!(
        stack.refresh_calls().await,
        before,
        "no IdP call for refusals"
    );
}

/// Refusals concern the customer: Northwind without the app, Tailspin without a
/// relationship, a tenant deleted; Contoso stays active and keeps serving.
async fn refusals_change_the_customer_not_the_partner(backend: Backend) {
    let Some(db) = support::fresh_database(backend).await else {
        return;
    };
    let stack = Stack::start(&db.url, options()).await;
    stack.consent(JANE).await;
    let added = stack
        .sim(
            reqwest::Method::POST,
            &format!("partners/{CONTOSO}/customers"),
            json!({ "name": "Vanishing" }),
        )
        .await;
    let vanishing = added["id"].as_str().unwrap().to_string();
    seed(&stack, CONTOSO, &[ADATUM, NORTHWIND, TAILSPIN, &vanishing]).await;
    let creds = issuer(&stack);
    consent_in(&stack, &creds, CONTOSO, &[ADATUM, NORTHWIND, &vanishing]).await;
    let (status, _) = customer_token(&stack, &creds, CONTOSO, NORTHWIND, GRAPH).await;
    assert_eq!(status, 200);

    let sim = format!("customers/{NORTHWIND}/remove-app");
    stack.sim(reqwest::Method::POST, &sim, Value::Null).await;
    let (status, problem) = customer_token(&stack, &creds, CONTOSO, NORTHWIND, ARM).await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (409, Some("customer_consent_required")),
        "{problem}"
    );
    assert!(problem["detail"].as_str().unwrap().contains("AADSTS65001"));
    let northwind = customer_row(&stack, CONTOSO, NORTHWIND).await;
    assert_eq!(northwind.status, CustomerStatus::Unconsented);
    assert!(northwind.reason.unwrap().starts_with("AADSTS65001: "));
    // Its cached Graph token went with the consent.
    assert_eq!(
        refused(customer_token(&stack, &creds, CONTOSO, NORTHWIND, GRAPH).await),
        (409, "customer_consent_required".into())
    );

    assert_eq!(
        refused(customer_token(&stack, &creds, CONTOSO, TAILSPIN, GRAPH).await),
        (409, "customer_access_denied".into())
    );
    let tailspin = customer_row(&stack, CONTOSO, TAILSPIN).await;
    assert_eq!(tailspin.status, CustomerStatus::AccessDenied);
    assert!(tailspin.reason.unwrap().starts_with("AADSTS50020: "));

    // `customers consent` pushes the app back into Northwind: its tokens are issued again,
    // and it is `consented` once more.
    stack.cli(&[
        "customers",
        "consent",
        "--partner",
        CONTOSO,
        "--customer",
        NORTHWIND,
    ]);
    let (status, answer) = customer_token(&stack, &creds, CONTOSO, NORTHWIND, GRAPH).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        customer_row(&stack, CONTOSO, NORTHWIND).await.status,
        CustomerStatus::Consented
    );

    stack
        .sim(
            reqwest::Method::DELETE,
            &format!("tenants/{vanishing}"),
            Value::Null,
        )
        .await;
    let (status, problem) = customer_token(&stack, &creds, CONTOSO, &vanishing, GRAPH).await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (404, Some("customer_not_found"))
    );
    let gone = customer_row(&stack, CONTOSO, &vanishing).await;
    assert_eq!(gone.status, CustomerStatus::Gone);
    assert!(gone.reason.unwrap().starts_with("AADSTS90002: "));
    // Gone is refused without asking the IdP again; removed too.
    let calls = stack.refresh_calls().await;
    let (status, problem) = customer_token(&stack, &creds, CONTOSO, &vanishing, GRAPH).await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (404, Some("customer_not_found"))
    );
    assert!(
        problem["detail"].as_str().unwrap().contains("gone"),
        "{problem}"
    );
    let db = stack.db().await;
    let at = samvault::storage::now();
    customers::set_status(
        &db,
        &tenant(CONTOSO),
        &tenant(ADATUM),
        CustomerStatus::Removed,
        None,
        at,
    )
    .await
    .unwrap();
    tokio::time::sleep(samvault::customers::token::TRUST).await;
    let (status, problem) = customer_token(&stack, &creds, CONTOSO, ADATUM, GRAPH).await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (404, Some("customer_not_found"))
    );
    assert!(
        problem["detail"].as_str().unwrap().contains("removed"),
        "{problem}"
    );
    assert_eq!(stack.refresh_calls().await, calls);

    // The partner is untouched and serves its own tokens (cold, at its own authority).
    assert_eq!(stack.statuses()[CONTOSO], "active");
    let (status, own) = stack
        .token(
            &creds,
            CONTOSO,
            json!({ "resource": ARM, "purpose": "own" }),
        )
        .await;
    assert_eq!(
        (status, own["cached"].as_bool()),
        (200, Some(false)),
        "{own}"
    );

    // Every customer redemption's refresh token was stored: after a restart samvault holds
    // the newest one and it works.
    grants_agree(&stack, CONTOSO, true).await;
    let mut stack = stack;
    stack.kill_replica(0);
    stack.start_replica(0).await;
    grants_agree(&stack, CONTOSO, true).await;
    let db = stack.db().await;
    customers::set_status(
        &db,
        &tenant(CONTOSO),
        &tenant(ADATUM),
        CustomerStatus::Consented,
        None,
        at,
    )
    .await
    .unwrap();
    let (status, answer) = customer_token(&stack, &creds, CONTOSO, ADATUM, GRAPH).await;
    assert_eq!(
        (status, answer["cached"].as_bool()),
        (200, Some(false)),
        "{answer}"
    );
    grants_agree(&stack, CONTOSO, true).await;
    let metrics = stack
        .http
        .get(format!("{}/metrics", stack.sv()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("samvault_customer_tokens_total{outcome=\"issued\"} 1"),
        "{metrics}"
    );
}

/// A dead partner grant at a customer's authority is the partner's failure, as on its path.
async fn a_dead_partner_grant_is_the_partners_failure(backend: Backend) {
    let Some(db) = support::fresh_database(backend).await else {
        return;
    };
    let stack = Stack::start(&db.url, options()).await;
    stack.consent(JANE).await;
    seed(&stack, CONTOSO, &[ADATUM]).await;
    let creds = issuer(&stack);
    consent_in(&stack, &creds, CONTOSO, &[ADATUM]).await;
    let sim = format!("users/{JANE}/reset-password");
    stack.sim(reqwest::Method::POST, &sim, Value::Null).await;
    let (status, problem) = customer_token(&stack, &creds, CONTOSO, ADATUM, GRAPH).await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (409, Some("reconsent_required")),
        "{problem}"
    );
    assert!(problem["detail"].as_str().unwrap().contains("AADSTS50173"));
    let contoso = stack.partner(CONTOSO).unwrap();
    assert_eq!(contoso["status"], "reconsent_required", "{contoso}");
    let adatum = customer_row(&stack, CONTOSO, ADATUM).await;
    assert_eq!(
        (adatum.status, adatum.reason),
        (CustomerStatus::Unconsented, None)
    );
    // From now on the partner's problem comes first, without an IdP call.
    let calls = stack.refresh_calls().await;
    assert_eq!(
        refused(customer_token(&stack, &creds, CONTOSO, ADATUM, GRAPH).await),
        (409, "reconsent_required".into())
    );
    assert_eq!(stack.refresh_calls().await, calls);
}

/// Tenant 1 of the generated directory and its first `n` customers, each with the app
/// consented and known to samvault.
async fn generated_customers(stack: &Stack, creds: &(String, String), n: u32) -> Vec<String> {
    stack.consent("admin@tenant-1.example").await;
    let partner = generated_tenant(1);
    let ids: Vec<String> = (1..=n)
        .map(|j| format!("00000000-0000-4000-9000-{:012}", 100_000 + j))
        .collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    seed(stack, &partner, &refs).await;
    consent_in(stack, creds, &partner, &refs).await;
    ids
}

/// Cold requests at once, one per customer: all answered, and how long they took.
async fn burst(stack: &Stack, creds: &(String, String), customers: &[String]) -> Duration {
    let partner = generated_tenant(1);
    let started = Instant::now();
    let mut requests = tokio::task::JoinSet::new();
    for customer in customers {
        let url = format!(
            "{}/api/v1/partners/{partner}/customers/{customer}/token",
            stack.sv()
        );
        let (http, creds) = (stack.http.clone(), creds.clone());
        requests.spawn(async move {
            let response = http
                .post(url)
                .basic_auth(&creds.0, Some(&creds.1))
                .json(&json!({ "resource": GRAPH, "purpose": "burst" }))
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap())
        });
    }
    let answers = requests.join_all().await;
    let took = started.elapsed();
    for (status, answer) in answers {
        assert_eq!(
            (status, answer["cached"].as_bool()),
            (200, Some(false)),
            "{answer}"
        );
    }
    took
}

const CUSTOMERS: u32 = 8;
const LATENCY_MS: u64 = 300;

fn slow_idp(strict: bool) -> StackOptions {
    let mut options = options()
        .tenants(1)
        .idp_arg("--customers")
        .idp_arg(&CUSTOMERS.to_string())
        .idp_arg("--latency-ms")
        .idp_arg(&LATENCY_MS.to_string());
    if strict {
        options = options
            .idp_arg("--strict-rotation")
            .env("SAMVAULT_IDP_ROTATION", "strict");
    }
    options
}

/// Entra's rotation: cold requests for different customers of one partner redeem at once,
/// and every refresh token they return is stored.
async fn customers_of_one_partner_redeem_at_once(backend: Backend) {
    let Some(db) = support::fresh_database(backend).await else {
        return;
    };
    let stack = Stack::start(&db.url, slow_idp(false)).await;
    let creds = issuer(&stack);
    let ids = generated_customers(&stack, &creds, CUSTOMERS).await;
    let took = burst(&stack, &creds, &ids).await;
    eprintln!("{backend:?} entra: {CUSTOMERS} cold customers in {took:?}");
    let one_after_another = Duration::from_millis(LATENCY_MS * u64::from(CUSTOMERS));
    assert!(
        took < one_after_another / 2,
        "{CUSTOMERS} cold customers took {took:?}: not at once"
    );
    let issued = grants_agree(&stack, &generated_tenant(1), false).await;
    // The consent, the Partner Center token, one per customer.
    assert_eq!(issued, 2 + CUSTOMERS as usize);
}

/// Strict rotation: the same burst goes through the partner's single-flight, each from the
/// newest refresh token; none is lost.
async fn strict_rotation_redeems_customers_in_line(backend: Backend) {
    let Some(db) = support::fresh_database(backend).await else {
        return;
    };
    let mut stack = Stack::start(&db.url, slow_idp(true)).await;
    let creds = issuer(&stack);
    let ids = generated_customers(&stack, &creds, CUSTOMERS).await;
    let took = burst(&stack, &creds, &ids).await;
    eprintln!("{backend:?} strict: {CUSTOMERS} cold customers in {took:?}");
    let one_after_another = Duration::from_millis(LATENCY_MS * u64::from(CUSTOMERS));
    assert!(
        took >= one_after_another,
        "{took:?}: strict redemptions overlapped"
    );
    let issued = grants_agree(&stack, &generated_tenant(1), true).await;
    assert_eq!(issued, 2 + CUSTOMERS as usize);
    stack.kill_replica(0);
    stack.start_replica(0).await;
    let (status, answer) =
        customer_token(&stack, &creds, &generated_tenant(1), &ids[0], GRAPH).await;
    assert_eq!(
        (status, answer["cached"].as_bool()),
        (200, Some(false)),
        "{answer}"
    );
    grants_agree(&stack, &generated_tenant(1), true).await;
}

on_both_backends!(
    tokens_for_a_customer,
    permissions_and_scope,
    refusals_change_the_customer_not_the_partner,
    a_dead_partner_grant_is_the_partners_failure,
    customers_of_one_partner_redeem_at_once,
    strict_rotation_redeems_customers_in_line,
);
