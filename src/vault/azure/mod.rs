//! `azure-keyvault:https://NAME.vault.azure.net/keys/KEY` key provider: data keys are wrapped
//! and unwrapped by an RSA key that never leaves Azure Key Vault (RSA-OAEP-256), through
//! Microsoft's SDK (`azure_security_keyvault_keys`).
//!
//! - Every wrapped key records the full key id with its version
//!   (`azure-keyvault:https://NAME.vault.azure.net/keys/KEY/VERSION`, Key Vault's `kid`), so
//!   older versions keep unwrapping after the key is rotated.
//! - The current version is learned at start and on every refresh (a `get key` call);
//!   [`KeyProvider::create_kek`] rotates the key in the vault.
//! - Unwrapped data keys are cached briefly ([`cache`]); Key Vault calls are retried within a
//!   small budget ([`retry`]), then fail as [`VaultError::ProviderUnavailable`].
//!
//! Permissions: get, wrapKey and unwrapKey to serve (RBAC "Key Vault Crypto Service Encryption
//! User" or "Key Vault Crypto User"); rotate for `keys rotate` ("Key Vault Crypto Officer").

mod cache;
mod credential;
mod retry;
mod transport;

use std::path::PathBuf;
use std::sync::RwLock;
use std::time::Duration;

use azure_core::http::{ClientOptions, RetryOptions, Url};
use azure_security_keyvault_keys::models::{
    EncryptionAlgorithm, Key, KeyClientGetKeyOptions, KeyClientWrapKeyOptions,
    KeyOperationParameters,
};
use azure_security_keyvault_keys::{KeyClient, KeyClientOptions};
use zeroize::Zeroizing;

use self::cache::DataKeyCache;
pub use self::credential::CredentialChoice;
use self::retry::{Budget, Failure};
use super::{BoxFuture, DataKey, KeyProvider, VaultError, WrappedKey};

/// What every kek_id of this provider starts with.
pub const KEK_ID_PREFIX: &str = "azure-keyvault:";
/// How long an unwrapped data key stays in memory, and how many at most (32 bytes each).
const CACHE_TTL: Duration = Duration::from_secs(300);
const CACHE_CAPACITY: usize = 10_000;
/// Each refresh is one Key Vault call per replica.
const REFRESH_INTERVAL: Duration = Duration::from_secs(30);

/// Where the provider reads its settings (the process environment in production).
pub struct AzureSettings {
    pub credential: CredentialChoice,
    /// `AZURE_AUTHORITY_HOST`: the Entra ID host tokens come from (https).
    pub authority_host: Option<String>,
    /// `SAMVAULT_EXTRA_CA_FILE`: PEM roots trusted besides the system's.
    pub extra_ca_file: Option<PathBuf>,
}

impl AzureSettings {
    pub fn from_env(
        env: &dyn Fn(&str) -> Option<String>,
        extra_ca_file: Option<PathBuf>,
    ) -> Result<Self, VaultError> {
        Ok(Self {
            credential: CredentialChoice::from_env(env)?,
            authority_host: env("AZURE_AUTHORITY_HOST").filter(|h| !h.trim().is_empty()),
            extra_ca_file,
        })
    }
}

/// The Key Vault operations samvault uses, with the permission each needs (for messages).
#[derive(Clone, Copy, Debug)]
enum Operation {
    Get,
    Wrap,
    Unwrap,
    Rotate,
}

impl Operation {
    fn permission(self) -> &'static str {
        match self {
            Self::Get => "keys/get (Microsoft.KeyVault/vaults/keys/read)",
            Self::Wrap => "keys/wrapKey (Microsoft.KeyVault/vaults/keys/wrap/action)",
            Self::Unwrap => "keys/unwrapKey (Microsoft.KeyVault/vaults/keys/unwrap/action)",
            Self::Rotate => "keys/rotate (Microsoft.KeyVault/vaults/keys/rotate/action)",
        }
    }

    fn role(self) -> &'static str {
        match self {
            Self::Rotate => "Key Vault Crypto Officer",
            _ => "Key Vault Crypto Service Encryption User (or Key Vault Crypto User)",
        }
    }
}

/// The configured key: `https://NAME.vault.azure.net/keys/KEY`, without a version.
#[derive(Debug, Clone)]
struct KeyAddress {
    vault: Url,
    name: String,
}

impl KeyAddress {
    fn parse(url: &Url) -> Result<Self, VaultError> {
        let bad = |why: &str| {
            VaultError::Config(format!(
                "{url}: {why}; expected https://NAME.vault.azure.net/keys/KEY"
            ))
        };
        if url.scheme() != "https" || url.host_str().is_none() {
            return Err(bad("Key Vault is reached over https"));
        }
        let segments: Vec<&str> = url
            .path_segments()
            .map(|s| s.filter(|s| !s.is_empty()).collect())
            .unwrap_or_default();
        let name = match segments.as_slice() {
            ["keys", name] => *name,
            ["keys", _, _] => {
                return Err(bad(
                    "name the key without a version: samvault follows the key's current version",
                ));
            }
            _ => return Err(bad("not a key URL")),
        };
        let valid = (1..=127).contains(&name.len())
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !valid {
            return Err(bad("a key name is 1 to 127 letters, digits and dashes"));
        }
        let mut vault = url.clone();
        vault.set_path("/");
        vault.set_query(None);
        vault.set_fragment(None);
        Ok(Self {
            vault,
            name: name.to_string(),
        })
    }

    /// `https://NAME.vault.azure.net/keys/KEY/`: what every version's `kid` starts with.
    fn kid_prefix(&self) -> String {
        format!("{}keys/{}/", self.vault, self.name)
    }

    /// The version part of a kid (or kek_id) of this key; `None` when it names another key.
    /// Hosts and key names are case-insensitive in Key Vault.
    fn version_of<'a>(&self, kid: &'a str) -> Option<&'a str> {
        let kid = kid.strip_prefix(KEK_ID_PREFIX).unwrap_or(kid);
        let prefix = self.kid_prefix();
        let version = kid
            .get(..prefix.len())
            .filter(|p| p.eq_ignore_ascii_case(&prefix))
            .map(|_| &kid[prefix.len()..])?;
        (!version.is_empty() && !version.contains('/')).then_some(version)
    }

    /// The challenge's resource must match the vault's domain (`*.vault.azure.net`); a vault on
    /// a loopback address can only be a local test double, which cannot have such a name.
    fn verify_challenge_resource(&self) -> bool {
        !match self.vault.host() {
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            Some(url::Host::Domain(d)) => d == "localhost",
            None => false,
        }
    }
}

pub struct AzureKeyVaultProvider {
    client: KeyClient,
    key: KeyAddress,
    /// `kid` of the current version: `https://NAME.vault.azure.net/keys/KEY/VERSION`.
    current: RwLock<String>,
    identity: String,
    cache: DataKeyCache,
}

impl AzureKeyVaultProvider {
    /// Connects to the key at `key_url` and learns its current version (one `get key`).
    pub async fn connect(key_url: &Url, settings: AzureSettings) -> Result<Self, VaultError> {
        let key = KeyAddress::parse(key_url)?;
        let transport = transport::transport(settings.extra_ca_file.as_deref())?;
        let credential = settings
            .credential
            .credential(transport.clone(), settings.authority_host.as_deref())?;
        let options = KeyClientOptions {
            client_options: ClientOptions {
                transport: Some(transport),
                retry: RetryOptions::none(),
                ..Default::default()
            },
            verify_challenge_resource: Some(key.verify_challenge_resource()),
            ..Default::default()
        };
        let client = KeyClient::new(key.vault.as_str(), credential, Some(options))
            .map_err(|e| VaultError::Config(format!("Key Vault client for {key_url}: {e}")))?;
        let provider = Self {
            client,
            key,
            current: RwLock::new(String::new()),
            identity: settings.credential.describe(),
            cache: DataKeyCache::new(CACHE_TTL, CACHE_CAPACITY),
        };
        provider.learn_current(retry::REQUEST_PATH).await?;
        tracing::info!(kek_id = %provider.current_kek_id(), identity = %provider.identity, "Azure Key Vault key provider ready");
        Ok(provider)
    }

    fn current_kid(&self) -> String {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Checks that Key Vault answered with a version of our key and returns its kid.
    fn our_kid(&self, kid: Option<String>, operation: Operation) -> Result<String, VaultError> {
        kid.filter(|kid| self.key.version_of(kid).is_some())
            .ok_or_else(|| {
                VaultError::Config(format!(
                    "Key Vault answered {operation:?} for a key other than {}",
                    self.key.kid_prefix()
                ))
            })
    }

    fn key_kid(&self, key: Key, operation: Operation) -> Result<String, VaultError> {
        self.our_kid(key.key.and_then(|k| k.kid), operation)
    }

    /// Sets the current version from a `get key`; returns whether it changed.
    async fn learn_current(&self, budget: Budget) -> Result<bool, VaultError> {
        let key = self
            .call(Operation::Get, budget, || {
                self.client
                    .get_key(&self.key.name, None::<KeyClientGetKeyOptions>)
            })
            .await?;
        let kid = self.key_kid(key, Operation::Get)?;
        Ok(self.make_current(kid))
    }

    fn make_current(&self, kid: String) -> bool {
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        let changed = *current != kid;
        *current = kid;
        changed
    }

    /// Runs one Key Vault operation within `budget` and reads its JSON answer.
    async fn call<T, F, Fut>(
        &self,
        operation: Operation,
        budget: Budget,
        send: F,
    ) -> Result<T, VaultError>
    where
        T: serde::de::DeserializeOwned,
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = azure_core::Result<azure_core::http::Response<T>>>,
    {
        let response = retry::call(budget, send)
            .await
            .map_err(|failure| self.failed(operation, failure))?;
        response.into_model().map_err(|e| {
            VaultError::ProviderUnavailable(format!(
                "Key Vault {operation:?}: unreadable answer: {e}"
            ))
        })
    }

    /// Logs why an operation failed (the only place the details go: integrations see a 503)
    /// and turns it into a [`VaultError`].
    fn failed(&self, operation: Operation, failure: Failure) -> VaultError {
        let code = failure.code.as_deref().unwrap_or("-");
        match failure.status {
            Some(401) if failure.from_credential => {
                tracing::error!(identity = %self.identity, message = %failure.message, "Entra ID refused samvault's Key Vault credential; check AZURE_TENANT_ID, AZURE_CLIENT_ID and the secret or federation");
                VaultError::ProviderUnavailable("Entra ID refused the Key Vault credential".into())
            }
            Some(401) => {
                tracing::error!(identity = %self.identity, code, message = %failure.message, "Key Vault refused samvault's access token; is the vault in the identity's tenant?");
                VaultError::ProviderUnavailable("Key Vault refused the access token".into())
            }
            Some(403) => {
                tracing::error!(
                    identity = %self.identity,
                    key = %self.key.kid_prefix(),
                    permission = operation.permission(),
                    role = operation.role(),
                    code,
                    message = %failure.message,
                    "Key Vault denies samvault a permission it needs: grant the role on the key or vault"
                );
                VaultError::ProviderUnavailable(format!(
                    "Key Vault denies the {} permission",
                    operation.permission()
                ))
            }
            // A wrapped key Key Vault cannot decrypt: altered, or wrapped by another key.
            Some(400) if matches!(operation, Operation::Unwrap) => VaultError::Integrity,
            status if failure.transient => {
                tracing::warn!(?status, code, retry_after_s = ?failure.retry_after.map(|d| d.as_secs()), message = %failure.message, ?operation, "Key Vault unavailable or throttling");
                VaultError::ProviderUnavailable(format!(
                    "Key Vault {operation:?}: {}",
                    status.map_or("unreachable".to_string(), |s| s.to_string())
                ))
            }
            // A key deleted or disabled, a wrong key name: the provider refuses to work, which
            // integrations see as unavailable (503), never as an internal error.
            status => {
                tracing::error!(?status, code, message = %failure.message, ?operation, key = %self.key.kid_prefix(), "Key Vault refused an operation");
                VaultError::ProviderUnavailable(format!("Key Vault {operation:?} refused ({code})"))
            }
        }
    }
}

fn key_operation(value: Vec<u8>) -> KeyOperationParameters {
    KeyOperationParameters {
        algorithm: Some(EncryptionAlgorithm::RsaOaep256),
        value: Some(value),
        ..Default::default()
    }
}

impl KeyProvider for AzureKeyVaultProvider {
    fn describe(&self) -> String {
        format!("Azure Key Vault key {}", self.current_kid())
    }

    fn kind(&self) -> &'static str {
        "Azure Key Vault"
    }

    fn current_kek_id(&self) -> String {
        format!("{KEK_ID_PREFIX}{}", self.current_kid())
    }

    fn owns(&self, kek_id: &str) -> bool {
        kek_id.starts_with(KEK_ID_PREFIX) && self.key.version_of(kek_id).is_some()
    }

    fn wrap<'a>(&'a self, key: &'a DataKey) -> BoxFuture<'a, Result<WrappedKey, VaultError>> {
        Box::pin(async move {
            let kid = self.current_kid();
            let version = self.key.version_of(&kid).unwrap_or_default().to_string();
            let result = self
                .call(Operation::Wrap, retry::REQUEST_PATH, || {
                    let options = KeyClientWrapKeyOptions {
                        key_version: Some(version.clone()),
                        ..Default::default()
                    };
                    let body = key_operation(key.expose().to_vec()).try_into();
                    async move {
                        self.client
                            .wrap_key(&self.key.name, body?, Some(options))
                            .await
                    }
                })
                .await?;
            let kid = self.our_kid(result.kid, Operation::Wrap)?;
            let wrapped = WrappedKey {
                kek_id: format!("{KEK_ID_PREFIX}{kid}"),
                bytes: result.result.ok_or(VaultError::Malformed(
                    "Key Vault's wrapKey answer has no value",
                ))?,
            };
            // The next redemption opens what this one sealed: spare it a Key Vault call.
            self.cache.insert(&wrapped, key);
            Ok(wrapped)
        })
    }

    fn unwrap<'a>(&'a self, wrapped: &'a WrappedKey) -> BoxFuture<'a, Result<DataKey, VaultError>> {
        Box::pin(async move {
            let version = self.key.version_of(&wrapped.kek_id).ok_or_else(|| {
                VaultError::Config(format!(
                    "record wrapped by {} is not under {}",
                    wrapped.kek_id,
                    self.key.kid_prefix()
                ))
            })?;
            if let Some(key) = self.cache.get(wrapped) {
                return Ok(key);
            }
            let result = self
                .call(Operation::Unwrap, retry::REQUEST_PATH, || {
                    let body = key_operation(wrapped.bytes.clone()).try_into();
                    async move {
                        self.client
                            .unwrap_key(&self.key.name, version, body?, None)
                            .await
                    }
                })
                .await?;
            let plain = Zeroizing::new(result.result.unwrap_or_default());
            let key = DataKey::from_bytes(&plain)?;
            self.cache.insert(wrapped, &key);
            Ok(key)
        })
    }

    fn check(&self) -> BoxFuture<'_, Result<(), VaultError>> {
        Box::pin(async move { self.learn_current(retry::PROBE).await.map(|_| ()) })
    }

    fn create_kek(&self) -> BoxFuture<'_, Result<String, VaultError>> {
        Box::pin(async move {
            let key = self
                .call(Operation::Rotate, retry::REQUEST_PATH, || {
                    self.client.rotate_key(&self.key.name, None)
                })
                .await?;
            let kid = self.key_kid(key, Operation::Rotate)?;
            self.make_current(kid);
            Ok(self.current_kek_id())
        })
    }

    fn refresh(&self) -> BoxFuture<'_, Result<bool, VaultError>> {
        Box::pin(async move {
            self.cache.evict_expired();
            self.learn_current(retry::REQUEST_PATH).await
        })
    }

    fn refresh_interval(&self) -> Duration {
        REFRESH_INTERVAL
    }

    /// Key Vault keeps every version; the operator may disable an old one once `keys status`
    /// shows no record under it.
    fn retire<'a>(&'a self, _kek_id: &'a str) -> BoxFuture<'a, Result<bool, VaultError>> {
        Box::pin(async { Ok(false) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn address(url: &str) -> Result<KeyAddress, VaultError> {
        KeyAddress::parse(&Url::parse(url).unwrap())
    }

    #[test]
    fn a_key_url_names_the_vault_and_the_key() {
        let key = address("https://contoso-kv.vault.azure.net/keys/samvault-kek").unwrap();
        assert_eq!(key.vault.as_str(), "https://contoso-kv.vault.azure.net/");
        assert_eq!(key.name, "samvault-kek");
        assert_eq!(
            key.kid_prefix(),
            "https://contoso-kv.vault.azure.net/keys/samvault-kek/"
        );
        assert!(key.verify_challenge_resource());
        assert!(
            !address("https://127.0.0.1:8443/keys/k")
                .unwrap()
                .verify_challenge_resource()
        );

        for bad in [
            "https://v.vault.azure.net/secrets/k",
            "https://v.vault.azure.net/keys/k/0123456789abcdef0123456789abcdef",
            "https://v.vault.azure.net/keys/under_score",
        ] {
            assert!(address(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_kek_id_names_one_version_of_this_key() {
        let key = address("https://contoso-kv.vault.azure.net/keys/samvault-kek").unwrap();
        let kek_id = "azure-keyvault:https://contoso-kv.vault.azure.net/keys/samvault-kek/4f2a0c";
        assert_eq!(key.version_of(kek_id), Some("4f2a0c"));
        assert_eq!(
            key.version_of("https://CONTOSO-kv.vault.azure.net/keys/SamVault-KEK/4f2a0c"),
            Some("4f2a0c"),
            "Key Vault names are case-insensitive"
        );
        for other in [
            "azure-keyvault:https://contoso-kv.vault.azure.net/keys/samvault-kek/",
            "azure-keyvault:https://contoso-kv.vault.azure.net/keys/samvault-kek-2/4f2a0c",
            "azure-keyvault:https://other.vault.azure.net/keys/samvault-kek/4f2a0c",
            "azure-keyvault:https://contoso-kv.vault.azure.net/keys/samvault-kek/4f2a0c/x",
            "local:0123456789abcdef",
        ] {
            assert_eq!(key.version_of(other), None, "{other}");
        }
    }
}
