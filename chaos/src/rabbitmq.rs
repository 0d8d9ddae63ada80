//! Our own RabbitMQ node, `chaos-<pid>@localhost`, with its own epmd, data,
//! logs, config and (empty) plugin list in the work dir, listening on
//! loopback only. The machine's own node (`rabbit@...`, port 5672, epmd on
//! 4369) is never touched: nothing here reads /etc/rabbitmq or
//! /var/lib/rabbitmq, and the Erlang cookie lives in our own HOME.
//!
//! We run the node's real start script (`/usr/lib/rabbitmq/bin`), not the
//! distribution's `/usr/sbin` wrapper, which would `su` to the rabbitmq user
//! and log to /var/log. In the foreground that script turns SIGTERM into a
//! clean node stop, so we stop it like any other child.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

use crate::processes::{Proc, tail};
use crate::workdir::WorkDir;

/// The three ports a node needs.
#[derive(Debug, Clone, Copy)]
pub struct RabbitPorts {
    pub amqp: u16,
    /// Erlang distribution (the CLI tools talk to the node through it).
    pub dist: u16,
    /// Our own epmd, so we neither depend on nor register with the machine's.
    pub epmd: u16,
}

/// A TLS listener beside the plain one (which stays for the readiness
/// check): the node's certificate and key, and the CA its clients'
/// certificates must be signed by (`verify_peer`; with `require_client_cert`,
/// a client without one is refused in the handshake).
#[derive(Debug, Clone)]
pub struct RabbitTls {
    pub port: u16,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub require_client_cert: bool,
}

pub struct RabbitMq {
    node: String,
    ports: RabbitPorts,
    tls: Option<RabbitTls>,
    dir: PathBuf,
    script: PathBuf,
    env: Vec<(OsString, OsString)>,
    log: PathBuf,
    /// Declared before `epmd` so that, dropped, the node stops first.
    proc: Option<Proc>,
    /// Outlives node restarts: the node re-registers with it on start.
    epmd: Option<Proc>,
}

impl RabbitMq {
    /// Writes the node's config and starts its epmd. `bin` holds
    /// `rabbitmq-server`; `epmd` is the Erlang port mapper binary.
    pub async fn init(
        work: &WorkDir,
        bin: &Path,
        epmd: &Path,
        ports: RabbitPorts,
    ) -> Result<RabbitMq> {
        let epmd_proc = start_epmd(work, epmd, ports.epmd, "epmd").await?;
        // Unique within this process too: a test binary may run two nodes.
        let node = format!(
            "chaos-{}-{:04x}@localhost",
            std::process::id(),
            rand::random::<u16>()
        );
        let mut n = RabbitMq::prepare(work, bin, ports, &node, "rabbitmq", None)?;
        n.epmd = Some(epmd_proc);
        Ok(n)
    }

    /// Writes the config of node `node` in `work/<dir_name>`, without an
    /// epmd of its own (a cluster's nodes share one, on `ports.epmd`, so
    /// they find each other). `home` holds the Erlang cookie: the nodes of
    /// one cluster share it (default: the node's own).
    pub fn prepare(
        work: &WorkDir,
        bin: &Path,
        ports: RabbitPorts,
        node: &str,
        dir_name: &str,
        home: Option<&Path>,
    ) -> Result<RabbitMq> {
        let dir = work.path().join(dir_name);
        for sub in ["home", "mnesia", "log", "plugins-expand"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        let node = node.to_string();
        std::fs::write(
            dir.join("rabbitmq.conf"),
            format!(
                "listeners.tcp.1 = 127.0.0.1:{}\n\
                 loopback_users.guest = true\n\
                 log.console = false\n\
                 log.file.level = info\n",
                ports.amqp
            ),
        )?;
        // No plugins at all: management or prometheus, enabled machine-wide or
        // not, would otherwise try to bind their fixed ports (15672, 15692).
        std::fs::write(dir.join("enabled_plugins"), "[].\n")?;
        // An empty env file instead of /etc/rabbitmq/rabbitmq-env.conf, which
        // names the machine's node.
        std::fs::write(dir.join("rabbitmq-env.conf"), "")?;

        let p = |sub: &str| dir.join(sub).into_os_string();
        let home = home
            .map(|h| h.as_os_str().to_owned())
            .unwrap_or_else(|| p("home"));
        let env: Vec<(OsString, OsString)> = vec![
            ("HOME".into(), home),
            ("RABBITMQ_NODENAME".into(), node.clone().into()),
            ("RABBITMQ_NODE_IP_ADDRESS".into(), "127.0.0.1".into()),
            ("RABBITMQ_NODE_PORT".into(), ports.amqp.to_string().into()),
            ("RABBITMQ_DIST_PORT".into(), ports.dist.to_string().into()),
            ("RABBITMQ_MNESIA_BASE".into(), p("mnesia")),
            ("RABBITMQ_LOG_BASE".into(), p("log")),
            ("RABBITMQ_CONFIG_FILE".into(), p("rabbitmq.conf")),
            ("RABBITMQ_ADVANCED_CONFIG_FILE".into(), p("advanced.config")),
            ("RABBITMQ_CONF_ENV_FILE".into(), p("rabbitmq-env.conf")),
            ("RABBITMQ_ENABLED_PLUGINS_FILE".into(), p("enabled_plugins")),
            ("RABBITMQ_PLUGINS_EXPAND_DIR".into(), p("plugins-expand")),
            ("RABBITMQ_PID_FILE".into(), p("rabbitmq.pid")),
            (
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS".into(),
                "-kernel inet_dist_use_interface {127,0,0,1}".into(),
            ),
            ("ERL_EPMD_PORT".into(), ports.epmd.to_string().into()),
            ("ERL_EPMD_ADDRESS".into(), "127.0.0.1".into()),
        ];

        Ok(RabbitMq {
            node,
            ports,
            script: bin.join("rabbitmq-server"),
            log: work.log(dir_name),
            dir,
            env,
            epmd: None,
            proc: None,
            tls: None,
        })
    }

    /// Runs `rabbitmqctl -n <this node> ARGS` (with this node's cookie and
    /// epmd) and returns its output.
    pub async fn ctl(&self, args: &[&str]) -> Result<String> {
        let ctl = self
            .script
            .parent()
            .map(|d| d.join("rabbitmqctl"))
            .context("no rabbitmqctl beside rabbitmq-server")?;
        let mut cmd = Command::new(ctl);
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&self.dir)
            .arg("-n")
            .arg(&self.node)
            .args(args)
            .kill_on_drop(true);
        let out = tokio::time::timeout(Duration::from_secs(90), cmd.output())
            .await
            .with_context(|| format!("rabbitmqctl {args:?} did not finish in 90 s"))??;
        if !out.status.success() {
            bail!(
                "rabbitmqctl {args:?} on {} failed ({}): {}{}",
                self.node,
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Whether the node's process runs (it may still be booting).
    pub fn is_running(&self) -> bool {
        self.proc.is_some()
    }

    /// Adds a TLS listener (before the first start).
    pub fn enable_tls(&mut self, tls: RabbitTls) -> Result<()> {
        let b = if tls.require_client_cert {
            "true"
        } else {
            "false"
        };
        let mut conf = std::fs::OpenOptions::new()
            .append(true)
            .open(self.dir.join("rabbitmq.conf"))?;
        use std::io::Write;
        write!(
            conf,
            "listeners.ssl.1 = 127.0.0.1:{}\n\
             ssl_options.cacertfile = {}\n\
             ssl_options.certfile = {}\n\
             ssl_options.keyfile = {}\n\
             ssl_options.verify = verify_peer\n\
             ssl_options.fail_if_no_peer_cert = {b}\n",
            tls.port,
            tls.ca.display(),
            tls.cert.display(),
            tls.key.display(),
        )?;
        self.tls = Some(tls);
        Ok(())
    }

    /// `amqps://` to the TLS listener under the name `host` (the one the
    /// client checks the certificate against).
    pub fn amqps_url(&self, host: &str) -> Option<String> {
        let tls = self.tls.as_ref()?;
        Some(format!("amqps://guest:guest@{host}:{}/%2f", tls.port))
    }

    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.ports.amqp)
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn port(&self) -> u16 {
        self.ports.amqp
    }

    pub async fn start(&mut self) -> Result<()> {
        if self.proc.is_some() {
            bail!("RabbitMQ is already running");
        }
        let mut cmd = Command::new(&self.script);
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&self.dir);
        self.proc = Some(Proc::spawn(
            "rabbitmq",
            cmd,
            &self.log,
            libc::SIGTERM,
            Duration::from_secs(30),
        )?);
        self.wait_ready(Duration::from_secs(90)).await
    }

    /// Ready = it answers the AMQP protocol header with `connection.start`
    /// (the listener opens only once the broker has booted).
    async fn wait_ready(&mut self, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.proc.as_mut().and_then(Proc::exited) {
                self.proc = None;
                bail!(
                    "RabbitMQ exited ({status})\n{}{}",
                    tail(&self.log, 20),
                    tail(&self.node_log(), 20)
                );
            }
            if amqp_handshake(self.ports.amqp).await.is_ok() {
                // The TLS listener opens in the same boot step, a moment apart.
                if let Some(tls) = &self.tls {
                    let left = deadline.saturating_duration_since(Instant::now());
                    crate::processes::wait_for_port(tls.port, left, || Ok(())).await?;
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "RabbitMQ did not answer AMQP within {limit:?}\n{}{}",
                    tail(&self.log, 20),
                    tail(&self.node_log(), 20)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The node's own log file (the script's stdout is mostly a banner).
    fn node_log(&self) -> PathBuf {
        self.dir.join("log").join(format!("{}.log", self.node))
    }

    /// Stops the node cleanly (SIGTERM to the start script).
    pub async fn stop(&mut self) -> Result<()> {
        if let Some(mut p) = self.proc.take() {
            let (status, clean) = p.stop().await;
            if !clean {
                bail!("RabbitMQ did not stop in time and was killed ({status})");
            }
        }
        Ok(())
    }

    /// Stop and start with the same data dir; returns how long it was down.
    pub async fn restart(&mut self) -> Result<Duration> {
        let t = Instant::now();
        self.stop().await?;
        self.start().await?;
        Ok(t.elapsed())
    }

    /// Stops the node, then its epmd.
    pub async fn shutdown(&mut self) -> Result<()> {
        let r = self.stop().await;
        if let Some(mut e) = self.epmd.take() {
            e.stop().await;
        }
        r
    }
}

/// Starts a private epmd on `port` (logged as `name`).
pub async fn start_epmd(work: &WorkDir, epmd: &Path, port: u16, name: &str) -> Result<Proc> {
    let mut cmd = Command::new(epmd);
    cmd.args(["-port", &port.to_string(), "-address", "127.0.0.1"]);
    let epmd_log = work.log(name);
    let mut epmd_proc = Proc::spawn(name, cmd, &epmd_log, libc::SIGTERM, Duration::from_secs(2))?;
    crate::processes::wait_for_port(port, Duration::from_secs(10), || match epmd_proc.exited() {
        Some(s) => bail!("epmd exited ({s})\n{}", tail(&epmd_log, 10)),
        None => Ok(()),
    })
    .await?;
    Ok(epmd_proc)
}

/// Sends the AMQP 0-9-1 protocol header and expects a method frame back.
pub async fn amqp_handshake(port: u16) -> Result<()> {
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        s.write_all(b"AMQP\x00\x00\x09\x01").await?;
        let mut frame_type = [0u8; 1];
        s.read_exact(&mut frame_type).await?;
        Ok::<_, std::io::Error>(frame_type[0])
    };
    match tokio::time::timeout(Duration::from_secs(2), fut).await {
        Ok(Ok(1)) => Ok(()),
        Ok(Ok(other)) => bail!("unexpected AMQP frame type {other}"),
        Ok(Err(e)) => Err(e).context("AMQP connect"),
        Err(_) => bail!("AMQP handshake timed out"),
    }
}
