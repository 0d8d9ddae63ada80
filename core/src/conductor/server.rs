//! The conductor's side: consumes `<prefix>.conductor`, runs each call on
//! the process's pool, and answers on the caller's reply-to. Claims, lease
//! renewals, successes and host heartbeats from every worker of the fleet
//! share one statement per batch ([`crate::batch`]); the rarer calls run
//! one statement each, as they do in a worker that holds its own pool.

use std::time::Duration;

use futures::StreamExt;
use lapin::options::BasicPublishOptions;
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::{Call, RemoteError, Reply};
use crate::backoff::Backoff;
use crate::batch::Batcher;
use crate::broker::{self, Topology};
use crate::broker_nodes::BrokerNodes;
use crate::store::claim::{self, Claim, ClaimRequest, ClaimedJob, Success};
use crate::store::{self, StoreError, dead_letters, hosts, rescue};
use crate::tls::AmqpTls;

/// Most items in one statement.
const MAX_BATCH: usize = 512;
/// Batches of one kind running at once: while one runs, the next gathers.
const IN_FLIGHT: usize = 2;
/// Calls a conductor takes before it has answered earlier ones.
const PREFETCH: u16 = 1024;
/// How long a claim or success batch that is not full waits for more
/// (`--conductor-linger-ms`), as a worker with its own pool waits
/// (`--batch-linger-ms`). Spread over 1,000 hosts the calls arrive one at a
/// time; with no wait the batches held four and each stop cost 0.58
/// PostgreSQL transactions, with 20 ms 0.32 (docs/performance.md).
pub const DEFAULT_LINGER: Duration = Duration::from_millis(20);
/// How long a batch of host heartbeats waits for more. A beat every
/// `--heartbeat-secs` (10) from each of 1,000 hosts is 100 a second: a
/// quarter of a second gathers about 25 per statement, and a host is down
/// only after `--host-down-after-secs` (30) without one.
const BEAT_LINGER: Duration = Duration::from_millis(250);

/// Where the calls are answered: the pool and the fleet-wide batchers.
#[derive(Clone)]
pub struct Conductor {
    pool: PgPool,
    claims: Batcher<ClaimRequest, Claim>,
    leases: Batcher<(ClaimedJob, f64), bool>,
    successes: Batcher<Success, bool>,
    beats: Batcher<hosts::Beat, ()>,
}

impl Conductor {
    /// `linger`: how long a claim or success batch that is not full waits
    /// for more ([`DEFAULT_LINGER`]). Lease renewals never wait: one late is
    /// a lease nearer to lapsing.
    pub fn new(pool: PgPool, linger: Duration) -> Self {
        Conductor {
            claims: claim::claim_batcher(pool.clone(), MAX_BATCH, IN_FLIGHT, linger),
            leases: claim::lease_batcher(pool.clone(), MAX_BATCH, IN_FLIGHT),
            successes: claim::success_batcher(pool.clone(), MAX_BATCH, IN_FLIGHT, linger),
            beats: hosts::beat_batcher(pool.clone(), MAX_BATCH, IN_FLIGHT, BEAT_LINGER),
            pool,
        }
    }

    /// Runs one call and says how it went.
    pub async fn answer(&self, call: Call) -> Reply {
        let pool = &self.pool;
        let result: Result<Reply, StoreError> = async {
            Ok(match call {
                Call::Claim(request) => Reply::Claim(self.claims.call(request).await?),
                Call::Heartbeat { job, lease_secs } => {
                    Reply::Done(self.leases.call((job, lease_secs)).await?)
                }
                Call::Succeed(success) => Reply::Done(self.successes.call(success).await?),
                Call::Fail {
                    job,
                    message,
                    details,
                } => Reply::Done(claim::fail(pool, &job, &message, &details).await?),
                Call::FailExhausted {
                    id,
                    message,
                    worker,
                } => Reply::Done(claim::fail_exhausted(pool, id, &message, &worker).await?),
                Call::Retry { job, error } => {
                    Reply::Done(claim::schedule_retry(pool, &job, &error).await?)
                }
                Call::Release(job) => Reply::Done(claim::release(pool, &job).await?),
                Call::DeadLetter {
                    queue,
                    reason,
                    message_id,
                    payload,
                    worker,
                } => {
                    dead_letters::record_dead_letter(
                        pool,
                        &queue,
                        &reason,
                        message_id.as_deref(),
                        payload.as_bytes(),
                        &worker,
                    )
                    .await?;
                    Reply::Unit
                }
                Call::Beat {
                    host,
                    worker,
                    version,
                } => {
                    self.beats
                        .call(hosts::Beat {
                            host,
                            worker,
                            version,
                        })
                        .await?;
                    Reply::Unit
                }
                Call::Leave { host, worker } => {
                    hosts::leave(pool, &host, &worker).await?;
                    Reply::Unit
                }
                Call::DbNow => Reply::Now(rescue::db_now(pool).await?),
                Call::TouchHost { host, before } => {
                    Reply::Count(rescue::touch_host(pool, &host, before).await?)
                }
                Call::Redrive {
                    host,
                    before,
                    worker,
                    limit,
                } => Reply::Rescues(rescue::redrive(pool, &host, before, &worker, limit).await?),
                Call::Ping { timeout_ms } => Reply::Done(
                    store::ping(pool, Duration::from_millis(timeout_ms.min(10_000))).await,
                ),
            })
        }
        .await;
        result.unwrap_or_else(|e| Reply::Error(RemoteError::from(&e)))
    }
}

/// Where to consume the calls.
pub struct ServeSettings {
    pub amqp_url: BrokerNodes,
    pub amqp_tls: AmqpTls,
    pub topology: Topology,
    pub connect_timeout: Duration,
    /// The connection's name in RabbitMQ (which process serves).
    pub name: String,
}

/// Consumes calls until `shutdown`, reconnecting with back-off; the calls
/// still running when it ends are answered if their channel is still open.
pub async fn serve(conductor: Conductor, settings: ServeSettings, shutdown: CancellationToken) {
    let mut failures = 0u32;
    let mut next_node = settings.amqp_url.random_start();
    let queue = settings.topology.conductor_queue();
    while !shutdown.is_cancelled() {
        let attached = async {
            let c = broker::connect(
                &settings.amqp_url,
                &settings.amqp_tls,
                next_node,
                &settings.name,
                &settings.topology,
                settings.connect_timeout,
            )
            .await?;
            let consumer = super::attach(
                &c.channel,
                &settings.topology,
                &queue,
                Some(PREFETCH),
                settings.connect_timeout,
            )
            .await?;
            Ok::<_, broker::BrokerError>((c, consumer))
        }
        .await;
        let (connected, mut consumer) = match attached {
            Ok(pair) => pair,
            Err(e) => {
                let delay = Backoff::RECONNECT.delay(failures);
                failures = failures.saturating_add(1);
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "conductor cannot reach RabbitMQ");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(delay) => continue,
                }
            }
        };
        failures = 0;
        next_node = connected.node + 1;
        tracing::info!(%queue, broker.node = settings.amqp_url.name(connected.node), "conductor consuming");
        let channel = connected.channel.clone();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                next = consumer.next() => match next {
                    Some(Ok(delivery)) => {
                        let conductor = conductor.clone();
                        let channel = channel.clone();
                        tokio::spawn(async move {
                            let props = delivery.properties;
                            let reply = match serde_json::from_slice::<Call>(&delivery.data) {
                                Ok(call) => {
                                    let name = call.name();
                                    let wait = super::caller_timeout(&props);
                                    match tokio::time::timeout(wait, conductor.answer(call)).await {
                                        Ok(reply) => reply,
                                        Err(_) => {
                                            tracing::warn!(call = name, "conductor call outlived its caller's wait; dropped");
                                            return;
                                        }
                                    }
                                }
                                Err(e) => Reply::Error(RemoteError {
                                    transient: false,
                                    unavailable: false,
                                    message: format!("conductor: not a call: {e}"),
                                }),
                            };
                            if let Some(to) = props.reply_to() {
                                respond(&channel, to, props.correlation_id().clone(), &reply).await;
                            }
                        });
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "conductor's consumer failed; reconnecting");
                        break;
                    }
                    None => {
                        tracing::warn!("conductor's consumer was cancelled; reconnecting");
                        break;
                    }
                }
            }
        }
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            connected.conn.close(200, "conductor stopping".into()),
        )
        .await;
    }
}

/// Sends `reply` to the caller's reply-to. Best effort: a caller that is
/// gone has nobody to tell, and one that waits and gets nothing times out.
async fn respond(
    channel: &Channel,
    reply_to: &ShortString,
    correlation_id: Option<ShortString>,
    reply: &Reply,
) {
    let body = match serde_json::to_vec(reply) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "conductor reply does not serialise");
            return;
        }
    };
    let mut props = BasicProperties::default().with_content_type("application/json".into());
    if let Some(id) = correlation_id {
        props = props.with_correlation_id(id);
    }
    let sent = channel
        .basic_publish(
            "".into(),
            reply_to.as_str().into(),
            BasicPublishOptions::default(),
            &body,
            props,
        )
        .await;
    if let Err(e) = sent {
        tracing::debug!(error = %e, "conductor reply not sent");
    }
}
