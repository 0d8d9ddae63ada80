//! The worker's side: one connection, calls published to the conductor's
//! queue, answers consumed from RabbitMQ's direct reply-to
//! (`amq.rabbitmq.reply-to`, no queue to declare or clean up) and matched by
//! correlation id.

use std::collections::HashMap;
use std::sync::{Arc, Mutex as SyncMutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::options::BasicPublishOptions;
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel, Connection};
use tokio::sync::{Mutex, oneshot};

use super::{Call, RemoteError, Reply};
use crate::backoff::Backoff;
use crate::broker::{self, Topology};
use crate::broker_nodes::BrokerNodes;
use crate::store::StoreError;
use crate::tls::AmqpTls;

const REPLY_TO: &str = "amq.rabbitmq.reply-to";

type Waiting = Arc<SyncMutex<HashMap<String, oneshot::Sender<Reply>>>>;

/// Calls the conductor. Connects lazily and again after a loss, no sooner
/// than the back-off allows (until then a call fails at once as
/// unavailable, which the worker retries as it would a database outage).
pub struct ConductorClient {
    nodes: BrokerNodes,
    tls: AmqpTls,
    name: String,
    topology: Topology,
    connect_timeout: Duration,
    /// How long a call may wait for its answer (and lives in the queue).
    call_timeout: Duration,
    link: Mutex<Link>,
}

#[derive(Default)]
struct Link {
    live: Option<Live>,
    failures: u32,
    retry_after: Option<Instant>,
    next_node: usize,
}

struct Live {
    _conn: Connection,
    channel: Channel,
    waiting: Waiting,
    node: usize,
}

impl ConductorClient {
    pub fn new(
        nodes: &BrokerNodes,
        tls: &AmqpTls,
        name: &str,
        topology: Topology,
        connect_timeout: Duration,
        call_timeout: Duration,
    ) -> Arc<Self> {
        Arc::new(ConductorClient {
            nodes: nodes.clone(),
            tls: tls.clone(),
            name: name.to_string(),
            topology,
            connect_timeout,
            call_timeout,
            link: Mutex::new(Link {
                next_node: nodes.random_start(),
                ..Link::default()
            }),
        })
    }

    /// Sends `call` and waits for its answer. An error the conductor
    /// answered with comes back as [`StoreError::Remote`]; no answer in time
    /// is [`StoreError::TimedOut`] (the call may have run).
    pub async fn call(&self, call: &Call) -> Result<Reply, StoreError> {
        let body = serde_json::to_vec(call).map_err(RemoteError::unreachable)?;
        let (channel, waiting) = self.channel().await?;
        let id = uuid::Uuid::new_v4().simple().to_string();
        let (tx, rx) = oneshot::channel();
        waiting.lock().expect("not poisoned").insert(id.clone(), tx);
        let props = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_reply_to(REPLY_TO.into())
            .with_correlation_id(ShortString::from(id.as_str()))
            // Not taken in time, a call expires unrun: its caller has given up.
            .with_expiration(ShortString::from(
                self.call_timeout.as_millis().to_string().as_str(),
            ))
            // And the conductor gives up on it after as long again.
            .with_headers(super::timeout_header(self.call_timeout));
        let sent = channel
            .basic_publish(
                "".into(),
                self.topology.conductor_queue().as_str().into(),
                BasicPublishOptions::default(),
                &body,
                props,
            )
            .await;
        if let Err(e) = sent {
            waiting.lock().expect("not poisoned").remove(&id);
            self.reset().await;
            return Err(RemoteError::unreachable(e));
        }
        match tokio::time::timeout(self.call_timeout, rx).await {
            Ok(Ok(Reply::Error(e))) => Err(StoreError::Remote(e)),
            Ok(Ok(reply)) => Ok(reply),
            // The connection went while we waited: as a database
            // connection lost mid-statement, the call may have run.
            Ok(Err(_)) => Err(RemoteError::unreachable(
                "the connection was lost before the answer came",
            )),
            Err(_) => {
                waiting.lock().expect("not poisoned").remove(&id);
                Err(StoreError::TimedOut(self.call_timeout))
            }
        }
    }

    async fn reset(&self) {
        let mut link = self.link.lock().await;
        if let Some(live) = link.live.take() {
            link.next_node = live.node + 1;
        }
    }

    async fn channel(&self) -> Result<(Channel, Waiting), StoreError> {
        let mut link = self.link.lock().await;
        if let Some(live) = &link.live {
            if live.channel.status().connected() {
                return Ok((live.channel.clone(), live.waiting.clone()));
            }
            let node = live.node;
            link.live = None;
            link.next_node = node + 1;
        }
        if let Some(t) = link.retry_after
            && Instant::now() < t
        {
            return Err(RemoteError::unreachable("reconnect back-off"));
        }
        match self.open(link.next_node).await {
            Ok(live) => {
                if link.failures > 0 {
                    tracing::info!(broker.name = %self.name, "reconnected to the conductor's queue");
                }
                link.failures = 0;
                link.retry_after = None;
                let pair = (live.channel.clone(), live.waiting.clone());
                link.live = Some(live);
                Ok(pair)
            }
            Err(e) => {
                let delay = Backoff::RECONNECT.delay(link.failures);
                link.failures = link.failures.saturating_add(1);
                link.retry_after = Some(Instant::now() + delay);
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "cannot reach the conductor's queue");
                Err(RemoteError::unreachable(e))
            }
        }
    }

    /// A connection, the conductor's queue declared (so calls wait there
    /// for a conductor rather than vanish), and a consumer of answers.
    async fn open(&self, start: usize) -> Result<Live, broker::BrokerError> {
        let c = broker::connect(
            &self.nodes,
            &self.tls,
            start,
            &self.name,
            &self.topology,
            self.connect_timeout,
        )
        .await?;
        let answers = super::attach(
            &c.channel,
            &self.topology,
            REPLY_TO,
            None,
            self.connect_timeout,
        )
        .await?;
        let waiting: Waiting = Arc::default();
        let w = waiting.clone();
        tokio::spawn(async move {
            let mut answers = answers;
            while let Some(Ok(delivery)) = answers.next().await {
                let Some(id) = delivery.properties.correlation_id() else {
                    continue;
                };
                let Some(tx) = w.lock().expect("not poisoned").remove(id.as_str()) else {
                    // An answer after its caller gave up.
                    continue;
                };
                let reply = serde_json::from_slice(&delivery.data).unwrap_or_else(|e| {
                    Reply::Error(RemoteError {
                        transient: false,
                        unavailable: false,
                        message: format!("the conductor's answer is not a reply: {e}"),
                    })
                });
                let _ = tx.send(reply);
            }
            // The connection is gone: every caller still waiting learns so
            // now (its sender is dropped) rather than at its timeout.
            w.lock().expect("not poisoned").clear();
        });
        Ok(Live {
            _conn: c.conn,
            channel: c.channel,
            waiting,
            node: c.node,
        })
    }
}
