//! `shutoff-admin drain`: the real binary against this test's database and
//! queues, with a real worker of the drained host in this process.

mod common;

use std::collections::HashMap;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::command;
use shutoff_core::state::{TaskState, VmState};
use shutoff_core::store::admin::{NewServer, create_server};
use shutoff_testkit::TestEnv;
use shutoff_testkit::workers::{Ctx, ctx};
use sqlx::PgPool;
use uuid::Uuid;

/// Runs the admin tool off the test's runtime thread, so the worker in
/// this process keeps working while the drain waits for it.
async fn admin(env: &TestEnv, args: &[&str]) -> Output {
    let mut c = command(env, args);
    tokio::task::spawn_blocking(move || c.output().unwrap())
        .await
        .unwrap()
}

/// Until a worker of `host` has beaten (and so declared its queue).
async fn until_up(env: &TestEnv, host: &str) {
    assert!(
        env.eventually(Duration::from_secs(20), || async {
            shutoff_core::store::hosts::is_up(&env.pool, host, Duration::from_secs(30))
                .await
                .unwrap()
        })
        .await,
        "no worker of {host} came up"
    );
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The drain's table, server uuid → (outcome, reason).
fn table(out: &Output) -> HashMap<Uuid, (String, String)> {
    text(&out.stdout)
        .lines()
        .filter_map(|l| {
            let cols: Vec<&str> = l.split("  ").filter(|c| !c.trim().is_empty()).collect();
            let id = cols.get(1)?.trim().parse().ok()?;
            let outcome = cols.get(2)?.trim().to_string();
            // The request column is empty for skipped servers.
            let reason = cols[3..]
                .iter()
                .map(|c| c.trim())
                .filter(|c| !c.starts_with("req-"))
                .collect::<Vec<_>>()
                .join(" ");
            Some((id, (outcome, reason)))
        })
        .collect()
}

async fn server(c: &Ctx, host: &str, hypervisor: &str, f: impl FnOnce(&mut NewServer)) -> Uuid {
    let mut s = NewServer::new(&c.project, &format!("vm-{}", Uuid::new_v4().simple()));
    s.host = c.env.host(host).to_string();
    s.hypervisor = hypervisor.into();
    f(&mut s);
    create_server(&c.env.pool, &s).await.unwrap()
}

async fn succeeded(env: &TestEnv) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM jobs WHERE state = 'succeeded'")
        .fetch_one(&env.pool)
        .await
        .unwrap()
}

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn a_drain_interrupted_half_way_and_run_again_stops_every_stoppable_server_once(
    pool: PgPool,
) {
    const HOST: &str = "drain-1";
    let c = ctx(pool).await;
    let env = &c.env;
    // 100 ms per power-off, 20 at a time: about 200 stops a second, so the
    // drain of 450 takes a couple of seconds and can be interrupted half-way.
    let worker = c
        .worker_for(HOST, |s| {
            s.prefetch = 20;
        })
        .await;
    until_up(env, HOST).await;
    let mut stoppable = Vec::new();
    for _ in 0..450 {
        stoppable.push(server(&c, HOST, "fake://?delay_ms=100", |_| {}).await);
    }
    let mut locked = Vec::new();
    let mut stopped = Vec::new();
    let mut busy = Vec::new();
    for _ in 0..20 {
        locked.push(server(&c, HOST, "fake://", |s| s.locked = true).await);
        stopped.push(server(&c, HOST, "fake://", |s| s.vm_state = VmState::Stopped).await);
    }
    for _ in 0..10 {
        busy.push(
            server(&c, HOST, "fake://", |s| {
                s.task_state = Some(TaskState::Other("rebooting".into()))
            })
            .await,
        );
    }
    // Another host's server is none of the drain's business.
    let elsewhere = server(&c, "other-1", "fake://", |_| {}).await;

    let plan = admin(env, &["drain", "--host", HOST, "--dry-run"]).await;
    assert!(plan.status.success(), "{}", text(&plan.stderr));
    assert!(
        text(&plan.stdout).contains("would stop 450, wait for 0 already stopping, skip 50"),
        "{}",
        text(&plan.stdout)
    );
    assert_eq!(succeeded(env).await, 0);
    let jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(jobs, 0, "a dry run changes nothing");

    // The first drain, interrupted (SIGINT, as Ctrl-C) once a third is done.
    let t0 = std::time::Instant::now();
    let child = command(env, &["drain", "--host", HOST])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        env.eventually(Duration::from_secs(60), || async {
            succeeded(env).await >= 150
        })
        .await,
        "the drain's stops did not get going"
    );
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let first = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let at_interrupt = succeeded(env).await;
    assert_eq!(
        first.status.code(),
        Some(130),
        "{}\n{}",
        text(&first.stdout),
        text(&first.stderr)
    );
    assert!(at_interrupt < 450, "interrupted too late: {at_interrupt}");
    let err = text(&first.stderr);
    assert!(err.contains("interrupted"), "{err}");
    let first_table = table(&first);
    let still: usize = first_table
        .values()
        .filter(|(o, _)| o == "stopping")
        .count();
    assert!(
        still > 0,
        "nothing was left under way: {}",
        text(&first.stdout)
    );

    // Run again: it waits for what the first run left under way and asks
    // for no stop twice.
    let second = admin(env, &["drain", "--host", HOST]).await;
    println!(
        "second drain ({:.1} s in all):\n{}\n{}",
        t0.elapsed().as_secs_f64(),
        text(&second.stderr),
        text(&second.stdout)
    );
    assert_eq!(second.status.code(), Some(0), "{}", text(&second.stderr));
    let second_table = table(&second);
    let waited = second_table
        .values()
        .filter(|(o, r)| o == "stopped" && r.contains("stop asked for earlier by shutoff-admin"))
        .count();
    assert!(waited > 0, "{}", text(&second.stdout));

    // Every row.
    for id in &stoppable {
        let (vm, task, power) = env.instance_state(*id).await;
        assert_eq!(
            (vm.as_str(), task, power),
            ("stopped", None, 4),
            "server {id}"
        );
        let (jobs, actions, done, user): (i64, i64, i64, String) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM jobs WHERE instance_uuid = $1),
                    (SELECT count(*) FROM instance_actions WHERE instance_uuid = $1),
                    (SELECT count(*) FROM job_transitions t JOIN jobs j ON j.id = t.job_id
                      WHERE j.instance_uuid = $1 AND t.to_state = 'succeeded'),
                    (SELECT max(user_id) FROM instance_actions WHERE instance_uuid = $1)",
        )
        .bind(id)
        .fetch_one(&env.pool)
        .await
        .unwrap();
        assert_eq!(
            (jobs, actions, done, user.as_str()),
            (1, 1, 1, "shutoff-admin"),
            "server {id}: one stop, recorded once"
        );
        let (outcome, _) = &second_table[id];
        assert!(
            outcome == "stopped" || outcome == "skipped",
            "{id}: {outcome}"
        );
    }
    let untouched: Vec<(Vec<Uuid>, &str, String)> = vec![
        (locked.clone(), "active", "is locked".into()),
        (stopped.clone(), "stopped", "in vm_state stopped".into()),
        (busy.clone(), "active", "in task_state rebooting".into()),
    ];
    for (ids, vm_state, reason) in untouched {
        for id in ids {
            let (vm, _, _) = env.instance_state(id).await;
            assert_eq!(vm, vm_state, "{id}");
            let actions: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM instance_actions WHERE instance_uuid = $1",
            )
            .bind(id)
            .fetch_one(&env.pool)
            .await
            .unwrap();
            assert_eq!(actions, 0, "{id} was left alone");
            for t in [&first_table, &second_table] {
                let (outcome, why) = &t[&id];
                assert_eq!(outcome, "skipped", "{id}");
                assert!(
                    why.contains(&format!("Cannot 'stop' instance {id} while it is {reason}"))
                        || why == &format!("Instance {id} is locked"),
                    "{id}: {why:?}"
                );
            }
        }
    }
    assert_eq!(env.instance_state(elsewhere).await.0, "active");
    assert!(!second_table.contains_key(&elsewhere));
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(total, 450, "no stop was asked for twice");
    worker.terminate().await;
}

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn a_drain_whose_stops_fail_or_never_finish_exits_non_zero_and_says_why(pool: PgPool) {
    let c = ctx(pool).await;
    let env = &c.env;
    let worker = c.worker_for("fail-1", |_| {}).await;
    until_up(env, "fail-1").await;
    let good = server(&c, "fail-1", "fake://", |_| {}).await;
    let bad = server(&c, "fail-1", "fake://?fail=always", |_| {}).await;

    let out = admin(env, &["drain", "--host", "fail-1"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let t = table(&out);
    assert_eq!(t[&good].0, "stopped");
    assert_eq!(t[&bad].0, "FAILED");
    assert!(
        t[&bad]
            .1
            .contains("simulated hypervisor refused to power off"),
        "{:?}",
        t[&bad]
    );
    assert!(
        text(&out.stderr).contains("stops failed: 1"),
        "{}",
        text(&out.stderr)
    );

    // A host no worker serves: the stop is committed and waits; the drain
    // gives up waiting at its timeout and says so.
    let lonely = server(&c, "lonely-1", "fake://", |_| {}).await;
    let out = admin(env, &["drain", "--host", "lonely-1", "--timeout", "1s"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("has no queue yet"), "{err}");
    assert!(err.contains("not finished within 1s: 1"), "{err}");
    assert_eq!(table(&out)[&lonely].0, "stopping");
    assert_eq!(
        env.instance_state(lonely).await.1.as_deref(),
        Some("powering-off")
    );

    let out = admin(env, &["drain", "--host", "nothing-here"]).await;
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let out = admin(env, &["drain", "--host", "not a host"]).await;
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    worker.terminate().await;
}
