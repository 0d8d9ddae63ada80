//! Claim and finish: the worker's moves of a job. Every move is a conditional
//! UPDATE on the job's current state (and, for a running job, on the lease
//! holder and attempt number, our fencing token), so duplicate deliveries and
//! racing workers reach exactly one decision, made here in PostgreSQL.

use std::collections::HashMap;
use std::time::Duration;

use sqlx::{AssertSqlSafe, PgPool};
use uuid::Uuid;

use crate::batch::{self, Batcher};
use crate::ids::HostName;
use crate::message::StopJob;
use crate::state::{JobState, TaskState, VmState};
use crate::store::StoreError;

/// A job this worker holds a lease on.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, serde::Deserialize)]
pub struct ClaimedJob {
    pub id: Uuid,
    pub instance_uuid: Uuid,
    pub request_id: String,
    pub action_id: i64,
    /// This attempt's number (1-based); with `worker` it fences our writes.
    pub attempts: i32,
    pub max_attempts: i32,
    pub hypervisor: String,
    pub host: String,
    pub worker: String,
}

impl ClaimedJob {
    pub fn message(&self) -> StopJob {
        StopJob {
            job_id: self.id,
            instance_uuid: self.instance_uuid,
            host: HostName::from_stored(self.host.clone()),
            request_id: self.request_id.clone(),
        }
    }

    pub fn attempts_left(&self) -> bool {
        self.attempts < self.max_attempts
    }
}

/// What a worker learns when it tries to take a job.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub enum Claim {
    /// Ours: do the work.
    Claimed(ClaimedJob),
    /// Already succeeded or failed: ack the message, do nothing.
    Finished(JobState),
    /// Another worker holds a live lease: it (or the rescuer, if it dies)
    /// finishes the job.
    HeldElsewhere { worker: Option<String> },
    /// Every attempt is used up but the job never ended: fail it.
    Exhausted { attempts: i32 },
    /// The job's instance is on another host: this worker must not touch
    /// it (its driver address means something else here, or nothing). The
    /// message belongs on `host`'s queue.
    OtherHost { host: HostName },
    /// No such job: a poison message.
    Unknown,
}

const CLAIM_SQL: &str = "
WITH input AS (
    SELECT DISTINCT ON (id) id, instance_uuid, worker, host, lease
      FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::float8[])
        AS t(id, instance_uuid, worker, host, lease)
     ORDER BY id
), j AS (
    UPDATE jobs
       SET state = 'running', attempts = jobs.attempts + 1, worker = input.worker,
           host = input.host, lease_expires_at = now() + make_interval(secs => input.lease),
           started_at = coalesce(started_at, now()), updated_at = now()
      FROM input JOIN instances i ON i.uuid = input.instance_uuid
     WHERE jobs.id = input.id AND jobs.instance_uuid = input.instance_uuid
       AND i.host = input.host
       AND jobs.attempts < jobs.max_attempts
       AND (jobs.state IN ('queued', 'published', 'retrying')
            OR (jobs.state = 'running' AND jobs.lease_expires_at < now()))
    RETURNING jobs.id, jobs.instance_uuid, jobs.request_id, jobs.action_id,
              jobs.attempts, jobs.max_attempts, i.hypervisor, i.host, jobs.worker
), ev AS (
    INSERT INTO instance_actions_events (action_id, event, host)
    SELECT action_id, 'compute_stop_instance', worker FROM j
    ON CONFLICT (action_id, event) DO NOTHING
)
SELECT id, instance_uuid, request_id, action_id, attempts, max_attempts, hypervisor, host, worker
  FROM j";

/// One worker's request to take the job a message names.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ClaimRequest {
    pub message: StopJob,
    /// The worker asking: it holds the lease if the claim is taken.
    pub worker: String,
    /// The host that worker serves.
    pub host: HostName,
    /// How long the lease lasts unless renewed, in seconds.
    pub lease_secs: f64,
}

/// Tries to take the jobs the messages name for `worker`, which serves
/// `host`, with a lease of `lease`, in one statement (a group commit): one
/// answer per message, in order. See [`claim_requests`].
pub async fn claim_many(
    pool: &PgPool,
    messages: &[StopJob],
    worker: &str,
    host: &HostName,
    lease: Duration,
) -> Result<Vec<Claim>, sqlx::Error> {
    let requests: Vec<ClaimRequest> = messages
        .iter()
        .map(|m| ClaimRequest {
            message: m.clone(),
            worker: worker.to_string(),
            host: host.clone(),
            lease_secs: lease.as_secs_f64(),
        })
        .collect();
    claim_requests(pool, &requests).await
}

/// Tries to take the jobs of several workers' requests (of any hosts: the
/// conductor gathers a fleet's claims into one statement), one answer per
/// request, in order. Only jobs whose instance is on the requesting
/// worker's host are taken: the instance's row decides, not the message. A
/// message whose instance is not its job's is treated as unknown. A job
/// named twice is claimed once; the other copy finds it held.
pub async fn claim_requests(
    pool: &PgPool,
    requests: &[ClaimRequest],
) -> Result<Vec<Claim>, sqlx::Error> {
    let ids: Vec<Uuid> = requests.iter().map(|r| r.message.job_id).collect();
    let instances: Vec<Uuid> = requests.iter().map(|r| r.message.instance_uuid).collect();
    let workers: Vec<&str> = requests.iter().map(|r| r.worker.as_str()).collect();
    let hosts: Vec<&str> = requests.iter().map(|r| r.host.as_str()).collect();
    let leases: Vec<f64> = requests.iter().map(|r| r.lease_secs).collect();
    let claimed: Vec<ClaimedJob> = sqlx::query_as(CLAIM_SQL)
        .bind(&ids)
        .bind(&instances)
        .bind(&workers)
        .bind(&hosts)
        .bind(&leases)
        .fetch_all(pool)
        .await?;
    let mut claimed: HashMap<Uuid, ClaimedJob> =
        claimed.into_iter().map(|job| (job.id, job)).collect();
    // Each taken job answers the first request of the worker that took it.
    let mut answers: Vec<Option<Claim>> = requests
        .iter()
        .map(|r| match claimed.get(&r.message.job_id) {
            Some(job) if job.worker == r.worker => {
                claimed.remove(&r.message.job_id).map(Claim::Claimed)
            }
            _ => None,
        })
        .collect();
    if answers.iter().all(Option::is_some) {
        return Ok(answers.into_iter().flatten().collect());
    }
    // Why the others were not taken, read after our claims committed.
    let rows: Vec<JobRow> = sqlx::query_as(
        "SELECT j.id, j.instance_uuid, j.state, j.attempts, j.max_attempts, j.worker,
                coalesce(j.lease_expires_at > now(), false) AS lease_live, i.host
           FROM jobs j JOIN instances i ON i.uuid = j.instance_uuid
          WHERE j.id = ANY($1)",
    )
    .bind(&ids)
    .fetch_all(pool)
    .await?;
    let rows: HashMap<Uuid, JobRow> = rows.into_iter().map(|r| (r.id, r)).collect();
    for (answer, r) in answers.iter_mut().zip(requests) {
        if answer.is_none() {
            *answer = Some(match rows.get(&r.message.job_id) {
                Some(row) if row.instance_uuid == r.message.instance_uuid => {
                    row.not_claimed(&r.host)
                }
                _ => Claim::Unknown,
            });
        }
    }
    Ok(answers.into_iter().flatten().collect())
}

/// The group-committed claim, for whoever holds the pool: a worker (its own
/// host's claims) or the conductor (a fleet's). A batch that is not full
/// waits up to `linger` for more.
pub fn claim_batcher(
    pool: PgPool,
    max_batch: usize,
    in_flight: usize,
    linger: Duration,
) -> Batcher<ClaimRequest, Claim> {
    Batcher::spawn_lingering(
        max_batch,
        in_flight,
        linger,
        move |items: Vec<ClaimRequest>| {
            let pool = pool.clone();
            async move { batch::all_or_each(&items, |items| claim_requests(&pool, items)).await }
        },
    )
}

/// The group-committed lease renewal (each job with its lease in seconds).
/// A lost renewal is retried at the next beat, well within the lease, so a
/// failed batch just answers "failed" to each job.
pub fn lease_batcher(
    pool: PgPool,
    max_batch: usize,
    in_flight: usize,
) -> Batcher<(ClaimedJob, f64), bool> {
    Batcher::spawn(
        max_batch,
        in_flight,
        move |items: Vec<(ClaimedJob, f64)>| {
            let pool = pool.clone();
            async move {
                match heartbeat_many(&pool, &items).await {
                    Ok(renewed) => renewed.into_iter().map(Ok).collect(),
                    Err(e) => batch::for_all(items.len(), &StoreError::from(e)),
                }
            }
        },
    )
}

/// The group-committed success; see [`claim_batcher`].
pub fn success_batcher(
    pool: PgPool,
    max_batch: usize,
    in_flight: usize,
    linger: Duration,
) -> Batcher<Success, bool> {
    Batcher::spawn_lingering(max_batch, in_flight, linger, move |items: Vec<Success>| {
        let pool = pool.clone();
        async move { batch::all_or_each(&items, |items| succeed_many(&pool, items)).await }
    })
}

/// A job's row, as far as deciding why it was not claimed goes.
#[derive(sqlx::FromRow)]
struct JobRow {
    id: Uuid,
    instance_uuid: Uuid,
    state: String,
    attempts: i32,
    max_attempts: i32,
    worker: Option<String>,
    lease_live: bool,
    /// The instance's host.
    host: String,
}

impl JobRow {
    fn not_claimed(&self, ours: &HostName) -> Claim {
        let state = JobState::parse(&self.state).unwrap_or(JobState::Failed);
        let worker = self.worker.clone();
        if state.is_terminal() {
            Claim::Finished(state)
        } else if self.host != ours.as_str() {
            Claim::OtherHost {
                host: HostName::from_stored(self.host.clone()),
            }
        } else if state == JobState::Running && self.lease_live {
            Claim::HeldElsewhere { worker }
        } else if self.attempts >= self.max_attempts {
            Claim::Exhausted {
                attempts: self.attempts,
            }
        } else {
            // Lost a race with a claim that has since moved on; the holder
            // will finish it.
            Claim::HeldElsewhere { worker }
        }
    }
}

const HEARTBEAT_SQL: &str = "
UPDATE jobs SET lease_expires_at = now() + make_interval(secs => t.lease)
  FROM unnest($1::uuid[], $2::text[], $3::int4[], $4::float8[]) AS t(id, worker, attempts, lease)
 WHERE jobs.id = t.id AND jobs.state = 'running'
   AND jobs.worker = t.worker AND jobs.attempts = t.attempts
RETURNING jobs.id";

/// Extends leases while slow power-offs run, each job's by its own
/// duration in seconds, in one statement: one answer per job, false where
/// the lease was lost.
pub async fn heartbeat_many(
    pool: &PgPool,
    held: &[(ClaimedJob, f64)],
) -> Result<Vec<bool>, sqlx::Error> {
    let ids: Vec<Uuid> = held.iter().map(|(j, _)| j.id).collect();
    let workers: Vec<&str> = held.iter().map(|(j, _)| j.worker.as_str()).collect();
    let attempts: Vec<i32> = held.iter().map(|(j, _)| j.attempts).collect();
    let leases: Vec<f64> = held.iter().map(|(_, l)| *l).collect();
    let renewed: Vec<Uuid> = sqlx::query_scalar(HEARTBEAT_SQL)
        .bind(&ids)
        .bind(&workers)
        .bind(&attempts)
        .bind(&leases)
        .fetch_all(pool)
        .await?;
    Ok(super::returned(&ids, renewed))
}

const SUCCEED_SQL: &str = "
WITH input AS (
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::int4[], $4::int2[], $5::text[])
        AS t(id, worker, attempts, power_state, details)
), j AS (
    UPDATE jobs
       SET state = 'succeeded', finished_at = now(), updated_at = now(),
           lease_expires_at = NULL, last_error = NULL
      FROM input
     WHERE jobs.id = input.id AND jobs.state = 'running'
       AND jobs.worker = input.worker AND jobs.attempts = input.attempts
    RETURNING jobs.id, jobs.instance_uuid, jobs.action_id, input.power_state, input.details
), i AS (
    UPDATE instances
       SET vm_state = $6, power_state = j.power_state, task_state = NULL,
           updated_at = now()
      FROM j
     WHERE instances.uuid = j.instance_uuid AND instances.task_state = $7
    RETURNING instances.uuid
), e AS (
    UPDATE instance_actions_events
       SET finish_time = now(), result = 'Success',
           details = coalesce(j.details, instance_actions_events.details)
      FROM j
     WHERE instance_actions_events.action_id = j.action_id
       AND instance_actions_events.event = 'compute_stop_instance'
    RETURNING instance_actions_events.id
), a AS (
    UPDATE instance_actions SET finish_time = now()
      FROM j
     WHERE instance_actions.id = j.action_id
    RETURNING instance_actions.id
)
SELECT id FROM j";

/// A power-off that worked, to be recorded.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Success {
    pub job: ClaimedJob,
    pub power_state: i16,
    /// What the driver says about how it went (for the action event).
    pub details: Option<String>,
}

/// Records successful power-offs: instance stopped, event Success with the
/// driver's details, job succeeded, in one statement (a group commit). One
/// answer per job, in order: false if our lease was taken over meanwhile
/// (then the new holder decides, and we must not).
pub async fn succeed_many(pool: &PgPool, done: &[Success]) -> Result<Vec<bool>, sqlx::Error> {
    let ids: Vec<Uuid> = done.iter().map(|s| s.job.id).collect();
    let workers: Vec<&str> = done.iter().map(|s| s.job.worker.as_str()).collect();
    let attempts: Vec<i32> = done.iter().map(|s| s.job.attempts).collect();
    let power: Vec<i16> = done.iter().map(|s| s.power_state).collect();
    let details: Vec<Option<&str>> = done.iter().map(|s| s.details.as_deref()).collect();
    let recorded: Vec<Uuid> = sqlx::query_scalar(SUCCEED_SQL)
        .bind(&ids)
        .bind(&workers)
        .bind(&attempts)
        .bind(&power)
        .bind(&details)
        .bind(VmState::Stopped)
        .bind(TaskState::PoweringOff)
        .fetch_all(pool)
        .await?;
    Ok(super::returned(&ids, recorded))
}

/// The failure statement, for a condition on the job row. $1 job, $2 message,
/// $3 details, $4 event host, $5 [`TaskState::PoweringOff`]; the condition
/// may use $6 and $7.
pub(super) fn fail_sql(condition: &'static str) -> AssertSqlSafe<String> {
    // Built only from constants: the condition is always a literal.
    AssertSqlSafe(format!(
        "
WITH j AS (
    UPDATE jobs
       SET state = 'failed', finished_at = now(), updated_at = now(),
           lease_expires_at = NULL, last_error = $2
     WHERE id = $1 AND {condition}
    RETURNING instance_uuid, action_id, request_id
), i AS (
    UPDATE instances SET task_state = NULL, updated_at = now()
     WHERE uuid IN (SELECT instance_uuid FROM j) AND task_state = $5
    RETURNING uuid
), e AS (
    INSERT INTO instance_actions_events (action_id, event, host, finish_time, result, details)
    SELECT action_id, 'compute_stop_instance', $4, now(), 'Error', $3 FROM j
    ON CONFLICT (action_id, event)
    DO UPDATE SET finish_time = now(), result = 'Error', details = EXCLUDED.details
    RETURNING id
), a AS (
    -- As Nova does: a failed event marks its action's message 'Error'.
    UPDATE instance_actions SET finish_time = now(), message = 'Error'
     WHERE id IN (SELECT action_id FROM j)
    RETURNING id
), f AS (
    INSERT INTO instance_faults (instance_uuid, request_id, code, message, details, host)
    SELECT j.instance_uuid, j.request_id, 500, $2, $3, inst.host
      FROM j JOIN instances inst ON inst.uuid = j.instance_uuid
    RETURNING id
)
SELECT count(*) FROM j"
    ))
}

/// The condition of [`fail`]: the job is running under our lease.
pub(super) const FAIL_HELD: &str = "state = 'running' AND worker = $6 AND attempts = $7";

/// Records a failed stop we hold the lease for: job failed, event Error,
/// an instance fault, task_state back to NULL (vm_state unchanged, as Nova).
pub async fn fail(
    pool: &PgPool,
    job: &ClaimedJob,
    message: &str,
    details: &str,
) -> Result<bool, sqlx::Error> {
    let n: i64 = sqlx::query_scalar(fail_sql(FAIL_HELD))
        .bind(job.id)
        .bind(message)
        .bind(details)
        .bind(&job.worker)
        .bind(TaskState::PoweringOff)
        .bind(&job.worker)
        .bind(job.attempts)
        .fetch_one(pool)
        .await?;
    Ok(n == 1)
}

/// Fails a job nobody holds whose attempts are all used (a message that kept
/// killing its worker, or a job the rescuer found stale on its last attempt).
pub async fn fail_exhausted(
    pool: &PgPool,
    id: Uuid,
    message: &str,
    host: &str,
) -> Result<bool, sqlx::Error> {
    let n: i64 = sqlx::query_scalar(fail_sql(
        "state NOT IN ('succeeded', 'failed') AND attempts >= max_attempts
         AND (state <> 'running' OR lease_expires_at < now())",
    ))
    .bind(id)
    .bind(message)
    .bind(message)
    .bind(host)
    .bind(TaskState::PoweringOff)
    .fetch_one(pool)
    .await?;
    Ok(n == 1)
}

const RETRY_SQL: &str = "
UPDATE jobs SET state = 'retrying', last_error = $4, lease_expires_at = NULL, updated_at = now()
 WHERE id = $1 AND state = 'running' AND worker = $2 AND attempts = $3";

/// Moves a job we hold to `retrying` before its message goes to a delay
/// queue. False if our lease was taken over.
pub async fn schedule_retry(
    pool: &PgPool,
    job: &ClaimedJob,
    error: &str,
) -> Result<bool, sqlx::Error> {
    let r = sqlx::query(RETRY_SQL)
        .bind(job.id)
        .bind(&job.worker)
        .bind(job.attempts)
        .bind(error)
        .execute(pool)
        .await?;
    Ok(r.rows_affected() == 1)
}

const RELEASE_SQL: &str = "
UPDATE jobs SET state = 'published', attempts = attempts - 1, lease_expires_at = NULL,
       worker = NULL, updated_at = now()
 WHERE id = $1 AND state = 'running' AND worker = $2 AND attempts = $3";

/// Gives a job we hold back without using up an attempt (graceful shutdown
/// before the power-off started).
pub async fn release(pool: &PgPool, job: &ClaimedJob) -> Result<bool, sqlx::Error> {
    let r = sqlx::query(RELEASE_SQL)
        .bind(job.id)
        .bind(&job.worker)
        .bind(job.attempts)
        .execute(pool)
        .await?;
    Ok(r.rows_affected() == 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::plans::generic_plan;
    use sqlx::Acquire;

    /// Statistics taken while every job was finished (a quiet moment, or a
    /// fresh deployment's history), then a backlog the planner has not seen:
    /// the situation after a worker outage. The statements that run once
    /// per job must still find their jobs by primary key; read from a
    /// partial index that the statistics call empty, each batch walked the
    /// whole backlog.
    #[sqlx::test(migrator = "crate::store::MIGRATOR")]
    async fn hot_statements_find_their_jobs_by_key_whatever_the_statistics(pool: PgPool) {
        sqlx::raw_sql(
            "INSERT INTO projects (id, name) VALUES ('0123456789abcdef0123456789abcdef', 'p');
             CREATE FUNCTION pg_temp.stops(n int, finished boolean) RETURNS void
             LANGUAGE sql AS $$
                 WITH inst AS (
                     INSERT INTO instances (uuid, project_id, user_id, name, launched_at, task_state)
                     SELECT gen_random_uuid(), '0123456789abcdef0123456789abcdef', 'u', 'vm', now(),
                            CASE WHEN finished THEN NULL ELSE 'powering-off' END
                       FROM generate_series(1, n)
                     RETURNING uuid
                 ), act AS (
                     INSERT INTO instance_actions (action, instance_uuid, request_id, user_id, project_id)
                     SELECT 'stop', uuid, 'req-' || uuid, 'u', '0123456789abcdef0123456789abcdef' FROM inst
                     RETURNING id, instance_uuid, request_id
                 )
                 INSERT INTO jobs (id, instance_uuid, request_id, action_id, max_attempts, state,
                                   attempts, started_at, finished_at)
                 SELECT gen_random_uuid(), instance_uuid, request_id, id, 5,
                        CASE WHEN finished THEN 'succeeded' ELSE 'queued' END,
                        CASE WHEN finished THEN 1 ELSE 0 END,
                        CASE WHEN finished THEN now() END, CASE WHEN finished THEN now() END
                   FROM act
             $$;
             SELECT pg_temp.stops(2000, true);
             ANALYZE;
             SELECT pg_temp.stops(20000, false);",
        )
        .execute(&pool)
        .await
        .unwrap();

        let mut conn = pool.acquire().await.unwrap();
        let conn = conn.acquire().await.unwrap();
        let statements = [
            ("claim", CLAIM_SQL.to_string()),
            ("succeed", SUCCEED_SQL.to_string()),
            ("heartbeat", HEARTBEAT_SQL.to_string()),
            ("retry", RETRY_SQL.to_string()),
            ("release", RELEASE_SQL.to_string()),
            (
                "mark_published",
                super::super::publish::MARK_PUBLISHED_SQL.to_string(),
            ),
            ("fail", fail_sql(FAIL_HELD).0),
        ];
        for (name, sql) in statements {
            let plan = generic_plan(conn, name, &sql).await;
            assert!(
                !plan.contains("jobs_unfinished") && !plan.contains("jobs_queued"),
                "{name} reads a partial index of jobs:\n{plan}"
            );
            assert!(
                !plan.contains("Seq Scan on jobs"),
                "{name} scans jobs:\n{plan}"
            );
            // By job id (jobs has no index by instance: see
            // 20261202160000_history_indexes_by_time.sql).
            assert!(
                plan.contains("using jobs_pkey"),
                "{name} does not look its jobs up by key:\n{plan}"
            );
        }
    }
}
