//! `/ops/audit`: the audit log, newest first, with filters (actor, action, tenant, dates),
//! keyset paging by `seq`, and a "Verify chain" button that runs the same check as
//! `samvault audit verify`. All of it is read-only, so viewers may use all of it; the
//! verification is itself audited (`ops.audit.verify`).

use askama::Template;
use askama_web::WebTemplate;
use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use serde::Deserialize;
use tokio::sync::Mutex;

use super::{
    Action, Chrome, PageResult, Section, SignedIn, Viewer, audit_action, bad_request, message,
    unavailable, when,
};
use crate::domain::TenantId;
use crate::http::AppState;
use crate::storage::audit::{self, AuditFilter, Broken, Verified};

/// Entries per page: enough to scan, small enough to render at once.
const PAGE_SIZE: i64 = 50;
/// Longer filter values cannot match anything samvault writes.
const MAX_FILTER_LEN: usize = 200;

/// One verification at a time per process: it reads the whole log, and a second click or a
/// second viewer should not double that work.
static VERIFYING: Mutex<()> = Mutex::const_new(());

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/ops/audit", get(log))
        .route("/ops/audit/verify", post(verify))
}

/// The filter form as submitted (every field optional; empty means "any").
#[derive(Deserialize, Default)]
struct AuditQuery {
    actor: Option<String>,
    action: Option<String>,
    tenant: Option<String>,
    from: Option<String>,
    to: Option<String>,
    before: Option<String>,
}

/// The filters as typed, echoed back into the form and the paging links.
#[derive(Default)]
struct FilterValues {
    actor: String,
    action: String,
    tenant: String,
    from: String,
    to: String,
}

impl FilterValues {
    fn is_empty(&self) -> bool {
        [
            &self.actor,
            &self.action,
            &self.tenant,
            &self.from,
            &self.to,
        ]
        .iter()
        .all(|v| v.is_empty())
    }

    /// The query string of these filters, and of `before` when paging (empty values left out).
    fn query(&self, before: Option<i64>) -> String {
        let before = before.map(|seq| seq.to_string()).unwrap_or_default();
        let pairs: Vec<(&str, &str)> = [
            ("actor", self.actor.as_str()),
            ("action", self.action.as_str()),
            ("tenant", self.tenant.as_str()),
            ("from", self.from.as_str()),
            ("to", self.to.as_str()),
            ("before", before.as_str()),
        ]
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .collect();
        serde_urlencoded::to_string(pairs).unwrap_or_default()
    }
}

fn log_address(query: String) -> String {
    if query.is_empty() {
        "/ops/audit".to_string()
    } else {
        format!("/ops/audit?{query}")
    }
}

fn trimmed(value: Option<String>) -> String {
    value.map(|v| v.trim().to_string()).unwrap_or_default()
}

/// `YYYY-MM-DD` (what `<input type="date">` sends) as the Unix time of that day's midnight UTC.
fn parse_day(value: &str) -> Option<i64> {
    let mut parts = value.splitn(3, '-');
    let (year, month, day) = (parts.next()?, parts.next()?, parts.next()?);
    if year.len() != 4 || month.len() != 2 || day.len() != 2 {
        return None;
    }
    let date = time::Date::from_calendar_date(
        year.parse().ok()?,
        time::Month::try_from(month.parse::<u8>().ok()?).ok()?,
        day.parse().ok()?,
    )
    .ok()?;
    Some(date.midnight().assume_utc().unix_timestamp())
}

/// A filter value that could be a name samvault writes: printable, not too long.
fn plausible(value: &str) -> bool {
    value.len() <= MAX_FILTER_LEN && !value.chars().any(char::is_control)
}

/// Turns the submitted form into a storage filter, or says which value cannot be used.
fn parse_filter(query: AuditQuery) -> Result<(AuditFilter, FilterValues), &'static str> {
    let values = FilterValues {
        actor: trimmed(query.actor),
        action: trimmed(query.action),
        tenant: trimmed(query.tenant),
        from: trimmed(query.from),
        to: trimmed(query.to),
    };
    let text = |value: &str| (!value.is_empty()).then(|| value.to_string());
    if !plausible(&values.actor) {
        return Err("The actor filter is too long or holds control characters.");
    }
    if !plausible(&values.action) {
        return Err("The action filter is too long or holds control characters.");
    }
    let tenant_id = match text(&values.tenant) {
        Some(tenant) => Some(
            TenantId::parse(&tenant)
                .map_err(
                    |_| "The tenant id must be a GUID like 6f3a2a5e-0c1d-4a3b-8f4e-1c2d3e4f5a01.",
                )?
                .to_string(),
        ),
        None => None,
    };
    let from = match text(&values.from) {
        Some(day) => {
            Some(parse_day(&day).ok_or("The 'from' date must be a date like 2026-11-23.")?)
        }
        None => None,
    };
    let until = match text(&values.to) {
        // Up to the end of that day.
        Some(day) => {
            Some(parse_day(&day).ok_or("The 'to' date must be a date like 2026-11-23.")? + 86_400)
        }
        None => None,
    };
    if let (Some(from), Some(until)) = (from, until)
        && from >= until
    {
        return Err("The 'from' date is after the 'to' date.");
    }
    let before_seq = match query
        .before
        .as_deref()
        .map(str::trim)
        .filter(|b| !b.is_empty())
    {
        Some(before) => Some(
            before
                .parse::<i64>()
                .ok()
                .filter(|seq| *seq > 0)
                .ok_or("The page position must be a positive entry number.")?,
        ),
        None => None,
    };
    let filter = AuditFilter {
        actor: text(&values.actor),
        action: text(&values.action),
        tenant_id,
        from,
        until,
        before_seq,
    };
    Ok((filter, values))
}

/// An entry as the page shows it.
struct EntryRow {
    seq: i64,
    at: String,
    actor: String,
    action: String,
    tenant_id: String,
    detail: String,
}

#[derive(Template, WebTemplate)]
#[template(path = "ops/audit.html")]
pub(super) struct AuditPage {
    chrome: Chrome,
    filters: FilterValues,
    filtered: bool,
    entries: Vec<EntryRow>,
    /// The address of the next (older) page, when there is one.
    older: Option<String>,
    /// The address of the newest page with the same filters, when this is not it.
    newest: Option<String>,
}

async fn log(
    State(state): State<AppState>,
    query: Result<Query<AuditQuery>, QueryRejection>,
    signed_in: SignedIn<Viewer>,
) -> PageResult<AuditPage> {
    let Ok(Query(query)) = query else {
        return Err(bad_request(
            "The filters could not be read. Open the audit log again.",
        ));
    };
    let (filter, filters) = parse_filter(query).map_err(bad_request)?;
    // One more than a page tells whether an older page exists.
    let mut events = audit::search(&state.db, &filter, PAGE_SIZE + 1)
        .await
        .map_err(unavailable)?;
    let has_older = events.len() as i64 > PAGE_SIZE;
    events.truncate(PAGE_SIZE as usize);
    let older = match events.last() {
        Some(last) if has_older => Some(log_address(filters.query(Some(last.seq)))),
        _ => None,
    };
    let newest = filter.before_seq.map(|_| log_address(filters.query(None)));
    Ok(AuditPage {
        chrome: signed_in.chrome(Section::Audit),
        filtered: !filters.is_empty(),
        entries: events
            .into_iter()
            .map(|e| EntryRow {
                seq: e.seq,
                at: when(Some(e.at)),
                actor: e.actor,
                action: e.action,
                tenant_id: e.tenant_id.unwrap_or_default(),
                detail: e.detail.to_string(),
            })
            .collect(),
        filters,
        older,
        newest,
    })
}

#[derive(Template, WebTemplate)]
#[template(path = "ops/audit_verify.html")]
pub(super) struct VerifyPage {
    chrome: Chrome,
    /// As `storage::audit::verify` answers.
    outcome: Result<Verified, Broken>,
    /// Whether `SAMVAULT_AUDIT_ANCHOR_FILE` is set (without it a cut tail goes unnoticed).
    anchored: bool,
}

/// Read-only, so any role may verify; it is still a form, so it carries the CSRF token.
async fn verify(State(state): State<AppState>, action: Action<Viewer>) -> PageResult<VerifyPage> {
    let Ok(_running) = VERIFYING.try_lock() else {
        return Err(message(
            StatusCode::CONFLICT,
            "A verification is already running",
            "Someone is verifying the audit chain right now. Try again in a moment.",
        ));
    };
    let outcome = audit::verify(&state.db, &[]).await.map_err(unavailable)?;
    let detail = match &outcome {
        Ok(v) => serde_json::json!({ "intact": true, "entries": v.entries }),
        Err(Broken::Entry(seq)) => serde_json::json!({ "intact": false, "broken_at": seq }),
        Err(Broken::Cut { head, last }) => {
            serde_json::json!({ "intact": false, "cut": { "anchor": head, "last": last } })
        }
        Err(Broken::Rewritten { head }) => {
            serde_json::json!({ "intact": false, "rewritten_at": head })
        }
        Err(Broken::Anchor(_)) => serde_json::json!({ "intact": false, "anchor": "unusable" }),
    };
    audit_action(&state, &action.user, "ops.audit.verify", None, detail).await?;
    if let Err(broken) = &outcome {
        tracing::warn!(?broken, user = %action.user.username, "audit chain broken");
    }
    Ok(VerifyPage {
        chrome: action.chrome(Section::Audit),
        outcome,
        anchored: state.config.audit.anchor_file.is_some(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(pairs: &[(&str, &str)]) -> AuditQuery {
        serde_urlencoded::from_str(&serde_urlencoded::to_string(pairs).unwrap()).unwrap()
    }

    #[test]
    fn days_are_utc_midnights() {
        assert_eq!(parse_day("1970-01-02"), Some(86_400));
        assert_eq!(parse_day("2026-02-30"), None);
        assert_eq!(parse_day("2026-1-05"), None);
        assert_eq!(parse_day("yesterday"), None);
        assert_eq!(parse_day("+2026-01-01"), None);
    }

    #[test]
    fn filters_are_parsed_or_refused() {
        let (filter, _) = parse_filter(query(&[
            ("action", " consent "),
            ("tenant", "6F3A2A5E-0C1D-4A3B-8F4E-1C2D3E4F5A01"),
            ("from", "1970-01-02"),
            ("to", "1970-01-02"),
            ("before", "7"),
            ("actor", ""),
        ]))
        .unwrap();
        assert_eq!(
            filter,
            AuditFilter {
                actor: None,
                action: Some("consent".into()),
                tenant_id: Some("6f3a2a5e-0c1d-4a3b-8f4e-1c2d3e4f5a01".into()),
                from: Some(86_400),
                until: Some(2 * 86_400),
                before_seq: Some(7),
            }
        );
        for bad in [
            ("tenant", "contoso"),
            ("from", "2026-13-01"),
            ("to", "soon"),
            ("before", "-1"),
            ("before", "x"),
            ("actor", "a\u{1}b"),
        ] {
            assert!(parse_filter(query(&[bad])).is_err(), "{bad:?}");
        }
        let long = "a".repeat(MAX_FILTER_LEN + 1);
        assert!(parse_filter(query(&[("action", &long)])).is_err());
        assert!(parse_filter(query(&[("from", "2026-02-02"), ("to", "2026-02-01")])).is_err());
    }

    #[test]
    fn paging_links_keep_the_filters() {
        let values = FilterValues {
            action: "ops.audit.verify".into(),
            tenant: String::new(),
            actor: "ops:a&b".into(),
            ..FilterValues::default()
        };
        assert_eq!(
            values.query(Some(42)),
            "actor=ops%3Aa%26b&action=ops.audit.verify&before=42"
        );
        assert_eq!(
            values.query(None),
            "actor=ops%3Aa%26b&action=ops.audit.verify"
        );
        assert_eq!(FilterValues::default().query(None), "");
    }
}
