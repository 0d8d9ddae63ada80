//! Publishing accepted jobs, and the relay that makes publishing reliable.
//! It is the rescuer's sibling ([`crate::rescuer`]): both are loops that look
//! in PostgreSQL for jobs the broker does not carry (never confirmed here,
//! stalled there) and put them back on it.
//!
//! The request path publishes right after commit. When that fails (broker
//! down, confirm timed out) the job stays `queued` in PostgreSQL and the relay
//! publishes it once the broker is back — it runs at start-up, on a timer and
//! whenever the request path reports a failure. Marking jobs `published` is
//! batched off the request path; a lost mark only means a duplicate message,
//! which workers already treat as normal.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use sqlx::PgPool;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::broker::{BrokerError, Publisher};
use crate::message::StopJob;
use crate::store::publish;

/// Jobs younger than this are left to the request path that created them.
const MIN_AGE: Duration = Duration::from_secs(2);
const BATCH: i64 = 500;
/// How long a confirmed job waits for its mark (see [`mark_confirmed`]).
const MARK_DELAY: Duration = Duration::from_millis(250);
/// Most jobs marked by one statement.
const MARK_BATCH: usize = 4096;
/// Longest one relay pass may take.
const PASS_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest the backlog count may take; the gauge keeps its last value otherwise.
const BACKLOG_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Relay {
    pool: PgPool,
    publisher: Arc<Publisher>,
    /// Woken by the request path when its own publish failed.
    wake: Notify,
    /// Confirmed job ids, waiting to be marked `published` in one UPDATE.
    confirmed: mpsc::UnboundedSender<Uuid>,
    metrics: RelayMetrics,
    /// Jobs older than this are the rescuer's (its `rescue_after`).
    window: Duration,
    /// A host whose workers have not beaten for this long is down; its
    /// stops wait for its worker to re-drive them.
    host_down_after: Duration,
}

impl Relay {
    pub fn new(
        pool: PgPool,
        publisher: Arc<Publisher>,
        metrics: RelayMetrics,
        window: Duration,
        host_down_after: Duration,
    ) -> (Arc<Self>, mpsc::UnboundedReceiver<Uuid>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let relay = Arc::new(Relay {
            pool,
            publisher,
            wake: Notify::new(),
            confirmed: tx,
            metrics,
            window,
            host_down_after,
        });
        (relay, rx)
    }

    /// The request path's publish. Never fails the request: the job is
    /// already committed.
    pub async fn publish_now(&self, job: StopJob) {
        match self.publisher.publish(&job).await {
            Ok(()) => {
                self.metrics.published(PublishPath::Request, 1);
                let _ = self.confirmed.send(job.job_id);
            }
            Err(BrokerError::Unroutable(queue)) => {
                // Not a failure of ours: the host has never had a worker
                // (or lost its queue). Its first worker re-drives the stop.
                self.metrics.unroutable.inc();
                tracing::info!(job.id = %job.job_id, host = %job.host, %queue,
                    "no worker of this host has started yet; the stop waits in PostgreSQL for one");
            }
            Err(e) => {
                self.metrics.publish_failures.inc();
                tracing::warn!(error = %e, job.id = %job.job_id, "publish failed; the relay will publish it");
                self.wake.notify_one();
            }
        }
    }

    /// Publishes every committed-but-unconfirmed job it finds; returns how many.
    pub async fn run_once(&self) -> Result<usize, sqlx::Error> {
        let mut total = 0;
        loop {
            let batch = publish::unpublished(
                &self.pool,
                MIN_AGE,
                self.window,
                self.host_down_after,
                BATCH,
            )
            .await?;
            if batch.is_empty() {
                return Ok(total);
            }
            let mut done = Vec::with_capacity(batch.len());
            let mut broker_away = false;
            let mut unroutable = 0usize;
            for job in &batch {
                match self.publisher.publish(job).await {
                    Ok(()) => done.push(job.job_id),
                    // One host without a queue must not hold up the others.
                    Err(BrokerError::Unroutable(_)) => unroutable += 1,
                    Err(e) => {
                        tracing::debug!(error = %e, "relay: broker still unavailable");
                        broker_away = true;
                        break;
                    }
                }
            }
            self.metrics
                .published(PublishPath::Relay, done.len() as u64);
            publish::mark_published(&self.pool, &done).await?;
            total += done.len();
            if broker_away || unroutable > 0 {
                // The next pass goes on; an unroutable job stays queued
                // and is taken up by its host's worker (or the rescuer).
                return Ok(total);
            }
        }
    }

    pub async fn run(self: Arc<Self>, interval: Duration, cancel: CancellationToken) {
        loop {
            // A pass on a half-dead database or broker must not stall the relay.
            match tokio::time::timeout(PASS_TIMEOUT, self.run_once()).await {
                Ok(Ok(n)) if n > 0 => {
                    tracing::info!(published = n, "relay published stranded jobs")
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::debug!(error = %e, "relay pass failed; will retry"),
                Err(_) => tracing::warn!("relay pass timed out; will retry"),
            }
            self.update_backlog().await;
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = self.wake.notified() => {
                    // Let the young job age past MIN_AGE, and the broker recover.
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(MIN_AGE) => {}
                    }
                }
                _ = tokio::time::sleep(interval) => {}
            }
        }
    }
}

impl Relay {
    /// Sets the backlog gauge, once per pass rather than per scrape, so a
    /// scraper cannot add load to the database.
    async fn update_backlog(&self) {
        if let Ok(Ok(n)) = tokio::time::timeout(
            BACKLOG_TIMEOUT,
            publish::count_queued(&self.pool, self.window),
        )
        .await
        {
            self.metrics.relay_backlog.set(n);
        }
    }
}

/// Marks confirmed jobs `published`, many per statement. Ends when every
/// sender is gone (the relay is dropped at shutdown), after a last flush.
///
/// A mark waits [`MARK_DELAY`] after the first confirm of its batch: by then
/// a running worker has usually claimed the job, which needs no mark, so the
/// statement skips it instead of writing the row a second time. The delay is
/// well inside the relay's [`MIN_AGE`], so a confirmed job is still marked
/// before the relay would publish it again.
pub async fn mark_confirmed(pool: PgPool, mut rx: mpsc::UnboundedReceiver<Uuid>) {
    let mut ids = Vec::with_capacity(256);
    while rx.recv_many(&mut ids, MARK_BATCH).await > 0 {
        tokio::time::sleep(MARK_DELAY).await;
        let room = MARK_BATCH.saturating_sub(ids.len());
        if room > 0 && !rx.is_empty() {
            rx.recv_many(&mut ids, room).await;
        }
        if let Err(e) = publish::mark_published(&pool, &ids).await {
            // The jobs stay `queued`; the relay republishes them later.
            tracing::warn!(error = %e, count = ids.len(), "could not mark jobs published");
        }
        ids.clear();
    }
}

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum PublishPath {
    /// Right after the commit, by the request that accepted the job.
    Request,
    /// Later, by the relay, after the request's own publish failed.
    Relay,
}

impl EncodeLabelValue for PublishPath {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        let label = match self {
            PublishPath::Request => "request",
            PublishPath::Relay => "relay",
        };
        EncodeLabelValue::encode(&label, encoder)
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PublishLabels {
    pub via: PublishPath,
}

/// What the relay counts; registered by the process that runs it (the API).
/// Cloning shares the counters.
#[derive(Clone, Default)]
pub struct RelayMetrics {
    pub jobs_published: Family<PublishLabels, Counter>,
    pub publish_failures: Counter,
    /// Publishes the broker returned: the stop's host has no queue yet.
    pub unroutable: Counter,
    /// Jobs committed but not yet marked published, as of the relay's last pass.
    pub relay_backlog: Gauge,
}

impl RelayMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "jobs_published",
            "Job messages confirmed by RabbitMQ, by who published them",
            self.jobs_published.clone(),
        );
        registry.register(
            "jobs_publish_failures",
            "Publishes on the request path that failed, leaving the job to the relay",
            self.publish_failures.clone(),
        );
        registry.register(
            "jobs_unroutable",
            "Publishes RabbitMQ returned because the stop's host has no queue (no worker of it has started); the stop waits in PostgreSQL",
            self.unroutable.clone(),
        );
        registry.register(
            "relay_backlog",
            "Jobs committed but not yet published (state queued), as of the relay's last pass",
            self.relay_backlog.clone(),
        );
    }

    pub fn published(&self, via: PublishPath, n: u64) {
        self.jobs_published
            .get_or_create(&PublishLabels { via })
            .inc_by(n);
    }
}
