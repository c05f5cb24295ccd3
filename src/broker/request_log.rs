//! The token request log, written off the hot path: handlers hand records to a bounded
//! channel and a background task inserts them in batches, so logging never adds a database
//! round trip to a cached response. If the database falls behind by more than the channel
//! holds, records are dropped and counted rather than slowing integrations down.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::storage::Db;
use crate::storage::requests::{self, RequestRecord};

/// Records buffered between the handlers and the writer.
const CAPACITY: usize = 50_000;
/// Largest batch one INSERT carries.
const BATCH: usize = 500;
/// How long a record may wait for companions before its batch is written.
const LINGER: Duration = Duration::from_millis(200);

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
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        if rx.recv_many(&mut batch, BATCH).await == 0 {
            return;
        }
        // Give a burst a moment to fill the batch: one INSERT instead of many.
        if batch.len() < BATCH {
            let _ = tokio::time::timeout(LINGER, async {
                while batch.len() < BATCH {
                    let room = BATCH - batch.len();
                    if rx.recv_many(&mut batch, room).await == 0 {
                        break;
                    }
                }
            })
            .await;
        }
        let mut attempt = 0;
        while let Err(e) = requests::insert_batch(&db, &batch).await {
            attempt += 1;
            if attempt >= 5 {
                tracing::error!(error = %e, records = batch.len(), "token request log batch lost");
                break;
            }
            tracing::warn!(error = %e, "token request log write failed; retrying");
            tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
        }
        batch.clear();
    }
}
