//! [`TestApp`]: the real API (and, unless asked not to, a real worker) in
//! this test's process, on random ports, against this test's own database and
//! queues; with the HTTP calls and database reads the API's tests share.

use std::net::SocketAddr;

use reqwest::Response;
use shutoff_api::{Application, Settings};
use shutoff_core::ids::ProjectId;
use shutoff_core::store::admin::NewServer;
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::TestEnv;
use crate::workers::RunningWorker;

/// The API running in this test's process, with a project and a member token
/// to call it with.
pub struct TestApp {
    pub env: TestEnv,
    /// Where the API listens.
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    pub project: ProjectId,
    /// A member token of `project`.
    pub token: String,
    /// Cancelling it is SIGTERM to the API and the worker.
    pub shutdown: CancellationToken,
    pub api: JoinHandle<anyhow::Result<()>>,
    /// Stops with the API, on the same `shutdown`.
    pub worker: Option<RunningWorker>,
}

/// How [`spawn_with`] runs the API.
pub struct Options {
    /// Also run a worker (on the test's own database and RabbitMQ).
    pub with_worker: bool,
    /// The API's RabbitMQ, instead of the test's (e.g. through a `TcpProxy`).
    pub amqp_url: Option<String>,
    /// The API's PostgreSQL, instead of the test's pool (e.g. through a `TcpProxy`).
    pub database_url: Option<String>,
    /// Last changes to the API's settings (e.g. `--auth keystone`).
    pub configure: Option<Configure>,
    /// Changes to the API's settings before it is built.
    pub tweak: Option<fn(&mut Settings)>,
}

/// A change to the API's settings that may own what it captures.
pub type Configure = Box<dyn FnOnce(&mut Settings) + Send>;

impl Default for Options {
    fn default() -> Self {
        Options {
            with_worker: true,
            amqp_url: None,
            database_url: None,
            configure: None,
            tweak: None,
        }
    }
}

/// The API and a worker, on the test's database (from `#[sqlx::test]`).
pub async fn spawn(pool: PgPool) -> TestApp {
    spawn_with(pool, Options::default()).await
}

/// The API alone: what it accepts stays queued.
pub async fn spawn_api_only(pool: PgPool) -> TestApp {
    spawn_with(
        pool,
        Options {
            with_worker: false,
            ..Options::default()
        },
    )
    .await
}

/// The default host's queue is declared first, as if its worker had run
/// before: an API-only test's stops wait in it instead of being returned.
pub async fn spawn_with(pool: PgPool, opts: Options) -> TestApp {
    let env = TestEnv::new(pool.clone());
    env.declare_host(&crate::env::default_host()).await;
    let mut settings = env.api_settings();
    settings.relay_interval_ms = 200;
    if let Some(tweak) = opts.tweak {
        tweak(&mut settings);
    }
    if let Some(u) = &opts.amqp_url {
        settings.common.amqp_url = u.parse().expect("a test's AMQP URL parses");
    }
    if let Some(configure) = opts.configure {
        configure(&mut settings);
    }
    let api_pool = match &opts.database_url {
        Some(u) => {
            settings.common.database_url = u.parse().expect("a test's database URL parses");
            shutoff_core::store::pool(
                &settings.common.database_url,
                &settings.common.pool_settings(16),
                "test-api",
            )
        }
        None => pool.clone(),
    };
    let app = Application::build_with_pool(settings, api_pool)
        .await
        .unwrap();
    let addr = app.local_addr();
    let shutdown = CancellationToken::new();
    let api = tokio::spawn(app.run_until_stopped(shutdown.clone()));
    let worker = if opts.with_worker {
        Some(RunningWorker::start(env.worker_settings(), pool.clone(), shutdown.clone()).await)
    } else {
        None
    };
    let project = env.project().await;
    let token = env.token(&project, &["member", "reader"]).await;
    TestApp {
        env,
        addr,
        client: reqwest::Client::new(),
        project,
        token,
        shutdown,
        api,
        worker,
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// An active, launched server of this app's project on the simulator.
    pub async fn server(&self, name: &str) -> Uuid {
        self.env.server(NewServer::new(&self.project, name)).await
    }

    pub async fn server_with(&self, f: impl FnOnce(&mut NewServer)) -> Uuid {
        let mut s = NewServer::new(&self.project, &format!("vm-{}", Uuid::new_v4().simple()));
        f(&mut s);
        self.env.server(s).await
    }

    /// POSTs `body` to the action URL of `server` in `project` with `token`.
    pub async fn action(
        &self,
        project: &str,
        server: &str,
        token: Option<&str>,
        body: &str,
    ) -> Response {
        let mut req = self
            .client
            .post(self.url(&format!("/v2/{project}/servers/{server}/action")))
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(t) = token {
            req = req.header("x-auth-token", t);
        }
        req.send().await.unwrap()
    }

    /// `{"os-stop": null}` for `server` with the member token.
    pub async fn stop(&self, server: Uuid) -> Response {
        self.action(
            self.project.as_str(),
            &server.to_string(),
            Some(&self.token),
            r#"{"os-stop": null}"#,
        )
        .await
    }

    pub async fn get(&self, path: &str) -> Response {
        self.client
            .get(self.url(path))
            .header("x-auth-token", &self.token)
            .send()
            .await
            .unwrap()
    }

    /// (vm_state, task_state, power_state) straight from the database.
    pub async fn instance_state(&self, id: Uuid) -> (String, Option<String>, i16) {
        self.env.instance_state(id).await
    }

    pub async fn count(&self, sql: &'static str) -> i64 {
        sqlx::query_scalar(sql)
            .fetch_one(&self.env.pool)
            .await
            .unwrap()
    }

    pub async fn stopped(&self, id: Uuid, timeout: std::time::Duration) -> bool {
        self.env
            .eventually(timeout, || async {
                self.instance_state(id).await.0 == "stopped"
            })
            .await
    }

    /// Polls the server document until SHUTOFF (or `timeout`) and returns it.
    pub async fn until_shutoff(&self, id: Uuid, timeout: std::time::Duration) -> serde_json::Value {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let resp = self
                .get(&format!("/v2/{}/servers/{id}", self.project))
                .await;
            assert_eq!(resp.status().as_u16(), 200);
            let doc: serde_json::Value = resp.json().await.unwrap();
            if doc["server"]["status"] == "SHUTOFF" || std::time::Instant::now() > deadline {
                return doc["server"].clone();
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// The stop event of request `request_id` on server `id`, as the API shows it.
    pub async fn stop_event(&self, id: Uuid, request_id: &str) -> serde_json::Value {
        let doc: serde_json::Value = self
            .get(&format!(
                "/v2/{}/servers/{id}/os-instance-actions/{request_id}",
                self.project
            ))
            .await
            .json()
            .await
            .unwrap();
        doc["instanceAction"]["events"][0].clone()
    }

    pub async fn shut_down(self) {
        self.shutdown.cancel();
        self.api.await.unwrap().unwrap();
        if let Some(w) = self.worker {
            w.handle.await.unwrap().unwrap();
        }
    }
}

/// Asserts an OpenStack fault body and returns its message.
pub async fn fault(resp: Response, status: u16, name: &str) -> String {
    assert_eq!(resp.status().as_u16(), status, "unexpected status");
    let rid = resp.headers()["x-compute-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(rid.starts_with("req-"), "request id {rid}");
    assert_eq!(
        resp.headers()["x-openstack-request-id"].to_str().unwrap(),
        rid
    );
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body[name]["code"], status, "body: {body}");
    body[name]["message"].as_str().unwrap().to_string()
}
