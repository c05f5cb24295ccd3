//! Partner self-service revoke (REFERENCE §3.3 `/onboard/revoke`): a partner admin signs in with
//! `openid profile` only (who they are; no refresh token, no API permission), sees what
//! samvault holds for their tenant (metadata, never a token) and purges it through the
//! broker, exactly as an ops revoke does.
//!
//! Who may revoke a tenant's grant: the user whose consent produced it (it is their
//! delegated credential: the consent behind the grant's current version, not merely the
//! newest consent row), or a holder of a directory role that can remove the app's consent
//! in that tenant anyway, read from the id_token's `wids` claim
//! ([`crate::onboarding::CONSENT_ADMIN_ROLES`]).

use askama::Template;
use askama_web::WebTemplate;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Redirect;
use axum::routing::{get, post};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use tower_sessions::Session;

use super::{
    AppState, ClientAddress, PageError, PageResult, Pending, Purpose, bad_state, begin_sign_in,
    csrf_matches, flow_error_page, mfa_refusal, new_csrf, redeem_and_identify, take_step,
    unavailable,
};
use crate::broker::BrokerError;
use crate::domain::TenantId;
use crate::http::ops::when;
use crate::idp::AccessClaims;
use crate::onboarding::consent_admin_role;
use crate::storage::partners::{self, GrantVersion, Partner};
use crate::storage::{audit, now};

pub(super) const PAGE: &str = "/onboard/revoke";
const REVOKER_KEY: &str = "onboard.revoker";

/// Grant versions listed on the confirmation page (a partner keeps two sealed at most).
const VERSIONS_SHOWN: i64 = 10;

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route(PAGE, get(page))
        .route("/onboard/revoke/start", post(start))
        .route("/onboard/revoke/confirm", post(confirm))
}

/// A partner admin who signed in to revoke, kept in the session until they confirm (once,
/// within the sign-in timeout).
#[derive(Serialize, Deserialize)]
struct Revoker {
    tenant: String,
    upn: String,
    oid: String,
    wids: Vec<String>,
    signed_in_at: i64,
}

#[derive(Template, WebTemplate)]
#[template(path = "onboard_revoke.html")]
pub(super) struct RevokePage {
    app_name: String,
    csrf: String,
}

/// One grant version as the partner sees it: metadata only.
struct VersionRow {
    version: i64,
    source: String,
    created: String,
    sealed: bool,
}

#[derive(Template, WebTemplate)]
#[template(path = "onboard_revoke_confirm.html")]
pub(super) struct ConfirmPage {
    app_name: String,
    upn: String,
    because: String,
    organisation: String,
    tenant_id: String,
    domain: Option<String>,
    status: &'static str,
    status_reason: Option<String>,
    consented_by: String,
    consented_at: String,
    mfa: bool,
    last_rotation: String,
    horizon: String,
    versions: Vec<VersionRow>,
    csrf: String,
}

#[derive(Template, WebTemplate)]
#[template(path = "onboard_revoked.html")]
pub(super) struct RevokedPage {
    app_name: String,
    client_id: String,
    organisation: String,
    tenant_id: String,
    upn: String,
    shredded: u64,
    at: String,
}

fn refusal(status: StatusCode, title: &str, message: &str, action: &str) -> PageError {
    flow_error_page(Purpose::Revoke, status, title, message, action, None)
}

fn expired_form() -> PageError {
    refusal(
        StatusCode::BAD_REQUEST,
        "This page has expired",
        "The form was not opened in this browser session, or it is too old. Nothing was revoked.",
        "Open the revoke page again and sign in.",
    )
}

/// A storage failure while looking at `tenant`'s grant.
fn storage_failure(tenant: &TenantId) -> impl FnOnce(crate::storage::StorageError) -> PageError {
    move |error| unavailable(error).for_tenant(tenant)
}

#[derive(Deserialize)]
struct StartForm {
    #[serde(default)]
    csrf: String,
}

#[derive(Deserialize)]
struct ConfirmForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    tenant: String,
}

async fn page(State(state): State<AppState>, session: Session) -> PageResult<RevokePage> {
    Ok(RevokePage {
        app_name: state.config.entra.app_name.clone(),
        csrf: new_csrf(&session).await?,
    })
}

async fn start(
    State(state): State<AppState>,
    address: ClientAddress,
    session: Session,
    body: Bytes,
) -> PageResult<Redirect> {
    take_step(
        &state,
        address,
        Purpose::Revoke,
        "go back and press Sign in to revoke again",
    )?;
    let form = serde_urlencoded::from_bytes::<StartForm>(&body).map_err(|_| expired_form())?;
    if !csrf_matches(&session, &form.csrf).await? {
        return Err(expired_form());
    }
    // An earlier sign-in's confirmation must not outlive a new attempt.
    session
        .remove_value(REVOKER_KEY)
        .await
        .map_err(unavailable)?;
    let request = state.idp.sign_in_request();
    begin_sign_in(&session, request, Purpose::Revoke, None, None).await
}

/// The callback of a revoke sign-in: who signed in, for which tenant, whether they may
/// revoke; then what samvault holds and the confirmation form.
pub(super) async fn signed_in(
    state: &AppState,
    session: &Session,
    pending: &Pending,
    code: &str,
) -> PageResult<ConfirmPage> {
    let (tokens, claims) = redeem_and_identify(state, pending, code).await?;
    let access = AccessClaims::peek(tokens.access_token.expose_secret()).unwrap_or_default();
    drop(tokens);
    if let Some(refusal) = mfa_refusal(state, &access, Purpose::Revoke) {
        return Err(refusal);
    }
    let tenant = TenantId::parse(&claims.tid)
        .map_err(|_| bad_state("The identity token names no valid tenant."))?;
    let Some(oid) = claims.oid.clone() else {
        return Err(bad_state("The identity token names no user."));
    };
    let upn = claims
        .preferred_username
        .clone()
        .or(access.upn)
        .unwrap_or_else(|| "unknown user".into());
    let revoker = Revoker {
        tenant: tenant.to_string(),
        upn,
        oid,
        wids: claims.wids,
        signed_in_at: now(),
    };
    let (partner, versions, because) = entitled(state, &tenant, &revoker).await?;
    let csrf = new_csrf(session).await?;
    session
        .insert(REVOKER_KEY, &revoker)
        .await
        .map_err(unavailable)?;
    // Signed in: a new session id, as at every change of privilege.
    session.cycle_id().await.map_err(unavailable)?;
    tracing::info!(tenant.id = %tenant, "revoke: partner admin signed in");
    Ok(confirm_page(
        state, &revoker, partner, versions, because, csrf,
    ))
}

/// What samvault holds for `tenant`, and why `revoker` may purge it; or the page that says
/// there is nothing to revoke, or that this person may not.
async fn entitled(
    state: &AppState,
    tenant: &TenantId,
    revoker: &Revoker,
) -> PageResult<(Partner, Vec<GrantVersion>, String)> {
    let partner = partners::get(&state.db, tenant)
        .await
        .map_err(storage_failure(tenant))?;
    let Some(partner) = partner else {
        return Err(refusal(
            StatusCode::NOT_FOUND,
            "Nothing to revoke",
            &format!("samvault holds no grant for your organisation (tenant {tenant})."),
            "There is nothing to do here. If you expected a grant, sign in with an account of the organisation that consented.",
        ));
    };
    let versions = partners::grant_versions(&state.db, tenant, VERSIONS_SHOWN)
        .await
        .map_err(storage_failure(tenant))?;
    if versions.iter().all(|v| v.shredded_at.is_some()) {
        return Err(refusal(
            StatusCode::NOT_FOUND,
            "Nothing to revoke",
            &format!(
                "samvault no longer holds a refresh token for {} (status: {}, since {}).",
                partner.display_name,
                partner.status.as_str(),
                when(Some(partner.status_changed_at))
            ),
            "There is nothing to do here. To use the app again, consent again from the onboarding page.",
        ));
    }
    // The consent behind the grant this revoke would purge (issue 17).
    let consenter = partners::consent_behind_grant(&state.db, tenant, partner.grant_version)
        .await
        .map_err(storage_failure(tenant))?
        .and_then(|holder| holder.oid);
    let Some(because) = entitlement(revoker, consenter.as_deref()) else {
        tracing::warn!(tenant.id = %tenant, "revoke refused: not the consenting user nor an admin");
        return Err(refusal(
            StatusCode::FORBIDDEN,
            "You cannot revoke this grant",
            &format!(
                "You are signed in as {}, who neither gave the consent samvault holds for {} nor holds an administrator role that manages its applications. Nothing was revoked.",
                revoker.upn, partner.display_name
            ),
            "Ask the person who consented, or a Global Administrator, Privileged Role Administrator, Cloud Application Administrator or Application Administrator of your organisation, to revoke.",
        ));
    };
    Ok((partner, versions, because))
}

/// Why this person may revoke, in words for the page and the audit log; `None` if they may not.
fn entitlement(revoker: &Revoker, consenter_oid: Option<&str>) -> Option<String> {
    if consenter_oid == Some(revoker.oid.as_str()) {
        return Some("you gave the consent samvault holds".into());
    }
    consent_admin_role(&revoker.wids).map(|role| format!("you are a {role} of this organisation"))
}

fn confirm_page(
    state: &AppState,
    revoker: &Revoker,
    partner: Partner,
    versions: Vec<GrantVersion>,
    because: String,
    csrf: String,
) -> ConfirmPage {
    ConfirmPage {
        app_name: state.config.entra.app_name.clone(),
        upn: revoker.upn.clone(),
        because,
        organisation: partner.display_name.clone(),
        tenant_id: partner.tenant_id.to_string(),
        domain: partner.domain.clone(),
        status: partner.status.as_str(),
        status_reason: partner.status_reason.clone(),
        consented_by: partner.consented_by.clone(),
        consented_at: when(Some(partner.consented_at)),
        mfa: partner.mfa,
        last_rotation: when(Some(partner.last_refresh_at)),
        horizon: when(Some(partner.horizon())),
        versions: versions
            .into_iter()
            .map(|v| VersionRow {
                version: v.version,
                source: v.source,
                created: when(Some(v.created_at)),
                sealed: v.shredded_at.is_none(),
            })
            .collect(),
        csrf,
    }
}

async fn confirm(
    State(state): State<AppState>,
    session: Session,
    body: Bytes,
) -> PageResult<RevokedPage> {
    let form = serde_urlencoded::from_bytes::<ConfirmForm>(&body).map_err(|_| expired_form())?;
    if !csrf_matches(&session, &form.csrf).await? {
        return Err(expired_form());
    }
    let revoker = take_revoker(&state, &session).await?;
    let tenant = TenantId::parse(&revoker.tenant)
        .map_err(|_| unavailable("the revoke sign-in in the session names no valid tenant"))?;
    if TenantId::parse(form.tenant.trim()).ok().as_ref() != Some(&tenant) {
        tracing::warn!(tenant.id = %tenant, "revoke refused: the form names another tenant");
        return Err(refusal(
            StatusCode::FORBIDDEN,
            "Wrong organisation",
            "This confirmation names another tenant than the one you signed in to. Nothing was revoked.",
            "Open the revoke page again and sign in with an account of the organisation whose grant you want to revoke.",
        ));
    }
    // Checked again: a new consent since the sign-in may have changed who may revoke.
    let (partner, _, because) = entitled(&state, &tenant, &revoker).await?;
    let (shredded, at) = purge(&state, &tenant, &revoker, because).await?;
    tracing::warn!(tenant.id = %tenant, shredded, "partner revoked by its own admin");
    Ok(RevokedPage {
        app_name: state.config.entra.app_name.clone(),
        client_id: state.idp.client_id().to_string(),
        organisation: partner.display_name,
        tenant_id: tenant.to_string(),
        upn: revoker.upn,
        shredded,
        at: when(Some(at)),
    })
}

/// The revoke sign-in of this browser, taken out of the session whatever happens next (so
/// confirming again needs a new sign-in), and refused when it is too old.
async fn take_revoker(state: &AppState, session: &Session) -> PageResult<Revoker> {
    let revoker: Option<Revoker> = session.remove(REVOKER_KEY).await.map_err(unavailable)?;
    let Some(revoker) = revoker else {
        return Err(refusal(
            StatusCode::BAD_REQUEST,
            "Sign in first",
            "No revocation sign-in is in progress in this browser, or it was already used. Nothing was revoked.",
            "Open the revoke page again and sign in.",
        ));
    };
    if now() - revoker.signed_in_at > state.config.entra.consent_timeout.as_secs() as i64 {
        return Err(refusal(
            StatusCode::BAD_REQUEST,
            "This page has expired",
            "The sign-in is too old to confirm a revocation. Nothing was revoked.",
            "Open the revoke page again and sign in.",
        ));
    }
    Ok(revoker)
}

/// Purges `tenant` through the broker, as an ops revoke does, and audits who did it and why;
/// returns how many grant versions were shredded, and when.
async fn purge(
    state: &AppState,
    tenant: &TenantId,
    revoker: &Revoker,
    because: String,
) -> PageResult<(u64, i64)> {
    let reason = format!(
        "Revoked by partner admin {} at {PAGE}. The partner must consent again.",
        revoker.upn
    );
    let shredded = match state.broker.revoke(tenant, &reason).await {
        Ok(shredded) => shredded,
        Err(BrokerError::PartnerNotFound) => {
            return Err(refusal(
                StatusCode::NOT_FOUND,
                "Nothing to revoke",
                "samvault no longer holds a grant for your organisation.",
                "There is nothing to do here.",
            ));
        }
        Err(e) => return Err(unavailable(format!("purge failed: {e}")).for_tenant(tenant)),
    };
    let at = now();
    let detail = serde_json::json!({
        "upn": revoker.upn, "oid": revoker.oid, "because": because, "shredded": shredded,
    });
    let actor = format!("partner:{}", revoker.upn);
    audit::append(
        &state.db,
        &actor,
        "partner.revoke",
        Some(tenant.as_str()),
        detail,
        at,
    )
    .await
    .map_err(|e| unavailable(format!("audit entry not written: {e}")).for_tenant(tenant))?;
    Ok((shredded, at))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn revoker(oid: &str, wids: &[&str]) -> Revoker {
        Revoker {
            tenant: "6f3a2a5e-0c1d-4a3b-8f4e-1c2d3e4f5a01".into(),
            upn: "someone@contoso.example".into(),
            oid: oid.into(),
            wids: wids.iter().map(|w| w.to_string()).collect(),
            signed_in_at: 0,
        }
    }

    #[test]
    fn the_consenting_user_or_an_application_admin_may_revoke() {
        assert!(entitlement(&revoker("jane", &[]), Some("jane")).is_some());
        let global_admin = revoker("grace", &["62E90394-69F5-4237-9190-012177145E10"]);
        assert_eq!(
            entitlement(&global_admin, Some("jane")).as_deref(),
            Some("you are a Global Administrator of this organisation")
        );
        let cloud_app_admin = revoker("c", &["158c047a-c907-4556-b7ef-446551a6b5f7"]);
        assert!(entitlement(&cloud_app_admin, None).is_some());
    }

    #[test]
    fn anyone_else_may_not() {
        assert!(entitlement(&revoker("sam", &[]), Some("jane")).is_none());
        // Imported grants have no consenting oid: only admins.
        assert!(entitlement(&revoker("sam", &[]), None).is_none());
        // A directory role that cannot manage applications (Helpdesk Administrator).
        let helpdesk = revoker("h", &["729827e3-9c14-49f7-bb1b-9608f156bbb8"]);
        assert!(entitlement(&helpdesk, Some("jane")).is_none());
    }
}
