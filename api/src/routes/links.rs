//! The links in our documents, as Nova gives them, and the base URL they
//! start with.

use axum::http::HeaderMap;
use serde::Serialize;
use utoipa::ToSchema;

/// A link to a resource, as Nova gives them.
#[derive(Debug, Serialize, ToSchema)]
pub struct Link {
    /// `self` or `bookmark`.
    #[schema(example = "self")]
    pub rel: String,
    pub href: String,
}

/// `http://<Host header>` for the links in documents and the identity
/// service's catalog, so they point where the client reached us; `https://`
/// when a TLS-terminating proxy in front says `X-Forwarded-Proto: https`
/// (it must pass the client's Host on). A Host with odd characters is not
/// echoed back.
pub fn base_url(headers: &HeaderMap) -> String {
    let host = headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .filter(|h| h.bytes().all(|b| b.is_ascii_graphic()))
        .unwrap_or("localhost");
    let scheme = match headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
    {
        Some(p) if p.trim().eq_ignore_ascii_case("https") => "https",
        _ => "http",
    };
    format!("{scheme}://{host}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_base_url_is_where_the_client_reached_us() {
        let mut h = HeaderMap::new();
        assert_eq!(base_url(&h), "http://localhost");
        h.insert("host", "api.example:8774".parse().unwrap());
        assert_eq!(base_url(&h), "http://api.example:8774");
        h.insert("x-forwarded-proto", "https".parse().unwrap());
        assert_eq!(base_url(&h), "https://api.example:8774");
        h.insert("x-forwarded-proto", "gopher".parse().unwrap());
        assert_eq!(base_url(&h), "http://api.example:8774");
        h.remove("x-forwarded-proto");
        h.insert("host", "a b".parse().unwrap());
        assert_eq!(base_url(&h), "http://localhost");
    }
}
