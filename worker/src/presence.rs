//! A worker's presence on its host: the heartbeat that keeps the host up in
//! PostgreSQL, and the re-drive that takes up the host's waiting stops when
//! the worker starts consuming (or is back after losing PostgreSQL).
//!
//! While a host is down, the relay and the rescuer leave its stops alone:
//! they wait, accepted and `powering-off`, with no attempt used. So whoever
//! brings the host back must publish them again: its own worker, once its
//! queue exists (a publish before that would be returned, unroutable).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use shutoff_core::broker::Publisher;
use shutoff_core::ids::HostName;
use shutoff_core::store::StoreError;
use shutoff_core::store::rescue::Rescue;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::job_store::JobStore;

const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Jobs handed back per re-drive statement.
const REDRIVE_BATCH: i64 = 500;
/// Longest one heartbeat or one re-drive may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Presence {
    /// The worker's one way into the tables.
    pub store: JobStore,
    pub publisher: Arc<Publisher>,
    pub host: HostName,
    pub interval: Duration,
    /// Set by the consumer while it is attached to the host's queue.
    pub consuming: Arc<AtomicBool>,
    /// Notified by the consumer each time it (re)attaches.
    pub attached: Arc<Notify>,
}

impl Presence {
    /// Beats until `cancel`, while the consumer is attached: a host is up
    /// only while a worker can take its stops. Each time the consumer
    /// attaches, and when a beat succeeds after failing, the host's waiting
    /// stops are taken up first; at the end, the worker leaves the host.
    pub async fn run(self, cancel: CancellationToken) {
        let mut beating = false;
        let mut redrive_due = false;
        loop {
            if self.consuming.load(Ordering::SeqCst) {
                if redrive_due || !beating {
                    // Touched before the beat that makes the host up, so no
                    // rescuer pass sees the stops in its queue as stalled.
                    let done = self.take_up_waiting().await;
                    redrive_due = !done;
                    beating = done;
                } else {
                    beating = self.beat(beating).await;
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = self.attached.notified() => redrive_due = true,
                _ = tokio::time::sleep(self.interval) => {}
            }
        }
        match tokio::time::timeout(Duration::from_secs(5), self.store.leave(&self.host)).await {
            Ok(Ok(())) => tracing::info!(host = %self.host, "left the host"),
            _ => {
                tracing::warn!(host = %self.host, "could not leave the host; it goes down once its heartbeat is old")
            }
        }
    }

    /// One heartbeat; returns whether the host is up now.
    async fn beat(&self, was_up: bool) -> bool {
        let beat = tokio::time::timeout(CALL_TIMEOUT, self.store.beat(&self.host, VERSION)).await;
        match beat {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                if was_up {
                    tracing::warn!(error = %e, host = %self.host, "heartbeat failed");
                }
                false
            }
            Err(_) => {
                if was_up {
                    tracing::warn!(host = %self.host, "heartbeat timed out");
                }
                false
            }
        }
    }

    /// The host comes up: the stops waiting in its queue are touched, the
    /// beat recorded, and the stops the broker never took published. True
    /// when all of it went through.
    async fn take_up_waiting(&self) -> bool {
        let pass = async {
            let before = self.store.db_now().await?;
            let touched = self.store.touch_host(&self.host, before).await?;
            if touched > 0 {
                tracing::info!(host = %self.host, touched, "stops waiting in the host's queue are taken up from there");
            }
            self.store.beat(&self.host, VERSION).await?;
            tracing::info!(host = %self.host, "host is up: heartbeat recorded");
            let (mut published, mut failed) = (0usize, 0usize);
            loop {
                let batch = self
                    .store
                    .redrive(&self.host, before, REDRIVE_BATCH)
                    .await?;
                let n = batch.len();
                for r in batch {
                    match r {
                        Rescue::Republish(job) => match self.publisher.publish(&job).await {
                            Ok(()) => published += 1,
                            // Published in the database with a fresh
                            // updated_at: the rescuer tries again later.
                            Err(e) => {
                                tracing::warn!(error = %e, job.id = %job.job_id, "re-drive could not publish")
                            }
                        },
                        Rescue::Failed(_) => failed += 1,
                    }
                }
                if (n as i64) < REDRIVE_BATCH {
                    return Ok::<_, StoreError>((published, failed));
                }
            }
        };
        match tokio::time::timeout(CALL_TIMEOUT * 4, pass).await {
            Ok(Ok((published, failed))) => {
                if published + failed > 0 {
                    tracing::info!(host = %self.host, published, failed, "re-drove the host's waiting stops");
                }
                true
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "re-drive failed; will retry");
                false
            }
            Err(_) => {
                tracing::warn!("re-drive timed out; will retry");
                false
            }
        }
    }
}
