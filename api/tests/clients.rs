//! The clients our users have — the `openstack` CLI, openstacksdk and
//! novaclient, installed from PyPI into a throwaway venv — stop servers
//! through the real API and worker and watch them reach SHUTOFF.

use std::path::PathBuf;
use std::process::Stdio;

use shutoff_testkit::app;
use sqlx::PgPool;

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The venv with the clients (made by `scripts/py-clients-venv`, which
/// `.ci/run` also calls). Outside CI a machine without PyPI skips the test.
async fn clients_venv() -> Option<PathBuf> {
    let out = tokio::process::Command::new(repo_root().join("scripts/py-clients-venv"))
        .stderr(Stdio::inherit())
        .output()
        .await
        .expect("scripts/py-clients-venv runs");
    if out.status.success() {
        let path = String::from_utf8(out.stdout).unwrap();
        return Some(PathBuf::from(path.trim().lines().last().unwrap()));
    }
    if std::env::var_os("CI").is_some() {
        panic!("CI is set but the OpenStack clients could not be installed");
    }
    eprintln!("SKIPPED: could not install the OpenStack clients from PyPI (not in CI)");
    None
}

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn openstack_cli_openstacksdk_and_novaclient_stop_servers_until_shutoff(pool: PgPool) {
    let Some(venv) = clients_venv().await else {
        return;
    };
    let app = app::spawn(pool).await;
    for name in ["cli-vm", "sdk-vm", "nova-vm"] {
        app.server(name).await;
    }
    let endpoint = format!("http://{}/v2/{}", app.addr, app.project);

    let out = tokio::process::Command::new(venv.join("bin/python"))
        .arg(repo_root().join("tests/clients/check_clients.py"))
        .args(["--endpoint", &endpoint, "--token", &app.token])
        .args([
            "--cli-server",
            "cli-vm",
            "--sdk-server",
            "sdk-vm",
            "--novaclient-server",
            "nova-vm",
        ])
        .output()
        .await
        .unwrap();

    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "client checks failed:\n{stdout}");
    assert!(
        stdout.lines().filter(|l| l.starts_with("ok ")).count() >= 4,
        "{stdout}"
    );
    for name in ["cli-vm", "sdk-vm", "nova-vm"] {
        let state: String = sqlx::query_scalar("SELECT vm_state FROM instances WHERE name = $1")
            .bind(name)
            .fetch_one(&app.env.pool)
            .await
            .unwrap();
        assert_eq!(state, "stopped", "{name}");
    }
    app.shut_down().await;
}

/// A clouds.yaml cloud: the API's own identity service takes `token`.
fn local_cloud(name: &str, app: &app::TestApp, token: &str) -> String {
    format!(
        "  {name}:\n    auth_type: v3token\n    auth:\n      auth_url: http://{}/identity/v3\n      \
         token: {token}\n      project_id: {}\n    region_name: RegionOne\n    identity_api_version: 3\n",
        app.addr, app.project
    )
}

/// Runs tests/clients/check_clouds.py with the servers `cloud_servers` made.
async fn check_clouds(venv: &std::path::Path, config: &std::path::Path, reader: bool) -> String {
    let mut cmd = tokio::process::Command::new(venv.join("bin/python"));
    cmd.arg(repo_root().join("tests/clients/check_clouds.py"))
        .arg("--config")
        .arg(config)
        .args(["--cloud", "member", "--admin-cloud", "admin"])
        .args(["--stop", "cl-a,cl-b,cl-c", "--sdk-server", "cl-sdk"])
        .args(["--nova-server", "cl-nova", "--stopped", "cl-off"])
        .args(["--host", "rack-2", "--on-host", "cl-off,cl-idle"]);
    if reader {
        cmd.args(["--reader-cloud", "reader"]);
    }
    let out = cmd.output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    println!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "clouds.yaml checks failed:\n{stdout}");
    stdout
}

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn clouds_yaml_clouds_list_stop_and_show_servers_with_the_cli_sdk_and_novaclient(
    pool: PgPool,
) {
    let Some(venv) = clients_venv().await else {
        return;
    };
    let started = std::time::Instant::now();
    let app = app::spawn(pool).await;
    for name in ["cl-a", "cl-b", "cl-c", "cl-sdk", "cl-nova"] {
        app.server(name).await;
    }
    app.server_with(|s| {
        s.name = "cl-off".into();
        s.host = "rack-2".into();
        s.vm_state = shutoff_core::state::VmState::Stopped;
    })
    .await;
    app.server_with(|s| {
        s.name = "cl-idle".into();
        s.host = "rack-2".into();
    })
    .await;
    let admin = app.env.token(&app.project, &["admin"]).await;
    let reader = app.env.token(&app.project, &["reader"]).await;
    let dir = std::env::temp_dir().join(format!("shutoff-clouds-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("clouds.yaml");
    let yaml = format!(
        "clouds:\n{}{}{}",
        local_cloud("member", &app, &app.token),
        local_cloud("admin", &app, &admin),
        local_cloud("reader", &app, &reader)
    );
    std::fs::write(&config, yaml).unwrap();

    let stdout = check_clouds(&venv, &config, true).await;
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("ok ")).count(),
        9,
        "{stdout}"
    );
    for name in ["cl-a", "cl-b", "cl-c", "cl-sdk", "cl-nova"] {
        let state: String = sqlx::query_scalar("SELECT vm_state FROM instances WHERE name = $1")
            .bind(name)
            .fetch_one(&app.env.pool)
            .await
            .unwrap();
        assert_eq!(state, "stopped", "{name}");
    }
    let idle: String = sqlx::query_scalar("SELECT vm_state FROM instances WHERE name = 'cl-idle'")
        .fetch_one(&app.env.pool)
        .await
        .unwrap();
    assert_eq!(idle, "active", "a server nobody stopped");
    std::fs::remove_dir_all(&dir).ok();
    app.shut_down().await;
    use std::io::Write;
    writeln!(
        std::io::stderr(),
        "clouds.yaml (local identity): test {:.1}s",
        started.elapsed().as_secs_f64()
    )
    .unwrap();
}
