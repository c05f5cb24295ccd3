//! The token request log, bounded: the latest [`RECENT`] requests row by row, and per-hour
//! counts per client and resource for everything older (the security report's 7-day share).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use super::{Db, FromRow, SqlBuilder, StorageError, flag};

/// One token request as the security report needs it (no token material).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestRecord {
    pub at: i64,
    pub client_id: Arc<str>,
    /// The partner whose grant the token comes from.
    pub tenant_id: Arc<str>,
    /// The customer tenant the token was for (customer-tenant tokens); `None` for a partner's
    /// own token.
    pub customer_tenant_id: Option<Arc<str>>,
    pub resource: Arc<str>,
    pub purpose: Arc<str>,
    /// `issued`, or the problem code the caller got.
    pub outcome: Cow<'static, str>,
    pub cached: bool,
    /// Whether the issued token's `amr` carried `mfa`; `None` when no token was issued.
    pub mfa: Option<bool>,
}

impl RequestRecord {
    fn issued(&self) -> bool {
        self.outcome == "issued"
    }
}

/// How many individual requests are kept (the security report's "latest requests" download).
pub const RECENT: i64 = 10_000;

/// Rows per INSERT (a few round trips per batch, well under SQLite's parameter limit).
const ROWS_PER_INSERT: usize = 100;

/// Counts of token requests (one client, or all of them, over a period).
#[derive(Clone, Debug, Default, PartialEq, Eq, FromRow)]
pub struct RequestCounts {
    pub requests: i64,
    /// Requests answered with an access token.
    pub issued: i64,
    /// Issued tokens whose `amr` carried `mfa`.
    pub issued_mfa: i64,
    /// Issued tokens served from the cache.
    pub cached: i64,
}

impl RequestCounts {
    fn add(&mut self, r: &RequestRecord) {
        self.requests += 1;
        if r.issued() {
            self.issued += 1;
            self.issued_mfa += i64::from(r.mfa == Some(true));
            self.cached += i64::from(r.cached);
        }
    }
}

/// Token requests gathered for one write: every request counted by hour, client and
/// resource, but only the newest [`RECENT`] kept as rows (older ones would be pruned at once).
#[derive(Debug, Default)]
pub struct RequestBatch {
    rows: std::collections::VecDeque<RequestRecord>,
    hours: BTreeMap<(i64, Arc<str>, Arc<str>), RequestCounts>,
    last_used: BTreeMap<Arc<str>, i64>,
    /// The latest token issued per (partner, customer tenant): the customers' `last_token_at`.
    customer_tokens: BTreeMap<(Arc<str>, Arc<str>), i64>,
}

impl RequestBatch {
    pub fn push(&mut self, r: RequestRecord) {
        let hour = r.at - r.at.rem_euclid(3600);
        self.hours
            .entry((hour, r.client_id.clone(), r.resource.clone()))
            .or_default()
            .add(&r);
        let last_used = self.last_used.entry(r.client_id.clone()).or_insert(r.at);
        *last_used = (*last_used).max(r.at);
        if let Some(customer) = r.customer_tenant_id.as_ref().filter(|_| r.issued()) {
            let key = (r.tenant_id.clone(), customer.clone());
            let last = self.customer_tokens.entry(key).or_insert(r.at);
            *last = (*last).max(r.at);
        }
        if self.rows.len() as i64 == RECENT {
            self.rows.pop_front();
        }
        self.rows.push_back(r);
    }

    /// How many requests this batch counts.
    pub fn requests(&self) -> i64 {
        self.hours.values().map(|c| c.requests).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

/// Writes a batch in one transaction: the rows, the hourly counts, the pruning of rows beyond
/// [`RECENT`], each client's `last_used_at` and each customer's `last_token_at`.
pub async fn write_batch(db: &Db, batch: &RequestBatch) -> Result<(), StorageError> {
    if batch.is_empty() {
        return Ok(());
    }
    let mut tx = db.begin_write().await?;
    let rows: Vec<&RequestRecord> = batch.rows.iter().collect();
    for chunk in rows.chunks(ROWS_PER_INSERT) {
        insert_rows(db, chunk).build().execute(&mut *tx).await?;
        // Building a statement is CPU work on a request worker: let requests through.
        tokio::task::yield_now().await;
    }
    for ((hour, client, resource), n) in &batch.hours {
        sqlx::query(
            "INSERT INTO token_request_hours (hour, client_id, resource, requests, issued, issued_mfa, cached) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (hour, client_id, resource) DO UPDATE SET \
             requests = token_request_hours.requests + excluded.requests, \
             issued = token_request_hours.issued + excluded.issued, \
             issued_mfa = token_request_hours.issued_mfa + excluded.issued_mfa, \
             cached = token_request_hours.cached + excluded.cached",
        )
        .bind(hour)
        .bind(&**client)
        .bind(&**resource)
        .bind(n.requests)
        .bind(n.issued)
        .bind(n.issued_mfa)
        .bind(n.cached)
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query(
        "DELETE FROM token_requests WHERE id < \
         (SELECT id FROM token_requests ORDER BY id DESC LIMIT 1 OFFSET $1)",
    )
    .bind(RECENT - 1)
    .execute(&mut *tx)
    .await?;
    for (client, at) in &batch.last_used {
        sqlx::query("UPDATE clients SET last_used_at = $2 WHERE client_id = $1 AND (last_used_at IS NULL OR last_used_at < $2)")
            .bind(&**client)
            .bind(at)
            .execute(&mut *tx)
            .await?;
    }
    for ((partner, customer), at) in &batch.customer_tokens {
        sqlx::query(
            "UPDATE customers SET last_token_at = $3 WHERE partner_tenant_id = $1 \
             AND customer_tenant_id = $2 AND (last_token_at IS NULL OR last_token_at < $3)",
        )
        .bind(&**partner)
        .bind(&**customer)
        .bind(at)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// One multi-row INSERT of `rows`. On SQLite the parameters are anonymous (`?`): sqlx maps
/// each named `$n` with a linear search, so a statement's binding cost grew with the square
/// of its parameters and took a third of the token path's CPU.
fn insert_rows(db: &Db, rows: &[&RequestRecord]) -> SqlBuilder {
    let mut sql = SqlBuilder::new(
        db.backend(),
        "INSERT INTO token_requests (at, client_id, tenant_id, customer_tenant_id, resource, purpose, outcome, cached, mfa) VALUES ",
    );
    for (i, r) in rows.iter().enumerate() {
        sql.push(if i == 0 { "(" } else { ", (" })
            .push_bind(r.at)
            .push(", ")
            .push_bind(&*r.client_id)
            .push(", ")
            .push_bind(&*r.tenant_id)
            .push(", ")
            .push_bind(r.customer_tenant_id.as_deref())
            .push(", ")
            .push_bind(&*r.resource)
            .push(", ")
            .push_bind(&*r.purpose)
            .push(", ")
            .push_bind(&*r.outcome)
            .push(", ")
            .push_bind(i64::from(r.cached))
            .push(", ")
            .push_bind(r.mfa.map(i64::from))
            .push(")");
    }
    sql
}

/// The most recent requests, newest first (the security report's download). Like every read
/// for the report, through the read connections: on SQLite a 10,000-row read on the writer
/// connection would hold up the request log's writes and the token path's write-backs.
pub async fn latest(db: &Db, limit: i64) -> Result<Vec<RequestRecord>, StorageError> {
    #[derive(FromRow)]
    struct RequestRow {
        at: i64,
        client_id: String,
        tenant_id: String,
        customer_tenant_id: Option<String>,
        resource: String,
        purpose: String,
        outcome: String,
        cached: i64,
        mfa: Option<i64>,
    }
    let rows: Vec<RequestRow> = sqlx::query_as(
        "SELECT at, client_id, tenant_id, customer_tenant_id, resource, purpose, outcome, cached, mfa FROM token_requests ORDER BY id DESC LIMIT $1",
    )
    .bind(limit)
    .fetch_all(db.reader())
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| RequestRecord {
            at: r.at,
            client_id: r.client_id.into(),
            tenant_id: r.tenant_id.into(),
            customer_tenant_id: r.customer_tenant_id.map(Into::into),
            resource: r.resource.into(),
            purpose: r.purpose.into(),
            outcome: r.outcome.into(),
            cached: flag(r.cached),
            mfa: r.mfa.map(flag),
        })
        .collect())
}

/// Request counts per client since `since` (unix seconds; counted by whole hours, so the
/// hour that contains `since` is included).
pub async fn counts_by_client(
    db: &Db,
    since: i64,
) -> Result<BTreeMap<String, RequestCounts>, StorageError> {
    #[derive(FromRow)]
    struct ClientCounts {
        client_id: String,
        #[sqlx(flatten)]
        counts: RequestCounts,
    }
    let rows: Vec<ClientCounts> = sqlx::query_as(
        "SELECT client_id, CAST(SUM(requests) AS BIGINT) AS requests, CAST(SUM(issued) AS BIGINT) AS issued, \
         CAST(SUM(issued_mfa) AS BIGINT) AS issued_mfa, CAST(SUM(cached) AS BIGINT) AS cached \
         FROM token_request_hours WHERE hour >= $1 GROUP BY client_id",
    )
    .bind(since - since.rem_euclid(3600))
    .fetch_all(db.reader())
    .await?;
    Ok(rows.into_iter().map(|r| (r.client_id, r.counts)).collect())
}

/// A partner whose current grant came from a consent without MFA.
#[derive(Clone, Debug, PartialEq, Eq, FromRow)]
pub struct PartnerWithoutMfa {
    pub tenant_id: String,
    pub display_name: String,
    pub status: String,
    pub consented_by: String,
    pub consented_at: i64,
    /// The `amr` methods of that consent, space-separated (`pwd`, ...), when recorded.
    pub amr: Option<String>,
}

/// The other half of the security report: whether the consents behind the grants samvault
/// holds carried MFA. Tokens redeemed from a grant carry the `amr` of its consent, so a
/// consent without MFA is where a share below 100 % comes from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConsentMfa {
    pub with_mfa: i64,
    pub without_mfa: i64,
    /// The partners without MFA, most recent consent first, at most the `limit` asked for.
    pub partners_without_mfa: Vec<PartnerWithoutMfa>,
}

/// MFA of every partner's current consent, revoked partners left out (samvault holds no
/// grant for them).
pub async fn consent_mfa(db: &Db, limit: i64) -> Result<ConsentMfa, StorageError> {
    let (with_mfa, without_mfa): (i64, i64) = sqlx::query_as(
        "SELECT CAST(COALESCE(SUM(CASE WHEN mfa = 1 THEN 1 ELSE 0 END), 0) AS BIGINT) AS with_mfa, \
         CAST(COALESCE(SUM(CASE WHEN mfa = 1 THEN 0 ELSE 1 END), 0) AS BIGINT) AS without_mfa \
         FROM partners WHERE status <> 'revoked'",
    )
    .fetch_one(db.reader())
    .await?;
    let partners_without_mfa = sqlx::query_as(
        "SELECT p.tenant_id, p.display_name, p.status, p.consented_by, p.consented_at, \
         (SELECT c.amr FROM consents c WHERE c.tenant_id = p.tenant_id \
          ORDER BY c.consented_at DESC, c.id DESC LIMIT 1) AS amr \
         FROM partners p WHERE p.mfa = 0 AND p.status <> 'revoked' \
         ORDER BY p.consented_at DESC, p.tenant_id LIMIT $1",
    )
    .bind(limit)
    .fetch_all(db.reader())
    .await?;
    Ok(ConsentMfa {
        with_mfa,
        without_mfa,
        partners_without_mfa,
    })
}

/// One tenant's token requests per client and resource, among the rows the log still keeps
/// (the latest [`RECENT`] requests of all tenants; the hourly counts have no tenant).
#[derive(Clone, Debug, Default, PartialEq, Eq, FromRow)]
pub struct TenantRequests {
    pub client_id: String,
    /// The client's name, if the client still exists.
    #[sqlx(rename = "name")]
    pub client_name: Option<String>,
    pub resource: String,
    #[sqlx(flatten)]
    pub counts: RequestCounts,
    pub last_at: i64,
}

/// What [`RECENT`] rows of the log cover: their number and the oldest one's time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromRow)]
pub struct LogWindow {
    #[sqlx(rename = "n")]
    pub rows: i64,
    pub since: Option<i64>,
}

pub async fn tenant_counts(
    db: &Db,
    tenant: &str,
) -> Result<(Vec<TenantRequests>, LogWindow), StorageError> {
    // At most RECENT rows to scan (the table is pruned on every write), so no index on
    // tenant_id: one would cost every batch of the token path more than this read saves.
    let counts = sqlx::query_as(
        "SELECT r.client_id, c.name, r.resource, CAST(COUNT(*) AS BIGINT) AS requests, \
         CAST(SUM(CASE WHEN r.outcome = 'issued' THEN 1 ELSE 0 END) AS BIGINT) AS issued, \
         CAST(SUM(CASE WHEN r.outcome = 'issued' AND r.mfa = 1 THEN 1 ELSE 0 END) AS BIGINT) AS issued_mfa, \
         CAST(SUM(CASE WHEN r.outcome = 'issued' AND r.cached = 1 THEN 1 ELSE 0 END) AS BIGINT) AS cached, \
         MAX(r.at) AS last_at \
         FROM token_requests r LEFT JOIN clients c ON c.client_id = r.client_id \
         WHERE r.tenant_id = $1 GROUP BY r.client_id, c.name, r.resource \
         ORDER BY requests DESC, r.client_id, r.resource",
    )
    .bind(tenant)
    .fetch_all(db.reader())
    .await?;
    let window = sqlx::query_as(
        "SELECT CAST(COUNT(*) AS BIGINT) AS n, MIN(at) AS since FROM token_requests",
    )
    .fetch_one(db.reader())
    .await?;
    Ok((counts, window))
}
