//! A worker and a publisher given a three-node RabbitMQ cluster move to a
//! surviving node when theirs dies, and the host's quorum queue, declared
//! after the cluster formed, has a replica on every node.
//!
//! The cluster is private to this test (`shutoff-chaos`'s
//! [`RabbitCluster`]: own ports, node names, data dirs, epmd and Erlang
//! cookie), stopped however the test ends; the machine's RabbitMQ is never
//! touched. Skipped with a message when RabbitMQ is not installed, unless
//! `CI` is set. ~55 s here (three node boots and the joins are ~30 s of it).

use std::time::{Duration, Instant};

use shutoff_chaos::rabbitmq_cluster::RabbitCluster;
use shutoff_core::broker::{BrokerTimeouts, Publisher};
use shutoff_testkit::TestEnv;
use shutoff_testkit::rabbitmq::PrivateCluster;
use shutoff_testkit::workers::{Ctx, RunningWorker};
use sqlx::PgPool;

const T: Duration = Duration::from_secs(40);
async fn until_consuming(c: &Ctx, w: &RunningWorker) {
    let ready = c.env.eventually(T, || w.is_ready()).await;
    assert!(ready, "worker {} never attached to its queue", w.id);
}

/// The index of the node that carries the connection named `name`.
async fn node_of_connection(cluster: &RabbitCluster, name: &str) -> Option<usize> {
    for (i, node) in cluster.nodes.iter().enumerate() {
        if !node.is_running() {
            continue;
        }
        // Each node lists the connections of the whole cluster; `port` is
        // the AMQP port of the node that holds one.
        let out = node
            .ctl(&[
                "list_connections",
                "port",
                "client_properties",
                "--formatter",
                "json",
                "-q",
            ])
            .await
            .map_err(|e| eprintln!("list_connections failed: {e:#}"))
            .ok()?;
        let Ok(rows) = serde_json::from_str::<Vec<serde_json::Value>>(out.trim()) else {
            eprintln!("list_connections said: {out}");
            return None;
        };
        let quoted = format!("\"{name}\"");
        for r in rows {
            if r["client_properties"].to_string().contains(&quoted) {
                let port = r["port"].as_u64();
                let found = cluster
                    .nodes
                    .iter()
                    .position(|n| Some(u64::from(n.port())) == port);
                if found.is_none() {
                    eprintln!("connection {name} on no node of ours: {r}");
                }
                return found;
            }
        }
        eprintln!("no connection named {name} in: {out}");
        let _ = i;
        break;
    }
    None
}

/// Accepts a stop and publishes it as the relay would: a failed publish
/// (the connection's node died) is tried again, on the next node.
async fn stop(c: &Ctx, server: uuid::Uuid) -> shutoff_core::message::StopJob {
    let job = c.accept(server, 5).await;
    let deadline = Instant::now() + T;
    loop {
        match c.publisher.publish(&job).await {
            Ok(()) => return job,
            Err(e) if Instant::now() < deadline => {
                eprintln!("publish failed ({e}); trying again");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("no node took the stop within {T:?}: {e}"),
        }
    }
}

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn a_worker_and_a_publisher_move_to_a_surviving_node_when_theirs_stops(pool: PgPool) {
    let Some(mut private) = PrivateCluster::start(3).await else {
        return;
    };
    let url = private.cluster.amqp_url();
    let mut env = TestEnv::new(pool);
    // The test's own lapin calls take one node; the cluster goes with the test.
    env.amqp_url = private.cluster.nodes[0].amqp_url();
    let project = env.project().await;
    let nodes = url.parse().unwrap();
    let publisher = Publisher::new(
        &nodes,
        &Default::default(),
        "test-cluster-publisher",
        env.topology.clone(),
        BrokerTimeouts::default(),
    );
    let c = Ctx {
        env,
        project,
        publisher,
    };
    let host = c.env.host("cl-1");
    let queue = c.env.topology.host_queue(&host);
    let w = {
        let url = url.clone();
        c.worker_for(host.as_str(), move |s| {
            s.common.amqp_url = url.parse().unwrap()
        })
        .await
    };
    until_consuming(&c, &w).await;

    // Declared by the worker after the cluster formed: a replica everywhere.
    let (_, members) = private.cluster.leader(&queue).await.unwrap();
    assert_eq!(members.len(), 3, "replicas of {queue}: {members:?}");

    let first = c.server_on(host.as_str(), "fake://").await;
    let job = stop(&c, first).await;
    assert!(
        c.until_job(job.job_id, "succeeded", T).await,
        "first stop: {:?}",
        c.job(job.job_id).await
    );

    // Stop the node the worker consumes through.
    let consumer_name = format!("shutoff-worker {}", w.id);
    let victim = node_of_connection(&private.cluster, &consumer_name)
        .await
        .expect("the worker's connection is listed");
    let publisher_before = c.publisher.node().await;
    let t = Instant::now();
    private.cluster.nodes[victim].stop().await.unwrap();
    eprintln!(
        "timing: stopped node {} (the worker's) in {:?}",
        victim + 1,
        t.elapsed()
    );

    // The worker is back on another node; the publisher too, if it was there.
    let moved = c
        .env
        .eventually(T, || async {
            node_of_connection(&private.cluster, &consumer_name)
                .await
                .is_some_and(|n| n != victim)
        })
        .await;
    assert!(moved, "the worker did not move to a surviving node");
    until_consuming(&c, &w).await;

    let second = c.server_on(host.as_str(), "fake://").await;
    let job = stop(&c, second).await;
    assert!(
        c.until_job(job.job_id, "succeeded", T).await,
        "stop after the node died: {:?}",
        c.job(job.job_id).await
    );
    let port_of = |name: &str| name.rsplit(':').next().unwrap_or_default().to_string();
    let publisher_after = c.publisher.node().await;
    assert_ne!(
        port_of(&publisher_after),
        private.cluster.nodes[victim].port().to_string(),
        "the publisher still names the dead node ({publisher_before} -> {publisher_after})"
    );
    eprintln!(
        "timing: worker failover done {:?} after the stop (publisher {publisher_before} -> {publisher_after})",
        t.elapsed()
    );

    // If the publisher was elsewhere, its own node dies next (the first
    // one back first: two nodes down would be no majority).
    if publisher_before == publisher_after {
        private.cluster.nodes[victim].start().await.unwrap();
        let theirs = private
            .cluster
            .nodes
            .iter()
            .position(|n| n.port().to_string() == port_of(&publisher_after))
            .expect("the publisher is on a node of ours");
        let t = Instant::now();
        private.cluster.nodes[theirs].stop().await.unwrap();
        let third = c.server_on(host.as_str(), "fake://").await;
        let job = stop(&c, third).await;
        let moved = c.publisher.node().await;
        assert_ne!(
            port_of(&moved),
            private.cluster.nodes[theirs].port().to_string()
        );
        assert!(
            c.until_job(job.job_id, "succeeded", T).await,
            "stop after the publisher's node died: {:?}",
            c.job(job.job_id).await
        );
        eprintln!(
            "timing: publisher failover {publisher_after} -> {moved} done {:?} after its node stopped",
            t.elapsed()
        );
    }
    w.terminate().await;
    private.cluster.shutdown().await.unwrap();
}
