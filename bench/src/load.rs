//! The load generator: `connections` HTTP/1.1 clients, each with its own
//! token and its own keep-alive connection, stopping distinct servers as fast
//! as the API answers.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use uuid::Uuid;

pub struct Target {
    pub api: String,
    pub project: String,
    /// One per connection.
    pub tokens: Vec<String>,
    pub servers: Vec<Uuid>,
}

#[derive(Default)]
pub struct Outcome {
    pub accepted: usize,
    pub refused: usize,
    pub errors: usize,
    /// Latency of every 202, in ms.
    pub latencies_ms: Vec<f64>,
    /// When each 202 was sent (seconds into the run), matching `latencies_ms`.
    pub sent_s: Vec<f64>,
    pub elapsed: Duration,
    /// True when the run ended because every server had been stopped.
    pub ran_out: bool,
}

impl Outcome {
    pub fn per_second(&self) -> f64 {
        self.accepted as f64 / self.elapsed.as_secs_f64()
    }

    /// Per second of the run: (answers, answers slower than `slow_ms`, max ms),
    /// to tell a steady tail from a burst at start-up or one stall.
    pub fn timeline(&self, slow_ms: f64) -> Vec<(usize, usize, f64)> {
        let mut t: Vec<(usize, usize, f64)> = Vec::new();
        for (&at, &ms) in self.sent_s.iter().zip(&self.latencies_ms) {
            let s = at as usize;
            if t.len() <= s {
                t.resize(s + 1, (0, 0, 0.0));
            }
            t[s].0 += 1;
            t[s].1 += usize::from(ms > slow_ms);
            t[s].2 = t[s].2.max(ms);
        }
        t
    }

    pub fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies_ms.is_empty() {
            return f64::NAN;
        }
        let mut v = self.latencies_ms.clone();
        v.sort_by(f64::total_cmp);
        let rank = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
        v[rank]
    }
}

/// One `{"os-stop": null}` of `server`: the status code it got.
async fn send_stop(
    client: &reqwest::Client,
    target: &Target,
    token: &str,
    server: &Uuid,
) -> Result<u16, reqwest::Error> {
    let url = format!(
        "http://{}/v2/{}/servers/{server}/action",
        target.api, target.project
    );
    let reply = client
        .post(url)
        .header("x-auth-token", token)
        .header("content-type", "application/json")
        .body(r#"{"os-stop": null}"#)
        .send()
        .await?;
    Ok(reply.status().as_u16())
}

/// Sends stops until every server is taken or `limit` has passed.
pub async fn run(target: Target, limit: Option<Duration>) -> Outcome {
    let target = Arc::new(target);
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..target.tokens.len() {
        let (target, next) = (target.clone(), next.clone());
        tasks.spawn(async move {
            // One client per connection so each keeps its own socket.
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .build()
                .expect("http client");
            let token = &target.tokens[c];
            let mut out = Outcome::default();
            loop {
                if limit.is_some_and(|l| start.elapsed() >= l) {
                    break;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(server) = target.servers.get(i) else {
                    out.ran_out = true;
                    break;
                };
                let sent = Instant::now();
                match send_stop(&client, &target, token, server).await {
                    Ok(202) => {
                        out.accepted += 1;
                        out.latencies_ms.push(sent.elapsed().as_secs_f64() * 1e3);
                        out.sent_s.push((sent - start).as_secs_f64());
                    }
                    Ok(_) => out.refused += 1,
                    Err(_) => out.errors += 1,
                }
            }
            out
        });
    }
    let mut total = Outcome::default();
    while let Some(r) = tasks.join_next().await {
        let o = r.expect("load task");
        total.accepted += o.accepted;
        total.refused += o.refused;
        total.errors += o.errors;
        total.ran_out |= o.ran_out;
        total.latencies_ms.extend(o.latencies_ms);
        total.sent_s.extend(o.sent_s);
    }
    total.elapsed = start.elapsed();
    total
}

/// Sends stops at a steady `rate` per second for `duration` (open loop:
/// stop `i` is due at `i / rate` seconds, whatever the answers before it),
/// and returns each accepted server with the moment its 202 arrived.
pub async fn paced(
    target: Target,
    rate: f64,
    duration: Duration,
) -> (Outcome, Vec<(Uuid, chrono::DateTime<chrono::Utc>)>) {
    let target = Arc::new(target);
    let next = Arc::new(AtomicUsize::new(0));
    let start = tokio::time::Instant::now();
    let total = (rate * duration.as_secs_f64()) as usize;
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..target.tokens.len() {
        let (target, next) = (target.clone(), next.clone());
        tasks.spawn(async move {
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .build()
                .expect("http client");
            let token = &target.tokens[c];
            let mut out = Outcome::default();
            let mut answered = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let Some(&server) = target.servers.get(i) else {
                    out.ran_out = true;
                    break;
                };
                tokio::time::sleep_until(start + Duration::from_secs_f64(i as f64 / rate)).await;
                let sent = Instant::now();
                match send_stop(&client, &target, token, &server).await {
                    Ok(202) => {
                        out.accepted += 1;
                        out.latencies_ms.push(sent.elapsed().as_secs_f64() * 1e3);
                        answered.push((server, chrono::Utc::now()));
                    }
                    Ok(_) => out.refused += 1,
                    Err(_) => out.errors += 1,
                }
            }
            (out, answered)
        });
    }
    let mut out = Outcome::default();
    let mut answered = Vec::new();
    while let Some(r) = tasks.join_next().await {
        let (o, a) = r.expect("load task");
        out.accepted += o.accepted;
        out.refused += o.refused;
        out.errors += o.errors;
        out.ran_out |= o.ran_out;
        out.latencies_ms.extend(o.latencies_ms);
        answered.extend(a);
    }
    out.elapsed = start.elapsed();
    (out, answered)
}
