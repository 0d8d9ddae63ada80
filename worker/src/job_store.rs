//! The worker's one way into the jobs table. Its hot statements — claiming a
//! job, renewing its lease and recording its success — are group-committed:
//! concurrent jobs of this worker share one statement and one commit (see
//! [`shutoff_core::batch`]). Each job still gets its own answer, decided by
//! the same conditional UPDATE, so a batch changes how many commits a stop
//! costs, not who decides it. The rarer moves (fail, retry, release, dead
//! letters) run one statement each, and so do the host's heartbeat and the
//! re-drive of its waiting stops ([`crate::presence`]).

use std::time::Duration;

use chrono::{DateTime, Utc};
use shutoff_core::batch::{self, Batcher, Ticket};
use shutoff_core::ids::HostName;
use shutoff_core::message::StopJob;
use shutoff_core::store::claim::{self, Claim, ClaimedJob, Success};
use shutoff_core::store::rescue::{self, Rescue};
use shutoff_core::store::{self, StoreError, dead_letters, hosts};
use sqlx::PgPool;
use uuid::Uuid;

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
    pool: PgPool,
    /// Recorded as the host of the failures and dead letters this worker writes.
    worker_id: String,
    claims: Batcher<StopJob, Claim>,
    successes: Batcher<Success, bool>,
    leases: Batcher<ClaimedJob, bool>,
}

impl JobStore {
    /// Claims and successes wait up to `linger` for company (see the
    /// worker's `--batch-linger-ms`); lease renewals go at once.
    pub fn new(
        pool: PgPool,
        worker_id: String,
        host: HostName,
        lease: Duration,
        linger: Duration,
    ) -> Self {
        let (p, worker, h) = (pool.clone(), worker_id.clone(), host.clone());
        let claims =
            Batcher::spawn_lingering(MAX_BATCH, IN_FLIGHT, linger, move |batch: Vec<StopJob>| {
                let (pool, worker, host) = (p.clone(), worker.clone(), h.clone());
                async move {
                    batch::all_or_each(&batch, |items| {
                        claim::claim_many(&pool, items, &worker, &host, lease)
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
                match claim::heartbeat_many(&pool, &batch, lease).await {
                    Ok(renewed) => renewed.into_iter().map(Ok).collect(),
                    Err(e) => batch::for_all(batch.len(), &StoreError::from(e)),
                }
            }
        });
        let p = pool.clone();
        let successes =
            Batcher::spawn_lingering(MAX_BATCH, IN_FLIGHT, linger, move |batch: Vec<Success>| {
                let pool = p.clone();
                async move {
                    batch::all_or_each(&batch, |items| claim::succeed_many(&pool, items)).await
                }
            });
        JobStore {
            pool,
            worker_id,
            claims,
            successes,
            leases,
        }
    }

    /// Tries to take the job `message` names. Under `ticket`, so a worker
    /// shutting down can give the claim up if it has not started, and
    /// otherwise learns whether it took the job.
    pub async fn claim(&self, message: &StopJob, ticket: &Ticket) -> Result<Claim, StoreError> {
        self.claims.call_with(message.clone(), ticket).await
    }

    /// Extends the lease of a job we hold; false if we lost it.
    pub async fn heartbeat(&self, job: &ClaimedJob) -> Result<bool, StoreError> {
        self.leases.call(job.clone()).await
    }

    /// Records a power-off that worked; false if our lease was taken over.
    pub async fn succeed(&self, success: Success) -> Result<bool, StoreError> {
        self.successes.call(success).await
    }

    /// Records a failed stop we hold; false if our lease was taken over.
    pub async fn fail(
        &self,
        job: &ClaimedJob,
        message: &str,
        details: &str,
    ) -> Result<bool, StoreError> {
        Ok(claim::fail(&self.pool, job, message, details).await?)
    }

    /// Fails a job nobody holds whose attempts are all used.
    pub async fn fail_exhausted(&self, id: Uuid, message: &str) -> Result<bool, StoreError> {
        Ok(claim::fail_exhausted(&self.pool, id, message, &self.worker_id).await?)
    }

    /// Moves a job we hold to `retrying`; false if our lease was taken over.
    pub async fn schedule_retry(&self, job: &ClaimedJob, error: &str) -> Result<bool, StoreError> {
        Ok(claim::schedule_retry(&self.pool, job, error).await?)
    }

    /// Gives a job we hold back without using up an attempt.
    pub async fn release(&self, job: &ClaimedJob) -> Result<bool, StoreError> {
        Ok(claim::release(&self.pool, job).await?)
    }

    /// Records a poison message taken off `queue`.
    pub async fn record_dead_letter(
        &self,
        queue: &str,
        reason: &str,
        message_id: Option<&str>,
        payload: &[u8],
    ) -> Result<(), StoreError> {
        Ok(dead_letters::record_dead_letter(
            &self.pool,
            queue,
            reason,
            message_id,
            payload,
            &self.worker_id,
        )
        .await?)
    }

    /// Records that this worker (running `version`) serves `host`, now.
    pub async fn beat(&self, host: &HostName, version: &str) -> Result<(), StoreError> {
        Ok(hosts::beat(&self.pool, host, &self.worker_id, version).await?)
    }

    /// This worker no longer serves `host` (a clean shutdown).
    pub async fn leave(&self, host: &HostName) -> Result<(), StoreError> {
        Ok(hosts::leave(&self.pool, host, &self.worker_id).await?)
    }

    /// PostgreSQL's clock, for a re-drive's cut-off.
    pub async fn db_now(&self) -> Result<DateTime<Utc>, StoreError> {
        Ok(rescue::db_now(&self.pool).await?)
    }

    /// Restarts the rescuer's clock on `host`'s stops waiting in its queue.
    pub async fn touch_host(
        &self,
        host: &HostName,
        before: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        Ok(rescue::touch_host(&self.pool, host, before).await?)
    }

    /// Hands back up to `limit` of `host`'s stops the broker never took.
    pub async fn redrive(
        &self,
        host: &HostName,
        before: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<Rescue>, StoreError> {
        Ok(rescue::redrive(&self.pool, host, before, &self.worker_id, limit).await?)
    }

    /// True when PostgreSQL answers within `timeout` (for `/readyz`).
    pub async fn ping(&self, timeout: Duration) -> bool {
        store::ping(&self.pool, timeout).await
    }
}
