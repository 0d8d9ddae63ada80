//! A host's stops survive a RabbitMQ restart that happens while none of the
//! host's workers runs: one confirmed into the host's durable quorum queue is
//! still there after the restart, and one the broker returned (the host had
//! no queue yet) waits in PostgreSQL; either way the worker that starts
//! after the restart carries it out.
//!
//! The broker restarted is a private RabbitMQ node of this test (its own
//! ports, epmd and data dir, from `shutoff-chaos`), stopped however the test
//! ends; the machine's node is never touched. Skipped with a message when
//! RabbitMQ is not installed, unless `CI` is set.

use std::time::{Duration, Instant};

use shutoff_core::broker::{BrokerError, BrokerTimeouts, Publisher};
use shutoff_core::ids::HostName;
use shutoff_core::store::hosts;
use shutoff_testkit::TestEnv;
use shutoff_testkit::rabbitmq::PrivateRabbitMq;
use shutoff_testkit::workers::{Ctx, RunningWorker};
use sqlx::PgPool;
use uuid::Uuid;

const T: Duration = Duration::from_secs(30);
const UP: Duration = Duration::from_secs(30);
/// The tests of this file take turns, each with a node of its own (written
/// when private nodes were named after the process alone; they now have a
/// random suffix too).
static ONE_NODE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The worker tests' world, on the private node: its queues are declared
/// there and the API's publisher publishes there.
async fn ctx_on(pool: PgPool, broker: &PrivateRabbitMq) -> Ctx {
    let mut env = TestEnv::new(pool);
    env.amqp_url = broker.node.amqp_url();
    let project = env.project().await;
    let publisher = Publisher::new(
        &env.amqp_url.parse().unwrap(),
        &Default::default(),
        "test",
        env.topology.clone(),
        BrokerTimeouts::default(),
    );
    Ctx {
        env,
        project,
        publisher,
    }
}

/// A worker of `host`, consuming from the private node.
async fn worker_for(c: &Ctx, host: &str) -> RunningWorker {
    let url = c.env.amqp_url.clone();
    c.worker_for(host, move |s| s.common.amqp_url = url.parse().unwrap())
        .await
}

async fn until_consuming(c: &Ctx, w: &RunningWorker) {
    let ready = c.env.eventually(T, || w.is_ready()).await;
    assert!(ready, "worker {} never attached to its queue", w.id);
}

/// (worker, host, attempts, published_at set) of a job.
async fn job_row(c: &Ctx, id: Uuid) -> (Option<String>, Option<String>, i32, bool) {
    sqlx::query_as(
        "SELECT worker, host, attempts, published_at IS NOT NULL FROM jobs WHERE id = $1",
    )
    .bind(id)
    .fetch_one(&c.env.pool)
    .await
    .unwrap()
}

async fn host_row(c: &Ctx, host: &HostName) -> hosts::HostRow {
    hosts::list(&c.env.pool, UP)
        .await
        .unwrap()
        .into_iter()
        .find(|h| h.name == host.as_str())
        .unwrap_or_else(|| panic!("{host} is not listed"))
}

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn a_stop_confirmed_into_its_hosts_queue_before_a_broker_restart_is_carried_out_by_the_worker_that_starts_after_it(
    pool: PgPool,
) {
    let _turn = ONE_NODE_AT_A_TIME.lock().await;
    let t = Instant::now();
    let Some(mut broker) = PrivateRabbitMq::start().await else {
        return;
    };
    let c = ctx_on(pool, &broker).await;
    let host = c.env.host("late-1");
    let queue = c.env.topology.host_queue(&host);
    // late-1 had a worker once: it declared the queue, beat, and left.
    let first = worker_for(&c, host.as_str()).await;
    until_consuming(&c, &first).await;
    // Its first beat follows the attach by a moment.
    assert!(
        c.env
            .eventually(T, || async {
                hosts::list(&c.env.pool, UP)
                    .await
                    .unwrap()
                    .iter()
                    .any(|h| h.name == host.as_str() && h.up)
            })
            .await,
        "late-1 never came up"
    );
    first.terminate().await;
    assert!(
        !host_row(&c, &host).await.up,
        "a clean stop leaves the host"
    );

    let server = c.server_on(host.as_str(), "fake://").await;
    let job = c.stop(server, 5).await;
    assert_eq!(
        c.ready_messages(&queue).await,
        1,
        "confirmed into the queue"
    );

    broker.restart().await;

    assert_eq!(
        c.ready_messages(&queue).await,
        1,
        "the durable quorum queue kept the stop through the restart"
    );
    assert_eq!(c.job(job.job_id).await, ("queued".to_string(), 0));
    let w = worker_for(&c, host.as_str()).await;
    assert!(
        c.until_job(job.job_id, "succeeded", T).await,
        "job is {:?}",
        c.job(job.job_id).await
    );
    let (worker, job_host, attempts, _) = job_row(&c, job.job_id).await;
    assert_eq!(worker.as_deref(), Some(w.id.as_str()));
    assert_eq!(job_host.as_deref(), Some("late-1"));
    assert_eq!(attempts, 1);
    assert_eq!(c.transitions_to(job.job_id, "succeeded").await, 1);
    assert_eq!(c.instance(server).await, ("stopped".into(), None, 4));
    assert!(
        c.env
            .eventually(T, || async { c.ready_messages(&queue).await == 0 })
            .await,
        "the message was acked"
    );
    w.terminate().await;
    drop(c);
    broker.node.shutdown().await.unwrap();
    eprintln!("timing: whole test {:?}", t.elapsed());
}

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn a_stop_accepted_while_its_host_had_no_queue_is_carried_out_by_the_hosts_first_worker_after_a_broker_restart(
    pool: PgPool,
) {
    let _turn = ONE_NODE_AT_A_TIME.lock().await;
    let t = Instant::now();
    let Some(mut broker) = PrivateRabbitMq::start().await else {
        return;
    };
    let c = ctx_on(pool, &broker).await;
    let host = c.env.host("late-2");
    let server = c.server_on(host.as_str(), "fake://").await;
    let job = c.accept(server, 5).await;
    match c.publisher.publish(&job).await {
        Err(BrokerError::Unroutable(queue)) => {
            assert_eq!(queue, c.env.topology.host_queue(&host))
        }
        other => panic!("a host no worker ever served has no queue: {other:?}"),
    }
    assert_eq!(c.job(job.job_id).await, ("queued".to_string(), 0));
    assert!(!job_row(&c, job.job_id).await.3, "never confirmed");

    broker.restart().await;

    let w = worker_for(&c, host.as_str()).await;
    assert!(
        c.until_job(job.job_id, "succeeded", T).await,
        "job is {:?}",
        c.job(job.job_id).await
    );
    let (worker, job_host, attempts, published) = job_row(&c, job.job_id).await;
    assert_eq!(worker.as_deref(), Some(w.id.as_str()));
    assert_eq!(job_host.as_deref(), Some("late-2"));
    assert_eq!(attempts, 1);
    assert!(published, "the re-drive published it");
    assert_eq!(c.transitions_to(job.job_id, "succeeded").await, 1);
    assert_eq!(c.instance(server).await, ("stopped".into(), None, 4));
    w.terminate().await;
    drop(c);
    broker.node.shutdown().await.unwrap();
    eprintln!("timing: whole test {:?}", t.elapsed());
}
