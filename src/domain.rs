//! Parsed values: once one of these exists, it is valid ("parse, don't validate").

use std::fmt;
use std::sync::Arc;

/// An Entra tenant id: a GUID, stored lower-case in its canonical hyphenated form. Shared,
/// not copied: a token request's id goes to the cache key and the request log by reference.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct TenantId(Arc<str>);

impl TenantId {
    pub fn parse(value: &str) -> Result<Self, &'static str> {
        let uuid = uuid::Uuid::try_parse(value).map_err(|_| "tenant id must be a GUID")?;
        // `try_parse` also accepts braced and URN forms; keep only the canonical one.
        if value.len() != 36 {
            return Err("tenant id must be a GUID like 6f3a2a5e-0c1d-4a3b-8f4e-1c2d3e4f5a01");
        }
        Ok(Self(uuid.hyphenated().to_string().into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&TenantId> for Arc<str> {
    fn from(id: &TenantId) -> Self {
        id.0.clone()
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An audience an access token is issued for, such as `https://graph.microsoft.com`:
/// an https origin (no path, query or trailing slash), as Entra's `.default` scope wants it.
/// Shared, not copied: every token request names one of the few configured resources.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct Resource(Arc<str>);

impl Resource {
    pub fn parse(value: &str) -> Result<Self, &'static str> {
        let trimmed = value.trim_end_matches('/');
        let url = url::Url::parse(trimmed).map_err(|_| "resource must be an https URL")?;
        if url.scheme() != "https"
            || url.host_str().is_none()
            || url.path() != "/"
            || url.query().is_some()
            || url.fragment().is_some()
            || !url.username().is_empty()
        {
            return Err("resource must be an https origin like https://graph.microsoft.com");
        }
        Ok(Self(trimmed.to_ascii_lowercase().into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The v2 scope that asks for every consented permission of this resource.
    pub fn default_scope(&self) -> String {
        format!("{}/.default", self.0)
    }
}

impl From<&Resource> for Arc<str> {
    fn from(resource: &Resource) -> Self {
        resource.0.clone()
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why an integration asks for a token (SAM: access must identify its purpose).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Purpose(Arc<str>);

impl Purpose {
    pub const MAX_CHARS: usize = 200;

    pub fn parse(value: &str) -> Result<Self, &'static str> {
        let trimmed = value.trim();
        let chars = trimmed.chars().count();
        if chars == 0 {
            return Err("purpose is required");
        }
        if chars > Self::MAX_CHARS {
            return Err("purpose must be at most 200 characters");
        }
        if trimmed.chars().any(char::is_control) {
            return Err("purpose must not contain control characters");
        }
        Ok(Self(trimmed.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&Purpose> for Arc<str> {
    fn from(purpose: &Purpose) -> Self {
        purpose.0.clone()
    }
}

/// Partner status (REFERENCE §4 "Classification").
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PartnerStatus {
    Active,
    AtRisk,
    ReconsentRequired,
    Revoked,
}

impl PartnerStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::AtRisk => "at_risk",
            Self::ReconsentRequired => "reconsent_required",
            Self::Revoked => "revoked",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        Some(match value {
            "active" => Self::Active,
            "at_risk" => Self::AtRisk,
            "reconsent_required" => Self::ReconsentRequired,
            "revoked" => Self::Revoked,
            _ => return None,
        })
    }

    /// Whether a grant in this status may still be redeemed.
    pub fn is_usable(self) -> bool {
        matches!(self, Self::Active | Self::AtRisk)
    }
}

/// Where the CPV app stands in one customer tenant of a partner (REFERENCE §6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CustomerStatus {
    /// Listed, the app not consented there (yet, or any more).
    Unconsented,
    /// Partner Center created the app's consent there and a token was issued there.
    Consented,
    /// Partner Center refused or failed the consent; retried later with backoff.
    ConsentFailed,
    /// The partner has no delegated admin rights there (AADSTS50020).
    AccessDenied,
    /// The CPV removed the app's consent there through samvault.
    Removed,
    /// No longer in the partner's customer list.
    Gone,
}

impl CustomerStatus {
    pub const ALL: [CustomerStatus; 6] = [
        Self::Unconsented,
        Self::Consented,
        Self::ConsentFailed,
        Self::AccessDenied,
        Self::Removed,
        Self::Gone,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unconsented => "unconsented",
            Self::Consented => "consented",
            Self::ConsentFailed => "consent_failed",
            Self::AccessDenied => "access_denied",
            Self::Removed => "removed",
            Self::Gone => "gone",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == value)
    }
}

impl std::fmt::Display for CustomerStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_ids_are_canonical_guids() {
        let t = TenantId::parse("6F3A2A5E-0C1D-4A3B-8F4E-1C2D3E4F5A01").unwrap();
        assert_eq!(t.as_str(), "6f3a2a5e-0c1d-4a3b-8f4e-1c2d3e4f5a01");
        for bad in [
            "",
            "contoso",
            "../etc/passwd",
            "{6f3a2a5e-0c1d-4a3b-8f4e-1c2d3e4f5a01}",
            "6f3a2a5e0c1d4a3b8f4e1c2d3e4f5a01",
            "6f3a2a5e-0c1d-4a3b-8f4e-1c2d3e4f5a01' OR 1=1",
        ] {
            assert!(TenantId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn resources_are_https_origins() {
        assert_eq!(
            Resource::parse("https://graph.microsoft.com/")
                .unwrap()
                .as_str(),
            "https://graph.microsoft.com"
        );
        assert_eq!(
            Resource::parse("https://graph.microsoft.com")
                .unwrap()
                .default_scope(),
            "https://graph.microsoft.com/.default"
        );
        for bad in [
            "http://graph.microsoft.com",
            "https://graph.microsoft.com/v1.0",
            "graph",
            "https://a@b.com",
            "https://x.com?y=1",
        ] {
            assert!(Resource::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn purposes_are_bounded_text() {
        assert_eq!(
            Purpose::parse("  nightly invoice sync ").unwrap().as_str(),
            "nightly invoice sync"
        );
        assert!(Purpose::parse("").is_err());
        assert!(Purpose::parse("   ").is_err());
        assert!(Purpose::parse(&"x".repeat(201)).is_err());
        assert!(Purpose::parse(&"é".repeat(200)).is_ok());
        assert!(Purpose::parse("a\nb").is_err());
    }
}
