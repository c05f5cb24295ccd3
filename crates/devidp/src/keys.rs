//! The keys that sign tokens, and their JWKS, rolled as Entra rolls them (Microsoft's
//! "Signing key rollover"): the JWKS always lists more than one key; a regular roll signs
//! with a key that was published beforehand and keeps the previous one listed; an emergency
//! roll signs at once with a key nobody has seen and withdraws the one it replaces.
//!
//! Each key comes with a self-signed certificate, as Entra's do: `x5c` carries it and `kid`
//! and `x5t` are its SHA-1 thumbprint (base64url), so the three agree as they do at Entra.

use std::sync::{Arc, OnceLock};

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::pkcs8::DecodePrivateKey;
use rsa::traits::PublicKeyParts;
use serde_json::{Value, json};
use x509_cert::der::{DecodePem, Encode};

/// The subject of Entra's token-signing certificates.
const CERTIFICATE_NAME: &str = "accounts.accesscontrol.windows.net";
/// Entra's signing certificates are issued for about five years.
const CERTIFICATE_DAYS: i64 = 5 * 365;

pub struct SigningKey {
    pub kid: String,
    /// Parsed once, and signed with aws-lc (already linked for TLS): its assembly RSA is
    /// several times faster than the pure-Rust `rsa` crate, and signing is nearly all of a
    /// token call's CPU when benchmarks send thousands.
    signer: aws_lc_rs::signature::RsaKeyPair,
    n_b64: String,
    e_b64: String,
    certificate_b64: String,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A new RSA-2048 key and its certificate (CPU-bound: up to a second).
    pub fn generate() -> anyhow::Result<SigningKey> {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let (certificate_pem, key_pem) = samvault_devtls::self_signed(
            CERTIFICATE_NAME,
            now - 86_400,
            now + CERTIFICATE_DAYS * 86_400,
        )
        .context("generating a dev IdP signing key")?;
        let certificate = x509_cert::Certificate::from_pem(certificate_pem.as_bytes())
            .context("reading the signing certificate")?
            .to_der()
            .context("encoding the signing certificate")?;
        let key = rsa::RsaPrivateKey::from_pkcs8_pem(&key_pem)
            .context("reading the dev IdP's signing key")?;
        let der = key
            .to_pkcs1_der()
            .context("encoding the dev IdP's signing key")?;
        let signer = aws_lc_rs::signature::RsaKeyPair::from_der(der.as_bytes())
            .map_err(|e| anyhow::anyhow!("decoding the dev IdP's RSA key: {e}"))?;
        use sha1::Digest as _;
        Ok(SigningKey {
            kid: URL_SAFE_NO_PAD.encode(sha1::Sha1::digest(&certificate)),
            signer,
            n_b64: URL_SAFE_NO_PAD.encode(key.n().to_bytes_be()),
            e_b64: URL_SAFE_NO_PAD.encode(key.e().to_bytes_be()),
            certificate_b64: STANDARD.encode(&certificate),
        })
    }

    /// One JWKS entry as Entra's v2 keys document has it; v1 (`issuer` None) lists neither
    /// `issuer` nor `cloud_instance_name`. Entra's entries carry no `alg`.
    fn jwk(&self, issuer: Option<&str>) -> Value {
        let mut jwk = json!({
            "kty": "RSA",
            "use": "sig",
            "kid": self.kid,
            "x5t": self.kid,
            "n": self.n_b64,
            "e": self.e_b64,
            "x5c": [self.certificate_b64],
        });
        if let Some(issuer) = issuer {
            jwk["cloud_instance_name"] = json!("microsoftonline.com");
            jwk["issuer"] = json!(issuer);
        }
        jwk
    }

    /// An RS256 JWS (RFC 7515 compact form) with Entra's header fields.
    ///
    /// PKCS#1 v1.5 signing is deterministic. It runs without RSA blinding,
    /// which only guards against timing attacks on the private key (here a
    /// test fixture); with the key parsed once that makes signing about a
    /// third faster, which matters when `/_sim/tokens` seeds thousands.
    pub fn sign(&self, claims: &Value) -> anyhow::Result<String> {
        let header = json!({ "typ": "JWT", "alg": "RS256", "x5t": self.kid, "kid": self.kid });
        let mut jws = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header)?);
        jws.push('.');
        jws.push_str(&URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims)?));
        let mut signature = vec![0u8; self.signer.public_modulus_len()];
        self.signer
            .sign(
                &aws_lc_rs::signature::RSA_PKCS1_SHA256,
                &aws_lc_rs::rand::SystemRandom::new(),
                jws.as_bytes(),
                &mut signature,
            )
            .map_err(|e| anyhow::anyhow!("signing a dev IdP token: {e}"))?;
        jws.push('.');
        jws.push_str(&URL_SAFE_NO_PAD.encode(&signature));
        Ok(jws)
    }

    /// Whether `signature` is this key's RS256 signature of `message` (the JWS signing
    /// input): how the Partner Center stand-in knows a bearer token is one this IdP minted.
    pub fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        use aws_lc_rs::signature::{KeyPair, RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey};
        UnparsedPublicKey::new(
            &RSA_PKCS1_2048_8192_SHA256,
            self.signer.public_key().as_ref(),
        )
        .verify(message, signature)
        .is_ok()
    }
}

/// The two keys every simulator starts with (the signing one and its published successor).
/// Generating them costs up to a second each and a test binary builds dozens of
/// simulators, so one pair per process is shared; a roll generates keys of its own.
static PROCESS_KEYS: OnceLock<[Arc<SigningKey>; 2]> = OnceLock::new();

fn process_keys() -> anyhow::Result<[Arc<SigningKey>; 2]> {
    if let Some(keys) = PROCESS_KEYS.get() {
        return Ok(keys.clone());
    }
    let (first, second) = std::thread::scope(|s| {
        let other = s.spawn(SigningKey::generate);
        let first = SigningKey::generate();
        (first, other.join())
    });
    let second =
        second.map_err(|_| anyhow::anyhow!("generating a dev IdP signing key panicked"))?;
    let generated = [Arc::new(first?), Arc::new(second?)];
    Ok(PROCESS_KEYS.get_or_init(|| generated).clone())
}

/// The keys the JWKS lists, oldest first, and which one signs. Keys after it are published
/// successors, the one before it the key it replaced.
#[derive(Debug, Clone)]
pub struct KeyRing {
    keys: Vec<Arc<SigningKey>>,
    signing: usize,
}

impl KeyRing {
    /// A signing key and its already published successor.
    pub fn initial() -> anyhow::Result<KeyRing> {
        Ok(KeyRing {
            keys: process_keys()?.to_vec(),
            signing: 0,
        })
    }

    pub fn signing(&self) -> Arc<SigningKey> {
        self.keys[self.signing].clone()
    }

    /// A key the JWKS lists now, by `kid`.
    pub fn find(&self, kid: &str) -> Option<Arc<SigningKey>> {
        self.keys.iter().find(|k| k.kid == kid).cloned()
    }

    /// The keys document: v2 entries name `issuer`, v1 entries (`None`) do not.
    pub fn jwks(&self, issuer: Option<&str>) -> Value {
        let keys: Vec<Value> = self.keys.iter().map(|k| k.jwk(issuer)).collect();
        json!({ "keys": keys })
    }

    /// A regular roll: the published successor starts signing, the key it replaces stays
    /// listed (tokens it signed still validate), `fresh` is published as the next successor
    /// and anything older leaves the document.
    pub fn roll(&mut self, fresh: SigningKey) {
        self.keys.push(Arc::new(fresh));
        self.signing += 1;
        let retired = self.signing.saturating_sub(1);
        self.keys.drain(..retired);
        self.signing -= retired;
    }

    /// An emergency roll: `fresh`, never published, signs at once and the key it replaces is
    /// withdrawn, as a key believed compromised would be.
    pub fn emergency_roll(&mut self, fresh: SigningKey) {
        self.keys[self.signing] = Arc::new(fresh);
    }

    /// `/_sim/keys`: which key signs and what every listed key is.
    pub fn view(&self) -> Value {
        let keys: Vec<Value> = self
            .keys
            .iter()
            .enumerate()
            .map(|(i, key)| {
                let state = match i.cmp(&self.signing) {
                    std::cmp::Ordering::Less => "previous",
                    std::cmp::Ordering::Equal => "signing",
                    std::cmp::Ordering::Greater => "next",
                };
                json!({ "kid": key.kid, "state": state })
            })
            .collect();
        json!({ "signing_kid": self.signing().kid, "keys": keys })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kids(ring: &KeyRing) -> Vec<String> {
        ring.keys.iter().map(|k| k.kid.clone()).collect()
    }

    #[test]
    fn a_regular_roll_signs_with_a_published_key_and_keeps_the_previous_one() {
        let mut ring = KeyRing::initial().unwrap();
        let [current, next] = [kids(&ring)[0].clone(), kids(&ring)[1].clone()];
        assert_eq!(ring.signing().kid, current);
        let fresh = SigningKey::generate().unwrap();
        let fresh_kid = fresh.kid.clone();
        ring.roll(fresh);
        assert_eq!(
            ring.signing().kid,
            next,
            "the successor was published before it signs"
        );
        assert_eq!(
            kids(&ring),
            [current.clone(), next.clone(), fresh_kid.clone()]
        );
        ring.roll(SigningKey::generate().unwrap());
        assert_eq!(ring.signing().kid, fresh_kid);
        assert!(
            !kids(&ring).contains(&current),
            "two rolls later the key is gone"
        );
    }

    #[test]
    fn an_emergency_roll_withdraws_the_key_it_replaces() {
        let mut ring = KeyRing::initial().unwrap();
        let old = ring.signing().kid.clone();
        ring.emergency_roll(SigningKey::generate().unwrap());
        assert_ne!(ring.signing().kid, old);
        assert!(!kids(&ring).contains(&old));
        assert_eq!(ring.keys.len(), 2);
    }

    #[test]
    fn a_signature_verifies_with_its_key_only() {
        let ring = KeyRing::initial().unwrap();
        let jws = ring.signing().sign(&json!({ "a": 1 })).unwrap();
        let (input, signature) = jws.rsplit_once('.').unwrap();
        let signature = URL_SAFE_NO_PAD.decode(signature).unwrap();
        let key = ring.find(&ring.signing().kid).unwrap();
        assert!(key.verifies(input.as_bytes(), &signature));
        assert!(!key.verifies(b"other", &signature));
        let other = ring.keys.iter().find(|k| k.kid != key.kid).unwrap();
        assert!(!other.verifies(input.as_bytes(), &signature));
        assert!(ring.find("unknown").is_none());
    }

    #[test]
    fn kid_is_the_certificate_thumbprint() {
        use sha1::Digest as _;
        let ring = KeyRing::initial().unwrap();
        let jwks = ring.jwks(Some("https://idp/{tenantid}/v2.0"));
        for key in jwks["keys"].as_array().unwrap() {
            let der = STANDARD.decode(key["x5c"][0].as_str().unwrap()).unwrap();
            let thumbprint = URL_SAFE_NO_PAD.encode(sha1::Sha1::digest(&der));
            assert_eq!(key["kid"], thumbprint.as_str());
            assert_eq!(key["x5t"], key["kid"]);
        }
    }
}
