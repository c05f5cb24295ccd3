//! The dev commands (`demo`, `dev-idp`, `dev-cert`, `dev-keyvault`): samvault wired to its dev
//! doubles on one machine. Built only with the `dev-tools` feature (the default); a
//! production build (`--no-default-features`) has none of them.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use samvault_devidp::{self as devidp, DevIdpOptions};
use secrecy::ExposeSecret;

use samvault::app::{self, App};
use samvault::config::{self, Config};
use samvault::idp::certificate::CertificateInfo;
use samvault::storage::clients::{NewClient, Permission};
use samvault::storage::now;

pub use samvault_devkv::DevKeyVaultArgs;

use super::client::create_client;
use super::output::Output;

#[derive(Args)]
pub struct DemoArgs {
    /// Generated partner tenants to add to the dev IdP's directory.
    #[arg(long, default_value_t = 0)]
    tenants: u32,
    /// Customer tenants each generated partner tenant gets (below 100000).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(..100_000))]
    customers: u32,
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
pub struct DevIdpArgs {
    #[arg(long, default_value = "127.0.0.1:8081")]
    listen: std::net::SocketAddr,
    /// Generated partner tenants to add to the directory.
    #[arg(long, default_value_t = 0)]
    tenants: u32,
    /// Customer tenants each generated partner tenant gets (below 100000): customer j of
    /// tenant k has id 00000000-0000-4000-9000-(k*100000+j, 12 digits).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(..100_000))]
    customers: u32,
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
    /// Latency added to every Partner Center call (the stand-in under /v1/), in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pc_latency_ms: u64,
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
pub struct DevCertArgs {
    /// Directory to write `cpv-app.crt` and `cpv-app.key` (PKCS#8, mode 0600) into.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Days the certificate is valid from now.
    #[arg(long, default_value_t = 365)]
    days: u32,
    /// Validity instead of --days, as Unix seconds (to try an expired or expiring certificate).
    #[arg(
        long,
        value_name = "UNIX",
        requires = "not_after",
        allow_negative_numbers = true
    )]
    not_before: Option<i64>,
    #[arg(
        long,
        value_name = "UNIX",
        requires = "not_before",
        allow_negative_numbers = true
    )]
    not_after: Option<i64>,
    /// The certificate's common name (default: the demo CPV app's name).
    #[arg(long)]
    name: Option<String>,
    /// Write a test CA and a server certificate it signed for 127.0.0.1 and localhost instead
    /// (`ca.pem`, `server.pem`, `server.key`): `--tls-cert`/`--tls-key` of the dev doubles,
    /// with `ca.pem` in `SAMVAULT_EXTRA_CA_FILE`.
    #[arg(long, conflicts_with_all = ["not_before", "name"])]
    test_ca: bool,
}

/// `samvault dev-keyvault`: the Key Vault double alone, until Ctrl-C or SIGTERM.
pub async fn dev_keyvault(args: DevKeyVaultArgs) -> anyhow::Result<ExitCode> {
    app::init_tracing(config::LogFormat::Text);
    samvault_devkv::run(args, app::shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

/// `samvault dev-idp`: the simulator alone, until Ctrl-C or SIGTERM.
pub async fn dev_idp(args: DevIdpArgs) -> anyhow::Result<ExitCode> {
    app::init_tracing(config::LogFormat::Text);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| anyhow::anyhow!("--listen: cannot listen on {}: {e}", args.listen))?;
    let scheme = if args.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    eprintln!(
        "samvault dev IdP on {scheme}://{} (client id {})",
        listener.local_addr()?,
        devidp::DEMO_CLIENT_ID
    );
    let options = DevIdpOptions {
        generated_tenants: args.tenants,
        generated_customers: args.customers,
        partner_center_latency_ms: args.pc_latency_ms,
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

/// `samvault dev-cert`: the CPV app's self-signed certificate, or a test CA.
pub fn dev_cert(args: DevCertArgs) -> anyhow::Result<ExitCode> {
    let now = now();
    if args.test_ca {
        samvault_devtls::write_test_ca(&args.out, now)?;
        let ca = args.out.join("ca.pem");
        Output::text().line(format_args!(
            "CA: {}\nserver certificate: {}\nserver key: {}\n\nsamvault dev-idp --tls-cert {} --tls-key {}\nSAMVAULT_EXTRA_CA_FILE={} samvault serve",
            ca.display(),
            args.out.join("server.pem").display(),
            args.out.join("server.key").display(),
            args.out.join("server.pem").display(),
            args.out.join("server.key").display(),
            ca.display()
        ));
        return Ok(ExitCode::SUCCESS);
    }
    let (not_before, not_after) = args
        .not_before
        .zip(args.not_after)
        .unwrap_or((now - 60, now + i64::from(args.days) * 86_400));
    let name = args.name.as_deref().unwrap_or(devidp::DEMO_APP_NAME);
    let (cert, key) = samvault_devtls::write_self_signed(&args.out, name, not_before, not_after)?;
    let info = read_certificate(&cert)?;
    Output::text().line(format_args!(
        "certificate: {}\nprivate key: {}\nx5t#S256: {}\n\nsamvault dev-idp --client-cert {}\nSAMVAULT_CLIENT_CERT={} SAMVAULT_CLIENT_KEY_FILE={} samvault serve",
        cert.display(),
        key.display(),
        info.thumbprint_s256(),
        cert.display(),
        cert.display(),
        key.display()
    ));
    Ok(ExitCode::SUCCESS)
}

fn read_certificate(path: &Path) -> anyhow::Result<CertificateInfo> {
    CertificateInfo::from_pem(&std::fs::read_to_string(path)?)
        .map_err(|why| anyhow::anyhow!("{} {why}", path.display()))
}

/// The demo's self-signed app certificate, `samvault-demo-cert/cpv-app.{crt,key}`: made on
/// first use, reused while valid for another day.
fn demo_certificate() -> anyhow::Result<(PathBuf, PathBuf)> {
    let dir = PathBuf::from("samvault-demo-cert");
    let (cert, key) = (dir.join("cpv-app.crt"), dir.join("cpv-app.key"));
    let valid = read_certificate(&cert).is_ok_and(|info| info.not_after > now() + 86_400);
    if valid && key.exists() {
        return Ok((cert, key));
    }
    let now = now();
    samvault_devtls::write_self_signed(&dir, devidp::DEMO_APP_NAME, now - 60, now + 365 * 86_400)
}

/// `samvault demo`: the dev IdP and samvault in one process, wired to each other.
pub async fn demo(args: DemoArgs) -> anyhow::Result<ExitCode> {
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
        generated_customers: args.customers,
        client_certs: certificate.iter().map(|(cert, _)| cert.clone()).collect(),
        ..DevIdpOptions::default()
    };
    let idp = tokio::spawn(devidp::serve(idp_listener, options));

    let (config, app_credential) = demo_config(&args, &idp_url, certificate.as_ref())?;
    let public_url = config.server.public_url.clone();
    let app = App::build(config).await?;
    let resource = config::PARTNER_CENTER;
    let new = NewClient {
        name: "demo integration".into(),
        permissions: vec![Permission::TokensIssue, Permission::PartnersRead],
        resources: app.state.config.entra.resources.clone(),
        partners: None,
        rate_limit_per_minute: 600,
    };
    let (client_id, secret) = create_client(&app.state.db, &new).await?;
    let contoso = devidp::CONTOSO;
    Output::text().line(format_args!(
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
    ));
    tokio::select! {
        result = app.run() => result?,
        result = idp => result??,
    }
    Ok(ExitCode::SUCCESS)
}

/// The demo's configuration (SQLite, a local key file, the dev IdP as the authority) and how
/// the CPV app proves itself, for the banner.
fn demo_config(
    args: &DemoArgs,
    idp_url: &str,
    certificate: Option<&(PathBuf, PathBuf)>,
) -> anyhow::Result<(Config, String)> {
    let database_url = format!("sqlite://{}?mode=rwc", args.database.display());
    let mut env: std::collections::BTreeMap<String, String> =
        std::env::vars().filter(|(k, _)| k == "RUST_LOG").collect();
    for (key, value) in [
        ("DATABASE_URL", database_url.as_str()),
        ("SAMVAULT_LISTEN", &args.listen.to_string()),
        ("SAMVAULT_PUBLIC_URL", &format!("http://{}", args.listen)),
        ("SAMVAULT_AUTHORITY", idp_url),
        ("SAMVAULT_CLIENT_ID", devidp::DEMO_CLIENT_ID),
        ("SAMVAULT_KEY_PROVIDER", "local:samvault-demo.key"),
        // The dev IdP also stands in for Partner Center: after Jane's consent Contoso's
        // customers are listed and the app consented into them (Tailspin: access_denied).
        ("SAMVAULT_PARTNER_CENTER_URL", idp_url),
        (
            "SAMVAULT_CUSTOMER_GRANTS",
            "https://graph.microsoft.com=Directory.Read.All,User.Read.All",
        ),
    ] {
        env.insert(key.into(), value.into());
    }
    let app_credential = match certificate {
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
    Ok((Config::from_sources(None, &env)?, app_credential))
}
