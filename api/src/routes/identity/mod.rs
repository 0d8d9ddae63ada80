//! The local identity service (local auth mode only): the small part of the
//! Keystone v3 API that keystoneauth, and so the `openstack` CLI,
//! openstacksdk and novaclient, need to treat shutoff as a cloud from a
//! `clouds.yaml` whose `auth_url` is `http://<api>/identity/v3`:
//!
//! - `GET /identity` (300, the version list) and `GET /identity/v3` (the v3
//!   version document): keystoneauth's discovery;
//! - `POST /identity/v3/auth/tokens`: the `token` method only, with a shutoff
//!   token, which comes back as `X-Subject-Token` (no new secret is made) with
//!   a Keystone token body and a catalog naming this API ([`token`]);
//! - `GET` (and `HEAD`) `/identity/v3/auth/tokens`: validation of
//!   `X-Subject-Token`;
//! - `GET /identity/v3/projects[/{id}]` and `/users[/{id}]`: 403, so the
//!   clients use the ids they are given ([`no_lookups`]).
//!
//! Keystone's API, not Nova's: the errors have Keystone's body shape
//! ([`IdentityFault`]), and these routes are not in the OpenAPI document
//! (which describes the compute API, the same in both auth modes). In
//! Keystone mode they are not mounted: the real Keystone is the identity
//! service.

mod request;
mod token;

use axum::Json;
use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::{Value, json};

use crate::error::{ApiError, IdentityFault};
use crate::routes::links::base_url;
use crate::state::AppState;

/// Where the identity service is mounted on the API's port.
pub const PREFIX: &str = "/identity";

/// Keystone's current v3 minor version, and the date of its document.
const V3_ID: &str = "v3.14";
const V3_UPDATED: &str = "2020-04-07T00:00:00Z";

/// The identity routes, to be nested under [`PREFIX`]; every other path
/// or method under it is answered in Keystone's error shape.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(versions))
        .route("/v3", get(v3))
        .route("/v3/", get(v3))
        .route("/v3/auth/tokens", get(token::validate).post(token::issue))
        .route("/v3/projects", get(no_lookups))
        .route("/v3/projects/{id}", get(no_lookups))
        .route("/v3/users", get(no_lookups))
        .route("/v3/users/{id}", get(no_lookups))
        .method_not_allowed_fallback(|| async {
            ApiError::from(IdentityFault::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "The method is not allowed for the requested URL.",
            ))
        })
        .fallback(|| async {
            ApiError::from(IdentityFault::new(
                StatusCode::NOT_FOUND,
                "The resource could not be found.",
            ))
        })
}

/// Projects and users are not looked up here. Keystone answers a caller its
/// policy does not let look them up with 403, and the clients then take the
/// name they were given as the id (`openstack server list --project ID`),
/// which is what a shutoff project or user id is.
async fn no_lookups() -> ApiError {
    IdentityFault::new(
        StatusCode::FORBIDDEN,
        "You are not authorized to perform the requested action: shutoff's identity service \
         does not look projects or users up; give their ids.",
    )
    .into()
}

/// `http://<host>/identity`: the root a 401's `WWW-Authenticate` names.
pub fn root_url(headers: &HeaderMap) -> String {
    format!("{}{PREFIX}", base_url(headers))
}

/// `http://<host>/identity/v3`: the `auth_url` of a clouds.yaml, and the
/// identity endpoint of the catalog.
pub fn v3_url(headers: &HeaderMap) -> String {
    format!("{}/v3", root_url(headers))
}

fn v3_version(headers: &HeaderMap) -> Value {
    json!({
        "id": V3_ID,
        "status": "stable",
        "updated": V3_UPDATED,
        "links": [{"rel": "self", "href": format!("{}/", v3_url(headers))}],
        "media-types": [{
            "base": "application/json",
            "type": "application/vnd.openstack.identity-v3+json",
        }],
    })
}

/// `GET /identity`: Keystone answers its root with 300 Multiple Choices.
async fn versions(headers: HeaderMap) -> impl IntoResponse {
    (
        StatusCode::MULTIPLE_CHOICES,
        Json(json!({"versions": {"values": [v3_version(&headers)]}})),
    )
}

/// `GET /identity/v3`
async fn v3(headers: HeaderMap) -> Json<Value> {
    Json(json!({"version": v3_version(&headers)}))
}
