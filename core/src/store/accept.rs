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

/// Accepts a stop of `server` by `caller`, or says why not. `max_attempts` is
/// recorded on the job so the worker and rescuer agree on when to give up.
pub async fn accept_stop(
    pool: &PgPool,
    caller: &Caller,
    server: ServerId,
    request_id: &RequestId,
    max_attempts: i32,
) -> Result<StopJob, AcceptError> {
    // Readers never get to the compare-and-swap; but a reader asking about an
    // instance it cannot see still gets 404, not 403 (Nova looks up first).
    if !caller.may_stop() {
        let inst = load(pool, server).await?;
        visible(caller, server, inst.as_ref())?;
        return Err(Refusal::Forbidden.into());
    }
    let job_id = Uuid::new_v4();
    // A refusal is diagnosed by reading the row after the CAS failed. If the
    // row changed in between so that nothing is wrong any more, try again.
    for _ in 0..3 {
        let accepted: Option<Uuid> = sqlx::query_scalar(ACCEPT_SQL)
            .bind(server.0)
            .bind(caller.is_admin())
            .bind(caller.project_id.as_str())
            .bind(request_id.as_str())
            .bind(&caller.user_id)
            .bind(job_id)
            .bind(max_attempts)
            .fetch_optional(pool)
            .await?;
        if accepted.is_some() {
            return Ok(StopJob {
                job_id,
                instance_uuid: server.0,
                request_id: request_id.to_string(),
            });
        }
        let inst = load(pool, server).await?;
        diagnose(caller, server, inst.as_ref())?;
    }
    // Three lost races in a row: the instance is changing under us; the
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
