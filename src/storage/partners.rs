//! Partners, their sealed grants (one row per refresh-token version) and consent history.

use sqlx::Row;

use super::{Backend, Db, FromRow, SealedColumns, SqlBuilder, StorageError, flag, stored_tenant};
use crate::domain::{PartnerStatus, TenantId};
use crate::vault::{Sealed, VaultError};

/// Entra refresh tokens die after 90 days of inactivity.
pub const INACTIVITY_LIMIT_SECS: i64 = 90 * 86_400;

/// How many newest grant versions keep their sealed payload. The previous version stays
/// as a fallback (Entra keeps old refresh tokens valid); anything older is crypto-shredded.
const KEEP_VERSIONS: i64 = 2;

#[derive(Clone, Debug)]
pub struct Partner {
    pub tenant_id: TenantId,
    pub display_name: String,
    pub domain: Option<String>,
    pub status: PartnerStatus,
    pub status_code: Option<String>,
    pub status_reason: Option<String>,
    pub status_changed_at: i64,
    pub mfa: bool,
    pub consented_by: String,
    pub consented_at: i64,
    pub last_refresh_at: i64,
    pub grant_version: i64,
    /// Consecutive failed redemptions (reset by a success).
    pub failures: i64,
}

impl Partner {
    /// When the current refresh token dies if nobody redeems it.
    pub fn horizon(&self) -> i64 {
        self.last_refresh_at + INACTIVITY_LIMIT_SECS
    }
}

/// The columns of a [`PartnerRow`], for `concat!` into static SQL.
macro_rules! partner_columns {
    () => {
        "tenant_id, display_name, domain, status, status_code, status_reason, status_changed_at, mfa, consented_by, consented_at, last_refresh_at, grant_version, failures"
    };
}

/// A `partners` row as stored; [`Partner`] once its id and status are parsed.
#[derive(FromRow)]
struct PartnerRow {
    tenant_id: String,
    display_name: String,
    domain: Option<String>,
    status: String,
    status_code: Option<String>,
    status_reason: Option<String>,
    status_changed_at: i64,
    mfa: i64,
    consented_by: String,
    consented_at: i64,
    last_refresh_at: i64,
    grant_version: i64,
    failures: i64,
}

impl TryFrom<PartnerRow> for Partner {
    type Error = StorageError;

    fn try_from(row: PartnerRow) -> Result<Self, StorageError> {
        let tenant = &row.tenant_id;
        Ok(Partner {
            tenant_id: stored_tenant(tenant, format_args!("partner {tenant}"))?,
            status: PartnerStatus::parse(&row.status).ok_or_else(|| {
                StorageError::Corrupt(format!("partner {tenant}: status {}", row.status))
            })?,
            display_name: row.display_name,
            domain: row.domain,
            status_code: row.status_code,
            status_reason: row.status_reason,
            status_changed_at: row.status_changed_at,
            mfa: flag(row.mfa),
            consented_by: row.consented_by,
            consented_at: row.consented_at,
            last_refresh_at: row.last_refresh_at,
            grant_version: row.grant_version,
            failures: row.failures,
        })
    }
}

fn partners(rows: Vec<PartnerRow>) -> Result<Vec<Partner>, StorageError> {
    rows.into_iter().map(Partner::try_from).collect()
}

/// The associated data that binds a sealed refresh token to its tenant and version.
pub fn grant_context(tenant: &TenantId, version: i64) -> String {
    format!("samvault:refresh-token:{tenant}:v{version}")
}

/// A consent that completed: who, where, and with what strength.
#[derive(Clone, Debug)]
pub struct NewConsent {
    pub tenant_id: TenantId,
    pub display_name: String,
    pub domain: Option<String>,
    pub upn: String,
    pub oid: Option<String>,
    pub user_name: Option<String>,
    pub mfa: bool,
    pub amr: Vec<String>,
    pub scopes: String,
    pub invitation_id: Option<String>,
}

/// A sealed grant as stored, with the version its associated data names.
pub struct StoredGrant {
    pub version: i64,
    pub sealed: Sealed,
}

pub async fn get(db: &Db, tenant: &TenantId) -> Result<Option<Partner>, StorageError> {
    let row: Option<PartnerRow> = sqlx::query_as(concat!(
        "SELECT ",
        partner_columns!(),
        " FROM partners WHERE tenant_id = $1"
    ))
    .bind(tenant.as_str())
    .fetch_optional(db.reader())
    .await?;
    row.map(Partner::try_from).transpose()
}

pub async fn list(db: &Db) -> Result<Vec<Partner>, StorageError> {
    let rows = sqlx::query_as(concat!(
        "SELECT ",
        partner_columns!(),
        " FROM partners ORDER BY display_name, tenant_id"
    ))
    .fetch_all(db.pool())
    .await?;
    partners(rows)
}

/// The version the next sealed grant of this tenant will carry.
pub async fn next_version(db: &Db, tenant: &TenantId) -> Result<i64, StorageError> {
    let latest: i64 = sqlx::query_scalar(
        "SELECT COALESCE(MAX(version), 0) AS v FROM grants WHERE tenant_id = $1",
    )
    .bind(tenant.as_str())
    .fetch_one(db.pool())
    .await?;
    Ok(latest + 1)
}

/// Records a completed consent: the partner becomes (or becomes again) active with the
/// new grant as its current version, whoever held the previous one (the operator's import).
/// One transaction: all of it or nothing.
pub async fn record_consent(
    db: &Db,
    consent: &NewConsent,
    grant: &StoredGrant,
    now: i64,
    rotate_at: i64,
) -> Result<(), StorageError> {
    let mut tx = db.begin_write().await?;
    lock_tenant_consents(&mut tx, db.backend(), &consent.tenant_id).await?;
    write_consent(&mut tx, consent, grant, now, rotate_at).await?;
    tx.commit().await?;
    Ok(())
}

/// The writes of a consent, in the caller's transaction.
async fn write_consent(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    consent: &NewConsent,
    grant: &StoredGrant,
    now: i64,
    rotate_at: i64,
) -> Result<(), StorageError> {
    sqlx::query(
        "INSERT INTO partners (tenant_id, display_name, domain, status, status_code, status_reason, status_changed_at, mfa, consented_by, consented_at, last_refresh_at, grant_version, created_at, rotate_at, failures)
         VALUES ($1, $2, $3, 'active', NULL, NULL, $4, $5, $6, $4, $4, $7, $4, $8, 0)
         ON CONFLICT (tenant_id) DO UPDATE SET display_name = $2, domain = $3, status = 'active', status_code = NULL, status_reason = NULL,
             status_changed_at = $4, mfa = $5, consented_by = $6, consented_at = $4, last_refresh_at = $4, grant_version = $7, rotate_at = $8, failures = 0",
    )
    .bind(consent.tenant_id.as_str())
    .bind(&consent.display_name)
    .bind(&consent.domain)
    .bind(now)
    .bind(i64::from(consent.mfa))
    .bind(&consent.upn)
    .bind(grant.version)
    .bind(rotate_at)
    .execute(&mut **tx)
    .await?;
    insert_grant(tx, &consent.tenant_id, grant, "consent", now).await?;
    sqlx::query(
        "INSERT INTO consents (tenant_id, upn, oid, display_name, mfa, amr, scopes, invitation_id, consented_at, grant_version)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(consent.tenant_id.as_str())
    .bind(&consent.upn)
    .bind(&consent.oid)
    .bind(&consent.user_name)
    .bind(i64::from(consent.mfa))
    .bind(consent.amr.join(" "))
    .bind(&consent.scopes)
    .bind(&consent.invitation_id)
    .bind(now)
    .bind(grant.version)
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "INSERT INTO status_changes (tenant_id, at, from_status, to_status, code, reason) VALUES ($1, $2, NULL, 'active', NULL, $3)",
    )
    .bind(consent.tenant_id.as_str())
    .bind(now)
    .bind(format!("consent by {}", consent.upn))
    .execute(&mut **tx)
    .await?;
    shred_old_versions(tx, &consent.tenant_id, grant.version, now).await?;
    Ok(())
}

/// The user behind a partner's grant: whose consent created its lineage.
#[derive(Clone, Debug)]
pub struct GrantHolder {
    /// The grant version this holder stands behind (the partner's current one).
    pub version: i64,
    pub upn: String,
    /// `None` for imported grants, and for consents the 0011 migration could not match.
    pub oid: Option<String>,
    pub user_name: Option<String>,
    pub consented_at: i64,
}

/// What [`record_consent_guarded`] did. Only `Recorded` wrote anything.
#[derive(Debug)]
pub enum GuardedConsent<W> {
    /// Recorded; `replaced` is the usable grant it replaced, if there was one, with the
    /// reason the caller's check gave for allowing it.
    Recorded { replaced: Option<(GrantHolder, W)> },
    /// A usable grant exists and its replacement was not allowed.
    Refused(GrantHolder),
    /// The invitation is unknown, already used or expired.
    InvitationSpent,
    /// Another consent of the tenant wrote this grant version first.
    Concurrent,
}

/// A consent that checks, in its own transaction, what it would replace: the invitation it
/// came through is claimed, and when the tenant holds a usable grant (status active or
/// at risk, current version still sealed) `may_replace` says why this consent may replace
/// it, or `None` when it may not. Consents of one tenant are serialised (SQLite's write lock, an advisory lock
/// on PostgreSQL), so the decision is made on what is committed.
pub async fn record_consent_guarded<W: Send>(
    db: &Db,
    consent: &NewConsent,
    grant: &StoredGrant,
    now: i64,
    rotate_at: i64,
    may_replace: impl FnOnce(&GrantHolder) -> Option<W> + Send,
) -> Result<GuardedConsent<W>, StorageError> {
    let mut tx = db.begin_write().await?;
    lock_tenant_consents(&mut tx, db.backend(), &consent.tenant_id).await?;
    if let Some(id) = &consent.invitation_id
        && !super::invitations::claim(&mut tx, id, &consent.upn, now).await?
    {
        return Ok(GuardedConsent::InvitationSpent);
    }
    let replaced = match usable_holder(&mut tx, &consent.tenant_id).await? {
        None => None,
        Some(holder) => match may_replace(&holder) {
            Some(why) => Some((holder, why)),
            None => return Ok(GuardedConsent::Refused(holder)),
        },
    };
    match write_consent(&mut tx, consent, grant, now, rotate_at).await {
        Err(StorageError::Database(sqlx::Error::Database(e))) if e.is_unique_violation() => {
            return Ok(GuardedConsent::Concurrent);
        }
        written => written?,
    }
    tx.commit().await?;
    Ok(GuardedConsent::Recorded { replaced })
}

/// Who holds `tenant`'s usable grant, if it has one (read outside any transaction: a
/// preview, decided again by [`record_consent_guarded`]).
pub async fn grant_holder(db: &Db, tenant: &TenantId) -> Result<Option<GrantHolder>, StorageError> {
    let mut conn = db.pool().acquire().await?;
    usable_holder(&mut conn, tenant).await
}

/// Serialises the consents of one tenant until the transaction ends. SQLite's
/// `BEGIN IMMEDIATE` already holds the only write lock; on PostgreSQL a row lock cannot cover
/// a partner row that does not exist yet, so a transaction-scoped advisory lock does.
async fn lock_tenant_consents(
    tx: &mut sqlx::AnyConnection,
    backend: Backend,
    tenant: &TenantId,
) -> Result<(), StorageError> {
    if backend == Backend::Postgres {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(format!("samvault:consent:{tenant}"));
        let key = i64::from_be_bytes(digest[..8].try_into().expect("8 bytes"));
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(key)
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}

async fn usable_holder(
    conn: &mut sqlx::AnyConnection,
    tenant: &TenantId,
) -> Result<Option<GrantHolder>, StorageError> {
    let row = sqlx::query(
        "SELECT status, grant_version, consented_by, consented_at FROM partners WHERE tenant_id = $1",
    )
    .bind(tenant.as_str())
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let status: String = row.try_get("status")?;
    if !PartnerStatus::parse(&status).is_some_and(PartnerStatus::is_usable) {
        return Ok(None);
    }
    let version: i64 = row.try_get("grant_version")?;
    let sealed = sqlx::query(
        "SELECT COUNT(*) AS n FROM grants WHERE tenant_id = $1 AND version = $2 AND sealed IS NOT NULL",
    )
    .bind(tenant.as_str())
    .bind(version)
    .fetch_one(&mut *conn)
    .await?
    .try_get::<i64, _>("n")?;
    if sealed == 0 {
        return Ok(None);
    }
    let behind = consent_behind(conn, tenant, version).await?;
    Ok(Some(behind.unwrap_or(GrantHolder {
        version,
        upn: row.try_get("consented_by")?,
        oid: None,
        user_name: None,
        consented_at: row.try_get("consented_at")?,
    })))
}

/// The consent behind grant `version` of `tenant`: the newest consent that created a version
/// at most `version` (a redemption's version descends from the one before it; only a consent
/// starts a new lineage). `None` when no consent row names a version.
pub async fn consent_behind_grant(
    db: &Db,
    tenant: &TenantId,
    version: i64,
) -> Result<Option<GrantHolder>, StorageError> {
    let mut conn = db.pool().acquire().await?;
    consent_behind(&mut conn, tenant, version).await
}

async fn consent_behind(
    conn: &mut sqlx::AnyConnection,
    tenant: &TenantId,
    version: i64,
) -> Result<Option<GrantHolder>, StorageError> {
    let row = sqlx::query(
        "SELECT upn, oid, display_name, consented_at FROM consents
         WHERE tenant_id = $1 AND grant_version <= $2 ORDER BY grant_version DESC, id DESC LIMIT 1",
    )
    .bind(tenant.as_str())
    .bind(version)
    .fetch_optional(&mut *conn)
    .await?;
    row.map(|r| {
        Ok(GrantHolder {
            version,
            upn: r.try_get("upn")?,
            oid: r.try_get("oid")?,
            user_name: r.try_get("display_name")?,
            consented_at: r.try_get("consented_at")?,
        })
    })
    .transpose()
}

/// Write-back after a redemption, in one transaction: the new refresh token becomes the
/// current version, the horizon and the next rotation move, older versions are shredded, the
/// attempt is recorded and the redeemer's lease is released. Must commit before anyone sees
/// the access token it came with.
pub async fn record_refresh(
    db: &Db,
    tenant: &TenantId,
    grant: &StoredGrant,
    attempt: &Attempt<'_>,
    now: i64,
    rotate_at: i64,
) -> Result<(), StorageError> {
    let mut tx = db.begin_write().await?;
    insert_grant(&mut tx, tenant, grant, attempt.source, now).await?;
    sqlx::query(
        "UPDATE partners SET grant_version = $2, last_refresh_at = $3, rotate_at = $4, failures = 0,
             lease_owner = CASE WHEN lease_owner = $5 THEN NULL ELSE lease_owner END,
             lease_until = CASE WHEN lease_owner = $5 THEN 0 ELSE lease_until END
         WHERE tenant_id = $1",
    )
    .bind(tenant.as_str())
    .bind(grant.version)
    .bind(now)
    .bind(rotate_at)
    .bind(attempt.lease_owner)
    .execute(&mut *tx)
    .await?;
    shred_old_versions(&mut tx, tenant, grant.version, now).await?;
    super::rotation::insert_attempt(
        &mut tx,
        tenant,
        now,
        attempt.source,
        "success",
        None,
        attempt.duration_ms,
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// What [`record_redemption`] did with a new refresh token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteBack {
    /// Stored as this version, now the partner's current one.
    Stored { version: i64 },
    /// Not stored: since the redemption started the partner was revoked, purged or marked
    /// for re-consent, or consented again (a new grant lineage that must stay current).
    Superseded,
}

/// Write-back for redemptions that may overlap (customer tokens with an IdP that keeps old
/// refresh tokens valid, next to the partner's own redemptions): the version is allocated
/// inside the transaction, after the partner's row is locked, and `seal` seals the refresh
/// token for it (the associated data names the version). Stored only while the partner is
/// still usable and its consent is the one the redemption started from (`consented_at`);
/// otherwise nothing is written. Otherwise as [`record_refresh`], in one transaction.
pub async fn record_redemption(
    db: &Db,
    tenant: &TenantId,
    consented_at: i64,
    seal: impl FnOnce(i64) -> Sealed + Send,
    attempt: &Attempt<'_>,
    now: i64,
    rotate_at: i64,
) -> Result<WriteBack, StorageError> {
    let mut tx = db.begin_write().await?;
    // The row lock on PostgreSQL serialises overlapping write-backs of one partner (SQLite's
    // `BEGIN IMMEDIATE` already does); each then sees the versions committed before it.
    let select = match db.backend() {
        Backend::Postgres => {
            "SELECT status, consented_at FROM partners WHERE tenant_id = $1 FOR UPDATE"
        }
        Backend::Sqlite => "SELECT status, consented_at FROM partners WHERE tenant_id = $1",
    };
    let row: Option<(String, i64)> = sqlx::query_as(select)
        .bind(tenant.as_str())
        .fetch_optional(&mut *tx)
        .await?;
    let current = row.is_some_and(|(status, at)| {
        at == consented_at && PartnerStatus::parse(&status).is_some_and(PartnerStatus::is_usable)
    });
    if !current {
        return Ok(WriteBack::Superseded);
    }
    let latest: i64 = sqlx::query_scalar(
        "SELECT COALESCE(MAX(version), 0) AS v FROM grants WHERE tenant_id = $1",
    )
    .bind(tenant.as_str())
    .fetch_one(&mut *tx)
    .await?;
    let grant = StoredGrant {
        version: latest + 1,
        sealed: seal(latest + 1),
    };
    insert_grant(&mut tx, tenant, &grant, attempt.source, now).await?;
    sqlx::query(
        "UPDATE partners SET grant_version = $2, last_refresh_at = $3, rotate_at = $4, failures = 0,
             lease_owner = CASE WHEN lease_owner = $5 THEN NULL ELSE lease_owner END,
             lease_until = CASE WHEN lease_owner = $5 THEN 0 ELSE lease_until END
         WHERE tenant_id = $1",
    )
    .bind(tenant.as_str())
    .bind(grant.version)
    .bind(now)
    .bind(rotate_at)
    .bind(attempt.lease_owner)
    .execute(&mut *tx)
    .await?;
    shred_old_versions(&mut tx, tenant, grant.version, now).await?;
    let (source, ms) = (attempt.source, attempt.duration_ms);
    super::rotation::insert_attempt(&mut tx, tenant, now, source, "success", None, ms).await?;
    tx.commit().await?;
    Ok(WriteBack::Stored {
        version: grant.version,
    })
}

/// Who redeemed and how long it took, recorded with the write-back.
pub struct Attempt<'a> {
    pub source: &'a str,
    pub duration_ms: i64,
    /// The lease to release in the same transaction.
    pub lease_owner: &'a str,
}

async fn insert_grant(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    tenant: &TenantId,
    grant: &StoredGrant,
    source: &str,
    now: i64,
) -> Result<(), StorageError> {
    sqlx::query(
        "INSERT INTO grants (tenant_id, version, source, kek_id, wrapped_key, sealed, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(tenant.as_str())
    .bind(grant.version)
    .bind(source)
    .bind(&grant.sealed.wrapped_key.kek_id)
    .bind(grant.sealed.wrapped_key.bytes.as_slice())
    .bind(grant.sealed.record.as_bytes())
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn shred_old_versions(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    tenant: &TenantId,
    current: i64,
    now: i64,
) -> Result<(), StorageError> {
    sqlx::query(
        "UPDATE grants SET kek_id = NULL, wrapped_key = NULL, sealed = NULL, shredded_at = $3
         WHERE tenant_id = $1 AND version <= $2 AND shredded_at IS NULL",
    )
    .bind(tenant.as_str())
    .bind(current - KEEP_VERSIONS)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The sealed grant of the partner's current version, if it still has one.
pub async fn current_grant(
    db: &Db,
    tenant: &TenantId,
) -> Result<Option<StoredGrant>, StorageError> {
    #[derive(FromRow)]
    struct GrantRow {
        version: i64,
        #[sqlx(flatten)]
        sealed: SealedColumns,
    }
    let row: Option<GrantRow> = sqlx::query_as(
        "SELECT g.version, g.kek_id, g.wrapped_key, g.sealed FROM grants g JOIN partners p
           ON p.tenant_id = g.tenant_id AND p.grant_version = g.version
         WHERE g.tenant_id = $1 AND g.sealed IS NOT NULL",
    )
    .bind(tenant.as_str())
    .fetch_optional(db.reader())
    .await?;
    let Some(row) = row else { return Ok(None) };
    let sealed = row
        .sealed
        .into_sealed()
        .map_err(|e: VaultError| StorageError::Corrupt(format!("grant of {tenant}: {e}")))?;
    Ok(Some(StoredGrant {
        version: row.version,
        sealed,
    }))
}

/// Changes a partner's status and records why; a no-op when the status and code are unchanged.
/// Returns the previous status when something changed.
pub async fn set_status(
    db: &Db,
    tenant: &TenantId,
    status: PartnerStatus,
    code: Option<&str>,
    reason: &str,
    now: i64,
) -> Result<Option<PartnerStatus>, StorageError> {
    let mut tx = db.begin_write().await?;
    // Lock the row on PostgreSQL so concurrent changes see each other's outcome (SQLite's
    // `BEGIN IMMEDIATE` already serialises writers).
    let select = match db.backend() {
        Backend::Postgres => {
            "SELECT status, status_code FROM partners WHERE tenant_id = $1 FOR UPDATE"
        }
        Backend::Sqlite => "SELECT status, status_code FROM partners WHERE tenant_id = $1",
    };
    let row: Option<(String, Option<String>)> = sqlx::query_as(select)
        .bind(tenant.as_str())
        .fetch_optional(&mut *tx)
        .await?;
    let Some((previous, previous_code)) = row else {
        return Ok(None);
    };
    if previous == status.as_str() && previous_code.as_deref() == code {
        return Ok(None);
    }
    sqlx::query(
        "UPDATE partners SET status = $2, status_code = $3, status_reason = $4, status_changed_at = $5 WHERE tenant_id = $1",
    )
    .bind(tenant.as_str())
    .bind(status.as_str())
    .bind(code)
    .bind(reason)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO status_changes (tenant_id, at, from_status, to_status, code, reason) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(tenant.as_str())
    .bind(now)
    .bind(&previous)
    .bind(status.as_str())
    .bind(code)
    .bind(reason)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(PartnerStatus::parse(&previous))
}

/// Crypto-shreds every sealed grant of a tenant: without the wrapped data keys the
/// ciphertexts are noise, even in backups taken later.
pub async fn shred_all(db: &Db, tenant: &TenantId, now: i64) -> Result<u64, StorageError> {
    let done = sqlx::query(
        "UPDATE grants SET kek_id = NULL, wrapped_key = NULL, sealed = NULL, shredded_at = $2 WHERE tenant_id = $1 AND shredded_at IS NULL",
    )
    .bind(tenant.as_str())
    .bind(now)
    .execute(db.pool())
    .await?;
    Ok(done.rows_affected())
}

/// One page of partners in tenant-id order, after `after` (keyset pagination: stays fast
/// with 100,000 partners).
pub async fn page(
    db: &Db,
    after: Option<&TenantId>,
    limit: i64,
) -> Result<Vec<Partner>, StorageError> {
    let rows = sqlx::query_as(concat!(
        "SELECT ",
        partner_columns!(),
        " FROM partners WHERE tenant_id > $1 ORDER BY tenant_id LIMIT $2"
    ))
    .bind(after.map_or("", TenantId::as_str))
    .bind(limit)
    .fetch_all(db.pool())
    .await?;
    partners(rows)
}

/// How many partners are in each status (the dashboard overview).
pub async fn count_by_status(db: &Db) -> Result<Vec<(PartnerStatus, i64)>, StorageError> {
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, COUNT(*) AS n FROM partners GROUP BY status")
            .fetch_all(db.reader())
            .await?;
    let mut counts = Vec::new();
    for (status, n) in rows {
        let status = PartnerStatus::parse(&status)
            .ok_or_else(|| StorageError::Corrupt(format!("partner status {status:?}")))?;
        counts.push((status, n));
    }
    counts.sort_by_key(|(status, _)| status.as_str());
    Ok(counts)
}

/// The orders the ops dashboard lists partners in. Each ends with `tenant_id`, so a
/// [`Position`] names one row exactly and keyset pagination never skips or repeats one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PartnerSort {
    /// Display name, A to Z.
    Name,
    /// Soonest 90-day horizon first (= oldest successful redemption first).
    Expiry,
    /// By status, then by name.
    Status,
    /// Most recent successful redemption first.
    LastRefresh,
}

impl PartnerSort {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Name => "name",
            Self::Expiry => "expiry",
            Self::Status => "status",
            Self::LastRefresh => "last_refresh",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        Some(match value {
            "name" => Self::Name,
            "expiry" => Self::Expiry,
            "status" => Self::Status,
            "last_refresh" => Self::LastRefresh,
            _ => return None,
        })
    }

    /// Where a listed partner stands in this order (the next page starts after it).
    pub fn position_of(self, partner: &Partner) -> Position {
        let tenant = partner.tenant_id.clone();
        match self {
            Self::Name => Position::Name {
                name: partner.display_name.clone(),
                tenant,
            },
            Self::Expiry | Self::LastRefresh => Position::Refresh {
                at: partner.last_refresh_at,
                tenant,
            },
            Self::Status => Position::Status {
                status: partner.status,
                name: partner.display_name.clone(),
                tenant,
            },
        }
    }
}

/// A row's place in a [`PartnerSort`]: the values of the sort key, tiebreak included.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Position {
    Name {
        name: String,
        tenant: TenantId,
    },
    Refresh {
        at: i64,
        tenant: TenantId,
    },
    Status {
        status: PartnerStatus,
        name: String,
        tenant: TenantId,
    },
}

/// Which partners to list, in what order, from where.
#[derive(Clone, Debug)]
pub struct PartnerQuery {
    /// A tenant id, or a fragment of a display name, tenant id or domain (case-insensitive).
    pub search: Option<String>,
    pub status: Option<PartnerStatus>,
    pub sort: PartnerSort,
    /// Start after this row (`None`: the first page). Must belong to `sort`.
    pub after: Option<Position>,
    pub limit: i64,
}

/// A partner as the dashboard lists it: the record plus its rotation schedule.
#[derive(Clone, Debug)]
pub struct ListedPartner {
    pub partner: Partner,
    /// When the scheduler redeems the grant next (meaningful while the status is usable).
    pub rotate_at: i64,
}

#[derive(FromRow)]
struct ListedRow {
    #[sqlx(flatten)]
    partner: PartnerRow,
    rotate_at: i64,
}

impl TryFrom<ListedRow> for ListedPartner {
    type Error = StorageError;

    fn try_from(row: ListedRow) -> Result<Self, StorageError> {
        Ok(ListedPartner {
            partner: row.partner.try_into()?,
            rotate_at: row.rotate_at,
        })
    }
}

/// Escapes `LIKE` wildcards so a search term matches literally (with `ESCAPE '\'`).
fn like_fragment(term: &str) -> String {
    let mut pattern = String::with_capacity(term.len() + 2);
    pattern.push('%');
    for c in term.chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

/// One page of partners for the dashboard (keyset pagination). The WHERE clause compares
/// row values with the sort key, and each sort has an index in that order (migration
/// 0006), so the database walks the index from the cursor and stops after `limit` matching
/// rows: no OFFSET, no sort of the whole table, whatever the page number.
pub async fn list_page(db: &Db, query: &PartnerQuery) -> Result<Vec<ListedPartner>, StorageError> {
    let mut sql = SqlBuilder::new(
        db.backend(),
        concat!("SELECT ", partner_columns!(), ", rotate_at FROM partners"),
    );
    if let Some(status) = query.status {
        sql.and_where("status = ").push_bind(status.as_str());
    }
    if let Some(term) = &query.search {
        push_search(&mut sql, db.backend(), term);
    }
    push_cursor(&mut sql, query)?;
    sql.push(match query.sort {
        PartnerSort::Name => " ORDER BY display_name, tenant_id",
        PartnerSort::Expiry => " ORDER BY last_refresh_at, tenant_id",
        PartnerSort::Status => " ORDER BY status, display_name, tenant_id",
        PartnerSort::LastRefresh => " ORDER BY last_refresh_at DESC, tenant_id DESC",
    });
    sql.push(" LIMIT ").push_bind(query.limit);
    let rows: Vec<ListedRow> = sql.build_query_as().fetch_all(db.reader()).await?;
    rows.into_iter().map(ListedPartner::try_from).collect()
}

/// A whole tenant id finds its partner by primary key, whatever the order; anything else is a
/// case-insensitive fragment of the name, tenant id or domain.
fn push_search(sql: &mut SqlBuilder, backend: Backend, term: &str) {
    if let Ok(tenant) = TenantId::parse(term) {
        sql.and_where("tenant_id = ").push_bind(tenant.as_str());
        return;
    }
    // Case-insensitive: SQLite's LIKE folds ASCII letters, PostgreSQL needs ILIKE (which
    // folds every letter). Not lower(column): that would hide the column from the index
    // entries the search filters (see migration 0006).
    let like = match backend {
        Backend::Sqlite => " LIKE ",
        Backend::Postgres => " ILIKE ",
    };
    let pattern = like_fragment(term);
    sql.and_where("(");
    for (i, column) in ["display_name", "tenant_id", "domain"]
        .into_iter()
        .enumerate()
    {
        if i > 0 {
            sql.push(" OR ");
        }
        sql.push(column)
            .push(like)
            .push_bind(pattern.clone())
            .push(" ESCAPE '\\'");
    }
    sql.push(")");
}

/// Starts after `query.after`: the row value of the sort key, compared in the sort's direction.
fn push_cursor(sql: &mut SqlBuilder, query: &PartnerQuery) -> Result<(), StorageError> {
    match (&query.after, query.sort) {
        (None, _) => {}
        (Some(Position::Name { name, tenant }), PartnerSort::Name) => {
            sql.and_where("(display_name, tenant_id) > (")
                .push_bind(name.as_str())
                .push(", ")
                .push_bind(tenant.as_str())
                .push(")");
        }
        (
            Some(Position::Refresh { at, tenant }),
            sort @ (PartnerSort::Expiry | PartnerSort::LastRefresh),
        ) => {
            sql.and_where(if sort == PartnerSort::Expiry {
                "(last_refresh_at, tenant_id) > ("
            } else {
                "(last_refresh_at, tenant_id) < ("
            })
            .push_bind(*at)
            .push(", ")
            .push_bind(tenant.as_str())
            .push(")");
        }
        (
            Some(Position::Status {
                status,
                name,
                tenant,
            }),
            PartnerSort::Status,
        ) => {
            sql.and_where("(status, display_name, tenant_id) > (")
                .push_bind(status.as_str())
                .push(", ")
                .push_bind(name.as_str())
                .push(", ")
                .push_bind(tenant.as_str())
                .push(")");
        }
        (Some(_), _) => {
            return Err(StorageError::Corrupt(
                "a list position from another sort order".into(),
            ));
        }
    }
    Ok(())
}

/// One partner with its rotation schedule (the dashboard's detail page).
pub async fn get_listed(db: &Db, tenant: &TenantId) -> Result<Option<ListedPartner>, StorageError> {
    let row: Option<ListedRow> = sqlx::query_as(concat!(
        "SELECT ",
        partner_columns!(),
        ", rotate_at FROM partners WHERE tenant_id = $1"
    ))
    .bind(tenant.as_str())
    .fetch_optional(db.reader())
    .await?;
    row.map(ListedPartner::try_from).transpose()
}

/// A consent as recorded: who, with what strength, for which scopes.
#[derive(Clone, Debug)]
pub struct ConsentRecord {
    pub upn: String,
    /// The consenting user's object id (`None` for imported grants).
    pub oid: Option<String>,
    pub user_name: Option<String>,
    pub mfa: bool,
    /// The `amr` values of the consent's access token, space-separated.
    pub amr: String,
    pub scopes: String,
    pub invitation: bool,
    pub consented_at: i64,
}

/// A tenant's consents, newest first.
pub async fn consents(
    db: &Db,
    tenant: &TenantId,
    limit: i64,
) -> Result<Vec<ConsentRecord>, StorageError> {
    #[derive(FromRow)]
    struct ConsentRow {
        upn: String,
        oid: Option<String>,
        display_name: Option<String>,
        mfa: i64,
        amr: String,
        scopes: String,
        invitation_id: Option<String>,
        consented_at: i64,
    }
    let rows: Vec<ConsentRow> = sqlx::query_as(
        "SELECT upn, oid, display_name, mfa, amr, scopes, invitation_id, consented_at FROM consents
         WHERE tenant_id = $1 ORDER BY consented_at DESC, id DESC LIMIT $2",
    )
    .bind(tenant.as_str())
    .bind(limit)
    .fetch_all(db.reader())
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| ConsentRecord {
            upn: r.upn,
            oid: r.oid,
            user_name: r.display_name,
            mfa: flag(r.mfa),
            amr: r.amr,
            scopes: r.scopes,
            invitation: r.invitation_id.is_some(),
            consented_at: r.consented_at,
        })
        .collect())
}

/// A grant version's metadata; never its sealed bytes.
#[derive(Clone, Debug, FromRow)]
pub struct GrantVersion {
    pub version: i64,
    pub source: String,
    pub created_at: i64,
    pub shredded_at: Option<i64>,
    /// The key-encryption key that wraps its data key (`None` once shredded).
    pub kek_id: Option<String>,
}

/// A tenant's grant versions, newest first.
pub async fn grant_versions(
    db: &Db,
    tenant: &TenantId,
    limit: i64,
) -> Result<Vec<GrantVersion>, StorageError> {
    Ok(sqlx::query_as(
        "SELECT version, source, created_at, shredded_at, kek_id FROM grants
         WHERE tenant_id = $1 ORDER BY version DESC LIMIT $2",
    )
    .bind(tenant.as_str())
    .bind(limit)
    .fetch_all(db.reader())
    .await?)
}

/// A recorded status change.
#[derive(Clone, Debug, FromRow)]
pub struct StatusChange {
    pub at: i64,
    #[sqlx(rename = "from_status")]
    pub from: Option<String>,
    #[sqlx(rename = "to_status")]
    pub to: String,
    pub code: Option<String>,
    pub reason: String,
}

/// A tenant's status changes, newest first.
pub async fn status_changes(
    db: &Db,
    tenant: &TenantId,
    limit: i64,
) -> Result<Vec<StatusChange>, StorageError> {
    Ok(sqlx::query_as(
        "SELECT at, from_status, to_status, code, reason FROM status_changes
         WHERE tenant_id = $1 ORDER BY at DESC, id DESC LIMIT $2",
    )
    .bind(tenant.as_str())
    .bind(limit)
    .fetch_all(db.reader())
    .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_terms_match_literally() {
        assert_eq!(like_fragment("contoso"), "%contoso%");
        assert_eq!(like_fragment("50%_off\\"), "%50\\%\\_off\\\\%");
    }
}

/// A row of `status_changes` as the services' status watch reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusTransition {
    pub id: i64,
    pub tenant_id: TenantId,
    pub to_status: PartnerStatus,
}

/// The id of the newest status change (0 when there is none): where a watch starts.
pub async fn last_status_change(db: &Db) -> Result<i64, StorageError> {
    Ok(
        sqlx::query_scalar("SELECT COALESCE(MAX(id), 0) AS id FROM status_changes")
            .fetch_one(db.reader())
            .await?,
    )
}

/// Status changes after `after`, oldest first, at most 1,000 (a primary-key range scan).
pub async fn status_changes_after(
    db: &Db,
    after: i64,
) -> Result<Vec<StatusTransition>, StorageError> {
    #[derive(FromRow)]
    struct TransitionRow {
        id: i64,
        tenant_id: String,
        to_status: String,
    }
    let rows: Vec<TransitionRow> = sqlx::query_as(
        "SELECT id, tenant_id, to_status FROM status_changes WHERE id > $1 ORDER BY id LIMIT 1000",
    )
    .bind(after)
    .fetch_all(db.reader())
    .await?;
    rows.into_iter()
        .map(|r| {
            let tenant = &r.tenant_id;
            Ok(StatusTransition {
                id: r.id,
                tenant_id: stored_tenant(tenant, format_args!("status change of {tenant}"))?,
                to_status: PartnerStatus::parse(&r.to_status)
                    .ok_or_else(|| StorageError::Corrupt(format!("status {}", r.to_status)))?,
            })
        })
        .collect()
}
