//! The one way every process gets its PostgreSQL pool, and how a pool over
//! several hosts keeps to the read-write one.
//!
//! sqlx connects to the one host of its connect options, which a pool may
//! change at any time ([`sqlx::Pool::set_connect_options`]; its connect loop
//! reads them afresh on every try). With several hosts:
//!
//! - every new connection asks `pg_is_in_recovery()`; one that landed on a
//!   standby is refused (sqlx tries again) and wakes the picker;
//! - a connection idle for a while is asked again before it is handed out,
//!   so one left on a node that went away or turned read-only is dropped;
//! - the picker checks the current host every
//!   [`PoolSettings::failover_probe`] (with a fresh connection, while the
//!   pool has no idle one), and when it is down or read-only tries every
//!   host and points the pool at the first that is up and read-write.
//!
//! A write that reached a read-only node anyway (SQLSTATE 25006) is
//! [`super::StoreError::Unavailable`]: refused with a 503 or retried, never
//! a 500 and never counted as done.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};
use tokio::sync::Notify;

use crate::db_hosts::DbHosts;

/// Pool settings that keep a dead or half-dead PostgreSQL from hanging callers.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub max_connections: u32,
    /// How long a caller waits for a connection before giving up (→ 503).
    pub acquire_timeout: Duration,
    /// Server-side limit on any statement.
    pub statement_timeout: Duration,
    /// A connection idle this long is closed (none: sqlx's 10 minutes).
    pub idle_timeout: Option<Duration>,
    /// With several hosts: how often the picker checks that the current
    /// host is up and read-write.
    pub failover_probe: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            max_connections: 32,
            acquire_timeout: Duration::from_secs(3),
            statement_timeout: Duration::from_secs(10),
            idle_timeout: None,
            failover_probe: Duration::from_secs(1),
        }
    }
}

/// A connection idle this long is asked `pg_is_in_recovery()` again before
/// it is handed out (busy connections meet a failover as errors anyway).
const RECHECK_IDLE: Duration = Duration::from_secs(1);
/// Longest a probe of one host may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// A lazily-connecting pool: the process starts even when PostgreSQL is down
/// and serves 503 until it is back. With several hosts (or
/// `target_session_attrs=read-write`) it keeps to the read-write node, as
/// described in this module; the picker runs until the pool is closed.
pub fn pool(db: &DbHosts, settings: &PoolSettings, app: &str) -> PgPool {
    let hosts: Vec<PgConnectOptions> = db
        .hosts()
        .iter()
        .map(|o| {
            o.clone().application_name(app).options([(
                "statement_timeout",
                format!("{}", settings.statement_timeout.as_millis()),
            )])
        })
        .collect();
    let options = PgPoolOptions::new();
    let options = match settings.idle_timeout {
        Some(t) => options.idle_timeout(t),
        None => options,
    };
    let options = options
        .max_connections(settings.max_connections)
        .acquire_timeout(settings.acquire_timeout)
        .test_before_acquire(false);
    if !db.read_write() {
        return options.connect_lazy_with(hosts[0].clone());
    }
    let wake = Arc::new(Notify::new());
    let on_standby = wake.clone();
    let pool = options
        .after_connect(move |conn, _meta| {
            let wake = on_standby.clone();
            Box::pin(async move {
                if in_recovery(conn).await? {
                    wake.notify_one();
                    return Err(sqlx::Error::Configuration(
                        "connected to a read-only PostgreSQL node (in recovery); looking for the read-write one".into(),
                    ));
                }
                Ok(())
            })
        })
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for < RECHECK_IDLE {
                    return Ok(true);
                }
                Ok(!in_recovery(conn).await?)
            })
        })
        .connect_lazy_with(hosts[0].clone());
    let picker = Picker {
        pool: pool.clone(),
        hosts,
        names: (0..db.len()).map(|i| db.name(i).to_string()).collect(),
        current: AtomicUsize::new(0),
        wake,
        every: settings.failover_probe,
    };
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => {
            rt.spawn(picker.run());
        }
        // Without a runtime nothing could use the pool either; the first
        // host stays.
        Err(_) => tracing::warn!("no tokio runtime: the PostgreSQL host picker does not run"),
    }
    pool
}

async fn in_recovery(conn: &mut PgConnection) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT pg_is_in_recovery()")
        .fetch_one(conn)
        .await
}

/// Keeps a pool's connect options on the read-write host.
struct Picker {
    pool: PgPool,
    hosts: Vec<PgConnectOptions>,
    names: Vec<String>,
    /// Index of the host the pool connects to.
    current: AtomicUsize,
    /// A new connection landed on a read-only node: look now.
    wake: Arc<Notify>,
    every: Duration,
}

impl Picker {
    async fn run(self) {
        let closed = self.pool.close_event();
        tokio::pin!(closed);
        loop {
            tokio::select! {
                _ = &mut closed => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(self.every) => {}
            }
            if !self.current_is_writable().await {
                self.pick().await;
            }
        }
    }

    /// Whether the current host is up and writable. While the pool has
    /// idle connections it is trusted: each is asked again before use when
    /// it has been idle a while (`before_acquire`), and touching them here
    /// would keep them from ever idling out. Otherwise (busy, empty, or
    /// failing to connect) a fresh connection asks.
    async fn current_is_writable(&self) -> bool {
        if self.pool.num_idle() > 0 {
            return true;
        }
        let i = self.current.load(Ordering::Relaxed);
        probe(&self.hosts[i]).await.is_ok()
    }

    /// Tries every host, from the one after the current, and points the
    /// pool at the first that is up and writable. None: nothing changes
    /// (the next round looks again).
    async fn pick(&self) {
        let from = self.current.load(Ordering::Relaxed);
        let n = self.hosts.len();
        for k in 1..=n {
            let i = (from + k) % n;
            match probe(&self.hosts[i]).await {
                Ok(()) => {
                    if i != from {
                        self.pool.set_connect_options(self.hosts[i].clone());
                        self.current.store(i, Ordering::Relaxed);
                        tracing::warn!(db.host = %self.names[i], db.previous = %self.names[from],
                            "PostgreSQL read-write node changed");
                    }
                    return;
                }
                Err(why) => {
                    tracing::debug!(db.host = %self.names[i], %why, "not the read-write PostgreSQL node")
                }
            }
        }
        tracing::warn!(hosts = ?self.names, "no PostgreSQL host is up and read-write");
    }
}

/// Ok when `host` accepts a connection within [`PROBE_TIMEOUT`] and is not
/// in recovery.
async fn probe(host: &PgConnectOptions) -> Result<(), String> {
    let r = tokio::time::timeout(PROBE_TIMEOUT, async {
        let mut conn = host.connect().await?;
        let standby = in_recovery(&mut conn).await;
        conn.close().await.ok();
        standby
    })
    .await;
    match r {
        Ok(Ok(false)) => Ok(()),
        Ok(Ok(true)) => Err("read-only (in recovery)".into()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {PROBE_TIMEOUT:?}")),
    }
}

/// Which of `hosts` is up and read-write (with `check` false: the first
/// that is up), for what runs outside a pool (migrations).
pub async fn writable_host(hosts: &[PgConnectOptions], check: bool) -> Result<usize, sqlx::Error> {
    let mut last = None;
    for (i, host) in hosts.iter().enumerate() {
        match host.connect().await {
            Ok(mut conn) => {
                let standby = check && in_recovery(&mut conn).await?;
                conn.close().await.ok();
                if !standby {
                    return Ok(i);
                }
                last = Some(sqlx::Error::Configuration(
                    "every reachable PostgreSQL host is read-only".into(),
                ));
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.expect("DbHosts has at least one host"))
}
