//! [`PrivateRabbitMq`]: a RabbitMQ node (or a cluster of them) of one test
//! alone, on free ports with its own data dir, node name and config, never
//! the machine's. Dropped, the nodes stop and their files go, also when the
//! test fails. Built on `shutoff-chaos`'s nodes.

use std::path::Path;
use std::time::Instant;

use shutoff_chaos::ports::free_ports;
use shutoff_chaos::rabbitmq::{RabbitMq, RabbitPorts};
use shutoff_chaos::rabbitmq_cluster::RabbitCluster;
use shutoff_chaos::workdir::WorkDir;

/// RabbitMQ's own start script, not the distribution's `su` wrapper.
pub const RABBITMQ_BIN: &str = "/usr/lib/rabbitmq/bin";

/// True when private nodes can run here (RabbitMQ and epmd installed);
/// otherwise skipped with a message, or a failure in CI.
pub fn can_run() -> bool {
    let installed = Path::new(RABBITMQ_BIN).join("rabbitmq-server").is_file()
        && std::process::Command::new("epmd")
            .arg("-help")
            .output()
            .is_ok();
    crate::skip::runnable(
        (!installed)
            .then(|| format!("RabbitMQ is not installed ({RABBITMQ_BIN}/rabbitmq-server, epmd)")),
    )
}

/// One private node.
pub struct PrivateRabbitMq {
    /// Declared before `_work` so the node stops before its files go.
    pub node: RabbitMq,
    _work: WorkDir,
}

impl PrivateRabbitMq {
    /// A node's config on free ports, not yet started (e.g. to add a TLS
    /// listener first), and `extra` more free ports for the caller.
    pub async fn init(extra: usize) -> (PrivateRabbitMq, Vec<u16>) {
        let work = WorkDir::create().unwrap();
        let p = free_ports(3 + extra).unwrap();
        let ports = RabbitPorts {
            amqp: p[0],
            dist: p[1],
            epmd: p[2],
        };
        let node = RabbitMq::init(&work, Path::new(RABBITMQ_BIN), Path::new("epmd"), ports)
            .await
            .unwrap();
        (PrivateRabbitMq { node, _work: work }, p[3..].to_vec())
    }

    /// Boots a node, or `None` when [`can_run`] says skip.
    pub async fn start() -> Option<PrivateRabbitMq> {
        if !can_run() {
            return None;
        }
        let (mut r, _) = PrivateRabbitMq::init(0).await;
        r.boot().await;
        Some(r)
    }

    /// Stops the node and starts it again on the same data dir.
    pub async fn restart(&mut self) {
        let down = self.node.restart().await.unwrap();
        eprintln!("timing: private RabbitMQ node restarted in {down:?}");
    }

    /// Starts the node [`init`](Self::init) wrote.
    pub async fn boot(&mut self) {
        let t = Instant::now();
        self.node.start().await.unwrap();
        eprintln!("timing: private RabbitMQ node booted in {:?}", t.elapsed());
    }
}

/// A private cluster of `n` nodes.
pub struct PrivateCluster {
    /// Declared before `_work` so the nodes stop before their files go.
    pub cluster: RabbitCluster,
    _work: WorkDir,
}

impl PrivateCluster {
    /// Forms the cluster, or `None` when [`can_run`] says skip.
    pub async fn start(n: usize) -> Option<PrivateCluster> {
        if !can_run() {
            return None;
        }
        let work = WorkDir::create().unwrap();
        let t = Instant::now();
        let cluster = RabbitCluster::start(&work, Path::new(RABBITMQ_BIN), Path::new("epmd"), n)
            .await
            .unwrap();
        eprintln!(
            "timing: private {n}-node RabbitMQ cluster up in {:?}",
            t.elapsed()
        );
        Some(PrivateCluster {
            cluster,
            _work: work,
        })
    }
}
