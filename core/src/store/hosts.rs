//! Hosts: which compute hosts have workers, kept by the workers' heartbeats,
//! and what waits for each. A host is *up* while one of its workers has
//! beaten within the deployment's `--host-down-after`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::ids::HostName;

/// One statement per beat: the host's row and this worker's, created or
/// refreshed. Runs every `--heartbeat-secs` in each worker, which is the
/// whole of an idle worker's load on PostgreSQL.
const BEAT_SQL: &str = "
WITH h AS (
    INSERT INTO hosts AS h (name) VALUES ($1)
    ON CONFLICT (name) DO UPDATE SET last_seen = now()
    RETURNING name
)
INSERT INTO host_workers AS w (host, worker, version)
SELECT name, $2, $3 FROM h
ON CONFLICT (host, worker) DO UPDATE SET last_seen = now(), version = EXCLUDED.version";

/// Records that `worker` (running `version`) serves `host`, now.
pub async fn beat(
    pool: &PgPool,
    host: &HostName,
    worker: &str,
    version: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(BEAT_SQL)
        .bind(host.as_str())
        .bind(worker)
        .bind(version)
        .execute(pool)
        .await?;
    Ok(())
}

/// A worker shutting down cleanly leaves its host at once, so a host whose
/// last worker stopped is down without waiting out `--host-down-after`.
pub async fn leave(pool: &PgPool, host: &HostName, worker: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM host_workers WHERE host = $1 AND worker = $2")
        .bind(host.as_str())
        .bind(worker)
        .execute(pool)
        .await?;
    Ok(())
}

/// True while a worker of `host` has beaten within `down_after`.
pub async fn is_up(pool: &PgPool, host: &str, down_after: Duration) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM host_workers
                         WHERE host = $1 AND last_seen > now() - make_interval(secs => $2))",
    )
    .bind(host)
    .bind(down_after.as_secs_f64())
    .fetch_one(pool)
    .await
}

/// A host as `shutoff-admin hosts` and the metrics show it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct HostRow {
    pub name: String,
    pub up: bool,
    /// When a worker of it was first and last seen (none for a host that
    /// only instances name).
    pub first_seen: Option<DateTime<Utc>>,
    pub last_seen: Option<DateTime<Utc>>,
    /// Its live workers, as `worker (version)`.
    pub workers: Vec<String>,
    /// Unfinished stops of its instances, and the oldest one's acceptance.
    pub waiting: i64,
    pub waiting_since: Option<DateTime<Utc>>,
}

/// Every host a worker has served or an unfinished stop waits for, by
/// name. Unfinished stops are read from the partial index of unfinished
/// jobs, so the list costs what the backlog is, not what the history is.
pub async fn list(pool: &PgPool, down_after: Duration) -> Result<Vec<HostRow>, sqlx::Error> {
    sqlx::query_as(
        "WITH waiting AS (
             SELECT i.host, count(*) AS waiting, min(j.created_at) AS waiting_since
               FROM jobs j JOIN instances i ON i.uuid = j.instance_uuid
              WHERE j.finished_at IS NULL
              GROUP BY i.host
         ), live AS (
             SELECT host, array_agg(worker || ' (' || version || ')' ORDER BY worker) AS workers
               FROM host_workers
              WHERE last_seen > now() - make_interval(secs => $1)
              GROUP BY host
         )
         SELECT coalesce(h.name, w.host) AS name,
                live.host IS NOT NULL AS up,
                h.first_seen, h.last_seen,
                coalesce(live.workers, '{}') AS workers,
                coalesce(w.waiting, 0) AS waiting, w.waiting_since
           FROM hosts h
           FULL JOIN waiting w ON w.host = h.name
           LEFT JOIN live ON live.host = coalesce(h.name, w.host)
          ORDER BY 1",
    )
    .bind(down_after.as_secs_f64())
    .fetch_all(pool)
    .await
}
