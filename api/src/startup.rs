//! Building and running the API: pool, publisher, relay, rescuer, router.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use shutoff_core::acceptor::Acceptor;
use shutoff_core::broker::{BrokerTimeouts, Publisher};
use shutoff_core::conductor::{self, server::Conductor, server::ServeSettings};
use shutoff_core::pruner::Pruner;
use shutoff_core::relay::{self, Relay};
use shutoff_core::rescuer::Rescuer;
use shutoff_core::store;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Authenticator;
use crate::metrics::ApiMetrics;
use crate::settings::{AuthMode, Settings};
use crate::state::{AppState, IdentityConfig, StopState};

/// How often the hosts' metrics are counted.
const HOST_CENSUS_INTERVAL: Duration = Duration::from_secs(10);

pub struct Application {
    listener: TcpListener,
    state: AppState,
    settings: Settings,
    confirmed: tokio::sync::mpsc::UnboundedReceiver<uuid::Uuid>,
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let pool = store::pool(
            &settings.common.database_url,
            &settings.common.pool_settings(16),
            "shutoff-api",
        );
        Self::build_with_pool(settings, pool).await
    }

    /// Tests pass the pool of their own database.
    pub async fn build_with_pool(settings: Settings, pool: PgPool) -> anyhow::Result<Self> {
        if settings.migrate {
            store::create_and_migrate(&settings.common.database_url).await?;
        }
        // A TLS setting that cannot work stops the start, as a bad DATABASE_URL does.
        settings.common.amqp_tls.check(&settings.common.amqp_url)?;
        let publisher = Publisher::new(
            &settings.common.amqp_url,
            &settings.common.amqp_tls,
            "shutoff-api",
            settings.common.topology(),
            BrokerTimeouts::default(),
        );
        let auth = Arc::new(Authenticator::from_settings(&settings, pool.clone())?);
        let metrics = ApiMetrics::new();
        let (relay, confirmed) = Relay::new(
            pool.clone(),
            publisher.clone(),
            metrics.relay.clone(),
            settings.common.rescue_after(),
            settings.common.host_down_after(),
        );
        let listener = TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("cannot listen on {}", settings.listen))?;
        let state = AppState {
            stop: StopState {
                acceptor: Arc::new(Acceptor::new(pool.clone())),
                max_attempts: settings.common.max_attempts,
                relay,
                metrics: metrics.clone(),
            },
            pool,
            publisher,
            auth,
            metrics,
            identity: IdentityConfig {
                enabled: settings.auth == AuthMode::Local,
                region: settings.region_name.as_str().into(),
            },
            openapi: Arc::new(crate::openapi::document()),
            max_body_bytes: settings.max_body_bytes,
            limits: settings.limits(),
            request_timeout: settings.request_timeout(),
        };
        Ok(Application {
            listener,
            state,
            settings,
            confirmed,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound listener has an address")
    }

    /// Serves until `shutdown` is cancelled, then stops accepting, lets
    /// in-flight requests finish (up to the drain period), flushes the relay's
    /// marks and returns.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Application {
            listener,
            state,
            settings,
            confirmed,
        } = self;
        let addr = listener.local_addr()?;
        tracing::info!(%addr, "shutoff-api listening");

        let background = CancellationToken::new();
        let tasks = TaskTracker::new();
        tasks.spawn(
            state
                .stop
                .relay
                .clone()
                .run(settings.relay_interval(), background.clone()),
        );
        tasks.spawn(relay::mark_confirmed(state.pool.clone(), confirmed));
        let rescuer = Rescuer {
            pool: state.pool.clone(),
            publisher: state.publisher.clone(),
            stale_after: settings.common.rescue_after(),
            interval: settings.common.rescue_interval(),
            host_down_after: settings.common.host_down_after(),
            host: format!("shutoff-api@{addr}"),
        };
        tasks.spawn(rescuer.run(background.clone()));
        // The store calls of workers started with --via-conductor.
        tasks.spawn(conductor::server::serve(
            Conductor::new(state.pool.clone(), settings.conductor_linger()),
            ServeSettings {
                amqp_url: settings.common.amqp_url.clone(),
                amqp_tls: settings.common.amqp_tls.clone(),
                topology: settings.common.topology(),
                connect_timeout: Duration::from_secs(5),
                name: format!("shutoff-api@{addr} conductor"),
            },
            background.clone(),
        ));
        tasks.spawn(state.metrics.hosts.clone().run(
            state.pool.clone(),
            settings.common.host_down_after(),
            HOST_CENSUS_INTERVAL,
            background.clone(),
        ));
        if let Some(retention) = settings.retention {
            let pruner = Pruner {
                pool: state.pool.clone(),
                retention,
                interval: Duration::from_secs(settings.retention_interval_secs.max(1)),
            };
            tasks.spawn(pruner.run(background.clone()));
        }

        let limits = state.limits;
        let router = crate::routes::router(state);
        let mut serve = Box::pin(crate::server::serve(
            listener,
            router,
            limits,
            shutdown.clone(),
        ));
        let drain = Duration::from_secs(settings.drain_secs);
        tokio::select! {
            _ = &mut serve => {}
            _ = async { shutdown.cancelled().await; tokio::time::sleep(drain).await } => {
                tracing::warn!("drain period over; closing remaining connections");
            }
        }
        // Dropping the server drops the router and with it the last sender
        // of confirmed job ids, so the marker flushes and ends.
        drop(serve);
        background.cancel();
        tasks.close();
        tasks.wait().await;
        tracing::info!("shutoff-api stopped");
        Ok(())
    }
}
