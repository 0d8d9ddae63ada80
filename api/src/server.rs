//! The HTTP/1.1 server loop, with the limits `axum::serve` cannot set: a
//! deadline for a request's head (a client that sends its headers byte by
//! byte, or keeps an idle connection open, is cut off) and a hard cap on the
//! head's size. The friendlier limits with fault bodies are in [`layer`].

use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;

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
}

impl Limits {
    /// Beyond this the head is not even buffered: hyper closes the
    /// connection with a bare 431. Below it, [`layer`] answers with a fault
    /// body. The slack covers the request line and the `: \r\n` of each header.
    fn hard_head_bytes(&self) -> usize {
        (self.max_uri_bytes + self.max_header_bytes) * 2 + 1024
    }
}

/// Refuses a URI or a set of headers over the limits with a fault body.
pub async fn layer(State(limits): State<Limits>, req: Request, next: Next) -> Response {
    let uri_len = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    if uri_len > limits.max_uri_bytes {
        return ApiError::UriTooLong.into_response();
    }
    let header_bytes: usize = req
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if header_bytes > limits.max_header_bytes {
        return ApiError::HeadersTooLarge.into_response();
    }
    next.run(req).await
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
