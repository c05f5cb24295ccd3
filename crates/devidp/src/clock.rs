//! The simulator's clock: wall time plus an offset tests can only move forward.
//!
//! Every expiry (codes, 90-day refresh token inactivity, JWT `exp`) is judged on
//! this clock, so a test can jump 91 days without sleeping. The offset is an
//! atomic so reading the time never takes the state lock.

use std::sync::atomic::{AtomicI64, Ordering};

use time::{Duration, OffsetDateTime, format_description::well_known::Rfc3339};

#[derive(Debug, Default)]
pub struct SimClock {
    offset_ms: AtomicI64,
}

impl SimClock {
    pub fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc() + Duration::milliseconds(self.offset_ms.load(Ordering::Relaxed))
    }

    pub fn advance(&self, by: Duration) {
        let ms = i64::try_from(by.whole_milliseconds()).unwrap_or(i64::MAX / 2);
        self.offset_ms.fetch_add(ms, Ordering::Relaxed);
    }

    pub fn offset(&self) -> Duration {
        Duration::milliseconds(self.offset_ms.load(Ordering::Relaxed))
    }

    pub fn reset(&self) {
        self.offset_ms.store(0, Ordering::Relaxed);
    }
}

/// `2016-01-09 02:02:12Z`, the `timestamp` field of Entra's error bodies.
pub fn entra_timestamp(t: OffsetDateTime) -> String {
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// .NET round-trip format (`2019-01-02T09:19:53.5422744Z`) used inside AADSTS messages.
pub fn iso_o(t: OffsetDateTime) -> String {
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:07}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.nanosecond() / 100
    )
}

pub fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        let t = OffsetDateTime::from_unix_timestamp_nanos(1_546_421_993_542_274_400).unwrap();
        assert_eq!(iso_o(t), "2019-01-02T09:39:53.5422744Z");
        assert_eq!(entra_timestamp(t), "2019-01-02 09:39:53Z");
    }

    #[test]
    fn advance_moves_forward() {
        let c = SimClock::default();
        let before = c.now();
        c.advance(Duration::days(91));
        assert!(c.now() - before >= Duration::days(91));
    }
}
