//! Onboarding invitations: a capability URL sent to one partner (or anyone), with an expiry.
//! Only the SHA-256 of the URL's token is stored, so a database reader cannot forge links.

use super::{Db, FromRow, StorageError, stored_tenant};
use crate::domain::TenantId;

#[derive(Clone, Debug)]
pub struct Invitation {
    pub id: String,
    pub tenant_id: Option<TenantId>,
    pub created_at: i64,
    pub expires_at: i64,
    pub used_at: Option<i64>,
    /// The UPN of the admin whose consent used it.
    pub used_by: Option<String>,
}

/// Whether an invitation can still be used, as the onboarding page decides it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InvitationState {
    Open,
    Used,
    Expired,
}

impl InvitationState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Used => "used",
            Self::Expired => "expired",
        }
    }
}

impl Invitation {
    pub fn state(&self, now: i64) -> InvitationState {
        if self.used_at.is_some() {
            InvitationState::Used
        } else if self.expires_at <= now {
            InvitationState::Expired
        } else {
            InvitationState::Open
        }
    }
}

/// The columns of an [`InvitationRow`], for `concat!` into static SQL.
macro_rules! invitation_columns {
    () => {
        "id, tenant_id, created_at, expires_at, used_at, used_by"
    };
}

#[derive(FromRow)]
struct InvitationRow {
    id: String,
    tenant_id: Option<String>,
    created_at: i64,
    expires_at: i64,
    used_at: Option<i64>,
    used_by: Option<String>,
}

impl TryFrom<InvitationRow> for Invitation {
    type Error = StorageError;

    fn try_from(row: InvitationRow) -> Result<Self, StorageError> {
        Ok(Invitation {
            id: row.id,
            tenant_id: row
                .tenant_id
                .map(|t| stored_tenant(&t, "invitation tenant"))
                .transpose()?,
            created_at: row.created_at,
            expires_at: row.expires_at,
            used_at: row.used_at,
            used_by: row.used_by,
        })
    }
}

pub async fn create(
    db: &Db,
    id: &str,
    tenant: Option<&TenantId>,
    now: i64,
    expires_at: i64,
) -> Result<(), StorageError> {
    sqlx::query(
        "INSERT INTO invitations (id, tenant_id, created_at, expires_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(id)
    .bind(tenant.map(TenantId::as_str))
    .bind(now)
    .bind(expires_at)
    .execute(db.pool())
    .await?;
    Ok(())
}

pub async fn get(db: &Db, id: &str) -> Result<Option<Invitation>, StorageError> {
    let row: Option<InvitationRow> = sqlx::query_as(concat!(
        "SELECT ",
        invitation_columns!(),
        " FROM invitations WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(db.pool())
    .await?;
    row.map(Invitation::try_from).transpose()
}

/// Up to `limit` invitations, newest first, after skipping `offset` of them.
pub async fn list(db: &Db, limit: i64, offset: i64) -> Result<Vec<Invitation>, StorageError> {
    let rows: Vec<InvitationRow> = sqlx::query_as(concat!(
        "SELECT ",
        invitation_columns!(),
        " FROM invitations ORDER BY created_at DESC, id DESC LIMIT $1 OFFSET $2"
    ))
    .bind(limit)
    .bind(offset)
    .fetch_all(db.pool())
    .await?;
    rows.into_iter().map(Invitation::try_from).collect()
}

/// Ends an open invitation now (its link is refused from then on). False when there is no
/// such invitation, or it is already used or expired.
pub async fn expire(db: &Db, id: &str, now: i64) -> Result<bool, StorageError> {
    let done = sqlx::query(
        "UPDATE invitations SET expires_at = $2 WHERE id = $1 AND used_at IS NULL AND expires_at > $2",
    )
    .bind(id)
    .bind(now)
    .execute(db.pool())
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn mark_used(db: &Db, id: &str, by: &str, now: i64) -> Result<(), StorageError> {
    sqlx::query("UPDATE invitations SET used_at = $2, used_by = $3 WHERE id = $1")
        .bind(id)
        .bind(now)
        .bind(by)
        .execute(db.pool())
        .await?;
    Ok(())
}
