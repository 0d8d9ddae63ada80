//! `GET .../servers/{id}/os-instance-actions[/{request_id}]`: Nova's record of
//! what was done to an instance, with the worker's events.

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::Serialize;
use shutoff_core::ids::{RequestId, ServerId};
use shutoff_core::policy::Caller;
use shutoff_core::policy::Refusal;
use shutoff_core::store::reads::{self, ActionRow, EventRow};
use sqlx::PgPool;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::auth::{Authenticated, check_project};
use crate::error::ApiError;
use crate::error::responses::{BadRequest, NotFound, Unauthorized, Unavailable};
use crate::extract::Path;
use crate::routes::params::ServerPath;

fn ts(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S.%6f").to_string()
}

/// One action on an instance (`stop`), as Nova records it.
#[derive(Debug, Serialize, ToSchema)]
pub struct InstanceAction {
    #[schema(example = "stop")]
    pub action: String,
    #[schema(format = Uuid)]
    pub instance_uuid: String,
    /// `Error` when the stop failed, else null.
    pub message: Option<String>,
    pub project_id: String,
    /// The `X-Compute-Request-Id` of the request that asked for it.
    pub request_id: String,
    pub start_time: String,
    pub updated_at: String,
    pub user_id: String,
}

/// One step the worker took for an action.
#[derive(Debug, Serialize, ToSchema)]
pub struct InstanceActionEvent {
    #[schema(example = "compute_stop_instance")]
    pub event: String,
    pub start_time: String,
    pub finish_time: Option<String>,
    /// `Success` or `Error`; null while it runs.
    pub result: Option<String>,
    pub traceback: Option<String>,
    pub details: Option<String>,
    pub host: Option<String>,
}

/// An action with its events.
#[derive(Debug, Serialize, ToSchema)]
pub struct InstanceActionDetail {
    #[serde(flatten)]
    pub action: InstanceAction,
    pub events: Vec<InstanceActionEvent>,
}

/// `GET .../os-instance-actions`
#[derive(Debug, Serialize, ToSchema)]
pub struct InstanceActionList {
    #[serde(rename = "instanceActions")]
    pub instance_actions: Vec<InstanceAction>,
}

/// `GET .../os-instance-actions/{request_id}`
#[derive(Debug, Serialize, ToSchema)]
pub struct InstanceActionShow {
    #[serde(rename = "instanceAction")]
    pub instance_action: InstanceActionDetail,
}

/// The project, server and request id in the URL.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct ActionPath {
    /// The project id: the token's project.
    #[param(example = "b72dc11461c84102b97576ae24d2b88c")]
    pub project_id: String,
    /// The instance UUID; anything else is a 404.
    #[param(example = "0199340e-0f3e-4612-96be-6f1861b192b5")]
    pub server_id: String,
    /// The `req-<uuid4>` of the request; anything else is a 404.
    #[param(example = "req-a9f37c55-9161-4016-aa31-df4bb6036941")]
    pub request_id: String,
}

fn action_doc(a: &ActionRow) -> InstanceAction {
    InstanceAction {
        action: a.action.clone(),
        instance_uuid: a.instance_uuid.to_string(),
        message: a.message.clone(),
        project_id: a.project_id.clone(),
        request_id: a.request_id.clone(),
        start_time: ts(a.start_time),
        updated_at: ts(a.finish_time.unwrap_or(a.start_time)),
        user_id: a.user_id.clone(),
    }
}

fn event_doc(e: &EventRow) -> InstanceActionEvent {
    InstanceActionEvent {
        event: e.event.clone(),
        start_time: ts(e.start_time),
        finish_time: e.finish_time.map(ts),
        result: e.result.clone(),
        traceback: e.traceback.clone(),
        details: e.details.clone(),
        host: e.host.clone(),
    }
}

async fn visible_server(pool: &PgPool, caller: &Caller, server_id: &str) -> Result<Uuid, ApiError> {
    let not_found = || ApiError::from(Refusal::NotFound(server_id.to_string()));
    let id = ServerId::parse(server_id).ok_or_else(not_found)?;
    reads::server(pool, caller, id.0)
        .await?
        .map(|s| s.uuid)
        .ok_or_else(not_found)
}

/// `GET /v2/{project_id}/servers/{server_id}/os-instance-actions`: the
/// server's actions, newest first.
#[utoipa::path(
    get,
    path = "/v2/{project_id}/servers/{server_id}/os-instance-actions",
    tag = "instance actions",
    params(ServerPath),
    responses(
        (status = 200, description = "The server's actions, newest first.", body = InstanceActionList),
        BadRequest, Unauthorized, NotFound, Unavailable,
    ),
    security(("token" = [])),
)]
pub async fn list(
    State(pool): State<PgPool>,
    Authenticated(caller): Authenticated,
    Path((project_id, server_id)): Path<(String, String)>,
) -> Result<Json<InstanceActionList>, ApiError> {
    check_project(&caller, &project_id)?;
    let id = visible_server(&pool, &caller, &server_id).await?;
    let actions = reads::actions(&pool, id).await?;
    Ok(Json(InstanceActionList {
        instance_actions: actions.iter().map(action_doc).collect(),
    }))
}

/// `GET /v2/{project_id}/servers/{server_id}/os-instance-actions/{request_id}`:
/// one action with the worker's events.
#[utoipa::path(
    get,
    path = "/v2/{project_id}/servers/{server_id}/os-instance-actions/{request_id}",
    tag = "instance actions",
    params(ActionPath),
    responses(
        (status = 200, description = "The action and its events.", body = InstanceActionShow),
        BadRequest, Unauthorized, NotFound, Unavailable,
    ),
    security(("token" = [])),
)]
pub async fn show(
    State(pool): State<PgPool>,
    Authenticated(caller): Authenticated,
    Path((project_id, server_id, request_id)): Path<(String, String, String)>,
) -> Result<Json<InstanceActionShow>, ApiError> {
    check_project(&caller, &project_id)?;
    let id = visible_server(&pool, &caller, &server_id).await?;
    let not_found = || {
        let shown: String = request_id.chars().take(255).collect();
        ApiError::NotFound(format!(
            "Action for request_id {shown} on instance {id} not found"
        ))
    };
    // Only our own `req-<uuid>` shape can name an action; anything else
    // (a NUL byte PostgreSQL would refuse, a megabyte of text) is not looked up.
    let request_id_parsed = RequestId::parse(&request_id).ok_or_else(not_found)?;
    let (action, events) = reads::action(&pool, id, request_id_parsed.as_str())
        .await?
        .ok_or_else(not_found)?;
    Ok(Json(InstanceActionShow {
        instance_action: InstanceActionDetail {
            action: action_doc(&action),
            events: events.iter().map(event_doc).collect(),
        },
    }))
}
