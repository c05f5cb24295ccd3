//! A running samvault for end-to-end tests: the real `samvault dev-idp` and one or more
//! `samvault serve` replicas as child processes, a cookie-keeping browser for the onboarding
//! flow, and helpers to read the IdP's `/_sim/` counters and the database.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};

pub const CONTOSO: &str = "6f3a2a5e-0c1d-4a3b-8f4e-1c2d3e4f5a01";
pub const WINGTIP: &str = "6f3a2a5e-0c1d-4a3b-8f4e-1c2d3e4f5a02";
pub const FABRIKAM: &str = "6f3a2a5e-0c1d-4a3b-8f4e-1c2d3e4f5a03";
pub const PARTNER_CENTER: &str = "https://api.partnercenter.microsoft.com";
/// The CPV app registered in the dev IdP's demo directory, and its secret (fixtures).
pub const DEMO_CLIENT_ID: &str = "5a7e3c1d-0000-4000-8000-00000000c0de";
pub const DEMO_CLIENT_SECRET: &str = "samvault-demo-secret";

/// Tenant k of the dev IdP's generated directory (`--tenants N`).
pub fn generated_tenant(k: u32) -> String {
    format!("00000000-0000-4000-8000-{k:012}")
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed when the test ends, however it ends.
pub struct Proc(pub Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub async fn wait_ready(http: &reqwest::Client, url: &str) {
    for _ in 0..400 {
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

/// Polls `check` every 100 ms until it holds or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for: {what}");
}

pub struct StackOptions {
    /// Extra arguments for `samvault dev-idp` (e.g. `--strict-rotation`).
    pub idp_args: Vec<String>,
    /// The dev IdP serves HTTPS with a test CA that samvault trusts through
    /// `SAMVAULT_EXTRA_CA_FILE` (as Entra ID behind a TLS-inspecting proxy).
    pub idp_https: bool,
    /// Extra environment for every replica.
    pub env: Vec<(String, String)>,
    pub replicas: usize,
}

impl Default for StackOptions {
    fn default() -> Self {
        Self {
            idp_args: vec!["--tenants".into(), "2".into()],
            idp_https: false,
            env: vec![],
            replicas: 1,
        }
    }
}

impl StackOptions {
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn idp_arg(mut self, arg: &str) -> Self {
        self.idp_args.push(arg.into());
        self
    }

    /// The dev IdP generates `n` extra tenants (`--tenants n`, 2 by default).
    pub fn tenants(mut self, n: u32) -> Self {
        let at = self
            .idp_args
            .iter()
            .position(|a| a == "--tenants")
            .expect("default has --tenants");
        self.idp_args[at + 1] = n.to_string();
        self
    }

    pub fn replicas(mut self, n: usize) -> Self {
        self.replicas = n;
        self
    }

    /// `serve` syncs and consents customers in the background (`SAMVAULT_CUSTOMERS=true`).
    pub fn customers(self) -> Self {
        self.env("SAMVAULT_CUSTOMERS", "true")
    }

    pub fn idp_over_https(mut self) -> Self {
        self.idp_https = true;
        self
    }
}

/// A CA and a certificate for 127.0.0.1 it signed, as `ca.pem`, `server.pem` and
/// `server.key` in `dir` (`samvault dev-cert --test-ca`).
pub fn write_test_ca(dir: &Path) {
    samvault_command(&["dev-cert", "--test-ca", "--out", &dir.display().to_string()]);
}

/// A self-signed CPV app certificate valid `from..until` (Unix seconds), written by
/// `samvault dev-cert` into `dir`: `(certificate path, key path)`.
pub fn dev_cert_valid(dir: &Path, name: &str, from: i64, until: i64) -> (PathBuf, PathBuf) {
    samvault_command(&[
        "dev-cert",
        "--out",
        &dir.display().to_string(),
        "--name",
        name,
        &format!("--not-before={from}"),
        &format!("--not-after={until}"),
    ]);
    (dir.join("cpv-app.crt"), dir.join("cpv-app.key"))
}

/// Runs `samvault ARGS` to completion; panics with its output if it fails.
fn samvault_command(args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_samvault"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "samvault {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub struct Replica {
    pub url: String,
    /// `SAMVAULT_PUBLIC_URL` when it is not `url` (the replica behind an https terminator).
    pub public_url: Option<String>,
    port: u16,
    proc: Option<Proc>,
}

impl Replica {
    /// The running process's id.
    pub fn pid(&self) -> u32 {
        self.proc.as_ref().expect("a running replica").0.id()
    }

    /// A replica slot on a free port, started later with [`Stack::start_replica`].
    pub fn new() -> Replica {
        let port = free_port();
        Replica {
            url: format!("http://127.0.0.1:{port}"),
            public_url: None,
            port,
            proc: None,
        }
    }
}

/// One command run with [`Stack::cli`]: what it was asked and everything it printed.
pub struct CliRun {
    pub args: Vec<String>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// The dev IdP and samvault replicas sharing one database and one key file.
pub struct Stack {
    pub dir: tempfile::TempDir,
    pub db_url: String,
    pub idp: String,
    pub replicas: Vec<Replica>,
    pub env: Vec<(String, String)>,
    pub http: reqwest::Client,
    /// Every command run with [`Stack::cli`], in order.
    pub cli_runs: std::sync::Mutex<Vec<CliRun>>,
    _idp_proc: Option<Proc>,
}

impl Stack {
    pub async fn start(db_url: &str, options: StackOptions) -> Stack {
        let dir = tempfile::tempdir().unwrap();
        let idp_port = free_port();
        let scheme = if options.idp_https { "https" } else { "http" };
        let idp = format!("{scheme}://127.0.0.1:{idp_port}");
        let idp_log = std::fs::File::create(dir.path().join("idp.log")).unwrap();
        let mut idp_args = options.idp_args.clone();
        let mut http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none());
        let mut options = options;
        if options.idp_https {
            write_test_ca(dir.path());
            let file = |name: &str| dir.path().join(name).display().to_string();
            idp_args.extend(["--tls-cert".into(), file("server.pem")]);
            idp_args.extend(["--tls-key".into(), file("server.key")]);
            options
                .env
                .push(("SAMVAULT_EXTRA_CA_FILE".into(), file("ca.pem")));
            let ca = std::fs::read(dir.path().join("ca.pem")).unwrap();
            http = http.tls_certs_merge([reqwest::Certificate::from_pem(&ca).unwrap()]);
        }
        let idp_proc = Command::new(env!("CARGO_BIN_EXE_samvault"))
            .args(["dev-idp", "--listen", &format!("127.0.0.1:{idp_port}")])
            .args(&idp_args)
            .stdout(idp_log.try_clone().unwrap())
            .stderr(idp_log)
            .spawn()
            .unwrap();
        let mut env: Vec<(String, String)> = [
            ("DATABASE_URL", db_url),
            ("SAMVAULT_AUTHORITY", &idp),
            ("SAMVAULT_CLIENT_ID", DEMO_CLIENT_ID),
            ("SAMVAULT_CLIENT_SECRET", DEMO_CLIENT_SECRET),
            // The dev IdP stands in for Partner Center. Customer work in the background is
            // off unless a test turns it on (`StackOptions::customers`): it would redeem
            // grants (and fill the token cache) behind other tests' backs.
            ("SAMVAULT_PARTNER_CENTER_URL", &idp),
            ("SAMVAULT_CUSTOMERS", "false"),
            (
                "SAMVAULT_KEY_PROVIDER",
                &format!("local:{}", dir.path().join("samvault.key").display()),
            ),
            (
                "RUST_LOG",
                "debug,sqlx=warn,hyper=info,h2=info,rustls=info,tower_sessions=info,reqwest=info",
            ),
            // Tests consent many partners from one address; the limit's own tests lower it.
            ("SAMVAULT_ONBOARD_RATE", "100000"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        env.extend(options.env);
        let http = http.build().unwrap();
        wait_ready(
            &http,
            &format!("{idp}/common/v2.0/.well-known/openid-configuration"),
        )
        .await;
        // With `replicas(0)` one slot still exists, to be started later by the test.
        let replicas = (0..options.replicas.max(1))
            .map(|_| Replica::new())
            .collect::<Vec<Replica>>();
        // Commands run from the test (invite create) speak for the first replica.
        env.push(("SAMVAULT_PUBLIC_URL".into(), replicas[0].url.clone()));
        let mut stack = Stack {
            dir,
            db_url: db_url.to_string(),
            idp,
            replicas,
            env,
            http,
            cli_runs: Default::default(),
            _idp_proc: Some(Proc(idp_proc)),
        };
        for i in 0..options.replicas {
            stack.start_replica(i).await;
        }
        stack
    }

    /// A stack around an already running demo (no processes of its own).
    pub fn attach(dir: tempfile::TempDir, idp: String, sv: String, http: reqwest::Client) -> Stack {
        let port = sv.rsplit(':').next().unwrap().parse().unwrap();
        Stack {
            dir,
            db_url: String::new(),
            idp,
            replicas: vec![Replica {
                url: sv,
                public_url: None,
                port,
                proc: None,
            }],
            env: vec![],
            http,
            cli_runs: Default::default(),
            _idp_proc: None,
        }
    }

    /// Ties `process` (a running demo) to this stack: it ends when the stack is dropped.
    pub fn keep_alive(mut self, process: Proc) -> Stack {
        self._idp_proc = Some(process);
        self
    }

    /// The first replica's base URL.
    pub fn sv(&self) -> &str {
        &self.replicas[0].url
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_samvault"));
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    pub fn log_path(&self, replica: usize) -> PathBuf {
        self.dir.path().join(format!("samvault-{replica}.log"))
    }

    /// The dev IdP's output (`idp.log`).
    pub fn idp_log_path(&self) -> PathBuf {
        self.dir.path().join("idp.log")
    }

    pub fn log(&self, replica: usize) -> String {
        std::fs::read_to_string(self.log_path(replica)).unwrap_or_default()
    }

    /// The log once it holds every one of `lines`, or as it is after 5 s: `serve` writes its
    /// log from a thread of its own, a moment after the answer that the test saw.
    pub async fn log_holding(&self, replica: usize, lines: &[&str]) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let log = self.log(replica);
            if lines.iter().all(|l| log.contains(l)) || tokio::time::Instant::now() > deadline {
                return log;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn start_replica(&mut self, i: usize) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(i))
            .unwrap();
        let port = self.replicas[i].port;
        let child = self
            .command(&["serve"])
            .env("SAMVAULT_LISTEN", format!("127.0.0.1:{port}"))
            .env(
                "SAMVAULT_PUBLIC_URL",
                self.replicas[i]
                    .public_url
                    .as_ref()
                    .unwrap_or(&self.replicas[i].url),
            )
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.replicas[i].proc = Some(Proc(child));
        wait_ready(&self.http, &format!("{}/healthz", self.replicas[i].url)).await;
    }

    /// SIGKILL: no shutdown of any kind.
    pub fn kill_replica(&mut self, i: usize) {
        self.replicas[i].proc = None;
    }

    /// SIGTERM, as a deploy stops a service, and waits until the process has exited.
    pub fn stop_replica(&mut self, i: usize) {
        if let Some(mut proc) = self.replicas[i].proc.take() {
            let pid = proc.0.id().to_string();
            let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
            assert!(sent.success(), "kill -TERM {pid}");
            let status = proc.0.wait().unwrap();
            assert!(
                status.success(),
                "a stopped replica exits cleanly: {status}"
            );
        }
    }

    /// Runs a CLI command to completion and returns its stdout (both streams are kept in
    /// [`Stack::cli_runs`]).
    pub fn cli(&self, args: &[&str]) -> String {
        let out = self.command(args).output().unwrap();
        self.cli_runs.lock().unwrap().push(CliRun {
            args: args.iter().map(|a| a.to_string()).collect(),
            stdout: out.stdout.clone(),
            stderr: out.stderr.clone(),
        });
        assert!(
            out.status.success(),
            "samvault {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn partners(&self) -> Vec<Value> {
        serde_json::from_str::<Vec<Value>>(&self.cli(&["partners", "list", "--json"])).unwrap()
    }

    /// Every partner's status by tenant id, from `samvault partners list`.
    pub fn statuses(&self) -> std::collections::BTreeMap<String, String> {
        self.partners()
            .into_iter()
            .map(|p| {
                (
                    p["tenant_id"].as_str().unwrap().to_string(),
                    p["status"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    pub fn partner(&self, tenant: &str) -> Option<Value> {
        self.partners()
            .into_iter()
            .find(|p| p["tenant_id"] == tenant)
    }

    pub async fn sim(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let mut request = self
            .http
            .request(method, format!("{}/_sim/{path}", self.idp));
        if !body.is_null() {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        assert!(
            response.status().is_success(),
            "/_sim/{path}: {}",
            response.status()
        );
        response.json().await.unwrap_or(Value::Null)
    }

    pub async fn counters(&self) -> Value {
        self.sim(reqwest::Method::GET, "counters", Value::Null)
            .await
    }

    pub async fn refresh_calls(&self) -> u64 {
        self.counters().await["token_calls"]["refresh_token"]
            .as_u64()
            .unwrap_or(0)
    }

    pub async fn advance_days(&self, days: u64) {
        self.sim(
            reqwest::Method::POST,
            "clock/advance",
            json!({ "days": days }),
        )
        .await;
    }

    /// Creates an integration client with the CLI; returns `(client_id, client_secret)`.
    pub fn client(&self, resources: &[&str]) -> (String, String) {
        self.client_with_rate_limit(resources, 600)
    }

    /// A client for load: a rate limit (requests per minute) far above what the test sends,
    /// so every refusal it meets is the one under test.
    pub fn client_with_rate_limit(&self, resources: &[&str], per_minute: u32) -> (String, String) {
        let per_minute = per_minute.to_string();
        let mut args = vec!["client", "create", "--name", "test", "--json"];
        args.extend(["--rate-limit", &per_minute]);
        for r in resources {
            args.extend(["--resource", r]);
        }
        let created: Value = serde_json::from_str(&self.cli(&args)).unwrap();
        (
            created["client_id"].as_str().unwrap().into(),
            created["client_secret"].as_str().unwrap().into(),
        )
    }

    /// A token request to `replica`, answered as it came (status, headers, body unread).
    pub async fn token_response(
        &self,
        replica: usize,
        creds: &(String, String),
        tenant: &str,
        body: &Value,
    ) -> reqwest::Response {
        self.token_request(replica, creds, tenant, body)
            .send()
            .await
            .unwrap()
    }

    /// A token request ready to send (to spawn it, or to watch it fail).
    pub fn token_request(
        &self,
        replica: usize,
        creds: &(String, String),
        tenant: &str,
        body: &Value,
    ) -> reqwest::RequestBuilder {
        self.http
            .post(format!(
                "{}/api/v1/partners/{tenant}/token",
                self.replicas[replica].url
            ))
            .basic_auth(&creds.0, Some(&creds.1))
            .json(body)
    }

    pub async fn token_at(
        &self,
        replica: usize,
        creds: &(String, String),
        tenant: &str,
        body: Value,
    ) -> (u16, Value) {
        let response = self.token_response(replica, creds, tenant, &body).await;
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

    pub async fn token(&self, creds: &(String, String), tenant: &str, body: Value) -> (u16, Value) {
        self.token_at(0, creds, tenant, body).await
    }

    /// Gets a token for `tenant` from every replica, so that each holds one in its cache
    /// (checked on the last): what a revocation must then reach.
    pub async fn cache_on_every_replica(&self, creds: &(String, String), tenant: &str) {
        for replica in 0..self.replicas.len() {
            let (status, body) = self.token_at(replica, creds, tenant, token_body()).await;
            assert_eq!(status, 200, "{body}");
        }
        let last = self.replicas.len() - 1;
        let (_, body) = self.token_at(last, creds, tenant, token_body()).await;
        assert_eq!(body["cached"], true, "replica {last} serves from its cache");
    }

    /// Everything a dump of the database shows, as bytes.
    pub fn database_dump(&self) -> Vec<u8> {
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

    /// Consents `upn` through the real onboarding flow; panics unless it succeeds.
    pub async fn consent(&self, upn: &str) {
        let done = Browser::new(self).consent(upn, true, "accept").await;
        assert_eq!(done.status, 200, "consent of {upn}: {}", done.body);
    }

    /// A direct database handle (for assertions on rows the API does not expose).
    pub async fn db(&self) -> samvault::storage::Db {
        samvault::storage::Db::connect(&secrecy::SecretString::from(self.db_url.clone()))
            .await
            .unwrap()
    }

    /// A direct database handle that can write to the audit log: the chain's key opened with
    /// the stack's key file, as a CLI command would.
    pub async fn audited_db(&self) -> samvault::storage::Db {
        let (provider, _) = samvault::vault::LocalKeyProvider::open_or_create(
            &self.dir.path().join("samvault.key"),
        )
        .unwrap();
        let vault = samvault::vault::Vault::new(std::sync::Arc::new(provider));
        let settings = samvault::audit_chain::Settings::default();
        samvault::audit_chain::open(self.db().await, &vault, &settings)
            .await
            .unwrap()
    }

    pub async fn scalar(&self, sql: &'static str, tenant: &str) -> i64 {
        use sqlx::Row;
        let db = self.db().await;
        let row = sqlx::query(sql)
            .bind(tenant)
            .fetch_one(db.pool())
            .await
            .unwrap();
        row.try_get::<i64, _>(0).unwrap()
    }
}

/// A browser: one cookie (samvault's session), no redirects followed.
pub struct Browser<'a> {
    stack: &'a Stack,
    cookie: Option<String>,
}

pub struct Outcome {
    pub status: u16,
    pub body: String,
    pub callback_url: Option<String>,
}

pub fn field(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html
        .find(&marker)
        .unwrap_or_else(|| panic!("no {name} field in {html}"))
        + marker.len();
    html[start..].split('"').next().unwrap().to_string()
}

impl<'a> Browser<'a> {
    pub fn new(stack: &'a Stack) -> Self {
        Browser {
            stack,
            cookie: None,
        }
    }

    /// The session cookie (`samvault_session=…`) this browser sends, if any.
    pub fn cookie(&self) -> Option<&str> {
        self.cookie.as_deref()
    }

    fn keep_cookie(&mut self, response: &reqwest::Response) {
        for value in response.headers().get_all("set-cookie") {
            let pair = value.to_str().unwrap().split(';').next().unwrap();
            if let Some(id) = pair.strip_prefix("samvault_session=") {
                // An empty value is the server removing the cookie.
                self.cookie = (!id.is_empty()).then(|| pair.to_string());
            }
        }
    }

    pub async fn get(&mut self, url: &str) -> reqwest::Response {
        self.send(self.stack.http.get(url)).await
    }

    /// Posts an HTML form (`application/x-www-form-urlencoded`).
    pub async fn post_form(&mut self, url: &str, form: &[(&str, &str)]) -> reqwest::Response {
        self.send(self.stack.http.post(url).form(form)).await
    }

    async fn send(&mut self, mut request: reqwest::RequestBuilder) -> reqwest::Response {
        if let Some(c) = &self.cookie {
            request = request.header("cookie", c);
        }
        let response = request.send().await.unwrap();
        self.keep_cookie(&response);
        response
    }

    /// Opens an onboarding page and presses "Grant consent"; returns the IdP authorize URL.
    pub async fn start(&mut self, page: &str) -> String {
        let html = self.get(page).await.text().await.unwrap();
        assert!(html.contains("Grant consent"), "{html}");
        let mut form = vec![("csrf", field(&html, "csrf"))];
        if html.contains("name=\"invitation\"") {
            form.push(("invitation", field(&html, "invitation")));
        }
        let response = self
            .stack
            .http
            .post(format!("{}/onboard/start", self.stack.sv()))
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
    pub async fn sign_in(
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

    pub async fn consent(&mut self, upn: &str, mfa: bool, decision: &str) -> Outcome {
        let page = format!("{}/onboard", self.stack.sv());
        self.consent_from(&page, upn, mfa, decision).await
    }

    pub async fn consent_from(
        &mut self,
        page: &str,
        upn: &str,
        mfa: bool,
        decision: &str,
    ) -> Outcome {
        let authorize = self.start(page).await;
        let callback = self.sign_in(&authorize, upn, mfa, decision).await;
        assert!(
            callback.starts_with(&format!("{}/onboard/callback", self.stack.sv())),
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

/// `samvault dev-cert --out DIR`: the demo's way to get a certificate, no openssl needed.
pub fn dev_cert(dir: &Path) -> (PathBuf, PathBuf) {
    samvault_command(&["dev-cert", "--out", dir.to_str().unwrap()]);
    (dir.join("cpv-app.crt"), dir.join("cpv-app.key"))
}

/// The base64 lines of a PEM file: none of them may ever appear in a log or a dump.
pub fn pem_body_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() > 20)
        .map(str::to_string)
        .collect()
}

pub fn jwt_claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap()
}

pub fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

pub fn token_body() -> Value {
    json!({ "resource": PARTNER_CENTER, "purpose": "nightly invoice sync" })
}
