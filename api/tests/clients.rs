//! The clients our users have — the `openstack` CLI, openstacksdk and
//! novaclient, installed from PyPI into a throwaway venv — stop servers
//! through the real API and worker and watch them reach SHUTOFF.

use shutoff_testkit::app;
use shutoff_testkit::clients::{CLOUD_STOPS, assert_vm_state, check_clouds, repo_root, venv};
use sqlx::PgPool;

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn openstack_cli_openstacksdk_and_novaclient_stop_servers_until_shutoff(pool: PgPool) {
    let Some(venv) = venv("py-clients-venv").await else {
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
    assert_vm_state(&app.env.pool, &["cli-vm", "sdk-vm", "nova-vm"], "stopped").await;
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

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn clouds_yaml_clouds_list_stop_and_show_servers_with_the_cli_sdk_and_novaclient(
    pool: PgPool,
) {
    let Some(venv) = venv("py-clients-venv").await else {
        return;
    };
    let started = std::time::Instant::now();
    let app = app::spawn(pool).await;
    for name in CLOUD_STOPS {
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

    check_clouds(&venv, &config).await;
    assert_vm_state(&app.env.pool, &CLOUD_STOPS, "stopped").await;
    // A server nobody stopped.
    assert_vm_state(&app.env.pool, &["cl-idle"], "active").await;
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
