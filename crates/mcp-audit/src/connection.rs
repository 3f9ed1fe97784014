//! [`ConnectionAudit`]: rows for connections a server refused before any request (over
//! its per-client cap), aggregated per client address so that a flood of refused
//! connections cannot flood the trail.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use mcp_core::{ConnectionObserver, ConnectionRefusal, RefusalReason};

use crate::event::{EventData, EventKind, Outcome};
use crate::pipeline::AuditHandle;

/// The default aggregation interval.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);

/// The default number of client addresses counted separately; refusals from further
/// addresses are counted together, in a row without a client address.
pub const DEFAULT_MAX_CLIENTS: usize = 1024;

/// Records the connections a server refuses (a [`ConnectionObserver`]: give it to
/// `mcp_tls::ConnectionLimit::observer`).
///
/// Per client address (as the server counts it: IPv6 by its network), the first refusal
/// is recorded at once, then at most one row per interval (default 10 s) with the count
/// of the refusals since the previous row. A row has the kind `connection`, the outcome
/// `denied`, the reason (`too_many_connections`), the client IP and
/// `data: {"refused": <count>, "limit": <the cap>}`. The addresses kept are bounded
/// ([`DEFAULT_MAX_CLIENTS`]); refusals beyond are counted in one row without a client
/// IP and with `"other_addresses": true`. So the trail receives at most about
/// `max_clients + 1` rows per interval, whatever the number of refused connections.
///
/// Made in a tokio runtime, it spawns a task there that writes the counts of each
/// interval; without one, a count waits for the address's next refusal after the
/// interval. [`flush`](Self::flush) writes what is pending (at shutdown).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use mcp_audit::{AuditConfig, Auditor, ConnectionAudit, Storage, StorageList};
///
/// let config = AuditConfig { storage: StorageList::One(Storage::Tracing), ..Default::default() };
/// let auditor = Auditor::from_config(config).await.unwrap();
/// let observer = std::sync::Arc::new(ConnectionAudit::new(auditor.handle().clone()));
/// // mcp_tls::ConnectionLimit::new(10_000).observer(observer.clone())
/// observer.flush();
/// # }
/// ```
#[derive(Clone)]
pub struct ConnectionAudit {
    state: Arc<State>,
}

struct State {
    handle: AuditHandle,
    interval: Duration,
    max_clients: usize,
    counts: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    clients: HashMap<IpAddr, Count>,
    others: Option<Count>,
}

struct Count {
    reason: RefusalReason,
    limit: usize,
    /// Refusals not yet in a row.
    pending: u64,
    /// When the last row was written.
    last_row: Instant,
}

impl fmt::Debug for ConnectionAudit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionAudit")
            .field("interval", &self.state.interval)
            .field("max_clients", &self.state.max_clients)
            .finish_non_exhaustive()
    }
}

impl ConnectionAudit {
    /// Records through `handle`, one row per address per [`DEFAULT_INTERVAL`], at most
    /// [`DEFAULT_MAX_CLIENTS`] addresses apart.
    pub fn new(handle: AuditHandle) -> Self {
        Self::with_limits(handle, DEFAULT_INTERVAL, DEFAULT_MAX_CLIENTS)
    }

    /// Records through `handle`, one row per address per `interval` (at least 1 s), at
    /// most `max_clients` addresses apart (at least 1).
    pub fn with_limits(handle: AuditHandle, interval: Duration, max_clients: usize) -> Self {
        let state = Arc::new(State {
            handle,
            interval: interval.max(Duration::from_secs(1)),
            max_clients: max_clients.max(1),
            counts: Mutex::default(),
        });
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(sweep(Arc::downgrade(&state)));
        }
        Self { state }
    }

    /// Writes the counts not yet in a row (at shutdown, before the trail is flushed).
    pub fn flush(&self) {
        self.state.sweep(None);
    }
}

/// Writes each interval's counts while the [`ConnectionAudit`] lives.
async fn sweep(state: Weak<State>) {
    let interval = match state.upgrade() {
        Some(s) => s.interval,
        None => return,
    };
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(state) = state.upgrade() else { return };
        state.sweep(Some(Instant::now()));
    }
}

impl State {
    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes the pending counts (all of them with `None`; with `Some(now)`, those whose
    /// last row is an interval old) and forgets the addresses quiet for an interval.
    fn sweep(&self, now: Option<Instant>) {
        let mut rows = Vec::new();
        {
            let mut counts = self.lock();
            let due = |c: &Count| now.is_none_or(|n| n.duration_since(c.last_row) >= self.interval);
            counts.clients.retain(|ip, c| {
                if c.pending > 0 && due(c) {
                    rows.push(row(Some(*ip), c));
                    c.pending = 0;
                    c.last_row = now.unwrap_or_else(Instant::now);
                    true
                } else {
                    !(c.pending == 0 && due(c))
                }
            });
            if let Some(c) = counts.others.as_mut()
                && c.pending > 0
                && due(c)
            {
                rows.push(row(None, c));
                c.pending = 0;
                c.last_row = now.unwrap_or_else(Instant::now);
            }
        }
        for r in rows {
            self.handle.try_record(crate::AuditEvent(r));
        }
    }
}

/// The row for a count.
fn row(client: Option<IpAddr>, c: &Count) -> Box<EventData> {
    let mut data = serde_json::json!({"refused": c.pending, "limit": c.limit});
    if client.is_none() {
        data["other_addresses"] = serde_json::Value::Bool(true);
    }
    Box::new(EventData {
        kind: Some(EventKind::Connection),
        at: Some(SystemTime::now()),
        client_ip: client,
        outcome: Some(Outcome::Denied),
        note: Some((c.reason.as_str(), c.reason.detail())),
        data: Some(data),
        ..EventData::default()
    })
}

impl ConnectionObserver for ConnectionAudit {
    fn refused(&self, refusal: ConnectionRefusal) {
        let s = &self.state;
        let now = Instant::now();
        let fresh = |pending| Count {
            reason: refusal.reason,
            limit: refusal.limit,
            pending,
            last_row: now,
        };
        let mut out = None;
        {
            let mut counts = s.lock();
            let known = counts.clients.contains_key(&refusal.client);
            if !known && counts.clients.len() >= s.max_clients {
                // Forget the quiet addresses before counting this one with the others.
                let interval = s.interval;
                counts
                    .clients
                    .retain(|_, c| c.pending > 0 || now.duration_since(c.last_row) < interval);
            }
            let slot = if known || counts.clients.len() < s.max_clients {
                Some(refusal.client)
            } else {
                None
            };
            let count = match slot {
                Some(ip) => counts.clients.get_mut(&ip),
                None => counts.others.as_mut(),
            };
            match count {
                Some(c) => {
                    c.pending += 1;
                    c.limit = refusal.limit;
                    if now.duration_since(c.last_row) >= s.interval {
                        out = Some(row(slot, c));
                        c.pending = 0;
                        c.last_row = now;
                    }
                }
                None => {
                    // The first refusal: a row at once.
                    let c = fresh(1);
                    out = Some(row(slot, &c));
                    let c = fresh(0);
                    match slot {
                        Some(ip) => {
                            counts.clients.insert(ip, c);
                        }
                        None => counts.others = Some(c),
                    }
                }
            }
        }
        if let Some(r) = out {
            s.handle.try_record(crate::AuditEvent(r));
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

    /// Keeps the JSON of every record written.
    struct Memory(Arc<Mutex<Vec<String>>>);

    impl AuditSink for Memory {
        fn name(&self) -> &str {
            "memory"
        }

        fn write_batch(&mut self, batch: Arc<[SinkEvent]>) -> BoxFuture<'_, Result<(), SinkError>> {
            let rows = self.0.clone();
            Box::pin(async move {
                rows.lock()
                    .unwrap()
                    .extend(batch.iter().map(|e| e.json.to_string()));
                Ok(())
            })
        }
    }

    /// Every refusal is counted in exactly one row, the rows stay few, and the addresses
    /// kept are bounded.
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn refusals_are_aggregated_per_address_and_bounded() {
        let cfg = AuditConfig {
            storage: StorageList::One(Storage::Tracing),
            ..AuditConfig::default()
        };
        let rows = Arc::new(Mutex::new(Vec::new()));
        let auditor = Auditor::builder(cfg)
            .sink(Memory(rows.clone()))
            .start()
            .unwrap();
        let audit =
            ConnectionAudit::with_limits(auditor.handle().clone(), Duration::from_secs(10), 3);
        let refuse = |ip: &str| {
            audit.refused(ConnectionRefusal::new(
                ip.parse().unwrap(),
                RefusalReason::TooManyConnections,
                2,
            ));
        };
        for _ in 0..1000 {
            refuse("192.0.2.1");
        }
        for i in 0..10 {
            refuse(&format!("198.51.100.{i}"));
        }
        tokio::time::sleep(Duration::from_secs(11)).await;
        for _ in 0..5 {
            refuse("192.0.2.1");
        }
        audit.flush();
        auditor.handle().flush().await;
        let rows: Vec<serde_json::Value> = rows
            .lock()
            .unwrap()
            .iter()
            .map(|r| serde_json::from_str(r).unwrap())
            .collect();
        assert!(rows.iter().all(|r| r["kind"] == "connection"
            && r["status"] == "denied"
            && r["reason"] == "too_many_connections"));
        let total = |ip: Option<&str>| -> u64 {
            rows.iter()
                .filter(|r| r.get("client_ip").and_then(|v| v.as_str()) == ip)
                .map(|r| r["data"]["refused"].as_u64().unwrap())
                .sum()
        };
        assert_eq!(total(Some("192.0.2.1")), 1005);
        // Three addresses apart: the first, and two of the others; the rest together.
        assert_eq!(total(Some("198.51.100.0")), 1);
        assert_eq!(total(Some("198.51.100.1")), 1);
        assert_eq!(total(None), 8);
        // 192.0.2.1: the first refusal, the interval's 999, the 5 after: three rows.
        let of = |ip: &str| rows.iter().filter(|r| r["client_ip"] == ip).count();
        assert_eq!(of("192.0.2.1"), 3, "{rows:#?}");
        assert!(rows.len() <= 7, "{rows:#?}");
    }
}
