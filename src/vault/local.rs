//! `local:PATH` key provider: the key-encryption key lives in a file next to the service.
//!
//! Good for the demo and single-node installs; production should keep the KEK in a
//! hardware-backed store (Azure Key Vault), which is why start-up warns when this is used.

use std::io::Write;
use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use rand::RngCore;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::{BoxFuture, DataKey, KeyProvider, VaultError, WrappedKey};

/// Associated data for wrapped data keys, so a wrapped key is never mistaken for a record.
const WRAP_AAD: &[u8] = b"samvault:data-key";

pub struct LocalKeyProvider {
    path: PathBuf,
    kek: Zeroizing<[u8; 32]>,
    /// `local:` + the first 16 hex digits of SHA-256(KEK): names the key version without
    /// revealing it, so records say which KEK wraps them.
    kek_id: String,
}

impl LocalKeyProvider {
    /// Opens the key file, creating it (mode 0600) with a fresh random key on first run.
    /// Returns the provider and whether the file was just created.
    pub fn open_or_create(path: &Path) -> Result<(Self, bool), VaultError> {
        let created = !path.exists();
        if created {
            let mut key = Zeroizing::new([0u8; 32]);
            rand::rng().fill_bytes(key.as_mut());
            write_new_key_file(path, &hex::encode(key.as_ref())).map_err(|e| {
                VaultError::Config(format!("cannot create key file {}: {e}", path.display()))
            })?;
        }
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
            VaultError::Config(format!("cannot read key file {}: {e}", path.display()))
        })?);
        let mut kek = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(text.trim(), kek.as_mut()).map_err(|_| {
            VaultError::Config(format!(
                "key file {} must hold 64 hex digits (a 256-bit key)",
                path.display()
            ))
        })?;
        let digest = Sha256::digest(kek.as_ref());
        let kek_id = format!("local:{}", &hex::encode(digest)[..16]);
        Ok((
            Self {
                path: path.to_path_buf(),
                kek,
                kek_id,
            },
            created,
        ))
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new_from_slice(self.kek.as_ref()).expect("32-byte key")
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
        format!("local key file {} ({})", self.path.display(), self.kek_id)
    }

    fn kind(&self) -> &'static str {
        "local key file"
    }

    fn current_kek_id(&self) -> &str {
        &self.kek_id
    }

    fn wrap<'a>(&'a self, key: &'a DataKey) -> BoxFuture<'a, Result<WrappedKey, VaultError>> {
        Box::pin(async move {
            let mut nonce = [0u8; 12];
            rand::rng().fill_bytes(&mut nonce);
            let ciphertext = self
                .cipher()
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
            Ok(WrappedKey {
                kek_id: self.kek_id.clone(),
                bytes,
            })
        })
    }

    fn unwrap<'a>(&'a self, wrapped: &'a WrappedKey) -> BoxFuture<'a, Result<DataKey, VaultError>> {
        Box::pin(async move {
            if wrapped.kek_id != self.kek_id {
                // Another KEK sealed this record: refuse rather than report tampering.
                return Err(VaultError::Config(format!(
                    "record wrapped by {} but the configured key is {}",
                    wrapped.kek_id, self.kek_id
                )));
            }
            if wrapped.bytes.len() < 12 {
                return Err(VaultError::Malformed("wrapped key too short"));
            }
            let (nonce, ciphertext) = wrapped.bytes.split_at(12);
            let nonce: [u8; 12] = nonce.try_into().expect("split at 12");
            let plain = Zeroizing::new(
                self.cipher()
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
        })
    }

    fn check(&self) -> BoxFuture<'_, Result<(), VaultError>> {
        Box::pin(async { Ok(()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vault::Vault;
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
        assert_eq!(first.kek_id, second.kek_id);

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
}
