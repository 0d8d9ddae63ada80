//! A short-lived cache of validated tokens, keyed by the token's SHA-256 (the
//! token itself is never kept), so a busy client does not cost one database
//! read per request. keystonemiddleware caches validations for 300 s by
//! default; ours is 10 s by default, and an entry never outlives its token.
//! Only valid tokens are cached: an unknown token is looked up every time.

use std::collections::HashMap;
// A poisoned lock is recovered, not unwrapped: a panic elsewhere must not
// turn every later request into a 500, and a cache entry is never left
// half-written (each is one insert or clear).
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use shutoff_core::policy::Caller;
use shutoff_core::store::auth::Authenticated;

/// Entries kept at most; past it the cache starts over (cheaper than an LRU,
/// and a full cache means many distinct tokens, where caching helps little).
const MAX_ENTRIES: usize = 10_000;

pub struct TokenCache {
    ttl: Duration,
    entries: Mutex<HashMap<String, Entry>>,
}

struct Entry {
    caller: Caller,
    expires_at: DateTime<Utc>,
    fetched: Instant,
}

impl TokenCache {
    /// A cache whose entries live `ttl`; zero disables it.
    pub fn new(ttl: Duration) -> Self {
        TokenCache {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    pub fn get(&self, sha256: &str) -> Option<Caller> {
        if self.ttl.is_zero() {
            return None;
        }
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries
            .get(sha256)
            .filter(|e| e.fetched.elapsed() < self.ttl && e.expires_at > Utc::now())
            .map(|e| e.caller.clone())
    }

    pub fn put(&self, sha256: String, valid: &Authenticated) {
        if self.ttl.is_zero() {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= MAX_ENTRIES {
            entries.clear();
        }
        entries.insert(
            sha256,
            Entry {
                caller: valid.caller.clone(),
                expires_at: valid.expires_at,
                fetched: Instant::now(),
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shutoff_core::ids::ProjectId;

    fn valid(expires_in: chrono::Duration) -> Authenticated {
        Authenticated {
            caller: Caller {
                project_id: ProjectId::random(),
                user_id: "u".into(),
                roles: vec!["member".into()],
                project_active: true,
            },
            expires_at: Utc::now() + expires_in,
        }
    }

    #[test]
    fn entries_live_for_the_ttl_but_never_past_the_tokens_expiry() {
        let cache = TokenCache::new(Duration::from_secs(60));
        cache.put("a".into(), &valid(chrono::Duration::hours(1)));
        cache.put("b".into(), &valid(chrono::Duration::seconds(-1)));
        assert!(cache.get("a").is_some());
        assert!(
            cache.get("b").is_none(),
            "an expired token is not served from the cache"
        );
        assert!(cache.get("c").is_none());

        let off = TokenCache::new(Duration::ZERO);
        off.put("a".into(), &valid(chrono::Duration::hours(1)));
        assert!(off.get("a").is_none());
    }
}
