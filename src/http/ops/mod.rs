//! The ops dashboard (SPEC §1, §3.3). One module per page group; every page and action goes
//! through [`signed_in`], which enforces the session, the role, the forced password change and
//! the absolute session lifetime, and every form carries the session's CSRF token
//! ([`check_csrf`]). Pages extend `templates/ops/layout.html` and get their header from
//! [`Chrome`].

mod audit;
mod auth;
mod chart;
mod integrations;
mod overview;
mod partners;
mod report;
mod settings;

use askama::Template;
use askama_web::WebTemplate;
use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use subtle::ConstantTimeEq;
use tower_sessions::Session;

use super::AppState;
use super::onboard::random_token;
use crate::storage::now;
use crate::storage::ops_users::{self, OpsUser, Role};

const USER_KEY: &str = "ops.user";
const SINCE_KEY: &str = "ops.since";
const CSRF_KEY: &str = "ops.csrf";
/// A session ends this long after sign-in however active it is (the idle timeout is the
/// session layer's).
const ABSOLUTE_LIFETIME_SECS: i64 = 12 * 3600;

pub fn router() -> Router<AppState> {
    Router::new()
        .merge(auth::routes())
        .merge(overview::routes())
        .merge(partners::routes())
        .merge(integrations::routes())
        .merge(report::routes())
        .merge(audit::routes())
        .merge(settings::routes())
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

#[derive(Template, WebTemplate)]
#[template(path = "ops/message.html")]
struct MessagePage {
    title: &'static str,
    message: &'static str,
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

/// A plain page with a title and a sentence, for refusals and outages.
pub fn message(status: StatusCode, title: &'static str, text: &'static str) -> Response {
    (
        status,
        MessagePage {
            title,
            message: text,
        },
    )
        .into_response()
}

pub fn unavailable() -> Response {
    message(
        StatusCode::SERVICE_UNAVAILABLE,
        "samvault is unavailable",
        "The database or the key provider did not answer. Try again in a moment.",
    )
}

pub fn not_found() -> Response {
    message(
        StatusCode::NOT_FOUND,
        "Not found",
        "There is nothing at this address. It may have been removed.",
    )
}

pub fn bad_request(text: &'static str) -> Response {
    message(StatusCode::BAD_REQUEST, "This request cannot be used", text)
}

fn to_signin() -> Response {
    Redirect::to("/ops/signin").into_response()
}

/// The session's CSRF token, created on first use.
async fn csrf_token(session: &Session) -> Result<String, Response> {
    match session.get::<String>(CSRF_KEY).await {
        Ok(Some(token)) => Ok(token),
        Ok(None) => {
            let token = random_token();
            session
                .insert(CSRF_KEY, &token)
                .await
                .map_err(|_| unavailable())?;
            Ok(token)
        }
        Err(_) => Err(unavailable()),
    }
}

/// Refuses a form whose `csrf` field is not this session's token.
pub async fn check_csrf(session: &Session, presented: &str) -> Result<(), Response> {
    let expected: Option<String> = session.get(CSRF_KEY).await.map_err(|_| unavailable())?;
    match expected {
        Some(expected) if bool::from(expected.as_bytes().ct_eq(presented.as_bytes())) => Ok(()),
        _ => Err(message(
            StatusCode::FORBIDDEN,
            "This form has expired",
            "The form was not opened in this session, or the session ended. Open the page again.",
        )),
    }
}

/// A signed-in user with at least `role`, and the session's CSRF token. Anyone else is sent
/// to sign in (no session, expired, disabled) or refused (403, role too low); a user who must
/// change their password is sent to do so first unless `password_page` is true.
pub async fn signed_in(
    state: &AppState,
    session: &Session,
    role: Role,
    password_page: bool,
) -> Result<(OpsUser, String), Response> {
    let username: Option<String> = session.get(USER_KEY).await.map_err(|_| unavailable())?;
    let since: Option<i64> = session.get(SINCE_KEY).await.map_err(|_| unavailable())?;
    let (Some(username), Some(since)) = (username, since) else {
        return Err(to_signin());
    };
    if now() - since > ABSOLUTE_LIFETIME_SECS {
        let _ = session.flush().await;
        return Err(to_signin());
    }
    let user = match ops_users::get(&state.db, &username).await {
        Ok(Some(user)) if user.disabled_at.is_none() => user,
        Ok(_) => {
            let _ = session.flush().await;
            return Err(to_signin());
        }
        Err(_) => return Err(unavailable()),
    };
    if user.must_change_password && !password_page {
        return Err(Redirect::to("/ops/password").into_response());
    }
    if user.role < role {
        return Err(message(
            StatusCode::FORBIDDEN,
            "Not allowed",
            "Your role does not allow this. Ask an admin if you need it.",
        ));
    }
    let csrf = csrf_token(session).await?;
    Ok((user, csrf))
}

/// A page for a user with at least `role`: the guard of [`signed_in`] plus the page chrome.
pub async fn page(
    state: &AppState,
    session: &Session,
    role: Role,
    section: Section,
) -> Result<(OpsUser, Chrome), Response> {
    let (user, csrf) = signed_in(state, session, role, false).await?;
    let chrome = Chrome::new(&user, csrf, section);
    Ok((user, chrome))
}

/// An action (a POST) for a user with at least `role`: signed in, then the form's CSRF token.
/// The role is checked before the token so a viewer learns nothing from a forged form.
pub async fn action(
    state: &AppState,
    session: &Session,
    role: Role,
    section: Section,
    csrf: &str,
) -> Result<(OpsUser, Chrome), Response> {
    let (user, chrome) = page(state, session, role, section).await?;
    check_csrf(session, csrf).await?;
    Ok((user, chrome))
}

/// Records an ops user's action in the audit log, as `ops:NAME`.
pub async fn audit_action(
    state: &AppState,
    user: &OpsUser,
    action: &str,
    tenant: Option<&str>,
    detail: serde_json::Value,
) -> Result<(), Response> {
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
    .map_err(|_| unavailable())
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
