//! The token request log, written off the hot path: handlers hand records to a bounded
//! channel and a background task writes them about once a second, so logging never adds a
//! database round trip to a cached response. Every request is counted; only the newest
//! [`RECENT`](crate::storage::requests::RECENT) are kept as rows, so under heavy load one
//! write carries at most that many rows whatever the request rate. If the database falls
//! behind by more than the channel holds, records are dropped and counted rather than
//! slowing integrations down.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::storage::Db;
use crate::storage::requests::{self, RequestBatch, RequestRecord};

/// Records buffered between the handlers and the writer.
const CAPACITY: usize = 100_000;
/// How long records gather before they are written.
const LINGER: Duration = Duration::from_millis(1000);
/// Records taken from the channel at a time (then the writer lets requests run).
const TAKE: usize = 1024;

/// Cheap to clone (one reference count): every request holds one through the app state.
#[derive(Clone)]
pub struct RequestLog(Arc<Handles>);

struct Handles {
    tx: mpsc::Sender<RequestRecord>,
    dropped: AtomicU64,
    /// Dropped with the last `RequestLog`: tells the writer, asleep while a batch gathers,
    /// to write it now rather than at the end of the linger.
    _open: oneshot::Sender<()>,
}

impl RequestLog {
    /// Starts the writer; it ends (after writing what it holds) when every `RequestLog`
    /// clone is dropped.
    pub fn spawn(db: Db) -> (RequestLog, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(CAPACITY);
        let (open, closed) = oneshot::channel();
        let handle = tokio::spawn(write_batches(db, rx, closed));
        let handles = Handles {
            tx,
            dropped: AtomicU64::default(),
            _open: open,
        };
        (RequestLog(Arc::new(handles)), handle)
    }

    /// Never waits: a full buffer drops the record (and counts it).
    pub fn record(&self, record: RequestRecord) {
        if self.0.tx.try_send(record).is_err() {
            let n = self.0.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::warn!(dropped = n, "token request log is behind; records dropped");
            }
        }
    }

    pub fn dropped(&self) -> u64 {
        self.0.dropped.load(Ordering::Relaxed)
    }
}

/// One wake-up per batch, not per request: the writer waits on the channel only for a
/// batch's first record, then sleeps while the batch gathers. Nobody waits on the channel
/// then, so a handler's `record` wakes no task and no thread.
async fn write_batches(
    db: Db,
    mut rx: mpsc::Receiver<RequestRecord>,
    mut closed: oneshot::Receiver<()>,
) {
    let mut taken = Vec::with_capacity(TAKE);
    loop {
        if rx.recv_many(&mut taken, TAKE).await == 0 {
            return;
        }
        let closing = tokio::select! {
            _ = tokio::time::sleep(LINGER) => false,
            _ = &mut closed => true,
        };
        let mut batch = RequestBatch::default();
        loop {
            for record in taken.drain(..) {
                batch.push(record);
            }
            if rx.is_empty() {
                break;
            }
            // Returns at once (records are waiting), yielding now and then to requests.
            rx.recv_many(&mut taken, TAKE).await;
        }
        write(&db, &batch).await;
        if closing {
            return;
        }
    }
}

/// Writes a batch, retrying a few times before giving it up (and saying so).
async fn write(db: &Db, batch: &RequestBatch) {
    let mut attempt = 0;
    while let Err(e) = requests::write_batch(db, batch).await {
        attempt += 1;
        if attempt >= 5 {
            tracing::error!(error = %e, requests = batch.requests(), "token request log batch lost");
            return;
        }
        tracing::warn!(error = %e, "token request log write failed; retrying");
        tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(n: i64) -> RequestRecord {
        RequestRecord {
            at: 1_700_000_000 + n,
            client_id: "c".into(),
            tenant_id: "6f3a2a5e-0c1d-4a3b-8f4e-1c2d3e4f5a01".into(),
            customer_tenant_id: None,
            resource: "https://graph.microsoft.com".into(),
            purpose: "p".into(),
            outcome: "issued".into(),
            cached: true,
            mfa: Some(true),
        }
    }

    /// Dropping the last handle writes what was recorded at once, not after the linger.
    #[tokio::test]
    async fn the_last_handle_gone_flushes_without_waiting_for_the_linger() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/t.db?mode=rwc", dir.path().display());
        let db = Db::connect(&secrecy::SecretString::from(url))
            .await
            .unwrap();
        db.migrate().await.unwrap();
        let (log, writer) = RequestLog::spawn(db.clone());
        for n in 0..3 {
            log.clone().record(record(n));
        }
        drop(log);
        tokio::time::timeout(LINGER / 2, writer)
            .await
            .expect("written before the linger ends")
            .unwrap();
        let recent = requests::latest(&db, 10).await.unwrap();
        assert_eq!(recent.len(), 3);
    }
}
