//! The worker's hot statements — claiming a job, renewing its lease and
//! recording its success — group-committed: concurrent jobs of this worker share one
//! statement and one commit (see [`shutoff_core::batch`]). Each job still
//! gets its own answer, decided by the same conditional UPDATE as before, so
//! a batch changes how many commits a stop costs, not who decides it.

use std::time::Duration;

use shutoff_core::batch::{self, BatchError, Batcher};
use shutoff_core::message::StopJob;
use shutoff_core::store::jobs;
use shutoff_core::store::jobs::{Claim, ClaimedJob, Success};
use sqlx::PgPool;

/// Most items in one statement.
const MAX_BATCH: usize = 256;
/// Batches of one kind running at once. One, so that the next batch gathers
/// while this one runs: each statement costs PostgreSQL a fixed third of a
/// millisecond or so, and end to end the worker's statements were the
/// biggest share of the machine's CPU. A job waits a little longer for its
/// record; its power-off is not held up.
const IN_FLIGHT: usize = 1;

#[derive(Clone)]
pub struct JobStore {
    claims: Batcher<StopJob, Claim>,
    successes: Batcher<Success, bool>,
    leases: Batcher<ClaimedJob, bool>,
}

impl JobStore {
    /// Claims and successes wait up to `linger` for company (see the
    /// worker's `--batch-linger-ms`); lease renewals go at once.
    pub fn new(pool: PgPool, worker_id: String, lease: Duration, linger: Duration) -> Self {
        let p = pool.clone();
        let claims =
            Batcher::spawn_lingering(MAX_BATCH, IN_FLIGHT, linger, move |batch: Vec<StopJob>| {
                let (pool, worker) = (p.clone(), worker_id.clone());
                async move {
                    batch::all_or_each(&batch, |items| {
                        jobs::claim_many(&pool, items, &worker, lease)
                    })
                    .await
                }
            });
        let p = pool.clone();
        // A lost heartbeat is retried at the next beat, well within the
        // lease, so a failed batch just answers "failed" to each job.
        let leases = Batcher::spawn(MAX_BATCH, IN_FLIGHT, move |batch: Vec<ClaimedJob>| {
            let pool = p.clone();
            async move {
                match jobs::heartbeat_many(&pool, &batch, lease).await {
                    Ok(renewed) => renewed.into_iter().map(Ok).collect(),
                    Err(e) => BatchError::for_all(batch.len(), &e),
                }
            }
        });
        let successes = Batcher::spawn_lingering(
            MAX_BATCH,
            IN_FLIGHT,
            linger,
            move |batch: Vec<Success>| {
                let pool = pool.clone();
                async move { batch::all_or_each(&batch, |items| jobs::succeed_many(&pool, items)).await }
            },
        );
        JobStore {
            claims,
            successes,
            leases,
        }
    }

    pub async fn claim(&self, message: &StopJob) -> Result<Claim, sqlx::Error> {
        self.claims
            .call(message.clone())
            .await
            .map_err(BatchError::into_sqlx)
    }

    /// Extends the lease of a job we hold; false if we lost it.
    pub async fn heartbeat(&self, job: &ClaimedJob) -> Result<bool, sqlx::Error> {
        self.leases
            .call(job.clone())
            .await
            .map_err(BatchError::into_sqlx)
    }

    pub async fn succeed(&self, success: Success) -> Result<bool, sqlx::Error> {
        self.successes
            .call(success)
            .await
            .map_err(BatchError::into_sqlx)
    }
}
