//! Aggregates for the dashboard overview: how close the grants are to Entra's 90-day
//! inactivity limit, what rotation did over the last days, what is due next; and the
//! shared-state gauges `/metrics` reads at scrape time. Each is one indexed or single-scan
//! query on the read connections, so the overview stays fast with 100,000 partners.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Db, FromRow, SqlBuilder, StorageError};
use crate::domain::PartnerStatus;

/// Entra revokes a refresh token unused for this long (AADSTS700082).
pub const INACTIVITY_LIMIT_SECS: i64 = 90 * 86_400;
const DAY: i64 = 86_400;

/// Usable grants by days left before the 90-day limit: `(first day, last day)` of each bucket,
/// the first bucket holding everything already past it.
pub const HORIZON_BUCKETS: [(i64, i64); 7] = [
    (i64::MIN, -1),
    (0, 7),
    (8, 14),
    (15, 30),
    (31, 60),
    (61, 75),
    (76, 90),
];

/// Partners per status, and how many usable grants fall in each of [`HORIZON_BUCKETS`] (in
/// that order): one scan of the partners for both.
pub async fn statuses_and_horizon(
    db: &Db,
    now: i64,
) -> Result<(Vec<(PartnerStatus, i64)>, Vec<i64>), StorageError> {
    // Days left = (last_refresh_at + 90 d - now) / 1 d, so "days left <= d" is
    // "last_refresh_at < now - 90 d + (d + 1) days": one comparison per bucket edge.
    let edges: Vec<i64> = HORIZON_BUCKETS
        .iter()
        .map(|&(_, last)| now - INACTIVITY_LIMIT_SECS + (last + 1) * DAY)
        .collect();
    let mut sql = SqlBuilder::new(db.backend(), "SELECT status, COUNT(*) AS n");
    for edge in &edges {
        sql.push(", COUNT(CASE WHEN last_refresh_at < ")
            .push_bind(*edge)
            .push(" THEN 1 END)");
    }
    sql.push(" FROM partners GROUP BY status");
    let rows: Vec<StatusHorizon> = sql.build_query_as().fetch_all(db.reader()).await?;
    let mut statuses = Vec::with_capacity(rows.len());
    // Cumulative per edge ("at most d days left"), usable grants only.
    let mut cumulative = vec![0i64; edges.len()];
    for row in rows {
        let status = PartnerStatus::parse(&row.status)
            .ok_or_else(|| StorageError::Corrupt(format!("partner status {}", row.status)))?;
        statuses.push((status, row.partners));
        if status.is_usable() {
            for (total, within) in cumulative.iter_mut().zip(row.within) {
                *total += within;
            }
        }
    }
    let mut below = 0;
    let buckets = cumulative
        .into_iter()
        .map(|c| {
            let bucket = c - below;
            below = c;
            bucket
        })
        .collect();
    Ok((statuses, buckets))
}

/// One status's partners, then how many of them were last refreshed before each bucket edge
/// (one column per edge, however many [`HORIZON_BUCKETS`] there are: hence no derive).
struct StatusHorizon {
    status: String,
    partners: i64,
    within: Vec<i64>,
}

impl<'r> sqlx::FromRow<'r, AnyRow> for StatusHorizon {
    fn from_row(row: &'r AnyRow) -> sqlx::Result<Self> {
        Ok(Self {
            status: row.try_get("status")?,
            partners: row.try_get("n")?,
            within: (2..row.len())
                .map(|i| row.try_get(i))
                .collect::<sqlx::Result<_>>()?,
        })
    }
}

/// Redemption attempts of one UTC day.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DayAttempts {
    /// Unix seconds of the day's midnight (UTC).
    pub day: i64,
    pub successes: i64,
    pub failures: i64,
}

/// Attempts per UTC day for the `days` days ending with today's, oldest first, every day
/// present (zeros included).
pub async fn attempts_by_day(
    db: &Db,
    now: i64,
    days: i64,
) -> Result<Vec<DayAttempts>, StorageError> {
    let today = now - now.rem_euclid(DAY);
    let first = today - (days - 1) * DAY;
    #[derive(FromRow)]
    struct DayRow {
        day: i64,
        successes: i64,
        failures: i64,
    }
    let rows: Vec<DayRow> = sqlx::query_as(
        "SELECT day, successes, failures FROM rotation_days WHERE day >= $1 ORDER BY day",
    )
    .bind(first / DAY)
    .fetch_all(db.reader())
    .await?;
    let mut out: Vec<DayAttempts> = (0..days)
        .map(|i| DayAttempts {
            day: first + i * DAY,
            ..DayAttempts::default()
        })
        .collect();
    for row in rows {
        let index = (row.day * DAY - first) / DAY;
        if let Some(slot) = usize::try_from(index).ok().and_then(|i| out.get_mut(i)) {
            slot.successes = row.successes;
            slot.failures = row.failures;
        }
    }
    Ok(out)
}

/// A usable grant and when the scheduler will redeem it.
#[derive(Clone, Debug, PartialEq, Eq, FromRow)]
pub struct DueGrant {
    pub tenant_id: String,
    pub display_name: String,
    pub status: String,
    pub rotate_at: i64,
    pub last_refresh_at: i64,
    pub failures: i64,
}

/// The next `limit` usable grants in rotation order (the `rotate_at` index).
pub async fn next_due(db: &Db, limit: i64) -> Result<Vec<DueGrant>, StorageError> {
    // The always-true range on rotate_at makes SQLite's planner walk the rotate_at index and
    // stop after `limit` rows; without table statistics it otherwise picks the status index
    // and sorts every usable partner (77 ms instead of < 1 ms at 100,000 partners).
    Ok(sqlx::query_as(
        "SELECT tenant_id, display_name, status, rotate_at, last_refresh_at, failures
         FROM partners WHERE status IN ('active', 'at_risk') AND rotate_at >= $1
         ORDER BY rotate_at LIMIT $2",
    )
    .bind(i64::MIN)
    .bind(limit)
    .fetch_all(db.reader())
    .await?)
}

/// What `/metrics` reports about shared state, besides the partners per status
/// ([`super::partners::count_by_status`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GaugeRow {
    /// The oldest successful redemption among usable (active, at-risk) partners, if any.
    pub oldest_usable_refresh: Option<i64>,
    /// Raised app-credentials alarms (0 or 1).
    pub app_credentials_alarms: i64,
    /// Undelivered webhook events with attempts left.
    pub outbox_pending: i64,
    /// Undelivered webhook events given up.
    pub outbox_abandoned: i64,
}

impl sqlx::FromRow<'_, AnyRow> for GaugeRow {
    fn from_row(row: &AnyRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            oldest_usable_refresh: row.try_get("oldest_usable_refresh")?,
            app_credentials_alarms: row.try_get("app_credentials_alarms")?,
            outbox_pending: row.try_get("outbox_pending")?,
            outbox_abandoned: row.try_get("outbox_abandoned")?,
        })
    }
}

/// The [`GaugeRow`] in one round trip; outbox rows count as given up from `max_attempts`
/// attempts on.
pub async fn gauges(db: &Db, max_attempts: i64) -> Result<GaugeRow, StorageError> {
    Ok(sqlx::query_as(
        "SELECT \
         (SELECT MIN(last_refresh_at) FROM partners WHERE status IN ('active', 'at_risk')) AS oldest_usable_refresh, \
         (SELECT COUNT(*) FROM alarms WHERE name = 'app_credentials') AS app_credentials_alarms, \
         (SELECT COUNT(*) FROM webhook_outbox WHERE delivered_at IS NULL AND attempts < $1) AS outbox_pending, \
         (SELECT COUNT(*) FROM webhook_outbox WHERE delivered_at IS NULL AND attempts >= $2) AS outbox_abandoned",
    )
    .bind(max_attempts)
    .bind(max_attempts)
    .fetch_one(db.reader())
    .await?)
}
