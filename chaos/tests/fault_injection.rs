//! CI's fault-injection run: `shutoff-chaos --stops 300` against the API and
//! worker binaries this `cargo test --workspace` built, on its own PostgreSQL
//! and RabbitMQ. It fails unless lost = stuck = duplicated = 0.

use std::path::Path;
use std::process::Command;

#[test]
fn no_accepted_stop_is_lost_stuck_or_duplicated_under_kills_and_restarts() {
    let chaos = Path::new(env!("CARGO_BIN_EXE_shutoff-chaos"));
    let bin_dir = chaos.parent().unwrap();
    for bin in ["shutoff-api", "shutoff-worker"] {
        assert!(
            bin_dir.join(bin).exists(),
            "{bin} is not built in {}: run the workspace's tests (cargo test --workspace --all-targets)",
            bin_dir.display()
        );
    }
    let status = Command::new(chaos)
        .args(["--stops", "300", "--bin-dir"])
        .arg(bin_dir)
        .status()
        .expect("shutoff-chaos starts");
    assert!(
        status.success(),
        "the fault-injection run failed: {status:?} (its table is above)"
    );
}

/// `shutoff-chaos --cluster`, short: a private 3-node RabbitMQ cluster and a
/// PostgreSQL primary with a synchronous standby; the queue's leader node
/// is stopped and started, another node bounced, the primary killed and
/// the standby promoted, the old primary rebuilt as the new standby, all
/// while 300 stops flow. ~80 s here (the cluster's setup is ~30 s of it).
#[test]
fn no_accepted_stop_is_lost_stuck_or_duplicated_when_cluster_nodes_die_and_postgres_fails_over() {
    let chaos = Path::new(env!("CARGO_BIN_EXE_shutoff-chaos"));
    let bin_dir = chaos.parent().unwrap();
    let status = Command::new(chaos)
        .args([
            "--cluster",
            "--stops",
            "300",
            "--send-secs",
            "45",
            "--bin-dir",
        ])
        .arg(bin_dir)
        .status()
        .expect("shutoff-chaos starts");
    assert!(
        status.success(),
        "the cluster fault-injection run failed: {status:?} (its table is above)"
    );
}
