//! Per-owner caps, end to end against the real binary: one principal's sessions cannot
//! evict another principal's binding (`sessions.maxSessionsPerPrincipal`, and global
//! eviction from the owners holding the most), in memory and on a real redis-server; a
//! JSON-RPC batch is charged per message and a batch larger than a quota's burst is
//! refused whole (413), never clamped to the burst (per tool, per method, per principal).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::routing::any;
use bytes::Bytes;
use common::*;
use serde_json::{Value, json};

const LEGACY: &str = "2025-11-25";

async fn initialize(c: &reqwest::Client, url: &str, key: &str) -> String {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": LEGACY, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}});
    let r = c
        .post(url)
        .header("x-api-key", key)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.headers()["mcp-session-id"].to_str().unwrap().to_owned()
}

/// The status of a `tools/call` of `add` in session `sid`.
async fn call_in(c: &reqwest::Client, url: &str, key: &str, sid: &str) -> u16 {
    c.post(url)
        .header("x-api-key", key)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", LEGACY)
        .header("mcp-session-id", sid)
        .body(
            json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                "params": {"name": "add", "arguments": {"a": 2, "b": 40}}})
            .to_string(),
        )
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// With the default per-principal cap, Bob's flood (more than `maxSessions`) leaves
/// Alice's binding alone; Bob loses his own oldest sessions, keeps his newest.
#[tokio::test]
async fn a_flood_of_sessions_evicts_only_the_flooders_own() {
    let dir = tempdir();
    let (_up, upstream) = start_upstream(dir.path());
    let (_gw, base) = start_gateway(
        dir.path(),
        &base_config(
            &upstream,
            &dir.path().join("a.db"),
            "sessions:\n  maxSessions: 50\n  maxSessionsPerPrincipal: 8\n",
        ),
    );
    let url = format!("{base}/mcp");
    let c = client();
    let alice = initialize(&c, &url, KEY).await;
    let mut bob = Vec::new();
    for _ in 0..60 {
        bob.push(initialize(&c, &url, KEY2).await);
    }
    assert_eq!(call_in(&c, &url, KEY, &alice).await, 200, "Alice's session");
    // Bob holds his 8 newest; his first is gone.
    assert_eq!(call_in(&c, &url, KEY2, &bob[0]).await, 404);
    for sid in &bob[52..] {
        assert_eq!(call_in(&c, &url, KEY2, sid).await, 200);
    }
}

/// When the store is full below the per-principal cap, eviction takes from the owner
/// holding the most bindings: Alice's two sessions survive Bob's forty.
#[tokio::test]
async fn a_full_store_evicts_from_the_largest_owner() {
    let dir = tempdir();
    let (_up, upstream) = start_upstream(dir.path());
    let (_gw, base) = start_gateway(
        dir.path(),
        &base_config(
            &upstream,
            &dir.path().join("a.db"),
            "sessions:\n  maxSessions: 10\n  maxSessionsPerPrincipal: 100\n",
        ),
    );
    let url = format!("{base}/mcp");
    let c = client();
    let a1 = initialize(&c, &url, KEY).await;
    let a2 = initialize(&c, &url, KEY).await;
    for _ in 0..40 {
        initialize(&c, &url, KEY2).await;
    }
    let last = initialize(&c, &url, KEY2).await;
    assert_eq!(call_in(&c, &url, KEY, &a1).await, 200);
    assert_eq!(call_in(&c, &url, KEY, &a2).await, 200);
    assert_eq!(call_in(&c, &url, KEY2, &last).await, 200);
}

/// The same flood through Redis (bindings shared by replicas): the per-owner index is in
/// Redis, so Bob's sessions on two replicas count against one cap, and Alice's stays.
#[tokio::test]
async fn the_per_principal_cap_holds_across_replicas_on_redis() {
    let redis = mcp_testkit::RedisServer::start();
    let dir = tempdir();
    let (_up, upstream) = start_upstream(dir.path());
    let cfg = |db: &str| {
        base_config(
            &upstream,
            &dir.path().join(db),
            &format!(
                "sessions:\n  maxSessionsPerPrincipal: 5\n  redis:\n    url: \"{}\"\n    prefix: \"caps\"\n",
                redis.url()
            ),
        )
    };
    let (_a, base_a) = start_gateway(dir.path(), &cfg("a.db"));
    let (_b, base_b) = start_gateway(dir.path(), &cfg("b.db"));
    let (url_a, url_b) = (format!("{base_a}/mcp"), format!("{base_b}/mcp"));
    let c = client();
    let alice = initialize(&c, &url_a, KEY).await;
    let mut bob = Vec::new();
    for i in 0..12 {
        let url = if i % 2 == 0 { &url_a } else { &url_b };
        bob.push(initialize(&c, url, KEY2).await);
    }
    assert_eq!(call_in(&c, &url_b, KEY, &alice).await, 200);
    assert_eq!(call_in(&c, &url_a, KEY2, &bob[0]).await, 404);
    for sid in &bob[7..] {
        assert_eq!(call_in(&c, &url_b, KEY2, sid).await, 200);
    }
    // Five owned by Bob in the index, one by Alice (besides the indexes `caps:owner:*`
    // and `caps:idle`, and `caps:ends`, what ends each session at the upstream).
    let o = std::process::Command::new("redis-cli")
        .args([
            "-p",
            &redis.port().to_string(),
            "--scan",
            "--pattern",
            "caps:*",
        ])
        .output()
        .unwrap();
    let keys = String::from_utf8(o.stdout).unwrap();
    assert_eq!(
        keys.lines()
            .filter(|k| !k.contains(":owner:") && *k != "caps:idle" && *k != "caps:ends")
            .count(),
        6,
        "{keys}"
    );
}

/// `check` refuses a per-principal cap of 0, naming the key.
#[test]
fn check_refuses_a_zero_per_principal_cap() {
    let dir = tempdir();
    let yaml = base_config(
        "http://127.0.0.1:9/mcp",
        &dir.path().join("a.db"),
        "sessions:\n  maxSessionsPerPrincipal: 0\n",
    );
    assert_check_refuses(
        dir.path(),
        &yaml,
        "maxSessionsPerPrincipal: 0",
        "sessions.maxSessionsPerPrincipal",
    );
}

/// An upstream that counts the `tools/call`s of each tool and answers every message.
async fn counting_upstream() -> (String, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let (adds, others) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (a2, o2) = (adds.clone(), others.clone());
    let app = Router::new().route(
        "/mcp",
        any(move |body: Bytes| {
            let (adds, others) = (a2.clone(), o2.clone());
            async move {
                let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let msgs = v.as_array().cloned().unwrap_or_else(|| vec![v]);
                for m in &msgs {
                    if m["params"]["name"] == "add" {
                        adds.fetch_add(1, Ordering::SeqCst);
                    } else if m["method"].is_string() {
                        others.fetch_add(1, Ordering::SeqCst);
                    }
                }
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
    (up, adds, others)
}

fn batch_of(n: usize, method: &str, tool: &str) -> String {
    let msgs: Vec<Value> = (0..n)
        .map(|i| {
            json!({"jsonrpc": "2.0", "id": i, "method": method,
                "params": {"name": tool, "arguments": {"a": 1, "b": i}}})
        })
        .collect();
    Value::Array(msgs).to_string()
}

async fn post_batch(
    c: &reqwest::Client,
    base: &str,
    key: &str,
    body: String,
) -> (u16, Value, bool) {
    let r = c
        .post(format!("{base}/mcp"))
        .header("x-api-key", key)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-06-18")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let has_retry = r.headers().contains_key("retry-after");
    let v: Value = r.json().await.unwrap_or(Value::Null);
    (status, v, has_retry)
}

fn batch_gateway_config(up: &str, db: &std::path::Path, limits: &str) -> String {
    base_config(up, db, "sanitization:\n  allow_batch: true\n")
        .replace("  burst: 1000\n", &format!("  burst: 1000\n{limits}"))
}

/// Per tool: batches of 3, 10 and 100 calls of a tool with burst 2 deliver nothing and
/// get 413 with a JSON-RPC error naming the quota and no Retry-After; a batch of 2 passes,
/// and the tool's quota is then spent. Other tools in a batch are not held back.
#[tokio::test]
async fn a_batch_larger_than_a_per_tool_burst_is_refused_whole() {
    let dir = tempdir();
    let (up, adds, others) = counting_upstream().await;
    let (_gw, base) = start_gateway(
        dir.path(),
        &batch_gateway_config(
            &up,
            &dir.path().join("a.db"),
            "  per_tool: {add: {requests_per_second: 0.01, burst: 2}}\n",
        ),
    );
    let c = client();
    for n in [3, 10, 100] {
        let (status, v, retry) = post_batch(&c, &base, KEY, batch_of(n, "tools/call", "add")).await;
        assert_eq!(status, 413, "batch of {n}: {v}");
        assert!(!retry, "no Retry-After for a batch that can never pass");
        let msg = v["error"]["message"].as_str().unwrap_or("");
        assert!(msg.contains("batch") && msg.contains("quota"), "{v}");
        assert_eq!(v["error"]["data"]["limit"], 2, "{v}");
        assert_eq!(v["error"]["data"]["cost"], n, "{v}");
    }
    assert_eq!(adds.load(Ordering::SeqCst), 0);
    let (status, _, _) = post_batch(&c, &base, KEY, batch_of(2, "tools/call", "add")).await;
    assert_eq!(status, 200);
    assert_eq!(adds.load(Ordering::SeqCst), 2);
    let (status, _, retry) = post_batch(&c, &base, KEY, batch_of(1, "tools/call", "add")).await;
    assert_eq!(
        (status, retry),
        (429, true),
        "the burst is spent: a later call waits"
    );
    let (status, _, _) = post_batch(&c, &base, KEY, batch_of(20, "tools/call", "echo")).await;
    assert_eq!(status, 200);
    assert_eq!(others.load(Ordering::SeqCst), 20);
    assert_eq!(adds.load(Ordering::SeqCst), 2);
}

/// Per method and per principal: the same class on the other quotas.
#[tokio::test]
async fn a_batch_larger_than_a_per_method_or_principal_burst_is_refused_whole() {
    let dir = tempdir();
    let (up, adds, others) = counting_upstream().await;
    let (_gw, base) = start_gateway(
        dir.path(),
        &batch_gateway_config(
            &up,
            &dir.path().join("a.db"),
            "  per_method: {tools/list: {requests_per_second: 0.01, burst: 3}}\n  \
             client_limits:\n    principals:\n      apikey:bob: {requests_per_second: 0.01, burst: 4}\n",
        ),
    );
    let c = client();
    let (status, v, _) = post_batch(&c, &base, KEY, batch_of(4, "tools/list", "x")).await;
    assert_eq!(status, 413, "per_method burst 3: {v}");
    // Bob: 5 calls against his burst of 4.
    let (status, v, _) = post_batch(&c, &base, KEY2, batch_of(5, "tools/call", "echo")).await;
    assert_eq!(status, 413, "principal burst 4: {v}");
    assert_eq!(
        adds.load(Ordering::SeqCst) + others.load(Ordering::SeqCst),
        0
    );
    let (status, _, _) = post_batch(&c, &base, KEY2, batch_of(4, "tools/call", "echo")).await;
    assert_eq!(status, 200);
    assert_eq!(others.load(Ordering::SeqCst), 4);
    let (status, _, _) = post_batch(&c, &base, KEY2, batch_of(1, "tools/call", "echo")).await;
    assert_eq!(status, 429);
}
