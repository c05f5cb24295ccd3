//! The customer routes of the integrations API (REFERENCE §6): a partner's customers with their
//! status, and access tokens in a customer tenant. The work is in
//! [`crate::customers::token`]; these handlers check the client and record the request.

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;

use super::super::problem_docs::{CustomerProblems, CustomerStatusSchema, CustomerTokenProblems};
use super::{
    Asked, AuthenticatedClient, Problem, READ_PERMISSION, TokenRequest, TokenResponse,
    may_use_partner, may_use_resource, parse_page, parse_tenant, parse_token_request, require,
    storage_problem, token_response,
};
use crate::customers::token::CustomerTokenError;
use crate::domain::TenantId;
use crate::http::AppState;
use crate::storage::clients::Permission;
use crate::storage::customers::{self, CustomerRow};
use crate::storage::{customer_tokens, partners, rfc3339};

/// An access token for one customer tenant of a partner: the partner's token answer and
/// the customer tenant it is for.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(super) struct CustomerTokenResponse<'a> {
    #[serde(flatten)]
    pub token: TokenResponse<'a>,
    /// The customer tenant the token is for (its `tid` claim); `tenant_id` is the partner
    /// whose grant was redeemed.
    #[schema(value_type = String, format = "uuid", example = "7b1e0c3a-5d2f-4c8e-9a6b-00000000c001")]
    pub customer_tenant_id: &'a str,
}

/// Obtain an access token for a customer tenant of a partner.
///
/// Redeems the partner's grant at the customer tenant's authority for `resource`, or serves
/// a cached token still valid for at least five minutes. Needs permission `customers:issue`
/// (never granted by default); a client scoped to partners may use their customers. Every
/// request is recorded with its `purpose` and the customer tenant.
#[utoipa::path(
    post,
    path = "/api/v1/partners/{tenant_id}/customers/{customer_tenant_id}/token",
    operation_id = "issue_customer_token",
    tag = "customers",
    params(
        ("tenant_id" = String, Path, format = "uuid", description = "The partner's tenant id (a GUID)"),
        ("customer_tenant_id" = String, Path, format = "uuid", description = "The customer's tenant id (a GUID)"),
    ),
    request_body(content = TokenRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "An access token for the customer tenant", body = CustomerTokenResponse,
            headers(("Cache-Control" = String, description = "`no-store`"))),
        CustomerTokenProblems
    ),
    security(("basic" = []))
)]
pub(super) async fn issue_customer_token(
    client: AuthenticatedClient,
    State(state): State<AppState>,
    Path((tenant_id, customer_id)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Result<Response, Problem> {
    let detail = "this client may not obtain customer-tenant tokens (customers:issue)";
    require(&client, Permission::CustomersIssue, detail)?;
    let tenant = parse_tenant(&tenant_id)?;
    may_use_partner(&client, &tenant)?;
    let customer = TenantId::parse(&customer_id)
        .map_err(|e| Problem::invalid_request(format!("customer tenant id: {e}")))?;
    let (resource, purpose) = parse_token_request(&body, &state.config.entra.resources)?;
    may_use_resource(&client, &resource)?;
    let outcome = state
        .customer_tokens
        .access_token(&tenant, &customer, &resource, &client.client_id)
        .await;
    let asked = Asked {
        client: &client,
        tenant: &tenant,
        customer: Some(&customer),
        resource: &resource,
        purpose: &purpose,
    };
    let label = outcome
        .as_ref()
        .map_or_else(CustomerTokenError::code, |_| "issued");
    asked.record(&state, label, outcome.as_ref().ok());
    if let Ok(token) = &outcome
        && !token.cached
    {
        asked.audit_exchange(&state, token).await;
    }
    Ok(token_response(&outcome?, &asked))
}

/// A customer of a partner, as integrations see it: where the CPV app stands there.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[schema(as = Customer)]
pub(super) struct CustomerView {
    /// The customer's tenant id.
    #[schema(format = "uuid", example = "7b1e0c3a-5d2f-4c8e-9a6b-00000000c001")]
    customer_tenant_id: String,
    /// The customer's company name in Partner Center.
    #[schema(example = "Adatum")]
    name: String,
    /// The customer tenant's domain, when Partner Center gives one.
    #[schema(required = true, example = "adatum.example")]
    domain: Option<String>,
    #[schema(value_type = CustomerStatusSchema)]
    status: &'static str,
    /// Why the customer is in this status (the Entra or Partner Center answer, what it
    /// means, what to do).
    #[schema(required = true)]
    reason: Option<String>,
    /// When the partner's customer list was last read from Partner Center (RFC 3339).
    #[schema(required = true, format = DateTime)]
    last_sync_at: Option<String>,
    /// When samvault last issued a token for this customer tenant (RFC 3339).
    #[schema(required = true, format = DateTime)]
    last_token_at: Option<String>,
    /// The grants of the CPV app's last consent pushed there (empty before any).
    grants: Vec<GrantView>,
}

/// Delegated permissions of the CPV app on one resource in a customer tenant.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[schema(as = CustomerGrant)]
pub(super) struct GrantView {
    /// The resource's application id (Microsoft Graph: `00000003-0000-0000-c000-000000000000`).
    #[schema(example = "00000003-0000-0000-c000-000000000000")]
    enterprise_application_id: String,
    #[schema(example = json!(["Directory.Read.All"]))]
    scopes: Vec<String>,
}

/// The stored grants (`appid=Scope,Scope` entries separated by `;`) as a list.
fn grants(text: Option<&str>) -> Vec<GrantView> {
    let entries = text.unwrap_or("").split(';').filter(|e| !e.is_empty());
    entries
        .map(|entry| {
            let (app, scopes) = entry.split_once('=').unwrap_or((entry, ""));
            GrantView {
                enterprise_application_id: app.to_string(),
                scopes: scopes
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect(),
            }
        })
        .collect()
}

impl CustomerView {
    fn new(row: &CustomerRow, last_sync_at: Option<i64>) -> Self {
        CustomerView {
            customer_tenant_id: row.customer_tenant_id.to_string(),
            name: row.name.clone(),
            domain: row.domain.clone(),
            status: row.status.as_str(),
            reason: row.reason.clone(),
            last_sync_at: last_sync_at.map(rfc3339),
            last_token_at: row.last_token_at.map(rfc3339),
            grants: grants(row.grants_applied.as_deref()),
        }
    }
}

/// One page of a partner's customers, ordered by tenant id.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(super) struct CustomerPage {
    customers: Vec<CustomerView>,
    /// Pass as `after` to get the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = String, format = "uuid")]
    next: Option<String>,
}

/// The query of the customer list (documentation: parsed as the partner list's).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct CustomerPageQuery {
    /// Page size (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
    /// The `next` value of the previous page: customers after this tenant id.
    #[param(value_type = Option<String>, format = "uuid")]
    after: Option<String>,
}

/// List a partner's customers.
///
/// Every customer Partner Center lists for the partner (and those it no longer lists, as
/// `gone`), with the CPV app's status there. Needs permission `partners:read`. Keyset
/// paging: pass the page's `next` as `after`.
#[utoipa::path(
    get,
    path = "/api/v1/partners/{tenant_id}/customers",
    operation_id = "list_customers",
    tag = "customers",
    params(
        ("tenant_id" = String, Path, format = "uuid", description = "The partner's tenant id (a GUID)"),
        CustomerPageQuery
    ),
    responses(
        (status = 200, description = "A page of the partner's customers", body = CustomerPage,
            headers(("Cache-Control" = String, description = "`no-store`"))),
        CustomerProblems
    ),
    security(("basic" = []))
)]
pub(super) async fn list_customers(
    client: AuthenticatedClient,
    State(state): State<AppState>,
    Path(tenant_id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<CustomerPage>, Problem> {
    require(&client, Permission::PartnersRead, READ_PERMISSION)?;
    let tenant = parse_tenant(&tenant_id)?;
    may_use_partner(&client, &tenant)?;
    let page = parse_page(query.as_deref())?;
    let db = &state.db;
    if partners::get(db, &tenant)
        .await
        .map_err(storage_problem)?
        .is_none()
    {
        let detail = "no partner with this tenant id has consented";
        return Err(Problem::new(
            StatusCode::NOT_FOUND,
            "partner_not_found",
            detail,
        ));
    }
    let rows = customers::list(db, &tenant, page.after.as_ref(), page.limit + 1)
        .await
        .map_err(storage_problem)?;
    let last_sync_at = customer_tokens::last_sync_at(db, &tenant)
        .await
        .map_err(storage_problem)?;
    let more = rows.len() as i64 > page.limit;
    let views: Vec<CustomerView> = rows
        .iter()
        .take(page.limit as usize)
        .map(|row| CustomerView::new(row, last_sync_at))
        .collect();
    let next = more
        .then(|| views.last().map(|v| v.customer_tenant_id.clone()))
        .flatten();
    Ok(Json(CustomerPage {
        customers: views,
        next,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_grants_are_listed_per_resource() {
        let stored = "00000003-0000-0000-c000-000000000000=Directory.Read.All,User.Read.All;797f4846-ba00-4fd7-ba43-dac1f8f63013=user_impersonation";
        let listed = serde_json::to_value(grants(Some(stored))).unwrap();
        assert_eq!(
            listed,
            serde_json::json!([
                { "enterprise_application_id": "00000003-0000-0000-c000-000000000000",
                  "scopes": ["Directory.Read.All", "User.Read.All"] },
                { "enterprise_application_id": "797f4846-ba00-4fd7-ba43-dac1f8f63013",
                  "scopes": ["user_impersonation"] },
            ])
        );
        assert!(grants(None).is_empty());
        assert!(grants(Some("")).is_empty());
    }
}
