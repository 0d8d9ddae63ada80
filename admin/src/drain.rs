//! `drain --host H`: a stop for every stoppable server of a host, through the
//! API's own acceptor (same checks, same statement, same audit rows) and
//! publisher, then a progress line until the stops are recorded and a table
//! of what happened to each server.
//!
//! Safe to interrupt and run again: what was accepted is committed (and
//! published, or left to the relay), and the next run finds those servers
//! powering-off with their stop under way, so it waits for that stop instead
//! of asking for another.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use futures::StreamExt;
use shutoff_core::acceptor::{AcceptError, Acceptor, StopRequest};
use shutoff_core::batch::Ticket;
use shutoff_core::broker::{BrokerError, BrokerTimeouts, Publisher};
use shutoff_core::config::Queues;
use shutoff_core::ids::{HostName, ProjectId, RequestId};
use shutoff_core::message::StopJob;
use shutoff_core::policy::{self, Refusal};
use shutoff_core::store::drain::{self, HostServer};
use shutoff_core::store::publish;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::Outcome;
use crate::trace::human;

/// Stops accepted and published at once: enough for the acceptor to fill
/// its batches, few enough that an interrupt finds little in flight.
const CONCURRENCY: usize = 64;
/// How often the drain reads its stops' states (one statement by key).
const POLL: Duration = Duration::from_millis(200);
/// How often the progress line is written when stderr is not a terminal.
const LOG_EVERY: Duration = Duration::from_secs(2);

/// A stop's acceptance: its job and whether RabbitMQ confirmed it, or why not.
type Accepted = Result<(StopJob, bool), AcceptError>;

/// What the command line asked for.
pub struct Drain<'a> {
    pub host: HostName,
    pub dry_run: bool,
    pub timeout: Duration,
    pub include_locked: bool,
    pub max_attempts: i32,
    pub queues: &'a Queues,
}

/// What the drain does, or did, with one server.
#[derive(Debug, Clone)]
enum Fate {
    /// To be stopped by this run.
    Stop,
    /// Refused, with Nova's reason.
    Skip(Refusal),
    /// Accepted by this run or found under way; `earlier` names who asked
    /// for a stop found under way.
    Stopping {
        job: StopJob,
        earlier: Option<String>,
    },
    Stopped {
        request_id: String,
        earlier: Option<String>,
    },
    Failed {
        request_id: String,
        reason: String,
    },
    /// Interrupted before its stop was asked for.
    NotStarted,
}

impl Fate {
    fn label(&self) -> &'static str {
        match self {
            Fate::Stop => "stop",
            Fate::Skip(_) => "skipped",
            Fate::Stopping { .. } => "stopping",
            Fate::Stopped { .. } => "stopped",
            Fate::Failed { .. } => "FAILED",
            Fate::NotStarted => "not started",
        }
    }

    fn request_id(&self) -> &str {
        match self {
            Fate::Stopping { job, .. } => &job.request_id,
            Fate::Stopped { request_id, .. } | Fate::Failed { request_id, .. } => request_id,
            _ => "",
        }
    }

    fn reason(&self) -> String {
        match self {
            Fate::Skip(r) => r.to_string(),
            Fate::Failed { reason, .. } => reason.clone(),
            Fate::Stopping {
                earlier: Some(who), ..
            }
            | Fate::Stopped {
                earlier: Some(who), ..
            } => format!("stop asked for earlier by {who}"),
            Fate::NotStarted => "interrupted before its stop was asked for".into(),
            _ => String::new(),
        }
    }
}

/// The drain's caller for a server: its own project, with the admin tool's
/// user recorded on the action. A member, so a lock holds as it does for
/// the server's owner; an admin with `--include-locked` (Nova lets an admin
/// stop a locked server, as `server stop` does).
fn caller(project: &str, include_locked: bool) -> Option<policy::Caller> {
    let role = if include_locked { "admin" } else { "member" };
    Some(policy::Caller {
        project_id: ProjectId::parse(project)?,
        user_id: crate::ADMIN_USER.into(),
        roles: vec![role.into()],
        project_active: true,
    })
}

/// The plan for one server, from the row as read: a stop under way is waited
/// for whoever asked for it; otherwise the acceptor's own checks decide.
fn plan(s: &HostServer, include_locked: bool) -> Fate {
    if let Some(p) = &s.pending {
        return Fate::Stopping {
            job: p.job.clone(),
            earlier: Some(p.user_id.clone()),
        };
    }
    let Some(caller) = caller(&s.check.project_id, include_locked) else {
        return Fate::Skip(Refusal::NotFound(s.id.to_string()));
    };
    match policy::check_stop(&caller, s.id, Some(&s.check)) {
        Ok(()) => Fate::Stop,
        Err(r) => Fate::Skip(r),
    }
}

/// Runs `drain` to the end: `Ok` when every stop asked for was recorded
/// stopped; [`Outcome::StopsFailed`] when one failed or is still under way
/// at the timeout, [`Outcome::Interrupted`] on Ctrl-C.
pub async fn run(pool: &sqlx::PgPool, d: Drain<'_>) -> anyhow::Result<()> {
    let servers = drain::host_servers(pool, &d.host).await?;
    if servers.is_empty() {
        return Err(Outcome::NotFound(format!("host {} has no servers", d.host)).into());
    }
    let mut fates: Vec<Fate> = servers.iter().map(|s| plan(s, d.include_locked)).collect();
    if d.dry_run {
        table(&servers, &fates);
        let n = |l: &str| fates.iter().filter(|f| f.label() == l).count();
        println!(
            "\nwould stop {}, wait for {} already stopping, skip {} (dry run: nothing changed)",
            n("stop"),
            n("stopping"),
            n("skipped")
        );
        return Ok(());
    }

    // Ctrl-C (or SIGTERM): no new stop is asked for; those in flight finish
    // their acceptance and publish, so nothing is left half done.
    let cancel = CancellationToken::new();
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut int = signal(SignalKind::interrupt())?;
        let mut term = signal(SignalKind::terminate())?;
        let cancel = cancel.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            cancel.cancel();
        });
    }

    d.queues.amqp_tls.check(&d.queues.amqp_url)?;
    let publisher = Publisher::new(
        &d.queues.amqp_url,
        &d.queues.amqp_tls,
        "shutoff-admin drain",
        d.queues.topology(),
        BrokerTimeouts::default(),
    );
    let acceptor = Acceptor::new(pool.clone());
    let notes = Notes::default();

    // Stops found under way but never confirmed by RabbitMQ (an earlier
    // drain interrupted between commit and publish, a broker outage): publish
    // them, as the relay would. A duplicate is normal to the workers.
    let unconfirmed: Vec<StopJob> = servers
        .iter()
        .filter_map(|s| s.pending.as_ref().filter(|p| p.unpublished))
        .map(|p| p.job.clone())
        .collect();
    let mut confirmed = Vec::new();
    for job in &unconfirmed {
        if notes.publish(&publisher, job).await {
            confirmed.push(job.job_id);
        }
    }

    let to_stop: Vec<usize> = (0..servers.len())
        .filter(|&i| matches!(fates[i], Fate::Stop))
        .collect();
    let started = Instant::now();
    let accepted: Vec<(usize, Accepted)> = futures::stream::iter(to_stop.iter().copied())
        .take_while(|_| std::future::ready(!cancel.is_cancelled()))
        .map(|i| {
            let s = &servers[i];
            let acceptor = &acceptor;
            let publisher = &publisher;
            let notes = &notes;
            let include_locked = d.include_locked;
            let max_attempts = d.max_attempts;
            async move {
                let caller = caller(&s.check.project_id, include_locked)
                    .expect("planned servers have a valid project");
                let request_id = RequestId::new();
                let stop = StopRequest {
                    caller: &caller,
                    server: s.id,
                    request_id: &request_id,
                    max_attempts,
                };
                let result = match acceptor.accept(stop, &Ticket::new()).await {
                    Ok(job) => {
                        let ok = notes.publish(publisher, &job).await;
                        Ok((job, ok))
                    }
                    Err(e) => Err(e),
                };
                (i, result)
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let mut store_errors = Vec::new();
    for i in &to_stop {
        fates[*i] = Fate::NotStarted;
    }
    for (i, result) in accepted {
        fates[i] = match result {
            Ok((job, ok)) => {
                if ok {
                    confirmed.push(job.job_id);
                }
                Fate::Stopping { job, earlier: None }
            }
            // The row changed since it was read (locked, stopped, or another
            // stop accepted meanwhile): Nova's answer, as the API would give it.
            Err(AcceptError::Refused(r)) => Fate::Skip(r),
            Err(AcceptError::Store(e)) => {
                store_errors.push(e.to_string());
                Fate::Failed {
                    request_id: String::new(),
                    reason: format!("not accepted: {e}"),
                }
            }
        };
    }
    // Recorded as the API's relay records confirms; a lost mark only means
    // the relay publishes once more.
    if !confirmed.is_empty() {
        publish::mark_published(pool, &confirmed).await.ok();
    }
    let n_accepted = fates
        .iter()
        .filter(|f| matches!(f, Fate::Stopping { earlier: None, .. }))
        .count();
    let n_earlier = fates
        .iter()
        .filter(|f| {
            matches!(
                f,
                Fate::Stopping {
                    earlier: Some(_),
                    ..
                }
            )
        })
        .count();
    eprintln!(
        "drain {}: {} servers; accepted {n_accepted} stops in {}, waiting for {n_earlier} already under way, skipped {}",
        d.host,
        servers.len(),
        human(started.elapsed().as_secs_f64()),
        fates.iter().filter(|f| matches!(f, Fate::Skip(_))).count()
    );
    notes.print(&d.host);

    let interrupted = cancel.is_cancelled() || wait(pool, &d, &mut fates, &cancel).await?;

    table(&servers, &fates);
    let count = |l: &str| fates.iter().filter(|f| f.label() == l).count();
    let (stopped, failed, stopping, not_started) = (
        count("stopped"),
        count("FAILED"),
        count("stopping"),
        count("not started"),
    );
    println!(
        "\nhost {}: {} servers: stopped {stopped}, failed {failed}, still stopping {stopping}, skipped {}, not started {not_started}",
        d.host,
        servers.len(),
        count("skipped")
    );
    if interrupted {
        return Err(Outcome::Interrupted(format!(
            "{stopping} stops still under way and {not_started} not asked for; run the same drain again to wait for them and stop the rest"
        ))
        .into());
    }
    if failed > 0 || stopping > 0 {
        return Err(Outcome::StopsFailed(format!(
            "stops failed: {failed}, not finished within {}: {stopping} (those go on; run the drain again to wait for them); `shutoff-admin trace REQUEST_ID` shows what happened to one",
            humantime::format_duration(d.timeout)
        ))
        .into());
    }
    Ok(())
}

/// Waits until every stop under way is recorded, the timeout passes or the
/// drain is interrupted (true), with a progress line on stderr.
async fn wait(
    pool: &sqlx::PgPool,
    d: &Drain<'_>,
    fates: &mut [Fate],
    cancel: &CancellationToken,
) -> anyhow::Result<bool> {
    let mut by_job: HashMap<Uuid, usize> = fates
        .iter()
        .enumerate()
        .filter_map(|(i, f)| match f {
            Fate::Stopping { job, .. } => Some((job.job_id, i)),
            _ => None,
        })
        .collect();
    let total = by_job.len();
    let accepted = fates
        .iter()
        .filter(|f| matches!(f, Fate::Stopping { earlier: None, .. }))
        .count();
    let tty = std::io::stderr().is_terminal();
    let start = Instant::now();
    let deadline = tokio::time::Instant::now() + d.timeout;
    let mut last_log: Option<Instant> = None;
    let (mut stopped, mut failed) = (0usize, 0usize);
    let mut interrupted = false;
    while !by_job.is_empty() {
        let ids: Vec<Uuid> = by_job.keys().copied().collect();
        for p in drain::progress(pool, &ids).await? {
            let terminal = p.state == "succeeded" || p.state == "failed";
            if !terminal {
                continue;
            }
            let Some(i) = by_job.remove(&p.job_id) else {
                continue;
            };
            let Fate::Stopping { job, earlier } = &fates[i] else {
                continue;
            };
            fates[i] = if p.state == "succeeded" {
                stopped += 1;
                Fate::Stopped {
                    request_id: job.request_id.clone(),
                    earlier: earlier.clone(),
                }
            } else {
                failed += 1;
                Fate::Failed {
                    request_id: job.request_id.clone(),
                    reason: p.last_error.unwrap_or_else(|| "failed".into()),
                }
            };
        }
        let done = stopped + failed;
        let elapsed = start.elapsed().as_secs_f64().max(0.001);
        let rate = done as f64 / elapsed;
        let left = total - done;
        let eta = if left == 0 {
            "0s".to_string()
        } else if rate > 0.0 {
            human(left as f64 / rate)
        } else {
            "?".to_string()
        };
        let line = format!(
            "drain {}: accepted {accepted}  stopped {stopped}/{total}  failed {failed}  left {left}  {rate:.1}/s  ETA {eta}",
            d.host
        );
        if tty {
            eprint!("\r{line}\x1b[K");
        } else if by_job.is_empty() || last_log.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
            eprintln!("{line}");
            last_log = Some(Instant::now());
        }
        if by_job.is_empty() {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = tokio::time::sleep_until(deadline) => break,
            _ = cancel.cancelled() => { interrupted = true; break; }
        }
    }
    if tty {
        eprintln!();
    }
    Ok(interrupted)
}

/// What the broker said about the drain's publishes, said once at the end
/// of the acceptance instead of once per stop.
#[derive(Default)]
struct Notes {
    unroutable: std::sync::atomic::AtomicUsize,
    failed: std::sync::Mutex<Option<(usize, String)>>,
}

impl Notes {
    /// Publishes a committed stop; true if RabbitMQ confirmed it.
    async fn publish(&self, publisher: &Publisher, job: &StopJob) -> bool {
        match publisher.publish(job).await {
            Ok(()) => true,
            Err(BrokerError::Unroutable(_)) => {
                self.unroutable
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                false
            }
            Err(e) => {
                let mut f = self.failed.lock().expect("not poisoned");
                let n = f.as_ref().map_or(0, |(n, _)| *n);
                *f = Some((n + 1, e.to_string()));
                false
            }
        }
    }

    fn print(&self, host: &HostName) {
        let unroutable = self.unroutable.load(std::sync::atomic::Ordering::Relaxed);
        if unroutable > 0 {
            eprintln!(
                "note: host {host} has no queue yet (no worker of it has started): {unroutable} stops wait in PostgreSQL until `shutoff-worker --host {host}` starts"
            );
        }
        if let Some((n, e)) = self.failed.lock().expect("not poisoned").as_ref() {
            eprintln!(
                "warning: {n} stops are committed but not published ({e}); the API's relay publishes them"
            );
        }
    }
}

/// One line per server: failures first, then what is still under way,
/// what was skipped and what was stopped.
fn table(servers: &[HostServer], fates: &[Fate]) {
    let rank = |f: &Fate| match f {
        Fate::Failed { .. } => 0,
        Fate::Stopping { .. } => 1,
        Fate::NotStarted => 2,
        Fate::Skip(_) => 3,
        Fate::Stop => 4,
        Fate::Stopped { .. } => 5,
    };
    let mut order: Vec<usize> = (0..servers.len()).collect();
    order.sort_by_key(|&i| rank(&fates[i]));
    let width = servers
        .iter()
        .map(|s| s.name.chars().count())
        .max()
        .unwrap_or(0)
        .clamp(6, 40);
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "{:<width$}  {:<36}  {:<11}  {:<40}  reason",
        "server", "uuid", "outcome", "request"
    );
    for i in order {
        let (s, f) = (&servers[i], &fates[i]);
        let name: String = s.name.chars().take(width).collect();
        let _ = writeln!(
            out,
            "{name:<width$}  {:<36}  {:<11}  {:<40}  {}",
            s.id,
            f.label(),
            f.request_id(),
            f.reason()
        );
    }
}
