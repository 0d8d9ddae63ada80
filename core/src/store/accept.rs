//! The API's acceptance of a stop: one statement that compare-and-swaps
//! task_state NULL → powering-off and inserts the instance action and the job.
//! Either all three happen or none does.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use super::auth::Caller;
use crate::ids::{RequestId, ServerId};
use crate::message::StopJob;
use crate::state::{STOPPABLE_VM_STATES, TASK_POWERING_OFF};

/// Why a stop was refused, in Nova's order of checks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("Instance {0} could not be found.")]
    NotFound(String),
    #[error("Policy doesn't allow os_compute_api:servers:stop to be performed.")]
    Forbidden,
    #[error("Instance {0} is locked")]
    Locked(ServerId),
    #[error("Cannot 'stop' instance {0} while it is in vm_state {1}")]
    VmState(ServerId, String),
    #[error("Cannot 'stop' instance {0} while it is in task_state {1}")]
    TaskState(ServerId, String),
    #[error("Cannot 'stop' instance {0} while it is in launched_at None")]
    NotLaunched(ServerId),
}

#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

/// The instance as the checks need it.
#[derive(Debug, sqlx::FromRow)]
struct InstanceCheck {
    project_id: String,
    vm_state: String,
    task_state: Option<String>,
    launched_at: Option<DateTime<Utc>>,
    locked: bool,
}

/// Public so the benchmark can run the very same statement under pgbench.
pub const ACCEPT_SQL: &str = "
WITH inst AS (
    UPDATE instances
       SET task_state = 'powering-off', updated_at = now()
     WHERE uuid = $1
       AND task_state IS NULL
       AND vm_state IN ('active', 'error')
       AND launched_at IS NOT NULL
       AND ($2 OR (project_id = $3 AND NOT locked))
    RETURNING uuid
), act AS (
    INSERT INTO instance_actions (action, instance_uuid, request_id, user_id, project_id)
    SELECT 'stop', uuid, $4, $5, $3 FROM inst
    RETURNING id, instance_uuid
)
INSERT INTO jobs (id, instance_uuid, request_id, action_id, max_attempts)
SELECT $6, instance_uuid, $4, id, $7 FROM act
RETURNING id";

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
       SET task_state = 'powering-off', updated_at = now()
      FROM input
     WHERE instances.uuid = input.uuid
       AND instances.task_state IS NULL
       AND instances.vm_state IN ('active', 'error')
       AND instances.launched_at IS NOT NULL
       AND (input.is_admin OR (instances.project_id = input.project_id AND NOT instances.locked))
    RETURNING instances.uuid, input.project_id, input.request_id, input.user_id,
              input.job_id, input.max_attempts
), act AS (
    INSERT INTO instance_actions (action, instance_uuid, request_id, user_id, project_id)
    SELECT 'stop', uuid, request_id, user_id, project_id FROM inst
    RETURNING id, request_id
)
INSERT INTO jobs (id, instance_uuid, request_id, action_id, max_attempts)
SELECT inst.job_id, inst.uuid, inst.request_id, act.id, inst.max_attempts
  FROM inst JOIN act ON act.request_id = inst.request_id
RETURNING id";

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
            job_id: Uuid::new_v4(),
            max_attempts,
        }
    }

    /// The message to publish once accepted.
    pub fn job(&self) -> StopJob {
        StopJob {
            job_id: self.job_id,
            instance_uuid: self.server.0,
            request_id: self.request_id.clone(),
        }
    }
}

/// Runs the compare-and-swap for each request: true where it was accepted
/// (instance powering-off, action and job inserted, all committed).
pub async fn try_accept_many(
    pool: &PgPool,
    requests: &[AcceptRequest],
) -> Result<Vec<bool>, sqlx::Error> {
    if let [r] = requests {
        let accepted: Option<Uuid> = sqlx::query_scalar(ACCEPT_SQL)
            .bind(r.server.0)
            .bind(r.is_admin)
            .bind(&r.project_id)
            .bind(&r.request_id)
            .bind(&r.user_id)
            .bind(r.job_id)
            .bind(r.max_attempts)
            .fetch_optional(pool)
            .await?;
        return Ok(vec![accepted.is_some()]);
    }
    let col = |f: fn(&AcceptRequest) -> &str| requests.iter().map(f).collect::<Vec<&str>>();
    let accepted: Vec<Uuid> = sqlx::query_scalar(ACCEPT_MANY_SQL)
        .bind(requests.iter().map(|r| r.server.0).collect::<Vec<_>>())
        .bind(requests.iter().map(|r| r.is_admin).collect::<Vec<_>>())
        .bind(col(|r| &r.project_id))
        .bind(col(|r| &r.request_id))
        .bind(col(|r| &r.user_id))
        .bind(requests.iter().map(|r| r.job_id).collect::<Vec<_>>())
        .bind(requests.iter().map(|r| r.max_attempts).collect::<Vec<_>>())
        .fetch_all(pool)
        .await?;
    let accepted: std::collections::HashSet<Uuid> = accepted.into_iter().collect();
    Ok(requests
        .iter()
        .map(|r| accepted.contains(&r.job_id))
        .collect())
}

/// Accepts a stop of `server` by `caller`, or says why not. `max_attempts` is
/// recorded on the job so the worker and rescuer agree on when to give up.
pub async fn accept_stop(
    pool: &PgPool,
    caller: &Caller,
    server: ServerId,
    request_id: &RequestId,
    max_attempts: i32,
) -> Result<StopJob, AcceptError> {
    if !caller.may_stop() {
        return forbidden(pool, caller, server).await;
    }
    let request = AcceptRequest::new(caller, server, request_id, max_attempts);
    if try_accept_many(pool, std::slice::from_ref(&request)).await?[0] {
        return Ok(request.job());
    }
    not_accepted(pool, caller, &request).await
}

/// Readers never get to the compare-and-swap; but a reader asking about an
/// instance it cannot see still gets 404, not 403 (Nova looks up first).
pub async fn forbidden(
    pool: &PgPool,
    caller: &Caller,
    server: ServerId,
) -> Result<StopJob, AcceptError> {
    let inst = load(pool, server).await?;
    visible(caller, server, inst.as_ref())?;
    Err(Refusal::Forbidden.into())
}

/// After a compare-and-swap that did not take: says why, by reading the row.
/// If the row changed in between so that nothing is wrong any more, tries
/// again.
pub async fn not_accepted(
    pool: &PgPool,
    caller: &Caller,
    request: &AcceptRequest,
) -> Result<StopJob, AcceptError> {
    let server = request.server;
    for _ in 0..3 {
        let inst = load(pool, server).await?;
        diagnose(caller, server, inst.as_ref())?;
        if try_accept_many(pool, std::slice::from_ref(request)).await?[0] {
            return Ok(request.job());
        }
    }
    // Lost races again and again: the instance is changing under us; the
    // honest answer is that a task is in progress.
    Err(Refusal::TaskState(server, TASK_POWERING_OFF.into()).into())
}

async fn load(pool: &PgPool, server: ServerId) -> Result<Option<InstanceCheck>, sqlx::Error> {
    sqlx::query_as(
        "SELECT project_id, vm_state, task_state, launched_at, locked
           FROM instances WHERE uuid = $1 AND vm_state <> 'deleted'",
    )
    .bind(server.0)
    .fetch_optional(pool)
    .await
}

fn visible(caller: &Caller, server: ServerId, inst: Option<&InstanceCheck>) -> Result<(), Refusal> {
    match inst {
        Some(i) if caller.is_admin() || i.project_id == caller.project_id.as_str() => Ok(()),
        _ => Err(Refusal::NotFound(server.to_string())),
    }
}

/// Nova's checks, in Nova's order, on a row the CAS refused.
fn diagnose(
    caller: &Caller,
    server: ServerId,
    inst: Option<&InstanceCheck>,
) -> Result<(), Refusal> {
    visible(caller, server, inst)?;
    let i = inst.expect("visible() checked it exists");
    if i.locked && !caller.is_admin() {
        return Err(Refusal::Locked(server));
    }
    if !STOPPABLE_VM_STATES.contains(&i.vm_state.as_str()) {
        return Err(Refusal::VmState(server, i.vm_state.clone()));
    }
    if let Some(t) = &i.task_state {
        return Err(Refusal::TaskState(server, t.clone()));
    }
    if i.launched_at.is_none() {
        return Err(Refusal::NotLaunched(server));
    }
    Ok(())
}
