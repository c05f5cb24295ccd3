//! What an operator can do to a partner's customers: sync the list, consent all or one,
//! remove one (typed confirmation), and the customer access check. The work is the
//! customers core's (`crate::customers`), which audits it under the operator's name; these
//! handlers parse, call and say how it went.

use axum::http::StatusCode;

use super::actions::back_with;
use super::*;
use crate::customers::consent::{Pushed, RemoveError};
use crate::customers::sync::SyncError;
use crate::domain::CustomerStatus;
use crate::storage::customers::{self, CustomerRow};

/// Who the core records as doing it (the audit log's `ops:NAME`, as [`audit_action`]).
fn actor(user: &crate::storage::ops_users::OpsUser) -> String {
    format!("ops:{}", user.username)
}

/// One customer of a partner named by a path: ids that are not GUIDs are a 400; an unknown
/// partner, or a customer it does not have, a 404.
async fn existing_customer(
    state: &AppState,
    raw_tenant: &str,
    raw_customer: &str,
) -> PageResult<CustomerRow> {
    let tenant = existing(state, raw_tenant).await?.partner.tenant_id;
    let customer = TenantId::parse(raw_customer).map_err(|_| {
        bad_request(
            "A customer id is the customer's tenant id, a GUID like 7b1e0c3a-5d2f-4c8e-9a6b-00000000c001.",
        )
    })?;
    customers::get(&state.db, &tenant, &customer)
        .await
        .map_err(|e| unavailable(e).for_tenant(&tenant))?
        .ok_or_else(|| {
            super::super::message(
                StatusCode::NOT_FOUND,
                "No such customer",
                "This partner has no customer with this tenant id. Sync its customers, or check the address.",
            )
        })
}

pub(super) async fn sync(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    action: Action<Operator>,
) -> PageResult {
    let tenant = existing(&state, &raw).await?.partner.tenant_id;
    let (ok, text) = match state.customers.sync(&tenant, &actor(&action.user)).await {
        Ok(r) => (
            true,
            format!(
                "Synced: Partner Center lists {} customer(s); {} new, {} no longer listed.",
                r.listed, r.new, r.gone
            ),
        ),
        Err(SyncError::Storage(e)) => return Err(unavailable(e).for_tenant(&tenant)),
        Err(e) => (false, format!("Sync failed. {e}")),
    };
    back_with(&action.session, &tenant, ok, text).await
}

/// What one push did, for the person who asked.
fn pushed_text(name: &str, pushed: &Pushed) -> (bool, String) {
    match pushed {
        Pushed::Unchanged => (
            true,
            format!("{name} is consented with the configured grants already; nothing was sent."),
        ),
        Pushed::Done {
            status: CustomerStatus::Consented,
            ..
        } => (
            true,
            format!(
                "Consented: Partner Center consented the app in {name}, and Entra ID issued a token there."
            ),
        ),
        Pushed::Done { status, reason } => (
            false,
            format!(
                "{name} is {status}: {}",
                reason.as_deref().unwrap_or("see its reason below.")
            ),
        ),
        Pushed::Failed { reason, retry_at } => (
            false,
            format!(
                "The consent in {name} failed: {reason} samvault tries again at {}.",
                when(Some(*retry_at))
            ),
        ),
        Pushed::Postponed => (
            false,
            format!(
                "Partner Center is throttling: the consent in {name} is put off and sent again shortly."
            ),
        ),
    }
}

pub(super) async fn consent_one(
    State(state): State<AppState>,
    Path((raw, raw_customer)): Path<(String, String)>,
    action: Action<Operator>,
) -> PageResult {
    let row = existing_customer(&state, &raw, &raw_customer).await?;
    let tenant = row.partner_tenant_id.clone();
    if row.status == CustomerStatus::Gone {
        return Err(super::super::message(
            StatusCode::CONFLICT,
            "Not a customer any more",
            "Partner Center no longer lists this customer of the partner: there is nothing to consent. Sync the customers if that has changed.",
        ));
    }
    let pushed = state
        .customers
        .consent(&row, &actor(&action.user))
        .await
        .map_err(|e| unavailable(e).for_tenant(&tenant))?;
    let (ok, text) = pushed_text(&row.name, &pushed);
    back_with(&action.session, &tenant, ok, text).await
}

/// Consent all: every customer of the partner but the gone is due now (the removed too, as
/// asked by hand), then pushed, as `samvault customers consent --partner` does.
pub(super) async fn consent_all(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    action: Action<Operator>,
) -> PageResult {
    let tenant = existing(&state, &raw).await?.partner.tenant_id;
    customers::schedule_consent(&state.db, &tenant, None, now())
        .await
        .map_err(|e| unavailable(e).for_tenant(&tenant))?;
    let pushed = state
        .customers
        .push_due(&tenant, &actor(&action.user))
        .await
        .map_err(|e| unavailable(e).for_tenant(&tenant))?;
    let text = format!(
        "Consent all: {pushed} customer(s) pushed with the configured grants. Each one's status below says how it went."
    );
    back_with(&action.session, &tenant, true, text).await
}

/// The operator typed the customer's domain or name (any case, spaces around ignored).
fn confirmed(row: &CustomerRow, typed: &str) -> bool {
    let typed = typed.trim();
    let matches =
        |known: &str| !known.trim().is_empty() && known.trim().eq_ignore_ascii_case(typed);
    matches(&row.name) || row.domain.as_deref().is_some_and(matches)
}

pub(super) async fn remove(
    State(state): State<AppState>,
    Path((raw, raw_customer)): Path<(String, String)>,
    action: Action<Operator>,
) -> PageResult {
    let row = existing_customer(&state, &raw, &raw_customer).await?;
    // A click alone cannot remove the app from a customer: the operator types which one.
    if !confirmed(&row, action.form.one("confirm").unwrap_or("")) {
        return Err(bad_request(
            "The domain or name you typed does not match this customer's. Nothing was changed.",
        ));
    }
    let (tenant, customer) = (&row.partner_tenant_id, &row.customer_tenant_id);
    let (ok, text) = match state
        .customers
        .remove(tenant, customer, &actor(&action.user))
        .await
    {
        Ok(()) => (
            true,
            format!(
                "Removed: the app's consent in {} is deleted; no token is issued there until it is consented again.",
                row.name
            ),
        ),
        Err(RemoveError::NotFound { .. }) => return Err(not_found()),
        Err(RemoveError::Storage(e)) => return Err(unavailable(e).for_tenant(tenant)),
        Err(RemoveError::Failed(why)) => {
            (false, format!("Removal from {} failed. {why}", row.name))
        }
    };
    back_with(&action.session, tenant, ok, text).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, domain: Option<&str>) -> CustomerRow {
        let id = TenantId::parse("7b1e0c3a-5d2f-4c8e-9a6b-00000000c001").unwrap();
        CustomerRow {
            partner_tenant_id: id.clone(),
            customer_tenant_id: id.clone(),
            pc_customer_id: id.to_string(),
            name: name.into(),
            domain: domain.map(str::to_string),
            status: CustomerStatus::Consented,
            reason: None,
            grants_applied: None,
            first_seen_at: 0,
            last_seen_at: 0,
            status_changed_at: 0,
            last_token_at: None,
            consent_failures: 0,
            next_consent_at: None,
        }
    }

    #[test]
    fn removal_is_confirmed_by_the_domain_or_the_name() {
        let adatum = row("Adatum", Some("adatum.example"));
        for typed in ["adatum.example", " ADATUM.example ", "Adatum", "adatum"] {
            assert!(confirmed(&adatum, typed), "{typed:?}");
        }
        for typed in [
            "",
            " ",
            "adatum.exampl",
            "Adatum Corp",
            "7b1e0c3a-5d2f-4c8e-9a6b-00000000c001",
        ] {
            assert!(!confirmed(&adatum, typed), "{typed:?}");
        }
        let nameless = row(" ", None);
        assert!(
            !confirmed(&nameless, " "),
            "nothing to type is no confirmation"
        );
    }
}
