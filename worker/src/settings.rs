//! `shutoff-worker` settings: flags, then environment, then defaults that work here.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use shutoff_core::config::Common;
use shutoff_core::ids::HostName;
use shutoff_hypervisor::DriverSettings;

#[derive(Debug, Clone, Parser)]
#[command(name = "shutoff-worker", version, about = "shutoff's stop worker")]
pub struct Settings {
    #[command(flatten)]
    pub common: Common,

    /// The compute host this worker serves (Nova's `host` option; default:
    /// this machine's host name). It takes only the stops of instances on
    /// this host, from the host's own queue `<prefix>.stop.<host>`; any
    /// number of workers may serve one host.
    #[arg(long, env = "SHUTOFF_HOST")]
    pub host: Option<HostName>,

    /// Name recorded on the jobs this worker runs (default: host name and pid).
    #[arg(long, env = "SHUTOFF_WORKER_ID")]
    pub worker_id: Option<String>,

    /// How often this worker tells PostgreSQL that its host is up (one
    /// UPDATE). Keep it well under `--host-down-after-secs`.
    #[arg(long, env = "SHUTOFF_HEARTBEAT_SECS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub heartbeat_secs: u64,

    /// Also run a rescuer pass every `--rescue-interval-ms` in this worker.
    /// The API runs one already: with a worker on every host, one rescuer
    /// per worker would cost the database a query per host per interval.
    #[arg(long, env = "SHUTOFF_RESCUER", default_value_t = false)]
    pub rescuer: bool,

    /// Unacknowledged messages (and so jobs in progress) at once. A job
    /// waiting on a slow hypervisor costs a few KiB and no connection, so one
    /// worker can hold thousands of slow power-offs without starving the queue.
    #[arg(long, env = "SHUTOFF_PREFETCH", default_value_t = 10_000)]
    pub prefetch: u16,

    /// Where `/healthz`, `/readyz` and `/metrics` answer.
    #[arg(long, env = "SHUTOFF_HEALTH_LISTEN", default_value = "0.0.0.0:8775")]
    pub health_listen: SocketAddr,

    /// A running job belongs to this worker for this long, renewed while it
    /// works; after a crash another worker may take it over once it lapses.
    #[arg(long, env = "SHUTOFF_LEASE_SECS", default_value_t = 30)]
    pub lease_secs: u64,

    /// Longest a single power-off may take before it counts as a (transient)
    /// failure. A safety net for a driver that hangs: it is stretched per
    /// instance to the driver's own bound (for QEMU: the shutdown timeout
    /// plus seven QMP timeouts), so it never cuts a clean shutdown short.
    #[arg(long, env = "SHUTOFF_POWER_OFF_TIMEOUT_SECS", default_value_t = 120)]
    pub power_off_timeout_secs: u64,

    /// How long a guest has to shut down after the ACPI power button before
    /// the hard power-off (Nova's `shutdown_timeout`); 0 powers off at once.
    /// An instance's address may override it (`?shutdown_timeout=SECS`).
    #[arg(long, env = "SHUTOFF_SHUTDOWN_TIMEOUT_SECS", default_value_t = 60)]
    pub shutdown_timeout_secs: u64,

    /// The power button is pressed again this often while waiting: a guest
    /// that is still booting ignores it (Nova's `SHUTDOWN_RETRY_INTERVAL`).
    #[arg(long, env = "SHUTOFF_SHUTDOWN_RETRY_INTERVAL_SECS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub shutdown_retry_interval_secs: u64,

    /// Longest wait for any single answer from a QEMU monitor (connect,
    /// greeting, command reply, QEMU exiting after `quit`); a monitor that
    /// stays silent longer fails the attempt, and the retry policy retries.
    #[arg(long, env = "SHUTOFF_QMP_TIMEOUT_SECS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub qmp_timeout_secs: u64,

    /// The libvirt daemon for `libvirt:///DOMAIN` addresses that name none
    /// (an address's `?uri=` wins). Needs a worker built with the `libvirt`
    /// feature.
    #[arg(long, env = "SHUTOFF_LIBVIRT_URI", default_value = shutoff_hypervisor::DEFAULT_LIBVIRT_URI)]
    pub libvirt_uri: String,

    /// How long a batch of claims or of successes waits for more jobs before
    /// its statement runs. Fewer, bigger statements cost PostgreSQL less per
    /// stop: end to end, 20 ms gave about 20% more stops per second than no
    /// wait. A stop's record is at most twice this later; 0 sends each batch
    /// as soon as the previous one is done.
    #[arg(long, env = "SHUTOFF_BATCH_LINGER_MS", default_value_t = 20)]
    pub batch_linger_ms: u64,

    /// Reach PostgreSQL through the conductor (the API processes answer the
    /// worker's store calls over RabbitMQ, batched across the fleet) instead
    /// of a pool of this worker's own: the way for a worker on every host
    /// (see docs/deployment.md, "A worker on every host"). `DATABASE_URL`
    /// is then not used.
    #[arg(long, env = "SHUTOFF_VIA_CONDUCTOR", default_value_t = false)]
    pub via_conductor: bool,

    /// With `--via-conductor`, how long a store call waits for the
    /// conductor's answer; past it, the call counts as a database that did
    /// not answer (retried, the lease it may have taken lapses). Under the
    /// 15 s a worker gives any store call.
    #[arg(long, env = "SHUTOFF_CONDUCTOR_TIMEOUT_SECS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..15))]
    pub conductor_timeout_secs: u64,

    /// After SIGTERM, how long in-flight jobs may take to finish before the
    /// rest are returned to the queue.
    #[arg(long, env = "SHUTOFF_GRACE_SECS", default_value_t = 30)]
    pub grace_secs: u64,
}

impl Settings {
    /// The host served: `--host`, else this machine's name.
    pub fn host(&self) -> anyhow::Result<HostName> {
        match &self.host {
            Some(h) => Ok(h.clone()),
            None => HostName::of_this_machine().map_err(|e| {
                anyhow::anyhow!("{e}: this machine's host name cannot name a host; pass --host")
            }),
        }
    }

    pub fn conductor_timeout(&self) -> Duration {
        Duration::from_secs(self.conductor_timeout_secs)
    }

    pub fn heartbeat(&self) -> Duration {
        Duration::from_secs(self.heartbeat_secs.max(1))
    }

    pub fn batch_linger(&self) -> Duration {
        Duration::from_millis(self.batch_linger_ms)
    }

    pub fn worker_id(&self) -> String {
        self.worker_id.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/etc/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "worker".into());
            format!("{host}-{}", std::process::id())
        })
    }

    pub fn lease(&self) -> Duration {
        Duration::from_secs(self.lease_secs.max(1))
    }

    pub fn power_off_timeout(&self) -> Duration {
        Duration::from_secs(self.power_off_timeout_secs.max(1))
    }

    pub fn drivers(&self) -> DriverSettings {
        DriverSettings {
            shutdown_timeout: Duration::from_secs(self.shutdown_timeout_secs),
            shutdown_retry_interval: Duration::from_secs(self.shutdown_retry_interval_secs.max(1)),
            qmp_timeout: Duration::from_secs(self.qmp_timeout_secs.max(1)),
            libvirt_uri: self.libvirt_uri.clone(),
        }
    }

    pub fn grace(&self) -> Duration {
        Duration::from_secs(self.grace_secs)
    }
}
