//! `samvault migrate`: applies the database migrations and exits.

use std::process::ExitCode;

use samvault::app;
use samvault::config::Config;

pub async fn run(config: &Config) -> anyhow::Result<ExitCode> {
    app::open_db(config).await?;
    eprintln!("migrations applied");
    Ok(ExitCode::SUCCESS)
}
