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

/// A compute host's name: where a VM runs and which workers may stop it.
/// It becomes part of a queue name (`<prefix>.stop.<host>`), so it keeps to
/// what a host name and an AMQP queue name can both hold: letters, digits,
/// `.`, `_` and `-`, starting with a letter or digit, at most 200 characters
/// (the `hosts` table checks the same).
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct HostName(String);

impl TryFrom<String> for HostName {
    type Error = InvalidHostName;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<HostName> for String {
    fn from(h: HostName) -> String {
        h.0
    }
}

/// Why a host name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid host name {0:?}: use 1 to 200 letters, digits, '.', '_' or '-', starting with a letter or digit"
)]
pub struct InvalidHostName(pub String);

impl HostName {
    pub const MAX_LEN: usize = 200;

    pub fn parse(s: &str) -> Result<Self, InvalidHostName> {
        let ok = !s.is_empty()
            && s.len() <= Self::MAX_LEN
            && s.as_bytes()[0].is_ascii_alphanumeric()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if ok {
            Ok(HostName(s.to_string()))
        } else {
            Err(InvalidHostName(s.chars().take(80).collect()))
        }
    }

    /// Nova's default for its `host` option: this machine's host name (the
    /// first label of it would lose information between `a.x` and `a.y`).
    pub fn of_this_machine() -> Result<Self, InvalidHostName> {
        let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .or_else(|_| std::fs::read_to_string("/etc/hostname"))
            .map(|h| h.trim().to_string())
            .unwrap_or_default();
        Self::parse(&name)
    }

    /// A name read back from PostgreSQL, where a check constraint holds new
    /// names to [`HostName::parse`]'s rule. Rows older than that constraint
    /// are taken as they are: a queue name may hold any text, and refusing
    /// to route such an instance's stop would strand it.
    pub fn from_stored(s: String) -> Self {
        HostName(s)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for HostName {
    type Err = InvalidHostName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for HostName {
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

    #[test]
    fn host_names_fit_a_queue_name() {
        assert_eq!(HostName::parse("sim-1").unwrap().as_str(), "sim-1");
        assert!(HostName::parse("compute-07.rack3.example.org").is_ok());
        assert!(HostName::parse("").is_err());
        assert!(HostName::parse("-x").is_err());
        assert!(HostName::parse("a b").is_err());
        assert!(HostName::parse("a/b").is_err());
        assert!(HostName::parse("a#").is_err());
        assert!(HostName::parse(&"a".repeat(200)).is_ok());
        assert!(HostName::parse(&"a".repeat(201)).is_err());
    }
}
