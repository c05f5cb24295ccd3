//! Client authentication at the token endpoint, as Entra does it: a client secret (HTTP
//! Basic or in the body), or a certificate credential — a `client_assertion` JWT signed by a
//! key whose certificate is registered on the app (Microsoft's "certificate credentials").
//!
//! An assertion is checked in this order: well-formed (50027), the app exists (700016), its
//! `iss` and `sub` are the client id (700021), its certificate is registered on the app and
//! not expired, and the signature verifies (700027), `aud` is the token endpoint the request
//! was sent to (700023), the time window holds (700024), and its `jti` was not seen before
//! (50013: Entra documents no code for a replay).

use std::path::Path;

use anyhow::Context;
use axum::http::{HeaderMap, header};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde::Deserialize;
use time::OffsetDateTime;

use super::directory::{App, Directory};
use super::errors::{self, EntraError};
use super::{DevIdp, Params};

/// Clock skew tolerated on `nbf` and `exp`, as Entra tolerates five minutes.
const SKEW_SECS: i64 = 300;

/// A certificate uploaded to an app registration.
#[derive(Debug, Clone)]
pub struct RegisteredCertificate {
    pub thumbprint_s256: String,
    pub thumbprint_sha1: String,
    /// PKCS#1 `RSAPublicKey` DER.
    public_key: Vec<u8>,
    not_after: i64,
}

impl RegisteredCertificate {
    pub fn from_pem_file(path: &Path) -> anyhow::Result<Self> {
        let pem = std::fs::read_to_string(path)
            .with_context(|| format!("--client-cert: cannot read {}", path.display()))?;
        Self::from_pem(&pem).with_context(|| {
            format!(
                "--client-cert: {} is not a PEM RSA certificate",
                path.display()
            )
        })
    }

    /// Read as Entra reads an uploaded certificate: its thumbprints, key and expiry.
    fn from_pem(pem: &str) -> anyhow::Result<Self> {
        use sha1::Digest as _;
        use x509_cert::der::{DecodePem, Encode};
        let cert = x509_cert::Certificate::from_pem(pem.trim().as_bytes())?;
        let der = cert.to_der()?;
        let tbs = &cert.tbs_certificate;
        Ok(Self {
            thumbprint_s256: URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(&der)),
            thumbprint_sha1: URL_SAFE_NO_PAD.encode(sha1::Sha1::digest(&der)),
            public_key: tbs
                .subject_public_key_info
                .subject_public_key
                .raw_bytes()
                .to_vec(),
            not_after: tbs.validity.not_after.to_unix_duration().as_secs() as i64,
        })
    }
}

/// `client_assertion_type` of a certificate credential (RFC 7523).
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// What a token request presents to prove the client's identity.
#[derive(Debug)]
pub enum Presented {
    Secret {
        client_id: Option<String>,
        secret: String,
    },
    Assertion {
        client_id: Option<String>,
        assertion_type: Option<String>,
        jwt: String,
    },
    Nothing {
        client_id: Option<String>,
    },
}

impl Presented {
    /// The counter `/_sim/counters` keeps under `client_auth`.
    fn method(&self) -> &'static str {
        match self {
            Presented::Secret { .. } => "client_secret",
            Presented::Assertion { .. } => "client_assertion",
            Presented::Nothing { .. } => "none",
        }
    }
}

/// Reads the credential: HTTP Basic or `client_secret` in the body (RFC 6749 §2.3.1), or
/// `client_assertion` (RFC 7523 §2.2). Presenting both a secret and an assertion is refused.
pub fn presented(params: &Params, headers: &HeaderMap) -> Result<Presented, EntraError> {
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Basic ")
                .or_else(|| v.strip_prefix("basic "))
        })
        .map(|b64| {
            STANDARD
                .decode(b64.trim())
                .ok()
                .and_then(|raw| String::from_utf8(raw).ok())
                .and_then(|s| {
                    s.split_once(':')
                        .map(|(i, p)| (percent_decode(i), percent_decode(p)))
                })
                .ok_or_else(errors::malformed_request)
        })
        .transpose()?;
    let body_id = params.get("client_id").map(str::to_string);
    let assertion = params.get("client_assertion");
    if let Some((id, secret)) = basic {
        if body_id.is_some_and(|b| !b.eq_ignore_ascii_case(&id)) || assertion.is_some() {
            return Err(errors::malformed_request());
        }
        return Ok(Presented::Secret {
            client_id: Some(id),
            secret,
        });
    }
    match (params.get("client_secret"), assertion) {
        (Some(_), Some(_)) => Err(errors::malformed_request()),
        (Some(secret), None) => Ok(Presented::Secret {
            client_id: body_id,
            secret: secret.to_string(),
        }),
        (None, Some(jwt)) => Ok(Presented::Assertion {
            client_id: body_id,
            assertion_type: params.get("client_assertion_type").map(str::to_string),
            jwt: jwt.to_string(),
        }),
        (None, None) => Ok(Presented::Nothing { client_id: body_id }),
    }
}

/// Authenticates the client of a token request sent to `endpoint` (the URL an assertion must
/// be addressed to). Signature checks run without the state lock; only the `jti` is recorded
/// under it.
pub fn authenticate<'d>(
    idp: &DevIdp,
    dir: &'d Directory,
    presented: &Presented,
    directory_label: &str,
    endpoint: &str,
) -> Result<&'d App, EntraError> {
    idp.lock().count_client_auth(presented.method());
    match presented {
        Presented::Secret { client_id, secret } => {
            idp.lock()
                .authenticate_secret(dir, client_id.as_deref(), Some(secret), directory_label)
        }
        Presented::Nothing { client_id } => {
            idp.lock()
                .authenticate_secret(dir, client_id.as_deref(), None, directory_label)
        }
        Presented::Assertion {
            client_id,
            assertion_type,
            jwt,
        } => {
            if assertion_type.as_deref() != Some(JWT_BEARER) {
                return Err(errors::malformed_assertion(
                    "client_assertion_type must be urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                ));
            }
            let assertion = Assertion::parse(jwt)?;
            let client_id = client_id
                .as_deref()
                .unwrap_or(&assertion.claims.iss)
                .to_ascii_lowercase();
            let app = dir
                .app(&client_id)
                .ok_or_else(|| errors::app_not_found(&client_id, directory_label))?;
            let now = idp.now();
            assertion.verify(app, endpoint, now)?;
            idp.lock().spend_jti(
                &app.client_id,
                &assertion.claims.jti,
                assertion.claims.exp,
                now.unix_timestamp(),
            )?;
            Ok(app)
        }
    }
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(rename = "x5t#S256")]
    x5t_s256: Option<String>,
    x5t: Option<String>,
}

#[derive(Deserialize)]
struct Claims {
    aud: String,
    iss: String,
    sub: String,
    jti: String,
    exp: i64,
    nbf: Option<i64>,
}

struct Assertion<'a> {
    header: Header,
    claims: Claims,
    signing_input: &'a str,
    signature: Vec<u8>,
}

impl<'a> Assertion<'a> {
    fn parse(jwt: &'a str) -> Result<Self, EntraError> {
        let malformed = || errors::malformed_assertion("the client assertion is not a signed JWT");
        let (signing_input, signature) = jwt.rsplit_once('.').ok_or_else(malformed)?;
        let (header, claims) = signing_input.split_once('.').ok_or_else(malformed)?;
        let decode = |part: &str| URL_SAFE_NO_PAD.decode(part).map_err(|_| malformed());
        let header: Header = serde_json::from_slice(&decode(header)?).map_err(|_| {
            errors::malformed_assertion("the assertion's header needs alg and x5t#S256 or x5t")
        })?;
        let claims: Claims = serde_json::from_slice(&decode(claims)?).map_err(|_| {
            errors::malformed_assertion("the assertion needs aud, iss, sub, jti and exp")
        })?;
        Ok(Self {
            header,
            claims,
            signing_input,
            signature: decode(signature)?,
        })
    }

    fn verify(&self, app: &App, endpoint: &str, now: OffsetDateTime) -> Result<(), EntraError> {
        let claims = &self.claims;
        if !claims.iss.eq_ignore_ascii_case(&app.client_id)
            || !claims.sub.eq_ignore_ascii_case(&app.client_id)
        {
            return Err(errors::assertion_client_mismatch());
        }
        let header = &self.header;
        let thumbprint = header
            .x5t_s256
            .as_deref()
            .or(header.x5t.as_deref())
            .unwrap_or("");
        let certificate = app
            .certificates
            .iter()
            .find(|c| match (&header.x5t_s256, &header.x5t) {
                (Some(s256), _) => *s256 == c.thumbprint_s256,
                (None, Some(sha1)) => *sha1 == c.thumbprint_sha1,
                (None, None) => false,
            })
            .ok_or_else(|| errors::assertion_key_not_found(&app.client_id, thumbprint))?;
        let algorithm: &dyn aws_lc_rs::signature::VerificationAlgorithm = match header.alg.as_str()
        {
            "RS256" => &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
            "PS256" => &aws_lc_rs::signature::RSA_PSS_2048_8192_SHA256,
            _ => return Err(errors::assertion_bad_signature()),
        };
        aws_lc_rs::signature::UnparsedPublicKey::new(algorithm, &certificate.public_key)
            .verify(self.signing_input.as_bytes(), &self.signature)
            .map_err(|_| errors::assertion_bad_signature())?;
        let now_secs = now.unix_timestamp();
        if now_secs >= certificate.not_after {
            return Err(errors::assertion_key_expired(&app.client_id, thumbprint));
        }
        if claims.aud != endpoint {
            return Err(errors::assertion_bad_audience());
        }
        let nbf = claims.nbf.unwrap_or(i64::MIN);
        if nbf > now_secs + SKEW_SECS || claims.exp <= now_secs - SKEW_SECS {
            let at = |t: i64| {
                OffsetDateTime::from_unix_timestamp(t).unwrap_or(OffsetDateTime::UNIX_EPOCH)
            };
            return Err(errors::assertion_out_of_time(
                now,
                at(claims.nbf.unwrap_or(0)),
                at(claims.exp),
            ));
        }
        Ok(())
    }
}

/// `%XX` decoding for HTTP Basic credentials; `+` is left alone because many
/// clients do not form-encode them.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Some(b) = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_are_percent_decoded() {
        assert_eq!(percent_decode("a%3Ab%2B"), "a:b+");
        assert_eq!(percent_decode("plain+secret%"), "plain+secret%");
    }
}
