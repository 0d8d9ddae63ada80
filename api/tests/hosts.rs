//! Where servers run, for admins only, as Nova's policies have it: the
//! `OS-EXT-SRV-ATTR:host` and `OS-EXT-SRV-ATTR:hypervisor_hostname` of the
//! server document, and the `host` filter of the server lists
//! (`openstack server list --host`).

use std::collections::BTreeSet;

use reqwest::Response;
use serde_json::Value;
use shutoff_testkit::app::{TestApp, fault, spawn_api_only};
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

/// The ids a list (`servers` or `servers/detail`) shows for `query`.
async fn listed(app: &TestApp, token: &str, list: &str, query: &str) -> BTreeSet<String> {
    let doc = json_as(app, token, &format!("/v2/{}/{list}{query}", app.project)).await;
    doc["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

fn ids(servers: &[Uuid]) -> BTreeSet<String> {
    servers.iter().map(Uuid::to_string).collect()
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

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn an_admins_host_filter_lists_only_that_hosts_servers_of_the_project(pool: PgPool) {
    let app = spawn_api_only(pool).await;
    let a1 = server_on(&app, "a-1", "compute-a").await;
    let a2 = server_on(&app, "a-2", "compute-a").await;
    let b1 = server_on(&app, "b-1", "compute-b").await;
    // Another project's server on the same host stays out of this project's list.
    let other = app.env.project().await;
    let mut theirs = shutoff_core::store::admin::NewServer::new(&other, "a-3");
    theirs.host = "compute-a".into();
    app.env.server(theirs).await;
    let admin = admin(&app).await;

    for list in ["servers", "servers/detail"] {
        let on = |q: &'static str| listed(&app, &admin, list, q);
        assert_eq!(on("?host=compute-a").await, ids(&[a1, a2]), "{list}");
        assert_eq!(on("?host=compute-b").await, ids(&[b1]), "{list}");
        // An exact match, as Nova's: no prefix or substring.
        assert_eq!(on("?host=compute").await, ids(&[]), "{list}");
        assert_eq!(on("?host=compute-a&name=a-2").await, ids(&[a2]), "{list}");
        assert_eq!(on("").await, ids(&[a1, a2, b1]), "{list}");
    }
    let detail = json_as(
        &app,
        &admin,
        &format!("/v2/{}/servers/detail?host=compute-b", app.project),
    )
    .await;
    assert_eq!(detail["servers"][0][HOST], "compute-b");
    app.shut_down().await;
}

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn a_members_host_filter_is_ignored(pool: PgPool) {
    let app = spawn_api_only(pool).await;
    let a1 = server_on(&app, "a-1", "compute-a").await;
    let b1 = server_on(&app, "b-1", "compute-b").await;

    for list in ["servers", "servers/detail"] {
        let unfiltered = listed(&app, &app.token, list, "").await;
        assert_eq!(unfiltered, ids(&[a1, b1]), "{list}");
        for q in ["?host=compute-a", "?host=compute-b", "?host=nowhere"] {
            assert_eq!(
                listed(&app, &app.token, list, q).await,
                unfiltered,
                "{list}{q}"
            );
        }
    }
    app.shut_down().await;
}

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn an_empty_over_long_or_nul_host_is_a_400_fault(pool: PgPool) {
    let app = spawn_api_only(pool).await;
    // On an ordinary host: instances may hold only host names a queue name
    // can carry, so the 255-character filters below match nothing, but they
    // are filters, not 400s.
    server_on(&app, "web-1", "compute-a").await;
    let admin = admin(&app).await;
    let p = app.project.to_string();

    for list in ["servers", "servers/detail"] {
        let too_long = "h".repeat(256);
        let msg = fault(
            get_as(&app, &admin, &format!("/v2/{p}/{list}?host={too_long}")).await,
            400,
            "badRequest",
        )
        .await;
        assert_eq!(
            msg,
            "Invalid input for query parameters host: the value is 256 characters long; \
             a host name is 1 to 255 characters, without NUL."
        );
        let msg = fault(
            get_as(&app, &admin, &format!("/v2/{p}/{list}?host=")).await,
            400,
            "badRequest",
        )
        .await;
        assert!(msg.contains("the value is empty"), "{msg}");
        let msg = fault(
            get_as(&app, &admin, &format!("/v2/{p}/{list}?host=a%00b")).await,
            400,
            "badRequest",
        )
        .await;
        assert!(msg.contains("the value contains NUL"), "{msg}");
        // Checked for every caller, though only an admin's filter applies.
        let msg = fault(
            get_as(&app, &app.token, &format!("/v2/{p}/{list}?host={too_long}")).await,
            400,
            "badRequest",
        )
        .await;
        assert!(msg.contains("256 characters"), "{msg}");

        // 255 characters is a host name; so are 255 two-byte ones.
        let longest = "h".repeat(255);
        let wide = "%C3%A9".repeat(255);
        for host in [&longest, &wide] {
            assert_eq!(
                listed(&app, &admin, list, &format!("?host={host}")).await,
                ids(&[]),
                "{list}"
            );
        }
    }
    app.shut_down().await;
}
