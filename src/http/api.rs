//! The integrations API (SPEC §3.2): JSON over HTTP Basic client authentication.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine;
use secrecy::ExposeSecret;
use serde::Deserialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::AppState;
use super::problem::Problem;
use crate::broker::BrokerError;
use crate::domain::{Purpose, Resource, TenantId};
use crate::storage::clients::{self, Client, Permission};
use crate::storage::{audit, now};

pub fn router() -> Router<AppState> {
    Router::new().route("/api/v1/partners/{tenant_id}/token", post(issue_token))
}

/// Request body of the token endpoint. Unknown fields are refused so a typo is an error.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenRequest {
    resource: String,
    purpose: Option<String>,
}

#[derive(serde::Serialize)]
struct TokenResponse<'a> {
    access_token: &'a str,
    token_type: &'static str,
    expires_in: i64,
    expires_at: String,
    resource: &'a str,
    tenant_id: &'a str,
    mfa: bool,
    cached: bool,
}

/// HTTP Basic `client_id:client_secret` (RFC 6749 §2.3.1: both form-urlencoded).
pub(super) async fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<Client, Problem> {
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(Problem::invalid_client)?;
    let encoded = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))
        .ok_or_else(Problem::invalid_client)?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|_| Problem::invalid_client())?;
    let decoded =
        zeroize::Zeroizing::new(String::from_utf8(decoded).map_err(|_| Problem::invalid_client())?);
    let (id, secret) = decoded
        .split_once(':')
        .ok_or_else(Problem::invalid_client)?;
    let decode = |s: &str| {
        url::form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
    };
    let id = decode(id).ok_or_else(Problem::invalid_client)?;
    let secret = zeroize::Zeroizing::new(decode(secret).ok_or_else(Problem::invalid_client)?);
    match clients::authenticate(&state.db, &id, &secret).await {
        Ok(Some(client)) => Ok(client),
        Ok(None) => Err(Problem::invalid_client()),
        Err(e) => {
            tracing::error!(error = %e, "client authentication failed on storage");
            Err(Problem::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "storage_unavailable",
                "the database is unavailable; retry later",
            ))
        }
    }
}

fn forbidden(code: &'static str, detail: &str) -> Problem {
    Problem::new(axum::http::StatusCode::FORBIDDEN, code, detail)
}

async fn issue_token(
    State(state): State<AppState>,
    Path(tenant_id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, Problem> {
    let client = authenticate(&state, &headers).await?;
    let request: TokenRequest = serde_json::from_slice(&body).map_err(|e| {
        Problem::invalid_request(format!(
            "body must be JSON {{\"resource\", \"purpose\"}}: {}",
            json_error(&e)
        ))
    })?;
    let purpose = Purpose::parse(request.purpose.as_deref().unwrap_or(""))
        .map_err(|e| Problem::invalid_request(e.to_string()))?;
    let resource = Resource::parse(&request.resource)
        .ok()
        .filter(|r| state.config.resources.contains(r))
        .ok_or_else(|| {
            Problem::invalid_request("resource is not one of the audiences this samvault serves")
        })?;
    let tenant =
        TenantId::parse(&tenant_id).map_err(|e| Problem::invalid_request(e.to_string()))?;
    if !client.may(Permission::TokensIssue) {
        return Err(forbidden(
            "permission_denied",
            "this client may not obtain access tokens (tokens:issue)",
        ));
    }
    if !client.may_use_resource(&resource) {
        return Err(forbidden(
            "resource_not_allowed",
            "this client is not allowed this resource",
        ));
    }
    if !client.may_use_partner(&tenant) {
        return Err(forbidden(
            "partner_not_allowed",
            "this client is not allowed this partner",
        ));
    }
    let outcome = state.broker.access_token(&tenant, &resource).await;
    let outcome_label = outcome
        .as_ref()
        .map_or_else(BrokerError::code, |_| "issued");
    let cached = outcome.as_ref().is_ok_and(|t| t.cached);
    crate::metrics::record_token_request(outcome_label, cached);
    tracing::info!(
        client.id = %client.client_id, tenant.id = %tenant, %resource, purpose = purpose.as_str(),
        outcome = outcome_label, cached, "token request"
    );
    if let Ok(token) = &outcome
        && !token.cached
    {
        // Exchanges that reached Entra are audited at once; cached hits go to the request log.
        let detail = serde_json::json!({
            "client_id": client.client_id, "resource": resource.as_str(), "purpose": purpose.as_str(), "mfa": token.mfa, "cached": false,
        });
        if let Err(e) = audit::append(
            &state.db,
            &format!("client:{}", client.client_id),
            "token.exchange",
            Some(tenant.as_str()),
            detail,
            now(),
        )
        .await
        {
            tracing::error!(error = %e, "audit append failed");
        }
    }
    let token = outcome?;
    let expires_at = OffsetDateTime::from_unix_timestamp(token.expires_at)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default();
    let body = TokenResponse {
        access_token: token.access_token.expose_secret(),
        token_type: "Bearer",
        expires_in: (token.expires_at - now()).max(0),
        expires_at,
        resource: resource.as_str(),
        tenant_id: tenant.as_str(),
        mfa: token.mfa,
        cached: token.cached,
    };
    let mut response = Json(body).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
        .headers_mut()
        .insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    Ok(response)
}

/// A JSON error without echoing the input (it may hold a secret pasted by mistake).
fn json_error(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    match e.classify() {
        Category::Data => {
            let text = e.to_string();
            // serde's data errors name fields and types, never values.
            text.split(" at line")
                .next()
                .unwrap_or("invalid field")
                .to_string()
        }
        Category::Syntax | Category::Eof => "not valid JSON".into(),
        Category::Io => "unreadable body".into(),
    }
}
