//! Token lookup: by SHA-256, never by the token itself.

use sqlx::PgPool;

use crate::ids::ProjectId;

/// Who is calling, as the token says.
#[derive(Debug, Clone)]
pub struct Caller {
    pub project_id: ProjectId,
    pub user_id: String,
    pub roles: Vec<String>,
    /// False when the token's project is disabled or deleted (→ 404).
    pub project_active: bool,
}

impl Caller {
    pub fn is_admin(&self) -> bool {
        self.roles.iter().any(|r| r == "admin")
    }

    /// Nova's `project_member_or_admin`: may stop servers.
    pub fn may_stop(&self) -> bool {
        self.roles.iter().any(|r| r == "admin" || r == "member")
    }
}

/// The caller for a token, if it exists and has not expired.
pub async fn authenticate(pool: &PgPool, token: &str) -> Result<Option<Caller>, sqlx::Error> {
    let row: Option<(String, String, Vec<String>, bool)> = sqlx::query_as(
        "SELECT t.project_id, t.user_id, t.roles, p.enabled AND p.deleted_at IS NULL
           FROM tokens t JOIN projects p ON p.id = t.project_id
          WHERE t.sha256 = $1 AND t.expires_at > now()",
    )
    .bind(crate::token::hash(token))
    .fetch_optional(pool)
    .await?;
    Ok(row.and_then(|(project, user_id, roles, project_active)| {
        Some(Caller {
            project_id: ProjectId::parse(&project)?,
            user_id,
            roles,
            project_active,
        })
    }))
}
