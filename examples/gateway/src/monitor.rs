//! Authentication failure monitoring: the Cloud Native MCP Server guide's
//! `monitoring.auth_failure_threshold` and `monitoring.auth_failure_window`, and our
//! `monitoring.auth_failure_block_seconds`.
//!
//! Requests that authentication refuses (`auth_failed` in the response's
//! [`Denial`]) are counted per client address ([`ClientAddr`]: the TCP peer, or the
//! address a trusted proxy reports), an IPv6 client by its prefix
//! (`server.clientIpv6Prefix`, default /64, through `mcp_core::ip_key`: the holder of a
//! /64 does not get a fresh count, or escape a block, by changing address). A window opens at a client's first failure; when the
//! client reaches the threshold within it:
//!
//! - an alert: a warning in the log, an `auth_failure` audit event with detail
//!   `threshold_reached` (client address, failures, window, block), and
//!   `mcp_gateway_auth_failure_alerts_total`;
//! - with `auth_failure_block_seconds` above 0, the client's requests are refused with 429,
//!   `Retry-After` and a JSON-RPC error (reason `rate_limited`, detail `auth_failures`)
//!   before authentication runs (no password hashing is spent on them) until the block
//!   ends; its count then starts again from zero. Without blocking, a client raises at
//!   most one alert per window.
//!
//! Memory is bounded: at most [`MAX_TRACKED_CLIENTS`] addresses are tracked; when the
//! table is full, finished windows are dropped (at most once a second) and a new address
//! that still finds no room is not tracked.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use mcp_audit::{AuditEvent, AuditHandle};
use mcp_core::{ClientAddr, Denial, Rejection, RejectionReason};
use tower_layer::Layer;
use tower_service::Service;

/// Client addresses tracked at most.
pub const MAX_TRACKED_CLIENTS: usize = 65_536;

/// The monitor's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MonitorSettings {
    /// Failures within `window` that raise an alert (at least 1).
    pub threshold: u32,
    /// The counting window.
    pub window: Duration,
    /// How long a client that reached the threshold is refused (zero: alert only).
    pub block: Duration,
    /// IPv6 clients are counted by this prefix length (IPv4 per address).
    pub ipv6_prefix: u8,
}

#[derive(Debug)]
struct Entry {
    window_start: Instant,
    failures: u32,
    alerted: bool,
    blocked_until: Option<Instant>,
}

/// What [`FailureTracker::record_failure`] made of a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// Counted, below the threshold (or above it, already alerted in this window).
    Counted,
    /// The threshold was reached: alert (and, when blocking, the client is now blocked).
    ThresholdReached {
        /// Failures counted in the window.
        failures: u32,
    },
    /// The table was full: not tracked.
    Untracked,
}

/// Failure counts per client address, bounded.
#[derive(Debug)]
pub struct FailureTracker {
    settings: MonitorSettings,
    capacity: usize,
    origin: Instant,
    table: Mutex<Table>,
    /// The latest end of any block, in nanoseconds since `origin` (0: none): a request
    /// after it needs no lookup.
    latest_block_end: AtomicU64,
    /// Whether the "table full" warning was logged.
    warned_full: AtomicBool,
}

/// The counts, and when finished windows were last purged from them.
#[derive(Debug, Default)]
struct Table {
    entries: HashMap<IpAddr, Entry>,
    last_purge: Option<Instant>,
}

impl FailureTracker {
    /// A tracker holding at most `capacity` addresses.
    pub fn new(settings: MonitorSettings, capacity: usize) -> Self {
        Self {
            settings,
            capacity,
            origin: Instant::now(),
            table: Mutex::default(),
            latest_block_end: AtomicU64::new(0),
            warned_full: AtomicBool::new(false),
        }
    }

    /// The settings.
    pub fn settings(&self) -> MonitorSettings {
        self.settings
    }

    fn nanos(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.origin).as_nanos()).unwrap_or(u64::MAX)
    }

    /// The key `ip` is counted under (its IPv6 prefix, or the IPv4 address).
    fn key(&self, ip: IpAddr) -> IpAddr {
        mcp_core::ip_key(ip, self.settings.ipv6_prefix)
    }

    /// How long `ip` stays blocked after `now`, if it is.
    pub fn blocked_for(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        if self.nanos(now) >= self.latest_block_end.load(Ordering::Relaxed) {
            return None;
        }
        let ip = self.key(ip);
        let table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        let until = table.entries.get(&ip)?.blocked_until?;
        (until > now).then(|| until - now)
    }

    /// Counts one authentication failure of `ip` at `now`.
    pub fn record_failure(&self, ip: IpAddr, now: Instant) -> Recorded {
        let s = self.settings;
        let ip = self.key(ip);
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        if !table.entries.contains_key(&ip) && table.entries.len() >= self.capacity {
            table.purge(now, s.window);
            if table.entries.len() >= self.capacity {
                return Recorded::Untracked;
            }
        }
        let e = table.entries.entry(ip).or_insert(Entry {
            window_start: now,
            failures: 0,
            alerted: false,
            blocked_until: None,
        });
        if now.saturating_duration_since(e.window_start) >= s.window {
            e.window_start = now;
            e.failures = 0;
            e.alerted = false;
        }
        e.failures = e.failures.saturating_add(1);
        if e.failures < s.threshold || e.alerted {
            return Recorded::Counted;
        }
        let failures = e.failures;
        if s.block.is_zero() {
            // Alert only: once per window.
            e.alerted = true;
        } else {
            // Blocked: the count starts again when the block ends.
            let until = now + s.block;
            e.blocked_until = Some(until);
            e.window_start = until;
            e.failures = 0;
            self.latest_block_end
                .fetch_max(self.nanos(until), Ordering::Relaxed);
        }
        Recorded::ThresholdReached { failures }
    }

    /// Addresses tracked now.
    #[cfg(test)]
    pub fn tracked(&self) -> usize {
        self.table
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entries
            .len()
    }
}

impl Table {
    /// Drops the entries whose window and block are over, at most once a second.
    fn purge(&mut self, now: Instant, window: Duration) {
        if self
            .last_purge
            .is_some_and(|t| now.saturating_duration_since(t) < Duration::from_secs(1))
        {
            return;
        }
        self.last_purge = Some(now);
        self.entries.retain(|_, e| {
            now.saturating_duration_since(e.window_start) < window
                || e.blocked_until.is_some_and(|b| b > now)
        });
    }
}

/// The layer: put it just outside authentication.
#[derive(Debug, Clone)]
pub struct AuthFailureMonitorLayer {
    tracker: Arc<FailureTracker>,
    audit: Option<AuditHandle>,
}

impl AuthFailureMonitorLayer {
    /// A monitor with these settings; alerts are also recorded in `audit`.
    pub fn new(settings: MonitorSettings, audit: Option<AuditHandle>) -> Self {
        Self {
            tracker: Arc::new(FailureTracker::new(settings, MAX_TRACKED_CLIENTS)),
            audit,
        }
    }
}

impl<S> Layer<S> for AuthFailureMonitorLayer {
    type Service = AuthFailureMonitor<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthFailureMonitor {
            inner,
            tracker: Arc::clone(&self.tracker),
            audit: self.audit.clone(),
        }
    }
}

/// The service of [`AuthFailureMonitorLayer`].
#[derive(Debug, Clone)]
pub struct AuthFailureMonitor<S> {
    inner: S,
    tracker: Arc<FailureTracker>,
    audit: Option<AuditHandle>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, ReqB, ResB> Service<Request<ReqB>> for AuthFailureMonitor<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Send,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResB: From<Bytes> + Send + 'static,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Response<ResB>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let ip = req.extensions().get::<ClientAddr>().map(ClientAddr::ip);
        if let Some(ip) = ip
            && let Some(left) = self.tracker.blocked_for(ip, Instant::now())
        {
            // Whole seconds, rounded up, as Retry-After wants.
            let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
            let refused = Rejection::new(RejectionReason::RateLimited)
                .with_detail("auth_failures")
                .with_header(http::header::RETRY_AFTER, secs.to_string())
                .into_response();
            return Box::pin(std::future::ready(Ok(refused)));
        }
        let fut = self.inner.call(req);
        let tracker = Arc::clone(&self.tracker);
        let audit = self.audit.clone();
        Box::pin(async move {
            let res = fut.await?;
            let failed = res
                .extensions()
                .get::<Denial>()
                .is_some_and(|d| d.reason == RejectionReason::AuthFailed);
            if failed && let Some(ip) = ip {
                match tracker.record_failure(ip, Instant::now()) {
                    Recorded::ThresholdReached { failures } => {
                        alert(&tracker.settings(), ip, failures, audit.as_ref());
                    }
                    Recorded::Untracked if !tracker.warned_full.swap(true, Ordering::Relaxed) => {
                        tracing::warn!(
                            capacity = MAX_TRACKED_CLIENTS,
                            "authentication failures of more client addresses than the \
                             monitor tracks: new addresses are not counted until windows end"
                        );
                    }
                    Recorded::Counted | Recorded::Untracked => {}
                }
            }
            Ok(res)
        })
    }
}

fn alert(s: &MonitorSettings, ip: IpAddr, failures: u32, audit: Option<&AuditHandle>) {
    let (window, block) = (s.window.as_secs(), s.block.as_secs());
    let key = mcp_core::ip_key(ip, s.ipv6_prefix);
    tracing::warn!(
        client_ip = %ip,
        counted_as = %key,
        failures,
        window_seconds = window,
        blocked_seconds = block,
        "authentication failures reached monitoring.auth_failure_threshold"
    );
    metrics::counter!("mcp_gateway_auth_failure_alerts_total").increment(1);
    if let Some(audit) = audit {
        audit.try_record(
            AuditEvent::auth_failure()
                .with_client_ip(ip)
                .with_detail("threshold_reached")
                .with_data(serde_json::json!({
                    "counted_as": key.to_string(),
                    "failures": failures,
                    "window_seconds": window,
                    "blocked_seconds": block,
                })),
        );
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn settings(threshold: u32, window: u64, block: u64) -> MonitorSettings {
        MonitorSettings {
            threshold,
            window: Duration::from_secs(window),
            block: Duration::from_secs(block),
            ipv6_prefix: 64,
        }
    }

    /// Attack case: failures from ever new addresses of one /64 are one client's: it
    /// reaches the threshold, and every address of the /64 is blocked; the next /64 and
    /// IPv4 clients are not. With a /128 prefix each address counts alone.
    #[test]
    fn ipv6_clients_are_counted_by_prefix() {
        let v6 = |s: &str| s.parse::<IpAddr>().unwrap();
        let t = FailureTracker::new(settings(3, 60, 30), 16);
        let t0 = Instant::now();
        assert_eq!(
            t.record_failure(v6("2001:db8:1:2::1"), t0),
            Recorded::Counted
        );
        assert_eq!(
            t.record_failure(v6("2001:db8:1:2::2"), t0),
            Recorded::Counted
        );
        assert_eq!(
            t.record_failure(v6("2001:db8:1:2:ffff::3"), t0),
            Recorded::ThresholdReached { failures: 3 }
        );
        assert!(t.blocked_for(v6("2001:db8:1:2:abcd::77"), t0).is_some());
        assert_eq!(t.blocked_for(v6("2001:db8:1:3::1"), t0), None);
        assert_eq!(t.blocked_for(v6("198.51.100.1"), t0), None);
        assert_eq!(t.tracked(), 1);

        let per_address = FailureTracker::new(
            MonitorSettings {
                ipv6_prefix: 128,
                ..settings(3, 60, 30)
            },
            16,
        );
        for n in 1..=3 {
            let a = v6(&format!("2001:db8:1:2::{n}"));
            assert_eq!(per_address.record_failure(a, t0), Recorded::Counted);
        }
        assert_eq!(per_address.tracked(), 3);
    }

    fn ip(n: u32) -> IpAddr {
        IpAddr::from(n.to_be_bytes())
    }

    #[test]
    fn alert_once_per_window_without_blocking() {
        let t = FailureTracker::new(settings(3, 60, 0), 16);
        let t0 = Instant::now();
        let a = ip(1);
        assert_eq!(t.record_failure(a, t0), Recorded::Counted);
        assert_eq!(
            t.record_failure(a, t0 + Duration::from_secs(10)),
            Recorded::Counted
        );
        assert_eq!(
            t.record_failure(a, t0 + Duration::from_secs(20)),
            Recorded::ThresholdReached { failures: 3 }
        );
        // More failures in the same window: no second alert, never blocked.
        for s in 21..59 {
            assert_eq!(
                t.record_failure(a, t0 + Duration::from_secs(s)),
                Recorded::Counted
            );
            assert_eq!(t.blocked_for(a, t0 + Duration::from_secs(s)), None);
        }
        // Another client has a count of its own.
        assert_eq!(t.record_failure(ip(2), t0), Recorded::Counted);
        // A new window: counted from zero, and alerts again.
        let t1 = t0 + Duration::from_secs(60);
        assert_eq!(t.record_failure(a, t1), Recorded::Counted);
        assert_eq!(t.record_failure(a, t1), Recorded::Counted);
        assert_eq!(
            t.record_failure(a, t1),
            Recorded::ThresholdReached { failures: 3 }
        );
    }

    #[test]
    fn failures_spread_over_more_than_a_window_do_not_alert() {
        let t = FailureTracker::new(settings(3, 60, 30), 16);
        let t0 = Instant::now();
        for k in 0..10 {
            // Two failures per 61 s: never three in one window.
            let w = t0 + Duration::from_secs(61 * k);
            assert_eq!(t.record_failure(ip(1), w), Recorded::Counted);
            assert_eq!(
                t.record_failure(ip(1), w + Duration::from_secs(1)),
                Recorded::Counted
            );
        }
        assert_eq!(t.blocked_for(ip(1), t0 + Duration::from_secs(700)), None);
    }

    #[test]
    fn blocking_then_a_fresh_count() {
        let t = FailureTracker::new(settings(2, 60, 30), 16);
        let t0 = Instant::now();
        let a = ip(7);
        assert_eq!(t.blocked_for(a, t0), None);
        t.record_failure(a, t0);
        assert_eq!(
            t.record_failure(a, t0 + Duration::from_secs(1)),
            Recorded::ThresholdReached { failures: 2 }
        );
        assert_eq!(
            t.blocked_for(a, t0 + Duration::from_secs(1)),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            t.blocked_for(a, t0 + Duration::from_secs(21)),
            Some(Duration::from_secs(10))
        );
        assert_eq!(t.blocked_for(ip(8), t0 + Duration::from_secs(2)), None);
        // After the block: two more failures block again (the count started afresh).
        let after = t0 + Duration::from_secs(31);
        assert_eq!(t.blocked_for(a, after), None);
        assert_eq!(t.record_failure(a, after), Recorded::Counted);
        assert_eq!(
            t.record_failure(a, after),
            Recorded::ThresholdReached { failures: 2 }
        );
        assert!(t.blocked_for(a, after).is_some());
    }

    /// Attack case: a flood of failures from ever new addresses stays within the bound;
    /// once their windows are over, room is made for new ones.
    #[test]
    fn memory_is_bounded_whatever_addresses_clients_use() {
        let t = FailureTracker::new(settings(5, 60, 0), 1000);
        let t0 = Instant::now();
        let mut untracked = 0;
        for n in 0..5000 {
            if t.record_failure(ip(n), t0) == Recorded::Untracked {
                untracked += 1;
            }
        }
        assert_eq!(t.tracked(), 1000);
        assert_eq!(untracked, 4000);
        // A tracked client is still counted, and alerted, while the table is full.
        let seen: Vec<_> = (0..4).map(|_| t.record_failure(ip(3), t0)).collect();
        assert_eq!(seen[3], Recorded::ThresholdReached { failures: 5 });
        // Windows over: a new address makes room by purging them.
        let later = t0 + Duration::from_secs(61);
        assert_eq!(t.record_failure(ip(9_999), later), Recorded::Counted);
        assert_eq!(t.tracked(), 1);
    }
}
