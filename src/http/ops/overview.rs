//! `/ops`: the overview — partners per status, the app-credential alarm.

use askama::Template;
use askama_web::WebTemplate;
use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tower_sessions::Session;

use super::{Chrome, Section, page, unavailable};
use crate::http::AppState;
use crate::storage::ops_users::Role;
use crate::storage::{partners, rotation};

pub fn routes() -> Router<AppState> {
    Router::new().route("/ops", get(overview))
}

#[derive(Template, WebTemplate)]
#[template(path = "ops/overview.html")]
struct OverviewPage {
    chrome: Chrome,
    statuses: Vec<(&'static str, i64)>,
    total: i64,
    alarm: Option<String>,
}

async fn overview(State(state): State<AppState>, session: Session) -> Response {
    let (_, chrome) = match page(&state, &session, Role::Viewer, Section::Overview).await {
        Ok(signed_in) => signed_in,
        Err(response) => return response,
    };
    let Ok(counts) = partners::count_by_status(&state.db).await else {
        return unavailable();
    };
    let Ok(alarm) = rotation::alarm(&state.db, crate::broker::APP_CREDENTIALS_ALARM).await else {
        return unavailable();
    };
    OverviewPage {
        chrome,
        total: counts.iter().map(|(_, n)| n).sum(),
        statuses: counts.into_iter().map(|(s, n)| (s.as_str(), n)).collect(),
        alarm: alarm.map(|a| a.detail),
    }
    .into_response()
}
