//! `shutoff-api` settings: flags, then environment, then defaults that work here.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use shutoff_core::config::Common;

use crate::server::Limits;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "shutoff-api",
    version,
    about = "shutoff's OpenStack-Compute-compatible stop API"
)]
pub struct Settings {
    /// Address to listen on (Nova's port by default).
    #[arg(long, env = "SHUTOFF_LISTEN", default_value = "0.0.0.0:8774")]
    pub listen: SocketAddr,

    #[command(flatten)]
    pub common: Common,

    /// Largest request body read; bigger ones are refused with 413 unread.
    #[arg(long, env = "SHUTOFF_MAX_BODY_BYTES", default_value_t = 16 * 1024)]
    pub max_body_bytes: usize,

    /// Longest path and query answered; longer ones get 414.
    #[arg(long, env = "SHUTOFF_MAX_URI_BYTES", default_value_t = 8 * 1024)]
    pub max_uri_bytes: usize,

    /// Most bytes of header names and values answered; more get 431.
    #[arg(long, env = "SHUTOFF_MAX_HEADER_BYTES", default_value_t = 16 * 1024)]
    pub max_header_bytes: usize,

    /// Time a client gets to send a request's headers, and the longest an
    /// idle keep-alive connection stays open; then the connection is closed.
    #[arg(long, env = "SHUTOFF_HEADER_READ_TIMEOUT_MS", default_value_t = 10_000)]
    pub header_read_timeout_ms: u64,

    /// Time a client gets to send a request's whole body; then 408.
    #[arg(long, env = "SHUTOFF_BODY_READ_TIMEOUT_MS", default_value_t = 10_000)]
    pub body_read_timeout_ms: u64,

    /// How often the relay looks for committed jobs whose publish did not go through.
    #[arg(long, env = "SHUTOFF_RELAY_INTERVAL_MS", default_value_t = 1000)]
    pub relay_interval_ms: u64,

    /// Seconds to let in-flight requests finish after SIGTERM.
    #[arg(long, env = "SHUTOFF_DRAIN_SECS", default_value_t = 10)]
    pub drain_secs: u64,

    /// Seconds a validated token is trusted without asking the database again
    /// (never past its expiry; 0 = always ask). Revoking a token or disabling
    /// a project takes effect within this time.
    #[arg(long, env = "SHUTOFF_TOKEN_CACHE_SECS", default_value_t = 10)]
    pub token_cache_secs: u64,

    /// Run the migrations on start-up (the admin's `migrate` does the same).
    #[arg(long, env = "SHUTOFF_MIGRATE", default_value_t = false)]
    pub migrate: bool,
}

impl Settings {
    /// Settings for tests: random port, given queue prefix, defaults elsewhere.
    pub fn for_tests(database_url: &str, queue_prefix: &str) -> Self {
        let mut s = Settings::parse_from(["shutoff-api", "--listen", "127.0.0.1:0"]);
        s.common.database_url = database_url.to_string();
        s.common.queue_prefix = queue_prefix.to_string();
        s
    }

    pub fn relay_interval(&self) -> Duration {
        Duration::from_millis(self.relay_interval_ms)
    }

    pub fn limits(&self) -> Limits {
        Limits {
            max_uri_bytes: self.max_uri_bytes,
            max_header_bytes: self.max_header_bytes,
            header_read_timeout: Duration::from_millis(self.header_read_timeout_ms),
            body_read_timeout: Duration::from_millis(self.body_read_timeout_ms),
        }
    }
}
