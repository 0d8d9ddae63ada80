//! Who may stop what, and why a stop is refused: Nova's policy and its order
//! of checks, as pure functions of the caller and the instance row. The
//! acceptor ([`crate::acceptor`]) asks these questions; nothing here touches
//! the database.

use chrono::{DateTime, Utc};

use crate::ids::{ProjectId, ServerId};
use crate::state::{TaskState, VmState};

/// Who is calling, as the token says.
#[derive(Debug, Clone)]
pub struct Caller {
    pub project_id: ProjectId,
    pub user_id: String,
    pub roles: Vec<String>,
    /// False when the token's project is disabled or deleted (→ 404).
    pub project_active: bool,
}

impl Caller {
    /// Nova's `context.is_admin`: sees and stops every project's servers,
    /// locked or not.
    pub fn is_admin(&self) -> bool {
        self.roles.iter().any(|r| r == "admin")
    }

    /// Nova's `project_member_or_admin`: may stop servers.
    pub fn may_stop(&self) -> bool {
        self.roles.iter().any(|r| r == "admin" || r == "member")
    }

    /// Whether the caller sees an instance of `project` at all (others get
    /// 404, never 403, as Nova looks the instance up first).
    pub fn sees(&self, project: &str) -> bool {
        self.is_admin() || self.project_id.as_str() == project
    }
}

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
    VmState(ServerId, VmState),
    #[error("Cannot 'stop' instance {0} while it is in task_state {1}")]
    TaskState(ServerId, TaskState),
    #[error("Cannot 'stop' instance {0} while it is in launched_at None")]
    NotLaunched(ServerId),
}

/// The instance as the checks need it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct InstanceCheck {
    pub project_id: String,
    pub vm_state: VmState,
    pub task_state: Option<TaskState>,
    pub launched_at: Option<DateTime<Utc>>,
    pub locked: bool,
}

/// 404 unless the instance exists and the caller may see it.
pub fn visible<'a>(
    caller: &Caller,
    server: ServerId,
    inst: Option<&'a InstanceCheck>,
) -> Result<&'a InstanceCheck, Refusal> {
    match inst {
        Some(i) if caller.sees(&i.project_id) => Ok(i),
        _ => Err(Refusal::NotFound(server.to_string())),
    }
}

/// Nova's checks, in Nova's order: `Ok` when a stop may be accepted.
pub fn check_stop(
    caller: &Caller,
    server: ServerId,
    inst: Option<&InstanceCheck>,
) -> Result<(), Refusal> {
    let i = visible(caller, server, inst)?;
    if !caller.may_stop() {
        return Err(Refusal::Forbidden);
    }
    if i.locked && !caller.is_admin() {
        return Err(Refusal::Locked(server));
    }
    if !i.vm_state.is_stoppable() {
        return Err(Refusal::VmState(server, i.vm_state));
    }
    if let Some(t) = &i.task_state {
        return Err(Refusal::TaskState(server, t.clone()));
    }
    if i.launched_at.is_none() {
        return Err(Refusal::NotLaunched(server));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(roles: &[&str]) -> Caller {
        Caller {
            project_id: ProjectId::parse("0123456789abcdef0123456789abcdef").unwrap(),
            user_id: "u".into(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            project_active: true,
        }
    }

    fn inst(project: &str) -> InstanceCheck {
        InstanceCheck {
            project_id: project.into(),
            vm_state: VmState::Active,
            task_state: None,
            launched_at: Some(Utc::now()),
            locked: false,
        }
    }

    #[test]
    fn checks_come_in_novas_order() {
        let id = ServerId(uuid::Uuid::new_v4());
        let member = caller(&["member"]);
        let own = "0123456789abcdef0123456789abcdef";
        // Another project's instance is not found, even for a reader.
        assert!(matches!(
            check_stop(
                &caller(&["reader"]),
                id,
                Some(&inst("ffffffffffffffffffffffffffffffff"))
            ),
            Err(Refusal::NotFound(_))
        ));
        assert_eq!(
            check_stop(&caller(&["reader"]), id, Some(&inst(own))),
            Err(Refusal::Forbidden)
        );
        let mut i = inst(own);
        i.locked = true;
        i.vm_state = VmState::Stopped;
        assert_eq!(check_stop(&member, id, Some(&i)), Err(Refusal::Locked(id)));
        assert_eq!(
            check_stop(&caller(&["admin"]), id, Some(&i)),
            Err(Refusal::VmState(id, VmState::Stopped))
        );
        i.locked = false;
        i.vm_state = VmState::Error;
        i.task_state = Some(TaskState::PoweringOff);
        i.launched_at = None;
        assert_eq!(
            check_stop(&member, id, Some(&i)),
            Err(Refusal::TaskState(id, TaskState::PoweringOff))
        );
        i.task_state = None;
        assert_eq!(
            check_stop(&member, id, Some(&i)),
            Err(Refusal::NotLaunched(id))
        );
        assert_eq!(check_stop(&member, id, Some(&inst(own))), Ok(()));
    }
}
