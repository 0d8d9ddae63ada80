//! Two compute hosts on one machine, each worker seeing only its own host's
//! VMs: the worker of `qemu-b` runs as its own process in its own mount
//! namespace, where the directory of `qemu-a`'s QMP socket is an empty
//! tmpfs. A stop for a VM on `qemu-a` waits, untouched, while only `qemu-b`
//! has a worker, even when a copy of it strays onto `qemu-b`'s queue (a
//! worker of `qemu-b` that took it would find no socket and record a running
//! guest as already off); `qemu-a`'s own worker then shuts the guest down
//! cleanly.
//!
//! Real PostgreSQL, RabbitMQ and QEMU. Skipped with a message when QEMU or
//! the test guest is missing or `unshare` cannot make a mount namespace
//! (it needs root), unless `CI` is set.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use shutoff_core::state::PowerState;
use shutoff_core::store::hosts;
use shutoff_hypervisor::{DriverSettings, driver_with};
use shutoff_testkit::vm::{Guest, TestVm, can_run};
use shutoff_testkit::workers;
use sqlx::PgPool;
use uuid::Uuid;

/// Booting under TCG takes 3-5 s on an idle machine; a loaded CI machine
/// may take several times that.
const BOOT: Duration = Duration::from_secs(90);
const T: Duration = Duration::from_secs(30);
const UP: Duration = Duration::from_secs(30);
/// How long the stop is left with only `qemu-b`'s worker running (its
/// rescuer passes every 200 ms and counts a job stale after 1 s).
const WAIT: Duration = Duration::from_secs(5);

/// True if `unshare` can give a child its own mount namespace with a tmpfs
/// mounted in it; otherwise skipped with a message, or a failure in CI.
fn can_unshare() -> bool {
    let out = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg("mount -t tmpfs tmpfs /mnt")
        .output();
    shutoff_testkit::skip::runnable(match out {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!(
            "unshare --mount cannot mount a tmpfs (root is needed): {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Some(format!("unshare cannot be run: {e}")),
    })
}

/// The log of the `qemu-b` worker process, deleted with the test.
struct Log(PathBuf);

impl Log {
    fn new() -> Log {
        Log(std::env::temp_dir().join(format!("shutoff-qemu-b-{}.log", Uuid::new_v4().simple())))
    }

    fn text(&self) -> String {
        std::fs::read_to_string(&self.0).unwrap_or_default()
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn a_worker_of_another_host_in_its_own_mount_namespace_leaves_the_guest_alone_until_its_hosts_worker_stops_it_cleanly(
    pool: PgPool,
) {
    if !can_run(Guest::Linux) || !can_unshare() {
        return;
    }
    let started = Instant::now();
    let c = workers::ctx(pool).await;
    // qemu-a had a worker once (its queue exists); qemu-b's starts below.
    let a = c.env.host("qemu-a");
    c.env.declare_host(&a).await;
    let b = c.env.host("qemu-b");
    let mut vm = TestVm::start(Guest::Linux, &[]).await;
    assert!(vm.ready(BOOT).await, "guest did not boot: {}", vm.console());
    let booted = started.elapsed();
    let server = c.server_on(a.as_str(), &vm.address("")).await;
    let socket_dir: &Path = vm
        .qmp
        .parent()
        .expect("the socket is in the VM's directory");

    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let b_id = format!("qemu-b-{}", Uuid::new_v4().simple());
    let log = Log::new();
    let out = std::fs::File::create(&log.0).unwrap();
    let mut b_worker = tokio::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(r#"mount -t tmpfs tmpfs "$HIDE" && exec "$0" "$@""#)
        .arg(env!("CARGO_BIN_EXE_shutoff-worker"))
        .args(["--database-url", &c.env.database_url])
        .args(["--amqp-url", &c.env.amqp_url])
        .args(["--queue-prefix", &c.env.topology.prefix])
        .args(["--retry-delays-ms", "100,200"])
        .args(["--host", b.as_str(), "--worker-id", &b_id])
        .args(["--health-listen", &format!("127.0.0.1:{port}")])
        // Its rescuer would republish anything of a host that is up and
        // stale for a second: qemu-a is down, so it must find nothing.
        .args([
            "--rescuer",
            "--rescue-after-secs",
            "1",
            "--rescue-interval-ms",
            "200",
        ])
        .env("HIDE", socket_dir)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let ready = c
        .env
        .eventually(T, || async {
            reqwest::get(format!("http://127.0.0.1:{port}/readyz"))
                .await
                .is_ok_and(|r| r.status().as_u16() == 200)
        })
        .await;
    assert!(ready, "qemu-b's worker never became ready:\n{}", log.text());
    // unshare and sh exec, so the child's pid is the worker's: its view of
    // the socket's directory is the empty tmpfs.
    let pid = b_worker.id().expect("the qemu-b worker runs");
    let own_ns = std::fs::read_link("/proc/self/ns/mnt").unwrap();
    let b_ns = std::fs::read_link(format!("/proc/{pid}/ns/mnt")).unwrap();
    assert_ne!(own_ns, b_ns, "qemu-b's worker has its own mount namespace");
    let hidden = Path::new(&format!("/proc/{pid}/root")).join(vm.qmp.strip_prefix("/").unwrap());
    assert!(
        vm.qmp.exists() && !hidden.exists(),
        "the socket is hidden from qemu-b"
    );

    let job = c.stop(server, 5).await;
    // A copy strays onto qemu-b's queue: its worker must hand it to qemu-a.
    c.env
        .publish_raw(&c.env.topology.host_queue(&b), &job.to_bytes())
        .await;
    tokio::time::sleep(WAIT).await;

    assert!(
        vm.exit_status().is_none(),
        "QEMU still runs: {}",
        vm.console()
    );
    let driver = driver_with(
        &vm.address(""),
        &DriverSettings {
            shutdown_timeout: Duration::from_secs(60),
            shutdown_retry_interval: Duration::from_secs(10),
            qmp_timeout: Duration::from_secs(10),
            ..DriverSettings::default()
        },
    )
    .unwrap();
    assert_eq!(
        driver.power_state(server).await,
        Ok(PowerState::Running),
        "QMP query-status says the guest runs"
    );
    let (state, attempts, worker, untouched): (String, i32, Option<String>, bool) = sqlx::query_as(
        "SELECT state, attempts, worker, updated_at = created_at FROM jobs WHERE id = $1",
    )
    .bind(job.job_id)
    .fetch_one(&c.env.pool)
    .await
    .unwrap();
    assert_eq!(
        (state.as_str(), attempts, worker.as_deref(), untouched),
        ("queued", 0, None, true),
        "not claimed, not rescued:\n{}",
        log.text()
    );
    assert_eq!(
        c.instance(server).await,
        ("active".into(), Some("powering-off".into()), 1)
    );
    assert_eq!(
        (
            c.ready_messages(&c.env.topology.host_queue(&a)).await,
            c.ready_messages(&c.env.topology.host_queue(&b)).await
        ),
        (2, 0),
        "the stray copy was handed to qemu-a's queue"
    );
    let listed = hosts::list(&c.env.pool, UP).await.unwrap();
    let row = |name: &str| {
        listed
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("{name} is not listed: {listed:?}"))
    };
    let (ra, rb) = (row("qemu-a"), row("qemu-b"));
    assert!(!ra.up && ra.waiting == 1, "{ra:?}");
    assert!(rb.up && rb.waiting == 0, "{rb:?}");
    assert!(rb.workers.iter().any(|w| w.starts_with(&b_id)), "{rb:?}");

    let t = Instant::now();
    let wa = c.worker_for(a.as_str(), |_| {}).await;
    assert!(
        c.until_job(job.job_id, "succeeded", Duration::from_secs(60))
            .await,
        "job is {:?}",
        c.job(job.job_id).await
    );
    let stopped_in = t.elapsed();
    let worker: Option<String> = sqlx::query_scalar("SELECT worker FROM jobs WHERE id = $1")
        .bind(job.job_id)
        .fetch_one(&c.env.pool)
        .await
        .unwrap();
    assert_eq!(worker.as_deref(), Some(wa.id.as_str()));
    assert_eq!(c.job(job.job_id).await.1, 1, "one attempt");
    assert_eq!(c.transitions_to(job.job_id, "succeeded").await, 1);
    assert_eq!(c.instance(server).await, ("stopped".into(), None, 4));
    let (result, details) = c.event(job.job_id).await;
    assert_eq!(result, "Success");
    assert!(details.starts_with("clean shutdown in "), "{details}");
    assert!(details.contains("SHUTDOWN guest=true"), "{details}");
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
    eprintln!(
        "timing: boot {booted:?}, qemu-a's worker start to succeeded {stopped_in:?}, whole test {:?}: {details}",
        started.elapsed()
    );

    wa.terminate().await;
    b_worker.kill().await.unwrap();
}
