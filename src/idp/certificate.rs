//! The CPV app's certificate credential, as Microsoft's "certificate credentials" document
//! describes it: a PEM X.509 certificate registered on the app, its RSA private key here, and
//! for every token request a fresh client assertion — an RS256 JWT naming the certificate by
//! its SHA-256 thumbprint (`x5t#S256`), addressed to the token endpoint it is sent to.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use x509_cert::der::{Decode, DecodePem, Encode};
use zeroize::Zeroizing;

use crate::config::ConfigError;

/// `client_assertion_type` of a JWT client assertion (RFC 7523 §2.2).
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// How long an assertion is valid. Microsoft advises 5 to 10 minutes after `nbf`; one minute
/// below the upper bound leaves room for a clock running slightly ahead of Entra's.
pub const ASSERTION_LIFETIME_SECS: i64 = 9 * 60;

/// What samvault and the dev IdP read from an X.509 certificate.
#[derive(Clone, Debug)]
pub struct CertificateInfo {
    /// The certificate's DER encoding (what thumbprints are computed over).
    pub der: Vec<u8>,
    /// The subject public key: for RSA, the PKCS#1 `RSAPublicKey` DER.
    pub public_key: Vec<u8>,
    /// Validity, Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
}

impl CertificateInfo {
    /// Parses the first certificate of a PEM file.
    pub fn from_pem(pem: &str) -> Result<Self, String> {
        let cert = x509_cert::Certificate::from_pem(pem.trim().as_bytes())
            .map_err(|_| "is not a PEM X.509 certificate".to_string())?;
        let der = cert
            .to_der()
            .map_err(|_| "is not a DER-encodable certificate".to_string())?;
        Self::from_der(&der)
    }

    pub fn from_der(der: &[u8]) -> Result<Self, String> {
        let cert = x509_cert::Certificate::from_der(der)
            .map_err(|_| "is not an X.509 certificate".to_string())?;
        let tbs = &cert.tbs_certificate;
        let spki = &tbs.subject_public_key_info;
        if spki.algorithm.oid != RSA_ENCRYPTION {
            return Err("does not hold an RSA public key".into());
        }
        let seconds = |t: &x509_cert::time::Time| t.to_unix_duration().as_secs() as i64;
        Ok(Self {
            der: der.to_vec(),
            public_key: spki.subject_public_key.raw_bytes().to_vec(),
            not_before: seconds(&tbs.validity.not_before),
            not_after: seconds(&tbs.validity.not_after),
        })
    }

    /// `x5t#S256`: base64url SHA-256 of the DER certificate.
    pub fn thumbprint_s256(&self) -> String {
        URL_SAFE_NO_PAD.encode(Sha256::digest(&self.der))
    }

    /// `x5t`: base64url SHA-1 of the DER certificate (what older Entra clients send).
    pub fn thumbprint_sha1(&self) -> String {
        use sha1::Digest as _;
        URL_SAFE_NO_PAD.encode(sha1::Sha1::digest(&self.der))
    }
}

const RSA_ENCRYPTION: x509_cert::spki::ObjectIdentifier =
    x509_cert::spki::ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");

/// An RSA private key from PEM: PKCS#8 (`PRIVATE KEY`) or PKCS#1 (`RSA PRIVATE KEY`).
pub fn rsa_key_from_pem(pem: &str) -> Result<aws_lc_rs::signature::RsaKeyPair, String> {
    let not_a_key = || "is not a PEM RSA private key (PKCS#8)".to_string();
    let (label, der) =
        x509_cert::der::pem::decode_vec(pem.trim().as_bytes()).map_err(|_| not_a_key())?;
    let der = Zeroizing::new(der);
    let key = match label {
        "PRIVATE KEY" => aws_lc_rs::signature::RsaKeyPair::from_pkcs8(&der),
        "RSA PRIVATE KEY" => aws_lc_rs::signature::RsaKeyPair::from_der(&der),
        _ => return Err(not_a_key()),
    };
    key.map_err(|_| not_a_key())
}

/// The loaded credential: the certificate's thumbprints and the key that signs assertions.
pub struct ClientCertificate {
    info: CertificateInfo,
    thumbprint_s256: String,
    thumbprint_sha1: String,
    key: aws_lc_rs::signature::RsaKeyPair,
}

impl std::fmt::Debug for ClientCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCertificate")
            .field("x5t#S256", &self.thumbprint_s256)
            .field("not_after", &self.info.not_after)
            .finish_non_exhaustive()
    }
}

impl ClientCertificate {
    /// Loads `SAMVAULT_CLIENT_CERT` (a file) and `SAMVAULT_CLIENT_KEY` (PEM text) and checks that
    /// they belong together and that the certificate is valid at `now`. Errors name the setting
    /// and never quote the key.
    pub fn load(cert_path: &Path, key_pem: &SecretString, now: i64) -> Result<Self, ConfigError> {
        let bad_cert = |why: String| {
            ConfigError(format!(
                "SAMVAULT_CLIENT_CERT: {} {why}",
                cert_path.display()
            ))
        };
        let pem = std::fs::read_to_string(cert_path)
            .map_err(|e| bad_cert(format!("cannot be read ({e})")))?;
        let info = CertificateInfo::from_pem(&pem).map_err(bad_cert)?;
        let key = rsa_key_from_pem(key_pem.expose_secret())
            .map_err(|why| ConfigError(format!("SAMVAULT_CLIENT_KEY: {why}")))?;
        let certificate = Self::new(info, key)?;
        let info = &certificate.info;
        if now >= info.not_after {
            return Err(bad_cert(format!("expired on {}", date(info.not_after))));
        }
        if now < info.not_before {
            return Err(bad_cert(format!(
                "is not valid before {}",
                date(info.not_before)
            )));
        }
        Ok(certificate)
    }

    /// Pairs a certificate with its key; refuses a key that is not the certificate's.
    pub fn new(
        info: CertificateInfo,
        key: aws_lc_rs::signature::RsaKeyPair,
    ) -> Result<Self, ConfigError> {
        use aws_lc_rs::signature::KeyPair;
        if key.public_key().as_ref() != info.public_key.as_slice() {
            return Err(ConfigError(
                "SAMVAULT_CLIENT_KEY: is not the private key of the certificate in SAMVAULT_CLIENT_CERT"
                    .into(),
            ));
        }
        Ok(Self {
            thumbprint_s256: info.thumbprint_s256(),
            thumbprint_sha1: info.thumbprint_sha1(),
            info,
            key,
        })
    }

    pub fn thumbprint_s256(&self) -> &str {
        &self.thumbprint_s256
    }

    /// When the certificate expires (Unix seconds).
    pub fn not_after(&self) -> i64 {
        self.info.not_after
    }

    /// A client assertion for one token request to `audience` (that request's token
    /// endpoint URL): `iss` = `sub` = the client id, a fresh `jti`, valid from `now` for
    /// [`ASSERTION_LIFETIME_SECS`].
    pub fn assertion(&self, client_id: &str, audience: &str, now: i64) -> String {
        let claims = json!({
            "aud": audience,
            "iss": client_id,
            "sub": client_id,
            "jti": uuid::Uuid::new_v4().to_string(),
            "nbf": now,
            "iat": now,
            "exp": now + ASSERTION_LIFETIME_SECS,
        });
        self.sign(&self.header(), &claims)
    }

    /// The JOSE header naming this certificate: SHA-256 thumbprint, and the SHA-1 one that
    /// clouds not yet reading `x5t#S256` match on.
    pub fn header(&self) -> Value {
        json!({
            "alg": "RS256",
            "typ": "JWT",
            "x5t#S256": self.thumbprint_s256,
            "x5t": self.thumbprint_sha1,
        })
    }

    /// An RS256 JWS of `claims` under `header` (tests use it to forge bad assertions).
    pub fn sign(&self, header: &Value, claims: &Value) -> String {
        sign_rs256(&self.key, header, claims)
    }
}

/// RS256 compact JWS (RFC 7515) with an RSA key.
pub fn sign_rs256(
    key: &aws_lc_rs::signature::RsaKeyPair,
    header: &Value,
    claims: &Value,
) -> String {
    let mut jws = URL_SAFE_NO_PAD.encode(header.to_string());
    jws.push('.');
    jws.push_str(&URL_SAFE_NO_PAD.encode(claims.to_string()));
    let mut signature = vec![0u8; key.public_modulus_len()];
    key.sign(
        &aws_lc_rs::signature::RSA_PKCS1_SHA256,
        &aws_lc_rs::rand::SystemRandom::new(),
        jws.as_bytes(),
        &mut signature,
    )
    .expect("RSA signing with a parsed key and a sized buffer does not fail");
    jws.push('.');
    jws.push_str(&URL_SAFE_NO_PAD.encode(&signature));
    jws
}

/// `YYYY-MM-DD` of a Unix time, for messages.
pub fn date(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .map(|t| t.date().to_string())
        .unwrap_or_else(|_| unix.to_string())
}
