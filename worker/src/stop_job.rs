//! One stop job, end to end: claim it in PostgreSQL, power the VM off, record
//! the result, and only then let the consumer ack the message.
//!
//! Every handler run is idempotent: a duplicate or redelivered message finds
//! the job finished (or held by a live lease) and is simply acked.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use shutoff_core::backoff::Backoff;
use shutoff_core::batch::Ticket;
use shutoff_core::broker::Publisher;
use shutoff_core::ids::HostName;
use shutoff_core::message::StopJob;
use shutoff_core::store::StoreError;
use shutoff_core::store::claim::{Claim, ClaimedJob, Success};
use shutoff_hypervisor::{DriverError, DriverSettings, driver_with};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::job_store::JobStore;
use crate::metrics::WorkerMetrics;
use crate::settings::Settings;

/// A single database call may not hang longer than this.
const DB_CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// Database failures that are not transient (bugs, constraint violations) are
/// retried this often before the message is handed back to the broker.
const DB_BUG_RETRIES: u32 = 3;

/// What the consumer does with the message once the handler is done.
#[derive(Debug, PartialEq, Eq)]
pub enum Disposition {
    /// The outcome is committed (or someone else owns the job): ack.
    Ack,
    /// Not handled (shutting down, or the database kept failing): give it
    /// back to the broker.
    Requeue,
    /// Poison: record why, then reject to the dead-letter queue.
    DeadLetter(String),
}

/// What every job needs; shared by all in-flight jobs of a worker.
pub struct JobContext {
    /// For putting a message on a retry (delay) queue.
    pub publisher: Arc<Publisher>,
    pub worker_id: String,
    /// The host this worker serves; it carries out stops of this host only.
    pub host: HostName,
    pub lease: Duration,
    /// A safety net for one power-off, stretched to the driver's own bound.
    pub power_off_timeout: Duration,
    /// The worker's shutdown timings; an instance's address may override them.
    pub drivers: DriverSettings,
    /// Every move of a job: claims, lease renewals and successes
    /// group-committed, the rarer moves one statement each.
    pub store: JobStore,
    pub metrics: WorkerMetrics,
}

impl JobContext {
    pub fn new(
        store: JobStore,
        publisher: Arc<Publisher>,
        settings: &Settings,
        host: HostName,
        metrics: WorkerMetrics,
    ) -> Self {
        let worker_id = settings.worker_id();
        let lease = settings.lease();
        JobContext {
            publisher,
            worker_id,
            host,
            lease,
            power_off_timeout: settings.power_off_timeout(),
            drivers: settings.drivers(),
            store,
            metrics,
        }
    }
}

/// Handles one message body. `shutdown` is watched only before the power-off
/// starts: once the VM is being stopped we finish and record it.
pub async fn handle(ctx: &JobContext, body: &[u8], shutdown: &CancellationToken) -> Disposition {
    let message = match StopJob::from_bytes(body) {
        Ok(m) => m,
        Err(e) => return Disposition::DeadLetter(format!("unparseable message: {e}")),
    };
    let span = job_span(&ctx.worker_id, &message);
    handle_message(ctx, message, shutdown)
        .instrument(span)
        .await
}

/// The span of every log line about one job: its request id, job, instance
/// and this worker.
pub fn job_span(worker_id: &str, message: &StopJob) -> tracing::Span {
    tracing::info_span!(
        "job",
        request_id = %message.request_id,
        job.id = %message.job_id,
        instance.uuid = %message.instance_uuid,
        worker = %worker_id,
    )
}

async fn handle_message(
    ctx: &JobContext,
    message: StopJob,
    shutdown: &CancellationToken,
) -> Disposition {
    // A claim given up at shutdown must not take the job afterwards, or the
    // job would sit under a lease nobody works on until it lapses. So the
    // claim runs under a ticket: at shutdown it is abandoned if its statement
    // has not started, and otherwise waited for (and a job it took released
    // below).
    let ticket = Ticket::new();
    let claim = db_retry("claim", || ctx.store.claim(&message, &ticket));
    tokio::pin!(claim);
    let claim = tokio::select! {
        _ = shutdown.cancelled() => {
            if ticket.try_abandon() {
                return Disposition::Requeue;
            }
            claim.await
        }
        c = &mut claim => c,
    };
    let claim = match claim {
        Ok(c) => c,
        Err(_) => return Disposition::Requeue,
    };
    match claim {
        Claim::Unknown => Disposition::DeadLetter(format!(
            "no job {} for instance {}",
            message.job_id, message.instance_uuid
        )),
        Claim::Finished(state) => {
            tracing::info!(%state, "job already finished; acking the duplicate without a second power-off");
            Disposition::Ack
        }
        Claim::OtherHost { host } => {
            // Only reachable if the instance moved after its stop was
            // routed (or a message was put on the wrong queue by hand):
            // hand it to its own host and never touch the VM from here.
            tracing::warn!(our_host = %ctx.host, instance_host = %host,
                "the instance is on another host; handing the stop to that host's queue");
            let moved = StopJob {
                host,
                ..message.clone()
            };
            if let Err(e) = ctx.publisher.publish(&moved).await {
                // The job is still unfinished in PostgreSQL: the rescuer, or
                // that host's worker when it starts, publishes it again.
                tracing::warn!(error = %e, "could not hand the stop over; it waits in PostgreSQL");
            }
            Disposition::Ack
        }
        Claim::HeldElsewhere { worker } => {
            tracing::info!(holder = ?worker, "job is held by a live lease; its holder or the rescuer finishes it");
            Disposition::Ack
        }
        Claim::Exhausted { attempts } => {
            let msg = format!(
                "gave up after {attempts} attempts: every attempt ended without a result (worker crashed or lost its lease)"
            );
            tracing::warn!("{msg}");
            match db_retry("fail exhausted", || {
                ctx.store.fail_exhausted(message.job_id, &msg)
            })
            .await
            {
                Ok(recorded) => {
                    if recorded {
                        ctx.metrics.failed.inc();
                    }
                    Disposition::Ack
                }
                Err(_) => Disposition::Requeue,
            }
        }
        Claim::Claimed(job) => {
            if shutdown.is_cancelled() {
                if let Ok(true) = db_retry("release", || ctx.store.release(&job)).await {
                    tracing::info!("shutting down before the power-off; job released");
                }
                return Disposition::Requeue;
            }
            run(ctx, job).await
        }
    }
}

/// Powers the VM off under our lease and records the outcome.
async fn run(ctx: &JobContext, job: ClaimedJob) -> Disposition {
    ctx.metrics.started.inc();
    tracing::info!(
        attempt = job.attempts,
        max_attempts = job.max_attempts,
        "powering off"
    );
    let outcome = match driver_with(&job.hypervisor, &ctx.drivers) {
        Err(e) => Err(e),
        Ok(driver) => {
            let heartbeat = keep_lease(ctx, &job);
            let started = std::time::Instant::now();
            // A safety net for a hung driver, never shorter than the
            // driver's own bound (a long clean-shutdown wait runs its course).
            let timeout = ctx.power_off_timeout.max(driver.longest_power_off());
            let result = tokio::time::timeout(timeout, driver.power_off(job.instance_uuid))
                .await
                .unwrap_or_else(|_| {
                    Err(DriverError::transient(format!(
                        "power-off did not finish within {timeout:?}"
                    )))
                });
            drop(heartbeat);
            ctx.metrics
                .power_off_done(&job.hypervisor, &result, started.elapsed());
            result
        }
    };
    let recorded = match &outcome {
        Ok(stopped) => {
            let success = Success {
                job: job.clone(),
                power_state: stopped.power_state.as_i16(),
                details: Some(stopped.details()),
            };
            db_retry("record success", || ctx.store.succeed(success.clone())).await
        }
        Err(DriverError::Transient { message, .. }) if job.attempts_left() => {
            return retry_later(ctx, &job, message).await;
        }
        Err(e) => {
            let msg = e.to_string();
            // The event's details carry the error itself, so the instance
            // action alone tells an operator why the stop failed.
            let details = format!(
                "{msg} (attempt {} of {} on {})",
                job.attempts, job.max_attempts, ctx.worker_id
            );
            db_retry("record failure", || ctx.store.fail(&job, &msg, &details)).await
        }
    };
    match recorded {
        Ok(true) => {
            match &outcome {
                Ok(s) => {
                    ctx.metrics.succeeded.inc();
                    tracing::info!(
                        attempt = job.attempts,
                        how = %s.how,
                        elapsed_ms = s.elapsed.as_millis() as u64,
                        "stopped"
                    )
                }
                Err(e) => {
                    ctx.metrics.failed.inc();
                    tracing::warn!(error = %e, "stop failed; fault recorded")
                }
            }
            Disposition::Ack
        }
        Ok(false) => {
            tracing::warn!(
                "lease was taken over while powering off; the new holder records the outcome"
            );
            Disposition::Ack
        }
        Err(_) => Disposition::Requeue,
    }
}

/// Moves the job to `retrying` and parks its message on the delay queue for
/// this attempt. If the delay queue cannot take it, the message is requeued
/// at once and the next delivery retries without delay.
async fn retry_later(ctx: &JobContext, job: &ClaimedJob, error: &str) -> Disposition {
    match db_retry("schedule retry", || ctx.store.schedule_retry(job, error)).await {
        Ok(true) => {}
        Ok(false) => return Disposition::Ack,
        Err(_) => return Disposition::Requeue,
    }
    let topology = ctx.publisher.topology();
    let Some(queue) = topology.retry_queue_for_attempt(job.attempts as u32) else {
        return Disposition::Requeue;
    };
    match ctx.publisher.publish_retry(&queue, &job.message()).await {
        Ok(()) => {
            ctx.metrics.retried.inc();
            tracing::info!(attempt = job.attempts, error, retry_queue = %queue, "transient failure; retrying after back-off");
            Disposition::Ack
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not park the retry; requeueing for an immediate retry");
            Disposition::Requeue
        }
    }
}

/// Stops the lease renewal when dropped — also when the job's task is
/// aborted at the end of a grace period, so an abandoned job's lease lapses.
struct LeaseKeeper(tokio::task::JoinHandle<()>);

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Renews our lease every third of its length until the keeper is dropped.
fn keep_lease(ctx: &JobContext, job: &ClaimedJob) -> LeaseKeeper {
    let store = ctx.store.clone();
    let job = job.clone();
    let lease = ctx.lease;
    let renew = async move {
        loop {
            tokio::time::sleep(lease / 3).await;
            match tokio::time::timeout(DB_CALL_TIMEOUT, store.heartbeat(&job)).await {
                Ok(Ok(true)) => {}
                Ok(Ok(false)) => {
                    tracing::warn!(job.id = %job.id, "lost the lease while powering off");
                    return;
                }
                _ => tracing::debug!(job.id = %job.id, "lease renewal failed; will retry"),
            }
        }
    };
    // In the job's span, so its lines carry the request id too.
    LeaseKeeper(tokio::spawn(renew.instrument(tracing::Span::current())))
}

/// Runs a database call until it succeeds. While the store's trouble is
/// transient (PostgreSQL unreachable, a lock held by another transaction, no
/// answer in time) it keeps trying with back-off: the job completes when it
/// returns, and nothing is acked before. Failures are given up after a few
/// tries; a call its caller abandoned, or a store shutting down, at once.
pub async fn db_retry<T, F, Fut>(what: &str, mut op: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    let mut failures = 0u32;
    let mut bugs = 0u32;
    loop {
        let err = match tokio::time::timeout(DB_CALL_TIMEOUT, op()).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => e,
            Err(_) => StoreError::TimedOut(DB_CALL_TIMEOUT),
        };
        if matches!(err, StoreError::Abandoned | StoreError::Stopped) {
            return Err(err);
        }
        if err.is_transient() {
            tracing::warn!(error = %err, what, "database call did not go through; retrying");
        } else {
            bugs += 1;
            tracing::error!(error = %err, what, "database call failed");
            if bugs >= DB_BUG_RETRIES {
                return Err(err);
            }
        }
        tokio::time::sleep(Backoff::RECONNECT.delay(failures)).await;
        failures += 1;
    }
}
