//! Partner onboarding below HTTP, shared by the consent pages (`http::onboard`), the dashboard
//! and the command line (`invite create`, `partners import`): invitation links, the
//! organisation name a consent shows, recording a consent with its sealed refresh token, and
//! who may replace a grant another user of the tenant gave.

use base64::Engine;
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use crate::domain::TenantId;
use crate::notify::{Event, Notifier, PartnerUser};
use crate::storage::invitations::InvitationState;
use crate::storage::partners::{
    self, GrantHolder, GuardedConsent, NewConsent, StoredGrant, grant_context,
};
use crate::storage::{Db, StorageError, audit, invitations, now};
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

/// Directory roles (Entra role template ids, as the `wids` claim lists them) whose holders
/// can grant and remove the app's consent in their own tenant anyway: they may replace a
/// grant another user gave, and revoke it. Partner Center's Admin Agent and Sales Agent roles
/// are group memberships that Entra tokens do not name.
pub const CONSENT_ADMIN_ROLES: [(&str, &str); 4] = [
    (
        "62e90394-69f5-4237-9190-012177145e10",
        "Global Administrator",
    ),
    (
        "e8611ab8-c189-46e8-94e1-60213ab1f814",
        "Privileged Role Administrator",
    ),
    (
        "158c047a-c907-4556-b7ef-446551a6b5f7",
        "Cloud Application Administrator",
    ),
    (
        "9b895d92-2cd3-44c7-9d02-a6ac2d5ea5c3",
        "Application Administrator",
    ),
];

/// The name of the first consent-managing role among `wids`, if any.
pub fn consent_admin_role(wids: &[String]) -> Option<&'static str> {
    CONSENT_ADMIN_ROLES
        .iter()
        .find(|(id, _)| wids.iter().any(|w| w.eq_ignore_ascii_case(id)))
        .map(|(_, role)| *role)
}

/// The [`CONSENT_ADMIN_ROLES`] as a sentence names them ("A, B, C or D").
pub fn admin_roles_in_words() -> String {
    let names: Vec<&str> = CONSENT_ADMIN_ROLES.iter().map(|(_, name)| *name).collect();
    match names.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => names.concat(),
    }
}

/// A partner user completing a consent, as far as replacing a usable grant goes.
pub struct Consenter<'a> {
    pub oid: Option<&'a str>,
    /// The id_token's `wids`.
    pub wids: &'a [String],
    /// Whether the consent came through an invitation pinned to the user's tenant.
    pub pinned_invitation: bool,
}

/// By what right a consent replaces a usable grant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Authority {
    /// The user whose consent created it renews it.
    SameUser,
    /// A holder of one of [`CONSENT_ADMIN_ROLES`].
    AdminRole(&'static str),
    /// Through an invitation the CPV pinned to the tenant.
    PinnedInvitation,
    /// The CPV's operator (`partners import`).
    Operator,
}

impl Authority {
    /// In words, for the audit log and the webhook event.
    pub fn describe(self) -> &'static str {
        match self {
            Self::SameUser => "same user",
            Self::AdminRole(role) => role,
            Self::PinnedInvitation => "invitation pinned to this tenant",
            Self::Operator => "operator import",
        }
    }
}

impl Consenter<'_> {
    /// Why this user may replace the grant `holder` stands behind; `None` if they may not.
    pub fn authority_over(&self, holder: &GrantHolder) -> Option<Authority> {
        if holder.oid.is_some() && holder.oid.as_deref() == self.oid {
            Some(Authority::SameUser)
        } else if let Some(role) = consent_admin_role(self.wids) {
            Some(Authority::AdminRole(role))
        } else {
            self.pinned_invitation
                .then_some(Authority::PinnedInvitation)
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConsentError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error("a usable grant of this tenant is held by another user")]
    HeldByAnother(GrantHolder),
    #[error("the invitation is {}", .0.as_str())]
    InvitationSpent(InvitationState),
    #[error("another consent of this tenant was recorded at the same moment")]
    Concurrent,
}

/// A consent as recorded: its grant version, and the usable grant it replaced (by what right).
#[derive(Debug)]
pub struct Recorded {
    pub version: i64,
    pub replaced: Option<(GrantHolder, Authority)>,
}

/// Records a consent from an import (the operator's authority): seals `refresh_token` as the
/// tenant's next grant version (bound to it as associated data) and makes the partner active
/// with it (older versions shredded), whoever held the previous grant. Returns the version.
/// Nothing is stored if sealing fails.
pub async fn record_consent(
    db: &Db,
    vault: &Vault,
    consent: &NewConsent,
    refresh_token: &SecretString,
    at: i64,
    rotate_at: i64,
) -> Result<i64, ConsentError> {
    let grant = seal_next(db, vault, &consent.tenant_id, refresh_token).await?;
    let outcome = partners::record_consent_guarded(db, consent, &grant, at, rotate_at, |_| {
        Some(Authority::Operator)
    })
    .await?;
    Ok(recorded(db, consent, grant.version, outcome, at)
        .await?
        .version)
}

/// Records a partner user's consent from the onboarding callback, as [`record_consent`] does,
/// unless the tenant holds a usable grant another user gave and `who` has no [`Authority`]
/// over it (`HeldByAnother`), or the invitation it came through was used or ended meanwhile
/// (`InvitationSpent`: claimed in the transaction that records the consent). Either is seen
/// before sealing when it can be (no key-provider call), and decided again in that
/// transaction. A refused consent stores nothing and changes nothing.
pub async fn record_partner_consent(
    db: &Db,
    vault: &Vault,
    consent: &NewConsent,
    who: &Consenter<'_>,
    refresh_token: &SecretString,
    at: i64,
    rotate_at: i64,
) -> Result<Recorded, ConsentError> {
    let tenant = &consent.tenant_id;
    if let Some(holder) = partners::grant_holder(db, tenant).await?
        && who.authority_over(&holder).is_none()
    {
        return Err(ConsentError::HeldByAnother(holder));
    }
    if let Some(id) = &consent.invitation_id {
        let state = invitation_state(db, id, at).await?;
        if state != InvitationState::Open {
            return Err(ConsentError::InvitationSpent(state));
        }
    }
    let grant = seal_next(db, vault, tenant, refresh_token).await?;
    let outcome = partners::record_consent_guarded(db, consent, &grant, at, rotate_at, |h| {
        who.authority_over(h)
    })
    .await?;
    recorded(db, consent, grant.version, outcome, at).await
}

/// Seals `refresh_token` as `tenant`'s next grant version.
async fn seal_next(
    db: &Db,
    vault: &Vault,
    tenant: &TenantId,
    refresh_token: &SecretString,
) -> Result<StoredGrant, ConsentError> {
    let version = partners::next_version(db, tenant).await?;
    let sealed = vault
        .seal(
            refresh_token.expose_secret().as_bytes(),
            &grant_context(tenant, version),
        )
        .await?;
    Ok(StoredGrant { version, sealed })
}

async fn recorded(
    db: &Db,
    consent: &NewConsent,
    version: i64,
    outcome: GuardedConsent<Authority>,
    at: i64,
) -> Result<Recorded, ConsentError> {
    match outcome {
        GuardedConsent::Recorded { replaced } => Ok(Recorded { version, replaced }),
        GuardedConsent::Refused(holder) => Err(ConsentError::HeldByAnother(holder)),
        GuardedConsent::Concurrent => Err(ConsentError::Concurrent),
        GuardedConsent::InvitationSpent => {
            let id = consent.invitation_id.as_deref().unwrap_or_default();
            Err(ConsentError::InvitationSpent(
                invitation_state(db, id, at).await?,
            ))
        }
    }
}

/// An invitation's state now; an unknown one counts as used.
async fn invitation_state(db: &Db, id: &str, at: i64) -> Result<InvitationState, StorageError> {
    Ok(invitations::get(db, id)
        .await?
        .map_or(InvitationState::Used, |i| i.state(at)))
}

/// Audits a grant changing hands (`partner.consenter_changed`, actor the new consenter, with
/// both users and the right it was done by) and sends it as a signed webhook event, so the
/// CPV hears when someone other than the person it onboarded now speaks for a partner.
pub async fn record_change_of_hands(
    db: &Db,
    notifier: &Notifier,
    consent: &NewConsent,
    version: i64,
    (previous, authority): &(GrantHolder, Authority),
    at: i64,
) -> Result<(), StorageError> {
    let tenant = consent.tenant_id.as_str();
    let detail = serde_json::json!({
        "previous": { "upn": previous.upn, "oid": previous.oid, "version": previous.version },
        "consenter": { "upn": consent.upn, "oid": consent.oid, "version": version },
        "because": authority.describe(),
    });
    let actor = format!("partner:{}", consent.upn);
    audit::append(
        db,
        &actor,
        "partner.consenter_changed",
        Some(tenant),
        detail,
        at,
    )
    .await?;
    let reason = format!(
        "The grant given by {} was replaced by a consent of {} ({}).",
        previous.upn,
        consent.upn,
        authority.describe()
    );
    let event = Event::consenter_changed(
        tenant,
        PartnerUser::new(&previous.upn, previous.oid.as_deref()),
        PartnerUser::new(&consent.upn, consent.oid.as_deref()),
        &reason,
    );
    notifier.publish(&event).await;
    Ok(())
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

    fn holder(oid: Option<&str>) -> GrantHolder {
        GrantHolder {
            version: 3,
            upn: "jane@contoso.example".into(),
            oid: oid.map(str::to_string),
            user_name: None,
            consented_at: 0,
        }
    }

    #[test]
    fn a_live_grant_changes_hands_only_with_authority() {
        let sales_agent = Consenter {
            oid: Some("sam"),
            wids: &[],
            pinned_invitation: false,
        };
        assert_eq!(sales_agent.authority_over(&holder(Some("jane"))), None);
        // An imported grant has no consenting oid: nobody is "the same user".
        assert_eq!(sales_agent.authority_over(&holder(None)), None);
        let jane = Consenter {
            oid: Some("jane"),
            ..sales_agent
        };
        assert_eq!(
            jane.authority_over(&holder(Some("jane"))),
            Some(Authority::SameUser)
        );
        let invited = Consenter {
            pinned_invitation: true,
            ..sales_agent
        };
        assert_eq!(
            invited.authority_over(&holder(Some("jane"))),
            Some(Authority::PinnedInvitation)
        );
        let roles = ["b79fbf4d-3ef9-4689-8143-76b194e85509".to_string()];
        let member = Consenter {
            wids: &roles,
            ..sales_agent
        };
        assert_eq!(
            member.authority_over(&holder(Some("jane"))),
            None,
            "the User role"
        );
        let roles = ["9B895D92-2CD3-44C7-9D02-A6AC2D5EA5C3".to_string()];
        let app_admin = Consenter {
            wids: &roles,
            ..sales_agent
        };
        assert_eq!(
            app_admin.authority_over(&holder(Some("jane"))),
            Some(Authority::AdminRole("Application Administrator"))
        );
        assert_eq!(
            admin_roles_in_words(),
            "Global Administrator, Privileged Role Administrator, Cloud Application Administrator or Application Administrator"
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
