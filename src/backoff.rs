//! How long to wait before trying again: one exponential backoff for every retry schedule
//! (grant redemptions, Key Vault calls, the rotation pause, sign-in lockouts, webhooks).
//!
//! A leaf module: it depends on nothing in the crate, so every layer may use it.

use std::time::Duration;

/// `base × factor^(attempt − 1)`, at most `cap`, then spread by ±`jitter`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    /// The wait after the first failure.
    pub base: Duration,
    /// How much each further failure multiplies the wait by.
    pub factor: u32,
    /// The longest wait, before jitter.
    pub cap: Duration,
    /// The fraction by which a wait is randomly shortened or lengthened (0.2: ±20 %), so that
    /// many waiters that failed together do not retry in step. 0: exact waits.
    pub jitter: f64,
}

impl Backoff {
    /// Exact waits, no cap: add [`Backoff::capped_at`] and [`Backoff::with_jitter`] as needed.
    pub const fn new(base: Duration, factor: u32) -> Self {
        Self {
            base,
            factor,
            cap: Duration::MAX,
            jitter: 0.0,
        }
    }

    pub const fn capped_at(self, cap: Duration) -> Self {
        Self { cap, ..self }
    }

    pub const fn with_jitter(self, jitter: f64) -> Self {
        Self { jitter, ..self }
    }

    /// The wait after the `attempt`-th consecutive failure (1-based; less counts as 1), before
    /// jitter.
    pub fn nominal(&self, attempt: i64) -> Duration {
        let exponent = u32::try_from(attempt.saturating_sub(1).max(0)).unwrap_or(u32::MAX);
        // Beyond what a `Duration` holds is beyond any cap.
        self.factor
            .checked_pow(exponent)
            .and_then(|growth| self.base.checked_mul(growth))
            .map_or(self.cap, |wait| wait.min(self.cap))
    }

    /// The wait after the `attempt`-th consecutive failure, jitter included.
    pub fn delay(&self, attempt: i64) -> Duration {
        let nominal = self.nominal(attempt);
        if self.jitter <= 0.0 {
            return nominal;
        }
        use rand::Rng;
        let spread = rand::rng().random_range(1.0 - self.jitter..=1.0 + self.jitter);
        nominal.mul_f64(spread)
    }

    /// What the server asked for (`Retry-After`), exactly, when it did: asking again sooner
    /// only prolongs throttling. Otherwise [`Backoff::delay`].
    pub fn after(&self, attempt: i64, retry_after: Option<Duration>) -> Duration {
        retry_after.unwrap_or_else(|| self.delay(attempt))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    fn secs(backoff: &Backoff, attempts: std::ops::RangeInclusive<i64>) -> Vec<u64> {
        attempts.map(|a| backoff.delay(a).as_secs()).collect()
    }

    #[test]
    fn grows_by_the_factor_up_to_the_cap() {
        let doubling = Backoff::new(SECOND, 2).capped_at(10 * SECOND);
        assert_eq!(secs(&doubling, 1..=6), [1, 2, 4, 8, 10, 10]);
        let tripling = Backoff::new(SECOND, 3);
        assert_eq!(secs(&tripling, 1..=4), [1, 3, 9, 27]);
    }

    #[test]
    fn the_first_attempt_waits_the_base_and_huge_ones_the_cap() {
        let b = Backoff::new(5 * SECOND, 2).capped_at(3600 * SECOND);
        for attempt in [i64::MIN, -1, 0, 1] {
            assert_eq!(b.delay(attempt), 5 * SECOND, "{attempt}");
        }
        for attempt in [13, 33, 64, 1000, i64::MAX] {
            assert_eq!(b.delay(attempt), 3600 * SECOND, "{attempt}");
        }
        // Without a cap, growth stops at the longest `Duration` instead of overflowing.
        assert_eq!(Backoff::new(SECOND, 2).delay(i64::MAX), Duration::MAX);
    }

    #[test]
    fn jitter_spreads_waits_both_ways_within_its_fraction() {
        let b = Backoff::new(100 * SECOND, 2).with_jitter(0.2);
        let waits: Vec<f64> = (0..1000).map(|_| b.delay(1).as_secs_f64()).collect();
        assert!(
            waits.iter().all(|w| (80.0..=120.0).contains(w)),
            "{waits:?}"
        );
        assert!(waits.iter().any(|w| *w < 85.0));
        assert!(waits.iter().any(|w| *w > 115.0));
        assert_eq!(b.nominal(2), 200 * SECOND);
    }

    #[test]
    fn a_servers_retry_after_is_honoured_exactly() {
        let b = Backoff::new(SECOND, 2).with_jitter(0.2);
        assert_eq!(b.after(7, Some(30 * SECOND)), 30 * SECOND);
        assert_eq!(b.after(1, Some(Duration::ZERO)), Duration::ZERO);
        let own = b.after(1, None);
        assert!((800..=1200).contains(&own.as_millis()), "{own:?}");
    }
}
