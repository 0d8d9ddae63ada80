#![recursion_limit = "256"]
//! `shutoff-bench`: the whole pipeline measured against this machine's own
//! limits, in one run.
//!
//! 1. ceiling: pgbench runs our acceptance statement at 16 clients;
//! 2. accept:  the real `shutoff-api` binary under 64 HTTP connections;
//! 3. e2e:     20,000 stops through the API and two real workers;
//! 4. latency: a steady half of the e2e rate for 10 s: 202 to stopped, p50/p99/p99.9;
//! 5. hosts:   20,000 stops spread over 1,000 hosts, a worker each;
//! 6. footprint: 60 worker processes, one host each: PostgreSQL connections
//!    and statements per host, idle and under load;
//! 7. slow:    5,000 stops through ONE worker, each power-off taking 2 s.
//! 8. history: the accept and e2e runs again on a database with
//!    `--history-large` (5,000,000) finished stops, as ratios to the same runs
//!    at `--history` (50,000); the relay's and the rescuer's passes at both
//!    sizes; and a real `shutoff-admin prune` beside a second accept run.
//!    Seeded first, so both sizes are measured minutes apart.
//!
//! Everything runs in a database and a RabbitMQ vhost of the bench's own,
//! removed at the end; the services run with their default settings.

mod fleet;
mod history;
mod load;
mod pg_ceiling;
mod report;
mod services;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use clap::Parser;
use shutoff_core::ids::ProjectId;
use shutoff_core::store::{self, admin};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};
use uuid::Uuid;

use crate::report::Figures;
use crate::services::{Service, Vhost, Wiring};

#[derive(Debug, Parser)]
#[command(
    name = "shutoff-bench",
    about = "Measures shutoff against this machine's PostgreSQL ceiling"
)]
struct Args {
    /// Write every figure to this file as one JSON object.
    #[arg(long)]
    json: Option<PathBuf>,
    /// PostgreSQL server; the bench creates (and drops) its own databases on it.
    #[arg(
        long,
        env = "BENCH_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    database_url: String,
    /// RabbitMQ; the bench creates (and deletes) its own vhost on it.
    #[arg(long, env = "AMQP_URL", default_value = shutoff_core::config::DEFAULT_AMQP_URL)]
    amqp_url: String,
    /// pgbench clients for the ceiling.
    #[arg(long, default_value_t = 16)]
    ceiling_clients: u32,
    #[arg(long, default_value_t = 15)]
    ceiling_secs: u64,
    /// Concurrent HTTP connections (each with its own token).
    #[arg(long, default_value_t = 64)]
    connections: usize,
    #[arg(long, default_value_t = 15)]
    accept_secs: u64,
    #[arg(long, default_value_t = 20_000)]
    e2e_stops: usize,
    #[arg(long, default_value_t = 2)]
    e2e_workers: usize,
    /// Seconds of steady load for the latency phase (at half the measured
    /// end-to-end rate).
    #[arg(long, default_value_t = 10)]
    latency_secs: u64,
    /// Hosts of the hosts phase (a worker each, in this process).
    #[arg(long, default_value_t = 1_000)]
    fleet_hosts: usize,
    #[arg(long, default_value_t = 20_000)]
    fleet_stops: usize,
    /// How the hosts' and the footprint's workers reach PostgreSQL:
    /// `conductor` (`--via-conductor`, the way for a worker on every host)
    /// or `direct` (a pool of their own), for before/after. `floor` (the
    /// hosts phase only) runs no workers: each host's queue is consumed and
    /// every job acked, nothing claimed or recorded, which is the least any
    /// routing through per-host queues costs.
    #[arg(long, default_value = "conductor", value_parser = ["conductor", "direct", "floor"])]
    fleet_via: String,
    /// The kind of each host's queue in the floor (`--fleet-via floor`):
    /// `quorum` (shutoff's), or the alternatives `classic` and `stream`,
    /// which shutoff does not declare and the bench measures against it.
    #[arg(long, value_enum, default_value_t = fleet::HostQueues::Quorum)]
    fleet_queues: fleet::HostQueues,
    /// HTTP round trips to the API each floor job makes before its ack
    /// (`--fleet-via floor`): 2 stands in for a claim and a success sent
    /// over HTTP instead of RabbitMQ, at the least such calls can cost.
    #[arg(long, default_value_t = 0)]
    fleet_floor_calls: u32,
    /// Also print which kinds of Erlang process of the hosts phase's
    /// RabbitMQ node did the work (reductions), at idle and under load.
    /// The sampling itself costs the node CPU: the phase's cores at idle
    /// and under load then include it.
    #[arg(long)]
    fleet_broker_profile: bool,
    /// Worker processes of the footprint phase (one host each).
    #[arg(long, default_value_t = 60)]
    footprint_workers: usize,
    #[arg(long, default_value_t = 12_000)]
    footprint_stops: usize,
    #[arg(long, default_value_t = 5_000)]
    slow_stops: usize,
    #[arg(long, default_value_t = 2_000)]
    slow_delay_ms: u64,
    /// Finished stops (with their actions, events, transitions and some
    /// faults) each phase's database and the ceiling's start with, as a
    /// deployment with that much history.
    #[arg(long, default_value_t = 50_000)]
    history: i64,
    /// Finished stops of the history phase's database: the accept and e2e
    /// phases again on it, as ratios to the figures at `--history`.
    #[arg(long, default_value_t = 5_000_000)]
    history_large: i64,
    /// Times each of the relay's and the rescuer's passes is timed, at both
    /// sizes.
    #[arg(long, default_value_t = 200)]
    pass_runs: usize,
    /// The history phase's `shutoff-admin prune --older-than`, beside a
    /// second accept run (the history spans a year, the oldest stops first).
    #[arg(long, default_value = "330days")]
    prune_older_than: String,
    /// Leave the history phase's seeded database in place at the end (its
    /// name is printed), to look into it or to reuse it with
    /// `--history-from`.
    #[arg(long)]
    keep_history: bool,
    /// Run the history phase on this existing database (kept by an earlier
    /// run's `--keep-history`) instead of seeding one: minutes instead of a
    /// quarter of an hour. Each run adds its stops to it and prunes it, so
    /// its history is not the same twice; a fresh seeding is the figure of
    /// record. It is never dropped.
    #[arg(long)]
    history_from: Option<String>,
    /// Phases to leave out (ceiling, accept, e2e, history, latency, hosts,
    /// footprint, slow), for profiling one.
    #[arg(long, value_delimiter = ',')]
    skip: Vec<String>,
}

impl Args {
    fn runs(&self, phase: &str) -> bool {
        !self.skip.iter().any(|s| s == phase)
    }
}

fn database_url(base: &str, name: &str) -> anyhow::Result<String> {
    let opts: PgConnectOptions = base.parse()?;
    Ok(opts.database(name).to_url_lossy().to_string())
}

async fn connect(url: &str) -> anyhow::Result<PgPool> {
    // The binaries' own options, TLS parameters included.
    let opts = shutoff_core::tls::pg_connect_options(url)?;
    Ok(PgPoolOptions::new()
        .max_connections(4)
        .connect_with(opts)
        .await?)
}

async fn drop_database(base: &str, name: &str) {
    let Ok(pool) = connect(base).await else {
        return;
    };
    let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
    if let Err(e) = sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&pool).await {
        eprintln!("shutoff-bench: could not drop database {name}: {e}");
    }
    pool.close().await;
}

/// A project with one member token per connection and `n` launched servers.
async fn project(
    pool: &PgPool,
    name: &str,
    tokens: usize,
    n: usize,
    hypervisor: &str,
) -> anyhow::Result<(ProjectId, Vec<String>, Vec<Uuid>)> {
    let project = ProjectId::random();
    // Unique, also in a database an earlier run left (`--history-from`).
    let project_name = format!("{name}-{}", &project.as_str()[..8]);
    admin::create_project(pool, &project, &project_name).await?;
    let mut toks = Vec::with_capacity(tokens);
    for i in 0..tokens {
        let expires = Utc::now() + chrono::Duration::hours(2);
        toks.push(
            admin::create_token(
                pool,
                &project,
                &format!("{name}-{i}"),
                &["member".into()],
                expires,
            )
            .await?,
        );
    }
    let servers = sqlx::query_scalar(
        "INSERT INTO instances (uuid, project_id, user_id, name, launched_at, hypervisor)
         SELECT gen_random_uuid(), $1, 'bench', $2 || '-' || g, now(), $3
           FROM generate_series(1, $4) g
         RETURNING uuid",
    )
    .bind(project.as_str())
    .bind(name)
    .bind(hypervisor)
    .bind(n as i64)
    .fetch_all(pool)
    .await?;
    analyze_filled(pool).await?;
    settle(pool).await;
    Ok((project, toks, servers))
}

/// Statistics for the tables a set-up step just filled. The job tables got
/// theirs with their history (see [`seed_history`]); they are left alone here
/// because analyzing them while empty, as an earlier version of this
/// benchmark did, recorded them as 0 rows and every connection then checked
/// its foreign keys by scanning them (accept fell from 3,800/s to 450/s
/// within 15 s).
pub(crate) async fn analyze_filled(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::raw_sql("ANALYZE projects, tokens, instances")
        .execute(pool)
        .await?;
    Ok(())
}

/// Flushes what the set-up wrote before a phase is measured. Without it a
/// phase pays for the previous one's dirty pages (and `DROP DATABASE`'s
/// checkpoint lands in the middle of it): the accept run right after the
/// ceiling measured p99 200 ms where on a settled database it was 35 ms.
pub(crate) async fn settle(pool: &PgPool) {
    if let Err(e) = sqlx::raw_sql("CHECKPOINT").execute(pool).await {
        eprintln!(
            "shutoff-bench: CHECKPOINT refused ({e}); phases may pay for each other's writes"
        );
    }
}

struct Finished {
    first_created: DateTime<Utc>,
    last_finished: DateTime<Utc>,
    succeeded: i64,
}

/// Waits until every accepted stop of `project` has finished, then reads the
/// first acceptance and the last `stopped` commit from the jobs themselves.
async fn wait_finished(
    pool: &PgPool,
    project: &ProjectId,
    accepted: usize,
) -> anyhow::Result<Finished> {
    let deadline = Instant::now() + Duration::from_secs(600);
    // Poll for unfinished jobs only, five times a second; the whole-project
    // count below reads every job, and run every 50 ms it took a tenth of the
    // machine's CPU from the run it measures.
    loop {
        let unfinished: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM jobs j JOIN instances i ON i.uuid = j.instance_uuid
              WHERE j.finished_at IS NULL AND i.project_id = $1",
        )
        .bind(project.as_str())
        .fetch_one(pool)
        .await?;
        if unfinished == 0 {
            break;
        }
        if Instant::now() > deadline {
            bail!("{unfinished} of {accepted} stops still unfinished after 600 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    {
        let row: (i64, i64, Option<DateTime<Utc>>, Option<DateTime<Utc>>) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE j.state IN ('succeeded', 'failed')),
                    count(*) FILTER (WHERE j.state = 'succeeded'),
                    min(j.created_at), max(j.finished_at)
               FROM instances i JOIN instance_actions ia ON ia.instance_uuid = i.uuid JOIN jobs j ON j.action_id = ia.id
              WHERE i.project_id = $1",
        )
        .bind(project.as_str())
        .fetch_one(pool)
        .await?;
        if (row.0 as usize) < accepted {
            bail!(
                "{accepted} stops answered 202 but only {} jobs finished",
                row.0
            );
        }
        Ok(Finished {
            first_created: row.2.context("no jobs")?,
            last_finished: row.3.context("no finished jobs")?,
            succeeded: row.1,
        })
    }
}

/// Per second since the first acceptance: jobs created, started and
/// finished, to see which stage sets the pace.
async fn e2e_timeline(pool: &PgPool, project: &ProjectId) -> anyhow::Result<String> {
    let rows: Vec<(i64, i64, i64)> = sqlx::query_as(
        "WITH j AS (SELECT j.created_at, j.started_at, j.finished_at
                      FROM instances i JOIN instance_actions ia ON ia.instance_uuid = i.uuid JOIN jobs j ON j.action_id = ia.id
                     WHERE i.project_id = $1),
              t0 AS (SELECT min(created_at) AS t FROM j),
              s AS (SELECT floor(extract(epoch FROM created_at - t0.t))::int AS c,
                           floor(extract(epoch FROM started_at - t0.t))::int AS st,
                           floor(extract(epoch FROM finished_at - t0.t))::int AS f
                      FROM j, t0)
         SELECT (SELECT count(*) FROM s WHERE c = g), (SELECT count(*) FROM s WHERE st = g),
                (SELECT count(*) FROM s WHERE f = g)
           FROM generate_series(0, (SELECT max(f) FROM s)) g ORDER BY g",
    )
    .bind(project.as_str())
    .fetch_all(pool)
    .await?;
    Ok(rows
        .iter()
        .map(|(c, s, f)| format!("{c}/{s}/{f}"))
        .collect::<Vec<_>>()
        .join(" "))
}

fn seconds(a: DateTime<Utc>, b: DateTime<Utc>) -> f64 {
    (b - a).num_microseconds().unwrap_or(0) as f64 / 1e6
}

async fn stop_all(services: Vec<Service>) {
    for s in services {
        s.stop().await;
    }
}

/// pgbench in a scratch database of its own.
async fn ceiling(args: &Args, run_id: &str, which: &str) -> anyhow::Result<f64> {
    let ceiling_db = format!("{run_id}_ceiling");
    let ceiling_url = database_url(&args.database_url, &ceiling_db)?;
    store::create_and_migrate(&ceiling_url.parse()?).await?;
    let ceiling = async {
        let pool = connect(&ceiling_url).await?;
        let c = pg_ceiling::measure(
            &pool,
            &ceiling_url,
            args.ceiling_clients,
            Duration::from_secs(args.ceiling_secs),
            args.history,
        )
        .await;
        pool.close().await;
        c
    }
    .await;
    drop_database(&args.database_url, &ceiling_db).await;
    let ceiling = ceiling?;
    eprintln!(
        "ceiling ({which}): {:.0} tx/s ({} transactions)",
        ceiling.tps, ceiling.transactions
    );
    Ok(ceiling.tps)
}

async fn run(
    args: &Args,
    bin_dir: PathBuf,
    vhost: &Vhost,
    run_id: &str,
    figures: &mut Figures,
) -> anyhow::Result<()> {
    // 1. The ceiling. Measured first and again last, since this machine's
    // disk speed drifts over minutes; the figure is their mean.
    if args.runs("ceiling") {
        let tps = ceiling(args, run_id, "first").await?;
        figures.pg_ceiling_runs.push(tps);
    }
    let via_conductor = args.fleet_via == "conductor";
    let floor = args.fleet_via == "floor";
    if floor && args.runs("footprint") {
        bail!("--fleet-via floor is for the hosts phase: add --skip footprint");
    }
    if !floor && (args.fleet_queues != fleet::HostQueues::Quorum || args.fleet_floor_calls > 0) {
        // Workers declare their host's queue themselves, as quorum queues,
        // and make their calls themselves.
        bail!("--fleet-queues other than quorum and --fleet-floor-calls need --fleet-via floor");
    }
    let wiring = |phase: &str, url: &str| Wiring {
        via_conductor: false,
        bin_dir: bin_dir.clone(),
        database_url: url.to_string(),
        amqp_url: vhost.amqp_url(&args.amqp_url).expect("amqp url"),
        queue_prefix: format!("bench-{phase}"),
        log_dir: PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../target/bench-logs")
            .join(phase),
    };

    // The large history's database, seeded before the phases at 50,000 so
    // that both sizes are measured minutes apart, not a seeding apart.
    let large = match (args.runs("history"), &args.history_from) {
        (false, _) => None,
        (true, Some(name)) => {
            let url = database_url(&args.database_url, name)?;
            // The schema of this build, and no backlog: the earlier run's
            // last accept run left its jobs queued.
            store::create_and_migrate(&url.parse()?).await?;
            let pool = connect(&url).await?;
            finish_queued(&pool).await?;
            let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM jobs")
                .fetch_one(&pool)
                .await?;
            eprintln!("history: reusing {name}, {n} stops, not seeded");
            Some((url, pool, n))
        }
        (true, None) => {
            let (url, pool, took) =
                phase_database(args, run_id, "history", args.history_large).await?;
            figures.history.seed_large_s = took.as_secs_f64();
            Some((url, pool, args.history_large))
        }
    };
    // The databases at --history stay open for the history phase's second
    // runs on them.
    let (mut small_accept, mut small_e2e) = (None, None);
    if args.runs("accept") {
        // 2. Accept rate: the API alone (workers elsewhere in a real cloud).
        let (url, pool, _) = phase_database(args, run_id, "accept", args.history).await?;
        let a = accept_phase(args, &wiring("accept", &url), &pool, "accept").await?;
        figures.api_peak_rss_mb = a.api_peak_rss_mb;
        figures.accept_per_s = a.per_s;
        figures.accept_p50_ms = a.p50_ms;
        figures.accept_p99_ms = a.p99_ms;
        figures.accept_refused = a.refused;
        figures.history.blocks_read_small = a.blocks_read;
        small_accept = Some((url, pool));
    }
    if args.runs("e2e") {
        // 3. End to end through two workers, simulated hypervisor, no delay.
        let (url, pool, took) = phase_database(args, run_id, "e2e", args.history).await?;
        figures.history.seed_small_s = took.as_secs_f64();
        let e = e2e_phase(args, &wiring("e2e", &url), &pool, "e2e").await?;
        figures.e2e_commits_per_stop = e.commits_per_stop;
        figures.e2e_cores = e.cores;
        figures.e2e_stops = e.stops;
        figures.e2e_succeeded = e.succeeded;
        figures.e2e_seconds = e.seconds;
        figures.e2e_per_s = e.per_s;
        figures.e2e_accept_per_s = e.accept_per_s;
        figures.history.e2e_blocks_read_small = e.blocks_read;
        if args.runs("history") {
            figures.history.passes_small = history::time_passes(&pool, args.pass_runs).await?;
            eprintln!(
                "passes at {}: {:?}",
                args.history, figures.history.passes_small
            );
        }
        small_e2e = Some((url, pool));
    }
    if let Some((url, pool, n)) = large {
        figures.history.n = n;
        let small = Small {
            accept: small_accept.as_ref(),
            e2e: small_e2e.as_ref(),
        };
        history_phase(args, &bin_dir, &wiring, (&url, &pool), small, figures).await?;
        pool.close().await;
    }
    for (_, pool) in small_accept.into_iter().chain(small_e2e) {
        pool.close().await;
    }
    if args.runs("latency") {
        // 4. Latency at a steady half of the end-to-end capacity: from each
        // 202 to its stopped commit.
        let (url, pool, _) = phase_database(args, run_id, "latency", args.history).await?;
        let rate = if figures.e2e_per_s > 0.0 {
            figures.e2e_per_s / 2.0
        } else {
            1_000.0
        };
        let duration = Duration::from_secs(args.latency_secs);
        let n = (rate * duration.as_secs_f64()) as usize + 1;
        let (project_l, tokens, servers) =
            project(&pool, "latency", args.connections, n, "fake://").await?;
        let w = wiring("latency", &url);
        let mut svc = Vec::new();
        for i in 0..args.e2e_workers {
            svc.push(services::start_worker(&w, &format!("bench-latency-{i}")).await?);
        }
        let (api, addr) = services::start_api(&w).await?;
        svc.push(api);
        let (outcome, answered) = load::paced(
            load::Target {
                api: addr,
                project: project_l.to_string(),
                tokens,
                servers,
            },
            rate,
            duration,
        )
        .await;
        let done = wait_finished(&pool, &project_l, outcome.accepted).await;
        stop_all(svc).await;
        done?;
        let (servers, at): (Vec<Uuid>, Vec<DateTime<Utc>>) = answered.into_iter().unzip();
        let rows: Vec<(f64, f64, f64)> = sqlx::query_as(
            "SELECT (greatest(extract(epoch FROM j.finished_at - a.at), 0) * 1000)::float8,
                    (greatest(extract(epoch FROM j.started_at - a.at), 0) * 1000)::float8,
                    (extract(epoch FROM j.finished_at - j.started_at) * 1000)::float8
               FROM unnest($1::uuid[], $2::timestamptz[]) AS a(server, at)
               JOIN instance_actions ia ON ia.instance_uuid = a.server JOIN jobs j ON j.action_id = ia.id",
        )
        .bind(&servers)
        .bind(&at)
        .fetch_all(&pool)
        .await?;
        let pick = |f: fn(&(f64, f64, f64)) -> f64, p: f64| {
            let mut v: Vec<f64> = rows.iter().map(f).collect();
            v.sort_by(f64::total_cmp);
            v.get(((p / 100.0) * (v.len().max(1) - 1) as f64).round() as usize)
                .copied()
                .unwrap_or(0.0)
        };
        figures.latency_rate_per_s = rate;
        figures.latency_stops = rows.len();
        figures.stop_latency_ms = [
            pick(|r| r.0, 50.0),
            pick(|r| r.0, 99.0),
            pick(|r| r.0, 99.9),
        ];
        figures.to_claim_ms = [pick(|r| r.1, 50.0), pick(|r| r.1, 99.0)];
        figures.claim_to_stopped_ms = [pick(|r| r.2, 50.0), pick(|r| r.2, 99.0)];
        eprintln!(
            "latency: {} stops at {rate:.0}/s, 202 to stopped p50 {:.1} p99 {:.1} p99.9 {:.1} ms",
            rows.len(),
            figures.stop_latency_ms[0],
            figures.stop_latency_ms[1],
            figures.stop_latency_ms[2]
        );
        pool.close().await;
    }
    if args.runs("hosts") {
        // 5. The same stops spread over many hosts, a worker each.
        let (url, pool, _) = phase_database(args, run_id, "hosts", args.history).await?;
        let (project_h, tokens, servers) = project(
            &pool,
            "hosts",
            args.connections,
            args.fleet_stops,
            "fake://",
        )
        .await?;
        fleet::spread(&pool, &servers, "bh", args.fleet_hosts).await?;
        let open_files = fleet::raise_open_files();
        let needed = args.fleet_hosts as u64 * 4 + 2_000;
        if open_files < needed {
            bail!(
                "hosts: {} hosts need about {needed} open files; the limit is {open_files}",
                args.fleet_hosts
            );
        }
        let broker = fleet::PrivateBroker::start().await?;
        let mut w = wiring("hosts", &url);
        w.amqp_url = broker.node.amqp_url();
        let hosts: Vec<String> = (0..args.fleet_hosts)
            .map(|i| fleet::host_name("bh", i))
            .collect();
        figures.broker_mb_before = broker.rss_mb();
        figures.hosts_via = args.fleet_via.clone();
        figures.hosts_queues = args.fleet_queues.name().to_string();
        figures.hosts_floor_calls = args.fleet_floor_calls;
        // Up first: with --via-conductor a worker is ready only once the
        // API's conductor answers it.
        let (api, addr) = services::start_api(&w).await?;
        // Direct: one pool for all of this process's workers (1,000 pools
        // of four would be past this PostgreSQL's max_connections).
        let worker_pool = (!via_conductor).then(|| {
            store::pool(
                &url.parse().expect("the phase's URL parses"),
                &store::PoolSettings {
                    max_connections: 48,
                    ..Default::default()
                },
                "shutoff-worker",
            )
        });
        let served = if floor {
            fleet::Served::Floor(
                fleet::Floor::start(&w, &hosts, args.fleet_queues, args.fleet_floor_calls, &addr)
                    .await?,
            )
        } else {
            fleet::Served::Workers(
                fleet::InProcess::start(&w, worker_pool.as_ref(), &hosts, 50).await?,
            )
        };
        figures.broker_mb_up = broker.rss_mb();
        figures.host_start_ms = [
            fleet::percentile(served.start_ms(), 50.0),
            fleet::percentile(served.start_ms(), 99.0),
            fleet::percentile(served.start_ms(), 100.0),
        ];
        figures.hosts_all_up_s = served.all_up().as_secs_f64();
        eprintln!(
            "hosts: {} workers ({}) consuming in {:.1} s (start p50 {:.0} ms, p99 {:.0} ms)",
            hosts.len(),
            args.fleet_via,
            figures.hosts_all_up_s,
            figures.host_start_ms[0],
            figures.host_start_ms[1]
        );
        // What the fleet costs doing nothing, once the start-up bursts are
        // over (the first heartbeats of every host land in the first
        // interval).
        tokio::time::sleep(Duration::from_secs(5)).await;
        let idle = fleet::CpuWatch::start(&broker.pattern());
        let window = Duration::from_secs(20);
        figures.hosts_idle_statements_per_s = if args.fleet_broker_profile {
            let (p, rate) = tokio::join!(broker.profile(window), fleet::rate_over(&pool, window));
            eprintln!("hosts: the broker at idle, reductions by process kind over 20 s:\n{p}");
            rate?
        } else {
            fleet::rate_over(&pool, window).await?
        };
        figures.hosts_idle_cores = idle.cores();
        let c0 = fleet::commits(&pool).await?;
        let cpu = fleet::CpuWatch::start(&broker.pattern());
        let load_started = Instant::now();
        let load = load::run(
            load::Target {
                api: addr,
                project: project_h.to_string(),
                tokens,
                servers,
            },
            None,
        );
        let outcome = if args.fleet_broker_profile {
            let profile = async {
                tokio::time::sleep(Duration::from_secs(3)).await;
                broker.profile(Duration::from_secs(10)).await
            };
            let (outcome, p) = tokio::join!(load, profile);
            eprintln!("hosts: the broker under load, reductions by process kind over 10 s:\n{p}");
            outcome
        } else {
            load.await
        };
        // The floor records nothing: its end is the last job acked, by this
        // process's clock, from the start of the load.
        let end = match &served {
            fleet::Served::Floor(f) => fleet::End::Floor {
                last: f
                    .wait_delivered(outcome.accepted as u64, Duration::from_secs(600))
                    .await,
                delivered: f.delivered(),
                other_host: f.other_host(),
                failed_calls: f.failed_calls(),
            },
            fleet::Served::Workers(_) => {
                fleet::End::Workers(wait_finished(&pool, &project_h, outcome.accepted).await)
            }
        };
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let c1 = fleet::commits(&pool).await?;
        figures.hosts_commits_per_stop = (c1 - c0) as f64 / outcome.accepted.max(1) as f64;
        // The bench process is the load generator and the 1,000 workers'
        // clients (a real fleet runs the workers on their own machines).
        figures.hosts_cores = cpu.cores();
        figures.broker_mb_after = broker.rss_mb();
        figures.hosts_bench_peak_mb =
            fleet::status_kb(std::path::Path::new("/proc/self/status"), "VmHWM:")
                .map(|kb| kb / 1024.0);
        served.stop().await;
        api.stop().await;
        if let Some(p) = worker_pool {
            p.close().await;
        }
        drop(broker);
        let (succeeded, e2e_per_s) = match end {
            fleet::End::Floor {
                delivered,
                other_host,
                failed_calls,
                last,
            } => {
                if other_host > 0 {
                    bail!("hosts: {other_host} jobs reached another host's queue");
                }
                if failed_calls > 0 {
                    bail!("hosts: {failed_calls} of the floor's HTTP calls got no answer");
                }
                let Some(last) = last else {
                    bail!("hosts: no job reached any host's queue");
                };
                let per_s = delivered as f64 / last.duration_since(load_started).as_secs_f64();
                eprintln!(
                    "hosts: floor {per_s:.0}/s over {} {} queues ({delivered} of {} jobs delivered and acked after {} HTTP calls each, nothing recorded)",
                    hosts.len(),
                    args.fleet_queues.name(),
                    outcome.accepted,
                    args.fleet_floor_calls
                );
                (delivered as usize, per_s)
            }
            fleet::End::Workers(done) => {
                let done = done?;
                let wrong: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM instances i JOIN instance_actions ia ON ia.instance_uuid = i.uuid JOIN jobs j ON j.action_id = ia.id
                      WHERE i.project_id = $1 AND (j.host IS DISTINCT FROM i.host
                                                   OR j.worker IS DISTINCT FROM 'bench-' || i.host)",
                )
                .bind(project_h.as_str())
                .fetch_one(&pool)
                .await?;
                if wrong > 0 {
                    bail!("hosts: {wrong} stops were carried out by a worker of another host");
                }
                let per_s = done.succeeded as f64 / seconds(done.first_created, done.last_finished);
                eprintln!(
                    "hosts: {per_s:.0}/s over {} hosts (every stop by its own host's worker)",
                    hosts.len()
                );
                (done.succeeded as usize, per_s)
            }
        };
        figures.hosts = hosts.len();
        figures.hosts_stops = outcome.accepted;
        figures.hosts_accept_per_s = outcome.per_second();
        figures.hosts_succeeded = succeeded;
        figures.hosts_e2e_per_s = e2e_per_s;
        pool.close().await;
    }
    if args.runs("footprint") {
        // 6. What a worker per host costs PostgreSQL. On a PostgreSQL of the
        // phase's own (max_connections 400, from shutoff-chaos): what is
        // counted is how many connections the workers open, which must not
        // be capped by this machine's 100, nor take them from its services.
        let pg_work = shutoff_chaos::workdir::WorkDir::create()?;
        let port = shutoff_chaos::ports::free_ports(1)?[0];
        let mut private_pg = shutoff_chaos::postgres::Postgres::init(
            &pg_work,
            std::path::Path::new("/usr/lib/postgresql/15/bin"),
            port,
        )
        .await?;
        private_pg.start().await?;
        let url = private_pg.url("footprint");
        store::create_and_migrate(&url.parse()?).await?;
        let pool = connect(&url).await?;
        let took = seed_history(&pool, args.history).await?;
        eprintln!(
            "footprint: a private PostgreSQL on port {port}, seeded {} finished stops in {:.1} s",
            args.history,
            took.as_secs_f64()
        );
        let n = args.footprint_workers;
        let (project_f, tokens, servers) = project(
            &pool,
            "footprint",
            args.connections,
            args.footprint_stops,
            "fake://",
        )
        .await?;
        fleet::spread(&pool, &servers, "fp", n).await?;
        let mut w = wiring("footprint", &url);
        w.via_conductor = via_conductor;
        let hosts: Vec<String> = (0..n).map(|i| fleet::host_name("fp", i)).collect();
        // Direct: the workers alone, then the API's share on top. Via the
        // conductor the workers' statements are the API's, so the API
        // alone first, then the workers' share on top.
        let mut api = None;
        let mut api_alone = 0.0;
        if via_conductor {
            let (a, addr) = services::start_api(&w).await?;
            tokio::time::sleep(Duration::from_secs(3)).await;
            api_alone = fleet::rate_over(&pool, Duration::from_secs(20)).await?;
            api = Some((a, addr));
        }
        let mut svc = fleet::start_processes(&w, &hosts).await?;
        // Past the start-up bursts and the connections they opened (a
        // worker closes a connection idle for one and a half heartbeats,
        // 15 s), into the steady beat.
        tokio::time::sleep(Duration::from_secs(40)).await;
        let conns = fleet::connections(&pool, "shutoff-worker").await?;
        let rate = fleet::rate_over(&pool, Duration::from_secs(30)).await?;
        figures.footprint_workers = n;
        figures.idle_connections_per_host = conns as f64 / n as f64;
        // Direct, the API is not running yet. Via the conductor, every
        // statement of the database is counted against the hosts, the
        // API's own passes too: an upper bound. Taking away the API's rate
        // measured alone, before the workers, went below zero once the
        // beats were batched (3.5 statements/s with the workers against 5.3
        // for the API alone): the API's own passes vary more than 60 hosts'
        // batched beats add.
        figures.idle_statements_per_host_s = rate / n as f64;
        let (api, addr) = match api {
            Some(pair) => {
                figures.api_idle_statements_s = api_alone;
                pair
            }
            None => {
                let (api, addr) = services::start_api(&w).await?;
                tokio::time::sleep(Duration::from_secs(3)).await;
                let with_api = fleet::rate_over(&pool, Duration::from_secs(20)).await?;
                figures.api_idle_statements_s = (with_api - rate).max(0.0);
                (api, addr)
            }
        };
        eprintln!(
            "footprint: idle {conns} connections and {rate:.1} statements/s for {n} hosts; the API's own {:.1}/s",
            figures.api_idle_statements_s
        );
        let sampling = tokio_util::sync::CancellationToken::new();
        let sampler = {
            let (pool, stop) = (pool.clone(), sampling.clone());
            tokio::spawn(async move {
                let (mut workers, mut api) = (0i64, 0i64);
                while !stop.is_cancelled() {
                    if let (Ok(w), Ok(a)) = (
                        fleet::connections(&pool, "shutoff-worker").await,
                        fleet::connections(&pool, "shutoff-api").await,
                    ) {
                        workers = workers.max(w);
                        api = api.max(a);
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                (workers, api)
            })
        };
        let c0 = fleet::commits(&pool).await?;
        let t0 = Instant::now();
        let outcome = load::run(
            load::Target {
                api: addr,
                project: project_f.to_string(),
                tokens,
                servers,
            },
            None,
        )
        .await;
        let done = wait_finished(&pool, &project_f, outcome.accepted).await;
        let elapsed = t0.elapsed().as_secs_f64();
        let c1 = fleet::commits(&pool).await?;
        sampling.cancel();
        let (max_workers, max_api) = sampler.await.unwrap_or((0, 0));
        svc.push(api);
        stop_all(svc).await;
        let done = done?;
        figures.load_max_worker_connections = max_workers;
        figures.api_connections = max_api;
        figures.load_statements_per_s = (c1 - c0) as f64 / elapsed;
        figures.load_stops_per_s =
            done.succeeded as f64 / seconds(done.first_created, done.last_finished);
        eprintln!(
            "footprint: under load at most {max_workers} worker and {max_api} API connections, {:.0} statements/s",
            figures.load_statements_per_s
        );
        pool.close().await;
        let _ = private_pg.stop().await;
        drop(pg_work);
    }
    if args.runs("slow") {
        // 7. Slow power-offs through ONE worker.
        let (url, pool, _) = phase_database(args, run_id, "slow", args.history).await?;
        let hypervisor = format!("fake://?delay_ms={}", args.slow_delay_ms);
        let (project_s, tokens, servers) = project(
            &pool,
            "slow",
            args.connections,
            args.slow_stops,
            &hypervisor,
        )
        .await?;
        let w = wiring("slow", &url);
        let worker = services::start_worker(&w, "bench-slow-0").await?;
        let (api, addr) = services::start_api(&w).await?;
        let start = Utc::now();
        let outcome = load::run(
            load::Target {
                api: addr,
                project: project_s.to_string(),
                tokens,
                servers,
            },
            None,
        )
        .await;
        let done = wait_finished(&pool, &project_s, outcome.accepted).await;
        figures.worker_peak_rss_mb = worker.peak_rss_mb();
        stop_all(vec![api, worker]).await;
        let done = done?;
        figures.slow_stops = outcome.accepted;
        figures.slow_succeeded = done.succeeded as usize;
        figures.slow_e2e_seconds = seconds(start, done.last_finished);
        eprintln!("slow: {:.1} s", figures.slow_e2e_seconds);
        pool.close().await;
    }
    if args.runs("ceiling") {
        let tps = ceiling(args, run_id, "last").await?;
        figures.pg_ceiling_runs.push(tps);
    }
    Ok(())
}

/// What one accept run measured.
struct Accepted {
    per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    refused: usize,
    api_peak_rss_mb: f64,
    /// Pages read from outside shared_buffers per accepted stop, by table
    /// and index, most first.
    blocks_read: Vec<(String, f64)>,
}

/// The accept run: the API alone for `--accept-secs` under `--connections`
/// connections, on a project `name` of its own in `pool`'s database. Its
/// jobs stay queued (no worker).
async fn accept_phase(
    args: &Args,
    w: &Wiring,
    pool: &PgPool,
    name: &str,
) -> anyhow::Result<Accepted> {
    let expected = (args.accept_secs as usize) * 12_000;
    let (project_a, tokens, servers) =
        project(pool, name, args.connections, expected, "fake://").await?;
    let blocks_before = history::BlocksRead::read(pool).await?;
    let (api, addr) = services::start_api(w).await?;
    let outcome = load::run(
        load::Target {
            api: addr,
            project: project_a.to_string(),
            tokens,
            servers,
        },
        Some(Duration::from_secs(args.accept_secs)),
    )
    .await;
    let api_peak_rss_mb = api.peak_rss_mb();
    api.stop().await;
    let blocks_read = blocks_before
        .report_since(pool, outcome.accepted, name)
        .await?;
    if outcome.ran_out {
        eprintln!(
            "shutoff-bench: {name} run ran out of servers before {} s",
            args.accept_secs
        );
    }
    let jobs: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM instances i JOIN instance_actions ia ON ia.instance_uuid = i.uuid JOIN jobs j ON j.action_id = ia.id
          WHERE i.project_id = $1",
    )
    .bind(project_a.as_str())
    .fetch_one(pool)
    .await?;
    if jobs as usize != outcome.accepted {
        bail!(
            "{name} run: {} answered 202 but {jobs} jobs exist",
            outcome.accepted
        );
    }
    eprintln!(
        "{name} latency: p90 {:.1} p95 {:.1} p99 {:.1} p99.9 {:.1} max {:.1} ms",
        outcome.percentile_ms(90.0),
        outcome.percentile_ms(95.0),
        outcome.percentile_ms(99.0),
        outcome.percentile_ms(99.9),
        outcome.percentile_ms(100.0)
    );
    let timeline: Vec<String> = outcome
        .timeline(50.0)
        .iter()
        .map(|(n, slow, max)| format!("{n}/{slow}/{max:.0}"))
        .collect();
    eprintln!(
        "{name} per second (answers/over 50 ms/max ms): {}",
        timeline.join(" ")
    );
    let a = Accepted {
        per_s: outcome.per_second(),
        p50_ms: outcome.percentile_ms(50.0),
        p99_ms: outcome.percentile_ms(99.0),
        refused: outcome.refused + outcome.errors,
        api_peak_rss_mb,
        blocks_read,
    };
    eprintln!(
        "{name}: {:.0}/s p50 {:.1} ms p99 {:.1} ms",
        a.per_s, a.p50_ms, a.p99_ms
    );
    Ok(a)
}

/// What one end-to-end run measured.
struct EndToEnd {
    per_s: f64,
    stops: usize,
    succeeded: usize,
    seconds: f64,
    accept_per_s: f64,
    commits_per_stop: f64,
    cores: fleet::Cores,
    /// Pages read from outside shared_buffers per stop, most first.
    blocks_read: Vec<(String, f64)>,
}

/// `--e2e-stops` stops through the API and `--e2e-workers` workers
/// (simulated hypervisor, no delay), on a project `name` of its own.
async fn e2e_phase(args: &Args, w: &Wiring, pool: &PgPool, name: &str) -> anyhow::Result<EndToEnd> {
    let (project_e, tokens, servers) =
        project(pool, name, args.connections, args.e2e_stops, "fake://").await?;
    let mut svc = Vec::new();
    for i in 0..args.e2e_workers {
        svc.push(services::start_worker(w, &format!("bench-{name}-{i}")).await?);
    }
    let (api, addr) = services::start_api(w).await?;
    svc.push(api);
    let c0 = fleet::commits(pool).await?;
    let blocks_before = history::BlocksRead::read(pool).await?;
    // The machine's RabbitMQ node is the one whose home is /var/lib/rabbitmq.
    let cpu = fleet::CpuWatch::start("/var/lib/rabbitmq");
    let outcome = load::run(
        load::Target {
            api: addr,
            project: project_e.to_string(),
            tokens,
            servers,
        },
        None,
    )
    .await;
    let done = wait_finished(pool, &project_e, outcome.accepted).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let c1 = fleet::commits(pool).await?;
    // Read while the services run: the CPU of a process (or a PostgreSQL
    // backend) that has exited is no longer in /proc.
    let cores = cpu.cores();
    stop_all(svc).await;
    let done = done?;
    let blocks_read = blocks_before
        .report_since(pool, outcome.accepted, name)
        .await?;
    eprintln!(
        "{name} per second (accepted/claimed/finished): {}",
        e2e_timeline(pool, &project_e).await?
    );
    let seconds = seconds(done.first_created, done.last_finished);
    let e = EndToEnd {
        per_s: done.succeeded as f64 / seconds,
        stops: outcome.accepted,
        succeeded: done.succeeded as usize,
        seconds,
        accept_per_s: outcome.per_second(),
        commits_per_stop: (c1 - c0) as f64 / outcome.accepted.max(1) as f64,
        cores,
        blocks_read,
    };
    eprintln!("{name}: {:.0}/s", e.per_s);
    Ok(e)
}

/// The databases of the accept and e2e phases at `--history` (URL and
/// pool), where those phases ran.
struct Small<'a> {
    accept: Option<&'a (String, PgPool)>,
    e2e: Option<&'a (String, PgPool)>,
}

/// The history phase, on the database seeded with `--history-large` stops:
/// end to end first (the accept run's queued jobs would be the workers'
/// backlog), the relay's and the rescuer's passes, the accept run; then the
/// e2e and accept runs at `--history` again, so that each run on the large
/// history sits between two on the small one (their mean is the ratio's
/// base, and a drift of this machine's speed over the minutes between them
/// falls out); then a second accept run beside a real `shutoff-admin prune`.
async fn history_phase(
    args: &Args,
    bin_dir: &std::path::Path,
    wiring: &impl Fn(&str, &str) -> Wiring,
    (url, pool): (&str, &PgPool),
    small: Small<'_>,
    figures: &mut Figures,
) -> anyhow::Result<()> {
    let n = figures.history.n;
    let e = e2e_phase(args, &wiring("history-e2e", url), pool, "history-e2e").await?;
    figures.history.e2e_per_s = e.per_s;
    figures.history.e2e_blocks_read_large = e.blocks_read;
    let passes = history::time_passes(pool, args.pass_runs).await?;
    eprintln!("passes at {n}: {passes:?}");
    figures.history.passes_large = passes;
    let plans = history::explain_passes(pool).await?;
    eprintln!("plans of the passes at {n}:\n{plans}");
    figures.history.plans = plans;
    settle(pool).await;
    let a = accept_phase(args, &wiring("history-accept", url), pool, "history-accept").await?;
    figures.history.accept_per_s = a.per_s;
    figures.history.accept_p99_ms = a.p99_ms;
    figures.history.blocks_read_large = a.blocks_read;
    // The accept run's stops finished, as a worker would have: the next run
    // starts, like the first, without a backlog of queued jobs.
    // Each run's set-up ends with a checkpoint (`project`), so the runs
    // below need no settling of their own.
    finish_queued(pool).await?;
    if let Some((small_url, small_pool)) = small.e2e {
        let w = wiring("e2e-again", small_url);
        let e = e2e_phase(args, &w, small_pool, "e2e-again").await?;
        figures.history.e2e_again_per_s = e.per_s;
    }
    if let Some((small_url, small_pool)) = small.accept {
        finish_queued(small_pool).await?;
        let w = wiring("accept-again", small_url);
        let a = accept_phase(args, &w, small_pool, "accept-again").await?;
        figures.history.accept_again_per_s = a.per_s;
    }
    settle(pool).await;
    let w = wiring("history-prune", url);
    let prune = history::Prune::start(
        bin_dir,
        url,
        &args.prune_older_than,
        &w.log_dir.join("prune.log"),
    )?;
    let beside = accept_phase(args, &w, pool, "history-accept-pruning").await;
    let pruned = prune.finish().await?;
    let beside = beside?;
    figures.history.accept_pruning_per_s = beside.per_s;
    figures.history.accept_pruning_p99_ms = beside.p99_ms;
    figures.history.prune = pruned;
    eprintln!(
        "prune beside accept: {} stops, {} rows in {:.1} s ({:.0} rows/s); accept {:.0}/s against {:.0}/s before",
        pruned.jobs,
        pruned.rows,
        pruned.seconds,
        pruned.rows_per_s(),
        beside.per_s,
        a.per_s
    );
    Ok(())
}

/// Finishes every queued job (and its instance) as a worker would record it.
async fn finish_queued(pool: &PgPool) -> anyhow::Result<()> {
    // Separate statements: a multi-statement string is one transaction,
    // which VACUUM refuses.
    for sql in [
        "UPDATE instances SET task_state = NULL, vm_state = 'stopped', power_state = 4
          WHERE task_state IS NOT NULL",
        "UPDATE jobs SET state = 'succeeded', attempts = 1, started_at = now(),
                finished_at = now(), updated_at = now(), worker = 'bench'
          WHERE finished_at IS NULL",
        "VACUUM ANALYZE jobs, instances",
    ] {
        sqlx::raw_sql(sql).execute(pool).await?;
    }
    Ok(())
}

/// A fresh, migrated database for one phase, so that no phase inherits
/// another's jobs (the accept run leaves tens of thousands of queued jobs
/// that the next phase's relay would walk). Dropped at the end of the run.
///
/// It is not empty: like any deployment past its first hour it holds a
/// history of finished stops, analyzed. On empty job tables every
/// connection's prepared statements get generic plans that scan the whole
/// (then tiny) table, and PostgreSQL keeps them while the table grows until
/// it is analyzed again; that measures a fresh deployment's first minute
/// (with autovacuum) or forever (without it, as on this machine), not the
/// service.
async fn phase_database(
    args: &Args,
    run_id: &str,
    phase: &str,
    history: i64,
) -> anyhow::Result<(String, PgPool, Duration)> {
    let url = database_url(&args.database_url, &format!("{run_id}_{phase}"))?;
    store::create_and_migrate(&url.parse()?).await?;
    let pool = connect(&url).await?;
    let took = seed_history(&pool, history).await?;
    eprintln!(
        "{phase}: seeded {history} finished stops of history in {:.1} s",
        took.as_secs_f64()
    );
    Ok((url, pool, took))
}

/// Seeds `n` finished stops of history: see [`history::seed`].
pub(crate) async fn seed_history(pool: &PgPool, n: i64) -> anyhow::Result<Duration> {
    history::seed(pool, n).await
}

/// The first SIGINT or SIGTERM, by name.
async fn interrupted() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut int), Ok(mut term)) => tokio::select! {
            _ = int.recv() => "SIGINT",
            _ = term.recv() => "SIGTERM",
        },
        // Without handlers the run cannot be interrupted cleanly; it runs on.
        _ => std::future::pending().await,
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bin_dir = services::build_binaries().await?;
    let run_id = format!("shutoff_bench_{}", std::process::id());
    let vhost = Vhost::create(&run_id.replace('_', "-")).await;
    let mut figures = Figures::new(args.connections, args.ceiling_clients);

    // Ctrl-C or SIGTERM ends the run, but not before its databases and vhost
    // are removed (an interrupted run used to leave them behind: gigabytes
    // after a large history). Dropping the run kills its services and pgbench.
    let result = tokio::select! {
        r = run(&args, bin_dir, &vhost, &run_id, &mut figures) => r,
        signal = interrupted() => {
            eprintln!("shutoff-bench: {signal}; removing its databases and vhost");
            Err(anyhow::anyhow!("interrupted by {signal}"))
        }
    };
    for phase in [
        "history",
        "accept",
        "e2e",
        "latency",
        "hosts",
        "footprint",
        "slow",
        "ceiling",
    ] {
        let name = format!("{run_id}_{phase}");
        if phase == "history" && args.keep_history && args.history_from.is_none() {
            eprintln!("shutoff-bench: kept the history database {name} (--keep-history)");
            continue;
        }
        drop_database(&args.database_url, &name).await;
    }
    vhost.remove().await;
    result?;

    figures.finish();
    figures.print();
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&figures.to_json())?)
            .with_context(|| format!("cannot write {}", path.display()))?;
        println!("figures written to {}", path.display());
    }
    Ok(())
}
