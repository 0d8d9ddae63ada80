//! Nothing lost, nothing stuck: poison, delivery limits, the rescuer,
//! graceful shutdown, and database and broker outages (made by cutting a
//! private TCP proxy, never the machine's services).

use std::time::Duration;

use lapin::options::{BasicConsumeOptions, BasicNackOptions};
use serde_json::json;
use shutoff_testkit::TcpProxy;
use shutoff_testkit::env::default_host;
use shutoff_testkit::workers;
use sqlx::PgPool;
use uuid::Uuid;

const T: Duration = Duration::from_secs(30);
/// The host-down-after the rescuers of these tests count with.
const UP: Duration = Duration::from_secs(30);

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn poison_messages_are_dead_lettered_and_recorded_and_the_worker_goes_on(pool: PgPool) {
    let c = workers::ctx(pool).await;
    let w = c.worker(|_| {}).await;
    let queue = c.env.work_queue();
    let unknown = json!({"job_id": Uuid::new_v4(), "instance_uuid": Uuid::new_v4(), "host": "sim-1", "request_id": "req-x"});

    c.env.publish_raw(&queue, b"\xff not json at all").await;
    c.env
        .publish_raw(&queue, unknown.to_string().as_bytes())
        .await;
    let vm = c.server("fake://").await;
    let job = c.stop(vm, 5).await;

    assert!(
        c.until_job(job.job_id, "succeeded", T).await,
        "a good job after poison still runs"
    );
    let dead = c.env.topology.dead_queue();
    assert!(
        c.env
            .eventually(T, || async { c.ready_messages(&dead).await == 2 })
            .await
    );
    // The worker handles its prefetched messages side by side: the two are
    // recorded in either order.
    let reasons: Vec<String> =
        sqlx::query_scalar("SELECT reason FROM dead_letters ORDER BY reason")
            .fetch_all(&c.env.pool)
            .await
            .unwrap();
    assert_eq!(reasons.len(), 2);
    assert!(reasons[0].starts_with("no job"), "{reasons:?}");
    assert!(reasons[1].starts_with("unparseable message"), "{reasons:?}");
    w.terminate().await;
}

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn a_message_redelivered_past_the_delivery_limit_goes_to_the_dead_letter_queue(pool: PgPool) {
    let mut c = workers::ctx(pool).await;
    // A host of its own: the default host's queue exists with the default limit.
    c.env.topology.delivery_limit = 2;
    let host = c.env.host("crash-host");
    c.env.declare_host(&host).await;
    let queue = c.env.topology.host_queue(&host);
    c.env.publish_raw(&queue, b"kills its worker").await;

    // A consumer that "dies" on every delivery: the broker requeues each time.
    let conn = lapin::Connection::connect(&c.env.amqp_url, Default::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let mut consumer = ch
        .basic_consume(
            queue.as_str().into(),
            "crasher".into(),
            BasicConsumeOptions::default(),
            Default::default(),
        )
        .await
        .unwrap();
    use futures::StreamExt;
    let mut deliveries = 0;
    while let Ok(Some(Ok(d))) = tokio::time::timeout(Duration::from_secs(2), consumer.next()).await
    {
        deliveries += 1;
        d.acker
            .nack(BasicNackOptions {
                requeue: true,
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let _ = conn.close(200, "done".into()).await;

    assert_eq!(deliveries, 3, "first delivery plus two redeliveries");
    let dead = c.env.topology.dead_queue();
    assert!(
        c.env
            .eventually(T, || async { c.ready_messages(&dead).await == 1 })
            .await
    );
}

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn the_rescuer_finishes_jobs_whose_worker_or_message_was_lost(pool: PgPool) {
    let c = workers::ctx(pool).await;
    let dead_worker = c.server("fake://").await;
    let lost_message = c.server("fake://").await;
    let out_of_attempts = c.server("fake://").await;
    let a = c.accept(dead_worker, 5).await;
    let b = c.accept(lost_message, 5).await;
    let d = c.accept(out_of_attempts, 2).await;
    // Stale state built directly, as River's rescuer tests do: a running job
    // whose worker vanished, a published job whose message vanished, and a
    // job whose worker died on its last attempt.
    sqlx::query(
        "UPDATE jobs SET state = 'running', attempts = 1, worker = 'gone', lease_expires_at = now() - interval '1 minute'
          WHERE id = $1",
    )
    .bind(a.job_id)
    .execute(&c.env.pool)
    .await
    .unwrap();
    sqlx::query(
        "UPDATE jobs SET state = 'published', updated_at = now() - interval '1 hour' WHERE id = $1",
    )
    .bind(b.job_id)
    .execute(&c.env.pool)
    .await
    .unwrap();
    sqlx::query(
        "UPDATE jobs SET state = 'running', attempts = 2, worker = 'gone', lease_expires_at = now() - interval '1 minute'
          WHERE id = $1",
    )
    .bind(d.job_id)
    .execute(&c.env.pool)
    .await
    .unwrap();

    let w = c
        .worker(|s| {
            s.common.rescue_after_secs = 5;
            s.common.rescue_interval_ms = 200;
        })
        .await;

    assert!(c.until_job(a.job_id, "succeeded", T).await);
    assert!(c.until_job(b.job_id, "succeeded", T).await);
    assert!(c.until_job(d.job_id, "failed", T).await);
    assert_eq!(c.instance(dead_worker).await.0, "stopped");
    assert_eq!(
        c.instance(out_of_attempts).await,
        ("active".into(), None, 1)
    );
    let fault: String =
        sqlx::query_scalar("SELECT message FROM instance_faults WHERE instance_uuid = $1")
            .bind(out_of_attempts)
            .fetch_one(&c.env.pool)
            .await
            .unwrap();
    assert!(fault.contains("gave up after 2 attempts"), "{fault}");
    assert_eq!(
        c.scalar(
            "SELECT count(*) FROM instances WHERE task_state IS NOT NULL AND $1::uuid IS NOT NULL",
            a.job_id
        )
        .await,
        0
    );
    w.terminate().await;
}

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn sigterm_lets_in_flight_jobs_finish_within_the_grace_period(pool: PgPool) {
    let c = workers::ctx(pool).await;
    let w = c.worker(|s| s.grace_secs = 10).await;
    let vm = c.server("fake://?delay_ms=1500").await;
    let job = c.stop(vm, 5).await;
    assert!(c.until_job(job.job_id, "running", T).await);

    let took = w.terminate().await;

    assert_eq!(c.job(job.job_id).await, ("succeeded".into(), 1));
    assert!(took < Duration::from_secs(10), "stopped in {took:?}");
}

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn sigterm_returns_jobs_unfinished_after_the_grace_period_and_another_worker_ends_them(
    pool: PgPool,
) {
    let c = workers::ctx(pool).await;
    let first = c
        .worker(|s| {
            s.grace_secs = 1;
            s.lease_secs = 2;
        })
        .await;
    let vm = c.server("fake://?delay_ms=4000").await;
    let job = c.stop(vm, 5).await;
    assert!(c.until_job(job.job_id, "running", T).await);

    let took = first.terminate().await;
    assert!(
        took < Duration::from_secs(4),
        "grace period respected: {took:?}"
    );
    assert_eq!(
        c.job(job.job_id).await.0,
        "running",
        "abandoned, not finished"
    );

    let second = c
        .worker(|s| {
            s.common.rescue_interval_ms = 200;
        })
        .await;
    assert!(c.until_job(job.job_id, "succeeded", T).await);
    assert_eq!(c.transitions_to(job.job_id, "succeeded").await, 1);
    assert_eq!(c.instance(vm).await.0, "stopped");
    second.terminate().await;
}

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn with_the_database_gone_mid_job_nothing_is_acked_and_the_job_ends_when_it_returns(
    pool: PgPool,
) {
    let c = workers::ctx(pool.clone()).await;
    let db = TcpProxy::start("127.0.0.1:5432").await;
    let proxied = shutoff_core::store::pool(
        &db.database_url(&pool).parse().unwrap(),
        &Default::default(),
        "test-worker",
    );
    let w = c.worker_on(proxied, |s| s.lease_secs = 60).await;
    let vm = c.server("fake://?delay_ms=1000").await;
    let job = c.stop(vm, 5).await;
    assert!(c.until_job(job.job_id, "running", T).await);

    db.cut();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        c.job(job.job_id).await.0,
        "running",
        "nothing recorded while the database is away"
    );
    let health = reqwest::get(format!("http://{}/readyz", w.health))
        .await
        .unwrap();
    assert_eq!(health.status().as_u16(), 503);

    db.restore();
    assert!(c.until_job(job.job_id, "succeeded", T).await);
    assert_eq!(c.transitions_to(job.job_id, "succeeded").await, 1);
    assert_eq!(c.instance(vm).await.0, "stopped");
    w.terminate().await;
}

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn a_worker_rides_out_a_broker_outage_and_reports_not_ready_meanwhile(pool: PgPool) {
    let c = workers::ctx(pool).await;
    let broker = TcpProxy::start("127.0.0.1:5672").await;
    let w = c
        .worker(|s| s.common.amqp_url = broker.amqp_url().parse().unwrap())
        .await;
    let ready = || async {
        reqwest::get(format!("http://{}/readyz", w.health))
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    assert!(c.env.eventually(T, || async { ready().await == 200 }).await);

    broker.cut();
    assert!(c.env.eventually(T, || async { ready().await == 503 }).await);
    let vm = c.server("fake://").await;
    let job = c.stop(vm, 5).await; // straight to the real broker: it waits there

    broker.restore();
    assert!(
        c.until_job(job.job_id, "succeeded", T).await,
        "worker never came back"
    );
    assert!(c.env.eventually(T, || async { ready().await == 200 }).await);
    let alive = reqwest::get(format!("http://{}/healthz", w.health))
        .await
        .unwrap();
    assert_eq!(alive.status().as_u16(), 200);
    w.terminate().await;
}

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn rescuers_running_at_once_hand_each_stale_job_out_once(pool: PgPool) {
    use shutoff_core::store::hosts;
    use shutoff_core::store::rescue::{self, Rescue};
    let c = workers::ctx(pool).await;
    let mut ids = Vec::new();
    for _ in 0..60 {
        let vm = c.server("fake://").await;
        ids.push(c.accept(vm, 5).await.job_id);
    }
    sqlx::query("UPDATE jobs SET state = 'published', updated_at = now() - interval '1 hour'")
        .execute(&c.env.pool)
        .await
        .unwrap();

    // Their host is up (a worker of it beats), or the rescuers leave them be.
    hosts::beat(&c.env.pool, &default_host(), "w", "test")
        .await
        .unwrap();
    // Four rescuers (as in two APIs and two workers) pass at the same moment.
    let passes = futures::future::join_all((0..4).map(|i| {
        let pool = c.env.pool.clone();
        async move {
            rescue::rescue(&pool, Duration::from_secs(60), UP, &format!("r{i}"), 500)
                .await
                .unwrap()
        }
    }))
    .await;

    let mut handed_out: Vec<Uuid> = passes
        .into_iter()
        .flatten()
        .map(|r| match r {
            Rescue::Republish(job) => job.job_id,
            Rescue::Failed(id) => panic!("{id} had attempts left"),
        })
        .collect();
    handed_out.sort();
    ids.sort();
    assert_eq!(handed_out, ids, "every stale job handed out exactly once");
    // Touched: a pass right after finds nothing stale.
    assert!(
        rescue::rescue(&c.env.pool, Duration::from_secs(60), UP, "r", 500)
            .await
            .unwrap()
            .is_empty()
    );
}

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn a_claim_under_way_at_sigterm_is_released_not_left_to_its_lease(pool: PgPool) {
    let c = workers::ctx(pool).await;
    // A long lease and no rescue in sight: only a release frees the job soon.
    let first = c
        .worker(|s| {
            s.grace_secs = 10;
            s.lease_secs = 300;
            s.common.rescue_after_secs = 3600;
        })
        .await;
    let vm = c.server("fake://").await;
    let job = c.accept(vm, 5).await;
    // An operator's transaction holds the job's row, so the worker's claim
    // statement starts and waits on it.
    let mut lock = c.env.pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM jobs WHERE id = $1 FOR UPDATE")
        .bind(job.job_id)
        .execute(&mut *lock)
        .await
        .unwrap();
    c.publisher.publish(&job).await.unwrap();
    let waiting = c
        .env
        .eventually(T, || async { c.env.lock_waiters().await == 1 })
        .await;
    assert!(waiting, "the claim never reached the locked row");

    // SIGTERM while the claim waits; then the claim goes through.
    first.shutdown.cancel();
    tokio::time::sleep(Duration::from_millis(300)).await;
    lock.commit().await.unwrap();
    first.handle.await.unwrap().unwrap();

    assert_eq!(
        c.job(job.job_id).await,
        ("published".into(), 0),
        "the job the claim took was handed back, its attempt not used"
    );
    let second = c.worker(|_| {}).await;
    assert!(c.until_job(job.job_id, "succeeded", T).await);
    assert_eq!(c.instance(vm).await.0, "stopped");
    second.terminate().await;
}
