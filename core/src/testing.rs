//! Test support (feature `test-support`): each test gets its own database
//! (from `#[sqlx::test]`) and its own queue names, deleted when the test ends,
//! pass or fail; and a TCP proxy that can cut a test's connections to the real
//! PostgreSQL or RabbitMQ without touching the machine's services.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::PgPool;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use uuid::Uuid;

use crate::broker::Topology;
use crate::ids::ProjectId;
use crate::store::admin::{self, NewServer};

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
        }
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
        assert!(confirm.is_ack());
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
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let fut = async {
                    let conn = lapin::Connection::connect(&url, Default::default()).await?;
                    let ch = conn.create_channel().await?;
                    topology.delete(&ch).await?;
                    conn.close(200, "cleanup".into()).await
                };
                let _ = tokio::time::timeout(Duration::from_secs(10), fut).await;
            });
        })
        .join();
    }
}

/// A TCP forwarder in front of a real service. `cut()` drops every open
/// connection and refuses new ones, as a dead peer would; `restore()` lets
/// traffic through again.
pub struct TcpProxy {
    pub addr: SocketAddr,
    up: Arc<AtomicBool>,
    generation: watch::Sender<u64>,
}

impl TcpProxy {
    pub async fn start(target: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let (generation, _) = watch::channel(0u64);
        let target = target.to_string();
        let up2 = up.clone();
        let gen_tx = generation.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if !up2.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let target = target.clone();
                let mut cut = gen_tx.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        TcpProxy {
            addr,
            up,
            generation,
        }
    }

    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }

    /// `amqp://guest:guest@<proxy>/%2f` for a proxy in front of RabbitMQ.
    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@{}/%2f", self.addr)
    }

    /// The URL of a test's database (the one `pool` is on), through this proxy.
    pub fn database_url(&self, pool: &PgPool) -> String {
        let opts = pool.connect_options();
        format!(
            "postgres://{}@{}/{}",
            opts.get_username(),
            self.addr,
            opts.get_database().unwrap_or("postgres")
        )
    }
}
