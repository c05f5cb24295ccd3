//! Key Vault calls with a bounded retry: integrations wait on the request path, so throttling
//! (429 with `Retry-After`) and outages get a few hundred milliseconds of backoff, then a clear
//! failure the token API turns into 503 `key_provider_unavailable`. The SDK's own retry policy
//! is off: it honours any `Retry-After`, however long.

use std::future::Future;
use std::time::Duration;

use azure_core::error::ErrorKind;
use azure_core::http::headers::{HeaderName, Headers};

use crate::backoff::Backoff;

/// How long one Key Vault operation may take in all.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    pub attempts: u32,
    /// Sleeping between attempts, `Retry-After` included; a longer `Retry-After` is not waited
    /// for: the operation fails at once (asking again sooner would only prolong throttling).
    pub total_wait: Duration,
    /// Everything, network included.
    pub deadline: Duration,
}

/// Token requests, consents and rotations.
pub const REQUEST_PATH: Budget = Budget {
    attempts: 3,
    total_wait: Duration::from_millis(400),
    deadline: Duration::from_secs(5),
};

/// `/readyz`: one quick look.
pub const PROBE: Budget = Budget {
    attempts: 1,
    total_wait: Duration::ZERO,
    deadline: Duration::from_secs(2),
};

/// Why an operation failed, as far as deciding and telling goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The HTTP status from Key Vault or its token endpoint, when there was an answer.
    pub status: Option<u16>,
    /// Key Vault's `error.code` (`Forbidden`, `Throttled`, `KeyNotFound`, …).
    pub code: Option<String>,
    pub message: String,
    pub retry_after: Option<Duration>,
    /// Worth asking again: throttling, 5xx, timeouts, connection failures.
    pub transient: bool,
    /// The status came from the token endpoint (the credential), not from Key Vault.
    pub from_credential: bool,
}

const RETRY_AFTER_MS: HeaderName = HeaderName::from_static("retry-after-ms");
const X_MS_RETRY_AFTER_MS: HeaderName = HeaderName::from_static("x-ms-retry-after-ms");
const RETRY_AFTER: HeaderName = HeaderName::from_static("retry-after");

fn retry_after(headers: &Headers) -> Option<Duration> {
    let millis = [RETRY_AFTER_MS, X_MS_RETRY_AFTER_MS]
        .iter()
        .find_map(|h| headers.get_optional_str(h)?.trim().parse::<u64>().ok())
        .map(Duration::from_millis);
    millis.or_else(|| {
        let seconds = headers
            .get_optional_str(&RETRY_AFTER)?
            .trim()
            .parse::<u64>()
            .ok()?;
        Some(Duration::from_secs(seconds))
    })
}

fn transient_status(status: u16) -> bool {
    matches!(status, 408 | 429 | 500 | 502 | 503 | 504)
}

impl Failure {
    pub fn from_sdk(error: &azure_core::Error) -> Failure {
        let from_credential = matches!(error.kind(), ErrorKind::Credential);
        // The credential wraps what its token endpoint said; look through to it.
        let mut cause: Option<&azure_core::Error> = Some(error);
        let mut connection_trouble = false;
        while let Some(e) = cause {
            match e.kind() {
                ErrorKind::HttpResponse {
                    status,
                    error_code,
                    raw_response,
                } => {
                    let status = u16::from(*status);
                    return Failure {
                        status: Some(status),
                        code: error_code.clone(),
                        message: e.to_string(),
                        retry_after: raw_response.as_ref().and_then(|r| retry_after(r.headers())),
                        transient: transient_status(status),
                        from_credential,
                    };
                }
                ErrorKind::Io | ErrorKind::Connection => connection_trouble = true,
                _ => {}
            }
            cause = std::error::Error::source(e).and_then(|s| s.downcast_ref());
        }
        Failure {
            status: None,
            code: None,
            message: error.to_string(),
            retry_after: None,
            transient: connection_trouble,
            from_credential,
        }
    }

    fn timed_out(deadline: Duration) -> Failure {
        Failure {
            status: None,
            code: None,
            message: format!("no answer within {} ms", deadline.as_millis()),
            retry_after: None,
            transient: true,
            from_credential: false,
        }
    }
}

/// 50 ms, then 150 ms, … with ±20 % jitter, so replicas do not retry in step.
const BACKOFF: Backoff = Backoff::new(Duration::from_millis(50), 3).with_jitter(0.2);

/// Runs `operation` until it succeeds, fails for good, or the budget is spent.
pub async fn call<T, F, Fut>(budget: Budget, mut operation: F) -> Result<T, Failure>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = azure_core::Result<T>>,
{
    let attempts = async {
        let mut waited = Duration::ZERO;
        let mut attempt = 1;
        loop {
            let failure = match operation().await {
                Ok(value) => return Ok(value),
                Err(e) => Failure::from_sdk(&e),
            };
            if !failure.transient || attempt >= budget.attempts {
                return Err(failure);
            }
            let wait = BACKOFF.after(attempt.into(), failure.retry_after);
            if waited + wait > budget.total_wait {
                return Err(failure);
            }
            tokio::time::sleep(wait).await;
            waited += wait;
            attempt += 1;
        }
    };
    tokio::time::timeout(budget.deadline, attempts)
        .await
        .unwrap_or_else(|_| Err(Failure::timed_out(budget.deadline)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use azure_core::http::{RawResponse, StatusCode};
    use std::sync::atomic::{AtomicU32, Ordering};

    fn http_error(status: u16, headers: &[(&'static str, &str)]) -> azure_core::Error {
        let mut h = Headers::new();
        for (name, value) in headers {
            h.insert(*name, value.to_string());
        }
        let raw = RawResponse::from_bytes(StatusCode::from(status), h, Vec::new());
        azure_core::Error::with_message(
            ErrorKind::HttpResponse {
                status: StatusCode::from(status),
                error_code: Some("Throttled".into()),
                raw_response: Some(Box::new(raw)),
            },
            "throttled",
        )
    }

    /// The schedule this call site has always had: 50 ms, 150 ms, 450 ms, each ±20 %.
    #[test]
    fn backoff_triples_from_50_ms_with_a_fifth_of_jitter() {
        let backoff = |attempt| BACKOFF.delay(attempt);
        for (attempt, nominal) in [(1, 50.0), (2, 150.0), (3, 450.0)] {
            let waits: Vec<f64> = (0..500)
                .map(|_| backoff(attempt).as_secs_f64() * 1000.0)
                .collect();
            let (low, high) = (nominal * 0.8 - 1.0, nominal * 1.2);
            assert!(
                waits.iter().all(|w| (low..=high).contains(w)),
                "{attempt}: {waits:?}"
            );
            assert!(
                waits.iter().any(|w| *w < nominal * 0.9),
                "spread below: {attempt}"
            );
            assert!(
                waits.iter().any(|w| *w > nominal * 1.1),
                "spread above: {attempt}"
            );
        }
    }

    #[test]
    fn retry_after_is_read_in_every_form_key_vault_uses() {
        let f = Failure::from_sdk(&http_error(429, &[("retry-after", "3")]));
        assert_eq!(f.retry_after, Some(Duration::from_secs(3)));
        assert!(f.transient);
        let f = Failure::from_sdk(&http_error(503, &[("retry-after-ms", "120")]));
        assert_eq!(f.retry_after, Some(Duration::from_millis(120)));
        let f = Failure::from_sdk(&http_error(403, &[]));
        assert_eq!((f.status, f.transient), (Some(403), false));
    }

    #[test]
    fn a_credential_failure_is_judged_by_what_its_token_endpoint_said() {
        let rejected = azure_core::Error::with_error(
            ErrorKind::Credential,
            http_error(401, &[]),
            "ClientSecretCredential authentication failed",
        );
        let f = Failure::from_sdk(&rejected);
        assert_eq!(
            (f.status, f.transient, f.from_credential),
            (Some(401), false, true)
        );
        let unreachable = azure_core::Error::with_error(
            ErrorKind::Credential,
            azure_core::Error::with_message(ErrorKind::Connection, "refused"),
            "ClientSecretCredential authentication failed",
        );
        assert!(Failure::from_sdk(&unreachable).transient);
    }

    #[tokio::test]
    async fn throttling_is_retried_within_the_budget() {
        let calls = AtomicU32::new(0);
        let result = call(REQUEST_PATH, || {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < 2 {
                    Err(http_error(429, &[("retry-after", "0")]))
                } else {
                    Ok("unwrapped")
                }
            }
        })
        .await;
        assert_eq!(result.unwrap(), "unwrapped");
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_retry_after_beyond_the_budget_fails_at_once() {
        let calls = AtomicU32::new(0);
        let started = std::time::Instant::now();
        let result: Result<(), _> = call(REQUEST_PATH, || {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Err(http_error(429, &[("retry-after", "30")])) }
        })
        .await;
        let failure = result.unwrap_err();
        assert_eq!(failure.retry_after, Some(Duration::from_secs(30)));
        assert_eq!(calls.load(Ordering::SeqCst), 1, "no second request");
        assert!(started.elapsed() < Duration::from_millis(100));
    }

    #[tokio::test]
    async fn an_outage_gives_up_after_the_bounded_backoff() {
        let calls = AtomicU32::new(0);
        let started = std::time::Instant::now();
        let result: Result<(), _> = call(REQUEST_PATH, || {
            calls.fetch_add(1, Ordering::SeqCst);
            async {
                Err(azure_core::Error::with_message(
                    ErrorKind::Connection,
                    "refused",
                ))
            }
        })
        .await;
        assert!(result.unwrap_err().transient);
        assert_eq!(calls.load(Ordering::SeqCst), REQUEST_PATH.attempts);
        assert!(started.elapsed() <= REQUEST_PATH.total_wait + Duration::from_millis(100));
    }

    #[tokio::test]
    async fn a_refusal_is_not_retried() {
        let calls = AtomicU32::new(0);
        let result: Result<(), _> = call(REQUEST_PATH, || {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Err(http_error(403, &[])) }
        })
        .await;
        assert_eq!(result.unwrap_err().status, Some(403));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_hanging_vault_is_cut_off_at_the_deadline() {
        let budget = Budget {
            deadline: Duration::from_millis(50),
            ..PROBE
        };
        let result: Result<(), _> =
            call(budget, std::future::pending::<azure_core::Result<()>>).await;
        let failure = result.unwrap_err();
        assert!(
            failure.transient && failure.message.contains("50 ms"),
            "{failure:?}"
        );
    }
}
