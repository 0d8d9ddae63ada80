//! The infrastructure of `--cluster`: a private three-node RabbitMQ cluster
//! and a private PostgreSQL primary with a synchronous streaming standby,
//! and the cluster faults done to them.
//!
//! The PostgreSQL pair plays the part Patroni (in its non-strict
//! `synchronous_mode`) plays in production: `synchronous_standby_names = '*'`
//! on the primary while a standby streams; after a failover the promoted
//! node runs without a synchronous standby until the old primary has been
//! rebuilt as its standby (`pg_basebackup -R`), then synchronous again.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::ports::free_ports;
use crate::postgres::Postgres;
use crate::rabbitmq_cluster::RabbitCluster;
use crate::say;
use crate::settings::Settings;
use crate::workdir::WorkDir;

/// The work queue whose leader the nemesis stops: the chaos servers' host's.
pub const WORK_QUEUE: &str = "shutoff.stop.sim-1";

pub struct ClusterInfra {
    pub rabbit: RabbitCluster,
    /// The two PostgreSQL nodes; which is the primary changes.
    pub pg: Vec<Postgres>,
    /// Index into `pg` of the read-write node.
    pub primary: usize,
    /// The RabbitMQ node a fault stopped and a later one starts again.
    pub rabbit_down: Option<usize>,
    /// The RabbitMQ node stopped last (the next "another" is not it).
    last_stopped: Option<usize>,
}

impl ClusterInfra {
    pub async fn start(settings: &Settings, work: &WorkDir) -> Result<ClusterInfra> {
        let t = Instant::now();
        let ports = free_ports(2)?;
        let bin = &settings.pg_bin;
        let mut a = Postgres::init_named(work, bin, ports[0], "pg-a")
            .await
            .context("initdb")?;
        let (pg, rabbit) = tokio::join!(
            async {
                a.start().await?;
                let mut b = Postgres::standby_of(work, bin, ports[1], "pg-b", ports[0]).await?;
                b.start().await?;
                Ok::<_, anyhow::Error>(b)
            },
            RabbitCluster::start(work, &settings.rabbitmq_bin, &settings.epmd, 3)
        );
        let b = pg.context("starting PostgreSQL primary and standby")?;
        let rabbit = rabbit.context("starting the RabbitMQ cluster")?;
        let infra = ClusterInfra {
            rabbit,
            pg: vec![a, b],
            primary: 0,
            rabbit_down: None,
            last_stopped: None,
        };
        infra.make_synchronous().await?;
        say!(
            "PostgreSQL primary 127.0.0.1:{} with synchronous standby 127.0.0.1:{}; RabbitMQ cluster ({:.1}s)",
            infra.pg[0].port(),
            infra.pg[1].port(),
            t.elapsed().as_secs_f64()
        );
        Ok(infra)
    }

    /// Both hosts, libpq style: the services find the read-write one.
    pub fn database_url(&self, database: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/{database}?target_session_attrs=read-write",
            self.pg[0].port(),
            self.pg[1].port()
        )
    }

    pub fn amqp_url(&self) -> String {
        self.rabbit.amqp_url()
    }

    /// `synchronous_standby_names = '*'` on the primary, once the standby
    /// streams: from then on a commit returns only once the standby has it.
    async fn make_synchronous(&self) -> Result<()> {
        let primary = &self.pg[self.primary];
        primary
            .execute("ALTER SYSTEM SET synchronous_standby_names = '*'")
            .await?;
        primary.execute("SELECT pg_reload_conf()").await?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let sync = primary
                .execute(
                    "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_stat_replication \
                     WHERE sync_state = 'sync') THEN RAISE 'no sync standby'; END IF; END $$",
                )
                .await;
            if sync.is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the standby did not become synchronous within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops the node that leads the work queue; returns its number (1-based).
    pub async fn stop_queue_leader(&mut self) -> Result<usize> {
        let leader = self
            .rabbit
            .wait_for_leader(WORK_QUEUE, Duration::from_secs(30))
            .await?;
        self.stop_rabbit(leader).await?;
        Ok(leader + 1)
    }

    /// Starts the node a fault stopped.
    pub async fn start_stopped_rabbit(&mut self) -> Result<usize> {
        let i = self
            .rabbit_down
            .take()
            .context("no RabbitMQ node is down")?;
        self.rabbit.nodes[i].start().await?;
        Ok(i + 1)
    }

    /// Stops a node other than the one stopped last, waits `down`, and
    /// starts it again; returns its number.
    pub async fn bounce_other_rabbit(&mut self, down: Duration) -> Result<usize> {
        let n = self.rabbit.nodes.len();
        let i = (0..n)
            .find(|i| Some(*i) != self.last_stopped && self.rabbit.nodes[*i].is_running())
            .context("no other RabbitMQ node runs")?;
        self.stop_rabbit(i).await?;
        tokio::time::sleep(down).await;
        self.start_stopped_rabbit().await?;
        Ok(i + 1)
    }

    async fn stop_rabbit(&mut self, i: usize) -> Result<()> {
        if self.rabbit_down.is_some() {
            bail!("a RabbitMQ node is already down: stopping another would lose the majority");
        }
        self.rabbit.nodes[i].stop().await?;
        self.rabbit_down = Some(i);
        self.last_stopped = Some(i);
        Ok(())
    }

    /// SIGKILLs the primary (every backend with it), promotes the standby,
    /// and lets it commit without a synchronous standby until one is back
    /// (what Patroni's non-strict synchronous mode does; the strict mode
    /// would refuse writes instead).
    pub async fn kill_primary_and_promote(&mut self) -> Result<()> {
        let old = self.primary;
        let new = 1 - old;
        self.pg[old].kill().await;
        self.pg[new]
            .promote()
            .await
            .context("promoting the standby")?;
        self.primary = new;
        let p = &self.pg[new];
        p.execute("ALTER SYSTEM SET synchronous_standby_names = ''")
            .await?;
        p.execute("SELECT pg_reload_conf()").await?;
        Ok(())
    }

    /// Rebuilds the dead old primary as a standby of the new one (a fresh
    /// base backup: its own timeline is behind), then makes it synchronous.
    pub async fn rebuild_standby(&mut self) -> Result<()> {
        let standby = 1 - self.primary;
        let primary_port = self.pg[self.primary].port();
        let node = &mut self.pg[standby];
        if node.is_running() {
            bail!("the old primary still runs");
        }
        node.base_backup(primary_port).await?;
        node.start().await?;
        self.make_synchronous().await
    }

    /// Stops every node (the `Drop`s of their processes are the fallback).
    pub async fn shutdown(&mut self) -> Result<()> {
        let mut r = self.rabbit.shutdown().await;
        for p in &mut self.pg {
            if let Err(e) = p.stop().await {
                r = r.and(Err(e));
            }
        }
        r
    }
}
