//! The HTTP/1.1 server loop, with the limits `axum::serve` cannot set: a
//! deadline for a request's head (a client that sends its headers byte by
//! byte, or keeps an idle connection open, is cut off) and a hard cap on the
//! head's size. The friendlier limits with fault bodies are in
//! [`crate::limits`], which also puts a deadline on reading the body
//! ([`DeadlineBody`]).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use hyper::body::{Frame, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// How much of a request the server reads, and for how long.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest path and query answered (414 beyond).
    pub max_uri_bytes: usize,
    /// Most bytes of header names and values answered (431 beyond).
    pub max_header_bytes: usize,
    /// Time a client gets to send a request's head, and the longest an idle
    /// keep-alive connection stays open.
    pub header_read_timeout: Duration,
    /// Time a client gets to send a request's whole body (408 after).
    pub body_read_timeout: Duration,
}

impl Limits {
    /// Beyond this the head is not even buffered: hyper closes the
    /// connection with a bare 431. Below it, [`crate::limits::layer`] answers
    /// with a fault body. The slack covers the request line and the `: \r\n` of each header.
    fn hard_head_bytes(&self) -> usize {
        (self.max_uri_bytes + self.max_header_bytes) * 2 + 1024
    }
}

/// The error a body gives once its deadline has passed; the extractor that
/// reads the body answers it with 408.
#[derive(Debug, thiserror::Error)]
#[error("the request body was not received in time")]
pub struct BodyTimedOut;

impl BodyTimedOut {
    /// Whether `e` or one of its sources is a [`BodyTimedOut`].
    pub fn caused(e: &(dyn std::error::Error + 'static)) -> bool {
        let mut cur = Some(e);
        while let Some(e) = cur {
            if e.is::<BodyTimedOut>() {
                return true;
            }
            cur = e.source();
        }
        false
    }
}

/// A request body that must be complete by a fixed deadline. Unlike an
/// inactivity timeout, a client sending a byte just often enough cannot
/// stretch it.
pub struct DeadlineBody {
    inner: Body,
    /// Starts when the first frame is asked for, so a handler that never
    /// reads the body never waits for it either.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    timeout: Duration,
}

impl DeadlineBody {
    pub fn new(inner: Body, timeout: Duration) -> Self {
        DeadlineBody {
            inner,
            deadline: None,
            timeout,
        }
    }
}

impl HttpBody for DeadlineBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let timeout = self.timeout;
        let deadline = self
            .deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        if deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(Box::new(BodyTimedOut))));
        }
        Pin::new(&mut self.inner)
            .poll_frame(cx)
            .map_err(axum::BoxError::from)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Serves `router` on `listener` until `shutdown` is cancelled, then stops
/// accepting and waits for every open connection to finish its request.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_header_size(limits.hard_head_bytes());
    let graceful = GracefulShutdown::new();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, most likely: wait for some to
                    // be freed rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        stream.set_nodelay(true).ok();
        let service = TowerToHyperService::new(router.clone());
        let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            // A client that timed out, sent garbage or went away: nothing to do.
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection closed with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}
