//! The router: which path goes to which handler.

pub mod actions;
pub mod health;
pub mod links;
pub mod params;
pub mod servers;
pub mod stop;
pub mod version;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};

use crate::error::ApiError;
use crate::state::AppState;

pub fn router(state: AppState) -> Router {
    let max_body = state.max_body_bytes;
    let limits = state.limits;
    Router::new()
        .route("/", get(version::root))
        .route("/v2", get(version::show))
        .route("/v2/", get(version::show))
        .route("/v2/{project_id}", get(version::show))
        .route("/v2/{project_id}/", get(version::show))
        .route("/v2/{project_id}/servers", get(servers::list))
        .route("/v2/{project_id}/servers/detail", get(servers::list_detail))
        .route("/v2/{project_id}/servers/{server_id}", get(servers::show))
        .route(
            "/v2/{project_id}/servers/{server_id}/action",
            post(stop::action),
        )
        .route(
            "/v2/{project_id}/servers/{server_id}/os-instance-actions",
            get(actions::list),
        )
        .route(
            "/v2/{project_id}/servers/{server_id}/os-instance-actions/{request_id}",
            get(actions::show),
        )
        .route("/healthz", get(health::alive))
        .route("/readyz", get(health::ready))
        .route("/metrics", get(crate::metrics::scrape))
        .route("/openapi.json", get(crate::openapi::openapi_json))
        // Every route above: a known path with another method is a 405
        // fault body (axum adds the Allow header).
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .fallback(|| async { ApiError::NotFound("The resource could not be found.".into()) })
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn_with_state(
            limits,
            crate::limits::layer,
        ))
        .layer(axum::middleware::from_fn(crate::request_id::layer))
        // Outermost, so timed-out and refused requests are counted too.
        .layer(axum::middleware::from_fn_with_state(
            state.metrics.clone(),
            crate::metrics::track,
        ))
        .with_state(state)
}
