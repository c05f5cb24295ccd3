//! `samvault customers`: the partners' customers (REFERENCE §6). Works beside a running `serve`
//! (also on SQLite): claims in the database keep the two from pushing one customer at once,
//! and every Partner Center call waits for its turn in the 50-a-second budget.

use std::collections::BTreeMap;
use std::process::ExitCode;

use clap::Subcommand;
use serde_json::json;

use samvault::app::Services;
use samvault::config::Config;
use samvault::domain::{CustomerStatus, TenantId};
use samvault::storage::customers::{self as store, CustomerRow};
use samvault::storage::{Db, now, rfc3339};

use super::output::{Output, Table, parenthesised};
use super::per_partner::parse_partner;

#[derive(Subcommand)]
pub enum Command {
    /// Read partners' customer lists from Partner Center; vanished customers become gone.
    Sync(Which),
    /// A partner's customers and where the CPV app stands in each.
    List {
        #[arg(long, value_name = "TENANT_ID")]
        partner: String,
        #[arg(long)]
        json: bool,
    },
    /// Push SAMVAULT_CUSTOMER_GRANTS into customer tenants now (failed, removed and
    /// unconsented ones too); consented ones with the same grants are left alone.
    Consent(ConsentOpts),
    /// Remove the CPV app's consent from one customer tenant.
    Remove {
        #[arg(long, value_name = "TENANT_ID")]
        partner: String,
        #[arg(long, value_name = "TENANT_ID")]
        customer: String,
    },
}

#[derive(clap::Args)]
#[group(required = true, multiple = false)]
pub struct Which {
    /// One partner.
    #[arg(long, value_name = "TENANT_ID")]
    partner: Option<String>,
    /// Every usable partner.
    #[arg(long)]
    all: bool,
}

#[derive(clap::Args)]
pub struct ConsentOpts {
    /// One partner.
    #[arg(
        long,
        value_name = "TENANT_ID",
        required_unless_present = "all",
        conflicts_with = "all"
    )]
    partner: Option<String>,
    /// One customer of that partner (default: all of them).
    #[arg(long, value_name = "TENANT_ID", requires = "partner")]
    customer: Option<String>,
    /// Every customer of every usable partner.
    #[arg(long)]
    all: bool,
}

/// Fails when a sync, push or removal failed, so a script notices.
pub async fn run(command: Command, config: Config) -> anyhow::Result<ExitCode> {
    if let Command::List { partner, json } = &command {
        let db = samvault::app::open_db(&config).await?;
        list(&db, &parse_partner(partner)?, Output::new(*json)).await?;
        return Ok(ExitCode::SUCCESS);
    }
    let services = Services::open_beside_server(config).await?;
    match command {
        Command::Sync(which) => sync(&services, which).await,
        Command::Consent(opts) => consent(&services, opts).await,
        Command::Remove { partner, customer } => {
            let partner = parse_partner(&partner)?;
            let customer =
                TenantId::parse(&customer).map_err(|e| anyhow::anyhow!("--customer: {e}"))?;
            services
                .customers
                .remove(&partner, &customer, "cli")
                .await?;
            Output::text().line(format_args!(
                "removed the CPV app's consent from customer {customer} of {partner}"
            ));
            Ok(ExitCode::SUCCESS)
        }
        Command::List { .. } => unreachable!("answered above"),
    }
}

async fn partners(services: &Services, partner: Option<&str>) -> anyhow::Result<Vec<TenantId>> {
    Ok(match partner {
        Some(p) => vec![parse_partner(p)?],
        None => samvault::storage::rotation::usable_tenants(&services.db, None).await?,
    })
}

async fn sync(services: &Services, which: Which) -> anyhow::Result<ExitCode> {
    let mut failed = 0;
    for partner in partners(services, which.partner.as_deref()).await? {
        match services.customers.sync(&partner, "cli").await {
            Ok(r) => Output::text().line(format_args!(
                "{partner}: {} customers listed, {} new, {} gone",
                r.listed, r.new, r.gone
            )),
            Err(e) => {
                failed += 1;
                eprintln!("{partner}: sync failed: {e}");
            }
        }
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn consent(services: &Services, opts: ConsentOpts) -> anyhow::Result<ExitCode> {
    let customer = opts
        .customer
        .as_deref()
        .map(TenantId::parse)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--customer: {e}"))?;
    let mut failed = false;
    for partner in partners(services, opts.partner.as_deref()).await? {
        let scheduled =
            store::schedule_consent(&services.db, &partner, customer.as_ref(), now()).await?;
        if scheduled == 0 && customer.is_some() {
            anyhow::bail!(
                "--customer: not a known customer of {partner} (run `samvault customers sync` first)"
            );
        }
        services.customers.push_due(&partner, "cli").await?;
        failed |= print_outcome(&services.db, &partner, customer.as_ref()).await?;
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// One line per partner: customers by status, and the reasons of failed pushes (on
/// stderr). True when a push failed.
async fn print_outcome(
    db: &Db,
    partner: &TenantId,
    customer: Option<&TenantId>,
) -> anyhow::Result<bool> {
    let rows: Vec<CustomerRow> = all_customers(db, partner)
        .await?
        .into_iter()
        .filter(|r| customer.is_none_or(|c| *c == r.customer_tenant_id))
        .filter(|r| r.status != CustomerStatus::Gone)
        .collect();
    let mut counts: BTreeMap<CustomerStatus, usize> = BTreeMap::new();
    for row in &rows {
        *counts.entry(row.status).or_default() += 1;
    }
    let detail: Vec<String> = counts.iter().map(|(s, n)| format!("{s}: {n}")).collect();
    Output::text().line(format_args!(
        "{partner}: {} customers{}",
        rows.len(),
        parenthesised(&detail)
    ));
    let failed: Vec<&CustomerRow> = rows
        .iter()
        .filter(|r| r.status == CustomerStatus::ConsentFailed)
        .collect();
    for row in &failed {
        eprintln!(
            "{}: consent_failed: {}",
            row.customer_tenant_id,
            row.reason.as_deref().unwrap_or("")
        );
    }
    Ok(!failed.is_empty())
}

/// Every customer of `partner`, page by page.
async fn all_customers(db: &Db, partner: &TenantId) -> anyhow::Result<Vec<CustomerRow>> {
    let mut all: Vec<CustomerRow> = Vec::new();
    loop {
        let after = all.last().map(|r| r.customer_tenant_id.clone());
        let page = store::list(db, partner, after.as_ref(), 1000).await?;
        let more = page.len() == 1000;
        all.extend(page);
        if !more {
            return Ok(all);
        }
    }
}

async fn list(db: &Db, partner: &TenantId, out: Output) -> anyhow::Result<()> {
    let rows = all_customers(db, partner).await?;
    out.list(&rows, customer_json, || {
        let mut table = Table::titled(&[
            ("CUSTOMER TENANT ID", 36),
            ("NAME", 24),
            ("DOMAIN", 24),
            ("STATUS", 14),
            ("REASON", 0),
        ]);
        for r in &rows {
            table.row([
                r.customer_tenant_id.as_str(),
                &r.name,
                r.domain.as_deref().unwrap_or("-"),
                r.status.as_str(),
                r.reason.as_deref().unwrap_or(""),
            ]);
        }
        table
    });
    Ok(())
}

fn customer_json(r: &CustomerRow) -> serde_json::Value {
    json!({
        "customer_tenant_id": r.customer_tenant_id.as_str(),
        "pc_customer_id": r.pc_customer_id,
        "name": r.name,
        "domain": r.domain,
        "status": r.status.as_str(),
        "reason": r.reason,
        "grants": r.grants_applied,
        "first_seen": rfc3339(r.first_seen_at),
        "last_seen": rfc3339(r.last_seen_at),
        "status_changed": rfc3339(r.status_changed_at),
        "last_token": r.last_token_at.map(rfc3339),
        "consent_failures": r.consent_failures,
        "next_consent": r.next_consent_at.map(rfc3339),
    })
}
