//! The accept loop: plain TCP with PeerAddr, handshake timeout, connection cap,
//! graceful shutdown that drains.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::{Router, routing::get};
use common::*;
use mcp_tls::TlsAcceptor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn http_get_plain(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// A TLS server (certificate from a fresh CA) configured by `f`, and its CA.
async fn start_tls_with(f: impl FnOnce(mcp_tls::Server) -> mcp_tls::Server) -> (Ca, Running) {
    let ca = Ca::new("CA");
    let (cert, key) = ca.server("s");
    let files = Files::new(&cert, &key);
    let acceptor = TlsAcceptor::from_config(&files.config()).unwrap();
    let server = start_with(Some(acceptor), f, echo_router()).await;
    (ca, server)
}

/// A completed TLS handshake with the server at `addr` (certificate from `ca`), no request.
async fn tls_handshake(
    addr: std::net::SocketAddr,
    ca: &Ca,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(client_config(&ca.der(), BOTH, None))
        .connect(name, tcp)
        .await
        .unwrap()
}

/// An HTTP/2 (prior knowledge) connection to `addr`: its sender and its connection task.
async fn http2_connection(
    addr: std::net::SocketAddr,
) -> (
    hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    tokio::task::JoinHandle<hyper::Result<()>>,
) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    (send, tokio::spawn(conn))
}

/// An HTTP/1.1 client connection: its sender and its connection task.
type Http1Connection = (
    hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    tokio::task::JoinHandle<hyper::Result<()>>,
);

/// An HTTP/1.1 keep-alive connection to `addr` that has been served one request, held
/// open: its sender and its connection task.
async fn served_keepalive(addr: std::net::SocketAddr) -> Http1Connection {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .unwrap();
    let conn_task = tokio::spawn(conn);
    let req = http::Request::get("/echo")
        .header("host", "x")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    assert_eq!(send.send_request(req).await.unwrap().status(), 200);
    (send, conn_task)
}

/// A new connection to `addr` is accepted by the kernel but not served while `first` is
/// open (`what` says what would have gone wrong), and is served once `first` closes.
async fn waits_until_closed(addr: std::net::SocketAddr, first: Http1Connection, what: &str) {
    let second = tokio::spawn(async move { http_get_plain(addr, "/echo").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!second.is_finished(), "{what}");
    let (send, conn_task) = first;
    drop(send);
    let _ = conn_task.await;
    let out = tokio::time::timeout(Duration::from_secs(30), second)
        .await
        .expect("the waiting connection was never served")
        .unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
}

#[tokio::test]
async fn plain_tcp_serving_puts_peer_addr_and_no_tls_info() {
    let server = start(None).await;
    let out = http_get_plain(server.addr, "/echo").await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let body = out.split_once("\r\n\r\n").unwrap().1;
    let json: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(json["tls"], false);
    assert!(json["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    server.shutdown().await;
}

#[tokio::test]
async fn plain_tcp_serves_http2_prior_knowledge() {
    let server = start(None).await;
    let (mut send, _conn) = http2_connection(server.addr).await;
    let resp = send
        .send_request(
            http::Request::get("http://x/echo")
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), http::Version::HTTP_2);
    drop(send);
    server.shutdown().await;
}

#[tokio::test]
async fn a_silent_client_is_dropped_after_the_handshake_timeout() {
    let (ca, server) = start_tls_with(|s| s.handshake_timeout(Duration::from_millis(300))).await;
    // Attack: open a TCP connection and never send a ClientHello (slowloris).
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    let mut buf = [0u8; 16];
    // The server closes it: EOF (or reset), well before this generous bound.
    let r = tokio::time::timeout(Duration::from_secs(30), idle.read(&mut buf))
        .await
        .expect("the server kept a silent connection open");
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    // The server still serves others.
    let seen = get_echo(server.addr, client_config(&ca.der(), BOTH, None))
        .await
        .unwrap();
    assert_eq!(seen.json["tls"], true);
    server.shutdown().await;
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_until_one_closes() {
    let server = start_with(None, |s| s.max_connections(1), echo_router()).await;
    // First connection: HTTP/1.1 keep-alive, held open.
    let first = served_keepalive(server.addr).await;
    // Second connection: accepted by the kernel, but not served while the first is open.
    waits_until_closed(server.addr, first, "a connection beyond the cap was served").await;
    server.shutdown().await;
}

#[tokio::test]
async fn every_loop_serves_while_a_shared_limit_has_room() {
    // Two loops on sockets of their own share a limit of one. The loop started first
    // must not keep the one place while it waits for a connection that goes elsewhere.
    let limit = mcp_tls::ConnectionLimit::new(1);
    let a = start_with(None, |s| s.connection_limit(limit.clone()), echo_router()).await;
    let b = start_with(None, |s| s.connection_limit(limit.clone()), echo_router()).await;
    for addr in [b.addr, a.addr, b.addr] {
        let served = tokio::time::timeout(Duration::from_secs(30), served_keepalive(addr))
            .await
            .expect("a loop with a connection to serve never got the free place");
        drop(served);
        // The place comes back once the connection's task has ended.
        for _ in 0..600 {
            if limit.available() == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(limit.available(), 1);
    }
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_shared_connection_limit_counts_every_loop() {
    // Two accept loops (as one per worker thread would be) share a limit of one.
    let limit = mcp_tls::ConnectionLimit::new(1);
    let a = start_with(None, |s| s.connection_limit(limit.clone()), echo_router()).await;
    let b = start_with(
        None,
        // A loop's own cap is ignored when the limit is shared.
        |s| s.max_connections(100).connection_limit(limit.clone()),
        echo_router(),
    )
    .await;
    // A keep-alive connection to the first loop, held open, takes the one permit.
    let first = served_keepalive(a.addr).await;
    assert_eq!(limit.available(), 0);
    // A connection to the second loop waits until it is closed.
    waits_until_closed(
        b.addr,
        first,
        "the second loop served a connection beyond the shared limit",
    )
    .await;
    a.shutdown().await;
    b.shutdown().await;
    assert_eq!(limit.available(), 1);
}

#[tokio::test]
async fn graceful_shutdown_stops_accepting_and_drains_requests_in_flight() {
    let release = Arc::new(tokio::sync::Notify::new());
    let entered = Arc::new(tokio::sync::Notify::new());
    let router = {
        let (release, entered) = (release.clone(), entered.clone());
        Router::new().route(
            "/slow",
            get(move || {
                let (release, entered) = (release.clone(), entered.clone());
                async move {
                    entered.notify_one();
                    release.notified().await;
                    "done"
                }
            }),
        )
    };
    let ca = Ca::new("CA");
    let (cert, key) = ca.server("s");
    let files = Files::new(&cert, &key);
    let acceptor = TlsAcceptor::from_config(&files.config()).unwrap();
    let mut server = start_with(Some(acceptor), |s| s, router).await;
    let addr = server.addr;

    // A request in flight over TLS.
    let cfg = client_config(&ca.der(), BOTH, None);
    let in_flight = tokio::spawn(async move {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(cfg)
            .connect("localhost".try_into().unwrap(), tcp)
            .await
            .unwrap();
        tls.write_all(b"GET /slow HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        let mut out = Vec::new();
        let _ = tls.read_to_end(&mut out).await;
        String::from_utf8_lossy(&out).into_owned()
    });
    entered.notified().await;

    // Shut down: the server stops accepting but waits for the request.
    let _ = server.stop.take().unwrap().send(());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(addr).await.is_ok() {
        assert!(std::time::Instant::now() < deadline, "still accepting");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!server.task.is_finished(), "returned before draining");

    release.notify_one();
    let out = tokio::time::timeout(Duration::from_secs(30), in_flight)
        .await
        .unwrap()
        .unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.ends_with("done"), "{out}");
    // Keep-alive was not honoured during shutdown: the server closed after the response.
    assert!(
        out.to_ascii_lowercase().contains("connection: close"),
        "{out}"
    );
    tokio::time::timeout(Duration::from_secs(30), &mut server.task)
        .await
        .expect("server did not finish draining")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn start_from_yaml_config_serves_and_reloads() {
    let ca = Ca::new("CA");
    let (cert, key) = ca.server("yaml-1");
    let files = Files::new(&cert, &key);
    let yaml = format!(
        "certFile: {}\nkeyFile: {}\nminVersion: TLS1.2\nmaxVersion: TLS1.3\nrotationInterval: \"1s\"\n",
        files.path("server.pem").display(),
        files.path("server.key").display()
    );
    let cfg: mcp_tls::TlsConfig = serde_yaml_ng::from_str(&yaml).unwrap();
    let (acceptor, background) = mcp_tls::start(&cfg).unwrap();
    assert!(matches!(background, mcp_tls::Background::Reloader(_)));
    let server = start(Some(acceptor)).await;
    let client = full_handshakes(&client_config(&ca.der(), BOTH, None));
    assert_eq!(
        cn(&get_echo(server.addr, client.clone())
            .await
            .unwrap()
            .server_cert),
        "yaml-1"
    );
    let (cert2, key2) = ca.server("yaml-2");
    replace_file(files.dir.path(), "server.key", &key2);
    replace_file(files.dir.path(), "server.pem", &cert2);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while cn(&get_echo(server.addr, client.clone())
        .await
        .unwrap()
        .server_cert)
        != "yaml-2"
    {
        assert!(std::time::Instant::now() < deadline, "not reloaded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(background);
    server.shutdown().await;
}

#[tokio::test]
async fn client_addr_layer_resolves_the_peer_addr_from_the_accept_loop() {
    use mcp_core::{ClientAddr, ClientAddrLayer, TrustedProxies};
    let router = Router::new()
        .route(
            "/ip",
            get(
                |axum::Extension(addr): axum::Extension<ClientAddr>| async move {
                    format!("{} {}", addr.ip(), addr.is_forwarded())
                },
            ),
        )
        .layer(ClientAddrLayer::new(TrustedProxies::none()));
    let server = start_with(None, |s| s, router).await;
    // Attack: a spoofed X-Forwarded-For from an untrusted peer changes nothing.
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    s.write_all(
        b"GET /ip HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 203.0.113.9\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.ends_with("127.0.0.1 false"), "{out}");
    server.shutdown().await;
}

/// Reads until the server closes `s`; fails if it is still open after 20 s.
async fn closed_by_server(mut s: impl tokio::io::AsyncRead + Unpin, what: &str) {
    let mut buf = [0u8; 64];
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

#[tokio::test]
async fn connections_that_send_nothing_are_closed_after_the_idle_timeout() {
    // Attack (slowloris): connect and say nothing, to hold the server's places. With a
    // cap of one, a silent plain TCP connection holds the only place until it is closed.
    let server = start_with(
        None,
        |s| {
            s.max_connections(1)
                .idle_timeout(Duration::from_millis(300))
        },
        echo_router(),
    )
    .await;
    let silent = TcpStream::connect(server.addr).await.unwrap();
    let served = tokio::spawn(async move { http_get_plain(server.addr, "/echo").await });
    closed_by_server(silent, "a connection that sent nothing was kept open").await;
    let out = tokio::time::timeout(Duration::from_secs(20), served)
        .await
        .expect("the next client was never served")
        .unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    // The same after a completed TLS handshake: the idle timeout starts there.
    let (ca, tls_server) = start_tls_with(|s| s.idle_timeout(Duration::from_millis(300))).await;
    let tls = tls_handshake(tls_server.addr, &ca).await;
    closed_by_server(tls, "a TLS connection that sent no request was kept open").await;
    tls_server.shutdown().await;
    server.shutdown().await;
}

#[tokio::test]
async fn kept_alive_connections_are_closed_once_idle_over_http1_and_http2() {
    let server = start_with(
        None,
        |s| s.idle_timeout(Duration::from_millis(300)),
        echo_router(),
    )
    .await;
    // HTTP/1.1: one request, then nothing; the server closes the connection.
    let (send, conn_task) = served_keepalive(server.addr).await;
    tokio::time::timeout(Duration::from_secs(20), conn_task)
        .await
        .expect("an idle HTTP/1.1 keep-alive connection was kept open")
        .unwrap()
        .unwrap();
    drop(send);
    // HTTP/2: one request, then nothing; the server sends GOAWAY and closes.
    let (mut send, conn_task) = http2_connection(server.addr).await;
    let req = http::Request::get("http://x/echo")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    assert_eq!(send.send_request(req).await.unwrap().status(), 200);
    tokio::time::timeout(Duration::from_secs(20), conn_task)
        .await
        .expect("an idle HTTP/2 connection was kept open")
        .unwrap()
        .unwrap();
    server.shutdown().await;
}

#[tokio::test]
async fn slow_and_streaming_responses_are_in_progress_not_idle() {
    use futures_util::StreamExt;
    async fn slow() -> &'static str {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        "slow done"
    }
    async fn stream() -> axum::body::Body {
        // Three events with gaps longer than the idle timeout, as a quiet SSE stream.
        let events = futures_util::stream::iter(0..3).then(|i| async move {
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(1000)).await;
            }
            Ok::<_, std::io::Error>(bytes::Bytes::from(format!("data: {i}\n\n")))
        });
        axum::body::Body::from_stream(events)
    }
    let router = Router::new()
        .route("/slow", get(slow))
        .route("/stream", get(stream))
        .merge(echo_router());
    // The gaps are twice the idle timeout or more; the margins (500 ms to reuse a
    // connection after a stream, 800 ms for a request during one) leave room for a
    // loaded machine.
    let server = start_with(None, |s| s.idle_timeout(Duration::from_millis(500)), router).await;
    let out = http_get_plain(server.addr, "/slow").await;
    assert!(out.ends_with("slow done"), "{out}");
    let out = http_get_plain(server.addr, "/stream").await;
    assert!(
        out.contains("data: 0\n\n") && out.contains("data: 2\n\n"),
        "{out}"
    );
    let get = |path: &str| {
        http::Request::get(format!("http://x{path}"))
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap()
    };
    // HTTP/1.1: the connection stays usable after a stream longer than the idle timeout
    // (a connection idle through the stream would have been told to close).
    let (mut send, conn_task) = served_keepalive(server.addr).await;
    let resp = send.send_request(get("/stream")).await.unwrap();
    http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap();
    send.ready()
        .await
        .expect("the connection was closed after the stream");
    assert_eq!(send.send_request(get("/echo")).await.unwrap().status(), 200);
    drop(send);
    let _ = conn_task.await;
    // HTTP/2: while one stream is open, the connection is not idle: a new request on it,
    // after more than the idle timeout, is served (no GOAWAY), and the stream is whole.
    let (mut send, _conn) = http2_connection(server.addr).await;
    let resp = send.send_request(get("/stream")).await.unwrap();
    let body = tokio::spawn(http_body_util::BodyExt::collect(resp.into_body()));
    tokio::time::sleep(Duration::from_millis(1200)).await;
    send.ready()
        .await
        .expect("the HTTP/2 connection was closed during a stream");
    assert_eq!(send.send_request(get("/echo")).await.unwrap().status(), 200);
    let body = body
        .await
        .unwrap()
        .expect("the HTTP/2 stream was cut")
        .to_bytes();
    assert_eq!(&body[..], b"data: 0\n\ndata: 1\n\ndata: 2\n\n");
    server.shutdown().await;
}

/// Waits (up to 10 s) until the limit's stats satisfy `f`.
async fn stats_reach(
    limit: &mcp_tls::ConnectionLimit,
    what: &str,
    f: impl Fn(mcp_tls::ConnectionStats) -> bool,
) {
    for _ in 0..400 {
        if f(limit.stats()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{what}: {:?}", limit.stats());
}

#[tokio::test]
async fn connection_stats_count_accepts_failed_handshakes_timeouts_and_idle_closes() {
    let limit = mcp_tls::ConnectionLimit::new(10);
    let (ca, server) = start_tls_with(|s| {
        s.connection_limit(limit.clone())
            .handshake_timeout(Duration::from_millis(300))
            .idle_timeout(Duration::from_millis(300))
    })
    .await;
    // A plain-text request to the TLS port: a failed handshake.
    let mut plain = TcpStream::connect(server.addr).await.unwrap();
    plain
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    closed_by_server(plain, "a plain-text client was kept").await;
    // A silent connection holds a place, then its handshake times out.
    let silent = TcpStream::connect(server.addr).await.unwrap();
    stats_reach(&limit, "the silent connection is open", |s| s.open == 1).await;
    closed_by_server(silent, "a silent client was kept").await;
    // A completed handshake and no request: closed as idle.
    let tls = tls_handshake(server.addr, &ca).await;
    closed_by_server(tls, "an idle TLS connection was kept").await;
    stats_reach(&limit, "every close counted", |s| {
        s.open == 0 && s.idle_closed == 1 && s.tls_handshake_timed_out == 1
    })
    .await;
    let s = limit.stats();
    assert_eq!(
        (s.max, s.accepted, s.tls_handshake_failed),
        (10, 3, 1),
        "{s:?}"
    );
    server.shutdown().await;
}
