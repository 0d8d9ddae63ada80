//! `shutoff-admin`: what an operator (or the demo script) needs to set up and
//! inspect shutoff. Every argument is checked before anything is written.

mod config_doc;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{CommandFactory, Parser, Subcommand};
use shutoff_core::config::Common;
use shutoff_core::ids::ProjectId;
use shutoff_core::state::{PowerState, VM_STATES};
use shutoff_core::store::{self, admin, reads};
use shutoff_hypervisor::DriverError;
use uuid::Uuid;

#[derive(Debug, Parser)]
#[command(name = "shutoff-admin", version, about = "Set up and inspect shutoff")]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the database if needed, apply migrations and declare the
    /// queues (idempotent). An unreachable broker is reported, not fatal:
    /// the API and workers declare the queues themselves when they connect.
    Migrate,
    /// Projects.
    Project {
        #[command(subcommand)]
        command: ProjectCommand,
    },
    /// Tokens (printed once; only their SHA-256 is stored).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Servers (instances).
    Server {
        #[command(subcommand)]
        command: ServerCommand,
    },
    /// List jobs, newest first.
    Jobs {
        /// Only this server's jobs.
        #[arg(long)]
        instance: Option<uuid::Uuid>,
        /// At most this many (1 to 10000).
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// Documentation generated from the code.
    Docs {
        #[command(subcommand)]
        command: DocsCommand,
    },
}

#[derive(Debug, Subcommand)]
enum DocsCommand {
    /// Print every flag, environment variable and default of the three
    /// binaries as Markdown tables (the README's configuration section).
    Config {
        /// Write them into this file between the generated-section markers
        /// instead of printing them.
        #[arg(long)]
        write: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum ProjectCommand {
    /// Create a project and print its id.
    Create {
        /// Its name (unique, 1 to 255 characters).
        #[arg(long)]
        name: String,
        /// 32 hex characters (default: random).
        #[arg(long)]
        id: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Role {
    Member,
    Admin,
    Reader,
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create a token and print it.
    Create {
        /// The project (32 hex characters) the token acts in.
        #[arg(long)]
        project: String,
        /// User id recorded on the actions it starts.
        #[arg(long, default_value = "admin")]
        user: String,
        /// reader: reads only; member: reads and stops; admin: all.
        #[arg(long, value_enum, default_value = "member")]
        role: Role,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 86_400, value_parser = clap::value_parser!(i64).range(1..=315_360_000))]
        ttl: i64,
    },
}

#[derive(Debug, Subcommand)]
enum ServerCommand {
    /// Create a server and print its uuid.
    Create {
        /// The project (32 hex characters) that owns it.
        #[arg(long)]
        project: String,
        /// Its display name (1 to 255 characters).
        #[arg(long)]
        name: String,
        /// Owner's user id.
        #[arg(long, default_value = "admin")]
        user: String,
        /// Nova vm_state to start in (active, stopped, error, ...).
        #[arg(long, default_value = "active")]
        vm_state: String,
        /// Nova task_state to start in (default: none).
        #[arg(long)]
        task_state: Option<String>,
        /// Leave launched_at NULL.
        #[arg(long)]
        not_launched: bool,
        /// Locked, as by Nova's lock action: stops are refused with 409.
        #[arg(long)]
        locked: bool,
        /// Hypervisor address: the simulator (fake://?delay_ms=200,
        /// fake://?fail=always) or a QEMU VM's QMP monitor
        /// (qmp+unix:///run/vm1.qmp, qmp+tcp://127.0.0.1:4444, optionally
        /// with ?shutdown_timeout=SECS).
        #[arg(long, default_value = "fake://")]
        hypervisor: String,
        /// Register without asking the hypervisor. By default the address
        /// must reach the VM, and a running VM must be registered active and
        /// a shut-off one stopped.
        #[arg(long)]
        no_verify: bool,
        /// Compute host name shown in its actions and faults.
        #[arg(long, default_value = "sim-1")]
        host: String,
    },
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

/// The worker's driver lookup (shutoff-hypervisor) decides what a valid address is; unless
/// `verify` is off, the VM must also answer, in a power state that matches
/// the vm_state it is registered with.
async fn check_hypervisor(address: &str, vm_state: &str, verify: bool) -> anyhow::Result<()> {
    let driver = shutoff_hypervisor::driver_for(address).map_err(|e| anyhow::anyhow!("{e}"))?;
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
        ("active", PowerState::Shutdown | PowerState::Crashed) => bail!(
            "the VM at {address} is not running ({state:?}): start it, register it with --vm-state stopped, or use --no-verify"
        ),
        ("stopped", PowerState::Running) => bail!(
            "the VM at {address} is running but would be registered stopped: use --vm-state active, or --no-verify"
        ),
        _ => Ok(()),
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::Docs {
        command: DocsCommand::Config { write },
    } = &cli.command
    {
        let doc = config_doc::markdown(&Cli::command());
        match write {
            Some(path) => config_doc::write(path, &doc)?,
            None => print!("{doc}"),
        }
        return Ok(());
    }
    if let Command::Migrate = cli.command {
        store::create_and_migrate(&cli.common.database_url).await?;
        println!("migrated");
        let topology = cli.common.topology();
        match shutoff_core::broker::connect(
            &cli.common.amqp_url,
            "shutoff-admin",
            &topology,
            std::time::Duration::from_secs(5),
        )
        .await
        {
            Ok((conn, _)) => {
                let _ = conn.close(200, "done".into()).await;
                println!("declared queues {}", topology.all_queues().join(", "));
            }
            Err(e) => eprintln!(
                "warning: queues not declared ({e}); the API and workers declare them on start"
            ),
        }
        return Ok(());
    }
    let pool = store::pool(
        &cli.common.database_url,
        &store::PoolSettings::default(),
        "shutoff-admin",
    )?;
    match cli.command {
        Command::Migrate | Command::Docs { .. } => unreachable!(),
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
                    no_verify,
                    host,
                },
        } => {
            if !VM_STATES.contains(&vm_state.as_str()) {
                bail!(
                    "vm_state {vm_state:?} is not one of {}",
                    VM_STATES.join(", ")
                );
            }
            if name.trim().is_empty() || name.len() > 255 {
                bail!("server name must be 1 to 255 characters");
            }
            check_hypervisor(&hypervisor, &vm_state, !no_verify).await?;
            let project = existing_project(&pool, &project).await?;
            let mut s = admin::NewServer::new(&project, &name);
            s.user_id = user;
            s.vm_state = vm_state;
            s.task_state = task_state;
            s.launched = !not_launched;
            s.locked = locked;
            s.hypervisor = hypervisor;
            s.host = host;
            println!("{}", admin::create_server(&pool, &s).await?);
        }
        Command::Jobs { instance, limit } => {
            println!(
                "{:<36}  {:<36}  {:<44}  {:<9}  {:>8}  {:<20}  error",
                "job", "instance", "request", "state", "attempts", "worker"
            );
            for j in reads::jobs(&pool, instance, limit.clamp(1, 10_000)).await? {
                println!(
                    "{:<36}  {:<36}  {:<44}  {:<9}  {:>4}/{:<3}  {:<20}  {}",
                    j.id,
                    j.instance_uuid,
                    j.request_id,
                    j.state,
                    j.attempts,
                    j.max_attempts,
                    j.worker.unwrap_or_default(),
                    j.last_error.unwrap_or_default()
                );
            }
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
