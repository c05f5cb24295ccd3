//! The integrations API (REFERENCE §3.2): JSON over HTTP Basic client authentication.

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::value::RawValue;
use tower::ServiceBuilder;
use tower::util::MapResponseLayer;
use tower_http::set_header::SetResponseHeaderLayer;

mod customers;

use super::AppState;
use super::client_auth::AuthenticatedClient;
use super::problem::Problem;
use super::problem_docs::{PartnerProblems, PartnerStatusSchema, PartnersProblems, TokenProblems};
use crate::broker::{BrokerError, IssuedToken};
use crate::domain::{Purpose, Resource, TenantId};
use crate::storage::clients::{Client, Permission};
use crate::storage::partners::{self, Partner};
use crate::storage::requests::RequestRecord;
use crate::storage::{audit, now, rfc3339};

/// Every answer of the API, token or refusal, is for its caller only: no cache may keep it
/// (RFC 6749 §5.1 asks both headers of token responses).
pub fn router() -> Router<AppState> {
    documented_router().split_for_parts().0.layer(
        ServiceBuilder::new()
            .layer(SetResponseHeaderLayer::overriding(
                header::CACHE_CONTROL,
                HeaderValue::from_static("no-store"),
            ))
            .layer(SetResponseHeaderLayer::overriding(
                header::PRAGMA,
                HeaderValue::from_static("no-cache"),
            ))
            .layer(MapResponseLayer::new(body_too_large_as_problem)),
    )
}

/// axum answers an over-long body with a plain-text 413; the API answers with a problem.
fn body_too_large_as_problem(response: Response) -> Response {
    if response.status() != StatusCode::PAYLOAD_TOO_LARGE {
        return response;
    }
    Problem::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        format!(
            "the request body is larger than {} KiB",
            super::BODY_LIMIT / 1024
        ),
    )
    .into_response()
}

/// The API's routes with their OpenAPI operations: the paths and methods in the router and
/// in `GET /api/openapi.json` both come from the `#[utoipa::path]` attributes below.
pub fn documented_router() -> utoipa_axum::router::OpenApiRouter<AppState> {
    use utoipa_axum::routes;
    utoipa_axum::router::OpenApiRouter::new()
        .routes(routes!(issue_token))
        .routes(routes!(list_partners))
        .routes(routes!(get_partner))
        .routes(routes!(customers::list_customers))
        .routes(routes!(customers::issue_customer_token))
}

/// Request body of the token endpoint. Unknown fields are refused so a typo is an error.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct TokenRequest {
    /// The audience of the access token: one of the resources this samvault serves
    /// (`SAMVAULT_RESOURCES`; by default Partner Center, Microsoft Graph and Azure Resource
    /// Manager) and this client is allowed.
    #[schema(examples(
        "https://api.partnercenter.microsoft.com",
        "https://graph.microsoft.com",
        "https://management.azure.com"
    ))]
    resource: String,
    /// Why the token is needed; recorded in the request log. 1 to 200 characters after
    /// trimming, no control characters.
    #[schema(
        required = true,
        value_type = String,
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$",
        example = "nightly invoice sync"
    )]
    purpose: Option<String>,
}

/// The token endpoint's body: a resource among those `served` and a purpose. Every refusal
/// is a 400 `invalid_request` that never echoes the body.
pub fn parse_token_request(
    body: &[u8],
    served: &[Resource],
) -> Result<(Resource, Purpose), Problem> {
    let request: TokenRequest = serde_json::from_slice(body).map_err(|e| {
        Problem::invalid_request(format!(
            "body must be JSON {{\"resource\", \"purpose\"}}: {}",
            json_error(&e)
        ))
    })?;
    let purpose = Purpose::parse(request.purpose.as_deref().unwrap_or(""))
        .map_err(|e| Problem::invalid_request(e.to_string()))?;
    // Integrations send the configured spelling: match it before parsing a URL.
    let resource = served
        .iter()
        .find(|r| r.as_str() == request.resource)
        .cloned()
        .or_else(|| {
            Resource::parse(&request.resource)
                .ok()
                .filter(|r| served.contains(r))
        })
        .ok_or_else(|| {
            Problem::invalid_request("resource is not one of the audiences this samvault serves")
        })?;
    Ok((resource, purpose))
}

/// An access token for one partner tenant and one resource.
#[derive(serde::Serialize, utoipa::ToSchema)]
struct TokenResponse<'a> {
    /// The bearer token to send to the resource. Never log it.
    #[schema(value_type = String)]
    access_token: &'a RawValue,
    #[schema(value_type = String, pattern = "^Bearer$", example = "Bearer")]
    token_type: &'static str,
    /// Seconds until `expires_at` (0 or more).
    #[schema(minimum = 0, example = 3299)]
    expires_in: i64,
    /// When the token expires (RFC 3339).
    #[schema(format = DateTime, example = "2026-05-01T12:34:56Z")]
    expires_at: String,
    /// The resource the token is for, normalised (lower case, no trailing slash).
    #[schema(value_type = String, example = "https://api.partnercenter.microsoft.com")]
    resource: &'a str,
    /// The partner's tenant id.
    #[schema(value_type = String, format = "uuid", example = "6f3a2a5e-0c1d-4a3b-8f4e-1c2d3e4f5a01")]
    tenant_id: &'a str,
    /// Whether the partner admin's sign-in satisfied MFA (`amr` claim).
    mfa: bool,
    /// Whether the token came from samvault's cache rather than a fresh exchange.
    cached: bool,
}

fn forbidden(code: &'static str, detail: &str) -> Problem {
    Problem::new(StatusCode::FORBIDDEN, code, detail)
}

/// `Ok` when the client holds `permission`; else the 403 naming it.
fn require(client: &Client, permission: Permission, detail: &str) -> Result<(), Problem> {
    if client.may(permission) {
        Ok(())
    } else {
        Err(forbidden("permission_denied", detail))
    }
}

fn parse_tenant(tenant_id: &str) -> Result<TenantId, Problem> {
    TenantId::parse(tenant_id).map_err(|e| Problem::invalid_request(e.to_string()))
}

/// The client's scope allows this token: permission, resource and partner.
fn may_issue(client: &Client, resource: &Resource, tenant: &TenantId) -> Result<(), Problem> {
    require(
        client,
        Permission::TokensIssue,
        "this client may not obtain access tokens (tokens:issue)",
    )?;
    may_use_resource(client, resource)?;
    may_use_partner(client, tenant)
}

fn may_use_resource(client: &Client, resource: &Resource) -> Result<(), Problem> {
    if client.may_use_resource(resource) {
        Ok(())
    } else {
        Err(forbidden(
            "resource_not_allowed",
            "this client is not allowed this resource",
        ))
    }
}

/// A client's partner scope covers the partner and its customers.
fn may_use_partner(client: &Client, tenant: &TenantId) -> Result<(), Problem> {
    if client.may_use_partner(tenant) {
        Ok(())
    } else {
        Err(forbidden(
            "partner_not_allowed",
            "this client is not allowed this partner",
        ))
    }
}

/// Obtain an access token for a partner tenant.
///
/// Redeems the partner's stored grant for `resource`, or serves a cached token that is
/// still valid for at least five minutes. Every request is recorded with its `purpose`.
#[utoipa::path(
    post,
    path = "/api/v1/partners/{tenant_id}/token",
    operation_id = "issue_token",
    tag = "tokens",
    params(("tenant_id" = String, Path, format = "uuid", description = "The partner's tenant id (a GUID)")),
    request_body(content = TokenRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "An access token", body = TokenResponse,
            headers(("Cache-Control" = String, description = "`no-store`"))),
        TokenProblems
    ),
    security(("basic" = []))
)]
async fn issue_token(
    client: AuthenticatedClient,
    State(state): State<AppState>,
    Path(tenant_id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, Problem> {
    let (resource, purpose) = parse_token_request(&body, &state.config.entra.resources)?;
    let tenant = parse_tenant(&tenant_id)?;
    may_issue(&client, &resource, &tenant)?;
    let outcome = state.broker.access_token(&tenant, &resource).await;
    let asked = Asked {
        client: &client,
        tenant: &tenant,
        customer: None,
        resource: &resource,
        purpose: &purpose,
    };
    let outcome_label = outcome
        .as_ref()
        .map_or_else(BrokerError::code, |_| "issued");
    let cached = outcome.as_ref().is_ok_and(|t| t.cached);
    state.metrics.record_token_request(outcome_label, cached);
    asked.record(&state, outcome_label, outcome.as_ref().ok());
    if let Ok(token) = &outcome
        && !token.cached
    {
        asked.audit_exchange(&state, token).await;
    }
    Ok(token_response(&outcome?, &asked))
}

/// One token request as it is recorded: who asked what for which partner (or which of its
/// customers), and why.
struct Asked<'a> {
    client: &'a Client,
    tenant: &'a TenantId,
    /// The customer tenant a customer-tenant token is for.
    customer: Option<&'a TenantId>,
    resource: &'a Resource,
    purpose: &'a Purpose,
}

impl Asked<'_> {
    /// Put in the request log (written off the request path) and, unless it is a cached
    /// hit, logged: at thousands of hits a second a line each would cost a quarter of the
    /// throughput, and the metrics and the request log already count every one.
    fn record(&self, state: &AppState, outcome: &'static str, token: Option<&IssuedToken>) {
        let cached = token.is_some_and(|t| t.cached);
        state.request_log.record(RequestRecord {
            at: now(),
            client_id: self.client.client_id.as_str().into(),
            tenant_id: self.tenant.into(),
            customer_tenant_id: self.customer.map(Into::into),
            resource: self.resource.into(),
            purpose: self.purpose.into(),
            outcome: outcome.into(),
            cached,
            mfa: token.map(|t| t.mfa),
        });
        let customer = self.customer.map(TenantId::as_str);
        macro_rules! token_request {
            ($level:expr) => {
                tracing::event!(
                    $level, client.id = %self.client.client_id, tenant.id = %self.tenant,
                    customer.id = customer, resource = %self.resource,
                    purpose = self.purpose.as_str(), outcome, cached, "token request"
                )
            };
        }
        if cached {
            token_request!(tracing::Level::DEBUG);
        } else {
            token_request!(tracing::Level::INFO);
        }
    }

    /// Exchanges that reached Entra are audited at once; cached hits go to the request log.
    async fn audit_exchange(&self, state: &AppState, token: &IssuedToken) {
        let client_id = &self.client.client_id;
        let mut detail = serde_json::json!({
            "client_id": client_id, "resource": self.resource.as_str(),
            "purpose": self.purpose.as_str(), "mfa": token.mfa, "cached": false,
        });
        if let Some(customer) = self.customer {
            detail["customer_tenant_id"] = customer.as_str().into();
        }
        let actor = format!("client:{client_id}");
        let tenant = Some(self.tenant.as_str());
        if let Err(e) =
            audit::append(&state.db, &actor, "token.exchange", tenant, detail, now()).await
        {
            tracing::error!(error = %e, "audit append failed");
        }
    }
}

/// The 200 answer (no-store comes from the API router's layer): a partner's token, or a
/// customer tenant's with its `customer_tenant_id`.
fn token_response(token: &IssuedToken, asked: &Asked<'_>) -> Response {
    let access_token = token.access_token.as_json();
    let body = TokenResponse {
        access_token,
        token_type: "Bearer",
        expires_in: (token.expires_at - now()).max(0),
        expires_at: rfc3339(token.expires_at),
        resource: asked.resource.as_str(),
        tenant_id: asked.tenant.as_str(),
        mfa: token.mfa,
        cached: token.cached,
    };
    // Sized for the token, most of the body, so that it is written once.
    let mut buffer = Vec::with_capacity(access_token.get().len() + 320);
    let written = match asked.customer {
        None => serde_json::to_writer(&mut buffer, &body),
        Some(customer) => serde_json::to_writer(
            &mut buffer,
            &customers::CustomerTokenResponse {
                token: body,
                customer_tenant_id: customer.as_str(),
            },
        ),
    };
    match written {
        Ok(()) => {
            let json = HeaderValue::from_static("application/json");
            ([(header::CONTENT_TYPE, json)], buffer).into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, "token response not serialisable");
            Problem::internal().into_response()
        }
    }
}

/// A JSON error without echoing the input (it may hold a secret pasted by mistake).
fn json_error(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    match e.classify() {
        Category::Data => {
            let text = e.to_string();
            // serde names an unknown field and quotes a value of the wrong type: both are the
            // caller's text. Only missing and duplicate fields are named, and they are ours.
            if text.starts_with("missing field") || text.starts_with("duplicate field") {
                text.split(" at line").next().unwrap_or(&text).to_string()
            } else if text.starts_with("unknown field") {
                "unknown field; only \"resource\" and \"purpose\" are accepted".into()
            } else {
                "expected an object whose \"resource\" and \"purpose\" are strings".into()
            }
        }
        Category::Syntax | Category::Eof => "not valid JSON".into(),
        Category::Io => "unreadable body".into(),
    }
}

/// What integrations may know about a partner: status and horizon, never token material.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[schema(as = Partner)]
struct PartnerView {
    /// The partner's tenant id.
    #[schema(format = "uuid", example = "6f3a2a5e-0c1d-4a3b-8f4e-1c2d3e4f5a01")]
    tenant_id: String,
    /// The tenant's display name.
    #[schema(example = "Contoso")]
    name: String,
    /// The tenant's primary domain, when known.
    #[schema(required = true, example = "contoso.example")]
    domain: Option<String>,
    #[schema(value_type = PartnerStatusSchema)]
    status: &'static str,
    /// The Entra error code behind a non-active status (e.g. `AADSTS700082`).
    #[schema(required = true)]
    status_code: Option<String>,
    /// Why the partner is in this status, for people.
    #[schema(required = true)]
    status_reason: Option<String>,
    /// Whether the consenting admin's sign-in satisfied MFA.
    mfa: bool,
    /// When the partner consented (RFC 3339).
    #[schema(format = DateTime)]
    consented_at: String,
    /// When the grant was last redeemed (RFC 3339).
    #[schema(format = DateTime)]
    last_refresh: String,
    /// When the grant expires if it is not used again (RFC 3339).
    #[schema(format = DateTime)]
    expiry_horizon: String,
}

impl From<&Partner> for PartnerView {
    fn from(p: &Partner) -> Self {
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

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct PageQuery {
    /// Page size (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
    /// The `next` value of the previous page: partners after this tenant id.
    #[param(value_type = Option<String>, format = "uuid")]
    after: Option<String>,
}

/// One page of partners, ordered by tenant id.
#[derive(serde::Serialize, utoipa::ToSchema)]
struct PartnerPage {
    partners: Vec<PartnerView>,
    /// Pass as `after` to get the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = String, format = "uuid")]
    next: Option<String>,
}

fn storage_problem(e: crate::storage::StorageError) -> Problem {
    tracing::error!(error = %e, "partner read failed on storage");
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "storage_unavailable",
        "the database is unavailable; retry later",
    )
    .retry_after(std::time::Duration::from_secs(5))
}

const READ_PERMISSION: &str = "this client may not read partners (partners:read)";

/// The page asked for: `limit` partners after `after`.
struct Page {
    limit: i64,
    after: Option<TenantId>,
}

fn parse_page(query: Option<&str>) -> Result<Page, Problem> {
    let query: PageQuery = serde_urlencoded::from_str(query.unwrap_or("")).map_err(|_| {
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
    Ok(Page { limit, after })
}

/// Up to `limit + 1` partners this client may see, after `after` (one more than the page
/// tells whether there is a next page).
async fn visible_partners(
    state: &AppState,
    client: &Client,
    page: &Page,
) -> Result<Vec<Partner>, Problem> {
    let Some(allowed) = &client.partners else {
        return partners::page(&state.db, page.after.as_ref(), page.limit + 1)
            .await
            .map_err(storage_problem);
    };
    // A scoped client sees its own short list.
    let mut allowed: Vec<&TenantId> = allowed
        .iter()
        .filter(|t| page.after.as_ref().is_none_or(|a| *t > a))
        .collect();
    allowed.sort();
    let mut list = Vec::new();
    for tenant in allowed.into_iter().take(page.limit as usize + 1) {
        if let Some(p) = partners::get(&state.db, tenant)
            .await
            .map_err(storage_problem)?
        {
            list.push(p);
        }
    }
    Ok(list)
}

/// List the partners this client may use.
///
/// Status and expiry horizon of each partner, never token material. Keyset paging: pass
/// the page's `next` as `after` to get the next page.
#[utoipa::path(
    get,
    path = "/api/v1/partners",
    operation_id = "list_partners",
    tag = "partners",
    params(PageQuery),
    responses(
        (status = 200, description = "A page of partners", body = PartnerPage,
            headers(("Cache-Control" = String, description = "`no-store`"))),
        PartnersProblems
    ),
    security(("basic" = []))
)]
async fn list_partners(
    client: AuthenticatedClient,
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Json<PartnerPage>, Problem> {
    require(&client, Permission::PartnersRead, READ_PERMISSION)?;
    let page = parse_page(query.as_deref())?;
    let partners = visible_partners(&state, &client, &page).await?;
    let more = partners.len() as i64 > page.limit;
    let views: Vec<PartnerView> = partners
        .iter()
        .take(page.limit as usize)
        .map(PartnerView::from)
        .collect();
    let next = more
        .then(|| views.last().map(|v| v.tenant_id.clone()))
        .flatten();
    Ok(Json(PartnerPage {
        partners: views,
        next,
    }))
}

/// One partner this client may use.
#[utoipa::path(
    get,
    path = "/api/v1/partners/{tenant_id}",
    operation_id = "get_partner",
    tag = "partners",
    params(("tenant_id" = String, Path, format = "uuid", description = "The partner's tenant id (a GUID)")),
    responses(
        (status = 200, description = "The partner", body = PartnerView,
            headers(("Cache-Control" = String, description = "`no-store`"))),
        PartnerProblems
    ),
    security(("basic" = []))
)]
async fn get_partner(
    client: AuthenticatedClient,
    State(state): State<AppState>,
    Path(tenant_id): Path<String>,
) -> Result<Json<PartnerView>, Problem> {
    require(&client, Permission::PartnersRead, READ_PERMISSION)?;
    let tenant = parse_tenant(&tenant_id)?;
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
                StatusCode::NOT_FOUND,
                "partner_not_found",
                "no partner with this tenant id has consented",
            )
        })?;
    Ok(Json(PartnerView::from(&partner)))
}
