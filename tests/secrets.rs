//! Secret scanning (issue 7 item 5; REFERENCE §4 "At rest"): one broad run of the real processes
//! (`samvault dev-idp`, `samvault serve` at RUST_LOG=debug, and the CLI), then every secret
//! the test saw during it is looked for, in the encodings a leak would use, in a dump of the
//! database, in every log line of the service and of the dev IdP, and in everything each CLI
//! command printed. The only place a secret may appear is the one output meant to show it
//! once: the stdout of the command that created it (`client create`, `client secret add`,
//! `ops-user create`, `invite create`). A failure names the kind of secret, a short SHA-256
//! prefix of it (never the secret), the encoding and the place.
#![allow(clippy::too_many_lines)] // scenarios read top to bottom

mod support;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use reqwest::Method;
use samvault::ops::totp;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use support::Backend;
use support::customers::{ADATUM, TAILSPIN, consent_in, customer_token_request, seed};
use support::ops::{Account, NEW_PASSWORD, Operator};
use support::revoke::{confirm, sign_in_to_revoke};
use support::stack::*;

const TENANT_1: &str = "00000000-0000-4000-8000-000000000001";
const TENANT_2: &str = "00000000-0000-4000-8000-000000000002";
const GRAPH: &str = "https://graph.microsoft.com";
const ARM: &str = "https://management.azure.com";
/// The dev IdP's fixture secret of the CPV app (REFERENCE §5.2), which the stack configures.
const APP_SECRET: &str = "samvault-demo-secret";
/// Consent to all three audiences, so token requests can ask for each of them.
const CONSENT_SCOPES: &str = "https://api.partnercenter.microsoft.com/user_impersonation https://graph.microsoft.com/User.Read https://management.azure.com/user_impersonation offline_access openid profile";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    RefreshToken,
    AccessToken,
    IdToken,
    AuthorizationCode,
    AppClientSecret,
    IntegrationClientSecret,
    OpsPassword,
    TotpSeed,
    SessionId,
    InvitationToken,
    CertificatePrivateKey,
    KeyEncryptionKey,
    WebhookSecret,
    MetricsToken,
}

/// How many of each kind the run must have seen, so the scan cannot pass by seeing nothing.
const AT_LEAST: [(Kind, usize); 14] = [
    (Kind::RefreshToken, 3),
    (Kind::AccessToken, 3),
    (Kind::IdToken, 2),
    (Kind::AuthorizationCode, 2),
    (Kind::AppClientSecret, 1),
    (Kind::IntegrationClientSecret, 3),
    (Kind::OpsPassword, 2),
    (Kind::TotpSeed, 1),
    (Kind::SessionId, 3),
    (Kind::InvitationToken, 1),
    (Kind::CertificatePrivateKey, 1),
    (Kind::KeyEncryptionKey, 2),
    (Kind::WebhookSecret, 2),
    (Kind::MetricsToken, 1),
];

/// One secret the test saw, as the byte strings a leak of it could show.
struct Secret {
    kind: Kind,
    /// The first 12 hex digits of its SHA-256: names it in a message without revealing it.
    tag: String,
    forms: Vec<(String, Vec<u8>)>,
    /// The [`Stack::cli_runs`] entry whose stdout is meant to print it (once).
    printed_by: Option<usize>,
}

/// Every secret seen during the run, each once.
#[derive(Default)]
struct Seen {
    secrets: Vec<Secret>,
}

fn text_forms(value: &str) -> Vec<(String, Vec<u8>)> {
    let bytes = value.as_bytes();
    vec![
        ("raw".into(), bytes.to_vec()),
        (
            "URL-encoded".into(),
            url::form_urlencoded::byte_serialize(bytes)
                .collect::<String>()
                .into_bytes(),
        ),
        ("base64".into(), STANDARD_NO_PAD.encode(bytes).into_bytes()),
        (
            "base64url".into(),
            URL_SAFE_NO_PAD.encode(bytes).into_bytes(),
        ),
        ("hex".into(), hex::encode(bytes).into_bytes()),
    ]
}

/// Raw bytes (a TOTP seed, a key): as they are, hex (key files, PostgreSQL bytea), base64,
/// and the `[1, 2, …]` of a `Debug` print of a byte vector.
fn byte_forms(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    vec![
        ("raw bytes".into(), bytes.to_vec()),
        ("hex".into(), hex::encode(bytes).into_bytes()),
        ("base64".into(), STANDARD_NO_PAD.encode(bytes).into_bytes()),
        (
            "base64url".into(),
            URL_SAFE_NO_PAD.encode(bytes).into_bytes(),
        ),
        ("Debug bytes".into(), format!("{bytes:?}").into_bytes()),
    ]
}

impl Seen {
    fn add(&mut self, kind: Kind, identity: &[u8], mut forms: Vec<(String, Vec<u8>)>) -> usize {
        let tag = hex::encode(Sha256::digest(identity))[..12].to_string();
        if let Some(at) = self.secrets.iter().position(|s| s.tag == tag) {
            return at;
        }
        forms.sort();
        forms.dedup_by(|a, b| a.1 == b.1);
        for (form, bytes) in &forms {
            assert!(
                bytes.len() >= 16,
                "{kind:?} {tag}: {form} too short to scan for"
            );
        }
        self.secrets.push(Secret {
            kind,
            tag,
            forms,
            printed_by: None,
        });
        self.secrets.len() - 1
    }

    fn text(&mut self, kind: Kind, value: &str) -> usize {
        self.add(kind, value.as_bytes(), text_forms(value))
    }

    /// An opaque token (refresh token, code): also its first 32 characters, a truncated print.
    fn opaque(&mut self, kind: Kind, value: &str) {
        let mut forms = text_forms(value);
        forms.push((
            "first 32 characters".into(),
            value.as_bytes()[..32].to_vec(),
        ));
        self.add(kind, value.as_bytes(), forms);
    }

    /// A JWT: also its signature alone, which no other token shares.
    fn jwt(&mut self, kind: Kind, value: &str) {
        let mut forms = text_forms(value);
        let signature = value.rsplit('.').next().unwrap();
        forms.push(("JWT signature".into(), signature.as_bytes().to_vec()));
        self.add(kind, value.as_bytes(), forms);
    }

    /// An integration client secret: also the HTTP Basic credentials it travels in.
    fn client_secret(&mut self, client_id: &str, secret: &str) -> usize {
        let mut forms = text_forms(secret);
        let basic = STANDARD_NO_PAD.encode(format!("{client_id}:{secret}"));
        forms.push(("Basic credentials".into(), basic.into_bytes()));
        self.add(Kind::IntegrationClientSecret, secret.as_bytes(), forms)
    }

    /// A TOTP seed: the raw bytes and the base32 text an authenticator app is given.
    fn totp_seed(&mut self, seed: &[u8]) -> usize {
        let mut forms = byte_forms(seed);
        forms.extend(
            text_forms(&totp::base32(seed))
                .into_iter()
                .map(|(f, b)| (format!("base32, {f}"), b)),
        );
        self.add(Kind::TotpSeed, seed, forms)
    }

    /// The private key of a PEM file: its DER bytes and each base64 line of the file.
    fn private_key(&mut self, pem: &std::path::Path) {
        let lines = pem_body_lines(pem);
        let der = base64::engine::general_purpose::STANDARD
            .decode(lines.concat())
            .unwrap();
        let mut forms = byte_forms(&der);
        for (i, line) in lines.iter().enumerate() {
            forms.push((format!("PEM line {}", i + 1), line.as_bytes().to_vec()));
        }
        self.add(Kind::CertificatePrivateKey, &der, forms);
    }

    /// The key-encryption keys in the key file (64 hex digits a line).
    fn keys_in(&mut self, key_file: &std::path::Path) {
        let text = std::fs::read_to_string(key_file).unwrap();
        for line in text.lines().map(str::trim).filter(|l| l.len() == 64) {
            let key = hex::decode(line).unwrap();
            self.add(Kind::KeyEncryptionKey, &key, byte_forms(&key));
        }
    }

    /// The secret at `index` is shown once, on purpose, by CLI run `run`.
    fn printed_by(&mut self, index: usize, run: usize) {
        self.secrets[index].printed_by = Some(run);
    }

    fn count(&self, kind: Kind) -> usize {
        self.secrets.iter().filter(|s| s.kind == kind).count()
    }
}

/// Where a leak would show, and which CLI run it is (its stdout may print that run's secrets).
struct Place {
    name: String,
    bytes: Vec<u8>,
    stdout_of: Option<usize>,
}

fn found(place: &Place, text: &str, needle: &[u8]) -> bool {
    match std::str::from_utf8(needle) {
        // Text needles are ASCII: a lossy view keeps every ASCII byte where it was.
        Ok(needle) => text.contains(needle),
        Err(_) => support::contains_bytes(&place.bytes, needle),
    }
}

/// Every (secret, encoding, place) where a secret shows and is not meant to.
fn leaks(seen: &Seen, places: &[Place]) -> Vec<String> {
    let mut leaks = Vec::new();
    for place in places {
        let text = String::from_utf8_lossy(&place.bytes);
        for secret in &seen.secrets {
            if place.stdout_of.is_some() && place.stdout_of == secret.printed_by {
                continue;
            }
            let forms: Vec<&str> = secret
                .forms
                .iter()
                .filter(|(_, needle)| found(place, &text, needle))
                .map(|(form, _)| form.as_str())
                .collect();
            if !forms.is_empty() {
                leaks.push(format!(
                    "{:?} {} ({}) in {}",
                    secret.kind,
                    secret.tag,
                    forms.join(", "),
                    place.name
                ));
            }
        }
    }
    leaks
}

/// The index of the last CLI run.
fn last_run(stack: &Stack) -> usize {
    stack.cli_runs.lock().unwrap().len() - 1
}

/// The session id a browser holds now (its `samvault_session` cookie).
fn session_id(seen: &mut Seen, cookie: Option<&str>) {
    let id = cookie
        .and_then(|c| c.strip_prefix("samvault_session="))
        .expect("the browser holds a session");
    seen.text(Kind::SessionId, id);
}

/// The `code` of an IdP redirect to the callback.
fn code_of(callback: &str) -> String {
    url::Url::parse(callback)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.into_owned())
        .expect("the callback carries a code")
}

/// The run: the stack, every secret seen so far, and every redirect to the callback.
struct Run {
    stack: Stack,
    backend: Backend,
    seen: Seen,
    callbacks: Vec<String>,
}

impl Run {
    /// A token request that must succeed; records the access token and returns whether it
    /// came from samvault's cache.
    async fn token(&mut self, creds: &(String, String), tenant: &str, resource: &str) -> bool {
        let body = json!({ "resource": resource, "purpose": "secret scan" });
        let (status, answer) = self.stack.token(creds, tenant, body).await;
        assert_eq!(status, 200, "{tenant} {resource}: {answer}");
        let token = answer["access_token"].as_str().unwrap();
        self.seen.jwt(Kind::AccessToken, token);
        answer["cached"].as_bool().unwrap()
    }

    /// A consent through the onboarding page `page` (default `/onboard`) that must succeed.
    async fn consent(&mut self, page: Option<&str>, upn: &str) {
        let mut browser = Browser::new(&self.stack);
        let done = match page {
            Some(page) => browser.consent_from(page, upn, true, "accept").await,
            None => browser.consent(upn, true, "accept").await,
        };
        assert_eq!(done.status, 200, "{upn}: {}", done.body);
        session_id(&mut self.seen, browser.cookie());
        self.callbacks.extend(done.callback_url);
    }

    /// Consents (one through an invitation link) and refused consents.
    async fn consents(&mut self) {
        self.consent(None, "jane@contoso.example").await;
        self.consent(None, "admin@tenant-1.example").await;
        let invite = self
            .stack
            .cli(&["invite", "create", "--tenant", WINGTIP, "--json"]);
        let invitation = serde_json::from_str::<Value>(&invite).unwrap()["url"]
            .as_str()
            .unwrap()
            .to_string();
        let token = invitation.rsplit('/').next().unwrap();
        let at = self.seen.text(Kind::InvitationToken, token);
        self.seen.printed_by(at, last_run(&self.stack));
        self.consent(Some(&invitation), "trent@wingtip.example")
            .await;

        // John signs in without MFA (samvault redeems the code and stores nothing), Jane
        // without MFA (the IdP refuses), Jane declines.
        for (upn, mfa, decision) in [
            ("john@fabrikam.example", false, "accept"),
            ("jane@contoso.example", false, "accept"),
            ("jane@contoso.example", true, "deny"),
        ] {
            let refused = Browser::new(&self.stack).consent(upn, mfa, decision).await;
            assert_eq!(refused.status, 403, "{upn}: {}", refused.body);
            self.callbacks.extend(refused.callback_url);
        }
        assert!(
            self.stack.partner(FABRIKAM).is_none(),
            "nothing stored for John"
        );
    }

    /// An integration client: tokens for three audiences (misses, then hits), hostile
    /// credentials, its secret rolled; a refresh token imported from a file. Returns the
    /// client's id and its live secret.
    async fn integration(&mut self) -> (String, String) {
        let creds = self.stack.client(&[PARTNER_CENTER, GRAPH, ARM]);
        let at = self.seen.client_secret(&creds.0, &creds.1);
        self.seen.printed_by(at, last_run(&self.stack));
        for resource in [PARTNER_CENTER, GRAPH, ARM] {
            assert!(!self.token(&creds, CONTOSO, resource).await, "a miss");
            assert!(self.token(&creds, CONTOSO, resource).await, "a hit");
        }
        for tenant in [WINGTIP, TENANT_1] {
            assert!(!self.token(&creds, tenant, PARTNER_CENTER).await);
        }

        // The right client id with a wrong secret, an unknown client id.
        let wrong: [(String, String); 2] = [
            (creds.0.clone(), "svs_this-is-not-the-secret-at-all".into()),
            (
                "no-such-client".into(),
                "svs_a-guessed-secret-for-nobody".into(),
            ),
        ];
        for attempt in wrong {
            self.seen.client_secret(&attempt.0, &attempt.1);
            let (status, problem) = self.stack.token(&attempt, CONTOSO, token_body()).await;
            assert_eq!(
                (status, problem["code"].as_str()),
                (401, Some("invalid_client"))
            );
        }

        // Rolled: a second secret added, the first revoked.
        let out = self
            .stack
            .cli(&["client", "secret", "add", &creds.0, "--json"]);
        let added: Value = serde_json::from_str(&out).unwrap();
        let rolled = (
            creds.0.clone(),
            added["client_secret"].as_str().unwrap().to_string(),
        );
        let at = self.seen.client_secret(&rolled.0, &rolled.1);
        self.seen.printed_by(at, last_run(&self.stack));
        let listed = self.stack.cli(&["client", "secret", "list", &creds.0]);
        let first = listed
            .lines()
            .filter_map(|line| line.split_whitespace().next())
            .find(|id| *id != added["secret_id"])
            .unwrap();
        self.stack
            .cli(&["client", "secret", "revoke", &creds.0, first]);
        let (status, _) = self.stack.token(&creds, CONTOSO, token_body()).await;
        assert_eq!(status, 401, "the first secret is revoked");
        assert!(!self.token(&rolled, WINGTIP, GRAPH).await);

        // A refresh token held elsewhere, imported (and due for rotation at once).
        let upn = "john@fabrikam.example";
        let minted = self
            .stack
            .sim(Method::POST, "tokens", json!({ "upn": upn }))
            .await;
        let line = json!({
            "tenant_id": FABRIKAM, "upn": upn, "refresh_token": minted["refresh_token"],
        });
        let import = self.stack.dir.path().join("import.jsonl");
        std::fs::write(&import, format!("{line}\n")).unwrap();
        self.stack
            .cli(&["partners", "import", "--file", import.to_str().unwrap()]);
        std::fs::remove_file(&import).unwrap();
        rolled
    }

    /// Customer-tenant tokens: a client with customers:issue (its secret printed once), a
    /// token in Adatum (a miss, then a hit), a refusal in Tailspin (no relationship, so the
    /// IdP's error is classified and logged), the customer list.
    async fn customers(&mut self, creds: &(String, String)) {
        seed(&self.stack, CONTOSO, &[ADATUM, TAILSPIN]).await;
        consent_in(&self.stack, creds, CONTOSO, &[ADATUM]).await;
        let issuer = self.stack.cli(&[
            "client",
            "create",
            "--name",
            "customers",
            "--resource",
            GRAPH,
            "--permission",
            "customers:issue",
            "--permission",
            "partners:read",
            "--json",
        ]);
        let issuer: Value = serde_json::from_str(&issuer).unwrap();
        let issuer = (
            issuer["client_id"].as_str().unwrap().to_string(),
            issuer["client_secret"].as_str().unwrap().to_string(),
        );
        let at = self.seen.client_secret(&issuer.0, &issuer.1);
        self.seen.printed_by(at, last_run(&self.stack));
        let body = json!({ "resource": GRAPH, "purpose": "secret scan" });
        for (customer, status, cached) in [
            (ADATUM, 200, false),
            (ADATUM, 200, true),
            (TAILSPIN, 409, false),
        ] {
            let request = customer_token_request(&self.stack, &issuer, CONTOSO, customer, &body);
            let response = request.send().await.unwrap();
            assert_eq!(response.status().as_u16(), status, "{customer}");
            let answer: Value = response.json().await.unwrap();
            if let Some(token) = answer["access_token"].as_str() {
                self.seen.jwt(Kind::AccessToken, token);
                assert_eq!(answer["cached"], cached);
            }
        }
        let list = self
            .stack
            .http
            .get(format!(
                "{}/api/v1/partners/{CONTOSO}/customers",
                self.stack.sv()
            ))
            .basic_auth(&issuer.0, Some(&issuer.1))
            .send()
            .await
            .unwrap();
        assert_eq!(list.status(), 200);
    }

    /// An ops admin: created (one-time password and TOTP seed printed once), a wrong password
    /// and a password typed as the user name refused, signed in with password + TOTP and
    /// past the forced password change; then Rotate now, an access check and a secret added
    /// to the client on the dashboard. Returns the client with that secret.
    async fn ops(&mut self, client_id: &str) -> (String, String) {
        let account = Account::create(&self.stack, "scanner", "admin");
        let run = last_run(&self.stack);
        let at = self.seen.text(Kind::OpsPassword, &account.password);
        self.seen.printed_by(at, run);
        let at = self.seen.totp_seed(&account.secret);
        self.seen.printed_by(at, run);
        let wrong = "not-the-password-but-close";
        self.seen.text(Kind::OpsPassword, wrong);
        let mut intruder = Operator::new(&self.stack);
        let (status, _, _) = intruder.sign_in("scanner", wrong, &account.code(0)).await;
        assert_eq!(status, 401);
        // A common slip: the password typed into the user-name field as well.
        let password = &account.password;
        let (status, _, _) = intruder.sign_in(password, password, &account.code(0)).await;
        assert_eq!(status, 401);
        session_id(&mut self.seen, intruder.browser.cookie());
        let mut op = Operator::first_sign_in(&self.stack, "scanner", &account).await;
        self.seen.text(Kind::OpsPassword, NEW_PASSWORD);
        session_id(&mut self.seen, op.browser.cookie());

        let detail = format!("/ops/partners/{CONTOSO}");
        let csrf = op.csrf(&detail).await;
        let (status, _, _) = op
            .post(&format!("{detail}/rotate"), &[("csrf", &csrf)])
            .await;
        assert_eq!(status, 303);
        let (status, page, _) = op
            .post(&format!("{detail}/check"), &[("csrf", &csrf)])
            .await;
        assert_eq!(status, 200, "{page}");
        let secrets = format!("/ops/integrations/{client_id}/secrets");
        let (status, page, _) = op.post(&secrets, &[("csrf", &csrf)]).await;
        assert_eq!(status, 200);
        let creds = (client_id.to_string(), field(&page, "client_secret"));
        self.seen.client_secret(&creds.0, &creds.1);
        assert!(self.token(&creds, WINGTIP, GRAPH).await);
        creds
    }

    /// Remediation: `samvault rotate` (PostgreSQL: SQLite allows one redeeming process), a
    /// partner admin's self-service revoke, `samvault keys rotate`, `samvault partners purge`.
    async fn remediation(&mut self, key_file: &std::path::Path) {
        if self.backend == Backend::Postgres {
            self.stack.cli(&["rotate", "--all"]);
        }
        self.consent(None, "admin@tenant-2.example").await;
        let mut admin = Browser::new(&self.stack);
        let upn = "admin@tenant-2.example";
        let signed_in = sign_in_to_revoke(&self.stack, &mut admin, upn, true, "accept").await;
        assert_eq!(signed_in.status, 200, "{}", signed_in.body);
        self.callbacks.push(signed_in.callback);
        session_id(&mut self.seen, admin.cookie());
        let (status, page) = confirm(&self.stack, &mut admin, &signed_in.body, None).await;
        assert_eq!(status, 200, "{page}");
        assert_eq!(self.stack.partner(TENANT_2).unwrap()["status"], "revoked");

        // A new key-encryption key: the old one leaves the key file.
        self.stack.cli(&["keys", "rotate"]);
        self.seen.keys_in(key_file);
        self.stack
            .cli(&["partners", "purge", "--partner", TENANT_1, "--yes"]);
    }

    /// The service restarted with the certificate (a cold token request signs an assertion)
    /// and a one-second rotation period; Trent consents again and the IdP fails his next
    /// refresh, so a scheduled rotation fails, which the service logs at debug level.
    async fn certificate_and_scheduler(&mut self, creds: &(String, String), cert: &[PathBuf; 2]) {
        for (name, path) in ["SAMVAULT_CLIENT_CERT", "SAMVAULT_CLIENT_KEY_FILE"]
            .iter()
            .zip(cert)
        {
            self.stack
                .env
                .push((name.to_string(), path.display().to_string()));
        }
        self.stack
            .env
            .push(("SAMVAULT_ROTATE_AFTER".into(), "1s".into()));
        self.stack.kill_replica(0);
        self.stack.start_replica(0).await;
        assert!(!self.token(creds, CONTOSO, ARM).await);
        let counters = self.stack.counters().await;
        let assertions = counters["client_auth"]["client_assertion"].as_u64();
        assert!(assertions >= Some(1), "{counters}");

        let fault = json!({ "count": 1, "status": 503 });
        let tenant_faults = format!("tenants/{WINGTIP}/faults");
        self.stack.sim(Method::POST, &tenant_faults, fault).await;
        self.consent(None, "trent@wingtip.example").await;
        let stack = &self.stack;
        eventually(
            Duration::from_secs(20),
            "a scheduled rotation fails",
            || async { stack.log(0).contains("scheduled rotation failed") },
        )
        .await;
        self.stack.cli(&["partners", "list", "--json"]);
    }

    /// What the IdP issued: every refresh token, code, access and id token. The codes of the
    /// callbacks and the access tokens the API returned must be among them.
    async fn issued(&mut self) {
        let grants = self.stack.sim(Method::GET, "grants", Value::Null).await;
        for grant in grants.as_array().unwrap() {
            let token = grant["refresh_token"].as_str().unwrap();
            self.seen.opaque(Kind::RefreshToken, token);
        }
        let issued = self.stack.sim(Method::GET, "issued", Value::Null).await;
        let listed = |key: &str| -> Vec<String> {
            let list = issued[key].as_array().unwrap().iter();
            list.map(|v| v.as_str().unwrap().to_string()).collect()
        };
        let codes = listed("codes");
        for callback in self.callbacks.iter().filter(|c| c.contains("code=")) {
            assert!(
                codes.contains(&code_of(callback)),
                "/_sim/issued lists every code"
            );
        }
        for code in &codes {
            self.seen.opaque(Kind::AuthorizationCode, code);
        }
        let access_tokens = listed("access_tokens");
        for token in &access_tokens {
            self.seen.jwt(Kind::AccessToken, token);
        }
        assert_eq!(
            self.seen.count(Kind::AccessToken),
            access_tokens.len(),
            "/_sim/issued lists every access token the API returned"
        );
        for token in listed("id_tokens") {
            self.seen.jwt(Kind::IdToken, &token);
        }
    }

    /// Where a leak would show: the database, the service's and the dev IdP's logs, and both
    /// streams of every CLI command run.
    fn places(&self) -> Vec<Place> {
        let file = |name: &str, path: PathBuf| Place {
            name: name.into(),
            bytes: std::fs::read(path).unwrap(),
            stdout_of: None,
        };
        let mut places = vec![
            Place {
                name: format!("the database ({:?} dump)", self.backend),
                bytes: self.stack.database_dump(),
                stdout_of: None,
            },
            file("the service's log", self.stack.log_path(0)),
            file("the dev IdP's log", self.stack.idp_log_path()),
        ];
        for (i, run) in self.stack.cli_runs.lock().unwrap().iter().enumerate() {
            let command = format!("`samvault {}`", run.args[..2].join(" "));
            places.push(Place {
                name: format!("the stdout of {command} (run {i})"),
                bytes: run.stdout.clone(),
                stdout_of: Some(i),
            });
            places.push(Place {
                name: format!("the stderr of {command} (run {i})"),
                bytes: run.stderr.clone(),
                stdout_of: None,
            });
        }
        places
    }
}

async fn no_secret_in_logs_or_database(backend: Backend) {
    let Some(db) = support::fresh_database(backend).await else {
        return;
    };
    let started = std::time::Instant::now();
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = dev_cert(certs.path());
    // Status changes go to a webhook nobody answers: deliveries fail and are retried.
    let webhook_secret = format!("whsec-{}", uuid::Uuid::new_v4().simple());
    let webhook_token = format!("hook-{}", uuid::Uuid::new_v4().simple());
    let metrics_token = format!("metrics-{}", uuid::Uuid::new_v4().simple());
    let webhook = format!(
        "http://127.0.0.1:{}/hook?token={webhook_token}",
        free_port()
    );
    let options = StackOptions::default()
        .idp_arg("--client-cert")
        .idp_arg(cert.to_str().unwrap())
        .env("SAMVAULT_CONSENT_SCOPES", CONSENT_SCOPES)
        .env("SAMVAULT_WEBHOOK_URL", &webhook)
        .env("SAMVAULT_WEBHOOK_SECRET", &webhook_secret)
        .env("SAMVAULT_METRICS_TOKEN", &metrics_token);
    let stack = Stack::start(&db.url, options).await;
    // A scrape with the token and one with a wrong one: neither may be logged.
    for token in [metrics_token.as_str(), "wrong-metrics-token-0000"] {
        let scrape = stack
            .http
            .get(format!("{}/metrics", stack.sv()))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let expected = if token == metrics_token { 200 } else { 401 };
        assert_eq!(scrape.status(), expected);
    }
    let key_file = stack.dir.path().join("samvault.key");
    let mut run = Run {
        stack,
        backend,
        seen: Seen::default(),
        callbacks: Vec::new(),
    };
    run.seen.text(Kind::AppClientSecret, APP_SECRET);
    run.seen.text(Kind::WebhookSecret, &webhook_secret);
    run.seen.text(Kind::WebhookSecret, &webhook_token);
    run.seen.text(Kind::MetricsToken, &metrics_token);
    run.seen.private_key(&key);
    run.seen.keys_in(&key_file);

    run.consents().await;
    let creds = run.integration().await;
    run.customers(&creds).await;
    let creds = run.ops(&creds.0).await;
    run.remediation(&key_file).await;
    run.certificate_and_scheduler(&creds, &[cert, key]).await;
    run.issued().await;

    let places = run.places();
    let log = String::from_utf8_lossy(&places[1].bytes).into_owned();
    let debug_lines = log.lines().filter(|l| l.contains("DEBUG")).count();
    assert!(debug_lines > 0, "debug lines are captured");
    assert!(
        log.contains("refresh token redeemed"),
        "the service's log is captured"
    );
    assert!(!places[2].bytes.is_empty(), "the dev IdP's log is captured");
    let seen = &run.seen;
    let counts: BTreeMap<Kind, usize> = AT_LEAST
        .iter()
        .map(|(kind, _)| (*kind, seen.count(*kind)))
        .collect();
    for (kind, least) in AT_LEAST {
        assert!(
            counts[&kind] >= least,
            "only {} {kind:?} seen (at least {least} expected): {counts:?}",
            counts[&kind]
        );
    }
    let leaks = leaks(seen, &places);
    assert!(
        leaks.is_empty(),
        "secrets where none may be:\n{}",
        leaks.join("\n")
    );
    eprintln!(
        "{backend:?}: {} secrets {counts:?} in {} forms, none in {} places ({} log lines, {debug_lines} debug); {:.1} s",
        seen.secrets.len(),
        seen.secrets.iter().map(|s| s.forms.len()).sum::<usize>(),
        places.len(),
        log.lines().count(),
        started.elapsed().as_secs_f64()
    );
}

on_both_backends!(no_secret_in_logs_or_database);
