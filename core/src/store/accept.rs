//! The acceptance statement: one statement that compare-and-swaps
//! task_state NULL → powering-off and inserts the instance action and the job.
//! Either all three happen or none does. Who runs it, and what a refusal
//! means, is [`crate::acceptor`]'s business.

use sqlx::PgPool;
use uuid::Uuid;

use crate::ids::{HostName, RequestId, ServerId};
use crate::message::StopJob;
use crate::policy::{Caller, InstanceCheck};
use crate::state::{TaskState, VmState};

/// Public so the benchmark can run the very same statement under pgbench.
/// `$8` is [`TaskState::PoweringOff`], `$9` [`VmState::STOPPABLE`].
pub const ACCEPT_SQL: &str = "
WITH inst AS (
    UPDATE instances
       SET task_state = $8, updated_at = now()
     WHERE uuid = $1
       AND task_state IS NULL
       AND vm_state = ANY($9)
       AND launched_at IS NOT NULL
       AND ($2 OR (project_id = $3 AND NOT locked))
    RETURNING uuid, host
), act AS (
    INSERT INTO instance_actions (action, instance_uuid, request_id, user_id, project_id)
    SELECT 'stop', uuid, $4, $5, $3 FROM inst
    RETURNING id, instance_uuid
)
INSERT INTO jobs (id, instance_uuid, request_id, action_id, max_attempts, host)
SELECT $6, act.instance_uuid, $4, act.id, $7, inst.host FROM act, inst
RETURNING id, host";

/// The same compare-and-swap for many requests in one statement (a group
/// commit). Two requests for one instance in a batch: the instance row is
/// updated once, so only one of them is accepted.
const ACCEPT_MANY_SQL: &str = "
WITH input AS (
    SELECT * FROM unnest($1::uuid[], $2::bool[], $3::text[], $4::text[], $5::text[],
                         $6::uuid[], $7::int4[])
        AS t(uuid, is_admin, project_id, request_id, user_id, job_id, max_attempts)
), inst AS (
    UPDATE instances
       SET task_state = $8, updated_at = now()
      FROM input
     WHERE instances.uuid = input.uuid
       AND instances.task_state IS NULL
       AND instances.vm_state = ANY($9)
       AND instances.launched_at IS NOT NULL
       AND (input.is_admin OR (instances.project_id = input.project_id AND NOT instances.locked))
    RETURNING instances.uuid, instances.host, input.project_id, input.request_id,
              input.user_id, input.job_id, input.max_attempts
), act AS (
    INSERT INTO instance_actions (action, instance_uuid, request_id, user_id, project_id)
    SELECT 'stop', uuid, request_id, user_id, project_id FROM inst
    RETURNING id, request_id
)
INSERT INTO jobs (id, instance_uuid, request_id, action_id, max_attempts, host)
SELECT inst.job_id, inst.uuid, inst.request_id, act.id, inst.max_attempts, inst.host
  FROM inst JOIN act ON act.request_id = inst.request_id
RETURNING id, host";

/// One stop to accept: who asks, for which server, under which ids.
#[derive(Debug, Clone)]
pub struct AcceptRequest {
    pub server: ServerId,
    pub is_admin: bool,
    pub project_id: String,
    pub user_id: String,
    pub request_id: String,
    pub job_id: Uuid,
    pub max_attempts: i32,
}

impl AcceptRequest {
    pub fn new(
        caller: &Caller,
        server: ServerId,
        request_id: &RequestId,
        max_attempts: i32,
    ) -> Self {
        AcceptRequest {
            server,
            is_admin: caller.is_admin(),
            project_id: caller.project_id.as_str().to_string(),
            user_id: caller.user_id.clone(),
            request_id: request_id.to_string(),
            // Time-ordered (UUIDv7): a new job's id lands at the right edge
            // of jobs_pkey and job_transitions_job, pages that stay cached,
            // instead of on a random leaf that years of history put on disk.
            job_id: Uuid::now_v7(),
            max_attempts,
        }
    }

    /// The message to publish once accepted on `host` (the instance's, as
    /// the acceptance statement read it).
    pub fn job(&self, host: HostName) -> StopJob {
        StopJob {
            job_id: self.job_id,
            instance_uuid: self.server.0,
            host,
            request_id: self.request_id.clone(),
        }
    }
}

/// Runs the compare-and-swap for each request: the instance's host where it
/// was accepted (instance powering-off, action and job inserted, all
/// committed), none where not.
pub async fn try_accept_many(
    pool: &PgPool,
    requests: &[AcceptRequest],
) -> Result<Vec<Option<HostName>>, sqlx::Error> {
    if let [r] = requests {
        let accepted: Option<(Uuid, String)> = sqlx::query_as(ACCEPT_SQL)
            .bind(r.server.0)
            .bind(r.is_admin)
            .bind(&r.project_id)
            .bind(&r.request_id)
            .bind(&r.user_id)
            .bind(r.job_id)
            .bind(r.max_attempts)
            .bind(TaskState::PoweringOff)
            .bind(&VmState::STOPPABLE[..])
            .fetch_optional(pool)
            .await?;
        return Ok(vec![accepted.map(|(_, host)| HostName::from_stored(host))]);
    }
    let col = |f: fn(&AcceptRequest) -> &str| requests.iter().map(f).collect::<Vec<&str>>();
    let accepted: Vec<(Uuid, String)> = sqlx::query_as(ACCEPT_MANY_SQL)
        .bind(requests.iter().map(|r| r.server.0).collect::<Vec<_>>())
        .bind(requests.iter().map(|r| r.is_admin).collect::<Vec<_>>())
        .bind(col(|r| &r.project_id))
        .bind(col(|r| &r.request_id))
        .bind(col(|r| &r.user_id))
        .bind(requests.iter().map(|r| r.job_id).collect::<Vec<_>>())
        .bind(requests.iter().map(|r| r.max_attempts).collect::<Vec<_>>())
        .bind(TaskState::PoweringOff)
        .bind(&VmState::STOPPABLE[..])
        .fetch_all(pool)
        .await?;
    let mut accepted: std::collections::HashMap<Uuid, String> = accepted.into_iter().collect();
    Ok(requests
        .iter()
        .map(|r| accepted.remove(&r.job_id).map(HostName::from_stored))
        .collect())
}

/// The instance as the acceptance checks need it (a deleted one is none).
pub async fn load(pool: &PgPool, server: ServerId) -> Result<Option<InstanceCheck>, sqlx::Error> {
    sqlx::query_as(
        "SELECT project_id, vm_state, task_state, launched_at, locked
           FROM instances WHERE uuid = $1 AND vm_state <> $2",
    )
    .bind(server.0)
    .bind(VmState::Deleted)
    .fetch_optional(pool)
    .await
}
