//! The PostgreSQL hosts of `DATABASE_URL`, parsed once at start-up.
//!
//! The syntax is libpq's multi-host URL: one user, database and query for
//! every host, the hosts comma-separated:
//!
//! ```text
//! postgres://u:p@h1:5432,h2:5433/shutoff?target_session_attrs=read-write
//! ```
//!
//! sqlx connects to one host only, so [`crate::store::pool`] picks among
//! them itself: it keeps to the host where `pg_is_in_recovery()` is false
//! and looks again when that host goes away or turns read-only.
//! `target_session_attrs` may be `read-write` (or its alias `primary`),
//! which is what several hosts mean to shutoff anyway (it writes on every
//! request), or `any` for a single host (no check, as before).

use std::fmt;
use std::str::FromStr;

use sqlx::postgres::PgConnectOptions;

/// The hosts of one PostgreSQL cluster, each as complete connect options
/// for sqlx, in the order given.
#[derive(Clone)]
pub struct DbHosts {
    hosts: Vec<PgConnectOptions>,
    /// `host:port` of each, for logs (never the password).
    names: Vec<String>,
    /// Whether every connection must land on a node that accepts writes.
    read_write: bool,
}

/// Why `DATABASE_URL` is not a list of PostgreSQL hosts.
#[derive(Debug, thiserror::Error)]
pub enum DbHostsError {
    #[error("DATABASE_URL must start with postgres:// or postgresql://")]
    Scheme,
    #[error("host {0} of DATABASE_URL is empty")]
    EmptyHost(usize),
    #[error(
        "target_session_attrs={0} is not supported: shutoff writes, so it takes `read-write` \
         (or `primary`), or `any` with a single host"
    )]
    SessionAttrs(String),
    #[error("host {host} of DATABASE_URL is not valid: {source}")]
    Invalid {
        host: usize,
        #[source]
        source: sqlx::Error,
    },
}

impl DbHosts {
    /// Connect options of each host, in the order given.
    pub fn hosts(&self) -> &[PgConnectOptions] {
        &self.hosts
    }

    /// Host `i` as `host:port` (safe to log).
    pub fn name(&self, i: usize) -> &str {
        &self.names[i]
    }

    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    /// True when connections must be checked to be on the read-write node
    /// (several hosts, or `target_session_attrs=read-write`).
    pub fn read_write(&self) -> bool {
        self.read_write
    }

    /// The first host's database name (`postgres` when the URL names none).
    pub fn database(&self) -> &str {
        self.hosts[0].get_database().unwrap_or("postgres")
    }
}

impl FromStr for DbHosts {
    type Err = DbHostsError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (scheme, rest) = s.split_once("://").ok_or(DbHostsError::Scheme)?;
        if scheme != "postgres" && scheme != "postgresql" {
            return Err(DbHostsError::Scheme);
        }
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        let (userinfo, hostlist) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (path, query) = match tail.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (tail, None),
        };
        // sqlx does not know target_session_attrs: we take it out and act on it.
        let mut attrs = None;
        let query: Vec<&str> = query
            .into_iter()
            .flat_map(|q| q.split('&'))
            .filter(|kv| match kv.strip_prefix("target_session_attrs=") {
                Some(v) => {
                    attrs = Some(v.to_string());
                    false
                }
                None => !kv.is_empty(),
            })
            .collect();
        let tail = if query.is_empty() {
            path.to_string()
        } else {
            format!("{path}?{}", query.join("&"))
        };
        let names_in_url: Vec<&str> = hostlist.split(',').map(str::trim).collect();
        let read_write = match attrs.as_deref() {
            None => names_in_url.len() > 1,
            Some("read-write" | "primary") => true,
            Some("any") if names_in_url.len() == 1 => false,
            Some(other) => return Err(DbHostsError::SessionAttrs(other.to_string())),
        };
        let mut hosts = Vec::new();
        let mut names = Vec::new();
        for (i, host) in names_in_url.iter().enumerate() {
            // A URL without any host (`postgres:///db`) is sqlx's own
            // business (its default host or socket); an empty one in a
            // list is a typo.
            if host.is_empty() && names_in_url.len() > 1 {
                return Err(DbHostsError::EmptyHost(i + 1));
            }
            let url = match userinfo {
                Some(u) => format!("{scheme}://{u}@{host}{tail}"),
                None => format!("{scheme}://{host}{tail}"),
            };
            // TLS as libpq's parameters say, checked for settings that
            // cannot work (crate::tls).
            let opts: PgConnectOptions =
                crate::tls::pg_connect_options(&url).map_err(|source| DbHostsError::Invalid {
                    host: i + 1,
                    source,
                })?;
            names.push(format!("{}:{}", opts.get_host(), opts.get_port()));
            hosts.push(opts);
        }
        Ok(DbHosts {
            hosts,
            names,
            read_write,
        })
    }
}

/// Only the hosts: the options hold the password.
impl fmt::Debug for DbHosts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DbHosts")
            .field("hosts", &self.names)
            .field("read_write", &self.read_write)
            .finish()
    }
}

impl fmt::Display for DbHosts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.names.join(","), self.database())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_single_url_is_one_host_without_a_check() {
        let h: DbHosts = "postgres://postgres@127.0.0.1:5432/shutoff"
            .parse()
            .unwrap();
        assert_eq!(h.len(), 1);
        assert!(!h.read_write());
        assert_eq!(h.to_string(), "127.0.0.1:5432/shutoff");
    }

    #[test]
    fn libpqs_multi_host_form_gives_each_host_the_user_database_and_query() {
        let h: DbHosts =
            "postgres://u:secret@h1:5432,h2:5433/shutoff?sslmode=disable&target_session_attrs=read-write"
                .parse()
                .unwrap();
        assert_eq!(h.len(), 2);
        assert!(h.read_write());
        assert_eq!(h.name(1), "h2:5433");
        for o in h.hosts() {
            assert_eq!(o.get_username(), "u");
            assert_eq!(o.get_database(), Some("shutoff"));
        }
        assert!(!format!("{h:?}").contains("secret"));
    }

    #[test]
    fn several_hosts_mean_read_write_and_any_is_refused_for_them() {
        let h: DbHosts = "postgres://u@h1,h2/db".parse().unwrap();
        assert!(h.read_write());
        assert_eq!(h.name(0), "h1:5432");
        assert!(matches!(
            "postgres://u@h1,h2/db?target_session_attrs=any".parse::<DbHosts>(),
            Err(DbHostsError::SessionAttrs(_))
        ));
        assert!(matches!(
            "postgres://u@h1/db?target_session_attrs=standby".parse::<DbHosts>(),
            Err(DbHostsError::SessionAttrs(_))
        ));
        let one: DbHosts = "postgres://u@h1/db?target_session_attrs=read-write"
            .parse()
            .unwrap();
        assert!(one.read_write());
    }

    #[test]
    fn bad_urls_are_refused() {
        assert!(matches!(
            "mysql://h1/db".parse::<DbHosts>(),
            Err(DbHostsError::Scheme)
        ));
        assert!(matches!(
            "postgres://u@h1,,h3/db".parse::<DbHosts>(),
            Err(DbHostsError::EmptyHost(2))
        ));
        assert!(matches!(
            "postgres://u@h1,h2:port/db".parse::<DbHosts>(),
            Err(DbHostsError::Invalid { host: 2, .. })
        ));
    }
}
