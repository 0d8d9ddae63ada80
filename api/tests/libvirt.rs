//! The whole system with libvirt: the API accepts `os-stop`, the worker
//! drives a private libvirtd, and the servers end SHUTOFF with power state 4,
//! the instance action saying how each went off: a guest that honours the
//! power button cleanly, a domain that ignores it by force after its
//! timeout, an undefined domain and a shut-off one as already off; and a
//! stop whose daemon restarts mid-stop, retried to SHUTOFF.
//!
//! Needs the `libvirt` feature (the README's test command builds it) and a
//! libvirtd; skipped with a message without them, unless `CI` is set.

use std::time::{Duration, Instant};

use serde_json::Value;
use shutoff_testkit::app::spawn;
use shutoff_testkit::libvirtd::{Libvirtd, can_run, driver_built};
use sqlx::PgPool;
use uuid::Uuid;

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn stopping_libvirt_domains_through_the_api_ends_shutoff_cleanly_by_force_or_already_off(
    pool: PgPool,
) {
    if !driver_built() || !can_run(true) {
        return;
    }
    let daemon = Libvirtd::start();
    let (guest, guest_name) = daemon.define(true, true);
    let (bare, bare_name) = daemon.define(false, true);
    let (off, off_name) = daemon.define(false, false);
    assert!(
        daemon.ready(&guest_name).await,
        "guest did not boot: {}",
        daemon.console(&guest_name)
    );
    let app = spawn(pool).await;
    let mut servers = Vec::new();
    for address in [
        daemon.address(&guest.to_string(), ""),
        daemon.address(
            &bare.to_string(),
            "&shutdown_timeout=2&shutdown_retry_interval=1",
        ),
        daemon.address(&Uuid::new_v4().to_string(), ""),
        daemon.address(&off.to_string(), ""),
    ] {
        servers.push(app.server_with(|s| s.hypervisor = address).await);
    }

    let t = Instant::now();
    let mut requests = Vec::new();
    for id in &servers {
        let resp = app.stop(*id).await;
        assert_eq!(resp.status().as_u16(), 202);
        requests.push(
            resp.headers()["x-compute-request-id"]
                .to_str()
                .unwrap()
                .to_string(),
        );
    }
    let mut took = Vec::new();
    for id in &servers {
        let server = app.until_shutoff(*id, Duration::from_secs(60)).await;
        took.push(t.elapsed());
        assert_eq!(server["status"], "SHUTOFF", "{server}");
        assert_eq!(server["OS-EXT-STS:power_state"], 4);
        assert_eq!(server["OS-EXT-STS:task_state"], Value::Null);
    }
    eprintln!(
        "timing: API to SHUTOFF: clean {:?}, forced {:?}, undefined {:?}, shut off {:?}",
        took[0], took[1], took[2], took[3]
    );

    let details = |i: usize| {
        let (app, id, req) = (&app, servers[i], requests[i].clone());
        async move {
            let e = app.stop_event(id, &req).await;
            assert_eq!(e["result"], "Success", "{e}");
            e["details"].as_str().unwrap().to_string()
        }
    };
    let clean = details(0).await;
    assert!(
        clean.starts_with("clean shutdown in ") && clean.contains("reason shutdown"),
        "{clean}"
    );
    let forced = details(1).await;
    assert!(
        forced.starts_with("forced power-off in ") && forced.contains("reason destroyed"),
        "{forced}"
    );
    let gone = details(2).await;
    eprintln!("details: clean {clean:?}\ndetails: forced {forced:?}\ndetails: undefined {gone:?}");
    assert!(gone.starts_with("already off in "), "{gone}");
    let was_off = details(3).await;
    assert!(
        was_off.starts_with("already off in ") && was_off.contains("libvirt state shut off"),
        "{was_off}"
    );
    assert!(took[1] >= Duration::from_secs(2), "{:?}", took[1]);
    assert_eq!(daemon.domstate(&guest_name), "shut off (shutdown)");
    assert_eq!(daemon.domstate(&bare_name), "shut off (destroyed)");
    assert_eq!(daemon.domstate(&off_name), "shut off (unknown)");
    assert!(daemon.console(&guest_name).contains("power button pressed"));
    app.shut_down().await;
}

/// libvirtd dies (SIGKILL) and comes back while the worker waits for a
/// guest that ignores the power button: that attempt is a transient error,
/// the stop is retried on the restarted daemon, the domain (its QEMU ran on)
/// is destroyed after its timeout, and the server ends SHUTOFF once.
#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn a_stop_whose_libvirtd_restarts_mid_stop_is_retried_to_shutoff(pool: PgPool) {
    if !driver_built() || !can_run(false) {
        return;
    }
    let mut daemon = Libvirtd::start();
    let (bare, bare_name) = daemon.define(false, true);
    let app = spawn(pool.clone()).await;
    let id = app
        .server_with(|s| {
            s.hypervisor = daemon.address(
                &bare.to_string(),
                "&shutdown_timeout=4&shutdown_retry_interval=1",
            )
        })
        .await;

    let resp = app.stop(id).await;
    assert_eq!(resp.status().as_u16(), 202);
    let running = async {
        loop {
            let state: Option<String> =
                sqlx::query_scalar("SELECT state FROM jobs WHERE instance_uuid = $1")
                    .bind(id)
                    .fetch_optional(&pool)
                    .await
                    .unwrap();
            if state.as_deref() == Some("running") {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), running)
        .await
        .expect("the worker claims the stop");
    // Inside the 4 s wait for a clean shutdown that never comes.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let t = Instant::now();
    daemon.restart();
    eprintln!("timing: libvirtd restarted in {:?}", t.elapsed());

    let server = app.until_shutoff(id, Duration::from_secs(60)).await;
    assert_eq!(server["status"], "SHUTOFF", "{server}");
    assert_eq!(server["OS-EXT-STS:power_state"], 4);
    let retried: Vec<(i32, Option<String>)> = sqlx::query_as(
        "SELECT t.attempt, t.error FROM job_transitions t JOIN jobs j ON j.id = t.job_id
          WHERE j.instance_uuid = $1 AND t.to_state = 'retrying' ORDER BY t.id",
    )
    .bind(id)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(retried.len(), 1, "{retried:?}");
    let error = retried[0].1.as_deref().unwrap_or_default();
    assert!(error.contains("libvirt"), "{error}");
    let (state, attempts): (String, i32) =
        sqlx::query_as("SELECT state, attempts FROM jobs WHERE instance_uuid = $1")
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((state.as_str(), attempts), ("succeeded", 2));
    let request = resp.headers()["x-compute-request-id"].to_str().unwrap();
    let event = app.stop_event(id, request).await;
    assert_eq!(event["result"], "Success", "{event}");
    let details = event["details"].as_str().unwrap();
    assert!(details.starts_with("forced power-off in "), "{details}");
    assert_eq!(daemon.domstate(&bare_name), "shut off (destroyed)");
    app.shut_down().await;
}
