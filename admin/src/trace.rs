//! `trace`: what happened to one stop, as a timeline built from the rows it
//! left behind ([`shutoff_core::store::trace`]), for a person or (`--json`)
//! for a script. The JSON field names are part of the interface
//! (docs/operations.md lists them): add fields, never rename one.

use chrono::{DateTime, Utc};
use serde::Serialize;
use shutoff_core::ids::RequestId;
use shutoff_core::store::trace::{self, StopTrace};
use uuid::Uuid;

use crate::Outcome;

/// One step of a stop, in the order it happened.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub at: DateTime<Utc>,
    /// Seconds since the step before (0 for the first).
    pub since_previous_seconds: f64,
    /// `accepted`, `published`, `claimed`, `retrying`, `handed_back`,
    /// `succeeded`, `failed`, `dead_lettered` or `state_changed`.
    pub step: &'static str,
    /// The attempt it belongs to (0 before the first claim).
    pub attempt: i32,
    pub worker: Option<String>,
    pub host: Option<String>,
    /// What happened, in words (an error, how the VM went off, ...).
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Instance {
    pub uuid: Uuid,
    pub name: String,
    pub host: String,
    pub vm_state: String,
    pub task_state: Option<String>,
    pub power_state: i16,
}

/// How the worker powered the VM off (its `compute_stop_instance` event).
#[derive(Debug, Clone, Serialize)]
pub struct PowerOff {
    /// `Success`, `Error`, or none while the attempt runs.
    pub result: Option<String>,
    pub details: Option<String>,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// The worker that claimed it first.
    pub worker: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Fault {
    pub code: i32,
    pub message: String,
    pub details: Option<String>,
    pub host: Option<String>,
    pub at: DateTime<Utc>,
}

/// The trace of one stop, as `--json` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct Trace {
    pub request_id: String,
    pub job_id: Uuid,
    pub user_id: String,
    pub project_id: String,
    pub instance: Instance,
    /// The job's state: queued, published, running, retrying, succeeded or failed.
    pub state: String,
    /// True once the stop succeeded or failed.
    pub finished: bool,
    pub attempts: i32,
    pub max_attempts: i32,
    /// The host the stop is for and was carried out on.
    pub host: Option<String>,
    pub accepted_at: DateTime<Utc>,
    pub published_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// From accepted to recorded (or to now, while unfinished).
    pub duration_seconds: f64,
    pub last_error: Option<String>,
    pub power_off: Option<PowerOff>,
    /// The instance fault of a failed stop (the last one, if several).
    pub fault: Option<Fault>,
    pub steps: Vec<Step>,
}

fn seconds(d: chrono::TimeDelta) -> f64 {
    d.num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6
}

impl Trace {
    pub fn from_rows(t: StopTrace, now: DateTime<Utc>) -> Trace {
        let s = &t.stop;
        let host = s.job_host.clone();
        let mut steps: Vec<Step> = Vec::new();
        let mut step = |at, step, attempt, worker: Option<String>, detail: String| {
            let host = worker.as_ref().and(host.clone());
            steps.push(Step {
                at,
                since_previous_seconds: 0.0,
                step,
                attempt,
                worker,
                host,
                detail,
            })
        };
        let accepted_at = t
            .transitions
            .first()
            .filter(|x| x.from_state.is_none())
            .map_or(s.created_at, |x| x.at);
        step(
            accepted_at,
            "accepted",
            0,
            None,
            format!(
                "by user {} of project {}, at most {} attempts",
                s.action_user_id, s.action_project_id, s.max_attempts
            ),
        );
        if let Some(at) = s.published_at {
            step(
                at,
                "published",
                0,
                None,
                format!(
                    "RabbitMQ confirmed the message (host {}'s queue)",
                    host.as_deref().unwrap_or(&s.instance_host)
                ),
            );
        }
        let details = t.event.as_ref().and_then(|e| e.details.clone());
        let mut holder: Option<String> = None;
        for x in t.transitions.iter().filter(|x| x.from_state.is_some()) {
            let from = x.from_state.as_deref().unwrap_or_default();
            let error = x.error.clone().unwrap_or_default();
            let (name, detail) = match x.to_state.as_str() {
                "running" if from == "running" => (
                    "claimed",
                    format!(
                        "attempt {} of {}, taken over from a lapsed lease",
                        x.attempt, s.max_attempts
                    ),
                ),
                "running" => (
                    "claimed",
                    format!("attempt {} of {}", x.attempt, s.max_attempts),
                ),
                "retrying" => ("retrying", format!("attempt {} failed: {error}", x.attempt)),
                "published" => (
                    "handed_back",
                    "back on the queue, attempt not counted (worker shutdown or rescuer)".into(),
                ),
                "succeeded" => (
                    "succeeded",
                    format!(
                        "powered off: {}",
                        details.as_deref().unwrap_or("(no details)")
                    ),
                ),
                "failed" => ("failed", error),
                other => ("state_changed", format!("{from} -> {other}")),
            };
            // A handed-back job has no worker any more; say whose it was.
            let worker = match x.worker.clone() {
                None if name == "handed_back" => holder.clone(),
                w => w,
            };
            holder = worker.clone();
            step(x.at, name, x.attempt, worker, detail);
        }
        for d in &t.dead_letters {
            step(
                d.at,
                "dead_lettered",
                s.attempts,
                Some(d.worker.clone()),
                format!("a message of it went to {}: {}", d.queue, d.reason),
            );
        }
        // Stable order: by time, then as listed (the trigger's order).
        steps.sort_by_key(|x| x.at);
        for i in 1..steps.len() {
            steps[i].since_previous_seconds = seconds(steps[i].at - steps[i - 1].at);
        }
        let finished = s.finished_at.is_some();
        Trace {
            request_id: s.request_id.clone(),
            job_id: s.job_id,
            user_id: s.action_user_id.clone(),
            project_id: s.action_project_id.clone(),
            instance: Instance {
                uuid: s.instance_uuid,
                name: s.instance_name.clone(),
                host: s.instance_host.clone(),
                vm_state: s.vm_state.clone(),
                task_state: s.task_state.clone(),
                power_state: s.power_state,
            },
            state: s.state.clone(),
            finished,
            attempts: s.attempts,
            max_attempts: s.max_attempts,
            host: s.job_host.clone(),
            accepted_at,
            published_at: s.published_at,
            finished_at: s.finished_at,
            duration_seconds: seconds(s.finished_at.unwrap_or(now) - accepted_at),
            last_error: s.last_error.clone(),
            power_off: t.event.as_ref().map(|e| PowerOff {
                result: e.result.clone(),
                details: e.details.clone(),
                started_at: e.start_time,
                finished_at: e.finish_time,
                worker: e.host.clone(),
            }),
            fault: t.faults.last().map(|f| Fault {
                code: f.code,
                message: f.message.clone(),
                details: f.details.clone(),
                host: f.host.clone(),
                at: f.created_at,
            }),
            steps,
        }
    }

    /// The timeline for a person.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let _ = writeln!(out, "request  {}  (job {})", self.request_id, self.job_id);
        let _ = writeln!(
            out,
            "server   {} ({}) on host {}",
            self.instance.name, self.instance.uuid, self.instance.host
        );
        out.push('\n');
        for s in &self.steps {
            let gap = if s.since_previous_seconds > 0.0 || s.step != "accepted" {
                format!("+{}", human(s.since_previous_seconds))
            } else {
                String::new()
            };
            let who = match (&s.worker, &s.host) {
                (Some(w), Some(h)) => format!("worker {w} on host {h}: "),
                (Some(w), None) => format!("worker {w}: "),
                _ => String::new(),
            };
            let _ = writeln!(
                out,
                "  {}  {:>8}  {:<13} {who}{}",
                time(s.at),
                gap,
                s.step,
                s.detail
            );
        }
        out.push('\n');
        let tries = |n: i32| if n == 1 { "attempt" } else { "attempts" };
        let state = if self.finished {
            format!(
                "{} after {} {} of {}, {} from accepted to recorded",
                self.state,
                self.attempts,
                tries(self.attempts),
                self.max_attempts,
                human(self.duration_seconds)
            )
        } else {
            let publish = if self.published_at.is_none() && self.state == "queued" {
                "; not yet confirmed by RabbitMQ (the relay, or the host's worker when it starts, publishes it)"
            } else {
                ""
            };
            format!(
                "{} (unfinished), attempt {} of {}, {} since accepted{publish}",
                self.state,
                self.attempts,
                self.max_attempts,
                human(self.duration_seconds)
            )
        };
        let _ = writeln!(out, "final    {state}");
        let _ = writeln!(
            out,
            "server   now {}, task_state {}, power_state {}",
            self.instance.vm_state,
            self.instance.task_state.as_deref().unwrap_or("none"),
            self.instance.power_state
        );
        match &self.fault {
            Some(f) => {
                // The details usually repeat the message with more context.
                let text = match f.details.as_deref() {
                    Some(d) if d.contains(&f.message) => d.to_string(),
                    Some(d) => format!("{} ({d})", f.message),
                    None => f.message.clone(),
                };
                let _ = writeln!(out, "fault    {} {text}", f.code);
            }
            None => {
                let _ = writeln!(out, "fault    none");
            }
        }
        out
    }
}

fn time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S%.3fZ").to_string()
}

/// 0.004 → `4ms`, 1.5 → `1.50s`, 75 → `1m15s`.
pub fn human(secs: f64) -> String {
    if secs < 1.0 {
        format!("{:.0}ms", secs * 1000.0)
    } else if secs < 60.0 {
        format!("{secs:.2}s")
    } else {
        let s = secs.round() as u64;
        if s < 3600 {
            format!("{}m{:02}s", s / 60, s % 60)
        } else {
            format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
        }
    }
}

/// `trace REQUEST_ID`.
pub async fn request(pool: &sqlx::PgPool, id: &str, json: bool) -> anyhow::Result<()> {
    let Some(request_id) = RequestId::parse(id) else {
        anyhow::bail!(
            "{id:?} is not a request id: expected req- and a UUID, as in the API's X-Compute-Request-Id (req-1b4e28ba-2fa1-11d2-883f-0016d3cca427)"
        );
    };
    let Some(rows) = trace::by_request(pool, &request_id).await? else {
        return Err(Outcome::NotFound(format!(
            "no stop was accepted with request id {request_id}: a refused request leaves no row (its answer said why), and `prune` removes old finished stops"
        ))
        .into());
    };
    let t = Trace::from_rows(rows, Utc::now());
    if json {
        println!("{}", serde_json::to_string_pretty(&t)?);
    } else {
        print!("{}", t.render());
    }
    Ok(())
}

/// `trace --instance UUID --last N`: newest first.
pub async fn instance(
    pool: &sqlx::PgPool,
    instance: Uuid,
    last: i64,
    json: bool,
) -> anyhow::Result<()> {
    if !trace::instance_exists(pool, instance).await? {
        return Err(Outcome::NotFound(format!("no server {instance}")).into());
    }
    let now = Utc::now();
    let traces: Vec<Trace> = trace::by_instance(pool, instance, last)
        .await?
        .into_iter()
        .map(|t| Trace::from_rows(t, now))
        .collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&traces)?);
        return Ok(());
    }
    if traces.is_empty() {
        println!("server {instance} has no stops recorded");
    }
    for (i, t) in traces.iter().enumerate() {
        if i > 0 {
            println!("\n----\n");
        }
        print!("{}", t.render());
    }
    Ok(())
}
