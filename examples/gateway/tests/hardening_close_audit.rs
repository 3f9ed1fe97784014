//! The audit trail sees what the connection layer closes or refuses: a response cut by
//! the write timeout (server.writeTimeoutSeconds) is recorded as cut (`error`, reason
//! `write_timeout`), never as `success`, whether it was JSON or SSE, over HTTP/1.1 or
//! HTTP/2, and connections refused over server.maxConnectionsPerClient leave rows of
//! kind `connection`, aggregated per address (a flood of refusals cannot flood the trail).
//! A response the client reads keeps its `success` row, written as soon as it is sent.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A TCP connection to `addr` from the loopback address `from`, with a small receive
/// buffer (a client that does not read then stalls the gateway's writes soon).
async fn connect_from(addr: SocketAddr, from: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    socket.connect(addr).await.unwrap()
}

/// An authenticated 2026-07-28 `tools/call` of `tool` with `args`, as raw HTTP/1.1, its
/// response accepted as JSON or SSE.
fn call_request(addr: SocketAddr, tool: &str, args: Value) -> Vec<u8> {
    let body = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {
        "name": tool, "arguments": args, "_meta": modern_meta()}})
    .to_string();
    format!(
        "POST /mcp HTTP/1.1\r\nhost: {addr}\r\nx-api-key: {KEY}\r\n\
         content-type: application/json\r\naccept: application/json, text/event-stream\r\n\
         mcp-protocol-version: 2026-07-28\r\nmcp-method: tools/call\r\nmcp-name: {tool}\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Sends `request` from `from` and never reads the response; the socket is held until
/// the gateway closes it (then the task ends).
fn send_and_never_read(addr: SocketAddr, from: &str, request: Vec<u8>) {
    let from = from.to_owned();
    tokio::spawn(async move {
        let mut s = connect_from(addr, &from).await;
        s.write_all(&request).await.unwrap();
        tokio::time::sleep(Duration::from_secs(120)).await;
        drop(s);
    });
}

/// The same request over HTTP/2 from `from`, with a 16 KiB stream window the client
/// never opens again (it reads the head only).
fn send_h2_and_never_read(addr: SocketAddr, from: &str, request: Vec<u8>) {
    let from = from.to_owned();
    tokio::spawn(async move {
        let tcp = connect_from(addr, &from).await;
        let (mut send, conn) =
            hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                .initial_stream_window_size(16 * 1024)
                .handshake(hyper_util::rt::TokioIo::new(tcp))
                .await
                .unwrap();
        let conn = tokio::spawn(conn);
        let split = request.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let head = String::from_utf8_lossy(&request[..split]).into_owned();
        let path = head.split(' ').nth(1).unwrap().to_owned();
        let mut req = http::Request::post(format!("http://{addr}{path}"));
        for line in head.lines().skip(1) {
            let (k, v) = line.split_once(": ").unwrap();
            if k != "host" && k != "content-length" {
                req = req.header(k, v);
            }
        }
        let body = bytes::Bytes::copy_from_slice(&request[split + 4..]);
        let req = req.body(http_body_util::Full::new(body)).unwrap();
        let resp = send.send_request(req).await;
        tokio::time::sleep(Duration::from_secs(120)).await;
        drop((send, conn, resp));
    });
}

/// The request rows from the client address `ip`.
fn rows_from(db: &Path, ip: &str) -> Vec<AuditRow> {
    request_rows(db)
        .into_iter()
        .filter(|r| r.event["client_ip"] == ip)
        .collect()
}

/// Waits (up to `secs`) until `f` holds.
async fn within(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    for _ in 0..secs * 10 {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    f()
}

/// An upstream that answers a `tools/call` with arguments `{"json": n}` with a JSON result
/// of `n` bytes of text, and others with an SSE stream: `events` notifications of `size`
/// bytes each, `delay_ms` apart (default 5), then the result (`events` = 0: notifications forever, no
/// result).
async fn big_upstream() -> String {
    use futures_util::StreamExt;
    let app = axum::Router::new().route(
        "/mcp",
        axum::routing::post(|body: bytes::Bytes| async move {
            let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let id = v.get("id").cloned().unwrap_or(Value::Null);
            let args = &v["params"]["arguments"];
            if let Some(n) = args["json"].as_u64() {
                let resp = json!({"jsonrpc": "2.0", "id": id, "result": {"content": [
                    {"type": "text", "text": "j".repeat(n as usize)}]}});
                return http::Response::builder()
                    .header("content-type", "application/json")
                    .body(axum::body::Body::from(resp.to_string()))
                    .unwrap();
            }
            let events = args["events"].as_u64().unwrap_or(0);
            let size = args["size"].as_u64().unwrap_or(1024) as usize;
            let delay = args["delay_ms"].as_u64().unwrap_or(5);
            let filler = "s".repeat(size);
            let stream = futures_util::stream::unfold(0u64, move |i| {
                let filler = filler.clone();
                let id = id.clone();
                async move {
                    if events > 0 && i > events {
                        return None;
                    }
                    if delay > 0 {
                        tokio::time::sleep(Duration::from_millis(delay)).await;
                    }
                    let msg = if events > 0 && i == events {
                        json!({"jsonrpc": "2.0", "id": id, "result": {"content": [
                            {"type": "text", "text": "streamed"}]}})
                    } else {
                        json!({"jsonrpc": "2.0", "method": "notifications/message",
                            "params": {"level": "info", "data": filler}})
                    };
                    let ev = bytes::Bytes::from(format!("event: message\ndata: {msg}\n\n"));
                    Some((Ok::<_, std::io::Error>(ev), i + 1))
                }
            })
            .boxed();
            http::Response::builder()
                .header("content-type", "text/event-stream")
                .body(axum::body::Body::from_stream(stream))
                .unwrap()
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    format!("http://{addr}/mcp")
}

/// A gateway with a 1 s write timeout in front of the demo upstream (at /mcp) and the
/// big upstream (at /big): (processes, base URL, audit database).
async fn gateway(dir: &Path, server_keys: &str) -> (Vec<Proc>, String, std::path::PathBuf) {
    let (up, upstream) = start_upstream(dir);
    let big = big_upstream().await;
    let db = dir.join("a.db");
    let extra = format!(
        "  - name: big\n    path: /big\n    url: \"{big}\"\n\
         sanitization:\n  max_length: 600000\n"
    );
    let cfg = with_server_keys(&base_config(&upstream, &db, &extra), server_keys);
    let (gw, base) = start_gateway(dir, &cfg);
    (vec![up, gw], base, db)
}

/// What is wrong with the row of the client `ip`, which the gateway cut: `None` when it
/// is one row saying cut (`error`, reason `write_timeout`, the status sent).
fn cut_row_problem(db: &Path, ip: &str) -> Option<String> {
    let rows = rows_from(db, ip);
    let [r] = rows.as_slice() else {
        return Some(format!("{} rows", rows.len()));
    };
    let ok = r.reason.as_deref() == Some("write_timeout")
        && r.outcome.as_deref() == Some("error")
        && r.event["reason"] == "write_timeout"
        && r.status == Some(200)
        && r.event["bytes_out"].as_u64().is_some();
    (!ok).then(|| {
        format!(
            "outcome {:?}, reason {:?}, bytes_out {}: {}",
            r.outcome, r.reason, r.event["bytes_out"], r.event
        )
    })
}

#[tokio::test]
async fn responses_cut_by_the_write_timeout_are_recorded_as_cut_not_success() {
    let dir = tempdir();
    let (_procs, base, db) = gateway(
        dir.path(),
        "  workers: 2\n  writeTimeoutSeconds: 1\n  idleTimeoutSeconds: 300\n",
    )
    .await;
    let addr: SocketAddr = base.trim_start_matches("http://").parse().unwrap();
    let on = |path: &str, args: Value| {
        let mut r = call_request(addr, "big", args);
        let at = r.windows(9).position(|w| w == b"POST /mcp").unwrap();
        r.splice(at..at + 9, format!("POST {path}").bytes());
        r
    };
    let json = |n: u64| on("/big", json!({"json": n}));
    let sse = |events: u64, size: u64, delay_ms: u64| {
        on(
            "/big",
            json!({"events": events, "size": size, "delay_ms": delay_ms}),
        )
    };
    // Each client from an address of its own, to find its rows. None reads a byte.
    let single = [
        // JSON far larger than the socket and write buffers: cut in the middle.
        ("127.0.0.21", "json 8 MB, HTTP/1.1", json(8_000_000), false),
        // An endless SSE stream.
        (
            "127.0.0.22",
            "endless sse, HTTP/1.1",
            sse(0, 4 * 1024, 5),
            false,
        ),
        // HTTP/2 with a window the client never opens again.
        ("127.0.0.23", "json 590 KB, HTTP/2", json(590_000), true),
        (
            "127.0.0.24",
            "endless sse, HTTP/2",
            sse(0, 4 * 1024, 5),
            true,
        ),
    ];
    // Pipelined HTTP/1.1 responses of 300 KB until the socket buffers are full. JSON
    // results are redacted as they stream (segment by segment), like an SSE stream's
    // events: when the connection stalls, the response in progress is the one cut (its
    // row counts the bytes written). `ended` would mean a response that ended whole in
    // the write buffer, unwritten.
    let pipelined = [
        (
            "127.0.0.25",
            "pipelined json, HTTP/1.1",
            json(300_000),
            false,
        ),
        (
            "127.0.0.26",
            "pipelined sse, HTTP/1.1",
            sse(36, 8 * 1024, 0),
            false,
        ),
    ];
    for (ip, _, request, h2) in &single {
        if *h2 {
            send_h2_and_never_read(addr, ip, request.clone());
        } else {
            send_and_never_read(addr, ip, request.clone());
        }
    }
    for (ip, _, request, _) in &pipelined {
        send_and_never_read(addr, ip, request.repeat(24));
    }
    let cases: Vec<&str> = single
        .iter()
        .map(|c| c.0)
        .chain(pipelined.iter().map(|c| c.0))
        .collect();
    // Every connection is cut within a few seconds; its row follows.
    let all_recorded = within(60, || cases.iter().all(|ip| !rows_from(&db, ip).is_empty())).await;
    // A moment for a second (wrong) row, if any.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(all_recorded, "{:#?}", request_rows(&db));
    let mut problems: Vec<String> = single
        .iter()
        .filter_map(|(ip, what, ..)| cut_row_problem(&db, ip).map(|p| format!("{what}: {p}")))
        .collect();
    for (ip, what, _, ended) in &pipelined {
        // The responses the kernel took are served (`success`, every byte); the one that
        // ended in the write buffer (JSON) and the one in progress are cut; none is
        // `cancelled`.
        let rows = rows_from(&db, ip);
        let full = rows
            .iter()
            .filter_map(|r| r.event["bytes_out"].as_u64())
            .max()
            .unwrap_or(0);
        let cut = rows.iter().any(|r| {
            r.reason.as_deref() == Some("write_timeout")
                && r.outcome.as_deref() == Some("error")
                && (!ended || r.event["bytes_out"] == full)
        });
        let other = rows.iter().any(|r| {
            r.reason.as_deref() != Some("write_timeout") && r.outcome.as_deref() != Some("success")
        });
        if !cut || other {
            let seen: Vec<_> = rows
                .iter()
                .map(|r| {
                    (
                        r.outcome.clone(),
                        r.reason.clone(),
                        r.event["bytes_out"].clone(),
                    )
                })
                .collect();
            problems.push(format!("{what}: {seen:?}"));
        }
    }
    assert!(problems.is_empty(), "rows not saying cut: {problems:#?}");
    // The query API lists them among the errors.
    let found = audit_query(&base, "status=error&limit=100")
        .await
        .to_string();
    assert!(
        found.matches("write_timeout").count() >= single.len(),
        "{found}"
    );
}

#[tokio::test]
async fn a_response_the_client_reads_keeps_its_success_row_written_at_once() {
    let dir = tempdir();
    let (_procs, base, db) = gateway(
        dir.path(),
        "  writeTimeoutSeconds: 1\n  idleTimeoutSeconds: 300\n",
    )
    .await;
    let c = client();
    // A large JSON response and a finite SSE stream, read to the end, on a keep-alive
    // connection that stays open afterwards.
    let r = call_tool(
        &c,
        &format!("{base}/mcp"),
        "echo",
        json!({"message": "y".repeat(300_000)}),
    )
    .header("x-api-key", KEY)
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let json_len = r.bytes().await.unwrap().len() as u64;
    let r = call_tool(
        &c,
        &format!("{base}/big"),
        "big",
        json!({"events": 40, "size": 8192}),
    )
    .header("x-api-key", KEY)
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let sse_body = r.text().await.unwrap();
    assert!(sse_body.contains("streamed"));
    // Both rows are written while the connection is still open (not held until it
    // closes), unchanged: success, no reason, every byte.
    assert!(
        within(20, || request_rows(&db).len() >= 2).await,
        "{:#?}",
        request_rows(&db)
    );
    let rows = request_rows(&db);
    assert_eq!(rows.len(), 2, "{rows:#?}");
    for r in &rows {
        assert_eq!(r.outcome.as_deref(), Some("success"), "{r:#?}");
        assert_eq!(r.reason, None, "{r:#?}");
        assert!(r.event.get("detail").is_none(), "{r:#?}");
    }
    assert_eq!(rows[0].event["bytes_out"], json_len, "{:#?}", rows[0]);
    assert_eq!(
        rows[1].event["bytes_out"],
        sse_body.len() as u64,
        "{:#?}",
        rows[1]
    );
    // No connection row for a client that stayed within the limits.
    assert!(audit_rows(&db).iter().all(|r| r.kind != "connection"));
}

/// Opens a connection from `from` and waits until the gateway answers a request on it
/// (`Some`, held open) or closes it unanswered (`None`).
async fn answered_from(addr: SocketAddr, from: &str) -> Option<TcpStream> {
    let mut s = connect_from(addr, from).await;
    s.write_all(&call_request(addr, "echo", json!({"message": "hi"})))
        .await
        .ok()?;
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

fn connection_rows(db: &Path, ip: &str) -> Vec<AuditRow> {
    audit_rows(db)
        .into_iter()
        .filter(|r| r.kind == "connection" && r.event["client_ip"] == ip)
        .collect()
}

fn refused_in(rows: &[AuditRow]) -> u64 {
    rows.iter()
        .map(|r| r.event["data"]["refused"].as_u64().unwrap_or(0))
        .sum()
}

#[tokio::test]
async fn connections_refused_over_the_per_client_cap_leave_aggregated_rows() {
    let dir = tempdir();
    let (_procs, base, db) = gateway(
        dir.path(),
        "  maxConnectionsPerClient: 2\n  idleTimeoutSeconds: 300\n",
    )
    .await;
    let addr: SocketAddr = base.trim_start_matches("http://").parse().unwrap();
    // Two connections held from each of two addresses, then a flood of refused ones
    // from the first (200) and a few from the second (3).
    let mut held = Vec::new();
    for from in ["127.0.0.31", "127.0.0.32"] {
        for _ in 0..2 {
            held.push(answered_from(addr, from).await.expect("within the cap"));
        }
    }
    for (from, n) in [("127.0.0.31", 200), ("127.0.0.32", 3)] {
        for _ in 0..n {
            assert!(answered_from(addr, from).await.is_none(), "over the cap");
        }
    }
    // The refusals show at once (the first of each address) and in full within the
    // aggregation interval (10 s).
    let expected = |db: &Path| {
        refused_in(&connection_rows(db, "127.0.0.31")) == 200
            && refused_in(&connection_rows(db, "127.0.0.32")) == 3
    };
    assert!(
        within(40, || expected(&db)).await,
        "{:#?}",
        audit_rows(&db)
            .into_iter()
            .filter(|r| r.kind == "connection")
            .collect::<Vec<_>>()
    );
    for ip in ["127.0.0.31", "127.0.0.32"] {
        let rows = connection_rows(&db, ip);
        // Aggregated: the first refusal, then one row per interval at most.
        assert!(!rows.is_empty() && rows.len() <= 3, "{rows:#?}");
        for r in &rows {
            assert_eq!(r.outcome.as_deref(), Some("denied"), "{r:#?}");
            assert_eq!(r.reason.as_deref(), Some("too_many_connections"), "{r:#?}");
            assert_eq!(r.event["data"]["limit"], 2, "{r:#?}");
            assert_eq!(r.user, None);
        }
    }
    // The held connections were not refused, nor recorded as such; /metrics agrees.
    let m = metrics_text(&base).await;
    assert_eq!(
        metric_value(&m, "mcp_gateway_connections_per_client_refused_total"),
        Some(203.0),
        "{m}"
    );
    // The query API lists them among the denials.
    let found = audit_query(&base, "status=denied&limit=100")
        .await
        .to_string();
    assert!(found.contains("too_many_connections"), "{found}");
    drop(held);
}
