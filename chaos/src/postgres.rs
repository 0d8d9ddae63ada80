//! Our own PostgreSQL: a throwaway cluster in the work dir on a free loopback
//! port. The postmaster runs in the foreground as our child, so we hold its
//! pid: SIGINT is a fast shutdown, and a restart is stop + start on the same
//! data directory. The machine's own PostgreSQL is never touched.

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use sqlx::Connection;
use tokio::process::Command;

use crate::processes::{Proc, run_logged, tail};
use crate::workdir::WorkDir;

/// PostgreSQL refuses to run as root. When we are root it runs as the
/// `postgres` user through `setpriv`, which execs in place (`runuser` and
/// `su` fork and turn every signal into SIGTERM), so the pid we hold is the
/// postmaster's and SIGINT still means "fast shutdown".
#[derive(Debug, Clone)]
pub enum RunAs {
    Me,
    User { name: String, uid: u32, gid: u32 },
}

impl RunAs {
    pub fn for_postgres() -> Result<RunAs> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Ok(RunAs::Me);
        }
        let (uid, gid) = lookup_user("postgres")
            .context("running as root, but there is no `postgres` user to run PostgreSQL as")?;
        Ok(RunAs::User {
            name: "postgres".into(),
            uid,
            gid,
        })
    }

    fn command(&self, program: &Path) -> Command {
        match self {
            RunAs::Me => Command::new(program),
            RunAs::User { name, .. } => {
                let mut c = Command::new("setpriv");
                c.arg(format!("--reuid={name}"))
                    .arg(format!("--regid={name}"))
                    .arg("--init-groups")
                    // Changing user clears the parent-death signal set
                    // before exec; setpriv sets it again afterwards.
                    .arg("--pdeathsig=INT")
                    .arg("--")
                    .arg(program);
                c
            }
        }
    }

    /// Makes `path` belong to the user PostgreSQL runs as.
    fn give(&self, path: &Path) -> Result<()> {
        if let RunAs::User { uid, gid, .. } = self {
            std::os::unix::fs::chown(path, Some(*uid), Some(*gid))
                .with_context(|| format!("cannot chown {}", path.display()))?;
        }
        Ok(())
    }
}

fn lookup_user(name: &str) -> Option<(u32, u32)> {
    let c = CString::new(name).ok()?;
    // SAFETY: getpwnam returns null or a pointer to static storage, which we
    // read at once; this runs once, before any other thread looks users up.
    unsafe {
        let pw = libc::getpwnam(c.as_ptr());
        if pw.is_null() {
            None
        } else {
            Some(((*pw).pw_uid, (*pw).pw_gid))
        }
    }
}

pub struct Postgres {
    bin: PathBuf,
    /// The work dir: the postmaster's current directory (root's may not be
    /// readable by the postgres user).
    home: PathBuf,
    data: PathBuf,
    socket_dir: PathBuf,
    port: u16,
    log: PathBuf,
    /// Where the logs of its tools (pg_basebackup, pg_ctl) go.
    logs: PathBuf,
    run_as: RunAs,
    proc: Option<Proc>,
}

impl Postgres {
    /// Creates the cluster (initdb, trust authentication).
    pub async fn init(work: &WorkDir, bin: &Path, port: u16) -> Result<Postgres> {
        Postgres::init_named(work, bin, port, "postgres").await
    }

    /// Creates a cluster in `work/<name>` (initdb, trust authentication,
    /// replication allowed from loopback), logging as `name`.
    pub async fn init_named(work: &WorkDir, bin: &Path, port: u16, name: &str) -> Result<Postgres> {
        let pg = Postgres::layout(work, bin, port, name)?;
        let mut cmd = pg.run_as.command(&pg.bin.join("initdb"));
        cmd.arg("-D")
            .arg(&pg.data)
            .args(["-A", "trust", "-U", "postgres", "-E", "UTF8"])
            .args(["--no-locale", "--no-sync"])
            .current_dir(&pg.home);
        run_logged(
            "initdb",
            cmd,
            &work.log(&format!("{name}-initdb")),
            Duration::from_secs(60),
        )
        .await?;
        Ok(pg)
    }

    /// A streaming standby of the cluster on `primary_port`, in
    /// `work/<name>`: `pg_basebackup -R -X stream` (the primary must run).
    pub async fn standby_of(
        work: &WorkDir,
        bin: &Path,
        port: u16,
        name: &str,
        primary_port: u16,
    ) -> Result<Postgres> {
        let pg = Postgres::layout(work, bin, port, name)?;
        pg.base_backup(primary_port).await?;
        Ok(pg)
    }

    fn layout(work: &WorkDir, bin: &Path, port: u16, name: &str) -> Result<Postgres> {
        let run_as = RunAs::for_postgres()?;
        let root = work.path().join(name);
        let data = root.join("data");
        let socket_dir = root.join("socket");
        std::fs::create_dir(&root)?;
        std::fs::create_dir(&socket_dir)?;
        run_as.give(&root)?;
        run_as.give(&socket_dir)?;
        Ok(Postgres {
            bin: bin.to_path_buf(),
            home: work.path().to_path_buf(),
            data,
            socket_dir,
            port,
            log: work.log(name),
            logs: work.logs(),
            run_as,
            proc: None,
        })
    }

    /// Replaces this (stopped) node's data with a fresh base backup of the
    /// cluster on `primary_port`, set up to stream from it (`-R`).
    pub async fn base_backup(&self, primary_port: u16) -> Result<()> {
        if self.proc.is_some() {
            bail!("cannot take a base backup into a running PostgreSQL");
        }
        if self.data.exists() {
            std::fs::remove_dir_all(&self.data)
                .with_context(|| format!("cannot remove {}", self.data.display()))?;
        }
        let mut cmd = self.run_as.command(&self.bin.join("pg_basebackup"));
        cmd.arg("-D")
            .arg(&self.data)
            .args(["-h", "127.0.0.1", "-p", &primary_port.to_string()])
            .args(["-U", "postgres", "-R", "-X", "stream", "-c", "fast"])
            .current_dir(&self.home);
        run_logged(
            "pg_basebackup",
            cmd,
            &self.logs.join("pg_basebackup.log"),
            Duration::from_secs(120),
        )
        .await
    }

    /// Appends `line` to the node's postgresql.conf (read at its next start).
    pub fn configure(&self, line: &str) -> Result<()> {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(self.data.join("postgresql.conf"))?;
        writeln!(f, "{line}")?;
        Ok(())
    }

    /// `pg_ctl promote`: a standby becomes the read-write primary. Returns
    /// once it answers `pg_is_in_recovery()` with false.
    pub async fn promote(&self) -> Result<()> {
        let mut cmd = self.run_as.command(&self.bin.join("pg_ctl"));
        cmd.arg("promote")
            .arg("-D")
            .arg(&self.data)
            .arg("-w")
            .current_dir(&self.home);
        run_logged(
            "pg_ctl promote",
            cmd,
            &self.logs.join("pg_ctl.log"),
            Duration::from_secs(60),
        )
        .await?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if !self.in_recovery().await.unwrap_or(true) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the promoted standby is still in recovery after 30 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Whether the node is a standby.
    pub async fn in_recovery(&self) -> Result<bool> {
        let mut conn = sqlx::PgConnection::connect(&self.url("postgres")).await?;
        let r: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
            .fetch_one(&mut conn)
            .await?;
        conn.close().await.ok();
        Ok(r)
    }

    /// Runs one statement (`ALTER SYSTEM ...`, `SELECT pg_reload_conf()`)
    /// on the node's `postgres` database.
    pub async fn execute(&self, sql: &str) -> Result<()> {
        use sqlx::Executor;
        let mut conn = sqlx::PgConnection::connect(&self.url("postgres")).await?;
        conn.execute(sqlx::AssertSqlSafe(sql.to_string())).await?;
        conn.close().await.ok();
        Ok(())
    }

    /// SIGKILLs the postmaster and every backend (a machine that died):
    /// nothing is flushed or handed over.
    pub async fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill().await;
        }
    }

    /// Whether the postmaster runs.
    pub fn is_running(&self) -> bool {
        self.proc.is_some()
    }

    /// Turns TLS on (before the first start): `ssl = on` with the given
    /// certificate and key (copied into the data dir, owned by the user
    /// PostgreSQL runs as, the key 0600 as it insists), the CA that signs
    /// client certificates, and `hba` as the whole of pg_hba.conf.
    pub fn enable_tls(&self, cert: &Path, key: &Path, ca: &Path, hba: &str) -> Result<()> {
        use std::io::Write;
        use std::os::unix::fs::PermissionsExt;
        for (from, name, mode) in [
            (cert, "server.crt", 0o644),
            (key, "server.key", 0o600),
            (ca, "ca.crt", 0o644),
        ] {
            let to = self.data.join(name);
            std::fs::copy(from, &to)
                .with_context(|| format!("cannot copy {} into the data dir", from.display()))?;
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(mode))?;
            self.run_as.give(&to)?;
        }
        let mut conf = std::fs::OpenOptions::new()
            .append(true)
            .open(self.data.join("postgresql.conf"))?;
        writeln!(
            conf,
            "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\nssl_ca_file = 'ca.crt'"
        )?;
        std::fs::write(self.data.join("pg_hba.conf"), hba)?;
        Ok(())
    }

    /// `postgres://` URL of `database` on our cluster.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub async fn start(&mut self) -> Result<()> {
        if self.proc.is_some() {
            bail!("PostgreSQL is already running");
        }
        let mut cmd = self.run_as.command(&self.bin.join("postgres"));
        cmd.arg("-D")
            .arg(&self.data)
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-k")
            .arg(&self.socket_dir)
            .args(["-c", "listen_addresses=127.0.0.1"])
            // API pool + 3 workers' pools + rescuers + us, with room for restarts.
            .args(["-c", "max_connections=400"])
            // Durability against an OS crash is not what this run tests;
            // a fast shutdown still flushes everything.
            .args(["-c", "fsync=off", "-c", "full_page_writes=off"])
            .current_dir(&self.home);
        self.proc = Some(Proc::spawn(
            "postgres",
            cmd,
            &self.log,
            libc::SIGINT,
            Duration::from_secs(20),
        )?);
        self.wait_ready(Duration::from_secs(30)).await
    }

    async fn wait_ready(&mut self, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        let url = self.url("postgres");
        loop {
            if let Some(status) = self.proc.as_mut().and_then(Proc::exited) {
                self.proc = None;
                bail!("PostgreSQL exited ({status})\n{}", tail(&self.log, 20));
            }
            let attempt =
                tokio::time::timeout(Duration::from_secs(2), sqlx::PgConnection::connect(&url))
                    .await;
            if let Ok(Ok(conn)) = attempt {
                conn.close().await.ok();
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "PostgreSQL did not accept connections within {limit:?}\n{}",
                    tail(&self.log, 20)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Fast shutdown: sessions are cut, committed work is kept.
    pub async fn stop(&mut self) -> Result<()> {
        if let Some(mut p) = self.proc.take() {
            let (status, clean) = p.stop().await;
            if !clean {
                bail!("PostgreSQL did not shut down in time and was killed ({status})");
            }
        }
        Ok(())
    }

    /// Stop and start on the same data dir; returns how long it was down.
    pub async fn restart(&mut self) -> Result<Duration> {
        let t = Instant::now();
        self.stop().await?;
        self.start().await?;
        Ok(t.elapsed())
    }
}
