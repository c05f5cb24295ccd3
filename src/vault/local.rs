//! `local:PATH` key provider: the key-encryption keys live in a file next to the service.
//!
//! Good for the demo and single-node installs; production should keep the KEK in a
//! hardware-backed store (Azure Key Vault), which is why start-up warns when this is used.
//!
//! The file holds one 256-bit key per line as 64 hex digits; the last line is the current KEK,
//! earlier lines are older versions kept until no record references them (`keys rotate` appends
//! a new line, then retires the old one). A file with one line is the usual case.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::{Duration, Instant};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use rand::RngCore;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::{BoxFuture, DataKey, KeyProvider, VaultError, WrappedKey};

/// Associated data for wrapped data keys, so a wrapped key is never mistaken for a record.
const WRAP_AAD: &[u8] = b"samvault:data-key";

/// How often a running service looks at the key file for a key added by `keys rotate`.
const REFRESH_INTERVAL: Duration = Duration::from_secs(1);

type Key = Zeroizing<[u8; 32]>;

/// The keys read from the file, oldest first (the last is current), with their ids.
struct KeyFile {
    keys: Vec<(String, Key)>,
    read_at: Instant,
}

impl KeyFile {
    fn read(path: &Path) -> Result<Self, VaultError> {
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
            VaultError::Config(format!("cannot read key file {}: {e}", path.display()))
        })?);
        let mut keys = Vec::new();
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut key = Zeroizing::new([0u8; 32]);
            hex::decode_to_slice(line, key.as_mut()).map_err(|_| {
                VaultError::Config(format!(
                    "key file {} must hold 64 hex digits (a 256-bit key) per line",
                    path.display()
                ))
            })?;
            keys.push((kek_id(&key), key));
        }
        if keys.is_empty() {
            return Err(VaultError::Config(format!(
                "key file {} holds no key",
                path.display()
            )));
        }
        Ok(Self {
            keys,
            read_at: Instant::now(),
        })
    }

    fn current(&self) -> &(String, Key) {
        self.keys.last().expect("a key file holds at least one key")
    }

    fn find(&self, kek_id: &str) -> Option<&Key> {
        self.keys
            .iter()
            .find(|(id, _)| id == kek_id)
            .map(|(_, k)| k)
    }

    fn contents(&self) -> Zeroizing<String> {
        let mut text = Zeroizing::new(String::new());
        for (_, key) in &self.keys {
            text.push_str(&hex::encode(key.as_ref()));
            text.push('\n');
        }
        text
    }
}

/// `local:` + the first 16 hex digits of SHA-256(KEK): names the key version without revealing
/// it, so records say which KEK wraps them.
fn kek_id(key: &Key) -> String {
    format!("local:{}", &hex::encode(Sha256::digest(key.as_ref()))[..16])
}

fn random_key() -> Key {
    let mut key = Zeroizing::new([0u8; 32]);
    rand::rng().fill_bytes(key.as_mut());
    key
}

fn cipher(key: &Key) -> Aes256Gcm {
    Aes256Gcm::new_from_slice(key.as_ref()).expect("32-byte key")
}

pub struct LocalKeyProvider {
    path: PathBuf,
    file: RwLock<KeyFile>,
}

impl LocalKeyProvider {
    /// Opens the key file, creating it (mode 0600) with a fresh random key on first run.
    /// Returns the provider and whether the file was just created.
    pub fn open_or_create(path: &Path) -> Result<(Self, bool), VaultError> {
        let created = !path.exists();
        if created {
            let key = random_key();
            let text = Zeroizing::new(format!("{}\n", hex::encode(key.as_ref())));
            write_new_key_file(path, &text).map_err(|e| {
                VaultError::Config(format!("cannot create key file {}: {e}", path.display()))
            })?;
        }
        let file = KeyFile::read(path)?;
        Ok((
            Self {
                path: path.to_path_buf(),
                file: RwLock::new(file),
            },
            created,
        ))
    }

    fn file(&self) -> std::sync::RwLockReadGuard<'_, KeyFile> {
        self.file.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Re-reads the file (a few hundred bytes; cheaper than trusting coarse mtimes); returns
    /// whether the current key changed.
    fn reload(&self) -> Result<bool, VaultError> {
        let fresh = KeyFile::read(&self.path)?;
        let mut file = self.file.write().unwrap_or_else(|e| e.into_inner());
        let changed = file.current().0 != fresh.current().0;
        *file = fresh;
        Ok(changed)
    }

    /// Replaces the key file atomically (temporary file, fsync, rename) with `keys`.
    fn rewrite(&self, keys: KeyFile) -> Result<(), VaultError> {
        let tmp = self
            .path
            .with_extension(format!("tmp-{}", uuid::Uuid::new_v4().simple()));
        let io = |e: std::io::Error| {
            VaultError::Config(format!(
                "cannot write key file {}: {e}",
                self.path.display()
            ))
        };
        write_new_key_file(&tmp, &keys.contents()).map_err(io)?;
        std::fs::rename(&tmp, &self.path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            io(e)
        })?;
        *self.file.write().unwrap_or_else(|e| e.into_inner()) = keys;
        Ok(())
    }

    fn copy_keys(&self) -> Vec<(String, Key)> {
        self.file().keys.to_vec()
    }

    fn unwrap_with(key: &Key, wrapped: &WrappedKey) -> Result<DataKey, VaultError> {
        if wrapped.bytes.len() < 12 {
            return Err(VaultError::Malformed("wrapped key too short"));
        }
        let (nonce, ciphertext) = wrapped.bytes.split_at(12);
        let nonce: [u8; 12] = nonce.try_into().expect("split at 12");
        let plain = Zeroizing::new(
            cipher(key)
                .decrypt(
                    &Nonce::from(nonce),
                    Payload {
                        msg: ciphertext,
                        aad: WRAP_AAD,
                    },
                )
                .map_err(|_| VaultError::Integrity)?,
        );
        DataKey::from_bytes(&plain)
    }
}

#[cfg(unix)]
fn write_new_key_file(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()
}

#[cfg(not(unix))]
fn write_new_key_file(path: &Path, contents: &str) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()
}

impl KeyProvider for LocalKeyProvider {
    fn describe(&self) -> String {
        format!(
            "local key file {} ({})",
            self.path.display(),
            self.current_kek_id()
        )
    }

    fn kind(&self) -> &'static str {
        "local key file"
    }

    fn current_kek_id(&self) -> String {
        self.file().current().0.clone()
    }

    /// The keys its file holds: another file's records go to the provider that holds them
    /// (a move from one key file to another names the old one as a previous provider).
    fn owns(&self, kek_id: &str) -> bool {
        self.file().find(kek_id).is_some()
    }

    fn wrap<'a>(&'a self, key: &'a DataKey) -> BoxFuture<'a, Result<WrappedKey, VaultError>> {
        Box::pin(async move {
            // Never wrap with a key older than one refresh interval, whatever the background
            // refresh is doing: `keys rotate` relies on that bound before retiring a key.
            if self.file().read_at.elapsed() > REFRESH_INTERVAL {
                self.reload()?;
            }
            let (kek_id, kek) = self.file().current().clone();
            let mut nonce = [0u8; 12];
            rand::rng().fill_bytes(&mut nonce);
            let ciphertext = cipher(&kek)
                .encrypt(
                    &Nonce::from(nonce),
                    Payload {
                        msg: key.expose(),
                        aad: WRAP_AAD,
                    },
                )
                .expect("AES-GCM encryption of an in-memory buffer cannot fail");
            let mut bytes = nonce.to_vec();
            bytes.extend_from_slice(&ciphertext);
            Ok(WrappedKey { kek_id, bytes })
        })
    }

    fn unwrap<'a>(&'a self, wrapped: &'a WrappedKey) -> BoxFuture<'a, Result<DataKey, VaultError>> {
        Box::pin(async move {
            let known = self.file().find(&wrapped.kek_id).cloned();
            // A key `keys rotate` appended moments ago may not be loaded yet: look once more.
            let key = match known {
                Some(key) => key,
                None => {
                    self.reload()?;
                    self.file().find(&wrapped.kek_id).cloned().ok_or_else(|| {
                        // Another KEK sealed this record: refuse rather than report tampering.
                        VaultError::Config(format!(
                            "record wrapped by {} but the key file {} does not hold that key",
                            wrapped.kek_id,
                            self.path.display()
                        ))
                    })?
                }
            };
            Self::unwrap_with(&key, wrapped)
        })
    }

    fn check(&self) -> BoxFuture<'_, Result<(), VaultError>> {
        Box::pin(async { Ok(()) })
    }

    fn create_kek(&self) -> BoxFuture<'_, Result<String, VaultError>> {
        Box::pin(async move {
            self.reload()?;
            let mut keys = self.copy_keys();
            let key = random_key();
            let id = kek_id(&key);
            keys.push((id.clone(), key));
            self.rewrite(KeyFile {
                keys,
                read_at: Instant::now(),
            })?;
            Ok(id)
        })
    }

    fn refresh(&self) -> BoxFuture<'_, Result<bool, VaultError>> {
        Box::pin(async move { self.reload() })
    }

    fn refresh_interval(&self) -> Duration {
        REFRESH_INTERVAL
    }

    fn retire<'a>(&'a self, kek_id: &'a str) -> BoxFuture<'a, Result<bool, VaultError>> {
        Box::pin(async move {
            self.reload()?;
            if self.current_kek_id() == kek_id {
                return Err(VaultError::Config(format!(
                    "{kek_id} is the current key-encryption key; it cannot be retired"
                )));
            }
            let mut keys = self.copy_keys();
            let before = keys.len();
            keys.retain(|(id, _)| id != kek_id);
            if keys.len() == before {
                return Ok(false);
            }
            self.rewrite(KeyFile {
                keys,
                read_at: Instant::now(),
            })?;
            Ok(true)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vault::{Sealed, Vault};
    use secrecy::ExposeSecret;
    use std::sync::Arc;

    #[tokio::test]
    async fn key_file_is_created_0600_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("samvault.key");
        let (first, created) = LocalKeyProvider::open_or_create(&path).unwrap();
        assert!(created);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let (second, created) = LocalKeyProvider::open_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(first.current_kek_id(), second.current_kek_id());

        let vault = Vault::new(Arc::new(first));
        let sealed = vault.seal(b"0.A-token", "ctx").await.unwrap();
        let reopened = Vault::new(Arc::new(second));
        let plain = reopened.open(&sealed, "ctx").await.unwrap();
        assert_eq!(plain.expose_secret().as_slice(), b"0.A-token");
    }

    #[tokio::test]
    async fn another_key_cannot_open_a_record() {
        let dir = tempfile::tempdir().unwrap();
        let (a, _) = LocalKeyProvider::open_or_create(&dir.path().join("a.key")).unwrap();
        let (b, _) = LocalKeyProvider::open_or_create(&dir.path().join("b.key")).unwrap();
        let sealed = Vault::new(Arc::new(a))
            .seal(b"0.A-token", "ctx")
            .await
            .unwrap();
        assert!(Vault::new(Arc::new(b)).open(&sealed, "ctx").await.is_err());
    }

    #[test]
    fn a_malformed_key_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.key");
        std::fs::write(&path, "not hex").unwrap();
        let err = LocalKeyProvider::open_or_create(&path).err().unwrap();
        assert!(err.to_string().contains("64 hex digits"), "{err}");
    }

    #[tokio::test]
    async fn a_new_key_wraps_while_older_keys_still_unwrap_until_retired() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("samvault.key");
        let (provider, _) = LocalKeyProvider::open_or_create(&path).unwrap();
        let old_id = provider.current_kek_id();
        let vault = Vault::new(Arc::new(provider));
        let old = vault.seal(b"0.A-token", "ctx").await.unwrap();

        // Another process (`keys rotate`) appends a key: this one follows on refresh.
        let (rotator, _) = LocalKeyProvider::open_or_create(&path).unwrap();
        let new_id = rotator.create_kek().await.unwrap();
        assert_ne!(new_id, old_id);
        assert!(vault.provider().refresh().await.unwrap());
        assert_eq!(vault.provider().current_kek_id(), new_id);

        let rewrapped = Sealed {
            wrapped_key: vault.rewrap(&old.wrapped_key).await.unwrap(),
            record: old.record.clone(),
        };
        assert_eq!(rewrapped.wrapped_key.kek_id, new_id);
        let plain = vault.open(&rewrapped, "ctx").await.unwrap();
        assert_eq!(plain.expose_secret().as_slice(), b"0.A-token");
        // The old record still opens until its key is retired; then it does not.
        assert!(vault.open(&old, "ctx").await.is_ok());
        assert!(
            rotator.retire(&new_id).await.is_err(),
            "the current key is never retired"
        );
        assert!(rotator.retire(&old_id).await.unwrap());
        assert!(vault.provider().refresh().await.is_ok());
        assert!(vault.open(&old, "ctx").await.is_err());
        assert!(vault.open(&rewrapped, "ctx").await.is_ok());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "a rewritten key file stays 0600");
        }
    }
}
