//! Rescue: jobs nobody is moving (a lost message, a dead worker) handed
//! back to the queue or failed once out of attempts. Run by the rescuer
//! ([`crate::rescuer`]) in every process.

use std::time::Duration;

use sqlx::PgPool;
use uuid::Uuid;

use super::claim::fail_sql;
use crate::message::StopJob;
use crate::state::TaskState;

/// What the rescuer decided for one stale job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rescue {
    /// Handed back to the queue: publish this message again.
    Republish(StopJob),
    /// Out of attempts: recorded as failed.
    Failed(Uuid),
}

/// Finds unfinished jobs that nobody is moving — a running job whose lease
/// expired, a published/retrying job untouched for `stale_after`, a queued
/// job the relay never got out — and either hands them back (state
/// `published`, touched so other rescuers skip them) or fails them when no
/// attempts are left. Safe to run in every process at once: rows are taken
/// with `FOR UPDATE SKIP LOCKED` and moved by compare-and-swap.
pub async fn rescue(
    pool: &PgPool,
    stale_after: Duration,
    host: &str,
    limit: i64,
) -> Result<Vec<Rescue>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let rows: Vec<(Uuid, Uuid, String, i32, i32)> = sqlx::query_as(
        "SELECT id, instance_uuid, request_id, attempts, max_attempts FROM jobs
          WHERE finished_at IS NULL
            AND ((state = 'running' AND lease_expires_at < now())
                 OR (state <> 'running' AND updated_at < now() - make_interval(secs => $1)))
          ORDER BY updated_at
          LIMIT $2
          FOR UPDATE SKIP LOCKED",
    )
    .bind(stale_after.as_secs_f64())
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    let mut republish = Vec::new();
    for (id, instance_uuid, request_id, attempts, max_attempts) in rows {
        if attempts >= max_attempts {
            let n: i64 = sqlx::query_scalar(fail_sql(
                "state NOT IN ('succeeded', 'failed')",
            ))
            .bind(id)
            .bind(format!("gave up after {attempts} attempts: the job stalled (worker lost or message lost)"))
            .bind("rescued by shutoff after its deadline passed")
            .bind(host)
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
    tx.commit().await?;
    Ok(out)
}
