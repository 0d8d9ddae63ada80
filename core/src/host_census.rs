//! The hosts as the API's metrics show them: how many are up and down, and
//! how many stops wait for each. Counted by one query every interval per API
//! process (never per scrape, so a scraper adds no load to PostgreSQL).

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::store::hosts;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HostLabels {
    pub host: String,
}

/// Cloning shares the gauges.
#[derive(Clone, Default)]
pub struct HostMetrics {
    pub hosts_up: Gauge,
    pub hosts_down: Gauge,
    /// 1 for each known host that is up, 0 for each that is down: what an
    /// alert joins with `stops_waiting` to find a host whose stops nobody
    /// can carry out (the two totals above cannot say which host).
    pub host_up: Family<HostLabels, Gauge>,
    /// Unfinished stops per host (only hosts with some).
    pub stops_waiting: Family<HostLabels, Gauge>,
    /// Age of each host's oldest unfinished stop.
    pub oldest_waiting_seconds: Family<HostLabels, Gauge>,
}

impl HostMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "hosts_up",
            "Hosts with a worker that sent a heartbeat within --host-down-after",
            self.hosts_up.clone(),
        );
        registry.register(
            "hosts_down",
            "Hosts known to shutoff (served once, or named by a waiting stop) with no live worker",
            self.hosts_down.clone(),
        );
        registry.register(
            "host_up",
            "1 if a worker of the host sent a heartbeat within --host-down-after, else 0, by host",
            self.host_up.clone(),
        );
        registry.register(
            "stops_waiting",
            "Accepted stops not yet finished, by their instance's host",
            self.stops_waiting.clone(),
        );
        registry.register(
            "stops_waiting_oldest_seconds",
            "Age of the oldest unfinished stop, by host",
            self.oldest_waiting_seconds.clone(),
        );
    }

    /// One census; the gauges keep their last values when it fails.
    pub async fn update(&self, pool: &PgPool, down_after: Duration) -> Result<(), sqlx::Error> {
        let rows = hosts::list(pool, down_after).await?;
        let now = chrono::Utc::now();
        let up = rows.iter().filter(|h| h.up).count() as i64;
        self.hosts_up.set(up);
        self.hosts_down.set(rows.len() as i64 - up);
        // Rebuilt each time, so a host whose stops all finished leaves
        // the series instead of reporting its last backlog for ever.
        self.host_up.clear();
        self.stops_waiting.clear();
        self.oldest_waiting_seconds.clear();
        for h in &rows {
            let labels = HostLabels {
                host: h.name.clone(),
            };
            self.host_up.get_or_create(&labels).set(i64::from(h.up));
        }
        for h in rows.iter().filter(|h| h.waiting > 0) {
            let labels = HostLabels {
                host: h.name.clone(),
            };
            self.stops_waiting.get_or_create(&labels).set(h.waiting);
            if let Some(since) = h.waiting_since {
                self.oldest_waiting_seconds
                    .get_or_create(&labels)
                    .set((now - since).num_seconds().max(0));
            }
        }
        Ok(())
    }

    pub async fn run(
        self,
        pool: PgPool,
        down_after: Duration,
        interval: Duration,
        cancel: CancellationToken,
    ) {
        loop {
            match tokio::time::timeout(Duration::from_secs(10), self.update(&pool, down_after))
                .await
            {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(error = %e, "host census failed; will retry"),
                Err(_) => tracing::debug!("host census timed out; will retry"),
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
        }
    }
}
