//! What `shutoff-admin` (and tests) create: projects, tokens, servers.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use crate::ids::{ProjectId, ServerId};
use crate::state::{PowerState, TaskState, VmState};

pub async fn create_project(pool: &PgPool, id: &ProjectId, name: &str) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO projects (id, name) VALUES ($1, $2)")
        .bind(id.as_str())
        .bind(name)
        .execute(pool)
        .await?;
    Ok(())
}

pub async fn project_exists(pool: &PgPool, id: &ProjectId) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM projects WHERE id = $1)")
        .bind(id.as_str())
        .fetch_one(pool)
        .await
}

pub async fn set_project_enabled(
    pool: &PgPool,
    id: &ProjectId,
    enabled: bool,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE projects SET enabled = $2 WHERE id = $1")
        .bind(id.as_str())
        .bind(enabled)
        .execute(pool)
        .await?;
    Ok(())
}

/// Stores the hash of a fresh token and returns the token (shown once).
pub async fn create_token(
    pool: &PgPool,
    project: &ProjectId,
    user_id: &str,
    roles: &[String],
    expires_at: DateTime<Utc>,
) -> Result<String, sqlx::Error> {
    let token = crate::token::generate();
    sqlx::query("INSERT INTO tokens (sha256, project_id, user_id, roles, expires_at) VALUES ($1, $2, $3, $4, $5)")
        .bind(crate::token::hash(&token))
        .bind(project.as_str())
        .bind(user_id)
        .bind(roles)
        .bind(expires_at)
        .execute(pool)
        .await?;
    Ok(token)
}

/// A server to create; defaults make an active, launched VM on the simulator.
#[derive(Debug, Clone)]
pub struct NewServer {
    pub project: ProjectId,
    pub user_id: String,
    pub name: String,
    pub vm_state: VmState,
    pub task_state: Option<TaskState>,
    pub launched: bool,
    pub locked: bool,
    pub hypervisor: String,
    pub host: String,
}

impl NewServer {
    pub fn new(project: &ProjectId, name: &str) -> Self {
        NewServer {
            project: project.clone(),
            user_id: "admin".into(),
            name: name.into(),
            vm_state: VmState::Active,
            task_state: None,
            launched: true,
            locked: false,
            hypervisor: "fake://".into(),
            host: "sim-1".into(),
        }
    }
}

pub async fn create_server(pool: &PgPool, s: &NewServer) -> Result<Uuid, sqlx::Error> {
    let id = Uuid::new_v4();
    let power_state = if s.vm_state == VmState::Stopped {
        PowerState::Shutdown
    } else {
        PowerState::Running
    }
    .as_i16();
    sqlx::query(
        "INSERT INTO instances (uuid, project_id, user_id, name, host, vm_state, task_state,
                                power_state, launched_at, locked, hypervisor)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, CASE WHEN $9 THEN now() END, $10, $11)",
    )
    .bind(id)
    .bind(s.project.as_str())
    .bind(&s.user_id)
    .bind(&s.name)
    .bind(&s.host)
    .bind(s.vm_state)
    .bind(&s.task_state)
    .bind(power_state)
    .bind(s.launched)
    .bind(s.locked)
    .bind(&s.hypervisor)
    .execute(pool)
    .await?;
    Ok(id)
}

/// The project of a server that is not deleted.
pub async fn server_project(
    pool: &PgPool,
    server: ServerId,
) -> Result<Option<ProjectId>, sqlx::Error> {
    let project: Option<String> =
        sqlx::query_scalar("SELECT project_id FROM instances WHERE uuid = $1 AND vm_state <> $2")
            .bind(server.0)
            .bind(VmState::Deleted)
            .fetch_optional(pool)
            .await?;
    Ok(project.as_deref().and_then(ProjectId::parse))
}

/// What `shutoff-admin jobs cancel` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cancel {
    /// Failed with the operator's reason: task_state back to none, an
    /// instance fault and an Error event, as a failed stop.
    Cancelled,
    /// Already succeeded or failed: nothing to cancel.
    Finished(String),
    /// A worker holds it under a live lease and may be powering the VM off
    /// right now; cancelling would make the record disagree with the VM.
    Held {
        worker: Option<String>,
        until: Option<DateTime<Utc>>,
    },
    NotFound,
}

/// Ends an unfinished stop nobody is carrying out, as Nova's `reset-state`
/// ends a task an operator knows will not complete (its host is gone): the
/// job is failed with `reason`, the instance's task_state goes back to none
/// (vm_state unchanged) with an instance fault saying so.
pub async fn cancel_job(pool: &PgPool, id: Uuid, reason: &str) -> Result<Cancel, sqlx::Error> {
    let message = format!("cancelled by an operator: {reason}");
    let n: i64 = sqlx::query_scalar(super::claim::fail_sql(
        "state NOT IN ('succeeded', 'failed')
         AND (state <> 'running' OR lease_expires_at IS NULL OR lease_expires_at < now())",
    ))
    .bind(id)
    .bind(&message)
    .bind(&message)
    .bind("shutoff-admin")
    .bind(TaskState::PoweringOff)
    .fetch_one(pool)
    .await?;
    if n == 1 {
        return Ok(Cancel::Cancelled);
    }
    let row: Option<(String, Option<String>, Option<DateTime<Utc>>)> =
        sqlx::query_as("SELECT state, worker, lease_expires_at FROM jobs WHERE id = $1")
            .bind(id)
            .fetch_optional(pool)
            .await?;
    Ok(match row {
        None => Cancel::NotFound,
        Some((state, _, _)) if state == "succeeded" || state == "failed" => Cancel::Finished(state),
        Some((_, worker, until)) => Cancel::Held { worker, until },
    })
}
