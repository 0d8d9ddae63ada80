//! The API contract: an OpenAPI 3.1 document generated from the handlers'
//! `#[utoipa::path]` attributes and the response types, served at
//! `GET /openapi.json` and committed as `api/openapi.json` (a test fails when
//! the two differ, so the committed file cannot drift from the code).
//!
//! Every fault body has its own schema (`{"badRequest": {"code", "message"}}`
//! and so on) and every fault status its own response type here, so a handler
//! lists the faults it can answer with by name.

use axum::Json;
use serde::Serialize;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
use utoipa::openapi::{
    ContentBuilder, HeaderBuilder, ObjectBuilder, Ref, RefOr, ResponseBuilder, Type,
};
use utoipa::{IntoParams, IntoResponses, Modify, OpenApi, ToSchema};

use crate::routes::{actions, health, servers, stop, version};

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

/// The project in the URL.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct ProjectPath {
    /// The project id: the token's project, 32 hex characters. Another
    /// project's id is a 400.
    #[param(example = "b72dc11461c84102b97576ae24d2b88c")]
    pub project_id: String,
}

/// The project and server in the URL.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct ServerPath {
    /// The project id: the token's project, 32 hex characters. Another
    /// project's id is a 400.
    #[param(example = "b72dc11461c84102b97576ae24d2b88c")]
    pub project_id: String,
    /// The instance UUID; anything else is a 404.
    #[param(example = "0199340e-0f3e-4612-96be-6f1861b192b5")]
    pub server_id: String,
}

/// The request id every response carries, under both of Nova's names.
const REQUEST_ID_HEADERS: [(&str, &str); 2] = [
    (
        "X-Compute-Request-Id",
        "`req-<uuid4>`: this request's id, in every log line and on the job.",
    ),
    (
        "X-OpenStack-Request-ID",
        "The same id as X-Compute-Request-Id.",
    ),
];

/// Adds what holds for every operation: the token scheme, and the request
/// id headers on every response.
struct Common;

impl Modify for Common {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "token",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-Auth-Token",
                "A token made with `shutoff-admin token create`; stored hashed.",
            ))),
        );
        for item in doc.paths.paths.values_mut() {
            let ops = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.options,
                &mut item.head,
                &mut item.patch,
                &mut item.trace,
            ];
            for op in ops.into_iter().flatten() {
                // Checked before routing, so any operation can answer them.
                for (status, description, schema) in [
                    (
                        "414",
                        "The path and query are longer than `--max-uri-bytes`.",
                        "UriTooLongFault",
                    ),
                    (
                        "431",
                        "The headers are larger than `--max-header-bytes`.",
                        "HeadersTooLargeFault",
                    ),
                ] {
                    op.responses.responses.insert(
                        status.to_string(),
                        RefOr::T(
                            ResponseBuilder::new()
                                .description(description)
                                .content(
                                    "application/json",
                                    ContentBuilder::new()
                                        .schema(Some(Ref::from_schema_name(schema)))
                                        .build(),
                                )
                                .build(),
                        ),
                    );
                }
                for resp in op.responses.responses.values_mut() {
                    let RefOr::T(resp) = resp else { continue };
                    for (name, description) in REQUEST_ID_HEADERS {
                        let schema = ObjectBuilder::new()
                            .schema_type(Type::String)
                            .pattern(Some("^req-[0-9a-f-]{36}$"));
                        resp.headers.insert(
                            name.to_string(),
                            HeaderBuilder::new()
                                .schema(schema)
                                .description(Some(description))
                                .build(),
                        );
                    }
                }
            }
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "shutoff",
        description = "An OpenStack-Compute-compatible stop-server service: \
            `POST /v2/{project_id}/servers/{server_id}/action` with `{\"os-stop\": null}`, \
            and the reads clients need around it. Every error is an OpenStack fault body; \
            every response carries `X-Compute-Request-Id` and `X-OpenStack-Request-ID`.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(
        version::root,
        version::doc_v2,
        version::doc_v2_slash,
        version::doc_v2_project,
        version::doc_v2_project_slash,
        servers::list,
        servers::list_detail,
        servers::show,
        stop::action,
        actions::list,
        actions::show,
        health::alive,
        health::ready,
        openapi_json,
    ),
    components(schemas(
        FaultDetail,
        BadRequestFault,
        UnauthorizedFault,
        ForbiddenFault,
        ItemNotFoundFault,
        BadMethodFault,
        RequestTimeoutFault,
        ConflictingRequestFault,
        OverLimitFault,
        UriTooLongFault,
        HeadersTooLargeFault,
        ComputeFault,
        ServiceUnavailableFault,
    )),
    modifiers(&Common),
    tags(
        (name = "versions", description = "Version documents; no token needed."),
        (name = "servers", description = "Server documents and the stop action."),
        (name = "instance actions", description = "What was done to a server, with the worker's events."),
        (name = "health", description = "Liveness and readiness; no token needed."),
    ),
)]
pub struct ApiDoc;

/// The document as committed in `api/openapi.json`.
pub fn document_json() -> String {
    let mut s = ApiDoc::openapi()
        .to_pretty_json()
        .expect("the OpenAPI document serialises");
    s.push('\n');
    s
}

/// `GET /openapi.json`: this API's OpenAPI document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "versions",
    responses((status = 200, description = "This document.", content_type = "application/json", body = Object)),
)]
pub async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `UPDATE_OPENAPI=1 cargo test -p shutoff-api --lib openapi` rewrites it.
    #[test]
    fn the_committed_document_is_the_generated_one() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json");
        let generated = document_json();
        if std::env::var_os("UPDATE_OPENAPI").is_some() {
            std::fs::write(path, &generated).unwrap();
        }
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == generated,
            "api/openapi.json differs from the code's document; \
             run `UPDATE_OPENAPI=1 cargo test -p shutoff-api --lib openapi` and commit it"
        );
    }

    #[test]
    fn every_route_of_the_router_is_documented() {
        let doc = ApiDoc::openapi();
        for path in [
            "/",
            "/v2",
            "/v2/",
            "/v2/{project_id}",
            "/v2/{project_id}/",
            "/v2/{project_id}/servers",
            "/v2/{project_id}/servers/detail",
            "/v2/{project_id}/servers/{server_id}",
            "/v2/{project_id}/servers/{server_id}/action",
            "/v2/{project_id}/servers/{server_id}/os-instance-actions",
            "/v2/{project_id}/servers/{server_id}/os-instance-actions/{request_id}",
            "/healthz",
            "/readyz",
            "/openapi.json",
        ] {
            assert!(
                doc.paths.paths.contains_key(path),
                "{path} is not documented"
            );
        }
        assert_eq!(doc.paths.paths.len(), 14, "a documented path has no route");
    }

    #[test]
    fn the_stop_action_has_every_status_code_of_the_spec() {
        let doc = ApiDoc::openapi();
        let op = doc.paths.paths["/v2/{project_id}/servers/{server_id}/action"]
            .post
            .as_ref()
            .unwrap();
        for code in ["202", "400", "401", "404", "409"] {
            assert!(op.responses.responses.contains_key(code), "{code}");
        }
    }
}
