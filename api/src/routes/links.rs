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

/// `http://<Host header>` for the links in documents, so they point where the
/// client reached us. A Host with odd characters is not echoed back.
pub fn base_url(headers: &HeaderMap) -> String {
    let host = headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .filter(|h| h.bytes().all(|b| b.is_ascii_graphic()))
        .unwrap_or("localhost");
    format!("http://{host}")
}
