//! `shutoff-api`: the HTTP front of shutoff.
//!
//! - [`settings`]: flags and environment.
//! - [`startup`]: builds the app (pool, publisher, relay, rescuer) and serves it.
//! - [`server`]: the HTTP/1.1 loop with header deadlines and size limits.
//! - [`routes`]: one module per endpoint group; [`routes::stop`] is where a stop
//!   request is checked, accepted and published.
//! - [`acceptor`]: stop acceptance, group-committed across concurrent requests.
//! - [`action`]: the action body's parser (pure; fuzzed by `fuzz/`).
//! - [`auth`]: the `X-Auth-Token` extractor and the [`auth::Authenticator`]:
//!   our token table (with [`token_cache`]) or [`keystone`].
//! - [`request_id`]: the `req-<uuid>` every response carries and every log line shows.
//! - [`relay`]: publishes jobs that were committed but never confirmed by RabbitMQ.
//! - [`error`]: the one mapping from errors to OpenStack fault bodies.
//! - [`metrics`]: `GET /metrics` (Prometheus) and the middleware that counts requests.
//! - [`openapi`]: the OpenAPI document generated from the handlers, at `/openapi.json`.
//!
//! Its tests run it in-process, with a real worker, through the dev-only
//! `shutoff-testkit` (`TestApp`); nothing here exists for tests.

pub mod acceptor;
pub mod action;
pub mod auth;
pub mod error;
pub mod extract;
pub mod keystone;
pub mod metrics;
pub mod openapi;
pub mod relay;
pub mod request_id;
pub mod routes;
pub mod server;
pub mod settings;
pub mod startup;
pub mod token_cache;

pub use settings::Settings;
pub use startup::{AppState, Application};
