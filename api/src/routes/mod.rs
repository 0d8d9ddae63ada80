//! The router: which path goes to which handler. [`api`] is the one list of
//! documented routes: the router serves it and the OpenAPI document
//! ([`crate::openapi`]) is made from it, so the two cannot disagree.

pub mod actions;
pub mod document;
pub mod health;
pub mod identity;
pub mod links;
pub mod list_query;
pub mod params;
pub mod servers;
pub mod stop;
pub mod version;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::ApiError;
use crate::state::AppState;

/// Every documented route, each at the method and path of its
/// `#[utoipa::path]`.
pub fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::default()
        .routes(routes!(version::root))
        .routes(routes!(version::doc_v2))
        .routes(routes!(version::doc_v2_slash))
        .routes(routes!(version::doc_v2_project))
        .routes(routes!(version::doc_v2_project_slash))
        .routes(routes!(servers::list))
        .routes(routes!(servers::list_detail))
        .routes(routes!(servers::show))
        .routes(routes!(stop::action))
        .routes(routes!(actions::list))
        .routes(routes!(actions::show))
        .routes(routes!(health::alive))
        .routes(routes!(health::ready))
        .routes(routes!(document::openapi_json))
}

pub fn router(state: AppState) -> Router {
    let max_body = state.max_body_bytes;
    let limits = state.limits;
    let mut router = Router::from(api())
        // Not in the document: for Prometheus, not for API clients.
        .route("/metrics", get(crate::metrics::scrape));
    if state.identity.enabled {
        // Not in the document either: Keystone's API, local auth mode only.
        router = router.nest(identity::PREFIX, identity::router());
    }
    router
        // Every route above: a known path with another method is a 405
        // fault body (axum adds the Allow header).
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .fallback(|| async { ApiError::NotFound("The resource could not be found.".into()) })
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn_with_state(
            limits,
            crate::limits::layer,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.request_timeout,
            crate::request_id::layer,
        ))
        // Outermost, so timed-out and refused requests are counted too.
        .layer(axum::middleware::from_fn_with_state(
            state.metrics.clone(),
            crate::metrics::track,
        ))
        .with_state(state)
}
