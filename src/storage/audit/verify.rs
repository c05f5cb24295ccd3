//! `samvault audit verify` and the dashboard's "Verify chain": the whole log walked page by
//! page, each entry checked against its MAC (or, before the key existed, its plain hash) and
//! its link, then against the heads kept outside the database.

use super::anchor::{self, Head};
use super::chain::{Chain, Fields};
use super::{ChainRow, EventRow, GENESIS};
use crate::storage::{Db, StorageError};

/// Rows per read while verifying: the walk holds one page in memory, not the whole log.
const VERIFY_PAGE: i64 = 1000;

/// A log that verifies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    pub entries: u64,
    /// The first entry chained under the audit key; those before it have plain hashes.
    pub first_keyed: i64,
    /// The heads kept outside the database that the log was found to hold.
    pub heads: Vec<Head>,
}

/// Why a log does not verify: the first problem found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Broken {
    /// This entry does not match its MAC or its place in the chain: it, or the one before
    /// it, was changed, removed or inserted after it was written.
    Entry(i64),
    /// A head kept outside the database names entry `head`, but the log ends at `last`: the
    /// entries after `last` were cut off.
    Cut { head: i64, last: i64 },
    /// The log holds entry `head` with another MAC than the head kept outside the database:
    /// it was rewritten from there (or the anchor is not this log's).
    Rewritten { head: i64 },
    /// The anchor file is configured but unusable (missing while keyed entries exist,
    /// unreadable, or not an anchor).
    Anchor(String),
}

/// Walks the whole chain and compares it with `heads` (checkpoints from webhook events) and
/// the anchor file. Reads pages of [`VERIFY_PAGE`] rows through the read connections, so a
/// long log neither fills memory nor holds SQLite's single writer connection; rows appended
/// during the walk are simply walked too.
pub async fn verify(db: &Db, heads: &[Head]) -> Result<Result<Verified, Broken>, StorageError> {
    let chain = db.audit_chain().ok_or(StorageError::NoAuditKey)?;
    let mut heads = heads.to_vec();
    let anchor = match chain.anchor_file().map(anchor::read).transpose() {
        Ok(anchor) => anchor.flatten(),
        Err(why) => return Ok(Err(Broken::Anchor(why))),
    };
    heads.extend(anchor.clone());
    let last = match walk(db, chain, &heads).await? {
        Ok(last) => last,
        Err(broken) => return Ok(Err(broken)),
    };
    if let Some(head) = heads.iter().filter(|h| h.seq > last).max_by_key(|h| h.seq) {
        return Ok(Err(Broken::Cut {
            head: head.seq,
            last,
        }));
    }
    if let Some(path) = chain.anchor_file()
        && anchor.is_none()
        && last >= chain.first_keyed()
    {
        return Ok(Err(Broken::Anchor(format!(
            "{} does not exist, yet the log holds entries chained under the key",
            path.display()
        ))));
    }
    heads.sort_by_key(|h| h.seq);
    heads.dedup();
    Ok(Ok(Verified {
        entries: last as u64,
        first_keyed: chain.first_keyed(),
        heads,
    }))
}

/// Checks every entry in order; returns the last entry's number, or the first problem.
async fn walk(db: &Db, chain: &Chain, heads: &[Head]) -> Result<Result<i64, Broken>, StorageError> {
    let mut prev = GENESIS.to_string();
    let mut expected_seq: i64 = 1;
    loop {
        let rows: Vec<ChainRow> = sqlx::query_as(
            "SELECT seq, at, actor, action, tenant_id, detail, prev_hash, hash FROM audit_log \
             WHERE seq >= $1 ORDER BY seq LIMIT $2",
        )
        .bind(expected_seq)
        .bind(VERIFY_PAGE)
        .fetch_all(db.reader())
        .await?;
        let page = rows.len() as i64;
        for row in rows {
            let seq = row.event.seq;
            if seq != expected_seq || row.prev_hash != prev {
                return Ok(Err(Broken::Entry(seq)));
            }
            if row.hash != chain.expected(&prev, &fields(&row.event)) {
                return Ok(Err(Broken::Entry(seq)));
            }
            if heads.iter().any(|h| h.seq == seq && h.mac != row.hash) {
                return Ok(Err(Broken::Rewritten { head: seq }));
            }
            prev = row.hash;
            expected_seq += 1;
        }
        if page < VERIFY_PAGE {
            return Ok(Ok(expected_seq - 1));
        }
    }
}

fn fields(event: &EventRow) -> Fields<'_> {
    Fields {
        seq: event.seq,
        at: event.at,
        actor: &event.actor,
        action: &event.action,
        tenant: event.tenant_id.as_deref(),
        detail: &event.detail,
    }
}
