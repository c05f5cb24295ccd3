//! Signing in and out of the dashboard: password + TOTP (once-only codes), lockout with
//! backoff, the forced password change at first sign-in.

use askama::Template;
use askama_web::WebTemplate;
use axum::Router;
use axum::extract::{Form, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect};
use axum::routing::{get, post};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tower_sessions::Session;

use super::guard::{CSRF_KEY, PasswordChange, SINCE_KEY, USER_KEY, check_csrf, csrf_token};
use super::{PageResult, SignedIn, unavailable};
use crate::http::AppState;
use crate::onboarding::random_token;
use crate::ops::{password, totp};
use crate::storage::ops_users::{self, OpsUser};
use crate::storage::{audit, now};

/// Failed sign-ins allowed before the account locks (then 1 min, doubling, capped at a day).
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

async fn signin(
    State(state): State<AppState>,
    session: Session,
    Form(form): Form<SigninForm>,
) -> PageResult {
    check_csrf(&session, &form.csrf).await?;
    let csrf = csrf_token(&session).await?;
    let at = now();
    let user = ops_users::get(&state.db, &form.username)
        .await
        .map_err(unavailable)?;
    let refuse = |error: String| {
        let username = form.username.chars().take(64).collect();
        let page = SigninPage {
            csrf: csrf.clone(),
            username,
            error: Some(error),
        };
        Ok((StatusCode::UNAUTHORIZED, page).into_response())
    };
    if let Some(until) = user.as_ref().and_then(|u| u.locked_until)
        && until > at
    {
        return refuse(format!(
            "Too many failed sign-ins: this account is locked for {} more minute(s).",
            (until - at + 59) / 60
        ));
    }
    let accepted = match &user {
        Some(user) => credentials_accepted(&state, user, &form, at).await?,
        None => {
            // As slow as a wrong password for a real user: the name's existence stays hidden.
            let presented = zeroize::Zeroizing::new(form.password.expose_secret().to_string());
            password::run(move || password::verify(&presented, None)).await;
            false
        }
    };
    let user = match user {
        Some(user) if accepted => user,
        user => {
            record_failure(&state, user.as_ref(), at).await?;
            return refuse("Wrong user name, password or code.".into());
        }
    };
    start_session(&session, &user.username, at).await?;
    let _ = audit::append(
        &state.db,
        &format!("ops:{}", user.username),
        "ops.sign_in",
        None,
        serde_json::json!({ "role": user.role.as_str() }),
        at,
    )
    .await;
    if user.must_change_password {
        Ok(Redirect::to("/ops/password").into_response())
    } else {
        Ok(Redirect::to("/ops").into_response())
    }
}

/// Whether `form` holds `user`'s password and a code not used before (then recorded as
/// used). A disabled user is never accepted, though the password is checked all the same.
async fn credentials_accepted(
    state: &AppState,
    user: &OpsUser,
    form: &SigninForm,
    at: i64,
) -> PageResult<bool> {
    // argon2id costs tens of milliseconds of CPU and 19 MiB: on its own bounded threads.
    let stored = user.password_hash.clone();
    let presented = zeroize::Zeroizing::new(form.password.expose_secret().to_string());
    let password_ok =
        password::run(move || password::verify(&presented, Some(stored.as_str()))).await;
    if !password_ok || user.disabled_at.is_some() {
        return Ok(false);
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
        return Ok(false);
    };
    ops_users::record_sign_in(&state.db, &user.username, step, at)
        .await
        .map_err(unavailable)
}

/// Counts a failed sign-in against a real user (towards the lockout) and audits it.
async fn record_failure(state: &AppState, user: Option<&OpsUser>, at: i64) -> PageResult<()> {
    if let Some(user) = user {
        ops_users::record_failure(&state.db, &user.username, at, FREE_ATTEMPTS)
            .await
            .map_err(unavailable)?;
    }
    // A name that is no user is not recorded as typed: people type their password into
    // the user-name field, and the audit log keeps for good whatever it is given.
    let name = user.map_or("(unknown)", |u| u.username.as_str());
    let _ = audit::append(
        &state.db,
        &format!("ops:{name}"),
        "ops.sign_in_failed",
        None,
        serde_json::json!({}),
        at,
    )
    .await;
    Ok(())
}

/// A new session id and a new CSRF token at sign-in: nothing from before carries over.
async fn start_session(session: &Session, username: &str, at: i64) -> PageResult<()> {
    session.cycle_id().await.map_err(unavailable)?;
    session
        .insert(USER_KEY, username)
        .await
        .map_err(unavailable)?;
    session.insert(SINCE_KEY, at).await.map_err(unavailable)?;
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
    let refuse = |error: &str| {
        let page = PasswordPage {
            csrf: csrf.clone(),
            forced: user.must_change_password,
            error: Some(error.to_string()),
        };
        Ok((StatusCode::BAD_REQUEST, page).into_response())
    };
    let (new, confirm) = (form.new.expose_secret(), form.confirm.expose_secret());
    if new != confirm {
        return refuse("The two new passwords differ.");
    }
    if let Err(reason) = password::check_new(new, &user.username) {
        return refuse(reason);
    }
    if new == form.current.expose_secret() {
        return refuse("Choose a password different from the current one.");
    }
    let stored = user.password_hash.clone();
    let current = zeroize::Zeroizing::new(form.current.expose_secret().to_string());
    let new = zeroize::Zeroizing::new(new.to_string());
    let hashed = password::run(move || {
        password::verify(&current, Some(&stored)).then(|| password::hash(&new))
    })
    .await;
    let Some(hashed) = hashed else {
        return refuse("The current password is wrong.");
    };
    ops_users::set_password(&state.db, &user.username, &hashed, false)
        .await
        .map_err(unavailable)?;
    let _ = audit::append(
        &state.db,
        &format!("ops:{}", user.username),
        "ops.password_changed",
        None,
        serde_json::json!({}),
        now(),
    )
    .await;
    session.cycle_id().await.map_err(unavailable)?;
    Ok(Redirect::to("/ops").into_response())
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
