//! The consent flow: the landing page (open, or through an invitation link), the start of the
//! sign-in, and the callback's last step, which stores the partner's refresh token sealed.
//!
//! With `SAMVAULT_ONBOARDING=invitation` every consent needs an invitation link. While a
//! tenant holds a usable grant, a consent by another of its users replaces it only with an
//! [`Authority`] (`crate::onboarding`); anyone else is told who holds it and how to get an
//! invitation, and nothing changes.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Redirect;
use axum::routing::{get, post};
use axum::{Form, Router};
use secrecy::ExposeSecret;
use serde::Deserialize;
use tower_sessions::Session;

use super::{
    AppState, ClientAddress, Pending, Purpose, bad_state, begin_sign_in, csrf_matches, error_page,
    mfa_refusal, new_csrf, redeem_and_identify, take_step, unavailable,
};
use crate::config::Onboarding;
use crate::domain::TenantId;
use crate::http::ops::when;
use crate::http::templates::{ConsentDonePage, OnboardPage, PageError, PageResult};
use crate::idp::{AccessClaims, IdClaims, TokenSet};
use crate::onboarding::{
    self, Authority, ConsentError, Consenter, invitation_id, organisation_name,
};
use crate::storage::invitations::InvitationState;
use crate::storage::partners::{GrantHolder, INACTIVITY_LIMIT_SECS, NewConsent};
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
        app_name: state.config.entra.app_name.clone(),
        client_id: state.idp.client_id().to_string(),
        redirect_uri: state.config.redirect_uri().to_string(),
        scopes: state
            .config
            .entra
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
    if state.config.onboarding.mode == Onboarding::Invitation {
        return Err(by_invitation(&state));
    }
    render_landing(&state, &session, None).await
}

/// The answer to a consent without an invitation while `SAMVAULT_ONBOARDING=invitation`.
fn by_invitation(state: &AppState) -> PageError {
    let links = state.config.server.public_url.join("onboard/i/").ok();
    error_page(
        StatusCode::FORBIDDEN,
        "Onboarding is by invitation",
        &format!(
            "{} connects partner organisations through invitation links only. Nothing was stored.",
            state.config.entra.app_name
        ),
        &format!(
            "Ask your CPV contact for an onboarding link (it starts with {}), open it and consent from there. To revoke a grant, use the revoke page.",
            links.map_or_else(|| "/onboard/i/".into(), |u| u.to_string())
        ),
    )
}

/// The page for an invitation link that cannot be used: unknown (`None`), used or expired.
/// `unchanged` says what a consent that got this far did not store.
fn invitation_gone(state: Option<InvitationState>, unchanged: &str) -> PageError {
    let (title, message) = match state {
        None => ("Invitation not found", "This onboarding link is not valid."),
        Some(InvitationState::Used) => (
            "Invitation already used",
            "This onboarding link was already used to consent.",
        ),
        Some(InvitationState::Expired | InvitationState::Open) => {
            ("Invitation expired", "This onboarding link has expired.")
        }
    };
    error_page(
        StatusCode::GONE,
        title,
        &format!("{message}{unchanged}"),
        "Ask your CPV contact for a new onboarding link.",
    )
}

/// Looks an invitation up and refuses unknown, expired or used ones with a clear page.
async fn live_invitation(state: &AppState, token: &str) -> PageResult<invitations::Invitation> {
    if token.len() > 128 {
        return Err(invitation_gone(None, ""));
    }
    let invitation = invitations::get(&state.db, &invitation_id(token))
        .await
        .map_err(unavailable)?
        .ok_or_else(|| invitation_gone(None, ""))?;
    match invitation.state(now()) {
        InvitationState::Open => Ok(invitation),
        spent => Err(invitation_gone(Some(spent), "")),
    }
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
    address: ClientAddress,
    session: Session,
    Form(form): Form<StartForm>,
) -> PageResult<Redirect> {
    take_step(
        &state,
        address,
        Purpose::Consent,
        "go back and press Grant consent again",
    )?;
    let invited = form.invitation.as_deref().is_some_and(|t| !t.is_empty());
    if state.config.onboarding.mode == Onboarding::Invitation && !invited {
        return Err(by_invitation(&state));
    }
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
    // Started before the setting changed: refused before the code is redeemed.
    if state.config.onboarding.mode == Onboarding::Invitation && pending.invitation_id.is_none() {
        return Err(by_invitation(state));
    }
    let (tokens, claims) = redeem_and_identify(state, pending, code).await?;
    let tenant = consenting_tenant(&claims, pending)?;
    let access = AccessClaims::peek(tokens.access_token.expose_secret()).unwrap_or_default();
    if let Some(refusal) = mfa_refusal(state, &access, Purpose::Consent) {
        tracing::warn!(tenant.id = %tenant, "consent refused: token without MFA");
        return Err(refusal);
    }
    let consent = new_consent(tenant, &tokens, &claims, &access, pending);
    let who = Consenter {
        oid: consent.oid.as_deref(),
        wids: &claims.wids,
        // `consenting_tenant` checked the invitation's tenant is the consenting one.
        pinned_invitation: pending.invitation_id.is_some() && pending.tenant.is_some(),
    };
    let at = record(state, &consent, &who, &tokens)
        .await
        .map_err(|e| e.for_tenant(&consent.tenant_id))?;
    state.broker.forget(&consent.tenant_id);
    tracing::info!(tenant.id = %consent.tenant_id, mfa = consent.mfa, "consent recorded");
    let expires = time::OffsetDateTime::from_unix_timestamp(at + INACTIVITY_LIMIT_SECS)
        .map(|t| format!("{}-{:02}-{:02}", t.year(), t.month() as u8, t.day()))
        .unwrap_or_default();
    Ok(ConsentDonePage {
        app_name: state.config.entra.app_name.clone(),
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

/// Seals and records the consent, then audits it (and a change of hands); returns when.
async fn record(
    state: &AppState,
    consent: &NewConsent,
    who: &Consenter<'_>,
    tokens: &TokenSet,
) -> PageResult<i64> {
    let Some(refresh_token) = tokens.refresh_token.as_ref() else {
        return Err(bad_state(
            "Microsoft returned no refresh token (offline_access was not granted).",
        ));
    };
    let at = now();
    let rotate_at = state.broker.next_rotation(at);
    let recorded = onboarding::record_partner_consent(
        &state.db,
        &state.vault,
        consent,
        who,
        refresh_token,
        at,
        rotate_at,
    )
    .await
    .map_err(|e| refusal(state, consent, e))?;
    let detail = serde_json::json!({
        "upn": consent.upn, "mfa": consent.mfa, "amr": consent.amr, "version": recorded.version,
        "replaced_version": recorded.replaced.as_ref().map(|(holder, _)| holder.version),
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
    if let Some(change) = recorded
        .replaced
        .as_ref()
        .filter(|(_, authority)| *authority != Authority::SameUser)
    {
        onboarding::record_change_of_hands(
            &state.db,
            &state.notifier,
            consent,
            recorded.version,
            change,
            at,
        )
        .await
        .map_err(unavailable)?;
    }
    Ok(at)
}

/// The page for a consent that was not recorded.
fn refusal(state: &AppState, consent: &NewConsent, error: ConsentError) -> PageError {
    match error {
        ConsentError::HeldByAnother(holder) => {
            tracing::warn!(tenant.id = %consent.tenant_id, "consent refused: the tenant's grant is held by another user");
            held_by_another(state, consent, &holder)
        }
        ConsentError::InvitationSpent(spent) => {
            invitation_gone(Some(spent), " Nothing was stored.")
        }
        ConsentError::Concurrent => error_page(
            StatusCode::CONFLICT,
            "Another consent was just recorded",
            "Another consent for your organisation was recorded at the same moment. Nothing was stored by this one.",
            "Start again if your organisation still needs to consent.",
        ),
        error @ (ConsentError::Storage(_) | ConsentError::Vault(_)) => unavailable(error),
    }
}

/// Who holds a grant, as a colleague in the same tenant is shown it: the display name, and
/// the UPN with all but its first character masked (enough to recognise a person, not to
/// collect the addresses of a partner's admins).
fn holder_shown(holder: &GrantHolder) -> String {
    let (local, domain) = holder.upn.rsplit_once('@').unwrap_or((&holder.upn, ""));
    let first: String = local.chars().take(1).collect();
    let upn = match domain {
        "" => format!("{first}***"),
        domain => format!("{first}***@{domain}"),
    };
    match holder.user_name.as_deref().map(str::trim) {
        Some(name) if !name.is_empty() => {
            format!("{} ({upn})", name.chars().take(64).collect::<String>())
        }
        _ => upn,
    }
}

/// The refusal of a consent over a usable grant another user gave: who holds it, who may
/// replace it, and how to ask the CPV for an invitation.
fn held_by_another(state: &AppState, consent: &NewConsent, holder: &GrantHolder) -> PageError {
    let (app, org, tenant) = (
        &state.config.entra.app_name,
        &consent.display_name,
        &consent.tenant_id,
    );
    let who = holder_shown(holder);
    error_page(
        StatusCode::CONFLICT,
        "Your organisation's grant is held by someone else",
        &format!(
            "{app} already holds a working grant for {org} (tenant {tenant}), given by {who} on {}. A new consent replaces it only when it comes from that person, from a {} of {org}, or through an onboarding invitation for {org}. Nothing was stored or changed.",
            when(Some(holder.consented_at)),
            onboarding::admin_roles_in_words(),
        ),
        &format!(
            "Ask {who} to renew the grant, or ask your CPV contact (who runs {app}) for an onboarding invitation for tenant {tenant}: consenting through that link replaces the grant."
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder(upn: &str, name: Option<&str>) -> GrantHolder {
        GrantHolder {
            version: 1,
            upn: upn.into(),
            oid: None,
            user_name: name.map(str::to_string),
            consented_at: 0,
        }
    }

    #[test]
    fn a_holder_is_shown_by_name_with_a_masked_upn() {
        let jane = holder("jane@contoso.example", Some(" Jane Doe "));
        assert_eq!(holder_shown(&jane), "Jane Doe (j***@contoso.example)");
        assert_eq!(holder_shown(&holder("imported", None)), "i***");
        assert_eq!(
            holder_shown(&holder("@x.example", Some(""))),
            "***@x.example"
        );
        let long = "N".repeat(500);
        assert_eq!(
            holder_shown(&holder("é@x.example", Some(&long))),
            format!("{} (é***@x.example)", "N".repeat(64))
        );
    }
}
