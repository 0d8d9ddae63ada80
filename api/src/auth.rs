//! `X-Auth-Token` → [`Caller`], as an extractor: a handler that takes a
//! `Caller` cannot run unauthenticated. The token is hashed before lookup and
//! never logged; valid ones are cached briefly ([`crate::token_cache`]).

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use shutoff_core::store::auth::{self, Caller};

use crate::error::ApiError;
use crate::startup::AppState;

pub struct Authenticated(pub Caller);

impl FromRequestParts<AppState> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = parts
            .headers
            .get("x-auth-token")
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|t| !t.is_empty() && t.len() <= 512)
            .ok_or(ApiError::Unauthorized)?;
        let sha256 = shutoff_core::token::hash(token);
        if let Some(caller) = state.tokens.get(&sha256) {
            return Ok(Authenticated(caller));
        }
        let valid = auth::authenticate_hash(&state.pool, &sha256)
            .await?
            .ok_or(ApiError::Unauthorized)?;
        state.tokens.put(sha256, &valid);
        Ok(Authenticated(valid.caller))
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
