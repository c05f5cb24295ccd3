//! `/ops`: the overview — partners and their customers per status, how close the grants are
//! to the 90-day limit (an SVG chart), rotations and failures over the last 7 days, the
//! app-credential alarm, and the next rotations due.

use askama::Template;
use askama_web::WebTemplate;
use axum::Router;
use axum::extract::State;
use axum::routing::get;

use super::chart::{AMBER, Bar, BarChart, GREEN, RED, Segment};
use super::{Chrome, PageResult, Section, SignedIn, Viewer, unavailable, when};
use crate::domain::{CustomerStatus, PartnerStatus};
use crate::http::AppState;
use crate::storage::replicas::Replica;
use crate::storage::stats::{self, DayAttempts, DueGrant, HORIZON_BUCKETS, INACTIVITY_LIMIT_SECS};
use crate::storage::{customers, now, rotation};

/// Days of rotation history the overview shows.
const HISTORY_DAYS: i64 = 7;
/// Rows of the "next rotations due" table.
const NEXT_DUE: i64 = 10;

pub fn routes() -> Router<AppState> {
    Router::new().route("/ops", get(overview))
}

#[derive(Template, WebTemplate)]
#[template(path = "ops/overview.html")]
struct OverviewPage {
    chrome: Chrome,
    statuses: Vec<StatusCount>,
    total: i64,
    customers: Vec<StatusCount>,
    customers_total: i64,
    alarm: Option<String>,
    /// A refused app credential while a later one works (the roll is half done).
    fallback: Option<String>,
    horizon: BarChart,
    horizon_rows: Vec<(String, i64)>,
    /// Usable grants with at most 14 days left.
    urgent: i64,
    history: BarChart,
    history_rows: Vec<(String, i64, i64)>,
    rotations: i64,
    failures: i64,
    next_due: Vec<DueRow>,
    processes: Vec<ProcessRow>,
}

/// A running `samvault serve`, as its heartbeats say.
struct ProcessRow {
    instance: String,
    pid: i64,
    started: String,
    seen_secs_ago: i64,
    /// No heartbeat for longer than liveness allows: stopped or dead, about to be reaped.
    silent: bool,
}

struct StatusCount {
    status: &'static str,
    label: &'static str,
    count: i64,
}

struct DueRow {
    tenant_id: String,
    display_name: String,
    status: String,
    due: String,
    days_left: i64,
    failures: i64,
}

fn status_label(status: PartnerStatus) -> &'static str {
    match status {
        PartnerStatus::Active => "Active",
        PartnerStatus::AtRisk => "At risk",
        PartnerStatus::ReconsentRequired => "Re-consent required",
        PartnerStatus::Revoked => "Revoked",
    }
}

fn bucket_label(first: i64, last: i64) -> String {
    if first == i64::MIN {
        "expired".to_string()
    } else {
        format!("{first}–{last} d")
    }
}

fn bucket_fill(last: i64) -> &'static str {
    match last {
        ..=14 => RED,
        15..=30 => AMBER,
        _ => GREEN,
    }
}

async fn overview(
    State(state): State<AppState>,
    signed_in: SignedIn<Viewer>,
) -> PageResult<OverviewPage> {
    let at = now();
    let db = &state.db;
    let ((counts, buckets), customer_counts, alarm, fallback, days, due, processes) =
        tokio::try_join!(
            stats::statuses_and_horizon(db, at),
            customers::counts_by_status(db),
            rotation::alarm(db, crate::broker::APP_CREDENTIALS_ALARM),
            rotation::alarm(db, crate::broker::APP_CREDENTIAL_FALLBACK_ALARM),
            stats::attempts_by_day(db, at, HISTORY_DAYS),
            stats::next_due(db, NEXT_DUE),
            crate::storage::replicas::all(db),
        )
        .map_err(unavailable)?;
    let horizon_bars = horizon_bars(&buckets);
    let history_bars = history_bars(&days);
    Ok(OverviewPage {
        chrome: signed_in.chrome(Section::Overview),
        processes: processes.into_iter().map(|r| process_row(r, at)).collect(),
        total: counts.iter().map(|(_, n)| n).sum(),
        statuses: status_counts(&counts),
        customers_total: customer_counts.iter().map(|(_, n)| n).sum(),
        customers: customer_status_counts(&customer_counts),
        alarm: alarm.map(|a| a.detail),
        fallback: fallback.map(|a| a.detail),
        horizon: BarChart::new(
            "Usable grants by days left before Entra's 90-day inactivity limit",
            &horizon_bars,
        ),
        horizon_rows: horizon_bars
            .iter()
            .map(|b| (b.label.clone(), b.segments[0].value))
            .collect(),
        urgent: urgent(&buckets),
        history: BarChart::new(
            "Redemptions per day over the last 7 days: successes and failures",
            &history_bars,
        ),
        history_rows: days
            .iter()
            .map(|d| (day_label(d.day), d.successes, d.failures))
            .collect(),
        rotations: days.iter().map(|d| d.successes).sum(),
        failures: days.iter().map(|d| d.failures).sum(),
        next_due: due.into_iter().map(|g| due_row(g, at)).collect(),
    })
}

/// Every status with its count of partners, in the order the page lists them.
fn status_counts(counts: &[(PartnerStatus, i64)]) -> Vec<StatusCount> {
    [
        PartnerStatus::Active,
        PartnerStatus::AtRisk,
        PartnerStatus::ReconsentRequired,
        PartnerStatus::Revoked,
    ]
    .into_iter()
    .map(|status| StatusCount {
        status: status.as_str(),
        label: status_label(status),
        count: counts
            .iter()
            .find(|(s, _)| *s == status)
            .map_or(0, |(_, n)| *n),
    })
    .collect()
}

fn customer_status_label(status: CustomerStatus) -> &'static str {
    match status {
        CustomerStatus::Unconsented => "Unconsented",
        CustomerStatus::Consented => "Consented",
        CustomerStatus::ConsentFailed => "Consent failed",
        CustomerStatus::AccessDenied => "Access denied",
        CustomerStatus::Removed => "Removed",
        CustomerStatus::Gone => "Gone",
    }
}

/// Every customer status with its count of customers (of all partners), in the order the
/// page lists them.
fn customer_status_counts(counts: &[(CustomerStatus, i64)]) -> Vec<StatusCount> {
    CustomerStatus::ALL
        .into_iter()
        .map(|status| StatusCount {
            status: status.as_str(),
            label: customer_status_label(status),
            count: counts
                .iter()
                .find(|(s, _)| *s == status)
                .map_or(0, |(_, n)| *n),
        })
        .collect()
}

fn horizon_bars(buckets: &[i64]) -> Vec<Bar> {
    HORIZON_BUCKETS
        .iter()
        .zip(buckets)
        .map(|(&(first, last), &count)| Bar {
            label: bucket_label(first, last),
            segments: vec![Segment {
                value: count,
                fill: bucket_fill(last),
            }],
        })
        .collect()
}

/// Usable grants with at most 14 days left.
fn urgent(buckets: &[i64]) -> i64 {
    HORIZON_BUCKETS
        .iter()
        .zip(buckets)
        .filter(|((_, last), _)| *last <= 14)
        .map(|(_, n)| n)
        .sum()
}

fn history_bars(days: &[DayAttempts]) -> Vec<Bar> {
    days.iter()
        .map(|d| Bar {
            label: day_label(d.day),
            segments: vec![
                Segment {
                    value: d.successes,
                    fill: GREEN,
                },
                Segment {
                    value: d.failures,
                    fill: RED,
                },
            ],
        })
        .collect()
}

fn process_row(replica: Replica, at: i64) -> ProcessRow {
    let silent_after = crate::rotation::liveness::SILENT_FOR.as_secs() as i64;
    ProcessRow {
        seen_secs_ago: (at - replica.seen_at).max(0),
        silent: at - replica.seen_at > silent_after,
        started: when(Some(replica.started_at)),
        instance: replica.instance,
        pid: replica.pid,
    }
}

fn due_row(grant: DueGrant, at: i64) -> DueRow {
    DueRow {
        due: if grant.rotate_at <= at {
            "now".to_string()
        } else {
            when(Some(grant.rotate_at))
        },
        days_left: (grant.last_refresh_at + INACTIVITY_LIMIT_SECS - at).div_euclid(86_400),
        tenant_id: grant.tenant_id,
        display_name: grant.display_name,
        status: grant.status,
        failures: grant.failures,
    }
}

/// `Mon 23 Nov` for a day's midnight.
fn day_label(day: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp(day) {
        Ok(t) => format!(
            "{} {:02} {}",
            &t.weekday().to_string()[..3],
            t.day(),
            &t.month().to_string()[..3]
        ),
        Err(_) => String::new(),
    }
}
