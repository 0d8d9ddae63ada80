//! `X-Auth-Token` → [`Caller`], as an extractor: a handler that takes a
//! `Caller` cannot run unauthenticated. Who vouches for a token is the
//! [`Authenticator`]: our own token table, or Keystone. Either way the token
//! is hashed before any lookup or caching and never logged, and the policy
//! after it is the same.

use std::sync::Arc;

use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use shutoff_core::policy::Caller;
use shutoff_core::store::auth;
use sqlx::PgPool;

use crate::error::ApiError;
use crate::keystone::Keystone;
use crate::settings::{AuthMode, Settings};
use crate::token_cache::TokenCache;

/// Longest token accepted; Keystone's fernet tokens are ~200 bytes, ours 64.
const MAX_TOKEN_LEN: usize = 8192;

/// Turns a token into a [`Caller`], or refuses it.
pub struct Authenticator {
    /// Our `tokens` table (local mode), and the projects' enabled flag
    /// (Keystone mode).
    pool: PgPool,
    /// Who vouches for a token, chosen by `--auth`.
    source: TokenSource,
}

/// Where tokens are validated.
enum TokenSource {
    /// The `tokens` table, with a short cache of valid tokens.
    Local(TokenCache),
    /// OpenStack Keystone.
    Keystone(Box<Keystone>),
}

impl Authenticator {
    pub fn from_settings(settings: &Settings, pool: PgPool) -> anyhow::Result<Self> {
        let source = match settings.auth {
            AuthMode::Local => TokenSource::Local(TokenCache::new(std::time::Duration::from_secs(
                settings.token_cache_secs,
            ))),
            AuthMode::Keystone => {
                TokenSource::Keystone(Box::new(Keystone::new(&settings.keystone)?))
            }
        };
        Ok(Authenticator { pool, source })
    }

    /// The 401 for this mode: Keystone's names the identity service.
    pub fn unauthorized(&self) -> ApiError {
        let keystone_uri = match &self.source {
            TokenSource::Local(_) => None,
            TokenSource::Keystone(k) => Some(k.uri().to_string()),
        };
        ApiError::Unauthorized { keystone_uri }
    }

    pub async fn authenticate(&self, token: &str) -> Result<Caller, ApiError> {
        let sha256 = shutoff_core::token::hash(token);
        match &self.source {
            TokenSource::Local(cache) => {
                if let Some(caller) = cache.get(&sha256) {
                    return Ok(caller);
                }
                let valid = auth::authenticate_hash(&self.pool, &sha256)
                    .await?
                    .ok_or_else(|| self.unauthorized())?;
                cache.put(sha256, &valid);
                Ok(valid.caller)
            }
            TokenSource::Keystone(keystone) => keystone
                .authenticate(&self.pool, token, &sha256)
                .await?
                .ok_or_else(|| self.unauthorized()),
        }
    }
}

pub struct Authenticated(pub Caller);

/// Needs only the [`Authenticator`] of the router's state.
impl<S> FromRequestParts<S> for Authenticated
where
    Arc<Authenticator>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let auth = Arc::<Authenticator>::from_ref(state);
        let token = parts
            .headers
            .get("x-auth-token")
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|t| !t.is_empty() && t.len() <= MAX_TOKEN_LEN)
            .ok_or_else(|| auth.unauthorized())?;
        let caller = auth.authenticate(token).await?;
        Ok(Authenticated(caller))
    }
}

/// Nova's check that the URL's project is the token's, then that the
/// project is still enabled.
pub fn check_project(caller: &Caller, url_project: &str) -> Result<(), ApiError> {
    if url_project != caller.project_id.as_str() {
        return Err(ApiError::BadRequest(format!(
            "Malformed request URL: URL's project_id '{url_project}' doesn't match Context's project_id '{}'",
            caller.project_id
        )));
    }
    if !caller.project_active {
        return Err(ApiError::NotFound(format!(
            "Project {url_project} could not be found."
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn keystone_mode(args: &[&str]) -> anyhow::Result<Authenticator> {
        let argv = ["shutoff-api", "--auth", "keystone"].iter().chain(args);
        // Never connected: nothing here reaches the database.
        let pool = PgPool::connect_lazy("postgres://127.0.0.1/unused").expect("a valid URL");
        Authenticator::from_settings(&Settings::parse_from(argv), pool)
    }

    fn error(args: &[&str]) -> String {
        keystone_mode(args).err().expect("refused").to_string()
    }

    // A runtime only because the (unused) pool wants one.
    #[tokio::test]
    async fn keystone_mode_does_not_start_without_what_it_needs() {
        assert!(error(&[]).contains("KEYSTONE_URL"));
        let url = ["--keystone-url", "http://127.0.0.1:5000/v3"];
        assert!(
            error(&[&url[..], &["--keystone-username", "shutoff"]].concat())
                .contains("KEYSTONE_PASSWORD, KEYSTONE_PROJECT")
        );
        let account = [
            "--keystone-username",
            "shutoff",
            "--keystone-password",
            "p",
            "--keystone-project",
            "service",
        ];
        let ca = ["--keystone-ca-file", "/nonexistent/ca.pem"];
        assert_eq!(
            error(&[&url[..], &account, &ca].concat()),
            "KEYSTONE_CA_FILE is set but KEYSTONE_URL is http://; refusing to talk to \
             Keystone without TLS (use https://)"
        );
        let https = ["--keystone-url", "https://keystone.example/v3"];
        assert!(
            error(&[&https[..], &account, &ca].concat())
                .starts_with("cannot read KEYSTONE_CA_FILE /nonexistent/ca.pem")
        );
        assert!(
            error(&[&["--keystone-url", "ftp://keystone/v3"][..], &account].concat())
                .contains("https://")
        );
        // Keystone is not contacted at start-up: it may be down.
        for url in [&url, &https] {
            assert!(matches!(
                keystone_mode(&[&url[..], &account].concat()),
                Ok(Authenticator {
                    source: TokenSource::Keystone(_),
                    ..
                })
            ));
        }
    }
}
