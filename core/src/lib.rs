//! What the shutoff API, worker and admin share.
//!
//! - [`state`]: Nova's vm_state / task_state / power_state and our job states
//!   as enums that read and write their columns, each documenting who moves a
//!   record out of it.
//! - [`policy`]: who may stop what, and Nova's order of refusals (pure).
//! - [`acceptor`]: the one acceptor of stops (API, admin tools, tests), with
//!   group commit and [`batch::Ticket`]s so an answer always matches the commit.
//! - [`batch`]: group commit of concurrent callers into one statement.
//! - [`ids`]: identifiers parsed once at the edge (`ProjectId`, `ServerId`, `RequestId`).
//! - [`message`]: the job message that travels through RabbitMQ.
//! - [`store`]: every SQL statement, grouped by who runs it (accept, publish,
//!   claim, rescue, dead letters, auth, reads, admin), and [`store::StoreError`].
//! - [`pruner`]: periodic retention (`--retention`), the pruning of
//!   [`store::prune`] that `shutoff-admin prune` runs by hand.
//! - [`relay`] and [`rescuer`]: the two loops that put jobs back on the broker:
//!   the relay those whose publish was never confirmed, the rescuer those
//!   nobody is moving (and fails those out of attempts).
//! - [`conductor`]: the workers' way to the database without a connection of
//!   their own: calls over RabbitMQ, answered (and batched across a fleet)
//!   by the API processes, as Nova's nova-conductor does for its computes.
//! - [`broker`]: RabbitMQ topology, connection with back-off, confirmed publishing.
//! - [`broker_nodes`]: the cluster's nodes in `AMQP_URL`, parsed once.
//! - [`db_hosts`]: the PostgreSQL hosts in `DATABASE_URL`, parsed once (the
//!   pool keeps to the read-write one: [`store::pool`]).
//! - [`config`]: the settings the API and the worker share ([`config::Common`]),
//!   and the few of them the admin tool takes.
//! - [`tls`]: the TLS settings of RabbitMQ and PostgreSQL connections, and
//!   the one place each becomes connect options.
//! - [`telemetry`]: tracing set-up (text or JSON lines).
//! - [`metrics`]: the registry and exposition behind `GET /metrics`.
//!
//! The database is the source of truth; the broker only carries wake-ups for
//! jobs that are already committed, so losing a message never loses a stop.

pub mod acceptor;
pub mod backoff;
pub mod batch;
pub mod broker;
pub mod broker_nodes;
pub mod conductor;
pub mod config;
pub mod db_hosts;
pub mod host_census;
pub mod ids;
pub mod message;
pub mod metrics;
pub mod policy;
pub mod pruner;
pub mod readiness;
pub mod relay;
pub mod rescuer;
pub mod shutdown;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod token;
