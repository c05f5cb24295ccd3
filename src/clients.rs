//! Integration clients at run time: credential checks with a short in-memory cache, the
//! per-client rate limiter, and how long a revocation takes to reach every running service.
//! Both the cache and the limiter keep the cached token path free of database round trips.
//! The HTTP layer reads the credentials off the request (`http::client_auth`); the CLI and
//! the dashboard wait on [`wait_for_services_to_notice`] after a revocation.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use subtle::ConstantTimeEq;

use crate::storage::clients::{self, Client};
use crate::storage::{Db, StorageError};

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

/// Why presented credentials were not accepted.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Unknown client, wrong or revoked secret, revoked client: one answer for all.
    #[error("client authentication failed")]
    InvalidClient,
    #[error(transparent)]
    Storage(#[from] StorageError),
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
    generation: AtomicU64,
}

impl ClientAuth {
    pub fn new(db: Db) -> Self {
        Self {
            db,
            verified: Mutex::default(),
            generation: AtomicU64::default(),
        }
    }

    /// Forgets a client at once (revocation in this process). Bumps the generation too, so
    /// a lookup that started before the revocation does not put the client back.
    pub fn forget(&self, client_id: &str) {
        let mut verified = self.verified.lock().expect("auth cache lock");
        self.generation.fetch_add(1, Ordering::SeqCst);
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
        self.generation.fetch_add(1, Ordering::SeqCst);
        verified.clear();
    }

    /// The client whose `client_id` and `secret` these are, if it may be served.
    pub async fn authenticate(&self, id: &str, secret: &str) -> Result<Arc<Client>, AuthError> {
        let digest = clients::digest(secret);
        if let Some(client) = self.cached(id, &digest) {
            return Ok(client);
        }
        let asked = Instant::now();
        let generation = self.generation.load(Ordering::SeqCst);
        let client = match clients::authenticate(&self.db, id, secret).await {
            Ok(Some(client)) => Arc::new(client),
            Ok(None) => return Err(AuthError::InvalidClient),
            Err(e) => {
                tracing::error!(error = %e, "client authentication failed on storage");
                return Err(e.into());
            }
        };
        let mut verified = self.verified.lock().expect("auth cache lock");
        if self.generation.load(Ordering::SeqCst) == generation {
            verified.retain(|_, v| v.at.elapsed() < AUTH_CACHE_TTL);
            let entry = Verified {
                digest,
                client: client.clone(),
                at: asked,
            };
            verified.insert(id.to_string(), entry);
        }
        Ok(client)
    }

    fn cached(&self, id: &str, digest: &[u8; 32]) -> Option<Arc<Client>> {
        let verified = self.verified.lock().expect("auth cache lock");
        verified
            .get(id)
            .filter(|v| v.at.elapsed() < AUTH_CACHE_TTL && bool::from(v.digest.ct_eq(digest)))
            .map(|v| v.client.clone())
    }
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
        // Looked up by `&str` first: only a client's first request allocates its key.
        if !buckets.contains_key(client_id) {
            let full = Bucket {
                tokens: capacity,
                last: now,
            };
            buckets.insert(client_id.to_string(), full);
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
}
