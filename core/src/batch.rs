//! Group commit: many concurrent callers, one statement per batch.
//!
//! Every caller sends its item and waits for its own answer. A batch is
//! whatever is waiting when the previous batch is done (up to `max_batch`):
//! nothing is held back on a timer, so one lone call costs one round trip as
//! before, and under load the batches grow by themselves and the commits per
//! item fall.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc, oneshot};

/// Why a batched call got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// The statement failed; `unavailable` says whether the database was
    /// unreachable (worth retrying with back-off) rather than a bug.
    #[error("batched statement failed: {message}")]
    Failed { message: String, unavailable: bool },
    /// The batcher task is gone (the process is shutting down).
    #[error("batcher stopped")]
    Stopped,
}

impl BatchError {
    /// A database error, as every caller of the failed batch sees it.
    pub fn from_sqlx(e: &sqlx::Error) -> Self {
        BatchError::Failed {
            message: e.to_string(),
            unavailable: crate::store::is_unavailable(e),
        }
    }

    /// One answer per item, all this error.
    pub fn for_all<T>(n: usize, e: &sqlx::Error) -> Vec<Result<T, BatchError>> {
        (0..n).map(|_| Err(Self::from_sqlx(e))).collect()
    }

    /// Back into the error kind the callers' retry loops and error mapping
    /// understand: an unreachable database stays "unavailable".
    pub fn into_sqlx(self) -> sqlx::Error {
        match self {
            BatchError::Failed {
                unavailable: true, ..
            } => sqlx::Error::PoolTimedOut,
            other => sqlx::Error::Protocol(other.to_string()),
        }
    }
}

/// A batch's answers from its statement run on all of it. If that failed for
/// a reason other than an unreachable database, the statement runs again for
/// each item alone (`one(i)` for item `i`), so one bad item cannot fail its
/// neighbours.
pub async fn or_each<R, F, Fut>(
    n: usize,
    all: Result<Vec<R>, sqlx::Error>,
    one: F,
) -> Vec<Result<R, BatchError>>
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = Result<Vec<R>, sqlx::Error>>,
{
    match all {
        Ok(answers) => answers.into_iter().map(Ok).collect(),
        Err(e) if n == 1 || crate::store::is_unavailable(&e) => BatchError::for_all(n, &e),
        Err(_) => {
            let mut out = Vec::with_capacity(n);
            for i in 0..n {
                out.push(match one(i).await {
                    Ok(mut answer) if !answer.is_empty() => Ok(answer.swap_remove(0)),
                    Ok(_) => Err(BatchError::Failed {
                        message: "no answer for the item".into(),
                        unavailable: false,
                    }),
                    Err(e) => Err(BatchError::from_sqlx(&e)),
                });
            }
            out
        }
    }
}

/// `run` on the whole batch, then, if that failed (see [`or_each`]), on each
/// item alone: the shape of every group-committed statement.
pub async fn all_or_each<'a, T, R, F, Fut>(items: &'a [T], run: F) -> Vec<Result<R, BatchError>>
where
    F: Fn(&'a [T]) -> Fut,
    Fut: Future<Output = Result<Vec<R>, sqlx::Error>>,
{
    let all = run(items).await;
    or_each(items.len(), all, |i| run(std::slice::from_ref(&items[i]))).await
}

type Pending<Req, Resp> = (Req, oneshot::Sender<Result<Resp, BatchError>>);

pub struct Batcher<Req, Resp> {
    tx: mpsc::UnboundedSender<Pending<Req, Resp>>,
}

impl<Req, Resp> Clone for Batcher<Req, Resp> {
    fn clone(&self) -> Self {
        Batcher {
            tx: self.tx.clone(),
        }
    }
}

impl<Req: Send + 'static, Resp: Send + 'static> Batcher<Req, Resp> {
    /// Starts the batching task. `run` gets a batch and must return one
    /// answer per item, in order. At most `in_flight` batches run at once.
    pub fn spawn<F, Fut>(max_batch: usize, in_flight: usize, run: F) -> Self
    where
        F: Fn(Vec<Req>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<Result<Resp, BatchError>>> + Send + 'static,
    {
        Self::spawn_lingering(max_batch, in_flight, Duration::ZERO, run)
    }

    /// Like [`Batcher::spawn`], but a batch that is not full waits up to
    /// `linger` after its first item for more.
    pub fn spawn_lingering<F, Fut>(
        max_batch: usize,
        in_flight: usize,
        linger: Duration,
        run: F,
    ) -> Self
    where
        F: Fn(Vec<Req>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<Result<Resp, BatchError>>> + Send + 'static,
    {
        let (tx, mut rx) = mpsc::unbounded_channel::<Pending<Req, Resp>>();
        let run = Arc::new(run);
        let slots = Arc::new(Semaphore::new(in_flight.max(1)));
        tokio::spawn(async move {
            let mut buf = Vec::with_capacity(max_batch);
            loop {
                // Wait for a free slot first: while every slot is busy the
                // callers pile up, and the next batch takes them all.
                let Ok(permit) = slots.clone().acquire_owned().await else {
                    return;
                };
                if rx.recv_many(&mut buf, max_batch).await == 0 {
                    return;
                }
                if !linger.is_zero() && buf.len() < max_batch {
                    let until = tokio::time::Instant::now() + linger;
                    while buf.len() < max_batch {
                        let room = max_batch - buf.len();
                        match tokio::time::timeout_at(until, rx.recv_many(&mut buf, room)).await {
                            Ok(0) | Err(_) => break,
                            Ok(_) => {}
                        }
                    }
                }
                let (items, replies): (Vec<Req>, Vec<_>) = buf.drain(..).unzip();
                let run = run.clone();
                tokio::spawn(async move {
                    let answers = run(items).await;
                    debug_assert_eq!(answers.len(), replies.len());
                    for (reply, answer) in replies.into_iter().zip(answers) {
                        let _ = reply.send(answer);
                    }
                    drop(permit);
                });
            }
        });
        Batcher { tx }
    }

    pub async fn call(&self, item: Req) -> Result<Resp, BatchError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send((item, reply))
            .map_err(|_| BatchError::Stopped)?;
        answer.await.map_err(|_| BatchError::Stopped)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[tokio::test]
    async fn answers_each_caller_and_batches_under_load() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let seen = sizes.clone();
        let b = Batcher::spawn(50, 1, move |items: Vec<u32>| {
            seen.lock().unwrap().push(items.len());
            async move {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                items.into_iter().map(|i| Ok(i * 2)).collect()
            }
        });
        let calls: Vec<_> = (0..200)
            .map(|i| {
                let b = b.clone();
                tokio::spawn(async move { (i, b.call(i).await) })
            })
            .collect();
        for c in calls {
            let (i, r) = c.await.unwrap();
            assert_eq!(r, Ok(i * 2));
        }
        let sizes = sizes.lock().unwrap();
        assert_eq!(sizes.iter().sum::<usize>(), 200);
        assert!(sizes.iter().all(|&n| n <= 50));
        assert!(sizes.len() < 200, "no batching happened: {sizes:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_lingering_batch_waits_for_company_but_not_past_its_linger() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let seen = sizes.clone();
        let b =
            Batcher::spawn_lingering(10, 1, Duration::from_millis(20), move |items: Vec<u32>| {
                seen.lock().unwrap().push(items.len());
                async move { items.into_iter().map(Ok).collect() }
            });
        let call = |i| {
            let b = b.clone();
            tokio::spawn(async move { b.call(i).await })
        };
        // Within the linger of the first: one batch.
        let first = call(1);
        tokio::time::sleep(Duration::from_millis(5)).await;
        let second = call(2);
        assert_eq!(first.await.unwrap(), Ok(1));
        assert_eq!(second.await.unwrap(), Ok(2));
        // Past it: the lone call went alone, 20 ms after it was made.
        let started = tokio::time::Instant::now();
        assert_eq!(call(3).await.unwrap(), Ok(3));
        assert_eq!(started.elapsed(), Duration::from_millis(20));
        assert_eq!(*sizes.lock().unwrap(), vec![2, 1]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_batch_does_not_linger() {
        let b = Batcher::spawn_lingering(
            3,
            1,
            Duration::from_secs(3600),
            |items: Vec<u32>| async move { items.into_iter().map(Ok).collect() },
        );
        let started = tokio::time::Instant::now();
        let calls: Vec<_> = (0..3)
            .map(|i| {
                let b = b.clone();
                tokio::spawn(async move { b.call(i).await })
            })
            .collect();
        for (i, c) in calls.into_iter().enumerate() {
            assert_eq!(c.await.unwrap(), Ok(i as u32));
        }
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test]
    async fn a_failed_batch_fails_only_its_callers() {
        let b = Batcher::spawn(10, 2, |items: Vec<u32>| async move {
            items
                .into_iter()
                .map(|i| {
                    if i == 3 {
                        Err(BatchError::Failed {
                            message: "boom".into(),
                            unavailable: false,
                        })
                    } else {
                        Ok(i)
                    }
                })
                .collect()
        });
        assert_eq!(b.call(1).await, Ok(1));
        assert!(matches!(b.call(3).await, Err(BatchError::Failed { .. })));
        assert_eq!(b.call(4).await, Ok(4));
    }

    #[tokio::test]
    async fn a_failed_statement_is_retried_item_by_item_unless_the_database_is_gone() {
        let one = |i: usize| async move {
            if i == 1 {
                Err(sqlx::Error::Protocol("bad item".into()))
            } else {
                Ok(vec![i * 10])
            }
        };
        let bug = Err(sqlx::Error::Protocol("constraint".into()));
        let answers = or_each(3, bug, one).await;
        assert_eq!(answers[0], Ok(0));
        assert!(matches!(
            &answers[1],
            Err(BatchError::Failed {
                unavailable: false,
                ..
            })
        ));
        assert_eq!(answers[2], Ok(20));

        let gone = or_each(3, Err(sqlx::Error::PoolTimedOut), one).await;
        assert!(gone.iter().all(|a| matches!(
            a,
            Err(BatchError::Failed {
                unavailable: true,
                ..
            })
        )));
        assert_eq!(or_each(2, Ok(vec![7, 8]), one).await, vec![Ok(7), Ok(8)]);
    }

    #[tokio::test]
    async fn all_or_each_runs_the_batch_then_each_item_when_it_failed() {
        let seen = Mutex::new(Vec::new());
        let run = |items: &[u32]| {
            seen.lock().unwrap().push(items.to_vec());
            let items = items.to_vec();
            async move {
                if items.len() > 1 {
                    Err(sqlx::Error::Protocol("one bad row".into()))
                } else {
                    Ok(vec![items[0] * 2])
                }
            }
        };
        let answers = all_or_each(&[1, 2, 3], run).await;
        assert_eq!(answers, vec![Ok(2), Ok(4), Ok(6)]);
        assert_eq!(
            *seen.lock().unwrap(),
            vec![vec![1, 2, 3], vec![1], vec![2], vec![3]]
        );
    }
}
