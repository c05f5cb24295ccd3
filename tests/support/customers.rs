//! Customers of the demo partners, made ready for customer-tenant tokens without the
//! background customer work: recorded in samvault's database as a customer sync would, and
//! the CPV app consented there through the dev IdP's Partner Center stand-in.

use samvault::domain::TenantId;
use samvault::storage::customers::{self, ListedCustomer};
use serde_json::{Value, json};

use super::stack::{DEMO_CLIENT_ID, PARTNER_CENTER, Stack};

pub const ADATUM: &str = "7b1e0c3a-5d2f-4c8e-9a6b-00000000c001";
pub const NORTHWIND: &str = "7b1e0c3a-5d2f-4c8e-9a6b-00000000c002";
pub const TAILSPIN: &str = "7b1e0c3a-5d2f-4c8e-9a6b-00000000c003";
pub const LITWARE: &str = "7b1e0c3a-5d2f-4c8e-9a6b-00000000c004";
/// Microsoft Graph's application id, the resource the app is consented for in customers.
pub const GRAPH_APP_ID: &str = "00000003-0000-0000-c000-000000000000";

/// Records `ids` as `partner`'s customers (`unconsented`), as a customer sync would.
pub async fn seed(stack: &Stack, partner: &str, ids: &[&str]) {
    let listed: Vec<ListedCustomer> = ids
        .iter()
        .map(|id| ListedCustomer {
            customer_tenant_id: TenantId::parse(id).unwrap(),
            pc_customer_id: id.to_string(),
            name: format!("Customer {}", &id[id.len() - 4..]),
            domain: Some(format!("{}.example", &id[id.len() - 4..])),
        })
        .collect();
    let db = stack.db().await;
    let partner = TenantId::parse(partner).unwrap();
    let at = samvault::storage::now();
    customers::upsert_listed(&db, &partner, &listed, at, None)
        .await
        .unwrap();
}

/// The CPV app consented into `customers` for Graph `Directory.Read.All` through the dev
/// IdP's Partner Center, with the partner's own Partner Center token obtained from samvault
/// by `creds` (a client with `tokens:issue` for Partner Center).
pub async fn consent_in(
    stack: &Stack,
    creds: &(String, String),
    partner: &str,
    customers: &[&str],
) {
    let body = json!({ "resource": PARTNER_CENTER, "purpose": "consent the app" });
    let (status, pc) = stack.token(creds, partner, body).await;
    assert_eq!(status, 200, "{pc}");
    let bearer = pc["access_token"].as_str().unwrap();
    for customer in customers {
        let url = format!("{}/v1/customers/{customer}/applicationconsents", stack.idp);
        let consent = json!({
            "applicationId": DEMO_CLIENT_ID,
            "applicationGrants": [
                { "enterpriseApplicationId": GRAPH_APP_ID, "scope": "Directory.Read.All" }
            ],
        });
        let response = stack
            .http
            .post(url)
            .bearer_auth(bearer)
            .json(&consent)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201, "{customer}");
    }
}

/// `POST /api/v1/partners/{partner}/customers/{customer}/token` ready to send.
pub fn customer_token_request(
    stack: &Stack,
    creds: &(String, String),
    partner: &str,
    customer: &str,
    body: &Value,
) -> reqwest::RequestBuilder {
    stack
        .http
        .post(format!(
            "{}/api/v1/partners/{partner}/customers/{customer}/token",
            stack.sv()
        ))
        .basic_auth(&creds.0, Some(&creds.1))
        .json(body)
}
