//! Free loopback ports for everything we start.

use std::net::TcpListener;

use anyhow::{Context, Result};

/// `n` distinct ports that were free a moment ago. All listeners are held
/// until every port is chosen, so the kernel cannot hand out one twice.
pub fn free_ports(n: usize) -> Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind(("127.0.0.1", 0)).context("cannot bind a loopback port"))
        .collect::<Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn ports_are_distinct_and_never_the_machines_own() {
        let ports = super::free_ports(8).unwrap();
        let mut sorted = ports.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 8);
        assert!(!ports.contains(&5432) && !ports.contains(&5672));
    }
}
