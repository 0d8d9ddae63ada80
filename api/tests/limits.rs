//! The API reads only so much of a request, for only so long: an oversized
//! URL or header set gets a clean 4xx (bodies: `stop.rs`), a client that
//! dribbles its headers or idles on a connection is cut off, and one that
//! dribbles its body gets 408.

use std::time::{Duration, Instant};

use shutoff_testkit::app::{self, Options, fault, spawn_with};
use sqlx::PgPool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn spawn_api(pool: PgPool) -> app::TestApp {
    spawn_with(
        pool,
        Options {
            with_worker: false,
            tweak: Some(|s| {
                s.header_read_timeout_ms = 600;
                s.body_read_timeout_ms = 800;
            }),
            ..Options::default()
        },
    )
    .await
}

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn an_oversized_url_is_414_with_a_fault_body(pool: PgPool) {
    let app = spawn_api(pool).await;
    let long = "a".repeat(9 * 1024);
    let resp = app
        .get(&format!("/v2/{}/servers?name={long}", app.project))
        .await;
    let msg = fault(resp, 414, "uriTooLong").await;
    assert_eq!(msg, "The request URI is too long.");

    // Just under the limit is served as usual.
    let fine = "a".repeat(7 * 1024);
    let resp = app
        .get(&format!("/v2/{}/servers?name={fine}", app.project))
        .await;
    assert_eq!(resp.status().as_u16(), 200);
    app.shut_down().await;
}

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn oversized_headers_are_431_and_a_huge_head_is_refused_unread(pool: PgPool) {
    let app = spawn_api(pool).await;
    let resp = app
        .client
        .get(app.url("/healthz"))
        .header("x-padding", "p".repeat(20 * 1024))
        .send()
        .await
        .unwrap();
    let msg = fault(resp, 431, "headersTooLarge").await;
    assert_eq!(msg, "The request headers are too large.");

    // Past the hard limit hyper refuses the head before it is buffered:
    // still a 4xx, and the server goes on serving.
    let resp = app
        .client
        .get(app.url("/healthz"))
        .header("x-padding", "p".repeat(512 * 1024))
        .send()
        .await;
    if let Ok(resp) = resp {
        assert_eq!(resp.status().as_u16(), 431);
    }
    let resp = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    app.shut_down().await;
}

/// Reads until the server closes the connection; true if it did within `limit`.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline.into(), stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {} // a response (hyper may send 408 first); keep reading
        }
    }
}

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn a_client_sending_its_headers_byte_by_byte_is_cut_off(pool: PgPool) {
    let app = spawn_api(pool).await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    let started = Instant::now();
    let head = format!(
        "GET /healthz HTTP/1.1\r\nHost: {}\r\nX-Slow: {}\r\n\r\n",
        app.addr,
        "s".repeat(100)
    );
    // One byte every 50 ms: the whole head would take over 7 s.
    let mut cut_off = false;
    for byte in head.as_bytes() {
        if stream.write_all(&[*byte]).await.is_err() {
            cut_off = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        if started.elapsed() > Duration::from_secs(3) {
            break;
        }
    }
    let closed = cut_off || closed_within(&mut stream, Duration::from_secs(2)).await;
    assert!(closed, "the slow client still holds its connection");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "cut off only after {:?}",
        started.elapsed()
    );

    // Others are served meanwhile and after.
    let resp = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    app.shut_down().await;
}

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn an_idle_connection_is_closed_after_the_header_timeout(pool: PgPool) {
    let app = spawn_api(pool).await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    let started = Instant::now();
    assert!(
        closed_within(&mut stream, Duration::from_secs(3)).await,
        "an idle connection stays open"
    );
    assert!(started.elapsed() >= Duration::from_millis(500));
    app.shut_down().await;
}

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn a_body_sent_byte_by_byte_is_408_at_the_deadline_and_accepts_nothing(pool: PgPool) {
    let app = spawn_api(pool).await;
    let id = app.server("web-1").await;
    let body = br#"{"os-stop": null}"#;
    let head = format!(
        "POST /v2/{}/servers/{id}/action HTTP/1.1\r\nHost: {}\r\nX-Auth-Token: {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        app.project,
        app.addr,
        app.token,
        body.len()
    );
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    // One byte every 150 ms: each arrives well within any inactivity
    // timeout, the whole body would take 2.5 s; the deadline is 0.8 s.
    let mut answer = Vec::new();
    for byte in body {
        if stream.write_all(&[*byte]).await.is_err() {
            break;
        }
        let mut buf = [0u8; 4096];
        match tokio::time::timeout(Duration::from_millis(150), stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {
                answer.extend_from_slice(&buf[..n]);
                break;
            }
            Ok(_) => break,
            Err(_) => {}
        }
    }
    let elapsed = started.elapsed();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut rest))
        .await
        .ok();
    answer.extend_from_slice(&rest);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains(r#""requestTimeout""#), "{answer}");
    assert!(
        elapsed < Duration::from_millis(2000),
        "answered after {elapsed:?}"
    );
    assert_eq!(app.count("SELECT count(*) FROM jobs").await, 0);
    app.shut_down().await;
}
