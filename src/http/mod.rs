//! HTTP: the router and what every response shares. One module per audience:
//! `onboard` (partner admins, HTML), `api` (integrations, JSON), `health` (probes).

pub mod api;
pub mod client_address;
pub mod client_auth;
pub mod health;
pub mod metrics;
pub mod onboard;
pub mod openapi;
mod ops;
pub mod problem;
mod problem_docs;
pub mod request_id;
mod templates;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, header};
use axum::routing::get;
use tower::ServiceBuilder;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_sessions::cookie::SameSite;
use tower_sessions::{Expiry, SessionManagerLayer};

use crate::broker::Broker;
use crate::config::Config;
use crate::idp::IdpClient;
use crate::storage::Db;
use crate::storage::sessions::SealedSessionStore;
use crate::vault::Vault;

/// Largest request body accepted anywhere (the token API's JSON is a few hundred bytes).
pub(crate) const BODY_LIMIT: usize = 16 * 1024;

/// What every handler shares, behind one `Arc`: axum clones the state for each request, and
/// one reference count is cheaper than one per field on the token path.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

pub struct Shared {
    pub config: Arc<Config>,
    pub db: Db,
    pub vault: Vault,
    pub idp: IdpClient,
    pub broker: Broker,
    /// Access tokens in the partners' customer tenants (the customer routes of the API).
    pub customer_tokens: crate::customers::token::CustomerTokens,
    /// Events that do not come from the broker (a partner's grant changing hands).
    pub notifier: crate::notify::Notifier,
    pub auth: Arc<crate::clients::ClientAuth>,
    pub limiter: Arc<crate::clients::RateLimiter>,
    pub request_log: crate::broker::request_log::RequestLog,
    /// What the handlers record into (the token API counts its requests).
    pub metrics: Arc<crate::metrics::Metrics>,
    /// `GET /metrics`: the same counters, the database and the token it asks for.
    pub metrics_access: metrics::MetricsAccess,
    /// Dashboard sign-ins: failures per client address, failures for unknown names.
    pub sign_in: Arc<crate::ops::SignInLimits>,
    /// Customer work the dashboard asks for: sync, consent, removal.
    pub customers: crate::customers::Customers,
    /// Onboarding sign-in starts and callbacks per client address (`SAMVAULT_ONBOARD_RATE`).
    pub onboard_limit: onboard::OnboardLimit,
    /// Where sessions live, sealed under the session key (`storage::session_keys`).
    pub sessions: SealedSessionStore,
    /// The last `/readyz` check, which answers probes for a few seconds.
    pub readiness: health::Readiness,
}

pub fn router(state: AppState) -> Router {
    let secure_cookies = state.config.server.public_url.scheme() == "https";
    let sessions = SessionManagerLayer::new(state.sessions.clone())
        .with_name("samvault_session")
        .with_http_only(true)
        .with_same_site(SameSite::Lax)
        .with_secure(secure_cookies)
        .with_expiry(Expiry::OnInactivity(time::Duration::minutes(15)));
    let pages = onboard::router()
        .merge(ops::router())
        .route("/static/samvault.css", get(templates::stylesheet))
        .layer(sessions)
        .layer(SetResponseHeaderLayer::overriding(
            header::CONTENT_SECURITY_POLICY,
            content_security_policy(&state.config),
        ))
        // Pages carry CSRF tokens and consent outcomes: never cached (the stylesheet sets its own).
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        ));
    let routes = Router::new()
        .merge(pages)
        .merge(api::router())
        .merge(openapi::router())
        .merge(health::router())
        .merge(metrics::router())
        .fallback(not_found)
        .with_state(state);
    // One typed stack per `Router::layer`: axum boxes each layer call around every route and
    // clones the boxes on every request.
    let hsts = secure_cookies.then(|| HeaderValue::from_static("max-age=31536000"));
    let routes = routes.layer(
        ServiceBuilder::new()
            .layer(DefaultBodyLimit::max(BODY_LIMIT))
            .layer(SetResponseHeaderLayer::if_not_present(
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ))
            .layer(SetResponseHeaderLayer::if_not_present(
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ))
            .layer(SetResponseHeaderLayer::if_not_present(
                header::X_FRAME_OPTIONS,
                HeaderValue::from_static("DENY"),
            ))
            // Served as https (behind a TLS terminator): browsers must never come back over
            // http, where a session cookie or a consent redirect could be intercepted.
            // Subdomains are not ours to bind.
            .layer(SetResponseHeaderLayer::if_not_present(
                header::STRICT_TRANSPORT_SECURITY,
                move |_: &axum::response::Response| hsts.clone(),
            )),
    );
    request_id::layer(routes)
}

/// No script at all, styles from samvault only, no framing. `form-action` must also allow
/// the IdP, because browsers check the redirect that follows the consent form's POST.
fn content_security_policy(config: &Config) -> HeaderValue {
    let idp = config.entra.authority.origin().ascii_serialization();
    HeaderValue::from_str(&format!(
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self' {idp}; frame-ancestors 'none'; base-uri 'none'"
    ))
    .expect("an origin is a valid header value")
}

async fn not_found() -> problem::Problem {
    problem::Problem::new(
        axum::http::StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint",
    )
}
