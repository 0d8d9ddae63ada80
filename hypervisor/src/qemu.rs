//! `qmp+unix://` and `qmp+tcp://`: a QEMU VM driven over its QMP monitor,
//! stopped as Nova's libvirt driver stops a server (`power_off` with a clean
//! shutdown):
//!
//! 1. Gone (no socket, connection refused: [`Gone`], kept in
//!    [`Stopped::gone`] and worded in the event) or already `shutdown`:
//!    success.
//! 2. Running: press the ACPI power button (`system_powerdown`) and wait for
//!    the `SHUTDOWN` event, pressing again every `shutdown_retry_interval`
//!    (a guest that is still booting ignores the press), for at most
//!    `shutdown_timeout`.
//! 3. Otherwise (timeout, zero timeout, or a guest that cannot answer the
//!    button: paused, crashed, ...): hard power-off with `quit`, confirmed by
//!    QEMU closing the monitor as it exits.
//!
//! Any QMP answer that does not come within `qmp_timeout`, or a session that
//! breaks mid-stop, is a transient error for the worker's retry policy; the
//! retry then finds the VM off, gone, or still running, and carries on.
//!
//! Addresses:
//!
//! - `qmp+unix:///absolute/path/vm.qmp` for `-qmp unix:/absolute/path/vm.qmp,server=on,wait=off`
//! - `qmp+tcp://127.0.0.1:4444` for `-qmp tcp:127.0.0.1:4444,server=on,wait=off`
//!   (QMP has no authentication: keep it on loopback or a private network)
//!
//! Per-instance overrides of the worker's settings, as query parameters:
//! `?shutdown_timeout=SECS` (0: hard power-off at once) and
//! `?shutdown_retry_interval=SECS`.
//!
//! After a clean shutdown QEMU exits by itself, unless it was started with
//! `-no-shutdown`; then it stays, in status `shutdown`, and we leave it so.

use std::path::PathBuf;
use std::time::Duration;

use futures::future::BoxFuture;
use shutoff_core::state::PowerState;
use tokio::time::Instant;
use uuid::Uuid;

use crate::qmp::{Endpoint, Qmp, QmpError};
use crate::{DriverError, DriverSettings, Gone, Hypervisor, StopMethod, Stopped, override_secs};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuHypervisor {
    pub endpoint: Endpoint,
    pub shutdown_timeout: Duration,
    pub shutdown_retry_interval: Duration,
    pub qmp_timeout: Duration,
}

impl QemuHypervisor {
    pub fn from_url(url: &url::Url, settings: &DriverSettings) -> Result<Self, DriverError> {
        let bad =
            |m: String| DriverError::permanent(format!("invalid {}:// address: {m}", url.scheme()));
        if !url.username().is_empty() || url.password().is_some() || url.fragment().is_some() {
            return Err(bad("user, password and fragment are not allowed".into()));
        }
        let endpoint = match url.scheme() {
            "qmp+unix" => {
                if url.host_str().is_some_and(|h| !h.is_empty()) || url.port().is_some() {
                    return Err(bad(format!(
                        "the socket path must be absolute: qmp+unix:///path/to/vm.qmp, not {:?}",
                        url.as_str()
                    )));
                }
                let path = percent_encoding::percent_decode_str(url.path())
                    .decode_utf8()
                    .map_err(|e| bad("the socket path is not valid UTF-8".into()).caused_by(e))?;
                if path.len() < 2 || !path.starts_with('/') || path.ends_with('/') {
                    return Err(bad(format!("{path:?} is not a path to a socket")));
                }
                Endpoint::Unix(PathBuf::from(&*path))
            }
            "qmp+tcp" => {
                let host = url
                    .host_str()
                    .filter(|h| !h.is_empty())
                    .ok_or_else(|| bad("a host is required: qmp+tcp://HOST:PORT".into()))?;
                let port = url
                    .port()
                    .ok_or_else(|| bad("a port is required: qmp+tcp://HOST:PORT".into()))?;
                if !matches!(url.path(), "" | "/") {
                    return Err(bad(format!("unexpected path {:?}", url.path())));
                }
                // url keeps IPv6 hosts bracketed; connect wants them bare.
                let host = host.trim_start_matches('[').trim_end_matches(']');
                Endpoint::Tcp {
                    host: host.to_string(),
                    port,
                }
            }
            other => return Err(bad(format!("not a QMP scheme: {other}"))),
        };
        let mut q = QemuHypervisor {
            endpoint,
            shutdown_timeout: settings.shutdown_timeout,
            shutdown_retry_interval: settings.shutdown_retry_interval,
            qmp_timeout: settings.qmp_timeout,
        };
        for (k, v) in url.query_pairs() {
            let secs = || override_secs(&k, &v, bad);
            match &*k {
                "shutdown_timeout" => q.shutdown_timeout = secs()?,
                "shutdown_retry_interval" => {
                    q.shutdown_retry_interval = secs()?;
                    if q.shutdown_retry_interval.is_zero() {
                        return Err(bad("shutdown_retry_interval must be at least 1".into()));
                    }
                }
                other => {
                    return Err(bad(format!(
                        "unknown parameter {other:?} (known: shutdown_timeout, shutdown_retry_interval)"
                    )));
                }
            }
        }
        q.shutdown_retry_interval = q.shutdown_retry_interval.max(Duration::from_millis(100));
        Ok(q)
    }

    async fn connect(&self) -> Result<Qmp, QmpError> {
        Qmp::connect(&self.endpoint, self.qmp_timeout).await
    }

    /// The whole stop; `start` is when the driver was called.
    async fn stop(&self, instance: Uuid, start: Instant) -> Result<Stopped, DriverError> {
        let done = |how, power_state, note: String| Stopped {
            power_state,
            how,
            elapsed: start.elapsed(),
            note,
            gone: None,
        };
        let mut qmp = match self.connect().await {
            Ok(q) => q,
            Err(QmpError::Unreachable { gone, source, .. }) => {
                tracing::info!(%instance, endpoint = %self.endpoint, %gone, error = %source, "QMP monitor gone: the VM is off");
                return Ok(Stopped {
                    gone: Some(gone),
                    ..done(
                        StopMethod::AlreadyOff,
                        PowerState::Shutdown,
                        gone_note(&self.endpoint, gone),
                    )
                });
            }
            Err(e) => return Err(self.transient("connecting", e)),
        };
        let status = query_status(&mut qmp)
            .await
            .map_err(|e| self.transient("reading the status", e))?;
        tracing::info!(%instance, endpoint = %self.endpoint, qemu = %qmp.version, %status, "QMP connected");
        let why_hard = match status.as_str() {
            "shutdown" => {
                return Ok(done(
                    StopMethod::AlreadyOff,
                    PowerState::Shutdown,
                    "QEMU status shutdown".into(),
                ));
            }
            "running" if !self.shutdown_timeout.is_zero() => {
                match self.clean_shutdown(&mut qmp, instance).await? {
                    Clean::Done(how, note) => {
                        let power_state = read_back(&mut qmp).await;
                        return Ok(done(how, power_state, note));
                    }
                    Clean::TimedOut(note) => note,
                }
            }
            "running" => "shutdown timeout 0: no clean shutdown".to_string(),
            other => format!("status {other}: the guest cannot answer the power button"),
        };
        tracing::info!(%instance, endpoint = %self.endpoint, reason = %why_hard, "hard power-off (quit)");
        let note = self.hard_stop(&mut qmp).await?;
        Ok(done(
            StopMethod::Forced,
            PowerState::Shutdown,
            format!("{why_hard}; {note}"),
        ))
    }

    /// Presses the power button until the guest shuts down or the shutdown
    /// timeout passes.
    async fn clean_shutdown(&self, qmp: &mut Qmp, instance: Uuid) -> Result<Clean, DriverError> {
        let deadline = Instant::now() + self.shutdown_timeout;
        let mut presses = 0u32;
        while Instant::now() < deadline {
            match qmp.execute("system_powerdown", None).await {
                Ok(_) => presses += 1,
                // As Nova: a refused press is ignored; the wait decides.
                Err(e @ QmpError::Command { .. }) => {
                    tracing::warn!(%instance, error = %e, "power button press refused");
                }
                Err(e) => return Err(self.transient("pressing the power button", e)),
            }
            tracing::debug!(%instance, presses, "power button pressed");
            let next_press = (Instant::now() + self.shutdown_retry_interval).min(deadline);
            loop {
                let event = qmp
                    .next_event(next_press)
                    .await
                    .map_err(|e| self.transient("waiting for the guest to shut down", e))?;
                let Some(event) = event else { break };
                if event.name != "SHUTDOWN" {
                    continue;
                }
                let guest = event.data["guest"].as_bool().unwrap_or(false);
                let reason = event.data["reason"].as_str().unwrap_or("?").to_string();
                let presses_text = plural(presses, "power-button press", "power-button presses");
                return Ok(if guest {
                    Clean::Done(
                        StopMethod::Clean,
                        format!("SHUTDOWN guest=true reason={reason} after {presses_text}"),
                    )
                } else {
                    // Someone else (a signal, another monitor) shut it down
                    // while we waited: off, but not by the guest.
                    Clean::Done(
                        StopMethod::Forced,
                        format!(
                            "SHUTDOWN guest=false reason={reason} (not ours) after {presses_text}"
                        ),
                    )
                });
            }
        }
        Ok(Clean::TimedOut(format!(
            "no SHUTDOWN from the guest within {} s after {}",
            self.shutdown_timeout.as_secs_f64(),
            plural(presses, "power-button press", "power-button presses")
        )))
    }

    /// `quit`, then makes sure QEMU is gone: it closes the monitor as it
    /// exits, and a new connection is refused.
    async fn hard_stop(&self, qmp: &mut Qmp) -> Result<String, DriverError> {
        match qmp.execute("quit", None).await {
            Ok(_) => {}
            // QEMU may exit before its reply reaches us (over TCP the reply
            // can be lost to a connection reset); the checks below decide.
            Err(QmpError::Closed | QmpError::Io(_)) => {}
            Err(e) => return Err(self.transient("hard power-off (quit)", e)),
        }
        let deadline = Instant::now() + self.qmp_timeout;
        let closed = qmp
            .closed(deadline)
            .await
            .map_err(|e| self.transient("waiting for QEMU to exit", e))?;
        if !closed || !self.gone_by(deadline).await {
            return Err(DriverError::transient(format!(
                "QEMU on {} was told to quit but was still running after {:?}",
                self.endpoint, self.qmp_timeout
            )));
        }
        // QEMU announces its own exit; keep its words for the record.
        let mut reason = None;
        while let Ok(Some(e)) = qmp.next_event(Instant::now()).await {
            if e.name == "SHUTDOWN" {
                reason = e.data["reason"].as_str().map(str::to_string);
            }
        }
        Ok(match reason {
            Some(r) => format!("quit: QEMU exited (SHUTDOWN guest=false reason={r})"),
            None => "quit: QEMU exited".to_string(),
        })
    }

    /// True once connecting is refused (or the socket is removed) before
    /// `deadline`: the QEMU process has exited.
    async fn gone_by(&self, deadline: Instant) -> bool {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match Qmp::connect(&self.endpoint, left.max(Duration::from_millis(10))).await {
                Err(QmpError::Unreachable { .. }) => return true,
                // Still listening while it shuts down, or it is another
                // client's turn: look again shortly.
                _ if Instant::now() + Duration::from_millis(20) < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                _ => return false,
            }
        }
    }

    fn transient(&self, during: &str, e: QmpError) -> DriverError {
        DriverError::transient(format!("QMP {} while {during}: {e}", self.endpoint)).caused_by(e)
    }
}

enum Clean {
    /// Off; how, and what QEMU said.
    Done(StopMethod, String),
    /// The guest did not shut down in time; why, for the record.
    TimedOut(String),
}

async fn query_status(qmp: &mut Qmp) -> Result<String, QmpError> {
    let r = qmp.execute("query-status", None).await?;
    r["status"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| QmpError::Protocol(format!("query-status returned {r}")))
}

/// The power state after a `SHUTDOWN` event. QEMU exits right after it
/// unless started with `-no-shutdown`, so a closed monitor is shut down too.
async fn read_back(qmp: &mut Qmp) -> PowerState {
    match query_status(qmp).await {
        Ok(s) => power_state_of(&s),
        Err(_) => PowerState::Shutdown,
    }
}

/// QEMU's run state as Nova's power state (as libvirt reports them to Nova).
pub fn power_state_of(status: &str) -> PowerState {
    match status {
        "running" => PowerState::Running,
        "shutdown" => PowerState::Shutdown,
        "guest-panicked" | "internal-error" => PowerState::Crashed,
        "suspended" => PowerState::Suspended,
        "paused" | "prelaunch" | "inmigrate" | "postmigrate" | "finish-migrate" | "restore-vm"
        | "save-vm" | "debug" | "io-error" | "watchdog" | "colo" => PowerState::Paused,
        _ => PowerState::NoState,
    }
}

/// The event's note for a VM found gone: where nothing answered and what
/// that says about QEMU, so an operator reading the action can tell a VM
/// that exited from a socket that was never on this host.
fn gone_note(endpoint: &Endpoint, gone: Gone) -> String {
    let why = match (endpoint, gone) {
        (Endpoint::Unix(_), Gone::NoSocket) => {
            "QEMU removes it when it exits, and never made it if it does not run here"
        }
        (Endpoint::Unix(_), Gone::Refused) => {
            "the socket file exists but nothing listens on it: QEMU exited without removing it"
        }
        (Endpoint::Tcp { .. }, Gone::Refused) => "nothing listens on the port: QEMU exited",
        (Endpoint::Tcp { .. }, Gone::NoSocket) => "nothing listens: QEMU exited",
    };
    format!("{} ({why})", endpoint.gone_words(gone))
}

fn plural(n: u32, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

impl Hypervisor for QemuHypervisor {
    fn power_off(&self, instance: Uuid) -> BoxFuture<'_, Result<Stopped, DriverError>> {
        Box::pin(async move { self.stop(instance, Instant::now()).await })
    }

    fn power_state(&self, _instance: Uuid) -> BoxFuture<'_, Result<PowerState, DriverError>> {
        Box::pin(async move {
            let mut qmp = match self.connect().await {
                Ok(q) => q,
                Err(e @ QmpError::Unreachable { .. }) => {
                    return Err(
                        DriverError::permanent(format!("{e}: is the VM running?")).caused_by(e)
                    );
                }
                Err(e) => return Err(self.transient("connecting", e)),
            };
            let status = query_status(&mut qmp)
                .await
                .map_err(|e| self.transient("reading the status", e))?;
            Ok(power_state_of(&status))
        })
    }

    /// Connect, greeting, capabilities, status (one `qmp_timeout` each), the
    /// clean-shutdown wait plus its last press, `quit` and QEMU's exit.
    fn longest_power_off(&self) -> Duration {
        self.shutdown_timeout + self.qmp_timeout * 7
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::UnixListener;

    use super::*;
    use crate::driver_with;

    fn parse(address: &str) -> Result<QemuHypervisor, DriverError> {
        QemuHypervisor::from_url(&address.parse().unwrap(), &DriverSettings::default())
    }

    #[test]
    fn addresses_name_a_socket_and_may_override_the_shutdown_timings() {
        let q = parse("qmp+unix:///run/vms/a%20b.qmp").unwrap();
        assert_eq!(q.endpoint, Endpoint::Unix("/run/vms/a b.qmp".into()));
        assert_eq!(q.shutdown_timeout, Duration::from_secs(60));
        assert_eq!(q.shutdown_retry_interval, Duration::from_secs(10));

        let q =
            parse("qmp+tcp://127.0.0.1:4444?shutdown_timeout=0&shutdown_retry_interval=2").unwrap();
        assert_eq!(
            q.endpoint,
            Endpoint::Tcp {
                host: "127.0.0.1".into(),
                port: 4444
            }
        );
        assert_eq!(q.shutdown_timeout, Duration::ZERO);
        assert_eq!(q.shutdown_retry_interval, Duration::from_secs(2));
        assert_eq!(
            parse("qmp+tcp://[::1]:4444").unwrap().endpoint,
            Endpoint::Tcp {
                host: "::1".into(),
                port: 4444
            }
        );

        for bad in [
            "qmp+unix://relative/vm.qmp",
            "qmp+unix:///",
            "qmp+unix:///dir/",
            "qmp+unix:///vm.qmp?shutdown_timeout=-1",
            "qmp+unix:///vm.qmp?shutdown_timeout=soon",
            "qmp+unix:///vm.qmp?shutdown_timeout=86400",
            "qmp+unix:///vm.qmp?shutdown_retry_interval=0",
            "qmp+unix:///vm.qmp?colour=red",
            "qmp+unix:///vm.qmp#x",
            "qmp+tcp://127.0.0.1",
            "qmp+tcp://:4444",
            "qmp+tcp://127.0.0.1:4444/path",
            "qmp+tcp://user:pw@127.0.0.1:4444",
        ] {
            assert!(
                matches!(
                    driver_with(bad, &DriverSettings::default()),
                    Err(DriverError::Permanent { .. })
                ),
                "{bad} should be refused"
            );
        }
    }

    #[test]
    fn qemu_run_states_map_to_nova_power_states() {
        assert_eq!(power_state_of("running"), PowerState::Running);
        assert_eq!(power_state_of("shutdown"), PowerState::Shutdown);
        assert_eq!(power_state_of("paused"), PowerState::Paused);
        assert_eq!(power_state_of("prelaunch"), PowerState::Paused);
        assert_eq!(power_state_of("guest-panicked"), PowerState::Crashed);
        assert_eq!(power_state_of("suspended"), PowerState::Suspended);
        assert_eq!(power_state_of("new-in-qemu-11"), PowerState::NoState);
    }

    #[test]
    fn the_worker_timeout_covers_the_whole_clean_shutdown_path() {
        let q = parse("qmp+unix:///vm.qmp?shutdown_timeout=300").unwrap();
        assert_eq!(q.longest_power_off(), Duration::from_secs(300 + 7 * 10));
    }

    /// A QMP monitor speaking a script: for each command it receives, in
    /// order, it writes the given lines (`{id}` becomes the command's id);
    /// `None` stops answering but keeps the socket open, and the end of the
    /// script closes it.
    async fn fake_monitor(script: Vec<Option<Vec<&'static str>>>) -> (tempdir::Dir, String) {
        let dir = tempdir::Dir::new();
        let path = dir.0.join("fake.qmp");
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (sock, _) = listener.accept().await.unwrap();
            let (r, mut w) = sock.into_split();
            let mut lines = BufReader::new(r).lines();
            w.write_all(b"{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 0, \"minor\": 2, \"major\": 7}}, \"capabilities\": []}}\n")
                .await
                .unwrap();
            for step in script {
                let Ok(Some(line)) = lines.next_line().await else {
                    return;
                };
                let cmd: serde_json::Value = serde_json::from_str(&line).unwrap();
                let id = cmd["id"].to_string();
                match step {
                    Some(replies) => {
                        for r in replies {
                            let r = r.replace("{id}", &id);
                            w.write_all(format!("{r}\n").as_bytes()).await.unwrap();
                        }
                    }
                    None => {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                    }
                }
            }
        });
        let address = format!("qmp+unix://{}", path.display());
        (dir, address)
    }

    mod tempdir {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Self {
                let d = std::env::temp_dir()
                    .join(format!("shutoff-qmp-{}", uuid::Uuid::new_v4().simple()));
                std::fs::create_dir_all(&d).unwrap();
                Dir(d)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    const OK: &str = r#"{"return": {}, "id": {id}}"#;
    const RUNNING: &str = r#"{"return": {"status": "running", "running": true}, "id": {id}}"#;

    fn fast() -> DriverSettings {
        DriverSettings {
            shutdown_timeout: Duration::from_secs(5),
            shutdown_retry_interval: Duration::from_secs(1),
            qmp_timeout: Duration::from_millis(300),
            ..DriverSettings::default()
        }
    }

    #[tokio::test]
    async fn a_monitor_that_stops_answering_is_a_transient_error_not_a_hang() {
        let (_dir, address) = fake_monitor(vec![Some(vec![OK]), None]).await;
        let driver = driver_with(&address, &fast()).unwrap();

        let t = Instant::now();
        let r = driver.power_off(Uuid::new_v4()).await;

        assert!(
            matches!(&r, Err(DriverError::Transient { message: m, .. }) if m.contains("no answer")),
            "{r:?}"
        );
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    }

    #[tokio::test]
    async fn a_monitor_that_closes_while_waiting_for_the_guest_is_a_transient_error() {
        // Greets, answers the status and one press, then goes away without
        // a SHUTDOWN event: QEMU died mid-stop.
        let (_dir, address) =
            fake_monitor(vec![Some(vec![OK]), Some(vec![RUNNING]), Some(vec![OK])]).await;
        let driver = driver_with(&address, &fast()).unwrap();

        let r = driver.power_off(Uuid::new_v4()).await;

        assert!(
            matches!(&r, Err(DriverError::Transient { message: m, .. }) if m.contains("closed")),
            "{r:?}"
        );
    }

    #[tokio::test]
    async fn a_qmp_failure_keeps_the_qmp_error_as_its_source_and_says_it_in_its_text() {
        let (dir, address) =
            fake_monitor(vec![Some(vec![OK]), Some(vec![RUNNING]), Some(vec![OK])]).await;
        let driver = driver_with(&address, &fast()).unwrap();

        let e = driver.power_off(Uuid::new_v4()).await.unwrap_err();

        let source = std::error::Error::source(&e).expect("the QMP error is kept");
        assert!(
            matches!(source.downcast_ref::<QmpError>(), Some(QmpError::Closed)),
            "{source:?}"
        );
        assert_eq!(
            e.to_string(),
            format!(
                "transient hypervisor error: QMP unix:{}/fake.qmp while waiting for the guest \
                 to shut down: QMP connection closed by QEMU",
                dir.0.display()
            )
        );
    }

    #[tokio::test]
    async fn events_between_a_command_and_its_reply_are_kept_and_a_guest_shutdown_is_clean() {
        let (_dir, address) = fake_monitor(vec![
            Some(vec![OK]),
            Some(vec![RUNNING]),
            Some(vec![
                r#"{"event": "POWERDOWN", "timestamp": {"seconds": 1, "microseconds": 0}}"#,
                r#"{"event": "SHUTDOWN", "data": {"guest": true, "reason": "guest-shutdown"}, "timestamp": {"seconds": 1, "microseconds": 5}}"#,
                OK,
            ]),
        ])
        .await;
        let driver = driver_with(&address, &fast()).unwrap();

        let s = driver.power_off(Uuid::new_v4()).await.unwrap();

        assert_eq!(
            (s.how, s.power_state),
            (StopMethod::Clean, PowerState::Shutdown)
        );
        assert!(
            s.details()
                .contains("SHUTDOWN guest=true reason=guest-shutdown after 1 power-button press"),
            "{}",
            s.details()
        );
    }

    #[tokio::test]
    async fn an_error_reply_to_quit_is_a_transient_error_never_a_success() {
        let (_dir, address) = fake_monitor(vec![
            Some(vec![OK]),
            Some(vec![RUNNING]),
            Some(vec![
                r#"{"error": {"class": "GenericError", "desc": "no"}, "id": {id}}"#,
            ]),
        ])
        .await;
        let driver = driver_with(&format!("{address}?shutdown_timeout=0"), &fast()).unwrap();

        let r = driver.power_off(Uuid::new_v4()).await;

        assert!(
            matches!(&r, Err(DriverError::Transient { message: m, .. }) if m.contains("quit")),
            "{r:?}"
        );
    }

    /// The note of an already-off stop's details, after checking the
    /// details are `already off in N s: NOTE`.
    fn already_off_note(s: &Stopped) -> String {
        assert_eq!(
            (s.how, s.power_state),
            (StopMethod::AlreadyOff, PowerState::Shutdown)
        );
        let details = s.details();
        let Some((head, note)) = details.split_once(" s: ") else {
            panic!("no note in {details:?}")
        };
        assert!(head.starts_with("already off in "), "{details}");
        assert_eq!(note, s.note);
        note.to_string()
    }

    #[tokio::test]
    async fn a_missing_socket_is_a_vm_that_is_already_off() {
        let dir = tempdir::Dir::new();
        let path = dir.0.join("gone.qmp");
        let address = format!("qmp+unix://{}", path.display());

        let s = driver_with(&address, &fast())
            .unwrap()
            .power_off(Uuid::new_v4())
            .await
            .unwrap();

        assert_eq!(s.gone, Some(Gone::NoSocket));
        assert_eq!(
            already_off_note(&s),
            format!(
                "the QMP socket {} does not exist on this host (QEMU removes it when it \
                 exits, and never made it if it does not run here)",
                path.display()
            )
        );
    }

    #[tokio::test]
    async fn a_socket_file_nobody_listens_on_is_a_refused_vm_that_is_already_off() {
        let dir = tempdir::Dir::new();
        let path = dir.0.join("killed.qmp");
        // What a killed QEMU leaves: the socket file, and nothing behind it.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists(), "dropping a listener leaves its file");
        let driver = driver_with(&format!("qmp+unix://{}", path.display()), &fast()).unwrap();

        let s = driver.power_off(Uuid::new_v4()).await.unwrap();

        assert_eq!(s.gone, Some(Gone::Refused));
        assert_eq!(
            already_off_note(&s),
            format!(
                "QMP connection refused at unix:{} on this host (the socket file exists but \
                 nothing listens on it: QEMU exited without removing it)",
                path.display()
            )
        );
        let Err(DriverError::Permanent { message, .. }) = driver.power_state(Uuid::new_v4()).await
        else {
            panic!("asking a gone VM for its power state is not an operator error")
        };
        assert!(
            message.starts_with(&format!(
                "QMP connection refused at unix:{} on this host: ",
                path.display()
            )) && message.ends_with(": is the VM running?"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn a_closed_tcp_port_is_a_refused_vm_that_is_already_off() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };

        let s = driver_with(&format!("qmp+tcp://127.0.0.1:{port}"), &fast())
            .unwrap()
            .power_off(Uuid::new_v4())
            .await
            .unwrap();

        assert_eq!(s.gone, Some(Gone::Refused));
        assert_eq!(
            already_off_note(&s),
            format!(
                "QMP connection refused at tcp:127.0.0.1:{port} (nothing listens on the port: \
                 QEMU exited)"
            )
        );
    }

    #[tokio::test]
    async fn the_qmp_error_says_which_sign_of_a_gone_vm_and_keeps_the_io_error() {
        let dir = tempdir::Dir::new();
        let missing = dir.0.join("missing.qmp");
        let stale = dir.0.join("stale.qmp");
        drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let cases = [
            (
                Endpoint::Unix(missing.clone()),
                Gone::NoSocket,
                std::io::ErrorKind::NotFound,
                format!(
                    "the QMP socket {} does not exist on this host",
                    missing.display()
                ),
            ),
            (
                Endpoint::Unix(stale.clone()),
                Gone::Refused,
                std::io::ErrorKind::ConnectionRefused,
                format!(
                    "QMP connection refused at unix:{} on this host",
                    stale.display()
                ),
            ),
            (
                Endpoint::Tcp {
                    host: "127.0.0.1".into(),
                    port,
                },
                Gone::Refused,
                std::io::ErrorKind::ConnectionRefused,
                format!("QMP connection refused at tcp:127.0.0.1:{port}"),
            ),
        ];

        for (endpoint, want, kind, words) in cases {
            let Err(e) = Qmp::connect(&endpoint, Duration::from_millis(300)).await else {
                panic!("{endpoint} answered")
            };

            let QmpError::Unreachable { gone, source, .. } = &e else {
                panic!("{endpoint}: {e:?}")
            };
            assert_eq!((*gone, source.kind()), (want, kind), "{endpoint}");
            assert_eq!(e.to_string(), format!("{words}: {source}"));
            let kept = std::error::Error::source(&e).expect("the I/O error is kept");
            assert_eq!(
                kept.downcast_ref::<std::io::Error>()
                    .map(std::io::Error::kind),
                Some(kind),
                "{endpoint}"
            );
        }
    }
}
