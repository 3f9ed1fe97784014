//! Attacks on session binding, the upstream boundary, the connection write timeout and
//! the quotas found by a security review. Each test asserts what the README promises and
//! failed before its fix (the ones marked FINDING reproduced what got through):
//!
//! - FINDING `underscore_spelled_headers_reach_a_cgi_style_upstream`: `Mcp_Session_Id`,
//!   `X_MCP_Principal`, `X_Real_IP`, `X_Forwarded_For`, `X_Forwarded_Client_Cert` are
//!   forwarded as sent; an upstream that folds `_` and `-` (CGI, WSGI, PHP, Rack...) reads
//!   them as the headers the gateway guards: Bob calls a tool in Alice's session, and
//!   spoofs the principal and the client address the upstream sees.
//! - FINDING `http2_pings_keep_a_stalled_connection_past_the_write_timeout`: write
//!   progress is counted per connection, and a PING ACK is progress: an HTTP/2 client that
//!   never opens its stream windows but pings holds the connection (and its upstream
//!   requests) forever.
//! - FINDING `one_principal_evicts_every_other_principals_session`: bindings have no
//!   per-owner bound; one principal creating `maxSessions` sessions evicts everyone's.
//! - FINDING `one_http2_connection_opens_a_hundred_upstream_connections`: the per-client
//!   connection cap does not bound concurrent requests (HTTP/2 streams, 200 a connection
//!   by default), each of which holds an upstream connection.
//! - FINDING `a_batch_carries_any_number_of_calls_past_a_per_tool_quota` (allow_batch on):
//!   a batch's cost is clamped to the quota's burst.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::routing::any;
use bytes::Bytes;
use common::*;
use http::{HeaderMap, StatusCode};
use serde_json::{Value, json};

const LEGACY: &str = "2025-11-25";

fn init_body(who: &str) -> String {
    json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": LEGACY, "capabilities": {}, "clientInfo": {"name": who, "version": "1"}}})
    .to_string()
}

async fn initialize(c: &reqwest::Client, url: &str, key: &str, who: &str) -> String {
    let r = c
        .post(url)
        .header("x-api-key", key)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(init_body(who))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.headers()["mcp-session-id"].to_str().unwrap().to_owned()
}

/// The CGI environment a WSGI/CGI/PHP/Rack server builds from request headers:
/// `HTTP_` + the name upper-cased with `-` turned into `_`, repeated names joined with ','
/// (Python's wsgiref does exactly this).
fn cgi_env(headers: &HeaderMap) -> std::collections::BTreeMap<String, String> {
    let mut env = std::collections::BTreeMap::<String, String>::new();
    for (k, v) in headers {
        let key = format!("HTTP_{}", k.as_str().replace('-', "_").to_uppercase());
        let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
        env.entry(key)
            .and_modify(|e| {
                e.push(',');
                e.push_str(&v);
            })
            .or_insert(v);
    }
    env
}

/// A 2025-11-25 MCP upstream on a CGI-style stack: sessions keyed by HTTP_MCP_SESSION_ID,
/// each remembering the clientInfo name it was created with; every request's CGI
/// environment is recorded.
async fn cgi_upstream() -> (
    String,
    Arc<Mutex<Vec<std::collections::BTreeMap<String, String>>>>,
) {
    let sessions: Arc<Mutex<std::collections::HashMap<String, String>>> = Arc::default();
    let seen: Arc<Mutex<Vec<std::collections::BTreeMap<String, String>>>> = Arc::default();
    let (s2, seen2) = (sessions.clone(), seen.clone());
    let app = Router::new().route(
        "/mcp",
        any(move |headers: HeaderMap, body: Bytes| {
            let (sessions, seen) = (s2.clone(), seen2.clone());
            async move {
                let env = cgi_env(&headers);
                seen.lock().unwrap().push(env.clone());
                let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let id = v.get("id").cloned().unwrap_or(Value::Null);
                let mut b = http::Response::builder().header("content-type", "application/json");
                if v["method"] == "initialize" {
                    let new = format!("{:032x}", rand_u128());
                    let who = v["params"]["clientInfo"]["name"]
                        .as_str()
                        .unwrap_or("")
                        .to_owned();
                    sessions.lock().unwrap().insert(new.clone(), who);
                    b = b.header("mcp-session-id", new);
                    let out = json!({"jsonrpc": "2.0", "id": id, "result": {
                        "protocolVersion": LEGACY, "capabilities": {"tools": {}},
                        "serverInfo": {"name": "cgi", "version": "1"}}});
                    return b.body(axum::body::Body::from(out.to_string())).unwrap();
                }
                let owner = env
                    .get("HTTP_MCP_SESSION_ID")
                    .and_then(|s| sessions.lock().unwrap().get(s).cloned());
                let Some(owner) = owner else {
                    let out = json!({"jsonrpc": "2.0", "id": id,
                        "error": {"code": -32001, "message": "Session not found"}});
                    return b
                        .status(StatusCode::NOT_FOUND)
                        .body(axum::body::Body::from(out.to_string()))
                        .unwrap();
                };
                let out = json!({"jsonrpc": "2.0", "id": id, "result": {"content": [
                    {"type": "text", "text": format!("ran in the session of {owner}")}]}});
                b.body(axum::body::Body::from(out.to_string())).unwrap()
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (format!("http://{addr}/mcp"), seen)
}

fn rand_u128() -> u128 {
    use std::hash::{BuildHasher, Hasher};
    let mut out = 0u128;
    for _ in 0..2 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(out);
        out = (out << 64) | u128::from(h.finish());
    }
    out
}

/// FINDING: underscore spellings of the headers the gateway guards reach the upstream.
#[tokio::test]
async fn underscore_spelled_headers_reach_a_cgi_style_upstream() {
    let dir = tempdir();
    let (upstream, seen) = cgi_upstream().await;
    let (_gw, base) = start_gateway(dir.path(), &base_config(&upstream, &dir.join_db(), ""));
    let url = format!("{base}/mcp");
    let c = client();
    let sa = initialize(&c, &url, KEY, "ALICE").await;
    let sb = initialize(&c, &url, KEY2, "BOB").await;

    let call = |sid_header: &'static str, sid: String, extra: Vec<(&'static str, &'static str)>| {
        let mut b = c
            .post(&url)
            .header("x-api-key", KEY2)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", LEGACY)
            .header(sid_header, sid);
        for (k, v) in extra {
            b = b.header(k, v);
        }
        b.body(
            json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                "params": {"name": "echo", "arguments": {}}})
            .to_string(),
        )
        .send()
    };
    // Held: Bob with Alice's id in Mcp-Session-Id.
    let r = call("mcp-session-id", sa.clone(), vec![]).await.unwrap();
    assert_eq!(r.status(), 404);

    // Bob, with Alice's id spelled Mcp_Session_Id: the gateway sees no session id and
    // forwards; the upstream reads HTTP_MCP_SESSION_ID.
    let mut findings = Vec::new();
    let r = call("mcp_session_id", sa.clone(), vec![]).await.unwrap();
    let status = r.status();
    let text = r.text().await.unwrap();
    if text.contains("ran in the session of ALICE") {
        findings.push(format!(
            "Bob ran a tool in Alice's session via Mcp_Session_Id ({status}): {text}"
        ));
    }

    // Bob in his own session, with underscore spellings of the identity headers.
    seen.lock().unwrap().clear();
    let _ = call(
        "mcp-session-id",
        sb,
        vec![
            ("x_mcp_principal", "alice"),
            ("x_real_ip", "203.0.113.9"),
            ("x_forwarded_for", "203.0.113.9"),
            ("x_forwarded_client_cert", "Hash=00;Subject=\"CN=alice\""),
        ],
    )
    .await
    .unwrap();
    let env = seen.lock().unwrap().last().cloned().unwrap();
    let spoofed: Vec<_> = [
        "HTTP_X_MCP_PRINCIPAL",
        "HTTP_X_REAL_IP",
        "HTTP_X_FORWARDED_FOR",
        "HTTP_X_FORWARDED_CLIENT_CERT",
    ]
    .iter()
    .filter_map(|k| env.get(*k).map(|v| format!("{k}={v}")))
    .filter(|kv| kv.contains("alice") || kv.contains("203.0.113.9"))
    .collect();
    if !spoofed.is_empty() {
        findings.push(format!(
            "the upstream's CGI environment carries client-chosen identity headers: {spoofed:?}"
        ));
    }
    assert!(findings.is_empty(), "FINDING: {findings:#?}");
}

trait JoinDb {
    fn join_db(&self) -> std::path::PathBuf;
}
impl JoinDb for tempfile::TempDir {
    fn join_db(&self) -> std::path::PathBuf {
        self.path().join("a.db")
    }
}

/// An HTTP/2 connection from `from` asking for a large echo response with a 16 KiB stream
/// window it never opens; `ping` makes the client send PINGs every 300 ms. Returns the
/// connection task (finished once the gateway closes the connection).
async fn stalled_h2(addr: SocketAddr, from: &str, ping: bool) -> tokio::task::JoinHandle<()> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let tcp = socket.connect(addr).await.unwrap();
    let mut b = hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
    b.initial_stream_window_size(16 * 1024)
        .timer(hyper_util::rt::TokioTimer::new());
    if ping {
        b.keep_alive_interval(Duration::from_millis(300))
            .keep_alive_timeout(Duration::from_secs(60))
            .keep_alive_while_idle(true);
    }
    let (mut send, conn) = b
        .handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .unwrap();
    let conn = tokio::spawn(async move {
        let _ = conn.await;
    });
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
        "name": "echo", "arguments": {"message": "x".repeat(256 * 1024)}, "_meta": modern_meta()}})
    .to_string();
    let req = http::Request::post(format!("http://{addr}/mcp"))
        .header("x-api-key", KEY)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "tools/call")
        .header("mcp-name", "echo")
        .body(http_body_util::Full::new(Bytes::from(body)))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    // The body is never read; the sender and response are kept alive with the task.
    tokio::spawn(async move {
        let _keep = (send, resp);
        std::future::pending::<()>().await;
    });
    conn
}

/// FINDING: PINGs count as write progress, so a stalled HTTP/2 response never times out.
/// (A stalled stream is now reset alone after the write timeout; its connection, with
/// nothing else in progress, is then closed by the idle timeout.)
#[tokio::test]
async fn http2_pings_keep_a_stalled_connection_past_the_write_timeout() {
    let dir = tempdir();
    let (_up, upstream) = start_upstream(dir.path());
    let cfg = with_server_keys(
        &base_config(
            &upstream,
            &dir.join_db(),
            "sanitization:\n  max_length: 600000\n",
        ),
        "  workers: 1\n  maxConnections: 20\n  writeTimeoutSeconds: 2\n  \
         maxConnectionsPerClient: 5\n  idleTimeoutSeconds: 2\n",
    );
    let (_gw, base) = start_gateway(dir.path(), &cfg);
    let addr: SocketAddr = base.trim_start_matches("http://").parse().unwrap();

    // Control: without PINGs the stalled stream is reset after the write timeout, and
    // its connection closed once idle.
    let quiet = stalled_h2(addr, "127.0.0.2", false).await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert!(
        quiet.is_finished(),
        "held: a stalled HTTP/2 connection is closed"
    );

    // Twenty connections (the whole maxConnections) from four addresses, pinging.
    let mut pinging = Vec::new();
    for i in 0..20 {
        pinging.push(stalled_h2(addr, &format!("127.0.0.{}", 3 + i % 4), true).await);
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    let open = pinging.iter().filter(|h| !h.is_finished()).count();

    // A fresh client from another address.
    ring();
    let fresh = reqwest::Client::builder()
        .local_address("127.0.0.9".parse::<std::net::IpAddr>().unwrap())
        .timeout(Duration::from_secs(6))
        .build()
        .unwrap();
    let served = call_tool(
        &fresh,
        &format!("{base}/mcp"),
        "echo",
        json!({"message": "fresh"}),
    )
    .header("x-api-key", KEY)
    .send()
    .await
    .is_ok();
    for h in &pinging {
        h.abort();
    }
    assert!(
        open == 0 && served,
        "FINDING: {open} of 20 stalled HTTP/2 connections still open 10 s after a 2 s write \
         timeout and a 2 s idle timeout (their client only sends PINGs); fresh client \
         served: {served}"
    );
}

/// FINDING: one principal's new sessions evict every other principal's binding.
#[tokio::test]
async fn one_principal_evicts_every_other_principals_session() {
    let dir = tempdir();
    let (_up, upstream) = start_upstream(dir.path());
    let (_gw, base) = start_gateway(
        dir.path(),
        &base_config(&upstream, &dir.join_db(), "sessions:\n  maxSessions: 50\n"),
    );
    let url = format!("{base}/mcp");
    let c = client();
    let sa = initialize(&c, &url, KEY, "alice").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for _ in 0..60 {
        initialize(&c, &url, KEY2, "bob").await;
    }
    let r = c
        .post(&url)
        .header("x-api-key", KEY)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", LEGACY)
        .header("mcp-session-id", &sa)
        .body(
            json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                "params": {"name": "add", "arguments": {"a": 2, "b": 40}}})
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        200,
        "FINDING: Bob's 60 sessions evicted Alice's binding (maxSessions 50, no per-principal bound)"
    );
}

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

/// FINDING (design gap): maxConnectionsPerClient bounds client connections, but one
/// HTTP/2 connection carries up to 200 concurrent requests, each with an upstream
/// connection of its own (no per-client or per-principal concurrency cap by default).
#[tokio::test]
async fn one_http2_connection_opens_a_hundred_upstream_connections() {
    let dir = tempdir();
    let (_up, upstream) = start_upstream(dir.path());
    let up_port: u16 = upstream
        .trim_start_matches("http://127.0.0.1:")
        .trim_end_matches("/mcp")
        .parse()
        .unwrap();
    let cfg = with_server_keys(
        &base_config(&upstream, &dir.join_db(), ""),
        "  workers: 1\n  maxConnectionsPerClient: 1\n",
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
    let mut calls = Vec::new();
    for _ in 0..100 {
        let mut send = send.clone();
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
            "name": "slow_count", "arguments": {"count": 3, "delay_ms": 2000},
            "_meta": modern_meta()}})
        .to_string();
        let req = http::Request::post(format!("http://{addr}/mcp"))
            .header("x-api-key", KEY)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2026-07-28")
            .header("mcp-method", "tools/call")
            .header("mcp-name", "slow_count")
            .body(http_body_util::Full::new(Bytes::from(body)))
            .unwrap();
        calls.push(tokio::spawn(async move {
            let r = send.send_request(req).await.unwrap();
            let _ = http_body_util::BodyExt::collect(r.into_body()).await;
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = established_to(up_port) - before.min(established_to(up_port));
    for c in calls {
        c.abort();
    }
    assert!(
        during <= 64,
        "FINDING: one client connection (maxConnectionsPerClient: 1) holds {during} upstream connections"
    );
}

/// FINDING (with `sanitization.allow_batch: true`): a batch's cost is clamped to the
/// quota's burst (mcp-ratelimit memory.rs `cost.min(spec.burst)`), so one batch of N
/// `tools/call`s of a tool limited to burst 2 passes whole when the bucket is full: the
/// per-tool quota allows N calls per refill instead of 2.
#[tokio::test]
async fn a_batch_carries_any_number_of_calls_past_a_per_tool_quota() {
    let dir = tempdir();
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c2 = calls.clone();
    let app = Router::new().route(
        "/mcp",
        any(move |body: Bytes| {
            let calls = c2.clone();
            async move {
                let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let msgs = v.as_array().cloned().unwrap_or_else(|| vec![v]);
                let n = msgs.iter().filter(|m| m["params"]["name"] == "add").count();
                calls.fetch_add(n, std::sync::atomic::Ordering::SeqCst);
                let out: Vec<Value> = msgs
                    .iter()
                    .map(|m| json!({"jsonrpc": "2.0", "id": m["id"], "result": {"content": []}}))
                    .collect();
                http::Response::builder()
                    .header("content-type", "application/json")
                    .body(axum::body::Body::from(Value::Array(out).to_string()))
                    .unwrap()
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = format!("http://{}/mcp", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    let (_gw, base) = start_gateway(
        dir.path(),
        &base_config(&up, &dir.join_db(), "sanitization:\n  allow_batch: true\n").replace(
            "  burst: 1000\n",
            "  burst: 1000\n  per_tool: {add: {requests_per_second: 1, burst: 2}}\n",
        ),
    );
    let batch: Vec<Value> = (0..100)
        .map(|i| {
            json!({"jsonrpc": "2.0", "id": i, "method": "tools/call",
            "params": {"name": "add", "arguments": {"a": 1, "b": i}}})
        })
        .collect();
    let r = client()
        .post(format!("{base}/mcp"))
        .header("x-api-key", KEY)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-06-18")
        .body(Value::Array(batch).to_string())
        .send()
        .await
        .unwrap();
    let status = r.status();
    let n = calls.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        n <= 2,
        "FINDING: per_tool add (burst 2): one batch delivered {n} add calls upstream ({status})"
    );
}
