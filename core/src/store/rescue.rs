//! Rescue: jobs nobody is moving (a lost message, a dead worker) handed
//! back to their host's queue or failed once out of attempts. Run by the
//! rescuer ([`crate::rescuer`]) for every host that is up, and by a host's
//! own worker for that host's jobs when it starts ([`redrive`]).
//!
//! A host that is down is left alone: its stops wait in PostgreSQL, still
//! `powering-off`, without using an attempt or filling its queue with
//! copies, until a worker of that host beats again.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use super::claim::fail_sql;
use crate::ids::HostName;
use crate::message::StopJob;
use crate::state::TaskState;

/// What the rescuer decided for one stale job.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Rescue {
    /// Handed back to the queue: publish this message again.
    Republish(StopJob),
    /// Out of attempts: recorded as failed.
    Failed(Uuid),
}

/// The jobs a rescue pass takes, oldest first, locked. $1 seconds a
/// non-running job must have sat unmoved, $2 the limit, $3 the deployment's
/// host-down-after in seconds. Public so the benchmark can time and EXPLAIN
/// the very statement.
pub const STALE_SQL: &str = "
SELECT j.id, j.instance_uuid, i.host, j.request_id, j.attempts, j.max_attempts
  FROM jobs j JOIN instances i ON i.uuid = j.instance_uuid
 WHERE j.finished_at IS NULL
   AND ((j.state = 'running' AND j.lease_expires_at < now())
        OR (j.state <> 'running' AND j.updated_at < now() - make_interval(secs => $1)))
   AND EXISTS (SELECT 1 FROM host_workers w
                WHERE w.host = i.host AND w.last_seen > now() - make_interval(secs => $3))
 ORDER BY j.updated_at
 LIMIT $2
 FOR UPDATE OF j SKIP LOCKED";

/// The jobs of one host a re-drive publishes: those the broker never
/// confirmed (accepted while the host had no queue, or while the broker was
/// away), older than the request path's own publish. $1 the host, $2 the
/// limit, $3 the re-drive's start.
const HOST_SQL: &str = "
SELECT j.id, j.instance_uuid, i.host, j.request_id, j.attempts, j.max_attempts
  FROM jobs j JOIN instances i ON i.uuid = j.instance_uuid
 WHERE j.finished_at IS NULL AND i.host = $1
   AND j.state = 'queued' AND j.published_at IS NULL
   AND j.created_at < $3 - interval '2 seconds'
 ORDER BY j.created_at
 LIMIT $2
 FOR UPDATE OF j SKIP LOCKED";

/// The jobs of one host whose messages the broker confirmed and still
/// holds in the host's durable queue: touched, so the rescuer, which sees
/// them as untouched for as long as the host was down, gives the queue its
/// `rescue_after` to deliver them before it publishes copies.
const TOUCH_HOST_SQL: &str = "
UPDATE jobs SET updated_at = now()
 WHERE id IN (SELECT j.id FROM jobs j JOIN instances i ON i.uuid = j.instance_uuid
               WHERE j.finished_at IS NULL AND i.host = $1
                 AND (j.state IN ('published', 'retrying')
                      OR (j.state = 'queued' AND j.published_at IS NOT NULL))
                 AND j.updated_at < $2
                 FOR NO KEY UPDATE OF j SKIP LOCKED)";

type Row = (Uuid, Uuid, String, String, i32, i32);

/// Finds unfinished jobs of hosts that are up that nobody is moving — a
/// running job whose lease expired, a published/retrying job untouched for
/// `stale_after`, a queued job the relay never got out — and either hands
/// them back (state `published`, touched so other rescuers skip them) or
/// fails them when no attempts are left. Safe to run in every process at
/// once: rows are taken with `FOR UPDATE SKIP LOCKED` and moved by
/// compare-and-swap.
pub async fn rescue(
    pool: &PgPool,
    stale_after: Duration,
    host_down_after: Duration,
    recorded_as: &str,
    limit: i64,
) -> Result<Vec<Rescue>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let rows: Vec<Row> = sqlx::query_as(STALE_SQL)
        .bind(stale_after.as_secs_f64())
        .bind(limit)
        .bind(host_down_after.as_secs_f64())
        .fetch_all(&mut *tx)
        .await?;
    let out = hand_back(&mut tx, rows, recorded_as).await?;
    tx.commit().await?;
    Ok(out)
}

/// A host's worker, starting (or back after losing PostgreSQL), takes up
/// the stops of its host that the broker does not hold: those never
/// confirmed are handed back for publishing (state `published`); those
/// waiting in the host's durable queue are only touched (see
/// [`touch_host`]). Running jobs are left to their lease and the rescuer.
/// Jobs moved after `before` are left alone, so a re-drive in batches ends.
pub async fn redrive(
    pool: &PgPool,
    host: &HostName,
    before: DateTime<Utc>,
    recorded_as: &str,
    limit: i64,
) -> Result<Vec<Rescue>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let rows: Vec<Row> = sqlx::query_as(HOST_SQL)
        .bind(host.as_str())
        .bind(limit)
        .bind(before)
        .fetch_all(&mut *tx)
        .await?;
    let out = hand_back(&mut tx, rows, recorded_as).await?;
    tx.commit().await?;
    Ok(out)
}

/// Restarts the rescuer's clock on the stops of `host` whose messages
/// wait in its queue; returns how many.
pub async fn touch_host(
    pool: &PgPool,
    host: &HostName,
    before: DateTime<Utc>,
) -> Result<u64, sqlx::Error> {
    let r = sqlx::query(TOUCH_HOST_SQL)
        .bind(host.as_str())
        .bind(before)
        .execute(pool)
        .await?;
    Ok(r.rows_affected())
}

async fn hand_back(
    tx: &mut sqlx::PgConnection,
    rows: Vec<Row>,
    recorded_as: &str,
) -> Result<Vec<Rescue>, sqlx::Error> {
    let mut out = Vec::with_capacity(rows.len());
    let mut republish = Vec::new();
    for (id, instance_uuid, host, request_id, attempts, max_attempts) in rows {
        if attempts >= max_attempts {
            let n: i64 = sqlx::query_scalar(fail_sql(
                "state NOT IN ('succeeded', 'failed')",
            ))
            .bind(id)
            .bind(format!("gave up after {attempts} attempts: the job stalled (worker lost or message lost)"))
            .bind("rescued by shutoff after its deadline passed")
            .bind(recorded_as)
            .bind(TaskState::PoweringOff)
            .fetch_one(&mut *tx)
            .await?;
            if n == 1 {
                out.push(Rescue::Failed(id));
            }
        } else {
            republish.push(id);
            out.push(Rescue::Republish(StopJob {
                job_id: id,
                instance_uuid,
                host: HostName::from_stored(host),
                request_id,
            }));
        }
    }
    if !republish.is_empty() {
        sqlx::query(
            "UPDATE jobs SET state = 'published', worker = NULL, lease_expires_at = NULL,
                    updated_at = now(), published_at = coalesce(published_at, now())
              WHERE id = ANY($1)",
        )
        .bind(&republish)
        .execute(&mut *tx)
        .await?;
    }
    Ok(out)
}

/// PostgreSQL's clock, so a re-drive's cut-off does not depend on the
/// worker's.
pub async fn db_now(pool: &PgPool) -> Result<DateTime<Utc>, sqlx::Error> {
    sqlx::query_scalar("SELECT now()").fetch_one(pool).await
}
