//! Keystone mode against a real OpenStack Keystone (30.0.0 from PyPI, run by
//! tests/keystone/run_keystone.py): the `openstack` CLI finds our compute
//! endpoint in Keystone's catalog and stops a server with a password login;
//! roles (member, reader, admin), revoked tokens, foreign project ids, the
//! validation cache, a revoked service token and a Keystone outage behave as
//! keystonemiddleware in front of Nova does.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use clap::Parser;
use reqwest::StatusCode;
use serde_json::{Value, json};
use shutoff_api::settings::AuthMode;
use shutoff_core::ids::ProjectId;
use shutoff_core::store::admin::{self, NewServer};
use shutoff_testkit::app::{Options, TestApp, fault, spawn_with};
use shutoff_testkit::clients::{CLOUD_STOPS, assert_vm_state, check_clouds, repo_root, venv};
use sqlx::PgPool;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};

const ADMIN_PASSWORD: &str = "admin-secret";
const PASSWORD: &str = "user-secret";

/// A throwaway Keystone; killed, and its directory removed, when dropped (it
/// also exits by itself when its stdin closes, should this process die first).
struct KeystoneProcess {
    child: Child,
    _stdin: ChildStdin,
    /// `http://127.0.0.1:PORT/v3`
    url: String,
    setup_secs: f64,
    /// Its database, keys and log (`keystone.log`).
    dir: PathBuf,
}

impl Drop for KeystoneProcess {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        if std::thread::panicking() {
            eprintln!(
                "Keystone's log: {}",
                self.dir.join("keystone.log").display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl KeystoneProcess {
    async fn start(venv: &Path) -> Self {
        Self::start_with(venv, &[]).await
    }

    /// With more arguments of run_keystone.py (e.g. `--tls-cert`).
    async fn start_with(venv: &Path, extra: &[&std::ffi::OsStr]) -> Self {
        let dir = std::env::temp_dir().join(format!("shutoff-keystone-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("keystone.log");
        let mut child = Command::new(venv.join("bin/python"))
            .arg(repo_root().join("tests/keystone/run_keystone.py"))
            .args(["--admin-password", ADMIN_PASSWORD])
            .arg("--workdir")
            .arg(&dir)
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .kill_on_drop(true)
            .spawn()
            .expect("run_keystone.py starts");
        let stdin = child.stdin.take().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let ready = tokio::time::timeout(Duration::from_secs(180), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some(rest) = line.strip_prefix("KEYSTONE READY ") {
                    return Some(rest.to_string());
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("Keystone did not start; see {}", log.display()));
        let (url, secs) = ready.split_once(" setup_secs=").unwrap();
        KeystoneProcess {
            child,
            _stdin: stdin,
            url: url.to_string(),
            setup_secs: secs.parse().unwrap(),
            dir,
        }
    }
}

/// The API's settings for validating tokens with the Keystone at `url`, as
/// its `shutoff` service user.
fn keystone_mode(s: &mut shutoff_api::Settings, url: String) {
    s.auth = AuthMode::Keystone;
    s.keystone.url = Some(url);
    s.keystone.username = Some("shutoff".into());
    s.keystone.password = Some(PASSWORD.into());
    s.keystone.project = Some("service".into());
}

/// The API (and a worker) validating tokens with the Keystone at `url`, and
/// registered in that Keystone's catalog as the compute service, so the
/// clients find it there.
async fn api_in_catalog(pool: PgPool, url: &str, identity: &Identity) -> TestApp {
    let url = url.to_string();
    let app = spawn_with(
        pool,
        Options {
            configure: Some(Box::new(move |s| keystone_mode(s, url))),
            ..Options::default()
        },
    )
    .await;
    let compute = identity
        .create("service", json!({"type": "compute", "name": "nova"}))
        .await;
    identity
        .create(
            "endpoint",
            json!({"service_id": compute, "interface": "public", "region_id": "RegionOne",
                   "url": format!("http://{}/v2/%(project_id)s", app.addr)}),
        )
        .await;
    app
}

/// Keystone's REST API, as its admin.
struct Identity {
    http: reqwest::Client,
    url: String,
    admin: String,
}

impl Identity {
    async fn new(url: &str) -> Self {
        Self::with_http(url, reqwest::Client::builder().no_proxy().build().unwrap()).await
    }

    async fn with_http(url: &str, http: reqwest::Client) -> Self {
        let mut identity = Identity {
            http,
            url: url.to_string(),
            admin: String::new(),
        };
        identity.admin = identity.token("admin", ADMIN_PASSWORD, "admin").await;
        identity
    }

    /// A project-scoped token, by password.
    async fn token(&self, user: &str, password: &str, project: &str) -> String {
        let body = json!({"auth": {
            "identity": {"methods": ["password"], "password": {"user": {
                "name": user, "domain": {"id": "default"}, "password": password}}},
            "scope": {"project": {"name": project, "domain": {"id": "default"}}},
        }});
        let resp = self
            .http
            .post(format!("{}/auth/tokens?nocatalog", self.url))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED, "token for {user}");
        resp.headers()["x-subject-token"]
            .to_str()
            .unwrap()
            .to_string()
    }

    /// POSTs `{kind: body}` to `/v3/{kind}s` and returns the new id.
    async fn create(&self, kind: &str, body: Value) -> String {
        let resp = self
            .http
            .post(format!("{}/{kind}s", self.url))
            .header("x-auth-token", &self.admin)
            .json(&json!({ kind: body }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED, "create {kind}");
        let created: Value = resp.json().await.unwrap();
        created[kind]["id"].as_str().unwrap().to_string()
    }

    async fn project(&self, name: &str) -> String {
        self.create("project", json!({"name": name, "domain_id": "default"}))
            .await
    }

    /// A user with `role` on `project`.
    async fn user(&self, name: &str, project: &str, role: &str) -> String {
        let user = self
            .create(
                "user",
                json!({"name": name, "domain_id": "default", "password": PASSWORD}),
            )
            .await;
        self.grant(&user, project, role).await;
        user
    }

    async fn grant(&self, user: &str, project: &str, role: &str) {
        let roles: Value = self
            .http
            .get(format!("{}/roles?name={role}", self.url))
            .header("x-auth-token", &self.admin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let role_id = roles["roles"][0]["id"].as_str().expect("role exists");
        let resp = self
            .http
            .put(format!(
                "{}/projects/{project}/users/{user}/roles/{role_id}",
                self.url
            ))
            .header("x-auth-token", &self.admin)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::NO_CONTENT, "grant {role}");
    }

    async fn set_enabled(&self, user: &str, enabled: bool) {
        let resp = self
            .http
            .patch(format!("{}/users/{user}", self.url))
            .header("x-auth-token", &self.admin)
            .json(&json!({"user": {"enabled": enabled}}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "enable/disable user");
    }

    async fn revoke(&self, token: &str) {
        let resp = self
            .http
            .delete(format!("{}/auth/tokens", self.url))
            .header("x-auth-token", &self.admin)
            .header("x-subject-token", token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::NO_CONTENT, "revoke");
    }

    /// How many `what` (`"GET /v3/auth/tokens"`) Keystone has served.
    async fn served(&self, what: &str) -> u64 {
        let base = self.url.trim_end_matches("/v3");
        let counts: Value = self
            .http
            .get(format!("{base}/__requests"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        counts[what].as_u64().unwrap_or(0)
    }
}

/// The `openstack` CLI logged in with a password, finding the compute
/// endpoint in Keystone's catalog.
struct Cli {
    bin: PathBuf,
    auth_url: String,
}

impl Cli {
    async fn run(&self, user: &str, project: &str, args: &[&str]) -> std::process::Output {
        let mut cmd = Command::new(&self.bin);
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", std::env::temp_dir())
            .env("NO_PROXY", "*")
            .args(["--os-auth-url", &self.auth_url])
            .args(["--os-identity-api-version", "3"])
            .args(["--os-username", user, "--os-password", PASSWORD])
            .args(["--os-project-name", project])
            .args(["--os-user-domain-name", "Default"])
            .args(["--os-project-domain-name", "Default"])
            .args(["--os-region-name", "RegionOne"])
            .args(args)
            .stdin(Stdio::null());
        tokio::time::timeout(Duration::from_secs(90), cmd.output())
            .await
            .expect("openstack CLI finished in 90 s")
            .unwrap()
    }
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn keystone_users_stop_servers_through_the_catalog_with_nova_policy(pool: PgPool) {
    let started = Instant::now();
    let Some(keystone_venv) = venv("keystone-venv").await else {
        return;
    };
    let Some(clients_venv) = venv("py-clients-venv").await else {
        return;
    };
    let venvs_secs = started.elapsed().as_secs_f64();

    // Arrange: Keystone with a project, a member, a reader and our service
    // account; the instances' project row (instances reference it).
    let mut keystone = KeystoneProcess::start(&keystone_venv).await;
    let identity = Identity::new(&keystone.url).await;
    let demo = identity.project("demo").await;
    let other = identity.project("other").await;
    let service = identity.project("service").await;
    let alice = identity.user("alice", &demo, "member").await;
    identity.user("rita", &demo, "reader").await;
    let service_user = identity.user("shutoff", &service, "service").await;
    let setup_secs = started.elapsed().as_secs_f64() - venvs_secs;

    let demo_id = ProjectId::parse(&demo).expect("Keystone project ids are 32 hex");
    admin::create_project(&pool, &demo_id, "demo")
        .await
        .unwrap();
    let vm_member = admin::create_server(&pool, &NewServer::new(&demo_id, "vm-member"))
        .await
        .unwrap();
    let vm_reader = admin::create_server(&pool, &NewServer::new(&demo_id, "vm-reader"))
        .await
        .unwrap();

    let app = api_in_catalog(pool, &keystone.url, &identity).await;

    // The member stops a server by name through the catalog and sees it SHUTOFF.
    let cli = Cli {
        bin: clients_venv.join("bin/openstack"),
        auth_url: keystone.url.clone(),
    };
    let cli_started = Instant::now();
    let out = cli
        .run("alice", "demo", &["server", "stop", "vm-member"])
        .await;
    assert!(out.status.success(), "member's stop: {}", text(&out));
    let mut shown = Value::Null;
    for _ in 0..30 {
        let out = cli
            .run(
                "alice",
                "demo",
                &["server", "show", "vm-member", "-f", "json"],
            )
            .await;
        assert!(out.status.success(), "server show: {}", text(&out));
        shown = serde_json::from_slice(&out.stdout).unwrap();
        if shown["status"] == "SHUTOFF" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(shown["status"], "SHUTOFF", "{shown}");
    assert_eq!(shown["id"], vm_member.to_string());
    assert_eq!(app.instance_state(vm_member).await.0, "stopped");
    let actor: String =
        sqlx::query_scalar("SELECT user_id FROM instance_actions WHERE instance_uuid = $1")
            .bind(vm_member)
            .fetch_one(&app.env.pool)
            .await
            .unwrap();
    assert_eq!(
        actor.len(),
        32,
        "the action records Keystone's user id: {actor}"
    );

    // The reader may look but not stop: 403, and the server keeps running.
    let out = cli
        .run("rita", "demo", &["server", "stop", "vm-reader"])
        .await;
    let said = text(&out);
    assert!(!out.status.success(), "reader's stop was accepted");
    assert!(
        said.contains("Policy doesn't allow os_compute_api:servers:stop") && said.contains("403"),
        "{said}"
    );
    assert_eq!(app.instance_state(vm_reader).await.0, "active");
    let cli_secs = cli_started.elapsed().as_secs_f64();

    let servers = format!("/v2/{demo}/servers");
    let get = |path: String, token: Option<String>| {
        let mut req = app.client.get(app.url(&path));
        if let Some(t) = token {
            req = req.header("x-auth-token", t);
        }
        async move { req.send().await.unwrap() }
    };
    let www_authenticate = format!("Keystone uri=\"{}\"", keystone.url);

    // Missing, unknown and revoked tokens: 401 naming Keystone.
    let revoked = identity.token("alice", PASSWORD, "demo").await;
    identity.revoke(&revoked).await;
    for token in [None, Some("gAAAAAB-not-a-token".to_string()), Some(revoked)] {
        let resp = get(servers.clone(), token).await;
        assert_eq!(
            resp.headers()["www-authenticate"],
            www_authenticate.as_str()
        );
        fault(resp, 401, "unauthorized").await;
    }

    // A real token with another project's id in the URL: Nova's 400.
    let alice_demo = identity.token("alice", PASSWORD, "demo").await;
    let msg = fault(
        get(format!("/v2/{other}/servers"), Some(alice_demo.clone())).await,
        400,
        "badRequest",
    )
    .await;
    assert!(msg.starts_with("Malformed request URL"), "{msg}");

    // A Keystone project with no row of ours works; it just has no servers.
    identity.grant(&alice, &other, "member").await;
    let alice_other = identity.token("alice", PASSWORD, "other").await;
    let resp = get(format!("/v2/{other}/servers"), Some(alice_other)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.json::<Value>().await.unwrap(), json!({"servers": []}));

    // One validation serves many requests, concurrent ones included.
    let fresh = identity.token("alice", PASSWORD, "demo").await;
    let before = identity.served("GET /v3/auth/tokens").await;
    let concurrent =
        futures::future::join_all((0..20).map(|_| get(servers.clone(), Some(fresh.clone())))).await;
    assert!(concurrent.iter().all(|r| r.status() == 200));
    for _ in 0..30 {
        assert_eq!(
            get(servers.clone(), Some(fresh.clone())).await.status(),
            200
        );
    }
    let validations = identity.served("GET /v3/auth/tokens").await - before;
    assert_eq!(validations, 1, "50 requests with one new token");

    // Keystone's admin (of its own project) stops any project's server.
    let projects: Value = identity
        .http
        .get(format!("{}/projects?name=admin", identity.url))
        .header("x-auth-token", &identity.admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let admin_project = projects["projects"][0]["id"].as_str().unwrap();
    let resp = app
        .action(
            admin_project,
            &vm_reader.to_string(),
            Some(&identity.admin),
            r#"{"os-stop": null}"#,
        )
        .await;
    assert_eq!(resp.status(), 202);
    assert!(app.stopped(vm_reader, Duration::from_secs(20)).await);

    // Our service token revoked (Keystone revokes a disabled user's tokens):
    // the next validation is refused, we authenticate again once, and the
    // caller never notices.
    identity.set_enabled(&service_user, false).await;
    identity.set_enabled(&service_user, true).await;
    // Keystone's revocation events have one-second granularity.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let after_revocation = identity.token("alice", PASSWORD, "demo").await;
    let logins = identity.served("POST /v3/auth/tokens").await;
    assert_eq!(
        get(servers.clone(), Some(after_revocation)).await.status(),
        200
    );
    assert_eq!(
        identity.served("POST /v3/auth/tokens").await - logins,
        1,
        "one new service token"
    );

    // Keystone down: a token not yet validated gets 503, never a pass; a
    // token validated before keeps working until its cache entry ends, as
    // with keystonemiddleware.
    let unvalidated = identity.token("alice", PASSWORD, "demo").await;
    keystone.child.kill().await.unwrap();
    let resp = get(servers.clone(), Some(unvalidated)).await;
    fault(resp, 503, "serviceUnavailable").await;
    let down = app
        .action(
            &demo,
            &vm_member.to_string(),
            Some("gAAAAAB-other"),
            r#"{"os-stop": null}"#,
        )
        .await;
    fault(down, 503, "serviceUnavailable").await;
    assert_eq!(get(servers.clone(), Some(fresh)).await.status(), 200);

    app.shut_down().await;
    // Straight to stderr, past the test harness's capture, so CI logs show it.
    use std::io::Write;
    writeln!(
        std::io::stderr(),
        "keystone: venvs {venvs_secs:.1}s, Keystone up in {:.1}s (setup incl. users {setup_secs:.1}s), \
         CLI stop+show+reader {cli_secs:.1}s, validations {validations} for 50 requests, \
         test {:.1}s",
        keystone.setup_secs,
        started.elapsed().as_secs_f64(),
    )
    .unwrap();
}

/// A clouds.yaml cloud that logs in to Keystone with a password.
fn keystone_cloud(name: &str, auth_url: &str, user: &str) -> String {
    format!(
        "  {name}:\n    auth_type: password\n    auth:\n      auth_url: {auth_url}\n      \
         username: {user}\n      password: {PASSWORD}\n      project_name: demo\n      \
         user_domain_name: Default\n      project_domain_name: Default\n    \
         region_name: RegionOne\n    identity_api_version: 3\n"
    )
}

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn keystone_clouds_list_stop_and_show_servers_with_the_cli_sdk_and_novaclient(pool: PgPool) {
    let started = Instant::now();
    let Some(keystone_venv) = venv("keystone-venv").await else {
        return;
    };
    let Some(clients_venv) = venv("py-clients-venv").await else {
        return;
    };
    let keystone = KeystoneProcess::start(&keystone_venv).await;
    let identity = Identity::new(&keystone.url).await;
    let demo = identity.project("demo").await;
    let service = identity.project("service").await;
    identity.user("alice", &demo, "member").await;
    identity.user("adam", &demo, "admin").await;
    identity.user("rita", &demo, "reader").await;
    identity.user("shutoff", &service, "service").await;

    let demo_id = ProjectId::parse(&demo).expect("Keystone project ids are 32 hex");
    admin::create_project(&pool, &demo_id, "demo")
        .await
        .unwrap();
    for name in CLOUD_STOPS {
        admin::create_server(&pool, &NewServer::new(&demo_id, name))
            .await
            .unwrap();
    }
    let mut off = NewServer::new(&demo_id, "cl-off");
    off.host = "rack-2".into();
    off.vm_state = shutoff_core::state::VmState::Stopped;
    admin::create_server(&pool, &off).await.unwrap();
    let mut idle = NewServer::new(&demo_id, "cl-idle");
    idle.host = "rack-2".into();
    admin::create_server(&pool, &idle).await.unwrap();

    // The catalog comes from Keystone: shutoff is its compute service.
    let app = api_in_catalog(pool, &keystone.url, &identity).await;
    // And shutoff's own identity service is not there.
    let resp = app
        .client
        .get(app.url("/identity/v3"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);

    let dir = std::env::temp_dir().join(format!("shutoff-clouds-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("clouds.yaml");
    let yaml = format!(
        "clouds:\n{}{}{}",
        keystone_cloud("member", &keystone.url, "alice"),
        keystone_cloud("admin", &keystone.url, "adam"),
        keystone_cloud("reader", &keystone.url, "rita"),
    );
    std::fs::write(&config, yaml).unwrap();
    let setup_secs = started.elapsed().as_secs_f64();

    check_clouds(&clients_venv, &config).await;
    assert_vm_state(&app.env.pool, &CLOUD_STOPS, "stopped").await;
    std::fs::remove_dir_all(&dir).ok();
    app.shut_down().await;
    use std::io::Write;
    writeln!(
        std::io::stderr(),
        "keystone clouds.yaml: setup (venvs, Keystone, users) {setup_secs:.1}s, test {:.1}s",
        started.elapsed().as_secs_f64(),
    )
    .unwrap();
}

/// Keystone over https (TLS on Keystone's own socket, a certificate for
/// `localhost` from a CA made here): with `KEYSTONE_CA_FILE` the API
/// validates tokens through it; with the wrong CA, or by a name the
/// certificate does not carry, every validation is refused in the handshake,
/// the caller gets 503 (never a pass, never a 401) and the error names the
/// TLS failure.
#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn keystone_over_https_needs_the_right_ca_and_host_name(pool: PgPool) {
    use shutoff_api::keystone::client::KeystoneClient;
    let started = Instant::now();
    let Some(keystone_venv) = venv("keystone-venv").await else {
        return;
    };
    let pki = shutoff_testkit::tls::Pki::new();
    let keystone = KeystoneProcess::start_with(
        &keystone_venv,
        &[
            "--tls-cert".as_ref(),
            pki.server_cert.as_os_str(),
            "--tls-key".as_ref(),
            pki.server_key.as_os_str(),
        ],
    )
    .await;
    assert!(
        keystone.url.starts_with("https://localhost:"),
        "{}",
        keystone.url
    );
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&pki.ca).unwrap()).unwrap();
    let http = reqwest::Client::builder()
        .no_proxy()
        .add_root_certificate(ca)
        .build()
        .unwrap();
    let identity = Identity::with_http(&keystone.url, http).await;
    let demo = identity.project("demo").await;
    let service = identity.project("service").await;
    identity.user("alice", &demo, "member").await;
    identity.user("shutoff", &service, "service").await;
    let alice = identity.token("alice", PASSWORD, "demo").await;
    let demo_id = ProjectId::parse(&demo).unwrap();
    admin::create_project(&pool, &demo_id, "demo")
        .await
        .unwrap();

    let settings = |url: &str, ca: &Path| {
        let mut s = shutoff_api::Settings::parse_from(["shutoff-api"]).keystone;
        s.url = Some(url.to_string());
        s.ca_file = Some(ca.to_path_buf());
        s.username = Some("shutoff".into());
        s.password = Some(PASSWORD.into());
        s.project = Some("service".into());
        s
    };
    let validate = |url: String, ca: PathBuf| {
        let s = settings(&url, &ca);
        let token = alice.clone();
        async move {
            KeystoneClient::new(&url, &s, Duration::from_secs(5))
                .unwrap()
                .validate(&token)
                .await
        }
    };

    // The right CA and name: Keystone says whose token it is.
    let info = validate(keystone.url.clone(), pki.ca.clone())
        .await
        .expect("validated over https")
        .expect("a valid token");
    assert_eq!(info.project_id.as_deref(), Some(demo.as_str()));

    // The wrong CA, and the right CA for the wrong name (127.0.0.1: the
    // certificate names localhost only), are refused in the handshake.
    let by_address = keystone.url.replace("localhost", "127.0.0.1");
    for (url, ca, why) in [
        (
            keystone.url.clone(),
            pki.other_ca.clone(),
            "invalid peer certificate: UnknownIssuer",
        ),
        (
            by_address,
            pki.ca.clone(),
            r#"certificate not valid for name "127.0.0.1""#,
        ),
    ] {
        let e = validate(url.clone(), ca)
            .await
            .expect_err("refused")
            .to_string();
        assert!(
            e.starts_with("Keystone is unreachable") && e.contains(why),
            "{url}: {e}"
        );
    }

    // The API the same: the right CA serves the caller, the wrong one 503.
    let servers = format!("/v2/{demo}/servers");
    for (ca, status) in [(pki.ca.clone(), 200), (pki.other_ca.clone(), 503)] {
        let url = keystone.url.clone();
        let pool = pool.clone();
        let app = spawn_with(
            pool,
            Options {
                with_worker: false,
                configure: Some(Box::new(move |s| {
                    keystone_mode(s, url);
                    s.keystone.ca_file = Some(ca);
                })),
                ..Options::default()
            },
        )
        .await;
        let resp = app
            .client
            .get(app.url(&servers))
            .header("x-auth-token", &alice)
            .send()
            .await
            .unwrap();
        if status == 200 {
            assert_eq!(resp.status(), 200);
        } else {
            fault(resp, 503, "serviceUnavailable").await;
        }
        app.shut_down().await;
    }
    use std::io::Write;
    writeln!(
        std::io::stderr(),
        "keystone over https: Keystone up in {:.1}s, test {:.1}s",
        keystone.setup_secs,
        started.elapsed().as_secs_f64()
    )
    .unwrap();
}
