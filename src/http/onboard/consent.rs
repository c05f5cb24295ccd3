//! The consent flow: the landing page (open, or through an invitation link), the start of the
//! sign-in, and the callback's last step, which stores the partner's refresh token sealed.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Redirect;
use axum::routing::{get, post};
use axum::{Form, Router};
use secrecy::ExposeSecret;
use serde::Deserialize;
use tower_sessions::Session;

use super::{
    AppState, Pending, Purpose, bad_state, begin_sign_in, csrf_matches, error_page, mfa_refusal,
    new_csrf, redeem_and_identify, unavailable,
};
use crate::domain::TenantId;
use crate::http::templates::{ConsentDonePage, OnboardPage, PageResult};
use crate::idp::{AccessClaims, IdClaims, TokenSet};
use crate::onboarding::{self, invitation_id, organisation_name};
use crate::storage::partners::{INACTIVITY_LIMIT_SECS, NewConsent};
use crate::storage::{audit, invitations, now};

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/onboard", get(landing))
        .route("/onboard/i/{invitation}", get(invited))
        .route("/onboard/start", post(start))
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
) -> PageResult<OnboardPage> {
    let csrf = new_csrf(session).await?;
    let (invitation, invited_tenant) = match invitation {
        Some((token, tenant)) => (Some(token), tenant.map(|t| t.to_string())),
        None => (None, None),
    };
    Ok(OnboardPage {
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
    })
}

async fn landing(State(state): State<AppState>, session: Session) -> PageResult<OnboardPage> {
    render_landing(&state, &session, None).await
}

/// Looks an invitation up and refuses unknown, expired or used ones with a clear page.
async fn live_invitation(state: &AppState, token: &str) -> PageResult<invitations::Invitation> {
    let gone = |title: &str, message: &str| {
        error_page(
            StatusCode::GONE,
            title,
            message,
            "Ask your CPV contact for a new onboarding link.",
        )
    };
    let not_found = || gone("Invitation not found", "This onboarding link is not valid.");
    if token.len() > 128 {
        return Err(not_found());
    }
    let invitation = invitations::get(&state.db, &invitation_id(token))
        .await
        .map_err(unavailable)?
        .ok_or_else(not_found)?;
    if invitation.used_at.is_some() {
        return Err(gone(
            "Invitation already used",
            "This onboarding link was already used to consent.",
        ));
    }
    if invitation.expires_at <= now() {
        return Err(gone(
            "Invitation expired",
            "This onboarding link has expired.",
        ));
    }
    Ok(invitation)
}

async fn invited(
    State(state): State<AppState>,
    session: Session,
    Path(token): Path<String>,
) -> PageResult<OnboardPage> {
    let invitation = live_invitation(&state, &token).await?;
    render_landing(&state, &session, Some((token, invitation.tenant_id))).await
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
) -> PageResult<Redirect> {
    if !csrf_matches(&session, &form.csrf).await? {
        return Err(error_page(
            StatusCode::BAD_REQUEST,
            "This page has expired",
            "The consent form was not opened in this browser session, or it is too old.",
            "Open the onboarding page again and press Grant consent.",
        ));
    }
    let (invitation_id, tenant) = match form.invitation.as_deref().filter(|t| !t.is_empty()) {
        Some(token) => {
            let invitation = live_invitation(&state, token).await?;
            (Some(invitation.id), invitation.tenant_id)
        }
        None => (None, None),
    };
    let request = state.idp.consent_request(tenant.as_ref());
    begin_sign_in(&session, request, Purpose::Consent, invitation_id, tenant).await
}

/// The callback of a consent sign-in: who consented, for which tenant, with what strength;
/// then the refresh token sealed and recorded, and the page that says so.
pub(super) async fn complete(
    state: &AppState,
    pending: &Pending,
    code: &str,
) -> PageResult<ConsentDonePage> {
    let (tokens, claims) = redeem_and_identify(state, pending, code).await?;
    let tenant = consenting_tenant(&claims, pending)?;
    let access = AccessClaims::peek(tokens.access_token.expose_secret()).unwrap_or_default();
    if let Some(refusal) = mfa_refusal(state, &access, Purpose::Consent) {
        tracing::warn!(tenant.id = %tenant, "consent refused: token without MFA");
        return Err(refusal);
    }
    let consent = new_consent(tenant, &tokens, &claims, &access, pending);
    let at = record(state, &consent, &tokens)
        .await
        .map_err(|e| e.for_tenant(&consent.tenant_id))?;
    state.broker.forget(&consent.tenant_id);
    tracing::info!(tenant.id = %consent.tenant_id, mfa = consent.mfa, "consent recorded");
    let expires = time::OffsetDateTime::from_unix_timestamp(at + INACTIVITY_LIMIT_SECS)
        .map(|t| format!("{}-{:02}-{:02}", t.year(), t.month() as u8, t.day()))
        .unwrap_or_default();
    Ok(ConsentDonePage {
        app_name: state.config.app_name.clone(),
        organisation: consent.display_name,
        tenant_id: consent.tenant_id.to_string(),
        upn: consent.upn,
        mfa: consent.mfa,
        amr: consent.amr.join(", "),
        scopes: consent.scopes,
        expires,
    })
}

/// The tenant the id_token names, which must be the invited one when the sign-in came
/// through an invitation pinned to a tenant.
fn consenting_tenant(claims: &IdClaims, pending: &Pending) -> PageResult<TenantId> {
    let tenant = TenantId::parse(&claims.tid)
        .map_err(|_| bad_state("The identity token names no valid tenant."))?;
    match &pending.tenant {
        Some(expected) if expected != tenant.as_str() => Err(error_page(
            StatusCode::FORBIDDEN,
            "Wrong organisation",
            "This invitation is for another partner tenant than the account you signed in with. Nothing was stored.",
            "Sign in with an account of the invited tenant.",
        )),
        _ => Ok(tenant),
    }
}

fn new_consent(
    tenant: TenantId,
    tokens: &TokenSet,
    claims: &IdClaims,
    access: &AccessClaims,
    pending: &Pending,
) -> NewConsent {
    let upn = access
        .upn
        .clone()
        .or_else(|| claims.preferred_username.clone())
        .unwrap_or_else(|| "unknown user".into());
    let (display_name, domain) = organisation_name(&upn);
    NewConsent {
        tenant_id: tenant,
        display_name,
        domain,
        upn,
        oid: claims.oid.clone().or(access.oid.clone()),
        user_name: claims.name.clone(),
        mfa: access.mfa(),
        amr: access.amr.clone(),
        scopes: tokens.scope.clone().unwrap_or_default(),
        invitation_id: pending.invitation_id.clone(),
    }
}

/// Seals and records the consent, then audits it; returns when.
async fn record(state: &AppState, consent: &NewConsent, tokens: &TokenSet) -> PageResult<i64> {
    let Some(refresh_token) = tokens.refresh_token.as_ref() else {
        return Err(bad_state(
            "Microsoft returned no refresh token (offline_access was not granted).",
        ));
    };
    let at = now();
    let rotate_at = state.broker.next_rotation(at);
    let version = onboarding::record_consent(
        &state.db,
        &state.vault,
        consent,
        refresh_token,
        at,
        rotate_at,
    )
    .await
    .map_err(unavailable)?;
    let detail = serde_json::json!({
        "upn": consent.upn, "mfa": consent.mfa, "amr": consent.amr, "version": version,
    });
    let actor = format!("partner:{}", consent.upn);
    audit::append(
        &state.db,
        &actor,
        "consent",
        Some(consent.tenant_id.as_str()),
        detail,
        at,
    )
    .await
    .map_err(unavailable)?;
    Ok(at)
}
