//! Probes: `/healthz` (the process answers), `/readyz` (database and key provider reachable).
//!
//! Anyone can call `/readyz`, and with `azure-keyvault` its check is a Key Vault call: the
//! answer is the last check's while it is younger than [`FRESH`], and concurrent probes wait
//! for one check rather than make their own, so probes cost at most one check per [`FRESH`].

use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};

use super::AppState;

/// How long a check answers probes.
pub const FRESH: Duration = Duration::from_secs(5);

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

async fn healthz() -> &'static str {
    "ok"
}

/// What the last check found: the database and the key provider reachable.
#[derive(Clone, Copy)]
struct Check {
    at: Instant,
    database: bool,
    key_provider: bool,
}

/// The last `/readyz` check, shared by every probe of this process.
#[derive(Default)]
pub struct Readiness {
    last: tokio::sync::Mutex<Option<Check>>,
}

impl Readiness {
    async fn check(&self, state: &AppState) -> Check {
        // Held across the check: probes arriving meanwhile take its result.
        let mut last = self.last.lock().await;
        if let Some(check) = *last
            && check.at.elapsed() < FRESH
        {
            return check;
        }
        let check = Check {
            at: Instant::now(),
            database: state.db.ping().await.is_ok(),
            key_provider: state.vault.provider().check().await.is_ok(),
        };
        *last = Some(check);
        check
    }
}

async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<serde_json::Value>) {
    let Check {
        database,
        key_provider,
        ..
    } = state.readiness.check(&state).await;
    let status = if database && key_provider {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(serde_json::json!({ "database": database, "key_provider": key_provider })),
    )
}
