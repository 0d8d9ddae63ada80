//! The worker binary itself: SIGTERM ends it with exit code 0.

use std::process::Stdio;
use std::time::Duration;

use shutoff_testkit::workers;
use sqlx::PgPool;

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn the_worker_binary_finishes_its_job_and_exits_0_on_sigterm(pool: PgPool) {
    let c = workers::ctx(pool).await;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_shutoff-worker"))
        .args([
            "--database-url",
            &c.env.database_url,
            "--queue-prefix",
            &c.env.topology.prefix,
        ])
        .args(["--retry-delays-ms", "100,200", "--grace-secs", "10"])
        .args(["--host", shutoff_testkit::env::DEFAULT_HOST])
        .args(["--health-listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let vm = c.server("fake://?delay_ms=1500").await;
    let job = c.stop(vm, 5).await;
    assert!(
        c.until_job(job.job_id, "running", Duration::from_secs(20))
            .await
    );

    let pid = child.id().unwrap().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .unwrap()
        .unwrap();

    assert!(status.success(), "exit status {status:?}");
    assert_eq!(
        c.job(job.job_id).await.0,
        "succeeded",
        "the in-flight job was finished first"
    );
}
