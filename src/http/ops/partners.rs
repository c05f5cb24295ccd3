//! `/ops/partners`: the partner list (search, status filter, four sort orders, keyset
//! pagination), a partner's record, and what ops can do to it: rotate now, a live access
//! check per resource, revoke and purge (admin), an onboarding link pinned to the tenant.
//!
//! Every query parameter and form field is hostile until parsed: a bad one is a 400 page
//! and changes nothing. No page shows a token: the access check decodes the claims of the
//! access tokens it obtains, and only those claims leave the broker.

use askama::Template;
use askama_web::WebTemplate;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use base64::Engine;
use serde::Deserialize;
use tower_sessions::Session;

use super::{
    Chrome, Section, action, audit_action, bad_request, not_found, page, unavailable, when,
};
use crate::broker::BrokerError;
use crate::domain::{PartnerStatus, TenantId};
use crate::http::AppState;
use crate::idp::errors::describe;
use crate::storage::ops_users::{OpsUser, Role};
use crate::storage::partners::{self, ListedPartner, PartnerQuery, PartnerSort, Position};
use crate::storage::{StorageError, now, requests, rotation};

/// Rows per page of the list.
const PAGE_SIZE: usize = 50;
/// Longest search term accepted (names, domains and tenant ids are all shorter).
const MAX_SEARCH_CHARS: usize = 100;
/// Longest cursor accepted; far above what a real display name produces.
const MAX_CURSOR_CHARS: usize = 4096;
/// How many rows of each history the detail page shows.
const HISTORY_ROWS: i64 = 20;
/// How long an onboarding link made from the dashboard stays valid.
const INVITATION_LIFETIME_SECS: i64 = 7 * 86_400;
/// The session key of the one-time outcome message shown on a partner's page.
const NOTICE_KEY: &str = "ops.partners.notice";

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/ops/partners", get(list))
        .route("/ops/partners/{tenant_id}", get(detail))
        .route("/ops/partners/{tenant_id}/rotate", post(rotate))
        .route("/ops/partners/{tenant_id}/check", post(check))
        .route("/ops/partners/{tenant_id}/revoke", post(revoke))
        .route("/ops/partners/{tenant_id}/invite", post(invite))
}

// ---------------------------------------------------------------------------------------
// The list
// ---------------------------------------------------------------------------------------

#[derive(Deserialize, Default)]
struct ListParams {
    #[serde(default)]
    q: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    sort: String,
    #[serde(default)]
    cursor: String,
}

/// The list's parameters, parsed.
#[derive(Debug, PartialEq)]
struct ListRequest {
    search: Option<String>,
    status: Option<PartnerStatus>,
    sort: PartnerSort,
    after: Option<Position>,
}

impl ListRequest {
    fn parse(raw: Option<&str>) -> Result<Self, &'static str> {
        let params: ListParams = serde_urlencoded::from_str(raw.unwrap_or(""))
            .map_err(|_| "The address has parameters this page does not understand.")?;
        let search = params.q.trim();
        if search.chars().count() > MAX_SEARCH_CHARS {
            return Err("The search term is too long: at most 100 characters.");
        }
        if search.chars().any(char::is_control) {
            return Err("The search term contains control characters.");
        }
        let status = match params.status.as_str() {
            "" | "all" => None,
            other => Some(
                PartnerStatus::parse(other)
                    .ok_or("Unknown status: use active, at_risk, reconsent_required or revoked.")?,
            ),
        };
        let sort = match params.sort.as_str() {
            "" => PartnerSort::Name,
            other => PartnerSort::parse(other)
                .ok_or("Unknown sort order: use name, expiry, status or last_refresh.")?,
        };
        let after = match params.cursor.as_str() {
            "" => None,
            cursor => Some(
                decode_cursor(sort, cursor)
                    .ok_or("This page link is damaged or belongs to another sort order.")?,
            ),
        };
        Ok(ListRequest {
            search: (!search.is_empty()).then(|| search.to_string()),
            status,
            sort,
            after,
        })
    }

    /// The list's address with these filters and `cursor` (omitting empty parameters).
    fn href(&self, cursor: Option<&str>) -> String {
        let mut pairs: Vec<(&str, &str)> = Vec::new();
        if let Some(q) = &self.search {
            pairs.push(("q", q));
        }
        if let Some(status) = self.status {
            pairs.push(("status", status.as_str()));
        }
        if self.sort != PartnerSort::Name {
            pairs.push(("sort", self.sort.as_str()));
        }
        if let Some(cursor) = cursor {
            pairs.push(("cursor", cursor));
        }
        match serde_urlencoded::to_string(&pairs) {
            Ok(query) if !query.is_empty() => format!("/ops/partners?{query}"),
            _ => "/ops/partners".to_string(),
        }
    }
}

/// A cursor for the "Next" link: the last row's sort key as a compact JSON array, base64url.
/// It holds nothing the page does not show already (a name, a time, a tenant id).
fn encode_cursor(position: &Position) -> String {
    let wire = match position {
        Position::Name { name, tenant } => serde_json::json!(["n", name, tenant.as_str()]),
        Position::Refresh { at, tenant } => serde_json::json!(["r", at, tenant.as_str()]),
        Position::Status {
            status,
            name,
            tenant,
        } => serde_json::json!(["s", status.as_str(), name, tenant.as_str()]),
    };
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(wire.to_string())
}

/// Reads a cursor back; `None` unless it is well-formed and belongs to `sort`.
fn decode_cursor(sort: PartnerSort, cursor: &str) -> Option<Position> {
    use serde_json::Value;
    if cursor.len() > MAX_CURSOR_CHARS {
        return None;
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()?;
    let Value::Array(items) = serde_json::from_slice::<Value>(&bytes).ok()? else {
        return None;
    };
    let text = |v: &Value| v.as_str().map(str::to_string);
    let tenant = |v: &Value| TenantId::parse(v.as_str()?).ok();
    match (sort, items.as_slice()) {
        (PartnerSort::Name, [Value::String(k), name, t]) if k == "n" => Some(Position::Name {
            name: text(name)?,
            tenant: tenant(t)?,
        }),
        (PartnerSort::Expiry | PartnerSort::LastRefresh, [Value::String(k), at, t]) if k == "r" => {
            Some(Position::Refresh {
                at: at.as_i64()?,
                tenant: tenant(t)?,
            })
        }
        (PartnerSort::Status, [Value::String(k), status, name, t]) if k == "s" => {
            Some(Position::Status {
                status: PartnerStatus::parse(status.as_str()?)?,
                name: text(name)?,
                tenant: tenant(t)?,
            })
        }
        _ => None,
    }
}

/// A partner as a row of the list.
struct PartnerRow {
    tenant_id: String,
    name: String,
    domain: String,
    status: &'static str,
    expiry: Expiry,
    last_refresh: String,
    next_rotation: String,
    mfa: bool,
}

/// Days until the 90-day horizon, and how worried to be about it.
struct Expiry {
    text: String,
    class: &'static str,
}

impl Expiry {
    fn of(partner: &partners::Partner, warn_secs: i64, at: i64) -> Self {
        if partner.status == PartnerStatus::Revoked {
            return Expiry {
                text: "—".into(),
                class: "",
            };
        }
        let left = partner.horizon() - at;
        let days = left.div_euclid(86_400);
        if left <= 0 {
            Expiry {
                text: "expired".into(),
                class: "bad",
            }
        } else {
            Expiry {
                text: days.to_string(),
                class: if left < warn_secs { "expiring" } else { "" },
            }
        }
    }
}

fn next_rotation(listed: &ListedPartner) -> String {
    if listed.partner.status.is_usable() {
        when(Some(listed.rotate_at))
    } else {
        "not scheduled".into()
    }
}

impl PartnerRow {
    fn new(listed: &ListedPartner, warn_secs: i64, at: i64) -> Self {
        let p = &listed.partner;
        PartnerRow {
            tenant_id: p.tenant_id.to_string(),
            name: p.display_name.clone(),
            domain: p.domain.clone().unwrap_or_default(),
            status: p.status.as_str(),
            expiry: Expiry::of(p, warn_secs, at),
            last_refresh: when(Some(p.last_refresh_at)),
            next_rotation: next_rotation(listed),
            mfa: p.mfa,
        }
    }
}

/// An `<option>` of a filter.
struct Choice {
    value: &'static str,
    label: &'static str,
    selected: bool,
}

impl Choice {
    fn list(options: &[(&'static str, &'static str)], current: &str) -> Vec<Choice> {
        options
            .iter()
            .map(|&(value, label)| Choice {
                value,
                label,
                selected: value == current,
            })
            .collect()
    }
}

#[derive(Template, WebTemplate)]
#[template(path = "ops/partners.html")]
struct ListPage {
    chrome: Chrome,
    q: String,
    statuses: Vec<Choice>,
    sorts: Vec<Choice>,
    rows: Vec<PartnerRow>,
    first_page: Option<String>,
    next_page: Option<String>,
}

async fn list(
    State(state): State<AppState>,
    session: Session,
    RawQuery(raw): RawQuery,
) -> Response {
    let (_, chrome) = match page(&state, &session, Role::Viewer, Section::Partners).await {
        Ok(signed_in) => signed_in,
        Err(response) => return response,
    };
    let request = match ListRequest::parse(raw.as_deref()) {
        Ok(request) => request,
        Err(why) => return bad_request(why),
    };
    let query = PartnerQuery {
        search: request.search.clone(),
        status: request.status,
        sort: request.sort,
        after: request.after.clone(),
        limit: PAGE_SIZE as i64 + 1,
    };
    let mut found = match partners::list_page(&state.db, &query).await {
        Ok(found) => found,
        Err(e) => return storage_failure(&e),
    };
    let next_page = (found.len() > PAGE_SIZE).then(|| {
        found.truncate(PAGE_SIZE);
        let last = &found[PAGE_SIZE - 1].partner;
        request.href(Some(&encode_cursor(&request.sort.position_of(last))))
    });
    let warn = state.broker.settings().expiry_warn.as_secs() as i64;
    let at = now();
    ListPage {
        chrome,
        q: request.search.clone().unwrap_or_default(),
        statuses: Choice::list(
            &[
                ("all", "All statuses"),
                ("active", "active"),
                ("at_risk", "at_risk"),
                ("reconsent_required", "reconsent_required"),
                ("revoked", "revoked"),
            ],
            request.status.map_or("all", PartnerStatus::as_str),
        ),
        sorts: Choice::list(
            &[
                ("name", "Name"),
                ("expiry", "Days until expiry (soonest first)"),
                ("status", "Status"),
                ("last_refresh", "Last refresh (newest first)"),
            ],
            request.sort.as_str(),
        ),
        rows: found
            .iter()
            .map(|listed| PartnerRow::new(listed, warn, at))
            .collect(),
        first_page: request.after.is_some().then(|| request.href(None)),
        next_page,
    }
    .into_response()
}

fn storage_failure(e: &StorageError) -> Response {
    tracing::error!(error = %e, "ops partners: storage failed");
    unavailable()
}

// ---------------------------------------------------------------------------------------
// A partner's page
// ---------------------------------------------------------------------------------------

/// The answer to a path whose tenant id is not a GUID.
fn malformed_tenant() -> Response {
    bad_request("A tenant id is a GUID like 6f3a2a5e-0c1d-4a3b-8f4e-1c2d3e4f5a01.")
}

async fn existing(state: &AppState, tenant: &TenantId) -> Result<ListedPartner, Response> {
    match partners::get_listed(&state.db, tenant).await {
        Ok(Some(listed)) => Ok(listed),
        Ok(None) => Err(not_found()),
        Err(e) => Err(storage_failure(&e)),
    }
}

/// A one-time message for the next view of a partner's page.
#[derive(serde::Serialize, Deserialize)]
struct Notice {
    ok: bool,
    text: String,
}

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

async fn detail(
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

// ---------------------------------------------------------------------------------------
// Actions
// ---------------------------------------------------------------------------------------

/// Every action's form: the CSRF token, and for revocation the typed confirmation.
#[derive(Deserialize, Default)]
struct ActionForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    confirm: String,
}

/// The signed-in user with `role`, the form's CSRF token checked, and the existing partner;
/// or the page to answer instead. The role comes before the token (see [`action`]), and a
/// body that is not a form counts as a form without a token: whoever sent it learns no more
/// than from any other refused form.
async fn act(
    state: &AppState,
    session: &Session,
    role: Role,
    raw_tenant: &str,
    body: &Bytes,
) -> Result<(OpsUser, Chrome, ActionForm, ListedPartner), Response> {
    let form: ActionForm = serde_urlencoded::from_bytes(body).unwrap_or_default();
    let (user, chrome) = action(state, session, role, Section::Partners, &form.csrf).await?;
    let tenant = TenantId::parse(raw_tenant).map_err(|_| malformed_tenant())?;
    let listed = existing(state, &tenant).await?;
    Ok((user, chrome, form, listed))
}

/// What a failed redemption means, in words for the person who asked for it.
fn explain(error: &BrokerError) -> String {
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
fn log_internal(tenant: &TenantId, error: &BrokerError) {
    if matches!(error, BrokerError::Storage(_) | BrokerError::Vault(_)) {
        tracing::error!(tenant.id = %tenant, error = %error, "ops action failed");
    }
}

/// Back to the partner's page, with a one-time message.
async fn back_with(session: &Session, tenant: &TenantId, ok: bool, text: String) -> Response {
    if session
        .insert(NOTICE_KEY, Notice { ok, text })
        .await
        .is_err()
    {
        return unavailable();
    }
    Redirect::to(&format!("/ops/partners/{tenant}")).into_response()
}

async fn rotate(
    State(state): State<AppState>,
    session: Session,
    Path(raw): Path<String>,
    body: Bytes,
) -> Response {
    let (user, _, _, listed) = match act(&state, &session, Role::Operator, &raw, &body).await {
        Ok(acting) => acting,
        Err(response) => return response,
    };
    let tenant = listed.partner.tenant_id;
    let result = state
        .broker
        .rotate(&tenant, crate::broker::Source::Manual)
        .await;
    let outcome = result
        .as_ref()
        .map_or_else(BrokerError::code, |_| "success");
    if let Err(response) = audit_action(
        &state,
        &user,
        "ops.partner.rotate",
        Some(tenant.as_str()),
        serde_json::json!({ "outcome": outcome }),
    )
    .await
    {
        return response;
    }
    match result {
        Ok(_) => {
            back_with(
                &session,
                &tenant,
                true,
                "Rotated: the refresh token was redeemed and the new one stored.".into(),
            )
            .await
        }
        Err(e) => {
            log_internal(&tenant, &e);
            back_with(
                &session,
                &tenant,
                false,
                format!("Rotation failed. {}", explain(&e)),
            )
            .await
        }
    }
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
struct CheckPage {
    chrome: Chrome,
    tenant_id: String,
    name: String,
    rows: Vec<CheckRow>,
}

fn outcome_label(error: &BrokerError) -> &'static str {
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

async fn check(
    State(state): State<AppState>,
    session: Session,
    Path(raw): Path<String>,
    body: Bytes,
) -> Response {
    let (user, chrome, _, listed) = match act(&state, &session, Role::Operator, &raw, &body).await {
        Ok(acting) => acting,
        Err(response) => return response,
    };
    let tenant = listed.partner.tenant_id;
    let mut rows = Vec::new();
    let mut audited = Vec::new();
    // One after the other: each redemption writes back the refresh token the next one uses.
    for resource in &state.config.resources {
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
                CheckRow {
                    resource: resource.to_string(),
                    outcome: outcome_label(&e),
                    class: if matches!(e, BrokerError::ResourceNotConsented { .. }) {
                        "warn"
                    } else {
                        "bad"
                    },
                    mfa: None,
                    amr: String::new(),
                    scopes: String::new(),
                    expires: String::new(),
                    upn: String::new(),
                    detail: explain(&e),
                }
            }
        };
        audited.push(serde_json::json!({
            "resource": row.resource, "outcome": row.outcome, "mfa": row.mfa,
        }));
        rows.push(row);
    }
    if let Err(response) = audit_action(
        &state,
        &user,
        "ops.partner.check",
        Some(tenant.as_str()),
        serde_json::json!({ "resources": audited }),
    )
    .await
    {
        return response;
    }
    CheckPage {
        chrome,
        tenant_id: tenant.to_string(),
        name: listed.partner.display_name,
        rows,
    }
    .into_response()
}

async fn revoke(
    State(state): State<AppState>,
    session: Session,
    Path(raw): Path<String>,
    body: Bytes,
) -> Response {
    let (user, _, form, listed) = match act(&state, &session, Role::Admin, &raw, &body).await {
        Ok(acting) => acting,
        Err(response) => return response,
    };
    let tenant = listed.partner.tenant_id;
    // The admin types the tenant id: a click alone cannot purge a partner.
    if TenantId::parse(form.confirm.trim()).ok().as_ref() != Some(&tenant) {
        return bad_request(
            "The tenant id you typed does not match this partner's. Nothing was changed.",
        );
    }
    let reason = format!(
        "Revoked and purged by ops user {}. The partner must consent again.",
        user.username
    );
    let result = state.broker.revoke(&tenant, &reason).await;
    let detail = match &result {
        Ok(shredded) => serde_json::json!({ "outcome": "revoked", "shredded": shredded }),
        Err(e) => serde_json::json!({ "outcome": e.code() }),
    };
    if let Err(response) = audit_action(
        &state,
        &user,
        "ops.partner.revoke",
        Some(tenant.as_str()),
        detail,
    )
    .await
    {
        return response;
    }
    match result {
        Ok(shredded) => {
            tracing::warn!(tenant.id = %tenant, by = %user.username, shredded, "partner revoked from the dashboard");
            back_with(
                &session,
                &tenant,
                true,
                format!("Revoked: {shredded} sealed grant version(s) crypto-shredded; the token API refuses this partner until it consents again."),
            )
            .await
        }
        Err(e) => {
            log_internal(&tenant, &e);
            back_with(
                &session,
                &tenant,
                false,
                format!("Revocation did not complete. {}", explain(&e)),
            )
            .await
        }
    }
}

#[derive(Template, WebTemplate)]
#[template(path = "ops/partner_invite.html")]
struct InvitePage {
    chrome: Chrome,
    tenant_id: String,
    name: String,
    url: String,
    expires: String,
}

async fn invite(
    State(state): State<AppState>,
    session: Session,
    Path(raw): Path<String>,
    body: Bytes,
) -> Response {
    let (user, chrome, _, listed) = match act(&state, &session, Role::Operator, &raw, &body).await {
        Ok(acting) => acting,
        Err(response) => return response,
    };
    let tenant = listed.partner.tenant_id;
    let (url, expires_at) = match crate::http::onboard::create_invitation(
        &state.db,
        &state.config.public_url,
        Some(&tenant),
        INVITATION_LIFETIME_SECS,
    )
    .await
    {
        Ok(created) => created,
        Err(e) => return storage_failure(&e),
    };
    if let Err(response) = audit_action(
        &state,
        &user,
        "ops.partner.invite",
        Some(tenant.as_str()),
        serde_json::json!({ "expires_at": expires_at }),
    )
    .await
    {
        return response;
    }
    (
        StatusCode::OK,
        InvitePage {
            chrome,
            tenant_id: tenant.to_string(),
            name: listed.partner.display_name,
            url: url.to_string(),
            expires: when(Some(expires_at)),
        },
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(n: u32) -> TenantId {
        TenantId::parse(&format!("00000000-0000-4000-8000-{n:012}")).unwrap()
    }

    #[test]
    fn cursors_round_trip_in_their_sort_order() {
        let cases = [
            (
                PartnerSort::Name,
                Position::Name {
                    name: "Contoso \"Ltd\" <b>ü</b>\n".into(),
                    tenant: tenant(1),
                },
            ),
            (
                PartnerSort::Expiry,
                Position::Refresh {
                    at: 1_790_000_000,
                    tenant: tenant(2),
                },
            ),
            (
                PartnerSort::LastRefresh,
                Position::Refresh {
                    at: -5,
                    tenant: tenant(3),
                },
            ),
            (
                PartnerSort::Status,
                Position::Status {
                    status: PartnerStatus::AtRisk,
                    name: String::new(),
                    tenant: tenant(4),
                },
            ),
        ];
        for (sort, position) in cases {
            let cursor = encode_cursor(&position);
            assert!(
                cursor
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
                "URL-safe: {cursor}"
            );
            assert_eq!(decode_cursor(sort, &cursor), Some(position));
        }
    }

    #[test]
    fn cursors_are_refused_when_damaged_or_from_another_order() {
        let name = encode_cursor(&Position::Name {
            name: "Contoso".into(),
            tenant: tenant(1),
        });
        assert_eq!(decode_cursor(PartnerSort::Expiry, &name), None);
        assert_eq!(decode_cursor(PartnerSort::Status, &name), None);
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        for bad in [
            "".to_string(),
            "!!!".to_string(),
            name[..name.len() - 3].to_string(),
            b64("{}"),
            b64("[\"n\", \"Contoso\"]"),
            b64("[\"n\", \"Contoso\", \"not-a-guid\"]"),
            b64("[\"n\", 5, \"00000000-0000-4000-8000-000000000001\"]"),
            b64("[\"r\", \"soon\", \"00000000-0000-4000-8000-000000000001\"]"),
            b64("[\"s\", \"sleeping\", \"x\", \"00000000-0000-4000-8000-000000000001\"]"),
            "A".repeat(MAX_CURSOR_CHARS + 1),
        ] {
            for sort in [
                PartnerSort::Name,
                PartnerSort::Expiry,
                PartnerSort::Status,
                PartnerSort::LastRefresh,
            ] {
                assert_eq!(decode_cursor(sort, &bad), None, "{bad}");
            }
        }
    }

    #[test]
    fn list_parameters_are_parsed_or_refused() {
        let parsed = ListRequest::parse(Some("q=+Contoso+&status=at_risk&sort=expiry")).unwrap();
        assert_eq!(parsed.search.as_deref(), Some("Contoso"));
        assert_eq!(parsed.status, Some(PartnerStatus::AtRisk));
        assert_eq!(parsed.sort, PartnerSort::Expiry);
        assert_eq!(
            parsed.href(Some("abc")),
            "/ops/partners?q=Contoso&status=at_risk&sort=expiry&cursor=abc"
        );
        let empty = ListRequest::parse(Some("q=&status=all&sort=&cursor=")).unwrap();
        assert_eq!(empty, ListRequest::parse(None).unwrap());
        assert_eq!(empty.href(None), "/ops/partners");
        let long = format!("q={}", "x".repeat(MAX_SEARCH_CHARS + 1));
        for bad in [
            "status=sleeping",
            "sort=random",
            "cursor=%%%",
            "cursor=abc",
            "q=a%00b",
            long.as_str(),
        ] {
            assert!(ListRequest::parse(Some(bad)).is_err(), "{bad}");
        }
    }
}
