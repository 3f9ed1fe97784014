//! Connection hardening end to end: clients that pipeline requests for large responses
//! and never read cannot hold the gateway's connections (server.writeTimeoutSeconds),
//! one address cannot hold them all (server.maxConnectionsPerClient), and /metrics
//! shows what was closed and why.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A TCP connection to `addr` from the loopback address `from`, with a small receive
/// buffer (a client that does not read then stalls the gateway's writes soon).
async fn connect_from(addr: SocketAddr, from: &str) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(4096)?;
    socket.bind(format!("{from}:0").parse().unwrap())?;
    socket.connect(addr).await
}

/// An authenticated 2026-07-28 `tools/call` of the demo's echo tool with `message`, as
/// raw HTTP/1.1 (keep-alive).
fn echo_request(addr: SocketAddr, message: &str) -> Vec<u8> {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
        "name": "echo", "arguments": {"message": message}, "_meta": modern_meta()}})
    .to_string();
    format!(
        "POST /mcp HTTP/1.1\r\nhost: {addr}\r\nx-api-key: {KEY}\r\n\
         content-type: application/json\r\naccept: application/json, text/event-stream\r\n\
         mcp-protocol-version: 2026-07-28\r\nmcp-method: tools/call\r\nmcp-name: echo\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A keep-alive connection from `from` that has been answered once, or `None` when the
/// gateway closed it unanswered.
async fn answered_from(addr: SocketAddr, from: &str) -> Option<TcpStream> {
    let mut s = connect_from(addr, from).await.ok()?;
    s.write_all(&echo_request(addr, "hi")).await.ok()?;
    let mut buf = [0u8; 512];
    match tokio::time::timeout(Duration::from_secs(30), s.read(&mut buf))
        .await
        .expect("neither answered nor closed")
    {
        Ok(n) if n > 0 => {
            assert!(buf.starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);
            Some(s)
        }
        _ => None,
    }
}

#[tokio::test]
async fn slow_readers_from_several_addresses_do_not_starve_a_fresh_client() {
    let dir = tempdir();
    let (_up, upstream) = start_upstream(dir.path());
    let db = dir.path().join("a.db");
    // Strings up to 600 000 characters, for large echo responses. Every attacker here
    // is alice, with 20 requests at once: the cap on her bodies in progress is lifted,
    // so that the connection limits are what this tests.
    let cfg = with_server_keys(
        &base_config(&upstream, &db, "sanitization:\n  max_length: 600000\n"),
        "  workers: 2\n  maxConnections: 20\n  writeTimeoutSeconds: 1\n  \
         maxConnectionsPerClient: 6\n  idleTimeoutSeconds: 2\n  \
         bodiesInProgressPerPrincipal: 1000\n",
    );
    let (_gw, base) = start_gateway(dir.path(), &cfg);
    let addr: SocketAddr = base.trim_start_matches("http://").parse().unwrap();

    // Attack 1: one address opens more connections than its share; those over
    // server.maxConnectionsPerClient are closed unanswered.
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..8 {
        match answered_from(addr, "127.0.0.6").await {
            Some(s) => held.push(s),
            None => refused += 1,
        }
    }
    assert_eq!((held.len(), refused), (6, 2));
    drop(held);

    // Attack 2: the whole cap of 20 connections, from four addresses, asking for
    // 128 KiB responses and never reading them: 4 pipeline 48 requests each over
    // HTTP/1.1 (6 MiB, more than the socket buffers take), 16 ask over HTTP/2 with a
    // 16 KiB flow-control window they never open again. The write timeout closes the
    // HTTP/1.1 connections; over HTTP/2 it resets the stalled stream, and the idle
    // timeout (2 s here) then closes its connection, which has nothing else in progress.
    let message = "x".repeat(128 * 1024);
    let request = echo_request(addr, &message);
    let mut pipeliners = Vec::new();
    for i in 0..4 {
        let from = format!("127.0.0.{}", 2 + i);
        let request = request.clone();
        pipeliners.push(tokio::spawn(async move {
            let mut s = connect_from(addr, &from).await.unwrap();
            for _ in 0..48 {
                if s.write_all(&request).await.is_err() {
                    break;
                }
            }
            // Held, never read, until the test ends.
            std::future::pending::<()>().await;
        }));
    }
    let mut windows_shut = Vec::new();
    for i in 0..16 {
        let from = format!("127.0.0.{}", 2 + i % 4);
        let request = echo_request(addr, &message);
        windows_shut.push(tokio::spawn(async move {
            let tcp = connect_from(addr, &from).await.unwrap();
            let (mut send, conn) =
                hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .initial_stream_window_size(16 * 1024)
                    .handshake(hyper_util::rt::TokioIo::new(tcp))
                    .await
                    .unwrap();
            let conn = tokio::spawn(conn);
            // The same request as the HTTP/1.1 one, over HTTP/2.
            let split = request.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
            let head = String::from_utf8_lossy(&request[..split]).into_owned();
            let mut req = http::Request::post(format!("http://{addr}/mcp"));
            for line in head.lines().skip(1) {
                let (k, v) = line.split_once(": ").unwrap();
                if k != "host" && k != "content-length" {
                    req = req.header(k, v);
                }
            }
            let body = bytes::Bytes::copy_from_slice(&request[split + 4..]);
            let req = req.body(http_body_util::Full::new(body)).unwrap();
            // The response's head; its body is never read.
            let resp = send.send_request(req).await;
            std::future::pending::<()>().await;
            drop((send, conn, resp));
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // A fresh client from another address is still served (the stalled connections
    // are closed after server.writeTimeoutSeconds, or their streams reset then and the
    // connections closed as idle).
    ring();
    let fresh = reqwest::Client::builder()
        .local_address("127.0.0.9".parse::<std::net::IpAddr>().unwrap())
        .timeout(Duration::from_secs(90))
        .build()
        .unwrap();
    let r = call_tool(
        &fresh,
        &format!("{base}/mcp"),
        "echo",
        json!({"message": "fresh"}),
    )
    .header("x-api-key", KEY)
    .send()
    .await
    .expect("a fresh client was not served while slow readers held the connections");
    assert_eq!(r.status(), 200);
    let body = r.text().await.unwrap();
    assert!(body.contains("fresh"), "{body}");

    // /metrics shows the closes and the refusals.
    let mut m = String::new();
    for _ in 0..100 {
        m = metrics_text_with(&fresh, &base).await;
        if metric_value(&m, "mcp_gateway_connections_write_timed_out_total")
            .is_some_and(|n| n >= 4.0)
            && metric_value(&m, "mcp_gateway_http2_streams_write_timed_out_total")
                .is_some_and(|n| n >= 16.0)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        metric_value(&m, "mcp_gateway_connections_write_timed_out_total").is_some_and(|n| n >= 4.0)
            && metric_value(&m, "mcp_gateway_http2_streams_write_timed_out_total")
                .is_some_and(|n| n >= 16.0),
        "every slow reader is closed or reset: {m}"
    );
    assert_eq!(
        metric_value(&m, "mcp_gateway_connections_per_client_refused_total"),
        Some(2.0),
        "{m}"
    );
    assert_eq!(
        metric_value(&m, "mcp_gateway_connections_max_per_client"),
        Some(6.0),
        "{m}"
    );
    for a in pipeliners.into_iter().chain(windows_shut) {
        a.abort();
    }

    // Zero is refused, naming the key and its line.
    for (line, key) in [
        ("writeTimeoutSeconds: 1", "server.writeTimeoutSeconds"),
        (
            "maxConnectionsPerClient: 6",
            "server.maxConnectionsPerClient",
        ),
    ] {
        let name = line.split(':').next().unwrap();
        let bad_line = format!("{name}: 0");
        let bad = cfg.replacen(line, &bad_line, 1);
        assert_check_refuses(dir.path(), &bad, &bad_line, key);
    }
    let bad = with_server_keys(&cfg, "  maxRequestsPerConnection: 0\n");
    assert_check_refuses(
        dir.path(),
        &bad,
        "maxRequestsPerConnection: 0",
        "server.maxRequestsPerConnection",
    );
}
