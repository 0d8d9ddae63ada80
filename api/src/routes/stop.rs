//! `POST /v2/{project_id}/servers/{server_id}/action` with `{"os-stop": null}`:
//! where a stop request is checked, accepted and published.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request, State};
use axum::http::StatusCode;
use shutoff_core::acceptor::StopRequest;
use shutoff_core::batch::Ticket;
use shutoff_core::ids::{RequestId, ServerId};
use shutoff_core::policy::Refusal;

use crate::action::ServerAction;
use crate::auth::{Authenticated, check_project};
use crate::error::ApiError;
use crate::error::responses::{
    BadRequest, Conflict, Forbidden, NotFound, PayloadTooLarge, RequestTimeout, Unauthorized,
    Unavailable,
};
use crate::extract::Path;
use crate::routes::params::ServerPath;
use crate::server::BodyTimedOut;
use crate::state::StopState;
use utoipa::ToSchema;

/// The body, read up to the configured limit; a larger one is refused
/// (413) without being read, one that does not arrive in time is 408, and
/// the refusals use our fault body.
pub struct ActionBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for ActionBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match Bytes::from_request(req, state).await {
            Ok(b) => Ok(ActionBody(b)),
            Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Err(ApiError::PayloadTooLarge)
            }
            Err(rejection) if BodyTimedOut::caused(&rejection) => Err(ApiError::RequestTimeout),
            Err(_) => Err(ApiError::malformed_body()),
        }
    }
}

/// `{"os-stop": null}`: the one action shutoff performs. Nova does not look
/// at the value.
#[derive(Debug, serde::Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"os-stop": null}))]
pub struct StopActionBody {
    #[serde(rename = "os-stop")]
    #[schema(required = true)]
    pub os_stop: Option<serde_json::Value>,
}

/// Stops a server: commits the stop, queues it and answers 202 at once; the
/// server reaches SHUTOFF when a worker has powered it off (watch
/// `GET /v2/{project_id}/servers/{server_id}`).
#[utoipa::path(
    post,
    path = "/v2/{project_id}/servers/{server_id}/action",
    tag = "servers",
    params(ServerPath),
    request_body(content = StopActionBody, content_type = "application/json"),
    responses(
        (status = 202, description = "Accepted: the stop is committed and queued. No body."),
        BadRequest, Unauthorized, Forbidden, NotFound, RequestTimeout, Conflict, PayloadTooLarge,
        Unavailable,
    ),
    security(("token" = [])),
)]
pub async fn action(
    State(stop): State<StopState>,
    axum::Extension(request_id): axum::Extension<RequestId>,
    axum::Extension(ticket): axum::Extension<Ticket>,
    Authenticated(caller): Authenticated,
    Path((project_id, server_id)): Path<(String, String)>,
    ActionBody(body): ActionBody,
) -> Result<StatusCode, ApiError> {
    let ServerAction::Stop = ServerAction::parse(&body)?;
    check_project(&caller, &project_id)?;
    let server = ServerId::parse(&server_id)
        .ok_or_else(|| ApiError::from(Refusal::NotFound(server_id.clone())))?;
    let request = StopRequest {
        caller: &caller,
        server,
        request_id: &request_id,
        max_attempts: stop.max_attempts,
    };
    let job = stop.acceptor.accept(request, &ticket).await?;
    stop.metrics.jobs_accepted.inc();
    tracing::info!(job.id = %job.job_id, instance.uuid = %server, user.id = %caller.user_id, "stop accepted");
    // Committed: from here the stop cannot be lost. Publishing now is the
    // fast path; if it fails the relay publishes it when the broker is back.
    stop.relay.publish_now(job).await;
    Ok(StatusCode::ACCEPTED)
}
