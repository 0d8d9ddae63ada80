//! `GET /v2/{project_id}/servers[/detail]` and `/servers/{id}`: Nova's server
//! document, enough for the openstack CLI, openstacksdk and novaclient to find
//! a server by name and watch it reach SHUTOFF.

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha224};
use shutoff_core::ids::ServerId;
use shutoff_core::state::server_status;
use shutoff_core::store::accept::Refusal;
use shutoff_core::store::auth::Caller;
use shutoff_core::store::reads::{self, ServerRow};

use super::base_url;
use crate::auth::{Authenticated, check_project};
use crate::error::ApiError;
use crate::extract::{Path, Query};
use crate::startup::AppState;

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    name: Option<String>,
    limit: Option<i64>,
}

const MAX_LIMIT: i64 = 1000;

fn nova_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn links(base: &str, project: &str, id: &str) -> Value {
    json!([
        {"rel": "self", "href": format!("{base}/v2/{project}/servers/{id}")},
        {"rel": "bookmark", "href": format!("{base}/{project}/servers/{id}")},
    ])
}

/// Nova's full server document.
pub fn document(s: &ServerRow, base: &str) -> Value {
    let id = s.uuid.to_string();
    let host_id = hex::encode(Sha224::digest(format!("{}{}", s.project_id, s.host)));
    json!({
        "id": id,
        "name": s.name,
        "status": server_status(&s.vm_state),
        "tenant_id": s.project_id,
        "user_id": s.user_id,
        "created": nova_time(s.created_at),
        "updated": nova_time(s.updated_at),
        "hostId": host_id,
        "OS-EXT-STS:vm_state": s.vm_state,
        "OS-EXT-STS:task_state": s.task_state,
        "OS-EXT-STS:power_state": s.power_state,
        "OS-SRV-USG:launched_at": s.launched_at.map(|t| t.format("%Y-%m-%dT%H:%M:%S.%6f").to_string()),
        "OS-SRV-USG:terminated_at": null,
        "OS-EXT-AZ:availability_zone": "nova",
        "OS-DCF:diskConfig": "MANUAL",
        "locked": s.locked,
        "flavor": {
            "id": s.flavor,
            "links": [{"rel": "bookmark", "href": format!("{base}/{}/flavors/{}", s.project_id, s.flavor)}],
        },
        "image": s.image,
        "addresses": {},
        "metadata": {},
        "accessIPv4": "",
        "accessIPv6": "",
        "key_name": null,
        "config_drive": "",
        "progress": 0,
        "security_groups": [],
        "os-extended-volumes:volumes_attached": [],
        "links": links(base, &s.project_id, &id),
    })
}

/// Which shape a list answers with: `/servers` (id, name, links) or
/// `/servers/detail` (full documents).
#[derive(Clone, Copy)]
enum Listing {
    Brief,
    Detail,
}

async fn list_servers(
    listing: Listing,
    state: AppState,
    caller: Caller,
    project_id: String,
    q: ListQuery,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    check_project(&caller, &project_id)?;
    let base = base_url(&headers);
    let limit = q.limit.unwrap_or(MAX_LIMIT).clamp(0, MAX_LIMIT);
    let rows = reads::servers(&state.pool, &caller, q.name.as_deref(), limit).await?;
    let servers: Vec<Value> = rows
        .iter()
        .map(|s| match listing {
            Listing::Detail => document(s, &base),
            Listing::Brief => {
                let id = s.uuid.to_string();
                json!({"id": id, "name": s.name, "links": links(&base, &s.project_id, &id)})
            }
        })
        .collect();
    Ok(Json(json!({ "servers": servers })))
}

/// `GET /v2/{project_id}/servers`
pub async fn list(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(project_id): Path<String>,
    Query(q): Query<ListQuery>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    list_servers(Listing::Brief, state, caller, project_id, q, headers).await
}

/// `GET /v2/{project_id}/servers/detail`
pub async fn list_detail(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(project_id): Path<String>,
    Query(q): Query<ListQuery>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    list_servers(Listing::Detail, state, caller, project_id, q, headers).await
}

pub async fn show(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path((project_id, server_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    check_project(&caller, &project_id)?;
    let not_found = || ApiError::from(Refusal::NotFound(server_id.clone()));
    let id = ServerId::parse(&server_id).ok_or_else(not_found)?;
    let row = reads::server(&state.pool, &caller, id.0)
        .await?
        .ok_or_else(not_found)?;
    Ok(Json(
        json!({ "server": document(&row, &base_url(&headers)) }),
    ))
}
