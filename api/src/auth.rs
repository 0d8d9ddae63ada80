//! `X-Auth-Token` → [`Caller`], as an extractor: a handler that takes a
//! `Caller` cannot run unauthenticated. Who vouches for a token is the
//! [`Authenticator`]: our own token table, or Keystone. Either way the token
//! is hashed before any lookup or caching and never logged, and the policy
//! after it is the same.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use shutoff_core::store::auth::{self, Caller};
use sqlx::PgPool;

use crate::error::ApiError;
use crate::keystone::Keystone;
use crate::settings::{AuthMode, Settings};
use crate::startup::AppState;
use crate::token_cache::TokenCache;

/// Longest token accepted; Keystone's fernet tokens are ~200 bytes, ours 64.
const MAX_TOKEN_LEN: usize = 8192;

/// Where tokens are validated, chosen by `--auth`.
pub enum Authenticator {
    /// The `tokens` table, with a short cache of valid tokens.
    Local(TokenCache),
    /// OpenStack Keystone.
    Keystone(Box<Keystone>),
}

impl Authenticator {
    pub fn from_settings(settings: &Settings) -> anyhow::Result<Self> {
        Ok(match settings.auth {
            AuthMode::Local => Authenticator::Local(TokenCache::new(
                std::time::Duration::from_secs(settings.token_cache_secs),
            )),
            AuthMode::Keystone => {
                Authenticator::Keystone(Box::new(Keystone::new(&settings.keystone)?))
            }
        })
    }

    /// The 401 for this mode: Keystone's names the identity service.
    pub fn unauthorized(&self) -> ApiError {
        let keystone_uri = match self {
            Authenticator::Local(_) => None,
            Authenticator::Keystone(k) => Some(k.uri().to_string()),
        };
        ApiError::Unauthorized { keystone_uri }
    }

    pub async fn authenticate(&self, pool: &PgPool, token: &str) -> Result<Caller, ApiError> {
        let sha256 = shutoff_core::token::hash(token);
        match self {
            Authenticator::Local(cache) => {
                if let Some(caller) = cache.get(&sha256) {
                    return Ok(caller);
                }
                let valid = auth::authenticate_hash(pool, &sha256)
                    .await?
                    .ok_or_else(|| self.unauthorized())?;
                cache.put(sha256, &valid);
                Ok(valid.caller)
            }
            Authenticator::Keystone(keystone) => keystone
                .authenticate(pool, token, &sha256)
                .await?
                .ok_or_else(|| self.unauthorized()),
        }
    }
}

pub struct Authenticated(pub Caller);

impl FromRequestParts<AppState> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = parts
            .headers
            .get("x-auth-token")
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|t| !t.is_empty() && t.len() <= MAX_TOKEN_LEN)
            .ok_or_else(|| state.auth.unauthorized())?;
        let caller = state.auth.authenticate(&state.pool, token).await?;
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
        Authenticator::from_settings(&Settings::parse_from(argv))
    }

    fn error(args: &[&str]) -> String {
        keystone_mode(args).err().expect("refused").to_string()
    }

    #[test]
    fn keystone_mode_does_not_start_without_what_it_needs() {
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
        assert!(
            error(&[&["--keystone-url", "https://keystone/v3"][..], &account].concat())
                .contains("http://")
        );
        // Keystone is not contacted at start-up: it may be down.
        assert!(matches!(
            keystone_mode(&[&url[..], &account].concat()),
            Ok(Authenticator::Keystone(_))
        ));
    }
}
