//! The local identity service (`/identity`, local auth mode): keystoneauth's
//! discovery documents, a shutoff token exchanged for a Keystone token body
//! and catalog naming this API, validation, and Keystone's refusals in
//! Keystone's error shape; in Keystone mode it is not there.

use reqwest::Response;
use serde_json::{Value, json};
use shutoff_api::settings::AuthMode;
use shutoff_testkit::app::{Options, TestApp, fault, spawn_api_only, spawn_with};
use sqlx::PgPool;

fn token_request(token: &str, scope: Value) -> Value {
    let mut auth = json!({"identity": {"methods": ["token"], "token": {"id": token}}});
    if !scope.is_null() {
        auth["scope"] = scope;
    }
    json!({ "auth": auth })
}

async fn post_token(app: &TestApp, body: &Value) -> Response {
    app.client
        .post(app.url("/identity/v3/auth/tokens"))
        .json(body)
        .send()
        .await
        .unwrap()
}

/// Keystone's error body: `{"error": {"code", "title", "message"}}`.
async fn keystone_error(resp: Response, status: u16, title: &str) -> String {
    assert_eq!(resp.status().as_u16(), status);
    assert!(
        resp.headers()["x-openstack-request-id"]
            .to_str()
            .unwrap()
            .starts_with("req-")
    );
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], status, "{body}");
    assert_eq!(body["error"]["title"], title, "{body}");
    assert_eq!(body.as_object().unwrap().len(), 1, "{body}");
    body["error"]["message"].as_str().unwrap().to_string()
}

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn keystoneauth_discovers_v3_at_the_identity_root_and_its_version(pool: PgPool) {
    let app = spawn_api_only(pool).await;
    let resp = app.client.get(app.url("/identity")).send().await.unwrap();
    assert_eq!(
        resp.status().as_u16(),
        300,
        "Keystone's root is Multiple Choices"
    );
    let doc: Value = resp.json().await.unwrap();
    let v3 = &doc["versions"]["values"][0];
    assert_eq!(v3["id"], "v3.14");
    assert_eq!(v3["status"], "stable");
    let self_link = format!("http://{}/identity/v3/", app.addr);
    assert_eq!(v3["links"][0], json!({"rel": "self", "href": self_link}));
    for path in ["/identity/v3", "/identity/v3/"] {
        let doc: Value = app
            .client
            .get(app.url(path))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(doc["version"]["id"], "v3.14", "{path}");
        assert_eq!(doc["version"]["links"][0]["href"], self_link.as_str());
    }
    let resp = app
        .client
        .get(app.url("/identity/v3/domains"))
        .send()
        .await
        .unwrap();
    keystone_error(resp, 404, "Not Found").await;
    // No lookups of projects or users: Keystone's 403, after which the
    // clients take the name they were given as the id.
    for path in [
        "/identity/v3/projects?name=demo",
        "/identity/v3/projects/demo",
        "/identity/v3/users/bob",
    ] {
        let resp = app.client.get(app.url(path)).send().await.unwrap();
        let msg = keystone_error(resp, 403, "Forbidden").await;
        assert!(msg.contains("give their ids"), "{path}: {msg}");
    }
    let resp = app
        .client
        .delete(app.url("/identity/v3/auth/tokens"))
        .send()
        .await
        .unwrap();
    keystone_error(resp, 405, "Method Not Allowed").await;
    app.shut_down().await;
}

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn a_shutoff_token_gets_a_keystone_token_body_and_a_catalog_naming_this_api(pool: PgPool) {
    let app = spawn_api_only(pool).await;
    let project = app.project.to_string();
    for scope in [
        Value::Null,
        json!({"project": {"id": project}}),
        json!({"project": {"name": format!("p-{project}"), "domain": {"id": "default"}}}),
        json!({"project": {"name": format!("p-{project}"), "domain": {"name": "Default"}}}),
    ] {
        let resp = post_token(&app, &token_request(&app.token, scope.clone())).await;
        assert_eq!(resp.status().as_u16(), 201, "{scope}");
        assert_eq!(
            resp.headers()["x-subject-token"],
            app.token.as_str(),
            "the same token"
        );
        let body: Value = resp.json().await.unwrap();
        let t = &body["token"];
        assert_eq!(t["methods"], json!(["token"]));
        assert_eq!(t["project"]["id"], project);
        assert_eq!(t["project"]["name"], format!("p-{project}"));
        assert_eq!(t["project"]["domain"]["id"], "default");
        assert_eq!(t["user"]["id"], "user-1");
        let roles: Vec<&str> = t["roles"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        assert_eq!(roles, ["member", "reader"]);
        assert!(t["expires_at"].as_str().unwrap().ends_with('Z'));
        assert!(t["issued_at"].as_str().unwrap() < t["expires_at"].as_str().unwrap());
        assert_eq!(t["audit_ids"].as_array().unwrap().len(), 1);
        let catalog = t["catalog"].as_array().unwrap();
        let endpoints = |kind: &str| {
            let svc = catalog.iter().find(|s| s["type"] == kind).unwrap();
            svc["endpoints"].as_array().unwrap().clone()
        };
        let compute = endpoints("compute");
        let mut interfaces: Vec<&str> = compute
            .iter()
            .map(|e| e["interface"].as_str().unwrap())
            .collect();
        interfaces.sort();
        assert_eq!(interfaces, ["admin", "internal", "public"]);
        for e in &compute {
            assert_eq!(e["url"], format!("http://{}/v2/{project}", app.addr));
            assert_eq!(e["region_id"], "RegionOne");
            assert_eq!(e["region"], "RegionOne");
        }
        assert_eq!(
            endpoints("identity")[0]["url"],
            format!("http://{}/identity/v3", app.addr)
        );
    }

    // Behind a TLS proxy that passes the Host on, the catalog says https.
    let resp = app
        .client
        .post(app.url("/identity/v3/auth/tokens?nocatalog"))
        .header("host", "cloud.example:443")
        .header("x-forwarded-proto", "https")
        .json(&token_request(&app.token, Value::Null))
        .send()
        .await
        .unwrap();
    let body: Value = resp.json().await.unwrap();
    assert!(body["token"].get("catalog").is_none(), "?nocatalog");
    let resp = app
        .client
        .post(app.url("/identity/v3/auth/tokens"))
        .header("host", "cloud.example")
        .header("x-forwarded-proto", "https")
        .json(&token_request(&app.token, Value::Null))
        .send()
        .await
        .unwrap();
    let body: Value = resp.json().await.unwrap();
    let urls: Vec<&str> = body["token"]["catalog"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["endpoints"].as_array().unwrap())
        .map(|e| e["url"].as_str().unwrap())
        .collect();
    assert!(
        urls.contains(&format!("https://cloud.example/v2/{project}").as_str()),
        "{urls:?}"
    );
    assert!(
        urls.contains(&"https://cloud.example/identity/v3"),
        "{urls:?}"
    );
    app.shut_down().await;
}

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn other_scopes_methods_and_tokens_are_refused_as_keystone_refuses_them(pool: PgPool) {
    let app = spawn_api_only(pool).await;
    let www = format!("Keystone uri=\"http://{}/identity\"", app.addr);
    let other = "0123456789abcdef0123456789abcdef";

    for (scope, asked) in [
        (json!({"project": {"id": other}}), other.to_string()),
        (
            json!({"project": {"name": "demo", "domain": {"id": "default"}}}),
            "\"demo\"".into(),
        ),
        (
            json!({"project": {"name": format!("p-{}", app.project), "domain": {"id": "other"}}}),
            "of that domain".into(),
        ),
        (json!({"domain": {"id": "default"}}), "a domain".into()),
        (json!({"system": {"all": true}}), "the system".into()),
        (json!("unscoped"), "an unscoped token".into()),
    ] {
        let resp = post_token(&app, &token_request(&app.token, scope.clone())).await;
        assert_eq!(resp.headers()["www-authenticate"], www.as_str());
        let msg = keystone_error(resp, 401, "Unauthorized").await;
        assert!(
            msg.contains(&asked) && msg.contains(app.project.as_str()),
            "{scope}: {msg}"
        );
        assert!(!msg.contains(&app.token), "the token is never echoed");
    }

    let password = json!({"auth": {"identity": {"methods": ["password"], "password": {"user": {"name": "u", "domain": {"id": "default"}, "password": "hunter2"}}}}});
    let msg = keystone_error(post_token(&app, &password).await, 401, "Unauthorized").await;
    assert!(
        msg.contains("unsupported method") && !msg.contains("hunter2"),
        "{msg}"
    );

    for token in ["not-a-token", ""] {
        let resp = post_token(&app, &token_request(token, Value::Null)).await;
        let msg = keystone_error(resp, 401, "Unauthorized").await;
        assert_eq!(msg, "The request you have made requires authentication.");
    }
    let expired = app.env.token(&app.project, &["member"]).await;
    sqlx::query("UPDATE tokens SET expires_at = now() - interval '1 second' WHERE sha256 = $1")
        .bind(shutoff_core::token::hash(&expired))
        .execute(&app.env.pool)
        .await
        .unwrap();
    keystone_error(
        post_token(&app, &token_request(&expired, Value::Null)).await,
        401,
        "Unauthorized",
    )
    .await;

    for body in [
        "{",
        r#"{"auth": {"identity": {"methods": ["token"]}}}"#,
        r#"{"auth": {"identity": {"methods": ["token"], "token": {"id": "x"}}, "scope": {"project": {"name": "demo"}}}}"#,
    ] {
        let resp = app
            .client
            .post(app.url("/identity/v3/auth/tokens"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let msg = keystone_error(resp, 400, "Bad Request").await;
        assert!(msg.starts_with("Invalid authentication request"), "{msg}");
    }
    // A body over the limit: Keystone's shape too.
    let resp = app
        .client
        .post(app.url("/identity/v3/auth/tokens"))
        .header("content-type", "application/json")
        .body(vec![b' '; 64 * 1024])
        .send()
        .await
        .unwrap();
    keystone_error(resp, 413, "Payload Too Large").await;
    app.shut_down().await;
}

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn tokens_are_validated_by_their_owner_or_an_admin(pool: PgPool) {
    let app = spawn_api_only(pool).await;
    let validate = |auth: Option<String>, subject: String| {
        let mut req = app
            .client
            .get(app.url("/identity/v3/auth/tokens"))
            .header("x-subject-token", subject);
        if let Some(a) = auth {
            req = req.header("x-auth-token", a);
        }
        async move { req.send().await.unwrap() }
    };
    // Its own token: 200, the subject echoed, the same body as POST.
    let resp = validate(Some(app.token.clone()), app.token.clone()).await;
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.headers()["x-subject-token"], app.token.as_str());
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["token"]["project"]["id"], app.project.to_string());
    assert!(body["token"]["catalog"].is_array());
    let head = app
        .client
        .head(app.url("/identity/v3/auth/tokens"))
        .header("x-auth-token", &app.token)
        .header("x-subject-token", &app.token)
        .send()
        .await
        .unwrap();
    assert_eq!(head.status().as_u16(), 200);

    // An unknown subject: Keystone's 404, the token not echoed.
    let msg = keystone_error(
        validate(Some(app.token.clone()), "gone".into()).await,
        404,
        "Not Found",
    )
    .await;
    assert!(!msg.contains("gone"), "{msg}");
    // No or a bad X-Auth-Token: 401.
    keystone_error(validate(None, app.token.clone()).await, 401, "Unauthorized").await;
    keystone_error(
        validate(Some("bad".into()), app.token.clone()).await,
        401,
        "Unauthorized",
    )
    .await;

    // Another project's member may not look at this token; an admin may.
    let other = app.env.project().await;
    let stranger = app.env.token(&other, &["member"]).await;
    let msg = keystone_error(
        validate(Some(stranger), app.token.clone()).await,
        403,
        "Forbidden",
    )
    .await;
    assert!(msg.contains("identity:validate_token"), "{msg}");
    let admin = app.env.token(&other, &["admin"]).await;
    assert_eq!(
        validate(Some(admin), app.token.clone())
            .await
            .status()
            .as_u16(),
        200
    );
    app.shut_down().await;
}

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn in_keystone_mode_there_is_no_local_identity_service(pool: PgPool) {
    let app = spawn_with(
        pool,
        Options {
            with_worker: false,
            configure: Some(Box::new(|s| {
                s.auth = AuthMode::Keystone;
                // Never contacted: no request here needs a token.
                s.keystone.url = Some("http://127.0.0.1:9/v3".into());
                s.keystone.username = Some("shutoff".into());
                s.keystone.password = Some("unused".into());
                s.keystone.project = Some("service".into());
            })),
            ..Options::default()
        },
    )
    .await;
    for path in ["/identity", "/identity/v3"] {
        let resp = app.client.get(app.url(path)).send().await.unwrap();
        fault(resp, 404, "itemNotFound").await;
    }
    let resp = post_token(&app, &token_request(&app.token, Value::Null)).await;
    fault(resp, 404, "itemNotFound").await;
    app.shut_down().await;
}
