//! The fleet phases: stops spread over many hosts, each served by its own
//! worker, and what a worker on every host costs PostgreSQL.
//!
//! - `hosts`: 1,000 hosts, each with its own queue and one worker (run in
//!   this process, one `shutoff_worker::Worker` per host, the production
//!   code path: a worker serves exactly one host). By default
//!   (`--fleet-via conductor`) the workers hold no pool and the API's
//!   conductor answers their store calls; with `--fleet-via direct` they
//!   share one PostgreSQL pool here, which a real fleet would not. Reports the broker's memory
//!   before and after, how long a host's worker takes to start consuming,
//!   and the end-to-end rate against the single-host phase of the same run.
//!   `--fleet-via floor` runs no workers, only a consumer per host that acks
//!   ([`Floor`]): the bound that routing over per-host queues sets, with
//!   other kinds of queue ([`HostQueues`]) or HTTP calls per stop for
//!   comparison.
//! - `footprint`: 60 real `shutoff-worker` processes, one host each, with
//!   their default settings: PostgreSQL connections and statements per
//!   second per host, idle and under load, and the API's share.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::services::{self, Wiring};

/// A RabbitMQ node of the hosts phase's own (own ports, epmd, data dir,
/// from `shutoff-chaos`): a thousand hosts' queues and connections are
/// measured there, never on the machine's node, whose file-descriptor limit
/// they exhausted when tried (its Mnesia tables then failed and it had to be
/// restarted). Stopped and removed when dropped, also on Ctrl-C.
pub struct PrivateBroker {
    /// Declared before `_work` so the node stops before its files go.
    pub node: shutoff_chaos::rabbitmq::RabbitMq,
    _work: shutoff_chaos::workdir::WorkDir,
}

impl PrivateBroker {
    pub async fn start() -> anyhow::Result<PrivateBroker> {
        use shutoff_chaos::rabbitmq::{RabbitMq, RabbitPorts};
        let work = shutoff_chaos::workdir::WorkDir::create()?;
        let p = shutoff_chaos::ports::free_ports(3)?;
        let ports = RabbitPorts {
            amqp: p[0],
            dist: p[1],
            epmd: p[2],
        };
        let mut node = RabbitMq::init(
            &work,
            std::path::Path::new("/usr/lib/rabbitmq/bin"),
            std::path::Path::new("epmd"),
            ports,
        )
        .await
        .context("a private RabbitMQ node for the hosts phase")?;
        node.start().await?;
        Ok(PrivateBroker { node, _work: work })
    }

    /// What picks the node's Erlang VM out of /proc: its own data
    /// directory (the node name is not on its command line; RabbitMQ 3.10
    /// passes it in the environment).
    pub fn pattern(&self) -> String {
        self._work.path().to_string_lossy().into_owned()
    }

    /// Reductions over `window` by kind of Erlang process (its initial
    /// call), the busiest first: where the node's work goes.
    pub async fn profile(&self, window: Duration) -> String {
        let expr = PROFILE_ERL.replace("WINDOW", &window.as_millis().to_string());
        match self.node.ctl(&["eval", &expr]).await {
            Ok(out) => out.replace("\\n", "\n"),
            Err(e) => format!("(no profile: {e:#})"),
        }
    }

    /// The node's resident set in MiB.
    pub fn rss_mb(&self) -> Option<f64> {
        let pattern = self.pattern();
        for entry in std::fs::read_dir("/proc").ok()?.flatten() {
            let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            let cmdline = String::from_utf8_lossy(&cmdline);
            if cmdline.contains("beam.smp") && cmdline.contains(&pattern) {
                return status_kb(&entry.path().join("status"), "VmRSS:").map(|kb| kb / 1024.0);
            }
        }
        None
    }
}

const PROFILE_ERL: &str = include_str!("broker_profile.erl");

/// Raises this process's open-file limit to its hard limit (children, the
/// private broker among them, inherit it): a thousand workers hold three
/// thousand sockets here. Returns the limit in force.
pub fn raise_open_files() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        lim.rlim_cur = lim.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
            return 1024;
        }
    }
    lim.rlim_cur
}

/// The name of host `i` of a phase.
pub fn host_name(prefix: &str, i: usize) -> String {
    format!("{prefix}-{i:04}")
}

/// Puts the servers on `hosts` hosts, round robin.
pub async fn spread(
    pool: &PgPool,
    servers: &[Uuid],
    prefix: &str,
    hosts: usize,
) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE instances i SET host = $2 || '-' || lpad(((s.n - 1) % $3)::text, 4, '0')
           FROM unnest($1::uuid[]) WITH ORDINALITY AS s(uuid, n)
          WHERE i.uuid = s.uuid",
    )
    .bind(servers)
    .bind(prefix)
    .bind(hosts as i64)
    .execute(pool)
    .await?;
    sqlx::raw_sql("ANALYZE instances").execute(pool).await?;
    Ok(())
}

/// Workers of the `hosts` phase, in this process.
pub struct InProcess {
    stop: CancellationToken,
    handles: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
    /// Milliseconds from build to consuming, per worker.
    pub start_ms: Vec<f64>,
    pub all_up: Duration,
}

impl InProcess {
    /// One worker per host, started in waves of `wave`; each is up once its
    /// `/readyz` says it consumes.
    /// With no `pool`, each worker reaches PostgreSQL through the conductor.
    pub async fn start(
        w: &Wiring,
        pool: Option<&PgPool>,
        hosts: &[String],
        wave: usize,
    ) -> anyhow::Result<InProcess> {
        let stop = CancellationToken::new();
        let started = Instant::now();
        let mut handles = Vec::with_capacity(hosts.len());
        let mut start_ms = Vec::with_capacity(hosts.len());
        let client = reqwest::Client::new();
        for chunk in hosts.chunks(wave.max(1)) {
            let mut waiting = Vec::new();
            for h in chunk {
                let t0 = Instant::now();
                let mut settings = shutoff_worker::Settings::try_parse_from([
                    "shutoff-worker",
                    "--host",
                    h,
                    "--worker-id",
                    &format!("bench-{h}"),
                    "--health-listen",
                    "127.0.0.1:0",
                    "--database-url",
                    &w.database_url,
                    "--amqp-url",
                    &w.amqp_url,
                    "--queue-prefix",
                    &w.queue_prefix,
                ])
                .context("worker settings")?;
                let worker = match pool {
                    Some(pool) => {
                        shutoff_worker::Worker::build_with_pool(settings, pool.clone()).await?
                    }
                    None => {
                        settings.via_conductor = true;
                        shutoff_worker::Worker::build(settings).await?
                    }
                };
                let health = worker.health_addr();
                handles.push(tokio::spawn(worker.run_until_stopped(stop.clone())));
                waiting.push((t0, health));
            }
            for (t0, health) in waiting {
                let url = format!("http://{health}/readyz");
                let deadline = Instant::now() + Duration::from_secs(120);
                loop {
                    if let Ok(r) = client.get(&url).send().await
                        && r.status().is_success()
                    {
                        break;
                    }
                    if Instant::now() > deadline {
                        bail!("a worker at {health} never started consuming");
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                start_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
            }
        }
        Ok(InProcess {
            stop,
            handles,
            start_ms,
            all_up: started.elapsed(),
        })
    }

    pub async fn stop(self) {
        self.stop.cancel();
        for h in self.handles {
            let _ = tokio::time::timeout(Duration::from_secs(60), h).await;
        }
    }
}

/// The kind of queue each host gets in the floor (`--fleet-queues`). Only
/// `quorum` is what shutoff declares; the others are the alternatives the
/// choice was made against, declared here by the bench alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HostQueues {
    /// shutoff's own: `Topology::declare_host` (quorum, delivery limit,
    /// at-least-once dead-lettering).
    Quorum,
    /// Durable classic queues, version 2, dead-lettering as shutoff's
    /// (no delivery limit; replicated only by deprecated mirroring).
    Classic,
    /// A stream per host. A stream keeps what was acked (an ack is flow
    /// control only) and AMQP 0-9-1 keeps no consumer offset: a worker
    /// would have to store its own to not redo stops.
    Stream,
}

impl HostQueues {
    pub fn name(self) -> &'static str {
        match self {
            HostQueues::Quorum => "quorum",
            HostQueues::Classic => "classic",
            HostQueues::Stream => "stream",
        }
    }

    /// Declares `host`'s queue of this kind.
    async fn declare(
        self,
        channel: &lapin::Channel,
        topology: &shutoff_core::broker::Topology,
        host: &shutoff_core::ids::HostName,
    ) -> anyhow::Result<()> {
        use lapin::options::QueueDeclareOptions;
        use lapin::types::{AMQPValue, FieldTable, LongString};
        let text = |s: &str| AMQPValue::LongString(LongString::from(s));
        let mut args = FieldTable::default();
        match self {
            HostQueues::Quorum => return Ok(topology.declare_host(channel, host).await?),
            HostQueues::Classic => {
                args.insert("x-queue-version".into(), AMQPValue::LongLongInt(2));
                args.insert("x-dead-letter-exchange".into(), text(""));
                args.insert(
                    "x-dead-letter-routing-key".into(),
                    text(&topology.dead_queue()),
                );
            }
            HostQueues::Stream => {
                args.insert("x-queue-type".into(), text("stream"));
            }
        }
        channel
            .queue_declare(
                topology.host_queue(host).as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                args,
            )
            .await?;
        Ok(())
    }

    /// The consumer's arguments: a stream is read from its first message
    /// (a queue's consumer takes what is there anyway).
    fn consume_args(self) -> lapin::types::FieldTable {
        use lapin::types::{AMQPValue, FieldTable, LongString};
        let mut args = FieldTable::default();
        if self == HostQueues::Stream {
            args.insert(
                "x-stream-offset".into(),
                AMQPValue::LongString(LongString::from("first")),
            );
        }
        args
    }
}

/// The least a stop can cost once it goes through per-host queues: each
/// host's queue consumed on a connection of its own with the worker's
/// prefetch, as a worker does, and every job acked at once, nothing claimed
/// or recorded (`--fleet-via floor`). Not a way to run a fleet: it tells
/// how much of the fleet's cost the broker's routing over 1,000 queues is,
/// whatever the store calls cost.
pub struct Floor {
    stop: CancellationToken,
    handles: Vec<tokio::task::JoinHandle<()>>,
    /// Jobs delivered and acked, jobs for another host, HTTP calls that
    /// got no answer, the last ack.
    delivered: Arc<AtomicU64>,
    other_host: Arc<AtomicU64>,
    failed_calls: Arc<AtomicU64>,
    last: Arc<std::sync::Mutex<Option<Instant>>>,
    start_ms: Vec<f64>,
    all_up: Duration,
}

impl Floor {
    /// With `calls` > 0, each job first makes that many HTTP round trips
    /// to the API's `/healthz` at `api`, each host on a client (and
    /// connection) of its own: stand-ins for a worker's claim and success
    /// sent over HTTP, the least such calls could cost (a real call also
    /// carries a body, a credential and a statement).
    pub async fn start(
        w: &Wiring,
        hosts: &[String],
        queues: HostQueues,
        calls: u32,
        api: &str,
    ) -> anyhow::Result<Floor> {
        use futures::StreamExt;
        use lapin::options::{BasicAckOptions, BasicConsumeOptions};
        let stop = CancellationToken::new();
        let started = Instant::now();
        let delivered = Arc::new(AtomicU64::new(0));
        let other_host = Arc::new(AtomicU64::new(0));
        let failed_calls = Arc::new(AtomicU64::new(0));
        let last = Arc::new(std::sync::Mutex::new(None));
        let mut handles = Vec::with_capacity(hosts.len());
        let mut start_ms = Vec::with_capacity(hosts.len());
        for h in hosts {
            let t0 = Instant::now();
            // The worker's own settings, so the queue, its arguments and
            // the prefetch are the production ones.
            let settings = shutoff_worker::Settings::try_parse_from([
                "shutoff-worker",
                "--host",
                h,
                "--amqp-url",
                &w.amqp_url,
                "--queue-prefix",
                &w.queue_prefix,
            ])
            .context("worker settings")?;
            let host = settings.host()?;
            let topology = settings.common.topology();
            let c = shutoff_core::broker::connect(
                &settings.common.amqp_url,
                &settings.common.amqp_tls,
                0,
                &format!("bench floor {h}"),
                &topology,
                Duration::from_secs(30),
            )
            .await?;
            queues.declare(&c.channel, &topology, &host).await?;
            shutoff_core::broker::set_prefetch(&c.channel, settings.prefetch).await?;
            let mut consumer = c
                .channel
                .basic_consume(
                    topology.host_queue(&host).as_str().into(),
                    "".into(),
                    BasicConsumeOptions::default(),
                    queues.consume_args(),
                )
                .await?;
            start_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
            let (stop, delivered, other_host, failed_calls, last) = (
                stop.clone(),
                delivered.clone(),
                other_host.clone(),
                failed_calls.clone(),
                last.clone(),
            );
            // Only when calls are asked for: a client builds its own TLS
            // set-up, which 1,000 hosts would otherwise pay for nothing.
            let http = (calls > 0).then(reqwest::Client::new);
            let healthz = format!("http://{api}/healthz");
            handles.push(tokio::spawn(async move {
                let _conn = c.conn;
                loop {
                    let d = tokio::select! {
                        _ = stop.cancelled() => break,
                        d = consumer.next() => d,
                    };
                    let Some(Ok(d)) = d else { break };
                    match shutoff_core::message::StopJob::from_bytes(&d.data) {
                        Ok(job) if job.host == host => {}
                        _ => {
                            other_host.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    for _ in 0..calls {
                        let Some(http) = &http else { break };
                        let answered = match http.get(&healthz).send().await {
                            Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                            Err(_) => false,
                        };
                        if !answered {
                            failed_calls.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    if d.ack(BasicAckOptions::default()).await.is_ok() {
                        delivered.fetch_add(1, Ordering::Relaxed);
                        *last.lock().expect("not poisoned") = Some(Instant::now());
                    }
                }
            }));
        }
        Ok(Floor {
            stop,
            handles,
            delivered,
            other_host,
            failed_calls,
            last,
            start_ms,
            all_up: started.elapsed(),
        })
    }

    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    pub fn other_host(&self) -> u64 {
        self.other_host.load(Ordering::Relaxed)
    }

    pub fn failed_calls(&self) -> u64 {
        self.failed_calls.load(Ordering::Relaxed)
    }

    /// Waits until `n` jobs were acked (at most `limit`); the time of the last.
    pub async fn wait_delivered(&self, n: u64, limit: Duration) -> Option<Instant> {
        let deadline = Instant::now() + limit;
        while self.delivered.load(Ordering::Relaxed) < n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        *self.last.lock().expect("not poisoned")
    }

    pub async fn stop(self) {
        self.stop.cancel();
        for h in self.handles {
            let _ = tokio::time::timeout(Duration::from_secs(10), h).await;
        }
    }
}

/// What consumes the hosts phase's queues.
pub enum Served {
    Workers(InProcess),
    Floor(Floor),
}

impl Served {
    /// Milliseconds from start to consuming, per host.
    pub fn start_ms(&self) -> &[f64] {
        match self {
            Served::Workers(w) => &w.start_ms,
            Served::Floor(f) => &f.start_ms,
        }
    }

    pub fn all_up(&self) -> Duration {
        match self {
            Served::Workers(w) => w.all_up,
            Served::Floor(f) => f.all_up,
        }
    }

    pub async fn stop(self) {
        match self {
            Served::Workers(w) => w.stop().await,
            Served::Floor(f) => f.stop().await,
        }
    }
}

/// How the hosts phase's stops ended: recorded by the workers, or (the
/// floor) acked with nothing recorded.
pub enum End<F> {
    Workers(anyhow::Result<F>),
    Floor {
        delivered: u64,
        other_host: u64,
        failed_calls: u64,
        last: Option<Instant>,
    },
}

pub fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[((p / 100.0) * (v.len() - 1) as f64).round() as usize]
}

/// Transactions committed in the database so far (each of shutoff's
/// statements is its own transaction, but for the rescuer's and re-drive's
/// few two-statement ones).
pub async fn commits(pool: &PgPool) -> anyhow::Result<i64> {
    // The statistics of this backend's own transactions are flushed at most
    // once a second; a fresh snapshot is asked for, not the cached one.
    let mut conn = pool.acquire().await?;
    sqlx::raw_sql("SELECT pg_stat_clear_snapshot()")
        .execute(&mut *conn)
        .await?;
    Ok(sqlx::query_scalar(
        "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()",
    )
    .fetch_one(&mut *conn)
    .await?)
}

/// Connections to this database by `application_name`.
pub async fn connections(pool: &PgPool, app: &str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity
          WHERE datname = current_database() AND application_name = $1",
    )
    .bind(app)
    .fetch_one(pool)
    .await?)
}

/// Statements per second over `window`, measured by commits (the bench's
/// own two queries subtracted).
pub async fn rate_over(pool: &PgPool, window: Duration) -> anyhow::Result<f64> {
    let a = commits(pool).await?;
    tokio::time::sleep(window).await;
    // Counters reach pg_stat_database up to a second late.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let b = commits(pool).await?;
    Ok(((b - a - 2).max(0)) as f64 / (window.as_secs_f64() + 1.1))
}

/// The real worker processes of the `footprint` phase.
pub async fn start_processes(
    w: &Wiring,
    hosts: &[String],
) -> anyhow::Result<Vec<services::Service>> {
    let mut all = Vec::with_capacity(hosts.len());
    for h in hosts {
        all.push(services::spawn_worker_for(w, &format!("bench-{h}"), h)?);
    }
    for s in &all {
        s.wait_ready().await?;
    }
    Ok(all)
}

/// A `kB` field of a `/proc/<pid>/status` file (`VmRSS:`, `VmHWM:`).
pub fn status_kb(path: &std::path::Path, field: &str) -> Option<f64> {
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(field))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// User + system CPU seconds of a `/proc/<pid>/stat` file.
fn stat_cpu_seconds(path: &std::path::Path) -> f64 {
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    // The fields after the command name, which is in parentheses.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = (unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64).max(1.0);
    // utime and stime are fields 14 and 15 of stat(5), 12 and 13 here.
    (ticks(11) + ticks(12)) / hz
}

/// CPU seconds this process has used so far (user + system).
pub fn own_cpu_seconds() -> f64 {
    stat_cpu_seconds(std::path::Path::new("/proc/self/stat"))
}

/// CPU seconds used so far by the processes whose command line contains
/// each of `patterns` (the PostgreSQL server's processes: "postgres:"; a
/// RabbitMQ node's VM: its data directory), in one pass over /proc;
/// children count only as far as /proc counts them.
pub fn cpu_seconds_of<const N: usize>(patterns: [&str; N]) -> [f64; N] {
    let mut totals = [0.0; N];
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return totals;
    };
    for entry in dir.flatten() {
        let path = entry.path();
        let Ok(cmdline) = std::fs::read(path.join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline);
        let mut seconds = None;
        for (total, pattern) in totals.iter_mut().zip(patterns) {
            if cmdline.contains(pattern) {
                *total += *seconds.get_or_insert_with(|| stat_cpu_seconds(&path.join("stat")));
            }
        }
    }
    totals
}

/// Cores used over a stretch of wall time, by whom.
#[derive(Debug, Default, Clone, Copy)]
pub struct Cores {
    pub postgres: f64,
    pub broker: f64,
    /// The `shutoff-api` process (with `--via-conductor` workers, also
    /// their conductor).
    pub api: f64,
    /// The `shutoff-worker` processes (the single-host phases' workers;
    /// the hosts phase's run in the bench process).
    pub workers: f64,
    pub bench: f64,
}

impl Cores {
    pub fn total(&self) -> f64 {
        self.postgres + self.broker + self.api + self.workers + self.bench
    }
}

/// What picks the API's and the workers' processes out of /proc (their
/// binaries' paths).
const API: &str = "release/shutoff-api";
const WORKER: &str = "release/shutoff-worker";

pub struct CpuWatch {
    start: Instant,
    /// PostgreSQL, the broker, the API, the workers: as [`Self::patterns`].
    others: [f64; 4],
    bench: f64,
    broker_pattern: String,
}

impl CpuWatch {
    /// `broker_pattern` picks the RabbitMQ node's VM out of /proc.
    pub fn start(broker_pattern: &str) -> CpuWatch {
        let mut w = CpuWatch {
            start: Instant::now(),
            others: [0.0; 4],
            bench: own_cpu_seconds(),
            broker_pattern: broker_pattern.to_string(),
        };
        w.others = cpu_seconds_of(w.patterns());
        w
    }

    fn patterns(&self) -> [&str; 4] {
        ["postgres:", &self.broker_pattern, API, WORKER]
    }

    pub fn cores(&self) -> Cores {
        let wall = self.start.elapsed().as_secs_f64().max(1e-3);
        let now = cpu_seconds_of(self.patterns());
        let used = |i: usize| (now[i] - self.others[i]) / wall;
        Cores {
            postgres: used(0),
            broker: used(1),
            api: used(2),
            workers: used(3),
            bench: (own_cpu_seconds() - self.bench) / wall,
        }
    }
}
