//! `/ops/invitations`: onboarding invitations (list for everyone; create and expire for
//! operators; the URL is shown once because only its digest is stored) and `/ops/keys`:
//! which key-encryption key seals what (read-only).

use askama::Template;
use askama_web::WebTemplate;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use tower_sessions::Session;

use super::{
    Chrome, FormFields, Section, action, audit_action, bad_request, not_found, page, unavailable,
    when,
};
use crate::domain::TenantId;
use crate::http::AppState;
use crate::http::onboard::create_invitation;
use crate::storage::invitations::{self, Invitation};
use crate::storage::ops_users::Role;
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

async fn list(State(state): State<AppState>, session: Session, query: RawQuery) -> Response {
    let (_, chrome) = match page(&state, &session, Role::Viewer, Section::Invitations).await {
        Ok(signed_in) => signed_in,
        Err(response) => return response,
    };
    let query = FormFields::parse(query.0.unwrap_or_default().as_bytes());
    let page_number = match query.one("page") {
        Some("") => 1,
        Some(n) => match n.parse::<i64>() {
            Ok(n) if (1..=MAX_PAGE).contains(&n) => n,
            _ => return bad_request("The page number must be a whole number from 1 to 1000."),
        },
        None => return bad_request("Give the page number once."),
    };
    // One more row than shown tells whether a next page exists.
    let Ok(mut rows) =
        invitations::list(&state.db, PAGE_SIZE + 1, (page_number - 1) * PAGE_SIZE).await
    else {
        return unavailable();
    };
    let has_next = rows.len() as i64 > PAGE_SIZE;
    rows.truncate(PAGE_SIZE as usize);
    let at = now();
    InvitationsPage {
        chrome,
        invitations: rows
            .into_iter()
            .map(|inv| InvitationRow::new(inv, at))
            .collect(),
        page: page_number,
        previous: (page_number > 1).then(|| page_number - 1),
        next: (has_next && page_number < MAX_PAGE).then(|| page_number + 1),
        default_days: DEFAULT_VALID_DAYS,
        max_days: MAX_VALID_DAYS,
    }
    .into_response()
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

async fn create(State(state): State<AppState>, session: Session, body: Bytes) -> Response {
    let form = FormFields::parse(&body);
    let (user, chrome) = match action(
        &state,
        &session,
        Role::Operator,
        Section::Invitations,
        form.csrf(),
    )
    .await
    {
        Ok(signed_in) => signed_in,
        Err(response) => return response,
    };
    let tenant = match form.one("tenant").map(str::trim) {
        Some("") => None,
        Some(t) => match TenantId::parse(t) {
            Ok(t) => Some(t),
            Err(_) => {
                return bad_request(
                    "The tenant id must be a GUID such as 6f3a2a5e-0c1d-4a3b-8f4e-1c2d3e4f5a01, or empty for any partner.",
                );
            }
        },
        None => return bad_request("Give the tenant id once."),
    };
    let days = match form.one("days").map(|d| d.trim().parse::<i64>()) {
        Some(Ok(d)) if (1..=MAX_VALID_DAYS).contains(&d) => d,
        _ => return bad_request("The validity must be a whole number of days from 1 to 30."),
    };
    let Ok((url, expires_at)) = create_invitation(
        &state.db,
        &state.config.public_url,
        tenant.as_ref(),
        days * 86_400,
    )
    .await
    else {
        return unavailable();
    };
    // The audit names the invitation by its stored id (the token's digest), never the URL.
    let token = url
        .path_segments()
        .and_then(|mut s| s.next_back())
        .unwrap_or("");
    let detail = serde_json::json!({
        "invitation_id": crate::http::onboard::invitation_id(token),
        "expires_at": expires_at,
    });
    let tenant = tenant.map(|t| t.as_str().to_string());
    if let Err(response) = audit_action(
        &state,
        &user,
        "ops.invitation.create",
        tenant.as_deref(),
        detail,
    )
    .await
    {
        return response;
    }
    InvitationCreatedPage {
        chrome,
        url: url.to_string(),
        expires: when(Some(expires_at)),
        tenant,
    }
    .into_response()
}

/// Invitation ids are hex SHA-256 digests.
fn plausible_invitation_id(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

async fn expire(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let form = FormFields::parse(&body);
    let (user, _) = match action(
        &state,
        &session,
        Role::Operator,
        Section::Invitations,
        form.csrf(),
    )
    .await
    {
        Ok(signed_in) => signed_in,
        Err(response) => return response,
    };
    if !plausible_invitation_id(&id) {
        return not_found();
    }
    let tenant = match invitations::get(&state.db, &id).await {
        Ok(Some(inv)) => inv.tenant_id,
        Ok(None) => return not_found(),
        Err(_) => return unavailable(),
    };
    match invitations::expire(&state.db, &id, now()).await {
        Ok(true) => {}
        // Used or already expired: nothing left to end.
        Ok(false) => return not_found(),
        Err(_) => return unavailable(),
    }
    let detail = serde_json::json!({ "invitation_id": id });
    if let Err(response) = audit_action(
        &state,
        &user,
        "ops.invitation.expire",
        tenant.as_ref().map(TenantId::as_str),
        detail,
    )
    .await
    {
        return response;
    }
    Redirect::to("/ops/invitations").into_response()
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

async fn keys(State(state): State<AppState>, session: Session) -> Response {
    let (_, chrome) = match page(&state, &session, Role::Viewer, Section::Keys).await {
        Ok(signed_in) => signed_in,
        Err(response) => return response,
    };
    let (Ok(counts), Ok(shredded_grants), Ok(last_rotation)) = (
        sealed::count_by_kek(&state.db).await,
        sealed::shredded_grants(&state.db).await,
        sealed::latest_rotation(&state.db).await,
    ) else {
        return unavailable();
    };
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
    KeysPage {
        chrome,
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
    }
    .into_response()
}
