//! Building and running a worker: pool, publisher (for retries and the
//! rescuer), consumer, rescuer, health port.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::Context;
use shutoff_core::broker::{BrokerTimeouts, Publisher};
use shutoff_core::rescuer::Rescuer;
use shutoff_core::store;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::consumer::{self, ConsumerSettings};
use crate::health::{self, Health};
use crate::metrics::WorkerMetrics;
use crate::settings::Settings;
use crate::stop_job::JobContext;

pub struct Worker {
    settings: Settings,
    /// For the rescuer, which works on every worker's stale jobs, not ours.
    pool: PgPool,
    ctx: Arc<JobContext>,
    health_listener: TcpListener,
}

impl Worker {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let pool = store::pool(
            &settings.common.database_url,
            &settings.common.pool_settings(),
            "shutoff-worker",
        )
        .context("invalid DATABASE_URL")?;
        Self::build_with_pool(settings, pool).await
    }

    pub async fn build_with_pool(settings: Settings, pool: PgPool) -> anyhow::Result<Self> {
        let worker_id = settings.worker_id();
        let publisher = Publisher::new(
            &settings.common.amqp_url,
            &format!("shutoff-worker {worker_id} publisher"),
            settings.common.topology(),
            BrokerTimeouts::default(),
        );
        let health_listener = TcpListener::bind(settings.health_listen)
            .await
            .with_context(|| format!("cannot listen on {}", settings.health_listen))?;
        let ctx = Arc::new(JobContext::new(
            pool.clone(),
            publisher,
            &settings,
            WorkerMetrics::new(),
        ));
        Ok(Worker {
            settings,
            pool,
            ctx,
            health_listener,
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

    /// Runs until `shutdown`, then drains (see [`consumer::run`]) and returns.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Worker {
            settings,
            pool,
            ctx,
            health_listener,
        } = self;
        tracing::info!(worker = %ctx.worker_id, health = %health_listener.local_addr()?, "shutoff-worker starting");
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

        let rescuer = Rescuer {
            pool,
            publisher: ctx.publisher.clone(),
            stale_after: settings.common.rescue_after(),
            interval: settings.common.rescue_interval(),
            host: ctx.worker_id.clone(),
        };
        let rescuer_task = tokio::spawn(rescuer.run(background.clone()));

        consumer::run(
            ctx.clone(),
            ConsumerSettings {
                amqp_url: settings.common.amqp_url.clone(),
                topology: settings.common.topology(),
                prefetch: settings.prefetch,
                grace: settings.grace(),
                connect_timeout: Duration::from_secs(5),
            },
            consuming,
            shutdown,
        )
        .await;

        background.cancel();
        let _ = rescuer_task.await;
        let _ = health_task.await;
        tracing::info!(worker = %ctx.worker_id, "shutoff-worker stopped");
        Ok(())
    }
}
