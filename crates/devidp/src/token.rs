//! The token endpoint (`/{tenant}/oauth2/v2.0/token` and v1 `/{tenant}/oauth2/token`).
//!
//! Order of checks follows Entra: injected faults, client authentication
//! (`client_auth`: a secret or a certificate's client assertion), tenant, then
//! the grant. All grant bookkeeping happens in one short critical
//! section (`SimState::redeem_*`); signing runs after the lock is released.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::errors::{self, EntraError, RequestIds, json_string, no_store};
use super::grants::{CodeRedemption, Fault, FaultBody, GRAPH, Issued, RefreshRedemption, Scopes};
use super::tokens::{
    TOKEN_LIFETIME_SECS, access_token_claims, id_token_claims, id_token_v1_claims,
    new_refresh_token,
};
use super::{AppState, Params, client_auth};

pub async fn token_v2(
    State(st): State<AppState>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    token(st, tenant, headers, body, false).await
}

pub async fn token_v1(
    State(st): State<AppState>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    token(st, tenant, headers, body, true).await
}

/// Entra answers a GET on the token endpoint with AADSTS900561.
pub async fn token_get(State(st): State<AppState>, headers: HeaderMap) -> Response {
    let e = errors::post_only("GET");
    st.idp.lock().count_error(e.code);
    e.to_response(&st.base, &RequestIds::new(&headers), st.idp.now())
}

async fn token(
    st: AppState,
    tenant: String,
    headers: HeaderMap,
    body: Bytes,
    v1: bool,
) -> Response {
    let ids = RequestIds::new(&headers);
    let params = Params::parse(&body);
    let grant_type = params.get("grant_type").unwrap_or("").to_string();
    let fault = st.idp.lock().begin_token_call(
        st.idp.directory(),
        &grant_type,
        &tenant,
        params.get("refresh_token"),
    );
    let (before, after) = match fault {
        Some(f) if f.after_grant => (None, Some(f)),
        f => (f, None),
    };
    let base_latency = st.idp.inner.opts.token_latency_ms;
    if let Some(resp) = apply_fault(&st, before, base_latency, &ids).await {
        return resp;
    }
    // Signing is CPU work (RSA): run it off the async workers so that timers and other
    // connections are not held up behind it.
    let worker = st.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        process(&worker, &tenant, &params, &headers, &grant_type, v1)
    })
    .await;
    let outcome = outcome.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    let resp = match outcome {
        Ok(resp) => resp,
        Err(e) => {
            st.idp.lock().count_error(e.code);
            e.to_response(&st.base, &ids, st.idp.now())
        }
    };
    // An `after_grant` fault: whatever was issued is already recorded (a refresh token spent),
    // and the answer is late or lost.
    apply_fault(&st, after, 0, &ids).await.unwrap_or(resp)
}

/// Waits `base_latency` (`--latency-ms`) plus the fault's, then answers with the fault unless
/// it only delays a real answer (a 200 fault with Entra's body).
async fn apply_fault(
    st: &AppState,
    fault: Option<Fault>,
    base_latency: u64,
    ids: &RequestIds,
) -> Option<Response> {
    let latency = base_latency + fault.as_ref().map_or(0, |f| f.latency_ms);
    if latency > 0 {
        // A timer, not a blocked thread: other calls proceed meanwhile.
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    let fault = fault.filter(|f| !f.status.is_success() || f.body != FaultBody::Entra)?;
    Some(fault_response(st, fault, ids))
}

fn process(
    st: &AppState,
    tenant_raw: &str,
    params: &Params,
    headers: &HeaderMap,
    grant_type: &str,
    v1: bool,
) -> Result<Response, EntraError> {
    let idp = &st.idp;
    let dir = idp.directory();
    let path = idp.path_tenant(tenant_raw);
    let presented = client_auth::presented(params, headers)?;
    let label = path.as_ref().map_or(tenant_raw, |p| p.label()).to_string();
    // A client assertion must be addressed to the endpoint that receives it.
    let endpoint = format!(
        "{}/{tenant_raw}/oauth2/{}token",
        st.base,
        if v1 { "" } else { "v2.0/" }
    );
    let app = client_auth::authenticate(idp, dir, &presented, &label, &endpoint)?;
    let path = path?;
    let path_tenant = path.id();
    let scope = params.get("scope").map(Scopes::parse);
    let resource = params.get("resource").map(str::to_string);
    let new_rt = new_refresh_token();
    let now = idp.now();
    let issued = match grant_type {
        "authorization_code" => {
            let code = params
                .get("code")
                .ok_or_else(|| errors::missing_parameter("code"))?;
            let req = CodeRedemption {
                code,
                app,
                redirect_uri: params.get("redirect_uri"),
                code_verifier: params.get("code_verifier"),
                path_tenant,
                scope,
                resource: if v1 { resource } else { None },
                v1,
            };
            idp.lock().redeem_code(dir, req, new_rt, now)?
        }
        "refresh_token" => {
            let refresh_token = params
                .get("refresh_token")
                .ok_or_else(|| errors::missing_parameter("refresh_token"))?;
            if !v1 && scope.is_none() {
                return Err(errors::missing_parameter("scope"));
            }
            let req = RefreshRedemption {
                refresh_token,
                app,
                path_tenant,
                scope,
                resource: if v1 { resource } else { None },
                strict_rotation: idp.inner.opts.strict_rotation,
                rotation_grace: time::Duration::seconds(idp.inner.opts.rotation_grace_secs as i64),
                v1,
            };
            idp.lock().redeem_refresh(dir, req, new_rt, now)?
        }
        "" => return Err(errors::missing_parameter("grant_type")),
        other => return Err(errors::unsupported_grant_type(other)),
    };
    respond(st, issued, v1, now)
}

fn respond(
    st: &AppState,
    issued: Issued,
    v1: bool,
    now: time::OffsetDateTime,
) -> Result<Response, EntraError> {
    let body = token_body(st, issued, v1, true, now)?;
    st.idp
        .lock()
        .record_signed(body["access_token"].as_str(), body["id_token"].as_str());
    Ok(json_ok(&body))
}

/// A 200 JSON answer with the token endpoint's headers.
pub fn json_ok(body: &Value) -> Response {
    let mut resp = (StatusCode::OK, json_string(body)).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    no_store(h);
    resp
}

/// What Entra answers when it cannot sign a token.
pub fn signing_failed() -> EntraError {
    EntraError::new(
        50000,
        "There was an error issuing a token or an issue with our sign-in service.",
    )
}

/// Entra's JSON for a successful redemption, with its tokens signed. Without
/// `jwts` (`/_sim/tokens` with `"sign": false`) the access and id tokens are
/// left out, saving the RS256 signatures that dominate the cost of seeding.
pub fn token_body(
    st: &AppState,
    issued: Issued,
    v1: bool,
    jwts: bool,
    now: time::OffsetDateTime,
) -> Result<Value, EntraError> {
    let key = st.idp.signing_key();
    let sign_failed = |_| signing_failed();
    let scp = issued.permissions.join(" ");
    let access_token = if jwts {
        let claims = access_token_claims(&st.base, &issued.subject, &issued.resource, &scp, now);
        Some(key.sign(&claims).map_err(sign_failed)?)
    } else {
        None
    };
    let id_token = match &issued.id_token {
        _ if !jwts => None,
        Some(req) if v1 => Some(
            key.sign(&id_token_v1_claims(
                &st.base,
                &issued.subject,
                req.nonce.as_deref(),
                now,
            ))
            .map_err(sign_failed)?,
        ),
        Some(req) => Some(
            key.sign(&id_token_claims(
                &st.base,
                &issued.subject,
                req.nonce.as_deref(),
                req.email,
                now,
            ))
            .map_err(sign_failed)?,
        ),
        None => None,
    };
    let mut body = if v1 {
        // Entra's v1 endpoint sends numbers as strings and names the resource.
        let exp = now.unix_timestamp() + TOKEN_LIFETIME_SECS;
        json!({
            "token_type": "Bearer",
            "scope": scp,
            "expires_in": TOKEN_LIFETIME_SECS.to_string(),
            "ext_expires_in": TOKEN_LIFETIME_SECS.to_string(),
            "expires_on": exp.to_string(),
            "not_before": now.unix_timestamp().to_string(),
            "resource": issued.resource,
        })
    } else {
        // v2 qualifies scopes with the resource, except Graph's, as Entra does.
        let scope = issued
            .permissions
            .iter()
            .map(|p| {
                if issued.resource == GRAPH {
                    p.clone()
                } else {
                    format!("{}/{p}", issued.resource)
                }
            })
            .collect::<Vec<_>>()
            .join(" ");
        json!({
            "token_type": "Bearer",
            "scope": scope,
            "expires_in": TOKEN_LIFETIME_SECS,
            "ext_expires_in": TOKEN_LIFETIME_SECS,
        })
    };
    if let Some(at) = access_token {
        body["access_token"] = json!(at);
    }
    if let Some(rt) = issued.refresh_token {
        body["refresh_token"] = json!(rt);
    }
    if let Some(id) = id_token {
        body["id_token"] = json!(id);
    }
    Ok(body)
}

fn fault_response(st: &AppState, fault: Fault, ids: &RequestIds) -> Response {
    let mut resp = match fault.body {
        FaultBody::Entra => {
            let e = fault
                .error
                .unwrap_or_else(|| errors::fault_error(fault.status))
                .with_status(fault.status);
            st.idp.lock().count_error(e.code);
            e.to_response(&st.base, ids, st.idp.now())
        }
        FaultBody::Malformed => (
            fault.status,
            [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
            // Truncated mid-string, like a response cut by a proxy.
            "{\"token_type\":\"Bearer\",\"scope\":\"https://api.partnercenter.microsoft.com/user_imp",
        )
            .into_response(),
        FaultBody::Html => (
            fault.status,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            "<!DOCTYPE html><html><head><title>Service Unavailable</title></head><body>\
             <h2>Service Unavailable</h2><hr><p>HTTP Error 503. The service is unavailable.</p>\
             </body></html>",
        )
            .into_response(),
        FaultBody::Empty => fault.status.into_response(),
    };
    if let Some(secs) = fault.retry_after {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}
