//! Keystone mode (`--auth keystone`): callers' tokens are validated by
//! OpenStack Keystone, as keystonemiddleware does in front of Nova.
//!
//! - [`client`]: our service token and `GET /v3/auth/tokens`.
//! - [`cache`]: verdicts by the token's SHA-256, one validation in flight per token.
//!
//! The caller's project, user and roles come from the validated token; the
//! policy after that is the same as in local mode.

pub mod cache;
pub mod client;

use std::sync::Arc;
use std::time::Duration;

use shutoff_core::ids::ProjectId;
use shutoff_core::policy::Caller;
use shutoff_core::store::StoreError;
use shutoff_core::store::auth;
use sqlx::PgPool;

use self::cache::{Fresh, ValidationCache, Verdict};
use self::client::{KeystoneClient, KeystoneError};
use crate::settings::KeystoneSettings;

/// Why a token could not be judged. Shared by every request that waited for
/// the same validation, hence behind an `Arc`.
#[derive(Debug, thiserror::Error)]
pub enum ValidationError {
    #[error(transparent)]
    Keystone(#[from] KeystoneError),
    #[error(transparent)]
    Database(#[from] StoreError),
}

pub struct Keystone {
    client: KeystoneClient,
    cache: ValidationCache<Arc<ValidationError>>,
    /// `KEYSTONE_URL`, for the `WWW-Authenticate` header of our 401s.
    uri: String,
}

impl Keystone {
    pub fn new(settings: &KeystoneSettings) -> anyhow::Result<Self> {
        let url = settings
            .url
            .as_deref()
            .filter(|u| !u.is_empty())
            .ok_or_else(|| anyhow::anyhow!("--auth keystone needs KEYSTONE_URL"))?;
        Ok(Keystone {
            client: KeystoneClient::new(url, settings, Duration::from_millis(settings.timeout_ms))?,
            cache: ValidationCache::new(
                Duration::from_secs(settings.cache_secs),
                Duration::from_secs(settings.invalid_cache_secs),
            ),
            uri: url.to_string(),
        })
    }

    /// The identity service's URL, which our 401s name.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// The caller behind `token` (already hashed to `sha256`), from the cache
    /// or from Keystone; `None` when Keystone says the token is not valid.
    pub async fn authenticate(
        &self,
        pool: &PgPool,
        token: &str,
        sha256: &str,
    ) -> Result<Option<Caller>, Arc<ValidationError>> {
        let verdict = self
            .cache
            .get_or_validate(sha256, || async {
                self.validate(pool, token).await.map_err(|e| {
                    // Logged once, by the one request that asked.
                    tracing::warn!(error = %e, "cannot validate a token with Keystone");
                    Arc::new(e)
                })
            })
            .await;
        match verdict? {
            Verdict::Valid(caller) => Ok(Some(caller)),
            Verdict::Invalid => Ok(None),
        }
    }

    async fn validate(&self, pool: &PgPool, token: &str) -> Result<Fresh, ValidationError> {
        let invalid = Fresh {
            verdict: Verdict::Invalid,
            expires_at: None,
        };
        let Some(info) = self.client.validate(token).await? else {
            return Ok(invalid);
        };
        // Nova serves project-scoped tokens only; Keystone's own project ids
        // are 32 hex characters, like ours.
        let Some(project_id) = info.project_id.as_deref().and_then(ProjectId::parse) else {
            tracing::info!(user.id = %info.user_id, "refused a token without a usable project scope");
            return Ok(invalid);
        };
        let project_active = auth::project_active(pool, &project_id)
            .await
            .map_err(StoreError::from)?;
        Ok(Fresh {
            verdict: Verdict::Valid(Caller {
                project_id,
                user_id: info.user_id,
                roles: info.roles,
                project_active,
            }),
            expires_at: Some(info.expires_at),
        })
    }
}
