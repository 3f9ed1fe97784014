//! One principal cannot hold unbounded calls, streams or upstream connections (issue
//! "Hardening IV" 1): `ratelimit.concurrency` holds a slot until the response body ends
//! (SSE answers included), `ratelimit.streams` caps open GET streams per session and per
//! principal, and `upstreams[].maxConnections` / `maxConnectionsPerPrincipal` cap the
//! requests open towards an upstream, hence its connections, also for one HTTP/2 client
//! connection of many streams. Against the demo upstream, a counting upstream (every GET
//! an endless stream) and the reference server `@modelcontextprotocol/server-everything`.
//!
//! Before the fix: with `concurrency: 2`, 25 of 25 long tool calls ran at once; 300 GET
//! streams on one session all reached the upstream; one HTTP/2 connection opened one
//! upstream connection per stream. Figures held here (caps, counts): 2 of 25 calls; 4 of
//! 300 streams on one session; 10 streams per principal across sessions; at most 4
//! upstream connections for 30 streams of one HTTP/2 connection; another principal's calls
//! and streams keep working throughout.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::any;
use bytes::Bytes;
use common::*;
use http::{HeaderMap, Method, StatusCode};
use serde_json::{Value, json};

/// The base configuration with one audit row per refused request (these tests count
/// the rows of refusals; the default aggregates a refused client's refusals).
fn base_config(upstream: &str, audit_db: &std::path::Path, extra: &str) -> String {
    per_request_audit(&common::base_config(upstream, audit_db, extra))
}

const LEGACY: &str = "2025-11-25";

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

fn port_of(url: &str) -> u16 {
    url.trim_start_matches("http://127.0.0.1:")
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// A long tool call of the demo upstream, answered as SSE (progress events).
fn slow_call(c: &reqwest::Client, url: &str, key: &str, secs: u64) -> reqwest::RequestBuilder {
    modern(
        c,
        url,
        "tools/call",
        Some("slow_count"),
        json!({"arguments": {"count": secs, "delay_ms": 1000},
               "_meta": {"progressToken": "p"}}),
    )
    .header("x-api-key", key)
}

/// Sends `n` requests at once; returns each (status, Retry-After, body) once its body
/// has ended.
async fn burst(
    n: usize,
    make: impl Fn() -> reqwest::RequestBuilder,
) -> Vec<(StatusCode, Option<String>, String)> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let req = make();
            tokio::spawn(async move {
                let r = req.send().await.unwrap();
                let ra = r
                    .headers()
                    .get("retry-after")
                    .map(|v| v.to_str().unwrap().to_owned());
                (r.status(), ra, r.text().await.unwrap_or_default())
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

fn count(rs: &[(StatusCode, Option<String>, String)], s: StatusCode) -> usize {
    rs.iter().filter(|r| r.0 == s).count()
}

#[tokio::test]
async fn long_tool_calls_hold_the_in_flight_slot_until_their_stream_ends() {
    let dir = tempdir();
    let (_up, upstream) = start_upstream(dir.path());
    let db = dir.path().join("a.db");
    let cfg = base_config(&upstream, &db, "")
        .replace("  burst: 1000\n", "  burst: 1000\n  concurrency: 2\n");
    let (_gw, base) = start_gateway(dir.path(), &cfg);
    let url = format!("{base}/mcp");
    let c = client();
    // 25 concurrent calls of 3 s each, answered as SSE streams.
    let (c2, u2) = (c.clone(), url.clone());
    let alice = tokio::spawn(async move { burst(25, || slow_call(&c2, &u2, KEY, 3)).await });
    // Meanwhile (alice at her cap), bob's calls go through.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let bob = burst(2, || slow_call(&c, &url, KEY2, 1)).await;
    assert_eq!(count(&bob, StatusCode::OK), 2, "{bob:?}");
    let rs = alice.await.unwrap();
    let ok = count(&rs, StatusCode::OK);
    let refused = count(&rs, StatusCode::TOO_MANY_REQUESTS);
    assert!(
        (1..=2).contains(&ok),
        "{ok} of 25 ran at once with concurrency 2"
    );
    assert_eq!(ok + refused, 25, "{rs:?}");
    for (status, ra, body) in &rs {
        if *status == StatusCode::OK {
            assert!(
                last(body)["result"]["content"][0]["text"]
                    .as_str()
                    .unwrap()
                    .contains("counted to 3")
            );
        } else {
            assert_eq!(ra.as_deref(), Some("1"));
            let v = last(body);
            assert_eq!(v["id"], 1);
            assert_eq!(v["error"]["code"], mcp_core::codes::RATE_LIMITED);
        }
    }
    // The calls ended: the slots are free again.
    let r = slow_call(&c, &url, KEY, 1).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let _ = r.text().await;
    // Audited with the typed reason, and counted.
    assert!(
        eventually(|| {
            request_rows(&db)
                .iter()
                .filter(|r| r.reason.as_deref() == Some("concurrency_limited"))
                .count()
                == refused
        })
        .await
    );
    let m = metrics_text(&base).await;
    assert_eq!(
        metric_value(
            &m,
            "mcp_ratelimit_concurrency_limited_total{limiter=\"principal\"}"
        ),
        Some(refused as f64),
        "{m}"
    );
}

/// A counting upstream: `initialize` issues a new session id; every GET is an SSE
/// stream that stays open until the gateway drops it. Returns its URL and the streams
/// open now and at most.
async fn counting_upstream() -> (String, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let open = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let sessions = Arc::new(AtomicUsize::new(0));
    let (o, p) = (open.clone(), peak.clone());
    let app = Router::new().route(
        "/mcp",
        any(move |method: Method, _h: HeaderMap, body: Bytes| {
            let (o, p, s) = (o.clone(), p.clone(), sessions.clone());
            async move {
                if method == Method::GET {
                    let now = o.fetch_add(1, Ordering::SeqCst) + 1;
                    p.fetch_max(now, Ordering::SeqCst);
                    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
                    tx.send(Ok(Bytes::from_static(b": open\n\n")))
                        .await
                        .unwrap();
                    // The stream lives while the gateway reads it; its end is counted.
                    tokio::spawn(async move {
                        tx.closed().await;
                        o.fetch_sub(1, Ordering::SeqCst);
                    });
                    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                        rx.recv().await.map(|item| (item, rx))
                    });
                    return http::Response::builder()
                        .header("content-type", "text/event-stream")
                        .body(Body::from_stream(stream))
                        .unwrap();
                }
                let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let id = v.get("id").cloned().unwrap_or(Value::Null);
                let n = s.fetch_add(1, Ordering::SeqCst);
                let result = json!({"protocolVersion": LEGACY, "capabilities": {},
                    "serverInfo": {"name": "counting", "version": "1"}});
                http::Response::builder()
                    .header("content-type", "application/json")
                    .header("mcp-session-id", format!("session-{n:04}"))
                    .body(Body::from(
                        json!({"jsonrpc": "2.0", "id": id, "result": result}).to_string(),
                    ))
                    .unwrap()
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (format!("http://{addr}/mcp"), open, peak)
}

fn init_body() -> String {
    json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": LEGACY, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}})
    .to_string()
}

/// `initialize` as the holder of `key`: the session id the upstream issued.
async fn initialize(c: &reqwest::Client, url: &str, key: &str) -> String {
    let r = c
        .post(url)
        .header("x-api-key", key)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(init_body())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let sid = r.headers()["mcp-session-id"].to_str().unwrap().to_owned();
    let _ = r.text().await;
    sid
}

fn get_stream(c: &reqwest::Client, url: &str, key: &str, sid: &str) -> reqwest::RequestBuilder {
    c.get(url)
        .header("x-api-key", key)
        .header("accept", "text/event-stream")
        .header("mcp-protocol-version", LEGACY)
        .header("mcp-session-id", sid)
}

/// An HTTP/2 connection to the gateway (prior knowledge): many streams, one connection.
async fn h2(base: &str) -> hyper::client::conn::http2::SendRequest<http_body_util::Empty<Bytes>> {
    let addr: SocketAddr = base.trim_start_matches("http://").parse().unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    send
}

/// Opens `n` GET streams on one HTTP/2 connection, one after the other (each open one
/// stays open, unread); returns them and the refusals' (status, Retry-After, body).
async fn open_streams_h2(
    send: &hyper::client::conn::http2::SendRequest<http_body_util::Empty<Bytes>>,
    url: &str,
    n: usize,
    key: &str,
    sid: &str,
) -> (
    Vec<http::Response<hyper::body::Incoming>>,
    Vec<(StatusCode, String, String)>,
) {
    let (mut open, mut refused) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let mut s = send.clone();
        let req = http::Request::get(url)
            .header("x-api-key", key)
            .header("accept", "text/event-stream")
            .header("mcp-protocol-version", LEGACY)
            .header("mcp-session-id", sid)
            .body(http_body_util::Empty::new())
            .unwrap();
        // Without the caps every stream stays open, and the connection's stream limit
        // (server.maxConcurrentStreams) is soon taken: a liveness deadline, not a timing.
        let i = open.len() + refused.len();
        let r = tokio::time::timeout(Duration::from_secs(20), async {
            s.ready().await.unwrap();
            s.send_request(req).await.unwrap()
        })
        .await
        .unwrap_or_else(|_| panic!("stream {i}: no answer, {} streams held open", open.len()));
        if r.status() == StatusCode::OK {
            open.push(r);
        } else {
            let status = r.status();
            let ra = r
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default();
            let body = http_body_util::BodyExt::collect(r.into_body())
                .await
                .unwrap()
                .to_bytes();
            refused.push((status, ra, String::from_utf8_lossy(&body).into_owned()));
        }
    }
    (open, refused)
}

/// Opens `n` GET streams at once; keeps the open ones (unread), returns them and the
/// refusals' (status, Retry-After, body).
async fn open_streams(
    n: usize,
    make: impl Fn() -> reqwest::RequestBuilder,
) -> (Vec<reqwest::Response>, Vec<(StatusCode, String, String)>) {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let req = make();
            tokio::spawn(async move { req.send().await.unwrap() })
        })
        .collect();
    let (mut open, mut refused) = (Vec::new(), Vec::new());
    for t in tasks {
        let r = t.await.unwrap();
        if r.status() == StatusCode::OK {
            open.push(r);
        } else {
            let ra = r
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default();
            refused.push((r.status(), ra, r.text().await.unwrap()));
        }
    }
    (open, refused)
}

#[tokio::test]
async fn get_streams_are_capped_per_session_and_per_principal() {
    let dir = tempdir();
    let (upstream, open_now, peak) = counting_upstream().await;
    let db = dir.path().join("a.db");
    // Defaults: 4 streams per session; 10 per principal here (default 32).
    let cfg = base_config(&upstream, &db, "").replace(
        "  burst: 1000\n",
        "  burst: 1000\n  streams:\n    per_principal: 10\n",
    );
    let (_gw, base) = start_gateway(dir.path(), &cfg);
    let url = format!("{base}/mcp");
    let c = client();
    // 300 GET streams on one session (one HTTP/2 connection): 4 reach the upstream.
    let sid = initialize(&c, &url, KEY).await;
    let send = h2(&base).await;
    let (held, refused) = open_streams_h2(&send, &url, 300, KEY, &sid).await;
    assert_eq!(held.len(), 4, "{:?}", refused.first());
    assert_eq!(refused.len(), 296);
    for (status, ra, body) in &refused {
        assert_eq!(*status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(ra, "5");
        let v = last(body);
        assert_eq!(v["error"]["code"], mcp_core::codes::RATE_LIMITED);
        assert!(v["error"]["message"].as_str().unwrap().contains("session"));
    }
    assert_eq!(peak.load(Ordering::SeqCst), 4);
    let mut held_all: Vec<Box<dyn Send>> = held
        .into_iter()
        .map(|r| Box::new(r) as Box<dyn Send>)
        .collect();
    // Streams across several sessions of the same principal: 10 in total.
    let mut sids = Vec::new();
    for _ in 0..4 {
        sids.push(initialize(&c, &url, KEY).await);
    }
    let mut more = 0;
    for s in &sids {
        let (h, r) = open_streams(4, || get_stream(&c, &url, KEY, s)).await;
        more += h.len();
        held_all.extend(h.into_iter().map(|r| Box::new(r) as Box<dyn Send>));
        for (status, _, body) in r {
            assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
            assert!(
                last(&body)["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("client")
            );
        }
    }
    assert_eq!(more, 6, "the principal's cap is 10 streams");
    assert_eq!(open_now.load(Ordering::SeqCst), 10);
    assert_eq!(peak.load(Ordering::SeqCst), 10);
    // Another principal is unaffected: its session, its streams, its calls.
    let bob_sid = initialize(&c, &url, KEY2).await;
    let (bob, r) = open_streams(2, || get_stream(&c, &url, KEY2, &bob_sid)).await;
    assert_eq!((bob.len(), r.len()), (2, 0));
    // The client goes away: the gateway drops the streams and frees the slots.
    drop(held_all);
    drop(send);
    assert!(
        eventually(|| open_now.load(Ordering::SeqCst) == 2).await,
        "streams left open upstream: {}",
        open_now.load(Ordering::SeqCst)
    );
    let (again, r) = open_streams(4, || get_stream(&c, &url, KEY, &sid)).await;
    assert_eq!((again.len(), r.len()), (4, 0));
    // Audited and counted.
    assert!(
        eventually(|| {
            request_rows(&db)
                .iter()
                .filter(|r| r.reason.as_deref() == Some("concurrency_limited"))
                .count()
                >= 296 + 10
        })
        .await
    );
    let m = metrics_text(&base).await;
    assert_eq!(
        metric_value(
            &m,
            "mcp_ratelimit_streams_limited_total{limiter=\"principal\",scope=\"session\"}"
        ),
        Some(296.0),
        "{m}"
    );
    assert_eq!(
        metric_value(
            &m,
            "mcp_ratelimit_streams_limited_total{limiter=\"principal\",scope=\"client\"}"
        ),
        Some(10.0),
        "{m}"
    );
    drop((again, bob));
}

#[tokio::test]
async fn one_http2_connection_cannot_fan_out_to_the_upstream() {
    let dir = tempdir();
    let (_up, upstream) = start_upstream(dir.path());
    let up_port = port_of(&upstream);
    let cfg = base_config(&upstream, &dir.path().join("a.db"), "").replace(
        &format!("    url: \"{upstream}\"\n"),
        &format!(
            "    url: \"{upstream}\"\n    maxConnections: 5\n    maxConnectionsPerPrincipal: 4\n"
        ),
    );
    // The 30 streams below are sent at once, before the server's SETTINGS arrive: with
    // the default stream cap (16) the excess would be refused (REFUSED_STREAM) before
    // the caps this tests see them.
    let cfg = with_server_keys(&cfg, "  workers: 2\n  maxConcurrentStreams: 32\n");
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
    let req = |key: &str| {
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
            "name": "slow_count", "arguments": {"count": 3, "delay_ms": 1000},
            "_meta": {"progressToken": "p", "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                      "io.modelcontextprotocol/clientCapabilities": {}}}})
        .to_string();
        http::Request::post(format!("http://{addr}/mcp"))
            .header("x-api-key", key)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2026-07-28")
            .header("mcp-method", "tools/call")
            .header("mcp-name", "slow_count")
            .body(http_body_util::Full::new(Bytes::from(body)))
            .unwrap()
    };
    // 30 streams of one HTTP/2 connection, as alice: 4 reach the upstream.
    let mut tasks = Vec::new();
    for _ in 0..30 {
        let mut s = send.clone();
        let r = req(KEY);
        tasks.push(tokio::spawn(async move {
            s.ready().await.unwrap();
            let resp = s.send_request(r).await.unwrap();
            let status = resp.status();
            let detail = resp
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned());
            let body = http_body_util::BodyExt::collect(resp.into_body())
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            (status, detail, String::from_utf8_lossy(&body).into_owned())
        }));
    }
    // While alice holds her share: bob gets the last upstream slot, then 503.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let mut during = established_to(up_port).saturating_sub(before);
    let c = client();
    let (c2, u2) = (c.clone(), format!("{base}/mcp"));
    let bob1 = tokio::spawn(async move {
        let r = slow_call(&c2, &u2, KEY2, 2).send().await.unwrap();
        (r.status(), r.text().await.unwrap())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    during = during.max(established_to(up_port).saturating_sub(before));
    let bob2 = slow_call(&c, &format!("{base}/mcp"), KEY2, 1)
        .send()
        .await
        .unwrap();
    assert_eq!(bob2.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(bob2.headers()["retry-after"], "1");
    let _ = bob2.text().await;
    let mut ok = 0;
    for t in tasks {
        let (status, ra, body) = t.await.unwrap();
        if status == StatusCode::OK {
            ok += 1;
        } else {
            assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
            assert_eq!(ra.as_deref(), Some("1"));
            assert!(body.contains("this principal"), "{body}");
        }
    }
    let (bs, bb) = bob1.await.unwrap();
    assert_eq!(bs, StatusCode::OK, "{bb}");
    assert_eq!(ok, 4, "alice's share of the upstream is 4");
    assert!(
        during <= 5,
        "{during} upstream connections for one principal's 30 streams and another's call"
    );
    let m = metrics_text(&base).await;
    assert_eq!(
        metric_value(
            &m,
            "mcp_gateway_upstream_limited_total{upstream=\"demo\",scope=\"principal\"}"
        ),
        Some(26.0),
        "{m}"
    );
    assert_eq!(
        metric_value(
            &m,
            "mcp_gateway_upstream_limited_total{upstream=\"demo\",scope=\"upstream\"}"
        ),
        Some(1.0),
        "{m}"
    );
}

#[test]
fn check_refuses_impossible_upstream_caps() {
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
        &with("    maxConnections: 0\n"),
        "maxConnections: 0",
        "upstreams[0].maxConnections",
    );
    assert_check_refuses(
        dir.path(),
        &with("    maxConnections: 4\n    maxConnectionsPerPrincipal: 5\n"),
        "maxConnectionsPerPrincipal: 5",
        "upstreams[0].maxConnectionsPerPrincipal",
    );
    let zero = base.replace(
        "  burst: 1000\n",
        "  burst: 1000\n  streams:\n    per_session: 0\n",
    );
    assert_check_refuses(
        dir.path(),
        &zero,
        "per_session: 0",
        "ratelimit.streams.per_session",
    );
}

// --- The reference server (server-everything, from npm) behind the gateway. ---

/// `node` and server-everything's entry point: from `.tools` (the test command installs
/// them), else `node` on the PATH with the package in `.tools`. Missing: the test fails
/// with an install hint.
fn everything() -> (String, String) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let js = root.join(".tools/node_modules/@modelcontextprotocol/server-everything/dist/index.js");
    assert!(
        js.exists(),
        "server-everything is missing: cd .tools && npm install --no-audit --no-fund @modelcontextprotocol/server-everything"
    );
    let local = root.join(".tools/node_modules/node/bin/node");
    let node = if local.exists() {
        local.display().to_string()
    } else {
        "node".to_owned()
    };
    (node, js.display().to_string())
}

/// Starts server-everything's Streamable HTTP transport on a free loopback port.
fn start_everything() -> (Kill, String) {
    let (node, js) = everything();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Kill(
        std::process::Command::new(node)
            .arg(js)
            .arg("streamableHttp")
            .env("PORT", port.to_string())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start node"),
    );
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return (child, format!("http://127.0.0.1:{port}/mcp"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("server-everything did not listen on {port}");
}

struct Kill(std::process::Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A 2025-11-25 session with server-everything: `initialize`, then `initialized`.
async fn everything_session(c: &reqwest::Client, url: &str, key: &str) -> String {
    let sid = initialize(c, url, key).await;
    let r = c
        .post(url)
        .header("x-api-key", key)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", LEGACY)
        .header("mcp-session-id", &sid)
        .body(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}).to_string())
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    sid
}

/// A 3 s `trigger-long-running-operation` call in session `sid`, with an id of its own
/// (the server answers by id within a session).
fn long_operation(c: &reqwest::Client, url: &str, key: &str, sid: &str) -> reqwest::RequestBuilder {
    static NEXT: AtomicUsize = AtomicUsize::new(100);
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    c.post(url)
        .header("x-api-key", key)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", LEGACY)
        .header("mcp-session-id", sid)
        .body(
            json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {
                "name": "trigger-long-running-operation",
                "arguments": {"duration": 3, "steps": 3},
                "_meta": {"progressToken": id}}})
            .to_string(),
        )
}

#[tokio::test]
async fn server_everything_long_operations_and_streams_are_capped() {
    let (_child, upstream) = start_everything();
    let dir = tempdir();
    let db = dir.path().join("a.db");
    let cfg = base_config(&upstream, &db, "").replace(
        "  burst: 1000\n",
        "  burst: 1000\n  concurrency: 2\n  streams:\n    per_principal: 6\n",
    );
    let (_gw, base) = start_gateway(dir.path(), &cfg);
    let url = format!("{base}/mcp");
    let c = client();
    let sid = everything_session(&c, &url, KEY).await;
    // 25 concurrent long operations (3 s, progress as SSE): 2 run.
    let rs = burst(25, || long_operation(&c, &url, KEY, &sid)).await;
    let ok = count(&rs, StatusCode::OK);
    assert!((1..=2).contains(&ok), "{ok} of 25 ran with concurrency 2");
    assert_eq!(ok + count(&rs, StatusCode::TOO_MANY_REQUESTS), 25);
    for (status, _, body) in &rs {
        if *status == StatusCode::OK {
            assert!(!messages(body).is_empty(), "{body:?}");
            let v = last(body);
            assert!(
                v["result"]["content"][0]["text"]
                    .as_str()
                    .unwrap()
                    .contains("Long running operation completed"),
                "{v}"
            );
        }
    }
    // One standalone stream per session (the server allows one): across 10 sessions of
    // alice, 6 open; bob's stream opens meanwhile.
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..10 {
        let s = everything_session(&c, &url, KEY).await;
        let (h, r) = open_streams(1, || get_stream(&c, &url, KEY, &s)).await;
        held.extend(h);
        for (status, _, _) in r {
            assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
            refused += 1;
        }
    }
    assert_eq!((held.len(), refused), (6, 4));
    let bob_sid = everything_session(&c, &url, KEY2).await;
    let (bob, r) = open_streams(1, || get_stream(&c, &url, KEY2, &bob_sid)).await;
    assert_eq!((bob.len(), r.len()), (1, 0), "{r:?}");
    // Bob's calls too.
    let rs = burst(2, || long_operation(&c, &url, KEY2, &bob_sid)).await;
    assert_eq!(count(&rs, StatusCode::OK), 2, "{rs:?}");
    // Alice's streams end (client gone): she can open one again.
    drop(held);
    let s = everything_session(&c, &url, KEY).await;
    let reopened = eventually_async(|| async {
        let (h, _) = open_streams(1, || get_stream(&c, &url, KEY, &s)).await;
        !h.is_empty()
    })
    .await;
    assert!(reopened);
    drop(bob);
}

async fn eventually_async<F: std::future::Future<Output = bool>>(mut f: impl FnMut() -> F) -> bool {
    for _ in 0..100 {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}
