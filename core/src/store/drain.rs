//! What `shutoff-admin drain` reads: a host's servers with the checks the
//! acceptor makes and the stop each may already have under way, and how the
//! drain's stops are getting on. The stops themselves are accepted by the
//! acceptor ([`crate::acceptor`]), as the API's are.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use crate::ids::{HostName, ServerId};
use crate::message::StopJob;
use crate::policy::InstanceCheck;
use crate::state::{TaskState, VmState};

/// A server on the host, with its unfinished stop if it has one.
#[derive(Debug, Clone)]
pub struct HostServer {
    pub id: ServerId,
    pub name: String,
    /// What the acceptance checks look at (project, states, lock).
    pub check: InstanceCheck,
    /// The stop under way, whoever asked for it (an earlier drain, the API).
    pub pending: Option<PendingStop>,
}

/// A stop accepted but not finished.
#[derive(Debug, Clone)]
pub struct PendingStop {
    pub job: StopJob,
    pub user_id: String,
    /// Committed but never confirmed by RabbitMQ: the relay's or the host
    /// worker's to publish, or whoever drains the host.
    pub unpublished: bool,
}

#[derive(sqlx::FromRow)]
struct Row {
    uuid: Uuid,
    name: String,
    project_id: String,
    vm_state: VmState,
    task_state: Option<TaskState>,
    launched_at: Option<DateTime<Utc>>,
    locked: bool,
    job_id: Option<Uuid>,
    request_id: Option<String>,
    user_id: Option<String>,
    unpublished: Option<bool>,
}

/// A server's unfinished job is found through its actions, newest first
/// (jobs has no index by instance).
pub(crate) const HOST_SERVERS_SQL: &str = "
SELECT i.uuid, i.name, i.project_id, i.vm_state, i.task_state, i.launched_at, i.locked,
       j.id AS job_id, j.request_id, a.user_id,
       (j.state = 'queued' AND j.published_at IS NULL) AS unpublished
  FROM instances i
  LEFT JOIN LATERAL (
      SELECT j.id, j.request_id, j.action_id, j.state, j.published_at
        FROM instance_actions ia JOIN jobs j ON j.action_id = ia.id
       WHERE ia.instance_uuid = i.uuid AND j.finished_at IS NULL
       ORDER BY ia.id DESC LIMIT 1
  ) j ON true
  LEFT JOIN instance_actions a ON a.id = j.action_id
 WHERE i.host = $1 AND i.vm_state <> $2
 ORDER BY i.name, i.uuid";

/// Every server on `host` that is not deleted, by name. A server has at
/// most one unfinished stop (the acceptance sets powering-off, which
/// refuses the next one until the stop ends).
pub async fn host_servers(pool: &PgPool, host: &HostName) -> Result<Vec<HostServer>, sqlx::Error> {
    let rows: Vec<Row> = sqlx::query_as(HOST_SERVERS_SQL)
        .bind(host.as_str())
        .bind(VmState::Deleted)
        .fetch_all(pool)
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| HostServer {
            id: ServerId(r.uuid),
            name: r.name,
            pending: match (r.job_id, r.request_id) {
                (Some(job_id), Some(request_id)) => Some(PendingStop {
                    job: StopJob {
                        job_id,
                        instance_uuid: r.uuid,
                        host: host.clone(),
                        request_id,
                    },
                    user_id: r.user_id.unwrap_or_default(),
                    unpublished: r.unpublished.unwrap_or(false),
                }),
                _ => None,
            },
            check: InstanceCheck {
                project_id: r.project_id,
                vm_state: r.vm_state,
                task_state: r.task_state,
                launched_at: r.launched_at,
                locked: r.locked,
            },
        })
        .collect())
}

/// Where one of the drain's stops is.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Progress {
    pub job_id: Uuid,
    pub state: String,
    /// Why it failed (the instance fault's message), or the last transient
    /// error of a stop still retrying.
    pub last_error: Option<String>,
}

/// The state of each of `jobs` (one statement, by primary key).
pub async fn progress(pool: &PgPool, jobs: &[Uuid]) -> Result<Vec<Progress>, sqlx::Error> {
    sqlx::query_as("SELECT id AS job_id, state, last_error FROM jobs WHERE id = ANY($1)")
        .bind(jobs)
        .fetch_all(pool)
        .await
}
