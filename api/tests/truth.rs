//! The answer is the truth: whatever a client is told (202, 503, or nothing
//! because it hung up) matches what is committed, also when its stop waits
//! on a row lock another transaction holds past the request's deadline.

use std::time::Duration;

use shutoff_testkit::app::{Options, TestApp, fault, spawn_with};
use sqlx::PgPool;
use tokio::io::AsyncWriteExt;
use uuid::Uuid;

/// An API (and a worker) whose requests time out after `request_ms` and
/// whose statements after `statement_ms`, on this test's database.
async fn app(pool: PgPool, request_ms: u64, statement_ms: u64) -> TestApp {
    let opts = pool.connect_options();
    let url = format!(
        "postgres://{}@{}:{}/{}",
        opts.get_username(),
        opts.get_host(),
        opts.get_port(),
        opts.get_database().unwrap_or("postgres")
    );
    spawn_with(
        pool,
        Options {
            database_url: Some(url),
            configure: Some(Box::new(move |s| {
                s.request_timeout_ms = request_ms;
                s.common.db_statement_timeout_ms = statement_ms;
            })),
            ..Options::default()
        },
    )
    .await
}

/// An operator's transaction holding the instance's row lock
/// (`SELECT ... FOR UPDATE`) until it is dropped or committed.
async fn lock_instance(pool: &PgPool, id: Uuid) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM instances WHERE uuid = $1 FOR UPDATE")
        .bind(id)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx
}

/// Waits until `n` statements of this test's database wait on a lock (the
/// stops' statements have started and are blocked on the held rows).
async fn lock_waiters(app: &TestApp, n: i64) {
    let reached = app
        .env
        .eventually(Duration::from_secs(30), || async {
            app.env.lock_waiters().await == n
        })
        .await;
    assert!(reached, "{n} statements never waited on the locks");
}

/// Rows a stop of `id` leaves: (actions, jobs, task_state).
async fn rows(app: &TestApp, id: Uuid) -> (i64, i64, Option<String>) {
    sqlx::query_as(
        "SELECT (SELECT count(*) FROM instance_actions WHERE instance_uuid = $1),
                (SELECT count(*) FROM jobs WHERE instance_uuid = $1),
                (SELECT task_state FROM instances WHERE uuid = $1)",
    )
    .bind(id)
    .fetch_one(&app.env.pool)
    .await
    .unwrap()
}

/// Starts a stop of `id` in the background and returns its response.
fn stop_in_background(app: &TestApp, id: Uuid) -> tokio::task::JoinHandle<(u16, String)> {
    let (client, url, token) = (
        app.client.clone(),
        app.url(&format!("/v2/{}/servers/{id}/action", app.project.as_str())),
        app.token.clone(),
    );
    tokio::spawn(async move {
        let resp = client
            .post(url)
            .header("x-auth-token", token)
            .header("content-type", "application/json")
            .body(r#"{"os-stop": null}"#)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_string());
        let body = resp.text().await.unwrap();
        if status == 503 {
            assert!(retry_after.is_some(), "a 503 without Retry-After: {body}");
        }
        (status, body)
    })
}

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn a_stop_whose_statement_started_is_answered_with_its_outcome_even_past_the_deadline(
    pool: PgPool,
) {
    let app = app(pool, 1_000, 10_000).await;
    let id = app.server("web-1").await;
    let lock = lock_instance(&app.env.pool, id).await;

    let stop = stop_in_background(&app, id);
    lock_waiters(&app, 1).await;
    // Past the request's 1 s deadline, the statement still waits on the lock.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert!(!stop.is_finished(), "answered before its statement ended");
    lock.commit().await.unwrap();

    let (status, body) = stop.await.unwrap();
    assert_eq!(status, 202, "{body}");
    assert_eq!(rows(&app, id).await.0, 1, "one action for the 202");
    assert!(
        app.stopped(id, Duration::from_secs(20)).await,
        "the accepted stop was not carried out"
    );
    app.shut_down().await;
}

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn a_row_lock_held_longer_than_the_request_timeout_is_a_503_and_nothing_is_committed(
    pool: PgPool,
) {
    let app = app(pool, 500, 1_500).await;
    let id = app.server("web-1").await;
    let lock = lock_instance(&app.env.pool, id).await;

    let resp = app.stop(id).await;
    assert_eq!(
        resp.headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap()),
        Some("1")
    );
    let msg = fault(resp, 503, "serviceUnavailable").await;
    assert!(msg.contains("nothing was accepted"), "{msg}");
    drop(lock);

    // Not committed later either: no action, no job, task_state untouched.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rows(&app, id).await, (0, 0, None));
    // And the server can be stopped now that the lock is gone.
    assert_eq!(app.stop(id).await.status().as_u16(), 202);
    app.shut_down().await;
}

/// Both acceptance slots blocked on locked rows: a third stop waits in the
/// batcher and reaches its deadline before its statement starts.
#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn a_stop_that_timed_out_before_its_statement_started_is_never_committed_later(pool: PgPool) {
    let app = app(pool, 1_000, 10_000).await;
    let (a, b, c) = (
        app.server("a").await,
        app.server("b").await,
        app.server("c").await,
    );
    let lock_a = lock_instance(&app.env.pool, a).await;
    let lock_b = lock_instance(&app.env.pool, b).await;
    let stop_a = stop_in_background(&app, a);
    lock_waiters(&app, 1).await;
    let stop_b = stop_in_background(&app, b);
    lock_waiters(&app, 2).await;

    let (status, body) = stop_in_background(&app, c).await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("nothing was accepted"), "{body}");

    lock_a.commit().await.unwrap();
    lock_b.commit().await.unwrap();
    assert_eq!(stop_a.await.unwrap().0, 202);
    assert_eq!(stop_b.await.unwrap().0, 202);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        rows(&app, c).await,
        (0, 0, None),
        "c was committed after its 503"
    );
    assert!(app.stopped(a, Duration::from_secs(20)).await);
    assert!(app.stopped(b, Duration::from_secs(20)).await);
    app.shut_down().await;
}

/// Sends a stop on a raw connection and hangs up once `lock_waiters`
/// statements wait on locks (if given), and `after` has passed.
async fn stop_and_hang_up(
    app: &TestApp,
    id: Uuid,
    lock_waiters_then: Option<i64>,
    after: Duration,
) {
    let body = r#"{"os-stop": null}"#;
    let request = format!(
        "POST /v2/{}/servers/{id}/action HTTP/1.1\r\nHost: {}\r\nX-Auth-Token: {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        app.project.as_str(),
        app.addr,
        app.token,
        body.len()
    );
    let mut conn = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    conn.write_all(request.as_bytes()).await.unwrap();
    if let Some(n) = lock_waiters_then {
        lock_waiters(app, n).await;
    }
    tokio::time::sleep(after).await;
    drop(conn);
}

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn a_client_that_hangs_up_while_its_stop_waits_on_a_lock_gets_what_was_committed(
    pool: PgPool,
) {
    let app = app(pool, 30_000, 10_000).await;
    let (started, queued, other) = (
        app.server("started").await,
        app.server("queued").await,
        app.server("other").await,
    );
    // `started`'s statement is running (waiting on the lock) when its client
    // goes; `queued` is still waiting for a slot (both are busy) when its
    // client goes.
    let lock = lock_instance(&app.env.pool, started).await;
    let lock_other = lock_instance(&app.env.pool, other).await;
    stop_and_hang_up(&app, started, Some(1), Duration::from_millis(100)).await;
    let stop_other = stop_in_background(&app, other);
    lock_waiters(&app, 2).await;
    // Given time to reach the batcher (if it has not, it never starts either).
    stop_and_hang_up(&app, queued, None, Duration::from_millis(300)).await;

    lock.commit().await.unwrap();
    lock_other.commit().await.unwrap();
    assert_eq!(stop_other.await.unwrap().0, 202);

    // The started stop committed: nobody heard the 202, but it is carried out
    // (the relay publishes what its request could not), not left half-way.
    assert!(
        app.stopped(started, Duration::from_secs(20)).await,
        "a committed stop was left powering-off"
    );
    assert_eq!(rows(&app, started).await, (1, 1, None));
    assert_eq!(
        app.env.job_state(started).await.as_deref(),
        Some("succeeded")
    );
    // The queued one never started, so it never commits.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rows(&app, queued).await, (0, 0, None));
    app.shut_down().await;
}
