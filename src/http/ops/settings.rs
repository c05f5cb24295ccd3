//! `/ops/invitations`: onboarding invitations (list for everyone; create and expire for
//! operators; the URL is shown once because only its digest is stored) and `/ops/keys`:
//! which key-encryption key seals what (read-only).

use askama::Template;
use askama_web::WebTemplate;
use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::response::Redirect;
use axum::routing::{get, post};

use super::{
    Action, Chrome, FormFields, Operator, PageResult, Section, SignedIn, Viewer, audit_action,
    bad_request, not_found, unavailable, when,
};
use crate::domain::TenantId;
use crate::http::AppState;
use crate::onboarding::{create_invitation, invitation_id};
use crate::storage::invitations::{self, Invitation};
use crate::storage::{now, sealed};

/// Invitations per page of the list.
const PAGE_SIZE: i64 = 50;
/// Pages beyond this are refused (50,000 invitations back is not a page anyone reads).
const MAX_PAGE: i64 = 1_000;
/// How long a new invitation may stay valid. A link in an email is a credential to start a
/// consent: a month is plenty, and the bound keeps a typo from making it last for years.
const MAX_VALID_DAYS: i64 = 30;
const DEFAULT_VALID_DAYS: i64 = 7;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/ops/invitations", get(list).post(create))
        .route("/ops/invitations/{id}/expire", post(expire))
        .route("/ops/keys", get(keys))
}

struct InvitationRow {
    id: String,
    created: String,
    expires: String,
    tenant: Option<String>,
    used: Option<String>,
    used_by: Option<String>,
    state: &'static str,
    open: bool,
}

impl InvitationRow {
    fn new(inv: Invitation, at: i64) -> Self {
        let state = inv.state(at);
        InvitationRow {
            created: when(Some(inv.created_at)),
            expires: when(Some(inv.expires_at)),
            tenant: inv.tenant_id.map(|t| t.as_str().to_string()),
            used: inv.used_at.map(|u| when(Some(u))),
            used_by: inv.used_by,
            state: state.as_str(),
            open: state == invitations::InvitationState::Open,
            id: inv.id,
        }
    }
}

#[derive(Template, WebTemplate)]
#[template(path = "ops/invitations.html")]
struct InvitationsPage {
    chrome: Chrome,
    invitations: Vec<InvitationRow>,
    page: i64,
    previous: Option<i64>,
    next: Option<i64>,
    default_days: i64,
    max_days: i64,
}

async fn list(
    State(state): State<AppState>,
    query: RawQuery,
    signed_in: SignedIn<Viewer>,
) -> PageResult<InvitationsPage> {
    let query = FormFields::parse(query.0.unwrap_or_default().as_bytes());
    let page_number = match query.one("page") {
        Some("") => 1,
        Some(n) => match n.parse::<i64>() {
            Ok(n) if (1..=MAX_PAGE).contains(&n) => n,
            _ => {
                return Err(bad_request(
                    "The page number must be a whole number from 1 to 1000.",
                ));
            }
        },
        None => return Err(bad_request("Give the page number once.")),
    };
    // One more row than shown tells whether a next page exists.
    let mut rows = invitations::list(&state.db, PAGE_SIZE + 1, (page_number - 1) * PAGE_SIZE)
        .await
        .map_err(unavailable)?;
    let has_next = rows.len() as i64 > PAGE_SIZE;
    rows.truncate(PAGE_SIZE as usize);
    let at = now();
    Ok(InvitationsPage {
        chrome: signed_in.chrome(Section::Invitations),
        invitations: rows
            .into_iter()
            .map(|inv| InvitationRow::new(inv, at))
            .collect(),
        page: page_number,
        previous: (page_number > 1).then(|| page_number - 1),
        next: (has_next && page_number < MAX_PAGE).then(|| page_number + 1),
        default_days: DEFAULT_VALID_DAYS,
        max_days: MAX_VALID_DAYS,
    })
}

/// The answer to creating an invitation: the only page that shows its URL.
#[derive(Template, WebTemplate)]
#[template(path = "ops/invitation_created.html")]
struct InvitationCreatedPage {
    chrome: Chrome,
    url: String,
    expires: String,
    tenant: Option<String>,
}

/// The create form's tenant (empty: any partner) and validity in days.
fn invitation_form(form: &FormFields) -> PageResult<(Option<TenantId>, i64)> {
    let tenant = match form.one("tenant").map(str::trim) {
        Some("") => None,
        Some(t) => Some(TenantId::parse(t).map_err(|_| {
            bad_request(
                "The tenant id must be a GUID such as 6f3a2a5e-0c1d-4a3b-8f4e-1c2d3e4f5a01, or empty for any partner.",
            )
        })?),
        None => return Err(bad_request("Give the tenant id once.")),
    };
    match form.one("days").map(|d| d.trim().parse::<i64>()) {
        Some(Ok(days)) if (1..=MAX_VALID_DAYS).contains(&days) => Ok((tenant, days)),
        _ => Err(bad_request(
            "The validity must be a whole number of days from 1 to 30.",
        )),
    }
}

async fn create(
    State(state): State<AppState>,
    action: Action<Operator>,
) -> PageResult<InvitationCreatedPage> {
    let (tenant, days) = invitation_form(&action.form)?;
    let (url, expires_at) = create_invitation(
        &state.db,
        &state.config.server.public_url,
        tenant.as_ref(),
        days * 86_400,
    )
    .await
    .map_err(unavailable)?;
    // The audit names the invitation by its stored id (the token's digest), never the URL.
    let token = url
        .path_segments()
        .and_then(|mut s| s.next_back())
        .unwrap_or("");
    let detail = serde_json::json!({
        "invitation_id": invitation_id(token),
        "expires_at": expires_at,
    });
    let tenant = tenant.map(|t| t.as_str().to_string());
    let user = &action.user;
    audit_action(
        &state,
        user,
        "ops.invitation.create",
        tenant.as_deref(),
        detail,
    )
    .await?;
    Ok(InvitationCreatedPage {
        chrome: action.chrome(Section::Invitations),
        url: url.to_string(),
        expires: when(Some(expires_at)),
        tenant,
    })
}

/// Invitation ids are hex SHA-256 digests.
fn plausible_invitation_id(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

async fn expire(
    State(state): State<AppState>,
    Path(id): Path<String>,
    action: Action<Operator>,
) -> PageResult<Redirect> {
    if !plausible_invitation_id(&id) {
        return Err(not_found());
    }
    let tenant = invitations::get(&state.db, &id)
        .await
        .map_err(unavailable)?
        .ok_or_else(not_found)?
        .tenant_id;
    // Not expired: used or already expired, nothing left to end.
    let expired = invitations::expire(&state.db, &id, now())
        .await
        .map_err(unavailable)?;
    if !expired {
        return Err(not_found());
    }
    let detail = serde_json::json!({ "invitation_id": id });
    let tenant = tenant.as_ref().map(TenantId::as_str);
    audit_action(
        &state,
        &action.user,
        "ops.invitation.expire",
        tenant,
        detail,
    )
    .await?;
    Ok(Redirect::to("/ops/invitations"))
}

struct KeyRow {
    what: &'static str,
    kek_id: String,
    records: i64,
    current: bool,
}

#[derive(Template, WebTemplate)]
#[template(path = "ops/keys.html")]
struct KeysPage {
    chrome: Chrome,
    provider_kind: &'static str,
    current_kek_id: String,
    rows: Vec<KeyRow>,
    /// Sealed records under a KEK other than the current one (what a rotation would re-wrap).
    under_other_keys: i64,
    shredded_grants: i64,
    /// The latest `samvault keys rotate` job, if any ran.
    last_rotation: Option<RotationView>,
}

/// A key rotation job as the keys page shows it.
struct RotationView {
    target_kek_id: String,
    started: String,
    /// `None` while running, or when a crash interrupted it (a re-run resumes it).
    finished: Option<String>,
    rewrapped: i64,
}

async fn keys(State(state): State<AppState>, signed_in: SignedIn<Viewer>) -> PageResult<KeysPage> {
    let counts = sealed::count_by_kek(&state.db).await.map_err(unavailable)?;
    let shredded_grants = sealed::shredded_grants(&state.db)
        .await
        .map_err(unavailable)?;
    let last_rotation = sealed::latest_rotation(&state.db)
        .await
        .map_err(unavailable)?;
    let provider = state.vault.provider();
    let current_kek_id = provider.current_kek_id().to_string();
    let rows: Vec<KeyRow> = counts
        .into_iter()
        .map(|c| KeyRow {
            current: c.kek_id == current_kek_id,
            what: c.what,
            kek_id: c.kek_id,
            records: c.records,
        })
        .collect();
    Ok(KeysPage {
        chrome: signed_in.chrome(Section::Keys),
        provider_kind: provider.kind(),
        under_other_keys: rows.iter().filter(|r| !r.current).map(|r| r.records).sum(),
        current_kek_id,
        rows,
        shredded_grants,
        last_rotation: last_rotation.map(|r| RotationView {
            target_kek_id: r.target_kek_id,
            started: when(Some(r.started_at)),
            finished: r.finished_at.map(|at| when(Some(at))),
            rewrapped: r.rewrapped,
        }),
    })
}
