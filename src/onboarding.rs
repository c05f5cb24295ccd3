//! Partner onboarding below HTTP, shared by the consent pages (`http::onboard`), the dashboard
//! and the command line (`invite create`, `partners import`): invitation links, the
//! organisation name a consent shows, and recording a consent with its sealed refresh token.

use base64::Engine;
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use crate::domain::TenantId;
use crate::storage::partners::{self, NewConsent, StoredGrant, grant_context};
use crate::storage::{Db, StorageError, invitations, now};
use crate::vault::{Vault, VaultError};

/// 256 random bits, URL-safe: invitation links, CSRF tokens.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Invitation ids are the SHA-256 of the URL token: the database never holds a usable link.
pub fn invitation_id(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Creates an invitation valid for `lifetime_secs` (for `tenant` only, when given); returns
/// its URL, the only place the token ever appears, and when it expires.
pub async fn create_invitation(
    db: &Db,
    public_url: &url::Url,
    tenant: Option<&TenantId>,
    lifetime_secs: i64,
) -> Result<(url::Url, i64), StorageError> {
    let token = random_token();
    let created = now();
    let expires_at = created + lifetime_secs;
    invitations::create(db, &invitation_id(&token), tenant, created, expires_at).await?;
    let url = public_url
        .join(&format!("onboard/i/{token}"))
        .expect("token is URL-safe");
    Ok((url, expires_at))
}

/// Display name for the organisation: the tenant's domain label (`contoso.example` →
/// `Contoso`). Entra tokens carry no tenant name.
pub fn organisation_name(upn: &str) -> (String, Option<String>) {
    let Some((_, domain)) = upn.rsplit_once('@') else {
        return ("Unknown organisation".into(), None);
    };
    let domain = domain.to_ascii_lowercase();
    let label = domain.split('.').next().unwrap_or(&domain);
    let mut chars = label.chars();
    let name = match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => domain.clone(),
    };
    (name, Some(domain))
}

#[derive(Debug, thiserror::Error)]
pub enum ConsentError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Vault(#[from] VaultError),
}

/// Records a consent, from the onboarding callback or an import: seals `refresh_token` as the
/// tenant's next grant version (bound to it as associated data), makes the partner active
/// with it (older versions shredded), and uses up the invitation it came through. Returns
/// the version. Nothing is stored if sealing fails.
pub async fn record_consent(
    db: &Db,
    vault: &Vault,
    consent: &NewConsent,
    refresh_token: &SecretString,
    at: i64,
    rotate_at: i64,
) -> Result<i64, ConsentError> {
    let tenant = &consent.tenant_id;
    let version = partners::next_version(db, tenant).await?;
    let sealed = vault
        .seal(
            refresh_token.expose_secret().as_bytes(),
            &grant_context(tenant, version),
        )
        .await?;
    let grant = StoredGrant { version, sealed };
    partners::record_consent(db, consent, &grant, at, rotate_at).await?;
    if let Some(id) = &consent.invitation_id {
        invitations::mark_used(db, id, &consent.upn, at).await?;
    }
    Ok(version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn organisation_names_come_from_the_domain() {
        assert_eq!(
            organisation_name("jane@Contoso.Example"),
            ("Contoso".into(), Some("contoso.example".into()))
        );
        assert_eq!(
            organisation_name("no-at-sign"),
            ("Unknown organisation".into(), None)
        );
    }

    #[test]
    fn invitation_ids_are_digests_of_the_token() {
        let token = random_token();
        assert_eq!(token.len(), 43);
        assert_eq!(invitation_id(&token).len(), 64);
        assert_ne!(invitation_id(&token), invitation_id(&random_token()));
    }
}
