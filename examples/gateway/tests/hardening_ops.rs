//! Attack tests for quotas, operational endpoints and client keys, through the real
//! gateway process over real sockets:
//!
//! - every quota key of `ratelimit` acts in the gateway (per tool, per method, costs,
//!   tiers, per-principal overrides, in-flight cap, lists, key, missing key, key cap,
//!   headers, Redis); keys that cannot act where a section applies are refused;
//! - `/readyz` probes the upstreams at most once per interval, however many callers ask;
//!   the probe endpoints are rate limited per client address; `/metrics` needs a
//!   credential with the metrics scope on the public listener, or is served on the admin
//!   listener (`server.adminAddr`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::path::Path;

use common::*;
use serde_json::{Value, json};

/// `base_config` with the `ratelimit` section's rate and burst replaced by `keys`
/// (indented two spaces, under `ratelimit:`).
fn with_ratelimit(upstream: &str, db: &Path, keys: &str, extra: &str) -> String {
    base_config(upstream, db, extra).replacen(
        "  requests_per_second: 1000\n  burst: 1000\n",
        keys,
        1,
    )
}

/// Starts the demo upstream and a gateway whose `ratelimit` section holds `keys`:
/// (upstream, gateway, base URL, audit database).
fn start_with(dir: &Path, keys: &str, extra: &str) -> (Proc, Proc, String, std::path::PathBuf) {
    let (up, upstream) = start_upstream(dir);
    let db = dir.join("a.db");
    let (gw, base) = start_gateway(dir, &with_ratelimit(&upstream, &db, keys, extra));
    (up, gw, base, db)
}

async fn status_of(b: reqwest::RequestBuilder) -> u16 {
    b.send().await.unwrap().status().as_u16()
}

fn add(c: &reqwest::Client, url: &str, key: &str) -> reqwest::RequestBuilder {
    call_tool(c, url, "add", json!({"a": 2, "b": 40})).header("x-api-key", key)
}

fn echo(c: &reqwest::Client, url: &str, key: &str) -> reqwest::RequestBuilder {
    call_tool(c, url, "echo", json!({"message": "m"})).header("x-api-key", key)
}

// ---------------------------------------------------------------------------------------
// Item: every documented quota acts in the gateway.
// ---------------------------------------------------------------------------------------

/// The example: `per_tool: {add: {requests_per_second: 0.05, burst: 1}}` let six
/// calls of `add` through.
#[tokio::test]
async fn per_tool_quota_acts() {
    let dir = tempdir();
    let (_up, _gw, base, db) = start_with(
        dir.path(),
        "  requests_per_second: 1000\n  burst: 1000\n  per_tool:\n    add: {requests_per_second: 0.05, burst: 1}\n",
        "",
    );
    let url = format!("{base}/mcp");
    let c = client();
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(status_of(add(&c, &url, KEY)).await);
    }
    assert_eq!(statuses, [200, 429, 429, 429, 429, 429]);
    // The refusal is a JSON-RPC error echoing the request's id, with Retry-After.
    let r = add(&c, &url, KEY).send().await.unwrap();
    assert_eq!(r.status(), 429);
    assert!(retry_after(&r) >= 1);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], -32029, "{v}");
    assert_eq!(v["id"], 1, "{v}");
    // Other tools are not charged to that quota; another principal has its own.
    assert_eq!(status_of(echo(&c, &url, KEY)).await, 200);
    assert_eq!(status_of(add(&c, &url, KEY2)).await, 200);
    assert_eq!(status_of(add(&c, &url, KEY2)).await, 429);
    // The audit trail names the tool of the refused call.
    let ok = eventually(|| {
        request_rows(&db).iter().any(|r| {
            r.reason.as_deref() == Some("rate_limited") && r.tool.as_deref() == Some("add")
        })
    })
    .await;
    assert!(ok, "{:?}", request_rows(&db));
}

/// Variants: the quota is per tool name as the upstream reads it (the body), so neither
/// an `Mcp-Name` header naming another tool nor a batch of calls gets around it.
#[tokio::test]
async fn per_tool_quota_is_not_bypassed_by_headers_or_batches() {
    let dir = tempdir();
    let (_up, _gw, base, _db) = start_with(
        dir.path(),
        "  requests_per_second: 1000\n  burst: 1000\n  per_tool:\n    add: {requests_per_second: 0.05, burst: 2}\n",
        "sanitization:\n  enabled: true\n  allow_batch: true\n",
    );
    let url = format!("{base}/mcp");
    let c = client();
    // A header naming `echo` over a body calling `add`: never served as echo's quota.
    let lying = add(&c, &url, KEY).header("mcp-name", "echo");
    assert_ne!(status_of(lying).await, 200);
    // A batch of three calls of `add` is charged three calls: over the burst of 2, it can
    // never pass (413, never clamped to the burst).
    let call = |id: u32| {
        json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
               "params": {"name": "add", "arguments": {"a": 1, "b": 2}}})
    };
    let batch = json!([call(1), call(2), call(3)]);
    let r = c
        .post(&url)
        .header("x-api-key", KEY)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-11-25")
        .body(batch.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413, "{}", r.text().await.unwrap());
}

#[tokio::test]
async fn per_method_quota_acts() {
    let dir = tempdir();
    let (_up, _gw, base, _db) = start_with(
        dir.path(),
        "  requests_per_second: 1000\n  burst: 1000\n  per_method:\n    tools/list: {requests_per_second: 0.05, burst: 2}\n",
        "",
    );
    let url = format!("{base}/mcp");
    let c = client();
    let list = || modern(&c, &url, "tools/list", None, json!({})).header("x-api-key", KEY);
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(status_of(list()).await);
    }
    assert_eq!(statuses, [200, 200, 429, 429]);
    // Other methods are not charged to it.
    assert_eq!(status_of(echo(&c, &url, KEY)).await, 200);
}

/// `cost`: a call of an expensive tool (or method) takes that many units of the client
/// quota.
#[tokio::test]
async fn per_tool_and_per_method_costs_are_charged() {
    let dir = tempdir();
    let (_up, _gw, base, _db) = start_with(
        dir.path(),
        "  requests_per_second: 0.05\n  burst: 6\n  per_tool:\n    add: {cost: 5}\n  per_method:\n    tools/list: {cost: 3}\n",
        // The per-IP shield stays out of the way.
        "ip_ratelimit:\n  requests_per_second: 1000\n  burst: 1000\n",
    );
    let url = format!("{base}/mcp");
    let c = client();
    // 6 units: add (5) + echo (1), then nothing left.
    assert_eq!(status_of(add(&c, &url, KEY)).await, 200);
    assert_eq!(status_of(echo(&c, &url, KEY)).await, 200);
    assert_eq!(status_of(echo(&c, &url, KEY)).await, 429);
    // 6 units: tools/list (3) twice, then nothing left.
    let list = || modern(&c, &url, "tools/list", None, json!({})).header("x-api-key", KEY2);
    assert_eq!(status_of(list()).await, 200);
    assert_eq!(status_of(list()).await, 200);
    assert_eq!(status_of(echo(&c, &url, KEY2)).await, 429);
}

/// `client_limits.authenticated` and `client_limits.principals.<id>` (the principal's id
/// is the API key's id).
#[tokio::test]
async fn tiers_and_per_principal_overrides_act() {
    let dir = tempdir();
    let (_up, _gw, base, _db) = start_with(
        dir.path(),
        "  requests_per_second: 1000\n  burst: 1000\n  client_limits:\n    authenticated: {requests_per_second: 0.05, burst: 3}\n    principals:\n      bob: {requests_per_second: 0.05, burst: 1}\n",
        "",
    );
    let url = format!("{base}/mcp");
    let c = client();
    let mut alice = Vec::new();
    for _ in 0..4 {
        alice.push(status_of(echo(&c, &url, KEY)).await);
    }
    assert_eq!(alice, [200, 200, 200, 429]);
    let mut bob = Vec::new();
    for _ in 0..2 {
        bob.push(status_of(echo(&c, &url, KEY2)).await);
    }
    assert_eq!(bob, [200, 429]);
}

/// `client_limits.default`: requests without a principal (authentication off, loopback),
/// keyed by client address.
#[tokio::test]
async fn default_tier_applies_without_authentication() {
    let dir = tempdir();
    let (_up, upstream) = start_upstream(dir.path());
    let yaml = format!(
        "server:\n  addr: \"127.0.0.1:0\"\nauth:\n  enabled: false\nratelimit:\n  requests_per_second: 1000\n  burst: 1000\n  client_limits:\n    default: {{requests_per_second: 0.05, burst: 2}}\nupstreams:\n  - name: demo\n    path: /mcp\n    url: \"{upstream}\"\n"
    );
    let (_gw, base) = start_gateway(dir.path(), &yaml);
    let url = format!("{base}/mcp");
    let c = client();
    let call = || call_tool(&c, &url, "echo", json!({"message": "m"}));
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(status_of(call()).await);
    }
    assert_eq!(statuses, [200, 200, 429]);
}

/// `concurrency`: at most N requests of one principal in flight; the slot is held until
/// the response head is ready, on every upstream path.
#[tokio::test]
async fn concurrency_cap_acts_across_paths() {
    let dir = tempdir();
    let (_up, upstream) = start_upstream(dir.path());
    // An upstream that accepts connections and never answers.
    let hang = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hang_addr = hang.local_addr().unwrap();
    let (seen_tx, seen_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in hang.incoming() {
            let Ok(s) = s else { break };
            held.push(s);
            let _ = seen_tx.send(());
        }
    });
    let extra = format!(
        "  - name: hang\n    path: /hang\n    url: \"http://{hang_addr}/mcp\"\n    responseTimeoutMs: 8000\n"
    );
    let yaml = with_ratelimit(
        &upstream,
        &dir.path().join("a.db"),
        "  requests_per_second: 1000\n  burst: 1000\n  concurrency: 1\n",
        &extra,
    );
    let (_gw, base) = start_gateway(dir.path(), &yaml);
    let c = client();
    let held = {
        let c = c.clone();
        let url = format!("{base}/hang");
        tokio::spawn(async move { status_of(echo(&c, &url, KEY)).await })
    };
    // Once the held request reached the upstream, it holds alice's only slot.
    tokio::task::spawn_blocking(move || seen_rx.recv_timeout(std::time::Duration::from_secs(30)))
        .await
        .unwrap()
        .expect("the held request reaches the upstream");
    let url = format!("{base}/mcp");
    let r = echo(&c, &url, KEY).send().await.unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    // Another principal has its own slot.
    assert_eq!(status_of(echo(&c, &url, KEY2)).await, 200);
    // The held request ends (504), and the slot is free again.
    assert_eq!(held.await.unwrap(), 504);
    assert_eq!(status_of(echo(&c, &url, KEY)).await, 200);
}

/// `whitelist`: listed addresses bypass the limits.
#[tokio::test]
async fn whitelist_bypasses_the_quotas() {
    let dir = tempdir();
    let (_up, _gw, base, _db) = start_with(
        dir.path(),
        "  requests_per_second: 0.05\n  burst: 1\n  whitelist: [\"127.0.0.0/8\"]\n  per_tool:\n    add: {requests_per_second: 0.05, burst: 1}\n",
        "",
    );
    let url = format!("{base}/mcp");
    let c = client();
    for _ in 0..4 {
        assert_eq!(status_of(add(&c, &url, KEY)).await, 200);
    }
}

/// `key` (a header beside the principal) and `missing_key: reject`.
#[tokio::test]
async fn key_and_missing_key_act() {
    let dir = tempdir();
    let (_up, _gw, base, _db) = start_with(
        dir.path(),
        "  requests_per_second: 0.05\n  burst: 1\n  key: [principal, \"header:x-tenant\"]\n  missing_key: reject\n",
        "ip_ratelimit:\n  requests_per_second: 1000\n  burst: 1000\n",
    );
    let url = format!("{base}/mcp");
    let c = client();
    let as_tenant = |t: &str| echo(&c, &url, KEY).header("x-tenant", t);
    assert_eq!(status_of(as_tenant("a")).await, 200);
    assert_eq!(status_of(as_tenant("a")).await, 429);
    assert_eq!(status_of(as_tenant("b")).await, 200);
    // No tenant header: refused (403), not a shared bucket.
    assert_eq!(status_of(echo(&c, &url, KEY)).await, 403);
}

/// `max_keys`: new keys beyond the cap share one overflow bucket per quota, so that a
/// client rotating keys gets one client's quota, all keys together.
#[tokio::test]
async fn key_cap_shares_one_overflow_bucket() {
    let dir = tempdir();
    let (_up, _gw, base, _db) = start_with(
        dir.path(),
        "  requests_per_second: 0.05\n  burst: 2\n  key: \"header:x-tenant\"\n  max_keys: 1\n",
        "ip_ratelimit:\n  requests_per_second: 1000\n  burst: 1000\n",
    );
    let url = format!("{base}/mcp");
    let c = client();
    let as_tenant = |t: &str| echo(&c, &url, KEY).header("x-tenant", t);
    // t0 takes the only place; t1, t2, t3 share the overflow bucket of 2.
    assert_eq!(status_of(as_tenant("t0")).await, 200);
    let mut statuses = Vec::new();
    for t in ["t1", "t2", "t3", "t4"] {
        statuses.push(status_of(as_tenant(t)).await);
    }
    assert_eq!(statuses, [200, 200, 429, 429]);
    // t0 keeps its own bucket.
    assert_eq!(status_of(as_tenant("t0")).await, 200);
}

/// `headers`: the combined form, on allowed responses too, and on a per-tool refusal.
#[tokio::test]
async fn rate_limit_headers_act() {
    let dir = tempdir();
    let (_up, _gw, base, _db) = start_with(
        dir.path(),
        "  requests_per_second: 1000\n  burst: 1000\n  headers: {style: combined, legacy: true, on_allowed: true}\n  per_tool:\n    add: {requests_per_second: 0.05, burst: 1}\n",
        "",
    );
    let url = format!("{base}/mcp");
    let c = client();
    let r = add(&c, &url, KEY).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("ratelimit"), "{:?}", r.headers());
    assert!(r.headers().contains_key("x-ratelimit-limit"));
    let r = add(&c, &url, KEY).send().await.unwrap();
    assert_eq!(r.status(), 429);
    let policy = r.headers()["ratelimit-policy"].to_str().unwrap().to_owned();
    assert!(policy.contains("tool.add"), "{policy}");
}

/// GET (the SSE stream) and DELETE carry no JSON-RPC method: they are charged one unit of
/// the client quota, never let through free.
#[tokio::test]
async fn get_and_delete_are_charged_to_the_client_quota() {
    let dir = tempdir();
    let (_up, _gw, base, _db) = start_with(
        dir.path(),
        "  requests_per_second: 0.05\n  burst: 2\n  per_tool:\n    add: {requests_per_second: 0.05, burst: 1}\n",
        "ip_ratelimit:\n  requests_per_second: 1000\n  burst: 1000\n",
    );
    let url = format!("{base}/mcp");
    let c = client();
    let get = || {
        c.get(&url)
            .header("x-api-key", KEY)
            .header("accept", "text/event-stream")
            .header("mcp-protocol-version", "2025-11-25")
    };
    let del = || {
        c.delete(&url)
            .header("x-api-key", KEY)
            .header("mcp-protocol-version", "2025-11-25")
    };
    let first = get().send().await.unwrap();
    assert_ne!(first.status(), 429);
    drop(first);
    assert_ne!(status_of(del()).await, 429);
    assert_eq!(status_of(get()).await, 429);
    assert_eq!(status_of(echo(&c, &url, KEY)).await, 429);
}

/// The Redis backend charges the per-tool quota too (shared between replicas).
#[tokio::test]
async fn per_tool_quota_acts_with_redis() {
    let redis = mcp_testkit::RedisServer::start();
    let dir = tempdir();
    let (_up, upstream) = start_upstream(dir.path());
    let replica = |name: &str| {
        with_ratelimit(
            &upstream,
            &dir.path().join(format!("{name}.db")),
            &format!(
                "  requests_per_second: 1000\n  burst: 1000\n  per_tool:\n    add: {{requests_per_second: 0.05, burst: 2}}\n  redis:\n    url: \"{}\"\n    prefix: \"quota\"\n",
                redis.url()
            ),
            "",
        )
    };
    let (_a, base_a) = start_gateway(dir.path(), &replica("a"));
    let (_b, base_b) = start_gateway(dir.path(), &replica("b"));
    let c = client();
    let mut statuses = Vec::new();
    for base in [&base_a, &base_b, &base_a, &base_b] {
        statuses.push(status_of(add(&c, &format!("{base}/mcp"), KEY)).await);
    }
    assert_eq!(statuses, [200, 200, 429, 429]);
    assert_eq!(
        status_of(echo(&c, &format!("{base_a}/mcp"), KEY)).await,
        200
    );
}

/// Quotas that cannot act where a section applies are refused, naming the key: the per-IP
/// shield runs before authentication and parsing (no tool, method or principal yet), and
/// is keyed by address.
#[test]
fn ip_shield_refuses_quotas_it_cannot_apply() {
    let dir = tempdir();
    let up = "upstreams:\n  - name: demo\n    path: /mcp\n    url: \"http://127.0.0.1:9/mcp\"\n";
    for (section, bad_line, key) in [
        (
            "ip_ratelimit:\n  per_tool:\n    add: {requests_per_second: 1}\n",
            "per_tool:",
            "ip_ratelimit.per_tool",
        ),
        (
            "ip_ratelimit:\n  per_method:\n    tools/call: {cost: 2}\n",
            "per_method:",
            "ip_ratelimit.per_method",
        ),
        (
            "ip_ratelimit:\n  client_limits:\n    authenticated: {requests_per_second: 1}\n",
            "authenticated: {requests_per_second: 1}",
            "ip_ratelimit.client_limits.authenticated",
        ),
        (
            "ip_ratelimit:\n  key: principal\n",
            "key: principal",
            "ip_ratelimit.key",
        ),
    ] {
        let yaml =
            format!("server:\n  addr: \"127.0.0.1:0\"\nauth:\n  enabled: false\n{section}{up}");
        assert_check_refuses(dir.path(), &yaml, bad_line, key);
    }
}

// ---------------------------------------------------------------------------------------
// Item: IPv6 clients keyed by prefix, one key for every per-address count.
// ---------------------------------------------------------------------------------------

/// `server.clientIpv6Prefix` is the one place: checked (0 to 128), and the sections it
/// feeds refuse a prefix of their own.
#[test]
fn client_ipv6_prefix_is_checked_and_set_in_one_place() {
    let dir = tempdir();
    let up = "upstreams:\n  - name: demo\n    path: /mcp\n    url: \"http://127.0.0.1:9/mcp\"\n";
    let head =
        "server:\n  addr: \"127.0.0.1:0\"\n  clientIpv6Prefix: 129\nauth:\n  enabled: false\n";
    assert_check_refuses(
        dir.path(),
        &format!("{head}{up}"),
        "clientIpv6Prefix: 129",
        "server.clientIpv6Prefix",
    );
    for section in ["ratelimit", "ip_ratelimit"] {
        let yaml = format!(
            "server:\n  addr: \"127.0.0.1:0\"\nauth:\n  enabled: false\n{section}:\n  ipv6_prefix: 56\n{up}"
        );
        assert_check_refuses(
            dir.path(),
            &yaml,
            "ipv6_prefix: 56",
            &format!("{section}.ipv6_prefix"),
        );
    }
    let good = dir.path().join("good.yaml");
    std::fs::write(
        &good,
        format!("server:\n  addr: \"127.0.0.1:0\"\n  clientIpv6Prefix: 56\nauth:\n  enabled: false\n{up}"),
    )
    .unwrap();
    let (code, _, err) = run(
        &["check", "--config", good.to_str().unwrap()],
        dir.path(),
        &[],
    );
    assert_eq!(code, 0, "{err}");
}

// ---------------------------------------------------------------------------------------
// Item: operational endpoints.
// ---------------------------------------------------------------------------------------

/// A TCP listener that counts the connections it accepts (and closes them).
fn counting_listener() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let n = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = n.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            if s.is_err() {
                break;
            }
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    (format!("http://{addr}/mcp"), n)
}

fn connects(n: &std::sync::Arc<std::sync::atomic::AtomicUsize>) -> usize {
    n.load(std::sync::atomic::Ordering::SeqCst)
}

/// The example: 400 `/readyz` from one address made 400 upstream connections.
/// Now the probe is reused for the interval, concurrent callers share one probe in
/// flight, and the endpoint is rate limited per address.
#[tokio::test]
async fn readiness_probes_each_upstream_once_per_interval() {
    let dir = tempdir();
    let (_up, upstream) = start_upstream(dir.path());
    let (counted, n) = counting_listener();
    let extra = format!("  - name: counted\n    path: /counted\n    url: \"{counted}\"\n");
    let yaml = with_server_keys(
        &base_config(&upstream, &dir.path().join("a.db"), &extra),
        "  readinessCacheSeconds: 3600\n  opsRateLimit: {requests_per_second: 1000, burst: 1000}\n",
    );
    let (_gw, base) = start_gateway(dir.path(), &yaml);
    let c = client();
    // 40 at once, before any probe ran: one probe.
    let all = (0..40).map(|_| {
        let c = c.clone();
        let url = format!("{base}/readyz");
        tokio::spawn(async move { c.get(url).send().await.unwrap().status().as_u16() })
    });
    for s in futures_util::future::join_all(all).await {
        assert_eq!(s.unwrap(), 200);
    }
    assert_eq!(
        connects(&n),
        1,
        "concurrent probes share one upstream check"
    );
    // 40 more in a row: the cached answer.
    for _ in 0..40 {
        assert_eq!(status_of(c.get(format!("{base}/readyz"))).await, 200);
    }
    assert_eq!(connects(&n), 1, "the probe is reused within the interval");
}

/// With the defaults, a flood of probes from one address is refused (429 with
/// Retry-After) long before 400, and the upstream sees one connection.
#[tokio::test]
async fn probe_endpoints_are_rate_limited_per_address() {
    let dir = tempdir();
    let (_up, upstream) = start_upstream(dir.path());
    let (counted, n) = counting_listener();
    let extra = format!("  - name: counted\n    path: /counted\n    url: \"{counted}\"\n");
    let (_gw, base) = start_gateway(
        dir.path(),
        &base_config(&upstream, &dir.path().join("a.db"), &extra),
    );
    let c = client();
    // 60 probes at once, so that a slow machine cannot refill the bucket between them.
    let probes = (0..60).map(|_| status_of(c.get(format!("{base}/readyz"))));
    let statuses = futures_util::future::join_all(probes).await;
    assert!(statuses.contains(&429), "{statuses:?}");
    assert!(connects(&n) <= 2, "{} upstream connections", connects(&n));
    // /healthz and /metrics are limited by the same budget per address.
    let r = c.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 429);
    assert!(retry_after(&r) >= 1);
    let r = c
        .get(format!("{base}/metrics"))
        .header("x-api-key", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    // The MCP endpoint is not charged to it.
    assert_eq!(status_of(echo(&c, &format!("{base}/mcp"), KEY)).await, 200);

    // Configurable: a budget of 2.
    let dir2 = tempdir();
    let yaml = with_server_keys(
        &base_config(&upstream, &dir2.path().join("b.db"), ""),
        "  opsRateLimit: {requests_per_second: 0.05, burst: 2}\n",
    );
    let (_gw2, base2) = start_gateway(dir2.path(), &yaml);
    let mut statuses = Vec::new();
    for path in ["healthz", "readyz", "healthz"] {
        statuses.push(status_of(c.get(format!("{base2}/{path}"))).await);
    }
    assert_eq!(statuses, [200, 200, 429]);
}

/// `/metrics` lists the tool names callers used: on the public listener it needs a
/// credential with the metrics scope, checked like the MCP endpoint's (401, 403, audit).
#[tokio::test]
async fn metrics_on_the_public_listener_need_the_metrics_scope() {
    let dir = tempdir();
    let (_up, _gw, base, db) = start_with(
        dir.path(),
        "  requests_per_second: 1000\n  burst: 1000\n",
        "",
    );
    let c = client();
    list_tools(&c, &format!("{base}/mcp")).await;
    assert_eq!(status_of(add(&c, &format!("{base}/mcp"), KEY)).await, 200);
    let metrics = |key: Option<&str>| {
        let r = c.get(format!("{base}/metrics"));
        match key {
            Some(k) => r.header("x-api-key", k),
            None => r,
        }
    };
    let r = metrics(None).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().contains_key("www-authenticate"));
    let body = r.text().await.unwrap();
    assert!(!body.contains("add"), "{body}");
    assert_eq!(
        status_of(metrics(Some("Wrong123!@#Wrong123!@#"))).await,
        401
    );
    // bob holds mcp:tools only.
    let r = metrics(Some(KEY2)).send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert!(!r.text().await.unwrap().contains("tool="));
    // alice holds metrics:read.
    let r = metrics(Some(KEY)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("tool=\"add\""));
    // The refusals are in the audit trail.
    let ok = eventually(|| {
        request_rows(&db)
            .iter()
            .any(|r| r.status == Some(403) && r.user.as_deref() == Some("apikey:bob"))
    })
    .await;
    assert!(ok, "{:?}", request_rows(&db));

    // Another scope can be named; alice lacks it.
    let dir2 = tempdir();
    let (_up2, _gw2, base2, _db2) = start_with(
        dir2.path(),
        "  requests_per_second: 1000\n  burst: 1000\n",
        "monitoring:\n  metrics_scope: \"ops:scrape\"\n",
    );
    let r = c
        .get(format!("{base2}/metrics"))
        .header("x-api-key", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
}

/// `monitoring.metrics_public: true` serves it without a credential, with a warning.
#[tokio::test]
async fn metrics_public_is_explicit_and_logged() {
    let dir = tempdir();
    let (_up, gw, base, _db) = start_with(
        dir.path(),
        "  requests_per_second: 1000\n  burst: 1000\n",
        "monitoring:\n  metrics_public: true\n",
    );
    let c = client();
    assert_eq!(status_of(c.get(format!("{base}/metrics"))).await, 200);
    assert!(
        gw.stderr_text().contains("metrics_public"),
        "{}",
        gw.stderr_text()
    );
}

/// Starts a gateway whose configuration sets `server.adminAddr`: (process, public base,
/// admin base).
fn start_with_admin(dir: &Path, yaml: &str) -> (Proc, String, String) {
    let path = dir.join("gateway.yaml");
    std::fs::write(&path, yaml).unwrap();
    let mut p = spawn_args(&["--config", path.to_str().unwrap()], dir);
    let admin = wait_line(&mut p, "admin listener on")
        .rsplit(' ')
        .next()
        .unwrap()
        .replace("0.0.0.0", "127.0.0.1");
    let base = wait_line(&mut p, "mcp-gateway listening on")
        .rsplit(' ')
        .next()
        .unwrap()
        .to_owned();
    (p, base, admin)
}

/// `server.adminAddr`: the operator's endpoints on their own listener; the public one
/// no longer serves `/metrics`, and the admin one serves nothing else.
#[tokio::test]
async fn admin_listener_serves_the_operator_endpoints() {
    let dir = tempdir();
    let (_up, upstream) = start_upstream(dir.path());
    let yaml = with_server_keys(
        &base_config(&upstream, &dir.path().join("a.db"), ""),
        "  adminAddr: \"127.0.0.1:0\"\n",
    );
    let (_gw, base, admin) = start_with_admin(dir.path(), &yaml);
    let c = client();
    list_tools(&c, &format!("{base}/mcp")).await;
    assert_eq!(status_of(echo(&c, &format!("{base}/mcp"), KEY)).await, 200);
    // Public: no /metrics, even with the scope.
    let r = c
        .get(format!("{base}/metrics"))
        .header("x-api-key", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(!r.text().await.unwrap().contains("mcp_gateway"));
    assert_eq!(status_of(c.get(format!("{base}/healthz"))).await, 200);
    // Admin (loopback): metrics without a credential, probes, and nothing else.
    let r = c.get(format!("{admin}/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("tool=\"echo\""));
    assert_eq!(status_of(c.get(format!("{admin}/healthz"))).await, 200);
    assert_eq!(status_of(c.get(format!("{admin}/readyz"))).await, 200);
    assert_eq!(status_of(echo(&c, &format!("{admin}/mcp"), KEY)).await, 404);
    assert_eq!(
        status_of(
            c.get(format!("{admin}/api/audit/query"))
                .header("x-api-key", KEY)
        )
        .await,
        404
    );
}

/// A non-loopback admin listener asks for the credential; with authentication off it is
/// refused unless forced.
#[tokio::test]
async fn non_loopback_admin_listener_needs_a_credential() {
    let dir = tempdir();
    let (_up, upstream) = start_upstream(dir.path());
    let yaml = with_server_keys(
        &base_config(&upstream, &dir.path().join("a.db"), ""),
        "  adminAddr: \"0.0.0.0:0\"\n",
    );
    let (_gw, _base, admin) = start_with_admin(dir.path(), &yaml);
    let c = client();
    assert_eq!(status_of(c.get(format!("{admin}/metrics"))).await, 401);
    assert_eq!(
        status_of(c.get(format!("{admin}/metrics")).header("x-api-key", KEY2)).await,
        403
    );
    assert_eq!(
        status_of(c.get(format!("{admin}/metrics")).header("x-api-key", KEY)).await,
        200
    );
    assert_eq!(status_of(c.get(format!("{admin}/healthz"))).await, 200);

    let up = "upstreams:\n  - name: demo\n    path: /mcp\n    url: \"http://127.0.0.1:9/mcp\"\n";
    let yaml = format!(
        "server:\n  addr: \"127.0.0.1:0\"\n  adminAddr: \"0.0.0.0:9464\"\nauth:\n  enabled: false\n{up}"
    );
    assert_check_refuses(
        dir.path(),
        &yaml,
        "adminAddr: \"0.0.0.0:9464\"",
        "server.adminAddr",
    );
    let yaml = format!(
        "server:\n  addr: \"127.0.0.1:0\"\n  readinessCacheSeconds: 0\nauth:\n  enabled: false\n{up}"
    );
    assert_check_refuses(
        dir.path(),
        &yaml,
        "readinessCacheSeconds: 0",
        "server.readinessCacheSeconds",
    );
}
