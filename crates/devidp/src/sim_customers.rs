//! `/_sim/` calls for customer tenants and the Partner Center stand-in (REFERENCE §6): add
//! customers, end (or restore) a delegated-admin relationship, remove the app from a
//! customer tenant, drop a customer from its partner's list, show what was consented where,
//! and make Partner Center throttle or fail.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::customers::{AddError, CustomerView};
use super::directory::CustomerSeed;
use super::partner_center::PcFault;
use super::sim::{bad_request, not_found, parse_body};
use super::{AppState, DEMO_CLIENT_ID};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/customers", get(list))
        .route("/customers/{customer_id}", get(show))
        .route("/partners/{partner_id}/customers", post(add))
        .route(
            "/partners/{partner_id}/customers/{customer_id}",
            delete(unlist),
        )
        .route(
            "/customers/{customer_id}/end-relationship",
            post(end_relationship),
        )
        .route(
            "/customers/{customer_id}/restore-relationship",
            post(restore_relationship),
        )
        .route("/customers/{customer_id}/remove-app", post(remove_app))
        .route(
            "/partner-center/faults",
            post(set_faults).get(get_faults).delete(clear_faults),
        )
}

#[derive(Deserialize)]
struct ListQuery {
    partner: Option<String>,
}

/// Every customer (or a partner's) with its relationship, list membership and consents.
async fn list(State(st): State<AppState>, Query(q): Query<ListQuery>) -> Json<Value> {
    let partner = q.partner.map(|p| p.to_ascii_lowercase());
    Json(json!(st.idp.lock().customers.views(partner.as_deref())))
}

async fn show(State(st): State<AppState>, Path(id): Path<String>) -> Response {
    match st.idp.lock().customers.get(&id) {
        Some(c) => Json(json!(CustomerView::of(c))).into_response(),
        None => not_found(format!("unknown customer {id}")),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewCustomer {
    id: Option<String>,
    name: Option<String>,
    domain: Option<String>,
    /// `active` (default) or `ended`.
    relationship: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum AddBody {
    Many { customers: Vec<NewCustomer> },
    One(NewCustomer),
}

/// Adds customer tenants to a partner's list (201): one object answers one customer, a
/// `{"customers": [...]}` batch a list. Nothing is added when one of them is refused.
async fn add(State(st): State<AppState>, Path(partner): Path<String>, body: Bytes) -> Response {
    let Some(partner) = st.idp.directory().tenant(&partner).map(|t| t.id.clone()) else {
        return not_found(format!("unknown partner tenant {partner}"));
    };
    let (wanted, many) = match serde_json::from_slice::<AddBody>(&body) {
        Ok(AddBody::Many { customers }) => (customers, true),
        Ok(AddBody::One(one)) => (vec![one], false),
        Err(e) => return bad_request(format!("invalid JSON body: {e}")),
    };
    let seeds = match wanted
        .into_iter()
        .map(|c| seed(&partner, c))
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(seeds) => seeds,
        Err(why) => return bad_request(why),
    };
    let dir = st.idp.directory();
    let mut state = st.idp.lock();
    let mut seen = HashSet::new();
    for s in &seeds {
        let taken = state.customers.get(&s.id).is_some()
            || state.customers.get(&s.domain).is_some()
            || dir.tenant(&s.id).is_some()
            || dir.tenant(&s.domain).is_some()
            || !seen.insert(s.id.clone())
            || !seen.insert(s.domain.clone());
        if taken {
            let msg = format!("customer {} or domain {} exists already", s.id, s.domain);
            return (StatusCode::CONFLICT, Json(json!({ "error": msg }))).into_response();
        }
    }
    let mut added = Vec::with_capacity(seeds.len());
    for s in &seeds {
        match state.customers.add(dir, s) {
            Ok(c) => added.push(json!(CustomerView::of(c))),
            Err(AddError::UnknownPartner | AddError::Duplicate) => {
                return bad_request(format!("customer {} could not be added", s.id));
            }
        }
    }
    let body = if many { json!(added) } else { added.remove(0) };
    (StatusCode::CREATED, Json(body)).into_response()
}

/// A customer as the partner gets it: a fresh tenant id and `.example` domain unless given.
fn seed(partner: &str, c: NewCustomer) -> Result<CustomerSeed, String> {
    let id = match c.id {
        Some(raw) => uuid::Uuid::parse_str(&raw)
            .map_err(|_| format!("customer id {raw:?} is not a GUID"))?
            .to_string(),
        None => uuid::Uuid::new_v4().to_string(),
    };
    let name = c
        .name
        .filter(|n| !n.trim().is_empty())
        .unwrap_or_else(|| format!("Customer {}", &id[..8]));
    let domain = match c.domain {
        Some(d) if !d.trim().is_empty() => d.trim().to_ascii_lowercase(),
        Some(_) => return Err("domain is empty".into()),
        None => format!("{id}.example"),
    };
    let relationship_active = match c.relationship.as_deref() {
        None | Some("active") => true,
        Some("ended") => false,
        Some(other) => return Err(format!("relationship {other:?}: use active or ended")),
    };
    Ok(CustomerSeed {
        id,
        name,
        domain,
        partner_tenant_id: partner.to_string(),
        relationship_active,
    })
}

/// The customer is no longer in the partner's Partner Center list (its tenant, relationship
/// and consents stay).
async fn unlist(
    State(st): State<AppState>,
    Path((partner, customer)): Path<(String, String)>,
) -> Response {
    let mut state = st.idp.lock();
    let id = match state.customers.get(&customer) {
        Some(c) if c.partner_tenant_id.eq_ignore_ascii_case(&partner) => c.id.clone(),
        _ => return not_found(format!("{customer} is no customer of {partner}")),
    };
    state.customers.unlist(&id);
    Json(json!({ "customer_id": id, "listed": false })).into_response()
}

/// The partner's delegated admin rights there end: redemptions at its authority answer
/// AADSTS50020.
async fn end_relationship(State(st): State<AppState>, Path(id): Path<String>) -> Response {
    set_relationship(&st, &id, false)
}

/// A new delegated-admin relationship (GDAP re-established).
async fn restore_relationship(State(st): State<AppState>, Path(id): Path<String>) -> Response {
    set_relationship(&st, &id, true)
}

fn set_relationship(st: &AppState, id: &str, active: bool) -> Response {
    let mut state = st.idp.lock();
    match state.customers.get_mut(id) {
        Some(c) => {
            c.relationship_active = active;
            let relationship = if active { "active" } else { "ended" };
            Json(json!({ "customer_id": c.id, "relationship": relationship })).into_response()
        }
        None => not_found(format!("unknown customer {id}")),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RemoveAppBody {
    client_id: Option<String>,
}

/// A customer's admin deleted the app from the tenant (Enterprise apps): its consent is gone
/// and redemptions there answer AADSTS65001.
async fn remove_app(State(st): State<AppState>, Path(id): Path<String>, body: Bytes) -> Response {
    let b: RemoveAppBody = match parse_body(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let client_id = b
        .client_id
        .unwrap_or_else(|| DEMO_CLIENT_ID.into())
        .to_ascii_lowercase();
    let mut state = st.idp.lock();
    match state.customers.get_mut(&id) {
        Some(c) => {
            let removed = c.consents.remove(&client_id).is_some();
            Json(json!({ "customer_id": c.id, "client_id": client_id, "removed": removed }))
                .into_response()
        }
        None => not_found(format!("unknown customer {id}")),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FaultBody {
    count: Option<u32>,
    /// Default 503 (Partner Center down); 429 answers the throttling body.
    status: Option<u16>,
    retry_after: Option<u64>,
    /// The fault lasts this long (from now), for any number of calls unless `count` is given.
    duration_secs: Option<f64>,
    latency_ms: Option<u64>,
}

/// Partner Center answers this way: the next `count` calls (default one), or every call for
/// `duration_secs`, e.g. `{"status": 429, "retry_after": 2, "duration_secs": 10}`.
async fn set_faults(State(st): State<AppState>, body: Bytes) -> Response {
    let b: FaultBody = match parse_body(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let status = match StatusCode::from_u16(b.status.unwrap_or(503)) {
        Ok(s) if s.as_u16() >= 400 => s,
        Ok(StatusCode::OK) if b.latency_ms.unwrap_or(0) > 0 => StatusCode::OK,
        _ => return bad_request("status must be 400-599, or 200 with latency_ms (slow answers)"),
    };
    let until = match b.duration_secs {
        Some(secs) if secs.is_finite() && secs > 0.0 => {
            Some(Instant::now() + Duration::from_secs_f64(secs.min(86_400.0)))
        }
        Some(_) => return bad_request("duration_secs must be positive"),
        None => None,
    };
    let remaining = match (b.count, until) {
        (Some(n), _) => Some(n),
        (None, Some(_)) => None,
        (None, None) => Some(1),
    };
    let mut pc = st.idp.partner_center();
    pc.set_fault(Some(PcFault {
        remaining,
        until,
        status,
        retry_after: b.retry_after,
        latency_ms: b.latency_ms.unwrap_or(0),
    }));
    Json(pc.fault_view(Instant::now())).into_response()
}

async fn get_faults(State(st): State<AppState>) -> Json<Value> {
    Json(st.idp.partner_center().fault_view(Instant::now()))
}

async fn clear_faults(State(st): State<AppState>) -> Json<Value> {
    let mut pc = st.idp.partner_center();
    pc.set_fault(None);
    Json(pc.fault_view(Instant::now()))
}
