//! `shutoff-api`: the HTTP front of shutoff.
//!
//! Starting and serving:
//! - [`settings`]: flags and environment.
//! - [`startup`]: builds the app (pool, publisher, relay, rescuer, the
//!   [`AppState`]) and serves it.
//! - [`state`]: the [`AppState`] the router holds, and the parts of it
//!   handlers take by type (`FromRef`).
//! - [`server`]: the HTTP/1.1 loop with header deadlines and hard size limits.
//!
//! Answering a request, outermost first:
//! - [`metrics`]: the middleware that counts requests, and `GET /metrics`.
//! - [`request_id`]: the `req-<uuid>` every response carries and every log line shows.
//! - [`limits`]: URI, header and body limits answered with fault bodies.
//! - [`routes`]: the one list of routes, with one module per endpoint group;
//!   [`routes::stop`] is where a stop request is checked, accepted and published.
//!   [`routes::identity`] is the local identity service (clouds.yaml logins,
//!   local auth mode only).
//! - [`auth`]: the `X-Auth-Token` extractor and the [`auth::Authenticator`]:
//!   our token table (with [`token_cache`]) or [`keystone`].
//! - [`extract`]: `Path` and `Query` whose rejections are our fault bodies.
//! - [`action`]: the action body's parser (pure; fuzzed by `fuzz/`).
//! - [`error`]: the one error type, every conversion into it, and its one
//!   mapping to OpenStack fault bodies; [`error::responses`] describes those
//!   bodies to the OpenAPI document.
//! - [`openapi`]: the OpenAPI document, made from the routes' list; served at
//!   `/openapi.json` by [`routes::document`].
//!
//! The modules depend on each other without cycles: the leaves ([`action`],
//! [`metrics`], [`server`], [`token_cache`]) name no other
//! module; [`error`] names only the errors it converts; [`state`] names the
//! parts it holds; [`routes`] names [`state`] but [`state`] does not name
//! [`routes`]; and [`openapi`] (the document) and [`startup`] (the process)
//! sit on top.
//!
//! Its tests run it in-process, with a real worker, through the dev-only
//! `shutoff-testkit` (`TestApp`); nothing here exists for tests.

pub mod action;
pub mod auth;
pub mod error;
pub mod extract;
pub mod keystone;
pub mod limits;
pub mod metrics;
pub mod openapi;
pub mod request_id;
pub mod routes;
pub mod server;
pub mod settings;
pub mod startup;
pub mod state;
pub mod token_cache;

pub use settings::Settings;
pub use startup::Application;
pub use state::AppState;
