//! Hostile upstreams whose answers stall, and clients whose bodies stop short, through
//! the real gateway process over real sockets. The upstream is a raw TCP server written
//! here, which answers by the path of its URL:
//!
//! - JSON answers that stall: headers then nothing, `Content-Length: 34` then 33 bytes,
//!   a chunk cut in its middle, a byte every 100 ms for ever: a JSON-RPC 504 within the
//!   bounds (`bodyIdleTimeoutMs`, `responseDeadlineMs`), audited `upstream_timeout`;
//! - the same after more than the gateway reads ahead: the head was passed on, so the
//!   stream is ended, audited `error` with the reason of the bound;
//! - an SSE answer with one event then nothing: the event reaches the client and the
//!   stream ends after `sseIdleTimeoutMs`;
//! - status lines 600, 99, 1000: a JSON-RPC 502, never passed on, never a hang;
//! - an answer cut short by a closed connection: 502;
//! - a client whose `GET`, `DELETE` or `POST` body stops short of its `Content-Length`
//!   (closed, or stalled): 400 or 408, never `502 Upstream MCP server error`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Reads a request head (and its `Content-Length` body, for at most 5 s); the path and
/// the head.
async fn read_request(s: &mut TcpStream) -> Option<(String, String)> {
    let mut buf = Vec::new();
    let mut b = [0u8; 4096];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut b).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&b[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut have = buf.len() - end;
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while have < len {
            match s.read(&mut b).await {
                Ok(0) | Err(_) => break,
                Ok(n) => have += n,
            }
        }
    })
    .await;
    let path = head.split(' ').nth(1)?.to_owned();
    Some((path, head))
}

const HOLD: Duration = Duration::from_secs(120);

/// A JSON-RPC result of `n` bytes or more (a text of `a`s), without its end.
fn big_prefix(n: usize) -> Vec<u8> {
    let mut v = br#"{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":""#.to_vec();
    v.resize(n, b'a');
    v
}

/// The hostile upstream: answers each connection by its request's path.
async fn hostile_upstream() -> std::net::SocketAddr {
    hostile_upstream_seen().await.0
}

/// [`hostile_upstream`], and the heads of the `DELETE`s it receives.
async fn hostile_upstream_seen() -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (deletes, seen) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let deletes = deletes.clone();
            tokio::spawn(async move {
                while let Some((path, head)) = read_request(&mut s).await {
                    let json = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n";
                    if head.starts_with("DELETE ") {
                        let _ = deletes.send(head);
                        let _ = s.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").await;
                        continue;
                    }
                    match path.as_str() {
                        "/initstall" => {
                            let head = format!(
                                "{json}Mcp-Session-Id: s-stalled-7\r\nContent-Length: 100\r\n\r\n"
                            );
                            let _ = s.write_all(head.as_bytes()).await;
                            tokio::time::sleep(HOLD).await;
                        }
                        "/short" => {
                            let body = br#"{"jsonrpc":"2.0","id":1,"result":"#;
                            assert_eq!(body.len(), 33);
                            let head = format!("{json}Content-Length: 34\r\n\r\n");
                            let _ = s.write_all(head.as_bytes()).await;
                            let _ = s.write_all(body).await;
                            tokio::time::sleep(HOLD).await;
                        }
                        "/nothing" => {
                            let head = format!("{json}Content-Length: 40\r\n\r\n");
                            let _ = s.write_all(head.as_bytes()).await;
                            tokio::time::sleep(HOLD).await;
                        }
                        "/chunk" => {
                            let head = format!(
                                "{json}Transfer-Encoding: chunked\r\n\r\n20\r\n{{\"jsonrpc\":"
                            );
                            let _ = s.write_all(head.as_bytes()).await;
                            tokio::time::sleep(HOLD).await;
                        }
                        "/trickle" => {
                            let head = format!("{json}Content-Length: 100000\r\n\r\n");
                            let _ = s.write_all(head.as_bytes()).await;
                            let body = big_prefix(100_000);
                            for b in body.chunks(1) {
                                if s.write_all(b).await.is_err() {
                                    break;
                                }
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                        }
                        "/bigstall" | "/bigtrickle" => {
                            let head = format!("{json}Content-Length: 400000\r\n\r\n");
                            let _ = s.write_all(head.as_bytes()).await;
                            let _ = s.write_all(&big_prefix(200_000)).await;
                            if path == "/bigtrickle" {
                                loop {
                                    if s.write_all(b"a").await.is_err() {
                                        break;
                                    }
                                    tokio::time::sleep(Duration::from_millis(100)).await;
                                }
                            }
                            tokio::time::sleep(HOLD).await;
                        }
                        "/sse" => {
                            let event = "event: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{\"progressToken\":\"p\",\"progress\":1}}\n\n";
                            let head = format!(
                                "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{event}\r\n",
                                event.len()
                            );
                            let _ = s.write_all(head.as_bytes()).await;
                            tokio::time::sleep(HOLD).await;
                        }
                        "/s600" | "/s99" | "/s1000" => {
                            let code = &path[2..];
                            let head = format!(
                                "HTTP/1.1 {code} Odd\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{{}}"
                            );
                            let _ = s.write_all(head.as_bytes()).await;
                            tokio::time::sleep(HOLD).await;
                        }
                        "/slowok" => {
                            let body = br#"{"jsonrpc":"2.0","id":1,"result":{"content":[]}}"#;
                            let head = format!("{json}Content-Length: {}\r\n\r\n", body.len());
                            let _ = s.write_all(head.as_bytes()).await;
                            for part in body.chunks(16) {
                                tokio::time::sleep(Duration::from_millis(600)).await;
                                let _ = s.write_all(part).await;
                            }
                        }
                        "/closeshort" => {
                            let head = format!("{json}Content-Length: 34\r\n\r\n");
                            let _ = s.write_all(head.as_bytes()).await;
                            let _ = s.write_all(br#"{"jsonrpc":"2.0","id":1,"result":"#).await;
                            return;
                        }
                        _ => {
                            let body = r#"{"jsonrpc":"2.0","id":1,"result":{}}"#;
                            let head = format!("{json}Content-Length: {}\r\n\r\n", body.len());
                            let _ = s.write_all(head.as_bytes()).await;
                            let _ = s.write_all(body.as_bytes()).await;
                        }
                    }
                }
            });
        }
    });
    (addr, seen)
}

const PATHS: &[&str] = &[
    "short",
    "nothing",
    "chunk",
    "trickle",
    "bigstall",
    "bigtrickle",
    "sse",
    "s600",
    "s99",
    "s1000",
    "closeshort",
    "slowok",
    "initstall",
];

/// A gateway (authentication, audit in dir/a.db) with one upstream per hostile path:
/// `/<path>` on the gateway. Bounds: headers 3 s, body idle 1 s, JSON deadline 4 s, SSE
/// idle 1 s.
fn start_hostile(dir: &Path, upstream: std::net::SocketAddr) -> (Proc, String) {
    let timeouts = "    responseTimeoutMs: 3000\n    bodyIdleTimeoutMs: 1000\n    responseDeadlineMs: 4000\n    sseIdleTimeoutMs: 1000\n";
    let mut extra = timeouts.to_owned();
    for p in &PATHS[1..] {
        extra.push_str(&format!(
            "  - name: {p}\n    path: /{p}\n    url: \"http://{upstream}/{p}\"\n{timeouts}"
        ));
    }
    let yaml = base_config(
        &format!("http://{upstream}/{}", PATHS[0]),
        &dir.join("a.db"),
        &extra,
    )
    .replacen(
        "  - name: demo\n    path: /mcp\n",
        "  - name: short\n    path: /short\n",
        1,
    );
    start_gateway(dir, &yaml)
}

/// Calls a tool through `/<path>` with a generous deadline (a hang fails the test).
async fn call(base: &str, path: &str) -> Result<(u16, String), String> {
    let c = client();
    let r = call_tool(
        &c,
        &format!("{base}/{path}"),
        "echo",
        json!({"message": "m"}),
    )
    .header("x-api-key", KEY)
    .timeout(Duration::from_secs(20))
    .send()
    .await
    .map_err(|e| format!("{path}: no answer: {e}"))?;
    let status = r.status().as_u16();
    let body = r.text().await.map_err(|e| format!("{path}: body: {e}"))?;
    Ok((status, body))
}

/// The audit row of the last request to `/<path>` (the audit trail is written shortly
/// after the response: waits up to 10 s).
async fn row_of(db: &Path, path: &str) -> AuditRow {
    for _ in 0..100 {
        if db.exists()
            && let Some(r) = request_rows(db)
                .into_iter()
                .rev()
                .find(|r| r.event["path"] == format!("/{path}"))
        {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no audit row for /{path}");
}

/// The issue's example and its kin: a JSON answer that stalls before the gateway passed
/// anything on is a JSON-RPC 504 echoing the id, audited `upstream_timeout`, within the
/// bounds (before: no answer for as long as the upstream held the connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_json_answer_is_a_504() {
    let dir = tempdir();
    let upstream = hostile_upstream().await;
    let (_gw, base) = start_hostile(dir.path(), upstream);
    let db = dir.path().join("a.db");
    let cases: [&'static str; 4] = ["short", "nothing", "chunk", "trickle"];
    let tasks: Vec<_> = cases
        .into_iter()
        .map(|p| {
            let base = base.clone();
            tokio::spawn(async move { call(&base, p).await })
        })
        .collect();
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    let mut failures = Vec::new();
    for (path, got) in cases.iter().zip(answers) {
        match got {
            Ok((504, body)) => {
                let v: Value = serde_json::from_str(&body).unwrap();
                assert_eq!(v["error"]["code"], -32002, "{path}: {v}");
                assert_eq!(v["id"], 1, "{path}: {v}");
                let row = row_of(&db, path).await;
                assert_eq!(row.status, Some(504), "{path}");
                assert_eq!(row.outcome.as_deref(), Some("error"), "{path}");
                assert_eq!(row.reason.as_deref(), Some("upstream_timeout"), "{path}");
                let detail = row.event["detail"].as_str().unwrap_or_default().to_owned();
                let want = if *path == "trickle" {
                    "body_deadline"
                } else {
                    "timeout"
                };
                assert!(detail.contains(want), "{path}: {detail}");
            }
            other => failures.push(format!("{path}: {other:?}")),
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    // Counted on /metrics.
    let m = metrics_text(&base).await;
    for (path, stall) in [("short", "body_idle_timeout"), ("trickle", "body_deadline")] {
        let series =
            format!("mcp_gateway_upstream_stalls_total{{stall=\"{stall}\",upstream=\"{path}\"}}");
        assert!(
            m.lines()
                .any(|l| l.starts_with("mcp_gateway_upstream_stalls_total")
                    && l.contains(&format!("upstream=\"{path}\""))
                    && l.contains(&format!("stall=\"{stall}\""))),
            "{series} missing:\n{}",
            m.lines()
                .filter(|l| l.contains("stalls"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

/// Past what the gateway reads ahead, the head is on its way: a stall (idle) or a trickle
/// (deadline) ends the stream instead of holding it, and the row says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stall_after_the_head_ends_the_stream() {
    let dir = tempdir();
    let upstream = hostile_upstream().await;
    let (_gw, base) = start_hostile(dir.path(), upstream);
    let db = dir.path().join("a.db");
    for (path, reason) in [
        ("bigstall", "body_idle_timeout"),
        ("bigtrickle", "body_deadline"),
    ] {
        let c = client();
        let r = call_tool(
            &c,
            &format!("{base}/{path}"),
            "echo",
            json!({"message": "m"}),
        )
        .header("x-api-key", KEY)
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let body = r.bytes().await;
        // The stream was ended by the gateway, not by the client's deadline.
        let e = body.expect_err("a cut body is not a whole answer");
        assert!(!e.is_timeout(), "{path}: the gateway held the stream: {e}");
        let row = row_of(&db, path).await;
        assert_eq!(row.outcome.as_deref(), Some("error"), "{path}");
        assert_eq!(row.status, Some(200), "{path}");
        assert_eq!(row.reason.as_deref(), Some(reason), "{path}");
    }
}

/// An SSE answer with one event, then nothing: the event reaches the client, and the
/// stream ends after `sseIdleTimeoutMs` (before: held as long as the upstream held it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_sse_answer_ends_with_what_was_sent() {
    let dir = tempdir();
    let upstream = hostile_upstream().await;
    let (_gw, base) = start_hostile(dir.path(), upstream);
    let db = dir.path().join("a.db");
    let c = client();
    let mut r = call_tool(&c, &format!("{base}/sse"), "echo", json!({"message": "m"}))
        .header("x-api-key", KEY)
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut got = Vec::new();
    let end = loop {
        match r.chunk().await {
            Ok(Some(b)) => got.extend_from_slice(&b),
            Ok(None) => break None,
            Err(e) => break Some(e),
        }
    };
    if let Some(e) = &end {
        assert!(!e.is_timeout(), "the gateway held the stream: {e}");
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.contains("notifications/progress"), "{text}");
    let row = row_of(&db, "sse").await;
    assert_eq!(row.outcome.as_deref(), Some("error"));
    assert_eq!(row.reason.as_deref(), Some("body_idle_timeout"));
}

/// Status lines outside 200-599 are never passed on: a JSON-RPC 502 (hyper refuses some
/// at parse, the gateway the rest), never a hang or a 500. An answer cut by a closed
/// connection before the gateway passed anything on is a 502 too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_statuses_and_cut_answers_are_a_502() {
    let dir = tempdir();
    let upstream = hostile_upstream().await;
    let (_gw, base) = start_hostile(dir.path(), upstream);
    let db = dir.path().join("a.db");
    let mut failures = Vec::new();
    for path in ["s600", "s99", "s1000", "closeshort"] {
        match call(&base, path).await {
            Ok((502, body)) => {
                let v: Value = serde_json::from_str(&body).unwrap();
                assert_eq!(v["error"]["code"], -32002, "{path}: {v}");
                assert_eq!(v["id"], 1, "{path}: {v}");
                let row = row_of(&db, path).await;
                assert_eq!(row.reason.as_deref(), Some("upstream_error"), "{path}");
            }
            other => failures.push(format!("{path}: {other:?}")),
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// An `initialize` whose answer issued a session and then stalled: the client gets a
/// 504, and the session, which no one will bind, is ended at the upstream (`DELETE`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_issued_by_a_stalled_answer_is_ended() {
    let dir = tempdir();
    let (upstream, mut deletes) = hostile_upstream_seen().await;
    let (_gw, base) = start_hostile(dir.path(), upstream);
    let c = client();
    let r = c
        .post(format!("{base}/initstall"))
        .header("x-api-key", KEY)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(
            json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "protocolVersion": "2025-11-25", "capabilities": {},
                "clientInfo": {"name": "t", "version": "1"}}})
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 504);
    let head = tokio::time::timeout(Duration::from_secs(20), deletes.recv())
        .await
        .expect("the stalled answer's session is ended at the upstream")
        .unwrap();
    assert!(
        head.to_ascii_lowercase()
            .contains("mcp-session-id: s-stalled-7"),
        "{head}"
    );
}

/// An answer whose pauses stay under the idle bound and that ends before the deadline
/// passes whole (the bounds cut stalls, not slow answers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_within_the_bounds_passes_whole() {
    let dir = tempdir();
    let upstream = hostile_upstream().await;
    let (_gw, base) = start_hostile(dir.path(), upstream);
    let (status, body) = call(&base, "slowok").await.unwrap();
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["result"]["content"], json!([]), "{v}");
    let row = row_of(&dir.path().join("a.db"), "slowok").await;
    assert_eq!(row.outcome.as_deref(), Some("success"));
}

/// Sends `head` and `body_part` (less than the head's `Content-Length`), then closes its
/// writing half (`close`) or stalls; the status line of the answer, if any.
async fn cut_client_body(base: &str, head: &str, body_part: &str, close: bool) -> Option<String> {
    let addr = base.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body_part.as_bytes()).await.unwrap();
    if close {
        s.shutdown().await.unwrap();
    }
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), async {
        let mut b = [0u8; 4096];
        loop {
            match s.read(&mut b).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    out.extend_from_slice(&b[..n]);
                    if out.windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&out).to_string();
    text.lines()
        .next()
        .map(str::to_owned)
        .filter(|l| !l.is_empty())
}

fn client_heads(key_header: &str) -> Vec<(&'static str, String)> {
    let common = format!(
        "Host: 127.0.0.1\r\n{key_header}Content-Length: 100\r\nMcp-Protocol-Version: 2026-07-28\r\n"
    );
    vec![
        (
            "GET",
            format!("GET /mcp HTTP/1.1\r\n{common}Accept: text/event-stream\r\n\r\n"),
        ),
        (
            "DELETE",
            format!("DELETE /mcp HTTP/1.1\r\n{common}Mcp-Session-Id: s-1\r\n\r\n"),
        ),
        (
            "POST",
            format!(
                "POST /mcp HTTP/1.1\r\n{common}Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\n\r\n"
            ),
        ),
    ]
}

/// A client body cut short (closed, or stalled) is the client's error, 400 or 408,
/// never `502 Upstream MCP server error`: with every layer off (the body streamed
/// through to the upstream; before: 502) and with the layers (refused or timed out
/// before the upstream).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_body_cut_short_is_the_clients_error() {
    let dir = tempdir();
    let upstream = hostile_upstream().await;
    let plain = format!(
        "server:\n  addr: \"127.0.0.1:0\"\n  bodyTimeoutSeconds: 2\nlayers:\n  enabled: false\nauth:\n  enabled: false\nupstreams:\n  - name: ok\n    path: /mcp\n    url: \"http://{upstream}/ok\"\n"
    );
    let plain_dir = dir.path().join("plain");
    std::fs::create_dir_all(&plain_dir).unwrap();
    let (_plain_gw, plain_base) = start_gateway(&plain_dir, &plain);
    let layered_dir = dir.path().join("layered");
    std::fs::create_dir_all(&layered_dir).unwrap();
    let layered = with_server_keys(
        &base_config(
            &format!("http://{upstream}/ok"),
            &layered_dir.join("a.db"),
            "",
        ),
        "  bodyTimeoutSeconds: 2\n",
    );
    let (_layered_gw, layered_base) = start_gateway(&layered_dir, &layered);
    let mut failures = Vec::new();
    for (name, base, key) in [
        ("layers off", &plain_base, String::new()),
        ("layers on", &layered_base, format!("x-api-key: {KEY}\r\n")),
    ] {
        for (method, head) in client_heads(&key) {
            for close in [true, false] {
                let got = cut_client_body(base, &head, "{\"jsonrpc\":", close).await;
                let how = if close { "closed" } else { "stalled" };
                let ok = match (&got, close) {
                    // A client that closed may get no answer at all; never a 502.
                    (None, true) => true,
                    (Some(l), _) => l.contains(" 400 ") || l.contains(" 408 "),
                    (None, false) => false,
                };
                if !ok {
                    failures.push(format!("{name}, {method} body {how}: {got:?}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Bounds that cannot hold are refused by `check`, naming the key: a JSON deadline
/// shorter than the wait for the headers, and bounds of 0 (none) where none is unsafe.
#[test]
fn check_refuses_impossible_upstream_bounds() {
    let dir = tempdir();
    let base = base_config("http://127.0.0.1:9/mcp", &dir.path().join("a.db"), "");
    let with = |extra: &str| {
        base.replace(
            "    url: \"http://127.0.0.1:9/mcp\"\n",
            &format!("    url: \"http://127.0.0.1:9/mcp\"\n{extra}"),
        )
    };
    assert_check_refuses(
        dir.path(),
        &with("    responseTimeoutMs: 5000\n    responseDeadlineMs: 4000\n"),
        "responseDeadlineMs: 4000",
        "upstreams[0].responseDeadlineMs",
    );
    assert_check_refuses(
        dir.path(),
        &with("    responseTimeoutMs: 400000\n"),
        "responseTimeoutMs: 400000",
        "upstreams[0].responseTimeoutMs",
    );
    for key in [
        "bodyIdleTimeoutMs",
        "responseDeadlineMs",
        "responseTimeoutMs",
    ] {
        assert_check_refuses(
            dir.path(),
            &with(&format!("    {key}: 0\n")),
            &format!("{key}: 0"),
            &format!("upstreams[0].{key}"),
        );
    }
    // An SSE idle timeout of 0 is allowed (none), and said.
    let path = dir.path().join("ok.yaml");
    std::fs::write(&path, with("    sseIdleTimeoutMs: 0\n")).unwrap();
    let (code, out, err) = run(
        &["check", "--config", path.to_str().unwrap()],
        dir.path(),
        &[],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        format!("{out}{err}").contains("sseIdleTimeoutMs is 0"),
        "{out}{err}"
    );
}
