//! `shutoff-testkit`: what shutoff's tests share, kept out of the shipped
//! crates (a dev-dependency of each crate's tests; never published).
//!
//! - [`env`](mod@env): [`TestEnv`], one test's own database (from `#[sqlx::test]`) and
//!   queue names on the real PostgreSQL and RabbitMQ, with the queries and
//!   publishes tests arrange and assert with.
//! - [`settings`]: the API's and the worker's settings for a test, parsed from
//!   their real command lines.
//! - [`app`]: [`app::TestApp`], the API (and a worker) spawned in-process on
//!   random ports, and the HTTP calls the API's tests make.
//! - [`workers`]: [`workers::RunningWorker`], a worker spawned in-process, and
//!   [`workers::Ctx`], which accepts and publishes stops as the API does.
//! - [`proxy`]: [`TcpProxy`], to cut a test's connections to PostgreSQL or
//!   RabbitMQ without touching the machine's services.
//! - [`vm`]: [`vm::TestVm`], real QEMU VMs (a bare one, or the Linux test guest
//!   built by `scripts/build-test-guest`).
//! - [`clients`]: the OpenStack clients' and Keystone's venvs, and the
//!   clouds.yaml check run with them.
//! - [`rabbitmq`]: private RabbitMQ nodes and clusters, for tests that stop
//!   or restart a broker.
//! - [`skip`]: skip a test that lacks a tool, or fail it in CI.
//! - [`tls`](mod@tls): a CA made in the test, and private PostgreSQL and RabbitMQ
//!   nodes with TLS listeners signed by it.
//! - [`libvirtd`]: [`libvirtd::Libvirtd`], a private session libvirtd with
//!   QEMU domains on it (the test guest, or nothing to boot).
//!
//! Its own `tests/config_doc.rs` keeps the configuration reference in the
//! README what the binaries' clap definitions say (`UPDATE_DOCS=1` rewrites
//! it): it needs the API, the worker and the admin tool together, which no
//! shipped crate links.

pub mod app;
pub mod clients;
pub mod env;
pub mod libvirtd;
pub mod proxy;
pub mod rabbitmq;
pub mod settings;
pub mod skip;
pub mod tls;
pub mod vm;
pub mod workers;

pub use env::{TestEnv, amqp_url};
pub use proxy::TcpProxy;
