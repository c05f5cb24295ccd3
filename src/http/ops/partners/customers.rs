//! The customers section of a partner's page: what Partner Center lists for the partner, 50
//! at a time in tenant-id order (`?customers_after=` the last one shown), each with its
//! status, the reason behind it, the last sync that listed it, its last token and the grants
//! last applied there.

use super::*;
use crate::config::CustomerGrant;
use crate::domain::CustomerStatus;
use crate::storage::customers::{self, CustomerRow};

/// Customers per page of a partner's page.
const CUSTOMERS_PER_PAGE: i64 = 50;

/// The one parameter a partner's page takes: where its customer list resumes.
pub(super) fn customers_after(raw: Option<&str>) -> PageResult<Option<TenantId>> {
    let mut after = None;
    for (name, value) in url::form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
        if name != "customers_after" {
            continue;
        }
        let parsed = TenantId::parse(&value).map_err(|_| {
            bad_request(
                "This page link is damaged: customers_after must be a customer's tenant id.",
            )
        })?;
        if after.replace(parsed).is_some() {
            return Err(bad_request(
                "This page link is damaged: customers_after appears twice.",
            ));
        }
    }
    Ok(after)
}

/// One customer's line.
pub(super) struct CustomerLine {
    pub id: String,
    pub name: String,
    pub domain: String,
    pub status: &'static str,
    pub reason: String,
    pub last_sync: String,
    pub last_token: String,
    pub grants: String,
    /// Partner Center still lists it, so a consent can be pushed there.
    pub can_consent: bool,
    /// The app may still be consented there.
    pub can_remove: bool,
}

impl CustomerLine {
    fn of(row: CustomerRow, configured: &[CustomerGrant]) -> Self {
        let status = row.status;
        CustomerLine {
            id: row.customer_tenant_id.to_string(),
            domain: row.domain.unwrap_or_default(),
            name: row.name,
            status: status.as_str(),
            reason: row.reason.unwrap_or_default(),
            last_sync: when(Some(row.last_seen_at)),
            last_token: when(row.last_token_at),
            grants: row
                .grants_applied
                .map(|g| readable_grants(&g, configured))
                .unwrap_or_default(),
            can_consent: status != CustomerStatus::Gone,
            can_remove: !matches!(status, CustomerStatus::Gone | CustomerStatus::Removed),
        }
    }
}

/// Grants in their stored form (`application-id=Scope,Scope;...`) as a reader wants them:
/// a configured resource by its URL, any other by its application id.
fn readable_grants(stored: &str, configured: &[CustomerGrant]) -> String {
    stored
        .split(';')
        .filter_map(|grant| {
            let (app, scopes) = grant.trim().split_once('=')?;
            let resource = configured
                .iter()
                .find(|c| c.enterprise_application_id.eq_ignore_ascii_case(app))
                .map_or(app.to_string(), |c| c.resource.to_string());
            Some(format!("{resource}: {}", scopes.replace(',', ", ")))
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The customers section: one page of customers and where the next one starts.
pub(super) struct CustomerSection {
    pub lines: Vec<CustomerLine>,
    /// When Partner Center's list was last read, when next, and what went wrong last.
    pub last_sync: String,
    pub next_sync: String,
    pub sync_error: String,
    /// The address of the next customers, if there are more.
    pub more: Option<String>,
    /// This is not the first page (a link back to it is shown).
    pub resumed: bool,
}

impl CustomerSection {
    pub(super) async fn of(
        db: &crate::storage::Db,
        configured: &[CustomerGrant],
        partner: &TenantId,
        after: Option<&TenantId>,
    ) -> Result<Self, StorageError> {
        let (mut rows, sync) = tokio::try_join!(
            customers::list(db, partner, after, CUSTOMERS_PER_PAGE + 1),
            customers::sync_state(db, partner),
        )?;
        let more = rows.len() as i64 > CUSTOMERS_PER_PAGE;
        rows.truncate(CUSTOMERS_PER_PAGE as usize);
        let more = more.then(|| rows.last()).flatten().map(|last| {
            let last = &last.customer_tenant_id;
            format!("/ops/partners/{partner}?customers_after={last}#customers")
        });
        Ok(CustomerSection {
            lines: rows
                .into_iter()
                .map(|row| CustomerLine::of(row, configured))
                .collect(),
            last_sync: when(sync.as_ref().and_then(|s| s.last_sync_at)),
            next_sync: sync
                .as_ref()
                .map_or_else(|| "not scheduled".into(), |s| when(Some(s.next_sync_at))),
            sync_error: sync.and_then(|s| s.last_error).unwrap_or_default(),
            more,
            resumed: after.is_some(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_read_as_resource_and_scopes() {
        let graph = "00000003-0000-0000-c000-000000000000";
        let configured =
            crate::config::parse_customer_grants("https://graph.microsoft.com=Directory.Read.All")
                .unwrap();
        assert_eq!(
            readable_grants(
                &format!("{graph}=Directory.Read.All,User.Read.All"),
                &configured
            ),
            "https://graph.microsoft.com: Directory.Read.All, User.Read.All"
        );
        assert_eq!(readable_grants("a=B;c=D,E", &[]), "a: B; c: D, E");
    }

    #[test]
    fn the_cursor_is_one_tenant_id() {
        let id = "7b1e0c3a-5d2f-4c8e-9a6b-00000000c001";
        assert_eq!(
            customers_after(Some(&format!("customers_after={id}")))
                .ok()
                .flatten()
                .map(|t| t.to_string()),
            Some(id.to_string())
        );
        assert!(matches!(customers_after(None), Ok(None)));
        for bad in [
            "customers_after=x".to_string(),
            "customers_after=".to_string(),
            format!("customers_after={id}&customers_after={id}"),
        ] {
            assert!(customers_after(Some(&bad)).is_err(), "{bad}");
        }
    }
}
