//! What the GET endpoints show: servers and instance actions.

use chrono::{DateTime, Utc};
use sqlx::{AssertSqlSafe, PgPool};
use uuid::Uuid;

use crate::policy::Caller;
use crate::state::{TaskState, VmState};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ServerRow {
    pub uuid: Uuid,
    pub project_id: String,
    pub user_id: String,
    pub name: String,
    pub host: String,
    pub vm_state: VmState,
    pub task_state: Option<TaskState>,
    pub power_state: i16,
    pub launched_at: Option<DateTime<Utc>>,
    pub locked: bool,
    pub flavor: String,
    pub image: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

// Column lists are constants, so the formatted queries below are safe.
const SERVER_COLUMNS: &str =
    "uuid, project_id, user_id, name, host, vm_state, task_state, power_state,
    launched_at, locked, flavor, image, created_at, updated_at";

/// A server the caller may see (its own project's, or any for an admin).
pub async fn server(
    pool: &PgPool,
    caller: &Caller,
    id: Uuid,
) -> Result<Option<ServerRow>, sqlx::Error> {
    sqlx::query_as(AssertSqlSafe(format!(
        "SELECT {SERVER_COLUMNS} FROM instances
          WHERE uuid = $1 AND vm_state <> 'deleted' AND ($2 OR project_id = $3)"
    )))
    .bind(id)
    .bind(caller.is_admin())
    .bind(caller.project_id.as_str())
    .fetch_optional(pool)
    .await
}

/// Which servers a list shows, as the API checked it.
#[derive(Debug, Clone)]
pub struct ServerFilter<'a> {
    /// Every project's servers (Nova's `all_tenants`; the API lets only
    /// admins ask), instead of the caller's project's.
    pub all_projects: bool,
    /// Servers whose name contains this text. Nova treats `name` as a
    /// regular expression; clients then match exactly, so a substring match
    /// (case-sensitive) gives them what they need without regex injection.
    pub name: Option<&'a str>,
    /// Servers on exactly this host (`instances.host`), as Nova matches it.
    /// Who may filter by host is the API's policy, not the store's.
    pub host: Option<&'a str>,
    /// Servers in one of these vm_states (Nova's `status` filter, mapped).
    pub vm_states: Option<Vec<VmState>>,
    /// Servers changed at or after this time (Nova's `changes-since`), and
    /// then, as in Nova, deleted ones too.
    pub changes_since: Option<DateTime<Utc>>,
    /// Also deleted servers (an admin's `status=DELETED` or `deleted=true`).
    pub deleted: bool,
    /// Servers of exactly this project, user, task_state, power_state (an
    /// admin's filters).
    pub project: Option<&'a str>,
    pub user_id: Option<&'a str>,
    pub task_state: Option<&'a str>,
    pub power_state: Option<i16>,
    /// The order, and where the page starts: after this server (Nova's
    /// `marker`), in that order.
    pub sort: SortKey,
    pub descending: bool,
    pub marker: Option<Uuid>,
    /// At most this many servers.
    pub limit: i64,
}

/// The sort keys of a list (Nova's `sort_key`, those shutoff has), each
/// followed by the uuid so that the order, and so the pages, are total.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortKey {
    CreatedAt,
    UpdatedAt,
    DisplayName,
    Uuid,
    VmState,
    PowerState,
    Host,
}

impl SortKey {
    /// By Nova's name for it.
    pub fn parse(key: &str) -> Option<Self> {
        Some(match key {
            "created_at" => SortKey::CreatedAt,
            "updated_at" => SortKey::UpdatedAt,
            "display_name" => SortKey::DisplayName,
            "uuid" => SortKey::Uuid,
            "vm_state" => SortKey::VmState,
            "power_state" => SortKey::PowerState,
            "host" => SortKey::Host,
            _ => return None,
        })
    }

    /// The column, from this closed list (so the statement below is safe).
    fn column(self) -> &'static str {
        match self {
            SortKey::CreatedAt => "created_at",
            SortKey::UpdatedAt => "updated_at",
            SortKey::DisplayName => "name",
            SortKey::Uuid => "uuid",
            SortKey::VmState => "vm_state",
            SortKey::PowerState => "power_state",
            SortKey::Host => "host",
        }
    }
}

/// The servers that pass `filter`, in its order (Nova's default: newest
/// first); the caller's project's unless `filter.all_projects`.
pub async fn servers(
    pool: &PgPool,
    caller: &Caller,
    filter: &ServerFilter<'_>,
) -> Result<Vec<ServerRow>, sqlx::Error> {
    let col = filter.sort.column();
    let (dir, after) = if filter.descending {
        ("DESC", "<")
    } else {
        ("ASC", ">")
    };
    let vm_states: Option<Vec<&str>> = filter
        .vm_states
        .as_ref()
        .map(|v| v.iter().map(|s| s.as_str()).collect());
    sqlx::query_as(AssertSqlSafe(format!(
        "SELECT {SERVER_COLUMNS} FROM instances
          WHERE ($1 OR project_id = $2)
            AND (vm_state <> 'deleted' OR $3 OR $7::timestamptz IS NOT NULL)
            AND ($4::text IS NULL OR strpos(name, $4) > 0)
            AND ($5::text IS NULL OR host = $5)
            AND ($6::text[] IS NULL OR vm_state = ANY($6))
            AND ($7::timestamptz IS NULL OR updated_at >= $7)
            AND ($8::uuid IS NULL
                 OR ({col}, uuid) {after} (SELECT {col}, uuid FROM instances WHERE uuid = $8))
            AND ($10::text IS NULL OR project_id = $10)
            AND ($11::text IS NULL OR user_id = $11)
            AND ($12::text IS NULL OR task_state = $12)
            AND ($13::smallint IS NULL OR power_state = $13)
          ORDER BY {col} {dir}, uuid {dir} LIMIT $9"
    )))
    .bind(filter.all_projects)
    .bind(caller.project_id.as_str())
    .bind(filter.deleted)
    .bind(filter.name)
    .bind(filter.host)
    .bind(vm_states)
    .bind(filter.changes_since)
    .bind(filter.marker)
    .bind(filter.limit)
    .bind(filter.project)
    .bind(filter.user_id)
    .bind(filter.task_state)
    .bind(filter.power_state)
    .fetch_all(pool)
    .await
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ActionRow {
    pub id: i64,
    pub action: String,
    pub instance_uuid: Uuid,
    pub request_id: String,
    pub user_id: String,
    pub project_id: String,
    pub start_time: DateTime<Utc>,
    pub finish_time: Option<DateTime<Utc>>,
    pub message: Option<String>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct EventRow {
    pub event: String,
    pub start_time: DateTime<Utc>,
    pub finish_time: Option<DateTime<Utc>>,
    pub result: Option<String>,
    pub traceback: Option<String>,
    pub details: Option<String>,
    pub host: Option<String>,
}

macro_rules! action_columns {
    () => {
        "SELECT id, action, instance_uuid, request_id, user_id, project_id, start_time,
                finish_time, message FROM instance_actions"
    };
}
/// Both by the index `instance_actions_instance`: a server's few actions.
pub(crate) const ACTIONS_SQL: &str = concat!(
    action_columns!(),
    " WHERE instance_uuid = $1 ORDER BY start_time DESC, id DESC"
);
pub(crate) const ACTION_SQL: &str = concat!(
    action_columns!(),
    " WHERE instance_uuid = $1 AND request_id = $2"
);

pub async fn actions(pool: &PgPool, instance: Uuid) -> Result<Vec<ActionRow>, sqlx::Error> {
    sqlx::query_as(ACTIONS_SQL)
        .bind(instance)
        .fetch_all(pool)
        .await
}

pub async fn action(
    pool: &PgPool,
    instance: Uuid,
    request_id: &str,
) -> Result<Option<(ActionRow, Vec<EventRow>)>, sqlx::Error> {
    let action: Option<ActionRow> = sqlx::query_as(ACTION_SQL)
        .bind(instance)
        .bind(request_id)
        .fetch_optional(pool)
        .await?;
    let Some(action) = action else {
        return Ok(None);
    };
    let events = sqlx::query_as(
        "SELECT event, start_time, finish_time, result, traceback, details, host
           FROM instance_actions_events WHERE action_id = $1 ORDER BY start_time",
    )
    .bind(action.id)
    .fetch_all(pool)
    .await?;
    Ok(Some((action, events)))
}

/// One job as `shutoff-admin jobs` lists it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct JobRow {
    pub id: Uuid,
    pub instance_uuid: Uuid,
    pub request_id: String,
    pub state: String,
    pub attempts: i32,
    pub max_attempts: i32,
    pub last_error: Option<String>,
    pub worker: Option<String>,
    /// The host it is for (and was carried out on); none for jobs older
    /// than host-aware routing that finished before it.
    pub host: Option<String>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

pub async fn jobs(
    pool: &PgPool,
    instance: Option<Uuid>,
    limit: i64,
) -> Result<Vec<JobRow>, sqlx::Error> {
    match instance {
        Some(instance) => {
            sqlx::query_as(JOBS_OF_INSTANCE_SQL)
                .bind(instance)
                .bind(limit)
                .fetch_all(pool)
                .await
        }
        None => sqlx::query_as(JOBS_SQL).bind(limit).fetch_all(pool).await,
    }
}

// Newest first by action id, which grows with time and is indexed
// (jobs_action): with years of history, neither query reads more than the
// rows it returns. A server's jobs are found through its actions.
macro_rules! job_columns {
    () => {
        "SELECT j.id, j.instance_uuid, j.request_id, j.state, j.attempts, j.max_attempts,
                j.last_error, j.worker, j.host, j.created_at, j.finished_at"
    };
}
pub(crate) const JOBS_OF_INSTANCE_SQL: &str = concat!(
    job_columns!(),
    " FROM instance_actions a JOIN jobs j ON j.action_id = a.id
     WHERE a.instance_uuid = $1 ORDER BY a.id DESC LIMIT $2"
);
pub(crate) const JOBS_SQL: &str = concat!(
    job_columns!(),
    " FROM jobs j ORDER BY j.action_id DESC LIMIT $1"
);
