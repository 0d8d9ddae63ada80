//! The printed result: what the client saw, what was done to the system,
//! how the jobs went, the verdict table and the timings.

use std::fmt::Write;
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use crate::classify::{Finding, Verdict};
use crate::faults::{Done, Fault};
use crate::fleet::Terminated;
use crate::load::LoadResult;
use crate::settle::Settled;

/// How many examples of each anomaly to show.
const EXAMPLES: usize = 10;

pub struct Report<'a> {
    /// `--cluster`: a RabbitMQ cluster and a PostgreSQL primary + standby.
    pub cluster: bool,
    pub stops: usize,
    pub workers: usize,
    pub concurrency: usize,
    pub load: &'a LoadResult,
    pub faults: &'a [Done],
    pub worker_restarts: u32,
    pub unexpected_exits: &'a [String],
    /// ERROR-level log lines per service.
    pub error_lines: &'a [(String, usize)],
    pub settled: &'a Settled,
    pub verdict: &'a Verdict,
    pub timings: Timings,
}

#[derive(Debug, Clone, Copy)]
pub struct Timings {
    pub setup: Duration,
    pub send: Duration,
    /// When both the load and the faults were over, on the run's clock
    /// (like the faults' `at`).
    pub faults_done_at: f64,
    pub settle: Duration,
    pub check: Duration,
    pub total: Duration,
}

impl Report<'_> {
    /// Whether the run passed, and every reason it did not.
    pub fn failures(&self) -> Vec<String> {
        let v = self.verdict;
        let mut out = Vec::new();
        for (name, list) in [
            ("lost", &v.lost),
            ("stuck", &v.stuck),
            ("duplicated", &v.duplicated),
            ("inconsistent", &v.inconsistent),
        ] {
            if !list.is_empty() {
                out.push(format!("{} {name}", list.len()));
            }
        }
        if !self.settled.settled {
            out.push("the system did not settle".into());
        }
        let lies = self.lying_refusals();
        if lies > 0 {
            out.push(format!(
                "{lies} stop(s) answered only 503 (\"nothing was accepted\") before a 409 proved one got in"
            ));
        }
        for d in self.faults {
            if let Some(t) = &d.terminated
                && !t.clean()
            {
                out.push(format!("SIGTERMed worker {}: {}", t.worker, exit_text(t)));
            }
        }
        if !self.unexpected_exits.is_empty() {
            out.push(format!(
                "{} service(s) exited by themselves",
                self.unexpected_exits.len()
            ));
        }
        out
    }

    /// 5xx replies, and how many of them a later 202 for the same server
    /// proves committed nothing (had one committed, the retry would have
    /// met `powering-off` and got a 409).
    fn refusals(&self) -> (usize, usize) {
        use crate::load::{Outcome, Try};
        let mut refusals = 0;
        let mut untouched = 0;
        for s in &self.load.sent {
            let n = s
                .tries
                .iter()
                .filter(|t| matches!(t, Try::Status(c) if *c >= 500))
                .count();
            refusals += n;
            if matches!(s.outcome, Outcome::Accepted { .. }) {
                untouched += n;
            }
        }
        (refusals, untouched)
    }

    /// Stops whose every unanswered try was a 503 (which promises nothing
    /// was accepted), yet a later 409 proved one of them got in.
    fn lying_refusals(&self) -> usize {
        use crate::load::{Outcome, Try};
        self.load
            .sent
            .iter()
            .filter(|s| matches!(s.outcome, Outcome::AcceptedEarlier))
            .filter(|s| {
                let unknown = &s.tries[..s.tries.len().saturating_sub(1)];
                !unknown.is_empty() && unknown.iter().all(|t| matches!(t, Try::Status(503)))
            })
            .count()
    }

    pub fn render(&self) -> String {
        let mut o = String::new();
        let v = self.verdict;
        let secs = |d: Duration| format!("{:.1}s", d.as_secs_f64());
        let _ = writeln!(
            o,
            "\n=== shutoff chaos run{} ===",
            if self.cluster {
                " (3-node RabbitMQ cluster, PostgreSQL primary + synchronous standby)"
            } else {
                ""
            }
        );
        let _ = writeln!(
            o,
            "{} stops, {} workers, {} requests in flight, sent over {}",
            self.stops,
            self.workers,
            self.concurrency,
            secs(self.load.took)
        );

        let _ = writeln!(o, "\nclient");
        let c = &v.client;
        let _ = writeln!(o, "  accepted (202)                  {:>6}", c.accepted);
        let _ = writeln!(
            o,
            "  accepted by an earlier try      {:>6}   (a retry was refused as a duplicate)",
            c.accepted_earlier
        );
        let _ = writeln!(
            o,
            "  not accepted                    {:>6}   (of which committed anyway: {})",
            c.not_accepted, c.not_accepted_but_committed
        );
        let replies: Vec<String> = self
            .load
            .histogram()
            .iter()
            .map(|(k, n)| format!("{k} x{n}"))
            .collect();
        let _ = writeln!(o, "  replies: {}", replies.join(", "));
        let (refusals, untouched) = self.refusals();
        let _ = writeln!(
            o,
            "  refusals (5xx): {refusals}, of which proved to have left their server untouched \
             (a later try got a 202, not a 409): {untouched}"
        );
        if let (Some(p50), Some(p99), Some(max)) = (
            self.load.accepted_latency(0.5),
            self.load.accepted_latency(0.99),
            self.load.accepted_latency(1.0),
        ) {
            let _ = writeln!(
                o,
                "  time to 202: p50 {:.0}ms, p99 {:.0}ms, max {:.0}ms",
                p50.as_secs_f64() * 1e3,
                p99.as_secs_f64() * 1e3,
                max.as_secs_f64() * 1e3
            );
        }

        let _ = writeln!(o, "\nfaults");
        for d in self.faults {
            let mut extra = String::new();
            if let Some(n) = d.running_jobs {
                let _ = write!(extra, "   {n} jobs running on it");
            }
            if let Some(t) = &d.terminated {
                let _ = write!(extra, ", {} after {}", exit_text(t), secs(t.took));
            }
            if let Some(detail) = &d.detail {
                let _ = write!(extra, "   {detail}");
            }
            let first = d
                .first_completion
                .map(|t| format!("{:.2}s", t.as_secs_f64()))
                .unwrap_or_else(|| "none".into());
            let _ = writeln!(
                o,
                "  at {:>6.1}s  {:<26} back after {:>5}, first stop done {:>6} after it{extra}",
                d.at,
                d.fault.to_string(),
                secs(d.took),
                first
            );
        }
        let count = |f: fn(&Fault) -> bool| self.faults.iter().filter(|d| f(&d.fault)).count();
        if self.cluster {
            let _ = writeln!(
                o,
                "  RabbitMQ node stops {}, PostgreSQL failovers {}, standby rebuilds {}, worker restarts {}",
                count(|f| matches!(f, Fault::StopQueueLeader | Fault::BounceOtherRabbitNode)),
                count(|f| matches!(f, Fault::KillPrimaryPromoteStandby)),
                count(|f| matches!(f, Fault::RebuildStandby)),
                self.worker_restarts
            );
        } else {
            let _ = writeln!(
                o,
                "  worker SIGKILLs {}, worker SIGTERMs {}, PostgreSQL restarts {}, RabbitMQ restarts {}, \
             worker restarts {}",
                count(|f| matches!(f, Fault::KillWorker(_))),
                count(|f| matches!(f, Fault::TerminateWorker(_))),
                count(|f| matches!(f, Fault::RestartPostgres)),
                count(|f| matches!(f, Fault::RestartRabbitMq)),
                self.worker_restarts
            );
        }
        if self.unexpected_exits.is_empty() {
            let _ = writeln!(o, "  services that exited by themselves: none");
        } else {
            for e in self.unexpected_exits {
                let _ = writeln!(o, "  EXITED: {e}");
            }
        }

        let errors: Vec<String> = self
            .error_lines
            .iter()
            .map(|(name, n)| format!("{name} {n}"))
            .collect();
        let _ = writeln!(
            o,
            "  ERROR lines in the service logs: {}",
            errors.join(", ")
        );

        let j = &v.jobs;
        let _ = writeln!(o, "\njobs");
        let _ = writeln!(
            o,
            "  {} jobs, {} attempts, {} retries after a failed power-off, {} handed back \
             (lease rescued or returned on shutdown)",
            j.jobs, j.attempts, j.retries, j.handed_back
        );
        let _ = writeln!(o, "  dead letters: {}", j.dead_letters);
        if !j.failed_histories.is_empty() {
            let _ = writeln!(
                o,
                "  failed jobs' transitions (state#attempt/worker@seconds after creation):"
            );
            for h in &j.failed_histories {
                let _ = writeln!(o, "    {h}");
            }
        }
        let mut reasons: Vec<_> = j.failure_reasons.iter().collect();
        reasons.sort_by(|a, b| b.1.cmp(a.1));
        for (reason, n) in reasons {
            let _ = writeln!(o, "  failed x{n}: {reason}");
        }
        let _ = writeln!(
            o,
            "  settled: {}{}",
            if self.settled.settled { "yes" } else { "NO" },
            if self.settled.settled {
                String::new()
            } else {
                format!(
                    " ({} jobs unfinished, {} instances powering off)",
                    self.settled.unfinished, self.settled.powering_off
                )
            }
        );

        let _ = writeln!(o, "\nverdict (every accepted stop)");
        let _ = writeln!(o, "  +--------------+--------+");
        let _ = writeln!(o, "  | outcome      |  count |");
        let _ = writeln!(o, "  +--------------+--------+");
        let row = |o: &mut String, name: &str, n: usize, note: &str| {
            let _ = writeln!(o, "  | {name:<12} | {n:>6} |{note}");
        };
        row(
            &mut o,
            "ok",
            v.ok(),
            &format!(" succeeded {}, failed {}", v.ok_succeeded, v.ok_failed),
        );
        row(&mut o, "lost", v.lost.len(), "");
        row(&mut o, "stuck", v.stuck.len(), "");
        row(&mut o, "duplicated", v.duplicated.len(), "");
        row(&mut o, "inconsistent", v.inconsistent.len(), "");
        let _ = writeln!(o, "  +--------------+--------+");
        for (name, list) in [
            ("lost", &v.lost),
            ("stuck", &v.stuck),
            ("duplicated", &v.duplicated),
            ("inconsistent", &v.inconsistent),
        ] {
            examples(&mut o, name, list);
        }

        let t = &self.timings;
        let _ = writeln!(
            o,
            "\ntimings: setup {}, send {}, sending and faults over at {:.1}s, then settle {}, check {}, \
             total {}",
            secs(t.setup),
            secs(t.send),
            t.faults_done_at,
            secs(t.settle),
            secs(t.check),
            secs(t.total)
        );
        let failures = self.failures();
        if failures.is_empty() {
            let _ = writeln!(o, "PASS");
        } else {
            let _ = writeln!(o, "FAIL: {}", failures.join("; "));
        }
        o
    }
}

fn exit_text(t: &Terminated) -> String {
    match t.status {
        None => "did not exit in time (killed)".into(),
        Some(s) => match (s.code(), s.signal()) {
            (Some(c), _) => format!("exited {c}"),
            (None, Some(sig)) => format!("died of signal {sig}"),
            _ => s.to_string(),
        },
    }
}

fn examples(o: &mut String, name: &str, list: &[Finding]) {
    if list.is_empty() {
        return;
    }
    let _ = writeln!(o, "  {name}, first {}:", EXAMPLES.min(list.len()));
    for f in list.iter().take(EXAMPLES) {
        let _ = writeln!(o, "    server {}: {}", f.server, f.what);
    }
}
