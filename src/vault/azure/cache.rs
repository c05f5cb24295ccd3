//! Unwrapped data keys kept briefly in memory, so a redemption does not cost a Key Vault call
//! for the key it just wrapped or unwrapped, and partners keep opening while the vault blinks.
//!
//! Entries are found by a SHA-256 of the wrapped key (never by anything derived from the
//! plaintext), live for a fixed time, and the oldest go first when the cache is full. Keys are
//! boxed so the map's rehashing never leaves copies behind, and [`DataKey`] wipes itself when
//! an evicted entry is dropped.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::vault::{DataKey, WrappedKey};

type Fingerprint = [u8; 32];

pub struct DataKeyCache {
    ttl: Duration,
    capacity: usize,
    entries: Mutex<Entries>,
}

#[derive(Default)]
struct Entries {
    keys: HashMap<Fingerprint, (Instant, Box<DataKey>)>,
    /// Insertion order, oldest first; with one TTL for all, also expiry order. A fingerprint
    /// inserted again appears twice: only the occurrence matching the map's time counts.
    order: VecDeque<(Instant, Fingerprint)>,
}

impl Entries {
    /// Drops the oldest entry; returns false when there is none.
    fn pop_oldest(&mut self) -> bool {
        let Some((inserted, fingerprint)) = self.order.pop_front() else {
            return false;
        };
        if self
            .keys
            .get(&fingerprint)
            .is_some_and(|(at, _)| *at == inserted)
        {
            self.keys.remove(&fingerprint);
        }
        true
    }

    fn evict_expired(&mut self, now: Instant, ttl: Duration) {
        while self
            .order
            .front()
            .is_some_and(|(inserted, _)| now.duration_since(*inserted) >= ttl)
        {
            self.pop_oldest();
        }
    }
}

fn fingerprint(wrapped: &WrappedKey) -> Fingerprint {
    let mut hasher = Sha256::new();
    hasher.update(wrapped.kek_id.as_bytes());
    hasher.update([0]);
    hasher.update(&wrapped.bytes);
    hasher.finalize().into()
}

impl DataKeyCache {
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        Self {
            ttl,
            capacity: capacity.max(1),
            entries: Mutex::default(),
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, wrapped: &WrappedKey) -> Option<DataKey> {
        self.get_at(wrapped, Instant::now())
    }

    pub fn insert(&self, wrapped: &WrappedKey, key: &DataKey) {
        self.insert_at(wrapped, key, Instant::now());
    }

    /// Drops (and so wipes) every expired key; the periodic refresh calls it, so keys do not
    /// outlive their TTL in an idle process.
    pub fn evict_expired(&self) {
        self.entries().evict_expired(Instant::now(), self.ttl);
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries().keys.len()
    }

    fn get_at(&self, wrapped: &WrappedKey, now: Instant) -> Option<DataKey> {
        let mut entries = self.entries();
        entries.evict_expired(now, self.ttl);
        entries
            .keys
            .get(&fingerprint(wrapped))
            .map(|(_, key)| key.as_ref().clone())
    }

    fn insert_at(&self, wrapped: &WrappedKey, key: &DataKey, now: Instant) {
        let mut entries = self.entries();
        entries.evict_expired(now, self.ttl);
        let fingerprint = fingerprint(wrapped);
        while entries.keys.len() >= self.capacity && !entries.keys.contains_key(&fingerprint) {
            if !entries.pop_oldest() {
                break;
            }
        }
        entries
            .keys
            .insert(fingerprint, (now, Box::new(key.clone())));
        entries.order.push_back((now, fingerprint));
        // Re-insertions leave stale order entries behind; keep the queue bounded too.
        if entries.order.len() > 2 * self.capacity {
            let Entries { keys, order } = &mut *entries;
            order.retain(|(at, f)| keys.get(f).is_some_and(|(t, _)| t == at));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wrapped(kek_id: &str, byte: u8) -> WrappedKey {
        WrappedKey {
            kek_id: kek_id.into(),
            bytes: vec![byte; 256],
        }
    }

    #[test]
    fn a_cached_key_is_returned_until_its_ttl_then_forgotten() {
        let cache = DataKeyCache::new(Duration::from_secs(300), 10);
        let start = Instant::now();
        let key = DataKey::generate();
        let w = wrapped("azure-keyvault:https://v.vault.azure.net/keys/k/1", 1);
        cache.insert_at(&w, &key, start);

        let hit = cache.get_at(&w, start + Duration::from_secs(299)).unwrap();
        assert_eq!(hit.expose(), key.expose());
        assert!(cache.get_at(&w, start + Duration::from_secs(300)).is_none());
        assert_eq!(
            cache.len(),
            0,
            "the expired key was dropped, not just hidden"
        );
    }

    #[test]
    fn the_cache_is_keyed_by_the_whole_wrapped_key() {
        let cache = DataKeyCache::new(Duration::from_secs(300), 10);
        let now = Instant::now();
        cache.insert_at(&wrapped("kek-a", 1), &DataKey::generate(), now);
        assert!(
            cache.get_at(&wrapped("kek-a", 2), now).is_none(),
            "other bytes"
        );
        assert!(
            cache.get_at(&wrapped("kek-b", 1), now).is_none(),
            "other KEK"
        );
        assert!(cache.get_at(&wrapped("kek-a", 1), now).is_some());
    }

    #[test]
    fn a_full_cache_drops_its_oldest_keys_first() {
        let cache = DataKeyCache::new(Duration::from_secs(300), 3);
        let start = Instant::now();
        for i in 0..5u8 {
            let at = start + Duration::from_secs(i.into());
            cache.insert_at(&wrapped("kek", i), &DataKey::generate(), at);
            assert!(cache.len() <= 3);
        }
        let now = start + Duration::from_secs(5);
        assert!(cache.get_at(&wrapped("kek", 0), now).is_none());
        assert!(cache.get_at(&wrapped("kek", 1), now).is_none());
        for i in 2..5 {
            assert!(cache.get_at(&wrapped("kek", i), now).is_some(), "key {i}");
        }
    }

    #[test]
    fn inserting_a_key_again_renews_it_without_growing_the_cache() {
        let cache = DataKeyCache::new(Duration::from_secs(10), 2);
        let start = Instant::now();
        let w = wrapped("kek", 7);
        for s in 0..100u64 {
            cache.insert_at(&w, &DataKey::generate(), start + Duration::from_secs(s * 5));
        }
        let last = start + Duration::from_secs(99 * 5);
        assert_eq!(cache.len(), 1);
        assert!(cache.get_at(&w, last + Duration::from_secs(9)).is_some());
        assert!(
            cache.entries().order.len() <= 4,
            "the order queue stays bounded"
        );
        // The renewed entry is not evicted by its own stale, older queue entries.
        cache.insert_at(&wrapped("kek", 8), &DataKey::generate(), last);
        assert!(cache.get_at(&w, last).is_some());
    }

    #[test]
    fn evict_expired_empties_an_idle_cache() {
        let cache = DataKeyCache::new(Duration::from_millis(1), 10);
        cache.insert(&wrapped("kek", 1), &DataKey::generate());
        std::thread::sleep(Duration::from_millis(5));
        cache.evict_expired();
        assert_eq!(cache.len(), 0);
    }
}
