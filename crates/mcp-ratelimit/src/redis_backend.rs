//! The Redis backend: GCRA in one Lua script on the Redis server's clock, so that every
//! replica shares one budget.
//!
//! - One `EVALSHA` per request (the script is loaded once; `redis::Script` loads it again
//!   after a `NOSCRIPT`, e.g. when Redis restarted), charging every quota of the request
//!   at once: all or nothing.
//! - Keys are `{prefix:client}`, `{prefix:client}:m:method` (per-method quotas) and
//!   `{prefix:client}:t:tool` (per-tool quotas): the hash tag puts every key
//!   of a client in one slot, so the script runs on Redis Cluster. Each key expires when
//!   its state is indistinguishable from a fresh bucket.
//! - One multiplexed `ConnectionManager` (it reconnects by itself, one attempt per
//!   reconnection: the circuit breaker paces the attempts); every call has a timeout.
//!   While there is no connection, one background task connects.
//! - A circuit breaker ([`mcp_core::breaker`]) in front of the calls: after
//!   `breaker.failure_threshold` consecutive failures or timeouts, requests skip Redis and
//!   follow the failure mode at once (open: through; closed: 503) for a back-off, then one
//!   request probes Redis while the others keep skipping it; an answer closes the breaker.
//!   An outage costs a few timeouts, not one per request.
//! - An outage is logged once when it starts and once when it ends, and shown by the
//!   `mcp_ratelimit_backend_up` and `mcp_ratelimit_breaker_state` gauges.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::header::RETRY_AFTER;
use mcp_core::breaker::{BreakerState, CircuitBreaker, Permit};
use mcp_core::{JsonRpcId, Rejection, RejectionReason};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::config::{ConfigError, FailureMode, RedisConfig};
use crate::key::Key;
use crate::metrics::Metrics;
use crate::quota::Verdict;
use crate::service::{Charges, Outcome, Shared};

/// KEYS: the state keys. ARGV: per key, the emission interval (µs), the burst, the cost.
/// Returns {allowed, index of the reported key (1-based), remaining, retry_after_us,
/// reset_us}; retry_after_us -1 when the cost exceeds the burst (never clamped: refused,
/// nothing charged).
pub(crate) const GCRA_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local news = {}
local best, best_rem, best_reset = 1, -1, 0
for i = 1, #KEYS do
  local interval = tonumber(ARGV[3 * i - 2])
  local burst = tonumber(ARGV[3 * i - 1])
  local cost = tonumber(ARGV[3 * i])
  if cost > burst then
    return {0, i, 0, -1, 0}
  end
  local tau = interval * (burst - 1)
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0') or 0
  if tat < now then tat = now end
  local earliest = tat + interval * (cost - 1) - tau
  if earliest > now then
    return {0, i, 0, earliest - now, tat - now}
  end
  local new_tat = tat + interval * cost
  news[i] = new_tat
  local rem = math.floor((now + tau + interval - new_tat) / interval)
  if rem > burst then rem = burst end
  if rem < 0 then rem = 0 end
  if best_rem < 0 or rem < best_rem then
    best, best_rem, best_reset = i, rem, new_tat - now
  end
end
for i = 1, #KEYS do
  local ttl = math.ceil((news[i] - now) / 1000) + 1000
  redis.call('SET', KEYS[i], string.format('%d', news[i]), 'PX', ttl)
end
return {1, best, best_rem, 0, best_reset}
"#;

pub(crate) struct RedisBackend {
    client: redis::Client,
    conn: Mutex<Option<ConnectionManager>>,
    connecting: AtomicBool,
    connected: tokio::sync::Notify,
    script: redis::Script,
    prefix: String,
    timeout: Duration,
    failure_mode: FailureMode,
    up: AtomicBool,
    name: Arc<str>,
    metrics: Metrics,
    breaker: CircuitBreaker,
}

/// Why a request got no verdict from Redis.
enum NoVerdict {
    /// The breaker is open: Redis was not called.
    Skipped,
    /// The call failed or timed out (a short description: no URL, no key).
    Failed(String),
}

impl RedisBackend {
    pub(crate) fn new(
        cfg: &RedisConfig,
        name: Arc<str>,
        metrics: Metrics,
    ) -> Result<Self, ConfigError> {
        if cfg.prefix.is_empty() || cfg.prefix.len() > 64 || cfg.prefix.contains(['{', '}']) {
            return Err(ConfigError::InvalidName {
                key: "redis.prefix".into(),
                rule: "must be 1 to 64 characters, without { or }",
            });
        }
        if cfg.timeout_ms == 0 || cfg.timeout_ms > 60_000 {
            return Err(ConfigError::OutOfRange {
                key: "redis.timeout_ms".into(),
                rule: "must be between 1 and 60000",
            });
        }
        let observer = {
            let metrics = metrics.clone();
            let name = name.clone();
            move |from: BreakerState, to: BreakerState| {
                metrics.breaker_transition(to);
                tracing::debug!(limiter = %name, %from, %to, "rate limit backend (redis) circuit breaker");
            }
        };
        let breaker =
            CircuitBreaker::with_observer(cfg.breaker, observer).map_err(|(key, rule)| {
                ConfigError::OutOfRange {
                    key: format!("redis.breaker.{key}"),
                    rule,
                }
            })?;
        let client =
            redis::Client::open(cfg.url.as_str()).map_err(|e| ConfigError::InvalidRedisUrl {
                // The error kind only: the message may repeat the URL and its password.
                reason: format!("{:?}", e.kind()),
            })?;
        Ok(Self {
            client,
            conn: Mutex::new(None),
            connecting: AtomicBool::new(false),
            connected: tokio::sync::Notify::new(),
            script: redis::Script::new(GCRA_LUA),
            prefix: cfg.prefix.clone(),
            timeout: Duration::from_millis(cfg.timeout_ms),
            failure_mode: cfg.failure_mode,
            up: AtomicBool::new(true),
            name,
            metrics,
            breaker,
        })
    }

    pub(crate) fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    fn current(&self) -> Option<ConnectionManager> {
        self.conn.lock().ok().and_then(|g| g.as_ref().cloned())
    }

    /// The connection; when there is none yet, starts connecting in the background and
    /// waits for it at most the call timeout.
    async fn connection(self: &Arc<Self>) -> Option<ConnectionManager> {
        if let Some(c) = self.current() {
            return Some(c);
        }
        let notified = self.connected.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        self.spawn_connect();
        let _ = tokio::time::timeout(self.timeout, notified).await;
        self.current()
    }

    /// Connects in the background, one attempt at a time (the breaker paces the requests
    /// that start them).
    pub(crate) fn spawn_connect(self: &Arc<Self>) {
        if self.connecting.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            self.connecting.store(false, Ordering::Release);
            return;
        };
        let this = self.clone();
        handle.spawn(async move {
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(this.timeout)
                .set_response_timeout(this.timeout)
                // One attempt per reconnection, no back-off inside the manager: a request
                // (the breaker's probe) that finds the last attempt failed starts the next
                // one at once, so Redis is found again as soon as it answers.
                .set_number_of_retries(0);
            let attempt = tokio::time::timeout(
                this.timeout * 4,
                ConnectionManager::new_with_config(this.client.clone(), config),
            )
            .await;
            match attempt {
                Ok(Ok(manager)) => {
                    if let Ok(mut guard) = this.conn.lock() {
                        *guard = Some(manager);
                    }
                    this.connected.notify_waiters();
                }
                Ok(Err(e)) => this.mark_down(&format!("connect: {:?}", e.kind())),
                Err(_) => this.mark_down("connect: timed out"),
            }
            this.connecting.store(false, Ordering::Release);
            // Wake the waiters of a failed attempt: they fail now, not at their timeout.
            this.connected.notify_waiters();
        });
    }

    /// While the breaker skips Redis (open, no probe due, or a probe in flight): the
    /// failure mode's outcome, decided without a call (and without a future to box).
    pub(crate) fn skipped(
        &self,
        shared: &Shared,
        id: impl FnOnce() -> Option<JsonRpcId>,
    ) -> Option<Outcome> {
        self.breaker
            .is_skipping()
            .then(|| self.failure_outcome(shared, id()))
    }

    /// What a request gets when Redis gave no verdict.
    fn failure_outcome(&self, shared: &Shared, id: Option<JsonRpcId>) -> Outcome {
        match self.failure_mode {
            FailureMode::Open => {
                shared.metrics.failed_open.increment(1);
                Outcome::Proceed(None)
            }
            FailureMode::Closed => Outcome::Reject(Box::new(
                Rejection::new(RejectionReason::Unavailable)
                    .with_id(id)
                    .with_detail("ratelimit_backend_unavailable")
                    .with_header(RETRY_AFTER, "1"),
            )),
        }
    }

    fn mark_down(&self, what: &str) {
        self.metrics.backend_errors.increment(1);
        if self.up.swap(false, Ordering::AcqRel) {
            self.metrics.backend_up.set(0.0);
            tracing::warn!(
                limiter = %self.name,
                error = what,
                failure_mode = ?self.failure_mode,
                "rate limit backend (redis) unreachable; requests follow the failure mode until it recovers"
            );
        }
    }

    fn mark_up(&self) {
        if !self.up.load(Ordering::Acquire) && !self.up.swap(true, Ordering::AcqRel) {
            self.metrics.backend_up.set(1.0);
            tracing::info!(limiter = %self.name, "rate limit backend (redis) reachable again");
        }
    }

    fn redis_key(&self, client: &str, suffix: &str) -> String {
        format!("{{{}:{client}}}{suffix}", self.prefix)
    }

    /// Runs the script unless the breaker is open, and tells the breaker how it went.
    async fn run(
        self: &Arc<Self>,
        shared: &Shared,
        key: &Key,
        charges: &[(usize, u32)],
    ) -> Result<Verdict, NoVerdict> {
        let call = match self.breaker.acquire() {
            Permit::Call(c) | Permit::Probe(c) => c,
            Permit::Skip => return Err(NoVerdict::Skipped),
        };
        // One deadline for the connection and the call (a retry included).
        match tokio::time::timeout(self.timeout, self.call(shared, key, charges)).await {
            Ok(Ok(v)) => {
                call.success();
                Ok(v)
            }
            Ok(Err(what)) => {
                call.failure();
                Err(NoVerdict::Failed(what))
            }
            Err(_) => {
                call.failure();
                Err(NoVerdict::Failed("timed out".into()))
            }
        }
    }

    /// Runs the script. `Err` carries a short description (no URL, no key).
    async fn call(
        self: &Arc<Self>,
        shared: &Shared,
        key: &Key,
        charges: &[(usize, u32)],
    ) -> Result<Verdict, String> {
        let Some(mut conn) = self.connection().await else {
            return Err("no connection".into());
        };
        let client = key.redis_text();
        let mut inv = self.script.prepare_invoke();
        let mut used = Vec::with_capacity(charges.len());
        for &(qi, _) in charges {
            if let Some(spec) = shared.quotas.get(qi) {
                inv.key(self.redis_key(&client, &spec.redis_suffix));
            }
        }
        for &(qi, cost) in charges {
            if let Some(spec) = shared.quotas.get(qi) {
                inv.arg(spec.interval_us()).arg(spec.burst).arg(cost.max(1));
                used.push((qi, cost));
            }
        }
        let reply: Vec<i64> = match inv.invoke_async(&mut conn).await {
            Ok(v) => v,
            // The connection's last reconnection attempt was refused: nothing was sent.
            // That error started the next attempt; one more try waits for it (Redis may
            // be back), within the same deadline.
            Err(e) if e.is_connection_refusal() => inv
                .invoke_async(&mut conn)
                .await
                .map_err(|e| format!("{:?}", e.kind()))?,
            Err(e) => return Err(format!("{:?}", e.kind())),
        };
        let [allowed, idx, remaining, retry_us, reset_us] = reply[..] else {
            return Err("unexpected script reply".into());
        };
        let (qi, cost) = usize::try_from(idx - 1)
            .ok()
            .and_then(|i| used.get(i).copied())
            .unwrap_or((0, 0));
        let us = |v: i64| Duration::from_micros(u64::try_from(v).unwrap_or(0));
        let remaining = u32::try_from(remaining).unwrap_or(0);
        Ok(if allowed == 1 {
            Verdict::allowed(qi, remaining, us(reset_us))
        } else if retry_us < 0 {
            Verdict::exceeds_burst(qi, cost)
        } else {
            Verdict::limited(qi, us(retry_us), us(reset_us))
        })
    }
}

/// The future the service awaits before calling the inner service.
pub(crate) async fn check(
    shared: Arc<Shared>,
    backend: Arc<RedisBackend>,
    key: Key,
    charges: Charges,
    id: Option<JsonRpcId>,
) -> Outcome {
    match backend.run(&shared, &key, charges.as_slice()).await {
        Ok(v) => {
            backend.mark_up();
            shared.finish(&v, if v.allowed { None } else { id })
        }
        Err(why) => {
            if let NoVerdict::Failed(what) = why {
                backend.mark_down(&what);
            }
            backend.failure_outcome(&shared, id)
        }
    }
}
