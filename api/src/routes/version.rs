//! The version documents clients fetch before anything else (no token needed).
//! `"version": ""` tells clients we take no microversion headers.

use axum::Json;
use axum::http::HeaderMap;
use serde_json::{Value, json};

use super::base_url;

fn v2(base: &str) -> Value {
    json!({
        "id": "v2.0",
        "status": "SUPPORTED",
        "version": "",
        "min_version": "",
        "updated": "2011-01-21T11:33:21Z",
        "links": [{"rel": "self", "href": format!("{base}/v2/")}],
        "media-types": [{"base": "application/json", "type": "application/vnd.openstack.compute+json;version=2"}],
    })
}

/// `GET /v2` and `GET /v2/{project_id}`.
pub async fn show(headers: HeaderMap) -> Json<Value> {
    Json(json!({ "version": v2(&base_url(&headers)) }))
}

/// `GET /`: the list of versions.
pub async fn root(headers: HeaderMap) -> Json<Value> {
    Json(json!({ "versions": [v2(&base_url(&headers))] }))
}
