//! Redemptions of a partner's grant at one of its customers' authorities (SPEC §6): what a
//! consent push is verified with. The new refresh token is written back before anything is
//! returned. Under the partner's mutex and lease when the IdP spends a refresh token at its
//! first use (`SAMVAULT_IDP_ROTATION=strict`); with Entra's rotation several run at once,
//! each write-back taking the next version when it commits, as customer tokens do. The
//! access token is not cached.

use super::{Broker, BrokerError, IssuedToken, Kept, Redemption, Source, issued_token};
use crate::domain::{Resource, TenantId};
use crate::idp::IdpError;
use crate::idp::errors::CustomerOutcome;
use crate::storage::now;

/// Why a redemption at a customer's authority gave no token.
#[derive(Debug, thiserror::Error)]
pub enum CustomerRedeemError {
    /// Entra refused for this customer only (`IdpError::classify_at_customer`).
    #[error("Entra ID refused in the customer tenant: AADSTS{code}")]
    Customer { code: u32 },
    /// The partner's failure, classified and applied exactly as on the partner's path.
    #[error(transparent)]
    Partner(#[from] BrokerError),
}

impl From<crate::storage::StorageError> for CustomerRedeemError {
    fn from(e: crate::storage::StorageError) -> Self {
        Self::Partner(e.into())
    }
}

impl Broker {
    /// Redeems `partner`'s grant at `customer`'s authority for `resource`; `in_line`: through
    /// the partner's single-flight.
    pub async fn redeem_at_customer(
        &self,
        partner: &TenantId,
        customer: &TenantId,
        resource: &Resource,
        in_line: bool,
    ) -> Result<IssuedToken, CustomerRedeemError> {
        if !in_line {
            let mut released = false;
            return self
                .redeem_customer_leased(partner, customer, resource, "", &mut released)
                .await;
        }
        let lock = self.partner_lock(partner);
        let _guard = lock.lock().await;
        let owner = self.wait_for_lease(partner).await?;
        let mut released = false;
        let result = self
            .redeem_customer_leased(partner, customer, resource, &owner, &mut released)
            .await;
        if !released {
            self.release(partner, &owner).await;
        }
        result
    }

    async fn redeem_customer_leased(
        &self,
        tenant: &TenantId,
        customer: &TenantId,
        resource: &Resource,
        owner: &str,
        released: &mut bool,
    ) -> Result<IssuedToken, CustomerRedeemError> {
        let grant = self.open_grant(tenant).await?;
        let (result, elapsed) = self.call_idp(customer, &grant, resource).await;
        let tokens = match result {
            Ok(tokens) => tokens,
            Err(error) => {
                if let Some(code) = customer_only(&error, tenant) {
                    tracing::info!(tenant.id = %tenant, customer.id = %customer, code, "redemption refused in the customer tenant");
                    return Err(CustomerRedeemError::Customer { code });
                }
                let e = self
                    .handle_failure(&grant.partner, resource, Source::Check, error, elapsed)
                    .await;
                return Err(e.into());
            }
        };
        let partner = grant.partner.clone();
        let redemption = Redemption {
            authority: customer,
            resource,
            source: Source::Check,
            owner,
        };
        *released = self
            .write_back(grant, &tokens, &redemption, elapsed)
            .await?
            == Kept::Stored;
        let token = issued_token(tokens, now());
        if let Err(e) = self
            .after_success(&partner, Source::Check, partner.failures)
            .await
        {
            tracing::warn!(tenant.id = %tenant, error = %e, "bookkeeping after a successful redemption failed");
        }
        Ok(token)
    }
}

/// The code of an Entra refusal that concerns the customer only (the one table of
/// `IdpError::classify_at_customer`, which the token path applies too), if it is one.
fn customer_only(error: &IdpError, partner: &TenantId) -> Option<u32> {
    match error.classify_at_customer(partner.as_str()) {
        CustomerOutcome::ConsentRequired { code }
        | CustomerOutcome::AccessDenied { code }
        | CustomerOutcome::Gone { code } => Some(code),
        CustomerOutcome::Partner => None,
    }
}
