//! Dead letters: messages no job could be found for, kept for an operator.

use sqlx::PgPool;

/// Records a poison message (its payload, shortened, and why).
pub async fn record_dead_letter(
    pool: &PgPool,
    queue: &str,
    reason: &str,
    message_id: Option<&str>,
    payload: &[u8],
    worker: &str,
) -> Result<(), sqlx::Error> {
    let shown: String = String::from_utf8_lossy(payload)
        .chars()
        .take(4096)
        .collect();
    sqlx::query(
        "INSERT INTO dead_letters (queue, reason, message_id, payload, worker) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(queue)
    .bind(reason)
    .bind(message_id)
    .bind(shown)
    .bind(worker)
    .execute(pool)
    .await?;
    Ok(())
}
