//! What the admin tool's tests share: the real binary, run on a test's own
//! database and queues. Each test binary uses a part of it.
#![allow(dead_code)]

use std::process::{Command, Output};

use shutoff_testkit::TestEnv;

/// `shutoff-admin ARGS` on this test's database; `migrate` and the commands
/// that publish use this test's queues (the others ignore the variables).
pub fn command(env: &TestEnv, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_shutoff-admin"));
    c.args(["--database-url", &env.database_url])
        .env("SHUTOFF_QUEUE_PREFIX", &env.topology.prefix)
        .env("SHUTOFF_RETRY_DELAYS_MS", "100,200")
        .args(args);
    c
}

/// Runs [`command`] to its end. It blocks: a test with a worker in its own
/// process runs it off the runtime thread (`spawn_blocking`).
pub fn admin(env: &TestEnv, args: &[&str]) -> Output {
    command(env, args).output().unwrap()
}

/// What a successful run printed, trimmed; a failure panics with its stderr.
pub fn stdout(o: &Output) -> String {
    assert!(
        o.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout.clone())
        .unwrap()
        .trim()
        .to_string()
}
