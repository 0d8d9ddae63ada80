//! Where servers run, for admins only, as Nova's policies have it: the
//! `OS-EXT-SRV-ATTR:host` and `OS-EXT-SRV-ATTR:hypervisor_hostname` of the
//! server document.

use reqwest::Response;
use serde_json::Value;
use shutoff_testkit::app::{TestApp, spawn_api_only};
use sqlx::PgPool;
use uuid::Uuid;

const HOST: &str = "OS-EXT-SRV-ATTR:host";
const HYPERVISOR: &str = "OS-EXT-SRV-ATTR:hypervisor_hostname";

async fn get_as(app: &TestApp, token: &str, path: &str) -> Response {
    app.client
        .get(app.url(path))
        .header("x-auth-token", token)
        .send()
        .await
        .unwrap()
}

async fn json_as(app: &TestApp, token: &str, path: &str) -> Value {
    let resp = get_as(app, token, path).await;
    assert_eq!(resp.status().as_u16(), 200, "GET {path}");
    resp.json().await.unwrap()
}

/// An admin token of the app's project.
async fn admin(app: &TestApp) -> String {
    app.env.token(&app.project, &["admin"]).await
}

async fn server_on(app: &TestApp, name: &str, host: &str) -> Uuid {
    app.server_with(|s| {
        s.name = name.into();
        s.host = host.into();
    })
    .await
}

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn an_admin_sees_the_host_of_a_server_in_its_document(pool: PgPool) {
    let app = spawn_api_only(pool).await;
    let id = server_on(&app, "web-1", "compute-7").await;
    let admin = admin(&app).await;

    let show = json_as(&app, &admin, &format!("/v2/{}/servers/{id}", app.project)).await;
    let detail = json_as(&app, &admin, &format!("/v2/{}/servers/detail", app.project)).await;
    for s in [&show["server"], &detail["servers"][0]] {
        assert_eq!(s["id"], id.to_string());
        assert_eq!(s[HOST], "compute-7", "{s}");
        assert_eq!(s[HYPERVISOR], "compute-7", "{s}");
    }
    app.shut_down().await;
}

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn a_member_sees_no_host_keys_at_all_not_even_null(pool: PgPool) {
    let app = spawn_api_only(pool).await;
    let id = server_on(&app, "web-1", "compute-7").await;
    let reader = app.env.token(&app.project, &["reader"]).await;

    for token in [&app.token, &reader] {
        let show = json_as(&app, token, &format!("/v2/{}/servers/{id}", app.project)).await;
        let detail = json_as(&app, token, &format!("/v2/{}/servers/detail", app.project)).await;
        for s in [&show["server"], &detail["servers"][0]] {
            let s = s.as_object().unwrap();
            assert_eq!(s["id"], id.to_string());
            assert!(!s.contains_key(HOST), "{s:?}");
            assert!(!s.contains_key(HYPERVISOR), "{s:?}");
            assert!(
                s.keys().all(|k| !k.starts_with("OS-EXT-SRV-ATTR:")),
                "{s:?}"
            );
        }
    }
    app.shut_down().await;
}
