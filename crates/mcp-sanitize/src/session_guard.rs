//! [`SessionGuardLayer`]: what a client may do inside an MCP session, per session: the
//! `MCP-Protocol-Version` it negotiated, and how many resources it holds subscribed.
//!
//! Sessions (`Mcp-Session-Id`, revisions 2025-03-26 to 2025-11-25) carry state the
//! stateless checks cannot see. This layer keeps a bounded table, keyed by a keyed hash of
//! the session id (never the id), and applies:
//!
//! | request | answer |
//! |---|---|
//! | in a session whose `initialize` negotiated version `V`: `MCP-Protocol-Version` later than `V` (the stateless 2026-07-28 included), or with `pin_protocol_version: exact` other than `V` | 400, -32600, reason `unsupported_protocol_version`, detail `rule=session_protocol_version` |
//! | the same, header absent, `V` 2025-06-18 or later | 400, as above: the transport then assumes 2025-03-26, which is not `V`, and those revisions require the header on every request after `initialize` |
//! | `resources/subscribe` of a URI not yet subscribed in this session, when it holds `max_subscriptions` already | 429, -32029, reason `concurrency_limited`, detail `rule=max_subscriptions`, the id echoed |
//!
//! The version is learnt from the upstream's answer to `initialize` (its
//! `result.protocolVersion`, in a JSON or an SSE response that carries `Mcp-Session-Id`):
//! the answer's first 64 KiB are read as they pass, before the client receives them, and
//! nothing is buffered or changed. A header absent on `initialize` itself is accepted
//! (no version is negotiated yet). The per-request check of the 2026-07-28 revision (the
//! header must equal the body's `_meta` version) is stateless: `mcp_core`'s
//! `McpRequest::header_mismatch` makes it.
//!
//! `at_most` (the default) admits a client that names an older revision than the one it
//! negotiated, as the MCP conformance suite's SSE scenarios do (they send `2025-03-26` in
//! a 2025-11-25 session; the transport says a client SHOULD send the negotiated version):
//! it can never claim a revision, or the stateless transport, that the session did not
//! negotiate, and `Mcp-Method` / `Mcp-Name` are compared with the body whatever version
//! the header names. `exact` refuses any other version (stricter: a client that names an
//! older one gets 400). `off` leaves the header to the stateless checks.
//!
//! Subscriptions are counted as a set of URIs per session: `resources/subscribe` of a URI
//! adds it (a repeat does not), `resources/unsubscribe` removes it (a URI never subscribed
//! changes nothing, so unsubscribing made-up URIs frees no room). A successful `DELETE` of
//! the session, or a 404 from the upstream for it, forgets the session. The 429 carries no
//! `Retry-After`: waiting frees nothing, an unsubscribe does.
//!
//! Bounded memory: at most `max_sessions` sessions (default 100,000) and
//! `max_tracked_subscriptions` subscriptions in all (default 1,048,576, 8 bytes each);
//! sessions idle for `idle_timeout_seconds` are dropped. When full, the oldest sessions
//! are forgotten first. **Known limits:** a session the table does not know (forgotten
//! when full or idle, started before a restart, or on another replica) is pinned to the
//! first `MCP-Protocol-Version` it sends after that (trust on first use), and its
//! subscription count starts again from zero; the table is per process (replicas do not
//! share it).
//!
//! Place it after the session binding (`mcp_auth::SessionBindingLayer`) so that a
//! session id of another principal is refused there (404) before this layer answers
//! anything about it, and after `mcp_core::ParseLayer`, whose [`McpRequest`] it reads
//! (without one, a `POST` is checked on its headers only and no subscription is counted).
//!
//! ```
//! use axum::{Router, body::Body};
//! use http::Response;
//! use mcp_sanitize::{GuardBody, SessionGuardConfig, SessionGuardLayer};
//! use tower::ServiceBuilder;
//!
//! let guard = SessionGuardLayer::new(&SessionGuardConfig {
//!     max_subscriptions: 64,
//!     ..SessionGuardConfig::default()
//! })
//! .unwrap();
//! // Parse first, then (after authentication and the session binding) the guard.
//! let stack = ServiceBuilder::new()
//!     .layer(mcp_core::ParseLayer::new())
//!     .map_response(|r: Response<GuardBody<Body>>| r.map(Body::new))
//!     .layer(guard);
//! let app: Router = Router::new().route_service(
//!     "/mcp",
//!     stack.service(tower::service_fn(|_req: http::Request<Body>| async {
//!         Ok::<_, std::convert::Infallible>(Response::new(Body::from("ok")))
//!     })),
//! );
//! ```

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};
use std::time::Instant;

use bytes::{Buf, Bytes};
use http::header::CONTENT_TYPE;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use mcp_core::request::header::{MCP_PROTOCOL_VERSION, MCP_SESSION_ID};
use mcp_core::{McpRequest, Rejection, RejectionReason};
use pin_project_lite::pin_project;
use serde::{Deserialize, Serialize};
use tower_layer::Layer;
use tower_service::Service;

use crate::config::ConfigError;

/// The most bytes of an `initialize` answer read to find its `protocolVersion`.
pub const INITIALIZE_SCAN_BYTES: usize = 64 * 1024;

/// The first revision that requires `MCP-Protocol-Version` on every request after
/// `initialize`.
const HEADER_REQUIRED_SINCE: &str = "2025-06-18";

/// How `MCP-Protocol-Version` is compared with the version negotiated for a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VersionPin {
    /// The header must be the negotiated version (absent only after a 2025-03-26 or
    /// earlier `initialize`). Stricter than the default: the transport says a client
    /// SHOULD (not MUST) send the negotiated version, and some do not (the official
    /// conformance suite sends 2025-03-26 in sessions negotiated at 2025-11-25).
    Exact,
    /// The default: the header may name the negotiated version or an earlier one, never
    /// a later one (absent as for `exact`). `Mcp-Method` / `Mcp-Name` are compared with
    /// the body whatever version the header names, so an older version skips no check.
    #[default]
    AtMost,
    /// Not compared. Weakens the default.
    Off,
}

/// `sanitization.sessions`: the configuration of [`SessionGuardLayer`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionGuardConfig {
    /// Apply the guard (default true).
    pub enabled: bool,
    /// How `MCP-Protocol-Version` is held to the version negotiated at `initialize` for
    /// the session (default `at_most`; see [`VersionPin`]).
    pub pin_protocol_version: VersionPin,
    /// Most resources one session holds subscribed (default 256).
    pub max_subscriptions: usize,
    /// Most sessions tracked (default 100,000); the oldest are forgotten first.
    pub max_sessions: usize,
    /// Most subscriptions tracked over every session (default 1,048,576).
    pub max_tracked_subscriptions: usize,
    /// Seconds a session is remembered without use (default 3600).
    pub idle_timeout_seconds: u64,
}

impl Default for SessionGuardConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            pin_protocol_version: VersionPin::AtMost,
            max_subscriptions: 256,
            max_sessions: 100_000,
            max_tracked_subscriptions: 1 << 20,
            idle_timeout_seconds: 3600,
        }
    }
}

impl SessionGuardConfig {
    /// Checks the values (keys relative to this section).
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (key, v) in [
            ("max_subscriptions", self.max_subscriptions),
            ("max_sessions", self.max_sessions),
            ("max_tracked_subscriptions", self.max_tracked_subscriptions),
        ] {
            if v == 0 {
                return Err(ConfigError::invalid(key, "must be greater than 0"));
            }
        }
        if self.max_tracked_subscriptions < self.max_subscriptions {
            return Err(ConfigError::invalid(
                "max_tracked_subscriptions",
                "must be at least max_subscriptions",
            ));
        }
        if self.idle_timeout_seconds == 0 {
            return Err(ConfigError::invalid(
                "idle_timeout_seconds",
                "must be greater than 0",
            ));
        }
        Ok(())
    }
}

/// One session's state.
struct Entry {
    /// The negotiated (or first seen) `MCP-Protocol-Version`.
    version: Option<Box<str>>,
    /// Keyed hashes of the subscribed URIs.
    subs: Vec<u64>,
    /// Seconds since the table's start, at the last use.
    last: u64,
    /// Insertion number (the FIFO's entry for it).
    order: u64,
}

struct Table {
    map: HashMap<u128, Entry>,
    fifo: VecDeque<(u128, u64)>,
    next_order: u64,
    total_subs: usize,
}

struct Shared {
    cfg: SessionGuardConfig,
    table: Mutex<Table>,
    hasher: (RandomState, RandomState),
    start: Instant,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Table> {
        // A panic while holding the lock cannot leave the table inconsistent in a way
        // that matters more than refusing service: keep going.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_secs()
    }

    fn key(&self, session: &[u8]) -> u128 {
        let a = self.hasher.0.hash_one(session) as u128;
        let b = self.hasher.1.hash_one(session) as u128;
        (a << 64) | b
    }

    fn uri_hash(&self, uri: &str) -> u64 {
        self.hasher.0.hash_one(("uri", uri))
    }
}

fn expired(e: &Entry, now: u64, idle: u64) -> bool {
    now.saturating_sub(e.last) >= idle
}

impl Table {
    fn remove(&mut self, key: u128) {
        if let Some(e) = self.map.remove(&key) {
            self.total_subs -= e.subs.len();
        }
        self.compact();
    }

    /// Drops FIFO entries of removed sessions when they outnumber the live ones.
    fn compact(&mut self) {
        if self.fifo.len() > 2 * self.map.len().max(1024) {
            let map = &self.map;
            self.fifo
                .retain(|(k, o)| map.get(k).is_some_and(|e| e.order == *o));
        }
    }

    /// Forgets the oldest session (not `keep`); false when there is none to forget.
    fn evict_oldest(&mut self, keep: u128) -> bool {
        let mut kept = false;
        while let Some((k, o)) = self.fifo.pop_front() {
            let live = self.map.get(&k).is_some_and(|e| e.order == o);
            if k == keep {
                if live {
                    self.fifo.push_back((k, o));
                    if kept {
                        // Around once: nothing else is left.
                        return false;
                    }
                    kept = true;
                }
                continue;
            }
            if live {
                if let Some(e) = self.map.remove(&k) {
                    self.total_subs -= e.subs.len();
                }
                return true;
            }
        }
        false
    }

    /// The live entry of `key`, created when absent (making room as needed).
    fn entry(&mut self, key: u128, cfg: &SessionGuardConfig, now: u64) -> &mut Entry {
        let stale = self
            .map
            .get(&key)
            .is_some_and(|e| expired(e, now, cfg.idle_timeout_seconds));
        if stale {
            self.remove(key);
        }
        if !self.map.contains_key(&key) {
            // Idle sessions at the front go first, then the oldest.
            while let Some(&(k, o)) = self.fifo.front() {
                let state = self
                    .map
                    .get(&k)
                    .filter(|e| e.order == o)
                    .map(|e| expired(e, now, cfg.idle_timeout_seconds));
                match state {
                    Some(false) => break,
                    Some(true) => {
                        if let Some(e) = self.map.remove(&k) {
                            self.total_subs -= e.subs.len();
                        }
                        self.fifo.pop_front();
                    }
                    None => {
                        self.fifo.pop_front();
                    }
                }
            }
            while self.map.len() >= cfg.max_sessions {
                if !self.evict_oldest(key) {
                    break;
                }
            }
            let order = self.next_order;
            self.next_order += 1;
            self.fifo.push_back((key, order));
            self.map.insert(
                key,
                Entry {
                    version: None,
                    subs: Vec::new(),
                    last: now,
                    order,
                },
            );
            self.compact();
        }
        match self.map.get_mut(&key) {
            Some(e) => {
                e.last = now;
                e
            }
            None => unreachable!("inserted above"),
        }
    }
}

/// The session guard (see the [module documentation](self)). Cheap to clone: the table
/// is shared by every clone and every service it makes.
#[derive(Clone)]
pub struct SessionGuardLayer {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for SessionGuardLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionGuardLayer")
            .field("config", &self.shared.cfg)
            .finish_non_exhaustive()
    }
}

impl SessionGuardLayer {
    /// A guard with this configuration, validated.
    pub fn new(cfg: &SessionGuardConfig) -> Result<Self, ConfigError> {
        cfg.validate()?;
        Ok(Self {
            shared: Arc::new(Shared {
                cfg: cfg.clone(),
                table: Mutex::new(Table {
                    map: HashMap::new(),
                    fifo: VecDeque::new(),
                    next_order: 0,
                    total_subs: 0,
                }),
                hasher: (RandomState::new(), RandomState::new()),
                start: Instant::now(),
            }),
        })
    }

    /// The number of sessions tracked now (for metrics and tests).
    pub fn tracked_sessions(&self) -> usize {
        self.shared.lock().map.len()
    }

    /// The number of subscriptions tracked now, over every session.
    pub fn tracked_subscriptions(&self) -> usize {
        self.shared.lock().total_subs
    }
}

impl<S> Layer<S> for SessionGuardLayer {
    type Service = SessionGuard<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SessionGuard {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service made by [`SessionGuardLayer`].
#[derive(Clone)]
pub struct SessionGuard<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S: std::fmt::Debug> std::fmt::Debug for SessionGuard<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionGuard")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

/// What the response tells the table.
enum After {
    Nothing,
    /// An `initialize` without a session: learn the session and its version.
    Initialize,
    /// A request in a session: forget it on a 404, and on a 2xx too for a `DELETE`.
    Session {
        key: u128,
        delete: bool,
    },
}

/// Whether header `h` may stand in a session negotiated at `v`.
fn admits(pin: VersionPin, v: &str, h: &str) -> bool {
    match pin {
        VersionPin::Off => true,
        VersionPin::Exact => v == h,
        VersionPin::AtMost => v == h || (is_date(v) && is_date(h) && h < v),
    }
}

fn is_date(v: &str) -> bool {
    v.len() == 10 && v.bytes().all(|b| b.is_ascii_digit() || b == b'-')
}

fn version_needs_header(v: &str) -> bool {
    // Revisions are dates (YYYY-MM-DD): compared as text. Anything else is taken as a
    // later revision.
    !is_date(v) || v >= HEADER_REQUIRED_SINCE
}

impl<S> SessionGuard<S> {
    /// Applies the table to a request: the rejection, or what to learn from the response.
    fn check<B>(&self, req: &Request<B>) -> Result<After, Rejection> {
        let sh = &self.shared;
        if !sh.cfg.enabled {
            return Ok(After::Nothing);
        }
        let mcp = req.extensions().get::<McpRequest>();
        let headers = req.headers();
        let Some(sid) = headers.get(MCP_SESSION_ID) else {
            let init = *req.method() == Method::POST
                && mcp.is_some_and(|m| !m.is_batch() && m.method() == Some("initialize"));
            return Ok(if init && sh.cfg.pin_protocol_version != VersionPin::Off {
                After::Initialize
            } else {
                After::Nothing
            });
        };
        let key = sh.key(sid.as_bytes());
        let header = headers
            .get(MCP_PROTOCOL_VERSION)
            .and_then(|v| v.to_str().ok())
            .map(str::trim);
        let id = mcp.and_then(|m| if m.is_batch() { None } else { m.id().cloned() });
        let now = sh.now();
        let mut t = sh.lock();
        let cfg = &sh.cfg;
        let entry = t.entry(key, cfg, now);
        if cfg.pin_protocol_version != VersionPin::Off {
            match (&entry.version, header) {
                (Some(v), Some(h)) if !admits(cfg.pin_protocol_version, v, h) => {
                    return Err(version_refusal(id));
                }
                (Some(v), None) if version_needs_header(v) => {
                    return Err(version_refusal(id));
                }
                (None, Some(h)) if h.len() <= 32 => entry.version = Some(h.into()),
                _ => {}
            }
        }
        let subscriptions = mcp.map(|m| {
            m.messages().iter().filter(|msg| {
                matches!(
                    msg.method(),
                    Some("resources/subscribe" | "resources/unsubscribe")
                ) && msg.resource_uri().is_some()
            })
        });
        if let Some(mut msgs) = subscriptions.filter(|it| it.clone().next().is_some()) {
            // Applied to a copy (at most `max_subscriptions` hashes), kept only when the
            // whole body passes: a refused body changes nothing.
            let mut subs = entry.subs.clone();
            let before = subs.len();
            let refused = msgs.find_map(|msg| {
                let h = sh.uri_hash(msg.resource_uri().unwrap_or_default());
                if msg.method() == Some("resources/unsubscribe") {
                    if let Some(p) = subs.iter().position(|x| *x == h) {
                        subs.swap_remove(p);
                    }
                    return None;
                }
                if subs.contains(&h) {
                    return None;
                }
                if subs.len() >= cfg.max_subscriptions {
                    return Some(msg.id().cloned());
                }
                subs.push(h);
                None
            });
            if let Some(id) = refused {
                return Err(Rejection::new(RejectionReason::ConcurrencyLimited)
                    .with_id(id)
                    .with_message(
                        "Too many resource subscriptions in this session: unsubscribe first",
                    )
                    .with_detail("rule=max_subscriptions"));
            }
            let after = subs.len();
            entry.subs = subs;
            t.total_subs = t.total_subs + after - before;
        }
        // Over the global budget: the oldest other sessions are forgotten.
        while t.total_subs > cfg.max_tracked_subscriptions {
            if !t.evict_oldest(key) {
                break;
            }
        }
        Ok(After::Session {
            key,
            delete: *req.method() == Method::DELETE,
        })
    }
}

fn version_refusal(id: Option<mcp_core::JsonRpcId>) -> Rejection {
    Rejection::new(RejectionReason::UnsupportedProtocolVersion)
        .with_id(id)
        .with_message(
            "Bad Request: MCP-Protocol-Version differs from the version negotiated for this session (absent means 2025-03-26)",
        )
        .with_detail("rule=session_protocol_version")
}

impl<S, B, ResBody> Service<Request<B>> for SessionGuard<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    ResBody: Body<Data = Bytes> + From<Bytes>,
{
    type Response = Response<GuardBody<ResBody>>;
    type Error = S::Error;
    type Future = GuardFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        match self.check(&req) {
            Ok(after) => GuardFuture {
                inner: Some(self.inner.call(req)),
                rejected: None,
                after,
                shared: self.shared.clone(),
            },
            Err(r) => GuardFuture {
                inner: None,
                rejected: Some(r.into_response()),
                after: After::Nothing,
                shared: self.shared.clone(),
            },
        }
    }
}

pin_project! {
    /// The response future of [`SessionGuard`].
    pub struct GuardFuture<F, B> {
        #[pin]
        inner: Option<F>,
        rejected: Option<Response<B>>,
        after: After,
        shared: Arc<Shared>,
    }
}

impl<F, B, E> Future for GuardFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<GuardBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Some(f) = this.inner.as_pin_mut() else {
            return match this.rejected.take() {
                Some(r) => Poll::Ready(Ok(r.map(GuardBody::plain))),
                None => Poll::Pending,
            };
        };
        let res = ready!(f.poll(cx))?;
        let sh = this.shared;
        let status = res.status();
        match std::mem::replace(this.after, After::Nothing) {
            After::Session { key, delete } => {
                if status == StatusCode::NOT_FOUND || (delete && status.is_success()) {
                    sh.lock().remove(key);
                }
                Poll::Ready(Ok(res.map(GuardBody::plain)))
            }
            After::Initialize => {
                let sid = one_value(res.headers());
                match sid {
                    Some(sid) if status.is_success() => {
                        let key = sh.key(&sid);
                        let sse = res
                            .headers()
                            .get(CONTENT_TYPE)
                            .and_then(|v| v.to_str().ok())
                            .is_some_and(|v| {
                                v.trim_start()
                                    .to_ascii_lowercase()
                                    .starts_with("text/event-stream")
                            });
                        let capture = Capture {
                            key,
                            shared: sh.clone(),
                            buf: Vec::new(),
                            sse,
                            scanned: 0,
                            attempts: 0,
                        };
                        Poll::Ready(Ok(res.map(|b| GuardBody::capture(b, capture))))
                    }
                    _ => Poll::Ready(Ok(res.map(GuardBody::plain))),
                }
            }
            After::Nothing => Poll::Ready(Ok(res.map(GuardBody::plain))),
        }
    }
}

/// The single `Mcp-Session-Id` of a response.
fn one_value(h: &HeaderMap) -> Option<Vec<u8>> {
    let mut all = h.get_all(MCP_SESSION_ID).iter();
    match (all.next(), all.next()) {
        (Some(v), None) => Some(v.as_bytes().to_vec()),
        _ => None,
    }
}

/// Reads an `initialize` answer as it passes, for its `result.protocolVersion`.
struct Capture {
    key: u128,
    shared: Arc<Shared>,
    buf: Vec<u8>,
    sse: bool,
    /// SSE: bytes of `buf` already split into events.
    scanned: usize,
    /// JSON: parse attempts so far (a hostile upstream cannot make it quadratic).
    attempts: u8,
}

impl Capture {
    /// Takes a chunk; true when done (found, or given up).
    fn feed(&mut self, chunk: &[u8]) -> bool {
        let room = INITIALIZE_SCAN_BYTES.saturating_sub(self.buf.len());
        let take = chunk.len().min(room);
        self.buf.extend_from_slice(&chunk[..take]);
        let found = if self.sse {
            self.scan_events()
        } else {
            self.try_json()
        };
        if let Some(v) = found {
            self.record(&v);
            return true;
        }
        take < chunk.len() || self.buf.len() >= INITIALIZE_SCAN_BYTES
    }

    fn try_json(&mut self) -> Option<String> {
        let end = self.buf.iter().rposition(|b| !b.is_ascii_whitespace())?;
        if self.buf[end] != b'}' || self.attempts >= 8 {
            return None;
        }
        self.attempts += 1;
        let v: serde_json::Value = serde_json::from_slice(&self.buf).ok()?;
        version_of(&v)
    }

    fn scan_events(&mut self) -> Option<String> {
        loop {
            let rest = &self.buf[self.scanned..];
            let (end, sep) = find_event_end(rest)?;
            let event = &rest[..end];
            self.scanned += end + sep;
            let mut data = Vec::new();
            for line in event.split(|b| *b == b'\n') {
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                if let Some(d) = line.strip_prefix(b"data:") {
                    if !data.is_empty() {
                        data.push(b'\n');
                    }
                    data.extend_from_slice(d.strip_prefix(b" ").unwrap_or(d));
                }
            }
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&data)
                && let Some(found) = version_of(&v)
            {
                return Some(found);
            }
        }
    }

    fn record(&self, version: &str) {
        let sh = &self.shared;
        let now = sh.now();
        let mut t = sh.lock();
        let e = t.entry(self.key, &sh.cfg, now);
        // The negotiated version wins over one seen first.
        e.version = Some(version.into());
    }
}

/// The end of the first complete SSE event in `b` and the length of its blank line.
fn find_event_end(b: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\n' {
            if b.get(i + 1) == Some(&b'\n') {
                return Some((i + 1, 1));
            }
            if b.get(i + 1) == Some(&b'\r') && b.get(i + 2) == Some(&b'\n') {
                return Some((i + 1, 2));
            }
        }
        i += 1;
    }
    None
}

/// `result.protocolVersion` of a JSON-RPC response, when it is a plain version string.
fn version_of(v: &serde_json::Value) -> Option<String> {
    let s = v.get("result")?.get("protocolVersion")?.as_str()?;
    (!s.is_empty() && s.len() <= 32 && s.bytes().all(|b| b.is_ascii_graphic()))
        .then(|| s.to_owned())
}

pin_project! {
    /// The response body of [`SessionGuard`]: the inner body, read as it passes when it
    /// answers an `initialize` (never buffered or changed).
    pub struct GuardBody<B> {
        #[pin]
        inner: B,
        capture: Option<Box<Capture>>,
    }
}

impl<B> GuardBody<B> {
    fn plain(inner: B) -> Self {
        Self {
            inner,
            capture: None,
        }
    }

    fn capture(inner: B, c: Capture) -> Self {
        Self {
            inner,
            capture: Some(Box::new(c)),
        }
    }
}

impl<B> Body for GuardBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let (Some(c), Some(data)) = (this.capture.as_mut(), f.data_ref())
                    && c.feed(data.chunk())
                {
                    *this.capture = None;
                }
            }
            _ => *this.capture = None,
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn layer(cfg: SessionGuardConfig) -> SessionGuardLayer {
        SessionGuardLayer::new(&cfg).unwrap()
    }

    #[test]
    fn versions_that_need_the_header() {
        assert!(!version_needs_header("2024-11-05"));
        assert!(!version_needs_header("2025-03-26"));
        assert!(version_needs_header("2025-06-18"));
        assert!(version_needs_header("2025-11-25"));
        assert!(version_needs_header("2026-07-28"));
        assert!(version_needs_header("draft"));
    }

    #[test]
    fn pins() {
        use VersionPin::*;
        assert!(admits(Exact, "2025-11-25", "2025-11-25"));
        assert!(!admits(Exact, "2025-11-25", "2025-03-26"));
        assert!(admits(AtMost, "2025-11-25", "2025-03-26"));
        assert!(admits(AtMost, "2025-11-25", "2025-11-25"));
        assert!(!admits(AtMost, "2025-06-18", "2025-11-25"));
        assert!(!admits(AtMost, "2025-11-25", "2026-07-28"));
        assert!(!admits(AtMost, "2025-11-25", "draft"));
        assert!(admits(Off, "2025-11-25", "2026-07-28"));
    }

    #[test]
    fn config_is_validated() {
        for cfg in [
            SessionGuardConfig {
                max_subscriptions: 0,
                ..Default::default()
            },
            SessionGuardConfig {
                max_sessions: 0,
                ..Default::default()
            },
            SessionGuardConfig {
                max_tracked_subscriptions: 10,
                max_subscriptions: 11,
                ..Default::default()
            },
            SessionGuardConfig {
                idle_timeout_seconds: 0,
                ..Default::default()
            },
        ] {
            assert!(SessionGuardLayer::new(&cfg).is_err(), "{cfg:?}");
        }
    }

    #[test]
    fn the_table_stays_within_its_bounds() {
        let l = layer(SessionGuardConfig {
            max_sessions: 100,
            max_subscriptions: 10,
            max_tracked_subscriptions: 50,
            ..Default::default()
        });
        let sh = &l.shared;
        for i in 0..1000u32 {
            let key = sh.key(&i.to_be_bytes());
            let mut t = sh.lock();
            let e = t.entry(key, &sh.cfg, 0);
            e.subs.extend([1, 2, 3]);
            t.total_subs += 3;
            while t.total_subs > sh.cfg.max_tracked_subscriptions {
                assert!(t.evict_oldest(key));
            }
            assert!(t.map.len() <= 100);
            assert!(t.total_subs <= 50);
            assert!(t.fifo.len() <= 2 * 1024 + 1);
        }
        // Remove and re-create: the FIFO does not grow without bound.
        for i in 0..10_000u32 {
            let key = sh.key(&i.to_be_bytes());
            let mut t = sh.lock();
            let _ = t.entry(key, &sh.cfg, 0);
            t.remove(key);
        }
        assert!(sh.lock().fifo.len() <= 2 * 1024 + 1);
    }

    #[test]
    fn initialize_answers_are_read_in_json_and_sse() {
        let l = layer(SessionGuardConfig::default());
        let mk = |sse| Capture {
            key: 7,
            shared: l.shared.clone(),
            buf: Vec::new(),
            sse,
            scanned: 0,
            attempts: 0,
        };
        let json = br#"{"jsonrpc":"2.0","id":1,"result":{"protocolVersion":"2025-06-18"}}"#;
        let mut c = mk(false);
        assert!(!c.feed(&json[..20]));
        assert!(c.feed(&json[20..]));
        assert_eq!(
            l.shared.lock().map[&7].version.as_deref(),
            Some("2025-06-18")
        );
        let sse = b"event: message\r\nid: 1\r\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\r\ndata: \"result\":{\"protocolVersion\":\"2025-03-26\"}}\r\n\r\n";
        let mut c = mk(true);
        for chunk in sse.chunks(7) {
            if c.feed(chunk) {
                break;
            }
        }
        assert_eq!(
            l.shared.lock().map[&7].version.as_deref(),
            Some("2025-03-26")
        );
        // An endless answer is read up to the bound, then left alone.
        let mut c = mk(true);
        let mut done = false;
        for _ in 0..100 {
            done = c.feed(&[b'x'; 1024]);
            if done {
                break;
            }
        }
        assert!(done);
        assert!(c.buf.len() <= INITIALIZE_SCAN_BYTES);
    }
}
