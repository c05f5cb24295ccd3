//! `samvault dev-keyvault`, the Key Vault double, as a test runs it: its own test CA and state
//! file, restartable on the same port with the same keys, its `/_sim/` faults and counters.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use samvault::vault::AzureKeyVaultProvider;
use samvault::vault::WrappedKey;
use samvault::vault::azure::{AzureSettings, CredentialChoice};
use secrecy::SecretString;
use serde_json::{Value, json};

use super::stack::{Proc, StackOptions, free_port, wait_ready, write_test_ca};

/// The identity `samvault dev-keyvault` accepts (its fixtures, docs/REFERENCE.md).
pub const DEV_KEYVAULT_TENANT: &str = "7e57c0de-0000-4000-8000-00000000a2b1";
pub const DEV_KEYVAULT_CLIENT_ID: &str = "7e57c0de-0000-4000-8000-0000000c11e7";
pub const DEV_KEYVAULT_SECRET: &str = "samvault-dev-keyvault-secret";

pub const KEY: &str = "samvault-kek";

/// A `samvault dev-keyvault` process with its own test CA and state file; restartable on the
/// same port with the same keys.
pub struct KeyVaultDouble {
    pub dir: tempfile::TempDir,
    pub port: u16,
    proc: Option<Proc>,
    pub http: reqwest::Client,
}

impl KeyVaultDouble {
    pub async fn start() -> KeyVaultDouble {
        let dir = tempfile::tempdir().unwrap();
        write_test_ca(dir.path());
        let ca = std::fs::read(dir.path().join("ca.pem")).unwrap();
        let http = reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(&ca).unwrap()])
            .build()
            .unwrap();
        let mut double = KeyVaultDouble {
            dir,
            port: free_port(),
            proc: None,
            http,
        };
        double.restart().await;
        double
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    pub fn base(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    pub fn key_url(&self) -> String {
        format!("{}/keys/{KEY}", self.base())
    }

    /// What every kek_id this double's key wraps starts with.
    pub fn kek_prefix(&self) -> String {
        format!("azure-keyvault:{}/", self.key_url())
    }

    /// (Re)starts the process on the same port, state file and certificate.
    pub async fn restart(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("keyvault.log"))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_samvault"))
            .args([
                "dev-keyvault",
                "--listen",
                &format!("127.0.0.1:{}", self.port),
            ])
            .arg("--state")
            .arg(self.path("keyvault.json"))
            .arg("--tls-cert")
            .arg(self.path("server.pem"))
            .arg("--tls-key")
            .arg(self.path("server.key"))
            .args(["--key", KEY])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.proc = Some(Proc(child));
        wait_ready(&self.http, &format!("{}/_sim/counters", self.base())).await;
    }

    /// SIGKILL: the vault is gone without a word.
    pub fn kill(&mut self) {
        self.proc = None;
    }

    /// The environment a samvault process needs to use this vault.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            (
                "SAMVAULT_KEY_PROVIDER",
                format!("azure-keyvault:{}", self.key_url()),
            ),
            (
                "SAMVAULT_EXTRA_CA_FILE",
                self.path("ca.pem").display().to_string(),
            ),
            ("AZURE_TENANT_ID", DEV_KEYVAULT_TENANT.into()),
            ("AZURE_CLIENT_ID", DEV_KEYVAULT_CLIENT_ID.into()),
            ("AZURE_CLIENT_SECRET", DEV_KEYVAULT_SECRET.into()),
            ("AZURE_AUTHORITY_HOST", self.base()),
        ]
    }

    pub fn stack_options(&self) -> StackOptions {
        self.env()
            .iter()
            .fold(StackOptions::default(), |o, (k, v)| o.env(k, v))
    }

    pub async fn provider(&self) -> AzureKeyVaultProvider {
        let settings = AzureSettings {
            credential: CredentialChoice::ClientSecret {
                tenant_id: DEV_KEYVAULT_TENANT.into(),
                client_id: DEV_KEYVAULT_CLIENT_ID.into(),
                secret: SecretString::from(DEV_KEYVAULT_SECRET),
            },
            authority_host: Some(self.base()),
            extra_ca_file: Some(self.path("ca.pem")),
        };
        let url = url::Url::parse(&self.key_url()).unwrap();
        AzureKeyVaultProvider::connect(&url, settings)
            .await
            .unwrap()
    }

    /// The next `count` key operations fail with `status` (and `Retry-After`).
    pub async fn faults(&self, count: u32, status: u16, retry_after: Option<u64>) {
        let response = self
            .http
            .post(format!("{}/_sim/faults", self.base()))
            .json(&json!({ "count": count, "status": status, "retry_after": retry_after }))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success());
    }

    pub async fn counters(&self) -> Value {
        json_of(self.http.get(format!("{}/_sim/counters", self.base()))).await
    }

    pub async fn count(&self, what: &str) -> u64 {
        let counters = self.counters().await;
        counters["operations"][what]
            .as_u64()
            .or(counters[what].as_u64())
            .unwrap_or(0)
    }

    /// Unwraps as only the vault can: with the RSA private key from the double's state file.
    /// Proves a wrapped key is RSA-OAEP-256 under that key version, and yields the data key.
    pub fn unwrap_here(&self, wrapped: &WrappedKey) -> Vec<u8> {
        use base64::Engine;
        use rsa::pkcs1::DecodeRsaPrivateKey;
        let version = wrapped
            .kek_id
            .strip_prefix(&self.kek_prefix())
            .expect("a kek_id of this key");
        let state: Value =
            serde_json::from_str(&std::fs::read_to_string(self.path("keyvault.json")).unwrap())
                .unwrap();
        let stored = state["keys"][KEY]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["version"] == version)
            .expect("the version is in the vault");
        let der = base64::engine::general_purpose::STANDARD
            .decode(stored["rsa_private_key"].as_str().unwrap())
            .unwrap();
        let key = rsa::RsaPrivateKey::from_pkcs1_der(&der).unwrap();
        key.decrypt(rsa::Oaep::new::<sha2::Sha256>(), &wrapped.bytes)
            .expect("RSA-OAEP-256 under the recorded version")
    }
}

pub async fn json_of(request: reqwest::RequestBuilder) -> Value {
    request.send().await.unwrap().json().await.unwrap()
}
