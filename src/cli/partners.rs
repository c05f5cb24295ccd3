//! `samvault partners`: list partners, import refresh tokens held elsewhere, and purge
//! (crypto-shred) their grants in an emergency.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;
use secrecy::SecretString;
use serde_json::json;

use samvault::app::{self, Services};
use samvault::config::Config;
use samvault::domain::{PartnerStatus, TenantId};
use samvault::storage::partners::{self, Partner};
use samvault::storage::{Db, now, rfc3339};
use samvault::vault::Vault;

use super::audit;
use super::output::{Output, Table};
use super::per_partner::{parse_partner, spawn_each};
use super::shared::organisation_name;

#[derive(Subcommand)]
pub enum Command {
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
    Purge(PurgeOpts),
}

#[derive(clap::Args)]
pub struct PurgeOpts {
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
}

pub async fn run(command: Command, config: Config) -> anyhow::Result<ExitCode> {
    match command {
        Command::List { json } => list(&config, Output::new(json)).await?,
        Command::Import { file } => import(&config, &file).await?,
        Command::Purge(opts) => return purge(opts, config).await,
    }
    Ok(ExitCode::SUCCESS)
}

async fn list(config: &Config, out: Output) -> anyhow::Result<()> {
    let db = app::open_db(config).await?;
    let list = partners::list(&db).await?;
    out.list(&list, partner_json, || {
        let mut table = Table::titled(&[
            ("TENANT ID", 36),
            ("NAME", 24),
            ("STATUS", 18),
            ("LAST REFRESH", 20),
            ("HORIZON", 0),
        ]);
        for p in &list {
            table.row([
                p.tenant_id.as_str(),
                &p.display_name,
                p.status.as_str(),
                &rfc3339(p.last_refresh_at),
                &rfc3339(p.horizon()),
            ]);
        }
        table
    });
    Ok(())
}

fn partner_json(p: &Partner) -> serde_json::Value {
    json!({
        "tenant_id": p.tenant_id, "name": p.display_name, "status": p.status,
        "status_code": p.status_code, "status_reason": p.status_reason,
        "mfa": p.mfa, "last_refresh": rfc3339(p.last_refresh_at),
        "expiry_horizon": rfc3339(p.horizon()),
    })
}

async fn import(config: &Config, file: &Path) -> anyhow::Result<()> {
    let db = app::open_db(config).await?;
    let vault = app::open_vault(config, &db).await?;
    let db = app::audited(db, &vault, config).await?;
    let imported = import_file(&db, &vault, file).await?;
    let detail = json!({ "count": imported });
    audit::record(&db, "partners.import", None, detail).await?;
    Output::text().line(format_args!(
        "imported {imported} partners; each is due for rotation now"
    ));
    Ok(())
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

async fn import_file(db: &Db, vault: &Vault, file: &Path) -> anyhow::Result<u64> {
    let reader: Box<dyn BufRead> = if file.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        let opened = std::fs::File::open(file)
            .map_err(|e| anyhow::anyhow!("--file {}: {e}", file.display()))?;
        Box::new(std::io::BufReader::new(opened))
    };
    let mut count = 0;
    for (index, line) in reader.lines().enumerate() {
        let line = zeroize::Zeroizing::new(line?);
        if line.trim().is_empty() {
            continue;
        }
        import_line(db, vault, &line, index + 1).await?;
        count += 1;
    }
    Ok(count)
}

/// Seals one imported refresh token and records its consent, due for rotation at once.
async fn import_line(db: &Db, vault: &Vault, line: &str, number: usize) -> anyhow::Result<()> {
    // The error names the line, never its content (it holds a refresh token).
    let entry: ImportLine = serde_json::from_str(line).map_err(|e| {
        anyhow::anyhow!(
            "line {number}: not an import record ({:?} error)",
            e.classify()
        )
    })?;
    let tenant =
        TenantId::parse(&entry.tenant_id).map_err(|e| anyhow::anyhow!("line {number}: {e}"))?;
    let (organisation, domain) = organisation_name(&entry.upn);
    let consent = partners::NewConsent {
        tenant_id: tenant,
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
    samvault::onboarding::record_consent(db, vault, &consent, &entry.refresh_token, at, at).await?;
    Ok(())
}

/// `samvault partners purge`: shreds one partner's grants or everyone's, with the same
/// concurrency as rotation; a per-partner failure is reported and the rest carries on.
/// Without `--yes` it only says what it would do, and exits with 2.
async fn purge(opts: PurgeOpts, config: Config) -> anyhow::Result<ExitCode> {
    let tenant = opts.partner.as_deref().map(parse_partner).transpose()?;
    if !opts.yes {
        let whom = if opts.all {
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
    let services = Services::open_beside_server(config).await?;
    let tenants = match tenant {
        Some(tenant) => vec![tenant],
        None => partners::list(&services.db)
            .await?
            .into_iter()
            .map(|p| p.tenant_id)
            .collect(),
    };
    let outcome = shred(&services, tenants, opts.all).await?;
    outcome.audit_and_print(&services.db, opts.all).await
}

/// What a purge did: partners purged, grant versions shredded, and `tenant: code` failures.
#[derive(Default)]
struct PurgeOutcome {
    purged: u64,
    shredded: u64,
    failed: Vec<String>,
}

async fn shred(
    services: &Services,
    tenants: Vec<TenantId>,
    all: bool,
) -> anyhow::Result<PurgeOutcome> {
    let reason = if all {
        "Purged with every other partner by `samvault partners purge --all`. The partner must consent again."
    } else {
        "Purged by `samvault partners purge`. The partner must consent again."
    };
    let broker = services.broker.clone();
    let concurrency = services.config.rotation.concurrency;
    let mut set = spawn_each(tenants, concurrency, move |tenant| {
        let broker = broker.clone();
        async move {
            broker
                .purge(&tenant, PartnerStatus::ReconsentRequired, reason)
                .await
        }
    });
    let mut outcome = PurgeOutcome::default();
    while let Some(joined) = set.join_next().await {
        match joined? {
            (tenant, Ok(n)) => {
                outcome.purged += 1;
                outcome.shredded += n;
                // An event per partner; --all records one for the whole purge instead.
                if !all {
                    let detail = json!({ "shredded": n });
                    let tenant = Some(tenant.as_str());
                    audit::record(&services.db, "partners.purge", tenant, detail).await?;
                }
            }
            (tenant, Err(e)) => outcome.failed.push(format!("{tenant}: {}", e.code())),
        }
    }
    Ok(outcome)
}

impl PurgeOutcome {
    async fn audit_and_print(self, db: &Db, all: bool) -> anyhow::Result<ExitCode> {
        let (purged, shredded) = (self.purged, self.shredded);
        if all {
            let detail =
                json!({ "partners": purged, "shredded": shredded, "failed": self.failed.len() });
            audit::record(db, "partners.purge_all", None, detail).await?;
        }
        Output::text().line(format_args!(
            "purged {purged} partner(s): {shredded} sealed grant version(s) crypto-shredded; each must consent again"
        ));
        for failure in &self.failed {
            eprintln!("not purged: {failure} (run the command again)");
        }
        Ok(if self.failed.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    }
}
