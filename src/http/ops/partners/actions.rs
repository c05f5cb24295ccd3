//! What ops can do to a partner: rotate now, access check, revoke and purge, onboarding link.

use super::*;
use crate::onboarding;

/// What a failed redemption means, in words for the person who asked for it.
pub(super) fn explain(error: &BrokerError) -> String {
    let entra = |code: Option<u32>| {
        code.map(|c| {
            let info = describe(c);
            format!(" (AADSTS{c}): {} {}", info.meaning, info.action)
        })
    };
    match error {
        BrokerError::PartnerNotFound => "The partner no longer exists.".into(),
        BrokerError::ReconsentRequired { code } => {
            match entra(code.as_deref().and_then(|c| c.parse().ok())) {
                Some(why) => format!("The grant is no longer usable{why}"),
                None => "The grant is not usable (revoked, purged or waiting for a new consent). Send the partner an onboarding link.".into(),
            }
        }
        BrokerError::ResourceNotConsented { code } => format!(
            "The partner has not consented to this resource{}",
            entra(*code).unwrap_or_else(|| ".".into())
        ),
        BrokerError::AppCredentialsInvalid { code } => format!(
            "Entra ID rejects the CPV app's own credentials{}",
            entra(*code).unwrap_or_else(|| ".".into())
        ),
        BrokerError::IdpUnavailable { retry_after } => format!(
            "Entra ID is unavailable or throttling; try again{}.",
            retry_after.map_or_else(String::new, |d| format!(" in {} s", d.as_secs()))
        ),
        BrokerError::IdpError { code } => format!(
            "Entra ID answered with an unexpected error{}",
            entra(*code).unwrap_or_else(|| ".".into())
        ),
        BrokerError::KeyUnavailable => {
            "The key provider did not answer; nothing was redeemed.".into()
        }
        BrokerError::Storage(_) | BrokerError::Vault(_) => {
            "samvault could not read or write the grant; see the service log.".into()
        }
    }
}

/// Logs what the person does not see (storage and vault failures have no place on a page).
pub(super) fn log_internal(tenant: &TenantId, error: &BrokerError) {
    if matches!(error, BrokerError::Storage(_) | BrokerError::Vault(_)) {
        tracing::error!(tenant.id = %tenant, error = %error, "ops action failed");
    }
}

/// Back to the partner's page, with a one-time message.
pub(super) async fn back_with(
    session: &Session,
    tenant: &TenantId,
    ok: bool,
    text: String,
) -> PageResult {
    session
        .insert(NOTICE_KEY, Notice { ok, text })
        .await
        .map_err(unavailable)?;
    Ok(Redirect::to(&format!("/ops/partners/{tenant}")).into_response())
}

pub(super) async fn rotate(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    action: Action<Operator>,
) -> PageResult {
    let tenant = existing(&state, &raw).await?.partner.tenant_id;
    let result = state
        .broker
        .rotate(&tenant, crate::broker::Source::Manual)
        .await;
    let outcome = result
        .as_ref()
        .map_or_else(BrokerError::code, |_| "success");
    let detail = serde_json::json!({ "outcome": outcome });
    audit_action(
        &state,
        &action.user,
        "ops.partner.rotate",
        Some(tenant.as_str()),
        detail,
    )
    .await?;
    let (ok, text) = match result {
        Ok(_) => (
            true,
            "Rotated: the refresh token was redeemed and the new one stored.".into(),
        ),
        Err(e) => {
            log_internal(&tenant, &e);
            (false, format!("Rotation failed. {}", explain(&e)))
        }
    };
    back_with(&action.session, &tenant, ok, text).await
}

/// One resource's line of an access check.
struct CheckRow {
    resource: String,
    outcome: &'static str,
    class: &'static str,
    mfa: Option<bool>,
    amr: String,
    scopes: String,
    expires: String,
    upn: String,
    detail: String,
}

#[derive(Template, WebTemplate)]
#[template(path = "ops/partner_check.html")]
pub(super) struct CheckPage {
    chrome: Chrome,
    tenant_id: String,
    name: String,
    rows: Vec<CheckRow>,
}

pub(super) fn outcome_label(error: &BrokerError) -> &'static str {
    match error {
        BrokerError::PartnerNotFound => "partner not found",
        BrokerError::ReconsentRequired { .. } => "reconsent required",
        BrokerError::ResourceNotConsented { .. } => "resource not consented",
        BrokerError::AppCredentialsInvalid { .. } => "app credentials rejected",
        BrokerError::IdpUnavailable { .. } => "Entra ID unavailable",
        BrokerError::IdpError { .. } => "Entra ID error",
        BrokerError::KeyUnavailable => "key provider unavailable",
        BrokerError::Storage(_) | BrokerError::Vault(_) => "samvault error",
    }
}

pub(super) async fn check(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    action: Action<Operator>,
) -> PageResult<CheckPage> {
    let listed = existing(&state, &raw).await?;
    let tenant = listed.partner.tenant_id;
    let mut rows = Vec::new();
    // One after the other: each redemption writes back the refresh token the next one uses.
    for resource in &state.config.entra.resources {
        let row = match state.broker.probe(&tenant, resource).await {
            Ok(probe) => CheckRow {
                resource: resource.to_string(),
                outcome: "issued",
                class: "ok",
                mfa: Some(probe.claims.mfa()),
                amr: probe.claims.amr.join(" "),
                scopes: probe.claims.scp.clone().unwrap_or_default(),
                expires: when(Some(probe.expires_at)),
                upn: probe.claims.upn.clone().unwrap_or_default(),
                detail: String::new(),
            },
            Err(e) => {
                log_internal(&tenant, &e);
                CheckRow::failed(resource.to_string(), &e)
            }
        };
        rows.push(row);
    }
    let audited: Vec<_> = rows
        .iter()
        .map(|row| {
            serde_json::json!({
                "resource": row.resource, "outcome": row.outcome, "mfa": row.mfa,
            })
        })
        .collect();
    let detail = serde_json::json!({ "resources": audited });
    audit_action(
        &state,
        &action.user,
        "ops.partner.check",
        Some(tenant.as_str()),
        detail,
    )
    .await?;
    Ok(CheckPage {
        chrome: action.chrome(Section::Partners),
        tenant_id: tenant.to_string(),
        name: listed.partner.display_name,
        rows,
    })
}

impl CheckRow {
    fn failed(resource: String, error: &BrokerError) -> Self {
        CheckRow {
            resource,
            outcome: outcome_label(error),
            class: if matches!(error, BrokerError::ResourceNotConsented { .. }) {
                "warn"
            } else {
                "bad"
            },
            mfa: None,
            amr: String::new(),
            scopes: String::new(),
            expires: String::new(),
            upn: String::new(),
            detail: explain(error),
        }
    }
}

pub(super) async fn revoke(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    action: Action<Admin>,
) -> PageResult {
    let tenant = existing(&state, &raw).await?.partner.tenant_id;
    // The admin types the tenant id: a click alone cannot purge a partner.
    let confirm = action.form.one("confirm").unwrap_or("");
    if TenantId::parse(confirm.trim()).ok().as_ref() != Some(&tenant) {
        return Err(bad_request(
            "The tenant id you typed does not match this partner's. Nothing was changed.",
        ));
    }
    let user = &action.user;
    let reason = format!(
        "Revoked and purged by ops user {}. The partner must consent again.",
        user.username
    );
    let result = state.broker.revoke(&tenant, &reason).await;
    let detail = match &result {
        Ok(shredded) => serde_json::json!({ "outcome": "revoked", "shredded": shredded }),
        Err(e) => serde_json::json!({ "outcome": e.code() }),
    };
    audit_action(
        &state,
        user,
        "ops.partner.revoke",
        Some(tenant.as_str()),
        detail,
    )
    .await?;
    let (ok, text) = match result {
        Ok(shredded) => {
            tracing::warn!(tenant.id = %tenant, by = %user.username, shredded, "partner revoked from the dashboard");
            (
                true,
                format!(
                    "Revoked: {shredded} sealed grant version(s) crypto-shredded; the token API refuses this partner until it consents again."
                ),
            )
        }
        Err(e) => {
            log_internal(&tenant, &e);
            (
                false,
                format!("Revocation did not complete. {}", explain(&e)),
            )
        }
    };
    back_with(&action.session, &tenant, ok, text).await
}

#[derive(Template, WebTemplate)]
#[template(path = "ops/partner_invite.html")]
pub(super) struct InvitePage {
    chrome: Chrome,
    tenant_id: String,
    name: String,
    url: String,
    expires: String,
}

pub(super) async fn invite(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    action: Action<Operator>,
) -> PageResult<InvitePage> {
    let listed = existing(&state, &raw).await?;
    let tenant = listed.partner.tenant_id;
    let (url, expires_at) = onboarding::create_invitation(
        &state.db,
        &state.config.server.public_url,
        Some(&tenant),
        INVITATION_LIFETIME_SECS,
    )
    .await
    .map_err(|e| unavailable(e).for_tenant(&tenant))?;
    let detail = serde_json::json!({ "expires_at": expires_at });
    audit_action(
        &state,
        &action.user,
        "ops.partner.invite",
        Some(tenant.as_str()),
        detail,
    )
    .await?;
    Ok(InvitePage {
        chrome: action.chrome(Section::Partners),
        tenant_id: tenant.to_string(),
        name: listed.partner.display_name,
        url: url.to_string(),
        expires: when(Some(expires_at)),
    })
}
