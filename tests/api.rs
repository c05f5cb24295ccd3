//! The integrations API: least-privilege clients, single-flight, rate limits, read
//! endpoints and the request log, against a real `serve` and the dev IdP.
#![allow(clippy::too_many_lines)] // scenarios read top to bottom

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::Backend;
use support::stack::*;

const GRAPH: &str = "https://graph.microsoft.com";

fn create(stack: &Stack, args: &[&str]) -> (String, String) {
    let mut all = vec!["client", "create", "--name", "scoped", "--json"];
    all.extend_from_slice(args);
    let created: Value = serde_json::from_str(&stack.cli(&all)).unwrap();
    (
        created["client_id"].as_str().unwrap().into(),
        created["client_secret"].as_str().unwrap().into(),
    )
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

async fn least_privilege_and_revocation(backend: Backend) {
    let Some(db) = support::fresh_database(backend).await else {
        return;
    };
    let stack = Stack::start(&db.url, StackOptions::default()).await;
    stack.consent("jane@contoso.example").await;
    stack.consent("trent@wingtip.example").await;

    let partner_center_only = create(&stack, &["--resource", PARTNER_CENTER]);
    let (status, p) = stack
        .token(
            &partner_center_only,
            CONTOSO,
            json!({ "resource": GRAPH, "purpose": "x" }),
        )
        .await;
    assert_eq!(
        (status, p["code"].as_str()),
        (403, Some("resource_not_allowed"))
    );

    let contoso_only = create(
        &stack,
        &["--resource", PARTNER_CENTER, "--partner", CONTOSO],
    );
    let (status, p) = stack.token(&contoso_only, WINGTIP, token_body()).await;
    assert_eq!(
        (status, p["code"].as_str()),
        (403, Some("partner_not_allowed"))
    );
    let (status, _) = stack.token(&contoso_only, CONTOSO, token_body()).await;
    assert_eq!(status, 200);

    let (status, p) = stack
        .token(
            &contoso_only,
            CONTOSO,
            json!({ "resource": PARTNER_CENTER }),
        )
        .await;
    assert_eq!((status, p["code"].as_str()), (400, Some("invalid_request")));
    let (status, p) = stack
        .token(
            &contoso_only,
            CONTOSO,
            json!({ "resource": PARTNER_CENTER, "purpose": "" }),
        )
        .await;
    assert_eq!((status, p["code"].as_str()), (400, Some("invalid_request")));

    // A monitoring client reads partners but has no token power.
    let monitor = create(
        &stack,
        &[
            "--resource",
            PARTNER_CENTER,
            "--permission",
            "partners:read",
        ],
    );
    let (status, p) = stack.token(&monitor, CONTOSO, token_body()).await;
    assert_eq!(
        (status, p["code"].as_str()),
        (403, Some("permission_denied"))
    );
    let (status, list) = get(&stack, &monitor, "/api/v1/partners").await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["partners"].as_array().unwrap().len(), 2);
    assert!(
        !list.to_string().contains("refresh_token") && !list.to_string().contains("\"0.A"),
        "no token material: {list}"
    );
    let (status, one) = get(&stack, &monitor, &format!("/api/v1/partners/{CONTOSO}")).await;
    assert_eq!((status, one["status"].as_str()), (200, Some("active")));
    assert!(one["expiry_horizon"].as_str().unwrap().len() >= 20);
    // Keyset paging.
    let (_, first) = get(&stack, &monitor, "/api/v1/partners?limit=1").await;
    let next = first["next"].as_str().unwrap().to_string();
    let (_, second) = get(
        &stack,
        &monitor,
        &format!("/api/v1/partners?limit=1&after={next}"),
    )
    .await;
    assert_eq!(second["partners"].as_array().unwrap().len(), 1);
    assert!(second["next"].is_null());
    assert_ne!(
        first["partners"][0]["tenant_id"],
        second["partners"][0]["tenant_id"]
    );
    // A token-only client cannot read partners; a scoped client sees only its partner.
    let tokens_only = create(
        &stack,
        &["--resource", PARTNER_CENTER, "--permission", "tokens:issue"],
    );
    assert_eq!(get(&stack, &tokens_only, "/api/v1/partners").await.0, 403);
    let (_, scoped) = get(&stack, &contoso_only, "/api/v1/partners").await;
    assert_eq!(scoped["partners"].as_array().unwrap().len(), 1);
    assert_eq!(
        get(
            &stack,
            &contoso_only,
            &format!("/api/v1/partners/{WINGTIP}")
        )
        .await
        .0,
        403
    );

    // Revocation is honoured as soon as the command returns, cached credentials or not.
    stack.cli(&["client", "revoke", &contoso_only.0]);
    let (status, p) = stack.token(&contoso_only, CONTOSO, token_body()).await;
    assert_eq!((status, p["code"].as_str()), (401, Some("invalid_client")));

    // Rolling a secret: the new one works, then the old one is revoked.
    let added: Value = serde_json::from_str(&stack.cli(&[
        "client",
        "secret",
        "add",
        &partner_center_only.0,
        "--json",
    ]))
    .unwrap();
    let rolled = (
        partner_center_only.0.clone(),
        added["client_secret"].as_str().unwrap().to_string(),
    );
    assert_eq!(stack.token(&rolled, CONTOSO, token_body()).await.0, 200);
    assert_eq!(
        stack
            .token(&partner_center_only, CONTOSO, token_body())
            .await
            .0,
        200,
        "both secrets live while rolling"
    );
    let old_id = stack
        .cli(&["client", "secret", "list", &partner_center_only.0])
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    stack.cli(&[
        "client",
        "secret",
        "revoke",
        &partner_center_only.0,
        &old_id,
    ]);
    assert_eq!(
        stack
            .token(&partner_center_only, CONTOSO, token_body())
            .await
            .0,
        401
    );
    assert_eq!(stack.token(&rolled, CONTOSO, token_body()).await.0, 200);
}

async fn cold_burst_makes_one_refresh_and_is_logged(backend: Backend) {
    let Some(db) = support::fresh_database(backend).await else {
        return;
    };
    let stack = Stack::start(&db.url, StackOptions::default()).await;
    stack.consent("jane@contoso.example").await;
    let creds = create(
        &stack,
        &["--resource", PARTNER_CENTER, "--rate-limit", "100000"],
    );
    let before = stack.refresh_calls().await;
    let mut burst = tokio::task::JoinSet::new();
    for _ in 0..500 {
        let (http, url, creds) = (
            stack.http.clone(),
            format!("{}/api/v1/partners/{CONTOSO}/token", stack.sv()),
            creds.clone(),
        );
        burst.spawn(async move {
            let response = http
                .post(url)
                .basic_auth(&creds.0, Some(&creds.1))
                .json(&token_body())
                .send()
                .await
                .unwrap();
            (
                response.status().as_u16(),
                response.json::<Value>().await.unwrap(),
            )
        });
    }
    let mut tokens = std::collections::HashSet::new();
    while let Some(result) = burst.join_next().await {
        let (status, body) = result.unwrap();
        assert_eq!(status, 200, "{body}");
        tokens.insert(body["access_token"].as_str().unwrap().to_string());
    }
    assert_eq!(
        stack.refresh_calls().await - before,
        1,
        "500 concurrent misses, one IdP call"
    );
    assert_eq!(tokens.len(), 1);

    // Every request is in the log (written in batches, off the request path), with mfa.
    eventually(Duration::from_secs(10), "500 logged requests", || async {
        stack
            .scalar(
                "SELECT COUNT(*) FROM token_requests WHERE tenant_id = $1",
                CONTOSO,
            )
            .await
            == 500
    })
    .await;
    assert_eq!(
        stack
            .scalar(
                "SELECT COUNT(*) FROM token_requests WHERE tenant_id = $1 AND cached = 0",
                CONTOSO
            )
            .await,
        1
    );
    assert_eq!(
        stack
            .scalar(
                "SELECT COUNT(*) FROM token_requests WHERE tenant_id = $1 AND mfa = 1",
                CONTOSO
            )
            .await,
        500
    );
    let clients: Value = serde_json::from_str(&stack.cli(&["client", "list", "--json"])).unwrap();
    assert!(clients[0]["last_used_at"].is_string(), "{clients}");
}

async fn rate_limits_and_hostile_bodies(backend: Backend) {
    let Some(db) = support::fresh_database(backend).await else {
        return;
    };
    let stack = Stack::start(&db.url, StackOptions::default()).await;
    stack.consent("jane@contoso.example").await;
    let creds = create(&stack, &["--resource", PARTNER_CENTER, "--rate-limit", "3"]);
    for _ in 0..3 {
        assert_eq!(stack.token(&creds, CONTOSO, token_body()).await.0, 200);
    }
    let response = stack
        .http
        .post(format!("{}/api/v1/partners/{CONTOSO}/token", stack.sv()))
        .basic_auth(&creds.0, Some(&creds.1))
        .json(&token_body())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    let wait: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=20).contains(&wait), "{wait}");
    assert_eq!(
        response.json::<Value>().await.unwrap()["code"],
        "rate_limited"
    );

    let roomy = create(&stack, &["--resource", PARTNER_CENTER]);
    let post = |body: Vec<u8>| {
        stack
            .http
            .post(format!("{}/api/v1/partners/{CONTOSO}/token", stack.sv()))
            .basic_auth(&roomy.0, Some(&roomy.1))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    // The server answers 413 and closes that connection: send it on a client that keeps no
    // connections, with a body the socket buffer takes in one write.
    let oversized = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
        .post(format!("{}/api/v1/partners/{CONTOSO}/token", stack.sv()))
        .basic_auth(&roomy.0, Some(&roomy.1))
        .header("content-type", "application/json")
        .body(vec![b'a'; 17 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(oversized.status(), 413);
    for bad in [
        &b"{"[..],
        b"[]",
        b"{\"resource\": 5, \"purpose\": \"x\"}",
        b"{\"resource\": \"x\", \"purpose\": \"x\", \"extra\": 1}",
        b"\xff\xfe",
    ] {
        let response = post(bad.to_vec()).await.unwrap();
        assert_eq!(response.status(), 400, "{}", String::from_utf8_lossy(bad));
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
    }
    let response = stack
        .http
        .post(format!(
            "{}/api/v1/partners/..%2F..%2Fetc/token",
            stack.sv()
        ))
        .basic_auth(&roomy.0, Some(&roomy.1))
        .json(&token_body())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
}

/// Whether `id` is what samvault accepts as a request id: short, visible ASCII.
fn plausible_request_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_graphic())
}

/// The `x-request-id` of a response, asserted to be there and plausible.
fn request_id_of(response: &reqwest::Response) -> String {
    let id = response
        .headers()
        .get("x-request-id")
        .expect("every response carries x-request-id")
        .to_str()
        .expect("a visible ASCII request id")
        .to_string();
    assert!(plausible_request_id(&id), "{id:?}");
    id
}

/// A request id given by the caller is echoed in the response header, in the problem body
/// and in the log; a hostile one is replaced; without one, one is made up.
async fn request_ids_are_echoed_validated_or_made(stack: &Stack) {
    let token_url = format!("{}/api/v1/partners/{CONTOSO}/token", stack.sv());
    let refused = |id: Option<reqwest::header::HeaderValue>| {
        let mut request = stack
            .http
            .post(&token_url)
            .basic_auth("no-such-client", Some("wrong"))
            .json(&token_body());
        if let Some(id) = id {
            request = request.header("x-request-id", id);
        }
        request.send()
    };

    let given = "trace-4f2a:9b/1+x";
    let response = refused(Some(given.parse().unwrap())).await.unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(request_id_of(&response), given, "the given id is echoed");
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["request_id"], given, "{problem}");
    assert_eq!(problem["code"], "invalid_client");
    eventually(
        Duration::from_secs(5),
        "the request id in the log",
        || async { stack.log(0).contains(given) },
    )
    .await;

    let too_long = "a".repeat(65);
    for hostile in [
        reqwest::header::HeaderValue::from_str(&too_long).unwrap(),
        reqwest::header::HeaderValue::from_static("two words"),
        reqwest::header::HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap(),
        reqwest::header::HeaderValue::from_bytes(b"tab\there").unwrap(),
        reqwest::header::HeaderValue::from_static(""),
    ] {
        let response = refused(Some(hostile.clone())).await.unwrap();
        let id = request_id_of(&response);
        assert_ne!(
            id.as_bytes(),
            hostile.as_bytes(),
            "a hostile id is replaced"
        );
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["request_id"], id.as_str(), "{problem}");
    }

    let first = refused(None).await.unwrap();
    let second = refused(None).await.unwrap();
    let made = request_id_of(&first);
    assert_ne!(made, request_id_of(&second), "each request gets its own id");
    let problem: Value = first.json().await.unwrap();
    assert_eq!(problem["request_id"], made.as_str());
    let health = stack
        .http
        .get(format!("{}/healthz", stack.sv()))
        .send()
        .await
        .unwrap();
    request_id_of(&health);
    let missing = stack
        .http
        .get(format!("{}/api/v1/nowhere", stack.sv()))
        .header("x-request-id", "lost-and-found")
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let problem: Value = missing.json().await.unwrap();
    assert_eq!(problem["request_id"], "lost-and-found", "{problem}");
}

/// Every answer of the integrations API, success or refusal, says `Cache-Control: no-store`.
async fn every_api_response_is_no_store(stack: &Stack) {
    let all = create(
        stack,
        &["--resource", PARTNER_CENTER, "--rate-limit", "1000"],
    );
    let tokens_only = create(
        stack,
        &["--resource", PARTNER_CENTER, "--permission", "tokens:issue"],
    );
    let limited = create(stack, &["--resource", PARTNER_CENTER, "--rate-limit", "1"]);
    let sv = stack.sv();
    let token = format!("{sv}/api/v1/partners/{CONTOSO}/token");
    let http = &stack.http;
    let post = |url: String, creds: &(String, String), body: Vec<u8>| {
        http.post(url)
            .basic_auth(&creds.0, Some(&creds.1))
            .header("content-type", "application/json")
            .body(body)
    };
    let get = |path: &str, creds: &(String, String)| {
        http.get(format!("{sv}{path}"))
            .basic_auth(&creds.0, Some(&creds.1))
    };
    let body = serde_json::to_vec(&token_body()).unwrap();
    let cases = [
        (200, post(token.clone(), &all, body.clone())),
        (200, get("/api/v1/partners", &all)),
        (200, get(&format!("/api/v1/partners/{CONTOSO}"), &all)),
        (400, post(token.clone(), &all, b"{".to_vec())),
        (
            401,
            post(token.clone(), &("x".into(), "y".into()), body.clone()),
        ),
        (403, get("/api/v1/partners", &tokens_only)),
        (404, get(&format!("/api/v1/partners/{WINGTIP}"), &all)),
        (404, get("/api/v1/nowhere", &all)),
        (405, get(&format!("/api/v1/partners/{CONTOSO}/token"), &all)),
        (200, post(token.clone(), &limited, body.clone())),
        (429, post(token.clone(), &limited, body.clone())),
    ];
    for (expected, request) in cases {
        let response = request.send().await.unwrap();
        let url = response.url().clone();
        assert_eq!(response.status().as_u16(), expected, "{url}");
        assert_eq!(
            response
                .headers()
                .get("cache-control")
                .map(|v| v.to_str().unwrap()),
            Some("no-store"),
            "{expected} from {url}"
        );
    }
    let oversized = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
        .post(&token)
        .basic_auth(&all.0, Some(&all.1))
        .header("content-type", "application/json")
        .body(vec![b'a'; 17 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(oversized.status(), 413);
    assert_eq!(oversized.headers()["cache-control"], "no-store");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_and_no_store() {
    let db = support::fresh_database(Backend::Sqlite).await.unwrap();
    let stack = Stack::start(&db.url, StackOptions::default()).await;
    stack.consent("jane@contoso.example").await;
    every_api_response_is_no_store(&stack).await;
    request_ids_are_echoed_validated_or_made(&stack).await;
}

/// The customer routes refuse hostile input with a clear 4xx and change nothing: no IdP
/// call, no customer status, no grant version, nothing logged as issued.
async fn customer_routes_refuse_hostile_input(backend: Backend) {
    use support::customers::{ADATUM, consent_in, seed};
    let Some(db) = support::fresh_database(backend).await else {
        return;
    };
    let stack = Stack::start(&db.url, StackOptions::default()).await;
    stack.consent("jane@contoso.example").await;
    seed(&stack, CONTOSO, &[ADATUM]).await;
    let creds = create(
        &stack,
        &[
            "--resource",
            PARTNER_CENTER,
            "--resource",
            GRAPH,
            "--permission",
            "customers:issue",
            "--permission",
            "tokens:issue",
            "--permission",
            "partners:read",
        ],
    );
    consent_in(&stack, &creds, CONTOSO, &[ADATUM]).await;
    let calls = stack.refresh_calls().await;
    let versions = "SELECT MAX(version) FROM grants WHERE tenant_id = $1";
    let version = stack.scalar(versions, CONTOSO).await;
    let sv = stack.sv().to_string();
    let send = |method: reqwest::Method, path: String, body: Vec<u8>| {
        stack
            .http
            .request(method, format!("{sv}{path}"))
            .basic_auth(&creds.0, Some(&creds.1))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let token_path = format!("/api/v1/partners/{CONTOSO}/customers/{ADATUM}/token");
    let good = serde_json::to_vec(&json!({ "resource": GRAPH, "purpose": "x" })).unwrap();
    let mut cases: Vec<(reqwest::Method, String, Vec<u8>, u16)> = Vec::new();
    for bad in [
        &b"{"[..],
        b"[]",
        b"",
        b"{\"resource\": 5, \"purpose\": \"x\"}",
        b"{\"resource\": \"https://graph.microsoft.com\", \"purpose\": \"x\", \"extra\": 1}",
        b"{\"resource\": \"https://graph.microsoft.com\"}",
        b"{\"resource\": \"https://graph.microsoft.com\", \"purpose\": \"a\\u0000b\"}",
        b"{\"resource\": \"https://evil.example\", \"purpose\": \"x\"}",
        b"\xff\xfe",
    ] {
        cases.push((reqwest::Method::POST, token_path.clone(), bad.to_vec(), 400));
    }
    let long = "a".repeat(3000);
    for customer in [
        "..%2F..%2Fetc",
        "not-a-guid",
        "%00",
        long.as_str(),
        "7b1e0c3a-5d2f-4c8e-9a6b-00000000c001%20",
    ] {
        let path = format!("/api/v1/partners/{CONTOSO}/customers/{customer}/token");
        cases.push((reqwest::Method::POST, path, good.clone(), 400));
    }
    let path = format!("/api/v1/partners/..%2F/customers/{ADATUM}/token");
    cases.push((reqwest::Method::POST, path, good.clone(), 400));
    cases.push((reqwest::Method::GET, token_path.clone(), Vec::new(), 405));
    let list = format!("/api/v1/partners/{CONTOSO}/customers");
    for query in [
        "?limit=0",
        "?limit=abc",
        "?limit=1001",
        "?after=..%2F..",
        "?extra=1",
        "?limit=-1",
    ] {
        cases.push((
            reqwest::Method::GET,
            format!("{list}{query}"),
            Vec::new(),
            400,
        ));
    }
    cases.push((
        reqwest::Method::GET,
        "/api/v1/partners/not-a-guid/customers".into(),
        Vec::new(),
        400,
    ));
    for (method, path, body, expected) in cases {
        let response = send(method.clone(), path.clone(), body).await.unwrap();
        let status = response.status().as_u16();
        assert_eq!(
            status,
            expected,
            "{method} {}",
            &path[..path.len().min(120)]
        );
        if status != 405 {
            assert_eq!(
                response.headers()["content-type"],
                "application/problem+json",
                "{path}"
            );
            let problem: Value = response.json().await.unwrap();
            assert_eq!(problem["code"], "invalid_request", "{problem}");
        }
    }
    let oversized = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
        .post(format!("{sv}{token_path}"))
        .basic_auth(&creds.0, Some(&creds.1))
        .header("content-type", "application/json")
        .body(vec![b'a'; 17 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(oversized.status(), 413);
    assert_eq!(stack.refresh_calls().await, calls, "no IdP call");
    assert_eq!(
        stack.scalar(versions, CONTOSO).await,
        version,
        "no grant version"
    );
    let status = stack
        .scalar("SELECT COUNT(*) FROM customers WHERE customer_tenant_id = $1 AND status = 'unconsented' AND reason IS NULL", ADATUM)
        .await;
    assert_eq!(status, 1, "the customer is untouched");
    // The good request still works afterwards.
    let response = send(reqwest::Method::POST, token_path, good).await.unwrap();
    assert_eq!(response.status(), 200);
}

on_both_backends!(
    least_privilege_and_revocation,
    cold_burst_makes_one_refresh_and_is_logged,
    rate_limits_and_hostile_bodies,
    customer_routes_refuse_hostile_input
);
