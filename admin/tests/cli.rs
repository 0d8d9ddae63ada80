//! `shutoff-admin` as an operator runs it: good arguments do what they say,
//! bad ones get a clear error and change nothing.

mod common;

use std::process::Output;

use common::{admin, stdout};

use shutoff_core::store::hosts;
use shutoff_testkit::TestEnv;
use sqlx::PgPool;

/// The options `shutoff-admin <args> --help` lists, e.g. `--project`.
fn options_in_help(args: &[&str]) -> Vec<String> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_shutoff-admin"))
        .args(args)
        .arg("--help")
        .output()
        .unwrap();
    let help = stdout(&out);
    help.split_whitespace()
        .filter(|w| w.starts_with("--"))
        .map(|w| {
            w.trim_end_matches(|c: char| !c.is_ascii_alphanumeric())
                .to_string()
        })
        .collect()
}

fn refused(o: &Output, needle: &str) {
    assert_eq!(o.status.code(), Some(2), "should be refused: {o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(needle), "stderr {err:?} lacks {needle:?}");
}

async fn count(env: &TestEnv, table: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
        .fetch_one(&env.pool)
        .await
        .unwrap()
}

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn migrate_is_idempotent_and_declares_the_queues(pool: PgPool) {
    let env = TestEnv::new(pool);
    for _ in 0..2 {
        let out = stdout(&admin(&env, &["migrate"]));
        assert!(out.contains("migrated"), "{out}");
        assert!(out.contains(&env.topology.dead_queue()), "{out}");
        // A host's queue is its workers' to declare, never the admin's.
        assert!(!out.contains(&env.work_queue()), "{out}");
    }
}

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn projects_tokens_and_servers_are_created_and_printed(pool: PgPool) {
    let env = TestEnv::new(pool);
    let project = stdout(&admin(&env, &["project", "create", "--name", "demo"]));
    assert_eq!(project.len(), 32);
    let token = stdout(&admin(
        &env,
        &[
            "token",
            "create",
            "--project",
            &project,
            "--role",
            "admin",
            "--ttl",
            "60",
        ],
    ));
    assert_eq!(token.len(), 64);
    let stored: String = sqlx::query_scalar("SELECT sha256 FROM tokens")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(
        stored,
        shutoff_core::token::hash(&token),
        "only the hash is stored"
    );
    let server = stdout(&admin(
        &env,
        &[
            "server",
            "create",
            "--project",
            &project,
            "--name",
            "vm",
            "--vm-state",
            "error",
            "--not-launched",
            "--hypervisor",
            "fake://?delay_ms=5",
        ],
    ));
    let (vm_state, launched): (String, bool) = sqlx::query_as(
        "SELECT vm_state, launched_at IS NOT NULL FROM instances WHERE uuid = $1::uuid",
    )
    .bind(&server)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!((vm_state.as_str(), launched), ("error", false));
    let jobs = stdout(&admin(&env, &["jobs", "--instance", &server]));
    assert!(jobs.starts_with("job"), "{jobs}");
}

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn bad_arguments_are_refused_and_change_nothing(pool: PgPool) {
    let env = TestEnv::new(pool);
    let project = stdout(&admin(&env, &["project", "create", "--name", "demo"]));

    refused(
        &admin(
            &env,
            &["project", "create", "--name", "x", "--id", "nothex"],
        ),
        "32 hex",
    );
    refused(
        &admin(&env, &["project", "create", "--name", "demo"]),
        "already exists",
    );
    refused(
        &admin(
            &env,
            &[
                "token",
                "create",
                "--project",
                "0123456789abcdef0123456789abcdef",
            ],
        ),
        "does not exist",
    );
    for (flag, value, needle) in [
        ("--vm-state", "sleepy", "vm_state"),
        ("--hypervisor", "fake://?fail=often", "fail=often"),
        ("--hypervisor", "vmware://h", "scheme"),
    ] {
        let args = [
            "server",
            "create",
            "--project",
            &project,
            "--name",
            "vm",
            flag,
            value,
        ];
        refused(&admin(&env, &args), needle);
    }
    let bad_role = admin(
        &env,
        &["token", "create", "--project", &project, "--role", "root"],
    );
    assert!(!bad_role.status.success());

    assert_eq!(count(&env, "projects").await, 1);
    assert_eq!(count(&env, "tokens").await, 0);
    assert_eq!(count(&env, "instances").await, 0);
}

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn server_stop_accepts_as_the_api_does_publishes_and_refuses_what_nova_refuses(pool: PgPool) {
    let env = TestEnv::new(pool);
    stdout(&admin(&env, &["migrate"]));
    let project = stdout(&admin(&env, &["project", "create", "--name", "demo"]));
    // Locked: an admin's stop goes through all the same, as in Nova.
    let server = stdout(&admin(
        &env,
        &[
            "server",
            "create",
            "--project",
            &project,
            "--name",
            "vm",
            "--locked",
        ],
    ));

    // Its host has had a worker: the host's queue exists.
    env.declare_host(&shutoff_testkit::env::default_host())
        .await;
    let out = stdout(&admin(&env, &["server", "stop", &server]));
    let (request_id, job) = out.split_once(' ').expect("request id and job id");
    assert!(request_id.starts_with("req-"), "{out}");
    let (state, published, task_state, user): (String, bool, Option<String>, String) =
        sqlx::query_as(
            "SELECT j.state, j.published_at IS NOT NULL, i.task_state, a.user_id
               FROM jobs j JOIN instances i ON i.uuid = j.instance_uuid
               JOIN instance_actions a ON a.id = j.action_id
              WHERE j.id = $1::uuid AND j.request_id = $2",
        )
        .bind(job)
        .bind(request_id)
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(
        (
            state.as_str(),
            published,
            task_state.as_deref(),
            user.as_str()
        ),
        ("queued", true, Some("powering-off"), "shutoff-admin")
    );
    assert_eq!(env.ready_messages(&env.work_queue()).await, 1);

    refused(
        &admin(&env, &["server", "stop", &server]),
        &format!("Cannot 'stop' instance {server} while it is in task_state powering-off"),
    );
    let unknown = uuid::Uuid::new_v4().to_string();
    refused(
        &admin(&env, &["server", "stop", &unknown]),
        &format!("Instance {unknown} could not be found."),
    );
    assert_eq!(count(&env, "jobs").await, 1, "refusals change nothing");
}

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn prune_counts_archives_and_removes_old_finished_stops_but_not_the_last(pool: PgPool) {
    let env = TestEnv::new(pool);
    let project = stdout(&admin(&env, &["project", "create", "--name", "demo"]));
    let server = stdout(&admin(
        &env,
        &["server", "create", "--project", &project, "--name", "vm"],
    ));
    // Two stops of the server that finished 40 days ago.
    env.seed_finished_stops(&project, &server, 2, 40).await;

    let plan = stdout(&admin(&env, &["prune", "--older-than", "30d", "--dry-run"]));
    assert!(plan.contains("would remove"), "{plan}");
    assert!(
        plan.lines().any(|l| l.split_whitespace().eq(["jobs", "1"])),
        "{plan}"
    );
    assert_eq!(count(&env, "jobs").await, 2, "a dry run removes nothing");

    let archive =
        std::env::temp_dir().join(format!("shutoff-prune-{}.jsonl", uuid::Uuid::new_v4()));
    let done = stdout(&admin(
        &env,
        &[
            "prune",
            "--older-than",
            "30d",
            "--archive-to",
            archive.to_str().unwrap(),
        ],
    ));
    assert!(
        done.lines()
            .any(|l| l.split_whitespace().eq(["instance_actions", "1"])),
        "{done}"
    );
    let lines = std::fs::read_to_string(&archive).unwrap();
    std::fs::remove_file(&archive).ok();
    assert_eq!(lines.lines().count(), 1, "{lines}");
    let row: serde_json::Value = serde_json::from_str(lines.lines().next().unwrap()).unwrap();
    assert_eq!(
        row["action"]["request_id"], "req-old-1",
        "the older one goes"
    );
    let left: String = sqlx::query_scalar("SELECT request_id FROM jobs")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(left, "req-old-2", "the server's last action stays");
    refused(
        &admin(&env, &["prune", "--older-than", "soon"]),
        "older-than",
    );
}

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn a_running_qemu_vm_is_registered_by_its_qmp_address_once_it_answers(pool: PgPool) {
    use shutoff_testkit::vm::{Guest, TestVm, can_run};
    if !can_run(Guest::None) {
        return;
    }
    let env = TestEnv::new(pool);
    let project = stdout(&admin(&env, &["project", "create", "--name", "demo"]));
    let mut vm = TestVm::start(Guest::None, &[]).await;
    let create = |address: &str, extra: &[&str]| {
        let mut args = vec![
            "server",
            "create",
            "--project",
            &project,
            "--name",
            "vm",
            "--host",
            "qemu-1",
            "--hypervisor",
            address,
        ];
        args.extend_from_slice(extra);
        admin(&env, &args)
    };

    refused(
        &create("qmp+unix://relative/vm.qmp", &[]),
        "must be absolute",
    );
    refused(
        &create("qmp+unix:///nonexistent/vm.qmp", &[]),
        "cannot reach the VM",
    );
    refused(
        &create(&vm.address(""), &["--vm-state", "stopped"]),
        "is running",
    );
    assert_eq!(count(&env, "instances").await, 0);

    let address = vm.address("?shutdown_timeout=5");
    let id = stdout(&create(&address, &[]));
    let later = stdout(&create("qmp+unix:///nonexistent/vm.qmp", &["--no-verify"]));

    let stored: String =
        sqlx::query_scalar("SELECT hypervisor FROM instances WHERE uuid = $1::uuid")
            .bind(&id)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(stored, address);
    assert_eq!(later.len(), 36);
    assert!(
        vm.exit_status().is_none(),
        "registering leaves the VM alone"
    );
}

/// A libvirt domain is verified on the daemon `--libvirt-uri` names, as the
/// host's worker will reach it: running and registered active is taken;
/// registered stopped, or a domain the daemon does not have, is refused.
#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn a_libvirt_domain_is_registered_once_the_daemon_the_worker_uses_has_it_running(
    pool: PgPool,
) {
    use shutoff_testkit::libvirtd::{Libvirtd, can_run, driver_built};
    if !driver_built() || !can_run(false) {
        return;
    }
    let env = TestEnv::new(pool);
    let project = stdout(&admin(&env, &["project", "create", "--name", "demo"]));
    let daemon = Libvirtd::start();
    let (uuid, name) = daemon.define(false, true);
    let uri = daemon.uri();
    let create = |address: &str, extra: &[&str]| {
        let mut args = vec![
            "server",
            "create",
            "--project",
            &project,
            "--name",
            "vm",
            "--host",
            "kvm-1",
            "--libvirt-uri",
            &uri,
            "--hypervisor",
            address,
        ];
        args.extend_from_slice(extra);
        admin(&env, &args)
    };

    refused(
        &create(&format!("libvirt:///{name}"), &["--vm-state", "stopped"]),
        "is running",
    );
    refused(
        &create("libvirt:///no-such-domain", &[]),
        "has no domain \"no-such-domain\": is it defined there?",
    );
    assert_eq!(count(&env, "instances").await, 0);

    let by_name = stdout(&create(&format!("libvirt:///{name}"), &[]));
    let by_uuid = stdout(&create(
        &format!("libvirt:///{uuid}?shutdown_timeout=30"),
        &[],
    ));
    assert_eq!((by_name.len(), by_uuid.len()), (36, 36));
    assert_eq!(count(&env, "instances").await, 2);
    assert_eq!(daemon.domstate(&name), "running (booted)");
}

#[test]
fn each_subcommand_lists_only_the_options_it_takes() {
    let server_create = options_in_help(&["server", "create"]);
    for taken in [
        "--database-url",
        "--project",
        "--name",
        "--hypervisor",
        "--no-verify",
    ] {
        assert!(
            server_create.iter().any(|o| o == taken),
            "{taken} missing from {server_create:?}"
        );
    }
    for foreign in [
        "--amqp-url",
        "--queue-prefix",
        "--retry-delays-ms",
        "--rescue-after-secs",
        "--max-attempts",
        "--log-format",
    ] {
        assert!(
            !server_create.iter().any(|o| o == foreign),
            "server create lists {foreign}"
        );
    }

    let migrate = options_in_help(&["migrate"]);
    for taken in [
        "--database-url",
        "--amqp-url",
        "--queue-prefix",
        "--delivery-limit",
        "--retry-delays-ms",
    ] {
        assert!(
            migrate.iter().any(|o| o == taken),
            "{taken} missing from {migrate:?}"
        );
    }
    assert!(
        !migrate.iter().any(|o| o == "--rescue-after-secs"),
        "{migrate:?}"
    );
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn a_stop_for_a_host_without_workers_waits_shows_in_hosts_and_can_be_cancelled(pool: PgPool) {
    let env = TestEnv::new(pool);
    let lonely = env.host("lonely-1");
    let project = stdout(&admin(&env, &["project", "create", "--name", "p"]));
    let created = admin(
        &env,
        &[
            "server",
            "create",
            "--project",
            &project,
            "--name",
            "vm",
            "--host",
            "lonely-1",
        ],
    );
    let server = stdout(&created);
    assert!(
        stderr(&created).contains("host lonely-1 has no live worker yet"),
        "{}",
        stderr(&created)
    );
    refused(
        &admin(
            &env,
            &[
                "server",
                "create",
                "--project",
                &project,
                "--name",
                "x",
                "--host",
                "no such host",
            ],
        ),
        "invalid host name",
    );

    // Accepted and committed; the broker has no queue for the host, so the
    // stop waits in PostgreSQL, unpublished.
    let stopped = admin(&env, &["server", "stop", &server]);
    let out = stdout(&stopped);
    let (_, job) = out.split_once(' ').expect("request id and job id");
    assert!(
        stderr(&stopped).contains("host lonely-1 has no queue yet"),
        "{}",
        stderr(&stopped)
    );
    let (state, published, host): (String, bool, Option<String>) = sqlx::query_as(
        "SELECT state, published_at IS NOT NULL, host FROM jobs WHERE id = $1::uuid",
    )
    .bind(job)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(
        (state.as_str(), published, host.as_deref()),
        ("queued", false, Some("lonely-1"))
    );

    // Another host with a live worker, for contrast.
    let busy = env.host("busy-1");
    hosts::beat(&env.pool, &busy, "w-7", "9.9.9").await.unwrap();
    let listed = stdout(&admin(&env, &["hosts"]));
    let line = |name: &str| line_of(&listed, name);
    let l = line(lonely.as_str());
    assert_eq!((l[1].as_str(), l[2].as_str()), ("down", "1"), "{listed}");
    let b = line(busy.as_str());
    assert_eq!((b[1].as_str(), b[2].as_str()), ("up", "0"), "{listed}");
    assert!(listed.contains("w-7 (9.9.9)"), "{listed}");

    // The operator ends it: failed with a fault, the server's task back to none.
    let out = stdout(&admin(
        &env,
        &["jobs", "cancel", job, "--reason", "host decommissioned"],
    ));
    assert!(out.contains("cancelled"), "{out}");
    let (state, task_state, vm_state): (String, Option<String>, String) = sqlx::query_as(
        "SELECT j.state, i.task_state, i.vm_state FROM jobs j
           JOIN instances i ON i.uuid = j.instance_uuid WHERE j.id = $1::uuid",
    )
    .bind(job)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(
        (state.as_str(), task_state, vm_state.as_str()),
        ("failed", None, "active")
    );
    let fault: String =
        sqlx::query_scalar("SELECT message FROM instance_faults WHERE instance_uuid = $1::uuid")
            .bind(&server)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(fault, "cancelled by an operator: host decommissioned");
    refused(&admin(&env, &["jobs", "cancel", job]), "already failed");
    refused(
        &admin(&env, &["jobs", "cancel", &uuid::Uuid::new_v4().to_string()]),
        "no job",
    );
    // Nothing waits for it and no worker ever served it: not a host to list.
    let listed = stdout(&admin(&env, &["hosts"]));
    assert!(!listed.contains(lonely.as_str()), "{listed}");
}

fn line_of(listed: &str, name: &str) -> Vec<String> {
    listed
        .lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_else(|| panic!("{name} not in {listed}"))
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn a_stop_a_worker_holds_under_a_live_lease_is_not_cancelled(pool: PgPool) {
    let env = TestEnv::new(pool);
    let project = stdout(&admin(&env, &["project", "create", "--name", "p"]));
    let server = stdout(&admin(
        &env,
        &["server", "create", "--project", &project, "--name", "vm"],
    ));
    let out = stdout(&admin(&env, &["server", "stop", &server]));
    let (_, job) = out.split_once(' ').unwrap();
    sqlx::query(
        "UPDATE jobs SET state = 'running', attempts = 1, worker = 'w-1', started_at = now(),
                lease_expires_at = now() + interval '1 hour'
          WHERE id = $1::uuid",
    )
    .bind(job)
    .execute(&env.pool)
    .await
    .unwrap();
    refused(
        &admin(&env, &["jobs", "cancel", job]),
        "is held by worker w-1",
    );
    let state: String = sqlx::query_scalar("SELECT state FROM jobs WHERE id = $1::uuid")
        .bind(job)
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(state, "running", "a refused cancel changes nothing");
}

/// TLS settings that cannot work stop the tool before it connects or
/// commits anything: a CA for a plain `amqp://` URL, a client certificate
/// without its key, a `sslrootcert` with an `sslmode` that falls back to
/// plain TCP.
#[sqlx::test(migrator = "shutoff_core::store::MIGRATOR")]
async fn tls_settings_that_cannot_work_stop_the_tool_before_it_connects(pool: PgPool) {
    let env = TestEnv::new(pool);
    let project = stdout(&admin(&env, &["project", "create", "--name", "demo"]));
    let server = stdout(&admin(
        &env,
        &["server", "create", "--project", &project, "--name", "vm"],
    ));
    let ca = env!("CARGO_MANIFEST_DIR"); // exists; never read: refused first
    refused(
        &admin(&env, &["migrate", "--amqp-ca-file", ca]),
        "AMQP_CA_FILE is set but AMQP_URL is not a TLS URL (it is amqp://, use amqps://)",
    );
    refused(
        &admin(
            &env,
            &[
                "server",
                "stop",
                &server,
                "--amqp-url",
                "amqps://guest:guest@localhost:5671/%2f",
                "--amqp-cert-file",
                ca,
            ],
        ),
        "AMQP_CERT_FILE and AMQP_KEY_FILE go together",
    );
    assert_eq!(count(&env, "jobs").await, 0, "nothing was committed");
    let prefer = format!("{}?sslmode=prefer&sslrootcert={ca}", env.database_url);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_shutoff-admin"))
        .args([
            "--database-url",
            &prefer,
            "project",
            "create",
            "--name",
            "x",
        ])
        .output()
        .unwrap();
    refused(&out, "DATABASE_URL gives sslrootcert but sslmode=prefer");
    assert_eq!(count(&env, "projects").await, 1);
}
