//! The infrastructure half: our own PostgreSQL and RabbitMQ, started
//! together and stopped together.

use std::time::Instant;

use anyhow::{Context, Result};

use crate::postgres::Postgres;
use crate::rabbitmq::{RabbitMq, RabbitPorts};
use crate::say;
use crate::settings::Settings;
use crate::workdir::WorkDir;

/// Name of the database the services use.
pub const DATABASE: &str = "shutoff";

pub struct Infra {
    pub postgres: Postgres,
    pub rabbitmq: RabbitMq,
}

impl Infra {
    /// Initialises and starts both, on the given free ports.
    pub async fn start(
        settings: &Settings,
        work: &WorkDir,
        pg_port: u16,
        rabbit: RabbitPorts,
    ) -> Result<Infra> {
        let t = Instant::now();
        let mut postgres = Postgres::init(work, &settings.pg_bin, pg_port)
            .await
            .context("initdb")?;
        let mut rabbitmq = RabbitMq::init(work, &settings.rabbitmq_bin, &settings.epmd, rabbit)
            .await
            .context("preparing RabbitMQ")?;
        // Both boot at once: RabbitMQ takes several seconds, PostgreSQL one.
        let (pg, rmq) = tokio::join!(postgres.start(), rabbitmq.start());
        pg.context("starting PostgreSQL")?;
        rmq.context("starting RabbitMQ")?;
        say!(
            "PostgreSQL on 127.0.0.1:{} and RabbitMQ node {} on 127.0.0.1:{} are up ({:.1}s)",
            postgres.port(),
            rabbitmq.node(),
            rabbitmq.port(),
            t.elapsed().as_secs_f64()
        );
        Ok(Infra { postgres, rabbitmq })
    }

    pub fn database_url(&self) -> String {
        self.postgres.url(DATABASE)
    }

    pub fn amqp_url(&self) -> String {
        self.rabbitmq.amqp_url()
    }

    /// Clean stop of both (the `Drop`s of their processes are the fallback).
    pub async fn shutdown(&mut self) -> Result<()> {
        let (pg, rmq) = tokio::join!(self.postgres.stop(), self.rabbitmq.shutdown());
        pg.context("stopping PostgreSQL")?;
        rmq.context("stopping RabbitMQ")
    }
}

/// What the run's services use: one node of each, or (`--cluster`) a
/// RabbitMQ cluster and a PostgreSQL primary with a synchronous standby.
pub enum Services {
    // Boxed: one of each lives per run, and the two differ much in size.
    Single(Box<Infra>),
    Cluster(Box<crate::cluster_infra::ClusterInfra>),
}

impl Services {
    pub fn database_url(&self) -> String {
        match self {
            Services::Single(i) => i.database_url(),
            Services::Cluster(c) => c.database_url(DATABASE),
        }
    }

    pub fn amqp_url(&self) -> String {
        match self {
            Services::Single(i) => i.amqp_url(),
            Services::Cluster(c) => c.amqp_url(),
        }
    }

    pub fn single(&mut self) -> Result<&mut Infra> {
        match self {
            Services::Single(i) => Ok(i),
            Services::Cluster(_) => anyhow::bail!("a single-node fault in a cluster run"),
        }
    }

    pub fn cluster(&mut self) -> Result<&mut crate::cluster_infra::ClusterInfra> {
        match self {
            Services::Cluster(c) => Ok(c),
            Services::Single(_) => anyhow::bail!("a cluster fault in a single-node run"),
        }
    }

    pub async fn shutdown(&mut self) -> Result<()> {
        match self {
            Services::Single(i) => i.shutdown().await,
            Services::Cluster(c) => c.shutdown().await,
        }
    }
}
