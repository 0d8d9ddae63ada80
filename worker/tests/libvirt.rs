//! The libvirt driver against a real, private libvirtd (QEMU domains under
//! TCG, [`Libvirtd`]): a guest that honours the power button, a guest-less
//! domain that never shuts down by itself, domains that are already off or
//! not there, a daemon that hangs or dies, and the job path through a worker
//! whose `--libvirt-uri` names the daemon. The job-path test also uses the
//! real PostgreSQL and RabbitMQ.
//!
//! Built only with the worker's `libvirt` feature (the driver needs
//! libvirt-dev). Skipped with a message when libvirtd, QEMU or the test
//! guest is missing, unless `CI` is set (then `.ci/run` has installed them
//! and a skip is a failure).
#![cfg(feature = "libvirt")]

use std::time::{Duration, Instant};

use shutoff_core::state::PowerState;
use shutoff_hypervisor::{DriverError, DriverSettings, StopMethod, driver_with};
use shutoff_testkit::libvirtd::{Libvirtd, can_run};
use shutoff_testkit::workers;
use sqlx::PgPool;
use uuid::Uuid;

fn settings(shutdown_timeout: u64, retry_interval: u64, call_timeout: u64) -> DriverSettings {
    DriverSettings {
        shutdown_timeout: Duration::from_secs(shutdown_timeout),
        shutdown_retry_interval: Duration::from_secs(retry_interval),
        qmp_timeout: Duration::from_secs(call_timeout),
        ..DriverSettings::default()
    }
}

#[tokio::test]
async fn a_guest_that_honours_the_power_button_shuts_down_cleanly() {
    if !can_run(true) {
        return;
    }
    let daemon = Libvirtd::start();
    let booted = Instant::now();
    let (uuid, name) = daemon.define(true, true);
    assert!(
        daemon.ready(&name).await,
        "guest did not boot: {}",
        daemon.console(&name)
    );
    let boot = booted.elapsed();
    let driver = driver_with(
        &daemon.address(&uuid.to_string(), ""),
        &settings(60, 10, 10),
    )
    .unwrap();
    assert_eq!(
        driver.power_state(Uuid::new_v4()).await,
        Ok(PowerState::Running)
    );

    let s = driver.power_off(Uuid::new_v4()).await.unwrap();

    eprintln!(
        "timing: boot {boot:?}, clean stop {:?}: {}",
        s.elapsed,
        s.details()
    );
    assert_eq!(s.how, StopMethod::Clean, "{}", s.details());
    assert_eq!(s.power_state, PowerState::Shutdown);
    // The poll may see the domain shut off, or still "being shut down",
    // which Nova's map counts as off; then the destroy that follows every
    // clean attempt finds it gone. Either way the guest powered itself off.
    assert!(
        s.details().starts_with("clean shutdown in ")
            && s.details()
                .contains("libvirt state shut off (reason shutdown)"),
        "{}",
        s.details()
    );
    assert!(s.elapsed < Duration::from_secs(10), "{:?}", s.elapsed);
    assert!(
        daemon.console(&name).contains("power button pressed"),
        "{}",
        daemon.console(&name)
    );
    assert_eq!(daemon.domstate(&name), "shut off (shutdown)");
}

#[tokio::test]
async fn a_domain_that_ignores_the_power_button_is_destroyed_after_its_timeout() {
    if !can_run(false) {
        return;
    }
    let daemon = Libvirtd::start();
    let (_, name) = daemon.define(false, true);
    let driver = driver_with(
        &daemon.address(&name, "&shutdown_timeout=2&shutdown_retry_interval=1"),
        &settings(60, 10, 10),
    )
    .unwrap();
    assert_eq!(
        driver.power_state(Uuid::new_v4()).await,
        Ok(PowerState::Running)
    );

    let s = driver.power_off(Uuid::new_v4()).await.unwrap();

    eprintln!("timing: forced stop {:?}: {}", s.elapsed, s.details());
    assert_eq!(s.how, StopMethod::Forced, "{}", s.details());
    assert_eq!(s.power_state, PowerState::Shutdown);
    assert!(
        s.details().starts_with("forced power-off in ")
            && s.details()
                .contains("the guest did not shut down within 2 s after 2 power-button presses")
            && s.details().contains("virDomainDestroyFlags: destroyed")
            && s.details()
                .ends_with("libvirt state shut off (reason destroyed)"),
        "{}",
        s.details()
    );
    assert!(
        s.elapsed >= Duration::from_secs(2) && s.elapsed < Duration::from_secs(15),
        "{:?}",
        s.elapsed
    );
    assert_eq!(daemon.domstate(&name), "shut off (destroyed)");
}

#[tokio::test]
async fn a_shut_off_domain_and_an_undefined_one_are_already_off() {
    if !can_run(false) {
        return;
    }
    let daemon = Libvirtd::start();
    let (uuid, name) = daemon.define(false, false);
    let missing = Uuid::new_v4();

    let off = driver_with(
        &daemon.address(&uuid.to_string(), ""),
        &settings(60, 10, 10),
    )
    .unwrap()
    .power_off(Uuid::new_v4())
    .await
    .unwrap();
    let undefined = driver_with(
        &daemon.address(&missing.to_string(), ""),
        &settings(60, 10, 10),
    )
    .unwrap()
    .power_off(Uuid::new_v4())
    .await
    .unwrap();

    assert_eq!(
        (off.how, off.power_state),
        (StopMethod::AlreadyOff, PowerState::Shutdown)
    );
    // Nova's power_off destroys also what it found off: "not running".
    assert!(
        off.details().starts_with("already off in ")
            && off.details().ends_with(
                ": libvirt state shut off (reason unknown); virDomainDestroyFlags: not running; \
                 libvirt state shut off (reason unknown)"
            ),
        "{}",
        off.details()
    );
    assert_eq!(
        (undefined.how, undefined.power_state),
        (StopMethod::AlreadyOff, PowerState::Shutdown)
    );
    assert!(
        undefined.details().ends_with(&format!(
            ": libvirt {} has no domain {missing}",
            daemon.uri()
        )),
        "{}",
        undefined.details()
    );
    assert_eq!(daemon.domstate(&name), "shut off (unknown)");

    // The driver's own cost per stop: a stop of a domain that is already
    // off is all libvirt calls (connect, look up, state, destroy, state)
    // and no waiting for a guest.
    let driver = driver_with(&daemon.address(&name, ""), &settings(60, 10, 10)).unwrap();
    let t = Instant::now();
    for _ in 0..20 {
        let again = driver.power_off(Uuid::new_v4()).await.unwrap();
        assert_eq!(again.how, StopMethod::AlreadyOff);
    }
    eprintln!(
        "timing: driver overhead per stop {:?} (mean of 20)",
        t.elapsed() / 20
    );

    let Err(DriverError::Permanent { message, .. }) = driver_with(
        &daemon.address(&missing.to_string(), ""),
        &settings(60, 10, 10),
    )
    .unwrap()
    .power_state(Uuid::new_v4())
    .await
    else {
        panic!("the power state of a domain that is not there is an operator's error")
    };
    assert!(message.ends_with("is it defined there?"), "{message}");
}

#[tokio::test]
async fn a_daemon_that_hangs_mid_stop_is_a_transient_error_within_the_call_timeout() {
    if !can_run(false) {
        return;
    }
    let mut daemon = Libvirtd::start();
    let (_, name) = daemon.define(false, true);
    let address = daemon.address(&name, "");
    let driver = driver_with(&address, &settings(60, 10, 2)).unwrap();

    let t = Instant::now();
    let stop = tokio::spawn(async move { driver.power_off(Uuid::new_v4()).await });
    // Well inside the 60 s clean-shutdown wait of a guest that never goes.
    tokio::time::sleep(Duration::from_secs(2)).await;
    daemon.signal("STOP");
    let mid_stop = tokio::time::timeout(Duration::from_secs(10), stop)
        .await
        .expect("the stop does not hang when its daemon does")
        .unwrap();
    let stopped_at = t.elapsed();
    let t = Instant::now();
    let after = driver_with(&address, &settings(60, 10, 2))
        .unwrap()
        .power_off(Uuid::new_v4())
        .await;
    let after_took = t.elapsed();

    eprintln!(
        "timing: daemon hung at 2 s, reported at {stopped_at:?}: {mid_stop:?}; \
         a new stop reported after {after_took:?}: {after:?}"
    );
    assert!(
        matches!(&mid_stop, Err(DriverError::Transient { message: m, .. })
            if m.contains("while waiting for the guest to shut down: no answer within 2s")),
        "{mid_stop:?}"
    );
    assert!(stopped_at < Duration::from_secs(6), "{stopped_at:?}");
    assert!(
        matches!(&after, Err(DriverError::Transient { message: m, .. })
            if m.contains("while connecting: no answer within 2s")),
        "{after:?}"
    );
    assert!(after_took < Duration::from_secs(4), "{after_took:?}");
}

#[tokio::test]
async fn a_daemon_killed_mid_stop_is_a_transient_error_and_so_is_one_that_is_gone() {
    if !can_run(false) {
        return;
    }
    let mut daemon = Libvirtd::start();
    let (_, name) = daemon.define(false, true);
    let driver = driver_with(&daemon.address(&name, ""), &settings(60, 10, 10)).unwrap();

    let t = Instant::now();
    let stop = tokio::spawn(async move { driver.power_off(Uuid::new_v4()).await });
    // Well inside the 60 s clean-shutdown wait of a guest that never goes.
    tokio::time::sleep(Duration::from_secs(2)).await;
    daemon.signal("KILL");
    let mid_stop = tokio::time::timeout(Duration::from_secs(15), stop)
        .await
        .expect("the stop does not hang when its daemon dies")
        .unwrap();
    let after = driver_with(&daemon.address(&name, ""), &settings(60, 10, 10))
        .unwrap()
        .power_off(Uuid::new_v4())
        .await;

    eprintln!(
        "timing: killed daemon reported after {:?}: {mid_stop:?}",
        t.elapsed()
    );
    assert!(
        matches!(&mid_stop, Err(DriverError::Transient { message: m, .. })
            if m.contains("while waiting for the guest to shut down")),
        "{mid_stop:?}"
    );
    assert!(
        matches!(&after, Err(DriverError::Transient { message: m, .. }) if m.contains("while connecting")),
        "{after:?}"
    );
}

/// The job path: a worker whose `--libvirt-uri` names the private daemon
/// stops a domain whose address names only the domain (and a 2 s timeout);
/// the instance ends STOPPED and the event says the stop was forced.
#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn a_job_on_a_libvirt_domain_records_a_forced_stop_through_the_workers_libvirt_uri(
    pool: PgPool,
) {
    if !can_run(false) {
        return;
    }
    let daemon = Libvirtd::start();
    let (uuid, name) = daemon.define(false, true);
    let c = workers::ctx(pool).await;
    let uri = daemon.uri();
    let w = c
        .worker(|s| {
            s.shutdown_retry_interval_secs = 1;
            s.libvirt_uri = uri;
        })
        .await;
    let server = c
        .server(&format!("libvirt:///{uuid}?shutdown_timeout=2"))
        .await;

    let job = c.stop(server, 5).await;

    assert!(
        c.until_job(job.job_id, "succeeded", Duration::from_secs(60))
            .await,
        "{:?}",
        c.job(job.job_id).await
    );
    assert_eq!(c.instance(server).await, ("stopped".into(), None, 4));
    let (result, details) = c.event(job.job_id).await;
    assert_eq!(result, "Success");
    assert!(details.starts_with("forced power-off in "), "{details}");
    assert!(
        details.contains("the guest did not shut down within 2 s after 2 power-button presses")
            && details.ends_with("libvirt state shut off (reason destroyed)"),
        "{details}"
    );
    assert_eq!(daemon.domstate(&name), "shut off (destroyed)");
    w.terminate().await;
}
