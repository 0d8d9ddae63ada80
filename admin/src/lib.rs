//! `shutoff-admin`: what an operator (or the demo script) needs to set up and
//! inspect shutoff. Every argument is checked before anything is written.
//!
//! - [`cli`]: the command line; each subcommand takes only the flags it uses.
//! - [`run`]: carries a command out, through the store of `shutoff-core`; the
//!   hypervisor address of `server create` is checked by the drivers of
//!   `shutoff-hypervisor`, the ones the worker uses, and `server stop` goes
//!   through the API's own acceptor (`shutoff_core::acceptor`).
//! - [`trace`]: what happened to one stop, or to a server's last stops.
//! - [`drain`]: a stop for every stoppable server of a host, through the same
//!   acceptor and publisher, waited for with a progress line.
//! - [`Outcome`]: the ways a command ends that get their own exit code.
//!
//! It links neither the API nor the worker.

pub mod cli;
pub mod drain;
pub mod trace;

use std::time::Duration;

use anyhow::{Context, bail};
use shutoff_core::acceptor::{AcceptError, Acceptor, StopRequest};
use shutoff_core::batch::Ticket;
use shutoff_core::broker::{BrokerError, BrokerTimeouts, Publisher};
use shutoff_core::config::{DEFAULT_HOST_DOWN_AFTER_SECS, Queues};
use shutoff_core::ids::{ProjectId, RequestId, ServerId};
use shutoff_core::policy::{Caller, Refusal};
use shutoff_core::state::{PowerState, TaskState, VmState};
use shutoff_core::store::admin::Cancel;
use shutoff_core::store::{self, admin, hosts, publish, reads};
use shutoff_hypervisor::DriverError;
use uuid::Uuid;

pub use cli::Cli;
use cli::{Command, JobsCommand, ProjectCommand, Role, ServerCommand, TokenCommand};

/// The user recorded on the instance actions of the stops this tool asks for.
pub const ADMIN_USER: &str = "shutoff-admin";

/// How a command ended, when that is not plain success or a bad argument
/// (exit code 2): `main` turns it into the process's exit code, so a script
/// can tell "not there" from "went wrong".
#[derive(Debug, thiserror::Error)]
pub enum Outcome {
    /// Stops failed or did not finish in time (exit 1).
    #[error("{0}")]
    StopsFailed(String),
    /// What was asked about is not recorded (exit 3).
    #[error("{0}")]
    NotFound(String),
    /// Ctrl-C or SIGTERM (exit 130, as a shell reports SIGINT).
    #[error("interrupted: {0}")]
    Interrupted(String),
}

impl Outcome {
    pub fn exit_code(&self) -> u8 {
        match self {
            Outcome::StopsFailed(_) => 1,
            Outcome::NotFound(_) => 3,
            Outcome::Interrupted(_) => 130,
        }
    }
}

/// The exit code for a command's error: its [`Outcome`]'s, else 2.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    e.downcast_ref::<Outcome>().map_or(2, Outcome::exit_code)
}

fn parse_project(s: &str) -> anyhow::Result<ProjectId> {
    ProjectId::parse(s).with_context(|| format!("project id {s:?} is not 32 hex characters"))
}

async fn existing_project(pool: &sqlx::PgPool, s: &str) -> anyhow::Result<ProjectId> {
    let id = parse_project(s)?;
    if !admin::project_exists(pool, &id).await? {
        bail!("project {id} does not exist");
    }
    Ok(id)
}

/// The drivers the worker uses (`shutoff-hypervisor`) decide what a valid
/// address is; unless `verify` is off, the VM must also answer, in a power
/// state that matches the vm_state it is registered with.
async fn check_hypervisor(
    address: &str,
    libvirt_uri: &str,
    vm_state: VmState,
    verify: bool,
) -> anyhow::Result<()> {
    let settings = shutoff_hypervisor::DriverSettings {
        libvirt_uri: libvirt_uri.to_string(),
        ..Default::default()
    };
    let driver =
        shutoff_hypervisor::driver_with(address, &settings).map_err(|e| anyhow::anyhow!("{e}"))?;
    if !verify {
        return Ok(());
    }
    let state = tokio::time::timeout(Duration::from_secs(15), driver.power_state(Uuid::nil()))
        .await
        .unwrap_or_else(|_| Err(DriverError::transient("no answer within 15 s")))
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot reach the VM at {address}: {e} (--no-verify registers it anyway)"
            )
        })?;
    match (vm_state, state) {
        (VmState::Active, PowerState::Shutdown | PowerState::Crashed) => bail!(
            "the VM at {address} is not running ({state:?}): start it, register it with --vm-state stopped, or use --no-verify"
        ),
        (VmState::Stopped, PowerState::Running) => bail!(
            "the VM at {address} is running but would be registered stopped: use --vm-state active, or --no-verify"
        ),
        _ => Ok(()),
    }
}

/// Carries out one command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let database_url = &cli.database.database_url;
    if let Command::Migrate { queues } = &cli.command {
        // Before anything is migrated: TLS settings that can never work.
        queues.amqp_tls.check(&queues.amqp_url)?;
        store::create_and_migrate(database_url).await?;
        println!("migrated");
        let topology = queues.topology();
        match shutoff_core::broker::connect(
            &queues.amqp_url,
            &queues.amqp_tls,
            0,
            "shutoff-admin",
            &topology,
            std::time::Duration::from_secs(5),
        )
        .await
        {
            Ok(c) => {
                let _ = c.conn.close(200, "done".into()).await;
                println!(
                    "declared queues {} (each host's own queue is declared by its workers)",
                    topology.shared_queues().join(", ")
                );
            }
            // Settings that can never work are an error; a broker that is
            // down (or refuses our certificate) only a warning.
            Err(e @ BrokerError::TlsSetting(_)) => return Err(e.into()),
            Err(e) => eprintln!(
                "warning: queues not declared ({e}); the API and workers declare them on start"
            ),
        }
        return Ok(());
    }
    let pool = store::pool(
        database_url,
        &store::PoolSettings::default(),
        "shutoff-admin",
    );
    match cli.command {
        Command::Migrate { .. } => unreachable!(),
        Command::Project {
            command: ProjectCommand::Create { name, id },
        } => {
            let name = name.trim();
            if name.is_empty() || name.len() > 255 {
                bail!("project name must be 1 to 255 characters");
            }
            let id = match id {
                Some(s) => parse_project(&s)?,
                None => ProjectId::random(),
            };
            admin::create_project(&pool, &id, name).await.map_err(|e| {
                match e.as_database_error() {
                    Some(d) if d.is_unique_violation() => {
                        anyhow::anyhow!("a project with this id or name already exists")
                    }
                    _ => e.into(),
                }
            })?;
            println!("{id}");
        }
        Command::Token {
            command:
                TokenCommand::Create {
                    project,
                    user,
                    role,
                    ttl,
                },
        } => {
            let project = existing_project(&pool, &project).await?;
            let roles: Vec<String> = match role {
                Role::Admin => vec!["admin".into(), "member".into(), "reader".into()],
                Role::Member => vec!["member".into(), "reader".into()],
                Role::Reader => vec!["reader".into()],
            };
            let expires = chrono::Utc::now() + chrono::Duration::seconds(ttl);
            let token = admin::create_token(&pool, &project, &user, &roles, expires).await?;
            println!("{token}");
        }
        Command::Server {
            command:
                ServerCommand::Create {
                    project,
                    name,
                    user,
                    vm_state,
                    task_state,
                    not_launched,
                    locked,
                    hypervisor,
                    libvirt_uri,
                    no_verify,
                    host,
                },
        } => {
            let Some(vm_state) = VmState::parse(&vm_state) else {
                let known: Vec<&str> = VmState::ALL.iter().map(|s| s.as_str()).collect();
                bail!("vm_state {vm_state:?} is not one of {}", known.join(", "));
            };
            if name.trim().is_empty() || name.len() > 255 {
                bail!("server name must be 1 to 255 characters");
            }
            check_hypervisor(&hypervisor, &libvirt_uri, vm_state, !no_verify).await?;
            let project = existing_project(&pool, &project).await?;
            let mut s = admin::NewServer::new(&project, &name);
            s.user_id = user;
            s.vm_state = vm_state;
            s.task_state = task_state.as_deref().map(TaskState::parse);
            s.launched = !not_launched;
            s.locked = locked;
            s.hypervisor = hypervisor;
            s.host = host.to_string();
            println!("{}", admin::create_server(&pool, &s).await?);
            let down_after = Duration::from_secs(DEFAULT_HOST_DOWN_AFTER_SECS);
            if !hosts::is_up(&pool, host.as_str(), down_after).await? {
                eprintln!(
                    "note: host {host} has no live worker yet; this server's stops are accepted and wait until `shutoff-worker --host {host}` starts"
                );
            }
        }
        Command::Server {
            command:
                ServerCommand::Stop {
                    server,
                    max_attempts,
                    queues,
                },
        } => stop_server(&pool, server, max_attempts, &queues).await?,
        Command::Prune {
            older_than,
            dry_run,
            batch,
            archive_to,
        } => prune(&pool, older_than, dry_run, batch, archive_to.as_deref()).await?,
        Command::Jobs {
            command: Some(JobsCommand::Cancel { job, reason }),
            ..
        } => match admin::cancel_job(&pool, job, &reason).await? {
            Cancel::Cancelled => println!("cancelled {job}: {reason}"),
            Cancel::Finished(state) => bail!("job {job} already {state}; nothing to cancel"),
            Cancel::NotFound => bail!("no job {job}"),
            Cancel::Held { worker, until } => bail!(
                "job {job} is held by worker {} until {}: it may be powering the VM off now; stop that worker or wait for its lease to lapse, then cancel again",
                worker.as_deref().unwrap_or("?"),
                until.map(|t| t.to_rfc3339()).unwrap_or_default()
            ),
        },
        Command::Jobs {
            command: None,
            instance,
            limit,
        } => {
            println!(
                "{:<36}  {:<36}  {:<44}  {:<9}  {:>8}  {:<16}  {:<20}  error",
                "job", "instance", "request", "state", "attempts", "host", "worker"
            );
            for j in reads::jobs(&pool, instance, limit.clamp(1, 10_000)).await? {
                println!(
                    "{:<36}  {:<36}  {:<44}  {:<9}  {:>4}/{:<3}  {:<16}  {:<20}  {}",
                    j.id,
                    j.instance_uuid,
                    j.request_id,
                    j.state,
                    j.attempts,
                    j.max_attempts,
                    j.host.unwrap_or_default(),
                    j.worker.unwrap_or_default(),
                    j.last_error.unwrap_or_default()
                );
            }
        }
        Command::Trace {
            request_id,
            instance,
            last,
            json,
        } => match (request_id, instance) {
            (_, Some(instance)) => trace::instance(&pool, instance, last, json).await?,
            (Some(id), None) => trace::request(&pool, &id, json).await?,
            (None, None) => unreachable!("clap requires one of them"),
        },
        Command::Drain {
            host,
            dry_run,
            timeout,
            include_locked,
            max_attempts,
            queues,
        } => {
            drain::run(
                &pool,
                drain::Drain {
                    host,
                    dry_run,
                    timeout,
                    include_locked,
                    max_attempts,
                    queues: &queues,
                },
            )
            .await?
        }
        Command::Hosts {
            host_down_after_secs,
        } => {
            let rows = hosts::list(&pool, Duration::from_secs(host_down_after_secs)).await?;
            println!(
                "{:<24}  {:<5}  {:>7}  {:<25}  {:<25}  workers",
                "host", "state", "waiting", "waiting since", "last seen"
            );
            let time = |t: Option<chrono::DateTime<chrono::Utc>>| {
                t.map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
                    .unwrap_or_else(|| "-".into())
            };
            for h in rows {
                println!(
                    "{:<24}  {:<5}  {:>7}  {:<25}  {:<25}  {}",
                    h.name,
                    if h.up { "up" } else { "down" },
                    h.waiting,
                    time(h.waiting_since),
                    time(h.last_seen),
                    if h.workers.is_empty() {
                        "-".to_string()
                    } else {
                        h.workers.join(", ")
                    }
                );
            }
        }
    }
    Ok(())
}

/// `server stop`: the API's acceptance, as an admin of the server's own
/// project, then the API's publish (with the confirm recorded, so the relay
/// does not publish it twice).
async fn stop_server(
    pool: &sqlx::PgPool,
    server: Uuid,
    max_attempts: i32,
    queues: &Queues,
) -> anyhow::Result<()> {
    // Before anything is committed: TLS settings that can never work.
    queues.amqp_tls.check(&queues.amqp_url)?;
    let id = ServerId(server);
    let Some(project) = admin::server_project(pool, id).await? else {
        bail!("{}", Refusal::NotFound(server.to_string()));
    };
    let caller = Caller {
        project_id: project,
        user_id: ADMIN_USER.into(),
        roles: vec!["admin".into()],
        project_active: true,
    };
    let request_id = RequestId::new();
    let stop = StopRequest {
        caller: &caller,
        server: id,
        request_id: &request_id,
        max_attempts,
    };
    let job = match Acceptor::new(pool.clone())
        .accept(stop, &Ticket::new())
        .await
    {
        Ok(job) => job,
        Err(AcceptError::Refused(r)) => bail!("{r}"),
        Err(AcceptError::Store(e)) => return Err(e).context("the stop was not accepted"),
    };
    let publisher = Publisher::new(
        &queues.amqp_url,
        &queues.amqp_tls,
        "shutoff-admin",
        queues.topology(),
        BrokerTimeouts::default(),
    );
    match publisher.publish(&job).await {
        Ok(()) => {
            publish::mark_published(pool, &[job.job_id]).await.ok();
            println!("{request_id} {}", job.job_id);
        }
        Err(BrokerError::Unroutable(_)) => {
            println!("{request_id} {}", job.job_id);
            eprintln!(
                "note: host {} has no queue yet (no worker of it has started); the stop waits in PostgreSQL until `shutoff-worker --host {}` starts",
                job.host, job.host
            );
        }
        Err(e) => {
            println!("{request_id} {}", job.job_id);
            eprintln!(
                "warning: the stop is committed but not published ({e}); the API's relay publishes it"
            );
        }
    }
    Ok(())
}

/// `prune`: batches until nothing older than the cutoff is left, a progress
/// line on stderr, a summary per table on stdout.
async fn prune(
    pool: &sqlx::PgPool,
    older_than: Duration,
    dry_run: bool,
    batch: i64,
    archive_to: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    use shutoff_core::store::prune::{self, Pruned};
    use std::io::Write;

    let cutoff = chrono::Utc::now()
        - chrono::Duration::from_std(older_than).context("--older-than is too long")?;
    let started = std::time::Instant::now();
    let summary = |p: &Pruned, verb: &str| {
        println!(
            "{verb} finished stops older than {cutoff} ({:.1} s):",
            started.elapsed().as_secs_f64()
        );
        for (table, n) in [
            ("jobs", p.jobs),
            ("job_transitions", p.job_transitions),
            ("instance_actions", p.instance_actions),
            ("instance_actions_events", p.instance_actions_events),
            ("instance_faults", p.instance_faults),
            ("dead_letters", p.dead_letters),
        ] {
            println!("  {table:<24} {n:>10}");
        }
    };
    if dry_run {
        summary(&prune::count(pool, cutoff).await?, "would remove");
        return Ok(());
    }
    let mut file = match archive_to {
        Some(path) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("cannot open {}", path.display()))?,
        ),
        None => None,
    };
    // Each batch's lines are on disk before its rows are removed.
    let archive = file.as_mut().map(|f| {
        move |rows: &[serde_json::Value]| -> std::io::Result<()> {
            for row in rows {
                serde_json::to_writer(&mut *f, row)?;
                f.write_all(b"\n")?;
            }
            f.sync_data()
        }
    });
    let progress = |p: &Pruned| {
        eprint!(
            "\rpruning: {} stops, {} rows, {:.0} rows/s",
            p.jobs,
            p.total(),
            p.total() as f64 / started.elapsed().as_secs_f64().max(0.001)
        );
    };
    let pruned = prune::prune(pool, cutoff, batch, None, archive, progress).await?;
    eprintln!();
    summary(&pruned, "removed");
    Ok(())
}
