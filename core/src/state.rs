//! States, mirroring the database's text columns and Nova's spellings.

use std::fmt;

/// Nova's `vm_state`. Who moves an instance out of a state matters here only
/// for stopping: the API refuses unless `Active` or `Error`; the worker moves
/// it to `Stopped` after a successful power-off.
pub const STOPPABLE_VM_STATES: [&str; 2] = ["active", "error"];

/// `task_state` set by the API when it accepts a stop; cleared by the worker
/// when the stop ends (succeeded or failed) or by the rescuer when it gives up.
pub const TASK_POWERING_OFF: &str = "powering-off";

/// Nova's power_state integers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i16)]
pub enum PowerState {
    NoState = 0,
    Running = 1,
    Paused = 3,
    Shutdown = 4,
    Crashed = 6,
    Suspended = 7,
}

impl PowerState {
    pub fn as_i16(self) -> i16 {
        self as i16
    }
}

/// API `status` from vm_state, as Nova maps it.
pub fn server_status(vm_state: &str) -> &'static str {
    match vm_state {
        "active" => "ACTIVE",
        "stopped" => "SHUTOFF",
        "error" => "ERROR",
        "building" => "BUILD",
        "paused" => "PAUSED",
        "suspended" => "SUSPENDED",
        "deleted" => "DELETED",
        "rescued" => "RESCUE",
        "resized" => "VERIFY_RESIZE",
        "soft-delete" => "SOFT_DELETED",
        "shelved" => "SHELVED",
        "shelved_offloaded" => "SHELVED_OFFLOADED",
        _ => "UNKNOWN",
    }
}

/// All vm_states the schema accepts.
pub const VM_STATES: [&str; 12] = [
    "active",
    "building",
    "paused",
    "suspended",
    "stopped",
    "rescued",
    "resized",
    "soft-delete",
    "deleted",
    "error",
    "shelved",
    "shelved_offloaded",
];

/// A job's state. Transitions are conditional `UPDATE ... WHERE state = ...`
/// in [`crate::store::jobs`], so an illegal move fails in the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    /// Committed with the accepted request; the API (or its relay) sets
    /// `published_at` once the broker confirmed the message, and a worker
    /// moves it to `Running`.
    Queued,
    /// Handed back to the queue (by the rescuer, or by a worker that stopped
    /// before powering off); a worker moves it to `Running`.
    Published,
    /// A worker holds a lease on it; that worker moves it to `Succeeded`,
    /// `Failed` or `Retrying`. If the lease expires, another worker or the
    /// rescuer takes it over.
    Running,
    /// Waiting out a back-off delay in a retry queue; a worker moves it back
    /// to `Running` when the delayed message returns.
    Retrying,
    /// Terminal: the VM is off and the instance is `stopped`.
    Succeeded,
    /// Terminal: the stop failed for good; an instance fault says why.
    Failed,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Published => "published",
            JobState::Running => "running",
            JobState::Retrying => "retrying",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "queued" => JobState::Queued,
            "published" => JobState::Published,
            "running" => JobState::Running,
            "retrying" => JobState::Retrying,
            "succeeded" => JobState::Succeeded,
            "failed" => JobState::Failed,
            _ => return None,
        })
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, JobState::Succeeded | JobState::Failed)
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_states_round_trip_through_their_database_spelling() {
        for s in [
            JobState::Queued,
            JobState::Published,
            JobState::Running,
            JobState::Retrying,
            JobState::Succeeded,
            JobState::Failed,
        ] {
            assert_eq!(JobState::parse(s.as_str()), Some(s));
        }
        assert_eq!(JobState::parse("done"), None);
    }

    #[test]
    fn status_follows_nova_mapping() {
        assert_eq!(server_status("active"), "ACTIVE");
        assert_eq!(server_status("stopped"), "SHUTOFF");
        assert_eq!(server_status("error"), "ERROR");
        assert_eq!(server_status("weird"), "UNKNOWN");
    }
}
