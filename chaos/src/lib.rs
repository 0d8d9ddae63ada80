//! `shutoff-chaos`: a Jepsen-style fault-injection run of the whole system.
//!
//! One run: start our own PostgreSQL and RabbitMQ ([`infra`], [`postgres`],
//! [`rabbitmq`]) in a temporary [`workdir`], migrate and [`seed`] the
//! database, start the API and the workers ([`fleet`]), send one stop per
//! server ([`load`]) while the [`faults`] module kills workers and restarts
//! the broker and the database, wait until the system [`settle`]s, then hold
//! every accepted stop against the database ([`classify`]) and print the
//! [`report`]. Every child is ours ([`processes`]) and is stopped however the
//! run ends.

pub mod classify;
pub mod cluster_infra;
pub mod faults;
pub mod fleet;
pub mod infra;
pub mod load;
pub mod ports;
pub mod postgres;
pub mod processes;
pub mod progress;
pub mod rabbitmq;
pub mod rabbitmq_cluster;
pub mod report;
pub mod seed;
pub mod settings;
pub mod settle;
pub mod workdir;

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use shutoff_core::store::PoolSettings;
use sqlx::PgPool;

use crate::cluster_infra::ClusterInfra;
use crate::fleet::{Fleet, FleetConfig};
use crate::infra::{Infra, Services};
use crate::load::LoadPlan;
use crate::rabbitmq::RabbitPorts;
use crate::report::{Report, Timings};
pub use crate::settings::Settings;
use crate::workdir::WorkDir;

/// Runs everything; true when the run passed. Whatever happens, the children
/// are stopped and (unless kept) the work dir is deleted before this returns
/// or when its future is dropped (Ctrl-C).
pub async fn run(settings: Settings) -> Result<bool> {
    progress::start();
    let mut work = WorkDir::create()?;
    say!("work dir {}", work.path().display());
    if settings.keep {
        work.keep();
    }
    let passed = if settings.only_infra {
        infra_smoke(&settings, &work).await?
    } else {
        chaos(&settings, &work).await?
    };
    if !passed || settings.keep {
        work.keep();
        eprintln!("logs and data kept in {}", work.path().display());
    }
    Ok(passed)
}

/// Ports: PostgreSQL, AMQP, Erlang distribution, epmd, API, then one per worker.
fn rabbit_ports(ports: &[u16]) -> RabbitPorts {
    RabbitPorts {
        amqp: ports[1],
        dist: ports[2],
        epmd: ports[3],
    }
}

/// Our own small pool: the checker needs a few connections at most.
fn chaos_pool(url: &str) -> Result<PgPool> {
    let settings = PoolSettings {
        max_connections: 4,
        ..PoolSettings::default()
    };
    Ok(shutoff_core::store::pool(
        &url.parse()?,
        &settings,
        "shutoff-chaos",
    ))
}

async fn chaos(settings: &Settings, work: &WorkDir) -> Result<bool> {
    let started = Instant::now();
    let bin_dir = settings.service_bin_dir()?;
    let workers = usize::from(settings.workers);
    let ports = ports::free_ports(5 + workers)?;
    // Declared in this order so that, dropped on an error, the services stop
    // before the database and broker they use.
    let mut infra = if settings.cluster {
        Services::Cluster(Box::new(ClusterInfra::start(settings, work).await?))
    } else {
        Services::Single(Box::new(
            Infra::start(settings, work, ports[0], rabbit_ports(&ports)).await?,
        ))
    };
    let database_url = infra.database_url();
    let pool = chaos_pool(&database_url)?;
    let fixture = seed::seed(&database_url, &pool, settings.stops).await?;
    say!(
        "database migrated; project {} with {} servers",
        fixture.project,
        fixture.servers.len()
    );
    let mut fleet = Fleet::start(
        FleetConfig {
            bin_dir,
            database_url: database_url.clone(),
            amqp_url: infra.amqp_url(),
            api_port: ports[4],
            worker_ports: ports[5..].to_vec(),
            worker_grace: Duration::from_secs(settings.worker_grace_secs),
        },
        work,
    )
    .await?;
    let setup = started.elapsed();

    let plan = LoadPlan {
        api_url: fleet.api_url(),
        project: fixture.project.clone(),
        token: fixture.token.clone(),
        servers: fixture.servers.clone(),
        concurrency: settings.concurrency,
        spread: settings.send_duration(),
    };
    let schedule = if settings.cluster {
        faults::cluster_schedule(settings.send_duration())
    } else {
        faults::schedule(settings.send_duration(), workers)
    };
    say!(
        "sending {} stops over {}s, {} at a time; {} faults planned",
        plan.servers.len(),
        settings.send_secs,
        plan.concurrency,
        schedule.len()
    );
    let t0 = Instant::now();
    let (load, done) = tokio::join!(
        load::send_all(&plan),
        faults::run(
            &schedule,
            t0,
            &mut infra,
            &mut fleet,
            &pool,
            settings.term_limit()
        )
    );
    let mut done = done?;
    let faults_done_at = progress::now();

    // Leave time within the deadline for the check, the shutdown and the report.
    let left = settings
        .deadline()
        .saturating_sub(started.elapsed() + Duration::from_secs(20));
    let settled = settle::wait(&pool, &mut fleet, settings.settle_timeout().min(left)).await?;
    let t = Instant::now();
    let verdict = classify::classify(&pool, &load.sent)
        .await
        .context("reading the outcome from the database")?;
    faults::first_completions(&pool, &mut done)
        .await
        .context("reading when stops completed after each fault")?;
    let check = t.elapsed();

    fleet.shutdown().await;
    pool.close().await;
    infra.shutdown().await?;

    let report = Report {
        cluster: settings.cluster,
        stops: settings.stops,
        workers,
        concurrency: settings.concurrency,
        load: &load,
        faults: &done,
        worker_restarts: fleet.worker_restarts,
        unexpected_exits: &fleet.unexpected_exits,
        error_lines: &fleet.error_lines(),
        settled: &settled,
        verdict: &verdict,
        timings: Timings {
            setup,
            send: load.took,
            faults_done_at,
            settle: settled.took,
            check,
            total: started.elapsed(),
        },
    };
    println!("{}", report.render());
    Ok(report.failures().is_empty())
}

/// `--only-infra`: both nodes up, usable, restarted once each, and usable again.
async fn infra_smoke(settings: &Settings, work: &WorkDir) -> Result<bool> {
    let started = Instant::now();
    let ports = ports::free_ports(4)?;
    let mut infra = Infra::start(settings, work, ports[0], rabbit_ports(&ports)).await?;
    let database_url = infra.database_url();
    let pool = chaos_pool(&database_url)?;
    let fixture = seed::seed(&database_url, &pool, 10).await?;
    say!("migrated and seeded {} servers", fixture.servers.len());

    let down = infra.postgres.restart().await?;
    say!("PostgreSQL restarted ({:.1}s down)", down.as_secs_f64());
    let down = infra.rabbitmq.restart().await?;
    say!("RabbitMQ restarted ({:.1}s down)", down.as_secs_f64());

    // The same pool must find the restarted database, and the data survived.
    let n: i64 = retry(|| async {
        sqlx::query_scalar("SELECT count(*) FROM instances")
            .fetch_one(&pool)
            .await
            .map_err(Into::into)
    })
    .await?;
    if n != 10 {
        bail!("expected 10 servers after the restart, found {n}");
    }
    rabbitmq::amqp_handshake(infra.rabbitmq.port()).await?;
    pool.close().await;
    infra.shutdown().await?;
    say!(
        "infrastructure OK in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(true)
}

/// Retries `f` for a few seconds (a pool's first use after a restart may
/// meet a dead connection).
async fn retry<T, F, Fut>(mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut last = None;
    for _ in 0..20 {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Err(last.expect("tried at least once"))
}
