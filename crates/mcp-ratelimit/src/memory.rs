//! The in-memory backend: one governor keyed rate limiter per quota, over a DashMap state
//! store with a hard cap on the number of keys.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use governor::clock::{Clock, FakeRelativeClock, QuantaClock, QuantaInstant, Reference};
use governor::middleware::StateInformationMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::ShrinkableKeyedStateStore;
use governor::state::{InMemoryState, NotKeyed, StateStore};
use governor::{Quota, RateLimiter};

use crate::key::Key;
use crate::quota::{QuotaSpec, Verdict};

/// A manual clock for tests of the in-memory backend: time moves only when
/// [`MockClock::advance`] is called. Clones share the same time.
///
/// ```
/// use std::time::Duration;
/// use mcp_ratelimit::{MockClock, RateLimitConfig, RateLimitLayer};
///
/// let clock = MockClock::new();
/// let layer = RateLimitLayer::with_clock(RateLimitConfig::per_second(1.0, 1), clock.clone()).unwrap();
/// clock.advance(Duration::from_secs(1));
/// # drop(layer);
/// ```
#[derive(Debug, Clone, Default)]
pub struct MockClock(FakeRelativeClock);

impl MockClock {
    /// A clock at time zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Moves the time forward.
    pub fn advance(&self, by: Duration) {
        self.0.advance(by);
    }
}

/// The clock of the in-memory backend: quanta's TSC clock, or a [`MockClock`].
#[derive(Debug, Clone)]
pub(crate) enum LayerClock {
    Real {
        clock: QuantaClock,
        start: QuantaInstant,
    },
    Mock(FakeRelativeClock),
}

impl LayerClock {
    pub(crate) fn real() -> Self {
        let clock = QuantaClock::default();
        let start = clock.now();
        Self::Real { clock, start }
    }

    pub(crate) fn mock(c: &MockClock) -> Self {
        Self::Mock(c.0.clone())
    }
}

impl Clock for LayerClock {
    type Instant = Nanos;

    #[inline]
    fn now(&self) -> Nanos {
        match self {
            Self::Real { clock, start } => clock.now().duration_since(*start),
            Self::Mock(c) => c.now(),
        }
    }
}

/// The number of keys held by all the stores of one layer, against the cap.
#[derive(Debug)]
pub(crate) struct KeyBudget {
    used: AtomicUsize,
    cap: usize,
    overflowed: AtomicU64,
}

impl KeyBudget {
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            used: AtomicUsize::new(0),
            cap,
            overflowed: AtomicU64::new(0),
        }
    }

    fn try_reserve(&self) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                (u < self.cap).then_some(u + 1)
            })
            .is_ok()
    }

    fn release(&self, n: usize) {
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                Some(u.saturating_sub(n))
            });
    }

    /// Keys currently held.
    #[cfg(test)]
    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    /// Requests that went to an overflow bucket since the last call.
    pub(crate) fn take_overflowed(&self) -> u64 {
        self.overflowed.swap(0, Ordering::AcqRel)
    }
}

/// A governor state store: a DashMap of GCRA states, plus one overflow state shared by
/// every new key that arrives while the layer's key budget is spent.
#[derive(Debug)]
pub(crate) struct CappedStore {
    map: DashMap<Key, InMemoryState>,
    overflow: InMemoryState,
    budget: Arc<KeyBudget>,
}

impl CappedStore {
    fn new(budget: Arc<KeyBudget>) -> Self {
        Self {
            map: DashMap::new(),
            overflow: InMemoryState::default(),
            budget,
        }
    }
}

/// Reads a state without changing it (the closure refuses, so nothing is written).
fn read_state(state: &InMemoryState) -> Option<Nanos> {
    match state.measure_and_replace(&NotKeyed::NonKey, Err::<((), Nanos), _>) {
        Ok(()) => None,
        Err(v) => v,
    }
}

impl StateStore for CappedStore {
    type Key = Key;

    #[inline]
    fn measure_and_replace<T, F, E>(&self, key: &Key, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        if let Some(r) = self
            .map
            .view(key, |_, v| v.measure_and_replace(&NotKeyed::NonKey, &f))
        {
            return r;
        }
        if !self.budget.try_reserve() {
            self.budget.overflowed.fetch_add(1, Ordering::Relaxed);
            return self.overflow.measure_and_replace(&NotKeyed::NonKey, f);
        }
        match self.map.entry(key.clone()) {
            Entry::Occupied(e) => {
                // Another thread inserted it first: give the reservation back.
                self.budget.release(1);
                e.get().measure_and_replace(&NotKeyed::NonKey, f)
            }
            Entry::Vacant(v) => {
                let r = v.insert(InMemoryState::default());
                r.measure_and_replace(&NotKeyed::NonKey, f)
            }
        }
    }
}

impl ShrinkableKeyedStateStore<Key> for CappedStore {
    fn retain_recent(&self, drop_below: Nanos) {
        let mut removed = 0usize;
        self.map.retain(|_, v| {
            let keep = read_state(v).is_some_and(|tat| tat > drop_below);
            if !keep {
                removed += 1;
            }
            keep
        });
        self.budget.release(removed);
    }

    fn shrink_to_fit(&self) {
        self.map.shrink_to_fit();
    }

    fn len(&self) -> usize {
        self.map.len()
    }

    fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

type Limiter = RateLimiter<Key, CappedStore, LayerClock, StateInformationMiddleware>;

/// One keyed limiter per quota, sharing one key budget.
#[derive(Debug)]
pub(crate) struct MemoryBackend {
    limiters: Vec<Limiter>,
    clock: LayerClock,
    pub(crate) budget: Arc<KeyBudget>,
}

impl MemoryBackend {
    pub(crate) fn new(quotas: &[QuotaSpec], max_keys: usize, clock: LayerClock) -> Self {
        let budget = Arc::new(KeyBudget::new(max_keys));
        let limiters = quotas
            .iter()
            .map(|q| {
                RateLimiter::<Key, CappedStore, LayerClock, StateInformationMiddleware>::new(
                    q.governor_quota(),
                    CappedStore::new(budget.clone()),
                    clock.clone(),
                )
            })
            .collect();
        Self {
            limiters,
            clock,
            budget,
        }
    }

    /// Charges `cost` units of each quota in `charges` to `key`. Stops at the first quota
    /// that refuses (units already taken from earlier quotas of the list stay taken).
    ///
    /// `want_state`: compute the remaining units and reset time of an allowed request
    /// (for headers); without it, and with one quota, an allowed verdict carries neither.
    pub(crate) fn check(
        &self,
        quotas: &[QuotaSpec],
        key: &Key,
        charges: &[(usize, u32)],
        want_state: bool,
    ) -> Verdict {
        if let [(qi, cost)] = charges {
            return self.check_one(quotas, key, *qi, *cost, want_state);
        }
        let mut best: Option<Verdict> = None;
        for &(qi, cost) in charges {
            let verdict = self.check_one(quotas, key, qi, cost, true);
            if !verdict.allowed {
                return verdict;
            }
            if best
                .as_ref()
                .is_none_or(|b| verdict.remaining < b.remaining)
            {
                best = Some(verdict);
            }
        }
        best.unwrap_or_else(Verdict::unlimited)
    }

    /// The common case in one step: one quota, cost 1, no headers wanted. `true` when
    /// allowed (the unit is taken); `false` when refused, which changes nothing, so the
    /// caller may then ask [`MemoryBackend::check`] for the details.
    #[inline]
    pub(crate) fn try_one(&self, key: &Key, qi: usize) -> bool {
        self.limiters
            .get(qi)
            .is_some_and(|l| l.check_key(key).is_ok())
    }

    #[inline]
    fn check_one(
        &self,
        quotas: &[QuotaSpec],
        key: &Key,
        qi: usize,
        cost: u32,
        want_state: bool,
    ) -> Verdict {
        let (Some(limiter), Some(spec)) = (self.limiters.get(qi), quotas.get(qi)) else {
            return Verdict::unlimited();
        };
        // More units than the burst never fit: refused, never clamped to the burst (a
        // batch of a hundred calls would otherwise pass a burst of two whole).
        if cost > spec.burst {
            return Verdict::exceeds_burst(qi, cost);
        }
        let outcome = if cost <= 1 {
            Ok(limiter.check_key(key))
        } else {
            let n = NonZeroU32::new(cost).unwrap_or(NonZeroU32::MIN);
            limiter.check_key_n(key, n)
        };
        match outcome {
            Ok(Ok(_)) if !want_state => Verdict::allowed(qi, 0, Duration::ZERO),
            Ok(Ok(snapshot)) => {
                let remaining = snapshot.remaining_burst_capacity().min(spec.burst);
                Verdict::allowed(qi, remaining, spec.period * (spec.burst - remaining))
            }
            Ok(Err(not_until)) => {
                let wait = not_until.wait_time_from(self.clock.now());
                Verdict::limited(qi, wait, wait + spec.period * (spec.burst - 1))
            }
            Err(_) => Verdict::exceeds_burst(qi, cost),
        }
    }

    /// Evicts the keys whose state is indistinguishable from a fresh one.
    pub(crate) fn cleanup(&self) {
        for l in &self.limiters {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }

    /// Keys held, all quotas together.
    pub(crate) fn key_count(&self) -> usize {
        self.limiters.iter().map(|l| l.len()).sum()
    }
}

impl QuotaSpec {
    pub(crate) fn governor_quota(&self) -> Quota {
        let burst = NonZeroU32::new(self.burst).unwrap_or(NonZeroU32::MIN);
        Quota::with_period(self.period)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(burst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    fn spec(rps: f64, burst: u32) -> QuotaSpec {
        QuotaSpec::new("default".into(), rps, burst)
    }

    #[test]
    fn burst_then_refused_and_refill_on_mock_clock() {
        let clock = MockClock::new();
        let quotas = [spec(2.0, 3)];
        let m = MemoryBackend::new(&quotas, 10, LayerClock::mock(&clock));
        let k = Key::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST));
        for expect in [2, 1, 0] {
            let v = m.check(&quotas, &k, &[(0, 1)], true);
            assert!(v.allowed);
            assert_eq!(v.remaining, expect);
        }
        let v = m.check(&quotas, &k, &[(0, 1)], true);
        assert!(!v.allowed);
        assert_eq!(v.retry_after, Duration::from_millis(500));
        clock.advance(Duration::from_millis(499));
        assert!(!m.check(&quotas, &k, &[(0, 1)], true).allowed);
        clock.advance(Duration::from_millis(1));
        assert!(m.check(&quotas, &k, &[(0, 1)], true).allowed);
        assert!(!m.check(&quotas, &k, &[(0, 1)], true).allowed);
    }

    #[test]
    fn a_cost_above_the_burst_is_refused_not_clamped() {
        let clock = MockClock::new();
        let quotas = [spec(1.0, 5)];
        let m = MemoryBackend::new(&quotas, 10, LayerClock::mock(&clock));
        let k = Key::Global;
        let v = m.check(&quotas, &k, &[(0, 50)], true);
        assert!(!v.allowed);
        assert_eq!(v.exceeds, 50);
        assert_eq!(v.retry_after, Duration::ZERO);
        // Nothing was taken: the whole burst is still there.
        assert!(m.check(&quotas, &k, &[(0, 5)], true).allowed);
        let v = m.check(&quotas, &k, &[(0, 1)], true);
        assert!(!v.allowed);
        assert_eq!(v.exceeds, 0, "an ordinary refusal, with a wait");
        assert!(v.retry_after > Duration::ZERO);
    }

    #[test]
    fn a_million_distinct_keys_stay_under_the_cap() {
        let clock = MockClock::new();
        let quotas = [spec(10.0, 10)];
        let cap = 10_000;
        let m = MemoryBackend::new(&quotas, cap, LayerClock::mock(&clock));
        for i in 0..1_000_000u128 {
            let k = Key::Ip(IpAddr::V6(Ipv6Addr::from(i + (1 << 100))));
            let _ = m.check(&quotas, &k, &[(0, 1)], true);
        }
        assert!(m.key_count() <= cap, "{}", m.key_count());
        assert_eq!(m.key_count(), cap);
        assert_eq!(m.budget.used(), cap);
        assert_eq!(m.budget.take_overflowed(), 1_000_000 - cap as u64);
        // The overflow bucket is shared: new keys are now limited together.
        let fresh = Key::Ip(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)));
        assert!(!m.check(&quotas, &fresh, &[(0, 1)], true).allowed);
        // After they go idle, a sweep frees the budget and new keys get their own bucket.
        clock.advance(Duration::from_secs(10));
        m.cleanup();
        assert_eq!(m.key_count(), 0);
        assert_eq!(m.budget.used(), 0);
        assert!(m.check(&quotas, &fresh, &[(0, 1)], true).allowed);
        assert_eq!(m.key_count(), 1);
    }

    #[test]
    fn cleanup_keeps_busy_keys() {
        let clock = MockClock::new();
        let quotas = [spec(1.0, 2)];
        let m = MemoryBackend::new(&quotas, 10, LayerClock::mock(&clock));
        let busy = Key::Global;
        let idle = Key::Unknown;
        let _ = m.check(&quotas, &idle, &[(0, 1)], true);
        clock.advance(Duration::from_secs(5));
        let _ = m.check(&quotas, &busy, &[(0, 1)], true);
        let _ = m.check(&quotas, &busy, &[(0, 1)], true);
        m.cleanup();
        assert_eq!(m.key_count(), 1);
        // The busy key's state survived: it is still limited.
        assert!(!m.check(&quotas, &busy, &[(0, 1)], true).allowed);
    }
}
