//! The client side of Entra ID: consent URLs, code redemption, refresh-token redemption and
//! id_token validation. Everything that crosses the wire to the IdP goes through here.

pub mod errors;
pub(crate) mod jwks;

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

/// A consent request about to be sent to the browser.
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
    secret: SecretString,
    redirect_uri: Url,
    consent_scopes: Vec<String>,
    http: reqwest::Client,
    jwks: jwks::JwksCache,
}

impl IdpClient {
    pub fn new(config: &Config) -> Result<Self, ConfigError> {
        let (client_id, credential) = config.app_identity()?;
        let secret = match credential {
            AppCredential::Secret(secret) => secret,
            AppCredential::Certificate { .. } => {
                return Err(ConfigError(
                    "SAMVAULT_CLIENT_CERT: certificate credentials are not available in this version; use SAMVAULT_CLIENT_SECRET".into(),
                ));
            }
        };
        let http = reqwest::Client::builder()
            // The token endpoint never redirects; following one would leak the form body.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(20))
            .build()
            .map_err(|e| ConfigError(format!("HTTP client: {e}")))?;
        let authority = config.authority.clone();
        Ok(Self {
            inner: Arc::new(Inner {
                jwks: jwks::JwksCache::new(endpoint(&authority, "common", "discovery/v2.0/keys")),
                authority,
                client_id,
                secret,
                redirect_uri: config.redirect_uri(),
                consent_scopes: config.consent_scopes.clone(),
                http,
            }),
        })
    }

    pub fn client_id(&self) -> &str {
        &self.inner.client_id
    }

    fn oauth(&self, tenant: &str) -> OAuthClient {
        let inner = &self.inner;
        oauth2::Client::new(ClientId::new(inner.client_id.clone()))
            .set_client_secret(ClientSecret::new(inner.secret.expose_secret().to_string()))
            .set_auth_type(AuthType::RequestBody)
            .set_auth_uri(AuthUrl::from_url(endpoint(
                &inner.authority,
                tenant,
                "oauth2/v2.0/authorize",
            )))
            .set_token_uri(TokenUrl::from_url(endpoint(
                &inner.authority,
                tenant,
                "oauth2/v2.0/token",
            )))
            .set_redirect_uri(RedirectUrl::from_url(inner.redirect_uri.clone()))
    }

    /// The authorize URL for a partner admin's consent: authorization-code flow with
    /// `state`, `nonce`, PKCE S256 and `prompt=consent`. `tenant` pins the sign-in to one
    /// partner tenant (invitations for a known tenant); otherwise any work account may sign in.
    pub fn consent_request(&self, tenant: Option<&TenantId>) -> ConsentRequest {
        let segment = tenant.map_or("organizations", TenantId::as_str);
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let nonce = CsrfToken::new_random().secret().clone();
        let (url, state) = self
            .oauth(segment)
            .authorize_url(CsrfToken::new_random)
            .add_scopes(self.inner.consent_scopes.iter().cloned().map(Scope::new))
            .set_pkce_challenge(challenge)
            .add_extra_param("nonce", nonce.clone())
            .add_extra_param("prompt", "consent")
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
        let captured = Capture::default();
        let result = self
            .oauth("organizations")
            .exchange_code(AuthorizationCode::new(code.to_string()))
            .set_pkce_verifier(PkceCodeVerifier::new(pkce_verifier.to_string()))
            .request_async(&self.transport(&captured))
            .await;
        finish(result, &captured)
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
        let captured = Capture::default();
        let rt = RefreshToken::new(refresh_token.expose_secret().to_string());
        let result = self
            .oauth(tenant.as_str())
            .exchange_refresh_token(&rt)
            .add_scope(Scope::new(resource.default_scope()))
            .add_scope(Scope::new("offline_access".into()))
            .request_async(&self.transport(&captured))
            .await;
        finish(result, &captured)
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

fn finish(
    result: Result<EntraTokenResponse, RequestTokenError<reqwest::Error, EntraErrorBody>>,
    captured: &Capture,
) -> Result<TokenSet, IdpError> {
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
        }),
        Err(RequestTokenError::ServerResponse(body)) => Err(IdpError::Entra {
            status,
            body: Box::new(body),
            retry_after,
        }),
        Err(RequestTokenError::Parse(_, _)) if status != 200 => Err(IdpError::Malformed {
            status,
            retry_after,
        }),
        Err(RequestTokenError::Parse(e, _)) => {
            Err(IdpError::Protocol(format!("token response: {}", e.path())))
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

fn endpoint(authority: &Url, tenant: &str, path: &str) -> Url {
    let base = authority.as_str().trim_end_matches('/');
    Url::parse(&format!("{base}/{tenant}/{path}")).expect("authority is a valid base URL")
}
