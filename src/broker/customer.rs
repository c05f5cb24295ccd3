//! Redemptions of a partner's grant at one of its customers' authorities (SPEC §6): what a
//! consent push is verified with. Like every redemption of the grant, under the partner's
//! mutex and lease, with the new refresh token written back before anything is returned.
//! The access token is not cached: the cache holds the partner's own tokens.

use std::time::Instant;

use secrecy::ExposeSecret;

use super::{Broker, BrokerError, IssuedToken, Source, vault_error};
use crate::domain::{Resource, TenantId};
use crate::idp::{AccessClaims, IdpError};
use crate::storage::{now, partners};

/// Entra's answers at a customer's authority that concern that customer only, never the
/// partner's grant: no delegated access (50020), the app not consented there (65001,
/// 500011, 70011), no such tenant (90002).
pub const CUSTOMER_ONLY_CODES: [u32; 5] = [50020, 65001, 500011, 70011, 90002];

/// Why a redemption at a customer's authority gave no token.
#[derive(Debug, thiserror::Error)]
pub enum CustomerRedeemError {
    /// Entra refused for this customer only (one of [`CUSTOMER_ONLY_CODES`]).
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
    /// Redeems `partner`'s grant at `customer`'s authority for `resource`.
    pub async fn redeem_at_customer(
        &self,
        partner: &TenantId,
        customer: &TenantId,
        resource: &Resource,
    ) -> Result<IssuedToken, CustomerRedeemError> {
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
        let (partner, grant) = self.usable_grant(tenant).await?;
        let refresh_token = self.open(tenant, &grant).await?;
        let next_key = self.inner.vault.prepare_key().await.map_err(vault_error)?;
        let started = Instant::now();
        let result = self
            .inner
            .idp
            .redeem_refresh_token(customer, &refresh_token, resource)
            .await;
        drop(refresh_token);
        let elapsed = started.elapsed();
        let outcome = if result.is_ok() { "success" } else { "error" };
        self.inner
            .metrics
            .record_idp_call("refresh_token", outcome, elapsed.as_secs_f64());
        let tokens = match result {
            Ok(tokens) => tokens,
            Err(error) => {
                if let Some(code) = customer_only(&error) {
                    tracing::info!(tenant.id = %tenant, customer.id = %customer, code, "redemption refused in the customer tenant");
                    return Err(CustomerRedeemError::Customer { code });
                }
                let source = Source::Check;
                let e = self
                    .handle_failure(&partner, resource, source, error, elapsed)
                    .await;
                return Err(e.into());
            }
        };
        let at = now();
        let attempt = partners::Attempt {
            source: Source::Check.as_str(),
            duration_ms: elapsed.as_millis() as i64,
            lease_owner: owner,
        };
        *released = self
            .write_back(tenant, grant.version + 1, next_key, &tokens, &attempt, at)
            .await?;
        let claims = AccessClaims::peek(tokens.access_token.expose_secret()).unwrap_or_default();
        let token = IssuedToken {
            expires_at: at + tokens.expires_in.as_secs() as i64,
            mfa: claims.mfa(),
            access_token: std::sync::Arc::new(tokens.access_token),
            cached: false,
        };
        if let Err(e) = self
            .after_success(&partner, Source::Check, partner.failures)
            .await
        {
            tracing::warn!(tenant.id = %tenant, error = %e, "bookkeeping after a successful redemption failed");
        }
        Ok(token)
    }
}

/// The customer-only code of an Entra refusal, if it is one.
fn customer_only(error: &IdpError) -> Option<u32> {
    match error {
        IdpError::Entra { .. } => error.code().filter(|c| CUSTOMER_ONLY_CODES.contains(c)),
        _ => None,
    }
}
