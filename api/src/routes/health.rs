//! `/healthz`: the process is alive. `/readyz`: it can reach PostgreSQL and
//! RabbitMQ right now (an orchestrator should not route to it otherwise).

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use shutoff_core::broker::Publisher;
use shutoff_core::readiness::Readiness;
use sqlx::PgPool;
use utoipa::ToSchema;

/// `{"status": "ok"}`
#[derive(Debug, Serialize, ToSchema)]
pub struct Alive {
    #[schema(example = "ok")]
    pub status: &'static str,
}

/// The process is alive.
#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, description = "Alive.", body = Alive)))]
pub async fn alive() -> Json<Alive> {
    Json(Alive { status: "ok" })
}

/// Whether PostgreSQL and RabbitMQ can be reached right now.
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses(
        (status = 200, description = "Ready: both reachable.", body = Readiness),
        (status = 503, description = "Not ready: `database` or `broker` is false.", body = Readiness),
    ))]
pub async fn ready(
    State(pool): State<PgPool>,
    State(publisher): State<Arc<Publisher>>,
) -> (StatusCode, Json<Readiness>) {
    let db = shutoff_core::store::ping(&pool, Duration::from_secs(2)).await;
    let broker = tokio::time::timeout(Duration::from_secs(2), publisher.channel())
        .await
        .is_ok_and(|r| r.is_ok());
    let readiness = Readiness::new(db, broker);
    let status = StatusCode::from_u16(readiness.status_code()).expect("200 or 503");
    (status, Json(readiness))
}
