//! Entra-compatible dev IdP: an in-process, in-memory simulator of Microsoft
//! Entra ID's OAuth 2.0 / OIDC wire protocol (REFERENCE §5.1).
//!
//! It exists so that the demo, local development and the test-suite exercise
//! the same HTTP paths, parameters, JSON shapes and AADSTS codes samvault meets
//! in production: pointing `SAMVAULT_AUTHORITY` at it is the only change.
//!
//! - `directory`: seeded tenants, users, customers and the CPV app; TOML loading;
//!   `--tenants N`, `--customers M`.
//! - `grants`: codes, refresh tokens, consents, `/_sim` overrides, counters, faults.
//! - `customers`: customer tenants, their delegated-admin relationship and CPV consents.
//! - `partner_center`: the Partner Center stand-in (`/v1/customers...`, REFERENCE §6), with
//!   `limiter` (50 requests/s per application id).
//! - `tokens`: JWT claims, opaque codes and refresh tokens.
//! - `keys`: the RS256 signing keys, their JWKS and their rollover (`/_sim/keys`).
//! - `errors`: Entra's error bodies and the AADSTS catalogue.
//! - `client_auth`: client secrets and certificate client assertions at the token endpoint.
//! - `clock`: the simulated clock every expiry is judged on.
//! - `discovery`, `authorize`, `token`, `sim`, `sim_customers`: the HTTP surface.
//!
//! A directory file (`directory_file`) looks like:
//!
//! ```toml
//! [[apps]]                       # optional: the demo CPV app is always registered
//! client_id = "..."
//! client_secret = "..."
//! name = "My CPV"
//! permissions = ["https://api.partnercenter.microsoft.com/user_impersonation"]
//!
//! [[tenants]]
//! id = "6f3a2a5e-0c1d-4a3b-8f4e-1c2d3e4f5a01"
//! name = "Contoso"
//! domain = "contoso.example"
//! mfa = "enforced"               # or "federated", "not_enforced", true, false
//! [[tenants.users]]
//! upn = "jane@contoso.example"
//! name = "Jane Doe"
//! role = "Admin Agent"           # "Sales Agent", "Global Admin", ...
//!
//! [[customers]]                  # a customer tenant of a partner above
//! id = "7b1e0c3a-5d2f-4c8e-9a6b-00000000c001"
//! name = "Adatum"
//! domain = "adatum.example"
//! partner = "6f3a2a5e-0c1d-4a3b-8f4e-1c2d3e4f5a01"
//! relationship = "active"        # or "ended" (AADSTS50020)
//! ```

// Handlers return early with a finished `Response` as the error value; boxing
// it would only add noise.
#![allow(clippy::result_large_err)]

mod authorize;
mod client_auth;
mod clock;
mod customers;
mod directory;
mod discovery;
mod errors;
mod grants;
mod keys;
mod limiter;
mod partner_center;
mod sim;
mod sim_customers;
mod token;
pub(crate) mod tokens;

use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use axum::Router;
use axum::routing::{get, post};
use axum::serve::ListenerExt;

pub use directory::{MfaPolicy, generated_customer_id, generated_tenant_id};

use directory::{Directory, Tenant};
use errors::EntraError;
use grants::SimState;
use keys::{KeyRing, SigningKey};

/// Client id of the CPV app registered in the demo directory (a simulator fixture).
pub const DEMO_CLIENT_ID: &str = "5a7e3c1d-0000-4000-8000-00000000c0de";
/// Its secret; shown here because the simulator is a test tool, nothing more.
pub const DEMO_CLIENT_SECRET: &str = "samvault-demo-secret";
/// Display name of the demo CPV app, shown on the consent page.
pub const DEMO_APP_NAME: &str = "samvault demo CPV app";
/// Contoso: MFA enforced (Entra MFA).
pub const CONTOSO: &str = "6f3a2a5e-0c1d-4a3b-8f4e-1c2d3e4f5a01";
/// Wingtip: MFA enforced (federated MFA).
pub const WINGTIP: &str = "6f3a2a5e-0c1d-4a3b-8f4e-1c2d3e4f5a02";
/// Fabrikam: MFA not enforced.
pub const FABRIKAM: &str = "6f3a2a5e-0c1d-4a3b-8f4e-1c2d3e4f5a03";
/// Contoso's customer Adatum (adatum.example).
pub const ADATUM: &str = "7b1e0c3a-5d2f-4c8e-9a6b-00000000c001";
/// Contoso's customer Northwind (northwind.example).
pub const NORTHWIND: &str = "7b1e0c3a-5d2f-4c8e-9a6b-00000000c002";
/// Contoso's customer Tailspin (tailspin.example): the delegated-admin relationship ended.
pub const TAILSPIN: &str = "7b1e0c3a-5d2f-4c8e-9a6b-00000000c003";
/// Wingtip's customer Litware (litware.example).
pub const LITWARE: &str = "7b1e0c3a-5d2f-4c8e-9a6b-00000000c004";
/// The Partner Center API's resource (audience of the tokens its stand-in accepts).
pub const PARTNER_CENTER: &str = "https://api.partnercenter.microsoft.com";

#[derive(Debug, Clone, Default)]
pub struct DevIdpOptions {
    /// `--tenants N`: adds N generated tenants (REFERENCE §5.2) to the directory.
    pub generated_tenants: u32,
    /// `--customers M`: each generated tenant gets M customers (REFERENCE §6).
    pub generated_customers: u32,
    /// `--pc-latency-ms`: added to every Partner Center call, for benchmarks.
    pub partner_center_latency_ms: u64,
    /// `--strict-rotation`: a refresh token dies at its first use.
    pub strict_rotation: bool,
    /// `--rotation-grace SECS` (with strict rotation): a spent refresh token may be redeemed
    /// again for this long, as long as its successor has not been used (Okta's grace period,
    /// Auth0's reuse interval, Cognito's RetryGracePeriodSeconds).
    pub rotation_grace_secs: u64,
    /// A TOML directory to use instead of the demo one.
    pub directory_file: Option<std::path::PathBuf>,
    /// Added to every token call, for benchmarks; sleeps without blocking other calls.
    pub token_latency_ms: u64,
    /// `--client-cert`: PEM certificates registered on the demo CPV app, whose keys may
    /// sign its client assertions.
    pub client_certs: Vec<std::path::PathBuf>,
    /// `--tls-cert` and `--tls-key`: serve over HTTPS, as Entra ID only does.
    pub tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

/// The simulator. Cheap to clone: all state is behind one `Arc`.
#[derive(Clone)]
pub struct DevIdp {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for DevIdp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevIdp")
            .field("opts", &self.inner.opts)
            .field("tenants", &self.inner.directory.tenants().len())
            .finish_non_exhaustive()
    }
}

struct Inner {
    opts: DevIdpOptions,
    directory: Directory,
    /// The keys the JWKS lists and the one that signs; `/_sim/keys/rotate` rolls them.
    keys: RwLock<KeyRing>,
    /// What `/_sim/reset` goes back to.
    initial_keys: KeyRing,
    clock: clock::SimClock,
    state: Mutex<SimState>,
    /// The Partner Center stand-in's rate limit and injected faults: their own lock, so a
    /// throttled burst never waits on token calls.
    partner_center: Mutex<partner_center::PartnerCenterState>,
}

impl DevIdp {
    /// Builds the directory and generates the signing key (CPU-bound: call it
    /// from `spawn_blocking` inside a runtime if start-up latency matters).
    pub fn new(opts: DevIdpOptions) -> anyhow::Result<DevIdp> {
        let mut directory = match &opts.directory_file {
            Some(path) => Directory::from_toml_file(path)?,
            None => Directory::demo(),
        };
        directory.add_generated(opts.generated_tenants)?;
        directory.add_generated_customers(opts.generated_tenants, opts.generated_customers)?;
        for path in &opts.client_certs {
            let certificate = client_auth::RegisteredCertificate::from_pem_file(path)?;
            directory.register_certificate(DEMO_CLIENT_ID, certificate)?;
        }
        let state = Mutex::new(SimState::new(&directory));
        let keys = KeyRing::initial()?;
        Ok(DevIdp {
            inner: Arc::new(Inner {
                keys: RwLock::new(keys.clone()),
                initial_keys: keys,
                opts,
                directory,
                clock: clock::SimClock::default(),
                state,
                partner_center: Mutex::default(),
            }),
        })
    }

    /// The router; `base_url` like "http://127.0.0.1:8081" is used for issuer/endpoint URLs.
    pub fn router(&self, base_url: &str) -> Router {
        let st = AppState {
            idp: self.clone(),
            base: Arc::from(base_url.trim_end_matches('/')),
        };
        Router::new()
            .route(
                "/{tenant}/v2.0/.well-known/openid-configuration",
                get(discovery::openid_configuration_v2),
            )
            .route(
                "/{tenant}/.well-known/openid-configuration",
                get(discovery::openid_configuration_v1),
            )
            .route("/{tenant}/discovery/v2.0/keys", get(discovery::keys_v2))
            .route("/{tenant}/discovery/keys", get(discovery::keys_v1))
            .route(
                "/{tenant}/oauth2/v2.0/authorize",
                get(authorize::get_v2).post(authorize::post_v2),
            )
            .route(
                "/{tenant}/oauth2/authorize",
                get(authorize::get_v1).post(authorize::post_v1),
            )
            .route(
                "/{tenant}/oauth2/v2.0/token",
                post(token::token_v2).get(token::token_get),
            )
            .route(
                "/{tenant}/oauth2/token",
                post(token::token_v1).get(token::token_get),
            )
            .route("/{tenant}/oauth2/v2.0/logout", get(authorize::logout))
            .route("/{tenant}/oauth2/logout", get(authorize::logout))
            .route("/error", get(discovery::error_page))
            .nest("/v1", partner_center::router())
            .nest("/_sim", sim::router().merge(sim_customers::router()))
            .with_state(st)
    }

    /// The simulator's current time (wall clock plus `/_sim/clock/advance`).
    pub fn now(&self) -> time::OffsetDateTime {
        self.inner.clock.now()
    }

    /// The key that signs tokens now.
    fn signing_key(&self) -> Arc<SigningKey> {
        self.inner
            .keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .signing()
    }

    /// A snapshot of the key ring (cheap: keys are shared).
    fn key_ring(&self) -> KeyRing {
        self.inner
            .keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the key ring (a roll, or a reset).
    fn set_key_ring(&self, change: impl FnOnce(&mut KeyRing)) -> KeyRing {
        let mut ring = self.inner.keys.write().unwrap_or_else(|e| e.into_inner());
        change(&mut ring);
        ring.clone()
    }

    fn lock(&self) -> MutexGuard<'_, SimState> {
        // A panic while holding the lock leaves plain data behind; keep serving.
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn partner_center(&self) -> MutexGuard<'_, partner_center::PartnerCenterState> {
        self.inner
            .partner_center
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn directory(&self) -> &Directory {
        &self.inner.directory
    }

    /// Resolves `{tenant}` of a path: a tenant id or domain (a partner's or a customer's),
    /// or `common` / `organizations` (any tenant). Unknown or deleted tenants are
    /// AADSTS90002, and a segment that is neither a GUID nor a domain AADSTS900023.
    fn path_tenant(&self, raw: &str) -> Result<PathTenant<'_>, EntraError> {
        let lower = raw.to_ascii_lowercase();
        if lower == "common" || lower == "organizations" {
            return Ok(PathTenant::Any(if lower == "common" {
                "common"
            } else {
                "organizations"
            }));
        }
        let state = self.lock();
        let found = match self.directory().tenant(raw) {
            Some(t) => Some(PathTenant::Tenant(t)),
            None => state.customers.get(raw).map(|c| {
                PathTenant::Customer(CustomerTenant {
                    id: c.id.clone(),
                    name: c.name.clone(),
                })
            }),
        };
        match found {
            Some(t) if !state.tenant_deleted(t.id().unwrap_or_default()) => Ok(t),
            _ if !tenant_shaped(raw) => Err(errors::tenant_identifier_invalid(raw)),
            _ => Err(errors::tenant_not_found(raw)),
        }
    }
}

/// A tenant id (GUID) or a domain name: what Entra looks up before answering 90002.
fn tenant_shaped(raw: &str) -> bool {
    uuid::Uuid::parse_str(raw).is_ok()
        || (raw.contains('.')
            && raw
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.'))
}

/// Small request/response exchanges must not wait for Nagle's algorithm.
pub fn no_delay(stream: &mut tokio::net::TcpStream) {
    let _ = stream.set_nodelay(true);
}

/// Binds nothing itself: serves on an already-bound listener until the future is dropped.
pub async fn serve(listener: tokio::net::TcpListener, opts: DevIdpOptions) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    // Issuers must be URLs clients can reach; a wildcard bind is reached via loopback.
    let host = match addr.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => "127.0.0.1".to_string(),
        ip if ip.is_unspecified() => "[::1]".to_string(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    };
    let tls = opts
        .tls
        .as_ref()
        .map(|(cert, key)| samvault_devtls::server_config(cert, key))
        .transpose()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let base = format!("{scheme}://{host}:{}", addr.port());
    let idp = tokio::task::spawn_blocking(move || DevIdp::new(opts)).await??;
    tracing::info!(%base, "dev IdP listening");
    match tls {
        Some(config) => {
            let listener = samvault_devtls::TlsListener::new(listener, config)?;
            axum::serve(listener, idp.router(&base)).await?;
        }
        None => axum::serve(listener.tap_io(no_delay), idp.router(&base)).await?,
    }
    Ok(())
}

#[derive(Clone)]
struct AppState {
    idp: DevIdp,
    base: Arc<str>,
}

#[derive(Debug, Clone)]
enum PathTenant<'a> {
    Any(&'static str),
    Tenant(&'a Tenant),
    /// A customer tenant of a partner (they change at run time, so this is a copy).
    Customer(CustomerTenant),
}

#[derive(Debug, Clone)]
struct CustomerTenant {
    id: String,
    name: String,
}

impl PathTenant<'_> {
    /// The tenant id when the path names one.
    fn id(&self) -> Option<&str> {
        match self {
            PathTenant::Any(_) => None,
            PathTenant::Tenant(t) => Some(&t.id),
            PathTenant::Customer(c) => Some(&c.id),
        }
    }

    /// How error messages name the directory, like Entra's `'common'` or the tenant's name.
    fn label(&self) -> &str {
        match self {
            PathTenant::Any(s) => s,
            PathTenant::Tenant(t) => &t.name,
            PathTenant::Customer(c) => &c.name,
        }
    }
}

/// Form or query parameters, first value wins; Entra treats empty values as missing.
#[derive(Debug, Clone, Default)]
struct Params(Vec<(String, String)>);

impl Params {
    fn parse(raw: &[u8]) -> Params {
        Params(serde_urlencoded::from_bytes(raw).unwrap_or_default())
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, v)| k == key && !v.is_empty())
            .map(|(_, v)| v.as_str())
    }

    /// `self` overridden by `other` (form fields over query string).
    fn merged(mut self, other: Params) -> Params {
        let keys: Vec<String> = other.0.iter().map(|(k, _)| k.clone()).collect();
        self.0.retain(|(k, _)| !keys.contains(k));
        self.0.extend(other.0);
        self
    }
}
