//! `application/problem+json` (RFC 9457) errors with the stable codes of the integrations API.
//! Every problem names its request (`request_id`, the response's `x-request-id`), so a caller
//! quoting it leads operators to the request's log lines.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::broker::BrokerError;
use crate::customers::token::CustomerTokenError;

/// An error (RFC 9457 problem details). `code` is stable: branch on it, not on `detail`.
#[derive(Clone, Debug, serde::Serialize, utoipa::ToSchema)]
#[schema(example = json!({
    "type": "https://samvault.dev/problems/invalid_request",
    "title": "Bad Request",
    "status": 400,
    "code": "invalid_request",
    "detail": "purpose is required",
    "request_id": "8f2c1e64-2d3b-4c5a-9e7f-0a1b2c3d4e5f"
}))]
pub struct Problem {
    /// `https://samvault.dev/problems/{code}`.
    #[serde(rename = "type")]
    #[schema(format = "uri")]
    pub kind: String,
    /// The HTTP status's reason phrase.
    #[schema(value_type = String)]
    pub title: &'static str,
    #[serde(skip)]
    pub status: StatusCode,
    /// The HTTP status code.
    #[serde(rename = "status")]
    #[schema(minimum = 400, maximum = 599)]
    pub status_code: u16,
    /// The stable error code (REFERENCE §3.2).
    #[schema(value_type = String)]
    pub code: &'static str,
    /// What went wrong, for people. Never holds a secret or a token.
    pub detail: String,
    /// The request's id, as in its `x-request-id` response header: quote it when reporting
    /// the problem.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = String, min_length = 1, max_length = 64)]
    pub request_id: Option<Box<str>>,
    #[serde(skip)]
    pub retry_after: Option<Duration>,
}

impl Problem {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            kind: format!("https://samvault.dev/problems/{code}"),
            title: status.canonical_reason().unwrap_or("Error"),
            status,
            status_code: status.as_u16(),
            code,
            detail: detail.into(),
            request_id: None,
            retry_after: None,
        }
    }

    pub fn retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    pub fn invalid_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", detail)
    }

    pub fn invalid_client() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "client authentication failed",
        )
    }

    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "an internal error occurred; it has been logged",
        )
    }
}

impl IntoResponse for Problem {
    /// The body names no request: the problem travels in the response's extensions until
    /// [`super::finish_problems`], which knows the request id, writes it in.
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(&self)).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"samvault\""),
            );
        }
        if let Some(after) = self.retry_after {
            headers.insert(
                header::RETRY_AFTER,
                HeaderValue::from(after.as_secs().max(1)),
            );
        }
        response.extensions_mut().insert(self);
        response
    }
}

impl Problem {
    /// The body of `response` (a problem's) rewritten to name `request_id`.
    pub fn name_request(response: &mut Response, request_id: &str) {
        let Some(mut problem) = response.extensions_mut().remove::<Problem>() else {
            return;
        };
        problem.request_id = Some(request_id.into());
        if let Ok(body) = serde_json::to_vec(&problem) {
            *response.body_mut() = axum::body::Body::from(body);
        }
    }
}

fn aadsts(code: Option<impl std::fmt::Display>) -> String {
    code.map(|c| format!(" (AADSTS{c})")).unwrap_or_default()
}

impl From<BrokerError> for Problem {
    fn from(error: BrokerError) -> Self {
        let code = error.code();
        match error {
            BrokerError::PartnerNotFound => Problem::new(
                StatusCode::NOT_FOUND,
                code,
                "no partner with this tenant id has consented",
            ),
            BrokerError::ReconsentRequired { code: aad } => Problem::new(
                StatusCode::CONFLICT,
                code,
                format!(
                    "the partner's grant is no longer usable{}; the partner admin must consent again",
                    aadsts(aad)
                ),
            ),
            BrokerError::ResourceNotConsented { code: aad } => Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                code,
                format!(
                    "the partner has not consented to this resource{}",
                    aadsts(aad)
                ),
            ),
            BrokerError::AppCredentialsInvalid { code: aad } => Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                code,
                format!(
                    "Entra ID rejects the CPV app's own credentials{}; operators have been alerted",
                    aadsts(aad)
                ),
            ),
            BrokerError::IdpUnavailable { retry_after } => Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                code,
                "Entra ID is unavailable or throttling; retry later",
            )
            .retry_after(retry_after.unwrap_or(Duration::from_secs(5))),
            BrokerError::IdpError { code: aad } => Problem::new(
                StatusCode::BAD_GATEWAY,
                code,
                format!("Entra ID answered with an unexpected error{}", aadsts(aad)),
            ),
            BrokerError::KeyUnavailable => Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                code,
                "the key provider is unavailable; retry later",
            )
            .retry_after(Duration::from_secs(5)),
            BrokerError::Storage(e) => {
                tracing::error!(error = %e, "storage failure during token exchange");
                Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    code,
                    "the database is unavailable; retry later",
                )
                .retry_after(Duration::from_secs(5))
            }
            BrokerError::Vault(e) => {
                tracing::error!(error = %e, "a sealed grant could not be opened");
                Problem::internal()
            }
        }
    }
}

impl From<CustomerTokenError> for Problem {
    fn from(error: CustomerTokenError) -> Self {
        let code = error.code();
        match error {
            CustomerTokenError::Partner(e) => e.into(),
            CustomerTokenError::NotFound { status } => Problem::new(
                StatusCode::NOT_FOUND,
                code,
                match status {
                    Some(status) => format!(
                        "this customer tenant is {status}: samvault no longer issues tokens for it"
                    ),
                    None => "no customer with this tenant id is known for this partner (a customer sync lists them)".into(),
                },
            ),
            CustomerTokenError::ConsentRequired { code: aad } => Problem::new(
                StatusCode::CONFLICT,
                code,
                format!(
                    "the CPV app is not consented in this customer tenant for this resource{}; consent it there through Partner Center",
                    aadsts(Some(aad))
                ),
            ),
            CustomerTokenError::AccessDenied { code: 50020 } => Problem::new(
                StatusCode::CONFLICT,
                code,
                "the partner has no delegated access to this customer tenant (AADSTS50020); the partner must restore the relationship in Partner Center",
            ),
            CustomerTokenError::AccessDenied { code: aad } => Problem::new(
                StatusCode::CONFLICT,
                code,
                format!(
                    "the customer tenant's MFA or Conditional Access policy refused the partner's user{}",
                    aadsts(Some(aad))
                ),
            ),
        }
    }
}
