//! The core functions the command line shares with the HTTP layer, reached from here only.
//! They still live under `samvault::http`; when they move below it (issue 14, item 2) these
//! paths are the only lines of the CLI to change.

/// Stores an invitation and returns its onboarding URL and expiry (`invite create`).
pub use samvault::http::onboard::create_invitation;

/// An organisation's display name and domain from a consenting user's UPN (`partners import`).
pub use samvault::http::onboard::organisation_name;

/// Waits until running services have dropped a revoked client or secret from their
/// authentication cache (`client revoke`, `client secret revoke`).
pub use samvault::http::client_auth::wait_for_services_to_notice;
