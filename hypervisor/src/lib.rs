//! `shutoff-hypervisor`: the drivers that power VMs off, behind one trait
//! ([`Hypervisor`]), chosen by each instance's address ([`driver_for`],
//! [`driver_with`]):
//!
//! - `fake://...`: the built-in simulator ([`fake`]).
//! - `qmp+unix:///path/to/vm.qmp` and `qmp+tcp://HOST:PORT`: a QEMU VM driven
//!   over its QMP monitor ([`qemu`], on the client in [`qmp`]), stopped the
//!   way Nova's libvirt driver does: power button first, hard power-off after
//!   the shutdown timeout.
//! - `libvirt:///DOMAIN` (UUID or name): a domain of a libvirt daemon
//!   ([`libvirt`], built only with the `libvirt` feature: it links
//!   libvirt.so), stopped as Nova's libvirt driver stops it.
//!
//! The worker runs [`Hypervisor::power_off`] for each job and records the
//! [`Stopped`] or [`DriverError`] it returns; `shutoff-admin server create`
//! uses [`Hypervisor::power_state`] to check an address reaches a VM. Neither
//! holds driver code of its own.

pub mod fake;
#[cfg(feature = "libvirt")]
pub mod libvirt;
pub mod qemu;
pub mod qmp;

use std::fmt;
use std::time::Duration;

use futures::future::BoxFuture;
use shutoff_core::state::PowerState;
use uuid::Uuid;

/// The error beneath a [`DriverError`]: a failed QMP exchange, an address
/// that does not parse.
pub type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a power-off did not happen. The worker retries `Transient` with
/// back-off and records `Permanent` at once.
///
/// `message` is the whole line the worker records on the job and its action
/// event (it already says what `source` says, so print an error chain from
/// `message` alone); `source` keeps the error it came from, for code that
/// needs more than words (a QMP timeout, a refused connection).
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// Worth another attempt: the VM may stop next time (a monitor that did
    /// not answer in time, a session that broke mid-stop).
    #[error("transient hypervisor error: {message}")]
    Transient {
        message: String,
        #[source]
        source: Option<Source>,
    },
    /// Another attempt would fail the same way (an address no driver takes,
    /// a simulator told to refuse).
    #[error("hypervisor error: {message}")]
    Permanent {
        message: String,
        #[source]
        source: Option<Source>,
    },
}

impl DriverError {
    pub fn transient(message: impl Into<String>) -> Self {
        DriverError::Transient {
            message: message.into(),
            source: None,
        }
    }

    pub fn permanent(message: impl Into<String>) -> Self {
        DriverError::Permanent {
            message: message.into(),
            source: None,
        }
    }

    /// The same error, caused by `cause` (kept as its [`source`]).
    ///
    /// [`source`]: std::error::Error::source
    pub fn caused_by(self, cause: impl Into<Source>) -> Self {
        match self {
            DriverError::Transient { message, .. } => DriverError::Transient {
                message,
                source: Some(cause.into()),
            },
            DriverError::Permanent { message, .. } => DriverError::Permanent {
                message,
                source: Some(cause.into()),
            },
        }
    }
}

/// Two driver errors are equal when they are of the same kind and say the
/// same thing; their sources are not compared (most errors cannot be).
impl PartialEq for DriverError {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (
                DriverError::Transient { message: a, .. },
                DriverError::Transient { message: b, .. },
            )
            | (
                DriverError::Permanent { message: a, .. },
                DriverError::Permanent { message: b, .. },
            ) => a == b,
            _ => false,
        }
    }
}

impl Eq for DriverError {}

/// A finished power-off, for the instance record and the action event.
#[derive(Debug, Clone, PartialEq)]
pub struct Stopped {
    /// Read back from the hypervisor after the stop (Nova's
    /// `_get_power_state` after `power_off`).
    pub power_state: PowerState,
    pub how: StopMethod,
    /// From the start of the driver call to the VM being off.
    pub elapsed: Duration,
    /// One line for the event's `details`, after `how` and `elapsed`: what
    /// the hypervisor said.
    pub note: String,
    /// Set only with [`StopMethod::AlreadyOff`], when the VM counted as off
    /// because nothing answered on its monitor, not because the hypervisor
    /// said so: which sign it was, for code that must not read `note`.
    pub gone: Option<Gone>,
}

/// How a VM was found gone: nothing answered where its monitor should be.
/// Both count as stopped (Nova's "no such domain"), but they are told apart
/// because they point at different causes: a missing socket is also what a
/// worker sees for a VM of another host, a refused one only a QEMU that died
/// on this one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gone {
    /// The unix socket path does not exist on this host: QEMU removes its
    /// socket when it exits, and never made one where it does not run.
    NoSocket,
    /// The connection was refused: the socket file is still there (or the
    /// TCP port is closed) but nothing listens, so QEMU exited without
    /// cleaning up (killed, or crashed).
    Refused,
}

impl Gone {
    pub fn as_str(self) -> &'static str {
        match self {
            Gone::NoSocket => "no-socket",
            Gone::Refused => "refused",
        }
    }
}

impl fmt::Display for Gone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the VM went off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMethod {
    /// The guest shut itself down after the power button (`SHUTDOWN` with
    /// `"guest": true`).
    Clean,
    /// Hard power-off: the guest did not shut down in time (or the clean
    /// shutdown was skipped), and QEMU was told to `quit`.
    Forced,
    /// It was off (or gone, see [`Stopped::gone`]) before we did anything.
    AlreadyOff,
    /// The simulator.
    Simulated,
}

impl StopMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            StopMethod::Clean => "clean",
            StopMethod::Forced => "forced",
            StopMethod::AlreadyOff => "already-off",
            StopMethod::Simulated => "simulated",
        }
    }
}

impl Stopped {
    /// The action event's `details`, e.g. `clean shutdown in 0.031 s:
    /// SHUTDOWN guest=true reason=guest-shutdown after 1 power-button press`.
    pub fn details(&self) -> String {
        let what = match self.how {
            StopMethod::Clean => "clean shutdown",
            StopMethod::Forced => "forced power-off",
            StopMethod::AlreadyOff => "already off",
            StopMethod::Simulated => "simulated power-off",
        };
        format!(
            "{what} in {:.3} s: {}",
            self.elapsed.as_secs_f64(),
            self.note
        )
    }
}

impl fmt::Display for StopMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Worker-wide driver settings; an instance's address may override some
/// (see [`qemu`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverSettings {
    /// How long a guest has to shut down cleanly before the hard power-off
    /// (Nova's `shutdown_timeout`); zero powers off at once.
    pub shutdown_timeout: Duration,
    /// The power button is pressed again this often while waiting, because
    /// a guest ignores presses while it boots (Nova's
    /// `SHUTDOWN_RETRY_INTERVAL`).
    pub shutdown_retry_interval: Duration,
    /// Longest wait for any single QMP answer (connect, greeting, reply, or
    /// QEMU exiting after `quit`), and for any single libvirt call.
    pub qmp_timeout: Duration,
    /// The libvirt daemon of `libvirt:///` addresses that do not name one
    /// (`?uri=`); by default the host's own `qemu:///system`. Unused by a
    /// build without the `libvirt` feature.
    pub libvirt_uri: String,
}

/// The libvirt daemon a worker drives unless told otherwise: the host's own
/// system instance, nova-compute's default `connection_uri` for QEMU.
pub const DEFAULT_LIBVIRT_URI: &str = "qemu:///system";

impl Default for DriverSettings {
    fn default() -> Self {
        DriverSettings {
            shutdown_timeout: Duration::from_secs(60),
            shutdown_retry_interval: Duration::from_secs(10),
            qmp_timeout: Duration::from_secs(10),
            libvirt_uri: DEFAULT_LIBVIRT_URI.to_string(),
        }
    }
}

/// The refusal of a `libvirt:///` address by a build without the `libvirt`
/// feature: permanent, since this worker will never have the driver.
/// Compiled in every build so its words are tested in every build.
#[cfg_attr(feature = "libvirt", allow(dead_code))]
fn libvirt_not_built(address: &str) -> DriverError {
    DriverError::permanent(format!(
        "{address:?}: this build has no libvirt driver (build shutoff with the \
         `libvirt` feature, which needs libvirt-dev)"
    ))
}

/// A per-instance override of a timing may not exceed this (an hour).
const MAX_OVERRIDE_SECS: u64 = 3600;

/// An address's `KEY=SECS` override of a timing (`shutdown_timeout`,
/// `shutdown_retry_interval`), in whole seconds; refused with `bad`.
pub(crate) fn override_secs(
    k: &str,
    v: &str,
    bad: impl Fn(String) -> DriverError,
) -> Result<Duration, DriverError> {
    let refused = || {
        bad(format!(
            "{k}={v}: expected whole seconds from 0 to {MAX_OVERRIDE_SECS}"
        ))
    };
    match v.parse::<u64>() {
        Ok(s) if s <= MAX_OVERRIDE_SECS => Ok(Duration::from_secs(s)),
        Ok(_) => Err(refused()),
        Err(e) => Err(refused().caused_by(e)),
    }
}

pub trait Hypervisor: Send + Sync {
    /// Powers the VM off and returns the power state read back afterwards.
    /// "Already off" and "no such domain" are success, as in Nova.
    fn power_off(&self, instance: Uuid) -> BoxFuture<'_, Result<Stopped, DriverError>>;

    /// Reads the power state without changing anything (an operator's check
    /// that an address reaches a VM).
    fn power_state(&self, instance: Uuid) -> BoxFuture<'_, Result<PowerState, DriverError>>;

    /// The longest [`Hypervisor::power_off`] takes when it runs its course,
    /// clean-shutdown wait included: the worker's own power-off timeout is
    /// stretched to at least this, so it only cuts off a driver that hangs.
    fn longest_power_off(&self) -> Duration {
        Duration::ZERO
    }
}

/// The driver for an instance's hypervisor address, with the worker's
/// default settings.
pub fn driver_for(address: &str) -> Result<Box<dyn Hypervisor>, DriverError> {
    driver_with(address, &DriverSettings::default())
}

/// The driver for an instance's hypervisor address.
pub fn driver_with(
    address: &str,
    settings: &DriverSettings,
) -> Result<Box<dyn Hypervisor>, DriverError> {
    let url = url::Url::parse(address).map_err(|e| {
        DriverError::permanent(format!("invalid hypervisor address {address:?}: {e}")).caused_by(e)
    })?;
    match url.scheme() {
        "fake" => Ok(Box::new(fake::FakeHypervisor::from_url(&url)?)),
        "qmp+unix" | "qmp+tcp" => Ok(Box::new(qemu::QemuHypervisor::from_url(&url, settings)?)),
        #[cfg(feature = "libvirt")]
        "libvirt" => Ok(Box::new(libvirt::LibvirtHypervisor::from_url(
            &url, settings,
        )?)),
        #[cfg(not(feature = "libvirt"))]
        "libvirt" => Err(libvirt_not_built(address)),
        other => Err(DriverError::permanent(format!(
            "no hypervisor driver for scheme {other:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_that_does_not_parse_keeps_the_parsers_error() {
        let Err(e) = driver_for("not a url") else {
            panic!("not a url was taken")
        };

        assert_eq!(
            e.to_string(),
            "hypervisor error: invalid hypervisor address \"not a url\": relative URL without a base"
        );
        let source = std::error::Error::source(&e).expect("the parser's error is kept");
        assert_eq!(
            source.downcast_ref::<url::ParseError>(),
            Some(&url::ParseError::RelativeUrlWithoutBase)
        );
    }

    #[test]
    fn a_build_without_libvirt_says_so_permanently() {
        assert_eq!(
            libvirt_not_built("libvirt:///web-1"),
            DriverError::permanent(
                "\"libvirt:///web-1\": this build has no libvirt driver (build shutoff with \
                 the `libvirt` feature, which needs libvirt-dev)"
            )
        );
    }

    /// Runs in builds without the feature (the README's `cargo test`); CI
    /// builds with it.
    #[cfg(not(feature = "libvirt"))]
    #[test]
    fn a_build_without_libvirt_refuses_libvirt_addresses() {
        let Err(e) = driver_for("libvirt:///web-1") else {
            panic!("libvirt:/// was taken without the libvirt feature")
        };

        assert_eq!(e, libvirt_not_built("libvirt:///web-1"));
    }

    #[test]
    fn an_error_of_our_own_has_no_source() {
        let e = DriverError::transient("no answer within 15 s");

        assert_eq!(
            e.to_string(),
            "transient hypervisor error: no answer within 15 s"
        );
        assert!(std::error::Error::source(&e).is_none());
    }
}
