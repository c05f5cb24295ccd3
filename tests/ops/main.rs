//! The ops dashboard over real HTTP against a spawned samvault and dev IdP, on SQLite and
//! PostgreSQL. One module per dashboard section; [`Operator`] and [`Account`] are the shared
//! user of the pages. (The browser suite, tests/browser.rs, drives the same pages in Chromium.)

#[path = "../support/mod.rs"]
mod support;

mod audit;
mod guard;
mod hostile;
mod integrations;
mod overview;
mod partners;
mod report;
mod settings;
mod signin;

use samvault::ops::totp;
use serde_json::Value;
use support::stack::*;

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

impl Account {
    pub fn create(stack: &Stack, username: &str, role: &str) -> Account {
        let out: Value = serde_json::from_str(&stack.cli(&[
            "ops-user",
            "create",
            "--username",
            username,
            "--role",
            role,
            "--json",
        ]))
        .unwrap();
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

/// The text a reader sees: tags dropped, whitespace collapsed (entities left as they are).
pub fn page_text(html: &str) -> String {
    let mut text = String::with_capacity(html.len());
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => {
                in_tag = true;
                text.push(' ');
            }
            '>' => in_tag = false,
            c if !in_tag => text.push(c),
            _ => {}
        }
    }
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}
