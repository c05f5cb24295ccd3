//! Issue 17 item 2: anonymous requests must not reach the key provider or the IdP. A real
//! `samvault serve` on the Key Vault double (`azure-keyvault`) and the dev IdP, whose
//! `/_sim/counters` count every Key Vault operation and every token-endpoint call:
//!
//! - cookie-less pages and probes (`/onboard`, `/ops/signin`, `/readyz`) cost no wrap or
//!   unwrap, and `/readyz` at most one `get key` every few seconds;
//! - a flood of sign-in starts and forged callbacks from one address gets 429 pages (with
//!   `Retry-After`) past `SAMVAULT_ONBOARD_RATE`, so the IdP sees a bounded number of
//!   authorization-code calls, and a partner at another address consents all the same;
//! - sessions are sealed under a session key wrapped once: they survive a restart, which costs
//!   one unwrap however many sessions are open, and `keys rotate` moves that key too.
#![allow(clippy::too_many_lines)] // scenarios read top to bottom

mod support;

use reqwest::header::{COOKIE, SET_COOKIE};
use serde_json::Value;
use support::Backend;
use support::keyvault::KeyVaultDouble;
use support::ops::Operator;
use support::stack::*;

/// Key Vault operations that cost a data key's wrap or unwrap.
async fn key_operations(kv: &KeyVaultDouble) -> (u64, u64) {
    (kv.count("wrapkey").await, kv.count("unwrapkey").await)
}

/// Every call the dev IdP's token endpoint received, whatever the grant.
async fn idp_token_calls(stack: &Stack) -> u64 {
    let counters = stack.counters().await;
    counters["token_calls"]
        .as_object()
        .map_or(0, |calls| calls.values().filter_map(Value::as_u64).sum())
}

async fn authorization_code_calls(stack: &Stack) -> u64 {
    stack.counters().await["token_calls"]["authorization_code"]
        .as_u64()
        .unwrap_or(0)
}

/// An ops user's session cookie, signed in now.
async fn ops_session(stack: &Stack) -> String {
    Operator::signed_in(stack, "alice", "admin")
        .await
        .cookie()
        .unwrap()
}

/// What `/ops` answers the session `cookie`: 200 while it is signed in.
async fn ops_status(stack: &Stack, cookie: &str) -> u16 {
    let request = stack.http.get(format!("{}/ops", stack.sv()));
    request
        .header(COOKIE, cookie)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn cookie_less_pages_and_probes_cost_no_key_vault_call(backend: Backend) {
    let Some(db) = support::fresh_database(backend).await else {
        return;
    };
    let kv = KeyVaultDouble::start().await;
    let stack = Stack::start(&db.url, kv.stack_options()).await;
    let (wraps, unwraps) = key_operations(&kv).await;
    let gets = kv.count("get").await;
    let idp_calls = idp_token_calls(&stack).await;

    for _ in 0..200 {
        let page = stack
            .http
            .get(format!("{}/onboard", stack.sv()))
            .send()
            .await
            .unwrap();
        assert_eq!(page.status(), 200);
        assert!(page.headers().contains_key(SET_COOKIE), "a session each");
    }
    for _ in 0..50 {
        let signin = stack.http.get(format!("{}/ops/signin", stack.sv()));
        assert_eq!(signin.send().await.unwrap().status(), 200);
    }
    for _ in 0..200 {
        let ready = stack.http.get(format!("{}/readyz", stack.sv()));
        assert_eq!(ready.send().await.unwrap().status(), 200);
    }

    let (after_wraps, after_unwraps) = key_operations(&kv).await;
    let probed = kv.count("get").await - gets;
    eprintln!(
        "250 cookie-less pages and 200 probes: {} wraps, {} unwraps, {probed} get key",
        after_wraps - wraps,
        after_unwraps - unwraps
    );
    assert_eq!(
        (after_wraps, after_unwraps),
        (wraps, unwraps),
        "250 new sessions sealed without a wrap or an unwrap"
    );
    // One check per few seconds of probes, and the provider's own refresh every 30 s.
    assert!(probed <= 3, "200 probes cost {probed} Key Vault calls");
    assert_eq!(idp_token_calls(&stack).await, idp_calls);
}

/// One round of an anonymous flood from `http`'s address: the landing page, the start form
/// with its CSRF token, then a callback with a forged code for the state the start got (or
/// for none). Returns the answers of the start and the callback.
async fn flood_round(stack: &Stack, http: &reqwest::Client) -> [reqwest::Response; 2] {
    let landing = http
        .get(format!("{}/onboard", stack.sv()))
        .send()
        .await
        .unwrap();
    assert_eq!(landing.status(), 200, "the landing page is not limited");
    let cookie = landing.headers()[SET_COOKIE]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let csrf = field(&landing.text().await.unwrap(), "csrf");
    let start = http
        .post(format!("{}/onboard/start", stack.sv()))
        .header(COOKIE, &cookie)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    // The start renews the session id: the callback comes with the new cookie.
    let cookie = start.headers().get(SET_COOKIE).map_or(cookie, |c| {
        c.to_str().unwrap().split(';').next().unwrap().to_string()
    });
    let state = start
        .headers()
        .get("location")
        .and_then(|l| url::Url::parse(l.to_str().unwrap()).ok())
        .and_then(|u| {
            u.query_pairs()
                .find(|(k, _)| k == "state")
                .map(|(_, v)| v.to_string())
        })
        .unwrap_or_else(|| "forged".into());
    let callback = http
        .get(format!(
            "{}/onboard/callback?code=forged-code&state={state}",
            stack.sv()
        ))
        .header(COOKIE, cookie)
        .send()
        .await
        .unwrap();
    [start, callback]
}

/// Checks a refusal of the limit: a 429 page (HTML) that says when to come back.
async fn assert_too_many(response: reqwest::Response) {
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
    assert!(
        retry_after.is_some_and(|s| (1..=60).contains(&s)),
        "{retry_after:?}"
    );
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let page = response.text().await.unwrap();
    assert!(page.contains("Too many sign-ins"), "{page}");
    assert!(page.contains("Nothing was stored or changed"), "{page}");
}

async fn a_flood_of_sign_ins_from_one_address_is_refused_and_spares_the_idp(backend: Backend) {
    let Some(db) = support::fresh_database(backend).await else {
        return;
    };
    let kv = KeyVaultDouble::start().await;
    // Six steps a minute: three sign-ins started and answered, then refusals.
    let options = kv.stack_options().env("SAMVAULT_ONBOARD_RATE", "6");
    let stack = Stack::start(&db.url, options).await;
    let (wraps, unwraps) = key_operations(&kv).await;
    let codes = authorization_code_calls(&stack).await;
    let mallory = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .local_address("127.0.7.7".parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap();

    let (mut started, mut refused) = (0, 0);
    for _ in 0..30 {
        for answer in flood_round(&stack, &mallory).await {
            match answer.status().as_u16() {
                303 => started += 1,
                429 => {
                    refused += 1;
                    assert_too_many(answer).await;
                }
                status => assert!(
                    (400..500).contains(&status),
                    "{status}: {}",
                    answer.text().await.unwrap()
                ),
            }
        }
    }
    let redeemed = authorization_code_calls(&stack).await - codes;
    eprintln!(
        "30 flood rounds: {started} started, {refused} steps refused, {redeemed} codes redeemed"
    );
    assert!((3..=4).contains(&started), "{started} sign-ins started");
    assert!(refused >= 50, "{refused} of 60 steps refused");
    assert!(redeemed <= 4, "{redeemed} forged codes reached the IdP");
    assert_eq!(key_operations(&kv).await, (wraps, unwraps));

    // A partner at another address consents meanwhile; their consent is the only wrap.
    stack.consent("jane@contoso.example").await;
    assert_eq!(stack.statuses()[CONTOSO], "active");
    let (after_wraps, after_unwraps) = key_operations(&kv).await;
    assert_eq!((after_wraps - wraps, after_unwraps), (1, unwraps));
}

/// A cookie-less visit to the landing page: the session cookie it was given.
async fn visit(stack: &Stack) -> String {
    let mut visitor = Browser::new(stack);
    visitor.get(&format!("{}/onboard", stack.sv())).await;
    visitor.cookie().unwrap().to_string()
}

/// The landing page again with `cookie`: whether the session was found (the cookie it sets,
/// if any, names the same session; a lost session would get a new id).
async fn session_found(stack: &Stack, cookie: &str) -> bool {
    let page = stack
        .http
        .get(format!("{}/onboard", stack.sv()))
        .header(COOKIE, cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    page.headers()
        .get_all(SET_COOKIE)
        .iter()
        .all(|set| set.to_str().unwrap().starts_with(&format!("{cookie};")))
}

async fn sessions_survive_a_restart_for_one_unwrap(backend: Backend) {
    let Some(db) = support::fresh_database(backend).await else {
        return;
    };
    let kv = KeyVaultDouble::start().await;
    let mut stack = Stack::start(&db.url, kv.stack_options()).await;
    let alice = ops_session(&stack).await;
    // Jane starts a consent before the restart and finishes it after.
    let (jane, authorize) = {
        let mut jane = Browser::new(&stack);
        let authorize = jane.start(&format!("{}/onboard", stack.sv())).await;
        (jane.cookie().unwrap().to_string(), authorize)
    };
    let mut visitors = Vec::new();
    for _ in 0..5 {
        visitors.push(visit(&stack).await);
    }

    stack.kill_replica(0);
    let (_, unwraps) = key_operations(&kv).await;
    stack.start_replica(0).await;
    for visitor in &visitors {
        assert!(session_found(&stack, visitor).await, "{visitor}");
    }
    assert_eq!(ops_status(&stack, &alice).await, 200, "still signed in");
    let callback = Browser::new(&stack)
        .sign_in(&authorize, "jane@contoso.example", true, "accept")
        .await;
    let done = stack.http.get(&callback).header(COOKIE, &jane);
    let done = done.send().await.unwrap();
    assert_eq!(done.status(), 200, "{}", done.text().await.unwrap());
    // Two keys are opened at start, each once: the session key (for every session) and the
    // audit chain's key.
    assert_eq!(
        kv.count("unwrapkey").await - unwraps,
        2,
        "the session key once for every session, and the audit key"
    );
}

/// On the local key file: a rotation with Key Vault waits out its 30 s refresh twice.
async fn a_key_rotation_moves_the_session_key(backend: Backend) {
    let Some(db) = support::fresh_database(backend).await else {
        return;
    };
    let mut stack = Stack::start(&db.url, StackOptions::default()).await;
    let alice = ops_session(&stack).await;
    let status: Value = serde_json::from_str(&stack.cli(&["keys", "status", "--json"])).unwrap();
    let sealed = status["sealed"].as_array().unwrap();
    let session_keys: Vec<&Value> = sealed
        .iter()
        .filter(|r| r["what"] == "session keys")
        .collect();
    assert_eq!(session_keys.len(), 1, "{status}");
    assert_eq!(session_keys[0]["kek_id"], status["current_kek_id"]);
    assert!(
        sealed.iter().all(|r| r["what"] != "sessions"),
        "sessions are sealed under the session key, not each under the KEK: {status}"
    );

    let out = stack.cli(&["keys", "rotate"]);
    assert!(out.contains("session keys"), "{out}");
    let status: Value = serde_json::from_str(&stack.cli(&["keys", "status", "--json"])).unwrap();
    assert_eq!(status["not_under_current_key"], 0, "{status}");
    stack.kill_replica(0);
    stack.start_replica(0).await;
    assert_eq!(
        ops_status(&stack, &alice).await,
        200,
        "a session sealed before the rotation opens after it"
    );
}

on_both_backends!(
    cookie_less_pages_and_probes_cost_no_key_vault_call,
    a_flood_of_sign_ins_from_one_address_is_refused_and_spares_the_idp,
    sessions_survive_a_restart_for_one_unwrap,
    a_key_rotation_moves_the_session_key,
);
