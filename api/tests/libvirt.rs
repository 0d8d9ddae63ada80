//! The whole system with libvirt: the API accepts `os-stop`, the worker
//! drives a private libvirtd, and the servers end SHUTOFF with power state 4,
//! the instance action saying how each went off: a guest that honours the
//! power button cleanly, a domain that ignores it by force after its
//! timeout, an undefined domain as already off.
//!
//! Needs the `libvirt` feature (the README's test command builds it) and a
//! libvirtd; skipped with a message without them, unless `CI` is set.

use std::time::{Duration, Instant};

use serde_json::Value;
use shutoff_testkit::app::spawn;
use shutoff_testkit::libvirtd::{Libvirtd, can_run};
use sqlx::PgPool;
use uuid::Uuid;

/// True when this build's worker has the libvirt driver.
fn driver_built() -> bool {
    let probe = shutoff_hypervisor::driver_for("libvirt:///probe");
    let missing = match probe {
        Err(e) if e.to_string().contains("this build has no libvirt driver") => Some(
            "the tests were built without the libvirt feature (cargo test ... --features shutoff-worker/libvirt)"
                .to_string(),
        ),
        _ => None,
    };
    shutoff_testkit::skip::runnable(missing)
}

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
        "timing: API to SHUTOFF: clean {:?}, forced {:?}, undefined {:?}",
        took[0], took[1], took[2]
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
    assert!(gone.starts_with("already off in "), "{gone}");
    assert!(took[1] >= Duration::from_secs(2), "{:?}", took[1]);
    assert_eq!(daemon.domstate(&guest_name), "shut off (shutdown)");
    assert_eq!(daemon.domstate(&bare_name), "shut off (destroyed)");
    assert!(daemon.console(&guest_name).contains("power button pressed"));
    app.shut_down().await;
}
