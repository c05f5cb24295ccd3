//! A partner's page: facts, consents, status changes, attempts, grant versions, requests.

use super::*;

struct ConsentRow {
    upn: String,
    user_name: String,
    when: String,
    mfa: bool,
    amr: String,
    scopes: String,
    invitation: bool,
}

struct GrantRow {
    version: i64,
    source: String,
    created: String,
    shredded: String,
    kek_id: String,
}

struct ChangeRow {
    when: String,
    from: String,
    to: String,
    code: String,
    reason: String,
}

struct AttemptRow {
    when: String,
    source: String,
    outcome: String,
    class: &'static str,
    code: String,
    meaning: String,
    action: String,
    duration_ms: i64,
}

struct RequestRow {
    client: String,
    client_id: String,
    resource: String,
    requests: i64,
    issued: i64,
    issued_mfa: i64,
    cached: i64,
    last: String,
}

#[derive(Template, WebTemplate)]
#[template(path = "ops/partner.html")]
struct DetailPage {
    chrome: Chrome,
    notice: Option<Notice>,
    tenant_id: String,
    name: String,
    domain: String,
    status: &'static str,
    /// Rotate and access check only make sense while the grant may be redeemed.
    usable: bool,
    revoked: bool,
    status_code: String,
    status_meaning: String,
    status_reason: String,
    status_changed: String,
    consented_by: String,
    consented_at: String,
    mfa: bool,
    last_refresh: String,
    horizon: String,
    expiry: Expiry,
    next_rotation: String,
    failures: i64,
    grant_version: i64,
    resources: Vec<String>,
    consents: Vec<ConsentRow>,
    grants: Vec<GrantRow>,
    changes: Vec<ChangeRow>,
    attempts: Vec<AttemptRow>,
    requests: Vec<RequestRow>,
    log_rows: i64,
    log_since: String,
}

/// What an attempt's outcome means when Entra gave no code.
fn outcome_meaning(outcome: &str) -> (&'static str, &'static str) {
    match outcome {
        "success" => ("Redeemed; the new refresh token was stored.", "Nothing."),
        "transient" => (
            "Entra ID was unreachable, throttling or failing.",
            "None: samvault retries with backoff, honouring Retry-After.",
        ),
        "key_unavailable" => (
            "The key provider did not answer; nothing was redeemed.",
            "Check the key provider (SAMVAULT_KEY_PROVIDER).",
        ),
        _ => (
            "Entra ID answered in a way samvault does not expect.",
            "Check the service log and Entra ID's status.",
        ),
    }
}

fn attempt_row(a: rotation::AttemptRecord) -> AttemptRow {
    let code: Option<u32> = a.code.as_deref().and_then(|c| c.parse().ok());
    let (meaning, action) = match code {
        Some(code) => {
            let info = describe(code);
            (info.meaning, info.action)
        }
        None => outcome_meaning(&a.outcome),
    };
    AttemptRow {
        when: when(Some(a.at)),
        class: match a.outcome.as_str() {
            "success" => "ok",
            "transient" | "resource_not_consented" => "warn",
            _ => "bad",
        },
        source: a.source,
        outcome: a.outcome,
        code: code.map(|c| format!("AADSTS{c}")).unwrap_or_default(),
        meaning: meaning.into(),
        action: action.into(),
        duration_ms: a.duration_ms,
    }
}

pub(super) async fn detail(
    State(state): State<AppState>,
    session: Session,
    Path(raw): Path<String>,
) -> Response {
    let (_, chrome) = match page(&state, &session, Role::Viewer, Section::Partners).await {
        Ok(signed_in) => signed_in,
        Err(response) => return response,
    };
    let Ok(tenant) = TenantId::parse(&raw) else {
        return malformed_tenant();
    };
    let listed = match existing(&state, &tenant).await {
        Ok(listed) => listed,
        Err(response) => return response,
    };
    let db = &state.db;
    let histories = async {
        Ok::<_, StorageError>((
            partners::consents(db, &tenant, HISTORY_ROWS).await?,
            partners::grant_versions(db, &tenant, HISTORY_ROWS).await?,
            partners::status_changes(db, &tenant, HISTORY_ROWS).await?,
            rotation::attempts(db, &tenant, HISTORY_ROWS).await?,
            requests::tenant_counts(db, tenant.as_str()).await?,
        ))
    }
    .await;
    let (consents, grants, changes, attempts, (request_counts, window)) = match histories {
        Ok(histories) => histories,
        Err(e) => return storage_failure(&e),
    };
    let notice: Option<Notice> = session.remove(NOTICE_KEY).await.ok().flatten();
    let p = &listed.partner;
    let status_code: Option<u32> = p.status_code.as_deref().and_then(|c| c.parse().ok());
    let warn = state.broker.settings().expiry_warn.as_secs() as i64;
    DetailPage {
        chrome,
        notice,
        tenant_id: p.tenant_id.to_string(),
        name: p.display_name.clone(),
        domain: p.domain.clone().unwrap_or_default(),
        status: p.status.as_str(),
        usable: p.status.is_usable(),
        revoked: p.status == PartnerStatus::Revoked,
        status_code: status_code
            .map(|c| format!("AADSTS{c}"))
            .unwrap_or_default(),
        status_meaning: status_code
            .map(|c| describe(c).meaning.to_string())
            .unwrap_or_default(),
        status_reason: p.status_reason.clone().unwrap_or_default(),
        status_changed: when(Some(p.status_changed_at)),
        consented_by: p.consented_by.clone(),
        consented_at: when(Some(p.consented_at)),
        mfa: p.mfa,
        last_refresh: when(Some(p.last_refresh_at)),
        horizon: when(Some(p.horizon())),
        expiry: Expiry::of(p, warn, now()),
        next_rotation: next_rotation(&listed),
        failures: p.failures,
        grant_version: p.grant_version,
        resources: state
            .config
            .resources
            .iter()
            .map(|r| r.to_string())
            .collect(),
        consents: consents
            .into_iter()
            .map(|c| ConsentRow {
                upn: c.upn,
                user_name: c.user_name.unwrap_or_default(),
                when: when(Some(c.consented_at)),
                mfa: c.mfa,
                amr: c.amr,
                scopes: c.scopes,
                invitation: c.invitation,
            })
            .collect(),
        grants: grants
            .into_iter()
            .map(|g| GrantRow {
                version: g.version,
                source: g.source,
                created: when(Some(g.created_at)),
                shredded: g.shredded_at.map_or_else(String::new, |at| when(Some(at))),
                kek_id: g.kek_id.unwrap_or_default(),
            })
            .collect(),
        changes: changes
            .into_iter()
            .map(|c| ChangeRow {
                when: when(Some(c.at)),
                from: c.from.unwrap_or_default(),
                to: c.to,
                code: c.code.map(|c| format!("AADSTS{c}")).unwrap_or_default(),
                reason: c.reason,
            })
            .collect(),
        attempts: attempts.into_iter().map(attempt_row).collect(),
        requests: request_counts
            .into_iter()
            .map(|r| RequestRow {
                client: r.client_name.unwrap_or_else(|| "(deleted client)".into()),
                client_id: r.client_id,
                resource: r.resource,
                requests: r.counts.requests,
                issued: r.counts.issued,
                issued_mfa: r.counts.issued_mfa,
                cached: r.counts.cached,
                last: when(Some(r.last_at)),
            })
            .collect(),
        log_rows: window.rows,
        log_since: when(window.since),
    }
    .into_response()
}
