//! What the customer-token path reads besides `storage::customers` (kept apart from it so
//! that the two can change independently).

use super::{Db, StorageError};
use crate::domain::TenantId;

/// When `partner`'s customer list was last read from Partner Center, if ever.
pub async fn last_sync_at(db: &Db, partner: &TenantId) -> Result<Option<i64>, StorageError> {
    let at: Option<Option<i64>> =
        sqlx::query_scalar("SELECT last_sync_at FROM customer_syncs WHERE partner_tenant_id = $1")
            .bind(partner.as_str())
            .fetch_optional(db.reader())
            .await?;
    Ok(at.flatten())
}
