//! [`RunningWorker`]: a real worker in this test's process, against this
//! test's own database and queues; and [`Ctx`], for the worker's tests, which
//! accepts stops the way the API does (the same acceptor, same publisher)
//! without an API.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use shutoff_core::acceptor::{Acceptor, StopRequest};
use shutoff_core::batch::Ticket;
use shutoff_core::broker::{BrokerTimeouts, Publisher};
use shutoff_core::ids::{ProjectId, RequestId, ServerId};
use shutoff_core::message::StopJob;
use shutoff_core::policy::Caller;
use shutoff_core::store::admin::NewServer;
use shutoff_worker::{Settings, Worker};
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::TestEnv;

/// A worker test's world: its database and queues, a project to own its
/// servers, and the publisher the API would use.
pub struct Ctx {
    pub env: TestEnv,
    pub project: ProjectId,
    pub publisher: Arc<Publisher>,
}

/// A worker running in this test's process.
pub struct RunningWorker {
    /// The id it records on the jobs it runs.
    pub id: String,
    /// The host it serves.
    pub host: shutoff_core::ids::HostName,
    /// Where its `/healthz`, `/readyz` and `/metrics` answer.
    pub health: SocketAddr,
    /// Cancelling it is the worker's SIGTERM.
    pub shutdown: CancellationToken,
    pub handle: JoinHandle<anyhow::Result<()>>,
}

impl RunningWorker {
    /// Builds a worker on `pool` and runs it until `shutdown` is cancelled.
    pub async fn start(settings: Settings, pool: PgPool, shutdown: CancellationToken) -> Self {
        let w = Worker::build_with_pool(settings, pool).await.unwrap();
        Self::run(w, shutdown)
    }

    /// Builds a worker with no pool, whose store calls go to the conductor
    /// (`--via-conductor`), and runs it until `shutdown` is cancelled.
    pub async fn start_via_conductor(mut settings: Settings, shutdown: CancellationToken) -> Self {
        settings.via_conductor = true;
        // The test settings' rescuer needs a pool; the conductor's process
        // (the API) runs the rescuer in a deployment.
        settings.rescuer = false;
        let w = Worker::build(settings).await.unwrap();
        Self::run(w, shutdown)
    }

    fn run(w: Worker, shutdown: CancellationToken) -> Self {
        RunningWorker {
            id: w.worker_id().to_string(),
            host: w.host().clone(),
            health: w.health_addr(),
            shutdown: shutdown.clone(),
            handle: tokio::spawn(w.run_until_stopped(shutdown)),
        }
    }

    /// Whether `/readyz` answers 200: the worker consumes from its host's
    /// queue (and so has declared it) and reaches PostgreSQL.
    pub async fn is_ready(&self) -> bool {
        reqwest::get(format!("http://{}/readyz", self.health))
            .await
            .is_ok_and(|r| r.status().as_u16() == 200)
    }

    /// SIGTERM, in-process: returns how long the worker took to stop.
    pub async fn terminate(self) -> Duration {
        let t = std::time::Instant::now();
        self.shutdown.cancel();
        self.handle.await.unwrap().unwrap();
        t.elapsed()
    }
}

/// A [`Ctx`] on the test's database (from `#[sqlx::test]`), with a project.
/// The default host's queue is declared, as if its worker had run before, so
/// a stop published before the test starts a worker waits in it.
pub async fn ctx(pool: PgPool) -> Ctx {
    let env = TestEnv::new(pool);
    env.declare_host(&crate::env::default_host()).await;
    let project = env.project().await;
    let publisher = Publisher::new(
        &env.amqp_url.parse().expect("the test's AMQP URL parses"),
        &Default::default(),
        "test",
        env.topology.clone(),
        BrokerTimeouts::default(),
    );
    Ctx {
        env,
        project,
        publisher,
    }
}

impl Ctx {
    pub fn settings(&self) -> Settings {
        self.env.worker_settings()
    }

    pub async fn worker(&self, tweak: impl FnOnce(&mut Settings)) -> RunningWorker {
        self.worker_on(self.env.pool.clone(), tweak).await
    }

    pub async fn worker_on(
        &self,
        pool: PgPool,
        tweak: impl FnOnce(&mut Settings),
    ) -> RunningWorker {
        let mut s = self.settings();
        tweak(&mut s);
        RunningWorker::start(s, pool, CancellationToken::new()).await
    }

    pub async fn server(&self, hypervisor: &str) -> Uuid {
        self.server_on(crate::env::DEFAULT_HOST, hypervisor).await
    }

    /// A server on `host` (noted for clean-up).
    pub async fn server_on(&self, host: &str, hypervisor: &str) -> Uuid {
        let host = self.env.host(host);
        let mut s = NewServer::new(&self.project, &format!("vm-{}", Uuid::new_v4().simple()));
        s.hypervisor = hypervisor.into();
        s.host = host.to_string();
        self.env.server(s).await
    }

    /// A worker serving `host` (noted for clean-up).
    pub async fn worker_for(&self, host: &str, tweak: impl FnOnce(&mut Settings)) -> RunningWorker {
        let host = self.env.host(host);
        self.worker(|s| {
            s.host = Some(host);
            tweak(s)
        })
        .await
    }

    /// A worker serving `host` through the conductor (noted for clean-up).
    pub async fn conductor_worker_for(
        &self,
        host: &str,
        tweak: impl FnOnce(&mut Settings),
    ) -> RunningWorker {
        let mut s = self.settings();
        s.host = Some(self.env.host(host));
        tweak(&mut s);
        RunningWorker::start_via_conductor(s, CancellationToken::new()).await
    }

    /// The conductor an API process runs, on this test's database and
    /// queues; it stops when the returned token is cancelled.
    pub fn conductor(&self) -> (CancellationToken, JoinHandle<()>) {
        self.conductor_lingering(shutoff_core::conductor::server::DEFAULT_LINGER)
    }

    /// [`Self::conductor`] with its claim and success batches waiting up to
    /// `linger` for more calls (`--conductor-linger-ms`).
    pub fn conductor_lingering(&self, linger: Duration) -> (CancellationToken, JoinHandle<()>) {
        use shutoff_core::conductor::server::{Conductor, ServeSettings, serve};
        let stop = CancellationToken::new();
        let handle = tokio::spawn(serve(
            Conductor::new(self.env.pool.clone(), linger),
            ServeSettings {
                amqp_url: self
                    .env
                    .amqp_url
                    .parse()
                    .expect("the test's AMQP URL parses"),
                amqp_tls: Default::default(),
                topology: self.env.topology.clone(),
                connect_timeout: Duration::from_secs(5),
                name: "test conductor".into(),
            },
            stop.clone(),
        ));
        (stop, handle)
    }

    /// Accepts a stop as the API does, without publishing it.
    pub async fn accept(&self, server: Uuid, max_attempts: i32) -> StopJob {
        let caller = Caller {
            project_id: self.project.clone(),
            user_id: "u".into(),
            roles: vec!["member".into()],
            project_active: true,
        };
        let stop = StopRequest {
            caller: &caller,
            server: ServerId(server),
            request_id: &RequestId::new(),
            max_attempts,
        };
        Acceptor::new(self.env.pool.clone())
            .accept(stop, &Ticket::new())
            .await
            .unwrap()
    }

    /// Accepts and publishes a stop, as the API does (the confirm recorded).
    pub async fn stop(&self, server: Uuid, max_attempts: i32) -> StopJob {
        let job = self.accept(server, max_attempts).await;
        self.publisher.publish(&job).await.unwrap();
        shutoff_core::store::publish::mark_published(&self.env.pool, &[job.job_id])
            .await
            .unwrap();
        job
    }

    pub async fn job(&self, id: Uuid) -> (String, i32) {
        sqlx::query_as("SELECT state, attempts FROM jobs WHERE id = $1")
            .bind(id)
            .fetch_one(&self.env.pool)
            .await
            .unwrap()
    }

    pub async fn until_job(&self, id: Uuid, state: &str, timeout: Duration) -> bool {
        self.env
            .eventually(timeout, || async { self.job(id).await.0 == state })
            .await
    }

    pub async fn transitions_to(&self, id: Uuid, state: &str) -> i64 {
        sqlx::query_scalar(
            "SELECT count(*) FROM job_transitions WHERE job_id = $1 AND to_state = $2",
        )
        .bind(id)
        .bind(state)
        .fetch_one(&self.env.pool)
        .await
        .unwrap()
    }

    pub async fn instance(&self, id: Uuid) -> (String, Option<String>, i16) {
        self.env.instance_state(id).await
    }

    pub async fn scalar(&self, sql: &'static str, id: Uuid) -> i64 {
        sqlx::query_scalar(sql)
            .bind(id)
            .fetch_one(&self.env.pool)
            .await
            .unwrap()
    }

    /// Result and details of the stop event of a job's action.
    pub async fn event(&self, job: Uuid) -> (String, String) {
        sqlx::query_as(
            "SELECT e.result, e.details FROM instance_actions_events e
               JOIN jobs j ON j.action_id = e.action_id WHERE j.id = $1",
        )
        .bind(job)
        .fetch_one(&self.env.pool)
        .await
        .unwrap()
    }

    /// Ready messages in one of this test's queues.
    pub async fn ready_messages(&self, queue: &str) -> u32 {
        self.env.ready_messages(queue).await
    }
}
