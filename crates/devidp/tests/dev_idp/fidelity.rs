//! docs/ENTRA_FIDELITY.md, enforced: every row of its tables is an answer the simulator must
//! give exactly (error, AADSTS code, HTTP status, suberror, Entra's error shape, fields). A
//! row without a scenario, a scenario without a row, or an answer that drifts fails.

use std::collections::{BTreeSet, HashMap};

use base64::engine::general_purpose::STANDARD;
use sha1::Digest as _;

use super::customers::{
    CORRELATION, GRAPH, JANE, Pc, PcAnswer, burst, consented, graph_consent, graph_default,
    partner_tokens, pc_as,
};
use super::*;
use devidp::{ADATUM, NORTHWIND, TAILSPIN};

const FIDELITY: &str = include_str!("../../../../docs/ENTRA_FIDELITY.md");
const OTHER_TENANT: &str = "99999999-9999-4999-8999-999999999999";
const EXCHANGE: &str = "https://outlook.office365.com";
const UNKNOWN_API: &str = "https://api.contoso-cpv.example";

/// The simulator's answer, as a client sees it.
enum Answer {
    Json(StatusCode, Value),
    Redirect(HashMap<String, String>),
    Page(StatusCode, String),
}

/// The rows of the table under `## {section}`: the answer's id and its other cells.
fn rows(section: &str) -> Vec<(String, Vec<String>)> {
    let start = FIDELITY
        .find(&format!("\n## {section}\n"))
        .unwrap_or_else(|| panic!("no section {section}"));
    FIDELITY[start + 1..]
        .lines()
        .skip(1)
        .take_while(|line| !line.starts_with("## "))
        .filter(|line| line.starts_with("| `"))
        .map(|line| {
            let cells: Vec<String> = line
                .trim()
                .trim_matches('|')
                .split('|')
                .map(|c| c.trim().trim_matches('`').to_string())
                .collect();
            (cells[0].clone(), cells[1..].to_vec())
        })
        .collect()
}

/// Table rows and scenarios name the same answers, each once.
fn same_answers(section: &str, rows: &[(String, Vec<String>)], scenarios: &[&str]) {
    let listed: Vec<&str> = rows.iter().map(|(id, _)| id.as_str()).collect();
    let unique: BTreeSet<&str> = listed.iter().copied().collect();
    assert_eq!(
        unique.len(),
        listed.len(),
        "{section}: an answer listed twice"
    );
    let scenarios: BTreeSet<&str> = scenarios.iter().copied().collect();
    assert_eq!(unique, scenarios, "{section}: rows and scenarios differ");
}

#[tokio::test]
async fn every_error_answer_is_the_one_the_table_names() {
    let rows = rows("Error answers");
    same_answers("Error answers", &rows, ERROR_SCENARIOS);
    for (id, cells) in &rows {
        let [_, error, code, status, suberror, ..] = cells.as_slice() else {
            panic!("{id}: a short row");
        };
        let code: u32 = code.parse().unwrap_or_else(|_| panic!("{id}: code {code}"));
        let status: u16 = status.parse().unwrap();
        let suberror = (suberror != "–").then_some(suberror.as_str());
        match error_answer(id).await {
            Answer::Json(seen, body) => {
                assert_eq!(seen.as_u16(), status, "{id}: {body}");
                assert_eq!(body["error"], error.as_str(), "{id}: {body}");
                assert_eq!(body["error_codes"], json!([code]), "{id}: {body}");
                assert_eq!(body["suberror"].as_str(), suberror, "{id}: {body}");
                assert_entra_shape(id, code, &body);
            }
            Answer::Redirect(params) => {
                assert_eq!(status, 302, "{id}: answered by a redirect");
                assert_eq!(params["error"], *error, "{id}: {params:?}");
                assert_description(id, code, &params["error_description"]);
                let uri = &params["error_uri"];
                assert!(uri.ends_with(&format!("/error?code={code}")), "{id}: {uri}");
            }
            Answer::Page(seen, html) => {
                assert_eq!(error, "(page)", "{id}: answered by a page");
                assert_eq!(seen.as_u16(), status, "{id}");
                assert!(
                    html.contains(&format!("data-aadsts=\"{code}\"")),
                    "{id}: {html}"
                );
            }
        }
    }
}

#[tokio::test]
async fn every_document_has_the_fields_the_table_names() {
    let rows = rows("Documents and successful answers");
    same_answers("Documents", &rows, DOCUMENT_SCENARIOS);
    for (id, cells) in &rows {
        let fields = |cell: &str| -> Vec<String> {
            cell.split(',')
                .map(|f| f.trim().to_string())
                .filter(|f| !f.is_empty())
                .collect()
        };
        let (has, lacks) = (fields(&cells[0]), fields(&cells[1]));
        let objects = document(id).await;
        assert!(!objects.is_empty(), "{id}");
        for object in &objects {
            for field in &has {
                assert!(object.get(field).is_some(), "{id}: no {field} in {object}");
            }
            for field in &lacks {
                assert!(object.get(field).is_none(), "{id}: {field} in {object}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_partner_center_answer_is_the_one_the_table_names() {
    let section = "Partner Center answers";
    let rows = rows(section);
    same_answers(section, &rows, PC_SCENARIOS);
    for (id, cells) in &rows {
        let [_, status, code, header, ..] = cells.as_slice() else {
            panic!("{id}: a short row");
        };
        let answer = pc_answer(id).await;
        assert_eq!(
            answer.status.as_u16().to_string(),
            *status,
            "{id}: {}",
            answer.body
        );
        if code == "–" {
            // The gateway's throttling body, not Partner Center's error shape.
            assert_eq!(answer.body["statusCode"], 429, "{id}: {}", answer.body);
            assert!(answer.body["message"].is_string(), "{id}: {}", answer.body);
        } else {
            assert_partner_center_shape(id, code, &answer);
        }
        if header != "–" {
            let name = header.to_ascii_lowercase();
            assert!(
                answer.headers.contains_key(name.as_str()),
                "{id}: no {header}"
            );
        }
    }
}

/// Partner Center's error body ("Partner Center REST error codes"): `code` and `description`
/// always (the description at most 1,024 characters), `data`, `source`; the request's
/// `MS-CorrelationId` echoed.
fn assert_partner_center_shape(id: &str, code: &str, answer: &PcAnswer) {
    let body = &answer.body;
    assert_eq!(body["code"], code, "{id}: {body}");
    let description = body["description"].as_str().unwrap_or_default();
    assert!(
        !description.is_empty() && description.len() <= 1024,
        "{id}: {body}"
    );
    assert!(body["data"].is_array(), "{id}: {body}");
    assert_eq!(body["source"], "PartnerFD", "{id}: {body}");
    assert_eq!(answer.headers["ms-correlationid"], CORRELATION, "{id}");
    assert!(answer.headers.contains_key("ms-requestid"), "{id}");
}

/// Entra's error body: `AADSTSnnnn: text\r\nTrace ID: …\r\nCorrelation ID: …\r\nTimestamp: …`
/// and the same ids and time in their own fields, with `error_uri`.
fn assert_entra_shape(id: &str, code: u32, body: &Value) {
    let description = body["error_description"].as_str().unwrap_or_default();
    assert_description(id, code, description);
    let (trace, correlation) = (&body["trace_id"], &body["correlation_id"]);
    let timestamp = body["timestamp"].as_str().unwrap_or_default();
    let tail = format!(
        "\r\nTrace ID: {}\r\nCorrelation ID: {}\r\nTimestamp: {timestamp}",
        trace.as_str().unwrap_or_default(),
        correlation.as_str().unwrap_or_default()
    );
    assert!(description.ends_with(&tail), "{id}: {body}");
    for uuid in [trace, correlation] {
        assert!(
            uuid::Uuid::parse_str(uuid.as_str().unwrap_or_default()).is_ok(),
            "{id}: {body}"
        );
    }
    let uri = body["error_uri"].as_str().unwrap_or_default();
    assert!(
        uri.ends_with(&format!("/error?code={code}")),
        "{id}: {body}"
    );
}

fn assert_description(id: &str, code: u32, description: &str) {
    assert!(
        description.starts_with(&format!("AADSTS{code}: ")),
        "{id}: {description}"
    );
    for line in ["\r\nTrace ID: ", "\r\nCorrelation ID: "] {
        assert!(description.contains(line), "{id}: {description}");
    }
    let timestamp = description
        .rsplit("\r\nTimestamp: ")
        .next()
        .unwrap_or_default();
    assert!(entra_timestamp(timestamp), "{id}: {description}");
}

/// `2016-01-09 02:02:12Z`, as in Microsoft's sample error.
fn entra_timestamp(text: &str) -> bool {
    let shape = text
        .chars()
        .map(|c| if c.is_ascii_digit() { 'd' } else { c })
        .collect::<String>();
    shape == "dddd-dd-dd dd:dd:ddZ"
}

/// One scenario per row: `scenarios!(LIST, run, { "id" => function, ... })` defines the
/// list of ids and the function that plays one.
macro_rules! scenarios {
    ($list:ident, $run:ident -> $out:ty, { $($id:literal => $f:ident),* $(,)? }) => {
        const $list: &[&str] = &[$($id),*];
        async fn $run(id: &str) -> $out {
            match id {
                $($id => $f().await,)*
                other => panic!("no scenario for {other}"),
            }
        }
    };
}

scenarios!(ERROR_SCENARIOS, error_answer -> Answer, {
    "token.missing_parameter" => token_missing_parameter,
    "token.get" => token_get,
    "token.unsupported_grant_type" => token_unsupported_grant_type,
    "token.unknown_tenant" => token_unknown_tenant,
    "token.malformed_tenant" => token_malformed_tenant,
    "token.unknown_app" => token_unknown_app,
    "token.no_credential" => token_no_credential,
    "token.wrong_secret" => token_wrong_secret,
    "token.expired_secret" => token_expired_secret,
    "token.malformed_request" => token_malformed_request,
    "assertion.malformed" => assertion_malformed,
    "assertion.client_mismatch" => assertion_client_mismatch,
    "assertion.unknown_key" => assertion_unknown_key,
    "assertion.audience" => assertion_audience,
    "assertion.time" => assertion_time,
    "assertion.replayed" => assertion_replayed,
    "code.unknown" => code_unknown,
    "code.malformed" => code_malformed,
    "code.expired" => code_expired,
    "code.redeemed" => code_redeemed,
    "code.wrong_tenant" => code_wrong_tenant,
    "code.redirect_uri_differs" => code_redirect_uri_differs,
    "code.redirect_uri_unregistered" => code_redirect_uri_unregistered,
    "code.pkce_mismatch" => code_pkce_mismatch,
    "code.two_resources" => code_two_resources,
    "refresh.unknown" => refresh_unknown,
    "refresh.malformed" => refresh_malformed,
    "refresh.inactive" => refresh_inactive,
    "refresh.password_reset" => refresh_password_reset,
    "refresh.sign_in_frequency" => refresh_sign_in_frequency,
    "refresh.mfa_required" => refresh_mfa_required,
    "refresh.consent_revoked" => refresh_consent_revoked,
    "refresh.not_consented" => refresh_not_consented,
    "refresh.not_registered" => refresh_not_registered,
    "refresh.resource_not_found" => refresh_resource_not_found,
    "refresh.invalid_scope" => refresh_invalid_scope,
    "refresh.tenant_deleted" => refresh_tenant_deleted,
    "refresh.reused" => refresh_reused,
    "authorize.declined" => authorize_declined,
    "authorize.mfa_required" => authorize_mfa_required,
    "authorize.login_required" => authorize_login_required,
    "authorize.unsupported_response_type" => authorize_unsupported_response_type,
    "authorize.missing_scope" => authorize_missing_scope,
    "authorize.pkce_method" => authorize_pkce_method,
    "authorize.pkce_size" => authorize_pkce_size,
    "authorize.response_mode" => authorize_response_mode,
    "authorize.unknown_app" => authorize_unknown_app,
    "authorize.redirect_uri_unregistered" => authorize_redirect_uri_unregistered,
    "authorize.unknown_tenant" => authorize_unknown_tenant,
    "signin.unknown_user" => signin_unknown_user,
    "signin.other_tenant" => signin_other_tenant,
    "discovery.unknown_tenant" => discovery_unknown_tenant,
    "keys.unknown_tenant" => keys_unknown_tenant,
    "fault.unavailable" => fault_unavailable,
    "fault.throttled" => fault_throttled,
    "fault.server_error" => fault_server_error,
    "customer.relationship_ended" => customer_relationship_ended,
    "customer.not_consented" => customer_not_consented,
    "customer.unknown_tenant" => customer_unknown_tenant,
});

scenarios!(DOCUMENT_SCENARIOS, document -> Vec<Value>, {
    "discovery.v2" => discovery_v2,
    "discovery.v1" => discovery_v1,
    "keys.v2" => keys_v2,
    "keys.v1" => keys_v1,
    "keys.rolled" => keys_rolled,
    "jwt.header" => jwt_header,
    "token.v2" => token_v2,
    "token.v1" => token_v1,
    "refresh.two_resources" => refresh_two_resources,
    "token.customer" => token_customer,
    "token.customer.claims" => token_customer_claims,
    "pc.customers" => pc_customers,
    "pc.customer" => pc_customer,
    "pc.next_link" => pc_next_link,
    "pc.consent" => pc_consent,
});

scenarios!(PC_SCENARIOS, pc_answer -> PcAnswer, {
    "pc.no_token" => pc_no_token,
    "pc.invalid_token" => pc_invalid_token,
    "pc.expired_token" => pc_expired_token,
    "pc.wrong_audience" => pc_wrong_audience,
    "pc.mfa_required" => pc_mfa_required,
    "pc.role" => pc_role,
    "pc.throttled" => pc_throttled,
    "pc.bad_request" => pc_bad_request,
    "pc.customer_not_found" => pc_customer_not_found,
    "pc.consent_not_found" => pc_consent_not_found,
    "pc.consent_exists" => pc_consent_exists,
    "pc.fault_unavailable" => pc_fault_unavailable,
    "pc.fault_throttled" => pc_fault_throttled,
});

// ---------- helpers ----------

const SECRET: [(&str, &str); 2] = [
    ("client_id", DEMO_CLIENT_ID),
    ("client_secret", DEMO_CLIENT_SECRET),
];

async fn json_at(sim: &Sim, tenant: &str, form: &[(&str, &str)]) -> Answer {
    let (status, body) = sim.token(tenant, form).await;
    Answer::Json(status, body)
}

async fn json_get(sim: &Sim, path: &str) -> Answer {
    let response = sim.http.get(sim.url(path)).send().await.unwrap();
    let status = response.status();
    Answer::Json(status, response.json().await.unwrap())
}

/// A client-authenticated token request to Contoso's endpoint.
async fn with_secret(sim: &Sim, form: &[(&str, &str)]) -> Answer {
    let mut all = SECRET.to_vec();
    all.extend_from_slice(form);
    json_at(sim, CONTOSO, &all).await
}

async fn refresh_answer(sim: &Sim, rt: &str, scope: &str) -> Answer {
    let (status, body) = sim.refresh(CONTOSO, rt, scope).await;
    Answer::Json(status, body)
}

/// Jane of Contoso's refresh token, after a consent to Partner Center.
async fn jane(sim: &Sim) -> String {
    let tokens = sim.consent(CONTOSO, "jane@contoso.example", true).await;
    tokens["refresh_token"].as_str().unwrap().to_string()
}

fn pc_default() -> String {
    format!("{PC}/.default")
}

fn set(query: &mut Vec<(String, String)>, key: &str, value: Option<&str>) {
    query.retain(|(k, _)| k != key);
    if let Some(value) = value {
        query.push((key.to_string(), value.to_string()));
    }
}

/// The authorize query samvault sends, changed by `change`, sent with GET to Contoso.
async fn authorize(change: impl FnOnce(&mut Vec<(String, String)>)) -> reqwest::Response {
    let sim = demo().await;
    authorize_at(&sim, CONTOSO, change).await
}

async fn authorize_at(
    sim: &Sim,
    tenant: &str,
    change: impl FnOnce(&mut Vec<(String, String)>),
) -> reqwest::Response {
    let (_, challenge) = pkce();
    let mut query = authorize_query(CONSENT_SCOPES, &challenge);
    change(&mut query);
    let url = sim.url(&format!("/{tenant}/oauth2/v2.0/authorize"));
    sim.http.get(with_query(&url, &query)).send().await.unwrap()
}

fn redirected(response: &reqwest::Response) -> Answer {
    assert_eq!(response.status(), StatusCode::FOUND);
    Answer::Redirect(location(response))
}

async fn page(response: reqwest::Response) -> Answer {
    assert!(
        response.headers().get("location").is_none(),
        "not a redirect"
    );
    let status = response.status();
    Answer::Page(status, response.text().await.unwrap())
}

async fn submitted(upn: &str, mfa: bool, consent: &str) -> reqwest::Response {
    let sim = demo().await;
    let (_, challenge) = pkce();
    let query = authorize_query(CONSENT_SCOPES, &challenge);
    sim.submit(CONTOSO, &query, upn, mfa, consent).await
}

// ---------- the token endpoint: request and client ----------

async fn token_missing_parameter() -> Answer {
    with_secret(&demo().await, &[]).await
}

async fn token_get() -> Answer {
    json_get(&demo().await, &format!("/{CONTOSO}/oauth2/v2.0/token")).await
}

async fn token_unsupported_grant_type() -> Answer {
    with_secret(&demo().await, &[("grant_type", "password")]).await
}

async fn refresh_at(tenant: &str) -> Answer {
    let sim = demo().await;
    let mut form = SECRET.to_vec();
    let scope = pc_default();
    form.extend([
        ("grant_type", "refresh_token"),
        ("refresh_token", "0.Anever"),
        ("scope", scope.as_str()),
    ]);
    json_at(&sim, tenant, &form).await
}

async fn token_unknown_tenant() -> Answer {
    refresh_at(OTHER_TENANT).await
}

async fn token_malformed_tenant() -> Answer {
    refresh_at("not_a_tenant").await
}

async fn token_unknown_app() -> Answer {
    let form = [
        ("grant_type", "refresh_token"),
        ("client_id", "11111111-2222-4333-8444-555555555555"),
        ("client_secret", "x"),
        ("refresh_token", "0.Anever"),
    ];
    json_at(&demo().await, CONTOSO, &form).await
}

async fn token_no_credential() -> Answer {
    let form = [
        ("grant_type", "refresh_token"),
        ("client_id", DEMO_CLIENT_ID),
    ];
    json_at(&demo().await, CONTOSO, &form).await
}

async fn token_wrong_secret() -> Answer {
    let form = [
        ("grant_type", "refresh_token"),
        ("client_id", DEMO_CLIENT_ID),
        ("client_secret", "not-the-secret"),
    ];
    json_at(&demo().await, CONTOSO, &form).await
}

async fn token_expired_secret() -> Answer {
    let sim = demo().await;
    sim.sim_post("/app/secret/expire", json!({})).await;
    with_secret(&sim, &[("grant_type", "refresh_token")]).await
}

async fn token_malformed_request() -> Answer {
    let form = [
        ("grant_type", "refresh_token"),
        ("client_assertion", "a.b.c"),
    ];
    with_secret(&demo().await, &form).await
}

// ---------- client assertions ----------

/// A certificate registered on the demo app (`--client-cert`) and its key's PEM.
struct Registered {
    sim: Sim,
    key_pem: String,
    thumbprint: String,
    _dir: tempfile::TempDir,
}

async fn registered() -> Registered {
    let dir = tempfile::tempdir().unwrap();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let (cert, key) =
        samvault_devtls::write_self_signed(dir.path(), "fidelity", now - 60, now + 86_400).unwrap();
    let pem = std::fs::read_to_string(&cert).unwrap();
    let der = pem_body(&pem);
    let opts = DevIdpOptions {
        client_certs: vec![cert],
        ..Default::default()
    };
    Registered {
        sim: start(opts).await,
        key_pem: std::fs::read_to_string(key).unwrap(),
        thumbprint: URL_SAFE_NO_PAD.encode(Sha256::digest(der)),
        _dir: dir,
    }
}

fn pem_body(pem: &str) -> Vec<u8> {
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    STANDARD.decode(body).unwrap()
}

/// An RS256 assertion with these claims, signed by `key_pem` and naming `thumbprint`.
fn assertion(key_pem: &str, thumbprint: &str, claims: &Value) -> String {
    let mut header = jsonwebtoken::Header::new(Algorithm::RS256);
    header.x5t_s256 = Some(thumbprint.to_string());
    use rsa::pkcs1::EncodeRsaPrivateKey;
    use rsa::pkcs8::DecodePrivateKey;
    let der = rsa::RsaPrivateKey::from_pkcs8_pem(key_pem)
        .unwrap()
        .to_pkcs1_der()
        .unwrap();
    let key = jsonwebtoken::EncodingKey::from_rsa_der(der.as_bytes());
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

fn claims(aud: &str, iss: &str, from: i64, to: i64) -> Value {
    json!({ "aud": aud, "iss": iss, "sub": iss, "jti": uuid::Uuid::new_v4().to_string(),
            "nbf": from, "iat": from, "exp": to })
}

async fn assert_with(sim: &Sim, jwt: &str) -> Answer {
    let form = [
        ("grant_type", "refresh_token"),
        ("client_id", DEMO_CLIENT_ID),
        ("refresh_token", "0.Anever"),
        ("scope", "https://api.partnercenter.microsoft.com/.default"),
        (
            "client_assertion_type",
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        ),
        ("client_assertion", jwt),
    ];
    json_at(sim, CONTOSO, &form).await
}

/// A well-formed, unsigned-for-real assertion from `iss` naming an unknown certificate.
fn unsigned(sim: &Sim, iss: &str) -> String {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let header =
        json!({ "alg": "RS256", "typ": "JWT", "x5t#S256": "bm90LWEtcmVhbC10aHVtYnByaW50" });
    let aud = sim.url(&format!("/{CONTOSO}/oauth2/v2.0/token"));
    let part = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
    let body = claims(&aud, iss, now, now + 300);
    format!("{}.{}.c2lnbmF0dXJl", part(&header), part(&body))
}

async fn assertion_malformed() -> Answer {
    let sim = demo().await;
    assert_with(&sim, "not.a.jwt").await
}

async fn assertion_client_mismatch() -> Answer {
    let sim = demo().await;
    let jwt = unsigned(&sim, "11111111-2222-4333-8444-555555555555");
    assert_with(&sim, &jwt).await
}

async fn assertion_unknown_key() -> Answer {
    let sim = demo().await;
    let jwt = unsigned(&sim, DEMO_CLIENT_ID);
    assert_with(&sim, &jwt).await
}

async fn registered_assertion(aud_tenant: &str, from: i64, to: i64, twice: bool) -> Answer {
    let r = registered().await;
    let aud = r.sim.url(&format!("/{aud_tenant}/oauth2/v2.0/token"));
    let jwt = assertion(
        &r.key_pem,
        &r.thumbprint,
        &claims(&aud, DEMO_CLIENT_ID, from, to),
    );
    if twice {
        let Answer::Json(_, first) = assert_with(&r.sim, &jwt).await else {
            unreachable!()
        };
        assert_eq!(
            first["error_codes"],
            json!([70000]),
            "accepted once: {first}"
        );
    }
    assert_with(&r.sim, &jwt).await
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

async fn assertion_audience() -> Answer {
    registered_assertion("common", now(), now() + 300, false).await
}

async fn assertion_time() -> Answer {
    registered_assertion(CONTOSO, now() - 4200, now() - 3600, false).await
}

async fn assertion_replayed() -> Answer {
    registered_assertion(CONTOSO, now(), now() + 300, true).await
}

// ---------- code redemption ----------

/// A code redemption by the demo app with `extra` form fields (`redirect_uri` defaults to
/// the one the codes were issued for).
async fn redeem_form(sim: &Sim, code: &str, verifier: &str, extra: &[(&str, &str)]) -> Answer {
    let mut form = vec![
        ("grant_type", "authorization_code"),
        ("code", code),
        ("code_verifier", verifier),
    ];
    form.extend_from_slice(extra);
    if !extra.iter().any(|(k, _)| *k == "redirect_uri") {
        form.push(("redirect_uri", REDIRECT));
    }
    with_secret(sim, &form).await
}

/// A code that is not one of Jane's, redeemed.
async fn redeem_with(sim: &Sim, code: &str, extra: &[(&str, &str)]) -> Answer {
    let (verifier, _) = pkce();
    redeem_form(sim, code, &verifier, extra).await
}

async fn code_unknown() -> Answer {
    redeem_with(&demo().await, "1.Anever", &[]).await
}

async fn code_malformed() -> Answer {
    redeem_with(&demo().await, "garbage", &[]).await
}

async fn code_expired() -> Answer {
    let sim = demo().await;
    let (code, verifier) = sim.code_for(CONTOSO, "jane@contoso.example", true).await;
    sim.sim_post("/clock/advance", json!({ "seconds": 601 }))
        .await;
    let (status, body) = sim.redeem(&code, &verifier).await;
    Answer::Json(status, body)
}

async fn code_redeemed() -> Answer {
    let sim = demo().await;
    let (code, verifier) = sim.code_for(CONTOSO, "jane@contoso.example", true).await;
    assert_eq!(sim.redeem(&code, &verifier).await.0, StatusCode::OK);
    let (status, body) = sim.redeem(&code, &verifier).await;
    Answer::Json(status, body)
}

async fn code_wrong_tenant() -> Answer {
    let sim = demo().await;
    let (code, verifier) = sim.code_for(CONTOSO, "jane@contoso.example", true).await;
    let (status, body) = sim.redeem_at(FABRIKAM, &code, &verifier).await;
    Answer::Json(status, body)
}

/// A fresh code of Jane's redeemed with its own verifier and `extra` form fields.
async fn redeem_code(extra: &[(&str, &str)]) -> Answer {
    let sim = demo().await;
    let (code, verifier) = sim.code_for(CONTOSO, "jane@contoso.example", true).await;
    redeem_form(&sim, &code, &verifier, extra).await
}

async fn code_redirect_uri_differs() -> Answer {
    redeem_code(&[("redirect_uri", "http://127.0.0.1:9999/other")]).await
}

async fn code_redirect_uri_unregistered() -> Answer {
    redeem_code(&[("redirect_uri", "https://evil.example/cb")]).await
}

async fn code_pkce_mismatch() -> Answer {
    let sim = demo().await;
    let (code, _) = sim.code_for(CONTOSO, "jane@contoso.example", true).await;
    redeem_with(&sim, &code, &[]).await
}

async fn code_two_resources() -> Answer {
    let two = format!("{PC}/.default https://graph.microsoft.com/.default");
    redeem_code(&[("scope", two.as_str())]).await
}

// ---------- refresh ----------

async fn refresh_unknown() -> Answer {
    refresh_answer(&demo().await, "0.Anever", &pc_default()).await
}

async fn refresh_malformed() -> Answer {
    refresh_answer(&demo().await, "garbage", &pc_default()).await
}

/// Jane's refresh token after `/_sim{path}` with `body`, asked for `resource`.
async fn refresh_after(path: &str, body: Value, resource: &str) -> Answer {
    let sim = demo().await;
    let rt = jane(&sim).await;
    if !path.is_empty() {
        sim.sim_post(path, body).await;
    }
    refresh_answer(&sim, &rt, &format!("{resource}/.default")).await
}

async fn refresh_inactive() -> Answer {
    refresh_after("/clock/advance", json!({ "days": 91 }), PC).await
}

async fn refresh_password_reset() -> Answer {
    refresh_after("/users/jane@contoso.example/reset-password", json!({}), PC).await
}

async fn refresh_sign_in_frequency() -> Answer {
    let path = "/users/jane@contoso.example/sign-in-frequency";
    refresh_after(path, json!({}), PC).await
}

async fn refresh_mfa_required() -> Answer {
    let sim = demo().await;
    let tokens = sim.consent(FABRIKAM, "john@fabrikam.example", false).await;
    let rt = tokens["refresh_token"].as_str().unwrap();
    sim.sim_post(&format!("/tenants/{FABRIKAM}/require-mfa"), json!({}))
        .await;
    let (status, body) = sim.refresh(FABRIKAM, rt, &pc_default()).await;
    Answer::Json(status, body)
}

async fn refresh_consent_revoked() -> Answer {
    let path = format!("/tenants/{CONTOSO}/revoke-consent");
    refresh_after(&path, json!({}), PC).await
}

async fn refresh_not_consented() -> Answer {
    refresh_after("", Value::Null, "https://graph.microsoft.com").await
}

async fn refresh_not_registered() -> Answer {
    refresh_after("", Value::Null, EXCHANGE).await
}

async fn refresh_resource_not_found() -> Answer {
    refresh_after("", Value::Null, UNKNOWN_API).await
}

async fn refresh_invalid_scope() -> Answer {
    let sim = demo().await;
    let rt = jane(&sim).await;
    let scope = format!("{PC}/.default {PC}/user_impersonation");
    refresh_answer(&sim, &rt, &scope).await
}

async fn refresh_tenant_deleted() -> Answer {
    let sim = demo().await;
    let rt = jane(&sim).await;
    let url = sim.url(&format!("/_sim/tenants/{CONTOSO}"));
    assert!(
        sim.http
            .delete(url)
            .send()
            .await
            .unwrap()
            .status()
            .is_success()
    );
    refresh_answer(&sim, &rt, &pc_default()).await
}

async fn refresh_reused() -> Answer {
    let sim = start(DevIdpOptions {
        strict_rotation: true,
        ..Default::default()
    })
    .await;
    let rt = jane(&sim).await;
    assert_eq!(
        sim.refresh(CONTOSO, &rt, &pc_default()).await.0,
        StatusCode::OK
    );
    refresh_answer(&sim, &rt, &pc_default()).await
}

// ---------- authorize and sign-in ----------

async fn authorize_declined() -> Answer {
    redirected(&submitted("jane@contoso.example", true, "deny").await)
}

async fn authorize_mfa_required() -> Answer {
    redirected(&submitted("jane@contoso.example", false, "accept").await)
}

async fn authorize_login_required() -> Answer {
    redirected(&authorize(|q| set(q, "prompt", Some("none"))).await)
}

async fn authorize_unsupported_response_type() -> Answer {
    redirected(&authorize(|q| set(q, "response_type", Some("token"))).await)
}

async fn authorize_missing_scope() -> Answer {
    redirected(&authorize(|q| set(q, "scope", None)).await)
}

async fn authorize_pkce_method() -> Answer {
    redirected(&authorize(|q| set(q, "code_challenge_method", Some("S512"))).await)
}

async fn authorize_pkce_size() -> Answer {
    redirected(&authorize(|q| set(q, "code_challenge", Some("short"))).await)
}

async fn authorize_response_mode() -> Answer {
    redirected(&authorize(|q| set(q, "response_mode", Some("jwt"))).await)
}

async fn authorize_unknown_app() -> Answer {
    let client = "11111111-2222-4333-8444-555555555555";
    page(authorize(|q| set(q, "client_id", Some(client))).await).await
}

async fn authorize_redirect_uri_unregistered() -> Answer {
    page(authorize(|q| set(q, "redirect_uri", Some("https://evil.example/cb"))).await).await
}

async fn authorize_unknown_tenant() -> Answer {
    let sim = demo().await;
    page(authorize_at(&sim, OTHER_TENANT, |_| {}).await).await
}

async fn signin_unknown_user() -> Answer {
    page(submitted("nobody@contoso.example", true, "accept").await).await
}

async fn signin_other_tenant() -> Answer {
    page(submitted("john@fabrikam.example", true, "accept").await).await
}

async fn discovery_unknown_tenant() -> Answer {
    let path = format!("/{OTHER_TENANT}/v2.0/.well-known/openid-configuration");
    json_get(&demo().await, &path).await
}

async fn keys_unknown_tenant() -> Answer {
    json_get(
        &demo().await,
        &format!("/{OTHER_TENANT}/discovery/v2.0/keys"),
    )
    .await
}

async fn faulted(status: u16) -> Answer {
    let sim = demo().await;
    sim.sim_post("/faults", json!({ "count": 1, "status": status }))
        .await;
    refresh_answer(&sim, "0.Anever", &pc_default()).await
}

async fn fault_unavailable() -> Answer {
    faulted(503).await
}

async fn fault_throttled() -> Answer {
    faulted(429).await
}

async fn fault_server_error() -> Answer {
    faulted(500).await
}

// ---------- documents ----------

async fn get_json(sim: &Sim, path: &str) -> Value {
    let response = sim.http.get(sim.url(path)).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK, "{path}");
    response.json().await.unwrap()
}

async fn discovery_v2() -> Vec<Value> {
    let sim = demo().await;
    let common = get_json(&sim, "/common/v2.0/.well-known/openid-configuration").await;
    assert_eq!(common["issuer"], format!("{}/{{tenantid}}/v2.0", sim.base));
    let path = format!("/{CONTOSO}/v2.0/.well-known/openid-configuration");
    let tenant = get_json(&sim, &path).await;
    assert_eq!(
        tenant["jwks_uri"],
        format!("{}/{CONTOSO}/discovery/v2.0/keys", sim.base)
    );
    vec![common, tenant]
}

async fn discovery_v1() -> Vec<Value> {
    let sim = demo().await;
    let doc = get_json(
        &sim,
        &format!("/{CONTOSO}/.well-known/openid-configuration"),
    )
    .await;
    assert_eq!(
        doc["jwks_uri"],
        format!("{}/common/discovery/keys", sim.base)
    );
    vec![doc]
}

/// Every key of a keys document, after checking that it lists several and that each `kid`
/// is its certificate's SHA-1 thumbprint.
fn keys_of(jwks: &Value) -> Vec<Value> {
    let keys = jwks["keys"].as_array().unwrap().clone();
    assert!(
        keys.len() > 1,
        "Entra always lists more than one key: {jwks}"
    );
    for key in &keys {
        let der = STANDARD.decode(key["x5c"][0].as_str().unwrap()).unwrap();
        let thumbprint = URL_SAFE_NO_PAD.encode(sha1::Sha1::digest(der));
        assert_eq!(key["kid"], thumbprint.as_str(), "{key}");
        assert_eq!(key["x5t"], key["kid"], "{key}");
    }
    keys
}

async fn keys_v2() -> Vec<Value> {
    let sim = demo().await;
    keys_of(&get_json(&sim, &format!("/{CONTOSO}/discovery/v2.0/keys")).await)
}

async fn keys_v1() -> Vec<Value> {
    let sim = demo().await;
    keys_of(&get_json(&sim, &format!("/{CONTOSO}/discovery/keys")).await)
}

/// A regular roll signs with a key listed before it, keeps the old one; an emergency roll
/// signs with a key never listed and withdraws the old one. Tokens name the signing key.
async fn keys_rolled() -> Vec<Value> {
    let sim = demo().await;
    let listed = |jwks: &Value| -> Vec<String> {
        keys_of(jwks)
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_string())
            .collect()
    };
    let jwks_path = "/common/discovery/v2.0/keys";
    let before = listed(&get_json(&sim, jwks_path).await);
    let regular = sim.sim_post("/keys/rotate", json!({})).await;
    let signing = regular["signing_kid"].as_str().unwrap().to_string();
    assert!(
        before.contains(&signing),
        "published before it signs: {regular}"
    );
    let after = listed(&get_json(&sim, jwks_path).await);
    assert!(
        before.iter().all(|kid| after.contains(kid)),
        "the old key stays"
    );
    assert_eq!(token_kid(&sim).await, signing);

    let emergency = sim
        .sim_post("/keys/rotate", json!({ "emergency": true }))
        .await;
    let fresh = emergency["signing_kid"].as_str().unwrap().to_string();
    let jwks = get_json(&sim, jwks_path).await;
    let now_listed = listed(&jwks);
    assert!(
        !after.contains(&fresh) && now_listed.contains(&fresh),
        "{emergency}"
    );
    assert!(
        !now_listed.contains(&signing),
        "the replaced key is withdrawn"
    );
    assert_eq!(token_kid(&sim).await, fresh);
    keys_of(&jwks)
}

fn header_of(jwt: &str) -> Value {
    let header = jwt.split('.').next().unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap()
}

/// The `kid` of an id_token the simulator issues now.
async fn token_kid(sim: &Sim) -> String {
    let tokens = sim.consent(CONTOSO, "jane@contoso.example", true).await;
    header_of(tokens["id_token"].as_str().unwrap())["kid"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn jwt_header() -> Vec<Value> {
    let sim = demo().await;
    let tokens = sim.consent(CONTOSO, "jane@contoso.example", true).await;
    let listed = keys_of(&get_json(&sim, "/common/discovery/v2.0/keys").await);
    ["id_token", "access_token"]
        .iter()
        .map(|name| {
            let header = header_of(tokens[*name].as_str().unwrap());
            assert_eq!(header["alg"], "RS256");
            assert!(listed.iter().any(|k| k["kid"] == header["kid"]), "{header}");
            header
        })
        .collect()
}

async fn token_v2() -> Vec<Value> {
    let sim = demo().await;
    let tokens = sim.consent(CONTOSO, "jane@contoso.example", true).await;
    assert!(tokens["expires_in"].is_number(), "{tokens}");
    vec![tokens]
}

async fn token_v1() -> Vec<Value> {
    let sim = demo().await;
    let (verifier, challenge) = pkce();
    let mut form = authorize_query("openid", &challenge);
    form.extend([
        ("resource".to_string(), PC.to_string()),
        ("upn".to_string(), "john@fabrikam.example".to_string()),
        ("consent".to_string(), "accept".to_string()),
    ]);
    let url = sim.url(&format!("/{FABRIKAM}/oauth2/authorize"));
    let response = sim.http.post(url).form(&form).send().await.unwrap();
    let code = location(&response)["code"].clone();
    let mut redeem = SECRET.to_vec();
    redeem.extend([
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", REDIRECT),
        ("code_verifier", verifier.as_str()),
        ("resource", PC),
    ]);
    let url = sim.url(&format!("/{FABRIKAM}/oauth2/token"));
    let body: Value = sim
        .http
        .post(url)
        .form(&redeem)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["expires_in"], "3599", "{body}");
    vec![body]
}

async fn refresh_two_resources() -> Vec<Value> {
    let sim = demo().await;
    let rt = jane(&sim).await;
    let two = format!("{PC}/.default https://graph.microsoft.com/.default");
    let (status, body) = sim.refresh(CONTOSO, &rt, &two).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["scope"],
        format!("{PC}/user_impersonation"),
        "the first one"
    );
    vec![body]
}

// ---------- customer authorities ----------

/// Jane's refresh token redeemed for Graph at `tenant`'s authority.
async fn at_customer(tenant: &str) -> Answer {
    let sim = demo().await;
    let (rt, _) = partner_tokens(&sim, JANE, true).await;
    let (status, body) = sim.refresh(tenant, &rt, &graph_default()).await;
    Answer::Json(status, body)
}

async fn customer_relationship_ended() -> Answer {
    at_customer(TAILSPIN).await
}

async fn customer_not_consented() -> Answer {
    at_customer(NORTHWIND).await
}

async fn customer_unknown_tenant() -> Answer {
    at_customer(OTHER_TENANT).await
}

/// Jane's RT redeemed at Adatum after the app was consented there.
async fn adatum_tokens() -> Value {
    let sim = demo().await;
    let rt = consented(&sim).await;
    let scope = format!("{} openid offline_access", graph_default());
    let (status, body) = sim.refresh(ADATUM, &rt, &scope).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

async fn token_customer() -> Vec<Value> {
    vec![adatum_tokens().await]
}

async fn token_customer_claims() -> Vec<Value> {
    let tokens = adatum_tokens().await;
    let at = tokens["access_token"].as_str().unwrap();
    let claims = jsonwebtoken::dangerous::insecure_decode::<Value>(at)
        .unwrap()
        .claims;
    assert_eq!(claims["tid"], ADATUM, "{claims}");
    assert_eq!(claims["upn"], JANE, "{claims}");
    assert_eq!(claims["aud"], GRAPH, "{claims}");
    let id = tokens["id_token"].as_str().unwrap();
    let id = jsonwebtoken::dangerous::insecure_decode::<Value>(id)
        .unwrap()
        .claims;
    assert_eq!(id["tid"], ADATUM, "{id}");
    vec![claims]
}

// ---------- Partner Center ----------

async fn pc_page() -> Value {
    let sim = demo().await;
    let page = pc_as(&sim, JANE).await.list(2).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    page.body
}

async fn pc_customers() -> Vec<Value> {
    vec![pc_page().await]
}

async fn pc_customer() -> Vec<Value> {
    pc_page().await["items"].as_array().unwrap().clone()
}

async fn pc_next_link() -> Vec<Value> {
    let links = pc_page().await["links"].clone();
    vec![links["self"].clone(), links["next"].clone()]
}

async fn pc_consent() -> Vec<Value> {
    let sim = demo().await;
    let created = pc_as(&sim, JANE)
        .await
        .consent(ADATUM, graph_consent("User.Read.All"))
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    vec![created.body]
}

/// A list call with `token` as the bearer.
async fn pc_with(sim: &Sim, token: &str) -> PcAnswer {
    let pc = Pc {
        sim,
        token: token.to_string(),
    };
    pc.list(5).await
}

async fn pc_no_token() -> PcAnswer {
    pc_with(&demo().await, "").await
}

async fn pc_invalid_token() -> PcAnswer {
    pc_with(&demo().await, "not.a.jwt").await
}

async fn pc_expired_token() -> PcAnswer {
    let sim = demo().await;
    let pc = pc_as(&sim, JANE).await;
    sim.sim_post("/clock/advance", json!({ "hours": 2 })).await;
    pc.list(5).await
}

async fn pc_wrong_audience() -> PcAnswer {
    let sim = demo().await;
    let scopes = format!("{} offline_access", graph_default());
    let (_, graph) = sim.mint(json!({ "upn": JANE, "scopes": scopes })).await;
    pc_with(&sim, graph["access_token"].as_str().unwrap()).await
}

async fn pc_mfa_required() -> PcAnswer {
    let sim = demo().await;
    let (_, token) = partner_tokens(&sim, "john@fabrikam.example", false).await;
    pc_with(&sim, &token).await
}

async fn pc_role() -> PcAnswer {
    let sim = demo().await;
    let sam = pc_as(&sim, "sam@contoso.example").await;
    sam.consent(ADATUM, graph_consent("User.Read.All")).await
}

async fn pc_throttled() -> PcAnswer {
    let sim = demo().await;
    let pc = pc_as(&sim, JANE).await;
    let answers = burst(&sim, &pc.token, 60).await;
    let (status, headers, body) = answers
        .into_iter()
        .find(|a| a.0 == StatusCode::TOO_MANY_REQUESTS)
        .expect("a burst of 60 is throttled");
    PcAnswer {
        status,
        headers,
        body,
    }
}

async fn pc_bad_request() -> PcAnswer {
    let sim = demo().await;
    let mut body = graph_consent("User.Read.All");
    body["applicationId"] = json!("11111111-2222-4333-8444-555555555555");
    pc_as(&sim, JANE).await.consent(ADATUM, body).await
}

async fn pc_customer_not_found() -> PcAnswer {
    let sim = demo().await;
    let pc = pc_as(&sim, JANE).await;
    pc.consent(OTHER_TENANT, graph_consent("User.Read.All"))
        .await
}

async fn pc_consent_not_found() -> PcAnswer {
    let sim = demo().await;
    let pc = pc_as(&sim, JANE).await;
    pc.consent_of(reqwest::Method::GET, ADATUM).await
}

async fn pc_consent_exists() -> PcAnswer {
    let sim = demo().await;
    let pc = pc_as(&sim, JANE).await;
    let first = pc.consent(ADATUM, graph_consent("User.Read.All")).await;
    assert_eq!(first.status, StatusCode::CREATED);
    pc.consent(ADATUM, graph_consent("Directory.Read.All"))
        .await
}

async fn pc_faulted(spec: Value) -> PcAnswer {
    let sim = demo().await;
    let pc = pc_as(&sim, JANE).await;
    sim.sim_post("/partner-center/faults", spec).await;
    pc.list(5).await
}

async fn pc_fault_unavailable() -> PcAnswer {
    pc_faulted(json!({ "status": 503 })).await
}

async fn pc_fault_throttled() -> PcAnswer {
    pc_faulted(json!({ "status": 429, "retry_after": 2 })).await
}
