//! A worker carrying out stops: success, failure, retries, duplicates and
//! racing workers, against the real PostgreSQL and RabbitMQ.

use std::time::Duration;

use shutoff_testkit::workers;
use sqlx::PgPool;

const T: Duration = Duration::from_secs(20);

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn a_stop_powers_off_and_records_stopped_in_one_step(pool: PgPool) {
    let c = workers::ctx(pool).await;
    let w = c.worker(|_| {}).await;
    let vm = c.server("fake://?delay_ms=50").await;

    let job = c.stop(vm, 5).await;

    assert!(c.until_job(job.job_id, "succeeded", T).await);
    assert_eq!(c.instance(vm).await, ("stopped".into(), None, 4));
    let worker: String = sqlx::query_scalar("SELECT worker FROM jobs WHERE id = $1")
        .bind(job.job_id)
        .fetch_one(&c.env.pool)
        .await
        .unwrap();
    assert_eq!(worker, w.id);
    w.terminate().await;
}

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn a_redelivered_finished_job_is_acked_without_a_second_power_off(pool: PgPool) {
    let c = workers::ctx(pool).await;
    let w = c.worker(|_| {}).await;
    let vm = c.server("fake://").await;
    let job = c.stop(vm, 5).await;
    assert!(c.until_job(job.job_id, "succeeded", T).await);

    for _ in 0..3 {
        c.publisher.publish(&job).await.unwrap();
    }
    let queue = c.env.work_queue();
    assert!(
        c.env
            .eventually(T, || async { c.ready_messages(&queue).await == 0 })
            .await
    );
    tokio::time::sleep(Duration::from_millis(300)).await;

    assert_eq!(
        c.job(job.job_id).await,
        ("succeeded".into(), 1),
        "no second attempt"
    );
    assert_eq!(c.transitions_to(job.job_id, "running").await, 1);
    assert_eq!(c.transitions_to(job.job_id, "succeeded").await, 1);
    w.terminate().await;
}

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn a_driver_error_records_a_fault_and_an_error_event_and_reverts_task_state(pool: PgPool) {
    let c = workers::ctx(pool).await;
    let w = c.worker(|_| {}).await;
    let vm = c.server("fake://?fail=always").await;

    let job = c.stop(vm, 5).await;

    assert!(c.until_job(job.job_id, "failed", T).await);
    assert_eq!(
        c.job(job.job_id).await.1,
        1,
        "a permanent error is not retried"
    );
    assert_eq!(
        c.instance(vm).await,
        ("active".into(), None, 1),
        "vm_state unchanged, task_state reverted"
    );
    let (result, details) = c.event(job.job_id).await;
    assert_eq!(result, "Error");
    let action_message: Option<String> =
        sqlx::query_scalar("SELECT a.message FROM instance_actions a JOIN jobs j ON j.action_id = a.id WHERE j.id = $1")
            .bind(job.job_id)
            .fetch_one(&c.env.pool)
            .await
            .unwrap();
    assert_eq!(
        action_message.as_deref(),
        Some("Error"),
        "Nova marks the action of a failed event"
    );
    assert!(details.contains("attempt 1"), "{details}");
    assert!(
        details.contains("refused to power off"),
        "the event says why: {details}"
    );
    let (code, message): (i32, String) =
        sqlx::query_as("SELECT code, message FROM instance_faults WHERE instance_uuid = $1")
            .bind(vm)
            .fetch_one(&c.env.pool)
            .await
            .unwrap();
    assert_eq!(code, 500);
    assert!(message.contains("refused to power off"), "{message}");
    w.terminate().await;
}

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn transient_failures_are_retried_with_back_off_then_recorded_as_failed(pool: PgPool) {
    let c = workers::ctx(pool).await;
    let w = c.worker(|_| {}).await;
    let vm = c.server("fake://?fail=transient").await;

    let job = c.stop(vm, 3).await;

    assert!(c.until_job(job.job_id, "failed", T).await);
    assert_eq!(c.job(job.job_id).await.1, 3);
    assert_eq!(c.transitions_to(job.job_id, "retrying").await, 2);
    assert_eq!(c.transitions_to(job.job_id, "failed").await, 1);
    let faults = c
        .scalar(
            "SELECT count(*) FROM instance_faults WHERE instance_uuid = $1",
            vm,
        )
        .await;
    assert_eq!(faults, 1, "one fault for the stop, not one per attempt");
    // The delays came from the delay queues: retries were not immediate.
    let spread: f64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM max(at) - min(at))::float8 FROM job_transitions
          WHERE job_id = $1 AND to_state = 'running'",
    )
    .bind(job.job_id)
    .fetch_one(&c.env.pool)
    .await
    .unwrap();
    assert!(
        spread >= 0.25,
        "retries were {spread}s apart in total; back-off is 100 ms + 200 ms"
    );
    assert_eq!(c.instance(vm).await.1, None);
    w.terminate().await;
}

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn two_workers_holding_one_job_reach_one_decision(pool: PgPool) {
    let c = workers::ctx(pool).await;
    let a = c.worker(|_| {}).await;
    let b = c.worker(|_| {}).await;
    let vm = c.server("fake://?delay_ms=300").await;

    let job = c.stop(vm, 5).await;
    for _ in 0..9 {
        c.publisher.publish(&job).await.unwrap();
    }

    assert!(c.until_job(job.job_id, "succeeded", T).await);
    let queue = c.env.work_queue();
    assert!(
        c.env
            .eventually(T, || async { c.ready_messages(&queue).await == 0 })
            .await
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        c.transitions_to(job.job_id, "running").await,
        1,
        "one power-off decision"
    );
    assert_eq!(c.transitions_to(job.job_id, "succeeded").await, 1);
    let events = c
        .scalar(
            "SELECT count(*) FROM instance_actions_events e JOIN jobs j ON j.action_id = e.action_id WHERE j.id = $1",
            job.job_id,
        )
        .await;
    assert_eq!(events, 1);
    a.terminate().await;
    b.terminate().await;
}

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn concurrent_jobs_share_commits_and_each_still_gets_one_decision(pool: PgPool) {
    let c = workers::ctx(pool).await;
    // Accept everything first, then let one worker take the whole backlog at
    // once, with a duplicate of every fourth message mixed in.
    let mut jobs = Vec::new();
    for _ in 0..200 {
        let vm = c.server("fake://?delay_ms=20").await;
        jobs.push(c.accept(vm, 5).await);
    }
    for (i, job) in jobs.iter().enumerate() {
        c.publisher.publish(job).await.unwrap();
        if i % 4 == 0 {
            c.publisher.publish(job).await.unwrap();
        }
    }
    let w = c.worker(|s| s.prefetch = 1000).await;
    for job in &jobs {
        assert!(c.until_job(job.job_id, "succeeded", T).await);
    }
    for job in &jobs {
        assert_eq!(c.job(job.job_id).await, ("succeeded".into(), 1));
        assert_eq!(c.transitions_to(job.job_id, "running").await, 1);
        assert_eq!(c.transitions_to(job.job_id, "succeeded").await, 1);
    }
    let stopped: i64 =
        sqlx::query_scalar("SELECT count(*) FROM instances WHERE vm_state = 'stopped' AND task_state IS NULL AND power_state = 4")
            .fetch_one(&c.env.pool)
            .await
            .unwrap();
    assert_eq!(stopped, 200);
    // Rows written by one statement share its transaction's now(): fewer
    // distinct timestamps than jobs means claims and successes were batched.
    let (claims, successes): (i64, i64) =
        sqlx::query_as("SELECT count(DISTINCT started_at), count(DISTINCT finished_at) FROM jobs")
            .fetch_one(&c.env.pool)
            .await
            .unwrap();
    assert!(claims < 100, "{claims} claim commits for 200 jobs");
    assert!(successes < 100, "{successes} success commits for 200 jobs");
    w.terminate().await;
}
