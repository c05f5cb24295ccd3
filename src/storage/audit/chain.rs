//! What chains the audit log: each entry's MAC under a key the database does not hold.
//!
//! Since migration 0015 every entry's `hash` is HMAC-SHA256, under the audit key, of the
//! previous entry's `hash` and the entry's fields. The key is sealed by the vault
//! (`audit_key`) and opened once at start ([`crate::audit_chain`]), so someone who can only
//! write to the database can no longer recompute a rewritten chain. Entries written before the
//! key existed (`seq` below [`Chain::first_keyed`]) keep their plain SHA-256 hashes: the first
//! keyed entry's MAC covers the last of them, so they cannot be rewritten either.

use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::anchor::{AnchorFile, Head};
use crate::storage::StorageError;

/// Bound into every MAC, so an audit MAC is never mistaken for any other HMAC of that key.
const MAC_LABEL: &[u8] = b"samvault:audit-chain:v2";

/// The audit chain's HMAC-SHA256 key (256 bits). Wiped when dropped; never printed.
pub struct ChainKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for ChainKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChainKey([redacted])")
    }
}

impl ChainKey {
    /// A fresh random key.
    pub fn generate() -> Self {
        let mut key = Zeroizing::new([0u8; 32]);
        rand::rng().fill_bytes(key.as_mut());
        Self(key)
    }

    /// The key opened from its sealed record: exactly 32 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, StorageError> {
        let key: [u8; 32] = bytes
            .try_into()
            .map_err(|_| StorageError::Corrupt("the audit key is not 32 bytes".into()))?;
        Ok(Self(Zeroizing::new(key)))
    }

    /// The key's bytes, to be sealed by the vault.
    pub fn expose(&self) -> &[u8] {
        self.0.as_ref()
    }

    fn mac(&self, prev: &str, entry: &Fields) -> String {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(self.expose()).expect("HMAC takes keys of any length");
        mac.update(MAC_LABEL);
        entry.feed(prev, |bytes| mac.update(bytes));
        hex::encode(mac.finalize().into_bytes())
    }
}

/// Builds the JSON body of an `audit.checkpoint` webhook event for a head written at `at`.
pub type CheckpointEvent = fn(head: &Head, at: i64) -> String;

/// Everything an append and a verification need besides the database: the key, where keyed
/// entries start, and the heads kept outside the database.
#[derive(Debug)]
pub struct Chain {
    key: ChainKey,
    first_keyed: i64,
    anchor: Option<AnchorFile>,
    checkpoint: Option<(i64, CheckpointEvent)>,
}

impl Chain {
    /// Entries from `first_keyed` on are MACed with `key`; earlier ones have plain hashes.
    pub fn new(key: ChainKey, first_keyed: i64) -> Self {
        Self {
            key,
            first_keyed,
            anchor: None,
            checkpoint: None,
        }
    }

    /// Every append writes the new head to `path` (`SAMVAULT_AUDIT_ANCHOR_FILE`), and a
    /// verification compares the log with it.
    pub fn with_anchor(mut self, path: PathBuf) -> Self {
        self.anchor = Some(AnchorFile::new(path));
        self
    }

    /// Every `every`-th entry also queues an `audit.checkpoint` webhook event with its head.
    pub fn with_checkpoints(mut self, every: u64, event: CheckpointEvent) -> Self {
        if every > 0 {
            self.checkpoint = Some((every.min(i64::MAX as u64) as i64, event));
        }
        self
    }

    /// The first entry chained under the key.
    pub fn first_keyed(&self) -> i64 {
        self.first_keyed
    }

    pub fn anchor_file(&self) -> Option<&Path> {
        self.anchor.as_ref().map(AnchorFile::path)
    }

    pub(super) fn anchor(&self) -> Option<&AnchorFile> {
        self.anchor.as_ref()
    }

    /// What a new entry's `hash` is: always its MAC.
    pub(super) fn seal(&self, prev: &str, entry: &Fields) -> String {
        self.key.mac(prev, entry)
    }

    /// What a stored entry's `hash` must be: its MAC from the first keyed entry on, the plain
    /// SHA-256 of the entries written before the key existed.
    pub(super) fn expected(&self, prev: &str, entry: &Fields) -> String {
        if entry.seq >= self.first_keyed {
            self.key.mac(prev, entry)
        } else {
            plain_hash(prev, entry)
        }
    }

    /// The webhook body to queue with entry `head.seq`, when it is a checkpoint.
    pub(super) fn checkpoint(&self, head: &Head, at: i64) -> Option<String> {
        let (every, event) = self.checkpoint?;
        (head.seq % every == 0).then(|| event(head, at))
    }
}

/// An entry's chained fields.
pub(super) struct Fields<'a> {
    pub seq: i64,
    pub at: i64,
    pub actor: &'a str,
    pub action: &'a str,
    pub tenant: Option<&'a str>,
    pub detail: &'a str,
}

impl Fields<'_> {
    /// The previous hash and every field, each length-prefixed so no two different entries
    /// serialise alike.
    fn feed(&self, prev: &str, mut update: impl FnMut(&[u8])) {
        for part in [
            prev,
            &self.seq.to_string(),
            &self.at.to_string(),
            self.actor,
            self.action,
            self.tenant.unwrap_or(""),
            self.detail,
        ] {
            update(&(part.len() as u64).to_be_bytes());
            update(part.as_bytes());
        }
    }
}

/// The unkeyed hash of entries written before migration 0015's key existed.
fn plain_hash(prev: &str, entry: &Fields) -> String {
    let mut h = Sha256::new();
    entry.feed(prev, |bytes| h.update(bytes));
    hex::encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(detail: &str) -> Fields<'_> {
        Fields {
            seq: 3,
            at: 1_700_000_000,
            actor: "cli",
            action: "client.create",
            tenant: None,
            detail,
        }
    }

    #[test]
    fn a_mac_depends_on_the_key_and_every_field() {
        let (a, b) = (ChainKey::generate(), ChainKey::generate());
        let prev = "0".repeat(64);
        assert_ne!(a.mac(&prev, &entry("{}")), b.mac(&prev, &entry("{}")));
        assert_ne!(a.mac(&prev, &entry("{}")), a.mac(&prev, &entry("{ }")));
        assert_ne!(a.mac(&prev, &entry("{}")), plain_hash(&prev, &entry("{}")));
        assert_eq!(a.mac(&prev, &entry("{}")).len(), 64);
        assert_eq!(format!("{a:?}"), "ChainKey([redacted])");
    }

    #[test]
    fn entries_before_the_key_keep_their_plain_hashes() {
        let chain = Chain::new(ChainKey::generate(), 4);
        let prev = "0".repeat(64);
        assert_eq!(
            chain.expected(&prev, &entry("{}")),
            plain_hash(&prev, &entry("{}"))
        );
        let keyed = Chain::new(ChainKey::from_bytes(chain.key.expose()).unwrap(), 3);
        assert_eq!(
            keyed.expected(&prev, &entry("{}")),
            chain.seal(&prev, &entry("{}"))
        );
        assert!(ChainKey::from_bytes(&[0; 31]).is_err());
    }
}
