//! The worker's metrics, served at `GET /metrics` on its health port: what
//! happened to the jobs it handled, how long power-offs took, and how many
//! jobs it holds right now.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Unit;
use shutoff_core::metrics::{self as core_metrics, Registry};
use shutoff_hypervisor::{DriverError, StopMethod, Stopped};

/// How a power-off ended.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum PowerOffOutcome {
    /// The guest shut down when asked (or was already off).
    Clean,
    /// The guest ignored the request and was powered off hard.
    Forced,
    /// The driver reported an error (or timed out): the VM may still run.
    Failed,
}

impl PowerOffOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            PowerOffOutcome::Clean => "clean",
            PowerOffOutcome::Forced => "forced",
            PowerOffOutcome::Failed => "failed",
        }
    }
}

impl EncodeLabelValue for PowerOffOutcome {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

/// The outcome label of one power-off: the one place that maps a driver's
/// result to clean/forced/failed. The simulator's successes are all clean; a
/// driver that can tell a forced stop (QEMU, after an ignored ACPI shutdown)
/// reports it through its result and is mapped here.
/// A VM found already off needed no force, so it counts as clean.
pub fn power_off_outcome(result: &Result<Stopped, DriverError>) -> PowerOffOutcome {
    match result {
        Ok(s) if s.how == StopMethod::Forced => PowerOffOutcome::Forced,
        Ok(_) => PowerOffOutcome::Clean,
        Err(_) => PowerOffOutcome::Failed,
    }
}

/// The driver label: the scheme of the instance's hypervisor address
/// (`fake`, `qmp+unix`), never the address itself (unbounded, and it names
/// hosts and sockets).
pub fn driver_label(address: &str) -> String {
    match address.split_once("://") {
        Some((scheme, _)) if !scheme.is_empty() => scheme.to_ascii_lowercase(),
        _ => "unknown".into(),
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PowerOffLabels {
    pub driver: String,
    pub outcome: PowerOffOutcome,
}

/// Every metric of one worker. Cloning shares the counters.
#[derive(Clone)]
pub struct WorkerMetrics {
    registry: Arc<Registry>,
    /// Jobs claimed whose power-off this worker started.
    pub started: Counter,
    pub succeeded: Counter,
    /// Jobs recorded as failed by this worker (permanent error, or out of attempts).
    pub failed: Counter,
    /// Attempts that failed transiently and were parked on a retry queue.
    pub retried: Counter,
    /// Messages this worker rejected to the dead-letter queue (poison).
    pub dead_lettered: Counter,
    pub power_off: Family<PowerOffLabels, Histogram>,
    /// Deliveries being handled right now (at most the prefetch).
    pub in_flight: Gauge,
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl WorkerMetrics {
    pub fn new() -> Self {
        let mut registry = core_metrics::registry("shutoff-worker");
        let mut counter = |name: &str, help: &str| {
            let c = Counter::default();
            registry.register(name, help, c.clone());
            c
        };
        let started = counter("jobs_started", "Jobs claimed whose power-off was started");
        let succeeded = counter(
            "jobs_succeeded",
            "Jobs recorded as succeeded (server stopped)",
        );
        let failed = counter("jobs_failed", "Jobs recorded as failed (fault written)");
        let retried = counter(
            "jobs_retried",
            "Attempts that failed transiently and were parked for a retry",
        );
        let dead_lettered = counter(
            "jobs_dead_lettered",
            "Poison messages rejected to the dead-letter queue",
        );
        let power_off = Family::<PowerOffLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(core_metrics::POWER_OFF_BUCKETS)
        });
        registry.register_with_unit(
            "power_off_duration",
            "Time the hypervisor driver took to power a VM off, by driver and outcome",
            Unit::Seconds,
            power_off.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "jobs_in_flight",
            "Deliveries this worker is handling right now",
            in_flight.clone(),
        );
        WorkerMetrics {
            registry: Arc::new(registry),
            started,
            succeeded,
            failed,
            retried,
            dead_lettered,
            power_off,
            in_flight,
        }
    }

    /// Records one power-off of the instance at `address`.
    pub fn power_off_done(
        &self,
        address: &str,
        result: &Result<Stopped, DriverError>,
        took: Duration,
    ) {
        self.power_off
            .get_or_create(&PowerOffLabels {
                driver: driver_label(address),
                outcome: power_off_outcome(result),
            })
            .observe(took.as_secs_f64());
    }

    /// Counts a delivery as in flight until the guard is dropped (also when
    /// its task is aborted at the end of the grace period).
    pub fn in_flight(&self) -> InFlight {
        self.in_flight.inc();
        InFlight(self.in_flight.clone())
    }

    pub fn render(&self) -> String {
        core_metrics::render(&self.registry)
    }
}

pub struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shutoff_core::state::PowerState;

    #[test]
    fn the_driver_label_is_the_address_scheme_only() {
        assert_eq!(driver_label("fake://?delay_ms=5"), "fake");
        assert_eq!(driver_label("qmp+unix:///run/vm-1.sock"), "qmp+unix");
        assert_eq!(driver_label("no scheme"), "unknown");
    }

    #[test]
    fn a_driver_error_is_a_failed_power_off() {
        assert_eq!(
            power_off_outcome(&Err(DriverError::transient("x"))),
            PowerOffOutcome::Failed
        );
        let stopped = |how| Stopped {
            power_state: PowerState::Shutdown,
            how,
            elapsed: std::time::Duration::from_millis(5),
            note: String::new(),
            gone: None,
        };
        assert_eq!(
            power_off_outcome(&Ok(stopped(StopMethod::Simulated))),
            PowerOffOutcome::Clean
        );
        assert_eq!(
            power_off_outcome(&Ok(stopped(StopMethod::AlreadyOff))),
            PowerOffOutcome::Clean
        );
        assert_eq!(
            power_off_outcome(&Ok(stopped(StopMethod::Forced))),
            PowerOffOutcome::Forced
        );
    }
}
