//! Metrics through the `metrics` facade. Handles are registered when the layer is built,
//! so install the recorder (e.g. the Prometheus exporter) before building layers.

use mcp_core::breaker::BreakerState;
use metrics::{Counter, Gauge, counter, gauge};

/// The metric handles of one limiter (label `limiter` = the configured name).
#[derive(Debug, Clone)]
pub(crate) struct Metrics {
    pub(crate) allowed: Counter,
    pub(crate) limited: Counter,
    pub(crate) concurrency_limited: Counter,
    pub(crate) streams_limited_session: Counter,
    pub(crate) streams_limited_client: Counter,
    pub(crate) no_key: Counter,
    pub(crate) denied_by_list: Counter,
    pub(crate) allow_listed: Counter,
    pub(crate) overflow: Counter,
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) backend_errors: Counter,
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) failed_open: Counter,
    pub(crate) backend_up: Gauge,
    pub(crate) keys: Gauge,
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) breaker_state: Gauge,
    /// Transitions into closed, open, half-open.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) breaker_transitions: [Counter; 3],
}

/// Metric names.
pub mod names {
    /// Counter: requests let through by the limits.
    pub const ALLOWED: &str = "mcp_ratelimit_allowed_total";
    /// Counter: requests refused with 429 by a quota.
    pub const LIMITED: &str = "mcp_ratelimit_limited_total";
    /// Counter: requests refused with 429 by the in-flight cap.
    pub const CONCURRENCY_LIMITED: &str = "mcp_ratelimit_concurrency_limited_total";
    /// Counter: stream requests refused with 429 by a stream cap (label `scope`:
    /// `session` or `client`).
    pub const STREAMS_LIMITED: &str = "mcp_ratelimit_streams_limited_total";
    /// Counter: requests refused because no key could be built (`missing_key: reject`).
    pub const NO_KEY: &str = "mcp_ratelimit_no_key_total";
    /// Counter: requests refused with 403 by the deny list.
    pub const DENIED_BY_LIST: &str = "mcp_ratelimit_denied_by_list_total";
    /// Counter: requests that bypassed the limits through the allow list.
    pub const ALLOW_LISTED: &str = "mcp_ratelimit_allow_listed_total";
    /// Counter: requests from new keys charged to the overflow bucket (key cap reached),
    /// added at each sweep.
    pub const OVERFLOW: &str = "mcp_ratelimit_overflow_total";
    /// Counter: Redis calls that failed or timed out.
    pub const BACKEND_ERRORS: &str = "mcp_ratelimit_backend_errors_total";
    /// Counter: requests let through unlimited because Redis was down (`failure_mode: open`).
    pub const FAILED_OPEN: &str = "mcp_ratelimit_failed_open_total";
    /// Gauge: 1 when the backend answers, 0 while Redis is unreachable.
    pub const BACKEND_UP: &str = "mcp_ratelimit_backend_up";
    /// Gauge: keys held in memory (updated at each sweep).
    pub const KEYS: &str = "mcp_ratelimit_keys";
    /// Gauge: the Redis backend's circuit breaker: 0 closed (calls go to Redis), 1 open
    /// (requests follow the failure mode without calling Redis), 2 half-open (one probe).
    pub const BREAKER_STATE: &str = "mcp_ratelimit_breaker_state";
    /// Counter: transitions of the circuit breaker, by the state entered (label `to`:
    /// `closed`, `open`, `half_open`).
    pub const BREAKER_TRANSITIONS: &str = "mcp_ratelimit_breaker_transitions_total";
}

impl Metrics {
    pub(crate) fn new(limiter: &str) -> Self {
        let l = limiter.to_owned();
        let m = Self {
            allowed: counter!(names::ALLOWED, "limiter" => l.clone()),
            limited: counter!(names::LIMITED, "limiter" => l.clone()),
            concurrency_limited: counter!(names::CONCURRENCY_LIMITED, "limiter" => l.clone()),
            streams_limited_session: counter!(names::STREAMS_LIMITED, "limiter" => l.clone(), "scope" => "session"),
            streams_limited_client: counter!(names::STREAMS_LIMITED, "limiter" => l.clone(), "scope" => "client"),
            no_key: counter!(names::NO_KEY, "limiter" => l.clone()),
            denied_by_list: counter!(names::DENIED_BY_LIST, "limiter" => l.clone()),
            allow_listed: counter!(names::ALLOW_LISTED, "limiter" => l.clone()),
            overflow: counter!(names::OVERFLOW, "limiter" => l.clone()),
            backend_errors: counter!(names::BACKEND_ERRORS, "limiter" => l.clone()),
            failed_open: counter!(names::FAILED_OPEN, "limiter" => l.clone()),
            backend_up: gauge!(names::BACKEND_UP, "limiter" => l.clone()),
            keys: gauge!(names::KEYS, "limiter" => l.clone()),
            breaker_state: gauge!(names::BREAKER_STATE, "limiter" => l.clone()),
            breaker_transitions: [
                BreakerState::Closed,
                BreakerState::Open,
                BreakerState::HalfOpen,
            ]
            .map(|s| counter!(names::BREAKER_TRANSITIONS, "limiter" => l.clone(), "to" => s.as_str())),
        };
        m.backend_up.set(1.0);
        m.breaker_state.set(0.0);
        m.keys.set(0.0);
        m
    }
}

impl Metrics {
    /// The breaker entered `to`.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn breaker_transition(&self, to: BreakerState) {
        self.breaker_state.set(f64::from(to as u8));
        self.breaker_transitions[to as usize].increment(1);
    }
}
