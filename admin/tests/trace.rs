//! `shutoff-admin trace`: the timeline of real stops carried out by a real
//! worker (in this process) on this test's database and queues.

mod common;

use std::process::Output;
use std::time::Duration;

use common::{admin, stdout};
use shutoff_testkit::TestEnv;
use shutoff_testkit::workers::ctx;
use sqlx::PgPool;

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_str(&stdout(o)).expect("trace --json prints JSON")
}

fn steps(t: &serde_json::Value) -> Vec<&str> {
    t["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap())
        .collect()
}

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn a_trace_shows_each_step_of_a_stop_with_its_worker_host_and_the_fault(pool: PgPool) {
    let c = ctx(pool).await;
    let worker = c.worker(|_| {}).await;
    let env = &c.env;
    let good = c.server("fake://?delay_ms=30").await;
    let flaky = c.server("fake://?fail=transient").await;

    // A stop as an operator asks for it, then one that fails on every
    // attempt (two, 100 ms apart).
    let out = stdout(&admin(env, &["server", "stop", &good.to_string()]));
    let good_req = out.split_whitespace().next().unwrap().to_string();
    let out = stdout(&admin(
        env,
        &["server", "stop", &flaky.to_string(), "--max-attempts", "2"],
    ));
    let flaky_req = out.split_whitespace().next().unwrap().to_string();
    for id in [good, flaky] {
        assert!(
            env.eventually(Duration::from_secs(20), || async {
                matches!(
                    env.job_state(id).await.as_deref(),
                    Some("succeeded" | "failed")
                )
            })
            .await,
            "the stop of {id} was not recorded"
        );
    }

    let t = json(&admin(env, &["trace", &good_req, "--json"]));
    assert_eq!(t["request_id"], good_req.as_str());
    assert_eq!(t["state"], "succeeded");
    assert_eq!(t["finished"], true);
    assert_eq!(t["user_id"], "shutoff-admin");
    assert_eq!(t["instance"]["vm_state"], "stopped");
    assert_eq!(t["instance"]["power_state"], 4);
    assert_eq!(steps(&t), ["accepted", "published", "claimed", "succeeded"]);
    let claimed = &t["steps"][2];
    assert_eq!(claimed["worker"], worker.id.as_str());
    assert_eq!(claimed["host"], worker.host.as_str());
    assert_eq!(claimed["attempt"], 1);
    let done = t["steps"][3]["detail"].as_str().unwrap();
    assert!(done.contains("simulated power-off in 0.0"), "{done}");
    assert!(t["steps"][3]["since_previous_seconds"].as_f64().unwrap() >= 0.03);
    assert!(t["fault"].is_null());
    assert_eq!(t["power_off"]["result"], "Success");

    let t = json(&admin(env, &["trace", &flaky_req, "--json"]));
    assert_eq!(t["state"], "failed");
    assert_eq!(
        steps(&t),
        [
            "accepted",
            "published",
            "claimed",
            "retrying",
            "claimed",
            "failed"
        ]
    );
    assert!(
        t["steps"][3]["detail"]
            .as_str()
            .unwrap()
            .contains("attempt 1 failed: "),
        "{t}"
    );
    let fault = t["fault"]["message"].as_str().unwrap();
    assert!(fault.contains("timed out powering off"), "{fault}");
    assert_eq!(
        t["instance"]["vm_state"], "active",
        "a failed stop leaves it"
    );

    // The same for a person: every step on its own line, the time between
    // them, the final state and the fault.
    let text = stdout(&admin(env, &["trace", &flaky_req]));
    for needle in [
        "retrying",
        &format!("worker {} on host {}", worker.id, worker.host),
        "final    failed after 2 attempts of 2",
        "fault    500",
    ] {
        assert!(text.contains(needle), "{needle:?} not in\n{text}");
    }

    // A server's last stops, newest first.
    let out = stdout(&admin(
        env,
        &["server", "stop", &flaky.to_string(), "--max-attempts", "1"],
    ));
    let again = out.split_whitespace().next().unwrap().to_string();
    let flaky_s = flaky.to_string();
    let all = json(&admin(env, &["trace", "--instance", &flaky_s, "--json"]));
    let ids: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["request_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [again.as_str(), flaky_req.as_str()]);
    let last = json(&admin(
        env,
        &["trace", "--instance", &flaky_s, "--last", "1", "--json"],
    ));
    assert_eq!(last.as_array().unwrap().len(), 1);
    worker.terminate().await;
}

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn unknown_and_malformed_ids_get_their_own_message_and_exit_code(pool: PgPool) {
    let env = TestEnv::new(pool);
    let unknown = format!("req-{}", uuid::Uuid::new_v4());
    let out = admin(&env, &["trace", &unknown]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no stop was accepted with request id"),
        "{err}"
    );

    for bad in ["req-nope", "1b4e28ba-2fa1-11d2-883f-0016d3cca427", ""] {
        let out = admin(&env, &["trace", bad]);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("is not a request id"), "{bad:?}: {err}");
    }

    let out = admin(
        &env,
        &["trace", "--instance", &uuid::Uuid::new_v4().to_string()],
    );
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let out = admin(&env, &["trace", "--instance", "not-a-uuid"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let out = admin(&env, &["trace"]);
    assert_eq!(out.status.code(), Some(2), "one of the two is required");
}
