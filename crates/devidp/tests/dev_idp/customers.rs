//! Customer tenants and the Partner Center stand-in (REFERENCE §6), over real HTTP as samvault
//! drives them: list a partner's customers, consent the CPV app into them, redeem the
//! partner's refresh token at a customer's authority, and the `/_sim/` calls that change
//! customers or break Partner Center.

use devidp::{ADATUM, LITWARE, NORTHWIND, TAILSPIN};
use reqwest::Method;
use reqwest::header::HeaderMap;

use super::*;

/// Sent as `MS-CorrelationId` on every Partner Center call; answers echo it.
pub(super) const CORRELATION: &str = "0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0";
pub(super) const GRAPH: &str = "https://graph.microsoft.com";
pub(super) const GRAPH_APP: &str = "00000003-0000-0000-c000-000000000000";
pub(super) const JANE: &str = "jane@contoso.example";

/// A Partner Center answer as a client sees it.
pub(super) struct PcAnswer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

/// A Partner Center client holding one bearer token.
pub(super) struct Pc<'a> {
    pub sim: &'a Sim,
    pub token: String,
}

impl Pc<'_> {
    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> PcAnswer {
        self.call_with(method, path, body, &[]).await
    }

    pub async fn call_with(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> PcAnswer {
        let mut req = self
            .sim
            .http
            .request(method, self.sim.url(path))
            .header("accept", "application/json")
            .header("ms-correlationid", CORRELATION)
            .bearer_auth(&self.token);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        PcAnswer {
            status: resp.status(),
            headers: resp.headers().clone(),
            body: resp.json().await.unwrap_or(Value::Null),
        }
    }

    pub async fn list(&self, size: usize) -> PcAnswer {
        let path = format!("/v1/customers?size={size}");
        self.call(Method::GET, &path, None).await
    }

    /// Follows `links.next` as Microsoft documents it: its URI, with its headers.
    pub async fn next(&self, page: &Value) -> Option<PcAnswer> {
        let next = page["links"].get("next")?;
        let headers: Vec<(String, String)> = next["headers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| {
                (
                    h["key"].as_str().unwrap().into(),
                    h["value"].as_str().unwrap().into(),
                )
            })
            .collect();
        let headers: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let uri = next["uri"].as_str().unwrap();
        Some(self.call_with(Method::GET, uri, None, &headers).await)
    }

    pub async fn consent(&self, customer: &str, body: Value) -> PcAnswer {
        let path = format!("/v1/customers/{customer}/applicationconsents");
        self.call(Method::POST, &path, Some(body)).await
    }

    pub async fn consent_of(&self, method: Method, customer: &str) -> PcAnswer {
        let path = format!("/v1/customers/{customer}/applicationconsents/{DEMO_CLIENT_ID}");
        self.call(method, &path, None).await
    }
}

/// The demo app asking for `scope` on Microsoft Graph.
pub(super) fn graph_consent(scope: &str) -> Value {
    json!({
        "applicationId": DEMO_CLIENT_ID,
        "applicationGrants": [{ "enterpriseApplicationId": GRAPH_APP, "scope": scope }],
    })
}

/// `upn` signed in (with MFA unless the tenant has none) and consented: (refresh token,
/// Partner Center access token).
pub(super) async fn partner_tokens(sim: &Sim, upn: &str, mfa: bool) -> (String, String) {
    let (status, body) = sim.mint(json!({ "upn": upn, "mfa": mfa })).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let field = |name: &str| body[name].as_str().unwrap().to_string();
    (field("refresh_token"), field("access_token"))
}

pub(super) async fn pc_as<'a>(sim: &'a Sim, upn: &str) -> Pc<'a> {
    let (_, token) = partner_tokens(sim, upn, true).await;
    Pc { sim, token }
}

fn ids(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_string())
        .collect()
}

pub(super) fn graph_default() -> String {
    format!("{GRAPH}/.default")
}

// ---------- listing ----------

#[tokio::test]
async fn partner_center_lists_a_partners_customers_page_by_page() {
    let sim = demo().await;
    let pc = pc_as(&sim, JANE).await;
    let first = pc.list(2).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    assert_eq!(ids(&first.body), [ADATUM, NORTHWIND]);
    assert_eq!(first.body["totalCount"], 2);
    assert_eq!(first.body["attributes"]["objectType"], "Collection");
    let adatum = &first.body["items"][0];
    assert_eq!(adatum["companyProfile"]["tenantId"], ADATUM);
    assert_eq!(adatum["companyProfile"]["domain"], "adatum.example");
    assert_eq!(adatum["companyProfile"]["companyName"], "Adatum");
    let next = &first.body["links"]["next"];
    assert_eq!(next["uri"], "/v1/customers?size=2&seekOperation=Next");
    assert_eq!(next["headers"][0]["key"], "MS-ContinuationToken");

    let second = pc.next(&first.body).await.unwrap();
    assert_eq!(second.status, StatusCode::OK, "{}", second.body);
    assert_eq!(
        ids(&second.body),
        [TAILSPIN],
        "an ended relationship stays listed"
    );
    assert!(pc.next(&second.body).await.is_none(), "{}", second.body);

    // Another partner sees its own customers, and cannot resume Contoso's list.
    let trent = pc_as(&sim, "trent@wingtip.example").await;
    assert_eq!(ids(&trent.list(10).await.body), [LITWARE]);
    let stolen = trent.next(&first.body).await.unwrap();
    assert_eq!(stolen.status, StatusCode::BAD_REQUEST);
    assert_eq!(stolen.body["code"], "800002");

    // A bad size or a missing continuation token is a request error.
    for path in [
        "/v1/customers?size=0",
        "/v1/customers?size=x",
        "/v1/customers?size=2&seekOperation=Next",
    ] {
        let a = pc.call(Method::GET, path, None).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{path}: {}", a.body);
    }
    let all = pc.call(Method::GET, "/v1/customers", None).await;
    assert_eq!(ids(&all.body).len(), 3, "no size: one default-sized page");
    let counters = sim.sim_get("/counters").await["partner_center"].clone();
    assert_eq!(counters["calls"]["list"], 8);
    assert_eq!(counters["succeeded"]["list"], 4);
    assert_eq!(counters["refused"]["400"], 4);
}

#[tokio::test]
async fn generated_customers_follow_the_spec() {
    let sim = start(DevIdpOptions {
        generated_tenants: 2,
        generated_customers: 3,
        ..Default::default()
    })
    .await;
    let pc = pc_as(&sim, "admin@tenant-2.example").await;
    let page = pc.list(2).await;
    assert_eq!(
        ids(&page.body),
        [
            "00000000-0000-4000-9000-000000200001",
            "00000000-0000-4000-9000-000000200002"
        ]
    );
    assert_eq!(
        page.body["items"][1]["companyProfile"]["companyName"],
        "Customer 2-2"
    );
    let rest = pc.next(&page.body).await.unwrap();
    assert_eq!(ids(&rest.body), [devidp::generated_customer_id(2, 3)]);
    let view = sim.sim_get("/customers").await;
    assert_eq!(
        view.as_array().unwrap().len(),
        4 + 6,
        "the demo's four and six generated"
    );
    let one = sim
        .sim_get("/customers/00000000-0000-4000-9000-000000100001")
        .await;
    assert_eq!(one["partner_tenant_id"], devidp::generated_tenant_id(1));
    assert_eq!(one["relationship"], "active");
    assert_eq!(one["domain"], "customer-1-1.example");
}

// ---------- who may call ----------

#[tokio::test]
async fn partner_center_refuses_tokens_it_should() {
    let sim = demo().await;
    let refused = |a: &PcAnswer, status: StatusCode, code: &str| {
        assert_eq!(a.status, status, "{}", a.body);
        assert_eq!(a.body["code"], code, "{}", a.body);
        assert_eq!(a.body["source"], "PartnerFD");
    };
    let a = sim.http.get(sim.url("/v1/customers")).send().await.unwrap();
    let a = PcAnswer {
        status: a.status(),
        headers: a.headers().clone(),
        body: a.json().await.unwrap(),
    };
    refused(&a, StatusCode::UNAUTHORIZED, "800001");
    let garbage = Pc {
        sim: &sim,
        token: "not.a.jwt".into(),
    };
    refused(&garbage.list(5).await, StatusCode::UNAUTHORIZED, "400");

    // A token this IdP did not sign: Jane's claims with another signature.
    let jane = pc_as(&sim, JANE).await;
    let (head, _) = jane.token.rsplit_once('.').unwrap();
    let forged = Pc {
        sim: &sim,
        token: format!("{head}.c2lnbmF0dXJl"),
    };
    refused(&forged.list(5).await, StatusCode::UNAUTHORIZED, "400");

    // A Graph token is not a Partner Center token.
    let (_, graph) = sim
        .mint(json!({ "upn": JANE, "scopes": format!("{GRAPH}/.default offline_access") }))
        .await;
    let graph = Pc {
        sim: &sim,
        token: graph["access_token"].as_str().unwrap().into(),
    };
    refused(&graph.list(5).await, StatusCode::UNAUTHORIZED, "900420");

    // No MFA in `amr` (Fabrikam has none to offer): seed 002's 401.
    let (_, john) = partner_tokens(&sim, "john@fabrikam.example", false).await;
    let john = Pc {
        sim: &sim,
        token: john,
    };
    let a = john.list(5).await;
    refused(&a, StatusCode::UNAUTHORIZED, "10001");
    assert_eq!(
        a.headers["www-authenticate"],
        "Bearer error=\"invalid_token\""
    );
    assert_eq!(
        a.body["description"],
        "Authentication failed. MFA required."
    );

    // A Sales Agent sees the customers but may not consent apps into them.
    let sam = pc_as(&sim, "sam@contoso.example").await;
    assert_eq!(sam.list(5).await.status, StatusCode::OK);
    refused(
        &sam.consent(ADATUM, graph_consent("User.Read.All")).await,
        StatusCode::FORBIDDEN,
        "2032",
    );
    refused(
        &sam.consent_of(Method::DELETE, ADATUM).await,
        StatusCode::FORBIDDEN,
        "2032",
    );

    // Access tokens live an hour.
    sim.sim_post("/clock/advance", json!({ "hours": 1.1 }))
        .await;
    let a = jane.list(5).await;
    refused(&a, StatusCode::UNAUTHORIZED, "400");
    assert!(
        a.body["description"].as_str().unwrap().contains("expired"),
        "{}",
        a.body
    );
}

/// Seed 002's status line, read off the wire: `HTTP/1.1 401 Unauthorized - MFA required`.
#[tokio::test]
async fn the_mfa_refusal_has_partner_centers_status_line() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let sim = demo().await;
    let (_, token) = partner_tokens(&sim, "john@fabrikam.example", false).await;
    let addr = sim.base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET /v1/customers?size=5 HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 401 Unauthorized - MFA required\r\n"),
        "{answer}"
    );
}

// ---------- 50 requests per second per application id ----------

/// `n` list calls sent together, each on its own task, with `token`.
pub(super) async fn burst(sim: &Sim, token: &str, n: usize) -> Vec<(StatusCode, HeaderMap, Value)> {
    let calls: Vec<_> = (0..n)
        .map(|_| {
            let req = sim
                .http
                .get(sim.url("/v1/customers?size=1"))
                .bearer_auth(token);
            tokio::spawn(async move {
                let resp = req.send().await.unwrap();
                let (status, headers) = (resp.status(), resp.headers().clone());
                (status, headers, resp.json().await.unwrap_or(Value::Null))
            })
        })
        .collect();
    let mut out = Vec::with_capacity(n);
    for call in calls {
        out.push(call.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partner_center_allows_fifty_requests_a_second_per_app() {
    let sim = demo().await;
    let pc = pc_as(&sim, JANE).await;
    let started = Instant::now();
    let answers = burst(&sim, &pc.token, 60).await;
    let elapsed = started.elapsed();
    let ok = answers.iter().filter(|a| a.0 == StatusCode::OK).count();
    assert_eq!(ok, 50, "a burst of 60 in {elapsed:?}");
    let (_, headers, body) = answers
        .iter()
        .find(|a| a.0 == StatusCode::TOO_MANY_REQUESTS)
        .unwrap();
    assert_eq!(headers["retry-after"], "1");
    assert_eq!(body["statusCode"], 429);
    assert_eq!(
        body["message"],
        "Rate limit is exceeded. Try again in 1 seconds."
    );
    let counters = sim.sim_get("/counters").await["partner_center"].clone();
    assert_eq!(counters["throttled"], 10);
    // Waiting Retry-After is enough.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(pc.list(1).await.status, StatusCode::OK);
}

/// A client that never sends sooner than 20 ms after its previous request, by its own clock,
/// is never refused, however late the simulator handles each request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_pacing_fifty_a_second_is_never_throttled() {
    let sim = demo().await;
    let pc = pc_as(&sim, JANE).await;
    let mut next = Instant::now();
    for i in 0..110 {
        tokio::time::sleep_until(next.into()).await;
        next = Instant::now() + Duration::from_millis(20);
        let answer = pc.list(1).await;
        assert_eq!(answer.status, StatusCode::OK, "call {i}: {}", answer.body);
    }
    assert_eq!(
        sim.sim_get("/counters").await["partner_center"]["throttled"],
        0
    );
}

// ---------- application consents ----------

#[tokio::test]
async fn consents_are_created_read_replaced_and_removed() {
    let sim = demo().await;
    let pc = pc_as(&sim, JANE).await;
    let created = pc
        .consent(ADATUM, graph_consent("Directory.Read.All,User.Read.All"))
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    assert_eq!(created.body["applicationId"], DEMO_CLIENT_ID);
    assert_eq!(created.body["displayName"], "samvault demo CPV app");
    assert_eq!(
        created.body["applicationGrants"],
        json!([{ "enterpriseApplicationId": GRAPH_APP, "scope": "Directory.Read.All,User.Read.All" }])
    );
    let view = sim.sim_get(&format!("/customers/{ADATUM}")).await;
    let grant = &view["consents"][0]["grants"][0];
    assert_eq!(view["consents"][0]["application_id"], DEMO_CLIENT_ID);
    assert_eq!(
        grant["scopes"],
        json!(["Directory.Read.All", "User.Read.All"])
    );

    // An existing consent is not replaced by a POST: Partner Center wants DELETE, then POST.
    let again = pc.consent(ADATUM, graph_consent("User.Read.All")).await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    assert_eq!(
        again.body["description"],
        "Permission entry already exists."
    );
    let read = pc.consent_of(Method::GET, ADATUM).await;
    assert_eq!(read.status, StatusCode::OK);
    assert_eq!(read.body, created.body);
    let removed = pc.consent_of(Method::DELETE, ADATUM).await;
    assert_eq!(removed.status, StatusCode::NO_CONTENT);
    assert_eq!(
        pc.consent_of(Method::GET, ADATUM).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        pc.consent_of(Method::DELETE, ADATUM).await.status,
        StatusCode::NOT_FOUND
    );
    let replaced = pc.consent(ADATUM, graph_consent("User.Read.All")).await;
    assert_eq!(replaced.status, StatusCode::CREATED);
    let view = sim.sim_get(&format!("/customers/{ADATUM}")).await;
    assert_eq!(view["consents"][0]["grants"][0]["scope"], "User.Read.All");

    let counters = sim.sim_get("/counters").await["partner_center"].clone();
    assert_eq!(counters["succeeded"]["consent_create"], 2);
    assert_eq!(counters["succeeded"]["consent_delete"], 1);
    assert_eq!(counters["calls"]["consent_create"], 3);
    assert_eq!(counters["refused"]["409"], 1);
    assert_eq!(counters["refused"]["404"], 2);
}

#[tokio::test]
async fn consent_requests_are_checked() {
    let sim = demo().await;
    let pc = pc_as(&sim, JANE).await;
    let bad = |a: PcAnswer| {
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.body);
        assert_eq!(a.body["code"], "800002");
    };
    let other_app = json!({ "applicationId": "11111111-2222-4333-8444-555555555555",
        "applicationGrants": [{ "enterpriseApplicationId": GRAPH_APP, "scope": "User.Read.All" }] });
    bad(pc.consent(ADATUM, other_app).await);
    let unknown_api = json!({ "applicationId": DEMO_CLIENT_ID,
        "applicationGrants": [{ "enterpriseApplicationId": "11111111-2222-4333-8444-555555555555", "scope": "x" }] });
    bad(pc.consent(ADATUM, unknown_api).await);
    bad(pc.consent(ADATUM, graph_consent(" , ")).await);
    bad(pc
        .consent(
            ADATUM,
            json!({ "applicationId": DEMO_CLIENT_ID, "applicationGrants": [] }),
        )
        .await);
    bad(pc.consent(ADATUM, json!("not an object")).await);
    // Property names are case-insensitive, as scripts send them.
    let pascal = json!({ "ApplicationId": DEMO_CLIENT_ID, "DisplayName": "My CPV",
        "ApplicationGrants": [{ "EnterpriseApplicationId": "797F4846-BA00-4FD7-BA43-DAC1F8F63013", "Scope": "user_impersonation" }] });
    let created = pc.consent(NORTHWIND, pascal).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    assert_eq!(created.body["displayName"], "My CPV");
    assert_eq!(
        created.body["applicationGrants"][0]["enterpriseApplicationId"],
        "797f4846-ba00-4fd7-ba43-dac1f8f63013"
    );
    // Another partner's customer, or none at all, is not found.
    for customer in [LITWARE, "99999999-9999-4999-8999-999999999999"] {
        let a = pc.consent(customer, graph_consent("User.Read.All")).await;
        assert_eq!(a.status, StatusCode::NOT_FOUND, "{customer}");
        assert_eq!(a.body["code"], "1000");
    }
    // Another app's consent is not the caller's to read.
    let path = format!("/v1/customers/{NORTHWIND}/applicationconsents/{GRAPH_APP}");
    assert_eq!(
        pc.call(Method::GET, &path, None).await.status,
        StatusCode::FORBIDDEN
    );
}

// ---------- the customer authority ----------

/// Jane's refresh token and Contoso's Partner Center client, with the app consented for Graph
/// into Adatum and Tailspin.
pub(super) async fn consented(sim: &Sim) -> String {
    let (rt, token) = partner_tokens(sim, JANE, true).await;
    let pc = Pc { sim, token };
    for customer in [ADATUM, TAILSPIN] {
        let a = pc
            .consent(customer, graph_consent("Directory.Read.All,User.Read.All"))
            .await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    }
    rt
}

#[tokio::test]
async fn a_customer_authority_redeems_the_partners_rt_as_the_partner_user() {
    let sim = demo().await;
    let rt = consented(&sim).await;
    let (status, body) = sim.refresh(ADATUM, &rt, &graph_default()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["scope"], "Directory.Read.All User.Read.All");
    let (_, key) = sim.jwks_key(ADATUM).await;
    let iss = format!("{}/{ADATUM}/", sim.base);
    let at = claims(body["access_token"].as_str().unwrap(), &key, GRAPH, &iss);
    assert_eq!(at["tid"], ADATUM);
    assert_eq!(at["upn"], JANE);
    assert_eq!(at["idp"], format!("https://sts.windows.net/{CONTOSO}/"));
    let jane = sim.sim_get("/directory").await["tenants"][0]["users"][0]["oid"].clone();
    assert_eq!(at["oid"], jane);
    // The new RT is of the same grant: it serves the partner's own authority too.
    let next = body["refresh_token"].as_str().unwrap();
    let grants = sim.sim_get("/grants").await;
    let listed = grants
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["refresh_token"] == next)
        .unwrap();
    assert_eq!(listed["tenant_id"], CONTOSO);
    let (status, _) = sim.refresh(CONTOSO, next, &format!("{PC}/.default")).await;
    assert_eq!(status, StatusCode::OK);
    // v1, by domain, with `resource`.
    let form = [
        ("grant_type", "refresh_token"),
        ("client_id", DEMO_CLIENT_ID),
        ("client_secret", DEMO_CLIENT_SECRET),
        ("refresh_token", next),
        ("resource", GRAPH),
    ];
    let v1: Value = sim
        .http
        .post(sim.url("/adatum.example/oauth2/token"))
        .form(&form)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v1["resource"], GRAPH, "{v1}");
    // The customer's own discovery document exists, as Entra's does.
    let doc = sim
        .http
        .get(sim.url(&format!("/{ADATUM}/v2.0/.well-known/openid-configuration")))
        .send()
        .await
        .unwrap();
    assert_eq!(doc.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_customer_authority_refuses_without_relationship_or_consent() {
    let sim = demo().await;
    let rt = consented(&sim).await;
    let code = |(_, body): (StatusCode, Value)| aadsts(&body);
    assert_eq!(
        code(sim.refresh(NORTHWIND, &rt, &graph_default()).await),
        65001
    );
    assert_eq!(
        code(sim.refresh(TAILSPIN, &rt, &graph_default()).await),
        50020,
        "relationship ended"
    );
    assert_eq!(
        code(sim.refresh(LITWARE, &rt, &graph_default()).await),
        50020,
        "Wingtip's customer"
    );
    let unknown = "99999999-9999-4999-8999-999999999999";
    assert_eq!(
        code(sim.refresh(unknown, &rt, &graph_default()).await),
        90002
    );
    // Consented for Graph only: ARM there is not consented.
    let arm = "https://management.azure.com/.default";
    assert_eq!(code(sim.refresh(ADATUM, &rt, arm).await), 65001);

    sim.sim_post(&format!("/customers/{ADATUM}/remove-app"), json!({}))
        .await;
    assert_eq!(
        code(sim.refresh(ADATUM, &rt, &graph_default()).await),
        65001
    );
    let pc = pc_as(&sim, JANE).await;
    assert_eq!(
        pc.consent(ADATUM, graph_consent("User.Read.All"))
            .await
            .status,
        StatusCode::CREATED
    );
    assert_eq!(
        sim.refresh(ADATUM, &rt, &graph_default()).await.0,
        StatusCode::OK
    );
    sim.sim_post(&format!("/customers/{ADATUM}/end-relationship"), json!({}))
        .await;
    let (_, body) = sim.refresh(ADATUM, &rt, &graph_default()).await;
    assert_eq!(aadsts(&body), 50020);
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("'Adatum'"),
        "{body}"
    );
    sim.sim_post(
        &format!("/customers/{ADATUM}/restore-relationship"),
        json!({}),
    )
    .await;
    assert_eq!(
        sim.refresh(ADATUM, &rt, &graph_default()).await.0,
        StatusCode::OK
    );
    // The partner's own grant is untouched by all of it.
    assert_eq!(
        sim.refresh(CONTOSO, &rt, &format!("{PC}/.default")).await.0,
        StatusCode::OK
    );
    // A dead partner RT is dead at every authority.
    sim.sim_post(&format!("/users/{JANE}/reset-password"), json!({}))
        .await;
    assert_eq!(
        code(sim.refresh(ADATUM, &rt, &graph_default()).await),
        50173
    );
}

#[tokio::test]
async fn strict_rotation_holds_at_the_customer_authority() {
    let sim = start(DevIdpOptions {
        strict_rotation: true,
        ..Default::default()
    })
    .await;
    let rt = consented(&sim).await;
    let (status, body) = sim.refresh(ADATUM, &rt, &graph_default()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let successor = body["refresh_token"].as_str().unwrap().to_string();
    // The spent RT is dead everywhere, its successor alive everywhere, once.
    let (_, reused) = sim.refresh(CONTOSO, &rt, &format!("{PC}/.default")).await;
    assert_eq!(aadsts(&reused), 70000);
    let (status, _) = sim
        .refresh(CONTOSO, &successor, &format!("{PC}/.default"))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, body) = sim.refresh(ADATUM, &successor, &graph_default()).await;
    assert_eq!(aadsts(&body), 70000);
}

// ---------- /_sim/ ----------

#[tokio::test]
async fn sim_calls_add_drop_and_show_customers() {
    let sim = demo().await;
    let path = format!("/partners/{CONTOSO}/customers");
    let add = |body: Value| sim.sim_call(Method::POST, &path, Some(body));
    let fresh = "11111111-2222-4333-8444-555555555555";
    let (status, one) =
        add(json!({ "id": fresh, "name": "Fourth Coffee", "domain": "fourthcoffee.example" }))
            .await;
    assert_eq!(status, StatusCode::CREATED, "{one}");
    assert_eq!(one["relationship"], "active");
    let (status, many) =
        add(json!({ "customers": [{ "name": "A" }, { "relationship": "ended" }] })).await;
    assert_eq!(status, StatusCode::CREATED, "{many}");
    assert_eq!(many[1]["relationship"], "ended");
    assert_eq!(add(json!({ "id": fresh })).await.0, StatusCode::CONFLICT);
    assert_eq!(
        add(json!({ "id": "nope" })).await.0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        add(json!({ "relationship": "maybe" })).await.0,
        StatusCode::BAD_REQUEST
    );
    let unknown = sim
        .sim_call(
            Method::POST,
            "/partners/99999999-9999-4999-8999-999999999999/customers",
            Some(json!({})),
        )
        .await;
    assert_eq!(unknown.0, StatusCode::NOT_FOUND);
    let contoso = sim.sim_get(&format!("/customers?partner={CONTOSO}")).await;
    assert_eq!(contoso.as_array().unwrap().len(), 6);

    let pc = pc_as(&sim, JANE).await;
    assert!(ids(&pc.list(10).await.body).contains(&fresh.to_string()));
    let (status, _) = sim
        .sim_call(
            Method::DELETE,
            &format!("/partners/{CONTOSO}/customers/{NORTHWIND}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(!ids(&pc.list(10).await.body).contains(&NORTHWIND.to_string()));
    assert_eq!(
        pc.consent(NORTHWIND, graph_consent("User.Read.All"))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        sim.sim_get(&format!("/customers/{NORTHWIND}")).await["listed"],
        false
    );
    let (status, _) = sim
        .sim_call(
            Method::DELETE,
            &format!("/partners/{WINGTIP}/customers/{ADATUM}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "not Wingtip's");
}

/// A deleted customer tenant is 90002; a reset brings back the demo's customers as they were.
#[tokio::test]
async fn deleted_customers_are_90002_and_a_reset_restores_the_demo() {
    let sim = demo().await;
    let path = format!("/customers/{TAILSPIN}/restore-relationship");
    sim.sim_post(&path, json!({})).await;
    let rt = consented(&sim).await;
    assert_eq!(
        sim.refresh(TAILSPIN, &rt, &graph_default()).await.0,
        StatusCode::OK
    );
    let path = format!("/tenants/{ADATUM}");
    let (_, deleted) = sim.sim_call(Method::DELETE, &path, None).await;
    assert_eq!(deleted["deleted"], true);
    let (_, body) = sim.refresh(ADATUM, &rt, &graph_default()).await;
    assert_eq!(aadsts(&body), 90002);
    sim.sim_post("/reset", json!({})).await;
    let all = sim.sim_get("/customers").await;
    assert_eq!(all.as_array().unwrap().len(), 4);
    assert!(
        all.as_array()
            .unwrap()
            .iter()
            .all(|c| c["consents"] == json!([]))
    );
    let tailspin = sim.sim_get(&format!("/customers/{TAILSPIN}")).await;
    assert_eq!(tailspin["relationship"], "ended");
}

#[tokio::test]
async fn partner_center_faults_throttle_or_take_it_down() {
    let sim = demo().await;
    let pc = pc_as(&sim, JANE).await;
    sim.sim_post("/partner-center/faults", json!({ "count": 2 }))
        .await;
    for _ in 0..2 {
        let a = pc.list(5).await;
        assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(a.body["source"], "PartnerFD", "{}", a.body);
    }
    assert_eq!(pc.list(5).await.status, StatusCode::OK);

    let spec = json!({ "status": 429, "retry_after": 2, "duration_secs": 1.0 });
    let view = sim.sim_post("/partner-center/faults", spec).await;
    assert_eq!(view["active"], true);
    for _ in 0..3 {
        let a = pc.consent(ADATUM, graph_consent("User.Read.All")).await;
        assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(a.headers["retry-after"], "2");
        assert_eq!(
            a.body["message"],
            "Rate limit is exceeded. Try again in 2 seconds."
        );
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(sim.sim_get("/partner-center/faults").await["active"], false);
    assert_eq!(
        pc.consent(ADATUM, graph_consent("User.Read.All"))
            .await
            .status,
        StatusCode::CREATED
    );

    sim.sim_post(
        "/partner-center/faults",
        json!({ "status": 503, "duration_secs": 60 }),
    )
    .await;
    assert_eq!(pc.list(5).await.status, StatusCode::SERVICE_UNAVAILABLE);
    let (status, cleared) = sim
        .sim_call(Method::DELETE, "/partner-center/faults", None)
        .await;
    assert_eq!(
        (status, &cleared["active"]),
        (StatusCode::OK, &json!(false))
    );
    assert_eq!(pc.list(5).await.status, StatusCode::OK);
    let counters = sim.sim_get("/counters").await["partner_center"].clone();
    assert_eq!(counters["faulted"], 6);
    let (status, _) = sim
        .sim_call(
            Method::POST,
            "/partner-center/faults",
            Some(json!({ "status": 302 })),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn partner_center_latency_applies_to_partner_center_calls_only() {
    let sim = start(DevIdpOptions {
        partner_center_latency_ms: 400,
        ..Default::default()
    })
    .await;
    let (rt, token) = partner_tokens(&sim, JANE, true).await;
    let pc = Pc { sim: &sim, token };
    for _ in 0..3 {
        let started = Instant::now();
        assert_eq!(pc.list(5).await.status, StatusCode::OK);
        assert!(
            started.elapsed() >= Duration::from_millis(400),
            "{:?}",
            started.elapsed()
        );
    }
    let started = Instant::now();
    assert_eq!(
        sim.refresh(CONTOSO, &rt, &format!("{PC}/.default")).await.0,
        StatusCode::OK
    );
    assert!(
        started.elapsed() < Duration::from_millis(400),
        "token calls are not delayed"
    );
}
