//! `GET /servers[/detail]` takes what `openstack server list` and the SDK
//! send, as Nova does: pages (`limit`, `marker`, `servers_links`), `status`,
//! `changes-since`, `all_tenants` (admins), `sort_key` / `sort_dir`.

use serde_json::Value;
use shutoff_core::state::VmState;
use shutoff_testkit::app::{TestApp, fault, spawn_api_only};
use sqlx::PgPool;

async fn names(app: &TestApp, token: &str, query: &str) -> Vec<String> {
    let resp = app
        .client
        .get(app.url(&format!("/v2/{}/servers/detail?{query}", app.project)))
        .header("x-auth-token", token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200, "{query}");
    let doc: Value = resp.json().await.unwrap();
    doc["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect()
}

async fn get(app: &TestApp, token: &str, path_and_query: &str) -> reqwest::Response {
    app.client
        .get(app.url(path_and_query))
        .header("x-auth-token", token)
        .send()
        .await
        .unwrap()
}

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn pages_follow_servers_links_until_the_last_one(pool: PgPool) {
    let app = spawn_api_only(pool).await;
    for i in 0..5 {
        app.server(&format!("page-{i}")).await;
    }
    let newest_first = names(&app, &app.token, "").await;
    assert_eq!(
        newest_first,
        ["page-4", "page-3", "page-2", "page-1", "page-0"]
    );

    for detail in ["", "/detail"] {
        let mut url = app.url(&format!(
            "/v2/{}/servers{detail}?limit=2&name=page",
            app.project
        ));
        let mut seen = Vec::new();
        let mut pages = 0;
        loop {
            let resp = app
                .client
                .get(&url)
                .header("x-auth-token", &app.token)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status().as_u16(), 200);
            let doc: Value = resp.json().await.unwrap();
            pages += 1;
            for s in doc["servers"].as_array().unwrap() {
                seen.push(s["name"].as_str().unwrap().to_string());
            }
            match doc.get("servers_links") {
                Some(links) => {
                    assert_eq!(links[0]["rel"], "next");
                    url = links[0]["href"].as_str().unwrap().to_string();
                    assert!(
                        url.contains("limit=2") && url.contains("name=page"),
                        "{url}"
                    );
                    assert!(
                        url.starts_with(&format!(
                            "http://{}/v2/{}/servers{detail}?",
                            app.addr, app.project
                        )),
                        "{url}"
                    );
                }
                None => break,
            }
        }
        assert_eq!(seen, newest_first, "{detail}");
        assert_eq!(pages, 3, "2 + 2 + 1");
    }

    let unknown = "00000000-0000-4000-8000-000000000000";
    for marker in [unknown, "not-a-uuid"] {
        let resp = get(
            &app,
            &app.token,
            &format!("/v2/{}/servers?marker={marker}", app.project),
        )
        .await;
        assert_eq!(
            fault(resp, 400, "badRequest").await,
            format!("marker [{marker}] not found")
        );
    }
    // Another project's server is no marker for a member.
    let other = app.env.project().await;
    let theirs = app
        .env
        .server(shutoff_core::store::admin::NewServer::new(&other, "theirs"))
        .await;
    let resp = get(
        &app,
        &app.token,
        &format!("/v2/{}/servers?marker={theirs}", app.project),
    )
    .await;
    fault(resp, 400, "badRequest").await;
    let resp = get(
        &app,
        &app.token,
        &format!("/v2/{}/servers?limit=-1", app.project),
    )
    .await;
    fault(resp, 400, "badRequest").await;
    assert!(names(&app, &app.token, "limit=0").await.is_empty());
    app.shut_down().await;
}

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn status_changes_since_and_sort_filter_as_nova_does(pool: PgPool) {
    let app = spawn_api_only(pool).await;
    app.server("b-active").await;
    app.server_with(|s| {
        s.name = "a-off".into();
        s.vm_state = VmState::Stopped;
    })
    .await;
    app.server_with(|s| {
        s.name = "c-error".into();
        s.vm_state = VmState::Error;
    })
    .await;

    assert_eq!(names(&app, &app.token, "status=SHUTOFF").await, ["a-off"]);
    assert_eq!(names(&app, &app.token, "status=shutoff").await, ["a-off"]);
    assert_eq!(names(&app, &app.token, "status=ERROR").await, ["c-error"]);
    assert!(
        names(&app, &app.token, "status=NO-SUCH").await.is_empty(),
        "Nova 2.1: an empty list"
    );
    let resp = get(
        &app,
        &app.token,
        &format!("/v2/{}/servers?status=DELETED", app.project),
    )
    .await;
    assert_eq!(
        fault(resp, 403, "forbidden").await,
        "Only administrators may list deleted instances"
    );

    assert_eq!(
        names(&app, &app.token, "sort_key=display_name&sort_dir=asc").await,
        ["a-off", "b-active", "c-error"]
    );
    assert_eq!(
        names(&app, &app.token, "sort_key=display_name").await,
        ["c-error", "b-active", "a-off"]
    );
    for bad in [
        "sort_key=password",
        "sort_dir=sideways",
        "changes-since=yesterday",
        "all_tenants=maybe",
    ] {
        let resp = get(
            &app,
            &app.token,
            &format!("/v2/{}/servers?{bad}", app.project),
        )
        .await;
        let msg = fault(resp, 400, "badRequest").await;
        assert!(
            msg.starts_with("Invalid input for query parameters"),
            "{bad}: {msg}"
        );
    }

    assert_eq!(
        names(&app, &app.token, "changes-since=2000-01-01T00:00:00Z")
            .await
            .len(),
        3
    );
    assert_eq!(
        names(&app, &app.token, "changes-since=2000-01-01")
            .await
            .len(),
        3
    );
    assert!(
        names(&app, &app.token, "changes-since=2999-01-01T00:00:00")
            .await
            .is_empty()
    );
    app.shut_down().await;
}

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn only_admins_list_every_projects_servers(pool: PgPool) {
    let app = spawn_api_only(pool).await;
    app.server("mine").await;
    let other = app.env.project().await;
    app.env
        .server(shutoff_core::store::admin::NewServer::new(&other, "theirs"))
        .await;

    for (value, op) in [("", "detail"), ("True", "detail"), ("1", "detail")] {
        let resp = get(
            &app,
            &app.token,
            &format!("/v2/{}/servers/detail?all_tenants={value}", app.project),
        )
        .await;
        let msg = fault(resp, 403, "forbidden").await;
        assert_eq!(
            msg,
            format!(
                "Policy doesn't allow os_compute_api:servers:{op}:get_all_tenants to be performed."
            )
        );
    }
    let resp = get(
        &app,
        &app.token,
        &format!("/v2/{}/servers?all_tenants=yes", app.project),
    )
    .await;
    assert!(
        fault(resp, 403, "forbidden")
            .await
            .contains("servers:index:get_all_tenants")
    );
    assert_eq!(names(&app, &app.token, "all_tenants=False").await, ["mine"]);

    let admin = app.env.token(&app.project, &["admin"]).await;
    assert_eq!(
        names(&app, &admin, "").await,
        ["mine"],
        "an admin's list is its project's"
    );
    let mut all = names(&app, &admin, "all_tenants=True").await;
    all.sort();
    assert_eq!(all, ["mine", "theirs"]);
    app.shut_down().await;
}

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn admins_filter_by_project_user_and_states_and_unsupported_filters_are_refused(
    pool: PgPool,
) {
    let app = spawn_api_only(pool).await;
    app.server("on").await;
    app.server_with(|s| {
        s.name = "off".into();
        s.vm_state = VmState::Stopped;
        s.user_id = "bob".into();
    })
    .await;
    let other = app.env.project().await;
    app.env
        .server(shutoff_core::store::admin::NewServer::new(&other, "theirs"))
        .await;
    let admin = app.env.token(&app.project, &["admin"]).await;

    let q = |s: &str| format!("all_tenants=1&{s}");
    assert_eq!(
        names(&app, &admin, &q(&format!("project_id={other}"))).await,
        ["theirs"]
    );
    assert_eq!(
        names(&app, &admin, &q(&format!("tenant_id={other}"))).await,
        ["theirs"]
    );
    assert_eq!(names(&app, &admin, &q("user_id=bob")).await, ["off"]);
    assert_eq!(names(&app, &admin, &q("vm_state=stopped")).await, ["off"]);
    assert_eq!(names(&app, &admin, &q("power_state=4")).await, ["off"]);
    assert_eq!(
        names(&app, &admin, &q("status=ACTIVE&vm_state=stopped")).await,
        Vec::<String>::new()
    );
    assert!(
        names(&app, &admin, "deleted=True").await.is_empty(),
        "nothing deleted yet"
    );
    assert_eq!(names(&app, &admin, "deleted=False").await.len(), 2);
    // A member's admin-only filters are ignored, as Nova drops them.
    assert_eq!(
        names(
            &app,
            &app.token,
            "vm_state=stopped&user_id=bob&deleted=True"
        )
        .await
        .len(),
        2
    );

    for key in [
        "ip",
        "image",
        "flavor",
        "availability_zone",
        "locked",
        "changes-before",
    ] {
        let resp = get(
            &app,
            &app.token,
            &format!("/v2/{}/servers?{key}=x", app.project),
        )
        .await;
        let msg = fault(resp, 400, "badRequest").await;
        assert!(
            msg.starts_with(&format!("Invalid filter field: {key}.")),
            "{msg}"
        );
    }
    app.shut_down().await;
}
