//! Partner Center's rate limit for the Control Panel Vendor APIs: 50 requests per second per
//! application id (Microsoft's "Control Panel Vendor APIs"), as a sliding one-second window.
//!
//! A request is admitted when fewer than the limit were admitted in the second before it,
//! judged on the monotonic clock with nanosecond precision: a client that never sends more
//! than 50 in any second is never refused, whatever the phase of its second. Refused requests
//! do not count, so a client that waits `Retry-After` gets in.
//!
//! Requests are judged at their arrival (the first thing a call does), and the window is
//! shortened by [`JITTER`], one pacing interval: a client that sends no sooner than 20 ms
//! after its previous request by its own clock is then never refused, even when each answer
//! is slow (request i was stamped before its answer left, so request i + 50, sent at least
//! 49 intervals after that answer, arrives at least 980 ms after it). The limit stays within
//! 2% of Microsoft's.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Requests per window and application id.
pub const LIMIT: usize = 50;
/// The window: one second.
pub const WINDOW: Duration = Duration::from_secs(1);
/// How late a request may be handled without counting against a well-paced client.
pub const JITTER: Duration = Duration::from_millis(20);

#[derive(Debug, Default)]
pub struct SlidingWindow {
    /// Application id → when its admitted requests of the last window arrived, oldest first.
    admitted: HashMap<String, VecDeque<Instant>>,
}

impl SlidingWindow {
    /// Admits a request of `app` that arrived at `at`, or tells how long until one would be
    /// admitted. Concurrent calls may be judged a little out of arrival order; the log stays
    /// sorted so the oldest requests leave it first.
    pub fn admit(&mut self, app: &str, at: Instant) -> Result<(), Duration> {
        let span = WINDOW - JITTER;
        let log = self.admitted.entry(app.to_ascii_lowercase()).or_default();
        while log
            .front()
            .is_some_and(|&t| at.saturating_duration_since(t) >= span)
        {
            log.pop_front();
        }
        if log.len() < LIMIT {
            let place = log.partition_point(|&t| t <= at);
            log.insert(place, at);
            return Ok(());
        }
        let oldest = log.front().copied().unwrap_or(at);
        Err(span.saturating_sub(at.saturating_duration_since(oldest)))
    }
}

/// `Retry-After` in whole seconds for a wait: rounded up, at least one.
pub fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn fifty_a_second_pass_and_the_fifty_first_waits() {
        let mut limiter = SlidingWindow::default();
        let start = Instant::now();
        for i in 0..50 {
            assert!(limiter.admit("app", start + ms(i)).is_ok(), "request {i}");
        }
        let wait = limiter.admit("app", start + ms(100)).unwrap_err();
        assert_eq!(wait, WINDOW - JITTER - ms(100));
        assert_eq!(retry_after_secs(wait), 1);
        assert!(
            limiter.admit("other-app", start + ms(100)).is_ok(),
            "per application id"
        );
        assert!(
            limiter.admit("APP", start + ms(100)).is_err(),
            "ids are case-insensitive"
        );
        assert!(
            limiter.admit("app", start + WINDOW - JITTER).is_ok(),
            "the first left"
        );
    }

    #[test]
    fn a_client_pacing_exactly_fifty_a_second_is_never_refused() {
        let mut limiter = SlidingWindow::default();
        let start = Instant::now();
        for i in 0..500u64 {
            // Every 20 ms, each handled up to JITTER late and in no particular order.
            let late = ms((i * 7919) % (JITTER.as_millis() as u64));
            assert!(
                limiter.admit("app", start + ms(20 * i) + late).is_ok(),
                "request {i}"
            );
        }
    }

    #[test]
    fn requests_judged_out_of_order_keep_the_log_sorted() {
        let mut limiter = SlidingWindow::default();
        let start = Instant::now();
        limiter.admit("app", start + ms(10)).unwrap();
        limiter.admit("app", start).unwrap();
        for i in 2..50 {
            limiter.admit("app", start + ms(10 + i)).unwrap();
        }
        assert!(limiter.admit("app", start + ms(970)).is_err());
        // The one that arrived first leaves first.
        assert!(limiter.admit("app", start + WINDOW - JITTER).is_ok());
    }

    #[test]
    fn a_refused_request_does_not_count() {
        let mut limiter = SlidingWindow::default();
        let start = Instant::now();
        for _ in 0..50 {
            limiter.admit("app", start).unwrap();
        }
        for i in 1..100 {
            assert!(limiter.admit("app", start + ms(i)).is_err());
        }
        assert!(limiter.admit("app", start + WINDOW).is_ok());
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(ms(1500)), 2);
        assert_eq!(retry_after_secs(ms(2000)), 2);
    }
}
