//! Onboarding invitations: a capability URL sent to one partner (or anyone), with an expiry.
//! Only the SHA-256 of the URL's token is stored, so a database reader cannot forge links.

use sqlx::Row;

use super::{Db, StorageError};
use crate::domain::TenantId;

#[derive(Clone, Debug)]
pub struct Invitation {
    pub id: String,
    pub tenant_id: Option<TenantId>,
    pub created_at: i64,
    pub expires_at: i64,
    pub used_at: Option<i64>,
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
    let row = sqlx::query(
        "SELECT id, tenant_id, created_at, expires_at, used_at FROM invitations WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(db.pool())
    .await?;
    let Some(row) = row else { return Ok(None) };
    let tenant: Option<String> = row.try_get("tenant_id")?;
    Ok(Some(Invitation {
        id: row.try_get("id")?,
        tenant_id: tenant
            .map(|t| {
                TenantId::parse(&t)
                    .map_err(|e| StorageError::Corrupt(format!("invitation tenant: {e}")))
            })
            .transpose()?,
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
        used_at: row.try_get("used_at")?,
    }))
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
