//! A fault run, not a test: throughput and latency of the Redis backend with Redis up and
//! with Redis killed (fail-open and fail-closed), against the limiter turned off; then the
//! time from Redis answering again to the limiter using it. Figures go to RELIABILITY.md.
//!
//! `cargo run -p mcp-ratelimit --features redis --example redis_outage [seconds] [clients]`
//! (needs redis-server; defaults: 5 s per phase, 6 clients, each a keep-alive connection
//! sending `ping` one after the other over loopback to an axum server in this process).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::post;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use mcp_core::{ClientAddrLayer, ParseLayer, TrustedProxies};
use mcp_ratelimit::{FailureMode, RateLimitConfig, RateLimitLayer, RedisConfig};
use mcp_testkit::RedisServer;

async fn serve(layer: RateLimitLayer) -> SocketAddr {
    let app = Router::new()
        .route("/mcp", post(|| async { "ok" }))
        .layer(layer)
        .layer(ParseLayer::new())
        .layer(ClientAddrLayer::new(TrustedProxies::none()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    addr
}

fn layer(redis: Option<(&RedisServer, FailureMode)>) -> RateLimitLayer {
    // A limit no run reaches: every request is a Redis call, none is refused by a quota.
    let mut c = RateLimitConfig::per_second(1_000_000.0, 1_000_000);
    match redis {
        None => c.enabled = false,
        Some((r, mode)) => c.redis = Some(RedisConfig::new(r.url()).failure_mode(mode)),
    }
    RateLimitLayer::new(c).unwrap()
}

struct Run {
    rps: f64,
    p50: Duration,
    p99: Duration,
    statuses: Vec<(StatusCode, usize)>,
}

async fn load(addr: SocketAddr, clients: usize, secs: u64) -> Run {
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for _ in 0..clients {
        tasks.push(tokio::spawn(async move {
            let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
            let mut lat = Vec::new();
            let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
            while Instant::now() < end {
                let t = Instant::now();
                let req = Request::post(format!("http://{addr}/mcp"))
                    .header("content-type", "application/json")
                    .header("accept", "application/json, text/event-stream")
                    .body(Full::new(Bytes::from_static(
                        br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#,
                    )))
                    .unwrap();
                let resp = client.request(req).await.unwrap();
                let status = resp.status();
                let _ = resp.into_body().collect().await.unwrap();
                lat.push(t.elapsed());
                *statuses.entry(status.as_u16()).or_default() += 1;
            }
            (lat, statuses)
        }));
    }
    let mut lat = Vec::new();
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    for t in tasks {
        let (l, s) = t.await.unwrap();
        lat.extend(l);
        for (k, v) in s {
            *statuses.entry(k).or_default() += v;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    Run {
        rps: lat.len() as f64 / elapsed,
        p50: pct(0.50),
        p99: pct(0.99),
        statuses: statuses
            .into_iter()
            .map(|(k, v)| (StatusCode::from_u16(k).unwrap(), v))
            .collect(),
    }
}

fn print(name: &str, r: &Run) {
    println!(
        "| {name} | {:.0} | {:.2} | {:.2} | {:?} |",
        r.rps,
        r.p50.as_secs_f64() * 1000.0,
        r.p99.as_secs_f64() * 1000.0,
        r.statuses
    );
}

/// Kills Redis, keeps `clients` clients sending for 2 s, restarts it, and measures how long
/// after redis-server is ready the layer uses it again (its first successful call).
async fn recovery(redis: &mut RedisServer, mode: FailureMode, clients: usize) -> Duration {
    let l = layer(Some((redis, mode)));
    let addr = serve(l.clone()).await;
    load(addr, clients, 1).await;
    assert!(l.backend_up());
    redis.kill();
    load(addr, clients, 2).await;
    assert!(!l.backend_up());
    let background = tokio::spawn(load(addr, clients, 10));
    redis.restart();
    let ready = Instant::now();
    while !l.backend_up() {
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!(ready.elapsed() < Duration::from_secs(10), "never recovered");
    }
    let took = ready.elapsed();
    background.abort();
    took
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let secs: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);
    let clients: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(6);
    let mut redis = RedisServer::start();
    let off = serve(layer(None)).await;
    let open = serve(layer(Some((&redis, FailureMode::Open)))).await;
    let closed = serve(layer(Some((&redis, FailureMode::Closed)))).await;
    // Warm up: connections to Redis made, the script loaded.
    for a in [off, open, closed] {
        load(a, clients, 1).await;
    }
    println!("{clients} clients, {secs} s per phase");
    println!("| phase | req/s | p50 ms | p99 ms | statuses |");
    println!("|---|---|---|---|---|");
    print("limiter off", &load(off, clients, secs).await);
    print("Redis up, fail-open", &load(open, clients, secs).await);
    print("Redis up, fail-closed", &load(closed, clients, secs).await);
    redis.kill();
    print("limiter off (Redis down)", &load(off, clients, secs).await);
    print("Redis down, fail-open", &load(open, clients, secs).await);
    print(
        "Redis down, fail-closed",
        &load(closed, clients, secs).await,
    );
    redis.restart();
    for mode in [FailureMode::Open, FailureMode::Closed] {
        let mut times = Vec::new();
        for _ in 0..5 {
            times.push(recovery(&mut redis, mode, clients).await);
        }
        println!(
            "recovery {mode:?}: {:?} ms after redis-server was ready",
            times.iter().map(|t| t.as_millis()).collect::<Vec<_>>()
        );
    }
}
