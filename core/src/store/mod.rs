//! Every SQL statement shutoff runs, grouped by who runs it.
//!
//! - [`accept`]: the acceptance statement (run by [`crate::acceptor`]).
//! - [`publish`]: which jobs still need their message, and the mark that the
//!   broker confirmed one (the API's request path and relay).
//! - [`claim`]: the worker's moves of a job: claim, lease, succeed, fail,
//!   retry, release.
//! - [`rescue`]: jobs nobody is moving, handed back or failed (the rescuer).
//! - [`dead_letters`]: messages no job matches.
//! - [`hosts`]: the workers' heartbeats, and which hosts are up.
//! - [`auth`]: token lookup.
//! - [`reads`]: what the GET endpoints show.
//! - [`admin`]: what `shutoff-admin` creates.
//!
//! Every call answers a [`StoreError`] when it fails: unavailable,
//! contention, or a failure, with the database's error as its source.
//!
//! State moves by compare-and-swap (`UPDATE ... WHERE state = ... RETURNING`),
//! so two processes racing over one row cannot both win.

pub mod accept;
pub mod admin;
pub mod auth;
pub mod claim;
pub mod dead_letters;
mod error;
pub mod hosts;
pub mod prune;
pub mod publish;
pub mod reads;
pub mod rescue;

pub use error::{StoreError, is_unavailable};

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

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
    /// A connection idle this long is closed (none: sqlx's 10 minutes).
    pub idle_timeout: Option<Duration>,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            max_connections: 32,
            acquire_timeout: Duration::from_secs(3),
            statement_timeout: Duration::from_secs(10),
            idle_timeout: None,
        }
    }
}

/// A lazily-connecting pool: the process starts even when PostgreSQL is down
/// and serves 503 until it is back. TLS as `url` says
/// ([`crate::tls::pg_connect_options`]); settings that cannot work fail here.
pub fn pool(url: &str, settings: &PoolSettings, app: &str) -> Result<PgPool, sqlx::Error> {
    let opts = crate::tls::pg_connect_options(url)?;
    let opts = opts.application_name(app).options([(
        "statement_timeout",
        format!("{}", settings.statement_timeout.as_millis()),
    )]);
    let options = PgPoolOptions::new();
    let options = match settings.idle_timeout {
        Some(t) => options.idle_timeout(t),
        None => options,
    };
    Ok(options
        .max_connections(settings.max_connections)
        .acquire_timeout(settings.acquire_timeout)
        .test_before_acquire(false)
        .connect_lazy_with(opts))
}

/// Creates the database named in `url` if it does not exist, then migrates it.
pub async fn create_and_migrate(url: &str) -> anyhow::Result<()> {
    use anyhow::Context;
    use sqlx::{ConnectOptions, Connection, Executor};
    let opts = crate::tls::pg_connect_options(url).context("DATABASE_URL")?;
    let db = opts.get_database().unwrap_or("postgres").to_string();
    let admin_opts = opts.clone().database("postgres");
    let mut conn = admin_opts
        .connect()
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to PostgreSQL: {}", crate::tls::chain(&e)))?;
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
    let mut conn = opts.connect().await.map_err(|e| {
        anyhow::anyhow!("cannot connect to the database: {}", crate::tls::chain(&e))
    })?;
    MIGRATOR.run(&mut conn).await.context("migration failed")?;
    Ok(())
}

/// For a statement over many ids that returns the ids it changed: whether
/// each of `ids` is among them, in order.
fn returned(ids: &[uuid::Uuid], changed: Vec<uuid::Uuid>) -> Vec<bool> {
    let changed: std::collections::HashSet<uuid::Uuid> = changed.into_iter().collect();
    ids.iter().map(|id| changed.contains(id)).collect()
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
