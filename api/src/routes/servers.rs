//! `GET /v2/{project_id}/servers[/detail]` and `/servers/{id}`: Nova's server
//! document, enough for the openstack CLI, openstacksdk and novaclient to find
//! a server by name and watch it reach SHUTOFF; and for an admin, where each
//! server runs (`OS-EXT-SRV-ATTR:host`, the `host` filter).

use axum::Json;
use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use chrono::{DateTime, Utc};
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha224};
use shutoff_core::ids::ServerId;
use shutoff_core::policy::Caller;
use shutoff_core::policy::Refusal;
use shutoff_core::state::VmState;
use shutoff_core::store::reads::{self, ServerFilter, ServerRow, SortKey};
use sqlx::PgPool;

use crate::auth::{Authenticated, check_project};
use crate::error::ApiError;
use crate::error::responses::{BadRequest, Forbidden, NotFound, Unauthorized, Unavailable};
use crate::extract::{Path, Query};
use crate::routes::links::{Link, base_url};
use crate::routes::params::{ProjectPath, ServerPath};
use utoipa::{IntoParams, ToSchema};

/// The filters and paging of a server list, as Nova takes them (others,
/// such as `ip` or `flavor`, are ignored, as Nova ignores the filters a
/// caller may not use).
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Servers whose name contains this text (case-sensitive).
    name: Option<String>,
    /// Servers on this compute host (what `openstack server list --host`
    /// sends), 1 to 255 characters. Only an admin's filter applies: as Nova
    /// does for filters its policy does not allow the caller, another
    /// caller's is ignored (but still checked).
    #[param(min_length = 1, max_length = 255)]
    host: Option<String>,
    /// Servers with this status (`ACTIVE`, `SHUTOFF`, `ERROR`, ...; any
    /// case). An unknown status lists nothing, as in Nova before 2.38;
    /// `DELETED` is for admins only (403).
    status: Option<String>,
    /// Every project's servers (`openstack server list --all-projects`):
    /// true for an empty value or one of `1 t true y yes on`, false for
    /// `0 f false n no off` (any case); admins only (403).
    all_tenants: Option<String>,
    /// Servers changed at or after this ISO 8601 time, deleted ones included.
    #[serde(rename = "changes-since")]
    #[param(rename = "changes-since")]
    changes_since: Option<String>,
    /// The order: `created_at` (default), `updated_at`, `display_name`,
    /// `uuid`, `vm_state`, `power_state`, `host` (admins; ignored for others).
    sort_key: Option<String>,
    /// `desc` (default) or `asc`.
    sort_dir: Option<String>,
    /// The id of the last server of the previous page: this page starts after it.
    marker: Option<String>,
    /// At most this many servers (0 to 1000; larger values mean 1000). A
    /// full page links to the next one in `servers_links`.
    #[param(minimum = 0)]
    limit: Option<i64>,
    /// Admins: only deleted servers when true (`1 t true y yes on`); others'
    /// is ignored, as in Nova.
    deleted: Option<String>,
    /// Admins: servers of this project (with `all_tenants`, what
    /// `openstack server list --project` sends); others' is ignored.
    project_id: Option<String>,
    /// The same as `project_id` (Nova's older name).
    tenant_id: Option<String>,
    /// Admins: servers of this user; others' is ignored.
    user_id: Option<String>,
    /// Admins: servers in this vm_state (`active`, `stopped`, ...); others'
    /// is ignored.
    vm_state: Option<String>,
    /// Admins: servers in this task_state (`powering-off`, ...); others' is ignored.
    task_state: Option<String>,
    /// Admins: servers in this power state (1 running, 4 shutdown, ...);
    /// others' is ignored.
    power_state: Option<i16>,
}

/// Nova's list filters that shutoff cannot apply (it has no networks,
/// images, flavors, zones, keys, tags...): refused with a 400 rather than
/// ignored, so that a filtered list is never silently a full one.
const UNSUPPORTED_FILTERS: &[&str] = &[
    "ip",
    "ip6",
    "image",
    "flavor",
    "reservation_id",
    "availability_zone",
    "key_name",
    "config_drive",
    "progress",
    "instance_name",
    "node",
    "locked",
    "tags",
    "tags-any",
    "not-tags",
    "not-tags-any",
    "changes-before",
    "access_ip_v4",
    "access_ip_v6",
    "launched_at",
    "terminated_at",
    "created_at",
    "uuid",
    "description",
];

const MAX_LIMIT: i64 = 1000;

/// Nova's `instances.host` is a `String(255)`.
const MAX_HOST_CHARS: usize = 255;

/// Whether the caller may know where servers run: see their host in the
/// document (Nova's policy `os_compute_api:os-extended-server-attributes`)
/// and filter a list by host (`os_compute_api:servers:allow_all_filters`).
/// Both are admin-only in Nova.
fn sees_hosts(caller: &Caller) -> bool {
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
    if let Some(key) = url::form_urlencoded::parse(raw_query.unwrap_or("").as_bytes())
        .map(|(k, _)| k)
        .find(|k| UNSUPPORTED_FILTERS.contains(&k.as_ref()))
    {
        return Err(ApiError::BadRequest(format!(
            "Invalid filter field: {key}. shutoff filters servers by name, status, host, \
             changes-since, all_tenants, deleted, project_id, user_id, vm_state, task_state \
             and power_state only."
        )));
    }
    let limit = match q.limit {
        Some(l) if l < 0 => {
            return Err(ApiError::BadRequest(
                "Invalid input for query parameters limit: it must be 0 or more.".into(),
            ));
        }
        Some(l) => l.min(MAX_LIMIT),
        None => MAX_LIMIT,
    };
    let name = q.name.as_deref().map(checked_name).transpose()?;
    let host = q.host.as_deref().map(checked_host).transpose()?;
    let all_projects = q
        .all_tenants
        .as_deref()
        .map(all_tenants)
        .transpose()?
        .unwrap_or(false);
    if all_projects && !caller.is_admin() {
        let op = if detail { "detail" } else { "index" };
        return Err(ApiError::Forbidden(format!(
            "Policy doesn't allow os_compute_api:servers:{op}:get_all_tenants to be performed."
        )));
    }
    let changes_since = q.changes_since.as_deref().map(changes_since).transpose()?;
    let (sort, descending) = sort_order(q, caller)?;
    let mut vm_states = q.status.as_deref().map(vm_states_of);
    let mut deleted = vm_states
        .as_ref()
        .is_some_and(|v| v.contains(&VmState::Deleted));
    if deleted && !caller.is_admin() {
        return Err(ApiError::Forbidden(
            "Only administrators may list deleted instances".into(),
        ));
    }
    // The admin-only filters (Nova drops them for other callers).
    let admin = caller.is_admin();
    fn only(v: &Option<String>, admin: bool) -> Option<&str> {
        v.as_deref().filter(|_| admin).map(str::trim)
    }
    if let Some(state) = only(&q.vm_state, admin) {
        let wanted: Vec<VmState> = VmState::parse(state).into_iter().collect();
        vm_states = Some(match vm_states {
            Some(v) => v.into_iter().filter(|s| wanted.contains(s)).collect(),
            None => wanted,
        });
    }
    if only(&q.deleted, admin).is_some_and(truthy) {
        deleted = true;
        vm_states = Some(vec![VmState::Deleted]);
    }
    for (key, value) in [
        ("project_id", &q.project_id),
        ("tenant_id", &q.tenant_id),
        ("user_id", &q.user_id),
        ("task_state", &q.task_state),
    ] {
        if value.as_deref().is_some_and(|v| v.contains('\0')) {
            return Err(ApiError::BadRequest(format!(
                "Invalid filter field: {key}."
            )));
        }
    }
    let marker = match &q.marker {
        None => None,
        Some(m) => {
            let not_found = || ApiError::BadRequest(format!("marker [{m}] not found"));
            let id = ServerId::parse(m).ok_or_else(not_found)?;
            reads::server(pool, caller, id.0)
                .await?
                .filter(|row| all_projects || row.project_id == caller.project_id.as_str())
                .ok_or_else(not_found)?;
            Some(id.0)
        }
    };
    let filter = ServerFilter {
        all_projects,
        name,
        host: host.filter(|_| sees_hosts(caller)),
        vm_states,
        changes_since,
        deleted,
        project: only(&q.project_id, admin).or(only(&q.tenant_id, admin)),
        user_id: only(&q.user_id, admin),
        task_state: only(&q.task_state, admin),
        power_state: q.power_state.filter(|_| admin),
        sort,
        descending,
        marker,
        limit,
    };
    let rows = reads::servers(pool, caller, &filter).await?;
    let next = match rows.last() {
        Some(last) if limit > 0 && rows.len() as i64 == limit => vec![Link {
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

/// oslo's `bool_from_string` (not strict): anything else is false.
fn truthy(value: &str) -> bool {
    matches!(
        value.to_ascii_lowercase().as_str(),
        "1" | "t" | "true" | "y" | "yes" | "on"
    )
}

/// oslo's `bool_from_string(strict=True)`, as Nova reads `all_tenants`; an
/// empty value turns it on.
fn all_tenants(value: &str) -> Result<bool, ApiError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "" | "1" | "t" | "true" | "y" | "yes" | "on" => Ok(true),
        "0" | "f" | "false" | "n" | "no" | "off" => Ok(false),
        _ => Err(ApiError::BadRequest(format!(
            "Invalid input for query parameters all_tenants. Unrecognized value '{value}', \
             acceptable values are: '0', '1', 'f', 'false', 'n', 'no', 'off', 'on', 't', 'true', 'y', 'yes'"
        ))),
    }
}

/// An ISO 8601 time: with an offset or `Z`, or without (UTC), or a date.
fn changes_since(value: &str) -> Result<DateTime<Utc>, ApiError> {
    let v = value.trim();
    DateTime::parse_from_rfc3339(v)
        .map(|t| t.with_timezone(&Utc))
        .ok()
        .or_else(|| {
            chrono::NaiveDateTime::parse_from_str(v, "%Y-%m-%dT%H:%M:%S%.f")
                .ok()
                .map(|t| t.and_utc())
        })
        .or_else(|| {
            chrono::NaiveDate::parse_from_str(v, "%Y-%m-%d")
                .ok()
                .and_then(|d| d.and_hms_opt(0, 0, 0))
                .map(|t| t.and_utc())
        })
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "Invalid input for query parameters changes-since. Value: {value}. \
                 '{value}' is not a 'date-time'"
            ))
        })
}

/// The vm_states a `status` stands for (none for an unknown status).
fn vm_states_of(status: &str) -> Vec<VmState> {
    VmState::ALL
        .iter()
        .copied()
        .filter(|s| s.status().eq_ignore_ascii_case(status.trim()))
        .collect()
}

/// Nova's `sort_key` and `sort_dir`; `host` is an admin's key and ignored
/// for others, as Nova ignores the sort keys its policy hides.
fn sort_order(q: &ListQuery, caller: &Caller) -> Result<(SortKey, bool), ApiError> {
    let key = match q.sort_key.as_deref() {
        None => SortKey::CreatedAt,
        Some(k) => match SortKey::parse(k) {
            Some(SortKey::Host) if !sees_hosts(caller) => SortKey::CreatedAt,
            Some(key) => key,
            None => {
                return Err(ApiError::BadRequest(format!(
                    "Invalid input for query parameters sort_key. Value: {k}. shutoff sorts by \
                     created_at, updated_at, display_name, uuid, vm_state, power_state or host."
                )));
            }
        },
    };
    let descending = match q.sort_dir.as_deref() {
        None | Some("desc") => true,
        Some("asc") => false,
        Some(d) => {
            return Err(ApiError::BadRequest(format!(
                "Invalid input for query parameters sort_dir. Value: {d}. It must be asc or desc."
            )));
        }
    };
    Ok((key, descending))
}

/// PostgreSQL text cannot hold NUL, so a name with one matches nothing we
/// could store; it is refused rather than sent to the database.
fn checked_name(name: &str) -> Result<&str, ApiError> {
    if name.contains('\0') {
        return Err(ApiError::BadRequest("Invalid filter field: name.".into()));
    }
    Ok(name)
}

/// A host name as `instances.host` could hold it. Checked for every caller,
/// as Nova checks the query before it drops the filters a caller may not use.
fn checked_host(host: &str) -> Result<&str, ApiError> {
    let chars = host.chars().count();
    let problem = if host.contains('\0') {
        "contains NUL".to_string()
    } else if chars == 0 {
        "is empty".to_string()
    } else if chars > MAX_HOST_CHARS {
        format!("is {chars} characters long")
    } else {
        return Ok(host);
    };
    Err(ApiError::BadRequest(format!(
        "Invalid input for query parameters host: the value {problem}; \
         a host name is 1 to {MAX_HOST_CHARS} characters, without NUL."
    )))
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
