//! The command line: every subcommand and the flags it takes (only those it
//! uses: the database URL for all, the queues' shape for `migrate`).

use clap::{Parser, Subcommand};
use shutoff_core::config::{Database, Queues};

#[derive(Debug, Parser)]
#[command(name = "shutoff-admin", version, about = "Set up and inspect shutoff")]
pub struct Cli {
    #[command(flatten)]
    pub database: Database,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the database if needed, apply migrations and declare the
    /// queues (idempotent). An unreachable broker is reported, not fatal:
    /// the API and workers declare the queues themselves when they connect.
    Migrate {
        // The queues as the API and the workers declare them.
        #[command(flatten)]
        queues: Queues,
    },
    /// Projects.
    Project {
        #[command(subcommand)]
        command: ProjectCommand,
    },
    /// Tokens (printed once; only their SHA-256 is stored).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Servers (instances).
    Server {
        #[command(subcommand)]
        command: ServerCommand,
    },
    /// Remove finished stops older than a cutoff (their job, transitions,
    /// action, events and faults) and old dead letters, in small batches
    /// that never hold what the hot path needs. Never removes an unfinished
    /// stop or an instance's newest action. Safe to interrupt and run again.
    Prune {
        /// How old a finished stop must be to go, e.g. `30d`, `12h`, `90days`.
        #[arg(long, value_parser = humantime::parse_duration)]
        older_than: std::time::Duration,
        /// Count what would go, remove nothing.
        #[arg(long)]
        dry_run: bool,
        /// Stops per batch (one transaction each).
        #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(i64).range(1..=10_000))]
        batch: i64,
        /// Append each removed stop, with all its rows, to this file as one
        /// JSON line before it is removed.
        #[arg(long)]
        archive_to: Option<std::path::PathBuf>,
    },
    /// List jobs, newest first (or `jobs cancel` one).
    #[command(args_conflicts_with_subcommands = true)]
    Jobs {
        #[command(subcommand)]
        command: Option<JobsCommand>,
        /// Only this server's jobs.
        #[arg(long)]
        instance: Option<uuid::Uuid>,
        /// At most this many (1 to 10000).
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// What happened to a stop: its timeline from the database (accepted,
    /// published, each attempt's claim by which worker on which host, how the
    /// VM went off and how long it took, retries and why, recorded), the time
    /// between steps, the final state and the fault if any. Exit code 3 when
    /// no such stop (or server) is recorded, 2 for a malformed id.
    #[command(group(clap::ArgGroup::new("which").required(true).args(["request_id", "instance"])))]
    Trace {
        /// The request id (`req-` and a UUID: the `X-Compute-Request-Id` the
        /// API answered, or what `server stop` and `drain` print).
        request_id: Option<String>,
        /// Instead, the last stops of this server, newest first.
        #[arg(long, conflicts_with = "request_id")]
        instance: Option<uuid::Uuid>,
        /// With `--instance`: how many stops (1 to 1000).
        #[arg(long, default_value_t = 5, requires = "instance",
              value_parser = clap::value_parser!(i64).range(1..=1000))]
        last: i64,
        /// One JSON document (an array with `--instance`), field names as in
        /// docs/operations.md.
        #[arg(long)]
        json: bool,
    },
    /// Stop every running server of a host (before maintenance): each stop
    /// goes through the API's acceptance (same checks, same audit rows,
    /// recorded for the user `shutoff-admin`) and is published as the API
    /// publishes it. Servers that cannot be stopped are skipped with Nova's
    /// reason; stops already under way are waited for, not asked twice, so
    /// an interrupted drain is finished by running it again. Shows progress
    /// until the stops are recorded and a table of every server. Exit code
    /// 1 if a stop failed or did not finish within `--timeout`, 130 when
    /// interrupted, 3 for a host without servers.
    Drain {
        /// The compute host (as `server create --host` and `shutoff-worker --host`).
        #[arg(long)]
        host: shutoff_core::ids::HostName,
        /// List what it would do; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// How long to wait for the stops to be recorded, e.g. `10m`, `90s`.
        /// Stops not finished by then go on; the drain reports them and
        /// exits 1.
        #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
        /// Stop locked servers too, as an admin may in Nova (and as
        /// `server stop` does). By default a lock is respected: the server
        /// is skipped with "Instance ... is locked".
        #[arg(long)]
        include_locked: bool,
        /// Attempts before a stop is recorded as failed (1 to 100).
        #[arg(long, env = "SHUTOFF_MAX_ATTEMPTS", default_value_t = 5, value_parser = clap::value_parser!(i32).range(1..=100))]
        max_attempts: i32,
        // Where the jobs are published (if RabbitMQ cannot take them, the
        // API's relay publishes them later: they are committed either way).
        #[command(flatten)]
        queues: Queues,
    },
    /// List the compute hosts: up or down, their workers, and how many stops
    /// wait for each and since when.
    Hosts {
        /// A host none of whose workers beat for this long is down (as the
        /// API and the workers count it).
        #[arg(long, env = "SHUTOFF_HOST_DOWN_AFTER_SECS",
              default_value_t = shutoff_core::config::DEFAULT_HOST_DOWN_AFTER_SECS,
              value_parser = clap::value_parser!(u64).range(1..))]
        host_down_after_secs: u64,
    },
}

#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// End a stop that will never be carried out (its host is gone for
    /// good), as Nova's `reset-state`: the job fails with your reason, the
    /// server's task_state goes back to none (its vm_state is unchanged)
    /// and an instance fault records why. Refused while a worker holds the
    /// job under a live lease: it may be powering the VM off right now.
    Cancel {
        /// The job's id (see `shutoff-admin jobs --instance`).
        job: uuid::Uuid,
        /// Why, recorded in the fault and the job's last error.
        #[arg(long, default_value = "the host will not come back")]
        reason: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ProjectCommand {
    /// Create a project and print its id.
    Create {
        /// Its name (unique, 1 to 255 characters).
        #[arg(long)]
        name: String,
        /// 32 hex characters (default: random).
        #[arg(long)]
        id: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Role {
    Member,
    Admin,
    Reader,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token and print it.
    Create {
        /// The project (32 hex characters) the token acts in.
        #[arg(long)]
        project: String,
        /// User id recorded on the actions it starts.
        #[arg(long, default_value = "admin")]
        user: String,
        /// reader: reads only; member: reads and stops; admin: all.
        #[arg(long, value_enum, default_value = "member")]
        role: Role,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 86_400, value_parser = clap::value_parser!(i64).range(1..=315_360_000))]
        ttl: i64,
    },
}

#[derive(Debug, Subcommand)]
pub enum ServerCommand {
    /// Create a server and print its uuid.
    Create {
        /// The project (32 hex characters) that owns it.
        #[arg(long)]
        project: String,
        /// Its display name (1 to 255 characters).
        #[arg(long)]
        name: String,
        /// Owner's user id.
        #[arg(long, default_value = "admin")]
        user: String,
        /// Nova vm_state to start in (active, stopped, error, ...).
        #[arg(long, default_value = "active")]
        vm_state: String,
        /// Nova task_state to start in (default: none).
        #[arg(long)]
        task_state: Option<String>,
        /// Leave launched_at NULL.
        #[arg(long)]
        not_launched: bool,
        /// Locked, as by Nova's lock action: stops are refused with 409.
        #[arg(long)]
        locked: bool,
        /// Hypervisor address: the simulator (fake://?delay_ms=200,
        /// fake://?fail=always), a QEMU VM's QMP monitor
        /// (qmp+unix:///run/vm1.qmp, qmp+tcp://127.0.0.1:4444) or a libvirt
        /// domain (libvirt:///UUID-OR-NAME, in a build with the libvirt
        /// feature), optionally with ?shutdown_timeout=SECS.
        #[arg(long, default_value = "fake://")]
        hypervisor: String,
        /// The libvirt daemon a libvirt:///DOMAIN address is verified on
        /// when it names none (?uri=): the one the host's workers use
        /// (their --libvirt-uri).
        #[arg(long, env = "SHUTOFF_LIBVIRT_URI", default_value = shutoff_hypervisor::DEFAULT_LIBVIRT_URI)]
        libvirt_uri: String,
        /// Register without asking the hypervisor. By default the address
        /// must reach the VM, and a running VM must be registered active and
        /// a shut-off one stopped.
        #[arg(long)]
        no_verify: bool,
        /// The compute host the VM runs on: only workers started with this
        /// `--host` carry out its stops. A host with no worker yet is
        /// allowed (its stops wait until one starts) and reported.
        #[arg(long, default_value = "sim-1")]
        host: shutoff_core::ids::HostName,
    },
    /// Stop a server as an admin would through the API (the same checks
    /// and the same acceptance; locks do not apply), publish its job, and
    /// print the request id and the job id.
    Stop {
        /// The server's uuid.
        server: uuid::Uuid,
        /// Attempts before the stop is recorded as failed (1 to 100).
        #[arg(long, env = "SHUTOFF_MAX_ATTEMPTS", default_value_t = 5, value_parser = clap::value_parser!(i32).range(1..=100))]
        max_attempts: i32,
        // Where the job is published (if RabbitMQ cannot take it, the API's
        // relay publishes it later: it is committed either way).
        #[command(flatten)]
        queues: Queues,
    },
}
