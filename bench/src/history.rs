//! History at scale: the seeded past every phase's database starts with,
//! and the measurements that tell whether a long past slows the present:
//! the relay's and the rescuer's passes (timed, and their plans), and a
//! real `shutoff-admin prune` beside the accept run.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use shutoff_core::ids::ProjectId;
use shutoff_core::store::{admin, publish, rescue};
use sqlx::PgPool;
use tokio::process::Command;

/// Stops per instance in the seeded history: prune never removes an
/// instance's newest action, so with one stop each it would have nothing to
/// do, where a real cloud stops the same servers again and again.
pub const STOPS_PER_INSTANCE: i64 = 4;

/// How far back the seeded history reaches; the newest stop is an hour old.
const SPAN_SECS: f64 = 365.0 * 86_400.0;

/// Fills the history tables with `n` finished stops of their own project,
/// with every row a real stop leaves: the instance action and its event, the
/// job and its three transitions (queued, running, then succeeded or
/// failed), and for one stop in fifty a failure with its instance fault.
///
/// The stops go to `n / STOPS_PER_INSTANCE` instances in turn (stop `g` to
/// instance `g mod m`), so every instance's newest stop is in the last
/// quarter of the span, and their times spread evenly over the past year,
/// increasing with the action id, as a deployment's do (prune finds its
/// cutoff by a binary search on that id). The final transition, written by
/// the jobs' insert trigger, carries the seeding time; every other timestamp
/// is the stop's own.
///
/// Then vacuums and analyzes the database (see `phase_database`). Returns
/// how long it took. Seeded in chunks, so a large history is many moderate
/// statements.
pub async fn seed(pool: &PgPool, n: i64) -> anyhow::Result<Duration> {
    const CHUNK: i64 = 100_000;
    let started = Instant::now();
    let history = ProjectId::random();
    admin::create_project(pool, &history, "history").await?;
    let now: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT now()").fetch_one(pool).await?;
    let instances = ((n + STOPS_PER_INSTANCE - 1) / STOPS_PER_INSTANCE).max(1);
    // Instance uuids are derived from their number (md5 of the project and
    // the number: as scattered as random ones), so a stop finds its instance
    // without a lookup.
    let mut done = 0;
    while done < instances {
        let m = CHUNK.min(instances - done);
        sqlx::query(
            "INSERT INTO instances (uuid, project_id, user_id, name, launched_at, vm_state,
                                    power_state, created_at, updated_at)
             SELECT md5($1 || g)::uuid, $1, 'bench', 'history-' || g,
                    $4 - interval '400 days', 'stopped', 4,
                    $4 - interval '400 days', $4 - interval '1 hour'
               FROM generate_series($2 + 1, $2 + $3) g",
        )
        .bind(history.as_str())
        .bind(done)
        .bind(m)
        .bind(now)
        .execute(pool)
        .await?;
        done += m;
    }
    let mut done = 0;
    while done < n {
        let m = CHUNK.min(n - done);
        sqlx::query(
            "WITH s AS (
                 SELECT g, md5($1 || ((g - 1) % $5 + 1))::uuid AS inst,
                        'req-' || gen_random_uuid() AS req, g % 50 = 0 AS failed,
                        $6 - make_interval(secs => 3600 + ($4 - g) * $7 / $4) AS t
                   FROM generate_series($2 + 1, $2 + $3) g
             ), act AS (
                 INSERT INTO instance_actions (action, instance_uuid, request_id, user_id,
                                               project_id, start_time, finish_time, message)
                 SELECT 'stop', inst, req, 'bench', $1, t, t + interval '1 second',
                        CASE WHEN failed THEN 'Error' END
                   FROM s ORDER BY g
                 RETURNING id, instance_uuid, request_id, start_time AS t,
                           message IS NOT NULL AS failed
             ), ev AS (
                 INSERT INTO instance_actions_events (action_id, event, start_time, finish_time,
                                                      result, details, host)
                 SELECT id, 'compute_stop_instance', t + interval '50 ms', t + interval '1 second',
                        CASE WHEN failed THEN 'Error' ELSE 'Success' END,
                        CASE WHEN failed THEN 'the VM did not answer' ELSE 'clean shutdown' END,
                        'sim-1'
                   FROM act
             ), f AS (
                 INSERT INTO instance_faults (instance_uuid, request_id, code, message, host,
                                              created_at)
                 SELECT instance_uuid, request_id, 500, 'the VM did not answer', 'sim-1',
                        t + interval '1 second'
                   FROM act WHERE failed
             ), j AS (
                 INSERT INTO jobs (id, instance_uuid, request_id, action_id, max_attempts, state,
                                   attempts, created_at, published_at, started_at, finished_at,
                                   updated_at, worker)
                 SELECT gen_random_uuid(), instance_uuid, request_id, id, 5,
                        CASE WHEN failed THEN 'failed' ELSE 'succeeded' END, 1,
                        t, t + interval '5 ms', t + interval '50 ms', t + interval '1 second',
                        t + interval '1 second', 'bench-history'
                   FROM act
                 RETURNING id, created_at AS t
             )
             -- The insert trigger records the final state; the two before it:
             INSERT INTO job_transitions (job_id, from_state, to_state, attempt, worker, at)
             SELECT id, s.f, s.t, s.a, 'bench-history', j.t + s.after
               FROM j, (VALUES (NULL, 'queued', 0, interval '0'),
                               ('queued', 'running', 1, interval '50 ms')) AS s(f, t, a, after)",
        )
        .bind(history.as_str())
        .bind(done)
        .bind(m)
        .bind(n)
        .bind(instances)
        .bind(now)
        .bind(SPAN_SECS)
        .execute(pool)
        .await?;
        done += m;
        if n > CHUNK {
            eprint!(
                "\rshutoff-bench: seeding history {done}/{n} ({:.0} s)",
                started.elapsed().as_secs_f64()
            );
        }
    }
    if n > CHUNK {
        eprintln!();
    }
    sqlx::raw_sql("VACUUM ANALYZE").execute(pool).await?;
    Ok(started.elapsed())
}

/// The relay's and the rescuer's passes, timed: p50 and max in ms, and
/// the first pass of each, right after the phase before (its stops' index
/// entries still unvisited).
#[derive(Debug, Default, Clone, Copy)]
pub struct Passes {
    pub runs: usize,
    pub relay_ms: [f64; 2],
    pub rescuer_ms: [f64; 2],
    pub first_relay_rescuer_ms: [f64; 2],
    /// Passes over 20 ms by the client's clock: relay, rescuer.
    pub over_20ms: [usize; 2],
    /// The same passes timed by PostgreSQL: relay, rescuer; p50 and max.
    pub in_server_ms: [[f64; 2]; 2],
}

// The relay's and the rescuer's settings with the services' defaults
// (`relay.rs`: MIN_AGE and BATCH; config: rescue_after, host_down_after).
const MIN_AGE: Duration = Duration::from_secs(2);
const RESCUE_AFTER: Duration = Duration::from_secs(120);
const HOST_DOWN_AFTER: Duration =
    Duration::from_secs(shutoff_core::config::DEFAULT_HOST_DOWN_AFTER_SECS);
const BATCH: i64 = 500;

/// Times `runs` passes of each: the relay's (its query for unpublished jobs
/// and its backlog count, as `Relay::run` makes them) and the rescuer's
/// (`rescue::rescue`, its transaction with the stale-job query), through
/// the same store calls the services make.
pub async fn time_passes(pool: &PgPool, runs: usize) -> anyhow::Result<Passes> {
    let (mut relay, mut rescuer) = (Vec::with_capacity(runs), Vec::with_capacity(runs));
    for _ in 0..runs {
        let t = Instant::now();
        publish::unpublished(pool, MIN_AGE, RESCUE_AFTER, HOST_DOWN_AFTER, BATCH).await?;
        publish::count_queued(pool, RESCUE_AFTER).await?;
        relay.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        let rescued = rescue::rescue(pool, RESCUE_AFTER, HOST_DOWN_AFTER, "bench", BATCH).await?;
        rescuer.push(t.elapsed().as_secs_f64() * 1e3);
        if !rescued.is_empty() {
            bail!(
                "the rescuer found {} stalled jobs in the history",
                rescued.len()
            );
        }
    }
    let in_server_ms = time_passes_in_server(pool, runs).await?;
    Ok(Passes {
        runs,
        in_server_ms,
        first_relay_rescuer_ms: [
            relay.first().copied().unwrap_or(f64::NAN),
            rescuer.first().copied().unwrap_or(f64::NAN),
        ],
        over_20ms: [
            relay.iter().filter(|ms| **ms > 20.0).count(),
            rescuer.iter().filter(|ms| **ms > 20.0).count(),
        ],
        relay_ms: p50_max(relay),
        rescuer_ms: p50_max(rescuer),
    })
}

fn p50_max(mut v: Vec<f64>) -> [f64; 2] {
    v.sort_by(f64::total_cmp);
    [
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN),
        v.last().copied().unwrap_or(f64::NAN),
    ]
}

/// The passes' three statements, by name, with the services' default
/// parameters written out: the relay's two, then the rescuer's.
fn pass_statements() -> [(&'static str, &'static str, String); 3] {
    let min_age = MIN_AGE.as_secs_f64();
    let window = RESCUE_AFTER.as_secs_f64();
    let down = HOST_DOWN_AFTER.as_secs_f64();
    [
        (
            "relay: unpublished",
            publish::UNPUBLISHED_SQL,
            format!("{min_age}, {window}, {BATCH}, {down}"),
        ),
        (
            "relay: backlog count",
            publish::COUNT_QUEUED_SQL,
            format!("{window}"),
        ),
        (
            "rescuer: stale jobs",
            rescue::STALE_SQL,
            format!("{window}, {BATCH}, {down}"),
        ),
    ]
}

/// The passes' statements timed by PostgreSQL itself (`EXPLAIN ANALYZE`'s
/// execution time, as `pg_stat_statements` would count it): p50 and max
/// in ms of `runs` relay passes (its two statements) and rescuer passes.
/// What the client's clock adds (a stalled thread, this machine's other
/// work) is in [`time_passes`], not here.
/// Executions of a prepared statement before its plan is the one a
/// service's connection keeps: PostgreSQL plans the first five afresh
/// (custom plans) and then decides whether a generic plan will do.
const WARM_UP: usize = 6;

pub async fn time_passes_in_server(pool: &PgPool, runs: usize) -> anyhow::Result<[[f64; 2]; 2]> {
    let mut conn = pool.acquire().await?;
    let statements = pass_statements();
    for (i, (_, sql, _)) in statements.iter().enumerate() {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "PREPARE bench_server_{i} AS {sql}"
        )))
        .execute(&mut *conn)
        .await?;
    }
    // Timed as the services run them: with the plan their connections keep.
    for _ in 0..WARM_UP {
        for (i, (_, _, params)) in statements.iter().enumerate() {
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "EXECUTE bench_server_{i}({params})"
            )))
            .execute(&mut *conn)
            .await?;
        }
    }
    let (mut relay, mut rescuer) = (Vec::with_capacity(runs), Vec::with_capacity(runs));
    for _ in 0..runs {
        let mut ms = [0.0; 3];
        for (i, (_, _, params)) in statements.iter().enumerate() {
            let plan: serde_json::Value = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "EXPLAIN (ANALYZE, TIMING OFF, FORMAT JSON) EXECUTE bench_server_{i}({params})"
            )))
            .fetch_one(&mut *conn)
            .await?;
            ms[i] = plan[0]["Execution Time"]
                .as_f64()
                .context("EXPLAIN ANALYZE gave no execution time")?;
        }
        relay.push(ms[0] + ms[1]);
        rescuer.push(ms[2]);
    }
    // Only ours: the connection's own statements are sqlx's cache.
    for i in 0..statements.len() {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DEALLOCATE bench_server_{i}")))
            .execute(&mut *conn)
            .await?;
    }
    Ok([p50_max(relay), p50_max(rescuer)])
}

/// `EXPLAIN (ANALYZE, BUFFERS)` of the passes' statements as a service's
/// connection runs them: prepared, after enough executions for PostgreSQL
/// to settle on the plan it keeps (generic or custom), with the services'
/// default parameters.
pub async fn explain_passes(pool: &PgPool) -> anyhow::Result<String> {
    let mut conn = pool.acquire().await?;
    let mut out = String::new();
    for (name, sql, params) in pass_statements() {
        let prepare = format!("PREPARE bench_pass AS {sql}");
        sqlx::raw_sql(sqlx::AssertSqlSafe(prepare))
            .execute(&mut *conn)
            .await?;
        for _ in 0..WARM_UP {
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("EXECUTE bench_pass({params})")))
                .execute(&mut *conn)
                .await?;
        }
        let plan: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "EXPLAIN (ANALYZE, BUFFERS) EXECUTE bench_pass({params})"
        )))
        .fetch_all(&mut *conn)
        .await?;
        sqlx::raw_sql("DEALLOCATE bench_pass")
            .execute(&mut *conn)
            .await?;
        out.push_str(&format!("-- {name}\n{}\n", plan.join("\n")));
    }
    Ok(out)
}

/// Pages each table and index of a database read from outside
/// `shared_buffers` (`pg_statio_user_tables` and `_indexes`), read before
/// and after a run: what a long history makes each stop fetch.
pub struct BlocksRead(std::collections::HashMap<String, i64>);

impl BlocksRead {
    pub async fn read(pool: &PgPool) -> anyhow::Result<Self> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT relname::text, coalesce(heap_blks_read, 0) FROM pg_statio_user_tables
             UNION ALL
             SELECT indexrelname::text, coalesce(idx_blks_read, 0) FROM pg_statio_user_indexes",
        )
        .fetch_all(pool)
        .await?;
        Ok(BlocksRead(rows.into_iter().collect()))
    }

    /// Pages read per stop since `before`, most first; only those of at
    /// least 0.01 per stop.
    pub fn per_stop_since(&self, before: &BlocksRead, stops: usize) -> Vec<(String, f64)> {
        let mut v: Vec<(String, f64)> = self
            .0
            .iter()
            .map(|(name, n)| {
                let d = n - before.0.get(name).copied().unwrap_or(0);
                (name.clone(), d as f64 / stops.max(1) as f64)
            })
            .filter(|(_, per)| *per >= 0.01)
            .collect();
        v.sort_by(|a, b| b.1.total_cmp(&a.1));
        v
    }

    /// [`Self::per_stop_since`] this reading, taken again once the run's
    /// services have exited (their backends report their reads as they
    /// exit), and printed as `label`'s line.
    pub async fn report_since(
        &self,
        pool: &PgPool,
        stops: usize,
        label: &str,
    ) -> anyhow::Result<Vec<(String, f64)>> {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let v = BlocksRead::read(pool).await?.per_stop_since(self, stops);
        eprintln!(
            "{label}: pages read from outside shared_buffers per stop: {}",
            show_blocks(&v, 8)
        );
        Ok(v)
    }
}

/// The first `n` of [`BlocksRead::per_stop_since`]'s list, for a line.
pub fn show_blocks(v: &[(String, f64)], n: usize) -> String {
    v.iter()
        .take(n)
        .map(|(rel, per)| format!("{rel} {per:.2}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What one `shutoff-admin prune` run removed and how long it took.
#[derive(Debug, Default, Clone, Copy)]
pub struct PruneRun {
    pub jobs: i64,
    pub rows: i64,
    pub seconds: f64,
}

impl PruneRun {
    pub fn rows_per_s(&self) -> f64 {
        self.rows as f64 / self.seconds
    }
}

/// The real `shutoff-admin prune`, started as a child process (killed if
/// dropped, so an interrupted run leaves none behind).
pub struct Prune {
    child: tokio::process::Child,
    started: Instant,
}

impl Prune {
    pub fn start(
        bin_dir: &Path,
        database_url: &str,
        older_than: &str,
        log: &Path,
    ) -> anyhow::Result<Prune> {
        if let Some(dir) = log.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let child = Command::new(bin_dir.join("shutoff-admin"))
            .args(["prune", "--older-than", older_than])
            .env("DATABASE_URL", database_url)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log)?)
            .kill_on_drop(true)
            .spawn()
            .context("cannot start shutoff-admin (built?)")?;
        Ok(Prune {
            child,
            started: Instant::now(),
        })
    }

    /// Waits for the prune to finish and reads its summary.
    pub async fn finish(self) -> anyhow::Result<PruneRun> {
        let out = self.child.wait_with_output().await?;
        let seconds = self.started.elapsed().as_secs_f64();
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!("shutoff-admin prune failed ({}): {stdout}", out.status);
        }
        let mut run = PruneRun {
            seconds,
            ..PruneRun::default()
        };
        // "  jobs    123": one line per table.
        for line in stdout.lines() {
            let mut words = line.split_whitespace();
            if let (Some(table), Some(Ok(n))) = (words.next(), words.next().map(str::parse::<i64>))
            {
                run.rows += n;
                if table == "jobs" {
                    run.jobs = n;
                }
            }
        }
        if run.rows == 0 {
            bail!("shutoff-admin prune removed nothing: {stdout}");
        }
        Ok(run)
    }
}
