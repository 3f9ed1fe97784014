//! The accept loop: TCP (or TLS over TCP) to HTTP/1.1 and HTTP/2 for any tower or hyper
//! service, axum's `Router` included.
//!
//! Each request carries the connection's [`PeerAddr`] and, over TLS, its [`TlsInfo`] in
//! its extensions. The loop caps concurrent connections (a semaphore: beyond the cap,
//! the loop holds one accepted connection until a place is free and stops accepting, so
//! the rest wait in the kernel's listen backlog) and connections per client address
//! (beyond it, a new connection is closed at accept), bounds the TLS handshake in time,
//! closes connections that stay idle (no request in progress, the first included) past
//! the idle timeout, and on shutdown stops accepting, asks every connection to finish (HTTP/1.1 closes
//! after the response in flight, HTTP/2 sends GOAWAY) and waits for them up to the drain
//! timeout.
//!
//! Slow readers: a response that waits to be written with no progress for the write
//! timeout closes its connection, whatever its requests in progress; over HTTP/2, a
//! stream's response that waits for the stream write timeout
//! ([`ServerOptions::stream_write_timeout`], by default the write timeout) has that
//! stream alone reset (`RST_STREAM` `CANCEL`), its memory freed, while the connection
//! and its other streams go on. Progress is counted per response, on its body: each
//! piece of body (a frame of at most 16 KiB) handed to hyper starts a clock that only the
//! peer taking that piece stops (HTTP/1.1: hyper's write buffer has room for the next;
//! HTTP/2: the piece fits in the peer's stream and connection windows). Nothing else the
//! connection writes counts: not the PING, SETTINGS or WINDOW_UPDATE frames a peer can
//! have answered at will, not another HTTP/2 stream that flows while this one is held. A
//! write the peer does not take at all (it stopped reading: the socket's buffers are
//! full) is a wait of its own, which closes the connection. So a peer must take at least
//! one piece of each response within every write timeout (16 KiB per 30 s, about 550
//! bytes a second, with the defaults; a window opened one byte at a time never gets
//! there). A response with nothing to send (a quiet SSE stream) does not wait. This
//! holds for HTTP/1.1, HTTP/2, plain and TLS alike. A connection serves at most
//! [`ServerOptions::max_requests_per_connection`] requests, and an HTTP/2 connection at
//! most [`ServerOptions::max_concurrent_streams`] (default 16) at once.
//!
//! Memory: each connection has a budget ([`ServerOptions::connection_memory_bytes`],
//! default 8 MiB) of the request body bytes its requests in progress have read (the
//! service gets a [`RequestBody`], hyper's `Incoming` with its bytes counted; they count
//! until the response ends) and the response bytes the loop holds for them. While it is
//! used up, a new HTTP/2 stream is refused (`RST_STREAM` `REFUSED_STREAM`, which clients
//! retry) before the service sees it, and a request body read that would go over it fails
//! with [`MemoryBudgetExceeded`]. The same bytes count against a budget of the client
//! address over all its connections ([`ServerOptions::client_memory_bytes`], default
//! 64 MiB; none for exempt peers), with the same refusals. hyper's HTTP/2 buffers are
//! bounded too: 64 KiB of response data queued per stream, 1 MiB stream and connection
//! receive windows (request bytes a peer can send before the service reads them), 16 KiB
//! frames, 16 KiB of request headers.
//!
//! Refusals: a response that leaves its request body unread (a layer refused the request
//! before reading it) does not cost an HTTP/1.x client its next request. The loop reads
//! and discards the rest of the body, at most [`ServerOptions::refusal_drain_bytes`]
//! (default 64 KiB) within [`ServerOptions::refusal_drain_timeout`] (default 1 s), before
//! it writes the response, so the connection stays usable; a larger, slower or broken
//! body, or an `Expect: 100-continue` body nobody asked for, gets `Connection: close` on
//! the response instead (RFC 9112 section 9.6). See [`mcp_core::DrainLayer`], which
//! does the same for any other server. A connection hyper closes (its write side shut)
//! is then read from, what comes discarded, for up to the same timeout and 1 MiB before
//! the socket closes (a lingering close): closing with unread bytes makes the kernel
//! reset the connection, and a client still writing a refused body would meet the
//! reset instead of reading the refusal. The connection keeps its places meanwhile.
//!
//! The layers learn what the loop did: every request carries its connection's
//! [`mcp_core::ConnectionEvents`] (an HTTP/2 request, events of its own, to which the
//! connection's are passed on), on which the loop notes each completed flush (what the
//! connection was handed is written) and, before dropping a connection it closed for the
//! write timeout, or an HTTP/2 stream it reset for it,
//! [`mcp_core::CloseReason::WriteTimeout`]; an audit layer thus records a response cut
//! by the write timeout as cut, even when its body had ended in the write buffers. A [`ConnectionLimit::observer`] is told of each connection refused over the
//! per-client cap.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use axum::{Router, routing::get, Extension};
//! use mcp_core::TlsInfo;
//! use mcp_tls::{Server, TlsAcceptor, TlsConfig};
//!
//! async fn whoami(Extension(tls): Extension<TlsInfo>) -> String {
//!     format!("{:?}", tls.client.as_ref().and_then(|c| c.common_name.clone()))
//! }
//!
//! let acceptor = TlsAcceptor::from_config(&TlsConfig::new("server.pem", "server.key"))?;
//! let _reload = acceptor.spawn_reloader()?;
//! let listener = tokio::net::TcpListener::bind("0.0.0.0:8443").await?;
//! let app = Router::new().route("/whoami", get(whoami));
//! Server::new(listener)
//!     .tls(acceptor)
//!     .with_graceful_shutdown(async { let _ = tokio::signal::ctrl_c().await; })
//!     .serve(app)
//!     .await?;
//! # Ok(()) }
//! ```

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime};

use bytes::{Buf, Bytes};
use futures_util::task::AtomicWaker;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use mcp_core::{
    CloseReason, ConnectionEvents, ConnectionObserver, ConnectionRefusal, Drain, DrainBody,
    DrainLayer, PeerAddr, RefusalReason, TlsInfo, TrustedProxies,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;
use tower_service::Service;

use crate::acceptor::{ClientCertCheck, TlsAcceptor};
use crate::config::{
    MAX_CONNECTION_MEMORY_BYTES, MAX_REFUSAL_DRAIN_BYTES, MAX_REFUSAL_DRAIN_TIMEOUT,
    MIN_CONNECTION_MEMORY_BYTES, ServerOptions,
};
use crate::hello::{Recorded, SniKind, sni_kind};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type ShutdownSignal = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Wraps a per-connection service to put the connection's [`PeerAddr`] and (over TLS)
/// [`TlsInfo`] into every request's extensions.
///
/// With [`client_cert_expires_at`](Self::client_cert_expires_at) set, the client
/// certificate's end of validity is checked on every request: from that moment on, the
/// [`TlsInfo`] attached has no client identity. With
/// [`client_cert_check`](Self::client_cert_check) set, so is the client trust: after a
/// reload of the CA bundle or CRLs that no longer admits the chain, likewise.
#[derive(Clone)]
pub struct ConnectionInfo<S> {
    inner: S,
    peer: PeerAddr,
    tls: Option<TlsInfo>,
    client_expires_at: Option<SystemTime>,
    client_check: Option<ClientCertCheck>,
}

impl<S> ConnectionInfo<S> {
    /// Wraps `inner` for a connection from `peer`, with its TLS facts if any.
    pub fn new(inner: S, peer: SocketAddr, tls: Option<TlsInfo>) -> Self {
        Self {
            inner,
            peer: PeerAddr(peer),
            tls,
            client_expires_at: None,
            client_check: None,
        }
    }

    /// The connection's [`ClientCertCheck`] ([`TlsAcceptor::accept_checked`]): requests
    /// that arrive once a reload of the client trust refuses the chain carry
    /// [`TlsInfo`] without the client identity.
    pub fn client_cert_check(mut self, check: Option<ClientCertCheck>) -> Self {
        self.client_check = check;
        self
    }

    /// The moment the connection's client certificate chain stops being valid
    /// ([`crate::client_cert_expires_at`]): requests that arrive from then on carry
    /// [`TlsInfo`] without the client identity, so no layer authenticates them as it.
    pub fn client_cert_expires_at(mut self, at: Option<SystemTime>) -> Self {
        self.client_expires_at = at;
        self
    }
}

impl<S: fmt::Debug> fmt::Debug for ConnectionInfo<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionInfo")
            .field("inner", &self.inner)
            .field("peer", &self.peer)
            .field("tls", &self.tls)
            .field("client_expires_at", &self.client_expires_at)
            .field("client_check", &self.client_check)
            .finish()
    }
}

impl<S, B> Service<Request<B>> for ConnectionInfo<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        req.extensions_mut().insert(self.peer);
        if let Some(tls) = &self.tls {
            let mut tls = tls.clone();
            if tls.client.is_some()
                && self
                    .client_expires_at
                    .is_some_and(|end| SystemTime::now() >= end)
            {
                tracing::debug!("client certificate expired: request without its identity");
                tls.client = None;
            }
            if tls.client.is_some() && self.client_check.as_ref().is_some_and(|c| !c.passes()) {
                tracing::debug!(
                    "client certificate refused by the reloaded trust: request without its identity"
                );
                tls.client = None;
            }
            req.extensions_mut().insert(tls);
        }
        self.inner.call(req)
    }
}

/// A cap on open connections that several [`Server`]s share.
///
/// A multi-threaded service can run one accept loop per thread, each on its own
/// current-thread runtime and on a socket of its own (an `SO_REUSEPORT` group) or a clone
/// of one listening socket; giving every loop the same `ConnectionLimit` keeps `max` a
/// limit for the whole process rather than per loop. A loop takes a permit for each
/// connection it accepts, before serving it (and before the TLS handshake), and holds
/// none while it waits for connections. At the limit, each loop holds at most one accepted
/// connection waiting for a permit and stops accepting, so the rest wait in the kernel's
/// listen backlog. On shutdown each loop drains its own connections.
///
/// ```
/// use mcp_tls::{ConnectionLimit, Server};
///
/// # async fn run(a: tokio::net::TcpListener, b: tokio::net::TcpListener) {
/// let limit = ConnectionLimit::new(10_000);
/// let first = Server::new(a).connection_limit(limit.clone());
/// let second = Server::new(b).connection_limit(limit);
/// # let _ = (first, second);
/// # }
/// ```
#[derive(Clone)]
pub struct ConnectionLimit {
    permits: Arc<Semaphore>,
    max: usize,
    per_client: usize,
    ipv6_prefix: u8,
    exempt: Arc<TrustedProxies>,
    clients: Arc<Mutex<HashMap<IpAddr, ClientEntry>>>,
    client_memory: u64,
    counters: Arc<Counters>,
    observer: Option<Arc<dyn ConnectionObserver>>,
}

/// Counts of what the accept loops sharing a [`ConnectionLimit`] did.
#[derive(Default)]
struct Counters {
    accepted: AtomicU64,
    handshake_failed: AtomicU64,
    handshake_timed_out: AtomicU64,
    idle_closed: AtomicU64,
    write_timed_out: AtomicU64,
    streams_write_timed_out: AtomicU64,
    per_client_refused: AtomicU64,
    streams_refused_over_budget: AtomicU64,
    request_bodies_over_budget: AtomicU64,
    sni_ip_address: AtomicU64,
    sni_invalid: AtomicU64,
    /// Milliseconds since the Unix epoch of the last refusal logged at `warn`.
    refusal_warned_ms: AtomicU64,
    /// Milliseconds since the Unix epoch of the last ignored SNI logged.
    sni_logged_ms: AtomicU64,
}

impl Counters {
    fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// What the accept loops sharing a [`ConnectionLimit`] have seen since it was made, for
/// metrics ([`ConnectionLimit::stats`]). Counters only grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionStats {
    /// Connections open now (each holds a place from its accept until it closes, its
    /// TLS handshake included).
    pub open: usize,
    /// The limit.
    pub max: usize,
    /// The limit per client address.
    pub max_per_client: usize,
    /// Connections accepted (given a place).
    pub accepted: u64,
    /// TLS handshakes that failed (a plain-text client, no common version or cipher
    /// suite, a rejected client certificate, ...).
    pub tls_handshake_failed: u64,
    /// TLS handshakes not completed within the handshake timeout.
    pub tls_handshake_timed_out: u64,
    /// Connections closed because they had no request in progress for the idle timeout.
    pub idle_closed: u64,
    /// Connections closed because a response waited longer than the write timeout with
    /// no write progress (the peer stopped reading).
    pub write_timed_out: u64,
    /// HTTP/2 streams reset (`RST_STREAM` `CANCEL`) because their response waited longer
    /// than the stream write timeout with no write progress
    /// ([`ServerOptions::stream_write_timeout`]); their connection went on.
    pub streams_write_timed_out: u64,
    /// Connections closed at accept because their client address had
    /// [`max_per_client`](Self::max_per_client) open already.
    pub per_client_refused: u64,
    /// HTTP/2 streams refused (`REFUSED_STREAM`) because their connection's memory
    /// budget, or their client address's, was used up
    /// ([`ServerOptions::connection_memory_bytes`], [`ServerOptions::client_memory_bytes`]).
    pub streams_refused_over_budget: u64,
    /// Request body reads failed because they would have gone over their connection's
    /// memory budget or their client address's.
    pub request_bodies_over_budget: u64,
    /// TLS handshakes whose client sent an IP address as its server name (SNI), which
    /// TLS forbids: the name was ignored, as if the client had sent none. Logged at
    /// most once a minute (`info`), with these counts.
    pub tls_sni_ip_address: u64,
    /// TLS handshakes whose client sent a server name that is not a DNS name: ignored.
    pub tls_sni_invalid: u64,
}

impl ConnectionLimit {
    /// A limit of `max` open connections (clamped to 1..=536,870,911), and of 64 per
    /// client address (IPv6 by /64), no peer exempt.
    pub fn new(max: usize) -> Self {
        let max = max.clamp(1, MAX_PERMITS);
        let defaults = ServerOptions::default();
        Self {
            permits: Arc::new(Semaphore::new(max)),
            max,
            per_client: defaults.max_connections_per_client,
            ipv6_prefix: defaults.client_ipv6_prefix,
            exempt: Arc::new(TrustedProxies::none()),
            clients: Arc::default(),
            client_memory: defaults.client_memory_bytes,
            counters: Arc::default(),
            observer: None,
        }
    }

    /// The limits of `options`: `max_connections`, `max_connections_per_client`,
    /// `client_ipv6_prefix`.
    pub fn from_options(options: &ServerOptions) -> Self {
        Self::new(options.max_connections)
            .per_client(options.max_connections_per_client)
            .client_ipv6_prefix(options.client_ipv6_prefix)
            .per_client_memory(options.client_memory_bytes)
    }

    /// Memory budget of one client address in bytes, over all its connections (clamped
    /// to 64 KiB ..= 1 TiB; default 64 MiB): see [`ServerOptions::client_memory_bytes`].
    /// Exempt peers have none. Set before the limit is cloned and shared.
    pub fn per_client_memory(mut self, max: u64) -> Self {
        self.client_memory = max.clamp(MIN_CONNECTION_MEMORY_BYTES, MAX_CONNECTION_MEMORY_BYTES);
        self
    }

    /// Most connections open at once from one client address (clamped to at least 1),
    /// counted on the peer address. Set before the limit is cloned and shared.
    pub fn per_client(mut self, max: usize) -> Self {
        self.per_client = max.clamp(1, MAX_PERMITS);
        self
    }

    /// The prefix length by which IPv6 peers are counted ([`mcp_core::ip_key`]; at most
    /// 128, default 64). Set before the limit is cloned and shared.
    pub fn client_ipv6_prefix(mut self, len: u8) -> Self {
        self.ipv6_prefix = len.min(128);
        self
    }

    /// Peers not counted per client address (they still count against the limit):
    /// trusted proxies, which carry many clients on their own address and should limit
    /// each of them themselves. Set before the limit is cloned and shared.
    ///
    /// ```
    /// use mcp_core::TrustedProxies;
    /// let proxies = TrustedProxies::new(["10.0.0.0/8".parse().unwrap()]);
    /// let limit = mcp_tls::ConnectionLimit::new(10_000).per_client(32).exempt(proxies);
    /// assert_eq!(limit.stats().max_per_client, 32);
    /// ```
    pub fn exempt(mut self, peers: TrustedProxies) -> Self {
        self.exempt = Arc::new(peers);
        self
    }

    /// Tells `observer` of every connection refused over the per-client cap (an audit
    /// trail: `mcp_audit::ConnectionAudit`), with the client as counted (IPv6 by its
    /// network). Called on the accept path. Set before the limit is cloned and shared.
    pub fn observer(mut self, observer: Arc<dyn ConnectionObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Open connections, and counts of accepts, refusals, failed TLS handshakes and
    /// closes, over every loop sharing this limit.
    ///
    /// ```
    /// let limit = mcp_tls::ConnectionLimit::new(100);
    /// let stats = limit.stats();
    /// assert_eq!((stats.open, stats.max, stats.accepted), (0, 100, 0));
    /// ```
    pub fn stats(&self) -> ConnectionStats {
        let c = &self.counters;
        ConnectionStats {
            open: self.max.saturating_sub(self.available()),
            max: self.max,
            max_per_client: self.per_client,
            accepted: c.accepted.load(Ordering::Relaxed),
            tls_handshake_failed: c.handshake_failed.load(Ordering::Relaxed),
            tls_handshake_timed_out: c.handshake_timed_out.load(Ordering::Relaxed),
            idle_closed: c.idle_closed.load(Ordering::Relaxed),
            write_timed_out: c.write_timed_out.load(Ordering::Relaxed),
            streams_write_timed_out: c.streams_write_timed_out.load(Ordering::Relaxed),
            per_client_refused: c.per_client_refused.load(Ordering::Relaxed),
            streams_refused_over_budget: c.streams_refused_over_budget.load(Ordering::Relaxed),
            request_bodies_over_budget: c.request_bodies_over_budget.load(Ordering::Relaxed),
            tls_sni_ip_address: c.sni_ip_address.load(Ordering::Relaxed),
            tls_sni_invalid: c.sni_invalid.load(Ordering::Relaxed),
        }
    }

    /// The limit.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Connections that can still be opened.
    pub fn available(&self) -> usize {
        self.permits.available_permits()
    }

    /// A place for a connection from `peer` in its client address's count: `Ok(None)`
    /// for an exempt peer, `Err(key)` (the address as counted) when it has its limit open
    /// already.
    fn client_slot(&self, peer: IpAddr) -> Result<Option<ClientSlot>, IpAddr> {
        if self.exempt.is_trusted(peer) {
            return Ok(None);
        }
        let key = mcp_core::ip_key(peer, self.ipv6_prefix);
        let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = clients.entry(key).or_default();
        if entry.open >= self.per_client {
            return Err(key);
        }
        entry.open += 1;
        Ok(Some(ClientSlot {
            clients: self.clients.clone(),
            key,
            memory: ClientMemory {
                used: entry.used.clone(),
                max: self.client_memory,
            },
        }))
    }
}

/// Most permits a tokio semaphore holds.
const MAX_PERMITS: usize = (u32::MAX >> 3) as usize;

/// One connection in its client address's count, released on drop.
struct ClientSlot {
    clients: Arc<Mutex<HashMap<IpAddr, ClientEntry>>>,
    key: IpAddr,
    memory: ClientMemory,
}

/// A client address's open connections and the bytes they hold (see [`Activity`]).
#[derive(Default)]
struct ClientEntry {
    open: usize,
    used: Arc<AtomicU64>,
}

/// The memory budget of a connection's client address, shared by its connections.
#[derive(Clone)]
struct ClientMemory {
    used: Arc<AtomicU64>,
    max: u64,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = clients.get_mut(&self.key) {
            entry.open = entry.open.saturating_sub(1);
            if entry.open == 0 {
                clients.remove(&self.key);
            }
        }
    }
}

impl fmt::Debug for ConnectionLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionLimit")
            .field("max", &self.max)
            .field("available", &self.available())
            .field("per_client", &self.per_client)
            .field("ipv6_prefix", &self.ipv6_prefix)
            .field("observer", &self.observer.is_some())
            .finish()
    }
}

/// The accept loop, as a builder. See the [module documentation](self).
pub struct Server {
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    options: ServerOptions,
    limit: Option<ConnectionLimit>,
    shutdown: Option<ShutdownSignal>,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("listener", &self.listener)
            .field("tls", &self.tls)
            .field("options", &self.options)
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Serves plain TCP on `listener` until [`tls`](Self::tls) is set.
    pub fn new(listener: TcpListener) -> Self {
        Self {
            listener,
            tls: None,
            options: ServerOptions::default(),
            limit: None,
            shutdown: None,
        }
    }

    /// Serves TLS with this acceptor (which may be reloading).
    pub fn tls(mut self, acceptor: TlsAcceptor) -> Self {
        self.tls = Some(acceptor);
        self
    }

    /// Serves TLS when `Some`, plain TCP when `None`.
    pub fn maybe_tls(mut self, acceptor: Option<TlsAcceptor>) -> Self {
        self.tls = acceptor;
        self
    }

    /// Sets all limits at once (from configuration). Invalid values are clamped to the
    /// nearest valid one; validate with [`ServerOptions::validate`] to get an error.
    pub fn options(mut self, options: ServerOptions) -> Self {
        self.options = options;
        self
    }

    /// Time allowed for the TLS handshake (default 10 s).
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.options.handshake_timeout = timeout;
        self
    }

    /// Most connections open at once (default 10000). Ignored when a shared
    /// [`connection_limit`](Self::connection_limit) is set.
    pub fn max_connections(mut self, max: usize) -> Self {
        self.options.max_connections = max;
        self
    }

    /// Counts this loop's connections against `limit`, shared with other loops, instead
    /// of a limit of its own.
    pub fn connection_limit(mut self, limit: ConnectionLimit) -> Self {
        self.limit = Some(limit);
        self
    }

    /// How long a connection may stay open with no request in progress (default 30 s):
    /// before its first request head is complete, and after its last response. See
    /// [`ServerOptions::idle_timeout`].
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.options.idle_timeout = timeout;
        self
    }

    /// How long a response may wait with no write progress before its connection is
    /// closed (default 30 s). See [`ServerOptions::write_timeout`].
    pub fn write_timeout(mut self, timeout: Duration) -> Self {
        self.options.write_timeout = timeout;
        self
    }

    /// How long an HTTP/2 stream's response may wait with no write progress before that
    /// stream alone is reset (default: the [`write_timeout`](Self::write_timeout)). See
    /// [`ServerOptions::stream_write_timeout`].
    pub fn stream_write_timeout(mut self, timeout: Duration) -> Self {
        self.options.stream_write_timeout = Some(timeout);
        self
    }

    /// Most requests in progress at once on one HTTP/2 connection (default 16), sent to
    /// the peer as `SETTINGS_MAX_CONCURRENT_STREAMS`. See
    /// [`ServerOptions::max_concurrent_streams`].
    pub fn max_concurrent_streams(mut self, max: u32) -> Self {
        self.options.max_concurrent_streams = max;
        self
    }

    /// Memory budget of each connection in bytes (default 8 MiB): request body bytes read
    /// and response bytes held for its requests in progress. See
    /// [`ServerOptions::connection_memory_bytes`].
    pub fn connection_memory_bytes(mut self, max: u64) -> Self {
        self.options.connection_memory_bytes = max;
        self
    }

    /// Memory budget of each client address in bytes, over its connections (default
    /// 64 MiB). Ignored when a shared [`connection_limit`](Self::connection_limit) is set
    /// (set it there). See [`ServerOptions::client_memory_bytes`].
    pub fn client_memory_bytes(mut self, max: u64) -> Self {
        self.options.client_memory_bytes = max;
        self
    }

    /// Most connections open at once from one client address (default 64). Ignored
    /// when a shared [`connection_limit`](Self::connection_limit) is set (set it there).
    /// See [`ServerOptions::max_connections_per_client`].
    pub fn max_connections_per_client(mut self, max: usize) -> Self {
        self.options.max_connections_per_client = max;
        self
    }

    /// Most requests served on one connection (default 1000). See
    /// [`ServerOptions::max_requests_per_connection`].
    pub fn max_requests_per_connection(mut self, max: u64) -> Self {
        self.options.max_requests_per_connection = max;
        self
    }

    /// How much of an unread request body is read and discarded after its response, and
    /// for how long, so that an HTTP/1.x connection stays usable after a refusal (default
    /// 64 KiB within 1 s); past either, the response says `Connection: close`. See
    /// [`ServerOptions::refusal_drain_bytes`].
    pub fn refusal_drain(mut self, max_bytes: u64, timeout: Duration) -> Self {
        self.options.refusal_drain_bytes = max_bytes;
        self.options.refusal_drain_timeout = timeout;
        self
    }

    /// How long graceful shutdown waits for open connections (default 30 s).
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.options.drain_timeout = timeout;
        self
    }

    /// Stops accepting when `signal` completes, then drains open connections.
    pub fn with_graceful_shutdown<F>(mut self, signal: F) -> Self
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.shutdown = Some(Box::pin(signal));
        self
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Runs the loop until the shutdown signal, then drains. Returns once every
    /// connection has finished or the drain timeout has passed.
    pub async fn serve<S, B>(self, service: S) -> io::Result<()>
    where
        S: Service<Request<RequestBody>, Response = Response<B>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let Server {
            listener,
            tls,
            options,
            limit,
            shutdown,
        } = self;
        let limit = limit.unwrap_or_else(|| ConnectionLimit::from_options(&options));
        let permits = limit.permits.clone();
        let counters = limit.counters.clone();
        // Every connection task holds a clone of `alive`: when the last is gone, this
        // loop's connections have all finished.
        let (alive, mut all_done) = tokio::sync::mpsc::channel::<()>(1);
        // A zero timeout or cap (which `ServerOptions::validate` refuses) is taken as
        // the default.
        let defaults = ServerOptions::default();
        let or_default = |t: Duration, default: Duration| if t.is_zero() { default } else { t };
        let handshake_timeout = or_default(options.handshake_timeout, defaults.handshake_timeout);
        let drain_time = options
            .refusal_drain_timeout
            .clamp(Duration::from_millis(1), MAX_REFUSAL_DRAIN_TIMEOUT);
        let timeouts = ConnectionTimeouts {
            idle: or_default(options.idle_timeout, defaults.idle_timeout),
            write: or_default(options.write_timeout, defaults.write_timeout),
            max_requests: match options.max_requests_per_connection {
                0 => defaults.max_requests_per_connection,
                n => n,
            },
            memory: options
                .connection_memory_bytes
                .clamp(MIN_CONNECTION_MEMORY_BYTES, MAX_CONNECTION_MEMORY_BYTES),
            refusal_drain: DrainLayer::new()
                .max_bytes(options.refusal_drain_bytes.min(MAX_REFUSAL_DRAIN_BYTES))
                .timeout(drain_time),
            linger: drain_time,
        };
        let stream_write = match options.stream_write_timeout {
            Some(t) if !t.is_zero() => t,
            _ => timeouts.write,
        };
        let (stop_tx, stop_rx) = watch::channel(false);
        // hyper runs each HTTP/2 stream as a task of its own, spawned on this executor:
        // it times the stream's response and resets the stream alone when it stalls.
        let mut builder = auto::Builder::new(StreamExecutor {
            timeout: stream_write,
            counters: counters.clone(),
        });
        // HTTP/1.1 reads one request at a time; what a client pipelines beyond it waits
        // in hyper's read buffer (at most `max_buf_size`, hyper's default of about
        // 400 KiB) and then in the kernel's socket buffer, unread.
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(timeouts.idle);
        // Each stream is a request in progress (in a gateway, an upstream request): the
        // cap bounds what one connection holds, which the per-client connection cap
        // multiplies. A peer that opens more gets them refused (RST_STREAM
        // REFUSED_STREAM, safe to retry).
        let max_streams = match options.max_concurrent_streams {
            0 => defaults.max_concurrent_streams,
            n => n,
        };
        // hyper's HTTP/2 buffers, bounded explicitly: response data queued per stream (the
        // loop hands bodies on in pieces of 16 KiB, so a small queue loses nothing), the
        // receive windows (request bytes a peer may send before the service reads them:
        // per stream, and for the whole connection), frames, request headers.
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(max_streams)
            .max_send_buf_size(H2_MAX_SEND_BUF)
            .initial_stream_window_size(H2_WINDOW)
            .initial_connection_window_size(H2_WINDOW)
            .adaptive_window(false)
            .max_frame_size(H2_MAX_FRAME)
            .max_header_list_size(H2_MAX_HEADER_LIST);
        let builder = Arc::new(builder);
        let mut shutdown: ShutdownSignal =
            shutdown.unwrap_or_else(|| Box::pin(std::future::pending()));

        loop {
            let (tcp, peer) = tokio::select! {
                biased;
                () = &mut shutdown => break,
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        // Resource exhaustion (EMFILE, ENFILE, ENOBUFS) or a connection
                        // reset before accept: pause briefly instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            // Over its address's cap: closed at once, before it waits for a place.
            let client_slot = match limit.client_slot(peer.ip()) {
                Ok(slot) => slot,
                Err(key) => {
                    refused_per_client(&counters, peer.ip(), limit.per_client);
                    if let Some(observer) = &limit.observer {
                        observer.refused(ConnectionRefusal::new(
                            key,
                            RefusalReason::TooManyConnections,
                            limit.per_client,
                        ));
                    }
                    drop(tcp);
                    continue;
                }
            };
            // The permit is taken after the accept: a loop waiting for connections holds
            // none, so loops on different sockets sharing a limit never keep a place
            // from the one that has a connection to serve. A loop waiting here stops
            // accepting: beyond the limit, one connection per loop waits accepted and
            // the rest wait in the kernel's listen backlog.
            let permit = tokio::select! {
                biased;
                () = &mut shutdown => break,
                p = permits.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            Counters::add(&counters.accepted);
            let _ = tcp.set_nodelay(true);
            let counters = counters.clone();
            let service = service.clone();
            let builder = builder.clone();
            let tls = tls.clone();
            let stop = stop_rx.clone();
            let alive = alive.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let client_memory = client_slot.as_ref().map(|s| s.memory.clone());
                let _client_slot = client_slot;
                let _alive = alive;
                match tls {
                    None => {
                        let svc = ConnectionInfo::new(service, peer, None);
                        let client = ClientValidity {
                            memory: client_memory,
                            ..ClientValidity::default()
                        };
                        serve_connection(&builder, tcp, svc, timeouts, client, stop, &counters)
                            .await;
                    }
                    Some(acceptor) => {
                        let shake =
                            handshake(&acceptor, tcp, handshake_timeout, stop.clone(), &counters);
                        match shake.await {
                            Some((stream, info, check)) => {
                                let expires = crate::client_cert_expires_at(stream.get_ref().1);
                                let svc = ConnectionInfo::new(service, peer, Some(info))
                                    .client_cert_expires_at(expires)
                                    .client_cert_check(check.clone());
                                let client = ClientValidity {
                                    expires,
                                    check,
                                    memory: client_memory,
                                };
                                serve_connection(
                                    &builder, stream, svc, timeouts, client, stop, &counters,
                                )
                                .await;
                            }
                            None => tracing::debug!(%peer, "TLS handshake not completed"),
                        }
                    }
                }
            });
        }
        drop(listener);
        let _ = stop_tx.send(true);
        drop(alive);
        let drained = tokio::time::timeout(options.drain_timeout, all_done.recv()).await;
        if drained.is_err() {
            tracing::warn!("drain timeout reached with connections still open");
        }
        Ok(())
    }
}

/// Counts a connection refused over its address's cap, and logs it: at `warn` at most
/// once every 10 s (a client hammering the cap must not flood the log), else at `debug`.
fn refused_per_client(counters: &Counters, peer: IpAddr, cap: usize) {
    Counters::add(&counters.per_client_refused);
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let last = counters.refusal_warned_ms.load(Ordering::Relaxed);
    let warn = now_ms.saturating_sub(last) >= 10_000
        && counters
            .refusal_warned_ms
            .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok();
    let total = counters.per_client_refused.load(Ordering::Relaxed);
    if warn {
        tracing::warn!(
            %peer,
            cap,
            refused_total = total,
            "connection refused: its client address has the most connections allowed open \
             (logged at most every 10 s)"
        );
    } else {
        tracing::debug!(%peer, cap, "connection refused: per-client connection cap");
    }
}

/// How often a client-sent server name that was ignored is logged.
const SNI_LOG_INTERVAL_MS: u64 = 60_000;

/// Counts a handshake whose SNI rustls ignored (an IP address, or not a DNS name), and
/// logs it at most once a minute: any client can send one on every connection. It is a
/// client's quirk, not a problem of this server's configuration: `info`, not `warn`.
fn sni_ignored(counters: &Counters, kind: SniKind, peer: IpAddr) {
    match kind {
        SniKind::IpAddress => Counters::add(&counters.sni_ip_address),
        SniKind::Invalid => Counters::add(&counters.sni_invalid),
        _ => return,
    }
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let last = counters.sni_logged_ms.load(Ordering::Relaxed);
    let log = now_ms.saturating_sub(last) >= SNI_LOG_INTERVAL_MS
        && counters
            .sni_logged_ms
            .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok();
    if log {
        tracing::info!(
            %peer,
            ip_address_total = counters.sni_ip_address.load(Ordering::Relaxed),
            invalid_total = counters.sni_invalid.load(Ordering::Relaxed),
            "TLS client sent an IP address or a malformed name as its server name (SNI); \
             ignored, served as without one (logged at most once a minute)"
        );
    }
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    if stop.wait_for(|s| *s).await.is_err() {
        // The loop is gone without signalling: never resolve.
        std::future::pending::<()>().await;
    }
}

async fn handshake(
    acceptor: &TlsAcceptor,
    tcp: TcpStream,
    timeout: Duration,
    mut stop: watch::Receiver<bool>,
    counters: &Counters,
) -> Option<(
    tokio_rustls::server::TlsStream<Recorded<TcpStream>>,
    TlsInfo,
    Option<ClientCertCheck>,
)> {
    tokio::select! {
        r = tokio::time::timeout(timeout, acceptor.accept_checked(Recorded::new(tcp))) => match r {
            Ok(Ok((mut stream, info, check))) => {
                // The ClientHello is read only when rustls saw no name: to tell no SNI
                // from one it ignored.
                let hello = stream.get_mut().0.take_recorded();
                if info.server_name.is_none() {
                    let peer = stream.get_ref().0.get_ref().peer_addr().ok();
                    if let Some(peer) = peer {
                        sni_ignored(counters, sni_kind(&hello), peer.ip());
                    }
                }
                Some((stream, info, check))
            }
            Ok(Err(e)) => {
                Counters::add(&counters.handshake_failed);
                tracing::debug!(error = %e, "TLS handshake failed");
                None
            }
            Err(_) => {
                Counters::add(&counters.handshake_timed_out);
                tracing::debug!("TLS handshake timed out");
                None
            }
        },
        () = stopped(&mut stop) => None,
    }
}

/// Response data hyper queues per HTTP/2 stream (hyper's default: 400 KiB).
const H2_MAX_SEND_BUF: usize = 64 * 1024;
/// HTTP/2 initial stream and connection receive windows (hyper's defaults).
const H2_WINDOW: u32 = 1024 * 1024;
/// Largest HTTP/2 frame received (the protocol's minimum and hyper's default).
const H2_MAX_FRAME: u32 = 16 * 1024;
/// Largest request header list over HTTP/2 (hyper's default).
const H2_MAX_HEADER_LIST: u32 = 16 * 1024;

/// A connection's time limits and memory budget.
#[derive(Debug, Clone, Copy)]
struct ConnectionTimeouts {
    idle: Duration,
    write: Duration,
    max_requests: u64,
    memory: u64,
    /// What is drained of a request body left unread by its response.
    refusal_drain: DrainLayer,
    /// How long a connection hyper closed is read from before the socket closes.
    linger: Duration,
}

/// How [`serve_connection`]'s watch ended.
enum Ended<E> {
    /// The connection ended by itself.
    Done(Result<(), E>),
    /// A response waited `write` with no write progress.
    Stalled,
    /// Asked to close with no request in progress, it had not after `write`.
    NotFinishing,
    /// Its client certificate expired `write` ago and it had not finished.
    CertExpired,
    /// A reload of the client trust refused its client chain `write` ago and it had not
    /// finished.
    ClientRefused,
}

/// How long a connection's client certificate chain stays valid: its end of validity,
/// and its check against reloads of the client trust.
#[derive(Default)]
struct ClientValidity {
    expires: Option<SystemTime>,
    check: Option<ClientCertCheck>,
    /// The client address's memory budget (none for an exempt peer).
    memory: Option<ClientMemory>,
}

/// Resolves when the client trust changed since `check` last verified its chain (never
/// without a check).
async fn trust_changed(check: Option<&ClientCertCheck>) {
    match check {
        Some(c) => c.trust_changed().await,
        None => std::future::pending().await,
    }
}

/// Serves one connection until it ends, the loop stops, it stays idle (no request in
/// progress) for the idle timeout, it has served its most requests, or a response waits
/// with no write progress for the write timeout.
///
/// At `client_expires_at` (its client certificate's end of validity) the connection is
/// asked to finish like on shutdown (HTTP/1.1 closes, after the response in flight if
/// any; HTTP/2 sends GOAWAY), and what is still open the write timeout later is closed:
/// a long response (an SSE stream) does not outlive the certificate by more than that.
/// Likewise when a reload of the client trust (CA bundle, CRLs) refuses its client chain:
/// the chain is verified again at each such reload, once.
#[allow(clippy::too_many_arguments)]
async fn serve_connection<IO, S, B>(
    builder: &auto::Builder<StreamExecutor>,
    io: IO,
    service: S,
    timeouts: ConnectionTimeouts,
    client: ClientValidity,
    mut stop: watch::Receiver<bool>,
    counters: &Arc<Counters>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<RequestBody>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let activity = Arc::new(Activity::new(timeouts.memory, client.memory.clone()));
    // Outside the counting: the drain reads what the service left of a body (discarded,
    // not counted in the memory budgets) while the request is still in progress.
    let service = Drain::with(
        Tracking {
            inner: service,
            activity: activity.clone(),
            max_requests: timeouts.max_requests,
            counters: counters.clone(),
        },
        timeouts.refusal_drain,
    );
    let lingering = Arc::new(Mutex::new(None));
    let io = WriteWatch {
        inner: Some(io),
        activity: activity.clone(),
        shut: false,
        linger: lingering.clone(),
    };
    let conn =
        builder.serve_connection_with_upgrades(TokioIo::new(io), TowerToHyperService::new(service));
    let mut conn = Box::pin(conn);
    let mut stop_signal = std::pin::pin!(stopped(&mut stop));
    let mut check = std::pin::pin!(tokio::time::sleep(timeouts.idle));
    let mut stopping = false;
    // Once asked to finish (idle, its most requests served, or stopping), the connection
    // ends by itself: an idle HTTP/1.1 connection or one still reading its first bytes at
    // once, one with a response in flight after it, HTTP/2 after its GOAWAY once no stream
    // is open. With no request in progress, it has the write timeout to do so.
    let mut finishing: Option<Instant> = None;
    // The certificate's end on the monotonic clock (already past when it is).
    // (None past what the clock can count: requests are still checked one by one.)
    let cert_end = client.expires.and_then(|end| {
        Instant::now().checked_add(
            end.duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO),
        )
    });
    let mut cert_expired = false;
    let client_check = client.check.as_ref();
    let mut trust = std::pin::pin!(trust_changed(client_check));
    // When a reload of the client trust refused the chain.
    let mut refused_at: Option<Instant> = None;
    let ended = std::future::poll_fn(|cx| {
        loop {
            activity.waker.register(cx.waker());
            if let Poll::Ready(r) = conn.as_mut().poll(cx) {
                return Poll::Ready(Ended::Done(r));
            }
            let now = Instant::now();
            if refused_at.is_none() && trust.as_mut().poll(cx).is_ready() {
                if client_check.is_some_and(ClientCertCheck::passes) {
                    trust.set(trust_changed(client_check));
                } else {
                    refused_at = Some(now);
                    tracing::debug!(
                        "closing a connection: the reloaded client trust refuses its certificate"
                    );
                    if finishing.is_none() {
                        conn.as_mut().graceful_shutdown();
                        finishing = Some(now);
                    }
                }
                continue;
            }
            if let Some(at) = refused_at
                && at + timeouts.write <= now
            {
                return Poll::Ready(Ended::ClientRefused);
            }
            if let Some(end) = cert_end.filter(|end| *end <= now) {
                if !cert_expired {
                    cert_expired = true;
                    tracing::debug!("closing a connection: its client certificate has expired");
                    if finishing.is_none() {
                        conn.as_mut().graceful_shutdown();
                        finishing = Some(now);
                    }
                    continue;
                }
                if end + timeouts.write <= now {
                    return Poll::Ready(Ended::CertExpired);
                }
            }
            if !stopping && stop_signal.as_mut().poll(cx).is_ready() {
                stopping = true;
                if finishing.is_none() {
                    conn.as_mut().graceful_shutdown();
                    finishing = Some(now);
                }
                continue;
            }
            if finishing.is_none() && activity.close_asked.load(Ordering::Acquire) {
                tracing::debug!("closing a connection after its most requests");
                conn.as_mut().graceful_shutdown();
                finishing = Some(now);
                continue;
            }
            // With no deadline, a recheck after the idle timeout.
            let mut next = now + timeouts.idle;
            if let Some(end) = cert_end {
                next = next.min(if cert_expired {
                    end + timeouts.write
                } else {
                    end
                });
            }
            if let Some(at) = refused_at {
                next = next.min(at + timeouts.write);
            }
            if let Some(d) = activity.stall_deadline(timeouts.write) {
                if d <= now {
                    return Poll::Ready(Ended::Stalled);
                }
                next = next.min(d);
            }
            match finishing {
                None => {
                    if let Some(d) = activity.idle_deadline(timeouts.idle) {
                        if d <= now {
                            tracing::debug!("closing an idle connection");
                            Counters::add(&counters.idle_closed);
                            conn.as_mut().graceful_shutdown();
                            finishing = Some(now);
                            continue;
                        }
                        next = next.min(d);
                    }
                }
                Some(asked) => {
                    if let Some(idle) = activity.idle_deadline(Duration::ZERO) {
                        let d = asked.max(idle) + timeouts.write;
                        if d <= now {
                            return Poll::Ready(Ended::NotFinishing);
                        }
                        next = next.min(d);
                    }
                }
            }
            // The timer is moved only forward in urgency: a later deadline waits for the
            // current one to fire (one spare wake-up), not a reset on every poll.
            let next = next.max(now + Duration::from_millis(1));
            if check.deadline() <= now || next < check.deadline() {
                check.as_mut().reset(next);
            }
            if check.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
    })
    .await;
    // Before the connection (and the response bodies it holds) is dropped: a body
    // dropped with it, or one that ended unwritten, finds why.
    let reason = match ended {
        // Closed for its certificate: not a write timeout (the peer may read well).
        Ended::Done(_) => None,
        Ended::Stalled | Ended::NotFinishing => Some(CloseReason::WriteTimeout),
        Ended::CertExpired => Some(CloseReason::CertificateExpired),
        Ended::ClientRefused => Some(CloseReason::CertificateRefused),
    };
    activity.events.close(reason);
    activity.streams_close(reason);
    let closed_by_hyper = matches!(ended, Ended::Done(Ok(())));
    match ended {
        Ended::Done(Ok(())) => {}
        Ended::Done(Err(e)) => tracing::debug!(error = %e, "connection ended with an error"),
        Ended::Stalled => {
            Counters::add(&counters.write_timed_out);
            tracing::debug!("closing a connection: a response waited with no write progress");
        }
        Ended::NotFinishing => {
            Counters::add(&counters.write_timed_out);
            tracing::debug!("closing a connection that did not finish when asked");
        }
        Ended::CertExpired => {
            tracing::debug!("closing a connection still open after its client certificate expired");
        }
        Ended::ClientRefused => {
            tracing::debug!(
                "closing a connection still open after the reloaded client trust refused its certificate"
            );
        }
    }
    // hyper ended the connection itself, its write side shut: what the client still
    // sends is read and discarded for a short while before the socket is closed, so that
    // the last response is not lost to a reset (the permit and client slot are held
    // meanwhile).
    drop(conn);
    let io = lingering
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take();
    if closed_by_hyper && let Some(io) = io {
        linger(io, timeouts.linger).await;
    }
}

/// A connection's requests in progress, when it last had none, and what its responses
/// wait for.
///
/// Write progress is progress of response data, counted per response: a body frame
/// handed to hyper waits until hyper asks for the next one (HTTP/1.1: its write buffer
/// has room; HTTP/2: the frame fits in the peer's stream and connection windows and the
/// stream's send buffer), and only that ends its wait. Nothing else the connection writes
/// (HTTP/2 PING, SETTINGS and WINDOW_UPDATE frames, other streams' headers and data)
/// restarts the clock of a response that waits. HTTP/2 responses wait on their stream's
/// own clock ([`StreamClock`], which resets the stream), not in `waits`.
struct Activity {
    start: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds from `start` to when the last request in progress finished.
    idle_since_ms: AtomicU64,
    /// Milliseconds from `start` to when the pending write began (see `write_blocked`).
    blocked_since_ms: AtomicU64,
    /// A write to the peer is pending (the peer does not take the bytes).
    write_blocked: AtomicBool,
    /// Response body frames handed to hyper and not yet taken, one per response at most.
    waits: Mutex<Waits>,
    /// Requests received.
    requests: AtomicU64,
    /// The connection has served its most requests.
    close_asked: AtomicBool,
    /// The connection's watch, woken when something it waits for may have changed in
    /// another task (an HTTP/2 stream's).
    waker: AtomicWaker,
    /// What the layers learn of this connection (in every request's extensions): when
    /// what it was handed is written, and why it was closed.
    events: ConnectionEvents,
    /// Bytes held for the requests in progress (see [`Charge`]).
    used: AtomicU64,
    /// The connection's memory budget.
    budget: u64,
    /// A request body read did not fit in the budget, and at most half of it has been
    /// free since.
    refusing: AtomicBool,
    /// The client address's budget, over its connections.
    client: Option<ClientMemory>,
    /// The events of its HTTP/2 requests, with their stream's clock: flushes and the
    /// close are passed on to them; dropped after a flush once their stream is gone.
    streams: Mutex<Vec<(ConnectionEvents, std::sync::Weak<StreamClock>)>>,
}

impl Activity {
    fn new(budget: u64, client: Option<ClientMemory>) -> Self {
        Self {
            client,
            streams: Mutex::new(Vec::new()),
            used: AtomicU64::new(0),
            budget,
            refusing: AtomicBool::new(false),
            start: Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            blocked_since_ms: AtomicU64::new(0),
            write_blocked: AtomicBool::new(false),
            waits: Mutex::new(Waits::default()),
            requests: AtomicU64::new(0),
            close_asked: AtomicBool::new(false),
            waker: AtomicWaker::new(),
            events: ConnectionEvents::new(),
        }
    }

    /// Ties an HTTP/2 request's events to the stream whose task runs now.
    fn add_stream(&self, events: ConnectionEvents) {
        let clock = CURRENT_STREAM.with(|c| c.borrow().clone());
        let weak = match &clock {
            Some(c) => {
                *c.events.lock().unwrap_or_else(PoisonError::into_inner) = Some(events.clone());
                Arc::downgrade(c)
            }
            None => std::sync::Weak::new(),
        };
        self.streams
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((events, weak));
    }

    /// The connection wrote what it was handed: so did its streams. Streams gone since
    /// are forgotten (what they were handed is written now).
    fn streams_flushed(&self) {
        let streams: Vec<ConnectionEvents> = {
            let list = self.streams.lock().unwrap_or_else(PoisonError::into_inner);
            if list.is_empty() {
                return;
            }
            list.iter().map(|(e, _)| e.clone()).collect()
        };
        for e in &streams {
            e.flushed();
        }
        self.streams
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|(e, clock)| clock.strong_count() > 0 && !e.is_ended());
    }

    /// The connection closes, for `reason`: so do its streams.
    fn streams_close(&self, reason: Option<CloseReason>) {
        let streams =
            std::mem::take(&mut *self.streams.lock().unwrap_or_else(PoisonError::into_inner));
        for (e, _) in streams {
            e.close(reason);
        }
    }

    /// Takes `n` bytes of the budget if they fit.
    fn try_take(&self, n: u64) -> bool {
        let fits = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|total| *total <= self.budget)
            })
            .is_ok();
        let fits = fits
            && self.client.as_ref().is_none_or(|c| {
                let ok = c
                    .used
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                        used.checked_add(n).filter(|total| *total <= c.max)
                    })
                    .is_ok();
                if !ok {
                    self.used.fetch_sub(n, Ordering::AcqRel);
                }
                ok
            });
        if !fits {
            self.refusing.store(true, Ordering::Release);
        }
        fits
    }

    /// Takes `n` bytes of the budget, whether they fit or not (response bytes, which the
    /// loop holds once a body hands them on).
    fn take(&self, n: u64) {
        self.used.fetch_add(n, Ordering::AcqRel);
        if let Some(c) = &self.client {
            c.used.fetch_add(n, Ordering::AcqRel);
        }
    }

    /// Gives `n` bytes back.
    fn give_back(&self, n: u64) {
        if n == 0 {
            return;
        }
        let before = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                Some(used.saturating_sub(n))
            })
            .unwrap_or(0);
        if let Some(c) = &self.client {
            let _ = c
                .used
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                    Some(used.saturating_sub(n))
                });
        }
        // Refusing stops once half the budget is free again: the bytes a refused read
        // gives back do not reopen the connection to the next such read at once.
        if before.saturating_sub(n) <= self.budget / 2 {
            self.refusing.store(false, Ordering::Release);
        }
    }

    /// Whether the budget is used up: full, or a request body read did not fit and at
    /// most half of it has been free since.
    fn budget_used_up(&self) -> bool {
        self.refusing.load(Ordering::Acquire)
            || self.used.load(Ordering::Acquire) >= self.budget
            || self
                .client
                .as_ref()
                .is_some_and(|c| c.used.load(Ordering::Acquire) >= c.max)
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// A response's body frame is handed to hyper now; returns the wait's id.
    fn wait_begins(&self) -> u64 {
        let now = self.now_ms();
        let (id, first) = {
            let mut w = self.waits.lock().unwrap_or_else(PoisonError::into_inner);
            let id = w.next_id;
            w.next_id = w.next_id.wrapping_add(1);
            w.handed.push((id, now));
            (id, w.handed.len() == 1)
        };
        if first {
            // The watch may be asleep in another task (HTTP/2) with no deadline.
            self.waker.wake();
        }
        id
    }

    /// The frame of wait `id` was taken (or its response ended).
    fn wait_ends(&self, id: u64) {
        let mut w = self.waits.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(i) = w.handed.iter().position(|(h, _)| *h == id) {
            w.handed.swap_remove(i);
        }
    }

    /// When the connection will have been idle for `timeout`; `None` while a request
    /// is in progress.
    fn idle_deadline(&self, timeout: Duration) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let since = Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire));
        Some(self.start + since + timeout)
    }

    /// When the response that has waited longest (a body frame not taken, or a pending
    /// write) will have waited `timeout`; `None` while none waits.
    fn stall_deadline(&self, timeout: Duration) -> Option<Instant> {
        let blocked = self
            .write_blocked
            .load(Ordering::Acquire)
            .then(|| self.blocked_since_ms.load(Ordering::Acquire));
        let handed = {
            let w = self.waits.lock().unwrap_or_else(PoisonError::into_inner);
            w.handed.iter().map(|(_, since)| *since).min()
        };
        let since = match (blocked, handed) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b)?,
        };
        Some(self.start + Duration::from_millis(since) + timeout)
    }
}

/// The body frames a connection's responses have handed to hyper and that wait to be
/// taken: (id, milliseconds from the connection's start to the hand). As many as
/// responses in progress (HTTP/2 streams), so a short list.
#[derive(Default)]
struct Waits {
    next_id: u64,
    handed: Vec<(u64, u64)>,
}

/// The connection's stream, noting whether writes make progress.
struct WriteWatch<IO> {
    /// Always `Some` until dropped.
    inner: Option<IO>,
    activity: Arc<Activity>,
    /// Set once a shutdown of the write side completed (hyper closes the connection).
    shut: bool,
    /// Where the stream goes when hyper drops it after that shutdown: the loop lingers
    /// on it (see [`linger`]).
    linger: Arc<Mutex<Option<IO>>>,
}

impl<IO> Drop for WriteWatch<IO> {
    fn drop(&mut self) {
        if self.shut
            && let Some(io) = self.inner.take()
        {
            *self.linger.lock().unwrap_or_else(PoisonError::into_inner) = Some(io);
        }
    }
}

fn gone() -> io::Error {
    io::Error::from(io::ErrorKind::NotConnected)
}

/// Most bytes read and discarded while lingering on a closed connection.
const LINGER_MAX_BYTES: u64 = 1024 * 1024;

/// After hyper closed a connection (its write side shut, `FIN` sent): reads and
/// discards what the client still sends, for at most `time` and [`LINGER_MAX_BYTES`],
/// until it closes too. Closing a socket with unread bytes makes the kernel reset the
/// connection, and a reset can destroy the last response (a refusal with
/// `Connection: close` whose body was left unread) before the client reads it: a client
/// still writing the refused body would see a reset instead of the refusal.
async fn linger<IO: AsyncRead + Unpin>(mut io: IO, time: Duration) {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 8 * 1024];
    let mut seen: u64 = 0;
    let _ = tokio::time::timeout(time, async {
        while let Ok(n @ 1..) = io.read(&mut buf).await {
            seen = seen.saturating_add(n as u64);
            if seen > LINGER_MAX_BYTES {
                break;
            }
        }
    })
    .await;
}

impl<IO> WriteWatch<IO> {
    /// A pending write starts a wait (the peer takes no bytes at all); any completed
    /// write ends it. Bytes written are not response progress by themselves (HTTP/2
    /// control frames, other streams): that is counted per response, on its body.
    fn note<T>(&self, r: &Poll<io::Result<T>>) {
        let a = &self.activity;
        match r {
            Poll::Pending => {
                if !a.write_blocked.load(Ordering::Acquire) {
                    // The wait starts now.
                    a.blocked_since_ms.store(a.now_ms(), Ordering::Release);
                    a.write_blocked.store(true, Ordering::Release);
                }
            }
            Poll::Ready(_) => a.write_blocked.store(false, Ordering::Release),
        }
    }

    /// A flush (or shutdown) completed: everything handed to the stream is written.
    fn note_flushed(&self, r: &Poll<io::Result<()>>) {
        if let Poll::Ready(Ok(())) = r {
            self.activity.events.flushed();
            self.activity.streams_flushed();
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for WriteWatch<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.inner.as_mut() {
            Some(io) => Pin::new(io).poll_read(cx, buf),
            None => Poll::Ready(Err(gone())),
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for WriteWatch<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let Some(io) = self.inner.as_mut() else {
            return Poll::Ready(Err(gone()));
        };
        let r = Pin::new(io).poll_write(cx, buf);
        self.note(&r);
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let Some(io) = self.inner.as_mut() else {
            return Poll::Ready(Err(gone()));
        };
        let r = Pin::new(io).poll_write_vectored(cx, bufs);
        self.note(&r);
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.as_ref().is_some_and(IO::is_write_vectored)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(io) = self.inner.as_mut() else {
            return Poll::Ready(Err(gone()));
        };
        let r = Pin::new(io).poll_flush(cx);
        self.note(&r);
        self.note_flushed(&r);
        r
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(io) = self.inner.as_mut() else {
            return Poll::Ready(Err(gone()));
        };
        let r = Pin::new(io).poll_shutdown(cx);
        if let Poll::Ready(Ok(())) = r {
            self.shut = true;
        }
        self.note(&r);
        self.note_flushed(&r);
        r
    }
}

/// One request in progress, from its head to the end (or drop) of its response body.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn new(activity: Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        Self(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.0;
        a.idle_since_ms.fetch_max(a.now_ms(), Ordering::AcqRel);
        a.in_flight.fetch_sub(1, Ordering::AcqRel);
        // The watch may be asleep in another task (HTTP/2): the idle clock starts.
        a.waker.wake();
    }
}

/// Counts a connection's requests in progress (see [`Activity`]) and its requests,
/// counts their request bodies against the connection's memory budget, and refuses new
/// HTTP/2 streams while the budget is used up.
#[derive(Clone)]
struct Tracking<S> {
    inner: S,
    activity: Arc<Activity>,
    max_requests: u64,
    counters: Arc<Counters>,
}

impl<S, ResB> Service<Request<DrainBody<Incoming>>> for Tracking<S>
where
    S: Service<Request<RequestBody>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
    ResB: http_body::Body,
{
    type Response = Response<TrackedBody<ResB>>;
    type Error = BoxError;
    type Future = TrackingFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<DrainBody<Incoming>>) -> Self::Future {
        let a = &self.activity;
        if req.version() == http::Version::HTTP_2 && a.budget_used_up() {
            // Refused before the service sees it: hyper resets the stream with the
            // reason of the error (REFUSED_STREAM: the peer may retry it).
            Counters::add(&self.counters.streams_refused_over_budget);
            tracing::debug!(
                budget = a.budget,
                "HTTP/2 stream refused: its connection's memory budget is used up"
            );
            return TrackingFuture {
                inner: None,
                guard: None,
                charge: None,
                close: false,
                stream_events: None,
            };
        }
        let charge = Arc::new(Charge {
            activity: a.clone(),
            counters: self.counters.clone(),
            held: AtomicU64::new(0),
        });
        let mut req = req.map(|inner| RequestBody {
            inner,
            charge: Some(charge.clone()),
        });
        // An HTTP/2 request gets events of its own: the connection's flushes and close are
        // passed on to them, and its stream's reset closes them alone (see StreamTask).
        let stream_events = (req.version() == http::Version::HTTP_2).then(ConnectionEvents::new);
        req.extensions_mut()
            .insert(stream_events.clone().unwrap_or_else(|| a.events.clone()));
        let served = a.requests.fetch_add(1, Ordering::AcqRel).saturating_add(1);
        let last = served >= self.max_requests;
        if last && !a.close_asked.swap(true, Ordering::AcqRel) {
            a.waker.wake();
        }
        // HTTP/1.1 may have read pipelined requests already: the last response says
        // `Connection: close`, and hyper closes after it. (HTTP/2 gets its GOAWAY.)
        let close = last && req.version() <= http::Version::HTTP_11;
        TrackingFuture {
            guard: Some(InFlight::new(self.activity.clone())),
            charge: Some(charge),
            close,
            stream_events,
            inner: Some(self.inner.call(req)),
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future; its [`InFlight`] and [`Charge`] move into the response body.
    /// Without an inner future, the stream is refused.
    struct TrackingFuture<F> {
        #[pin]
        inner: Option<F>,
        guard: Option<InFlight>,
        charge: Option<Arc<Charge>>,
        close: bool,
        // An HTTP/2 request's own events, tied to its stream's clock at the first poll.
        stream_events: Option<ConnectionEvents>,
    }
}

impl<F, B, E> Future for TrackingFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
    B: http_body::Body,
{
    type Output = Result<Response<TrackedBody<B>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Some(inner) = this.inner.as_pin_mut() else {
            return Poll::Ready(Err(Box::new(h2::Error::from(h2::Reason::REFUSED_STREAM))));
        };
        if let (Some(events), Some(g)) = (this.stream_events.take(), this.guard.as_ref()) {
            g.0.add_stream(events);
        }
        let res = ready!(inner.poll(cx)).map_err(Into::into);
        let guard = this.guard.take();
        let charge = this.charge.take();
        let close = *this.close;
        Poll::Ready(res.map(|mut r| {
            if close {
                r.headers_mut().insert(
                    http::header::CONNECTION,
                    http::HeaderValue::from_static("close"),
                );
            }
            r.map(|body| {
                let mut taken = Taken {
                    activity: guard.as_ref().map(|g| g.0.clone()),
                    // Set when this runs as an HTTP/2 stream's task (see StreamTask).
                    clock: CURRENT_STREAM.with(|c| c.borrow().clone()),
                    wait: None,
                };
                // A body to send waits from now until hyper first asks for a frame:
                // whatever holds it (a full write buffer, an HTTP/2 window of zero) holds
                // this response.
                if !body.is_end_stream() {
                    taken.hand();
                }
                // Until hyper first asks for a frame (an HTTP/2 window of zero may keep it
                // from asking), a body of known length counts as held whole: a buffered
                // body is (a streamed one with a length is counted until it is first
                // asked, which a peer that reads is at once).
                let mut counted = 0;
                if let (Some(c), Some(n)) = (charge.as_ref(), body.size_hint().exact()) {
                    c.take(n);
                    counted = n;
                }
                TrackedBody {
                    inner: body,
                    taken,
                    guard,
                    rest: None,
                    charge,
                    counted,
                }
            })
        }))
    }
}

/// What one request in progress holds of its connection's memory budget: the bytes its
/// body has read, and the bytes the loop holds of its response. Given back when both the
/// request body and the response are gone.
struct Charge {
    activity: Arc<Activity>,
    counters: Arc<Counters>,
    held: AtomicU64,
}

impl Charge {
    /// Request bytes read: false (nothing taken) when they would go over the budget.
    fn try_take(&self, n: u64) -> bool {
        if self.activity.try_take(n) {
            self.held.fetch_add(n, Ordering::AcqRel);
            true
        } else {
            false
        }
    }

    fn take(&self, n: u64) {
        self.activity.take(n);
        self.held.fetch_add(n, Ordering::AcqRel);
    }

    fn give_back(&self, n: u64) {
        self.activity.give_back(n);
        let _ = self
            .held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |h| {
                Some(h.saturating_sub(n))
            });
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.activity.give_back(*self.held.get_mut());
    }
}

/// A request body read that would have gone over its connection's memory budget
/// ([`ServerOptions::connection_memory_bytes`]) or its client address's
/// ([`ServerOptions::client_memory_bytes`]): the error a [`RequestBody`] yields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct MemoryBudgetExceeded {
    /// The connection's budget, in bytes.
    pub budget: u64,
}

impl fmt::Display for MemoryBudgetExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "request body refused: the memory budget of its connection ({} bytes) or of its \
             client address is used up",
            self.budget
        )
    }
}

impl std::error::Error for MemoryBudgetExceeded {}

/// The request body the accept loop hands to the service: hyper's [`Incoming`], with
/// the bytes read counted against the connection's memory budget
/// ([`ServerOptions::connection_memory_bytes`]) and its client address's
/// ([`ServerOptions::client_memory_bytes`]) until the request's response ends. A
/// data frame that would go over the budget is not handed on: the body yields
/// [`MemoryBudgetExceeded`] instead (and ends).
pub struct RequestBody {
    inner: DrainBody<Incoming>,
    charge: Option<Arc<Charge>>,
}

impl RequestBody {
    /// The body as hyper read it, no longer counted.
    pub fn into_inner(self) -> Incoming {
        self.inner.into_inner()
    }
}

impl fmt::Debug for RequestBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestBody")
            .field("inner", &self.inner)
            .field("counted", &self.charge.is_some())
            .finish()
    }
}

impl http_body::Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let Some(charge) = self.charge.clone() else {
            // Over the budget already: ended with the error.
            return Poll::Ready(None);
        };
        let frame = match ready!(Pin::new(&mut self.inner).poll_frame(cx)) {
            None => return Poll::Ready(None),
            Some(Err(e)) => return Poll::Ready(Some(Err(Box::new(e)))),
            Some(Ok(frame)) => frame,
        };
        if let Some(data) = frame.data_ref() {
            let n = data.len() as u64;
            if !charge.try_take(n) {
                Counters::add(&charge.counters.request_bodies_over_budget);
                let budget = charge.activity.budget;
                tracing::debug!(
                    budget,
                    "request body refused: its connection's memory budget is used up"
                );
                self.charge = None;
                return Poll::Ready(Some(Err(Box::new(MemoryBudgetExceeded { budget }))));
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.charge.is_none() || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Data frames are handed on in pieces of at most this size, so that a large frame is
/// not handed whole to HTTP/2's send queue, where a shut flow-control window would hold
/// it out of sight (see [`TrackedBody`]).
const PIECE: usize = 16 * 1024;

/// The wait of the frame a response body last handed on, until it is taken (the body is
/// asked for the next) or the body is dropped.
///
/// An HTTP/2 stream's response waits on its stream's own clock ([`StreamClock`]: past
/// the stream write timeout, the stream alone is reset); any other response waits on its
/// connection's ([`Activity`]: past the write timeout, the connection is closed).
struct Taken {
    activity: Option<Arc<Activity>>,
    clock: Option<Arc<StreamClock>>,
    wait: Option<u64>,
}

impl Taken {
    fn take(&mut self) {
        if let Some(c) = &self.clock {
            c.stop();
        }
        if let (Some(id), Some(a)) = (self.wait.take(), &self.activity) {
            a.wait_ends(id);
        }
    }

    fn hand(&mut self) {
        if let Some(c) = &self.clock {
            c.start();
            return;
        }
        if let Some(a) = &self.activity
            && self.wait.is_none()
        {
            self.wait = Some(a.wait_begins());
        }
    }
}

impl Drop for Taken {
    fn drop(&mut self) {
        self.take();
    }
}

pin_project_lite::pin_project! {
    /// A response body that ends its request's [`InFlight`] when it ends or is dropped,
    /// and notes (in [`Activity`]'s waits) when a frame it handed on waits to be taken:
    /// the next frame is asked for once the previous one is buffered for writing
    /// (HTTP/1.1) or within the peer's flow-control windows (HTTP/2). Large data frames
    /// are handed on in [`PIECE`]s, so that taking one costs the peer at most that much.
    struct TrackedBody<B: http_body::Body> {
        #[pin]
        inner: B,
        guard: Option<InFlight>,
        taken: Taken,
        rest: Option<Bytes>,
        // The request's share of the connection's memory budget, and what of it counts
        // this body's bytes held: the rest of the frame and the piece handed on.
        charge: Option<Arc<Charge>>,
        counted: u64,
    }
}

impl<B: http_body::Body> TrackedBody<B> {
    /// Counts the bytes held now: the piece handed on and the rest of its frame.
    fn count(charge: Option<&Arc<Charge>>, counted: &mut u64, piece: &Bytes, rest: Option<&Bytes>) {
        if let Some(c) = charge {
            let n = piece.len() as u64 + rest.map_or(0, |r| r.len() as u64);
            c.take(n);
            *counted = n;
        }
    }

    fn piece(rest: &mut Option<Bytes>, mut data: Bytes) -> Bytes {
        if data.len() > PIECE {
            *rest = Some(data.split_off(PIECE));
        } else {
            *rest = None;
        }
        data
    }
}

impl<B: http_body::Body> http_body::Body for TrackedBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        this.taken.take();
        // The piece handed on last is taken: it no longer counts.
        if let Some(c) = this.charge.as_ref() {
            c.give_back(std::mem::take(this.counted));
        }
        if let Some(rest) = this.rest.take() {
            let piece = Self::piece(this.rest, rest);
            this.taken.hand();
            Self::count(
                this.charge.as_ref(),
                this.counted,
                &piece,
                this.rest.as_ref(),
            );
            return Poll::Ready(Some(Ok(http_body::Frame::data(piece))));
        }
        loop {
            let frame = match ready!(this.inner.as_mut().poll_frame(cx)) {
                None => {
                    this.guard.take();
                    this.charge.take();
                    return Poll::Ready(None);
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                Some(Ok(frame)) => frame,
            };
            match frame.into_data() {
                Ok(mut data) => {
                    let data = data.copy_to_bytes(data.remaining());
                    let piece = Self::piece(this.rest, data);
                    this.taken.hand();
                    Self::count(
                        this.charge.as_ref(),
                        this.counted,
                        &piece,
                        this.rest.as_ref(),
                    );
                    return Poll::Ready(Some(Ok(http_body::Frame::data(piece))));
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        return Poll::Ready(Some(Ok(http_body::Frame::trailers(trailers))));
                    }
                    // A kind of frame this version does not know: not handed on.
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        let rest = self.rest.as_ref().map_or(0, |r| r.len() as u64);
        let inner = self.inner.size_hint();
        let mut hint = http_body::SizeHint::new();
        hint.set_lower(inner.lower().saturating_add(rest));
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper.saturating_add(rest));
        }
        hint
    }
}

/// The write clock of one HTTP/2 stream: since when its response has waited for the
/// peer to take the piece of body it handed on (see [`Taken`]).
struct StreamClock {
    start: Instant,
    /// Milliseconds from `start` to the beginning of the wait, plus one; 0: no wait.
    since: AtomicU64,
    /// The events of the stream's request (in its extensions), closed with
    /// [`CloseReason::WriteTimeout`] when the stream is reset for it.
    events: Mutex<Option<ConnectionEvents>>,
}

impl StreamClock {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            since: AtomicU64::new(0),
            events: Mutex::new(None),
        }
    }

    /// A piece is handed on: the wait begins, unless one is running.
    fn start(&self) {
        let now = u64::try_from(self.start.elapsed().as_millis())
            .unwrap_or(u64::MAX - 1)
            .saturating_add(1);
        let _ = self
            .since
            .compare_exchange(0, now, Ordering::AcqRel, Ordering::Acquire);
    }

    /// The piece was taken (or the response ended): no wait.
    fn stop(&self) {
        self.since.store(0, Ordering::Release);
    }

    /// When the running wait, if any, will have lasted `timeout`.
    fn deadline(&self, timeout: Duration) -> Option<Instant> {
        match self.since.load(Ordering::Acquire) {
            0 => None,
            ms => Some(self.start + Duration::from_millis(ms - 1) + timeout),
        }
    }
}

thread_local! {
    /// The clock of the HTTP/2 stream whose task is being polled on this thread, if any.
    static CURRENT_STREAM: RefCell<Option<Arc<StreamClock>>> = const { RefCell::new(None) };
}

/// Sets [`CURRENT_STREAM`] for the time of a poll, and restores it after (a panic
/// included).
struct CurrentStream(Option<Arc<StreamClock>>);

impl CurrentStream {
    fn enter(clock: &Arc<StreamClock>) -> Self {
        Self(CURRENT_STREAM.with(|c| c.replace(Some(clock.clone()))))
    }
}

impl Drop for CurrentStream {
    fn drop(&mut self) {
        let prev = self.0.take();
        CURRENT_STREAM.with(|c| *c.borrow_mut() = prev);
    }
}

/// The executor hyper spawns each HTTP/2 stream's task on (the service's future, then
/// the piping of its response body into the stream). Each task gets a [`StreamClock`],
/// which the stream's response body ([`TrackedBody`]) runs while a piece it handed on
/// waits to be taken: hyper asks for the next piece only once the peer's stream and
/// connection windows have room for the last, so only the peer's reading stops the
/// clock. A wait of the stream write timeout ends the task: hyper's stream handles are
/// dropped with it, and h2 resets the stream (`RST_STREAM` `CANCEL`), which frees the
/// data queued for it; the response body, and what it holds of the connection's memory
/// budget, are dropped. The connection and its other streams go on. (hyper offers no
/// other way to reset one stream from outside: its body is not even polled while the
/// window is shut, so an error from the body would never be seen.)
#[derive(Clone)]
struct StreamExecutor {
    timeout: Duration,
    counters: Arc<Counters>,
}

impl<F> hyper::rt::Executor<F> for StreamExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        tokio::spawn(StreamTask {
            inner: Some(fut),
            clock: Arc::new(StreamClock::new()),
            timeout: self.timeout,
            counters: self.counters.clone(),
            timer: None,
        });
    }
}

pin_project_lite::pin_project! {
    /// An HTTP/2 stream's task, ended when its response waits the stream write timeout.
    struct StreamTask<F> {
        #[pin]
        inner: Option<F>,
        clock: Arc<StreamClock>,
        timeout: Duration,
        counters: Arc<Counters>,
        timer: Option<Pin<Box<tokio::time::Sleep>>>,
    }
}

impl<F: Future> Future for StreamTask<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        loop {
            let Some(inner) = this.inner.as_mut().as_pin_mut() else {
                return Poll::Ready(());
            };
            let polled = {
                let _current = CurrentStream::enter(this.clock);
                inner.poll(cx)
            };
            if polled.is_ready() {
                return Poll::Ready(());
            }
            let Some(deadline) = this.clock.deadline(*this.timeout) else {
                // Nothing waits: the next wait starts during a poll of the task.
                return Poll::Pending;
            };
            if deadline <= Instant::now() {
                Counters::add(&this.counters.streams_write_timed_out);
                tracing::debug!(
                    "resetting an HTTP/2 stream: its response waited with no write progress"
                );
                // Before the response body is dropped: it finds why (an audit layer
                // records the response as cut).
                let events = this
                    .clock
                    .events
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .take();
                if let Some(events) = events {
                    events.close(Some(CloseReason::WriteTimeout));
                }
                this.inner.set(None);
                return Poll::Ready(());
            }
            let timer = this
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
            if timer.deadline() != deadline {
                timer.as_mut().reset(deadline);
            }
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
    }
}

/// Serves `service` over TLS on `listener` until the process ends (no graceful
/// shutdown; use [`Server`] for that and for limits).
pub async fn serve<S, B>(listener: TcpListener, tls: TlsAcceptor, service: S) -> io::Result<()>
where
    S: Service<Request<RequestBody>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    Server::new(listener).tls(tls).serve(service).await
}

/// Serves `service` over plain TCP on `listener` (each request still gets its
/// [`PeerAddr`]).
pub async fn serve_plain<S, B>(listener: TcpListener, service: S) -> io::Result<()>
where
    S: Service<Request<RequestBody>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    Server::new(listener).serve(service).await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn clients_are_counted_by_ipv4_address_and_ipv6_network() {
        let key = |ip: &str, prefix| mcp_core::ip_key(ip.parse().unwrap(), prefix).to_string();
        assert_eq!(key("192.0.2.7", 64), "192.0.2.7");
        // An IPv4-mapped IPv6 peer (a dual-stack socket) is its IPv4 address.
        assert_eq!(key("::ffff:192.0.2.7", 64), "192.0.2.7");
        // Every address of one /64 is one client; another /64 is another.
        assert_eq!(key("2001:db8:1:2:aaaa::1", 64), "2001:db8:1:2::");
        assert_eq!(key("2001:db8:1:2:ffff:1:2:3", 64), "2001:db8:1:2::");
        assert_eq!(key("2001:db8:1:3::1", 64), "2001:db8:1:3::");
        assert_eq!(key("2001:db8:1:3::1", 48), "2001:db8:1::");
        assert_eq!(key("2001:db8::1", 128), "2001:db8::1");
        assert_eq!(key("2001:db8::1", 0), "::");
    }

    #[test]
    fn the_budget_refuses_once_full_or_over_and_reopens_at_half() {
        let a = Arc::new(Activity::new(100, None));
        let counters = Arc::new(Counters::default());
        let charge = |a: &Arc<Activity>| Charge {
            activity: a.clone(),
            counters: counters.clone(),
            held: AtomicU64::new(0),
        };
        let first = charge(&a);
        assert!(first.try_take(60));
        assert!(!a.budget_used_up());
        let second = charge(&a);
        // 60 + 50 does not fit: nothing taken, and the connection refuses from now on.
        assert!(!second.try_take(50));
        assert!(a.budget_used_up());
        assert!(second.try_take(30));
        // Bytes given back above half the budget do not reopen it.
        drop(second);
        assert!(a.budget_used_up());
        first.give_back(20);
        assert!(!a.budget_used_up());
        // Response bytes are taken whatever they come to; full is used up.
        first.take(70);
        assert!(a.budget_used_up());
        drop(first);
        assert_eq!(a.used.load(Ordering::Acquire), 0);
        assert!(!a.budget_used_up());
    }

    #[test]
    fn a_client_slot_is_released_on_drop_and_exempt_peers_take_none() {
        let proxies = TrustedProxies::new(["10.0.0.0/8".parse().unwrap()]);
        let limit = ConnectionLimit::new(10).per_client(2).exempt(proxies);
        let ip: IpAddr = "2001:db8::1".parse().unwrap();
        let same_net: IpAddr = "2001:db8::2".parse().unwrap();
        let a = limit.client_slot(ip).unwrap().unwrap();
        let _b = limit.client_slot(same_net).unwrap().unwrap();
        assert!(limit.client_slot(ip).is_err());
        drop(a);
        assert!(limit.client_slot(same_net).unwrap().is_some());
        for _ in 0..5 {
            assert!(
                limit
                    .client_slot("10.1.2.3".parse().unwrap())
                    .unwrap()
                    .is_none()
            );
        }
        drop(_b);
        assert!(limit.clients.lock().unwrap().len() <= 1);
    }
}
