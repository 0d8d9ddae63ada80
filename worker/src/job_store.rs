//! The worker's one way into the jobs table. Its hot statements — claiming a
//! job, renewing its lease and recording its success — are group-committed:
//! concurrent jobs of this worker share one statement and one commit (see
//! [`shutoff_core::batch`]). Each job still gets its own answer, decided by
//! the same conditional UPDATE, so a batch changes how many commits a stop
//! costs, not who decides it. The rarer moves (fail, retry, release, dead
//! letters) run one statement each, and so do the host's heartbeat and the
//! re-drive of its waiting stops ([`crate::presence`]).
//!
//! With `--via-conductor` the worker holds no pool: every call goes to the
//! conductor ([`shutoff_core::conductor`]), which batches the whole fleet's
//! claims and successes instead of this worker's alone.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use shutoff_core::batch::{Batcher, Ticket};
use shutoff_core::conductor::{Call, ConductorClient, Reply, unexpected};
use shutoff_core::ids::HostName;
use shutoff_core::message::StopJob;
use shutoff_core::store::claim::{self, Claim, ClaimRequest, ClaimedJob, Success};
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
    /// Recorded as the host of the failures and dead letters this worker writes.
    worker_id: String,
    host: HostName,
    lease: Duration,
    way: Way,
}

#[derive(Clone)]
enum Way {
    /// This worker's own pool, its own batches.
    Direct {
        pool: PgPool,
        claims: Batcher<ClaimRequest, Claim>,
        successes: Batcher<Success, bool>,
        leases: Batcher<(ClaimedJob, f64), bool>,
    },
    /// Through the conductor.
    Conductor(Arc<ConductorClient>),
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
        let claims = claim::claim_batcher(pool.clone(), MAX_BATCH, IN_FLIGHT, linger);
        let leases = claim::lease_batcher(pool.clone(), MAX_BATCH, IN_FLIGHT);
        let successes = claim::success_batcher(pool.clone(), MAX_BATCH, IN_FLIGHT, linger);
        JobStore {
            worker_id,
            host,
            lease,
            way: Way::Direct {
                pool,
                claims,
                successes,
                leases,
            },
        }
    }

    /// A store whose every call goes through the conductor.
    pub fn via_conductor(
        client: Arc<ConductorClient>,
        worker_id: String,
        host: HostName,
        lease: Duration,
    ) -> Self {
        JobStore {
            worker_id,
            host,
            lease,
            way: Way::Conductor(client),
        }
    }

    /// Tries to take the job `message` names. Under `ticket`, so a worker
    /// shutting down can give the claim up if it has not started, and
    /// otherwise learns whether it took the job.
    pub async fn claim(&self, message: &StopJob, ticket: &Ticket) -> Result<Claim, StoreError> {
        let request = ClaimRequest {
            message: message.clone(),
            worker: self.worker_id.clone(),
            host: self.host.clone(),
            lease_secs: self.lease.as_secs_f64(),
        };
        match &self.way {
            Way::Direct { claims, .. } => claims.call_with(request, ticket).await,
            Way::Conductor(c) => {
                if !ticket.try_start() {
                    return Err(StoreError::Abandoned);
                }
                match c.call(&Call::Claim(request)).await? {
                    Reply::Claim(claim) => Ok(claim),
                    other => Err(unexpected("claim", other)),
                }
            }
        }
    }

    /// Extends the lease of a job we hold; false if we lost it.
    pub async fn heartbeat(&self, job: &ClaimedJob) -> Result<bool, StoreError> {
        let lease_secs = self.lease.as_secs_f64();
        match &self.way {
            Way::Direct { leases, .. } => leases.call((job.clone(), lease_secs)).await,
            Way::Conductor(c) => {
                let call = Call::Heartbeat {
                    job: job.clone(),
                    lease_secs,
                };
                done(c.call(&call).await?, "heartbeat")
            }
        }
    }

    /// Records a power-off that worked; false if our lease was taken over.
    pub async fn succeed(&self, success: Success) -> Result<bool, StoreError> {
        match &self.way {
            Way::Direct { successes, .. } => successes.call(success).await,
            Way::Conductor(c) => done(c.call(&Call::Succeed(success)).await?, "succeed"),
        }
    }

    /// Records a failed stop we hold; false if our lease was taken over.
    pub async fn fail(
        &self,
        job: &ClaimedJob,
        message: &str,
        details: &str,
    ) -> Result<bool, StoreError> {
        match &self.way {
            Way::Direct { pool, .. } => Ok(claim::fail(pool, job, message, details).await?),
            Way::Conductor(c) => {
                let call = Call::Fail {
                    job: job.clone(),
                    message: message.to_string(),
                    details: details.to_string(),
                };
                done(c.call(&call).await?, "fail")
            }
        }
    }

    /// Fails a job nobody holds whose attempts are all used.
    pub async fn fail_exhausted(&self, id: Uuid, message: &str) -> Result<bool, StoreError> {
        match &self.way {
            Way::Direct { pool, .. } => {
                Ok(claim::fail_exhausted(pool, id, message, &self.worker_id).await?)
            }
            Way::Conductor(c) => {
                let call = Call::FailExhausted {
                    id,
                    message: message.to_string(),
                    worker: self.worker_id.clone(),
                };
                done(c.call(&call).await?, "fail_exhausted")
            }
        }
    }

    /// Moves a job we hold to `retrying`; false if our lease was taken over.
    pub async fn schedule_retry(&self, job: &ClaimedJob, error: &str) -> Result<bool, StoreError> {
        match &self.way {
            Way::Direct { pool, .. } => Ok(claim::schedule_retry(pool, job, error).await?),
            Way::Conductor(c) => {
                let call = Call::Retry {
                    job: job.clone(),
                    error: error.to_string(),
                };
                done(c.call(&call).await?, "retry")
            }
        }
    }

    /// Gives a job we hold back without using up an attempt.
    pub async fn release(&self, job: &ClaimedJob) -> Result<bool, StoreError> {
        match &self.way {
            Way::Direct { pool, .. } => Ok(claim::release(pool, job).await?),
            Way::Conductor(c) => done(c.call(&Call::Release(job.clone())).await?, "release"),
        }
    }

    /// Records a poison message taken off `queue`.
    pub async fn record_dead_letter(
        &self,
        queue: &str,
        reason: &str,
        message_id: Option<&str>,
        payload: &[u8],
    ) -> Result<(), StoreError> {
        match &self.way {
            Way::Direct { pool, .. } => Ok(dead_letters::record_dead_letter(
                pool,
                queue,
                reason,
                message_id,
                payload,
                &self.worker_id,
            )
            .await?),
            Way::Conductor(c) => {
                let call = Call::DeadLetter {
                    queue: queue.to_string(),
                    reason: reason.to_string(),
                    message_id: message_id.map(str::to_string),
                    // Kept as text in the table (shortened there), so sent as text.
                    payload: String::from_utf8_lossy(payload).into_owned(),
                    worker: self.worker_id.clone(),
                };
                unit(c.call(&call).await?, "dead_letter")
            }
        }
    }

    /// Records that this worker (running `version`) serves `host`, now.
    pub async fn beat(&self, host: &HostName, version: &str) -> Result<(), StoreError> {
        match &self.way {
            Way::Direct { pool, .. } => {
                Ok(hosts::beat(pool, host, &self.worker_id, version).await?)
            }
            Way::Conductor(c) => {
                let call = Call::Beat {
                    host: host.clone(),
                    worker: self.worker_id.clone(),
                    version: version.to_string(),
                };
                unit(c.call(&call).await?, "beat")
            }
        }
    }

    /// This worker no longer serves `host` (a clean shutdown).
    pub async fn leave(&self, host: &HostName) -> Result<(), StoreError> {
        match &self.way {
            Way::Direct { pool, .. } => Ok(hosts::leave(pool, host, &self.worker_id).await?),
            Way::Conductor(c) => {
                let call = Call::Leave {
                    host: host.clone(),
                    worker: self.worker_id.clone(),
                };
                unit(c.call(&call).await?, "leave")
            }
        }
    }

    /// PostgreSQL's clock, for a re-drive's cut-off.
    pub async fn db_now(&self) -> Result<DateTime<Utc>, StoreError> {
        match &self.way {
            Way::Direct { pool, .. } => Ok(rescue::db_now(pool).await?),
            Way::Conductor(c) => match c.call(&Call::DbNow).await? {
                Reply::Now(t) => Ok(t),
                other => Err(unexpected("db_now", other)),
            },
        }
    }

    /// Restarts the rescuer's clock on `host`'s stops waiting in its queue.
    pub async fn touch_host(
        &self,
        host: &HostName,
        before: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        match &self.way {
            Way::Direct { pool, .. } => Ok(rescue::touch_host(pool, host, before).await?),
            Way::Conductor(c) => {
                let call = Call::TouchHost {
                    host: host.clone(),
                    before,
                };
                match c.call(&call).await? {
                    Reply::Count(n) => Ok(n),
                    other => Err(unexpected("touch_host", other)),
                }
            }
        }
    }

    /// Hands back up to `limit` of `host`'s stops the broker never took.
    pub async fn redrive(
        &self,
        host: &HostName,
        before: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<Rescue>, StoreError> {
        match &self.way {
            Way::Direct { pool, .. } => {
                Ok(rescue::redrive(pool, host, before, &self.worker_id, limit).await?)
            }
            Way::Conductor(c) => {
                let call = Call::Redrive {
                    host: host.clone(),
                    before,
                    worker: self.worker_id.clone(),
                    limit,
                };
                match c.call(&call).await? {
                    Reply::Rescues(r) => Ok(r),
                    other => Err(unexpected("redrive", other)),
                }
            }
        }
    }

    /// True when PostgreSQL answers within `timeout` (for `/readyz`): the
    /// worker's own, or the conductor's.
    pub async fn ping(&self, timeout: Duration) -> bool {
        match &self.way {
            Way::Direct { pool, .. } => store::ping(pool, timeout).await,
            Way::Conductor(c) => {
                let call = Call::Ping {
                    timeout_ms: timeout.as_millis() as u64,
                };
                matches!(
                    tokio::time::timeout(timeout * 2, c.call(&call)).await,
                    Ok(Ok(Reply::Done(true)))
                )
            }
        }
    }
}

fn done(reply: Reply, call: &'static str) -> Result<bool, StoreError> {
    match reply {
        Reply::Done(b) => Ok(b),
        other => Err(unexpected(call, other)),
    }
}

fn unit(reply: Reply, call: &'static str) -> Result<(), StoreError> {
    match reply {
        Reply::Unit => Ok(()),
        other => Err(unexpected(call, other)),
    }
}
