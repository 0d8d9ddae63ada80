//! The conductor: how a worker reaches the database without a connection of
//! its own, as Nova's computes reach theirs through nova-conductor.
//!
//! With a worker on every hypervisor host, each stop's claim and success
//! were a statement and a commit of their own (a host sees a stop or two a
//! second, so its worker's batches never gather more than one), and every
//! host held connections. A worker started with `--via-conductor` instead
//! sends each store call as a message to `<prefix>.conductor` and waits for
//! the answer on RabbitMQ's direct reply-to; every API process consumes that
//! queue ([`server`]) and group-commits the claims, lease renewals,
//! successes and heartbeats of the whole fleet into one statement each. The
//! decisions stay the same conditional UPDATEs of [`crate::store::claim`]:
//! who may take a job, on which host, under which lease, is still decided
//! in PostgreSQL.
//!
//! A call is at most once: a request nobody took within the caller's
//! timeout expires in the queue, and a caller that gets no answer treats
//! the call as a statement whose commit it did not see (its lease, if one
//! was taken, lapses and the stop is claimed again), exactly as with a lost
//! database connection.

pub mod client;
pub mod server;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::ids::HostName;
use crate::store::StoreError;
use crate::store::claim::{Claim, ClaimRequest, ClaimedJob, Success};
use crate::store::rescue::Rescue;

pub use client::ConductorClient;

/// The header with which a caller says how long it waits for an answer.
const TIMEOUT_HEADER: &str = "x-shutoff-timeout-ms";

fn timeout_header(timeout: std::time::Duration) -> lapin::types::FieldTable {
    let mut headers = lapin::types::FieldTable::default();
    headers.insert(
        TIMEOUT_HEADER.into(),
        lapin::types::AMQPValue::LongLongInt(timeout.as_millis() as i64),
    );
    headers
}

/// How long the caller of a call waits, by its header; a conductor that has
/// not answered by then stops trying (a batched call not yet started never
/// runs), since nobody would take the answer. Measured from when the
/// conductor received it, so no two clocks are compared.
fn caller_timeout(props: &lapin::BasicProperties) -> std::time::Duration {
    let ms = props
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(TIMEOUT_HEADER))
        .and_then(|v| v.as_long_long_int())
        .unwrap_or(10_000);
    std::time::Duration::from_millis(ms.clamp(100, 60_000) as u64)
}

/// Declares the conductor's queue on `channel` and consumes `queue` (the
/// conductor's, or the caller's direct reply-to) without acks: a call is at
/// most once, and direct reply-to is consumed that way by rule.
async fn attach(
    channel: &lapin::Channel,
    topology: &crate::broker::Topology,
    queue: &str,
    prefetch: Option<u16>,
    timeout: std::time::Duration,
) -> Result<lapin::Consumer, crate::broker::BrokerError> {
    use lapin::options::BasicConsumeOptions;
    let consume = async {
        topology.declare_conductor(channel).await?;
        if let Some(n) = prefetch {
            crate::broker::set_prefetch(channel, n).await?;
        }
        channel
            .basic_consume(
                queue.into(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                lapin::types::FieldTable::default(),
            )
            .await
    };
    tokio::time::timeout(timeout, consume)
        .await
        .map_err(|_| crate::broker::BrokerError::Timeout(timeout))?
        .map_err(crate::broker::BrokerError::from)
}

/// A worker's store call, one per [`crate::store`] function it uses.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "call", rename_all = "snake_case")]
pub enum Call {
    Claim(ClaimRequest),
    Heartbeat {
        job: ClaimedJob,
        lease_secs: f64,
    },
    Succeed(Success),
    Fail {
        job: ClaimedJob,
        message: String,
        details: String,
    },
    FailExhausted {
        id: Uuid,
        message: String,
        worker: String,
    },
    Retry {
        job: ClaimedJob,
        error: String,
    },
    Release(ClaimedJob),
    DeadLetter {
        queue: String,
        reason: String,
        message_id: Option<String>,
        payload: String,
        worker: String,
    },
    Beat {
        host: HostName,
        worker: String,
        version: String,
    },
    Leave {
        host: HostName,
        worker: String,
    },
    DbNow,
    TouchHost {
        host: HostName,
        before: DateTime<Utc>,
    },
    Redrive {
        host: HostName,
        before: DateTime<Utc>,
        worker: String,
        limit: i64,
    },
    Ping {
        timeout_ms: u64,
    },
}

impl Call {
    /// The call's name, for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Call::Claim(_) => "claim",
            Call::Heartbeat { .. } => "heartbeat",
            Call::Succeed(_) => "succeed",
            Call::Fail { .. } => "fail",
            Call::FailExhausted { .. } => "fail_exhausted",
            Call::Retry { .. } => "retry",
            Call::Release(_) => "release",
            Call::DeadLetter { .. } => "dead_letter",
            Call::Beat { .. } => "beat",
            Call::Leave { .. } => "leave",
            Call::DbNow => "db_now",
            Call::TouchHost { .. } => "touch_host",
            Call::Redrive { .. } => "redrive",
            Call::Ping { .. } => "ping",
        }
    }
}

/// The conductor's answer to a [`Call`].
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "reply", content = "value", rename_all = "snake_case")]
pub enum Reply {
    Claim(Claim),
    /// For the calls whose answer is "did our condition hold".
    Done(bool),
    Unit,
    Now(DateTime<Utc>),
    Count(u64),
    Rescues(Vec<Rescue>),
    Error(RemoteError),
}

/// A store error as it travels back to the worker: what the worker
/// branches on (worth retrying? database away?) and the text.
#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct RemoteError {
    pub transient: bool,
    pub unavailable: bool,
    pub message: String,
}

impl RemoteError {
    /// The conductor cannot be reached (or its answer was lost): nothing is
    /// known about the call, try again later.
    pub fn unreachable(why: impl std::fmt::Display) -> StoreError {
        StoreError::Remote(RemoteError {
            transient: true,
            unavailable: true,
            message: format!("the conductor is unavailable: {why}"),
        })
    }
}

impl From<&StoreError> for RemoteError {
    fn from(e: &StoreError) -> Self {
        RemoteError {
            transient: e.is_transient(),
            unavailable: e.is_unavailable(),
            message: format!("conductor: {e}"),
        }
    }
}

/// The reply a caller did not expect for its call (a bug on one side).
pub fn unexpected(call: &'static str, reply: Reply) -> StoreError {
    StoreError::Remote(RemoteError {
        transient: false,
        unavailable: false,
        message: format!("the conductor answered {call} with {reply:?}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::StopJob;

    /// The conductor gives up on a call when its caller does, by the
    /// caller's header, and on one without a header after 10 s.
    #[test]
    fn a_call_is_given_up_when_its_caller_gives_up() {
        let with = lapin::BasicProperties::default()
            .with_headers(timeout_header(std::time::Duration::from_secs(3)));
        assert_eq!(caller_timeout(&with), std::time::Duration::from_secs(3));
        let without = lapin::BasicProperties::default();
        assert_eq!(caller_timeout(&without), std::time::Duration::from_secs(10));
    }

    /// Every call and reply survives the trip as JSON, tagged by name.
    #[test]
    fn calls_and_replies_round_trip_as_tagged_json() {
        let job = StopJob {
            job_id: Uuid::new_v4(),
            instance_uuid: Uuid::new_v4(),
            host: HostName::parse("hv-1").unwrap(),
            request_id: "req-1".into(),
        };
        let call = Call::Claim(ClaimRequest {
            message: job.clone(),
            worker: "w1".into(),
            host: job.host.clone(),
            lease_secs: 30.0,
        });
        let text = serde_json::to_string(&call).unwrap();
        assert!(text.starts_with(r#"{"call":"claim""#), "{text}");
        let back: Call = serde_json::from_str(&text).unwrap();
        assert!(matches!(back, Call::Claim(r) if r.message == job && r.worker == "w1"));

        let reply = Reply::Claim(Claim::OtherHost {
            host: HostName::parse("hv-2").unwrap(),
        });
        let text = serde_json::to_string(&reply).unwrap();
        let back: Reply = serde_json::from_str(&text).unwrap();
        assert!(matches!(back, Reply::Claim(Claim::OtherHost { host }) if host.as_str() == "hv-2"));

        let err = RemoteError::from(&StoreError::TimedOut(std::time::Duration::from_secs(1)));
        assert!(err.transient && !err.unavailable);
        let text = serde_json::to_string(&Reply::Error(err)).unwrap();
        assert!(matches!(serde_json::from_str(&text).unwrap(), Reply::Error(e) if e.transient));
    }
}
