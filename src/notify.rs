//! Webhook notifications (REFERENCE §3.4 `SAMVAULT_WEBHOOK_URL` / `SAMVAULT_WEBHOOK_SECRET`).
//!
//! Status changes become [`Event`]s written to the `webhook_outbox` table; a background worker
//! ([`Notifier::spawn_delivery`]) POSTs them, signed with HMAC-SHA256, and retries with
//! exponential backoff. Rotation only ever inserts a row, so a slow or dead receiver never
//! slows it down. Several replicas may run the worker on one PostgreSQL: a row is claimed with
//! `FOR UPDATE SKIP LOCKED` and leased (its `next_attempt_at` pushed forward) in the same
//! statement, so two replicas never send the same row at once. Delivery is at least once;
//! receivers dedupe on the event `id` (also sent as `X-Samvault-Delivery`).
//!
//! Events carry tenant ids, statuses, Entra codes and human reasons (and, when a partner's
//! grant changes hands, both users' UPNs and object ids), never token material.
//! Log lines name the receiver by its origin only (webhook URLs often hold a secret in their
//! path or query).

use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use sha2::Sha256;
use url::Url;

use crate::backoff::Backoff;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::storage::audit::Head;
use crate::storage::outbox::{self, OutboxRow};
use crate::storage::{self, Db, StorageError};

/// Header carrying `sha256=<lowercase hex HMAC-SHA256(secret, body)>`.
pub const SIGNATURE_HEADER: &str = "X-Samvault-Signature";
/// Header carrying the event kind (`status_changed`, ...).
pub const EVENT_HEADER: &str = "X-Samvault-Event";
/// Header carrying the event id, the same for every retry of one event.
pub const DELIVERY_HEADER: &str = "X-Samvault-Delivery";

pub use crate::storage::outbox::MAX_ATTEMPTS;
const DEFAULT_BACKOFF_BASE: Duration = Duration::from_secs(5);
const DEFAULT_BACKOFF_CAP: Duration = Duration::from_secs(3600);
const DEFAULT_POLL: Duration = Duration::from_secs(1);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a claimed row is reserved for the replica sending it (well above the timeout).
const LEASE_SECS: i64 = 60;
/// Rows claimed (and sent concurrently) per pass.
const BATCH: i64 = 16;
/// Delivered rows are kept this long (for inspection), then deleted by the worker.
pub const DELIVERED_RETENTION_SECS: i64 = 30 * 86_400;
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A partner's status changed (consent, demotion, revocation, ...).
    StatusChanged,
    /// A partner's refresh token works again after failed attempts.
    Recovered,
    /// Entra refuses the CPV app's own credentials: every partner is affected.
    AppCredentialsAlarm,
    /// The app-credentials alarm cleared.
    AppCredentialsRecovered,
    /// A partner's grant was replaced by another user's consent (issue 17: who speaks for a
    /// partner changed).
    #[serde(rename = "partner.consenter_changed")]
    ConsenterChanged,
    /// The CPV app was consented into a customer tenant (REFERENCE §6).
    #[serde(rename = "customer.consented")]
    CustomerConsented,
    /// Partner Center refused or failed a consent push; samvault retries with backoff.
    #[serde(rename = "customer.consent_failed")]
    CustomerConsentFailed,
    /// The CPV app's consent was removed from a customer tenant through samvault.
    #[serde(rename = "customer.removed")]
    CustomerRemoved,
    /// Any other change of a customer's status (gone, access_denied, unconsented, ...).
    #[serde(rename = "customer.status_changed")]
    CustomerStatusChanged,
    /// The audit chain's head every `SAMVAULT_AUDIT_CHECKPOINT_EVERY` entries, for the
    /// receiver to keep outside samvault's database (issue 17).
    #[serde(rename = "audit.checkpoint")]
    AuditCheckpoint,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::StatusChanged => "status_changed",
            Self::Recovered => "recovered",
            Self::AppCredentialsAlarm => "app_credentials_alarm",
            Self::AppCredentialsRecovered => "app_credentials_recovered",
            Self::ConsenterChanged => "partner.consenter_changed",
            Self::CustomerConsented => "customer.consented",
            Self::CustomerConsentFailed => "customer.consent_failed",
            Self::CustomerRemoved => "customer.removed",
            Self::CustomerStatusChanged => "customer.status_changed",
            Self::AuditCheckpoint => "audit.checkpoint",
        }
    }
}

/// One webhook event: the JSON body receivers get. Never holds token material.
#[derive(Serialize, Clone, Debug)]
pub struct Event {
    pub kind: EventKind,
    pub tenant_id: Option<String>,
    /// `customer.*` events: the customer tenant (`tenant_id` is its partner's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub customer_tenant_id: Option<String>,
    pub from_status: Option<String>,
    pub to_status: Option<String>,
    /// The Entra code behind the change (`AADSTS700082`), if any.
    pub code: Option<String>,
    /// What happened and what a person should do.
    pub reason: Option<String>,
    /// When the change happened (RFC 3339, UTC).
    pub at: String,
    /// Unique per event, stable across retries: receivers dedupe on it.
    pub id: String,
    /// `partner.consenter_changed`: whose consent the replaced grant came from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_consenter: Option<PartnerUser>,
    /// `partner.consenter_changed`: whose consent the partner's grant comes from now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consenter: Option<PartnerUser>,
    /// `audit.checkpoint`: the entry's number and MAC, as `SEQ:MAC`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit_head: Option<String>,
}

/// A partner's user as events name them: UPN and Entra object id (`None` for imports).
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct PartnerUser {
    pub upn: String,
    pub oid: Option<String>,
}

impl PartnerUser {
    pub fn new(upn: &str, oid: Option<&str>) -> Self {
        Self {
            upn: upn.to_string(),
            oid: oid.map(str::to_string),
        }
    }
}

impl Event {
    fn new(kind: EventKind) -> Self {
        let at = storage::rfc3339(storage::now());
        Self {
            kind,
            tenant_id: None,
            customer_tenant_id: None,
            from_status: None,
            to_status: None,
            code: None,
            reason: None,
            at,
            id: uuid::Uuid::new_v4().to_string(),
            previous_consenter: None,
            consenter: None,
            audit_head: None,
        }
    }

    /// `status_changed`: a partner moved from `from` (`None` for a first consent) to `to`
    /// (`active`, `at_risk`, `reconsent_required`, `revoked`), with the Entra code behind it
    /// and the reason shown to people.
    pub fn status_changed<'a>(
        tenant_id: &str,
        from: impl Into<Option<&'a str>>,
        to: &str,
        code: Option<&str>,
        reason: &str,
    ) -> Self {
        Self {
            tenant_id: Some(tenant_id.to_string()),
            from_status: from.into().map(str::to_string),
            to_status: Some(to.to_string()),
            code: code.map(str::to_string),
            reason: Some(reason.to_string()),
            ..Self::new(EventKind::StatusChanged)
        }
    }

    /// `recovered`: a partner's refresh token was redeemed again after `failures`
    /// consecutive failed attempts (transient errors that never changed its status).
    pub fn recovered(tenant_id: &str, failures: i64) -> Self {
        let plural = if failures == 1 { "" } else { "s" };
        Self {
            tenant_id: Some(tenant_id.to_string()),
            reason: Some(format!(
                "Refresh succeeded again after {failures} failed attempt{plural}."
            )),
            ..Self::new(EventKind::Recovered)
        }
    }

    /// `app_credentials_alarm`: Entra refused the CPV app's own credentials (`code` such as
    /// `AADSTS7000222`, `detail` saying what it means and what to do).
    pub fn app_credentials_alarm(code: Option<&str>, detail: &str) -> Self {
        Self {
            code: code.map(str::to_string),
            reason: Some(detail.to_string()),
            ..Self::new(EventKind::AppCredentialsAlarm)
        }
    }

    /// `app_credentials_recovered`: the CPV app's credentials are accepted again.
    pub fn app_credentials_recovered() -> Self {
        Self {
            reason: Some("The identity provider accepts the CPV app's credentials again.".into()),
            ..Self::new(EventKind::AppCredentialsRecovered)
        }
    }

    /// `partner.consenter_changed`: the grant `previous` gave was replaced by `consenter`'s
    /// consent, for the reason given.
    pub fn consenter_changed(
        tenant_id: &str,
        previous: PartnerUser,
        consenter: PartnerUser,
        reason: &str,
    ) -> Self {
        Self {
            tenant_id: Some(tenant_id.to_string()),
            reason: Some(reason.to_string()),
            previous_consenter: Some(previous),
            consenter: Some(consenter),
            ..Self::new(EventKind::ConsenterChanged)
        }
    }

    /// A `customer.*` event: customer `customer` of partner `partner` moved from `from` to
    /// `to`; `code` is Partner Center's or Entra's code behind it, `reason` what it means
    /// and what to do.
    pub fn customer(
        kind: EventKind,
        partner: &str,
        customer: &str,
        (from, to): (Option<&str>, &str),
        code: Option<&str>,
        reason: &str,
    ) -> Self {
        Self {
            tenant_id: Some(partner.to_string()),
            customer_tenant_id: Some(customer.to_string()),
            from_status: from.map(str::to_string),
            to_status: Some(to.to_string()),
            code: code.map(str::to_string),
            reason: Some(reason.to_string()),
            ..Self::new(kind)
        }
    }

    /// `audit.checkpoint`: the audit chain's head `head`, written at `at`.
    pub fn audit_checkpoint(head: &Head, at: i64) -> Self {
        Self {
            at: storage::rfc3339(at),
            audit_head: Some(head.to_string()),
            reason: Some(format!(
                "Keep this head outside samvault: `samvault audit verify --checkpoint {head}` \
                 fails if the audit log no longer holds entry {} with this MAC.",
                head.seq
            )),
            ..Self::new(EventKind::AuditCheckpoint)
        }
    }

    /// The JSON body as stored in the outbox and sent to the receiver.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("an Event always serialises")
    }
}

/// The outbox body of an `audit.checkpoint` event: what the audit chain queues with every
/// checkpoint entry (`storage::audit::CheckpointEvent`).
pub fn audit_checkpoint_body(head: &Head, at: i64) -> String {
    Event::audit_checkpoint(head, at).to_json()
}

/// `sha256=<lowercase hex HMAC-SHA256(secret, body)>`, the `X-Samvault-Signature` value.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Writes `event` to the outbox, due now. Prefer [`Notifier::publish`], which does nothing
/// when no webhook is configured; this is for callers that already checked
/// [`Notifier::is_enabled`].
pub async fn enqueue(db: &Db, event: &Event) -> Result<(), StorageError> {
    outbox::insert(db, &event.to_json(), storage::now()).await
}

struct Target {
    url: Url,
    secret: SecretString,
}

/// The entry point: publishes events and runs the delivery worker. Cheap to clone.
#[derive(Clone)]
pub struct Notifier {
    db: Db,
    target: Option<Arc<Target>>,
    http: reqwest::Client,
    backoff_base: Duration,
    backoff_cap: Duration,
    max_attempts: i64,
    poll: Duration,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier")
            .field("receiver", &self.receiver())
            .field("backoff_base", &self.backoff_base)
            .field("backoff_cap", &self.backoff_cap)
            .field("max_attempts", &self.max_attempts)
            .finish_non_exhaustive()
    }
}

impl Notifier {
    /// From the configuration: enabled when `SAMVAULT_WEBHOOK_URL` (and the secret that
    /// configuration requires with it) are set.
    /// Delivery outcomes are counted in `metrics`.
    pub fn new(db: Db, config: &Config, metrics: Arc<Metrics>) -> Self {
        let target = match (&config.webhook.url, &config.webhook.secret) {
            (Some(url), Some(secret)) => Some((url.clone(), secret.clone())),
            _ => None,
        };
        Self::with_roots(db, target, config.keys.extra_roots.clone(), metrics)
    }

    /// As [`Notifier::new`] with the receiver (URL, HMAC secret) given directly.
    pub fn from_parts(db: Db, target: Option<(Url, SecretString)>, metrics: Arc<Metrics>) -> Self {
        Self::with_roots(db, target, Vec::new(), metrics)
    }

    fn with_roots(
        db: Db,
        target: Option<(Url, SecretString)>,
        extra_roots: Vec<reqwest::Certificate>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let http = reqwest::Client::builder()
            .tls_certs_merge(extra_roots)
            // A redirect would resend the signed body somewhere nobody configured.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(5))
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("samvault/", env!("CARGO_PKG_VERSION")))
            .build()
            // Fails only if the TLS backend cannot start, which the IdP client (built the
            // same way, earlier) reports as a configuration error first.
            .expect("webhook HTTP client");
        Self {
            db,
            target: target.map(|(url, secret)| Arc::new(Target { url, secret })),
            http,
            backoff_base: DEFAULT_BACKOFF_BASE,
            backoff_cap: DEFAULT_BACKOFF_CAP,
            max_attempts: MAX_ATTEMPTS,
            poll: DEFAULT_POLL,
            metrics,
        }
    }

    /// Retry delays: `base`, `2·base`, `4·base`, ... capped at `cap` (default 5 s .. 1 h).
    /// The database keeps whole seconds, so sub-second delays mean "at the next pass".
    pub fn with_backoff(mut self, base: Duration, cap: Duration) -> Self {
        self.backoff_base = base;
        self.backoff_cap = cap.max(base);
        self
    }

    /// Attempts before a row is given up (default [`MAX_ATTEMPTS`]).
    pub fn with_max_attempts(mut self, attempts: i64) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// How often the idle worker looks for due rows (default 1 s).
    pub fn with_poll_interval(mut self, poll: Duration) -> Self {
        self.poll = poll;
        self
    }

    /// Whether a webhook receiver is configured.
    pub fn is_enabled(&self) -> bool {
        self.target.is_some()
    }

    /// The receiver's origin (scheme, host, port), safe to log; `None` when disabled.
    pub fn receiver(&self) -> Option<String> {
        self.target
            .as_ref()
            .map(|t| t.url.origin().ascii_serialization())
    }

    /// Queues `event` for delivery; does nothing (but log) when no webhook is configured.
    /// Never fails the caller: a status change must not be undone because its notification
    /// could not be queued, so a database error is logged instead (use [`enqueue`] to
    /// handle it).
    pub async fn publish(&self, event: &Event) {
        let kind = event.kind.as_str();
        let tenant_id = event.tenant_id.as_deref().unwrap_or("-");
        let to_status = event.to_status.as_deref().unwrap_or("-");
        if self.target.is_none() {
            tracing::info!(
                event = kind,
                tenant_id,
                to_status,
                event_id = %event.id,
                "webhook not configured; event not sent"
            );
            return;
        }
        match enqueue(&self.db, event).await {
            Ok(()) => tracing::info!(
                event = kind,
                tenant_id,
                to_status,
                event_id = %event.id,
                "webhook event queued"
            ),
            Err(e) => tracing::error!(
                event = kind,
                tenant_id,
                to_status,
                event_id = %event.id,
                error = %e,
                "webhook event lost: the outbox is unavailable"
            ),
        }
    }

    /// Starts the delivery worker on its own task. When no webhook is configured the returned
    /// task is already finished. Abort the handle to stop the worker.
    pub fn spawn_delivery(&self) -> tokio::task::JoinHandle<()> {
        let Some(receiver) = self.receiver() else {
            return tokio::spawn(async {});
        };
        let notifier = self.clone();
        tracing::info!(receiver, "webhook delivery worker started");
        tokio::spawn(async move {
            let mut next_prune = tokio::time::Instant::now();
            loop {
                if tokio::time::Instant::now() >= next_prune {
                    next_prune += PRUNE_EVERY;
                    let before = storage::now() - DELIVERED_RETENTION_SECS;
                    if let Err(e) = notifier.prune_delivered(before).await {
                        tracing::warn!(error = %e, "webhook outbox: pruning failed");
                    }
                }
                match notifier.deliver_due().await {
                    // A full batch may mean more rows are due: go again at once.
                    Ok(n) if n as i64 >= BATCH => continue,
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "webhook outbox unavailable"),
                }
                tokio::time::sleep(notifier.poll).await;
            }
        })
    }

    /// One pass of the worker: claims up to a batch of due rows, sends them concurrently and
    /// records each outcome. Returns how many rows were attempted (0 when disabled).
    pub async fn deliver_due(&self) -> Result<usize, StorageError> {
        let Some(target) = self.target.clone() else {
            return Ok(0);
        };
        let now = storage::now();
        let claimed =
            outbox::claim_due(&self.db, now, now + LEASE_SECS, self.max_attempts, BATCH).await?;
        let count = claimed.len();
        let mut tasks = tokio::task::JoinSet::new();
        for row in claimed {
            let notifier = self.clone();
            let target = target.clone();
            tasks.spawn(async move { notifier.deliver(&target, row).await });
        }
        let mut first_error = None;
        while let Some(done) = tasks.join_next().await {
            match done {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    first_error.get_or_insert(e);
                }
                Err(e) => tracing::error!(error = %e, "webhook delivery task failed"),
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(count),
        }
    }

    /// Deletes rows delivered before `before` (Unix seconds); undelivered rows stay.
    /// The worker calls it hourly with a [`DELIVERED_RETENTION_SECS`] horizon.
    pub async fn prune_delivered(&self, before: i64) -> Result<u64, StorageError> {
        outbox::prune_delivered(&self.db, before).await
    }

    /// The delay before retrying after `failures` failed attempts (1-based).
    pub fn backoff(&self, failures: i64) -> Duration {
        Backoff::new(self.backoff_base, 2)
            .capped_at(self.backoff_cap)
            .delay(failures)
    }

    async fn deliver(&self, target: &Target, row: OutboxRow) -> Result<(), StorageError> {
        let (kind, event_id) = describe(&row.body);
        let outcome = self
            .http
            .post(target.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(
                SIGNATURE_HEADER,
                signature(
                    target.secret.expose_secret().as_bytes(),
                    row.body.as_bytes(),
                ),
            )
            .header(EVENT_HEADER, &kind)
            .header(DELIVERY_HEADER, &event_id)
            .body(row.body)
            .send()
            .await;
        let error = match outcome {
            Ok(response) if response.status().is_success() => None,
            Ok(response) => Some(format!("HTTP {}", response.status().as_u16())),
            Err(e) => Some(transport_error(&e).to_string()),
        };
        let attempts = row.attempts + 1;
        let now = storage::now();
        let Some(error) = error else {
            outbox::mark_delivered(&self.db, row.id, attempts, now).await?;
            self.metrics.record_webhook_delivery("delivered");
            tracing::info!(event = %kind, event_id = %event_id, attempts, "webhook delivered");
            return Ok(());
        };
        let delay = self.backoff(attempts);
        let retry_at = now + delay.as_secs() as i64;
        outbox::mark_failed(&self.db, row.id, attempts, retry_at, &error).await?;
        if attempts >= self.max_attempts {
            self.metrics.record_webhook_delivery("abandoned");
            tracing::error!(
                event = %kind,
                event_id = %event_id,
                attempts,
                error,
                receiver = self.receiver().unwrap_or_default(),
                "webhook delivery abandoned; the event stays in webhook_outbox"
            );
        } else {
            self.metrics.record_webhook_delivery("failed");
            tracing::warn!(
                event = %kind,
                event_id = %event_id,
                attempts,
                error,
                retry_in_secs = delay.as_secs(),
                "webhook delivery failed; will retry"
            );
        }
        Ok(())
    }
}

/// The kind and id of a stored body, for the headers.
fn describe(body: &str) -> (String, String) {
    let value: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    let field = |name: &str| {
        value
            .get(name)
            .and_then(|v| v.as_str())
            .unwrap_or("unknown")
            .to_string()
    };
    (field("kind"), field("id"))
}

/// What went wrong, without the URL (reqwest's Display includes it).
fn transport_error(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_redirect() {
        "redirect refused"
    } else {
        "request failed"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TENANT: &str = "6f3a2a5e-0c1d-4a3b-8f4e-1c2d3e4f5a01";

    #[test]
    fn signature_matches_a_known_vector() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn events_serialise_in_snake_case() {
        let event = Event::status_changed(
            TENANT,
            "active",
            "reconsent_required",
            Some("AADSTS700082"),
            "The refresh token expired after 90 days of inactivity.",
        );
        let json: serde_json::Value = serde_json::from_str(&event.to_json()).unwrap();
        assert_eq!(json["kind"], "status_changed");
        assert_eq!(json["tenant_id"], TENANT);
        assert_eq!(json["from_status"], "active");
        assert_eq!(json["to_status"], "reconsent_required");
        assert_eq!(json["code"], "AADSTS700082");
        assert!(uuid::Uuid::parse_str(json["id"].as_str().unwrap()).is_ok());
        let at = json["at"].as_str().unwrap();
        time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339).unwrap();

        let first = Event::status_changed(TENANT, None, "active", None, "Consent recorded.");
        assert!(first.from_status.is_none());
        assert!(first.to_json().contains("\"from_status\":null"));

        let alarm = Event::app_credentials_alarm(Some("AADSTS7000222"), "secret expired");
        assert_eq!(alarm.kind.as_str(), "app_credentials_alarm");
        assert!(
            alarm
                .to_json()
                .contains("\"kind\":\"app_credentials_alarm\"")
        );
        assert!(alarm.tenant_id.is_none());
        assert!(
            Event::app_credentials_recovered()
                .to_json()
                .contains("\"app_credentials_recovered\"")
        );
        let recovered = Event::recovered(TENANT, 3);
        assert!(recovered.to_json().contains("\"kind\":\"recovered\""));
        assert!(recovered.reason.unwrap().contains("3 failed attempts"));
        assert_ne!(alarm.id, event.id);
    }

    #[test]
    fn a_change_of_consenter_names_both_users() {
        let event = Event::consenter_changed(
            TENANT,
            PartnerUser::new("jane@contoso.example", Some("oid-jane")),
            PartnerUser::new("grace@contoso.example", None),
            "replaced",
        );
        let json: serde_json::Value = serde_json::from_str(&event.to_json()).unwrap();
        assert_eq!(json["kind"], "partner.consenter_changed");
        assert_eq!(describe(&event.to_json()).0, event.kind.as_str());
        assert_eq!(json["previous_consenter"]["oid"], "oid-jane");
        assert_eq!(json["consenter"]["upn"], "grace@contoso.example");
        assert!(json["consenter"]["oid"].is_null());
        // Other events keep their shape.
        assert!(!Event::recovered(TENANT, 1).to_json().contains("consenter"));
    }

    #[test]
    fn describe_reads_the_headers_from_the_body() {
        let event = Event::app_credentials_recovered();
        let (kind, id) = describe(&event.to_json());
        assert_eq!(kind, "app_credentials_recovered");
        assert_eq!(id, event.id);
        assert_eq!(describe("not json"), ("unknown".into(), "unknown".into()));
    }

    #[tokio::test]
    async fn backoff_doubles_up_to_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let url = SecretString::from(format!("sqlite://{}/t.db?mode=rwc", dir.path().display()));
        let db = Db::connect(&url).await.unwrap();
        let n = Notifier::from_parts(db, None, Arc::default());
        let secs = |f| n.backoff(f).as_secs();
        assert_eq!(
            (1..=6).map(secs).collect::<Vec<_>>(),
            [5, 10, 20, 40, 80, 160]
        );
        assert_eq!(secs(11), 3600);
        assert_eq!(secs(1000), 3600);
        let n = n.with_backoff(Duration::from_secs(1), Duration::from_secs(3));
        let secs = |f| n.backoff(f).as_secs();
        assert_eq!((1..=4).map(secs).collect::<Vec<_>>(), [1, 2, 3, 3]);
        assert!(!n.is_enabled());
        assert!(format!("{n:?}").contains("receiver: None"));
    }

    #[tokio::test]
    async fn debug_and_logs_show_only_the_origin() {
        let dir = tempfile::tempdir().unwrap();
        let url = SecretString::from(format!("sqlite://{}/t.db?mode=rwc", dir.path().display()));
        let db = Db::connect(&url).await.unwrap();
        let n = Notifier::from_parts(
            db,
            Some((
                Url::parse("https://hooks.example/services/T0K3N?sig=abc").unwrap(),
                SecretString::from("whsec-value".to_string()),
            )),
            Arc::default(),
        );
        let debug = format!("{n:?}");
        assert!(debug.contains("https://hooks.example"), "{debug}");
        assert!(!debug.contains("T0K3N") && !debug.contains("abc") && !debug.contains("whsec"));
    }
}
