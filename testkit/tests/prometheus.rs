//! `deploy/prometheus/shutoff.rules.yml` and `deploy/grafana/shutoff.json`:
//! the rules pass `promtool check rules` and their unit tests (one or more per
//! alert); every metric the rules and the dashboard query is one the API and
//! the worker export (scraped from real ones); and a real Prometheus server
//! scraping a real API and worker, with the shipped rules loaded, fires an
//! alert.
//!
//! promtool and prometheus come from Debian's `prometheus` package (`.ci/run`
//! installs it); without them those tests skip with a message, except in CI.

use shutoff_testkit::clients::repo_root;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use shutoff_testkit::app::{self, TestApp};
use shutoff_testkit::skip;
use sqlx::PgPool;

/// Canonical, as Prometheus names a rule group's file (it cleans the path).
fn rules_path() -> PathBuf {
    repo_root()
        .join("deploy/prometheus/shutoff.rules.yml")
        .canonicalize()
        .unwrap()
}

/// True if `tool --version` runs; otherwise skipped (or, in CI, a failure).
fn have(tool: &str) -> bool {
    let ran = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    skip::runnable(match ran {
        Ok(s) if s.success() => None,
        _ => Some(format!(
            "{tool} is not installed (apt-get install prometheus)"
        )),
    })
}

fn yaml(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap();
    Value::deserialize(serde_yaml::Deserializer::from_str(&text)).unwrap()
}

/// Every rule of the rules file.
fn rules() -> Vec<Value> {
    yaml(&rules_path())["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().clone())
        .collect()
}

/// Every PromQL expression of the dashboard, with Grafana's variables
/// replaced by what Prometheus accepts.
fn dashboard_queries() -> Vec<String> {
    let text = std::fs::read_to_string(repo_root().join("deploy/grafana/shutoff.json")).unwrap();
    let dash: Value = serde_json::from_str(&text).unwrap();
    let mut out = Vec::new();
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            out.push(
                t["expr"]
                    .as_str()
                    .unwrap()
                    .replace("$__rate_interval", "1m"),
            );
        }
    }
    out
}

/// The metric and recording-rule names an expression reads: identifiers
/// starting with `shutoff_` (metrics) or `shutoff:` (recordings), outside
/// string literals (label values).
fn names_in(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut chars = expr.chars().peekable();
    let mut word = String::new();
    let mut flush = |word: &mut String| {
        if word.starts_with("shutoff_") || word.starts_with("shutoff:") {
            names.insert(word.clone());
        }
        word.clear();
    };
    while let Some(c) = chars.next() {
        match c {
            '"' | '\'' | '`' => {
                flush(&mut word);
                while let Some(d) = chars.next() {
                    if d == '\\' {
                        chars.next();
                    } else if d == c {
                        break;
                    }
                }
            }
            c if c.is_ascii_alphanumeric() || c == '_' || c == ':' => word.push(c),
            _ => flush(&mut word),
        }
    }
    flush(&mut word);
    names
}

/// The series names an OpenMetrics exposition offers: each sample's name,
/// and the names each `# TYPE` implies (a family with no sample yet, such as
/// the stops waiting per host while none wait, still declares its type).
fn exported(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split(' ');
            let (name, kind) = (it.next().unwrap(), it.next().unwrap());
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                "info" => &["_info"],
                _ => &[""],
            };
            for s in suffixes {
                names.insert(format!("{name}{s}"));
            }
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_string());
        }
    }
    names
}

async fn scrape(url: String) -> String {
    let resp = reqwest::get(url).await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    resp.text().await.unwrap()
}

#[test]
fn the_rules_pass_promtool_and_each_alert_has_a_unit_test() {
    if !have("promtool") {
        return;
    }
    for args in [
        vec!["check", "rules", "deploy/prometheus/shutoff.rules.yml"],
        vec!["test", "rules", "deploy/prometheus/shutoff.rules.test.yml"],
    ] {
        let out = Command::new("promtool")
            .args(&args)
            .current_dir(repo_root())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {} failed:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Each alert is tested firing (a non-empty exp_alerts), not only silent.
    let tests = yaml(&repo_root().join("deploy/prometheus/shutoff.rules.test.yml"));
    let fired: BTreeSet<&str> = tests["tests"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|t| t["alert_rule_test"].as_array().unwrap())
        .filter(|a| a["exp_alerts"].as_array().is_some_and(|e| !e.is_empty()))
        .map(|a| a["alertname"].as_str().unwrap())
        .collect();
    let rules = rules();
    let alerts: BTreeSet<&str> = rules.iter().filter_map(|r| r["alert"].as_str()).collect();
    assert_eq!(alerts.len(), 8, "{alerts:?}");
    let untested: Vec<_> = alerts.difference(&fired).collect();
    assert!(
        untested.is_empty(),
        "alerts never tested firing: {untested:?}"
    );
}

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn every_metric_the_rules_and_the_dashboard_query_is_one_the_services_export(pool: PgPool) {
    // A family shows in the exposition once it has a sample: one stop
    // carried out (requests, publishes, a power-off) and one waiting for a
    // host no worker serves (the stops waiting and the host gauges).
    let app = app::spawn(pool).await;
    let health = app.worker.as_ref().unwrap().health;
    let quick = app.server("quick").await;
    let gone = app.env.host("m-gone");
    let waiting = app.server_with(|s| s.host = gone.to_string()).await;
    assert_eq!(app.stop(quick).await.status().as_u16(), 202);
    assert_eq!(app.stop(waiting).await.status().as_u16(), 202);
    assert!(app.stopped(quick, Duration::from_secs(15)).await);
    // The API's host census runs every 10 s.
    let counted = app
        .env
        .eventually(Duration::from_secs(25), || async {
            let text = scrape(app.url("/metrics")).await;
            text.contains("shutoff_stops_waiting_oldest_seconds{")
                && text.contains("shutoff_host_up{")
        })
        .await;
    assert!(counted, "{}", scrape(app.url("/metrics")).await);
    let mut exports = exported(&scrape(app.url("/metrics")).await);
    exports.extend(exported(&scrape(format!("http://{health}/metrics")).await));

    let rules = rules();
    let recorded: BTreeSet<String> = rules
        .iter()
        .filter_map(|r| r["record"].as_str().map(str::to_string))
        .collect();
    let mut queried = BTreeSet::new();
    for r in &rules {
        queried.extend(names_in(r["expr"].as_str().unwrap()));
    }
    let from_rules = queried.clone();
    for q in dashboard_queries() {
        queried.extend(names_in(&q));
    }
    // The scan finds what the rules are built on (so it cannot pass empty).
    for must in [
        "shutoff_host_up",
        "shutoff_stops_waiting",
        "shutoff_jobs_dead_lettered_total",
    ] {
        assert!(
            from_rules.contains(must),
            "{must} not found in {from_rules:?}"
        );
    }
    assert!(queried.contains("shutoff_power_off_duration_seconds_bucket"));
    let unknown: Vec<_> = queried
        .iter()
        .filter(|n| !exports.contains(*n) && !recorded.contains(*n))
        .collect();
    assert!(
        unknown.is_empty(),
        "queried but neither exported nor recorded: {unknown:?}\nexported: {exports:?}"
    );
    app.shut_down().await;
}

/// A Prometheus server of this test's own: a private port and data
/// directory, killed and removed on drop (also when the test fails).
struct Prometheus {
    child: Child,
    dir: PathBuf,
    url: String,
    client: reqwest::Client,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Prometheus {
    /// Scrapes the API and the worker every second, evaluates every second.
    async fn start(api: SocketAddr, worker: SocketAddr, rule_files: &[PathBuf]) -> Prometheus {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir =
            std::env::temp_dir().join(format!("shutoff-prometheus-{port}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let files: Vec<String> = rule_files
            .iter()
            .map(|f| format!("{:?}", f.display().to_string()))
            .collect();
        let config = format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
             rule_files: [{}]\n\
             scrape_configs:\n\
             \x20 - job_name: shutoff-api\n\
             \x20   static_configs: [{{targets: [\"{api}\"]}}]\n\
             \x20 - job_name: shutoff-worker\n\
             \x20   static_configs: [{{targets: [\"{worker}\"]}}]\n",
            files.join(", ")
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("prometheus starts");
        let p = Prometheus {
            child,
            dir,
            url: format!("http://127.0.0.1:{port}"),
            client: reqwest::Client::new(),
        };
        for _ in 0..100 {
            if let Ok(r) = p.client.get(format!("{}/-/ready", p.url)).send().await
                && r.status().is_success()
            {
                return p;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("prometheus never became ready:\n{}", p.log());
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    async fn api(&self, path: &str, query: &[(&str, &str)]) -> Value {
        let v: Value = self
            .client
            .get(format!("{}{path}", self.url))
            .query(query)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["status"], "success", "{path} {query:?}: {v}");
        v["data"].clone()
    }

    async fn query(&self, expr: &str) -> Vec<Value> {
        self.api("/api/v1/query", &[("query", expr)]).await["result"]
            .as_array()
            .unwrap()
            .clone()
    }

    /// The state (`inactive`, `pending`, `firing`) of alert `name` in the
    /// rule group loaded from `file`.
    async fn state(&self, file: &Path, name: &str) -> String {
        let data = self.api("/api/v1/rules", &[("type", "alert")]).await;
        let file = file.display().to_string();
        data["groups"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|g| g["file"] == file.as_str())
            .flat_map(|g| g["rules"].as_array().unwrap())
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("no alert {name} loaded from {file}"))["state"]
            .as_str()
            .unwrap()
            .to_string()
    }
}

/// The shipped rules with every `for:` cut to 0s (and their group renamed),
/// so an alert that waits minutes in production fires within the test.
fn rules_without_for(dir: &Path) -> PathBuf {
    let shipped = std::fs::read_to_string(rules_path()).unwrap();
    let mut cut = String::new();
    let mut changed = 0;
    for line in shipped.lines() {
        match line.trim_start().strip_prefix("for: ") {
            Some(_) => {
                changed += 1;
                cut.push_str(&line.replace(line.trim_start(), "for: 0s"));
            }
            None => cut.push_str(&line.replace("- name: shutoff", "- name: shutoff-without-for")),
        }
        cut.push('\n');
    }
    assert_eq!(changed, 8, "one `for:` per alert");
    let path = dir.join("shutoff-without-for.rules.yml");
    std::fs::write(&path, cut).unwrap();
    path
}

async fn until(timeout: Duration, mut f: impl AsyncFnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    false
}

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn a_real_prometheus_scraping_the_api_and_a_worker_fires_the_shipped_rules(pool: PgPool) {
    if !have("prometheus") {
        return;
    }
    let app: TestApp = app::spawn(pool).await;
    let broken = app
        .server_with(|s| s.hypervisor = "fake://?fail=always".into())
        .await;
    let worker = app.worker.as_ref().unwrap().health;
    let scratch = std::env::temp_dir().join(format!("shutoff-rules-{}", app.env.topology.prefix));
    std::fs::create_dir_all(&scratch).unwrap();
    let short = rules_without_for(&scratch);
    let prom = Prometheus::start(app.addr, worker, &[rules_path(), short.clone()]).await;

    // Both targets scraped once, so the counters' zeros are in the database
    // before anything moves them.
    let scraped = until(Duration::from_secs(15), async || {
        let up = prom.query("up == 1").await;
        up.len() == 2
    })
    .await;
    assert!(
        scraped,
        "targets never up: {:?}\n{}",
        prom.query("up").await,
        prom.log()
    );

    // A stop the hypervisor refuses for good, and a message no worker can parse.
    assert_eq!(app.stop(broken).await.status().as_u16(), 202);
    app.env
        .publish_raw(&app.env.work_queue(), b"not a job")
        .await;

    // The shipped file's dead-letter alert has no `for`: it fires as it is.
    // The failing-stops alert waits 10 minutes in the shipped file (pending)
    // and fires at once in the copy without `for`.
    let fired = until(Duration::from_secs(30), async || {
        prom.state(&rules_path(), "ShutoffStopsDeadLettered").await == "firing"
            && prom.state(&short, "ShutoffStopsFailing").await == "firing"
    })
    .await;
    let alerts = prom.api("/api/v1/alerts", &[]).await;
    assert!(fired, "alerts: {alerts}\n{}", prom.log());
    assert_eq!(
        prom.state(&rules_path(), "ShutoffStopsFailing").await,
        "pending"
    );
    let firing: BTreeSet<&str> = alerts["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["state"] == "firing")
        .map(|a| a["labels"]["alertname"].as_str().unwrap())
        .collect();
    assert!(firing.contains("ShutoffStopsDeadLettered"), "{alerts}");
    // Nothing here answers 5xx or fails to publish, not even without `for`.
    // (The host alerts may flicker: the API's first census can run before
    // the worker's first heartbeat.)
    for quiet in [
        "ShutoffApi5xx",
        "ShutoffRelayBacklog",
        "ShutoffAcceptLatencyHigh",
    ] {
        assert!(!firing.contains(quiet), "{quiet}: {alerts}");
    }

    // Every dashboard query is valid PromQL on real data, and the stop
    // panels show the stop that just failed.
    for q in dashboard_queries() {
        prom.query(&q).await;
    }
    // Over the whole test, not the dashboard's last minute: on a loaded
    // machine more than a minute can pass between the zeros' scrape and
    // here, and a rate over samples that are all 1 is 0. Waited for, not
    // asked once: the alerts above come from the worker's scrapes, and on
    // a loaded machine the API's scrape that saw the stop (its timeout is
    // the 1 s interval) may not have landed yet.
    for q in [
        "sum(increase(shutoff_jobs_accepted_total[10m])) > 0",
        "sum(increase(shutoff_jobs_failed_total[10m])) > 0",
    ] {
        let seen = until(Duration::from_secs(30), async || {
            !prom.query(q).await.is_empty()
        })
        .await;
        assert!(
            seen,
            "{q} stayed empty; the counters: {:?} {:?}; targets: {:?}\n{}",
            prom.query("shutoff_jobs_accepted_total[10m]").await,
            prom.query("shutoff_jobs_failed_total[10m]").await,
            prom.query("up").await,
            prom.log()
        );
    }

    drop(prom);
    let _ = std::fs::remove_dir_all(&scratch);
    app.shut_down().await;
}
