//! Our own RabbitMQ cluster: three (or `n`) private nodes `c<k>-<pid>-<i>@localhost`
//! on their own ports, data dirs and config files, sharing one private
//! epmd and one Erlang cookie (in a HOME of their own) so they can find and
//! trust each other, and nobody else: the machine's node is never touched.
//!
//! Clustering is RabbitMQ's manual way: node 1 boots; the others boot, then
//! `rabbitmqctl stop_app; join_cluster <node 1>; start_app`. Queues declared
//! after that get a replica on every node.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::ports::free_ports;
use crate::processes::Proc;
use crate::rabbitmq::{RabbitMq, RabbitPorts, start_epmd};
use crate::workdir::WorkDir;

/// Tells apart the clusters one process starts (tests run in parallel).
static CLUSTERS: AtomicUsize = AtomicUsize::new(0);

pub struct RabbitCluster {
    /// Declared before `epmd` so that, dropped, the nodes stop first.
    pub nodes: Vec<RabbitMq>,
    epmd: Option<Proc>,
}

impl RabbitCluster {
    /// Boots `n` nodes and clusters them; returns once every node runs the
    /// broker as a member of the one cluster.
    pub async fn start(work: &WorkDir, bin: &Path, epmd: &Path, n: usize) -> Result<RabbitCluster> {
        let t = Instant::now();
        let k = CLUSTERS.fetch_add(1, Ordering::Relaxed);
        let ports = free_ports(1 + 2 * n)?;
        let name = format!("rmq{k}");
        let home = work.path().join(format!("{name}-home"));
        std::fs::create_dir_all(&home)?;
        let epmd = start_epmd(work, epmd, ports[0], &format!("{name}-epmd")).await?;
        let mut nodes = Vec::with_capacity(n);
        for i in 0..n {
            let node = format!("c{k}-{}-{}@localhost", std::process::id(), i + 1);
            let p = RabbitPorts {
                amqp: ports[1 + 2 * i],
                dist: ports[2 + 2 * i],
                epmd: ports[0],
            };
            nodes.push(RabbitMq::prepare(
                work,
                bin,
                p,
                &node,
                &format!("{name}-n{}", i + 1),
                Some(&home),
            )?);
        }
        let mut cluster = RabbitCluster {
            nodes,
            epmd: Some(epmd),
        };
        // The first node writes the cookie the others then read.
        cluster.nodes[0].start().await.context("starting node 1")?;
        let first = cluster.nodes[0].node().to_string();
        let (_, rest) = cluster.nodes.split_at_mut(1);
        let booted = futures::future::join_all(rest.iter_mut().map(|n| n.start())).await;
        for (i, r) in booted.into_iter().enumerate() {
            r.with_context(|| format!("starting node {}", i + 2))?;
        }
        for node in &cluster.nodes[1..] {
            node.ctl(&["stop_app"]).await?;
            node.ctl(&["join_cluster", &first]).await?;
            node.ctl(&["start_app"]).await?;
        }
        let running = cluster.nodes[0].ctl(&["cluster_status"]).await?;
        for node in &cluster.nodes {
            if !running.contains(node.node()) {
                bail!("{} is not in the cluster:\n{running}", node.node());
            }
        }
        crate::say!(
            "RabbitMQ cluster of {n} nodes on 127.0.0.1:{} is up ({:.1}s)",
            cluster
                .nodes
                .iter()
                .map(|n| n.port().to_string())
                .collect::<Vec<_>>()
                .join(","),
            t.elapsed().as_secs_f64()
        );
        Ok(cluster)
    }

    /// Every node, oslo.messaging style (`amqp://guest:guest@h:p1,h:p2/%2f`).
    /// guest may log in only over loopback, which is all we use.
    pub fn amqp_url(&self) -> String {
        let nodes: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        format!("amqp://guest:guest@{}/%2f", nodes.join(","))
    }

    /// A node that runs, to ask the cluster something.
    fn any_running(&self) -> Result<&RabbitMq> {
        self.nodes
            .iter()
            .find(|n| n.is_running())
            .context("no node of the cluster runs")
    }

    /// The index of the node that leads quorum queue `queue`, and its
    /// members (node names), as the cluster says.
    pub async fn leader(&self, queue: &str) -> Result<(usize, Vec<String>)> {
        let out = self
            .any_running()?
            .ctl(&[
                "list_queues",
                "name",
                "leader",
                "members",
                "--formatter",
                "json",
                "-q",
            ])
            .await?;
        let rows: Vec<serde_json::Value> =
            serde_json::from_str(out.trim()).with_context(|| format!("list_queues said {out}"))?;
        let row = rows
            .iter()
            .find(|r| r["name"] == queue)
            .with_context(|| format!("queue {queue} is not in the cluster"))?;
        let leader = row["leader"].as_str().unwrap_or_default();
        let members = row["members"]
            .as_array()
            .map(|m| {
                m.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let i = self
            .nodes
            .iter()
            .position(|n| n.node() == leader)
            .with_context(|| format!("queue {queue} has no leader among our nodes ({leader:?})"))?;
        Ok((i, members))
    }

    /// Waits until `queue` has a leader on a running node (after a node
    /// stopped, the election takes a few seconds).
    pub async fn wait_for_leader(&self, queue: &str, limit: Duration) -> Result<usize> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok((i, _)) = self.leader(queue).await
                && self.nodes[i].is_running()
            {
                return Ok(i);
            }
            if Instant::now() > deadline {
                bail!("queue {queue} has no leader on a running node after {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// Stops every node, then the epmd.
    pub async fn shutdown(&mut self) -> Result<()> {
        let mut first_err = None;
        for n in self.nodes.iter_mut().rev() {
            if let Err(e) = n.stop().await {
                first_err.get_or_insert(e);
            }
        }
        if let Some(mut e) = self.epmd.take() {
            e.stop().await;
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}
