//! HTTP/2 clients that fake write progress: a response whose body the client does not
//! take (its stream or connection window kept shut) has its stream reset (`RST_STREAM`
//! `CANCEL`) after the stream write timeout, whatever cheap frames the client sends
//! meanwhile (PING, SETTINGS, WINDOW_UPDATE of one byte, new requests); the connection
//! and its other streams go on, and the memory the stalled response held is given back.
//! A slow client that does take its response is not cut. The cap on concurrent streams
//! per connection.
//!
//! The client here writes raw frames, so that nothing (no library's flow control or
//! keep-alive) sends a frame the test did not ask for. It reads everything the server
//! sends (the server's socket never blocks): only HTTP/2 flow control holds the responses.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::{Router, body::Body, routing::get};
use bytes::Bytes;
use common::*;
use futures_util::StreamExt;
use mcp_tls::{ConnectionLimit, ConnectionStats, TlsAcceptor};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

const MIB: usize = 1024 * 1024;

/// Concurrent calls of `/slow` now, and the most seen.
#[derive(Default)]
struct Gauge {
    now: AtomicUsize,
    max: AtomicUsize,
}

/// `/huge`: 8 MiB in one piece; `/mib`: 1 MiB in 16 KiB pieces; `/events`: an endless
/// SSE stream of 8 KiB events every 5 ms; `/slow`: an empty response after 300 ms,
/// counted in `gauge`; `/echo`.
fn router(gauge: Arc<Gauge>) -> Router {
    let huge = Bytes::from(vec![b'h'; 8 * MIB]);
    Router::new()
        .route("/huge", get(move || async move { huge.clone() }))
        .route(
            "/mib",
            get(|| async {
                let piece = Bytes::from(vec![b'm'; 16 * 1024]);
                let s = futures_util::stream::iter(0..64)
                    .map(move |_| Ok::<_, std::io::Error>(piece.clone()));
                Body::from_stream(s)
            }),
        )
        .route(
            "/events",
            get(|| async {
                let event = Bytes::from(format!("data: {}\n\n", "e".repeat(8 * 1024)));
                let s = futures_util::stream::repeat(()).then(move |()| {
                    let event = event.clone();
                    async move {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        Ok::<_, std::io::Error>(event)
                    }
                });
                axum::response::Response::builder()
                    .header("content-type", "text/event-stream")
                    .body(Body::from_stream(s))
                    .unwrap()
            }),
        )
        .route(
            "/slow",
            get(move || {
                let gauge = gauge.clone();
                async move {
                    let now = gauge.now.fetch_add(1, Ordering::SeqCst) + 1;
                    gauge.max.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    gauge.now.fetch_sub(1, Ordering::SeqCst);
                    "slow"
                }
            }),
        )
        .merge(echo_router())
}

/// A server with a shared limit (to read its stats), a 500 ms write timeout and `f`.
async fn start_server(
    tls: bool,
    limit: &ConnectionLimit,
    f: impl FnOnce(mcp_tls::Server) -> mcp_tls::Server,
) -> (Option<Ca>, Running) {
    let limit = limit.clone();
    let configure = move |s: mcp_tls::Server| {
        f(s.connection_limit(limit)
            .write_timeout(Duration::from_millis(500)))
    };
    let app = router(Arc::default());
    if tls {
        let ca = Ca::new("CA");
        let (cert, key) = ca.server("s");
        let files = Files::new(&cert, &key);
        let acceptor = TlsAcceptor::from_config(&files.config()).unwrap();
        let server = start_with(Some(acceptor), configure, app).await;
        (Some(ca), server)
    } else {
        (None, start_with(None, configure, app).await)
    }
}

/// Waits (up to 20 s) until the limit's stats satisfy `f`.
async fn stats_reach(limit: &ConnectionLimit, what: &str, f: impl Fn(ConnectionStats) -> bool) {
    for _ in 0..800 {
        if f(limit.stats()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{what}: {:?}", limit.stats());
}

const DATA: u8 = 0;
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const PING: u8 = 6;
const GOAWAY: u8 = 7;
const WINDOW_UPDATE: u8 = 8;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;

fn frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, ty, flags];
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// What the client has seen of the server.
#[derive(Default)]
struct Seen {
    /// DATA bytes per stream.
    data: HashMap<u32, usize>,
    /// Streams ended by the server (END_STREAM on DATA or HEADERS).
    ended: Vec<u32>,
    /// RST_STREAM: (stream, error code).
    resets: Vec<(u32, u32)>,
    /// Settings the server sent (not ACKs), in order.
    settings: Vec<(u16, u32)>,
    goaway: bool,
}

type Writer = Arc<tokio::sync::Mutex<Box<dyn AsyncWrite + Unpin + Send>>>;

/// A raw HTTP/2 client: writes only the frames it is asked for, plus SETTINGS and PING
/// ACKs and (when `replenish`) WINDOW_UPDATEs giving back what arrived on the connection and on
/// the streams in `open_streams`.
struct Raw {
    w: Writer,
    seen: Arc<Mutex<Seen>>,
    open_streams: Arc<Mutex<Vec<u32>>>,
    /// Ends when the server closes the connection.
    reader: tokio::task::JoinHandle<()>,
}

impl Raw {
    /// Connection preface and SETTINGS with this initial stream window.
    async fn connect<IO>(io: IO, initial_window: u32, replenish: bool) -> Self
    where
        IO: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (mut r, w) = tokio::io::split(io);
        let w: Writer = Arc::new(tokio::sync::Mutex::new(Box::new(w)));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let open_streams = Arc::new(Mutex::new(Vec::new()));
        let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        let mut settings = SETTINGS_INITIAL_WINDOW_SIZE.to_be_bytes().to_vec();
        settings.extend_from_slice(&initial_window.to_be_bytes());
        hello.extend(frame(SETTINGS, 0, 0, &settings));
        w.lock().await.write_all(&hello).await.unwrap();
        let reader = {
            let (w, seen, open) = (w.clone(), seen.clone(), open_streams.clone());
            tokio::spawn(async move {
                let mut head = [0u8; 9];
                loop {
                    if r.read_exact(&mut head).await.is_err() {
                        return;
                    }
                    let len = usize::from(head[0]) << 16
                        | usize::from(head[1]) << 8
                        | usize::from(head[2]);
                    let (ty, flags) = (head[3], head[4]);
                    let stream = u32::from_be_bytes(head[5..9].try_into().unwrap()) & 0x7fff_ffff;
                    let mut payload = vec![0u8; len];
                    if r.read_exact(&mut payload).await.is_err() {
                        return;
                    }
                    let mut reply = Vec::new();
                    {
                        let mut seen = seen.lock().unwrap();
                        match ty {
                            DATA => {
                                *seen.data.entry(stream).or_default() += len;
                                if flags & END_STREAM != 0 {
                                    seen.ended.push(stream);
                                }
                                if replenish && len > 0 {
                                    let inc = (len as u32).to_be_bytes();
                                    reply.extend(frame(WINDOW_UPDATE, 0, 0, &inc));
                                    if open.lock().unwrap().contains(&stream) {
                                        reply.extend(frame(WINDOW_UPDATE, 0, stream, &inc));
                                    }
                                }
                            }
                            HEADERS if flags & END_STREAM != 0 => seen.ended.push(stream),
                            RST_STREAM => seen.resets.push((
                                stream,
                                u32::from_be_bytes(payload[..4].try_into().unwrap()),
                            )),
                            SETTINGS if flags & ACK == 0 => {
                                for p in payload.chunks_exact(6) {
                                    let id = u16::from_be_bytes([p[0], p[1]]);
                                    let v = u32::from_be_bytes(p[2..6].try_into().unwrap());
                                    seen.settings.push((id, v));
                                }
                                reply.extend(frame(SETTINGS, ACK, 0, &[]));
                            }
                            // The server's graceful shutdown pings after its GOAWAY.
                            PING if flags & ACK == 0 => {
                                reply.extend(frame(PING, ACK, 0, &payload));
                            }
                            GOAWAY => seen.goaway = true,
                            _ => {}
                        }
                    }
                    if !reply.is_empty() && w.lock().await.write_all(&reply).await.is_err() {
                        return;
                    }
                }
            })
        };
        Self {
            w,
            seen,
            open_streams,
            reader,
        }
    }

    async fn send(&self, bytes: &[u8]) {
        // The server may have closed the connection already.
        let _ = self.w.lock().await.write_all(bytes).await;
    }

    /// `GET path` on `stream` (odd, increasing). With `open`, its window is given back
    /// as its data arrives.
    async fn get(&self, stream: u32, path: &str, open: bool) {
        if open {
            self.open_streams.lock().unwrap().push(stream);
        }
        // HPACK: :method GET, :scheme http (static table), :path and :authority as
        // literals without indexing with indexed names.
        let mut block = vec![0x82, 0x86, 0x04, path.len() as u8];
        block.extend_from_slice(path.as_bytes());
        block.extend_from_slice(&[0x01, 1, b'x']);
        self.send(&frame(HEADERS, END_HEADERS | END_STREAM, stream, &block))
            .await;
    }

    async fn window_update(&self, stream: u32, inc: u32) {
        self.send(&frame(WINDOW_UPDATE, 0, stream, &inc.to_be_bytes()))
            .await;
    }

    fn data(&self, stream: u32) -> usize {
        self.seen
            .lock()
            .unwrap()
            .data
            .get(&stream)
            .copied()
            .unwrap_or(0)
    }

    /// Waits up to 20 s for `stream` to have at least `n` bytes of data.
    async fn data_reaches(&self, stream: u32, n: usize) {
        for _ in 0..800 {
            if self.data(stream) >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!(
            "stream {stream}: {} bytes of data, expected {n}",
            self.data(stream)
        );
    }

    fn closed(&self) -> bool {
        self.reader.is_finished()
    }
}

async fn tls_connect(addr: SocketAddr, ca: &Ca) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut cfg = (*client_config(&ca.der(), BOTH, None)).clone();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap()
}

async fn raw(addr: SocketAddr, ca: Option<&Ca>, initial_window: u32) -> Raw {
    match ca {
        None => {
            Raw::connect(
                TcpStream::connect(addr).await.unwrap(),
                initial_window,
                true,
            )
            .await
        }
        Some(ca) => Raw::connect(tls_connect(addr, ca).await, initial_window, true).await,
    }
}

/// What the attacking client does every 100 ms while its response waits.
#[derive(Debug, Clone, Copy)]
enum Fake {
    /// A PING (answered with a PING ACK).
    Ping,
    /// An empty SETTINGS frame (answered with a SETTINGS ACK).
    Settings,
    /// A WINDOW_UPDATE of one byte on the stalled stream and on the connection.
    OneByteWindow,
    /// A new request for a small response (headers and a little data of another stream).
    NewRequest,
}

const CANCEL: u32 = 0x8;
const REFUSED_STREAM: u32 = 0x7;

impl Raw {
    /// The error code of the server's RST_STREAM on `stream`, if any.
    fn reset_code(&self, stream: u32) -> Option<u32> {
        let seen = self.seen.lock().unwrap();
        seen.resets
            .iter()
            .find(|(s, _)| *s == stream)
            .map(|(_, c)| *c)
    }

    /// Waits up to 20 s for `stream` to end or be reset; its reset code, if reset.
    async fn outcome(&self, stream: u32) -> Option<u32> {
        for _ in 0..800 {
            if let Some(code) = self.reset_code(stream) {
                return Some(code);
            }
            if self.seen.lock().unwrap().ended.contains(&stream) {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("stream {stream} neither ended nor reset in 20 s");
    }
}

/// Runs `fake` every 100 ms on `c` (whose stalled stream is 1) until the server resets
/// stream 1 or 20 s pass; its reset code, if reset. Panics if the server closes the
/// connection instead.
async fn fake_progress_until_reset(c: &Raw, fake: Fake) -> Option<u32> {
    let mut next_stream = 3;
    for _ in 0..200 {
        assert!(!c.closed(), "{fake:?}: the whole connection was closed");
        if let Some(code) = c.reset_code(1) {
            return Some(code);
        }
        match fake {
            Fake::Ping => c.send(&frame(PING, 0, 0, b"12345678")).await,
            Fake::Settings => c.send(&frame(SETTINGS, 0, 0, &[])).await,
            Fake::OneByteWindow => {
                c.window_update(1, 1).await;
                c.window_update(0, 1).await;
            }
            Fake::NewRequest => {
                c.get(next_stream, "/echo", true).await;
                next_stream += 2;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.reset_code(1)
}

/// Asks for 8 MiB with a 16 KiB stream window never given back, then sends `fake` every
/// 100 ms; the server must reset that stream (CANCEL) after the write timeout and keep
/// the connection (plain and TLS).
async fn stalled_while_faking(fake: Fake) {
    for tls in [false, true] {
        let limit = ConnectionLimit::new(100);
        let (ca, server) = start_server(tls, &limit, |s| s).await;
        let c = raw(server.addr, ca.as_ref(), 16 * 1024).await;
        c.get(1, "/huge", false).await;
        c.data_reaches(1, 16 * 1024).await;
        assert_eq!(
            fake_progress_until_reset(&c, fake).await,
            Some(CANCEL),
            "{fake:?} (tls: {tls}): a stalled HTTP/2 response was not reset 20 s past a \
             500 ms write timeout; {:?}",
            limit.stats()
        );
        stats_reach(&limit, "the reset was not counted", |s| {
            s.streams_write_timed_out == 1 && s.write_timed_out == 0 && s.open == 1
        })
        .await;
        assert!(c.data(1) < 8 * MIB);
        // The connection serves on.
        c.get(101, "/echo", true).await;
        assert_eq!(
            c.outcome(101).await,
            None,
            "tls: {tls}: {:?}",
            limit.stats()
        );
        assert!(!c.closed());
        server.shutdown().await;
    }
}

#[tokio::test]
async fn pings_do_not_keep_a_stalled_http2_response_open() {
    stalled_while_faking(Fake::Ping).await;
}

#[tokio::test]
async fn settings_frames_do_not_keep_a_stalled_http2_response_open() {
    stalled_while_faking(Fake::Settings).await;
}

#[tokio::test]
async fn one_byte_window_updates_do_not_keep_a_stalled_http2_response_open() {
    stalled_while_faking(Fake::OneByteWindow).await;
}

#[tokio::test]
async fn new_requests_do_not_keep_a_stalled_http2_response_open() {
    stalled_while_faking(Fake::NewRequest).await;
}

#[tokio::test]
async fn a_shut_connection_window_or_a_zero_stream_window_is_a_stall() {
    let limit = ConnectionLimit::new(100);
    let (_, server) = start_server(false, &limit, |s| s).await;
    // A stream window of 0 from the start: not one byte of the body can be sent.
    let zero = Raw::connect(TcpStream::connect(server.addr).await.unwrap(), 0, false).await;
    zero.get(1, "/huge", false).await;
    assert_eq!(
        fake_progress_until_reset(&zero, Fake::Ping).await,
        Some(CANCEL),
        "a response with a zero window was not reset: {:?}",
        limit.stats()
    );
    // A large stream window but the connection's (65,535 bytes) never given back.
    let conn = Raw::connect(
        TcpStream::connect(server.addr).await.unwrap(),
        1 << 30,
        false,
    )
    .await;
    conn.get(1, "/huge", false).await;
    conn.data_reaches(1, 65_535).await;
    assert_eq!(
        fake_progress_until_reset(&conn, Fake::Ping).await,
        Some(CANCEL),
        "a response held by the connection window was not reset: {:?}",
        limit.stats()
    );
    stats_reach(&limit, "the resets were not counted", |s| {
        s.streams_write_timed_out == 2 && s.write_timed_out == 0
    })
    .await;
    assert!(!zero.closed() && !conn.closed());
    server.shutdown().await;
}

#[tokio::test]
async fn a_stalled_stream_is_reset_alone_while_another_flows() {
    for tls in [false, true] {
        let limit = ConnectionLimit::new(100);
        // Stream 3 never ends: the shutdown at the end drains it for 1 s.
        let (ca, server) =
            start_server(tls, &limit, |s| s.drain_timeout(Duration::from_secs(1))).await;
        // Attack: stream 1 (8 MiB) is never given window; stream 3, an endless event
        // stream, is read and its window given back as fast as it comes.
        let c = raw(server.addr, ca.as_ref(), 16 * 1024).await;
        c.get(1, "/huge", false).await;
        c.data_reaches(1, 16 * 1024).await;
        c.get(3, "/events", true).await;
        c.data_reaches(3, 64 * 1024).await;
        let mut reset = None;
        for _ in 0..200 {
            assert!(
                !c.closed(),
                "tls: {tls}: the whole connection was closed: {:?}",
                limit.stats()
            );
            reset = c.reset_code(1);
            if reset.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            reset,
            Some(CANCEL),
            "tls: {tls}: stream 1 stalled for 20 s while stream 3 flowed ({} bytes), past a \
             500 ms write timeout: {:?}",
            c.data(3),
            limit.stats()
        );
        // Stream 3 flows on after the reset, on the same connection.
        let before = c.data(3);
        c.data_reaches(3, before + 256 * 1024).await;
        assert_eq!(c.reset_code(3), None);
        assert!(!c.closed());
        let s = limit.stats();
        assert_eq!(
            (s.streams_write_timed_out, s.write_timed_out),
            (1, 0),
            "{s:?}"
        );
        server.shutdown().await;
    }
}

#[tokio::test]
async fn a_reset_stream_gives_its_memory_back() {
    let limit = ConnectionLimit::new(100);
    // A budget of 1 MiB, which the 8 MiB response held counts over.
    let (_, server) = start_server(false, &limit, |s| s.connection_memory_bytes(MIB as u64)).await;
    let c = Raw::connect(
        TcpStream::connect(server.addr).await.unwrap(),
        16 * 1024,
        true,
    )
    .await;
    c.get(1, "/huge", false).await;
    c.data_reaches(1, 16 * 1024).await;
    // While stream 1 holds the budget, a new stream is refused.
    c.get(3, "/echo", true).await;
    assert_eq!(
        c.outcome(3).await,
        Some(REFUSED_STREAM),
        "{:?}",
        limit.stats()
    );
    // Stream 1 is reset after the write timeout, and what it held is free again.
    assert_eq!(c.outcome(1).await, Some(CANCEL), "{:?}", limit.stats());
    c.get(5, "/echo", true).await;
    assert_eq!(c.outcome(5).await, None, "{:?}", limit.stats());
    assert!(!c.closed());
    let s = limit.stats();
    assert_eq!(
        (s.streams_write_timed_out, s.write_timed_out),
        (1, 0),
        "{s:?}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_slow_http2_client_that_takes_its_response_is_not_cut() {
    let limit = ConnectionLimit::new(100);
    let (_, server) = start_server(false, &limit, |s| s).await;
    // 1 MiB through a 16 KiB stream window, given back every 100 ms (well within the
    // 500 ms write timeout), while pinging.
    let c = Raw::connect(
        TcpStream::connect(server.addr).await.unwrap(),
        16 * 1024,
        true,
    )
    .await;
    c.get(1, "/mib", false).await;
    let mut given = 0;
    for _ in 0..2000 {
        assert!(!c.closed(), "a slow reader was cut: {:?}", limit.stats());
        if c.seen.lock().unwrap().ended.contains(&1) {
            break;
        }
        let got = c.data(1);
        if got > given {
            c.window_update(1, (got - given) as u32).await;
            given = got;
        }
        c.send(&frame(PING, 0, 0, b"12345678")).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(c.data(1), MIB, "{:?}", limit.stats());
    assert!(c.seen.lock().unwrap().ended.contains(&1));
    assert!(!c.closed());
    let s = limit.stats();
    assert_eq!(
        (s.write_timed_out, s.streams_write_timed_out),
        (0, 0),
        "{s:?}"
    );
    server.shutdown().await;
}

/// The server's SETTINGS_MAX_CONCURRENT_STREAMS, read on a fresh connection.
async fn advertised_streams(c: &Raw) -> Option<u32> {
    for _ in 0..800 {
        {
            let seen = c.seen.lock().unwrap();
            if !seen.settings.is_empty() {
                return seen
                    .settings
                    .iter()
                    .find(|(id, _)| *id == SETTINGS_MAX_CONCURRENT_STREAMS)
                    .map(|(_, v)| *v);
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("no SETTINGS from the server");
}

/// Opens streams 1, 3, ... (`n` of them) for `/slow` at once, and waits for each to end
/// or be reset; returns (ended, refused).
async fn open_at_once(c: &Raw, n: u32) -> (usize, usize) {
    for i in 0..n {
        c.get(1 + 2 * i, "/slow", true).await;
    }
    for _ in 0..800 {
        {
            let seen = c.seen.lock().unwrap();
            if seen.ended.len() + seen.resets.len() >= n as usize {
                let refused = seen.resets.iter().filter(|(_, code)| *code == 0x7).count();
                return (seen.ended.len(), refused);
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("streams neither ended nor reset");
}

#[tokio::test]
async fn the_default_stream_cap_is_advertised_and_enforced() {
    let limit = ConnectionLimit::new(100);
    let (_, server) = start_server(false, &limit, |s| s).await;
    let c = Raw::connect(TcpStream::connect(server.addr).await.unwrap(), 65_535, true).await;
    assert_eq!(advertised_streams(&c).await, Some(16));
    // Attack: 24 concurrent requests on one connection, the setting ignored.
    let (ended, refused) = open_at_once(&c, 24).await;
    assert_eq!((ended, refused), (16, 8));
    assert!(!c.seen.lock().unwrap().goaway);
    server.shutdown().await;
}

#[tokio::test]
async fn a_configured_stream_cap_bounds_concurrent_requests() {
    let gauge = Arc::new(Gauge::default());
    let server = start_with(
        None,
        |s| {
            s.max_concurrent_streams(4)
                .write_timeout(Duration::from_millis(500))
        },
        router(gauge.clone()),
    )
    .await;
    // A well-behaved client (hyper's) queues what the cap refuses: 20 concurrent
    // requests on one connection, at most 4 in progress at once, all served.
    let (send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(TcpStream::connect(server.addr).await.unwrap()),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let get = |path: &str| {
        http::Request::get(format!("http://x{path}"))
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap()
    };
    // One request first, so that the server's SETTINGS are in.
    let mut first = send.clone();
    assert_eq!(
        first.send_request(get("/echo")).await.unwrap().status(),
        200
    );
    let mut calls = Vec::new();
    for _ in 0..20 {
        let mut send = send.clone();
        let req = get("/slow");
        calls.push(tokio::spawn(async move {
            send.send_request(req).await.map(|r| r.status())
        }));
    }
    for c in calls {
        assert_eq!(c.await.unwrap().unwrap(), 200);
    }
    let max = gauge.max.load(Ordering::SeqCst);
    assert!((1..=4).contains(&max), "{max} requests in progress at once");
    // A raw client that ignores the setting gets the excess refused.
    let c = Raw::connect(TcpStream::connect(server.addr).await.unwrap(), 65_535, true).await;
    assert_eq!(advertised_streams(&c).await, Some(4));
    assert_eq!(open_at_once(&c, 6).await, (4, 2));
    server.shutdown().await;
}
