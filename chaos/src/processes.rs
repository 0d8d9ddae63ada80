//! Child processes the run owns. Each one gets its own process group (so a
//! Ctrl-C in the terminal reaches only us, and we decide the order of
//! shutdown), writes to its own log file, is stopped politely before it is
//! killed, and is never left behind: [`Proc`]'s `Drop` stops it too, and if
//! we are SIGKILLed the kernel sends each child its stop signal (the
//! parent-death signal).

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::process::{Child, Command};

/// A running child process and how to stop it.
pub struct Proc {
    name: String,
    child: Child,
    pid: i32,
    /// Where its stdout and stderr go; shown (the tail) when it fails.
    log: PathBuf,
    /// The signal that asks this program to shut down cleanly (SIGINT is
    /// PostgreSQL's "fast shutdown", SIGTERM everybody else's).
    stop_signal: i32,
    /// How long a clean shutdown may take before the group gets SIGKILL.
    grace: Duration,
    /// Set once reaped, so `Drop` has nothing left to do.
    status: Option<ExitStatus>,
}

impl Proc {
    /// Starts `cmd` in a new process group with its output appended to `log`.
    pub fn spawn(
        name: &str,
        mut cmd: Command,
        log: &Path,
        stop_signal: i32,
        grace: Duration,
    ) -> Result<Proc> {
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("cannot open log {}", log.display()))?;
        // Restarts append to the same file; the marker shows where each life began.
        writeln!(
            file,
            "=== shutoff-chaos: starting {name} at {} ===",
            chrono::Utc::now().to_rfc3339()
        )?;
        cmd.stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .process_group(0)
            .kill_on_drop(false);
        // SAFETY: prctl is async-signal-safe and touches no memory of ours.
        // The signal is tied to the spawning thread; every spawn happens on
        // the thread that runs the whole run (we never tokio::spawn).
        unsafe {
            cmd.pre_exec(move || {
                libc::prctl(libc::PR_SET_PDEATHSIG, stop_signal as libc::c_ulong);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {name} ({:?})", cmd.as_std().get_program()))?;
        let pid = child.id().context("child has no pid")? as i32;
        Ok(Proc {
            name: name.to_string(),
            child,
            pid,
            log: log.to_path_buf(),
            stop_signal,
            grace,
            status: None,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Sends `sig` to the process itself (not its group).
    pub fn signal(&self, sig: i32) {
        if self.status.is_none() {
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe { libc::kill(self.pid, sig) };
        }
    }

    /// Sends `sig` to the whole process group: the leader and whatever it
    /// started (postgres backends, the Erlang VM under rabbitmq-server's shell).
    fn signal_group(&self, sig: i32) {
        // SAFETY: killpg(2) has no memory-safety preconditions. The group
        // may already be empty; ESRCH is fine.
        unsafe { libc::killpg(self.pid, sig) };
    }

    /// The exit status if it has exited (reaping it), without waiting.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.status.is_none()
            && let Ok(Some(s)) = self.child.try_wait()
        {
            self.status = Some(s);
        }
        self.status
    }

    /// Waits up to `limit` for it to exit.
    pub async fn wait_for(&mut self, limit: Duration) -> Option<ExitStatus> {
        if self.status.is_none()
            && let Ok(Ok(s)) = tokio::time::timeout(limit, self.child.wait()).await
        {
            self.status = Some(s);
        }
        self.status
    }

    /// Asks it to stop, waits out its grace period, then kills its group.
    /// Returns the exit status and whether it stopped by itself in time.
    pub async fn stop(&mut self) -> (ExitStatus, bool) {
        self.signal(self.stop_signal);
        let clean = self.wait_for(self.grace).await.is_some();
        (self.kill().await, clean)
    }

    /// SIGKILLs the group and reaps the leader.
    pub async fn kill(&mut self) -> ExitStatus {
        self.signal_group(libc::SIGKILL);
        if let Some(s) = self.status {
            return s;
        }
        let s = self
            .child
            .wait()
            .await
            .expect("waiting for our own child cannot fail");
        self.status = Some(s);
        s
    }
}

impl Proc {
    /// SIGKILLs the group and reaps the leader, synchronously (for `Drop`s).
    pub fn kill_now(&mut self) {
        self.signal_group(libc::SIGKILL);
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline && self.exited().is_none() {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    /// The safety net for errors, panics and Ctrl-C: stop politely first
    /// (PostgreSQL then removes its shared memory, RabbitMQ closes its
    /// files), then SIGKILL whatever is left of the group. Blocking is fine
    /// here: it only happens while the run is being torn down.
    fn drop(&mut self) {
        if self.status.is_none() {
            self.signal(self.stop_signal);
            let deadline = Instant::now() + self.grace.min(Duration::from_secs(15));
            while Instant::now() < deadline && self.exited().is_none() {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        self.kill_now();
    }
}

/// Runs a short command to completion with its output in `log`; an error
/// carries the log's tail.
pub async fn run_logged(name: &str, cmd: Command, log: &Path, limit: Duration) -> Result<()> {
    let mut p = Proc::spawn(name, cmd, log, libc::SIGTERM, Duration::from_secs(2))?;
    let Some(status) = p.wait_for(limit).await else {
        p.kill().await;
        bail!("{name} did not finish within {limit:?}\n{}", tail(log, 20));
    };
    if !status.success() {
        bail!("{name} failed ({status})\n{}", tail(log, 20));
    }
    Ok(())
}

/// The last `lines` lines of a log, indented, for error messages.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    let mut out = format!("  --- last lines of {} ---\n", path.display());
    for l in &all[start..] {
        out.push_str("  | ");
        out.push_str(l);
        out.push('\n');
    }
    out
}

/// Polls until a TCP connection to `port` on loopback succeeds, or `limit`
/// passes. `alive` is checked each round so a child that died fails fast.
pub async fn wait_for_port(
    port: u16,
    limit: Duration,
    mut alive: impl FnMut() -> Result<()>,
) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        alive()?;
        let attempt = tokio::time::timeout(
            Duration::from_millis(500),
            tokio::net::TcpStream::connect(("127.0.0.1", port)),
        )
        .await;
        if matches!(attempt, Ok(Ok(_))) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("nothing listened on 127.0.0.1:{port} within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
