//! The query of a server list, parsed once into the store's
//! [`ServerFilter`]: Nova's filters (those a caller may use), order and page
//! size, each checked, with Nova's refusals. Only the marker, which names a
//! server, is left for the handler to look up.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use shutoff_core::policy::Caller;
use shutoff_core::state::VmState;
use shutoff_core::store::reads::{ServerFilter, SortKey};
use utoipa::IntoParams;

use crate::error::ApiError;
use crate::routes::servers::sees_hosts;

/// The filters and paging of a server list, as Nova takes them. Filters
/// shutoff has nothing for are refused ([`UNSUPPORTED_FILTERS`]); other
/// unknown parameters are ignored.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Servers whose name contains this text (case-sensitive).
    pub name: Option<String>,
    /// Servers on this compute host (what `openstack server list --host`
    /// sends), 1 to 255 characters. Only an admin's filter applies: as Nova
    /// does for filters its policy does not allow the caller, another
    /// caller's is ignored (but still checked).
    #[param(min_length = 1, max_length = 255)]
    pub host: Option<String>,
    /// Servers with this status (`ACTIVE`, `SHUTOFF`, `ERROR`, ...; any
    /// case). An unknown status lists nothing, as in Nova before 2.38;
    /// `DELETED` is for admins only (403).
    pub status: Option<String>,
    /// Every project's servers (`openstack server list --all-projects`):
    /// true for an empty value or one of `1 t true y yes on`, false for
    /// `0 f false n no off` (any case); admins only (403).
    pub all_tenants: Option<String>,
    /// Servers changed at or after this ISO 8601 time, deleted ones included.
    #[serde(rename = "changes-since")]
    #[param(rename = "changes-since")]
    pub changes_since: Option<String>,
    /// The order: `created_at` (default), `updated_at`, `display_name`,
    /// `uuid`, `vm_state`, `power_state`, `host` (admins; ignored for others).
    pub sort_key: Option<String>,
    /// `desc` (default) or `asc`.
    pub sort_dir: Option<String>,
    /// The id of the last server of the previous page: this page starts after it.
    pub marker: Option<String>,
    /// At most this many servers (0 to 1000; larger values mean 1000). A
    /// full page links to the next one in `servers_links`.
    #[param(minimum = 0)]
    pub limit: Option<i64>,
    /// Admins: only deleted servers when true (`1 t true y yes on`); others'
    /// is ignored, as in Nova.
    pub deleted: Option<String>,
    /// Admins: servers of this project (with `all_tenants`, what
    /// `openstack server list --project` sends); others' is ignored.
    pub project_id: Option<String>,
    /// The same as `project_id` (Nova's older name).
    pub tenant_id: Option<String>,
    /// Admins: servers of this user; others' is ignored.
    pub user_id: Option<String>,
    /// Admins: servers in this vm_state (`active`, `stopped`, ...); others'
    /// is ignored.
    pub vm_state: Option<String>,
    /// Admins: servers in this task_state (`powering-off`, ...); others' is ignored.
    pub task_state: Option<String>,
    /// Admins: servers in this power state (1 running, 4 shutdown, ...);
    /// others' is ignored.
    pub power_state: Option<i16>,
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

/// The filter `q` asks for, as `caller` may use it (`detail` names the
/// policy of a refused `all_tenants`).
pub fn filter<'a>(
    q: &'a ListQuery,
    raw_query: Option<&str>,
    caller: &Caller,
    detail: bool,
) -> Result<ServerFilter<'a>, ApiError> {
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
    Ok(ServerFilter {
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
        marker: None,
        limit,
    })
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
