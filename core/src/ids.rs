//! Identifiers parsed once at the edge.

use std::fmt;
use uuid::Uuid;

/// A Keystone project id: 32 lowercase hex characters (a UUID without dashes).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProjectId(String);

impl ProjectId {
    /// Accepts 32 hex characters, or a dashed UUID (normalised to 32 lowercase hex).
    pub fn parse(s: &str) -> Option<Self> {
        if s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Some(ProjectId(s.to_ascii_lowercase()));
        }
        Uuid::try_parse(s)
            .ok()
            .filter(|_| s.len() == 36)
            .map(|u| ProjectId(u.simple().to_string()))
    }

    pub fn random() -> Self {
        ProjectId(Uuid::new_v4().simple().to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ProjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An instance (server) UUID. Anything else in the URL is simply "not found".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ServerId(pub Uuid);

impl ServerId {
    pub fn parse(s: &str) -> Option<Self> {
        Uuid::try_parse(s).ok().map(ServerId)
    }
}

impl fmt::Display for ServerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// `req-<uuid4>`, as Nova spells it in `X-Compute-Request-Id`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequestId(String);

impl RequestId {
    pub fn new() -> Self {
        RequestId(format!("req-{}", Uuid::new_v4()))
    }

    /// Accepts only our own shape, so a header can never smuggle text into logs.
    pub fn parse(s: &str) -> Option<Self> {
        let rest = s.strip_prefix("req-")?;
        (rest.len() == 36 && Uuid::try_parse(rest).is_ok()).then(|| RequestId(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for RequestId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_ids_are_32_hex_or_a_dashed_uuid() {
        assert!(ProjectId::parse("b72dc11461c84102b97576ae24d2b88c").is_some());
        assert_eq!(
            ProjectId::parse("0199340e-0f3e-4612-96be-6f1861b192b5")
                .unwrap()
                .as_str(),
            "0199340e0f3e461296be6f1861b192b5"
        );
        assert!(ProjectId::parse("nope").is_none());
        assert!(ProjectId::parse("b72dc11461c84102b97576ae24d2b88").is_none());
    }

    #[test]
    fn request_ids_keep_nova_shape() {
        let r = RequestId::new();
        assert!(r.as_str().starts_with("req-"));
        assert_eq!(RequestId::parse(r.as_str()), Some(r));
        assert!(RequestId::parse("req-<script>").is_none());
    }
}
