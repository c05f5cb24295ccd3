//! id_token validation against the IdP's published signing keys (JWKS), cached in memory.

use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use tokio::sync::RwLock;
use url::Url;

use super::IdpError;

/// Re-fetch the key set at most this often when a token names an unknown key.
const REFRESH_FLOOR: Duration = Duration::from_secs(60);
/// Keys are re-read after this long even when every `kid` is known.
const MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// Clock skew tolerated between samvault and the IdP.
const LEEWAY_SECS: u64 = 120;

/// The id_token claims samvault uses.
#[derive(Clone, Debug, serde::Deserialize)]
pub struct IdClaims {
    pub iss: String,
    pub tid: String,
    #[serde(default)]
    pub oid: Option<String>,
    #[serde(default)]
    pub preferred_username: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub nonce: Option<String>,
    /// Directory role template ids of the user (present when the app registration's
    /// `groupMembershipClaims` includes `DirectoryRole`).
    #[serde(default)]
    pub wids: Vec<String>,
}

pub(super) struct JwksCache {
    url: Url,
    keys: RwLock<Option<(JwkSet, Instant)>>,
}

impl JwksCache {
    pub(super) fn new(url: Url) -> Self {
        Self {
            url,
            keys: RwLock::new(None),
        }
    }

    async fn fetch(&self, http: &reqwest::Client) -> Result<JwkSet, IdpError> {
        let response = http
            .get(self.url.clone())
            .send()
            .await
            .map_err(|_| IdpError::Transport("fetching signing keys failed".into()))?;
        if !response.status().is_success() {
            return Err(IdpError::Malformed {
                status: response.status().as_u16(),
                retry_after: None,
            });
        }
        response
            .json::<JwkSet>()
            .await
            .map_err(|_| IdpError::Protocol("signing key set is not a JWKS".into()))
    }

    async fn key_for(&self, http: &reqwest::Client, kid: &str) -> Result<DecodingKey, IdpError> {
        let find = |set: &JwkSet| {
            set.find(kid)
                .and_then(|jwk| DecodingKey::from_jwk(jwk).ok())
        };
        if let Some((set, fetched)) = self.keys.read().await.as_ref()
            && fetched.elapsed() < MAX_AGE
            && let Some(key) = find(set)
        {
            return Ok(key);
        }
        let mut guard = self.keys.write().await;
        let stale = guard.as_ref().is_none_or(|(set, fetched)| {
            fetched.elapsed() >= MAX_AGE
                || (find(set).is_none() && fetched.elapsed() >= REFRESH_FLOOR)
        });
        if stale {
            *guard = Some((self.fetch(http).await?, Instant::now()));
        }
        guard
            .as_ref()
            .and_then(|(set, _)| find(set))
            .ok_or_else(|| IdpError::Protocol("id_token signed with an unknown key".into()))
    }

    pub(super) async fn validate(
        &self,
        http: &reqwest::Client,
        authority: &Url,
        client_id: &str,
        id_token: &str,
        nonce: &str,
    ) -> Result<IdClaims, IdpError> {
        let kid = key_id(id_token)?;
        let key = self.key_for(http, &kid).await?;
        verify(id_token, &key, authority, client_id, nonce)
    }
}

/// The key id of an RS256 JWT, read from its (not yet trusted) header.
pub(crate) fn key_id(id_token: &str) -> Result<String, IdpError> {
    let header = jsonwebtoken::decode_header(id_token)
        .map_err(|_| IdpError::Protocol("id_token is not a JWT".into()))?;
    if header.alg != Algorithm::RS256 {
        return Err(IdpError::Protocol(
            "id_token must be signed with RS256".into(),
        ));
    }
    header
        .kid
        .ok_or_else(|| IdpError::Protocol("id_token has no key id".into()))
}

/// Signature, audience, expiry, then the claims samvault relies on.
pub(crate) fn verify(
    id_token: &str,
    key: &DecodingKey,
    authority: &Url,
    client_id: &str,
    nonce: &str,
) -> Result<IdClaims, IdpError> {
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&[client_id]);
    validation.set_required_spec_claims(&["exp", "iss", "aud"]);
    validation.leeway = LEEWAY_SECS;
    let claims = jsonwebtoken::decode::<IdClaims>(id_token, key, &validation)
        .map_err(|e| IdpError::Protocol(format!("id_token rejected: {:?}", e.kind())))?
        .claims;
    check_claims(claims, authority, nonce)
}

/// Issuer and nonce, once the signature and the standard claims are valid.
pub(crate) fn check_claims(
    claims: IdClaims,
    authority: &Url,
    nonce: &str,
) -> Result<IdClaims, IdpError> {
    // Multi-tenant apps validate the issuer against the token's own tenant.
    let expected_iss = format!(
        "{}/{}/v2.0",
        authority.as_str().trim_end_matches('/'),
        claims.tid
    );
    if claims.iss != expected_iss {
        return Err(IdpError::Protocol(
            "id_token issuer does not match its tenant".into(),
        ));
    }
    if claims.nonce.as_deref() != Some(nonce) {
        return Err(IdpError::Protocol(
            "id_token nonce does not match this sign-in".into(),
        ));
    }
    Ok(claims)
}
