//! `GET /api/openapi.json` against a real `serve`: the document describes the router's API
//! routes, its security scheme and every problem code, and real responses match it.
#![allow(clippy::too_many_lines)] // scenarios read top to bottom

mod support;

use std::collections::BTreeSet;

use serde_json::{Value, json};
use support::Backend;
use support::customers::{consent_in, customer_token_request, seed};
use support::stack::*;

const GRAPH: &str = "https://graph.microsoft.com";
const TOKEN_PATH: &str = "/api/v1/partners/{tenant_id}/token";
const LIST_PATH: &str = "/api/v1/partners";
const PARTNER_PATH: &str = "/api/v1/partners/{tenant_id}";
const CUSTOMERS_PATH: &str = "/api/v1/partners/{tenant_id}/customers";
const CUSTOMER_TOKEN_PATH: &str =
    "/api/v1/partners/{tenant_id}/customers/{customer_tenant_id}/token";
use support::customers::ADATUM;
const ALL_PATHS: [&str; 5] = [
    TOKEN_PATH,
    LIST_PATH,
    PARTNER_PATH,
    CUSTOMERS_PATH,
    CUSTOMER_TOKEN_PATH,
];

/// Every (status, code) the integrations API documents (REFERENCE §3.2 and the 413 of the
/// body limit), and the operations whose documentation must name it.
const EXPECTED: &[(u16, &str, &[&str])] = &[
    (400, "invalid_request", &ALL_PATHS),
    (401, "invalid_client", &ALL_PATHS),
    (403, "permission_denied", &ALL_PATHS),
    (
        403,
        "resource_not_allowed",
        &[TOKEN_PATH, CUSTOMER_TOKEN_PATH],
    ),
    (
        403,
        "partner_not_allowed",
        &[
            TOKEN_PATH,
            PARTNER_PATH,
            CUSTOMERS_PATH,
            CUSTOMER_TOKEN_PATH,
        ],
    ),
    (
        404,
        "partner_not_found",
        &[
            TOKEN_PATH,
            PARTNER_PATH,
            CUSTOMERS_PATH,
            CUSTOMER_TOKEN_PATH,
        ],
    ),
    (404, "customer_not_found", &[CUSTOMER_TOKEN_PATH]),
    (
        409,
        "reconsent_required",
        &[TOKEN_PATH, CUSTOMER_TOKEN_PATH],
    ),
    (409, "customer_consent_required", &[CUSTOMER_TOKEN_PATH]),
    (409, "customer_access_denied", &[CUSTOMER_TOKEN_PATH]),
    (413, "body_too_large", &[TOKEN_PATH, CUSTOMER_TOKEN_PATH]),
    (
        422,
        "resource_not_consented",
        &[TOKEN_PATH, CUSTOMER_TOKEN_PATH],
    ),
    (429, "rate_limited", &ALL_PATHS),
    (502, "idp_error", &[TOKEN_PATH, CUSTOMER_TOKEN_PATH]),
    (503, "idp_unavailable", &[TOKEN_PATH, CUSTOMER_TOKEN_PATH]),
    (
        503,
        "app_credentials_invalid",
        &[TOKEN_PATH, CUSTOMER_TOKEN_PATH],
    ),
    (
        503,
        "key_provider_unavailable",
        &[TOKEN_PATH, CUSTOMER_TOKEN_PATH],
    ),
    (503, "storage_unavailable", &ALL_PATHS),
];

fn method_of(path: &str) -> &'static str {
    if path.ends_with("/token") {
        "post"
    } else {
        "get"
    }
}

/// A minimal JSON Schema checker for what the document uses: `$ref` to components,
/// `allOf`, `type` (one or a list), `enum`, `required`, `properties`,
/// `additionalProperties: false`, `items`, string lengths, `pattern` (only `^Bearer$`),
/// numeric bounds and the `date-time` and `uuid` formats. Returns every violation.
struct Checker<'a> {
    doc: &'a Value,
}

impl Checker<'_> {
    fn resolve<'s>(&'s self, schema: &'s Value) -> &'s Value {
        match schema["$ref"].as_str() {
            Some(reference) => {
                let pointer = reference.strip_prefix('#').expect("local $ref");
                let target = self
                    .doc
                    .pointer(pointer)
                    .unwrap_or_else(|| panic!("unresolved {reference}"));
                self.resolve(target)
            }
            None => schema,
        }
    }

    fn check(&self, schema: &Value, value: &Value, at: &str, errors: &mut Vec<String>) {
        let schema = self.resolve(schema);
        if let Some(all) = schema["allOf"].as_array() {
            for part in all {
                self.check(part, value, at, errors);
            }
        }
        if let Some(types) = schema.get("type") {
            let types: Vec<&str> = match types {
                Value::String(t) => vec![t.as_str()],
                Value::Array(list) => list.iter().filter_map(Value::as_str).collect(),
                other => panic!("odd type {other}"),
            };
            let ok = types.iter().any(|t| match *t {
                "string" => value.is_string(),
                "integer" => value.is_i64() || value.is_u64(),
                "number" => value.is_number(),
                "boolean" => value.is_boolean(),
                "object" => value.is_object(),
                "array" => value.is_array(),
                "null" => value.is_null(),
                other => panic!("odd type {other}"),
            });
            if !ok {
                errors.push(format!("{at}: {value} is not of type {types:?}"));
                return;
            }
        }
        if let Some(allowed) = schema["enum"].as_array()
            && !allowed.contains(value)
        {
            errors.push(format!("{at}: {value} is not one of {allowed:?}"));
        }
        match value {
            Value::Object(object) => {
                for name in schema["required"].as_array().into_iter().flatten() {
                    let name = name.as_str().unwrap();
                    if !object.contains_key(name) {
                        errors.push(format!("{at}: required property {name} is missing"));
                    }
                }
                let properties = schema["properties"].as_object();
                for (name, item) in object {
                    match properties.and_then(|p| p.get(name)) {
                        Some(property) => {
                            self.check(property, item, &format!("{at}.{name}"), errors)
                        }
                        None if schema["additionalProperties"] == json!(false) => {
                            errors.push(format!("{at}: property {name} is not allowed"))
                        }
                        None => {}
                    }
                }
            }
            Value::Array(items) => {
                if let Some(item_schema) = schema.get("items") {
                    for (i, item) in items.iter().enumerate() {
                        self.check(item_schema, item, &format!("{at}[{i}]"), errors);
                    }
                }
            }
            Value::String(text) => {
                let chars = text.chars().count() as u64;
                if schema["minLength"].as_u64().is_some_and(|min| chars < min) {
                    errors.push(format!("{at}: {text:?} is too short"));
                }
                if schema["maxLength"].as_u64().is_some_and(|max| chars > max) {
                    errors.push(format!("{at}: {text:?} is too long"));
                }
                if schema["pattern"] == "^Bearer$" && text != "Bearer" {
                    errors.push(format!("{at}: {text:?} does not match ^Bearer$"));
                }
                match schema["format"].as_str() {
                    Some("date-time") if !is_rfc3339(text) => {
                        errors.push(format!("{at}: {text:?} is not an RFC 3339 date-time"))
                    }
                    Some("uuid") if uuid::Uuid::try_parse(text).is_err() || text.len() != 36 => {
                        errors.push(format!("{at}: {text:?} is not a UUID"))
                    }
                    _ => {}
                }
            }
            Value::Number(number) => {
                let n = number.as_f64().unwrap();
                if schema["minimum"].as_f64().is_some_and(|min| n < min) {
                    errors.push(format!("{at}: {n} is below the minimum"));
                }
                if schema["maximum"].as_f64().is_some_and(|max| n > max) {
                    errors.push(format!("{at}: {n} is above the maximum"));
                }
            }
            _ => {}
        }
    }
}

fn is_rfc3339(text: &str) -> bool {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).is_ok()
}

/// The documented operation, or a panic naming what is missing.
fn operation<'d>(doc: &'d Value, path: &str, method: &str) -> &'d Value {
    let op = &doc["paths"][path][method];
    assert!(op.is_object(), "{method} {path} is not documented");
    op
}

/// Asserts that a real response matches the documented response for its status: the
/// content type is documented, the body matches its schema, required headers are present.
async fn conforms(
    doc: &Value,
    path: &str,
    method: &str,
    response: reqwest::Response,
) -> (u16, Value) {
    let status = response.status().as_u16();
    let documented = &operation(doc, path, method)["responses"][status.to_string()];
    assert!(
        documented.is_object(),
        "{method} {path}: status {status} is not documented"
    );
    for (name, header) in documented["headers"].as_object().into_iter().flatten() {
        if header["required"] == json!(true) {
            assert!(
                response.headers().contains_key(name.as_str()),
                "{method} {path} {status}: header {name} is documented as required"
            );
        }
    }
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    let body: Value = response.json().await.unwrap();
    let media = &documented["content"][content_type.as_str()];
    assert!(
        media.is_object(),
        "{method} {path} {status}: content type {content_type} is not documented"
    );
    let mut errors = Vec::new();
    Checker { doc }.check(&media["schema"], &body, "$", &mut errors);
    assert!(
        errors.is_empty(),
        "{method} {path} {status} does not match the document: {errors:#?}\n{body:#}"
    );
    (status, body)
}

fn create(stack: &Stack, args: &[&str]) -> (String, String) {
    let mut all = vec!["client", "create", "--name", "openapi", "--json"];
    all.extend_from_slice(args);
    let created: Value = serde_json::from_str(&stack.cli(&all)).unwrap();
    (
        created["client_id"].as_str().unwrap().into(),
        created["client_secret"].as_str().unwrap().into(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_describes_the_api_and_real_responses_match_it() {
    let db = support::fresh_database(Backend::Sqlite).await.unwrap();
    let stack = Stack::start(&db.url, StackOptions::default()).await;
    stack.consent("jane@contoso.example").await;

    // The document: OpenAPI 3, no authentication needed to read it.
    let response = stack
        .http
        .get(format!("{}/api/openapi.json", stack.sv()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let doc: Value = response.json().await.unwrap();
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3."),
        "{}",
        doc["openapi"]
    );

    // Exactly the five API operations, each behind HTTP Basic.
    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .filter(|k| {
                    ["get", "put", "post", "delete", "patch", "head", "options"]
                        .contains(&k.as_str())
                })
                .map(move |m| (path.clone(), m.clone()))
        })
        .collect();
    let expected: BTreeSet<(String, String)> = ALL_PATHS
        .iter()
        .map(|p| (p.to_string(), method_of(p).to_string()))
        .collect();
    assert_eq!(documented, expected);
    assert_eq!(
        doc["components"]["securitySchemes"]["basic"],
        json!({
            "type": "http",
            "scheme": "basic",
            "description": doc["components"]["securitySchemes"]["basic"]["description"],
        })
    );
    for (path, method) in &expected {
        assert_eq!(
            operation(&doc, path, method)["security"],
            json!([{ "basic": [] }]),
            "{method} {path}"
        );
    }

    // Every problem code, at its status, on the operations that can answer with it.
    for (status, code, paths) in EXPECTED {
        for path in *paths {
            let response = &operation(&doc, path, method_of(path))["responses"][status.to_string()];
            let schema = &response["content"]["application/problem+json"]["schema"];
            let codes = &schema["allOf"][1]["properties"]["code"]["enum"];
            assert!(
                codes.as_array().is_some_and(|c| c.contains(&json!(code))),
                "{path}: {status} {code} is not documented: {response:#}"
            );
            assert_eq!(
                schema["allOf"][0]["$ref"], "#/components/schemas/Problem",
                "{path} {status}"
            );
            if *status == 429 {
                assert_eq!(
                    response["headers"]["Retry-After"]["required"],
                    json!(true),
                    "{path}: 429 carries Retry-After"
                );
            }
        }
    }
    let problem = &doc["components"]["schemas"]["Problem"];
    for field in ["type", "title", "status", "code", "detail"] {
        assert!(
            problem["required"]
                .as_array()
                .unwrap()
                .contains(&json!(field)),
            "Problem.{field} is required"
        );
    }
    let request = &doc["components"]["schemas"]["TokenRequest"];
    assert_eq!(request["additionalProperties"], json!(false));
    assert_eq!(
        (
            &request["properties"]["purpose"]["minLength"],
            &request["properties"]["purpose"]["maxLength"]
        ),
        (&json!(1), &json!(200))
    );
    assert!(
        request["properties"]["resource"]["examples"]
            .as_array()
            .unwrap()
            .contains(&json!(PARTNER_CENTER))
    );

    // The router serves each documented operation and no other method on its path: the
    // routes and the document are one list.
    for (path, method) in &expected {
        let path = path
            .replace("{tenant_id}", CONTOSO)
            .replace("{customer_tenant_id}", ADATUM);
        let url = format!("{}{path}", stack.sv());
        for other in ["GET", "POST", "PUT", "DELETE", "PATCH"] {
            let response = stack
                .http
                .request(other.parse().unwrap(), &url)
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            if other.eq_ignore_ascii_case(method) {
                assert_eq!(status, 401, "{other} {path} is routed (and wants a client)");
            } else {
                assert_eq!(status, 405, "{other} {path} is not an operation");
            }
        }
    }

    // Real responses against the document.
    let all = create(
        &stack,
        &["--resource", PARTNER_CENTER, "--rate-limit", "100000"],
    );
    let post = |creds: &(String, String), tenant: &str, body: Vec<u8>| {
        stack
            .http
            .post(format!("{}/api/v1/partners/{tenant}/token", stack.sv()))
            .basic_auth(&creds.0, Some(&creds.1))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let good = json!({ "resource": PARTNER_CENTER, "purpose": "openapi conformance" });
    let mut errors = Vec::new();
    Checker { doc: &doc }.check(
        &operation(&doc, TOKEN_PATH, "post")["requestBody"]["content"]["application/json"]
            ["schema"],
        &good,
        "request",
        &mut errors,
    );
    assert!(errors.is_empty(), "{errors:?}");
    let body = serde_json::to_vec(&good).unwrap();

    let (status, token) = conforms(
        &doc,
        TOKEN_PATH,
        "post",
        post(&all, CONTOSO, body.clone()).await.unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{token}");
    assert_eq!(token["tenant_id"], CONTOSO);

    let (status, problem) = conforms(
        &doc,
        TOKEN_PATH,
        "post",
        post(
            &all,
            CONTOSO,
            serde_json::to_vec(&json!({ "resource": PARTNER_CENTER })).unwrap(),
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (400, Some("invalid_request"))
    );

    let stranger = ("nobody".to_string(), "wrong".to_string());
    let (status, problem) = conforms(
        &doc,
        TOKEN_PATH,
        "post",
        post(&stranger, CONTOSO, body.clone()).await.unwrap(),
    )
    .await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (401, Some("invalid_client"))
    );

    let graph = serde_json::to_vec(&json!({ "resource": GRAPH, "purpose": "x" })).unwrap();
    let (status, problem) = conforms(
        &doc,
        TOKEN_PATH,
        "post",
        post(&all, CONTOSO, graph).await.unwrap(),
    )
    .await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (403, Some("resource_not_allowed"))
    );

    let (status, problem) = conforms(
        &doc,
        TOKEN_PATH,
        "post",
        // The server answers 413 from Content-Length and closes the connection: send it on a
        // client that keeps no connections, with a body the socket buffer takes in one write.
        reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap()
            .post(format!("{}/api/v1/partners/{CONTOSO}/token", stack.sv()))
            .basic_auth(&all.0, Some(&all.1))
            .header("content-type", "application/json")
            .body(vec![b'a'; 17 * 1024])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (413, Some("body_too_large"))
    );

    let get = |creds: &(String, String), path: String| {
        stack
            .http
            .get(format!("{}{path}", stack.sv()))
            .basic_auth(&creds.0, Some(&creds.1))
            .send()
    };
    let (status, page) = conforms(
        &doc,
        LIST_PATH,
        "get",
        get(&all, "/api/v1/partners".into()).await.unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(page["partners"].as_array().unwrap().len(), 1);
    let (status, problem) = conforms(
        &doc,
        LIST_PATH,
        "get",
        get(&all, "/api/v1/partners?limit=0".into()).await.unwrap(),
    )
    .await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (400, Some("invalid_request"))
    );

    let (status, partner) = conforms(
        &doc,
        PARTNER_PATH,
        "get",
        get(&all, format!("/api/v1/partners/{CONTOSO}"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, partner["status"].as_str()), (200, Some("active")));
    let (status, problem) = conforms(
        &doc,
        PARTNER_PATH,
        "get",
        get(&all, format!("/api/v1/partners/{WINGTIP}"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (404, Some("partner_not_found"))
    );

    // Scoped and rate-limited clients: 403 on the reads, then 429 with Retry-After.
    let contoso_only = create(
        &stack,
        &[
            "--resource",
            PARTNER_CENTER,
            "--partner",
            CONTOSO,
            "--rate-limit",
            "3",
        ],
    );
    let (status, problem) = conforms(
        &doc,
        PARTNER_PATH,
        "get",
        get(&contoso_only, format!("/api/v1/partners/{WINGTIP}"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (403, Some("partner_not_allowed"))
    );
    let mut limited = None;
    for _ in 0..5 {
        let response = get(&contoso_only, "/api/v1/partners".into()).await.unwrap();
        if response.status() == 429 {
            limited = Some(conforms(&doc, LIST_PATH, "get", response).await);
            break;
        }
        conforms(&doc, LIST_PATH, "get", response).await;
    }
    let (_, problem) = limited.expect("the fourth request within a minute is refused");
    assert_eq!(problem["code"], "rate_limited");

    customer_routes_conform(&stack, &doc).await;

    // Wingtip is in the directory but never consented; this client may use every partner.
    // Answered at once: the broker must not wait for a lease on a partner that is not there.
    let started = std::time::Instant::now();
    let (status, problem) = conforms(
        &doc,
        TOKEN_PATH,
        "post",
        post(&all, WINGTIP, body.clone()).await.unwrap(),
    )
    .await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (404, Some("partner_not_found"))
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "an unknown partner took {:?}",
        started.elapsed()
    );
}

/// The customer routes' real answers against the document: a token for Adatum (Contoso's
/// customer), the refusals only they have, and the customer list.
async fn customer_routes_conform(stack: &Stack, doc: &Value) {
    seed(stack, CONTOSO, &[ADATUM]).await;
    let issuer = create(
        stack,
        &[
            "--resource",
            GRAPH,
            "--resource",
            PARTNER_CENTER,
            "--permission",
            "customers:issue",
            "--permission",
            "tokens:issue",
            "--permission",
            "partners:read",
        ],
    );
    consent_in(stack, &issuer, CONTOSO, &[ADATUM]).await;
    let body = json!({ "resource": GRAPH, "purpose": "openapi conformance" });
    let post = |creds: &(String, String), customer: &str| {
        customer_token_request(stack, creds, CONTOSO, customer, &body).send()
    };
    let (status, token) = conforms(
        doc,
        CUSTOMER_TOKEN_PATH,
        "post",
        post(&issuer, ADATUM).await.unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{token}");
    assert_eq!(
        (
            token["tenant_id"].as_str(),
            token["customer_tenant_id"].as_str()
        ),
        (Some(CONTOSO), Some(ADATUM))
    );
    let stranger = uuid::Uuid::new_v4().to_string();
    let (status, problem) = conforms(
        doc,
        CUSTOMER_TOKEN_PATH,
        "post",
        post(&issuer, &stranger).await.unwrap(),
    )
    .await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (404, Some("customer_not_found"))
    );
    let default = create(stack, &["--resource", GRAPH]);
    let (status, problem) = conforms(
        doc,
        CUSTOMER_TOKEN_PATH,
        "post",
        post(&default, ADATUM).await.unwrap(),
    )
    .await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (403, Some("permission_denied"))
    );

    let list = |tenant: &str| {
        stack
            .http
            .get(format!("{}/api/v1/partners/{tenant}/customers", stack.sv()))
            .basic_auth(&issuer.0, Some(&issuer.1))
            .send()
    };
    let (status, page) = conforms(doc, CUSTOMERS_PATH, "get", list(CONTOSO).await.unwrap()).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["customers"][0]["status"], "consented", "{page}");
    let (status, problem) =
        conforms(doc, CUSTOMERS_PATH, "get", list(WINGTIP).await.unwrap()).await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (404, Some("partner_not_found"))
    );
}
