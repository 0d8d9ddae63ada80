//! The fault bodies and fault responses of the OpenAPI document, one per
//! status [`ApiError`](super::ApiError) answers with: every fault body has
//! its own schema (`{"badRequest": {"code", "message"}}` and so on) and every
//! fault status its own response type, so a handler lists the faults it can
//! answer with by name in its `#[utoipa::path]`.

use serde::Serialize;
use utoipa::{IntoResponses, ToSchema};

/// The `code` and `message` inside every fault body.
#[derive(Debug, Serialize, ToSchema)]
pub struct FaultDetail {
    /// The HTTP status again.
    pub code: u16,
    /// Nova's wording of what went wrong.
    pub message: String,
}

// One schema per fault kind, spelled out (utoipa does not see a serde
// rename made inside a macro).

/// The fault body of a 400: `{"badRequest": {"code": 400, "message": "..."}}`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BadRequestFault {
    #[serde(rename = "badRequest")]
    pub fault: FaultDetail,
}

/// The fault body of a 401: `{"unauthorized": {"code": 401, "message": "..."}}`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UnauthorizedFault {
    #[serde(rename = "unauthorized")]
    pub fault: FaultDetail,
}

/// The fault body of a 403: `{"forbidden": {"code": 403, "message": "..."}}`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ForbiddenFault {
    #[serde(rename = "forbidden")]
    pub fault: FaultDetail,
}

/// The fault body of a 404: `{"itemNotFound": {"code": 404, "message": "..."}}`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ItemNotFoundFault {
    #[serde(rename = "itemNotFound")]
    pub fault: FaultDetail,
}

/// The fault body of a 405: `{"badMethod": {"code": 405, "message": "..."}}`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BadMethodFault {
    #[serde(rename = "badMethod")]
    pub fault: FaultDetail,
}

/// The fault body of a 408: `{"requestTimeout": {"code": 408, "message": "..."}}`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestTimeoutFault {
    #[serde(rename = "requestTimeout")]
    pub fault: FaultDetail,
}

/// The fault body of a 409: `{"conflictingRequest": {"code": 409, "message": "..."}}`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConflictingRequestFault {
    #[serde(rename = "conflictingRequest")]
    pub fault: FaultDetail,
}

/// The fault body of a 413: `{"overLimit": {"code": 413, "message": "..."}}`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OverLimitFault {
    #[serde(rename = "overLimit")]
    pub fault: FaultDetail,
}

/// The fault body of a 414: `{"uriTooLong": {"code": 414, "message": "..."}}`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UriTooLongFault {
    #[serde(rename = "uriTooLong")]
    pub fault: FaultDetail,
}

/// The fault body of a 431: `{"headersTooLarge": {"code": 431, "message": "..."}}`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HeadersTooLargeFault {
    #[serde(rename = "headersTooLarge")]
    pub fault: FaultDetail,
}

/// The fault body of a 500: `{"computeFault": {"code": 500, "message": "..."}}`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ComputeFault {
    #[serde(rename = "computeFault")]
    pub fault: FaultDetail,
}

/// The fault body of a 503: `{"serviceUnavailable": {"code": 503, "message": "..."}}`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceUnavailableFault {
    #[serde(rename = "serviceUnavailable")]
    pub fault: FaultDetail,
}

/// Malformed body or URL, the URL's project is not the token's, or a
/// task_state / launch state that forbids the action.
#[derive(IntoResponses)]
#[response(status = 400, examples(
    ("project mismatch" = (value = json!({"badRequest": {"code": 400, "message": "Malformed request URL: URL's project_id '0123456789abcdef0123456789abcdef' doesn't match Context's project_id 'b72dc11461c84102b97576ae24d2b88c'"}}))),
    ("malformed body" = (value = json!({"badRequest": {"code": 400, "message": "Malformed request body"}}))),
    ("task_state" = (value = json!({"badRequest": {"code": 400, "message": "Cannot 'stop' instance 0199340e-0f3e-4612-96be-6f1861b192b5 while it is in task_state powering-off"}}))),
))]
pub struct BadRequest(pub BadRequestFault);

/// No `X-Auth-Token`, or an unknown or expired one.
#[derive(IntoResponses)]
#[response(status = 401, example = json!({"unauthorized": {"code": 401, "message": "The request you have made requires authentication."}}))]
pub struct Unauthorized(pub UnauthorizedFault);

/// The token's roles do not allow the action (a `reader` may not stop).
#[derive(IntoResponses)]
#[response(status = 403, example = json!({"forbidden": {"code": 403, "message": "Policy doesn't allow os_compute_api:servers:stop to be performed."}}))]
pub struct Forbidden(pub ForbiddenFault);

/// No such instance (or another project's, or an id that is not a UUID), or
/// the project is disabled.
#[derive(IntoResponses)]
#[response(status = 404, example = json!({"itemNotFound": {"code": 404, "message": "Instance 0199340e-0f3e-4612-96be-6f1861b192b5 could not be found."}}))]
pub struct NotFound(pub ItemNotFoundFault);

/// The body did not arrive within `--body-read-timeout-ms`.
#[derive(IntoResponses)]
#[response(status = 408, example = json!({"requestTimeout": {"code": 408, "message": "The request body was not received in time."}}))]
pub struct RequestTimeout(pub RequestTimeoutFault);

/// vm_state is not `active` or `error`, or the instance is locked.
#[derive(IntoResponses)]
#[response(status = 409, example = json!({"conflictingRequest": {"code": 409, "message": "Cannot 'stop' instance 0199340e-0f3e-4612-96be-6f1861b192b5 while it is in vm_state stopped"}}))]
pub struct Conflict(pub ConflictingRequestFault);

/// The body is larger than the limit (`--max-body-bytes`); it is not read.
#[derive(IntoResponses)]
#[response(status = 413, example = json!({"overLimit": {"code": 413, "message": "Request is too large."}}))]
pub struct PayloadTooLarge(pub OverLimitFault);

/// PostgreSQL is unreachable, or the request did not finish in time; nothing
/// was accepted.
#[derive(IntoResponses)]
#[response(status = 503, example = json!({"serviceUnavailable": {"code": 503, "message": "The database is unavailable; please retry later."}}))]
pub struct Unavailable(pub ServiceUnavailableFault);
