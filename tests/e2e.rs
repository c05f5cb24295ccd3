//! End to end, as a CPV would run it: the real `samvault` binary (`serve`, `client create`,
//! `partners list`) against the real `samvault dev-idp`, on SQLite and on PostgreSQL.
//! A plain HTTP client walks the onboarding page, the IdP's sign-in form and the callback.

mod support;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;
use serde_json::Value;
use support::Backend;

const CONTOSO: &str = "6f3a2a5e-0c1d-4a3b-8f4e-1c2d3e4f5a01";
const WINGTIP: &str = "6f3a2a5e-0c1d-4a3b-8f4e-1c2d3e4f5a02";
const FABRIKAM: &str = "6f3a2a5e-0c1d-4a3b-8f4e-1c2d3e4f5a03";
const TENANT_1: &str = "00000000-0000-4000-8000-000000000001";
const PARTNER_CENTER: &str = "https://api.partnercenter.microsoft.com";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed when the test ends, however it ends.
struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The dev IdP and samvault as two processes sharing a scratch directory.
struct Stack {
    dir: tempfile::TempDir,
    db_url: String,
    idp: String,
    sv: String,
    env: Vec<(String, String)>,
    _procs: Vec<Proc>,
    http: reqwest::Client,
}

async fn wait_ready(http: &reqwest::Client, url: &str) {
    for _ in 0..300 {
        if http
            .get(url)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{url} never became ready");
}

impl Stack {
    async fn start(db_url: &str, extra_env: &[(&str, &str)]) -> Stack {
        let dir = tempfile::tempdir().unwrap();
        let idp_port = free_port();
        let sv_port = free_port();
        let idp = format!("http://127.0.0.1:{idp_port}");
        let sv = format!("http://127.0.0.1:{sv_port}");
        let idp_proc = Command::new(env!("CARGO_BIN_EXE_samvault"))
            .args([
                "dev-idp",
                "--listen",
                &format!("127.0.0.1:{idp_port}"),
                "--tenants",
                "2",
            ])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("idp.log")).unwrap())
            .spawn()
            .unwrap();
        let mut env: Vec<(String, String)> = [
            ("DATABASE_URL", db_url),
            ("SAMVAULT_LISTEN", &format!("127.0.0.1:{sv_port}")),
            ("SAMVAULT_PUBLIC_URL", &sv),
            ("SAMVAULT_AUTHORITY", &idp),
            ("SAMVAULT_CLIENT_ID", "5a7e3c1d-0000-4000-8000-00000000c0de"),
            ("SAMVAULT_CLIENT_SECRET", "samvault-demo-secret"),
            (
                "SAMVAULT_KEY_PROVIDER",
                &format!("local:{}", dir.path().join("samvault.key").display()),
            ),
            (
                "RUST_LOG",
                "debug,sqlx=warn,hyper=info,h2=info,rustls=info,tower_sessions=info",
            ),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        for (k, v) in extra_env {
            env.push((k.to_string(), v.to_string()));
        }
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        wait_ready(
            &http,
            &format!("{idp}/common/v2.0/.well-known/openid-configuration"),
        )
        .await;
        let mut stack = Stack {
            dir,
            db_url: db_url.to_string(),
            idp,
            sv,
            env,
            _procs: vec![Proc(idp_proc)],
            http,
        };
        stack.start_service().await;
        stack
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_samvault"));
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("samvault.log")
    }

    async fn start_service(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let child = self
            .command(&["serve"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self._procs.push(Proc(child));
        wait_ready(&self.http, &format!("{}/healthz", self.sv)).await;
    }

    /// Runs a CLI command to completion and returns its stdout.
    fn cli(&self, args: &[&str]) -> String {
        let out = self.command(args).output().unwrap();
        assert!(
            out.status.success(),
            "samvault {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn partners(&self) -> Vec<Value> {
        serde_json::from_str::<Vec<Value>>(&self.cli(&["partners", "list", "--json"])).unwrap()
    }

    fn partner(&self, tenant: &str) -> Option<Value> {
        self.partners()
            .into_iter()
            .find(|p| p["tenant_id"] == tenant)
    }

    async fn sim(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let response = self
            .http
            .request(method, format!("{}/_sim/{path}", self.idp))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "/_sim/{path}: {}",
            response.status()
        );
        response.json().await.unwrap_or(Value::Null)
    }

    async fn refresh_calls(&self) -> u64 {
        let counters = self
            .sim(reqwest::Method::GET, "counters", Value::Null)
            .await;
        counters["token_calls"]["refresh_token"]
            .as_u64()
            .unwrap_or(0)
    }

    async fn token(&self, creds: &(String, String), tenant: &str, body: Value) -> (u16, Value) {
        let response = self
            .http
            .post(format!("{}/api/v1/partners/{tenant}/token", self.sv))
            .basic_auth(&creds.0, Some(&creds.1))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        if status == 200 {
            assert_eq!(response.headers()["cache-control"], "no-store");
        } else {
            assert_eq!(
                response.headers()["content-type"],
                "application/problem+json"
            );
        }
        (status, response.json().await.unwrap())
    }

    /// Everything a dump of the database shows, as bytes.
    fn database_dump(&self) -> Vec<u8> {
        if let Some(path) = self.db_url.strip_prefix("sqlite://") {
            let path = path.split('?').next().unwrap();
            let mut bytes = Vec::new();
            for suffix in ["", "-wal", "-shm"] {
                if let Ok(b) = std::fs::read(format!("{path}{suffix}")) {
                    bytes.extend(b);
                }
            }
            bytes
        } else {
            let out = Command::new("pg_dump")
                .arg("--data-only")
                .arg(&self.db_url)
                .output()
                .expect("pg_dump runs");
            assert!(
                out.status.success(),
                "pg_dump: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            out.stdout
        }
    }
}

/// A browser: one cookie (samvault's session), no redirects followed.
struct Browser<'a> {
    stack: &'a Stack,
    cookie: Option<String>,
}

struct Outcome {
    status: u16,
    body: String,
    callback_url: Option<String>,
}

fn field(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html
        .find(&marker)
        .unwrap_or_else(|| panic!("no {name} field in {html}"))
        + marker.len();
    html[start..].split('"').next().unwrap().to_string()
}

impl<'a> Browser<'a> {
    fn new(stack: &'a Stack) -> Self {
        Browser {
            stack,
            cookie: None,
        }
    }

    fn keep_cookie(&mut self, response: &reqwest::Response) {
        for value in response.headers().get_all("set-cookie") {
            let pair = value
                .to_str()
                .unwrap()
                .split(';')
                .next()
                .unwrap()
                .to_string();
            if pair.starts_with("samvault_session=") {
                self.cookie = Some(pair);
            }
        }
    }

    async fn get(&mut self, url: &str) -> reqwest::Response {
        let mut request = self.stack.http.get(url);
        if let Some(c) = &self.cookie {
            request = request.header("cookie", c);
        }
        let response = request.send().await.unwrap();
        self.keep_cookie(&response);
        response
    }

    /// Opens the onboarding page and presses "Grant consent"; returns the IdP authorize URL.
    async fn start(&mut self, page: &str) -> String {
        let html = self.get(page).await.text().await.unwrap();
        assert!(html.contains("Grant consent"), "{html}");
        let mut form = vec![("csrf", field(&html, "csrf"))];
        if html.contains("name=\"invitation\"") {
            form.push(("invitation", field(&html, "invitation")));
        }
        let response = self
            .stack
            .http
            .post(format!("{}/onboard/start", self.stack.sv))
            .header("cookie", self.cookie.clone().unwrap())
            .form(&form)
            .send()
            .await
            .unwrap();
        self.keep_cookie(&response);
        assert_eq!(response.status(), 303);
        let location = response.headers()["location"].to_str().unwrap().to_string();
        assert!(location.starts_with(&self.stack.idp), "{location}");
        location
    }

    /// Fills the dev IdP's sign-in form as a person would and returns where it sends us.
    async fn sign_in(
        &mut self,
        authorize_url: &str,
        upn: &str,
        mfa: bool,
        consent: &str,
    ) -> String {
        let page = self.stack.http.get(authorize_url).send().await.unwrap();
        assert_eq!(page.status(), 200);
        let url = url::Url::parse(authorize_url).unwrap();
        let mut form: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        form.push(("upn".into(), upn.into()));
        if mfa {
            form.push(("mfa".into(), "on".into()));
        }
        form.push(("consent".into(), consent.into()));
        let action = format!("{}{}", self.stack.idp, url.path());
        let response = self
            .stack
            .http
            .post(action)
            .form(&form)
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_redirection(),
            "sign-in answered {}",
            response.status()
        );
        response.headers()["location"].to_str().unwrap().to_string()
    }

    async fn consent(&mut self, upn: &str, mfa: bool, decision: &str) -> Outcome {
        let page = format!("{}/onboard", self.stack.sv);
        self.consent_from(&page, upn, mfa, decision).await
    }

    async fn consent_from(&mut self, page: &str, upn: &str, mfa: bool, decision: &str) -> Outcome {
        let authorize = self.start(page).await;
        let callback = self.sign_in(&authorize, upn, mfa, decision).await;
        assert!(
            callback.starts_with(&format!("{}/onboard/callback", self.stack.sv)),
            "{callback}"
        );
        let response = self.get(&callback).await;
        Outcome {
            status: response.status().as_u16(),
            body: response.text().await.unwrap(),
            callback_url: Some(callback),
        }
    }
}

/// How many refresh-token versions samvault has stored for a tenant.
async fn grant_versions(db_url: &str, tenant: &str) -> i64 {
    use sqlx::Row;
    let db = samvault::storage::Db::connect(&secrecy::SecretString::from(db_url.to_string()))
        .await
        .unwrap();
    let row = sqlx::query("SELECT COUNT(*) AS n FROM grants WHERE tenant_id = $1")
        .bind(tenant)
        .fetch_one(db.pool())
        .await
        .unwrap();
    row.try_get::<i64, _>("n").unwrap()
}

fn jwt_claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap()
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

async fn consent_to_token_to_expiry(backend: Backend) {
    let Some(db) = support::fresh_database(backend).await else {
        return;
    };
    let mut stack = Stack::start(&db.url, &[]).await;
    let mut seen_secrets: Vec<String> = Vec::new();

    // Jane of Contoso consents with MFA: a success page naming Contoso.
    let mut browser = Browser::new(&stack);
    let done = browser
        .consent("jane@contoso.example", true, "accept")
        .await;
    assert_eq!(done.status, 200, "{}", done.body);
    assert!(
        done.body.contains("Consent recorded for Contoso"),
        "{}",
        done.body
    );
    assert!(done.body.contains(CONTOSO) && done.body.contains("jane@contoso.example"));
    assert!(done.body.contains("satisfied"), "MFA shown as satisfied");
    let contoso = stack.partner(CONTOSO).expect("Contoso stored");
    assert_eq!(contoso["status"], "active");
    assert_eq!(contoso["mfa"], true);

    // The same callback again: its state was used once and is gone.
    let replay = browser.get(done.callback_url.as_deref().unwrap()).await;
    assert_eq!(replay.status(), 400);

    // An integration client from the CLI, against the same database.
    let created: Value = serde_json::from_str(&stack.cli(&[
        "client",
        "create",
        "--name",
        "billing",
        "--json",
        "--resource",
        PARTNER_CENTER,
    ]))
    .unwrap();
    let creds = (
        created["client_id"].as_str().unwrap().to_string(),
        created["client_secret"].as_str().unwrap().to_string(),
    );
    seen_secrets.push(creds.1.clone());
    let body = serde_json::json!({ "resource": PARTNER_CENTER, "purpose": "nightly invoice sync" });

    let (status, first) = stack.token(&creds, CONTOSO, body.clone()).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["cached"], false);
    assert_eq!(first["token_type"], "Bearer");
    assert_eq!(first["mfa"], true);
    let claims = jwt_claims(first["access_token"].as_str().unwrap());
    assert_eq!(claims["aud"], PARTNER_CENTER);
    assert_eq!(claims["tid"], CONTOSO);
    seen_secrets.push(first["access_token"].as_str().unwrap().to_string());
    let (status, second) = stack.token(&creds, CONTOSO, body.clone()).await;
    assert_eq!(status, 200);
    assert_eq!(second["cached"], true);
    assert_eq!(second["access_token"], first["access_token"]);

    // Wrong secret, missing purpose, a resource the client is not scoped for.
    let (status, problem) = stack
        .token(
            &(creds.0.clone(), "svs_wrong".into()),
            CONTOSO,
            body.clone(),
        )
        .await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (401, Some("invalid_client"))
    );
    let (status, problem) = stack
        .token(
            &creds,
            CONTOSO,
            serde_json::json!({ "resource": PARTNER_CENTER }),
        )
        .await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (400, Some("invalid_request"))
    );
    let (status, problem) = stack
        .token(
            &creds,
            CONTOSO,
            serde_json::json!({ "resource": "https://graph.microsoft.com", "purpose": "x" }),
        )
        .await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (403, Some("resource_not_allowed"))
    );

    // Wingtip and generated tenant 1 consent too; neither is redeemed yet.
    for upn in ["trent@wingtip.example", "admin@tenant-1.example"] {
        let done = Browser::new(&stack).consent(upn, true, "accept").await;
        assert_eq!(done.status, 200, "{}", done.body);
    }

    // 60 days later a (cold) token call redeems once and stores a new version.
    stack
        .sim(
            reqwest::Method::POST,
            "clock/advance",
            serde_json::json!({ "days": 60 }),
        )
        .await;
    let before = stack.refresh_calls().await;
    let (status, wingtip) = stack.token(&creds, WINGTIP, body.clone()).await;
    assert_eq!(status, 200, "{wingtip}");
    assert_eq!(wingtip["cached"], false);
    seen_secrets.push(wingtip["access_token"].as_str().unwrap().to_string());
    assert_eq!(stack.refresh_calls().await, before + 1);
    let versions = grant_versions(&stack.db_url, WINGTIP).await;
    assert_eq!(versions, 2, "the new refresh token is stored as version 2");

    // 91 idle days: tenant 1's refresh token has expired.
    stack
        .sim(
            reqwest::Method::POST,
            "clock/advance",
            serde_json::json!({ "days": 31 }),
        )
        .await;
    let (status, problem) = stack.token(&creds, TENANT_1, body.clone()).await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (409, Some("reconsent_required")),
        "{problem}"
    );
    assert!(
        problem["detail"].as_str().unwrap().contains("AADSTS700082"),
        "{problem}"
    );
    let tenant1 = stack.partner(TENANT_1).unwrap();
    assert_eq!(tenant1["status"], "reconsent_required");
    assert_eq!(tenant1["status_code"], "700082");

    // A restarted service still opens what it sealed.
    stack._procs.pop();
    stack.start_service().await;
    let (status, again) = stack.token(&creds, WINGTIP, body.clone()).await;
    assert_eq!(status, 200, "{again}");
    seen_secrets.push(again["access_token"].as_str().unwrap().to_string());

    // No refresh token, access token or client secret is in the database or the log.
    let grants = stack.sim(reqwest::Method::GET, "grants", Value::Null).await;
    for grant in grants.as_array().unwrap() {
        seen_secrets.push(grant["refresh_token"].as_str().unwrap().to_string());
    }
    assert!(seen_secrets.len() >= 8);
    let dump = stack.database_dump();
    let log = std::fs::read(stack.log_path()).unwrap();
    assert!(
        contains(&log, "refresh token redeemed"),
        "the log is being captured"
    );
    for secret in &seen_secrets {
        assert!(
            !contains(&dump, secret),
            "a secret is in the database in clear"
        );
        assert!(!contains(&log, secret), "a secret is in the log");
    }
}

async fn refusals_store_nothing(backend: Backend) {
    let Some(db) = support::fresh_database(backend).await else {
        return;
    };
    let stack = Stack::start(&db.url, &[("SAMVAULT_CONSENT_TIMEOUT", "1s")]).await;

    // John of Fabrikam signs in without MFA: explained, nothing stored.
    let john = Browser::new(&stack)
        .consent("john@fabrikam.example", false, "accept")
        .await;
    assert_eq!(john.status, 403);
    assert!(
        john.body
            .contains("Multi-factor authentication is required"),
        "{}",
        john.body
    );
    // Jane without MFA: Contoso enforces it, the IdP refuses with AADSTS50076.
    let jane = Browser::new(&stack)
        .consent("jane@contoso.example", false, "accept")
        .await;
    assert_eq!(jane.status, 403);
    assert!(jane.body.contains("AADSTS50076"), "{}", jane.body);
    // Declined consent.
    let deny = Browser::new(&stack)
        .consent("jane@contoso.example", true, "deny")
        .await;
    assert_eq!(deny.status, 403);
    assert!(
        deny.body.contains("Consent was not granted"),
        "{}",
        deny.body
    );

    // Forged state, missing state, no session at all, expired state.
    let mut browser = Browser::new(&stack);
    let authorize = browser.start(&format!("{}/onboard", stack.sv)).await;
    let callback = browser
        .sign_in(&authorize, "jane@contoso.example", true, "accept")
        .await;
    let forged = callback.replace("state=", "state=forged");
    assert_eq!(browser.get(&forged).await.status(), 400);
    // The forged attempt consumed the pending sign-in: the genuine response is now refused too.
    assert_eq!(browser.get(&callback).await.status(), 400);
    let missing = callback.split("&state=").next().unwrap().to_string();
    assert_eq!(Browser::new(&stack).get(&missing).await.status(), 400);

    let mut other_browser = Browser::new(&stack);
    let authorize = browser.start(&format!("{}/onboard", stack.sv)).await;
    let callback = browser
        .sign_in(&authorize, "jane@contoso.example", true, "accept")
        .await;
    let stolen = other_browser.get(&callback).await;
    assert_eq!(
        stolen.status(),
        400,
        "a state is bound to the browser that started it"
    );

    let authorize = browser.start(&format!("{}/onboard", stack.sv)).await;
    let callback = browser
        .sign_in(&authorize, "jane@contoso.example", true, "accept")
        .await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let expired = browser.get(&callback).await;
    assert_eq!(expired.status(), 400);
    assert!(expired.text().await.unwrap().contains("expired"));

    // Posting the start form without the page's CSRF token.
    let response = stack
        .http
        .post(format!("{}/onboard/start", stack.sv))
        .form(&[("csrf", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);

    assert!(
        stack.partners().is_empty(),
        "nothing was stored: {:?}",
        stack.partners()
    );
    assert!(stack.partner(FABRIKAM).is_none());
}

async fn invitations_pin_the_tenant(backend: Backend) {
    let Some(db) = support::fresh_database(backend).await else {
        return;
    };
    let stack = Stack::start(&db.url, &[]).await;
    let invite: Value =
        serde_json::from_str(&stack.cli(&["invite", "create", "--tenant", WINGTIP, "--json"]))
            .unwrap();
    let url = invite["url"].as_str().unwrap();
    assert!(url.starts_with(&format!("{}/onboard/i/", stack.sv)));

    // Jane (Contoso) cannot use Wingtip's invitation.
    let mut browser = Browser::new(&stack);
    let authorize = browser.start(url).await;
    assert!(
        authorize.contains(&format!("/{WINGTIP}/oauth2/v2.0/authorize")),
        "{authorize}"
    );
    let done = Browser::new(&stack)
        .consent_from(url, "trent@wingtip.example", true, "accept")
        .await;
    assert_eq!(done.status, 200, "{}", done.body);
    assert!(done.body.contains("Wingtip"));
    // Used once; the link now says so.
    let again = Browser::new(&stack).get(url).await;
    assert_eq!(again.status(), 410);
    let unknown = Browser::new(&stack)
        .get(&format!("{}/onboard/i/nope", stack.sv))
        .await;
    assert_eq!(unknown.status(), 410);
    // invite.create and Trent's consent, and nothing for the refused attempt.
    assert_eq!(
        stack.cli(&["audit", "verify"]).trim_end(),
        "audit chain intact: 2 events"
    );
}

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread")]
            async fn $name() { super::$name(super::Backend::Sqlite).await }
            )*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread")]
            async fn $name() { super::$name(super::Backend::Postgres).await }
            )*
        }
    };
}

on_both_backends!(
    consent_to_token_to_expiry,
    refusals_store_nothing,
    invitations_pin_the_tenant
);

/// `samvault demo` (the README's first command) starts both servers and prints a client and a
/// curl line that work once Jane has consented.
#[tokio::test(flavor = "multi_thread")]
async fn demo_prints_working_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let (sv_port, idp_port) = (free_port(), free_port());
    let sv = format!("http://127.0.0.1:{sv_port}");
    let idp = format!("http://127.0.0.1:{idp_port}");
    let child = Command::new(env!("CARGO_BIN_EXE_samvault"))
        .args([
            "demo",
            "--listen",
            &format!("127.0.0.1:{sv_port}"),
            "--idp-listen",
            &format!("127.0.0.1:{idp_port}"),
        ])
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = Proc(child);
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    wait_ready(&http, &format!("{sv}/healthz")).await;
    // The banner is printed before serving starts; read it without blocking on the open pipe.
    let mut stdout = child.0.stdout.take().unwrap();
    let banner = tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut text = String::new();
        let mut buf = [0u8; 4096];
        while !text.contains("Ctrl-C stops the demo") {
            let n = stdout.read(&mut buf).unwrap();
            assert!(n > 0, "demo exited early: {text}");
            text.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        text
    })
    .await
    .unwrap();
    let value_after = |label: &str| {
        banner
            .split(label)
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    };
    let creds = (value_after("client_id:"), value_after("client_secret:"));
    assert!(
        banner.contains(&format!("curl -s -u '{}:{}'", creds.0, creds.1)),
        "{banner}"
    );
    assert!(dir.path().join("samvault-demo.db").exists());
    assert!(dir.path().join("samvault-demo.key").exists());

    let stack = Stack {
        dir,
        db_url: String::new(),
        idp,
        sv,
        env: vec![],
        _procs: vec![],
        http,
    };
    let done = Browser::new(&stack)
        .consent("jane@contoso.example", true, "accept")
        .await;
    assert!(
        done.body.contains("Consent recorded for Contoso"),
        "{}",
        done.body
    );
    let (status, token) = stack
        .token(
            &creds,
            CONTOSO,
            serde_json::json!({ "resource": PARTNER_CENTER, "purpose": "demo" }),
        )
        .await;
    assert_eq!(status, 200, "{token}");
    assert_eq!(
        jwt_claims(token["access_token"].as_str().unwrap())["tid"],
        CONTOSO
    );
}
