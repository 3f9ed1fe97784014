//! The circuit breaker of the Redis backend, against a real redis-server that is killed
//! (connections refused) or paused (calls hang until the timeout) and brought back.
//!
//! During an outage requests must not wait for Redis: they are counted against the
//! backend calls made meanwhile (`mcp_ratelimit_backend_errors_total`), never timed one
//! by one. Without the breaker every request makes a call that fails, so the two counts
//! are equal; with it, a few calls (the threshold, then one probe per back-off) answer
//! hundreds of requests.
#![cfg(feature = "redis")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use mcp_core::{ClientAddrLayer, ParseLayer, TrustedProxies};
use mcp_ratelimit::{FailureMode, RateLimitConfig, RateLimitLayer, RedisConfig};
use mcp_testkit::RedisServer;
use metrics_exporter_prometheus::{PrometheusHandle, PrometheusRecorder};

/// Log output captured from the tracing facade.
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
    /// Lines holding both strings.
    fn count(&self, a: &str, b: &str) -> usize {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .filter(|l| l.contains(a) && l.contains(b))
            .count()
    }
}

/// A metric's value (the first series of that name; 0 when absent).
fn metric(rendered: &str, series: &str) -> f64 {
    rendered
        .lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

struct Replica {
    layer: RateLimitLayer,
    addr: SocketAddr,
    metrics: PrometheusHandle,
    _recorder: PrometheusRecorder,
}

impl Replica {
    async fn start(redis: &RedisServer, name: &str, burst: u32, mode: FailureMode) -> Self {
        let mut c = RateLimitConfig::per_second(0.01, burst).with_name(name);
        c.redis = Some(
            RedisConfig::new(redis.url())
                .failure_mode(mode)
                .timeout_ms(200),
        );
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let metrics = recorder.handle();
        let layer = metrics::with_local_recorder(&recorder, || RateLimitLayer::new(c).unwrap());
        let app = ok_router()
            .layer(layer.clone())
            .layer(ParseLayer::new())
            .layer(ClientAddrLayer::new(TrustedProxies::none()));
        Self {
            layer,
            addr: serve(app).await,
            metrics,
            _recorder: recorder,
        }
    }

    fn metric(&self, series: &str) -> f64 {
        metric(&self.metrics.render(), series)
    }

    fn backend_errors(&self) -> f64 {
        self.metric("mcp_ratelimit_backend_errors_total")
    }

    /// Pings until one gets `want`; how long it took.
    async fn until(&self, want: StatusCode) -> Duration {
        let start = Instant::now();
        let deadline = start + Duration::from_secs(30);
        loop {
            if post_mcp(self.addr, &[], &ping(1)).await.status == want {
                return start.elapsed();
            }
            assert!(Instant::now() < deadline, "never got {want}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// `clients` clients, each sending pings one after the other on its own connection for
/// `window`: the statuses received, and one response of each status.
async fn load(
    addr: SocketAddr,
    clients: usize,
    window: Duration,
) -> (HashMap<StatusCode, usize>, HashMap<StatusCode, Resp>) {
    let end = Instant::now() + window;
    let mut tasks = Vec::new();
    for c in 0..clients {
        tasks.push(tokio::spawn(async move {
            let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
            let mut counts: HashMap<StatusCode, usize> = HashMap::new();
            let mut samples: HashMap<StatusCode, Resp> = HashMap::new();
            let mut i = 0i64;
            while Instant::now() < end {
                i += 1;
                let req = Request::post(format!("http://{addr}/mcp"))
                    .header("content-type", "application/json")
                    .header("accept", "application/json, text/event-stream")
                    .body(Full::new(Bytes::from(ping(c as i64 * 1_000_000 + i))))
                    .unwrap();
                let resp = client.request(req).await.unwrap();
                let status = resp.status();
                let headers = resp.headers().clone();
                let body = resp.into_body().collect().await.unwrap().to_bytes();
                *counts.entry(status).or_default() += 1;
                samples.entry(status).or_insert(Resp {
                    status,
                    headers,
                    body,
                });
            }
            (counts, samples)
        }));
    }
    let mut counts: HashMap<StatusCode, usize> = HashMap::new();
    let mut samples = HashMap::new();
    for t in tasks {
        let (c, s) = t.await.unwrap();
        for (k, v) in c {
            *counts.entry(k).or_default() += v;
        }
        samples.extend(s);
    }
    (counts, samples)
}

/// Fail-open with a Redis that stops answering (calls hang until the 200 ms timeout):
/// requests go through without waiting for it, and limits apply again once it answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_open_does_not_wait_for_a_hung_redis() {
    let mut redis = RedisServer::start();
    let r = Replica::start(&redis, "open", 2, FailureMode::Open).await;
    r.until(StatusCode::TOO_MANY_REQUESTS).await;
    assert!(r.layer.backend_up());
    redis.pause();
    let errors_before = r.backend_errors();
    let (counts, _) = load(r.addr, 8, Duration::from_secs(3)).await;
    let errors = r.backend_errors() - errors_before;
    let ok = counts.get(&StatusCode::OK).copied().unwrap_or(0);
    eprintln!("hung redis, fail-open: {ok} requests answered, {errors} backend calls failed");
    assert_eq!(counts.len(), 1, "only 200 while Redis hangs: {counts:?}");
    // Each request waiting for the timeout would make requests = backend calls.
    assert!(
        ok as f64 >= 5.0 * errors.max(1.0),
        "{ok} requests answered, {errors} backend calls failed meanwhile"
    );
    assert!(!r.layer.backend_up());
    assert!(r.metric("mcp_ratelimit_failed_open_total") >= ok as f64);
    redis.resume();
    // The data is still there (paused, not killed): the budget of 2 is spent.
    r.until(StatusCode::TOO_MANY_REQUESTS).await;
    assert!(r.layer.backend_up());
    assert_eq!(
        r.metric("mcp_ratelimit_breaker_state"),
        0.0,
        "{}",
        r.metrics.render()
    );
}

/// Fail-closed with Redis killed: requests are refused at once with 503 and Retry-After;
/// after a restart the breaker closes, the limits apply again, and the outage was logged
/// once at its start and once at its end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_closed_refuses_fast_while_redis_is_down_then_recovers() {
    let logs = Captured::default();
    let _log = tracing::subscriber::set_global_default(
        tracing_subscriber::fmt()
            .with_writer(logs.clone())
            .with_ansi(false)
            .finish(),
    );
    let mut redis = RedisServer::start();
    let r = Replica::start(&redis, "closed", 3, FailureMode::Closed).await;
    r.until(StatusCode::OK).await;
    redis.kill();
    let errors_before = r.backend_errors();
    let (counts, samples) = load(r.addr, 8, Duration::from_secs(3)).await;
    let errors = r.backend_errors() - errors_before;
    let refused = counts
        .get(&StatusCode::SERVICE_UNAVAILABLE)
        .copied()
        .unwrap_or(0);
    eprintln!("redis down, fail-closed: {refused} requests refused, {errors} backend calls failed");
    assert_eq!(counts.len(), 1, "only 503 while Redis is down: {counts:?}");
    assert!(
        refused as f64 >= 5.0 * errors.max(1.0),
        "{refused} requests refused, {errors} backend calls failed meanwhile"
    );
    let sample = &samples[&StatusCode::SERVICE_UNAVAILABLE];
    assert_eq!(sample.header("retry-after"), Some("1"));
    assert_eq!(sample.json()["error"]["code"], mcp_core::codes::UNAVAILABLE);
    assert!(!r.layer.backend_up());
    let rendered = r.metrics.render();
    assert_eq!(
        metric(&rendered, "mcp_ratelimit_breaker_state"),
        1.0,
        "{rendered}"
    );
    assert!(
        metric(
            &rendered,
            "mcp_ratelimit_breaker_transitions_total{limiter=\"closed\",to=\"open\"}"
        ) >= 1.0,
        "{rendered}"
    );
    redis.restart();
    r.until(StatusCode::OK).await;
    assert!(r.layer.backend_up());
    let rendered = r.metrics.render();
    assert_eq!(metric(&rendered, "mcp_ratelimit_breaker_state"), 0.0);
    assert!(
        metric(
            &rendered,
            "mcp_ratelimit_breaker_transitions_total{limiter=\"closed\",to=\"closed\"}"
        ) >= 1.0,
        "{rendered}"
    );
    // Redis lost its data: a fresh budget of 3, one taken by `until`.
    assert_eq!(post_mcp(r.addr, &[], &ping(1)).await.status, StatusCode::OK);
    assert_eq!(post_mcp(r.addr, &[], &ping(2)).await.status, StatusCode::OK);
    assert_eq!(
        post_mcp(r.addr, &[], &ping(3)).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    // One line when the outage began, one when it ended, however the breaker flapped.
    assert_eq!(logs.count("limiter=closed", "unreachable"), 1);
    assert_eq!(logs.count("limiter=closed", "reachable again"), 1);
}
