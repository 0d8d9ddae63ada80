//! The world the stops act on: a migrated database, one project, a member
//! token, and N running servers on the simulated hypervisor.

use anyhow::{Context, Result};
use chrono::{Duration as Days, Utc};
use shutoff_core::ids::ProjectId;
use shutoff_core::store::admin::{create_project, create_token};
use sqlx::PgPool;
use uuid::Uuid;

/// What the load needs to send stops.
#[derive(Debug, Clone)]
pub struct Fixture {
    pub project: ProjectId,
    /// A member token (members may stop their project's servers).
    pub token: String,
    pub servers: Vec<Uuid>,
}

/// Creates $2 active, launched servers in project $1, in one statement (2000
/// single inserts would be the slowest part of setting up). Each is on the
/// simulated hypervisor: a power-off takes 20..=200 ms, and one call in five
/// fails transiently (the worker retries it).
const SERVERS_SQL: &str = "
INSERT INTO instances (uuid, project_id, user_id, name, hypervisor, launched_at)
SELECT gen_random_uuid(), $1, 'chaos-user', 'chaos-' || g,
       'fake://?delay_ms=' || (20 + floor(random() * 181))::int || '&fail_rate=0.2', now()
  FROM generate_series(1, $2) AS g
RETURNING uuid";

pub async fn seed(database_url: &str, pool: &PgPool, servers: usize) -> Result<Fixture> {
    shutoff_core::store::create_and_migrate(&database_url.parse()?)
        .await
        .context("migrating the database")?;
    let project = ProjectId::random();
    create_project(pool, &project, "chaos").await?;
    let token = create_token(
        pool,
        &project,
        "chaos-user",
        &["member".to_string(), "reader".to_string()],
        Utc::now() + Days::days(1),
    )
    .await?;
    let servers: Vec<Uuid> = sqlx::query_scalar(SERVERS_SQL)
        .bind(project.as_str())
        .bind(servers as i32)
        .fetch_all(pool)
        .await
        .context("creating servers")?;
    Ok(Fixture {
        project,
        token,
        servers,
    })
}
