//! Customers of the partners (SPEC §6), below http: the CLI, the dashboard and the API call
//! it. `token`: customer-tenant access tokens.

pub mod token;
