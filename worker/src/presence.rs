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
use shutoff_core::store::hosts;
use shutoff_core::store::rescue::{self, Rescue};
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Jobs handed back per re-drive statement.
const REDRIVE_BATCH: i64 = 500;
/// Longest one heartbeat or one re-drive may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Presence {
    pub pool: PgPool,
    pub publisher: Arc<Publisher>,
    pub host: HostName,
    pub worker_id: String,
    pub interval: Duration,
    /// Set by the consumer while it is attached to the host's queue.
    pub consuming: Arc<AtomicBool>,
    /// Notified by the consumer each time it (re)attaches.
    pub attached: Arc<Notify>,
}

impl Presence {
    /// Beats until `cancel`, re-driving when the consumer attaches and when
    /// a beat succeeds after failing; at the end, leaves the host.
    pub async fn run(self, cancel: CancellationToken) {
        let version = env!("CARGO_PKG_VERSION");
        let mut beating = false;
        let mut redrive_due = false;
        loop {
            let beat = tokio::time::timeout(
                CALL_TIMEOUT,
                hosts::beat(&self.pool, &self.host, &self.worker_id, version),
            )
            .await;
            match beat {
                Ok(Ok(())) => {
                    if !beating {
                        tracing::info!(host = %self.host, "host is up: heartbeat recorded");
                        // Back after an outage of PostgreSQL: the host may
                        // have counted as down meanwhile.
                        redrive_due = true;
                    }
                    beating = true;
                }
                Ok(Err(e)) => {
                    if beating {
                        tracing::warn!(error = %e, host = %self.host, "heartbeat failed");
                    }
                    beating = false;
                }
                Err(_) => {
                    if beating {
                        tracing::warn!(host = %self.host, "heartbeat timed out");
                    }
                    beating = false;
                }
            }
            if redrive_due && beating && self.consuming.load(Ordering::SeqCst) {
                redrive_due = !self.redrive().await;
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = self.attached.notified() => redrive_due = true,
                _ = tokio::time::sleep(self.interval) => {}
            }
        }
        match tokio::time::timeout(
            Duration::from_secs(5),
            hosts::leave(&self.pool, &self.host, &self.worker_id),
        )
        .await
        {
            Ok(Ok(())) => tracing::info!(host = %self.host, "left the host"),
            _ => {
                tracing::warn!(host = %self.host, "could not leave the host; it goes down once its heartbeat is old")
            }
        }
    }

    /// Publishes the stops of this host the broker never took; true when done.
    async fn redrive(&self) -> bool {
        let pass = async {
            let before = rescue::db_now(&self.pool).await?;
            let touched = rescue::touch_host(&self.pool, &self.host, before).await?;
            if touched > 0 {
                tracing::info!(host = %self.host, touched, "stops waiting in the host's queue are taken up from there");
            }
            let (mut published, mut failed) = (0usize, 0usize);
            loop {
                let batch = rescue::redrive(
                    &self.pool,
                    &self.host,
                    before,
                    &self.worker_id,
                    REDRIVE_BATCH,
                )
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
                    return Ok::<_, sqlx::Error>((published, failed));
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
