//! The token broker: turns a partner's sealed refresh token into an access token for one
//! audience, with an in-memory cache and single-flight per partner.
//!
//! Write-back rule (SPEC §4): the refresh token Entra returns with every redemption is sealed
//! and committed as a new grant version *before* the access token is handed to anyone, so a
//! crash at any point leaves a usable refresh token in the database.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use crate::domain::{PartnerStatus, Resource, TenantId};
use crate::idp::errors::describe;
use crate::idp::{AccessClaims, IdpClient, IdpError, Outcome};
use crate::storage::partners::{self, StoredGrant, grant_context};
use crate::storage::{Db, StorageError, now};
use crate::vault::{Vault, VaultError};

/// Cached access tokens are served until this long before they expire.
const CACHE_MARGIN_SECS: i64 = 300;

/// An access token ready for an integration.
#[derive(Clone)]
pub struct IssuedToken {
    pub access_token: SecretString,
    pub expires_at: i64,
    pub mfa: bool,
    pub cached: bool,
}

impl std::fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedToken")
            .field("expires_at", &self.expires_at)
            .field("mfa", &self.mfa)
            .field("cached", &self.cached)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("partner not found")]
    PartnerNotFound,
    #[error("partner must consent again")]
    ReconsentRequired { code: Option<String> },
    #[error("resource not consented")]
    ResourceNotConsented { code: Option<u32> },
    #[error("the CPV app's credentials were rejected")]
    AppCredentialsInvalid { code: Option<u32> },
    #[error("identity provider unavailable")]
    IdpUnavailable { retry_after: Option<Duration> },
    #[error("identity provider error")]
    IdpError { code: Option<u32> },
    #[error("key provider unavailable")]
    KeyUnavailable,
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("vault: {0}")]
    Vault(VaultError),
}

/// The one global alarm: the CPV app's own credential is being refused by Entra.
#[derive(Clone, Debug)]
pub struct AppAlarm {
    pub code: Option<u32>,
    pub since: i64,
}

#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

struct Inner {
    db: Db,
    vault: Vault,
    idp: IdpClient,
    primary: Resource,
    cache: Mutex<HashMap<(TenantId, Resource), IssuedToken>>,
    partner_locks: Mutex<HashMap<TenantId, Arc<tokio::sync::Mutex<()>>>>,
    alarm: Mutex<Option<AppAlarm>>,
}

impl Broker {
    pub fn new(db: Db, vault: Vault, idp: IdpClient, primary: Resource) -> Self {
        Self {
            inner: Arc::new(Inner {
                db,
                vault,
                idp,
                primary,
                cache: Mutex::default(),
                partner_locks: Mutex::default(),
                alarm: Mutex::default(),
            }),
        }
    }

    pub fn alarm(&self) -> Option<AppAlarm> {
        self.inner.alarm.lock().expect("alarm lock").clone()
    }

    fn cached(&self, key: &(TenantId, Resource)) -> Option<IssuedToken> {
        let cache = self.inner.cache.lock().expect("cache lock");
        cache
            .get(key)
            .filter(|t| t.expires_at - CACHE_MARGIN_SECS > now())
            .map(|t| IssuedToken {
                cached: true,
                ..t.clone()
            })
    }

    fn partner_lock(&self, tenant: &TenantId) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.inner.partner_locks.lock().expect("locks lock");
        locks.entry(tenant.clone()).or_default().clone()
    }

    /// Drops every cached token of a partner (revocation, purge, re-consent).
    pub fn forget(&self, tenant: &TenantId) {
        self.inner
            .cache
            .lock()
            .expect("cache lock")
            .retain(|(t, _), _| t != tenant);
    }

    /// An access token for `resource` in `tenant`: from the cache, or by redeeming the
    /// partner's refresh token. Concurrent misses for one partner make one IdP call.
    pub async fn access_token(
        &self,
        tenant: &TenantId,
        resource: &Resource,
    ) -> Result<IssuedToken, BrokerError> {
        let key = (tenant.clone(), resource.clone());
        if let Some(token) = self.cached(&key) {
            return Ok(token);
        }
        let lock = self.partner_lock(tenant);
        let _guard = lock.lock().await;
        // Whoever held the lock before us may have filled the cache.
        if let Some(token) = self.cached(&key) {
            return Ok(token);
        }
        let token = self.redeem(tenant, resource, "refresh").await?;
        self.inner
            .cache
            .lock()
            .expect("cache lock")
            .insert(key, token.clone());
        Ok(token)
    }

    /// Redeems the partner's current refresh token and writes the new one back.
    /// Callers hold the partner's lock.
    async fn redeem(
        &self,
        tenant: &TenantId,
        resource: &Resource,
        source: &str,
    ) -> Result<IssuedToken, BrokerError> {
        let inner = &self.inner;
        let partner = partners::get(&inner.db, tenant)
            .await?
            .ok_or(BrokerError::PartnerNotFound)?;
        if !partner.status.is_usable() {
            return Err(BrokerError::ReconsentRequired {
                code: partner.status_code,
            });
        }
        let grant = partners::current_grant(&inner.db, tenant).await?.ok_or(
            BrokerError::ReconsentRequired {
                code: partner.status_code.clone(),
            },
        )?;
        let refresh_token = self.open(tenant, &grant).await?;
        let started = std::time::Instant::now();
        let result = inner
            .idp
            .redeem_refresh_token(tenant, &refresh_token, resource)
            .await;
        drop(refresh_token);
        let tokens = match result {
            Ok(tokens) => tokens,
            Err(error) => return Err(self.handle_failure(tenant, resource, error).await),
        };
        tracing::info!(tenant.id = %tenant, %resource, elapsed_ms = started.elapsed().as_millis() as u64, "refresh token redeemed");
        if let Some(new_rt) = &tokens.refresh_token {
            let version = grant.version + 1;
            let sealed = inner
                .vault
                .seal(
                    new_rt.expose_secret().as_bytes(),
                    &grant_context(tenant, version),
                )
                .await
                .map_err(vault_error)?;
            partners::record_refresh(
                &inner.db,
                tenant,
                &StoredGrant { version, sealed },
                source,
                now(),
            )
            .await?;
        }
        if partner.status == PartnerStatus::AtRisk {
            partners::set_status(
                &inner.db,
                tenant,
                PartnerStatus::Active,
                None,
                "refresh succeeded",
                now(),
            )
            .await?;
        }
        self.clear_alarm();
        let claims = AccessClaims::peek(tokens.access_token.expose_secret()).unwrap_or_default();
        Ok(IssuedToken {
            expires_at: now() + tokens.expires_in.as_secs() as i64,
            access_token: tokens.access_token,
            mfa: claims.mfa(),
            cached: false,
        })
    }

    async fn open(
        &self,
        tenant: &TenantId,
        grant: &StoredGrant,
    ) -> Result<SecretString, BrokerError> {
        let plain = self
            .inner
            .vault
            .open(&grant.sealed, &grant_context(tenant, grant.version))
            .await
            .map_err(vault_error)?;
        let text = std::str::from_utf8(plain.expose_secret())
            .map_err(|_| BrokerError::Vault(VaultError::Malformed("refresh token is not UTF-8")))?;
        Ok(SecretString::from(text.to_string()))
    }

    /// Applies SPEC §4's classification to a failed redemption.
    async fn handle_failure(
        &self,
        tenant: &TenantId,
        resource: &Resource,
        error: IdpError,
    ) -> BrokerError {
        let primary = resource == &self.inner.primary;
        let outcome = error.classify(primary);
        tracing::warn!(tenant.id = %tenant, %resource, error = %error, ?outcome, "refresh token redemption failed");
        match outcome {
            Outcome::ReconsentRequired { code } => {
                let code_text = code.map(|c| c.to_string());
                let info = describe(code.unwrap_or(0));
                let reason = format!("{} {}", info.meaning, info.action);
                if let Err(e) = partners::set_status(
                    &self.inner.db,
                    tenant,
                    PartnerStatus::ReconsentRequired,
                    code_text.as_deref(),
                    &reason,
                    now(),
                )
                .await
                {
                    return e.into();
                }
                self.forget(tenant);
                BrokerError::ReconsentRequired { code: code_text }
            }
            Outcome::ResourceNotConsented { code } => BrokerError::ResourceNotConsented { code },
            Outcome::AppCredentialsInvalid { code } => {
                let mut alarm = self.inner.alarm.lock().expect("alarm lock");
                if alarm.is_none() {
                    tracing::error!(code = ?code, "the CPV app's credentials are rejected by Entra ID");
                    *alarm = Some(AppAlarm { code, since: now() });
                }
                BrokerError::AppCredentialsInvalid { code }
            }
            Outcome::Transient { retry_after, .. } => BrokerError::IdpUnavailable { retry_after },
            Outcome::Unexpected { code } => BrokerError::IdpError { code },
        }
    }

    fn clear_alarm(&self) {
        let mut alarm = self.inner.alarm.lock().expect("alarm lock");
        if alarm.take().is_some() {
            tracing::info!("the CPV app's credentials are accepted again");
        }
    }
}

fn vault_error(e: VaultError) -> BrokerError {
    match e {
        VaultError::ProviderUnavailable(_) => BrokerError::KeyUnavailable,
        other => BrokerError::Vault(other),
    }
}
