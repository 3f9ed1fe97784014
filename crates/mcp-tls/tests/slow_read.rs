//! Slow readers: clients that ask for responses and never take them are closed after the
//! write timeout (HTTP/1.1 plain and TLS, SSE streams; an HTTP/2 stream is reset alone,
//! and its connection then closed as idle), while slow but reading
//! clients and quiet streams are not; the per-client-address connection cap; the cap on
//! requests per connection.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use axum::{Router, body::Body, routing::get};
use bytes::Bytes;
use common::*;
use futures_util::StreamExt;
use mcp_tls::{ConnectionLimit, ConnectionStats, TlsAcceptor};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const MIB: usize = 1024 * 1024;

/// `/big`: 1 MiB in one piece; `/huge`: 8 MiB in one piece; `/chunks`: 16 MiB in 64 KiB
/// pieces; `/events`: an endless SSE stream of 8 KiB events every 5 ms; `/quiet`: three
/// small events 1.2 s apart; `/echo`.
fn router() -> Router {
    fn sse(body: Body) -> axum::response::Response {
        axum::response::Response::builder()
            .header("content-type", "text/event-stream")
            .body(body)
            .unwrap()
    }
    let big = Bytes::from(vec![b'a'; MIB]);
    let huge = Bytes::from(vec![b'h'; 8 * MIB]);
    Router::new()
        .route("/big", get(move || async move { big.clone() }))
        .route("/huge", get(move || async move { huge.clone() }))
        .route(
            "/chunks",
            get(|| async {
                let piece = Bytes::from(vec![b'c'; 64 * 1024]);
                let s = futures_util::stream::iter(0..256)
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
                sse(Body::from_stream(s))
            }),
        )
        .route(
            "/quiet",
            get(|| async {
                let s = futures_util::stream::iter(0..3).then(|i| async move {
                    if i > 0 {
                        tokio::time::sleep(Duration::from_millis(1200)).await;
                    }
                    Ok::<_, std::io::Error>(Bytes::from(format!("data: {i}\n\n")))
                });
                sse(Body::from_stream(s))
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
    if tls {
        let ca = Ca::new("CA");
        let (cert, key) = ca.server("s");
        let files = Files::new(&cert, &key);
        let acceptor = TlsAcceptor::from_config(&files.config()).unwrap();
        let server = start_with(Some(acceptor), configure, router()).await;
        (Some(ca), server)
    } else {
        (None, start_with(None, configure, router()).await)
    }
}

/// A TCP connection to `addr` from the loopback address `from` (e.g. 127.0.0.2), with a
/// small receive buffer (so that a client that does not read stalls the server soon).
async fn connect_from(addr: SocketAddr, from: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    socket.connect(addr).await.unwrap()
}

async fn tls_connect(
    tcp: TcpStream,
    ca: &Ca,
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut cfg = (*client_config(&ca.der(), BOTH, None)).clone();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap()
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

/// Reads until the server closes `s` (EOF or reset); fails if still open after 20 s.
async fn closed_by_server(mut s: impl AsyncRead + Unpin, what: &str) {
    let mut buf = vec![0u8; 64 * 1024];
    let r = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(r.is_ok(), "{what}");
}

/// Sends `n` pipelined requests for `path` and does not read.
async fn pipeline(s: &mut (impl AsyncWrite + Unpin), path: &str, n: usize) {
    let one = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
    // Written in the background of the server's responses: the server reads one
    // request at a time, so the writes may block once its buffers are full.
    let all = one.repeat(n);
    let _ = tokio::time::timeout(Duration::from_secs(5), s.write_all(all.as_bytes())).await;
}

#[tokio::test]
async fn http1_pipelined_requests_never_read_are_closed_after_the_write_timeout() {
    for tls in [false, true] {
        let limit = ConnectionLimit::new(100);
        let (ca, server) = start_server(tls, &limit, |s| s).await;
        // Attack: 32 requests for 1 MiB each, pipelined on each of three connections,
        // and not one byte read.
        let mut held = Vec::new();
        for from in ["127.0.0.2", "127.0.0.3", "127.0.0.4"] {
            let tcp = connect_from(server.addr, from).await;
            match &ca {
                None => {
                    let mut tcp = tcp;
                    pipeline(&mut tcp, "/big", 32).await;
                    held.push(Box::new(tcp) as Box<dyn AsyncRead + Unpin + Send>);
                }
                Some(ca) => {
                    let mut s = tls_connect(tcp, ca, &[b"http/1.1"]).await;
                    pipeline(&mut s, "/big", 32).await;
                    held.push(Box::new(s));
                }
            }
        }
        stats_reach(&limit, "the stalled connections were kept open", |s| {
            s.write_timed_out == 3 && s.open == 0
        })
        .await;
        for s in held {
            closed_by_server(s, "a stalled connection is still open").await;
        }
        server.shutdown().await;
    }
}

/// An HTTP/2 connection over `io`: its sender and its connection task.
async fn h2<IO>(
    io: IO,
) -> (
    hyper::client::conn::http2::SendRequest<http_body_util::Empty<Bytes>>,
    tokio::task::JoinHandle<hyper::Result<()>>,
)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(io),
    )
    .await
    .unwrap();
    (send, tokio::spawn(conn))
}

fn get_req(path: &str) -> http::Request<http_body_util::Empty<Bytes>> {
    http::Request::get(format!("http://x{path}"))
        .body(http_body_util::Empty::new())
        .unwrap()
}

#[tokio::test]
async fn http2_streams_whose_window_stays_shut_are_reset_after_the_write_timeout() {
    for tls in [false, true] {
        let limit = ConnectionLimit::new(100);
        // A short idle timeout: once its stream is reset, a connection is idle.
        let (ca, server) =
            start_server(tls, &limit, |s| s.idle_timeout(Duration::from_millis(500))).await;
        // Attack: responses larger than the client's flow-control window, whose bodies
        // the client never reads (so it never opens its window again): a streamed body
        // and one in a single piece, each on a connection of its own.
        let mut held = Vec::new();
        for path in ["/chunks", "/huge", "/events"] {
            let tcp = TcpStream::connect(server.addr).await.unwrap();
            let (mut send, conn) = match &ca {
                None => h2(tcp).await,
                Some(ca) => h2(tls_connect(tcp, ca, &[b"h2"]).await).await,
            };
            let resp = send.send_request(get_req(path)).await.unwrap();
            assert_eq!(resp.status(), 200);
            held.push((send, resp, conn));
        }
        // Each stalled stream is reset (its connection is not closed for it), then its
        // connection, with nothing in progress, is closed as idle.
        stats_reach(&limit, "the stalled HTTP/2 streams were kept open", |s| {
            s.streams_write_timed_out == 3 && s.idle_closed == 3 && s.open == 0
        })
        .await;
        assert_eq!(limit.stats().write_timed_out, 0, "{:?}", limit.stats());
        for (_send, resp, conn) in held {
            // The body ends with the reset.
            let body = tokio::time::timeout(
                Duration::from_secs(20),
                http_body_util::BodyExt::collect(resp.into_body()),
            )
            .await
            .expect("the reset body still open");
            assert!(body.is_err());
            // The client's connection task ends (the server closed it).
            let _ = tokio::time::timeout(Duration::from_secs(20), conn)
                .await
                .expect("the client connection is still open");
        }
        server.shutdown().await;
    }
}

#[tokio::test]
async fn an_sse_stream_whose_client_stopped_reading_is_closed() {
    let limit = ConnectionLimit::new(100);
    let (_, server) = start_server(false, &limit, |s| s).await;
    // Attack: open an event stream and stop reading while events keep coming.
    let mut s = connect_from(server.addr, "127.0.0.5").await;
    s.write_all(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 256];
    let n = s.read(&mut first).await.unwrap();
    assert!(first[..n].starts_with(b"HTTP/1.1 200"));
    stats_reach(&limit, "the stalled stream was kept open", |s| {
        s.write_timed_out == 1 && s.open == 0
    })
    .await;
    closed_by_server(s, "the stalled stream is still open").await;
    server.shutdown().await;
}

#[tokio::test]
async fn slow_but_reading_clients_and_quiet_streams_are_not_cut() {
    let limit = ConnectionLimit::new(100);
    let (_, server) = start_server(false, &limit, |s| {
        s.idle_timeout(Duration::from_millis(500))
    })
    .await;
    // A client that reads 1 MiB slowly: 16 KiB every 100 ms (well within the write
    // timeout between reads), with a small receive buffer.
    let mut s = connect_from(server.addr, "127.0.0.6").await;
    s.write_all(b"GET /big HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = s.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let body_at = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert_eq!(
        got.len() - body_at,
        MIB,
        "the slow reader's response was cut"
    );
    // A quiet SSE stream (events 1.2 s apart, more than the write and idle timeouts),
    // over HTTP/1.1 and HTTP/2: every event arrives.
    let out = {
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        s.write_all(b"GET /quiet HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    };
    assert!(out.contains("data: 2\n\n"), "{out}");
    let (mut send, _conn) = h2(TcpStream::connect(server.addr).await.unwrap()).await;
    let resp = send.send_request(get_req("/quiet")).await.unwrap();
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .expect("the quiet HTTP/2 stream was cut")
        .to_bytes();
    assert_eq!(&body[..], b"data: 0\n\ndata: 1\n\ndata: 2\n\n");
    assert_eq!(limit.stats().write_timed_out, 0, "{:?}", limit.stats());
    server.shutdown().await;
}

/// A keep-alive HTTP/1.1 connection from `from` that has been served one request (it
/// holds its place in the per-client count), or `None` if the server closed it unserved.
async fn served_from(addr: SocketAddr, from: &str) -> Option<TcpStream> {
    let mut s = connect_from(addr, from).await;
    if s.write_all(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .is_err()
    {
        return None;
    }
    let mut buf = [0u8; 1024];
    match tokio::time::timeout(Duration::from_secs(20), s.read(&mut buf))
        .await
        .expect("neither served nor closed")
    {
        Ok(n) if n > 0 => {
            assert!(buf.starts_with(b"HTTP/1.1 200"));
            Some(s)
        }
        _ => None,
    }
}

#[tokio::test]
async fn connections_over_the_per_client_cap_are_refused_at_accept() {
    let limit = ConnectionLimit::new(100).per_client(3);
    let (_, server) = start_server(false, &limit, |s| s).await;
    // Attack: one address opens connections to hold every place.
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(
            served_from(server.addr, "127.0.0.2")
                .await
                .expect("a connection within the cap was refused"),
        );
    }
    for _ in 0..2 {
        assert!(
            served_from(server.addr, "127.0.0.2").await.is_none(),
            "a connection over the per-client cap was served"
        );
    }
    // Another address is served meanwhile.
    let other = served_from(server.addr, "127.0.0.3").await;
    assert!(other.is_some(), "another client was refused");
    stats_reach(&limit, "refusals counted", |s| s.per_client_refused == 2).await;
    // A place comes back when one of the address's connections closes.
    drop(held.pop());
    stats_reach(&limit, "the closed connection's place is back", |s| {
        s.open == 3
    })
    .await;
    assert!(served_from(server.addr, "127.0.0.2").await.is_some());
    server.shutdown().await;
}

#[tokio::test]
async fn exempt_peers_are_not_counted_per_client() {
    let proxies = mcp_core::TrustedProxies::new(["127.0.0.2/32".parse().unwrap()]);
    let limit = ConnectionLimit::new(100).per_client(1).exempt(proxies);
    let (_, server) = start_server(false, &limit, |s| s).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(
            served_from(server.addr, "127.0.0.2")
                .await
                .expect("an exempt peer was capped"),
        );
    }
    held.push(served_from(server.addr, "127.0.0.3").await.unwrap());
    assert!(served_from(server.addr, "127.0.0.3").await.is_none());
    server.shutdown().await;
}

#[tokio::test]
async fn the_server_own_options_cap_connections_per_client() {
    // Without a shared limit, the server's own options apply.
    let server = start_with(None, |s| s.max_connections_per_client(1), router()).await;
    let _first = served_from(server.addr, "127.0.0.7").await.unwrap();
    assert!(served_from(server.addr, "127.0.0.7").await.is_none());
    server.shutdown().await;
}

#[tokio::test]
async fn a_connection_serves_at_most_max_requests_per_connection() {
    let limit = ConnectionLimit::new(100);
    let (_, server) = start_server(false, &limit, |s| s.max_requests_per_connection(3)).await;
    // HTTP/1.1: 5 pipelined requests; 3 answered, the third with Connection: close,
    // then the server closes.
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    s.write_all(
        b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n"
            .repeat(5)
            .as_slice(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_string(&mut out))
        .await
        .expect("the connection was kept open past its request cap")
        .unwrap();
    assert_eq!(out.matches("HTTP/1.1 200").count(), 3, "{out}");
    assert!(
        out.to_ascii_lowercase().contains("connection: close"),
        "{out}"
    );
    // HTTP/2: after the third request, the connection is told to go away.
    let (mut send, conn) = h2(TcpStream::connect(server.addr).await.unwrap()).await;
    for _ in 0..3 {
        let resp = send.send_request(get_req("/echo")).await.unwrap();
        assert_eq!(resp.status(), 200);
    }
    tokio::time::timeout(Duration::from_secs(20), conn)
        .await
        .expect("the HTTP/2 connection was kept open past its request cap")
        .unwrap()
        .unwrap();
    server.shutdown().await;
}
