//! Integration clients: who may ask for which partner's tokens, for which audiences.
//! Secrets are 256-bit random values shown once; only their SHA-256 digests are stored.

use sqlx::Acquire;

use super::{Db, FromRow, StorageError};
use crate::domain::{Resource, TenantId};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Permission {
    /// Exchange a partner's grant for access tokens.
    TokensIssue,
    /// Read partner metadata (status, horizon) and partners' customers; no token power.
    PartnersRead,
    /// Exchange a partner's grant for access tokens in its customer tenants (REFERENCE §6). Not
    /// granted by default: a customer tenant is another organisation's directory.
    CustomersIssue,
}

impl Permission {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TokensIssue => "tokens:issue",
            Self::PartnersRead => "partners:read",
            Self::CustomersIssue => "customers:issue",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "tokens:issue" => Some(Self::TokensIssue),
            "partners:read" => Some(Self::PartnersRead),
            "customers:issue" => Some(Self::CustomersIssue),
            _ => None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Client {
    pub client_id: String,
    pub name: String,
    pub permissions: Vec<Permission>,
    pub resources: Vec<Resource>,
    /// `None`: every partner.
    pub partners: Option<Vec<TenantId>>,
    pub rate_limit_per_minute: i64,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

impl Client {
    pub fn may(&self, permission: Permission) -> bool {
        self.permissions.contains(&permission)
    }

    pub fn may_use_resource(&self, resource: &Resource) -> bool {
        self.resources.contains(resource)
    }

    pub fn may_use_partner(&self, tenant: &TenantId) -> bool {
        self.partners
            .as_ref()
            .is_none_or(|list| list.contains(tenant))
    }
}

#[derive(Clone, Debug)]
pub struct NewClient {
    pub name: String,
    pub permissions: Vec<Permission>,
    pub resources: Vec<Resource>,
    pub partners: Option<Vec<TenantId>>,
    pub rate_limit_per_minute: i64,
}

/// Longest client name, in characters.
pub const MAX_NAME_CHARS: usize = 100;
/// Highest rate limit a client may be given: far above any real integration (about 16,000
/// requests a second), low enough that a typo of a few extra digits is refused.
pub const MAX_RATE_LIMIT_PER_MINUTE: i64 = 1_000_000;
/// Most partners one client may be restricted to (beyond that, leave it unrestricted).
pub const MAX_PARTNERS: usize = 1_000;

/// Why a requested client was refused. The messages name no submitted value, so the
/// dashboard can show them as they are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidClient {
    #[error("the name must be 1 to 100 characters, without control characters")]
    Name,
    #[error("choose at least one permission")]
    NoPermission,
    #[error("a permission is not tokens:issue, partners:read or customers:issue")]
    UnknownPermission,
    #[error("choose at least one resource")]
    NoResource,
    #[error("a resource is not one of the configured resources (SAMVAULT_RESOURCES)")]
    UnknownResource,
    #[error(
        "a partner restriction is not a tenant id (a GUID such as 6f3a2a5e-0c1d-4a3b-8f4e-1c2d3e4f5a01)"
    )]
    Partner,
    #[error("a client can be restricted to at most 1000 partners")]
    TooManyPartners,
    #[error("the rate limit must be a whole number of requests per minute from 1 to 1000000")]
    RateLimit,
}

impl InvalidClient {
    /// The same sentence as `Display`, for pages that take a `&'static str`.
    pub fn message(self) -> &'static str {
        match self {
            Self::Name => "The name must be 1 to 100 characters, without control characters.",
            Self::NoPermission => "Choose at least one permission.",
            Self::UnknownPermission => {
                "A permission is not tokens:issue, partners:read or customers:issue."
            }
            Self::NoResource => "Choose at least one resource.",
            Self::UnknownResource => {
                "A resource is not one of the configured resources (SAMVAULT_RESOURCES)."
            }
            Self::Partner => {
                "A partner restriction is not a tenant id (a GUID such as 6f3a2a5e-0c1d-4a3b-8f4e-1c2d3e4f5a01)."
            }
            Self::TooManyPartners => "A client can be restricted to at most 1000 partners.",
            Self::RateLimit => {
                "The rate limit must be a whole number of requests per minute from 1 to 1000000."
            }
        }
    }
}

impl NewClient {
    /// Checks a client as requested by a person (the CLI's flags, the dashboard's form)
    /// against the configured resources. Repeated values count once; no partners means
    /// every partner. Callers decide defaults (the CLI grants both permissions when none
    /// is named) before calling.
    pub fn parse(
        name: &str,
        permissions: &[String],
        resources: &[String],
        partners: &[String],
        rate_limit_per_minute: i64,
        configured: &[Resource],
    ) -> Result<NewClient, InvalidClient> {
        let name = name.trim();
        let chars = name.chars().count();
        if chars == 0 || chars > MAX_NAME_CHARS || name.chars().any(char::is_control) {
            return Err(InvalidClient::Name);
        }
        let mut parsed_permissions = Vec::new();
        for p in permissions {
            let p = Permission::parse(p.trim()).ok_or(InvalidClient::UnknownPermission)?;
            if !parsed_permissions.contains(&p) {
                parsed_permissions.push(p);
            }
        }
        if parsed_permissions.is_empty() {
            return Err(InvalidClient::NoPermission);
        }
        let mut parsed_resources = Vec::new();
        for r in resources {
            let r = Resource::parse(r.trim())
                .ok()
                .filter(|r| configured.contains(r))
                .ok_or(InvalidClient::UnknownResource)?;
            if !parsed_resources.contains(&r) {
                parsed_resources.push(r);
            }
        }
        if parsed_resources.is_empty() {
            return Err(InvalidClient::NoResource);
        }
        if partners.len() > MAX_PARTNERS {
            return Err(InvalidClient::TooManyPartners);
        }
        let mut parsed_partners = Vec::new();
        for t in partners {
            let t = TenantId::parse(t.trim()).map_err(|_| InvalidClient::Partner)?;
            if !parsed_partners.contains(&t) {
                parsed_partners.push(t);
            }
        }
        if !(1..=MAX_RATE_LIMIT_PER_MINUTE).contains(&rate_limit_per_minute) {
            return Err(InvalidClient::RateLimit);
        }
        Ok(NewClient {
            name: name.to_string(),
            permissions: parsed_permissions,
            resources: parsed_resources,
            partners: (!parsed_partners.is_empty()).then_some(parsed_partners),
            rate_limit_per_minute,
        })
    }
}

/// The columns of a [`ClientRow`], for `concat!` into static SQL.
macro_rules! client_columns {
    () => {
        "client_id, name, permissions, resources, partners, rate_limit_per_minute, created_at, last_used_at, revoked_at"
    };
}

/// A `clients` row as stored: its lists are space-separated text.
#[derive(FromRow)]
struct ClientRow {
    client_id: String,
    name: String,
    permissions: String,
    resources: String,
    partners: Option<String>,
    rate_limit_per_minute: i64,
    created_at: i64,
    last_used_at: Option<i64>,
    revoked_at: Option<i64>,
}

impl TryFrom<ClientRow> for Client {
    type Error = StorageError;

    fn try_from(row: ClientRow) -> Result<Self, StorageError> {
        let id = &row.client_id;
        let corrupt = |what: &str| StorageError::Corrupt(format!("client {id}: {what}"));
        Ok(Client {
            permissions: row
                .permissions
                .split_whitespace()
                .map(|p| Permission::parse(p).ok_or_else(|| corrupt("permission")))
                .collect::<Result<_, _>>()?,
            resources: row
                .resources
                .split_whitespace()
                .map(|r| Resource::parse(r).map_err(|_| corrupt("resource")))
                .collect::<Result<_, _>>()?,
            partners: row
                .partners
                .map(|list| {
                    list.split_whitespace()
                        .map(|t| TenantId::parse(t).map_err(|_| corrupt("partner")))
                        .collect::<Result<Vec<_>, _>>()
                })
                .transpose()?,
            name: row.name,
            rate_limit_per_minute: row.rate_limit_per_minute,
            created_at: row.created_at,
            last_used_at: row.last_used_at,
            revoked_at: row.revoked_at,
            client_id: row.client_id,
        })
    }
}

fn join<T>(items: &[T], f: impl Fn(&T) -> &str) -> String {
    items.iter().map(f).collect::<Vec<_>>().join(" ")
}

/// Creates a client with its first secret (given as a digest; the caller shows the secret once).
pub async fn create(
    db: &Db,
    client_id: &str,
    new: &NewClient,
    secret_id: &str,
    secret_digest: &[u8; 32],
    now: i64,
) -> Result<(), StorageError> {
    let mut conn = db.pool().acquire().await?;
    let mut tx = conn.begin().await?;
    sqlx::query(
        "INSERT INTO clients (client_id, name, permissions, resources, partners, rate_limit_per_minute, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(client_id)
    .bind(&new.name)
    .bind(join(&new.permissions, |p| p.as_str()))
    .bind(join(&new.resources, |r| r.as_str()))
    .bind(new.partners.as_ref().map(|list| join(list, |t| t.as_str())))
    .bind(new.rate_limit_per_minute)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO client_secrets (id, client_id, digest, created_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(secret_id)
    .bind(client_id)
    .bind(secret_digest.as_slice())
    .bind(now)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

pub async fn get(db: &Db, client_id: &str) -> Result<Option<Client>, StorageError> {
    let row: Option<ClientRow> = sqlx::query_as(concat!(
        "SELECT ",
        client_columns!(),
        " FROM clients WHERE client_id = $1"
    ))
    .bind(client_id)
    .fetch_optional(db.reader())
    .await?;
    row.map(Client::try_from).transpose()
}

pub async fn list(db: &Db) -> Result<Vec<Client>, StorageError> {
    let rows: Vec<ClientRow> = sqlx::query_as(concat!(
        "SELECT ",
        client_columns!(),
        " FROM clients ORDER BY created_at, client_id"
    ))
    .fetch_all(db.pool())
    .await?;
    rows.into_iter().map(Client::try_from).collect()
}

/// Digests of the client's secrets that are not revoked.
pub async fn active_secret_digests(db: &Db, client_id: &str) -> Result<Vec<Vec<u8>>, StorageError> {
    Ok(sqlx::query_scalar(
        "SELECT digest FROM client_secrets WHERE client_id = $1 AND revoked_at IS NULL",
    )
    .bind(client_id)
    .fetch_all(db.reader())
    .await?)
}

/// Revokes the client and all its secrets. Returns false when no such live client exists.
pub async fn revoke(db: &Db, client_id: &str, now: i64) -> Result<bool, StorageError> {
    let mut conn = db.pool().acquire().await?;
    let mut tx = conn.begin().await?;
    let done = sqlx::query(
        "UPDATE clients SET revoked_at = $2 WHERE client_id = $1 AND revoked_at IS NULL",
    )
    .bind(client_id)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE client_secrets SET revoked_at = $2 WHERE client_id = $1 AND revoked_at IS NULL",
    )
    .bind(client_id)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(done.rows_affected() == 1)
}

pub async fn touch(db: &Db, client_id: &str, now: i64) -> Result<(), StorageError> {
    sqlx::query("UPDATE clients SET last_used_at = $2 WHERE client_id = $1")
        .bind(client_id)
        .bind(now)
        .execute(db.pool())
        .await?;
    Ok(())
}

/// Prefix that makes samvault client secrets recognisable to secret scanners.
pub const SECRET_PREFIX: &str = "svs_";

/// SHA-256 of a presented secret, the only form that is stored or compared.
pub fn digest(secret: &str) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::digest(secret.as_bytes()).into()
}

/// A fresh 256-bit client secret, recognisable by its prefix.
fn new_secret() -> String {
    use base64::Engine;
    use rand::RngCore;
    let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
    rand::rng().fill_bytes(bytes.as_mut());
    format!(
        "{SECRET_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes.as_ref())
    )
}

/// Adds a secret to a live client (to roll secrets without downtime); returns
/// `(secret_id, secret)`, or `None` when the client does not exist or is revoked.
pub async fn add_secret(
    db: &Db,
    client_id: &str,
    now: i64,
) -> Result<Option<(String, secrecy::SecretString)>, StorageError> {
    let Some(client) = get(db, client_id).await? else {
        return Ok(None);
    };
    if client.revoked_at.is_some() {
        return Ok(None);
    }
    let secret = new_secret();
    let secret_id = uuid::Uuid::new_v4().to_string();
    sqlx::query(
        "INSERT INTO client_secrets (id, client_id, digest, created_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(&secret_id)
    .bind(client_id)
    .bind(digest(&secret).as_slice())
    .bind(now)
    .execute(db.pool())
    .await?;
    Ok(Some((secret_id, secrecy::SecretString::from(secret))))
}

/// Revokes one secret of a client; false when there was no such live secret.
pub async fn revoke_secret(
    db: &Db,
    client_id: &str,
    secret_id: &str,
    now: i64,
) -> Result<bool, StorageError> {
    let done = sqlx::query("UPDATE client_secrets SET revoked_at = $3 WHERE client_id = $1 AND id = $2 AND revoked_at IS NULL")
        .bind(client_id)
        .bind(secret_id)
        .bind(now)
        .execute(db.pool())
        .await?;
    Ok(done.rows_affected() == 1)
}

/// A client's secrets (ids and dates only: the secrets themselves are not stored).
pub async fn secrets(
    db: &Db,
    client_id: &str,
) -> Result<Vec<(String, i64, Option<i64>)>, StorageError> {
    Ok(sqlx::query_as("SELECT id, created_at, revoked_at FROM client_secrets WHERE client_id = $1 ORDER BY created_at, id")
        .bind(client_id)
        .fetch_all(db.pool())
        .await?)
}

/// A client secret as the dashboard lists it: never the secret, which is not stored.
#[derive(Clone, Debug, FromRow)]
pub struct SecretInfo {
    pub id: String,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

/// Every client's secrets in one query, by client id (oldest first).
pub async fn secrets_by_client(
    db: &Db,
) -> Result<std::collections::BTreeMap<String, Vec<SecretInfo>>, StorageError> {
    #[derive(FromRow)]
    struct ClientSecret {
        client_id: String,
        #[sqlx(flatten)]
        secret: SecretInfo,
    }
    let rows: Vec<ClientSecret> = sqlx::query_as(
        "SELECT client_id, id, created_at, revoked_at FROM client_secrets ORDER BY created_at, id",
    )
    .fetch_all(db.pool())
    .await?;
    let mut by_client = std::collections::BTreeMap::<String, Vec<SecretInfo>>::new();
    for row in rows {
        by_client.entry(row.client_id).or_default().push(row.secret);
    }
    Ok(by_client)
}

/// Creates a client with a fresh 256-bit secret; returns `(client_id, secret)`. The
/// secret exists only in the return value: show it once.
pub async fn issue(
    db: &Db,
    new: &NewClient,
    now: i64,
) -> Result<(String, secrecy::SecretString), StorageError> {
    let secret = new_secret();
    let client_id = uuid::Uuid::new_v4().to_string();
    let secret_id = uuid::Uuid::new_v4().to_string();
    create(db, &client_id, new, &secret_id, &digest(&secret), now).await?;
    Ok((client_id, secrecy::SecretString::from(secret)))
}

/// Checks `client_id:secret`; `None` for unknown, revoked or wrong. Every stored digest is
/// compared in constant time so timing does not tell which part was wrong.
pub async fn authenticate(
    db: &Db,
    client_id: &str,
    secret: &str,
) -> Result<Option<Client>, StorageError> {
    use subtle::ConstantTimeEq;
    let presented = digest(secret);
    let Some(client) = get(db, client_id).await? else {
        return Ok(None);
    };
    if client.revoked_at.is_some() {
        return Ok(None);
    }
    let matched = active_secret_digests(db, client_id)
        .await?
        .iter()
        .fold(subtle::Choice::from(0), |acc, stored| {
            acc | stored.as_slice().ct_eq(&presented)
        });
    Ok(bool::from(matched).then_some(client))
}

/// How many clients and secrets have ever been revoked: a cheap change detector for the
/// authentication caches of running services.
pub async fn revocation_count(db: &Db) -> Result<i64, StorageError> {
    Ok(sqlx::query_scalar(
        "SELECT (SELECT COUNT(*) FROM clients WHERE revoked_at IS NOT NULL) + (SELECT COUNT(*) FROM client_secrets WHERE revoked_at IS NOT NULL) AS n",
    )
    .fetch_one(db.reader())
    .await?)
}
