//! The reverse proxy: what reaches the upstream, upstream failures, SSE streaming, both
//! protocol revisions, metrics and graceful shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::any;
use bytes::Bytes;
use common::*;
use futures_util::StreamExt;
use http::HeaderMap;
use serde_json::{Value, json};
use tokio::sync::Notify;

/// A recording upstream: answers every POST with a JSON-RPC result and keeps the request
/// headers it received.
async fn recording_upstream() -> (String, Arc<Mutex<Vec<HeaderMap>>>) {
    let seen: Arc<Mutex<Vec<HeaderMap>>> = Arc::default();
    let s2 = seen.clone();
    let app = Router::new().route(
        "/mcp",
        any(move |headers: HeaderMap, body: Bytes| {
            let s = s2.clone();
            async move {
                s.lock().unwrap().push(headers);
                let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let resp = json!({"jsonrpc": "2.0", "id": v.get("id").cloned().unwrap_or(Value::Null),
                    "result": {"content": [{"type": "text", "text": "recorded"}]}});
                (
                    [("content-type", "application/json"), ("mcp-session-id", "sess-123"), ("set-cookie", "upstream=1")],
                    resp.to_string(),
                )
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (format!("http://{addr}/mcp"), seen)
}

#[tokio::test]
async fn client_credentials_never_reach_the_upstream_and_upstream_credentials_are_injected() {
    let dir = tempdir();
    let (upstream, seen) = recording_upstream().await;
    let yaml = base_config(&upstream, &dir.path().join("a.db"), "")
        .replace(
            &format!("    url: \"{upstream}\"\n"),
            &format!(
                "    url: \"{upstream}\"\n    headers:\n      Authorization: \"Bearer ${{UPSTREAM_TOKEN}}\"\n"
            ),
        );
    let (_gw, base) = start_gateway_env(
        dir.path(),
        &yaml,
        &[("UPSTREAM_TOKEN", "upstream-secret-token")],
    );
    let c = client();
    // The upstream issues sess-123 (bound to this principal), which the client sends back.
    let r = call_tool(&c, &format!("{base}/mcp"), "echo", json!({"message": "x"}))
        .header("x-api-key", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["mcp-session-id"], "sess-123");
    let r = call_tool(&c, &format!("{base}/mcp"), "echo", json!({"message": "x"}))
        .header("x-api-key", KEY)
        .header("cookie", "session=client-cookie")
        .header("proxy-authorization", "Basic Y2xpZW50OnNlY3JldA==")
        .header("x-auth-token", "client-token")
        .header("mcp-session-id", "sess-123")
        .header("last-event-id", "ev-1")
        .header("x-forwarded-for", "6.6.6.6")
        .header("connection", "x-hop")
        .header("x-hop", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Upstream's session id comes back; its cookies do not.
    assert_eq!(r.headers()["mcp-session-id"], "sess-123");
    assert!(!r.headers().contains_key("set-cookie"));
    let h = seen.lock().unwrap().pop().unwrap();
    assert_eq!(h["authorization"], "Bearer upstream-secret-token");
    for gone in [
        "x-api-key",
        "cookie",
        "proxy-authorization",
        "x-auth-token",
        "x-hop",
        "origin",
    ] {
        assert!(!h.contains_key(gone), "{gone} reached the upstream");
    }
    let all: String = h.iter().map(|(k, v)| format!("{k}: {v:?}\n")).collect();
    assert!(
        !all.contains(KEY),
        "the client's key reached the upstream:\n{all}"
    );
    assert!(!all.contains("client-cookie"));
    // MCP headers pass; the client IP is the gateway's view, not the spoofed header.
    assert_eq!(h["mcp-session-id"], "sess-123");
    assert_eq!(h["mcp-protocol-version"], "2026-07-28");
    assert_eq!(h["mcp-method"], "tools/call");
    assert_eq!(h["mcp-name"], "echo");
    assert_eq!(h["last-event-id"], "ev-1");
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
}

#[tokio::test]
async fn upstream_down_is_502_and_slow_upstream_is_504() {
    let dir = tempdir();
    // A port with nothing listening.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    // An upstream that accepts and never answers.
    let slow = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let slow_addr = slow.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = slow.accept().await {
            held.push(s);
        }
    });
    let yaml = format!(
        r#"{}  - name: dead
    path: /dead
    url: "http://{dead}/mcp"
    connectTimeoutMs: 2000
  - name: slow
    path: /slow
    url: "http://{slow_addr}/mcp"
    responseTimeoutMs: 300
"#,
        base_config("http://127.0.0.1:9/unused", &dir.path().join("a.db"), "")
    );
    let (_gw, base) = start_gateway(dir.path(), &yaml);
    let c = client();
    let r = call_tool(&c, &format!("{base}/dead"), "echo", json!({"message": "x"}))
        .header("x-api-key", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], -32002);
    assert_eq!(v["id"], 1);
    let r = call_tool(&c, &format!("{base}/slow"), "echo", json!({"message": "x"}))
        .header("x-api-key", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 504);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], -32002);
    // /readyz reports the dead upstream.
    let r = c.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["unreachable"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n == "dead")
    );
}

/// An SSE upstream that sends one event, then waits for the test's go-ahead before the
/// rest: if the gateway buffered the stream, the first event could not arrive first.
#[tokio::test]
async fn sse_is_streamed_event_by_event() {
    let dir = tempdir();
    let go = Arc::new(Notify::new());
    let go2 = go.clone();
    let app = Router::new().route(
        "/mcp",
        any(move || {
            let go = go2.clone();
            async move {
                let first = Bytes::from_static(
                    b"event: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{\"progressToken\":1,\"progress\":1}}\n\n",
                );
                let stream = futures_util::stream::once(async move { Ok::<_, Infallible>(first) }).chain(
                    futures_util::stream::once(async move {
                        go.notified().await;
                        Ok(Bytes::from_static(
                            b"event: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"content\":[]}}\n\n",
                        ))
                    }),
                );
                ([("content-type", "text/event-stream")], Body::from_stream(stream))
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    let (_gw, base) = start_gateway(
        dir.path(),
        &base_config(&format!("http://{addr}/mcp"), &dir.path().join("a.db"), ""),
    );
    let c = client();
    let r = call_tool(&c, &format!("{base}/mcp"), "slow", json!({}))
        .header("x-api-key", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let mut body = r.bytes_stream();
    let mut got = String::new();
    while !got.contains("\n\n") {
        let chunk = tokio::time::timeout(Duration::from_secs(10), body.next())
            .await
            .expect("the first event was held back by the gateway")
            .unwrap()
            .unwrap();
        got.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    assert!(got.contains("notifications/progress"));
    assert!(!got.contains("\"result\""));
    go.notify_one();
    while let Some(chunk) = body.next().await {
        got.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
    }
    assert!(got.contains("\"result\""));
}

#[tokio::test]
async fn both_protocol_revisions_through_the_gateway() {
    let dir = tempdir();
    let (_up, _gw, base) = start_default(dir.path());
    let url = format!("{base}/mcp");
    let c = client();
    // 2026-07-28: discover, then a streamed tool call with progress.
    let r = modern(&c, &url, "server/discover", None, json!({}))
        .header("x-api-key", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v = last(&r.text().await.unwrap());
    assert!(
        v["result"]["supportedVersions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x == "2026-07-28")
    );
    let mut params = json!({"arguments": {"count": 3, "delay_ms": 10}});
    params["_meta"] = modern_meta();
    params["_meta"]["progressToken"] = json!("p");
    let r = modern(&c, &url, "tools/call", Some("slow_count"), params)
        .header("x-api-key", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let msgs = messages(&r.text().await.unwrap());
    assert_eq!(
        msgs.iter()
            .filter(|m| m["method"] == "notifications/progress")
            .count(),
        3
    );
    assert_eq!(
        msgs.last().unwrap()["result"]["content"][0]["text"],
        "counted to 3"
    );
    // Mcp-Name that disagrees with the body: refused.
    let r = call_tool(&c, &url, "echo", json!({"message": "x"}))
        .header("x-api-key", KEY)
        .header("mcp-name", "add")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // GET is not part of 2026-07-28.
    let r = c
        .get(&url)
        .header("x-api-key", KEY)
        .header("accept", "text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);

    // 2025-11-25: initialize, session id both ways, GET stream, DELETE.
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}});
    let r = c
        .post(&url)
        .header("x-api-key", KEY)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(init.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let sid = r.headers()["mcp-session-id"].to_str().unwrap().to_owned();
    assert_eq!(
        last(&r.text().await.unwrap())["result"]["protocolVersion"],
        "2025-11-25"
    );
    let legacy = |body: Value| {
        c.post(&url)
            .header("x-api-key", KEY)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2025-11-25")
            .header("mcp-session-id", &sid)
            .body(body.to_string())
    };
    let r = legacy(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let r = legacy(json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "params": {"name": "add", "arguments": {"a": 2, "b": 40}}}))
    .send()
    .await
    .unwrap();
    assert_eq!(
        last(&r.text().await.unwrap())["result"]["content"][0]["text"],
        "42"
    );
    let get = c
        .get(&url)
        .header("x-api-key", KEY)
        .header("accept", "text/event-stream")
        .header("mcp-protocol-version", "2025-11-25")
        .header("mcp-session-id", &sid)
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), 200);
    assert_eq!(get.headers()["content-type"], "text/event-stream");
    drop(get);
    let r = c
        .delete(&url)
        .header("x-api-key", KEY)
        .header("mcp-protocol-version", "2025-11-25")
        .header("mcp-session-id", &sid)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = legacy(json!({"jsonrpc": "2.0", "id": 3, "method": "tools/list"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "the session was ended");
}

#[tokio::test]
async fn metrics_count_requests_and_denials() {
    let dir = tempdir();
    let (_up, _gw, base) = start_default(dir.path());
    let url = format!("{base}/mcp");
    let c = client();
    list_tools(&c, &url).await;
    call_tool(&c, &url, "echo", json!({"message": "m"}))
        .header("x-api-key", KEY)
        .send()
        .await
        .unwrap();
    call_tool(&c, &url, "echo", json!({"message": "m"}))
        .send()
        .await
        .unwrap();
    let m = metrics_text(&base).await;
    assert!(
        has_requests_line(
            &m,
            &[
                "mcp_method=\"tools/call\"",
                "tool=\"echo\"",
                "status=\"200\""
            ]
        ),
        "{m}"
    );
    assert!(
        m.contains("mcp_gateway_denials_total{upstream=\"demo\",reason=\"auth_failed\"}"),
        "{m}"
    );
    assert!(
        m.contains("mcp_gateway_request_duration_seconds_bucket"),
        "{m}"
    );
    assert!(
        m.contains("mcp_ratelimit"),
        "rate limiter metrics missing:\n{m}"
    );
    assert_eq!(
        c.get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        c.get(format!("{base}/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

/// Sends a keep-alive `GET /healthz` on `s` and reads the whole response.
async fn healthz_on(s: &mut tokio::net::TcpStream) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.ends_with(b"ok\n") {
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8(buf).unwrap()
}

#[tokio::test]
async fn worker_threads_share_one_address_and_one_connection_limit() {
    let dir = tempdir();
    let (_up, upstream) = start_upstream(dir.path());
    let db = dir.path().join("a.db");
    let cfg = with_server_keys(
        &base_config(&upstream, &db, ""),
        "  workers: 3\n  maxConnections: 1\n",
    );
    let (gw, base) = start_gateway(dir.path(), &cfg);
    // Three serving threads, each named.
    let names: Vec<String> = std::fs::read_dir(format!("/proc/{}/task", gw.pid()))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.unwrap().path().join("comm")).ok())
        .map(|c| c.trim().to_owned())
        .filter(|c| c.starts_with("mcp-gw-worker-"))
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");

    // One connection, kept alive: it takes the only place of the whole process.
    let addr = base.trim_start_matches("http://").to_owned();
    let mut first = tokio::net::TcpStream::connect(&addr).await.unwrap();
    assert!(healthz_on(&mut first).await.starts_with("HTTP/1.1 200"));
    // A second connection is not served by any other worker while the first is open.
    let second = tokio::spawn(async move {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        healthz_on(&mut s).await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !second.is_finished(),
        "a worker served a connection beyond server.maxConnections"
    );
    drop(first);
    let out = tokio::time::timeout(Duration::from_secs(30), second)
        .await
        .expect("the waiting connection was never served")
        .unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");

    // And proxies, once the place is free again.
    let r = call_tool(
        &client(),
        &format!("{base}/mcp"),
        "echo",
        json!({"message": "w"}),
    )
    .header("x-api-key", KEY)
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn a_silent_connection_gives_its_place_back_after_the_idle_timeout() {
    use tokio::io::AsyncReadExt;
    let dir = tempdir();
    let (_up, upstream) = start_upstream(dir.path());
    let db = dir.path().join("a.db");
    let cfg = with_server_keys(
        &base_config(&upstream, &db, ""),
        "  workers: 2\n  maxConnections: 1\n  idleTimeoutSeconds: 1\n",
    );
    let (_gw, base) = start_gateway(dir.path(), &cfg);
    let addr = base.trim_start_matches("http://").to_owned();
    // Attack (slowloris): a connection that never sends a byte takes the only place.
    let mut silent = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let second = tokio::spawn(async move {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        healthz_on(&mut s).await
    });
    // The gateway closes it after server.idleTimeoutSeconds and serves the next client.
    let mut buf = [0u8; 16];
    let r = tokio::time::timeout(Duration::from_secs(20), silent.read(&mut buf))
        .await
        .expect("the gateway kept a silent connection open");
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    let out = tokio::time::timeout(Duration::from_secs(20), second)
        .await
        .expect("the next client was never served")
        .unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    // The metrics count the idle close, and show the limit.
    let m = metrics_text(&base).await;
    let closed = metric_value(&m, "mcp_gateway_connections_idle_closed_total");
    assert!(closed.is_some_and(|n| n >= 1.0), "{m}");
    assert_eq!(
        metric_value(&m, "mcp_gateway_connections_max"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric_value(&m, "mcp_gateway_connections_open"),
        Some(1.0),
        "{m}"
    );
    // 0 is refused, naming the key and its line.
    let bad = cfg.replacen("idleTimeoutSeconds: 1", "idleTimeoutSeconds: 0", 1);
    assert_check_refuses(
        dir.path(),
        &bad,
        "idleTimeoutSeconds: 0",
        "server.idleTimeoutSeconds",
    );
}

#[tokio::test]
async fn a_trickled_body_gets_408_after_the_body_timeout_with_or_without_sanitization() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempdir();
    let (_up, upstream) = start_upstream(dir.path());
    let db = dir.path().join("a.db");
    for extra in ["", "sanitization:\n  enabled: false\n"] {
        let cfg = with_server_keys(
            &base_config(&upstream, &db, extra),
            "  bodyTimeoutSeconds: 1\n",
        );
        let (_gw, base) = start_gateway(dir.path(), &cfg);
        let addr = base.trim_start_matches("http://").to_owned();
        // Attack (slow POST): an authenticated client announces a body and sends it a byte
        // every 200 ms, which would take 40 s.
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let head = format!(
            "POST /mcp HTTP/1.1\r\nhost: {addr}\r\nx-api-key: {KEY}\r\n\
             content-type: application/json\r\naccept: application/json, text/event-stream\r\n\
             content-length: 200\r\n\r\n"
        );
        s.write_all(head.as_bytes()).await.unwrap();
        let (mut rd, mut wr) = s.into_split();
        let trickle = tokio::spawn(async move {
            for _ in 0..200 {
                if wr.write_all(b" ").await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(20), rd.read_to_end(&mut out))
            .await
            .expect("the gateway waited for the trickled body past its timeout")
            .unwrap();
        trickle.abort();
        let out = String::from_utf8_lossy(&out).to_lowercase();
        assert!(out.starts_with("http/1.1 408"), "{extra:?}: {out}");
        assert!(out.contains("connection: close"), "{out}");
        assert!(out.contains("-32600"), "{out}");
    }
    // 0 is refused, naming the key and its line.
    let cfg = with_server_keys(
        &base_config(&upstream, &db, ""),
        "  bodyTimeoutSeconds: 0\n",
    );
    assert_check_refuses(
        dir.path(),
        &cfg,
        "bodyTimeoutSeconds: 0",
        "server.bodyTimeoutSeconds",
    );
}

/// The workers' sockets share the port through `SO_REUSEPORT`; a second gateway must
/// still fail with "address in use" instead of joining them and taking a share of the
/// connections.
#[tokio::test]
async fn a_second_gateway_cannot_share_the_serving_port() {
    let dir = tempdir();
    let (_up, upstream) = start_upstream(dir.path());
    let with_workers = |db: &str, addr: &str| {
        base_config(&upstream, &dir.path().join(db), "").replacen(
            "server:\n  addr: \"127.0.0.1:0\"\n",
            &format!("server:\n  addr: \"{addr}\"\n  workers: 2\n"),
            1,
        )
    };
    let (_first, base) = start_gateway(dir.path(), &with_workers("a.db", "127.0.0.1:0"));
    let addr = base.trim_start_matches("http://").to_owned();

    let second_dir = tempdir();
    let path = second_dir.path().join("gateway.yaml");
    std::fs::write(&path, with_workers("b.db", &addr)).unwrap();
    let mut second = spawn_args(&["--config", path.to_str().unwrap()], second_dir.path());
    let status = second
        .wait_exit(30)
        .expect("a second gateway started on a port already served");
    assert!(!status.success());
    let err = second.stderr_text();
    assert!(err.contains(&format!("cannot listen on {addr}")), "{err}");
    assert!(err.to_lowercase().contains("in use"), "{err}");

    // Every connection still reaches the first gateway.
    let c = client();
    for i in 0..20 {
        let r = call_tool(&c, &format!("{base}/mcp"), "echo", json!({"message": i}))
            .header("x-api-key", KEY)
            .header("connection", "close")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
}

#[tokio::test]
async fn sigterm_drains_in_flight_streams_and_flushes_the_audit_trail() {
    let dir = tempdir();
    let (_up, upstream) = start_upstream(dir.path());
    let db = dir.path().join("a.db");
    let (mut gw, base) = start_gateway(dir.path(), &base_config(&upstream, &db, ""));
    let c = client();
    let params = json!({"arguments": {"count": 5, "delay_ms": 200}, "_meta": {"progressToken": 7}});
    let r = modern(
        &c,
        &format!("{base}/mcp"),
        "tools/call",
        Some("slow_count"),
        params,
    )
    .header("x-api-key", KEY)
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let mut body = r.bytes_stream();
    // The stream is open; now ask the gateway to stop.
    let first = body.next().await.unwrap().unwrap();
    assert!(!first.is_empty());
    gw.terminate();
    let mut rest = String::new();
    while let Some(chunk) = body.next().await {
        rest.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
    }
    assert!(
        rest.contains("counted to 5"),
        "the in-flight stream was cut: {rest}"
    );
    let status = tokio::task::spawn_blocking(move || gw.wait_exit(30))
        .await
        .unwrap();
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    let rows = audit_rows(&db);
    assert!(
        rows.iter()
            .any(|r| r.tool.as_deref() == Some("slow_count") && r.status == Some(200)),
        "{rows:?}"
    );
}
