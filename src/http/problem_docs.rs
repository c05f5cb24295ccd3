//! The problem responses each API operation documents: one table of problem codes
//! ([`PROBLEM_CODES`]) and, per operation, the `IntoResponses` that narrows the `Problem`
//! schema's `code` to the codes each status can carry. The handlers in [`super::api`] name
//! these in their `#[utoipa::path]`; [`super::openapi`] assembles the document.

use std::collections::BTreeMap;

use serde_json::json;
use utoipa::openapi::example::ExampleBuilder;
use utoipa::openapi::extensions::Extensions;
use utoipa::openapi::header::Header;
use utoipa::openapi::response::{Response as ApiResponse, ResponseBuilder};
use utoipa::openapi::{AllOfBuilder, ContentBuilder, ObjectBuilder, Ref, RefOr, Type};
use utoipa::{IntoResponses, ToSchema};

use super::problem::Problem;

/// Every problem code the integrations API answers with: status, code, when.
pub const PROBLEM_CODES: &[(u16, &str, &str)] = &[
    (
        400,
        "invalid_request",
        "malformed or unknown body, missing or bad `purpose`, a resource this samvault does not serve, a tenant id that is not a GUID, or bad query parameters",
    ),
    (
        401,
        "invalid_client",
        "missing or bad HTTP Basic credentials, or a revoked client or secret",
    ),
    (
        403,
        "permission_denied",
        "the client lacks the permission (`tokens:issue`, `partners:read` or `customers:issue`)",
    ),
    (
        403,
        "resource_not_allowed",
        "the client is not scoped for this resource",
    ),
    (
        403,
        "partner_not_allowed",
        "the client is not scoped for this partner",
    ),
    (
        404,
        "partner_not_found",
        "no partner with this tenant id has consented",
    ),
    (
        404,
        "customer_not_found",
        "not a known customer of this partner, or one that is `gone` or `removed` (`detail` names the status)",
    ),
    (
        409,
        "reconsent_required",
        "the partner's grant is expired, revoked or needs MFA; `detail` names the Entra code",
    ),
    (
        409,
        "customer_consent_required",
        "the CPV app is not consented in the customer tenant for this resource (the partner stays healthy); `detail` names the Entra code",
    ),
    (
        409,
        "customer_access_denied",
        "the partner's users have no delegated access to the customer tenant (AADSTS50020), or its MFA or Conditional Access policy refused them",
    ),
    (
        413,
        "body_too_large",
        "the request body is larger than 16 KiB",
    ),
    (
        422,
        "resource_not_consented",
        "the partner never consented to this resource (the partner stays healthy)",
    ),
    (
        429,
        "rate_limited",
        "the client's request rate limit is exceeded; wait `Retry-After` seconds",
    ),
    (
        500,
        "internal_error",
        "a stored grant could not be opened; logged for operators",
    ),
    (
        502,
        "idp_error",
        "Entra ID answered with an unexpected error; `detail` has the AADSTS code, never a token",
    ),
    (
        503,
        "idp_unavailable",
        "Entra ID is down or throttling; retry after `Retry-After` seconds",
    ),
    (
        503,
        "app_credentials_invalid",
        "Entra ID rejects the CPV app's own credentials; operators are alerted",
    ),
    (
        503,
        "key_provider_unavailable",
        "the key provider is unreachable; retry after `Retry-After` seconds",
    ),
    (
        503,
        "storage_unavailable",
        "the database is unreachable; retry after `Retry-After` seconds",
    ),
];

/// The error responses of `POST /api/v1/partners/{tenant_id}/token`.
pub struct TokenProblems;

impl IntoResponses for TokenProblems {
    fn responses() -> BTreeMap<String, RefOr<ApiResponse>> {
        problem_responses(&[
            "invalid_request",
            "invalid_client",
            "permission_denied",
            "resource_not_allowed",
            "partner_not_allowed",
            "partner_not_found",
            "reconsent_required",
            "body_too_large",
            "resource_not_consented",
            "rate_limited",
            "internal_error",
            "idp_error",
            "idp_unavailable",
            "app_credentials_invalid",
            "key_provider_unavailable",
            "storage_unavailable",
        ])
    }
}

/// The error responses of `POST /api/v1/partners/{tenant_id}/customers/{customer_tenant_id}/token`.
pub struct CustomerTokenProblems;

impl IntoResponses for CustomerTokenProblems {
    fn responses() -> BTreeMap<String, RefOr<ApiResponse>> {
        problem_responses(&[
            "invalid_request",
            "invalid_client",
            "permission_denied",
            "resource_not_allowed",
            "partner_not_allowed",
            "partner_not_found",
            "customer_not_found",
            "reconsent_required",
            "customer_consent_required",
            "customer_access_denied",
            "body_too_large",
            "resource_not_consented",
            "rate_limited",
            "internal_error",
            "idp_error",
            "idp_unavailable",
            "app_credentials_invalid",
            "key_provider_unavailable",
            "storage_unavailable",
        ])
    }
}

/// The error responses of `GET /api/v1/partners/{tenant_id}/customers`.
pub struct CustomerProblems;

impl IntoResponses for CustomerProblems {
    fn responses() -> BTreeMap<String, RefOr<ApiResponse>> {
        problem_responses(&[
            "invalid_request",
            "invalid_client",
            "permission_denied",
            "partner_not_allowed",
            "partner_not_found",
            "rate_limited",
            "storage_unavailable",
        ])
    }
}

/// The error responses of `GET /api/v1/partners`.
pub struct PartnersProblems;

impl IntoResponses for PartnersProblems {
    fn responses() -> BTreeMap<String, RefOr<ApiResponse>> {
        problem_responses(&[
            "invalid_request",
            "invalid_client",
            "permission_denied",
            "rate_limited",
            "storage_unavailable",
        ])
    }
}

/// The error responses of `GET /api/v1/partners/{tenant_id}`.
pub struct PartnerProblems;

impl IntoResponses for PartnerProblems {
    fn responses() -> BTreeMap<String, RefOr<ApiResponse>> {
        problem_responses(&[
            "invalid_request",
            "invalid_client",
            "permission_denied",
            "partner_not_allowed",
            "partner_not_found",
            "rate_limited",
            "storage_unavailable",
        ])
    }
}

/// A partner's status (REFERENCE §4 "Classification"), as the API reports it.
#[derive(serde::Serialize, ToSchema)]
#[schema(as = PartnerStatus)]
#[allow(dead_code)] // documentation only: the API serialises `PartnerStatus::as_str`.
#[serde(rename_all = "snake_case")]
pub enum PartnerStatusSchema {
    Active,
    AtRisk,
    ReconsentRequired,
    Revoked,
}

/// Where the CPV app stands in a customer tenant (REFERENCE §6), as the API reports it.
#[derive(serde::Serialize, ToSchema)]
#[schema(as = CustomerStatus)]
#[allow(dead_code)] // documentation only: the API serialises `CustomerStatus::as_str`.
#[serde(rename_all = "snake_case")]
pub enum CustomerStatusSchema {
    /// Listed by Partner Center; the app not consented there (yet, or any more).
    Unconsented,
    /// The app is consented there and tokens are issued.
    Consented,
    /// Partner Center refused or failed the consent; retried with backoff.
    ConsentFailed,
    /// The partner has no delegated access there (AADSTS50020).
    AccessDenied,
    /// The CPV removed the app there through samvault.
    Removed,
    /// No longer the partner's customer.
    Gone,
}

/// One response per status among `codes`, each a `Problem` whose `code` is narrowed to
/// those codes, with an example per code and the headers problems carry.
fn problem_responses(codes: &[&str]) -> BTreeMap<String, RefOr<ApiResponse>> {
    let mut by_status: BTreeMap<u16, Vec<(&str, &str)>> = BTreeMap::new();
    for code in codes {
        let (status, code, when) = PROBLEM_CODES
            .iter()
            .find(|(_, c, _)| c == code)
            .unwrap_or_else(|| panic!("{code} is not in PROBLEM_CODES"));
        by_status.entry(*status).or_default().push((code, when));
    }
    by_status
        .into_iter()
        .map(|(status, entries)| {
            (
                status.to_string(),
                problem_response(status, &entries).into(),
            )
        })
        .collect()
}

fn problem_response(status: u16, entries: &[(&str, &str)]) -> ApiResponse {
    let reason = axum::http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error");
    let narrowed = ObjectBuilder::new()
        .property(
            "status",
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .enum_values(Some([status])),
        )
        .property(
            "code",
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(entries.iter().map(|(code, _)| *code))),
        );
    let schema = AllOfBuilder::new()
        .item(Ref::from_schema_name(Problem::name()))
        .item(narrowed);
    let examples = entries.iter().map(|(code, when)| {
        (
            code.to_string(),
            ExampleBuilder::new()
                .summary(when.to_string())
                .value(Some(json!({
                    "type": format!("https://samvault.dev/problems/{code}"),
                    "title": reason,
                    "status": status,
                    "code": code,
                    "detail": when,
                })))
                .build(),
        )
    });
    let description = entries
        .iter()
        .map(|(code, when)| format!("`{code}`: {when}"))
        .collect::<Vec<_>>()
        .join("; ");
    let mut response = ResponseBuilder::new()
        .description(format!("{reason}. {description}."))
        .content(
            "application/problem+json",
            ContentBuilder::new()
                .schema(Some(schema))
                .examples_from_iter(examples)
                .build(),
        )
        .header("Cache-Control", string_header("`no-store`", true));
    if status == 401 {
        response = response.header(
            "WWW-Authenticate",
            string_header("`Basic realm=\"samvault\"`", true),
        );
    }
    let waits = entries.iter().any(|(code, _)| {
        matches!(
            *code,
            "rate_limited" | "idp_unavailable" | "key_provider_unavailable" | "storage_unavailable"
        )
    });
    if waits {
        let always = entries
            .iter()
            .all(|(code, _)| *code != "app_credentials_invalid");
        let mut retry_after = Header::new(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(1)),
        );
        retry_after.description = Some("Seconds to wait before retrying".into());
        retry_after.extensions = required(always);
        response = response.header("Retry-After", retry_after);
    }
    response.build()
}

fn string_header(description: &str, always: bool) -> Header {
    let mut header = Header::default();
    header.description = Some(description.into());
    header.extensions = required(always);
    header
}

/// OpenAPI's Header Object has `required`, which utoipa's `Header` lacks: its flattened
/// extension map writes the field as it is.
fn required(always: bool) -> Option<Extensions> {
    always.then(|| Extensions::from_iter([("required", true)]))
}
