//! The client side of Partner Center (REFERENCE §6): a partner's customers, paged with
//! `MS-ContinuationToken`, and the Control Panel Vendor API's `applicationconsents`, with the
//! partner's own App+User access token for Partner Center.
//!
//! Every call takes its turn in the process's [`Budget`] (50 a second per application id,
//! shared by replicas on PostgreSQL). A 429 pauses the budget for its `Retry-After` and the
//! call is sent again: throttling is never a failure of the work that asked (it is counted
//! as `throttled` in `samvault_partner_center_requests_total`). Failures become a
//! [`PcError`] whose [`PcError::explain`] says what Partner Center answered, what it means
//! and what to do.

pub mod budget;

use std::sync::Arc;
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::json;
use url::Url;

use crate::config::CustomerGrant;
use crate::metrics::Metrics;
pub use budget::Budget;

/// Customers per page asked of Partner Center.
const PAGE_SIZE: usize = 500;
/// How long one call keeps retrying throttled answers before it gives up (never a
/// failure: the work is put off).
const THROTTLED_PATIENCE: Duration = Duration::from_secs(300);
/// `Retry-After` when a 429 names none.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// What a call does, as the metrics name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    ListCustomers,
    ConsentCreate,
    ConsentDelete,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ListCustomers => "list_customers",
            Self::ConsentCreate => "consent_create",
            Self::ConsentDelete => "consent_delete",
        }
    }
}

/// Why a Partner Center call did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PcError {
    /// Partner Center answered with an error (`{"code", "description"}` when it sent one).
    #[error("Partner Center answered HTTP {status}")]
    Answered {
        status: u16,
        code: Option<String>,
        description: Option<String>,
        retry_after: Option<Duration>,
    },
    /// No answer: connection refused, timeout, a body that is not JSON.
    #[error("Partner Center unreachable: {0}")]
    Unreachable(String),
    /// Still throttled after [`THROTTLED_PATIENCE`]: put the work off, it is not failed.
    #[error("Partner Center keeps throttling")]
    Throttled { retry_after: Duration },
}

impl PcError {
    /// The HTTP status Partner Center answered, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Answered { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Partner Center's error code (`"10001"`, `"2032"`, ...), if it sent one.
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Answered { code, .. } => code.as_deref(),
            _ => None,
        }
    }

    /// Whether this is an existing consent in the way (409 on create).
    pub fn is_conflict(&self) -> bool {
        self.status() == Some(409)
    }

    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }

    /// What Partner Center answered, what it means and what to do: a customer's `reason`.
    pub fn explain(&self) -> String {
        let (answered, meaning) = match self {
            Self::Answered {
                status,
                code,
                description,
                ..
            } => {
                let code = code
                    .as_deref()
                    .map(|c| format!(" code {c}"))
                    .unwrap_or_default();
                let description = description
                    .as_deref()
                    .map(|d| format!(": {d}"))
                    .unwrap_or_default();
                (
                    format!("Partner Center answered HTTP {status}{code}{description}."),
                    meaning(*status, self.code()),
                )
            }
            Self::Unreachable(why) => (
                format!("Partner Center could not be reached ({why})."),
                "samvault retries automatically with backoff; nothing to do unless it lasts (check SAMVAULT_PARTNER_CENTER_URL and the network).",
            ),
            Self::Throttled { .. } => (
                "Partner Center kept throttling (429).".to_string(),
                "samvault tries again later; nothing to do.",
            ),
        };
        format!("{answered} {meaning}")
    }
}

/// What an error answer means and what to do (Partner Center REST error codes).
fn meaning(status: u16, code: Option<&str>) -> &'static str {
    match (status, code) {
        (401, Some("10001")) => {
            "The partner user's token lacks MFA, which Partner Center requires: an admin of the partner must consent again, signing in with MFA. samvault retries with backoff meanwhile."
        }
        (401, _) => {
            "Partner Center refused the partner's access token: check the partner's status in samvault (it may need to consent again). samvault retries with backoff."
        }
        (403, _) => {
            "The partner user who consented may not do this in Partner Center (consenting an app into customer tenants takes an Admin Agent or the partner's Global Admin): an Admin Agent of the partner must consent again. samvault retries with backoff."
        }
        (404, _) => {
            "Partner Center does not know this customer (any more): the next sync marks it gone. Nothing to do."
        }
        (400, _) => {
            "Partner Center refused the request as invalid: check SAMVAULT_CUSTOMER_GRANTS (resources and scopes) and the CPV app's registration. samvault retries with backoff."
        }
        (409, _) => {
            "A consent of the app already exists there; samvault replaces it (delete, then create)."
        }
        (500..=599, _) => {
            "Partner Center is unavailable for now. samvault retries automatically with backoff; nothing to do unless it lasts."
        }
        _ => {
            "An answer samvault does not expect: samvault retries with backoff; if it persists, check Partner Center's status."
        }
    }
}

/// A customer as Partner Center lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PcCustomer {
    pub id: String,
    pub tenant_id: String,
    pub name: String,
    pub domain: Option<String>,
}

/// One page of a partner's customers, and the continuation token of the next one.
#[derive(Clone, Debug)]
pub struct CustomersPage {
    pub customers: Vec<PcCustomer>,
    pub next: Option<String>,
}

/// The partner's App+User access token for Partner Center.
pub type PcToken = SecretString;

#[derive(Clone)]
pub struct PartnerCenter {
    inner: Arc<Inner>,
}

struct Inner {
    base: Url,
    app_id: String,
    http: reqwest::Client,
    budget: Budget,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for PartnerCenter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartnerCenter")
            .field("base", &self.inner.base.as_str())
            .finish_non_exhaustive()
    }
}

/// Partner Center's collection of customers, as far as samvault reads it.
#[derive(Deserialize)]
struct Collection {
    #[serde(default)]
    items: Vec<Item>,
    #[serde(default)]
    links: Option<Links>,
}

#[derive(Deserialize)]
struct Item {
    id: String,
    #[serde(rename = "companyProfile")]
    company_profile: Option<CompanyProfile>,
}

#[derive(Deserialize)]
struct CompanyProfile {
    #[serde(rename = "tenantId")]
    tenant_id: Option<String>,
    domain: Option<String>,
    #[serde(rename = "companyName")]
    company_name: Option<String>,
}

#[derive(Deserialize)]
struct Links {
    next: Option<Link>,
}

#[derive(Deserialize)]
struct Link {
    #[serde(default)]
    headers: Vec<Header>,
}

#[derive(Deserialize)]
struct Header {
    key: String,
    value: String,
}

/// Partner Center's error body.
#[derive(Deserialize)]
struct ErrorBody {
    code: Option<serde_json::Value>,
    description: Option<String>,
}

impl PartnerCenter {
    pub fn new(
        base: &Url,
        app_id: &str,
        extra_roots: Vec<reqwest::Certificate>,
        budget: Budget,
        metrics: Arc<Metrics>,
    ) -> Result<Self, crate::config::ConfigError> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .tls_certs_merge(extra_roots)
            .user_agent(concat!("samvault/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| crate::config::ConfigError(format!("HTTP client: {e}")))?;
        let mut base = base.clone();
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        Ok(Self {
            inner: Arc::new(Inner {
                base,
                app_id: app_id.to_ascii_lowercase(),
                http,
                budget,
                metrics,
            }),
        })
    }

    /// The CPV app's id: what its consents are named by.
    pub fn app_id(&self) -> &str {
        &self.inner.app_id
    }

    fn url(&self, path: &str) -> Url {
        self.inner
            .base
            .join(path)
            .expect("relative Partner Center path")
    }

    /// One page of the partner's customers: the first (`continuation` None) or the one a
    /// previous page's continuation token names.
    pub async fn list_page(
        &self,
        token: &PcToken,
        continuation: Option<&str>,
    ) -> Result<CustomersPage, PcError> {
        let body = self
            .send(Operation::ListCustomers, token, |http| {
                let mut url = self.url("v1/customers");
                url.query_pairs_mut()
                    .append_pair("size", &PAGE_SIZE.to_string());
                if continuation.is_some() {
                    url.query_pairs_mut().append_pair("seekOperation", "Next");
                }
                let request = http.get(url);
                match continuation {
                    Some(c) => request.header("MS-ContinuationToken", c),
                    None => request,
                }
            })
            .await?;
        let collection: Collection = serde_json::from_slice(&body).map_err(|_| {
            PcError::Unreachable("the customer list is not Partner Center's JSON".into())
        })?;
        Ok(page(collection))
    }

    /// Consents the CPV app into the customer's tenant with `grants` (201). An existing
    /// consent is a 409 [`PcError`] (see [`PcError::is_conflict`]).
    pub async fn create_consent(
        &self,
        token: &PcToken,
        customer_id: &str,
        grants: &[CustomerGrant],
    ) -> Result<(), PcError> {
        let grants: Vec<serde_json::Value> = grants
            .iter()
            .map(|g| json!({ "enterpriseApplicationId": g.enterprise_application_id, "scope": g.scopes.join(",") }))
            .collect();
        let body = json!({ "applicationId": self.inner.app_id, "applicationGrants": grants });
        let path = format!("v1/customers/{}/applicationconsents", segment(customer_id));
        self.send(Operation::ConsentCreate, token, |http| {
            http.post(self.url(&path)).json(&body)
        })
        .await
        .map(drop)
    }

    /// Removes the CPV app's consent from the customer's tenant (204; 404 when none).
    pub async fn delete_consent(&self, token: &PcToken, customer_id: &str) -> Result<(), PcError> {
        let path = format!(
            "v1/customers/{}/applicationconsents/{}",
            segment(customer_id),
            self.inner.app_id
        );
        self.send(Operation::ConsentDelete, token, |http| {
            http.delete(self.url(&path))
        })
        .await
        .map(drop)
    }

    /// Sends one call in its budget window, again after each 429 (for up to
    /// [`THROTTLED_PATIENCE`]); the body of a success.
    async fn send(
        &self,
        operation: Operation,
        token: &PcToken,
        request: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<Vec<u8>, PcError> {
        let started = Instant::now();
        loop {
            self.inner.budget.acquire().await;
            let sent = request(&self.inner.http)
                .bearer_auth(token.expose_secret())
                .header("MS-CorrelationId", uuid::Uuid::new_v4().to_string())
                .header("Accept", "application/json")
                .send()
                .await;
            let outcome = answer(sent).await;
            let label = match &outcome {
                Ok(_) => "success",
                Err(Answer::Throttled(_)) => "throttled",
                Err(Answer::Failed(PcError::Answered { status, .. })) if *status < 500 => "refused",
                Err(Answer::Failed(_)) => "unavailable",
            };
            self.inner
                .metrics
                .record_partner_center(operation.as_str(), label);
            match outcome {
                Ok(body) => return Ok(body),
                Err(Answer::Failed(e)) => return Err(e),
                Err(Answer::Throttled(retry_after)) => {
                    tracing::debug!(
                        operation = operation.as_str(),
                        retry_after_ms = retry_after.as_millis() as u64,
                        "Partner Center throttled a call; sending it again"
                    );
                    self.inner.budget.pause(retry_after);
                    if started.elapsed() > THROTTLED_PATIENCE {
                        return Err(PcError::Throttled { retry_after });
                    }
                }
            }
        }
    }
}

/// A path segment: Partner Center's ids are GUIDs; anything else is escaped.
fn segment(id: &str) -> String {
    url::form_urlencoded::byte_serialize(id.as_bytes()).collect()
}

enum Answer {
    Throttled(Duration),
    Failed(PcError),
}

async fn answer(sent: Result<reqwest::Response, reqwest::Error>) -> Result<Vec<u8>, Answer> {
    let response = sent.map_err(|e| Answer::Failed(PcError::Unreachable(transport(&e))))?;
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let body = response
        .bytes()
        .await
        .map_err(|e| Answer::Failed(PcError::Unreachable(transport(&e))))?;
    if (200..300).contains(&status) {
        return Ok(body.to_vec());
    }
    if status == 429 {
        return Err(Answer::Throttled(
            retry_after.unwrap_or(DEFAULT_RETRY_AFTER),
        ));
    }
    let parsed: Option<ErrorBody> = serde_json::from_slice(&body).ok();
    let (code, description) = parsed.map_or((None, None), |b| {
        let code = b.code.map(|c| match c {
            serde_json::Value::String(s) => s,
            other => other.to_string(),
        });
        (code, b.description)
    });
    Err(Answer::Failed(PcError::Answered {
        status,
        code: code.map(|c| c.chars().take(40).collect()),
        description: description.map(|d| d.chars().take(300).collect()),
        retry_after,
    }))
}

/// A transport error in words that never include a URL or a body.
fn transport(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "connection failed".into()
    } else {
        "request failed".into()
    }
}

fn page(collection: Collection) -> CustomersPage {
    let customers = collection
        .items
        .into_iter()
        .filter_map(|item| {
            let profile = item.company_profile?;
            Some(PcCustomer {
                tenant_id: profile.tenant_id.unwrap_or_else(|| item.id.clone()),
                name: profile.company_name.unwrap_or_default(),
                domain: profile.domain,
                id: item.id,
            })
        })
        .collect();
    let next = collection
        .links
        .and_then(|l| l.next)
        .and_then(|next| {
            next.headers
                .into_iter()
                .find(|h| h.key.eq_ignore_ascii_case("MS-ContinuationToken"))
        })
        .map(|h| h.value);
    CustomersPage { customers, next }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_read_partner_centers_collection() {
        let body = json!({
            "totalCount": 1,
            "items": [{ "id": "c1", "companyProfile": { "tenantId": "t1", "domain": "a.example", "companyName": "A" } }],
            "links": { "next": { "uri": "/v1/customers?size=500&seekOperation=Next", "method": "GET",
                "headers": [{ "key": "MS-ContinuationToken", "value": "tok" }] } },
        });
        let page = page(serde_json::from_value(body).unwrap());
        assert_eq!(page.customers[0].tenant_id, "t1");
        assert_eq!(page.customers[0].name, "A");
        assert_eq!(page.next.as_deref(), Some("tok"));
        let last = page_of(json!({ "items": [], "links": {} }));
        assert!(last.next.is_none() && last.customers.is_empty());
    }

    fn page_of(v: serde_json::Value) -> CustomersPage {
        page(serde_json::from_value(v).unwrap())
    }

    #[test]
    fn errors_explain_themselves() {
        let mfa = PcError::Answered {
            status: 401,
            code: Some("10001".into()),
            description: Some("MFA required".into()),
            retry_after: None,
        };
        let text = mfa.explain();
        assert!(
            text.starts_with("Partner Center answered HTTP 401 code 10001: MFA required."),
            "{text}"
        );
        assert!(text.contains("consent again"), "{text}");
        let down = PcError::Answered {
            status: 503,
            code: None,
            description: None,
            retry_after: None,
        };
        assert!(down.explain().contains("retries automatically"));
        assert!(
            PcError::Unreachable("timed out".into())
                .explain()
                .contains("could not be reached")
        );
    }
}
