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

use tokio::sync::mpsc;

use crate::storage::Db;
use crate::storage::requests::{self, RequestBatch, RequestRecord};

/// Records buffered between the handlers and the writer.
const CAPACITY: usize = 100_000;
/// How long records gather before they are written.
const LINGER: Duration = Duration::from_millis(1000);
/// Records taken from the channel at a time (then the writer lets requests run).
const TAKE: usize = 1024;

#[derive(Clone)]
pub struct RequestLog {
    tx: mpsc::Sender<RequestRecord>,
    dropped: Arc<AtomicU64>,
}

impl RequestLog {
    /// Starts the writer; it ends (after writing what it holds) when every `RequestLog`
    /// clone is dropped.
    pub fn spawn(db: Db) -> (RequestLog, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(CAPACITY);
        let handle = tokio::spawn(write_batches(db, rx));
        (
            RequestLog {
                tx,
                dropped: Arc::default(),
            },
            handle,
        )
    }

    /// Never waits: a full buffer drops the record (and counts it).
    pub fn record(&self, record: RequestRecord) {
        if self.tx.try_send(record).is_err() {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::warn!(dropped = n, "token request log is behind; records dropped");
            }
        }
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

async fn write_batches(db: Db, mut rx: mpsc::Receiver<RequestRecord>) {
    let mut taken = Vec::with_capacity(TAKE);
    loop {
        if rx.recv_many(&mut taken, TAKE).await == 0 {
            return;
        }
        let mut batch = RequestBatch::default();
        let mut open = true;
        let deadline = tokio::time::Instant::now() + LINGER;
        loop {
            for record in taken.drain(..) {
                batch.push(record);
            }
            match tokio::time::timeout_at(deadline, rx.recv_many(&mut taken, TAKE)).await {
                Ok(0) => {
                    open = false;
                    break;
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        let mut attempt = 0;
        while let Err(e) = requests::write_batch(&db, &batch).await {
            attempt += 1;
            if attempt >= 5 {
                tracing::error!(error = %e, requests = batch.requests(), "token request log batch lost");
                break;
            }
            tracing::warn!(error = %e, "token request log write failed; retrying");
            tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
        }
        if !open {
            return;
        }
    }
}
