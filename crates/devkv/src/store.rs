//! The double's RSA keys, every version, kept in a state file (0600) so that a restarted double
//! unwraps what it wrapped before, as Key Vault does; and the secret its bearer tokens are
//! signed with, so tokens it issued stay valid across a restart too.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rand::RngCore;
use rsa::pkcs1::{DecodeRsaPrivateKey, EncodeRsaPrivateKey};
use rsa::traits::PublicKeyParts;
use rsa::{Oaep, RsaPrivateKey};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// Key Vault's default RSA key size.
const RSA_BITS: usize = 2048;

pub struct Version {
    /// 32 lower-case hex digits, like Key Vault's.
    pub id: String,
    pub created: i64,
    key: RsaPrivateKey,
}

impl Version {
    fn generate() -> anyhow::Result<Version> {
        let mut id = [0u8; 16];
        rand::rng().fill_bytes(&mut id);
        Ok(Version {
            id: hex::encode(id),
            created: time::OffsetDateTime::now_utc().unix_timestamp(),
            key: RsaPrivateKey::new(&mut rand08::rngs::OsRng, RSA_BITS)
                .context("generating an RSA key")?,
        })
    }

    /// The public JWK fields `n` and `e`, big-endian.
    pub fn public(&self) -> (Vec<u8>, Vec<u8>) {
        (self.key.n().to_bytes_be(), self.key.e().to_bytes_be())
    }

    /// RSA-OAEP-256: OAEP with SHA-256 and MGF1-SHA-256.
    pub fn wrap(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.key
            .to_public_key()
            .encrypt(&mut rand08::rngs::OsRng, Oaep::new::<sha2::Sha256>(), plain)
            .ok()
    }

    pub fn unwrap(&self, wrapped: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        self.key
            .decrypt(Oaep::new::<sha2::Sha256>(), wrapped)
            .ok()
            .map(Zeroizing::new)
    }
}

pub struct Store {
    path: PathBuf,
    pub token_secret: Zeroizing<Vec<u8>>,
    /// Key name → versions, oldest first (the last is current).
    keys: BTreeMap<String, Vec<Version>>,
}

#[derive(Serialize, Deserialize)]
struct StateFile {
    token_secret: String,
    keys: BTreeMap<String, Vec<StoredVersion>>,
}

#[derive(Serialize, Deserialize)]
struct StoredVersion {
    version: String,
    created: i64,
    /// PKCS#1 DER, base64: a test fixture's private key.
    rsa_private_key: String,
}

impl Store {
    /// Opens the state file, creating it with a first version of each of `names` that it lacks.
    pub fn open(path: &Path, names: &[String]) -> anyhow::Result<Store> {
        let mut store = if path.exists() {
            Self::read(path)?
        } else {
            let mut secret = Zeroizing::new(vec![0u8; 32]);
            rand::rng().fill_bytes(&mut secret);
            Store {
                path: path.to_path_buf(),
                token_secret: secret,
                keys: BTreeMap::new(),
            }
        };
        let mut changed = !path.exists();
        for name in names {
            if !store.keys.contains_key(name) {
                store.keys.insert(name.clone(), vec![Version::generate()?]);
                changed = true;
            }
        }
        if changed {
            store.save()?;
        }
        Ok(store)
    }

    fn read(path: &Path) -> anyhow::Result<Store> {
        let text = Zeroizing::new(
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
        );
        let file: StateFile =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        let mut keys = BTreeMap::new();
        for (name, versions) in file.keys {
            let versions = versions
                .into_iter()
                .map(|v| {
                    let der = Zeroizing::new(STANDARD.decode(&v.rsa_private_key)?);
                    Ok(Version {
                        id: v.version,
                        created: v.created,
                        key: RsaPrivateKey::from_pkcs1_der(&der)?,
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()
                .with_context(|| format!("key {name} in {}", path.display()))?;
            keys.insert(name, versions);
        }
        Ok(Store {
            path: path.to_path_buf(),
            token_secret: Zeroizing::new(hex::decode(&file.token_secret)?),
            keys,
        })
    }

    /// Writes the whole state to a temporary file (0600) and renames it over the old one.
    fn save(&self) -> anyhow::Result<()> {
        let mut keys = BTreeMap::new();
        for (name, versions) in &self.keys {
            let stored = versions
                .iter()
                .map(|v| {
                    Ok(StoredVersion {
                        version: v.id.clone(),
                        created: v.created,
                        rsa_private_key: STANDARD.encode(v.key.to_pkcs1_der()?.as_bytes()),
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            keys.insert(name.clone(), stored);
        }
        let text = Zeroizing::new(serde_json::to_string_pretty(&StateFile {
            token_secret: hex::encode(&*self.token_secret),
            keys,
        })?);
        let tmp = self.path.with_extension("tmp");
        let _ = std::fs::remove_file(&tmp);
        write_private(&tmp, text.as_bytes())?;
        std::fs::rename(&tmp, &self.path)
            .with_context(|| format!("writing {}", self.path.display()))
    }

    /// A version of `name`: the current one when `version` is empty.
    pub fn version(&self, name: &str, version: &str) -> Option<&Version> {
        let versions = self.key(name)?;
        if version.is_empty() {
            versions.last()
        } else {
            versions.iter().find(|v| v.id == version)
        }
    }

    fn key(&self, name: &str) -> Option<&Vec<Version>> {
        // Key Vault key names are case-insensitive.
        self.keys
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.key(name).is_some()
    }

    /// The stored spelling of a key name.
    pub fn name<'a>(&'a self, name: &str) -> Option<&'a str> {
        self.keys
            .keys()
            .find(|n| n.eq_ignore_ascii_case(name))
            .map(String::as_str)
    }

    /// Adds a new current version of `name` (generated by the caller, off the lock).
    pub fn add_version(&mut self, name: &str, version: Version) -> anyhow::Result<&Version> {
        let stored = self.name(name).context("no such key")?.to_string();
        let versions = self.keys.get_mut(&stored).expect("name found");
        versions.push(version);
        self.save()?;
        Ok(self.keys[&stored].last().expect("just pushed"))
    }

    pub fn new_version() -> anyhow::Result<Version> {
        Version::generate()
    }
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    Ok(())
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("creating {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_survive_a_restart_and_unwrap_what_they_wrapped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyvault.json");
        let names = vec!["samvault-kek".to_string()];
        let store = Store::open(&path, &names).unwrap();
        let version = store.version("samvault-kek", "").unwrap();
        let wrapped = version.wrap(&[7u8; 32]).unwrap();
        assert_eq!(wrapped.len(), RSA_BITS / 8);
        let id = version.id.clone();

        let mut reopened = Store::open(&path, &names).unwrap();
        assert_eq!(*reopened.token_secret, *store.token_secret);
        let again = reopened.version("SAMVAULT-KEK", &id).unwrap();
        assert_eq!(again.unwrap(&wrapped).unwrap().as_slice(), &[7u8; 32]);

        let added = reopened
            .add_version("samvault-kek", Store::new_version().unwrap())
            .unwrap()
            .id
            .clone();
        assert_ne!(added, id);
        let third = Store::open(&path, &names).unwrap();
        assert_eq!(third.version("samvault-kek", "").unwrap().id, added);
        assert!(
            third.version("samvault-kek", &id).is_some(),
            "old versions are kept"
        );
        assert!(
            third
                .version("samvault-kek", &added)
                .unwrap()
                .unwrap(&wrapped)
                .is_none()
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
