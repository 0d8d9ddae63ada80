//! The nemesis: what goes wrong, and when. Faults run one after another at
//! fixed points of the send phase (the last ones as it ends, while the
//! backlog drains), so each one's effect can be told apart in the logs. A
//! worker fault waits for its target to be busy. Between faults the nemesis
//! supervises the fleet like an orchestrator would.

use std::fmt;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use sqlx::PgPool;

use crate::fleet::{Fleet, Terminated};
use crate::infra::Services;
use crate::say;

/// How long "the orchestrator" takes to restart a killed worker.
const RESTART_DELAY: Duration = Duration::from_secs(1);

/// How long a worker fault waits for its target to be busy.
const AIM_LIMIT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL a worker (no chance to hand back its jobs), then restart it.
    KillWorker(usize),
    /// SIGTERM a worker: it must exit 0 within its grace period. Restarted.
    TerminateWorker(usize),
    /// Stop PostgreSQL (fast shutdown) and start it on the same data.
    RestartPostgres,
    /// Stop the RabbitMQ node and start it on the same data.
    RestartRabbitMq,
    /// `--cluster`: stop the RabbitMQ node that leads the work queue (it
    /// stays down until [`Fault::StartRabbitNode`]).
    StopQueueLeader,
    /// `--cluster`: start the node stopped before.
    StartRabbitNode,
    /// `--cluster`: stop another node, and start it again a few seconds later.
    BounceOtherRabbitNode,
    /// `--cluster`: SIGKILL the PostgreSQL primary and promote the standby.
    KillPrimaryPromoteStandby,
    /// `--cluster`: rebuild the old primary as the new primary's
    /// synchronous standby (pg_basebackup).
    RebuildStandby,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::KillWorker(i) => write!(f, "SIGKILL worker chaos-w{}", i + 1),
            Fault::TerminateWorker(i) => write!(f, "SIGTERM worker chaos-w{}", i + 1),
            Fault::RestartPostgres => f.write_str("restart PostgreSQL"),
            Fault::RestartRabbitMq => f.write_str("restart RabbitMQ"),
            Fault::StopQueueLeader => f.write_str("stop the queue's leader"),
            Fault::StartRabbitNode => f.write_str("start that node again"),
            Fault::BounceOtherRabbitNode => f.write_str("stop+start another node"),
            Fault::KillPrimaryPromoteStandby => f.write_str("kill primary, promote"),
            Fault::RebuildStandby => f.write_str("rebuild old primary"),
        }
    }
}

/// A fault and when it starts, from the beginning of the send phase.
#[derive(Debug, Clone, Copy)]
pub struct Planned {
    pub at: Duration,
    pub fault: Fault,
}

/// Two kills, one SIGTERM, one restart each of the database and the broker.
/// The broker restart comes late, so that its outage outlasts the send
/// phase: the jobs committed meanwhile reach the workers in a burst once it
/// is back, and the second kill lands in that burst, after the send phase.
pub fn schedule(send: Duration, workers: usize) -> Vec<Planned> {
    let w = |k: usize| k % workers.max(1);
    let at = |f: f64| send.mul_f64(f);
    vec![
        Planned {
            at: at(0.15),
            fault: Fault::KillWorker(w(0)),
        },
        Planned {
            at: at(0.35),
            fault: Fault::RestartPostgres,
        },
        Planned {
            at: at(0.55),
            fault: Fault::TerminateWorker(w(1)),
        },
        Planned {
            at: at(0.8),
            fault: Fault::RestartRabbitMq,
        },
        // As soon as the broker is back (the loop runs late faults at once).
        Planned {
            at: at(0.8),
            fault: Fault::KillWorker(w(2)),
        },
    ]
}

/// `--cluster`: the five cluster faults, one after another, with room
/// between them for the system to show it recovered.
pub fn cluster_schedule(send: Duration) -> Vec<Planned> {
    let at = |f: f64| send.mul_f64(f);
    [
        (0.1, Fault::StopQueueLeader),
        (0.3, Fault::StartRabbitNode),
        (0.45, Fault::BounceOtherRabbitNode),
        (0.6, Fault::KillPrimaryPromoteStandby),
        (0.85, Fault::RebuildStandby),
    ]
    .into_iter()
    .map(|(f, fault)| Planned { at: at(f), fault })
    .collect()
}

/// How long [`Fault::BounceOtherRabbitNode`] keeps its node down.
const BOUNCE_DOWN: Duration = Duration::from_secs(5);

/// A fault that was carried out.
#[derive(Debug, Clone)]
pub struct Done {
    pub fault: Fault,
    /// Seconds since the run began (as in the progress lines).
    pub at: f64,
    /// From the first signal until the service was back.
    pub took: Duration,
    /// For a SIGTERM: how the worker exited.
    pub terminated: Option<Terminated>,
    /// For a worker fault: the jobs it was running when the signal went out
    /// (a kill of an idle worker proves little).
    pub running_jobs: Option<i64>,
    /// When it began, on the database's clock's terms (UTC), to find the
    /// first stop completed after it.
    pub began: chrono::DateTime<chrono::Utc>,
    /// Which node it hit, when it says more than the fault's name.
    pub detail: Option<String>,
    /// From its start to the first stop that succeeded afterwards (filled
    /// in after the run settled).
    pub first_completion: Option<Duration>,
}

pub async fn run(
    plan: &[Planned],
    t0: Instant,
    infra: &mut Services,
    fleet: &mut Fleet,
    pool: &PgPool,
    term_limit: Duration,
) -> Result<Vec<Done>> {
    let mut done = Vec::with_capacity(plan.len());
    for p in plan {
        // Wait for its moment, restarting anything that died meanwhile.
        while Instant::now() < t0 + p.at {
            fleet.revive().await?;
            let left = (t0 + p.at).saturating_duration_since(Instant::now());
            tokio::time::sleep(left.min(Duration::from_millis(250))).await;
        }
        let at = crate::progress::now();
        say!("fault: {}", p.fault);
        let started = Instant::now();
        let began = chrono::Utc::now();
        let mut terminated = None;
        let mut detail = None;
        let running_jobs = match p.fault {
            Fault::KillWorker(i) | Fault::TerminateWorker(i) => aim(pool, fleet.worker_id(i)).await,
            _ => None,
        };
        if let Some(n) = running_jobs {
            say!("  {n} jobs running on it");
        }
        match p.fault {
            Fault::KillWorker(i) => {
                fleet.kill_worker(i).await?;
                tokio::time::sleep(RESTART_DELAY).await;
                fleet.start_worker(i).await?;
            }
            Fault::TerminateWorker(i) => {
                let t = fleet.terminate_worker(i, term_limit).await?;
                say!(
                    "  {} ended after {:.1}s: {}",
                    t.worker,
                    t.took.as_secs_f64(),
                    t.status
                        .map(|s| s.to_string())
                        .unwrap_or_else(|| "did not exit in time (killed)".into()),
                );
                terminated = Some(t);
                fleet.start_worker(i).await?;
            }
            Fault::RestartPostgres => {
                infra
                    .single()?
                    .postgres
                    .restart()
                    .await
                    .context("restarting PostgreSQL")?;
            }
            Fault::RestartRabbitMq => {
                infra
                    .single()?
                    .rabbitmq
                    .restart()
                    .await
                    .context("restarting RabbitMQ")?;
            }
            Fault::StopQueueLeader => {
                let n = infra.cluster()?.stop_queue_leader().await?;
                detail = Some(format!("node {n}"));
            }
            Fault::StartRabbitNode => {
                let n = infra.cluster()?.start_stopped_rabbit().await?;
                detail = Some(format!("node {n}"));
            }
            Fault::BounceOtherRabbitNode => {
                let n = infra.cluster()?.bounce_other_rabbit(BOUNCE_DOWN).await?;
                detail = Some(format!("node {n}, down {}s", BOUNCE_DOWN.as_secs()));
            }
            Fault::KillPrimaryPromoteStandby => {
                infra
                    .cluster()?
                    .kill_primary_and_promote()
                    .await
                    .context("failing PostgreSQL over")?;
            }
            Fault::RebuildStandby => {
                infra
                    .cluster()?
                    .rebuild_standby()
                    .await
                    .context("rebuilding the standby")?;
            }
        }
        if let Some(d) = &detail {
            say!("  {d}");
        }
        let took = started.elapsed();
        say!("  {} done in {:.1}s", p.fault, took.as_secs_f64());
        done.push(Done {
            fault: p.fault,
            at,
            took,
            terminated,
            running_jobs,
            began,
            detail,
            first_completion: None,
        });
    }
    Ok(done)
}

/// Waits until `worker` is running at least one job (or [`AIM_LIMIT`]
/// passed), so the signal hits work in progress: killing an idle worker
/// proves little. Returns the jobs it holds at that moment.
async fn aim(pool: &PgPool, worker: &str) -> Option<i64> {
    let deadline = Instant::now() + AIM_LIMIT;
    loop {
        let n = running_jobs(pool, worker).await;
        if n.unwrap_or(0) > 0 || Instant::now() > deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Jobs `worker` holds right now; None if the database cannot say.
async fn running_jobs(pool: &PgPool, worker: &str) -> Option<i64> {
    let query =
        sqlx::query_scalar("SELECT count(*) FROM jobs WHERE state = 'running' AND worker = $1")
            .bind(worker)
            .fetch_one(pool);
    tokio::time::timeout(Duration::from_secs(2), query)
        .await
        .ok()?
        .ok()
}

/// Fills in each fault's [`Done::first_completion`]: the first job that
/// succeeded after the fault began, from `job_transitions`.
pub async fn first_completions(pool: &PgPool, done: &mut [Done]) -> Result<()> {
    for d in done {
        let first: Option<chrono::DateTime<chrono::Utc>> = sqlx::query_scalar(
            "SELECT min(at) FROM job_transitions WHERE to_state = 'succeeded' AND at > $1",
        )
        .bind(d.began)
        .fetch_one(pool)
        .await?;
        d.first_completion = first.and_then(|t| (t - d.began).to_std().ok());
    }
    Ok(())
}
