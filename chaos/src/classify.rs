//! The checker: every stop the client saw accepted, held against what the
//! database recorded, Jepsen-style. The database is read once, in one
//! repeatable-read snapshot, after the system settled.
//!
//! - **lost**: accepted, but no job exists, or its job never reached
//!   `succeeded` or `failed`.
//! - **stuck**: the instance is still `powering-off`.
//! - **duplicated**: a job entered a terminal state more than once or left
//!   one (`job_transitions`, written by a trigger on every change), or one
//!   request has more than one instance fault, or one accepted request
//!   produced two jobs.
//! - **inconsistent**: the job's outcome and the records it must leave
//!   disagree (a succeeded job whose instance is not stopped, or whose action
//!   event is not `Success`; a failed job without exactly one fault, ...).
//! - **ok**: none of these; then it either succeeded or failed for good.

use shutoff_core::state::{TaskState, VmState};
use std::collections::HashMap;

use anyhow::Result;
use sqlx::PgPool;
use uuid::Uuid;

use crate::load::{Outcome, Sent};

/// How many failed jobs' histories to show.
const HISTORIES: usize = 10;

#[derive(Debug, Clone, sqlx::FromRow)]
struct JobRow {
    id: Uuid,
    instance_uuid: Uuid,
    request_id: String,
    state: String,
    attempts: i32,
    last_error: Option<String>,
    into_terminal: i64,
    out_of_terminal: i64,
    handed_back: i64,
    retries: i64,
    event_result: Option<String>,
    faults: i64,
    action_finished: Option<bool>,
}

impl JobRow {
    fn terminal(&self) -> bool {
        self.state == "succeeded" || self.state == "failed"
    }
}

const JOBS_SQL: &str = "
SELECT j.id, j.instance_uuid, j.request_id, j.state, j.attempts, j.last_error,
       (SELECT count(*) FROM job_transitions t
         WHERE t.job_id = j.id AND t.to_state IN ('succeeded', 'failed')) AS into_terminal,
       (SELECT count(*) FROM job_transitions t
         WHERE t.job_id = j.id AND t.from_state IN ('succeeded', 'failed')) AS out_of_terminal,
       (SELECT count(*) FROM job_transitions t
         WHERE t.job_id = j.id AND t.from_state = 'running' AND t.to_state = 'published') AS handed_back,
       (SELECT count(*) FROM job_transitions t
         WHERE t.job_id = j.id AND t.to_state = 'retrying') AS retries,
       e.result AS event_result,
       (SELECT count(*) FROM instance_faults f WHERE f.request_id = j.request_id) AS faults,
       a.finish_time IS NOT NULL AS action_finished
  FROM jobs j
  LEFT JOIN instance_actions a ON a.id = j.action_id
  LEFT JOIN instance_actions_events e
         ON e.action_id = j.action_id AND e.event = 'compute_stop_instance'";

/// One step of a job's history, `secs` after the job was created.
#[derive(Debug, Clone, sqlx::FromRow)]
struct Transition {
    job_id: Uuid,
    to_state: String,
    attempt: i32,
    worker: Option<String>,
    secs: f64,
}

#[derive(Debug, Clone, sqlx::FromRow)]
struct InstanceRow {
    uuid: Uuid,
    vm_state: VmState,
    task_state: Option<TaskState>,
    power_state: i16,
}

/// One anomaly, with enough detail to start digging.
#[derive(Debug, Clone)]
pub struct Finding {
    pub server: Uuid,
    pub what: String,
}

/// What the client concluded, counted.
#[derive(Debug, Clone, Default)]
pub struct ClientCounts {
    /// 202 with a request id.
    pub accepted: usize,
    /// A duplicate-refusal after an unknown reply: an earlier try got in.
    pub accepted_earlier: usize,
    /// Given up or refused.
    pub not_accepted: usize,
    /// ... of which the database holds a job anyway (an error reply that was
    /// in fact a commit): checked like the accepted ones.
    pub not_accepted_but_committed: usize,
}

/// How the jobs went, over all of them.
#[derive(Debug, Clone, Default)]
pub struct JobStats {
    pub jobs: usize,
    pub attempts: i64,
    pub retries: i64,
    /// running → published: a lease taken back by the rescuer, or a job a
    /// stopping worker gave back.
    pub handed_back: i64,
    /// The `last_error` of failed jobs, counted.
    pub failure_reasons: HashMap<String, usize>,
    /// Messages a worker could not act on (`dead_letters`): none expected,
    /// since every message names a committed job.
    pub dead_letters: i64,
    /// The transitions of the first failed jobs, one line each: a stop that
    /// failed for good is legitimate, but the history says whether the
    /// hypervisor or the chaos used up its attempts.
    pub failed_histories: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub struct Verdict {
    pub client: ClientCounts,
    pub ok_succeeded: usize,
    pub ok_failed: usize,
    pub lost: Vec<Finding>,
    pub stuck: Vec<Finding>,
    pub duplicated: Vec<Finding>,
    pub inconsistent: Vec<Finding>,
    pub jobs: JobStats,
}

impl Verdict {
    pub fn ok(&self) -> usize {
        self.ok_succeeded + self.ok_failed
    }

    /// No accepted stop lost, stuck, duplicated or inconsistent.
    pub fn clean(&self) -> bool {
        self.lost.is_empty()
            && self.stuck.is_empty()
            && self.duplicated.is_empty()
            && self.inconsistent.is_empty()
    }
}

pub async fn classify(pool: &PgPool, sent: &[Sent]) -> Result<Verdict> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut *tx)
        .await?;
    let jobs: Vec<JobRow> = sqlx::query_as(JOBS_SQL).fetch_all(&mut *tx).await?;
    let instances: Vec<InstanceRow> =
        sqlx::query_as("SELECT uuid, vm_state, task_state, power_state FROM instances")
            .fetch_all(&mut *tx)
            .await?;
    let dead_letters: i64 = sqlx::query_scalar("SELECT count(*) FROM dead_letters")
        .fetch_one(&mut *tx)
        .await?;
    let failed: Vec<Uuid> = jobs
        .iter()
        .filter(|j| j.state == "failed")
        .take(HISTORIES)
        .map(|j| j.id)
        .collect();
    let transitions: Vec<Transition> = sqlx::query_as(
        "SELECT t.job_id, t.to_state, t.attempt, t.worker,
                extract(epoch FROM t.at - j.created_at)::float8 AS secs
           FROM job_transitions t JOIN jobs j ON j.id = t.job_id
          WHERE t.job_id = ANY($1) ORDER BY t.id",
    )
    .bind(&failed)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let mut verdict = judge(sent, &jobs, &instances);
    verdict.jobs.dead_letters = dead_letters;
    verdict.jobs.failed_histories = failed
        .iter()
        .map(|id| {
            let steps: Vec<String> = transitions
                .iter()
                .filter(|t| t.job_id == *id)
                .map(|t| {
                    let worker = t.worker.as_deref().map(|w| format!("/{w}"));
                    format!(
                        "{}#{}{}@{:.1}s",
                        t.to_state,
                        t.attempt,
                        worker.unwrap_or_default(),
                        t.secs
                    )
                })
                .collect();
            format!("job {id}: {}", steps.join(" > "))
        })
        .collect();
    Ok(verdict)
}

fn judge(sent: &[Sent], jobs: &[JobRow], instances: &[InstanceRow]) -> Verdict {
    let mut v = Verdict::default();
    let mut by_instance: HashMap<Uuid, Vec<&JobRow>> = HashMap::new();
    let mut by_request: HashMap<&str, &JobRow> = HashMap::new();
    for j in jobs {
        by_instance.entry(j.instance_uuid).or_default().push(j);
        by_request.insert(j.request_id.as_str(), j);
        v.jobs.jobs += 1;
        v.jobs.attempts += i64::from(j.attempts);
        v.jobs.retries += j.retries;
        v.jobs.handed_back += j.handed_back;
        if j.state == "failed" {
            let reason = j.last_error.as_deref().map_or("(none)".into(), without_ids);
            *v.jobs.failure_reasons.entry(reason).or_default() += 1;
        }
    }
    let instances: HashMap<Uuid, &InstanceRow> = instances.iter().map(|i| (i.uuid, i)).collect();

    for s in sent {
        let server = s.server;
        let found = |what: String| Finding { server, what };
        let jobs: &[&JobRow] = by_instance.get(&server).map_or(&[], |v| v.as_slice());
        let unknown_before = s.tries.len() > 1;
        let mut lost = Vec::new();
        let mut duplicated = Vec::new();
        let mut inconsistent = Vec::new();

        match &s.outcome {
            Outcome::Accepted { request_id } => {
                v.client.accepted += 1;
                if !by_request.contains_key(request_id.as_str()) {
                    lost.push(format!(
                        "202 as {request_id}, but no job has that request id"
                    ));
                }
                // A second job is only possible after an earlier unknown try
                // that got in and failed for good; after a clean first 202 it
                // means one request was accepted twice.
                if jobs.len() > 1 && !unknown_before {
                    duplicated.push(format!(
                        "one 202 ({request_id}) but {} jobs for the instance",
                        jobs.len()
                    ));
                }
            }
            Outcome::AcceptedEarlier => {
                v.client.accepted_earlier += 1;
                if jobs.is_empty() {
                    lost.push(
                        "a retry was refused as a duplicate, so an earlier try got in, \
                         but no job exists for the instance"
                            .into(),
                    );
                }
            }
            Outcome::NotAccepted { .. } => {
                v.client.not_accepted += 1;
                if !jobs.is_empty() {
                    v.client.not_accepted_but_committed += 1;
                }
            }
        }

        // Every job that exists must have ended exactly once, whoever asked.
        for j in jobs {
            if !j.terminal() {
                lost.push(format!(
                    "job {} ({}) is still {} after {} attempts",
                    j.id, j.request_id, j.state, j.attempts
                ));
            }
            if j.into_terminal > 1 || j.out_of_terminal > 0 {
                duplicated.push(format!(
                    "job {} ({}) entered a terminal state {} times and left one {} times",
                    j.id, j.request_id, j.into_terminal, j.out_of_terminal
                ));
            }
            if j.faults > 1 {
                duplicated.push(format!(
                    "job {} ({}) has {} instance faults",
                    j.id, j.request_id, j.faults
                ));
            }
            inconsistent.extend(job_records_disagree(j));
        }

        let inst = instances.get(&server);
        let stuck = inst.is_some_and(|i| i.task_state == Some(TaskState::PoweringOff));
        if stuck {
            v.stuck.push(found(format!(
                "instance still powering-off ({} jobs: {})",
                jobs.len(),
                jobs.iter()
                    .map(|j| format!("{} {}", j.request_id, j.state))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let succeeded = jobs.iter().any(|j| j.state == "succeeded");
        if let Some(i) = inst {
            if succeeded && (i.vm_state != VmState::Stopped || i.power_state != 4) {
                inconsistent.push(format!(
                    "a job succeeded but the instance is {} with power_state {}",
                    i.vm_state, i.power_state
                ));
            }
            if !succeeded && i.vm_state != VmState::Active {
                inconsistent.push(format!(
                    "no job succeeded but the instance is {}",
                    i.vm_state
                ));
            }
        }

        let in_scope = !matches!(s.outcome, Outcome::NotAccepted { .. }) || !jobs.is_empty();
        let anomalies = !(lost.is_empty() && duplicated.is_empty() && inconsistent.is_empty());
        v.lost.extend(lost.into_iter().map(found));
        v.duplicated.extend(duplicated.into_iter().map(found));
        v.inconsistent.extend(inconsistent.into_iter().map(found));
        if in_scope && !anomalies && !stuck {
            if succeeded {
                v.ok_succeeded += 1;
            } else {
                v.ok_failed += 1;
            }
        }
    }
    v
}

/// An error message with its instance and job ids blanked, so that the same
/// reason is counted once.
fn without_ids(message: &str) -> String {
    message
        .split(' ')
        .map(|w| {
            if Uuid::try_parse(w.trim_end_matches([',', '.', ':', ';'])).is_ok() {
                "<id>"
            } else {
                w
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A terminal job must leave exactly the records its outcome promises.
fn job_records_disagree(j: &JobRow) -> Vec<String> {
    let mut out = Vec::new();
    let want_event = match j.state.as_str() {
        "succeeded" => "Success",
        "failed" => "Error",
        _ => return out,
    };
    if j.event_result.as_deref() != Some(want_event) {
        out.push(format!(
            "job {} {} but its action event says {:?}",
            j.id, j.state, j.event_result
        ));
    }
    if j.action_finished != Some(true) {
        out.push(format!(
            "job {} {} but its action never finished",
            j.id, j.state
        ));
    }
    let want_faults = if j.state == "failed" { 1 } else { 0 };
    if j.faults != want_faults {
        out.push(format!(
            "job {} {} with {} instance faults",
            j.id, j.state, j.faults
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::load::Try;

    fn job(instance: Uuid, request_id: &str, state: &str) -> JobRow {
        let failed = state == "failed";
        JobRow {
            id: Uuid::new_v4(),
            instance_uuid: instance,
            request_id: request_id.into(),
            state: state.into(),
            attempts: 1,
            last_error: None,
            into_terminal: 1,
            out_of_terminal: 0,
            handed_back: 0,
            retries: 0,
            event_result: Some(if failed { "Error" } else { "Success" }.into()),
            faults: i64::from(failed),
            action_finished: Some(true),
        }
    }

    fn instance(uuid: Uuid, vm_state: &str, task_state: Option<&str>) -> InstanceRow {
        InstanceRow {
            uuid,
            vm_state: VmState::parse(vm_state).unwrap(),
            task_state: task_state.map(TaskState::parse),
            power_state: if vm_state == "stopped" { 4 } else { 1 },
        }
    }

    fn accepted(server: Uuid, request_id: &str) -> Sent {
        Sent {
            server,
            outcome: Outcome::Accepted {
                request_id: request_id.into(),
            },
            tries: vec![Try::Status(202)],
            took: Duration::ZERO,
        }
    }

    #[test]
    fn failure_reasons_are_counted_without_their_ids() {
        assert_eq!(
            without_ids("failure powering off 911012e1-da3f-4620-bedb-a42dc4f9d240"),
            "failure powering off <id>"
        );
    }

    #[test]
    fn a_stop_that_succeeded_once_is_ok() {
        let s = Uuid::new_v4();
        let v = judge(
            &[accepted(s, "req-a")],
            &[job(s, "req-a", "succeeded")],
            &[instance(s, "stopped", None)],
        );
        assert!(v.clean());
        assert_eq!((v.ok_succeeded, v.ok_failed), (1, 0));
    }

    #[test]
    fn an_accepted_stop_without_a_job_is_lost() {
        let s = Uuid::new_v4();
        let v = judge(&[accepted(s, "req-a")], &[], &[instance(s, "active", None)]);
        assert_eq!(v.lost.len(), 1);
        assert_eq!(v.ok(), 0);
    }

    #[test]
    fn a_job_that_never_finished_is_lost_and_its_instance_stuck() {
        let s = Uuid::new_v4();
        let v = judge(
            &[accepted(s, "req-a")],
            &[job(s, "req-a", "running")],
            &[instance(s, "active", Some("powering-off"))],
        );
        assert_eq!(v.lost.len(), 1);
        assert_eq!(v.stuck.len(), 1);
    }

    #[test]
    fn a_job_that_ended_twice_is_duplicated() {
        let s = Uuid::new_v4();
        let mut j = job(s, "req-a", "succeeded");
        j.into_terminal = 2;
        let v = judge(
            &[accepted(s, "req-a")],
            &[j],
            &[instance(s, "stopped", None)],
        );
        assert_eq!(v.duplicated.len(), 1);
    }

    #[test]
    fn a_succeeded_job_on_a_running_instance_is_inconsistent() {
        let s = Uuid::new_v4();
        let v = judge(
            &[accepted(s, "req-a")],
            &[job(s, "req-a", "succeeded")],
            &[instance(s, "active", None)],
        );
        assert_eq!(v.inconsistent.len(), 1);
    }

    #[test]
    fn an_error_reply_that_was_a_commit_is_still_checked() {
        let s = Uuid::new_v4();
        let sent = Sent {
            server: s,
            outcome: Outcome::NotAccepted { last: "503".into() },
            tries: vec![Try::Status(503)],
            took: Duration::ZERO,
        };
        let v = judge(
            &[sent],
            &[job(s, "req-a", "failed")],
            &[instance(s, "active", None)],
        );
        assert_eq!(v.client.not_accepted_but_committed, 1);
        assert_eq!((v.ok_succeeded, v.ok_failed), (0, 1));
    }
}
