//! Customer-tenant tokens (REFERENCE §6): a partner's grant redeemed at the authority of one of
//! its customer tenants, for one resource. The token API, and anything else that needs one,
//! calls [`CustomerTokens::access_token`].
//!
//! - Checks, in order: the partner is known (404) and usable (its problems as on the partner
//!   path), the customer is one of its customers and not `gone` or `removed` (404
//!   `customer_not_found`). A customer's row is trusted for [`TRUST`] after it was read, so
//!   a cached token costs no database round trip; a status changed elsewhere (a sync, a
//!   removal, another replica) is seen within that time.
//! - Access tokens are cached per (partner, customer tenant, resource) in the broker, which
//!   drops them with the partner's own when the partner can no longer be served.
//! - Every redemption returns a new refresh token of the partner's grant; it is stored as the
//!   partner's next version before the access token leaves (the broker's write-back).
//! - Concurrency (`SAMVAULT_IDP_ROTATION`): with `entra`, where a refresh token stays valid
//!   after use, cold requests for different customers of one partner redeem at once, one
//!   flight per (partner, customer); each write-back takes the next version when it commits.
//!   With `strict` every redemption goes through the partner's single-flight (mutex and
//!   lease), as the partner's own do: one at a time, each from the newest refresh token.
//! - Failures are classified per customer ([`crate::idp::errors::CustomerOutcome`]): the
//!   customer's status changes and the partner is untouched, unless Entra blames the
//!   partner's grant, which is then handled exactly as on the partner path.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::broker::{
    Broker, BrokerError, CustomerKey, IssuedToken, Kept, Redemption, Source, issued_token,
};
use crate::config::IdpRotation as Rotation;
use crate::domain::{CustomerStatus, Resource, TenantId};
use crate::idp::IdpError;
use crate::idp::errors::{CustomerOutcome, customer_reason};
use crate::notify::{Event, EventKind, Notifier};
use crate::storage::partners::Partner;
use crate::storage::{StorageError, audit, customers, now, partners};

/// How long a customer's status read from the database is trusted.
pub const TRUST: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum CustomerTokenError {
    /// A problem of the partner or of samvault, answered as on the partner path.
    #[error(transparent)]
    Partner(#[from] BrokerError),
    /// Not a customer of this partner, or `gone` / `removed` (the status, if known).
    #[error("customer not found")]
    NotFound { status: Option<CustomerStatus> },
    /// The CPV app is not consented in the customer tenant for this resource.
    #[error("the app is not consented in the customer tenant")]
    ConsentRequired { code: u32 },
    /// The partner's users may not act in the customer tenant.
    #[error("no delegated access to the customer tenant")]
    AccessDenied { code: u32 },
}

impl From<StorageError> for CustomerTokenError {
    fn from(e: StorageError) -> Self {
        Self::Partner(BrokerError::Storage(e))
    }
}

impl CustomerTokenError {
    /// The stable problem code (REFERENCE §6).
    pub fn code(&self) -> &'static str {
        match self {
            Self::Partner(e) => e.code(),
            Self::NotFound { .. } => "customer_not_found",
            Self::ConsentRequired { .. } => "customer_consent_required",
            Self::AccessDenied { .. } => "customer_access_denied",
        }
    }
}

type Pair = (TenantId, TenantId);

/// A customer's status as last read, and when.
#[derive(Clone, Copy)]
struct Known {
    status: CustomerStatus,
    read: Instant,
}

/// Customer-tenant tokens for every partner. Cheap to clone.
#[derive(Clone)]
pub struct CustomerTokens(Arc<Inner>);

struct Inner {
    broker: Broker,
    notifier: Notifier,
    rotation: Rotation,
    known: Mutex<HashMap<Pair, Known>>,
    /// One redemption at a time per (partner, customer) under `Rotation::Entra`.
    flights: Mutex<HashMap<Pair, Arc<tokio::sync::Mutex<()>>>>,
}

impl CustomerTokens {
    pub fn new(broker: Broker, notifier: Notifier, rotation: Rotation) -> Self {
        Self(Arc::new(Inner {
            broker,
            notifier,
            rotation,
            known: Mutex::default(),
            flights: Mutex::default(),
        }))
    }

    pub fn rotation(&self) -> Rotation {
        self.0.rotation
    }

    /// An access token for `resource` in `customer`, a customer tenant of `partner`: from the
    /// cache, or by redeeming the partner's grant at the customer's authority. Counted in
    /// `samvault_customer_tokens_total`; `client_id` (the integration's, audited as
    /// `client:ID`) is named in the audit of the customer status changes the request finds.
    pub async fn access_token(
        &self,
        partner: &TenantId,
        customer: &TenantId,
        resource: &Resource,
        client_id: &str,
    ) -> Result<IssuedToken, CustomerTokenError> {
        let asked = Asked {
            key: (partner.clone(), customer.clone(), resource.clone()),
            client_id,
        };
        let result = self.issue(&asked).await;
        let outcome = result
            .as_ref()
            .map_or_else(CustomerTokenError::code, |_| "issued");
        self.0.broker.metrics().record_customer_token(outcome);
        result
    }

    async fn issue(&self, asked: &Asked<'_>) -> Result<IssuedToken, CustomerTokenError> {
        let (partner, customer, _) = &asked.key;
        let status = self.customer_status(partner, customer).await?;
        if let Some(token) = self.0.broker.cached_customer(&asked.key) {
            return Ok(token);
        }
        match self.0.rotation {
            Rotation::Entra => self.redeem_overlapping(asked, status).await,
            Rotation::Strict => self.redeem_in_line(asked, status).await,
        }
    }

    /// The customer's status if it may be served; otherwise the refusal, the partner's
    /// problems first.
    async fn customer_status(
        &self,
        partner: &TenantId,
        customer: &TenantId,
    ) -> Result<CustomerStatus, CustomerTokenError> {
        let pair = (partner.clone(), customer.clone());
        let trusted = {
            let known = self.0.known.lock().expect("known lock");
            known
                .get(&pair)
                .filter(|k| k.read.elapsed() < TRUST)
                .copied()
        };
        let status = match trusted {
            Some(known) => Some(known.status),
            None => {
                let db = self.0.broker.db();
                let row = customers::get(db, partner, customer).await?;
                let status = row.map(|r| r.status);
                if let Some(status) = status {
                    self.note(&pair, status);
                }
                status
            }
        };
        match status {
            Some(CustomerStatus::Gone | CustomerStatus::Removed) | None => {
                self.partner_problem(partner).await?;
                Err(CustomerTokenError::NotFound { status })
            }
            Some(status) => Ok(status),
        }
    }

    /// The partner's own problem (unknown, or no longer usable), if it has one.
    async fn partner_problem(&self, partner: &TenantId) -> Result<(), BrokerError> {
        match partners::get(self.0.broker.db(), partner).await? {
            None => Err(BrokerError::PartnerNotFound),
            Some(p) if !p.status.is_usable() => Err(BrokerError::ReconsentRequired {
                code: p.status_code,
            }),
            Some(_) => Ok(()),
        }
    }

    fn note(&self, pair: &Pair, status: CustomerStatus) {
        let known = Known {
            status,
            read: Instant::now(),
        };
        self.0
            .known
            .lock()
            .expect("known lock")
            .insert(pair.clone(), known);
    }

    /// `Rotation::Entra`: one flight per (partner, customer), none across customers.
    async fn redeem_overlapping(
        &self,
        asked: &Asked<'_>,
        status: CustomerStatus,
    ) -> Result<IssuedToken, CustomerTokenError> {
        let key = &asked.key;
        let flight = {
            let mut flights = self.0.flights.lock().expect("flights lock");
            let pair = (key.0.clone(), key.1.clone());
            flights.entry(pair).or_default().clone()
        };
        let _guard = flight.lock().await;
        // Whoever held the flight before us may have filled the cache.
        if let Some(token) = self.0.broker.cached_customer(key) {
            return Ok(token);
        }
        let mut released = false;
        self.redeem(asked, status, "", &mut released).await
    }

    /// `Rotation::Strict`: through the partner's single-flight, as its own redemptions.
    async fn redeem_in_line(
        &self,
        asked: &Asked<'_>,
        status: CustomerStatus,
    ) -> Result<IssuedToken, CustomerTokenError> {
        let (broker, key) = (&self.0.broker, &asked.key);
        let lock = broker.partner_lock(&key.0);
        let _guard = lock.lock().await;
        if let Some(token) = broker.cached_customer(key) {
            return Ok(token);
        }
        let owner = broker.wait_for_lease(&key.0).await?;
        let mut released = false;
        let result = self.redeem(asked, status, &owner, &mut released).await;
        if !released {
            broker.release(&key.0, &owner).await;
        }
        result
    }

    /// Redeems the partner's grant at the customer's authority and writes the new refresh
    /// token back (releasing `owner`'s lease with it, if any: `released`).
    async fn redeem(
        &self,
        asked: &Asked<'_>,
        status: CustomerStatus,
        owner: &str,
        released: &mut bool,
    ) -> Result<IssuedToken, CustomerTokenError> {
        let (broker, key) = (&self.0.broker, &asked.key);
        let (partner, customer, resource) = key;
        let grant = broker.open_grant(partner).await?;
        let (result, elapsed) = broker.call_idp(customer, &grant, resource).await;
        let tokens = match result {
            Ok(tokens) => tokens,
            Err(error) => {
                let partner = grant.partner.clone();
                return Err(self.failed(&partner, asked, error, elapsed).await);
            }
        };
        let partner_row = grant.partner.clone();
        let redemption = Redemption {
            authority: customer,
            resource,
            source: Source::Customer,
            owner,
        };
        let kept = broker
            .write_back(grant, &tokens, &redemption, elapsed)
            .await?;
        *released = kept == Kept::Stored;
        // The access token may leave now; bookkeeping failures below must not cost it.
        let token = issued_token(tokens, now());
        if kept != Kept::Superseded {
            broker.remember_customer(key.clone(), &token);
        }
        self.succeeded(&partner_row, asked, status).await;
        Ok(token)
    }

    async fn succeeded(&self, partner: &Partner, asked: &Asked<'_>, status: CustomerStatus) {
        let (broker, key) = (&self.0.broker, &asked.key);
        let failures = partner.failures;
        if let Err(e) = broker
            .after_success(partner, Source::Customer, failures)
            .await
        {
            tracing::warn!(tenant.id = %key.0, error = %e, "bookkeeping after a successful redemption failed");
        }
        if status != CustomerStatus::Consented {
            let change = (CustomerStatus::Consented, None);
            if let Err(e) = self.change(asked, change, None).await {
                tracing::warn!(tenant.id = %key.0, customer.id = %key.1, error = %e, "customer status not recorded");
            }
        }
    }

    /// Applies the classification of a failed redemption at the customer's authority.
    async fn failed(
        &self,
        partner: &Partner,
        asked: &Asked<'_>,
        error: IdpError,
        elapsed: Duration,
    ) -> CustomerTokenError {
        let (tenant, customer, resource) = &asked.key;
        let outcome = error.classify_at_customer(tenant.as_str());
        tracing::warn!(tenant.id = %tenant, customer.id = %customer, %resource, error = %error, ?outcome, "customer token redemption failed");
        let (status, refusal) = match outcome {
            CustomerOutcome::Partner => {
                let broker = &self.0.broker;
                let source = Source::Customer;
                let e = broker
                    .handle_failure(partner, resource, source, error, elapsed)
                    .await;
                return e.into();
            }
            CustomerOutcome::ConsentRequired { code } => (
                (CustomerStatus::Unconsented, code),
                CustomerTokenError::ConsentRequired { code },
            ),
            CustomerOutcome::AccessDenied { code } => (
                (CustomerStatus::AccessDenied, code),
                CustomerTokenError::AccessDenied { code },
            ),
            CustomerOutcome::Gone { code } => (
                (CustomerStatus::Gone, code),
                CustomerTokenError::NotFound {
                    status: Some(CustomerStatus::Gone),
                },
            ),
        };
        let reason = customer_reason(status.1);
        let change = (status.0, Some(status.1));
        if let Err(e) = self.change(asked, change, Some(&reason)).await {
            tracing::warn!(tenant.id = %tenant, customer.id = %customer, error = %e, "customer status not recorded");
        }
        refusal
    }

    /// Records a customer's new status (`to` and the AADSTS code behind it; audited and
    /// sent as `customer.status_changed` when it changed), drops its cached tokens unless it
    /// may still be served, and trusts the new status from now.
    async fn change(
        &self,
        asked: &Asked<'_>,
        (to, code): (CustomerStatus, Option<u32>),
        reason: Option<&str>,
    ) -> Result<(), StorageError> {
        let (partner, customer, _) = &asked.key;
        let db = self.0.broker.db();
        let at = now();
        let from = customers::set_status(db, partner, customer, to, reason, at).await?;
        if to != CustomerStatus::Consented {
            self.0.broker.forget_customer(partner, customer);
        }
        self.note(&(partner.clone(), customer.clone()), to);
        let Some(from) = from else { return Ok(()) };
        tracing::warn!(tenant.id = %partner, customer.id = %customer, from = from.as_str(), to = to.as_str(), code, "customer status changed");
        let detail = serde_json::json!({
            "customer_tenant_id": customer.as_str(), "from": from.as_str(),
            "to": to.as_str(), "code": code, "reason": reason,
        });
        let tenant = Some(partner.as_str());
        let actor = format!("client:{}", asked.client_id);
        audit::append(db, &actor, "customer.status", tenant, detail, at).await?;
        let code = code.map(|c| c.to_string());
        let event = Event::customer(
            EventKind::CustomerStatusChanged,
            partner.as_str(),
            customer.as_str(),
            (Some(from.as_str()), to.as_str()),
            code.as_deref(),
            reason.unwrap_or("A token was issued in this customer tenant."),
        );
        self.0.notifier.publish(&event).await;
        Ok(())
    }
}

/// One request: the cache key (partner, customer tenant, resource) and the client that asked.
struct Asked<'a> {
    key: CustomerKey,
    client_id: &'a str,
}
