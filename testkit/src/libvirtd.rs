//! [`Libvirtd`]: a private session libvirtd for one test, and QEMU domains
//! on it (`<domain type='qemu'>` under TCG, so no KVM is needed):
//! - with the test guest (`scripts/build-test-guest`): honours the ACPI power
//!   button;
//! - with nothing to boot: the firmware runs forever and nothing hears the
//!   power button.
//!
//! The daemon runs as an unprivileged user (`nobody` when the tests run as
//! root) with its own `XDG_RUNTIME_DIR`, `XDG_CONFIG_HOME`, `XDG_CACHE_HOME`
//! and `HOME`, and is reached with `qemu+unix:///session?socket=...`. Dropping
//! a [`Libvirtd`] kills it, its virtlogd and its QEMUs (by their pid files)
//! and removes its directories, also when the test fails. Domains are
//! defined with `virsh`, so this needs no libvirt-dev; the driver under test
//! does.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use uuid::Uuid;

use crate::vm::guest_dir;

/// Booting under TCG takes 3-5 s on an idle machine; a loaded CI machine
/// may take several times that.
const BOOT: Duration = Duration::from_secs(90);

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

/// True when this build has the libvirt driver (the `libvirt` feature,
/// which the README's test command turns on); otherwise skipped with a
/// message, or a failure in CI.
pub fn driver_built() -> bool {
    let missing = match shutoff_hypervisor::driver_for("libvirt:///probe") {
        Err(e) if e.to_string().contains("this build has no libvirt driver") => Some(
            "the tests were built without the libvirt feature (cargo test ... --features shutoff-worker/libvirt)"
                .to_string(),
        ),
        _ => None,
    };
    crate::skip::runnable(missing)
}

/// True if a private libvirtd can run domains here (and, with `guest`, the
/// test guest is built); otherwise skipped with a message, or a failure in CI.
pub fn can_run(guest: bool) -> bool {
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
    crate::skip::runnable(missing)
}

/// Starts a session libvirtd whose every directory is under `dir` (as
/// `nobody` when the tests run as root); its stderr goes to `libvirtd.err`.
fn spawn_daemon(dir: &std::path::Path, runtime: &std::path::Path) -> Child {
    let mut cmd = if is_root() {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"]);
        c.arg("libvirtd");
        c
    } else {
        Command::new("libvirtd")
    };
    let err = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("libvirtd.err"))
        .expect("open libvirtd.err");
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", dir.join("home"))
        .env("XDG_RUNTIME_DIR", runtime)
        .env("XDG_CONFIG_HOME", dir.join("config"))
        .env("XDG_CACHE_HOME", dir.join("cache"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err);
    cmd.spawn().expect("start libvirtd")
}

/// A private session libvirtd of one test.
pub struct Libvirtd {
    child: Child,
    dir: PathBuf,
    runtime: PathBuf,
    socket: PathBuf,
}

impl Libvirtd {
    pub fn start() -> Libvirtd {
        // Short: libvirt puts each domain's monitor socket under
        // $XDG_CONFIG_HOME, and a unix socket path has at most 107 bytes.
        let id = Uuid::new_v4().simple().to_string();
        let dir = std::env::temp_dir().join(format!("slv-{}", &id[..8]));
        let runtime = dir.join("run");
        for d in ["run", "config", "cache", "home"] {
            std::fs::create_dir_all(dir.join(d)).expect("create the daemon's directories");
        }
        if is_root() {
            // The daemon runs as nobody: it must own its directories (and
            // the serial logs its QEMUs write there).
            let s = Command::new("chown")
                .args(["-R", "nobody:nogroup"])
                .arg(&dir)
                .status()
                .expect("chown");
            assert!(s.success(), "chown {} to nobody", dir.display());
        }
        let socket = runtime.join("libvirt/libvirt-sock");
        let child = spawn_daemon(&dir, &runtime);
        let mut d = Libvirtd {
            child,
            dir,
            runtime,
            socket,
        };
        d.wait_for_socket();
        d
    }

    /// Kills the daemon (SIGKILL, as a crash) and starts it again on the
    /// same directories. Its QEMUs run on: the new daemon finds them from
    /// its state directory, as libvirtd does after a restart on a host.
    pub fn restart(&mut self) {
        self.signal("KILL");
        let _ = std::fs::remove_file(&self.socket);
        self.child = spawn_daemon(&self.dir, &self.runtime);
        self.wait_for_socket();
    }

    fn wait_for_socket(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::os::unix::net::UnixStream::connect(&self.socket).is_err() {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("libvirtd exited with {status}: {}", self.stderr());
            }
            assert!(
                Instant::now() < deadline,
                "libvirtd does not accept connections after 30 s: {}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn uri(&self) -> String {
        format!("qemu+unix:///session?socket={}", self.socket.display())
    }

    /// The instance address of `domain` on this daemon, with `query` (e.g.
    /// `&shutdown_timeout=2`) appended.
    pub fn address(&self, domain: &str, query: &str) -> String {
        format!(
            "libvirt:///{domain}?uri={}{query}",
            utf8_percent_encode(&self.uri(), NON_ALPHANUMERIC)
        )
    }

    /// Defines a domain (persistent) and, with `start`, starts it; returns
    /// its name. `guest`: the test guest's kernel and initrd; without, a
    /// domain with nothing to boot (the firmware runs forever, nothing hears
    /// the power button).
    pub fn define(&self, guest: bool, start: bool) -> (Uuid, String) {
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
        let file = self.dir.join(format!("{name}.xml"));
        std::fs::write(&file, xml).expect("write the domain's XML");
        self.virsh(&["define", &file.display().to_string()]);
        if start {
            self.virsh(&["start", &name]);
        }
        (uuid, name)
    }

    pub fn serial(&self, name: &str) -> PathBuf {
        self.dir.join("home").join(format!("{name}.serial"))
    }

    pub fn console(&self, name: &str) -> String {
        std::fs::read_to_string(self.serial(name)).unwrap_or_default()
    }

    /// Waits for the guest's ready line on its serial console (acpid runs).
    pub async fn ready(&self, name: &str) -> bool {
        let deadline = Instant::now() + BOOT;
        while Instant::now() < deadline {
            if self.console(name).contains("shutoff-test-guest: ready") {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// Runs `virsh ARGS` on this daemon and returns what it printed; a
    /// failure panics with virsh's and the daemon's words.
    fn virsh(&self, args: &[&str]) -> String {
        let out = Command::new("virsh")
            .args(["-c", &self.uri()])
            .args(args)
            .output()
            .expect("run virsh");
        assert!(
            out.status.success(),
            "virsh {args:?}: {}: {}",
            String::from_utf8_lossy(&out.stderr),
            self.stderr()
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// libvirt's state and reason for `name`, as `virsh domstate --reason`
    /// prints them.
    pub fn domstate(&self, name: &str) -> String {
        self.virsh(&["domstate", "--reason", name])
    }

    /// Sends `signal` to the daemon (`STOP`: it hangs; `KILL`: it dies).
    pub fn signal(&mut self, signal: &str) {
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

    pub fn stderr(&self) -> String {
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
