//! The token broker: turns a partner's sealed refresh token into an access token for one
//! audience, with an in-memory cache and single-flight per partner.
//!
//! Write-back rule (REFERENCE §4): the refresh token Entra returns with every redemption is sealed
//! and committed as a new grant version *before* the access token is handed to anyone, so a
//! crash at any point leaves a usable refresh token in the database.

mod access_token;
pub mod customer;
pub mod request_log;

pub use access_token::AccessToken;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use crate::backoff::Backoff;
use crate::domain::{PartnerStatus, Resource, TenantId};
use crate::idp::errors::describe;
use crate::idp::{AccessClaims, IdpClient, IdpError, Outcome, TokenSet};
use crate::metrics::Metrics;
use crate::notify::{Event, Notifier};
use crate::storage::partners::{self, Partner, StoredGrant, WriteBack, grant_context};
use crate::storage::{Db, StorageError, now, rotation};
use crate::vault::{PreparedKey, Vault, VaultError};

/// Cached access tokens are served until this long before they expire.
const CACHE_MARGIN_SECS: i64 = 300;

/// A customer-tenant token's cache key: partner tenant, customer tenant, resource.
pub type CustomerKey = (TenantId, TenantId, Resource);

/// A cached token, marked as such, while it has more than [`CACHE_MARGIN_SECS`] to live.
fn still_fresh(token: Option<&IssuedToken>) -> Option<IssuedToken> {
    token
        .filter(|t| t.expires_at - CACHE_MARGIN_SECS > now())
        .map(|t| IssuedToken {
            cached: true,
            ..t.clone()
        })
}

/// An access token ready for an integration.
#[derive(Clone)]
pub struct IssuedToken {
    /// Shared with the cache: a cached hit copies a pointer, not the token.
    pub access_token: Arc<AccessToken>,
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

/// What an access check learnt from one fresh access token (its claims, not the token).
#[derive(Clone, Debug)]
pub struct ProbeResult {
    pub expires_at: i64,
    pub claims: AccessClaims,
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

impl BrokerError {
    /// The stable problem code integrations see for this error (REFERENCE §3.2).
    pub fn code(&self) -> &'static str {
        match self {
            Self::PartnerNotFound => "partner_not_found",
            Self::ReconsentRequired { .. } => "reconsent_required",
            Self::ResourceNotConsented { .. } => "resource_not_consented",
            Self::AppCredentialsInvalid { .. } => "app_credentials_invalid",
            Self::IdpUnavailable { .. } => "idp_unavailable",
            Self::IdpError { .. } => "idp_error",
            Self::KeyUnavailable => "key_provider_unavailable",
            Self::Storage(_) => "storage_unavailable",
            Self::Vault(_) => "internal_error",
        }
    }
}

/// The global alarm's name in the `alarms` table.
pub const APP_CREDENTIALS_ALARM: &str = "app_credentials";
/// Raised while Entra refuses the first configured app credential but a later one works
/// (an expired secret with `SAMVAULT_CLIENT_SECRET_NEXT` taking over): nothing is paused,
/// but someone has to finish rolling the credential.
pub const APP_CREDENTIAL_FALLBACK_ALARM: &str = "app_credential_fallback";

/// How long a lease on a partner lasts: longer than one IdP call can take (20 s timeout).
const LEASE_SECS: i64 = 30;
/// How long a token request waits for another replica's redemption of the same partner.
const LEASE_WAIT: Duration = Duration::from_secs(10);
/// How often a service looks for status changes made elsewhere (another replica, the CLI).
const STATUS_POLL: Duration = Duration::from_secs(1);

/// What a redemption was for: recorded with every attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The scheduler keeping an idle grant alive.
    Schedule,
    /// An operator or `samvault rotate`.
    Manual,
    /// An integration's token request that missed the cache.
    Token,
    /// An operator's access check from the dashboard (one redemption per resource).
    Check,
    /// An integration's customer-tenant token request that missed the cache: the partner's
    /// grant redeemed at a customer tenant's authority.
    Customer,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Schedule => "schedule",
            Self::Manual => "manual",
            Self::Token => "token",
            Self::Check => "check",
            Self::Customer => "customer",
        }
    }

    /// A redemption an integration's request asked for: its failures are answered to the
    /// caller, not counted against the grant's rotation schedule.
    fn on_request(self) -> bool {
        matches!(self, Self::Token | Self::Customer)
    }
}

/// A partner's current grant opened for one redemption: the refresh token in clear (in
/// memory only, wiped when dropped) and the next version's data key, already wrapped.
pub(crate) struct OpenedGrant {
    pub partner: Partner,
    refresh_token: SecretString,
    next_key: PreparedKey,
    opened: std::time::Instant,
}

/// Where and why a grant was redeemed, for the write-back.
pub(crate) struct Redemption<'a> {
    /// The tenant whose token endpoint redeemed it (the partner's, or a customer's).
    pub authority: &'a TenantId,
    pub resource: &'a Resource,
    pub source: Source,
    /// The lease the redeemer holds, released by the write-back; "" for none.
    pub owner: &'a str,
}

/// What became of a redemption's new refresh token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kept {
    /// Stored as the partner's current version (and the lease released with it).
    Stored,
    /// The IdP sent none (Entra always does).
    NoRefreshToken,
    /// Not stored: the partner was consented again meanwhile (see `WriteBack::Superseded`).
    Superseded,
}

/// The access token of a fresh redemption at `at`, as handed out.
pub(crate) fn issued_token(tokens: TokenSet, at: i64) -> IssuedToken {
    let claims = AccessClaims::peek(tokens.access_token.expose_secret()).unwrap_or_default();
    IssuedToken {
        expires_at: at + tokens.expires_in.as_secs() as i64,
        access_token: Arc::new(AccessToken::new(tokens.access_token)),
        mfa: claims.mfa(),
        cached: false,
    }
}

/// What the broker needs to know about policy.
#[derive(Clone, Debug)]
pub struct BrokerSettings {
    /// The resource consent is given for; scheduled rotations redeem for it.
    pub primary: Resource,
    /// Redeem a grant idle this long (SAMVAULT_ROTATE_AFTER).
    pub rotate_after: Duration,
    /// Flag grants whose horizon is nearer than this (SAMVAULT_EXPIRY_WARN).
    pub expiry_warn: Duration,
}

#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

struct Inner {
    db: Db,
    vault: Vault,
    idp: IdpClient,
    settings: BrokerSettings,
    notifier: Notifier,
    metrics: Arc<Metrics>,
    /// Names this process in lease owners, so a lease says which replica holds it.
    instance: String,
    cache: Mutex<HashMap<(TenantId, Resource), IssuedToken>>,
    /// Customer-tenant tokens, by partner, customer tenant and resource; dropped with the
    /// partner's own tokens.
    customer_cache: Mutex<HashMap<CustomerKey, IssuedToken>>,
    /// Whether the app-credential alarm may be raised (possibly by another replica).
    alarm_possible: AtomicBool,
    /// Whether this process raised the fallback alarm since it last cleared it.
    fallback_raised: AtomicBool,
    partner_locks: Mutex<HashMap<TenantId, Arc<tokio::sync::Mutex<()>>>>,
}

impl Broker {
    pub fn new(
        db: Db,
        vault: Vault,
        idp: IdpClient,
        settings: BrokerSettings,
        notifier: Notifier,
        metrics: Arc<Metrics>,
    ) -> Self {
        let instance = format!(
            "{}-{}",
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        Self {
            inner: Arc::new(Inner {
                db,
                vault,
                idp,
                settings,
                notifier,
                metrics,
                instance,
                cache: Mutex::default(),
                customer_cache: Mutex::default(),
                alarm_possible: AtomicBool::new(true),
                fallback_raised: AtomicBool::new(false),
                partner_locks: Mutex::default(),
            }),
        }
    }

    pub fn settings(&self) -> &BrokerSettings {
        &self.inner.settings
    }

    pub fn db(&self) -> &Db {
        &self.inner.db
    }

    /// Where rotations, IdP calls and reclaimed leases are counted.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    fn cached(&self, key: &(TenantId, Resource)) -> Option<IssuedToken> {
        let cache = self.inner.cache.lock().expect("cache lock");
        still_fresh(cache.get(key))
    }

    /// A cached customer-tenant token with more than the margin to live.
    pub(crate) fn cached_customer(&self, key: &CustomerKey) -> Option<IssuedToken> {
        let cache = self.inner.customer_cache.lock().expect("cache lock");
        still_fresh(cache.get(key))
    }

    /// Caches a fresh customer-tenant token for the next request.
    pub(crate) fn remember_customer(&self, key: CustomerKey, token: &IssuedToken) {
        let mut cache = self.inner.customer_cache.lock().expect("cache lock");
        cache.insert(key, token.clone());
    }

    /// Drops the cached tokens of one customer tenant of `partner` (its status changed).
    pub fn forget_customer(&self, partner: &TenantId, customer: &TenantId) {
        let mut cache = self.inner.customer_cache.lock().expect("cache lock");
        cache.retain(|(p, c, _), _| p != partner || c != customer);
    }

    pub(crate) fn partner_lock(&self, tenant: &TenantId) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.inner.partner_locks.lock().expect("locks lock");
        locks.entry(tenant.clone()).or_default().clone()
    }

    fn new_lease_owner(&self) -> String {
        format!("{}:{}", self.inner.instance, uuid::Uuid::new_v4().simple())
    }

    /// Watches status changes made by anyone — another replica's revocation, `samvault
    /// partners purge`, a rotation that found the grant dead — and drops the cached tokens of
    /// partners that may no longer be served, within [`STATUS_POLL`]. Without it a replica
    /// would keep serving a revoked partner's cached access token until it expired. Ends by
    /// itself when the broker is dropped.
    pub fn spawn_status_watch(&self) -> tokio::task::JoinHandle<()> {
        let inner = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut seen = None;
            loop {
                let Some(inner) = inner.upgrade() else { return };
                let broker = Broker { inner };
                // Nothing is cached before the service starts: begin at the newest change.
                let Some(after) = seen else {
                    seen = partners::last_status_change(&broker.inner.db).await.ok();
                    tokio::time::sleep(STATUS_POLL).await;
                    continue;
                };
                // On a database error keep the position and try again: cached tokens keep
                // serving through an outage by design.
                if let Ok(changes) = partners::status_changes_after(&broker.inner.db, after).await {
                    for change in changes {
                        seen = Some(change.id);
                        if !change.to_status.is_usable() {
                            broker.forget(&change.tenant_id);
                        }
                    }
                }
                drop(broker);
                tokio::time::sleep(STATUS_POLL).await;
            }
        })
    }

    /// Drops every cached token of a partner (revocation, purge, re-consent).
    pub fn forget(&self, tenant: &TenantId) {
        self.inner
            .cache
            .lock()
            .expect("cache lock")
            .retain(|(t, _), _| t != tenant);
        self.inner
            .customer_cache
            .lock()
            .expect("cache lock")
            .retain(|(t, _, _), _| t != tenant);
    }

    /// When the scheduler should next redeem a grant refreshed at `at`: `rotate_after` minus
    /// up to a tenth of it, so grants consented together do not all come due together.
    pub fn next_rotation(&self, at: i64) -> i64 {
        use rand::Rng;
        let after = self.inner.settings.rotate_after.as_secs() as i64;
        at + after - rand::rng().random_range(0..=after / 10)
    }

    /// An access token for `resource` in `tenant`: from the cache, or by redeeming the
    /// partner's refresh token. Concurrent misses for one partner make one IdP call, in this
    /// process (a mutex) and across replicas (the partner's lease).
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
        let owner = self.wait_for_lease(tenant).await?;
        self.redeem(tenant, resource, Source::Token, &owner).await
    }

    /// Redeems a partner's grant now for its primary resource (operators, `samvault rotate`).
    pub async fn rotate(
        &self,
        tenant: &TenantId,
        source: Source,
    ) -> Result<IssuedToken, BrokerError> {
        let lock = self.partner_lock(tenant);
        let _guard = lock.lock().await;
        let owner = self.wait_for_lease(tenant).await?;
        let primary = self.inner.settings.primary.clone();
        self.redeem(tenant, &primary, source, &owner).await
    }

    /// A live health probe for one resource: redeems the refresh token now, whatever the
    /// cache holds, under the same mutex and lease as every redemption, and writes the new
    /// refresh token back. Returns what the access token says (for display), never the token.
    pub async fn probe(
        &self,
        tenant: &TenantId,
        resource: &Resource,
    ) -> Result<ProbeResult, BrokerError> {
        let lock = self.partner_lock(tenant);
        let _guard = lock.lock().await;
        let owner = self.wait_for_lease(tenant).await?;
        let token = self.redeem(tenant, resource, Source::Check, &owner).await?;
        let claims = AccessClaims::peek(token.access_token.expose_secret()).unwrap_or_default();
        Ok(ProbeResult {
            expires_at: token.expires_at,
            claims,
        })
    }

    /// Revokes a partner: status `revoked`, every sealed grant crypto-shredded, cached access
    /// tokens of this process dropped. Holds the partner's mutex and lease throughout, so no
    /// redemption in flight can write a new grant version after the shredding. Returns how
    /// many sealed versions were shredded.
    pub async fn revoke(&self, tenant: &TenantId, reason: &str) -> Result<u64, BrokerError> {
        self.purge(tenant, PartnerStatus::Revoked, reason).await
    }

    /// Moves a partner to `status` (revoked, or reconsent_required for an emergency purge) and
    /// crypto-shreds every grant version, under the partner's lock and lease like a
    /// redemption; returns how many versions were shredded.
    pub async fn purge(
        &self,
        tenant: &TenantId,
        status: PartnerStatus,
        reason: &str,
    ) -> Result<u64, BrokerError> {
        let lock = self.partner_lock(tenant);
        let _guard = lock.lock().await;
        let owner = self.wait_for_lease(tenant).await?;
        let result = async {
            let partner = partners::get(&self.inner.db, tenant)
                .await?
                .ok_or(BrokerError::PartnerNotFound)?;
            // The status first: should the shredding fail, nothing redeems the grant anyway.
            self.change_status(&partner, status, None, reason).await?;
            let shredded = partners::shred_all(&self.inner.db, tenant, now()).await?;
            Ok(shredded)
        }
        .await;
        self.forget(tenant);
        self.release(tenant, &owner).await;
        result
    }

    /// The scheduler's path: it already leased `tenant` (as `owner`). If a token request of
    /// this process is redeeming the same partner right now, that redemption keeps the grant
    /// alive anyway: step aside (`None`) rather than wait.
    pub async fn rotate_leased(
        &self,
        tenant: &TenantId,
        owner: &str,
    ) -> Option<Result<IssuedToken, BrokerError>> {
        let lock = self.partner_lock(tenant);
        let Ok(_guard) = lock.try_lock() else {
            self.release(tenant, owner).await;
            return None;
        };
        let primary = self.inner.settings.primary.clone();
        let result = self.redeem(tenant, &primary, Source::Schedule, owner).await;
        if matches!(result, Err(BrokerError::KeyUnavailable)) {
            // Not this grant's fault, and not counted; without a pause the scheduler would
            // claim it again at once (it is still the most overdue) and spin.
            let retry_at = now() + KEY_PROVIDER_RETRY_SECS;
            if let Err(e) = rotation::postpone(&self.inner.db, tenant, retry_at).await {
                tracing::warn!(tenant.id = %tenant, error = %e, "cannot postpone a rotation");
            }
        }
        Some(result)
    }

    /// The scheduler saw the alarm raised (possibly by another replica).
    pub fn note_alarm(&self) {
        self.inner.alarm_possible.store(true, Ordering::Relaxed);
    }

    /// A fresh lease owner id for the scheduler's claims.
    pub fn lease_owner(&self) -> String {
        self.new_lease_owner()
    }

    /// The prefix of every lease owner this process writes.
    pub fn instance(&self) -> &str {
        &self.inner.instance
    }

    pub fn lease_secs(&self) -> i64 {
        LEASE_SECS
    }

    pub(crate) async fn wait_for_lease(&self, tenant: &TenantId) -> Result<String, BrokerError> {
        let owner = self.new_lease_owner();
        let deadline = tokio::time::Instant::now() + LEASE_WAIT;
        loop {
            if rotation::acquire_lease(&self.inner.db, tenant, &owner, now(), LEASE_SECS).await? {
                return Ok(owner);
            }
            // No row to lease: the partner does not exist (never consented, or purged).
            if partners::get(&self.inner.db, tenant).await?.is_none() {
                return Err(BrokerError::PartnerNotFound);
            }
            if tokio::time::Instant::now() >= deadline {
                // Another replica has been redeeming this partner for too long.
                return Err(BrokerError::IdpUnavailable {
                    retry_after: Some(Duration::from_secs(2)),
                });
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub(crate) async fn release(&self, tenant: &TenantId, owner: &str) {
        if let Err(e) = rotation::release_lease(&self.inner.db, tenant, owner).await {
            // The lease runs out by itself; nothing is lost.
            tracing::warn!(tenant.id = %tenant, error = %e, "lease release failed");
        }
    }

    /// Redeems the partner's current refresh token and writes the new one back. Callers hold
    /// the partner's mutex and its lease (as `owner`), which this releases whatever happens.
    async fn redeem(
        &self,
        tenant: &TenantId,
        resource: &Resource,
        source: Source,
        owner: &str,
    ) -> Result<IssuedToken, BrokerError> {
        let mut released = false;
        let result = self
            .redeem_leased(tenant, resource, source, owner, &mut released)
            .await;
        if !released {
            self.release(tenant, owner).await;
        }
        result
    }

    async fn redeem_leased(
        &self,
        tenant: &TenantId,
        resource: &Resource,
        source: Source,
        owner: &str,
        released: &mut bool,
    ) -> Result<IssuedToken, BrokerError> {
        let grant = self.open_grant(tenant).await?;
        let (result, elapsed) = self.call_idp(tenant, &grant, resource).await;
        let tokens = match result {
            Ok(tokens) => tokens,
            Err(error) => {
                return Err(self
                    .handle_failure(&grant.partner, resource, source, error, elapsed)
                    .await);
            }
        };
        let partner = grant.partner.clone();
        let redemption = Redemption {
            authority: tenant,
            resource,
            source,
            owner,
        };
        let kept = self
            .write_back(grant, &tokens, &redemption, elapsed)
            .await?;
        *released = kept == Kept::Stored;
        // The access token may leave now; bookkeeping failures below must not cost it.
        let token = issued_token(tokens, now());
        if kept != Kept::Superseded {
            self.remember(tenant, resource, &token);
        }
        if let Err(e) = self.after_success(&partner, source, partner.failures).await {
            tracing::warn!(tenant.id = %tenant, error = %e, "bookkeeping after a successful redemption failed");
        }
        Ok(token)
    }

    /// The partner's current grant opened for one redemption, if the partner may still be
    /// redeemed. The next version's data key is wrapped before the IdP sees the refresh
    /// token: a key provider that is down must fail the request here, not after the IdP
    /// rotated the token, when the new one could not be stored.
    pub(crate) async fn open_grant(&self, tenant: &TenantId) -> Result<OpenedGrant, BrokerError> {
        let opened = std::time::Instant::now();
        let (partner, grant) = self.usable_grant(tenant).await?;
        let refresh_token = self.open(tenant, &grant).await?;
        let next_key = self.inner.vault.prepare_key().await.map_err(vault_error)?;
        Ok(OpenedGrant {
            partner,
            refresh_token,
            next_key,
            opened,
        })
    }

    /// Redeems an opened grant at `authority`'s token endpoint (the partner's own tenant, or
    /// a customer tenant it administers) for `resource`; counted and timed.
    pub(crate) async fn call_idp(
        &self,
        authority: &TenantId,
        grant: &OpenedGrant,
        resource: &Resource,
    ) -> (Result<TokenSet, IdpError>, Duration) {
        let started = std::time::Instant::now();
        let result = self
            .inner
            .idp
            .redeem_refresh_token(authority, &grant.refresh_token, resource)
            .await;
        let elapsed = started.elapsed();
        let outcome = if result.is_ok() { "success" } else { "error" };
        self.inner
            .metrics
            .record_idp_call("refresh_token", outcome, elapsed.as_secs_f64());
        (result, elapsed)
    }

    /// The partner and its current sealed grant, if the partner may still be redeemed.
    async fn usable_grant(&self, tenant: &TenantId) -> Result<(Partner, StoredGrant), BrokerError> {
        let db = &self.inner.db;
        let partner = partners::get(db, tenant)
            .await?
            .ok_or(BrokerError::PartnerNotFound)?;
        if !partner.status.is_usable() {
            return Err(BrokerError::ReconsentRequired {
                code: partner.status_code,
            });
        }
        let grant =
            partners::current_grant(db, tenant)
                .await?
                .ok_or(BrokerError::ReconsentRequired {
                    code: partner.status_code.clone(),
                })?;
        Ok((partner, grant))
    }

    /// Stores the new refresh token as the partner's next version, releasing the lease
    /// `redemption.owner` holds in the same transaction (`Kept::Stored`), or records the
    /// attempt when the IdP sent none. A partner revoked, purged or consented again since
    /// `grant` was opened keeps what it has (`Kept::Superseded`); the access token may still
    /// go out only while the partner is usable.
    pub(crate) async fn write_back(
        &self,
        grant: OpenedGrant,
        tokens: &TokenSet,
        redemption: &Redemption<'_>,
        elapsed: Duration,
    ) -> Result<Kept, BrokerError> {
        let db = &self.inner.db;
        let tenant = &grant.partner.tenant_id;
        let source = redemption.source.as_str();
        let at = now();
        let Some(new_rt) = &tokens.refresh_token else {
            // Entra always returns a new refresh token; record the attempt all the same.
            let ms = elapsed.as_millis() as i64;
            rotation::record_attempt(db, tenant, at, source, "success", None, ms).await?;
            return Ok(Kept::NoRefreshToken);
        };
        let prepare_ms = grant.opened.elapsed().saturating_sub(elapsed).as_millis() as u64;
        let written = std::time::Instant::now();
        let attempt = partners::Attempt {
            source,
            duration_ms: elapsed.as_millis() as i64,
            lease_owner: redemption.owner,
        };
        let next_key = grant.next_key;
        let seal = |version| {
            next_key.seal(
                new_rt.expose_secret().as_bytes(),
                &grant_context(tenant, version),
            )
        };
        let consented_at = grant.partner.consented_at;
        let rotate_at = self.next_rotation(at);
        let stored =
            partners::record_redemption(db, tenant, consented_at, seal, &attempt, at, rotate_at)
                .await?;
        // Where the time of a redemption goes: database and vault before the call, the IdP,
        // and the write-back.
        tracing::info!(
            tenant.id = %tenant, authority = %redemption.authority, resource = %redemption.resource,
            source, prepare_ms, idp_ms = elapsed.as_millis() as u64,
            writeback_ms = written.elapsed().as_millis() as u64, "refresh token redeemed"
        );
        if stored == WriteBack::Superseded {
            tracing::info!(tenant.id = %tenant, "the partner changed during the redemption; its new refresh token is not kept");
            self.still_usable(tenant).await?;
            return Ok(Kept::Superseded);
        }
        Ok(Kept::Stored)
    }

    /// `Ok` while the partner may be served; else the error its state calls for.
    async fn still_usable(&self, tenant: &TenantId) -> Result<(), BrokerError> {
        match partners::get(&self.inner.db, tenant).await? {
            None => Err(BrokerError::PartnerNotFound),
            Some(p) if !p.status.is_usable() => Err(BrokerError::ReconsentRequired {
                code: p.status_code,
            }),
            Some(_) => Ok(()),
        }
    }

    /// Caches a fresh partner token for the next request.
    fn remember(&self, tenant: &TenantId, resource: &Resource, token: &IssuedToken) {
        self.inner
            .cache
            .lock()
            .expect("cache lock")
            .insert((tenant.clone(), resource.clone()), token.clone());
    }

    pub(crate) async fn after_success(
        &self,
        partner: &Partner,
        source: Source,
        failures_before: i64,
    ) -> Result<(), StorageError> {
        let db = &self.inner.db;
        let tenant = &partner.tenant_id;
        if !source.on_request() {
            self.inner.metrics.record_rotation("success");
        }
        if partner.status == PartnerStatus::AtRisk {
            self.change_status(
                partner,
                PartnerStatus::Active,
                None,
                "Refresh succeeded again.",
            )
            .await?;
        }
        if failures_before > 0 {
            self.publish(Event::recovered(tenant.as_str(), failures_before))
                .await;
        }
        // Only touch the alarms table when an alarm may be up (set at start-up, on raising,
        // and by the scheduler, which reads the table on every pass).
        if self.inner.alarm_possible.swap(false, Ordering::Relaxed) {
            if rotation::clear_alarm(db, APP_CREDENTIALS_ALARM).await? {
                tracing::info!("the CPV app's credentials are accepted again");
                self.publish(Event::app_credentials_recovered()).await;
            }
            if !self.inner.idp.using_fallback() {
                rotation::clear_alarm(db, APP_CREDENTIAL_FALLBACK_ALARM).await?;
            }
        }
        self.note_fallback().await
    }

    /// Raises the fallback alarm once when requests run on a later credential (the IdP
    /// client switched, in this redemption or in an earlier code redemption). A restart on
    /// the rolled configuration clears it at its first success.
    async fn note_fallback(&self) -> Result<(), StorageError> {
        let idp = &self.inner.idp;
        if idp.using_fallback() && !self.inner.fallback_raised.swap(true, Ordering::Relaxed) {
            let refused = idp.last_refusal().unwrap_or_default();
            let detail = format!(
                "{refused}. Requests succeed with the later credential; finish rolling: make it the first one (docs/RUNBOOK.md) and restart."
            );
            if rotation::raise_alarm(
                &self.inner.db,
                APP_CREDENTIAL_FALLBACK_ALARM,
                None,
                &detail,
                now(),
            )
            .await?
            {
                tracing::error!(credentials = %refused, "a CPV app credential is refused by Entra ID; a later one is in use");
            }
        }
        Ok(())
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

    /// Records a status change and tells the webhook; a no-op when nothing changes.
    async fn change_status(
        &self,
        partner: &Partner,
        to: PartnerStatus,
        code: Option<&str>,
        reason: &str,
    ) -> Result<(), StorageError> {
        let tenant = &partner.tenant_id;
        if let Some(from) =
            partners::set_status(&self.inner.db, tenant, to, code, reason, now()).await?
        {
            tracing::warn!(tenant.id = %tenant, from = from.as_str(), to = to.as_str(), code, "partner status changed");
            self.publish(Event::status_changed(
                tenant.as_str(),
                from.as_str(),
                to.as_str(),
                code,
                reason,
            ))
            .await;
        }
        Ok(())
    }

    async fn publish(&self, event: Event) {
        self.inner.notifier.publish(&event).await;
    }

    /// Applies REFERENCE §4's classification to a failed redemption.
    pub(crate) async fn handle_failure(
        &self,
        partner: &Partner,
        resource: &Resource,
        source: Source,
        error: IdpError,
        elapsed: Duration,
    ) -> BrokerError {
        let tenant = &partner.tenant_id;
        let primary = resource == &self.inner.settings.primary;
        let outcome = error.classify(primary);
        tracing::warn!(tenant.id = %tenant, %resource, source = source.as_str(), error = %error, ?outcome, "refresh token redemption failed");
        let (label, code) = match &outcome {
            Outcome::ReconsentRequired { code } => ("reconsent_required", *code),
            Outcome::ResourceNotConsented { code } => ("resource_not_consented", *code),
            Outcome::AppCredentialsInvalid { code } => ("app_credentials_invalid", *code),
            Outcome::Transient { code, .. } => ("transient", *code),
            Outcome::Unexpected { code } => ("unexpected", *code),
        };
        if !source.on_request() {
            self.inner.metrics.record_rotation(label);
        }
        let code_text = code.map(|c| c.to_string());
        match self
            .apply_failure(
                partner,
                source,
                &outcome,
                code_text.as_deref(),
                label,
                elapsed,
            )
            .await
        {
            Ok(()) => {}
            Err(e) => return e.into(),
        }
        match outcome {
            Outcome::ReconsentRequired { .. } => BrokerError::ReconsentRequired { code: code_text },
            Outcome::ResourceNotConsented { code } => BrokerError::ResourceNotConsented { code },
            Outcome::AppCredentialsInvalid { code } => BrokerError::AppCredentialsInvalid { code },
            Outcome::Transient { retry_after, .. } => BrokerError::IdpUnavailable { retry_after },
            Outcome::Unexpected { code } => BrokerError::IdpError { code },
        }
    }

    async fn apply_failure(
        &self,
        partner: &Partner,
        source: Source,
        outcome: &Outcome,
        code: Option<&str>,
        label: &str,
        elapsed: Duration,
    ) -> Result<(), StorageError> {
        let db = &self.inner.db;
        let tenant = &partner.tenant_id;
        let at = now();
        rotation::record_attempt(
            db,
            tenant,
            at,
            source.as_str(),
            label,
            code,
            elapsed.as_millis() as i64,
        )
        .await?;
        let info = describe(code.and_then(|c| c.parse().ok()).unwrap_or(0));
        match outcome {
            Outcome::ReconsentRequired { .. } => {
                let reason = format!("{} {}", info.meaning, info.action);
                self.change_status(partner, PartnerStatus::ReconsentRequired, code, &reason)
                    .await?;
                self.forget(tenant);
            }
            Outcome::ResourceNotConsented { .. } => {}
            Outcome::AppCredentialsInvalid { .. } => {
                // Which credentials were refused, by setting name and code: never a value.
                let refused = self
                    .inner
                    .idp
                    .last_refusal()
                    .map(|r| format!("{r}. "))
                    .unwrap_or_default();
                let detail = format!("{refused}{} {}", info.meaning, info.action);
                self.inner.alarm_possible.store(true, Ordering::Relaxed);
                if rotation::raise_alarm(db, APP_CREDENTIALS_ALARM, code, &detail, at).await? {
                    tracing::error!(code, "the CPV app's credentials are rejected by Entra ID");
                    self.publish(Event::app_credentials_alarm(code, &detail))
                        .await;
                }
                if source == Source::Schedule {
                    // Not the partner's fault: try it again when the app is fixed, uncounted.
                    rotation::postpone(db, tenant, at + APP_ALARM_RETRY_SECS).await?;
                }
            }
            Outcome::Transient { retry_after, .. } => {
                if !source.on_request() {
                    let failures = partner.failures + 1;
                    // Retry-After is honoured exactly; otherwise back off exponentially. But
                    // an answer that is not Entra's (a timeout, a gateway's page, a truncated
                    // 200) may have been lost after the IdP rotated the token: the first retry
                    // comes inside the rotation grace of IdPs that have one (30 s and more),
                    // while they still accept the stored token.
                    let delay = match (retry_after, code) {
                        (None, None) if failures == 1 => ANSWER_LOST_RETRY_SECS,
                        _ => whole_secs(GRANT_BACKOFF.after(failures, *retry_after)),
                    };
                    rotation::record_failure(db, tenant, at + delay).await?;
                }
                self.flag_if_expiring(partner, code).await?;
            }
            Outcome::Unexpected { .. } => {
                if !source.on_request() {
                    let failures = partner.failures + 1;
                    rotation::record_failure(db, tenant, at + backoff_secs(failures)).await?;
                }
                self.flag_if_expiring(partner, code).await?;
            }
        }
        Ok(())
    }

    /// A grant that cannot be refreshed is `at_risk` once its horizon is within the warning.
    async fn flag_if_expiring(
        &self,
        partner: &Partner,
        code: Option<&str>,
    ) -> Result<(), StorageError> {
        let warn = self.inner.settings.expiry_warn.as_secs() as i64;
        if partner.status == PartnerStatus::Active && partner.horizon() - now() < warn {
            let reason = "Refreshing keeps failing for a transient reason (Entra ID unavailable or throttling) and the 90-day expiry is near. samvault keeps retrying; if it persists, check Entra ID's status and samvault's connectivity.";
            self.change_status(partner, PartnerStatus::AtRisk, code, reason)
                .await?;
        }
        Ok(())
    }
}

/// How long a grant waits after its n-th consecutive transient failure: 1 min doubling to
/// 6 h, with ±20 % jitter so failing grants do not retry in lockstep.
const GRANT_BACKOFF: Backoff = Backoff::new(Duration::from_secs(60), 2)
    .capped_at(Duration::from_secs(6 * 3600))
    .with_jitter(0.2);

/// [`GRANT_BACKOFF`]'s wait after `failures` failures, in the database's whole seconds.
pub fn backoff_secs(failures: i64) -> i64 {
    whole_secs(GRANT_BACKOFF.delay(failures))
}

fn whole_secs(wait: Duration) -> i64 {
    wait.as_secs_f64().round() as i64
}

/// The first retry after a failure that may have been a lost answer: well inside a 30 s
/// rotation grace, with room for the scheduler's 5 s idle look.
const ANSWER_LOST_RETRY_SECS: i64 = 10;
/// How long a scheduled grant waits while the CPV app's own credential is rejected.
const APP_ALARM_RETRY_SECS: i64 = 300;
/// How long a scheduled grant waits while the key provider is unavailable.
const KEY_PROVIDER_RETRY_SECS: i64 = 30;

fn vault_error(e: VaultError) -> BrokerError {
    match e {
        VaultError::ProviderUnavailable(_) => BrokerError::KeyUnavailable,
        other => BrokerError::Vault(other),
    }
}

#[cfg(test)]
mod backoff_tests {
    use super::*;

    /// The schedule grants have always had: 1 min doubling to 6 h, each ±20 %.
    #[test]
    fn grants_back_off_from_a_minute_doubling_to_six_hours() {
        let nominal = |failures: i64| match failures {
            ..=1 => 60,
            2..=9 => 60 << (failures - 1),
            _ => 6 * 3600,
        };
        assert_eq!(
            (1..=10).map(nominal).collect::<Vec<i64>>(),
            [60, 120, 240, 480, 960, 1920, 3840, 7680, 15360, 21600]
        );
        for failures in [-1, 0, 1, 2, 5, 9, 10, 11, 20, 21, 64, i64::MAX] {
            let base = nominal(failures);
            let waits: Vec<i64> = (0..300).map(|_| backoff_secs(failures)).collect();
            let (low, high) = (base - base / 5, base + base / 5);
            assert!(
                waits.iter().all(|w| (low..=high).contains(w)),
                "{failures}: {waits:?}"
            );
            assert!(waits.iter().any(|w| *w < base), "spread below: {failures}");
            assert!(waits.iter().any(|w| *w > base), "spread above: {failures}");
        }
    }
}
