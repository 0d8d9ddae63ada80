//! Keystone's v3 token API as shutoff needs it: a service token of our own
//! (password method, project scope), renewed before it expires, and
//! `GET /v3/auth/tokens` to validate a caller's token with it.

use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use reqwest::header::HeaderValue;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::Mutex;

use crate::settings::KeystoneSettings;

/// A service token is renewed when this much of its life is left (or half
/// its life, for short-lived tokens), so no validation uses one that expires
/// on the way.
const RENEW_MARGIN: chrono::Duration = chrono::Duration::minutes(5);

/// After a failed attempt to get a service token, validations fail at once
/// for this long instead of queueing behind one more attempt each (a Keystone
/// that hangs would otherwise cost every waiting request a full timeout).
const SERVICE_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// Why Keystone could not say whether a token is valid. Each means 503 to the
/// caller: never a pass, and never a 401 that would make a client drop a
/// token that may be good.
#[derive(Debug, thiserror::Error)]
pub enum KeystoneError {
    /// With every cause: a TLS refusal ("invalid peer certificate:
    /// UnknownIssuer") is a few sources below reqwest's own message.
    #[error("Keystone is unreachable: {}", shutoff_core::tls::chain(.0))]
    Unreachable(#[source] reqwest::Error),
    #[error("Keystone answered {status} to {what}")]
    Status {
        what: &'static str,
        status: StatusCode,
    },
    #[error(
        "Keystone refused shutoff's service account ({status}); check KEYSTONE_USERNAME, \
         KEYSTONE_PASSWORD, KEYSTONE_PROJECT and that the account has the service or admin role"
    )]
    ServiceAccount { status: StatusCode },
    #[error("unexpected answer from Keystone to {what}: {detail}")]
    Malformed { what: &'static str, detail: String },
    #[error("getting a service token from Keystone failed moments ago; not retried yet")]
    RecentlyFailed,
}

/// What a valid token says about its holder.
#[derive(Debug, Clone)]
pub struct TokenInfo {
    /// None for an unscoped, domain- or system-scoped token.
    pub project_id: Option<String>,
    pub user_id: String,
    pub roles: Vec<String>,
    pub expires_at: DateTime<Utc>,
}

pub struct KeystoneClient {
    http: reqwest::Client,
    /// `<KEYSTONE_URL>/auth/tokens`
    tokens_url: String,
    /// The body of our own `POST /v3/auth/tokens`; holds the password, so
    /// this type has no `Debug`.
    credentials: serde_json::Value,
    /// Our service token; the lock also makes concurrent renewals one.
    service: Mutex<Service>,
}

#[derive(Default)]
struct Service {
    token: Option<ServiceToken>,
    /// Set when getting a token failed: no new attempt before then.
    retry_at: Option<std::time::Instant>,
}

struct ServiceToken {
    token: HeaderValue,
    renew_at: DateTime<Utc>,
}

#[derive(Deserialize)]
struct TokenBody {
    token: TokenFields,
}

#[derive(Deserialize)]
struct TokenFields {
    expires_at: DateTime<Utc>,
    issued_at: Option<DateTime<Utc>>,
    user: Id,
    project: Option<Id>,
    #[serde(default)]
    roles: Vec<Role>,
}

#[derive(Deserialize)]
struct Id {
    id: String,
}

#[derive(Deserialize)]
struct Role {
    name: String,
}

/// The certificates of `KEYSTONE_CA_FILE`, refused at start-up when there
/// are none (a wrong file would otherwise only show at the first request).
fn ca_bundle(path: &std::path::Path) -> anyhow::Result<Vec<reqwest::Certificate>> {
    let pem = std::fs::read(path)
        .map_err(|e| anyhow::anyhow!("cannot read KEYSTONE_CA_FILE {}: {e}", path.display()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem).unwrap_or_default();
    anyhow::ensure!(
        !certs.is_empty(),
        "KEYSTONE_CA_FILE {} holds no PEM certificate",
        path.display()
    );
    Ok(certs)
}

impl KeystoneClient {
    /// Fails on settings that cannot work (missing credentials, a URL that is
    /// not http(s), a CA file that is unreadable or given for http); never
    /// contacts Keystone, so the API starts while it is down.
    pub fn new(
        url: &str,
        settings: &KeystoneSettings,
        timeout: std::time::Duration,
    ) -> anyhow::Result<Self> {
        let parsed = url::Url::parse(url).map_err(|e| anyhow::anyhow!("KEYSTONE_URL: {e}"))?;
        anyhow::ensure!(
            matches!(parsed.scheme(), "http" | "https"),
            "KEYSTONE_URL must be an https:// (or http://) URL"
        );
        // A CA for a plain URL would mean an operator expects TLS that is not there.
        anyhow::ensure!(
            settings.ca_file.is_none() || parsed.scheme() == "https",
            "KEYSTONE_CA_FILE is set but KEYSTONE_URL is http://; refusing to talk to \
             Keystone without TLS (use https://)"
        );
        let missing: Vec<&str> = [
            ("KEYSTONE_USERNAME", &settings.username),
            ("KEYSTONE_PASSWORD", &settings.password),
            ("KEYSTONE_PROJECT", &settings.project),
        ]
        .iter()
        .filter(|(_, v)| v.as_deref().is_none_or(str::is_empty))
        .map(|(name, _)| *name)
        .collect();
        anyhow::ensure!(
            missing.is_empty(),
            "--auth keystone needs {}",
            missing.join(", ")
        );
        let credentials = json!({"auth": {
            "identity": {"methods": ["password"], "password": {"user": {
                "name": settings.username,
                "domain": {"name": settings.user_domain},
                "password": settings.password,
            }}},
            "scope": {"project": {
                "name": settings.project,
                "domain": {"name": settings.project_domain},
            }},
        }});
        let mut http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            // Only the protocol we asked for: no silent downgrade from a
            // redirect to http://.
            .https_only(parsed.scheme() == "https");
        if let Some(path) = &settings.ca_file {
            for cert in ca_bundle(path)? {
                http = http.add_root_certificate(cert);
            }
        }
        let http = http.build()?;
        Ok(KeystoneClient {
            http,
            tokens_url: format!("{}/auth/tokens", url.trim_end_matches('/')),
            credentials,
            service: Mutex::new(Service::default()),
        })
    }

    /// The caller's token as Keystone sees it: `Ok(None)` when Keystone says
    /// it is unknown, expired or revoked.
    pub async fn validate(&self, token: &str) -> Result<Option<TokenInfo>, KeystoneError> {
        // A token that cannot even be a header value is no token of Keystone's.
        let Ok(mut subject) = HeaderValue::from_str(token) else {
            return Ok(None);
        };
        subject.set_sensitive(true);
        let mut retried = false;
        loop {
            let service = self.service_token().await?;
            let resp = self
                .http
                .get(&self.tokens_url)
                .query(&[("nocatalog", "1")])
                .header("x-auth-token", service.clone())
                .header("x-subject-token", subject.clone())
                .send()
                .await
                .map_err(KeystoneError::Unreachable)?;
            match resp.status() {
                StatusCode::OK => {
                    let body: TokenBody =
                        resp.json().await.map_err(|e| malformed("validate", e))?;
                    let t = body.token;
                    return Ok(Some(TokenInfo {
                        project_id: t.project.map(|p| p.id),
                        user_id: t.user.id,
                        roles: t.roles.into_iter().map(|r| r.name).collect(),
                        expires_at: t.expires_at,
                    }));
                }
                StatusCode::NOT_FOUND => return Ok(None),
                // Our service token was revoked or expired early: get a new
                // one, once.
                StatusCode::UNAUTHORIZED if !retried => {
                    tracing::info!("Keystone refused our service token; authenticating again");
                    self.forget_service_token(&service).await;
                    retried = true;
                }
                status @ (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) => {
                    return Err(KeystoneError::ServiceAccount { status });
                }
                status => {
                    return Err(KeystoneError::Status {
                        what: "token validation",
                        status,
                    });
                }
            }
        }
    }

    /// Our service token, renewed first if it is close to expiry.
    async fn service_token(&self) -> Result<HeaderValue, KeystoneError> {
        let mut service = self.service.lock().await;
        if let Some(t) = &service.token
            && Utc::now() < t.renew_at
        {
            return Ok(t.token.clone());
        }
        if service
            .retry_at
            .is_some_and(|at| std::time::Instant::now() < at)
        {
            return Err(KeystoneError::RecentlyFailed);
        }
        match self.issue_service_token().await {
            Ok(fresh) => {
                let token = fresh.token.clone();
                *service = Service {
                    token: Some(fresh),
                    retry_at: None,
                };
                Ok(token)
            }
            Err(e) => {
                service.retry_at = Some(std::time::Instant::now() + SERVICE_RETRY_AFTER);
                Err(e)
            }
        }
    }

    async fn forget_service_token(&self, refused: &HeaderValue) {
        let mut service = self.service.lock().await;
        if service.token.as_ref().is_some_and(|t| t.token == refused) {
            service.token = None;
        }
    }

    async fn issue_service_token(&self) -> Result<ServiceToken, KeystoneError> {
        let resp = self
            .http
            .post(&self.tokens_url)
            .query(&[("nocatalog", "1")])
            .json(&self.credentials)
            .send()
            .await
            .map_err(KeystoneError::Unreachable)?;
        match resp.status() {
            StatusCode::CREATED | StatusCode::OK => {}
            status @ (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::NOT_FOUND) => {
                return Err(KeystoneError::ServiceAccount { status });
            }
            status => {
                return Err(KeystoneError::Status {
                    what: "service authentication",
                    status,
                });
            }
        }
        let mut token = resp
            .headers()
            .get("x-subject-token")
            .cloned()
            .ok_or_else(|| malformed("service authentication", "no X-Subject-Token"))?;
        token.set_sensitive(true);
        let body: TokenBody = resp
            .json()
            .await
            .map_err(|e| malformed("service authentication", e))?;
        let expires_at = body.token.expires_at;
        let issued_at = body.token.issued_at.unwrap_or_else(Utc::now);
        tracing::info!(%expires_at, "obtained a Keystone service token");
        Ok(ServiceToken {
            token,
            renew_at: renew_at(issued_at, expires_at),
        })
    }
}

/// When to stop using a service token and get a new one.
fn renew_at(issued_at: DateTime<Utc>, expires_at: DateTime<Utc>) -> DateTime<Utc> {
    expires_at - RENEW_MARGIN.min((expires_at - issued_at) / 2)
}

fn malformed(what: &'static str, detail: impl ToString) -> KeystoneError {
    KeystoneError::Malformed {
        what,
        detail: detail.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use std::time::{Duration, Instant};

    #[test]
    fn service_tokens_are_renewed_before_they_expire() {
        let issued = Utc::now();
        let hour = issued + chrono::Duration::hours(1);
        assert_eq!(renew_at(issued, hour), hour - chrono::Duration::minutes(5));
        let short = issued + chrono::Duration::minutes(2);
        assert_eq!(
            renew_at(issued, short),
            issued + chrono::Duration::minutes(1)
        );
    }

    #[tokio::test]
    async fn a_hanging_keystone_costs_one_timeout_not_one_per_waiting_request() {
        // Accepts connections and never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hold = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((conn, _)) = listener.accept().await {
                held.push(conn);
            }
        });
        let settings = crate::Settings::parse_from([
            "shutoff-api",
            "--keystone-username",
            "shutoff",
            "--keystone-password",
            "p",
            "--keystone-project",
            "service",
        ]);
        let url = format!("http://{addr}/v3");
        let client =
            KeystoneClient::new(&url, &settings.keystone, Duration::from_millis(300)).unwrap();

        let tokens: Vec<String> = (0..20).map(|i| format!("t{i}")).collect();
        let started = Instant::now();
        let all = futures::future::join_all(tokens.iter().map(|t| client.validate(t))).await;
        assert!(all.iter().all(Result::is_err), "no token passes");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "20 waiting validations took {:?}",
            started.elapsed()
        );
        hold.abort();
    }
}
