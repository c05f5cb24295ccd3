//! Which Entra ID credential samvault presents to Key Vault, chosen from the environment the
//! way Azure SDKs' `EnvironmentCredential` and `DefaultAzureCredential` do:
//!
//! 1. `AZURE_CLIENT_SECRET` (or `AZURE_CLIENT_SECRET_FILE`) with `AZURE_TENANT_ID` and
//!    `AZURE_CLIENT_ID`: a service principal's client secret;
//! 2. `AZURE_FEDERATED_TOKEN_FILE` with `AZURE_TENANT_ID` and `AZURE_CLIENT_ID`: workload
//!    identity (AKS and other federated issuers);
//! 3. otherwise the managed identity of the host, user-assigned when `AZURE_CLIENT_ID` is set.
//!
//! `AZURE_AUTHORITY_HOST` moves the token endpoint (sovereign clouds, a test double).

use std::path::PathBuf;
use std::sync::Arc;

use azure_core::cloud::{CloudConfiguration, CustomConfiguration};
use azure_core::credentials::{Secret, TokenCredential};
use azure_core::http::{ClientOptions, RetryOptions, Transport};
use azure_identity::{
    ClientAssertionCredentialOptions, ClientSecretCredential, ClientSecretCredentialOptions,
    ManagedIdentityCredential, ManagedIdentityCredentialOptions, UserAssignedId,
    WorkloadIdentityCredential, WorkloadIdentityCredentialOptions,
};
use secrecy::{ExposeSecret, SecretString};

use crate::vault::VaultError;

/// The credential settings read from the environment.
pub enum CredentialChoice {
    ClientSecret {
        tenant_id: String,
        client_id: String,
        secret: SecretString,
    },
    WorkloadIdentity {
        tenant_id: String,
        client_id: String,
        token_file: PathBuf,
    },
    ManagedIdentity {
        client_id: Option<String>,
    },
}

impl std::fmt::Debug for CredentialChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

fn missing(name: &str, with: &str) -> VaultError {
    VaultError::Config(format!("{name} is required with {with}"))
}

impl CredentialChoice {
    /// Reads the standard `AZURE_*` variables through `env`.
    pub fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Result<Self, VaultError> {
        let var = |name: &str| {
            env(name)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let secret = match (var("AZURE_CLIENT_SECRET"), var("AZURE_CLIENT_SECRET_FILE")) {
            (Some(secret), _) => Some(secret),
            (None, Some(path)) => Some(
                std::fs::read_to_string(&path)
                    .map_err(|e| {
                        VaultError::Config(format!("AZURE_CLIENT_SECRET_FILE {path}: {e}"))
                    })?
                    .trim()
                    .to_string(),
            ),
            (None, None) => None,
        };
        if let Some(secret) = secret {
            return Ok(Self::ClientSecret {
                tenant_id: var("AZURE_TENANT_ID")
                    .ok_or_else(|| missing("AZURE_TENANT_ID", "AZURE_CLIENT_SECRET"))?,
                client_id: var("AZURE_CLIENT_ID")
                    .ok_or_else(|| missing("AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET"))?,
                secret: SecretString::from(secret),
            });
        }
        if let Some(token_file) = var("AZURE_FEDERATED_TOKEN_FILE") {
            return Ok(Self::WorkloadIdentity {
                tenant_id: var("AZURE_TENANT_ID")
                    .ok_or_else(|| missing("AZURE_TENANT_ID", "AZURE_FEDERATED_TOKEN_FILE"))?,
                client_id: var("AZURE_CLIENT_ID")
                    .ok_or_else(|| missing("AZURE_CLIENT_ID", "AZURE_FEDERATED_TOKEN_FILE"))?,
                token_file: token_file.into(),
            });
        }
        Ok(Self::ManagedIdentity {
            client_id: var("AZURE_CLIENT_ID"),
        })
    }

    /// For logs: which identity, never the secret.
    pub fn describe(&self) -> String {
        match self {
            Self::ClientSecret {
                tenant_id,
                client_id,
                ..
            } => format!("client secret of {client_id} in tenant {tenant_id}"),
            Self::WorkloadIdentity {
                tenant_id,
                client_id,
                ..
            } => format!("workload identity {client_id} in tenant {tenant_id}"),
            Self::ManagedIdentity { client_id: None } => "system-assigned managed identity".into(),
            Self::ManagedIdentity {
                client_id: Some(id),
            } => format!("user-assigned managed identity {id}"),
        }
    }

    /// Builds the SDK credential. `authority_host` (from `AZURE_AUTHORITY_HOST`) must be https.
    pub fn credential(
        &self,
        transport: Transport,
        authority_host: Option<&str>,
    ) -> Result<Arc<dyn TokenCredential>, VaultError> {
        let cloud = authority_host.map(|host| {
            let mut custom = CustomConfiguration::default();
            custom.authority_host = host.to_string();
            Arc::new(CloudConfiguration::Custom(custom))
        });
        // Retries are ours (`super::retry`), bounded for the request path.
        let client_options = ClientOptions {
            transport: Some(transport),
            retry: RetryOptions::none(),
            cloud,
            ..Default::default()
        };
        let sdk = |e: azure_core::Error| {
            VaultError::Config(format!("Key Vault credential ({}): {e}", self.describe()))
        };
        Ok(match self {
            Self::ClientSecret {
                tenant_id,
                client_id,
                secret,
            } => ClientSecretCredential::new(
                tenant_id,
                client_id.clone(),
                Secret::new(secret.expose_secret().to_string()),
                Some(ClientSecretCredentialOptions { client_options }),
            )
            .map_err(sdk)?,
            Self::WorkloadIdentity {
                tenant_id,
                client_id,
                token_file,
            } => WorkloadIdentityCredential::new(Some(WorkloadIdentityCredentialOptions {
                credential_options: ClientAssertionCredentialOptions { client_options },
                client_id: Some(client_id.clone()),
                tenant_id: Some(tenant_id.clone()),
                token_file_path: Some(token_file.clone()),
            }))
            .map_err(sdk)?,
            Self::ManagedIdentity { client_id } => {
                ManagedIdentityCredential::new(Some(ManagedIdentityCredentialOptions {
                    user_assigned_id: client_id.clone().map(UserAssignedId::ClientId),
                    client_options,
                }))
                .map_err(sdk)?
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn choose(vars: &[(&str, &str)]) -> Result<CredentialChoice, VaultError> {
        let env: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        CredentialChoice::from_env(&|name| env.get(name).cloned())
    }

    #[test]
    fn a_client_secret_wins_then_workload_identity_then_managed_identity() {
        let secret = choose(&[
            ("AZURE_TENANT_ID", "t"),
            ("AZURE_CLIENT_ID", "c"),
            ("AZURE_CLIENT_SECRET", "s3cret-value"),
            ("AZURE_FEDERATED_TOKEN_FILE", "/var/run/token"),
        ])
        .unwrap();
        assert!(
            matches!(&secret, CredentialChoice::ClientSecret { secret, .. } if secret.expose_secret() == "s3cret-value")
        );
        assert!(!format!("{secret:?}").contains("s3cret-value"));

        let workload = choose(&[
            ("AZURE_TENANT_ID", "t"),
            ("AZURE_CLIENT_ID", "c"),
            ("AZURE_FEDERATED_TOKEN_FILE", "/var/run/token"),
        ])
        .unwrap();
        assert!(
            matches!(workload, CredentialChoice::WorkloadIdentity { token_file, .. } if token_file == std::path::Path::new("/var/run/token"))
        );

        let user_assigned = choose(&[("AZURE_CLIENT_ID", "c")]).unwrap();
        assert!(matches!(
            user_assigned,
            CredentialChoice::ManagedIdentity { client_id: Some(id) } if id == "c"
        ));
        assert!(matches!(
            choose(&[]).unwrap(),
            CredentialChoice::ManagedIdentity { client_id: None }
        ));
    }

    #[test]
    fn a_secret_can_come_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "from-file\n").unwrap();
        let chosen = choose(&[
            ("AZURE_TENANT_ID", "t"),
            ("AZURE_CLIENT_ID", "c"),
            ("AZURE_CLIENT_SECRET_FILE", path.to_str().unwrap()),
        ])
        .unwrap();
        assert!(
            matches!(chosen, CredentialChoice::ClientSecret { secret, .. } if secret.expose_secret() == "from-file")
        );
    }

    #[test]
    fn an_incomplete_service_principal_is_a_clear_error() {
        let err = choose(&[("AZURE_CLIENT_SECRET", "s"), ("AZURE_CLIENT_ID", "c")])
            .err()
            .unwrap();
        assert!(
            err.to_string()
                .contains("AZURE_TENANT_ID is required with AZURE_CLIENT_SECRET"),
            "{err}"
        );
        let err = choose(&[
            ("AZURE_FEDERATED_TOKEN_FILE", "/f"),
            ("AZURE_TENANT_ID", "t"),
        ])
        .err()
        .unwrap();
        assert!(err.to_string().contains("AZURE_CLIENT_ID"), "{err}");
    }
}
