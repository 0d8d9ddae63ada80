//! Progress lines on stderr, stamped with the time since the run began, so a
//! reader can line them up with the faults and the logs.

use std::sync::OnceLock;
use std::time::Instant;

static START: OnceLock<Instant> = OnceLock::new();

/// Starts the clock (the first call wins).
pub fn start() {
    START.get_or_init(Instant::now);
}

/// Seconds since [`start`].
pub fn now() -> f64 {
    START.get_or_init(Instant::now).elapsed().as_secs_f64()
}

/// `say!("...")`: one progress line.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {
        eprintln!("[{:>6.1}s] {}", $crate::progress::now(), format_args!($($arg)*))
    };
}
