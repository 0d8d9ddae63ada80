//! Retention: finished stops older than a cutoff, removed in small batches
//! (their job, its transitions, the instance action, its events and
//! faults), and dead letters older than the cutoff.
//!
//! What is never removed: a job that has not finished, and the newest action
//! of an instance (it explains the instance's current state, as Nova's
//! action list does). Each batch is one transaction that locks only the rows
//! it removes (`FOR UPDATE SKIP LOCKED`), so the hot path never waits for
//! it, and a prune that is interrupted loses nothing and resumes where the
//! rows left off: the next run simply finds fewer.
//!
//! Batches walk `instance_actions` by primary key up to the last action that
//! started before the cutoff (found by a binary search on the key, whose
//! order follows `start_time`), so a batch costs an index range, however long
//! the history.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

/// Rows removed, per table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub jobs: i64,
    pub job_transitions: i64,
    pub instance_actions: i64,
    pub instance_actions_events: i64,
    pub instance_faults: i64,
    pub dead_letters: i64,
}

impl Pruned {
    pub fn add(&mut self, other: Pruned) {
        self.jobs += other.jobs;
        self.job_transitions += other.job_transitions;
        self.instance_actions += other.instance_actions;
        self.instance_actions_events += other.instance_actions_events;
        self.instance_faults += other.instance_faults;
        self.dead_letters += other.dead_letters;
    }

    pub fn total(&self) -> i64 {
        self.jobs
            + self.job_transitions
            + self.instance_actions
            + self.instance_actions_events
            + self.instance_faults
            + self.dead_letters
    }
}

/// The stops of one batch: which actions, from where the next batch goes on.
/// The rows themselves, as JSON (one object per stop), when archiving.
#[derive(Debug, Default)]
pub struct Batch {
    pub pruned: Pruned,
    /// The highest action id the batch looked at; the next batch starts after it.
    pub last_action: i64,
    /// One JSON object per stop (its action, events, job, transitions and
    /// faults), if asked for.
    pub archived: Vec<serde_json::Value>,
    /// False once nothing is left below the bound.
    pub more: bool,
}

/// The highest `instance_actions.id` whose action started before `cutoff`
/// (0 if none), by binary search on the primary key.
pub async fn upper_bound(pool: &PgPool, cutoff: DateTime<Utc>) -> Result<i64, sqlx::Error> {
    let (lo, hi): (Option<i64>, Option<i64>) =
        sqlx::query_as("SELECT min(id), max(id) FROM instance_actions")
            .fetch_one(pool)
            .await?;
    let (Some(mut lo), Some(mut hi)) = (lo, hi) else {
        return Ok(0);
    };
    let started = |id: i64| async move {
        sqlx::query_scalar::<_, DateTime<Utc>>(
            "SELECT start_time FROM instance_actions WHERE id >= $1 ORDER BY id LIMIT 1",
        )
        .bind(id)
        .fetch_optional(pool)
        .await
    };
    if started(lo).await?.is_none_or(|t| t >= cutoff) {
        return Ok(0);
    }
    // Invariant: the action at (or after) `lo` started before the cutoff.
    while lo < hi {
        let mid = lo + (hi - lo + 1) / 2;
        match started(mid).await? {
            Some(t) if t < cutoff => lo = mid,
            _ => hi = mid - 1,
        }
    }
    Ok(lo)
}

/// The stops that may go: action `a` and job `j`, joined by the job's
/// action (`jobs_action`, the index on `jobs.action_id`, which the
/// foreign-key check of the action's removal needs too), finished before the
/// cutoff `$3`, with a newer action on the same instance; action ids in
/// `($1, $2]`. The dry run's count (the batches pick the same stops from
/// one window at a time, [`PICK_SQL`]).
macro_rules! eligible {
    () => {
        "SELECT a.id AS action_id, j.id AS job_id, a.instance_uuid, a.request_id
           FROM instance_actions a
           JOIN jobs j ON j.action_id = a.id
          WHERE a.id > $1 AND a.id <= $2
            AND j.finished_at < $3
            AND EXISTS (SELECT 1 FROM instance_actions newer
                         WHERE newer.instance_uuid = a.instance_uuid AND newer.id > a.id)"
    };
}

/// A batch's window: the next `$3` action ids in `($1, $2]`, by primary key.
const WINDOW_SQL: &str = "
SELECT id FROM instance_actions WHERE id > $1 AND id <= $2 ORDER BY id LIMIT $3";

/// The eligible stops among a window's actions (`$1`), finished before `$2`.
/// Picking from the window's ids rather than from the whole range with a
/// LIMIT keeps a batch's cost at its own size: over the range, PostgreSQL
/// joined every eligible stop (a sequential scan of `jobs`) and sorted them
/// to keep 500, so each batch cost the whole history and, at 200,000
/// stops, a batch ran past the 10 s statement timeout beside the accept run.
const PICK_SQL: &str = "
SELECT a.id AS action_id, j.id AS job_id, a.instance_uuid, a.request_id
  FROM instance_actions a
  JOIN jobs j ON j.action_id = a.id
 WHERE a.id = ANY($1)
   AND j.finished_at < $2
   AND EXISTS (SELECT 1 FROM instance_actions newer
                WHERE newer.instance_uuid = a.instance_uuid AND newer.id > a.id)
 ORDER BY a.id
   FOR UPDATE OF a, j SKIP LOCKED";

const ARCHIVE_SQL: &str = "
SELECT jsonb_build_object(
         'action', to_jsonb(a),
         'events', coalesce((SELECT jsonb_agg(to_jsonb(e) ORDER BY e.id)
                               FROM instance_actions_events e WHERE e.action_id = a.id), '[]'),
         'job', to_jsonb(j),
         'transitions', coalesce((SELECT jsonb_agg(to_jsonb(t) ORDER BY t.id)
                                    FROM job_transitions t WHERE t.job_id = j.id), '[]'),
         'faults', coalesce((SELECT jsonb_agg(to_jsonb(f) ORDER BY f.id)
                               FROM instance_faults f
                              WHERE f.instance_uuid = a.instance_uuid
                                AND f.request_id = a.request_id), '[]'))
  FROM instance_actions a
  JOIN jobs j ON j.action_id = a.id
 WHERE a.id = ANY($1)
 ORDER BY a.id";

const DELETE_SQL: &str = "
WITH batch AS (
    SELECT * FROM unnest($1::bigint[], $2::uuid[], $3::uuid[], $4::text[])
        AS b(action_id, job_id, instance_uuid, request_id)
), t AS (
    DELETE FROM job_transitions WHERE job_id IN (SELECT job_id FROM batch) RETURNING 1
), j AS (
    DELETE FROM jobs WHERE id IN (SELECT job_id FROM batch) RETURNING 1
), e AS (
    DELETE FROM instance_actions_events WHERE action_id IN (SELECT action_id FROM batch) RETURNING 1
), f AS (
    DELETE FROM instance_faults f USING batch
     WHERE f.instance_uuid = batch.instance_uuid AND f.request_id = batch.request_id
    RETURNING 1
), a AS (
    DELETE FROM instance_actions WHERE id IN (SELECT action_id FROM batch) RETURNING 1
)
SELECT (SELECT count(*) FROM j), (SELECT count(*) FROM t), (SELECT count(*) FROM a),
       (SELECT count(*) FROM e), (SELECT count(*) FROM f)";

/// Removes the finished stops older than `cutoff` among the next `limit`
/// actions whose id is in `(after, upto]`, in one transaction. With `archive`, their rows are
/// handed to it as JSON (one object per stop) inside the transaction, after
/// they were read under its locks: an error from it rolls the batch back, so
/// nothing is removed that was not archived.
pub async fn prune_batch<A>(
    pool: &PgPool,
    cutoff: DateTime<Utc>,
    after: i64,
    upto: i64,
    limit: i64,
    archive: Option<&mut A>,
) -> anyhow::Result<Batch>
where
    A: FnMut(&[serde_json::Value]) -> std::io::Result<()>,
{
    let mut tx = pool.begin().await?;
    let window: Vec<i64> = sqlx::query_scalar(WINDOW_SQL)
        .bind(after)
        .bind(upto)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
    let Some(&last_action) = window.last() else {
        tx.commit().await?;
        return Ok(Batch {
            last_action: upto,
            ..Batch::default()
        });
    };
    // A full window may have more after it, even when none of it could go.
    let more = (window.len() as i64) == limit;
    let picked: Vec<(i64, uuid::Uuid, uuid::Uuid, String)> = sqlx::query_as(PICK_SQL)
        .bind(&window)
        .bind(cutoff)
        .fetch_all(&mut *tx)
        .await?;
    if picked.is_empty() {
        tx.commit().await?;
        return Ok(Batch {
            last_action,
            more,
            ..Batch::default()
        });
    }
    let actions: Vec<i64> = picked.iter().map(|p| p.0).collect();
    let archived: Vec<serde_json::Value> = if archive.is_some() {
        sqlx::query_scalar(ARCHIVE_SQL)
            .bind(&actions)
            .fetch_all(&mut *tx)
            .await?
    } else {
        Vec::new()
    };
    let (jobs, job_transitions, instance_actions, instance_actions_events, instance_faults): (
        i64,
        i64,
        i64,
        i64,
        i64,
    ) = sqlx::query_as(DELETE_SQL)
        .bind(&actions)
        .bind(picked.iter().map(|p| p.1).collect::<Vec<_>>())
        .bind(picked.iter().map(|p| p.2).collect::<Vec<_>>())
        .bind(picked.iter().map(|p| p.3.as_str()).collect::<Vec<_>>())
        .fetch_one(&mut *tx)
        .await?;
    if let Some(write) = archive {
        // Written (and flushed by the writer) before the commit: a crash in
        // between leaves the stops in the database and in the archive, and
        // the next run archives them again; never in neither.
        write(&archived)?;
    }
    tx.commit().await?;
    Ok(Batch {
        pruned: Pruned {
            jobs,
            job_transitions,
            instance_actions,
            instance_actions_events,
            instance_faults,
            dead_letters: 0,
        },
        last_action,
        archived,
        more,
    })
}

/// Removes dead letters recorded before `cutoff`, up to `limit` at a time;
/// returns how many.
pub async fn prune_dead_letters(
    pool: &PgPool,
    cutoff: DateTime<Utc>,
    limit: i64,
) -> Result<i64, sqlx::Error> {
    let r = sqlx::query(
        "DELETE FROM dead_letters WHERE id IN (
             SELECT id FROM dead_letters WHERE at < $1 ORDER BY id LIMIT $2
                FOR UPDATE SKIP LOCKED)",
    )
    .bind(cutoff)
    .bind(limit)
    .execute(pool)
    .await?;
    Ok(r.rows_affected() as i64)
}

/// What [`prune`] would remove, counted without removing anything (`--dry-run`).
pub async fn count(pool: &PgPool, cutoff: DateTime<Utc>) -> Result<Pruned, sqlx::Error> {
    let upto = upper_bound(pool, cutoff).await?;
    let (jobs, job_transitions, instance_actions_events, instance_faults, dead_letters): (
        i64,
        i64,
        i64,
        i64,
        i64,
    ) = sqlx::query_as(concat!(
        "WITH batch AS (",
        eligible!(),
        ")
         SELECT (SELECT count(*) FROM batch),
                (SELECT count(*) FROM job_transitions WHERE job_id IN (SELECT job_id FROM batch)),
                (SELECT count(*) FROM instance_actions_events
                  WHERE action_id IN (SELECT action_id FROM batch)),
                (SELECT count(*) FROM instance_faults f JOIN batch b
                     ON f.instance_uuid = b.instance_uuid AND f.request_id = b.request_id),
                (SELECT count(*) FROM dead_letters WHERE at < $3)"
    ))
    .bind(0_i64)
    .bind(upto)
    .bind(cutoff)
    .fetch_one(pool)
    .await?;
    Ok(Pruned {
        jobs,
        job_transitions,
        instance_actions: jobs,
        instance_actions_events,
        instance_faults,
        dead_letters,
    })
}

/// An archive writer: gets each batch's stops, one JSON object each.
pub type ArchiveFn = fn(&[serde_json::Value]) -> std::io::Result<()>;

/// For [`prune`] without an archive.
pub const NO_ARCHIVE: Option<ArchiveFn> = None;

/// Prunes everything older than `cutoff`, `batch` stops at a time, and calls
/// `progress` after each batch with the running totals. Stops after
/// `max_batches` batches if given (the rest is left for the next run).
pub async fn prune<A>(
    pool: &PgPool,
    cutoff: DateTime<Utc>,
    batch: i64,
    max_batches: Option<usize>,
    mut archive: Option<A>,
    mut progress: impl FnMut(&Pruned),
) -> anyhow::Result<Pruned>
where
    A: FnMut(&[serde_json::Value]) -> std::io::Result<()>,
{
    let batch = batch.max(1);
    let upto = upper_bound(pool, cutoff).await?;
    let mut total = Pruned::default();
    let mut after = 0;
    let mut batches = 0;
    loop {
        if max_batches.is_some_and(|m| batches >= m) {
            return Ok(total);
        }
        let b = prune_batch(pool, cutoff, after, upto, batch, archive.as_mut()).await?;
        batches += 1;
        total.add(b.pruned);
        after = b.last_action;
        progress(&total);
        if !b.more {
            break;
        }
    }
    loop {
        let n = prune_dead_letters(pool, cutoff, batch).await?;
        total.dead_letters += n;
        progress(&total);
        if n < batch {
            return Ok(total);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::acceptor::{Acceptor, StopRequest};
    use crate::batch::Ticket;
    use crate::ids::{ProjectId, RequestId, ServerId};
    use crate::message::StopJob;
    use crate::policy::Caller;
    use crate::store::admin::{self, NewServer};
    use crate::store::claim::{self, Claim, Success};
    use crate::store::dead_letters;

    struct World {
        pool: PgPool,
        acceptor: Acceptor,
        caller: Caller,
    }

    impl World {
        async fn new(pool: PgPool) -> Self {
            let project = ProjectId::random();
            admin::create_project(&pool, &project, "p").await.unwrap();
            World {
                acceptor: Acceptor::new(pool.clone()),
                caller: Caller {
                    project_id: project,
                    user_id: "u".into(),
                    roles: vec!["member".into()],
                    project_active: true,
                },
                pool,
            }
        }

        async fn server(&self) -> uuid::Uuid {
            let name = format!("vm-{}", uuid::Uuid::new_v4().simple());
            admin::create_server(&self.pool, &NewServer::new(&self.caller.project_id, &name))
                .await
                .unwrap()
        }

        /// A stop of `server`, claimed and recorded (failed with a fault if
        /// `!ok`), or left running if `finish` is false.
        async fn stop(&self, server: uuid::Uuid, finish: bool, ok: bool) -> StopJob {
            let stop = StopRequest {
                caller: &self.caller,
                server: ServerId(server),
                request_id: &RequestId::new(),
                max_attempts: 5,
            };
            let job = self.acceptor.accept(stop, &Ticket::new()).await.unwrap();
            let claimed = claim::claim_many(
                &self.pool,
                std::slice::from_ref(&job),
                "w",
                &job.host,
                Duration::from_secs(60),
            )
            .await
            .unwrap();
            let Some(Claim::Claimed(held)) = claimed.into_iter().next() else {
                panic!("not claimed");
            };
            if finish && ok {
                let done = Success {
                    job: held,
                    power_state: 4,
                    details: Some("clean".into()),
                };
                assert_eq!(
                    claim::succeed_many(&self.pool, &[done]).await.unwrap(),
                    [true]
                );
                // Active again, so the next stop of it is accepted.
                sqlx::query("UPDATE instances SET vm_state = 'active' WHERE uuid = $1")
                    .bind(server)
                    .execute(&self.pool)
                    .await
                    .unwrap();
            } else if finish {
                assert!(
                    claim::fail(&self.pool, &held, "boom", "it broke")
                        .await
                        .unwrap()
                );
            }
            job
        }

        /// Moves every row written so far `days` into the past.
        async fn age(&self, days: i32) {
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "UPDATE instance_actions SET start_time = start_time - interval '{days} days',
                        finish_time = finish_time - interval '{days} days';
                 UPDATE jobs SET created_at = created_at - interval '{days} days',
                        finished_at = finished_at - interval '{days} days';
                 UPDATE dead_letters SET at = at - interval '{days} days';"
            )))
            .execute(&self.pool)
            .await
            .unwrap();
        }

        async fn count(&self, sql: &str, job: uuid::Uuid) -> i64 {
            sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string()))
                .bind(job)
                .fetch_one(&self.pool)
                .await
                .unwrap()
        }

        async fn exists(&self, job: &StopJob) -> bool {
            self.count("SELECT count(*) FROM jobs WHERE id = $1", job.job_id)
                .await
                == 1
        }
    }

    fn cutoff() -> DateTime<Utc> {
        Utc::now() - chrono::Duration::days(30)
    }

    #[sqlx::test(migrator = "crate::store::MIGRATOR")]
    async fn old_finished_stops_go_and_unfinished_recent_and_last_actions_stay(pool: PgPool) {
        let w = World::new(pool).await;
        let (x, y, z) = (w.server().await, w.server().await, w.server().await);
        let x1 = w.stop(x, true, true).await;
        let x2 = w.stop(x, true, false).await; // failed: a fault, an Error event
        let x3 = w.stop(x, true, true).await; // x's last action
        let y1 = w.stop(y, true, true).await; // y's only, so its last
        let z1 = w.stop(z, true, true).await;
        let z2 = w.stop(z, false, false).await; // running: unfinished
        dead_letters::record_dead_letter(&w.pool, "q", "old", None, b"{}", "w")
            .await
            .unwrap();
        w.age(40).await;
        let fresh = w.stop(y, true, true).await; // new: y1 is no longer y's last
        dead_letters::record_dead_letter(&w.pool, "q", "new", None, b"{}", "w")
            .await
            .unwrap();

        let planned = count(&w.pool, cutoff()).await.unwrap();
        let mut archived = Vec::new();
        let mut archive = |rows: &[serde_json::Value]| {
            archived.extend_from_slice(rows);
            Ok(())
        };
        let pruned = prune(&w.pool, cutoff(), 2, None, Some(&mut archive), |_| {})
            .await
            .unwrap();

        // x1, x2 and y1 go (older, finished, not their instance's last), z1 too.
        assert_eq!(pruned, planned, "the dry run counts what the run removes");
        assert_eq!(pruned.jobs, 4);
        assert_eq!(pruned.instance_actions, 4);
        assert_eq!(pruned.instance_actions_events, 4);
        assert_eq!(pruned.instance_faults, 1);
        assert_eq!(pruned.job_transitions, 4 * 3, "queued, running, finished");
        assert_eq!(pruned.dead_letters, 1);
        for gone in [&x1, &x2, &y1, &z1] {
            assert!(!w.exists(gone).await, "{gone:?} was kept");
        }
        for kept in [&x3, &z2, &fresh] {
            assert!(w.exists(kept).await, "{kept:?} was removed");
            assert!(
                w.count(
                    "SELECT count(*) FROM job_transitions WHERE job_id = $1",
                    kept.job_id
                )
                .await
                    > 0
            );
        }
        let letters: i64 = sqlx::query_scalar("SELECT count(*) FROM dead_letters")
            .fetch_one(&w.pool)
            .await
            .unwrap();
        assert_eq!(letters, 1, "the new dead letter stays");
        // The archive holds each removed stop whole.
        assert_eq!(archived.len(), 4);
        let failed = archived
            .iter()
            .find(|a| a["job"]["id"] == x2.job_id.to_string())
            .expect("x2 archived");
        assert_eq!(failed["faults"][0]["message"], "boom");
        assert_eq!(failed["events"][0]["result"], "Error");
        assert_eq!(failed["transitions"].as_array().unwrap().len(), 3);
        assert_eq!(failed["action"]["request_id"], x2.request_id);
        // Nothing left to do.
        assert_eq!(count(&w.pool, cutoff()).await.unwrap(), Pruned::default());
    }

    #[sqlx::test(migrator = "crate::store::MIGRATOR")]
    async fn an_interrupted_prune_resumes_where_the_rows_left_off(pool: PgPool) {
        let w = World::new(pool).await;
        let x = w.server().await;
        for _ in 0..7 {
            w.stop(x, true, true).await;
        }
        w.age(40).await;
        w.stop(x, true, true).await;
        let first = prune(&w.pool, cutoff(), 2, Some(1), NO_ARCHIVE, |_| {})
            .await
            .unwrap();
        assert_eq!(first.jobs, 2, "one batch of two, then interrupted");
        let rest = prune(&w.pool, cutoff(), 2, None, NO_ARCHIVE, |_| {})
            .await
            .unwrap();
        assert_eq!(rest.jobs, 5);
        let jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
            .fetch_one(&w.pool)
            .await
            .unwrap();
        assert_eq!(jobs, 1, "only the recent stop is left");
    }

    #[sqlx::test(migrator = "crate::store::MIGRATOR")]
    async fn a_batch_with_nothing_to_remove_does_not_end_the_prune(pool: PgPool) {
        let w = World::new(pool).await;
        // The first window (batch 2) holds only last actions, which stay.
        let (a, b, x) = (w.server().await, w.server().await, w.server().await);
        let kept = [w.stop(a, true, true).await, w.stop(b, true, true).await];
        for _ in 0..3 {
            w.stop(x, true, true).await;
        }
        w.age(40).await;
        w.stop(x, true, true).await;
        let pruned = prune(&w.pool, cutoff(), 2, None, NO_ARCHIVE, |_| {})
            .await
            .unwrap();
        assert_eq!(pruned.jobs, 3, "x's three old stops, past the empty window");
        for job in &kept {
            assert!(w.exists(job).await, "a last action was removed");
        }
    }

    #[sqlx::test(migrator = "crate::store::MIGRATOR")]
    async fn a_prune_racing_new_stops_loses_none_of_them(pool: PgPool) {
        let w = std::sync::Arc::new(World::new(pool).await);
        let mut servers = Vec::new();
        for _ in 0..10 {
            let s = w.server().await;
            for _ in 0..20 {
                w.stop(s, true, true).await;
            }
            servers.push(s);
        }
        w.age(40).await;
        let racing = {
            let w = w.clone();
            let servers = servers.clone();
            tokio::spawn(async move {
                let mut jobs = Vec::new();
                for _ in 0..3 {
                    for &s in &servers {
                        jobs.push(w.stop(s, true, true).await);
                    }
                }
                jobs
            })
        };
        let pruned = prune(&w.pool, cutoff(), 5, None, NO_ARCHIVE, |_| {})
            .await
            .unwrap();
        let new_jobs = racing.await.unwrap();
        // A server's newest old stop stays while its batch runs before the
        // racer's first new stop of that server (the last action of an
        // instance is never removed): at most one per server, and the next
        // prune, with every server's new stops in, takes it.
        assert!(pruned.jobs >= 10 * 19, "{pruned:?}");
        let again = prune(&w.pool, cutoff(), 5, None, NO_ARCHIVE, |_| {})
            .await
            .unwrap();
        // Every old stop went, every new one stays.
        assert_eq!(pruned.jobs + again.jobs, 10 * 20);
        for job in &new_jobs {
            assert!(w.exists(job).await, "a new stop was removed");
            let (state, actions): (String, i64) = sqlx::query_as(
                "SELECT j.state, (SELECT count(*) FROM instance_actions a WHERE a.id = j.action_id)
                   FROM jobs j WHERE j.id = $1",
            )
            .bind(job.job_id)
            .fetch_one(&w.pool)
            .await
            .unwrap();
            assert_eq!((state.as_str(), actions), ("succeeded", 1));
        }
    }
}
