//! AES-256-GCM sealing with a per-record data key, and the binary record format.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use rand::RngCore;
use secrecy::SecretBox;
use zeroize::{Zeroize, ZeroizeOnDrop};

use super::VaultError;

/// Record format version 1: `"SV1" || nonce (12 bytes) || ciphertext || tag (16 bytes)`.
const MAGIC: &[u8; 3] = b"SV1";
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

/// A 256-bit data-encryption key; zeroized on drop, never printed.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct DataKey([u8; 32]);

impl DataKey {
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        Self(bytes)
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, VaultError> {
        let array: [u8; 32] = bytes
            .try_into()
            .map_err(|_| VaultError::Malformed("data key is not 32 bytes"))?;
        Ok(Self(array))
    }

    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey([redacted])")
    }
}

/// An encoded sealed record (nonce and ciphertext); opaque without its data key.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedRecord(Vec<u8>);

impl std::fmt::Debug for SealedRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SealedRecord({} bytes)", self.0.len())
    }
}

impl SealedRecord {
    /// Parses stored bytes, rejecting anything that is not a well-formed v1 record.
    pub fn decode(bytes: Vec<u8>) -> Result<Self, VaultError> {
        if bytes.len() < MAGIC.len() + NONCE_LEN + TAG_LEN {
            return Err(VaultError::Malformed("sealed record too short"));
        }
        if &bytes[..MAGIC.len()] != MAGIC {
            return Err(VaultError::Malformed("unknown sealed record version"));
        }
        Ok(Self(bytes))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    fn nonce(&self) -> &[u8] {
        &self.0[MAGIC.len()..MAGIC.len() + NONCE_LEN]
    }

    fn ciphertext(&self) -> &[u8] {
        &self.0[MAGIC.len() + NONCE_LEN..]
    }
}

fn cipher(key: &DataKey) -> Aes256Gcm {
    Aes256Gcm::new_from_slice(key.expose()).expect("32-byte key")
}

pub(crate) fn seal(key: &DataKey, plaintext: &[u8], aad: &[u8]) -> SealedRecord {
    let mut nonce = [0u8; NONCE_LEN];
    rand::rng().fill_bytes(&mut nonce);
    let ciphertext = cipher(key)
        .encrypt(
            &Nonce::from(nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .expect("AES-GCM encryption of an in-memory buffer cannot fail");
    let mut out = Vec::with_capacity(MAGIC.len() + NONCE_LEN + ciphertext.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ciphertext);
    SealedRecord(out)
}

pub(crate) fn open(
    key: &DataKey,
    record: &SealedRecord,
    aad: &[u8],
) -> Result<SecretBox<Vec<u8>>, VaultError> {
    let nonce: [u8; NONCE_LEN] = record.nonce().try_into().expect("length checked");
    cipher(key)
        .decrypt(
            &Nonce::from(nonce),
            Payload {
                msg: record.ciphertext(),
                aad,
            },
        )
        .map(|plain| SecretBox::new(Box::new(plain)))
        .map_err(|_| VaultError::Integrity)
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn seal_then_open_round_trips() {
        let key = DataKey::generate();
        let record = seal(&key, b"0.A-refresh-token", b"tenant:1");
        let opened = open(&key, &record, b"tenant:1").unwrap();
        assert_eq!(opened.expose_secret().as_slice(), b"0.A-refresh-token");
    }

    #[test]
    fn ciphertext_does_not_contain_plaintext_and_nonces_differ() {
        let key = DataKey::generate();
        let a = seal(&key, b"0.A-refresh-token", b"ctx");
        let b = seal(&key, b"0.A-refresh-token", b"ctx");
        assert_ne!(a.as_bytes(), b.as_bytes());
        assert!(!a.as_bytes().windows(17).any(|w| w == b"0.A-refresh-token"));
    }

    #[test]
    fn wrong_context_wrong_key_or_tampering_fail_closed() {
        let key = DataKey::generate();
        let record = seal(&key, b"secret", b"tenant:1:v1");
        assert!(matches!(
            open(&key, &record, b"tenant:2:v1"),
            Err(VaultError::Integrity)
        ));
        assert!(matches!(
            open(&DataKey::generate(), &record, b"tenant:1:v1"),
            Err(VaultError::Integrity)
        ));
        let mut bytes = record.as_bytes().to_vec();
        *bytes.last_mut().unwrap() ^= 1;
        let tampered = SealedRecord::decode(bytes).unwrap();
        assert!(matches!(
            open(&key, &tampered, b"tenant:1:v1"),
            Err(VaultError::Integrity)
        ));
    }

    #[test]
    fn decode_rejects_short_and_unknown_records() {
        assert!(SealedRecord::decode(vec![]).is_err());
        assert!(SealedRecord::decode(b"SV2".iter().copied().chain([0; 40]).collect()).is_err());
        assert!(SealedRecord::decode(b"SV1".iter().copied().chain([0; 40]).collect()).is_ok());
    }

    #[test]
    fn debug_never_prints_key_material() {
        let key = DataKey::generate();
        assert_eq!(format!("{key:?}"), "DataKey([redacted])");
    }
}
