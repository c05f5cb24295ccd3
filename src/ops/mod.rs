//! Ops users' credentials: argon2id passwords and TOTP second factors, and what limits the
//! attempts to guess them. The dashboard that uses them is in `http::ops`; the users
//! themselves are stored by `storage::ops_users`, their attempts by `storage::ops_signin`.

pub mod password;
pub mod tally;
pub mod throttle;
pub mod totp;

/// What every sign-in shares besides the database: the failed sign-ins of each client
/// address, and the count of failures that are audited per window.
#[derive(Default)]
pub struct SignInLimits {
    pub throttle: throttle::AddressThrottle,
    pub noise: tally::SignInNoise,
}

impl SignInLimits {
    /// Writes the counted failures to the audit log every [`tally::WINDOW`].
    pub fn noise_flushing(
        self: &std::sync::Arc<Self>,
        db: crate::storage::Db,
    ) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(tally::WINDOW);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                if let Err(e) = this.noise.flush(&db).await {
                    tracing::warn!(error = %e, "could not audit the sign-in failures of unknown users; kept for the next try");
                }
            }
        })
    }
}
