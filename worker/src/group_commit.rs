//! The worker's two hot statements — claiming a job and recording its
//! success — group-committed: concurrent jobs of this worker share one
//! statement and one commit (see [`shutoff_core::batch`]). Each job still
//! gets its own answer, decided by the same conditional UPDATE as before, so
//! a batch changes how many commits a stop costs, not who decides it.

use std::time::Duration;

use shutoff_core::batch::{BatchError, Batcher};
use shutoff_core::message::StopJob;
use shutoff_core::store::jobs::{Claim, Success};
use shutoff_core::store::{self, jobs};
use sqlx::PgPool;

/// Most items in one statement.
const MAX_BATCH: usize = 256;
/// Batches of one kind running at once (so one slow commit does not stall the
/// next batch, and a pool of a few connections is enough).
const IN_FLIGHT: usize = 2;

#[derive(Clone)]
pub struct JobStore {
    claims: Batcher<StopJob, Claim>,
    successes: Batcher<Success, bool>,
}

impl JobStore {
    pub fn new(pool: PgPool, worker_id: String, lease: Duration) -> Self {
        let p = pool.clone();
        let claims = Batcher::spawn(MAX_BATCH, IN_FLIGHT, move |batch: Vec<StopJob>| {
            let (pool, worker) = (p.clone(), worker_id.clone());
            async move {
                match jobs::claim_many(&pool, &batch, &worker, lease).await {
                    Ok(claims) => claims.into_iter().map(Ok).collect(),
                    Err(e) if batch.len() == 1 || store::is_unavailable(&e) => {
                        fail_all(batch.len(), &e)
                    }
                    // One bad item must not fail its neighbours: one by one.
                    Err(_) => {
                        let mut out = Vec::with_capacity(batch.len());
                        for m in &batch {
                            out.push(
                                jobs::claim(&pool, m, &worker, lease)
                                    .await
                                    .map_err(|e| failed(&e)),
                            );
                        }
                        out
                    }
                }
            }
        });
        let successes = Batcher::spawn(MAX_BATCH, IN_FLIGHT, move |batch: Vec<Success>| {
            let pool = pool.clone();
            async move {
                match jobs::succeed_many(&pool, &batch).await {
                    Ok(recorded) => recorded.into_iter().map(Ok).collect(),
                    Err(e) if batch.len() == 1 || store::is_unavailable(&e) => {
                        fail_all(batch.len(), &e)
                    }
                    Err(_) => {
                        let mut out = Vec::with_capacity(batch.len());
                        for s in &batch {
                            out.push(
                                jobs::succeed_many(&pool, std::slice::from_ref(s))
                                    .await
                                    .map(|r| r[0])
                                    .map_err(|e| failed(&e)),
                            );
                        }
                        out
                    }
                }
            }
        });
        JobStore { claims, successes }
    }

    pub async fn claim(&self, message: &StopJob) -> Result<Claim, sqlx::Error> {
        self.claims.call(message.clone()).await.map_err(to_sqlx)
    }

    pub async fn succeed(&self, success: Success) -> Result<bool, sqlx::Error> {
        self.successes.call(success).await.map_err(to_sqlx)
    }
}

fn failed(e: &sqlx::Error) -> BatchError {
    BatchError::Failed {
        message: e.to_string(),
        unavailable: store::is_unavailable(e),
    }
}

fn fail_all<T>(n: usize, e: &sqlx::Error) -> Vec<Result<T, BatchError>> {
    (0..n).map(|_| Err(failed(e))).collect()
}

/// Back into the error kind the callers' retry loop understands: an
/// unreachable database stays "unavailable" (retried with back-off).
fn to_sqlx(e: BatchError) -> sqlx::Error {
    match e {
        BatchError::Failed {
            unavailable: true, ..
        } => sqlx::Error::PoolTimedOut,
        other => sqlx::Error::Protocol(other.to_string()),
    }
}
