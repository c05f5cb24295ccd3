//! A partner's page: facts, customers, consents, status changes, attempts, grant versions,
//! requests.

use super::customers::{CustomerSection, customers_after};
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
pub(super) struct DetailPage {
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
    /// The first configured customer resource: what the customer access check asks for.
    customer_resource: String,
    customers: CustomerSection,
    history: History,
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
    Path(raw): Path<String>,
    RawQuery(query): RawQuery,
    signed_in: SignedIn<Viewer>,
) -> PageResult<DetailPage> {
    let listed = existing(&state, &raw).await?;
    let after = customers_after(query.as_deref())?;
    let tenant = &listed.partner.tenant_id;
    let (history, customers) = tokio::try_join!(
        History::of(&state.db, tenant),
        CustomerSection::of(
            &state.db,
            &state.config.customers.grants,
            tenant,
            after.as_ref()
        ),
    )
    .map_err(|e| unavailable(e).for_tenant(tenant))?;
    let notice: Option<Notice> = signed_in.session.remove(NOTICE_KEY).await.ok().flatten();
    let chrome = signed_in.chrome(Section::Partners);
    Ok(DetailPage::new(
        &state, chrome, notice, &listed, history, customers,
    ))
}

/// The latest rows of each history the page shows.
struct History {
    consents: Vec<ConsentRow>,
    grants: Vec<GrantRow>,
    changes: Vec<ChangeRow>,
    attempts: Vec<AttemptRow>,
    requests: Vec<RequestRow>,
    log_rows: i64,
    log_since: String,
}

impl History {
    async fn of(db: &crate::storage::Db, tenant: &TenantId) -> Result<History, StorageError> {
        let (request_counts, window) = requests::tenant_counts(db, tenant.as_str()).await?;
        Ok(History {
            consents: rows_of(
                partners::consents(db, tenant, HISTORY_ROWS).await?,
                consent_row,
            ),
            grants: rows_of(
                partners::grant_versions(db, tenant, HISTORY_ROWS).await?,
                grant_row,
            ),
            changes: rows_of(
                partners::status_changes(db, tenant, HISTORY_ROWS).await?,
                change_row,
            ),
            attempts: rows_of(
                rotation::attempts(db, tenant, HISTORY_ROWS).await?,
                attempt_row,
            ),
            requests: rows_of(request_counts, request_row),
            log_rows: window.rows,
            log_since: when(window.since),
        })
    }
}

fn rows_of<T, R>(records: Vec<T>, row: fn(T) -> R) -> Vec<R> {
    records.into_iter().map(row).collect()
}

impl DetailPage {
    fn new(
        state: &AppState,
        chrome: Chrome,
        notice: Option<Notice>,
        listed: &ListedPartner,
        history: History,
        customers: CustomerSection,
    ) -> Self {
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
            next_rotation: next_rotation(listed),
            failures: p.failures,
            grant_version: p.grant_version,
            resources: state
                .config
                .entra
                .resources
                .iter()
                .map(|r| r.to_string())
                .collect(),
            customer_resource: state.config.customers.first_resource().to_string(),
            customers,
            history,
        }
    }
}

fn consent_row(c: partners::ConsentRecord) -> ConsentRow {
    ConsentRow {
        upn: c.upn,
        user_name: c.user_name.unwrap_or_default(),
        when: when(Some(c.consented_at)),
        mfa: c.mfa,
        amr: c.amr,
        scopes: c.scopes,
        invitation: c.invitation,
    }
}

fn grant_row(g: partners::GrantVersion) -> GrantRow {
    GrantRow {
        version: g.version,
        source: g.source,
        created: when(Some(g.created_at)),
        shredded: g.shredded_at.map_or_else(String::new, |at| when(Some(at))),
        kek_id: g.kek_id.unwrap_or_default(),
    }
}

fn change_row(c: partners::StatusChange) -> ChangeRow {
    ChangeRow {
        when: when(Some(c.at)),
        from: c.from.unwrap_or_default(),
        to: c.to,
        code: c.code.map(|c| format!("AADSTS{c}")).unwrap_or_default(),
        reason: c.reason,
    }
}

fn request_row(r: requests::TenantRequests) -> RequestRow {
    RequestRow {
        client: r.client_name.unwrap_or_else(|| "(deleted client)".into()),
        client_id: r.client_id,
        resource: r.resource,
        requests: r.counts.requests,
        issued: r.counts.issued,
        issued_mfa: r.counts.issued_mfa,
        cached: r.counts.cached,
        last: when(Some(r.last_at)),
    }
}
