//! id_token validation against the IdP's published signing keys (JWKS), cached in memory.
//!
//! Microsoft's "Signing key rollover": keys roll periodically and, in an emergency, at once;
//! the JWKS always lists several keys; clients refresh hourly, and on the hot path when a
//! token names a key they do not know. That last refresh is rate-limited here per key id
//! and per minute, so a broken or hostile answer cannot make samvault hammer the IdP.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use tokio::sync::RwLock;
use url::Url;

use super::IdpError;

/// Keys are re-read this often even when every `kid` is known (Microsoft: hourly).
const REFRESH_EVERY: Duration = Duration::from_secs(3600);
/// When a refresh fails, the last keys read stay in use this long (Microsoft: 24 hours).
const KEEP_FOR: Duration = Duration::from_secs(24 * 3600);
/// Refreshes for unknown key ids allowed per minute, whatever the ids.
const UNKNOWN_KID_REFRESHES_PER_MINUTE: usize = 5;
/// A key id still unknown after a refresh does not cause another one for this long.
const MISSING_KID_MEMORY: Duration = Duration::from_secs(300);
/// Unknown key ids remembered at most (the oldest go first).
const MISSING_KIDS_KEPT: usize = 1000;
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
    state: RwLock<CacheState>,
}

/// The keys last read, when, and what decides whether an unknown `kid` may cause a read.
#[derive(Default)]
struct CacheState {
    keys: Option<(JwkSet, Instant)>,
    policy: RefreshPolicy,
}

/// When to read the keys again (kept apart from the I/O so that it can be tested alone).
#[derive(Debug, Default)]
struct RefreshPolicy {
    /// Refreshes caused by unknown key ids in the last minute.
    forced: VecDeque<Instant>,
    /// Key ids a refresh did not find, and when.
    missing: HashMap<String, Instant>,
}

impl RefreshPolicy {
    /// Whether to read the keys now, given when they were last read and whether they hold
    /// `kid`. Counts a refresh caused by an unknown `kid` against the rate limit.
    fn should_fetch(&mut self, now: Instant, kid: &str, cached: Option<(bool, Instant)>) -> bool {
        let Some((has_kid, fetched)) = cached else {
            return true;
        };
        if now.duration_since(fetched) >= REFRESH_EVERY {
            return true;
        }
        if has_kid {
            return false;
        }
        self.forced
            .retain(|at| now.duration_since(*at) < Duration::from_secs(60));
        let recently_missing = self
            .missing
            .get(kid)
            .is_some_and(|at| now.duration_since(*at) < MISSING_KID_MEMORY);
        if recently_missing || self.forced.len() >= UNKNOWN_KID_REFRESHES_PER_MINUTE {
            return false;
        }
        self.forced.push_back(now);
        true
    }

    /// Remembers a `kid` the keys still lack after a refresh.
    fn note_missing(&mut self, now: Instant, kid: &str) {
        self.missing
            .retain(|_, at| now.duration_since(*at) < MISSING_KID_MEMORY);
        if self.missing.len() >= MISSING_KIDS_KEPT {
            let oldest = self.missing.iter().min_by_key(|(_, at)| **at);
            if let Some(oldest) = oldest.map(|(kid, _)| kid.clone()) {
                self.missing.remove(&oldest);
            }
        }
        self.missing.insert(kid.to_string(), now);
    }
}

fn find(set: &JwkSet, kid: &str) -> Option<DecodingKey> {
    set.find(kid)
        .and_then(|jwk| DecodingKey::from_jwk(jwk).ok())
}

impl JwksCache {
    pub(super) fn new(url: Url) -> Self {
        Self {
            url,
            state: RwLock::new(CacheState::default()),
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
        if let Some((set, fetched)) = self.state.read().await.keys.as_ref()
            && fetched.elapsed() < REFRESH_EVERY
            && let Some(key) = find(set, kid)
        {
            return Ok(key);
        }
        // One reader at a time past this point: concurrent sign-ins share one refresh.
        let mut state = self.state.write().await;
        let now = Instant::now();
        let cached = state
            .keys
            .as_ref()
            .map(|(set, fetched)| (find(set, kid).is_some(), *fetched));
        if state.policy.should_fetch(now, kid, cached) {
            match self.fetch(http).await {
                Ok(set) => state.keys = Some((set, now)),
                // The last keys read stay good for a while: an IdP hiccup fails no sign-in.
                Err(e) if cached.is_some_and(|(_, at)| now.duration_since(at) < KEEP_FOR) => {
                    tracing::warn!(error = %e, "refreshing the IdP's signing keys failed; using the keys read before");
                }
                Err(e) => return Err(e),
            }
        }
        let key = state.keys.as_ref().and_then(|(set, _)| find(set, kid));
        if key.is_none() {
            state.policy.note_missing(now, kid);
        }
        key.ok_or_else(|| IdpError::Protocol("id_token signed with an unknown key".into()))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_keys_are_reread_hourly_and_unknown_ones_at_once() {
        let mut policy = RefreshPolicy::default();
        let start = Instant::now();
        assert!(policy.should_fetch(start, "a", None), "nothing read yet");
        assert!(!policy.should_fetch(start, "a", Some((true, start))));
        let later = start + REFRESH_EVERY;
        assert!(policy.should_fetch(later, "a", Some((true, start))));
        // A key rolled in a second after the keys were read: read them again at once.
        let soon = start + Duration::from_secs(1);
        assert!(policy.should_fetch(soon, "b", Some((false, start))));
    }

    #[test]
    fn unknown_keys_cause_a_bounded_number_of_reads() {
        let mut policy = RefreshPolicy::default();
        let start = Instant::now();
        let read = Some((false, start));
        let mut reads = 0;
        for i in 0..50 {
            if policy.should_fetch(start, &format!("kid-{i}"), read) {
                reads += 1;
            }
        }
        assert_eq!(reads, UNKNOWN_KID_REFRESHES_PER_MINUTE, "per minute");
        let next_minute = start + Duration::from_secs(61);
        assert!(policy.should_fetch(next_minute, "another", read));

        // A kid still missing after a read does not cause another for a while.
        let mut policy = RefreshPolicy::default();
        assert!(policy.should_fetch(start, "ghost", read));
        policy.note_missing(start, "ghost");
        assert!(!policy.should_fetch(start + Duration::from_secs(10), "ghost", read));
        assert!(policy.should_fetch(start + MISSING_KID_MEMORY, "ghost", read));
    }
}
