//! The API's metrics, served at `GET /metrics`: requests by route template
//! and status, jobs accepted and published, and the relay's backlog.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use shutoff_core::host_census::HostMetrics;
use shutoff_core::metrics::{self as core_metrics, Registry};
use shutoff_core::relay::RelayMetrics;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: &'static str,
    /// The matched route template (`/v2/{project_id}/servers`), never the
    /// raw path: ids in labels would make the series unbounded.
    pub route: String,
    pub status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DurationLabels {
    pub method: &'static str,
    pub route: String,
}

/// Every metric of one API process. Cloning shares the counters.
#[derive(Clone)]
pub struct ApiMetrics {
    registry: std::sync::Arc<Registry>,
    pub requests: Family<RequestLabels, Counter>,
    pub request_duration: Family<DurationLabels, Histogram>,
    pub jobs_accepted: Counter,
    /// Publishes and the relay's backlog (registered here, counted by the relay).
    pub relay: RelayMetrics,
    /// Hosts up and down and the stops waiting for each (set by the census).
    pub hosts: HostMetrics,
}

impl Default for ApiMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ApiMetrics {
    pub fn new() -> Self {
        let mut registry = core_metrics::registry("shutoff-api");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by method, route template and status",
            requests.clone(),
        );
        let request_duration = Family::<DurationLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(core_metrics::REQUEST_BUCKETS)
        });
        registry.register_with_unit(
            "http_request_duration",
            "Time to answer an HTTP request, by method and route template",
            prometheus_client::registry::Unit::Seconds,
            request_duration.clone(),
        );
        let jobs_accepted = Counter::default();
        registry.register(
            "jobs_accepted",
            "Stops accepted (202) and committed as jobs",
            jobs_accepted.clone(),
        );
        let relay = RelayMetrics::default();
        relay.register(&mut registry);
        let hosts = HostMetrics::default();
        hosts.register(&mut registry);
        ApiMetrics {
            registry: std::sync::Arc::new(registry),
            requests,
            request_duration,
            jobs_accepted,
            relay,
            hosts,
        }
    }

    pub fn render(&self) -> String {
        core_metrics::render(&self.registry)
    }
}

/// Route label for requests no route matched (the 404 fallback).
const UNMATCHED: &str = "unmatched";

/// Counts and times every request, the timed-out and refused ones too.
pub async fn track(State(metrics): State<ApiMetrics>, req: Request, next: Next) -> Response {
    let method = method_label(req.method());
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or(UNMATCHED, |p| p.as_str())
        .to_string();
    let started = Instant::now();
    let resp = next.run(req).await;
    metrics
        .request_duration
        .get_or_create(&DurationLabels {
            method,
            route: route.clone(),
        })
        .observe(started.elapsed().as_secs_f64());
    metrics
        .requests
        .get_or_create(&RequestLabels {
            method,
            route,
            status: resp.status().as_u16(),
        })
        .inc();
    resp
}

/// `GET /metrics`.
pub async fn scrape(State(metrics): State<ApiMetrics>) -> Response {
    (
        [(header::CONTENT_TYPE, core_metrics::CONTENT_TYPE)],
        metrics.render(),
    )
        .into_response()
}

/// A client may send any method name; only the standard ones become labels.
fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}
