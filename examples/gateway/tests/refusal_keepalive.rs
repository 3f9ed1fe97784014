//! A refusal costs the client nothing more than the refused request: over HTTP/1.x the
//! connection stays usable, or the refusal says `Connection: close` before the gateway
//! closes it (RFC 9112 section 9.6). The client here writes the request head and the body
//! in separate writes, as Python's `http.client` and many HTTP libraries do, and then
//! sends its next request on the same connection.
//!
//! Every refusal that happens before the body is read is covered: authentication (401),
//! the Host guard (403), method (405), media type (415), a bad protocol version (400),
//! a declared size over the limit (413), the per-address and per-principal limits (429)
//! and a limiter whose Redis is down in fail-closed mode (503); with Content-Length bodies
//! under and over the drain cap and chunked bodies of several chunks, a body trickled
//! past the drain deadline, `Expect: 100-continue`, HTTP/1.0, pipelining; HTTP/2 is
//! unaffected.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use serde_json::json;

/// Bodies smaller than the default drain cap (64 KiB) and larger.
const UNDER_CAP: usize = 40 * 1024;
const OVER_CAP: usize = 200 * 1024;

fn addr(base: &str) -> SocketAddr {
    base.trim_start_matches("http://").parse().unwrap()
}

/// A response read off the wire.
#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    /// Interim (1xx) responses seen before it.
    interim: Vec<u16>,
}

impl Resp {
    fn says_close(&self) -> bool {
        self.headers.iter().any(|(k, v)| {
            k.eq_ignore_ascii_case("connection")
                && v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close"))
        })
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A raw HTTP/1.x client connection.
struct Raw {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    fn open(a: SocketAddr) -> Self {
        let s = TcpStream::connect(a).unwrap();
        s.set_nodelay(true).unwrap();
        // Only so that a broken server cannot hang the test.
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        Self { s, buf: Vec::new() }
    }

    /// One write (flushed at once: no Nagle).
    fn write(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.s.write_all(b)
    }

    /// Writes `pieces` one write each, from another thread, so that a server answering
    /// before it has read them all is read meanwhile.
    fn write_behind(&self, pieces: Vec<Vec<u8>>) -> std::thread::JoinHandle<()> {
        let mut s = self.s.try_clone().unwrap();
        std::thread::spawn(move || {
            for p in pieces {
                // A write after the server closed fails: what the client sees then is
                // the response (or its absence), read by the other thread.
                if s.write_all(&p).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    }

    fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        match self.s.read(&mut chunk) {
            Ok(0) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => true,
            Err(_) => false,
        }
    }

    /// The next final response, or None when the connection ends before one is whole.
    fn response(&mut self) -> Option<Resp> {
        let mut interim = Vec::new();
        loop {
            let end = loop {
                if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i + 4;
                }
                if !self.fill() {
                    return None;
                }
            };
            let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
            self.buf.drain(..end);
            let mut lines = head.split("\r\n");
            let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
            let headers: Vec<(String, String)> = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .collect();
            if (100..200).contains(&status) {
                interim.push(status);
                continue;
            }
            let mut r = Resp {
                status,
                headers,
                interim,
            };
            if let Some(n) = r.header("content-length") {
                let n: usize = n.parse().ok()?;
                while self.buf.len() < n {
                    if !self.fill() {
                        return None;
                    }
                }
                self.buf.drain(..n);
            } else if r
                .header("transfer-encoding")
                .is_some_and(|t| t.contains("chunked"))
            {
                loop {
                    let line_end = loop {
                        if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                            break i;
                        }
                        if !self.fill() {
                            return None;
                        }
                    };
                    let size_text = String::from_utf8_lossy(&self.buf[..line_end]).into_owned();
                    let size =
                        usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
                    self.buf.drain(..line_end + 2);
                    while self.buf.len() < size + 2 {
                        if !self.fill() {
                            return None;
                        }
                    }
                    self.buf.drain(..size + 2);
                    if size == 0 {
                        break;
                    }
                }
            }
            r.interim = std::mem::take(&mut r.interim);
            return Some(r);
        }
    }

    /// Whether the server closed the connection (nothing more to read).
    fn closed(&mut self) -> bool {
        self.buf.is_empty() && !self.fill()
    }
}

/// A `tools/list` body.
fn list_body() -> String {
    json!({"jsonrpc": "2.0", "id": 7, "method": "tools/list",
           "params": {"_meta": modern_meta()}})
    .to_string()
}

/// The head of a `tools/list` POST, with `extra` header lines (each ending in CRLF) and
/// the body framing line(s).
fn head(method: &str, extra: &str, framing: &str) -> String {
    format!(
        "{method} /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: application/json\r\n\
         accept: application/json, text/event-stream\r\nmcp-protocol-version: 2026-07-28\r\n\
         mcp-method: tools/list\r\n{extra}{framing}\r\n"
    )
}

/// A whole authenticated `tools/list` request in one write.
fn follow_up() -> Vec<u8> {
    let body = list_body();
    let mut r = head(
        "POST",
        &format!("x-api-key: {KEY}\r\n"),
        &format!("content-length: {}\r\n", body.len()),
    )
    .into_bytes();
    r.extend_from_slice(body.as_bytes());
    r
}

/// A body of `n` bytes: a JSON-RPC request padded out (a refusal never reads it).
fn body_of(n: usize) -> Vec<u8> {
    let pad = n.saturating_sub(120);
    json!({"jsonrpc": "2.0", "id": 7, "method": "tools/list",
           "params": {"pad": "x".repeat(pad)}})
    .to_string()
    .into_bytes()
}

#[derive(Clone, Copy, Debug)]
enum Shape {
    /// Content-Length, the body in one write after the head.
    Length(usize),
    /// Chunked: `n` chunks of `size`, each in a write of its own, then the last chunk.
    Chunked(usize, usize),
}

/// The head framing and the writes of the body.
fn framed(shape: Shape) -> (String, Vec<Vec<u8>>) {
    match shape {
        Shape::Length(n) => {
            let b = body_of(n);
            (format!("content-length: {}\r\n", b.len()), vec![b])
        }
        Shape::Chunked(n, size) => {
            let mut pieces = Vec::new();
            for i in 0..n {
                let mut c = format!("{size:x}\r\n").into_bytes();
                c.extend(std::iter::repeat_n(b'a' + (i % 26) as u8, size));
                c.extend_from_slice(b"\r\n");
                pieces.push(c);
            }
            pieces.push(b"0\r\n\r\n".to_vec());
            ("transfer-encoding: chunked\r\n".to_owned(), pieces)
        }
    }
}

/// What happened on one connection: the refusal, and whether the follow-up request on
/// the same connection was answered.
#[derive(Debug)]
struct Outcome {
    refusal: Resp,
    follow_up: Option<u16>,
}

/// Sends a request (`method`, `extra` headers, body `shape`) head first and the body in
/// further writes, reads the answer, then sends a whole request on the same connection.
/// The answer must be `status`; then either it said `Connection: close` and the gateway
/// closed the connection, or the follow-up request was answered.
fn refuse_then_reuse(
    a: SocketAddr,
    method: &str,
    extra: &str,
    shape: Shape,
    status: u16,
) -> Outcome {
    let (framing, pieces) = framed(shape);
    let mut c = Raw::open(a);
    c.write(head(method, extra, &framing).as_bytes()).unwrap();
    // The body follows in writes of its own, a moment later (as a client that writes
    // the head and the body separately).
    std::thread::sleep(Duration::from_millis(20));
    let writer = c.write_behind(pieces);
    let refusal = c
        .response()
        .unwrap_or_else(|| panic!("{method} {extra:?} {shape:?}: no response"));
    writer.join().unwrap();
    assert_eq!(
        refusal.status, status,
        "{method} {extra:?} {shape:?}: {refusal:?}"
    );
    if refusal.says_close() {
        assert!(c.closed(), "{shape:?}: said close and kept the connection");
        return Outcome {
            refusal,
            follow_up: None,
        };
    }
    // Kept open: the next request on it must be answered.
    let sent = c.write(&follow_up());
    let follow = sent.ok().and_then(|()| c.response());
    assert!(
        follow.is_some(),
        "{method} {extra:?} {shape:?}: {status} without `Connection: close`, and the next \
         request on the connection was lost ({refusal:?})"
    );
    Outcome {
        refusal,
        follow_up: follow.map(|r| r.status),
    }
}

/// Each shape of body: the connection stays usable for bodies the drain takes whole
/// (under the cap); a body over the cap gets `Connection: close`.
fn every_shape(a: SocketAddr, method: &str, extra: &str, status: u16) {
    for shape in [
        Shape::Length(300),
        Shape::Length(UNDER_CAP),
        Shape::Chunked(4, 1000),
        Shape::Chunked(3, 20 * 1024),
    ] {
        let o = refuse_then_reuse(a, method, extra, shape, status);
        assert!(
            !o.refusal.says_close() && o.follow_up.is_some(),
            "{method} {extra:?} {shape:?}: the connection should stay usable: {o:?}"
        );
    }
    for shape in [Shape::Length(OVER_CAP), Shape::Chunked(10, 16 * 1024)] {
        let o = refuse_then_reuse(a, method, extra, shape, status);
        assert!(
            o.refusal.says_close(),
            "{method} {extra:?} {shape:?}: a body over the drain cap needs \
             `Connection: close`: {o:?}"
        );
    }
}

#[test]
fn refusals_before_the_body_keep_the_connection_or_say_close() {
    let dir = tempdir();
    let (_up, upstream) = start_upstream(dir.path());
    let cfg = with_server_keys(
        &base_config(&upstream, &dir.path().join("a.db"), ""),
        "  maxBodyBytes: 500000\n",
    );
    let (_gw, base) = start_gateway(dir.path(), &cfg);
    let a = addr(&base);
    // Control: the follow-up request alone is answered.
    let mut c = Raw::open(a);
    c.write(&follow_up()).unwrap();
    assert_eq!(c.response().unwrap().status, 200);

    // 401: no credential.
    every_shape(a, "POST", "", 401);
    // 401: a wrong one.
    every_shape(a, "POST", "x-api-key: wrong-key-wrong-key-1\r\n", 401);
    // 403: a foreign Host (DNS rebinding guard), and a foreign Origin.
    every_shape_host(a, "evil.example.com", 403);
    every_shape(
        a,
        "POST",
        &format!("x-api-key: {KEY}\r\norigin: https://evil.example.com\r\n"),
        403,
    );
    // 405: a method the endpoint does not take, with a body.
    every_shape(a, "PUT", &format!("x-api-key: {KEY}\r\n"), 405);
    // 415: not JSON.
    let ct = format!("x-api-key: {KEY}\r\ncontent-type: text/plain\r\n");
    every_shape(a, "POST", &ct, 415);
    // 400: an unknown protocol version.
    every_shape(
        a,
        "POST",
        &format!("x-api-key: {KEY}\r\nmcp-protocol-version: 1999-01-01\r\n"),
        400,
    );
    // 413: a declared length over maxBodyBytes is refused before the body; it is over
    // the drain cap too: the refusal says close.
    let o = refuse_then_reuse(
        a,
        "POST",
        &format!("x-api-key: {KEY}\r\n"),
        Shape::Length(600_000),
        413,
    );
    assert!(o.refusal.says_close(), "{o:?}");
}

/// [`every_shape`] with a `Host` of the client's choosing (the head's own Host replaced).
fn every_shape_host(a: SocketAddr, host: &str, status: u16) {
    for (shape, usable) in [
        (Shape::Length(300), true),
        (Shape::Chunked(4, 1000), true),
        (Shape::Length(OVER_CAP), false),
    ] {
        let (framing, pieces) = framed(shape);
        let h = head("POST", &format!("x-api-key: {KEY}\r\n"), &framing)
            .replace("Host: 127.0.0.1\r\n", &format!("Host: {host}\r\n"));
        let mut c = Raw::open(a);
        c.write(h.as_bytes()).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let w = c.write_behind(pieces);
        let r = c.response().expect("a response");
        w.join().unwrap();
        assert_eq!(r.status, status, "{shape:?} {r:?}");
        if usable {
            assert!(!r.says_close(), "{shape:?}: {r:?}");
            c.write(&follow_up()).unwrap();
            assert!(c.response().is_some(), "{shape:?}: next request lost");
        } else {
            assert!(r.says_close(), "{shape:?}: {r:?}");
            assert!(c.closed());
        }
    }
}

#[test]
fn rate_limit_refusals_keep_the_connection_or_say_close() {
    let dir = tempdir();
    let (_up, upstream) = start_upstream(dir.path());
    // The per-address limit: one request, then 429 for a long while.
    let cfg = base_config(
        &upstream,
        &dir.path().join("a.db"),
        "ip_ratelimit:\n  requests_per_second: 0.001\n  burst: 1\n",
    );
    let (_gw, base) = start_gateway(dir.path(), &cfg);
    let a = addr(&base);
    let mut c = Raw::open(a);
    c.write(&follow_up()).unwrap();
    assert_eq!(c.response().unwrap().status, 200);
    every_shape(a, "POST", &format!("x-api-key: {KEY}\r\n"), 429);
    // The documented flow: after a 429 with Retry-After, retry on the same connection.
    let o = refuse_then_reuse(
        a,
        "POST",
        &format!("x-api-key: {KEY}\r\n"),
        Shape::Length(500),
        429,
    );
    assert!(o.refusal.header("retry-after").is_some(), "{o:?}");
    assert_eq!(o.follow_up, Some(429));

    // The per-principal limit (after the body is read: it must stay usable too).
    let dir2 = tempdir();
    let cfg = base_config(&upstream, &dir2.path().join("a.db"), "").replace(
        "  requests_per_second: 1000\n  burst: 1000\n",
        "  requests_per_second: 0.001\n  burst: 1\n",
    );
    let (_gw2, base2) = start_gateway(dir2.path(), &cfg);
    let a2 = addr(&base2);
    let mut c = Raw::open(a2);
    c.write(&follow_up()).unwrap();
    assert_eq!(c.response().unwrap().status, 200);
    for shape in [
        Shape::Length(300),
        Shape::Length(UNDER_CAP),
        Shape::Chunked(4, 1000),
    ] {
        let o = refuse_then_reuse(a2, "POST", &format!("x-api-key: {KEY}\r\n"), shape, 429);
        assert!(!o.refusal.says_close(), "{shape:?} {o:?}");
        assert_eq!(o.follow_up, Some(429), "{shape:?}");
    }
}

#[test]
fn fail_closed_limiter_refusals_keep_the_connection_or_say_close() {
    let mut redis = mcp_testkit::RedisServer::start();
    let dir = tempdir();
    let (_up, upstream) = start_upstream(dir.path());
    let limits = format!(
        "  requests_per_second: 1000\n  burst: 1000\n  redis:\n    url: \"{}\"\n    \
         prefix: \"ka\"\n    failure_mode: closed\n    timeout_ms: 2000\n",
        redis.url()
    );
    let cfg = base_config(&upstream, &dir.path().join("a.db"), "")
        .replace("  requests_per_second: 1000\n  burst: 1000\n", &limits)
        + &format!("ip_ratelimit:\n{limits}");
    let (_gw, base) = start_gateway(dir.path(), &cfg);
    let a = addr(&base);
    let mut c = Raw::open(a);
    c.write(&follow_up()).unwrap();
    assert_eq!(c.response().unwrap().status, 200);
    redis.kill();
    every_shape(a, "POST", &format!("x-api-key: {KEY}\r\n"), 503);
}

#[test]
fn a_body_trickled_past_the_drain_deadline_gets_connection_close() {
    let dir = tempdir();
    let (_up, upstream) = start_upstream(dir.path());
    let cfg = with_server_keys(
        &base_config(&upstream, &dir.path().join("a.db"), ""),
        "  refusalDrainTimeoutMs: 300\n",
    );
    let (_gw, base) = start_gateway(dir.path(), &cfg);
    let a = addr(&base);
    // Half the declared body, then nothing: the refusal comes once the drain deadline
    // passes, and says close.
    let body = body_of(1000);
    let mut c = Raw::open(a);
    let h = head("POST", "", &format!("content-length: {}\r\n", body.len()));
    c.write(h.as_bytes()).unwrap();
    c.write(&body[..500]).unwrap();
    let r = c.response().expect("a response");
    assert_eq!(r.status, 401);
    assert!(r.says_close(), "{r:?}");
    assert!(c.closed());
    // A chunked body whose last chunk never comes: the same.
    let mut c = Raw::open(a);
    let h = head("POST", "", "transfer-encoding: chunked\r\n");
    c.write(h.as_bytes()).unwrap();
    c.write(b"5\r\nhello\r\n").unwrap();
    let r = c.response().expect("a response");
    assert_eq!(r.status, 401);
    assert!(r.says_close(), "{r:?}");
    assert!(c.closed());
}

#[test]
fn expect_continue_refusals_do_not_ask_for_the_body_and_say_close() {
    let dir = tempdir();
    let (_up, upstream) = start_upstream(dir.path());
    let (_gw, base) = start_gateway(
        dir.path(),
        &base_config(&upstream, &dir.path().join("a.db"), ""),
    );
    let a = addr(&base);
    let body = body_of(1000);
    let mut c = Raw::open(a);
    let h = head(
        "POST",
        "expect: 100-continue\r\n",
        &format!("content-length: {}\r\n", body.len()),
    );
    c.write(h.as_bytes()).unwrap();
    let r = c.response().expect("a response");
    assert_eq!(r.status, 401);
    assert!(
        r.interim.is_empty(),
        "100 Continue sent for a refusal: {r:?}"
    );
    assert!(r.says_close(), "{r:?}");
    assert!(c.closed());
    // Accepted, the body is asked for and the connection stays.
    let mut c = Raw::open(a);
    let body = list_body();
    let h = head(
        "POST",
        &format!("x-api-key: {KEY}\r\nexpect: 100-continue\r\n"),
        &format!("content-length: {}\r\n", body.len()),
    );
    c.write(h.as_bytes()).unwrap();
    // The 100 arrives before the body is sent.
    let mut got = Vec::new();
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let mut b = [0u8; 256];
        let n = c.s.read(&mut b).unwrap();
        assert!(n > 0);
        got.extend_from_slice(&b[..n]);
    }
    assert!(
        got.starts_with(b"HTTP/1.1 100"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    let end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    c.buf.extend_from_slice(&got[end..]);
    c.write(body.as_bytes()).unwrap();
    let r = c.response().unwrap();
    assert_eq!(r.status, 200);
    assert!(!r.says_close());
    c.write(&follow_up()).unwrap();
    assert_eq!(c.response().unwrap().status, 200);
}

#[test]
fn http10_and_pipelined_refusals() {
    let dir = tempdir();
    let (_up, upstream) = start_upstream(dir.path());
    let (_gw, base) = start_gateway(
        dir.path(),
        &base_config(&upstream, &dir.path().join("a.db"), ""),
    );
    let a = addr(&base);
    // HTTP/1.0 with keep-alive asked: kept (the body drained) or closed with notice.
    let body = body_of(2000);
    let mut c = Raw::open(a);
    let h = head(
        "POST",
        "connection: keep-alive\r\n",
        &format!("content-length: {}\r\n", body.len()),
    )
    .replacen("HTTP/1.1", "HTTP/1.0", 1);
    c.write(h.as_bytes()).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    c.write(&body).unwrap();
    let r = c.response().unwrap();
    assert_eq!(r.status, 401);
    if r.says_close() || r.header("connection").is_none() {
        assert!(c.closed(), "{r:?}");
    } else {
        c.write(&follow_up()).unwrap();
        assert!(
            c.response().is_some(),
            "HTTP/1.0 keep-alive lost its next request"
        );
    }
    // Pipelined: a refused request with its body and the next request in one write.
    let body = body_of(3000);
    let mut c = Raw::open(a);
    let mut w = head("POST", "", &format!("content-length: {}\r\n", body.len())).into_bytes();
    w.extend_from_slice(&body);
    w.extend_from_slice(&follow_up());
    c.write(&w).unwrap();
    let r1 = c.response().unwrap();
    assert_eq!(r1.status, 401);
    assert!(!r1.says_close(), "{r1:?}");
    assert_eq!(c.response().map(|r| r.status), Some(200));
}

#[tokio::test]
async fn http2_refusals_leave_the_connection_usable() {
    let dir = tempdir();
    let (_up, upstream) = start_upstream(dir.path());
    let (_gw, base) = start_gateway(
        dir.path(),
        &base_config(&upstream, &dir.path().join("a.db"), ""),
    );
    let a = addr(&base);
    let tcp = tokio::net::TcpStream::connect(a).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .timer(hyper_util::rt::TokioTimer::new())
            .handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    let conn = tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = |key: Option<&str>, body: Vec<u8>| {
        let mut b = http::Request::post(format!("http://{a}/mcp"))
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2026-07-28")
            .header("mcp-method", "tools/list");
        if let Some(k) = key {
            b = b.header("x-api-key", k);
        }
        b.body(http_body_util::Full::new(Bytes::from(body)))
            .unwrap()
    };
    for n in [300, UNDER_CAP, OVER_CAP] {
        send.ready().await.unwrap();
        let r = send.send_request(req(None, body_of(n))).await.unwrap();
        assert_eq!(r.status(), 401);
        assert!(r.headers().get("connection").is_none(), "{:?}", r.headers());
        send.ready().await.unwrap();
        let r = send
            .send_request(req(Some(KEY), list_body().into_bytes()))
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "body {n}: the next stream is served");
    }
    assert!(!conn.is_finished());
}

#[test]
fn check_refuses_drain_settings_out_of_range() {
    let dir = tempdir();
    let cfg = base_config("http://127.0.0.1:9/mcp", &dir.path().join("a.db"), "");
    for (bad_line, key) in [
        ("refusalDrainBytes: 16777217", "server.refusalDrainBytes"),
        ("refusalDrainTimeoutMs: 0", "server.refusalDrainTimeoutMs"),
        (
            "refusalDrainTimeoutMs: 60001",
            "server.refusalDrainTimeoutMs",
        ),
    ] {
        let bad = with_server_keys(&cfg, &format!("  {bad_line}\n"));
        assert_check_refuses(dir.path(), &bad, bad_line, key);
    }
    // Zero bytes is allowed: nothing is drained, every unread body means close.
    let ok = with_server_keys(&cfg, "  refusalDrainBytes: 0\n");
    std::fs::write(dir.path().join("ok.yaml"), ok).unwrap();
    let (code, _, err) = run(
        &[
            "check",
            "--config",
            dir.path().join("ok.yaml").to_str().unwrap(),
        ],
        dir.path(),
        &[],
    );
    assert_eq!(code, 0, "{err}");
}
