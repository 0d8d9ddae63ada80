//! What the handlers can reach. The router holds one [`AppState`]; each
//! handler and extractor takes only the part it needs, by type (`State<PgPool>`,
//! `State<Arc<Authenticator>>`, `State<StopState>`, ...), through the
//! `FromRef` impls derived here, so none of them depends on the whole.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRef;
use shutoff_core::acceptor::Acceptor;
use shutoff_core::broker::Publisher;
use shutoff_core::relay::Relay;
use sqlx::PgPool;
use utoipa::openapi::OpenApi;

use crate::auth::Authenticator;
use crate::metrics::ApiMetrics;
use crate::server::Limits;

/// Everything the router serves with; built by [`crate::Application`].
#[derive(Clone, FromRef)]
pub struct AppState {
    /// The reads of servers and actions, and the readiness check.
    pub pool: PgPool,
    /// The readiness check's broker connection (and the rescuer's).
    pub publisher: Arc<Publisher>,
    /// Who validates tokens (`--auth`): our table or Keystone, each with its cache.
    pub auth: Arc<Authenticator>,
    /// What the stop action needs.
    pub stop: StopState,
    /// What `GET /metrics` shows.
    pub metrics: ApiMetrics,
    /// What the local identity service (`/identity`, local auth mode only)
    /// puts in its catalog.
    pub identity: IdentityConfig,
    /// What `GET /openapi.json` shows, made once at start-up.
    pub openapi: Arc<OpenApi>,
    /// Largest request body read.
    #[from_ref(skip)]
    pub max_body_bytes: usize,
    /// URI and header limits, checked before routing.
    #[from_ref(skip)]
    pub limits: Limits,
    /// Longest a request may take before it is answered 503 (if nothing it
    /// asked for has started).
    #[from_ref(skip)]
    pub request_timeout: Duration,
}

/// The local identity service's settings.
#[derive(Clone)]
pub struct IdentityConfig {
    /// Served at all: in Keystone mode the real Keystone is the identity service.
    pub enabled: bool,
    /// The region of every endpoint of the catalog (`--region-name`).
    pub region: Arc<str>,
}

/// What `POST .../action` needs to accept a stop and publish it.
#[derive(Clone)]
pub struct StopState {
    /// Stop acceptance, group-committed.
    pub acceptor: Arc<Acceptor>,
    /// Recorded on each job: attempts before the stop is recorded as failed.
    pub max_attempts: i32,
    /// Publishes the accepted job, now or once the broker is back.
    pub relay: Arc<Relay>,
    /// Counts the accepted stops (shares the counters of [`AppState::metrics`]).
    pub metrics: ApiMetrics,
}
