//! Validation results by the token's SHA-256 (the token itself is never
//! kept), with one validation in flight per token: requests that arrive while
//! a token is being validated wait for that answer instead of asking again.
//!
//! A valid token is kept until its `expires_at` or the TTL, whichever comes
//! first; an invalid one for a shorter time; a failure (Keystone or the
//! database unreachable) is handed to the requests already waiting for it
//! and not kept, so the next request asks again.

use std::collections::HashMap;
use std::future::Future;
// Poisoned locks are recovered (see token_cache.rs).
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use shutoff_core::policy::Caller;
use tokio::sync::OnceCell;

/// Entries kept at most; past it the expired ones go, and if that is not
/// enough the cache starts over.
const MAX_ENTRIES: usize = 10_000;

/// What Keystone said about a token.
#[derive(Debug, Clone)]
pub enum Verdict {
    Valid(Caller),
    Invalid,
}

/// A fresh verdict, and until when Keystone said the token is valid.
pub struct Fresh {
    pub verdict: Verdict,
    pub expires_at: Option<DateTime<Utc>>,
}

pub struct ValidationCache<E> {
    valid_ttl: Duration,
    invalid_ttl: Duration,
    entries: Mutex<HashMap<String, Arc<Slot<E>>>>,
}

/// One validation: empty while it runs, then its outcome.
type Slot<E> = OnceCell<Result<Entry, E>>;

struct Entry {
    verdict: Verdict,
    until: Instant,
}

fn usable<E>(slot: &Slot<E>, now: Instant) -> bool {
    match slot.get() {
        None => true, // in flight: wait for it
        Some(Ok(entry)) => entry.until > now,
        Some(Err(_)) => false,
    }
}

impl<E: Clone> ValidationCache<E> {
    pub fn new(valid_ttl: Duration, invalid_ttl: Duration) -> Self {
        ValidationCache {
            valid_ttl,
            invalid_ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The cached verdict for `sha256`, or the one `validate` gives, which
    /// runs at most once at a time per token.
    pub async fn get_or_validate<F, Fut>(&self, sha256: &str, validate: F) -> Result<Verdict, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Fresh, E>>,
    {
        let slot = self.slot(sha256);
        let settled = slot
            .get_or_init(|| async {
                let fresh = validate().await?;
                let ttl = match fresh.verdict {
                    Verdict::Valid(_) => {
                        let left = fresh
                            .expires_at
                            .and_then(|t| (t - Utc::now()).to_std().ok())
                            .unwrap_or(Duration::ZERO);
                        self.valid_ttl.min(left)
                    }
                    Verdict::Invalid => self.invalid_ttl,
                };
                Ok(Entry {
                    verdict: fresh.verdict,
                    until: Instant::now() + ttl,
                })
            })
            .await;
        match settled {
            Ok(entry) => Ok(entry.verdict.clone()),
            Err(e) => Err(e.clone()),
        }
    }

    /// The slot to wait on: the current one if still usable, else a new one.
    fn slot(&self, sha256: &str) -> Arc<Slot<E>> {
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = entries.get(sha256)
            && usable(slot, now)
        {
            return slot.clone();
        }
        if entries.len() >= MAX_ENTRIES {
            entries.retain(|_, slot| usable(slot, now));
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
        }
        let slot = Arc::new(OnceCell::new());
        entries.insert(sha256.to_string(), slot.clone());
        slot
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shutoff_core::ids::ProjectId;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn caller() -> Caller {
        Caller {
            project_id: ProjectId::random(),
            user_id: "u".into(),
            roles: vec!["member".into()],
            project_active: true,
        }
    }

    fn valid_for(d: chrono::Duration) -> Result<Fresh, String> {
        Ok(Fresh {
            verdict: Verdict::Valid(caller()),
            expires_at: Some(Utc::now() + d),
        })
    }

    #[tokio::test]
    async fn concurrent_requests_for_one_new_token_cause_one_validation() {
        let cache = ValidationCache::<String>::new(Duration::from_secs(300), Duration::ZERO);
        let calls = AtomicUsize::new(0);
        let validate = || async {
            calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
            valid_for(chrono::Duration::hours(1))
        };
        let all =
            futures::future::join_all((0..20).map(|_| cache.get_or_validate("a", validate))).await;
        assert!(all.iter().all(|v| matches!(v, Ok(Verdict::Valid(_)))));
        assert!(matches!(
            cache.get_or_validate("a", validate).await,
            Ok(Verdict::Valid(_))
        ));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_valid_entry_never_outlives_its_token_and_failures_are_not_kept() {
        let cache =
            ValidationCache::<String>::new(Duration::from_secs(300), Duration::from_secs(300));
        let calls = AtomicUsize::new(0);
        let expired = || async {
            calls.fetch_add(1, Ordering::SeqCst);
            valid_for(chrono::Duration::seconds(-1))
        };
        cache.get_or_validate("b", expired).await.unwrap();
        cache.get_or_validate("b", expired).await.unwrap();
        assert_eq!(
            calls.load(Ordering::SeqCst),
            2,
            "an expired token is asked about again"
        );

        let down = || async { Err::<Fresh, _>("keystone down".to_string()) };
        assert_eq!(
            cache.get_or_validate("c", down).await.unwrap_err(),
            "keystone down"
        );
        let up = || async { valid_for(chrono::Duration::hours(1)) };
        assert!(matches!(
            cache.get_or_validate("c", up).await,
            Ok(Verdict::Valid(_))
        ));

        let invalid = || async {
            Ok::<_, String>(Fresh {
                verdict: Verdict::Invalid,
                expires_at: None,
            })
        };
        assert!(matches!(
            cache.get_or_validate("d", invalid).await,
            Ok(Verdict::Invalid)
        ));
        // Within the invalid TTL the verdict is served without validating.
        assert!(matches!(
            cache.get_or_validate("d", up).await,
            Ok(Verdict::Invalid)
        ));
    }
}
