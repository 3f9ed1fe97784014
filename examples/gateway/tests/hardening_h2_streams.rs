//! server.maxConcurrentStreams: one HTTP/2 connection holds at most that many requests in
//! progress (and so upstream requests); `check` refuses 0 and values over 10000. (The
//! default of 32 and the write timeout against HTTP/2 control frames are covered by
//! attack_sessions_ops.rs and mcp-tls's tests/h2_stall.rs.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use serde_json::json;

/// Established TCP connections to `port` (from /proc/net/tcp), counted on the client side.
fn established_to(port: u16) -> usize {
    let t = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    t.lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[3] == "01" && f[2].rsplit(':').next() == Some(&format!("{port:04X}"))
        })
        .count()
}

#[tokio::test]
async fn max_concurrent_streams_bounds_the_upstream_requests_of_one_connection() {
    let dir = tempdir();
    let (_up, upstream) = start_upstream(dir.path());
    let up_port: u16 = upstream
        .trim_start_matches("http://127.0.0.1:")
        .trim_end_matches("/mcp")
        .parse()
        .unwrap();
    let cfg = with_server_keys(
        &base_config(&upstream, &dir.path().join("a.db"), ""),
        "  workers: 1\n  maxConcurrentStreams: 4\n",
    );
    let (_gw, base) = start_gateway(dir.path(), &cfg);
    let addr: SocketAddr = base.trim_start_matches("http://").parse().unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let before = established_to(up_port);
    let req = || {
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
            "name": "slow_count", "arguments": {"count": 2, "delay_ms": 1000},
            "_meta": modern_meta()}})
        .to_string();
        http::Request::post(format!("http://{addr}/mcp"))
            .header("x-api-key", KEY)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2026-07-28")
            .header("mcp-method", "tools/call")
            .header("mcp-name", "slow_count")
            .body(http_body_util::Full::new(Bytes::from(body)))
            .unwrap()
    };
    // One call first, so that the gateway's SETTINGS are in (hyper's client then queues
    // what the cap does not allow).
    let r = send.clone().send_request(req()).await.unwrap();
    assert_eq!(r.status(), 200);
    let _ = http_body_util::BodyExt::collect(r.into_body()).await;
    let mut calls = Vec::new();
    for _ in 0..20 {
        let mut send = send.clone();
        let req = req();
        calls.push(tokio::spawn(async move {
            let r = send.send_request(req).await.unwrap();
            let status = r.status();
            let _ = http_body_util::BodyExt::collect(r.into_body()).await;
            status
        }));
    }
    let mut most = 0;
    while !calls.iter().all(|c| c.is_finished()) {
        most = most.max(established_to(up_port).saturating_sub(before));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for c in calls {
        assert_eq!(c.await.unwrap(), 200);
    }
    assert!(
        (1..=4).contains(&most),
        "one connection with maxConcurrentStreams: 4 held {most} upstream connections"
    );
}

#[test]
fn check_refuses_a_bad_max_concurrent_streams() {
    let dir = tempdir();
    let cfg = base_config("http://127.0.0.1:9/mcp", &dir.path().join("a.db"), "");
    for bad_line in ["maxConcurrentStreams: 0", "maxConcurrentStreams: 10001"] {
        let bad = with_server_keys(&cfg, &format!("  {bad_line}\n"));
        assert_check_refuses(dir.path(), &bad, bad_line, "server.maxConcurrentStreams");
    }
    let good = with_server_keys(&cfg, "  maxConcurrentStreams: 100\n");
    let path = dir.path().join("good.yaml");
    std::fs::write(&path, good).unwrap();
    let (code, _, err) = run(
        &["check", "--config", path.to_str().unwrap()],
        dir.path(),
        &[],
    );
    assert_eq!(code, 0, "{err}");
}
