//! The rotation engine, end to end: real `serve` replicas against the real dev IdP, a webhook
//! receiver in the test, and the IdP's `/_sim/` controls to make Entra misbehave.
#![allow(clippy::too_many_lines)] // scenarios read top to bottom

mod support;

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use support::Backend;
use support::stack::*;
use support::webhook::*;

async fn metrics(stack: &Stack) -> String {
    stack
        .http
        .get(format!("{}/metrics", stack.sv()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
}

async fn attempts(stack: &Stack, tenant: &str) -> i64 {
    stack
        .scalar(
            "SELECT COUNT(*) FROM rotation_attempts WHERE tenant_id = $1 AND source = 'schedule'",
            tenant,
        )
        .await
}

/// Seconds between a partner's (only) attempt and its next scheduled one.
async fn retry_delay(stack: &Stack, tenant: &str) -> i64 {
    stack
        .scalar(
            "SELECT p.rotate_at - a.at FROM partners p JOIN rotation_attempts a ON a.tenant_id = p.tenant_id WHERE p.tenant_id = $1",
            tenant,
        )
        .await
}

/// With `SAMVAULT_ROTATE_AFTER=2s` an idle grant is redeemed again and again by the scheduler,
/// each new refresh token written back, and under strict rotation no refresh token is ever
/// redeemed twice (the IdP would answer AADSTS70000 and the partner would die).
async fn scheduler_keeps_idle_grants_alive(backend: Backend) {
    let Some(db) = support::fresh_database(backend).await else {
        return;
    };
    let options = StackOptions::default()
        .idp_arg("--strict-rotation")
        .env("SAMVAULT_ROTATE_AFTER", "2s");
    let stack = Stack::start(&db.url, options).await;
    stack.consent("jane@contoso.example").await;
    stack.consent("trent@wingtip.example").await;
    eventually(
        Duration::from_secs(30),
        "three rotations of each partner",
        || async { attempts(&stack, CONTOSO).await >= 3 && attempts(&stack, WINGTIP).await >= 3 },
    )
    .await;
    let counters = stack.counters().await;
    assert!(
        counters["errors"].as_object().is_none_or(|e| e.is_empty()),
        "no IdP error at all: {counters}"
    );
    for tenant in [CONTOSO, WINGTIP] {
        let partner = stack.partner(tenant).unwrap();
        assert_eq!(partner["status"], "active");
        let versions = stack
            .scalar(
                "SELECT MAX(version) FROM grants WHERE tenant_id = $1",
                tenant,
            )
            .await;
        assert!(
            versions >= 4,
            "every rotation stored a new version ({versions})"
        );
        let live = stack
            .scalar(
                "SELECT COUNT(*) FROM grants WHERE tenant_id = $1 AND sealed IS NOT NULL",
                tenant,
            )
            .await;
        assert_eq!(live, 2, "older versions are crypto-shredded");
    }
    let text = metrics(&stack).await;
    assert!(
        metric(&text, "samvault_rotations_total{outcome=\"success\"}").unwrap() >= 6.0,
        "{text}"
    );
    assert_eq!(
        metric(&text, "samvault_partners{status=\"active\"}"),
        Some(2.0)
    );
    assert!(metric(&text, "samvault_min_days_to_expiry").unwrap() > 89.0);
}

/// Every REFERENCE §4 code that kills a grant, triggered through `/_sim/`, makes that partner
/// `reconsent_required` with the code and advice, in `partners list` and in a signed webhook.
async fn dead_grants_are_classified_and_announced(backend: Backend) {
    let Some(db) = support::fresh_database(backend).await else {
        return;
    };
    let (receiver, hook) = Receiver::start().await;
    let options = with_webhook(StackOptions::default(), &hook).env("SAMVAULT_REQUIRE_MFA", "false");
    let stack = Stack::start(&db.url, options).await;
    let creds = stack.client(&[PARTNER_CENTER]);
    let tenant1 = generated_tenant(1);
    let tenant2 = generated_tenant(2);
    for upn in [
        "jane@contoso.example",
        "trent@wingtip.example",
        "admin@tenant-1.example",
        "admin@tenant-2.example",
    ] {
        stack.consent(upn).await;
    }
    // John has no MFA; with SAMVAULT_REQUIRE_MFA=false his consent is stored.
    let john = Browser::new(&stack)
        .consent("john@fabrikam.example", false, "accept")
        .await;
    assert_eq!(john.status, 200, "{}", john.body);

    stack
        .sim(
            Method::POST,
            &format!("tenants/{CONTOSO}/revoke-consent"),
            Value::Null,
        )
        .await;
    stack
        .sim(
            Method::POST,
            "users/trent@wingtip.example/reset-password",
            Value::Null,
        )
        .await;
    stack
        .sim(
            Method::POST,
            &format!("tenants/{FABRIKAM}/require-mfa"),
            Value::Null,
        )
        .await;
    stack
        .sim(
            Method::POST,
            "users/admin@tenant-1.example/sign-in-frequency",
            Value::Null,
        )
        .await;
    let expected = [
        (CONTOSO, "65001"),
        (WINGTIP, "50173"),
        (FABRIKAM, "50076"),
        (tenant1.as_str(), "70043"),
        (tenant2.as_str(), "700082"),
    ];
    // The first four die through /_sim/ now; the fifth by inactivity below.
    for &(tenant, code) in &expected[..4] {
        let (status, problem) = stack.token(&creds, tenant, token_body()).await;
        assert_eq!(
            (status, problem["code"].as_str()),
            (409, Some("reconsent_required")),
            "{tenant}: {problem}"
        );
        assert!(
            problem["detail"]
                .as_str()
                .unwrap()
                .contains(&format!("AADSTS{code}")),
            "{problem}"
        );
    }
    stack.advance_days(91).await;
    let (status, problem) = stack.token(&creds, &tenant2, token_body()).await;
    assert_eq!(status, 409, "{problem}");

    for (tenant, code) in expected {
        let partner = stack.partner(tenant).unwrap();
        assert_eq!(partner["status"], "reconsent_required", "{partner}");
        assert_eq!(partner["status_code"], code, "{partner}");
        assert!(
            partner["status_reason"].as_str().unwrap().len() > 20,
            "a reason people can act on"
        );
    }
    assert!(
        stack.partner(tenant1.as_str()).unwrap()["status_reason"]
            .as_str()
            .unwrap()
            .contains("sign-in-frequency")
    );
    eventually(
        Duration::from_secs(20),
        "five signed status_changed events",
        || async { receiver.of_kind("status_changed").len() >= 5 },
    )
    .await;
    for (tenant, code) in expected {
        let event = receiver
            .of_kind("status_changed")
            .into_iter()
            .find(|e| e["tenant_id"] == tenant)
            .unwrap();
        assert_eq!(event["to_status"], "reconsent_required");
        assert_eq!(event["from_status"], "active");
        assert_eq!(event["code"], code);
    }
}

/// An expired app secret is the CPV's problem, not the partners': one alarm, nobody demoted,
/// and the alarm clears itself when a redemption works again.
async fn app_credential_failures_raise_one_alarm(backend: Backend) {
    let Some(db) = support::fresh_database(backend).await else {
        return;
    };
    let (receiver, hook) = Receiver::start().await;
    let stack = Stack::start(&db.url, with_webhook(StackOptions::default(), &hook)).await;
    let creds = stack.client(&[PARTNER_CENTER]);
    stack.consent("jane@contoso.example").await;
    stack.consent("trent@wingtip.example").await;
    stack
        .sim(Method::POST, "app/secret/expire", Value::Null)
        .await;
    for tenant in [CONTOSO, WINGTIP] {
        let (status, problem) = stack.token(&creds, tenant, token_body()).await;
        assert_eq!(
            (status, problem["code"].as_str()),
            (503, Some("app_credentials_invalid")),
            "{problem}"
        );
        assert!(
            problem["detail"]
                .as_str()
                .unwrap()
                .contains("AADSTS7000222")
        );
    }
    for partner in stack.partners() {
        assert_eq!(partner["status"], "active", "nobody is demoted: {partner}");
    }
    assert_eq!(
        metric(&metrics(&stack).await, "samvault_app_credentials_alarm"),
        Some(1.0)
    );
    eventually(Duration::from_secs(20), "the alarm event", || async {
        !receiver.of_kind("app_credentials_alarm").is_empty()
    })
    .await;

    stack
        .sim(
            Method::POST,
            "app/secret/rotate",
            json!({ "secret": "samvault-demo-secret" }),
        )
        .await;
    let (status, body) = stack.token(&creds, CONTOSO, token_body()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        metric(&metrics(&stack).await, "samvault_app_credentials_alarm"),
        Some(0.0)
    );
    eventually(Duration::from_secs(20), "the recovery event", || async {
        !receiver.of_kind("app_credentials_recovered").is_empty()
    })
    .await;
    assert_eq!(
        receiver.of_kind("app_credentials_alarm").len(),
        1,
        "one alarm, not one per partner"
    );
    assert!(receiver.of_kind("status_changed").is_empty());
}

/// A partner whose refreshes fail transiently backs off (and never blocks the healthy one),
/// `Retry-After` is honoured to the second, and the first success afterwards is announced.
async fn transient_failures_back_off_and_recover(backend: Backend) {
    let Some(db) = support::fresh_database(backend).await else {
        return;
    };
    let (receiver, hook) = Receiver::start().await;
    let options = with_webhook(StackOptions::default(), &hook).env("SAMVAULT_ROTATE_AFTER", "1s");
    let stack = Stack::start(&db.url, options).await;
    let creds = stack.client(&[PARTNER_CENTER]);
    stack
        .sim(
            Method::POST,
            &format!("tenants/{CONTOSO}/faults"),
            json!({ "status": 429, "retry_after": 30 }),
        )
        .await;
    stack
        .sim(
            Method::POST,
            &format!("tenants/{WINGTIP}/faults"),
            json!({ "status": 503 }),
        )
        .await;
    stack.consent("jane@contoso.example").await;
    stack.consent("trent@wingtip.example").await;
    stack.consent("admin@tenant-1.example").await;
    let healthy = generated_tenant(1);
    eventually(
        Duration::from_secs(30),
        "the healthy partner rotated 4 times",
        || async { attempts(&stack, &healthy).await >= 4 },
    )
    .await;
    assert_eq!(
        attempts(&stack, CONTOSO).await,
        1,
        "429 + Retry-After: 30 means no retry for 30 s"
    );
    assert_eq!(
        attempts(&stack, WINGTIP).await,
        1,
        "503: exponential backoff (a minute first)"
    );
    let wait = retry_delay(&stack, CONTOSO).await;
    assert_eq!(wait, 30, "Retry-After is respected exactly");
    let backoff = retry_delay(&stack, WINGTIP).await;
    assert!(
        (48..=72).contains(&backoff),
        "first backoff is one minute ±20 % ({backoff})"
    );
    for tenant in [CONTOSO, WINGTIP] {
        assert_eq!(
            stack.partner(tenant).unwrap()["status"],
            "active",
            "transient failures far from expiry change nothing"
        );
    }

    // The IdP recovers; the next redemption succeeds and says so.
    stack
        .sim(
            Method::DELETE,
            &format!("tenants/{WINGTIP}/faults"),
            Value::Null,
        )
        .await;
    let (status, body) = stack.token(&creds, WINGTIP, token_body()).await;
    assert_eq!(status, 200, "{body}");
    eventually(Duration::from_secs(20), "a recovered event", || async {
        receiver
            .of_kind("recovered")
            .iter()
            .any(|e| e["tenant_id"] == WINGTIP)
    })
    .await;
    assert!(receiver.of_kind("status_changed").is_empty());
}

/// Two replicas on one PostgreSQL database under strict rotation: both work, nothing is
/// redeemed twice, and a replica killed in the middle of rotations loses no partner.
async fn replicas_share_rotation_and_survive_sigkill(backend: Backend) {
    let Some(db) = support::fresh_database(backend).await else {
        return;
    };
    let options = StackOptions::default()
        .idp_arg("--strict-rotation")
        .tenants(12)
        .env("SAMVAULT_ROTATE_AFTER", "1s")
        .replicas(2);
    let mut stack = Stack::start(&db.url, options).await;
    let mut tenants = vec![CONTOSO.to_string(), WINGTIP.to_string()];
    stack.consent("jane@contoso.example").await;
    stack.consent("trent@wingtip.example").await;
    for k in 1..=12 {
        stack.consent(&format!("admin@tenant-{k}.example")).await;
        tenants.push(generated_tenant(k));
    }
    for round in 0..4u64 {
        tokio::time::sleep(Duration::from_millis(700 + 300 * round)).await;
        stack.kill_replica(round as usize % 2);
        stack.start_replica(round as usize % 2).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let counters = stack.counters().await;
    assert!(
        counters["errors"].as_object().is_none_or(|e| e.is_empty()),
        "no refresh token redeemed twice: {counters}"
    );
    assert!(
        counters["token_calls"]["refresh_token"].as_u64().unwrap() >= 28,
        "{counters}"
    );
    for tenant in &tenants {
        assert_eq!(
            stack.partner(tenant).unwrap()["status"],
            "active",
            "{tenant}"
        );
    }
    // Lines a replica queued for its log thread die with it when it is SIGKILLed: read the
    // logs once the running replicas have written one (rotations go on every second).
    for replica in 0..2 {
        let log = stack
            .log_holding(replica, &["refresh token redeemed"])
            .await;
        assert!(
            log.contains("refresh token redeemed"),
            "replica {replica} did some of the work"
        );
    }
    let creds = stack.client(&[PARTNER_CENTER]);
    for tenant in &tenants {
        let (status, body) = stack.token_at(1, &creds, tenant, token_body()).await;
        assert_eq!(status, 200, "{tenant}: {body}");
    }
}

/// A graceful stop (SIGTERM, as every deploy does) right after a start, while the scheduler
/// redeems every due grant at once, under strict rotation: the redemptions in flight store
/// their new refresh tokens before the process exits. (The scheduler used to be aborted:
/// a redemption cancelled between the IdP's answer and the write-back left the partner a
/// spent refresh token, and the next redemption made it `reconsent_required`.)
async fn graceful_stops_lose_no_grant(backend: Backend) {
    let Some(db) = support::fresh_database(backend).await else {
        return;
    };
    let options = StackOptions::default()
        .idp_arg("--strict-rotation")
        .tenants(16)
        .env("SAMVAULT_ROTATE_AFTER", "1s");
    let mut stack = Stack::start(&db.url, options).await;
    let tenants: Vec<String> = (1..=16).map(generated_tenant).collect();
    for k in 1..=16 {
        stack.consent(&format!("admin@tenant-{k}.example")).await;
    }
    let before = stack.refresh_calls().await;
    for round in 0..10u64 {
        // Every grant is due after the downtime, and again a second later: stops spread over
        // the first 1.4 s land in the middle of a pass.
        tokio::time::sleep(Duration::from_millis(30 + 150 * round)).await;
        stack.stop_replica(0);
        stack.start_replica(0).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let counters = stack.counters().await;
    assert!(
        counters["errors"].as_object().is_none_or(|e| e.is_empty()),
        "no spent refresh token presented: {counters}"
    );
    assert!(
        stack.refresh_calls().await >= before + 16,
        "the stops came during rotations: {counters}"
    );
    let creds = stack.client(&[PARTNER_CENTER]);
    for tenant in &tenants {
        assert_eq!(
            stack.partner(tenant).unwrap()["status"],
            "active",
            "{tenant}"
        );
        let (status, body) = stack.token(&creds, tenant, token_body()).await;
        assert_eq!(status, 200, "{tenant}: {body}");
    }
}

/// `samvault partners purge` — the emergency command — beside a running `serve`: refused
/// without `--yes`; one partner, then every partner, crypto-shredded and `reconsent_required`;
/// the running service stops serving them, cached tokens included, within a second.
async fn purge_shreds_beside_a_running_service(backend: Backend) {
    let Some(db) = support::fresh_database(backend).await else {
        return;
    };
    let stack = Stack::start(&db.url, StackOptions::default()).await;
    stack.consent("jane@contoso.example").await;
    stack.consent("trent@wingtip.example").await;
    let creds = stack.client(&[PARTNER_CENTER]);
    for tenant in [CONTOSO, WINGTIP] {
        assert_eq!(stack.token(&creds, tenant, token_body()).await.0, 200);
    }
    let sealed = "SELECT COUNT(*) FROM grants WHERE tenant_id = $1 AND (sealed IS NOT NULL OR wrapped_key IS NOT NULL)";
    assert!(stack.scalar(sealed, CONTOSO).await > 0);

    let refused = stack
        .command(&["partners", "purge", "--partner", CONTOSO])
        .output()
        .unwrap();
    assert_eq!(
        refused.status.code(),
        Some(2),
        "without --yes nothing happens"
    );
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--yes"));
    assert!(stack.scalar(sealed, CONTOSO).await > 0);
    assert_eq!(stack.partner(CONTOSO).unwrap()["status"], "active");

    let out = stack.cli(&["partners", "purge", "--partner", CONTOSO, "--yes"]);
    assert!(out.contains("purged 1 partner(s)"), "{out}");
    assert_eq!(stack.scalar(sealed, CONTOSO).await, 0, "crypto-shredded");
    assert_eq!(
        stack.partner(CONTOSO).unwrap()["status"],
        "reconsent_required"
    );
    eventually(
        Duration::from_secs(5),
        "the service stops serving Contoso",
        || async { stack.token(&creds, CONTOSO, token_body()).await.0 == 409 },
    )
    .await;
    assert_eq!(
        stack.token(&creds, WINGTIP, token_body()).await.0,
        200,
        "Wingtip untouched"
    );

    let out = stack.cli(&["partners", "purge", "--all", "--yes"]);
    assert!(out.contains("purged 2 partner(s)"), "{out}");
    assert_eq!(
        stack
            .scalar("SELECT COUNT(*) FROM grants WHERE sealed IS NOT NULL OR wrapped_key IS NOT NULL OR tenant_id = $1", "")
            .await,
        0,
        "no sealed grant left anywhere"
    );
    eventually(
        Duration::from_secs(5),
        "the service stops serving Wingtip",
        || async { stack.token(&creds, WINGTIP, token_body()).await.0 == 409 },
    )
    .await;
    let actions = stack
        .scalar(
            "SELECT COUNT(*) FROM audit_log WHERE action IN ('partners.purge', 'partners.purge_all') AND actor <> $1",
            "",
        )
        .await;
    assert_eq!(actions, 2, "both purges are in the audit log");
}

/// Asks for Contoso's token while the IdP, having redeemed the stored refresh token (spent
/// under strict rotation), holds its answer back; SIGKILLs replica 0 then, inside the window
/// between the IdP's answer and the write-back, and starts it again. Returns when it restarted.
async fn kill_mid_redemption(stack: &mut Stack, creds: &(String, String)) -> std::time::Instant {
    stack
        .sim(
            Method::POST,
            &format!("tenants/{CONTOSO}/faults"),
            json!({"status": 200, "latency_ms": 10_000, "after_grant": true, "count": 1}),
        )
        .await;
    let cut_short = tokio::spawn(stack.token_request(0, creds, CONTOSO, &token_body()).send());
    eventually(
        Duration::from_secs(10),
        "the IdP redeemed the refresh token",
        || async { stack.counters().await["faults_served"] == 1 },
    )
    .await;
    stack.kill_replica(0);
    assert!(
        cut_short.await.unwrap().is_err(),
        "the request died with the process"
    );
    let restarted = std::time::Instant::now();
    stack.start_replica(0).await;
    restarted
}

/// SIGKILL after the IdP spent the refresh token and before samvault stored its successor
/// (the IdP holds its answer back: `after_grant`), under strict rotation with a 20 s grace.
/// The restarted process sees that its predecessor died holding Contoso's lease, releases it
/// and redeems the stored token again inside the grace: Contoso is served within seconds, not
/// after the lease ran out (30 s, past the grace, which would have lost the grant).
async fn a_crash_mid_redemption_is_recovered_within_the_rotation_grace(backend: Backend) {
    let Some(db) = support::fresh_database(backend).await else {
        return;
    };
    let options = StackOptions::default()
        .idp_arg("--strict-rotation")
        .idp_arg("--rotation-grace")
        .idp_arg("20");
    let mut stack = Stack::start(&db.url, options).await;
    stack.consent("jane@contoso.example").await;
    let creds = stack.client(&[PARTNER_CENTER]);
    let version = stack
        .scalar(
            "SELECT grant_version FROM partners WHERE tenant_id = $1",
            CONTOSO,
        )
        .await;
    let restarted = kill_mid_redemption(&mut stack, &creds).await;
    eventually(
        Duration::from_secs(8),
        "Contoso is served again",
        || async { stack.token(&creds, CONTOSO, token_body()).await.0 == 200 },
    )
    .await;
    assert!(
        restarted.elapsed() < Duration::from_secs(15),
        "served within the grace, not after the lease ran out"
    );
    let counters = stack.counters().await;
    assert!(
        counters["errors"].as_object().is_none_or(|e| e.is_empty()),
        "the spent token was redeemed inside its grace, never refused: {counters}"
    );
    assert_eq!(stack.partner(CONTOSO).unwrap()["status"], "active");
    assert!(
        stack
            .scalar(
                "SELECT grant_version FROM partners WHERE tenant_id = $1",
                CONTOSO
            )
            .await
            > version
    );
    assert!(
        stack.log(0).contains("died holding leases"),
        "the reaping is logged"
    );
}

/// A scheduled rotation whose answer is lost after the IdP rotated the token (a gateway's
/// bare 504 once the grant is spent) is retried within seconds, inside the IdP's 30 s
/// rotation grace, not after the usual one-minute backoff that would find the token dead.
async fn a_lost_answer_is_retried_inside_the_rotation_grace(backend: Backend) {
    let Some(db) = support::fresh_database(backend).await else {
        return;
    };
    let options = StackOptions::default()
        .idp_arg("--strict-rotation")
        .idp_arg("--rotation-grace")
        .idp_arg("30")
        .env("SAMVAULT_ROTATE_AFTER", "1s");
    let stack = Stack::start(&db.url, options).await;
    stack
        .sim(
            Method::POST,
            &format!("tenants/{CONTOSO}/faults"),
            json!({"status": 504, "body": "empty", "after_grant": true, "count": 1}),
        )
        .await;
    stack.consent("jane@contoso.example").await;
    eventually(Duration::from_secs(10), "the lost answer", || async {
        attempts(&stack, CONTOSO).await == 1
    })
    .await;
    assert_eq!(stack.counters().await["faults_served"], 1);
    let wait = retry_delay(&stack, CONTOSO).await;
    assert!(wait <= 10, "first retry inside the grace ({wait} s)");
    eventually(
        Duration::from_secs(20),
        "a successful rotation after the lost answer",
        || async {
            attempts(&stack, CONTOSO).await >= 2
                && stack
                    .scalar(
                        "SELECT failures FROM partners WHERE tenant_id = $1",
                        CONTOSO,
                    )
                    .await
                    == 0
        },
    )
    .await;
    assert_eq!(stack.partner(CONTOSO).unwrap()["status"], "active");
    let creds = stack.client(&[PARTNER_CENTER]);
    assert_eq!(stack.token(&creds, CONTOSO, token_body()).await.0, 200);
}

/// The same cut under strict rotation without grace: no client can keep that grant (the IdP
/// spent the token and its successor died with the process). samvault says so at once: the
/// restarted process redeems the stored token first thing and the partner turns
/// `reconsent_required` with the IdP's reuse error, before any integration asks.
async fn a_crash_mid_redemption_without_grace_is_reported_at_once(backend: Backend) {
    let Some(db) = support::fresh_database(backend).await else {
        return;
    };
    let options = StackOptions::default().idp_arg("--strict-rotation");
    let mut stack = Stack::start(&db.url, options).await;
    stack.consent("jane@contoso.example").await;
    stack.consent("trent@wingtip.example").await;
    let creds = stack.client(&[PARTNER_CENTER]);
    kill_mid_redemption(&mut stack, &creds).await;
    eventually(
        Duration::from_secs(8),
        "the lost grant is reported without waiting for a request",
        || async { stack.partner(CONTOSO).unwrap()["status"] == "reconsent_required" },
    )
    .await;
    assert_eq!(stack.partner(WINGTIP).unwrap()["status"], "active");
    assert_eq!(stack.token(&creds, WINGTIP, token_body()).await.0, 200);
}

on_both_backends!(
    graceful_stops_lose_no_grant,
    a_crash_mid_redemption_is_recovered_within_the_rotation_grace,
    a_crash_mid_redemption_without_grace_is_reported_at_once,
    a_lost_answer_is_retried_inside_the_rotation_grace,
    purge_shreds_beside_a_running_service,
    scheduler_keeps_idle_grants_alive,
    dead_grants_are_classified_and_announced,
    app_credential_failures_raise_one_alarm,
    transient_failures_back_off_and_recover,
);

/// Replicas share one PostgreSQL database (SQLite is one process by design).
#[tokio::test(flavor = "multi_thread")]
async fn postgres_replicas_share_rotation_and_survive_sigkill() {
    replicas_share_rotation_and_survive_sigkill(Backend::Postgres).await
}

/// A second `serve` on the same SQLite file is refused with a clear message.
#[tokio::test(flavor = "multi_thread")]
async fn sqlite_refuses_a_second_serving_process() {
    let db = support::fresh_database(Backend::Sqlite).await.unwrap();
    let stack = Stack::start(&db.url, StackOptions::default()).await;
    let out = stack
        .command(&["serve"])
        .env("SAMVAULT_LISTEN", format!("127.0.0.1:{}", free_port()))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("another samvault process is already serving"),
        "{stderr}"
    );
    let out = stack.command(&["rotate", "--all"]).output().unwrap();
    assert!(!out.status.success(), "rotate takes the same lock");
}

/// 1,000 partners whose refreshes fail (injected 503s) and 1,000 healthy ones, all due at
/// once: every healthy grant is rotated in the same pass, and no failing grant is tried a
/// second time before they are all done (failing grants back off behind the healthy ones).
#[tokio::test(flavor = "multi_thread")]
async fn failing_grants_never_take_healthy_grants_turns() {
    const N: u32 = 1000;
    let db = support::fresh_database(Backend::Sqlite).await.unwrap();
    let options = StackOptions::default()
        .tenants(2 * N)
        .env("SAMVAULT_ROTATE_AFTER", "1h")
        .replicas(0);
    let mut stack = Stack::start(&db.url, options).await;
    let users: Vec<String> = (1..=2 * N)
        .map(|k| format!("admin@tenant-{k}.example"))
        .collect();
    let minted = stack
        .sim(
            Method::POST,
            "tokens",
            json!({ "users": users, "sign": false }),
        )
        .await;
    let mut import = String::new();
    for (k, grant) in (1..=2 * N).zip(minted.as_array().unwrap()) {
        let line = json!({ "tenant_id": generated_tenant(k), "refresh_token": grant["refresh_token"], "upn": users[k as usize - 1], "mfa": true });
        import.push_str(&format!("{line}\n"));
    }
    let file = stack.dir.path().join("import.jsonl");
    std::fs::write(&file, import).unwrap();
    let out = stack.cli(&["partners", "import", "--file", file.to_str().unwrap()]);
    assert!(out.contains(&format!("imported {}", 2 * N)), "{out}");
    std::fs::remove_file(&file).unwrap();
    // Odd tenants fail with 503 until cleared.
    for k in (1..=2 * N).filter(|k| k % 2 == 1) {
        stack
            .sim(
                Method::POST,
                &format!("tenants/{}/faults", generated_tenant(k)),
                json!({ "status": 503 }),
            )
            .await;
    }

    let started = std::time::Instant::now();
    stack.start_replica(0).await;
    let db = stack.db().await;
    let count = |sql: &'static str| {
        let db = db.clone();
        async move {
            use sqlx::Row;
            sqlx::query(sql)
                .fetch_one(db.pool())
                .await
                .unwrap()
                .try_get::<i64, _>(0)
                .unwrap()
        }
    };
    eventually(
        Duration::from_secs(240),
        "every grant attempted once",
        || async {
            count("SELECT COUNT(DISTINCT tenant_id) FROM rotation_attempts").await
                >= i64::from(2 * N)
        },
    )
    .await;
    let elapsed = started.elapsed();
    assert_eq!(
        count("SELECT COUNT(*) FROM rotation_attempts WHERE outcome = 'success'").await,
        i64::from(N)
    );
    assert_eq!(
        count("SELECT COUNT(*) FROM rotation_attempts WHERE outcome = 'transient'").await,
        i64::from(N)
    );
    assert_eq!(
        count("SELECT COUNT(*) FROM rotation_attempts").await,
        i64::from(2 * N),
        "nobody was tried twice"
    );
    assert_eq!(
        count("SELECT COUNT(*) FROM partners WHERE status = 'active'").await,
        i64::from(2 * N)
    );
    assert_eq!(
        count(
            "SELECT COUNT(*) FROM partners WHERE failures = 1 AND rotate_at > last_refresh_at + 40"
        )
        .await,
        i64::from(N),
        "each failing grant backs off"
    );
    eprintln!(
        "{} grants (half failing) attempted in {:.1} s",
        2 * N,
        elapsed.as_secs_f64()
    );
}

/// `samvault rotate` beside running replicas (PostgreSQL): redeems now, prints one summary line
/// when not on a terminal, and fails (exit 1) naming what failed.
#[tokio::test(flavor = "multi_thread")]
async fn rotate_command_redeems_now_and_summarises() {
    let Some(db) = support::fresh_database(Backend::Postgres).await else {
        return;
    };
    let stack = Stack::start(&db.url, StackOptions::default()).await;
    stack.consent("jane@contoso.example").await;
    stack.consent("trent@wingtip.example").await;
    let before = stack.refresh_calls().await;
    let out = stack.cli(&["rotate", "--partner", CONTOSO]);
    assert!(out.starts_with("rotated 1 partners in "), "{out}");
    assert!(out.contains("1 succeeded, 0 failed"), "{out}");
    assert_eq!(stack.refresh_calls().await, before + 1);
    let none_due = stack.cli(&["rotate", "--due"]);
    assert!(
        none_due.contains("rotated 0 partners"),
        "nothing is due a week early: {none_due}"
    );
    stack
        .sim(
            Method::POST,
            "users/trent@wingtip.example/reset-password",
            Value::Null,
        )
        .await;
    let out = stack.command(&["rotate", "--all"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(
        summary.contains("1 succeeded, 1 failed (partner must consent again: 1)"),
        "{summary}"
    );
    assert_eq!(stack.partner(WINGTIP).unwrap()["status_code"], "50173");
}
