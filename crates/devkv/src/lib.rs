//! `samvault dev-keyvault`: a small HTTPS stand-in for Azure Key Vault, for the tests and local
//! development (no Key Vault emulator can be installed here). It serves the documented REST
//! operations the SDK's `KeyClient` calls, as Key Vault answers them:
//!
//! - challenge authentication: a request without a bearer token gets 401 with
//!   `WWW-Authenticate: Bearer authorization="…/TENANT", resource="https://vault.azure.net"`;
//! - the Entra ID token endpoint `/{tenant}/oauth2/v2.0/token` (client credentials with a
//!   client secret) on the same port, so `ClientSecretCredential` gets a token the double
//!   then checks (HS256 JWT, audience `https://vault.azure.net`);
//! - `GET /keys/{name}[/{version}]`, `POST /keys/{name}/{version}/wrapkey` and `/unwrapkey`
//!   (real RSA-OAEP-256), `POST /keys/{name}/rotate`; base64url values; errors in Key Vault's
//!   `{"error": {"code", "message"}}` shape;
//! - under `/_sim/` (a test tool's control API): `POST /_sim/faults` `{"count", "status",
//!   "retry_after"}` makes the next key operations fail that way (401, 403, 429, 503, …),
//!   `GET /_sim/counters` counts what was served.
//!
//! Keys live in a state file, so a restarted double unwraps what it wrapped before.

// Checks return the finished refusal as their error value, as in the dev IdP.
#![allow(clippy::result_large_err)]

mod store;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use store::Store;

/// The tenant, client id and secret of the identity the double accepts (test fixtures).
pub const TENANT_ID: &str = "7e57c0de-0000-4000-8000-00000000a2b1";
pub const CLIENT_ID: &str = "7e57c0de-0000-4000-8000-0000000c11e7";
pub const CLIENT_SECRET: &str = "samvault-dev-keyvault-secret";
/// The resource Key Vault's challenge names; tokens must carry it as their audience.
const RESOURCE: &str = "https://vault.azure.net";
const TOKEN_LIFETIME_SECS: i64 = 3599;

/// `samvault dev-keyvault`.
#[derive(Debug, Clone, clap::Args)]
pub struct DevKeyVaultArgs {
    #[arg(long, default_value = "127.0.0.1:8443")]
    pub listen: std::net::SocketAddr,
    /// State file holding the RSA keys (created 0600; kept across restarts).
    #[arg(long, value_name = "FILE")]
    pub state: PathBuf,
    /// PEM certificate chain to serve (its CA must be trusted by the client).
    #[arg(long, value_name = "FILE")]
    pub tls_cert: PathBuf,
    /// PEM private key of that certificate.
    #[arg(long, value_name = "FILE")]
    pub tls_key: PathBuf,
    /// Key to create on first start (repeatable).
    #[arg(long = "key", value_name = "NAME", default_value = "samvault-kek")]
    pub keys: Vec<String>,
}

/// Runs the double until `shutdown` completes.
pub async fn run(
    args: DevKeyVaultArgs,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| anyhow::anyhow!("--listen: cannot listen on {}: {e}", args.listen))?;
    eprintln!(
        "samvault dev Key Vault on https://{} (tenant {TENANT_ID}, client id {CLIENT_ID})",
        listener.local_addr()?
    );
    tokio::select! {
        result = serve(listener, args) => result,
        _ = shutdown => Ok(()),
    }
}

#[derive(Default, Clone, Copy, serde::Deserialize)]
#[serde(default)]
struct Faults {
    count: u32,
    status: u16,
    retry_after: Option<u64>,
}

#[derive(Default)]
struct Counters {
    operations: HashMap<&'static str, u64>,
    challenges: u64,
    tokens: u64,
    faults: u64,
}

struct Inner {
    base: String,
    store: Mutex<Store>,
    faults: Mutex<Faults>,
    counters: Mutex<Counters>,
}

#[derive(Clone)]
struct Double(Arc<Inner>);

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Serves the double over TLS on an already-bound listener until the future is dropped.
pub async fn serve(
    listener: tokio::net::TcpListener,
    options: DevKeyVaultArgs,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    let base = format!("https://{addr}");
    let config = samvault_devtls::server_config(&options.tls_cert, &options.tls_key)?;
    let (state, keys) = (options.state.clone(), options.keys.clone());
    let store = tokio::task::spawn_blocking(move || Store::open(&state, &keys)).await??;
    for name in &options.keys {
        tracing::info!(key = %format!("{base}/keys/{name}"), "dev Key Vault key");
    }
    let double = Double(Arc::new(Inner {
        base,
        store: Mutex::new(store),
        faults: Mutex::default(),
        counters: Mutex::default(),
    }));
    axum::serve(
        samvault_devtls::TlsListener::new(listener, config)?,
        router(double),
    )
    .await?;
    Ok(())
}

fn router(double: Double) -> Router {
    Router::new()
        .route("/{tenant}/oauth2/v2.0/token", post(token))
        .route("/keys/{name}", get(get_key))
        .route("/keys/{name}/", get(get_key))
        .route("/keys/{name}/{version}", get(get_key))
        .route("/keys/{name}/{version}/{operation}", post(key_operation))
        .route("/keys/{name}/rotate", post(rotate_key))
        .route("/_sim/faults", post(set_faults))
        .route("/_sim/counters", get(counters))
        .with_state(double)
}

/// Key Vault's error body.
fn kv_error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!({ "error": { "code": code, "message": message } })),
    )
        .into_response()
}

/// Entra ID's error body, as the token endpoint answers.
fn entra_error(status: StatusCode, error: &str, aadsts: u32, description: &str) -> Response {
    (
        status,
        Json(json!({
            "error": error,
            "error_description": format!("AADSTS{aadsts}: {description}"),
            "error_codes": [aadsts],
            "timestamp": time::OffsetDateTime::now_utc().unix_timestamp(),
        })),
    )
        .into_response()
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Claims {
    aud: String,
    iss: String,
    appid: String,
    tid: String,
    iat: i64,
    exp: i64,
}

async fn token(
    State(double): State<Double>,
    Path(tenant): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let field = |name: &str| form.get(name).map(String::as_str).unwrap_or_default();
    if tenant != TENANT_ID {
        return entra_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            90002,
            &format!("Tenant '{tenant}' not found."),
        );
    }
    if field("grant_type") != "client_credentials" {
        return entra_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            70003,
            "The app requested an unsupported grant type.",
        );
    }
    if field("client_id") != CLIENT_ID || field("client_secret") != CLIENT_SECRET {
        return entra_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            7000215,
            "Invalid client secret provided.",
        );
    }
    if field("scope") != format!("{RESOURCE}/.default") {
        return entra_error(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            70011,
            "The provided value for the input parameter 'scope' is not valid.",
        );
    }
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let claims = Claims {
        aud: RESOURCE.into(),
        iss: format!("{}/{TENANT_ID}/", double.0.base),
        appid: CLIENT_ID.into(),
        tid: TENANT_ID.into(),
        iat: now,
        exp: now + TOKEN_LIFETIME_SECS,
    };
    let secret = lock(&double.0.store).token_secret.clone();
    let access_token = match jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(&secret),
    ) {
        Ok(t) => t,
        Err(_) => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    };
    lock(&double.0.counters).tokens += 1;
    Json(json!({
        "token_type": "Bearer",
        "expires_in": TOKEN_LIFETIME_SECS,
        "ext_expires_in": TOKEN_LIFETIME_SECS,
        "access_token": access_token,
    }))
    .into_response()
}

impl Double {
    fn challenge(&self, status: StatusCode, code: &str, message: &str) -> Response {
        let mut response = kv_error(status, code, message);
        let challenge = format!(
            "Bearer authorization=\"{}/{TENANT_ID}\", resource=\"{RESOURCE}\"",
            self.0.base
        );
        if let Ok(value) = HeaderValue::from_str(&challenge) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, value);
        }
        response
    }

    /// What Key Vault checks before any key operation: `api-version`, then the bearer token,
    /// then (here) whether a fault is due. `Err` is the answer to send instead.
    fn admit(
        &self,
        headers: &HeaderMap,
        query: &HashMap<String, String>,
        action: &str,
    ) -> Result<(), Response> {
        if query.get("api-version").is_none_or(|v| v.is_empty()) {
            return Err(kv_error(
                StatusCode::BAD_REQUEST,
                "BadParameter",
                "The 'api-version' query parameter is missing.",
            ));
        }
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let Some(bearer) = bearer else {
            lock(&self.0.counters).challenges += 1;
            return Err(self.challenge(
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                "AKV10000: Request is missing a Bearer or PoP token.",
            ));
        };
        let secret = lock(&self.0.store).token_secret.clone();
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        validation.set_audience(&[RESOURCE]);
        if jsonwebtoken::decode::<Claims>(
            bearer,
            &jsonwebtoken::DecodingKey::from_secret(&secret),
            &validation,
        )
        .is_err()
        {
            return Err(self.challenge(
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                "AKV10022: Invalid audience, issuer, signature or lifetime of the access token.",
            ));
        }
        self.fault(action)
    }

    fn fault(&self, action: &str) -> Result<(), Response> {
        let fault = {
            let mut faults = lock(&self.0.faults);
            if faults.count == 0 {
                return Ok(());
            }
            faults.count -= 1;
            *faults
        };
        lock(&self.0.counters).faults += 1;
        let status = StatusCode::from_u16(fault.status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        let mut response = match status {
            StatusCode::UNAUTHORIZED => self.challenge(
                status,
                "Unauthorized",
                "AKV10032: Invalid issuer. Expected one of the tenant's issuers.",
            ),
            StatusCode::FORBIDDEN => kv_error(
                status,
                "Forbidden",
                &format!(
                    "Caller is not authorized to perform action on resource.\r\nCaller: appid={CLIENT_ID}\r\nAction: 'Microsoft.KeyVault/vaults/keys/{action}'\r\nAssignment: (not found)\r\n"
                ),
            ),
            StatusCode::TOO_MANY_REQUESTS => kv_error(
                status,
                "Throttled",
                "Request was not processed because too many requests were received. Reason: VaultRequestTypeLimitReached",
            ),
            _ => kv_error(status, "ServiceUnavailable", "The service is unavailable."),
        };
        if let Some(seconds) = fault.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        Err(response)
    }

    fn count(&self, operation: &'static str) {
        *lock(&self.0.counters)
            .operations
            .entry(operation)
            .or_default() += 1;
    }

    fn kid(&self, name: &str, version: &str) -> String {
        format!("{}/keys/{name}/{version}", self.0.base)
    }

    fn key_bundle(&self, name: &str, version: &str) -> Response {
        let store = lock(&self.0.store);
        let (Some(stored), Some(v)) = (store.name(name), store.version(name, version)) else {
            return key_not_found(name);
        };
        let (n, e) = v.public();
        Json(json!({
            "key": {
                "kid": self.kid(stored, &v.id),
                "kty": "RSA",
                "key_ops": ["encrypt", "decrypt", "sign", "verify", "wrapKey", "unwrapKey"],
                "n": URL_SAFE_NO_PAD.encode(n),
                "e": URL_SAFE_NO_PAD.encode(e),
            },
            "attributes": {
                "enabled": true,
                "created": v.created,
                "updated": v.created,
                "recoveryLevel": "Recoverable+Purgeable",
            },
        }))
        .into_response()
    }
}

fn key_not_found(name: &str) -> Response {
    kv_error(
        StatusCode::NOT_FOUND,
        "KeyNotFound",
        &format!("A key with (name/id) {name} was not found in this key vault."),
    )
}

/// `{name}` and, when the route has it, `{version}` (empty: the current version).
#[derive(serde::Deserialize)]
struct KeyPath {
    name: String,
    #[serde(default)]
    version: String,
    #[serde(default)]
    operation: String,
}

async fn get_key(
    State(double): State<Double>,
    Path(path): Path<KeyPath>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Err(refused) = double.admit(&headers, &query, "read") {
        return refused;
    }
    double.count("get");
    double.key_bundle(&path.name, &path.version)
}

#[derive(serde::Deserialize)]
struct KeyOperation {
    alg: String,
    value: String,
}

/// `wrapkey` and `unwrapkey`: the same envelope, opposite directions.
async fn key_operation(
    State(double): State<Double>,
    Path(path): Path<KeyPath>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Option<Json<KeyOperation>>,
) -> Response {
    let (wrap, action, counted) = match path.operation.as_str() {
        "wrapkey" => (true, "wrap/action", "wrapkey"),
        "unwrapkey" => (false, "unwrap/action", "unwrapkey"),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    if let Err(refused) = double.admit(&headers, &query, action) {
        return refused;
    }
    let Some(Json(operation)) = body else {
        return kv_error(
            StatusCode::BAD_REQUEST,
            "BadParameter",
            "The request body is not valid JSON.",
        );
    };
    if operation.alg != "RSA-OAEP-256" {
        return kv_error(
            StatusCode::BAD_REQUEST,
            "BadParameter",
            &format!(
                "Invalid algorithm: {} (this double supports RSA-OAEP-256)",
                operation.alg
            ),
        );
    }
    let Ok(input) = URL_SAFE_NO_PAD.decode(operation.value.trim_end_matches('=')) else {
        return kv_error(
            StatusCode::BAD_REQUEST,
            "BadParameter",
            "The value is not base64url.",
        );
    };
    let store = lock(&double.0.store);
    let (Some(stored), Some(v)) = (
        store.name(&path.name),
        store.version(&path.name, &path.version),
    ) else {
        return key_not_found(&path.name);
    };
    let output = if wrap {
        v.wrap(&input)
    } else {
        v.unwrap(&input).map(|plain| plain.to_vec())
    };
    let Some(output) = output else {
        return kv_error(
            StatusCode::BAD_REQUEST,
            "BadParameter",
            "Decryption failed.",
        );
    };
    let kid = double.kid(stored, &v.id);
    drop(store);
    double.count(counted);
    Json(json!({ "kid": kid, "value": URL_SAFE_NO_PAD.encode(output) })).into_response()
}

async fn rotate_key(
    State(double): State<Double>,
    Path(KeyPath { name, .. }): Path<KeyPath>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Err(refused) = double.admit(&headers, &query, "rotate/action") {
        return refused;
    }
    if !lock(&double.0.store).contains(&name) {
        return key_not_found(&name);
    }
    // Generating an RSA key takes a while: off the lock and off the async workers.
    let version = match tokio::task::spawn_blocking(Store::new_version).await {
        Ok(Ok(v)) => v,
        _ => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    };
    let id = match lock(&double.0.store).add_version(&name, version) {
        Ok(v) => v.id.clone(),
        Err(e) => {
            tracing::error!(error = %e, "dev Key Vault: cannot save a new key version");
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
    };
    double.count("rotate");
    double.key_bundle(&name, &id)
}

async fn set_faults(State(double): State<Double>, Json(faults): Json<Faults>) -> StatusCode {
    *lock(&double.0.faults) = faults;
    StatusCode::NO_CONTENT
}

async fn counters(State(double): State<Double>) -> Json<Value> {
    let counters = lock(&double.0.counters);
    Json(json!({
        "operations": counters.operations,
        "challenges": counters.challenges,
        "tokens": counters.tokens,
        "faults": counters.faults,
    }))
}
