//! [`TestEnv`]: one test's private world on the machine's real services. Its
//! database comes from `#[sqlx::test]`; its queue names are its own and are
//! deleted when the test ends, pass or fail.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shutoff_core::broker::Topology;
use shutoff_core::ids::{HostName, ProjectId};
use shutoff_core::store::admin::{self, NewServer};
use sqlx::PgPool;
use uuid::Uuid;

/// The machine's RabbitMQ, unless `AMQP_URL` says otherwise.
pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// One test's private world on the real services.
pub struct TestEnv {
    pub pool: PgPool,
    /// URL of this test's own database.
    pub database_url: String,
    pub amqp_url: String,
    /// Queue names unique to this test.
    pub topology: Topology,
    /// The hosts whose queues this test may have made, deleted with the
    /// rest at the end ([`DEFAULT_HOST`] always among them).
    hosts: Arc<Mutex<BTreeSet<HostName>>>,
}

/// The host of every server a test creates unless it says otherwise (the
/// `instances.host` default), and of every worker it starts.
pub const DEFAULT_HOST: &str = "sim-1";

pub fn default_host() -> HostName {
    HostName::parse(DEFAULT_HOST).expect("the default host name is valid")
}

impl TestEnv {
    pub fn new(pool: PgPool) -> Self {
        let opts = pool.connect_options();
        let database_url = format!(
            "postgres://{}@{}:{}/{}",
            opts.get_username(),
            opts.get_host(),
            opts.get_port(),
            opts.get_database().unwrap_or("postgres")
        );
        let mut topology = Topology::with_prefix(format!("test-{}", Uuid::new_v4().simple()));
        topology.retry_delays_ms = vec![100, 200];
        TestEnv {
            pool,
            database_url,
            amqp_url: amqp_url(),
            topology,
            hosts: Arc::new(Mutex::new(BTreeSet::from([default_host()]))),
        }
    }

    /// Notes that this test uses `host` (its queue is deleted at the end)
    /// and returns it.
    pub fn host(&self, name: &str) -> HostName {
        let host = HostName::parse(name).expect("a valid test host name");
        self.hosts.lock().unwrap().insert(host.clone());
        host
    }

    /// Declares `host`'s queue, as its first worker would: from then on a
    /// stop for it is kept by the broker even while no worker runs.
    pub async fn declare_host(&self, host: &HostName) {
        self.hosts.lock().unwrap().insert(host.clone());
        let conn = lapin::Connection::connect(&self.amqp_url, Default::default())
            .await
            .unwrap();
        let ch = conn.create_channel().await.unwrap();
        self.topology.declare(&ch).await.unwrap();
        self.topology.declare_host(&ch, host).await.unwrap();
        let _ = conn.close(200, "done".into()).await;
    }

    /// The default host's queue.
    pub fn work_queue(&self) -> String {
        self.topology.host_queue(&default_host())
    }

    pub async fn project(&self) -> ProjectId {
        let id = ProjectId::random();
        admin::create_project(&self.pool, &id, &format!("p-{id}"))
            .await
            .unwrap();
        id
    }

    pub async fn token(&self, project: &ProjectId, roles: &[&str]) -> String {
        let roles: Vec<String> = roles.iter().map(|r| r.to_string()).collect();
        let expires = chrono::Utc::now() + chrono::Duration::hours(1);
        admin::create_token(&self.pool, project, "user-1", &roles, expires)
            .await
            .unwrap()
    }

    pub async fn server(&self, s: NewServer) -> Uuid {
        admin::create_server(&self.pool, &s).await.unwrap()
    }

    /// Polls `f` every 50 ms until it is true or `timeout` passes.
    pub async fn eventually<F, Fut>(&self, timeout: Duration, mut f: F) -> bool
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if f().await {
                return true;
            }
            if tokio::time::Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// How many statements of this test's database wait on a lock right now
    /// (a stop or claim blocked on a row the test holds).
    pub async fn lock_waiters(&self) -> i64 {
        sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
              WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(&self.pool)
        .await
        .unwrap()
    }

    /// `n` stops of `server` (in `project`) that finished `days_ago` days
    /// ago, a second apart, with request ids `req-old-1`, `req-old-2`, ...
    pub async fn seed_finished_stops(&self, project: &str, server: &str, n: i32, days_ago: i32) {
        sqlx::query(
            "WITH act AS (
                 INSERT INTO instance_actions (action, instance_uuid, request_id, user_id,
                                               project_id, start_time)
                 SELECT 'stop', $2::uuid, 'req-old-' || g, 'u', $1,
                        now() - make_interval(days => $4) + g * interval '1 s'
                   FROM generate_series(1, $3) g
                 RETURNING id, instance_uuid, request_id, start_time
             )
             INSERT INTO jobs (id, instance_uuid, request_id, action_id, max_attempts, state,
                               attempts, created_at, started_at, finished_at)
             SELECT gen_random_uuid(), instance_uuid, request_id, id, 5, 'succeeded', 1,
                    start_time, start_time, start_time
               FROM act",
        )
        .bind(project)
        .bind(server)
        .bind(n)
        .bind(days_ago)
        .execute(&self.pool)
        .await
        .unwrap();
    }

    /// A job's state, by instance.
    pub async fn job_state(&self, instance: Uuid) -> Option<String> {
        sqlx::query_scalar(
            "SELECT state FROM jobs WHERE instance_uuid = $1 ORDER BY created_at DESC LIMIT 1",
        )
        .bind(instance)
        .fetch_optional(&self.pool)
        .await
        .unwrap()
    }

    /// (vm_state, task_state, power_state) of an instance, straight from the database.
    pub async fn instance_state(&self, id: Uuid) -> (String, Option<String>, i16) {
        sqlx::query_as("SELECT vm_state, task_state, power_state FROM instances WHERE uuid = $1")
            .bind(id)
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    /// Ready messages in one of this test's queues.
    pub async fn ready_messages(&self, queue: &str) -> u32 {
        let conn = lapin::Connection::connect(&self.amqp_url, Default::default())
            .await
            .unwrap();
        let ch = conn.create_channel().await.unwrap();
        let q = ch
            .queue_declare(
                queue.into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                Default::default(),
            )
            .await
            .unwrap();
        let _ = conn.close(200, "done".into()).await;
        q.message_count()
    }

    /// Publishes raw bytes to a queue of this test.
    pub async fn publish_raw(&self, queue: &str, body: &[u8]) {
        let conn = lapin::Connection::connect(&self.amqp_url, Default::default())
            .await
            .unwrap();
        let ch = conn.create_channel().await.unwrap();
        self.topology.declare(&ch).await.unwrap();
        ch.confirm_select(Default::default()).await.unwrap();
        // A quorum queue nacks a publish it could not commit (a leader busy
        // on a loaded machine, just after the queue was declared); as the
        // product's relay does, publish again rather than count it.
        let mut nacks = 0;
        loop {
            let confirm = ch
                .basic_publish(
                    "".into(),
                    queue.into(),
                    Default::default(),
                    body,
                    lapin::BasicProperties::default().with_delivery_mode(2),
                )
                .await
                .unwrap()
                .await
                .unwrap();
            if confirm.is_ack() {
                break;
            }
            nacks += 1;
            assert!(nacks < 5, "{queue} nacked {nacks} publishes in a row");
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        let _ = conn.close(200, "done".into()).await;
    }
}

impl Drop for TestEnv {
    /// Deletes this test's queues even when the test panicked — also the
    /// default retry tiers, which a binary started without our delays declares.
    fn drop(&mut self) {
        let mut topology = self.topology.clone();
        for d in Topology::default().retry_delays_ms {
            if !topology.retry_delays_ms.contains(&d) {
                topology.retry_delays_ms.push(d);
            }
        }
        let url = self.amqp_url.clone();
        let mut hosts: Vec<HostName> = self.hosts.lock().unwrap().iter().cloned().collect();
        // A worker started without --host serves this machine's name.
        hosts.extend(HostName::of_this_machine());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let fut = async {
                    let conn = lapin::Connection::connect(&url, Default::default()).await?;
                    let ch = conn.create_channel().await?;
                    topology.delete(&ch, &hosts).await?;
                    conn.close(200, "cleanup".into()).await
                };
                let _ = tokio::time::timeout(Duration::from_secs(10), fut).await;
            });
        })
        .join();
    }
}
