//! `--retention`: the API prunes finished stops past the retention on its
//! own, keeping each server's last action and every recent stop.

use std::time::Duration;

use shutoff_testkit::app::{Options, spawn_with};
use sqlx::PgPool;

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn the_api_prunes_stops_past_the_retention_and_keeps_the_rest(pool: PgPool) {
    let app = spawn_with(
        pool,
        Options {
            configure: Some(Box::new(|s| {
                s.retention = Some(Duration::from_secs(30 * 24 * 3600));
                s.retention_interval_secs = 1;
            })),
            ..Options::default()
        },
    )
    .await;
    let id = app.server("web-1").await;
    // Three stops of it that finished 40 days ago, then a stop today.
    app.env
        .seed_finished_stops(app.project.as_str(), &id.to_string(), 3, 40)
        .await;
    assert_eq!(app.stop(id).await.status().as_u16(), 202);
    assert!(app.stopped(id, Duration::from_secs(20)).await);

    let pruned = app
        .env
        .eventually(Duration::from_secs(20), || async {
            app.count("SELECT count(*) FROM jobs").await == 1
        })
        .await;
    assert!(pruned, "the old stops were not pruned");
    assert_eq!(app.count("SELECT count(*) FROM instance_actions").await, 1);
    assert_eq!(
        app.count("SELECT count(*) FROM jobs WHERE state = 'succeeded' AND finished_at > now() - interval '1 hour'")
            .await,
        1,
        "today's stop stays"
    );
    app.shut_down().await;
}
