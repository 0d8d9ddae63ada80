//! `GET /metrics` on the API: requests by route template and status, jobs
//! accepted and published, the relay's backlog — scraped after real stops
//! through the real PostgreSQL and RabbitMQ.

use std::time::Duration;

use shutoff_testkit::TcpProxy;
use shutoff_testkit::app::{self, Options, spawn, spawn_with};
use sqlx::PgPool;

const ACTION: &str = "/v2/{project_id}/servers/{server_id}/action";

/// The value of one series (`name{labels}`) in an exposition, if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.split(' ').next().unwrap().parse().unwrap())
}

async fn scrape(app: &app::TestApp) -> String {
    let resp = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text"),
    );
    let text = resp.text().await.unwrap();
    assert!(text.ends_with("# EOF\n"), "{text}");
    text
}

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn stops_are_counted_by_route_template_and_status_and_move_accepted_and_published(
    pool: PgPool,
) {
    let app = spawn(pool).await;
    let mut servers = Vec::new();
    for i in 0..3 {
        servers.push(app.server(&format!("web-{i}")).await);
    }

    for id in &servers {
        assert_eq!(app.stop(*id).await.status().as_u16(), 202);
    }
    let unauthenticated = app
        .action(
            app.project.as_str(),
            &servers[0].to_string(),
            None,
            r#"{"os-stop": null}"#,
        )
        .await;
    assert_eq!(unauthenticated.status().as_u16(), 401);
    let list = app.get(&format!("/v2/{}/servers", app.project)).await;
    assert_eq!(list.status().as_u16(), 200);
    let nowhere = app.get("/no/such/route").await;
    assert_eq!(nowhere.status().as_u16(), 404);
    for id in &servers {
        assert!(app.stopped(*id, Duration::from_secs(15)).await);
    }
    // The relay's next pass (every 200 ms here) sets the backlog.
    assert!(
        app.env
            .eventually(Duration::from_secs(5), || async {
                sample(&scrape(&app).await, "shutoff_relay_backlog") == Some(0.0)
            })
            .await
    );
    let text = scrape(&app).await;

    let requests = |method: &str, route: &str, status: u16| {
        sample(
            &text,
            &format!(
                r#"shutoff_http_requests_total{{method="{method}",route="{route}",status="{status}"}}"#
            ),
        )
    };
    assert_eq!(requests("POST", ACTION, 202), Some(3.0), "{text}");
    assert_eq!(requests("POST", ACTION, 401), Some(1.0), "{text}");
    assert_eq!(
        requests("GET", "/v2/{project_id}/servers", 200),
        Some(1.0),
        "{text}"
    );
    assert_eq!(requests("GET", "unmatched", 404), Some(1.0), "{text}");
    assert_eq!(
        sample(
            &text,
            &format!(
                r#"shutoff_http_request_duration_seconds_count{{method="POST",route="{ACTION}"}}"#
            )
        ),
        Some(4.0),
        "{text}"
    );
    assert_eq!(sample(&text, "shutoff_jobs_accepted_total"), Some(3.0));
    assert_eq!(
        sample(&text, r#"shutoff_jobs_published_total{via="request"}"#),
        Some(3.0),
        "{text}"
    );
    assert!(text.contains(r#"shutoff_build_info{binary="shutoff-api""#));
    // Labels are route templates: no project or server id, no raw path.
    assert!(!text.contains(app.project.as_str()), "{text}");
    for id in &servers {
        assert!(!text.contains(&id.to_string()), "{text}");
    }
    assert!(!text.contains("/no/such/route"), "{text}");
    app.shut_down().await;
}

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn the_relay_backlog_counts_stops_committed_while_the_broker_is_away(pool: PgPool) {
    let broker = TcpProxy::start("127.0.0.1:5672").await;
    broker.cut();
    let app = spawn_with(
        pool,
        Options {
            amqp_url: Some(broker.amqp_url()),
            ..Options::default()
        },
    )
    .await;
    let a = app.server("web-1").await;
    let b = app.server("web-2").await;

    assert_eq!(app.stop(a).await.status().as_u16(), 202);
    assert_eq!(app.stop(b).await.status().as_u16(), 202);
    let backlog_is = |n: f64| {
        let app = &app;
        async move { sample(&scrape(app).await, "shutoff_relay_backlog") == Some(n) }
    };
    assert!(
        app.env
            .eventually(Duration::from_secs(10), || backlog_is(2.0))
            .await,
        "backlog never reached 2: {}",
        scrape(&app).await
    );
    let text = scrape(&app).await;
    assert_eq!(sample(&text, "shutoff_jobs_accepted_total"), Some(2.0));
    assert_eq!(
        sample(&text, "shutoff_jobs_publish_failures_total"),
        Some(2.0)
    );
    assert_eq!(
        sample(&text, r#"shutoff_jobs_published_total{via="request"}"#),
        None,
        "{text}"
    );

    broker.restore();
    assert!(app.stopped(a, Duration::from_secs(30)).await);
    assert!(app.stopped(b, Duration::from_secs(30)).await);
    assert!(
        app.env
            .eventually(Duration::from_secs(10), || backlog_is(0.0))
            .await
    );
    assert_eq!(
        sample(
            &scrape(&app).await,
            r#"shutoff_jobs_published_total{via="relay"}"#
        ),
        Some(2.0)
    );
    app.shut_down().await;
}

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn hosts_up_and_down_and_the_stops_waiting_for_each_are_gauged(pool: PgPool) {
    use shutoff_core::store::hosts;
    let app = app::spawn_api_only(pool).await;
    // One host with a live worker; one whose worker was last seen long ago,
    // with a stop waiting for it.
    let (live, gone) = (app.env.host("m-live"), app.env.host("m-gone"));
    hosts::beat(&app.env.pool, &live, "w1", "t").await.unwrap();
    hosts::beat(&app.env.pool, &gone, "w2", "t").await.unwrap();
    sqlx::query("UPDATE host_workers SET last_seen = now() - interval '1 hour' WHERE host = $1")
        .bind(gone.as_str())
        .execute(&app.env.pool)
        .await
        .unwrap();
    let vm = app.server_with(|s| s.host = gone.to_string()).await;
    assert_eq!(app.stop(vm).await.status().as_u16(), 202);

    // The census runs every 10 s.
    let counted = app
        .env
        .eventually(Duration::from_secs(25), || async {
            let text = scrape(&app).await;
            sample(&text, r#"shutoff_stops_waiting{host="m-gone"}"#) == Some(1.0)
        })
        .await;
    let text = scrape(&app).await;
    assert!(counted, "{text}");
    assert_eq!(sample(&text, "shutoff_hosts_up"), Some(1.0), "{text}");
    assert_eq!(sample(&text, "shutoff_hosts_down"), Some(1.0), "{text}");
    assert!(
        sample(
            &text,
            r#"shutoff_stops_waiting_oldest_seconds{host="m-gone"}"#
        )
        .is_some(),
        "{text}"
    );
    assert_eq!(
        sample(&text, r#"shutoff_stops_waiting{host="m-live"}"#),
        None
    );
    assert_eq!(
        sample(&text, r#"shutoff_host_up{host="m-live"}"#),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, r#"shutoff_host_up{host="m-gone"}"#),
        Some(0.0),
        "{text}"
    );
    app.shut_down().await;
}
