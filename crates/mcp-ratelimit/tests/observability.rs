//! Metrics, the sweeper task's life, and what the layer tells outer layers.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::field_reassign_with_default
)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use http::{Request, Response, StatusCode};
use mcp_core::{Denial, PeerAddr, RejectionReason};
use mcp_ratelimit::{MockClock, RateLimitConfig, RateLimitLayer};
use metrics_exporter_prometheus::PrometheusBuilder;
use tower::{Layer, ServiceExt};

fn ok() -> impl tower::Service<
    Request<Body>,
    Response = Response<Body>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<Body>, Infallible>> + Send,
> + Clone {
    tower::service_fn(|_req: Request<Body>| async {
        Ok::<_, Infallible>(Response::new(Body::from("ok")))
    })
}

fn from(peer: &str) -> Request<Body> {
    let mut r = Request::new(Body::empty());
    r.extensions_mut()
        .insert(PeerAddr(peer.parse::<SocketAddr>().unwrap()));
    r
}

fn metric(rendered: &str, name: &str) -> f64 {
    rendered
        .lines()
        .find(|l| l.starts_with(name) && l.contains("limiter=\"shield\""))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} not found in\n{rendered}"))
}

#[tokio::test]
async fn counters_and_gauges() {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let clock = MockClock::new();
    let mut config = RateLimitConfig::per_second(1.0, 2).with_name("shield");
    config.blacklist = vec!["198.51.100.0/24".into()];
    config.whitelist = vec!["192.0.2.0/24".into()];
    // Handles are registered when the layer is built.
    let layer = metrics::with_local_recorder(&recorder, || {
        RateLimitLayer::with_clock(config, clock.clone()).unwrap()
    });
    let svc = layer.layer(ok());
    for _ in 0..3 {
        svc.clone().oneshot(from("203.0.113.1:1")).await.unwrap();
    }
    let denied = svc.clone().oneshot(from("198.51.100.1:1")).await.unwrap();
    assert_eq!(denied.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        denied.extensions().get::<Denial>().unwrap().reason,
        RejectionReason::DeniedByList
    );
    svc.clone().oneshot(from("192.0.2.1:1")).await.unwrap();
    layer.cleanup_now();
    let out = handle.render();
    assert_eq!(metric(&out, "mcp_ratelimit_allowed_total"), 2.0);
    assert_eq!(metric(&out, "mcp_ratelimit_limited_total"), 1.0);
    assert_eq!(metric(&out, "mcp_ratelimit_denied_by_list_total"), 1.0);
    assert_eq!(metric(&out, "mcp_ratelimit_allow_listed_total"), 1.0);
    assert_eq!(metric(&out, "mcp_ratelimit_keys"), 1.0);
    assert_eq!(metric(&out, "mcp_ratelimit_backend_up"), 1.0);
}

#[tokio::test]
async fn overflow_is_counted_at_the_sweep() {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let mut config = RateLimitConfig::per_second(1.0, 100).with_name("shield");
    config.max_keys = 2;
    let layer = metrics::with_local_recorder(&recorder, || {
        RateLimitLayer::with_clock(config, MockClock::new()).unwrap()
    });
    let svc = layer.layer(ok());
    for i in 1..=5 {
        svc.clone()
            .oneshot(from(&format!("203.0.113.{i}:1")))
            .await
            .unwrap();
    }
    layer.cleanup_now();
    assert_eq!(layer.key_count(), 2);
    let out = handle.render();
    assert_eq!(metric(&out, "mcp_ratelimit_overflow_total"), 3.0);
    assert_eq!(metric(&out, "mcp_ratelimit_keys"), 2.0);
}

#[tokio::test(start_paused = true)]
async fn the_sweeper_evicts_idle_keys_and_ends_with_the_layer() {
    let runtime = tokio::runtime::Handle::current().metrics();
    let clock = MockClock::new();
    let mut config = RateLimitConfig::per_second(10.0, 10);
    config.cleanup_interval = 1;
    let layer = RateLimitLayer::with_clock(config, clock.clone()).unwrap();
    assert_eq!(runtime.num_alive_tasks(), 1, "the sweeper runs");
    let svc = layer.layer(ok());
    for i in 1..=50 {
        svc.clone()
            .oneshot(from(&format!("203.0.113.{i}:1")))
            .await
            .unwrap();
    }
    assert_eq!(layer.key_count(), 50);
    clock.advance(Duration::from_secs(10));
    // Virtual time: the sweeper's interval fires without waiting.
    for _ in 0..100 {
        if layer.key_count() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(layer.key_count(), 0, "idle keys were swept");
    drop(svc);
    drop(layer);
    for _ in 0..100 {
        if runtime.num_alive_tasks() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(
        runtime.num_alive_tasks(),
        0,
        "the sweeper ended with the layer"
    );
}
