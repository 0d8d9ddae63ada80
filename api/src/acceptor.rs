//! Acceptance of stops, group-committed: concurrent requests share one
//! compare-and-swap statement and one commit (see [`shutoff_core::batch`]),
//! so the database's commit rate is no longer the ceiling of the accept rate.
//! Each request still gets its own answer; a request the batch did not
//! accept is diagnosed alone, in Nova's order, exactly as before.

use shutoff_core::batch::{self, BatchError, Batcher};
use shutoff_core::ids::{RequestId, ServerId};
use shutoff_core::message::StopJob;
use shutoff_core::store::accept::{self, AcceptError, AcceptRequest};
use shutoff_core::store::auth::Caller;
use sqlx::PgPool;

/// Most requests in one statement.
const MAX_BATCH: usize = 32;
/// Statements running at once. Each statement has a fixed cost in
/// PostgreSQL (about a third of a millisecond of CPU) that a bigger batch
/// shares: with the workers running, 2 gave 10-15% more stops end to end
/// than 4, and more accepts/s on their own. Not 1: a batch stuck behind one
/// locked instance row would then hold up every other request.
const IN_FLIGHT: usize = 2;

pub struct Acceptor {
    pool: PgPool,
    batch: Batcher<AcceptRequest, bool>,
}

impl Acceptor {
    pub fn new(pool: PgPool) -> Self {
        let p = pool.clone();
        let batch = Batcher::spawn(MAX_BATCH, IN_FLIGHT, move |batch: Vec<AcceptRequest>| {
            let pool = p.clone();
            async move {
                batch::all_or_each(&batch, |items| accept::try_accept_many(&pool, items)).await
            }
        });
        Acceptor { pool, batch }
    }

    /// Accepts a stop of `server` by `caller`, or says why not.
    pub async fn accept(
        &self,
        caller: &Caller,
        server: ServerId,
        request_id: &RequestId,
        max_attempts: i32,
    ) -> Result<StopJob, AcceptError> {
        if !caller.may_stop() {
            return accept::forbidden(&self.pool, caller, server).await;
        }
        let request = AcceptRequest::new(caller, server, request_id, max_attempts);
        let accepted = self
            .batch
            .call(request.clone())
            .await
            .map_err(BatchError::into_sqlx)?;
        if accepted {
            Ok(request.job())
        } else {
            accept::not_accepted(&self.pool, caller, &request).await
        }
    }
}
