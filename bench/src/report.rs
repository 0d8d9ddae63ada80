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
}

/// The targets, as (name, met).
fn targets(f: &Figures) -> Vec<(&'static str, bool)> {
    vec![
        (
            "accept_per_s >= 0.7 x pg_ceiling_tps",
            f.accept_per_s >= 0.7 * f.pg_ceiling_tps,
        ),
        ("accept_p99_ms <= 50", f.accept_p99_ms <= 50.0),
        (
            "e2e_per_s >= 0.5 x pg_ceiling_tps",
            f.e2e_per_s >= 0.5 * f.pg_ceiling_tps,
        ),
        ("slow_e2e_seconds <= 15", f.slow_e2e_seconds <= 15.0),
        ("worker_peak_rss_mb <= 100", f.worker_peak_rss_mb <= 100.0),
        ("api_peak_rss_mb <= 100", f.api_peak_rss_mb <= 100.0),
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
        for (name, met) in targets(self) {
            println!(
                "  target {:<40} {}",
                name,
                if met { "met" } else { "NOT met" }
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
            "accept_ratio": self.accept_per_s / c,
            "e2e_ratio": self.e2e_per_s / c,
            "connections": self.connections,
            "ceiling_clients": self.ceiling_clients,
            "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
            "targets": targets(self).into_iter().map(|(n, m)| (n.to_string(), Value::Bool(m))).collect::<serde_json::Map<_, _>>(),
        })
    }
}
