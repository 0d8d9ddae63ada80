//! The system under test: a private RabbitMQ vhost, and the real
//! `shutoff-api` / `shutoff-worker` release binaries started as child
//! processes with their default settings (only addresses and names are set).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

/// A vhost of the bench's own, deleted (with every queue in it) on `remove`.
pub struct Vhost {
    pub name: String,
    /// `None` when rabbitmqctl is not usable here: the default vhost is used
    /// instead, with the bench's own queue prefixes.
    created: bool,
}

impl Vhost {
    pub async fn create(name: &str) -> Vhost {
        let ok = rabbitmqctl(&["add_vhost", name]).await.is_ok()
            && rabbitmqctl(&["set_permissions", "-p", name, "guest", ".*", ".*", ".*"])
                .await
                .is_ok();
        if !ok {
            eprintln!("shutoff-bench: rabbitmqctl unusable; using the default vhost '/'");
        }
        Vhost {
            name: if ok { name.to_string() } else { "/".into() },
            created: ok,
        }
    }

    /// `base` (an amqp URL ending in a vhost) pointed at this vhost.
    pub fn amqp_url(&self, base: &str) -> anyhow::Result<String> {
        let mut url = url::Url::parse(base).context("AMQP_URL")?;
        let encoded: String = url::form_urlencoded::byte_serialize(self.name.as_bytes()).collect();
        url.set_path(&format!("/{}", encoded.replace('+', "%20")));
        Ok(url.to_string())
    }

    pub async fn remove(&self) {
        if self.created
            && let Err(e) = rabbitmqctl(&["delete_vhost", &self.name]).await
        {
            eprintln!("shutoff-bench: could not delete vhost {}: {e}", self.name);
        }
    }
}

async fn rabbitmqctl(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await?;
    if !out.status.success() {
        bail!(
            "rabbitmqctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Builds the service binaries and `shutoff-admin` (the history phase's
/// prune), release, and returns their directory.
///
/// They get a target directory of their own: `cargo run` keeps the lock on
/// the workspace's target directory while the bench runs, so building there
/// would wait forever. The first run pays one extra release build.
pub async fn build_binaries() -> anyhow::Result<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let target_dir = std::env::var_os("SHUTOFF_BENCH_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/bench-services"));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!(
        "shutoff-bench: building shutoff-api, shutoff-worker and shutoff-admin (release) in {}",
        target_dir.display()
    );
    let status = Command::new(cargo)
        .current_dir(&root)
        .args([
            "build",
            "--release",
            "-p",
            "shutoff-api",
            "-p",
            "shutoff-worker",
            "-p",
            "shutoff-admin",
            "--target-dir",
        ])
        .arg(&target_dir)
        .status()
        .await
        .context("cannot run cargo build")?;
    if !status.success() {
        bail!("cargo build of shutoff-api / shutoff-worker / shutoff-admin failed");
    }
    Ok(target_dir.join("release"))
}

/// Where every service of one phase connects.
#[derive(Clone)]
pub struct Wiring {
    /// Workers spawned with `--via-conductor` (no pool of their own).
    pub via_conductor: bool,
    pub bin_dir: PathBuf,
    pub database_url: String,
    pub amqp_url: String,
    pub queue_prefix: String,
    pub log_dir: PathBuf,
}

pub struct Service {
    pub name: String,
    child: Child,
    ready_url: Option<String>,
}

impl Service {
    /// Waits until the service's `/readyz` says 200.
    pub async fn wait_ready(&self) -> anyhow::Result<()> {
        match &self.ready_url {
            Some(url) => wait_ready(url).await,
            None => Ok(()),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// Peak resident set size so far (the kernel's high-water mark), in MiB.
    pub fn peak_rss_mb(&self) -> f64 {
        let status = std::path::PathBuf::from(format!("/proc/{}/status", self.pid()));
        crate::fleet::status_kb(&status, "VmHWM:").map_or(f64::NAN, |kb| kb / 1024.0)
    }

    /// SIGTERM, then wait for the graceful exit (SIGKILL after 30 s).
    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = Command::new("kill").arg(pid.to_string()).status().await;
        }
        if tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .is_err()
        {
            eprintln!("shutoff-bench: {} ignored SIGTERM; killing it", self.name);
            let _ = self.child.kill().await;
        }
    }
}

fn spawn(w: &Wiring, name: &str, program: &str, args: &[String]) -> anyhow::Result<Service> {
    std::fs::create_dir_all(&w.log_dir)?;
    let log = std::fs::File::create(w.log_dir.join(format!("{name}.log")))?;
    let child = Command::new(w.bin_dir.join(program))
        .args(args)
        .env("DATABASE_URL", &w.database_url)
        .env("AMQP_URL", &w.amqp_url)
        .env("SHUTOFF_QUEUE_PREFIX", &w.queue_prefix)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {program} (built?)"))?;
    Ok(Service {
        name: name.into(),
        child,
        ready_url: None,
    })
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Starts the API and waits until `/readyz` says 200. Returns it and its address.
pub async fn start_api(w: &Wiring) -> anyhow::Result<(Service, String)> {
    let addr = format!("127.0.0.1:{}", free_port()?);
    let api = spawn(w, "api", "shutoff-api", &["--listen".into(), addr.clone()])?;
    wait_ready(&format!("http://{addr}/readyz")).await?;
    Ok((api, addr))
}

/// Starts a worker of the default host, `sim-1`, and waits until it consumes.
pub async fn start_worker(w: &Wiring, id: &str) -> anyhow::Result<Service> {
    let worker = spawn_worker_for(w, id, "sim-1")?;
    worker.wait_ready().await?;
    Ok(worker)
}

/// Starts a worker serving `host`; [`Service::wait_ready`] waits for it.
pub fn spawn_worker_for(w: &Wiring, id: &str, host: &str) -> anyhow::Result<Service> {
    let health = format!("127.0.0.1:{}", free_port()?);
    let mut args: Vec<String> = vec![
        "--worker-id".into(),
        id.into(),
        "--host".into(),
        host.into(),
        "--health-listen".into(),
        health.clone(),
    ];
    if w.via_conductor {
        args.push("--via-conductor".into());
    }
    let mut worker = spawn(w, id, "shutoff-worker", &args)?;
    worker.ready_url = Some(format!("http://{health}/readyz"));
    Ok(worker)
}

async fn wait_ready(url: &str) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok(r) = client.get(url).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("{url} not ready after 60 s")
}
