//! Sign-in attempts per client address: each address has a budget of [`BUDGET`] failures,
//! refilled one every [`REFILL`], and at most [`AT_ONCE`] attempts in progress. An attempt
//! takes a [`Ticket`] before anything is read or checked, so parallel attempts cannot overdraw
//! the budget and a burst from one address costs no database work beyond [`AT_ONCE`]
//! attempts; the ticket is given back if the attempt succeeds or was never checked. In memory,
//! per process: behind a load balancer each replica keeps its own budgets.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failed sign-ins an address may make at once.
pub const BUDGET: u32 = 10;
/// How often an address gets one failed sign-in back.
pub const REFILL: Duration = Duration::from_secs(60);
/// Attempts one address may have in progress: a person sends one form at a time (two with a
/// double click or a second tab).
pub const AT_ONCE: u32 = 2;
/// Addresses tracked at most (some 5 MB). An address whose budget is whole needs no entry, so
/// only a flood from more addresses than this within [`REFILL`] × [`BUDGET`] reaches it;
/// addresses beyond it are then not throttled (the per-account lock still holds).
const MAX_TRACKED: usize = 100_000;

#[derive(Default)]
pub struct AddressThrottle {
    budgets: Mutex<HashMap<IpAddr, Budget>>,
}

struct Budget {
    left: f64,
    updated: Instant,
    in_progress: u32,
    /// Whether the last attempt was refused (so a refusal is logged once per episode).
    refusing: bool,
}

impl Budget {
    fn earned(&self, now: Instant) -> f64 {
        now.saturating_duration_since(self.updated).as_secs_f64() / REFILL.as_secs_f64()
    }

    fn refill(&mut self, now: Instant) {
        self.left = (self.left + self.earned(now)).min(f64::from(BUDGET));
        self.updated = now;
    }

    /// Whether this budget is as good as none (so it can be forgotten).
    fn whole(&self, now: Instant) -> bool {
        self.in_progress == 0 && self.left + self.earned(now) >= f64::from(BUDGET)
    }
}

/// Why an attempt was refused before anything was checked.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Refused {
    /// The address failed too often: its next attempt is possible after this long.
    Failures(Duration),
    /// The address has [`AT_ONCE`] attempts in progress.
    AtOnce,
}

/// One attempt's share of its address's budget: counted as a failure unless given back, and
/// in progress until dropped.
pub struct Ticket<'a> {
    throttle: &'a AddressThrottle,
    owner: Option<IpAddr>,
    refund: bool,
}

impl Ticket<'_> {
    /// The attempt succeeded, or was not checked: it is no failure.
    pub fn give_back(mut self) {
        self.refund = true;
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        let Some(owner) = self.owner else { return };
        let mut budgets = self.throttle.lock();
        if let Some(budget) = budgets.get_mut(&owner) {
            budget.in_progress = budget.in_progress.saturating_sub(1);
            if self.refund {
                budget.left = (budget.left + 1.0).min(f64::from(BUDGET));
            }
        }
    }
}

/// Whom a budget belongs to: an IPv4 address (also when written as IPv4-mapped IPv6), or an
/// IPv6 /64, the smallest network a site is given: one host can use all of it.
pub(crate) fn owner(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
        v4 => v4,
    }
}

impl AddressThrottle {
    /// A ticket for one attempt from `address`, or why there is none now.
    pub fn take(&self, address: IpAddr) -> Result<Ticket<'_>, Refused> {
        self.take_at(address, Instant::now())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Budget>> {
        self.budgets.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn take_at(&self, address: IpAddr, now: Instant) -> Result<Ticket<'_>, Refused> {
        let owner = owner(address);
        let mut budgets = self.lock();
        if !budgets.contains_key(&owner) && budgets.len() >= MAX_TRACKED {
            budgets.retain(|_, budget| !budget.whole(now));
            if budgets.len() >= MAX_TRACKED {
                tracing::warn!(tracked = budgets.len(), client = %owner, "sign-in throttle full: this address is not throttled");
                return Ok(Ticket {
                    throttle: self,
                    owner: None,
                    refund: false,
                });
            }
        }
        let budget = budgets.entry(owner).or_insert(Budget {
            left: f64::from(BUDGET),
            updated: now,
            in_progress: 0,
            refusing: false,
        });
        budget.refill(now);
        if budget.left < 1.0 {
            if !budget.refusing {
                budget.refusing = true;
                tracing::warn!(client = %owner, "too many failed sign-ins from this address: refusing its sign-ins for now");
            }
            return Err(Refused::Failures(REFILL.mul_f64(1.0 - budget.left)));
        }
        if budget.in_progress >= AT_ONCE {
            return Err(Refused::AtOnce);
        }
        budget.left -= 1.0;
        budget.in_progress += 1;
        budget.refusing = false;
        Ok(Ticket {
            throttle: self,
            owner: Some(owner),
            refund: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Takes a ticket and ends the attempt as a failure.
    fn fail(throttle: &AddressThrottle, address: IpAddr, now: Instant) -> Result<(), Refused> {
        throttle.take_at(address, now).map(drop)
    }

    #[test]
    fn an_address_fails_its_budget_then_waits_for_a_refill() {
        let throttle = AddressThrottle::default();
        let (mallory, alice) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let start = Instant::now();
        for _ in 0..BUDGET {
            assert!(fail(&throttle, mallory, start).is_ok());
        }
        let Err(Refused::Failures(wait)) = fail(&throttle, mallory, start) else {
            panic!("the budget is spent");
        };
        assert!(wait > Duration::ZERO && wait <= REFILL, "{wait:?}");
        assert!(
            fail(&throttle, alice, start).is_ok(),
            "budgets are per address"
        );
        // One failed sign-in comes back per REFILL.
        assert!(fail(&throttle, mallory, start + REFILL).is_ok());
        assert!(fail(&throttle, mallory, start + REFILL).is_err());
        // A success gives its attempt back.
        let later = start + REFILL * 2;
        throttle.take_at(mallory, later).unwrap().give_back();
        throttle.take_at(mallory, later).unwrap().give_back();
        assert!(fail(&throttle, mallory, later).is_ok());
        assert!(fail(&throttle, mallory, later).is_err());
    }

    #[test]
    fn an_address_has_at_most_two_attempts_in_progress() {
        let throttle = AddressThrottle::default();
        let address = "192.0.2.9".parse().unwrap();
        let now = Instant::now();
        let first = throttle.take_at(address, now).unwrap();
        let second = throttle.take_at(address, now).unwrap();
        assert_eq!(throttle.take_at(address, now).err(), Some(Refused::AtOnce));
        second.give_back();
        let third = throttle.take_at(address, now).expect("one ended");
        drop((first, third));
        // Two were failures, one was given back.
        let left = throttle.lock()[&address].left;
        assert_eq!(left, f64::from(BUDGET) - 2.0);
    }

    #[test]
    fn an_ipv6_network_shares_one_budget_and_mapped_ipv4_is_ipv4() {
        let throttle = AddressThrottle::default();
        let now = Instant::now();
        for i in 0..BUDGET {
            let host: IpAddr = format!("2001:db8:1:2::{i:x}").parse().unwrap();
            assert!(fail(&throttle, host, now).is_ok());
        }
        let same_64: IpAddr = "2001:db8:1:2:ffff::1".parse().unwrap();
        assert!(fail(&throttle, same_64, now).is_err());
        assert!(fail(&throttle, "2001:db8:1:3::1".parse().unwrap(), now).is_ok());
        for _ in 0..BUDGET {
            assert!(fail(&throttle, "198.51.100.4".parse().unwrap(), now).is_ok());
        }
        let mapped: IpAddr = "::ffff:198.51.100.4".parse().unwrap();
        assert!(fail(&throttle, mapped, now).is_err());
    }

    #[test]
    fn whole_budgets_are_forgotten_when_the_table_is_full() {
        let throttle = AddressThrottle::default();
        let now = Instant::now();
        let address = |i: usize| IpAddr::from((i as u32).to_be_bytes());
        for i in 0..MAX_TRACKED {
            assert!(fail(&throttle, address(i), now).is_ok());
        }
        // A refill later every budget is whole again: the next address finds room.
        assert!(fail(&throttle, address(MAX_TRACKED), now + REFILL).is_ok());
        assert_eq!(throttle.lock().len(), 1);
    }
}
