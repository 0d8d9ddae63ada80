//! The served OpenAPI document is the committed one, and every documented
//! path refuses the methods it does not document with a 405 fault body.

use serde_json::Value;
use shutoff_testkit::app::{fault, spawn_api_only};
use sqlx::PgPool;

fn committed() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn the_served_document_is_the_committed_one_and_needs_no_token(pool: PgPool) {
    let app = spawn_api_only(pool).await;
    let resp = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let served: Value = resp.json().await.unwrap();
    assert_eq!(served, committed());
    assert!(served["openapi"].as_str().unwrap().starts_with("3."));
    app.shut_down().await;
}

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn every_documented_path_answers_other_methods_with_a_405_fault(pool: PgPool) {
    let app = spawn_api_only(pool).await;
    let server = app.server("web-1").await.to_string();
    let doc = committed();
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 14);
    for (template, ops) in paths {
        let path = template
            .replace("{project_id}", app.project.as_str())
            .replace("{server_id}", &server)
            .replace("{request_id}", "req-00000000-0000-4000-8000-000000000000");
        for method in ["DELETE", "PUT", "PATCH", "POST", "GET"] {
            if ops.get(method.to_lowercase()).is_some() {
                continue;
            }
            let resp = app
                .client
                .request(method.parse().unwrap(), app.url(&path))
                .header("x-auth-token", &app.token)
                .send()
                .await
                .unwrap();
            let allow = resp
                .headers()
                .get("allow")
                .map(|v| v.to_str().unwrap().to_string());
            let what = format!("{method} {template}");
            assert_eq!(
                fault(resp, 405, "badMethod").await,
                "The method is not allowed for the requested URL.",
                "{what}"
            );
            let allow = allow.unwrap_or_else(|| panic!("{what}: no Allow header"));
            for documented in ops.as_object().unwrap().keys() {
                assert!(
                    allow.contains(&documented.to_uppercase()),
                    "{what}: Allow {allow}"
                );
            }
        }
    }
    app.shut_down().await;
}
