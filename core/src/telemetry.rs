//! Tracing set-up shared by every binary: `RUST_LOG` filters, default `info`.
//!
//! lapin is silenced by default: it logs a routine broker restart as ERROR,
//! and every broker failure that matters is reported by our own code (with
//! what we do about it). `RUST_LOG=info,lapin=debug` brings it back.

use tracing_subscriber::EnvFilter;

pub fn init() {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,lapin=off"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .try_init();
}
