//! Signing in and out of the dashboard: password + TOTP (once-only codes), lockout with
//! backoff, the forced password change at first sign-in.

use askama::Template;
use askama_web::WebTemplate;
use axum::Router;
use axum::extract::{Form, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tower_sessions::Session;

use super::{CSRF_KEY, SINCE_KEY, USER_KEY, check_csrf, csrf_token, signed_in, unavailable};
use crate::http::AppState;
use crate::http::onboard::random_token;
use crate::ops::{password, totp};
use crate::storage::ops_users::{self, Role};
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

async fn signin_form(session: Session) -> Response {
    match csrf_token(&session).await {
        Ok(csrf) => SigninPage {
            csrf,
            username: String::new(),
            error: None,
        }
        .into_response(),
        Err(response) => response,
    }
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
) -> Response {
    if let Err(response) = check_csrf(&session, &form.csrf).await {
        return response;
    }
    let csrf = match csrf_token(&session).await {
        Ok(csrf) => csrf,
        Err(response) => return response,
    };
    let at = now();
    let user = match ops_users::get(&state.db, &form.username).await {
        Ok(user) => user,
        Err(_) => return unavailable(),
    };
    let refuse = |error: &str| {
        (
            StatusCode::UNAUTHORIZED,
            SigninPage {
                csrf: csrf.clone(),
                username: form.username.chars().take(64).collect(),
                error: Some(error.to_string()),
            },
        )
    };
    if let Some(until) = user.as_ref().and_then(|u| u.locked_until)
        && until > at
    {
        return refuse(&format!(
            "Too many failed sign-ins: this account is locked for {} more minute(s).",
            (until - at + 59) / 60
        ))
        .into_response();
    }
    // argon2id costs tens of milliseconds of CPU and 19 MiB: on its own bounded threads.
    let stored = user.as_ref().map(|u| u.password_hash.clone());
    let presented = zeroize::Zeroizing::new(form.password.expose_secret().to_string());
    let password_ok = password::run(move || password::verify(&presented, stored.as_deref())).await;
    let mut step = None;
    if let Some(user) = user
        .as_ref()
        .filter(|u| password_ok && u.disabled_at.is_none())
    {
        let secret = match state
            .vault
            .open(&user.totp, &ops_users::totp_context(&user.username))
            .await
        {
            Ok(secret) => secret,
            Err(_) => return unavailable(),
        };
        step = totp::verify(
            secret.expose_secret(),
            form.code.expose_secret(),
            at,
            user.totp_last_step,
        );
    }
    let accepted = match (user.as_ref(), step) {
        (Some(user), Some(step)) => {
            match ops_users::record_sign_in(&state.db, &user.username, step, at).await {
                Ok(accepted) => accepted,
                Err(_) => return unavailable(),
            }
        }
        _ => false,
    };
    let Some(user) = user.clone().filter(|_| accepted) else {
        if let Some(user) = &user
            && ops_users::record_failure(&state.db, &user.username, at, FREE_ATTEMPTS)
                .await
                .is_err()
        {
            return unavailable();
        }
        // A name that is no user is not recorded as typed: people type their password into
        // the user-name field, and the audit log keeps for good whatever it is given.
        let name = user.as_ref().map_or("(unknown)", |u| u.username.as_str());
        let _ = audit::append(
            &state.db,
            &format!("ops:{name}"),
            "ops.sign_in_failed",
            None,
            serde_json::json!({}),
            at,
        )
        .await;
        return refuse("Wrong user name, password or code.").into_response();
    };
    // A new session id and a new CSRF token at sign-in: nothing from before carries over.
    if session.cycle_id().await.is_err()
        || session.insert(USER_KEY, &user.username).await.is_err()
        || session.insert(SINCE_KEY, at).await.is_err()
        || session.insert(CSRF_KEY, random_token()).await.is_err()
    {
        return unavailable();
    }
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
        Redirect::to("/ops/password").into_response()
    } else {
        Redirect::to("/ops").into_response()
    }
}

async fn password_form(State(state): State<AppState>, session: Session) -> Response {
    match signed_in(&state, &session, Role::Viewer, true).await {
        Ok((user, csrf)) => PasswordPage {
            csrf,
            forced: user.must_change_password,
            error: None,
        }
        .into_response(),
        Err(response) => response,
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
    session: Session,
    Form(form): Form<PasswordForm>,
) -> Response {
    let (user, csrf) = match signed_in(&state, &session, Role::Viewer, true).await {
        Ok(signed_in) => signed_in,
        Err(response) => return response,
    };
    if let Err(response) = check_csrf(&session, &form.csrf).await {
        return response;
    }
    let refuse = |error: &str| {
        (
            StatusCode::BAD_REQUEST,
            PasswordPage {
                csrf: csrf.clone(),
                forced: user.must_change_password,
                error: Some(error.to_string()),
            },
        )
            .into_response()
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
    if ops_users::set_password(&state.db, &user.username, &hashed, false)
        .await
        .is_err()
    {
        return unavailable();
    }
    let _ = audit::append(
        &state.db,
        &format!("ops:{}", user.username),
        "ops.password_changed",
        None,
        serde_json::json!({}),
        now(),
    )
    .await;
    if session.cycle_id().await.is_err() {
        return unavailable();
    }
    Redirect::to("/ops").into_response()
}

#[derive(Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

async fn signout(session: Session, Form(form): Form<CsrfForm>) -> Response {
    if let Err(response) = check_csrf(&session, &form.csrf).await {
        return response;
    }
    let _ = session.flush().await;
    Redirect::to("/ops/signin").into_response()
}
