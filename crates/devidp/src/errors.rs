//! Entra's error responses, byte for byte where it matters to a client.
//!
//! Clients (samvault included) branch on the OAuth `error` field and read the
//! AADSTS code from `error_codes`; people read `error_description`. Messages
//! below follow Microsoft's published texts so that logs from the simulator
//! look like logs from production. Every answer, with the source it follows, is in
//! `docs/ENTRA_FIDELITY.md`; `tests/fidelity.rs` holds the simulator to that table.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use time::OffsetDateTime;

use super::clock::{entra_timestamp, iso_o};

#[derive(Debug, Clone)]
pub struct EntraError {
    pub status: StatusCode,
    pub error: &'static str,
    pub suberror: Option<&'static str>,
    pub code: u32,
    pub message: String,
}

impl EntraError {
    /// An error whose OAuth `error`, HTTP status and `suberror` follow from its AADSTS code,
    /// as the token endpoint answers it.
    pub fn new(code: u32, message: impl Into<String>) -> Self {
        let (error, status, suberror) = classify(code);
        EntraError {
            status,
            error,
            suberror,
            code,
            message: message.into(),
        }
    }

    /// The same refusal sent back to the app from the authorize endpoint. Entra's
    /// authorize errors use OIDC's `interaction_required` where the token endpoint says
    /// `invalid_grant` (MFA), and carry no `suberror`.
    pub fn at_authorize(mut self) -> Self {
        if matches!(self.code, 50076 | 50079) {
            self.error = "interaction_required";
        }
        self.suberror = None;
        self
    }

    pub fn with_error(mut self, error: &'static str) -> Self {
        self.error = error;
        self
    }

    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    /// `AADSTSnnnn: message\r\nTrace ID: ...` as Entra formats it, in JSON and in redirects alike.
    pub fn description(&self, ids: &RequestIds, now: OffsetDateTime) -> String {
        format!(
            "AADSTS{}: {}\r\nTrace ID: {}\r\nCorrelation ID: {}\r\nTimestamp: {}",
            self.code,
            self.message,
            ids.trace_id,
            ids.correlation_id,
            entra_timestamp(now)
        )
    }

    pub fn error_uri(&self, base: &str) -> String {
        format!("{base}/error?code={}", self.code)
    }

    pub fn body(&self, base: &str, ids: &RequestIds, now: OffsetDateTime) -> serde_json::Value {
        let mut body = json!({
            "error": self.error,
            "error_description": self.description(ids, now),
            "error_codes": [self.code],
            "timestamp": entra_timestamp(now),
            "trace_id": ids.trace_id,
            "correlation_id": ids.correlation_id,
            "error_uri": self.error_uri(base),
        });
        if let Some(sub) = self.suberror {
            body["suberror"] = json!(sub);
        }
        body
    }

    pub fn to_response(&self, base: &str, ids: &RequestIds, now: OffsetDateTime) -> Response {
        let mut resp = (self.status, json_string(&self.body(base, ids, now))).into_response();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        no_store(h);
        if let Ok(v) = HeaderValue::from_str(&ids.trace_id) {
            h.insert("x-ms-request-id", v);
        }
        resp
    }
}

/// The per-request ids Entra puts in every error. `client-request-id` is echoed
/// as the correlation id, as Entra does, so client logs can be joined with ours.
#[derive(Debug, Clone)]
pub struct RequestIds {
    pub trace_id: String,
    pub correlation_id: String,
}

impl RequestIds {
    pub fn new(headers: &axum::http::HeaderMap) -> Self {
        let correlation_id = headers
            .get("client-request-id")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| uuid::Uuid::parse_str(v).ok())
            .unwrap_or_else(uuid::Uuid::new_v4)
            .to_string();
        RequestIds {
            trace_id: uuid::Uuid::new_v4().to_string(),
            correlation_id,
        }
    }
}

pub fn no_store(h: &mut axum::http::HeaderMap) {
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-store, no-cache"),
    );
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
}

pub fn json_string(v: &serde_json::Value) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "{}".into())
}

/// OAuth `error` value, HTTP status and `suberror` per AADSTS code, as the token endpoint
/// answers (sources per code in docs/ENTRA_FIDELITY.md).
fn classify(code: u32) -> (&'static str, StatusCode, Option<&'static str>) {
    let (error, status) = match code {
        // The app's own credential: 401, as Entra answers a failed client authentication.
        7000215 | 7000222 | 7000218 | 700027 | 700024 | 700023 | 700021 | 50013 => {
            ("invalid_client", StatusCode::UNAUTHORIZED)
        }
        // `invalid_client` that is not about the credential: the redirect URI at redemption
        // (500112, 50011) or a resource missing from the app registration (650057). No
        // source quotes their HTTP status; 400 is RFC 6749 §5.2's default.
        500112 | 50011 | 650057 => ("invalid_client", StatusCode::BAD_REQUEST),
        500011 => ("invalid_resource", StatusCode::BAD_REQUEST),
        70011 => ("invalid_scope", StatusCode::BAD_REQUEST),
        700016 => ("unauthorized_client", StatusCode::BAD_REQUEST),
        50058 => ("login_required", StatusCode::BAD_REQUEST),
        65004 => ("access_denied", StatusCode::BAD_REQUEST),
        70003 => ("unsupported_grant_type", StatusCode::BAD_REQUEST),
        700054 => ("unsupported_response_type", StatusCode::BAD_REQUEST),
        50027 | 90002 | 900023 | 900144 | 900561 | 28000 | 50149 | 501491 | 90023 => {
            ("invalid_request", StatusCode::BAD_REQUEST)
        }
        90006 => ("temporarily_unavailable", StatusCode::SERVICE_UNAVAILABLE),
        90055 => ("temporarily_unavailable", StatusCode::TOO_MANY_REQUESTS),
        50000 => ("server_error", StatusCode::INTERNAL_SERVER_ERROR),
        // 9002313 (an unreadable code or refresh token), 50076 (MFA) and every grant
        // failure: `invalid_grant`.
        _ => ("invalid_grant", StatusCode::BAD_REQUEST),
    };
    (error, status, suberror(code))
}

/// Entra's `suberror` refinements (the values MSAL's InteractionRequiredAuthError lists).
fn suberror(code: u32) -> Option<&'static str> {
    match code {
        65001 => Some("consent_required"),
        50076 | 50078 => Some("basic_action"),
        70043 => Some("token_expired"),
        // Entra added `bad_token` to 700082 answers: bodies reported in 2020-2022 have none,
        // later ones do; the current behaviour is simulated.
        700082 => Some("bad_token"),
        _ => None,
    }
}

/// A .NET TimeSpan rendering (`d.hh:mm:ss` / `hh:mm:ss`), as in Entra's 700082 and 70043 texts.
pub fn timespan(seconds: i64) -> String {
    let s = seconds.max(0);
    let (d, h, m, sec) = (s / 86_400, s % 86_400 / 3600, s % 3600 / 60, s % 60);
    if d > 0 {
        format!("{d}.{h:02}:{m:02}:{sec:02}")
    } else {
        format!("{h:02}:{m:02}:{sec:02}")
    }
}

// Constructors for every code the simulator emits. Message texts are Entra's.

pub fn missing_parameter(name: &str) -> EntraError {
    EntraError::new(
        900144,
        format!("The request body must contain the following parameter: '{name}'."),
    )
}

const MALFORMED: &str = "Invalid request. Request is malformed or invalid.";

/// A request Entra cannot read (a broken Basic header, two credentials at once).
pub fn malformed_request() -> EntraError {
    EntraError::new(9002313, MALFORMED).with_error("invalid_request")
}

/// A code or refresh token Entra cannot parse: the same code, answered `invalid_grant`.
pub fn malformed_grant() -> EntraError {
    EntraError::new(9002313, MALFORMED)
}

pub fn post_only(method: &str) -> EntraError {
    EntraError::new(
        900561,
        format!("The endpoint only accepts POST, OPTIONS requests. Received a {method} request."),
    )
}

/// A `{tenant}` path segment that is neither a GUID nor a domain name.
pub fn tenant_identifier_invalid(tenant: &str) -> EntraError {
    EntraError::new(
        900023,
        format!(
            "Specified tenant identifier '{tenant}' is neither a valid DNS name, nor a valid \
             external domain."
        ),
    )
}

pub fn tenant_not_found(tenant: &str) -> EntraError {
    EntraError::new(
        90002,
        format!(
            "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and \
             are signing into the correct cloud. Check with your subscription administrator, \
             this may happen if there are no active subscriptions for the tenant."
        ),
    )
}

pub fn app_not_found(client_id: &str, directory: &str) -> EntraError {
    EntraError::new(
        700016,
        format!(
            "Application with identifier '{client_id}' was not found in the directory \
             '{directory}'. This can happen if the application has not been installed by the \
             administrator of the tenant or consented to by any user in the tenant. You may have \
             sent your authentication request to the wrong tenant."
        ),
    )
}

pub fn missing_client_credential() -> EntraError {
    EntraError::new(
        7000218,
        "The request body must contain the following parameter: 'client_assertion' or \
         'client_secret'.",
    )
}

pub fn invalid_client_secret(client_id: &str) -> EntraError {
    EntraError::new(
        7000215,
        format!(
            "Invalid client secret provided. Ensure the secret being sent in the request is the \
             client secret value, not the client secret ID, for a secret added to app \
             '{client_id}'."
        ),
    )
}

pub fn client_secret_expired(client_id: &str) -> EntraError {
    EntraError::new(
        7000222,
        format!(
            "The provided client secret keys for app '{client_id}' are expired. Visit the Azure \
             portal to create new keys for your app: https://aka.ms/NewClientSecret, or consider \
             using certificate credentials for added security: https://aka.ms/certCreds."
        ),
    )
}

/// Texts of the certificate-credential checks, after Entra's answers to a bad
/// `client_assertion` (Microsoft's "certificate credentials" and AADSTS reference).
const ASSERTION_DOC: &str = "Review the documentation at \
    https://docs.microsoft.com/azure/active-directory/develop/active-directory-certificate-credentials.";

pub fn malformed_assertion(why: &str) -> EntraError {
    EntraError::new(50027, format!("JWT token is invalid or malformed: {why}."))
}

pub fn assertion_client_mismatch() -> EntraError {
    EntraError::new(
        700021,
        format!(
            "Client assertion application identifier doesn't match 'client_id' parameter. {ASSERTION_DOC}"
        ),
    )
}

pub fn assertion_key_not_found(client_id: &str, thumbprint: &str) -> EntraError {
    EntraError::new(
        700027,
        format!(
            "The certificate with identifier used to sign the client assertion is not registered \
             on application. [Reason - The key was not found., Thumbprint of key used by client: \
             '{thumbprint}', Please visit the Azure Portal, Graph Explorer or directly use MS \
             Graph to see configured keys for app Id '{client_id}'. {ASSERTION_DOC}]"
        ),
    )
}

pub fn assertion_key_expired(client_id: &str, thumbprint: &str) -> EntraError {
    EntraError::new(
        700027,
        format!(
            "Client assertion contains an invalid signature. [Reason - The key used is expired., \
             Thumbprint of key used by client: '{thumbprint}', Configured keys: see app Id \
             '{client_id}'.]"
        ),
    )
}

pub fn assertion_bad_signature() -> EntraError {
    EntraError::new(
        700027,
        format!("Client assertion failed signature validation. {ASSERTION_DOC}"),
    )
}

pub fn assertion_bad_audience() -> EntraError {
    EntraError::new(
        700023,
        format!("Client assertion audience claim does not match Realm issuer. {ASSERTION_DOC}"),
    )
}

pub fn assertion_out_of_time(
    now: OffsetDateTime,
    nbf: OffsetDateTime,
    exp: OffsetDateTime,
) -> EntraError {
    EntraError::new(
        700024,
        format!(
            "Client assertion is not within its valid time range. Current time: {}, assertion \
             valid from {}, expiry time of assertion {}. {ASSERTION_DOC}",
            iso_o(now),
            iso_o(nbf),
            iso_o(exp)
        ),
    )
}

/// Entra documents no code for a replayed `jti`; 50013 (InvalidAssertion) is its code for
/// an assertion refused "for various reasons", answered as a client-authentication failure.
pub fn assertion_replayed(jti: &str) -> EntraError {
    EntraError::new(
        50013,
        format!("Assertion is invalid: the client assertion with jti '{jti}' was already used."),
    )
}

pub fn unsupported_grant_type(grant_type: &str) -> EntraError {
    EntraError::new(
        70003,
        format!("The app requested an unsupported grant type '{grant_type}'."),
    )
}

pub fn invalid_code() -> EntraError {
    EntraError::new(
        70000,
        "The provided value for the 'code' parameter is not valid.",
    )
}

pub fn invalid_refresh_token() -> EntraError {
    EntraError::new(
        70000,
        "The provided value for the input parameter 'refresh_token' or 'assertion' is not valid.",
    )
}

pub fn invalid_grant(detail: &str) -> EntraError {
    EntraError::new(
        70000,
        format!("Provided grant is invalid or malformed. {detail}"),
    )
}

pub fn refresh_token_reused(issued: OffsetDateTime) -> EntraError {
    EntraError::new(
        70000,
        format!(
            "Provided grant is invalid or malformed. The refresh token issued on {} was already \
             redeemed: refresh token reuse detected (strict rotation is on, a refresh token is \
             valid for one use only).",
            iso_o(issued)
        ),
    )
}

pub fn code_expired() -> EntraError {
    EntraError::new(
        70008,
        "The provided authorization code or refresh token has expired due to inactivity. Send a \
         new interactive authorization request for this user and resource.",
    )
}

pub fn code_redeemed() -> EntraError {
    EntraError::new(
        54005,
        "OAuth2 Authorization code was already redeemed, please retry with a new valid code or \
         use an existing refresh token.",
    )
}

pub fn code_wrong_tenant() -> EntraError {
    EntraError::new(
        700005,
        "Provided Authorization Code is intended to use against other tenant, thus rejected.",
    )
}

/// The redirect URI at redemption differs from the authorize request's. Entra answers
/// `invalid_client` (its older v1 form was `AADSTS70002: Error validating credentials.
/// AADSTS50011: The reply address '…' does not match the reply address '…' provided when
/// requesting Authorization code.`).
pub fn reply_address_mismatch(sent: &str, original: &str) -> EntraError {
    EntraError::new(
        500112,
        format!(
            "The reply address '{sent}' does not match the reply address '{original}' provided \
             when requesting Authorization code."
        ),
    )
}

pub fn pkce_mismatch() -> EntraError {
    EntraError::new(
        501481,
        "The Code_Verifier does not match the code_challenge supplied in the authorization \
         request.",
    )
}

pub fn refresh_token_inactive(issued: OffsetDateTime) -> EntraError {
    EntraError::new(
        700082,
        format!(
            "The refresh token has expired due to inactivity. The token was issued on {} and was \
             inactive for {}.",
            iso_o(issued),
            timespan(90 * 86_400)
        ),
    )
}

pub fn grant_revoked(auth_time: OffsetDateTime, valid_from: OffsetDateTime) -> EntraError {
    EntraError::new(
        50173,
        format!(
            "The provided grant has expired due to it being revoked, a fresh auth token is \
             needed. The user might have changed or reset their password. The grant was issued \
             on '{}' and the TokensValidFrom date (before which tokens are not valid) for this \
             user is '{}'.",
            iso_o(auth_time),
            iso_o(valid_from)
        ),
    )
}

/// Entra states the lifetime in whole seconds ("... for this request is 86400."), unlike
/// 700082's TimeSpan.
pub fn sign_in_frequency(issued: OffsetDateTime, max_lifetime_secs: i64) -> EntraError {
    EntraError::new(
        70043,
        format!(
            "The refresh token has expired or is invalid due to sign-in frequency checks by \
             conditional access. The token was issued on {} and the maximum allowed lifetime for \
             this request is {}.",
            iso_o(issued),
            max_lifetime_secs.max(0)
        ),
    )
}

/// `resource` as Entra names it here: the resource's app id when it has one.
pub fn mfa_required(resource: &str) -> EntraError {
    EntraError::new(
        50076,
        format!(
            "Due to a configuration change made by your administrator, or because you moved to a \
             new location, you must use multi-factor authentication to access '{resource}'."
        ),
    )
}

pub fn consent_required(client_id: &str, app_name: &str) -> EntraError {
    let mut e = EntraError::new(
        65001,
        format!(
            "The user or administrator has not consented to use the application with ID \
             '{client_id}' named '{app_name}'. Send an interactive authorization request for \
             this user and resource."
        ),
    );
    e.suberror = Some("consent_required");
    e
}

/// The resource has no service principal in the tenant (a typo, or an API never installed).
pub fn resource_not_found(resource: &str, tenant_name: &str) -> EntraError {
    EntraError::new(
        500011,
        format!(
            "The resource principal named {resource} was not found in the tenant named \
             {tenant_name}. This can happen if the application has not been installed by the \
             administrator of the tenant or consented to by any user in the tenant. You might \
             have sent your authentication request to the wrong tenant."
        ),
    )
}

/// `.default` for a resource the app registration does not list: Entra answers
/// `invalid_client`, though the app's credential is fine.
pub fn resource_not_registered(
    client_id: &str,
    app_name: &str,
    resource: &str,
    resource_app_id: &str,
    registered: &[String],
) -> EntraError {
    EntraError::new(
        650057,
        format!(
            "Invalid resource. The client has requested access to a resource which is not listed \
             in the requested permissions in the client's application registration. Client app \
             ID: {client_id}({app_name}). Resource value from request: {resource}. Resource app \
             ID: {resource_app_id}. List of valid resources from app registration: {}.",
            registered.join(", ")
        ),
    )
}

/// A scope Entra cannot accept (here: `.default` next to a named permission of the same
/// resource).
pub fn invalid_scope(scope: &str) -> EntraError {
    EntraError::new(
        70011,
        format!(
            "The provided value for the input parameter 'scope' is not valid. The scope {scope} \
             is not valid. .default scope can't be combined with resource-specific scopes."
        ),
    )
}

pub fn more_than_one_resource(scope: &str) -> EntraError {
    EntraError::new(
        28000,
        format!(
            "Provided value for the input parameter scope is not valid because it contains more \
             than one resource. Scope {scope} is not valid."
        ),
    )
}

pub fn user_declined() -> EntraError {
    EntraError::new(65004, "User declined to consent to access the app.")
}

pub fn user_not_found(upn: &str, tenant: &str) -> EntraError {
    EntraError::new(
        50034,
        format!(
            "The user account {upn} does not exist in the {tenant} directory. To sign into this \
             application, the account must be added to the directory."
        ),
    )
}

pub fn user_not_in_tenant(
    upn: &str,
    home_tid: &str,
    tenant: &str,
    client_id: &str,
    app: &str,
) -> EntraError {
    EntraError::new(
        50020,
        format!(
            "User account '{upn}' from identity provider 'https://sts.windows.net/{home_tid}/' \
             does not exist in tenant '{tenant}' and cannot access the application \
             '{client_id}'({app}) in that tenant. The account needs to be added as an external \
             user in the tenant first. Sign out and sign in again with a different Azure Active \
             Directory user account."
        ),
    )
}

pub fn redirect_uri_mismatch(uri: &str, client_id: &str) -> EntraError {
    EntraError::new(
        50011,
        format!(
            "The redirect URI '{uri}' specified in the request does not match the redirect URIs \
             configured for the application '{client_id}'. Make sure the redirect URI sent in \
             the request matches one added to your application in the Azure portal. Navigate to \
             https://aka.ms/redirectUriMismatchError to learn more about how to fix this."
        ),
    )
}

pub fn login_required() -> EntraError {
    EntraError::new(
        50058,
        "A silent sign-in request was sent but no user is signed in.",
    )
}

pub fn unsupported_response_type(rt: &str) -> EntraError {
    EntraError::new(
        700054,
        format!("response_type '{rt}' is not enabled for the application."),
    )
}

/// Entra accepts `S256` and `plain`; anything else is refused.
pub fn invalid_challenge_method() -> EntraError {
    EntraError::new(
        50149,
        "Invalid Code_Challenge_method parameter. Only S256 and plain are accepted.",
    )
}

pub fn invalid_challenge_size() -> EntraError {
    EntraError::new(501491, "Invalid size of Code_Challenge parameter.")
}

pub fn invalid_response_mode(mode: &str) -> EntraError {
    EntraError::new(90023, format!("Unsupported response_mode '{mode}'."))
}

/// Body of a fault injected with `/_sim/faults` when the test asked for no specific body.
pub fn fault_error(status: StatusCode) -> EntraError {
    match status.as_u16() {
        429 => EntraError::new(
            90055,
            "There are too many incoming requests. Please try again later.",
        )
        .with_status(status),
        s if s > 500 => EntraError::new(
            90006,
            "The service is temporarily unavailable. Please try again.",
        )
        .with_status(status),
        s if s >= 500 => EntraError::new(
            50000,
            "There was an error issuing a token or an issue with our sign-in service.",
        )
        .with_status(status),
        _ => EntraError::new(9002313, "Invalid request. Request is malformed or invalid.")
            .with_status(status),
    }
}

/// Short human text for `GET /error?code=`.
pub fn known_meaning(code: u32) -> Option<&'static str> {
    Some(match code {
        700016 => {
            "UnauthorizedClient_DoesNotMatchRequest: the application was not found in the directory."
        }
        7000215 => "InvalidClientSecret: an invalid client secret was provided.",
        7000218 => {
            "InvalidClientCredential: the request must contain client_assertion or client_secret."
        }
        7000222 => "InvalidClientSecretExpiredKeysProvided: the client secret keys are expired.",
        700021 => {
            "InvalidClientAssertion: the client assertion's issuer or subject isn't the client_id."
        }
        700023 => "InvalidClientAssertionAudience: the assertion's aud isn't the token endpoint.",
        700024 => "ClientAssertionNotInValidTimeRange: the assertion is expired or not yet valid.",
        700027 => {
            "InvalidSignature: the client assertion's signature or certificate isn't valid for the app."
        }
        50013 => "InvalidAssertion: the assertion is invalid (here: its jti was already used).",
        50027 => "InvalidJwtToken: the JWT is invalid or malformed.",
        90002 => "InvalidTenantName: the tenant wasn't found.",
        70000 => "InvalidGrant: authentication failed; the grant is invalid or malformed.",
        70008 => "ExpiredOrRevokedGrant: the code or refresh token expired due to inactivity.",
        54005 => "OAuth2 authorization code was already redeemed.",
        501481 => "The Code_Verifier doesn't match the code_challenge.",
        700082 => {
            "ExpiredOrRevokedGrantInactiveToken: the refresh token expired due to inactivity (90 days)."
        }
        50173 => "FreshTokenNeeded: the grant was revoked, e.g. after a password change or reset.",
        70043 => "BadTokenDueToSignInFrequency: sign-in frequency checks by Conditional Access.",
        50076 => "UserStrongAuthClientAuthNRequired: multifactor authentication is required.",
        65001 => "DelegationDoesNotExist: the user or admin hasn't consented to the app.",
        65004 => "UserDeclinedConsent: the user declined to consent.",
        50034 => "UserAccountNotFound: the account doesn't exist in the directory.",
        50020 => "UserUnauthorized: the user is not a member of the tenant.",
        50011 => "InvalidReplyTo: the redirect URI doesn't match the app registration.",
        500112 => "The reply address at redemption doesn't match the authorize request's.",
        500011 => "InvalidResourceServicePrincipalNotFound: the resource isn't in the tenant.",
        650057 => "Invalid resource: the app registration doesn't list this resource.",
        70011 => "InvalidScope: the scope requested by the app is invalid.",
        900023 => "The tenant identifier is neither a valid DNS name nor a valid external domain.",
        28000 => "The scope parameter contains more than one resource.",
        900144 => "InvalidRequest: a required parameter is missing.",
        9002313 => "InvalidRequest: the request is malformed or invalid.",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timespan_matches_dotnet() {
        assert_eq!(timespan(90 * 86_400), "90.00:00:00");
        assert_eq!(timespan(3600), "01:00:00");
    }

    #[test]
    fn classification() {
        assert_eq!(invalid_client_secret("x").status, StatusCode::UNAUTHORIZED);
        assert_eq!(
            refresh_token_inactive(OffsetDateTime::UNIX_EPOCH).error,
            "invalid_grant"
        );
        assert_eq!(
            mfa_required("r").at_authorize().error,
            "interaction_required"
        );
        assert_eq!(mfa_required("r").error, "invalid_grant");
        assert_eq!(mfa_required("r").suberror, Some("basic_action"));
        assert_eq!(tenant_not_found("t").error, "invalid_request");
        assert_eq!(reply_address_mismatch("a", "b").error, "invalid_client");
    }
}
