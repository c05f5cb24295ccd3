//! The Partner Center stand-in (REFERENCE §6): the calls a CPV makes to reach its partners'
//! customers, shaped as Microsoft documents them ("Get a list of customers", "Control Panel
//! Vendor APIs", "Partner Center REST error codes"). Every answer and its source is in
//! docs/ENTRA_FIDELITY.md, "Partner Center answers".
//!
//! - `GET /v1/customers?size=N`: the caller's partner's customers, paged; the next page is
//!   the `links.next` request, `GET /v1/customers?size=N&seekOperation=Next` with its
//!   `MS-ContinuationToken` header.
//! - `POST /v1/customers/{customer_id}/applicationconsents`: the CPV app consented into the
//!   customer tenant with its grants (201; 409 when the app is consented there already).
//! - `GET` and `DELETE /v1/customers/{customer_id}/applicationconsents/{application_id}`
//!   (GET is not a documented Partner Center call; it lets tests and tools look).
//!
//! Only App+User access tokens this IdP minted for Partner Center are accepted; `amr` must
//! hold `mfa` (401, seed 002); the user must be allowed the operation (403). 50 requests per
//! second per application id (`limiter`), else 429 with `Retry-After`.

use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use serde_json::{Value, json};

use super::customers::{AppConsent, AppGrant, Customer};
use super::directory::normalize_resource;
use super::errors::json_string;
use super::grants::has_mfa;
use super::limiter::{SlidingWindow, retry_after_secs};
use super::{AppState, PARTNER_CENTER};

/// Page size when a list request names none.
const DEFAULT_PAGE_SIZE: usize = 100;
const CONTINUATION_HEADER: &str = "ms-continuationtoken";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/customers", get(list_customers))
        .route(
            "/customers/{customer_id}/applicationconsents",
            axum::routing::post(create_consent),
        )
        .route(
            "/customers/{customer_id}/applicationconsents/{application_id}",
            get(get_consent).delete(delete_consent),
        )
}

/// The stand-in's own state: the rate limit and the injected faults.
#[derive(Debug, Default)]
pub struct PartnerCenterState {
    pub limiter: SlidingWindow,
    fault: Option<PcFault>,
}

/// `/_sim/partner-center/faults`: Partner Center answers this way, `remaining` times and/or
/// until `until` (whichever ends first).
#[derive(Debug, Clone)]
pub struct PcFault {
    pub remaining: Option<u32>,
    pub until: Option<Instant>,
    /// 200 means a slow success: the call waits `latency_ms`, then is answered normally.
    pub status: StatusCode,
    pub retry_after: Option<u64>,
    pub latency_ms: u64,
}

impl PartnerCenterState {
    pub fn set_fault(&mut self, fault: Option<PcFault>) {
        self.fault = fault;
    }

    /// The pending fault, if it still applies: `{"pending": n|null, "until_secs": s|null}`.
    pub fn fault_view(&mut self, now: Instant) -> Value {
        self.expire(now);
        match &self.fault {
            None => json!({ "pending": 0, "active": false }),
            Some(f) => json!({
                "active": true,
                "pending": f.remaining,
                "status": f.status.as_u16(),
                "remaining_secs": f.until.map(|u| u.saturating_duration_since(now).as_secs_f64()),
            }),
        }
    }

    fn expire(&mut self, now: Instant) {
        let over = self
            .fault
            .as_ref()
            .is_some_and(|f| f.remaining == Some(0) || f.until.is_some_and(|until| now >= until));
        if over {
            self.fault = None;
        }
    }

    /// Uses the pending fault once, if any.
    fn take_fault(&mut self, now: Instant) -> Option<PcFault> {
        self.expire(now);
        let fault = self.fault.as_mut()?;
        if let Some(n) = fault.remaining.as_mut() {
            *n -= 1;
        }
        Some(fault.clone())
    }
}

/// What a call asks Partner Center to do; its name keys the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operation {
    List,
    ConsentCreate,
    ConsentGet,
    ConsentDelete,
}

impl Operation {
    fn name(self) -> &'static str {
        match self {
            Operation::List => "list",
            Operation::ConsentCreate => "consent_create",
            Operation::ConsentGet => "consent_get",
            Operation::ConsentDelete => "consent_delete",
        }
    }

    /// Whether a partner user in `role` may do it. Listing customers is open to the agents
    /// who see the Customers workspace (seed 002's table: Admin and Sales Agents); consenting
    /// an app into a customer tenant takes an Admin Agent (or the partner's Global Admin).
    fn allowed_for(self, role: &str) -> bool {
        let admin = matches!(role, "Admin Agent" | "Global Admin");
        match self {
            Operation::List => admin || role == "Sales Agent",
            _ => admin,
        }
    }
}

/// A Partner Center error: `{"code", "description", "data": [], "source": "PartnerFD"}`.
#[derive(Debug)]
struct PcError {
    status: StatusCode,
    code: &'static str,
    description: String,
    /// `WWW-Authenticate: Bearer error="invalid_token"`, as seed 002's 401 has it.
    invalid_token: bool,
}

impl PcError {
    fn new(status: StatusCode, code: &'static str, description: impl Into<String>) -> PcError {
        PcError {
            status,
            code,
            description: description.into(),
            invalid_token: false,
        }
    }

    fn unauthorized(code: &'static str, description: impl Into<String>) -> PcError {
        PcError {
            invalid_token: true,
            ..PcError::new(StatusCode::UNAUTHORIZED, code, description)
        }
    }

    fn bad_request(why: impl std::fmt::Display) -> PcError {
        let description = format!("Invalid request input: {why}");
        PcError::new(StatusCode::BAD_REQUEST, "800002", description)
    }

    fn forbidden() -> PcError {
        PcError::new(StatusCode::FORBIDDEN, "2032", "Access denied")
    }

    fn not_found(what: impl std::fmt::Display) -> PcError {
        PcError::new(
            StatusCode::NOT_FOUND,
            "1000",
            format!("{what} was not found."),
        )
    }

    fn to_response(&self, ids: &PcIds) -> Response {
        let body = json!({
            "code": self.code,
            "description": self.description,
            "data": [],
            "source": "PartnerFD",
        });
        let mut resp = pc_json(self.status, Some(&body), ids);
        if self.invalid_token {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer error=\"invalid_token\""),
            );
            // Seed 002's status line: "HTTP/1.1 401 Unauthorized - MFA required".
            if self.code == MFA_REQUIRED_CODE {
                resp.extensions_mut()
                    .insert(hyper::ext::ReasonPhrase::from_static(
                        b"Unauthorized - MFA required",
                    ));
            }
        }
        resp
    }
}

const MFA_REQUIRED_CODE: &str = "10001";

/// Why a call got no answer from the operation itself.
enum Refusal {
    Error(PcError),
    /// The 50/s limit; `Retry-After` in seconds.
    Throttled(u64),
    Fault(PcFault),
}

impl From<PcError> for Refusal {
    fn from(e: PcError) -> Self {
        Refusal::Error(e)
    }
}

/// A successful answer: its status and JSON body (none for 204).
struct Answer {
    status: StatusCode,
    body: Option<Value>,
}

/// `MS-CorrelationId` and `MS-RequestId`: echoed when the client sent GUIDs, else made up,
/// as Partner Center does.
struct PcIds {
    correlation_id: String,
    request_id: String,
}

impl PcIds {
    fn new(headers: &HeaderMap) -> PcIds {
        let pick = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| uuid::Uuid::parse_str(v.trim()).ok())
                .unwrap_or_else(uuid::Uuid::new_v4)
                .to_string()
        };
        PcIds {
            correlation_id: pick("ms-correlationid"),
            request_id: pick("ms-requestid"),
        }
    }
}

fn pc_json(status: StatusCode, body: Option<&Value>, ids: &PcIds) -> Response {
    let mut resp = match body {
        Some(body) => (
            status,
            [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
            json_string(body),
        )
            .into_response(),
        None => status.into_response(),
    };
    let h = resp.headers_mut();
    for (name, value) in [
        ("ms-correlationid", &ids.correlation_id),
        ("ms-requestid", &ids.request_id),
    ] {
        if let Ok(v) = HeaderValue::from_str(value) {
            h.insert(name, v);
        }
    }
    resp
}

/// Partner Center's throttling answer ("API throttling guidance"): 429, `Retry-After`, and
/// the gateway's body.
fn throttled(retry_after: u64, ids: &PcIds) -> Response {
    let body = json!({
        "statusCode": 429,
        "message": format!("Rate limit is exceeded. Try again in {retry_after} seconds."),
    });
    let mut resp = pc_json(StatusCode::TOO_MANY_REQUESTS, Some(&body), ids);
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
    resp
}

fn fault_response(fault: &PcFault, ids: &PcIds) -> Response {
    if fault.status == StatusCode::TOO_MANY_REQUESTS {
        return throttled(fault.retry_after.unwrap_or(1), ids);
    }
    let description = match fault.status.as_u16() {
        500 => "Unexpected service error".to_string(),
        503 => "The service is temporarily unavailable. Please try again later.".to_string(),
        _ => fault
            .status
            .canonical_reason()
            .unwrap_or("Error")
            .to_string(),
    };
    let mut resp = PcError::new(fault.status, "800003", description).to_response(ids);
    if let Some(secs) = fault.retry_after {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}

/// Who calls, once the token, the rate limit, MFA and the role have let the call through.
struct Caller {
    partner: String,
    app_id: String,
}

/// The claims of a bearer token this IdP minted, as far as Partner Center reads them.
#[derive(Debug, Deserialize)]
struct TokenClaims {
    aud: String,
    exp: i64,
    tid: String,
    upn: Option<String>,
    appid: String,
    #[serde(default)]
    amr: Vec<String>,
}

/// The checks every call passes, in Partner Center's order: the fault of the moment (the
/// service is down before anything is read), the bearer token (401), the 50/s limit of its
/// application id (429), MFA (401), the user's role (403).
async fn admit(
    st: &AppState,
    op: Operation,
    headers: &HeaderMap,
    arrived: Instant,
) -> Result<Caller, Refusal> {
    let fault = st.idp.partner_center().take_fault(arrived);
    let latency =
        st.idp.inner.opts.partner_center_latency_ms + fault.as_ref().map_or(0, |f| f.latency_ms);
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    if let Some(fault) = fault.filter(|f| f.status != StatusCode::OK) {
        return Err(Refusal::Fault(fault));
    }
    let claims = verify_bearer(st, headers)?;
    // Judged at arrival: neither the latency above nor a busy simulator counts against it.
    let admitted = st
        .idp
        .partner_center()
        .limiter
        .admit(&claims.appid, arrived);
    if let Err(wait) = admitted {
        return Err(Refusal::Throttled(retry_after_secs(wait)));
    }
    if !has_mfa(&claims.amr) {
        return Err(PcError::unauthorized(
            MFA_REQUIRED_CODE,
            "Authentication failed. MFA required.",
        )
        .into());
    }
    let upn = claims.upn.as_deref().unwrap_or_default();
    let role = st.idp.directory().user(upn).map(|u| u.role.as_str());
    if !role.is_some_and(|r| op.allowed_for(r)) {
        return Err(PcError::forbidden().into());
    }
    Ok(Caller {
        partner: claims.tid,
        app_id: claims.appid.to_ascii_lowercase(),
    })
}

/// An App+User access token this IdP signed with a key its JWKS lists, not expired, for
/// Partner Center, of a user of a live partner tenant.
fn verify_bearer(st: &AppState, headers: &HeaderMap) -> Result<TokenClaims, PcError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            PcError::unauthorized("800001", "Partner Token missing in request context")
        })?;
    let denied = |why: &str| PcError::unauthorized("400", format!("Access denied: {why}"));
    let claims = signed_claims(st, token).ok_or_else(|| denied("the access token is invalid."))?;
    if claims.exp <= st.idp.now().unix_timestamp() {
        return Err(denied("the access token has expired."));
    }
    if normalize_resource(&claims.aud) != PARTNER_CENTER {
        let why = format!("The audience '{}' in the token is invalid.", claims.aud);
        return Err(PcError::unauthorized("900420", why));
    }
    let dir = st.idp.directory();
    let user = claims.upn.as_deref().and_then(|upn| dir.user(upn));
    let live = user.is_some_and(|u| {
        u.tenant_id.eq_ignore_ascii_case(&claims.tid) && !st.idp.lock().tenant_deleted(&u.tenant_id)
    });
    if !live {
        return Err(denied("the token names no user of a partner tenant."));
    }
    Ok(claims)
}

/// The claims of `token` when one of the listed keys signed it.
fn signed_claims(st: &AppState, token: &str) -> Option<TokenClaims> {
    let (input, signature) = token.rsplit_once('.')?;
    let (header_b64, claims_b64) = input.split_once('.')?;
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header_b64).ok()?).ok()?;
    let key = st.idp.key_ring().find(header["kid"].as_str()?)?;
    let signature = URL_SAFE_NO_PAD.decode(signature).ok()?;
    if header["alg"] != "RS256" || !key.verifies(input.as_bytes(), &signature) {
        return None;
    }
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims_b64).ok()?).ok()
}

/// Counts the outcome and answers.
fn finish(st: &AppState, op: Operation, outcome: Result<Answer, Refusal>, ids: &PcIds) -> Response {
    let mut state = st.idp.lock();
    let counters = &mut state.counters.partner_center;
    match outcome {
        Ok(answer) => {
            *counters.succeeded.entry(op.name().into()).or_default() += 1;
            pc_json(answer.status, answer.body.as_ref(), ids)
        }
        Err(Refusal::Error(e)) => {
            *counters
                .refused
                .entry(e.status.as_u16().to_string())
                .or_default() += 1;
            e.to_response(ids)
        }
        Err(Refusal::Throttled(secs)) => {
            counters.throttled += 1;
            throttled(secs, ids)
        }
        Err(Refusal::Fault(fault)) => {
            counters.faulted += 1;
            fault_response(&fault, ids)
        }
    }
}

/// Runs one call: counts it, admits the caller, does the operation, answers.
async fn serve(
    st: &AppState,
    op: Operation,
    headers: &HeaderMap,
    operation: impl FnOnce(&Caller) -> Result<Answer, PcError>,
) -> Response {
    let arrived = Instant::now();
    let ids = PcIds::new(headers);
    {
        let mut state = st.idp.lock();
        *state
            .counters
            .partner_center
            .calls
            .entry(op.name().into())
            .or_default() += 1;
    }
    let outcome = match admit(st, op, headers, arrived).await {
        Ok(caller) => operation(&caller).map_err(Refusal::from),
        Err(refusal) => Err(refusal),
    };
    finish(st, op, outcome, &ids)
}

// ---- GET /v1/customers ----

async fn list_customers(
    State(st): State<AppState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    serve(&st, Operation::List, &headers, |caller| {
        let (size, after) = list_request(query.as_deref(), &headers, &caller.partner)?;
        Ok(customers_page(&st, &caller.partner, size, after.as_deref()))
    })
    .await
}

/// `size` and, for `seekOperation=Next`, the customer id the continuation token resumes
/// after (a token is only good for the partner it was issued to).
fn list_request(
    query: Option<&str>,
    headers: &HeaderMap,
    partner: &str,
) -> Result<(usize, Option<String>), PcError> {
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(query.unwrap_or_default()).map_err(PcError::bad_request)?;
    let param = |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    let size = match param("size") {
        None => DEFAULT_PAGE_SIZE,
        Some(raw) => raw
            .parse::<usize>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| {
                PcError::bad_request(format!("size '{raw}' is not a positive number"))
            })?,
    };
    let Some(seek) = param("seekOperation") else {
        return Ok((size, None));
    };
    if !seek.eq_ignore_ascii_case("next") {
        return Err(PcError::bad_request(format!(
            "seekOperation '{seek}' is not supported"
        )));
    }
    let token = headers
        .get(CONTINUATION_HEADER)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            PcError::bad_request("seekOperation=Next needs the MS-ContinuationToken header")
        })?;
    let after = continuation_after(token, partner)
        .ok_or_else(|| PcError::bad_request("the continuation token is invalid"))?;
    Ok((size, Some(after)))
}

fn continuation_token(partner: &str, after: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{partner}|{after}"))
}

fn continuation_after(token: &str, partner: &str) -> Option<String> {
    let raw = String::from_utf8(URL_SAFE_NO_PAD.decode(token.trim()).ok()?).ok()?;
    let (issued_to, after) = raw.split_once('|')?;
    (issued_to == partner).then(|| after.to_string())
}

/// One page in Partner Center's collection shape, `links.next` naming the next request.
fn customers_page(st: &AppState, partner: &str, size: usize, after: Option<&str>) -> Answer {
    let state = st.idp.lock();
    let (page, more) = state.customers.page(partner, after, size);
    let items: Vec<Value> = page.iter().map(|c| customer_json(c)).collect();
    let first = format!("/v1/customers?size={size}");
    let next = format!("{first}&seekOperation=Next");
    let mut links = json!({
        "self": { "uri": if after.is_some() { &next } else { &first }, "method": "GET", "headers": [] },
    });
    if let (true, Some(last)) = (more, page.last()) {
        let token = continuation_token(partner, &last.id);
        links["next"] = json!({
            "uri": next,
            "method": "GET",
            "headers": [{ "key": "MS-ContinuationToken", "value": token }],
        });
    }
    let body = json!({
        "totalCount": items.len(),
        "items": items,
        "links": links,
        "attributes": { "objectType": "Collection" },
    });
    Answer {
        status: StatusCode::OK,
        body: Some(body),
    }
}

fn customer_json(c: &Customer) -> Value {
    json!({
        "id": c.id,
        "companyProfile": {
            "tenantId": c.id,
            "domain": c.domain,
            "companyName": c.name,
            "attributes": { "objectType": "CustomerCompanyProfile" },
        },
        "relationshipToPartner": "reseller",
        "attributes": { "objectType": "Customer" },
    })
}

// ---- applicationconsents ----

/// The request body; property names are matched case-insensitively, as Partner Center's
/// (ASP.NET) binder does (scripts send `ApplicationGrants`, `EnterpriseApplicationId`).
#[derive(Debug, Deserialize)]
struct ConsentRequest {
    applicationid: String,
    #[serde(default)]
    displayname: Option<String>,
    applicationgrants: Vec<GrantRequest>,
}

#[derive(Debug, Deserialize)]
struct GrantRequest {
    enterpriseapplicationid: String,
    scope: String,
}

async fn create_consent(
    State(st): State<AppState>,
    Path(customer_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    serve(&st, Operation::ConsentCreate, &headers, |caller| {
        let request = consent_request(&st, caller, &body)?;
        let mut state = st.idp.lock();
        let customer = state
            .customers
            .listed_of(&caller.partner, &customer_id)
            .ok_or_else(|| PcError::not_found(format!("Customer '{customer_id}'")))?;
        if customer.consents.contains_key(&caller.app_id) {
            return Err(PcError::new(
                StatusCode::CONFLICT,
                "409",
                "Permission entry already exists.",
            ));
        }
        let answer = consent_json(&caller.app_id, &request);
        customer.consents.insert(caller.app_id.clone(), request);
        Ok(Answer {
            status: StatusCode::CREATED,
            body: Some(answer),
        })
    })
    .await
}

/// The consent a POST asks for, after Partner Center's checks: a readable body, the
/// caller's own application, and grants naming resources that exist, each with scopes.
fn consent_request(st: &AppState, caller: &Caller, body: &[u8]) -> Result<AppConsent, PcError> {
    let value: Value = serde_json::from_slice(body).map_err(PcError::bad_request)?;
    let request: ConsentRequest =
        serde_json::from_value(lowercase_keys(value)).map_err(PcError::bad_request)?;
    if !request
        .applicationid
        .trim()
        .eq_ignore_ascii_case(&caller.app_id)
    {
        return Err(PcError::bad_request(
            "applicationId must be the application the access token was issued to",
        ));
    }
    if request.applicationgrants.is_empty() {
        return Err(PcError::bad_request("applicationGrants is empty"));
    }
    let dir = st.idp.directory();
    let mut grants = Vec::with_capacity(request.applicationgrants.len());
    for grant in request.applicationgrants {
        let id = grant.enterpriseapplicationid.trim().to_ascii_lowercase();
        if uuid::Uuid::parse_str(&id).is_err() || !dir.is_resource_app_id(&id) {
            let why = format!("enterpriseApplicationId '{id}' names no resource application");
            return Err(PcError::bad_request(why));
        }
        let grant = AppGrant {
            enterprise_application_id: id,
            scope: grant.scope,
        };
        if grant.scopes().is_empty() {
            return Err(PcError::bad_request("a grant has no scope"));
        }
        grants.push(grant);
    }
    let display_name = request.displayname.unwrap_or_else(|| {
        dir.app(&caller.app_id)
            .map_or_else(|| caller.app_id.clone(), |a| a.name.clone())
    });
    Ok(AppConsent {
        display_name,
        grants,
        created_at: st.idp.now(),
    })
}

fn lowercase_keys(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), lowercase_keys(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(lowercase_keys).collect()),
        other => other,
    }
}

/// Partner Center's `ApplicationConsent` resource.
fn consent_json(app_id: &str, consent: &AppConsent) -> Value {
    let grants: Vec<Value> = consent
        .grants
        .iter()
        .map(
            |g| json!({ "enterpriseApplicationId": g.enterprise_application_id, "scope": g.scope }),
        )
        .collect();
    json!({
        "applicationId": app_id,
        "displayName": consent.display_name,
        "applicationGrants": grants,
    })
}

async fn get_consent(
    State(st): State<AppState>,
    Path((customer_id, application_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    serve(&st, Operation::ConsentGet, &headers, |caller| {
        let mut state = st.idp.lock();
        let consent = own_consent(&mut state, caller, &customer_id, &application_id)?;
        Ok(Answer {
            status: StatusCode::OK,
            body: Some(consent_json(&caller.app_id, consent)),
        })
    })
    .await
}

async fn delete_consent(
    State(st): State<AppState>,
    Path((customer_id, application_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    serve(&st, Operation::ConsentDelete, &headers, |caller| {
        let mut state = st.idp.lock();
        own_consent(&mut state, caller, &customer_id, &application_id)?;
        if let Some(customer) = state.customers.get_mut(&customer_id) {
            customer.consents.remove(&caller.app_id);
        }
        Ok(Answer {
            status: StatusCode::NO_CONTENT,
            body: None,
        })
    })
    .await
}

/// The caller's app's consent in one of its partner's customers: another app's is not the
/// caller's to read or remove (403); a customer or consent that is not there is 404.
fn own_consent<'s>(
    state: &'s mut super::grants::SimState,
    caller: &Caller,
    customer_id: &str,
    application_id: &str,
) -> Result<&'s AppConsent, PcError> {
    if !application_id.eq_ignore_ascii_case(&caller.app_id) {
        return Err(PcError::forbidden());
    }
    let customer = state
        .customers
        .listed_of(&caller.partner, customer_id)
        .ok_or_else(|| PcError::not_found(format!("Customer '{customer_id}'")))?;
    customer
        .consents
        .get(&caller.app_id)
        .ok_or_else(|| PcError::not_found(format!("Application consent '{application_id}'")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continuation_tokens_belong_to_their_partner() {
        let token = continuation_token("p1", "c7");
        assert_eq!(continuation_after(&token, "p1").as_deref(), Some("c7"));
        assert_eq!(continuation_after(&token, "p2"), None);
        assert_eq!(continuation_after("!!", "p1"), None);
    }

    #[test]
    fn roles() {
        assert!(Operation::List.allowed_for("Sales Agent"));
        assert!(!Operation::ConsentCreate.allowed_for("Sales Agent"));
        assert!(Operation::ConsentDelete.allowed_for("Global Admin"));
        assert!(!Operation::List.allowed_for("Helpdesk Agent"));
    }

    #[test]
    fn body_keys_are_case_insensitive() {
        let v =
            lowercase_keys(json!({ "ApplicationGrants": [{ "EnterpriseApplicationId": "x" }] }));
        assert_eq!(
            v,
            json!({ "applicationgrants": [{ "enterpriseapplicationid": "x" }] })
        );
    }

    #[test]
    fn faults_end_by_count_or_time() {
        let mut pc = PartnerCenterState::default();
        let now = Instant::now();
        let fault = |remaining, until| PcFault {
            remaining,
            until,
            status: StatusCode::SERVICE_UNAVAILABLE,
            retry_after: None,
            latency_ms: 0,
        };
        pc.set_fault(Some(fault(Some(2), None)));
        assert!(pc.take_fault(now).is_some() && pc.take_fault(now).is_some());
        assert!(pc.take_fault(now).is_none());
        pc.set_fault(Some(fault(None, Some(now + Duration::from_secs(1)))));
        assert!(pc.take_fault(now).is_some());
        assert!(pc.take_fault(now + Duration::from_secs(1)).is_none());
    }
}
