//! The RabbitMQ consumer loop. It (re)connects with back-off, consumes with
//! manual acks and a prefetch (so many jobs run at once and a slow power-off
//! never holds up the queue), and on shutdown stops taking jobs, gives
//! in-flight ones the grace period, and closes the channel so the broker
//! requeues whatever is left.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicRejectOptions,
};
use lapin::types::FieldTable;
use shutoff_core::backoff::Backoff;
use shutoff_core::broker::{self, Topology};
use shutoff_core::broker_nodes::BrokerNodes;
use shutoff_core::message::StopJob;
use shutoff_core::tls::AmqpTls;
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::stop_job::{self, Disposition, JobContext};

pub struct ConsumerSettings {
    pub amqp_url: BrokerNodes,
    pub amqp_tls: AmqpTls,
    pub topology: Topology,
    pub prefetch: u16,
    pub grace: Duration,
    pub connect_timeout: Duration,
    /// Notified each time the consumer attaches to the host's queue, so the
    /// host's waiting stops are re-driven (see [`crate::presence`]).
    pub attached: Arc<Notify>,
    /// With `--via-conductor`: where to hand a second channel of each
    /// connection for the conductor's calls ([`ConductorClient`]),
    /// and `None` while there is no connection.
    ///
    /// [`ConductorClient`]: shutoff_core::conductor::ConductorClient
    pub conductor_channels: Option<watch::Sender<Option<lapin::Channel>>>,
}

/// Consumes until `shutdown`; returns after the in-flight jobs finished or
/// the grace period ran out, with the connection still open (the
/// conductor's calls of the worker's last steps may still use it; the
/// caller closes it). `ready` is true while a consumer is attached.
pub async fn run(
    ctx: Arc<JobContext>,
    settings: ConsumerSettings,
    ready: Arc<AtomicBool>,
    shutdown: CancellationToken,
) -> Option<lapin::Connection> {
    // In-flight jobs; aborted if they outlive the grace period, as they would
    // be if the process exited (their leases then lapse and they are rescued).
    let mut in_flight = JoinSet::new();
    let queue = settings.topology.host_queue(&ctx.host);
    let mut failures = 0u32;
    let mut open: Option<(lapin::Connection, lapin::Channel)> = None;
    // After a loss the search starts at the next node, so a worker whose
    // node died moves to another even if the dead one still accepts TCP.
    let mut next_node = settings.amqp_url.random_start();
    while !shutdown.is_cancelled() {
        let broker::Connected {
            conn,
            channel,
            node,
        } = match broker::connect(
            &settings.amqp_url,
            &settings.amqp_tls,
            next_node,
            &format!("shutoff-worker {}", ctx.worker_id),
            &settings.topology,
            settings.connect_timeout,
        )
        .await
        {
            Ok(c) => c,
            Err(e) => {
                let delay = Backoff::RECONNECT.delay(failures);
                failures += 1;
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "cannot reach RabbitMQ");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(delay) => continue,
                }
            }
        };
        next_node = node + 1;
        let tag = format!("{}-{}", ctx.worker_id, uuid::Uuid::new_v4().simple());
        let consumer = tokio::time::timeout(settings.connect_timeout, async {
            // Only a host's own workers declare its queue: until one has,
            // publishes for the host are returned rather than kept where
            // nobody would take them.
            settings.topology.declare_host(&channel, &ctx.host).await?;
            broker::set_prefetch(&channel, settings.prefetch).await?;
            let consumer = channel
                .basic_consume(
                    queue.as_str().into(),
                    tag.as_str().into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            if let Some(channels) = &settings.conductor_channels {
                channels.send_replace(Some(conn.create_channel().await?));
            }
            Ok::<_, lapin::Error>(consumer)
        })
        .await;
        let mut consumer = match consumer {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot start consuming");
                tokio::time::sleep(Backoff::RECONNECT.delay(failures)).await;
                failures += 1;
                continue;
            }
            Err(_) => {
                tracing::warn!("broker did not answer basic.qos/basic.consume in time");
                tokio::time::sleep(Backoff::RECONNECT.delay(failures)).await;
                failures += 1;
                continue;
            }
        };
        if failures > 0 {
            tracing::info!("reconnected to RabbitMQ");
        }
        failures = 0;
        ready.store(true, Ordering::SeqCst);
        settings.attached.notify_one();
        tracing::info!(%queue, host = %ctx.host, prefetch = settings.prefetch,
            broker.node = settings.amqp_url.name(node), "consuming");
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    // Stop taking jobs; keep the channel open so in-flight
                    // jobs can still ack.
                    let _ = tokio::time::timeout(
                        Duration::from_secs(5),
                        channel.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()),
                    ).await;
                    break;
                }
                Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
                next = consumer.next() => match next {
                    Some(Ok(delivery)) => {
                        in_flight.spawn(process(ctx.clone(), delivery, queue.clone(), shutdown.clone()));
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "consumer failed; reconnecting");
                        break;
                    }
                    None => {
                        tracing::warn!("consumer was cancelled by the broker; reconnecting");
                        break;
                    }
                }
            }
        }
        ready.store(false, Ordering::SeqCst);
        open = Some((conn, channel));
        if !shutdown.is_cancelled() {
            if let Some(channels) = &settings.conductor_channels {
                channels.send_replace(None);
            }
            // Unacked deliveries of the old channel go back to the queue when
            // it closes; the jobs themselves are safe in PostgreSQL.
            if let Some((conn, _)) = open.take() {
                let _ = tokio::time::timeout(
                    Duration::from_secs(2),
                    conn.close(200, "reconnecting".into()),
                )
                .await;
            }
        }
    }

    if !in_flight.is_empty() {
        tracing::info!(
            in_flight = in_flight.len(),
            grace_secs = settings.grace.as_secs(),
            "waiting for in-flight jobs"
        );
    }
    let drained = tokio::time::timeout(settings.grace, async {
        while in_flight.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            unfinished = in_flight.len(),
            "grace period over; returning unfinished jobs to the queue"
        );
        in_flight.shutdown().await;
    }
    let (conn, channel) = open?;
    // Closing the channel requeues every message we did not ack.
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        channel.close(200, "shutdown".into()),
    )
    .await;
    Some(conn)
}

async fn process(
    ctx: Arc<JobContext>,
    delivery: Delivery,
    queue: String,
    shutdown: CancellationToken,
) {
    let _in_flight = ctx.metrics.in_flight();
    let disposition = stop_job::handle(&ctx, &delivery.data, &shutdown).await;
    // The ack and dead-letter lines belong to the job as well.
    let span = match StopJob::from_bytes(&delivery.data) {
        Ok(message) => stop_job::job_span(&ctx.worker_id, &message),
        Err(_) => tracing::info_span!("message", worker = %ctx.worker_id),
    };
    settle(&ctx, delivery, &queue, disposition)
        .instrument(span)
        .await
}

/// Acks, requeues or dead-letters the delivery as the handler decided.
async fn settle(ctx: &JobContext, delivery: Delivery, queue: &str, disposition: Disposition) {
    let acked = match disposition {
        Disposition::Ack => delivery.acker.ack(BasicAckOptions::default()).await,
        Disposition::Requeue => {
            delivery
                .acker
                .nack(BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                })
                .await
        }
        Disposition::DeadLetter(reason) => {
            ctx.metrics.dead_lettered.inc();
            tracing::warn!(%reason, "poison message; dead-lettering it");
            let message_id = delivery
                .properties
                .message_id()
                .as_ref()
                .map(|m| m.to_string());
            let _ = stop_job::db_retry("record dead letter", || {
                ctx.store
                    .record_dead_letter(queue, &reason, message_id.as_deref(), &delivery.data)
            })
            .await;
            delivery
                .acker
                .reject(BasicRejectOptions { requeue: false })
                .await
        }
    };
    match acked {
        Ok(true) => {}
        // The channel died under us: the broker redelivers, and the job's
        // state in PostgreSQL makes the redelivery a no-op.
        Ok(false) | Err(_) => {
            tracing::info!("could not ack on a closed channel; the broker will redeliver")
        }
    }
}
