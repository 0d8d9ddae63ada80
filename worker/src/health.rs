//! The worker's small health port: `/healthz` (alive), `/readyz` (consuming
//! from RabbitMQ and able to reach PostgreSQL) and `/metrics` (Prometheus).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use shutoff_core::readiness::Readiness;

use crate::job_store::JobStore;
use crate::metrics::WorkerMetrics;

#[derive(Clone)]
pub struct Health {
    pub store: JobStore,
    /// Set by the consumer while it is attached to the queue.
    pub consuming: Arc<AtomicBool>,
    pub metrics: WorkerMetrics,
}

pub fn router(health: Health) -> Router {
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .with_state(health)
}

async fn ready(State(h): State<Health>) -> (StatusCode, Json<Readiness>) {
    let db = h.store.ping(Duration::from_secs(2)).await;
    let broker = h.consuming.load(Ordering::SeqCst);
    let readiness = Readiness::new(db, broker);
    let status = StatusCode::from_u16(readiness.status_code()).expect("200 or 503");
    (status, Json(readiness))
}

async fn metrics(State(h): State<Health>) -> ([(header::HeaderName, &'static str); 1], String) {
    (
        [(header::CONTENT_TYPE, shutoff_core::metrics::CONTENT_TYPE)],
        h.metrics.render(),
    )
}
