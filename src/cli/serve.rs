//! `samvault serve`: the service, until Ctrl-C or SIGTERM.

use std::process::ExitCode;

use samvault::app::App;
use samvault::config::Config;

pub async fn run(config: Config) -> anyhow::Result<ExitCode> {
    App::build(config).await?.run().await?;
    Ok(ExitCode::SUCCESS)
}
