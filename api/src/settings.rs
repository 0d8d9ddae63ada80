//! `shutoff-api` settings: flags, then environment, then defaults that work here.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, ValueEnum};
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

    /// Longest a request may take, database and broker calls included. Past
    /// it the request is answered 503 if nothing it asked for has started;
    /// a stop whose statement has started is answered with its true outcome.
    #[arg(long, env = "SHUTOFF_REQUEST_TIMEOUT_MS", default_value_t = 30_000)]
    pub request_timeout_ms: u64,

    /// Remove finished stops older than this (e.g. `90d`), as `shutoff-admin
    /// prune --older-than` does, every `--retention-interval-secs`. Off by
    /// default: turn it on once the history is no longer needed in the
    /// database (archive it first with `shutoff-admin prune --archive-to`).
    #[arg(long, env = "SHUTOFF_RETENTION", value_parser = humantime::parse_duration)]
    pub retention: Option<Duration>,

    /// How often the retention runs, in seconds.
    #[arg(long, env = "SHUTOFF_RETENTION_INTERVAL_SECS", default_value_t = 600)]
    pub retention_interval_secs: u64,

    /// How long the conductor's claim and success batches wait for more
    /// calls of the fleet's workers (`--via-conductor`) when not full. A
    /// claim and a stop's record are each at most this much later; 0 sends
    /// each batch as soon as the previous one is done, at about twice the
    /// PostgreSQL transactions per stop over many hosts.
    #[arg(long, env = "SHUTOFF_CONDUCTOR_LINGER_MS", default_value_t = 20,
          value_parser = clap::value_parser!(u64).range(0..=1000))]
    pub conductor_linger_ms: u64,

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

    /// Who says what a token means: our own token table (`local`) or
    /// OpenStack Keystone (`keystone`, see the `--keystone-*` settings).
    #[arg(long, env = "SHUTOFF_AUTH", value_enum, default_value_t = AuthMode::Local)]
    pub auth: AuthMode,

    #[command(flatten)]
    pub keystone: KeystoneSettings,

    /// The region of the endpoints in the catalog of the local identity
    /// service (`/identity/v3`, local auth mode only): a clouds.yaml's
    /// `region_name`.
    #[arg(long, env = "SHUTOFF_REGION_NAME", default_value = "RegionOne")]
    pub region_name: String,

    /// Run the migrations on start-up (the admin's `migrate` does the same).
    #[arg(long, env = "SHUTOFF_MIGRATE", default_value_t = false)]
    pub migrate: bool,
}

/// Where tokens are validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuthMode {
    /// The `tokens` table, filled by `shutoff-admin token create`.
    Local,
    /// Keystone's `GET /v3/auth/tokens`, as keystonemiddleware does.
    Keystone,
}

/// Keystone mode: where Keystone is and the service account shutoff uses to
/// validate its callers' tokens (it needs the `service` or `admin` role).
/// Its `Debug` hides the password.
#[derive(Clone, Args)]
pub struct KeystoneSettings {
    /// Keystone's v3 URL, e.g. `https://keystone.example:5000/v3` (or `http://`
    /// on a trusted network); also the `uri` of the `WWW-Authenticate` header of a 401.
    #[arg(long = "keystone-url", env = "KEYSTONE_URL")]
    pub url: Option<String>,

    /// PEM file of CA certificates trusted (besides the system's store) to sign
    /// Keystone's certificate; only with an `https://` KEYSTONE_URL.
    #[arg(long = "keystone-ca-file", env = "KEYSTONE_CA_FILE")]
    pub ca_file: Option<std::path::PathBuf>,

    /// The service account's user name.
    #[arg(long = "keystone-username", env = "KEYSTONE_USERNAME")]
    pub username: Option<String>,

    /// The service account's password.
    #[arg(
        long = "keystone-password",
        env = "KEYSTONE_PASSWORD",
        hide_env_values = true
    )]
    pub password: Option<String>,

    /// The project the service account's token is scoped to.
    #[arg(long = "keystone-project", env = "KEYSTONE_PROJECT")]
    pub project: Option<String>,

    /// Domain of the service account's user.
    #[arg(
        long = "keystone-user-domain",
        env = "KEYSTONE_USER_DOMAIN",
        default_value = "Default"
    )]
    pub user_domain: String,

    /// Domain of the service account's project.
    #[arg(
        long = "keystone-project-domain",
        env = "KEYSTONE_PROJECT_DOMAIN",
        default_value = "Default"
    )]
    pub project_domain: String,

    /// Seconds a valid token is trusted without asking Keystone again (never
    /// past its `expires_at`). keystonemiddleware's default; a revoked token
    /// stops working within this time.
    #[arg(
        long = "keystone-cache-secs",
        env = "SHUTOFF_KEYSTONE_CACHE_SECS",
        default_value_t = 300
    )]
    pub cache_secs: u64,

    /// Seconds an invalid token is answered 401 without asking Keystone again.
    #[arg(
        long = "keystone-invalid-cache-secs",
        env = "SHUTOFF_KEYSTONE_INVALID_CACHE_SECS",
        default_value_t = 10
    )]
    pub invalid_cache_secs: u64,

    /// Milliseconds one request to Keystone may take before it counts as unreachable (503).
    #[arg(
        long = "keystone-timeout-ms",
        env = "SHUTOFF_KEYSTONE_TIMEOUT_MS",
        default_value_t = 5000
    )]
    pub timeout_ms: u64,
}

impl std::fmt::Debug for KeystoneSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeystoneSettings")
            .field("url", &self.url)
            .field("ca_file", &self.ca_file)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .field("project", &self.project)
            .field("user_domain", &self.user_domain)
            .field("project_domain", &self.project_domain)
            .field("cache_secs", &self.cache_secs)
            .field("invalid_cache_secs", &self.invalid_cache_secs)
            .field("timeout_ms", &self.timeout_ms)
            .finish()
    }
}

impl Settings {
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    pub fn relay_interval(&self) -> Duration {
        Duration::from_millis(self.relay_interval_ms)
    }

    pub fn conductor_linger(&self) -> Duration {
        Duration::from_millis(self.conductor_linger_ms)
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
