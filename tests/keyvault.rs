//! The Azure Key Vault key provider against `samvault dev-keyvault`, the HTTPS test double of
//! Key Vault's REST operations (challenge authentication, its own token endpoint, get, wrapkey,
//! unwrapkey, rotate), served with a test CA made here. The provider runs on Microsoft's SDK,
//! in-process and inside real `samvault serve` processes, on SQLite and PostgreSQL.
#![allow(clippy::too_many_lines)] // scenarios read top to bottom

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use samvault::vault::{KeyProvider, Vault, VaultError, WrappedKey};
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use support::Backend;
use support::keyvault::*;
use support::stack::*;

fn version_of(kek_id: &str) -> &str {
    kek_id.rsplit('/').next().unwrap()
}

/// The current grant's wrapped data key of a partner, as stored.
async fn current_wrapped_key(stack: &Stack, tenant: &str) -> WrappedKey {
    use sqlx::Row;
    let db = stack.db().await;
    let row = sqlx::query(
        "SELECT kek_id, wrapped_key FROM grants WHERE tenant_id = $1 AND sealed IS NOT NULL ORDER BY version DESC LIMIT 1",
    )
    .bind(tenant)
    .fetch_one(db.pool())
    .await
    .unwrap();
    WrappedKey {
        kek_id: row.try_get("kek_id").unwrap(),
        bytes: row.try_get("wrapped_key").unwrap(),
    }
}

async fn sealed_kek_ids(stack: &Stack) -> Vec<(String, i64)> {
    let db = stack.db().await;
    samvault::storage::sealed::count_by_kek(&db)
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.kek_id, c.records))
        .collect()
}

async fn readyz(stack: &Stack) -> (u16, Value) {
    let response = stack
        .http
        .get(format!("{}/readyz", stack.sv()))
        .send()
        .await
        .unwrap();
    (
        response.status().as_u16(),
        response.json().await.unwrap_or(Value::Null),
    )
}

/// A token request; returns the status, the body and the `Retry-After` header.
async fn token_request(
    stack: &Stack,
    creds: &(String, String),
    tenant: &str,
) -> (u16, Value, Option<String>) {
    let response = stack.token_response(0, creds, tenant, &token_body()).await;
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    (status, response.json().await.unwrap(), retry_after)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_double_speaks_key_vaults_challenge_protocol() {
    let kv = KeyVaultDouble::start().await;
    let key = format!("{}?api-version=2025-07-01", kv.key_url());
    let challenged = kv.http.get(&key).send().await.unwrap();
    assert_eq!(challenged.status(), 401);
    let challenge = challenged.headers()["www-authenticate"].to_str().unwrap();
    assert!(
        challenge.starts_with("Bearer authorization=\"")
            && challenge.contains(DEV_KEYVAULT_TENANT)
            && challenge.contains("resource=\"https://vault.azure.net\""),
        "{challenge}"
    );
    let body: Value = challenged.json().await.unwrap();
    assert_eq!(body["error"]["code"], "Unauthorized");

    let token_url = format!("{}/{}/oauth2/v2.0/token", kv.base(), DEV_KEYVAULT_TENANT);
    let form = |secret: &'static str| {
        [
            ("grant_type", "client_credentials"),
            ("client_id", DEV_KEYVAULT_CLIENT_ID),
            ("client_secret", secret),
            ("scope", "https://vault.azure.net/.default"),
        ]
    };
    let refused = kv
        .http
        .post(&token_url)
        .form(&form("wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    let refused: Value = refused.json().await.unwrap();
    assert_eq!(refused["error"], "invalid_client");
    assert_eq!(refused["error_codes"][0], 7000215);

    let issued = json_of(kv.http.post(&token_url).form(&form(DEV_KEYVAULT_SECRET))).await;
    let bearer = issued["access_token"].as_str().unwrap();
    assert_eq!(jwt_claims(bearer)["aud"], "https://vault.azure.net");
    let bundle = json_of(kv.http.get(&key).bearer_auth(bearer)).await;
    let kid = bundle["key"]["kid"].as_str().unwrap();
    assert!(kid.starts_with(&format!("{}/", kv.key_url())), "{kid}");
    assert_eq!(version_of(kid).len(), 32);
    assert_eq!(bundle["key"]["kty"], "RSA");
    assert_eq!(bundle["key"]["e"], "AQAB");

    let missing = kv
        .http
        .get(format!("{}/keys/nope?api-version=2025-07-01", kv.base()))
        .bearer_auth(bearer)
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let missing: Value = missing.json().await.unwrap();
    assert_eq!(missing["error"]["code"], "KeyNotFound");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_provider_wraps_unwraps_and_rotates_through_the_sdk() {
    let mut kv = KeyVaultDouble::start().await;
    let first = kv.provider().await;
    let v1 = first.current_kek_id();
    assert!(v1.starts_with(&kv.kek_prefix()), "{v1}");
    // The SDK met the challenge once and fetched one token from the double's authority.
    assert_eq!(kv.count("challenges").await, 1);
    assert_eq!(kv.count("tokens").await, 1);

    let vault = Vault::new(Arc::new(first));
    let sealed = vault.seal(b"0.A-refresh-token", "ctx").await.unwrap();
    assert_eq!(sealed.wrapped_key.kek_id, v1);
    assert_eq!(sealed.wrapped_key.bytes.len(), 256, "RSA-2048 ciphertext");
    assert_eq!(kv.unwrap_here(&sealed.wrapped_key).len(), 32);

    // Another process (no cache) unwraps through the vault, once; then from its cache.
    let second = Vault::new(Arc::new(kv.provider().await));
    for _ in 0..2 {
        let plain = second.open(&sealed, "ctx").await.unwrap();
        assert_eq!(plain.expose_secret().as_slice(), b"0.A-refresh-token");
    }
    assert_eq!(kv.count("unwrapkey").await, 1);

    // Rotation: a new version wraps, the old one still unwraps; others follow on refresh.
    let v2 = second.provider().create_kek().await.unwrap();
    assert!(v2.starts_with(&kv.kek_prefix()) && v2 != v1, "{v2}");
    assert_eq!(second.provider().current_kek_id(), v2);
    let newer = second.seal(b"0.A-newer", "ctx").await.unwrap();
    assert_eq!(newer.wrapped_key.kek_id, v2);
    let third = Vault::new(Arc::new(kv.provider().await));
    assert_eq!(third.provider().current_kek_id(), v2);
    assert!(third.open(&sealed, "ctx").await.is_ok(), "old version");
    assert!(third.open(&newer, "ctx").await.is_ok(), "new version");
    assert!(
        vault.provider().refresh().await.unwrap(),
        "v1 holder learns v2"
    );
    assert_eq!(vault.provider().current_kek_id(), v2);
    assert!(third.provider().owns(&v1) && third.provider().owns(&v2));
    assert!(!third.provider().owns("local:0123456789abcdef"));
    assert!(
        !third.provider().retire(&v1).await.unwrap(),
        "Key Vault keeps versions"
    );

    // Altered wrapped bytes: Key Vault cannot decrypt them.
    let fresh = kv.provider().await;
    let mut altered = newer.wrapped_key.clone();
    altered.bytes[10] ^= 1;
    assert!(matches!(
        fresh.unwrap(&altered).await,
        Err(VaultError::Integrity)
    ));

    // A version the vault does not have: it refuses, which integrations will see as a 503.
    let unknown = WrappedKey {
        kek_id: format!("{}{}", kv.kek_prefix(), "0".repeat(32)),
        bytes: sealed.wrapped_key.bytes.clone(),
    };
    match fresh.unwrap(&unknown).await {
        Err(VaultError::ProviderUnavailable(why)) => assert!(why.contains("KeyNotFound"), "{why}"),
        other => panic!("expected ProviderUnavailable, got {other:?}"),
    }
    // Another key's record is not this provider's to open.
    let foreign = WrappedKey {
        kek_id: format!(
            "azure-keyvault:{}/keys/other-key/{}",
            kv.base(),
            "1".repeat(32)
        ),
        bytes: sealed.wrapped_key.bytes.clone(),
    };
    assert!(!fresh.owns(&foreign.kek_id));
    assert!(matches!(
        fresh.unwrap(&foreign).await,
        Err(VaultError::Config(_))
    ));

    // A missing permission is named.
    kv.faults(1, 403, None).await;
    match fresh.unwrap(&sealed.wrapped_key).await {
        Err(VaultError::ProviderUnavailable(why)) => assert!(why.contains("unwrapKey"), "{why}"),
        other => panic!("expected ProviderUnavailable, got {other:?}"),
    }

    // /readyz's check: fine, then a quick failure once the vault is gone.
    fresh.check().await.unwrap();
    kv.kill();
    let started = Instant::now();
    assert!(matches!(
        fresh.check().await,
        Err(VaultError::ProviderUnavailable(_))
    ));
    assert!(started.elapsed() < Duration::from_secs(3));
}

async fn consent_exchange_and_key_rotation(backend: Backend) {
    let Some(db) = support::fresh_database(backend).await else {
        return;
    };
    let kv = KeyVaultDouble::start().await;
    let mut stack = Stack::start(&db.url, kv.stack_options()).await;
    stack.consent("jane@contoso.example").await;
    let creds = stack.client(&[PARTNER_CENTER]);
    let (status, token) = stack.token(&creds, CONTOSO, token_body()).await;
    assert_eq!(status, 200, "{token}");

    let status: Value = serde_json::from_str(&stack.cli(&["keys", "status", "--json"])).unwrap();
    assert_eq!(status["provider"], "Azure Key Vault");
    let v1 = status["current_kek_id"].as_str().unwrap().to_string();
    assert!(v1.starts_with(&kv.kek_prefix()), "{v1}");

    // Only wrapped keys in the database, every one under the vault's key.
    let sealed = sealed_kek_ids(&stack).await;
    assert!(!sealed.is_empty());
    for (kek_id, _) in &sealed {
        assert!(kek_id.starts_with(&kv.kek_prefix()), "{kek_id}");
    }
    let wrapped = current_wrapped_key(&stack, CONTOSO).await;
    let data_key = kv.unwrap_here(&wrapped);
    let dump = stack.database_dump();
    assert!(!support::contains_bytes(&dump, &data_key));
    assert!(!contains(&dump, &hex::encode(&data_key)));
    assert!(!contains(
        &dump,
        &base64::engine::general_purpose::STANDARD.encode(&data_key)
    ));
    // Nor in the service's debug log, where the SDK logs its requests (headers redacted).
    let log = stack.log(0);
    assert!(
        log.contains("/keys/"),
        "the SDK's requests are logged at debug"
    );
    let data_key_b64url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&data_key);
    for secret in [
        DEV_KEYVAULT_SECRET,
        &data_key_b64url,
        &hex::encode(&data_key),
    ] {
        assert!(!log.contains(secret), "{secret} in the log");
    }
    assert!(
        !log.contains("Bearer ey"),
        "a Key Vault access token in the log"
    );
    let grants = stack.sim(reqwest::Method::GET, "grants", Value::Null).await;
    for grant in grants.as_array().unwrap() {
        assert!(!contains(&dump, grant["refresh_token"].as_str().unwrap()));
    }

    // The key is rotated in the vault; a replica started afterwards wraps with the new
    // version and still opens the grant wrapped by the old one.
    let v2 = kv.provider().await.create_kek().await.unwrap();
    assert_ne!(v2, v1);
    stack.kill_replica(0);
    stack.start_replica(0).await;
    let unwraps = kv.count("unwrapkey").await;
    let (status, token) = stack.token(&creds, CONTOSO, token_body()).await;
    assert_eq!(
        (status, token["cached"].as_bool()),
        (200, Some(false)),
        "{token}"
    );
    assert_eq!(
        kv.count("unwrapkey").await,
        unwraps + 1,
        "the old version unwrapped"
    );
    assert_eq!(current_wrapped_key(&stack, CONTOSO).await.kek_id, v2);

    let status: Value = serde_json::from_str(&stack.cli(&["keys", "status", "--json"])).unwrap();
    assert_eq!(status["current_kek_id"], v2.as_str());
    let sealed = sealed_kek_ids(&stack).await;
    assert!(sealed.iter().any(|(k, _)| *k == v2));
    assert!(
        sealed.iter().all(|(k, _)| *k == v1 || *k == v2),
        "{sealed:?}"
    );
}

async fn an_outage_serves_cached_tokens_and_loses_nothing(backend: Backend) {
    let Some(db) = support::fresh_database(backend).await else {
        return;
    };
    let mut kv = KeyVaultDouble::start().await;
    let stack = Stack::start(&db.url, kv.stack_options()).await;
    stack.consent("jane@contoso.example").await;
    stack.consent("trent@wingtip.example").await;
    let creds = stack.client(&[PARTNER_CENTER]);
    let (status, contoso) = stack.token(&creds, CONTOSO, token_body()).await;
    assert_eq!(status, 200, "{contoso}");
    let before = stack.statuses();
    assert!(before.iter().all(|(_, s)| s == "active"), "{before:?}");
    assert_eq!(readyz(&stack).await.0, 200);

    kv.kill();
    // Contoso's access token is cached: served as if nothing happened.
    let (status, cached) = stack.token(&creds, CONTOSO, token_body()).await;
    assert_eq!((status, cached["cached"].as_bool()), (200, Some(true)));
    assert_eq!(cached["access_token"], contoso["access_token"]);
    // Wingtip's needs the vault: a quick, clear 503, before any call to Entra ID (whose
    // rotated refresh token could not have been stored).
    let idp_calls = stack.refresh_calls().await;
    let started = Instant::now();
    let (status, problem, retry_after) = token_request(&stack, &creds, WINGTIP).await;
    assert_eq!(status, 503, "{problem}");
    assert_eq!(problem["code"], "key_provider_unavailable");
    assert!(problem["detail"].as_str().unwrap().contains("key provider"));
    assert!(retry_after.is_some_and(|s| s.parse::<u64>().unwrap() >= 1));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(stack.refresh_calls().await, idp_calls);
    // /readyz answers from a check at most a few seconds old.
    eventually(Duration::from_secs(10), "not ready", || async {
        readyz(&stack).await.0 == 503
    })
    .await;
    let (_, ready) = readyz(&stack).await;
    assert_eq!(ready, json!({ "database": true, "key_provider": false }));
    assert_eq!(stack.statuses(), before, "an outage changes no partner");

    kv.restart().await;
    eventually(Duration::from_secs(10), "ready again", || async {
        readyz(&stack).await.0 == 200
    })
    .await;
    let (status, wingtip) = stack.token(&creds, WINGTIP, token_body()).await;
    assert_eq!(status, 200, "{wingtip}");
    assert_eq!(stack.statuses(), before, "nothing lost");
}

/// The scheduler meets the outage too: the due grant is tried once, costs no redemption, and
/// waits instead of being claimed again and again.
async fn scheduled_rotations_pause_while_the_vault_is_down(backend: Backend) {
    let Some(db) = support::fresh_database(backend).await else {
        return;
    };
    let mut kv = KeyVaultDouble::start().await;
    let options = kv.stack_options().env("SAMVAULT_ROTATE_AFTER", "2s");
    let stack = Stack::start(&db.url, options).await;
    stack.consent("jane@contoso.example").await;
    let attempts = "SELECT COUNT(*) FROM rotation_attempts WHERE tenant_id = $1";
    eventually(Duration::from_secs(20), "a scheduled rotation", || async {
        stack.scalar(attempts, CONTOSO).await >= 1
    })
    .await;

    kv.kill();
    let idp_calls = stack.refresh_calls().await;
    let rotate_in = || async {
        let at = stack
            .scalar(
                "SELECT rotate_at FROM partners WHERE tenant_id = $1",
                CONTOSO,
            )
            .await;
        at - time::OffsetDateTime::now_utc().unix_timestamp()
    };
    eventually(
        Duration::from_secs(20),
        "the due rotation postponed",
        || async { rotate_in().await >= 20 },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(stack.refresh_calls().await, idp_calls, "no redemption");
    let tries = stack.log(0).matches("Key Vault unavailable").count();
    assert!((1..=2).contains(&tries), "{tries} tries");
    assert_eq!(stack.partner(CONTOSO).unwrap()["status"], "active");
}

async fn throttling_is_retried_within_a_bound_and_never_a_500(backend: Backend) {
    let Some(db) = support::fresh_database(backend).await else {
        return;
    };
    let kv = KeyVaultDouble::start().await;
    let stack = Stack::start(&db.url, kv.stack_options()).await;
    let tenant_1 = generated_tenant(1);
    for upn in [
        "jane@contoso.example",
        "trent@wingtip.example",
        "admin@tenant-1.example",
    ] {
        stack.consent(upn).await;
    }
    let creds = stack.client(&[PARTNER_CENTER]);

    // Two 429s with Retry-After: 0, then an answer: the request succeeds.
    let faults = kv.count("faults").await;
    kv.faults(2, 429, Some(0)).await;
    let (status, body, _) = token_request(&stack, &creds, CONTOSO).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(kv.count("faults").await, faults + 2);

    // Throttled throughout: 503 after the bounded backoff, not a hang.
    kv.faults(100, 429, Some(0)).await;
    let started = Instant::now();
    let (status, body, retry_after) = token_request(&stack, &creds, WINGTIP).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (503, Some("key_provider_unavailable"))
    );
    assert!(retry_after.is_some());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    kv.faults(0, 0, None).await;

    // A Retry-After beyond the bound is not waited for, nor hammered: one request, a 503.
    let faults = kv.count("faults").await;
    kv.faults(5, 429, Some(30)).await;
    let (status, body, _) = token_request(&stack, &creds, &tenant_1).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (503, Some("key_provider_unavailable"))
    );
    assert_eq!(kv.count("faults").await, faults + 1);
    kv.faults(0, 0, None).await;

    // A missing permission: 503 to the integration, the permission and role in the log.
    kv.faults(1, 403, None).await;
    let (status, body, _) = token_request(&stack, &creds, &tenant_1).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (503, Some("key_provider_unavailable"))
    );
    let log = stack
        .log_holding(
            0,
            &["Key Vault denies samvault a permission", "Key Vault Crypto"],
        )
        .await;
    assert!(
        log.contains("Key Vault denies samvault a permission") && log.contains("Key Vault Crypto"),
        "{log}"
    );

    let (status, body, _) = token_request(&stack, &creds, &tenant_1).await;
    assert_eq!(status, 200, "{body}");
    assert!(stack.statuses().values().all(|s| s == "active"));
}

async fn moving_from_local_to_key_vault_keeps_every_partner(backend: Backend) {
    let Some(db) = support::fresh_database(backend).await else {
        return;
    };
    let kv = KeyVaultDouble::start().await;
    // Start on the local key file (the stack's default).
    let mut stack = Stack::start(&db.url, StackOptions::default()).await;
    stack.consent("jane@contoso.example").await;
    let local = current_wrapped_key(&stack, CONTOSO).await.kek_id;
    assert!(local.starts_with("local:"), "{local}");

    // Restart on Key Vault, keeping the key file as a previous provider.
    let key_file = stack.dir.path().join("samvault.key");
    for (name, value) in kv.env() {
        stack.env.push((name.into(), value));
    }
    stack.env.push((
        "SAMVAULT_PREVIOUS_KEY_PROVIDERS".into(),
        format!("local:{}", key_file.display()),
    ));
    stack.kill_replica(0);
    stack.start_replica(0).await;

    let creds = stack.client(&[PARTNER_CENTER]);
    let (status, body) = stack.token(&creds, CONTOSO, token_body()).await;
    assert_eq!(status, 200, "{body}");
    let moved = current_wrapped_key(&stack, CONTOSO).await.kek_id;
    assert!(moved.starts_with(&kv.kek_prefix()), "{moved}");
    let status: Value = serde_json::from_str(&stack.cli(&["keys", "status", "--json"])).unwrap();
    assert_eq!(status["current_kek_id"], moved.as_str());
    assert!(
        status["not_under_current_key"].as_i64().unwrap() > 0,
        "{status}"
    );

    // `keys rotate --onto-current` finishes the move: every record is wrapped by Key Vault, and
    // the local key is reported unreferenced (to be dropped from the configuration).
    let out = stack.cli(&["keys", "rotate", "--onto-current"]);
    assert!(out.contains(&moved), "{out}");
    assert!(
        out.contains(&format!(
            "{local} is no longer referenced: remove it from SAMVAULT_PREVIOUS_KEY_PROVIDERS"
        )),
        "{out}"
    );
    let status: Value = serde_json::from_str(&stack.cli(&["keys", "status", "--json"])).unwrap();
    assert_eq!(status["not_under_current_key"], 0, "{status}");
    assert!(
        key_file.exists(),
        "a previous provider's key file is left to the operator"
    );

    // Without the key file, every partner still works.
    stack
        .env
        .retain(|(name, _)| name != "SAMVAULT_PREVIOUS_KEY_PROVIDERS");
    std::fs::remove_file(&key_file).unwrap();
    stack.kill_replica(0);
    stack.start_replica(0).await;
    let creds = stack.client(&[PARTNER_CENTER]);
    let (status, body) = stack.token(&creds, CONTOSO, token_body()).await;
    assert_eq!(status, 200, "{body}");
}

on_both_backends!(
    consent_exchange_and_key_rotation,
    an_outage_serves_cached_tokens_and_loses_nothing,
    scheduled_rotations_pause_while_the_vault_is_down,
    throttling_is_retried_within_a_bound_and_never_a_500,
    moving_from_local_to_key_vault_keeps_every_partner,
);
