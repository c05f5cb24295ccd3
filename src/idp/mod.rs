//! The client side of Entra ID: consent URLs, code redemption, refresh-token redemption and
//! id_token validation. Everything that crosses the wire to the IdP goes through here.

pub mod certificate;
pub mod errors;
pub(crate) mod jwks;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http;
use oauth2::basic::{
    BasicRevocationErrorResponse, BasicTokenIntrospectionResponse, BasicTokenType,
};
use oauth2::{
    AuthType, AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointNotSet,
    EndpointSet, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, RefreshToken, RequestTokenError,
    Scope, StandardRevocableToken, StandardTokenResponse, TokenResponse, TokenUrl,
};
use secrecy::{ExposeSecret, SecretString};
use url::Url;

pub use certificate::ClientCertificate;
pub use errors::{EntraErrorBody, IdpError, Outcome};
pub use jwks::IdClaims;

use crate::config::{AppCredential, Config, ConfigError};
use crate::domain::{Resource, TenantId};

/// Fields Entra adds to the RFC 6749 token response.
#[derive(Clone, Debug, serde::Deserialize, serde::Serialize)]
pub struct EntraFields {
    #[serde(default)]
    id_token: Option<String>,
}
impl oauth2::ExtraTokenFields for EntraFields {}

type EntraTokenResponse = StandardTokenResponse<EntraFields, BasicTokenType>;
type OAuthClient = oauth2::Client<
    EntraErrorBody,
    EntraTokenResponse,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointSet,
>;

/// What a successful redemption yields. Token strings stay secret until used.
pub struct TokenSet {
    pub access_token: SecretString,
    pub refresh_token: Option<SecretString>,
    pub id_token: Option<String>,
    pub expires_in: Duration,
    pub scope: Option<String>,
    /// Set when a credential was refused before another one worked: which, and why.
    pub fallback: Option<String>,
}

impl std::fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSet")
            .field("expires_in", &self.expires_in)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

/// The claims samvault reads from an access token it just received over TLS from the token
/// endpoint (it is the bearer, not the audience, so it does not validate the signature).
#[derive(Clone, Debug, Default, serde::Deserialize)]
pub struct AccessClaims {
    #[serde(default)]
    pub aud: Option<String>,
    #[serde(default)]
    pub tid: Option<String>,
    #[serde(default)]
    pub upn: Option<String>,
    #[serde(default)]
    pub oid: Option<String>,
    #[serde(default)]
    pub amr: Vec<String>,
    #[serde(default)]
    pub scp: Option<String>,
}

impl AccessClaims {
    /// Reads the payload of a JWT access token; `None` if it is not a JWT.
    pub fn peek(access_token: &str) -> Option<Self> {
        use base64::Engine;
        let payload = access_token.split('.').nth(1)?;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Partner Center rejects App+User tokens whose `amr` lacks `mfa`.
    pub fn mfa(&self) -> bool {
        self.amr.iter().any(|m| m == "mfa")
    }
}

/// An authorize request about to be sent to the browser (a consent or a plain sign-in).
pub struct ConsentRequest {
    pub url: Url,
    pub state: String,
    pub nonce: String,
    pub pkce_verifier: String,
}

#[derive(Clone)]
pub struct IdpClient {
    inner: Arc<Inner>,
}

struct Inner {
    authority: Url,
    client_id: String,
    /// In the order configured; every token request starts at `preferred`.
    credentials: Vec<Credential>,
    /// The credential that worked last: after a fallback, requests stop paying for the
    /// refused one.
    preferred: AtomicUsize,
    /// What Entra said about the credentials at the last refusal (for the alarm).
    last_refusal: Mutex<Option<String>>,
    redirect_uri: Url,
    consent_scopes: Vec<String>,
    http: reqwest::Client,
    jwks: jwks::JwksCache,
}

/// One credential of the CPV app, named by its setting.
struct Credential {
    setting: &'static str,
    proof: Proof,
}

enum Proof {
    Secret(SecretString),
    Certificate(ClientCertificate),
}

/// A client certificate expiring sooner than this is announced in the log at start-up.
const CERTIFICATE_WARNING_SECS: i64 = 30 * 86_400;

impl IdpClient {
    pub fn new(config: &Config) -> Result<Self, ConfigError> {
        let (client_id, configured) = config.app_identity()?;
        let now = crate::storage::now();
        let credentials = configured
            .into_iter()
            .map(|credential| {
                let setting = credential.setting();
                let proof = match credential {
                    AppCredential::Secret { secret, .. } => Proof::Secret(secret),
                    AppCredential::Certificate { cert, key } => {
                        let certificate = ClientCertificate::load(&cert, &key, now)?;
                        announce(&certificate, now);
                        Proof::Certificate(certificate)
                    }
                };
                Ok(Credential { setting, proof })
            })
            .collect::<Result<Vec<_>, ConfigError>>()?;
        let http = reqwest::Client::builder()
            // The token endpoint never redirects; following one would leak the form body.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(20))
            .tls_certs_merge(config.keys.extra_roots.clone())
            .build()
            .map_err(|e| ConfigError(format!("HTTP client: {e}")))?;
        let authority = config.entra.authority.clone();
        Ok(Self {
            inner: Arc::new(Inner {
                jwks: jwks::JwksCache::new(endpoint(&authority, "common", "discovery/v2.0/keys")),
                authority,
                client_id,
                credentials,
                preferred: AtomicUsize::new(0),
                last_refusal: Mutex::default(),
                redirect_uri: config.redirect_uri(),
                consent_scopes: config.entra.consent_scopes.clone(),
                http,
            }),
        })
    }

    pub fn client_id(&self) -> &str {
        &self.inner.client_id
    }

    /// Whether requests currently use a credential other than the first configured one.
    pub fn using_fallback(&self) -> bool {
        self.inner.preferred.load(Ordering::Relaxed) != 0
    }

    /// Which credentials Entra refused at the last refusal, e.g. "SAMVAULT_CLIENT_SECRET
    /// rejected: AADSTS7000222". Names settings and codes, never a secret.
    pub fn last_refusal(&self) -> Option<String> {
        self.inner
            .last_refusal
            .lock()
            .expect("refusal lock")
            .clone()
    }

    fn oauth(&self, tenant: &str) -> OAuthClient {
        let inner = &self.inner;
        oauth2::Client::new(ClientId::new(inner.client_id.clone()))
            .set_auth_type(AuthType::RequestBody)
            .set_auth_uri(AuthUrl::from_url(endpoint(
                &inner.authority,
                tenant,
                "oauth2/v2.0/authorize",
            )))
            .set_token_uri(TokenUrl::from_url(token_endpoint(&inner.authority, tenant)))
            .set_redirect_uri(RedirectUrl::from_url(inner.redirect_uri.clone()))
    }

    /// The client and extra form fields that present `credential` to `tenant`'s token endpoint:
    /// a secret in the body, or a client assertion addressed to that very endpoint.
    fn authenticated(&self, tenant: &str, credential: &Credential) -> (OAuthClient, ExtraParams) {
        let client = self.oauth(tenant);
        match &credential.proof {
            Proof::Secret(secret) => (
                client.set_client_secret(ClientSecret::new(secret.expose_secret().to_string())),
                Vec::new(),
            ),
            Proof::Certificate(certificate) => {
                let audience = token_endpoint(&self.inner.authority, tenant);
                let assertion = certificate.assertion(
                    &self.inner.client_id,
                    audience.as_str(),
                    crate::storage::now(),
                );
                (
                    client,
                    vec![
                        ("client_assertion_type", certificate::JWT_BEARER.to_string()),
                        ("client_assertion", assertion),
                    ],
                )
            }
        }
    }

    /// Sends one token request with the preferred credential and, while Entra refuses the
    /// credential itself (`invalid_client`: wrong or expired secret, unknown certificate...),
    /// with the next ones. A refused client is refused before its grant is looked at, so
    /// the code or refresh token is still unused when the next credential presents it.
    async fn token_request(&self, tenant: &str, grant: Grant<'_>) -> Result<TokenSet, IdpError> {
        let credentials = &self.inner.credentials;
        let first = self.inner.preferred.load(Ordering::Relaxed);
        let mut refusals = Vec::new();
        for step in 0..credentials.len() {
            let index = (first + step) % credentials.len();
            let credential = &credentials[index];
            let captured = Capture::default();
            let (client, extra) = self.authenticated(tenant, credential);
            let transport = self.transport(&captured);
            let result = finish(grant.send(client, extra, &transport).await, &captured);
            match result {
                Err(error) if refuses_client(&error) => {
                    refusals.push(refusal(credential.setting, &error));
                    if step + 1 == credentials.len() {
                        *self.inner.last_refusal.lock().expect("refusal lock") =
                            Some(refusals.join("; "));
                        return Err(error);
                    }
                }
                Ok(mut tokens) if !refusals.is_empty() => {
                    let notice = format!("{}; using {}", refusals.join("; "), credential.setting);
                    tracing::warn!(credentials = %notice, "Entra ID refused a CPV app credential; another one works");
                    self.inner.preferred.store(index, Ordering::Relaxed);
                    *self.inner.last_refusal.lock().expect("refusal lock") = Some(notice.clone());
                    tokens.fallback = Some(notice);
                    return Ok(tokens);
                }
                Err(error) => return Err(self.note_redirect_uri(error)),
                other => return other,
            }
        }
        unreachable!("the configuration holds at least one credential")
    }

    /// Tells operators when Entra refused the redirect URI: a configuration error, which
    /// the partner admin's page also names, and no credential's fault.
    fn note_redirect_uri(&self, error: IdpError) -> IdpError {
        if let Some(code) = refuses_redirect_uri(&error) {
            tracing::error!(code, redirect_uri = %self.inner.redirect_uri, "Entra ID refused the redirect URI: SAMVAULT_PUBLIC_URL must be the public address partners use, the same on every replica");
        }
        error
    }

    /// The authorize URL for a partner admin's consent: authorization-code flow with
    /// `state`, `nonce`, PKCE S256 and `prompt=consent`. `tenant` pins the sign-in to one
    /// partner tenant (invitations for a known tenant); otherwise any work account may sign in.
    pub fn consent_request(&self, tenant: Option<&TenantId>) -> ConsentRequest {
        let segment = tenant.map_or("organizations", TenantId::as_str);
        self.authorize_request(segment, &self.inner.consent_scopes, "consent")
    }

    /// The authorize URL for a partner admin who only proves who they are (self-service
    /// revoke): `openid profile`, so no refresh token and no API permission is asked for;
    /// `prompt=login`, so a destructive action follows a fresh sign-in, not a cached one.
    pub fn sign_in_request(&self) -> ConsentRequest {
        let scopes = ["openid".to_string(), "profile".to_string()];
        self.authorize_request("organizations", &scopes, "login")
    }

    /// Authorization-code flow with `state`, `nonce` and PKCE S256, answered on the query.
    fn authorize_request(&self, segment: &str, scopes: &[String], prompt: &str) -> ConsentRequest {
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let nonce = CsrfToken::new_random().secret().clone();
        let (url, state) = self
            .oauth(segment)
            .authorize_url(CsrfToken::new_random)
            .add_scopes(scopes.iter().cloned().map(Scope::new))
            .set_pkce_challenge(challenge)
            .add_extra_param("nonce", nonce.clone())
            .add_extra_param("prompt", prompt.to_string())
            .add_extra_param("response_mode", "query")
            .url();
        ConsentRequest {
            url,
            state: state.secret().clone(),
            nonce,
            pkce_verifier: verifier.secret().clone(),
        }
    }

    /// Redeems an authorization code (the consent callback).
    #[tracing::instrument(skip_all)]
    pub async fn redeem_code(&self, code: &str, pkce_verifier: &str) -> Result<TokenSet, IdpError> {
        self.token_request(
            "organizations",
            Grant::Code {
                code,
                pkce_verifier,
            },
        )
        .await
    }

    fn transport(&self, captured: &Capture) -> Transport {
        Transport {
            http: self.inner.http.clone(),
            captured: captured.clone(),
        }
    }

    /// Redeems a refresh token for an access token to one resource (v2: `<resource>/.default`).
    #[tracing::instrument(skip_all, fields(tenant.id = %tenant, resource = %resource))]
    pub async fn redeem_refresh_token(
        &self,
        tenant: &TenantId,
        refresh_token: &SecretString,
        resource: &Resource,
    ) -> Result<TokenSet, IdpError> {
        let refresh_token = RefreshToken::new(refresh_token.expose_secret().to_string());
        self.token_request(
            tenant.as_str(),
            Grant::Refresh {
                refresh_token: &refresh_token,
                resource,
            },
        )
        .await
    }

    /// Validates an id_token: signature (JWKS), issuer, audience, nonce, expiry.
    pub async fn validate_id_token(
        &self,
        id_token: &str,
        nonce: &str,
    ) -> Result<IdClaims, IdpError> {
        self.inner
            .jwks
            .validate(
                &self.inner.http,
                &self.inner.authority,
                &self.inner.client_id,
                id_token,
                nonce,
            )
            .await
    }
}

/// What a token request redeems.
enum Grant<'a> {
    Code {
        code: &'a str,
        pkce_verifier: &'a str,
    },
    Refresh {
        refresh_token: &'a RefreshToken,
        resource: &'a Resource,
    },
}

impl Grant<'_> {
    async fn send(
        &self,
        client: OAuthClient,
        extra: ExtraParams,
        transport: &Transport,
    ) -> OAuthResult {
        match self {
            Grant::Code {
                code,
                pkce_verifier,
            } => {
                let request = client
                    .exchange_code(AuthorizationCode::new(code.to_string()))
                    .set_pkce_verifier(PkceCodeVerifier::new(pkce_verifier.to_string()));
                let request = extra
                    .into_iter()
                    .fold(request, |r, (name, value)| r.add_extra_param(name, value));
                request.request_async(transport).await
            }
            Grant::Refresh {
                refresh_token,
                resource,
            } => {
                let request = client
                    .exchange_refresh_token(refresh_token)
                    .add_scope(Scope::new(resource.default_scope()))
                    .add_scope(Scope::new("offline_access".into()));
                let request = extra
                    .into_iter()
                    .fold(request, |r, (name, value)| r.add_extra_param(name, value));
                request.request_async(transport).await
            }
        }
    }
}

type ExtraParams = Vec<(&'static str, String)>;
type OAuthResult = Result<EntraTokenResponse, RequestTokenError<reqwest::Error, EntraErrorBody>>;

/// Entra refused the client's credential itself, not the grant: only then may another
/// credential do better. Its other `invalid_client` answers (a redirect URI, a resource the
/// registration does not list) would be the same with any credential.
fn refuses_client(error: &IdpError) -> bool {
    matches!(error, IdpError::Entra { body, .. } if body.blames_credential())
}

/// Entra saw a redirect URI it did not expect: `SAMVAULT_PUBLIC_URL` is wrong somewhere.
fn refuses_redirect_uri(error: &IdpError) -> Option<u32> {
    error
        .code()
        .filter(|code| errors::REDIRECT_URI_CODES.contains(code))
}

fn refusal(setting: &str, error: &IdpError) -> String {
    match error.code() {
        Some(code) => format!("{setting} rejected: AADSTS{code}"),
        None => format!("{setting} rejected"),
    }
}

/// Logs which certificate signs the assertions, and warns when it expires soon.
fn announce(certificate: &ClientCertificate, now: i64) {
    let expires = certificate::date(certificate.not_after());
    if certificate.not_after() - now < CERTIFICATE_WARNING_SECS {
        tracing::warn!(x5t_s256 = certificate.thumbprint_s256(), %expires, "SAMVAULT_CLIENT_CERT expires within 30 days: register a new certificate on the app and deploy it");
    } else {
        tracing::info!(x5t_s256 = certificate.thumbprint_s256(), %expires, "client assertions are signed with SAMVAULT_CLIENT_CERT");
    }
}

/// The adapter oauth2 calls: sends with reqwest and remembers what oauth2 drops (the
/// status and `Retry-After`), which classification needs.
struct Transport {
    http: reqwest::Client,
    captured: Capture,
}

impl<'c> oauth2::AsyncHttpClient<'c> for Transport {
    type Error = reqwest::Error;
    type Future = std::pin::Pin<
        Box<
            dyn std::future::Future<Output = Result<oauth2::HttpResponse, reqwest::Error>>
                + Send
                + 'c,
        >,
    >;

    fn call(&'c self, request: oauth2::HttpRequest) -> Self::Future {
        Box::pin(async move {
            let request = reqwest::Request::try_from(request)?;
            let response = self.http.execute(request).await?;
            let status = response.status();
            let retry_after = response
                .headers()
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| errors::parse_retry_after(Some(v)));
            *self.captured.0.lock().expect("capture lock") = Some(Seen {
                status: status.as_u16(),
                retry_after,
            });
            let mut builder = http::Response::builder().status(status);
            for (name, value) in response.headers() {
                builder = builder.header(name, value);
            }
            let body = response.bytes().await?;
            Ok(builder
                .body(body.to_vec())
                .expect("status and headers come from a valid response"))
        })
    }
}

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Option<Seen>>>);

/// What the token endpoint's HTTP response said besides its body.
#[derive(Clone, Copy)]
struct Seen {
    status: u16,
    retry_after: Option<Duration>,
}

fn finish(result: OAuthResult, captured: &Capture) -> Result<TokenSet, IdpError> {
    let seen = *captured.0.lock().expect("capture lock");
    let Seen {
        status,
        retry_after,
    } = seen.unwrap_or(Seen {
        status: 0,
        retry_after: None,
    });
    match result {
        Ok(response) => Ok(TokenSet {
            access_token: SecretString::from(response.access_token().secret().to_string()),
            refresh_token: response
                .refresh_token()
                .map(|rt| SecretString::from(rt.secret().to_string())),
            id_token: response.extra_fields().id_token.clone(),
            expires_in: response.expires_in().unwrap_or(Duration::from_secs(3600)),
            scope: response
                .scopes()
                .map(|s| s.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" ")),
            fallback: None,
        }),
        Err(RequestTokenError::ServerResponse(body)) => Err(IdpError::Entra {
            status,
            body: Box::new(body),
            retry_after,
        }),
        // REFERENCE §4: a malformed body is temporary, whatever the status (a truncated answer, a
        // proxy's page served as 200): the grant is kept and the caller may try again.
        Err(RequestTokenError::Parse(e, _)) => {
            tracing::debug!(status, path = %e.path(), "token response is not usable JSON");
            Err(IdpError::Malformed {
                status,
                retry_after,
            })
        }
        Err(RequestTokenError::Request(e)) => Err(IdpError::Transport(describe_transport(&e))),
        Err(RequestTokenError::Other(text)) if status >= 400 => {
            let _ = text;
            Err(IdpError::Malformed {
                status,
                retry_after,
            })
        }
        Err(RequestTokenError::Other(text)) => Err(IdpError::Protocol(text)),
    }
}

/// A transport error in words that never include a URL's query or a body.
fn describe_transport(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "connection failed".into()
    } else {
        "request failed".into()
    }
}

/// A tenant's v2 token endpoint: where token requests go, and the audience of their
/// client assertions.
fn token_endpoint(authority: &Url, tenant: &str) -> Url {
    endpoint(authority, tenant, "oauth2/v2.0/token")
}

fn endpoint(authority: &Url, tenant: &str, path: &str) -> Url {
    let base = authority.as_str().trim_end_matches('/');
    Url::parse(&format!("{base}/{tenant}/{path}")).expect("authority is a valid base URL")
}
