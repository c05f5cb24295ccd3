//! The vault: where a refresh token is sealed and opened.
//!
//! Envelope encryption (SPEC §4 "At rest"): every secret gets its own random 256-bit data
//! key (AES-256-GCM, random 96-bit nonce, associated data binding what the secret belongs
//! to); the data key is wrapped by the key-encryption key (KEK) of a [`KeyProvider`]. The
//! database holds only the wrapped key and the ciphertext, so a database dump alone, or the
//! KEK alone, yields nothing. Crypto-shredding a record is deleting its wrapped key.

mod envelope;
mod local;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

pub use envelope::{DataKey, SealedRecord};
pub use local::LocalKeyProvider;

use secrecy::SecretBox;

#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// The key provider could not be reached or refused to work (retryable).
    #[error("key provider unavailable: {0}")]
    ProviderUnavailable(String),
    /// Authentication failed: wrong key, tampered record or wrong associated data.
    #[error("sealed record cannot be opened (wrong key, tampered data or wrong context)")]
    Integrity,
    #[error("malformed sealed record: {0}")]
    Malformed(&'static str),
    #[error("key provider configuration: {0}")]
    Config(String),
}

/// A data key wrapped by a key-encryption key, with the KEK version that can unwrap it.
#[derive(Clone, PartialEq, Eq)]
pub struct WrappedKey {
    pub kek_id: String,
    pub bytes: Vec<u8>,
}

impl std::fmt::Debug for WrappedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WrappedKey")
            .field("kek_id", &self.kek_id)
            .finish_non_exhaustive()
    }
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Wraps and unwraps data keys with a key-encryption key held elsewhere (a local file
/// today; Azure Key Vault is the next implementation behind this seam).
pub trait KeyProvider: Send + Sync + 'static {
    /// A short description for logs and `/readyz` (never key material).
    fn describe(&self) -> String;
    /// What kind of store holds the KEK, for people ("local key file").
    fn kind(&self) -> &'static str;
    /// The id of the KEK that wraps new data keys, as recorded beside every sealed record
    /// (`kek_id` columns). An id, never key material.
    fn current_kek_id(&self) -> &str;
    fn wrap<'a>(&'a self, key: &'a DataKey) -> BoxFuture<'a, Result<WrappedKey, VaultError>>;
    fn unwrap<'a>(&'a self, wrapped: &'a WrappedKey) -> BoxFuture<'a, Result<DataKey, VaultError>>;
    /// Cheap reachability check for `/readyz`.
    fn check(&self) -> BoxFuture<'_, Result<(), VaultError>>;
}

/// Seals and opens secrets with envelope encryption over the configured provider.
#[derive(Clone)]
pub struct Vault {
    provider: Arc<dyn KeyProvider>,
}

/// A secret's sealed form as stored: the wrapped data key plus the ciphertext.
#[derive(Clone)]
pub struct Sealed {
    pub wrapped_key: WrappedKey,
    pub record: SealedRecord,
}

impl Vault {
    pub fn new(provider: Arc<dyn KeyProvider>) -> Self {
        Self { provider }
    }

    pub fn provider(&self) -> &dyn KeyProvider {
        self.provider.as_ref()
    }

    /// Seals `plaintext` under a fresh data key; `context` is bound as associated data so a
    /// record moved to another row (another tenant, another version) no longer opens.
    pub async fn seal(&self, plaintext: &[u8], context: &str) -> Result<Sealed, VaultError> {
        let key = DataKey::generate();
        let record = envelope::seal(&key, plaintext, context.as_bytes());
        let wrapped_key = self.provider.wrap(&key).await?;
        Ok(Sealed {
            wrapped_key,
            record,
        })
    }

    pub async fn open(
        &self,
        sealed: &Sealed,
        context: &str,
    ) -> Result<SecretBox<Vec<u8>>, VaultError> {
        let key = self.provider.unwrap(&sealed.wrapped_key).await?;
        envelope::open(&key, &sealed.record, context.as_bytes())
    }
}
