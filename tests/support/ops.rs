//! A user of the ops dashboard over real HTTP: [`Operator`] (a browser addressing the
//! service's paths) and [`Account`] (an ops user made with `samvault ops-user create`).
//! Used by the dashboard suite (tests/ops/) and the secret scan (tests/secrets.rs).

use samvault::ops::totp;
use serde_json::Value;

use super::stack::{Browser, Stack, field};

/// A user of the dashboard: a [`Browser`] (one session cookie, redirects not followed, so
/// they can be checked) addressing paths of the service.
pub struct Operator<'a> {
    pub stack: &'a Stack,
    pub browser: Browser<'a>,
}

impl<'a> Operator<'a> {
    pub fn new(stack: &'a Stack) -> Self {
        Operator {
            stack,
            browser: Browser::new(stack),
        }
    }

    pub fn cookie(&self) -> Option<String> {
        self.browser.cookie().map(str::to_string)
    }

    pub async fn get(&mut self, path: &str) -> (u16, String, reqwest::header::HeaderMap) {
        let response = self
            .browser
            .get(&format!("{}{path}", self.stack.sv()))
            .await;
        let (status, headers) = (response.status().as_u16(), response.headers().clone());
        (status, response.text().await.unwrap(), headers)
    }

    pub async fn post(
        &mut self,
        path: &str,
        form: &[(&str, &str)],
    ) -> (u16, String, Option<String>) {
        let url = format!("{}{path}", self.stack.sv());
        let response = self.browser.post_form(&url, form).await;
        let location = response
            .headers()
            .get("location")
            .map(|l| l.to_str().unwrap().to_string());
        (
            response.status().as_u16(),
            response.text().await.unwrap(),
            location,
        )
    }

    /// Opens the sign-in page and returns its CSRF token.
    pub async fn signin_csrf(&mut self) -> String {
        let (status, page, _) = self.get("/ops/signin").await;
        assert_eq!(status, 200, "{page}");
        field(&page, "csrf")
    }

    pub async fn sign_in(
        &mut self,
        user: &str,
        password: &str,
        code: &str,
    ) -> (u16, String, Option<String>) {
        let csrf = self.signin_csrf().await;
        self.post(
            "/ops/signin",
            &[
                ("csrf", &csrf),
                ("username", user),
                ("password", password),
                ("code", code),
            ],
        )
        .await
    }
}

pub struct Account {
    pub password: String,
    pub secret: Vec<u8>,
}

/// `samvault ops-user create --json`: what it prints, once (password, TOTP secret, URI).
pub fn create_ops_user(stack: &Stack, username: &str, role: &str) -> Value {
    let args = ["ops-user", "create", "--username", username, "--role", role];
    serde_json::from_str(&stack.cli(&[&args[..], &["--json"]].concat())).unwrap()
}

impl Account {
    pub fn create(stack: &Stack, username: &str, role: &str) -> Account {
        let out = create_ops_user(stack, username, role);
        assert!(
            out["otpauth_uri"]
                .as_str()
                .unwrap()
                .starts_with("otpauth://totp/")
        );
        Account {
            password: out["password"].as_str().unwrap().into(),
            secret: totp::from_base32(out["totp_secret"].as_str().unwrap()).unwrap(),
        }
    }

    /// The code of the current step + `offset` (the service accepts one step either side).
    pub fn code(&self, offset: i64) -> String {
        totp::code(&self.secret, totp::step(samvault::storage::now()) + offset)
    }
}

/// The password every test user chooses at first sign-in.
pub const NEW_PASSWORD: &str = "a new and long passphrase";

impl<'a> Operator<'a> {
    /// A new ops user with `role`, signed in and past the forced password change.
    pub async fn signed_in(stack: &'a Stack, username: &str, role: &str) -> Operator<'a> {
        let account = Account::create(stack, username, role);
        Operator::first_sign_in(stack, username, &account).await
    }

    /// `account`'s first sign-in: password + TOTP, then the forced change to [`NEW_PASSWORD`].
    pub async fn first_sign_in(
        stack: &'a Stack,
        username: &str,
        account: &Account,
    ) -> Operator<'a> {
        let mut op = Operator::new(stack);
        let (status, _, location) = op
            .sign_in(username, &account.password, &account.code(0))
            .await;
        assert_eq!((status, location.as_deref()), (303, Some("/ops/password")));
        let (_, page, _) = op.get("/ops/password").await;
        let csrf = field(&page, "csrf");
        let (status, page, location) = op
            .post(
                "/ops/password",
                &[
                    ("csrf", &csrf),
                    ("current", &account.password),
                    ("new", NEW_PASSWORD),
                    ("confirm", NEW_PASSWORD),
                ],
            )
            .await;
        assert_eq!((status, location.as_deref()), (303, Some("/ops")), "{page}");
        op
    }

    /// The CSRF token of the page at `path` (any signed-in page carries it in the sign-out
    /// form).
    pub async fn csrf(&mut self, path: &str) -> String {
        let (status, page, _) = self.get(path).await;
        assert_eq!(status, 200, "{path}: {page}");
        field(&page, "csrf")
    }
}

/// A browser at another loopback address (127.0.0.0/8 is all loopback on Linux), so tests
/// can play many clients, each with its own address, its own session and the CSRF token of
/// the sign-in form it opened.
#[derive(Clone)]
pub struct Remote {
    pub address: String,
    http: reqwest::Client,
    base: String,
    cookie: String,
    csrf: String,
}

/// What a sign-in attempt got: status, `Retry-After` (seconds) and the page.
pub struct Answer {
    pub status: u16,
    pub retry_after: Option<u64>,
    pub page: String,
}

impl Remote {
    /// Opens the sign-in form from `address` (e.g. "127.0.1.7").
    pub async fn open(stack: &Stack, address: &str) -> Remote {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .local_address(address.parse::<std::net::IpAddr>().unwrap())
            .build()
            .unwrap();
        let base = stack.sv().to_string();
        let response = http.get(format!("{base}/ops/signin")).send().await.unwrap();
        assert_eq!(response.status(), 200, "sign-in form from {address}");
        let cookie = response.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_string();
        let csrf = field(&response.text().await.unwrap(), "csrf");
        Remote {
            address: address.to_string(),
            http,
            base,
            cookie,
            csrf,
        }
    }

    /// Posts the sign-in form, with extra headers (say a forged `X-Forwarded-For`).
    pub async fn sign_in_with(
        &self,
        user: &str,
        password: &str,
        code: &str,
        headers: &[(&str, &str)],
    ) -> Answer {
        let mut request = self
            .http
            .post(format!("{}/ops/signin", self.base))
            .header("cookie", &self.cookie)
            .form(&[
                ("csrf", self.csrf.as_str()),
                ("username", user),
                ("password", password),
                ("code", code),
            ]);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.unwrap();
        let retry_after = response
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().parse().unwrap());
        Answer {
            status: response.status().as_u16(),
            retry_after,
            page: response.text().await.unwrap(),
        }
    }

    pub async fn sign_in(&self, user: &str, password: &str, code: &str) -> Answer {
        self.sign_in_with(user, password, code, &[]).await
    }

    /// The sign-in form as raw HTTP/1.1 bytes on a connection of its own; the status. For
    /// floods: a load generator elsewhere costs the service's host nothing, and reqwest here
    /// would take CPU from the service under test.
    pub async fn sign_in_raw(&self, user: &str, password: &str, code: &str) -> u16 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let body: String = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs([
                ("csrf", self.csrf.as_str()),
                ("username", user),
                ("password", password),
                ("code", code),
            ])
            .finish();
        let host = self.base.trim_start_matches("http://");
        let request = format!(
            "POST /ops/signin HTTP/1.1\r\nHost: {host}\r\nCookie: {}\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            self.cookie,
            body.len()
        );
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        let from = std::net::SocketAddr::new(self.address.parse().unwrap(), 0);
        socket.bind(from).unwrap();
        let mut stream = socket.connect(host.parse().unwrap()).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await.unwrap();
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest).await;
        std::str::from_utf8(&head[9..12]).unwrap().parse().unwrap()
    }

    /// Signs in as a person would when the service is busy: a 503 (which must say when to
    /// come back) is tried again shortly; returns the first other answer.
    pub async fn sign_in_until_answered(&self, user: &str, password: &str, code: &str) -> Answer {
        loop {
            let answer = self.sign_in(user, password, code).await;
            if answer.status != 503 {
                return answer;
            }
            assert!(answer.retry_after.is_some(), "a 503 says when to retry");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}
