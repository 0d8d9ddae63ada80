//! Group commit: many concurrent callers, one statement per batch.
//!
//! Every caller sends its item and waits for its own answer. A batch is
//! whatever is waiting when the previous batch is done (up to `max_batch`):
//! nothing is held back on a timer, so one lone call costs one round trip as
//! before, and under load the batches grow by themselves and the commits per
//! item fall.
//!
//! A caller may give up while its item waits (a request past its deadline, a
//! client that hung up, a worker shutting down). Each item carries a
//! [`Ticket`]: the batch starts an item's statement only if it can mark the
//! ticket started, and a caller gives up only if it can mark the ticket
//! abandoned. Exactly one of the two wins, so an abandoned item never
//! commits later, and a caller told "started" knows it must wait for the
//! true outcome.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::store::StoreError;

const OPEN: u8 = 0;
const STARTED: u8 = 1;
const ABANDONED: u8 = 2;

/// Whether a caller's statement may still start, has started, or was given
/// up. Shared by the caller (who may give up) and whoever runs the statement
/// (who must not start one that was given up). One ticket may cover several
/// statements of one request: once any started, the request must be waited
/// for.
#[derive(Debug, Clone, Default)]
pub struct Ticket(Arc<AtomicU8>);

impl Ticket {
    pub fn new() -> Self {
        Ticket::default()
    }

    /// Called right before a statement that writes on the caller's behalf:
    /// false if the caller has given up (then the statement must not run).
    pub fn try_start(&self) -> bool {
        match self
            .0
            .compare_exchange(OPEN, STARTED, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => true,
            Err(state) => state == STARTED,
        }
    }

    /// Called by a caller that wants to give up: true if nothing has started
    /// (and now nothing will), false if a statement already started, so the
    /// caller must wait for its outcome.
    pub fn try_abandon(&self) -> bool {
        match self
            .0
            .compare_exchange(OPEN, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => true,
            Err(state) => state == ABANDONED,
        }
    }
}

/// A batch's answers from its statement run on all of it. If that failed for
/// a reason other than an unreachable database, the statement runs again for
/// each item alone (`one(i)` for item `i`), so one bad or locked item cannot
/// fail its neighbours.
pub async fn or_each<R, F, Fut>(
    n: usize,
    all: Result<Vec<R>, sqlx::Error>,
    one: F,
) -> Vec<Result<R, StoreError>>
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = Result<Vec<R>, sqlx::Error>>,
{
    match all.map_err(StoreError::from) {
        Ok(answers) => answers.into_iter().map(Ok).collect(),
        Err(e) if n == 1 || e.is_unavailable() => for_all(n, &e),
        Err(_) => {
            let mut out = Vec::with_capacity(n);
            for i in 0..n {
                out.push(match one(i).await {
                    Ok(mut answer) if !answer.is_empty() => Ok(answer.swap_remove(0)),
                    Ok(_) => Err(StoreError::NoAnswer),
                    Err(e) => Err(e.into()),
                });
            }
            out
        }
    }
}

/// One answer per item, all this error.
pub fn for_all<T>(n: usize, e: &StoreError) -> Vec<Result<T, StoreError>> {
    (0..n).map(|_| Err(e.clone())).collect()
}

/// `run` on the whole batch, then, if that failed (see [`or_each`]), on each
/// item alone: the shape of every group-committed statement.
pub async fn all_or_each<'a, T, R, F, Fut>(items: &'a [T], run: F) -> Vec<Result<R, StoreError>>
where
    F: Fn(&'a [T]) -> Fut,
    Fut: Future<Output = Result<Vec<R>, sqlx::Error>>,
{
    let all = run(items).await;
    or_each(items.len(), all, |i| run(std::slice::from_ref(&items[i]))).await
}

struct Pending<Req, Resp> {
    item: Req,
    ticket: Ticket,
    reply: oneshot::Sender<Result<Resp, StoreError>>,
}

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
        Fut: Future<Output = Vec<Result<Resp, StoreError>>> + Send + 'static,
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
        Fut: Future<Output = Vec<Result<Resp, StoreError>>> + Send + 'static,
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
                // The statement starts now for every item whose caller is
                // still waiting; the others are dropped unrun.
                let mut items = Vec::with_capacity(buf.len());
                let mut replies = Vec::with_capacity(buf.len());
                for p in buf.drain(..) {
                    if p.ticket.try_start() {
                        items.push(p.item);
                        replies.push(p.reply);
                    } else {
                        let _ = p.reply.send(Err(StoreError::Abandoned));
                    }
                }
                if items.is_empty() {
                    continue;
                }
                let run = run.clone();
                tokio::spawn(async move {
                    let answers = run(items).await;
                    if answers.len() != replies.len() {
                        // A bug in `run`; the callers left without an answer
                        // get `Stopped` (their sender is dropped), never a
                        // panic in this task.
                        tracing::error!(
                            answers = answers.len(),
                            items = replies.len(),
                            "a batch gave the wrong number of answers"
                        );
                    }
                    for (reply, answer) in replies.into_iter().zip(answers) {
                        let _ = reply.send(answer);
                    }
                    drop(permit);
                });
            }
        });
        Batcher { tx }
    }

    /// Runs `item` in a batch and returns its answer. If this future is
    /// dropped before the batch started the item, the item is dropped too.
    pub async fn call(&self, item: Req) -> Result<Resp, StoreError> {
        self.call_with(item, &Ticket::new()).await
    }

    /// Like [`Batcher::call`], under the caller's own ticket, so the caller
    /// can give up (see [`Ticket::try_abandon`]) and learn whether it may.
    pub async fn call_with(&self, item: Req, ticket: &Ticket) -> Result<Resp, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Pending {
                item,
                ticket: ticket.clone(),
                reply,
            })
            .map_err(|_| StoreError::Stopped)?;
        // Dropped while waiting (the caller's future was cancelled): give up
        // the item if it has not started.
        let guard = AbandonOnDrop(ticket);
        let answer = answer.await.map_err(|_| StoreError::Stopped)?;
        std::mem::forget(guard);
        answer
    }
}

struct AbandonOnDrop<'a>(&'a Ticket);

impl Drop for AbandonOnDrop<'_> {
    fn drop(&mut self) {
        self.0.try_abandon();
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
            assert_eq!(r.ok(), Some(i * 2));
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
        assert_eq!(first.await.unwrap().ok(), Some(1));
        assert_eq!(second.await.unwrap().ok(), Some(2));
        // Past it: the lone call went alone, 20 ms after it was made.
        let started = tokio::time::Instant::now();
        assert_eq!(call(3).await.unwrap().ok(), Some(3));
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
            assert_eq!(c.await.unwrap().ok(), Some(i as u32));
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
                        Err(StoreError::Failed(Arc::new(sqlx::Error::Protocol(
                            "boom".into(),
                        ))))
                    } else {
                        Ok(i)
                    }
                })
                .collect()
        });
        assert_eq!(b.call(1).await.ok(), Some(1));
        assert!(matches!(b.call(3).await, Err(StoreError::Failed(_))));
        assert_eq!(b.call(4).await.ok(), Some(4));
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
        assert_eq!(answers[0].as_ref().ok(), Some(&0));
        assert!(matches!(&answers[1], Err(StoreError::Failed(_))));
        assert_eq!(answers[2].as_ref().ok(), Some(&20));

        let gone = or_each(3, Err(sqlx::Error::PoolTimedOut), one).await;
        assert!(
            gone.iter()
                .all(|a| matches!(a, Err(StoreError::Unavailable(_))))
        );
        let fine: Vec<_> = or_each(2, Ok(vec![7, 8]), one)
            .await
            .into_iter()
            .map(Result::ok)
            .collect();
        assert_eq!(fine, vec![Some(7), Some(8)]);
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
        let answers: Vec<_> = answers.into_iter().map(Result::ok).collect();
        assert_eq!(answers, vec![Some(2), Some(4), Some(6)]);
        assert_eq!(
            *seen.lock().unwrap(),
            vec![vec![1, 2, 3], vec![1], vec![2], vec![3]]
        );
    }

    #[tokio::test]
    async fn an_item_given_up_before_its_batch_starts_never_runs() {
        let ran = Arc::new(Mutex::new(Vec::new()));
        let seen = ran.clone();
        let (hold, held) = tokio::sync::oneshot::channel::<()>();
        let held = Arc::new(tokio::sync::Mutex::new(Some(held)));
        // One slot: the first batch blocks until `hold` fires, so the next
        // items wait in the queue.
        let b = Batcher::spawn(10, 1, move |items: Vec<u32>| {
            seen.lock().unwrap().extend(items.iter().copied());
            let held = held.clone();
            async move {
                if let Some(h) = held.lock().await.take() {
                    let _ = h.await;
                }
                items.into_iter().map(Ok).collect()
            }
        });
        let first = {
            let b = b.clone();
            tokio::spawn(async move { b.call(1).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        // Given up explicitly: the ticket says so, and the item never runs.
        let ticket = Ticket::new();
        let given_up = {
            let (b, t) = (b.clone(), ticket.clone());
            tokio::spawn(async move { b.call_with(2, &t).await })
        };
        // Given up by dropping the call.
        let dropped = {
            let b = b.clone();
            tokio::spawn(async move { b.call(3).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(ticket.try_abandon(), "nothing started, so it may give up");
        dropped.abort();
        let _ = dropped.await;
        hold.send(()).unwrap();
        assert_eq!(first.await.unwrap().ok(), Some(1));
        assert!(matches!(
            given_up.await.unwrap(),
            Err(StoreError::Abandoned)
        ));
        assert_eq!(b.call(4).await.ok(), Some(4));
        assert_eq!(*ran.lock().unwrap(), vec![1, 4]);
        // A started ticket cannot be given up: its caller must wait.
        let started = Ticket::new();
        assert!(started.try_start());
        assert!(!started.try_abandon());
    }
}
