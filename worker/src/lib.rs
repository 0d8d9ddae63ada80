//! `shutoff-worker`: takes stop jobs off RabbitMQ and carries them out.
//!
//! - [`settings`]: flags and environment.
//! - [`consumer`]: the RabbitMQ consumer loop: reconnects, dispatches
//!   deliveries, stops cleanly on SIGTERM.
//! - [`stop_job`]: one job, end to end: claim it in PostgreSQL, power the VM
//!   off, record the result, then ack.
//! - [`job_store`]: the worker's one way into the jobs table; claims, lease
//!   renewals and successes of concurrent jobs share one statement and commit.
//! - [`presence`]: the host's heartbeat in PostgreSQL, and the re-drive of
//!   the host's waiting stops when the worker attaches to its queue.
//! - [`health`]: `/healthz`, `/readyz` and `/metrics` on a small port.
//! - [`metrics`]: job counters, power-off durations, jobs in flight.
//!
//! The VM is powered off through the `shutoff-hypervisor` crate (the
//! `Hypervisor` trait and its drivers), chosen by each instance's address.
//! Its tests run it in-process, against real QEMU VMs too, through the
//! dev-only `shutoff-testkit`.

pub mod consumer;
pub mod health;
pub mod job_store;
pub mod metrics;
pub mod presence;
pub mod settings;
pub mod stop_job;
pub mod worker;

pub use settings::Settings;
pub use worker::Worker;
