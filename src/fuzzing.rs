//! What the fuzz targets in `fuzz/` call (not an API). Each function feeds untrusted bytes to
//! one of samvault's parsers and panics when a promise the parser makes is broken, so the
//! fuzzer reports a broken promise as a crash. The unit tests below replay realistic inputs and
//! every input the fuzzer ever broke a promise with.

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker};

use axum::response::IntoResponse;
use jsonwebtoken::DecodingKey;
use secrecy::ExposeSecret;
use url::Url;

use crate::domain::Resource;
use crate::http::api::parse_token_request;
use crate::http::onboard::{CallbackParams, Purpose, idp_error_page};
use crate::idp::AccessClaims;
use crate::idp::errors::{EntraErrorBody, IdpError, Outcome, parse_retry_after};
use crate::idp::jwks::{IdClaims, check_claims, key_id, verify};
use crate::vault::{
    BoxFuture, DataKey, KeyProvider, Sealed, SealedRecord, Vault, VaultError, WrappedKey,
};

const AUTHORITY: &str = "https://login.microsoftonline.com";
const CLIENT_ID: &str = "5a7e3c1d-0000-4000-8000-00000000c0de";
const NONCE: &str = "fuzz-nonce";

/// Runs a future that never waits (every future here only wraps synchronous work).
fn ready<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("a synchronous future was pending"),
    }
}

/// The onboarding callback's query (or form): an `error=` from the IdP becomes a 4xx page
/// that shows nothing of the callback beyond a known error name and an AADSTS number, so
/// markup characters anywhere in it never change the page.
pub fn callback_query(data: &[u8]) {
    let Some(params) = CallbackParams::parse(data) else {
        return;
    };
    let Some(error) = params.error.as_deref() else {
        return;
    };
    let description = params.error_description.as_deref();
    let (status, page) = error_page(error, description);
    assert!(
        matches!(status, 400 | 403),
        "the callback's error page answered {status}"
    );
    let defused = |text: &str| text.replace(['<', '>', '"', '\'', '&'], " ");
    let (_, plain_page) = error_page(&defused(error), description.map(defused).as_deref());
    assert!(
        page == plain_page,
        "markup in the callback changed the page: error {error:?}, description {description:?}"
    );
}

fn error_page(error: &str, description: Option<&str>) -> (u16, String) {
    let response = idp_error_page(Purpose::Consent, error, description).into_response();
    let status = response.status().as_u16();
    let body = ready(axum::body::to_bytes(response.into_body(), usize::MAX))
        .expect("a rendered page is in memory");
    (
        status,
        String::from_utf8(body.to_vec()).expect("pages are UTF-8"),
    )
}

/// The resources a default configuration serves (REFERENCE §3.4).
fn served() -> &'static [Resource] {
    static SERVED: OnceLock<Vec<Resource>> = OnceLock::new();
    SERVED.get_or_init(|| {
        [
            "https://api.partnercenter.microsoft.com",
            "https://graph.microsoft.com",
            "https://management.azure.com",
        ]
        .iter()
        .map(|r| Resource::parse(r).expect("a valid resource"))
        .collect()
    })
}

/// Error details of canned bad bodies: text samvault writes itself.
fn own_details() -> &'static [String] {
    static DETAILS: OnceLock<Vec<String>> = OnceLock::new();
    DETAILS.get_or_init(|| {
        let long = format!(
            r#"{{"resource":"https://graph.microsoft.com","purpose":"{}"}}"#,
            "x".repeat(201)
        );
        let canned: [&[u8]; 11] = [
            b"",
            b"{}",
            b"[]",
            br#"{"resource":1}"#,
            br#"{"resource":"a","resource":"b"}"#,
            br#"{"other":1}"#,
            br#"{"resource":"https://graph.microsoft.com"}"#,
            br#"{"resource":"https://graph.microsoft.com","purpose":"\u0001"}"#,
            br#"{"resource":"https://example.com","purpose":"p"}"#,
            br#"{"resource":"ftp://x","purpose":"p"}"#,
            long.as_bytes(),
        ];
        canned
            .iter()
            .filter_map(|body| parse_token_request(body, served()).err())
            .map(|problem| problem.detail)
            .collect()
    })
}

/// The token API's body: accepted only with a served resource and a 1–200 character
/// purpose; refused with 400 `invalid_request` whose detail echoes nothing of the body (a
/// secret pasted into the wrong field must not come back in an error).
pub fn token_request(data: &[u8]) {
    match parse_token_request(data, served()) {
        Ok((resource, purpose)) => {
            assert!(served().contains(&resource), "{resource} is not served");
            let chars = purpose.as_str().chars().count();
            assert!((1..=200).contains(&chars), "purpose of {chars} characters");
            assert!(!purpose.as_str().chars().any(char::is_control));
        }
        Err(problem) => {
            assert_eq!(problem.status_code, 400);
            assert_eq!(problem.code, "invalid_request");
            for window in data.windows(8) {
                let Ok(text) = std::str::from_utf8(window) else {
                    continue;
                };
                assert!(
                    !problem.detail.contains(text)
                        || own_details().iter().any(|own| own.contains(text)),
                    "the error detail {:?} echoes the body ({text:?})",
                    problem.detail
                );
            }
        }
    }
}

/// Entra's error body and its classification: a partner is sent to re-consent only for
/// Entra's grant errors, and the app's own credential errors never demote anyone.
pub fn entra_error(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = parse_retry_after(Some(text));
    }
    let Some(body) = EntraErrorBody::parse(data) else {
        return;
    };
    assert!(!body.error.is_empty());
    assert!(body.to_string().starts_with(body.error.as_str()));
    let code = body.code();
    if let Some(&first) = body.error_codes.first() {
        assert_eq!(code, Some(first));
    }
    let grant_error = matches!(
        body.error.as_str(),
        "invalid_grant" | "interaction_required" | "consent_required"
    );
    let app_error = body.error == "unauthorized_client" || body.blames_credential();
    for status in [400, 401, 429, 500, 503] {
        for primary in [true, false] {
            let error = IdpError::Entra {
                status,
                body: Box::new(body.clone()),
                retry_after: None,
            };
            let outcome = error.classify(primary);
            if matches!(outcome, Outcome::ReconsentRequired { .. }) {
                assert!(grant_error, "{} demotes a partner", body.error);
            }
            if app_error && code != Some(50196) {
                assert!(
                    matches!(outcome, Outcome::AppCredentialsInvalid { .. }),
                    "{} is not the app-credentials alarm: {outcome:?}",
                    body.error
                );
            }
            if code == Some(50196) {
                assert!(matches!(outcome, Outcome::Transient { .. }));
            }
        }
    }
}

/// An RSA key standing in for the IdP's signing key: tokens signed with it are what a
/// validator holding its public half must accept.
struct SigningKey(aws_lc_rs::signature::RsaKeyPair);

impl SigningKey {
    /// An RS256 JWS with the header Entra sends.
    fn sign(&self, claims: &serde_json::Value) -> Result<String, aws_lc_rs::error::Unspecified> {
        use base64::Engine;
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header = serde_json::json!({ "typ": "JWT", "alg": "RS256", "kid": KID, "x5t": KID });
        let mut jws = URL_SAFE_NO_PAD.encode(header.to_string());
        jws.push('.');
        jws.push_str(&URL_SAFE_NO_PAD.encode(claims.to_string()));
        let mut signature = vec![0u8; self.0.public_modulus_len()];
        self.0.sign(
            &aws_lc_rs::signature::RSA_PKCS1_SHA256,
            &aws_lc_rs::rand::SystemRandom::new(),
            jws.as_bytes(),
            &mut signature,
        )?;
        jws.push('.');
        jws.push_str(&URL_SAFE_NO_PAD.encode(signature));
        Ok(jws)
    }
}

const KID: &str = "fuzzing-key";

/// The issuer's key (one per process) and the same key as a validator sees it.
fn signing_key() -> &'static (SigningKey, DecodingKey) {
    static KEY: OnceLock<(SigningKey, DecodingKey)> = OnceLock::new();
    KEY.get_or_init(|| {
        use aws_lc_rs::signature::KeyPair as _;
        let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
            .expect("an RSA key");
        let decoding = DecodingKey::from_rsa_der(pair.public_key().as_ref());
        (SigningKey(pair), decoding)
    })
}

fn authority() -> Url {
    Url::parse(AUTHORITY).expect("a URL")
}

/// Untrusted id_token bytes through the whole validation: nothing the fuzzer makes can pass
/// (it cannot sign with the IdP's key), and nothing makes it panic. Access tokens' claims,
/// read without validation, are parsed from the same bytes.
pub fn id_token(data: &[u8]) {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let _ = AccessClaims::peek(token).map(|claims| claims.mfa());
    let (_, key) = signing_key();
    let accepted = key_id(token)
        .and_then(|_| verify(token, key, &authority(), CLIENT_ID, NONCE))
        .is_ok();
    assert!(
        !accepted || signed_here(token),
        "an id_token not signed by the IdP was accepted"
    );
}

/// Whether `token` is exactly what the IdP's key signs for its header and claims.
fn signed_here(token: &str) -> bool {
    use base64::Engine;
    let (signing_key, _) = signing_key();
    let Some(payload) = token.split('.').nth(1) else {
        return false;
    };
    let Ok(claims) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload) else {
        return false;
    };
    let Ok(claims) = serde_json::from_slice(&claims) else {
        return false;
    };
    signing_key
        .sign(&claims)
        .is_ok_and(|signed| signed == token)
}

/// The claims step of id_token validation on its own (the fuzzer cannot get past the
/// signature): any claims JSON either fails, or names this sign-in's nonce and an issuer
/// that is the authority's endpoint for the token's own tenant.
pub fn id_claims(data: &[u8]) {
    let Ok(claims) = serde_json::from_slice::<IdClaims>(data) else {
        return;
    };
    if let Ok(claims) = check_claims(claims, &authority(), NONCE) {
        assert_eq!(claims.iss, format!("{AUTHORITY}/{}/v2.0", claims.tid));
        assert_eq!(claims.nonce.as_deref(), Some(NONCE));
    }
}

/// A key provider whose every data key is one fixed key: the fuzzer attacks the record
/// format and AES-GCM's integrity, not key wrapping.
struct FixedKey;

const FIXED_KEY: [u8; 32] = *b"samvault-fuzzing-fixed-data-key!";
const RECORD_CONTEXT: &str = "samvault:refresh-token:6f3a2a5e-0c1d-4a3b-8f4e-1c2d3e4f5a01:v1";
/// What the seed record holds; no other plaintext can come out of a record.
const SEED_PLAINTEXT: &[u8] = b"0.A-fuzz-seed-refresh-token";

impl KeyProvider for FixedKey {
    fn describe(&self) -> String {
        "fixed fuzzing key".into()
    }
    fn kind(&self) -> &'static str {
        "fixed key"
    }
    fn current_kek_id(&self) -> String {
        "fixed".into()
    }
    fn owns(&self, kek_id: &str) -> bool {
        kek_id == "fixed"
    }
    fn wrap<'a>(&'a self, _: &'a DataKey) -> BoxFuture<'a, Result<WrappedKey, VaultError>> {
        Box::pin(async { Err(VaultError::Config("the fuzzing key only opens".into())) })
    }
    fn unwrap<'a>(&'a self, _: &'a WrappedKey) -> BoxFuture<'a, Result<DataKey, VaultError>> {
        Box::pin(async { DataKey::from_bytes(&FIXED_KEY) })
    }
    fn check(&self) -> BoxFuture<'_, Result<(), VaultError>> {
        Box::pin(async { Ok(()) })
    }
    fn create_kek(&self) -> BoxFuture<'_, Result<String, VaultError>> {
        Box::pin(async { Err(VaultError::Config("the fuzzing key never rotates".into())) })
    }
    fn refresh(&self) -> BoxFuture<'_, Result<bool, VaultError>> {
        Box::pin(async { Ok(false) })
    }
    fn refresh_interval(&self) -> std::time::Duration {
        std::time::Duration::from_secs(3600)
    }
    fn retire<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<bool, VaultError>> {
        Box::pin(async { Ok(false) })
    }
}

fn fixed_vault() -> Vault {
    Vault::new(Arc::new(FixedKey))
}

/// A sealed record as read back from the database: decoded only when well-formed, and
/// opened only when it is, byte for byte, a record sealed under the key and context.
pub fn sealed_record(data: &[u8]) {
    let Ok(record) = SealedRecord::decode(data.to_vec()) else {
        return;
    };
    assert!(record.as_bytes().starts_with(b"SV1") && record.as_bytes().len() >= 3 + 12 + 16);
    let sealed = Sealed {
        wrapped_key: WrappedKey {
            kek_id: "fixed".into(),
            bytes: vec![],
        },
        record,
    };
    if let Ok(plain) = ready(fixed_vault().open(&sealed, RECORD_CONTEXT)) {
        assert_eq!(
            plain.expose_secret().as_slice(),
            SEED_PLAINTEXT,
            "a forged record opened"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record sealed under the fixed key (a seed for the sealed-record target), built from the
    /// documented format rather than by the vault: `"SV1" || nonce || AES-256-GCM(plaintext)`.
    fn seed_record() -> Vec<u8> {
        use aes_gcm::aead::{Aead, KeyInit, Payload};
        let nonce = [7u8; 12];
        let ciphertext = aes_gcm::Aes256Gcm::new(&FIXED_KEY.into())
            .encrypt(
                &nonce.into(),
                Payload {
                    msg: SEED_PLAINTEXT,
                    aad: RECORD_CONTEXT.as_bytes(),
                },
            )
            .expect("sealing in memory");
        [b"SV1".as_slice(), &nonce, &ciphertext].concat()
    }

    /// A valid id_token for the fuzzing key, authority and nonce (a seed for the id_token target).
    fn seed_id_token() -> String {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let tid = "6f3a2a5e-0c1d-4a3b-8f4e-1c2d3e4f5a01";
        let claims = serde_json::json!({
            "aud": CLIENT_ID, "iss": format!("{AUTHORITY}/{tid}/v2.0"), "tid": tid,
            "iat": now, "nbf": now, "exp": now + 3600, "nonce": NONCE,
            "preferred_username": "jane@contoso.example", "ver": "2.0",
        });
        signing_key().0.sign(&claims).expect("signing")
    }

    #[test]
    fn realistic_inputs_keep_every_promise() {
        callback_query(b"code=1.AbC&state=xyz&session_state=s");
        callback_query(b"error=access_denied&error_description=AADSTS65004%3A+User+declined");
        callback_query(b"error=interaction_required&error_description=AADSTS50076%3A+MFA");
        callback_query(b"error=%3Cscript%3E&error_description=%3Cimg+src%3Dx%3E");
        token_request(
            br#"{"resource":"https://api.partnercenter.microsoft.com","purpose":"nightly sync"}"#,
        );
        token_request(br#"{"resource":"https://graph.microsoft.com/","purpose":" x "}"#);
        entra_error(
            br#"{"error":"invalid_grant","error_description":"AADSTS700082: expired","error_codes":[700082]}"#,
        );
        entra_error(br#"{"error":"invalid_client","error_codes":[50196]}"#);
        id_claims(
            br#"{"iss":"https://login.microsoftonline.com/t/v2.0","tid":"t","nonce":"fuzz-nonce"}"#,
        );
        sealed_record(&seed_record());
    }

    /// Found by the token_request target: serde's "unknown field `…`" named the caller's key,
    /// and its type errors quote the caller's value.
    #[test]
    fn token_request_errors_never_echo_the_body() {
        token_request(
            br#"{"resource":"https://graph.microsm/","purposoft.com/","purpose":"  user sync  "}"#,
        );
        token_request(
            br#"{"resource":"https://graph.microsoft.com","client_secret":"s3cr3t-value"}"#,
        );
        token_request(br#"{"resource":12345678901,"purpose":"x"}"#);
    }

    #[test]
    fn a_token_signed_by_the_idp_passes_and_a_forgery_does_not() {
        let token = seed_id_token();
        let (_, key) = signing_key();
        assert!(verify(&token, key, &authority(), CLIENT_ID, NONCE).is_ok());
        id_token(token.as_bytes());
        let mut forged = token.into_bytes();
        let at = forged.len() - 5;
        forged[at] = if forged[at] == b'A' { b'B' } else { b'A' };
        let forged = String::from_utf8(forged).unwrap();
        assert!(verify(&forged, key, &authority(), CLIENT_ID, NONCE).is_err());
        id_token(forged.as_bytes());
    }

    #[test]
    fn the_seed_record_opens_and_a_flipped_bit_does_not() {
        let record = seed_record();
        let sealed = |bytes: Vec<u8>| Sealed {
            wrapped_key: WrappedKey {
                kek_id: "fixed".into(),
                bytes: vec![],
            },
            record: SealedRecord::decode(bytes).unwrap(),
        };
        assert_eq!(
            record,
            include_bytes!("../fuzz/corpus/sealed_record/seed-1"),
            "the committed seed is this record"
        );
        let opened = ready(fixed_vault().open(&sealed(record.clone()), RECORD_CONTEXT)).unwrap();
        assert_eq!(opened.expose_secret().as_slice(), SEED_PLAINTEXT);
        let mut flipped = record;
        flipped[20] ^= 1;
        assert!(ready(fixed_vault().open(&sealed(flipped), RECORD_CONTEXT)).is_err());
    }
}
