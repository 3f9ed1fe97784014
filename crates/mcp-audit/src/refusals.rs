//! [`RefusalAggregator`]: refusals of a client that is already being refused are counted,
//! not written one row each, so that a flood of refused requests cannot flood the trail.
//!
//! Per client and reason, the first refusal of each interval (default 10 s) is recorded in
//! full (so the trail shows what it was: path, headers, method), and the following ones
//! are counted; at the end of the interval (and at [`flush`](RefusalAggregator::flush),
//! at shutdown) one row of kind `refusals` carries the count:
//! `data: {"refused": N, "first": "<RFC 3339>", "last": "<RFC 3339>", "interval_secs": I}`,
//! with the client's address (or principal), the reason, the HTTP status and the JSON-RPC
//! code. So the number of refused requests is exact: the rows recorded in full plus the
//! sum of `data.refused`.
//!
//! Which refusals, and the key (what an attacker would vary to escape is not in it):
//!
//! - a request with no authenticated principal, refused for any reason (401, 429 of the
//!   per-IP limit or of the authentication failure monitor, 403 of a deny list, 405, 413,
//!   ...): keyed by the client address as [`mcp_core::ClientAddr`] resolved it (a
//!   forwarding header counts only from a trusted proxy), an IPv6 address by its network
//!   ([`AuditLayer::client_ipv6_prefix`](crate::AuditLayer::client_ipv6_prefix), /64 by
//!   default). Paths, headers, methods, tools and bodies are not in the key;
//! - an authenticated principal refused before its quota is charged (the per-IP limit, a
//!   deny list, the body limit, framing, parse, session binding, its own quota): keyed by
//!   the principal's qualified id, whatever its address. Refusals that come after its
//!   quota, the decisions on what it asked (`forbidden`, `insufficient_scope`,
//!   `blocked_by_rule`), are recorded in full: their number is bounded by its quota, and
//!   each names the tool or rule. So is a request in a session another principal holds
//!   (`session_not_owned`, detail `other_principal`: the client holds that session's id),
//!   so that no decoy refusal can hide it in a count.
//!
//! Each refusal counted instead of recorded increments
//! `mcp_audit_refusals_counted_total` (the `metrics` facade).
//!
//! Memory is bounded: at most `maxKeys` (client, reason) pairs are counted apart in an
//! interval; refusals of further clients are counted per reason in one row without a
//! client (`data.other_clients: true`), its first refusal also recorded in full. The trail
//! thus receives at most about `2 × (maxKeys + reasons)` rows per interval, whatever the
//! number of refused requests.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, SystemTime};

use mcp_core::{Denial, Principal, RejectionReason};
use tokio::time::Instant;

use crate::config::AggregateRefusalsConfig;
use crate::event::{AuditEvent, EventData, EventKind, Outcome};
use crate::pipeline::AuditHandle;

/// Counts the refusals of clients already refused; made by [`crate::Auditor`] from
/// `aggregateRefusals` and used by its [`crate::AuditLayer`]. Cheap to clone.
///
/// Made in a tokio runtime, it spawns a task there that writes the counts of each
/// interval; without one, the counts are written at the next refusal after the interval
/// or at [`flush`](Self::flush).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use mcp_audit::{AuditConfig, Auditor, Storage, StorageList};
///
/// let config = AuditConfig { storage: StorageList::One(Storage::Tracing), ..Default::default() };
/// let auditor = Auditor::from_config(config).await.unwrap();
/// // The layer counts refusals through the auditor's aggregator (`aggregateRefusals`).
/// let layer = auditor.layer();
/// # drop(layer);
/// if let Some(agg) = auditor.refusal_aggregator() {
///     assert_eq!(agg.counted(), 0);
/// }
/// auditor.shutdown().await; // writes the pending counts first
/// # }
/// ```
#[derive(Clone)]
pub struct RefusalAggregator {
    state: Arc<State>,
}

struct State {
    handle: AuditHandle,
    interval: Duration,
    max_keys: usize,
    table: Mutex<Table>,
    counted: AtomicU64,
}

/// Who is refused.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Client {
    /// An address (an IPv6 one by its network).
    Addr(IpAddr),
    /// No address known.
    NoAddr,
    /// An authenticated principal, by its qualified id.
    Principal(Box<str>),
}

/// A count: one client (or, `None`, every client beyond `max_keys`) and one reason.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Slot {
    client: Option<Client>,
    reason: RejectionReason,
}

struct Count {
    principal: Option<Principal>,
    ip: Option<IpAddr>,
    status: Option<u16>,
    code: i64,
    /// Refusals counted since the one recorded in full.
    pending: u64,
    first: Option<SystemTime>,
    last: Option<SystemTime>,
}

struct Table {
    window_start: Instant,
    slots: HashMap<Slot, Count>,
    /// Slots with a client.
    apart: usize,
}

impl fmt::Debug for RefusalAggregator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RefusalAggregator")
            .field("interval", &self.state.interval)
            .field("max_keys", &self.state.max_keys)
            .field("counted", &self.counted())
            .finish_non_exhaustive()
    }
}

impl RefusalAggregator {
    /// Records through `handle`, with the interval and bound of `config` (its `enabled`
    /// is the caller's to read).
    pub fn new(handle: AuditHandle, config: &AggregateRefusalsConfig) -> Self {
        let state = Arc::new(State {
            handle,
            interval: Duration::from_secs(config.interval_secs.max(1)),
            max_keys: config.max_keys.max(1),
            table: Mutex::new(Table {
                window_start: Instant::now(),
                slots: HashMap::new(),
                apart: 0,
            }),
            counted: AtomicU64::new(0),
        });
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(sweep(Arc::downgrade(&state)));
        }
        Self { state }
    }

    /// Refusals counted (not recorded in full) since the start.
    pub fn counted(&self) -> u64 {
        self.state.counted.load(Ordering::Relaxed)
    }

    /// Writes the counts not yet in a row (at shutdown, before the trail is flushed) and
    /// starts a new interval.
    pub async fn flush(&self) {
        let rows = self.state.rotate(Instant::now(), true);
        for r in rows {
            self.state.handle.record(r).await;
        }
    }

    /// Whether `ev` (a finished request event) is to be recorded in full: `false` when it
    /// was counted instead.
    pub(crate) fn admit(&self, ev: &EventData, ipv6_prefix: u8) -> bool {
        let Some((client, principal, denial)) = key_of(ev, ipv6_prefix) else {
            return true;
        };
        let s = &self.state;
        let now = Instant::now();
        let at = ev.at.unwrap_or_else(SystemTime::now);
        let mut due = Vec::new();
        let full = {
            let mut t = s.lock();
            if now.duration_since(t.window_start) >= s.interval {
                due = t.take_rows(now, s.interval);
            }
            let mut slot = Slot {
                client: Some(client),
                reason: denial.reason,
            };
            if !t.slots.contains_key(&slot) && t.apart >= s.max_keys {
                slot.client = None;
            }
            match t.slots.get_mut(&slot) {
                Some(c) => {
                    c.pending += 1;
                    c.first.get_or_insert(at);
                    c.last = Some(at);
                    c.status = ev.status.or(c.status);
                    false
                }
                None => {
                    let ip = match &slot.client {
                        Some(Client::Addr(ip)) => Some(*ip),
                        _ => None,
                    };
                    if slot.client.is_some() {
                        t.apart += 1;
                    }
                    t.slots.insert(
                        slot,
                        Count {
                            principal,
                            ip,
                            status: ev.status,
                            code: denial.code,
                            pending: 0,
                            first: None,
                            last: None,
                        },
                    );
                    true
                }
            }
        };
        if !full {
            s.counted.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("mcp_audit_refusals_counted_total").increment(1);
        }
        for r in due {
            s.handle.try_record(r);
        }
        full
    }
}

/// Whether a denial is a principal's request in a session another principal holds
/// (`session_not_owned`, detail `other_principal`): recorded in full, each one, like a
/// policy decision. A client produces one only with a live session id of someone else,
/// so its number is bounded by the ids it holds, not by what it invents (an invented id
/// is `unknown_session`, counted). Counted with the invented ones, a decoy refusal would
/// hide the attempt on another principal's session behind its own full row.
fn is_takeover_attempt(denial: &Denial) -> bool {
    denial.reason == RejectionReason::SessionNotOwned
        && denial.detail.as_deref() == Some("other_principal")
}

/// The slot's client, the principal to name in its row, and the denial, for a refusal
/// that is aggregated.
fn key_of(ev: &EventData, ipv6_prefix: u8) -> Option<(Client, Option<Principal>, &Denial)> {
    if ev.outcome != Some(Outcome::Denied) || ev.kind != Some(EventKind::Request) {
        return None;
    }
    let denial = ev.denial.as_ref()?;
    match ev.principal.as_ref().filter(|p| p.is_authenticated()) {
        Some(p) => (!(matches!(
            denial.reason,
            RejectionReason::Forbidden
                | RejectionReason::InsufficientScope
                | RejectionReason::BlockedByRule
        ) || is_takeover_attempt(denial)))
        .then(|| {
            (
                Client::Principal(p.qualified_id().into()),
                Some(p.clone()),
                denial,
            )
        }),
        None => Some((
            match ev.client_ip {
                Some(ip) => Client::Addr(mcp_core::client_addr::ip_key(ip, ipv6_prefix)),
                None => Client::NoAddr,
            },
            None,
            denial,
        )),
    }
}

impl State {
    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Ends the interval when it is over (or `always`): the rows of its counts.
    fn rotate(&self, now: Instant, always: bool) -> Vec<AuditEvent> {
        let mut t = self.lock();
        if always || now.duration_since(t.window_start) >= self.interval {
            t.take_rows(now, self.interval)
        } else {
            Vec::new()
        }
    }
}

impl Table {
    /// The rows of the counts, and a new interval from `now`.
    fn take_rows(&mut self, now: Instant, interval: Duration) -> Vec<AuditEvent> {
        self.window_start = now;
        self.apart = 0;
        let mut rows = Vec::new();
        for (slot, c) in self.slots.drain() {
            if c.pending > 0 {
                rows.push(row(&slot, c, interval));
            }
        }
        if self.slots.capacity() > 4096 {
            self.slots.shrink_to(4096);
        }
        rows
    }
}

fn rfc3339(t: Option<SystemTime>) -> serde_json::Value {
    t.and_then(|t| {
        time::OffsetDateTime::from(t)
            .format(&time::format_description::well_known::Rfc3339)
            .ok()
    })
    .map_or(serde_json::Value::Null, serde_json::Value::String)
}

/// The row for a count.
fn row(slot: &Slot, c: Count, interval: Duration) -> AuditEvent {
    let mut data = serde_json::json!({
        "refused": c.pending,
        "first": rfc3339(c.first),
        "last": rfc3339(c.last),
        "interval_secs": interval.as_secs(),
    });
    if slot.client.is_none() {
        data["other_clients"] = serde_json::Value::Bool(true);
    }
    AuditEvent(Box::new(EventData {
        kind: Some(EventKind::Refusals),
        at: Some(SystemTime::now()),
        principal: c.principal,
        client_ip: c.ip,
        status: c.status,
        outcome: Some(Outcome::Denied),
        denial: Some(Denial {
            reason: slot.reason,
            code: c.code,
            detail: None,
        }),
        data: Some(data),
        ..EventData::default()
    }))
}

/// Writes each interval's counts while the aggregator lives.
async fn sweep(state: Weak<State>) {
    let interval = match state.upgrade() {
        Some(s) => s.interval,
        None => return,
    };
    let mut tick = tokio::time::interval((interval / 4).max(Duration::from_millis(250)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(state) = state.upgrade() else { return };
        let rows = state.rotate(Instant::now(), false);
        let handle = state.handle.clone();
        drop(state);
        for r in rows {
            handle.record(r).await;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::event::SinkEvent;
    use crate::sink::{AuditSink, BoxFuture, SinkError};
    use crate::{AuditConfig, Auditor, Storage, StorageList};
    use mcp_core::{AuthMethod, Rejection};

    /// Keeps the JSON of every record written.
    struct Memory(Arc<Mutex<Vec<serde_json::Value>>>);

    impl AuditSink for Memory {
        fn name(&self) -> &str {
            "memory"
        }

        fn write_batch(&mut self, batch: Arc<[SinkEvent]>) -> BoxFuture<'_, Result<(), SinkError>> {
            let rows = self.0.clone();
            Box::pin(async move {
                rows.lock()
                    .unwrap()
                    .extend(batch.iter().map(|e| serde_json::from_str(&e.json).unwrap()));
                Ok(())
            })
        }
    }

    fn refused(ip: &str, reason: RejectionReason, principal: Option<&str>) -> Box<EventData> {
        Box::new(EventData {
            kind: Some(EventKind::Request),
            at: Some(SystemTime::now()),
            client_ip: Some(ip.parse().unwrap()),
            principal: principal.map(|p| Principal::new(p, AuthMethod::ApiKey)),
            status: Some(Rejection::new(reason).status().as_u16()),
            outcome: Some(Outcome::Denied),
            denial: Some(Rejection::new(reason).denial()),
            ..EventData::default()
        })
    }

    /// What an attacker varies does not escape the count (IPv6 addresses of one /64,
    /// another address for a principal); per client and reason one row in full and one
    /// count per interval; the totals are exact; the clients counted apart are bounded.
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn refusals_are_counted_per_client_and_reason_exactly() {
        let rows = Arc::new(Mutex::new(Vec::new()));
        let auditor = Auditor::builder(AuditConfig {
            storage: StorageList::One(Storage::Tracing),
            ..AuditConfig::default()
        })
        .sink(Memory(rows.clone()))
        .start()
        .unwrap();
        let cfg = AggregateRefusalsConfig {
            enabled: true,
            interval_secs: 10,
            max_keys: 4,
        };
        let agg = RefusalAggregator::new(auditor.handle().clone(), &cfg);
        let mut sent = 0u64;
        let mut full = 0u64;
        let mut admit = |ev: Box<EventData>| {
            sent += 1;
            if agg.admit(&ev, 64) {
                full += 1;
                auditor.handle().try_send(ev);
            }
        };
        use RejectionReason::*;
        for i in 0..500 {
            // One /64, a new address each time.
            admit(refused(&format!("2001:db8:1:2::{i:x}"), RateLimited, None));
            admit(refused("192.0.2.1", AuthFailed, None));
            // A principal from rotating addresses.
            admit(refused(
                &format!("192.0.2.{}", i % 200),
                TooLarge,
                Some("bob"),
            ));
        }
        // A principal's policy refusals are recorded in full.
        for _ in 0..3 {
            admit(refused("192.0.2.1", Forbidden, Some("bob")));
        }
        // Beyond max_keys: counted together, without a client.
        for i in 0..20 {
            admit(refused(&format!("198.51.100.{i}"), AuthFailed, None));
        }
        tokio::time::sleep(Duration::from_secs(11)).await;
        admit(refused("192.0.2.1", AuthFailed, None));
        admit(refused("192.0.2.1", AuthFailed, None));
        agg.flush().await;
        auditor.flush().await;
        let rows = rows.lock().unwrap().clone();
        let counted: u64 = rows
            .iter()
            .filter(|r| r["kind"] == "refusals")
            .map(|r| r["data"]["refused"].as_u64().unwrap())
            .sum();
        let in_full = rows.iter().filter(|r| r["kind"] != "refusals").count() as u64;
        assert_eq!(in_full, full);
        assert_eq!(in_full + counted, sent, "{rows:#?}");
        assert_eq!(agg.counted(), counted);
        // 3 clients in full + their counts, 3 policy refusals, one other-clients pair,
        // then 192.0.2.1 again: in full and counted.
        assert_eq!(in_full, 3 + 3 + 2 + 1, "{rows:#?}");
        let count_of = |f: &dyn Fn(&serde_json::Value) -> bool| -> u64 {
            rows.iter()
                .filter(|r| r["kind"] == "refusals" && f(r))
                .map(|r| r["data"]["refused"].as_u64().unwrap())
                .sum()
        };
        assert_eq!(count_of(&|r| r["client_ip"] == "2001:db8:1:2::"), 499);
        assert_eq!(count_of(&|r| r["user"] == "apikey:bob"), 499);
        assert_eq!(count_of(&|r| r["client_ip"] == "192.0.2.1"), 499 + 1);
        assert_eq!(count_of(&|r| r["data"]["other_clients"] == true), 20 - 2);
        let one = rows
            .iter()
            .find(|r| r["kind"] == "refusals" && r["user"] == "apikey:bob")
            .unwrap();
        assert_eq!(one["reason"], "too_large");
        assert_eq!(one["status"], "denied");
        assert_eq!(one["http_status"], 413);
        assert!(one["data"]["first"].is_string() && one["data"]["last"].is_string());
        assert_eq!(one["data"]["interval_secs"], 10);
    }

    /// A request in another principal's session is recorded in full, each one: a decoy
    /// refusal of an invented session id does not hide it in a count.
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn attempts_on_another_principals_session_are_never_counted_away() {
        let auditor = Auditor::builder(AuditConfig {
            storage: StorageList::One(Storage::Tracing),
            ..AuditConfig::default()
        })
        .sink(Memory(Arc::new(Mutex::new(Vec::new()))))
        .start()
        .unwrap();
        let agg = RefusalAggregator::new(
            auditor.handle().clone(),
            &AggregateRefusalsConfig {
                enabled: true,
                interval_secs: 10,
                max_keys: 16,
            },
        );
        let not_owned = |detail: &'static str| {
            let mut ev = refused("192.0.2.1", RejectionReason::SessionNotOwned, Some("alice"));
            ev.denial = Some(
                Rejection::new(RejectionReason::SessionNotOwned)
                    .with_detail(detail)
                    .denial(),
            );
            ev
        };
        // The decoy: in full, then invented ids are counted.
        assert!(agg.admit(&not_owned("unknown_session"), 64));
        assert!(!agg.admit(&not_owned("unknown_session"), 64));
        // Every attempt on a session someone else holds: in full.
        for _ in 0..5 {
            assert!(agg.admit(&not_owned("other_principal"), 64));
        }
        assert!(!agg.admit(&not_owned("unknown_session"), 64));
        agg.flush().await;
        auditor.shutdown().await;
    }

    /// At the end of each interval the counts are written by the aggregator's own task.
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn counts_are_written_at_the_end_of_the_interval() {
        let rows = Arc::new(Mutex::new(Vec::new()));
        let auditor = Auditor::builder(AuditConfig {
            storage: StorageList::One(Storage::Tracing),
            ..AuditConfig::default()
        })
        .sink(Memory(rows.clone()))
        .start()
        .unwrap();
        let agg = auditor.refusal_aggregator().unwrap().clone();
        for _ in 0..10 {
            assert_eq!(
                agg.admit(
                    &refused("192.0.2.9", RejectionReason::RateLimited, None),
                    64
                ),
                agg.counted() == 0 && rows.lock().unwrap().is_empty()
            );
        }
        assert_eq!(agg.counted(), 9);
        tokio::time::sleep(Duration::from_secs(25)).await;
        auditor.flush().await;
        let rows = rows.lock().unwrap().clone();
        assert_eq!(rows.len(), 1, "{rows:#?}");
        assert_eq!(rows[0]["data"]["refused"], 9);
        assert_eq!(rows[0]["client_ip"], "192.0.2.9");
    }
}
