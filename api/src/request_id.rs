//! Every response carries one `req-<uuid4>` in `X-Compute-Request-Id` and
//! `X-OpenStack-Request-Id`; every log line of the request shows it, and the
//! job message carries it on to the worker.
//!
//! Every request also has a deadline and a [`Ticket`]: past the deadline it
//! is answered 503 if nothing it asked for has started, and otherwise waited
//! for, so a 503 never hides a stop that commits afterwards.

use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use shutoff_core::batch::Ticket;
use shutoff_core::ids::RequestId;
use tracing::Instrument;

use crate::error::ApiError;

pub const COMPUTE_REQUEST_ID: &str = "x-compute-request-id";
pub const OPENSTACK_REQUEST_ID: &str = "x-openstack-request-id";

/// `timeout` is the longest a request may take before it is given up
/// (`--request-timeout-ms`), database and broker calls included.
pub async fn layer(State(timeout): State<Duration>, mut req: Request, next: Next) -> Response {
    let id = RequestId::new();
    let ticket = Ticket::new();
    req.extensions_mut().insert(id.clone());
    req.extensions_mut().insert(ticket.clone());
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        method = %req.method(),
        path = %req.uri().path(),
    );
    // Nothing hangs forever on a half-dead peer: a request that has not
    // finished in time is answered 503, but only if its ticket can still be
    // given up, that is, no statement writing on its behalf has started (and
    // now none will). One that has started is waited for: its statement ends
    // within the database's statement_timeout, and the client learns what
    // was committed.
    let handler = next.run(req).instrument(span.clone());
    tokio::pin!(handler);
    let mut resp = tokio::select! {
        resp = &mut handler => resp,
        _ = tokio::time::sleep(timeout) => {
            if ticket.try_abandon() {
                span.in_scope(|| tracing::warn!("request timed out; nothing was started"));
                ApiError::Unavailable(
                    "The request timed out; nothing was accepted. Please retry later.".into(),
                )
                .into_response()
            } else {
                span.in_scope(|| {
                    tracing::warn!("request is past its deadline, but its statement started; waiting for the outcome")
                });
                handler.await
            }
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
