//! The rescuer: no accepted stop stays unfinished because a message or a
//! process was lost. It runs in every API process (and in a worker only when
//! asked, `--rescuer`): one pass every interval per process, however many
//! hosts there are. The store's `FOR UPDATE SKIP LOCKED` + compare-and-swap
//! makes several at once safe. It leaves hosts that are down alone; their
//! workers re-drive their own stops when they start.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::broker::Publisher;
use crate::store::rescue::{self, Rescue};

pub struct Rescuer {
    pub pool: PgPool,
    pub publisher: Arc<Publisher>,
    /// How long a job may sit unmoved before it is rescued.
    pub stale_after: Duration,
    pub interval: Duration,
    /// A host none of whose workers beat for this long is down.
    pub host_down_after: Duration,
    /// Recorded as the host of a failure the rescuer writes.
    pub host: String,
}

impl Rescuer {
    /// One pass: returns how many jobs were republished and failed.
    pub async fn run_once(&self) -> Result<(usize, usize), sqlx::Error> {
        let rescued = rescue::rescue(
            &self.pool,
            self.stale_after,
            self.host_down_after,
            &self.host,
            500,
        )
        .await?;
        let (mut republished, mut failed) = (0, 0);
        for r in rescued {
            match r {
                Rescue::Republish(job) => {
                    let span = tracing::info_span!("rescue", request_id = %job.request_id, job.id = %job.job_id);
                    match self.publisher.publish(&job).instrument(span).await {
                        Ok(()) => republished += 1,
                        // Still `published` in the database with a fresh
                        // updated_at: the next pass after the deadline tries again.
                        Err(e) => tracing::warn!(error = %e, "rescuer could not republish"),
                    }
                }
                Rescue::Failed(id) => {
                    tracing::warn!(job.id = %id, "rescuer failed a job that ran out of attempts");
                    failed += 1;
                }
            }
        }
        if republished + failed > 0 {
            tracing::info!(republished, failed, "rescuer pass");
        }
        Ok((republished, failed))
    }

    pub async fn run(self, cancel: CancellationToken) {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(self.interval) => {}
            }
            // A pass on a half-dead database or broker must not stall the rescuer.
            match tokio::time::timeout(Duration::from_secs(60), self.run_once()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::debug!(error = %e, "rescuer pass failed; will retry"),
                Err(_) => tracing::warn!("rescuer pass timed out; will retry"),
            }
        }
    }
}
