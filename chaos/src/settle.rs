//! Waiting for the system to finish what it accepted: no unfinished job and
//! no instance left `powering-off`.

use shutoff_core::state::TaskState;
use std::time::{Duration, Instant};

use anyhow::Result;
use sqlx::PgPool;

use crate::fleet::Fleet;
use crate::say;

#[derive(Debug, Clone)]
pub struct Settled {
    /// False if the time ran out first.
    pub settled: bool,
    pub took: Duration,
    /// Jobs not yet succeeded or failed, at the last look.
    pub unfinished: i64,
    /// Instances still powering off, at the last look.
    pub powering_off: i64,
}

pub async fn wait(pool: &PgPool, fleet: &mut Fleet, limit: Duration) -> Result<Settled> {
    let t = Instant::now();
    let mut last_say = Instant::now();
    let (mut unfinished, mut powering_off) = (-1, -1);
    loop {
        fleet.revive().await?;
        // The database may be briefly unreachable; just look again.
        if let Ok((u, p)) = sqlx::query_as::<_, (i64, i64)>(
            "SELECT (SELECT count(*) FROM jobs WHERE state NOT IN ('succeeded', 'failed')),
                    (SELECT count(*) FROM instances WHERE task_state = $1)",
        )
        .bind(TaskState::PoweringOff)
        .fetch_one(pool)
        .await
        {
            (unfinished, powering_off) = (u, p);
        }
        if unfinished == 0 && powering_off == 0 {
            say!("settled in {:.1}s", t.elapsed().as_secs_f64());
            return Ok(Settled {
                settled: true,
                took: t.elapsed(),
                unfinished,
                powering_off,
            });
        }
        if t.elapsed() > limit {
            say!(
                "not settled after {limit:?}: {unfinished} jobs unfinished, {powering_off} instances powering off"
            );
            return Ok(Settled {
                settled: false,
                took: t.elapsed(),
                unfinished,
                powering_off,
            });
        }
        if last_say.elapsed() > Duration::from_secs(5) {
            say!("settling: {unfinished} jobs unfinished, {powering_off} instances powering off");
            last_say = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
