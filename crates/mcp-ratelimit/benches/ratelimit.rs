//! Cost per request of the in-memory layer against tower_governor 0.8, same key (peer IP
//! from axum's `ConnectInfo`) and same quota (huge, so nothing is limited), both called as
//! tower services in-process; then the cost with 1, 10k and 1M distinct keys, and the
//! memory per key (process RSS delta).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use http::Request;
use tower::{Layer, ServiceExt};

#[path = "support/setup.rs"]
mod setup;
use setup::{governor_layer, inner, ours};

fn request(i: u32) -> Request<Body> {
    let mut r = Request::new(Body::empty());
    let peer = SocketAddr::from((Ipv4Addr::from(0x0a00_0000 + i), 40000));
    r.extensions_mut().insert(ConnectInfo(peer));
    r
}

fn rss_bytes() -> usize {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<usize>().ok())
        })
        .map_or(0, |pages| pages * 4096)
}

fn versus_tower_governor(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("per_request_one_key");
    let ours_svc = ours(100_000).layer(inner());
    g.bench_function("mcp_ratelimit", |b| {
        b.to_async(&rt).iter(|| {
            let svc = ours_svc.clone();
            async move { black_box(svc.oneshot(request(1)).await.unwrap().status()) }
        })
    });
    let gov_svc = governor_layer().layer(inner());
    g.bench_function("tower_governor", |b| {
        b.to_async(&rt).iter(|| {
            let svc = gov_svc.clone();
            async move { black_box(svc.oneshot(request(1)).await.unwrap().status()) }
        })
    });
    g.bench_function("no_limiter", |b| {
        let svc = inner();
        b.to_async(&rt).iter(|| {
            let svc = svc.clone();
            async move { black_box(svc.oneshot(request(1)).await.unwrap().status()) }
        })
    });
    g.finish();
}

fn distinct_keys(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("per_request_distinct_keys");
    for n in [1u32, 10_000, 1_000_000] {
        let layer = ours(2_000_000);
        let svc = layer.layer(inner());
        let gov = governor_layer().layer(inner());
        // Warm up: every key is already known, as on a busy server.
        rt.block_on(async {
            for i in 0..n {
                let _ = svc.clone().oneshot(request(i)).await;
                let _ = gov.clone().oneshot(request(i)).await;
            }
        });
        assert_eq!(layer.key_count(), n as usize);
        let mut i = 0u32;
        g.bench_with_input(BenchmarkId::new("mcp_ratelimit", n), &n, |b, &n| {
            b.to_async(&rt).iter(|| {
                i = (i + 7919) % n;
                let svc = svc.clone();
                let req = request(i);
                async move { black_box(svc.oneshot(req).await.unwrap().status()) }
            })
        });
        let mut i = 0u32;
        g.bench_with_input(BenchmarkId::new("tower_governor", n), &n, |b, &n| {
            b.to_async(&rt).iter(|| {
                i = (i + 7919) % n;
                let svc = gov.clone();
                let req = request(i);
                async move { black_box(svc.oneshot(req).await.unwrap().status()) }
            })
        });
    }
    g.finish();
}

/// Not a criterion measurement: the RSS grown by 1M keys, printed.
fn memory_per_key(_c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    const N: u32 = 1_000_000;
    let layer = ours(2_000_000);
    let svc = layer.layer(inner());
    let before = rss_bytes();
    rt.block_on(async {
        for i in 0..N {
            let _ = svc.clone().oneshot(request(i)).await;
        }
    });
    let after = rss_bytes();
    println!(
        "memory_per_key/mcp_ratelimit: {} keys, RSS +{} bytes = {:.1} bytes/key",
        layer.key_count(),
        after - before,
        (after - before) as f64 / f64::from(N)
    );
    drop(svc);
    drop(layer);
    let gov = governor_layer().layer(inner());
    let before = rss_bytes();
    rt.block_on(async {
        for i in 0..N {
            let _ = gov.clone().oneshot(request(i)).await;
        }
    });
    let after = rss_bytes();
    println!(
        "memory_per_key/tower_governor: RSS +{} bytes = {:.1} bytes/key",
        after.saturating_sub(before),
        after.saturating_sub(before) as f64 / f64::from(N)
    );
    drop(gov);
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = versus_tower_governor, distinct_keys, memory_per_key
}
criterion_main!(benches);
