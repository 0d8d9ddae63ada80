//! TLS to RabbitMQ and PostgreSQL against real TLS listeners: private nodes
//! of this test (testkit's `TlsRabbitMq` and `TlsPostgres`, own ports and
//! data dirs, stopped and deleted however the test ends) with certificates
//! from a CA made here. The broker insists on a client certificate; the
//! database takes TCP only over TLS, and a client certificate for any
//! database but `postgres`.
//!
//! A stop goes through with `amqps://` and `sslmode=verify-full` (the API
//! and the worker built as their binaries build them); a wrong CA, a host
//! name the certificate does not carry (`127.0.0.1` for `localhost`) or a
//! missing client certificate is refused at connect, with the TLS failure in
//! the message. Skipped with a message when RabbitMQ or PostgreSQL is not
//! installed, unless `CI` is set.

use std::path::Path;
use std::time::{Duration, Instant};

use clap::Parser;
use shutoff_core::broker::{self, Topology};
use shutoff_core::ids::ProjectId;
use shutoff_core::store::admin::{self, NewServer};
use shutoff_core::store::{self, PoolSettings};
use shutoff_core::tls::{AmqpTls, chain, pg_connect_options};
use shutoff_testkit::tls::{Pki, TlsPostgres, TlsRabbitMq};
use sqlx::ConnectOptions;
use tokio_util::sync::CancellationToken;

const T: Duration = Duration::from_secs(30);

fn amqp_tls(ca: &Path, client: Option<&Pki>) -> AmqpTls {
    AmqpTls {
        amqp_ca_file: Some(ca.to_path_buf()),
        amqp_cert_file: client.map(|p| p.client_cert.clone()),
        amqp_key_file: client.map(|p| p.client_key.clone()),
    }
}

/// `sslmode=MODE&sslrootcert=CA[&sslcert=..&sslkey=..]`.
fn pg_query(mode: &str, ca: Option<&Path>, client: Option<&Pki>) -> String {
    let mut q = format!("sslmode={mode}");
    if let Some(ca) = ca {
        q.push_str(&format!("&sslrootcert={}", ca.display()));
    }
    if let Some(p) = client {
        q.push_str(&format!(
            "&sslcert={}&sslkey={}",
            p.client_cert.display(),
            p.client_key.display()
        ));
    }
    q
}

/// Connects as every binary does; the error with all its causes.
async fn pg_connect(url: &str) -> Result<bool, String> {
    let opts = pg_connect_options(url).map_err(|e| chain(&e))?;
    let mut conn = tokio::time::timeout(T, opts.connect())
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| chain(&e))?;
    // Whether this very connection is encrypted, as the server sees it.
    let ssl: bool = sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(&mut conn)
        .await
        .map_err(|e| chain(&e))?;
    Ok(ssl)
}

async fn amqp_connect(url: &str, tls: &AmqpTls) -> Result<(), String> {
    let nodes = url.parse().map_err(|e| format!("{e}"))?;
    let connected = broker::connect(&nodes, tls, 0, "tls-test", &Topology::default(), T)
        .await
        .map_err(|e| e.to_string())?;
    let _ = connected.conn.close(200, "done".into()).await;
    Ok(())
}

#[track_caller]
fn refused<T: std::fmt::Debug>(what: &str, r: Result<T, String>, why: &str) {
    match r {
        Ok(v) => panic!("{what}: connected ({v:?}) but should be refused for {why}"),
        Err(e) => assert!(e.contains(why), "{what}: refused, but not for {why}: {e}"),
    }
}

/// The whole path over TLS: the API accepts a stop (PostgreSQL with
/// verify-full and a client certificate, RabbitMQ over amqps with one), the
/// worker consumes it and records STOPPED; every connection the two made to
/// PostgreSQL is encrypted.
#[tokio::test]
async fn a_stop_goes_through_tls_to_rabbitmq_and_postgresql() {
    let started = Instant::now();
    let pki = Pki::new();
    let (Some(pg), Some(rabbit)) = tokio::join!(TlsPostgres::start(&pki), TlsRabbitMq::start(&pki))
    else {
        return;
    };
    let nodes_secs = started.elapsed().as_secs_f64();
    let db = pg.url(
        "localhost",
        "shutoff_tls",
        &pg_query("verify-full", Some(&pki.ca), Some(&pki)),
    );
    let hosts = db.parse().unwrap();
    store::create_and_migrate(&hosts).await.unwrap();
    let pool = store::pool(&hosts, &PoolSettings::default(), "tls-test");

    let common = |bin: &str| -> Vec<String> {
        [
            bin,
            "--database-url",
            &db,
            "--amqp-url",
            &rabbit.url("localhost"),
            "--amqp-ca-file",
            pki.ca.to_str().unwrap(),
            "--amqp-cert-file",
            pki.client_cert.to_str().unwrap(),
            "--amqp-key-file",
            pki.client_key.to_str().unwrap(),
            "--retry-delays-ms",
            "100,200",
        ]
        .into_iter()
        .map(String::from)
        .collect()
    };
    let api = shutoff_api::Settings::try_parse_from(
        common("shutoff-api")
            .into_iter()
            .chain(["--listen".into(), "127.0.0.1:0".into()]),
    )
    .unwrap();
    let worker = shutoff_worker::Settings::try_parse_from(
        common("shutoff-worker")
            .into_iter()
            .chain(["--health-listen", "127.0.0.1:0", "--host", "sim-1"].map(String::from)),
    )
    .unwrap();
    let shutdown = CancellationToken::new();
    let worker = shutoff_worker::Worker::build(worker).await.unwrap();
    let health = worker.health_addr();
    let worker = tokio::spawn(worker.run_until_stopped(shutdown.clone()));
    let app = shutoff_api::Application::build(api).await.unwrap();
    let addr = app.local_addr();
    let api = tokio::spawn(app.run_until_stopped(shutdown.clone()));

    let project = ProjectId::random();
    admin::create_project(&pool, &project, "tls").await.unwrap();
    let expires = chrono::Utc::now() + chrono::Duration::hours(1);
    let token = admin::create_token(&pool, &project, "u", &["member".into()], expires)
        .await
        .unwrap();
    let server = admin::create_server(&pool, &NewServer::new(&project, "vm-tls"))
        .await
        .unwrap();
    let http = reqwest::Client::new();
    // The worker is consuming (over amqps) once its /readyz says so.
    let deadline = Instant::now() + T;
    while http
        .get(format!("http://{health}/readyz"))
        .send()
        .await
        .map_or(true, |r| r.status() != 200)
    {
        assert!(
            Instant::now() < deadline,
            "the worker never attached over amqps"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let resp = http
        .post(format!(
            "http://{addr}/v2/{project}/servers/{server}/action"
        ))
        .header("x-auth-token", &token)
        .header("content-type", "application/json")
        .body(r#"{"os-stop": null}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let deadline = Instant::now() + T;
    loop {
        let (vm, job): (String, String) = sqlx::query_as(
            "SELECT i.vm_state, j.state FROM instances i JOIN jobs j ON j.instance_uuid = i.uuid
              WHERE i.uuid = $1",
        )
        .bind(server)
        .fetch_one(&pool)
        .await
        .unwrap();
        if vm == "stopped" && job == "succeeded" {
            break;
        }
        assert!(Instant::now() < deadline, "not stopped: {vm}, job {job}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (tls, plain): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl)
           FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
          WHERE a.application_name IN ('shutoff-api', 'shutoff-worker')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(
        tls >= 2 && plain == 0,
        "{tls} TLS and {plain} plain connections"
    );

    shutdown.cancel();
    api.await.unwrap().unwrap();
    worker.await.unwrap().unwrap();
    eprintln!(
        "timing: tls stop: nodes up in {nodes_secs:.1}s, test {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

/// amqps: the right CA, name and client certificate connect; the wrong CA,
/// `127.0.0.1` for a `localhost` certificate, or no client certificate are
/// refused in the handshake, each naming why.
#[tokio::test]
async fn rabbitmq_refuses_a_wrong_ca_a_wrong_host_name_and_no_client_certificate() {
    let started = Instant::now();
    let pki = Pki::new();
    let Some(rabbit) = TlsRabbitMq::start(&pki).await else {
        return;
    };
    let good = rabbit.url("localhost");
    amqp_connect(&good, &amqp_tls(&pki.ca, Some(&pki)))
        .await
        .expect("the right CA, name and client certificate connect");
    refused(
        "the wrong CA",
        amqp_connect(&good, &amqp_tls(&pki.other_ca, Some(&pki))).await,
        "invalid peer certificate: UnknownIssuer",
    );
    refused(
        "127.0.0.1 for a localhost certificate",
        amqp_connect(&rabbit.url("127.0.0.1"), &amqp_tls(&pki.ca, Some(&pki))).await,
        r#"invalid peer certificate: certificate not valid for name "127.0.0.1""#,
    );
    // In TLS 1.3 the broker refuses a missing client certificate after the
    // client's side of the handshake is done: its alert or, when the reset
    // overtakes it, only the reset reaches us.
    let e = amqp_connect(&good, &amqp_tls(&pki.ca, None))
        .await
        .expect_err("no client certificate is refused");
    assert!(
        e.contains("received fatal alert: CertificateRequired")
            || e.contains("Connection reset by peer"),
        "no client certificate: {e}"
    );
    // A CA for a plain URL is a setting error, never a plain connection.
    let plain = good.replace("amqps://", "amqp://");
    refused(
        "a CA with amqp://",
        amqp_connect(&plain, &amqp_tls(&pki.ca, Some(&pki))).await,
        "AMQP_CA_FILE is set but AMQP_URL is not a TLS URL",
    );
    // And the API and the worker do not start on it.
    let flags = [
        "--amqp-url",
        &plain,
        "--amqp-ca-file",
        pki.ca.to_str().unwrap(),
    ];
    let api = shutoff_api::Settings::try_parse_from(
        ["shutoff-api", "--listen", "127.0.0.1:0"]
            .iter()
            .chain(&flags),
    )
    .unwrap();
    let e = shutoff_api::Application::build(api)
        .await
        .err()
        .expect("refused");
    assert!(e.to_string().starts_with("AMQP_CA_FILE is set"), "{e}");
    let worker = shutoff_worker::Settings::try_parse_from(
        ["shutoff-worker", "--health-listen", "127.0.0.1:0"]
            .iter()
            .chain(&flags),
    )
    .unwrap();
    let e = shutoff_worker::Worker::build(worker)
        .await
        .err()
        .expect("refused");
    assert!(e.to_string().starts_with("AMQP_CA_FILE is set"), "{e}");
    eprintln!(
        "timing: amqps refusals: test {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

/// PostgreSQL: verify-full with the right CA and name connects encrypted;
/// the wrong CA, `127.0.0.1` for a `localhost` certificate, and a missing
/// client certificate are refused; `require` encrypts without checking, and
/// with a `sslrootcert` checks the CA (as libpq).
#[tokio::test]
async fn postgresql_refuses_a_wrong_ca_a_wrong_host_name_and_no_client_certificate() {
    let started = Instant::now();
    let pki = Pki::new();
    let Some(pg) = TlsPostgres::start(&pki).await else {
        return;
    };
    let url = |host: &str, db: &str, q: String| pg.url(host, db, &q);
    let full = |ca: &Path| pg_query("verify-full", Some(ca), Some(&pki));
    assert_eq!(
        pg_connect(&url("localhost", "postgres", full(&pki.ca))).await,
        Ok(true),
        "verify-full with the right CA and name connects, encrypted"
    );
    refused(
        "the wrong CA",
        pg_connect(&url("localhost", "postgres", full(&pki.other_ca))).await,
        "invalid peer certificate: UnknownIssuer",
    );
    refused(
        "127.0.0.1 for a localhost certificate",
        pg_connect(&url("127.0.0.1", "postgres", full(&pki.ca))).await,
        r#"invalid peer certificate: certificate not valid for name "127.0.0.1""#,
    );
    // Databases but `postgres` want a client certificate (clientcert=verify-full).
    assert_eq!(
        pg_connect(&url("localhost", "template1", full(&pki.ca))).await,
        Ok(true)
    );
    refused(
        "no client certificate",
        pg_connect(&url(
            "localhost",
            "template1",
            pg_query("verify-full", Some(&pki.ca), None),
        ))
        .await,
        "connection requires a valid client certificate",
    );
    // require: encrypted, certificate unchecked...
    assert_eq!(
        pg_connect(&url(
            "127.0.0.1",
            "postgres",
            pg_query("require", None, None)
        ))
        .await,
        Ok(true)
    );
    // ...unless a CA is given, which it then checks.
    refused(
        "require with the wrong CA",
        pg_connect(&url(
            "127.0.0.1",
            "postgres",
            pg_query("require", Some(&pki.other_ca), None),
        ))
        .await,
        "invalid peer certificate: UnknownIssuer",
    );
    // The API on the wrong CA starts (PostgreSQL may be down at start-up)
    // and answers 503, never 500 nor a pass, until it can connect. Its
    // broker is a port nothing listens on: with the default one it declared
    // the default topology on the machine's RabbitMQ and left it there.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let no_broker = format!(
        "amqp://guest:guest@127.0.0.1:{}/%2f",
        free.local_addr().unwrap().port()
    );
    drop(free);
    let api = shutoff_api::Settings::try_parse_from([
        "shutoff-api",
        "--listen",
        "127.0.0.1:0",
        "--database-url",
        &url("localhost", "postgres", full(&pki.other_ca)),
        "--amqp-url",
        &no_broker,
    ])
    .unwrap();
    let app = shutoff_api::Application::build(api).await.unwrap();
    let addr = app.local_addr();
    let shutdown = CancellationToken::new();
    let api = tokio::spawn(app.run_until_stopped(shutdown.clone()));
    let resp = reqwest::Client::new()
        .get(format!("http://{addr}/v2/{}/servers", ProjectId::random()))
        .header("x-auth-token", "some-token")
        .send()
        .await
        .unwrap();
    shutoff_testkit::app::fault(resp, 503, "serviceUnavailable").await;
    shutdown.cancel();
    api.await.unwrap().unwrap();
    eprintln!(
        "timing: postgres TLS refusals: test {:.1}s",
        started.elapsed().as_secs_f64()
    );
}
