//! Customers of the partners (SPEC §6): what Partner Center lists for each partner, the
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

/// After a complete sync read at `seen_at`: every customer of `partner` it did not list
/// (and not already `gone`) is `gone`, with nothing left to push there. Returns them.
pub async fn mark_gone(
    db: &Db,
    partner: &TenantId,
    seen_at: i64,
    reason: &str,
) -> Result<Vec<Change>, StorageError> {
    let mut tx = db.begin_write().await?;
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT customer_tenant_id, status FROM customers \
         WHERE partner_tenant_id = $1 AND last_seen_at < $2 AND status <> 'gone'",
    )
    .bind(partner.as_str())
    .bind(seen_at)
    .fetch_all(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE customers SET status = 'gone', reason = $3, status_changed_at = $2, \
         next_consent_at = NULL \
         WHERE partner_tenant_id = $1 AND last_seen_at < $2 AND status <> 'gone'",
    )
    .bind(partner.as_str())
    .bind(seen_at)
    .bind(reason)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    rows.into_iter()
        .map(|(id, status)| {
            Ok(Change {
                customer_tenant_id: stored_tenant(&id, format_args!("customer {id}"))?,
                from: CustomerStatus::parse(&status),
                to: CustomerStatus::Gone,
            })
        })
        .collect()
}
