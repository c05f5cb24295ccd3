//! The vault: where a refresh token is sealed and opened.
//!
//! Envelope encryption (REFERENCE §4 "At rest"): every secret gets its own random 256-bit data
//! key (AES-256-GCM, random 96-bit nonce, associated data binding what the secret belongs
//! to); the data key is wrapped by the key-encryption key (KEK) of a [`KeyProvider`]. The
//! database holds only the wrapped key and the ciphertext, so a database dump alone, or the
//! KEK alone, yields nothing. Crypto-shredding a record is deleting its wrapped key.

pub mod azure;
mod envelope;
mod local;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

pub use azure::AzureKeyVaultProvider;
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

/// Wraps and unwraps data keys with key-encryption keys held elsewhere: a local file
/// ([`LocalKeyProvider`]) or Azure Key Vault. A provider may hold several KEK versions: the
/// current one wraps new data keys, older ones still unwrap until `samvault keys rotate` has
/// moved every record off them.
pub trait KeyProvider: Send + Sync + 'static {
    /// A short description for logs and `/readyz` (never key material).
    fn describe(&self) -> String;
    /// What kind of store holds the KEK, for people ("local key file").
    fn kind(&self) -> &'static str;
    /// The id of the KEK that wraps new data keys, as recorded beside every sealed record
    /// (`kek_id` columns). An id, never key material.
    fn current_kek_id(&self) -> String;
    /// Whether `kek_id` names a KEK of this provider (current or older version).
    fn owns(&self, kek_id: &str) -> bool;
    fn wrap<'a>(&'a self, key: &'a DataKey) -> BoxFuture<'a, Result<WrappedKey, VaultError>>;
    fn unwrap<'a>(&'a self, wrapped: &'a WrappedKey) -> BoxFuture<'a, Result<DataKey, VaultError>>;
    /// Cheap reachability check for `/readyz`.
    fn check(&self) -> BoxFuture<'_, Result<(), VaultError>>;
    /// Creates a new KEK version and makes it current (`samvault keys rotate`); returns its id.
    fn create_kek(&self) -> BoxFuture<'_, Result<String, VaultError>>;
    /// Learns which KEK is current now: another process (`keys rotate`) may have created one.
    /// Returns whether the current KEK changed.
    fn refresh(&self) -> BoxFuture<'_, Result<bool, VaultError>>;
    /// How often a running service calls [`KeyProvider::refresh`].
    fn refresh_interval(&self) -> std::time::Duration;
    /// Forgets a KEK version nothing references any more. Returns whether the provider removed
    /// it (a local key file drops the key); `false` when the store keeps versions itself (Key
    /// Vault: disable the version there if policy asks).
    fn retire<'a>(&'a self, kek_id: &'a str) -> BoxFuture<'a, Result<bool, VaultError>>;
}

/// Seals and opens secrets with envelope encryption: new data keys are wrapped by the
/// primary provider; records wrapped by a previous provider (a migration from `local` to
/// `azure-keyvault` in progress) are unwrapped by whichever provider owns their KEK.
#[derive(Clone)]
pub struct Vault {
    primary: Arc<dyn KeyProvider>,
    previous: Arc<[Arc<dyn KeyProvider>]>,
}

/// A secret's sealed form as stored: the wrapped data key plus the ciphertext.
#[derive(Clone)]
pub struct Sealed {
    pub wrapped_key: WrappedKey,
    pub record: SealedRecord,
}

/// A data key and its wrapped form, from [`Vault::prepare_key`]: sealing with it needs no
/// key provider.
#[derive(Debug)]
pub struct PreparedKey {
    key: DataKey,
    wrapped_key: WrappedKey,
}

impl PreparedKey {
    pub fn seal(self, plaintext: &[u8], context: &str) -> Sealed {
        Sealed {
            record: envelope::seal(&self.key, plaintext, context.as_bytes()),
            wrapped_key: self.wrapped_key,
        }
    }
}

/// A data key kept in memory to seal many small records with (the session key): wrapped
/// once and stored beside them, unwrapped once per process, so sealing one costs no key
/// provider call.
pub struct HeldKey(DataKey);

impl std::fmt::Debug for HeldKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HeldKey([redacted])")
    }
}

impl HeldKey {
    /// Seals `plaintext` with a fresh nonce; `context` is bound as associated data.
    pub fn seal(&self, plaintext: &[u8], context: &str) -> SealedRecord {
        envelope::seal(&self.0, plaintext, context.as_bytes())
    }

    pub fn open(
        &self,
        record: &SealedRecord,
        context: &str,
    ) -> Result<SecretBox<Vec<u8>>, VaultError> {
        envelope::open(&self.0, record, context.as_bytes())
    }
}

impl Vault {
    pub fn new(provider: Arc<dyn KeyProvider>) -> Self {
        Self::with_previous(provider, Vec::new())
    }

    /// A vault that wraps with `primary` and can still unwrap what `previous` providers wrapped.
    pub fn with_previous(
        primary: Arc<dyn KeyProvider>,
        previous: Vec<Arc<dyn KeyProvider>>,
    ) -> Self {
        Self {
            primary,
            previous: previous.into(),
        }
    }

    /// The provider that wraps new data keys.
    pub fn provider(&self) -> &dyn KeyProvider {
        self.primary.as_ref()
    }

    /// Providers kept only to unwrap older records.
    pub fn previous(&self) -> impl Iterator<Item = &dyn KeyProvider> {
        self.previous.iter().map(|p| p.as_ref())
    }

    /// The provider that owns `kek_id`; the primary when none claims it (its error then names
    /// the unknown KEK).
    fn owner(&self, kek_id: &str) -> &dyn KeyProvider {
        if self.primary.owns(kek_id) {
            return self.primary.as_ref();
        }
        self.previous()
            .find(|p| p.owns(kek_id))
            .unwrap_or(self.primary.as_ref())
    }

    /// Seals `plaintext` under a fresh data key; `context` is bound as associated data so a
    /// record moved to another row (another tenant, another version) no longer opens.
    pub async fn seal(&self, plaintext: &[u8], context: &str) -> Result<Sealed, VaultError> {
        Ok(self.prepare_key().await?.seal(plaintext, context))
    }

    /// A fresh data key, already wrapped: whoever must not fail after an irreversible step
    /// (Entra rotating a refresh token) asks the key provider before taking it.
    pub async fn prepare_key(&self) -> Result<PreparedKey, VaultError> {
        let key = DataKey::generate();
        let wrapped_key = self.primary.wrap(&key).await?;
        Ok(PreparedKey { key, wrapped_key })
    }

    /// A new key to hold, and its wrapped form to store (one wrap).
    pub async fn new_held_key(&self) -> Result<(HeldKey, WrappedKey), VaultError> {
        let PreparedKey { key, wrapped_key } = self.prepare_key().await?;
        Ok((HeldKey(key), wrapped_key))
    }

    /// A stored key unwrapped to hold (one unwrap, unless the provider has it cached).
    pub async fn hold(&self, wrapped: &WrappedKey) -> Result<HeldKey, VaultError> {
        Ok(HeldKey(self.unwrap(wrapped).await?))
    }

    pub async fn open(
        &self,
        sealed: &Sealed,
        context: &str,
    ) -> Result<SecretBox<Vec<u8>>, VaultError> {
        let key = self.unwrap(&sealed.wrapped_key).await?;
        envelope::open(&key, &sealed.record, context.as_bytes())
    }

    async fn unwrap(&self, wrapped: &WrappedKey) -> Result<DataKey, VaultError> {
        self.owner(&wrapped.kek_id).unwrap(wrapped).await
    }

    /// Wraps the data key under `wrapped` again with the current KEK: the payload it protects
    /// is untouched (key rotation).
    pub async fn rewrap(&self, wrapped: &WrappedKey) -> Result<WrappedKey, VaultError> {
        let key = self.unwrap(wrapped).await?;
        self.primary.wrap(&key).await
    }

    /// Keeps the primary provider's idea of its current KEK fresh, so a rotation started by
    /// another process (`samvault keys rotate`) is followed within one refresh interval.
    pub fn spawn_refresh(&self) -> tokio::task::JoinHandle<()> {
        let primary = self.primary.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(primary.refresh_interval());
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match primary.refresh().await {
                    Ok(true) => tracing::info!(
                        kek_id = %primary.current_kek_id(),
                        "a new key-encryption key is current; new data keys are wrapped with it"
                    ),
                    Ok(false) => {}
                    Err(e) => tracing::warn!(error = %e, "cannot refresh the key-encryption key"),
                }
            }
        })
    }
}
