//! SIGTERM: the API stops accepting, lets in-flight requests finish, and
//! exits 0; nothing it accepted is lost.

use std::process::Stdio;
use std::time::Duration;

use sqlx::PgPool;

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn the_api_binary_exits_0_on_sigterm_and_keeps_what_it_accepted(pool: PgPool) {
    let env = shutoff_testkit::TestEnv::new(pool);
    env.declare_host(&shutoff_testkit::env::default_host())
        .await;
    let project = env.project().await;
    let token = env.token(&project, &["member"]).await;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_shutoff-api"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args([
            "--database-url",
            &env.database_url,
            "--queue-prefix",
            &env.topology.prefix,
        ])
        .args(["--retry-delays-ms", "100,200"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    assert!(
        env.eventually(Duration::from_secs(20), || async {
            client.get(format!("{base}/healthz")).send().await.is_ok()
        })
        .await
    );
    let mut servers = Vec::new();
    for i in 0..40 {
        servers.push(
            env.server(shutoff_core::store::admin::NewServer::new(
                &project,
                &format!("vm-{i}"),
            ))
            .await,
        );
    }

    // Stops race the SIGTERM: each is either accepted (202) or refused at the
    // socket; none may fail half-way.
    let stops = servers.iter().map(|id| {
        client
            .post(format!("{base}/v2/{project}/servers/{id}/action"))
            .header("x-auth-token", &token)
            .body(r#"{"os-stop": null}"#)
            .send()
    });
    let all = futures::future::join_all(stops);
    let term = async {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let pid = child.id().unwrap().to_string();
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
    };
    let (responses, ()) = tokio::join!(all, term);
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .unwrap()
        .unwrap();

    assert!(status.success(), "exit status {status:?}");
    let accepted = responses
        .iter()
        .filter(|r| matches!(r, Ok(r) if r.status().as_u16() == 202))
        .count() as i64;
    assert!(
        responses.iter().all(|r| match r {
            Ok(r) => r.status().as_u16() == 202,
            Err(_) => true,
        }),
        "a stop failed with an HTTP error during shutdown"
    );
    let jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(
        jobs, accepted,
        "every 202 has its job, and no job lacks its 202"
    );
    let unpublished: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM jobs WHERE state = 'queued' AND published_at IS NULL",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(
        unpublished, 0,
        "confirmed jobs were marked published before exit"
    );
}
