//! The real OpenStack clients (and Keystone) from PyPI, in venvs that
//! `scripts/*-venv` make under `target/` (`.ci/run` calls the same scripts),
//! and the clouds.yaml check both auth modes run with them
//! (`tests/clients/check_clouds.py`).

use std::path::{Path, PathBuf};
use std::process::Stdio;

use sqlx::PgPool;

/// The repository's root (the workspace's).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Runs `scripts/<script>` and returns the venv it prints; a machine that
/// cannot reach PyPI skips the test (a failure in CI).
pub async fn venv(script: &str) -> Option<PathBuf> {
    let out = tokio::process::Command::new(repo_root().join("scripts").join(script))
        .stderr(Stdio::inherit())
        .output()
        .await
        .expect("venv script runs");
    if out.status.success() {
        let path = String::from_utf8(out.stdout).unwrap();
        return Some(PathBuf::from(path.trim().lines().last().unwrap()));
    }
    crate::skip::runnable(Some(format!(
        "scripts/{script} could not install from PyPI"
    )));
    None
}

/// The servers `check_clouds.py` stops (by the CLI, three at once; by
/// openstacksdk; by novaclient).
pub const CLOUD_STOPS: [&str; 5] = ["cl-a", "cl-b", "cl-c", "cl-sdk", "cl-nova"];

/// Runs `tests/clients/check_clouds.py` with the clouds `member`, `admin`
/// and `reader` of `config`, on the servers [`CLOUD_STOPS`] (active), `cl-off`
/// (stopped) and `cl-idle` (active), the last two on host `rack-2`; asserts
/// that every check passed and returns what it printed.
pub async fn check_clouds(venv: &Path, config: &Path) -> String {
    let out = tokio::process::Command::new(venv.join("bin/python"))
        .arg(repo_root().join("tests/clients/check_clouds.py"))
        .arg("--config")
        .arg(config)
        .args(["--cloud", "member", "--admin-cloud", "admin"])
        .args(["--reader-cloud", "reader"])
        .args(["--stop", "cl-a,cl-b,cl-c", "--sdk-server", "cl-sdk"])
        .args(["--nova-server", "cl-nova", "--stopped", "cl-off"])
        .args(["--host", "rack-2", "--on-host", "cl-off,cl-idle"])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    println!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "clouds.yaml checks failed:\n{stdout}");
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("ok ")).count(),
        9,
        "{stdout}"
    );
    stdout
}

/// Asserts the vm_state of each named server.
pub async fn assert_vm_state(pool: &PgPool, names: &[&str], state: &str) {
    for name in names {
        let got: String = sqlx::query_scalar("SELECT vm_state FROM instances WHERE name = $1")
            .bind(name)
            .fetch_one(pool)
            .await
            .unwrap();
        assert_eq!(got, state, "{name}");
    }
}
