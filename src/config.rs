//! Configuration (REFERENCE §3.4): defaults < optional TOML file < environment.
//!
//! Every setting is named by its environment variable; the TOML file uses the same names
//! in lower case without the `SAMVAULT_` prefix (`listen`, `client_id`, `database_url`).
//! Every secret can also come from a file (`SAMVAULT_CLIENT_SECRET_FILE`,
//! `client_secret_file`). A bad or missing setting is one clear line naming it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::SecretString;
use url::Url;

use crate::domain::Resource;

pub const PARTNER_CENTER: &str = "https://api.partnercenter.microsoft.com";
pub const GRAPH: &str = "https://graph.microsoft.com";
pub const ARM: &str = "https://management.azure.com";

/// (environment variable, default) for every non-secret setting.
const SETTINGS: &[(&str, Option<&str>)] = &[
    ("DATABASE_URL", Some("sqlite://samvault.db?mode=rwc")),
    ("SAMVAULT_LISTEN", Some("127.0.0.1:8080")),
    ("SAMVAULT_PUBLIC_URL", Some("http://127.0.0.1:8080")),
    ("SAMVAULT_AUTHORITY", Some("public")),
    ("SAMVAULT_CLIENT_ID", None),
    ("SAMVAULT_CLIENT_CERT", None),
    (
        "SAMVAULT_CONSENT_SCOPES",
        Some(
            "https://api.partnercenter.microsoft.com/user_impersonation offline_access openid profile",
        ),
    ),
    (
        "SAMVAULT_RESOURCES",
        Some(
            "https://api.partnercenter.microsoft.com https://graph.microsoft.com https://management.azure.com",
        ),
    ),
    ("SAMVAULT_KEY_PROVIDER", Some("local:samvault.key")),
    ("SAMVAULT_PREVIOUS_KEY_PROVIDERS", None),
    ("SAMVAULT_EXTRA_CA_FILE", None),
    ("SAMVAULT_ROTATE_AFTER", Some("7d")),
    ("SAMVAULT_EXPIRY_WARN", Some("30d")),
    ("SAMVAULT_REQUIRE_MFA", Some("true")),
    ("SAMVAULT_WEBHOOK_URL", None),
    ("SAMVAULT_METRICS_TOKEN", None),
    ("SAMVAULT_LOG_FORMAT", Some("text")),
    ("SAMVAULT_CONSENT_TIMEOUT", Some("10m")),
    ("SAMVAULT_APP_NAME", Some("samvault")),
    ("SAMVAULT_ROTATION_CONCURRENCY", Some("16")),
    ("SAMVAULT_SCHEDULER", Some("true")),
    ("SAMVAULT_ONBOARDING", Some("open")),
    ("SAMVAULT_TRUSTED_PROXIES", None),
    ("SAMVAULT_PARTNER_CENTER_URL", Some(PARTNER_CENTER)),
    (
        "SAMVAULT_CUSTOMER_GRANTS",
        Some("https://graph.microsoft.com=Directory.Read.All"),
    ),
    ("SAMVAULT_CUSTOMER_AUTO_CONSENT", Some("true")),
    ("SAMVAULT_CUSTOMER_SYNC_INTERVAL", Some("24h")),
    ("SAMVAULT_IDP_ROTATION", Some("entra")),
    ("SAMVAULT_CUSTOMERS", Some("true")),
    ("SAMVAULT_ONBOARD_RATE", Some("20")),
    ("SAMVAULT_AUDIT_ANCHOR_FILE", None),
    ("SAMVAULT_AUDIT_CHECKPOINT_EVERY", Some("100")),
];

/// Settings that are secrets: they may also be read from `<NAME>_FILE`.
const SECRETS: &[&str] = &[
    "DATABASE_URL",
    "SAMVAULT_CLIENT_SECRET",
    "SAMVAULT_CLIENT_SECRET_NEXT",
    "SAMVAULT_CLIENT_KEY",
    "SAMVAULT_WEBHOOK_SECRET",
    "SAMVAULT_METRICS_TOKEN",
];

#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(pub String);

/// The PEM certificates of `SAMVAULT_EXTRA_CA_FILE`, trusted besides the system's roots by
/// every outbound client (Entra ID, Key Vault, the webhook): a TLS-inspecting proxy's CA.
pub fn extra_roots(path: &Path) -> Result<Vec<reqwest::Certificate>, ConfigError> {
    let bad = |why: String| {
        bad(
            "SAMVAULT_EXTRA_CA_FILE",
            format!("{}: {why}", path.display()),
        )
    };
    let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let roots = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| bad(e.to_string()))?;
    if roots.is_empty() {
        return Err(bad("holds no PEM certificate".into()));
    }
    Ok(roots)
}

fn bad(name: &str, why: impl std::fmt::Display) -> ConfigError {
    ConfigError(format!("{name}: {why}"))
}

/// Where the key-encryption key lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyProviderConfig {
    Local(PathBuf),
    AzureKeyVault(Url),
}

/// One way the CPV app proves its identity to Entra ID. Each is named by the setting it
/// came from, which is how logs and alarms refer to it (never by its value).
#[derive(Clone)]
pub enum AppCredential {
    Secret {
        setting: &'static str,
        secret: SecretString,
    },
    /// `SAMVAULT_CLIENT_CERT` (a PEM file) with `SAMVAULT_CLIENT_KEY` (PEM text).
    Certificate { cert: PathBuf, key: SecretString },
}

impl AppCredential {
    /// The setting this credential came from.
    pub fn setting(&self) -> &'static str {
        match self {
            Self::Secret { setting, .. } => setting,
            Self::Certificate { .. } => "SAMVAULT_CLIENT_CERT",
        }
    }
}

impl std::fmt::Debug for AppCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Secret { setting, .. } => write!(f, "Secret({setting}, [redacted])"),
            Self::Certificate { cert, .. } => {
                write!(f, "Certificate({}, key [redacted])", cert.display())
            }
        }
    }
}

/// Who may start a consent (`SAMVAULT_ONBOARDING`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Onboarding {
    /// Any user of a partner tenant, at `/onboard` (the demo's default).
    Open,
    /// Only through an invitation link the CPV created.
    Invitation,
}

impl Onboarding {
    fn parse(value: &str) -> Result<Self, ConfigError> {
        match value {
            "open" => Ok(Self::Open),
            "invitation" => Ok(Self::Invitation),
            _ => Err(bad("SAMVAULT_ONBOARDING", "must be open or invitation")),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Every setting, by section; each section parses and checks its own (REFERENCE §5).
#[derive(Clone, Debug)]
pub struct Config {
    pub server: ServerSettings,
    pub entra: EntraSettings,
    pub keys: KeySettings,
    pub rotation: RotationSettings,
    pub webhook: WebhookSettings,
    /// Customers of the partners: Partner Center, the CPV consent pushed to each (REFERENCE §6).
    pub customers: CustomerSettings,
    pub onboarding: OnboardingSettings,
    pub audit: AuditSettings,
}

impl Config {
    /// Loads from the process environment and an optional TOML file.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let env: BTreeMap<String, String> = std::env::vars().collect();
        Self::from_sources(file, &env)
    }

    /// Loads from explicit sources; what `load` does, testable without touching the process.
    pub fn from_sources(
        file: Option<&Path>,
        env: &BTreeMap<String, String>,
    ) -> Result<Self, ConfigError> {
        let file = file
            .map(PathBuf::from)
            .or_else(|| env.get("SAMVAULT_CONFIG").map(PathBuf::from));
        let mut raw: BTreeMap<String, String> = BTreeMap::new();
        for (name, default) in SETTINGS {
            if let Some(value) = default {
                raw.insert((*name).to_string(), (*value).to_string());
            }
        }
        if let Some(path) = file {
            merge_toml(&path, &mut raw)?;
        }
        for name in SETTINGS
            .iter()
            .map(|(n, _)| *n)
            .chain(SECRETS.iter().copied())
        {
            if let Some(value) = env.get(name) {
                raw.insert(name.to_string(), value.clone());
            }
            let file_var = format!("{name}_FILE");
            if let Some(path) = env.get(&file_var) {
                raw.insert(file_var, path.clone());
            }
        }
        resolve_secret_files(&mut raw)?;
        Self::parse(&raw)
    }

    /// Parses each section in turn; the first bad setting is the error.
    fn parse(raw: &BTreeMap<String, String>) -> Result<Self, ConfigError> {
        let raw = Raw(raw);
        let server = ServerSettings::parse(&raw)?;
        let entra = EntraSettings::parse(&raw)?;
        let keys = KeySettings::parse(&raw)?;
        let rotation = RotationSettings::parse(&raw)?;
        let webhook = WebhookSettings::parse(&raw)?;
        let customers = CustomerSettings::parse(&raw)?;
        let mut outbound = vec![
            ("SAMVAULT_AUTHORITY", &entra.authority),
            ("SAMVAULT_PARTNER_CENTER_URL", &customers.partner_center_url),
        ];
        outbound.extend(webhook.url.iter().map(|u| ("SAMVAULT_WEBHOOK_URL", u)));
        require_tls_beside_https(&server.public_url, &outbound)?;
        Ok(Self {
            server,
            entra,
            keys,
            rotation,
            webhook,
            customers,
            onboarding: OnboardingSettings::parse(&raw)?,
            audit: AuditSettings::parse(&raw)?,
        })
    }

    /// The redirect URI registered with Entra: public URL + `/onboard/callback`.
    pub fn redirect_uri(&self) -> Url {
        self.server
            .public_url
            .join("onboard/callback")
            .expect("valid relative path")
    }

    /// The partner's primary resource: the first consent scope that names a resource.
    pub fn primary_resource(&self) -> Resource {
        self.entra
            .consent_scopes
            .iter()
            .find_map(|s| {
                s.rsplit_once('/')
                    .and_then(|(r, _)| Resource::parse(r).ok())
            })
            .unwrap_or_else(|| Resource::parse(PARTNER_CENTER).expect("static"))
    }

    /// The CPV app's identity, required by every command that talks to Entra.
    pub fn app_identity(&self) -> Result<(String, Vec<AppCredential>), ConfigError> {
        let id = self
            .entra
            .client_id
            .clone()
            .ok_or_else(|| bad("SAMVAULT_CLIENT_ID", "is required"))?;
        if self.entra.app_credentials.is_empty() {
            return Err(bad(
                "SAMVAULT_CLIENT_SECRET",
                "is required (or SAMVAULT_CLIENT_CERT with SAMVAULT_CLIENT_KEY)",
            ));
        }
        Ok((id, self.entra.app_credentials.clone()))
    }

    pub fn is_sqlite(&self) -> bool {
        use secrecy::ExposeSecret;
        self.server
            .database_url
            .expose_secret()
            .starts_with("sqlite:")
    }
}

/// The merged settings by name: trimmed, and an empty value counts as unset.
struct Raw<'a>(&'a BTreeMap<String, String>);

impl<'a> Raw<'a> {
    fn get(&self, name: &str) -> Option<&'a str> {
        self.0.get(name).map(|s| s.trim()).filter(|s| !s.is_empty())
    }

    fn required(&self, name: &str) -> Result<&'a str, ConfigError> {
        self.get(name).ok_or_else(|| bad(name, "is required"))
    }

    fn duration(&self, name: &str) -> Result<Duration, ConfigError> {
        parse_duration(self.required(name)?).map_err(|e| bad(name, e))
    }

    fn flag(&self, name: &str) -> Result<bool, ConfigError> {
        parse_bool(self.required(name)?).ok_or_else(|| bad(name, "must be true or false"))
    }
}

/// Where samvault listens and keeps its data, and how it reports.
#[derive(Clone, Debug)]
pub struct ServerSettings {
    pub database_url: SecretString,
    pub listen: SocketAddr,
    pub public_url: Url,
    /// When set, `GET /metrics` asks for `Authorization: Bearer <token>`.
    pub metrics_token: Option<SecretString>,
    pub log_format: LogFormat,
    /// Reverse proxies whose `X-Forwarded-For` names the client (`http::client_address`).
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

impl ServerSettings {
    fn parse(raw: &Raw) -> Result<Self, ConfigError> {
        let database_url = raw.required("DATABASE_URL")?;
        if !(database_url.starts_with("sqlite:")
            || database_url.starts_with("postgres://")
            || database_url.starts_with("postgresql://"))
        {
            return Err(bad(
                "DATABASE_URL",
                "must start with sqlite: or postgres://",
            ));
        }
        let listen = raw.required("SAMVAULT_LISTEN")?;
        let listen = listen.parse().map_err(|_| {
            bad(
                "SAMVAULT_LISTEN",
                format!("'{listen}' is not an address like 127.0.0.1:8080"),
            )
        })?;
        let public_url =
            parse_http_url("SAMVAULT_PUBLIC_URL", raw.required("SAMVAULT_PUBLIC_URL")?)?;
        let metrics_token = raw
            .get("SAMVAULT_METRICS_TOKEN")
            .map(|t| match t.trim() {
                t if t.len() < 16 => Err(bad(
                    "SAMVAULT_METRICS_TOKEN",
                    "must be at least 16 characters (e.g. `openssl rand -hex 32`)",
                )),
                t => Ok(SecretString::from(t.to_string())),
            })
            .transpose()?;
        let log_format = match raw.required("SAMVAULT_LOG_FORMAT")? {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            _ => return Err(bad("SAMVAULT_LOG_FORMAT", "must be text or json")),
        };
        Ok(Self {
            database_url: SecretString::from(database_url.to_string()),
            listen,
            public_url,
            metrics_token,
            log_format,
            trusted_proxies: parse_trusted_proxies(raw.get("SAMVAULT_TRUSTED_PROXIES"))?,
        })
    }
}

/// The CPV app as Entra ID knows it, and what its consents ask for.
#[derive(Clone, Debug)]
pub struct EntraSettings {
    pub authority: Url,
    pub client_id: Option<String>,
    /// In the order they are tried: certificate, current secret, next secret.
    pub app_credentials: Vec<AppCredential>,
    pub consent_scopes: Vec<String>,
    pub resources: Vec<Resource>,
    pub require_mfa: bool,
    /// How long a started consent may take before its `state` is refused.
    pub consent_timeout: Duration,
    /// The CPV application's name as partner admins know it (shown on onboarding pages).
    pub app_name: String,
}

impl EntraSettings {
    fn parse(raw: &Raw) -> Result<Self, ConfigError> {
        let authority = match raw.required("SAMVAULT_AUTHORITY")? {
            "public" => Url::parse("https://login.microsoftonline.com").expect("static"),
            "usgov" => Url::parse("https://login.microsoftonline.us").expect("static"),
            "china" => Url::parse("https://login.partner.microsoftonline.cn").expect("static"),
            "germany" => {
                return Err(bad(
                    "SAMVAULT_AUTHORITY",
                    "Azure Germany closed in 2021; use public",
                ));
            }
            other => parse_http_url("SAMVAULT_AUTHORITY", other)?,
        };
        let resources = raw
            .required("SAMVAULT_RESOURCES")?
            .split([' ', ','])
            .filter(|s| !s.is_empty())
            .map(|r| Resource::parse(r).map_err(|e| bad("SAMVAULT_RESOURCES", e)))
            .collect::<Result<Vec<_>, _>>()?;
        let app_name = raw.required("SAMVAULT_APP_NAME")?.to_string();
        if app_name.chars().count() > 80 {
            return Err(bad("SAMVAULT_APP_NAME", "must be at most 80 characters"));
        }
        Ok(Self {
            authority,
            client_id: raw.get("SAMVAULT_CLIENT_ID").map(str::to_string),
            app_credentials: parse_app_credentials(&|name| raw.get(name))?,
            consent_scopes: raw
                .required("SAMVAULT_CONSENT_SCOPES")?
                .split_whitespace()
                .map(str::to_string)
                .collect(),
            resources,
            require_mfa: raw.flag("SAMVAULT_REQUIRE_MFA")?,
            consent_timeout: raw.duration("SAMVAULT_CONSENT_TIMEOUT")?,
            app_name,
        })
    }
}

/// Where the key-encryption keys live, and the roots trusted to reach them.
#[derive(Clone, Debug)]
pub struct KeySettings {
    /// The provider that wraps new data keys.
    pub provider: KeyProviderConfig,
    /// Providers that only unwrap older records, during a move to `provider`.
    pub previous_providers: Vec<KeyProviderConfig>,
    /// PEM roots trusted besides the system's for Key Vault connections (a TLS-inspecting
    /// proxy's CA, a test double's).
    pub extra_ca_file: Option<PathBuf>,
    /// Its certificates, read once at start-up, for the Entra ID and webhook clients.
    pub extra_roots: Vec<reqwest::Certificate>,
}

impl KeySettings {
    fn parse(raw: &Raw) -> Result<Self, ConfigError> {
        let provider = parse_key_provider(raw.required("SAMVAULT_KEY_PROVIDER")?)
            .map_err(|why| bad("SAMVAULT_KEY_PROVIDER", why))?;
        // A migration from one provider to another: these still unwrap, the first one wraps.
        let previous_providers = raw
            .get("SAMVAULT_PREVIOUS_KEY_PROVIDERS")
            .unwrap_or_default()
            .split([' ', ','])
            .filter(|s| !s.is_empty())
            .map(parse_key_provider)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|why| bad("SAMVAULT_PREVIOUS_KEY_PROVIDERS", why))?;
        let extra_ca_file = raw.get("SAMVAULT_EXTRA_CA_FILE").map(PathBuf::from);
        let extra_roots = extra_ca_file
            .as_deref()
            .map(extra_roots)
            .transpose()?
            .unwrap_or_default();
        Ok(Self {
            provider,
            previous_providers,
            extra_ca_file,
            extra_roots,
        })
    }
}

/// How the rotation engine keeps grants alive.
#[derive(Clone, Debug)]
pub struct RotationSettings {
    pub rotate_after: Duration,
    pub expiry_warn: Duration,
    /// Redemptions the scheduler runs at once.
    pub concurrency: usize,
    /// Whether this process runs the rotation scheduler (replicas may opt out).
    pub scheduler: bool,
}

impl RotationSettings {
    fn parse(raw: &Raw) -> Result<Self, ConfigError> {
        let concurrency = raw
            .required("SAMVAULT_ROTATION_CONCURRENCY")?
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=512).contains(n))
            .ok_or_else(|| {
                bad(
                    "SAMVAULT_ROTATION_CONCURRENCY",
                    "must be a number from 1 to 512",
                )
            })?;
        Ok(Self {
            rotate_after: raw.duration("SAMVAULT_ROTATE_AFTER")?,
            expiry_warn: raw.duration("SAMVAULT_EXPIRY_WARN")?,
            concurrency,
            scheduler: raw.flag("SAMVAULT_SCHEDULER")?,
        })
    }
}

/// Where events are delivered, and the secret that signs them.
#[derive(Clone, Debug)]
pub struct WebhookSettings {
    pub url: Option<Url>,
    pub secret: Option<SecretString>,
}

impl WebhookSettings {
    fn parse(raw: &Raw) -> Result<Self, ConfigError> {
        let url = raw
            .get("SAMVAULT_WEBHOOK_URL")
            .map(|u| parse_http_url("SAMVAULT_WEBHOOK_URL", u))
            .transpose()?;
        let secret = raw
            .get("SAMVAULT_WEBHOOK_SECRET")
            .map(|s| SecretString::from(s.to_string()));
        if url.is_some() && secret.is_none() {
            return Err(bad(
                "SAMVAULT_WEBHOOK_SECRET",
                "is required with SAMVAULT_WEBHOOK_URL",
            ));
        }
        Ok(Self { url, secret })
    }
}

/// Who may start a consent, and how often one address may try.
#[derive(Clone, Debug)]
pub struct OnboardingSettings {
    pub mode: Onboarding,
    /// Onboarding sign-in starts and callbacks one client address may make per minute.
    pub rate: u32,
}

impl OnboardingSettings {
    fn parse(raw: &Raw) -> Result<Self, ConfigError> {
        Ok(Self {
            mode: Onboarding::parse(raw.required("SAMVAULT_ONBOARDING")?)?,
            rate: parse_onboard_rate(raw.required("SAMVAULT_ONBOARD_RATE")?)?,
        })
    }
}

/// Where the audit chain's head is written outside the database, and how often it is sent.
#[derive(Clone, Debug)]
pub struct AuditSettings {
    /// Every audit append writes the chain's head here.
    pub anchor_file: Option<PathBuf>,
    /// Every this many audit entries, an `audit.checkpoint` webhook event (0: none).
    pub checkpoint_every: u64,
}

impl AuditSettings {
    fn parse(raw: &Raw) -> Result<Self, ConfigError> {
        Ok(Self {
            anchor_file: raw.get("SAMVAULT_AUDIT_ANCHOR_FILE").map(PathBuf::from),
            checkpoint_every: parse_checkpoint_every(raw)?,
        })
    }
}

/// The app's credentials in the order they are tried. A certificate goes first (Microsoft's
/// recommendation, and nothing to leak in transit); secrets follow, the current one before the
/// next one, so a secret can be rolled without downtime (docs/RUNBOOK.md).
fn parse_app_credentials<'a>(
    get: &impl Fn(&str) -> Option<&'a str>,
) -> Result<Vec<AppCredential>, ConfigError> {
    let mut credentials = Vec::new();
    match (get("SAMVAULT_CLIENT_CERT"), get("SAMVAULT_CLIENT_KEY")) {
        (Some(cert), Some(key)) => {
            if !key.starts_with("-----BEGIN") {
                return Err(bad(
                    "SAMVAULT_CLIENT_KEY",
                    "must be the PEM private key itself; give a file with SAMVAULT_CLIENT_KEY_FILE",
                ));
            }
            credentials.push(AppCredential::Certificate {
                cert: PathBuf::from(cert),
                key: SecretString::from(key.to_string()),
            });
        }
        (Some(_), None) => {
            return Err(bad(
                "SAMVAULT_CLIENT_KEY",
                "is required with SAMVAULT_CLIENT_CERT",
            ));
        }
        (None, Some(_)) => {
            return Err(bad(
                "SAMVAULT_CLIENT_CERT",
                "is required with SAMVAULT_CLIENT_KEY",
            ));
        }
        (None, None) => {}
    }
    for setting in ["SAMVAULT_CLIENT_SECRET", "SAMVAULT_CLIENT_SECRET_NEXT"] {
        if let Some(secret) = get(setting) {
            credentials.push(AppCredential::Secret {
                setting,
                secret: SecretString::from(secret.to_string()),
            });
        }
    }
    Ok(credentials)
}

fn merge_toml(path: &Path, raw: &mut BTreeMap<String, String>) -> Result<(), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        bad(
            "SAMVAULT_CONFIG",
            format!("cannot read {}: {e}", path.display()),
        )
    })?;
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        bad(
            "SAMVAULT_CONFIG",
            format!("{}: {}", path.display(), e.message()),
        )
    })?;
    for (key, value) in table {
        let name = env_name(&key).ok_or_else(|| {
            bad(
                "SAMVAULT_CONFIG",
                format!("{}: unknown setting '{key}'", path.display()),
            )
        })?;
        let value = match value {
            toml::Value::String(s) => s,
            toml::Value::Array(items) => items
                .iter()
                .map(|v| v.as_str().map(str::to_string).ok_or(()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| bad(&name, "array items must be strings"))?
                .join(" "),
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            _ => return Err(bad(&name, "must be a string")),
        };
        raw.insert(name, value);
    }
    Ok(())
}

/// Maps a TOML key (`client_secret_file`) to its environment name (`SAMVAULT_CLIENT_SECRET_FILE`).
fn env_name(key: &str) -> Option<String> {
    let upper = key.to_ascii_uppercase();
    let (base, suffix) = match upper.strip_suffix("_FILE") {
        Some(base) => (base.to_string(), "_FILE"),
        None => (upper.clone(), ""),
    };
    let known = |n: &str| SETTINGS.iter().any(|(s, _)| *s == n) || SECRETS.contains(&n);
    let name = if known(&base) {
        base
    } else if known(&format!("SAMVAULT_{base}")) {
        format!("SAMVAULT_{base}")
    } else {
        return None;
    };
    if !suffix.is_empty() && !SECRETS.contains(&name.as_str()) {
        return None;
    }
    Some(format!("{name}{suffix}"))
}

/// `NAME_FILE` wins over nothing but loses to an explicit `NAME`; its content is trimmed.
fn resolve_secret_files(raw: &mut BTreeMap<String, String>) -> Result<(), ConfigError> {
    for name in SECRETS {
        let file_var = format!("{name}_FILE");
        if let Some(path) = raw.remove(&file_var) {
            let value = std::fs::read_to_string(&path)
                .map_err(|e| bad(&file_var, format!("cannot read {path}: {e}")))?;
            raw.entry((*name).to_string())
                .or_insert_with(|| value.trim().to_string());
        }
    }
    Ok(())
}

fn parse_http_url(name: &str, value: &str) -> Result<Url, ConfigError> {
    let url = Url::parse(value).map_err(|e| bad(name, format!("'{value}' is not a URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(bad(name, format!("'{value}' must be an http(s) URL")));
    }
    Ok(url)
}

/// With an https public URL, samvault is in production: every outbound URL that carries
/// tokens, codes, secrets or signed events must be https too, unless its host is this machine
/// (the dev doubles, a sidecar). Each pair is a setting's name and its URL.
fn require_tls_beside_https(
    public_url: &Url,
    outbound: &[(&str, &Url)],
) -> Result<(), ConfigError> {
    if public_url.scheme() != "https" {
        return Ok(());
    }
    for (name, url) in outbound {
        if url.scheme() != "https" && !is_loopback(url) {
            return Err(bad(
                name,
                format!(
                    "'{}' must be https while SAMVAULT_PUBLIC_URL is https (http only for a loopback host)",
                    url.origin().ascii_serialization()
                ),
            ));
        }
    }
    Ok(())
}

/// Whether `url` points at this machine: 127.0.0.0/8, ::1 or `localhost`.
fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(name)) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            name == "localhost" || name.ends_with(".localhost")
        }
        None => false,
    }
}

/// Parses `local:PATH` or `azure-keyvault:URL`; the error says why, the caller names the setting.
fn parse_key_provider(value: &str) -> Result<KeyProviderConfig, String> {
    if let Some(path) = value.strip_prefix("local:") {
        if path.is_empty() {
            return Err("local: needs a file path".into());
        }
        Ok(KeyProviderConfig::Local(PathBuf::from(path)))
    } else if let Some(url) = value.strip_prefix("azure-keyvault:") {
        let url = Url::parse(url).map_err(|e| format!("bad Key Vault key URL: {e}"))?;
        if url.scheme() != "https" || !url.path().starts_with("/keys/") {
            return Err("expected azure-keyvault:https://NAME.vault.azure.net/keys/KEY".into());
        }
        Ok(KeyProviderConfig::AzureKeyVault(url))
    } else {
        Err(format!(
            "'{value}' must be local:PATH or azure-keyvault:URL"
        ))
    }
}

/// `SAMVAULT_TRUSTED_PROXIES`: addresses and CIDR ranges, separated by commas or spaces.
fn parse_trusted_proxies(value: Option<&str>) -> Result<Vec<ipnet::IpNet>, ConfigError> {
    value
        .unwrap_or_default()
        .split([' ', ','])
        .filter(|s| !s.is_empty())
        .map(|entry| {
            entry
                .parse::<ipnet::IpNet>()
                .or_else(|_| entry.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    bad(
                        "SAMVAULT_TRUSTED_PROXIES",
                        format!("'{entry}' is not an address or a range like 10.0.0.0/8"),
                    )
                })
        })
        .collect()
}

/// How Entra treats a refresh token once it has been redeemed (`SAMVAULT_IDP_ROTATION`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdpRotation {
    /// Entra ID: a redeemed refresh token stays valid; customer redemptions need not queue
    /// behind the partner's.
    Entra,
    /// Every redemption of one partner's grant, at the partner's authority or a customer's,
    /// goes through the partner's single-flight (an IdP that kills a token at its first use).
    Strict,
}

/// One entry of `SAMVAULT_CUSTOMER_GRANTS`: delegated permissions on one resource, pushed
/// into every customer tenant with Partner Center's applicationconsents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CustomerGrant {
    pub resource: Resource,
    /// The resource's application id (`enterpriseApplicationId`), lower case.
    pub enterprise_application_id: String,
    /// As configured, in order.
    pub scopes: Vec<String>,
}

/// Resources whose application id samvault knows; any other needs `GUID@resource=...`.
const KNOWN_RESOURCE_APPS: &[(&str, &str)] = &[
    (GRAPH, "00000003-0000-0000-c000-000000000000"),
    (ARM, "797f4846-ba00-4fd7-ba43-dac1f8f63013"),
];

/// The customer settings (REFERENCE §6).
#[derive(Clone, Debug)]
pub struct CustomerSettings {
    /// `SAMVAULT_PARTNER_CENTER_URL`: Partner Center's API base.
    pub partner_center_url: Url,
    /// `SAMVAULT_CUSTOMER_GRANTS`, at least one; the first entry's resource is the one a
    /// consent is verified with.
    pub grants: Vec<CustomerGrant>,
    pub auto_consent: bool,
    pub sync_interval: Duration,
    pub idp_rotation: IdpRotation,
    /// `SAMVAULT_CUSTOMERS`: `serve` syncs and pushes in the background (with
    /// `SAMVAULT_SCHEDULER`); false leaves customer work to the `customers` commands.
    pub background: bool,
}

impl CustomerSettings {
    fn parse(raw: &Raw) -> Result<Self, ConfigError> {
        let name = "SAMVAULT_PARTNER_CENTER_URL";
        let partner_center_url = parse_http_url(name, raw.required(name)?)?;
        let name = "SAMVAULT_CUSTOMER_GRANTS";
        let grants = parse_customer_grants(raw.required(name)?).map_err(|why| bad(name, why))?;
        let idp_rotation = match raw.required("SAMVAULT_IDP_ROTATION")? {
            "entra" => IdpRotation::Entra,
            "strict" => IdpRotation::Strict,
            _ => return Err(bad("SAMVAULT_IDP_ROTATION", "must be entra or strict")),
        };
        let sync_interval = raw.duration("SAMVAULT_CUSTOMER_SYNC_INTERVAL")?;
        if sync_interval < Duration::from_secs(60) {
            return Err(bad(
                "SAMVAULT_CUSTOMER_SYNC_INTERVAL",
                "must be at least 1m",
            ));
        }
        Ok(Self {
            partner_center_url,
            grants,
            auto_consent: raw.flag("SAMVAULT_CUSTOMER_AUTO_CONSENT")?,
            sync_interval,
            idp_rotation,
            background: raw.flag("SAMVAULT_CUSTOMERS")?,
        })
    }

    /// The resource a new consent is verified with: the first configured grant's.
    pub fn first_resource(&self) -> &Resource {
        &self.grants[0].resource
    }

    /// The grants in one canonical text (entries by application id, scopes sorted), as
    /// stored with each customer: a different text means the consent must be pushed again.
    pub fn grants_text(&self) -> String {
        let mut entries: Vec<String> = self
            .grants
            .iter()
            .map(|g| {
                let mut scopes = g.scopes.clone();
                scopes.sort();
                format!("{}={}", g.enterprise_application_id, scopes.join(","))
            })
            .collect();
        entries.sort();
        entries.join(";")
    }
}

/// `[GUID@]resource=Scope,Scope` entries separated by `;`.
pub fn parse_customer_grants(value: &str) -> Result<Vec<CustomerGrant>, String> {
    let mut grants: Vec<CustomerGrant> = Vec::new();
    for entry in value.split(';').map(str::trim).filter(|e| !e.is_empty()) {
        let (target, scopes) = entry
            .split_once('=')
            .ok_or_else(|| format!("'{entry}' must be resource=Scope,Scope"))?;
        let (app_id, resource) = match target.split_once('@') {
            Some((id, resource)) => (Some(id.trim()), resource.trim()),
            None => (None, target.trim()),
        };
        let resource = Resource::parse(resource).map_err(|e| format!("'{entry}': {e}"))?;
        let enterprise_application_id = match app_id {
            Some(id) => uuid::Uuid::parse_str(id)
                .map_err(|_| format!("'{entry}': '{id}' is not a GUID"))?
                .to_string(),
            None => KNOWN_RESOURCE_APPS
                .iter()
                .find(|(r, _)| *r == resource.as_str())
                .map(|(_, id)| id.to_string())
                .ok_or_else(|| {
                    format!("'{entry}': give the resource's application id as GUID@{resource}")
                })?,
        };
        let scopes: Vec<String> = scopes
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        if scopes.is_empty() || scopes.iter().any(|s| s.contains(char::is_whitespace)) {
            return Err(format!(
                "'{entry}' needs scopes like Directory.Read.All,User.Read.All"
            ));
        }
        if grants
            .iter()
            .any(|g| g.enterprise_application_id == enterprise_application_id)
        {
            return Err(format!("'{entry}': {resource} is named twice"));
        }
        grants.push(CustomerGrant {
            resource,
            enterprise_application_id,
            scopes,
        });
    }
    if grants.is_empty() {
        return Err("must name at least one resource=Scope,Scope".into());
    }
    Ok(grants)
}

/// `SAMVAULT_AUDIT_CHECKPOINT_EVERY`: a whole number of entries, 0 for none.
fn parse_checkpoint_every(raw: &Raw) -> Result<u64, ConfigError> {
    let name = "SAMVAULT_AUDIT_CHECKPOINT_EVERY";
    raw.required(name)?
        .parse::<u64>()
        .map_err(|_| bad(name, "must be a whole number (0: none)"))
}

/// `SAMVAULT_ONBOARD_RATE`: a whole number of steps a minute, 1 to 100000.
fn parse_onboard_rate(value: &str) -> Result<u32, ConfigError> {
    value
        .parse::<u32>()
        .ok()
        .filter(|n| (1..=100_000).contains(n))
        .ok_or_else(|| {
            bad(
                "SAMVAULT_ONBOARD_RATE",
                "must be a number of sign-in steps a minute from 1 to 100000",
            )
        })
}

fn parse_bool(value: &str) -> Option<bool> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// Parses `90s`, `15m`, `12h`, `7d` (one number, one unit).
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    let value = value.trim();
    let split = value
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("'{value}' needs a unit (s, m, h or d)"))?;
    let (number, unit) = value.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("'{value}' is not a duration like 7d or 30m"))?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("'{value}' has an unknown unit (use s, m, h or d)")),
    };
    number
        .checked_mul(seconds)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("'{value}' is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn customer_settings_parse() {
        let config = Config::from_sources(None, &env(&[])).unwrap();
        let c = &config.customers;
        assert_eq!(
            c.partner_center_url.as_str(),
            "https://api.partnercenter.microsoft.com/"
        );
        assert_eq!(
            c.grants_text(),
            "00000003-0000-0000-c000-000000000000=Directory.Read.All"
        );
        assert_eq!(c.first_resource().as_str(), GRAPH);
        assert!(c.auto_consent);
        assert_eq!(c.sync_interval, Duration::from_secs(86_400));
        assert_eq!(c.idp_rotation, IdpRotation::Entra);
        let grants = parse_customer_grants(
            " https://management.azure.com=user_impersonation ; \
             11111111-2222-4333-8444-555555555555@https://x.example=B,A",
        )
        .unwrap();
        assert_eq!(
            grants[0].enterprise_application_id,
            "797f4846-ba00-4fd7-ba43-dac1f8f63013"
        );
        assert_eq!(grants[1].scopes, ["B", "A"]);
        for bad in [
            "",
            "https://graph.microsoft.com",
            "https://graph.microsoft.com=",
            "https://x.example=A",
            "nope@https://x.example=A",
            "http://graph.microsoft.com=A",
            "https://graph.microsoft.com=A;https://graph.microsoft.com=B",
            "https://graph.microsoft.com=A B",
        ] {
            assert!(parse_customer_grants(bad).is_err(), "{bad}");
        }
        for (name, value) in [
            ("SAMVAULT_IDP_ROTATION", "lenient"),
            ("SAMVAULT_CUSTOMER_SYNC_INTERVAL", "10s"),
            ("SAMVAULT_CUSTOMER_AUTO_CONSENT", "maybe"),
            ("SAMVAULT_PARTNER_CENTER_URL", "ftp://x"),
        ] {
            let e = Config::from_sources(None, &env(&[(name, value)])).unwrap_err();
            assert!(e.0.contains(name), "{e:?}");
        }
        let strict = Config::from_sources(None, &env(&[("SAMVAULT_IDP_ROTATION", "strict")]));
        assert_eq!(strict.unwrap().customers.idp_rotation, IdpRotation::Strict);
    }

    #[test]
    fn defaults_match_the_spec() {
        let config = Config::from_sources(None, &env(&[])).unwrap();
        assert_eq!(config.server.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(
            config.redirect_uri().as_str(),
            "http://127.0.0.1:8080/onboard/callback"
        );
        assert_eq!(
            config.entra.authority.as_str(),
            "https://login.microsoftonline.com/"
        );
        assert_eq!(
            config.keys.provider,
            KeyProviderConfig::Local("samvault.key".into())
        );
        assert_eq!(
            config.rotation.rotate_after,
            Duration::from_secs(7 * 86_400)
        );
        assert_eq!(config.entra.resources.len(), 3);
        assert_eq!(config.primary_resource().as_str(), PARTNER_CENTER);
        assert!(config.entra.require_mfa);
        assert!(config.is_sqlite());
    }

    #[test]
    fn trusted_proxies_are_addresses_or_ranges() {
        let config = Config::from_sources(None, &env(&[])).unwrap();
        assert!(
            config.server.trusted_proxies.is_empty(),
            "no proxy is trusted by default"
        );
        let config = Config::from_sources(
            None,
            &env(&[(
                "SAMVAULT_TRUSTED_PROXIES",
                "10.0.0.0/8, 192.0.2.7 2001:db8::/64",
            )]),
        )
        .unwrap();
        let proxies: Vec<String> = config
            .server
            .trusted_proxies
            .iter()
            .map(|p| p.to_string())
            .collect();
        assert_eq!(proxies, ["10.0.0.0/8", "192.0.2.7/32", "2001:db8::/64"]);
        let err = Config::from_sources(None, &env(&[("SAMVAULT_TRUSTED_PROXIES", "proxy.local")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("SAMVAULT_TRUSTED_PROXIES") && err.contains("proxy.local"),
            "{err}"
        );
    }

    #[test]
    fn the_onboarding_rate_is_a_positive_number_a_minute() {
        let config = Config::from_sources(None, &env(&[])).unwrap();
        assert_eq!(config.onboarding.rate, 20);
        let config = Config::from_sources(None, &env(&[("SAMVAULT_ONBOARD_RATE", "120")]));
        assert_eq!(config.unwrap().onboarding.rate, 120);
        for bad in ["0", "-1", "20/m", "1000001", "many"] {
            let err = Config::from_sources(None, &env(&[("SAMVAULT_ONBOARD_RATE", bad)]))
                .unwrap_err()
                .to_string();
            assert!(err.contains("SAMVAULT_ONBOARD_RATE"), "{bad}: {err}");
        }
    }

    #[test]
    fn a_metrics_token_must_not_be_guessable() {
        let err = Config::from_sources(None, &env(&[("SAMVAULT_METRICS_TOKEN", "short")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("SAMVAULT_METRICS_TOKEN"), "{err}");
        assert!(!err.contains("short"), "the value is never repeated: {err}");
        let config = Config::from_sources(
            None,
            &env(&[("SAMVAULT_METRICS_TOKEN", "0123456789abcdef")]),
        )
        .unwrap();
        assert!(config.server.metrics_token.is_some());
        assert!(
            Config::from_sources(None, &env(&[]))
                .unwrap()
                .server
                .metrics_token
                .is_none()
        );
    }

    #[test]
    fn environment_beats_file_beats_default() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("samvault.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:9000\"\nrotate_after = \"1d\"\nauthority = \"usgov\"\n",
        )
        .unwrap();
        let config =
            Config::from_sources(Some(&file), &env(&[("SAMVAULT_LISTEN", "127.0.0.1:9100")]))
                .unwrap();
        assert_eq!(config.server.listen.to_string(), "127.0.0.1:9100");
        assert_eq!(config.rotation.rotate_after, Duration::from_secs(86_400));
        assert_eq!(
            config.entra.authority.as_str(),
            "https://login.microsoftonline.us/"
        );
    }

    #[test]
    fn secrets_come_from_files_and_never_print() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "s3cr3t-value\n").unwrap();
        let config = Config::from_sources(
            None,
            &env(&[
                ("SAMVAULT_CLIENT_ID", "app"),
                ("SAMVAULT_CLIENT_SECRET_FILE", secret.to_str().unwrap()),
            ]),
        )
        .unwrap();
        let (_, credentials) = config.app_identity().unwrap();
        match credentials.as_slice() {
            [AppCredential::Secret { setting, secret }] => {
                use secrecy::ExposeSecret;
                assert_eq!(*setting, "SAMVAULT_CLIENT_SECRET");
                assert_eq!(secret.expose_secret(), "s3cr3t-value");
            }
            other => panic!("expected one secret: {other:?}"),
        }
        assert!(!format!("{config:?}").contains("s3cr3t"));
    }

    #[test]
    fn credentials_are_tried_certificate_then_current_then_next_secret() {
        let dir = tempfile::tempdir().unwrap();
        let next = dir.path().join("next");
        let key = dir.path().join("key.pem");
        std::fs::write(&next, "next-value\n").unwrap();
        std::fs::write(
            &key,
            "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let config = Config::from_sources(
            None,
            &env(&[
                ("SAMVAULT_CLIENT_ID", "app"),
                ("SAMVAULT_CLIENT_SECRET", "current-value"),
                ("SAMVAULT_CLIENT_SECRET_NEXT_FILE", next.to_str().unwrap()),
                ("SAMVAULT_CLIENT_CERT", "/etc/samvault/app.crt"),
                ("SAMVAULT_CLIENT_KEY_FILE", key.to_str().unwrap()),
            ]),
        )
        .unwrap();
        let (_, credentials) = config.app_identity().unwrap();
        let settings: Vec<_> = credentials.iter().map(AppCredential::setting).collect();
        assert_eq!(
            settings,
            [
                "SAMVAULT_CLIENT_CERT",
                "SAMVAULT_CLIENT_SECRET",
                "SAMVAULT_CLIENT_SECRET_NEXT"
            ]
        );
        let printed = format!("{config:?}");
        for secret in ["current-value", "next-value", "MIIE"] {
            assert!(!printed.contains(secret), "{secret} printed: {printed}");
        }
    }

    #[test]
    fn a_key_must_be_pem_and_come_with_a_certificate() {
        let err = Config::from_sources(
            None,
            &env(&[
                ("SAMVAULT_CLIENT_CERT", "app.crt"),
                ("SAMVAULT_CLIENT_KEY", "/etc/samvault/app.key"),
            ]),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("SAMVAULT_CLIENT_KEY_FILE"),
            "{err}"
        );
        let err =
            Config::from_sources(None, &env(&[("SAMVAULT_CLIENT_CERT", "app.crt")])).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("configuration: SAMVAULT_CLIENT_KEY:"),
            "{err}"
        );
    }

    #[test]
    fn onboarding_is_open_unless_by_invitation() {
        let open = Config::from_sources(None, &env(&[])).unwrap();
        assert_eq!(open.onboarding.mode, Onboarding::Open);
        let closed = env(&[("SAMVAULT_ONBOARDING", "invitation")]);
        let closed = Config::from_sources(None, &closed).unwrap();
        assert_eq!(closed.onboarding.mode, Onboarding::Invitation);
        let err = Config::from_sources(None, &env(&[("SAMVAULT_ONBOARDING", "closed")]));
        assert!(
            err.unwrap_err()
                .to_string()
                .contains("SAMVAULT_ONBOARDING: must be open or invitation")
        );
    }

    #[test]
    fn bad_settings_name_themselves() {
        let cases = [
            ("SAMVAULT_LISTEN", "nowhere"),
            ("SAMVAULT_ROTATE_AFTER", "7 days"),
            ("SAMVAULT_REQUIRE_MFA", "maybe"),
            ("SAMVAULT_KEY_PROVIDER", "vault:x"),
            ("SAMVAULT_AUTHORITY", "germany"),
            ("DATABASE_URL", "mysql://x"),
            ("SAMVAULT_RESOURCES", "ftp://x"),
        ];
        for (name, value) in cases {
            let err = Config::from_sources(None, &env(&[(name, value)])).unwrap_err();
            assert!(err.to_string().contains(name), "{name}: {err}");
        }
        let err = Config::from_sources(None, &env(&[]))
            .unwrap()
            .app_identity()
            .unwrap_err();
        assert!(err.to_string().contains("SAMVAULT_CLIENT_ID"));
    }

    #[test]
    fn plain_http_beside_an_https_public_url_is_refused_unless_loopback() {
        let https = ("SAMVAULT_PUBLIC_URL", "https://samvault.example.com");
        let secret = ("SAMVAULT_WEBHOOK_SECRET", "s3cr3t");
        for (name, value) in [
            ("SAMVAULT_AUTHORITY", "http://login.example.com"),
            ("SAMVAULT_AUTHORITY", "http://10.0.0.5:8081"),
            (
                "SAMVAULT_WEBHOOK_URL",
                "http://hooks.example.com/samvault?token=x",
            ),
            ("SAMVAULT_WEBHOOK_URL", "http://localhost.example.com/h"),
        ] {
            let err = Config::from_sources(None, &env(&[https, secret, (name, value)]))
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with(&format!("configuration: {name}: ")),
                "{err}"
            );
            assert!(err.contains("https") && !err.contains('\n'), "{err}");
            assert!(
                !err.contains("token=x"),
                "a URL's secrets are not repeated: {err}"
            );
            // The same URL is fine beside an http public URL (the demo).
            Config::from_sources(None, &env(&[secret, (name, value)])).unwrap();
        }
        for (name, value) in [
            ("SAMVAULT_AUTHORITY", "http://127.0.0.1:8081"),
            ("SAMVAULT_AUTHORITY", "http://[::1]:8081"),
            ("SAMVAULT_AUTHORITY", "https://login.example.com"),
            ("SAMVAULT_WEBHOOK_URL", "http://localhost:9000/h"),
            ("SAMVAULT_WEBHOOK_URL", "http://127.0.0.2/h"),
        ] {
            let config = Config::from_sources(None, &env(&[https, secret, (name, value)]));
            assert!(config.is_ok(), "{name}={value}: {:?}", config.err());
        }
    }

    #[test]
    fn the_audit_settings() {
        let config = Config::from_sources(None, &env(&[])).unwrap();
        assert_eq!(config.audit.anchor_file, None);
        assert_eq!(config.audit.checkpoint_every, 100);
        let config = Config::from_sources(
            None,
            &env(&[
                ("SAMVAULT_AUDIT_ANCHOR_FILE", "/mnt/anchor/samvault.anchor"),
                ("SAMVAULT_AUDIT_CHECKPOINT_EVERY", "0"),
            ]),
        )
        .unwrap();
        assert_eq!(
            config.audit.anchor_file.as_deref(),
            Some(Path::new("/mnt/anchor/samvault.anchor"))
        );
        assert_eq!(config.audit.checkpoint_every, 0);
        let err = Config::from_sources(None, &env(&[("SAMVAULT_AUDIT_CHECKPOINT_EVERY", "-1")]));
        assert!(
            err.unwrap_err()
                .to_string()
                .contains("SAMVAULT_AUDIT_CHECKPOINT_EVERY")
        );
    }

    #[test]
    fn unknown_file_setting_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "lisen = \"x\"\n").unwrap();
        let err = Config::from_sources(Some(&file), &env(&[])).unwrap_err();
        assert!(err.to_string().contains("lisen"), "{err}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(
            parse_duration("30d").unwrap(),
            Duration::from_secs(30 * 86_400)
        );
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("d").is_err());
        assert!(parse_duration("5w").is_err());
    }
}
