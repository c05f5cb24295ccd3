//! Signing in and out of the dashboard: password + TOTP (once-only codes), lockout with
//! backoff, the forced password change at first sign-in. Attempts are limited three ways: per
//! account (reserved in the database before they are checked, `storage::ops_signin`), per
//! client address (`ops::throttle`, 429), and by the argon2 queue (`ops::password`, 503).

use std::time::Duration;

use askama::Template;
use askama_web::WebTemplate;
use axum::Router;
use axum::extract::{Form, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tower_sessions::Session;

use super::guard::{
    CSRF_KEY, EPOCH_KEY, PasswordChange, SINCE_KEY, USER_KEY, check_csrf, csrf_token,
};
use super::{PageResult, SignedIn, message, unavailable};
use crate::http::AppState;
use crate::http::client_address::ClientAddress;
use crate::onboarding::random_token;
use crate::ops::throttle::Refused;
use crate::ops::{password, totp};
use crate::storage::ops_signin::{self, Attempt};
use crate::storage::ops_users::{self, OpsUser};
use crate::storage::{audit, now};

/// Failed sign-ins (and wrong current passwords) allowed before the account locks (then 1
/// min, doubling, capped at a day).
const FREE_ATTEMPTS: i64 = 5;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/ops/signin", get(signin_form).post(signin))
        .route("/ops/password", get(password_form).post(change_password))
        .route("/ops/signout", post(signout))
}

#[derive(Template, WebTemplate)]
#[template(path = "ops/signin.html")]
struct SigninPage {
    csrf: String,
    username: String,
    error: Option<String>,
}

#[derive(Template, WebTemplate)]
#[template(path = "ops/password.html")]
struct PasswordPage {
    csrf: String,
    forced: bool,
    error: Option<String>,
}

async fn signin_form(session: Session) -> PageResult<SigninPage> {
    Ok(SigninPage {
        csrf: csrf_token(&session).await?,
        username: String::new(),
        error: None,
    })
}

#[derive(Deserialize)]
struct SigninForm {
    #[serde(default)]
    csrf: String,
    username: String,
    password: SecretString,
    code: SecretString,
}

/// How a sign-in attempt ended, past the CSRF check and the address throttle.
enum Outcome {
    SignedIn {
        user: OpsUser,
        epoch: i64,
    },
    Refused,
    Locked {
        until: i64,
    },
    /// The argon2 queue is full: nothing was checked, nothing counted.
    Busy(password::Busy),
}

async fn signin(
    State(state): State<AppState>,
    ClientAddress(client): ClientAddress,
    session: Session,
    Form(form): Form<SigninForm>,
) -> PageResult {
    // Before the session is even read: a throttled address costs no database work.
    let ticket = match state.sign_in.throttle.take(client) {
        Ok(ticket) => ticket,
        Err(refused) => {
            state.sign_in.noise.throttled(now());
            return Ok(throttled(refused));
        }
    };
    check_csrf(&session, &form.csrf).await?;
    let refusal = Refusal {
        csrf: csrf_token(&session).await?,
        username: form.username.chars().take(64).collect(),
    };
    let at = now();
    let (user, epoch) = match attempt_sign_in(&state, &form, at).await? {
        Outcome::SignedIn { user, epoch } => (user, epoch),
        Outcome::Busy(busy) => {
            ticket.give_back();
            let error = format!(
                "samvault is busy checking other sign-ins. Try again in {} second(s).",
                busy.retry_after.as_secs().max(1)
            );
            return Ok(refusal.page(
                StatusCode::SERVICE_UNAVAILABLE,
                error,
                Some(busy.retry_after),
            ));
        }
        Outcome::Locked { until } => return Ok(refusal.locked(until, at)),
        Outcome::Refused => {
            let error = "Wrong user name, password or code.".to_string();
            return Ok(refusal.page(StatusCode::UNAUTHORIZED, error, None));
        }
    };
    ticket.give_back();
    start_session(&session, &user.username, epoch, at).await?;
    let role = serde_json::json!({ "role": user.role.as_str() });
    audit_quietly(&state, &user, "ops.sign_in", role, at).await;
    if user.must_change_password {
        Ok(Redirect::to("/ops/password").into_response())
    } else {
        Ok(Redirect::to("/ops").into_response())
    }
}

/// The answer to an address the throttle refuses: a page of its own, since the sign-in form
/// would need the session the throttle spares reading.
fn throttled(refused: Refused) -> Response {
    let (error, wait) = match refused {
        Refused::Failures(wait) => (
            message(
                StatusCode::TOO_MANY_REQUESTS,
                "Too many failed sign-ins",
                "Too many failed sign-ins from your address. Wait a minute, then try again.",
            ),
            wait,
        ),
        Refused::AtOnce => (
            message(
                StatusCode::TOO_MANY_REQUESTS,
                "Too many sign-ins at once",
                "Other sign-ins from your address are in progress. Wait for them, then try again.",
            ),
            Duration::from_secs(1),
        ),
    };
    with_retry_after(error.into_response(), Some(wait))
}

/// The sign-in form again, with why it was refused.
struct Refusal {
    csrf: String,
    username: String,
}

impl Refusal {
    fn page(self, status: StatusCode, error: String, retry_after: Option<Duration>) -> Response {
        let page = SigninPage {
            csrf: self.csrf,
            username: self.username,
            error: Some(error),
        };
        with_retry_after((status, page).into_response(), retry_after)
    }

    fn locked(self, until: i64, at: i64) -> Response {
        let error = format!(
            "Too many failed sign-ins: this account is locked for {} more minute(s).",
            ((until - at + 59) / 60).max(1)
        );
        self.page(StatusCode::UNAUTHORIZED, error, None)
    }
}

/// `response` with `Retry-After` in whole seconds (at least one), if there is a wait.
fn with_retry_after(mut response: Response, wait: Option<Duration>) -> Response {
    if let Some(wait) = wait {
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
    }
    response
}

/// Checks the form's credentials: for a real user, a place in the argon2 queue first, then
/// the attempt reserved in the database (so parallel attempts cannot outrun the lock), then
/// the password and the code. A name that is no user costs no argon2 work, only the time one
/// would take, and is counted rather than audited one by one.
async fn attempt_sign_in(state: &AppState, form: &SigninForm, at: i64) -> PageResult<Outcome> {
    let Some(user) = ops_users::get(&state.db, &form.username)
        .await
        .map_err(unavailable)?
    else {
        password::imitate_check().await;
        state.sign_in.noise.unknown_user(at);
        return Ok(Outcome::Refused);
    };
    let slot = match reserve_check(state, &user, at).await? {
        Ok(slot) => slot,
        Err(NoCheck::Locked { until }) => return Ok(Outcome::Locked { until }),
        Err(NoCheck::Busy(busy)) => return Ok(Outcome::Busy(busy)),
        Err(NoCheck::Gone) => return Ok(Outcome::Refused),
    };
    if let Some(epoch) = credentials_accepted(state, slot, &user, form, at).await? {
        return Ok(Outcome::SignedIn { user, epoch });
    }
    audit_quietly(
        state,
        &user,
        "ops.sign_in_failed",
        serde_json::json!({}),
        at,
    )
    .await;
    Ok(Outcome::Refused)
}

/// Why a password cannot be checked now.
enum NoCheck {
    Locked {
        until: i64,
    },
    Busy(password::Busy),
    /// The user was removed since it was read.
    Gone,
}

/// What checking `user`'s password needs first, at sign-in as in the password form: the
/// account not locked, a place in the argon2 queue, then the attempt reserved in the database
/// (counted as a failure until it succeeds).
async fn reserve_check(
    state: &AppState,
    user: &OpsUser,
    at: i64,
) -> PageResult<Result<password::Slot<'static>, NoCheck>> {
    if let Some(until) = user.locked_until.filter(|until| *until > at) {
        return Ok(Err(NoCheck::Locked { until }));
    }
    let slot = match password::admit() {
        Ok(slot) => slot,
        Err(busy) => return Ok(Err(NoCheck::Busy(busy))),
    };
    let attempt = ops_signin::reserve_attempt(&state.db, &user.username, at, FREE_ATTEMPTS)
        .await
        .map_err(unavailable)?;
    Ok(match attempt {
        Attempt::Reserved => Ok(slot),
        Attempt::Locked { until } => Err(NoCheck::Locked { until }),
        Attempt::NoSuchUser => Err(NoCheck::Gone),
    })
}

/// Audits `action` by `user`; a failure to write is not the person's concern (the action
/// itself happened or was refused either way).
async fn audit_quietly(
    state: &AppState,
    user: &OpsUser,
    action: &str,
    detail: serde_json::Value,
    at: i64,
) {
    let actor = format!("ops:{}", user.username);
    let _ = audit::append(&state.db, &actor, action, None, detail, at).await;
}

/// The session epoch to carry if `form` holds `user`'s password and a code not used before
/// (then recorded as used). A disabled user is never accepted, though the password is checked
/// all the same.
async fn credentials_accepted(
    state: &AppState,
    slot: password::Slot<'static>,
    user: &OpsUser,
    form: &SigninForm,
    at: i64,
) -> PageResult<Option<i64>> {
    let presented = zeroize::Zeroizing::new(form.password.expose_secret().to_string());
    let password_ok = slot.check(presented, user.password_hash.clone()).await;
    if !password_ok || user.disabled_at.is_some() {
        return Ok(None);
    }
    let secret = state
        .vault
        .open(&user.totp, &ops_users::totp_context(&user.username))
        .await
        .map_err(unavailable)?;
    let step = totp::verify(
        secret.expose_secret(),
        form.code.expose_secret(),
        at,
        user.totp_last_step,
    );
    let Some(step) = step else {
        return Ok(None);
    };
    ops_signin::accept_sign_in(&state.db, &user.username, &user.password_hash, step, at)
        .await
        .map_err(unavailable)
}

/// A new session id and a new CSRF token at sign-in: nothing from before carries over. The
/// session carries the user's epoch, which a password change or a disable moves on.
async fn start_session(session: &Session, username: &str, epoch: i64, at: i64) -> PageResult<()> {
    session.cycle_id().await.map_err(unavailable)?;
    session
        .insert(USER_KEY, username)
        .await
        .map_err(unavailable)?;
    session.insert(SINCE_KEY, at).await.map_err(unavailable)?;
    session
        .insert(EPOCH_KEY, epoch)
        .await
        .map_err(unavailable)?;
    session
        .insert(CSRF_KEY, random_token())
        .await
        .map_err(unavailable)
}

async fn password_form(signed_in: SignedIn<PasswordChange>) -> PasswordPage {
    PasswordPage {
        forced: signed_in.user.must_change_password,
        csrf: signed_in.csrf,
        error: None,
    }
}

#[derive(Deserialize)]
struct PasswordForm {
    #[serde(default)]
    csrf: String,
    current: SecretString,
    new: SecretString,
    confirm: SecretString,
}

/// How a password change ended, past the checks of the new password.
enum Change {
    Changed {
        epoch: i64,
    },
    WrongCurrent,
    Locked {
        until: i64,
    },
    Busy(password::Busy),
    /// The password changed since this page's request read it (another session).
    Raced,
}

async fn change_password(
    State(state): State<AppState>,
    signed_in: SignedIn<PasswordChange>,
    Form(form): Form<PasswordForm>,
) -> PageResult {
    let SignedIn {
        user,
        session,
        csrf,
        ..
    } = signed_in;
    check_csrf(&session, &form.csrf).await?;
    let refuse = |status: StatusCode, error: String, wait: Option<Duration>| {
        let page = PasswordPage {
            csrf: csrf.clone(),
            forced: user.must_change_password,
            error: Some(error),
        };
        Ok(with_retry_after((status, page).into_response(), wait))
    };
    if let Err(reason) = new_password_problem(&form, &user.username) {
        return refuse(StatusCode::BAD_REQUEST, reason.to_string(), None);
    }
    let at = now();
    let epoch = match replace_password(&state, &user, &form, at).await? {
        Change::Changed { epoch } => epoch,
        Change::WrongCurrent => {
            let error = "The current password is wrong.".to_string();
            return refuse(StatusCode::BAD_REQUEST, error, None);
        }
        Change::Locked { until } => {
            let error = format!(
                "Too many wrong passwords: this account is locked for {} more minute(s).",
                ((until - at + 59) / 60).max(1)
            );
            let wait = Duration::from_secs(until.saturating_sub(at).max(1) as u64);
            return refuse(StatusCode::TOO_MANY_REQUESTS, error, Some(wait));
        }
        Change::Busy(busy) => {
            let error = "samvault is busy checking other passwords. Try again in a moment.";
            return refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                error.into(),
                Some(busy.retry_after),
            );
        }
        Change::Raced => {
            let error = "Your password was changed meanwhile. Sign in again.".to_string();
            return refuse(StatusCode::CONFLICT, error, None);
        }
    };
    // This session stays signed in under the new epoch; every other one of the user ends.
    session
        .insert(EPOCH_KEY, epoch)
        .await
        .map_err(unavailable)?;
    session.cycle_id().await.map_err(unavailable)?;
    audit_quietly(
        &state,
        &user,
        "ops.password_changed",
        serde_json::json!({}),
        at,
    )
    .await;
    Ok(Redirect::to("/ops").into_response())
}

/// Why the new password in `form` cannot be used, if it cannot.
fn new_password_problem(form: &PasswordForm, username: &str) -> Result<(), &'static str> {
    let (new, confirm) = (form.new.expose_secret(), form.confirm.expose_secret());
    if new != confirm {
        return Err("The two new passwords differ.");
    }
    password::check_new(new, username)?;
    if new == form.current.expose_secret() {
        return Err("Choose a password different from the current one.");
    }
    Ok(())
}

/// Checks the current password as a sign-in is checked (a place in the argon2 queue, the
/// attempt reserved against the account's lock), then stores the new one under a new epoch.
async fn replace_password(
    state: &AppState,
    user: &OpsUser,
    form: &PasswordForm,
    at: i64,
) -> PageResult<Change> {
    let slot = match reserve_check(state, user, at).await? {
        Ok(slot) => slot,
        Err(NoCheck::Locked { until }) => return Ok(Change::Locked { until }),
        Err(NoCheck::Busy(busy)) => return Ok(Change::Busy(busy)),
        Err(NoCheck::Gone) => return Ok(Change::Raced),
    };
    let stored = user.password_hash.clone();
    let current = zeroize::Zeroizing::new(form.current.expose_secret().to_string());
    let new = zeroize::Zeroizing::new(form.new.expose_secret().to_string());
    let hashed = slot
        .run(move || password::verify(&current, Some(&stored)).then(|| password::hash(&new)))
        .await;
    let Some(hashed) = hashed else {
        let detail = serde_json::json!({});
        audit_quietly(state, user, "ops.password_change_failed", detail, at).await;
        return Ok(Change::WrongCurrent);
    };
    let changed =
        ops_signin::change_password(&state.db, &user.username, &user.password_hash, &hashed)
            .await
            .map_err(unavailable)?;
    Ok(changed.map_or(Change::Raced, |epoch| Change::Changed { epoch }))
}

#[derive(Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

async fn signout(session: Session, Form(form): Form<CsrfForm>) -> PageResult<Redirect> {
    check_csrf(&session, &form.csrf).await?;
    let _ = session.flush().await;
    Ok(Redirect::to("/ops/signin"))
}
