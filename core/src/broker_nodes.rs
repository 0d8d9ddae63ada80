//! The RabbitMQ nodes of `AMQP_URL`, parsed once at start-up.
//!
//! The syntax is oslo.messaging's `transport_url`: one scheme, then the
//! nodes separated by commas, then one vhost and one query for all of them:
//!
//! ```text
//! amqp://u:p@h1:5672,u:p@h2:5673,h3:5674/vhost?heartbeat=10
//! ```
//!
//! - Each node is `[user[:password]@]host[:port]`. A node without
//!   credentials uses the first node's (so `u:p@h1,h2,h3` is one user on
//!   three nodes); credentials may differ per node.
//! - The vhost (`/%2f`, the default vhost, when missing) and the query
//!   belong to the whole cluster: a cluster has one set of vhosts.
//! - A comma inside a password is written `%2C`, as any reserved character
//!   of a URL.
//!
//! A single node is just a plain AMQP URL, as before.

use std::fmt;
use std::str::FromStr;

use rand::Rng;

/// The nodes of one RabbitMQ cluster, each as a complete single-node URL
/// for lapin, in the order given.
#[derive(Clone, PartialEq, Eq)]
pub struct BrokerNodes {
    nodes: Vec<String>,
    /// Each node as `host:port`, for logs (never the credentials).
    names: Vec<String>,
}

/// Why `AMQP_URL` is not a list of AMQP nodes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrokerNodesError {
    #[error("AMQP URL must start with amqp:// or amqps://")]
    Scheme,
    #[error("AMQP URL names no node")]
    NoNode,
    #[error("node {0} of the AMQP URL has no host")]
    EmptyNode(usize),
    #[error("node {node} of the AMQP URL is not valid: {reason}")]
    Invalid { node: usize, reason: String },
}

impl BrokerNodes {
    /// The single-node URLs, in the order given.
    pub fn urls(&self) -> &[String] {
        &self.nodes
    }

    /// Node `i` as `host:port` (safe to log).
    pub fn name(&self, i: usize) -> &str {
        &self.names[i]
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Where a process starts: a random node, so a fleet spreads its
    /// connections over the cluster (oslo.messaging shuffles its hosts too).
    pub fn random_start(&self) -> usize {
        rand::rng().random_range(0..self.nodes.len())
    }
}

impl FromStr for BrokerNodes {
    type Err = BrokerNodesError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (scheme, rest) = s.split_once("://").ok_or(BrokerNodesError::Scheme)?;
        if scheme != "amqp" && scheme != "amqps" {
            return Err(BrokerNodesError::Scheme);
        }
        // The authority (the node list) ends at the first '/' or '?'.
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        let tail = match tail {
            "" => "/%2f".to_string(),
            t if t.starts_with('?') => format!("/%2f{t}"),
            t => t.to_string(),
        };
        if authority.is_empty() {
            return Err(BrokerNodesError::NoNode);
        }
        let mut nodes = Vec::new();
        let mut names = Vec::new();
        let mut first_credentials: Option<&str> = None;
        for (i, node) in authority.split(',').enumerate() {
            let n = i + 1;
            let node = node.trim();
            let (credentials, host) = match node.rsplit_once('@') {
                Some((c, h)) => (Some(c), h),
                None => (None, node),
            };
            if host.is_empty() {
                return Err(BrokerNodesError::EmptyNode(n));
            }
            if i == 0 {
                first_credentials = credentials;
            }
            let url = match credentials.or(first_credentials) {
                Some(c) => format!("{scheme}://{c}@{host}{tail}"),
                None => format!("{scheme}://{host}{tail}"),
            };
            let parsed = lapin::uri::AMQPUri::from_str(&url)
                .map_err(|reason| BrokerNodesError::Invalid { node: n, reason })?;
            names.push(format!(
                "{}:{}",
                parsed.authority.host, parsed.authority.port
            ));
            nodes.push(url);
        }
        Ok(BrokerNodes { nodes, names })
    }
}

/// Only the hosts: the URLs hold passwords.
impl fmt::Debug for BrokerNodes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("BrokerNodes").field(&self.names).finish()
    }
}

impl fmt::Display for BrokerNodes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.names.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(s: &str) -> Vec<String> {
        s.parse::<BrokerNodes>().unwrap().urls().to_vec()
    }

    #[test]
    fn a_single_url_is_one_node_unchanged() {
        assert_eq!(
            nodes("amqp://guest:guest@127.0.0.1:5672/%2f"),
            ["amqp://guest:guest@127.0.0.1:5672/%2f"]
        );
    }

    #[test]
    fn each_node_gets_the_shared_vhost_and_query() {
        assert_eq!(
            nodes("amqp://u:p@h1:5672,v:q@h2:5673/prod?heartbeat=10"),
            [
                "amqp://u:p@h1:5672/prod?heartbeat=10",
                "amqp://v:q@h2:5673/prod?heartbeat=10"
            ]
        );
    }

    #[test]
    fn a_node_without_credentials_uses_the_first_nodes() {
        assert_eq!(
            nodes("amqp://u:p%2Cx@h1,h2:5673"),
            ["amqp://u:p%2Cx@h1/%2f", "amqp://u:p%2Cx@h2:5673/%2f"]
        );
    }

    #[test]
    fn logs_see_hosts_and_ports_but_no_password() {
        let n: BrokerNodes = "amqp://u:secret@h1:5672,h2:5673/v".parse().unwrap();
        assert_eq!(n.to_string(), "h1:5672,h2:5673");
        assert!(!format!("{n:?}").contains("secret"));
    }

    #[test]
    fn bad_lists_are_refused_with_the_node_that_is_wrong() {
        let err = |s: &str| s.parse::<BrokerNodes>().unwrap_err();
        assert_eq!(err("http://h1"), BrokerNodesError::Scheme);
        assert_eq!(err("amqp:///vhost"), BrokerNodesError::NoNode);
        assert_eq!(err("amqp://u:p@h1,,h3/v"), BrokerNodesError::EmptyNode(2));
        assert!(matches!(
            err("amqp://h1,h2:notaport/v"),
            BrokerNodesError::Invalid { node: 2, .. }
        ));
    }
}
