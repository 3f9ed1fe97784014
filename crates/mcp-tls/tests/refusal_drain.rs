//! The accept loop keeps an HTTP/1.1 connection usable after a response that left the
//! request body unread (a service that refuses before reading), or says
//! `Connection: close` on it; the client writes the head and the body separately, then
//! reuses the connection.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::{get, post};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `POST /refuse` answers 401 without reading its body; `GET /ok` answers 200.
fn refusing_router() -> Router {
    Router::new()
        .route("/refuse", post(|| async { StatusCode::UNAUTHORIZED }))
        .route("/ok", get(|| async { "ok" }))
}

/// Reads one response head (the responses here have empty or short bodies with a
/// length): its text, or None if the connection ended first.
async fn response(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..i + 4]).to_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            while buf.len() < i + 4 + len {
                let mut b = [0u8; 4096];
                let n = s.read(&mut b).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&b[..n]);
            }
            buf.drain(..i + 4 + len);
            return Some(head);
        }
        let mut b = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(30), s.read(&mut b))
            .await
            .expect("no hang")
            .ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&b[..n]);
    }
}

/// A refused POST with a body of `n` bytes, head and body written separately; returns
/// the refusal's head and whether a following `GET /ok` on the connection was answered.
async fn refuse_then_reuse(addr: std::net::SocketAddr, n: usize) -> (String, bool) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let head = format!("POST /refuse HTTP/1.1\r\nHost: x\r\ncontent-length: {n}\r\n\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (mut r, mut w) = s.into_split();
    let writer = tokio::spawn(async move {
        let _ = w.write_all(&vec![b'x'; n]).await;
        w
    });
    let mut s_read = Vec::new();
    // Read through a reunited stream once the body is written (or refused).
    let mut buf = Vec::new();
    let head = loop {
        if let Some(i) = buf.windows(4).position(|w: &[u8]| w == b"\r\n\r\n") {
            let h = String::from_utf8_lossy(&buf[..i + 4]).to_lowercase();
            buf.drain(..i + 4);
            break h;
        }
        let mut b = [0u8; 4096];
        let got = tokio::time::timeout(Duration::from_secs(30), r.read(&mut b))
            .await
            .expect("no hang")
            .unwrap_or(0);
        assert!(got > 0, "no response to the refused request");
        buf.extend_from_slice(&b[..got]);
    };
    s_read.extend_from_slice(&buf);
    let w = writer.await.unwrap();
    let mut s = r.reunite(w).unwrap();
    if head.contains("connection: close") {
        return (head, false);
    }
    s.write_all(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let next = response(&mut s, &mut s_read).await;
    (head, next.is_some_and(|h| h.starts_with("http/1.1 200")))
}

#[tokio::test]
async fn a_refusal_before_the_body_leaves_the_connection_usable_or_says_close() {
    let server = start_with(None, |s| s, refusing_router()).await;
    // Under the default cap (64 KiB): drained, the connection serves the next request.
    for n in [10, 1000, 60 * 1024] {
        let (head, reused) = refuse_then_reuse(server.addr, n).await;
        assert!(head.starts_with("http/1.1 401"), "{head}");
        assert!(!head.contains("connection: close"), "{n}: {head}");
        assert!(reused, "{n}: the next request on the connection was lost");
    }
    // Over it: not read, and the refusal says so.
    let (head, _) = refuse_then_reuse(server.addr, 200 * 1024).await;
    assert!(head.starts_with("http/1.1 401"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    server.shutdown().await;

    // Draining off: every body left unread means close, with notice.
    let server = start_with(
        None,
        |s| s.refusal_drain(0, Duration::from_secs(1)),
        refusing_router(),
    )
    .await;
    let (head, _) = refuse_then_reuse(server.addr, 10).await;
    assert!(head.contains("connection: close"), "{head}");
    server.shutdown().await;
}

/// A refusal with `Connection: close` whose body stays unread: the client, still writing
/// the body after the refusal was sent, then reads the refusal. The loop lingers on the
/// closed connection (reads and discards), so the client's writes do not meet a reset
/// (which a blocking client reports instead of reading the refusal).
#[tokio::test]
async fn a_client_still_writing_a_refused_body_reads_the_refusal() {
    let server = start_with(None, |s| s, refusing_router()).await;
    for _ in 0..5 {
        let n = 512 * 1024;
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        let head = format!("POST /refuse HTTP/1.1\r\nHost: x\r\ncontent-length: {n}\r\n\r\n");
        s.write_all(head.as_bytes()).await.unwrap();
        // The refusal is sent and the server closes (over the drain cap) meanwhile.
        tokio::time::sleep(Duration::from_millis(200)).await;
        // A blocking client (Python's http.client) writes the whole body before it reads:
        // a write that fails (reset, broken pipe) loses it the refusal.
        for i in 0..(n / 16384) {
            if let Err(e) = s.write_all(&[b'x'; 16384]).await {
                panic!("write {i} of the refused body failed ({e}): the refusal is lost");
            }
        }
        let mut buf = Vec::new();
        let head = response(&mut s, &mut buf).await;
        let head = head.expect("the refusal was lost to a reset");
        assert!(head.starts_with("http/1.1 401"), "{head}");
        assert!(head.contains("connection: close"), "{head}");
    }
    server.shutdown().await;
}
