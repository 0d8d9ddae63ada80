//! Building and running a worker: pool, publisher (for retries and the
//! rescuer), consumer, rescuer, health port.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::Context;
use shutoff_core::broker::{BrokerTimeouts, Publisher};
use shutoff_core::conductor::ConductorClient;
use shutoff_core::ids::HostName;
use shutoff_core::rescuer::Rescuer;
use shutoff_core::store;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::consumer::{self, ConsumerSettings};
use crate::health::{self, Health};
use crate::job_store::JobStore;
use crate::metrics::WorkerMetrics;
use crate::presence::Presence;
use crate::settings::Settings;
use crate::stop_job::JobContext;

/// PostgreSQL connections of a worker unless `--db-max-connections` says
/// otherwise. Its hot statements are batched (one claim, one success and
/// one lease-renewal statement in flight at a time), so a few connections
/// carry a full host; with a worker on every host, the fleet's connections
/// are what PostgreSQL has to hold.
pub const DEFAULT_POOL: u32 = 4;

pub struct Worker {
    settings: Settings,
    /// For the rescuer (with `--rescuer`), core's own loop over every host.
    /// None with `--via-conductor`.
    pool: Option<PgPool>,
    ctx: Arc<JobContext>,
    health_listener: TcpListener,
    /// With `--via-conductor`: the consumer hands the conductor's client a
    /// channel of its own connection here.
    conductor_channels: Option<watch::Sender<Option<lapin::Channel>>>,
}

impl Worker {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        if settings.via_conductor {
            return Self::build_via_conductor(settings).await;
        }
        let pool = store::pool(
            &settings.common.database_url,
            &store::PoolSettings {
                // An idle worker keeps only the connection its heartbeat
                // uses. The pool hands out its idle connections in turn, so
                // with a timeout longer than two beats every connection a
                // burst opened would be used again in time and stay; with
                // one and a half beats, all but one are closed.
                idle_timeout: Some(settings.heartbeat() * 3 / 2),
                ..settings.common.pool_settings(DEFAULT_POOL)
            },
            "shutoff-worker",
        );
        Self::build_with_pool(settings, pool).await
    }

    pub async fn build_with_pool(settings: Settings, pool: PgPool) -> anyhow::Result<Self> {
        let store = JobStore::new(
            pool.clone(),
            settings.worker_id(),
            settings.host()?,
            settings.lease(),
            settings.batch_linger(),
        );
        Self::build_with_store(settings, store, Some(pool), None).await
    }

    /// A worker with no pool of its own: its store calls go to the
    /// conductor on the same broker ([`shutoff_core::conductor`]).
    pub async fn build_via_conductor(settings: Settings) -> anyhow::Result<Self> {
        anyhow::ensure!(
            !settings.rescuer,
            "--rescuer needs a database connection of its own; with --via-conductor the API's rescuer does the work"
        );
        // The calls ride the consumer's connection: one connection (and
        // one lapin IO thread) per host, not two.
        let (channels, shared) = watch::channel(None);
        let client = ConductorClient::new(
            shared,
            settings.common.topology(),
            Duration::from_secs(5),
            settings.conductor_timeout(),
        );
        let store = JobStore::via_conductor(
            client,
            settings.worker_id(),
            settings.host()?,
            settings.lease(),
        );
        Self::build_with_store(settings, store, None, Some(channels)).await
    }

    async fn build_with_store(
        settings: Settings,
        store: JobStore,
        pool: Option<PgPool>,
        conductor_channels: Option<watch::Sender<Option<lapin::Channel>>>,
    ) -> anyhow::Result<Self> {
        let host = settings.host()?;
        let worker_id = settings.worker_id();
        // A TLS setting that cannot work stops the start, as a bad DATABASE_URL does.
        settings.common.amqp_tls.check(&settings.common.amqp_url)?;
        let publisher = Publisher::new(
            &settings.common.amqp_url,
            &settings.common.amqp_tls,
            &format!("shutoff-worker {worker_id} publisher"),
            settings.common.topology(),
            BrokerTimeouts::default(),
        );
        let health_listener = TcpListener::bind(settings.health_listen)
            .await
            .with_context(|| format!("cannot listen on {}", settings.health_listen))?;
        let ctx = Arc::new(JobContext::new(
            store,
            publisher,
            &settings,
            host,
            WorkerMetrics::new(),
        ));
        Ok(Worker {
            settings,
            pool,
            ctx,
            health_listener,
            conductor_channels,
        })
    }

    pub fn health_addr(&self) -> SocketAddr {
        self.health_listener
            .local_addr()
            .expect("bound listener has an address")
    }

    pub fn worker_id(&self) -> &str {
        &self.ctx.worker_id
    }

    pub fn host(&self) -> &HostName {
        &self.ctx.host
    }

    /// Runs until `shutdown`, then drains (see [`consumer::run`]) and returns.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Worker {
            settings,
            pool,
            ctx,
            health_listener,
            conductor_channels,
        } = self;
        tracing::info!(worker = %ctx.worker_id, host = %ctx.host, health = %health_listener.local_addr()?, "shutoff-worker starting");
        let consuming = Arc::new(AtomicBool::new(false));
        let background = CancellationToken::new();

        let health = health::router(Health {
            store: ctx.store.clone(),
            consuming: consuming.clone(),
            metrics: ctx.metrics.clone(),
        });
        let health_stop = background.clone();
        let health_task = tokio::spawn(async move {
            axum::serve(health_listener, health)
                .with_graceful_shutdown(health_stop.cancelled_owned())
                .await
        });

        let rescuer_task = pool.filter(|_| settings.rescuer).map(|pool| {
            let rescuer = Rescuer {
                pool,
                publisher: ctx.publisher.clone(),
                stale_after: settings.common.rescue_after(),
                interval: settings.common.rescue_interval(),
                host_down_after: settings.common.host_down_after(),
                host: ctx.worker_id.clone(),
            };
            tokio::spawn(rescuer.run(background.clone()))
        });
        let attached = Arc::new(Notify::new());
        let presence = Presence {
            store: ctx.store.clone(),
            publisher: ctx.publisher.clone(),
            host: ctx.host.clone(),
            interval: settings.heartbeat(),
            consuming: consuming.clone(),
            attached: attached.clone(),
        };
        let presence_task = tokio::spawn(presence.run(background.clone()));

        let conn = consumer::run(
            ctx.clone(),
            ConsumerSettings {
                amqp_url: settings.common.amqp_url.clone(),
                amqp_tls: settings.common.amqp_tls.clone(),
                topology: settings.common.topology(),
                prefetch: settings.prefetch,
                grace: settings.grace(),
                connect_timeout: Duration::from_secs(5),
                attached,
                conductor_channels,
            },
            consuming,
            shutdown,
        )
        .await;

        background.cancel();
        if let Some(task) = rescuer_task {
            let _ = task.await;
        }
        // The host is left (through the conductor, on this connection with
        // --via-conductor) before the connection closes.
        let _ = presence_task.await;
        if let Some(conn) = conn {
            let _ =
                tokio::time::timeout(Duration::from_secs(5), conn.close(200, "shutdown".into()))
                    .await;
        }
        let _ = health_task.await;
        tracing::info!(worker = %ctx.worker_id, "shutoff-worker stopped");
        Ok(())
    }
}
