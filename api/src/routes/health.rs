//! `/healthz`: the process is alive. `/readyz`: it can reach PostgreSQL and
//! RabbitMQ right now (an orchestrator should not route to it otherwise).

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};
use shutoff_core::readiness::Readiness;

use crate::startup::AppState;

pub async fn alive() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

pub async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Readiness>) {
    let db = shutoff_core::store::ping(&state.pool, Duration::from_secs(2)).await;
    let broker = tokio::time::timeout(Duration::from_secs(2), state.publisher.channel())
        .await
        .is_ok_and(|r| r.is_ok());
    let readiness = Readiness::new(db, broker);
    let status = StatusCode::from_u16(readiness.status_code()).expect("200 or 503");
    (status, Json(readiness))
}
