//! What the API's and the worker's `GET /metrics` share.
//!
//! Each `Application` and `Worker` owns its registry (no process-wide
//! global), so several of them in one test process count separately. The
//! exposition is OpenMetrics text, which Prometheus scrapes as it is.

use prometheus_client::metrics::info::Info;
pub use prometheus_client::registry::Registry;

/// The `Content-Type` of a scrape.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Seconds, 1 ms to 10 s: an HTTP request or a database round trip.
pub const REQUEST_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// Seconds, 10 ms to 10 min: a power-off, from an instant simulator stop to
/// a guest that takes minutes to shut down before it is forced.
pub const POWER_OFF_BUCKETS: [f64; 14] = [
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

/// A registry whose metric names start with `shutoff_`, holding
/// `shutoff_build_info{binary, version}` (always 1).
pub fn registry(binary: &'static str) -> Registry {
    let mut registry = Registry::with_prefix("shutoff");
    registry.register(
        "build",
        "The binary and its version",
        Info::new(vec![
            ("binary", binary),
            ("version", env!("CARGO_PKG_VERSION")),
        ]),
    );
    registry
}

/// The registry as an OpenMetrics text exposition.
pub fn render(registry: &Registry) -> String {
    let mut out = String::with_capacity(4096);
    prometheus_client::encoding::text::encode(&mut out, registry)
        .expect("writing to a String cannot fail");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_registry_names_the_binary_and_ends_with_eof() {
        let text = render(&registry("shutoff-test"));
        assert!(
            text.contains(r#"shutoff_build_info{binary="shutoff-test",version=""#),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
