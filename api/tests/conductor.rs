//! The whole system with a worker that holds no database connection
//! (`--via-conductor`): the API's own conductor answers its store calls.

use std::time::Duration;

use shutoff_testkit::app::spawn_api_only;
use shutoff_testkit::workers::RunningWorker;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn a_stop_through_the_api_is_carried_out_by_a_worker_via_the_apis_conductor(pool: PgPool) {
    let app = spawn_api_only(pool).await;
    let worker =
        RunningWorker::start_via_conductor(app.env.worker_settings(), CancellationToken::new())
            .await;
    // Ready: consuming, and PostgreSQL reached through the API's conductor.
    assert!(
        app.env
            .eventually(Duration::from_secs(30), || worker.is_ready())
            .await,
        "the worker never became ready through the API's conductor"
    );
    let vm = app.server("via-conductor").await;
    let resp = app.stop(vm).await;
    assert_eq!(resp.status().as_u16(), 202);
    let request_id = resp.headers()["x-openstack-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let server = app.until_shutoff(vm, Duration::from_secs(30)).await;
    assert_eq!(server["status"], "SHUTOFF");
    assert_eq!(server["OS-EXT-STS:power_state"], 4);
    let event = app.stop_event(vm, &request_id).await;
    assert_eq!(event["result"], "Success");
    let by: String = sqlx::query_scalar("SELECT worker FROM jobs WHERE instance_uuid = $1")
        .bind(vm)
        .fetch_one(&app.env.pool)
        .await
        .unwrap();
    assert_eq!(by, worker.id);
    worker.terminate().await;
    app.shut_down().await;
}
