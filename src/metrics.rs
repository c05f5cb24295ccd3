//! `GET /metrics` (SPEC §3.3): Prometheus text exposition format 0.0.4, hand-rolled.
//!
//! Counters and the IdP latency histogram live in one process-wide registry ([`metrics`]);
//! the record functions are cheap (one uncontended mutex) and never fail. Gauges describing
//! shared state (partners per status, the nearest expiry, the app-credentials alarm, the
//! webhook outbox) are read from the database at scrape time, so every replica reports the
//! same values for them. Label values come from code (outcomes, grant types), never from
//! tokens or client input.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Mutex, MutexGuard, PoisonError};

use axum::Router;
use axum::extract::{FromRef, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sqlx::Row;

use crate::domain::PartnerStatus;
use crate::storage::partners::INACTIVITY_LIMIT_SECS;
use crate::storage::{self, Db, StorageError};

/// Upper bounds (seconds) of the IdP request duration histogram.
pub const DURATION_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The `content-type` of the exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

const STATUSES: [PartnerStatus; 4] = [
    PartnerStatus::Active,
    PartnerStatus::AtRisk,
    PartnerStatus::ReconsentRequired,
    PartnerStatus::Revoked,
];

#[derive(Clone, Debug, Default)]
struct Histogram {
    /// Observations per bucket (not cumulative); the last slot is above the largest bound.
    buckets: [u64; DURATION_BUCKETS.len() + 1],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, value: f64) {
        let value = if value.is_finite() && value > 0.0 {
            value
        } else {
            0.0
        };
        let slot = DURATION_BUCKETS
            .iter()
            .position(|le| value <= *le)
            .unwrap_or(DURATION_BUCKETS.len());
        self.buckets[slot] += 1;
        self.count += 1;
        self.sum += value;
    }
}

#[derive(Clone, Debug, Default)]
struct Registry {
    rotations: BTreeMap<String, u64>,
    idp_requests: BTreeMap<(String, String), u64>,
    idp_durations: BTreeMap<String, Histogram>,
    // Keyed by static labels: counted on every token request, so no allocation there.
    token_requests: BTreeMap<(&'static str, bool), u64>,
    webhook_deliveries: BTreeMap<String, u64>,
    /// Leases taken back from processes that died holding them.
    leases_reclaimed: u64,
}

/// The in-process counters and histogram.
#[derive(Debug)]
pub struct Metrics {
    registry: Mutex<Registry>,
}

static METRICS: Metrics = Metrics::new();

/// The process-wide registry.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

/// A finished rotation attempt, by outcome (`success`, `transient`, `reconsent_required`, ...).
pub fn record_rotation(outcome: &str) {
    metrics().record_rotation(outcome);
}

/// One call to the IdP's token endpoint: grant type (`refresh_token`, `authorization_code`),
/// outcome and how long it took.
pub fn record_idp_call(grant_type: &str, outcome: &str, seconds: f64) {
    metrics().record_idp_call(grant_type, outcome, seconds);
}

/// One answered token API request, and whether it came from the cache.
pub fn record_token_request(outcome: &'static str, cached: bool) {
    metrics().record_token_request(outcome, cached);
}

/// One webhook delivery attempt (`delivered`, `failed`, `abandoned`).
pub fn record_webhook_delivery(outcome: &str) {
    metrics().record_webhook_delivery(outcome);
}

/// Leases taken back from a process that died holding them.
pub fn record_leases_reclaimed(n: u64) {
    metrics().lock().leases_reclaimed += n;
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub const fn new() -> Self {
        Self {
            registry: Mutex::new(Registry {
                rotations: BTreeMap::new(),
                idp_requests: BTreeMap::new(),
                idp_durations: BTreeMap::new(),
                token_requests: BTreeMap::new(),
                webhook_deliveries: BTreeMap::new(),
                leases_reclaimed: 0,
            }),
        }
    }

    /// A panic elsewhere while holding the lock leaves counters that are still meaningful.
    fn lock(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn record_rotation(&self, outcome: &str) {
        *self
            .lock()
            .rotations
            .entry(outcome.to_string())
            .or_default() += 1;
    }

    pub fn record_idp_call(&self, grant_type: &str, outcome: &str, seconds: f64) {
        let mut registry = self.lock();
        *registry
            .idp_requests
            .entry((grant_type.to_string(), outcome.to_string()))
            .or_default() += 1;
        registry
            .idp_durations
            .entry(grant_type.to_string())
            .or_default()
            .observe(seconds);
    }

    pub fn record_token_request(&self, outcome: &'static str, cached: bool) {
        *self
            .lock()
            .token_requests
            .entry((outcome, cached))
            .or_default() += 1;
    }

    pub fn record_webhook_delivery(&self, outcome: &str) {
        *self
            .lock()
            .webhook_deliveries
            .entry(outcome.to_string())
            .or_default() += 1;
    }

    /// The counters and histogram in exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        self.write(&mut out);
        out
    }

    fn write(&self, out: &mut String) {
        // Format a copy, outside the lock.
        let registry = self.lock().clone();

        family(
            out,
            "samvault_rotations_total",
            "counter",
            "Refresh-token rotation attempts, by outcome.",
        );
        for (outcome, n) in &registry.rotations {
            sample(
                out,
                "samvault_rotations_total",
                &[("outcome", outcome)],
                *n as f64,
            );
        }

        family(
            out,
            "samvault_idp_requests_total",
            "counter",
            "Token endpoint calls to the identity provider, by grant type and outcome.",
        );
        for ((grant_type, outcome), n) in &registry.idp_requests {
            sample(
                out,
                "samvault_idp_requests_total",
                &[("grant_type", grant_type), ("outcome", outcome)],
                *n as f64,
            );
        }

        family(
            out,
            "samvault_idp_request_duration_seconds",
            "histogram",
            "Duration of token endpoint calls to the identity provider.",
        );
        for (grant_type, h) in &registry.idp_durations {
            let mut cumulative = 0;
            for (le, n) in DURATION_BUCKETS.iter().zip(h.buckets) {
                cumulative += n;
                sample(
                    out,
                    "samvault_idp_request_duration_seconds_bucket",
                    &[("grant_type", grant_type), ("le", &format_value(*le))],
                    cumulative as f64,
                );
            }
            sample(
                out,
                "samvault_idp_request_duration_seconds_bucket",
                &[("grant_type", grant_type), ("le", "+Inf")],
                h.count as f64,
            );
            sample(
                out,
                "samvault_idp_request_duration_seconds_sum",
                &[("grant_type", grant_type)],
                h.sum,
            );
            sample(
                out,
                "samvault_idp_request_duration_seconds_count",
                &[("grant_type", grant_type)],
                h.count as f64,
            );
        }

        family(
            out,
            "samvault_token_requests_total",
            "counter",
            "Token API requests, by outcome and whether the access token came from the cache.",
        );
        for ((outcome, cached), n) in &registry.token_requests {
            let cached = if *cached { "true" } else { "false" };
            sample(
                out,
                "samvault_token_requests_total",
                &[("outcome", outcome), ("cached", cached)],
                *n as f64,
            );
        }

        family(
            out,
            "samvault_webhook_deliveries_total",
            "counter",
            "Webhook delivery attempts, by outcome (delivered, failed, abandoned).",
        );
        for (outcome, n) in &registry.webhook_deliveries {
            sample(
                out,
                "samvault_webhook_deliveries_total",
                &[("outcome", outcome)],
                *n as f64,
            );
        }

        family(
            out,
            "samvault_leases_reclaimed_total",
            "counter",
            "Partner leases taken back from samvault processes that died holding them.",
        );
        sample(
            out,
            "samvault_leases_reclaimed_total",
            &[],
            registry.leases_reclaimed as f64,
        );
    }
}

/// Values read from the database at scrape time.
#[derive(Clone, Debug, PartialEq)]
pub struct Gauges {
    /// Partners per status; every known status is present.
    pub partners: BTreeMap<String, i64>,
    /// Days until the nearest 90-day inactivity expiry among usable partners.
    pub min_days_to_expiry: Option<f64>,
    pub app_credentials_alarm: bool,
    /// Undelivered webhook events still being retried.
    pub webhook_outbox_pending: i64,
    /// Undelivered webhook events given up after [`crate::notify::MAX_ATTEMPTS`].
    pub webhook_outbox_abandoned: i64,
}

impl Gauges {
    pub async fn load(db: &Db, now: i64) -> Result<Self, StorageError> {
        let mut partners: BTreeMap<String, i64> = STATUSES
            .iter()
            .map(|s| (s.as_str().to_string(), 0))
            .collect();
        for row in sqlx::query("SELECT status, COUNT(*) AS n FROM partners GROUP BY status")
            .fetch_all(db.pool())
            .await?
        {
            partners.insert(row.try_get("status")?, row.try_get("n")?);
        }
        let oldest: Option<i64> = sqlx::query(
            "SELECT MIN(last_refresh_at) AS oldest FROM partners WHERE status IN ('active', 'at_risk')",
        )
        .fetch_one(db.pool())
        .await?
        .try_get("oldest")?;
        let min_days_to_expiry =
            oldest.map(|at| (at + INACTIVITY_LIMIT_SECS - now) as f64 / 86_400.0);
        let alarms: i64 =
            sqlx::query("SELECT COUNT(*) AS n FROM alarms WHERE name = 'app_credentials'")
                .fetch_one(db.pool())
                .await?
                .try_get("n")?;
        let outbox = |sql: &'static str| async move {
            let n: i64 = sqlx::query(sql)
                .bind(crate::notify::MAX_ATTEMPTS)
                .fetch_one(db.pool())
                .await?
                .try_get("n")?;
            Ok::<_, StorageError>(n)
        };
        let webhook_outbox_pending = outbox(
            "SELECT COUNT(*) AS n FROM webhook_outbox WHERE delivered_at IS NULL AND attempts < $1",
        )
        .await?;
        let webhook_outbox_abandoned = outbox(
            "SELECT COUNT(*) AS n FROM webhook_outbox WHERE delivered_at IS NULL AND attempts >= $1",
        )
        .await?;
        Ok(Self {
            partners,
            min_days_to_expiry,
            app_credentials_alarm: alarms > 0,
            webhook_outbox_pending,
            webhook_outbox_abandoned,
        })
    }

    fn write(&self, out: &mut String) {
        family(
            out,
            "samvault_partners",
            "gauge",
            "Partner tenants, by status.",
        );
        for (status, n) in &self.partners {
            sample(out, "samvault_partners", &[("status", status)], *n as f64);
        }
        family(
            out,
            "samvault_min_days_to_expiry",
            "gauge",
            "Days until the nearest 90-day inactivity expiry among active and at-risk partners.",
        );
        if let Some(days) = self.min_days_to_expiry {
            sample(out, "samvault_min_days_to_expiry", &[], days);
        }
        family(
            out,
            "samvault_app_credentials_alarm",
            "gauge",
            "1 while the identity provider rejects the CPV app's own credentials.",
        );
        sample(
            out,
            "samvault_app_credentials_alarm",
            &[],
            if self.app_credentials_alarm { 1.0 } else { 0.0 },
        );
        family(
            out,
            "samvault_webhook_outbox_pending",
            "gauge",
            "Webhook events waiting for delivery (still being retried).",
        );
        sample(
            out,
            "samvault_webhook_outbox_pending",
            &[],
            self.webhook_outbox_pending as f64,
        );
        family(
            out,
            "samvault_webhook_outbox_abandoned",
            "gauge",
            "Webhook events given up after the maximum number of attempts.",
        );
        sample(
            out,
            "samvault_webhook_outbox_abandoned",
            &[],
            self.webhook_outbox_abandoned as f64,
        );
    }
}

/// The whole exposition: in-process counters, then the database gauges.
pub async fn render(db: &Db) -> Result<String, StorageError> {
    let gauges = Gauges::load(db, storage::now()).await?;
    let mut out = metrics().encode();
    gauges.write(&mut out);
    Ok(out)
}

/// What `GET /metrics` needs: the database for the gauges, and the token it asks for.
#[derive(Clone)]
pub struct MetricsAccess {
    pub db: Db,
    /// SHA-256 of `SAMVAULT_METRICS_TOKEN`: compared in constant time, never kept in clear.
    pub token_digest: Option<[u8; 32]>,
}

impl MetricsAccess {
    pub fn new(db: Db, token: Option<&secrecy::SecretString>) -> Self {
        use secrecy::ExposeSecret;
        use sha2::Digest;
        Self {
            db,
            token_digest: token.map(|t| sha2::Sha256::digest(t.expose_secret().as_bytes()).into()),
        }
    }

    fn allows(&self, headers: &axum::http::HeaderMap) -> bool {
        use sha2::Digest;
        use subtle::ConstantTimeEq;
        let Some(expected) = &self.token_digest else {
            return true;
        };
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            // The scheme is case-insensitive (RFC 7235).
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map_or("", |(_, token)| token);
        let digest: [u8; 32] = sha2::Sha256::digest(presented.as_bytes()).into();
        !presented.is_empty() && bool::from(digest.ct_eq(expected))
    }
}

/// `GET /metrics`.
pub async fn handler(
    State(access): State<MetricsAccess>,
    headers: axum::http::HeaderMap,
) -> Response {
    if !access.allows(&headers) {
        return (
            StatusCode::UNAUTHORIZED,
            [
                (
                    header::WWW_AUTHENTICATE,
                    "Bearer realm=\"samvault metrics\"",
                ),
                (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            ],
            "metrics need Authorization: Bearer <SAMVAULT_METRICS_TOKEN>\n",
        )
            .into_response();
    }
    match render(&access.db).await {
        Ok(body) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "metrics: database unavailable");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                "metrics unavailable\n",
            )
                .into_response()
        }
    }
}

/// A router serving `GET /metrics`, to merge into the application's.
pub fn router<S>() -> Router<S>
where
    MetricsAccess: FromRef<S>,
    S: Clone + Send + Sync + 'static,
{
    Router::new().route("/metrics", get(handler))
}

impl FromRef<crate::http::AppState> for MetricsAccess {
    fn from_ref(state: &crate::http::AppState) -> Self {
        state.metrics.clone()
    }
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {}", escape_help(help));
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: f64) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (label, value)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{label}=\"{}\"", escape_label(value));
        }
        out.push('}');
    }
    out.push(' ');
    out.push_str(&format_value(value));
    out.push('\n');
}

/// Label values escape backslash, double quote and line feed.
fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// HELP text escapes backslash and line feed.
fn escape_help(value: &str) -> String {
    value.replace('\\', "\\\\").replace('\n', "\\n")
}

fn format_value(value: f64) -> String {
    if value.is_nan() {
        "NaN".to_string()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.to_string()
    } else {
        // Rust's shortest round-trip form: `1`, `0.005`, `2.5`; never an exponent.
        format!("{value}")
    }
}

/// A minimal check of the text format, for tests and probes: every line is a comment (`# HELP name text`,
/// `# TYPE name kind`) or `name{label="value",...} number`, and every sample belongs to
/// a family declared before it.
pub fn validate(text: &str) -> Result<(), String> {
    let mut families: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("HELP"), Some(name), Some(_)) if valid_name(name) => {}
                (Some("TYPE"), Some(name), Some(kind))
                    if valid_name(name) && ["counter", "gauge", "histogram"].contains(&kind) =>
                {
                    families.push((name.to_string(), kind.to_string()));
                }
                _ => return Err(format!("bad comment line: {line}")),
            }
            continue;
        }
        let name_end = line
            .find(['{', ' '])
            .ok_or_else(|| format!("no value: {line}"))?;
        let name = &line[..name_end];
        if !valid_name(name) {
            return Err(format!("bad metric name: {line}"));
        }
        let mut rest = &line[name_end..];
        if let Some(labels) = rest.strip_prefix('{') {
            rest = parse_labels(labels).ok_or_else(|| format!("bad labels: {line}"))?;
        }
        let value = rest
            .strip_prefix(' ')
            .ok_or_else(|| format!("bad sample: {line}"))?;
        if !matches!(value, "+Inf" | "-Inf" | "NaN") && value.parse::<f64>().is_err() {
            return Err(format!("bad value: {line}"));
        }
        let (family, kind) = families
            .last()
            .ok_or_else(|| format!("sample before any TYPE: {line}"))?;
        let base_ok = if kind == "histogram" {
            ["_bucket", "_sum", "_count"]
                .iter()
                .any(|s| name.strip_suffix(s) == Some(family.as_str()))
        } else {
            name == family
        };
        if !base_ok {
            return Err(format!("sample outside its family {family}: {line}"));
        }
    }
    Ok(())
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Parses `a="x",b="y"}` and returns what follows the closing brace.
fn parse_labels(mut s: &str) -> Option<&str> {
    loop {
        if let Some(rest) = s.strip_prefix('}') {
            return Some(rest);
        }
        let eq = s.find('=')?;
        if !valid_name(&s[..eq]) {
            return None;
        }
        s = s[eq + 1..].strip_prefix('"')?;
        let mut escaped = false;
        let mut end = None;
        for (i, c) in s.char_indices() {
            match (escaped, c) {
                (true, '\\' | '"' | 'n') => escaped = false,
                (true, _) => return None,
                (false, '\\') => escaped = true,
                (false, '"') => {
                    end = Some(i);
                    break;
                }
                (false, '\n') => return None,
                _ => {}
            }
        }
        s = &s[end? + 1..];
        if let Some(rest) = s.strip_prefix(',') {
            s = rest;
        } else if !s.starts_with('}') {
            return None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_histogram_render() {
        let m = Metrics::new();
        m.record_rotation("success");
        m.record_rotation("success");
        m.record_rotation("transient");
        m.record_idp_call("refresh_token", "success", 0.003);
        m.record_idp_call("refresh_token", "success", 0.3);
        m.record_idp_call("refresh_token", "invalid_grant", 42.0);
        m.record_token_request("ok", true);
        m.record_token_request("ok", false);
        m.record_webhook_delivery("delivered");
        m.lock().leases_reclaimed += 3;
        let text = m.encode();
        validate(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        for line in [
            "samvault_rotations_total{outcome=\"success\"} 2",
            "samvault_rotations_total{outcome=\"transient\"} 1",
            "samvault_idp_requests_total{grant_type=\"refresh_token\",outcome=\"success\"} 2",
            "samvault_idp_request_duration_seconds_bucket{grant_type=\"refresh_token\",le=\"0.005\"} 1",
            "samvault_idp_request_duration_seconds_bucket{grant_type=\"refresh_token\",le=\"0.25\"} 1",
            "samvault_idp_request_duration_seconds_bucket{grant_type=\"refresh_token\",le=\"0.5\"} 2",
            "samvault_idp_request_duration_seconds_bucket{grant_type=\"refresh_token\",le=\"10\"} 2",
            "samvault_idp_request_duration_seconds_bucket{grant_type=\"refresh_token\",le=\"+Inf\"} 3",
            "samvault_idp_request_duration_seconds_sum{grant_type=\"refresh_token\"} 42.303",
            "samvault_idp_request_duration_seconds_count{grant_type=\"refresh_token\"} 3",
            "samvault_token_requests_total{outcome=\"ok\",cached=\"true\"} 1",
            "samvault_token_requests_total{outcome=\"ok\",cached=\"false\"} 1",
            "samvault_webhook_deliveries_total{outcome=\"delivered\"} 1",
            "samvault_leases_reclaimed_total 3",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}\n{text}");
        }
    }

    #[test]
    fn label_values_are_escaped() {
        let m = Metrics::new();
        m.record_rotation("a\"b\\c\nd");
        let text = m.encode();
        assert!(
            text.contains(r#"samvault_rotations_total{outcome="a\"b\\c\nd"} 1"#),
            "{text}"
        );
        validate(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    }

    #[test]
    fn the_checker_refuses_broken_text() {
        for bad in [
            "samvault_x 1",
            "# TYPE samvault_x counter\nsamvault_x{a=\"b} 1",
            "# TYPE samvault_x counter\nsamvault_x one",
            "# TYPE samvault_x counter\nsamvault_y 1",
            "# TYPE samvault_x summary",
        ] {
            assert!(validate(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn values_format_like_prometheus() {
        assert_eq!(format_value(1.0), "1");
        assert_eq!(format_value(0.005), "0.005");
        assert_eq!(format_value(f64::INFINITY), "+Inf");
        assert_eq!(format_value(-2.5), "-2.5");
    }
}
