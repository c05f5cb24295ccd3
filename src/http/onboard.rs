//! Partner onboarding (SPEC §3.3): the consent landing page, the redirect to Entra ID and the
//! callback that turns an authorization code into a sealed refresh token.
//!
//! The pending sign-in (state, nonce, PKCE verifier) lives in the browser's session, so a
//! `state` is bound to the browser that started it, used once (removed on first callback)
//! and honoured for ten minutes. Nothing is stored unless the whole callback succeeds.
//!
//! The self-service revoke ([`revoke`]) signs the partner admin in through the same pending
//! sign-in and the same callback (one redirect URI to register), with its purpose recorded.

mod revoke;

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use base64::Engine;
use rand::RngCore;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tower_sessions::Session;

use super::AppState;
use super::templates::{ConsentDonePage, ErrorPage, OnboardPage};
use crate::domain::TenantId;
use crate::idp::errors::describe;
use crate::idp::{AccessClaims, ConsentRequest, IdClaims, IdpError, Outcome, TokenSet};
use crate::storage::partners::{
    self, INACTIVITY_LIMIT_SECS, NewConsent, StoredGrant, grant_context,
};
use crate::storage::{audit, invitations, now};

const CSRF_KEY: &str = "onboard.csrf";
const PENDING_KEY: &str = "onboard.pending";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/onboard", get(landing))
        .route("/onboard/i/{invitation}", get(invited))
        .route("/onboard/start", post(start))
        .route("/onboard/callback", get(callback_query).post(callback_form))
        .merge(revoke::router())
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

pub(crate) fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Invitation ids are the SHA-256 of the URL token: the database never holds a usable link.
pub fn invitation_id(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Creates an invitation and returns its URL.
pub async fn create_invitation(
    state_db: &crate::storage::Db,
    public_url: &url::Url,
    tenant: Option<&TenantId>,
    lifetime_secs: i64,
) -> Result<(url::Url, i64), crate::storage::StorageError> {
    let token = random_token();
    let created = now();
    let expires_at = created + lifetime_secs;
    invitations::create(
        state_db,
        &invitation_id(&token),
        tenant,
        created,
        expires_at,
    )
    .await?;
    let url = public_url
        .join(&format!("onboard/i/{token}"))
        .expect("token is URL-safe");
    Ok((url, expires_at))
}

pub(super) fn error_page(
    status: StatusCode,
    title: &str,
    message: &str,
    action: &str,
    code: Option<String>,
) -> Response {
    flow_error_page(Purpose::Consent, status, title, message, action, code)
}

/// An error page whose "Start again" link leads back to the start of `purpose`'s flow.
fn flow_error_page(
    purpose: Purpose,
    status: StatusCode,
    title: &str,
    message: &str,
    action: &str,
    code: Option<String>,
) -> Response {
    let page = ErrorPage {
        title: title.into(),
        message: message.into(),
        action: action.into(),
        code,
        restart: purpose.page(),
    };
    (status, page).into_response()
}

fn unavailable() -> Response {
    error_page(
        StatusCode::SERVICE_UNAVAILABLE,
        "Temporarily unavailable",
        "samvault could not complete this step right now.",
        "Wait a minute and start again. Nothing was stored or changed.",
        None,
    )
}

/// A new CSRF token for the forms of the page about to be rendered; `None` if the session
/// store failed.
async fn new_csrf(session: &Session) -> Option<String> {
    let csrf = random_token();
    session.insert(CSRF_KEY, &csrf).await.ok().map(|()| csrf)
}

/// Whether a posted form carries this session's CSRF token (compared in constant time).
async fn csrf_matches(session: &Session, presented: &str) -> bool {
    let expected: Option<String> = session.get(CSRF_KEY).await.ok().flatten();
    expected.is_some_and(|e| bool::from(e.as_bytes().ct_eq(presented.as_bytes())))
}

/// Stores the pending sign-in in the session, renews the session id and sends the browser
/// to Entra ID.
async fn begin_sign_in(
    session: &Session,
    request: ConsentRequest,
    purpose: Purpose,
    invitation_id: Option<String>,
    tenant: Option<TenantId>,
) -> Response {
    let pending = Pending {
        state: request.state,
        nonce: request.nonce,
        pkce_verifier: request.pkce_verifier,
        invitation_id,
        tenant: tenant.map(|t| t.to_string()),
        started_at: now(),
        purpose,
    };
    if session.insert(PENDING_KEY, &pending).await.is_err() {
        return unavailable();
    }
    // A new session id once the sign-in starts: nothing set before it can be replayed.
    if session.cycle_id().await.is_err() {
        return unavailable();
    }
    Redirect::to(request.url.as_str()).into_response()
}

fn human_scope(scope: &str) -> (String, &'static str) {
    let text = match scope {
        "offline_access" => {
            "keep access when you are not signed in (a refresh token, encrypted at rest)"
        }
        "openid" | "profile" | "email" => "sign you in and read your basic profile",
        s if s.starts_with("https://api.partnercenter.microsoft.com/") => {
            "call Partner Center APIs as you (delegated, MFA-checked)"
        }
        s if s.starts_with("https://graph.microsoft.com/") => {
            "call Microsoft Graph as you (delegated)"
        }
        s if s.starts_with("https://management.azure.com/") => {
            "call Azure Resource Manager as you (delegated)"
        }
        _ => "delegated permission requested by the app",
    };
    (scope.to_string(), text)
}

async fn render_landing(
    state: &AppState,
    session: &Session,
    invitation: Option<(String, Option<TenantId>)>,
) -> Response {
    let Some(csrf) = new_csrf(session).await else {
        return unavailable();
    };
    let (invitation, invited_tenant) = match invitation {
        Some((token, tenant)) => (Some(token), tenant.map(|t| t.to_string())),
        None => (None, None),
    };
    OnboardPage {
        app_name: state.config.app_name.clone(),
        client_id: state.idp.client_id().to_string(),
        redirect_uri: state.config.redirect_uri().to_string(),
        scopes: state
            .config
            .consent_scopes
            .iter()
            .map(|s| human_scope(s))
            .collect(),
        csrf,
        invitation,
        invited_tenant,
    }
    .into_response()
}

async fn landing(State(state): State<AppState>, session: Session) -> Response {
    render_landing(&state, &session, None).await
}

/// Looks an invitation up and refuses unknown, expired or used ones with a clear page.
async fn live_invitation(
    state: &AppState,
    token: &str,
) -> Result<invitations::Invitation, Response> {
    let gone = |title: &str, message: &str| {
        error_page(
            StatusCode::GONE,
            title,
            message,
            "Ask your CPV contact for a new onboarding link.",
            None,
        )
    };
    if token.len() > 128 {
        return Err(gone(
            "Invitation not found",
            "This onboarding link is not valid.",
        ));
    }
    match invitations::get(&state.db, &invitation_id(token)).await {
        Ok(Some(inv)) if inv.used_at.is_some() => Err(gone(
            "Invitation already used",
            "This onboarding link was already used to consent.",
        )),
        Ok(Some(inv)) if inv.expires_at <= now() => Err(gone(
            "Invitation expired",
            "This onboarding link has expired.",
        )),
        Ok(Some(inv)) => Ok(inv),
        Ok(None) => Err(gone(
            "Invitation not found",
            "This onboarding link is not valid.",
        )),
        Err(e) => {
            tracing::error!(error = %e, "invitation lookup failed");
            Err(unavailable())
        }
    }
}

async fn invited(
    State(state): State<AppState>,
    session: Session,
    Path(token): Path<String>,
) -> Response {
    match live_invitation(&state, &token).await {
        Ok(inv) => render_landing(&state, &session, Some((token, inv.tenant_id))).await,
        Err(page) => page,
    }
}

#[derive(Deserialize)]
struct StartForm {
    csrf: String,
    invitation: Option<String>,
}

async fn start(
    State(state): State<AppState>,
    session: Session,
    Form(form): Form<StartForm>,
) -> Response {
    if !csrf_matches(&session, &form.csrf).await {
        return error_page(
            StatusCode::BAD_REQUEST,
            "This page has expired",
            "The consent form was not opened in this browser session, or it is too old.",
            "Open the onboarding page again and press Grant consent.",
            None,
        );
    }
    let (invitation_id, tenant) = match form.invitation.as_deref().filter(|t| !t.is_empty()) {
        Some(token) => match live_invitation(&state, token).await {
            Ok(inv) => (Some(inv.id), inv.tenant_id),
            Err(page) => return page,
        },
        None => (None, None),
    };
    let request = state.idp.consent_request(tenant.as_ref());
    begin_sign_in(&session, request, Purpose::Consent, invitation_id, tenant).await
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

async fn callback_query(
    State(state): State<AppState>,
    session: Session,
    RawQuery(query): RawQuery,
) -> Response {
    callback(state, session, query.unwrap_or_default().as_bytes()).await
}

async fn callback_form(
    State(state): State<AppState>,
    session: Session,
    body: axum::body::Bytes,
) -> Response {
    callback(state, session, &body).await
}

fn bad_state(message: &str) -> Response {
    error_page(
        StatusCode::BAD_REQUEST,
        "This sign-in cannot be completed",
        message,
        "Open the page you started from again in this browser and press its button. Nothing was stored or changed.",
        None,
    )
}

async fn callback(state: AppState, session: Session, raw: &[u8]) -> Response {
    let Some(params) = CallbackParams::parse(raw) else {
        return bad_state("The response from Microsoft sign-in is malformed.");
    };
    // Single use: the pending sign-in is taken out of the session whatever happens next.
    let pending: Option<Pending> = match session.remove(PENDING_KEY).await {
        Ok(p) => p,
        Err(_) => return bad_state("No sign-in was started in this browser."),
    };
    let Some(pending) = pending else {
        return bad_state(
            "No sign-in is in progress in this browser, or this response was already used.",
        );
    };
    let state_matches = params
        .state
        .as_deref()
        .is_some_and(|s| bool::from(s.as_bytes().ct_eq(pending.state.as_bytes())));
    if !state_matches {
        return bad_state("The response does not belong to the sign-in started in this browser.");
    }
    if now() - pending.started_at > state.config.consent_timeout.as_secs() as i64 {
        return bad_state("The sign-in took too long and has expired.");
    }
    if let Some(error) = params.error.as_deref() {
        return idp_error_page(pending.purpose, error, params.error_description.as_deref());
    }
    let Some(code) = params
        .code
        .as_deref()
        .filter(|c| !c.is_empty() && c.len() < 8192)
    else {
        return bad_state("The response from Microsoft sign-in has no authorization code.");
    };
    let outcome = match pending.purpose {
        Purpose::Consent => complete_consent(&state, &pending, code)
            .await
            .map(IntoResponse::into_response),
        Purpose::Revoke => revoke::signed_in(&state, &session, &pending, code).await,
    };
    outcome.unwrap_or_else(|page| page)
}

/// Shows an error Entra ID sent to the callback. Only the error name and AADSTS code are
/// shown (the description is attacker-controllable text on a forged callback).
pub(crate) fn idp_error_page(purpose: Purpose, error: &str, description: Option<&str>) -> Response {
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

fn idp_failure_page(purpose: Purpose, error: &IdpError) -> Response {
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
) -> Result<(TokenSet, IdClaims), Response> {
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
fn mfa_refusal(state: &AppState, access: &AccessClaims, purpose: Purpose) -> Option<Response> {
    if !state.config.require_mfa || access.mfa() {
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

/// Display name for the organisation: the tenant's domain label (`contoso.example` →
/// `Contoso`). Entra tokens carry no tenant name.
pub fn organisation_name(upn: &str) -> (String, Option<String>) {
    let Some((_, domain)) = upn.rsplit_once('@') else {
        return ("Unknown organisation".into(), None);
    };
    let domain = domain.to_ascii_lowercase();
    let label = domain.split('.').next().unwrap_or(&domain);
    let mut chars = label.chars();
    let name = match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => domain.clone(),
    };
    (name, Some(domain))
}

async fn complete_consent(
    state: &AppState,
    pending: &Pending,
    code: &str,
) -> Result<ConsentDonePage, Response> {
    let (tokens, claims) = redeem_and_identify(state, pending, code).await?;
    let tenant = TenantId::parse(&claims.tid)
        .map_err(|_| bad_state("The identity token names no valid tenant."))?;
    if let Some(expected) = &pending.tenant
        && expected != tenant.as_str()
    {
        return Err(error_page(
            StatusCode::FORBIDDEN,
            "Wrong organisation",
            "This invitation is for another partner tenant than the account you signed in with. Nothing was stored.",
            "Sign in with an account of the invited tenant.",
            None,
        ));
    }
    let access = AccessClaims::peek(tokens.access_token.expose_secret()).unwrap_or_default();
    let mfa = access.mfa();
    let upn = access
        .upn
        .clone()
        .or_else(|| claims.preferred_username.clone())
        .unwrap_or_else(|| "unknown user".into());
    if let Some(refusal) = mfa_refusal(state, &access, Purpose::Consent) {
        tracing::warn!(tenant.id = %tenant, "consent refused: token without MFA");
        return Err(refusal);
    }
    let Some(refresh_token) = tokens.refresh_token.as_ref() else {
        return Err(bad_state(
            "Microsoft returned no refresh token (offline_access was not granted).",
        ));
    };
    let (organisation, domain) = organisation_name(&upn);
    let stored = async {
        let version = partners::next_version(&state.db, &tenant)
            .await
            .map_err(|e| e.to_string())?;
        let sealed = state
            .vault
            .seal(
                refresh_token.expose_secret().as_bytes(),
                &grant_context(&tenant, version),
            )
            .await
            .map_err(|e| e.to_string())?;
        let consent = NewConsent {
            tenant_id: tenant.clone(),
            display_name: organisation.clone(),
            domain,
            upn: upn.clone(),
            oid: claims.oid.clone().or(access.oid.clone()),
            user_name: claims.name.clone(),
            mfa,
            amr: access.amr.clone(),
            scopes: tokens.scope.clone().unwrap_or_default(),
            invitation_id: pending.invitation_id.clone(),
        };
        let at = now();
        partners::record_consent(
            &state.db,
            &consent,
            &StoredGrant { version, sealed },
            at,
            state.broker.next_rotation(at),
        )
        .await
        .map_err(|e| e.to_string())?;
        if let Some(id) = &pending.invitation_id {
            invitations::mark_used(&state.db, id, &upn, at)
                .await
                .map_err(|e| e.to_string())?;
        }
        let detail =
            serde_json::json!({ "upn": upn, "mfa": mfa, "amr": access.amr, "version": version });
        audit::append(
            &state.db,
            &format!("partner:{upn}"),
            "consent",
            Some(tenant.as_str()),
            detail,
            at,
        )
        .await
        .map_err(|e| e.to_string())?;
        Ok::<i64, String>(at)
    }
    .await;
    let at = stored.map_err(|e| {
        tracing::error!(tenant.id = %tenant, error = %e, "consent could not be stored");
        unavailable()
    })?;
    state.broker.forget(&tenant);
    tracing::info!(tenant.id = %tenant, mfa, "consent recorded");
    let expires = time::OffsetDateTime::from_unix_timestamp(at + INACTIVITY_LIMIT_SECS)
        .map(|t| format!("{}-{:02}-{:02}", t.year(), t.month() as u8, t.day()))
        .unwrap_or_default();
    Ok(ConsentDonePage {
        app_name: state.config.app_name.clone(),
        organisation,
        tenant_id: tenant.to_string(),
        upn,
        mfa,
        amr: access.amr.join(", "),
        scopes: tokens.scope.clone().unwrap_or_default(),
        expires,
    })
}
