//! The API contract: an OpenAPI 3.1 document made from the router's list of
//! routes ([`crate::routes::api`]: the handlers' `#[utoipa::path]` attributes
//! and the response types) and what holds for every operation, served at
//! `GET /openapi.json` and committed as `api/openapi.json` (a test fails when
//! the two differ, so the committed file cannot drift from the code).
//!
//! The fault bodies and fault responses are beside the error they describe,
//! in [`crate::error::responses`].

use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
use utoipa::openapi::{
    ContentBuilder, HeaderBuilder, ObjectBuilder, Ref, RefOr, ResponseBuilder, Type,
};
use utoipa::{Modify, OpenApi};

use crate::error::responses::{
    BadMethodFault, BadRequestFault, ComputeFault, ConflictingRequestFault, FaultDetail,
    ForbiddenFault, HeadersTooLargeFault, ItemNotFoundFault, OverLimitFault, RequestTimeoutFault,
    ServiceUnavailableFault, UnauthorizedFault, UriTooLongFault,
};
use crate::routes;

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
    tags(
        (name = "versions", description = "Version documents; no token needed."),
        (name = "servers", description = "Server documents and the stop action."),
        (name = "instance actions", description = "What was done to a server, with the worker's events."),
        (name = "health", description = "Liveness and readiness; no token needed."),
    ),
)]
struct ApiDoc;

/// The whole document: the routes' operations, then what holds for each of
/// them (the token scheme, the request id headers, the 414 and 431).
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.merge(routes::api().into_openapi());
    Common.modify(&mut doc);
    doc
}

/// The document as committed in `api/openapi.json`.
pub fn document_json() -> String {
    let mut s = document()
        .to_pretty_json()
        .expect("the OpenAPI document serialises");
    s.push('\n');
    s
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
        let doc = document();
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
        let doc = document();
        let op = doc.paths.paths["/v2/{project_id}/servers/{server_id}/action"]
            .post
            .as_ref()
            .unwrap();
        for code in ["202", "400", "401", "404", "409"] {
            assert!(op.responses.responses.contains_key(code), "{code}");
        }
    }
}
