//! `/ops/partners`: the partner list (search, status filter, four sort orders, keyset
//! pagination), a partner's record, and what ops can do to it: rotate now, a live access
//! check per resource, revoke and purge (admin), an onboarding link pinned to the tenant;
//! and to its customers: sync, consent, remove, the customer access check.
//!
//! Every query parameter and form field is hostile until parsed: a bad one is a 400 page
//! and changes nothing. No page shows a token: the access check decodes the claims of the
//! access tokens it obtains, and only those claims leave the broker.

mod actions;
mod customer_actions;
mod customer_check;
mod customers;
mod detail;
mod list;

use askama::Template;
use askama_web::WebTemplate;
use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Redirect};
use axum::routing::{get, post};
use base64::Engine;
use serde::Deserialize;
use tower_sessions::Session;

use super::{
    Action, Admin, Chrome, Operator, PageResult, Section, SignedIn, Viewer, audit_action,
    bad_request, not_found, unavailable, when,
};
use crate::broker::BrokerError;
use crate::domain::{PartnerStatus, TenantId};
use crate::http::AppState;
use crate::idp::errors::describe;
use crate::storage::partners::{self, ListedPartner, PartnerQuery, PartnerSort, Position};
use crate::storage::{StorageError, now, requests, rotation};

/// Rows per page of the list.
const PAGE_SIZE: usize = 50;
/// Longest search term accepted (names, domains and tenant ids are all shorter).
const MAX_SEARCH_CHARS: usize = 100;
/// Longest cursor accepted; far above what a real display name produces.
const MAX_CURSOR_CHARS: usize = 4096;
/// How many rows of each history the detail page shows.
const HISTORY_ROWS: i64 = 20;
/// How long an onboarding link made from the dashboard stays valid.
const INVITATION_LIFETIME_SECS: i64 = 7 * 86_400;
/// The session key of the one-time outcome message shown on a partner's page.
const NOTICE_KEY: &str = "ops.partners.notice";

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/ops/partners", get(list::list))
        .route("/ops/partners/{tenant_id}", get(detail::detail))
        .route("/ops/partners/{tenant_id}/rotate", post(actions::rotate))
        .route("/ops/partners/{tenant_id}/check", post(actions::check))
        .route("/ops/partners/{tenant_id}/revoke", post(actions::revoke))
        .route("/ops/partners/{tenant_id}/invite", post(actions::invite))
        .route(
            "/ops/partners/{tenant_id}/customers/sync",
            post(customer_actions::sync),
        )
        .route(
            "/ops/partners/{tenant_id}/customers/consent",
            post(customer_actions::consent_all),
        )
        .route(
            "/ops/partners/{tenant_id}/customers/check",
            post(customer_check::check),
        )
        .route(
            "/ops/partners/{tenant_id}/customers/{customer_id}/consent",
            post(customer_actions::consent_one),
        )
        .route(
            "/ops/partners/{tenant_id}/customers/{customer_id}/remove",
            post(customer_actions::remove),
        )
}

/// Days until the 90-day horizon, and how worried to be about it.
struct Expiry {
    text: String,
    class: &'static str,
}

impl Expiry {
    fn of(partner: &partners::Partner, warn_secs: i64, at: i64) -> Self {
        if partner.status == PartnerStatus::Revoked {
            return Expiry {
                text: "—".into(),
                class: "",
            };
        }
        let left = partner.horizon() - at;
        let days = left.div_euclid(86_400);
        if left <= 0 {
            Expiry {
                text: "expired".into(),
                class: "bad",
            }
        } else {
            Expiry {
                text: days.to_string(),
                class: if left < warn_secs { "expiring" } else { "" },
            }
        }
    }
}

fn next_rotation(listed: &ListedPartner) -> String {
    if listed.partner.status.is_usable() {
        when(Some(listed.rotate_at))
    } else {
        "not scheduled".into()
    }
}

/// The partner named by a path: a tenant id that is not a GUID is a 400, an unknown one a 404.
async fn existing(state: &AppState, raw_tenant: &str) -> PageResult<ListedPartner> {
    let tenant = TenantId::parse(raw_tenant).map_err(|_| {
        bad_request("A tenant id is a GUID like 6f3a2a5e-0c1d-4a3b-8f4e-1c2d3e4f5a01.")
    })?;
    partners::get_listed(&state.db, &tenant)
        .await
        .map_err(|e| unavailable(e).for_tenant(&tenant))?
        .ok_or_else(not_found)
}

/// A one-time message for the next view of a partner's page.
#[derive(serde::Serialize, Deserialize)]
struct Notice {
    ok: bool,
    text: String,
}
