//! `GET /metrics` on a worker's health port: job counters, power-off
//! durations by driver and outcome, and the jobs in flight, after real jobs
//! through the real PostgreSQL and RabbitMQ.

use std::time::Duration;

use shutoff_testkit::workers;
use sqlx::PgPool;

/// The value of one series (`name{labels}`) in an exposition, if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.split(' ').next().unwrap().parse().unwrap())
}

async fn scrape(worker: &workers::RunningWorker) -> String {
    let resp = reqwest::get(format!("http://{}/metrics", worker.health))
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    resp.text().await.unwrap()
}

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn jobs_are_counted_by_outcome_and_power_offs_timed_by_driver_and_outcome(pool: PgPool) {
    let c = workers::ctx(pool).await;
    let worker = c.worker(|_| {}).await;
    let slow = c.server("fake://?delay_ms=1500").await;
    let quick = c.server("fake://").await;
    let broken = c.server("fake://?fail=always").await;
    let flaky = c.server("fake://?fail=transient").await;

    // One slow job alone: it is in flight while it powers off.
    let slow_job = c.stop(slow, 5).await;
    assert!(
        c.until_job(slow_job.job_id, "running", Duration::from_secs(15))
            .await
    );
    let during = scrape(&worker).await;
    assert_eq!(
        sample(&during, "shutoff_jobs_in_flight"),
        Some(1.0),
        "{during}"
    );
    assert!(
        c.until_job(slow_job.job_id, "succeeded", Duration::from_secs(15))
            .await
    );
    // A success, a permanent failure, a transient failure retried once and
    // then out of attempts, and a message no worker can parse.
    let jobs = [
        c.stop(quick, 5).await,
        c.stop(broken, 5).await,
        c.stop(flaky, 2).await,
    ];
    c.env.publish_raw(&c.env.work_queue(), b"not a job").await;
    for (job, state) in jobs.iter().zip(["succeeded", "failed", "failed"]) {
        assert!(
            c.until_job(job.job_id, state, Duration::from_secs(20))
                .await,
            "job {} never {state}",
            job.job_id
        );
    }
    let settled = c
        .env
        .eventually(Duration::from_secs(10), || async {
            let text = scrape(&worker).await;
            sample(&text, "shutoff_jobs_dead_lettered_total") == Some(1.0)
                && sample(&text, "shutoff_jobs_in_flight") == Some(0.0)
        })
        .await;
    let text = scrape(&worker).await;
    assert!(settled, "{text}");

    assert_eq!(
        sample(&text, "shutoff_jobs_started_total"),
        Some(5.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "shutoff_jobs_succeeded_total"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "shutoff_jobs_failed_total"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "shutoff_jobs_retried_total"),
        Some(1.0),
        "{text}"
    );
    let power_off = |outcome: &str, part: &str| {
        sample(
            &text,
            &format!(
                r#"shutoff_power_off_duration_seconds_{part}{{driver="fake",outcome="{outcome}"}}"#
            ),
        )
    };
    assert_eq!(power_off("clean", "count"), Some(2.0), "{text}");
    assert_eq!(power_off("failed", "count"), Some(3.0), "{text}");
    assert!(
        power_off("clean", "sum").unwrap() >= 1.5,
        "the slow power-off took 1.5 s: {text}"
    );
    assert_eq!(
        sample(
            &text,
            r#"shutoff_power_off_duration_seconds_bucket{le="1.0",driver="fake",outcome="clean"}"#
        ),
        Some(1.0),
        "only the quick power-off is under a second: {text}"
    );
    assert!(text.contains(r#"shutoff_build_info{binary="shutoff-worker""#));
    worker.terminate().await;
}
