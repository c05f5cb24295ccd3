//! `/ops/integrations`: the integration clients that call the token API — who they are, what
//! they may do, how much they are used, their secrets (ids and dates; only digests are
//! stored) — and, for admins, creating clients, adding and revoking secrets, revoking
//! clients. A new secret is shown once, on the page that answers the POST, and never again.

use askama::Template;
use askama_web::WebTemplate;
use axum::Router;
use axum::extract::{Path, State};
use axum::response::Redirect;
use axum::routing::{get, post};
use secrecy::{ExposeSecret, SecretString};

use super::{
    Action, Admin, Chrome, FormFields, PageResult, Section, SignedIn, Viewer, audit_action,
    bad_request, not_found, unavailable, when,
};
use crate::http::AppState;
use crate::http::client_auth::wait_for_services_to_notice;
use crate::storage::clients::{self, Client, InvalidClient, NewClient, Permission, SecretInfo};
use crate::storage::{now, requests};

/// Request counts on the page cover this many days (the security report's window).
const USAGE_DAYS: i64 = 7;
/// Client ids are UUIDs and secret ids too; anything much longer is not one of ours.
const MAX_ID_LEN: usize = 64;
/// The rate limit the create form suggests (the CLI's default).
const DEFAULT_RATE_LIMIT: i64 = 600;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/ops/integrations", get(list).post(create))
        .route("/ops/integrations/{client_id}/secrets", post(add_secret))
        .route(
            "/ops/integrations/{client_id}/secrets/{secret_id}/revoke",
            post(revoke_secret),
        )
        .route("/ops/integrations/{client_id}/revoke", post(revoke_client))
}

struct SecretRow {
    id: String,
    created: String,
    revoked: Option<String>,
}

struct ClientRow {
    client_id: String,
    name: String,
    permissions: Vec<&'static str>,
    resources: Vec<String>,
    /// "every partner", or the tenant ids it is restricted to.
    partners: Vec<String>,
    every_partner: bool,
    rate_limit_per_minute: i64,
    created: String,
    last_used: String,
    requests: i64,
    issued: i64,
    revoked: Option<String>,
    secrets: Vec<SecretRow>,
}

impl ClientRow {
    fn new(
        client: Client,
        secrets: Vec<SecretInfo>,
        counts: Option<&requests::RequestCounts>,
    ) -> Self {
        ClientRow {
            permissions: client.permissions.iter().map(|p| p.as_str()).collect(),
            resources: client
                .resources
                .iter()
                .map(|r| r.as_str().to_string())
                .collect(),
            every_partner: client.partners.is_none(),
            partners: client
                .partners
                .iter()
                .flatten()
                .map(|t| t.as_str().to_string())
                .collect(),
            rate_limit_per_minute: client.rate_limit_per_minute,
            created: when(Some(client.created_at)),
            last_used: when(client.last_used_at),
            requests: counts.map_or(0, |c| c.requests),
            issued: counts.map_or(0, |c| c.issued),
            revoked: client.revoked_at.map(|at| when(Some(at))),
            secrets: secrets
                .into_iter()
                .map(|s| SecretRow {
                    id: s.id,
                    created: when(Some(s.created_at)),
                    revoked: s.revoked_at.map(|at| when(Some(at))),
                })
                .collect(),
            name: client.name,
            client_id: client.client_id,
        }
    }
}

/// A permission checkbox of the create form; `ticked` by default or not.
struct Choice {
    permission: Permission,
    meaning: &'static str,
    ticked: bool,
}

const PERMISSIONS: [Choice; 3] = [
    Choice {
        permission: Permission::TokensIssue,
        meaning: "exchange a partner's grant for access tokens",
        ticked: true,
    },
    Choice {
        permission: Permission::PartnersRead,
        meaning: "read partners' status and expiry horizon",
        ticked: true,
    },
    // Customer tenants are a wider reach: granted only when an admin ticks it, as on the CLI.
    Choice {
        permission: Permission::CustomersIssue,
        meaning: "exchange a partner's grant for access tokens in its customers' tenants",
        ticked: false,
    },
];

#[derive(Template, WebTemplate)]
#[template(path = "ops/integrations.html")]
pub(super) struct IntegrationsPage {
    chrome: Chrome,
    clients: Vec<ClientRow>,
    usage_days: i64,
    permissions: &'static [Choice],
    resources: Vec<String>,
    default_rate_limit: i64,
    max_rate_limit: i64,
    max_name_chars: usize,
}

async fn list(
    State(state): State<AppState>,
    signed_in: SignedIn<Viewer>,
) -> PageResult<IntegrationsPage> {
    let since = now() - USAGE_DAYS * 86_400;
    let all = clients::list(&state.db).await.map_err(unavailable)?;
    let mut secrets = clients::secrets_by_client(&state.db)
        .await
        .map_err(unavailable)?;
    let counts = requests::counts_by_client(&state.db, since)
        .await
        .map_err(unavailable)?;
    let clients = all
        .into_iter()
        .map(|client| {
            let secrets = secrets.remove(&client.client_id).unwrap_or_default();
            let counts = counts.get(&client.client_id);
            ClientRow::new(client, secrets, counts)
        })
        .collect();
    Ok(IntegrationsPage {
        chrome: signed_in.chrome(Section::Integrations),
        clients,
        usage_days: USAGE_DAYS,
        permissions: &PERMISSIONS,
        resources: state
            .config
            .entra
            .resources
            .iter()
            .map(|r| r.as_str().to_string())
            .collect(),
        default_rate_limit: DEFAULT_RATE_LIMIT,
        max_rate_limit: clients::MAX_RATE_LIMIT_PER_MINUTE,
        max_name_chars: clients::MAX_NAME_CHARS,
    })
}

/// The answer to creating a client or adding a secret: the only page that ever shows it.
#[derive(Template, WebTemplate)]
#[template(path = "ops/client_secret.html")]
pub(super) struct SecretOncePage {
    chrome: Chrome,
    /// True for a new client, false for a secret added to an existing one.
    new_client: bool,
    client_id: String,
    /// Shown for an added secret, so the old one can be told apart when revoking.
    secret_id: Option<String>,
    name: String,
    secret: SecretString,
}

/// Reads the create form into a client, or says what is wrong with it.
fn new_client_from(form: &FormFields, state: &AppState) -> Result<NewClient, InvalidClient> {
    let name = form.one("name").ok_or(InvalidClient::Name)?;
    let rate_limit = form
        .one("rate_limit")
        .and_then(|v| v.trim().parse::<i64>().ok())
        .ok_or(InvalidClient::RateLimit)?;
    let partners: Vec<String> = form
        .one("partners")
        .ok_or(InvalidClient::Partner)?
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect();
    NewClient::parse(
        name,
        &form.all("permission"),
        &form.all("resource"),
        &partners,
        rate_limit,
        &state.config.entra.resources,
    )
}

async fn create(
    State(state): State<AppState>,
    action: Action<Admin>,
) -> PageResult<SecretOncePage> {
    let new = new_client_from(&action.form, &state).map_err(|e| bad_request(e.message()))?;
    let (client_id, secret) = clients::issue(&state.db, &new, now())
        .await
        .map_err(unavailable)?;
    let detail = serde_json::json!({
        "client_id": client_id,
        "name": new.name,
        "permissions": new.permissions.iter().map(|p| p.as_str()).collect::<Vec<_>>(),
        "resources": new.resources,
        "partners": new.partners.as_ref().map(|list| list.iter().map(|t| t.as_str()).collect::<Vec<_>>()),
        "rate_limit_per_minute": new.rate_limit_per_minute,
    });
    audit_action(&state, &action.user, "ops.client.create", None, detail).await?;
    Ok(SecretOncePage {
        chrome: action.chrome(Section::Integrations),
        new_client: true,
        client_id,
        secret_id: None,
        name: new.name,
        secret,
    })
}

/// Ids that cannot be ours (UUIDs) are refused before any query: PostgreSQL would answer a
/// NUL byte with an error, and a hostile path deserves a 404, not a 503.
fn plausible_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

async fn add_secret(
    State(state): State<AppState>,
    Path(client_id): Path<String>,
    action: Action<Admin>,
) -> PageResult<SecretOncePage> {
    if !plausible_id(&client_id) {
        return Err(not_found());
    }
    // None: no such client, or it is revoked (a revoked client never gets a secret again).
    let (secret_id, secret) = clients::add_secret(&state.db, &client_id, now())
        .await
        .map_err(unavailable)?
        .ok_or_else(not_found)?;
    let detail = serde_json::json!({ "client_id": client_id, "secret_id": secret_id });
    audit_action(&state, &action.user, "ops.client.secret.add", None, detail).await?;
    let name = match clients::get(&state.db, &client_id).await {
        Ok(Some(client)) => client.name,
        _ => String::new(),
    };
    Ok(SecretOncePage {
        chrome: action.chrome(Section::Integrations),
        new_client: false,
        client_id,
        secret_id: Some(secret_id),
        name,
        secret,
    })
}

/// After a revocation: this process forgets the client at once, and the answer waits until
/// every other replica must have noticed too (as `samvault client revoke` does), so "done"
/// on the page means the credential is refused everywhere.
async fn revocation_done(state: &AppState, client_id: &str) -> Redirect {
    state.auth.forget(client_id);
    wait_for_services_to_notice().await;
    Redirect::to("/ops/integrations")
}

async fn revoke_secret(
    State(state): State<AppState>,
    Path((client_id, secret_id)): Path<(String, String)>,
    action: Action<Admin>,
) -> PageResult<Redirect> {
    if !plausible_id(&client_id) || !plausible_id(&secret_id) {
        return Err(not_found());
    }
    let revoked = clients::revoke_secret(&state.db, &client_id, &secret_id, now())
        .await
        .map_err(unavailable)?;
    if !revoked {
        return Err(not_found());
    }
    let detail = serde_json::json!({ "client_id": client_id, "secret_id": secret_id });
    audit_action(
        &state,
        &action.user,
        "ops.client.secret.revoke",
        None,
        detail,
    )
    .await?;
    Ok(revocation_done(&state, &client_id).await)
}

async fn revoke_client(
    State(state): State<AppState>,
    Path(client_id): Path<String>,
    action: Action<Admin>,
) -> PageResult<Redirect> {
    if !plausible_id(&client_id) {
        return Err(not_found());
    }
    // Typing the id is the confirmation: revoking breaks an integration at once.
    if action.form.one("confirm").map(str::trim) != Some(client_id.as_str()) {
        return Err(bad_request(
            "To revoke a client, type its client id exactly in the confirmation field.",
        ));
    }
    let revoked = clients::revoke(&state.db, &client_id, now())
        .await
        .map_err(unavailable)?;
    if !revoked {
        return Err(not_found());
    }
    let detail = serde_json::json!({ "client_id": client_id });
    audit_action(&state, &action.user, "ops.client.revoke", None, detail).await?;
    Ok(revocation_done(&state, &client_id).await)
}
