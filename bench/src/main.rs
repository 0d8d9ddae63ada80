//! `shutoff-bench`: how many stops per second go through the whole system —
//! HTTP accept, RabbitMQ, worker, PostgreSQL — measured beside a baseline
//! taken in the same run on the same machine: the rate of PostgreSQL doing
//! just one UPDATE + INSERT transaction per stop (the floor of what any job
//! system built on PostgreSQL pays, per REFERENCE.md).
//!
//! It creates its own database and queue names and removes them at the end.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use futures::StreamExt;
use shutoff_core::broker::Topology;
use shutoff_core::ids::ProjectId;
use shutoff_core::store::{self, admin};
use sqlx::postgres::PgPoolOptions;
use sqlx::{ConnectOptions, Executor, PgPool};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

#[derive(Debug, Parser)]
#[command(name = "shutoff-bench")]
struct Args {
    /// Stops to send (one per server).
    #[arg(long, default_value_t = 5000)]
    stops: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// PostgreSQL server (a database named after this run is created on it).
    #[arg(
        long,
        env = "BENCH_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    database_url: String,
    #[arg(long, env = "AMQP_URL", default_value = shutoff_core::config::DEFAULT_AMQP_URL)]
    amqp_url: String,
}

fn database_url(base: &str, name: &str) -> anyhow::Result<String> {
    let opts: sqlx::postgres::PgConnectOptions = base.parse()?;
    Ok(opts.database(name).to_url_lossy().to_string())
}

/// PostgreSQL alone: one UPDATE + INSERT transaction per "stop", with the
/// same concurrency, on a scratch table of the same size.
async fn baseline(pool: &PgPool, n: usize, concurrency: usize) -> anyhow::Result<f64> {
    pool.execute(
        "CREATE TABLE bench_rows (id int PRIMARY KEY, state text NOT NULL DEFAULT 'active');
         CREATE TABLE bench_log (id bigserial PRIMARY KEY, row_id int NOT NULL, at timestamptz NOT NULL DEFAULT now());",
    )
    .await?;
    sqlx::query("INSERT INTO bench_rows (id) SELECT generate_series(1, $1)")
        .bind(n as i32)
        .execute(pool)
        .await?;
    let start = Instant::now();
    futures::stream::iter(1..=n as i32)
        .map(|id| async move {
            let mut tx = pool.begin().await?;
            sqlx::query("UPDATE bench_rows SET state = 'stopped' WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            sqlx::query("INSERT INTO bench_log (row_id) VALUES ($1)")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await
        })
        .buffer_unordered(concurrency)
        .for_each(|r| async move { r.expect("baseline transaction") })
        .await;
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

struct Run {
    accepted_per_sec: f64,
    end_to_end_per_sec: f64,
    accepted: usize,
    succeeded: i64,
}

async fn through_shutoff(
    pool: &PgPool,
    url: &str,
    args: &Args,
    prefix: &str,
) -> anyhow::Result<Run> {
    let project = ProjectId::random();
    admin::create_project(pool, &project, "bench").await?;
    let token = admin::create_token(
        pool,
        &project,
        "bench",
        &["member".into()],
        chrono_in_an_hour(),
    )
    .await?;
    let ids: Vec<Uuid> = sqlx::query_scalar(
        "INSERT INTO instances (uuid, project_id, user_id, name, launched_at)
         SELECT gen_random_uuid(), $1, 'bench', 'vm-' || g, now() FROM generate_series(1, $2) g
         RETURNING uuid",
    )
    .bind(project.as_str())
    .bind(args.stops as i32)
    .fetch_all(pool)
    .await?;

    let mut api_settings = shutoff_api::Settings::for_tests(url, prefix);
    api_settings.common.amqp_url = args.amqp_url.clone();
    api_settings.common.db_max_connections = 16;
    let api = shutoff_api::Application::build(api_settings).await?;
    let addr = api.local_addr();
    let mut worker_settings = shutoff_worker::Settings::for_tests(url, prefix);
    worker_settings.common.amqp_url = args.amqp_url.clone();
    worker_settings.common.db_max_connections = 16;
    worker_settings.prefetch = 256;
    let worker = shutoff_worker::Worker::build(worker_settings).await?;
    let shutdown = CancellationToken::new();
    let api_task = tokio::spawn(api.run_until_stopped(shutdown.clone()));
    let worker_task = tokio::spawn(worker.run_until_stopped(shutdown.clone()));

    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .build()?;
    let token = Arc::new(token);
    let start = Instant::now();
    let accepted = futures::stream::iter(ids)
        .map(|id| {
            let (client, token) = (client.clone(), token.clone());
            let url = format!("http://{addr}/v2/{project}/servers/{id}/action");
            async move {
                client
                    .post(url)
                    .header("x-auth-token", token.as_str())
                    .header("content-type", "application/json")
                    .body(r#"{"os-stop": null}"#)
                    .send()
                    .await
                    .map(|r| r.status().as_u16() == 202)
                    .unwrap_or(false)
            }
        })
        .buffer_unordered(args.concurrency)
        .filter(|ok| futures::future::ready(*ok))
        .count()
        .await;
    let accept_time = start.elapsed();
    let deadline = Instant::now() + Duration::from_secs(300);
    let succeeded = loop {
        let (done, succeeded): (i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE state IN ('succeeded', 'failed')),
                    count(*) FILTER (WHERE state = 'succeeded') FROM jobs",
        )
        .fetch_one(pool)
        .await?;
        if done as usize >= accepted || Instant::now() > deadline {
            break succeeded;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let total = start.elapsed();
    shutdown.cancel();
    api_task.await??;
    worker_task.await??;
    Ok(Run {
        accepted_per_sec: accepted as f64 / accept_time.as_secs_f64(),
        end_to_end_per_sec: succeeded as f64 / total.as_secs_f64(),
        accepted,
        succeeded,
    })
}

fn chrono_in_an_hour() -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now() + chrono::Duration::hours(1)
}

async fn delete_queues(amqp: &str, prefix: &str) -> anyhow::Result<()> {
    let conn = lapin::Connection::connect(amqp, Default::default()).await?;
    let ch = conn.create_channel().await?;
    Topology::with_prefix(prefix).delete(&ch).await?;
    conn.close(200, "bench done".into()).await?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let run_id = format!("bench_{}", std::process::id());
    let url = database_url(&args.database_url, &run_id)?;
    let prefix = run_id.replace('_', "-");
    store::create_and_migrate(&url)
        .await
        .context("cannot create the benchmark database")?;
    let pool = PgPoolOptions::new()
        .max_connections(args.concurrency as u32 + 4)
        .connect(&url)
        .await?;

    let result = async {
        let base = baseline(&pool, args.stops, args.concurrency.min(16)).await?;
        let run = through_shutoff(&pool, &url, &args, &prefix).await?;
        anyhow::Ok((base, run))
    }
    .await;

    pool.close().await;
    let admin_pool = PgPoolOptions::new()
        .max_connections(1)
        .connect(&args.database_url)
        .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {run_id} WITH (FORCE)"
    )))
    .execute(&admin_pool)
    .await?;
    delete_queues(&args.amqp_url, &prefix).await.ok();

    let (base, run) = result?;
    println!(
        "shutoff-bench: {} stops, {} in flight, one API + one worker in one process",
        args.stops, args.concurrency
    );
    println!(
        "  accepted (202)              {:>6} of {}",
        run.accepted, args.stops
    );
    println!("  succeeded                   {:>6}", run.succeeded);
    println!(
        "  accept rate                 {:>8.0} stops/s",
        run.accepted_per_sec
    );
    println!(
        "  end-to-end rate             {:>8.0} stops/s (202 to STOPPED recorded)",
        run.end_to_end_per_sec
    );
    println!(
        "  baseline: PostgreSQL alone  {:>8.0} tx/s (UPDATE + INSERT per stop, {} clients)",
        base,
        args.concurrency.min(16)
    );
    println!(
        "  ratio end-to-end / baseline {:>8.2}",
        run.end_to_end_per_sec / base
    );
    Ok(())
}
