//! Page models for the askama templates in `templates/` (auto-escaped HTML).

use askama::Template;
use askama_web::WebTemplate;
use axum::http::{HeaderValue, header};
use axum::response::IntoResponse;

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
