//! Publish and relay: which committed jobs still need their message, and
//! the mark that says the broker confirmed one. Run by the API's request
//! path and its relay ([`crate::relay`]).

use std::time::Duration;

use sqlx::PgPool;
use uuid::Uuid;

use crate::ids::HostName;
use crate::message::StopJob;

pub(super) const MARK_PUBLISHED_SQL: &str = "
UPDATE jobs SET published_at = now()
 WHERE id IN (SELECT id FROM jobs
               WHERE id = ANY($1) AND published_at IS NULL AND started_at IS NULL
                 FOR NO KEY UPDATE SKIP LOCKED)";

/// Records that the broker confirmed a job's message: `published_at`, on a
/// job no worker has taken yet (a worker may already have moved it further).
/// "Not taken yet" is `started_at IS NULL` (set by the first claim, never
/// cleared) rather than `state = 'queued'`: the same jobs, but a condition
/// that does not match the partial index `jobs_queued`. Matching it, the
/// planner read the mark's few jobs out of that index whenever the
/// statistics called it near empty, which during a worker outage meant
/// walking every published, unclaimed job for each mark.
///
/// Only `published_at` changes: no indexed column, so PostgreSQL updates the
/// row in place (a HOT update; `jobs` keeps free space for it) and the
/// state trigger writes no transition. Moving the state as well cost a second
/// index-maintaining write per stop, a quarter of the API's accept rate.
///
/// A row another transaction holds is skipped, not waited for: that is a
/// worker claiming the job, which takes it out of `queued`, where the mark
/// no longer matters. Waiting made claims and marks queue behind each other
/// (the most common wait in the end-to-end run). If that claim rolls back,
/// the job stays unmarked and the relay publishes it once more: a duplicate
/// message, which workers already treat as normal.
pub async fn mark_published(pool: &PgPool, ids: &[Uuid]) -> Result<u64, sqlx::Error> {
    let r = sqlx::query(MARK_PUBLISHED_SQL)
        .bind(ids)
        .execute(pool)
        .await?;
    Ok(r.rows_affected())
}

/// The relay's query (see [`unpublished`]): $1 the minimum age and $2 the
/// window in seconds, $3 the limit, $4 the host-down-after in seconds.
/// Public so the benchmark can time and EXPLAIN the very statement.
pub const UNPUBLISHED_SQL: &str = "
SELECT j.id, j.instance_uuid, i.host, j.request_id
  FROM jobs j JOIN instances i ON i.uuid = j.instance_uuid
 WHERE j.state = 'queued' AND j.published_at IS NULL
   AND j.created_at < now() - make_interval(secs => $1)
   AND j.created_at > now() - make_interval(secs => $2)
   AND EXISTS (SELECT 1 FROM host_workers w
                WHERE w.host = i.host AND w.last_seen > now() - make_interval(secs => $4))
 ORDER BY j.created_at LIMIT $3";

/// The relay's backlog count (see [`count_queued`]): $1 the window in seconds.
pub const COUNT_QUEUED_SQL: &str = "
SELECT count(*) FROM jobs
 WHERE state = 'queued' AND published_at IS NULL
   AND created_at > now() - make_interval(secs => $1)";

/// Committed jobs whose message was never confirmed, oldest first, of
/// hosts that are up (a worker beat within `host_down_after`): a down
/// host's stops wait in PostgreSQL for its worker, which re-drives them when
/// it starts. `min_age` leaves the request path time to publish its own job
/// first; jobs older than `window` are the rescuer's (so a pass never walks
/// a huge backlog).
pub async fn unpublished(
    pool: &PgPool,
    min_age: Duration,
    window: Duration,
    host_down_after: Duration,
    limit: i64,
) -> Result<Vec<StopJob>, sqlx::Error> {
    let rows: Vec<(Uuid, Uuid, String, String)> = sqlx::query_as(UNPUBLISHED_SQL)
        .bind(min_age.as_secs_f64())
        .bind(window.as_secs_f64())
        .bind(limit)
        .bind(host_down_after.as_secs_f64())
        .fetch_all(pool)
        .await?;
    Ok(rows
        .into_iter()
        .map(|(job_id, instance_uuid, host, request_id)| StopJob {
            job_id,
            instance_uuid,
            host: HostName::from_stored(host),
            request_id,
        })
        .collect())
}

/// Jobs committed but not yet published: the relay's backlog. Read from the
/// partial index `jobs_queued`, so it costs nothing while the backlog is
/// empty, however many finished jobs the table holds.
pub async fn count_queued(pool: &PgPool, window: Duration) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(COUNT_QUEUED_SQL)
        .bind(window.as_secs_f64())
        .fetch_one(pool)
        .await
}
