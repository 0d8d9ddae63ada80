//! `fake://`: a simulated hypervisor with per-instance knobs in its address,
//! so demos, tests and benchmarks need no VMs.
//!
//! - `delay_ms=N`: a power-off takes N milliseconds.
//! - `fail=always`: every power-off fails permanently.
//! - `fail=transient`: every power-off fails with a transient error.
//! - `fail_rate=P`: each power-off fails transiently with probability P (0..1).

use std::time::Duration;

use futures::future::BoxFuture;
use shutoff_core::state::PowerState;
use uuid::Uuid;

use crate::{DriverError, Hypervisor, StopMethod, Stopped};

#[derive(Debug, Clone, PartialEq)]
pub struct FakeHypervisor {
    pub delay: Duration,
    pub fail: Fail,
    pub fail_rate: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fail {
    Never,
    Always,
    Transient,
}

impl FakeHypervisor {
    pub fn from_url(url: &url::Url) -> Result<Self, DriverError> {
        let bad = |m: String| DriverError::permanent(format!("invalid fake:// address: {m}"));
        let mut fake = FakeHypervisor {
            delay: Duration::ZERO,
            fail: Fail::Never,
            fail_rate: 0.0,
        };
        for (k, v) in url.query_pairs() {
            match &*k {
                "delay_ms" => {
                    let ms: u64 = v
                        .parse()
                        .map_err(|e| bad(format!("delay_ms={v}")).caused_by(e))?;
                    fake.delay = Duration::from_millis(ms.min(3_600_000));
                }
                "fail" => {
                    fake.fail = match &*v {
                        "never" => Fail::Never,
                        "always" => Fail::Always,
                        "transient" => Fail::Transient,
                        _ => return Err(bad(format!("fail={v}"))),
                    }
                }
                "fail_rate" => {
                    let p: f64 = v
                        .parse()
                        .map_err(|e| bad(format!("fail_rate={v}")).caused_by(e))?;
                    if !(0.0..=1.0).contains(&p) {
                        return Err(bad(format!("fail_rate={v}")));
                    }
                    fake.fail_rate = p;
                }
                other => return Err(bad(format!("unknown knob {other:?}"))),
            }
        }
        Ok(fake)
    }
}

impl Hypervisor for FakeHypervisor {
    fn power_off(&self, instance: Uuid) -> BoxFuture<'_, Result<Stopped, DriverError>> {
        Box::pin(async move {
            let start = tokio::time::Instant::now();
            tokio::time::sleep(self.delay).await;
            match self.fail {
                Fail::Always => {
                    return Err(DriverError::permanent(format!(
                        "simulated hypervisor refused to power off {instance}"
                    )));
                }
                Fail::Transient => {
                    return Err(DriverError::transient(format!(
                        "simulated hypervisor timed out powering off {instance}"
                    )));
                }
                Fail::Never => {}
            }
            if self.fail_rate > 0.0 && rand::random::<f64>() < self.fail_rate {
                return Err(DriverError::transient(format!(
                    "simulated transient failure powering off {instance}"
                )));
            }
            Ok(Stopped {
                power_state: PowerState::Shutdown,
                how: StopMethod::Simulated,
                elapsed: start.elapsed(),
                note: "no VM behind fake://".into(),
                gone: None,
            })
        })
    }

    /// The simulator keeps no state between calls.
    fn power_state(&self, _instance: Uuid) -> BoxFuture<'_, Result<PowerState, DriverError>> {
        Box::pin(async { Ok(PowerState::NoState) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver_for;

    #[test]
    fn knobs_are_parsed_and_bad_ones_refused() {
        let f =
            FakeHypervisor::from_url(&"fake://?delay_ms=200&fail=always".parse().unwrap()).unwrap();
        assert_eq!(f.delay, Duration::from_millis(200));
        assert_eq!(f.fail, Fail::Always);
        assert!(FakeHypervisor::from_url(&"fake://?fail=sometimes".parse().unwrap()).is_err());
        assert!(FakeHypervisor::from_url(&"fake://?fail_rate=2".parse().unwrap()).is_err());
        assert!(FakeHypervisor::from_url(&"fake://?colour=red".parse().unwrap()).is_err());
        assert!(driver_for("vmware://x").is_err());
        assert!(driver_for("not a url").is_err());
    }

    #[tokio::test]
    async fn powers_off_or_fails_as_configured() {
        let id = Uuid::new_v4();
        let stopped = driver_for("fake://").unwrap().power_off(id).await.unwrap();
        assert_eq!(
            (stopped.power_state, stopped.how),
            (PowerState::Shutdown, StopMethod::Simulated)
        );
        assert!(matches!(
            driver_for("fake://?fail=always")
                .unwrap()
                .power_off(id)
                .await,
            Err(DriverError::Permanent { .. })
        ));
        assert!(matches!(
            driver_for("fake://?fail=transient")
                .unwrap()
                .power_off(id)
                .await,
            Err(DriverError::Transient { .. })
        ));
    }
}
