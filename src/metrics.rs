//! `GET /metrics` (REFERENCE §3.3): Prometheus text exposition format 0.0.4, rendered by the
//! `prometheus` crate (see docs/ARCHITECTURE.md for why that crate).
//!
//! [`Metrics`] holds the counters and the IdP latency histogram, registered once; the
//! service keeps one in its state and hands it to what records (broker, notifier, liveness,
//! the token API). Recording never fails. Gauges describing shared state (partners per status,
//! the nearest expiry, the app-credentials alarm, the webhook outbox) are read from the
//! database at scrape time ([`Gauges`]), so every replica reports the same values for them.
//! Label values come from code (outcomes, grant types), never from tokens or client input.
//! The route and its bearer token live in `http::metrics`.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{
    Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::domain::{CustomerStatus, PartnerStatus};
use crate::storage::outbox::MAX_ATTEMPTS;
use crate::storage::partners::{self, INACTIVITY_LIMIT_SECS};
use crate::storage::{self, Db, StorageError, customers, stats};

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

/// Names, help texts and label names below are constants: registering or encoding them
/// fails only on a programming error, which the unit tests would show.
const VALID: &str = "static metric definitions are valid";

/// The token API's common outcome; its two series are resolved once (see
/// [`Metrics::record_token_request`]).
const ISSUED: &str = "issued";

/// The in-process counters and histogram, registered once.
pub struct Metrics {
    registry: Registry,
    rotations: IntCounterVec,
    idp_requests: IntCounterVec,
    idp_durations: HistogramVec,
    token_requests: IntCounterVec,
    /// `token_requests{outcome="issued"}` by `cached` (index 0: false, 1: true), created on
    /// first use so an unused series does not appear.
    issued: [OnceLock<IntCounter>; 2],
    customer_tokens: IntCounterVec,
    /// `customer_tokens{outcome="issued"}`, resolved at first use like `issued`.
    customer_issued: OnceLock<IntCounter>,
    webhook_deliveries: IntCounterVec,
    /// Leases taken back from processes that died holding them.
    leases_reclaimed: IntCounter,
    partner_center_requests: IntCounterVec,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let counters = |name: &str, help: &str, labels: &'static [&'static str]| {
            let counters = IntCounterVec::new(Opts::new(name, help), labels).expect(VALID);
            register_in_order(&registry, counters.clone(), labels);
            counters
        };
        let rotations = counters(
            "samvault_rotations_total",
            "Refresh-token rotation attempts, by outcome.",
            &["outcome"],
        );
        let idp_requests = counters(
            "samvault_idp_requests_total",
            "Token endpoint calls to the identity provider, by grant type and outcome.",
            &["grant_type", "outcome"],
        );
        let token_requests = counters(
            "samvault_token_requests_total",
            "Token API requests, by outcome and whether the access token came from the cache.",
            &["outcome", "cached"],
        );
        let customer_tokens = counters(
            "samvault_customer_tokens_total",
            "Customer-tenant token requests, by outcome (issued, or the problem code).",
            &["outcome"],
        );
        let webhook_deliveries = counters(
            "samvault_webhook_deliveries_total",
            "Webhook delivery attempts, by outcome (delivered, failed, abandoned).",
            &["outcome"],
        );
        let partner_center_requests = counters(
            "samvault_partner_center_requests_total",
            "Partner Center calls, by operation and outcome (success, throttled, refused, unavailable).",
            &["operation", "outcome"],
        );
        let idp_durations = HistogramVec::new(
            HistogramOpts::new(
                "samvault_idp_request_duration_seconds",
                "Duration of token endpoint calls to the identity provider.",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["grant_type"],
        )
        .expect(VALID);
        register_in_order(&registry, idp_durations.clone(), &["grant_type"]);
        let leases_reclaimed = IntCounter::new(
            "samvault_leases_reclaimed_total",
            "Partner leases taken back from samvault processes that died holding them.",
        )
        .expect(VALID);
        registry
            .register(Box::new(leases_reclaimed.clone()))
            .expect(VALID);
        Self {
            registry,
            rotations,
            idp_requests,
            idp_durations,
            token_requests,
            issued: Default::default(),
            customer_tokens,
            customer_issued: OnceLock::new(),
            webhook_deliveries,
            leases_reclaimed,
            partner_center_requests,
        }
    }

    /// One Partner Center call: its operation (`list_customers`, `consent_create`,
    /// `consent_delete`) and outcome. A throttled call sent again counts once per answer.
    pub fn record_partner_center(&self, operation: &str, outcome: &str) {
        self.partner_center_requests
            .with_label_values(&[operation, outcome])
            .inc();
    }

    /// A finished rotation attempt, by outcome (`success`, `transient`, `reconsent_required`, ...).
    pub fn record_rotation(&self, outcome: &str) {
        self.rotations.with_label_values(&[outcome]).inc();
    }

    /// One call to the IdP's token endpoint: grant type (`refresh_token`, `authorization_code`),
    /// outcome and how long it took.
    pub fn record_idp_call(&self, grant_type: &str, outcome: &str, seconds: f64) {
        self.idp_requests
            .with_label_values(&[grant_type, outcome])
            .inc();
        let seconds = if seconds.is_finite() && seconds > 0.0 {
            seconds
        } else {
            0.0
        };
        self.idp_durations
            .with_label_values(&[grant_type])
            .observe(seconds);
    }

    /// One answered token API request, and whether it came from the cache. The hot case
    /// (`issued`) is one atomic add: no label hashing or lock on every request.
    pub fn record_token_request(&self, outcome: &'static str, cached: bool) {
        let labels = [outcome, if cached { "true" } else { "false" }];
        if outcome == ISSUED {
            self.issued[usize::from(cached)]
                .get_or_init(|| self.token_requests.with_label_values(&labels))
                .inc();
        } else {
            self.token_requests.with_label_values(&labels).inc();
        }
    }

    /// One customer-tenant token request that reached the broker, by outcome (`issued` or
    /// the problem code); the common case is one atomic add.
    pub fn record_customer_token(&self, outcome: &'static str) {
        if outcome == ISSUED {
            self.customer_issued
                .get_or_init(|| self.customer_tokens.with_label_values(&[ISSUED]))
                .inc();
        } else {
            self.customer_tokens.with_label_values(&[outcome]).inc();
        }
    }

    /// One webhook delivery attempt (`delivered`, `failed`, `abandoned`).
    pub fn record_webhook_delivery(&self, outcome: &str) {
        self.webhook_deliveries.with_label_values(&[outcome]).inc();
    }

    /// Leases taken back from a process that died holding them.
    pub fn record_leases_reclaimed(&self, n: u64) {
        self.leases_reclaimed.inc_by(n);
    }

    /// The counters and histogram in exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        encode(&self.registry, &mut out);
        out
    }
}

/// prometheus sorts a series' labels by name; this keeps them in the order they were declared
/// (`outcome` before `cached`), so every series reads exactly as samvault always wrote it.
struct InDeclaredOrder<C> {
    inner: C,
    labels: &'static [&'static str],
}

impl<C: Collector> Collector for InDeclaredOrder<C> {
    fn desc(&self) -> Vec<&Desc> {
        self.inner.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut families = self.inner.collect();
        for metric in families.iter_mut().flat_map(|f| f.mut_metric().iter_mut()) {
            metric
                .mut_label()
                .sort_by_key(|pair| self.labels.iter().position(|l| *l == pair.name()));
        }
        families
    }
}

fn register_in_order<C: Collector + 'static>(
    registry: &Registry,
    inner: C,
    labels: &'static [&'static str],
) {
    registry
        .register(Box::new(InDeclaredOrder { inner, labels }))
        .expect(VALID);
}

fn encode(registry: &Registry, out: &mut String) {
    TextEncoder::new()
        .encode_utf8(&registry.gather(), out)
        .expect(VALID);
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
    /// Undelivered webhook events given up after [`MAX_ATTEMPTS`].
    pub webhook_outbox_abandoned: i64,
    /// Customers of every partner per status; every known status is present.
    pub customers: BTreeMap<String, i64>,
}

impl Gauges {
    pub async fn load(db: &Db, now: i64) -> Result<Self, StorageError> {
        let mut partners: BTreeMap<String, i64> = STATUSES
            .iter()
            .map(|s| (s.as_str().to_string(), 0))
            .collect();
        for (status, n) in partners::count_by_status(db).await? {
            partners.insert(status.as_str().to_string(), n);
        }
        let row = stats::gauges(db, MAX_ATTEMPTS).await?;
        let mut customers: BTreeMap<String, i64> = CustomerStatus::ALL
            .iter()
            .map(|s| (s.as_str().to_string(), 0))
            .collect();
        for (status, n) in customers::counts_by_status(db).await? {
            customers.insert(status.as_str().to_string(), n);
        }
        Ok(Self {
            partners,
            min_days_to_expiry: row
                .oldest_usable_refresh
                .map(|at| (at + INACTIVITY_LIMIT_SECS - now) as f64 / 86_400.0),
            app_credentials_alarm: row.app_credentials_alarms > 0,
            webhook_outbox_pending: row.outbox_pending,
            webhook_outbox_abandoned: row.outbox_abandoned,
            customers,
        })
    }

    /// Appends the gauges, registered in a registry of their own for this one scrape.
    fn encode(&self, out: &mut String) {
        let registry = Registry::new();
        let partners = IntGaugeVec::new(
            Opts::new("samvault_partners", "Partner tenants, by status."),
            &["status"],
        )
        .expect(VALID);
        registry.register(Box::new(partners.clone())).expect(VALID);
        for (status, n) in &self.partners {
            partners.with_label_values(&[status]).set(*n);
        }
        let customers = IntGaugeVec::new(
            Opts::new(
                "samvault_customers",
                "Customer tenants of every partner, by status.",
            ),
            &["status"],
        )
        .expect(VALID);
        registry.register(Box::new(customers.clone())).expect(VALID);
        for (status, n) in &self.customers {
            customers.with_label_values(&[status]).set(*n);
        }
        let gauge = |name: &str, help: &str, value: f64| {
            let gauge = Gauge::new(name, help).expect(VALID);
            gauge.set(value);
            registry.register(Box::new(gauge)).expect(VALID);
        };
        if let Some(days) = self.min_days_to_expiry {
            gauge(
                "samvault_min_days_to_expiry",
                "Days until the nearest 90-day inactivity expiry among active and at-risk partners.",
                days,
            );
        }
        gauge(
            "samvault_app_credentials_alarm",
            "1 while the identity provider rejects the CPV app's own credentials.",
            if self.app_credentials_alarm { 1.0 } else { 0.0 },
        );
        gauge(
            "samvault_webhook_outbox_pending",
            "Webhook events waiting for delivery (still being retried).",
            self.webhook_outbox_pending as f64,
        );
        gauge(
            "samvault_webhook_outbox_abandoned",
            "Webhook events given up after the maximum number of attempts.",
            self.webhook_outbox_abandoned as f64,
        );
        encode(&registry, out);
    }
}

/// The whole exposition: `metrics`' counters, then the database gauges.
pub async fn render(metrics: &Metrics, db: &Db) -> Result<String, StorageError> {
    let gauges = Gauges::load(db, storage::now()).await?;
    let mut out = metrics.encode();
    gauges.encode(&mut out);
    Ok(out)
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
        m.record_leases_reclaimed(3);
        m.record_partner_center("consent_create", "throttled");
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
            "samvault_partner_center_requests_total{operation=\"consent_create\",outcome=\"throttled\"} 1",
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

    /// Whole numbers without a fraction, decimals in their shortest form, the last bucket
    /// labelled `+Inf`: the formatting the hand-written exposition had.
    #[test]
    fn values_format_like_prometheus() {
        let gauges = Gauges {
            partners: BTreeMap::from([("active".to_string(), 1)]),
            min_days_to_expiry: Some(-2.5),
            app_credentials_alarm: false,
            webhook_outbox_pending: 0,
            webhook_outbox_abandoned: 0,
            customers: BTreeMap::from([("consented".to_string(), 2)]),
        };
        let mut text = String::new();
        gauges.encode(&mut text);
        let m = Metrics::new();
        m.record_idp_call("refresh_token", "success", 0.001);
        text.push_str(&m.encode());
        validate(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        for line in [
            "samvault_partners{status=\"active\"} 1",
            "samvault_min_days_to_expiry -2.5",
            "samvault_app_credentials_alarm 0",
            "samvault_customers{status=\"consented\"} 2",
            "samvault_idp_request_duration_seconds_bucket{grant_type=\"refresh_token\",le=\"0.005\"} 1",
            "samvault_idp_request_duration_seconds_bucket{grant_type=\"refresh_token\",le=\"+Inf\"} 1",
            "samvault_idp_request_duration_seconds_sum{grant_type=\"refresh_token\"} 0.001",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}\n{text}");
        }
    }
}
