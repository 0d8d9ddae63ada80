//! Tracing set-up shared by the API and the worker: `RUST_LOG` filters,
//! default `info,sqlx=warn,lapin=off`; text for people, or one JSON object
//! per line for a log pipeline (`--log-format json`).
//!
//! lapin is silenced by default: it logs a routine broker restart as ERROR,
//! and every broker failure that matters is reported by our own code (with
//! what we do about it). `RUST_LOG=info,lapin=debug` brings it back.

use tracing_subscriber::EnvFilter;

/// The filter when `RUST_LOG` is unset.
pub const DEFAULT_FILTER: &str = "info,sqlx=warn,lapin=off";

/// How log lines are written to standard output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// `2026-11-27T16:00:00Z  INFO request{request_id=req-…}: stop accepted`
    #[default]
    Text,
    /// `{"timestamp":…,"level":"INFO","message":"stop accepted","target":…,
    /// "spans":[{"name":"request","request_id":"req-…",…}]}`: the fields of
    /// every enclosing span (the request's or the job's) are on each line.
    Json,
}

pub fn init(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = match format {
        LogFormat::Text => builder.with_target(false).try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(true)
            .try_init(),
    };
}
