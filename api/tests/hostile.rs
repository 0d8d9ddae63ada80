//! Hostile input in every field — quotes, SQL, NUL bytes, very long unicode,
//! invalid UTF-8 percent-encodings — in the project id, server id, request
//! id, query parameters, headers and the JSON body: every answer is a clean
//! 4xx with a fault body (or 200 for a harmless read), never a 5xx, and the
//! database is exactly as it was.

use reqwest::Response;
use reqwest::header::HeaderValue;
use shutoff_testkit::app::{TestApp, spawn_api_only};
use sqlx::PgPool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Strings that have broken services before.
fn hostile() -> Vec<String> {
    let unicode = "🦀é中\u{202e}\u{feff}";
    vec![
        "'".into(),
        "\"".into(),
        "' OR '1'='1".into(),
        "'; DROP TABLE instances; --".into(),
        "\"; DROP TABLE jobs; --".into(),
        "1; DELETE FROM tokens".into(),
        "\0".into(),
        "a\0b".into(),
        "%".into(),
        "%00".into(),
        "\\".into(),
        "\r\nX-Injected: 1".into(),
        "../../etc/passwd".into(),
        "<script>alert(1)</script>".into(),
        "${jndi:ldap://127.0.0.1/x}".into(),
        "$1".into(),
        "req-' OR 1=1 --".into(),
        "00000000-0000-0000-0000-000000000000'".into(),
        unicode.repeat(100),
        // Past the URI limit once percent-encoded (414).
        unicode.repeat(300),
    ]
}

/// Past every limit (bodies and headers only: hyper cuts a URL this long
/// before we see it, and the client sees the connection closed).
fn huge() -> String {
    "🦀é中\u{202e}\u{feff}".repeat(5000)
}

/// Raw URL pieces that do not decode to UTF-8, or do not decode at all.
const BAD_ENCODINGS: [&str; 5] = ["%FF", "%C3%28", "%ED%A0%80", "%", "%G0"];

/// Percent-encodes every byte but the unreserved ones.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Every table's row count and an md5 of its contents.
async fn snapshot(pool: &PgPool) -> Vec<(String, i64, String)> {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT quote_ident(table_name) FROM information_schema.tables
          WHERE table_schema = 'public' AND table_type = 'BASE TABLE' ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert!(tables.len() >= 9, "{tables:?}");
    let mut out = Vec::new();
    for table in tables {
        // The names come from the catalog, quoted by PostgreSQL itself.
        let (n, md5): (i64, String) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), ''))
               FROM {table} t"
        )))
        .fetch_one(pool)
        .await
        .unwrap();
        out.push((table, n, md5));
    }
    out
}

/// A clean answer: one of `allowed`, never a 5xx, a fault body on errors.
/// (A head past the hard cap gets hyper's bare 431 before any of our code runs.)
async fn clean(resp: Response, allowed: &[u16], what: &str) {
    let status = resp.status().as_u16();
    assert!(status < 500, "{what}: {status}");
    assert!(
        allowed.contains(&status),
        "{what}: {status}, expected one of {allowed:?}"
    );
    if status == 431 && !resp.headers().contains_key("x-compute-request-id") {
        assert_eq!(resp.text().await.unwrap(), "", "{what}");
        return;
    }
    assert!(
        resp.headers().contains_key("x-compute-request-id"),
        "{what}: no request id"
    );
    let body: serde_json::Value = resp
        .json()
        .await
        .unwrap_or_else(|e| panic!("{what}: body is not JSON: {e}"));
    if status >= 400 {
        let fault = body.as_object().expect("a fault body is an object");
        assert_eq!(fault.len(), 1, "{what}: {body}");
        let inner = fault.values().next().unwrap();
        assert_eq!(inner["code"], status, "{what}: {body}");
        assert!(inner["message"].is_string(), "{what}: {body}");
    }
}

async fn get(app: &TestApp, path: &str) -> Response {
    get_as(app, &app.token, path).await
}

async fn get_as(app: &TestApp, token: &str, path: &str) -> Response {
    app.client
        .get(format!("http://{}{path}", app.addr))
        .header("x-auth-token", token)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path:.80}: {e}"))
}

async fn post(app: &TestApp, path: &str, body: impl Into<reqwest::Body>) -> Response {
    app.client
        .post(format!("http://{}{path}", app.addr))
        .header("x-auth-token", &app.token)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {path:.80}: {e}"))
}

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn hostile_path_segments_are_4xx_and_change_nothing(pool: PgPool) {
    let app = spawn_api_only(pool).await;
    let server = app.server("web-1").await.to_string();
    let p = app.project.to_string();
    let before = snapshot(&app.env.pool).await;

    let mut pieces: Vec<String> = hostile().iter().map(|s| enc(s)).collect();
    pieces.extend(BAD_ENCODINGS.iter().map(|s| s.to_string()));
    let stop = r#"{"os-stop": null}"#;
    for x in &pieces {
        // 414 when the piece alone is past the URI limit.
        clean(
            post(&app, &format!("/v2/{x}/servers/{server}/action"), stop).await,
            &[400, 404, 414],
            &format!("project {x:.40}"),
        )
        .await;
        clean(
            post(&app, &format!("/v2/{p}/servers/{x}/action"), stop).await,
            &[404, 414],
            &format!("server {x:.40}"),
        )
        .await;
        for path in [
            format!("/v2/{p}/servers/{x}"),
            format!("/v2/{p}/servers/{x}/os-instance-actions"),
            format!("/v2/{p}/servers/{server}/os-instance-actions/{x}"),
        ] {
            clean(
                get(&app, &path).await,
                &[404, 414],
                &path[..path.len().min(80)],
            )
            .await;
        }
        clean(
            get(&app, &format!("/v2/{x}/servers")).await,
            &[400, 404, 414],
            &format!("list {x:.40}"),
        )
        .await;
    }

    assert_eq!(snapshot(&app.env.pool).await, before);
    app.shut_down().await;
}

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn hostile_query_parameters_are_4xx_or_a_harmless_200(pool: PgPool) {
    let app = spawn_api_only(pool).await;
    app.server("web-1").await;
    let p = app.project.to_string();
    // Only an admin's `host` filter reaches the database.
    let admin = app.env.token(&app.project, &["admin"]).await;
    let before = snapshot(&app.env.pool).await;

    for s in hostile() {
        let x = enc(&s);
        for list in ["servers", "servers/detail"] {
            for (q, token) in [("name", &app.token), ("host", &admin)] {
                let resp = get_as(&app, token, &format!("/v2/{p}/{list}?{q}={x}")).await;
                let status = resp.status().as_u16();
                if status == 200 {
                    let body: serde_json::Value = resp.json().await.unwrap();
                    assert_eq!(body["servers"], serde_json::json!([]), "{q} {x:.40}");
                } else {
                    clean(resp, &[400, 414], &format!("{q} {x:.40}")).await;
                }
            }
            clean(
                get(&app, &format!("/v2/{p}/{list}?limit={x}")).await,
                &[400, 414],
                &format!("limit {x:.40}"),
            )
            .await;
        }
    }
    for x in BAD_ENCODINGS.iter().map(|s| s.to_string()).chain([
        "99999999999999999999999".into(),
        "-1".into(),
        "1e3".into(),
    ]) {
        for (q, token) in [
            ("name", &app.token),
            ("limit", &app.token),
            ("host", &admin),
        ] {
            clean(
                get_as(&app, token, &format!("/v2/{p}/servers?{q}={x}")).await,
                &[200, 400],
                &format!("{q}={x}"),
            )
            .await;
        }
    }

    assert_eq!(snapshot(&app.env.pool).await, before);
    app.shut_down().await;
}

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn hostile_headers_are_401_or_ignored(pool: PgPool) {
    let app = spawn_api_only(pool).await;
    let server = app.server("web-1").await;
    let path = format!("/v2/{}/servers/{server}", app.project);
    let before = snapshot(&app.env.pool).await;

    for s in hostile().into_iter().chain([huge()]) {
        // NUL and CR/LF cannot be sent in a header value (see the raw test below).
        let Ok(value) = HeaderValue::from_bytes(s.as_bytes()) else {
            continue;
        };
        let resp = app
            .client
            .get(app.url(&path))
            .header("x-auth-token", value.clone())
            .send()
            .await
            .unwrap();
        clean(resp, &[401, 431], &format!("token {s:.40}")).await;
        let resp = app
            .client
            .post(app.url(&format!("{path}/action")))
            .header("x-auth-token", "not-a-token")
            .header("x-openstack-request-id", value.clone())
            .body(r#"{"os-stop": null}"#)
            .send()
            .await
            .unwrap();
        clean(resp, &[401, 431], &format!("request id {s:.40}")).await;
        // With a valid token a foreign request id is ignored: the read works.
        let resp = app
            .client
            .get(app.url(&path))
            .header("x-auth-token", &app.token)
            .header("x-openstack-request-id", value)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        if status != 200 {
            clean(resp, &[431], &format!("request id {s:.40}")).await;
        } else {
            assert_ne!(
                resp.headers()["x-openstack-request-id"].as_bytes(),
                s.as_bytes(),
                "a client's request id is never echoed"
            );
        }
    }
    // Bytes that are not UTF-8 in the token.
    let resp = app
        .client
        .get(app.url(&path))
        .header(
            "x-auth-token",
            HeaderValue::from_bytes(b"\xff\xfe'").unwrap(),
        )
        .send()
        .await
        .unwrap();
    clean(resp, &[401], "token not UTF-8").await;

    assert_eq!(snapshot(&app.env.pool).await, before);
    app.shut_down().await;
}

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn a_nul_byte_in_a_raw_header_is_refused_before_routing(pool: PgPool) {
    let app = spawn_api_only(pool).await;
    let before = snapshot(&app.env.pool).await;
    let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let req = format!(
        "GET /v2/{}/servers HTTP/1.1\r\nHost: x\r\nX-Auth-Token: a\0b\r\n\r\n",
        app.project
    );
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.ok();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert_eq!(snapshot(&app.env.pool).await, before);
    app.shut_down().await;
}

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn hostile_action_bodies_are_4xx_and_accept_nothing(pool: PgPool) {
    let app = spawn_api_only(pool).await;
    let server = app.server("web-1").await;
    let action = format!("/v2/{}/servers/{server}/action", app.project);
    let missing = format!(
        "/v2/{}/servers/00000000-0000-4000-8000-000000000000/action",
        app.project
    );
    let before = snapshot(&app.env.pool).await;

    for s in hostile().into_iter().chain([huge()]) {
        // As the action's name: no such action.
        let body = serde_json::json!({ s.clone(): null }).to_string();
        clean(
            post(&app, &action, body).await,
            &[400, 413],
            &format!("key {s:.40}"),
        )
        .await;
        // As the value of os-stop, for a server that does not exist.
        let body = serde_json::json!({ "os-stop": s.clone() }).to_string();
        clean(
            post(&app, &missing, body).await,
            &[404, 413],
            &format!("value {s:.40}"),
        )
        .await;
    }
    let raw: [&[u8]; 9] = [
        b"{\"os-stop\": \"\xff\"}",
        b"{\"os-stop\0\": null}",
        b"{\"os-stop\": null}\0",
        b"{\"os-stop\": \"\\ud800\"}",
        b"\xef\xbb\xbf{\"os-stop\": null}",
        b"{'os-stop': null}",
        b"{\"os-stop\": null, \"os-stop\": null}",
        b"{\"os-stop\": null}{\"os-stop\": null}",
        b"\x00\x01\x02",
    ];
    for body in raw {
        let what = format!("raw {:?}", String::from_utf8_lossy(body));
        // The duplicate key is one key to serde_json (the last wins): a stop
        // of a server that does not exist.
        clean(
            post(&app, &missing, body.to_vec()).await,
            &[400, 404],
            &what,
        )
        .await;
    }
    // Nesting far past serde_json's recursion limit.
    let deep = format!("{}{}", "[".repeat(8000), "]".repeat(8000));
    clean(post(&app, &action, deep).await, &[400], "deep nesting").await;
    let deep = format!(
        r#"{{"os-stop": {}null{}}}"#,
        "{\"a\":".repeat(2000),
        "}".repeat(2000)
    );
    clean(post(&app, &missing, deep).await, &[400, 404], "deep value").await;

    assert_eq!(snapshot(&app.env.pool).await, before);
    app.shut_down().await;
}
