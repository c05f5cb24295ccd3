//! The audit chain's key and outside heads, opened once per process before anything is
//! audited (`serve`, and every CLI command that writes or verifies the log).
//!
//! The key is 256 random bits sealed by the vault in `audit_key`, created by the first process
//! that finds none: entries from then on are MACed with it (`storage::audit`). The first keyed
//! entry's number is bound into the sealed record, and the creation is itself the first keyed
//! entry (`audit.chain_keyed`), so a key replaced by someone who deleted the row shows as a
//! second such entry. A wrong KEK or a tampered record stops the process, as any sealed record
//! that does not open would.

use std::path::PathBuf;

use secrecy::ExposeSecret;

use crate::config::Config;
use crate::notify;
use crate::storage::audit::{self, AnchorState, Chain, ChainKey};
use crate::storage::{Db, StorageError, now};
use crate::vault::{Vault, VaultError};

/// Creating the key loses a race to another process or an append at most this often.
const CREATE_TRIES: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum AuditChainError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("the audit chain's key cannot be opened: {0}")]
    Vault(#[from] VaultError),
    #[error("SAMVAULT_AUDIT_ANCHOR_FILE: {0}")]
    Anchor(String),
    #[error("the audit chain's key could not be stored: entries keep being appended meanwhile")]
    Busy,
}

/// Where the chain's head is kept outside the database.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    /// `SAMVAULT_AUDIT_ANCHOR_FILE`: rewritten at every append.
    pub anchor_file: Option<PathBuf>,
    /// An `audit.checkpoint` webhook event every this many entries (0: none).
    pub checkpoint_every: u64,
}

impl Settings {
    /// From the configuration; checkpoints only when a webhook receiver is configured.
    pub fn from_config(config: &Config) -> Self {
        Self {
            anchor_file: config.audit.anchor_file.clone(),
            checkpoint_every: if config.webhook.url.is_some() {
                config.audit.checkpoint_every
            } else {
                0
            },
        }
    }
}

/// Opens (or, the first time, creates) the audit key and returns `db` able to append to and
/// verify the chain.
pub async fn open(db: Db, vault: &Vault, settings: &Settings) -> Result<Db, AuditChainError> {
    if let Some(path) = &settings.anchor_file {
        check_anchor_path(path)?;
    }
    let (key, first_keyed, created) = open_or_create_key(&db, vault).await?;
    let mut chain = Chain::new(key, first_keyed)
        .with_checkpoints(settings.checkpoint_every, notify::audit_checkpoint_body);
    if let Some(path) = &settings.anchor_file {
        chain = chain.with_anchor(path.clone());
    }
    let db = db.with_audit_chain(chain);
    if created {
        let unkeyed = first_keyed - 1;
        tracing::warn!(
            first_keyed,
            "created the audit chain's key; {unkeyed} earlier entries keep their unkeyed hashes. \
             On a database that had a key, this means someone deleted it: see docs/RUNBOOK.md"
        );
        let detail = serde_json::json!({ "first_seq": first_keyed, "unkeyed_entries": unkeyed });
        audit::append(&db, "samvault", "audit.chain_keyed", None, detail, now()).await?;
    }
    if let Some(AnchorState::Lost(why)) = audit::check_anchor(&db).await? {
        tracing::error!(
            why,
            "the audit log no longer holds the head in SAMVAULT_AUDIT_ANCHOR_FILE: it was cut or \
             rewritten; the anchor is kept as evidence (docs/RUNBOOK.md, \"The audit anchor does not match\")"
        );
    }
    Ok(db)
}

/// The anchor file's directory must exist, and a file already there must be an anchor.
fn check_anchor_path(path: &std::path::Path) -> Result<(), AuditChainError> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    if let Some(dir) = dir
        && !dir.is_dir()
    {
        return Err(AuditChainError::Anchor(format!(
            "directory {} does not exist",
            dir.display()
        )));
    }
    audit::read_anchor(path).map_err(AuditChainError::Anchor)?;
    Ok(())
}

/// The stored key opened, or a new one sealed for the next entry's number: `(key, first keyed
/// entry, created)`.
async fn open_or_create_key(
    db: &Db,
    vault: &Vault,
) -> Result<(ChainKey, i64, bool), AuditChainError> {
    for _ in 0..CREATE_TRIES {
        if let Some(stored) = audit::stored_key(db).await? {
            let context = audit::key_context(stored.first_seq);
            let plain = vault.open(&stored.sealed, &context).await?;
            let key = ChainKey::from_bytes(plain.expose_secret())?;
            return Ok((key, stored.first_seq, false));
        }
        let first_seq = audit::next_seq(db).await?;
        let key = ChainKey::generate();
        let sealed = vault
            .seal(key.expose(), &audit::key_context(first_seq))
            .await?;
        if audit::store_key(db, first_seq, &sealed, now()).await? {
            return Ok((key, first_seq, true));
        }
    }
    Err(AuditChainError::Busy)
}
