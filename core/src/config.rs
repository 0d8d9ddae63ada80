//! Settings every binary shares, read from flags and environment in one place.

use std::time::Duration;

use clap::Args;

use crate::broker::Topology;
use crate::broker_nodes::BrokerNodes;
use crate::db_hosts::DbHosts;
use crate::telemetry::LogFormat;
use crate::tls::AmqpTls;

/// PostgreSQL on a developer machine of ours.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/shutoff";
/// A host none of whose workers beat for this long is down.
pub const DEFAULT_HOST_DOWN_AFTER_SECS: u64 = 30;
/// RabbitMQ on a developer machine of ours.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Where PostgreSQL and RabbitMQ are, and how jobs are queued and retried.
/// Flattened into the API's and the worker's settings. `shutoff-admin` takes
/// only the few of these its commands use ([`Database`], [`Queues`]).
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// PostgreSQL URL; several hosts in libpq's form
    /// (`postgres://u@h1:5432,h2:5433/db?target_session_attrs=read-write`):
    /// shutoff keeps to the one that is read-write. TLS by libpq's `sslmode`,
    /// `sslrootcert`, `sslcert` and `sslkey` query parameters (e.g.
    /// `?sslmode=verify-full&sslrootcert=/etc/shutoff/pg-ca.pem`).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = DEFAULT_DATABASE_URL
    )]
    pub database_url: DbHosts,

    /// RabbitMQ URL; a cluster's nodes comma-separated, oslo.messaging's way
    /// (`amqp://u:p@h1:5672,u:p@h2:5673/vhost`: one vhost and query for all;
    /// a node without credentials uses the first node's); `amqps://` for TLS
    /// (see the `--amqp-*-file` settings).
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = DEFAULT_AMQP_URL
    )]
    pub amqp_url: BrokerNodes,

    #[command(flatten)]
    pub amqp_tls: AmqpTls,

    /// Prefix of every queue name (`<prefix>.stop.<host>`, `.dead`, `.retry.<ms>ms`);
    /// give each deployment (or test) its own.
    #[arg(long, env = "SHUTOFF_QUEUE_PREFIX", default_value = "shutoff")]
    pub queue_prefix: String,

    /// Deliveries of one message before RabbitMQ dead-letters it (quorum `x-delivery-limit`).
    #[arg(long, env = "SHUTOFF_DELIVERY_LIMIT", default_value_t = 10)]
    pub delivery_limit: u32,

    /// Back-off delays between attempts, in milliseconds (one delay queue each; the last repeats).
    #[arg(
        long,
        env = "SHUTOFF_RETRY_DELAYS_MS",
        value_delimiter = ',',
        default_value = "1000,5000,30000"
    )]
    pub retry_delays_ms: Vec<u64>,

    /// Attempts per stop (the first one included, 1 to 100) before it is recorded as failed.
    #[arg(long, env = "SHUTOFF_MAX_ATTEMPTS", default_value_t = 5, value_parser = clap::value_parser!(i32).range(1..=100))]
    pub max_attempts: i32,

    /// A job nobody has moved for this long (or whose worker's lease expired) is rescued.
    #[arg(long, env = "SHUTOFF_RESCUE_AFTER_SECS", default_value_t = 120)]
    pub rescue_after_secs: u64,

    /// How often the rescuer looks for stalled jobs.
    #[arg(long, env = "SHUTOFF_RESCUE_INTERVAL_MS", default_value_t = 2000)]
    pub rescue_interval_ms: u64,

    /// A host none of whose workers has sent a heartbeat for this long is
    /// down: its stops wait in PostgreSQL (still accepted, still
    /// `powering-off`, no attempt used) until one of its workers starts.
    #[arg(long, env = "SHUTOFF_HOST_DOWN_AFTER_SECS", default_value_t = DEFAULT_HOST_DOWN_AFTER_SECS,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub host_down_after_secs: u64,

    /// Maximum PostgreSQL connections of this process (default: 16 for the
    /// API, 4 for a worker, whose statements are batched: with a worker on
    /// every host, the fleet's connections are what PostgreSQL must hold).
    #[arg(long, env = "SHUTOFF_DB_MAX_CONNECTIONS")]
    pub db_max_connections: Option<u32>,

    /// Server-side limit on any one statement, in milliseconds. A statement
    /// that waits this long on another transaction's lock is rolled back and
    /// answered as contention (503 with Retry-After on the API), never 500.
    #[arg(
        long,
        global = true,
        env = "SHUTOFF_DB_STATEMENT_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    pub db_statement_timeout_ms: u64,

    /// How the API and the worker write log lines (`RUST_LOG` sets the filter).
    #[arg(
        long,
        env = "SHUTOFF_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Text
    )]
    pub log_format: LogFormat,
}

impl Common {
    pub fn topology(&self) -> Topology {
        Topology {
            prefix: self.queue_prefix.clone(),
            delivery_limit: self.delivery_limit,
            retry_delays_ms: self.retry_delays_ms.clone(),
        }
    }

    pub fn rescue_after(&self) -> Duration {
        Duration::from_secs(self.rescue_after_secs)
    }

    pub fn rescue_interval(&self) -> Duration {
        Duration::from_millis(self.rescue_interval_ms)
    }

    pub fn host_down_after(&self) -> Duration {
        Duration::from_secs(self.host_down_after_secs)
    }

    /// The pool of a process whose own default is `default_max` connections.
    pub fn pool_settings(&self, default_max: u32) -> crate::store::PoolSettings {
        crate::store::PoolSettings {
            max_connections: self.db_max_connections.unwrap_or(default_max).max(1),
            statement_timeout: Duration::from_millis(self.db_statement_timeout_ms),
            ..Default::default()
        }
    }
}

/// Where PostgreSQL is: all that `shutoff-admin`'s database commands take
/// (global, so the flag may come before or after the subcommand). The same
/// flag as [`Common`]'s.
#[derive(Debug, Clone, Args)]
pub struct Database {
    /// PostgreSQL URL; several hosts in libpq's form
    /// (`postgres://u@h1:5432,h2:5433/db?target_session_attrs=read-write`):
    /// shutoff keeps to the one that is read-write. TLS by libpq's `sslmode`,
    /// `sslrootcert`, `sslcert` and `sslkey` query parameters (e.g.
    /// `?sslmode=verify-full&sslrootcert=/etc/shutoff/pg-ca.pem`).
    #[arg(
        long,
        global = true,
        env = "DATABASE_URL",
        default_value = DEFAULT_DATABASE_URL
    )]
    pub database_url: DbHosts,
}

/// Where RabbitMQ is and how the queues are declared: what `shutoff-admin
/// migrate` needs to declare them as the API and the workers do (RabbitMQ
/// refuses to declare a queue again with other arguments). The same flags as
/// [`Common`]'s.
#[derive(Debug, Clone, Args)]
pub struct Queues {
    /// RabbitMQ URL; a cluster's nodes comma-separated, oslo.messaging's way
    /// (`amqp://u:p@h1:5672,u:p@h2:5673/vhost`: one vhost and query for all;
    /// a node without credentials uses the first node's); `amqps://` for TLS
    /// (see the `--amqp-*-file` settings).
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = DEFAULT_AMQP_URL
    )]
    pub amqp_url: BrokerNodes,

    #[command(flatten)]
    pub amqp_tls: AmqpTls,

    /// Prefix of every queue name (`<prefix>.stop.<host>`, `.dead`, `.retry.<ms>ms`);
    /// give each deployment (or test) its own.
    #[arg(long, env = "SHUTOFF_QUEUE_PREFIX", default_value = "shutoff")]
    pub queue_prefix: String,

    /// Deliveries of one message before RabbitMQ dead-letters it (quorum `x-delivery-limit`).
    #[arg(long, env = "SHUTOFF_DELIVERY_LIMIT", default_value_t = 10)]
    pub delivery_limit: u32,

    /// Back-off delays between attempts, in milliseconds (one delay queue each; the last repeats).
    #[arg(
        long,
        env = "SHUTOFF_RETRY_DELAYS_MS",
        value_delimiter = ',',
        default_value = "1000,5000,30000"
    )]
    pub retry_delays_ms: Vec<u64>,
}

impl Queues {
    pub fn topology(&self) -> Topology {
        Topology {
            prefix: self.queue_prefix.clone(),
            delivery_limit: self.delivery_limit,
            retry_delays_ms: self.retry_delays_ms.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::{Arg, Command};

    use super::*;

    /// What an operator sees of a flag: its name, variable, default, delimiter and help.
    fn face(a: &Arg) -> impl PartialEq + std::fmt::Debug {
        (
            a.get_long().map(str::to_string),
            a.get_env().map(|e| e.to_string_lossy().into_owned()),
            a.get_default_values()
                .iter()
                .map(|v| v.to_string_lossy().into_owned())
                .collect::<Vec<_>>(),
            a.get_value_delimiter(),
            a.get_help().map(|h| h.to_string()),
        )
    }

    #[test]
    fn the_admin_tools_database_and_queue_flags_are_the_shared_ones() {
        let common = Common::augment_args(Command::new("common"));
        let admin = [
            Database::augment_args(Command::new("database")),
            Queues::augment_args(Command::new("queues")),
        ];
        for a in admin.iter().flat_map(|c| c.get_arguments()) {
            let shared = common
                .get_arguments()
                .find(|c| c.get_id() == a.get_id())
                .unwrap_or_else(|| panic!("--{} is not a shared flag", a.get_id()));
            assert_eq!(face(a), face(shared), "--{} drifted", a.get_id());
        }
    }
}
