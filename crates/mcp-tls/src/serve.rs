//! The accept loop: TCP (or TLS over TCP) to HTTP/1.1 and HTTP/2 for any tower or hyper
//! service, axum's `Router` included.
//!
//! Each request carries the connection's [`PeerAddr`] and, over TLS, its [`TlsInfo`] in
//! its extensions. The loop caps concurrent connections (a semaphore: beyond the cap,
//! the loop holds one accepted connection until a place is free and stops accepting, so
//! the rest wait in the kernel's listen backlog), bounds the TLS handshake in time,
//! closes connections that stay idle (no request in progress, the first included) past
//! the idle timeout, and on shutdown stops accepting, asks every connection to finish (HTTP/1.1 closes
//! after the response in flight, HTTP/2 sends GOAWAY) and waits for them up to the drain
//! timeout.
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

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use mcp_core::{PeerAddr, TlsInfo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;
use tower_service::Service;

use crate::acceptor::TlsAcceptor;
use crate::config::ServerOptions;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type ShutdownSignal = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Wraps a per-connection service to put the connection's [`PeerAddr`] and (over TLS)
/// [`TlsInfo`] into every request's extensions.
#[derive(Clone)]
pub struct ConnectionInfo<S> {
    inner: S,
    peer: PeerAddr,
    tls: Option<TlsInfo>,
}

impl<S> ConnectionInfo<S> {
    /// Wraps `inner` for a connection from `peer`, with its TLS facts if any.
    pub fn new(inner: S, peer: SocketAddr, tls: Option<TlsInfo>) -> Self {
        Self {
            inner,
            peer: PeerAddr(peer),
            tls,
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for ConnectionInfo<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionInfo")
            .field("inner", &self.inner)
            .field("peer", &self.peer)
            .field("tls", &self.tls)
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
            req.extensions_mut().insert(tls.clone());
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
    counters: Arc<Counters>,
}

/// Counts of what the accept loops sharing a [`ConnectionLimit`] did.
#[derive(Default)]
struct Counters {
    accepted: AtomicU64,
    handshake_failed: AtomicU64,
    handshake_timed_out: AtomicU64,
    idle_closed: AtomicU64,
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
    /// Connections accepted (given a place).
    pub accepted: u64,
    /// TLS handshakes that failed (a plain-text client, no common version or cipher
    /// suite, a rejected client certificate, ...).
    pub tls_handshake_failed: u64,
    /// TLS handshakes not completed within the handshake timeout.
    pub tls_handshake_timed_out: u64,
    /// Connections closed because they had no request in progress for the idle timeout.
    pub idle_closed: u64,
}

impl ConnectionLimit {
    /// A limit of `max` open connections (clamped to 1..=536,870,911).
    pub fn new(max: usize) -> Self {
        let max = max.clamp(1, (u32::MAX >> 3) as usize);
        Self {
            permits: Arc::new(Semaphore::new(max)),
            max,
            counters: Arc::default(),
        }
    }

    /// Open connections, and counts of accepts, failed TLS handshakes and idle closes,
    /// over every loop sharing this limit.
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
            accepted: c.accepted.load(Ordering::Relaxed),
            tls_handshake_failed: c.handshake_failed.load(Ordering::Relaxed),
            tls_handshake_timed_out: c.handshake_timed_out.load(Ordering::Relaxed),
            idle_closed: c.idle_closed.load(Ordering::Relaxed),
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
}

impl fmt::Debug for ConnectionLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionLimit")
            .field("max", &self.max)
            .field("available", &self.available())
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
        S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
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
        let limit = limit.unwrap_or_else(|| ConnectionLimit::new(options.max_connections));
        let permits = limit.permits;
        let counters = limit.counters;
        // Every connection task holds a clone of `alive`: when the last is gone, this
        // loop's connections have all finished.
        let (alive, mut all_done) = tokio::sync::mpsc::channel::<()>(1);
        // A zero timeout (which `ServerOptions::validate` refuses) is taken as the default.
        let defaults = ServerOptions::default();
        let or_default = |t: Duration, default: Duration| if t.is_zero() { default } else { t };
        let handshake_timeout = or_default(options.handshake_timeout, defaults.handshake_timeout);
        let idle_timeout = or_default(options.idle_timeout, defaults.idle_timeout);
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(idle_timeout);
        builder.http2().timer(TokioTimer::new());
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
                let _alive = alive;
                match tls {
                    None => {
                        let svc = ConnectionInfo::new(service, peer, None);
                        serve_connection(&builder, tcp, svc, idle_timeout, stop, &counters).await;
                    }
                    Some(acceptor) => {
                        let shake =
                            handshake(&acceptor, tcp, handshake_timeout, stop.clone(), &counters);
                        match shake.await {
                            Some((stream, info)) => {
                                let svc = ConnectionInfo::new(service, peer, Some(info));
                                serve_connection(
                                    &builder,
                                    stream,
                                    svc,
                                    idle_timeout,
                                    stop,
                                    &counters,
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
) -> Option<(tokio_rustls::server::TlsStream<TcpStream>, TlsInfo)> {
    tokio::select! {
        r = tokio::time::timeout(timeout, acceptor.accept(tcp)) => match r {
            Ok(Ok(ok)) => Some(ok),
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

/// Serves one connection until it ends, the loop stops, or it stays idle (no request in
/// progress) for `idle_timeout`.
async fn serve_connection<IO, S, B>(
    builder: &auto::Builder<TokioExecutor>,
    io: IO,
    service: S,
    idle_timeout: Duration,
    mut stop: watch::Receiver<bool>,
    counters: &Counters,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let activity = Arc::new(Activity::new());
    let service = Tracking {
        inner: service,
        activity: activity.clone(),
    };
    let conn =
        builder.serve_connection_with_upgrades(TokioIo::new(io), TowerToHyperService::new(service));
    let mut conn = std::pin::pin!(conn);
    // Once asked to finish (idle or stopping), the connection ends by itself: an idle
    // HTTP/1.1 connection or one still reading its first bytes at once, HTTP/2 after its
    // GOAWAY once no stream is open.
    let mut finishing = false;
    let result = loop {
        let check_at = activity
            .idle_deadline(idle_timeout)
            .unwrap_or_else(|| Instant::now() + idle_timeout);
        tokio::select! {
            r = conn.as_mut() => break r,
            () = stopped(&mut stop), if !finishing => {
                conn.as_mut().graceful_shutdown();
                break conn.await;
            }
            () = tokio::time::sleep_until(check_at), if !finishing => {
                if activity.idle_deadline(idle_timeout).is_some_and(|d| d <= Instant::now()) {
                    tracing::debug!("closing an idle connection");
                    Counters::add(&counters.idle_closed);
                    conn.as_mut().graceful_shutdown();
                    finishing = true;
                }
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// A connection's requests in progress and when it last had none.
struct Activity {
    start: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds from `start` to when the last request in progress finished.
    idle_since_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
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
        let now = u64::try_from(a.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        a.idle_since_ms.fetch_max(now, Ordering::AcqRel);
        a.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Counts a connection's requests in progress (see [`Activity`]).
#[derive(Clone)]
struct Tracking<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for Tracking<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
{
    type Response = Response<TrackedBody<ResB>>;
    type Error = S::Error;
    type Future = TrackingFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        TrackingFuture {
            guard: Some(InFlight::new(self.activity.clone())),
            inner: self.inner.call(req),
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future; its [`InFlight`] moves into the response body.
    struct TrackingFuture<F> {
        #[pin]
        inner: F,
        guard: Option<InFlight>,
    }
}

impl<F, B, E> Future for TrackingFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<TrackedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let res = ready!(this.inner.poll(cx));
        let guard = this.guard.take();
        Poll::Ready(res.map(|r| r.map(|body| TrackedBody { inner: body, guard })))
    }
}

pin_project_lite::pin_project! {
    /// A response body that ends its request's [`InFlight`] when it ends or is dropped.
    struct TrackedBody<B> {
        #[pin]
        inner: B,
        guard: Option<InFlight>,
    }
}

impl<B: http_body::Body> http_body::Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        if frame.is_none() {
            this.guard.take();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Serves `service` over TLS on `listener` until the process ends (no graceful
/// shutdown; use [`Server`] for that and for limits).
pub async fn serve<S, B>(listener: TcpListener, tls: TlsAcceptor, service: S) -> io::Result<()>
where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
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
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    Server::new(listener).serve(service).await
}
