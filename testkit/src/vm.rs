//! [`TestVm`]: real QEMU VMs for tests.
//!
//! Two kinds, both `qemu-system-x86_64 -accel tcg` so no KVM is needed:
//! - [`Guest::None`]: a disk-less VM with no guest at all. It answers QMP in
//!   about 0.1 s, but nothing hears the power button: the timeout and hard
//!   power-off path.
//! - [`Guest::Linux`]: the test guest built by `scripts/build-test-guest`
//!   (Debian's kernel, an initramfs running busybox `acpid`). It boots in
//!   3-5 s under TCG and powers off on the power button in about 0.1 s.
//!
//! Each [`TestVm`] belongs to one test and is killed by its PID when dropped.
//! At most two Linux guests boot at once (the CI machine has two cores).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use tokio::sync::{Semaphore, SemaphorePermit};
use uuid::Uuid;

pub const QEMU: &str = "qemu-system-x86_64";

/// Memory for a Linux guest: Debian's kernel needs at least 96 MB.
const GUEST_MEMORY_MB: u32 = 128;

/// Caps Linux guests alive at once (they are busy only while booting, but a
/// test that boots one also stops it soon after).
static GUESTS: Semaphore = Semaphore::const_new(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guest {
    /// No kernel, no disk: QEMU runs the empty firmware forever.
    None,
    /// The test guest: honours the ACPI power button.
    Linux,
}

/// Where `scripts/build-test-guest` puts the guest.
pub fn guest_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-guest")
}

fn qemu_installed() -> bool {
    Command::new(QEMU)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn guest_built() -> bool {
    let d = guest_dir();
    d.join("vmlinux").is_file() && d.join("initramfs.cpio.gz").is_file()
}

/// True if the tests can run VMs of this kind. Without them the test is
/// skipped with a message, except in CI (the env var `CI` is set), where
/// `.ci/run` installs QEMU and builds the guest, so it is a failure.
pub fn can_run(guest: Guest) -> bool {
    let missing = if !qemu_installed() {
        Some(format!(
            "{QEMU} is not installed (apt-get install qemu-system-x86)"
        ))
    } else if guest == Guest::Linux && !guest_built() {
        Some(format!(
            "the test guest is not built in {} (run scripts/build-test-guest)",
            guest_dir().display()
        ))
    } else {
        None
    };
    crate::skip::runnable(missing)
}

/// One QEMU process of one test.
pub struct TestVm {
    child: Child,
    dir: PathBuf,
    /// The QMP monitor's socket.
    pub qmp: PathBuf,
    /// The guest's serial console, written by QEMU.
    pub serial: PathBuf,
    _permit: Option<SemaphorePermit<'static>>,
}

impl TestVm {
    /// Starts a VM and waits until its QMP socket accepts connections. `extra` is appended to
    /// QEMU's arguments (e.g. `-no-shutdown`).
    pub async fn start(guest: Guest, extra: &[&str]) -> TestVm {
        let permit = match guest {
            Guest::Linux => Some(GUESTS.acquire().await.expect("semaphore never closes")),
            Guest::None => None,
        };
        let dir = std::env::temp_dir().join(format!("shutoff-vm-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("create the VM's directory");
        let qmp = dir.join("vm.qmp");
        let serial = dir.join("serial.log");
        let mut cmd = Command::new(QEMU);
        cmd.args(["-accel", "tcg", "-machine", "pc", "-smp", "1"])
            .args(["-nodefaults", "-no-user-config", "-display", "none"])
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp.display()))
            .arg("-serial")
            .arg(format!("file:{}", serial.display()));
        match guest {
            Guest::None => {
                cmd.args(["-m", "64"]);
            }
            Guest::Linux => {
                let g = guest_dir();
                cmd.args(["-m", &GUEST_MEMORY_MB.to_string(), "-no-reboot"])
                    .arg("-kernel")
                    .arg(g.join("vmlinux"))
                    .arg("-initrd")
                    .arg(g.join("initramfs.cpio.gz"))
                    .args(["-append", "console=ttyS0 quiet panic=-1"]);
            }
        }
        cmd.args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("qemu.err")).expect("create qemu.err"));
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {QEMU}: {e}"));
        let mut vm = TestVm {
            child,
            dir,
            qmp,
            serial,
            _permit: permit,
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        // The socket file appears at bind(), a moment before QEMU listens:
        // wait until a connection is accepted.
        while tokio::net::UnixStream::connect(&vm.qmp).await.is_err() {
            if let Ok(Some(status)) = vm.child.try_wait() {
                panic!("{QEMU} exited with {status}: {}", vm.stderr());
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "QMP does not accept connections after 30 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        vm
    }

    /// The instance address for this VM, with `query` (e.g.
    /// `?shutdown_timeout=1`) appended.
    pub fn address(&self, query: &str) -> String {
        format!("qmp+unix://{}{query}", self.qmp.display())
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the guest's ready line on the serial console (acpid runs).
    pub async fn ready(&mut self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let log = std::fs::read_to_string(&self.serial).unwrap_or_default();
            if log.contains("shutoff-test-guest: ready") {
                return true;
            }
            if tokio::time::Instant::now() > deadline || self.exit_status().is_some() {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The QEMU process's exit status, if it has exited.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits up to `timeout` for the QEMU process to exit.
    pub async fn exited(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(s) = self.exit_status() {
                return Some(s);
            }
            if tokio::time::Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL by PID, as a host crash would; the socket file stays behind.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The guest's serial console so far.
    pub fn console(&self) -> String {
        std::fs::read_to_string(&self.serial).unwrap_or_default()
    }

    /// What QEMU wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("qemu.err")).unwrap_or_default()
    }
}

impl Drop for TestVm {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
