//! [`SessionBindingLayer`]: MCP sessions bound to the principal that created them.
//!
//! An MCP server issues an `Mcp-Session-Id` in its answer to `initialize`; the client
//! sends it on every later `POST`, `GET` (SSE stream) and `DELETE`. Whoever holds the id
//! is in the session, so a second principal that learns it (a log, a shared proxy, a
//! guess against a server with weak ids) could call tools in it, read its stream or end
//! it. This layer, placed after authentication (it reads the [`Principal`] from the
//! request extensions), closes that:
//!
//! - On the response, an `Mcp-Session-Id` the upstream issues is bound to the principal
//!   that received it (an atomic bind: an id already bound to another principal is not
//!   handed out, 502).
//! - A request carrying an `Mcp-Session-Id` bound to another principal gets **404** with
//!   a JSON-RPC error body (`-32001`, `Session not found`), exactly what an unknown session
//!   gets, and a [`Denial`](mcp_core::Denial) with
//!   [`RejectionReason::SessionNotOwned`] (detail `other_principal`) for the audit trail.
//!   `POST`, `GET` and `DELETE` alike; a successful `DELETE` removes the binding.
//! - **An id the layer does not know gets 404 too** (detail `unknown_session`): fail
//!   closed. After a restart (memory store), an eviction, an idle expiry or a Redis flush,
//!   clients get 404 and start a new session, as the MCP transport asks them to. Forwarding
//!   unknown ids instead would let a principal reach a session whose binding was lost, or
//!   an id the upstream reads differently (case, whitespace) from the one bound.
//! - Two `Mcp-Session-Id` headers in one request: 400 (the upstream might read the other).
//! - Owners are the principal's qualified id (`Principal::qualified_id`: its
//!   [`AuthMethod`](mcp_core::AuthMethod), its id and, for a JWT, the issuer it was verified against): an API
//!   key `bob` and a Basic user `bob` are two owners, and so are two issuers' `bob`.
//!
//! Storage holds the SHA-256 of each id (see [`session_id_hash`]; unkeyed so that
//! replicas and the audit trail agree without sharing a key; the ids the MCP servers
//! issue are random and long, and an id that could be guessed from its hash could be
//! guessed as well by asking the server: the binding, not the hash, defends it). Bounded
//! memory: at most `maxSessions` bindings, each expiring after `idleTimeoutSeconds` without
//! use; when full, expired bindings go first, then the least recently used of the
//! principals holding the most bindings. **One principal cannot evict another's**: each
//! holds at most `maxSessionsPerPrincipal` (default 64, memory and Redis); past it, its own
//! least recently used binding is evicted. With Redis (cargo feature `redis`), replicas
//! share the bindings: keys `prefix:<sha256 hex>` with a TTL of the idle timeout,
//! refreshed when an eighth is spent (no write per request), bound with `SET NX`; while
//! Redis is unreachable, requests carrying a session id and responses issuing one get 503
//! (fail closed: there is no fail-open mode, it would be the hijack this layer exists to
//! stop). Requests without a session id never touch the store.
//!
//! **Ending sessions at the upstream.** An evicted or expired binding leaves its session
//! at the upstream, which may hold it for an hour: a principal opening sessions in a loop
//! would fill the upstream's table. [`SessionBindingLayer::ended_sessions`] hands each
//! session the layer ends ([`EndedSession`]: the id, the [`SessionRoute`] the request
//! carried, the [`EndReason`]) to the service that knows the upstream, which sends it a
//! `DELETE`. From that call on, the layer keeps the id itself (at most
//! [`MAX_ENDED_ID_LEN`] bytes; longer ids are left to the upstream's expiry) beside its
//! hash: in memory, and with Redis in the hash `prefix:ends` (Redis already decides who
//! owns each session; the id alone does not pass the binding). Expiry is active: a sweep
//! every eighth of the idle timeout (250 ms to 30 s) ends expired bindings (memory), or
//! (Redis) claims the ids of the sorted set `prefix:idle` (last use) whose binding key has
//! expired, in one atomic script, so that exactly one replica ends each. A session the
//! client ends with its own `DELETE` is not ended again. The ending is best effort: an
//! ended session that finds the queue (at least [`ENDED_QUEUE`]) full, or whose replica stops
//! before sending, is left to the upstream's own expiry and counted
//! ([`SessionBindingLayer::ended_dropped`]).
//!
//! The session id is a credential: the layer marks the header sensitive on the request
//! and the response (`http`'s `Debug` prints `Sensitive`), and logs only the hash prefix.
//!
//! ```
//! use axum::{Router, routing::post};
//! use mcp_auth::{ApiKeyAuthenticator, AuthLayer, CredentialEntry, SessionBindingLayer, SessionConfig};
//!
//! let auth = AuthLayer::builder()
//!     .authenticator(
//!         ApiKeyAuthenticator::builder()
//!             .key(CredentialEntry::new("ci", "Abc123!@#Xyz789!@#"))
//!             .build()
//!             .unwrap(),
//!     )
//!     .build()
//!     .unwrap();
//! let sessions = SessionBindingLayer::new(
//!     &SessionConfig::default().max_sessions(10_000).idle_timeout_seconds(1800),
//! )
//! .unwrap();
//! // Layers added last run first: authentication, then the session binding.
//! let app: Router = Router::new()
//!     .route("/mcp", post(|| async { "ok" }))
//!     .layer(sessions)
//!     .layer(auth);
//! ```

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::RETRY_AFTER;
use http::{Method, Request, Response};
use mcp_core::request::header::MCP_SESSION_ID;
use mcp_core::{JsonRpcId, McpRequest, Principal, Rejection, RejectionReason};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

use crate::error::ConfigError;

/// The JSON-RPC error code of the 404 (the one the MCP SDKs send for an unknown session).
pub const SESSION_NOT_FOUND_CODE: i64 = -32001;

/// The JSON-RPC error message of the 404.
pub const SESSION_NOT_FOUND_MESSAGE: &str = "Session not found";

/// `sessions.*`: the session binding's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct SessionConfig {
    /// Bind sessions (default true). When false the layer lets every request through.
    pub enabled: bool,
    /// Most bindings held in memory (default 100,000). Ignored with Redis, where each
    /// binding expires after the idle timeout and Redis' own memory limit applies.
    pub max_sessions: usize,
    /// Most bindings one principal (one owner, see [`owner_key`]) holds (default 64), in
    /// memory and in Redis. When an owner at its cap receives a new session, its own least
    /// recently used binding is evicted (that client gets 404 and starts a new session;
    /// the upstream session is ended with a `DELETE` when
    /// [`SessionBindingLayer::ended_sessions`] is used, else it stays until the upstream
    /// expires it): one principal's sessions never push out another's. A service principal that holds sessions for
    /// many end users needs a higher value.
    pub max_sessions_per_principal: usize,
    /// Seconds a binding lives without being used (default 1800: below the hour many
    /// MCP servers keep an idle session, so that the binding's expiry, which ends the
    /// session at the upstream when [`SessionBindingLayer::ended_sessions`] is used,
    /// comes first).
    pub idle_timeout_seconds: u64,
    /// Share the bindings between replicas through Redis (cargo feature `redis`).
    pub redis: Option<SessionRedisConfig>,
}

/// The default most bindings held in memory.
pub const DEFAULT_MAX_SESSIONS: usize = 100_000;
/// The default idle timeout, in seconds.
pub const DEFAULT_IDLE_TIMEOUT_SECONDS: u64 = 1800;
/// The default most bindings of one principal.
pub const DEFAULT_MAX_SESSIONS_PER_PRINCIPAL: usize = 64;

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_sessions: DEFAULT_MAX_SESSIONS,
            max_sessions_per_principal: DEFAULT_MAX_SESSIONS_PER_PRINCIPAL,
            idle_timeout_seconds: DEFAULT_IDLE_TIMEOUT_SECONDS,
            redis: None,
        }
    }
}

impl SessionConfig {
    /// Sets the most bindings held in memory.
    pub fn max_sessions(mut self, n: usize) -> Self {
        self.max_sessions = n;
        self
    }

    /// Sets the most bindings one principal holds.
    pub fn max_sessions_per_principal(mut self, n: usize) -> Self {
        self.max_sessions_per_principal = n;
        self
    }

    /// Sets the idle timeout in seconds.
    pub fn idle_timeout_seconds(mut self, s: u64) -> Self {
        self.idle_timeout_seconds = s;
        self
    }

    /// Shares the bindings through Redis.
    pub fn redis(mut self, redis: SessionRedisConfig) -> Self {
        self.redis = Some(redis);
        self
    }
}

/// `sessions.redis.*` (cargo feature `redis`).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SessionRedisConfig {
    /// `redis://[:password@]host:port/db` or `rediss://...`; never shown in Debug output
    /// or errors with its password.
    pub url: String,
    /// Key prefix: keys are `prefix:<sha256 of the id, hex>` (default `mcp-session`).
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// Timeout of every Redis call, connection included, in milliseconds (default 250).
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// The circuit breaker in front of Redis (`failureThreshold`, default 3;
    /// `backoffInitialMs`, default 100; `backoffMaxMs`, default 500): after that many
    /// consecutive failed or timed-out calls, requests that need the store get 503 at
    /// once, without calling Redis, until a probe finds it again.
    #[serde(default)]
    pub breaker: mcp_core::breaker::BreakerConfig,
}

fn default_prefix() -> String {
    "mcp-session".to_owned()
}
fn default_timeout_ms() -> u64 {
    250
}

impl SessionRedisConfig {
    /// A Redis configuration with the default prefix and timeout.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            prefix: default_prefix(),
            timeout_ms: default_timeout_ms(),
            breaker: mcp_core::breaker::BreakerConfig::default(),
        }
    }

    /// Sets the circuit breaker's thresholds.
    pub fn breaker(mut self, breaker: mcp_core::breaker::BreakerConfig) -> Self {
        self.breaker = breaker;
        self
    }

    /// Sets the key prefix.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Sets the call timeout in milliseconds.
    pub fn timeout_ms(mut self, ms: u64) -> Self {
        self.timeout_ms = ms;
        self
    }
}

impl fmt::Debug for SessionRedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let url = match (self.url.find("://"), self.url.rfind('@')) {
            (Some(s), Some(at)) if at > s => {
                format!("{}://***@{}", &self.url[..s], &self.url[at + 1..])
            }
            _ => self.url.clone(),
        };
        f.debug_struct("SessionRedisConfig")
            .field("url", &url)
            .field("prefix", &self.prefix)
            .field("timeout_ms", &self.timeout_ms)
            .field("breaker", &self.breaker)
            .finish()
    }
}

/// The SHA-256 of a session id: what the store keeps.
type Digest32 = [u8; 32];

/// How a session id is shown in logs and audit records: `sha256:` and the first 16 hex
/// digits of the SHA-256 of its bytes (enough to correlate records, not the credential).
///
/// ```
/// assert_eq!(
///     mcp_auth::session::session_id_hash(b"abc"),
///     "sha256:ba7816bf8f01cfea"
/// );
/// ```
pub fn session_id_hash(id: &[u8]) -> String {
    short(&Sha256::digest(id).into())
}

fn short(d: &Digest32) -> String {
    let mut s = String::with_capacity(23);
    s.push_str("sha256:");
    s.push_str(&hex::encode(&d[..8]));
    s
}

/// The owner of a session: the principal's qualified id
/// ([`Principal::qualified_id`]: its authentication method, the JWT issuer it was
/// verified against, and its id, which no two principals share), hashed so that the
/// store's size does not depend on the id's length. One place, so that the notion of
/// "the same principal" can change in one place.
pub fn owner_key(p: &Principal) -> [u8; 32] {
    Sha256::digest(p.qualified_id().as_bytes()).into()
}

/// The store could not be reached (Redis down, a poisoned lock).
#[derive(Debug)]
struct Unavailable;

/// The longest session id kept to end its session at the upstream (longer ids are bound
/// by their hash only, and left to the upstream's own expiry).
pub const MAX_ENDED_ID_LEN: usize = 512;

/// How many ended sessions wait for [`EndedSessions::recv`] at least: the queue holds
/// this many or an eighth of `maxSessions` (twice what one eviction of a full memory store
/// ends), whichever is more, up to 65,536. Past it, an ended session is counted in
/// [`SessionBindingLayer::ended_dropped`] and left to the upstream.
pub const ENDED_QUEUE: usize = 4096;

/// The queue of ended sessions for a store of `max_sessions`.
fn ended_queue(max_sessions: usize) -> usize {
    ENDED_QUEUE.max(max_sessions / 8).min(1 << 16)
}

/// Why the layer ended a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EndReason {
    /// Its owner opened more than `maxSessionsPerPrincipal`: its least recently used.
    PrincipalCap,
    /// The store held `maxSessions`: the least recently used of the owner holding most.
    StoreFull,
    /// Unused for `idleTimeoutSeconds`.
    Idle,
}

impl EndReason {
    /// A stable label: `principal_cap`, `store_full`, `idle`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PrincipalCap => "principal_cap",
            Self::StoreFull => "store_full",
            Self::Idle => "idle",
        }
    }
}

/// A request extension naming the upstream (route) a request goes to: the binding keeps
/// it with the session, and an [`EndedSession`] carries it back, so that a service in
/// front of several upstreams knows which one to end the session at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRoute(pub Arc<str>);

/// A session the layer ended (evicted or expired): its upstream still holds it until it
/// receives a `DELETE` with [`session_id`](Self::session_id) or expires it. `Debug`
/// shows the id's hash only.
#[derive(Clone)]
pub struct EndedSession {
    id: http::HeaderValue,
    route: Option<Arc<str>>,
    reason: EndReason,
}

impl EndedSession {
    /// The `Mcp-Session-Id` to send the upstream (a credential: marked sensitive).
    pub fn session_id(&self) -> &http::HeaderValue {
        &self.id
    }

    /// The [`SessionRoute`] of the request that created it, if it had one.
    pub fn route(&self) -> Option<&str> {
        self.route.as_deref()
    }

    /// Why it was ended.
    pub fn reason(&self) -> EndReason {
        self.reason
    }

    /// The id as logs show it ([`session_id_hash`]).
    pub fn id_hash(&self) -> String {
        session_id_hash(self.id.as_bytes())
    }
}

impl fmt::Debug for EndedSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EndedSession")
            .field("id", &self.id_hash())
            .field("route", &self.route)
            .field("reason", &self.reason)
            .finish()
    }
}

/// The sessions a [`SessionBindingLayer`] ends, for the service that knows the upstream
/// to send each a `DELETE` (see [`SessionBindingLayer::ended_sessions`]).
#[derive(Debug)]
pub struct EndedSessions {
    rx: tokio::sync::mpsc::Receiver<EndedSession>,
}

impl EndedSessions {
    /// The next ended session; `None` once the layer and all its clones are dropped.
    pub async fn recv(&mut self) -> Option<EndedSession> {
        self.rx.recv().await
    }
}

/// What the binding keeps to end a session: its id and route.
struct Ending {
    id: http::HeaderValue,
    route: Option<Arc<str>>,
}

/// Hands ended sessions to the [`EndedSessions`] receiver, once someone took it.
struct Ender {
    tx: tokio::sync::mpsc::Sender<EndedSession>,
    rx: Mutex<Option<tokio::sync::mpsc::Receiver<EndedSession>>>,
    on: std::sync::atomic::AtomicBool,
    dropped: AtomicU64,
}

impl Ender {
    fn new(capacity: usize) -> Self {
        let (tx, rx) = tokio::sync::mpsc::channel(capacity.max(1));
        Self {
            tx,
            rx: Mutex::new(Some(rx)),
            on: std::sync::atomic::AtomicBool::new(false),
            dropped: AtomicU64::new(0),
        }
    }

    fn on(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    /// What to keep of a newly issued id, when sessions are ended at the upstream.
    fn keep(&self, id: &http::HeaderValue, route: Option<&Arc<str>>) -> Option<Ending> {
        (self.on() && id.len() <= MAX_ENDED_ID_LEN).then(|| {
            let mut id = id.clone();
            id.set_sensitive(true);
            Ending {
                id,
                route: route.cloned(),
            }
        })
    }

    fn emit(&self, e: Ending, reason: EndReason) {
        if !self.on() {
            return;
        }
        let ended = EndedSession {
            id: e.id,
            route: e.route,
            reason,
        };
        if self.tx.try_send(ended).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Bindings in this process's memory.
struct MemoryStore {
    map: RwLock<Bindings>,
    max: usize,
    per_owner: usize,
    idle: Duration,
    base: Instant,
    ender: Arc<Ender>,
}

/// The bindings, and each owner's ids (so that an owner's count and its least recently
/// used binding are found without a scan of everyone's).
#[derive(Default)]
struct Bindings {
    sessions: HashMap<Digest32, Entry>,
    owners: HashMap<Digest32, HashSet<Digest32>>,
    /// Binding order: breaks ties between bindings last used in the same millisecond.
    seq: u64,
}

impl Bindings {
    fn remove(&mut self, id: &Digest32) -> Option<Entry> {
        let e = self.sessions.remove(id)?;
        if let Some(set) = self.owners.get_mut(&e.owner) {
            set.remove(id);
            if set.is_empty() {
                self.owners.remove(&e.owner);
            }
        }
        Some(e)
    }

    fn insert(&mut self, id: Digest32, owner: Digest32, now: u64, end: Option<Ending>) {
        self.remove(&id);
        self.seq = self.seq.wrapping_add(1);
        self.sessions.insert(
            id,
            Entry {
                owner,
                last_used: AtomicU64::new(now),
                seq: self.seq,
                end: end.map(Box::new),
            },
        );
        self.owners.entry(owner).or_default().insert(id);
    }

    fn count(&self, owner: &Digest32) -> usize {
        self.owners.get(owner).map_or(0, HashSet::len)
    }
}

struct Entry {
    owner: Digest32,
    /// Milliseconds since `base` of the last use.
    last_used: AtomicU64,
    /// When it was bound, in binding order.
    seq: u64,
    /// What ends it at the upstream (when sessions are ended there).
    end: Option<Box<Ending>>,
}

/// When a binding was last used (ms since `base`), then its binding order.
type Age = (u64, u64);

impl Entry {
    /// The least recently used sorts first.
    fn age_key(&self) -> Age {
        (self.last_used.load(Ordering::Relaxed), self.seq)
    }
}

impl MemoryStore {
    fn new(max: usize, per_owner: usize, idle: Duration, ender: Arc<Ender>) -> Self {
        Self {
            map: RwLock::new(Bindings::default()),
            max,
            per_owner,
            idle,
            base: Instant::now(),
            ender,
        }
    }

    /// Removes `id` and hands its session to the [`Ender`].
    fn end(&self, map: &mut Bindings, id: &Digest32, reason: EndReason) {
        if let Some(end) = map.remove(id).and_then(|e| e.end) {
            self.ender.emit(*end, reason);
        }
    }

    /// Removes every expired binding, ending its session; how many.
    fn sweep(&self) -> Result<usize, Unavailable> {
        let now = self.now_ms();
        let expired: Vec<Digest32> = {
            let map = self.map.read().map_err(|_| Unavailable)?;
            map.sessions
                .iter()
                .filter(|(_, e)| self.expired(e, now))
                .map(|(k, _)| *k)
                .collect()
        };
        if expired.is_empty() {
            return Ok(0);
        }
        let mut map = self.map.write().map_err(|_| Unavailable)?;
        let now = self.now_ms();
        let mut n = 0;
        for id in &expired {
            // Used again between the two locks: kept.
            if map.sessions.get(id).is_some_and(|e| self.expired(e, now)) {
                self.end(&mut map, id, EndReason::Idle);
                n += 1;
            }
        }
        Ok(n)
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn idle_ms(&self) -> u64 {
        u64::try_from(self.idle.as_millis()).unwrap_or(u64::MAX)
    }

    fn expired(&self, e: &Entry, now: u64) -> bool {
        now.saturating_sub(e.last_used.load(Ordering::Relaxed)) >= self.idle_ms()
    }

    /// The owner of a live binding, refreshing its last use (an atomic store under the
    /// read lock, at most once a second per binding).
    fn owner_of(&self, id: &Digest32) -> Result<Option<Digest32>, Unavailable> {
        let map = self.map.read().map_err(|_| Unavailable)?;
        let now = self.now_ms();
        Ok(map
            .sessions
            .get(id)
            .filter(|e| !self.expired(e, now))
            .map(|e| {
                if now.saturating_sub(e.last_used.load(Ordering::Relaxed)) >= 1000 {
                    e.last_used.store(now, Ordering::Relaxed);
                }
                e.owner
            }))
    }

    /// Binds `id` to `owner` unless a live binding to another owner exists. An owner at
    /// its cap loses its own least recently used binding; a full store loses bindings of
    /// the owners holding the most.
    fn bind(
        &self,
        id: Digest32,
        owner: Digest32,
        end: Option<Ending>,
    ) -> Result<bool, Unavailable> {
        let mut map = self.map.write().map_err(|_| Unavailable)?;
        let now = self.now_ms();
        if let Some(e) = map.sessions.get(&id).filter(|e| !self.expired(e, now)) {
            if e.owner != owner {
                return Ok(false);
            }
            e.last_used.store(now, Ordering::Relaxed);
            return Ok(true);
        }
        // The same id issued again: the same upstream session, not one to end.
        map.remove(&id);
        if map.count(&owner) >= self.per_owner {
            self.evict_own(&mut map, &owner, now);
        }
        if map.sessions.len() >= self.max {
            self.evict(&mut map, now);
        }
        map.insert(id, owner, now, end);
        Ok(true)
    }

    /// Makes room under `owner`'s cap: its expired bindings, then its least recently used.
    fn evict_own(&self, map: &mut Bindings, owner: &Digest32, now: u64) {
        let mut own: Vec<(Age, Digest32)> = map
            .owners
            .get(owner)
            .into_iter()
            .flatten()
            .filter_map(|id| map.sessions.get(id).map(|e| (e.age_key(), *id)))
            .collect();
        own.sort_unstable_by_key(|(t, _)| *t);
        let idle = self.idle_ms();
        let expired = own
            .iter()
            .take_while(|((t, _), _)| now.saturating_sub(*t) >= idle)
            .count();
        // Down to one below the cap: the new binding takes the last place.
        let over = own.len().saturating_sub(self.per_owner.saturating_sub(1));
        let n = expired.max(over).min(own.len());
        for (i, (_, id)) in own[..n].iter().enumerate() {
            let reason = if i < expired {
                EndReason::Idle
            } else {
                EndReason::PrincipalCap
            };
            self.end(map, id, reason);
        }
        if over > 0 {
            tracing::debug!(
                evicted = over,
                max_sessions_per_principal = self.per_owner,
                "a principal at its session cap: its least recently used binding evicted"
            );
        }
    }

    /// Makes room: expired bindings first; if none, a sixteenth of the store (at least
    /// one), taken one at a time from the owner holding the most bindings (its least
    /// recently used), so that a full store costs one scan per `max / 16` new sessions
    /// and a principal holding more than the others loses its own bindings first.
    fn evict(&self, map: &mut Bindings, now: u64) {
        let expired: Vec<Digest32> = map
            .sessions
            .iter()
            .filter(|(_, e)| self.expired(e, now))
            .map(|(k, _)| *k)
            .collect();
        for id in &expired {
            self.end(map, id, EndReason::Idle);
        }
        if map.sessions.len() < self.max {
            return;
        }
        // Each owner's bindings, newest first (so that `pop` gives the oldest).
        let mut groups: Vec<Vec<(Age, Digest32)>> = map
            .owners
            .values()
            .map(|ids| {
                let mut v: Vec<(Age, Digest32)> = ids
                    .iter()
                    .filter_map(|id| map.sessions.get(id).map(|e| (e.age_key(), *id)))
                    .collect();
                v.sort_unstable_by_key(|(age, _)| Reverse(*age));
                v
            })
            .collect();
        // The largest owner first; among equals, the one with the oldest binding.
        let mut heap: BinaryHeap<(usize, Reverse<Age>, usize)> = groups
            .iter()
            .enumerate()
            .filter_map(|(i, g)| g.last().map(|(t, _)| (g.len(), Reverse(*t), i)))
            .collect();
        let n = (self.max / 16).clamp(1, map.sessions.len());
        let mut evicted = 0;
        while evicted < n {
            let Some((_, _, i)) = heap.pop() else { break };
            let Some(group) = groups.get_mut(i) else {
                break;
            };
            if let Some((_, id)) = group.pop() {
                self.end(map, &id, EndReason::StoreFull);
                evicted += 1;
            }
            if let Some((t, _)) = group.last() {
                heap.push((group.len(), Reverse(*t), i));
            }
        }
        tracing::warn!(
            evicted,
            max_sessions = self.max,
            "session bindings full: least recently used bindings of the principals holding the most evicted (their clients get 404 and start a new session)"
        );
    }

    fn unbind(&self, id: &Digest32, owner: &Digest32) -> Result<(), Unavailable> {
        let mut map = self.map.write().map_err(|_| Unavailable)?;
        if map.sessions.get(id).is_some_and(|e| &e.owner == owner) {
            map.remove(id);
        }
        Ok(())
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.read().map(|m| m.sessions.len()).unwrap_or(0)
    }
}

enum Store {
    Memory(MemoryStore),
    #[cfg(feature = "redis")]
    Redis(Arc<redis_store::RedisStore>),
}

impl Store {
    /// The owner of `id`; `asking` is the principal that sent it (Redis refreshes its
    /// per-owner index entry when it is the owner).
    async fn owner_of(
        &self,
        id: &Digest32,
        asking: &Digest32,
    ) -> Result<Option<Digest32>, Unavailable> {
        match self {
            Self::Memory(m) => {
                let _ = asking;
                m.owner_of(id)
            }
            #[cfg(feature = "redis")]
            Self::Redis(r) => r.owner_of(id, asking).await,
        }
    }

    async fn bind(
        &self,
        id: Digest32,
        owner: Digest32,
        end: Option<Ending>,
    ) -> Result<bool, Unavailable> {
        match self {
            Self::Memory(m) => m.bind(id, owner, end),
            #[cfg(feature = "redis")]
            Self::Redis(r) => r.bind(&id, &owner, end).await,
        }
    }

    /// Ends the expired sessions (memory: removes them; Redis: claims those whose keys
    /// expired, each by one replica only).
    async fn sweep(&self) -> Result<usize, Unavailable> {
        match self {
            Self::Memory(m) => m.sweep(),
            #[cfg(feature = "redis")]
            Self::Redis(r) => r.sweep().await,
        }
    }

    async fn unbind(&self, id: &Digest32, owner: &Digest32) -> Result<(), Unavailable> {
        match self {
            Self::Memory(m) => m.unbind(id, owner),
            #[cfg(feature = "redis")]
            Self::Redis(r) => r.unbind(id, owner).await,
        }
    }
}

struct Shared {
    enabled: bool,
    store: Store,
    max_sessions: usize,
    max_per_principal: usize,
    idle: Duration,
    ender: Arc<Ender>,
    /// Whether the sweep of expired bindings runs.
    sweeping: std::sync::atomic::AtomicBool,
}

impl Shared {
    fn new(
        enabled: bool,
        store: Store,
        max: usize,
        per: usize,
        idle: Duration,
        ender: Arc<Ender>,
    ) -> Self {
        Self {
            enabled,
            store,
            max_sessions: max,
            max_per_principal: per,
            idle,
            ender,
            sweeping: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// How often expired bindings are swept: an eighth of the idle timeout, from 250 ms
    /// to 30 s.
    fn sweep_interval(&self) -> Duration {
        (self.idle / 8).clamp(Duration::from_millis(250), Duration::from_secs(30))
    }

    /// Starts the sweep on the current Tokio runtime, once (it ends when the last
    /// clone of the layer is dropped).
    fn start_sweep(self: &Arc<Self>) {
        if self.sweeping.load(Ordering::Relaxed) || self.sweeping.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            self.sweeping.store(false, Ordering::Release);
            return;
        };
        let weak: Weak<Self> = Arc::downgrade(self);
        let every = self.sweep_interval();
        handle.spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(shared) = weak.upgrade() else { break };
                match shared.store.sweep().await {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(ended = n, "idle sessions ended"),
                    Err(Unavailable) => {
                        tracing::debug!("session sweep skipped: store unavailable");
                    }
                }
            }
        });
    }
}

/// Binds MCP sessions to the principal that created them (see the [module
/// documentation](self)). Holds the shared store: clones share the bindings. The inner
/// service must be `Clone + Send` (axum's and hyper's are): the store is asked before and
/// after it runs. Needs the [`Principal`] of an authentication layer outside it (without
/// one, 500 and an error in the log); reads the JSON-RPC id from
/// [`McpRequest`] when a parse layer runs outside it, to echo it in refusals.
#[derive(Clone)]
pub struct SessionBindingLayer {
    shared: Arc<Shared>,
}

impl fmt::Debug for SessionBindingLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let backend = match &self.shared.store {
            Store::Memory(_) => "memory",
            #[cfg(feature = "redis")]
            Store::Redis(_) => "redis",
        };
        f.debug_struct("SessionBindingLayer")
            .field("enabled", &self.shared.enabled)
            .field("backend", &backend)
            .field("max_sessions", &self.shared.max_sessions)
            .field("max_sessions_per_principal", &self.shared.max_per_principal)
            .field("idle", &self.shared.idle)
            .field("ends_sessions", &self.shared.ender.on())
            .finish()
    }
}

impl Default for SessionBindingLayer {
    /// In memory, with the default limits.
    fn default() -> Self {
        Self::in_memory(
            DEFAULT_MAX_SESSIONS,
            Duration::from_secs(DEFAULT_IDLE_TIMEOUT_SECONDS),
        )
    }
}

impl SessionBindingLayer {
    /// Builds the layer; refuses an invalid configuration, naming the key
    /// (`sessions.maxSessions`, `sessions.maxSessionsPerPrincipal`, ...). With `redis`, no
    /// connection is made yet.
    pub fn new(cfg: &SessionConfig) -> Result<Self, ConfigError> {
        if !(1..=10_000_000).contains(&cfg.max_sessions) {
            return Err(ConfigError::invalid(
                "sessions.maxSessions",
                "must be 1 to 10000000",
            ));
        }
        if !(1..=1_000_000).contains(&cfg.max_sessions_per_principal) {
            return Err(ConfigError::invalid(
                "sessions.maxSessionsPerPrincipal",
                "must be 1 to 1000000",
            ));
        }
        if !(1..=7 * 86_400).contains(&cfg.idle_timeout_seconds) {
            return Err(ConfigError::invalid(
                "sessions.idleTimeoutSeconds",
                "must be 1 to 604800 seconds",
            ));
        }
        let idle = Duration::from_secs(cfg.idle_timeout_seconds);
        let ender = Arc::new(Ender::new(ended_queue(cfg.max_sessions)));
        let store = match &cfg.redis {
            None => Store::Memory(MemoryStore::new(
                cfg.max_sessions,
                cfg.max_sessions_per_principal,
                idle,
                ender.clone(),
            )),
            #[cfg(feature = "redis")]
            Some(r) => Store::Redis(Arc::new(redis_store::RedisStore::new(
                r,
                idle,
                cfg.max_sessions_per_principal,
                ender.clone(),
            )?)),
            #[cfg(not(feature = "redis"))]
            Some(_) => {
                return Err(ConfigError::invalid(
                    "sessions.redis",
                    "mcp-auth was built without its `redis` cargo feature",
                ));
            }
        };
        if !cfg.enabled {
            tracing::warn!(
                "session binding disabled: any authenticated principal holding a session id can use that session"
            );
        }
        Ok(Self {
            shared: Arc::new(Shared::new(
                cfg.enabled,
                store,
                cfg.max_sessions,
                cfg.max_sessions_per_principal,
                idle,
                ender,
            )),
        })
    }

    /// The sessions this layer ends from now on (evicted by `maxSessionsPerPrincipal` or
    /// `maxSessions`, expired after `idleTimeoutSeconds`), for the service that knows the
    /// upstream to send each a `DELETE` with its `Mcp-Session-Id`. The first call returns
    /// the receiver, later ones `None`. Until it is taken, the layer keeps only the hash
    /// of each id; from then on it also keeps ids of at most [`MAX_ENDED_ID_LEN`] bytes
    /// (with Redis, in the hash `prefix:ends`, so that any replica can end a session).
    /// Expired bindings are swept every eighth of the idle timeout (250 ms to 30 s) on
    /// the Tokio runtime that serves the first request. At most a queue (at least
    /// [`ENDED_QUEUE`], an eighth of `maxSessions` when that is more) of ended
    /// sessions wait; past that they are counted in [`ended_dropped`](Self::ended_dropped).
    pub fn ended_sessions(&self) -> Option<EndedSessions> {
        let rx = self.shared.ender.rx.lock().ok()?.take()?;
        self.shared.ender.on.store(true, Ordering::Relaxed);
        self.shared.start_sweep();
        Some(EndedSessions { rx })
    }

    /// Ended sessions not handed to [`EndedSessions`] because its queue was full.
    pub fn ended_dropped(&self) -> u64 {
        self.shared.ender.dropped.load(Ordering::Relaxed)
    }

    /// In memory, with these limits (`max_sessions` at least 1, `idle` at least 1 ms) and
    /// the default per-principal cap ([`DEFAULT_MAX_SESSIONS_PER_PRINCIPAL`]).
    pub fn in_memory(max_sessions: usize, idle: Duration) -> Self {
        Self::memory(max_sessions, DEFAULT_MAX_SESSIONS_PER_PRINCIPAL, idle)
    }

    fn memory(max_sessions: usize, per_principal: usize, idle: Duration) -> Self {
        let max_sessions = max_sessions.max(1);
        let per_principal = per_principal.max(1);
        let idle = idle.max(Duration::from_millis(1));
        let ender = Arc::new(Ender::new(ended_queue(max_sessions)));
        Self {
            shared: Arc::new(Shared::new(
                true,
                Store::Memory(MemoryStore::new(
                    max_sessions,
                    per_principal,
                    idle,
                    ender.clone(),
                )),
                max_sessions,
                per_principal,
                idle,
                ender,
            )),
        }
    }
}

impl<S> Layer<S> for SessionBindingLayer {
    type Service = SessionBinding<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SessionBinding {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service of [`SessionBindingLayer`].
#[derive(Clone)]
pub struct SessionBinding<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> fmt::Debug for SessionBinding<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionBinding").finish_non_exhaustive()
    }
}

/// The future of [`SessionBinding`].
pub type SessionFuture<R, E> = Pin<Box<dyn Future<Output = Result<R, E>> + Send>>;

fn refuse<B: From<Bytes>>(r: Rejection) -> Response<B> {
    r.into_response()
}

fn not_owned(id: Option<JsonRpcId>, detail: &'static str) -> Rejection {
    Rejection::new(RejectionReason::SessionNotOwned)
        .with_id(id)
        .with_detail(detail)
}

fn unavailable(id: Option<JsonRpcId>) -> Rejection {
    Rejection::new(RejectionReason::Unavailable)
        .with_id(id)
        .with_detail("session_store_unavailable")
        .with_header(RETRY_AFTER, "1")
}

impl<S, B, ResBody> Service<Request<B>> for SessionBinding<S>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
    ResBody: From<Bytes> + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = SessionFuture<Response<ResBody>, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        // The clone takes the place of the service that was polled ready.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let shared = self.shared.clone();
        Box::pin(async move {
            if !shared.enabled {
                return inner.call(req).await;
            }
            shared.start_sweep();
            let route = req.extensions().get::<SessionRoute>().map(|r| r.0.clone());
            let rpc_id = req
                .extensions()
                .get::<McpRequest>()
                .and_then(|m| m.id().cloned());
            let Some(principal) = req.extensions().get::<Principal>().cloned() else {
                tracing::error!(
                    "SessionBindingLayer found no Principal in the request: place it after the authentication layer"
                );
                return Ok(refuse(
                    Rejection::new(RejectionReason::Internal)
                        .with_id(rpc_id)
                        .with_detail("session_binding_without_principal"),
                ));
            };
            let owner = owner_key(&principal);
            let mut values = req.headers().get_all(MCP_SESSION_ID).iter();
            let sent = values
                .next()
                .map(|v| -> Digest32 { Sha256::digest(v.as_bytes()).into() });
            if values.next().is_some() {
                return Ok(refuse(
                    Rejection::new(RejectionReason::InvalidRequest)
                        .with_id(rpc_id)
                        .with_message("Bad Request: more than one Mcp-Session-Id header")
                        .with_detail("duplicate_mcp_session_id"),
                ));
            }
            if let Some(sid) = &sent {
                match shared.store.owner_of(sid, &owner).await {
                    Ok(Some(o)) if o == owner => {}
                    Ok(Some(_)) => {
                        tracing::warn!(
                            principal = principal.id(),
                            method = %principal.method(),
                            session = %short(sid),
                            "session used by a principal that did not create it: 404"
                        );
                        return Ok(refuse(not_owned(rpc_id, "other_principal")));
                    }
                    Ok(None) => {
                        tracing::debug!(session = %short(sid), "unknown session id: 404");
                        return Ok(refuse(not_owned(rpc_id, "unknown_session")));
                    }
                    Err(Unavailable) => return Ok(refuse(unavailable(rpc_id))),
                }
                if let Some(v) = req.headers_mut().get_mut(MCP_SESSION_ID) {
                    v.set_sensitive(true);
                }
            }
            let is_delete = req.method() == Method::DELETE;
            let mut resp = inner.call(req).await?;

            let mut issued = resp.headers().get_all(MCP_SESSION_ID).iter();
            let new = issued.next().map(|v| -> (Digest32, Option<Ending>) {
                (
                    Sha256::digest(v.as_bytes()).into(),
                    shared.ender.keep(v, route.as_ref()),
                )
            });
            if issued.next().is_some() {
                tracing::error!("the upstream sent more than one Mcp-Session-Id: 502");
                return Ok(refuse(
                    Rejection::new(RejectionReason::UpstreamError)
                        .with_id(rpc_id)
                        .with_detail("upstream_sent_several_session_ids"),
                ));
            }
            if let Some((new, end)) = new {
                if sent.as_ref() != Some(&new) {
                    match shared.store.bind(new, owner, end).await {
                        Ok(true) => {}
                        Ok(false) => {
                            tracing::error!(
                                session = %short(&new),
                                principal = principal.id(),
                                "the upstream issued a session id bound to another principal: 502"
                            );
                            return Ok(refuse(
                                Rejection::new(RejectionReason::UpstreamError)
                                    .with_id(rpc_id)
                                    .with_detail("upstream_session_id_owned_by_another_principal"),
                            ));
                        }
                        Err(Unavailable) => return Ok(refuse(unavailable(rpc_id))),
                    }
                }
                if let Some(v) = resp.headers_mut().get_mut(MCP_SESSION_ID) {
                    v.set_sensitive(true);
                }
            }
            if let Some(sid) = sent
                .as_ref()
                .filter(|_| is_delete && resp.status().is_success())
                && shared.store.unbind(sid, &owner).await.is_err()
            {
                tracing::warn!(
                    session = %short(sid),
                    "ended session's binding not removed (store unavailable); it expires when idle"
                );
            }
            Ok(resp)
        })
    }
}

#[cfg(feature = "redis")]
mod redis_store {
    //! Bindings in Redis, shared by replicas.

    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use mcp_core::breaker::{CircuitBreaker, Permit};
    use redis::aio::{ConnectionManager, ConnectionManagerConfig};

    use super::{Digest32, EndReason, Ender, Ending, SessionRedisConfig, Unavailable};
    use crate::error::ConfigError;

    /// KEYS: the binding, the asking principal's index, the idle index. ARGV: the idle
    /// timeout (ms), the asking principal, the id's hash. The owner; when it is the asking
    /// principal, the binding's TTL and its index entries (score: last refresh, Redis'
    /// clock in µs) are refreshed once an eighth of the timeout is spent (the indexes
    /// order bindings by use at that granularity, without a write per request).
    const LOOKUP_LUA: &str = r#"
local v = redis.call('GET', KEYS[1])
if not v then return false end
if v ~= ARGV[2] then return v end
local idle = tonumber(ARGV[1])
local ttl = redis.call('PTTL', KEYS[1])
if ttl >= 0 and (idle - ttl) * 8 >= idle then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  redis.call('PEXPIRE', KEYS[1], idle)
  redis.call('ZADD', KEYS[2], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[2], idle)
  redis.call('ZADD', KEYS[3], 'XX', now, ARGV[3])
end
return v
"#;

    /// KEYS: the binding, the owner's index (a sorted set of the owner's ids by last
    /// refresh), the idle index (every id by last refresh), the ends (id -> route and id,
    /// kept only to end sessions at the upstream). ARGV: the owner, the idle timeout
    /// (ms), the per-owner cap, the id's hash, the key prefix, what ends the session (or
    /// empty). `{status}` then what ends each of the owner's own bindings evicted to stay
    /// under its cap (expired owner-index entries are dropped first, left to the sweep,
    /// then the least recently refreshed): status 0 when bound to another owner, else 1.
    const BIND_LUA: &str = r#"
local idle = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local out = {'1'}
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', idle) then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - idle * 1000)
  local over = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[3]) + 1
  if over > 0 then
    local old = redis.call('ZPOPMIN', KEYS[2], over)
    for i = 1, #old, 2 do
      local k = ARGV[5] .. ':' .. old[i]
      if redis.call('GET', k) == ARGV[1] then
        redis.call('DEL', k)
        redis.call('ZREM', KEYS[3], old[i])
        local e = redis.call('HGET', KEYS[4], old[i])
        if e then
          redis.call('HDEL', KEYS[4], old[i])
          table.insert(out, e)
        end
      end
    end
  end
  if ARGV[6] ~= '' then redis.call('HSET', KEYS[4], ARGV[4], ARGV[6]) end
elseif redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], idle)
else
  return {'0'}
end
redis.call('ZADD', KEYS[2], now, ARGV[4])
redis.call('PEXPIRE', KEYS[2], idle)
redis.call('ZADD', KEYS[3], now, ARGV[4])
return out
"#;

    /// KEYS: the binding, the owner's index, the idle index, the ends. ARGV: the owner,
    /// the id's hash. Deletes the binding if it is this owner's (the client ended it).
    const UNBIND_LUA: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('ZREM', KEYS[2], ARGV[2])
  redis.call('ZREM', KEYS[3], ARGV[2])
  redis.call('HDEL', KEYS[4], ARGV[2])
  return redis.call('DEL', KEYS[1])
end
return 0
"#;

    /// KEYS: the idle index, the ends. ARGV: the idle timeout (ms), the key prefix, the
    /// most ids claimed per call. Claims the ids idle for the timeout whose binding key
    /// expired (one replica only: the script is atomic), returning what ends each; an id
    /// whose key lives on (refreshed) is re-scored.
    const SWEEP_LUA: &str = r#"
local idle = tonumber(ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local old = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - idle * 1000, 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for _, id in ipairs(old) do
  local ttl = redis.call('PTTL', ARGV[2] .. ':' .. id)
  if ttl > 0 then
    redis.call('ZADD', KEYS[1], now - (idle - ttl) * 1000, id)
  else
    redis.call('ZREM', KEYS[1], id)
    local e = redis.call('HGET', KEYS[2], id)
    if e then
      redis.call('HDEL', KEYS[2], id)
      table.insert(out, e)
    end
  end
end
return out
"#;

    /// How many expired ids one sweep call claims at most.
    const SWEEP_BATCH: usize = 512;

    pub(super) struct RedisStore {
        client: redis::Client,
        conn: Mutex<Option<ConnectionManager>>,
        connecting: AtomicBool,
        connected: tokio::sync::Notify,
        lookup: redis::Script,
        bind: redis::Script,
        unbind: redis::Script,
        sweep: redis::Script,
        prefix: String,
        ender: Arc<Ender>,
        timeout: Duration,
        idle_ms: u64,
        per_owner: usize,
        up: AtomicBool,
        breaker: CircuitBreaker,
    }

    impl RedisStore {
        pub(super) fn new(
            cfg: &SessionRedisConfig,
            idle: Duration,
            per_owner: usize,
            ender: Arc<Ender>,
        ) -> Result<Self, ConfigError> {
            if cfg.prefix.is_empty() || cfg.prefix.len() > 64 || cfg.prefix.contains(['{', '}']) {
                return Err(ConfigError::invalid(
                    "sessions.redis.prefix",
                    "must be 1 to 64 characters, without { or }",
                ));
            }
            if !(1..=60_000).contains(&cfg.timeout_ms) {
                return Err(ConfigError::invalid(
                    "sessions.redis.timeoutMs",
                    "must be 1 to 60000",
                ));
            }
            let breaker = CircuitBreaker::with_observer(cfg.breaker, |from, to| {
                tracing::debug!(%from, %to, "session store (redis) circuit breaker");
            })
            .map_err(|(key, rule)| {
                let key = match key {
                    "failure_threshold" => "failureThreshold",
                    "backoff_initial_ms" => "backoffInitialMs",
                    _ => "backoffMaxMs",
                };
                ConfigError::invalid(format!("sessions.redis.breaker.{key}"), rule)
            })?;
            let client = redis::Client::open(cfg.url.as_str()).map_err(|e| {
                // The error kind only: the message may repeat the URL and its password.
                ConfigError::invalid(
                    "sessions.redis.url",
                    format!("not a valid Redis URL ({:?})", e.kind()),
                )
            })?;
            Ok(Self {
                client,
                conn: Mutex::new(None),
                connecting: AtomicBool::new(false),
                connected: tokio::sync::Notify::new(),
                lookup: redis::Script::new(LOOKUP_LUA),
                bind: redis::Script::new(BIND_LUA),
                unbind: redis::Script::new(UNBIND_LUA),
                sweep: redis::Script::new(SWEEP_LUA),
                prefix: cfg.prefix.clone(),
                ender,
                timeout: Duration::from_millis(cfg.timeout_ms),
                idle_ms: u64::try_from(idle.as_millis()).unwrap_or(u64::MAX),
                per_owner,
                up: AtomicBool::new(true),
                breaker,
            })
        }

        fn key(&self, id: &Digest32) -> String {
            format!("{}:{}", self.prefix, hex::encode(id))
        }

        /// The owner's index: `prefix:owner:<owner hex>`, a sorted set of its ids' hashes.
        fn owner_index(&self, owner: &Digest32) -> String {
            format!("{}:owner:{}", self.prefix, hex::encode(owner))
        }

        /// The idle index: `prefix:idle`, every id's hash by last refresh.
        fn idle_index(&self) -> String {
            format!("{}:idle", self.prefix)
        }

        /// The ends: `prefix:ends`, id hash -> `route` LF `id` (only while sessions are
        /// ended at the upstream).
        fn ends(&self) -> String {
            format!("{}:ends", self.prefix)
        }

        /// Hands what ends a session (`route` LF `id`) to the ender.
        fn emit(&self, stored: &str, reason: EndReason) {
            let (route, id) = stored.split_once('\n').unwrap_or(("", stored));
            if let Ok(mut id) = http::HeaderValue::from_str(id) {
                id.set_sensitive(true);
                let route = (!route.is_empty()).then(|| Arc::from(route));
                self.ender.emit(Ending { id, route }, reason);
            }
        }

        /// Claims and ends the expired sessions (each by one replica).
        pub(super) async fn sweep(self: &Arc<Self>) -> Result<usize, Unavailable> {
            let mut total = 0;
            loop {
                let mut inv = self.sweep.prepare_invoke();
                inv.key(self.idle_index())
                    .key(self.ends())
                    .arg(self.idle_ms)
                    .arg(&self.prefix)
                    .arg(SWEEP_BATCH);
                let ended: Vec<String> = self.invoke(inv).await?;
                for e in &ended {
                    self.emit(e, EndReason::Idle);
                }
                total += ended.len();
                if ended.len() < SWEEP_BATCH {
                    return Ok(total);
                }
            }
        }

        fn current(&self) -> Option<ConnectionManager> {
            self.conn.lock().ok().and_then(|g| g.as_ref().cloned())
        }

        /// The connection; when there is none yet, starts connecting in the background
        /// and waits for it (the caller bounds the wait).
        async fn connection(self: &Arc<Self>) -> Option<ConnectionManager> {
            if let Some(c) = self.current() {
                return Some(c);
            }
            let notified = self.connected.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            self.spawn_connect();
            if let Some(c) = self.current() {
                return Some(c);
            }
            notified.await;
            self.current()
        }

        /// Connects in the background, one attempt at a time (the circuit breaker paces
        /// the requests that start them).
        fn spawn_connect(self: &Arc<Self>) {
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
                    // One attempt per reconnection: the breaker's probe that finds the last
                    // one failed starts the next at once (no back-off of up to a second).
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

        fn mark_down(&self, what: &str) {
            if self.up.swap(false, Ordering::AcqRel) {
                tracing::warn!(
                    error = what,
                    "session store (redis) unreachable: requests with a session id get 503 until it recovers"
                );
            }
        }

        fn mark_up(&self) {
            if !self.up.load(Ordering::Acquire) && !self.up.swap(true, Ordering::AcqRel) {
                tracing::info!("session store (redis) reachable again");
            }
        }

        /// Runs a script unless the circuit breaker is open (then `Unavailable` at once),
        /// within the call timeout, and tells the breaker how it went.
        async fn invoke<T: redis::FromRedisValue>(
            self: &Arc<Self>,
            inv: redis::ScriptInvocation<'_>,
        ) -> Result<T, Unavailable> {
            let call = match self.breaker.acquire() {
                Permit::Call(c) | Permit::Probe(c) => c,
                Permit::Skip => return Err(Unavailable),
            };
            let attempt = async {
                let Some(mut conn) = self.connection().await else {
                    return Err("no connection".to_owned());
                };
                match inv.invoke_async(&mut conn).await {
                    // Refused by the last failed reconnection: nothing was sent, and that
                    // error started the next attempt; one more try waits for it.
                    Err(e) if e.is_connection_refusal() => inv.invoke_async(&mut conn).await,
                    other => other,
                }
                .map_err(|e| format!("{:?}", e.kind()))
            };
            match tokio::time::timeout(self.timeout, attempt).await {
                Ok(Ok(v)) => {
                    call.success();
                    self.mark_up();
                    Ok(v)
                }
                Ok(Err(what)) => {
                    call.failure();
                    self.mark_down(&what);
                    Err(Unavailable)
                }
                Err(_) => {
                    call.failure();
                    self.mark_down("timed out");
                    Err(Unavailable)
                }
            }
        }

        pub(super) async fn owner_of(
            self: &Arc<Self>,
            id: &Digest32,
            asking: &Digest32,
        ) -> Result<Option<Digest32>, Unavailable> {
            let mut inv = self.lookup.prepare_invoke();
            inv.key(self.key(id))
                .key(self.owner_index(asking))
                .key(self.idle_index())
                .arg(self.idle_ms)
                .arg(hex::encode(asking))
                .arg(hex::encode(id));
            let v: Option<String> = self.invoke(inv).await?;
            Ok(v.and_then(|s| {
                let mut out = [0u8; 32];
                hex::decode_to_slice(s, &mut out).ok().map(|()| out)
            }))
        }

        pub(super) async fn bind(
            self: &Arc<Self>,
            id: &Digest32,
            owner: &Digest32,
            end: Option<Ending>,
        ) -> Result<bool, Unavailable> {
            let end = end
                .map(|e| {
                    let id = String::from_utf8_lossy(e.id.as_bytes()).into_owned();
                    let route = e.route.as_deref().unwrap_or("").replace('\n', " ");
                    format!("{route}\n{id}")
                })
                .unwrap_or_default();
            let mut inv = self.bind.prepare_invoke();
            inv.key(self.key(id))
                .key(self.owner_index(owner))
                .key(self.idle_index())
                .key(self.ends())
                .arg(hex::encode(owner))
                .arg(self.idle_ms)
                .arg(self.per_owner)
                .arg(hex::encode(id))
                .arg(&self.prefix)
                .arg(end);
            let v: Vec<String> = self.invoke(inv).await?;
            let bound = v.first().is_some_and(|s| s == "1");
            if v.len() > 1 {
                tracing::debug!(
                    evicted = v.len() - 1,
                    max_sessions_per_principal = self.per_owner,
                    "a principal at its session cap: its least recently used binding evicted"
                );
            }
            for e in v.iter().skip(1) {
                self.emit(e, EndReason::PrincipalCap);
            }
            Ok(bound)
        }

        pub(super) async fn unbind(
            self: &Arc<Self>,
            id: &Digest32,
            owner: &Digest32,
        ) -> Result<(), Unavailable> {
            let mut inv = self.unbind.prepare_invoke();
            inv.key(self.key(id))
                .key(self.owner_index(owner))
                .key(self.idle_index())
                .key(self.ends())
                .arg(hex::encode(owner))
                .arg(hex::encode(id));
            let _: i64 = self.invoke(inv).await?;
            Ok(())
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use mcp_core::AuthMethod;

    fn d(n: u8) -> Digest32 {
        [n; 32]
    }

    /// An ender nobody listens to.
    fn off() -> Arc<Ender> {
        Arc::new(Ender::new(ENDED_QUEUE))
    }

    /// An ender listened to, and its receiver.
    fn on() -> (Arc<Ender>, tokio::sync::mpsc::Receiver<EndedSession>) {
        let e = Ender::new(ENDED_QUEUE);
        let rx = e.rx.lock().unwrap().take().unwrap();
        e.on.store(true, Ordering::Relaxed);
        (Arc::new(e), rx)
    }

    fn ending(s: &Ender, id: &str) -> Option<Ending> {
        s.keep(&http::HeaderValue::from_str(id).unwrap(), None)
    }

    fn drain(rx: &mut tokio::sync::mpsc::Receiver<EndedSession>) -> Vec<(String, EndReason)> {
        let mut v = Vec::new();
        while let Ok(e) = rx.try_recv() {
            v.push((e.session_id().to_str().unwrap().to_owned(), e.reason()));
        }
        v
    }

    #[tokio::test(start_paused = true)]
    async fn evicted_and_expired_sessions_are_handed_over_to_be_ended() {
        let (ender, mut rx) = on();
        let s = MemoryStore::new(6, 3, Duration::from_secs(60), ender.clone());
        let (alice, bob) = (d(200), d(201));
        assert!(s.bind(d(1), alice, ending(&ender, "alice-1")).unwrap());
        for i in 10..13u8 {
            assert!(
                s.bind(d(i), bob, ending(&ender, &format!("bob-{i}")))
                    .unwrap()
            );
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        assert!(drain(&mut rx).is_empty());
        // Bob's fourth: his least recently used is ended, not Alice's.
        assert!(s.bind(d(13), bob, ending(&ender, "bob-13")).unwrap());
        assert_eq!(
            drain(&mut rx),
            vec![("bob-10".into(), EndReason::PrincipalCap)]
        );
        // A full store (6): the owner holding the most (Bob) loses its least recently used.
        let carol = d(202);
        for i in 20..22u8 {
            assert!(
                s.bind(d(i), carol, ending(&ender, &format!("carol-{i}")))
                    .unwrap()
            );
        }
        assert!(drain(&mut rx).is_empty());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(s.bind(d(30), d(203), ending(&ender, "dave")).unwrap());
        assert_eq!(
            drain(&mut rx),
            vec![("bob-11".into(), EndReason::StoreFull)]
        );
        // Idle: the sweep ends what expired, and only that.
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(s.owner_of(&d(13)).unwrap().is_some());
        tokio::time::advance(Duration::from_secs(31)).await;
        let n = s.sweep().unwrap();
        let got = drain(&mut rx);
        assert_eq!(n, 5, "{got:?}");
        assert_eq!(got.len(), 5, "{got:?}");
        assert_eq!(s.len(), 1);
        assert!(got.iter().all(|(_, r)| *r == EndReason::Idle), "{got:?}");
        let ids: Vec<&str> = got.iter().map(|(i, _)| i.as_str()).collect();
        for gone in ["alice-1", "bob-12", "carol-20", "carol-21", "dave"] {
            assert!(ids.contains(&gone), "{gone}: {got:?}");
        }
        assert!(!ids.contains(&"bob-13"), "used 31 s ago: kept");
        assert_eq!(s.owner_of(&d(13)).unwrap(), Some(bob));
        assert_eq!(s.sweep().unwrap(), 0, "nothing left to end");
        // A client's own DELETE (unbind) is not handed over.
        s.unbind(&d(13), &bob).unwrap();
        tokio::time::advance(Duration::from_secs(120)).await;
        s.sweep().unwrap();
        assert!(drain(&mut rx).iter().all(|(i, _)| i != "bob-13"));
    }

    #[test]
    fn ids_are_kept_only_when_someone_ends_them_and_only_short_ones() {
        let e = Ender::new(ENDED_QUEUE);
        assert!(ending(&e, "abc").is_none(), "nobody listens: hash only");
        let (e, _rx) = on();
        let kept = ending(&e, "abc").unwrap();
        assert!(kept.id.is_sensitive());
        let long = "x".repeat(MAX_ENDED_ID_LEN + 1);
        assert!(ending(&e, &long).is_none());
        assert!(ending(&e, &long[1..]).is_some());
        let shown = format!(
            "{:?}",
            EndedSession {
                id: kept.id,
                route: None,
                reason: EndReason::Idle
            }
        );
        assert!(
            !shown.contains("abc") && shown.contains("sha256:"),
            "{shown}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_is_counted_not_blocking() {
        let (ender, _rx) = on();
        let s = MemoryStore::new(100_000, 1, Duration::from_secs(60), ender.clone());
        for i in 0..(ENDED_QUEUE as u32 + 10) {
            let mut id = [0u8; 32];
            id[..4].copy_from_slice(&i.to_be_bytes());
            assert!(s.bind(id, d(1), ending(&ender, &format!("s{i}"))).unwrap());
        }
        assert_eq!(ender.dropped.load(Ordering::Relaxed), 9);
        // The queue holds twice what one eviction of a full store ends, within bounds.
        assert_eq!(ended_queue(100), ENDED_QUEUE);
        assert_eq!(ended_queue(DEFAULT_MAX_SESSIONS), 12_500);
        assert!(ended_queue(DEFAULT_MAX_SESSIONS) >= 2 * (DEFAULT_MAX_SESSIONS / 16));
        assert_eq!(ended_queue(10_000_000), 65_536);
    }

    #[test]
    fn owners_are_namespaced_by_method_and_issuer() {
        let api = Principal::new("bob", AuthMethod::ApiKey);
        let basic = Principal::new("bob", AuthMethod::Basic);
        assert_ne!(owner_key(&api), owner_key(&basic));
        assert_eq!(
            owner_key(&api),
            owner_key(&Principal::new("bob", AuthMethod::ApiKey))
        );
        let jwt = |iss: &str| Principal::new("bob", AuthMethod::Jwt).with_issuer(iss);
        assert_ne!(owner_key(&jwt("https://a")), owner_key(&jwt("https://b")));
        assert_eq!(owner_key(&jwt("https://a")), owner_key(&jwt("https://a")));
        // No ambiguity between issuer and id.
        let p1 = Principal::new("yz", AuthMethod::Jwt).with_issuer("x#");
        let p2 = Principal::new("z", AuthMethod::Jwt).with_issuer("x#y");
        assert_ne!(owner_key(&p1), owner_key(&p2));
        // A token's own `iss` claim does not pick the owner: the configured issuer does.
        let mut c = serde_json::Map::new();
        c.insert("iss".into(), "https://b".into());
        assert_eq!(
            owner_key(&jwt("https://a").with_claims(c)),
            owner_key(&jwt("https://a"))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn bindings_expire_when_idle_and_use_refreshes_them() {
        let s = MemoryStore::new(10, 10, Duration::from_secs(60), off());
        assert!(s.bind(d(1), d(9), None).unwrap());
        tokio::time::advance(Duration::from_secs(50)).await;
        assert_eq!(s.owner_of(&d(1)).unwrap(), Some(d(9)), "alive, refreshed");
        tokio::time::advance(Duration::from_secs(50)).await;
        assert_eq!(
            s.owner_of(&d(1)).unwrap(),
            Some(d(9)),
            "the use refreshed it"
        );
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(s.owner_of(&d(1)).unwrap(), None, "expired");
        // An expired binding does not block a new one.
        assert!(s.bind(d(1), d(8), None).unwrap());
        assert_eq!(s.owner_of(&d(1)).unwrap(), Some(d(8)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_live_binding_is_never_taken_over() {
        let s = MemoryStore::new(10, 10, Duration::from_secs(60), off());
        assert!(s.bind(d(1), d(9), None).unwrap());
        assert!(!s.bind(d(1), d(8), None).unwrap());
        assert!(s.bind(d(1), d(9), None).unwrap(), "the owner again");
        assert_eq!(s.owner_of(&d(1)).unwrap(), Some(d(9)));
        s.unbind(&d(1), &d(8)).unwrap();
        assert_eq!(
            s.owner_of(&d(1)).unwrap(),
            Some(d(9)),
            "only the owner unbinds"
        );
        s.unbind(&d(1), &d(9)).unwrap();
        assert_eq!(s.owner_of(&d(1)).unwrap(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_store_evicts_expired_bindings_first_then_the_least_recently_used() {
        let s = MemoryStore::new(4, 4, Duration::from_secs(60), off());
        for i in 1..=4 {
            assert!(s.bind(d(i), d(100), None).unwrap());
            tokio::time::advance(Duration::from_secs(2)).await;
        }
        // 1 is used again: 2 is now the least recently used.
        assert!(s.owner_of(&d(1)).unwrap().is_some());
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(s.bind(d(5), d(100), None).unwrap());
        assert_eq!(s.len(), 4);
        assert!(
            s.owner_of(&d(2)).unwrap().is_none(),
            "least recently used evicted"
        );
        for i in [1, 3, 4, 5] {
            assert!(s.owner_of(&d(i)).unwrap().is_some(), "{i} kept");
        }
        // Expired bindings go before live ones, however recently the live ones were used.
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(s.owner_of(&d(5)).unwrap().is_some());
        tokio::time::advance(Duration::from_secs(2)).await;
        // 1, 3, 4 are now idle for more than 60 s; 5 is not.
        assert!(s.bind(d(6), d(100), None).unwrap());
        assert_eq!(s.len(), 2, "expired bindings swept");
        assert!(s.owner_of(&d(5)).unwrap().is_some());
        assert!(s.owner_of(&d(6)).unwrap().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn memory_stays_bounded_under_a_flood_of_sessions() {
        let s = MemoryStore::new(64, 64, Duration::from_secs(3600), off());
        for i in 0..10_000u32 {
            let mut id = [0u8; 32];
            id[..4].copy_from_slice(&i.to_be_bytes());
            assert!(s.bind(id, d(1), None).unwrap());
            assert!(s.len() <= 64);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_owner_at_its_cap_loses_its_own_least_recently_used_binding() {
        let s = MemoryStore::new(100, 3, Duration::from_secs(60), off());
        let (alice, bob) = (d(200), d(201));
        assert!(s.bind(d(1), alice, None).unwrap());
        for i in 10..13 {
            assert!(s.bind(d(i), bob, None).unwrap());
            tokio::time::advance(Duration::from_secs(2)).await;
        }
        // 10 is used again: 11 is Bob's least recently used.
        assert!(s.owner_of(&d(10)).unwrap().is_some());
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(s.bind(d(13), bob, None).unwrap());
        assert_eq!(s.owner_of(&d(11)).unwrap(), None, "Bob's LRU evicted");
        for i in [10, 12, 13] {
            assert_eq!(s.owner_of(&d(i)).unwrap(), Some(bob));
        }
        // A flood of Bob's never touches Alice's, nor holds more than 3 of his.
        for i in 20..120 {
            assert!(s.bind(d(i), bob, None).unwrap());
            assert!(s.len() <= 4);
            tokio::time::advance(Duration::from_millis(10)).await;
        }
        assert_eq!(s.owner_of(&d(1)).unwrap(), Some(alice));
        assert_eq!(s.len(), 4);
        // Rebinding an id the owner already holds is not a new binding.
        assert!(s.bind(d(119), bob, None).unwrap());
        assert_eq!(s.owner_of(&d(118)).unwrap(), Some(bob));
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_store_evicts_from_the_owner_holding_the_most() {
        // 16 places, caps high enough not to act: the global eviction must be fair.
        let s = MemoryStore::new(16, 16, Duration::from_secs(3600), off());
        let (alice, carol, bob) = (d(200), d(202), d(201));
        assert!(s.bind(d(1), alice, None).unwrap());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(s.bind(d(2), carol, None).unwrap());
        assert!(s.bind(d(3), carol, None).unwrap());
        tokio::time::advance(Duration::from_secs(1)).await;
        for i in 0..200u8 {
            let mut id = [7u8; 32];
            id[0] = i;
            assert!(s.bind(id, bob, None).unwrap());
            tokio::time::advance(Duration::from_millis(10)).await;
            assert!(s.len() <= 16);
        }
        // Alice's and Carol's bindings are older than every one of Bob's, and kept.
        assert_eq!(s.owner_of(&d(1)).unwrap(), Some(alice));
        assert_eq!(s.owner_of(&d(2)).unwrap(), Some(carol));
        assert_eq!(s.owner_of(&d(3)).unwrap(), Some(carol));
        // When owners hold equal shares, the oldest binding goes first.
        let s = MemoryStore::new(2, 16, Duration::from_secs(3600), off());
        assert!(s.bind(d(1), alice, None).unwrap());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(s.bind(d(2), bob, None).unwrap());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(s.bind(d(3), carol, None).unwrap());
        assert_eq!(s.owner_of(&d(1)).unwrap(), None);
        assert_eq!(s.owner_of(&d(2)).unwrap(), Some(bob));
    }

    #[test]
    fn configuration_errors_name_the_key() {
        let e = SessionBindingLayer::new(&SessionConfig::default().max_sessions(0)).unwrap_err();
        assert_eq!(e.key(), "sessions.maxSessions");
        let e = SessionBindingLayer::new(&SessionConfig::default().idle_timeout_seconds(0))
            .unwrap_err();
        assert_eq!(e.key(), "sessions.idleTimeoutSeconds");
        let e = SessionBindingLayer::new(&SessionConfig::default().max_sessions_per_principal(0))
            .unwrap_err();
        assert_eq!(e.key(), "sessions.maxSessionsPerPrincipal");
    }

    #[test]
    fn the_redis_url_password_is_not_shown() {
        let r = SessionRedisConfig::new("redis://:s3cret@127.0.0.1:6379/0");
        let dbg = format!("{r:?}");
        assert!(
            !dbg.contains("s3cret") && dbg.contains("127.0.0.1"),
            "{dbg}"
        );
    }
}
