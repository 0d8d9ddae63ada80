//! The version documents clients fetch before anything else (no token needed).
//! `"version": ""` tells clients we take no microversion headers.

use axum::Json;
use axum::http::HeaderMap;
use serde::Serialize;
use utoipa::ToSchema;

use crate::routes::links::{Link, base_url};
use crate::routes::params::ProjectPath;

/// A media type a version speaks.
#[derive(Debug, Serialize, ToSchema)]
pub struct MediaType {
    pub base: String,
    #[serde(rename = "type")]
    pub media_type: String,
}

/// One API version, as Nova describes it.
#[derive(Debug, Serialize, ToSchema)]
pub struct Version {
    #[schema(example = "v2.0")]
    pub id: String,
    #[schema(example = "SUPPORTED")]
    pub status: String,
    /// Empty: no microversions.
    pub version: String,
    pub min_version: String,
    pub updated: String,
    pub links: Vec<Link>,
    #[serde(rename = "media-types")]
    pub media_types: Vec<MediaType>,
}

/// `GET /v2[/{project_id}]`
#[derive(Debug, Serialize, ToSchema)]
pub struct VersionShow {
    pub version: Version,
}

/// `GET /`
#[derive(Debug, Serialize, ToSchema)]
pub struct VersionList {
    pub versions: Vec<Version>,
}

fn v2(base: &str) -> Version {
    Version {
        id: "v2.0".into(),
        status: "SUPPORTED".into(),
        version: String::new(),
        min_version: String::new(),
        updated: "2011-01-21T11:33:21Z".into(),
        links: vec![Link {
            rel: "self".into(),
            href: format!("{base}/v2/"),
        }],
        media_types: vec![MediaType {
            base: "application/json".into(),
            media_type: "application/vnd.openstack.compute+json;version=2".into(),
        }],
    }
}

/// The v2 version document, served under four paths.
fn v2_document(headers: &HeaderMap) -> Json<VersionShow> {
    Json(VersionShow {
        version: v2(&base_url(headers)),
    })
}

/// `GET /`: the list of versions.
#[utoipa::path(get, path = "/", tag = "versions",
    responses((status = 200, description = "The versions this API speaks.", body = VersionList)))]
pub async fn root(headers: HeaderMap) -> Json<VersionList> {
    Json(VersionList {
        versions: vec![v2(&base_url(&headers))],
    })
}

// The same document under four paths, each its own operation. No doc
// comments: utoipa would make them the operations' summaries.

#[utoipa::path(get, path = "/v2", tag = "versions",
    responses((status = 200, description = "The v2 version document.", body = VersionShow)))]
pub async fn doc_v2(headers: HeaderMap) -> Json<VersionShow> {
    v2_document(&headers)
}

#[utoipa::path(get, path = "/v2/", tag = "versions",
    responses((status = 200, description = "The v2 version document.", body = VersionShow)))]
pub async fn doc_v2_slash(headers: HeaderMap) -> Json<VersionShow> {
    v2_document(&headers)
}

#[utoipa::path(get, path = "/v2/{project_id}", tag = "versions", params(ProjectPath),
    responses((status = 200, description = "The v2 version document (any project id).", body = VersionShow)))]
pub async fn doc_v2_project(headers: HeaderMap) -> Json<VersionShow> {
    v2_document(&headers)
}

#[utoipa::path(get, path = "/v2/{project_id}/", tag = "versions", params(ProjectPath),
    responses((status = 200, description = "The v2 version document (any project id).", body = VersionShow)))]
pub async fn doc_v2_project_slash(headers: HeaderMap) -> Json<VersionShow> {
    v2_document(&headers)
}
