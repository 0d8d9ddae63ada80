//! The QEMU driver against real VMs (qemu-system-x86_64 under TCG): a guest
//! that honours the power button, guest-less VMs that never shut down by
//! themselves, VMs that are gone, and a VM killed mid-stop. The job-path
//! tests also use the real PostgreSQL and RabbitMQ.
//!
//! Skipped with a message when QEMU or the test guest is missing, unless
//! `CI` is set (then `.ci/run` has installed them and a skip is a failure).

use std::time::{Duration, Instant};

use shutoff_core::state::PowerState;
use shutoff_hypervisor::{DriverError, DriverSettings, StopMethod, driver_with};
use shutoff_testkit::vm::{Guest, TestVm, can_run};
use shutoff_testkit::workers;
use sqlx::PgPool;
use uuid::Uuid;

/// Booting under TCG takes 3-5 s on an idle machine; a loaded CI machine
/// may take several times that.
const BOOT: Duration = Duration::from_secs(90);

fn settings(shutdown_timeout: u64, retry_interval: u64) -> DriverSettings {
    DriverSettings {
        shutdown_timeout: Duration::from_secs(shutdown_timeout),
        shutdown_retry_interval: Duration::from_secs(retry_interval),
        qmp_timeout: Duration::from_secs(10),
        ..DriverSettings::default()
    }
}

#[tokio::test]
async fn a_guest_that_honours_the_power_button_shuts_down_cleanly() {
    if !can_run(Guest::Linux) {
        return;
    }
    let booted = Instant::now();
    let mut vm = TestVm::start(Guest::Linux, &[]).await;
    assert!(vm.ready(BOOT).await, "guest did not boot: {}", vm.console());
    let boot = booted.elapsed();
    let driver = driver_with(&vm.address(""), &settings(60, 10)).unwrap();
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
    assert!(
        s.details()
            .contains("SHUTDOWN guest=true reason=guest-shutdown"),
        "{}",
        s.details()
    );
    assert!(s.elapsed < Duration::from_secs(10), "{:?}", s.elapsed);
    assert!(
        vm.console().contains("power button pressed"),
        "{}",
        vm.console()
    );
    let status = vm.exited(Duration::from_secs(10)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "QEMU exits after the guest's shutdown: {status:?}"
    );
}

#[tokio::test]
async fn a_press_during_boot_is_repeated_until_the_guest_listens() {
    if !can_run(Guest::Linux) {
        return;
    }
    let mut vm = TestVm::start(Guest::Linux, &[]).await;
    // Pressed at once, while the kernel is still booting: the first
    // presses fall on deaf ears, a later one finds acpid running.
    let driver = driver_with(&vm.address("?shutdown_retry_interval=1"), &settings(90, 10)).unwrap();

    let s = driver.power_off(Uuid::new_v4()).await.unwrap();

    eprintln!(
        "timing: stop from power-on {:?}: {}",
        s.elapsed,
        s.details()
    );
    assert_eq!(s.how, StopMethod::Clean, "{}", s.details());
    assert!(
        !s.details().contains("after 1 power-button press"),
        "a single press during boot should not have been enough: {}",
        s.details()
    );
    // The guest's own handler heard the button (its "ready" line may not
    // come first: acpid can act on a press before the boot script sees it
    // holding the device and says so).
    assert!(
        vm.console()
            .contains("shutoff-test-guest: power button pressed, powering off"),
        "{}",
        vm.console()
    );
    assert!(vm.exited(Duration::from_secs(10)).await.is_some());
}

#[tokio::test]
async fn a_vm_that_ignores_the_power_button_is_powered_off_hard_after_the_timeout() {
    if !can_run(Guest::None) {
        return;
    }
    let mut vm = TestVm::start(Guest::None, &[]).await;
    let driver = driver_with(&vm.address("?shutdown_timeout=3"), &settings(60, 1)).unwrap();

    let s = driver.power_off(Uuid::new_v4()).await.unwrap();

    eprintln!("timing: hard stop {:?}: {}", s.elapsed, s.details());
    assert_eq!(s.how, StopMethod::Forced, "{}", s.details());
    assert_eq!(s.power_state, PowerState::Shutdown);
    let d = s.details();
    assert!(
        d.contains("no SHUTDOWN from the guest within 3 s after 3 power-button presses"),
        "{d}"
    );
    assert!(d.contains("reason=host-qmp-quit"), "{d}");
    assert!(
        s.elapsed >= Duration::from_secs(3) && s.elapsed < Duration::from_secs(8),
        "{:?}",
        s.elapsed
    );
    assert!(vm.exited(Duration::from_secs(5)).await.is_some());
}

#[tokio::test]
async fn a_zero_shutdown_timeout_powers_off_at_once() {
    if !can_run(Guest::None) {
        return;
    }
    let mut vm = TestVm::start(Guest::None, &[]).await;
    let driver = driver_with(&vm.address("?shutdown_timeout=0"), &settings(60, 10)).unwrap();

    let s = driver.power_off(Uuid::new_v4()).await.unwrap();

    eprintln!("timing: immediate hard stop {:?}", s.elapsed);
    assert_eq!(s.how, StopMethod::Forced);
    assert!(
        s.details().contains("shutdown timeout 0"),
        "{}",
        s.details()
    );
    assert!(s.elapsed < Duration::from_secs(3), "{:?}", s.elapsed);
    assert!(vm.exited(Duration::from_secs(5)).await.is_some());
}

#[tokio::test]
async fn a_vm_that_is_off_or_gone_is_already_off() {
    if !can_run(Guest::Linux) {
        return;
    }
    // Off but still there: -no-shutdown keeps QEMU after the guest's
    // shutdown, in status "shutdown".
    let mut kept = TestVm::start(Guest::Linux, &["-no-shutdown"]).await;
    assert!(kept.ready(BOOT).await, "{}", kept.console());
    let driver = driver_with(&kept.address(""), &settings(60, 10)).unwrap();
    let first = driver.power_off(Uuid::new_v4()).await.unwrap();
    assert_eq!(first.how, StopMethod::Clean, "{}", first.details());
    assert_eq!(first.power_state, PowerState::Shutdown);
    assert!(
        kept.exit_status().is_none(),
        "-no-shutdown: QEMU stays, powered off"
    );

    let again = driver.power_off(Uuid::new_v4()).await.unwrap();
    assert_eq!(again.how, StopMethod::AlreadyOff, "{}", again.details());
    assert_eq!(again.power_state, PowerState::Shutdown);
    assert!(again.details().contains("QEMU status shutdown"));
    assert_eq!(
        driver.power_state(Uuid::new_v4()).await,
        Ok(PowerState::Shutdown)
    );

    // Killed: the socket file stays behind, connecting is refused.
    let mut killed = TestVm::start(Guest::None, &[]).await;
    killed.kill();
    assert!(killed.qmp.exists());
    let s = driver_with(&killed.address(""), &settings(60, 10))
        .unwrap()
        .power_off(Uuid::new_v4())
        .await
        .unwrap();
    assert_eq!(s.how, StopMethod::AlreadyOff, "{}", s.details());
    assert_eq!(s.power_state, PowerState::Shutdown);

    // Stopped through QMP earlier: QEMU removed its socket.
    let mut quit = TestVm::start(Guest::None, &[]).await;
    let d = driver_with(&quit.address("?shutdown_timeout=0"), &settings(60, 10)).unwrap();
    d.power_off(Uuid::new_v4()).await.unwrap();
    assert!(quit.exited(Duration::from_secs(5)).await.is_some());
    let s = d.power_off(Uuid::new_v4()).await.unwrap();
    assert_eq!(s.how, StopMethod::AlreadyOff, "{}", s.details());
}

#[tokio::test]
async fn a_vm_killed_mid_stop_is_a_prompt_transient_error_then_already_off() {
    if !can_run(Guest::None) {
        return;
    }
    let mut vm = TestVm::start(Guest::None, &[]).await;
    let pid = vm.pid();
    let driver = driver_with(&vm.address(""), &settings(60, 10)).unwrap();

    let stop = driver.power_off(Uuid::new_v4());
    let kill = async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        vm.kill();
        Instant::now()
    };
    let (result, killed_at) = tokio::join!(stop, kill);

    let noticed = killed_at.elapsed();
    eprintln!("timing: QEMU (pid {pid}) killed mid-stop, noticed in {noticed:?}");
    assert!(
        matches!(&result, Err(DriverError::Transient { message: m, .. }) if m.contains("closed")),
        "{result:?}"
    );
    assert!(noticed < Duration::from_secs(2), "{noticed:?}");
    let retry = driver.power_off(Uuid::new_v4()).await.unwrap();
    assert_eq!(retry.how, StopMethod::AlreadyOff, "{}", retry.details());
}

#[tokio::test]
async fn qmp_over_tcp_works_like_unix() {
    if !can_run(Guest::None) {
        return;
    }
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut vm = TestVm::start(
        Guest::None,
        &["-qmp", &format!("tcp:127.0.0.1:{port},server=on,wait=off")],
    )
    .await;
    let address = format!("qmp+tcp://127.0.0.1:{port}?shutdown_timeout=0");
    let driver = driver_with(&address, &settings(60, 10)).unwrap();
    let mut state = Err(DriverError::transient("not tried"));
    for _ in 0..100 {
        state = driver.power_state(Uuid::new_v4()).await;
        if state.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(state, Ok(PowerState::Running));

    let s = driver.power_off(Uuid::new_v4()).await.unwrap();

    assert_eq!(s.how, StopMethod::Forced, "{}", s.details());
    assert!(vm.exited(Duration::from_secs(5)).await.is_some());
    let s = driver.power_off(Uuid::new_v4()).await.unwrap();
    assert_eq!(s.how, StopMethod::AlreadyOff, "{}", s.details());
}

/// The job path: a stop whose QEMU dies mid-stop is retried by the retry
/// policy and then recorded as a success (the VM is gone), with both
/// attempts visible.
#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn a_job_whose_vm_dies_mid_stop_is_retried_and_then_succeeds(pool: PgPool) {
    if !can_run(Guest::None) {
        return;
    }
    let c = workers::ctx(pool).await;
    let w = c.worker(|_| {}).await;
    let mut vm = TestVm::start(Guest::None, &[]).await;
    let server = c.server(&vm.address("")).await;

    let job = c.stop(server, 5).await;
    assert!(c.until_job(job.job_id, "running", BOOT).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    vm.kill();

    assert!(
        c.until_job(job.job_id, "succeeded", Duration::from_secs(30))
            .await
    );
    assert_eq!(
        c.job(job.job_id).await.1,
        2,
        "one failed attempt, one retry"
    );
    assert_eq!(c.instance(server).await, ("stopped".into(), None, 4));
    let details: String = sqlx::query_scalar(
        "SELECT e.details FROM instance_actions_events e
           JOIN jobs j ON j.action_id = e.action_id WHERE j.id = $1",
    )
    .bind(job.job_id)
    .fetch_one(&c.env.pool)
    .await
    .unwrap();
    assert!(details.starts_with("already off in "), "{details}");
    w.terminate().await;
}

/// The job path: a guest-less VM with a per-instance timeout of 2 s ends
/// STOPPED, its event saying the stop was forced and how long it took.
#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn a_job_records_a_forced_stop_and_its_duration_in_the_event(pool: PgPool) {
    if !can_run(Guest::None) {
        return;
    }
    let c = workers::ctx(pool).await;
    let w = c.worker(|s| s.shutdown_retry_interval_secs = 1).await;
    let mut vm = TestVm::start(Guest::None, &[]).await;
    let server = c.server(&vm.address("?shutdown_timeout=2")).await;

    let job = c.stop(server, 5).await;

    assert!(
        c.until_job(job.job_id, "succeeded", Duration::from_secs(30))
            .await
    );
    assert_eq!(c.instance(server).await, ("stopped".into(), None, 4));
    let (result, details) = c.event(job.job_id).await;
    assert_eq!(result, "Success");
    assert!(details.starts_with("forced power-off in 2."), "{details}");
    assert!(
        details.contains("after 2 power-button presses"),
        "{details}"
    );
    assert!(details.contains("reason=host-qmp-quit"), "{details}");
    assert!(vm.exited(Duration::from_secs(5)).await.is_some());
    w.terminate().await;
}
