//! The services under test: one `shutoff-api` and N `shutoff-worker`s, run
//! from the release binaries with short rescue, lease and retry timings so a
//! whole run fits in minutes. Like an orchestrator, the fleet restarts a
//! worker after it was killed, and restarts any service that exits by itself
//! (and remembers that it did: that is a finding).

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::process::Command;

use crate::processes::{Proc, tail, wait_for_port};
use crate::say;
use crate::workdir::WorkDir;

/// Timings for every service: rescue a stalled job after 5 s, leases of
/// 5 s, quick retries, five attempts.
const SERVICE_ENV: &[(&str, &str)] = &[
    ("SHUTOFF_RESCUE_AFTER_SECS", "5"),
    ("SHUTOFF_LEASE_SECS", "5"),
    ("SHUTOFF_RETRY_DELAYS_MS", "200,500,1000"),
    ("SHUTOFF_MAX_ATTEMPTS", "5"),
];

/// Where the services find everything.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    pub bin_dir: PathBuf,
    pub database_url: String,
    pub amqp_url: String,
    pub api_port: u16,
    /// One health port per worker; a restarted worker gets its old one back.
    pub worker_ports: Vec<u16>,
    /// The workers' SIGTERM grace period.
    pub worker_grace: Duration,
}

struct WorkerSlot {
    id: String,
    port: u16,
    log: PathBuf,
    proc: Option<Proc>,
}

/// How a SIGTERMed worker ended.
#[derive(Debug, Clone)]
pub struct Terminated {
    pub worker: String,
    /// None when it did not exit within the limit and had to be killed.
    pub status: Option<ExitStatus>,
    pub took: Duration,
}

impl Terminated {
    pub fn clean(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }
}

pub struct Fleet {
    cfg: FleetConfig,
    api_log: PathBuf,
    api: Option<Proc>,
    workers: Vec<WorkerSlot>,
    /// Services that exited without being told to: "what, when, how".
    pub unexpected_exits: Vec<String>,
    /// Every worker start after the first, whatever the reason.
    pub worker_restarts: u32,
}

impl Fleet {
    pub async fn start(cfg: FleetConfig, work: &WorkDir) -> Result<Fleet> {
        let workers = cfg
            .worker_ports
            .iter()
            .enumerate()
            .map(|(i, port)| WorkerSlot {
                id: format!("chaos-w{}", i + 1),
                port: *port,
                log: work.log(&format!("worker-{}", i + 1)),
                proc: None,
            })
            .collect();
        let mut fleet = Fleet {
            api_log: work.log("api"),
            cfg,
            api: None,
            workers,
            unexpected_exits: Vec::new(),
            worker_restarts: 0,
        };
        fleet.start_api().await?;
        for i in 0..fleet.workers.len() {
            fleet.start_worker(i).await?;
        }
        fleet.worker_restarts = 0;
        say!(
            "API on {} and {} workers are up",
            fleet.api_url(),
            fleet.workers.len()
        );
        Ok(fleet)
    }

    pub fn api_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.cfg.api_port)
    }

    pub fn worker_count(&self) -> usize {
        self.workers.len()
    }

    pub fn worker_id(&self, i: usize) -> &str {
        &self.workers[i].id
    }

    /// A service command with our URLs and timings. The URLs are given as
    /// flags and as environment, and any inherited DATABASE_URL/AMQP_URL
    /// (cargo's config sets the machine's) is replaced.
    fn command(&self, bin: &str) -> Command {
        let mut cmd = Command::new(self.cfg.bin_dir.join(bin));
        cmd.env("DATABASE_URL", &self.cfg.database_url)
            .env("AMQP_URL", &self.cfg.amqp_url)
            .envs(SERVICE_ENV.iter().copied())
            // Plain logs: they are read with grep, not on a terminal.
            .env("NO_COLOR", "1")
            .arg("--database-url")
            .arg(&self.cfg.database_url)
            .arg("--amqp-url")
            .arg(&self.cfg.amqp_url);
        // RUST_LOG, when set, passes through; otherwise the services' own
        // default filter applies, as in production.
        cmd
    }

    async fn start_api(&mut self) -> Result<()> {
        let mut cmd = self.command("shutoff-api");
        cmd.arg("--listen")
            .arg(format!("127.0.0.1:{}", self.cfg.api_port));
        let mut proc = Proc::spawn(
            "shutoff-api",
            cmd,
            &self.api_log,
            libc::SIGTERM,
            Duration::from_secs(15),
        )?;
        let log = self.api_log.clone();
        wait_for_port(self.cfg.api_port, Duration::from_secs(30), || {
            exited_check(&mut proc, &log)
        })
        .await?;
        self.api = Some(proc);
        self.wait_api_ready(Duration::from_secs(30)).await
    }

    /// The API's `/readyz` says 200 once it reaches PostgreSQL and RabbitMQ.
    async fn wait_api_ready(&self, limit: Duration) -> Result<()> {
        let client = reqwest::Client::new();
        let url = format!("{}/readyz", self.api_url());
        let deadline = Instant::now() + limit;
        loop {
            let r = client
                .get(&url)
                .timeout(Duration::from_secs(5))
                .send()
                .await;
            if matches!(&r, Ok(resp) if resp.status().is_success()) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the API was not ready within {limit:?} (last answer: {:?})\n{}",
                    r.map(|r| r.status()),
                    tail(&self.api_log, 20)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Starts worker `i` and waits for its health port.
    pub async fn start_worker(&mut self, i: usize) -> Result<()> {
        if self.workers[i].proc.is_some() {
            bail!("worker {} is already running", self.workers[i].id);
        }
        let mut cmd = self.command("shutoff-worker");
        let slot = &self.workers[i];
        cmd.env(
            "SHUTOFF_GRACE_SECS",
            self.cfg.worker_grace.as_secs().to_string(),
        )
        .arg("--worker-id")
        .arg(&slot.id)
        // Every chaos server is on the default host, and so is every worker.
        .arg("--host")
        .arg("sim-1")
        .arg("--health-listen")
        .arg(format!("127.0.0.1:{}", slot.port));
        let mut proc = Proc::spawn(
            &slot.id,
            cmd,
            &slot.log,
            libc::SIGTERM,
            self.cfg.worker_grace + Duration::from_secs(5),
        )?;
        let log = slot.log.clone();
        wait_for_port(slot.port, Duration::from_secs(30), || {
            exited_check(&mut proc, &log)
        })
        .await
        .with_context(|| format!("starting worker {}", slot.id))?;
        self.workers[i].proc = Some(proc);
        self.worker_restarts += 1;
        Ok(())
    }

    /// SIGKILL: the worker gets no chance to finish or hand back its jobs.
    pub async fn kill_worker(&mut self, i: usize) -> Result<()> {
        let slot = &mut self.workers[i];
        let mut proc = slot
            .proc
            .take()
            .with_context(|| format!("worker {} is not running", slot.id))?;
        proc.kill().await;
        Ok(())
    }

    /// SIGTERM: the worker must stop consuming, finish or hand back its
    /// in-flight jobs and exit 0. Killed if it takes longer than `limit`.
    pub async fn terminate_worker(&mut self, i: usize, limit: Duration) -> Result<Terminated> {
        let slot = &mut self.workers[i];
        let mut proc = slot
            .proc
            .take()
            .with_context(|| format!("worker {} is not running", slot.id))?;
        let t = Instant::now();
        proc.signal(libc::SIGTERM);
        let status = proc.wait_for(limit).await;
        let took = t.elapsed();
        proc.kill().await;
        Ok(Terminated {
            worker: slot.id.clone(),
            status,
            took,
        })
    }

    /// Restarts every service that exited by itself, recording that it did.
    pub async fn revive(&mut self) -> Result<()> {
        if let Some(status) = self.api.as_mut().and_then(Proc::exited) {
            self.note_exit("shutoff-api", status, &self.api_log.clone());
            self.api = None;
            self.start_api().await?;
        }
        for i in 0..self.workers.len() {
            let Some(p) = self.workers[i].proc.as_mut() else {
                continue;
            };
            if let Some(status) = p.exited() {
                let (id, log) = (self.workers[i].id.clone(), self.workers[i].log.clone());
                self.note_exit(&id, status, &log);
                self.workers[i].proc = None;
                self.start_worker(i).await?;
            }
        }
        Ok(())
    }

    fn note_exit(&mut self, name: &str, status: ExitStatus, log: &std::path::Path) {
        say!("{name} exited by itself ({status}); restarting it");
        self.unexpected_exits.push(format!(
            "{name} exited by itself ({status}) at {:.1}s; see {}",
            crate::progress::now(),
            log.display()
        ));
    }

    /// ERROR-level lines in each service's log: not a verdict, but where to
    /// look first.
    pub fn error_lines(&self) -> Vec<(String, usize)> {
        let count = |path: &std::path::Path| {
            std::fs::read_to_string(path)
                .map(|t| t.lines().filter(|l| l.contains(" ERROR ")).count())
                .unwrap_or(0)
        };
        let mut out = vec![("shutoff-api".to_string(), count(&self.api_log))];
        out.extend(self.workers.iter().map(|w| (w.id.clone(), count(&w.log))));
        out
    }

    /// Stops everything: the run is over, nothing in flight matters now.
    pub async fn shutdown(&mut self) {
        let mut procs: Vec<Proc> = self.api.take().into_iter().collect();
        procs.extend(self.workers.iter_mut().filter_map(|w| w.proc.take()));
        for p in procs.iter_mut() {
            p.signal(libc::SIGTERM);
        }
        for mut p in procs {
            p.wait_for(Duration::from_secs(5)).await;
            p.kill().await;
        }
    }
}

impl Drop for Fleet {
    /// On an error or Ctrl-C the services are simply killed: their state is
    /// no longer of interest, and waiting out each one's grace period would
    /// only delay stopping the database and broker.
    fn drop(&mut self) {
        if let Some(p) = self.api.as_mut() {
            p.kill_now();
        }
        for w in &mut self.workers {
            if let Some(p) = w.proc.as_mut() {
                p.kill_now();
            }
        }
    }
}

fn exited_check(proc: &mut Proc, log: &std::path::Path) -> Result<()> {
    match proc.exited() {
        Some(status) => bail!("{} exited ({status})\n{}", proc.name(), tail(log, 30)),
        None => Ok(()),
    }
}
