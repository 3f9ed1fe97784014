//! A circuit breaker for a shared backend (Redis) that every request would otherwise wait
//! for while it is down.
//!
//! - **Closed**: every call goes to the backend. `failure_threshold` consecutive failures
//!   (errors or timeouts) open the breaker.
//! - **Open**: no call goes to the backend; the caller takes its fast path at once (let
//!   the request through, or refuse it). After the back-off the breaker is half-open.
//! - **Half-open**: exactly one call (the probe) goes to the backend, every other one takes
//!   the fast path. The probe's success closes the breaker; its failure opens it again for
//!   twice the previous back-off, at most `backoff_max_ms`. A probe dropped before its
//!   outcome is known (the request was cancelled) hands the probe to the next call.
//!
//! The clock is tokio's, so that tests can pause and advance it. In the closed state,
//! [`CircuitBreaker::acquire`] is one atomic load; the other states take a short lock.
//!
//! ```
//! use mcp_core::breaker::{BreakerConfig, CircuitBreaker, Permit};
//!
//! let breaker = CircuitBreaker::new(BreakerConfig::default()).unwrap();
//! match breaker.acquire() {
//!     Permit::Call(call) | Permit::Probe(call) => {
//!         // ... call the backend, then say how it went:
//!         call.success();
//!     }
//!     Permit::Skip => { /* the backend is down: fail open or closed, at once */ }
//! }
//! ```

use std::fmt;
use std::sync::atomic::{AtomicU8, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// The state of a [`CircuitBreaker`]; `as u8` is the value of a state gauge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum BreakerState {
    /// Calls go to the backend (0).
    Closed = 0,
    /// Calls skip the backend (1).
    Open = 1,
    /// One probe goes to the backend, the other calls skip it (2).
    HalfOpen = 2,
}

impl BreakerState {
    /// `closed`, `open` or `half_open` (a metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Open,
            2 => Self::HalfOpen,
            _ => Self::Closed,
        }
    }
}

impl fmt::Display for BreakerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The thresholds of a [`CircuitBreaker`]. In YAML, snake_case keys (camelCase accepted).
///
/// ```
/// use mcp_core::breaker::BreakerConfig;
/// let c: BreakerConfig = serde_json::from_str(r#"{"failure_threshold": 5}"#).unwrap();
/// assert_eq!(c, BreakerConfig { failure_threshold: 5, ..BreakerConfig::default() });
/// assert_eq!((c.backoff_initial_ms, c.backoff_max_ms), (100, 500));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerConfig {
    /// Consecutive failed calls (errors or timeouts) that open the breaker (default 3,
    /// 1 to 1000).
    #[serde(default = "default_threshold", alias = "failureThreshold")]
    pub failure_threshold: u32,
    /// How long the breaker stays open after it opens, in milliseconds, before a probe
    /// (default 100, 1 to 60000).
    #[serde(default = "default_initial", alias = "backoffInitialMs")]
    pub backoff_initial_ms: u64,
    /// The back-off doubles after each failed probe up to this, in milliseconds (default
    /// 500, at least `backoff_initial_ms`, at most 60000): the backend is found again at
    /// most this long after it returns (plus a call).
    #[serde(default = "default_max", alias = "backoffMaxMs")]
    pub backoff_max_ms: u64,
}

fn default_threshold() -> u32 {
    3
}
fn default_initial() -> u64 {
    100
}
fn default_max() -> u64 {
    500
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: default_threshold(),
            backoff_initial_ms: default_initial(),
            backoff_max_ms: default_max(),
        }
    }
}

impl BreakerConfig {
    /// Checks the ranges; `Err` names the key (relative to this struct) and the rule.
    pub fn validate(&self) -> Result<(), (&'static str, &'static str)> {
        if !(1..=1000).contains(&self.failure_threshold) {
            return Err(("failure_threshold", "must be between 1 and 1000"));
        }
        if !(1..=60_000).contains(&self.backoff_initial_ms) {
            return Err(("backoff_initial_ms", "must be between 1 and 60000"));
        }
        if self.backoff_max_ms < self.backoff_initial_ms || self.backoff_max_ms > 60_000 {
            return Err((
                "backoff_max_ms",
                "must be between backoff_initial_ms and 60000",
            ));
        }
        Ok(())
    }
}

type Observer = Box<dyn Fn(BreakerState, BreakerState) + Send + Sync>;

struct Inner {
    /// When the open state ends (a probe may go).
    open_until: Instant,
    /// The back-off of the next opening.
    backoff: Duration,
}

struct Core {
    config: BreakerConfig,
    state: AtomicU8,
    failures: AtomicU32,
    inner: Mutex<Inner>,
    observer: Option<Observer>,
}

/// A circuit breaker (see the [module docs](self)). Cheap to clone: clones share one state.
#[derive(Clone)]
pub struct CircuitBreaker {
    core: Arc<Core>,
}

impl fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("state", &self.state())
            .field("config", &self.core.config)
            .finish()
    }
}

/// What a caller may do now.
#[derive(Debug)]
#[must_use = "a call's outcome must be reported"]
pub enum Permit {
    /// The breaker is closed: call the backend and report the outcome.
    Call(Call),
    /// The breaker was half-open and this is its one probe: call the backend and report.
    Probe(Call),
    /// The breaker is open (or a probe is in flight): do not call the backend.
    Skip,
}

/// A call to the backend whose outcome the breaker waits for. Dropping it unreported
/// counts as neither success nor failure (a dropped probe lets the next call probe).
#[derive(Debug)]
pub struct Call {
    breaker: Option<CircuitBreaker>,
    probe: bool,
}

impl Call {
    /// The backend answered.
    pub fn success(mut self) {
        if let Some(b) = self.breaker.take() {
            b.on_success();
        }
    }

    /// The backend failed or timed out.
    pub fn failure(mut self) {
        if let Some(b) = self.breaker.take() {
            b.on_failure(self.probe);
        }
    }

    /// Whether this call is the half-open state's probe.
    pub fn is_probe(&self) -> bool {
        self.probe
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        if let Some(b) = self.breaker.take()
            && self.probe
        {
            b.probe_dropped();
        }
    }
}

impl CircuitBreaker {
    /// A closed breaker. `Err` names the invalid key and the rule.
    pub fn new(config: BreakerConfig) -> Result<Self, (&'static str, &'static str)> {
        Self::build(config, None)
    }

    /// Like [`CircuitBreaker::new`], calling `observer(from, to)` on every transition
    /// (for metrics and logs; it runs under the breaker's lock: keep it short).
    pub fn with_observer(
        config: BreakerConfig,
        observer: impl Fn(BreakerState, BreakerState) + Send + Sync + 'static,
    ) -> Result<Self, (&'static str, &'static str)> {
        Self::build(config, Some(Box::new(observer)))
    }

    fn build(
        config: BreakerConfig,
        observer: Option<Observer>,
    ) -> Result<Self, (&'static str, &'static str)> {
        config.validate()?;
        Ok(Self {
            core: Arc::new(Core {
                config,
                state: AtomicU8::new(BreakerState::Closed as u8),
                failures: AtomicU32::new(0),
                inner: Mutex::new(Inner {
                    open_until: Instant::now(),
                    backoff: Duration::from_millis(config.backoff_initial_ms),
                }),
                observer,
            }),
        })
    }

    /// The current state.
    pub fn state(&self) -> BreakerState {
        BreakerState::from_u8(self.core.state.load(Ordering::Acquire))
    }

    /// The configuration.
    pub fn config(&self) -> &BreakerConfig {
        &self.core.config
    }

    fn call(&self, probe: bool) -> Call {
        Call {
            breaker: Some(self.clone()),
            probe,
        }
    }

    /// Whether [`CircuitBreaker::acquire`] would skip now (open with no probe due, or a
    /// probe in flight), without taking the probe: lets a caller take its fast path
    /// without preparing a call.
    pub fn is_skipping(&self) -> bool {
        match self.state() {
            BreakerState::Closed => false,
            BreakerState::HalfOpen => true,
            BreakerState::Open => self
                .core
                .inner
                .lock()
                .map_or(true, |i| Instant::now() < i.open_until),
        }
    }

    /// Whether to call the backend now.
    pub fn acquire(&self) -> Permit {
        if self.state() == BreakerState::Closed {
            return Permit::Call(self.call(false));
        }
        let Ok(mut inner) = self.core.inner.lock() else {
            return Permit::Skip;
        };
        match self.state() {
            BreakerState::Closed => Permit::Call(self.call(false)),
            BreakerState::HalfOpen => Permit::Skip,
            BreakerState::Open => {
                if Instant::now() < inner.open_until {
                    return Permit::Skip;
                }
                self.set(&mut inner, BreakerState::HalfOpen);
                Permit::Probe(self.call(true))
            }
        }
    }

    fn set(&self, _locked: &mut Inner, to: BreakerState) {
        let from = BreakerState::from_u8(self.core.state.swap(to as u8, Ordering::AcqRel));
        if from != to
            && let Some(o) = &self.core.observer
        {
            o(from, to);
        }
    }

    fn open(&self, inner: &mut Inner) {
        let max = Duration::from_millis(self.core.config.backoff_max_ms);
        let backoff = inner.backoff.min(max);
        inner.open_until = Instant::now() + backoff;
        inner.backoff = backoff.saturating_mul(2).min(max);
        self.set(inner, BreakerState::Open);
    }

    fn on_success(&self) {
        if self.core.failures.load(Ordering::Acquire) != 0 {
            self.core.failures.store(0, Ordering::Release);
        }
        if self.state() == BreakerState::Closed {
            return;
        }
        if let Ok(mut inner) = self.core.inner.lock() {
            // Any answer closes it: the backend is back, whichever call saw it first.
            inner.backoff = Duration::from_millis(self.core.config.backoff_initial_ms);
            self.set(&mut inner, BreakerState::Closed);
        }
    }

    fn on_failure(&self, probe: bool) {
        let Ok(mut inner) = self.core.inner.lock() else {
            return;
        };
        match self.state() {
            BreakerState::Closed => {
                let n = self.core.failures.fetch_add(1, Ordering::AcqRel) + 1;
                if n >= self.core.config.failure_threshold {
                    self.core.failures.store(0, Ordering::Release);
                    self.open(&mut inner);
                }
            }
            BreakerState::HalfOpen if probe => self.open(&mut inner),
            // A call started before the breaker opened: it changes nothing.
            BreakerState::HalfOpen | BreakerState::Open => {}
        }
    }

    fn probe_dropped(&self) {
        if let Ok(mut inner) = self.core.inner.lock()
            && self.state() == BreakerState::HalfOpen
        {
            // Open, but due now: the next call probes.
            inner.open_until = Instant::now();
            self.set(&mut inner, BreakerState::Open);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    type Seen = Arc<Mutex<Vec<(BreakerState, BreakerState)>>>;

    fn breaker() -> (CircuitBreaker, Seen) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let b = CircuitBreaker::with_observer(BreakerConfig::default(), move |f, t| {
            s.lock().unwrap().push((f, t));
        })
        .unwrap();
        (b, seen)
    }

    fn call(b: &CircuitBreaker) -> Call {
        match b.acquire() {
            Permit::Call(c) => c,
            other => panic!("expected a call, got {other:?}"),
        }
    }

    fn probe(b: &CircuitBreaker) -> Call {
        match b.acquire() {
            Permit::Probe(c) => c,
            other => panic!("expected a probe, got {other:?}"),
        }
    }

    fn skips(b: &CircuitBreaker) -> bool {
        matches!(b.acquire(), Permit::Skip)
    }

    use BreakerState::{Closed, HalfOpen, Open};

    #[tokio::test(start_paused = true)]
    async fn opens_after_consecutive_failures_only() {
        let (b, seen) = breaker();
        call(&b).failure();
        call(&b).failure();
        // A success in between starts the count again.
        call(&b).success();
        call(&b).failure();
        call(&b).failure();
        assert_eq!(b.state(), Closed);
        call(&b).failure();
        assert_eq!(b.state(), Open);
        assert!(skips(&b));
        assert_eq!(*seen.lock().unwrap(), vec![(Closed, Open)]);
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_lets_exactly_one_probe_through() {
        let (b, seen) = breaker();
        for _ in 0..3 {
            call(&b).failure();
        }
        tokio::time::advance(Duration::from_millis(99)).await;
        assert!(b.is_skipping());
        assert!(skips(&b));
        tokio::time::advance(Duration::from_millis(1)).await;
        // Due: the peek does not take the probe.
        assert!(!b.is_skipping());
        assert!(!b.is_skipping());
        let p = probe(&b);
        assert!(b.is_skipping());
        assert!(p.is_probe());
        assert_eq!(b.state(), HalfOpen);
        // Every other call takes the fast path while the probe is out, however long.
        for _ in 0..100 {
            assert!(skips(&b));
        }
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(skips(&b));
        p.success();
        assert_eq!(b.state(), Closed);
        assert!(!b.is_skipping());
        call(&b).success();
        assert_eq!(
            *seen.lock().unwrap(),
            vec![(Closed, Open), (Open, HalfOpen), (HalfOpen, Closed)]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn failed_probes_back_off_exponentially_up_to_the_cap() {
        let (b, _) = breaker();
        for _ in 0..3 {
            call(&b).failure();
        }
        // 100, 200, 400, then 500 (the cap), 500.
        for wait in [100, 200, 400, 500, 500] {
            tokio::time::advance(Duration::from_millis(wait - 1)).await;
            assert!(skips(&b), "probe before {wait} ms");
            tokio::time::advance(Duration::from_millis(1)).await;
            probe(&b).failure();
            assert_eq!(b.state(), Open);
        }
        // Success resets the back-off: the next opening waits the initial 100 ms again.
        tokio::time::advance(Duration::from_millis(500)).await;
        probe(&b).success();
        for _ in 0..3 {
            call(&b).failure();
        }
        tokio::time::advance(Duration::from_millis(100)).await;
        probe(&b).success();
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_probe_hands_the_probe_on() {
        let (b, _) = breaker();
        for _ in 0..3 {
            call(&b).failure();
        }
        tokio::time::advance(Duration::from_millis(100)).await;
        drop(probe(&b));
        assert_eq!(b.state(), Open);
        // Not wedged half-open: the next call probes at once.
        probe(&b).success();
        assert_eq!(b.state(), Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn late_outcomes_of_calls_started_while_closed_change_nothing() {
        let (b, _) = breaker();
        let late: Vec<Call> = (0..5).map(|_| call(&b)).collect();
        for _ in 0..3 {
            call(&b).failure();
        }
        assert_eq!(b.state(), Open);
        let mut late = late.into_iter();
        // A late failure does not extend the open state...
        late.next().unwrap().failure();
        tokio::time::advance(Duration::from_millis(100)).await;
        let p = probe(&b);
        // ... nor does one in half-open (only the probe's failure reopens).
        late.next().unwrap().failure();
        assert_eq!(b.state(), HalfOpen);
        // A late success means the backend answers: it closes the breaker.
        late.next().unwrap().success();
        assert_eq!(b.state(), Closed);
        // The probe's failure afterwards counts as one failure of the closed state.
        p.failure();
        assert_eq!(b.state(), Closed);
        drop(late);
        assert_eq!(b.state(), Closed);
    }

    #[test]
    fn invalid_thresholds_are_refused() {
        let bad = |c: BreakerConfig| CircuitBreaker::new(c).unwrap_err().0;
        let d = BreakerConfig::default();
        assert_eq!(
            bad(BreakerConfig {
                failure_threshold: 0,
                ..d
            }),
            "failure_threshold"
        );
        assert_eq!(
            bad(BreakerConfig {
                backoff_initial_ms: 0,
                ..d
            }),
            "backoff_initial_ms"
        );
        assert_eq!(
            bad(BreakerConfig {
                backoff_initial_ms: 600,
                ..d
            }),
            "backoff_max_ms"
        );
        assert!(serde_json::from_str::<BreakerConfig>(r#"{"threshold": 1}"#).is_err());
        let c: BreakerConfig = serde_json::from_str(r#"{"backoffMaxMs": 900}"#).unwrap();
        assert_eq!(c.backoff_max_ms, 900);
    }
}
