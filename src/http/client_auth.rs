//! Integration client authentication (HTTP Basic) with a short in-memory cache, and the
//! per-client rate limiter. Both keep the cached token path free of database round trips.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode, header};
use base64::Engine;
use subtle::ConstantTimeEq;

use super::problem::Problem;
use crate::storage::Db;
use crate::storage::clients::{self, Client};

/// How long a verified `client_id:secret` is trusted without asking the database again,
/// counted from the moment the database was asked. This alone bounds how long a revocation
/// made elsewhere (the CLI, another replica) can go unnoticed, however busy the process is;
/// at thousands of requests per second it still spares all but one lookup a second.
pub const AUTH_CACHE_TTL: Duration = Duration::from_secs(1);
/// How often the number of revocations is read; any change empties the cache, so most
/// revocations are honoured well before the TTL runs out.
pub const REVOCATION_POLL: Duration = Duration::from_millis(100);

/// Waits until every running service must have noticed a revocation just committed:
/// they trust a verified credential for at most [`AUTH_CACHE_TTL`] from the moment they
/// checked it, so returning after that makes "the revocation finished" mean "every
/// service refuses the credential", however loaded they are.
pub async fn wait_for_services_to_notice() {
    let margin = Duration::from_millis(200);
    tokio::time::sleep(AUTH_CACHE_TTL + margin).await;
}

struct Verified {
    digest: [u8; 32],
    client: Arc<Client>,
    at: Instant,
}

pub struct ClientAuth {
    db: Db,
    verified: Mutex<HashMap<String, Verified>>,
    /// Bumped whenever the cache is emptied, so a lookup that raced a revocation does not
    /// put its (possibly stale) answer back.
    generation: std::sync::atomic::AtomicU64,
}

impl ClientAuth {
    pub fn new(db: Db) -> Self {
        Self {
            db,
            verified: Mutex::default(),
            generation: Default::default(),
        }
    }

    /// Forgets a client at once (revocation in this process). Bumps the generation too, so
    /// a lookup that started before the revocation does not put the client back.
    pub fn forget(&self, client_id: &str) {
        let mut verified = self.verified.lock().expect("auth cache lock");
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        verified.remove(client_id);
    }

    /// Watches for revocations made by anyone and empties the cache when one happens.
    pub fn spawn_revocation_watch(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let auth = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut seen = None;
            loop {
                tokio::time::sleep(REVOCATION_POLL).await;
                let Some(auth) = auth.upgrade() else { return };
                match clients::revocation_count(&auth.db).await {
                    Ok(count) => {
                        if seen.is_some_and(|s| s != count) {
                            auth.clear();
                        }
                        seen = Some(count);
                    }
                    // Cannot tell: trust nothing cached until the database answers again.
                    Err(_) => auth.clear(),
                }
            }
        })
    }

    fn clear(&self) {
        let mut verified = self.verified.lock().expect("auth cache lock");
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        verified.clear();
    }

    /// HTTP Basic `client_id:client_secret` (RFC 6749 §2.3.1: both form-urlencoded).
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Arc<Client>, Problem> {
        let (id, secret) = basic_credentials(headers).ok_or_else(Problem::invalid_client)?;
        let digest = clients::digest(&secret);
        if let Some(v) = self.verified.lock().expect("auth cache lock").get(&id)
            && v.at.elapsed() < AUTH_CACHE_TTL
            && bool::from(v.digest.ct_eq(&digest))
        {
            return Ok(v.client.clone());
        }
        let asked = Instant::now();
        let generation = self.generation.load(std::sync::atomic::Ordering::SeqCst);
        match clients::authenticate(&self.db, &id, &secret).await {
            Ok(Some(client)) => {
                let client = Arc::new(client);
                let mut verified = self.verified.lock().expect("auth cache lock");
                if self.generation.load(std::sync::atomic::Ordering::SeqCst) == generation {
                    verified.retain(|_, v| v.at.elapsed() < AUTH_CACHE_TTL);
                    verified.insert(
                        id,
                        Verified {
                            digest,
                            client: client.clone(),
                            at: asked,
                        },
                    );
                }
                Ok(client)
            }
            Ok(None) => Err(Problem::invalid_client()),
            Err(e) => {
                tracing::error!(error = %e, "client authentication failed on storage");
                Err(Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "storage_unavailable",
                    "the database is unavailable; retry later",
                )
                .retry_after(Duration::from_secs(5)))
            }
        }
    }
}

fn basic_credentials(headers: &HeaderMap) -> Option<(String, zeroize::Zeroizing<String>)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") || encoded.len() > 1024 {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = zeroize::Zeroizing::new(String::from_utf8(decoded).ok()?);
    let (id, secret) = decoded.split_once(':')?;
    let decode = |s: &str| {
        url::form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
    };
    let id = decode(id)?;
    let secret = zeroize::Zeroizing::new(decode(secret)?);
    (!id.is_empty() && !secret.is_empty()).then_some((id, secret))
}

/// Token buckets per client: `rate_limit_per_minute` requests per minute, bursts up to that
/// many. Per process; with N replicas behind a balancer a client gets up to N times the rate.
#[derive(Default)]
pub struct RateLimiter {
    buckets: Mutex<HashMap<String, Bucket>>,
}

struct Bucket {
    tokens: f64,
    last: Instant,
}

impl RateLimiter {
    /// `Err(wait)` when the client must wait before its next request.
    pub fn check(&self, client_id: &str, per_minute: i64) -> Result<(), Duration> {
        let capacity = per_minute.max(1) as f64;
        let per_second = capacity / 60.0;
        let mut buckets = self.buckets.lock().expect("rate limiter lock");
        let now = Instant::now();
        if !buckets.contains_key(client_id) {
            buckets.insert(
                client_id.to_string(),
                Bucket {
                    tokens: capacity,
                    last: now,
                },
            );
        }
        let bucket = buckets.get_mut(client_id).expect("inserted above");
        bucket.tokens = (bucket.tokens
            + now.duration_since(bucket.last).as_secs_f64() * per_second)
            .min(capacity);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / per_second)
                .max(Duration::from_secs(1)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_allows_the_rate_then_refuses_with_the_wait() {
        let limiter = RateLimiter::default();
        for _ in 0..3 {
            assert!(limiter.check("a", 3).is_ok());
        }
        let wait = limiter.check("a", 3).unwrap_err();
        assert!(
            wait >= Duration::from_secs(1) && wait <= Duration::from_secs(20),
            "{wait:?}"
        );
        assert!(limiter.check("b", 3).is_ok(), "buckets are per client");
    }

    #[test]
    fn basic_credentials_are_parsed_strictly() {
        let header = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, v.parse().unwrap());
            h
        };
        let encoded = base64::engine::general_purpose::STANDARD.encode("id%3A1:s%2Bx");
        let (id, secret) = basic_credentials(&header(&format!("Basic {encoded}"))).unwrap();
        assert_eq!((id.as_str(), secret.as_str()), ("id:1", "s+x"));
        assert!(basic_credentials(&header("Bearer abc")).is_none());
        assert!(basic_credentials(&header("Basic !!!")).is_none());
        let empty = base64::engine::general_purpose::STANDARD.encode("id:");
        assert!(basic_credentials(&header(&format!("Basic {empty}"))).is_none());
        assert!(basic_credentials(&HeaderMap::new()).is_none());
    }
}
