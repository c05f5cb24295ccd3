//! `GET /metrics` (REFERENCE §3.3): the exposition of [`crate::metrics`], behind
//! `SAMVAULT_METRICS_TOKEN` when one is set.

use std::sync::Arc;

use axum::Router;
use axum::extract::{FromRef, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use secrecy::{ExposeSecret, SecretString};
use sha2::Digest;
use subtle::ConstantTimeEq;

use super::AppState;
use crate::metrics::{self, Metrics};
use crate::storage::Db;

/// What `GET /metrics` needs: the counters, the database for the gauges, and the token it
/// asks for.
#[derive(Clone)]
pub struct MetricsAccess {
    pub db: Db,
    pub metrics: Arc<Metrics>,
    /// SHA-256 of `SAMVAULT_METRICS_TOKEN`: compared in constant time, never kept in clear.
    pub token_digest: Option<[u8; 32]>,
}

impl MetricsAccess {
    pub fn new(db: Db, metrics: Arc<Metrics>, token: Option<&SecretString>) -> Self {
        Self {
            db,
            metrics,
            token_digest: token.map(|t| sha2::Sha256::digest(t.expose_secret().as_bytes()).into()),
        }
    }

    fn allows(&self, headers: &HeaderMap) -> bool {
        let Some(expected) = &self.token_digest else {
            return true;
        };
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            // The scheme is case-insensitive (RFC 7235).
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map_or("", |(_, token)| token);
        let digest: [u8; 32] = sha2::Sha256::digest(presented.as_bytes()).into();
        !presented.is_empty() && bool::from(digest.ct_eq(expected))
    }
}

/// `GET /metrics`.
pub async fn handler(State(access): State<MetricsAccess>, headers: HeaderMap) -> Response {
    if !access.allows(&headers) {
        return (
            StatusCode::UNAUTHORIZED,
            [
                (
                    header::WWW_AUTHENTICATE,
                    "Bearer realm=\"samvault metrics\"",
                ),
                (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            ],
            "metrics need Authorization: Bearer <SAMVAULT_METRICS_TOKEN>\n",
        )
            .into_response();
    }
    match metrics::render(&access.metrics, &access.db).await {
        Ok(body) => ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], body).into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "metrics: database unavailable");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                "metrics unavailable\n",
            )
                .into_response()
        }
    }
}

/// A router serving `GET /metrics`, to merge into the application's.
pub fn router<S>() -> Router<S>
where
    MetricsAccess: FromRef<S>,
    S: Clone + Send + Sync + 'static,
{
    Router::new().route("/metrics", get(handler))
}

impl FromRef<AppState> for MetricsAccess {
    fn from_ref(state: &AppState) -> Self {
        state.metrics_access.clone()
    }
}
