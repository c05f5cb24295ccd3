//! Webhook delivery (`samvault::notify`) and the `/metrics` exposition (`samvault::metrics`),
//! against a real receiver on 127.0.0.1 and fresh databases (SQLite and, when reachable,
//! PostgreSQL: see `tests/support`).
#![allow(clippy::too_many_lines)] // scenarios read top to bottom

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use hmac::{Hmac, Mac};
use samvault::config::Config;
use samvault::http::metrics::{self as metrics_route, MetricsAccess};
use samvault::metrics::{self, Metrics};
use samvault::notify::{Event, Notifier};
use samvault::storage::{Db, now};
use secrecy::SecretString;
use sha2::Sha256;
use sqlx::Row;
use support::*;

const SECRET: &str = "whsec-test-0123456789";
const DAY: i64 = 86_400;

/// One request the receiver got.
#[derive(Clone, Debug)]
struct Received {
    headers: HeaderMap,
    body: Bytes,
}

impl Received {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("missing header {name}"))
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("the body is JSON")
    }
}

#[derive(Default)]
struct ReceiverState {
    requests: Mutex<Vec<Received>>,
    /// Answer 500 to this many requests first.
    fail_first: AtomicUsize,
    seen: AtomicUsize,
}

/// A webhook receiver on 127.0.0.1:0 that records every request.
struct Receiver {
    state: Arc<ReceiverState>,
    url: url::Url,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start(fail_first: usize) -> Self {
        let state = Arc::new(ReceiverState {
            fail_first: AtomicUsize::new(fail_first),
            ..Default::default()
        });
        async fn hook(
            State(state): State<Arc<ReceiverState>>,
            headers: HeaderMap,
            body: Bytes,
        ) -> StatusCode {
            state
                .requests
                .lock()
                .unwrap()
                .push(Received { headers, body });
            let n = state.seen.fetch_add(1, Ordering::SeqCst);
            if n < state.fail_first.load(Ordering::SeqCst) {
                StatusCode::INTERNAL_SERVER_ERROR
            } else {
                StatusCode::NO_CONTENT
            }
        }
        let app = Router::new()
            .route("/hook", post(hook))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        // The query stands for the secret many webhook URLs carry: it must never be logged
        // or stored.
        let url = url::Url::parse(&format!("http://{addr}/hook?token=q-s3cr3t")).unwrap();
        Self { state, url, task }
    }

    fn requests(&self) -> Vec<Received> {
        self.state.requests.lock().unwrap().clone()
    }

    /// Waits until at least `n` requests arrived.
    async fn wait_for(&self, n: usize) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let got = self.requests();
            if got.len() >= n {
                return got;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "expected {n} webhook requests, got {}",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A notifier built the way the service builds it: from configuration.
fn notifier_for(db: &Db, url: &url::Url) -> Notifier {
    let env: BTreeMap<String, String> = [
        ("SAMVAULT_WEBHOOK_URL", url.as_str()),
        ("SAMVAULT_WEBHOOK_SECRET", SECRET),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let config = Config::from_sources(None, &env).expect("configuration");
    Notifier::new(db.clone(), &config, Arc::default())
}

/// Checks the signature independently of `samvault::notify::signature`.
fn assert_signed(request: &Received) {
    let header = request.header("x-samvault-signature");
    let hex_mac = header
        .strip_prefix("sha256=")
        .unwrap_or_else(|| panic!("signature header {header:?} lacks sha256="));
    assert_eq!(hex_mac, hex_mac.to_ascii_lowercase());
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(&request.body);
    mac.verify_slice(&hex::decode(hex_mac).expect("hex"))
        .expect("the HMAC verifies");
    assert_eq!(
        samvault::notify::signature(SECRET.as_bytes(), &request.body),
        header
    );
}

struct OutboxRow {
    body: String,
    attempts: i64,
    next_attempt_at: i64,
    delivered_at: Option<i64>,
    last_error: Option<String>,
}

async fn outbox(db: &Db) -> Vec<OutboxRow> {
    sqlx::query(
        "SELECT body, attempts, next_attempt_at, delivered_at, last_error FROM webhook_outbox ORDER BY id",
    )
    .fetch_all(db.pool())
    .await
    .unwrap()
    .iter()
    .map(|r| OutboxRow {
        body: r.try_get("body").unwrap(),
        attempts: r.try_get("attempts").unwrap(),
        next_attempt_at: r.try_get("next_attempt_at").unwrap(),
        delivered_at: r.try_get("delivered_at").unwrap(),
        last_error: r.try_get("last_error").unwrap(),
    })
    .collect()
}

async fn wait_delivered(db: &Db, n: usize) -> Vec<OutboxRow> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let rows = outbox(db).await;
        if rows.iter().filter(|r| r.delivered_at.is_some()).count() >= n {
            return rows;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "expected {n} delivered rows"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn tenant() -> String {
    new_tenant().to_string()
}

both_backends!(events_arrive_signed, |url| async move {
    let db = open(&url).await;
    let receiver = Receiver::start(0).await;
    let notifier = notifier_for(&db, &receiver.url).with_poll_interval(Duration::from_millis(50));
    assert!(notifier.is_enabled());
    let worker = notifier.spawn_delivery();

    let t = tenant();
    let first = Event::status_changed(
        &t,
        "active",
        "reconsent_required",
        Some("AADSTS700082"),
        "The refresh token expired after 90 days of inactivity. Ask the partner to consent again.",
    );
    let second = Event::app_credentials_alarm(Some("AADSTS7000222"), "The app's secret expired.");
    notifier.publish(&first).await;
    notifier.publish(&second).await;

    let got = receiver.wait_for(2).await;
    let rows = wait_delivered(&db, 2).await;
    worker.abort();

    let mut by_id = BTreeMap::new();
    for request in &got {
        assert_signed(request);
        assert_eq!(request.header("content-type"), "application/json");
        let body = request.json();
        assert_eq!(request.header("x-samvault-event"), body["kind"]);
        assert_eq!(request.header("x-samvault-delivery"), body["id"]);
        by_id.insert(body["id"].as_str().unwrap().to_string(), body);
    }
    assert_eq!(got.len(), 2, "each event is sent once");
    let first_body = &by_id[&first.id];
    assert_eq!(first_body["kind"], "status_changed");
    assert_eq!(first_body["tenant_id"], t.as_str());
    assert_eq!(first_body["from_status"], "active");
    assert_eq!(first_body["to_status"], "reconsent_required");
    assert_eq!(first_body["code"], "AADSTS700082");
    assert_eq!(by_id[&second.id]["kind"], "app_credentials_alarm");

    assert_eq!(rows.len(), 2);
    for row in &rows {
        assert!(row.delivered_at.is_some());
        assert_eq!(row.attempts, 1);
        assert!(row.last_error.is_none());
    }

    // Delivered rows are pruned after the retention period, undelivered ones never.
    notifier.publish(&Event::app_credentials_recovered()).await;
    assert_eq!(notifier.prune_delivered(now() - 60).await.unwrap(), 0);
    assert_eq!(notifier.prune_delivered(now() + 60).await.unwrap(), 2);
    let left = outbox(&db).await;
    assert_eq!(left.len(), 1);
    assert!(left[0].delivered_at.is_none());
});

both_backends!(failed_deliveries_are_retried, |url| async move {
    let db = open(&url).await;
    let receiver = Receiver::start(2).await;
    let notifier = notifier_for(&db, &receiver.url)
        .with_backoff(Duration::ZERO, Duration::ZERO)
        .with_poll_interval(Duration::from_millis(50));
    let worker = notifier.spawn_delivery();
    let event = Event::recovered(&tenant(), 4);
    notifier.publish(&event).await;

    let rows = wait_delivered(&db, 1).await;
    let got = receiver.requests();
    worker.abort();
    assert_eq!(got.len(), 3, "two failures, then the delivery");
    for request in &got {
        assert_signed(request);
        assert_eq!(request.header("x-samvault-delivery"), event.id);
        assert_eq!(request.header("x-samvault-event"), "recovered");
    }
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].attempts, 3);
    assert_eq!(rows[0].last_error.as_deref(), Some("HTTP 500"));
});

both_backends!(backoff_defers_and_gives_up, |url| async move {
    let db = open(&url).await;
    let receiver = Receiver::start(usize::MAX).await;

    // A real backoff: after one failure the row waits (5 s here) and is not claimed again.
    let notifier = notifier_for(&db, &receiver.url);
    notifier.publish(&Event::app_credentials_recovered()).await;
    let before = now();
    assert_eq!(notifier.deliver_due().await.unwrap(), 1);
    assert_eq!(notifier.deliver_due().await.unwrap(), 0);
    let rows = outbox(&db).await;
    assert_eq!(rows[0].attempts, 1);
    assert!(rows[0].next_attempt_at >= before + 5, "backed off");
    assert!(rows[0].next_attempt_at <= now() + 5);
    assert!(rows[0].delivered_at.is_none());

    // Given up after the maximum number of attempts: the row stays, undelivered.
    sqlx::query("UPDATE webhook_outbox SET next_attempt_at = 0")
        .execute(db.pool())
        .await
        .unwrap();
    let notifier = notifier
        .with_backoff(Duration::ZERO, Duration::ZERO)
        .with_max_attempts(3);
    assert_eq!(notifier.deliver_due().await.unwrap(), 1);
    assert_eq!(notifier.deliver_due().await.unwrap(), 1);
    assert_eq!(notifier.deliver_due().await.unwrap(), 0, "given up");
    let rows = outbox(&db).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].attempts, 3);
    assert!(rows[0].delivered_at.is_none());
    assert_eq!(receiver.requests().len(), 3);
});

both_backends!(connection_errors_keep_the_url_secret, |url| async move {
    let db = open(&url).await;
    // A port nobody listens on: bind one, then close it.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let target = url::Url::parse(&format!("http://{closed}/hook?token=q-s3cr3t")).unwrap();
    let notifier = notifier_for(&db, &target);
    notifier
        .publish(&Event::status_changed(
            &tenant(),
            None,
            "active",
            None,
            "Consent recorded.",
        ))
        .await;
    assert_eq!(notifier.deliver_due().await.unwrap(), 1);
    let rows = outbox(&db).await;
    assert_eq!(rows[0].attempts, 1);
    assert_eq!(rows[0].last_error.as_deref(), Some("connection failed"));
    assert!(!rows[0].body.contains("q-s3cr3t"));
    assert!(!format!("{notifier:?}").contains("q-s3cr3t"));
});

both_backends!(replicas_never_send_a_row_twice, |url| async move {
    let db = open(&url).await;
    // A second pool on the same database stands for a second replica.
    let other = Db::connect(&SecretString::from(url.clone())).await.unwrap();
    let receiver = Receiver::start(0).await;
    let a = notifier_for(&db, &receiver.url).with_poll_interval(Duration::from_millis(10));
    let b = notifier_for(&other, &receiver.url).with_poll_interval(Duration::from_millis(10));
    let workers = [a.spawn_delivery(), b.spawn_delivery()];
    let mut ids = BTreeSet::new();
    for i in 0..40 {
        let event = Event::recovered(&tenant(), i + 1);
        ids.insert(event.id.clone());
        if i % 2 == 0 {
            a.publish(&event).await;
        } else {
            b.publish(&event).await;
        }
    }
    wait_delivered(&db, 40).await;
    // Give a duplicate, if any, time to arrive.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for w in workers {
        w.abort();
    }
    let got = receiver.requests();
    let delivered: Vec<String> = got
        .iter()
        .map(|r| r.header("x-samvault-delivery").to_string())
        .collect();
    assert_eq!(delivered.len(), 40, "no event sent twice");
    assert_eq!(delivered.into_iter().collect::<BTreeSet<_>>(), ids);
});

#[tokio::test]
async fn without_a_url_nothing_is_stored() {
    let test_db = fresh_database(Backend::Sqlite).await.unwrap();
    let db = open(&test_db.url).await;
    let config = Config::from_sources(None, &BTreeMap::new()).unwrap();
    let notifier = Notifier::new(db.clone(), &config, Arc::default());
    assert!(!notifier.is_enabled());
    notifier
        .publish(&Event::app_credentials_alarm(None, "detail"))
        .await;
    assert!(outbox(&db).await.is_empty());
    assert_eq!(notifier.deliver_due().await.unwrap(), 0);
    // The worker is a finished task.
    tokio::time::timeout(Duration::from_secs(1), notifier.spawn_delivery())
        .await
        .expect("the worker returns at once")
        .unwrap();
}

/// Inserts a partner row with plain SQL (only the columns the schema requires).
async fn insert_partner(db: &Db, status: &str, last_refresh_at: i64) {
    sqlx::query(
        "INSERT INTO partners (tenant_id, display_name, status, status_changed_at, mfa, consented_by, consented_at, last_refresh_at, grant_version, created_at) \
         VALUES ($1, 'Partner', $2, $3, 1, 'admin@partner.example', $3, $3, 1, $3)",
    )
    .bind(tenant())
    .bind(status)
    .bind(last_refresh_at)
    .execute(db.pool())
    .await
    .unwrap();
}

/// The value of the sample `series` (name plus labels exactly as rendered).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.parse().expect("a number"))
}

both_backends!(metrics_reflect_the_database, |url| async move {
    let db = open(&url).await;

    let recorded = Metrics::new();
    // Empty database: every status at 0, no expiry gauge, no alarm.
    let text = metrics::render(&recorded, &db).await.unwrap();
    metrics::validate(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    for status in ["active", "at_risk", "reconsent_required", "revoked"] {
        assert_eq!(
            value(&text, &format!("samvault_partners{{status=\"{status}\"}}")),
            Some(0.0)
        );
    }
    assert_eq!(value(&text, "samvault_min_days_to_expiry"), None);
    assert_eq!(value(&text, "samvault_app_credentials_alarm"), Some(0.0));
    assert_eq!(value(&text, "samvault_webhook_outbox_pending"), Some(0.0));

    let t = now();
    insert_partner(&db, "active", t - 10 * DAY).await;
    insert_partner(&db, "active", t - 80 * DAY).await;
    insert_partner(&db, "at_risk", t - 85 * DAY).await;
    // Unusable partners do not count towards the nearest expiry.
    insert_partner(&db, "reconsent_required", t - 200 * DAY).await;
    sqlx::query("INSERT INTO alarms (name, code, detail, since) VALUES ('app_credentials', 'AADSTS7000222', 'expired', $1)")
        .bind(t)
        .execute(db.pool())
        .await
        .unwrap();
    samvault::notify::enqueue(&db, &Event::app_credentials_recovered())
        .await
        .unwrap();

    recorded.record_rotation("notify_test");
    recorded.record_rotation("notify_test");
    recorded.record_idp_call("notify_test_grant", "success", 0.2);
    recorded.record_token_request("notify_test", true);

    let text = metrics::render(&recorded, &db).await.unwrap();
    metrics::validate(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let partners = |s: &str| value(&text, &format!("samvault_partners{{status=\"{s}\"}}"));
    assert_eq!(partners("active"), Some(2.0));
    assert_eq!(partners("at_risk"), Some(1.0));
    assert_eq!(partners("reconsent_required"), Some(1.0));
    assert_eq!(partners("revoked"), Some(0.0));
    let days = value(&text, "samvault_min_days_to_expiry").expect("min days");
    assert!((days - 5.0).abs() < 0.01, "{days}");
    assert_eq!(value(&text, "samvault_app_credentials_alarm"), Some(1.0));
    assert_eq!(value(&text, "samvault_webhook_outbox_pending"), Some(1.0));
    // At least ours (written when every test in this binary shared one registry).
    assert!(value(&text, "samvault_rotations_total{outcome=\"notify_test\"}").unwrap() >= 2.0);
    assert!(
        value(
            &text,
            "samvault_idp_requests_total{grant_type=\"notify_test_grant\",outcome=\"success\"}"
        )
        .unwrap()
            >= 1.0
    );
    assert!(
        value(
            &text,
            "samvault_idp_request_duration_seconds_bucket{grant_type=\"notify_test_grant\",le=\"0.25\"}"
        )
        .unwrap()
            >= 1.0
    );
    assert!(
        value(
            &text,
            "samvault_token_requests_total{outcome=\"notify_test\",cached=\"true\"}"
        )
        .unwrap()
            >= 1.0
    );
    assert!(text.contains("# TYPE samvault_idp_request_duration_seconds histogram"));
});

#[tokio::test]
async fn metrics_route_serves_the_exposition() {
    let test_db = fresh_database(Backend::Sqlite).await.unwrap();
    let db = open(&test_db.url).await;
    let app: Router = metrics_route::router::<MetricsAccess>().with_state(MetricsAccess::new(
        db,
        Arc::default(),
        None,
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let response = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let text = response.text().await.unwrap();
    metrics::validate(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert!(text.contains("samvault_partners{status=\"active\"} 0"));
    server.abort();
}

/// With `SAMVAULT_METRICS_TOKEN` set, `/metrics` answers only the bearer of that token: the
/// partner counts per status and the alarms are for the CPV's monitoring, not for anyone.
#[tokio::test]
async fn metrics_ask_for_the_token_when_one_is_set() {
    let test_db = fresh_database(Backend::Sqlite).await.unwrap();
    let db = open(&test_db.url).await;
    let token = secrecy::SecretString::from("0123456789abcdef-metrics".to_string());
    let app: Router = metrics_route::router::<MetricsAccess>().with_state(MetricsAccess::new(
        db,
        Arc::default(),
        Some(&token),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let http = reqwest::Client::new();
    let url = format!("http://{addr}/metrics");
    for auth in [
        None,
        Some("Bearer "),
        Some("Bearer 0123456789abcdef-metricsX"),
        Some("Basic MDEyMzQ1Njc4OWFiY2RlZi1tZXRyaWNz"),
    ] {
        let mut request = http.get(&url);
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401, "{auth:?}");
        assert!(
            response.headers()["www-authenticate"]
                .to_str()
                .unwrap()
                .starts_with("Bearer")
        );
        let text = response.text().await.unwrap();
        assert!(!text.contains("samvault_partners"), "{auth:?}: {text}");
    }
    let response = http
        .get(&url)
        .header("authorization", "bearer 0123456789abcdef-metrics")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "the scheme is case-insensitive");
    assert!(
        response
            .text()
            .await
            .unwrap()
            .contains("samvault_partners{status=\"active\"} 0")
    );
    server.abort();
}
