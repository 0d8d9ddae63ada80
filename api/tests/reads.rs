//! What clients read: version documents, server documents, name lookups,
//! instance actions with the worker's events, health.

use std::time::Duration;

use serde_json::Value;
use shutoff_testkit::app::{fault, spawn, spawn_api_only};
use sqlx::PgPool;

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn version_documents_need_no_token_and_have_a_status(pool: PgPool) {
    let app = spawn_api_only(pool).await;
    for path in [
        "/v2".to_string(),
        "/v2/".into(),
        format!("/v2/{}", app.project),
    ] {
        let resp = app.client.get(app.url(&path)).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 200, "{path}");
        let doc: Value = resp.json().await.unwrap();
        assert_eq!(doc["version"]["id"], "v2.0");
        assert_eq!(doc["version"]["status"], "SUPPORTED");
        assert_eq!(doc["version"]["links"][0]["rel"], "self");
    }
    app.shut_down().await;
}

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn a_server_document_has_what_clients_read_and_follows_the_stop(pool: PgPool) {
    let app = spawn(pool).await;
    let id = app.server("db-1").await;
    let path = format!("/v2/{}/servers/{id}", app.project);

    let doc: Value = app.get(&path).await.json().await.unwrap();
    let s = &doc["server"];
    assert_eq!(s["id"], id.to_string());
    assert_eq!(s["name"], "db-1");
    assert_eq!(s["status"], "ACTIVE");
    assert_eq!(s["OS-EXT-STS:vm_state"], "active");
    assert_eq!(s["OS-EXT-STS:task_state"], Value::Null);
    assert_eq!(s["OS-EXT-STS:power_state"], 1);
    assert!(s["OS-SRV-USG:launched_at"].is_string());
    assert_eq!(s["tenant_id"], app.project.to_string());
    assert_eq!(s["locked"], false);
    assert!(
        s["flavor"].is_object(),
        "flavor must be an object for the CLI"
    );
    assert!(s["links"].is_array() && s["updated"].is_string() && s["user_id"].is_string());

    assert_eq!(app.stop(id).await.status().as_u16(), 202);
    assert!(app.stopped(id, Duration::from_secs(15)).await);
    let doc: Value = app.get(&path).await.json().await.unwrap();
    assert_eq!(doc["server"]["status"], "SHUTOFF");
    assert_eq!(doc["server"]["OS-EXT-STS:power_state"], 4);
    app.shut_down().await;
}

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn servers_are_found_by_name_as_clients_do_it(pool: PgPool) {
    let app = spawn_api_only(pool).await;
    let id = app.server("web-1").await;
    app.server("db-1").await;
    let other = app.env.project().await;
    app.env
        .server(shutoff_core::store::admin::NewServer::new(&other, "web-1"))
        .await;

    // A name where an id goes is 404, so clients fall back to the name filter.
    let msg = fault(
        app.get(&format!("/v2/{}/servers/web-1", app.project)).await,
        404,
        "itemNotFound",
    )
    .await;
    assert_eq!(msg, "Instance web-1 could not be found.");
    for list in ["servers", "servers/detail"] {
        let doc: Value = app
            .get(&format!("/v2/{}/{list}?name=web-1", app.project))
            .await
            .json()
            .await
            .unwrap();
        let servers = doc["servers"].as_array().unwrap();
        assert_eq!(servers.len(), 1, "{list}: {doc}");
        assert_eq!(servers[0]["id"], id.to_string());
    }
    let all: Value = app
        .get(&format!("/v2/{}/servers", app.project))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(all["servers"].as_array().unwrap().len(), 2);
    let mismatch = app
        .get("/v2/295f0b8574504834bd6249d91dbd5a9c/servers")
        .await;
    fault(mismatch, 400, "badRequest").await;
    app.shut_down().await;
}

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn instance_actions_show_the_stop_and_its_event(pool: PgPool) {
    let app = spawn(pool).await;
    let id = app.server("web-1").await;
    let resp = app.stop(id).await;
    let rid = resp.headers()["x-compute-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(app.stopped(id, Duration::from_secs(15)).await);

    let list: Value = app
        .get(&format!(
            "/v2/{}/servers/{id}/os-instance-actions",
            app.project
        ))
        .await
        .json()
        .await
        .unwrap();
    let actions = list["instanceActions"].as_array().unwrap();
    assert_eq!(actions.len(), 1);
    assert_eq!(actions[0]["action"], "stop");
    assert_eq!(actions[0]["request_id"], rid);

    let show: Value = app
        .get(&format!(
            "/v2/{}/servers/{id}/os-instance-actions/{rid}",
            app.project
        ))
        .await
        .json()
        .await
        .unwrap();
    let event = &show["instanceAction"]["events"][0];
    assert_eq!(event["event"], "compute_stop_instance");
    assert_eq!(event["result"], "Success");
    assert!(event["finish_time"].is_string());

    let missing = app
        .get(&format!(
            "/v2/{}/servers/{id}/os-instance-actions/req-nope",
            app.project
        ))
        .await;
    fault(missing, 404, "itemNotFound").await;
    app.shut_down().await;
}

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn health_says_alive_and_ready_when_both_services_answer(pool: PgPool) {
    let app = spawn_api_only(pool).await;
    assert_eq!(
        app.client
            .get(app.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        200
    );
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status().as_u16(), 200);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["database"], true);
    assert_eq!(body["broker"], true);
    app.shut_down().await;
}
