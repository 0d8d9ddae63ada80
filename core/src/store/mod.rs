//! Every SQL statement shutoff runs, grouped by who runs it.
//!
//! - [`accept`]: the API's one-statement acceptance of a stop.
//! - [`jobs`]: the job state machine (relay, worker, rescuer).
//! - [`auth`]: token lookup.
//! - [`reads`]: what the GET endpoints show.
//! - [`admin`]: what `shutoff-admin` creates.
//!
//! State moves by compare-and-swap (`UPDATE ... WHERE state = ... RETURNING`),
//! so two processes racing over one row cannot both win.

pub mod accept;
pub mod admin;
pub mod auth;
pub mod jobs;
pub mod reads;

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

/// The schema, embedded so every binary can migrate and every `#[sqlx::test]`
/// gets a migrated database.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Pool settings that keep a dead or half-dead PostgreSQL from hanging callers.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub max_connections: u32,
    /// How long a caller waits for a connection before giving up (→ 503).
    pub acquire_timeout: Duration,
    /// Server-side limit on any statement.
    pub statement_timeout: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            max_connections: 32,
            acquire_timeout: Duration::from_secs(3),
            statement_timeout: Duration::from_secs(10),
        }
    }
}

/// A lazily-connecting pool: the process starts even when PostgreSQL is down
/// and serves 503 until it is back.
pub fn pool(url: &str, settings: &PoolSettings, app: &str) -> Result<PgPool, sqlx::Error> {
    let opts: PgConnectOptions = url.parse()?;
    let opts = opts.application_name(app).options([(
        "statement_timeout",
        format!("{}", settings.statement_timeout.as_millis()),
    )]);
    Ok(PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(settings.acquire_timeout)
        .test_before_acquire(false)
        .connect_lazy_with(opts))
}

/// Creates the database named in `url` if it does not exist, then migrates it.
pub async fn create_and_migrate(url: &str) -> anyhow::Result<()> {
    use anyhow::Context;
    use sqlx::{ConnectOptions, Connection, Executor};
    let opts: PgConnectOptions = url
        .parse()
        .context("DATABASE_URL is not a PostgreSQL URL")?;
    let db = opts.get_database().unwrap_or("postgres").to_string();
    let admin_opts = opts.clone().database("postgres");
    let mut conn = admin_opts
        .connect()
        .await
        .context("cannot connect to PostgreSQL")?;
    let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM pg_database WHERE datname = $1")
        .bind(&db)
        .fetch_optional(&mut conn)
        .await?;
    if exists.is_none() {
        let quoted = format!("\"{}\"", db.replace('"', "\"\""));
        match conn
            .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {quoted}")))
            .await
        {
            Ok(_) => tracing::info!(database = %db, "created database"),
            // Another process created it between our check and our create.
            Err(e) if e.as_database_error().and_then(|d| d.code()).as_deref() == Some("42P04") => {}
            Err(e) => return Err(e).context("cannot create database"),
        }
    }
    conn.close().await.ok();
    let mut conn = opts
        .connect()
        .await
        .context("cannot connect to the database")?;
    MIGRATOR.run(&mut conn).await.context("migration failed")?;
    Ok(())
}

/// For a statement over many ids that returns the ids it changed: whether
/// each of `ids` is among them, in order.
fn returned(ids: &[uuid::Uuid], changed: Vec<uuid::Uuid>) -> Vec<bool> {
    let changed: std::collections::HashSet<uuid::Uuid> = changed.into_iter().collect();
    ids.iter().map(|id| changed.contains(id)).collect()
}

/// True when the error means "PostgreSQL is not reachable" rather than a bug.
pub fn is_unavailable(e: &sqlx::Error) -> bool {
    matches!(
        e,
        sqlx::Error::PoolTimedOut
            | sqlx::Error::Io(_)
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Tls(_)
    ) || e
        .as_database_error()
        .and_then(|d| d.code())
        // 57P01 admin_shutdown, 57P02 crash_shutdown, 57P03 cannot_connect_now,
        // 08xxx connection exceptions, 53300 too many connections.
        .is_some_and(|c| c.starts_with("57P") || c.starts_with("08") || c == "53300")
}

/// True when PostgreSQL answers a trivial query within `timeout` (for `/readyz`).
pub async fn ping(pool: &PgPool, timeout: Duration) -> bool {
    tokio::time::timeout(
        timeout,
        sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(pool),
    )
    .await
    .is_ok_and(|r| r.is_ok())
}
