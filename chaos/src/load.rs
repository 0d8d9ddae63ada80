//! The client: one stop request per server, paced over the send phase with a
//! cap on requests in flight, retried like a careful OpenStack client would.
//!
//! What a reply means:
//! - 202: accepted. The `X-Compute-Request-Id` names the job.
//! - a connection error, a timeout or a 5xx: we do not know. The API says a
//!   503 means "nothing was accepted", but a commit whose acknowledgement was
//!   lost looks the same from here. Retry.
//! - a 400/409 after such an unknown: the instance is already powering off or
//!   stopped, so an earlier attempt was in fact accepted. Which request id it
//!   had, only the database knows (by instance).
//! - a 4xx on the first attempt: refused (never expected here).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use reqwest::StatusCode;
use shutoff_core::ids::ProjectId;
use uuid::Uuid;

use crate::say;

/// Tries per request, and the first back-off (doubled each time, capped).
const TRIES: u32 = 8;
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(4);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct LoadPlan {
    pub api_url: String,
    pub project: ProjectId,
    pub token: String,
    pub servers: Vec<Uuid>,
    pub concurrency: usize,
    /// Request i starts no earlier than `i / n` of the way through this.
    pub spread: Duration,
}

/// What the client concluded about one stop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// 202, with the request id it named.
    Accepted { request_id: String },
    /// An unknown, then a refusal that proves an earlier try got in.
    AcceptedEarlier,
    /// Never accepted as far as the client knows (out of tries, or refused).
    NotAccepted { last: String },
}

/// One HTTP attempt: a status, or the transport error.
#[derive(Debug, Clone)]
pub enum Try {
    Status(u16),
    Error(String),
}

impl Try {
    /// How the reply counts in the status histogram.
    pub fn label(&self) -> String {
        match self {
            Try::Status(s) => s.to_string(),
            Try::Error(e) => e.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Sent {
    pub server: Uuid,
    pub outcome: Outcome,
    pub tries: Vec<Try>,
    /// From the first try to the decisive reply.
    pub took: Duration,
}

/// The whole send phase's results.
#[derive(Debug, Clone)]
pub struct LoadResult {
    pub sent: Vec<Sent>,
    pub took: Duration,
}

impl LoadResult {
    /// How many replies of each kind, over all tries.
    pub fn histogram(&self) -> BTreeMap<String, usize> {
        let mut h = BTreeMap::new();
        for t in self.sent.iter().flat_map(|s| &s.tries) {
            *h.entry(t.label()).or_default() += 1;
        }
        h
    }

    /// The `q` quantile of the time to a 202.
    pub fn accepted_latency(&self, q: f64) -> Option<Duration> {
        let mut v: Vec<Duration> = self
            .sent
            .iter()
            .filter(|s| matches!(s.outcome, Outcome::Accepted { .. }))
            .map(|s| s.took)
            .collect();
        if v.is_empty() {
            return None;
        }
        v.sort();
        let i = ((v.len() - 1) as f64 * q).round() as usize;
        Some(v[i])
    }
}

pub async fn send_all(plan: &LoadPlan) -> LoadResult {
    let client = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .pool_max_idle_per_host(plan.concurrency)
        .build()
        .expect("an HTTP-only client always builds");
    let n = plan.servers.len().max(1);
    let t0 = tokio::time::Instant::now();
    let progress_every = (n / 10).max(1);
    let mut done = 0usize;
    let mut sent = Vec::with_capacity(n);
    let mut stream = futures::stream::iter(plan.servers.iter().enumerate())
        .map(|(i, server)| {
            let client = &client;
            let start_at = t0 + plan.spread.mul_f64(i as f64 / n as f64);
            async move {
                tokio::time::sleep_until(start_at).await;
                send_one(client, plan, *server).await
            }
        })
        .buffer_unordered(plan.concurrency.max(1));
    while let Some(s) = stream.next().await {
        sent.push(s);
        done += 1;
        if done.is_multiple_of(progress_every) {
            let accepted = sent
                .iter()
                .filter(|s| !matches!(s.outcome, Outcome::NotAccepted { .. }))
                .count();
            say!("sent {done}/{n} stops ({accepted} accepted)");
        }
    }
    LoadResult {
        sent,
        took: t0.elapsed(),
    }
}

async fn send_one(client: &reqwest::Client, plan: &LoadPlan, server: Uuid) -> Sent {
    let url = format!(
        "{}/v2/{}/servers/{}/action",
        plan.api_url, plan.project, server
    );
    let t = Instant::now();
    let mut tries = Vec::new();
    let mut unknown_before = false;
    let mut backoff = FIRST_BACKOFF;
    for n in 0..TRIES {
        let reply = client
            .post(&url)
            .header("X-Auth-Token", &plan.token)
            .header("Content-Type", "application/json")
            .body(r#"{"os-stop": null}"#)
            .send()
            .await;
        let outcome = match reply {
            Err(e) => {
                tries.push(Try::Error(transport_error(&e)));
                None
            }
            Ok(resp) => {
                let status = resp.status();
                tries.push(Try::Status(status.as_u16()));
                let request_id = resp
                    .headers()
                    .get("x-compute-request-id")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                judge(status, request_id, unknown_before)
            }
        };
        if let Some(outcome) = outcome {
            return Sent {
                server,
                outcome,
                tries,
                took: t.elapsed(),
            };
        }
        unknown_before = true;
        if n + 1 < TRIES {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
    Sent {
        server,
        outcome: Outcome::NotAccepted {
            last: tries.last().map(Try::label).unwrap_or_default(),
        },
        tries,
        took: t.elapsed(),
    }
}

/// The decision for one reply, or None to try again.
fn judge(status: StatusCode, request_id: Option<String>, unknown_before: bool) -> Option<Outcome> {
    if status == StatusCode::ACCEPTED {
        return Some(match request_id {
            Some(request_id) => Outcome::Accepted { request_id },
            // Accepted, but unnamed: the database still finds it by instance.
            None => Outcome::AcceptedEarlier,
        });
    }
    if status.is_server_error() {
        return None;
    }
    let conflict = status == StatusCode::BAD_REQUEST || status == StatusCode::CONFLICT;
    Some(if conflict && unknown_before {
        Outcome::AcceptedEarlier
    } else {
        Outcome::NotAccepted {
            last: status.as_u16().to_string(),
        }
    })
}

fn transport_error(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timeout".into()
    } else if e.is_connect() {
        "connect-error".into()
    } else {
        "transport-error".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_202_is_accepted_under_its_request_id() {
        assert_eq!(
            judge(StatusCode::ACCEPTED, Some("req-1".into()), false),
            Some(Outcome::Accepted {
                request_id: "req-1".into()
            })
        );
    }

    #[test]
    fn a_server_error_is_retried() {
        assert_eq!(judge(StatusCode::SERVICE_UNAVAILABLE, None, false), None);
        assert_eq!(judge(StatusCode::INTERNAL_SERVER_ERROR, None, true), None);
    }

    #[test]
    fn a_conflict_after_an_unknown_means_an_earlier_try_got_in() {
        assert_eq!(
            judge(StatusCode::BAD_REQUEST, None, true),
            Some(Outcome::AcceptedEarlier)
        );
        assert_eq!(
            judge(StatusCode::CONFLICT, None, true),
            Some(Outcome::AcceptedEarlier)
        );
    }

    #[test]
    fn a_conflict_on_the_first_try_is_a_refusal() {
        assert!(matches!(
            judge(StatusCode::BAD_REQUEST, None, false),
            Some(Outcome::NotAccepted { .. })
        ));
    }
}
