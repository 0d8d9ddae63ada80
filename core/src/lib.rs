//! What the shutoff API, worker and admin share.
//!
//! - [`state`]: Nova's vm_state / task_state / power_state and our job states,
//!   each documenting who moves a record out of it.
//! - [`ids`]: identifiers parsed once at the edge (`ProjectId`, `ServerId`, `RequestId`).
//! - [`message`]: the job message that travels through RabbitMQ.
//! - [`store`]: every SQL statement, grouped by who runs it (accept, jobs, admin, reads).
//! - [`broker`]: RabbitMQ topology, connection with back-off, confirmed publishing.
//! - [`config`]: the settings the API and the worker share ([`config::Common`]),
//!   and the few of them the admin tool takes.
//! - [`telemetry`]: tracing set-up (text or JSON lines).
//! - [`metrics`]: the registry and exposition behind `GET /metrics`.
//!
//! The database is the source of truth; the broker only carries wake-ups for
//! jobs that are already committed, so losing a message never loses a stop.

pub mod backoff;
pub mod batch;
pub mod broker;
pub mod config;
pub mod ids;
pub mod message;
pub mod metrics;
pub mod readiness;
pub mod rescuer;
pub mod shutdown;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod token;
