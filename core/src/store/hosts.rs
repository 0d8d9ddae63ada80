//! Hosts: which compute hosts have workers, kept by the workers' heartbeats,
//! and what waits for each. A host is *up* while one of its workers has
//! beaten within the deployment's `--host-down-after`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::batch::{self, Batcher};
use crate::ids::HostName;

/// One statement for any number of beats: each host's row and each worker's,
/// created or refreshed. Runs every `--heartbeat-secs` in each worker, which
/// is the whole of an idle worker's load on PostgreSQL; the conductor gathers
/// a fleet's beats into one ([`beat_batcher`]). Rows are written in name
/// order, so two batches at once lock them in the same order, and a worker
/// that beat twice in one batch is one row with its later beat's version (an
/// upsert may touch a row once).
const BEAT_SQL: &str = "
WITH b AS (
    SELECT DISTINCT ON (host, worker) host, worker, version
      FROM unnest($1::text[], $2::text[], $3::text[]) WITH ORDINALITY AS b(host, worker, version, n)
     ORDER BY host, worker, n DESC
), h AS (
    INSERT INTO hosts AS h (name)
    SELECT DISTINCT host FROM b ORDER BY host
    ON CONFLICT (name) DO UPDATE SET last_seen = now()
    RETURNING name
)
INSERT INTO host_workers AS w (host, worker, version)
SELECT b.host, b.worker, b.version FROM b JOIN h ON h.name = b.host
 ORDER BY b.host, b.worker
ON CONFLICT (host, worker) DO UPDATE SET last_seen = now(), version = EXCLUDED.version";

/// That `worker`, running `version`, serves `host`.
#[derive(Debug, Clone)]
pub struct Beat {
    pub host: HostName,
    pub worker: String,
    pub version: String,
}

/// Records that `worker` (running `version`) serves `host`, now.
pub async fn beat(
    pool: &PgPool,
    host: &HostName,
    worker: &str,
    version: &str,
) -> Result<(), sqlx::Error> {
    let beat = Beat {
        host: host.clone(),
        worker: worker.to_string(),
        version: version.to_string(),
    };
    beat_many(pool, std::slice::from_ref(&beat)).await?;
    Ok(())
}

/// Records `beats` in one statement.
pub async fn beat_many(pool: &PgPool, beats: &[Beat]) -> Result<Vec<()>, sqlx::Error> {
    let hosts: Vec<&str> = beats.iter().map(|b| b.host.as_str()).collect();
    let workers: Vec<&str> = beats.iter().map(|b| b.worker.as_str()).collect();
    let versions: Vec<&str> = beats.iter().map(|b| b.version.as_str()).collect();
    sqlx::query(BEAT_SQL)
        .bind(&hosts)
        .bind(&workers)
        .bind(&versions)
        .execute(pool)
        .await?;
    Ok(vec![(); beats.len()])
}

/// The group-committed beat, for the conductor: 1,000 hosts beating every
/// 10 s were 100 statements a second, one each. A batch that is not full
/// waits up to `linger` for more; a beat is not in a hurry.
pub fn beat_batcher(
    pool: PgPool,
    max_batch: usize,
    in_flight: usize,
    linger: Duration,
) -> Batcher<Beat, ()> {
    Batcher::spawn_lingering(max_batch, in_flight, linger, move |items: Vec<Beat>| {
        let pool = pool.clone();
        async move { batch::all_or_each(&items, |items| beat_many(&pool, items)).await }
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The conductor's beats of several hosts, each host with two workers
    /// and one worker beating twice, arrive within the linger: one
    /// statement writes every row, and the worker that beat twice is one
    /// row with its later version.
    #[sqlx::test(migrator = "crate::store::MIGRATOR")]
    async fn beats_within_the_linger_share_one_statement(pool: PgPool) {
        let beats = beat_batcher(pool.clone(), 512, 2, Duration::from_millis(500));
        let mut all = Vec::new();
        for h in ["bt-a", "bt-b", "bt-c"] {
            for w in ["w1", "w2"] {
                all.push(Beat {
                    host: HostName::parse(h).unwrap(),
                    worker: format!("{h}-{w}"),
                    version: "1".into(),
                });
            }
        }
        all.push(Beat {
            version: "2".into(),
            ..all[0].clone()
        });
        let answers = futures::future::join_all(all.iter().map(|b| beats.call(b.clone()))).await;
        assert!(answers.iter().all(Result::is_ok), "{answers:?}");

        let (workers, transactions): (i64, i64) =
            sqlx::query_as("SELECT count(*), count(DISTINCT xmin::text) FROM host_workers")
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(workers, 6, "one row per worker of each host");
        assert_eq!(transactions, 1, "the seven beats were one statement");
        let (hosts, transactions): (i64, i64) =
            sqlx::query_as("SELECT count(*), count(DISTINCT xmin::text) FROM hosts")
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!((hosts, transactions), (3, 1));
        let version: String =
            sqlx::query_scalar("SELECT version FROM host_workers WHERE worker = 'bt-a-w1'")
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(version, "2", "the later of a worker's two beats");
    }
}
