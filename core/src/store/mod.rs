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
//! - [`trace`]: every row a stop left behind (`shutoff-admin trace`).
//! - [`drain`]: a host's servers and its stops' progress (`shutoff-admin drain`).
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
pub mod drain;
mod error;
pub mod hosts;
#[cfg(test)]
pub(crate) mod plans;
mod pool;
pub mod prune;
pub mod publish;
pub mod reads;
pub mod rescue;
pub mod trace;

pub use error::{StoreError, is_unavailable};
pub use pool::{PoolSettings, pool, writable_host};

use std::time::Duration;

use sqlx::PgPool;

/// The schema, embedded so every binary can migrate and every `#[sqlx::test]`
/// gets a migrated database.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Creates the database named in `db` if it does not exist, then migrates
/// it, on the read-write host.
pub async fn create_and_migrate(db: &crate::db_hosts::DbHosts) -> anyhow::Result<()> {
    use anyhow::Context;
    use sqlx::{ConnectOptions, Connection, Executor};
    // The database may not exist yet: look for the writable host through
    // `postgres`, which always does.
    let admin: Vec<_> = db
        .hosts()
        .iter()
        .map(|h| h.clone().database("postgres"))
        .collect();
    let i = writable_host(&admin, db.read_write())
        .await
        .context("cannot connect to PostgreSQL")?;
    let host = db.hosts()[i].clone();
    let name = db.database().to_string();
    let mut conn = admin[i]
        .connect()
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to PostgreSQL: {}", crate::tls::chain(&e)))?;
    let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM pg_database WHERE datname = $1")
        .bind(&name)
        .fetch_optional(&mut conn)
        .await?;
    if exists.is_none() {
        let quoted = format!("\"{}\"", name.replace('"', "\"\""));
        match conn
            .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {quoted}")))
            .await
        {
            Ok(_) => tracing::info!(database = %name, "created database"),
            // Another process created it between our check and our create.
            Err(e) if e.as_database_error().and_then(|d| d.code()).as_deref() == Some("42P04") => {}
            Err(e) => return Err(e).context("cannot create database"),
        }
    }
    conn.close().await.ok();
    let mut conn = host
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

/// True when PostgreSQL answers a trivial query within `timeout` (for `/readyz`).
pub async fn ping(pool: &PgPool, timeout: Duration) -> bool {
    tokio::time::timeout(
        timeout,
        sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(pool),
    )
    .await
    .is_ok_and(|r| r.is_ok())
}
