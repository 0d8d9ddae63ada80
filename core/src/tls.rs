//! TLS settings of the connections that leave the machine, and the one place
//! each becomes connect options: [`AmqpTls::config`] for RabbitMQ (the
//! `--amqp-*-file` flags, used with `amqps://` URLs) and
//! [`pg_connect_options`] for PostgreSQL (libpq's `sslmode`, `sslrootcert`,
//! `sslcert`, `sslkey` in `DATABASE_URL`). Keystone's client is the API's
//! (`--keystone-ca-file`). rustls throughout, with the system's CA store
//! plus the configured bundle.
//!
//! A setting that asks for TLS is never quietly ignored: a CA or client
//! certificate given for a URL that would not use it is a start-up error,
//! not a plain-TCP connection.

use std::path::{Path, PathBuf};

use clap::Args;
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::uri::{AMQPScheme, AMQPUri};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sqlx::postgres::{PgConnectOptions, PgSslMode};

/// How shutoff reaches RabbitMQ over `amqps://`: the CA bundle that signs the
/// broker's certificate and, if the broker asks for one, our client
/// certificate. Read again at every (re)connection, so renewed files are
/// picked up without a restart.
#[derive(Debug, Clone, Default, Args)]
pub struct AmqpTls {
    /// PEM file of CA certificates trusted (besides the system's store) to sign
    /// RabbitMQ's certificate; only with an `amqps://` AMQP_URL.
    #[arg(long, env = "AMQP_CA_FILE")]
    pub amqp_ca_file: Option<PathBuf>,

    /// PEM file of the client certificate (and its chain) shown to RabbitMQ;
    /// with --amqp-key-file, only with an `amqps://` AMQP_URL.
    #[arg(long, env = "AMQP_CERT_FILE")]
    pub amqp_cert_file: Option<PathBuf>,

    /// PEM file of the client certificate's private key (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "AMQP_KEY_FILE")]
    pub amqp_key_file: Option<PathBuf>,
}

/// A TLS setting that cannot work, found before any connection is tried.
#[derive(Debug, thiserror::Error)]
pub enum TlsSettingError {
    #[error("cannot read {what} {}: {source}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} {} holds no PEM {expected}", path.display())]
    NotPem {
        what: &'static str,
        path: PathBuf,
        expected: &'static str,
    },
    #[error("{0} and {1} go together: give both or neither")]
    Pair(&'static str, &'static str),
    #[error(
        "{setting} is set but {url_var} is not a TLS URL ({detail}); \
         refusing to connect without TLS"
    )]
    NotTls {
        setting: &'static str,
        url_var: &'static str,
        detail: String,
    },
    #[error("AMQP_URL: {0}")]
    AmqpUrl(String),
}

impl AmqpTls {
    /// Checks these settings against every node of `nodes` (the scheme is
    /// one for the whole cluster, but each node is connected on its own), so
    /// that settings that cannot work stop a binary at start-up.
    pub fn check(&self, nodes: &crate::broker_nodes::BrokerNodes) -> Result<(), TlsSettingError> {
        for url in nodes.urls() {
            self.config(url)?;
        }
        Ok(())
    }

    /// The TLS configuration lapin connects `url` with. Fails when a file is
    /// unreadable or not PEM, or when files are given for a plain `amqp://`
    /// URL (which would otherwise connect without TLS).
    pub fn config(&self, url: &str) -> Result<OwnedTLSConfig, TlsSettingError> {
        let uri: AMQPUri = url.parse().map_err(TlsSettingError::AmqpUrl)?;
        let configured = [
            ("AMQP_CA_FILE", &self.amqp_ca_file),
            ("AMQP_CERT_FILE", &self.amqp_cert_file),
            ("AMQP_KEY_FILE", &self.amqp_key_file),
        ]
        .into_iter()
        .find(|(_, f)| f.is_some());
        if let Some((setting, _)) = configured
            && uri.scheme != AMQPScheme::AMQPS
        {
            return Err(TlsSettingError::NotTls {
                setting,
                url_var: "AMQP_URL",
                detail: "it is amqp://, use amqps://".into(),
            });
        }
        let cert_chain = match &self.amqp_ca_file {
            Some(path) => {
                let pem = read("AMQP_CA_FILE", path)?;
                certificates("AMQP_CA_FILE", path, &pem)?;
                Some(String::from_utf8(pem).map_err(|_| TlsSettingError::NotPem {
                    what: "AMQP_CA_FILE",
                    path: path.clone(),
                    expected: "certificate",
                })?)
            }
            None => None,
        };
        let identity = match (&self.amqp_cert_file, &self.amqp_key_file) {
            (Some(cert), Some(key)) => {
                let pem = read("AMQP_CERT_FILE", cert)?;
                certificates("AMQP_CERT_FILE", cert, &pem)?;
                let key_pem = read("AMQP_KEY_FILE", key)?;
                private_key("AMQP_KEY_FILE", key, &key_pem)?;
                Some(OwnedIdentity::PKCS8 { pem, key: key_pem })
            }
            (None, None) => None,
            _ => return Err(TlsSettingError::Pair("AMQP_CERT_FILE", "AMQP_KEY_FILE")),
        };
        Ok(OwnedTLSConfig {
            identity,
            cert_chain,
        })
    }
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsSettingError> {
    std::fs::read(path).map_err(|source| TlsSettingError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// Checks that `pem` holds at least one certificate and nothing unreadable
/// (rustls would skip what it cannot parse and fail later, less clearly).
fn certificates(what: &'static str, path: &Path, pem: &[u8]) -> Result<(), TlsSettingError> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(pem).collect();
    match certs {
        Ok(c) if !c.is_empty() => Ok(()),
        _ => Err(TlsSettingError::NotPem {
            what,
            path: path.to_path_buf(),
            expected: "certificate",
        }),
    }
}

fn private_key(what: &'static str, path: &Path, pem: &[u8]) -> Result<(), TlsSettingError> {
    PrivateKeyDer::from_pem_slice(pem)
        .map(|_| ())
        .map_err(|_| TlsSettingError::NotPem {
            what,
            path: path.to_path_buf(),
            expected: "private key",
        })
}

/// The query parameter names sqlx takes for each of libpq's file settings,
/// and the environment variable libpq (and sqlx) read when the URL has none.
const PG_FILES: [(&str, &[&str], &str); 3] = [
    (
        "sslrootcert",
        &["sslrootcert", "ssl-root-cert", "ssl-ca"],
        "PGSSLROOTCERT",
    ),
    ("sslcert", &["sslcert", "ssl-cert"], "PGSSLCERT"),
    ("sslkey", &["sslkey", "ssl-key"], "PGSSLKEY"),
];

/// The connect options of `DATABASE_URL`, with libpq's meaning of its TLS
/// parameters: `sslmode=verify-full` checks the CA and the host name,
/// `verify-ca` the CA, `require` only encrypts unless a `sslrootcert` is given,
/// in which case (as libpq) it checks the CA too. Every pool and migration of
/// every binary is built from these.
///
/// Refused before any connection: an unreadable certificate file, a client
/// certificate without its key, and a `sslrootcert` or `sslcert` with an
/// `sslmode` that does not require TLS (`prefer`, the default, would fall back
/// to plain TCP: name `require` or `verify-full`).
pub fn pg_connect_options(url: &str) -> Result<PgConnectOptions, sqlx::Error> {
    let opts: PgConnectOptions = url.parse()?;
    let parsed = url::Url::parse(url).ok();
    let given = |names: &[&str], env: &str| -> Option<String> {
        let from_url = parsed.as_ref().and_then(|u| {
            u.query_pairs()
                .find(|(k, _)| names.contains(&k.as_ref()))
                .map(|(_, v)| v.into_owned())
        });
        from_url
            .or_else(|| std::env::var(env).ok())
            .filter(|v| !v.trim().is_empty())
    };
    let [root, cert, key] = PG_FILES.map(|(name, names, env)| (name, given(names, env)));
    let config = |msg: String| sqlx::Error::Configuration(msg.into());
    for (name, value) in [&root, &cert, &key] {
        // sqlx takes inline PEM as well as a path; only a path can be missing.
        if let Some(v) = value
            && !v.trim_start().starts_with("-----BEGIN")
            && let Err(e) = std::fs::metadata(v)
        {
            return Err(config(format!("DATABASE_URL's {name}={v}: {e}")));
        }
    }
    if cert.1.is_some() != key.1.is_some() {
        return Err(config(
            "DATABASE_URL's sslcert and sslkey go together: give both or neither".into(),
        ));
    }
    let mode = opts.get_ssl_mode();
    let tls_required = matches!(
        mode,
        PgSslMode::Require | PgSslMode::VerifyCa | PgSslMode::VerifyFull
    );
    if let Some((name, _)) = [&root, &cert].into_iter().find(|(_, v)| v.is_some())
        && !tls_required
    {
        return Err(config(format!(
            "DATABASE_URL gives {name} but sslmode={}, which falls back to plain TCP; \
             use sslmode=verify-full (or require)",
            mode_name(mode)
        )));
    }
    Ok(match mode {
        PgSslMode::Require if root.1.is_some() => opts.ssl_mode(PgSslMode::VerifyCa),
        _ => opts,
    })
}

fn mode_name(mode: PgSslMode) -> &'static str {
    match mode {
        PgSslMode::Disable => "disable",
        PgSslMode::Allow => "allow",
        PgSslMode::Prefer => "prefer",
        PgSslMode::Require => "require",
        PgSslMode::VerifyCa => "verify-ca",
        PgSslMode::VerifyFull => "verify-full",
    }
}

/// An error and its causes on one line (`a: b: c`): TLS failures are
/// usually a few sources deep ("error sending request" ... "invalid peer
/// certificate: UnknownIssuer"), and the last is the one that says why.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn amqp(ca: Option<&str>, cert: Option<&str>, key: Option<&str>) -> AmqpTls {
        AmqpTls {
            amqp_ca_file: ca.map(PathBuf::from),
            amqp_cert_file: cert.map(PathBuf::from),
            amqp_key_file: key.map(PathBuf::from),
        }
    }

    #[test]
    fn amqp_files_with_a_plain_url_are_refused_not_ignored() {
        let e = amqp(Some("/nonexistent/ca.pem"), None, None)
            .config("amqp://guest:guest@127.0.0.1:5672/%2f")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("AMQP_CA_FILE is set") && e.contains("amqps://"),
            "{e}"
        );
        // No files: plain AMQP as before.
        assert!(AmqpTls::default().config("amqp://127.0.0.1").is_ok());
    }

    #[test]
    fn unreadable_or_unpaired_amqp_files_are_named() {
        let url = "amqps://127.0.0.1:5671/%2f";
        let e = amqp(Some("/nonexistent/ca.pem"), None, None)
            .config(url)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("cannot read AMQP_CA_FILE /nonexistent/ca.pem"),
            "{e}"
        );
        let e = amqp(None, Some("/x.pem"), None)
            .config(url)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "AMQP_CERT_FILE and AMQP_KEY_FILE go together: give both or neither"
        );
        let not_pem = std::env::temp_dir().join(format!("not-pem-{}", std::process::id()));
        std::fs::write(&not_pem, "hello").unwrap();
        let e = amqp(not_pem.to_str(), None, None)
            .config(url)
            .unwrap_err()
            .to_string();
        std::fs::remove_file(&not_pem).unwrap();
        assert!(e.ends_with("holds no PEM certificate"), "{e}");
    }

    #[test]
    fn postgres_tls_parameters_mean_what_they_mean_to_libpq() {
        let base = "postgres://u@db.example:5432/shutoff";
        let mode = |q: &str| pg_connect_options(&format!("{base}?{q}")).map(|o| o.get_ssl_mode());
        assert!(matches!(
            mode("sslmode=verify-full"),
            Ok(PgSslMode::VerifyFull)
        ));
        assert!(matches!(mode("sslmode=require"), Ok(PgSslMode::Require)));
        // A CA with `require` checks the CA, as libpq does.
        let ca = std::env::temp_dir().join(format!("ca-{}.pem", std::process::id()));
        std::fs::write(&ca, "").unwrap();
        let with_ca = format!("sslrootcert={}", ca.display());
        assert!(matches!(
            mode(&format!("sslmode=require&{with_ca}")),
            Ok(PgSslMode::VerifyCa)
        ));
        // A CA with a mode that falls back to plain TCP is refused.
        for m in ["prefer", "allow", "disable"] {
            let e = mode(&format!("sslmode={m}&{with_ca}"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(&format!("sslrootcert but sslmode={m}")), "{e}");
        }
        std::fs::remove_file(&ca).unwrap();
        let e = mode("sslmode=verify-full&sslrootcert=/nonexistent/ca.pem")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("sslrootcert=/nonexistent/ca.pem: No such file"),
            "{e}"
        );
        let e = mode("sslmode=verify-full&sslcert=/etc/hostname")
            .unwrap_err()
            .to_string();
        assert!(e.contains("sslcert and sslkey go together"), "{e}");
    }
}
