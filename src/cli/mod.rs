//! The `samvault` command line (docs/REFERENCE.md). `main.rs` only calls [`run`].
//!
//! This module holds the top-level parser, the dispatch and configuration loading; each
//! command lives in a module of its own with its flags and a `run` function. Everything a
//! command prints on stdout goes through [`output::Output`].

mod audit;
mod client;
mod customers;
#[cfg(feature = "dev-tools")]
mod dev;
mod invite;
mod keys;
mod migrate;
mod ops_user;
mod output;
mod partners;
mod per_partner;
mod progress;
mod rotate;
mod serve;
mod shared;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use samvault::app;
use samvault::config::Config;

#[derive(Parser)]
#[command(
    name = "samvault",
    version,
    about = "Consent and refresh-token vault for Microsoft Secure Application Model CPVs"
)]
pub struct Cli {
    /// TOML configuration file (also SAMVAULT_CONFIG).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

// The variants' order is the order of `samvault --help`.
#[derive(Subcommand)]
enum Command {
    /// The whole product on one machine: dev IdP, samvault, SQLite, a local key file.
    #[cfg(feature = "dev-tools")]
    Demo(dev::DemoArgs),
    /// Run the service.
    Serve,
    /// Run the Entra-compatible dev IdP alone.
    #[cfg(feature = "dev-tools")]
    DevIdp(dev::DevIdpArgs),
    /// Write a self-signed certificate and key for the CPV app (demo and tests; register the
    /// certificate with `dev-idp --client-cert`).
    #[cfg(feature = "dev-tools")]
    DevCert(dev::DevCertArgs),
    /// Run the Azure Key Vault test double (HTTPS) for tests and local development.
    #[cfg(feature = "dev-tools")]
    DevKeyvault(dev::DevKeyVaultArgs),
    /// Apply database migrations and exit.
    Migrate,
    /// Manage integration clients.
    #[command(subcommand)]
    Client(client::Command),
    /// Manage onboarding invitations.
    #[command(subcommand)]
    Invite(invite::Command),
    /// Inspect partners.
    #[command(subcommand)]
    Partners(partners::Command),
    /// The partners' customers: discovery and CPV consent through Partner Center.
    #[command(subcommand)]
    Customers(customers::Command),
    /// The audit log.
    #[command(subcommand)]
    Audit(audit::Command),
    /// Manage the ops dashboard's users.
    #[command(subcommand, name = "ops-user")]
    OpsUser(ops_user::Command),
    /// Redeem grants now (progress bar on a terminal, one summary line otherwise).
    Rotate(rotate::Opts),
    /// The key-encryption keys.
    #[command(subcommand)]
    Keys(keys::Command),
}

/// Parses the command line and runs it.
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(execute(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("samvault: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The dev commands bring their own settings; every other command reads the configuration
/// (`--config`, `SAMVAULT_CONFIG`, the environment) and sets up logging from it first.
async fn execute(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        #[cfg(feature = "dev-tools")]
        Command::Demo(args) => dev::demo(args).await,
        #[cfg(feature = "dev-tools")]
        Command::DevIdp(args) => dev::dev_idp(args).await,
        #[cfg(feature = "dev-tools")]
        Command::DevCert(args) => dev::dev_cert(args),
        #[cfg(feature = "dev-tools")]
        Command::DevKeyvault(args) => dev::dev_keyvault(args).await,
        command => {
            let config = load_config(cli.config.as_deref())?;
            app::init_tracing(config.server.log_format);
            run_with_config(command, config).await
        }
    }
}

fn load_config(path: Option<&Path>) -> anyhow::Result<Config> {
    Ok(Config::load(path)?)
}

async fn run_with_config(command: Command, config: Config) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve => serve::run(config).await,
        Command::Migrate => migrate::run(&config).await,
        Command::Client(command) => client::run(command, &config).await,
        Command::Invite(command) => invite::run(command, &config).await,
        Command::Partners(command) => partners::run(command, config).await,
        Command::Customers(command) => customers::run(command, config).await,
        Command::Audit(command) => audit::run(command, &config).await,
        Command::OpsUser(command) => ops_user::run(command, &config).await,
        Command::Rotate(opts) => rotate::run(opts, config).await,
        Command::Keys(command) => keys::run(command, &config).await,
        #[cfg(feature = "dev-tools")]
        Command::Demo(_) | Command::DevIdp(_) | Command::DevCert(_) | Command::DevKeyvault(_) => {
            unreachable!("dev commands run before the configuration is loaded")
        }
    }
}
