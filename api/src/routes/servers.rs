//! `GET /v2/{project_id}/servers[/detail]` and `/servers/{id}`: Nova's server
//! document, enough for the openstack CLI, openstacksdk and novaclient to find
//! a server by name and watch it reach SHUTOFF; and for an admin, where each
//! server runs (`OS-EXT-SRV-ATTR:host`, the `host` filter).

use axum::Json;
use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use chrono::{DateTime, Utc};
use std::collections::BTreeMap;

use serde::Serialize;
use sha2::{Digest, Sha224};
use shutoff_core::ids::ServerId;
use shutoff_core::policy::Caller;
use shutoff_core::policy::Refusal;
use shutoff_core::store::reads::{self, ServerRow};
use sqlx::PgPool;

use crate::auth::{Authenticated, check_project};
use crate::error::ApiError;
use crate::error::responses::{BadRequest, Forbidden, NotFound, Unauthorized, Unavailable};
use crate::extract::{Path, Query};
use crate::routes::links::{Link, base_url};
use crate::routes::list_query::{self, ListQuery};
use crate::routes::params::{ProjectPath, ServerPath};
use utoipa::ToSchema;

/// Whether the caller may know where servers run: see their host in the
/// document (Nova's policy `os_compute_api:os-extended-server-attributes`)
/// and filter a list by host (`os_compute_api:servers:allow_all_filters`).
/// Both are admin-only in Nova.
pub(crate) fn sees_hosts(caller: &Caller) -> bool {
    caller.is_admin()
}

fn nova_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn links(base: &str, project: &str, id: &str) -> Vec<Link> {
    vec![
        Link {
            rel: "self".into(),
            href: format!("{base}/v2/{project}/servers/{id}"),
        },
        Link {
            rel: "bookmark".into(),
            href: format!("{base}/{project}/servers/{id}"),
        },
    ]
}

/// The flavor reference of a server (microversion 2.1 shape).
#[derive(Debug, Serialize, ToSchema)]
pub struct FlavorRef {
    pub id: String,
    pub links: Vec<Link>,
}

/// Nova's full server document (microversion 2.1).
#[derive(Debug, Serialize, ToSchema)]
pub struct Server {
    /// The instance UUID.
    #[schema(format = Uuid)]
    pub id: String,
    pub name: String,
    /// ACTIVE, SHUTOFF, ERROR, ... derived from vm_state.
    #[schema(example = "ACTIVE")]
    pub status: String,
    pub tenant_id: String,
    pub user_id: String,
    /// `YYYY-MM-DDTHH:MM:SSZ`
    pub created: String,
    pub updated: String,
    #[serde(rename = "hostId")]
    pub host_id: String,
    #[serde(rename = "OS-EXT-STS:vm_state")]
    pub vm_state: String,
    #[serde(rename = "OS-EXT-STS:task_state")]
    pub task_state: Option<String>,
    /// 1 RUNNING, 4 SHUTDOWN (Nova's power states).
    #[serde(rename = "OS-EXT-STS:power_state")]
    pub power_state: i16,
    /// The compute host the server runs on. Admins only: absent, not null,
    /// for other callers (Nova's `os-extended-server-attributes` policy).
    #[serde(
        rename = "OS-EXT-SRV-ATTR:host",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(nullable = false, example = "sim-1")]
    pub host: Option<String>,
    /// The hypervisor's name; for shutoff, the same as the host. Admins only,
    /// as `OS-EXT-SRV-ATTR:host`.
    #[serde(
        rename = "OS-EXT-SRV-ATTR:hypervisor_hostname",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(nullable = false, example = "sim-1")]
    pub hypervisor_hostname: Option<String>,
    #[serde(rename = "OS-SRV-USG:launched_at")]
    pub launched_at: Option<String>,
    #[serde(rename = "OS-SRV-USG:terminated_at")]
    pub terminated_at: Option<String>,
    #[serde(rename = "OS-EXT-AZ:availability_zone")]
    pub availability_zone: String,
    #[serde(rename = "OS-DCF:diskConfig")]
    pub disk_config: String,
    pub locked: bool,
    pub flavor: FlavorRef,
    pub image: String,
    /// Always empty: shutoff manages no networks.
    pub addresses: BTreeMap<String, Vec<serde_json::Value>>,
    pub metadata: BTreeMap<String, String>,
    #[serde(rename = "accessIPv4")]
    pub access_ipv4: String,
    #[serde(rename = "accessIPv6")]
    pub access_ipv6: String,
    pub key_name: Option<String>,
    pub config_drive: String,
    pub progress: i32,
    pub security_groups: Vec<serde_json::Value>,
    #[serde(rename = "os-extended-volumes:volumes_attached")]
    pub volumes_attached: Vec<serde_json::Value>,
    pub links: Vec<Link>,
}

/// One server of `/servers`: id, name and links.
#[derive(Debug, Serialize, ToSchema)]
pub struct ServerBrief {
    #[schema(format = Uuid)]
    pub id: String,
    pub name: String,
    pub links: Vec<Link>,
}

/// `GET /v2/{project_id}/servers/{server_id}`
#[derive(Debug, Serialize, ToSchema)]
pub struct ServerShow {
    pub server: Server,
}

/// `GET /v2/{project_id}/servers`
#[derive(Debug, Serialize, ToSchema)]
pub struct ServerList {
    pub servers: Vec<ServerBrief>,
    /// The next page (`rel: next`), when this one is full; absent otherwise.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub servers_links: Vec<Link>,
}

/// `GET /v2/{project_id}/servers/detail`
#[derive(Debug, Serialize, ToSchema)]
pub struct ServerDetailList {
    pub servers: Vec<Server>,
    /// The next page (`rel: next`), when this one is full; absent otherwise.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub servers_links: Vec<Link>,
}

/// Nova's full server document, as `caller` may see it.
pub fn document(s: &ServerRow, base: &str, caller: &Caller) -> Server {
    let id = s.uuid.to_string();
    let host_id = hex::encode(Sha224::digest(format!("{}{}", s.project_id, s.host)));
    let host = sees_hosts(caller).then(|| s.host.clone());
    Server {
        name: s.name.clone(),
        status: s.vm_state.status().to_string(),
        tenant_id: s.project_id.clone(),
        user_id: s.user_id.clone(),
        created: nova_time(s.created_at),
        updated: nova_time(s.updated_at),
        host_id,
        vm_state: s.vm_state.to_string(),
        task_state: s.task_state.as_ref().map(|t| t.to_string()),
        power_state: s.power_state,
        hypervisor_hostname: host.clone(),
        host,
        launched_at: s
            .launched_at
            .map(|t| t.format("%Y-%m-%dT%H:%M:%S.%6f").to_string()),
        terminated_at: None,
        availability_zone: "nova".into(),
        disk_config: "MANUAL".into(),
        locked: s.locked,
        flavor: FlavorRef {
            id: s.flavor.clone(),
            links: vec![Link {
                rel: "bookmark".into(),
                href: format!("{base}/{}/flavors/{}", s.project_id, s.flavor),
            }],
        },
        image: s.image.clone(),
        addresses: BTreeMap::new(),
        metadata: BTreeMap::new(),
        access_ipv4: String::new(),
        access_ipv6: String::new(),
        key_name: None,
        config_drive: String::new(),
        progress: 0,
        security_groups: Vec::new(),
        volumes_attached: Vec::new(),
        links: links(base, &s.project_id, &id),
        id,
    }
}

/// A page of a list: the rows, and the link to the next page if it is full.
struct Page {
    rows: Vec<ServerRow>,
    next: Vec<Link>,
}

/// The rows a list shows, after the project check, and the next page's link
/// (Nova's: the same query with `marker` = the last server, when the page
/// holds `limit` servers).
async fn visible_servers(
    pool: &PgPool,
    caller: &Caller,
    project_id: &str,
    q: &ListQuery,
    raw_query: Option<&str>,
    page_url: &str,
    detail: bool,
) -> Result<Page, ApiError> {
    check_project(caller, project_id)?;
    let mut filter = list_query::filter(q, raw_query, caller, detail)?;
    if let Some(m) = &q.marker {
        let not_found = || ApiError::BadRequest(format!("marker [{m}] not found"));
        let id = ServerId::parse(m).ok_or_else(not_found)?;
        reads::server(pool, caller, id.0)
            .await?
            .filter(|row| filter.all_projects || row.project_id == caller.project_id.as_str())
            .ok_or_else(not_found)?;
        filter.marker = Some(id.0);
    }
    let rows = reads::servers(pool, caller, &filter).await?;
    let next = match rows.last() {
        Some(last) if filter.limit > 0 && rows.len() as i64 == filter.limit => vec![Link {
            rel: "next".into(),
            href: format!("{page_url}?{}", next_query(raw_query, last.uuid)),
        }],
        _ => Vec::new(),
    };
    Ok(Page { rows, next })
}

/// The request's query with `marker` replaced by the page's last server.
fn next_query(raw_query: Option<&str>, last: uuid::Uuid) -> String {
    let mut next = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in url::form_urlencoded::parse(raw_query.unwrap_or("").as_bytes()) {
        if k != "marker" {
            next.append_pair(&k, &v);
        }
    }
    next.append_pair("marker", &last.to_string());
    next.finish()
}

/// `GET /v2/{project_id}/servers`: id, name and links of each server.
#[utoipa::path(
    get,
    path = "/v2/{project_id}/servers",
    tag = "servers",
    params(ProjectPath, ListQuery),
    responses(
        (status = 200, description = "The project's servers, newest first.", body = ServerList),
        BadRequest, Unauthorized, Forbidden, NotFound, Unavailable,
    ),
    security(("token" = [])),
)]
pub async fn list(
    State(pool): State<PgPool>,
    Authenticated(caller): Authenticated,
    Path(project_id): Path<String>,
    Query(q): Query<ListQuery>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Json<ServerList>, ApiError> {
    let base = base_url(&headers);
    let page_url = format!("{base}/v2/{project_id}/servers");
    let page = visible_servers(
        &pool,
        &caller,
        &project_id,
        &q,
        raw.as_deref(),
        &page_url,
        false,
    )
    .await?;
    let servers = page
        .rows
        .iter()
        .map(|s| {
            let id = s.uuid.to_string();
            ServerBrief {
                name: s.name.clone(),
                links: links(&base, &s.project_id, &id),
                id,
            }
        })
        .collect();
    Ok(Json(ServerList {
        servers,
        servers_links: page.next,
    }))
}

/// `GET /v2/{project_id}/servers/detail`: the full document of each server.
#[utoipa::path(
    get,
    path = "/v2/{project_id}/servers/detail",
    tag = "servers",
    params(ProjectPath, ListQuery),
    responses(
        (status = 200, description = "The project's servers, newest first.", body = ServerDetailList),
        BadRequest, Unauthorized, Forbidden, NotFound, Unavailable,
    ),
    security(("token" = [])),
)]
pub async fn list_detail(
    State(pool): State<PgPool>,
    Authenticated(caller): Authenticated,
    Path(project_id): Path<String>,
    Query(q): Query<ListQuery>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Json<ServerDetailList>, ApiError> {
    let base = base_url(&headers);
    let page_url = format!("{base}/v2/{project_id}/servers/detail");
    let page = visible_servers(
        &pool,
        &caller,
        &project_id,
        &q,
        raw.as_deref(),
        &page_url,
        true,
    )
    .await?;
    let servers = page
        .rows
        .iter()
        .map(|s| document(s, &base, &caller))
        .collect();
    Ok(Json(ServerDetailList {
        servers,
        servers_links: page.next,
    }))
}

/// `GET /v2/{project_id}/servers/{server_id}`: one server's document.
#[utoipa::path(
    get,
    path = "/v2/{project_id}/servers/{server_id}",
    tag = "servers",
    params(ServerPath),
    responses(
        (status = 200, description = "The server.", body = ServerShow),
        BadRequest, Unauthorized, NotFound, Unavailable,
    ),
    security(("token" = [])),
)]
pub async fn show(
    State(pool): State<PgPool>,
    Authenticated(caller): Authenticated,
    Path((project_id, server_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<ServerShow>, ApiError> {
    check_project(&caller, &project_id)?;
    let not_found = || ApiError::from(Refusal::NotFound(server_id.clone()));
    let id = ServerId::parse(&server_id).ok_or_else(not_found)?;
    let row = reads::server(&pool, &caller, id.0)
        .await?
        .ok_or_else(not_found)?;
    Ok(Json(ServerShow {
        server: document(&row, &base_url(&headers), &caller),
    }))
}
