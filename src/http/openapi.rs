//! The OpenAPI 3.1 document of the integrations API, served at `GET /api/openapi.json`.
//!
//! Paths, parameters, bodies and success responses come from the `#[utoipa::path]`
//! attributes on the handlers in [`super::api`], through the same `OpenApiRouter` that
//! builds the routes, so the document cannot list a route the router lacks or miss one it
//! has. The error responses of each operation come from [`super::problem_docs`].

use std::sync::LazyLock;

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use utoipa::openapi::OpenApi as Document;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::AppState;
use super::problem::Problem;

/// Where the document is served.
pub const PATH: &str = "/api/openapi.json";

struct BasicAuth;

impl Modify for BasicAuth {
    fn modify(&self, openapi: &mut Document) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "basic",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Basic)
                    .description(Some(
                        "HTTP Basic with `client_id:client_secret` (RFC 6749 §2.3.1), from `samvault client create`",
                    ))
                    .build(),
            ),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "samvault integrations API",
        description = "Access tokens for Microsoft partner tenants whose admins consented to the CPV app and for their customer tenants, and the partners' and customers' status. Errors are `application/problem+json` (RFC 9457) with a stable `code`.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    components(schemas(Problem)),
    modifiers(&BasicAuth),
    tags(
        (name = "tokens", description = "Access tokens for partner tenants"),
        (name = "partners", description = "Partners this client may use: status and expiry horizon, never token material"),
        (name = "customers", description = "The partners' customer tenants: the CPV app's status there, and access tokens in them"),
    )
)]
struct ApiDoc;

/// The whole document: the handlers' operations plus the shared parts above.
pub fn document() -> Document {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    let (_, operations) = super::api::documented_router().split_for_parts();
    doc.merge(operations);
    doc
}

static DOCUMENT: LazyLock<String> = LazyLock::new(|| {
    document()
        .to_pretty_json()
        .expect("the OpenAPI document serialises")
});

pub fn router() -> Router<AppState> {
    Router::new().route(PATH, get(serve))
}

async fn serve() -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        DOCUMENT.as_str(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::problem_docs::PROBLEM_CODES;
    use super::*;

    #[test]
    fn every_operation_documents_its_problems_and_the_document_is_3_1() {
        let doc = serde_json::to_value(document()).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        for (path, method) in [
            ("/api/v1/partners/{tenant_id}/token", "post"),
            ("/api/v1/partners", "get"),
            ("/api/v1/partners/{tenant_id}", "get"),
            ("/api/v1/partners/{tenant_id}/customers", "get"),
            (
                "/api/v1/partners/{tenant_id}/customers/{customer_tenant_id}/token",
                "post",
            ),
        ] {
            let op = &doc["paths"][path][method];
            assert!(op["responses"]["200"].is_object(), "{path}");
            assert!(op["responses"]["401"].is_object(), "{path}");
            assert_eq!(op["security"][0]["basic"], json!([]), "{path}");
        }
        let text = doc.to_string();
        for (_, code, _) in PROBLEM_CODES {
            assert!(text.contains(&format!("\"{code}\"")), "{code}");
        }
    }
}
