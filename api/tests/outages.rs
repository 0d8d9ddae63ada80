//! Broker and database outages, made by cutting this test's own TCP proxy in
//! front of the real services (the machine's services are never touched).

use std::time::Duration;

use shutoff_testkit::TcpProxy;
use shutoff_testkit::app::{self, Options, fault, spawn_with};
use sqlx::PgPool;

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn with_the_broker_down_a_stop_is_still_accepted_and_relayed_when_it_returns(pool: PgPool) {
    let broker = TcpProxy::start("127.0.0.1:5672").await;
    broker.cut();
    let app = spawn_with(
        pool,
        Options {
            amqp_url: Some(broker.amqp_url()),
            ..Options::default()
        },
    )
    .await;
    let id = app.server("web-1").await;

    assert_eq!(app.stop(id).await.status().as_u16(), 202);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(app.env.job_state(id).await.as_deref(), Some("queued"));
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status().as_u16(), 503, "not ready without the broker");

    broker.restore();
    assert!(
        app.stopped(id, Duration::from_secs(30)).await,
        "relay never published the job"
    );
    assert_eq!(app.env.job_state(id).await.as_deref(), Some("succeeded"));
    app.shut_down().await;
}

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn with_the_database_down_a_stop_is_503_and_accepted_once_it_returns(pool: PgPool) {
    let db = TcpProxy::start("127.0.0.1:5432").await;
    let proxied = db.database_url(&pool);
    let app = spawn_with(
        pool,
        Options {
            database_url: Some(proxied),
            ..Options::default()
        },
    )
    .await;
    let id = app.server("web-1").await;

    db.cut();
    let msg = fault(app.stop(id).await, 503, "serviceUnavailable").await;
    assert!(msg.contains("database"), "{msg}");
    assert_eq!(app.count("SELECT count(*) FROM jobs").await, 0);

    db.restore();
    let accepted = app
        .env
        .eventually(Duration::from_secs(15), || async {
            app.stop(id).await.status().as_u16() == 202
        })
        .await;
    assert!(accepted);
    assert!(app.stopped(id, Duration::from_secs(15)).await);
    app.shut_down().await;
}

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn a_confirmed_publish_is_recorded_and_never_relayed_again(pool: PgPool) {
    // No worker: the message stays in the queue for us to count.
    let app = app::spawn_api_only(pool).await;
    let ids = [app.server("a").await, app.server("b").await];
    for id in ids {
        assert_eq!(app.stop(id).await.status().as_u16(), 202);
    }
    let recorded = app
        .env
        .eventually(Duration::from_secs(10), || async {
            app.count(
                "SELECT count(*) FROM jobs WHERE state = 'queued' AND published_at IS NOT NULL",
            )
            .await
                == 2
        })
        .await;
    assert!(recorded, "published_at not set after the broker's confirm");
    // Past the relay's minimum age and several of its passes: still one
    // message per stop, and no state change besides the insert.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let queue = app.env.work_queue();
    assert_eq!(app.env.ready_messages(&queue).await, 2);
    assert_eq!(
        app.count("SELECT count(*) FROM job_transitions").await,
        2,
        "only the two inserts"
    );
    app.shut_down().await;
}
