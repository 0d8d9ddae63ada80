//! Workers with no database connection (`--via-conductor`): every store
//! call goes over RabbitMQ to the conductor, which batches the fleet's
//! claims and successes. The guarantees are the direct path's: each stop is
//! carried out by a worker of its own host, none lost, none twice, and a
//! stop whose conductor is away waits, accepted, until one answers.

use std::collections::HashMap;
use std::time::Duration;

use shutoff_core::store::hosts;
use shutoff_testkit::workers;
use sqlx::PgPool;

const T: Duration = Duration::from_secs(30);
const UP: Duration = Duration::from_secs(30);

/// Connections this test's database has from anyone but the test itself
/// (the test's pool names no application).
async fn others_connections(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT application_name FROM pg_stat_activity
          WHERE datname = current_database() AND pid <> pg_backend_pid()
            AND application_name <> ''",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

/// Runs `rabbitmqctl -q ARGS` (the machine's node has no management API).
async fn rabbitmqctl(args: &[&str]) -> String {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("rabbitmqctl")
            .arg("-q")
            .args(&args)
            .output()
    })
    .await
    .unwrap()
    .expect("rabbitmqctl runs");
    assert!(
        out.status.success(),
        "rabbitmqctl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The broker's client connections: (the connection's Erlang pid, its name).
async fn connections() -> Vec<(String, String)> {
    const KEY: &str = "{\"connection_name\",\"";
    rabbitmqctl(&["list_connections", "pid", "client_properties"])
        .await
        .lines()
        .filter_map(|line| {
            let pid = line.split('\t').next()?.to_string();
            let rest = &line[line.find(KEY)? + KEY.len()..];
            Some((pid, rest[..rest.find('"')?].to_string()))
        })
        .collect()
}

async fn connection_names() -> Vec<String> {
    connections()
        .await
        .into_iter()
        .map(|(_, name)| name)
        .collect()
}

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn stops_on_three_hosts_go_through_the_conductor_each_to_a_worker_of_its_own_host(
    pool: PgPool,
) {
    let c = workers::ctx(pool).await;
    let (stop_conductor, conductor) = c.conductor();
    let hosts = ["cnd-a", "cnd-b", "cnd-c"];
    let mut worker_host = HashMap::new();
    let mut running = Vec::new();
    for h in hosts {
        for _ in 0..2 {
            let w = c.conductor_worker_for(h, |_| {}).await;
            worker_host.insert(w.id.clone(), h.to_string());
            running.push(w);
        }
    }
    // Ready means consuming and the conductor answering its ping.
    for w in &running {
        let ready = c.env.eventually(T, || w.is_ready()).await;
        assert!(ready, "worker {} never attached", w.id);
    }
    // Their heartbeats went through the conductor: all three hosts are up,
    // each with its two workers.
    let all_up = c
        .env
        .eventually(T, || async {
            let listed = hosts::list(&c.env.pool, UP).await.unwrap();
            listed.len() == 3 && listed.iter().all(|h| h.up && h.workers.len() == 2)
        })
        .await;
    assert!(all_up, "{:?}", hosts::list(&c.env.pool, UP).await.unwrap());
    // The calls ride the consumer's connection: one per worker, not two.
    let names = connection_names().await;
    for w in &running {
        let own = names.iter().filter(|n| n.contains(w.id.as_str())).count();
        assert_eq!(own, 1, "worker {} holds {own} connections: {names:?}", w.id);
    }

    let mut jobs = Vec::new();
    for h in hosts {
        for _ in 0..10 {
            let vm = c.server_on(h, "fake://?delay_ms=50").await;
            jobs.push((c.stop(vm, 5).await, h, vm));
        }
    }
    // A message put on the wrong host's queue by hand: b's workers must
    // hand it on, never carry it out.
    let vm = c.server_on("cnd-a", "fake://").await;
    let stray = c.accept(vm, 5).await;
    let b = c.env.host("cnd-b");
    c.env
        .publish_raw(&c.env.topology.host_queue(&b), &stray.to_bytes())
        .await;
    jobs.push((stray, "cnd-a", vm));

    for (job, _, _) in &jobs {
        assert!(
            c.until_job(job.job_id, "succeeded", T).await,
            "job {} never succeeded",
            job.job_id
        );
    }
    for (job, h, vm) in &jobs {
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
            "job {} done by {worker}",
            job.job_id
        );
        assert_eq!(
            c.transitions_to(job.job_id, "running").await,
            1,
            "one claim"
        );
        assert_eq!(
            c.transitions_to(job.job_id, "succeeded").await,
            1,
            "none twice"
        );
        let (vm_state, task_state, power) = c.instance(*vm).await;
        assert_eq!((vm_state.as_str(), task_state, power), ("stopped", None, 4));
        // The action's event, recorded by the claim and the success.
        let (event_host, result): (Option<String>, Option<String>) = sqlx::query_as(
            "SELECT e.host, e.result FROM instance_actions_events e
               JOIN jobs j ON j.action_id = e.action_id WHERE j.id = $1",
        )
        .bind(job.job_id)
        .fetch_one(&c.env.pool)
        .await
        .unwrap();
        assert_eq!(event_host.as_deref(), Some(worker.as_str()));
        assert_eq!(result.as_deref(), Some("Success"));
    }
    // The workers hold no connection: only the conductor (this process's
    // test pool) talks to PostgreSQL.
    let apps = others_connections(&c.env.pool).await;
    assert!(
        apps.iter().all(|a| !a.contains("shutoff-worker")),
        "a worker via the conductor opened a connection: {apps:?}"
    );
    for w in running {
        w.terminate().await;
    }
    // Clean shutdowns leave their hosts, through the conductor too.
    let listed = hosts::list(&c.env.pool, UP).await.unwrap();
    assert!(listed.iter().all(|h| !h.up), "{listed:?}");
    stop_conductor.cancel();
    conductor.await.unwrap();
}

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn a_stop_waits_while_no_conductor_answers_and_is_carried_out_once_one_does(pool: PgPool) {
    let c = workers::ctx(pool).await;
    let w = c
        .conductor_worker_for("cnd-wait", |s| s.conductor_timeout_secs = 1)
        .await;
    let vm = c.server_on("cnd-wait", "fake://").await;
    // The worker's queue exists once it consumes; then the stop goes in.
    let host = c.env.host("cnd-wait");
    c.env.declare_host(&host).await;
    let job = c.stop(vm, 5).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        !w.is_ready().await,
        "ready without a conductor to reach the database"
    );
    assert_eq!(
        c.job(job.job_id).await,
        ("queued".to_string(), 0),
        "untouched, no attempt used"
    );
    assert_eq!(c.instance(vm).await.1.as_deref(), Some("powering-off"));

    let (stop_conductor, conductor) = c.conductor();
    assert!(
        c.until_job(job.job_id, "succeeded", T).await,
        "the stop waited for a conductor and was then carried out"
    );
    let (state, attempts) = c.job(job.job_id).await;
    assert_eq!((state.as_str(), attempts), ("succeeded", 1));
    assert_eq!(c.instance(vm).await.0, "stopped");
    // The calls that expired unanswered in the queue were never run late.
    assert_eq!(c.transitions_to(job.job_id, "running").await, 1);
    w.terminate().await;
    stop_conductor.cancel();
    conductor.await.unwrap();
}

/// Spread over many hosts, the calls reach the conductor one at a time.
/// Within its linger, the claims of several hosts' workers share one
/// statement, and so do their successes: one transaction each, whichever
/// host sent them.
#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn the_claims_and_successes_of_several_hosts_within_the_linger_share_one_statement(
    pool: PgPool,
) {
    let c = workers::ctx(pool).await;
    let (stop_conductor, conductor) = c.conductor_lingering(Duration::from_secs(1));
    let hosts = ["lng-a", "lng-b", "lng-c"];
    let mut running = Vec::new();
    for h in hosts {
        running.push(c.conductor_worker_for(h, |_| {}).await);
    }
    for w in &running {
        let ready = c.env.eventually(T, || w.is_ready()).await;
        assert!(ready, "worker {} never attached", w.id);
    }
    let mut jobs = Vec::new();
    for h in hosts {
        for _ in 0..2 {
            let vm = c.server_on(h, "fake://").await;
            jobs.push(c.accept(vm, 5).await);
        }
    }
    // Published back to back, so every claim reaches the conductor well
    // within the second its first one waits.
    for job in &jobs {
        c.env
            .publish_raw(&c.env.topology.host_queue(&job.host), &job.to_bytes())
            .await;
    }
    for job in &jobs {
        assert!(
            c.until_job(job.job_id, "succeeded", T).await,
            "job {} never succeeded",
            job.job_id
        );
    }
    let ids: Vec<uuid::Uuid> = jobs.iter().map(|j| j.job_id).collect();
    for state in ["running", "succeeded"] {
        let (rows, transactions): (i64, i64) = sqlx::query_as(
            "SELECT count(*), count(DISTINCT xmin::text) FROM job_transitions
              WHERE job_id = ANY($1) AND to_state = $2",
        )
        .bind(&ids)
        .bind(state)
        .fetch_one(&c.env.pool)
        .await
        .unwrap();
        assert_eq!(rows, 6, "one {state} transition per stop");
        assert_eq!(
            transactions, 1,
            "the six stops of three hosts went {state} in one transaction"
        );
    }
    for w in running {
        w.terminate().await;
    }
    stop_conductor.cancel();
    conductor.await.unwrap();
}

/// The conductor's calls ride the consumer's connection. When the broker
/// closes it, the consumer connects again and hands the calls a channel of
/// the new connection: the next stop is claimed and recorded through it.
#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn after_the_broker_closes_a_workers_connection_its_calls_go_on_the_new_one(pool: PgPool) {
    let c = workers::ctx(pool).await;
    let (stop_conductor, conductor) = c.conductor();
    let w = c.conductor_worker_for("cnd-re", |_| {}).await;
    let ready = c.env.eventually(T, || w.is_ready()).await;
    assert!(ready, "worker {} never attached", w.id);
    let vm = c.server_on("cnd-re", "fake://").await;
    let first = c.stop(vm, 5).await;
    assert!(c.until_job(first.job_id, "succeeded", T).await);

    let ours = |all: Vec<(String, String)>| -> Vec<String> {
        all.into_iter()
            .filter(|(_, name)| name.contains(w.id.as_str()))
            .map(|(pid, _)| pid)
            .collect()
    };
    let before = ours(connections().await);
    assert_eq!(before.len(), 1, "one connection: {before:?}");
    rabbitmqctl(&["close_connection", &before[0], "test closes it"]).await;
    let mut after = Vec::new();
    let deadline = std::time::Instant::now() + T;
    while std::time::Instant::now() < deadline {
        after = ours(connections().await);
        if after.len() == 1 && after != before && w.is_ready().await {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        after.len() == 1 && after != before,
        "the worker connected again, once: before {before:?}, after {after:?}"
    );

    let vm = c.server_on("cnd-re", "fake://").await;
    let second = c.stop(vm, 5).await;
    assert!(
        c.until_job(second.job_id, "succeeded", T).await,
        "the stop after the reconnect was claimed and recorded through the conductor"
    );
    assert_eq!(c.transitions_to(second.job_id, "running").await, 1);
    assert_eq!(c.instance(vm).await.0, "stopped");
    w.terminate().await;
    stop_conductor.cancel();
    conductor.await.unwrap();
}
