//! Token material: the RS256 signing key and its JWKS, JWT claims in Entra's
//! v1 (access token) and v2 (id_token) shapes, and opaque codes and refresh tokens.

use std::sync::OnceLock;

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::traits::PublicKeyParts;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use super::directory::User;

/// Lifetime of access and id tokens; Entra's `expires_in` is 3599 for a one-hour token.
pub const TOKEN_LIFETIME_SECS: i64 = 3599;

pub struct SigningKey {
    pub kid: String,
    /// Parsed once, and signed with aws-lc (already linked for TLS): its
    /// assembly RSA is several times faster than the pure-Rust `rsa` crate, and
    /// signing is nearly all of a token call's CPU when benchmarks send thousands.
    signer: aws_lc_rs::signature::RsaKeyPair,
    n_b64: String,
    e_b64: String,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// (PKCS#1 DER, n, e): 2048-bit generation costs up to a second, and a test
/// binary builds dozens of simulators, so one key per process is shared.
static PROCESS_KEY: OnceLock<(Vec<u8>, Vec<u8>, Vec<u8>)> = OnceLock::new();

impl SigningKey {
    pub fn generate() -> anyhow::Result<SigningKey> {
        let (der, n, e) = match PROCESS_KEY.get() {
            Some(k) => k.clone(),
            None => {
                let key = rsa::RsaPrivateKey::new(&mut rand08::rngs::OsRng, 2048)
                    .context("generating the dev IdP's RSA key")?;
                let der = key
                    .to_pkcs1_der()
                    .context("encoding the dev IdP's RSA key")?
                    .as_bytes()
                    .to_vec();
                let generated = (der, key.n().to_bytes_be(), key.e().to_bytes_be());
                PROCESS_KEY.get_or_init(|| generated).clone()
            }
        };
        // Entra's kid equals the certificate's x5t (27 base64url chars); a digest of the
        // public key gives the same shape and changes whenever the key does.
        let mut hasher = Sha256::new();
        hasher.update(&n);
        hasher.update(&e);
        let kid = URL_SAFE_NO_PAD.encode(&hasher.finalize()[..20]);
        let signer = aws_lc_rs::signature::RsaKeyPair::from_der(&der)
            .map_err(|e| anyhow::anyhow!("decoding the dev IdP's RSA key: {e}"))?;
        Ok(SigningKey {
            kid,
            signer,
            n_b64: URL_SAFE_NO_PAD.encode(&n),
            e_b64: URL_SAFE_NO_PAD.encode(&e),
        })
    }

    /// Entra's JWKS entries carry no `alg`; clients must not rely on it.
    pub fn jwks(&self, issuer: &str) -> Value {
        json!({
            "keys": [{
                "kty": "RSA",
                "use": "sig",
                "kid": self.kid,
                "x5t": self.kid,
                "n": self.n_b64,
                "e": self.e_b64,
                "issuer": issuer,
            }]
        })
    }

    /// An RS256 JWS (RFC 7515 compact form) with Entra's header fields.
    ///
    /// PKCS#1 v1.5 signing is deterministic. It runs without RSA blinding,
    /// which only guards against timing attacks on the private key (here a
    /// test fixture); with the key parsed once that makes signing about a
    /// third faster, which matters when `/_sim/tokens` seeds thousands.
    pub fn sign(&self, claims: &Value) -> anyhow::Result<String> {
        let header = json!({ "typ": "JWT", "alg": "RS256", "kid": self.kid, "x5t": self.kid });
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
}

fn random_b64(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    URL_SAFE_NO_PAD.encode(buf)
}

/// An opaque refresh token shaped like Entra's (`0.A` + ~340 base64url chars).
pub fn new_refresh_token() -> String {
    format!("0.A{}", random_b64(256))
}

/// An authorization code shaped like Entra's (`1.A` + base64url).
pub fn new_code() -> String {
    format!("1.A{}", random_b64(160))
}

/// Entra's `sub` is pairwise: stable per user and app, different across apps.
fn pairwise_sub(oid: &str, client_id: &str) -> String {
    let digest = Sha256::digest(format!("{oid}|{client_id}").as_bytes());
    URL_SAFE_NO_PAD.encode(digest)
}

/// Everything a minted token needs; built under the state lock, signed after it.
#[derive(Debug, Clone)]
pub struct Subject {
    pub user: User,
    pub client_id: String,
    pub amr: Vec<String>,
    pub global_admin: bool,
}

/// A v1-format access token, like Partner Center's (see seed 002): `amr` and
/// `scp` present, `iss` sts-style (`{base}/{tid}/`).
pub fn access_token_claims(
    base: &str,
    subject: &Subject,
    resource: &str,
    scp: &str,
    now: OffsetDateTime,
) -> Value {
    let iat = now.unix_timestamp();
    let user = &subject.user;
    let (given, family) = match user.name.split_once(' ') {
        Some((g, f)) => (g.to_string(), f.to_string()),
        None => (user.name.clone(), String::new()),
    };
    let mut claims = json!({
        "aud": resource,
        "iss": format!("{base}/{}/", user.tenant_id),
        "iat": iat,
        "nbf": iat,
        "exp": iat + TOKEN_LIFETIME_SECS,
        "acr": "1",
        "amr": subject.amr,
        "appid": subject.client_id,
        "appidacr": "1",
        "family_name": family,
        "given_name": given,
        "ipaddr": "127.0.0.1",
        "name": user.name,
        "oid": user.oid,
        "scp": scp,
        "sub": pairwise_sub(&user.oid, &subject.client_id),
        "tid": user.tenant_id,
        "unique_name": user.upn,
        "upn": user.upn,
        "uti": random_b64(16),
        "ver": "1.0",
    });
    add_directory_roles(&mut claims, subject);
    claims
}

/// Global Administrator's role template id, as Entra lists it in `wids`.
const GLOBAL_ADMINISTRATOR: &str = "62e90394-69f5-4237-9190-012177145e10";

/// `wids`: the user's directory roles. Entra puts it in access tokens, and in id_tokens when
/// the app registration's `groupMembershipClaims` includes `DirectoryRole`, as the demo
/// app's does. Partner Center roles (Admin Agent, Sales Agent) are group memberships, not
/// directory roles, so they never appear here.
fn add_directory_roles(claims: &mut Value, subject: &Subject) {
    if subject.global_admin {
        claims["wids"] = json!([GLOBAL_ADMINISTRATOR]);
    }
}

/// A v2 id_token (`iss` `{base}/{tid}/v2.0`, `aud` = client id; v2 carries no `amr`).
pub fn id_token_claims(
    base: &str,
    subject: &Subject,
    nonce: Option<&str>,
    with_email: bool,
    now: OffsetDateTime,
) -> Value {
    let iat = now.unix_timestamp();
    let user = &subject.user;
    let mut claims = json!({
        "aud": subject.client_id,
        "iss": format!("{base}/{}/v2.0", user.tenant_id),
        "iat": iat,
        "nbf": iat,
        "exp": iat + TOKEN_LIFETIME_SECS + 1,
        "name": user.name,
        "oid": user.oid,
        "preferred_username": user.upn,
        "sub": pairwise_sub(&user.oid, &subject.client_id),
        "tid": user.tenant_id,
        "uti": random_b64(16),
        "ver": "2.0",
    });
    if let Some(nonce) = nonce {
        claims["nonce"] = json!(nonce);
    }
    if with_email {
        claims["email"] = json!(user.upn);
    }
    add_directory_roles(&mut claims, subject);
    claims
}

/// A v1 id_token, returned by the v1 endpoint (`iss` sts-style, `upn`, `amr`).
pub fn id_token_v1_claims(
    base: &str,
    subject: &Subject,
    nonce: Option<&str>,
    now: OffsetDateTime,
) -> Value {
    let iat = now.unix_timestamp();
    let user = &subject.user;
    let mut claims = json!({
        "aud": subject.client_id,
        "iss": format!("{base}/{}/", user.tenant_id),
        "iat": iat,
        "nbf": iat,
        "exp": iat + TOKEN_LIFETIME_SECS + 1,
        "amr": subject.amr,
        "name": user.name,
        "oid": user.oid,
        "sub": pairwise_sub(&user.oid, &subject.client_id),
        "tid": user.tenant_id,
        "unique_name": user.upn,
        "upn": user.upn,
        "ver": "1.0",
    });
    if let Some(nonce) = nonce {
        claims["nonce"] = json!(nonce);
    }
    add_directory_roles(&mut claims, subject);
    claims
}

/// PKCE S256: BASE64URL(SHA256(verifier)) == challenge.
pub fn pkce_s256(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opaque_shapes() {
        let rt = new_refresh_token();
        assert!(rt.starts_with("0.A") && rt.len() > 300);
        assert!(new_code().starts_with("1.A"));
        assert_ne!(new_refresh_token(), rt);
    }

    fn subject(role: &str) -> Subject {
        Subject {
            user: User {
                upn: "grace@contoso.example".into(),
                name: "Grace Hopper".into(),
                role: role.into(),
                oid: "00000000-0000-0000-0000-00000000000a".into(),
                tenant_id: "6f3a2a5e-0c1d-4a3b-8f4e-1c2d3e4f5a01".into(),
            },
            client_id: "app".into(),
            amr: vec!["pwd".into(), "mfa".into()],
            global_admin: role == "Global Admin",
        }
    }

    #[test]
    fn directory_roles_are_in_every_token_of_a_global_admin_only() {
        let now = OffsetDateTime::now_utc();
        let admin = subject("Global Admin");
        for claims in [
            id_token_claims("http://idp", &admin, Some("n"), false, now),
            id_token_v1_claims("http://idp", &admin, None, now),
            access_token_claims(
                "http://idp",
                &admin,
                "https://graph.microsoft.com",
                "openid",
                now,
            ),
        ] {
            assert_eq!(claims["wids"], json!([GLOBAL_ADMINISTRATOR]), "{claims}");
        }
        let agent = subject("Admin Agent");
        let claims = id_token_claims("http://idp", &agent, Some("n"), false, now);
        assert!(claims.get("wids").is_none(), "{claims}");
    }

    #[test]
    fn pkce_rfc7636_vector() {
        assert_eq!(
            pkce_s256("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }
}
