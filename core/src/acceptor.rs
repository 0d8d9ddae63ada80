//! The one acceptor of stops, used by the API, the admin tools and every
//! test: Nova's policy and order of refusals ([`crate::policy`]) around the
//! compare-and-swap statement ([`crate::store::accept`]).
//!
//! Acceptance is group-committed: concurrent requests share one statement and
//! one commit (see [`crate::batch`]), so the database's commit rate is not the
//! ceiling of the accept rate. Each request still gets its own answer; one the
//! batch did not accept is diagnosed alone, in Nova's order.
//!
//! The answer is the truth: a request that gives up (its [`Ticket`]) before
//! its statement started is never committed later, and one whose statement
//! started learns its true outcome.

use sqlx::PgPool;

use crate::batch::{self, Batcher, Ticket};
use crate::ids::{HostName, RequestId, ServerId};
use crate::message::StopJob;
use crate::policy::{self, Caller, Refusal};
use crate::state::TaskState;
use crate::store::StoreError;
use crate::store::accept::{self, AcceptRequest};

/// Most requests in one statement.
const MAX_BATCH: usize = 32;
/// Statements running at once. Each statement has a fixed cost in
/// PostgreSQL (about a third of a millisecond of CPU) that a bigger batch
/// shares: with the workers running, 2 gave 10-15% more stops end to end
/// than 4, and more accepts/s on their own. Not 1: a batch stuck behind one
/// locked instance row would then hold up every other request.
const IN_FLIGHT: usize = 2;
/// Times a refused compare-and-swap is diagnosed and, if nothing is wrong any
/// more (the row changed in between), tried again.
const RETRIES: usize = 3;

/// Why a stop was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    /// Nova would refuse it too (404, 403, 409, 400).
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The store could not decide it; nothing was committed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for AcceptError {
    fn from(e: sqlx::Error) -> Self {
        AcceptError::Store(e.into())
    }
}

/// One stop to decide.
#[derive(Debug, Clone)]
pub struct StopRequest<'a> {
    pub caller: &'a Caller,
    pub server: ServerId,
    pub request_id: &'a RequestId,
    /// Recorded on the job, so the worker and rescuer agree on when to give up.
    pub max_attempts: i32,
}

pub struct Acceptor {
    pool: PgPool,
    batch: Batcher<AcceptRequest, Option<HostName>>,
}

impl Acceptor {
    /// Starts the batcher (needs a Tokio runtime).
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

    /// Accepts a stop, or says why not. `ticket` lets the caller give up
    /// while the stop waits for its statement (see [`Ticket`]); a caller
    /// that cannot give up passes a fresh one.
    pub async fn accept(
        &self,
        stop: StopRequest<'_>,
        ticket: &Ticket,
    ) -> Result<StopJob, AcceptError> {
        let StopRequest {
            caller,
            server,
            request_id,
            max_attempts,
        } = stop;
        if !caller.may_stop() {
            // Readers never get to the compare-and-swap; but a reader asking
            // about an instance it cannot see still gets 404, not 403.
            let inst = accept::load(&self.pool, server).await?;
            policy::check_stop(caller, server, inst.as_ref())?;
            // check_stop refused already (404 or 403); this is its answer.
            return Err(Refusal::Forbidden.into());
        }
        let request = AcceptRequest::new(caller, server, request_id, max_attempts);
        if let Some(host) = self.batch.call_with(request.clone(), ticket).await? {
            return Ok(request.job(host));
        }
        self.not_accepted(caller, &request, ticket).await
    }

    /// After a compare-and-swap that did not take: says why, by reading the
    /// row. If the row changed in between so that nothing is wrong any more,
    /// tries again.
    async fn not_accepted(
        &self,
        caller: &Caller,
        request: &AcceptRequest,
        ticket: &Ticket,
    ) -> Result<StopJob, AcceptError> {
        let server = request.server;
        for _ in 0..RETRIES {
            let inst = accept::load(&self.pool, server).await?;
            policy::check_stop(caller, server, inst.as_ref())?;
            if !ticket.try_start() {
                return Err(StoreError::Abandoned.into());
            }
            let accepted =
                accept::try_accept_many(&self.pool, std::slice::from_ref(request)).await?;
            if let Some(Some(host)) = accepted.into_iter().next() {
                return Ok(request.job(host));
            }
        }
        // Lost races again and again: the instance is changing under us; the
        // honest answer is that a task is in progress.
        Err(Refusal::TaskState(server, TaskState::PoweringOff).into())
    }
}
