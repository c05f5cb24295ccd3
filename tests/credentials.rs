//! The CPV app's own credentials: a certificate instead of a secret (client assertions), the
//! dev IdP's checks of those assertions, and rolling a client secret without downtime.
#![allow(clippy::too_many_lines)] // scenarios read top to bottom

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::Method;
use samvault::idp::certificate::{CertificateInfo, ClientCertificate, rsa_key_from_pem};
use serde_json::{Value, json};
use support::Backend;
use support::stack::*;

const TENANT_1: &str = "00000000-0000-4000-8000-000000000001";
const NEXT_SECRET: &str = "next-secret-7f3b9c";
const CURRENT_SECRET: &str = "samvault-demo-secret";

async fn count(stack: &Stack, group: &str, key: &str) -> u64 {
    stack.counters().await[group][key].as_u64().unwrap_or(0)
}

async fn alarm_detail(stack: &Stack, name: &str) -> Option<String> {
    use sqlx::Row;
    let db = stack.db().await;
    sqlx::query("SELECT detail FROM alarms WHERE name = $1")
        .bind(name)
        .fetch_optional(db.pool())
        .await
        .unwrap()
        .map(|row| row.get::<String, _>(0))
}

/// The demo app with a certificate and no secret: consent, token exchange and a scheduled
/// rotation all authenticate with client assertions.
async fn certificate_instead_of_a_secret(backend: Backend) {
    let Some(db) = support::fresh_database(backend).await else {
        return;
    };
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = dev_cert(certs.path());
    let options = StackOptions::default()
        .idp_arg("--client-cert")
        .idp_arg(cert.to_str().unwrap())
        .env("SAMVAULT_CLIENT_SECRET", "")
        .env("SAMVAULT_CLIENT_CERT", cert.to_str().unwrap())
        .env("SAMVAULT_CLIENT_KEY_FILE", key.to_str().unwrap())
        .env("SAMVAULT_ROTATE_AFTER", "3s");
    let stack = Stack::start(&db.url, options).await;

    stack.consent("jane@contoso.example").await;
    let creds = stack.client(&[PARTNER_CENTER]);
    let (status, body) = stack.token(&creds, CONTOSO, token_body()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["tenant_id"], CONTOSO);
    eventually(
        Duration::from_secs(30),
        "a scheduled rotation succeeds",
        || async {
            stack
                .scalar(
                    "SELECT COUNT(*) FROM rotation_attempts WHERE tenant_id = $1 AND source = 'schedule' AND outcome = 'success'",
                    CONTOSO,
                )
                .await
                >= 1
        },
    )
    .await;

    let counters = stack.counters().await;
    let assertions = counters["client_auth"]["client_assertion"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        assertions >= 3,
        "code, token and rotation each sent an assertion: {counters}"
    );
    assert_eq!(
        counters["client_auth"].get("client_secret"),
        None,
        "{counters}"
    );
    assert_eq!(
        counters["errors"],
        json!({}),
        "no call was refused: {counters}"
    );

    let logs = [
        stack.log(0),
        std::fs::read_to_string(stack.dir.path().join("idp.log")).unwrap(),
    ];
    assert!(logs[0].contains("client assertions are signed with SAMVAULT_CLIENT_CERT"));
    let dump = stack.database_dump();
    for line in pem_body_lines(&key) {
        for log in &logs {
            assert!(
                !log.contains(&line),
                "a line of the private key is in a log"
            );
        }
        assert!(
            !contains(&dump, &line),
            "a line of the private key is in the database"
        );
    }
    for log in &logs {
        assert!(!log.contains("PRIVATE KEY"));
        assert!(
            !log.contains("client_assertion="),
            "an assertion was logged"
        );
    }
}

/// The dev IdP's app secret with this value expires (AADSTS7000222 from now on).
async fn expire(stack: &Stack, secret: &str) {
    stack
        .sim(
            Method::POST,
            "app/secret/expire",
            json!({ "secret": secret }),
        )
        .await;
}

/// Rolling the secret: the current one expires, the next one takes over for the very same
/// request, nothing fails, and the alarm names the refused setting (never a value). When
/// the next one goes too, the API answers 503 app_credentials_invalid.
async fn secret_rolls_without_downtime(backend: Backend) {
    let Some(db) = support::fresh_database(backend).await else {
        return;
    };
    let options = StackOptions::default().env("SAMVAULT_CLIENT_SECRET_NEXT", NEXT_SECRET);
    let stack = Stack::start(&db.url, options).await;
    stack
        .sim(
            Method::POST,
            "app/secrets",
            json!({ "secret": NEXT_SECRET }),
        )
        .await;
    stack.consent("jane@contoso.example").await;
    stack.consent("trent@wingtip.example").await;
    let creds = stack.client(&[PARTNER_CENTER]);

    expire(&stack, CURRENT_SECRET).await;
    for tenant in [CONTOSO, WINGTIP] {
        let (status, body) = stack.token(&creds, tenant, token_body()).await;
        assert_eq!(status, 200, "{tenant}: {body}");
    }
    // A consent after the expiry redeems its code with the next secret too.
    stack.consent("admin@tenant-1.example").await;
    assert_eq!(
        count(&stack, "errors", "7000222").await,
        1,
        "only the first request met the expired secret; later ones start with the next one"
    );
    let detail = alarm_detail(&stack, "app_credential_fallback")
        .await
        .expect("the fallback alarm is raised");
    assert!(
        detail.contains(
            "SAMVAULT_CLIENT_SECRET rejected: AADSTS7000222; using SAMVAULT_CLIENT_SECRET_NEXT"
        ),
        "{detail}"
    );
    assert!(stack.log(0).contains(
        "SAMVAULT_CLIENT_SECRET rejected: AADSTS7000222; using SAMVAULT_CLIENT_SECRET_NEXT"
    ));
    assert_eq!(
        alarm_detail(&stack, "app_credentials").await,
        None,
        "nothing paused"
    );

    // Now the next secret expires as well: Tenant 1 has no cached token, so its request
    // redeems, both secrets are refused, and the API says so.
    expire(&stack, NEXT_SECRET).await;
    let (status, problem) = stack.token(&creds, TENANT_1, token_body()).await;
    assert_eq!(status, 503, "{problem}");
    assert_eq!(problem["code"], "app_credentials_invalid");
    let detail = alarm_detail(&stack, "app_credentials")
        .await
        .expect("the app-credentials alarm is raised");
    assert!(
        detail.contains("SAMVAULT_CLIENT_SECRET_NEXT rejected: AADSTS7000222; SAMVAULT_CLIENT_SECRET rejected: AADSTS7000222"),
        "{detail}"
    );
    for partner in stack.partners() {
        assert_eq!(partner["status"], "active", "nobody is demoted: {partner}");
    }
    let log = stack.log(0);
    for secret in [NEXT_SECRET, CURRENT_SECRET] {
        assert!(!log.contains(secret), "a secret is in the log");
        assert!(
            !contains(&stack.database_dump(), secret),
            "a secret is in the database"
        );
    }
}

on_both_backends!(
    certificate_instead_of_a_secret,
    secret_rolls_without_downtime
);

/// A `samvault dev-idp` with `certs` registered on the demo app; returns its base URL and
/// the process (killed when dropped).
async fn dev_idp(certs: Vec<PathBuf>) -> (String, Proc) {
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_samvault"));
    command.args(["dev-idp", "--listen", &format!("127.0.0.1:{port}")]);
    for cert in &certs {
        command.arg("--client-cert").arg(cert);
    }
    let process = Proc(command.stderr(std::process::Stdio::null()).spawn().unwrap());
    let http = reqwest::Client::new();
    wait_ready(
        &http,
        &format!("{base}/common/v2.0/.well-known/openid-configuration"),
    )
    .await;
    (base, process)
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A certificate and key made with the library, valid `from..until` (Unix seconds).
fn certificate(dir: &Path, from: i64, until: i64) -> (PathBuf, ClientCertificate) {
    let (cert_path, key_path) = dev_cert_valid(dir, "test", from, until);
    let info = CertificateInfo::from_pem(&std::fs::read_to_string(&cert_path).unwrap()).unwrap();
    let key = rsa_key_from_pem(&std::fs::read_to_string(key_path).unwrap()).unwrap();
    (cert_path, ClientCertificate::new(info, key).unwrap())
}

/// Posts a refresh-token request authenticated by `assertion`; returns (status, body).
async fn redeem_with(
    idp: &str,
    tenant: &str,
    refresh_token: &str,
    assertion: &str,
) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("{idp}/{tenant}/oauth2/v2.0/token"))
        .form(&[
            ("grant_type", "refresh_token"),
            ("client_id", DEMO_CLIENT_ID),
            ("refresh_token", refresh_token),
            ("scope", "https://api.partnercenter.microsoft.com/.default"),
            (
                "client_assertion_type",
                samvault::idp::certificate::JWT_BEARER,
            ),
            ("client_assertion", assertion),
        ])
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

async fn json_of(request: reqwest::RequestBuilder) -> Value {
    request.send().await.unwrap().json().await.unwrap()
}

fn refused_with(answer: &(u16, Value), code: u64) {
    assert_eq!(answer.0, 401, "{}", answer.1);
    assert_eq!(answer.1["error"], "invalid_client", "{}", answer.1);
    assert_eq!(answer.1["error_codes"], json!([code]), "{}", answer.1);
}

/// The dev IdP checks client assertions as Entra documents: signature by a registered
/// certificate, audience, issuer and subject, time window, single use.
#[tokio::test(flavor = "multi_thread")]
async fn dev_idp_refuses_bad_client_assertions() {
    let dir = tempfile::tempdir().unwrap();
    let t = now();
    let (registered_path, registered) = certificate(&dir.path().join("a"), t - 60, t + 86_400);
    let (_, stranger) = certificate(&dir.path().join("b"), t - 60, t + 86_400);
    let (expired_path, expired) = certificate(&dir.path().join("c"), t - 7200, t - 3600);
    let (idp, _idp_process) = dev_idp(vec![registered_path, expired_path]).await;
    let minted = json_of(
        reqwest::Client::new()
            .post(format!("{idp}/_sim/tokens"))
            .json(&json!({ "upn": "jane@contoso.example", "sign": false })),
    )
    .await;
    let rt = minted["refresh_token"].as_str().unwrap();
    let audience = format!("{idp}/{CONTOSO}/oauth2/v2.0/token");
    let claims = |aud: &str, iss: &str, nbf: i64, exp: i64| {
        json!({ "aud": aud, "iss": iss, "sub": iss, "jti": uuid::Uuid::new_v4().to_string(),
                "nbf": nbf, "iat": nbf, "exp": exp })
    };
    let good =
        |c: &ClientCertificate| c.sign(&c.header(), &claims(&audience, DEMO_CLIENT_ID, t, t + 540));

    // What samvault sends is accepted, once.
    let valid = registered.assertion(DEMO_CLIENT_ID, &audience, t);
    let first = redeem_with(&idp, CONTOSO, rt, &valid).await;
    assert_eq!(first.0, 200, "{}", first.1);
    refused_with(&redeem_with(&idp, CONTOSO, rt, &valid).await, 50013);

    // A key whose certificate is not registered, and a registered thumbprint over another key.
    refused_with(
        &redeem_with(&idp, CONTOSO, rt, &good(&stranger)).await,
        700027,
    );
    let forged = stranger.sign(
        &registered.header(),
        &claims(&audience, DEMO_CLIENT_ID, t, t + 540),
    );
    let answer = redeem_with(&idp, CONTOSO, rt, &forged).await;
    refused_with(&answer, 700027);
    assert!(
        answer.1["error_description"]
            .as_str()
            .unwrap()
            .contains("signature validation")
    );
    // A registered certificate past its end date.
    let answer = redeem_with(&idp, CONTOSO, rt, &good(&expired)).await;
    refused_with(&answer, 700027);
    assert!(
        answer.1["error_description"]
            .as_str()
            .unwrap()
            .contains("The key used is expired")
    );

    // Expired and not-yet-valid assertions.
    let stale = registered.sign(
        &registered.header(),
        &claims(&audience, DEMO_CLIENT_ID, t - 4200, t - 3600),
    );
    refused_with(&redeem_with(&idp, CONTOSO, rt, &stale).await, 700024);
    let early = registered.sign(
        &registered.header(),
        &claims(&audience, DEMO_CLIENT_ID, t + 3600, t + 4200),
    );
    refused_with(&redeem_with(&idp, CONTOSO, rt, &early).await, 700024);

    // Addressed to another endpoint, or issued by another client.
    for aud in [
        format!("{idp}/common/oauth2/v2.0/token"),
        format!("{idp}/{CONTOSO}/oauth2/token"),
        "https://login.microsoftonline.com/common/oauth2/v2.0/token".to_string(),
    ] {
        let wrong = registered.sign(
            &registered.header(),
            &claims(&aud, DEMO_CLIENT_ID, t, t + 540),
        );
        refused_with(&redeem_with(&idp, CONTOSO, rt, &wrong).await, 700023);
    }
    let other = uuid::Uuid::new_v4().to_string();
    let wrong = registered.sign(&registered.header(), &claims(&audience, &other, t, t + 540));
    refused_with(&redeem_with(&idp, CONTOSO, rt, &wrong).await, 700021);

    // Garbage is a clear 400, never a 5xx.
    let garbage = redeem_with(&idp, CONTOSO, rt, "not.a.jwt").await;
    assert_eq!(garbage.0, 400, "{}", garbage.1);
    assert_eq!(garbage.1["error_codes"], json!([50027]));

    let counters = json_of(reqwest::Client::new().get(format!("{idp}/_sim/counters"))).await;
    assert_eq!(counters["token_calls"]["refresh_token"], 12, "{counters}");
    assert_eq!(
        counters["client_auth"]["client_assertion"], 12,
        "{counters}"
    );
}

/// Start-up refuses a key that is not the certificate's and an expired certificate, each in
/// one line naming the setting; a certificate near its end is announced in the log.
#[tokio::test(flavor = "multi_thread")]
async fn startup_checks_the_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let t = now();
    let (cert_a, key_a) = dev_cert_valid(&dir.path().join("a"), "a", t - 60, t + 10 * 86_400);
    let (_, key_b) = dev_cert_valid(&dir.path().join("b"), "b", t - 60, t + 86_400);
    let (cert_old, key_old) = dev_cert_valid(&dir.path().join("c"), "c", t - 7200, t - 3600);
    let (idp, _idp_process) = dev_idp(vec![cert_a.clone()]).await;
    let serve = |cert: &Path, key: &Path| {
        let port = free_port();
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_samvault"));
        command
            .arg("serve")
            .env_clear()
            .env(
                "DATABASE_URL",
                format!("sqlite://{}/t.db?mode=rwc", dir.path().display()),
            )
            .env("SAMVAULT_LISTEN", format!("127.0.0.1:{port}"))
            .env("SAMVAULT_AUTHORITY", &idp)
            .env("SAMVAULT_CLIENT_ID", DEMO_CLIENT_ID)
            .env("SAMVAULT_CLIENT_CERT", cert)
            .env("SAMVAULT_CLIENT_KEY_FILE", key)
            .env(
                "SAMVAULT_KEY_PROVIDER",
                format!("local:{}/k", dir.path().display()),
            );
        (command, port)
    };
    for (cert, key, setting, why) in [
        (
            &cert_a,
            &key_b,
            "SAMVAULT_CLIENT_KEY",
            "is not the private key",
        ),
        (&cert_old, &key_old, "SAMVAULT_CLIENT_CERT", "expired on"),
    ] {
        let out = serve(cert, key).0.output().unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        let line = stderr.lines().last().unwrap_or_default();
        assert!(line.contains(setting) && line.contains(why), "{stderr}");
        assert!(!stderr.contains("PRIVATE KEY"));
    }

    let (mut command, port) = serve(&cert_a, &key_a);
    let log = dir.path().join("serve.log");
    let child = command
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let _serving = Proc(child);
    wait_ready(
        &reqwest::Client::new(),
        &format!("http://127.0.0.1:{port}/healthz"),
    )
    .await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("SAMVAULT_CLIENT_CERT expires within 30 days"),
        "{text}"
    );
}

/// The client assertion's format and the start-up checks of a certificate credential (unit
/// tests of `samvault::idp::certificate`, on certificates made by `samvault dev-cert`).
mod assertion {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use samvault::idp::certificate::{CertificateInfo, ClientCertificate};
    use secrecy::{ExposeSecret, SecretString};
    use serde_json::Value;
    use sha2::{Digest, Sha256};

    use super::support::stack::dev_cert_valid;

    const CLIENT: &str = "5a7e3c1d-0000-4000-8000-00000000c0de";
    const AUDIENCE: &str = "https://login.microsoftonline.com/contoso/oauth2/v2.0/token";

    /// A fresh certificate and key (PEM), valid from `from` to `until`.
    fn generated(from: i64, until: i64) -> (tempfile::TempDir, std::path::PathBuf, SecretString) {
        let dir = tempfile::tempdir().unwrap();
        let (path, key) = dev_cert_valid(dir.path(), "test", from, until);
        let key = std::fs::read_to_string(key).unwrap();
        (dir, path, SecretString::from(key))
    }

    fn part(jwt: &str, index: usize) -> Value {
        let segment = jwt.split('.').nth(index).unwrap();
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(segment).unwrap()).unwrap()
    }

    #[test]
    fn assertions_follow_microsofts_certificate_credential_format() {
        let now = 1_900_000_000;
        let (_dir, path, key) = generated(now - 60, now + 86_400);
        let certificate = ClientCertificate::load(&path, &key, now).unwrap();
        let jwt = certificate.assertion(CLIENT, AUDIENCE, now);

        // x5t#S256 is the SHA-256 of the certificate's DER, computed here from the file.
        let pem = std::fs::read_to_string(&path).unwrap();
        let (_, der) = x509_cert::der::pem::decode_vec(pem.as_bytes()).unwrap();
        let header = part(&jwt, 0);
        assert_eq!(header["alg"], "RS256");
        assert_eq!(header["typ"], "JWT");
        assert_eq!(
            header["x5t#S256"],
            URL_SAFE_NO_PAD.encode(Sha256::digest(&der))
        );

        let claims = part(&jwt, 1);
        assert_eq!(claims["aud"], AUDIENCE);
        assert_eq!(claims["iss"], CLIENT);
        assert_eq!(claims["sub"], CLIENT);
        assert_eq!(claims["nbf"], now);
        assert_eq!(claims["iat"], now);
        let lifetime = claims["exp"].as_i64().unwrap() - now;
        assert!((300..=600).contains(&lifetime), "{lifetime}");
        assert!(uuid::Uuid::parse_str(claims["jti"].as_str().unwrap()).is_ok());

        // Signed by the certificate's key.
        let info = CertificateInfo::from_der(&der).unwrap();
        let (input, signature) = jwt.rsplit_once('.').unwrap();
        aws_lc_rs::signature::UnparsedPublicKey::new(
            &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
            &info.public_key,
        )
        .verify(
            input.as_bytes(),
            &URL_SAFE_NO_PAD.decode(signature).unwrap(),
        )
        .expect("the signature verifies with the certificate's public key");

        // Every assertion is new.
        let again = certificate.assertion(CLIENT, AUDIENCE, now);
        assert_ne!(part(&again, 1)["jti"], claims["jti"]);
        assert!(!format!("{certificate:?}").contains("PRIVATE"));
    }

    #[test]
    fn start_up_refuses_a_foreign_key_and_an_expired_certificate() {
        let now = 1_900_000_000;
        let (_a, cert_a, _) = generated(now - 60, now + 86_400);
        let (_b, _, key_b) = generated(now - 60, now + 86_400);
        let err = ClientCertificate::load(&cert_a, &key_b, now).unwrap_err().0;
        assert!(err.starts_with("SAMVAULT_CLIENT_KEY: "), "{err}");
        let key_text = key_b.expose_secret();
        let body = key_text.lines().nth(1).unwrap();
        assert!(!err.contains(body), "the key is quoted: {err}");

        let (_c, cert_c, key_c) = generated(now - 7200, now - 3600);
        let err = ClientCertificate::load(&cert_c, &key_c, now).unwrap_err().0;
        assert!(
            err.starts_with("SAMVAULT_CLIENT_CERT: ") && err.contains("expired on"),
            "{err}"
        );

        let err = ClientCertificate::load(&cert_c, &SecretString::from("garbage".to_string()), now)
            .unwrap_err()
            .0;
        assert!(err.starts_with("SAMVAULT_CLIENT_KEY: "), "{err}");
        let missing = std::path::Path::new("/nonexistent/app.crt");
        let err = ClientCertificate::load(missing, &key_c, now).unwrap_err().0;
        assert!(
            err.starts_with("SAMVAULT_CLIENT_CERT: /nonexistent/app.crt"),
            "{err}"
        );
    }
}
