//! Test support: the plans PostgreSQL picks for our statements, so a test
//! can say which index a statement must use however the statistics stand.

use sqlx::{AssertSqlSafe, PgConnection};

/// The plan PostgreSQL keeps for `sql` once it caches a generic plan, as
/// it does for every prepared statement after five runs.
pub(crate) async fn generic_plan(conn: &mut PgConnection, name: &str, sql: &str) -> String {
    let params = (1..=9).filter(|i| sql.contains(&format!("${i}"))).count();
    sqlx::raw_sql(AssertSqlSafe(format!(
        "SET plan_cache_mode = force_generic_plan; PREPARE {name} AS {sql}"
    )))
    .execute(&mut *conn)
    .await
    .unwrap();
    let nulls = vec!["NULL"; params].join(", ");
    let rows: Vec<String> = sqlx::query_scalar(AssertSqlSafe(format!(
        "EXPLAIN (COSTS OFF) EXECUTE {name}({nulls})"
    )))
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    rows.join("\n")
}

#[cfg(test)]
mod tests {
    use sqlx::{Acquire, PgPool};

    use super::generic_plan;

    /// Years of history: the lookups an operator makes (a trace by request
    /// id or by server, the jobs list, a host's drain, a server's actions)
    /// go by index and never read all of jobs or of the actions, and the
    /// only indexes of jobs and actions keyed on something other than a
    /// growing value are the ones a lookup needs.
    #[sqlx::test(migrator = "crate::store::MIGRATOR")]
    async fn history_lookups_go_by_index_and_jobs_keeps_no_random_btree(pool: PgPool) {
        sqlx::raw_sql(
            "INSERT INTO projects (id, name) VALUES ('0123456789abcdef0123456789abcdef', 'p');
             INSERT INTO instances (uuid, project_id, user_id, name, launched_at, host)
             SELECT md5(g::text)::uuid, '0123456789abcdef0123456789abcdef', 'u', 'vm', now(),
                    'h' || g % 20
               FROM generate_series(1, 2000) g;
             WITH act AS (
                 INSERT INTO instance_actions (action, instance_uuid, request_id, user_id, project_id)
                 SELECT 'stop', md5((g % 2000 + 1)::text)::uuid, 'req-' || gen_random_uuid(), 'u',
                        '0123456789abcdef0123456789abcdef'
                   FROM generate_series(1, 20000) g
                 RETURNING id, instance_uuid, request_id
             )
             INSERT INTO jobs (id, instance_uuid, request_id, action_id, max_attempts, state,
                               attempts, started_at, finished_at)
             SELECT gen_random_uuid(), instance_uuid, request_id, id, 5, 'succeeded', 1, now(), now()
               FROM act;
             ANALYZE;",
        )
        .execute(&pool)
        .await
        .unwrap();

        let mut conn = pool.acquire().await.unwrap();
        let conn = conn.acquire().await.unwrap();
        let lookups = [
            (
                "by_request",
                super::super::trace::by_request_sql(),
                "jobs_request",
            ),
            (
                "by_instance",
                super::super::trace::by_instance_sql(),
                "jobs_action",
            ),
            (
                "jobs_of_instance",
                super::super::reads::JOBS_OF_INSTANCE_SQL.to_string(),
                "jobs_action",
            ),
            (
                "jobs",
                super::super::reads::JOBS_SQL.to_string(),
                "jobs_action",
            ),
            (
                "actions",
                super::super::reads::ACTIONS_SQL.to_string(),
                "instance_actions_instance",
            ),
            (
                "action",
                super::super::reads::ACTION_SQL.to_string(),
                "instance_actions_instance",
            ),
            // A server's unfinished job: through its actions, or from the
            // few unfinished jobs (the partial index), as the statistics say.
            (
                "host_servers",
                super::super::drain::HOST_SERVERS_SQL.to_string(),
                "jobs_action|jobs_unfinished",
            ),
        ];
        for (name, sql, index) in lookups {
            let plan = generic_plan(conn, name, &sql).await;
            for table in ["jobs", "instance_actions"] {
                assert!(
                    !plan.contains(&format!("Seq Scan on {table}")),
                    "{name} scans {table}:\n{plan}"
                );
            }
            assert!(
                index.split('|').any(|i| plan.contains(i)),
                "{name} does not use {index}:\n{plan}"
            );
        }

        // Every B-tree of jobs is keyed on a value that grows with time
        // (UUIDv7 ids, action ids, timestamps), so a new job's entries land
        // on pages already in memory however long the history.
        let indexes: Vec<(String, String)> = sqlx::query_as(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'jobs' ORDER BY 1",
        )
        .fetch_all(&mut *conn)
        .await
        .unwrap();
        let names: Vec<&str> = indexes.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "jobs_action",
                "jobs_pkey",
                "jobs_queued",
                "jobs_request",
                "jobs_unfinished"
            ],
            "{indexes:#?}"
        );
        let request = &indexes[3].1;
        assert!(request.contains("USING hash (request_id)"), "{request}");

        // Of instance_actions, only the server's lookup is keyed on a random
        // value (the client's instance uuid), and on it alone, so that
        // deduplication keeps one entry per server.
        let indexes: Vec<(String, String)> = sqlx::query_as(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'instance_actions'
              ORDER BY 1",
        )
        .fetch_all(&mut *conn)
        .await
        .unwrap();
        let names: Vec<&str> = indexes.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["instance_actions_instance", "instance_actions_pkey"],
            "{indexes:#?}"
        );
        let instance = &indexes[0].1;
        assert!(instance.contains("btree (instance_uuid)"), "{instance}");
    }
}
