//! The logs of a full run of the real binaries (`shutoff-api` and
//! `shutoff-worker`, with `--log-format json`): every line of a request and
//! of its job carries the request id, and no token ever appears in a log
//! line, a metric or a response.
//!
//! The worker binary is the one beside the API binary in the target
//! directory: `cargo test --workspace` builds both; for this test alone, run
//! `cargo build -p shutoff-worker` first.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use shutoff_core::ids::ProjectId;
use shutoff_core::store::admin::{self, NewServer};
use shutoff_testkit::TestEnv;
use sqlx::PgPool;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use uuid::Uuid;

/// Our own code at debug: every line it writes while a request or job runs
/// is one the request id must be on.
const OUR_CODE_AT_DEBUG: &str =
    "info,shutoff_api=debug,shutoff_worker=debug,shutoff_core=debug,sqlx=warn,lapin=off";

/// A running binary whose stdout and stderr lines are collected.
struct Service {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    readers: Vec<tokio::task::JoinHandle<()>>,
}

impl Service {
    fn spawn(program: PathBuf, args: &[String], rust_log: &str) -> Service {
        let mut child = Command::new(&program)
            .args(args)
            .env("RUST_LOG", rust_log)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let mut readers = Vec::new();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        for stream in [
            Box::new(stdout) as Box<dyn tokio::io::AsyncRead + Send + Unpin>,
            Box::new(stderr),
        ] {
            let lines = lines.clone();
            readers.push(tokio::spawn(async move {
                let mut reader = BufReader::new(stream).lines();
                while let Ok(Some(line)) = reader.next_line().await {
                    lines.lock().unwrap().push(line);
                }
            }));
        }
        Service {
            child,
            lines,
            readers,
        }
    }

    fn line_count(&self) -> usize {
        self.lines.lock().unwrap().len()
    }

    fn lines_since(&self, from: usize) -> Vec<String> {
        self.lines.lock().unwrap()[from..].to_vec()
    }

    /// SIGTERM, wait for a clean exit, and return every line it wrote.
    async fn stop(mut self) -> Vec<String> {
        let pid = self.child.id().unwrap().to_string();
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        let status = tokio::time::timeout(Duration::from_secs(40), self.child.wait())
            .await
            .expect("exits after SIGTERM")
            .unwrap();
        assert!(status.success(), "exit status {status:?}");
        for r in self.readers {
            r.await.unwrap();
        }
        Arc::try_unwrap(self.lines).unwrap().into_inner().unwrap()
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn worker_binary() -> PathBuf {
    let api = PathBuf::from(env!("CARGO_BIN_EXE_shutoff-api"));
    let worker = api.with_file_name("shutoff-worker");
    assert!(
        worker.exists(),
        "{} is not built: run `cargo build -p shutoff-worker` (cargo test --workspace builds it)",
        worker.display()
    );
    worker
}

/// A full run on this test's database and queues: the API and one worker.
struct Run {
    env: TestEnv,
    api: Service,
    worker: Service,
    api_url: String,
    worker_url: String,
    client: reqwest::Client,
}

impl Run {
    async fn start(pool: PgPool, rust_log: &str) -> Run {
        let env = TestEnv::new(pool);
        let (api_port, health_port) = (free_port(), free_port());
        let common = |extra: &[&str]| -> Vec<String> {
            let mut a: Vec<String> = [
                "--database-url",
                &env.database_url,
                "--queue-prefix",
                &env.topology.prefix,
                "--retry-delays-ms",
                "100,200",
                "--max-attempts",
                "2",
                "--log-format",
                "json",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            a.extend(extra.iter().map(|s| s.to_string()));
            a
        };
        let api = Service::spawn(
            PathBuf::from(env!("CARGO_BIN_EXE_shutoff-api")),
            &common(&["--listen", &format!("127.0.0.1:{api_port}")]),
            rust_log,
        );
        let worker = Service::spawn(
            worker_binary(),
            &common(&[
                "--health-listen",
                &format!("127.0.0.1:{health_port}"),
                "--worker-id",
                "logs-test",
                "--host",
                shutoff_testkit::env::DEFAULT_HOST,
            ]),
            rust_log,
        );
        let run = Run {
            env,
            api,
            worker,
            api_url: format!("http://127.0.0.1:{api_port}"),
            worker_url: format!("http://127.0.0.1:{health_port}"),
            client: reqwest::Client::new(),
        };
        for url in [&run.api_url, &run.worker_url] {
            let ready = run
                .env
                .eventually(Duration::from_secs(30), || async {
                    let r = run.client.get(format!("{url}/readyz")).send().await;
                    matches!(r, Ok(r) if r.status().as_u16() == 200)
                })
                .await;
            assert!(ready, "{url} never became ready");
        }
        // Let the start-up lines (written around readiness) land first.
        tokio::time::sleep(Duration::from_millis(500)).await;
        run
    }

    async fn server(&self, project: &ProjectId, hypervisor: &str) -> Uuid {
        let mut s = NewServer::new(project, &format!("vm-{}", Uuid::new_v4().simple()));
        s.hypervisor = hypervisor.into();
        self.env.server(s).await
    }

    fn action_url(&self, project: &str, server: Uuid) -> String {
        format!("{}/v2/{project}/servers/{server}/action", self.api_url)
    }

    async fn job_state(&self, server: Uuid) -> Option<String> {
        self.env.job_state(server).await
    }
}

/// The request ids of the spans a JSON log line was written in.
fn request_ids(line: &str) -> Vec<String> {
    let v: Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
    v["spans"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["request_id"].as_str().map(String::from))
        .collect()
}

fn message(line: &str) -> String {
    let v: Value = serde_json::from_str(line).unwrap();
    v["message"].as_str().unwrap_or_default().to_string()
}

/// Every line carries `rid`, and the messages in `expected` are among them.
fn all_carry(who: &str, lines: &[String], rid: &str, expected: &[&str]) {
    assert!(!lines.is_empty(), "{who} wrote nothing for {rid}");
    for line in lines {
        assert!(
            request_ids(line).iter().any(|r| r == rid),
            "{who} line without {rid}: {line}"
        );
    }
    let messages: Vec<String> = lines.iter().map(|l| message(l)).collect();
    for m in expected {
        assert!(
            messages.iter().any(|got| got == m),
            "{who} never wrote {m:?} for {rid}: {messages:?}"
        );
    }
}

/// One request of the request-id test and what it must log.
struct Case {
    server: Uuid,
    status: u16,
    /// The job's final state, when the stop is accepted.
    settles_as: Option<&'static str>,
    api_says: &'static [&'static str],
    worker_says: &'static [&'static str],
}

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn every_log_line_of_a_request_and_of_its_job_carries_the_request_id(pool: PgPool) {
    let run = Run::start(pool, OUR_CODE_AT_DEBUG).await;
    let project = run.env.project().await;
    let token = run.env.token(&project, &["member", "reader"]).await;
    let healthy = run.server(&project, "fake://?delay_ms=50").await;
    let flaky = run.server(&project, "fake://?fail=transient").await;

    // Each case: one request, then nothing else until its job has settled,
    // so every line written meanwhile belongs to that request or its job.
    let cases = [
        Case {
            server: healthy,
            status: 202,
            settles_as: Some("succeeded"),
            api_says: &["stop accepted", "response"],
            worker_says: &["powering off", "stopped"],
        },
        Case {
            server: flaky,
            status: 202,
            settles_as: Some("failed"),
            api_says: &["stop accepted", "response"],
            worker_says: &[
                "powering off",
                "transient failure; retrying after back-off",
                "stop failed; fault recorded",
            ],
        },
        // Refused (already stopped): the API's lines only.
        Case {
            server: healthy,
            status: 409,
            settles_as: None,
            api_says: &["response"],
            worker_says: &[],
        },
    ];
    for Case {
        server,
        status,
        settles_as,
        api_says,
        worker_says,
    } in cases
    {
        let (api_from, worker_from) = (run.api.line_count(), run.worker.line_count());
        let resp = run
            .client
            .post(run.action_url(project.as_str(), server))
            .header("x-auth-token", &token)
            .body(r#"{"os-stop": null}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), status);
        let rid = resp.headers()["x-compute-request-id"]
            .to_str()
            .unwrap()
            .to_string();
        if let Some(state) = settles_as {
            let settled = run
                .env
                .eventually(Duration::from_secs(20), || async {
                    run.job_state(server).await.as_deref() == Some(state)
                })
                .await;
            assert!(settled, "job of {rid} never {state}");
        }
        // The ack comes after the result is committed.
        tokio::time::sleep(Duration::from_millis(500)).await;

        all_carry(
            "shutoff-api",
            &run.api.lines_since(api_from),
            &rid,
            api_says,
        );
        let worker_lines = run.worker.lines_since(worker_from);
        if worker_says.is_empty() {
            assert!(worker_lines.is_empty(), "{worker_lines:?}");
        } else {
            all_carry("shutoff-worker", &worker_lines, &rid, worker_says);
        }
    }

    let api_lines = run.api.stop().await;
    let worker_lines = run.worker.stop().await;
    for line in api_lines.iter().chain(&worker_lines) {
        serde_json::from_str::<Value>(line)
            .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
    }
}

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn no_token_appears_in_any_log_line_metric_or_response_of_a_full_run(pool: PgPool) {
    // Everything at trace (a superset of debug): our code, sqlx, lapin, hyper.
    let run = Run::start(pool, "trace").await;
    let project = run.env.project().await;
    let other = run.env.project().await;
    let member = run.env.token(&project, &["member", "reader"]).await;
    let reader = run.env.token(&project, &["reader"]).await;
    let stranger = run.env.token(&other, &["member"]).await;
    let expired = admin::create_token(
        &run.env.pool,
        &project,
        "user-1",
        &["member".into()],
        chrono::Utc::now() - chrono::Duration::minutes(1),
    )
    .await
    .unwrap();
    let unknown = shutoff_core::token::generate();
    let spaced = format!("{} {}", Uuid::new_v4().simple(), Uuid::new_v4().simple());
    let too_long = "t0k".repeat(300);
    let tokens = [
        &member, &reader, &stranger, &expired, &unknown, &spaced, &too_long,
    ];
    let server = run.server(&project, "fake://?delay_ms=20").await;
    let failing = run.server(&project, "fake://?fail=always").await;

    let mut seen = Vec::new(); // every response, headers and body
    let stop = r#"{"os-stop": null}"#;
    let requests: Vec<(reqwest::Method, String, &String, &str, u16)> = vec![
        (
            reqwest::Method::POST,
            run.action_url(project.as_str(), server),
            &member,
            stop,
            202,
        ),
        (
            reqwest::Method::POST,
            run.action_url(project.as_str(), failing),
            &member,
            stop,
            202,
        ),
        (
            reqwest::Method::POST,
            run.action_url(project.as_str(), server),
            &reader,
            stop,
            403,
        ),
        (
            reqwest::Method::POST,
            run.action_url(project.as_str(), server),
            &stranger,
            stop,
            400,
        ),
        (
            reqwest::Method::POST,
            run.action_url(project.as_str(), server),
            &expired,
            stop,
            401,
        ),
        (
            reqwest::Method::POST,
            run.action_url(project.as_str(), server),
            &unknown,
            stop,
            401,
        ),
        (
            reqwest::Method::POST,
            run.action_url(project.as_str(), server),
            &spaced,
            stop,
            401,
        ),
        (
            reqwest::Method::POST,
            run.action_url(project.as_str(), server),
            &too_long,
            stop,
            401,
        ),
        (
            reqwest::Method::POST,
            run.action_url(project.as_str(), server),
            &member,
            "{not json",
            400,
        ),
        (
            reqwest::Method::GET,
            format!("{}/v2/{project}/servers/detail", run.api_url),
            &member,
            "",
            200,
        ),
        (
            reqwest::Method::GET,
            format!("{}/v2/{project}/servers/{server}", run.api_url),
            &member,
            "",
            200,
        ),
        (
            reqwest::Method::GET,
            format!(
                "{}/v2/{project}/servers/{server}/os-instance-actions",
                run.api_url
            ),
            &member,
            "",
            200,
        ),
        (
            reqwest::Method::GET,
            format!("{}/v2/{project}/servers", run.api_url),
            &unknown,
            "",
            401,
        ),
        (
            reqwest::Method::GET,
            format!("{}/v2/{project}/servers", run.api_url),
            &expired,
            "",
            401,
        ),
        (
            reqwest::Method::GET,
            format!("{}/v2/", run.api_url),
            &unknown,
            "",
            200,
        ),
        (
            reqwest::Method::GET,
            format!("{}/no/such/route", run.api_url),
            &member,
            "",
            404,
        ),
        (
            reqwest::Method::DELETE,
            run.action_url(project.as_str(), server),
            &member,
            "",
            405,
        ),
    ];
    for (method, url, token, body, status) in requests {
        let resp = run
            .client
            .request(method.clone(), &url)
            .header("x-auth-token", token.as_str())
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), status, "{method} {url}");
        seen.push(format!("{:?}", resp.headers()));
        seen.push(resp.text().await.unwrap());
    }
    // The local identity service: the token goes in the body (POST) or in
    // X-Subject-Token (GET), and comes back in X-Subject-Token only, by design.
    let identity = format!("{}/identity/v3/auth/tokens", run.api_url);
    let token_body = |t: &str| {
        serde_json::json!({"auth": {"identity": {"methods": ["token"], "token": {"id": t}}}})
            .to_string()
    };
    for (method, body, subject, status) in [
        (reqwest::Method::POST, token_body(&member), None, 201),
        (reqwest::Method::POST, token_body(&unknown), None, 401),
        (reqwest::Method::POST, token_body(&expired), None, 401),
        (
            reqwest::Method::POST,
            "{\"auth\": 1}".to_string(),
            None,
            400,
        ),
        (reqwest::Method::GET, String::new(), Some(&member), 200),
        (reqwest::Method::GET, String::new(), Some(&unknown), 404),
    ] {
        let mut req = run
            .client
            .request(method.clone(), &identity)
            .header("content-type", "application/json")
            .body(body);
        if let Some(subject) = subject {
            req = req
                .header("x-auth-token", member.as_str())
                .header("x-subject-token", subject.as_str());
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status().as_u16(), status, "{method} {identity}");
        let mut headers = resp.headers().clone();
        if let Some(echoed) = headers.remove("x-subject-token") {
            assert_eq!(echoed, member.as_str(), "only a valid token is echoed");
        }
        seen.push(format!("{headers:?}"));
        seen.push(resp.text().await.unwrap());
    }
    for (id, state) in [(server, "succeeded"), (failing, "failed")] {
        let settled = run
            .env
            .eventually(Duration::from_secs(20), || async {
                run.job_state(id).await.as_deref() == Some(state)
            })
            .await;
        assert!(settled, "job of {id} never {state}");
    }
    for url in [&run.api_url, &run.worker_url] {
        for path in ["/metrics", "/healthz", "/readyz"] {
            let resp = run
                .client
                .get(format!("{url}{path}"))
                .header("x-auth-token", member.as_str())
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status().as_u16(), 200, "{url}{path}");
            seen.push(format!("{:?}", resp.headers()));
            seen.push(resp.text().await.unwrap());
        }
    }

    let mut lines = run.api.stop().await;
    lines.extend(run.worker.stop().await);

    // The run really logged at debug, requests and jobs included: a silent
    // run would pass the grep below for nothing.
    assert!(lines.len() > 50, "only {} log lines", lines.len());
    assert!(lines.iter().any(|l| l.contains(r#""level":"DEBUG""#)));
    assert!(lines.iter().any(|l| l.contains("stop accepted")));
    assert!(
        lines
            .iter()
            .any(|l| l.contains("stop failed; fault recorded"))
    );
    assert!(
        seen.iter()
            .any(|s| s.contains("shutoff_jobs_accepted_total 2"))
    );
    for token in tokens {
        // The stored SHA-256 is a lookup key, not for logs either.
        let hash = shutoff_core::token::hash(token);
        for needle in [token.as_str(), hash.as_str()] {
            for line in &lines {
                assert!(!line.contains(needle), "a token in a log line: {line}");
            }
            for s in &seen {
                assert!(!s.contains(needle), "a token in a response: {s}");
            }
        }
    }
}
