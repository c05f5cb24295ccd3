//! Customers of the partners (REFERENCE §6): what Partner Center lists for each partner, the
//! CPV app's consent in each customer tenant, when each partner's list was last read, and
//! the budget of Partner Center calls that replicas share (migration 0013).

use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Backend, Db, SqlBuilder, StorageError, stored_tenant};
use crate::domain::{CustomerStatus, TenantId};

/// One customer of one partner, as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CustomerRow {
    pub partner_tenant_id: TenantId,
    pub customer_tenant_id: TenantId,
    /// Partner Center's id of the customer (the one its URLs take).
    pub pc_customer_id: String,
    pub name: String,
    pub domain: Option<String>,
    pub status: CustomerStatus,
    /// The answer behind the status: what it means and what to do.
    pub reason: Option<String>,
    /// The grants of the last consent pushed there (canonical form), if any.
    pub grants_applied: Option<String>,
    pub first_seen_at: i64,
    pub last_seen_at: i64,
    pub status_changed_at: i64,
    pub last_token_at: Option<i64>,
    /// Consecutive failed consent pushes (reset by a consent).
    pub consent_failures: i64,
    /// When a consent is next pushed (or retried); None: nothing to do.
    pub next_consent_at: Option<i64>,
}

/// The columns of a [`CustomerRow`], for `concat!` into static SQL.
macro_rules! customer_columns {
    () => {
        "partner_tenant_id, customer_tenant_id, pc_customer_id, name, domain, status, reason, grants_applied, first_seen_at, last_seen_at, status_changed_at, last_token_at, consent_failures, next_consent_at"
    };
}

impl sqlx::FromRow<'_, AnyRow> for CustomerRow {
    fn from_row(row: &AnyRow) -> Result<Self, sqlx::Error> {
        let partner: String = row.try_get("partner_tenant_id")?;
        let customer: String = row.try_get("customer_tenant_id")?;
        let status: String = row.try_get("status")?;
        let corrupt = |e: StorageError| sqlx::Error::Decode(Box::new(e));
        let whose = format_args!("customer {customer} of {partner}").to_string();
        Ok(Self {
            partner_tenant_id: stored_tenant(&partner, &whose).map_err(corrupt)?,
            customer_tenant_id: stored_tenant(&customer, &whose).map_err(corrupt)?,
            status: CustomerStatus::parse(&status).ok_or_else(|| {
                corrupt(StorageError::Corrupt(format!("{whose}: status {status}")))
            })?,
            pc_customer_id: row.try_get("pc_customer_id")?,
            name: row.try_get("name")?,
            domain: row.try_get("domain")?,
            reason: row.try_get("reason")?,
            grants_applied: row.try_get("grants_applied")?,
            first_seen_at: row.try_get("first_seen_at")?,
            last_seen_at: row.try_get("last_seen_at")?,
            status_changed_at: row.try_get("status_changed_at")?,
            last_token_at: row.try_get("last_token_at")?,
            consent_failures: row.try_get("consent_failures")?,
            next_consent_at: row.try_get("next_consent_at")?,
        })
    }
}

/// One customer of a partner's `partner`; None when that partner has no such customer.
pub async fn get(
    db: &Db,
    partner: &TenantId,
    customer: &TenantId,
) -> Result<Option<CustomerRow>, StorageError> {
    Ok(sqlx::query_as(concat!(
        "SELECT ",
        customer_columns!(),
        " FROM customers WHERE partner_tenant_id = $1 AND customer_tenant_id = $2"
    ))
    .bind(partner.as_str())
    .bind(customer.as_str())
    .fetch_optional(db.reader())
    .await?)
}

/// Up to `limit` customers of `partner` in tenant-id order, after `after` (keyset pages).
pub async fn list(
    db: &Db,
    partner: &TenantId,
    after: Option<&TenantId>,
    limit: i64,
) -> Result<Vec<CustomerRow>, StorageError> {
    Ok(sqlx::query_as(concat!(
        "SELECT ",
        customer_columns!(),
        " FROM customers WHERE partner_tenant_id = $1 AND customer_tenant_id > $2 \
         ORDER BY customer_tenant_id LIMIT $3"
    ))
    .bind(partner.as_str())
    .bind(after.map_or("", TenantId::as_str))
    .bind(limit)
    .fetch_all(db.reader())
    .await?)
}

/// The row of one customer, locked for the rest of `tx` on PostgreSQL (SQLite's
/// `BEGIN IMMEDIATE` already serialises writers): its status, reason and failures.
async fn lock_status(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    backend: Backend,
    partner: &TenantId,
    customer: &TenantId,
) -> Result<Option<(CustomerStatus, Option<String>, i64)>, StorageError> {
    let select = match backend {
        Backend::Postgres => {
            "SELECT status, reason, consent_failures FROM customers \
             WHERE partner_tenant_id = $1 AND customer_tenant_id = $2 FOR UPDATE"
        }
        Backend::Sqlite => {
            "SELECT status, reason, consent_failures FROM customers \
             WHERE partner_tenant_id = $1 AND customer_tenant_id = $2"
        }
    };
    let row: Option<(String, Option<String>, i64)> = sqlx::query_as(select)
        .bind(partner.as_str())
        .bind(customer.as_str())
        .fetch_optional(&mut **tx)
        .await?;
    row.map(|(status, reason, failures)| {
        CustomerStatus::parse(&status)
            .map(|s| (s, reason, failures))
            .ok_or_else(|| StorageError::Corrupt(format!("customer {customer}: status {status}")))
    })
    .transpose()
}

/// Sets a customer's status and reason at `at`. Returns the previous status when the status
/// changed (None when it did not, or no such customer); a new reason for the same status is
/// stored without counting as a change.
pub async fn set_status(
    db: &Db,
    partner: &TenantId,
    customer: &TenantId,
    status: CustomerStatus,
    reason: Option<&str>,
    at: i64,
) -> Result<Option<CustomerStatus>, StorageError> {
    let mut tx = db.begin_write().await?;
    let Some((previous, previous_reason, _)) =
        lock_status(&mut tx, db.backend(), partner, customer).await?
    else {
        return Ok(None);
    };
    if previous == status && previous_reason.as_deref() == reason {
        return Ok(None);
    }
    sqlx::query(
        "UPDATE customers SET status = $3, reason = $4, \
         status_changed_at = CASE WHEN status = $3 THEN status_changed_at ELSE $5 END \
         WHERE partner_tenant_id = $1 AND customer_tenant_id = $2",
    )
    .bind(partner.as_str())
    .bind(customer.as_str())
    .bind(status.as_str())
    .bind(reason)
    .bind(at)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok((previous != status).then_some(previous))
}

/// An access token was issued for this customer at `at`.
pub async fn touch_token(
    db: &Db,
    partner: &TenantId,
    customer: &TenantId,
    at: i64,
) -> Result<(), StorageError> {
    sqlx::query(
        "UPDATE customers SET last_token_at = $3 \
         WHERE partner_tenant_id = $1 AND customer_tenant_id = $2",
    )
    .bind(partner.as_str())
    .bind(customer.as_str())
    .bind(at)
    .execute(db.pool())
    .await?;
    Ok(())
}

/// How many customers (of every partner) are in each status, in [`CustomerStatus::ALL`]
/// order; statuses nobody is in are left out.
pub async fn counts_by_status(db: &Db) -> Result<Vec<(CustomerStatus, i64)>, StorageError> {
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, COUNT(*) AS n FROM customers GROUP BY status")
            .fetch_all(db.reader())
            .await?;
    let mut counts = Vec::with_capacity(rows.len());
    for (status, n) in rows {
        let status = CustomerStatus::parse(&status)
            .ok_or_else(|| StorageError::Corrupt(format!("customer status {status:?}")))?;
        counts.push((status, n));
    }
    counts.sort_by_key(|(status, _)| *status);
    Ok(counts)
}

// ---- discovery ----

/// A customer as Partner Center lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedCustomer {
    pub customer_tenant_id: TenantId,
    pub pc_customer_id: String,
    pub name: String,
    pub domain: Option<String>,
}

/// A customer whose status a sync changed: `from` → `to`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub customer_tenant_id: TenantId,
    pub from: Option<CustomerStatus>,
    pub to: CustomerStatus,
}

/// Records one page of `partner`'s customer list, read at `at`: new customers are
/// `unconsented`, due for consent at `consent_at` (None: nobody consents them
/// automatically); known ones get their name, domain and `last_seen_at`; a `gone` one that
/// is listed again is `unconsented` again. Returns the new and returned customers.
pub async fn upsert_listed(
    db: &Db,
    partner: &TenantId,
    listed: &[ListedCustomer],
    at: i64,
    consent_at: Option<i64>,
) -> Result<Vec<Change>, StorageError> {
    if listed.is_empty() {
        return Ok(Vec::new());
    }
    let mut tx = db.begin_write().await?;
    let known = known_statuses(&mut tx, db.backend(), partner, listed).await?;
    let mut changes = Vec::new();
    for customer in listed {
        let id = customer.customer_tenant_id.as_str();
        let previous = known.iter().find(|(k, _)| k == id).map(|(_, s)| *s);
        match previous {
            None => insert_listed(&mut tx, partner, customer, at, consent_at).await?,
            Some(status) => {
                update_listed(&mut tx, partner, customer, status, at, consent_at).await?
            }
        }
        if previous.is_none() || previous == Some(CustomerStatus::Gone) {
            changes.push(Change {
                customer_tenant_id: customer.customer_tenant_id.clone(),
                from: previous,
                to: CustomerStatus::Unconsented,
            });
        }
    }
    tx.commit().await?;
    Ok(changes)
}

/// The stored statuses of those of `listed` that `partner` already has.
async fn known_statuses(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    backend: Backend,
    partner: &TenantId,
    listed: &[ListedCustomer],
) -> Result<Vec<(String, CustomerStatus)>, StorageError> {
    let mut sql = SqlBuilder::new(
        backend,
        "SELECT customer_tenant_id, status FROM customers WHERE partner_tenant_id = ",
    );
    sql.push_bind(partner.as_str().to_string());
    sql.push(" AND customer_tenant_id IN (");
    for (i, customer) in listed.iter().enumerate() {
        if i > 0 {
            sql.push(", ");
        }
        sql.push_bind(customer.customer_tenant_id.as_str().to_string());
    }
    sql.push(")");
    let rows: Vec<(String, String)> = sql.build_query_as().fetch_all(&mut **tx).await?;
    rows.into_iter()
        .map(|(id, status)| {
            CustomerStatus::parse(&status)
                .map(|s| (id.clone(), s))
                .ok_or_else(|| StorageError::Corrupt(format!("customer {id}: status {status}")))
        })
        .collect()
}

async fn insert_listed(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    partner: &TenantId,
    customer: &ListedCustomer,
    at: i64,
    consent_at: Option<i64>,
) -> Result<(), StorageError> {
    sqlx::query(
        "INSERT INTO customers (partner_tenant_id, customer_tenant_id, pc_customer_id, name, \
         domain, status, first_seen_at, last_seen_at, status_changed_at, consent_failures, \
         next_consent_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $7, 0, $8)",
    )
    .bind(partner.as_str())
    .bind(customer.customer_tenant_id.as_str())
    .bind(&customer.pc_customer_id)
    .bind(&customer.name)
    .bind(customer.domain.as_deref())
    .bind(CustomerStatus::Unconsented.as_str())
    .bind(at)
    .bind(consent_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn update_listed(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    partner: &TenantId,
    customer: &ListedCustomer,
    previous: CustomerStatus,
    at: i64,
    consent_at: Option<i64>,
) -> Result<(), StorageError> {
    // A customer listed again after it was gone starts over: unconsented, due for consent
    // like a new one.
    let query = if previous == CustomerStatus::Gone {
        sqlx::query(
            "UPDATE customers SET pc_customer_id = $3, name = $4, domain = $5, \
             last_seen_at = $6, status = 'unconsented', reason = NULL, status_changed_at = $6, \
             consent_failures = 0, grants_applied = NULL, next_consent_at = $7 \
             WHERE partner_tenant_id = $1 AND customer_tenant_id = $2",
        )
    } else {
        sqlx::query(
            "UPDATE customers SET pc_customer_id = $3, name = $4, domain = $5, \
             last_seen_at = $6 WHERE partner_tenant_id = $1 AND customer_tenant_id = $2",
        )
    };
    let query = query
        .bind(partner.as_str())
        .bind(customer.customer_tenant_id.as_str())
        .bind(&customer.pc_customer_id)
        .bind(&customer.name)
        .bind(customer.domain.as_deref())
        .bind(at);
    let query = if previous == CustomerStatus::Gone {
        query.bind(consent_at)
    } else {
        query
    };
    query.execute(&mut **tx).await?;
    Ok(())
}

/// The customers of `partner` that are not `gone`: what a complete sync must list again.
pub async fn listed_ids(
    db: &Db,
    partner: &TenantId,
) -> Result<Vec<(TenantId, CustomerStatus)>, StorageError> {
    let ids: Vec<(String, String)> = sqlx::query_as(
        "SELECT customer_tenant_id, status FROM customers \
         WHERE partner_tenant_id = $1 AND status <> 'gone'",
    )
    .bind(partner.as_str())
    .fetch_all(db.pool())
    .await?;
    ids.into_iter()
        .map(|(id, status)| {
            let status = CustomerStatus::parse(&status)
                .ok_or_else(|| StorageError::Corrupt(format!("customer {id}: status {status}")))?;
            Ok((stored_tenant(&id, format_args!("customer {id}"))?, status))
        })
        .collect()
}

/// After a complete sync: the customers of `partner` it did not list (of [`listed_ids`]
/// taken before it) are `gone` at `at`, with nothing left to push there. Returns them.
pub async fn mark_gone(
    db: &Db,
    partner: &TenantId,
    unlisted: &[(TenantId, CustomerStatus)],
    at: i64,
    reason: &str,
) -> Result<Vec<Change>, StorageError> {
    let mut changes = Vec::new();
    for chunk in unlisted.chunks(500) {
        let mut sql = SqlBuilder::new(
            db.backend(),
            "UPDATE customers SET status = 'gone', next_consent_at = NULL, reason = ",
        );
        sql.push_bind(reason.to_string())
            .push(", status_changed_at = ");
        sql.push_bind(at)
            .push(" WHERE status <> 'gone' AND partner_tenant_id = ");
        sql.push_bind(partner.as_str().to_string());
        sql.push(" AND customer_tenant_id IN (");
        for (i, (id, _)) in chunk.iter().enumerate() {
            sql.push(if i == 0 { "" } else { ", " });
            sql.push_bind(id.as_str().to_string());
        }
        sql.push(") RETURNING customer_tenant_id");
        let gone: Vec<(String,)> = sql.build_query_as().fetch_all(db.pool()).await?;
        for (id,) in gone {
            let from = chunk
                .iter()
                .find(|(c, _)| c.as_str() == id)
                .map(|(_, s)| *s);
            changes.push(Change {
                customer_tenant_id: stored_tenant(&id, format_args!("customer {id}"))?,
                from,
                to: CustomerStatus::Gone,
            });
        }
    }
    Ok(changes)
}

// ---- consent work ----

/// The consent pushes due at `now` (of one partner, or of all), at most `limit`, each
/// leased until `lease_until` (its `next_consent_at` moves there, so no other worker or
/// replica takes it meanwhile; a worker that dies leaves it due again then). PostgreSQL
/// skips rows another replica is claiming; SQLite serialises writers.
pub async fn claim_due_consents(
    db: &Db,
    partner: Option<&TenantId>,
    now: i64,
    lease_until: i64,
    limit: i64,
) -> Result<Vec<CustomerRow>, StorageError> {
    let mut sql = SqlBuilder::new(db.backend(), "UPDATE customers SET next_consent_at = ");
    sql.push_bind(lease_until);
    sql.push(
        " WHERE (partner_tenant_id, customer_tenant_id) IN (\
         SELECT partner_tenant_id, customer_tenant_id FROM customers \
         WHERE next_consent_at <= ",
    );
    sql.push_bind(now);
    sql.push(" AND status NOT IN ('gone', 'removed')");
    if let Some(partner) = partner {
        sql.push(" AND partner_tenant_id = ")
            .push_bind(partner.as_str().to_string());
    }
    sql.push(" ORDER BY next_consent_at LIMIT ")
        .push_bind(limit);
    if db.backend() == Backend::Postgres {
        sql.push(" FOR UPDATE SKIP LOCKED");
    }
    sql.push(concat!(") RETURNING ", customer_columns!()));
    Ok(sql.build_query_as().fetch_all(db.pool()).await?)
}

/// Makes consent pushes due at `at`: one customer, or every customer of `partner` that is
/// not `gone` (by hand: `removed` ones too). Returns how many.
pub async fn schedule_consent(
    db: &Db,
    partner: &TenantId,
    customer: Option<&TenantId>,
    at: i64,
) -> Result<u64, StorageError> {
    let mut sql = SqlBuilder::new(db.backend(), "UPDATE customers SET next_consent_at = ");
    sql.push_bind(at);
    sql.push(", status = CASE WHEN status = 'removed' THEN 'unconsented' ELSE status END");
    sql.and_where("partner_tenant_id = ")
        .push_bind(partner.as_str().to_string());
    sql.and_where("status <> 'gone'");
    if let Some(customer) = customer {
        sql.and_where("customer_tenant_id = ")
            .push_bind(customer.as_str().to_string());
    }
    Ok(sql.build().execute(db.pool()).await?.rows_affected())
}

/// Makes a push due at `at` for every consented customer whose consent holds other grants
/// than `grants` (SAMVAULT_CUSTOMER_GRANTS changed). Returns how many.
pub async fn schedule_regrant(db: &Db, grants: &str, at: i64) -> Result<u64, StorageError> {
    let done = sqlx::query(
        "UPDATE customers SET next_consent_at = $2 WHERE status = 'consented' \
         AND (grants_applied IS NULL OR grants_applied <> $1) AND next_consent_at IS NULL",
    )
    .bind(grants)
    .bind(at)
    .execute(db.pool())
    .await?;
    Ok(done.rows_affected())
}

/// What a consent push (or removal) ended with, for [`record_consent`].
#[derive(Clone, Copy, Debug)]
pub struct ConsentRecord<'a> {
    pub status: CustomerStatus,
    pub reason: Option<&'a str>,
    /// The grants now in place there (None: none, after a removal).
    pub grants_applied: Option<&'a str>,
}

/// Records the end of a push or removal: status, reason and grants; failures reset and
/// nothing more to do. Returns the previous status when the status changed.
pub async fn record_consent(
    db: &Db,
    partner: &TenantId,
    customer: &TenantId,
    record: ConsentRecord<'_>,
    at: i64,
) -> Result<Option<CustomerStatus>, StorageError> {
    let mut tx = db.begin_write().await?;
    let Some((previous, _, _)) = lock_status(&mut tx, db.backend(), partner, customer).await?
    else {
        return Ok(None);
    };
    sqlx::query(
        "UPDATE customers SET status = $3, reason = $4, grants_applied = $5, \
         consent_failures = 0, next_consent_at = NULL, \
         status_changed_at = CASE WHEN status = $3 THEN status_changed_at ELSE $6 END \
         WHERE partner_tenant_id = $1 AND customer_tenant_id = $2",
    )
    .bind(partner.as_str())
    .bind(customer.as_str())
    .bind(record.status.as_str())
    .bind(record.reason)
    .bind(record.grants_applied)
    .bind(at)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok((previous != record.status).then_some(previous))
}

/// A push failed: `consent_failed` with `reason`, one more failure, retried at
/// `retry_at`. `grants_applied` is what is left in place there (a delete may have gone
/// through before the create failed). Returns the previous status and the failures so far.
pub async fn record_consent_failure(
    db: &Db,
    partner: &TenantId,
    customer: &TenantId,
    reason: &str,
    grants_applied: Option<&str>,
    retry_at: i64,
    at: i64,
) -> Result<Option<(CustomerStatus, i64)>, StorageError> {
    let mut tx = db.begin_write().await?;
    let Some((previous, _, failures)) =
        lock_status(&mut tx, db.backend(), partner, customer).await?
    else {
        return Ok(None);
    };
    sqlx::query(
        "UPDATE customers SET status = 'consent_failed', reason = $3, grants_applied = $4, \
         consent_failures = consent_failures + 1, next_consent_at = $5, \
         status_changed_at = CASE WHEN status = 'consent_failed' THEN status_changed_at ELSE $6 END \
         WHERE partner_tenant_id = $1 AND customer_tenant_id = $2",
    )
    .bind(partner.as_str())
    .bind(customer.as_str())
    .bind(reason)
    .bind(grants_applied)
    .bind(retry_at)
    .bind(at)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Some((previous, failures + 1)))
}

/// Puts a push off until `retry_at` without counting a failure (throttled, or the work was
/// cut short): nothing about the customer changes.
pub async fn postpone_consent(
    db: &Db,
    partner: &TenantId,
    customer: &TenantId,
    retry_at: i64,
) -> Result<(), StorageError> {
    sqlx::query(
        "UPDATE customers SET next_consent_at = $3 \
         WHERE partner_tenant_id = $1 AND customer_tenant_id = $2",
    )
    .bind(partner.as_str())
    .bind(customer.as_str())
    .bind(retry_at)
    .execute(db.pool())
    .await?;
    Ok(())
}

// ---- syncs ----

/// One partner's customer list: when it was last read, when next, and the last error.
#[derive(Clone, Debug, PartialEq, Eq, sqlx_macros::FromRow)]
pub struct SyncRow {
    pub partner_tenant_id: String,
    pub last_sync_at: Option<i64>,
    pub next_sync_at: i64,
    pub last_error: Option<String>,
}

pub async fn sync_state(db: &Db, partner: &TenantId) -> Result<Option<SyncRow>, StorageError> {
    Ok(sqlx::query_as(
        "SELECT partner_tenant_id, last_sync_at, next_sync_at, last_error FROM customer_syncs \
         WHERE partner_tenant_id = $1",
    )
    .bind(partner.as_str())
    .fetch_optional(db.reader())
    .await?)
}

/// Makes `partner`'s sync due at `at` (or sooner, if it already is).
pub async fn schedule_sync(db: &Db, partner: &TenantId, at: i64) -> Result<(), StorageError> {
    sqlx::query(
        "INSERT INTO customer_syncs (partner_tenant_id, next_sync_at) VALUES ($1, $2) \
         ON CONFLICT (partner_tenant_id) DO UPDATE SET next_sync_at = \
         CASE WHEN customer_syncs.next_sync_at < $2 THEN customer_syncs.next_sync_at ELSE $2 END",
    )
    .bind(partner.as_str())
    .bind(at)
    .execute(db.pool())
    .await?;
    Ok(())
}

/// Every usable partner without a sync row gets one due at `at` (the first start, partners
/// imported or consented while no scheduler ran). Returns how many.
pub async fn schedule_unsynced(db: &Db, at: i64) -> Result<u64, StorageError> {
    let done = sqlx::query(
        "INSERT INTO customer_syncs (partner_tenant_id, next_sync_at) \
         SELECT tenant_id, $1 FROM partners WHERE status IN ('active', 'at_risk') \
         AND tenant_id NOT IN (SELECT partner_tenant_id FROM customer_syncs)",
    )
    .bind(at)
    .execute(db.pool())
    .await?;
    Ok(done.rows_affected())
}

/// Up to `limit` partners whose sync is due at `now`, leased until `lease_until`; partners
/// that can no longer be redeemed are skipped.
pub async fn claim_due_syncs(
    db: &Db,
    now: i64,
    lease_until: i64,
    limit: i64,
) -> Result<Vec<TenantId>, StorageError> {
    let lock = match db.backend() {
        Backend::Postgres => " FOR UPDATE OF s SKIP LOCKED",
        Backend::Sqlite => "",
    };
    let mut sql = SqlBuilder::new(db.backend(), "UPDATE customer_syncs SET next_sync_at = ");
    sql.push_bind(lease_until);
    sql.push(
        " WHERE partner_tenant_id IN (SELECT s.partner_tenant_id FROM customer_syncs s \
         JOIN partners p ON p.tenant_id = s.partner_tenant_id \
         WHERE p.status IN ('active', 'at_risk') AND s.next_sync_at <= ",
    );
    sql.push_bind(now).push(" ORDER BY s.next_sync_at LIMIT ");
    sql.push_bind(limit)
        .push(lock)
        .push(") RETURNING partner_tenant_id");
    let ids: Vec<(String,)> = sql.build_query_as().fetch_all(db.pool()).await?;
    ids.into_iter()
        .map(|(id,)| stored_tenant(&id, format_args!("customer sync {id}")))
        .collect()
}

/// A sync of `partner` ended at `at` (with `error`, or complete); the next is due at `next`.
pub async fn record_sync(
    db: &Db,
    partner: &TenantId,
    at: i64,
    next: i64,
    error: Option<&str>,
) -> Result<(), StorageError> {
    sqlx::query(
        "INSERT INTO customer_syncs (partner_tenant_id, last_sync_at, next_sync_at, last_error) \
         VALUES ($1, $2, $3, $4) ON CONFLICT (partner_tenant_id) DO UPDATE SET \
         last_sync_at = CASE WHEN $4 IS NULL THEN $2 ELSE customer_syncs.last_sync_at END, \
         next_sync_at = $3, last_error = $4",
    )
    .bind(partner.as_str())
    .bind(at)
    .bind(next)
    .bind(error)
    .execute(db.pool())
    .await?;
    Ok(())
}

/// The newest consent (its id) and the partners consented after `after`: the scheduler
/// lists a partner's customers after each consent.
pub async fn consents_after(db: &Db, after: i64) -> Result<(i64, Vec<TenantId>), StorageError> {
    let rows: Vec<(i64, String)> =
        sqlx::query_as("SELECT id, tenant_id FROM consents WHERE id > $1 ORDER BY id LIMIT 1000")
            .bind(after)
            .fetch_all(db.reader())
            .await?;
    let last = rows.last().map_or(after, |(id, _)| *id);
    let tenants = rows
        .into_iter()
        .map(|(_, id)| stored_tenant(&id, format_args!("consent of {id}")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((last, tenants))
}

/// The id of the newest consent (0 when none).
pub async fn last_consent_id(db: &Db) -> Result<i64, StorageError> {
    let id: Option<i64> = sqlx::query_scalar("SELECT MAX(id) FROM consents")
        .fetch_one(db.reader())
        .await?;
    Ok(id.unwrap_or(0))
}

// ---- the Partner Center budget ----

/// Takes window `window` of application `app_id` for one call: true when nobody (no other
/// process) had taken it. Each window admits one call; see `partner_center::budget`.
pub async fn take_window(db: &Db, app_id: &str, window: i64) -> Result<bool, StorageError> {
    let done = sqlx::query(
        "INSERT INTO partner_center_budget (app_id, window_start, used) VALUES ($1, $2, 1) \
         ON CONFLICT (app_id, window_start) DO NOTHING",
    )
    .bind(app_id)
    .bind(window)
    .execute(db.pool())
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Forgets the windows before `before`.
pub async fn prune_windows(db: &Db, before: i64) -> Result<u64, StorageError> {
    let done = sqlx::query("DELETE FROM partner_center_budget WHERE window_start < $1")
        .bind(before)
        .execute(db.pool())
        .await?;
    Ok(done.rows_affected())
}
