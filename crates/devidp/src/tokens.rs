//! Token material: JWT claims in Entra's v1 (access token) and v2 (id_token) shapes, and
//! opaque codes and refresh tokens. The keys that sign them are in `keys`.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use super::directory::User;

/// Lifetime of access and id tokens; Entra's `expires_in` is 3599 for a one-hour token.
pub const TOKEN_LIFETIME_SECS: i64 = 3599;

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
    /// The tenant the token is issued in when it is not the user's own: a customer tenant
    /// the user's partner administers (the partner's RT redeemed at the customer authority).
    pub issued_in: Option<String>,
}

impl Subject {
    /// `tid` of the tokens: where they were issued.
    fn tenant(&self) -> &str {
        self.issued_in.as_deref().unwrap_or(&self.user.tenant_id)
    }

    /// A user of another tenant is named by its identity provider, the home tenant's
    /// issuer, as Entra's `idp` claim does for guests and partner users.
    fn add_foreign_idp(&self, claims: &mut Value) {
        if self.issued_in.is_some() {
            claims["idp"] = json!(format!("https://sts.windows.net/{}/", self.user.tenant_id));
        }
    }
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
        "iss": format!("{base}/{}/", subject.tenant()),
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
        "tid": subject.tenant(),
        "unique_name": user.upn,
        "upn": user.upn,
        "uti": random_b64(16),
        "ver": "1.0",
    });
    subject.add_foreign_idp(&mut claims);
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
        "iss": format!("{base}/{}/v2.0", subject.tenant()),
        "iat": iat,
        "nbf": iat,
        "exp": iat + TOKEN_LIFETIME_SECS + 1,
        "name": user.name,
        "oid": user.oid,
        "preferred_username": user.upn,
        "sub": pairwise_sub(&user.oid, &subject.client_id),
        "tid": subject.tenant(),
        "uti": random_b64(16),
        "ver": "2.0",
    });
    if let Some(nonce) = nonce {
        claims["nonce"] = json!(nonce);
    }
    if with_email {
        claims["email"] = json!(user.upn);
    }
    subject.add_foreign_idp(&mut claims);
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
        "iss": format!("{base}/{}/", subject.tenant()),
        "iat": iat,
        "nbf": iat,
        "exp": iat + TOKEN_LIFETIME_SECS + 1,
        "amr": subject.amr,
        "name": user.name,
        "oid": user.oid,
        "sub": pairwise_sub(&user.oid, &subject.client_id),
        "tid": subject.tenant(),
        "unique_name": user.upn,
        "upn": user.upn,
        "ver": "1.0",
    });
    if let Some(nonce) = nonce {
        claims["nonce"] = json!(nonce);
    }
    subject.add_foreign_idp(&mut claims);
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
            issued_in: None,
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
    fn a_token_issued_in_a_customer_tenant_names_it_and_the_users_home() {
        let now = OffsetDateTime::now_utc();
        let mut jane = subject("Admin Agent");
        let home = jane.user.tenant_id.clone();
        let customer = "7b1e0c3a-5d2f-4c8e-9a6b-00000000c001";
        jane.issued_in = Some(customer.into());
        let claims =
            access_token_claims("http://idp", &jane, "https://graph.microsoft.com", "x", now);
        assert_eq!(claims["tid"], customer);
        assert_eq!(claims["iss"], format!("http://idp/{customer}/"));
        assert_eq!(claims["idp"], format!("https://sts.windows.net/{home}/"));
        assert_eq!(claims["oid"], jane.user.oid.as_str());
        let own = access_token_claims("http://idp", &subject("Admin Agent"), "r", "x", now);
        assert!(own.get("idp").is_none());
    }

    #[test]
    fn pkce_rfc7636_vector() {
        assert_eq!(
            pkce_s256("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }
}
