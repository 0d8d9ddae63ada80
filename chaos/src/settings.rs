//! `shutoff-chaos` settings: flags, with defaults for this machine.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "shutoff-chaos",
    version,
    about = "Jepsen-style run: stops flow through a real API, broker, database and workers \
             while workers are killed and RabbitMQ and PostgreSQL restart; then every \
             accepted stop is checked for loss, stuckness and duplication"
)]
pub struct Settings {
    /// Servers to create and stop (one stop request each).
    #[arg(long, default_value_t = 2000)]
    pub stops: usize,

    /// Stop requests in flight at once.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,

    /// Workers to run.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=16))]
    pub workers: u16,

    /// Seconds the requests are spread over, so the faults land while stops
    /// are still arriving (at full speed 2000 stops take about a second).
    #[arg(long, default_value_t = 30)]
    pub send_secs: u64,

    /// Seconds to wait, after the last fault, for every job to finish.
    #[arg(long, default_value_t = 120)]
    pub settle_secs: u64,

    /// The workers' grace period (SHUTOFF_GRACE_SECS): after SIGTERM, how
    /// long in-flight jobs may run before the rest are handed back.
    #[arg(long, default_value_t = 10)]
    pub worker_grace_secs: u64,

    /// Seconds the whole run may take; past them it is stopped and cleaned
    /// up. The settle phase is shortened to leave time for the report.
    #[arg(long, default_value_t = 300)]
    pub deadline_secs: u64,

    /// Run on a private three-node RabbitMQ cluster and a PostgreSQL primary
    /// with a synchronous standby, and fault those instead: stop the node
    /// leading the work queue, start it again, stop and start another; kill
    /// the primary and promote the standby, then rebuild the old primary as
    /// the new standby.
    #[arg(long)]
    pub cluster: bool,

    /// Keep the work dir (data and logs) even when the run passes.
    #[arg(long)]
    pub keep: bool,

    /// Only start PostgreSQL and RabbitMQ, check them, restart each once, and
    /// clean up: a smoke test of the infrastructure half of this tool.
    #[arg(long)]
    pub only_infra: bool,

    /// Directory holding shutoff-api and shutoff-worker (default: the
    /// directory of this binary, i.e. the same target/release).
    #[arg(long, env = "SHUTOFF_BIN_DIR")]
    pub bin_dir: Option<PathBuf>,

    /// PostgreSQL server binaries (initdb, postgres).
    #[arg(
        long,
        env = "CHAOS_PG_BIN",
        default_value = "/usr/lib/postgresql/15/bin"
    )]
    pub pg_bin: PathBuf,

    /// RabbitMQ's own scripts (rabbitmq-server), not the /usr/sbin wrappers.
    #[arg(
        long,
        env = "CHAOS_RABBITMQ_BIN",
        default_value = "/usr/lib/rabbitmq/bin"
    )]
    pub rabbitmq_bin: PathBuf,

    /// The Erlang port mapper daemon.
    #[arg(long, env = "CHAOS_EPMD", default_value = "epmd")]
    pub epmd: PathBuf,
}

impl Settings {
    pub fn send_duration(&self) -> Duration {
        Duration::from_secs(self.send_secs)
    }

    pub fn settle_timeout(&self) -> Duration {
        Duration::from_secs(self.settle_secs)
    }

    pub fn deadline(&self) -> Duration {
        Duration::from_secs(self.deadline_secs)
    }

    /// How long a SIGTERMed worker may take to exit: its grace period, plus
    /// a margin for closing connections.
    pub fn term_limit(&self) -> Duration {
        Duration::from_secs(self.worker_grace_secs + 5)
    }

    /// Where the API and worker binaries are; fails early if they are missing.
    pub fn service_bin_dir(&self) -> Result<PathBuf> {
        let dir = match &self.bin_dir {
            Some(d) => d.clone(),
            None => std::env::current_exe()
                .context("cannot find this binary's path")?
                .parent()
                .context("this binary has no directory")?
                .to_path_buf(),
        };
        for bin in ["shutoff-api", "shutoff-worker"] {
            if !dir.join(bin).is_file() {
                bail!(
                    "{} is missing: build it first (cargo build --release -p shutoff-api \
                     -p shutoff-worker), or pass --bin-dir",
                    dir.join(bin).display()
                );
            }
        }
        Ok(dir)
    }
}
