//! What Entra ID answers when it refuses, and what samvault makes of it (REFERENCE §4
//! "Classification"). The whole mapping lives here, in one table, so the token API, the
//! rotation engine and the dashboard always agree.

use std::fmt;
use std::time::Duration;

/// Entra's error body, field for field (`error_codes` etc. are Entra's additions to RFC 6749).
#[derive(Clone, Debug, Default, serde::Deserialize, serde::Serialize)]
pub struct EntraErrorBody {
    pub error: String,
    #[serde(default)]
    pub error_description: Option<String>,
    #[serde(default)]
    pub error_codes: Vec<u32>,
    #[serde(default)]
    pub timestamp: Option<String>,
    #[serde(default)]
    pub trace_id: Option<String>,
    #[serde(default)]
    pub correlation_id: Option<String>,
    #[serde(default)]
    pub error_uri: Option<String>,
}

impl fmt::Display for EntraErrorBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.code() {
            Some(code) => write!(f, "{} (AADSTS{code})", self.error),
            None => f.write_str(&self.error),
        }
    }
}

impl oauth2::ErrorResponse for EntraErrorBody {}

impl EntraErrorBody {
    /// The AADSTS code: the first of `error_codes`, else parsed from the description.
    pub fn code(&self) -> Option<u32> {
        self.error_codes.first().copied().or_else(|| {
            let d = self.error_description.as_deref()?;
            let digits: String = d
                .strip_prefix("AADSTS")?
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            digits.parse().ok()
        })
    }

    /// Whether Entra refused the app's own credential (a wrong, expired or missing secret, a
    /// certificate it does not know...): the only answers another credential could change.
    /// Entra also says `invalid_client` for a redirect URI that differs at redemption and for
    /// a resource the app registration does not list; those blame no credential.
    pub fn blames_credential(&self) -> bool {
        self.error == "invalid_client"
            && !self
                .code()
                .is_some_and(|code| REDIRECT_URI_CODES.contains(&code) || code == NOT_REGISTERED)
    }

    /// Parses a body Entra sent; `None` when it is not Entra's JSON shape.
    pub fn parse(body: &[u8]) -> Option<Self> {
        serde_json::from_slice::<Self>(body)
            .ok()
            .filter(|b| !b.error.is_empty())
    }
}

/// The redirect URI Entra saw is not the one it expected: at redemption, not the authorize
/// request's (500112); anywhere, not registered on the app (50011). `SAMVAULT_PUBLIC_URL` sets it.
pub const REDIRECT_URI_CODES: [u32; 2] = [500112, 50011];
/// `.default` for a resource the app registration does not list (`invalid_client`).
const NOT_REGISTERED: u32 = 650057;

/// Why a call to the IdP failed, with what is needed to decide what to do.
#[derive(Debug, thiserror::Error)]
pub enum IdpError {
    #[error("Entra ID refused: {body}")]
    Entra {
        status: u16,
        body: Box<EntraErrorBody>,
        retry_after: Option<Duration>,
    },
    #[error("Entra ID answered HTTP {status} with a body that is not an OAuth error")]
    Malformed {
        status: u16,
        retry_after: Option<Duration>,
    },
    #[error("Entra ID unreachable: {0}")]
    Transport(String),
    #[error("Entra ID's response is not usable: {0}")]
    Protocol(String),
}

/// What an IdP failure means for the partner and for the caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The grant is dead: the partner must consent again.
    ReconsentRequired { code: Option<u32> },
    /// This resource was never consented; the partner is otherwise healthy.
    ResourceNotConsented { code: Option<u32> },
    /// The CPV app's own credential is rejected: one global alarm, nobody is demoted.
    AppCredentialsInvalid { code: Option<u32> },
    /// Try again later (honouring `retry_after` when given).
    Transient {
        code: Option<u32>,
        retry_after: Option<Duration>,
    },
    /// An answer samvault does not expect (misconfiguration, a new Entra behaviour).
    Unexpected { code: Option<u32> },
}

impl IdpError {
    /// Classifies a failed redemption. `primary` says whether the resource asked for is the
    /// partner's primary one (the one consent was given for).
    pub fn classify(&self, primary: bool) -> Outcome {
        match self {
            IdpError::Entra {
                status,
                body,
                retry_after,
            } => {
                let code = body.code();
                match (body.error.as_str(), code) {
                    // 50196: Entra's loop detection, a throttle for user flows.
                    (_, Some(50196)) => Outcome::Transient {
                        code,
                        retry_after: *retry_after,
                    },
                    _ if !primary && refuses_resource(body) => {
                        Outcome::ResourceNotConsented { code }
                    }
                    ("invalid_grant" | "interaction_required" | "consent_required", _) => {
                        Outcome::ReconsentRequired { code }
                    }
                    ("invalid_client", _) if body.blames_credential() => {
                        Outcome::AppCredentialsInvalid { code }
                    }
                    ("unauthorized_client", _) => Outcome::AppCredentialsInvalid { code },
                    ("temporarily_unavailable" | "server_error", _) => Outcome::Transient {
                        code,
                        retry_after: *retry_after,
                    },
                    _ if *status == 429 || *status >= 500 => Outcome::Transient {
                        code,
                        retry_after: *retry_after,
                    },
                    // A misconfiguration (a redirect URI, a resource missing from the app
                    // registration, the primary resource missing): `describe` names the fix.
                    _ => Outcome::Unexpected { code },
                }
            }
            IdpError::Malformed { retry_after, .. } => Outcome::Transient {
                code: None,
                retry_after: *retry_after,
            },
            IdpError::Transport(_) => Outcome::Transient {
                code: None,
                retry_after: None,
            },
            IdpError::Protocol(_) => Outcome::Unexpected { code: None },
        }
    }

    pub fn code(&self) -> Option<u32> {
        match self {
            IdpError::Entra { body, .. } => body.code(),
            _ => None,
        }
    }
}

/// Entra refused this resource, not the partner's grant nor the app: the resource does not
/// exist in the tenant (`invalid_resource` 500011), the scope is not valid for it
/// (`invalid_scope` 70011), the app registration does not list it (`invalid_client` 650057)
/// or the partner never consented to it (`invalid_grant` 65001, or 500011 under that name).
fn refuses_resource(body: &EntraErrorBody) -> bool {
    match body.error.as_str() {
        "invalid_resource" | "invalid_scope" => true,
        "invalid_client" => body.code() == Some(NOT_REGISTERED),
        "invalid_grant" | "interaction_required" | "consent_required" => {
            matches!(body.code(), Some(65001 | 500011))
        }
        _ => false,
    }
}

/// What an AADSTS code means and what a person should do about it.
pub struct CodeInfo {
    pub meaning: &'static str,
    pub action: &'static str,
}

const RECONSENT: &str =
    "Send the partner admin a fresh onboarding link and have them consent again.";

/// The codes samvault meets, in the words ops need. Unknown codes get a generic entry.
pub fn describe(code: u32) -> CodeInfo {
    let (meaning, action) = grant_advice(code)
        .or_else(|| setup_advice(code))
        .unwrap_or((
            "Entra ID refused the request.",
            "Look the code up in Microsoft's AADSTS reference.",
        ));
    CodeInfo { meaning, action }
}

/// What the partner's grant, sign-in or tenant is missing.
fn grant_advice(code: u32) -> Option<(&'static str, &'static str)> {
    Some(match code {
        700082 => (
            "The refresh token expired after 90 days of inactivity.",
            RECONSENT,
        ),
        70008 => ("The refresh token or code expired (inactivity).", RECONSENT),
        50173 => (
            "The grant was revoked, typically because the user's password was changed or reset.",
            RECONSENT,
        ),
        50132 => (
            "The session is no longer valid: the password changed or expired.",
            RECONSENT,
        ),
        70043 => (
            "The refresh token is expired or invalid because of a Conditional Access sign-in frequency policy.",
            "Exclude the consenting account from the sign-in-frequency policy in the partner tenant, then have it consent again.",
        ),
        50076 | 50079 => (
            "The user must now use multi-factor authentication (policy changed or MFA registration required).",
            "Have the partner admin register and complete MFA, then consent again.",
        ),
        50078 => (
            "The user's MFA claim expired.",
            "Have the partner admin sign in with MFA and consent again.",
        ),
        53003 => (
            "Access was blocked by a Conditional Access policy in the partner tenant.",
            "Ask the partner to allow the CPV app in their Conditional Access policies, then consent again.",
        ),
        70000 => (
            "The grant is invalid or malformed (revoked, or already used where reuse is detected).",
            RECONSENT,
        ),
        65001 => (
            "The user or administrator has not consented to the application for this resource.",
            "Have the partner admin consent again, including this resource.",
        ),
        90002 => (
            "The partner tenant no longer exists.",
            "Confirm with the partner; remove them or invite again.",
        ),
        54005 => (
            "The authorization code was already redeemed.",
            "Start the consent again from the onboarding page.",
        ),
        50196 => (
            "Entra detected a request loop and throttled this user.",
            "None: samvault retries later.",
        ),
        _ => return None,
    })
}

/// What samvault's own setup (the CPV app, its registration, samvault's settings) gets wrong.
fn setup_advice(code: u32) -> Option<(&'static str, &'static str)> {
    Some(match code {
        500011 => (
            "The resource does not exist in the partner tenant (no service principal): a wrong URL, or an API the partner never installed.",
            "Check the resource URL; have the partner consent to it if it is needed.",
        ),
        650057 => (
            "The CPV app registration does not list this resource among its API permissions.",
            "Add the resource's delegated permission to the app registration, then have the partner consent again including it.",
        ),
        70011 => (
            "The scope samvault asked for is not valid for this resource.",
            "Check the resource URL in SAMVAULT_RESOURCES and in the client's allowed resources.",
        ),
        500112 => (
            "Entra ID saw another redirect URI when samvault redeemed the code than when the sign-in started: SAMVAULT_PUBLIC_URL differs between the samvault replica that started the consent and the one that finished it, or it changed in between.",
            "Operators: set SAMVAULT_PUBLIC_URL to the one public address partners use (the same on every replica, the proxy's https address if there is one) and restart. Partner admins: start the consent again.",
        ),
        50011 => (
            "The redirect URI samvault sent (SAMVAULT_PUBLIC_URL followed by /onboard/callback) is not registered on the CPV app.",
            "Operators: register SAMVAULT_PUBLIC_URL/onboard/callback as a Web redirect URI of the app registration, or correct SAMVAULT_PUBLIC_URL.",
        ),
        7000215 => (
            "The CPV app's client secret is invalid.",
            "Check SAMVAULT_CLIENT_SECRET against the app registration; roll a new secret if it was changed.",
        ),
        7000222 => (
            "The CPV app's client secret has expired.",
            "Create a new secret in the app registration and deploy it to samvault.",
        ),
        700016 => (
            "The CPV app was not found in the directory (wrong client id, or the app was deleted).",
            "Check SAMVAULT_CLIENT_ID and the app registration.",
        ),
        7000218 => (
            "The request did not include a client credential.",
            "Configure SAMVAULT_CLIENT_SECRET or a certificate.",
        ),
        _ => return None,
    })
}

/// What a failed redemption at a customer tenant's authority means (REFERENCE §6): most answers
/// concern that customer only; the partner's grant is blamed only when Entra blames it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CustomerOutcome {
    /// The CPV app is not consented in the customer tenant for this resource (65001), the
    /// resource has no service principal there (500011) or the scope is not valid (70011).
    ConsentRequired { code: u32 },
    /// The partner's user may not act there: no or an ended delegated-admin relationship
    /// (50020), or the customer tenant's MFA or Conditional Access policy (50076, 50079,
    /// 53003).
    AccessDenied { code: u32 },
    /// The customer tenant does not exist (90002 naming it).
    Gone { code: u32 },
    /// Everything else, the partner's dead refresh token first: as on the partner's path.
    Partner,
}

impl IdpError {
    /// Classifies a failed redemption of `partner`'s grant at a customer tenant's authority.
    /// A 90002 that names the partner's own tenant is the partner's (its tenant is gone).
    pub fn classify_at_customer(&self, partner: &str) -> CustomerOutcome {
        let IdpError::Entra { body, .. } = self else {
            return CustomerOutcome::Partner;
        };
        match body.code() {
            Some(code @ (65001 | 500011 | 70011)) => CustomerOutcome::ConsentRequired { code },
            Some(code @ (50020 | 50076 | 50079 | 53003)) => CustomerOutcome::AccessDenied { code },
            Some(code @ 90002) if !body.names(partner) => CustomerOutcome::Gone { code },
            _ => CustomerOutcome::Partner,
        }
    }
}

impl EntraErrorBody {
    /// Whether the description names `text` (a tenant id), case-insensitively.
    fn names(&self, text: &str) -> bool {
        self.error_description
            .as_deref()
            .is_some_and(|d| d.to_ascii_lowercase().contains(&text.to_ascii_lowercase()))
    }
}

/// What a customer tenant's refusal means and what to do, with its AADSTS code: the reason
/// a customer's status records.
pub fn customer_reason(code: u32) -> String {
    let (meaning, action) = match code {
        65001 => (
            "The CPV app is not consented in this customer tenant for this resource.",
            "Consent it there through Partner Center: samvault customers consent --partner PARTNER --customer CUSTOMER (SAMVAULT_CUSTOMER_GRANTS names the resources and scopes).",
        ),
        500011 => (
            "The resource has no service principal in this customer tenant: the app's consent there does not include it.",
            "Add the resource to SAMVAULT_CUSTOMER_GRANTS and consent the customer again.",
        ),
        70011 => (
            "The scope asked for is not valid for this resource in this customer tenant.",
            "Check the resource URL and SAMVAULT_CUSTOMER_GRANTS, then consent the customer again.",
        ),
        50020 => (
            "The partner's users have no access to this customer tenant: there is no delegated-admin (GDAP) relationship, or it ended.",
            "The partner re-establishes the relationship in Partner Center; the next token request finds it.",
        ),
        50076 | 50079 | 53003 => (
            "The customer tenant's MFA or Conditional Access policy refused the partner's user.",
            "The customer or the partner adjusts the policy for the CPV app; the partner's own grant is not affected.",
        ),
        90002 => (
            "The customer tenant no longer exists.",
            "Confirm with the partner; the next customer sync removes it from the list.",
        ),
        _ => (
            "Entra ID refused the token in this customer tenant.",
            "Look the code up in Microsoft's AADSTS reference.",
        ),
    };
    format!("AADSTS{code}: {meaning} {action}")
}

/// `Retry-After` as seconds (the only form Entra uses); dates are ignored.
pub fn parse_retry_after(value: Option<&str>) -> Option<Duration> {
    value?.trim().parse::<u64>().ok().map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entra(status: u16, error: &str, code: u32) -> IdpError {
        IdpError::Entra {
            status,
            body: Box::new(EntraErrorBody {
                error: error.into(),
                error_description: Some(format!("AADSTS{code}: something")),
                error_codes: vec![code],
                ..Default::default()
            }),
            retry_after: None,
        }
    }

    #[test]
    fn the_classification_table_of_the_spec() {
        for code in [
            700082, 70008, 50173, 50132, 70043, 50076, 50078, 50079, 53003, 70000, 65001,
        ] {
            assert_eq!(
                entra(400, "invalid_grant", code).classify(true),
                Outcome::ReconsentRequired { code: Some(code) }
            );
        }
        assert_eq!(
            entra(400, "interaction_required", 50076).classify(true),
            Outcome::ReconsentRequired { code: Some(50076) }
        );
        assert_eq!(
            entra(400, "invalid_grant", 65001).classify(false),
            Outcome::ResourceNotConsented { code: Some(65001) }
        );
        assert_eq!(
            entra(400, "invalid_grant", 500011).classify(false),
            Outcome::ResourceNotConsented { code: Some(500011) }
        );
        assert!(matches!(
            entra(400, "invalid_grant", 50196).classify(true),
            Outcome::Transient { .. }
        ));
        for code in [7000215, 7000222, 700016, 7000218] {
            assert_eq!(
                entra(401, "invalid_client", code).classify(true),
                Outcome::AppCredentialsInvalid { code: Some(code) }
            );
        }
        assert_eq!(
            entra(400, "unauthorized_client", 700016).classify(true),
            Outcome::AppCredentialsInvalid { code: Some(700016) }
        );
        assert!(matches!(
            entra(503, "temporarily_unavailable", 0).classify(true),
            Outcome::Transient { .. }
        ));
        assert!(matches!(
            entra(500, "server_error", 0).classify(true),
            Outcome::Transient { .. }
        ));
        assert!(matches!(
            entra(429, "whatever", 0).classify(true),
            Outcome::Transient { .. }
        ));
        assert!(matches!(
            IdpError::Malformed {
                status: 502,
                retry_after: None
            }
            .classify(true),
            Outcome::Transient { .. }
        ));
        assert!(matches!(
            IdpError::Transport("timeout".into()).classify(true),
            Outcome::Transient { .. }
        ));
        assert_eq!(
            entra(400, "invalid_request", 900144).classify(true),
            Outcome::Unexpected { code: Some(900144) }
        );
    }

    /// What Entra sends for a resource the partner never granted, held against a non-primary
    /// and the primary resource (docs/ENTRA_FIDELITY.md).
    #[test]
    fn a_resource_never_granted_is_not_consented_whatever_error_entra_names() {
        for (error, code) in [
            ("invalid_resource", 500011),
            ("invalid_scope", 70011),
            ("invalid_client", 650057),
            ("invalid_grant", 65001),
            ("invalid_grant", 500011),
        ] {
            assert_eq!(
                entra(400, error, code).classify(false),
                Outcome::ResourceNotConsented { code: Some(code) },
                "{error} {code}"
            );
        }
        for (error, code) in [("invalid_resource", 500011), ("invalid_client", 650057)] {
            assert_eq!(
                entra(400, error, code).classify(true),
                Outcome::Unexpected { code: Some(code) },
                "{error} {code} on the primary resource is a misconfiguration"
            );
        }
    }

    /// `invalid_client` answers that are not about the app's credential: no alarm, and the
    /// advice names the setting to fix.
    #[test]
    fn invalid_client_about_the_redirect_uri_is_a_configuration_error() {
        for code in [500112, 50011] {
            let error = entra(400, "invalid_client", code);
            assert_eq!(
                error.classify(true),
                Outcome::Unexpected { code: Some(code) }
            );
            let IdpError::Entra { body, .. } = &error else {
                unreachable!()
            };
            assert!(!body.blames_credential(), "{code}");
            let info = describe(code);
            assert!(
                format!("{} {}", info.meaning, info.action).contains("SAMVAULT_PUBLIC_URL"),
                "{code}"
            );
        }
        for code in [7000215, 7000222, 7000218, 700027, 700024, 700021] {
            let IdpError::Entra { body, .. } = entra(401, "invalid_client", code) else {
                unreachable!()
            };
            assert!(body.blames_credential(), "{code}");
        }
    }

    #[test]
    fn code_comes_from_error_codes_or_description() {
        let body = EntraErrorBody::parse(br#"{"error":"invalid_grant","error_description":"AADSTS700082: The refresh token has expired"}"#).unwrap();
        assert_eq!(body.code(), Some(700082));
        assert!(EntraErrorBody::parse(b"<html>").is_none());
        assert!(EntraErrorBody::parse(br#"{"error":""}"#).is_none());
    }

    #[test]
    fn retry_after_seconds() {
        assert_eq!(parse_retry_after(Some("30")), Some(Duration::from_secs(30)));
        assert_eq!(
            parse_retry_after(Some("Wed, 21 Oct 2015 07:28:00 GMT")),
            None
        );
        assert_eq!(parse_retry_after(None), None);
    }

    /// REFERENCE §6: at a customer's authority only Entra's verdict on the grant itself is the
    /// partner's; the rest concerns that customer.
    #[test]
    fn customer_refusals_concern_the_customer_unless_the_grant_is_dead() {
        let partner = "6f3a2a5e-0c1d-4a3b-8f4e-1c2d3e4f5a01";
        for code in [65001, 500011, 70011] {
            assert_eq!(
                entra(400, "invalid_grant", code).classify_at_customer(partner),
                CustomerOutcome::ConsentRequired { code }
            );
        }
        for code in [50020, 50076, 50079, 53003] {
            assert_eq!(
                entra(400, "invalid_grant", code).classify_at_customer(partner),
                CustomerOutcome::AccessDenied { code }
            );
        }
        let gone = |tenant: &str| IdpError::Entra {
            status: 400,
            body: Box::new(EntraErrorBody {
                error: "invalid_request".into(),
                error_description: Some(format!("AADSTS90002: Tenant '{tenant}' not found.")),
                error_codes: vec![90002],
                ..Default::default()
            }),
            retry_after: None,
        };
        assert_eq!(
            gone("7b1e0c3a-5d2f-4c8e-9a6b-00000000c001").classify_at_customer(partner),
            CustomerOutcome::Gone { code: 90002 }
        );
        assert_eq!(
            gone(&partner.to_uppercase()).classify_at_customer(partner),
            CustomerOutcome::Partner
        );
        for code in [700082, 70008, 50173, 50132, 70043, 70000, 50078, 7000222] {
            assert_eq!(
                entra(400, "invalid_grant", code).classify_at_customer(partner),
                CustomerOutcome::Partner,
                "{code}"
            );
        }
        assert_eq!(
            IdpError::Transport("timed out".into()).classify_at_customer(partner),
            CustomerOutcome::Partner
        );
        assert!(customer_reason(50020).starts_with("AADSTS50020: "));
    }

    #[test]
    fn every_spec_code_has_advice() {
        for code in [700082, 70043, 50076, 7000222] {
            assert!(!describe(code).action.is_empty());
            assert_ne!(describe(code).meaning, describe(1).meaning);
        }
    }
}
