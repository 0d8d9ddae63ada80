//! RabbitMQ: queue topology, a self-healing connection, confirmed publishing.
//!
//! We do our own reconnecting instead of lapin's auto-recovery: on any error
//! the connection is dropped and the next caller builds a fresh one (after a
//! back-off), which keeps the failure modes few and testable. A message lost
//! in a broken connection is never a lost stop: the job is committed in
//! PostgreSQL first, and the relay and rescuer publish it again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lapin::options::{
    BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::uri::AMQPUri;
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};
use tokio::sync::Mutex;

use crate::backoff::Backoff;
use crate::broker_nodes::BrokerNodes;
use crate::ids::HostName;
use crate::message::StopJob;
use crate::tls::{AmqpTls, TlsSettingError};

/// Names and arguments of every queue. Tests use their own prefix so they run
/// in parallel and can delete what they made.
///
/// Each host has its own work queue, `<prefix>.stop.<host>`, declared only by
/// that host's workers: a stop is published (through the default exchange,
/// mandatory) to its instance's host, and a host no worker has ever served
/// has no queue, so the broker returns the message instead of keeping it
/// where nobody would take it. Any number of workers of one host share its
/// queue. Retry tiers are shared by all hosts and keep a stop on its host:
/// a retry is published to the tier's fanout exchange with the host queue's
/// name as routing key, and when its TTL runs out the message is
/// dead-lettered to the default exchange under that same key.
#[derive(Debug, Clone)]
pub struct Topology {
    /// Prefix of every queue name (`shutoff` by default).
    pub prefix: String,
    /// Quorum-queue `x-delivery-limit`: a message that keeps killing its
    /// worker is dead-lettered after this many deliveries instead of looping.
    pub delivery_limit: u32,
    /// One delay queue per back-off tier (milliseconds). Messages wait there
    /// out their TTL and are dead-lettered back to their host's queue.
    pub retry_delays_ms: Vec<u64>,
}

impl Default for Topology {
    fn default() -> Self {
        Topology {
            prefix: "shutoff".into(),
            delivery_limit: 10,
            retry_delays_ms: vec![1_000, 5_000, 30_000],
        }
    }
}

impl Topology {
    pub fn with_prefix(prefix: impl Into<String>) -> Self {
        Topology {
            prefix: prefix.into(),
            ..Topology::default()
        }
    }

    /// Where the accepted stops of `host`'s instances wait for its workers.
    pub fn host_queue(&self, host: &HostName) -> String {
        format!("{}.stop.{host}", self.prefix)
    }

    /// Poison messages and messages over the delivery limit end here, from
    /// every host.
    pub fn dead_queue(&self) -> String {
        format!("{}.dead", self.prefix)
    }

    /// Where workers that reach the database through the conductor send
    /// their calls ([`crate::conductor`]); every API process answers them.
    pub fn conductor_queue(&self) -> String {
        format!("{}.conductor", self.prefix)
    }

    /// Declares the conductor's queue (its callers and its servers do).
    /// Transient and classic: a call is worth nothing after its caller's
    /// timeout, and a transient queue whose node is lost is declared again
    /// on another, where a durable classic one would be unusable until its
    /// node came back.
    pub async fn declare_conductor(&self, channel: &Channel) -> lapin::Result<()> {
        channel
            .queue_declare(
                self.conductor_queue().as_str().into(),
                QueueDeclareOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(())
    }

    /// The delay queue of a retry tier, and the fanout exchange in front of
    /// it (same name).
    pub fn retry_queue(&self, delay_ms: u64) -> String {
        format!("{}.retry.{delay_ms}ms", self.prefix)
    }

    /// The retry tier used before attempt `attempt + 1` (attempt is 1-based).
    pub fn retry_queue_for_attempt(&self, attempt: u32) -> Option<String> {
        if self.retry_delays_ms.is_empty() {
            return None;
        }
        let i = (attempt.saturating_sub(1) as usize).min(self.retry_delays_ms.len() - 1);
        Some(self.retry_queue(self.retry_delays_ms[i]))
    }

    /// The queues every process declares (not the hosts' own).
    pub fn shared_queues(&self) -> Vec<String> {
        let mut q = vec![self.dead_queue()];
        q.extend(self.retry_delays_ms.iter().map(|d| self.retry_queue(*d)));
        q
    }

    /// Declares the dead-letter queue and the retry tiers (idempotent as
    /// long as the arguments agree). A host's queue is declared by its
    /// workers ([`Topology::declare_host`]), never by a publisher.
    pub async fn declare(&self, channel: &Channel) -> lapin::Result<()> {
        let mut dead = quorum();
        // The dead-letter queue must refuse rather than drop when full, so
        // at-least-once dead-lettering never loses a message.
        dead.insert("x-overflow".into(), text("reject-publish"));
        channel
            .queue_declare(self.dead_queue().as_str().into(), durable(), dead)
            .await?;

        for delay in &self.retry_delays_ms {
            let name = self.retry_queue(*delay);
            let mut retry = quorum();
            retry.insert(
                "x-message-ttl".into(),
                AMQPValue::LongLongInt(*delay as i64),
            );
            // No dead-letter routing key: an expired message keeps the key
            // it was published with, its host queue's name.
            retry.insert("x-dead-letter-exchange".into(), text(""));
            at_least_once(&mut retry);
            channel
                .queue_declare(name.as_str().into(), durable(), retry)
                .await?;
            channel
                .exchange_declare(
                    name.as_str().into(),
                    ExchangeKind::Fanout,
                    ExchangeDeclareOptions {
                        durable: true,
                        ..ExchangeDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await?;
            channel
                .queue_bind(
                    name.as_str().into(),
                    name.as_str().into(),
                    "".into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        Ok(())
    }

    /// Declares `host`'s own work queue (its workers do, at start).
    pub async fn declare_host(&self, channel: &Channel, host: &HostName) -> lapin::Result<()> {
        let mut work = quorum();
        work.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(self.delivery_limit as i64),
        );
        work.insert("x-dead-letter-exchange".into(), text(""));
        work.insert("x-dead-letter-routing-key".into(), text(&self.dead_queue()));
        at_least_once(&mut work);
        channel
            .queue_declare(self.host_queue(host).as_str().into(), durable(), work)
            .await?;
        Ok(())
    }

    /// Deletes this topology's shared queues and exchanges and the queues
    /// of `hosts` (tests clean up with it).
    pub async fn delete(&self, channel: &Channel, hosts: &[HostName]) -> lapin::Result<()> {
        for q in self
            .shared_queues()
            .into_iter()
            .chain(hosts.iter().map(|h| self.host_queue(h)))
            .chain([self.conductor_queue()])
        {
            channel
                .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                .await?;
        }
        for d in &self.retry_delays_ms {
            channel
                .exchange_delete(
                    self.retry_queue(*d).as_str().into(),
                    ExchangeDeleteOptions::default(),
                )
                .await?;
        }
        Ok(())
    }
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

fn quorum() -> FieldTable {
    let mut t = FieldTable::default();
    t.insert("x-queue-type".into(), text("quorum"));
    t
}

fn at_least_once(args: &mut FieldTable) {
    args.insert("x-dead-letter-strategy".into(), text("at-least-once"));
    // at-least-once dead-lettering requires reject-publish overflow.
    args.insert("x-overflow".into(), text("reject-publish"));
}

/// Why a publish did not end in a confirmed, routed message.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    #[error("broker did not answer within {0:?}")]
    Timeout(Duration),
    #[error("broker refused the message (nack)")]
    Nacked,
    #[error("message was unroutable: queue {0} does not exist (no worker of its host has started)")]
    Unroutable(String),
    #[error("broker error: {0}")]
    Protocol(#[from] lapin::Error),
    #[error(transparent)]
    TlsSetting(#[from] TlsSettingError),
}

/// Timeouts around every broker call, so nothing hangs on a half-dead peer.
#[derive(Debug, Clone, Copy)]
pub struct BrokerTimeouts {
    pub connect: Duration,
    pub confirm: Duration,
}

impl Default for BrokerTimeouts {
    fn default() -> Self {
        BrokerTimeouts {
            connect: Duration::from_secs(5),
            confirm: Duration::from_secs(5),
        }
    }
}

/// A connection to one node of the cluster, with a channel on which the
/// topology is declared.
pub struct Connected {
    pub conn: Connection,
    pub channel: Channel,
    /// Which of the [`BrokerNodes`] it is (start the next search after it
    /// when this one is lost).
    pub node: usize,
}

/// Opens a connection (TLS for `amqps://`, per `tls`) and a channel on the
/// first node that answers, trying each node once from `start` on
/// (round-robin), each within `timeout`, and declares the topology. Every
/// binary's connections to RabbitMQ are opened here. The back-off between
/// rounds is the caller's (it knows how many rounds failed).
pub async fn connect(
    nodes: &BrokerNodes,
    tls: &AmqpTls,
    start: usize,
    name: &str,
    topology: &Topology,
    timeout: Duration,
) -> Result<Connected, BrokerError> {
    let mut last = None;
    for k in 0..nodes.len() {
        let node = (start + k) % nodes.len();
        match connect_node(&nodes.urls()[node], tls, name, topology, timeout).await {
            Ok((conn, channel)) => {
                if k > 0 || nodes.len() > 1 {
                    tracing::info!(broker.name = %name, broker.node = nodes.name(node), "connected to RabbitMQ");
                }
                return Ok(Connected {
                    conn,
                    channel,
                    node,
                });
            }
            Err(e) => {
                if nodes.len() > 1 {
                    tracing::warn!(broker.name = %name, broker.node = nodes.name(node), error = %e, "RabbitMQ node unreachable; trying the next");
                }
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or_else(|| BrokerError::Unavailable("no RabbitMQ node configured".into())))
}

/// The largest frame a connection of ours negotiates, unless `AMQP_URL`'s
/// query says otherwise (`?frame_max=`). lapin keeps 32 frames of buffer for
/// each direction of a connection, zeroed, so this sets its memory: at
/// RabbitMQ's 128 KiB that was 8 MiB per connection (a worker holds two),
/// and 16 GiB for the benchmark's 1,000 in-process hosts. A job
/// message and a conductor call are under a kilobyte; a larger message only
/// takes more frames.
pub const FRAME_MAX: u32 = 16 * 1024;

/// One node: connection, channel and topology within `timeout`.
async fn connect_node(
    url: &str,
    tls: &AmqpTls,
    name: &str,
    topology: &Topology,
    timeout: Duration,
) -> Result<(Connection, Channel), BrokerError> {
    let tls = tls.config(url)?;
    let mut uri: AMQPUri = url.parse().map_err(BrokerError::Unavailable)?;
    uri.query.frame_max.get_or_insert(FRAME_MAX);
    let fut = async {
        let props = ConnectionProperties::default().with_connection_name(name.into());
        let runtime = lapin::runtime::default_runtime()?;
        let conn = Connection::connect_uri_with_config(uri, props, tls, runtime).await?;
        let channel = conn.create_channel().await?;
        topology.declare(&channel).await?;
        Ok::<_, lapin::Error>((conn, channel))
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(pair)) => Ok(pair),
        // The TLS failure (an unknown CA, a certificate for another name) is
        // a source or two below lapin's "IO error".
        Ok(Err(e)) => Err(BrokerError::Unavailable(crate::tls::chain(&e))),
        Err(_) => Err(BrokerError::Timeout(timeout)),
    }
}

/// Sets the consumer prefetch on a channel.
pub async fn set_prefetch(channel: &Channel, prefetch: u16) -> lapin::Result<()> {
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await
}

/// A publishing connection shared by all tasks of a process. It connects
/// lazily, reconnects after failures (no sooner than the back-off allows, so a
/// dead broker costs a request nothing but a failed fast path), and publishes
/// with confirms.
pub struct Publisher {
    nodes: BrokerNodes,
    tls: AmqpTls,
    name: String,
    topology: Topology,
    timeouts: BrokerTimeouts,
    link: Mutex<Link>,
}

#[derive(Default)]
struct Link {
    conn: Option<Connection>,
    channel: Option<Channel>,
    failures: u32,
    retry_after: Option<Instant>,
    /// The node the next connection tries first: after a loss, the one
    /// after the node that was lost, so the publisher moves on.
    next_node: usize,
    /// The node of the current connection.
    node: usize,
}

impl Publisher {
    pub fn new(
        nodes: &BrokerNodes,
        tls: &AmqpTls,
        name: &str,
        topology: Topology,
        timeouts: BrokerTimeouts,
    ) -> Arc<Self> {
        Arc::new(Publisher {
            nodes: nodes.clone(),
            tls: tls.clone(),
            name: name.to_string(),
            topology,
            timeouts,
            link: Mutex::new(Link {
                next_node: nodes.random_start(),
                ..Link::default()
            }),
        })
    }

    /// The node the publisher is connected to (or was, last), as `host:port`.
    pub async fn node(&self) -> String {
        let link = self.link.lock().await;
        self.nodes.name(link.node).to_string()
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// Returns a connected confirm channel, connecting if the back-off allows.
    pub async fn channel(&self) -> Result<Channel, BrokerError> {
        let mut link = self.link.lock().await;
        if let Some(c) = &link.channel
            && c.status().connected()
        {
            return Ok(c.clone());
        }
        link.channel = None;
        if let Some(conn) = link.conn.take() {
            // Best effort; the broker may be gone.
            drop(conn);
            link.next_node = link.node + 1;
        }
        if let Some(t) = link.retry_after
            && Instant::now() < t
        {
            return Err(BrokerError::Unavailable("reconnect back-off".into()));
        }
        let result = async {
            let Connected {
                conn,
                channel,
                node,
            } = connect(
                &self.nodes,
                &self.tls,
                link.next_node,
                &self.name,
                &self.topology,
                self.timeouts.connect,
            )
            .await?;
            tokio::time::timeout(
                self.timeouts.confirm,
                channel.confirm_select(ConfirmSelectOptions::default()),
            )
            .await
            .map_err(|_| BrokerError::Timeout(self.timeouts.confirm))??;
            Ok::<_, BrokerError>((conn, channel, node))
        }
        .await;
        match result {
            Ok((conn, channel, node)) => {
                link.node = node;
                link.next_node = node;
                if link.failures > 0 {
                    tracing::info!(broker.name = %self.name, "reconnected to RabbitMQ");
                }
                link.failures = 0;
                link.retry_after = None;
                link.conn = Some(conn);
                link.channel = Some(channel.clone());
                Ok(channel)
            }
            Err(e) => {
                let delay = Backoff::RECONNECT.delay(link.failures);
                link.failures = link.failures.saturating_add(1);
                link.retry_after = Some(Instant::now() + delay);
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "RabbitMQ connection failed");
                Err(e)
            }
        }
    }

    /// Forgets the current channel so the next call reconnects.
    pub async fn reset(&self) {
        let mut link = self.link.lock().await;
        link.channel = None;
        if link.conn.take().is_some() {
            link.next_node = link.node + 1;
        }
    }

    /// Publishes a stop job to its host's queue and waits for the broker's
    /// confirm. [`BrokerError::Unroutable`] when that host has no queue: no
    /// worker of it has ever started (or its queue was deleted); the job
    /// stays in PostgreSQL and the host's first worker re-drives it.
    pub async fn publish(&self, job: &StopJob) -> Result<(), BrokerError> {
        let queue = self.topology.host_queue(&job.host);
        self.publish_via("", &queue, job).await
    }

    /// Parks a stop on the retry tier `tier` (a name of
    /// [`Topology::retry_queue_for_attempt`]); it returns to its host's
    /// queue when the tier's delay is over.
    pub async fn publish_retry(&self, tier: &str, job: &StopJob) -> Result<(), BrokerError> {
        let queue = self.topology.host_queue(&job.host);
        self.publish_via(tier, &queue, job).await
    }

    /// Publishes persistent + mandatory to `exchange` under `routing_key`
    /// and waits for the confirm. Ok only if the broker stored and routed it.
    async fn publish_via(
        &self,
        exchange: &str,
        routing_key: &str,
        job: &StopJob,
    ) -> Result<(), BrokerError> {
        let channel = self.channel().await?;
        let result = publish_on(&channel, exchange, routing_key, job, self.timeouts.confirm).await;
        if matches!(
            result,
            Err(BrokerError::Protocol(_)) | Err(BrokerError::Timeout(_))
        ) {
            self.reset().await;
        }
        result
    }
}

/// One confirmed, persistent, mandatory publish on a confirm-mode channel.
///
/// A message the broker could not route comes back as a `basic.return`
/// ahead of its ack, which lapin hands over with that ack's confirmation:
/// never counted as delivered.
pub async fn publish_on(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    job: &StopJob,
    timeout: Duration,
) -> Result<(), BrokerError> {
    let props = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type(ShortString::from("application/json"))
        .with_message_id(ShortString::from(job.job_id.to_string()))
        .with_correlation_id(ShortString::from(job.request_id.as_str()));
    let payload = job.to_bytes();
    let fut = async {
        let confirm = channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &payload,
                props,
            )
            .await?
            .await?;
        Ok::<_, lapin::Error>(confirm)
    };
    match tokio::time::timeout(timeout, fut).await {
        Err(_) => Err(BrokerError::Timeout(timeout)),
        Ok(Err(e)) => Err(BrokerError::Protocol(e)),
        Ok(Ok(Confirmation::Ack(None))) => Ok(()),
        Ok(Ok(Confirmation::Ack(Some(_)))) => Err(BrokerError::Unroutable(routing_key.to_string())),
        Ok(Ok(Confirmation::Nack(_))) => Err(BrokerError::Nacked),
        Ok(Ok(Confirmation::NotRequested)) => Err(BrokerError::Unavailable(
            "channel is not in confirm mode".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against the machine's RabbitMQ (`AMQP_URL`), under a prefix of its
    /// own whose queues it deletes.
    #[tokio::test]
    async fn connections_negotiate_small_frames_unless_the_url_says_otherwise() {
        let base = std::env::var("AMQP_URL")
            .unwrap_or_else(|_| crate::config::DEFAULT_AMQP_URL.to_string());
        let topology = Topology::with_prefix(format!("frames-{}", uuid::Uuid::new_v4().simple()));
        let sep = if base.contains('?') { '&' } else { '?' };
        for (url, frame_max) in [
            (base.clone(), FRAME_MAX),
            (format!("{base}{sep}frame_max=65536"), 65_536),
        ] {
            let nodes: BrokerNodes = url.parse().unwrap();
            let c = connect(
                &nodes,
                &AmqpTls::default(),
                0,
                "frames-test",
                &topology,
                Duration::from_secs(10),
            )
            .await
            .unwrap();
            assert_eq!(c.conn.configuration().frame_max(), frame_max, "{url}");
            topology.delete(&c.channel, &[]).await.unwrap();
            c.conn.close(200, "done".into()).await.unwrap();
        }
    }
}
