//! The dev IdP over real HTTP: every test starts its own simulator on
//! 127.0.0.1:0 and drives it as samvault (or a script) would.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use reqwest::StatusCode;
use samvault_devidp::{
    self as devidp, CONTOSO, DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, DevIdpOptions, FABRIKAM, WINGTIP,
};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

#[path = "dev_idp/customers.rs"]
mod customers;
#[path = "dev_idp/fidelity.rs"]
mod fidelity;

const REDIRECT: &str = "http://127.0.0.1:8080/onboard/callback";
const PC: &str = "https://api.partnercenter.microsoft.com";
const CONSENT_SCOPES: &str =
    "https://api.partnercenter.microsoft.com/user_impersonation offline_access openid profile";

// ---------- helpers ----------

struct Sim {
    base: String,
    http: reqwest::Client,
}

async fn start(opts: DevIdpOptions) -> Sim {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(devidp::serve(listener, opts));
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let sim = Sim { base, http };
    // serve() generates the key before accepting: wait until discovery answers.
    for _ in 0..200 {
        if let Ok(r) = sim
            .http
            .get(sim.url("/common/discovery/v2.0/keys"))
            .send()
            .await
            && r.status() == StatusCode::OK
        {
            return sim;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("dev IdP did not start");
}

async fn demo() -> Sim {
    start(DevIdpOptions::default()).await
}

fn pkce() -> (String, String) {
    let verifier = URL_SAFE_NO_PAD.encode(rand_bytes());
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    (verifier, challenge)
}

fn rand_bytes() -> [u8; 32] {
    let mut b = [0u8; 32];
    let seed = uuid::Uuid::new_v4();
    b[..16].copy_from_slice(seed.as_bytes());
    b[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    b
}

/// The authorize query samvault sends: state, nonce, PKCE S256, prompt=consent.
fn authorize_query(scope: &str, challenge: &str) -> Vec<(String, String)> {
    [
        ("client_id", DEMO_CLIENT_ID),
        ("response_type", "code"),
        ("redirect_uri", REDIRECT),
        ("response_mode", "query"),
        ("scope", scope),
        ("state", "st-123"),
        ("nonce", "n-456"),
        ("code_challenge", challenge),
        ("code_challenge_method", "S256"),
        ("prompt", "consent"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

impl Sim {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Posts the sign-in form as a script would: the original query plus upn/mfa/consent.
    async fn submit(
        &self,
        tenant: &str,
        query: &[(String, String)],
        upn: &str,
        mfa: bool,
        consent: &str,
    ) -> reqwest::Response {
        let mut form: Vec<(String, String)> = query.to_vec();
        form.push(("upn".into(), upn.into()));
        if mfa {
            form.push(("mfa".into(), "on".into()));
        }
        form.push(("consent".into(), consent.into()));
        self.http
            .post(self.url(&format!("/{tenant}/oauth2/v2.0/authorize")))
            .form(&form)
            .send()
            .await
            .unwrap()
    }

    /// Signs in and consents; returns (code, verifier).
    async fn code_for(&self, tenant: &str, upn: &str, mfa: bool) -> (String, String) {
        let (verifier, challenge) = pkce();
        let resp = self
            .submit(
                tenant,
                &authorize_query(CONSENT_SCOPES, &challenge),
                upn,
                mfa,
                "accept",
            )
            .await;
        assert_eq!(resp.status(), StatusCode::FOUND);
        let params = location(&resp);
        (params["code"].clone(), verifier)
    }

    async fn redeem(&self, code: &str, verifier: &str) -> (StatusCode, Value) {
        self.token(
            CONTOSO,
            &[
                ("grant_type", "authorization_code"),
                ("client_id", DEMO_CLIENT_ID),
                ("client_secret", DEMO_CLIENT_SECRET),
                ("code", code),
                ("redirect_uri", REDIRECT),
                ("code_verifier", verifier),
            ],
        )
        .await
    }

    /// Consent + redemption in one go; returns the token response.
    async fn consent(&self, tenant: &str, upn: &str, mfa: bool) -> Value {
        let (code, verifier) = self.code_for(tenant, upn, mfa).await;
        let (status, body) = self.redeem_at(tenant, &code, &verifier).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    async fn redeem_at(&self, tenant: &str, code: &str, verifier: &str) -> (StatusCode, Value) {
        self.token(
            tenant,
            &[
                ("grant_type", "authorization_code"),
                ("client_id", DEMO_CLIENT_ID),
                ("client_secret", DEMO_CLIENT_SECRET),
                ("code", code),
                ("redirect_uri", REDIRECT),
                ("code_verifier", verifier),
            ],
        )
        .await
    }

    async fn refresh(&self, tenant: &str, rt: &str, scope: &str) -> (StatusCode, Value) {
        self.token(
            tenant,
            &[
                ("grant_type", "refresh_token"),
                ("client_id", DEMO_CLIENT_ID),
                ("client_secret", DEMO_CLIENT_SECRET),
                ("refresh_token", rt),
                ("scope", scope),
            ],
        )
        .await
    }

    async fn token(&self, tenant: &str, form: &[(&str, &str)]) -> (StatusCode, Value) {
        let resp = self
            .http
            .post(self.url(&format!("/{tenant}/oauth2/v2.0/token")))
            .form(form)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn sim_post(&self, path: &str, body: Value) -> Value {
        let resp = self
            .http
            .post(self.url(&format!("/_sim{path}")))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "{path}: {}", resp.status());
        resp.json().await.unwrap()
    }

    async fn sim_get(&self, path: &str) -> Value {
        self.http
            .get(self.url(&format!("/_sim{path}")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn jwks_key(&self, tenant: &str) -> (String, DecodingKey) {
        let jwks: Value = self
            .http
            .get(self.url(&format!("/{tenant}/discovery/v2.0/keys")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let k = &jwks["keys"][0];
        assert_eq!(k["kty"], "RSA");
        assert_eq!(k["use"], "sig");
        let key =
            DecodingKey::from_rsa_components(k["n"].as_str().unwrap(), k["e"].as_str().unwrap())
                .unwrap();
        (k["kid"].as_str().unwrap().to_string(), key)
    }
}

fn with_query(url: &str, q: &[(String, String)]) -> String {
    url::Url::parse_with_params(url, q).unwrap().to_string()
}

/// Query parameters of a redirect's Location.
fn location(resp: &reqwest::Response) -> HashMap<String, String> {
    let loc = resp
        .headers()
        .get("location")
        .expect("a redirect")
        .to_str()
        .unwrap();
    assert!(loc.starts_with(REDIRECT), "{loc}");
    url::Url::parse(loc)
        .unwrap()
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// The AADSTS code of an Entra error body, after checking the body's shape.
fn aadsts(body: &Value) -> u64 {
    let code = body["error_codes"][0].as_u64().expect("error_codes");
    let desc = body["error_description"].as_str().unwrap();
    assert!(desc.starts_with(&format!("AADSTS{code}: ")), "{desc}");
    assert!(desc.contains("\r\nTrace ID: ") && desc.contains("\r\nCorrelation ID: "));
    for field in [
        "error",
        "timestamp",
        "trace_id",
        "correlation_id",
        "error_uri",
    ] {
        assert!(body[field].is_string(), "missing {field} in {body}");
    }
    code
}

fn claims(token: &str, key: &DecodingKey, aud: &str, iss: &str) -> Value {
    let mut v = Validation::new(Algorithm::RS256);
    v.set_audience(&[aud]);
    v.set_issuer(&[iss]);
    jsonwebtoken::decode::<Value>(token, key, &v)
        .expect("valid signature and claims")
        .claims
}

fn hidden_fields(html: &str) -> Vec<(String, String)> {
    let unescape = |s: &str| {
        s.replace("&quot;", "\"")
            .replace("&#39;", "'")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&amp;", "&")
    };
    html.split("<input type=\"hidden\" name=\"")
        .skip(1)
        .map(|rest| {
            let (name, rest) = rest.split_once("\" value=\"").unwrap();
            let (value, _) = rest.split_once('"').unwrap();
            (unescape(name), unescape(value))
        })
        .collect()
}

// ---------- the authorization-code flow ----------

#[tokio::test]
async fn full_flow_page_form_code_tokens_and_jwks() {
    let sim = demo().await;
    let (verifier, challenge) = pkce();
    let query = authorize_query(CONSENT_SCOPES, &challenge);
    let page = sim
        .http
        .get(with_query(
            &sim.url(&format!("/{CONTOSO}/oauth2/v2.0/authorize")),
            &query,
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap();
    assert!(html.contains("samvault demo CPV app"));
    assert!(html.contains("Access Partner Center API as you"));
    assert!(html.contains("name=\"upn\"") && html.contains("name=\"mfa\" value=\"on\""));
    assert!(html.contains("name=\"consent\" value=\"accept\""));
    assert!(html.contains("name=\"consent\" value=\"deny\""));

    // Drive the form exactly as the page describes it.
    let mut form = hidden_fields(&html);
    assert_eq!(form.len(), query.len(), "every query parameter is carried");
    form.push(("upn".into(), "jane@contoso.example".into()));
    form.push(("mfa".into(), "on".into()));
    form.push(("consent".into(), "accept".into()));
    let resp = sim
        .http
        .post(sim.url(&format!("/{CONTOSO}/oauth2/v2.0/authorize")))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FOUND);
    let params = location(&resp);
    assert!(params["code"].starts_with("1.A"));
    assert_eq!(params["state"], "st-123");
    assert!(params.contains_key("session_state"));

    let resp = sim
        .http
        .post(sim.url(&format!("/{CONTOSO}/oauth2/v2.0/token")))
        .form(&[
            ("grant_type", "authorization_code"),
            ("client_id", DEMO_CLIENT_ID),
            ("client_secret", DEMO_CLIENT_SECRET),
            ("code", &params["code"]),
            ("redirect_uri", REDIRECT),
            ("code_verifier", &verifier),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.headers()["cache-control"]
            .to_str()
            .unwrap()
            .contains("no-store")
    );
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3599);
    assert_eq!(body["ext_expires_in"], 3599);
    assert_eq!(body["scope"], format!("{PC}/user_impersonation"));
    let rt = body["refresh_token"].as_str().unwrap();
    assert!(rt.starts_with("0.A") && rt.len() > 300);

    let (kid, key) = sim.jwks_key(CONTOSO).await;
    let at = body["access_token"].as_str().unwrap();
    assert_eq!(
        jsonwebtoken::decode_header(at).unwrap().kid.as_deref(),
        Some(kid.as_str())
    );
    let c = claims(at, &key, PC, &format!("{}/{CONTOSO}/", sim.base));
    assert_eq!(c["tid"], CONTOSO);
    assert_eq!(c["upn"], "jane@contoso.example");
    assert_eq!(c["unique_name"], "jane@contoso.example");
    assert_eq!(c["amr"], json!(["pwd", "mfa"]));
    assert_eq!(c["scp"], "user_impersonation");
    assert_eq!(c["appid"], DEMO_CLIENT_ID);
    assert_eq!(c["ver"], "1.0");
    assert!(c["oid"].as_str().unwrap().len() == 36 && c["name"].is_string());
    assert!(c["exp"].as_i64().unwrap() > c["iat"].as_i64().unwrap());

    let id = body["id_token"].as_str().unwrap();
    let c = claims(
        id,
        &key,
        DEMO_CLIENT_ID,
        &format!("{}/{CONTOSO}/v2.0", sim.base),
    );
    assert_eq!(c["nonce"], "n-456");
    assert_eq!(c["preferred_username"], "jane@contoso.example");
    assert_eq!(c["ver"], "2.0");
    assert!(c.get("amr").is_none(), "v2 id_tokens carry no amr");

    // A token signed by another key must not verify against this JWKS.
    let mut tampered = at.to_string();
    tampered.pop();
    tampered.push(if at.ends_with('A') { 'B' } else { 'A' });
    let mut v = Validation::new(Algorithm::RS256);
    v.set_audience(&[PC]);
    assert!(jsonwebtoken::decode::<Value>(&tampered, &key, &v).is_err());
}

#[tokio::test]
async fn code_is_single_use() {
    let sim = demo().await;
    let (code, verifier) = sim.code_for(CONTOSO, "jane@contoso.example", true).await;
    assert_eq!(sim.redeem(&code, &verifier).await.0, StatusCode::OK);
    let (status, body) = sim.redeem(&code, &verifier).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_grant");
    assert_eq!(aadsts(&body), 54005);
}

#[tokio::test]
async fn code_expires_after_ten_minutes_and_unknown_codes_are_refused() {
    let sim = demo().await;
    let (code, verifier) = sim.code_for(CONTOSO, "jane@contoso.example", true).await;
    sim.sim_post("/clock/advance", json!({"seconds": 601}))
        .await;
    let (_, body) = sim.redeem(&code, &verifier).await;
    assert_eq!(aadsts(&body), 70008);
    let (_, body) = sim.redeem("1.Anot-a-real-code", &verifier).await;
    assert_eq!(aadsts(&body), 70000);
    assert_eq!(body["error"], "invalid_grant");
    let (_, body) = sim.redeem("garbage", &verifier).await;
    assert_eq!(aadsts(&body), 9002313);
}

#[tokio::test]
async fn wrong_pkce_verifier_is_501481() {
    let sim = demo().await;
    let (code, _) = sim.code_for(CONTOSO, "jane@contoso.example", true).await;
    let (other, _) = pkce();
    let (status, body) = sim.redeem(&code, &other).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_grant");
    assert_eq!(aadsts(&body), 501481);
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("The Code_Verifier does not match the code_challenge")
    );
}

#[tokio::test]
async fn redirect_uri_must_match_at_redemption() {
    let sim = demo().await;
    let (code, verifier) = sim.code_for(CONTOSO, "jane@contoso.example", true).await;
    let (status, body) = sim
        .token(
            CONTOSO,
            &[
                ("grant_type", "authorization_code"),
                ("client_id", DEMO_CLIENT_ID),
                ("client_secret", DEMO_CLIENT_SECRET),
                ("code", &code),
                ("redirect_uri", "http://127.0.0.1:9999/other"),
                ("code_verifier", &verifier),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(aadsts(&body), 500112);
    // The failed attempt did not burn the code.
    assert_eq!(sim.redeem(&code, &verifier).await.0, StatusCode::OK);
}

#[tokio::test]
async fn client_authentication_secret_in_body_or_basic() {
    let sim = demo().await;
    let tokens = sim.consent(CONTOSO, "jane@contoso.example", true).await;
    let rt = tokens["refresh_token"].as_str().unwrap();
    let scope = format!("{PC}/.default");

    // Wrong secret: 401 invalid_client 7000215.
    let (status, body) = sim
        .token(
            CONTOSO,
            &[
                ("grant_type", "refresh_token"),
                ("client_id", DEMO_CLIENT_ID),
                ("client_secret", "not-the-secret"),
                ("refresh_token", rt),
                ("scope", &scope),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"], "invalid_client");
    assert_eq!(aadsts(&body), 7000215);

    // HTTP Basic with the right secret works.
    let resp = sim
        .http
        .post(sim.url(&format!("/{CONTOSO}/oauth2/v2.0/token")))
        .basic_auth(DEMO_CLIENT_ID, Some(DEMO_CLIENT_SECRET))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", rt),
            ("scope", &scope),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);

    // Unknown client: 700016 unauthorized_client.
    let (status, body) = sim
        .token(
            CONTOSO,
            &[
                ("grant_type", "refresh_token"),
                ("client_id", "00000000-1111-4222-8333-444444444444"),
                ("client_secret", "x"),
                ("refresh_token", rt),
                ("scope", &scope),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "unauthorized_client");
    assert_eq!(aadsts(&body), 700016);

    // No credential at all: 7000218.
    let (status, body) = sim
        .token(
            CONTOSO,
            &[
                ("grant_type", "refresh_token"),
                ("client_id", DEMO_CLIENT_ID),
                ("refresh_token", rt),
                ("scope", &scope),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(aadsts(&body), 7000218);
}

// ---------- refresh tokens ----------

#[tokio::test]
async fn refresh_returns_new_rt_and_old_one_stays_valid() {
    let sim = demo().await;
    let tokens = sim.consent(CONTOSO, "jane@contoso.example", true).await;
    let rt1 = tokens["refresh_token"].as_str().unwrap().to_string();
    let scope = format!("{PC}/.default");

    let (status, body) = sim.refresh(CONTOSO, &rt1, &scope).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let rt2 = body["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(rt1, rt2);
    assert!(rt2.starts_with("0.A"));
    assert_eq!(body["scope"], format!("{PC}/user_impersonation"));
    assert!(body.get("id_token").is_none(), "no openid asked");

    // Entra does not revoke the old RT.
    let (status, body) = sim.refresh(CONTOSO, &rt1, &scope).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(sim.refresh(CONTOSO, &rt2, &scope).await.0, StatusCode::OK);

    let grants = sim.sim_get("/grants").await;
    let grants = grants.as_array().unwrap();
    assert_eq!(grants.len(), 4);
    let first = grants
        .iter()
        .find(|g| g["refresh_token"] == rt1.as_str())
        .unwrap();
    assert_eq!(first["tenant_id"], CONTOSO);
    assert_eq!(first["upn"], "jane@contoso.example");
    assert_eq!(first["valid"], true);
    assert!(first["last_used_at"].is_string());
    assert!(first["issued_at"].is_string());
    assert!(grants.iter().any(|g| g["last_used_at"].is_null()));
}

#[tokio::test]
async fn strict_rotation_kills_an_rt_at_first_use() {
    let sim = start(DevIdpOptions {
        strict_rotation: true,
        ..Default::default()
    })
    .await;
    let tokens = sim.consent(CONTOSO, "jane@contoso.example", true).await;
    let rt1 = tokens["refresh_token"].as_str().unwrap().to_string();
    let scope = format!("{PC}/.default");
    let (status, body) = sim.refresh(CONTOSO, &rt1, &scope).await;
    assert_eq!(status, StatusCode::OK);
    let rt2 = body["refresh_token"].as_str().unwrap().to_string();

    let (status, body) = sim.refresh(CONTOSO, &rt1, &scope).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_grant");
    assert_eq!(aadsts(&body), 70000);
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("reuse")
    );
    assert_eq!(sim.refresh(CONTOSO, &rt2, &scope).await.0, StatusCode::OK);

    let grants = sim.sim_get("/grants").await;
    let g1 = grants
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["refresh_token"] == rt1.as_str())
        .unwrap();
    assert_eq!(g1["valid"], false);
}

/// `--rotation-grace`: a spent refresh token may be redeemed again for the grace (a client
/// whose answer was lost), only while none of its successors has been used, and never after.
#[tokio::test]
async fn rotation_grace_lets_a_lost_answer_be_retried_and_no_more() {
    let sim = start(DevIdpOptions {
        strict_rotation: true,
        rotation_grace_secs: 30,
        ..Default::default()
    })
    .await;
    let scope = format!("{PC}/.default");
    let refresh = |rt: String| {
        let sim = &sim;
        let scope = scope.clone();
        async move {
            let (status, body) = sim.refresh(CONTOSO, &rt, &scope).await;
            (
                status,
                body["refresh_token"].as_str().unwrap_or("").to_string(),
                body,
            )
        }
    };
    let tokens = sim.consent(CONTOSO, "jane@contoso.example", true).await;
    let rt1 = tokens["refresh_token"].as_str().unwrap().to_string();
    let (status, rt2, _) = refresh(rt1.clone()).await;
    assert_eq!(status, StatusCode::OK);
    // The answer carrying rt2 was "lost": rt1 again, inside the grace, gives a new token.
    let (status, rt3, body) = refresh(rt1.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_ne!(rt3, rt2);
    // The grace runs from the first use, not the latest.
    sim.sim_post("/clock/advance", json!({"seconds": 31})).await;
    let (status, _, body) = refresh(rt1.clone()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(aadsts(&body), 70000, "{body}");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("reuse")
    );

    // Once a successor is used, its predecessor's grace is over even inside the 30 s; and
    // an older generation never comes back.
    let (status, rt4, _) = refresh(rt3.clone()).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = refresh(rt4.clone()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        refresh(rt3).await.0,
        StatusCode::BAD_REQUEST,
        "successor used"
    );
    assert_eq!(refresh(rt2).await.0, StatusCode::OK, "rt2 was never spent");
    assert_eq!(refresh(rt1).await.0, StatusCode::BAD_REQUEST);
}

/// An `after_grant` fault processes the call (the refresh token is spent), then answers late
/// or not at all: the lost answer strict rotation cannot forgive.
#[tokio::test]
async fn an_after_grant_fault_spends_the_token_and_loses_the_answer() {
    let sim = start(DevIdpOptions {
        strict_rotation: true,
        ..Default::default()
    })
    .await;
    let scope = format!("{PC}/.default");
    let tokens = sim.consent(CONTOSO, "jane@contoso.example", true).await;
    let rt1 = tokens["refresh_token"].as_str().unwrap().to_string();
    sim.sim_post(
        "/faults",
        json!({"status": 502, "body": "empty", "after_grant": true}),
    )
    .await;
    let (status, _) = sim.refresh(CONTOSO, &rt1, &scope).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let (status, body) = sim.refresh(CONTOSO, &rt1, &scope).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "spent by the lost call");
    assert_eq!(aadsts(&body), 70000);
}

#[tokio::test]
async fn ninety_days_of_inactivity_is_700082_but_rotation_keeps_a_grant_alive() {
    let sim = demo().await;
    let tokens = sim.consent(CONTOSO, "jane@contoso.example", true).await;
    let old = tokens["refresh_token"].as_str().unwrap().to_string();
    let scope = format!("{PC}/.default");

    sim.sim_post("/clock/advance", json!({"days": 60})).await;
    let (status, body) = sim.refresh(CONTOSO, &old, &scope).await;
    assert_eq!(status, StatusCode::OK);
    let fresh = body["refresh_token"].as_str().unwrap().to_string();

    let clock = sim.sim_post("/clock/advance", json!({"days": 31})).await;
    assert!(clock["offset_seconds"].as_i64().unwrap() >= 91 * 86_400);
    let (status, body) = sim.refresh(CONTOSO, &old, &scope).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_grant");
    assert_eq!(aadsts(&body), 700082);
    let desc = body["error_description"].as_str().unwrap();
    assert!(
        desc.contains("The refresh token has expired due to inactivity. The token was issued on ")
    );
    assert!(desc.contains("was inactive for 90.00:00:00."));

    // The RT obtained on day 60 is only 31 days old.
    assert_eq!(sim.refresh(CONTOSO, &fresh, &scope).await.0, StatusCode::OK);

    // Access tokens are stamped on the simulated clock.
    let (_, body) = sim.refresh(CONTOSO, &fresh, &scope).await;
    let at = body["access_token"].as_str().unwrap();
    let c = jsonwebtoken::dangerous::insecure_decode::<Value>(at)
        .unwrap()
        .claims;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    assert!(c["iat"].as_i64().unwrap() >= now + 90 * 86_400);
}

#[tokio::test]
async fn one_resource_per_request_and_consent_per_resource() {
    let sim = demo().await;
    let tokens = sim.consent(CONTOSO, "jane@contoso.example", true).await;
    let rt = tokens["refresh_token"].as_str().unwrap();

    // A code redemption whose scope names two resources is refused (28000)...
    let (code, verifier) = sim.code_for(CONTOSO, "jane@contoso.example", true).await;
    let two =
        "https://api.partnercenter.microsoft.com/.default https://graph.microsoft.com/.default";
    let (status, body) = sim
        .token(
            CONTOSO,
            &[
                ("grant_type", "authorization_code"),
                ("client_id", DEMO_CLIENT_ID),
                ("client_secret", DEMO_CLIENT_SECRET),
                ("code", &code),
                ("redirect_uri", REDIRECT),
                ("code_verifier", &verifier),
                ("scope", two),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(aadsts(&body), 28000);

    // ...while a refresh gets a token for the first resource, as Entra documents
    // (v2-oauth2-auth-code-flow, "Refresh the access token").
    let (status, body) = sim.refresh(CONTOSO, rt, two).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["scope"], format!("{PC}/user_impersonation"));

    // Graph was never consented in this grant.
    let (status, body) = sim
        .refresh(
            CONTOSO,
            rt,
            "https://graph.microsoft.com/.default offline_access",
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_grant");
    assert_eq!(aadsts(&body), 65001);

    // openid on a refresh brings an id_token along.
    let (status, body) = sim
        .refresh(CONTOSO, rt, &format!("{PC}/.default openid offline_access"))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(body["id_token"].is_string());
}

#[tokio::test]
async fn v1_endpoint_uses_resource_and_string_numbers() {
    let sim = demo().await;
    let (verifier, challenge) = pkce();
    let mut query = authorize_query("openid", &challenge);
    query.push(("resource".into(), PC.into()));
    let mut form = query.clone();
    form.extend([
        ("upn".to_string(), "john@fabrikam.example".to_string()),
        ("consent".to_string(), "accept".to_string()),
    ]);
    let resp = sim
        .http
        .post(sim.url(&format!("/{FABRIKAM}/oauth2/authorize")))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FOUND);
    let code = location(&resp)["code"].clone();
    let resp = sim
        .http
        .post(sim.url(&format!("/{FABRIKAM}/oauth2/token")))
        .form(&[
            ("grant_type", "authorization_code"),
            ("client_id", DEMO_CLIENT_ID),
            ("client_secret", DEMO_CLIENT_SECRET),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", &verifier),
            ("resource", PC),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["resource"], PC);
    assert_eq!(body["expires_in"], "3599");
    let rt = body["refresh_token"].as_str().unwrap();

    let resp = sim
        .http
        .post(sim.url(&format!("/{FABRIKAM}/oauth2/token")))
        .form(&[
            ("grant_type", "refresh_token"),
            ("client_id", DEMO_CLIENT_ID),
            ("client_secret", DEMO_CLIENT_SECRET),
            ("refresh_token", rt),
            ("resource", PC),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["scope"], "user_impersonation");
    let c =
        jsonwebtoken::dangerous::insecure_decode::<Value>(body["access_token"].as_str().unwrap())
            .unwrap()
            .claims;
    assert_eq!(c["aud"], PC);
}

// ---------- MFA and consent outcomes at sign-in ----------

#[tokio::test]
async fn fabrikam_without_mfa_succeeds_with_pwd_only() {
    let sim = demo().await;
    let tokens = sim.consent(FABRIKAM, "john@fabrikam.example", false).await;
    let at = tokens["access_token"].as_str().unwrap();
    let (_, key) = sim.jwks_key(FABRIKAM).await;
    let c = claims(at, &key, PC, &format!("{}/{FABRIKAM}/", sim.base));
    assert_eq!(c["amr"], json!(["pwd"]));
    assert_eq!(c["tid"], FABRIKAM);
}

#[tokio::test]
async fn fabrikam_users_have_no_second_factor_to_offer() {
    let sim = demo().await;
    let tokens = sim.consent(FABRIKAM, "john@fabrikam.example", true).await;
    let at = tokens["access_token"].as_str().unwrap();
    let (_, key) = sim.jwks_key(FABRIKAM).await;
    let c = claims(at, &key, PC, &format!("{}/{FABRIKAM}/", sim.base));
    assert_eq!(
        c["amr"],
        json!(["pwd"]),
        "ticking MFA without a registered method proves nothing"
    );
}

#[tokio::test]
async fn contoso_without_mfa_is_redirected_with_50076() {
    let sim = demo().await;
    let (_, challenge) = pkce();
    let resp = sim
        .submit(
            CONTOSO,
            &authorize_query(CONSENT_SCOPES, &challenge),
            "jane@contoso.example",
            false,
            "accept",
        )
        .await;
    assert_eq!(resp.status(), StatusCode::FOUND);
    let p = location(&resp);
    assert_eq!(p["error"], "interaction_required");
    assert!(p["error_description"].starts_with("AADSTS50076: "));
    assert_eq!(p["state"], "st-123");
    assert!(!p.contains_key("code"));
}

#[tokio::test]
async fn wingtip_federated_mfa_and_common_endpoint() {
    let sim = demo().await;
    let (verifier, challenge) = pkce();
    let resp = sim
        .submit(
            "common",
            &authorize_query(CONSENT_SCOPES, &challenge),
            "trent@wingtip.example",
            true,
            "accept",
        )
        .await;
    let code = location(&resp)["code"].clone();
    let (status, body) = sim.redeem_at("common", &code, &verifier).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let c =
        jsonwebtoken::dangerous::insecure_decode::<Value>(body["access_token"].as_str().unwrap())
            .unwrap()
            .claims;
    assert_eq!(c["tid"], WINGTIP);
    assert!(c["amr"].as_array().unwrap().contains(&json!("mfa")));
}

#[tokio::test]
async fn deny_is_access_denied_65004() {
    let sim = demo().await;
    let (_, challenge) = pkce();
    let resp = sim
        .submit(
            CONTOSO,
            &authorize_query(CONSENT_SCOPES, &challenge),
            "jane@contoso.example",
            true,
            "deny",
        )
        .await;
    assert_eq!(resp.status(), StatusCode::FOUND);
    let p = location(&resp);
    assert_eq!(p["error"], "access_denied");
    assert!(
        p["error_description"]
            .starts_with("AADSTS65004: User declined to consent to access the app.")
    );
    assert_eq!(p["state"], "st-123");
}

#[tokio::test]
async fn authorize_errors_are_pages_or_redirects_as_in_entra() {
    let sim = demo().await;
    let (_, challenge) = pkce();
    let authz = sim.url(&format!("/{CONTOSO}/oauth2/v2.0/authorize"));

    // Unknown client: a page, never a redirect.
    let mut q = authorize_query(CONSENT_SCOPES, &challenge);
    q[0].1 = "11111111-2222-4333-8444-555555555555".into();
    let resp = sim.http.get(with_query(&authz, &q)).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert!(resp.headers().get("location").is_none());
    assert!(resp.text().await.unwrap().contains("AADSTS700016"));

    // Foreign redirect URI: a page with 50011.
    let mut q = authorize_query(CONSENT_SCOPES, &challenge);
    q[2].1 = "https://evil.example/cb".into();
    let resp = sim.http.get(with_query(&authz, &q)).send().await.unwrap();
    assert!(resp.headers().get("location").is_none());
    assert!(resp.text().await.unwrap().contains("AADSTS50011"));

    // Unknown user: the page again, with 50034.
    let q = authorize_query(CONSENT_SCOPES, &challenge);
    let resp = sim
        .submit(CONTOSO, &q, "nobody@contoso.example", true, "accept")
        .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let html = resp.text().await.unwrap();
    assert!(html.contains("AADSTS50034") && html.contains("name=\"upn\""));

    // A Fabrikam user on Contoso's endpoint: 50020.
    let resp = sim
        .submit(CONTOSO, &q, "john@fabrikam.example", true, "accept")
        .await;
    assert!(resp.text().await.unwrap().contains("AADSTS50020"));

    // An unknown PKCE method is refused, back to the app (Entra takes S256 and plain).
    let mut q = authorize_query(CONSENT_SCOPES, &challenge);
    q[8].1 = "S512".into();
    let resp = sim.http.get(with_query(&authz, &q)).send().await.unwrap();
    assert_eq!(location(&resp)["error"], "invalid_request");

    // Echoed values are escaped.
    let mut q = authorize_query(CONSENT_SCOPES, &challenge);
    q[5].1 = "\"><script>alert(1)</script>".into();
    let html = sim
        .http
        .get(with_query(&authz, &q))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!html.contains("<script>alert(1)"));
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));

    // Unknown tenant.
    let resp = sim
        .http
        .get(with_query(
            &sim.url("/99999999-9999-4999-8999-999999999999/oauth2/v2.0/authorize"),
            &authorize_query(CONSENT_SCOPES, &challenge),
        ))
        .send()
        .await
        .unwrap();
    assert!(resp.text().await.unwrap().contains("AADSTS90002"));

    let counters = sim.sim_get("/counters").await;
    assert_eq!(counters["errors"]["700016"], 1);
    assert_eq!(counters["errors"]["50034"], 1);
}

// ---------- /_sim mutations ----------

#[tokio::test]
async fn revoke_consent_is_65001() {
    let sim = demo().await;
    let rt = sim.consent(CONTOSO, "jane@contoso.example", true).await["refresh_token"]
        .as_str()
        .unwrap()
        .to_string();
    sim.sim_post(&format!("/tenants/{CONTOSO}/revoke-consent"), json!({}))
        .await;
    let (status, body) = sim.refresh(CONTOSO, &rt, &format!("{PC}/.default")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_grant");
    assert_eq!(aadsts(&body), 65001);
    assert!(body["error_description"].as_str().unwrap().contains(&format!(
        "The user or administrator has not consented to use the application with ID '{DEMO_CLIENT_ID}' named 'samvault demo CPV app'."
    )));
    // Consenting again restores access.
    let rt = sim.consent(CONTOSO, "jane@contoso.example", true).await["refresh_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        sim.refresh(CONTOSO, &rt, &format!("{PC}/.default")).await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn require_mfa_is_50076_for_tokens_without_mfa() {
    let sim = demo().await;
    let rt = sim.consent(FABRIKAM, "john@fabrikam.example", false).await["refresh_token"]
        .as_str()
        .unwrap()
        .to_string();
    let scope = format!("{PC}/.default");
    assert_eq!(sim.refresh(FABRIKAM, &rt, &scope).await.0, StatusCode::OK);
    sim.sim_post(&format!("/tenants/{FABRIKAM}/require-mfa"), json!({}))
        .await;
    let (status, body) = sim.refresh(FABRIKAM, &rt, &scope).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // The token endpoint says `invalid_grant` with suberror `basic_action` (Entra's answer
    // to a refresh, docs/ENTRA_FIDELITY.md); the authorize endpoint `interaction_required`.
    assert_eq!(body["error"], "invalid_grant");
    assert_eq!(body["suberror"], "basic_action");
    assert_eq!(aadsts(&body), 50076);
    // Sign-ins without MFA are now refused too.
    let (_, challenge) = pkce();
    let resp = sim
        .submit(
            FABRIKAM,
            &authorize_query(CONSENT_SCOPES, &challenge),
            "john@fabrikam.example",
            false,
            "accept",
        )
        .await;
    assert_eq!(location(&resp)["error"], "interaction_required");
}

#[tokio::test]
async fn reset_password_is_50173_and_sign_in_frequency_is_70043() {
    let sim = demo().await;
    let scope = format!("{PC}/.default");
    let jane = sim.consent(CONTOSO, "jane@contoso.example", true).await["refresh_token"]
        .as_str()
        .unwrap()
        .to_string();
    let sam = sim.consent(CONTOSO, "sam@contoso.example", true).await["refresh_token"]
        .as_str()
        .unwrap()
        .to_string();

    sim.sim_post("/users/jane@contoso.example/reset-password", json!({}))
        .await;
    let (_, body) = sim.refresh(CONTOSO, &jane, &scope).await;
    assert_eq!(body["error"], "invalid_grant");
    assert_eq!(aadsts(&body), 50173);

    sim.sim_post("/users/sam@contoso.example/sign-in-frequency", json!({}))
        .await;
    let (_, body) = sim.refresh(CONTOSO, &sam, &scope).await;
    assert_eq!(body["error"], "invalid_grant");
    assert_eq!(aadsts(&body), 70043);

    // A fresh sign-in after the event is fine.
    let jane2 = sim.consent(CONTOSO, "jane@contoso.example", true).await["refresh_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(sim.refresh(CONTOSO, &jane2, &scope).await.0, StatusCode::OK);
}

#[tokio::test]
async fn app_secret_expiry_is_7000222_and_rotation_replaces_it() {
    let sim = demo().await;
    let rt = sim.consent(CONTOSO, "jane@contoso.example", true).await["refresh_token"]
        .as_str()
        .unwrap()
        .to_string();
    let scope = format!("{PC}/.default");
    sim.sim_post("/app/secret/expire", json!({})).await;
    let (status, body) = sim.refresh(CONTOSO, &rt, &scope).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"], "invalid_client");
    assert_eq!(aadsts(&body), 7000222);

    sim.sim_post("/app/secret/rotate", json!({"secret": "new-secret"}))
        .await;
    let (status, body) = sim.refresh(CONTOSO, &rt, &scope).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(aadsts(&body), 7000215);
    let (status, _) = sim
        .token(
            CONTOSO,
            &[
                ("grant_type", "refresh_token"),
                ("client_id", DEMO_CLIENT_ID),
                ("client_secret", "new-secret"),
                ("refresh_token", &rt),
                ("scope", &scope),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn deleted_tenant_is_90002() {
    let sim = demo().await;
    let rt = sim.consent(CONTOSO, "jane@contoso.example", true).await["refresh_token"]
        .as_str()
        .unwrap()
        .to_string();
    let resp = sim
        .http
        .delete(sim.url(&format!("/_sim/tenants/{CONTOSO}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    for tenant in [CONTOSO, "common"] {
        let (status, body) = sim.refresh(tenant, &rt, &format!("{PC}/.default")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(aadsts(&body), 90002, "{tenant}");
    }
    let grants = sim.sim_get("/grants").await;
    assert_eq!(grants[0]["valid"], false);
}

#[tokio::test]
async fn sim_endpoints_reject_unknown_targets() {
    let sim = demo().await;
    let resp = sim
        .http
        .post(sim.url("/_sim/users/ghost@nowhere.example/reset-password"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let resp = sim
        .http
        .post(sim.url("/_sim/clock/advance"))
        .json(&json!({"days": -1}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
}

// ---------- faults, counters, latency ----------

#[tokio::test]
async fn faults_fail_the_next_n_calls_then_clear() {
    let sim = demo().await;
    let rt = sim.consent(CONTOSO, "jane@contoso.example", true).await["refresh_token"]
        .as_str()
        .unwrap()
        .to_string();
    let scope = format!("{PC}/.default");
    let form = [
        ("grant_type", "refresh_token"),
        ("client_id", DEMO_CLIENT_ID),
        ("client_secret", DEMO_CLIENT_SECRET),
        ("refresh_token", rt.as_str()),
        ("scope", scope.as_str()),
    ];
    let post = || {
        sim.http
            .post(sim.url(&format!("/{CONTOSO}/oauth2/v2.0/token")))
            .form(&form)
            .send()
    };

    sim.sim_post(
        "/faults",
        json!({"count": 2, "status": 503, "retry_after": 30}),
    )
    .await;
    for _ in 0..2 {
        let resp = post().await.unwrap();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(resp.headers()["retry-after"], "30");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"], "temporarily_unavailable");
        aadsts(&body);
    }
    assert_eq!(post().await.unwrap().status(), StatusCode::OK);

    sim.sim_post("/faults", json!({"status": 500, "body": "malformed"}))
        .await;
    let resp = post().await.unwrap();
    assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(serde_json::from_str::<Value>(&resp.text().await.unwrap()).is_err());

    sim.sim_post("/faults", json!({"body": "html"})).await;
    let resp = post().await.unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(resp.text().await.unwrap().contains("<html>"));

    sim.sim_post("/faults", json!({"status": 429, "retry_after": 5}))
        .await;
    let resp = post().await.unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(resp.headers()["retry-after"], "5");
    let body: Value = resp.json().await.unwrap();
    aadsts(&body);

    // Extension: inject a specific Entra error.
    sim.sim_post("/faults", json!({"error_code": 50196})).await;
    let resp = post().await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(aadsts(&resp.json().await.unwrap()), 50196);

    let start = Instant::now();
    sim.sim_post("/faults", json!({"latency_ms": 300, "status": 504}))
        .await;
    assert_eq!(post().await.unwrap().status(), StatusCode::GATEWAY_TIMEOUT);
    assert!(start.elapsed() >= Duration::from_millis(300));

    // A gateway's bare error, and a slow answer that still succeeds.
    sim.sim_post("/faults", json!({"status": 504, "body": "empty"}))
        .await;
    let resp = post().await.unwrap();
    assert_eq!(resp.status(), StatusCode::GATEWAY_TIMEOUT);
    assert!(resp.bytes().await.unwrap().is_empty());
    let start = Instant::now();
    sim.sim_post("/faults", json!({"status": 200, "latency_ms": 300}))
        .await;
    let resp = post().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(start.elapsed() >= Duration::from_millis(300));
    let body: Value = resp.json().await.unwrap();
    assert!(body["refresh_token"].as_str().unwrap().starts_with("0.A"));

    // Faulted calls are calls: 2 + 1 + 1 + 1 + 1 + 1 + 1 faulted, 1 slow, 1 good.
    let counters = sim.sim_get("/counters").await;
    assert_eq!(counters["faults_served"], 9);
    assert_eq!(counters["token_calls"]["refresh_token"], 10);
    assert_eq!(counters["token_calls"]["authorization_code"], 1);
}

#[tokio::test]
async fn counters_count_calls_by_grant_type_and_errors_by_code() {
    let sim = demo().await;
    let (code, verifier) = sim.code_for(CONTOSO, "jane@contoso.example", true).await;
    let (_, tokens) = sim.redeem(&code, &verifier).await;
    sim.redeem(&code, &verifier).await;
    let rt = tokens["refresh_token"].as_str().unwrap();
    sim.refresh(CONTOSO, rt, &format!("{PC}/.default")).await;
    sim.sim_post("/clock/advance", json!({"days": 91})).await;
    sim.refresh(CONTOSO, rt, &format!("{PC}/.default")).await;
    sim.refresh(CONTOSO, rt, &format!("{PC}/.default")).await;
    let c = sim.sim_get("/counters").await;
    assert_eq!(c["token_calls"]["authorization_code"], 2);
    assert_eq!(c["token_calls"]["refresh_token"], 3);
    assert_eq!(c["errors"]["54005"], 1);
    assert_eq!(c["errors"]["700082"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_concurrent_token_calls_with_latency() {
    let sim = start(DevIdpOptions {
        token_latency_ms: 200,
        ..Default::default()
    })
    .await;
    let rt = sim.consent(CONTOSO, "jane@contoso.example", true).await["refresh_token"]
        .as_str()
        .unwrap()
        .to_string();
    let scope = format!("{PC}/.default");
    let started = Instant::now();
    let calls = (0..500).map(|_| {
        let (http, url, rt, scope) = (
            sim.http.clone(),
            sim.url(&format!("/{CONTOSO}/oauth2/v2.0/token")),
            rt.clone(),
            scope.clone(),
        );
        tokio::spawn(async move {
            let resp = http
                .post(url)
                .form(&[
                    ("grant_type", "refresh_token"),
                    ("client_id", DEMO_CLIENT_ID),
                    ("client_secret", DEMO_CLIENT_SECRET),
                    ("refresh_token", &rt),
                    ("scope", &scope),
                ])
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            let body: Value = resp.json().await.unwrap();
            body["refresh_token"].as_str().unwrap().to_string()
        })
    });
    let mut rts = std::collections::HashSet::new();
    for call in calls.collect::<Vec<_>>() {
        rts.insert(call.await.unwrap());
    }
    assert_eq!(rts.len(), 500, "every call got its own new RT");
    // Serialised sleeps alone would take 100 s.
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    let c = sim.sim_get("/counters").await;
    assert_eq!(c["token_calls"]["refresh_token"], 500);
}

// ---------- discovery and directory ----------

#[tokio::test]
async fn discovery_documents_follow_entra() {
    let sim = demo().await;
    let doc: Value = sim
        .http
        .get(sim.url(&format!("/{CONTOSO}/v2.0/.well-known/openid-configuration")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["issuer"], format!("{}/{CONTOSO}/v2.0", sim.base));
    assert_eq!(
        doc["token_endpoint"],
        format!("{}/{CONTOSO}/oauth2/v2.0/token", sim.base)
    );
    assert_eq!(
        doc["authorization_endpoint"],
        format!("{}/{CONTOSO}/oauth2/v2.0/authorize", sim.base)
    );
    assert_eq!(
        doc["jwks_uri"],
        format!("{}/{CONTOSO}/discovery/v2.0/keys", sim.base)
    );

    let doc: Value = sim
        .http
        .get(sim.url("/common/v2.0/.well-known/openid-configuration"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["issuer"], format!("{}/{{tenantid}}/v2.0", sim.base));
    assert_eq!(
        doc["token_endpoint"],
        format!("{}/common/oauth2/v2.0/token", sim.base)
    );

    let v1: Value = sim
        .http
        .get(sim.url(&format!("/{CONTOSO}/discovery/keys")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let (kid, _) = sim.jwks_key(CONTOSO).await;
    assert_eq!(v1["keys"][0]["kid"], kid.as_str());

    let resp = sim
        .http
        .get(sim.url("/99999999-9999-4999-8999-999999999999/v2.0/.well-known/openid-configuration"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(aadsts(&resp.json().await.unwrap()), 90002);
}

#[tokio::test]
async fn ten_thousand_generated_tenants() {
    let sim = start(DevIdpOptions {
        generated_tenants: 10_000,
        ..Default::default()
    })
    .await;
    let tid = devidp::generated_tenant_id(10_000);
    assert_eq!(tid, "00000000-0000-4000-8000-000000010000");
    let (code, verifier) = sim.code_for(&tid, "admin@tenant-10000.example", true).await;
    let (status, body) = sim.redeem_at(&tid, &code, &verifier).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let c =
        jsonwebtoken::dangerous::insecure_decode::<Value>(body["access_token"].as_str().unwrap())
            .unwrap()
            .claims;
    assert_eq!(c["tid"], tid.as_str());
    // Generated tenants enforce MFA.
    let (_, challenge) = pkce();
    let resp = sim
        .submit(
            &tid,
            &authorize_query(CONSENT_SCOPES, &challenge),
            "admin@tenant-10000.example",
            false,
            "accept",
        )
        .await;
    assert_eq!(location(&resp)["error"], "interaction_required");
    let dir = sim.sim_get("/directory").await;
    assert_eq!(dir["tenants"].as_array().unwrap().len(), 10_003);
}

#[tokio::test]
async fn directory_can_come_from_a_toml_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("directory.toml");
    std::fs::write(
        &path,
        r#"
        [[tenants]]
        id = "11111111-2222-4333-8444-555555555555"
        name = "Northwind"
        domain = "northwind.example"
        mfa = "not_enforced"
        [[tenants.users]]
        upn = "nina@northwind.example"
        name = "Nina North"
        role = "Admin Agent"
        "#,
    )
    .unwrap();
    let sim = start(DevIdpOptions {
        directory_file: Some(path),
        ..Default::default()
    })
    .await;
    let tid = "11111111-2222-4333-8444-555555555555";
    let tokens = sim.consent(tid, "nina@northwind.example", false).await;
    assert!(tokens["access_token"].is_string());
    // The demo tenants are not there.
    let (_, challenge) = pkce();
    let resp = sim
        .submit(
            "common",
            &authorize_query(CONSENT_SCOPES, &challenge),
            "jane@contoso.example",
            true,
            "accept",
        )
        .await;
    assert!(resp.text().await.unwrap().contains("AADSTS50034"));
}

// ---------- /_sim/tokens: minting consented grants ----------

impl Sim {
    /// A `/_sim/` call whose status the test wants to see.
    async fn sim_call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method, self.url(&format!("/_sim{path}")));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn mint(&self, body: Value) -> (StatusCode, Value) {
        self.sim_call(reqwest::Method::POST, "/tokens", Some(body))
            .await
    }

    async fn grant_count(&self) -> usize {
        self.sim_get("/grants").await.as_array().unwrap().len()
    }
}

fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
    k.sort();
    k
}

#[tokio::test]
async fn sim_tokens_mint_what_sign_in_and_redemption_would() {
    let sim = demo().await;
    let (status, minted) = sim.mint(json!({"upn": "jane@contoso.example"})).await;
    assert_eq!(status, StatusCode::OK, "{minted}");
    // The same JSON as a real code redemption.
    let redeemed = sim.consent(CONTOSO, "sam@contoso.example", true).await;
    assert_eq!(keys(&minted), keys(&redeemed));
    assert_eq!(minted["scope"], redeemed["scope"]);
    assert_eq!(minted["scope"], format!("{PC}/user_impersonation"));
    assert_eq!(minted["token_type"], "Bearer");
    assert_eq!(minted["expires_in"], 3599);
    let rt = minted["refresh_token"].as_str().unwrap().to_string();
    assert!(rt.starts_with("0.A"));

    let (_, key) = sim.jwks_key(CONTOSO).await;
    let iss = format!("{}/{CONTOSO}/", sim.base);
    let at = claims(minted["access_token"].as_str().unwrap(), &key, PC, &iss);
    assert_eq!(at["tid"], CONTOSO);
    assert_eq!(at["upn"], "jane@contoso.example");
    assert_eq!(at["amr"], json!(["pwd", "mfa"]));
    assert_eq!(at["scp"], "user_impersonation");
    let id =
        jsonwebtoken::dangerous::insecure_decode::<Value>(minted["id_token"].as_str().unwrap())
            .unwrap()
            .claims;
    assert_eq!(id["tid"], CONTOSO);
    assert_eq!(id["aud"], DEMO_CLIENT_ID);

    // Minting is not a token call: only `sim_tokens` moved.
    let c = sim.sim_get("/counters").await;
    assert_eq!(c["sim_tokens"], 1);
    assert_eq!(c["token_calls"], json!({"authorization_code": 1}));
    assert_eq!(c["errors"], json!({}));
    assert_eq!(c["faults_served"], 0);

    // The RT is in /_sim/grants like any other, and redeems.
    let grants = sim.sim_get("/grants").await;
    let g = grants
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["refresh_token"] == rt.as_str())
        .expect("the minted RT is listed");
    assert_eq!(g["tenant_id"], CONTOSO);
    assert_eq!(g["upn"], "jane@contoso.example");
    assert_eq!(g["valid"], true);
    assert!(g["last_used_at"].is_null());
    let (status, body) = sim.refresh(CONTOSO, &rt, &format!("{PC}/.default")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["refresh_token"].as_str().unwrap().starts_with("0.A"));
    let c = sim.sim_get("/counters").await;
    assert_eq!(c["token_calls"]["refresh_token"], 1);
    assert_eq!(c["sim_tokens"], 1);

    // Consent was recorded for the tenant: revoking it kills the minted grant.
    sim.sim_post(&format!("/tenants/{CONTOSO}/revoke-consent"), json!({}))
        .await;
    let (_, body) = sim.refresh(CONTOSO, &rt, &format!("{PC}/.default")).await;
    assert_eq!(aadsts(&body), 65001);
    // Minting again consents again.
    assert_eq!(
        sim.mint(json!({"upn": "jane@contoso.example"})).await.0,
        StatusCode::OK
    );
    let (status, _) = sim.refresh(CONTOSO, &rt, &format!("{PC}/.default")).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn sim_tokens_respect_mfa_policy_and_scopes() {
    let sim = demo().await;
    // MFA enforced and not done: Entra's 50076 body, nothing recorded.
    let (status, body) = sim
        .mint(json!({"upn": "jane@contoso.example", "mfa": false}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(aadsts(&body), 50076);
    assert_eq!(body["error"], "interaction_required");
    assert_eq!(sim.grant_count().await, 0);
    let c = sim.sim_get("/counters").await;
    assert_eq!(c["sim_tokens"], 0);
    assert_eq!(c["token_calls"], json!({}));

    // Not enforced: MFA cannot be had, whatever was asked.
    let (_, key) = sim.jwks_key(FABRIKAM).await;
    for mfa in [true, false] {
        let (status, body) = sim
            .mint(json!({"upn": "john@fabrikam.example", "mfa": mfa}))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let iss = format!("{}/{FABRIKAM}/", sim.base);
        let at = claims(body["access_token"].as_str().unwrap(), &key, PC, &iss);
        assert_eq!(at["amr"], json!(["pwd"]));
    }
    // ...so once the tenant requires MFA, John cannot be minted for.
    sim.sim_post(&format!("/tenants/{FABRIKAM}/require-mfa"), json!({}))
        .await;
    let (status, body) = sim.mint(json!({"upn": "john@fabrikam.example"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(aadsts(&body), 50076);

    // Federated MFA.
    let (_, body) = sim.mint(json!({"upn": "trent@wingtip.example"})).await;
    let at =
        jsonwebtoken::dangerous::insecure_decode::<Value>(body["access_token"].as_str().unwrap())
            .unwrap()
            .claims;
    assert_eq!(at["amr"], json!(["fed", "mfa"]));

    // Scopes decide the shape: no openid → no id_token, no offline_access → no RT.
    let (status, body) = sim
        .mint(json!({"upn": "sam@contoso.example", "scopes": format!("{PC}/user_impersonation")}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["access_token"].is_string());
    assert!(body.get("refresh_token").is_none());
    assert!(body.get("id_token").is_none());
    let (_, body) = sim
        .mint(json!({
            "upn": "sam@contoso.example",
            "scopes": "https://management.azure.com/user_impersonation offline_access",
        }))
        .await;
    assert_eq!(
        body["scope"],
        "https://management.azure.com/user_impersonation"
    );
    assert!(body.get("id_token").is_none());
    // That consent was for ARM only in this request, but Partner Center's is still there.
    let rt = body["refresh_token"].as_str().unwrap();
    let (status, _) = sim.refresh(CONTOSO, rt, &format!("{PC}/.default")).await;
    assert_eq!(status, StatusCode::OK);

    // Unknown users are 404 JSON; bad bodies are 400.
    let (status, body) = sim.mint(json!({"upn": "ghost@nowhere.example"})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("ghost@nowhere.example")
    );
    for bad in [
        json!({}),
        json!({"upn": "jane@contoso.example", "users": ["jane@contoso.example"]}),
        json!({"upn": "jane@contoso.example", "scopes": "  "}),
        json!({"upn": "jane@contoso.example", "surprise": 1}),
    ] {
        assert_eq!(sim.mint(bad).await.0, StatusCode::BAD_REQUEST);
    }
    // A deleted tenant's users are gone, as at sign-in.
    sim.http
        .delete(sim.url(&format!("/_sim/tenants/{WINGTIP}")))
        .send()
        .await
        .unwrap();
    let (status, _) = sim.mint(json!({"upn": "trent@wingtip.example"})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn sim_tokens_batch_seeds_ten_thousand_tenants() {
    let sim = start(DevIdpOptions {
        generated_tenants: 10_000,
        ..Default::default()
    })
    .await;
    let users: Vec<String> = (1..=10_000)
        .map(|k| format!("admin@tenant-{k}.example"))
        .collect();

    // All or nothing: one unknown user (or one MFA refusal) and nothing is recorded.
    let mut with_ghost = users[..3].to_vec();
    with_ghost.push("ghost@nowhere.example".into());
    let (status, body) = sim.mint(json!({"users": with_ghost})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["upn"], "ghost@nowhere.example");
    let (status, body) = sim
        .mint(json!({"users": ["john@fabrikam.example", "jane@contoso.example"], "mfa": false}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(aadsts(&body), 50076);
    assert_eq!(sim.grant_count().await, 0);
    assert_eq!(sim.sim_get("/counters").await["sim_tokens"], 0);

    // Seeding: no JWTs to sign, so 10,000 grants take one quick call.
    let started = Instant::now();
    let (status, body) = sim.mint(json!({"users": users, "sign": false})).await;
    assert_eq!(status, StatusCode::OK);
    eprintln!("minted 10,000 unsigned grants in {:?}", started.elapsed());
    let results = body.as_array().unwrap();
    assert_eq!(results.len(), 10_000);
    let rts: std::collections::HashSet<&str> = results
        .iter()
        .map(|r| r["refresh_token"].as_str().unwrap())
        .collect();
    assert_eq!(rts.len(), 10_000);
    assert!(results[0].get("access_token").is_none());
    assert!(results[0].get("id_token").is_none());
    assert_eq!(results[0]["scope"], format!("{PC}/user_impersonation"));
    assert_eq!(results[0]["expires_in"], 3599);
    assert_eq!(sim.grant_count().await, 10_000);
    let c = sim.sim_get("/counters").await;
    assert_eq!(c["sim_tokens"], 10_000);
    assert_eq!(c["token_calls"], json!({}));
    // Results come back in request order, and each RT redeems at its own tenant.
    let grants = sim.sim_get("/grants").await;
    let tenant_of: HashMap<&str, &str> = grants
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["refresh_token"].as_str().unwrap(),
                g["tenant_id"].as_str().unwrap(),
            )
        })
        .collect();
    for k in [1usize, 7_777, 10_000] {
        let rt = results[k - 1]["refresh_token"].as_str().unwrap();
        let tid = devidp::generated_tenant_id(k as u32);
        assert_eq!(tenant_of[rt], tid.as_str());
        let (status, body) = sim.refresh(&tid, rt, &format!("{PC}/.default")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }

    // Signed batches carry the same JSON as a single mint, in request order
    // (they are signed on several threads).
    let some: Vec<String> = users[..150].to_vec();
    let (status, body) = sim.mint(json!({"users": some})).await;
    assert_eq!(status, StatusCode::OK);
    let results = body.as_array().unwrap();
    assert_eq!(results.len(), 150);
    let (_, single) = sim.mint(json!({"upn": "admin@tenant-1.example"})).await;
    for (i, r) in results.iter().enumerate() {
        assert_eq!(keys(r), keys(&single));
        let at =
            jsonwebtoken::dangerous::insecure_decode::<Value>(r["access_token"].as_str().unwrap())
                .unwrap()
                .claims;
        assert_eq!(at["tid"], devidp::generated_tenant_id(i as u32 + 1));
        assert_eq!(at["upn"], format!("admin@tenant-{}.example", i + 1));
    }
    assert_eq!(sim.sim_get("/counters").await["sim_tokens"], 10_151);

    // A single-user batch is still an array.
    let (_, body) = sim.mint(json!({"users": ["admin@tenant-1.example"]})).await;
    assert_eq!(body.as_array().unwrap().len(), 1);
}

// ---------- per-tenant faults ----------

#[tokio::test]
async fn tenant_faults_fail_only_that_tenants_refreshes() {
    let sim = demo().await;
    let pc = format!("{PC}/.default");
    let contoso = sim.mint(json!({"upn": "jane@contoso.example"})).await.1["refresh_token"]
        .as_str()
        .unwrap()
        .to_string();
    let fabrikam = sim.mint(json!({"upn": "john@fabrikam.example"})).await.1["refresh_token"]
        .as_str()
        .unwrap()
        .to_string();
    let faults = format!("/tenants/{CONTOSO}/faults");

    // No count: until cleared.
    let set = sim
        .sim_post(&faults, json!({"status": 503, "retry_after": 30}))
        .await;
    assert_eq!(
        set,
        json!({"tenant_id": CONTOSO, "pending": null, "until_cleared": true})
    );
    for _ in 0..3 {
        let resp = sim
            .http
            .post(sim.url(&format!("/{CONTOSO}/oauth2/v2.0/token")))
            .form(&[
                ("grant_type", "refresh_token"),
                ("client_id", DEMO_CLIENT_ID),
                ("client_secret", DEMO_CLIENT_SECRET),
                ("refresh_token", contoso.as_str()),
                ("scope", pc.as_str()),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(resp.headers()["retry-after"], "30");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"], "temporarily_unavailable");
        aadsts(&body);
    }
    // The call belongs to the RT's tenant, whatever the path says.
    assert_eq!(
        sim.refresh("common", &contoso, &pc).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    // Another tenant refreshes fine, and so does Contoso's code redemption.
    let (status, body) = sim.refresh(FABRIKAM, &fabrikam, &pc).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (code, verifier) = sim.code_for(CONTOSO, "sam@contoso.example", true).await;
    let (status, body) = sim.redeem_at(CONTOSO, &code, &verifier).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The global queue is untouched; the tenant's is visible.
    assert_eq!(sim.sim_get("/faults").await["pending"], 0);
    assert_eq!(sim.sim_get(&faults).await["until_cleared"], true);

    // Clearing restores the tenant.
    let (status, cleared) = sim.sim_call(reqwest::Method::DELETE, &faults, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(cleared["pending"], 0);
    assert_eq!(sim.refresh(CONTOSO, &contoso, &pc).await.0, StatusCode::OK);

    // `count` limits it; the tenant may be named by its domain.
    let set = sim
        .sim_post(
            "/tenants/contoso.example/faults",
            json!({"count": 2, "status": 429, "retry_after": 5}),
        )
        .await;
    assert_eq!(set["pending"], 2);
    assert_eq!(set["until_cleared"], false);
    for _ in 0..2 {
        let (status, body) = sim.refresh(CONTOSO, &contoso, &pc).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(aadsts(&body), 90055);
    }
    assert_eq!(sim.refresh(CONTOSO, &contoso, &pc).await.0, StatusCode::OK);
    assert_eq!(
        sim.sim_get(&faults).await,
        json!({"tenant_id": CONTOSO, "pending": 0, "until_cleared": false})
    );

    // A specific Entra error.
    sim.sim_post(&faults, json!({"error_code": 50196, "count": 1}))
        .await;
    let (status, body) = sim.refresh(CONTOSO, &contoso, &pc).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(aadsts(&body), 50196);

    // Global faults go first, and are used up before the tenant's.
    sim.sim_post(&faults, json!({"status": 503})).await;
    sim.sim_post("/faults", json!({"status": 500})).await;
    assert_eq!(
        sim.refresh(CONTOSO, &contoso, &pc).await.0,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(
        sim.refresh(CONTOSO, &contoso, &pc).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        sim.refresh(FABRIKAM, &fabrikam, &pc).await.0,
        StatusCode::OK
    );
    // DELETE /_sim/faults clears the global queue only, as before.
    sim.http
        .delete(sim.url("/_sim/faults"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        sim.refresh(CONTOSO, &contoso, &pc).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );

    // Faulted calls are token calls: 3 + 1 + 2 + 1 + 1 + 1 + 1 faulted, 4 good.
    let c = sim.sim_get("/counters").await;
    assert_eq!(c["token_calls"]["refresh_token"], 14);
    assert_eq!(c["faults_served"], 10);
    assert_eq!(c["token_calls"]["authorization_code"], 1);

    // Reset clears tenant faults too.
    sim.sim_post("/reset", json!({})).await;
    assert_eq!(sim.sim_get(&faults).await["until_cleared"], false);
}

#[tokio::test]
async fn tenant_faults_latency_html_and_bad_requests() {
    let sim = demo().await;
    let pc = format!("{PC}/.default");
    let rt = sim.mint(json!({"upn": "jane@contoso.example"})).await.1["refresh_token"]
        .as_str()
        .unwrap()
        .to_string();
    let faults = format!("/tenants/{CONTOSO}/faults");
    let started = Instant::now();
    sim.sim_post(
        &faults,
        json!({"count": 1, "status": 504, "latency_ms": 300, "body": "html"}),
    )
    .await;
    let resp = sim
        .http
        .post(sim.url(&format!("/{CONTOSO}/oauth2/v2.0/token")))
        .form(&[
            ("grant_type", "refresh_token"),
            ("client_id", DEMO_CLIENT_ID),
            ("client_secret", DEMO_CLIENT_SECRET),
            ("refresh_token", rt.as_str()),
            ("scope", pc.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::GATEWAY_TIMEOUT);
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    // An empty body means 503 until cleared.
    let resp = sim
        .http
        .post(sim.url(&format!("/_sim{faults}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        sim.refresh(CONTOSO, &rt, &pc).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    // An unknown RT sent to a faulted tenant's path fails like the tenant's calls.
    assert_eq!(
        sim.refresh(CONTOSO, "0.Aunknown", &pc).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    for (path, body, want) in [
        (
            "/tenants/00000000-0000-4000-8000-999999999999/faults".to_string(),
            json!({}),
            StatusCode::NOT_FOUND,
        ),
        (
            faults.clone(),
            json!({"status": 200}),
            StatusCode::BAD_REQUEST,
        ),
        (
            faults.clone(),
            json!({"status": 200, "latency_ms": 100, "error_code": 50196}),
            StatusCode::BAD_REQUEST,
        ),
        (
            faults.clone(),
            // A 200 cannot carry an Entra error.
            json!({"status": 200, "error_code": 50196}),
            StatusCode::BAD_REQUEST,
        ),
        (
            faults.clone(),
            json!({"body": "xml"}),
            StatusCode::BAD_REQUEST,
        ),
        (
            faults.clone(),
            json!({"error": "nope"}),
            StatusCode::BAD_REQUEST,
        ),
        (
            faults.clone(),
            json!({"colour": 1}),
            StatusCode::BAD_REQUEST,
        ),
    ] {
        let (status, resp) = sim.sim_call(reqwest::Method::POST, &path, Some(body)).await;
        assert_eq!(status, want, "{path}: {resp}");
        assert!(resp["error"].is_string());
    }
    // The refused bodies left the standing fault alone.
    assert_eq!(sim.sim_get(&faults).await["until_cleared"], true);
}

#[tokio::test]
async fn tenant_faults_with_ten_thousand_tenants() {
    let sim = start(DevIdpOptions {
        generated_tenants: 10_000,
        ..Default::default()
    })
    .await;
    let pc = format!("{PC}/.default");
    let ks = [1u32, 2, 9_999, 10_000];
    let users: Vec<String> = ks
        .iter()
        .map(|k| format!("admin@tenant-{k}.example"))
        .collect();
    let (_, minted) = sim.mint(json!({"users": users})).await;
    let rts: Vec<String> = minted
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["refresh_token"].as_str().unwrap().to_string())
        .collect();
    // Fault every other generated tenant.
    for k in (2..=10_000).step_by(2) {
        let tid = devidp::generated_tenant_id(k);
        let (status, _) = sim
            .sim_call(
                reqwest::Method::POST,
                &format!("/tenants/{tid}/faults"),
                Some(json!({"status": 503})),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
    }
    let started = Instant::now();
    for (k, rt) in ks.iter().zip(&rts) {
        let tid = devidp::generated_tenant_id(*k);
        let (status, body) = sim.refresh(&tid, rt, &pc).await;
        let want = if k % 2 == 0 {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        };
        assert_eq!(status, want, "tenant {k}: {body}");
    }
    assert!(started.elapsed() < Duration::from_secs(5));
}
