//! Customers of the partners (REFERENCE §6), below `http`: the CLI and the dashboard call it.
//!
//! - `sync`: a partner's customer list read from Partner Center (with the partner's own
//!   App+User token for it) into `customers`; vanished ones become `gone`.
//! - `consent`: the configured grants (SAMVAULT_CUSTOMER_GRANTS) pushed into a customer
//!   tenant with applicationconsents, idempotently, and verified by a redemption at the
//!   customer's authority; removal by hand.
//! - `token`: customer-tenant access tokens for integrations (the token API).
//! - `scheduler`: inside `serve`, a sync after each consent and every
//!   SAMVAULT_CUSTOMER_SYNC_INTERVAL, pushes for new customers (SAMVAULT_CUSTOMER_AUTO_CONSENT)
//!   and retries of failed ones with backoff.
//!
//! Every push and removal is audited (`customer.consent`, `customer.remove`; `customer.sync`,
//! `customer.status`) and sent as a signed webhook event (`customer.*`).

pub mod consent;
pub mod scheduler;
pub mod sync;
pub mod token;

use std::sync::Arc;

use serde_json::Value;

use crate::broker::{Broker, BrokerError};
use crate::config::{Config, ConfigError, CustomerSettings, PARTNER_CENTER};
use crate::domain::{CustomerStatus, Resource, TenantId};
use crate::metrics::Metrics;
use crate::notify::{Event, EventKind, Notifier};
use crate::partner_center::{Budget, PartnerCenter, PcToken};
use crate::storage::{Db, audit, now};

/// Customer work of one process: syncs, pushes, removals. Cheap to clone.
#[derive(Clone)]
pub struct Customers {
    inner: Arc<Inner>,
}

struct Inner {
    db: Db,
    broker: Broker,
    pc: PartnerCenter,
    settings: CustomerSettings,
    notifier: Notifier,
    /// The configured grants in canonical form, as stored with each customer.
    grants_text: String,
}

impl std::fmt::Debug for Customers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Customers")
            .field("grants", &self.inner.grants_text)
            .finish_non_exhaustive()
    }
}

impl Customers {
    /// The CPV app's (`app_id`) customer work, its Partner Center calls paced by one budget.
    pub fn new(
        config: &Config,
        app_id: &str,
        broker: Broker,
        notifier: Notifier,
        metrics: Arc<Metrics>,
    ) -> Result<Self, ConfigError> {
        let db = broker.db().clone();
        let settings = config.customers.clone();
        let budget = Budget::new(app_id, &db);
        let pc = PartnerCenter::new(
            &settings.partner_center_url,
            app_id,
            config.keys.extra_roots.clone(),
            budget,
            metrics,
        )?;
        Ok(Self {
            inner: Arc::new(Inner {
                grants_text: settings.grants_text(),
                db,
                broker,
                pc,
                settings,
                notifier,
            }),
        })
    }

    pub fn db(&self) -> &Db {
        &self.inner.db
    }

    pub fn settings(&self) -> &CustomerSettings {
        &self.inner.settings
    }

    /// The configured grants in the canonical form stored with each consented customer.
    pub fn grants_text(&self) -> &str {
        &self.inner.grants_text
    }

    /// The partner's own App+User access token for Partner Center, through the broker
    /// (cached; a miss redeems the partner's grant under its lease, as any token request).
    async fn pc_token(&self, partner: &TenantId) -> Result<PcToken, BrokerError> {
        let resource = Resource::parse(PARTNER_CENTER).expect("static resource");
        let issued = self.inner.broker.access_token(partner, &resource).await?;
        Ok(issued.access_token.secret().clone())
    }

    /// Appends to the audit log; a failure is logged, never fails the work it records.
    async fn audit(&self, actor: &str, action: &str, partner: &TenantId, detail: Value) {
        let db = &self.inner.db;
        if let Err(e) =
            audit::append(db, actor, action, Some(partner.as_str()), detail, now()).await
        {
            tracing::error!(error = %e, action, tenant.id = %partner, "audit append failed");
        }
    }

    /// Sends a `customer.*` webhook event.
    async fn publish(&self, kind: EventKind, change: &StatusChange<'_>) {
        let event = Event::customer(
            kind,
            change.partner.as_str(),
            change.customer.as_str(),
            (change.from.map(CustomerStatus::as_str), change.to.as_str()),
            change.code,
            change.reason,
        );
        self.inner.notifier.publish(&event).await;
    }
}

/// A customer's status change, as audited and sent.
pub(crate) struct StatusChange<'a> {
    pub partner: &'a TenantId,
    pub customer: &'a TenantId,
    pub from: Option<CustomerStatus>,
    pub to: CustomerStatus,
    /// Partner Center's or Entra's code behind it.
    pub code: Option<&'a str>,
    pub reason: &'a str,
}

/// What a partner problem means for customer work, in the words a customer's reason uses.
fn partner_problem(e: &BrokerError) -> String {
    let what = match e {
        BrokerError::PartnerNotFound => "samvault holds no grant for this partner",
        BrokerError::ReconsentRequired { .. } => {
            "the partner's grant is dead (reconsent_required): an admin of the partner must consent again"
        }
        BrokerError::AppCredentialsInvalid { .. } => {
            "Entra ID refuses the CPV app's own credentials (see the app_credentials alarm)"
        }
        BrokerError::IdpUnavailable { .. } | BrokerError::IdpError { .. } => {
            "Entra ID did not issue the partner's token for now"
        }
        BrokerError::KeyUnavailable => "the key provider is unavailable",
        _ => "samvault could not open the partner's grant",
    };
    format!(
        "No Partner Center token for the partner ({}): {what}. samvault retries with backoff.",
        e.code()
    )
}
