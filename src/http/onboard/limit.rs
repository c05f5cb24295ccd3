//! Sign-in steps per client address (`SAMVAULT_ONBOARD_RATE`): each start of a consent or
//! revoke sign-in and each callback takes one step from its address's budget, refilled at the
//! rate a minute, before anything else is read. A callback can make samvault redeem a code at
//! the IdP with the app's credentials, and anyone can start a sign-in, so without this one
//! address could make the IdP see the app's credentials as often as it likes. In memory, per
//! process: behind a load balancer each replica keeps its own budgets.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::ops::throttle::owner;

/// Addresses tracked at most (a few MB). An address whose budget is whole needs no entry, so
/// only a flood from more addresses than this within a minute reaches it; addresses beyond it
/// are then not limited.
const MAX_TRACKED: usize = 100_000;

pub struct OnboardLimit {
    per_minute: f64,
    budgets: Mutex<HashMap<IpAddr, Budget>>,
}

struct Budget {
    left: f64,
    updated: Instant,
    /// Whether the last step was refused (so a refusal is logged once per episode).
    refusing: bool,
}

impl OnboardLimit {
    /// A budget of `per_minute` steps per address, refilled as fast.
    pub fn new(per_minute: u32) -> Self {
        Self {
            per_minute: f64::from(per_minute.max(1)),
            budgets: Mutex::default(),
        }
    }

    /// Takes one step for `address`; `Err` says how long until the next one is possible.
    pub fn take(&self, address: IpAddr) -> Result<(), Duration> {
        self.take_at(address, Instant::now())
    }

    fn refill(&self, budget: &mut Budget, now: Instant) {
        let earned = now.saturating_duration_since(budget.updated).as_secs_f64() / 60.0;
        budget.left = (budget.left + earned * self.per_minute).min(self.per_minute);
        budget.updated = now;
    }

    fn take_at(&self, address: IpAddr, now: Instant) -> Result<(), Duration> {
        let owner = owner(address);
        let mut budgets = self.budgets.lock().unwrap_or_else(|e| e.into_inner());
        if !budgets.contains_key(&owner) && budgets.len() >= MAX_TRACKED {
            budgets.retain(|_, budget| {
                self.refill(budget, now);
                budget.left < self.per_minute
            });
            if budgets.len() >= MAX_TRACKED {
                tracing::warn!(tracked = budgets.len(), client = %owner, "onboarding limit full: this address is not limited");
                return Ok(());
            }
        }
        let budget = budgets.entry(owner).or_insert(Budget {
            left: self.per_minute,
            updated: now,
            refusing: false,
        });
        self.refill(budget, now);
        if budget.left < 1.0 {
            if !budget.refusing {
                budget.refusing = true;
                tracing::warn!(client = %owner, "too many onboarding sign-in steps from this address: refusing them for now");
            }
            let wait = (1.0 - budget.left) * 60.0 / self.per_minute;
            return Err(Duration::from_secs_f64(wait));
        }
        budget.left -= 1.0;
        budget.refusing = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_takes_its_budget_then_waits_for_the_refill() {
        let limit = OnboardLimit::new(6);
        let (mallory, alice) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let start = Instant::now();
        for _ in 0..6 {
            assert!(limit.take_at(mallory, start).is_ok());
        }
        let wait = limit.take_at(mallory, start).unwrap_err();
        assert_eq!(wait, Duration::from_secs(10), "one step every 10 s");
        assert!(
            limit.take_at(alice, start).is_ok(),
            "budgets are per address"
        );
        let later = start + Duration::from_secs(10);
        assert!(limit.take_at(mallory, later).is_ok());
        assert!(limit.take_at(mallory, later).is_err());
        // The budget never grows beyond one minute's steps.
        let much_later = start + Duration::from_secs(3600);
        for _ in 0..6 {
            assert!(limit.take_at(mallory, much_later).is_ok());
        }
        assert!(limit.take_at(mallory, much_later).is_err());
    }

    #[test]
    fn an_ipv6_network_shares_one_budget() {
        let limit = OnboardLimit::new(2);
        let now = Instant::now();
        for host in ["2001:db8:1:2::1", "2001:db8:1:2::2"] {
            assert!(limit.take_at(host.parse().unwrap(), now).is_ok());
        }
        assert!(
            limit
                .take_at("2001:db8:1:2:ffff::9".parse().unwrap(), now)
                .is_err()
        );
        assert!(
            limit
                .take_at("2001:db8:1:3::1".parse().unwrap(), now)
                .is_ok()
        );
    }

    #[test]
    fn whole_budgets_are_forgotten_when_the_table_is_full() {
        let limit = OnboardLimit::new(1);
        let now = Instant::now();
        let address = |i: usize| IpAddr::from((i as u32).to_be_bytes());
        for i in 0..MAX_TRACKED {
            assert!(limit.take_at(address(i), now).is_ok());
        }
        let later = now + Duration::from_secs(60);
        assert!(limit.take_at(address(MAX_TRACKED), later).is_ok());
        assert_eq!(limit.budgets.lock().unwrap().len(), 1);
    }
}
