//! The libvirt driver against a real, private libvirtd (QEMU domains under
//! TCG): a guest that honours the power button, a guest-less domain that
//! never shuts down by itself, domains that are already off or not there,
//! and a daemon that hangs or dies.
//!
//! Each test starts its own session libvirtd as an unprivileged user (as
//! `nobody` when the tests run as root) with its own XDG directories, and
//! reaches it with `qemu+unix:///session?socket=...`; [`Libvirtd`]'s drop
//! kills it, its virtlogd and its QEMU processes, and removes its
//! directories, also when the test fails.
//!
//! Skipped with a message when libvirtd, QEMU or the test guest is missing,
//! unless `CI` is set (then `.ci/run` has installed them and a skip is a
//! failure).
#![cfg(feature = "libvirt")]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use shutoff_core::state::PowerState;
use shutoff_hypervisor::{DriverError, DriverSettings, StopMethod, driver_with};
use uuid::Uuid;
use virt::connect::Connect;
use virt::domain::Domain;

/// Booting under TCG takes 3-5 s on an idle machine; a loaded CI machine
/// may take several times that.
const BOOT: Duration = Duration::from_secs(90);

/// Where `scripts/build-test-guest` puts the guest (as testkit's `guest_dir`).
fn guest_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-guest")
}

fn runs(program: &str, arg: &str) -> bool {
    Command::new(program)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// True if a private libvirtd can run domains here (and, with `guest`, the
/// test guest is built); otherwise skipped with a message, or a failure in CI.
fn can_run(guest: bool) -> bool {
    let missing = if !runs("libvirtd", "--version") {
        Some(
            "libvirtd is not installed (apt-get install libvirt-daemon libvirt-daemon-driver-qemu)"
                .to_string(),
        )
    } else if !runs("qemu-system-x86_64", "--version") {
        Some("qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)".to_string())
    } else if guest
        && !(guest_dir().join("vmlinux").is_file()
            && guest_dir().join("initramfs.cpio.gz").is_file())
    {
        Some(format!(
            "the test guest is not built in {} (run scripts/build-test-guest)",
            guest_dir().display()
        ))
    } else {
        None
    };
    match missing {
        None => true,
        Some(m) if std::env::var_os("CI").is_some() => panic!("CI is set but {m}"),
        Some(m) => {
            eprintln!("SKIPPED: {m}");
            false
        }
    }
}

/// A private session libvirtd of one test.
struct Libvirtd {
    child: Child,
    dir: PathBuf,
    runtime: PathBuf,
    socket: PathBuf,
}

impl Libvirtd {
    fn start() -> Libvirtd {
        // Short: libvirt puts each domain's monitor socket under
        // $XDG_CONFIG_HOME, and a unix socket path has at most 107 bytes.
        let id = Uuid::new_v4().simple().to_string();
        let dir = std::env::temp_dir().join(format!("slv-{}", &id[..8]));
        let runtime = dir.join("run");
        for d in ["run", "config", "cache", "home"] {
            std::fs::create_dir_all(dir.join(d)).expect("create the daemon's directories");
        }
        let root = is_root();
        if root {
            // The daemon runs as nobody: it must own its directories (and
            // the serial logs its QEMUs write there).
            let s = Command::new("chown")
                .args(["-R", "nobody:nogroup"])
                .arg(&dir)
                .status()
                .expect("chown");
            assert!(s.success(), "chown {} to nobody", dir.display());
        }
        let mut cmd = if root {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"]);
            c.arg("libvirtd");
            c
        } else {
            Command::new("libvirtd")
        };
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", dir.join("home"))
            .env("XDG_RUNTIME_DIR", &runtime)
            .env("XDG_CONFIG_HOME", dir.join("config"))
            .env("XDG_CACHE_HOME", dir.join("cache"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("libvirtd.err")).expect("create libvirtd.err"));
        let child = cmd.spawn().expect("start libvirtd");
        let socket = runtime.join("libvirt/libvirt-sock");
        let mut d = Libvirtd {
            child,
            dir,
            runtime,
            socket,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::os::unix::net::UnixStream::connect(&d.socket).is_err() {
            if let Ok(Some(status)) = d.child.try_wait() {
                panic!("libvirtd exited with {status}: {}", d.stderr());
            }
            assert!(
                Instant::now() < deadline,
                "libvirtd does not accept connections after 30 s: {}",
                d.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }

    fn uri(&self) -> String {
        format!("qemu+unix:///session?socket={}", self.socket.display())
    }

    /// The instance address of `domain` on this daemon, with `query` (e.g.
    /// `&shutdown_timeout=2`) appended.
    fn address(&self, domain: &str, query: &str) -> String {
        format!(
            "libvirt:///{domain}?uri={}{query}",
            utf8_percent_encode(&self.uri(), NON_ALPHANUMERIC)
        )
    }

    fn connect(&self) -> Connect {
        virt::error::clear_error_callback();
        Connect::open(Some(&self.uri()))
            .unwrap_or_else(|e| panic!("connect to {}: {e}", self.uri()))
    }

    /// Defines a domain (persistent) and, with `start`, starts it; returns
    /// its name. `guest`: the test guest's kernel and initrd; without, a
    /// domain with nothing to boot (the firmware runs forever, nothing hears
    /// the power button).
    fn define(&self, guest: bool, start: bool) -> (Uuid, String) {
        let uuid = Uuid::new_v4();
        let name = format!("shutoff-{}", &uuid.simple().to_string()[..8]);
        let boot = if guest {
            let g = guest_dir();
            format!(
                "<kernel>{}</kernel><initrd>{}</initrd><cmdline>console=ttyS0 quiet panic=-1</cmdline>",
                g.join("vmlinux").canonicalize().unwrap().display(),
                g.join("initramfs.cpio.gz")
                    .canonicalize()
                    .unwrap()
                    .display()
            )
        } else {
            String::new()
        };
        let memory = if guest { 128 } else { 64 };
        let xml = format!(
            "<domain type='qemu'>
               <name>{name}</name><uuid>{uuid}</uuid>
               <memory unit='MiB'>{memory}</memory><vcpu>1</vcpu>
               <os><type arch='x86_64' machine='pc'>hvm</type>{boot}</os>
               <features><acpi/></features>
               <on_poweroff>destroy</on_poweroff><on_reboot>destroy</on_reboot><on_crash>destroy</on_crash>
               <devices>
                 <serial type='file'><source path='{serial}'/><target port='0'/></serial>
                 <memballoon model='none'/>
               </devices>
             </domain>",
            serial = self.serial(&name).display()
        );
        let mut conn = self.connect();
        let dom = Domain::define_xml(&conn, &xml).unwrap_or_else(|e| panic!("define {name}: {e}"));
        if start {
            dom.create()
                .unwrap_or_else(|e| panic!("start {name}: {e}: {}", self.stderr()));
        }
        drop(dom);
        let _ = conn.close();
        (uuid, name)
    }

    fn serial(&self, name: &str) -> PathBuf {
        self.dir.join("home").join(format!("{name}.serial"))
    }

    fn console(&self, name: &str) -> String {
        std::fs::read_to_string(self.serial(name)).unwrap_or_default()
    }

    /// Waits for the guest's ready line on its serial console (acpid runs).
    async fn ready(&self, name: &str) -> bool {
        let deadline = Instant::now() + BOOT;
        while Instant::now() < deadline {
            if self.console(name).contains("shutoff-test-guest: ready") {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// libvirt's state and reason for `name`, as `virsh domstate --reason`
    /// prints them.
    fn domstate(&self, name: &str) -> String {
        let out = Command::new("virsh")
            .args(["-c", &self.uri(), "domstate", "--reason", name])
            .output()
            .expect("run virsh");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Sends `signal` to the daemon (`STOP`: it hangs; `KILL`: it dies).
    fn signal(&mut self, signal: &str) {
        let s = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill");
        assert!(s.success(), "kill -{signal} libvirtd");
        if signal == "KILL" {
            let _ = self.child.wait();
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("libvirtd.err")).unwrap_or_default()
    }

    /// Pids from the pid files the daemon keeps: its QEMUs and virtlogd.
    fn helper_pids(&self) -> Vec<String> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.runtime.join("libvirt/qemu/run"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "pid"))
            .collect();
        files.push(self.runtime.join("libvirt/virtlogd.pid"));
        files
            .iter()
            .filter_map(|f| std::fs::read_to_string(f).ok())
            .map(|p| p.trim().to_string())
            .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            .collect()
    }
}

impl Drop for Libvirtd {
    fn drop(&mut self) {
        let helpers = self.helper_pids();
        let _ = self.child.kill();
        let _ = self.child.wait();
        for pid in helpers {
            // Most have exited already (their pid files stay): quietly.
            let _ = Command::new("kill")
                .args(["-KILL", &pid])
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

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
    assert!(
        s.details().starts_with("clean shutdown in ")
            && s.details()
                .contains("libvirt state shut off (reason shutdown) after"),
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
    assert!(
        off.details().starts_with("already off in ")
            && off
                .details()
                .ends_with(": libvirt state shut off (reason unknown)"),
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
