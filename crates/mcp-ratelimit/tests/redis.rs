//! The Redis backend against a real redis-server started on a free loopback port.
//! Run with `cargo test -p mcp-ratelimit --all-features` (redis-server must be installed:
//! the README test command, scripts/test.sh, installs it).
#![cfg(feature = "redis")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::field_reassign_with_default
)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use http::StatusCode;
use mcp_core::{ClientAddrLayer, ParseLayer, TrustedProxies};
use mcp_ratelimit::{FailureMode, RateLimitConfig, RateLimitLayer, RedisConfig, RuleLimit};
use mcp_testkit::RedisServer;

fn config(redis: &RedisServer, burst: u32, mode: FailureMode) -> RateLimitConfig {
    let mut c = RateLimitConfig::per_second(0.01, burst);
    c.redis = Some(
        RedisConfig::new(redis.url())
            .failure_mode(mode)
            .timeout_ms(200),
    );
    c
}

async fn replica(c: RateLimitConfig) -> (RateLimitLayer, std::net::SocketAddr) {
    let layer = RateLimitLayer::new(c).unwrap();
    let app = ok_router()
        .layer(layer.clone())
        .layer(ParseLayer::new())
        .layer(ClientAddrLayer::new(TrustedProxies::none()));
    (layer, serve(app).await)
}

/// Sends pings until one gets `want` (the layer connects in the background, so the first
/// requests of a fresh layer, or after an outage, may follow the failure mode).
async fn until(addr: std::net::SocketAddr, want: StatusCode) -> usize {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut n = 0;
    loop {
        n += 1;
        if post_mcp(addr, &[], &ping(1)).await.status == want {
            return n;
        }
        assert!(Instant::now() < deadline, "never got {want}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn two_replicas_share_one_budget() {
    let redis = RedisServer::start();
    let (_a_layer, a) = replica(config(&redis, 6, FailureMode::Closed)).await;
    let (_b_layer, b) = replica(config(&redis, 6, FailureMode::Closed)).await;
    // Warm both connections up with a different key space (the global key is not used).
    // The first successful request on each replica is counted in the shared budget.
    until(a, StatusCode::OK).await;
    until(b, StatusCode::OK).await;
    let mut ok = 2;
    let mut limited = 0;
    for i in 0..10 {
        let addr = if i % 2 == 0 { a } else { b };
        let r = post_mcp(addr, &[], &ping(i)).await;
        match r.status {
            StatusCode::OK => ok += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                limited += 1;
                assert!(r.header("retry-after").unwrap().parse::<u64>().unwrap() >= 1);
                assert_eq!(r.json()["id"], i);
            }
            other => panic!("unexpected {other}"),
        }
    }
    // 6 in total across both replicas, not 6 each.
    assert_eq!(ok, 6);
    assert_eq!(limited, 6);
}

#[tokio::test]
async fn keys_are_hash_tagged_and_expire() {
    let redis = RedisServer::start();
    let mut c = config(&redis, 5, FailureMode::Closed);
    c.per_tool.insert(
        "search".into(),
        RuleLimit {
            requests_per_second: Some(1.0),
            burst: Some(1),
            cost: None,
        },
    );
    let (_layer, addr) = replica(c).await;
    until(addr, StatusCode::OK).await;
    assert_eq!(
        post_mcp(addr, &[], &call(1, "search")).await.status,
        StatusCode::OK
    );
    // The tool quota refuses; all or nothing: the client quota is not charged.
    assert_eq!(
        post_mcp(addr, &[], &call(2, "search")).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut conn)
        .await
        .unwrap();
    keys.sort();
    assert_eq!(
        keys,
        vec!["{mcp-rl:i:127.0.0.1}", "{mcp-rl:i:127.0.0.1}:t:search"]
    );
    for k in &keys {
        let ttl: i64 = redis::cmd("PTTL")
            .arg(k)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(ttl > 0, "{k} has no expiry");
    }
    // Client quota: 5 - 1 (warm-up) - 1 (first search) = 3 left.
    for i in 0..3 {
        assert_eq!(post_mcp(addr, &[], &ping(i)).await.status, StatusCode::OK);
    }
    assert_eq!(
        post_mcp(addr, &[], &ping(9)).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
}

/// Log output captured from the tracing facade (the test runtime is single-threaded, so a
/// thread-local subscriber sees every task).
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl Captured {
    fn count(&self, needle: &str) -> usize {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .matches(needle)
            .count()
    }
}

fn gauge(rendered: &str, name: &str) -> f64 {
    rendered
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in {rendered}"))
}

#[tokio::test]
async fn fail_closed_then_recovers_without_restarting_the_layer() {
    let logs = Captured::default();
    let _log = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_writer(logs.clone())
            .with_ansi(false)
            .finish(),
    );
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let metrics = recorder.handle();
    let mut redis = RedisServer::start();
    let c = config(&redis, 3, FailureMode::Closed);
    let layer = metrics::with_local_recorder(&recorder, || RateLimitLayer::new(c).unwrap());
    let app = ok_router()
        .layer(layer.clone())
        .layer(ParseLayer::new())
        .layer(ClientAddrLayer::new(TrustedProxies::none()));
    let addr = serve(app).await;
    until(addr, StatusCode::OK).await;
    assert!(layer.backend_up());
    redis.kill();
    // Closed: every request is refused with 503 while Redis is away.
    let n = until(addr, StatusCode::SERVICE_UNAVAILABLE).await;
    assert!(n >= 1);
    for i in 0..5 {
        let r = post_mcp(addr, &[], &ping(i)).await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.header("retry-after"), Some("1"));
        assert_eq!(r.json()["id"], i);
        assert_eq!(r.json()["error"]["code"], mcp_core::codes::UNAVAILABLE);
    }
    assert!(!layer.backend_up());
    assert_eq!(gauge(&metrics.render(), "mcp_ratelimit_backend_up"), 0.0);
    // The breaker opened after a few failed calls: the later refusals did not call Redis
    // (tests/redis_breaker.rs counts them under load).
    assert!(gauge(&metrics.render(), "mcp_ratelimit_backend_errors_total") >= 1.0);
    assert_eq!(gauge(&metrics.render(), "mcp_ratelimit_breaker_state"), 1.0);
    redis.restart();
    // The same layer finds Redis again by itself; the data is gone (no persistence), so
    // the budget starts afresh: 3, then 429.
    until(addr, StatusCode::OK).await;
    assert!(layer.backend_up());
    assert_eq!(gauge(&metrics.render(), "mcp_ratelimit_backend_up"), 1.0);
    // One log line when the outage began, one when it ended: not one per request.
    assert_eq!(logs.count("unreachable"), 1);
    assert_eq!(logs.count("reachable again"), 1);
    assert_eq!(post_mcp(addr, &[], &ping(1)).await.status, StatusCode::OK);
    assert_eq!(post_mcp(addr, &[], &ping(2)).await.status, StatusCode::OK);
    assert_eq!(
        post_mcp(addr, &[], &ping(3)).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn fail_open_then_recovers_without_restarting_the_layer() {
    let mut redis = RedisServer::start();
    let (layer, addr) = replica(config(&redis, 2, FailureMode::Open)).await;
    // Open lets requests through until Redis answers; then the burst of 2 runs out.
    until(addr, StatusCode::TOO_MANY_REQUESTS).await;
    assert!(layer.backend_up());
    redis.kill();
    // Open: requests go through, unlimited, while Redis is away.
    until(addr, StatusCode::OK).await;
    for i in 0..10 {
        assert_eq!(post_mcp(addr, &[], &ping(i)).await.status, StatusCode::OK);
    }
    assert!(!layer.backend_up());
    redis.restart();
    // Limiting resumes once the layer has found Redis again.
    until(addr, StatusCode::TOO_MANY_REQUESTS).await;
    assert!(layer.backend_up());
    assert_eq!(
        post_mcp(addr, &[], &ping(3)).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn unreachable_at_start_follows_the_failure_mode() {
    let mut redis = RedisServer::start();
    redis.kill();
    let (closed, a) = replica(config(&redis, 2, FailureMode::Closed)).await;
    assert_eq!(
        post_mcp(a, &[], &ping(1)).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert!(!closed.backend_up());
    redis.restart();
    until(a, StatusCode::OK).await;
    assert!(closed.backend_up());
}

#[test]
fn invalid_redis_settings_are_refused_without_the_password() {
    let mut c = RateLimitConfig::default();
    c.redis = Some(RedisConfig::new("mysql://:hunter2@db/"));
    let e = RateLimitLayer::new(c).unwrap_err().to_string();
    assert!(e.contains("redis.url") && !e.contains("hunter2"), "{e}");
    let mut c = RateLimitConfig::default();
    c.redis = Some(RedisConfig::new("redis://127.0.0.1/").prefix("a{b}"));
    assert!(
        RateLimitLayer::new(c)
            .unwrap_err()
            .to_string()
            .contains("redis.prefix")
    );
    let mut c = RateLimitConfig::default();
    c.redis = Some(RedisConfig::new("redis://127.0.0.1/").timeout_ms(0));
    assert!(
        RateLimitLayer::new(c)
            .unwrap_err()
            .to_string()
            .contains("redis.timeout_ms")
    );
    let mut c = RateLimitConfig::default();
    c.redis = Some(
        RedisConfig::new("redis://127.0.0.1/").breaker(mcp_ratelimit::BreakerConfig {
            backoff_initial_ms: 1000,
            backoff_max_ms: 10,
            ..Default::default()
        }),
    );
    let e = RateLimitLayer::new(c).unwrap_err().to_string();
    assert!(e.contains("redis.breaker.backoff_max_ms"), "{e}");
    let c: RateLimitConfig = serde_yaml_ng::from_str(
        "redis: {url: 'redis://127.0.0.1/', failure_mode: open, breaker: {failure_threshold: 0}}",
    )
    .unwrap();
    let e = RateLimitLayer::new(c).unwrap_err().to_string();
    assert!(e.contains("redis.breaker.failure_threshold"), "{e}");
}

/// In Redis too, a batch costing more than a quota's burst is refused whole (413, no
/// Retry-After) and charges nothing, per tool and on the client quota: never clamped.
#[tokio::test]
async fn a_batch_above_the_burst_is_refused_whole() {
    let redis = RedisServer::start();
    let mut c = config(&redis, 5, FailureMode::Closed);
    c.per_tool.insert(
        "add".into(),
        RuleLimit {
            requests_per_second: Some(0.01),
            burst: Some(2),
            cost: None,
        },
    );
    let (_layer, addr) = replica(c).await;
    until(addr, StatusCode::OK).await;
    let batch = |n: i64, tool: &str| {
        format!(
            "[{}]",
            (0..n).map(|i| call(i, tool)).collect::<Vec<_>>().join(",")
        )
    };
    for n in [3, 100] {
        let r = post_mcp(addr, &[], &batch(n, "add")).await;
        assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{n}");
        assert_eq!(r.header("retry-after"), None);
        assert_eq!(r.json()["error"]["data"]["limit"], 2);
    }
    // The client quota (5, one unit taken by `until`): a batch of 5 exceeds nothing but
    // what is left; 6 exceeds its burst.
    let r = post_mcp(addr, &[], &batch(6, "echo")).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    // Nothing was charged: two adds pass, then the tool's quota is spent.
    assert_eq!(
        post_mcp(addr, &[], &batch(2, "add")).await.status,
        StatusCode::OK
    );
    let r = post_mcp(addr, &[], &call(9, "add")).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(r.header("retry-after").is_some());
}
