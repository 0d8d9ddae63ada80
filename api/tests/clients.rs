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
