//! A pool over a PostgreSQL primary and its synchronous standby
//! (`DATABASE_URL` with both hosts) writes to the primary only, moves to the
//! standby once it is promoted after the primary died, and refuses the old
//! primary when it comes back as a read-only standby. Every stop the
//! acceptor committed before the primary died is on the promoted node:
//! with `synchronous_standby_names = '*'` (and `synchronous_commit = on`,
//! the default) a commit returns only once the standby has it.
//!
//! The nodes are private to this test (own data dirs, ports and sockets,
//! `shutoff-chaos`'s helper), SIGKILLed or stopped however it ends; the
//! machine's PostgreSQL is never touched. Skipped with a message when the
//! PostgreSQL server binaries are missing, unless `CI` is set. ~15 s here.

use std::path::Path;
use std::time::{Duration, Instant};

use shutoff_chaos::ports::free_ports;
use shutoff_chaos::postgres::Postgres;
use shutoff_chaos::workdir::WorkDir;
use shutoff_core::acceptor::{Acceptor, StopRequest};
use shutoff_core::batch::Ticket;
use shutoff_core::db_hosts::DbHosts;
use shutoff_core::ids::{ProjectId, RequestId, ServerId};
use shutoff_core::policy::Caller;
use shutoff_core::store::{self, PoolSettings, admin};
use sqlx::PgPool;
use uuid::Uuid;

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
const T: Duration = Duration::from_secs(30);

/// Until `f` is true or `limit` passes.
async fn eventually<F, Fut>(limit: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// The port of the node the pool's connection is on, if it answers.
async fn port_of(pool: &PgPool) -> Option<i32> {
    tokio::time::timeout(
        Duration::from_secs(3),
        sqlx::query_scalar::<_, i32>("SELECT inet_server_port()").fetch_one(pool),
    )
    .await
    .ok()?
    .ok()
}

/// Accepts a stop of `server` through the one acceptor; the job id.
async fn accept(pool: &PgPool, project: &ProjectId, server: Uuid) -> Result<Uuid, String> {
    let caller = Caller {
        project_id: project.clone(),
        user_id: "u".into(),
        roles: vec!["member".into()],
        project_active: true,
    };
    let request_id = RequestId::new();
    let stop = StopRequest {
        caller: &caller,
        server: ServerId(server),
        request_id: &request_id,
        max_attempts: 5,
    };
    Acceptor::new(pool.clone())
        .accept(stop, &Ticket::new())
        .await
        .map(|job| job.job_id)
        .map_err(|e| format!("{e:?}"))
}

#[tokio::test]
async fn the_pool_follows_the_promoted_standby_and_keeps_every_synchronously_committed_stop() {
    let installed = Path::new(PG_BIN).join("pg_basebackup").is_file();
    let missing =
        (!installed).then(|| format!("PostgreSQL 15 server binaries are not in {PG_BIN}"));
    if !shutoff_testkit::skip::runnable(missing) {
        return;
    }
    let t0 = Instant::now();
    let work = WorkDir::create().unwrap();
    let bin = Path::new(PG_BIN);
    let p = free_ports(2).unwrap();
    let mut primary = Postgres::init_named(&work, bin, p[0], "pg-a")
        .await
        .unwrap();
    primary.start().await.unwrap();
    let mut standby = Postgres::standby_of(&work, bin, p[1], "pg-b", p[0])
        .await
        .unwrap();
    standby.start().await.unwrap();
    // Set after the base backup, so the standby, once promoted, does not
    // wait for a standby of its own.
    primary
        .execute("ALTER SYSTEM SET synchronous_standby_names = '*'")
        .await
        .unwrap();
    primary.execute("SELECT pg_reload_conf()").await.unwrap();
    let sync = eventually(T, || async {
        primary
            .execute("DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_stat_replication WHERE sync_state = 'sync') THEN RAISE 'no sync standby'; END IF; END $$")
            .await
            .is_ok()
    })
    .await;
    assert!(sync, "the standby never became synchronous");
    eprintln!(
        "timing: primary + synchronous standby up in {:?}",
        t0.elapsed()
    );

    // The standby first: the pool must pass it by.
    let url = format!(
        "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/shutoff?target_session_attrs=read-write",
        p[1], p[0]
    );
    let db: DbHosts = url.parse().unwrap();
    store::create_and_migrate(&db).await.unwrap();
    let settings = PoolSettings {
        max_connections: 4,
        acquire_timeout: Duration::from_secs(2),
        failover_probe: Duration::from_millis(300),
        ..PoolSettings::default()
    };
    let pool = store::pool(&db, &settings, "test-failover");
    // The standby may not have replayed CREATE DATABASE yet (a synchronous
    // commit waits for its flush, not its replay): a connection there fails
    // until the picker has moved the pool to the primary.
    let on_primary = eventually(T, || async {
        port_of(&pool).await == Some(i32::from(p[0]))
    })
    .await;
    assert!(on_primary, "the pool never settled on the primary");
    for _ in 0..4 {
        assert_eq!(
            port_of(&pool).await,
            Some(i32::from(p[0])),
            "the pool left the primary"
        );
    }

    let project = ProjectId::random();
    admin::create_project(&pool, &project, "failover")
        .await
        .unwrap();
    let mut servers = Vec::new();
    for i in 0..21 {
        let s = admin::NewServer::new(&project, &format!("s{i}"));
        servers.push(admin::create_server(&pool, &s).await.unwrap());
    }
    let mut committed = Vec::new();
    for s in &servers[..20] {
        committed.push(accept(&pool, &project, *s).await.unwrap());
    }

    // The primary dies as a machine does; the standby is promoted.
    let t = Instant::now();
    primary.kill().await;
    standby.promote().await.unwrap();
    let moved = eventually(T, || async {
        port_of(&pool).await == Some(i32::from(p[1]))
    })
    .await;
    assert!(moved, "the pool did not move to the promoted standby");
    let job = eventually(T, || async {
        accept(&pool, &project, servers[20]).await.is_ok()
    })
    .await;
    assert!(job, "no stop was accepted on the promoted standby");
    eprintln!(
        "timing: writes on the promoted standby {:?} after the kill",
        t.elapsed()
    );

    let found: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM jobs WHERE id = ANY($1)")
        .bind(&committed)
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(
        found.len(),
        committed.len(),
        "every stop committed on the old primary is on the new one"
    );

    // The old primary comes back as a standby of the new one, and a pool
    // that lists it first still lands on the read-write node.
    primary.base_backup(p[1]).await.unwrap();
    primary.start().await.unwrap();
    assert!(primary.in_recovery().await.unwrap());
    let db2: DbHosts = format!(
        "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/shutoff",
        p[0], p[1]
    )
    .parse()
    .unwrap();
    let pool2 = store::pool(&db2, &settings, "test-failover-2");
    for _ in 0..4 {
        assert_eq!(
            port_of(&pool2).await,
            Some(i32::from(p[1])),
            "a connection landed on the read-only node"
        );
    }
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
        .fetch_one(&pool2)
        .await
        .unwrap();
    assert_eq!(n, 21);

    pool2.close().await;
    pool.close().await;
    primary.stop().await.unwrap();
    standby.stop().await.unwrap();
    eprintln!("timing: whole test {:?}", t0.elapsed());
}
