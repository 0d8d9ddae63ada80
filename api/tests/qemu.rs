//! The whole system with real VMs: the API accepts `os-stop`, the worker
//! drives QEMU over QMP, and the servers end SHUTOFF with power state 4, the
//! instance action saying how each went off.
//!
//! Skipped with a message when QEMU or the test guest is missing, unless
//! `CI` is set (`.ci/run` installs QEMU and builds the guest).

use std::time::{Duration, Instant};

use serde_json::Value;
use shutoff_testkit::app::spawn;
use shutoff_testkit::vm::{Guest, TestVm, can_run};
use sqlx::PgPool;

/// Booting the guest under TCG takes 3-5 s on an idle machine.
const BOOT: Duration = Duration::from_secs(90);

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn stopping_real_vms_through_the_api_ends_shutoff_cleanly_or_by_force(pool: PgPool) {
    if !can_run(Guest::Linux) {
        return;
    }
    let app = spawn(pool).await;
    let mut guest = TestVm::start(Guest::Linux, &[]).await;
    let mut bare = TestVm::start(Guest::None, &[]).await;
    assert!(guest.ready(BOOT).await, "{}", guest.console());
    let clean = app
        .server_with(|s| {
            s.hypervisor = guest.address("");
        })
        .await;
    // No guest hears the button: forced after the instance's own 2 s.
    let forced = app
        .server_with(|s| {
            s.hypervisor = bare.address("?shutdown_timeout=2");
        })
        .await;

    let t = Instant::now();
    let mut requests = Vec::new();
    for id in [clean, forced] {
        let resp = app.stop(id).await;
        assert_eq!(resp.status().as_u16(), 202);
        requests.push(
            resp.headers()["x-compute-request-id"]
                .to_str()
                .unwrap()
                .to_string(),
        );
    }

    let mut took = Vec::new();
    for id in [clean, forced] {
        let server = app.until_shutoff(id, Duration::from_secs(60)).await;
        took.push(t.elapsed());
        assert_eq!(server["status"], "SHUTOFF", "{server}");
        assert_eq!(server["OS-EXT-STS:power_state"], 4);
        assert_eq!(server["OS-EXT-STS:task_state"], Value::Null);
    }
    eprintln!(
        "timing: API to SHUTOFF: clean {:?}, forced {:?}",
        took[0], took[1]
    );

    let clean_event = app.stop_event(clean, &requests[0]).await;
    let forced_event = app.stop_event(forced, &requests[1]).await;
    assert_eq!(clean_event["result"], "Success");
    let details = clean_event["details"].as_str().unwrap();
    assert!(details.starts_with("clean shutdown in "), "{details}");
    assert!(details.contains("SHUTDOWN guest=true"), "{details}");
    assert_eq!(forced_event["result"], "Success");
    let details = forced_event["details"].as_str().unwrap();
    assert!(details.starts_with("forced power-off in 2."), "{details}");
    assert!(details.contains("reason=host-qmp-quit"), "{details}");
    assert!(took[0] < Duration::from_secs(10), "{:?}", took[0]);
    assert!(took[1] >= Duration::from_secs(2), "{:?}", took[1]);

    assert!(guest.exited(Duration::from_secs(10)).await.is_some());
    assert!(bare.exited(Duration::from_secs(10)).await.is_some());
    app.shut_down().await;
}
