//! Token lookup: by SHA-256, never by the token itself; and, for Keystone
//! callers, whether their project is open here.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::ids::ProjectId;
use crate::policy::Caller;

/// project, user, roles, project active, expires at
type TokenRow = (String, String, Vec<String>, bool, DateTime<Utc>);

/// A valid token's caller, and until when the token is valid.
#[derive(Debug, Clone)]
pub struct Authenticated {
    pub caller: Caller,
    pub expires_at: DateTime<Utc>,
}

/// The caller for a token, if it exists and has not expired.
pub async fn authenticate(pool: &PgPool, token: &str) -> Result<Option<Caller>, sqlx::Error> {
    Ok(authenticate_hash(pool, &crate::token::hash(token))
        .await?
        .map(|a| a.caller))
}

/// The same, by the token's SHA-256 (hex), for callers that hash once and
/// also use the hash as a cache key.
pub async fn authenticate_hash(
    pool: &PgPool,
    sha256: &str,
) -> Result<Option<Authenticated>, sqlx::Error> {
    let row: Option<TokenRow> = sqlx::query_as(
        "SELECT t.project_id, t.user_id, t.roles, p.enabled AND p.deleted_at IS NULL, t.expires_at
           FROM tokens t JOIN projects p ON p.id = t.project_id
          WHERE t.sha256 = $1 AND t.expires_at > now()",
    )
    .bind(sha256)
    .fetch_optional(pool)
    .await?;
    Ok(
        row.and_then(|(project, user_id, roles, project_active, expires_at)| {
            Some(Authenticated {
                caller: Caller {
                    project_id: ProjectId::parse(&project)?,
                    user_id,
                    roles,
                    project_active,
                },
                expires_at,
            })
        }),
    )
}

/// What the local identity service says about a valid token: its caller,
/// its project's name, and when it was made and ends.
#[derive(Debug, Clone)]
pub struct TokenInfo {
    pub caller: Caller,
    pub project_name: String,
    pub issued_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// A token's [`TokenInfo`], by its SHA-256 (hex), if it exists and has not
/// expired; a token of a disabled or deleted project is returned with
/// `project_active` false, for the caller to refuse.
pub async fn token_info(pool: &PgPool, sha256: &str) -> Result<Option<TokenInfo>, sqlx::Error> {
    type InfoRow = (
        String,
        String,
        Vec<String>,
        bool,
        DateTime<Utc>,
        String,
        DateTime<Utc>,
    );
    let row: Option<InfoRow> = sqlx::query_as(
        "SELECT t.project_id, t.user_id, t.roles, p.enabled AND p.deleted_at IS NULL, t.expires_at,
                p.name, t.created_at
           FROM tokens t JOIN projects p ON p.id = t.project_id
          WHERE t.sha256 = $1 AND t.expires_at > now()",
    )
    .bind(sha256)
    .fetch_optional(pool)
    .await?;
    Ok(row.and_then(
        |(project, user_id, roles, project_active, expires_at, project_name, issued_at)| {
            Some(TokenInfo {
                caller: Caller {
                    project_id: ProjectId::parse(&project)?,
                    user_id,
                    roles,
                    project_active,
                },
                project_name,
                issued_at,
                expires_at,
            })
        },
    ))
}

/// Whether a project that Keystone vouched for may use the API. Keystone owns
/// its projects, so one with no row of ours is active (it simply has no
/// instances yet); a row disabled or deleted here still closes it, as in
/// local mode.
pub async fn project_active(pool: &PgPool, project: &ProjectId) -> Result<bool, sqlx::Error> {
    let active: Option<bool> =
        sqlx::query_scalar("SELECT enabled AND deleted_at IS NULL FROM projects WHERE id = $1")
            .bind(project.as_str())
            .fetch_optional(pool)
            .await?;
    Ok(active.unwrap_or(true))
}
