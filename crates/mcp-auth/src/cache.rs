//! The bounded cache of verified credentials that the JWT and Basic authenticators share.
//!
//! Keys are 32-byte digests of the credential (SHA-256 of a token, a keyed HMAC of a user
//! name and password), never the credential itself. Only successful verifications are
//! inserted, so a client that does not hold a valid credential cannot add entries: the
//! memory it takes is bounded by the capacity whatever clients send.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mcp_core::Principal;

struct CacheEntry {
    principal: Principal,
    expires_unix: u64,
    epoch: u64,
}

const SHARDS: usize = 16;

/// A bounded map from a credential's digest to the principal it verified as, each entry
/// served until its expiry (at most `max_ttl` after insertion) and only while the
/// caller's epoch (bumped when the keys that verified it change) is the one it was
/// inserted under.
pub(crate) struct VerifiedCache {
    shards: Vec<RwLock<HashMap<[u8; 32], CacheEntry>>>,
    per_shard: usize,
    max_ttl: u64,
}

impl VerifiedCache {
    /// A cache of about `capacity` entries (rounded up to a multiple of the shard count).
    pub(crate) fn new(capacity: usize, max_ttl: Duration) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            per_shard: capacity.div_ceil(SHARDS).max(1),
            max_ttl: max_ttl.as_secs(),
        }
    }

    /// The most entries it holds.
    pub(crate) fn capacity(&self) -> usize {
        self.per_shard * SHARDS
    }

    fn shard(&self, digest: &[u8; 32]) -> &RwLock<HashMap<[u8; 32], CacheEntry>> {
        &self.shards[usize::from(digest[0]) % SHARDS]
    }

    /// The principal `digest` verified as, if it is cached, live and of `epoch`.
    pub(crate) fn get(&self, digest: &[u8; 32], epoch: u64, now: u64) -> Option<Principal> {
        let shard = self.shard(digest).read().unwrap_or_else(|e| e.into_inner());
        let e = shard.get(digest)?;
        (e.epoch == epoch && now < e.expires_unix).then(|| e.principal.clone())
    }

    /// Caches a verification until `exp` (Unix seconds, if the credential has one) or
    /// `max_ttl` from `now`, whichever comes first. When the shard is full, expired and
    /// stale entries go first, then an arbitrary one.
    pub(crate) fn insert(
        &self,
        digest: [u8; 32],
        principal: Principal,
        exp: Option<u64>,
        epoch: u64,
        now: u64,
    ) {
        let cap = now.saturating_add(self.max_ttl);
        let expires_unix = exp.map_or(cap, |e| e.min(cap));
        if expires_unix <= now {
            return;
        }
        let mut shard = self
            .shard(&digest)
            .write()
            .unwrap_or_else(|e| e.into_inner());
        if shard.len() >= self.per_shard && !shard.contains_key(&digest) {
            shard.retain(|_, e| e.epoch == epoch && now < e.expires_unix);
            if shard.len() >= self.per_shard {
                // Still full of live entries: drop one (the map's order is randomized).
                if let Some(k) = shard.keys().next().copied() {
                    shard.remove(&k);
                }
            }
        }
        shard.insert(
            digest,
            CacheEntry {
                principal,
                expires_unix,
                epoch,
            },
        );
    }

    /// How many entries it holds (live or not yet evicted).
    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::sha256;
    use mcp_core::AuthMethod;

    #[test]
    fn cache_is_bounded_and_respects_exp() {
        let c = VerifiedCache::new(32, Duration::from_secs(300));
        assert_eq!(c.capacity(), 32);
        let p = Principal::new("x", AuthMethod::Jwt);
        for i in 0..1000u32 {
            let d = sha256(&i.to_le_bytes());
            c.insert(d, p.clone(), Some(2_000), 0, 1_000);
        }
        assert!(c.len() <= c.capacity());
        let d = sha256(b"k");
        c.insert(d, p.clone(), Some(1_010), 0, 1_000);
        assert!(c.get(&d, 0, 1_005).is_some());
        assert!(c.get(&d, 0, 1_010).is_none(), "never past exp");
        assert!(c.get(&d, 1, 1_005).is_none(), "key set changed");
        // already expired: not cached
        let e = sha256(b"e");
        c.insert(e, p.clone(), Some(999), 0, 1_000);
        assert!(c.get(&e, 0, 998).is_none());
        // without exp: max_ttl from insertion
        let f = sha256(b"f");
        c.insert(f, p, None, 0, 1_000);
        assert!(c.get(&f, 0, 1_299).is_some());
        assert!(c.get(&f, 0, 1_300).is_none(), "never past max_ttl");
    }
}
