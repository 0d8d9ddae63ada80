//! `GET .../servers/{id}/os-instance-actions[/{request_id}]`: Nova's record of
//! what was done to an instance, with the worker's events.

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use shutoff_core::ids::ServerId;
use shutoff_core::store::accept::Refusal;
use shutoff_core::store::auth::Caller;
use shutoff_core::store::reads::{self, ActionRow};
use uuid::Uuid;

use crate::auth::{Authenticated, check_project};
use crate::error::ApiError;
use crate::extract::Path;
use crate::startup::AppState;

fn ts(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S.%6f").to_string()
}

fn action_json(a: &ActionRow) -> Value {
    json!({
        "action": a.action,
        "instance_uuid": a.instance_uuid,
        "message": a.message,
        "project_id": a.project_id,
        "request_id": a.request_id,
        "start_time": ts(a.start_time),
        "updated_at": ts(a.finish_time.unwrap_or(a.start_time)),
        "user_id": a.user_id,
    })
}

async fn visible_server(
    state: &AppState,
    caller: &Caller,
    server_id: &str,
) -> Result<Uuid, ApiError> {
    let not_found = || ApiError::from(Refusal::NotFound(server_id.to_string()));
    let id = ServerId::parse(server_id).ok_or_else(not_found)?;
    reads::server(&state.pool, caller, id.0)
        .await?
        .map(|s| s.uuid)
        .ok_or_else(not_found)
}

pub async fn list(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path((project_id, server_id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    check_project(&caller, &project_id)?;
    let id = visible_server(&state, &caller, &server_id).await?;
    let actions = reads::actions(&state.pool, id).await?;
    Ok(Json(json!({
        "instanceActions": actions.iter().map(action_json).collect::<Vec<_>>()
    })))
}

pub async fn show(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path((project_id, server_id, request_id)): Path<(String, String, String)>,
) -> Result<Json<Value>, ApiError> {
    check_project(&caller, &project_id)?;
    let id = visible_server(&state, &caller, &server_id).await?;
    let (action, events) = reads::action(&state.pool, id, &request_id)
        .await?
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "Action for request_id {request_id} on instance {id} not found"
            ))
        })?;
    let mut doc = action_json(&action);
    doc["events"] = events
        .iter()
        .map(|e| {
            json!({
                "event": e.event,
                "start_time": ts(e.start_time),
                "finish_time": e.finish_time.map(ts),
                "result": e.result,
                "traceback": e.traceback,
                "details": e.details,
                "host": e.host,
            })
        })
        .collect();
    Ok(Json(json!({ "instanceAction": doc })))
}
