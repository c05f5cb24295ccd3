//! The `samvault` command line (SPEC §3.1). `main.rs` only calls [`run`].

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use secrecy::{ExposeSecret, SecretString};

use crate::app::{self, App};
use crate::config::{self, Config};
use crate::devidp::{self, DevIdpOptions};
use crate::domain::{Resource, TenantId};
use crate::storage::clients::{self, NewClient, Permission};
use crate::storage::{audit, now, partners, rfc3339};

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

#[derive(Subcommand)]
enum Command {
    /// The whole product on one machine: dev IdP, samvault, SQLite, a local key file.
    Demo(DemoArgs),
    /// Run the service.
    Serve,
    /// Run the Entra-compatible dev IdP alone.
    DevIdp(DevIdpArgs),
    /// Write a self-signed certificate and key for the CPV app (demo and tests; register the
    /// certificate with `dev-idp --client-cert`).
    DevCert(DevCertArgs),
    /// Run the Azure Key Vault test double (HTTPS) for tests and local development.
    DevKeyvault(crate::devkv::DevKeyVaultArgs),
    /// Apply database migrations and exit.
    Migrate,
    /// Manage integration clients.
    #[command(subcommand)]
    Client(ClientCommand),
    /// Manage onboarding invitations.
    #[command(subcommand)]
    Invite(InviteCommand),
    /// Inspect partners.
    #[command(subcommand)]
    Partners(PartnersCommand),
    /// The audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Manage the ops dashboard's users.
    #[command(subcommand, name = "ops-user")]
    OpsUser(OpsUserCommand),
    /// Redeem grants now (progress bar on a terminal, one summary line otherwise).
    Rotate(RotateArgs),
    /// The key-encryption keys.
    #[command(subcommand)]
    Keys(KeysCommand),
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Sealed records per key-encryption key version, and which key seals new records.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Creates a new key-encryption key and re-wraps every data key with it, online (payloads
    /// untouched); resumes an interrupted rotation; retires keys nothing references any more.
    Rotate {
        /// Re-wrap onto the current key without creating one: the second step of a move
        /// between providers (SAMVAULT_PREVIOUS_KEY_PROVIDERS).
        #[arg(long)]
        onto_current: bool,
    },
}

#[derive(Subcommand)]
enum OpsUserCommand {
    /// Create a dashboard user. Prints a one-time password (to be changed at first sign-in)
    /// and the TOTP secret for an authenticator app, once.
    Create {
        /// The user's sign-in name (`--name` as in SPEC §3.1 works too).
        #[arg(long, alias = "name")]
        username: String,
        /// viewer (read), operator (rotate, access check, invitations), admin (revoke, clients)
        #[arg(long)]
        role: String,
        #[arg(long)]
        json: bool,
    },
    /// List dashboard users (no secrets).
    List,
    /// Disable a user at once (a phished or departed account): their open sessions are
    /// refused at the next request.
    Disable {
        #[arg(long)]
        username: String,
    },
}

#[derive(Args)]
#[group(required = true, multiple = false)]
struct RotateArgs {
    /// Grants whose scheduled rotation time has passed.
    #[arg(long)]
    due: bool,
    /// Every usable grant.
    #[arg(long)]
    all: bool,
    /// One partner.
    #[arg(long, value_name = "TENANT_ID")]
    partner: Option<String>,
}

#[derive(Args)]
struct DemoArgs {
    /// Generated partner tenants to add to the dev IdP's directory.
    #[arg(long, default_value_t = 0)]
    tenants: u32,
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: std::net::SocketAddr,
    #[arg(long, default_value = "127.0.0.1:8081")]
    idp_listen: std::net::SocketAddr,
    #[arg(long, default_value = "samvault-demo.db")]
    database: PathBuf,
    /// The CPV app proves itself with a certificate (client assertions) instead of a secret:
    /// a self-signed one in `samvault-demo-cert/`, registered with the dev IdP.
    #[arg(long)]
    certificate: bool,
}

#[derive(Args)]
struct DevIdpArgs {
    #[arg(long, default_value = "127.0.0.1:8081")]
    listen: std::net::SocketAddr,
    /// Generated partner tenants to add to the directory.
    #[arg(long, default_value_t = 0)]
    tenants: u32,
    /// A refresh token dies at first use (IdPs with reuse detection).
    #[arg(long)]
    strict_rotation: bool,
    /// With --strict-rotation: a spent refresh token stays redeemable this many seconds
    /// (until its successor is used), as IdPs with a rotation grace period allow.
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = 0,
        requires = "strict_rotation"
    )]
    rotation_grace: u64,
    /// Directory TOML file instead of the demo directory.
    #[arg(long, value_name = "FILE")]
    directory: Option<PathBuf>,
    /// Latency added to every token call, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// A PEM certificate registered on the demo CPV app: client assertions signed by its key
    /// are accepted. Repeatable.
    #[arg(long, value_name = "PATH")]
    client_cert: Vec<PathBuf>,
    /// Serve over HTTPS with this PEM certificate chain (as Entra ID does); needs --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

#[derive(Args)]
struct DevCertArgs {
    /// Directory to write `cpv-app.crt` and `cpv-app.key` (PKCS#8, mode 0600) into.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Days the certificate is valid from now.
    #[arg(long, default_value_t = 365)]
    days: u32,
}

#[derive(Subcommand)]
enum ClientCommand {
    /// Create a client; prints its id and its secret once.
    Create {
        #[arg(long)]
        name: String,
        /// Audience this client may ask for (repeatable).
        #[arg(long = "resource", required = true)]
        resources: Vec<String>,
        /// Partner tenant this client may use (repeatable; default: all partners).
        #[arg(long = "partner")]
        partners: Vec<String>,
        /// tokens:issue or partners:read (repeatable; default: both).
        #[arg(long = "permission")]
        permissions: Vec<String>,
        /// Token requests per minute.
        #[arg(long, default_value_t = 600)]
        rate_limit: i64,
        #[arg(long)]
        json: bool,
    },
    List {
        #[arg(long)]
        json: bool,
    },
    Revoke {
        client_id: String,
    },
    /// Roll a client's secrets without downtime: add a new one, move the integration to
    /// it, then revoke the old one.
    #[command(subcommand)]
    Secret(SecretCommand),
}

#[derive(Subcommand)]
enum SecretCommand {
    /// Adds a secret; prints it once.
    Add {
        client_id: String,
        #[arg(long)]
        json: bool,
    },
    /// Lists a client's secret ids and dates.
    List { client_id: String },
    /// Revokes one secret.
    Revoke {
        client_id: String,
        secret_id: String,
    },
}

#[derive(Subcommand)]
enum InviteCommand {
    /// Create an onboarding URL.
    Create {
        /// Restrict the invitation to one partner tenant.
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long, default_value = "7d")]
        expires: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum PartnersCommand {
    List {
        #[arg(long)]
        json: bool,
    },
    /// Import refresh tokens held elsewhere (a Key Vault secret, a script's store): one JSON
    /// object per line, {"tenant_id", "refresh_token", "upn", "name"?, "mfa"?}. Each is
    /// sealed and scheduled for an immediate rotation, which proves it works. Delete the
    /// file afterwards: it holds credentials in clear.
    Import {
        /// JSON-lines file, or - for standard input.
        #[arg(long, value_name = "FILE")]
        file: PathBuf,
    },
    /// Emergency remediation: crypto-shred the sealed refresh tokens of one partner or of all
    /// of them; each becomes reconsent_required and must consent again. Works beside a
    /// running `serve` (running services stop serving cached tokens within a second).
    Purge {
        /// The partner's tenant id.
        #[arg(
            long,
            value_name = "TENANT_ID",
            required_unless_present = "all",
            conflicts_with = "all"
        )]
        partner: Option<String>,
        /// Every partner.
        #[arg(long)]
        all: bool,
        /// Confirms: without it nothing is purged.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the audit log's hash chain.
    Verify,
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

fn load_config(cli_config: Option<&PathBuf>) -> anyhow::Result<Config> {
    Ok(Config::load(cli_config.map(PathBuf::as_path))?)
}

async fn execute(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Demo(args) => demo(args).await.map(|_| ExitCode::SUCCESS),
        Command::DevKeyvault(args) => crate::devkv::run(args).await.map(|_| ExitCode::SUCCESS),
        Command::DevIdp(args) => {
            app::init_tracing(config::LogFormat::Text);
            let listener = tokio::net::TcpListener::bind(args.listen)
                .await
                .map_err(|e| anyhow::anyhow!("--listen: cannot listen on {}: {e}", args.listen))?;
            eprintln!(
                "samvault dev IdP on {}://{} (client id {})",
                if args.tls_cert.is_some() {
                    "https"
                } else {
                    "http"
                },
                listener.local_addr()?,
                devidp::DEMO_CLIENT_ID
            );
            let options = DevIdpOptions {
                generated_tenants: args.tenants,
                strict_rotation: args.strict_rotation,
                rotation_grace_secs: args.rotation_grace,
                directory_file: args.directory,
                token_latency_ms: args.latency_ms,
                client_certs: args.client_cert,
                tls: args.tls_cert.zip(args.tls_key),
            };
            tokio::select! {
                result = devidp::serve(listener, options) => result?,
                _ = app::shutdown_signal() => {}
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::DevCert(args) => {
            let now = now();
            let (cert, key) = devidp::certificate::write_self_signed(
                &args.out,
                devidp::DEMO_APP_NAME,
                now - 60,
                now + i64::from(args.days) * 86_400,
            )?;
            let info = crate::idp::certificate::CertificateInfo::from_pem(
                &std::fs::read_to_string(&cert)?,
            )
            .map_err(|why| anyhow::anyhow!("{} {why}", cert.display()))?;
            println!(
                "certificate: {}\nprivate key: {}\nx5t#S256: {}\n\nsamvault dev-idp --client-cert {}\nSAMVAULT_CLIENT_CERT={} SAMVAULT_CLIENT_KEY_FILE={} samvault serve",
                cert.display(),
                key.display(),
                info.thumbprint_s256(),
                cert.display(),
                cert.display(),
                key.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        command => {
            let config = load_config(cli.config.as_ref())?;
            app::init_tracing(config.log_format);
            run_with_config(command, config).await
        }
    }
}

async fn run_with_config(command: Command, config: Config) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve => {
            App::build(config).await?.run().await?;
        }
        Command::Migrate => {
            app::open_db(&config).await?;
            eprintln!("migrations applied");
        }
        Command::Client(cmd) => client_command(cmd, &config).await?,
        Command::Invite(InviteCommand::Create {
            tenant,
            expires,
            json,
        }) => {
            let tenant = tenant
                .map(|t| TenantId::parse(&t).map_err(|e| anyhow::anyhow!("--tenant: {e}")))
                .transpose()?;
            let lifetime =
                config::parse_duration(&expires).map_err(|e| anyhow::anyhow!("--expires: {e}"))?;
            let db = app::open_db(&config).await?;
            let (url, expires_at) = crate::http::onboard::create_invitation(
                &db,
                &config.public_url,
                tenant.as_ref(),
                lifetime.as_secs() as i64,
            )
            .await?;
            audit::append(
                &db,
                "cli",
                "invite.create",
                tenant.as_ref().map(TenantId::as_str),
                serde_json::json!({ "expires_at": expires_at }),
                now(),
            )
            .await?;
            let expires_at = rfc3339(expires_at);
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "url": url.as_str(), "expires_at": expires_at })
                );
            } else {
                println!("{url}\n(expires {expires_at})");
            }
        }
        Command::Partners(PartnersCommand::Import { file }) => {
            let db = app::open_db(&config).await?;
            let vault = app::open_vault(&config).await?;
            let imported = import_partners(&db, &vault, &file).await?;
            audit::append(
                &db,
                "cli",
                "partners.import",
                None,
                serde_json::json!({ "count": imported }),
                now(),
            )
            .await?;
            println!("imported {imported} partners; each is due for rotation now");
        }
        Command::Partners(PartnersCommand::Purge { partner, all, yes }) => {
            return purge(partner, all, yes, config).await;
        }
        Command::Partners(PartnersCommand::List { json }) => {
            let db = app::open_db(&config).await?;
            let list = partners::list(&db).await?;
            if json {
                let rows: Vec<_> = list
                    .iter()
                    .map(|p| {
                        serde_json::json!({
                            "tenant_id": p.tenant_id, "name": p.display_name, "status": p.status,
                            "status_code": p.status_code, "status_reason": p.status_reason,
                            "mfa": p.mfa, "last_refresh": rfc3339(p.last_refresh_at), "expiry_horizon": rfc3339(p.horizon()),
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                println!(
                    "{:<36}  {:<24}  {:<18}  {:<20}  HORIZON",
                    "TENANT ID", "NAME", "STATUS", "LAST REFRESH"
                );
                for p in &list {
                    println!(
                        "{:<36}  {:<24}  {:<18}  {:<20}  {}",
                        p.tenant_id,
                        p.display_name,
                        p.status.as_str(),
                        rfc3339(p.last_refresh_at),
                        rfc3339(p.horizon())
                    );
                }
            }
        }
        Command::Audit(AuditCommand::Verify) => {
            let db = app::open_db(&config).await?;
            match audit::verify(&db).await? {
                Ok(rows) => println!("audit chain intact: {rows} events"),
                Err(seq) => {
                    println!("audit chain broken at event {seq}");
                    return Ok(ExitCode::FAILURE);
                }
            }
        }
        Command::OpsUser(cmd) => ops_user_command(cmd, &config).await?,
        Command::Keys(KeysCommand::Status { json }) => {
            let db = app::open_db(&config).await?;
            let vault = app::open_vault(&config).await?;
            let (provider, current) = (vault.provider().kind(), vault.provider().current_kek_id());
            let counts = crate::storage::sealed::count_by_kek(&db).await?;
            let shredded = crate::storage::sealed::shredded_grants(&db).await?;
            let elsewhere: i64 = counts
                .iter()
                .filter(|c| c.kek_id != current)
                .map(|c| c.records)
                .sum();
            if json {
                let rows: Vec<_> = counts
                    .iter()
                    .map(|c| serde_json::json!({ "what": c.what, "kek_id": c.kek_id, "records": c.records }))
                    .collect();
                println!(
                    "{}",
                    serde_json::json!({
                        "provider": provider, "current_kek_id": current, "sealed": rows,
                        "shredded_grant_versions": shredded, "not_under_current_key": elsewhere,
                    })
                );
            } else {
                println!("key provider: {provider}\ncurrent key-encryption key: {current}\n");
                for c in &counts {
                    println!("{:<34} {:>10}  {}", c.what, c.records, c.kek_id);
                }
                println!(
                    "\nshredded refresh-token versions: {shredded}\nsealed records under other keys: {elsewhere}"
                );
            }
        }
        Command::Keys(KeysCommand::Rotate { onto_current }) => {
            keys_rotate(onto_current, &config).await?
        }
        Command::Rotate(args) => return rotate(args, config).await,
        Command::Demo(_) | Command::DevIdp(_) | Command::DevCert(_) | Command::DevKeyvault(_) => {
            unreachable!("handled before configuration is loaded")
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn client_command(cmd: ClientCommand, config: &Config) -> anyhow::Result<()> {
    let db = app::open_db(config).await?;
    match cmd {
        ClientCommand::Create {
            name,
            resources,
            partners,
            permissions,
            rate_limit,
            json,
        } => {
            // No --permission means both: the common case, as SPEC §3.1 documents.
            let permissions = if permissions.is_empty() {
                [Permission::TokensIssue, Permission::PartnersRead]
                    .map(|p| p.as_str().to_string())
                    .to_vec()
            } else {
                permissions
            };
            let new = NewClient::parse(
                &name,
                &permissions,
                &resources,
                &partners,
                rate_limit,
                &config.resources,
            )?;
            let (client_id, secret) = create_client(&db, &new).await?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "client_id": client_id, "client_secret": secret.expose_secret() })
                );
            } else {
                println!(
                    "client_id:     {client_id}\nclient_secret: {}\n(the secret is shown once; samvault stores only its SHA-256)",
                    secret.expose_secret()
                );
            }
        }
        ClientCommand::List { json } => {
            let list = clients::list(&db).await?;
            if json {
                let rows: Vec<_> = list
                    .iter()
                    .map(|c| {
                        serde_json::json!({
                            "client_id": c.client_id, "name": c.name,
                            "permissions": c.permissions.iter().map(|p| p.as_str()).collect::<Vec<_>>(),
                            "resources": c.resources, "partners": c.partners,
                            "rate_limit_per_minute": c.rate_limit_per_minute,
                            "created_at": rfc3339(c.created_at), "last_used_at": c.last_used_at.map(rfc3339),
                            "revoked_at": c.revoked_at.map(rfc3339),
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                println!(
                    "{:<36}  {:<24}  {:<8}  RESOURCES",
                    "CLIENT ID", "NAME", "STATE"
                );
                for c in &list {
                    let state = if c.revoked_at.is_some() {
                        "revoked"
                    } else {
                        "active"
                    };
                    let resources: Vec<_> = c.resources.iter().map(Resource::as_str).collect();
                    println!(
                        "{:<36}  {:<24}  {:<8}  {}",
                        c.client_id,
                        c.name,
                        state,
                        resources.join(" ")
                    );
                }
            }
        }
        ClientCommand::Secret(SecretCommand::Add { client_id, json }) => {
            let (secret_id, secret) = clients::add_secret(&db, &client_id, now())
                .await?
                .ok_or_else(|| anyhow::anyhow!("no active client {client_id}"))?;
            audit::append(
                &db,
                "cli",
                "client.secret.add",
                None,
                serde_json::json!({ "client_id": client_id, "secret_id": secret_id }),
                now(),
            )
            .await?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "client_id": client_id, "secret_id": secret_id, "client_secret": secret.expose_secret() })
                );
            } else {
                println!(
                    "secret_id:     {secret_id}\nclient_secret: {}\n(shown once)",
                    secret.expose_secret()
                );
            }
        }
        ClientCommand::Secret(SecretCommand::List { client_id }) => {
            for (id, created, revoked) in clients::secrets(&db, &client_id).await? {
                let state = revoked.map_or_else(
                    || "active".to_string(),
                    |r| format!("revoked {}", rfc3339(r)),
                );
                println!("{id}  created {}  {state}", rfc3339(created));
            }
        }
        ClientCommand::Secret(SecretCommand::Revoke {
            client_id,
            secret_id,
        }) => {
            anyhow::ensure!(
                clients::revoke_secret(&db, &client_id, &secret_id, now()).await?,
                "no active secret {secret_id} for client {client_id}"
            );
            audit::append(
                &db,
                "cli",
                "client.secret.revoke",
                None,
                serde_json::json!({ "client_id": client_id, "secret_id": secret_id }),
                now(),
            )
            .await?;
            crate::clients::wait_for_services_to_notice().await;
            println!("revoked secret {secret_id}");
        }
        ClientCommand::Revoke { client_id } => {
            anyhow::ensure!(
                clients::revoke(&db, &client_id, now()).await?,
                "no active client {client_id}"
            );
            audit::append(
                &db,
                "cli",
                "client.revoke",
                None,
                serde_json::json!({ "client_id": client_id }),
                now(),
            )
            .await?;
            crate::clients::wait_for_services_to_notice().await;
            println!("revoked {client_id}");
        }
    }
    Ok(())
}

async fn ops_user_command(cmd: OpsUserCommand, config: &Config) -> anyhow::Result<()> {
    use crate::ops::{password, totp};
    use crate::storage::ops_users::{self, Role};
    let db = app::open_db(config).await?;
    match cmd {
        OpsUserCommand::Create {
            username,
            role,
            json,
        } => {
            let role = Role::parse(&role).map_err(|e| anyhow::anyhow!("--role: {e}"))?;
            let valid = (1..=64).contains(&username.len())
                && username
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._@-".contains(&b));
            anyhow::ensure!(
                valid,
                "--username: 1 to 64 letters, digits, '.', '_', '@' or '-'"
            );
            let vault = app::open_vault(config).await?;
            let initial = password::generate();
            let secret = totp::generate_secret();
            let sealed = vault
                .seal(&secret, &ops_users::totp_context(&username))
                .await?;
            let created = ops_users::create(
                &db,
                &username,
                role,
                &password::hash(&initial),
                &sealed,
                now(),
            )
            .await?;
            anyhow::ensure!(created, "an ops user named {username} already exists");
            audit::append(
                &db,
                "cli",
                "ops_user.create",
                None,
                serde_json::json!({ "username": username, "role": role.as_str() }),
                now(),
            )
            .await?;
            let uri = totp::otpauth_uri(&config.app_name, &username, &secret);
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        // `name` is SPEC §3.1's key; `username` matches the flag.
                        "name": username, "username": username, "role": role.as_str(),
                        "password": initial.as_str(), "totp_secret": totp::base32(&secret),
                        "otpauth_uri": uri,
                    })
                );
            } else {
                println!("created {} user {username}", role.as_str());
                println!(
                    "one-time password (change it at first sign-in): {}",
                    initial.as_str()
                );
                println!(
                    "TOTP secret for the authenticator app: {}",
                    totp::base32(&secret)
                );
                println!("or import: {uri}");
                println!("none of these is shown again");
            }
        }
        OpsUserCommand::Disable { username } => {
            anyhow::ensure!(
                ops_users::disable(&db, &username, now()).await?,
                "no enabled ops user named {username}"
            );
            audit::append(
                &db,
                "cli",
                "ops_user.disable",
                None,
                serde_json::json!({ "username": username }),
                now(),
            )
            .await?;
            println!("disabled {username}: their sessions end at their next request");
        }
        OpsUserCommand::List => {
            for user in ops_users::list(&db).await? {
                println!(
                    "{}\t{}\tlast sign-in {}{}",
                    user.username,
                    user.role.as_str(),
                    user.last_sign_in_at.map_or("never".into(), rfc3339),
                    if user.disabled_at.is_some() {
                        "\tdisabled"
                    } else {
                        ""
                    }
                );
            }
        }
    }
    Ok(())
}

/// `samvault partners purge`: shreds one partner's grants or everyone's, with the same
/// concurrency as rotation; a per-partner failure is reported and the rest carries on.
async fn purge(
    partner: Option<String>,
    all: bool,
    yes: bool,
    config: Config,
) -> anyhow::Result<ExitCode> {
    let tenant = partner
        .map(|t| TenantId::parse(&t).map_err(|e| anyhow::anyhow!("--partner: {e}")))
        .transpose()?;
    if !yes {
        let whom = if all {
            "every partner".to_string()
        } else {
            format!("partner {}", tenant.as_ref().map_or("", TenantId::as_str))
        };
        eprintln!(
            "this crypto-shreds the refresh tokens of {whom}; each must consent again.\n\
             Run again with --yes to do it."
        );
        return Ok(ExitCode::from(2));
    }
    let services = crate::app::Services::open_beside_server(config).await?;
    let tenants = match tenant {
        Some(tenant) => vec![tenant],
        None => partners::list(&services.db)
            .await?
            .into_iter()
            .map(|p| p.tenant_id)
            .collect(),
    };
    let reason = if all {
        "Purged with every other partner by `samvault partners purge --all`. The partner must consent again."
    } else {
        "Purged by `samvault partners purge`. The partner must consent again."
    };
    let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(
        services.config.rotation_concurrency,
    ));
    let mut set = tokio::task::JoinSet::new();
    for tenant in tenants {
        let (broker, permits) = (services.broker.clone(), permits.clone());
        set.spawn(async move {
            let _permit = permits.acquire_owned().await.expect("semaphore open");
            let result = broker
                .purge(
                    &tenant,
                    crate::domain::PartnerStatus::ReconsentRequired,
                    reason,
                )
                .await;
            (tenant, result)
        });
    }
    let (mut purged, mut shredded, mut failed) = (0u64, 0u64, Vec::new());
    while let Some(joined) = set.join_next().await {
        let (tenant, result) = joined?;
        match result {
            Ok(n) => {
                purged += 1;
                shredded += n;
                if !all {
                    audit::append(
                        &services.db,
                        "cli",
                        "partners.purge",
                        Some(tenant.as_str()),
                        serde_json::json!({ "shredded": n }),
                        now(),
                    )
                    .await?;
                }
            }
            Err(e) => failed.push(format!("{tenant}: {}", e.code())),
        }
    }
    if all {
        audit::append(
            &services.db,
            "cli",
            "partners.purge_all",
            None,
            serde_json::json!({ "partners": purged, "shredded": shredded, "failed": failed.len() }),
            now(),
        )
        .await?;
    }
    println!(
        "purged {purged} partner(s): {shredded} sealed grant version(s) crypto-shredded; each must consent again"
    );
    for failure in &failed {
        eprintln!("not purged: {failure} (run the command again)");
    }
    Ok(if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `samvault rotate`: redeems the chosen grants now with the configured concurrency.
async fn rotate(args: RotateArgs, config: Config) -> anyhow::Result<ExitCode> {
    use std::sync::atomic::{AtomicU64, Ordering};
    let services = crate::app::Services::open(config).await?;
    let tenants = match &args.partner {
        Some(t) => vec![TenantId::parse(t).map_err(|e| anyhow::anyhow!("--partner: {e}"))?],
        None => crate::storage::rotation::usable_tenants(&services.db, args.due.then(now)).await?,
    };
    let total = tenants.len() as u64;
    let started = std::time::Instant::now();
    let succeeded = std::sync::Arc::new(AtomicU64::new(0));
    let failures = std::sync::Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::<
        String,
        u64,
    >::new()));
    let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(
        services.config.rotation_concurrency,
    ));
    let mut set = tokio::task::JoinSet::new();
    for tenant in tenants {
        let (broker, succeeded, failures, permits) = (
            services.broker.clone(),
            succeeded.clone(),
            failures.clone(),
            permits.clone(),
        );
        set.spawn(async move {
            let _permit = permits.acquire_owned().await.expect("semaphore open");
            match broker.rotate(&tenant, crate::broker::Source::Manual).await {
                Ok(_) => {
                    succeeded.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    tracing::debug!(tenant.id = %tenant, error = %e, "rotation failed");
                    *failures
                        .lock()
                        .expect("failures lock")
                        .entry(e.to_string())
                        .or_default() += 1;
                }
            }
        });
    }
    let mut bar = ProgressBar::new("rotating");
    let mut done = 0u64;
    while set.join_next().await.is_some() {
        done += 1;
        bar.show(done, total);
    }
    bar.finish();
    let ok = succeeded.load(Ordering::Relaxed);
    let failures = failures.lock().expect("failures lock").clone();
    let failed: u64 = failures.values().sum();
    let detail: Vec<String> = failures.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    println!(
        "rotated {total} partners in {:.1}s: {ok} succeeded, {failed} failed{}",
        started.elapsed().as_secs_f64(),
        if detail.is_empty() {
            String::new()
        } else {
            format!(" ({})", detail.join(", "))
        }
    );
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// A progress bar on stderr when it is a terminal; otherwise one line per tenth of the work,
/// so a log (or a test driving the command) sees how far it got.
struct ProgressBar {
    label: &'static str,
    terminal: bool,
    shown: bool,
    /// Last step drawn: a bar cell on a terminal, a tenth otherwise (redraw only on change).
    last_step: Option<u64>,
}

impl ProgressBar {
    fn new(label: &'static str) -> Self {
        use std::io::IsTerminal;
        Self {
            label,
            terminal: std::io::stderr().is_terminal(),
            shown: false,
            last_step: None,
        }
    }

    fn show(&mut self, done: u64, total: u64) {
        if total == 0 {
            return;
        }
        const WIDTH: u64 = 30;
        let step = (done * if self.terminal { WIDTH } else { 10 } / total).min(WIDTH);
        if self.last_step == Some(step) {
            return;
        }
        self.last_step = Some(step);
        if self.terminal {
            let filled = step as usize;
            eprint!(
                "\r{} [{}{}] {done}/{total}",
                self.label,
                "#".repeat(filled),
                " ".repeat(WIDTH as usize - filled)
            );
            self.shown = true;
        } else if step > 0 {
            eprintln!("{} {done}/{total}", self.label);
        }
    }

    fn finish(&self) {
        if self.shown {
            eprintln!();
        }
    }
}

/// `samvault keys rotate`: see [`crate::key_rotation`].
async fn keys_rotate(onto_current: bool, config: &Config) -> anyhow::Result<()> {
    use crate::key_rotation::{Target, rotate};
    let db = app::open_db(config).await?;
    let vault = app::open_vault(config).await?;
    let target = if onto_current {
        Target::Current
    } else {
        Target::NewKey
    };
    let started = std::time::Instant::now();
    let mut bar = ProgressBar::new("re-wrapping");
    let report = rotate(&db, &vault, target, "cli", |p| {
        bar.show(p.moved as u64, p.total as u64)
    })
    .await?;
    bar.finish();
    let kinds: Vec<String> = report
        .moved
        .iter()
        .map(|(what, n)| format!("{n} {what}"))
        .collect();
    println!(
        "{} {} sealed records onto {} in {:.1}s{}",
        if report.resumed {
            "resumed: re-wrapped"
        } else {
            "re-wrapped"
        },
        report.total_moved(),
        report.target_kek_id,
        started.elapsed().as_secs_f64(),
        if kinds.is_empty() {
            String::new()
        } else {
            format!(" ({})", kinds.join(", "))
        }
    );
    for kek in &report.retired {
        println!("retired {kek}: no record references it any more");
    }
    for kek in &report.unreferenced {
        println!(
            "{kek} is no longer referenced: remove it from SAMVAULT_PREVIOUS_KEY_PROVIDERS, or disable that key version in its vault"
        );
    }
    Ok(())
}

/// The demo's self-signed app certificate, `samvault-demo-cert/cpv-app.{crt,key}`: made on
/// first use, reused while valid for another day.
fn demo_certificate() -> anyhow::Result<(PathBuf, PathBuf)> {
    let dir = PathBuf::from("samvault-demo-cert");
    let (cert, key) = (dir.join("cpv-app.crt"), dir.join("cpv-app.key"));
    let valid = std::fs::read_to_string(&cert)
        .ok()
        .and_then(|pem| crate::idp::certificate::CertificateInfo::from_pem(&pem).ok())
        .is_some_and(|info| info.not_after > now() + 86_400);
    if valid && key.exists() {
        return Ok((cert, key));
    }
    let now = now();
    devidp::certificate::write_self_signed(
        &dir,
        devidp::DEMO_APP_NAME,
        now - 60,
        now + 365 * 86_400,
    )
}

/// One line of `samvault partners import`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ImportLine {
    tenant_id: String,
    refresh_token: SecretString,
    upn: String,
    name: Option<String>,
    #[serde(default)]
    mfa: bool,
}

async fn import_partners(
    db: &crate::storage::Db,
    vault: &crate::vault::Vault,
    file: &std::path::Path,
) -> anyhow::Result<u64> {
    use std::io::BufRead;
    let reader: Box<dyn std::io::BufRead> = if file.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::io::BufReader::new(std::fs::File::open(file).map_err(
            |e| anyhow::anyhow!("--file {}: {e}", file.display()),
        )?))
    };
    let mut count = 0;
    for (number, line) in reader.lines().enumerate() {
        let line = zeroize::Zeroizing::new(line?);
        if line.trim().is_empty() {
            continue;
        }
        // The error names the line, never its content (it holds a refresh token).
        let entry: ImportLine = serde_json::from_str(&line).map_err(|e| {
            anyhow::anyhow!(
                "line {}: not an import record ({:?} error)",
                number + 1,
                e.classify()
            )
        })?;
        let tenant = TenantId::parse(&entry.tenant_id)
            .map_err(|e| anyhow::anyhow!("line {}: {e}", number + 1))?;
        let version = partners::next_version(db, &tenant).await?;
        let sealed = vault
            .seal(
                entry.refresh_token.expose_secret().as_bytes(),
                &partners::grant_context(&tenant, version),
            )
            .await?;
        let (organisation, domain) = crate::http::onboard::organisation_name(&entry.upn);
        let consent = partners::NewConsent {
            tenant_id: tenant.clone(),
            display_name: entry.name.unwrap_or(organisation),
            domain,
            upn: entry.upn,
            oid: None,
            user_name: None,
            mfa: entry.mfa,
            amr: vec!["imported".into()],
            scopes: String::new(),
            invitation_id: None,
        };
        let at = now();
        // Due at once: the first rotation proves the imported token is alive.
        partners::record_consent(
            db,
            &consent,
            &partners::StoredGrant { version, sealed },
            at,
            at,
        )
        .await?;
        count += 1;
    }
    Ok(count)
}

/// Creates a client and records it in the audit log; returns `(client_id, secret)`.
pub async fn create_client(
    db: &crate::storage::Db,
    new: &NewClient,
) -> anyhow::Result<(String, SecretString)> {
    let (client_id, secret) = clients::issue(db, new, now()).await?;
    let detail = serde_json::json!({
        "client_id": client_id, "name": new.name,
        "resources": new.resources, "partners": new.partners,
        "permissions": new.permissions.iter().map(|p| p.as_str()).collect::<Vec<_>>(),
    });
    audit::append(db, "cli", "client.create", None, detail, now()).await?;
    Ok((client_id, secret))
}

/// `samvault demo`: the dev IdP and samvault in one process, wired to each other.
async fn demo(args: DemoArgs) -> anyhow::Result<()> {
    app::init_tracing(config::LogFormat::Text);
    let idp_listener = tokio::net::TcpListener::bind(args.idp_listen)
        .await
        .map_err(|e| anyhow::anyhow!("--idp-listen: cannot listen on {}: {e}", args.idp_listen))?;
    let idp_url = format!("http://{}", idp_listener.local_addr()?);
    let certificate = if args.certificate {
        Some(demo_certificate()?)
    } else {
        None
    };
    let options = DevIdpOptions {
        generated_tenants: args.tenants,
        client_certs: certificate.iter().map(|(cert, _)| cert.clone()).collect(),
        ..DevIdpOptions::default()
    };
    let idp = tokio::spawn(devidp::serve(idp_listener, options));

    let database_url = format!("sqlite://{}?mode=rwc", args.database.display());
    let mut env: std::collections::BTreeMap<String, String> =
        std::env::vars().filter(|(k, _)| k == "RUST_LOG").collect();
    for (key, value) in [
        ("DATABASE_URL", database_url.as_str()),
        ("SAMVAULT_LISTEN", &args.listen.to_string()),
        ("SAMVAULT_PUBLIC_URL", &format!("http://{}", args.listen)),
        ("SAMVAULT_AUTHORITY", &idp_url),
        ("SAMVAULT_CLIENT_ID", devidp::DEMO_CLIENT_ID),
        ("SAMVAULT_KEY_PROVIDER", "local:samvault-demo.key"),
    ] {
        env.insert(key.into(), value.into());
    }
    let app_credential = match &certificate {
        Some((cert, key)) => {
            env.insert("SAMVAULT_CLIENT_CERT".into(), cert.display().to_string());
            env.insert("SAMVAULT_CLIENT_KEY_FILE".into(), key.display().to_string());
            format!("certificate {}", cert.display())
        }
        None => {
            env.insert(
                "SAMVAULT_CLIENT_SECRET".into(),
                devidp::DEMO_CLIENT_SECRET.into(),
            );
            "client secret".to_string()
        }
    };
    let config = Config::from_sources(None, &env)?;
    let public_url = config.public_url.clone();
    let app = App::build(config).await?;
    let resource = crate::config::PARTNER_CENTER;
    let new = NewClient {
        name: "demo integration".into(),
        permissions: vec![Permission::TokensIssue, Permission::PartnersRead],
        resources: app.state.config.resources.clone(),
        partners: None,
        rate_limit_per_minute: 600,
    };
    let (client_id, secret) = create_client(&app.state.db, &new).await?;
    let contoso = devidp::CONTOSO;
    println!(
        "\nsamvault demo is running.\n\n\
         dev IdP (Entra-compatible): {idp_url}\n\
         samvault:                   {public_url}\n\
         CPV app credential:         {app_credential}\n\n\
         1. Open {public_url}onboard and press \"Grant consent\".\n\
         2. Sign in as jane@contoso.example, tick MFA, accept.\n\
         3. Ask for a Partner Center token with the demo integration client:\n\n\
         \x20  client_id:     {client_id}\n\
         \x20  client_secret: {secret}\n\n\
         curl -s -u '{client_id}:{secret}' -H 'content-type: application/json' \\\n\
         \x20 -d '{{\"resource\": \"{resource}\", \"purpose\": \"demo\"}}' \\\n\
         \x20 {public_url}api/v1/partners/{contoso}/token\n\n\
         Ctrl-C stops the demo.\n",
        secret = secret.expose_secret(),
    );
    tokio::select! {
        result = app.run() => result?,
        result = idp => result??,
    }
    Ok(())
}
