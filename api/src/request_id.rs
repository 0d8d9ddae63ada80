//! Every response carries one `req-<uuid4>` in `X-Compute-Request-Id` and
//! `X-OpenStack-Request-Id`; every log line of the request shows it, and the
//! job message carries it on to the worker.

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use shutoff_core::ids::RequestId;
use std::time::Duration;
use tracing::Instrument;

use crate::error::ApiError;

/// Longest a request may take, database and broker calls included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

pub const COMPUTE_REQUEST_ID: &str = "x-compute-request-id";
pub const OPENSTACK_REQUEST_ID: &str = "x-openstack-request-id";

pub async fn layer(mut req: Request, next: Next) -> Response {
    let id = RequestId::new();
    req.extensions_mut().insert(id.clone());
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        method = %req.method(),
        path = %req.uri().path(),
    );
    // Nothing hangs forever on a half-dead peer: a request that has not
    // finished in time is answered 503 (the accept is one statement, so it
    // either committed whole or not at all).
    let mut resp =
        match tokio::time::timeout(REQUEST_TIMEOUT, next.run(req).instrument(span.clone())).await {
            Ok(resp) => resp,
            Err(_) => {
                span.in_scope(|| tracing::warn!("request timed out"));
                ApiError::Unavailable("The request timed out; please retry later.".into())
                    .into_response()
            }
        };
    span.in_scope(|| tracing::info!(status = resp.status().as_u16(), "response"));
    let value = HeaderValue::from_str(id.as_str()).expect("request ids are ASCII");
    let h = resp.headers_mut();
    h.insert(COMPUTE_REQUEST_ID, value.clone());
    h.insert(OPENSTACK_REQUEST_ID, value);
    h.insert(
        "openstack-api-version",
        HeaderValue::from_static("compute 2.1"),
    );
    h.insert(
        "x-openstack-nova-api-version",
        HeaderValue::from_static("2.1"),
    );
    h.insert(
        "vary",
        HeaderValue::from_static("OpenStack-API-Version, X-OpenStack-Nova-API-Version"),
    );
    resp
}
