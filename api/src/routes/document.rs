//! `GET /openapi.json`: this API's OpenAPI document, made once at start-up
//! (by [`crate::openapi::document`]) and kept in the state.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use utoipa::openapi::OpenApi;

/// `GET /openapi.json`: this API's OpenAPI document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "versions",
    responses((status = 200, description = "This document.", content_type = "application/json", body = Object)),
)]
pub async fn openapi_json(State(document): State<Arc<OpenApi>>) -> Json<OpenApi> {
    Json(OpenApi::clone(&document))
}
