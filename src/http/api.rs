//! The integrations API (SPEC §3.2): JSON over HTTP Basic client authentication.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use secrecy::ExposeSecret;
use serde::Deserialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::AppState;
use super::problem::Problem;
use crate::broker::BrokerError;
use crate::domain::{Purpose, Resource, TenantId};
use crate::storage::clients::Permission;
use crate::storage::partners::{self, Partner};
use crate::storage::requests::RequestRecord;
use crate::storage::{audit, now};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/partners/{tenant_id}/token", post(issue_token))
        .route("/api/v1/partners", get(list_partners))
        .route("/api/v1/partners/{tenant_id}", get(get_partner))
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

fn forbidden(code: &'static str, detail: &str) -> Problem {
    Problem::new(axum::http::StatusCode::FORBIDDEN, code, detail)
}

async fn issue_token(
    State(state): State<AppState>,
    Path(tenant_id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, Problem> {
    let client = state.auth.authenticate(&headers).await?;
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
    if let Err(wait) = state
        .limiter
        .check(&client.client_id, client.rate_limit_per_minute)
    {
        return Err(rate_limited(wait));
    }
    let outcome = state.broker.access_token(&tenant, &resource).await;
    let outcome_label = outcome
        .as_ref()
        .map_or_else(BrokerError::code, |_| "issued");
    let cached = outcome.as_ref().is_ok_and(|t| t.cached);
    crate::metrics::record_token_request(outcome_label, cached);
    state.request_log.record(RequestRecord {
        at: now(),
        client_id: client.client_id.clone(),
        tenant_id: tenant.to_string(),
        resource: resource.to_string(),
        purpose: purpose.as_str().to_string(),
        outcome: outcome_label.to_string(),
        cached,
        mfa: outcome.as_ref().ok().map(|t| t.mfa),
    });
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

fn rate_limited(wait: std::time::Duration) -> Problem {
    Problem::new(
        axum::http::StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        "this client's request rate limit is exceeded",
    )
    .retry_after(wait)
}

/// What integrations may know about a partner: status and horizon, never token material.
#[derive(serde::Serialize)]
struct PartnerView {
    tenant_id: String,
    name: String,
    domain: Option<String>,
    status: &'static str,
    status_code: Option<String>,
    status_reason: Option<String>,
    mfa: bool,
    consented_at: String,
    last_refresh: String,
    expiry_horizon: String,
}

impl From<&Partner> for PartnerView {
    fn from(p: &Partner) -> Self {
        let rfc3339 = |t: i64| {
            OffsetDateTime::from_unix_timestamp(t)
                .ok()
                .and_then(|t| t.format(&Rfc3339).ok())
                .unwrap_or_default()
        };
        PartnerView {
            tenant_id: p.tenant_id.to_string(),
            name: p.display_name.clone(),
            domain: p.domain.clone(),
            status: p.status.as_str(),
            status_code: p.status_code.clone(),
            status_reason: p.status_reason.clone(),
            mfa: p.mfa,
            consented_at: rfc3339(p.consented_at),
            last_refresh: rfc3339(p.last_refresh_at),
            expiry_horizon: rfc3339(p.horizon()),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PageQuery {
    limit: Option<i64>,
    after: Option<String>,
}

#[derive(serde::Serialize)]
struct PartnerPage {
    partners: Vec<PartnerView>,
    /// Pass as `after` to get the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<String>,
}

fn storage_problem(e: crate::storage::StorageError) -> Problem {
    tracing::error!(error = %e, "partner read failed on storage");
    Problem::new(
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        "storage_unavailable",
        "the database is unavailable; retry later",
    )
    .retry_after(std::time::Duration::from_secs(5))
}

async fn reader(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<std::sync::Arc<crate::storage::clients::Client>, Problem> {
    let client = state.auth.authenticate(headers).await?;
    if !client.may(Permission::PartnersRead) {
        return Err(forbidden(
            "permission_denied",
            "this client may not read partners (partners:read)",
        ));
    }
    if let Err(wait) = state
        .limiter
        .check(&client.client_id, client.rate_limit_per_minute)
    {
        return Err(rate_limited(wait));
    }
    Ok(client)
}

async fn list_partners(
    State(state): State<AppState>,
    headers: HeaderMap,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Result<Response, Problem> {
    let client = reader(&state, &headers).await?;
    let query: PageQuery =
        serde_urlencoded::from_str(query.as_deref().unwrap_or("")).map_err(|_| {
            Problem::invalid_request("query parameters are limit (1-1000) and after (a tenant id)")
        })?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(Problem::invalid_request("limit must be from 1 to 1000"));
    }
    let after = query
        .after
        .as_deref()
        .map(TenantId::parse)
        .transpose()
        .map_err(|e| Problem::invalid_request(format!("after: {e}")))?;
    let partners: Vec<Partner> = match &client.partners {
        // A scoped client sees its own short list.
        Some(allowed) => {
            let mut list = Vec::new();
            let mut allowed: Vec<&TenantId> = allowed
                .iter()
                .filter(|t| after.as_ref().is_none_or(|a| *t > a))
                .collect();
            allowed.sort();
            for tenant in allowed.into_iter().take(limit as usize + 1) {
                if let Some(p) = partners::get(&state.db, tenant)
                    .await
                    .map_err(storage_problem)?
                {
                    list.push(p);
                }
            }
            list
        }
        None => partners::page(&state.db, after.as_ref(), limit + 1)
            .await
            .map_err(storage_problem)?,
    };
    let more = partners.len() as i64 > limit;
    let views: Vec<PartnerView> = partners
        .iter()
        .take(limit as usize)
        .map(PartnerView::from)
        .collect();
    let next = more
        .then(|| views.last().map(|v| v.tenant_id.clone()))
        .flatten();
    let mut response = Json(PartnerPage {
        partners: views,
        next,
    })
    .into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

async fn get_partner(
    State(state): State<AppState>,
    Path(tenant_id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let client = reader(&state, &headers).await?;
    let tenant =
        TenantId::parse(&tenant_id).map_err(|e| Problem::invalid_request(e.to_string()))?;
    if !client.may_use_partner(&tenant) {
        return Err(forbidden(
            "partner_not_allowed",
            "this client is not allowed this partner",
        ));
    }
    let partner = partners::get(&state.db, &tenant)
        .await
        .map_err(storage_problem)?
        .ok_or_else(|| {
            Problem::new(
                axum::http::StatusCode::NOT_FOUND,
                "partner_not_found",
                "no partner with this tenant id has consented",
            )
        })?;
    let mut response = Json(PartnerView::from(&partner)).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}
