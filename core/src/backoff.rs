//! Capped exponential back-off with jitter, for reconnects and retries.

use std::time::Duration;

#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Backoff {
    /// Reconnecting to PostgreSQL or RabbitMQ. Capped low: a restarted
    /// service should be back in use within a couple of seconds, and one
    /// connection attempt every two seconds per process costs nothing.
    pub const RECONNECT: Backoff = Backoff {
        base: Duration::from_millis(100),
        max: Duration::from_secs(2),
    };

    /// Delay before attempt `n` (0-based), with up to 25 % random jitter so a
    /// fleet of workers does not reconnect in lock-step.
    pub fn delay(&self, n: u32) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32.checked_shl(n.min(20)).unwrap_or(u32::MAX));
        let capped = exp.min(self.max);
        let jitter = rand::random::<f64>() * 0.25;
        capped.mul_f64(1.0 - jitter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_are_capped() {
        let b = Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        assert!(b.delay(0) <= Duration::from_millis(100));
        assert!(b.delay(0) >= Duration::from_millis(75));
        assert!(b.delay(3) >= Duration::from_millis(600));
        assert!(b.delay(30) <= Duration::from_secs(1));
    }
}
