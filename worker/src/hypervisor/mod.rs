//! Hypervisor drivers behind one trait, chosen by each instance's address:
//! `fake://...` is the built-in simulator; a real driver (QEMU) plugs in by
//! adding a scheme to [`driver_for`].

pub mod fake;

use futures::future::BoxFuture;
use shutoff_core::state::PowerState;
use uuid::Uuid;

/// Why a power-off did not happen. The worker retries `Transient` with
/// back-off and records `Permanent` at once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DriverError {
    #[error("transient hypervisor error: {0}")]
    Transient(String),
    #[error("hypervisor error: {0}")]
    Permanent(String),
}

pub trait Hypervisor: Send + Sync {
    /// Powers the VM off and returns the power state read back afterwards.
    /// "Already off" and "no such domain" are success, as in Nova.
    fn power_off(&self, instance: Uuid) -> BoxFuture<'_, Result<PowerState, DriverError>>;
}

/// The driver for an instance's hypervisor address.
pub fn driver_for(address: &str) -> Result<Box<dyn Hypervisor>, DriverError> {
    let url = url::Url::parse(address).map_err(|e| {
        DriverError::Permanent(format!("invalid hypervisor address {address:?}: {e}"))
    })?;
    match url.scheme() {
        "fake" => Ok(Box::new(fake::FakeHypervisor::from_url(&url)?)),
        other => Err(DriverError::Permanent(format!(
            "no hypervisor driver for scheme {other:?}"
        ))),
    }
}
