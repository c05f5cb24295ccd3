//! CPV consent into customer tenants: the configured grants pushed with Partner Center's
//! applicationconsents, then verified by a redemption at the customer's authority.
//!
//! Idempotent: a customer already consented with the configured grants is left alone; an
//! existing consent (409: Partner Center cannot change one in place) is deleted and created
//! again with the configured grants. Partner Center accepts a consent even where the partner
//! has no delegated access any more, so the status comes from the verification: a token at
//! the customer's authority for the first configured resource (`consented`), or Entra's
//! refusal (50020 `access_denied`, 90002 `gone`, 65001/500011/70011 `consent_failed`, checked
//! again later).

use std::time::Duration;

use serde_json::json;

use super::{Customers, StatusChange, partner_problem};
use crate::backoff::Backoff;
use crate::broker::customer::CustomerRedeemError;
use crate::config::IdpRotation;
use crate::domain::{CustomerStatus, TenantId};
use crate::notify::EventKind;
use crate::partner_center::{PcError, PcToken};
use crate::storage::customers::{self as store, ConsentRecord, CustomerRow};
use crate::storage::{StorageError, now};

/// After the n-th consecutive failed push: 15 s doubling to 6 h, ±20 %.
const CONSENT_BACKOFF: Backoff = Backoff::new(Duration::from_secs(15), 2)
    .capped_at(Duration::from_secs(6 * 3600))
    .with_jitter(0.2);

/// How a push ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pushed {
    /// Already consented with the configured grants: nothing sent.
    Unchanged,
    /// The new status (consented, access_denied, gone) and its reason.
    Done {
        status: CustomerStatus,
        reason: Option<String>,
    },
    /// `consent_failed`, retried at `retry_at`.
    Failed { reason: String, retry_at: i64 },
    /// Throttled for too long: put off, not failed.
    Postponed,
}

/// What a push did in Partner Center before it ended: an existing consent deleted.
#[derive(Default)]
struct Steps {
    replaced: bool,
    /// The delete went through: whatever was consented there is gone.
    deleted: bool,
}

/// Why a push ended without a verified consent.
enum Refused {
    Pc(PcError),
    Partner(String),
    Customer {
        status: CustomerStatus,
        code: u32,
        reason: String,
    },
}

impl Customers {
    /// Pushes the configured grants into `row`'s tenant and records the outcome, audited
    /// (`customer.consent`) and sent (`customer.consented`, `customer.consent_failed`,
    /// `customer.status_changed`) as done by `actor`.
    pub async fn consent(&self, row: &CustomerRow, actor: &str) -> Result<Pushed, StorageError> {
        let grants = self.inner.grants_text.clone();
        if row.status == CustomerStatus::Consented && row.grants_applied.as_deref() == Some(&grants)
        {
            store::record_consent(
                &self.inner.db,
                &row.partner_tenant_id,
                &row.customer_tenant_id,
                ConsentRecord {
                    status: CustomerStatus::Consented,
                    reason: None,
                    grants_applied: Some(&grants),
                },
                now(),
            )
            .await?;
            return Ok(Pushed::Unchanged);
        }
        let mut steps = Steps::default();
        let outcome = self.push(row, &mut steps).await;
        let pushed = match outcome {
            Ok(()) => self.verify(row).await,
            Err(refused) => Err(refused),
        };
        if let Err(Refused::Pc(PcError::Throttled { retry_after })) = &pushed {
            let at = now() + retry_after.as_secs().max(1) as i64;
            store::postpone_consent(
                &self.inner.db,
                &row.partner_tenant_id,
                &row.customer_tenant_id,
                at,
            )
            .await?;
            return Ok(Pushed::Postponed);
        }
        self.record(row, pushed, &steps, actor).await
    }

    /// Create; on 409 delete, then create again.
    async fn push(&self, row: &CustomerRow, steps: &mut Steps) -> Result<(), Refused> {
        let partner = &row.partner_tenant_id;
        let token: PcToken = self
            .pc_token(partner)
            .await
            .map_err(|e| Refused::Partner(partner_problem(&e)))?;
        let pc = &self.inner.pc;
        let grants = &self.inner.settings.grants;
        match pc.create_consent(&token, &row.pc_customer_id, grants).await {
            Ok(()) => return Ok(()),
            Err(e) if e.is_conflict() => steps.replaced = true,
            Err(e) => return Err(Refused::Pc(e)),
        }
        match pc.delete_consent(&token, &row.pc_customer_id).await {
            Ok(()) => steps.deleted = true,
            // Removed meanwhile (by someone else): create it all the same.
            Err(e) if e.is_not_found() => steps.deleted = true,
            Err(e) => return Err(Refused::Pc(e)),
        }
        pc.create_consent(&token, &row.pc_customer_id, grants)
            .await
            .map_err(Refused::Pc)
    }

    /// A token at the customer's authority for the first configured resource (not cached,
    /// no status moved: the push records the outcome once).
    async fn verify(&self, row: &CustomerRow) -> Result<(), Refused> {
        let resource = self.inner.settings.first_resource();
        let broker = &self.inner.broker;
        let in_line = self.inner.settings.idp_rotation == IdpRotation::Strict;
        let (partner, customer) = (&row.partner_tenant_id, &row.customer_tenant_id);
        match broker
            .redeem_at_customer(partner, customer, resource, in_line)
            .await
        {
            Ok(_) => Ok(()),
            Err(CustomerRedeemError::Customer { code }) => Err(customer_refusal(code)),
            Err(CustomerRedeemError::Partner(e)) => Err(Refused::Partner(format!(
                "Partner Center accepted the consent, but the check at the customer's authority failed. {}",
                partner_problem(&e)
            ))),
        }
    }
}

/// Entra's refusal at the customer's authority, after Partner Center accepted the consent.
fn customer_refusal(code: u32) -> Refused {
    let (status, reason) = match code {
        50020 => (
            CustomerStatus::AccessDenied,
            "The partner's user has no access to this customer tenant (AADSTS50020): the partner holds no delegated admin relationship (GDAP) with this customer, or it ended. The partner must establish one; then consent this customer again (`samvault customers consent`).",
        ),
        90002 => (
            CustomerStatus::Gone,
            "The customer tenant does not exist (any more) (AADSTS90002). Nothing to do.",
        ),
        _ => (
            CustomerStatus::ConsentFailed,
            "Partner Center accepted the consent, but Entra ID does not grant it in the customer tenant yet (AADSTS65001, 500011 or 70011: consent not propagated, or a resource the tenant lacks). samvault checks again later with backoff; if it persists, check SAMVAULT_CUSTOMER_GRANTS.",
        ),
    };
    Refused::Customer {
        status,
        code,
        reason: reason.to_string(),
    }
}

impl Customers {
    /// Stores how a push ended, audits it and sends its event.
    async fn record(
        &self,
        row: &CustomerRow,
        pushed: Result<(), Refused>,
        steps: &Steps,
        actor: &str,
    ) -> Result<Pushed, StorageError> {
        let (partner, customer) = (&row.partner_tenant_id, &row.customer_tenant_id);
        let grants = self.inner.grants_text.as_str();
        let at = now();
        let (outcome, code, kind, from) = match pushed {
            Ok(()) => {
                let record = ConsentRecord {
                    status: CustomerStatus::Consented,
                    reason: None,
                    grants_applied: Some(grants),
                };
                let from =
                    store::record_consent(&self.inner.db, partner, customer, record, at).await?;
                (
                    Pushed::Done {
                        status: CustomerStatus::Consented,
                        reason: None,
                    },
                    None,
                    EventKind::CustomerConsented,
                    from,
                )
            }
            Err(Refused::Customer {
                status,
                code,
                reason,
            }) if status != CustomerStatus::ConsentFailed => {
                let record = ConsentRecord {
                    status,
                    reason: Some(&reason),
                    grants_applied: Some(grants),
                };
                let from =
                    store::record_consent(&self.inner.db, partner, customer, record, at).await?;
                (
                    Pushed::Done {
                        status,
                        reason: Some(reason),
                    },
                    Some(format!("AADSTS{code}")),
                    EventKind::CustomerStatusChanged,
                    from,
                )
            }
            Err(refused) => {
                let (reason, code) = refused.explain();
                let left = if steps.deleted {
                    None
                } else {
                    row.grants_applied.as_deref()
                };
                let failures = row.consent_failures + 1;
                let retry_at = at + CONSENT_BACKOFF.delay(failures).as_secs().max(1) as i64;
                let db = &self.inner.db;
                let from = store::record_consent_failure(
                    db, partner, customer, &reason, left, retry_at, at,
                )
                .await?;
                (
                    Pushed::Failed { reason, retry_at },
                    code,
                    EventKind::CustomerConsentFailed,
                    from.map(|(s, _)| s),
                )
            }
        };
        self.report(row, &outcome, code.as_deref(), kind, from, steps, actor)
            .await;
        Ok(outcome)
    }

    /// The audit entry and webhook event of one push.
    #[allow(clippy::too_many_arguments)]
    async fn report(
        &self,
        row: &CustomerRow,
        outcome: &Pushed,
        code: Option<&str>,
        kind: EventKind,
        from: Option<CustomerStatus>,
        steps: &Steps,
        actor: &str,
    ) {
        let (status, reason) = match outcome {
            Pushed::Done { status, reason } => (
                *status,
                reason
                    .as_deref()
                    .unwrap_or("Consented into the customer tenant with the configured grants."),
            ),
            Pushed::Failed { reason, .. } => (CustomerStatus::ConsentFailed, reason.as_str()),
            Pushed::Unchanged | Pushed::Postponed => return,
        };
        let detail = json!({
            "customer_tenant_id": row.customer_tenant_id,
            "status": status.as_str(),
            "grants": self.inner.grants_text,
            "replaced": steps.replaced,
            "code": code,
            "reason": reason,
        });
        self.audit(actor, "customer.consent", &row.partner_tenant_id, detail)
            .await;
        // A first consent is an event; a repeated failure too (each attempt is a push).
        let change = StatusChange {
            partner: &row.partner_tenant_id,
            customer: &row.customer_tenant_id,
            from: from.or(Some(row.status)),
            to: status,
            code,
            reason,
        };
        self.publish(kind, &change).await;
    }
}

impl Refused {
    /// The reason stored with `consent_failed`, and the code behind it.
    fn explain(self) -> (String, Option<String>) {
        match self {
            Refused::Pc(e) => {
                let code = e
                    .code()
                    .map(str::to_string)
                    .or_else(|| e.status().map(|s| format!("HTTP {s}")));
                (e.explain(), code)
            }
            Refused::Partner(reason) => (reason, None),
            Refused::Customer { code, reason, .. } => (reason, Some(format!("AADSTS{code}"))),
        }
    }
}

/// Why a removal did not happen.
#[derive(Debug, thiserror::Error)]
pub enum RemoveError {
    #[error("no customer {customer} of partner {partner}")]
    NotFound {
        partner: TenantId,
        customer: TenantId,
    },
    #[error("{0}")]
    Failed(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl Customers {
    /// Removes the CPV app's consent from a customer's tenant (Partner Center's DELETE; none
    /// there is fine): status `removed`, audited (`customer.remove`) and sent
    /// (`customer.removed`). No automatic push consents it again; `customers consent` does.
    pub async fn remove(
        &self,
        partner: &TenantId,
        customer: &TenantId,
        actor: &str,
    ) -> Result<(), RemoveError> {
        let Some(row) = store::get(&self.inner.db, partner, customer).await? else {
            return Err(RemoveError::NotFound {
                partner: partner.clone(),
                customer: customer.clone(),
            });
        };
        let result = match self.pc_token(partner).await {
            Err(e) => Err(partner_problem(&e)),
            Ok(token) => match self
                .inner
                .pc
                .delete_consent(&token, &row.pc_customer_id)
                .await
            {
                Ok(()) => Ok(true),
                Err(e) if e.is_not_found() => Ok(false),
                Err(e) => Err(e.explain()),
            },
        };
        let detail = match &result {
            Ok(existed) => {
                json!({ "customer_tenant_id": customer, "removed": true, "existed": existed })
            }
            Err(why) => json!({ "customer_tenant_id": customer, "removed": false, "reason": why }),
        };
        self.audit(actor, "customer.remove", partner, detail).await;
        let existed = result.map_err(RemoveError::Failed)?;
        let reason = if existed {
            "The CPV app's consent was removed from this customer tenant through samvault."
        } else {
            "Removed through samvault; Partner Center held no consent of the app there."
        };
        let record = ConsentRecord {
            status: CustomerStatus::Removed,
            reason: Some(reason),
            grants_applied: None,
        };
        let from = store::record_consent(&self.inner.db, partner, customer, record, now()).await?;
        let change = StatusChange {
            partner,
            customer,
            from: from.or(Some(row.status)),
            to: CustomerStatus::Removed,
            code: None,
            reason,
        };
        self.publish(EventKind::CustomerRemoved, &change).await;
        Ok(())
    }
}
