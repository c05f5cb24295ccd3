//! Customer tenants of the partners, as they are now: each a tenant of its own with a
//! delegated-admin relationship to one partner, a place in that partner's Partner Center
//! customer list, and the CPV apps consented into it through Partner Center
//! (`applicationconsents`). Part of `grants::SimState`, under its lock.
//!
//! The Partner Center customer id is the customer's tenant id, as it normally is
//! (Microsoft: "ID of the customer generated in Partner Center"; in practice the tenant id).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;
use time::OffsetDateTime;

use super::clock::rfc3339;
use super::directory::{CustomerSeed, Directory};

#[derive(Debug, Clone)]
pub struct Customer {
    pub id: String,
    pub name: String,
    pub domain: String,
    pub partner_tenant_id: String,
    /// The partner holds delegated admin rights there; without them redemptions at the
    /// customer's authority answer AADSTS50020.
    pub relationship_active: bool,
    /// In the partner's Partner Center customer list (`GET /v1/customers`).
    pub listed: bool,
    /// Client id → the app's consent in this tenant.
    pub consents: BTreeMap<String, AppConsent>,
}

/// An `applicationconsents` entry: the CPV app's service principal in the customer tenant
/// with delegated grants per resource.
#[derive(Debug, Clone)]
pub struct AppConsent {
    pub display_name: String,
    pub grants: Vec<AppGrant>,
    pub created_at: OffsetDateTime,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppGrant {
    /// The resource's application id (Graph `00000003-0000-0000-c000-000000000000`, ...).
    pub enterprise_application_id: String,
    /// Comma-separated, exactly as Partner Center received it.
    pub scope: String,
}

impl AppGrant {
    /// The permissions of `scope` ("A,B" or "A, B").
    pub fn scopes(&self) -> Vec<String> {
        self.scope
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    }
}

impl Customer {
    fn from_seed(seed: &CustomerSeed) -> Customer {
        Customer {
            id: seed.id.clone(),
            name: seed.name.clone(),
            domain: seed.domain.clone(),
            partner_tenant_id: seed.partner_tenant_id.clone(),
            relationship_active: seed.relationship_active,
            listed: true,
            consents: BTreeMap::new(),
        }
    }

    /// The permissions `client_id` holds on the resource whose app id is
    /// `resource_app_id`, or None without consent. `.default` (or no permission) means
    /// everything granted, as for a partner's own consent.
    pub fn consented(
        &self,
        client_id: &str,
        resource_app_id: &str,
        perms: &[String],
    ) -> Option<Vec<String>> {
        let grant = self.consents.get(client_id)?.grants.iter().find(|g| {
            g.enterprise_application_id
                .eq_ignore_ascii_case(resource_app_id)
        })?;
        let granted = grant.scopes();
        if granted.is_empty() {
            return None;
        }
        if perms.is_empty() || perms.iter().any(|p| p == ".default") {
            return Some(granted);
        }
        perms
            .iter()
            .all(|p| granted.iter().any(|g| g.eq_ignore_ascii_case(p)))
            .then(|| perms.to_vec())
    }
}

/// Why a customer could not be added.
#[derive(Debug, PartialEq, Eq)]
pub enum AddError {
    UnknownPartner,
    /// The id is taken by a partner tenant or another customer.
    Duplicate,
}

#[derive(Debug, Default)]
pub struct Customers {
    by_id: HashMap<String, Customer>,
    by_domain: HashMap<String, String>,
    /// Partner tenant id → its listed customers, in id order (the order pages follow).
    lists: HashMap<String, BTreeSet<String>>,
}

impl Customers {
    /// The directory's customers as a fresh simulator has them (the directory refuses
    /// repeated ids and domains).
    pub fn from_directory(dir: &Directory) -> Customers {
        let mut customers = Customers::default();
        for seed in dir.customer_seeds() {
            let _ = customers.insert(Customer::from_seed(seed));
        }
        customers
    }

    /// Adds a customer tenant to its partner's list.
    pub fn add(&mut self, dir: &Directory, seed: &CustomerSeed) -> Result<&Customer, AddError> {
        if dir.tenant(&seed.partner_tenant_id).is_none() {
            return Err(AddError::UnknownPartner);
        }
        if dir.tenant(&seed.id).is_some() || dir.tenant(&seed.domain).is_some() {
            return Err(AddError::Duplicate);
        }
        self.insert(Customer::from_seed(seed))
    }

    fn insert(&mut self, customer: Customer) -> Result<&Customer, AddError> {
        if self.by_id.contains_key(&customer.id) || self.by_domain.contains_key(&customer.domain) {
            return Err(AddError::Duplicate);
        }
        let id = customer.id.clone();
        self.by_domain.insert(customer.domain.clone(), id.clone());
        self.lists
            .entry(customer.partner_tenant_id.clone())
            .or_default()
            .insert(id.clone());
        Ok(self.by_id.entry(id).or_insert(customer))
    }

    /// A customer tenant by id (case-insensitive) or domain, as Entra accepts both in paths.
    pub fn get(&self, id_or_domain: &str) -> Option<&Customer> {
        let key = id_or_domain.to_ascii_lowercase();
        self.by_id
            .get(&key)
            .or_else(|| self.by_id.get(self.by_domain.get(&key)?))
    }

    pub fn get_mut(&mut self, id: &str) -> Option<&mut Customer> {
        self.by_id.get_mut(&id.to_ascii_lowercase())
    }

    /// `partner`'s listed customer `id`: the only ones its Partner Center calls may name.
    pub fn listed_of(&mut self, partner: &str, id: &str) -> Option<&mut Customer> {
        self.get_mut(id)
            .filter(|c| c.listed && c.partner_tenant_id == partner)
    }

    /// Takes the customer off its partner's Partner Center list (it is no longer a customer
    /// there); the tenant, its relationship and its consents stay as they are.
    pub fn unlist(&mut self, id: &str) -> bool {
        let Some(customer) = self.by_id.get_mut(&id.to_ascii_lowercase()) else {
            return false;
        };
        customer.listed = false;
        if let Some(list) = self.lists.get_mut(&customer.partner_tenant_id) {
            list.remove(&customer.id);
        }
        true
    }

    /// Up to `size` of `partner`'s listed customers after the id `after`, and whether more
    /// follow.
    pub fn page(&self, partner: &str, after: Option<&str>, size: usize) -> (Vec<&Customer>, bool) {
        let Some(list) = self.lists.get(partner) else {
            return (Vec::new(), false);
        };
        let from = match after {
            Some(after) => std::ops::Bound::Excluded(after.to_string()),
            None => std::ops::Bound::Unbounded,
        };
        let mut ids = list.range((from, std::ops::Bound::Unbounded));
        let page: Vec<&Customer> = ids
            .by_ref()
            .take(size)
            .filter_map(|id| self.by_id.get(id))
            .collect();
        (page, ids.next().is_some())
    }

    /// Removes every app's consent from a customer tenant; how many there were.
    pub fn remove_consents(&mut self, id: &str) -> usize {
        self.get_mut(id).map_or(0, |c| {
            let n = c.consents.len();
            c.consents.clear();
            n
        })
    }

    /// Every customer, or `partner`'s, in id order.
    pub fn views(&self, partner: Option<&str>) -> Vec<CustomerView> {
        let mut all: Vec<&Customer> = self
            .by_id
            .values()
            .filter(|c| partner.is_none_or(|p| c.partner_tenant_id == p))
            .collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all.into_iter().map(CustomerView::of).collect()
    }
}

/// `/_sim/customers`: a customer with its relationship and what was consented there.
#[derive(Debug, Serialize)]
pub struct CustomerView {
    pub id: String,
    pub name: String,
    pub domain: String,
    pub partner_tenant_id: String,
    /// `active` or `ended`.
    pub relationship: &'static str,
    pub listed: bool,
    pub consents: Vec<ConsentView>,
}

#[derive(Debug, Serialize)]
pub struct ConsentView {
    pub application_id: String,
    pub display_name: String,
    pub grants: Vec<GrantView>,
    pub created_at: String,
}

#[derive(Debug, Serialize)]
pub struct GrantView {
    pub enterprise_application_id: String,
    /// As pushed.
    pub scope: String,
    /// `scope` split into permissions.
    pub scopes: Vec<String>,
}

impl CustomerView {
    pub fn of(c: &Customer) -> CustomerView {
        CustomerView {
            id: c.id.clone(),
            name: c.name.clone(),
            domain: c.domain.clone(),
            partner_tenant_id: c.partner_tenant_id.clone(),
            relationship: if c.relationship_active {
                "active"
            } else {
                "ended"
            },
            listed: c.listed,
            consents: c
                .consents
                .iter()
                .map(|(app, consent)| ConsentView {
                    application_id: app.clone(),
                    display_name: consent.display_name.clone(),
                    grants: consent
                        .grants
                        .iter()
                        .map(|g| GrantView {
                            enterprise_application_id: g.enterprise_application_id.clone(),
                            scope: g.scope.clone(),
                            scopes: g.scopes(),
                        })
                        .collect(),
                    created_at: rfc3339(consent.created_at),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ADATUM, CONTOSO, LITWARE, NORTHWIND, TAILSPIN, WINGTIP};

    fn demo() -> (Directory, Customers) {
        let dir = Directory::demo();
        let customers = Customers::from_directory(&dir);
        (dir, customers)
    }

    #[test]
    fn demo_customers_follow_the_spec() {
        let (_, customers) = demo();
        let ids = |p: &str| -> Vec<String> {
            let (page, more) = customers.page(p, None, 10);
            assert!(!more);
            page.iter().map(|c| c.id.clone()).collect()
        };
        assert_eq!(ids(CONTOSO), [ADATUM, NORTHWIND, TAILSPIN]);
        assert_eq!(ids(WINGTIP), [LITWARE]);
        assert!(!customers.get(TAILSPIN).unwrap().relationship_active);
        assert_eq!(customers.get("northwind.example").unwrap().id, NORTHWIND);
    }

    #[test]
    fn pages_follow_ids_and_survive_removals() {
        let (_, mut customers) = demo();
        let (first, more) = customers.page(CONTOSO, None, 2);
        assert!(more);
        assert_eq!(first.len(), 2);
        let last = first[1].id.clone();
        assert!(customers.unlist(NORTHWIND));
        let (rest, more) = customers.page(CONTOSO, Some(&last), 2);
        assert_eq!(
            rest.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
            [TAILSPIN]
        );
        assert!(!more);
        assert!(customers.listed_of(CONTOSO, NORTHWIND).is_none());
        assert!(
            customers.listed_of(WINGTIP, ADATUM).is_none(),
            "another partner's"
        );
    }

    #[test]
    fn consent_is_per_app_and_resource() {
        let (_, mut customers) = demo();
        let graph = "00000003-0000-0000-c000-000000000000";
        customers.get_mut(ADATUM).unwrap().consents.insert(
            "app".into(),
            AppConsent {
                display_name: "CPV".into(),
                grants: vec![AppGrant {
                    enterprise_application_id: graph.to_uppercase(),
                    scope: "Directory.Read.All, User.Read.All".into(),
                }],
                created_at: OffsetDateTime::UNIX_EPOCH,
            },
        );
        let adatum = customers.get(ADATUM).unwrap();
        let all = adatum
            .consented("app", graph, &[".default".into()])
            .unwrap();
        assert_eq!(all, ["Directory.Read.All", "User.Read.All"]);
        assert!(
            adatum
                .consented("app", graph, &["Mail.Read".into()])
                .is_none()
        );
        assert!(adatum.consented("other", graph, &[]).is_none());
        let arm = "797f4846-ba00-4fd7-ba43-dac1f8f63013";
        assert!(adatum.consented("app", arm, &[]).is_none());
        assert_eq!(customers.remove_consents(ADATUM), 1);
    }

    #[test]
    fn added_customers_need_a_partner_and_a_free_id() {
        let (dir, mut customers) = demo();
        let seed = |id: &str, partner: &str| CustomerSeed {
            id: id.into(),
            name: "New".into(),
            domain: format!("{id}.example"),
            partner_tenant_id: partner.into(),
            relationship_active: true,
        };
        let fresh = "11111111-2222-4333-8444-555555555555";
        assert!(customers.add(&dir, &seed(fresh, CONTOSO)).is_ok());
        assert_eq!(
            customers.add(&dir, &seed(fresh, CONTOSO)).err(),
            Some(AddError::Duplicate)
        );
        assert_eq!(
            customers.add(&dir, &seed(WINGTIP, CONTOSO)).err(),
            Some(AddError::Duplicate)
        );
        let other = "21111111-2222-4333-8444-555555555555";
        assert_eq!(
            customers.add(&dir, &seed(other, other)).err(),
            Some(AddError::UnknownPartner)
        );
        assert_eq!(customers.views(None).len(), 5);
    }
}
