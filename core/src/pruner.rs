//! Periodic retention (`--retention`): the same pruning as `shutoff-admin
//! prune`, run by the API every `--retention-interval-secs`. Several API
//! processes may run it at once: each batch locks only the rows it removes
//! and skips the ones another holds.

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::store::prune::{self, NO_ARCHIVE};

/// Stops per batch: small, so a batch holds its locks for milliseconds.
const BATCH: i64 = 500;

pub struct Pruner {
    pub pool: PgPool,
    /// Finished stops older than this go.
    pub retention: Duration,
    pub interval: Duration,
}

impl Pruner {
    /// One pass; returns how many rows were removed.
    pub async fn run_once(&self) -> anyhow::Result<i64> {
        let cutoff = chrono::Utc::now() - chrono::Duration::from_std(self.retention)?;
        let pruned = prune::prune(&self.pool, cutoff, BATCH, None, NO_ARCHIVE, |_| {}).await?;
        if pruned.total() > 0 {
            tracing::info!(
                jobs = pruned.jobs,
                rows = pruned.total(),
                dead_letters = pruned.dead_letters,
                "pruned finished stops past the retention"
            );
        }
        Ok(pruned.total())
    }

    pub async fn run(self, cancel: CancellationToken) {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                r = self.run_once() => if let Err(e) = r {
                    tracing::warn!(error = %e, "pruning failed; will retry");
                },
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(self.interval) => {}
            }
        }
    }
}
