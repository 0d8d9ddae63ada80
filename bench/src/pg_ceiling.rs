//! The machine's ceiling: pgbench (PostgreSQL's own load tool) running our
//! acceptance statement itself — compare-and-swap UPDATE of the instance plus
//! the instance-action and job inserts, with the job trigger — at 16 clients,
//! in a scratch database migrated like the real one.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use shutoff_core::state::{TaskState, VmState};
use shutoff_core::store::accept::ACCEPT_SQL;
use sqlx::PgPool;
use tokio::process::Command;

pub struct Ceiling {
    pub tps: f64,
    pub transactions: u64,
}

/// `pool` is connected to the scratch database `url`.
pub async fn measure(
    pool: &PgPool,
    url: &str,
    clients: u32,
    duration: Duration,
    history: i64,
) -> anyhow::Result<Ceiling> {
    // The same history as every phase's database, so both sides of the
    // ratio run on tables of the same shape.
    crate::seed_history(pool, history).await?;
    let project = "0123456789abcdef0123456789abcdef";
    sqlx::query("INSERT INTO projects (id, name) VALUES ($1, 'pgbench')")
        .bind(project)
        .execute(pool)
        .await?;
    // Enough distinct instances that no transaction's compare-and-swap misses
    // (a miss would be a cheaper transaction and flatter the ceiling).
    let rows: i64 = 400_000;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE bench_ids (n bigint PRIMARY KEY, uuid uuid NOT NULL);
         INSERT INTO bench_ids SELECT g, gen_random_uuid() FROM generate_series(1, {rows}) g;
         INSERT INTO instances (uuid, project_id, user_id, name, launched_at)
              SELECT uuid, '{project}', 'pgbench', 'vm-' || n, now() FROM bench_ids;
         CREATE SEQUENCE bench_seq;"
    )))
    .execute(pool)
    .await?;
    // On its own: VACUUM cannot run inside the implicit transaction of a
    // multi-statement query. Only the filled tables: see `analyze_filled`.
    sqlx::raw_sql("VACUUM ANALYZE bench_ids")
        .execute(pool)
        .await?;
    sqlx::raw_sql("VACUUM instances").execute(pool).await?;
    crate::analyze_filled(pool).await?;
    crate::settle(pool).await;

    let stoppable = format!(
        "ARRAY[{}]",
        VmState::STOPPABLE.map(|s| format!("'{s}'")).join(", ")
    );
    let statement = ACCEPT_SQL
        .replace("$1", "(SELECT uuid FROM bench_ids WHERE n = :k)")
        .replace("$2", "false")
        .replace("$3", &format!("'{project}'"))
        .replace("$4", "'req-bench-' || :k")
        .replace("$5", "'pgbench'")
        .replace("$6", "gen_random_uuid()")
        .replace("$7", "5")
        .replace("$8", &format!("'{}'", TaskState::PoweringOff))
        .replace("$9", &stoppable);
    let script = format!(
        "SELECT nextval('bench_seq') AS k \\gset\n{};\n",
        statement.split_whitespace().collect::<Vec<_>>().join(" ")
    );
    let script_path =
        std::env::temp_dir().join(format!("shutoff-bench-{}.sql", std::process::id()));
    std::fs::write(&script_path, script)?;

    // libpq options, not sqlx's URL (which carries sqlx-only parameters).
    let opts: sqlx::postgres::PgConnectOptions = url.parse()?;
    let out = Command::new("pgbench")
        .kill_on_drop(true)
        .args(["-h", opts.get_host(), "-p", &opts.get_port().to_string()])
        .args(["-U", opts.get_username()])
        .args([
            "--no-vacuum",
            "--protocol=prepared",
            "--client",
            &clients.to_string(),
            "--jobs",
            "2",
            "--time",
            &duration.as_secs().to_string(),
            "--file",
        ])
        .arg(&script_path)
        .arg(opts.get_database().unwrap_or("postgres"))
        .stdin(Stdio::null())
        .output()
        .await
        .context("cannot run pgbench (Debian: postgresql-client)")?;
    let _ = std::fs::remove_file(&script_path);
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "pgbench failed: {}{}",
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let tps = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("tps = "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .with_context(|| format!("no tps in pgbench output:\n{stdout}"))?;
    let transactions: i64 =
        sqlx::query_scalar("SELECT count(*) FROM jobs WHERE request_id LIKE 'req-bench-%'")
            .fetch_one(pool)
            .await?;
    let calls: i64 = sqlx::query_scalar("SELECT last_value FROM bench_seq")
        .fetch_one(pool)
        .await?;
    if transactions < calls - i64::from(clients) {
        bail!(
            "pgbench ceiling invalid: {calls} transactions but only {transactions} jobs (instances ran out?)"
        );
    }
    Ok(Ceiling {
        tps,
        transactions: transactions as u64,
    })
}
