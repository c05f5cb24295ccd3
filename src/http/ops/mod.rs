//! The ops dashboard (REFERENCE §1, §3.3). One module per page group. Every page and action is
//! guarded by an extractor of [`guard`] ([`SignedIn`] for pages, [`Action`] for forms that
//! change something), and answers with its page or a [`PageError`]. Pages extend
//! `templates/ops/layout.html` and get their header from [`Chrome`].

mod audit;
mod auth;
mod chart;
mod guard;
mod integrations;
mod overview;
mod partners;
mod report;
mod settings;

use axum::Router;
use axum::http::StatusCode;

use super::AppState;
use super::templates::{PageError, PageResult, log_page_errors};
use crate::storage::now;
use crate::storage::ops_users::{OpsUser, Role};
pub use guard::{Action, Admin, Operator, SignedIn, Viewer};

pub fn router() -> Router<AppState> {
    Router::new()
        .merge(auth::routes())
        .merge(overview::routes())
        .merge(partners::routes())
        .merge(integrations::routes())
        .merge(report::routes())
        .merge(audit::routes())
        .merge(settings::routes())
        .route_layer(axum::middleware::from_fn(log_page_errors))
}

/// The dashboard sections, in the order of the navigation bar.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Overview,
    Partners,
    Integrations,
    Security,
    Audit,
    Invitations,
    Keys,
}

/// What every signed-in page shows around its content: who is signed in, the navigation, and
/// the CSRF token for its forms (including the sign-out button).
pub struct Chrome {
    pub csrf: String,
    pub username: String,
    pub role: Role,
    pub section: Section,
}

impl Chrome {
    pub fn new(user: &OpsUser, csrf: String, section: Section) -> Self {
        Chrome {
            csrf,
            username: user.username.clone(),
            role: user.role,
            section,
        }
    }

    /// `aria-current` for a navigation link (askama cannot compare enums from templates
    /// without a helper).
    pub fn current(&self, section: &str) -> &'static str {
        let here = match self.section {
            Section::Overview => "overview",
            Section::Partners => "partners",
            Section::Integrations => "integrations",
            Section::Security => "security",
            Section::Audit => "audit",
            Section::Invitations => "invitations",
            Section::Keys => "keys",
        };
        if here == section { "page" } else { "false" }
    }

    pub fn is_operator(&self) -> bool {
        self.role >= Role::Operator
    }

    pub fn is_admin(&self) -> bool {
        self.role >= Role::Admin
    }
}

/// A submitted HTML form as name/value pairs. axum's `Form` cannot read a name that repeats
/// (a group of checkboxes), so the dashboard's forms are read with this; a field that must
/// appear once and appears twice is refused rather than guessed.
pub struct FormFields(Vec<(String, String)>);

impl FormFields {
    pub fn parse(body: &[u8]) -> Self {
        FormFields(url::form_urlencoded::parse(body).into_owned().collect())
    }

    /// The value of a single-valued field ("" when absent); `None` when it is repeated.
    pub fn one(&self, name: &str) -> Option<&str> {
        let mut values = self.0.iter().filter(|(n, _)| n == name).map(|(_, v)| v);
        match (values.next(), values.next()) {
            (None, _) => Some(""),
            (Some(value), None) => Some(value),
            (Some(_), Some(_)) => None,
        }
    }

    /// Every value of a repeatable field, in order.
    pub fn all(&self, name: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// The CSRF token as submitted; a repeated one counts as missing.
    pub fn csrf(&self) -> &str {
        self.one("csrf").unwrap_or("")
    }
}

/// A plain page with a title and a sentence, for refusals.
pub fn message(status: StatusCode, title: &'static str, text: &'static str) -> PageError {
    PageError::message(status, title, text)
}

/// The page for an internal failure: the person learns it is not their doing; the log learns
/// what it was.
pub fn unavailable(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> PageError {
    message(
        StatusCode::SERVICE_UNAVAILABLE,
        "samvault is unavailable",
        "The database or the key provider did not answer. Try again in a moment.",
    )
    .caused_by(error)
}

pub fn not_found() -> PageError {
    message(
        StatusCode::NOT_FOUND,
        "Not found",
        "There is nothing at this address. It may have been removed.",
    )
}

pub fn bad_request(text: &'static str) -> PageError {
    message(StatusCode::BAD_REQUEST, "This request cannot be used", text)
}

/// Records an ops user's action in the audit log, as `ops:NAME`.
pub async fn audit_action(
    state: &AppState,
    user: &OpsUser,
    action: &str,
    tenant: Option<&str>,
    detail: serde_json::Value,
) -> PageResult<()> {
    crate::storage::audit::append(
        &state.db,
        &format!("ops:{}", user.username),
        action,
        tenant,
        detail,
        now(),
    )
    .await
    .map(|_| ())
    .map_err(unavailable)
}

/// Formats Unix seconds as `2026-11-23 14:05 UTC` for pages ("never" for `None`).
pub fn when(at: Option<i64>) -> String {
    let Some(at) = at else {
        return "never".to_string();
    };
    match time::OffsetDateTime::from_unix_timestamp(at) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02} UTC",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute()
        ),
        Err(_) => "—".to_string(),
    }
}
