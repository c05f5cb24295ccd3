//! The simulated directory: tenants, their users, and the apps registered in it.
//!
//! The directory is immutable once built (mutations the tests need, such as a
//! deleted tenant or a password reset, live in `grants::SimState`), so every
//! lookup is a lock-free `HashMap` read even with 10,000 generated tenants.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::client_auth::RegisteredCertificate;
use super::{
    ADATUM, CONTOSO, DEMO_APP_NAME, DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, FABRIKAM, LITWARE,
    NORTHWIND, TAILSPIN, WINGTIP,
};

/// Resources the demo CPV app declares as required permissions; `.default` at
/// the authorize endpoint expands to these, as Entra does with an app's static
/// permissions.
const DEMO_PERMISSIONS: &[(&str, &str)] = &[
    (
        "https://api.partnercenter.microsoft.com",
        "user_impersonation",
    ),
    ("https://graph.microsoft.com", "Directory.AccessAsUser.All"),
    ("https://management.azure.com", "user_impersonation"),
];

/// First-party APIs whose service principal exists in every tenant, by identifier URI, with
/// their app ids (Entra names a resource by app id in some messages, e.g. 50076, 650057).
const FIRST_PARTY_RESOURCES: &[(&str, &str)] = &[
    (
        "https://api.partnercenter.microsoft.com",
        "fa3d9a0c-3fb0-42cc-9193-47c7ecd2edbd",
    ),
    (
        "https://graph.microsoft.com",
        "00000003-0000-0000-c000-000000000000",
    ),
    (
        "https://graph.windows.net",
        "00000002-0000-0000-c000-000000000000",
    ),
    (
        "https://management.azure.com",
        "797f4846-ba00-4fd7-ba43-dac1f8f63013",
    ),
    (
        "https://management.core.windows.net",
        "797f4846-ba00-4fd7-ba43-dac1f8f63013",
    ),
    (
        "https://outlook.office365.com",
        "00000002-0000-0ff1-ce00-000000000000",
    ),
];

/// How a tenant's conditional access treats MFA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MfaPolicy {
    /// Entra MFA is required at every sign-in (amr `pwd` + `mfa`).
    Enforced,
    /// MFA is performed by the tenant's federated IdP (amr `fed` + `mfa`).
    Federated,
    /// Users may sign in with a password only.
    NotEnforced,
}

impl MfaPolicy {
    pub fn enforced(self) -> bool {
        !matches!(self, MfaPolicy::NotEnforced)
    }
}

// TOML accepts `mfa = true|false` or one of the policy names.
impl<'de> Deserialize<'de> for MfaPolicy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bool(bool),
            Name(String),
        }
        match Raw::deserialize(d)? {
            Raw::Bool(true) => Ok(MfaPolicy::Enforced),
            Raw::Bool(false) => Ok(MfaPolicy::NotEnforced),
            Raw::Name(name) => match name.to_ascii_lowercase().replace(['-', ' '], "_").as_str() {
                "enforced" | "entra" | "required" => Ok(MfaPolicy::Enforced),
                "federated" => Ok(MfaPolicy::Federated),
                "not_enforced" | "none" | "off" | "optional" => Ok(MfaPolicy::NotEnforced),
                other => Err(serde::de::Error::custom(format!(
                    "unknown mfa policy {other:?} (expected enforced, federated or not_enforced)"
                ))),
            },
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Tenant {
    pub id: String,
    pub name: String,
    pub domain: String,
    pub mfa: MfaPolicy,
}

#[derive(Debug, Clone, Serialize)]
pub struct User {
    pub upn: String,
    pub name: String,
    pub role: String,
    pub oid: String,
    pub tenant_id: String,
}

/// An app registration. The secret here is the initial one; the live secret
/// (rotated or expired through `/_sim/app/...`) is in `SimState`.
#[derive(Debug, Clone)]
pub struct App {
    pub client_id: String,
    pub name: String,
    pub secret: String,
    /// (resource, permission) pairs the app declares, used for `.default`.
    pub permissions: Vec<(String, String)>,
    /// Certificates whose keys may sign the app's client assertions (`--client-cert`).
    pub certificates: Vec<RegisteredCertificate>,
}

impl App {
    /// The resources the app registration lists (its "required resource access").
    pub fn registered_resources(&self) -> Vec<String> {
        let mut resources: Vec<String> = self.permissions.iter().map(|(r, _)| r.clone()).collect();
        resources.dedup();
        resources
    }

    pub fn static_permissions(&self, resource: &str) -> Vec<String> {
        self.permissions
            .iter()
            .filter(|(r, _)| r == resource)
            .map(|(_, p)| p.clone())
            .collect()
    }
}

/// A customer tenant as the directory starts with it: a tenant of its own, with a
/// delegated-admin relationship to its partner (REFERENCE §6). Customers change at run time
/// (`/_sim/`), so the live ones are in `customers::Customers`; these are what a reset restores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomerSeed {
    pub id: String,
    pub name: String,
    pub domain: String,
    pub partner_tenant_id: String,
    /// Whether the partner still holds delegated admin rights there (else AADSTS50020).
    pub relationship_active: bool,
}

#[derive(Debug, Default)]
pub struct Directory {
    tenants: Vec<Tenant>,
    tenant_by_id: HashMap<String, usize>,
    tenant_by_domain: HashMap<String, usize>,
    users: Vec<User>,
    user_by_upn: HashMap<String, usize>,
    apps: HashMap<String, App>,
    customers: Vec<CustomerSeed>,
    /// Ids and domains of `customers`, which must be unique.
    customer_keys: std::collections::HashSet<String>,
}

/// The TOML shape of a directory file (see `DirectoryFile` in the module docs of `mod.rs`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DirectoryFile {
    #[serde(default)]
    apps: Vec<AppFile>,
    #[serde(default)]
    tenants: Vec<TenantFile>,
    #[serde(default)]
    customers: Vec<CustomerFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CustomerFile {
    id: String,
    name: String,
    domain: String,
    /// The partner tenant's id.
    partner: String,
    /// `active` (default) or `ended`.
    #[serde(default)]
    relationship: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AppFile {
    client_id: String,
    client_secret: String,
    name: String,
    /// Full scope strings such as `https://api.partnercenter.microsoft.com/user_impersonation`.
    #[serde(default)]
    permissions: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantFile {
    id: String,
    name: String,
    domain: String,
    #[serde(default = "default_mfa")]
    mfa: MfaPolicy,
    #[serde(default)]
    users: Vec<UserFile>,
}

fn default_mfa() -> MfaPolicy {
    MfaPolicy::Enforced
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UserFile {
    upn: String,
    name: String,
    role: String,
    #[serde(default)]
    oid: Option<String>,
}

impl Directory {
    /// The demo directory of REFERENCE §5.2 (plus one Global Admin so every role exists).
    pub fn demo() -> Directory {
        let mut dir = Directory::default();
        dir.add_app(demo_app());
        type SeedUser = (&'static str, &'static str, &'static str);
        let seed: [(&str, &str, &str, MfaPolicy, &[SeedUser]); 3] = [
            (
                CONTOSO,
                "Contoso",
                "contoso.example",
                MfaPolicy::Enforced,
                &[
                    ("jane@contoso.example", "Jane Doe", "Admin Agent"),
                    ("sam@contoso.example", "Sam Seller", "Sales Agent"),
                    ("grace@contoso.example", "Grace Hopper", "Global Admin"),
                ],
            ),
            (
                WINGTIP,
                "Wingtip",
                "wingtip.example",
                MfaPolicy::Federated,
                &[("trent@wingtip.example", "Trent Walker", "Admin Agent")],
            ),
            (
                FABRIKAM,
                "Fabrikam",
                "fabrikam.example",
                MfaPolicy::NotEnforced,
                &[("john@fabrikam.example", "John Smith", "Admin Agent")],
            ),
        ];
        for (id, name, domain, mfa, users) in seed {
            dir.add_tenant(Tenant {
                id: id.into(),
                name: name.into(),
                domain: domain.into(),
                mfa,
            })
            .expect("demo tenants are unique");
            for (upn, uname, role) in users {
                dir.add_user(id, upn, uname, role, None)
                    .expect("demo users are unique");
            }
        }
        let customers = [
            (ADATUM, "Adatum", "adatum.example", CONTOSO, true),
            (NORTHWIND, "Northwind", "northwind.example", CONTOSO, true),
            (TAILSPIN, "Tailspin", "tailspin.example", CONTOSO, false),
            (LITWARE, "Litware", "litware.example", WINGTIP, true),
        ];
        for (id, name, domain, partner, active) in customers {
            dir.add_customer(CustomerSeed {
                id: id.into(),
                name: name.into(),
                domain: domain.into(),
                partner_tenant_id: partner.into(),
                relationship_active: active,
            })
            .expect("demo customers are unique");
        }
        dir
    }

    /// A directory read from a TOML file. The demo app is registered unless the
    /// file registers its own app with the same client id.
    pub fn from_toml_file(path: &Path) -> anyhow::Result<Directory> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading dev IdP directory {}", path.display()))?;
        Self::from_toml_str(&text)
            .with_context(|| format!("parsing dev IdP directory {}", path.display()))
    }

    pub fn from_toml_str(text: &str) -> anyhow::Result<Directory> {
        let file: DirectoryFile = toml::from_str(text)?;
        let mut dir = Directory::default();
        for app in file.apps {
            let mut permissions = Vec::new();
            for scope in app.permissions {
                let Some((resource, perm)) = scope.rsplit_once('/') else {
                    bail!("app permission {scope:?} must look like <resource>/<permission>");
                };
                permissions.push((normalize_resource(resource), perm.to_string()));
            }
            dir.add_app(App {
                client_id: app.client_id.to_ascii_lowercase(),
                name: app.name,
                secret: app.client_secret,
                permissions,
                certificates: Vec::new(),
            });
        }
        if !dir.apps.contains_key(DEMO_CLIENT_ID) {
            dir.add_app(demo_app());
        }
        for t in file.tenants {
            let id = parse_tenant_id(&t.id)?;
            dir.add_tenant(Tenant {
                id: id.clone(),
                name: t.name,
                domain: t.domain.to_ascii_lowercase(),
                mfa: t.mfa,
            })?;
            for u in t.users {
                dir.add_user(&id, &u.upn, &u.name, &u.role, u.oid)?;
            }
        }
        for c in file.customers {
            let relationship_active = match c.relationship.as_deref() {
                None | Some("active") => true,
                Some("ended") => false,
                Some(other) => bail!(
                    "customer {}: relationship {other:?} (active or ended)",
                    c.id
                ),
            };
            dir.add_customer(CustomerSeed {
                id: parse_tenant_id(&c.id)?,
                name: c.name,
                domain: c.domain.to_ascii_lowercase(),
                partner_tenant_id: parse_tenant_id(&c.partner)?,
                relationship_active,
            })?;
        }
        Ok(dir)
    }

    /// Adds the `--tenants N` load-test tenants exactly as REFERENCE §5.2 names them.
    pub fn add_generated(&mut self, count: u32) -> anyhow::Result<()> {
        self.tenants.reserve(count as usize);
        self.users.reserve(count as usize);
        for k in 1..=count {
            let id = generated_tenant_id(k);
            self.add_tenant(Tenant {
                id: id.clone(),
                name: format!("Tenant {k}"),
                domain: format!("tenant-{k}.example"),
                mfa: MfaPolicy::Enforced,
            })?;
            let upn = format!("admin@tenant-{k}.example");
            self.add_user(&id, &upn, &format!("Tenant {k} Admin"), "Admin Agent", None)?;
        }
        Ok(())
    }

    /// Adds `--customers M`: generated tenant k gets customers j = 1..=M (REFERENCE §6), each with
    /// an active relationship. Call after `add_generated(tenants)`.
    pub fn add_generated_customers(&mut self, tenants: u32, per_tenant: u32) -> anyhow::Result<()> {
        if per_tenant >= 100_000 {
            bail!("--customers must be below 100000 (customer ids number them k * 100000 + j)");
        }
        self.customers
            .reserve(tenants as usize * per_tenant as usize);
        for k in 1..=tenants {
            for j in 1..=per_tenant {
                self.add_customer(CustomerSeed {
                    id: generated_customer_id(k, j),
                    name: format!("Customer {k}-{j}"),
                    domain: format!("customer-{k}-{j}.example"),
                    partner_tenant_id: generated_tenant_id(k),
                    relationship_active: true,
                })?;
            }
        }
        Ok(())
    }

    /// Registers a certificate on an app, as uploading it in the app registration does.
    pub fn register_certificate(
        &mut self,
        client_id: &str,
        certificate: RegisteredCertificate,
    ) -> anyhow::Result<()> {
        let app = self
            .apps
            .get_mut(&client_id.to_ascii_lowercase())
            .with_context(|| format!("no app {client_id} to register a certificate on"))?;
        app.certificates.push(certificate);
        Ok(())
    }

    /// A customer must belong to a partner of the directory, be no partner itself, and have
    /// an id and a domain of its own.
    fn add_customer(&mut self, customer: CustomerSeed) -> anyhow::Result<()> {
        if !self.tenant_by_id.contains_key(&customer.partner_tenant_id) {
            bail!(
                "customer {}: no partner tenant {}",
                customer.id,
                customer.partner_tenant_id
            );
        }
        if self.tenant_by_id.contains_key(&customer.id)
            || self.tenant_by_domain.contains_key(&customer.domain)
        {
            bail!(
                "customer {} is a partner tenant of the directory",
                customer.id
            );
        }
        for key in [&customer.id, &customer.domain] {
            if !self.customer_keys.insert(key.clone()) {
                bail!("customer {key} is listed twice");
            }
        }
        self.customers.push(customer);
        Ok(())
    }

    fn add_app(&mut self, app: App) {
        self.apps.insert(app.client_id.clone(), app);
    }

    fn add_tenant(&mut self, tenant: Tenant) -> anyhow::Result<()> {
        if self.tenant_by_id.contains_key(&tenant.id) {
            bail!("duplicate tenant id {}", tenant.id);
        }
        let idx = self.tenants.len();
        self.tenant_by_id.insert(tenant.id.clone(), idx);
        self.tenant_by_domain.insert(tenant.domain.clone(), idx);
        self.tenants.push(tenant);
        Ok(())
    }

    fn add_user(
        &mut self,
        tenant_id: &str,
        upn: &str,
        name: &str,
        role: &str,
        oid: Option<String>,
    ) -> anyhow::Result<()> {
        let key = upn.to_ascii_lowercase();
        if self.user_by_upn.contains_key(&key) {
            bail!("duplicate user {upn}");
        }
        let oid = match oid {
            Some(oid) => uuid::Uuid::parse_str(&oid)
                .with_context(|| format!("oid of {upn}"))?
                .to_string(),
            None => deterministic_uuid(&format!("oid:{key}")),
        };
        self.user_by_upn.insert(key.clone(), self.users.len());
        self.users.push(User {
            upn: key,
            name: name.to_string(),
            role: role.to_string(),
            oid,
            tenant_id: tenant_id.to_string(),
        });
        Ok(())
    }

    /// A tenant by id (case-insensitive) or by its domain, as Entra accepts both in paths.
    pub fn tenant(&self, id_or_domain: &str) -> Option<&Tenant> {
        let key = id_or_domain.to_ascii_lowercase();
        self.tenant_by_id
            .get(&key)
            .or_else(|| self.tenant_by_domain.get(&key))
            .map(|&i| &self.tenants[i])
    }

    pub fn user(&self, upn: &str) -> Option<&User> {
        self.user_by_upn
            .get(&upn.trim().to_ascii_lowercase())
            .map(|&i| &self.users[i])
    }

    pub fn app(&self, client_id: &str) -> Option<&App> {
        self.apps.get(&client_id.to_ascii_lowercase())
    }

    /// The app id of `resource` (normalized) when it exists in every tenant: a first-party API,
    /// or an app of this directory named by its client id or `api://` URI. `None`: Entra
    /// would find no service principal for it (AADSTS500011).
    pub fn resource_app_id(&self, resource: &str) -> Option<String> {
        if let Some((_, id)) = FIRST_PARTY_RESOURCES.iter().find(|(r, _)| *r == resource) {
            return Some(id.to_string());
        }
        let id = resource.strip_prefix("api://").unwrap_or(resource);
        self.app(id).map(|app| app.client_id.clone())
    }

    /// Whether `app_id` names a resource that has a service principal in every tenant (a
    /// first-party API or an app of this directory): what Partner Center accepts as an
    /// `enterpriseApplicationId`.
    pub fn is_resource_app_id(&self, app_id: &str) -> bool {
        FIRST_PARTY_RESOURCES
            .iter()
            .any(|(_, id)| id.eq_ignore_ascii_case(app_id))
            || self.app(app_id).is_some()
    }

    pub fn apps(&self) -> impl Iterator<Item = &App> {
        self.apps.values()
    }

    pub fn tenants(&self) -> &[Tenant] {
        &self.tenants
    }

    pub fn users(&self) -> &[User] {
        &self.users
    }

    /// The customers the simulator starts with (and `/_sim/reset` restores).
    pub fn customer_seeds(&self) -> &[CustomerSeed] {
        &self.customers
    }
}

fn demo_app() -> App {
    App {
        client_id: DEMO_CLIENT_ID.into(),
        name: DEMO_APP_NAME.into(),
        secret: DEMO_CLIENT_SECRET.into(),
        permissions: DEMO_PERMISSIONS
            .iter()
            .map(|(r, p)| (r.to_string(), p.to_string()))
            .collect(),
        certificates: Vec::new(),
    }
}

/// Tenant number `k` of `--tenants N`: `00000000-0000-4000-8000-` + k as 12 digits.
pub fn generated_tenant_id(k: u32) -> String {
    format!("00000000-0000-4000-8000-{k:012}")
}

/// Customer j of generated tenant k (`--customers M`): `00000000-0000-4000-9000-` followed
/// by k × 100000 + j as 12 digits.
pub fn generated_customer_id(k: u32, j: u32) -> String {
    format!(
        "00000000-0000-4000-9000-{:012}",
        u64::from(k) * 100_000 + u64::from(j)
    )
}

fn parse_tenant_id(raw: &str) -> anyhow::Result<String> {
    let id = uuid::Uuid::parse_str(raw).with_context(|| format!("tenant id {raw:?}"))?;
    Ok(id.to_string())
}

/// Stable ids across restarts, so a grant listing or a test fixture can name a user's oid.
pub fn deterministic_uuid(seed: &str) -> String {
    let digest = Sha256::digest(seed.as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .to_string()
}

/// Resources compare case-insensitively and without a trailing slash, as Entra matches
/// identifier URIs.
pub fn normalize_resource(raw: &str) -> String {
    raw.trim().trim_end_matches('/').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_directory_matches_spec() {
        let dir = Directory::demo();
        assert_eq!(dir.tenant(CONTOSO).unwrap().name, "Contoso");
        assert!(dir.tenant(CONTOSO).unwrap().mfa.enforced());
        assert!(!dir.tenant(FABRIKAM).unwrap().mfa.enforced());
        assert_eq!(dir.tenant("wingtip.example").unwrap().id, WINGTIP);
        assert_eq!(
            dir.user("Jane@Contoso.example").unwrap().role,
            "Admin Agent"
        );
        assert_eq!(dir.user("sam@contoso.example").unwrap().role, "Sales Agent");
    }

    #[test]
    fn generated_tenants_follow_spec_naming() {
        let mut dir = Directory::demo();
        dir.add_generated(10_000).unwrap();
        assert_eq!(
            generated_tenant_id(7),
            "00000000-0000-4000-8000-000000000007"
        );
        let t = dir.tenant(&generated_tenant_id(10_000)).unwrap();
        assert_eq!(t.name, "Tenant 10000");
        assert!(t.mfa.enforced());
        let u = dir.user("admin@tenant-10000.example").unwrap();
        assert_eq!(u.tenant_id, t.id);
        assert_eq!(u.role, "Admin Agent");
    }

    #[test]
    fn toml_directory_loads() {
        let dir = Directory::from_toml_str(
            r#"
            [[tenants]]
            id = "11111111-2222-4333-8444-555555555555"
            name = "Northwind"
            domain = "northwind.example"
            mfa = false
            [[tenants.users]]
            upn = "nina@northwind.example"
            name = "Nina"
            role = "Admin Agent"
            "#,
        )
        .unwrap();
        let t = dir.tenant("northwind.example").unwrap();
        assert_eq!(t.mfa, MfaPolicy::NotEnforced);
        assert!(dir.user("nina@northwind.example").is_some());
        assert!(dir.app(DEMO_CLIENT_ID).is_some());
    }

    const PARTNER: &str = r#"
        [[tenants]]
        id = "11111111-2222-4333-8444-555555555555"
        name = "Partner"
        domain = "partner.example"
    "#;

    #[test]
    fn toml_customers_belong_to_a_partner_of_the_file() {
        let customer = |partner: &str, relationship: &str| {
            format!(
                "{PARTNER}\n[[customers]]\nid = \"21111111-2222-4333-8444-555555555555\"\n\
                 name = \"Client\"\ndomain = \"Client.example\"\npartner = \"{partner}\"\n\
                 relationship = \"{relationship}\"\n"
            )
        };
        let dir =
            Directory::from_toml_str(&customer("11111111-2222-4333-8444-555555555555", "ended"))
                .unwrap();
        let seeds = dir.customer_seeds();
        assert_eq!(seeds.len(), 1);
        assert_eq!(seeds[0].domain, "client.example");
        assert!(!seeds[0].relationship_active);
        assert!(
            Directory::from_toml_str(&customer(CONTOSO, "active")).is_err(),
            "not in the file"
        );
        let partner = "11111111-2222-4333-8444-555555555555";
        assert!(Directory::from_toml_str(&customer(partner, "paused")).is_err());
        let once = customer(partner, "active");
        let twice = format!("{once}{}", &once[PARTNER.len()..]);
        assert!(Directory::from_toml_str(&twice).is_err(), "listed twice");
    }

    #[test]
    fn demo_and_generated_customers_follow_the_spec() {
        let mut dir = Directory::demo();
        dir.add_generated(2).unwrap();
        dir.add_generated_customers(2, 3).unwrap();
        let seeds = dir.customer_seeds();
        assert_eq!(seeds.len(), 4 + 6);
        assert_eq!(seeds[2].id, TAILSPIN);
        assert!(!seeds[2].relationship_active);
        assert_eq!(seeds[3].partner_tenant_id, WINGTIP);
        let last = &seeds[9];
        assert_eq!(last.id, "00000000-0000-4000-9000-000000200003");
        assert_eq!(last.name, "Customer 2-3");
        assert_eq!(last.partner_tenant_id, generated_tenant_id(2));
        assert!(dir.add_generated_customers(1, 100_000).is_err());
    }
}
