//! The figures of one run: a table for people, one JSON object for machines.

use serde_json::{Value, json};

#[derive(Debug, Default)]
pub struct Figures {
    pub connections: usize,
    pub ceiling_clients: u32,
    pub pg_ceiling_tps: f64,
    /// Each pgbench run (first and last); `pg_ceiling_tps` is their mean.
    pub pg_ceiling_runs: Vec<f64>,
    pub accept_per_s: f64,
    pub accept_p50_ms: f64,
    pub accept_p99_ms: f64,
    pub accept_refused: usize,
    pub api_peak_rss_mb: f64,
    pub e2e_stops: usize,
    pub e2e_succeeded: usize,
    pub e2e_seconds: f64,
    pub e2e_per_s: f64,
    pub e2e_accept_per_s: f64,
    /// PostgreSQL transactions per stop, end to end (every statement of the
    /// API, the workers and the bench's own polling): what batching saves.
    pub e2e_commits_per_stop: f64,
    pub hosts_commits_per_stop: f64,
    /// Cores used during the e2e and the hosts phases' load, by PostgreSQL,
    /// the broker and the bench process (in the hosts phase: the load
    /// generator plus the in-process workers; in e2e: the load generator).
    pub e2e_cores: crate::fleet::Cores,
    pub hosts_cores: crate::fleet::Cores,
    /// The same, with every host's worker consuming and no stops: what the
    /// fleet costs before it does anything.
    pub hosts_idle_cores: crate::fleet::Cores,
    /// PostgreSQL transactions per second meanwhile (heartbeats, mostly).
    pub hosts_idle_statements_per_s: f64,
    pub slow_stops: usize,
    pub slow_succeeded: usize,
    pub slow_e2e_seconds: f64,
    pub worker_peak_rss_mb: f64,
    /// The latency phase: its steady rate, and from each 202 to its
    /// `stopped` commit, p50 / p99 / p99.9 (0 where the stop was recorded
    /// before its 202 arrived).
    pub latency_rate_per_s: f64,
    pub latency_stops: usize,
    pub stop_latency_ms: [f64; 3],
    /// Where the time goes, p50 / p99: 202 to the worker's claim, and claim to
    /// the recorded stop.
    pub to_claim_ms: [f64; 2],
    pub claim_to_stopped_ms: [f64; 2],
    /// The hosts phase: stops over many hosts, a worker each, reaching
    /// PostgreSQL `hosts_via` (`conductor` or `direct`).
    pub hosts: usize,
    pub hosts_via: String,
    /// The kind of each host's queue (`quorum` but in the floor's
    /// comparisons).
    pub hosts_queues: String,
    /// The floor's HTTP round trips per job (`--fleet-floor-calls`).
    pub hosts_floor_calls: u32,
    pub hosts_stops: usize,
    pub hosts_succeeded: usize,
    pub hosts_e2e_per_s: f64,
    /// The API's accept rate while the hosts' stops went in.
    pub hosts_accept_per_s: f64,
    /// The hosts phase's own broker's RSS in MiB: before the hosts' workers
    /// started, with all of them consuming, and after the stops.
    pub broker_mb_before: Option<f64>,
    pub broker_mb_up: Option<f64>,
    pub broker_mb_after: Option<f64>,
    /// The bench process's peak resident set after the hosts phase (its
    /// 1,000 in-process workers and their connections, and the load).
    pub hosts_bench_peak_mb: Option<f64>,
    /// From building a host's worker to its consuming, p50 / p99 / max, and
    /// the time to bring every host up.
    pub host_start_ms: [f64; 3],
    pub hosts_all_up_s: f64,
    /// The footprint phase: real worker processes, one host each.
    pub footprint_workers: usize,
    pub idle_connections_per_host: f64,
    pub idle_statements_per_host_s: f64,
    pub api_idle_statements_s: f64,
    pub api_connections: i64,
    pub load_max_worker_connections: i64,
    pub load_statements_per_s: f64,
    pub load_stops_per_s: f64,
    /// The history phase (`--history-large`); its ratios are to the accept
    /// and e2e figures above, at `--history`.
    pub history: HistoryFigures,
}

#[derive(Debug, Default)]
pub struct HistoryFigures {
    /// `--history-large`; 0 when the phase did not run.
    pub n: i64,
    /// Seconds to seed the large history, and the e2e phase's 50,000.
    pub seed_large_s: f64,
    pub seed_small_s: f64,
    pub accept_per_s: f64,
    pub accept_p99_ms: f64,
    pub e2e_per_s: f64,
    /// The relay's and the rescuer's passes at `--history` (in the e2e
    /// phase's database) and at `--history-large`, after their e2e runs.
    pub passes_small: crate::history::Passes,
    pub passes_large: crate::history::Passes,
    /// EXPLAIN (ANALYZE, BUFFERS) of the passes' statements at the large size.
    pub plans: String,
    /// The second accept run, beside `shutoff-admin prune`, and the prune.
    pub accept_pruning_per_s: f64,
    pub accept_pruning_p99_ms: f64,
    pub prune: crate::history::PruneRun,
    /// The accept and e2e runs at `--history` again, after the ones at
    /// `--history-large` (0 where they did not run).
    pub accept_again_per_s: f64,
    pub e2e_again_per_s: f64,
    /// Pages read from outside shared_buffers per accepted stop, by table
    /// and index, in the accept runs at `--history` and `--history-large`.
    pub blocks_read_small: Vec<(String, f64)>,
    pub blocks_read_large: Vec<(String, f64)>,
    /// The same per stop of the e2e runs.
    pub e2e_blocks_read_small: Vec<(String, f64)>,
    pub e2e_blocks_read_large: Vec<(String, f64)>,
}

/// The base of a ratio to the runs at `--history`: the mean of the run
/// before the large one and the run after it where both ran.
fn base(before: f64, after: f64) -> f64 {
    if after > 0.0 {
        (before + after) / 2.0
    } else {
        before
    }
}

/// The issues' targets, as (name, met); `None` where the phase that
/// measures it did not run (`--skip`), so a skipped phase never reads as met.
fn targets(f: &Figures) -> Vec<(&'static str, Option<bool>)> {
    let ceiling = !f.pg_ceiling_runs.is_empty();
    let accept = f.accept_per_s > 0.0;
    let e2e = f.e2e_stops > 0;
    let when = |ran: bool, met: bool| ran.then_some(met);
    vec![
        (
            "accept_per_s >= 0.7 x pg_ceiling_tps",
            when(ceiling && accept, f.accept_per_s >= 0.7 * f.pg_ceiling_tps),
        ),
        ("accept_p99_ms <= 50", when(accept, f.accept_p99_ms <= 50.0)),
        (
            "e2e_per_s >= 0.5 x pg_ceiling_tps",
            when(ceiling && e2e, f.e2e_per_s >= 0.5 * f.pg_ceiling_tps),
        ),
        (
            "slow_e2e_seconds <= 15",
            when(f.slow_stops > 0, f.slow_e2e_seconds <= 15.0),
        ),
        (
            "worker_peak_rss_mb <= 100",
            when(f.slow_stops > 0, f.worker_peak_rss_mb <= 100.0),
        ),
        (
            "api_peak_rss_mb <= 100",
            when(accept, f.api_peak_rss_mb <= 100.0),
        ),
        (
            "stop latency p99 <= 100 ms at half capacity",
            when(f.latency_stops > 0, f.stop_latency_ms[1] <= 100.0),
        ),
        (
            "hosts_e2e_per_s >= 0.8 x e2e_per_s (same run)",
            // The floor records no stop: it bounds the target, it does not meet it.
            when(
                f.hosts > 0 && e2e && f.hosts_via != "floor",
                f.hosts_e2e_per_s >= 0.8 * f.e2e_per_s,
            ),
        ),
        (
            "broker memory growth <= 1 GiB with all hosts",
            match (f.broker_mb_before, f.broker_mb_after.or(f.broker_mb_up)) {
                (Some(a), Some(b)) => Some(b - a <= 1024.0),
                _ => None,
            },
        ),
        (
            "idle: <= 1 connection per host",
            when(f.footprint_workers > 0, f.idle_connections_per_host <= 1.0),
        ),
        (
            "idle: <= 1 statement/s per host",
            when(f.footprint_workers > 0, f.idle_statements_per_host_s <= 1.0),
        ),
        (
            "history: accept_per_s >= 0.9 x at --history",
            when(
                f.history.n > 0 && accept,
                f.history.accept_per_s >= 0.9 * f.history.accept_base(f),
            ),
        ),
        (
            "history: e2e_per_s >= 0.9 x at --history",
            when(
                f.history.n > 0 && e2e,
                f.history.e2e_per_s >= 0.9 * f.history.e2e_base(f),
            ),
        ),
        (
            // As the issue counts them (pg_stat_statements' durations):
            // PostgreSQL's own execution time. The client's clock, printed
            // beside it, also holds whatever else this machine was doing.
            "history: relay and rescuer passes < 50 ms (in PostgreSQL)",
            when(
                f.history.n > 0,
                f.history.passes_large.in_server_ms[0][1] < 50.0
                    && f.history.passes_large.in_server_ms[1][1] < 50.0,
            ),
        ),
    ]
}

impl Figures {
    pub fn new(connections: usize, ceiling_clients: u32) -> Self {
        Figures {
            connections,
            ceiling_clients,
            ..Default::default()
        }
    }

    pub fn finish(&mut self) {
        if !self.pg_ceiling_runs.is_empty() {
            self.pg_ceiling_tps =
                self.pg_ceiling_runs.iter().sum::<f64>() / self.pg_ceiling_runs.len() as f64;
        }
    }

    pub fn print(&self) {
        let c = self.pg_ceiling_tps;
        println!(
            "shutoff-bench ({} cores)",
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
        println!(
            "  {:<22} {:>10.0} tx/s   pgbench, our acceptance statement, {} clients (runs: {})",
            "pg_ceiling_tps",
            c,
            self.ceiling_clients,
            self.pg_ceiling_runs
                .iter()
                .map(|t| format!("{t:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        println!(
            "  {:<22} {:>10.0} /s     {:.2} x ceiling, {} connections",
            "accept_per_s",
            self.accept_per_s,
            self.accept_per_s / c,
            self.connections
        );
        println!("  {:<22} {:>10.1} ms", "accept_p50_ms", self.accept_p50_ms);
        println!("  {:<22} {:>10.1} ms", "accept_p99_ms", self.accept_p99_ms);
        println!(
            "  {:<22} {:>10.0} /s     {:.2} x ceiling, {} of {} stopped in {:.1} s",
            "e2e_per_s",
            self.e2e_per_s,
            self.e2e_per_s / c,
            self.e2e_succeeded,
            self.e2e_stops,
            self.e2e_seconds
        );
        println!(
            "  {:<22} {:>10.1} s      {} of {} stopped, one worker, 2 s per power-off",
            "slow_e2e_seconds", self.slow_e2e_seconds, self.slow_succeeded, self.slow_stops
        );
        println!(
            "  {:<22} {:>10.1} MiB",
            "worker_peak_rss_mb", self.worker_peak_rss_mb
        );
        println!(
            "  {:<22} {:>10.1} MiB",
            "api_peak_rss_mb", self.api_peak_rss_mb
        );
        if self.latency_stops > 0 {
            println!(
                "  {:<22} {:>10.1} ms     p99 (p50 {:.1}, p99.9 {:.1}), 202 to stopped, {} stops at {:.0}/s",
                "stop_latency_p99_ms",
                self.stop_latency_ms[1],
                self.stop_latency_ms[0],
                self.stop_latency_ms[2],
                self.latency_stops,
                self.latency_rate_per_s
            );
            println!(
                "  {:<22} {:>10}        202 to claim p50/p99 {:.1}/{:.1} ms, claim to stopped {:.1}/{:.1} ms",
                "",
                "",
                self.to_claim_ms[0],
                self.to_claim_ms[1],
                self.claim_to_stopped_ms[0],
                self.claim_to_stopped_ms[1]
            );
        }
        if self.hosts > 0 {
            let mb = |m: Option<f64>| m.map_or("?".to_string(), |rss| format!("{rss:.0} MiB RSS"));
            let outcome = if self.hosts_via == "floor" {
                format!(
                    "delivered and acked after {} HTTP calls each, nothing recorded",
                    self.hosts_floor_calls
                )
            } else {
                "stopped".to_string()
            };
            println!(
                "  {:<22} {:>10.0} /s     {:.2} x single-host e2e, {} hosts (via {}, {} queues), {} of {} {outcome}",
                "hosts_e2e_per_s",
                self.hosts_e2e_per_s,
                self.hosts_e2e_per_s / self.e2e_per_s,
                self.hosts,
                self.hosts_via,
                self.hosts_queues,
                self.hosts_succeeded,
                self.hosts_stops
            );
            println!(
                "  {:<22} {:>10.2}        PostgreSQL transactions per stop over {} hosts (single host: {:.2})",
                "hosts_commits_per_stop",
                self.hosts_commits_per_stop,
                self.hosts,
                self.e2e_commits_per_stop,
            );
            let c = |c: &crate::fleet::Cores| {
                format!(
                    "PostgreSQL {:.2}, RabbitMQ {:.2}, API {:.2}, workers {:.2}, bench process {:.2} (all {:.2})",
                    c.postgres,
                    c.broker,
                    c.api,
                    c.workers,
                    c.bench,
                    c.total()
                )
            };
            println!(
                "  {:<22} {:>10}        {} hosts: {}; one host: {}",
                "cores_under_load",
                "",
                self.hosts,
                c(&self.hosts_cores),
                c(&self.e2e_cores)
            );
            println!(
                "  {:<22} {:>10.2} ms     over {} hosts (one host: {:.2} ms), all the machine's cores counted",
                "cpu_ms_per_stop",
                self.hosts_cores.total() * 1e3 / self.hosts_e2e_per_s,
                self.hosts,
                self.e2e_cores.total() * 1e3 / self.e2e_per_s,
            );
            println!(
                "  {:<22} {:>10}        {} hosts consuming, no stops: {}; {:.1} PostgreSQL transactions/s",
                "cores_at_idle",
                "",
                self.hosts,
                c(&self.hosts_idle_cores),
                self.hosts_idle_statements_per_s,
            );
            println!(
                "  {:<22} {:>10.0} /s     {:.2} x the single-host e2e phase's accept rate",
                "hosts_accept_per_s",
                self.hosts_accept_per_s,
                self.hosts_accept_per_s / self.e2e_accept_per_s
            );
            println!(
                "  {:<22} {:>10}        before {}, all consuming {}, after the stops {}",
                "broker_memory",
                "",
                mb(self.broker_mb_before),
                mb(self.broker_mb_up),
                mb(self.broker_mb_after)
            );
            println!(
                "  {:<22} {:>10}        of the bench process, with the 1,000 workers' connections",
                "bench_peak_rss",
                mb(self.hosts_bench_peak_mb),
            );
            println!(
                "  {:<22} {:>10.0} ms     p50 (p99 {:.0}, max {:.0}); all {} hosts up in {:.1} s",
                "host_start_ms",
                self.host_start_ms[0],
                self.host_start_ms[1],
                self.host_start_ms[2],
                self.hosts,
                self.hosts_all_up_s
            );
        }
        if self.footprint_workers > 0 {
            let n = self.footprint_workers as f64;
            println!(
                "  {:<22} {:>10.2}        per host at idle ({} worker processes); x1000 hosts: {:.0}",
                "idle_connections",
                self.idle_connections_per_host,
                self.footprint_workers,
                self.idle_connections_per_host * 1000.0
            );
            println!(
                "  {:<22} {:>10.3} /s     per host at idle (via the conductor, the API's own counted too); x1000 hosts: {:.0}/s; the API's own {:.2}/s",
                "idle_statements",
                self.idle_statements_per_host_s,
                self.idle_statements_per_host_s * 1000.0,
                self.api_idle_statements_s
            );
            println!(
                "  {:<22} {:>10}        workers at most {} ({:.1} per host; x1000: {:.0}), API {}; {:.0} statements/s for {:.0} stops/s",
                "load_connections",
                "",
                self.load_max_worker_connections,
                self.load_max_worker_connections as f64 / n,
                self.load_max_worker_connections as f64 / n * 1000.0,
                self.api_connections,
                self.load_statements_per_s,
                self.load_stops_per_s
            );
        }
        self.history.print(self);
        for (name, met) in targets(self) {
            println!(
                "  target {:<40} {}",
                name,
                match met {
                    Some(true) => "met",
                    Some(false) => "NOT met",
                    None => "not run",
                }
            );
        }
    }

    pub fn to_json(&self) -> Value {
        let c = self.pg_ceiling_tps;
        json!({
            "pg_ceiling_tps": self.pg_ceiling_tps,
            "pg_ceiling_runs_tps": self.pg_ceiling_runs,
            "accept_per_s": self.accept_per_s,
            "accept_p50_ms": self.accept_p50_ms,
            "accept_p99_ms": self.accept_p99_ms,
            "accept_refused_or_failed": self.accept_refused,
            "e2e_per_s": self.e2e_per_s,
            "e2e_stops": self.e2e_stops,
            "e2e_succeeded": self.e2e_succeeded,
            "e2e_seconds": self.e2e_seconds,
            "e2e_accept_per_s": self.e2e_accept_per_s,
            "slow_e2e_seconds": self.slow_e2e_seconds,
            "slow_stops": self.slow_stops,
            "slow_succeeded": self.slow_succeeded,
            "worker_peak_rss_mb": self.worker_peak_rss_mb,
            "api_peak_rss_mb": self.api_peak_rss_mb,
            "latency_rate_per_s": self.latency_rate_per_s,
            "latency_stops": self.latency_stops,
            "stop_latency_p50_ms": self.stop_latency_ms[0],
            "stop_latency_p99_ms": self.stop_latency_ms[1],
            "stop_latency_p999_ms": self.stop_latency_ms[2],
            "to_claim_p50_p99_ms": self.to_claim_ms,
            "claim_to_stopped_p50_p99_ms": self.claim_to_stopped_ms,
            "hosts": self.hosts,
            "hosts_via": self.hosts_via,
            "hosts_queues": self.hosts_queues,
            "hosts_floor_calls": self.hosts_floor_calls,
            "hosts_stops": self.hosts_stops,
            "hosts_succeeded": self.hosts_succeeded,
            "hosts_e2e_per_s": self.hosts_e2e_per_s,
            "hosts_accept_per_s": self.hosts_accept_per_s,
            "e2e_commits_per_stop": self.e2e_commits_per_stop,
            "hosts_commits_per_stop": self.hosts_commits_per_stop,
            "hosts_cores_pg_broker_api_workers_bench": [self.hosts_cores.postgres, self.hosts_cores.broker, self.hosts_cores.api, self.hosts_cores.workers, self.hosts_cores.bench],
            "hosts_idle_statements_per_s": self.hosts_idle_statements_per_s,
            "hosts_idle_cores_pg_broker_api_workers_bench": [self.hosts_idle_cores.postgres, self.hosts_idle_cores.broker, self.hosts_idle_cores.api, self.hosts_idle_cores.workers, self.hosts_idle_cores.bench],
            "e2e_cores_pg_broker_api_workers_bench": [self.e2e_cores.postgres, self.e2e_cores.broker, self.e2e_cores.api, self.e2e_cores.workers, self.e2e_cores.bench],
            "cpu_ms_per_stop_hosts_single": [self.hosts_cores.total() * 1e3 / self.hosts_e2e_per_s, self.e2e_cores.total() * 1e3 / self.e2e_per_s],
            "hosts_e2e_ratio_to_single_host": self.hosts_e2e_per_s / self.e2e_per_s,
            "broker_rss_mb_before": self.broker_mb_before,
            "broker_rss_mb_all_consuming": self.broker_mb_up,
            "broker_rss_mb_after": self.broker_mb_after,
            "hosts_bench_peak_rss_mb": self.hosts_bench_peak_mb,
            "host_start_ms_p50_p99_max": self.host_start_ms,
            "hosts_all_up_s": self.hosts_all_up_s,
            "footprint_workers": self.footprint_workers,
            "idle_connections_per_host": self.idle_connections_per_host,
            "idle_statements_per_host_s": self.idle_statements_per_host_s,
            "api_idle_statements_s": self.api_idle_statements_s,
            "api_connections": self.api_connections,
            "load_max_worker_connections": self.load_max_worker_connections,
            "load_statements_per_s": self.load_statements_per_s,
            "load_stops_per_s": self.load_stops_per_s,
            "history": self.history.to_json(self),
            "accept_ratio": self.accept_per_s / c,
            "e2e_ratio": self.e2e_per_s / c,
            "connections": self.connections,
            "ceiling_clients": self.ceiling_clients,
            "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
            "targets": targets(self).into_iter().map(|(n, m)| (n.to_string(), m.map_or(Value::Null, Value::Bool))).collect::<serde_json::Map<_, _>>(),
        })
    }
}

impl HistoryFigures {
    pub fn accept_base(&self, f: &Figures) -> f64 {
        base(f.accept_per_s, self.accept_again_per_s)
    }

    pub fn e2e_base(&self, f: &Figures) -> f64 {
        base(f.e2e_per_s, self.e2e_again_per_s)
    }

    fn print(&self, f: &Figures) {
        if self.n == 0 {
            return;
        }
        let h = "--history";
        println!(
            "  {:<22} {:>10.1} s      {} finished stops seeded (the e2e phase's {} in {:.1} s)",
            "history_seed_s", self.seed_large_s, self.n, h, self.seed_small_s
        );
        println!(
            "  {:<22} {:>10.0} /s     {:.2} x the accept runs at {h} before and after it ({:.0} and {:.0} /s)",
            "history_accept_per_s",
            self.accept_per_s,
            self.accept_per_s / self.accept_base(f),
            f.accept_per_s,
            self.accept_again_per_s
        );
        println!(
            "  {:<22} {:>10.1} ms     {:.2} x accept_p99_ms at {h}",
            "history_accept_p99_ms",
            self.accept_p99_ms,
            self.accept_p99_ms / f.accept_p99_ms
        );
        println!(
            "  {:<22} {:>10.0} /s     {:.2} x the e2e runs at {h} before and after it ({:.0} and {:.0} /s)",
            "history_e2e_per_s",
            self.e2e_per_s,
            self.e2e_per_s / self.e2e_base(f),
            f.e2e_per_s,
            self.e2e_again_per_s
        );
        let shown = |v: &[(String, f64)]| crate::history::show_blocks(v, 6);
        for (what, large, small) in [
            (
                "accepted stop",
                &self.blocks_read_large,
                &self.blocks_read_small,
            ),
            (
                "e2e stop",
                &self.e2e_blocks_read_large,
                &self.e2e_blocks_read_small,
            ),
        ] {
            println!(
                "  {:<22} {:>10} pages  read from outside shared_buffers per {what} at {}: {}",
                "history_blocks_read",
                "",
                self.n,
                shown(large)
            );
            println!("  {:<22} {:>10} pages  at {h}: {}", "", "", shown(small));
        }
        for (i, name) in ["relay_pass_ms", "rescuer_pass_ms"].into_iter().enumerate() {
            let (small, large) = if i == 0 {
                (self.passes_small.relay_ms, self.passes_large.relay_ms)
            } else {
                (self.passes_small.rescuer_ms, self.passes_large.rescuer_ms)
            };
            let (small_pg, large_pg) = (
                self.passes_small.in_server_ms[i],
                self.passes_large.in_server_ms[i],
            );
            let slow = [
                self.passes_large.over_20ms[i],
                self.passes_small.over_20ms[i],
            ];
            println!(
                "  {:<22} {:>10.2} ms     p50 (max {:.2}) of {} passes at {} in PostgreSQL; at {h}: p50 {:.2}, max {:.2}",
                name,
                large_pg[0],
                large_pg[1],
                self.passes_large.runs,
                self.n,
                small_pg[0],
                small_pg[1]
            );
            println!(
                "  {:<22} {:>10.2} ms     p50 (max {:.2}, {} over 20 ms) by the client's clock; at {h}: p50 {:.2}, max {:.2}, {} over 20 ms",
                "", large[0], large[1], slow[0], small[0], small[1], slow[1]
            );
        }
        println!(
            "  {:<22} {:>10.0} /s     {:.2} x the accept run at the same size, beside shutoff-admin prune (p99 {:.1} ms)",
            "accept_pruning_per_s",
            self.accept_pruning_per_s,
            self.accept_pruning_per_s / self.accept_per_s,
            self.accept_pruning_p99_ms
        );
        println!(
            "  {:<22} {:>10.0} rows/s {} stops, {} rows in {:.1} s",
            "prune_rows_per_s",
            self.prune.rows_per_s(),
            self.prune.jobs,
            self.prune.rows,
            self.prune.seconds
        );
    }

    fn to_json(&self, f: &Figures) -> Value {
        if self.n == 0 {
            return Value::Null;
        }
        let passes = |p: &crate::history::Passes| json!({"runs": p.runs, "relay_p50_max_ms": p.relay_ms, "rescuer_p50_max_ms": p.rescuer_ms, "first_relay_rescuer_ms": p.first_relay_rescuer_ms, "over_20ms_relay_rescuer": p.over_20ms, "in_postgresql_relay_rescuer_p50_max_ms": p.in_server_ms});
        json!({
            "n": self.n,
            "seed_s": self.seed_large_s,
            "seed_s_at_history": self.seed_small_s,
            "accept_per_s": self.accept_per_s,
            "accept_ratio": self.accept_per_s / self.accept_base(f),
            "accept_again_per_s_at_history": self.accept_again_per_s,
            "accept_p99_ms": self.accept_p99_ms,
            "accept_p99_ratio": self.accept_p99_ms / f.accept_p99_ms,
            "e2e_per_s": self.e2e_per_s,
            "e2e_ratio": self.e2e_per_s / self.e2e_base(f),
            "e2e_again_per_s_at_history": self.e2e_again_per_s,
            "blocks_read_per_accepted_stop": self.blocks_read_large,
            "blocks_read_per_accepted_stop_at_history": self.blocks_read_small,
            "blocks_read_per_e2e_stop": self.e2e_blocks_read_large,
            "blocks_read_per_e2e_stop_at_history": self.e2e_blocks_read_small,
            "passes": passes(&self.passes_large),
            "passes_at_history": passes(&self.passes_small),
            "plans": self.plans,
            "accept_pruning_per_s": self.accept_pruning_per_s,
            "accept_pruning_ratio": self.accept_pruning_per_s / self.accept_per_s,
            "accept_pruning_p99_ms": self.accept_pruning_p99_ms,
            "prune_jobs": self.prune.jobs,
            "prune_rows": self.prune.rows,
            "prune_seconds": self.prune.seconds,
            "prune_rows_per_s": self.prune.rows_per_s(),
        })
    }
}
