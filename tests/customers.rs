//! Customers of the partners (issue 16, SPEC §6): storage on both databases, then discovery
//! and CPV consent against the real dev IdP and samvault processes.

mod support;

use samvault::domain::{CustomerStatus, TenantId};
use samvault::storage::Db;
use samvault::storage::customers::{self, ListedCustomer};
use samvault::storage::partners::{self, NewConsent, StoredGrant, grant_context};
use support::*;

const T0: i64 = 1_700_000_000;

/// A partner row to hang customers on (customers reference their partner).
async fn partner(db: &Db) -> TenantId {
    let tenant = new_tenant();
    let vault = local_vault();
    let consent = NewConsent {
        tenant_id: tenant.clone(),
        display_name: "Contoso".into(),
        domain: Some("contoso.example".into()),
        upn: "jane@contoso.example".into(),
        oid: None,
        user_name: None,
        mfa: true,
        amr: vec!["pwd".into(), "mfa".into()],
        scopes: "https://api.partnercenter.microsoft.com/user_impersonation".into(),
        invitation_id: None,
    };
    let grant = StoredGrant {
        version: 1,
        sealed: vault
            .vault
            .seal(b"rt", &grant_context(&tenant, 1))
            .await
            .unwrap(),
    };
    partners::record_consent(db, &consent, &grant, T0, T0 + 86_400)
        .await
        .unwrap();
    tenant
}

fn listed(id: &TenantId, name: &str) -> ListedCustomer {
    ListedCustomer {
        customer_tenant_id: id.clone(),
        pc_customer_id: id.as_str().to_string(),
        name: name.into(),
        domain: Some(format!("{}.example", name.to_lowercase())),
    }
}

both_backends!(storage_round_trip, |url| async move {
    let db = open(&url).await;
    let p = partner(&db).await;
    let (a, b, c) = (new_tenant(), new_tenant(), new_tenant());
    let changes = customers::upsert_listed(
        &db,
        &p,
        &[listed(&a, "Adatum"), listed(&b, "Northwind")],
        T0,
        Some(T0),
    )
    .await
    .unwrap();
    assert_eq!(changes.len(), 2, "two new customers");
    assert!(changes.iter().all(|c| c.from.is_none()));

    let row = customers::get(&db, &p, &a).await.unwrap().unwrap();
    assert_eq!(row.status, CustomerStatus::Unconsented);
    assert_eq!(row.name, "Adatum");
    assert_eq!(row.domain.as_deref(), Some("adatum.example"));
    assert_eq!((row.first_seen_at, row.last_seen_at), (T0, T0));
    assert_eq!(row.next_consent_at, Some(T0));
    assert!(
        customers::get(&db, &new_tenant(), &a)
            .await
            .unwrap()
            .is_none()
    );

    // The next sync lists A (renamed) and C; B vanished.
    let changes = customers::upsert_listed(
        &db,
        &p,
        &[listed(&a, "Adatum2"), listed(&c, "Tailspin")],
        T0 + 10,
        None,
    )
    .await
    .unwrap();
    assert_eq!(changes.len(), 1, "only C is new: {changes:?}");
    let gone = customers::mark_gone(&db, &p, T0 + 10, "not listed")
        .await
        .unwrap();
    assert_eq!(gone.len(), 1);
    assert_eq!(gone[0].customer_tenant_id, b);
    assert_eq!(gone[0].from, Some(CustomerStatus::Unconsented));
    let row = customers::get(&db, &p, &a).await.unwrap().unwrap();
    assert_eq!(
        (row.name.as_str(), row.first_seen_at, row.last_seen_at),
        ("Adatum2", T0, T0 + 10)
    );
    let row = customers::get(&db, &p, &c).await.unwrap().unwrap();
    assert_eq!(row.next_consent_at, None, "no automatic consent asked");
    let row = customers::get(&db, &p, &b).await.unwrap().unwrap();
    assert_eq!(
        (row.status, row.status_changed_at),
        (CustomerStatus::Gone, T0 + 10)
    );
    assert!(
        customers::mark_gone(&db, &p, T0 + 10, "x")
            .await
            .unwrap()
            .is_empty()
    );

    // Listed again: unconsented again.
    let back =
        customers::upsert_listed(&db, &p, &[listed(&b, "Northwind")], T0 + 20, Some(T0 + 20))
            .await
            .unwrap();
    assert_eq!(back[0].from, Some(CustomerStatus::Gone));
    let row = customers::get(&db, &p, &b).await.unwrap().unwrap();
    assert_eq!(
        (row.status, row.next_consent_at),
        (CustomerStatus::Unconsented, Some(T0 + 20))
    );

    // set_status reports a change of status only.
    let prev = customers::set_status(
        &db,
        &p,
        &a,
        CustomerStatus::AccessDenied,
        Some("50020"),
        T0 + 30,
    )
    .await
    .unwrap();
    assert_eq!(prev, Some(CustomerStatus::Unconsented));
    let same = customers::set_status(
        &db,
        &p,
        &a,
        CustomerStatus::AccessDenied,
        Some("again"),
        T0 + 40,
    )
    .await
    .unwrap();
    assert_eq!(same, None);
    let row = customers::get(&db, &p, &a).await.unwrap().unwrap();
    assert_eq!(
        (row.reason.as_deref(), row.status_changed_at),
        (Some("again"), T0 + 30)
    );
    let unknown = customers::set_status(&db, &p, &new_tenant(), CustomerStatus::Gone, None, T0)
        .await
        .unwrap();
    assert_eq!(unknown, None);

    customers::touch_token(&db, &p, &c, T0 + 50).await.unwrap();
    let row = customers::get(&db, &p, &c).await.unwrap().unwrap();
    assert_eq!(row.last_token_at, Some(T0 + 50));

    // Keyset pages in tenant-id order.
    let mut ids = vec![a.clone(), b.clone(), c.clone()];
    ids.sort_by(|x, y| x.as_str().cmp(y.as_str()));
    let first = customers::list(&db, &p, None, 2).await.unwrap();
    assert_eq!(
        first
            .iter()
            .map(|r| r.customer_tenant_id.clone())
            .collect::<Vec<_>>(),
        ids[..2]
    );
    let rest = customers::list(&db, &p, Some(&first[1].customer_tenant_id), 2)
        .await
        .unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].customer_tenant_id, ids[2]);

    let counts = customers::counts_by_status(&db).await.unwrap();
    assert_eq!(
        counts,
        [
            (CustomerStatus::Unconsented, 2),
            (CustomerStatus::AccessDenied, 1)
        ]
    );
});
