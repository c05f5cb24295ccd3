//! What the HTML pages share: the page models for the askama templates in `templates/`
//! (auto-escaped HTML), the stylesheet, and [`PageError`], the one error type of the
//! onboarding and dashboard handlers, logged in one place ([`log_page_errors`]).

use std::error::Error;
use std::sync::Arc;
use std::time::Duration;

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};

use crate::domain::TenantId;

#[derive(Template, WebTemplate)]
#[template(path = "onboard.html")]
pub struct OnboardPage {
    pub app_name: String,
    pub client_id: String,
    pub redirect_uri: String,
    pub scopes: Vec<(String, &'static str)>,
    pub csrf: String,
    pub invitation: Option<String>,
    pub invited_tenant: Option<String>,
}

#[derive(Template, WebTemplate)]
#[template(path = "onboard_done.html")]
pub struct ConsentDonePage {
    pub app_name: String,
    pub organisation: String,
    pub tenant_id: String,
    pub upn: String,
    pub mfa: bool,
    pub amr: String,
    pub scopes: String,
    pub expires: String,
}

#[derive(Template, WebTemplate)]
#[template(path = "onboard_error.html")]
pub struct ErrorPage {
    pub title: String,
    pub message: String,
    pub action: String,
    pub code: Option<String>,
    /// Where "Start again" leads: the first page of the flow that failed.
    pub restart: &'static str,
}

/// The dashboard's plain page: a title and a sentence.
#[derive(Template, WebTemplate)]
#[template(path = "ops/message.html")]
struct MessagePage {
    title: &'static str,
    message: &'static str,
}

/// Why a page handler answers with something other than its page. A refusal (a 4xx, or a
/// redirect to sign in first) is the answer the person needs, not a fault of samvault's, and
/// is not logged as one. An internal failure (database, key provider, session store) carries
/// its [`Cause`], which the page never shows and [`log_page_errors`] logs once, with the
/// request. Turning one into a response has no side effect (as in axum's `error-handling`
/// example): the cause travels in the response's extensions. Boxed: handlers return it on
/// the cold path only, and their `Result`s stay small.
pub struct PageError(Box<Failure>);

struct Failure {
    status: StatusCode,
    view: View,
    cause: Option<Cause>,
    /// When to come back (`Retry-After`), for a refusal that passes.
    retry_after: Option<Duration>,
}

enum View {
    Message {
        title: &'static str,
        text: &'static str,
    },
    /// An onboarding flow's page: what happened, what to do, where to start again.
    Flow(ErrorPage),
    /// Somewhere to go first (sign in, change the password).
    Redirect(&'static str),
}

/// An internal failure behind an error page: for the log only.
#[derive(Clone)]
pub struct Cause {
    error: Arc<dyn Error + Send + Sync>,
    tenant: Option<TenantId>,
}

pub type PageResult<T = Response> = Result<T, PageError>;

impl PageError {
    /// A dashboard page with a title and a sentence.
    pub fn message(status: StatusCode, title: &'static str, text: &'static str) -> Self {
        Self::new(status, View::Message { title, text })
    }

    /// An onboarding flow's error page.
    pub fn flow(status: StatusCode, page: ErrorPage) -> Self {
        Self::new(status, View::Flow(page))
    }

    /// A 303 to `to`.
    pub fn redirect(to: &'static str) -> Self {
        Self::new(StatusCode::SEE_OTHER, View::Redirect(to))
    }

    fn new(status: StatusCode, view: View) -> Self {
        PageError(Box::new(Failure {
            status,
            view,
            cause: None,
            retry_after: None,
        }))
    }

    /// The internal failure this page stands for, to be logged (and only logged).
    pub fn caused_by(mut self, error: impl Into<Box<dyn Error + Send + Sync>>) -> Self {
        self.0.cause = Some(Cause {
            error: Arc::from(error.into()),
            tenant: None,
        });
        self
    }

    /// Says when to come back: `Retry-After`, in whole seconds (at least one).
    pub fn retry_after(mut self, wait: Duration) -> Self {
        self.0.retry_after = Some(wait);
        self
    }

    /// The tenant the failed request was about, for the log line of its cause.
    pub fn for_tenant(mut self, tenant: &TenantId) -> Self {
        if let Some(cause) = &mut self.0.cause {
            cause.tenant = Some(tenant.clone());
        }
        self
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let Failure {
            status,
            view,
            cause,
            retry_after,
        } = *self.0;
        let mut response = match view {
            View::Message { title, text } => (
                status,
                MessagePage {
                    title,
                    message: text,
                },
            )
                .into_response(),
            View::Flow(page) => (status, page).into_response(),
            View::Redirect(to) => Redirect::to(to).into_response(),
        };
        if let Some(cause) = cause {
            response.extensions_mut().insert(cause);
        }
        if let Some(wait) = retry_after {
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        response
    }
}

/// The one place an error page's cause is logged: once, as an error, with the method and the
/// route (the template, not the path: `/onboard/i/{invitation}` never logs a link's token).
/// Layered on the onboarding and dashboard routers, inside the request's span.
pub async fn log_page_errors(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let route = request.extensions().get::<MatchedPath>().cloned();
    let mut response = next.run(request).await;
    if let Some(cause) = response.extensions_mut().remove::<Cause>() {
        tracing::error!(
            %method,
            route = route.as_ref().map_or("", MatchedPath::as_str),
            status = response.status().as_u16(),
            tenant.id = cause.tenant.as_ref().map(TenantId::as_str),
            error = %cause.error,
            "page failed"
        );
    }
    response
}

/// The one stylesheet, compiled into the binary (no file-system access at run time).
pub async fn stylesheet() -> impl IntoResponse {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/css; charset=utf-8"),
            ),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=3600"),
            ),
        ],
        include_str!("../../static/samvault.css"),
    )
}
