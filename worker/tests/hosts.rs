//! Host-aware stops with the simulator: each stop is carried out by a worker
//! of its instance's host, a stop whose host has no worker waits (accepted,
//! no attempt used) until one starts, and the relay and the rescuer publish
//! to the right host.

use std::collections::HashMap;
use std::time::Duration;

use shutoff_core::broker::BrokerError;
use shutoff_core::relay::{Relay, RelayMetrics};
use shutoff_core::rescuer::Rescuer;
use shutoff_core::store::hosts;
use shutoff_testkit::workers;
use sqlx::PgPool;
use uuid::Uuid;

const T: Duration = Duration::from_secs(30);
const UP: Duration = Duration::from_secs(30);

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn stops_on_three_hosts_are_each_carried_out_by_a_worker_of_their_own_host(pool: PgPool) {
    let c = workers::ctx(pool).await;
    let hosts = ["cmp-a", "cmp-b", "cmp-c"];
    let mut worker_host = HashMap::new();
    let mut running = Vec::new();
    for h in hosts {
        for _ in 0..2 {
            let w = c.worker_for(h, |_| {}).await;
            worker_host.insert(w.id.clone(), h.to_string());
            running.push(w);
        }
    }
    // Every worker attached (and so every host queue exists) before the stops.
    for w in &running {
        let ready = c.env.eventually(T, || w.is_ready()).await;
        assert!(ready, "worker {} never attached", w.id);
    }
    let mut jobs = Vec::new();
    for h in hosts {
        for _ in 0..10 {
            let vm = c.server_on(h, "fake://?delay_ms=50").await;
            let job = c.stop(vm, 5).await;
            assert_eq!(
                job.host.as_str(),
                h,
                "the message names the instance's host"
            );
            jobs.push((job, h));
        }
    }
    for (job, _) in &jobs {
        assert!(
            c.until_job(job.job_id, "succeeded", T).await,
            "job {} never succeeded",
            job.job_id
        );
    }
    for (job, h) in &jobs {
        let (host, worker): (Option<String>, Option<String>) =
            sqlx::query_as("SELECT host, worker FROM jobs WHERE id = $1")
                .bind(job.job_id)
                .fetch_one(&c.env.pool)
                .await
                .unwrap();
        assert_eq!(host.as_deref(), Some(*h), "the job row records its host");
        let worker = worker.expect("the job row records its worker");
        assert_eq!(
            worker_host[&worker], *h,
            "job {} carried out by {worker} of another host",
            job.job_id
        );
        // Every claim of it (one, unless a duplicate raced) by its own host's workers.
        let claimers: Vec<Option<String>> = sqlx::query_scalar(
            "SELECT worker FROM job_transitions WHERE job_id = $1 AND to_state = 'running'",
        )
        .bind(job.job_id)
        .fetch_all(&c.env.pool)
        .await
        .unwrap();
        for w in claimers.into_iter().flatten() {
            assert_eq!(worker_host[&w], *h, "claimed by {w}");
        }
        assert_eq!(
            c.transitions_to(job.job_id, "succeeded").await,
            1,
            "none twice"
        );
    }
    // Both workers of each host took part: they share the host's queue.
    let per_worker: Vec<(String, i64)> = sqlx::query_as(
        "SELECT worker, count(*) FROM jobs WHERE state = 'succeeded' GROUP BY worker",
    )
    .fetch_all(&c.env.pool)
    .await
    .unwrap();
    assert_eq!(
        per_worker.iter().map(|(_, n)| n).sum::<i64>(),
        30,
        "none lost"
    );
    for w in running {
        w.terminate().await;
    }
    // Clean shutdowns leave their hosts: all three are down at once.
    let listed = hosts::list(&c.env.pool, UP).await.unwrap();
    assert_eq!(listed.len(), 3);
    assert!(listed.iter().all(|h| !h.up && h.waiting == 0), "{listed:?}");
}

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn a_stop_for_a_host_without_a_worker_waits_untouched_until_one_starts(pool: PgPool) {
    let c = workers::ctx(pool).await;
    // Another host's worker, rescuing every second: it must leave the stop alone.
    let other = c
        .worker_for("busy-1", |s| {
            s.common.rescue_after_secs = 1;
            s.common.rescue_interval_ms = 200;
        })
        .await;
    let lonely = c.env.host("lonely-1");
    let vm = c.server_on(lonely.as_str(), "fake://").await;
    let job = c.accept(vm, 5).await;
    assert_eq!(job.host, lonely);
    match c.publisher.publish(&job).await {
        Err(BrokerError::Unroutable(queue)) => {
            assert_eq!(queue, c.env.topology.host_queue(&lonely))
        }
        other => panic!("a host nobody ever served has no queue: {other:?}"),
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        c.job(job.job_id).await,
        ("queued".to_string(), 0),
        "no attempt used"
    );
    assert_eq!(
        c.instance(vm).await.1.as_deref(),
        Some("powering-off"),
        "still accepted and powering-off"
    );
    let listed = hosts::list(&c.env.pool, UP).await.unwrap();
    let l = listed
        .iter()
        .find(|h| h.name == "lonely-1")
        .expect("listed");
    assert!(
        !l.up && l.waiting == 1 && l.waiting_since.is_some(),
        "{l:?}"
    );
    assert!(
        listed.iter().any(|h| h.name == "busy-1" && h.up),
        "{listed:?}"
    );

    // Its first worker declares the queue and re-drives the stop.
    let w = c.worker_for("lonely-1", |_| {}).await;
    assert!(c.until_job(job.job_id, "succeeded", T).await);
    let worker: String = sqlx::query_scalar("SELECT worker FROM jobs WHERE id = $1")
        .bind(job.job_id)
        .fetch_one(&c.env.pool)
        .await
        .unwrap();
    assert_eq!(worker, w.id);
    assert_eq!(c.instance(vm).await.0, "stopped");
    w.terminate().await;
    other.terminate().await;
}

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn the_relay_and_the_rescuer_publish_to_the_stops_own_host_and_skip_hosts_that_are_down(
    pool: PgPool,
) {
    let c = workers::ctx(pool).await;
    let (a, b, down) = (
        c.env.host("rel-a"),
        c.env.host("rel-b"),
        c.env.host("rel-down"),
    );
    for h in [&a, &b, &down] {
        c.env.declare_host(h).await;
    }
    // a and b are up (a worker of each beats); `down` had workers once.
    hosts::beat(&c.env.pool, &a, "wa", "t").await.unwrap();
    hosts::beat(&c.env.pool, &b, "wb", "t").await.unwrap();
    hosts::beat(&c.env.pool, &down, "wd", "t").await.unwrap();
    sqlx::query("UPDATE host_workers SET last_seen = now() - interval '1 hour' WHERE host = $1")
        .bind(down.as_str())
        .execute(&c.env.pool)
        .await
        .unwrap();

    let mut by_host: HashMap<String, Vec<Uuid>> = HashMap::new();
    for (h, n) in [(&a, 3), (&b, 2), (&down, 2)] {
        for _ in 0..n {
            let vm = c.server_on(h.as_str(), "fake://").await;
            by_host
                .entry(h.to_string())
                .or_default()
                .push(c.accept(vm, 5).await.job_id);
        }
    }
    // Committed, never published, older than the request path's own try.
    sqlx::query("UPDATE jobs SET created_at = now() - interval '10 seconds'")
        .execute(&c.env.pool)
        .await
        .unwrap();
    let (relay, _marks) = Relay::new(
        c.env.pool.clone(),
        c.publisher.clone(),
        RelayMetrics::default(),
        Duration::from_secs(120),
        UP,
    );
    assert_eq!(
        relay.run_once().await.unwrap(),
        5,
        "the jobs of the hosts that are up"
    );
    let c = &c;
    let ready = |h: &shutoff_core::ids::HostName| {
        let queue = c.env.topology.host_queue(h);
        async move { c.ready_messages(&queue).await }
    };
    assert_eq!(
        (ready(&a).await, ready(&b).await, ready(&down).await),
        (3, 2, 0)
    );

    // Now all of them look stalled: published long ago, nothing moved them.
    sqlx::query("UPDATE jobs SET state = 'published', updated_at = now() - interval '1 hour'")
        .execute(&c.env.pool)
        .await
        .unwrap();
    let rescuer = Rescuer {
        pool: c.env.pool.clone(),
        publisher: c.publisher.clone(),
        stale_after: Duration::from_secs(60),
        interval: Duration::from_secs(1),
        host_down_after: UP,
        host: "test-rescuer".into(),
    };
    assert_eq!(rescuer.run_once().await.unwrap(), (5, 0));
    assert_eq!(
        (ready(&a).await, ready(&b).await, ready(&down).await),
        (6, 4, 0)
    );
    // The down host's stops were not touched: no attempt, no new updated_at.
    let untouched: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM jobs WHERE id = ANY($1) AND attempts = 0
            AND updated_at < now() - interval '59 minutes'",
    )
    .bind(&by_host[down.as_str()])
    .fetch_one(&c.env.pool)
    .await
    .unwrap();
    assert_eq!(untouched, 2);
}

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn a_stray_message_on_another_hosts_queue_is_handed_to_the_instances_host_untouched(
    pool: PgPool,
) {
    let c = workers::ctx(pool).await;
    let (home, stray) = (c.env.host("home-1"), c.env.host("stray-1"));
    c.env.declare_host(&home).await;
    let w = c.worker_for(stray.as_str(), |_| {}).await;
    let vm = c.server_on(home.as_str(), "fake://").await;
    let mut job = c.accept(vm, 5).await;
    // The message even claims to be for the stray host: the instance's row decides.
    job.host = stray.clone();
    c.env
        .publish_raw(&c.env.topology.host_queue(&stray), &job.to_bytes())
        .await;
    let home_queue = c.env.topology.host_queue(&home);
    assert!(
        c.env
            .eventually(T, || async { c.ready_messages(&home_queue).await == 1 })
            .await,
        "handed to the instance's own host"
    );
    assert_eq!(
        c.job(job.job_id).await,
        ("queued".to_string(), 0),
        "never claimed here"
    );
    assert_eq!(c.instance(vm).await.0, "active");
    w.terminate().await;
}

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn a_host_that_comes_back_takes_up_its_queued_stops_without_the_rescuer_copying_them(
    pool: PgPool,
) {
    use shutoff_core::store::rescue;
    let c = workers::ctx(pool).await;
    let back = c.env.host("back-1");
    c.env.declare_host(&back).await;
    // Confirmed into the host's queue while it was down, long ago.
    let vm = c.server_on(back.as_str(), "fake://").await;
    let job = c.stop(vm, 5).await;
    sqlx::query("UPDATE jobs SET updated_at = now() - interval '1 hour'")
        .execute(&c.env.pool)
        .await
        .unwrap();
    let queue = c.env.topology.host_queue(&back);
    assert_eq!(c.ready_messages(&queue).await, 1);

    // What its worker does when it attaches: touch, then beat.
    let now = rescue::db_now(&c.env.pool).await.unwrap();
    assert_eq!(
        rescue::touch_host(&c.env.pool, &back, now).await.unwrap(),
        1
    );
    hosts::beat(&c.env.pool, &back, "wb", "t").await.unwrap();
    let rescuer = Rescuer {
        pool: c.env.pool.clone(),
        publisher: c.publisher.clone(),
        stale_after: Duration::from_secs(60),
        interval: Duration::from_secs(1),
        host_down_after: UP,
        host: "test-rescuer".into(),
    };
    assert_eq!(
        rescuer.run_once().await.unwrap(),
        (0, 0),
        "nothing looks stalled"
    );
    assert_eq!(
        c.ready_messages(&queue).await,
        1,
        "no copy of a message the queue holds"
    );

    let w = c.worker_for(back.as_str(), |_| {}).await;
    assert!(c.until_job(job.job_id, "succeeded", T).await);
    w.terminate().await;
}
