//! `/_sim/`: the control API tests use to move time and break things (REFERENCE §5.1).
//!
//! JSON in, JSON out. The simulator is a test tool, so this API shows secrets
//! and refresh tokens freely; it has no place in front of real users.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use time::Duration;

use super::clock::rfc3339;
use super::errors::{EntraError, RequestIds};
use super::grants::{Fault, FaultBody, Issued, MintError, Scopes, SimState};
use super::keys::SigningKey;
use super::token::{json_ok, signing_failed, token_body};
use super::tokens::new_refresh_token;
use super::{AppState, DEMO_CLIENT_ID};

/// What `POST /_sim/tokens` consents to when no `scopes` are given: what
/// samvault's consent link asks for.
pub const SIM_TOKEN_SCOPES: &str =
    "https://api.partnercenter.microsoft.com/user_impersonation offline_access openid profile";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/clock", get(clock))
        .route("/clock/advance", post(advance))
        .route("/counters", get(counters))
        .route("/grants", get(grants))
        .route("/issued", get(issued))
        .route(
            "/faults",
            post(set_faults).get(get_faults).delete(clear_faults),
        )
        .route("/tokens", post(mint_tokens))
        .route("/tenants/{tenant_id}", delete(delete_tenant))
        .route(
            "/tenants/{tenant_id}/faults",
            post(set_tenant_faults)
                .get(get_tenant_faults)
                .delete(clear_tenant_faults),
        )
        .route("/tenants/{tenant_id}/revoke-consent", post(revoke_consent))
        .route("/tenants/{tenant_id}/require-mfa", post(require_mfa))
        .route("/users/{upn}/reset-password", post(reset_password))
        .route("/users/{upn}/sign-in-frequency", post(sign_in_frequency))
        .route("/app/secret/expire", post(expire_secret))
        .route("/app/secret/rotate", post(rotate_secret))
        .route("/app/secrets", post(add_secret))
        .route("/directory", get(directory))
        .route("/keys", get(keys))
        .route("/keys/rotate", post(rotate_keys))
        .route("/reset", post(reset))
}

pub(crate) fn bad_request(msg: impl Into<String>) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({ "error": msg.into() })),
    )
        .into_response()
}

pub(crate) fn not_found(msg: impl Into<String>) -> Response {
    (StatusCode::NOT_FOUND, Json(json!({ "error": msg.into() }))).into_response()
}

/// Bodies are optional on most calls: empty means "all defaults".
pub(crate) fn parse_body<T: for<'de> Deserialize<'de> + Default>(
    body: &Bytes,
) -> Result<T, Response> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| bad_request(format!("invalid JSON body: {e}")))
}

fn clock_view(st: &AppState) -> Value {
    json!({
        "now": rfc3339(st.idp.now()),
        "offset_seconds": st.idp.inner.clock.offset().whole_seconds(),
    })
}

async fn clock(State(st): State<AppState>) -> Json<Value> {
    Json(clock_view(&st))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Advance {
    days: Option<f64>,
    hours: Option<f64>,
    seconds: Option<f64>,
}

async fn advance(State(st): State<AppState>, body: Bytes) -> Response {
    let a: Advance = match parse_body(&body) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let secs = a.days.unwrap_or(0.0) * 86_400.0
        + a.hours.unwrap_or(0.0) * 3600.0
        + a.seconds.unwrap_or(0.0);
    if !secs.is_finite() || secs < 0.0 {
        return bad_request("the clock only moves forward");
    }
    if secs == 0.0 {
        return bad_request("give \"days\", \"hours\" or \"seconds\"");
    }
    st.idp.inner.clock.advance(Duration::seconds_f64(secs));
    Json(clock_view(&st)).into_response()
}

async fn counters(State(st): State<AppState>) -> Json<Value> {
    let c = st.idp.lock().counters.clone();
    Json(json!(c))
}

async fn grants(State(st): State<AppState>) -> Json<Value> {
    let now = st.idp.now();
    let view = st.idp.lock().grants_view(st.idp.directory(), now);
    Json(json!(view))
}

/// Every authorization code still remembered and the newest access and id tokens signed
/// (refresh tokens are in `/grants`).
async fn issued(State(st): State<AppState>) -> Json<Value> {
    let view = st.idp.lock().issued_view();
    Json(json!(view))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FaultSpec {
    count: Option<u32>,
    status: Option<u16>,
    retry_after: Option<u64>,
    latency_ms: Option<u64>,
    body: Option<String>,
    /// Process the call first (the grant is redeemed), then delay and answer with the fault.
    after_grant: Option<bool>,
    /// Extension: inject a specific Entra error, e.g. `{"error_code": 50196}`.
    error_code: Option<u32>,
    error: Option<String>,
    error_description: Option<String>,
}

/// Replaces any pending fault: the next `count` token calls fail this way.
async fn set_faults(State(st): State<AppState>, body: Bytes) -> Response {
    let spec: FaultSpec = match parse_body(&body) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let count = spec.count.unwrap_or(1);
    let fault = match fault_from_spec(&spec, Some(count)) {
        Ok(f) => f,
        Err(r) => return r,
    };
    st.idp.lock().set_fault(Some(fault));
    Json(json!({ "pending": count })).into_response()
}

/// The fault a `/_sim/faults` body describes, to be served `remaining` times
/// (`None`: until cleared).
fn fault_from_spec(spec: &FaultSpec, remaining: Option<u32>) -> Result<Fault, Response> {
    let body_kind = match spec.body.as_deref() {
        None | Some("entra" | "json") => FaultBody::Entra,
        Some("malformed") => FaultBody::Malformed,
        Some("html") => FaultBody::Html,
        Some("empty") => FaultBody::Empty,
        Some(other) => {
            return Err(bad_request(format!(
                "unknown body {other:?}: use \"malformed\", \"html\", \"empty\" or null"
            )));
        }
    };
    let error_name = match spec.error.as_deref().map(oauth_error_name) {
        None => None,
        Some(Some(name)) => Some(name),
        Some(None) => return Err(bad_request("unknown OAuth \"error\" value")),
    };
    let error = spec.error_code.map(|code| {
        let msg = spec
            .error_description
            .clone()
            .unwrap_or_else(|| "Simulated error injected by /_sim/faults.".into());
        let e = EntraError::new(code, msg);
        match error_name {
            Some(name) => e.with_error(name),
            None => e,
        }
    });
    let default_status = error.as_ref().map_or(503, |e| e.status.as_u16());
    let status = match StatusCode::from_u16(spec.status.unwrap_or(default_status)) {
        Ok(s) if s.as_u16() >= 400 => s,
        // A slow answer that still succeeds (only the latency is injected), or a 200 whose
        // body is unusable (a truncated answer, a proxy's page).
        Ok(StatusCode::OK)
            if error.is_none()
                && (body_kind != FaultBody::Entra || spec.latency_ms.unwrap_or(0) > 0) =>
        {
            StatusCode::OK
        }
        _ => {
            return Err(bad_request(
                "status must be an HTTP error status (400-599), or 200 with latency_ms (a slow success) or a malformed, html or empty body",
            ));
        }
    };
    Ok(Fault {
        remaining,
        status,
        retry_after: spec.retry_after,
        latency_ms: spec.latency_ms.unwrap_or(0),
        body: body_kind,
        after_grant: spec.after_grant.unwrap_or(false),
        error,
    })
}

/// The OAuth `error` values Entra uses (RFC 6749 §5.2 plus OIDC's).
fn oauth_error_name(name: &str) -> Option<&'static str> {
    const NAMES: [&str; 12] = [
        "invalid_request",
        "invalid_client",
        "invalid_grant",
        "unauthorized_client",
        "unsupported_grant_type",
        "invalid_scope",
        "interaction_required",
        "login_required",
        "consent_required",
        "access_denied",
        "server_error",
        "temporarily_unavailable",
    ];
    NAMES.into_iter().find(|n| *n == name)
}

async fn get_faults(State(st): State<AppState>) -> Json<Value> {
    Json(json!({ "pending": st.idp.lock().pending_faults() }))
}

async fn clear_faults(State(st): State<AppState>) -> Json<Value> {
    st.idp.lock().set_fault(None);
    Json(json!({ "pending": 0 }))
}

/// A partner tenant or a customer tenant, by id or domain.
fn known_tenant(st: &AppState, raw: &str) -> Result<String, Response> {
    if let Some(t) = st.idp.directory().tenant(raw) {
        return Ok(t.id.clone());
    }
    st.idp
        .lock()
        .customers
        .get(raw)
        .map(|c| c.id.clone())
        .ok_or_else(|| not_found(format!("unknown tenant {raw}")))
}

fn known_user(st: &AppState, upn: &str) -> Result<String, Response> {
    st.idp
        .directory()
        .user(upn)
        .map(|u| u.upn.clone())
        .ok_or_else(|| not_found(format!("unknown user {upn}")))
}

fn tenant_fault_view(tid: &str, fault: Option<&Fault>) -> Value {
    json!({
        "tenant_id": tid,
        // null while the fault lasts until cleared.
        "pending": fault.map_or(Some(0), |f| f.remaining),
        "until_cleared": fault.is_some_and(|f| f.remaining.is_none()),
    })
}

/// Replaces the tenant's fault: its refresh-token calls fail this way, `count`
/// times or (without `count`) until cleared. A global fault still goes first.
async fn set_tenant_faults(
    State(st): State<AppState>,
    Path(tenant): Path<String>,
    body: Bytes,
) -> Response {
    let tid = match known_tenant(&st, &tenant) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let spec: FaultSpec = match parse_body(&body) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let fault = match fault_from_spec(&spec, spec.count) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let mut state = st.idp.lock();
    state.set_tenant_fault(&tid, Some(fault));
    Json(tenant_fault_view(&tid, state.tenant_fault(&tid))).into_response()
}

async fn get_tenant_faults(State(st): State<AppState>, Path(tenant): Path<String>) -> Response {
    match known_tenant(&st, &tenant) {
        Ok(tid) => Json(tenant_fault_view(&tid, st.idp.lock().tenant_fault(&tid))).into_response(),
        Err(r) => r,
    }
}

async fn clear_tenant_faults(State(st): State<AppState>, Path(tenant): Path<String>) -> Response {
    match known_tenant(&st, &tenant) {
        Ok(tid) => {
            st.idp.lock().set_tenant_fault(&tid, None);
            Json(tenant_fault_view(&tid, None)).into_response()
        }
        Err(r) => r,
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct MintBody {
    upn: Option<String>,
    users: Option<Vec<String>>,
    /// Whether the user approves MFA at the sign-in; default true.
    mfa: Option<bool>,
    /// Space-separated, as in the authorize request; default `SIM_TOKEN_SCOPES`.
    scopes: Option<String>,
    /// The app that consents and redeems; default the demo CPV app.
    client_id: Option<String>,
    /// `false` leaves out `access_token` and `id_token`: no RS256 signing,
    /// which is nearly all the cost of a large batch; default true.
    sign: Option<bool>,
}

/// Users minted per critical section: the state lock is released between
/// chunks so that a 10,000-user batch never stalls token calls for long.
const MINT_CHUNK: usize = 256;

/// "This user signed in, consented, and the app redeemed the code", in one
/// call and without touching the token endpoint: consent is recorded, the RT
/// joins `/_sim/grants`, and the answer is the token endpoint's JSON. Only
/// `counters.sim_tokens` moves. The batch form (`users`) answers an array in
/// request order; every user is checked before anything is recorded, so an
/// unknown user or an MFA refusal leaves the state untouched.
async fn mint_tokens(State(st): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let b: MintBody = match parse_body(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let (upns, batch) = match (b.upn, b.users) {
        (Some(upn), None) => (vec![upn], false),
        (None, Some(users)) => (users, true),
        (Some(_), Some(_)) => return bad_request("give \"upn\" or \"users\", not both"),
        (None, None) => return bad_request("give \"upn\" or \"users\""),
    };
    let scopes = Scopes::parse(b.scopes.as_deref().unwrap_or(SIM_TOKEN_SCOPES));
    if scopes.resources.is_empty() && scopes.oidc.is_empty() {
        return bad_request("\"scopes\" names no scope");
    }
    let dir = st.idp.directory();
    let Some(app) = dir.app(b.client_id.as_deref().unwrap_or(DEMO_CLIENT_ID)) else {
        return not_found("unknown client_id");
    };
    let mfa = b.mfa.unwrap_or(true);
    let jwts = b.sign.unwrap_or(true);
    let now = st.idp.now();
    let refused = |e: MintError| match e {
        MintError::UnknownUser(upn) => (
            StatusCode::NOT_FOUND,
            Json(json!({ "error": format!("unknown user {upn}"), "upn": upn })),
        )
            .into_response(),
        MintError::Entra(e) => e.to_response(&st.base, &RequestIds::new(&headers), now),
    };
    // Check everyone first: a refused user must leave nothing half-seeded.
    for chunk in upns.chunks(MINT_CHUNK) {
        let state = st.idp.lock();
        for upn in chunk {
            if let Err(e) = state.sim_sign_in(dir, upn, mfa, &scopes, app) {
                return refused(e);
            }
        }
    }
    let mut issued: Vec<Issued> = Vec::with_capacity(upns.len());
    for chunk in upns.chunks(MINT_CHUNK) {
        // Random material is made before taking the lock, signing after releasing it.
        let rts: Vec<String> = chunk.iter().map(|_| new_refresh_token()).collect();
        let mut state = st.idp.lock();
        for (upn, rt) in chunk.iter().zip(rts) {
            // Only a concurrent `/_sim` change since the check can refuse here.
            let minted = state
                .sim_sign_in(dir, upn, mfa, &scopes, app)
                .and_then(|s| {
                    state
                        .sim_redeem(dir, &s, &scopes, app, rt, now)
                        .map_err(MintError::Entra)
                });
            match minted {
                Ok(i) => issued.push(i),
                Err(e) => {
                    drop(state);
                    return refused(e);
                }
            }
        }
    }
    let signed = if batch {
        let st2 = st.clone();
        match tokio::task::spawn_blocking(move || sign_all(&st2, issued, jwts, now)).await {
            Ok(r) => r.map(Value::Array),
            Err(_) => Err(signing_failed()),
        }
    } else {
        sign_all(&st, issued, jwts, now).map(|mut v| v.pop().unwrap_or_default())
    };
    match signed {
        Ok(body) => json_ok(&body),
        Err(e) => e.to_response(&st.base, &RequestIds::new(&headers), now),
    }
}

/// Builds the token responses in order, signing on all cores for large
/// batches (RS256 signing dominates the cost of seeding thousands of grants).
fn sign_all(
    st: &AppState,
    issued: Vec<Issued>,
    jwts: bool,
    now: time::OffsetDateTime,
) -> Result<Vec<Value>, EntraError> {
    let sign = |chunk: Vec<Issued>| {
        chunk
            .into_iter()
            .map(|i| token_body(st, i, false, jwts, now))
            .collect::<Result<Vec<_>, _>>()
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
    if !jwts || threads == 1 || issued.len() < 64 {
        return sign(issued);
    }
    let chunk_len = issued.len().div_ceil(threads);
    let mut rest = issued.into_iter();
    let chunks: Vec<Vec<Issued>> = std::iter::from_fn(|| {
        let c: Vec<Issued> = rest.by_ref().take(chunk_len).collect();
        (!c.is_empty()).then_some(c)
    })
    .collect();
    std::thread::scope(|scope| {
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|c| scope.spawn(move || sign(c)))
            .collect();
        let mut out = Vec::new();
        for h in handles {
            out.extend(h.join().map_err(|_| signing_failed())??);
        }
        Ok(out)
    })
}

/// The app's grant in that tenant is gone (every app's, in a customer tenant): refreshes
/// answer 65001.
async fn revoke_consent(State(st): State<AppState>, Path(tenant): Path<String>) -> Response {
    match known_tenant(&st, &tenant) {
        Ok(tid) => {
            let removed = st.idp.lock().revoke_consent(&tid);
            Json(json!({ "tenant_id": tid, "consent_revoked": removed > 0 })).into_response()
        }
        Err(r) => r,
    }
}

/// The tenant now enforces MFA: RTs whose sign-in lacked MFA answer 50076.
async fn require_mfa(State(st): State<AppState>, Path(tenant): Path<String>) -> Response {
    match known_tenant(&st, &tenant) {
        Ok(tid) => {
            st.idp.lock().require_mfa(&tid);
            Json(json!({ "tenant_id": tid, "mfa_required": true })).into_response()
        }
        Err(r) => r,
    }
}

/// The tenant is gone: its RTs and its endpoints answer 90002.
async fn delete_tenant(State(st): State<AppState>, Path(tenant): Path<String>) -> Response {
    match known_tenant(&st, &tenant) {
        Ok(tid) => {
            st.idp.lock().delete_tenant(&tid);
            Json(json!({ "tenant_id": tid, "deleted": true })).into_response()
        }
        Err(r) => r,
    }
}

/// TokensValidFrom moves to now: the user's existing RTs answer 50173.
async fn reset_password(State(st): State<AppState>, Path(upn): Path<String>) -> Response {
    match known_user(&st, &upn) {
        Ok(upn) => {
            let now = st.idp.now();
            st.idp.lock().reset_password(&upn, now);
            Json(json!({ "upn": upn, "tokens_valid_from": rfc3339(now) })).into_response()
        }
        Err(r) => r,
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct SignInFrequencyBody {
    /// A standing policy ("sign in again every N seconds"); without it, only
    /// RTs from sign-ins before now die.
    max_age_seconds: Option<i64>,
}

/// A sign-in frequency policy now applies: the user's RTs answer 70043.
async fn sign_in_frequency(
    State(st): State<AppState>,
    Path(upn): Path<String>,
    body: Bytes,
) -> Response {
    let b: SignInFrequencyBody = match parse_body(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    if b.max_age_seconds.is_some_and(|s| s < 0) {
        return bad_request("max_age_seconds must be positive");
    }
    match known_user(&st, &upn) {
        Ok(upn) => {
            let now = st.idp.now();
            st.idp.lock().set_sign_in_frequency(
                &upn,
                now,
                b.max_age_seconds.map(Duration::seconds),
            );
            Json(json!({ "upn": upn, "sign_in_frequency": true })).into_response()
        }
        Err(r) => r,
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct SecretBody {
    client_id: Option<String>,
    secret: Option<String>,
}

/// The app's secrets (or the one named by `secret`) have expired: token calls with them
/// answer 7000222.
async fn expire_secret(State(st): State<AppState>, body: Bytes) -> Response {
    let b: SecretBody = match parse_body(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let n = st
        .idp
        .lock()
        .expire_secret(b.client_id.as_deref(), b.secret.as_deref());
    if n == 0 {
        return not_found("unknown client_id or secret");
    }
    Json(json!({ "expired": n })).into_response()
}

/// Replaces the app's secrets with one (and clears expiries): the old ones answer 7000215.
async fn rotate_secret(State(st): State<AppState>, body: Bytes) -> Response {
    change_secrets(&st, body, "rotated", SimState::rotate_secret)
}

/// Adds a secret beside the app's others: Entra apps may hold several valid secrets, which
/// is how a secret is rolled without downtime.
async fn add_secret(State(st): State<AppState>, body: Bytes) -> Response {
    change_secrets(&st, body, "added", SimState::add_secret)
}

fn change_secrets(
    st: &AppState,
    body: Bytes,
    done: &str,
    change: fn(&mut SimState, &str, String) -> bool,
) -> Response {
    let b: SecretBody = match parse_body(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Some(secret) = b.secret.filter(|s| !s.is_empty()) else {
        return bad_request("give the new \"secret\"");
    };
    let client_id = b
        .client_id
        .unwrap_or_else(|| DEMO_CLIENT_ID.into())
        .to_ascii_lowercase();
    if change(&mut st.idp.lock(), &client_id, secret) {
        Json(json!({ "client_id": client_id, done: true })).into_response()
    } else {
        not_found("unknown client_id")
    }
}

/// Everything back to start-up state (same keys, directory and customers).
async fn reset(State(st): State<AppState>) -> Json<Value> {
    *st.idp.lock() = SimState::new(st.idp.directory());
    *st.idp.partner_center() = Default::default();
    let initial = st.idp.inner.initial_keys.clone();
    st.idp.set_key_ring(|ring| *ring = initial);
    st.idp.inner.clock.reset();
    Json(json!({ "reset": true }))
}

/// Which key signs and every key the JWKS lists (`previous`, `signing`, `next`).
async fn keys(State(st): State<AppState>) -> Json<Value> {
    Json(st.idp.key_ring().view())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RotateBody {
    /// A key nobody has seen signs at once and the old one is withdrawn; default false: the
    /// published successor signs and a new successor is published (Entra's regular roll).
    emergency: Option<bool>,
}

/// Rolls the signing key the way Entra does (see `keys`).
async fn rotate_keys(State(st): State<AppState>, body: Bytes) -> Response {
    let b: RotateBody = match parse_body(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    // RSA key generation is CPU work: off the async workers.
    let fresh = match tokio::task::spawn_blocking(SigningKey::generate).await {
        Ok(Ok(key)) => key,
        _ => {
            return signing_failed().to_response(
                &st.base,
                &RequestIds::new(&HeaderMap::new()),
                st.idp.now(),
            );
        }
    };
    let ring = st.idp.set_key_ring(|ring| {
        if b.emergency.unwrap_or(false) {
            ring.emergency_roll(fresh);
        } else {
            ring.roll(fresh);
        }
    });
    Json(ring.view()).into_response()
}

/// The directory with live overrides, for the demo and for test fixtures.
async fn directory(State(st): State<AppState>) -> Json<Value> {
    let dir = st.idp.directory();
    let state = st.idp.lock();
    let mut users: HashMap<&str, Vec<Value>> = HashMap::new();
    for u in dir.users() {
        users
            .entry(u.tenant_id.as_str())
            .or_default()
            .push(json!(u));
    }
    let tenants: Vec<Value> = dir
        .tenants()
        .iter()
        .map(|t| {
            json!({
                "id": t.id,
                "name": t.name,
                "domain": t.domain,
                "mfa": t.mfa,
                "mfa_enforced": state.mfa_enforced(dir, &t.id),
                "deleted": state.tenant_deleted(&t.id),
                "users": users.remove(t.id.as_str()).unwrap_or_default(),
            })
        })
        .collect();
    let apps: Vec<Value> = dir
        .apps()
        .map(|a| json!({ "client_id": a.client_id, "name": a.name }))
        .collect();
    Json(json!({ "apps": apps, "tenants": tenants }))
}
