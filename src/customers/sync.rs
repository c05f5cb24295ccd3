//! Customer discovery: a partner's customer list, page by page, into `customers`.

use serde_json::json;

use super::{Customers, StatusChange, partner_problem};
use crate::broker::BrokerError;
use crate::domain::{CustomerStatus, TenantId};
use crate::notify::EventKind;
use crate::partner_center::{PcCustomer, PcError};
use crate::storage::customers::{self as store, Change, ListedCustomer};
use crate::storage::{StorageError, now};

/// How long after a failed sync the scheduler tries again.
pub const SYNC_RETRY_SECS: i64 = 300;

/// What one sync found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Customers Partner Center listed.
    pub listed: usize,
    /// Customers seen for the first time (or again after they were gone).
    pub new: usize,
    /// Customers no longer listed, now `gone`.
    pub gone: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("{}", partner_problem(.0))]
    Partner(BrokerError),
    #[error("{}", .0.explain())]
    PartnerCenter(PcError),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl Customers {
    /// Reads `partner`'s customer list into `customers` (new ones due for consent when
    /// SAMVAULT_CUSTOMER_AUTO_CONSENT is on), marks the ones it no longer lists `gone`,
    /// records the sync (next one in SAMVAULT_CUSTOMER_SYNC_INTERVAL, or in
    /// [`SYNC_RETRY_SECS`] after a failure) and audits it as `actor`.
    pub async fn sync(&self, partner: &TenantId, actor: &str) -> Result<SyncReport, SyncError> {
        let at = now();
        let result = self.read_list(partner, at, actor).await;
        let (next, error) = match &result {
            Ok(_) => (
                at + self.inner.settings.sync_interval.as_secs() as i64,
                None,
            ),
            Err(e) => (now() + SYNC_RETRY_SECS, Some(e.to_string())),
        };
        store::record_sync(&self.inner.db, partner, now(), next, error.as_deref()).await?;
        let detail = match &result {
            Ok(r) => json!({ "listed": r.listed, "new": r.new, "gone": r.gone }),
            Err(e) => json!({ "error": e.to_string() }),
        };
        self.audit(actor, "customer.sync", partner, detail).await;
        match &result {
            Ok(r) => {
                tracing::info!(tenant.id = %partner, listed = r.listed, new = r.new, gone = r.gone, "customers synced")
            }
            Err(e) => tracing::warn!(tenant.id = %partner, error = %e, "customer sync failed"),
        }
        result
    }

    async fn read_list(
        &self,
        partner: &TenantId,
        at: i64,
        actor: &str,
    ) -> Result<SyncReport, SyncError> {
        let token = self.pc_token(partner).await.map_err(SyncError::Partner)?;
        let pc = &self.inner.pc;
        let consent_at = self.inner.settings.auto_consent.then_some(at);
        let mut report = SyncReport::default();
        // Whatever the complete list does not name again is gone.
        let mut unlisted: std::collections::HashMap<TenantId, CustomerStatus> =
            store::listed_ids(&self.inner.db, partner)
                .await?
                .into_iter()
                .collect();
        let mut continuation: Option<String> = None;
        loop {
            let page = pc
                .list_page(&token, continuation.as_deref())
                .await
                .map_err(SyncError::PartnerCenter)?;
            let listed: Vec<ListedCustomer> = page.customers.iter().filter_map(listed).collect();
            report.listed += listed.len();
            for customer in &listed {
                unlisted.remove(&customer.customer_tenant_id);
            }
            let db = &self.inner.db;
            let changes = store::upsert_listed(db, partner, &listed, at, consent_at).await?;
            report.new += changes.len();
            self.announce(partner, &changes, actor).await;
            match page.next {
                Some(next) => continuation = Some(next),
                None => break,
            }
        }
        let reason = "Partner Center no longer lists this customer of the partner.";
        let unlisted: Vec<(TenantId, CustomerStatus)> = unlisted.into_iter().collect();
        let gone = store::mark_gone(&self.inner.db, partner, &unlisted, now(), reason).await?;
        report.gone = gone.len();
        self.announce(partner, &gone, actor).await;
        Ok(report)
    }

    /// Audits and sends the status changes of a sync: customers gone, or listed again after
    /// they were gone (a first listing is in the sync's own audit entry).
    async fn announce(&self, partner: &TenantId, changes: &[Change], actor: &str) {
        for change in changes.iter().filter(|c| c.from.is_some()) {
            let reason = match change.to {
                CustomerStatus::Gone => {
                    "Partner Center no longer lists this customer of the partner."
                }
                _ => "Partner Center lists this customer again.",
            };
            let detail = json!({
                "customer_tenant_id": change.customer_tenant_id,
                "from": change.from.map(CustomerStatus::as_str),
                "to": change.to.as_str(),
                "reason": reason,
            });
            self.audit(actor, "customer.status", partner, detail).await;
            let status = StatusChange {
                partner,
                customer: &change.customer_tenant_id,
                from: change.from,
                to: change.to,
                code: None,
                reason,
            };
            self.publish(EventKind::CustomerStatusChanged, &status)
                .await;
        }
    }
}

/// A listed customer samvault can store: its tenant id is a GUID.
fn listed(c: &PcCustomer) -> Option<ListedCustomer> {
    let Ok(tenant) = TenantId::parse(&c.tenant_id) else {
        tracing::warn!(customer.id = %c.id, "Partner Center listed a customer without a tenant id; skipped");
        return None;
    };
    Some(ListedCustomer {
        customer_tenant_id: tenant,
        pc_customer_id: c.id.clone(),
        name: c.name.chars().take(200).collect(),
        domain: c.domain.as_ref().map(|d| d.chars().take(255).collect()),
    })
}
