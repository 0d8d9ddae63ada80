//! The stop action, row by row of the spec's response table, against the real
//! PostgreSQL and RabbitMQ.

use shutoff_core::state::{TaskState, VmState};
use std::time::Duration;

use shutoff_core::store::admin;
use shutoff_testkit::app::{self, fault, spawn, spawn_api_only};
use sqlx::PgPool;
use uuid::Uuid;

const STOP: &str = r#"{"os-stop": null}"#;

/// Nothing was written for a refused stop: no action, no job, task_state still NULL.
async fn assert_untouched(app: &app::TestApp, id: Uuid) {
    let (_, task, _) = app.instance_state(id).await;
    assert_eq!(task, None);
    assert_eq!(app.count("SELECT count(*) FROM jobs").await, 0);
    assert_eq!(app.count("SELECT count(*) FROM instance_actions").await, 0);
}

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn an_accepted_stop_is_202_and_ends_with_the_server_shutoff(pool: PgPool) {
    let app = spawn(pool).await;
    let id = app.server("web-1").await;

    let resp = app.stop(id).await;

    assert_eq!(resp.status().as_u16(), 202);
    let rid = resp.headers()["x-compute-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(
        resp.headers()["x-openstack-request-id"].to_str().unwrap(),
        rid
    );
    assert!(resp.text().await.unwrap().is_empty());
    assert!(
        app.stopped(id, Duration::from_secs(15)).await,
        "server never stopped"
    );
    assert_eq!(app.instance_state(id).await, ("stopped".into(), None, 4));
    let (state, attempts, request_id): (String, i32, String) =
        sqlx::query_as("SELECT state, attempts, request_id FROM jobs WHERE instance_uuid = $1")
            .bind(id)
            .fetch_one(&app.env.pool)
            .await
            .unwrap();
    assert_eq!(
        (state.as_str(), attempts, request_id.as_str()),
        ("succeeded", 1, rid.as_str())
    );
    let (result, finished): (String, bool) = sqlx::query_as(
        "SELECT e.result, e.finish_time IS NOT NULL FROM instance_actions_events e
           JOIN instance_actions a ON a.id = e.action_id
          WHERE a.request_id = $1 AND a.action = 'stop' AND e.event = 'compute_stop_instance'",
    )
    .bind(&rid)
    .fetch_one(&app.env.pool)
    .await
    .unwrap();
    assert_eq!((result.as_str(), finished), ("Success", true));
    let path: Vec<String> = sqlx::query_scalar(
        "SELECT t.to_state FROM job_transitions t JOIN jobs j ON j.id = t.job_id
          WHERE j.request_id = $1 ORDER BY t.id",
    )
    .bind(&rid)
    .fetch_all(&app.env.pool)
    .await
    .unwrap();
    // `published` may be recorded after `running` when the worker is faster
    // than the batched mark; it is then skipped, as it must be.
    assert_eq!(path.first().map(String::as_str), Some("queued"));
    assert_eq!(path.last().map(String::as_str), Some("succeeded"));
    assert!(path.contains(&"running".to_string()));
    app.shut_down().await;
}

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn missing_unknown_and_expired_tokens_are_401(pool: PgPool) {
    let app = spawn_api_only(pool).await;
    let id = app.server("web-1").await;
    let (p, s) = (app.project.to_string(), id.to_string());
    let expired = admin::create_token(
        &app.env.pool,
        &app.project,
        "u",
        &["member".into()],
        chrono::Utc::now() - chrono::Duration::seconds(1),
    )
    .await
    .unwrap();

    for token in [None, Some("not-a-token"), Some(expired.as_str())] {
        let msg = fault(app.action(&p, &s, token, STOP).await, 401, "unauthorized").await;
        assert!(msg.contains("authentication"), "{msg}");
    }
    assert_untouched(&app, id).await;
    app.shut_down().await;
}

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn a_url_project_other_than_the_tokens_is_400_with_novas_message(pool: PgPool) {
    let app = spawn_api_only(pool).await;
    let id = app.server("web-1").await;
    let other = "295f0b8574504834bd6249d91dbd5a9c";

    let msg = fault(
        app.action(other, &id.to_string(), Some(&app.token), STOP)
            .await,
        400,
        "badRequest",
    )
    .await;

    assert_eq!(
        msg,
        format!(
            "Malformed request URL: URL's project_id '{other}' doesn't match Context's project_id '{}'",
            app.project
        )
    );
    assert_untouched(&app, id).await;
    app.shut_down().await;
}

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn a_disabled_or_deleted_project_is_404(pool: PgPool) {
    let app = spawn_api_only(pool).await;
    let id = app.server("web-1").await;
    admin::set_project_enabled(&app.env.pool, &app.project, false)
        .await
        .unwrap();

    let msg = fault(app.stop(id).await, 404, "itemNotFound").await;
    assert_eq!(msg, format!("Project {} could not be found.", app.project));

    admin::set_project_enabled(&app.env.pool, &app.project, true)
        .await
        .unwrap();
    sqlx::query("UPDATE projects SET deleted_at = now()")
        .execute(&app.env.pool)
        .await
        .unwrap();
    fault(app.stop(id).await, 404, "itemNotFound").await;
    assert_untouched(&app, id).await;
    app.shut_down().await;
}

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn unknown_malformed_and_other_projects_servers_are_404(pool: PgPool) {
    let app = spawn_api_only(pool).await;
    let other_project = app.env.project().await;
    let foreign = app
        .env
        .server(admin::NewServer::new(&other_project, "theirs"))
        .await;
    let p = app.project.to_string();

    for server in [
        Uuid::new_v4().to_string(),
        "not-a-uuid".into(),
        foreign.to_string(),
    ] {
        let msg = fault(
            app.action(&p, &server, Some(&app.token), STOP).await,
            404,
            "itemNotFound",
        )
        .await;
        assert_eq!(msg, format!("Instance {server} could not be found."));
    }
    assert_untouched(&app, foreign).await;
    app.shut_down().await;
}

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn a_reader_is_403_but_an_admin_may_stop_any_projects_server(pool: PgPool) {
    let app = spawn(pool).await;
    let id = app.server("web-1").await;
    let reader = app.env.token(&app.project, &["reader"]).await;
    let p = app.project.to_string();

    let msg = fault(
        app.action(&p, &id.to_string(), Some(&reader), STOP).await,
        403,
        "forbidden",
    )
    .await;
    assert_eq!(
        msg,
        "Policy doesn't allow os_compute_api:servers:stop to be performed."
    );
    // A reader asking for a server that does not exist still learns only 404.
    fault(
        app.action(&p, &Uuid::new_v4().to_string(), Some(&reader), STOP)
            .await,
        404,
        "itemNotFound",
    )
    .await;
    assert_untouched(&app, id).await;

    let admin_project = app.env.project().await;
    let admin_token = app
        .env
        .token(&admin_project, &["admin", "member", "reader"])
        .await;
    let resp = app
        .action(
            admin_project.as_str(),
            &id.to_string(),
            Some(&admin_token),
            STOP,
        )
        .await;
    assert_eq!(resp.status().as_u16(), 202);
    assert!(app.stopped(id, Duration::from_secs(15)).await);
    app.shut_down().await;
}

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn vm_states_other_than_active_or_error_are_409_and_error_is_stoppable(pool: PgPool) {
    let app = spawn(pool).await;
    for state in ["stopped", "building", "paused", "suspended", "shelved"] {
        let id = app
            .server_with(|s| s.vm_state = VmState::parse(state).unwrap())
            .await;
        let msg = fault(app.stop(id).await, 409, "conflictingRequest").await;
        assert_eq!(
            msg,
            format!("Cannot 'stop' instance {id} while it is in vm_state {state}")
        );
        assert_eq!(app.instance_state(id).await.1, None);
    }
    assert_eq!(app.count("SELECT count(*) FROM jobs").await, 0);

    let errored = app.server_with(|s| s.vm_state = VmState::Error).await;
    assert_eq!(app.stop(errored).await.status().as_u16(), 202);
    assert!(app.stopped(errored, Duration::from_secs(15)).await);
    app.shut_down().await;
}

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn a_locked_server_is_409_for_a_member_but_not_for_an_admin(pool: PgPool) {
    let app = spawn_api_only(pool).await;
    let id = app.server_with(|s| s.locked = true).await;

    let msg = fault(app.stop(id).await, 409, "conflictingRequest").await;
    assert_eq!(msg, format!("Instance {id} is locked"));
    assert_untouched(&app, id).await;

    let admin_token = app.env.token(&app.project, &["admin"]).await;
    let resp = app
        .action(
            app.project.as_str(),
            &id.to_string(),
            Some(&admin_token),
            STOP,
        )
        .await;
    assert_eq!(resp.status().as_u16(), 202);
    app.shut_down().await;
}

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn a_task_in_progress_or_a_server_never_launched_is_400(pool: PgPool) {
    let app = spawn_api_only(pool).await;
    let busy = app
        .server_with(|s| s.task_state = Some(TaskState::parse("rebooting")))
        .await;
    let unlaunched = app.server_with(|s| s.launched = false).await;

    let msg = fault(app.stop(busy).await, 400, "badRequest").await;
    assert_eq!(
        msg,
        format!("Cannot 'stop' instance {busy} while it is in task_state rebooting")
    );
    let msg = fault(app.stop(unlaunched).await, 400, "badRequest").await;
    assert_eq!(
        msg,
        format!("Cannot 'stop' instance {unlaunched} while it is in launched_at None")
    );
    assert_eq!(
        app.instance_state(busy).await.1.as_deref(),
        Some("rebooting")
    );
    assert_eq!(app.count("SELECT count(*) FROM jobs").await, 0);
    app.shut_down().await;
}

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn malformed_bodies_are_400_and_oversized_ones_413_and_change_nothing(pool: PgPool) {
    let app = spawn_api_only(pool).await;
    let id = app.server("web-1").await;
    let (p, s) = (app.project.to_string(), id.to_string());

    for body in [
        "",
        "not json",
        "[]",
        "null",
        "{}",
        r#"{"os-stop": null, "os-start": null}"#,
    ] {
        let msg = fault(
            app.action(&p, &s, Some(&app.token), body).await,
            400,
            "badRequest",
        )
        .await;
        assert_eq!(msg, "Malformed request body", "body {body:?}");
    }
    let msg = fault(
        app.action(&p, &s, Some(&app.token), r#"{"reboot": {"type": "HARD"}}"#)
            .await,
        400,
        "badRequest",
    )
    .await;
    assert_eq!(msg, "There is no such action: reboot");
    let huge = format!(r#"{{"os-stop": "{}"}}"#, "x".repeat(1 << 20));
    fault(
        app.action(&p, &s, Some(&app.token), &huge).await,
        413,
        "overLimit",
    )
    .await;

    assert_untouched(&app, id).await;
    app.shut_down().await;
}

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn of_twenty_concurrent_stops_of_one_server_exactly_one_is_accepted(pool: PgPool) {
    let app = spawn_api_only(pool).await;
    let id = app.server("web-1").await;

    let responses = futures::future::join_all((0..20).map(|_| app.stop(id))).await;

    let mut statuses: Vec<u16> = responses.iter().map(|r| r.status().as_u16()).collect();
    statuses.sort();
    assert_eq!(statuses[0], 202);
    assert!(statuses[1..].iter().all(|s| *s == 400), "{statuses:?}");
    for resp in responses.into_iter().filter(|r| r.status().as_u16() == 400) {
        let msg = fault(resp, 400, "badRequest").await;
        assert_eq!(
            msg,
            format!("Cannot 'stop' instance {id} while it is in task_state powering-off")
        );
    }
    assert_eq!(app.count("SELECT count(*) FROM jobs").await, 1);
    assert_eq!(app.count("SELECT count(*) FROM instance_actions").await, 1);
    app.shut_down().await;
}

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn every_response_carries_one_request_id_and_errors_a_fault_body(pool: PgPool) {
    let app = spawn_api_only(pool).await;
    let resp = app
        .client
        .get(app.url("/no/such/thing"))
        .send()
        .await
        .unwrap();
    let msg = fault(resp, 404, "itemNotFound").await;
    assert_eq!(msg, "The resource could not be found.");
    let resp = app
        .client
        .delete(app.url(&format!(
            "/v2/{}/servers/{}/action",
            app.project,
            Uuid::new_v4()
        )))
        .send()
        .await
        .unwrap();
    fault(resp, 405, "badMethod").await;
    // A URL that does not even decode, and a query of the wrong type, still
    // get fault bodies.
    let resp = app
        .action(app.project.as_str(), "%FF", Some(&app.token), STOP)
        .await;
    fault(resp, 404, "itemNotFound").await;
    let resp = app
        .get(&format!("/v2/{}/servers?limit=lots", app.project))
        .await;
    let msg = fault(resp, 400, "badRequest").await;
    assert!(msg.starts_with("Invalid query string"), "{msg}");
    let a = app.client.get(app.url("/v2")).send().await.unwrap();
    let b = app.client.get(app.url("/v2")).send().await.unwrap();
    let (a, b) = (
        &a.headers()["x-compute-request-id"],
        &b.headers()["x-compute-request-id"],
    );
    assert_ne!(a, b, "each request gets its own id");
    app.shut_down().await;
}
