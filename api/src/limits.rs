//! The request limits answered with a fault body, checked before routing: a
//! path and query or a set of headers over the limits (414, 431), and the
//! deadline put on the body (the extractor that reads it answers 408). The
//! hard limits, past which nothing is buffered, are in [`crate::server`].

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::server::{DeadlineBody, Limits};

/// Refuses a URI or a set of headers over the limits with a fault body, and
/// gives the body a deadline.
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
    let req = req.map(|body| Body::new(DeadlineBody::new(body, limits.body_read_timeout)));
    next.run(req).await
}
