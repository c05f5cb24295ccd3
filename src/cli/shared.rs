//! The core functions the command line shares with the HTTP layer, reached from here only:
//! the CLI never calls into `samvault::http`.

/// Stores an invitation and returns its onboarding URL and expiry (`invite create`).
pub use samvault::onboarding::create_invitation;

/// An organisation's display name and domain from a consenting user's UPN (`partners import`).
pub use samvault::onboarding::organisation_name;

/// Waits until running services have dropped a revoked client or secret from their
/// authentication cache (`client revoke`, `client secret revoke`).
pub use samvault::clients::wait_for_services_to_notice;
