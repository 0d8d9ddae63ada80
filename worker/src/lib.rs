//! `shutoff-worker`: takes stop jobs off RabbitMQ and carries them out.
//!
//! - [`settings`]: flags and environment.
//! - [`consumer`]: the RabbitMQ consumer loop: reconnects, dispatches
//!   deliveries, stops cleanly on SIGTERM.
//! - [`stop_job`]: one job, end to end: claim it in PostgreSQL, power the VM
//!   off, record the result, then ack.
//! - [`job_store`]: the worker's one way into the jobs table; claims, lease
//!   renewals and successes of concurrent jobs share one statement and commit.
//! - [`hypervisor`]: the driver trait and the drivers (`fake://` simulator,
//!   `qmp+unix://` and `qmp+tcp://` for QEMU).
//! - [`health`]: `/healthz`, `/readyz` and `/metrics` on a small port.
//! - [`metrics`]: job counters, power-off durations, jobs in flight.
//! - `testing` (feature `test-support`): real QEMU VMs for tests.

pub mod consumer;
pub mod health;
pub mod hypervisor;
pub mod job_store;
pub mod metrics;
pub mod settings;
pub mod stop_job;
#[cfg(feature = "test-support")]
pub mod testing;
pub mod worker;

pub use settings::Settings;
pub use worker::Worker;
