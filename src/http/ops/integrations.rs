//! Placeholder: routes for this dashboard section are added by its implementation.

use axum::Router;

use crate::http::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
}
