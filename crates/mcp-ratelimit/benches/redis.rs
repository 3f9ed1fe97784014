//! Cost per request of the Redis backend against a local redis-server (started by
//! mcp-testkit on a free loopback port): one EVALSHA round trip per request, compared with
//! a bare PING round trip on the same kind of connection (the floor) and with the
//! in-memory backend. Needs `--features redis`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::convert::Infallible;
use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use axum::body::Body;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response, StatusCode};
use mcp_core::PeerAddr;
use mcp_ratelimit::{FailureMode, RateLimitConfig, RateLimitLayer, RedisConfig};
use tower::{Layer, ServiceExt};

fn request(i: u32) -> Request<Body> {
    let mut r = Request::new(Body::empty());
    r.extensions_mut().insert(PeerAddr(SocketAddr::from((
        Ipv4Addr::from(0x0a00_0000 + i),
        1,
    ))));
    r
}

fn redis_round_trip(c: &mut Criterion) {
    let server = mcp_testkit::RedisServer::start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let inner = tower::service_fn(|_req: Request<Body>| async {
        Ok::<_, Infallible>(Response::new(Body::empty()))
    });
    let mut config = RateLimitConfig::per_second(1_000_000.0, 1_000_000_000);
    config.redis = Some(
        RedisConfig::new(server.url())
            .failure_mode(FailureMode::Closed)
            .timeout_ms(1000),
    );
    let svc = rt.block_on(async {
        let svc = RateLimitLayer::new(config).unwrap().layer(inner);
        // Wait for the connection, so that no measured request fails closed.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while svc.clone().oneshot(request(1)).await.unwrap().status() != StatusCode::OK {
            assert!(std::time::Instant::now() < deadline, "redis never answered");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        svc
    });
    let mut g = c.benchmark_group("redis_per_request");
    g.bench_function("mcp_ratelimit_redis", |b| {
        b.to_async(&rt).iter(|| {
            let svc = svc.clone();
            async move {
                let status = svc.oneshot(request(1)).await.unwrap().status();
                assert_eq!(status, StatusCode::OK);
                black_box(status)
            }
        })
    });
    let client = redis::Client::open(server.url()).unwrap();
    let conn = rt
        .block_on(redis::aio::ConnectionManager::new(client))
        .unwrap();
    g.bench_function("bare_ping_round_trip", |b| {
        b.to_async(&rt).iter(|| {
            let mut conn = conn.clone();
            async move {
                let pong: String = redis::cmd("PING").query_async(&mut conn).await.unwrap();
                black_box(pong)
            }
        })
    });
    let mem = RateLimitLayer::new(RateLimitConfig::per_second(1_000_000.0, 1_000_000_000))
        .unwrap()
        .layer(tower::service_fn(|_req: Request<Body>| async {
            Ok::<_, Infallible>(Response::new(Body::empty()))
        }));
    g.bench_function("mcp_ratelimit_memory", |b| {
        b.to_async(&rt).iter(|| {
            let svc = mem.clone();
            async move { black_box(svc.oneshot(request(1)).await.unwrap().status()) }
        })
    });
    g.finish();
    drop(server);
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = redis_round_trip
}
criterion_main!(benches);
