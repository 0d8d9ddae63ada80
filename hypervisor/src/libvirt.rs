//! `libvirt:///DOMAIN`: a domain of a libvirt daemon, stopped exactly as
//! Nova's libvirt driver stops a server (`power_off` with a clean shutdown,
//! `_clean_shutdown` then `_destroy`):
//!
//! 1. No such domain, or its state is shut off or crashed (Nova's
//!    `SHUTDOWN_STATES`, after Nova's state map, see [`power_state_of`]):
//!    already off.
//! 2. Otherwise, unless the shutdown timeout is zero: `virDomainShutdown`
//!    (the ACPI power button; its errors are ignored, as Nova ignores them),
//!    then once a second look the domain up again and read its state, done
//!    when it is off, pressing again every `shutdown_retry_interval`, for at
//!    most `shutdown_timeout` seconds.
//! 3. Then, always (as Nova's `power_off` calls `_destroy` after every clean
//!    shutdown): `virDomainDestroyFlags` (hard power-off), where
//!    `VIR_ERR_NO_DOMAIN`, and `VIR_ERR_OPERATION_INVALID` while the domain is
//!    shut off, count as success; the state is read back. A domain still
//!    "being shut down", or crashed, is finished here. The stop is recorded
//!    forced only when the guest did not go off by itself in time.
//!
//! Every libvirt call blocks, so each runs on tokio's blocking pool and is
//! bounded by the worker's `qmp_timeout`: a daemon that is down, or that
//! stops answering, is a transient error for the worker's retry policy,
//! never a hung job. (A call that timed out keeps its blocking thread until
//! libvirt gives up on it; the job has moved on.)
//!
//! Addresses: `libvirt:///DOMAIN`, DOMAIN a UUID or a name (percent-encoded).
//! The daemon is the address's `?uri=LIBVIRT-URI` (percent-encoded, e.g.
//! `?uri=qemu%2Bunix%3A%2F%2F%2Fsession%3Fsocket%3D%2Frun%2Fu%2Flibvirt-sock`),
//! else the worker's [`DriverSettings::libvirt_uri`] (`--libvirt-uri`), by
//! default the host's own `qemu:///system`.
//! Per-instance overrides of the worker's settings, as for QEMU:
//! `?shutdown_timeout=SECS` (0: hard power-off at once) and
//! `?shutdown_retry_interval=SECS`.

use std::sync::{Arc, Once};
use std::time::Duration;

use futures::future::BoxFuture;
use shutoff_core::state::PowerState;
use tokio::time::Instant;
use uuid::Uuid;
use virt::connect::Connect;
use virt::domain::Domain;
use virt::error::{Error as VirtError, ErrorNumber};
use virt::sys;

use crate::{DriverError, DriverSettings, Hypervisor, StopMethod, Stopped, override_secs};

/// Which domain an address names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DomainRef {
    Uuid(Uuid),
    Name(String),
}

impl std::fmt::Display for DomainRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DomainRef::Uuid(u) => write!(f, "{u}"),
            DomainRef::Name(n) => write!(f, "{n:?}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LibvirtHypervisor {
    /// The libvirt connection URI of the daemon that runs the domain.
    pub uri: String,
    pub domain: DomainRef,
    pub shutdown_timeout: Duration,
    pub shutdown_retry_interval: Duration,
    /// Bound on each libvirt call (the worker's `qmp_timeout`).
    pub call_timeout: Duration,
}

impl LibvirtHypervisor {
    pub fn from_url(url: &url::Url, settings: &DriverSettings) -> Result<Self, DriverError> {
        let bad = |m: String| DriverError::permanent(format!("invalid libvirt:// address: {m}"));
        if !url.username().is_empty() || url.password().is_some() || url.fragment().is_some() {
            return Err(bad("user, password and fragment are not allowed".into()));
        }
        if url.host_str().is_some_and(|h| !h.is_empty()) || url.port().is_some() {
            return Err(bad(format!(
                "the daemon is chosen with ?uri=, not a host: libvirt:///DOMAIN, not {:?}",
                url.as_str()
            )));
        }
        let name = percent_encoding::percent_decode_str(url.path().trim_start_matches('/'))
            .decode_utf8()
            .map_err(|e| bad("the domain is not valid UTF-8".into()).caused_by(e))?;
        if name.is_empty() || name.contains('/') || name.contains('\0') {
            return Err(bad(format!(
                "{name:?} is not a domain: libvirt:///UUID or libvirt:///NAME"
            )));
        }
        let domain = match Uuid::parse_str(&name) {
            Ok(u) => DomainRef::Uuid(u),
            Err(_) => DomainRef::Name(name.into_owned()),
        };
        let mut l = LibvirtHypervisor {
            uri: settings.libvirt_uri.clone(),
            domain,
            shutdown_timeout: settings.shutdown_timeout,
            shutdown_retry_interval: settings.shutdown_retry_interval,
            call_timeout: settings.qmp_timeout,
        };
        for (k, v) in url.query_pairs() {
            match &*k {
                "uri" => {
                    if v.is_empty() || v.contains('\0') {
                        return Err(bad(format!("uri={v:?} is not a libvirt URI")));
                    }
                    l.uri = v.into_owned();
                }
                "shutdown_timeout" => l.shutdown_timeout = override_secs(&k, &v, bad)?,
                "shutdown_retry_interval" => {
                    l.shutdown_retry_interval = override_secs(&k, &v, bad)?;
                    if l.shutdown_retry_interval.is_zero() {
                        return Err(bad("shutdown_retry_interval must be at least 1".into()));
                    }
                }
                other => {
                    return Err(bad(format!(
                        "unknown parameter {other:?} (known: uri, shutdown_timeout, \
                         shutdown_retry_interval)"
                    )));
                }
            }
        }
        // Nova counts both in whole seconds (one poll a second).
        l.shutdown_timeout = Duration::from_secs(l.shutdown_timeout.as_secs());
        l.shutdown_retry_interval = Duration::from_secs(l.shutdown_retry_interval.as_secs().max(1));
        Ok(l)
    }

    /// Runs one blocking libvirt call on the blocking pool, bounded by the
    /// call timeout. The outer error (no answer in time) is transient; the
    /// inner one is libvirt's, for the caller to judge.
    async fn call<T, F>(&self, what: &str, f: F) -> Result<Result<T, VirtError>, DriverError>
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T, VirtError> + Send + 'static,
    {
        match tokio::time::timeout(self.call_timeout, tokio::task::spawn_blocking(f)).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(join)) => Err(DriverError::transient(format!(
                "libvirt {} while {what}: the call failed: {join}",
                self.uri
            ))
            .caused_by(join)),
            Err(_) => Err(DriverError::transient(format!(
                "libvirt {} while {what}: no answer within {:?}",
                self.uri, self.call_timeout
            ))),
        }
    }

    fn failed(&self, what: &str, e: VirtError) -> DriverError {
        let kind = match e.code() {
            // Another attempt asks the same daemon the same thing as the
            // same user: it will be refused again.
            ErrorNumber::AuthFailed
            | ErrorNumber::AuthCancelled
            | ErrorNumber::AuthUnavailable
            | ErrorNumber::AccessDenied
            | ErrorNumber::NoSupport => DriverError::permanent,
            _ => DriverError::transient,
        };
        kind(format!("libvirt {} while {what}: {e}", self.uri)).caused_by(e)
    }

    async fn connect(&self) -> Result<Session, DriverError> {
        silence_libvirt_stderr();
        let uri = self.uri.clone();
        let conn = self
            .call("connecting", move || Connect::open(Some(&uri)))
            .await?
            .map_err(|e| self.failed("connecting", e))?;
        Ok(Session(Some(Arc::new(Owned(conn)))))
    }

    /// The domain, or `None` when the daemon has no such domain.
    async fn lookup(&self, s: &Session, what: &str) -> Result<Option<Arc<Dom>>, DriverError> {
        let conn = s.conn();
        let domain = self.domain.clone();
        let r = self
            .call(what, move || match &domain {
                DomainRef::Uuid(u) => Domain::lookup_by_uuid(&conn.0, *u),
                DomainRef::Name(n) => Domain::lookup_by_name(&conn.0, n),
            })
            .await?;
        match r {
            Ok(d) => Ok(Some(Arc::new(Dom(d)))),
            Err(e) if e.code() == ErrorNumber::NoDomain => Ok(None),
            Err(e) => Err(self.failed(what, e)),
        }
    }

    async fn state(&self, d: &Arc<Dom>, what: &str) -> Result<State, DriverError> {
        let d = d.clone();
        let (state, reason) = self
            .call(what, move || d.0.get_state())
            .await?
            .map_err(|e| self.failed(what, e))?;
        Ok(State { state, reason })
    }

    /// Looks the domain up again and reads its state, as Nova does each
    /// second of the wait; `None`: the domain is gone.
    async fn look_again(&self, s: &Session, what: &str) -> Result<Option<State>, DriverError> {
        match self.lookup(s, what).await? {
            Some(d) => self.state(&d, what).await.map(Some),
            None => Ok(None),
        }
    }

    /// One power-button press; libvirt's refusal is returned for the record
    /// (Nova ignores it), a daemon that does not answer is an error.
    async fn press(&self, d: &Arc<Dom>) -> Result<Option<VirtError>, DriverError> {
        let d = d.clone();
        Ok(self
            .call("pressing the power button (virDomainShutdown)", move || {
                d.0.shutdown()
            })
            .await?
            .err())
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
        let s = self.connect().await?;
        let Some(d) = self.lookup(&s, "looking the domain up").await? else {
            tracing::info!(%instance, uri = %self.uri, domain = %self.domain, "no such domain: the VM is off");
            return Ok(done(
                StopMethod::AlreadyOff,
                PowerState::Shutdown,
                format!("libvirt {} has no domain {}", self.uri, self.domain),
            ));
        };
        let st = self.state(&d, "reading the domain's state").await?;
        tracing::info!(%instance, uri = %self.uri, domain = %self.domain, state = %st, "libvirt connected");
        let (how, why) = if st.is_off() {
            (StopMethod::AlreadyOff, format!("libvirt state {st}"))
        } else if self.shutdown_timeout.is_zero() {
            let why = "shutdown timeout 0: no clean shutdown".to_string();
            tracing::info!(%instance, uri = %self.uri, domain = %self.domain, reason = %why, "hard power-off (virDomainDestroyFlags)");
            (StopMethod::Forced, why)
        } else {
            match self.clean_shutdown(&s, &d, instance).await? {
                Clean::Done(how, note) => (how, note),
                Clean::TimedOut(why) => {
                    tracing::info!(%instance, uri = %self.uri, domain = %self.domain, reason = %why, "hard power-off (virDomainDestroyFlags)");
                    (StopMethod::Forced, why)
                }
            }
        };
        // Nova's power_off destroys after every clean shutdown, also one
        // that found the domain off: a domain still "being shut down"
        // (which Nova's map already counts as off) or crashed is finished
        // there, and the state is read back from what is left.
        let (power_state, note) = self.destroy(&s, &d).await?;
        Ok(done(how, power_state, format!("{why}; {note}")))
    }

    /// Nova's `_clean_shutdown` after its first state check.
    async fn clean_shutdown(
        &self,
        s: &Session,
        d: &Arc<Dom>,
        instance: Uuid,
    ) -> Result<Clean, DriverError> {
        // Nova counts seconds by its polls; a slow daemon would stretch that
        // count, so the wait also ends at the timeout by the clock.
        let deadline = Instant::now() + self.shutdown_timeout;
        let mut presses = 1u32;
        let mut refused = 0u32;
        if let Some(e) = self.press(d).await? {
            tracing::debug!(%instance, error = %e, "ignoring libvirt's refusal of the power button");
            refused += 1;
        }
        let retry = self.shutdown_retry_interval.as_secs();
        let mut countdown = retry;
        let presses_text = |p: u32, r: u32| {
            let mut t = plural(p, "power-button press", "power-button presses");
            if r > 0 {
                t.push_str(&format!(" ({r} refused by libvirt)"));
            }
            t
        };
        for sec in 0..self.shutdown_timeout.as_secs() {
            if sec > 0 && Instant::now() >= deadline {
                break;
            }
            let what = "waiting for the guest to shut down";
            let st = match self.look_again(s, what).await? {
                Some(st) => st,
                // A transient domain leaves with its guest.
                None => {
                    return Ok(Clean::Done(
                        StopMethod::Clean,
                        format!(
                            "the domain went away after {sec} s and {}",
                            presses_text(presses, refused)
                        ),
                    ));
                }
            };
            if st.is_off() {
                let how = match (st.state, st.reason) {
                    (sys::VIR_DOMAIN_SHUTOFF, r)
                        if r == sys::VIR_DOMAIN_SHUTOFF_SHUTDOWN as i32 =>
                    {
                        StopMethod::Clean
                    }
                    // Nova's map counts "being shut down" as off.
                    (sys::VIR_DOMAIN_SHUTDOWN, _) => StopMethod::Clean,
                    // Destroyed by someone else, or crashed, while we
                    // waited: off, but not by the guest's shutdown.
                    _ => StopMethod::Forced,
                };
                let not_ours = if how == StopMethod::Forced {
                    " (not ours)"
                } else {
                    ""
                };
                return Ok(Clean::Done(
                    how,
                    format!(
                        "libvirt state {st}{not_ours} after {sec} s and {}",
                        presses_text(presses, refused)
                    ),
                ));
            }
            if countdown == 0 {
                countdown = retry;
                presses += 1;
                tracing::debug!(%instance, sec, state = %st, "pressing the power button again");
                if let Some(e) = self.press(d).await? {
                    // As Nova: most likely it has just shut down; look again.
                    tracing::debug!(%instance, error = %e, "ignoring libvirt's refusal of the power button");
                    refused += 1;
                    continue;
                }
            } else {
                countdown -= 1;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        Ok(Clean::TimedOut(format!(
            "the guest did not shut down within {} s after {}",
            self.shutdown_timeout.as_secs(),
            presses_text(presses, refused)
        )))
    }

    /// Nova's `_destroy`: hard power-off, then the state read back.
    async fn destroy(
        &self,
        s: &Session,
        d: &Arc<Dom>,
    ) -> Result<(PowerState, String), DriverError> {
        let what = "destroying the domain (virDomainDestroyFlags)";
        let dd = d.clone();
        let r = self
            .call(what, move || {
                dd.0.destroy_flags(sys::VIR_DOMAIN_DESTROY_DEFAULT)
            })
            .await?;
        let mut note = match r {
            Ok(_) => "virDomainDestroyFlags: destroyed".to_string(),
            Err(e) if e.code() == ErrorNumber::NoDomain => {
                format!(
                    "virDomainDestroyFlags: no such domain any more ({})",
                    e.message()
                )
            }
            Err(e) if e.code() == ErrorNumber::OperationInvalid => {
                match self.look_again(s, what).await? {
                    Some(st) if st.state == sys::VIR_DOMAIN_SHUTOFF => {
                        "virDomainDestroyFlags: not running".to_string()
                    }
                    None => format!("virDomainDestroyFlags: gone ({})", e.message()),
                    Some(st) => {
                        return Err(DriverError::transient(format!(
                            "libvirt {} while {what}: {e} (the domain is {st})",
                            self.uri
                        ))
                        .caused_by(e));
                    }
                }
            }
            Err(e) => return Err(self.failed(what, e)),
        };
        let power_state = match self.look_again(s, "reading the state back").await? {
            Some(st) => {
                note.push_str(&format!("; libvirt state {st}"));
                st.power_state()
            }
            None => {
                note.push_str("; the domain went away (transient)");
                PowerState::Shutdown
            }
        };
        Ok((power_state, note))
    }
}

enum Clean {
    /// Off: how, and what libvirt said.
    Done(StopMethod, String),
    /// The guest did not shut down in time; why, for the record.
    TimedOut(String),
}

/// A domain's state and libvirt's reason for it.
#[derive(Debug, Clone, Copy)]
struct State {
    state: sys::virDomainState,
    reason: i32,
}

impl State {
    fn power_state(self) -> PowerState {
        power_state_of(self.state)
    }

    /// Nova's `SHUTDOWN_STATES`: SHUTDOWN and CRASHED, after its map.
    fn is_off(self) -> bool {
        matches!(
            self.power_state(),
            PowerState::Shutdown | PowerState::Crashed
        )
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r = self.reason;
        let (state, reason) = match self.state {
            sys::VIR_DOMAIN_NOSTATE => ("no state", None),
            sys::VIR_DOMAIN_RUNNING => ("running", None),
            sys::VIR_DOMAIN_BLOCKED => ("blocked", None),
            sys::VIR_DOMAIN_PAUSED => ("paused", None),
            sys::VIR_DOMAIN_SHUTDOWN => ("being shut down", None),
            sys::VIR_DOMAIN_SHUTOFF => (
                "shut off",
                Some(match r {
                    x if x == sys::VIR_DOMAIN_SHUTOFF_SHUTDOWN as i32 => "shutdown",
                    x if x == sys::VIR_DOMAIN_SHUTOFF_DESTROYED as i32 => "destroyed",
                    x if x == sys::VIR_DOMAIN_SHUTOFF_CRASHED as i32 => "crashed",
                    x if x == sys::VIR_DOMAIN_SHUTOFF_FAILED as i32 => "failed",
                    x if x == sys::VIR_DOMAIN_SHUTOFF_SAVED as i32 => "saved",
                    x if x == sys::VIR_DOMAIN_SHUTOFF_MIGRATED as i32 => "migrated",
                    _ => "unknown",
                }),
            ),
            sys::VIR_DOMAIN_CRASHED => ("crashed", None),
            sys::VIR_DOMAIN_PMSUSPENDED => ("pm-suspended", None),
            _ => ("unknown", None),
        };
        match reason {
            Some(why) => write!(f, "{state} (reason {why})"),
            None => write!(f, "{state} (reason {r})"),
        }
    }
}

/// libvirt's domain state as Nova's power state: Nova's
/// `LIBVIRT_POWER_STATE` (nova/virt/libvirt/guest.py), checked entry by
/// entry: no state 0, running and blocked 1, paused 3, "being shut down"
/// and shut off 4, crashed 6, pm-suspended 7.
pub fn power_state_of(state: sys::virDomainState) -> PowerState {
    match state {
        sys::VIR_DOMAIN_RUNNING | sys::VIR_DOMAIN_BLOCKED => PowerState::Running,
        sys::VIR_DOMAIN_PAUSED => PowerState::Paused,
        sys::VIR_DOMAIN_SHUTDOWN | sys::VIR_DOMAIN_SHUTOFF => PowerState::Shutdown,
        sys::VIR_DOMAIN_CRASHED => PowerState::Crashed,
        sys::VIR_DOMAIN_PMSUSPENDED => PowerState::Suspended,
        _ => PowerState::NoState,
    }
}

fn plural(n: u32, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// libvirt prints every error to stderr unless told otherwise; ours are
/// returned and logged, so print none.
fn silence_libvirt_stderr() {
    static ONCE: Once = Once::new();
    ONCE.call_once(virt::error::clear_error_callback);
}

/// A connection, closed when the last call holding it is done.
struct Owned(Connect);

impl Drop for Owned {
    fn drop(&mut self) {
        let _ = self.0.close();
    }
}

/// A domain handle, freed by `virt` when dropped.
struct Dom(Domain);

/// One stop's connection. Closing it is an RPC to the daemon, which may not
/// answer: the last reference is dropped on the blocking pool, never on the
/// caller's thread.
struct Session(Option<Arc<Owned>>);

impl Session {
    fn conn(&self) -> Arc<Owned> {
        self.0.clone().expect("taken only on drop")
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            match tokio::runtime::Handle::try_current() {
                Ok(h) => drop(h.spawn_blocking(move || drop(c))),
                Err(_) => drop(std::thread::spawn(move || drop(c))),
            }
        }
    }
}

impl Hypervisor for LibvirtHypervisor {
    fn power_off(&self, instance: Uuid) -> BoxFuture<'_, Result<Stopped, DriverError>> {
        Box::pin(async move { self.stop(instance, Instant::now()).await })
    }

    fn power_state(&self, _instance: Uuid) -> BoxFuture<'_, Result<PowerState, DriverError>> {
        Box::pin(async move {
            let s = self.connect().await?;
            match self.look_again(&s, "reading the domain's state").await? {
                Some(st) => Ok(st.power_state()),
                None => Err(DriverError::permanent(format!(
                    "libvirt {} has no domain {}: is it defined there?",
                    self.uri, self.domain
                ))),
            }
        })
    }

    /// The clean-shutdown wait (ended by the clock), plus one call timeout
    /// for each call that can start without the clock being looked at:
    /// connect, look-up, state, the first press, the last poll's look-up,
    /// state and press, destroy, the look-up and state after a refused
    /// destroy, and the read-back's look-up and state.
    fn longest_power_off(&self) -> Duration {
        self.shutdown_timeout + self.call_timeout * 13
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver_with;

    fn parse(address: &str) -> Result<LibvirtHypervisor, DriverError> {
        LibvirtHypervisor::from_url(&address.parse().unwrap(), &DriverSettings::default())
    }

    #[test]
    fn addresses_name_a_domain_and_may_choose_the_daemon_and_the_timings() {
        let u = Uuid::new_v4();
        let l = parse(&format!("libvirt:///{u}")).unwrap();
        assert_eq!(l.domain, DomainRef::Uuid(u));
        assert_eq!(l.uri, "qemu:///system");
        assert_eq!(l.shutdown_timeout, Duration::from_secs(60));
        assert_eq!(l.shutdown_retry_interval, Duration::from_secs(10));

        let l = parse(
            "libvirt:///web%201?uri=qemu%2Bunix%3A%2F%2F%2Fsession%3Fsocket%3D%2Frun%2Fs\
             &shutdown_timeout=2&shutdown_retry_interval=1",
        )
        .unwrap();
        assert_eq!(l.domain, DomainRef::Name("web 1".into()));
        assert_eq!(l.uri, "qemu+unix:///session?socket=/run/s");
        assert_eq!(l.shutdown_timeout, Duration::from_secs(2));
        assert_eq!(l.shutdown_retry_interval, Duration::from_secs(1));

        let elsewhere = DriverSettings {
            libvirt_uri: "qemu:///session".into(),
            ..DriverSettings::default()
        };
        let on = |a: &str| LibvirtHypervisor::from_url(&a.parse().unwrap(), &elsewhere).unwrap();
        assert_eq!(on("libvirt:///vm").uri, "qemu:///session");
        assert_eq!(
            on("libvirt:///vm?uri=test%3A%2F%2F%2Fdefault").uri,
            "test:///default"
        );

        for bad in [
            "libvirt:///",
            "libvirt://host/vm",
            "libvirt:///a/b",
            "libvirt:///vm?uri=",
            "libvirt:///vm?shutdown_timeout=soon",
            "libvirt:///vm?shutdown_retry_interval=0",
            "libvirt:///vm?colour=red",
            "libvirt:///vm#x",
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
    fn libvirt_states_map_to_novas_power_states() {
        assert_eq!(power_state_of(sys::VIR_DOMAIN_RUNNING), PowerState::Running);
        assert_eq!(power_state_of(sys::VIR_DOMAIN_BLOCKED), PowerState::Running);
        assert_eq!(power_state_of(sys::VIR_DOMAIN_PAUSED), PowerState::Paused);
        assert_eq!(
            power_state_of(sys::VIR_DOMAIN_SHUTDOWN),
            PowerState::Shutdown
        );
        assert_eq!(
            power_state_of(sys::VIR_DOMAIN_SHUTOFF),
            PowerState::Shutdown
        );
        assert_eq!(power_state_of(sys::VIR_DOMAIN_CRASHED), PowerState::Crashed);
        assert_eq!(
            power_state_of(sys::VIR_DOMAIN_PMSUSPENDED),
            PowerState::Suspended
        );
        assert_eq!(power_state_of(sys::VIR_DOMAIN_NOSTATE), PowerState::NoState);
        assert_eq!(power_state_of(99), PowerState::NoState);
    }

    #[test]
    fn the_worker_timeout_covers_the_whole_clean_shutdown_path() {
        let l = parse("libvirt:///vm?shutdown_timeout=300").unwrap();
        assert_eq!(l.longest_power_off(), Duration::from_secs(300 + 13 * 10));
    }

    #[tokio::test]
    async fn a_daemon_that_is_not_there_is_a_transient_error() {
        let address =
            "libvirt:///vm?uri=qemu%2Bunix%3A%2F%2F%2Fsession%3Fsocket%3D%2Fnonexistent%2Fsock";
        let driver = driver_with(address, &DriverSettings::default()).unwrap();

        let r = driver.power_off(Uuid::new_v4()).await;

        assert!(
            matches!(&r, Err(DriverError::Transient { message: m, .. }) if m.contains("connecting")),
            "{r:?}"
        );
    }
}
