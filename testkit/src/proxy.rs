//! [`TcpProxy`]: cuts a test's connections to the real PostgreSQL or RabbitMQ
//! without touching the machine's services.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use sqlx::PgPool;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

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
