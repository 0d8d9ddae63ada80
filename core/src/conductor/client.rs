//! The worker's side: calls published to the conductor's queue, answers
//! consumed from RabbitMQ's direct reply-to (`amq.rabbitmq.reply-to`, no
//! queue to declare or clean up) and matched by correlation id. The calls
//! ride a channel of the worker's consumer connection: with a worker on
//! every host that is one connection per host instead of two, and one IO
//! thread (lapin runs one per connection).

use std::collections::HashMap;
use std::sync::{Arc, Mutex as SyncMutex};
use std::time::Duration;

use futures::StreamExt;
use lapin::options::BasicPublishOptions;
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel};
use tokio::sync::{Mutex, oneshot, watch};

use super::{Call, RemoteError, Reply};
use crate::broker::{self, Topology};
use crate::store::StoreError;

const REPLY_TO: &str = "amq.rabbitmq.reply-to";

type Waiting = Arc<SyncMutex<HashMap<String, oneshot::Sender<Reply>>>>;

/// Calls the conductor, on the channel the worker's consumer hands it each
/// time its connection is (re)opened (`None` while it is down). A call
/// while there is none waits up to `connect_timeout` for one, then fails as
/// unavailable, which the worker retries as it would a database outage.
pub struct ConductorClient {
    channels: watch::Receiver<Option<Channel>>,
    topology: Topology,
    connect_timeout: Duration,
    /// How long a call may wait for its answer (and lives in the queue).
    call_timeout: Duration,
    live: Mutex<Option<Live>>,
}

struct Live {
    channel: Channel,
    waiting: Waiting,
}

impl ConductorClient {
    pub fn new(
        channels: watch::Receiver<Option<Channel>>,
        topology: Topology,
        connect_timeout: Duration,
        call_timeout: Duration,
    ) -> Arc<Self> {
        Arc::new(ConductorClient {
            channels,
            topology,
            connect_timeout,
            call_timeout,
            live: Mutex::new(None),
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
        self.live.lock().await.take();
    }

    async fn channel(&self) -> Result<(Channel, Waiting), StoreError> {
        let mut live = self.live.lock().await;
        if let Some(l) = live.as_ref()
            && l.channel.status().connected()
        {
            return Ok((l.channel.clone(), l.waiting.clone()));
        }
        let l = self.open().await.map_err(|e| {
            tracing::warn!(error = %e, "cannot reach the conductor's queue");
            RemoteError::unreachable(e)
        })?;
        let pair = (l.channel.clone(), l.waiting.clone());
        *live = Some(l);
        Ok(pair)
    }

    /// The consumer connection's channel, the conductor's queue declared
    /// (so calls wait there for a conductor rather than vanish), and a
    /// consumer of answers.
    async fn open(&self) -> Result<Live, broker::BrokerError> {
        let mut channels = self.channels.clone();
        let shared = tokio::time::timeout(
            self.connect_timeout,
            channels.wait_for(|c| c.as_ref().is_some_and(|c| c.status().connected())),
        )
        .await;
        let Ok(Ok(Some(channel))) = shared.map(|r| r.map(|c| c.clone())) else {
            // The worker's consumer is not connected (yet), or has stopped
            // handing out channels.
            return Err(broker::BrokerError::Timeout(self.connect_timeout));
        };
        let answers = super::attach(
            &channel,
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
        Ok(Live { channel, waiting })
    }
}
