//! The guard of every dashboard page and action, as extractors (after kanidm's
//! `https/extractors`): a handler that takes [`SignedIn<R>`] or [`Action<R>`] does not run for
//! anyone below role `R`, and an action does not run without this session's CSRF token.
//!
//! In order: a session (else sign in), younger than the absolute lifetime, of a user who
//! exists and is not disabled, signed in under the user's current session epoch (a password
//! change or a disable moves it on; else sign in), past the forced password change (else the
//! password page), with at least the role (else 403); then, for an action, the form's CSRF
//! token (else 403). The role comes before the token so a viewer learns nothing from a forged
//! form.

use std::marker::PhantomData;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;
use tower_sessions::Session;

use super::{Chrome, FormFields, PageError, PageResult, Section, message, unavailable};
use crate::http::AppState;
use crate::onboarding::random_token;
use crate::storage::now;
use crate::storage::ops_signin;
use crate::storage::ops_users::{self, OpsUser, Role};

pub(super) const USER_KEY: &str = "ops.user";
pub(super) const SINCE_KEY: &str = "ops.since";
pub(super) const CSRF_KEY: &str = "ops.csrf";
/// The user's session epoch at sign-in (a session from before epochs existed has none: 0).
pub(super) const EPOCH_KEY: &str = "ops.epoch";
/// A session ends this long after sign-in however active it is (the idle timeout is the
/// session layer's).
const ABSOLUTE_LIFETIME_SECS: i64 = 12 * 3600;

/// What a handler requires of the signed-in user.
pub trait Clearance: Send + Sync + 'static {
    const ROLE: Role;
    /// Whether a user who must still change their initial password passes.
    const BEFORE_PASSWORD_CHANGE: bool = false;
}

pub struct Viewer;
pub struct Operator;
pub struct Admin;
/// Any signed-in user, including one who must change their initial password first: the
/// password page only.
pub struct PasswordChange;

impl Clearance for Viewer {
    const ROLE: Role = Role::Viewer;
}

impl Clearance for Operator {
    const ROLE: Role = Role::Operator;
}

impl Clearance for Admin {
    const ROLE: Role = Role::Admin;
}

impl Clearance for PasswordChange {
    const ROLE: Role = Role::Viewer;
    const BEFORE_PASSWORD_CHANGE: bool = true;
}

/// A signed-in user with at least the role of `R`, their session and its CSRF token.
pub struct SignedIn<R> {
    pub user: OpsUser,
    pub session: Session,
    /// The session's CSRF token, for the page's forms.
    pub csrf: String,
    clearance: PhantomData<R>,
}

impl<R> SignedIn<R> {
    /// The header of a page in `section`.
    pub fn chrome(&self, section: Section) -> Chrome {
        Chrome::new(&self.user, self.csrf.clone(), section)
    }
}

impl<R: Clearance> FromRequestParts<AppState> for SignedIn<R> {
    type Rejection = PageError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> PageResult<Self> {
        let session = Session::from_request_parts(parts, state)
            .await
            .map_err(|(_, why)| unavailable(why))?;
        let user = signed_in_user(state, &session, R::BEFORE_PASSWORD_CHANGE).await?;
        if user.role < R::ROLE {
            return Err(message(
                StatusCode::FORBIDDEN,
                "Not allowed",
                "Your role does not allow this. Ask an admin if you need it.",
            ));
        }
        let csrf = csrf_token(&session).await?;
        Ok(SignedIn {
            user,
            session,
            csrf,
            clearance: PhantomData,
        })
    }
}

/// A form posted by a signed-in user with at least the role of `R`, carrying this session's
/// CSRF token. A body that is not a form, or repeats the token, counts as a form without it.
pub struct Action<R> {
    pub user: OpsUser,
    pub session: Session,
    pub form: FormFields,
    csrf: String,
    clearance: PhantomData<R>,
}

impl<R> Action<R> {
    /// The header of the page answering the action, in `section`.
    pub fn chrome(&self, section: Section) -> Chrome {
        Chrome::new(&self.user, self.csrf.clone(), section)
    }
}

impl<R: Clearance> FromRequest<AppState> for Action<R> {
    type Rejection = Response;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Response> {
        let (mut parts, body) = request.into_parts();
        let signed_in = SignedIn::<R>::from_request_parts(&mut parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        let body = Bytes::from_request(Request::from_parts(parts, body), state)
            .await
            .map_err(IntoResponse::into_response)?;
        let form = FormFields::parse(&body);
        check_csrf(&signed_in.session, form.csrf())
            .await
            .map_err(IntoResponse::into_response)?;
        Ok(Action {
            user: signed_in.user,
            session: signed_in.session,
            form,
            csrf: signed_in.csrf,
            clearance: PhantomData,
        })
    }
}

/// The session's user if the session is alive and the user may still use it; a user who
/// must change their password is sent to do so unless `before_password_change`.
async fn signed_in_user(
    state: &AppState,
    session: &Session,
    before_password_change: bool,
) -> PageResult<OpsUser> {
    let to_signin = || PageError::redirect("/ops/signin");
    let username: Option<String> = session.get(USER_KEY).await.map_err(unavailable)?;
    let since: Option<i64> = session.get(SINCE_KEY).await.map_err(unavailable)?;
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
        Err(e) => return Err(unavailable(e)),
    };
    let epoch: i64 = session
        .get(EPOCH_KEY)
        .await
        .map_err(unavailable)?
        .unwrap_or(0);
    match ops_signin::session_epoch(&state.db, &username).await {
        Ok(Some(current)) if current == epoch => {}
        Ok(_) => {
            let _ = session.flush().await;
            return Err(to_signin());
        }
        Err(e) => return Err(unavailable(e)),
    }
    if user.must_change_password && !before_password_change {
        return Err(PageError::redirect("/ops/password"));
    }
    Ok(user)
}

/// The session's CSRF token, created on first use.
pub(super) async fn csrf_token(session: &Session) -> PageResult<String> {
    if let Some(token) = session.get::<String>(CSRF_KEY).await.map_err(unavailable)? {
        return Ok(token);
    }
    let token = random_token();
    session
        .insert(CSRF_KEY, &token)
        .await
        .map_err(unavailable)?;
    Ok(token)
}

/// Refuses a form whose `csrf` field is not this session's token.
pub(super) async fn check_csrf(session: &Session, presented: &str) -> PageResult<()> {
    let expected: Option<String> = session.get(CSRF_KEY).await.map_err(unavailable)?;
    match expected {
        Some(expected) if bool::from(expected.as_bytes().ct_eq(presented.as_bytes())) => Ok(()),
        _ => Err(message(
            StatusCode::FORBIDDEN,
            "This form has expired",
            "The form was not opened in this session, or the session ended. Open the page again.",
        )),
    }
}
