//! `deploy/kubernetes/`, the kustomize base: it renders with `kubectl
//! kustomize`, every manifest validates against the Kubernetes schemas offline
//! (PyPI's `kubernetes-validate`, in a venv under target/ made by
//! `scripts/kube-validate-venv`), and every environment variable a container
//! is given is one its binary reads (its clap definition, the one place the
//! binaries read settings from), so the manifests cannot drift from the code.
//!
//! Without kubectl or PyPI these tests skip with a message, except in CI
//! (`.ci/run` installs the venv; kubectl is on the machine).

use shutoff_testkit::clients::repo_root;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use clap::CommandFactory;
use serde::Deserialize;
use serde_json::Value;
use shutoff_testkit::skip;

/// The Kubernetes release whose schemas the manifests are checked against:
/// the one of this machine's kubectl (v1.32).
const KUBERNETES_VERSION: &str = "1.32.0";

/// `kubectl kustomize deploy/kubernetes`, or None (skipped) without kubectl.
fn render() -> Option<String> {
    let out = match Command::new("kubectl")
        .arg("kustomize")
        .arg(repo_root().join("deploy/kubernetes"))
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            skip::runnable(Some(format!("kubectl cannot be run ({e})")));
            return None;
        }
    };
    assert!(
        out.status.success(),
        "kubectl kustomize deploy/kubernetes failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8(out.stdout).unwrap())
}

/// Every document of a multi-document YAML stream.
fn documents(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in the rendered manifests"))
}

/// The containers of every pod template, with the kind and name of their workload.
fn containers(docs: &[Value]) -> Vec<(String, &Value)> {
    let mut out = Vec::new();
    for d in docs {
        let spec = &d["spec"]["template"]["spec"];
        for list in ["initContainers", "containers"] {
            for c in spec[list].as_array().into_iter().flatten() {
                let name = |v: &Value| v.as_str().unwrap_or("?").to_string();
                out.push((
                    format!(
                        "{} {}/{}",
                        name(&d["kind"]),
                        name(&d["metadata"]["name"]),
                        name(&c["name"])
                    ),
                    c,
                ));
            }
        }
    }
    out
}

/// The environment variables a binary reads: every `env` of its clap
/// definition along the subcommand path the container runs (`shutoff-admin
/// migrate`), plus `RUST_LOG` for the two services (their log filter).
fn variables_read_by(command: &[String]) -> BTreeSet<String> {
    let (mut cmd, services_log_filter) = match command[0].as_str() {
        "shutoff-api" => (shutoff_api::Settings::command(), true),
        "shutoff-worker" => (shutoff_worker::Settings::command(), true),
        "shutoff-admin" => (shutoff_admin::Cli::command(), false),
        other => panic!("a container runs {other}, which is none of shutoff's binaries"),
    };
    let mut read = BTreeSet::new();
    let mut words = command[1..].iter().filter(|w| !w.starts_with('-'));
    loop {
        for a in cmd.get_arguments() {
            if let Some(env) = a.get_env() {
                read.insert(env.to_string_lossy().into_owned());
            }
        }
        let Some(word) = words.next() else { break };
        cmd = cmd
            .find_subcommand(word)
            .unwrap_or_else(|| panic!("{} has no subcommand {word}", command[0]))
            .clone();
    }
    if services_log_filter {
        // The services read RUST_LOG through tracing's EnvFilter, not clap.
        let telemetry = std::fs::read_to_string(repo_root().join("core/src/telemetry.rs")).unwrap();
        assert!(telemetry.contains("EnvFilter::try_from_default_env"));
        read.insert("RUST_LOG".into());
    }
    read
}

fn keys(data: &Value) -> BTreeSet<String> {
    data.as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

#[test]
fn the_manifests_render_and_validate_against_the_kubernetes_schemas() {
    let Some(rendered) = render() else { return };
    let venv = Command::new(repo_root().join("scripts/kube-validate-venv")).output();
    let venv = match venv {
        Ok(out) if out.status.success() => {
            PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
        }
        Ok(out) => {
            skip::runnable(Some(format!(
                "scripts/kube-validate-venv could not install kubernetes-validate from PyPI:\n{}",
                String::from_utf8_lossy(&out.stderr)
            )));
            return;
        }
        Err(e) => panic!("scripts/kube-validate-venv cannot be run: {e}"),
    };

    // Each kind the base promises, so an emptied kustomization cannot pass.
    let docs = documents(&rendered);
    let mut kinds: Vec<String> = docs
        .iter()
        .map(|d| d["kind"].as_str().unwrap().to_string())
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "ConfigMap",
            "DaemonSet",
            "Deployment",
            "Job",
            "PodDisruptionBudget",
            "Service",
            "Service"
        ],
        "{rendered}"
    );

    let file = std::env::temp_dir().join(format!("shutoff-kustomize-{}.yaml", std::process::id()));
    std::fs::write(&file, &rendered).unwrap();
    let out = Command::new(venv.join("bin/kubernetes-validate"))
        .args(["--strict", "--quiet", "-k", KUBERNETES_VERSION])
        .arg(&file)
        .arg(repo_root().join("deploy/kubernetes/secret.example.yaml"))
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&file);
    assert!(
        out.status.success(),
        "the manifests do not validate against Kubernetes {KUBERNETES_VERSION}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn every_variable_the_manifests_set_is_one_its_binary_reads() {
    let Some(rendered) = render() else { return };
    let docs = documents(&rendered);
    let config = keys(&find(&docs, "ConfigMap", "shutoff-config")["data"]);
    let example =
        std::fs::read_to_string(repo_root().join("deploy/kubernetes/secret.example.yaml")).unwrap();
    let secret = keys(&documents(&example)[0]["stringData"]);
    assert!(secret.contains("DATABASE_URL") && secret.contains("AMQP_URL"));

    let mut checked = 0;
    for (workload, c) in containers(&docs) {
        let command: Vec<String> = c["command"]
            .as_array()
            .unwrap_or_else(|| {
                panic!("{workload} names no command (the image's default is shutoff-api)")
            })
            .iter()
            .map(|w| w.as_str().unwrap().to_string())
            .collect();
        let read = variables_read_by(&command);
        let mut given = BTreeSet::new();
        for e in c["env"].as_array().into_iter().flatten() {
            given.insert(e["name"].as_str().unwrap().to_string());
            let from = &e["valueFrom"];
            if let Some(key) = from["secretKeyRef"]["key"].as_str() {
                assert!(
                    secret.contains(key),
                    "{workload}: the Secret example has no {key}"
                );
            }
            if let Some(key) = from["configMapKeyRef"]["key"].as_str() {
                assert!(
                    config.contains(key),
                    "{workload}: shutoff-config has no {key}"
                );
            }
        }
        for from in c["envFrom"].as_array().into_iter().flatten() {
            match (
                from["configMapRef"]["name"].as_str(),
                from["secretRef"]["name"].as_str(),
            ) {
                (Some("shutoff-config"), _) => given.extend(config.iter().cloned()),
                (_, Some("shutoff-connections")) => given.extend(secret.iter().cloned()),
                _ => panic!("{workload}: envFrom of something this test does not know: {from}"),
            }
        }
        assert!(!given.is_empty(), "{workload} is given no settings");
        let unread: Vec<_> = given.difference(&read).collect();
        assert!(
            unread.is_empty(),
            "{workload} ({}) is given {unread:?}, which it does not read; it reads {read:?}",
            command.join(" ")
        );
        checked += 1;
    }
    assert_eq!(checked, 3, "the API, the worker and the migration Job");
}

#[test]
fn the_worker_runs_on_each_hypervisor_host_named_after_its_node_and_the_api_behind_its_probes() {
    let Some(rendered) = render() else { return };
    let docs = documents(&rendered);

    let worker = find(&docs, "DaemonSet", "shutoff-worker");
    let pod = &worker["spec"]["template"]["spec"];
    assert_eq!(pod["nodeSelector"]["openstack-compute-node"], "enabled");
    let c = &pod["containers"][0];
    let env = |name: &str| {
        c["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("the worker has no {name}"))
            .clone()
    };
    assert_eq!(
        env("SHUTOFF_HOST")["valueFrom"]["fieldRef"]["fieldPath"],
        "spec.nodeName"
    );
    // The hypervisor's sockets, at the paths its instances' addresses name.
    let mounts: BTreeSet<&str> = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["mountPath"].as_str().unwrap())
        .collect();
    assert!(mounts.contains("/var/run/libvirt"), "{mounts:?}");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");

    let api = find(&docs, "Deployment", "shutoff-api");
    let c = &api["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["ports"][0]["containerPort"], 8774);
    assert!(c["resources"]["requests"]["memory"].is_string());
    let service = find(&docs, "Service", "shutoff-api");
    assert_eq!(service["spec"]["ports"][0]["port"], 8774);
    let pdb = find(&docs, "PodDisruptionBudget", "shutoff-api");
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"],
        api["spec"]["selector"]["matchLabels"]
    );
    let job = find(&docs, "Job", "shutoff-migrate");
    assert_eq!(
        job["spec"]["template"]["spec"]["containers"][0]["command"],
        serde_json::json!(["shutoff-admin", "migrate"])
    );
}
