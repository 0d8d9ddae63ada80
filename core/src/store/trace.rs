//! What `shutoff-admin trace` reads: every row one stop left behind (its
//! job, action, event, the job's transitions, faults and dead letters), by
//! request id or for a server's last stops. Read-only; the timeline built
//! from these rows is the admin tool's business.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use crate::ids::RequestId;
use crate::store::reads::EventRow;

/// A stop's job with its action and its instance, as the trace shows it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StopRow {
    pub job_id: Uuid,
    pub action_id: i64,
    pub request_id: String,
    pub instance_uuid: Uuid,
    pub instance_name: String,
    /// The instance's host now (where its stops go).
    pub instance_host: String,
    /// The host the job is for and was carried out on (none for jobs older
    /// than host-aware routing).
    pub job_host: Option<String>,
    pub state: String,
    pub attempts: i32,
    pub max_attempts: i32,
    pub last_error: Option<String>,
    pub worker: Option<String>,
    pub created_at: DateTime<Utc>,
    /// When RabbitMQ confirmed the message (none: never confirmed on the
    /// request path; the relay or the host's worker published it, or it
    /// waits).
    pub published_at: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub action_user_id: String,
    pub action_project_id: String,
    pub action_start: DateTime<Utc>,
    pub action_finish: Option<DateTime<Utc>>,
    pub action_message: Option<String>,
    /// The instance's states now.
    pub vm_state: String,
    pub task_state: Option<String>,
    pub power_state: i16,
}

/// One state change of the job (written by the jobs trigger).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TransitionRow {
    pub from_state: Option<String>,
    pub to_state: String,
    pub attempt: i32,
    pub worker: Option<String>,
    pub error: Option<String>,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct FaultRow {
    pub code: i32,
    pub message: String,
    pub details: Option<String>,
    pub host: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// A message of this job a worker could not act on.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DeadLetterRow {
    pub queue: String,
    pub reason: String,
    pub worker: String,
    pub at: DateTime<Utc>,
}

/// Everything one stop left behind.
#[derive(Debug, Clone)]
pub struct StopTrace {
    pub stop: StopRow,
    pub transitions: Vec<TransitionRow>,
    /// The worker's `compute_stop_instance` event (one per action, however
    /// many attempts it took; its `host` is the worker that first claimed it).
    pub event: Option<EventRow>,
    pub faults: Vec<FaultRow>,
    pub dead_letters: Vec<DeadLetterRow>,
}

const STOP_SELECT: &str = "
SELECT j.id AS job_id, j.action_id, j.request_id, j.instance_uuid, i.name AS instance_name,
       i.host AS instance_host, j.host AS job_host, j.state, j.attempts, j.max_attempts,
       j.last_error, j.worker, j.created_at, j.published_at, j.started_at, j.finished_at,
       a.user_id AS action_user_id, a.project_id AS action_project_id,
       a.start_time AS action_start, a.finish_time AS action_finish,
       a.message AS action_message, i.vm_state, i.task_state, i.power_state
  FROM jobs j
  JOIN instance_actions a ON a.id = j.action_id
  JOIN instances i ON i.uuid = j.instance_uuid";

/// By the hash index `jobs_request`.
pub(crate) fn by_request_sql() -> String {
    format!("{STOP_SELECT} WHERE j.request_id = $1")
}

/// Through the server's actions (newest first by their growing id), and
/// from each to its job by `jobs_action`.
pub(crate) fn by_instance_sql() -> String {
    format!("{STOP_SELECT} WHERE a.instance_uuid = $1 ORDER BY a.id DESC LIMIT $2")
}

/// The stop accepted under `request_id`, if any (a refused request leaves
/// no row, and `prune` removes old finished ones).
pub async fn by_request(
    pool: &PgPool,
    request_id: &RequestId,
) -> Result<Option<StopTrace>, sqlx::Error> {
    let stop: Option<StopRow> = sqlx::query_as(sqlx::AssertSqlSafe(by_request_sql()))
        .bind(request_id.as_str())
        .fetch_optional(pool)
        .await?;
    match stop {
        Some(stop) => Ok(Some(rest_of(pool, stop).await?)),
        None => Ok(None),
    }
}

/// The server's last `last` stops, newest first; none when it has had none
/// (or does not exist: see [`instance_exists`]).
pub async fn by_instance(
    pool: &PgPool,
    instance: Uuid,
    last: i64,
) -> Result<Vec<StopTrace>, sqlx::Error> {
    let stops: Vec<StopRow> = sqlx::query_as(sqlx::AssertSqlSafe(by_instance_sql()))
        .bind(instance)
        .bind(last)
        .fetch_all(pool)
        .await?;
    let mut out = Vec::with_capacity(stops.len());
    for stop in stops {
        out.push(rest_of(pool, stop).await?);
    }
    Ok(out)
}

/// Whether a server with this uuid was ever registered (deleted ones too:
/// their stops are still history).
pub async fn instance_exists(pool: &PgPool, instance: Uuid) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM instances WHERE uuid = $1)")
        .bind(instance)
        .fetch_one(pool)
        .await
}

async fn rest_of(pool: &PgPool, stop: StopRow) -> Result<StopTrace, sqlx::Error> {
    let transitions = sqlx::query_as(
        "SELECT from_state, to_state, attempt, worker, error, at
           FROM job_transitions WHERE job_id = $1 ORDER BY id",
    )
    .bind(stop.job_id)
    .fetch_all(pool)
    .await?;
    let event = sqlx::query_as(
        "SELECT event, start_time, finish_time, result, traceback, details, host
           FROM instance_actions_events
          WHERE action_id = $1 AND event = 'compute_stop_instance'",
    )
    .bind(stop.action_id)
    .fetch_optional(pool)
    .await?;
    let faults = sqlx::query_as(
        "SELECT code, message, details, host, created_at FROM instance_faults
          WHERE instance_uuid = $1 AND request_id = $2 ORDER BY id",
    )
    .bind(stop.instance_uuid)
    .bind(&stop.request_id)
    .fetch_all(pool)
    .await?;
    // Workers record the message id, which is the job id.
    let dead_letters = sqlx::query_as(
        "SELECT queue, reason, worker, at FROM dead_letters WHERE message_id = $1 ORDER BY id",
    )
    .bind(stop.job_id.to_string())
    .fetch_all(pool)
    .await?;
    Ok(StopTrace {
        stop,
        transitions,
        event,
        faults,
        dead_letters,
    })
}
