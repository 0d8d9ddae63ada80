//! The one error type of the store: what went wrong with a statement, in the
//! terms its callers branch on. The API maps it to a status code, the worker's
//! retry loop to "try again" or "give up", the batcher hands it to every caller
//! of a failed batch. The database's own error stays attached as the source.

use std::sync::Arc;
use std::time::Duration;

/// Why a store call has no answer.
///
/// Cloneable (the source is shared) because one failed batched statement
/// answers every caller in the batch with the same error.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// PostgreSQL cannot be reached, or is shutting down, or has no
    /// connection to spare: nothing was done; worth retrying with back-off.
    #[error("the database is unavailable: {0}")]
    Unavailable(#[source] Arc<sqlx::Error>),
    /// Another transaction holds what the statement needs: a row lock that
    /// outlasted `lock_timeout` or `statement_timeout`, a serialization
    /// failure or a deadlock. The statement was rolled back; nothing was done.
    #[error("the statement gave way to another transaction: {0}")]
    Contention(#[source] Arc<sqlx::Error>),
    /// Our own deadline for the call passed before it answered. The call was
    /// abandoned; whether it committed is not known to the caller (callers
    /// that must know use a [`crate::batch::Ticket`] instead).
    #[error("the database did not answer within {0:?}")]
    TimedOut(Duration),
    /// The caller gave up before the statement started, so it never ran.
    #[error("abandoned before the statement started")]
    Abandoned,
    /// The batcher is gone (the process is shutting down): nothing was done.
    #[error("the store is shutting down")]
    Stopped,
    /// A batched statement ran but returned nothing for this item: a bug in
    /// the statement, not worth retrying at once.
    #[error("the statement gave no answer for the item")]
    NoAnswer,
    /// Anything else: a bug, a constraint violation, a statement that returned
    /// what it must not. Not worth retrying at once.
    #[error("database error: {0}")]
    Failed(#[source] Arc<sqlx::Error>),
    /// A worker that reaches the database through the conductor
    /// ([`crate::conductor`]) could not reach it, or it answered with its own
    /// store error, carried here as text (its source stays in the
    /// conductor's log).
    #[error("{0}")]
    Remote(#[source] crate::conductor::RemoteError),
}

impl StoreError {
    /// Whether the same call may work if tried again a little later, with
    /// nothing fixed: the database was away, busy with another transaction,
    /// or slow.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Unavailable(_) | StoreError::Contention(_) | StoreError::TimedOut(_) => {
                true
            }
            StoreError::Remote(r) => r.transient,
            _ => false,
        }
    }

    /// Whether the database itself is away (the batcher then does not retry
    /// a batch item by item: every item would fail the same way).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
            || matches!(self, StoreError::Remote(r) if r.unavailable)
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        if is_unavailable(&e) {
            StoreError::Unavailable(Arc::new(e))
        } else if is_contention(&e) {
            StoreError::Contention(Arc::new(e))
        } else {
            StoreError::Failed(Arc::new(e))
        }
    }
}

fn sqlstate(e: &sqlx::Error) -> Option<String> {
    e.as_database_error()
        .and_then(|d| d.code())
        .map(|c| c.into_owned())
}

/// What sqlx 0.9 (with TLS built in) makes of a peer that hangs up as it
/// connects: its answer to the TLS request read as a zero byte. A server
/// that is going away, or a proxy or load balancer in front of one that is
/// gone, not a bug.
const HUNG_UP_AT_TLS_REQUEST: &str = "unexpected response from SSLRequest: 0x00";

/// True when the error means "PostgreSQL is not reachable" rather than a bug.
pub fn is_unavailable(e: &sqlx::Error) -> bool {
    matches!(
        e,
        sqlx::Error::PoolTimedOut
            | sqlx::Error::Io(_)
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Tls(_)
    ) || matches!(e, sqlx::Error::Protocol(m) if m.starts_with(HUNG_UP_AT_TLS_REQUEST))
        || sqlstate(e)
            // 57P01 admin_shutdown, 57P02 crash_shutdown, 57P03 cannot_connect_now,
            // 08xxx connection exceptions, 53300 too many connections, 25006
            // read_only_sql_transaction (a standby, or a primary that was
            // demoted: the pool is looking for the read-write node).
            .is_some_and(|c| {
                c.starts_with("57P") || c.starts_with("08") || c == "53300" || c == "25006"
            })
}

/// True when the statement lost to another transaction: 40001
/// serialization_failure, 40P01 deadlock_detected, 55P03 lock_not_available
/// (`lock_timeout`), 57014 query_canceled (`statement_timeout`; we never
/// cancel statements ourselves, so a cancel is the server's timeout).
pub fn is_contention(e: &sqlx::Error) -> bool {
    sqlstate(e).is_some_and(|c| matches!(c.as_str(), "40001" | "40P01" | "55P03" | "57014"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreachable_pool_is_unavailable_and_a_protocol_error_is_a_failure() {
        assert!(matches!(
            StoreError::from(sqlx::Error::PoolTimedOut),
            StoreError::Unavailable(_)
        ));
        let bug = StoreError::from(sqlx::Error::Protocol("nonsense".into()));
        assert!(matches!(bug, StoreError::Failed(_)));
        assert!(!bug.is_transient());
        // The source is kept, not flattened into a string.
        let source = std::error::Error::source(&bug).expect("a source");
        assert!(source.to_string().contains("nonsense"));
        // A peer that hangs up at connect (api/tests/outages.rs cuts one).
        let hung_up = sqlx::Error::Protocol(HUNG_UP_AT_TLS_REQUEST.into());
        assert!(StoreError::from(hung_up).is_unavailable());
    }

    /// What a standby (or a demoted primary) answers a write with: the pool
    /// is then looking for the read-write node, so it is "try again", a 503
    /// and never a 500.
    #[sqlx::test(migrator = "crate::store::MIGRATOR")]
    async fn a_write_on_a_read_only_node_is_unavailable_not_a_failure(pool: sqlx::PgPool) {
        let mut conn = pool.acquire().await.unwrap();
        sqlx::query("SET default_transaction_read_only = on")
            .execute(&mut *conn)
            .await
            .unwrap();
        let e = sqlx::query("CREATE TABLE read_only_probe (x int)")
            .execute(&mut *conn)
            .await
            .unwrap_err();
        assert_eq!(
            e.as_database_error().and_then(|d| d.code()).as_deref(),
            Some("25006")
        );
        let e = StoreError::from(e);
        assert!(matches!(e, StoreError::Unavailable(_)), "{e:?}");
        assert!(e.is_transient());
    }
}
