//! TLS for tests: a CA made in the test ([`Pki`], with rcgen) and private
//! PostgreSQL and RabbitMQ nodes with TLS listeners signed by it
//! ([`TlsPostgres`], [`TlsRabbitMq`], on `shutoff-chaos`'s nodes: own ports,
//! data dirs and node names; the machine's services are never touched).
//! Everything is stopped and deleted when dropped, also when a test fails.
//!
//! Certificates name `localhost` only, so connecting by `127.0.0.1` is the
//! wrong host name.

use std::path::{Path, PathBuf};
use std::time::Instant;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use shutoff_chaos::ports::free_ports;
use shutoff_chaos::postgres::Postgres;
use shutoff_chaos::rabbitmq::RabbitTls;

use crate::rabbitmq::PrivateRabbitMq;
use shutoff_chaos::workdir::WorkDir;

/// The files of a test's public-key infrastructure, in a directory of its own.
pub struct Pki {
    /// The CA that signs everything below.
    pub ca: PathBuf,
    /// Another CA, which signed none of it: "the wrong CA".
    pub other_ca: PathBuf,
    /// The servers' certificate, for `localhost` only, and its key.
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// A client certificate for the user `postgres` (PostgreSQL's
    /// `clientcert=verify-full` matches its CN with the user), and its key.
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// Holds the files; deleted when dropped.
    pub dir: WorkDir,
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("a key")).expect("a CA")
}

fn leaf(
    ca: &CertifiedIssuer<'static, KeyPair>,
    cn: &str,
    names: &[&str],
    usage: ExtendedKeyUsagePurpose,
) -> (String, String) {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut params = CertificateParams::new(names).expect("leaf params");
    params.distinguished_name.push(DnType::CommonName, cn);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![usage];
    let key = KeyPair::generate().expect("a key");
    let cert = params.signed_by(&key, ca).expect("a signed certificate");
    (cert.pem(), key.serialize_pem())
}

impl Pki {
    pub fn new() -> Pki {
        let dir = WorkDir::create().expect("a directory for the test's certificates");
        let root = ca("shutoff test CA");
        let other = ca("some other CA");
        let (server_cert, server_key) = leaf(
            &root,
            "localhost",
            &["localhost"],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client_cert, client_key) =
            leaf(&root, "postgres", &[], ExtendedKeyUsagePurpose::ClientAuth);
        let write = |name: &str, pem: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, pem).expect("certificate file written");
            path
        };
        Pki {
            ca: write("ca.pem", &root.pem()),
            other_ca: write("other-ca.pem", &other.pem()),
            server_cert: write("server.pem", &server_cert),
            server_key: write("server.key", &server_key),
            client_cert: write("client.pem", &client_cert),
            client_key: write("client.key", &client_key),
            dir,
        }
    }
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

/// What a private node needs from this machine, or why the test cannot run
/// here (for [`crate::skip::runnable`]).
fn missing(what: &str, files: &[&str]) -> Option<String> {
    files
        .iter()
        .find(|f| !Path::new(f).exists())
        .map(|f| format!("{what} is not installed ({f} is missing)"))
}

/// A private PostgreSQL with `ssl = on` and the [`Pki`]'s certificate, whose
/// pg_hba.conf takes TCP connections only over TLS, and for any database but
/// `postgres` only from a client with a certificate signed by the CA for the
/// user it connects as (`clientcert=verify-full`).
pub struct TlsPostgres {
    /// Declared before `_work` so the cluster stops before its files go.
    pg: Postgres,
    _work: WorkDir,
}

const PG_HBA: &str = "\
local   all       all                 trust
hostssl postgres  all   127.0.0.1/32  trust
hostssl all       all   127.0.0.1/32  trust clientcert=verify-full
host    all       all   0.0.0.0/0     reject
";

impl TlsPostgres {
    /// Where `initdb` and `postgres` are.
    const BIN: &'static str = "/usr/lib/postgresql/15/bin";

    /// Starts one, or `None` (skip) outside CI on a machine without PostgreSQL.
    pub async fn start(pki: &Pki) -> Option<TlsPostgres> {
        let bin = Path::new(Self::BIN);
        if !crate::skip::runnable(missing("PostgreSQL", &[&format!("{}/initdb", Self::BIN)])) {
            return None;
        }
        let t = Instant::now();
        let work = WorkDir::create().unwrap();
        let port = free_ports(1).unwrap()[0];
        let mut pg = Postgres::init(&work, bin, port).await.unwrap();
        pg.enable_tls(&pki.server_cert, &pki.server_key, &pki.ca, PG_HBA)
            .unwrap();
        pg.start().await.unwrap();
        eprintln!(
            "timing: private PostgreSQL with TLS up in {:?}",
            t.elapsed()
        );
        Some(TlsPostgres { pg, _work: work })
    }

    /// `postgres://postgres@HOST:PORT/DATABASE?QUERY`.
    pub fn url(&self, host: &str, database: &str, query: &str) -> String {
        format!(
            "postgres://postgres@{host}:{}/{database}?{query}",
            self.pg.port()
        )
    }
}

/// A private RabbitMQ node with a TLS listener (the [`Pki`]'s certificate)
/// that insists on a client certificate signed by the CA.
pub struct TlsRabbitMq(PrivateRabbitMq);

impl TlsRabbitMq {
    /// Boots one, or `None` (skip) outside CI on a machine without RabbitMQ.
    pub async fn start(pki: &Pki) -> Option<TlsRabbitMq> {
        if !crate::rabbitmq::can_run() {
            return None;
        }
        let (mut r, tls_port) = PrivateRabbitMq::init(1).await;
        r.node
            .enable_tls(RabbitTls {
                port: tls_port[0],
                ca: pki.ca.clone(),
                cert: pki.server_cert.clone(),
                key: pki.server_key.clone(),
                require_client_cert: true,
            })
            .unwrap();
        r.boot().await;
        Some(TlsRabbitMq(r))
    }

    /// `amqps://guest:guest@HOST:PORT/%2f`.
    pub fn url(&self, host: &str) -> String {
        self.0
            .node
            .amqps_url(host)
            .expect("the node has a TLS listener")
    }
}
