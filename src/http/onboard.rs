//! Partner onboarding (REFERENCE §3.3): the consent landing page, the redirect to Entra ID and the
//! callback that turns an authorization code into a sealed refresh token ([`consent`]).
//!
//! The pending sign-in (state, nonce, PKCE verifier) lives in the browser's session, so a
//! `state` is bound to the browser that started it, used once (removed on first callback)
//! and honoured for ten minutes. Nothing is stored unless the whole callback succeeds.
//!
//! The self-service revoke ([`revoke`]) signs the partner admin in through the same pending
//! sign-in and the same callback (one redirect URI to register), with its purpose recorded.
//!
//! Handlers answer with their page or a [`PageError`]: a refusal that says what to do, or an
//! internal failure that [`log_page_errors`] logs once.

mod consent;
mod limit;
mod revoke;

pub use limit::OnboardLimit;

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use tower_sessions::Session;

use super::AppState;
use super::client_address::ClientAddress;
use super::templates::{ErrorPage, PageError, PageResult, log_page_errors};
use crate::domain::TenantId;
use crate::idp::errors::describe;
use crate::idp::{AccessClaims, ConsentRequest, IdClaims, IdpError, Outcome, TokenSet};
use crate::onboarding::random_token;
use crate::storage::now;

const CSRF_KEY: &str = "onboard.csrf";
const PENDING_KEY: &str = "onboard.pending";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/onboard/callback", get(callback_query).post(callback_form))
        .merge(consent::router())
        .merge(revoke::router())
        .route_layer(axum::middleware::from_fn(log_page_errors))
}

/// What a sign-in is for: a consent stores a refresh token; a revoke only proves who the
/// partner admin is, then purges.
#[derive(Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Purpose {
    #[default]
    Consent,
    Revoke,
}

impl Purpose {
    /// Where a person starts this flow again.
    fn page(self) -> &'static str {
        match self {
            Purpose::Consent => "/onboard",
            Purpose::Revoke => revoke::PAGE,
        }
    }

    /// What a failed step left behind, in the words of this flow.
    fn unchanged(self) -> &'static str {
        match self {
            Purpose::Consent => "Nothing was stored.",
            Purpose::Revoke => "Nothing was revoked.",
        }
    }
}

/// A sign-in that left for Entra ID and has not come back yet.
#[derive(Serialize, Deserialize)]
struct Pending {
    state: String,
    nonce: String,
    pkce_verifier: String,
    invitation_id: Option<String>,
    tenant: Option<String>,
    started_at: i64,
    /// Absent in sessions started before revoke existed: those were consents.
    #[serde(default)]
    purpose: Purpose,
}

/// An error page whose "Start again" link leads back to the start of `purpose`'s flow.
fn flow_error_page(
    purpose: Purpose,
    status: StatusCode,
    title: &str,
    message: &str,
    action: &str,
    code: Option<String>,
) -> PageError {
    let page = ErrorPage {
        title: title.into(),
        message: message.into(),
        action: action.into(),
        code,
        restart: purpose.page(),
    };
    PageError::flow(status, page)
}

/// An error page of the consent flow.
fn error_page(status: StatusCode, title: &str, message: &str, action: &str) -> PageError {
    flow_error_page(Purpose::Consent, status, title, message, action, None)
}

/// The page for an internal failure (session store, database, key provider); the cause is
/// for the log.
fn unavailable(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> PageError {
    error_page(
        StatusCode::SERVICE_UNAVAILABLE,
        "Temporarily unavailable",
        "samvault could not complete this step right now.",
        "Wait a minute and start again. Nothing was stored or changed.",
    )
    .caused_by(error)
}

/// Takes one sign-in step from the client address's budget (`SAMVAULT_ONBOARD_RATE`), before
/// anything else is read; past it, the 429 page, which says when and how to go on (`again`).
fn take_step(
    state: &AppState,
    ClientAddress(address): ClientAddress,
    purpose: Purpose,
    again: &str,
) -> PageResult<()> {
    state.onboard_limit.take(address).map_err(|wait| {
        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        flow_error_page(
            purpose,
            StatusCode::TOO_MANY_REQUESTS,
            "Too many sign-ins from your address",
            "Too many sign-ins were started or completed from your network address in a short time. Nothing was stored or changed.",
            &format!("Wait {} seconds, then {again}.", seconds.max(1)),
            None,
        )
        .retry_after(wait)
    })
}

/// A new CSRF token for the forms of the page about to be rendered.
async fn new_csrf(session: &Session) -> PageResult<String> {
    let csrf = random_token();
    session.insert(CSRF_KEY, &csrf).await.map_err(unavailable)?;
    Ok(csrf)
}

/// Whether a posted form carries this session's CSRF token (compared in constant time).
async fn csrf_matches(session: &Session, presented: &str) -> PageResult<bool> {
    let expected: Option<String> = session.get(CSRF_KEY).await.or_else(|e| match e {
        tower_sessions::session::Error::SerdeJson(_) => Ok(None),
        e => Err(unavailable(e)),
    })?;
    Ok(expected.is_some_and(|e| bool::from(e.as_bytes().ct_eq(presented.as_bytes()))))
}

/// Stores the pending sign-in in the session, renews the session id and sends the browser
/// to Entra ID.
async fn begin_sign_in(
    session: &Session,
    request: ConsentRequest,
    purpose: Purpose,
    invitation_id: Option<String>,
    tenant: Option<TenantId>,
) -> PageResult<Redirect> {
    let pending = Pending {
        state: request.state,
        nonce: request.nonce,
        pkce_verifier: request.pkce_verifier,
        invitation_id,
        tenant: tenant.map(|t| t.to_string()),
        started_at: now(),
        purpose,
    };
    session
        .insert(PENDING_KEY, &pending)
        .await
        .map_err(unavailable)?;
    // A new session id once the sign-in starts: nothing set before it can be replayed.
    session.cycle_id().await.map_err(unavailable)?;
    Ok(Redirect::to(request.url.as_str()))
}

/// The parameters Entra ID sends back (query for response_mode=query, form for form_post).
#[derive(Deserialize, Default)]
pub(crate) struct CallbackParams {
    code: Option<String>,
    state: Option<String>,
    pub(crate) error: Option<String>,
    pub(crate) error_description: Option<String>,
}

impl CallbackParams {
    pub(crate) fn parse(raw: &[u8]) -> Option<Self> {
        serde_urlencoded::from_bytes(raw).ok()
    }
}

/// What to do after the wait at a callback: the sign-in is kept, and so is its code.
const CALLBACK_AGAIN: &str = "reload this page (your sign-in is kept)";

async fn callback_query(
    State(state): State<AppState>,
    address: ClientAddress,
    session: Session,
    RawQuery(query): RawQuery,
) -> PageResult {
    take_step(&state, address, Purpose::Consent, CALLBACK_AGAIN)?;
    callback(state, session, query.unwrap_or_default().as_bytes()).await
}

async fn callback_form(
    State(state): State<AppState>,
    address: ClientAddress,
    session: Session,
    body: axum::body::Bytes,
) -> PageResult {
    take_step(&state, address, Purpose::Consent, CALLBACK_AGAIN)?;
    callback(state, session, &body).await
}

fn bad_state(message: &str) -> PageError {
    error_page(
        StatusCode::BAD_REQUEST,
        "This sign-in cannot be completed",
        message,
        "Open the page you started from again in this browser and press its button. Nothing was stored or changed.",
    )
}

async fn callback(state: AppState, session: Session, raw: &[u8]) -> PageResult {
    let params = CallbackParams::parse(raw)
        .ok_or_else(|| bad_state("The response from Microsoft sign-in is malformed."))?;
    let pending = take_pending(&state, &session, &params).await?;
    if let Some(error) = params.error.as_deref() {
        let description = params.error_description.as_deref();
        return Err(idp_error_page(pending.purpose, error, description));
    }
    let Some(code) = params
        .code
        .as_deref()
        .filter(|c| !c.is_empty() && c.len() < 8192)
    else {
        return Err(bad_state(
            "The response from Microsoft sign-in has no authorization code.",
        ));
    };
    match pending.purpose {
        Purpose::Consent => Ok(consent::complete(&state, &pending, code)
            .await?
            .into_response()),
        Purpose::Revoke => Ok(revoke::signed_in(&state, &session, &pending, code)
            .await?
            .into_response()),
    }
}

/// The sign-in this callback answers: taken out of the session whatever happens next (single
/// use), and refused unless the callback's `state` is its own and it is not too old.
async fn take_pending(
    state: &AppState,
    session: &Session,
    params: &CallbackParams,
) -> PageResult<Pending> {
    let pending: Option<Pending> = session.remove(PENDING_KEY).await.map_err(|e| match e {
        // Unreadable (a session from another version): as good as none.
        tower_sessions::session::Error::SerdeJson(_) => {
            bad_state("No sign-in was started in this browser.")
        }
        e => unavailable(e),
    })?;
    let Some(pending) = pending else {
        return Err(bad_state(
            "No sign-in is in progress in this browser, or this response was already used.",
        ));
    };
    let state_matches = params
        .state
        .as_deref()
        .is_some_and(|s| bool::from(s.as_bytes().ct_eq(pending.state.as_bytes())));
    if !state_matches {
        return Err(bad_state(
            "The response does not belong to the sign-in started in this browser.",
        ));
    }
    if now() - pending.started_at > state.config.entra.consent_timeout.as_secs() as i64 {
        return Err(bad_state("The sign-in took too long and has expired."));
    }
    Ok(pending)
}

/// Shows an error Entra ID sent to the callback. Only the error name and AADSTS code are
/// shown (the description is attacker-controllable text on a forged callback).
pub(crate) fn idp_error_page(
    purpose: Purpose,
    error: &str,
    description: Option<&str>,
) -> PageError {
    let code = description
        .and_then(|d| d.strip_prefix("AADSTS"))
        .map(|d| {
            d.chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
        })
        .filter(|d| !d.is_empty() && d.len() <= 9);
    let reference = code.as_ref().map(|c| format!("AADSTS{c}"));
    let page = |status, title: &str, message: &str, action: &str| {
        flow_error_page(purpose, status, title, message, action, reference.clone())
    };
    match (error, code.as_deref()) {
        ("access_denied", _) if purpose == Purpose::Consent => page(
            StatusCode::FORBIDDEN,
            "Consent was not granted",
            "The consent request was declined at Microsoft sign-in, so nothing was stored.",
            "If this was a mistake, start again and accept the requested permissions.",
        ),
        ("access_denied", _) => page(
            StatusCode::FORBIDDEN,
            "Sign-in was cancelled",
            "The sign-in was declined at Microsoft, so nothing was revoked.",
            "To revoke, start again and complete the sign-in.",
        ),
        (_, Some("50076" | "50079" | "50078")) | ("interaction_required", None) => page(
            StatusCode::FORBIDDEN,
            "Multi-factor authentication is required",
            &format!(
                "Your organisation requires MFA for this sign-in and it was not completed. {}",
                purpose.unchanged()
            ),
            "Start again and complete multi-factor authentication when Microsoft asks for it.",
        ),
        _ => {
            let info = describe(code.as_deref().and_then(|c| c.parse().ok()).unwrap_or(0));
            let error_name = match error {
                "invalid_request"
                | "unauthorized_client"
                | "unsupported_response_type"
                | "invalid_scope"
                | "server_error"
                | "temporarily_unavailable"
                | "consent_required"
                | "login_required" => error,
                _ => "sign-in error",
            };
            page(
                StatusCode::BAD_REQUEST,
                "Microsoft sign-in did not complete",
                &format!("Microsoft sign-in answered: {error_name}. {}", info.meaning),
                info.action,
            )
        }
    }
}

fn idp_failure_page(purpose: Purpose, error: &IdpError) -> PageError {
    tracing::warn!(error = %error, "sign-in callback: code redemption failed");
    let reference = error.code().map(|c| format!("AADSTS{c}"));
    // An outage or throttling, whatever shape the IdP's answer took: a later try works.
    match error.classify(true) {
        Outcome::Transient { .. } => flow_error_page(
            purpose,
            StatusCode::SERVICE_UNAVAILABLE,
            "Microsoft sign-in is unavailable",
            &format!(
                "samvault could not reach Microsoft to finish the sign-in. {}",
                purpose.unchanged()
            ),
            "Wait a minute and start again.",
            None,
        ),
        _ => {
            let info = describe(error.code().unwrap_or(0));
            flow_error_page(
                purpose,
                StatusCode::BAD_REQUEST,
                "The sign-in could not be completed",
                info.meaning,
                info.action,
                reference,
            )
        }
    }
}

/// Redeems the callback's code and validates the id_token that comes with it (signature,
/// issuer, audience, nonce, expiry): who signed in, for both purposes.
async fn redeem_and_identify(
    state: &AppState,
    pending: &Pending,
    code: &str,
) -> PageResult<(TokenSet, IdClaims)> {
    let tokens = state
        .idp
        .redeem_code(code, &pending.pkce_verifier)
        .await
        .map_err(|e| idp_failure_page(pending.purpose, &e))?;
    let Some(id_token) = tokens.id_token.as_deref() else {
        return Err(bad_state("Microsoft did not return an identity token."));
    };
    let claims = state
        .idp
        .validate_id_token(id_token, &pending.nonce)
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "sign-in callback: id_token rejected");
            bad_state("Microsoft's identity token could not be verified.")
        })?;
    Ok((tokens, claims))
}

/// The refusal of a sign-in without MFA while `SAMVAULT_REQUIRE_MFA` holds. `amr` comes from
/// the access token: v1 tokens carry it, v2 id_tokens do not.
fn mfa_refusal(state: &AppState, access: &AccessClaims, purpose: Purpose) -> Option<PageError> {
    if !state.config.entra.require_mfa || access.mfa() {
        return None;
    }
    let (message, action) = match purpose {
        Purpose::Consent => (
            "The sign-in did not use multi-factor authentication. Partner Center rejects delegated tokens without MFA, so samvault does not store this consent. Nothing was stored.",
            "Enable MFA for this account (Entra ID security defaults or Conditional Access), then consent again.",
        ),
        Purpose::Revoke => (
            "The sign-in did not use multi-factor authentication, and revoking needs it. Nothing was revoked.",
            "Enable MFA for this account (Entra ID security defaults or Conditional Access), then start again.",
        ),
    };
    Some(flow_error_page(
        purpose,
        StatusCode::FORBIDDEN,
        "Multi-factor authentication is required",
        message,
        action,
        None,
    ))
}
