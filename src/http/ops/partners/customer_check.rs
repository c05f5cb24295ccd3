//! The customer access check: the partner's grant redeemed once at each customer's
//! authority for the first configured customer resource, through the customer-token path
//! (which records what it learns in each customer's status, as the token API does). The page
//! shows what Entra ID answered — issued, not consented, no delegated access — never a token.

use super::actions::{explain, log_internal, outcome_label};
use super::*;
use crate::broker::IssuedToken;
use crate::customers::token::CustomerTokenError;
use crate::domain::{CustomerStatus, Resource};
use crate::idp::errors::customer_reason;
use crate::storage::customers::{self, CustomerRow};

/// Customers checked at most in one go (one redemption each, one after the other).
const CHECK_LIMIT: usize = 100;
/// Rows read to find them (gone and removed customers are skipped).
const CHECK_SCAN: i64 = 1000;

/// One customer's line of the check.
struct CheckLine {
    id: String,
    name: String,
    domain: String,
    outcome: &'static str,
    class: &'static str,
    code: String,
    detail: String,
    mfa: Option<bool>,
    expires: String,
}

impl CheckLine {
    fn of(row: &CustomerRow, result: &Result<IssuedToken, CustomerTokenError>) -> Self {
        let (outcome, class, code, detail) = match result {
            Ok(_) => ("issued", "ok", None, String::new()),
            Err(CustomerTokenError::ConsentRequired { code }) => {
                ("not consented", "warn", Some(*code), customer_reason(*code))
            }
            Err(CustomerTokenError::AccessDenied { code }) => (
                "no delegated access",
                "bad",
                Some(*code),
                customer_reason(*code),
            ),
            Err(CustomerTokenError::NotFound { status }) => (
                "customer not found",
                "bad",
                (*status == Some(CustomerStatus::Gone)).then_some(90002),
                "Not a customer of this partner any more: the token API refuses it.".into(),
            ),
            Err(CustomerTokenError::Partner(e)) => (outcome_label(e), "bad", None, explain(e)),
        };
        let token = result.as_ref().ok();
        CheckLine {
            id: row.customer_tenant_id.to_string(),
            name: row.name.clone(),
            domain: row.domain.clone().unwrap_or_default(),
            outcome,
            class,
            code: code.map(|c| format!("AADSTS{c}")).unwrap_or_default(),
            detail,
            mfa: token.map(|t| t.mfa),
            expires: token.map_or_else(String::new, |t| when(Some(t.expires_at))),
        }
    }
}

#[derive(Template, WebTemplate)]
#[template(path = "ops/customer_check.html")]
pub(super) struct CustomerCheckPage {
    chrome: Chrome,
    tenant_id: String,
    name: String,
    resource: String,
    lines: Vec<CheckLine>,
    /// Customers left out: gone or removed (refused without asking Entra ID).
    skipped: usize,
    /// More customers than one check takes.
    truncated: bool,
    /// The partner's own grant failed: the check stopped there.
    stopped: bool,
}

/// The customers a check redeems for: the partner's, in tenant-id order, but the gone and
/// removed; and how many of those there were.
async fn checkable(
    db: &crate::storage::Db,
    partner: &TenantId,
) -> PageResult<(Vec<CustomerRow>, usize, bool)> {
    let rows = customers::list(db, partner, None, CHECK_SCAN)
        .await
        .map_err(|e| unavailable(e).for_tenant(partner))?;
    let total = rows.len();
    let mut rows: Vec<CustomerRow> = rows
        .into_iter()
        .filter(|r| !matches!(r.status, CustomerStatus::Gone | CustomerStatus::Removed))
        .collect();
    let skipped = total - rows.len();
    let truncated = rows.len() > CHECK_LIMIT || total as i64 == CHECK_SCAN;
    rows.truncate(CHECK_LIMIT);
    Ok((rows, skipped, truncated))
}

/// Redeems for each customer in turn, as `actor` (named in the audit of the status changes
/// it finds); stops at a failure of the partner's own grant (every later one would fail the
/// same way).
async fn redeem_each(
    state: &AppState,
    (partner, resource): (&TenantId, &Resource),
    rows: &[CustomerRow],
    actor: &str,
) -> (Vec<CheckLine>, bool) {
    let mut lines = Vec::with_capacity(rows.len());
    for row in rows {
        let customer = &row.customer_tenant_id;
        // A live check: whatever token is cached for this customer is dropped first.
        state.broker.forget_customer(partner, customer);
        let result = state
            .customer_tokens
            .access_token(partner, customer, resource, actor)
            .await;
        lines.push(CheckLine::of(row, &result));
        if let Err(CustomerTokenError::Partner(e)) = &result {
            log_internal(partner, e);
            return (lines, true);
        }
    }
    (lines, false)
}

pub(super) async fn check(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    action: Action<Operator>,
) -> PageResult<CustomerCheckPage> {
    let listed = existing(&state, &raw).await?;
    let tenant = listed.partner.tenant_id;
    let resource = state.config.customers.first_resource().clone();
    let (rows, skipped, truncated) = checkable(&state.db, &tenant).await?;
    let actor = format!("ops:{}", action.user.username);
    let (lines, stopped) = redeem_each(&state, (&tenant, &resource), &rows, &actor).await;
    let audited: Vec<_> = lines
        .iter()
        .map(|l| serde_json::json!({ "customer_tenant_id": l.id, "outcome": l.outcome, "code": l.code }))
        .collect();
    let detail = serde_json::json!({ "resource": resource.as_str(), "customers": audited });
    audit_action(
        &state,
        &action.user,
        "ops.customer.check",
        Some(tenant.as_str()),
        detail,
    )
    .await?;
    Ok(CustomerCheckPage {
        chrome: action.chrome(Section::Partners),
        tenant_id: tenant.to_string(),
        name: listed.partner.display_name,
        resource: resource.to_string(),
        lines,
        skipped,
        truncated,
        stopped,
    })
}
