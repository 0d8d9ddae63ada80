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
    BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use tokio::sync::Mutex;

use crate::backoff::Backoff;
use crate::message::StopJob;

/// Names and arguments of every queue. Tests use their own prefix so they run
/// in parallel and can delete what they made.
#[derive(Debug, Clone)]
pub struct Topology {
    /// Prefix of every queue name (`shutoff` by default).
    pub prefix: String,
    /// Quorum-queue `x-delivery-limit`: a message that keeps killing its
    /// worker is dead-lettered after this many deliveries instead of looping.
    pub delivery_limit: u32,
    /// One delay queue per back-off tier (milliseconds). Messages wait there
    /// out their TTL and are dead-lettered back to the work queue.
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

    /// Where accepted stops wait for a worker.
    pub fn work_queue(&self) -> String {
        format!("{}.stop", self.prefix)
    }

    /// Poison messages and messages over the delivery limit end here.
    pub fn dead_queue(&self) -> String {
        format!("{}.stop.dead", self.prefix)
    }

    /// The delay queue for a retry tier.
    pub fn retry_queue(&self, delay_ms: u64) -> String {
        format!("{}.stop.retry.{delay_ms}ms", self.prefix)
    }

    /// The retry queue used before attempt `attempt + 1` (attempt is 1-based).
    pub fn retry_queue_for_attempt(&self, attempt: u32) -> Option<String> {
        if self.retry_delays_ms.is_empty() {
            return None;
        }
        let i = (attempt.saturating_sub(1) as usize).min(self.retry_delays_ms.len() - 1);
        Some(self.retry_queue(self.retry_delays_ms[i]))
    }

    pub fn all_queues(&self) -> Vec<String> {
        let mut q = vec![self.work_queue(), self.dead_queue()];
        q.extend(self.retry_delays_ms.iter().map(|d| self.retry_queue(*d)));
        q
    }

    /// Declares every queue (idempotent as long as the arguments agree).
    pub async fn declare(&self, channel: &Channel) -> lapin::Result<()> {
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        let mut dead = quorum();
        // The dead-letter queue must refuse rather than drop when full, so
        // at-least-once dead-lettering never loses a message.
        dead.insert("x-overflow".into(), text("reject-publish"));
        channel
            .queue_declare(self.dead_queue().as_str().into(), durable, dead)
            .await?;

        let mut work = quorum();
        work.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(self.delivery_limit as i64),
        );
        dead_letter_to(&mut work, &self.dead_queue());
        channel
            .queue_declare(self.work_queue().as_str().into(), durable, work)
            .await?;

        for delay in &self.retry_delays_ms {
            let mut retry = quorum();
            retry.insert(
                "x-message-ttl".into(),
                AMQPValue::LongLongInt(*delay as i64),
            );
            dead_letter_to(&mut retry, &self.work_queue());
            channel
                .queue_declare(self.retry_queue(*delay).as_str().into(), durable, retry)
                .await?;
        }
        Ok(())
    }

    /// Deletes every queue of this topology (tests clean up with it).
    pub async fn delete(&self, channel: &Channel) -> lapin::Result<()> {
        for q in self.all_queues() {
            channel
                .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                .await?;
        }
        Ok(())
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

fn dead_letter_to(args: &mut FieldTable, queue: &str) {
    args.insert("x-dead-letter-exchange".into(), text(""));
    args.insert("x-dead-letter-routing-key".into(), text(queue));
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
    #[error("message was unroutable: queue {0} does not exist")]
    Unroutable(String),
    #[error("broker error: {0}")]
    Protocol(#[from] lapin::Error),
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

/// Opens a connection and a channel, with a timeout, and declares the topology.
pub async fn connect(
    url: &str,
    name: &str,
    topology: &Topology,
    timeout: Duration,
) -> Result<(Connection, Channel), BrokerError> {
    let fut = async {
        let props = ConnectionProperties::default().with_connection_name(name.into());
        let conn = Connection::connect(url, props).await?;
        let channel = conn.create_channel().await?;
        topology.declare(&channel).await?;
        Ok::<_, lapin::Error>((conn, channel))
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(pair)) => Ok(pair),
        Ok(Err(e)) => Err(BrokerError::Unavailable(e.to_string())),
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
    url: String,
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
}

impl Publisher {
    pub fn new(url: &str, name: &str, topology: Topology, timeouts: BrokerTimeouts) -> Arc<Self> {
        Arc::new(Publisher {
            url: url.to_string(),
            name: name.to_string(),
            topology,
            timeouts,
            link: Mutex::new(Link::default()),
        })
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
        }
        if let Some(t) = link.retry_after
            && Instant::now() < t
        {
            return Err(BrokerError::Unavailable("reconnect back-off".into()));
        }
        let result = async {
            let (conn, channel) =
                connect(&self.url, &self.name, &self.topology, self.timeouts.connect).await?;
            tokio::time::timeout(
                self.timeouts.confirm,
                channel.confirm_select(ConfirmSelectOptions::default()),
            )
            .await
            .map_err(|_| BrokerError::Timeout(self.timeouts.confirm))??;
            Ok::<_, BrokerError>((conn, channel))
        }
        .await;
        match result {
            Ok((conn, channel)) => {
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
        link.conn = None;
    }

    /// Publishes a stop job to the work queue and waits for the broker's confirm.
    pub async fn publish(&self, job: &StopJob) -> Result<(), BrokerError> {
        let queue = self.topology.work_queue();
        self.publish_to(&queue, job).await
    }

    /// Publishes persistent + mandatory to `queue` (via the default exchange)
    /// and waits for the confirm. Ok only if the broker stored and routed it.
    pub async fn publish_to(&self, queue: &str, job: &StopJob) -> Result<(), BrokerError> {
        let channel = self.channel().await?;
        let result = publish_on(&channel, queue, job, self.timeouts.confirm).await;
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
pub async fn publish_on(
    channel: &Channel,
    queue: &str,
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
                "".into(),
                queue.into(),
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
        Ok(Ok(Confirmation::Ack(Some(_)))) => Err(BrokerError::Unroutable(queue.to_string())),
        Ok(Ok(Confirmation::Nack(_))) => Err(BrokerError::Nacked),
        Ok(Ok(Confirmation::NotRequested)) => Err(BrokerError::Unavailable(
            "channel is not in confirm mode".into(),
        )),
    }
}
