//! In-flight and stream caps over real sockets: a slot lasts until the response body
//! ends (SSE answers and GET streams included), and is released when the stream ends,
//! fails or the client goes away.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::any;
use bytes::Bytes;
use common::serve;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use mcp_core::{AuthMethod, Denial, ParseLayer, PeerAddr, Principal, RejectionReason};
use mcp_ratelimit::{KeySpec, RateLimitConfig, RateLimitLayer, StreamLimits};
use tokio::sync::{Semaphore, mpsc};
use tower::{Layer, Service, ServiceExt};

/// A body fed by a channel: it ends when the sender is dropped.
struct ChannelBody(mpsc::Receiver<Result<Bytes, std::io::Error>>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|o| o.map(|r| r.map(http_body::Frame::data)))
    }
}

/// An upstream whose every answer is an SSE stream: one event at once, then open until
/// `end` grants a permit.
fn streaming_app(end: Arc<Semaphore>) -> Router {
    Router::new().route(
        "/mcp",
        any(move || {
            let end = end.clone();
            async move {
                let (tx, rx) = mpsc::channel(4);
                tx.send(Ok(Bytes::from_static(b"event: message\ndata: {}\n\n")))
                    .await
                    .unwrap();
                tokio::spawn(async move {
                    let p = end.acquire().await.unwrap();
                    p.forget();
                    drop(tx);
                });
                Response::builder()
                    .header("content-type", "text/event-stream")
                    .body(Body::new(ChannelBody(rx)))
                    .unwrap()
            }
        }),
    )
}

/// The layer keyed by principal, in front of `streaming_app`, with `x-user: NAME` as the
/// authenticated principal.
async fn gateway(config: RateLimitConfig, end: Arc<Semaphore>) -> SocketAddr {
    let layer = RateLimitLayer::new(config.with_key(KeySpec::principal())).unwrap();
    let app = streaming_app(end)
        .layer(layer)
        .layer(ParseLayer::new())
        .layer(tower::util::MapRequestLayer::new(
            |mut req: Request<Body>| {
                if let Some(u) = req.headers().get("x-user").and_then(|v| v.to_str().ok()) {
                    let p = Principal::new(u, AuthMethod::ApiKey);
                    req.extensions_mut().insert(p);
                }
                req
            },
        ));
    serve(app).await
}

type Client1 = Client<hyper_util::client::legacy::connect::HttpConnector, Body>;

fn client() -> Client1 {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Sends a request; on 200 reads the first event, so that the stream is open, and
/// returns the response with the rest of its body unread.
async fn open(
    c: &Client1,
    addr: SocketAddr,
    method: &str,
    user: &str,
    session: Option<&str>,
) -> Response<hyper::body::Incoming> {
    let mut b = Request::builder()
        .method(method)
        .uri(format!("http://{addr}/mcp"))
        .header("x-user", user)
        .header("accept", "application/json, text/event-stream");
    if let Some(s) = session {
        b = b.header("mcp-session-id", s);
    }
    let body = if method == "POST" {
        b = b.header("content-type", "application/json");
        Body::from(r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"slow"}}"#)
    } else {
        Body::empty()
    };
    let mut r = c.request(b.body(body).unwrap()).await.unwrap();
    if r.status() == StatusCode::OK {
        let first = r.body_mut().frame().await.unwrap().unwrap();
        assert!(first.data_ref().unwrap().starts_with(b"event: message"));
    }
    r
}

async fn json_of(r: Response<hyper::body::Incoming>) -> serde_json::Value {
    serde_json::from_slice(&r.into_body().collect().await.unwrap().to_bytes()).unwrap()
}

fn caps(concurrency: Option<u32>, streams: StreamLimits) -> RateLimitConfig {
    let mut c = RateLimitConfig::per_second(100_000.0, 100_000);
    c.concurrency = concurrency;
    c.streams = streams;
    c
}

/// Polls `f` up to 10 s (a disconnect reaches the server asynchronously).
async fn eventually<F: std::future::Future<Output = bool>>(mut f: impl FnMut() -> F) -> bool {
    for _ in 0..200 {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test]
async fn sse_answers_hold_their_slot_until_the_stream_ends() {
    let end = Arc::new(Semaphore::new(0));
    let addr = gateway(caps(Some(2), StreamLimits::default()), end.clone()).await;
    let c = client();
    // 25 concurrent long tool calls of one principal: 2 run, 23 are refused.
    let all = futures_join(
        (0..25)
            .map(|_| {
                let c = c.clone();
                async move { open(&c, addr, "POST", "alice", None).await }
            })
            .collect(),
    )
    .await;
    let (mut running, mut refused) = (Vec::new(), 0);
    for r in all {
        match r.status() {
            StatusCode::OK => running.push(r),
            StatusCode::TOO_MANY_REQUESTS => {
                assert_eq!(r.headers()["retry-after"], "1");
                let v = json_of(r).await;
                assert_eq!(v["id"], 7);
                assert_eq!(v["error"]["code"], mcp_core::codes::RATE_LIMITED);
                refused += 1;
            }
            s => panic!("unexpected status {s}"),
        }
    }
    assert_eq!((running.len(), refused), (2, 23));
    // Another principal is not affected.
    let bob = open(&c, addr, "POST", "bob", None).await;
    assert_eq!(bob.status(), StatusCode::OK);
    // Still streaming: still refused.
    assert_eq!(
        open(&c, addr, "POST", "alice", None).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    // The upstream ends the streams: the slots are free once the bodies end.
    end.add_permits(3);
    for r in running {
        let _ = r.into_body().collect().await.unwrap();
    }
    let _ = bob.into_body().collect().await.unwrap();
    let again = open(&c, addr, "POST", "alice", None).await;
    assert_eq!(again.status(), StatusCode::OK);
    end.add_permits(1);
}

async fn futures_join<T: Send + 'static>(
    futs: Vec<impl std::future::Future<Output = T> + Send + 'static>,
) -> Vec<T> {
    let handles: Vec<_> = futs.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test]
async fn a_client_that_goes_away_frees_its_slot() {
    let end = Arc::new(Semaphore::new(0));
    let addr = gateway(caps(Some(1), StreamLimits::default()), end.clone()).await;
    let c = client();
    let first = open(&c, addr, "POST", "alice", None).await;
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(
        open(&c, addr, "POST", "alice", None).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    // Dropping the unread body closes the connection: the server drops the body.
    drop(first);
    let ok = eventually(|| {
        let c = c.clone();
        async move {
            let r = open(&c, addr, "POST", "alice", None).await;
            r.status() == StatusCode::OK
        }
    })
    .await;
    assert!(ok, "the slot of a disconnected client was never released");
}

#[tokio::test]
async fn get_streams_are_capped_per_session_and_per_principal() {
    let end = Arc::new(Semaphore::new(0));
    let streams = StreamLimits {
        per_session: Some(2),
        per_client: Some(3),
    };
    let addr = gateway(caps(Some(1), streams), end.clone()).await;
    let c = client();
    let mut held = Vec::new();
    for _ in 0..2 {
        let r = open(&c, addr, "GET", "alice", Some("s1")).await;
        assert_eq!(r.status(), StatusCode::OK);
        held.push(r);
    }
    // A third stream on the same session.
    let r = open(&c, addr, "GET", "alice", Some("s1")).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.headers()["retry-after"], "5");
    assert!(
        json_of(r).await["error"]["message"]
            .as_str()
            .unwrap()
            .contains("session")
    );
    // Another session of the same principal: one more, then the principal's cap.
    let r = open(&c, addr, "GET", "alice", Some("s2")).await;
    assert_eq!(r.status(), StatusCode::OK);
    held.push(r);
    for s in [Some("s3"), None, Some("s2")] {
        let r = open(&c, addr, "GET", "alice", s).await;
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS, "{s:?}");
    }
    // Streams do not take the principal's in-flight slot for calls (concurrency 1).
    let call = open(&c, addr, "POST", "alice", Some("s1")).await;
    assert_eq!(call.status(), StatusCode::OK);
    // Another principal, same session id: its own counts.
    let bob = open(&c, addr, "GET", "bob", Some("s1")).await;
    assert_eq!(bob.status(), StatusCode::OK);
    // The streams end: the caps are free again.
    end.add_permits(5);
    for r in held {
        let _ = r.into_body().collect().await.unwrap();
    }
    for s in ["s1", "s1", "s3"] {
        let r = open(&c, addr, "GET", "alice", Some(s)).await;
        assert_eq!(r.status(), StatusCode::OK, "{s}");
    }
    end.add_permits(10);
}

#[tokio::test]
async fn without_stream_caps_a_stream_counts_as_a_request_in_flight() {
    let end = Arc::new(Semaphore::new(0));
    let addr = gateway(caps(Some(1), StreamLimits::off()), end.clone()).await;
    let c = client();
    let s = open(&c, addr, "GET", "alice", Some("s1")).await;
    assert_eq!(s.status(), StatusCode::OK);
    let r = open(&c, addr, "POST", "alice", Some("s1")).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    end.add_permits(1);
    let _ = s.into_body().collect().await.unwrap();
    assert_eq!(
        open(&c, addr, "POST", "alice", None).await.status(),
        StatusCode::OK
    );
    end.add_permits(1);
}

/// A body that fails after its first frame.
struct FailingBody(u8);

impl From<Bytes> for FailingBody {
    fn from(_: Bytes) -> Self {
        Self(1)
    }
}

impl http_body::Body for FailingBody {
    type Data = Bytes;
    type Error = std::io::Error;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
        self.0 += 1;
        Poll::Ready(Some(if self.0 == 1 {
            Ok(http_body::Frame::data(Bytes::from_static(b"x")))
        } else {
            Err(std::io::Error::other("upstream reset"))
        }))
    }
}

#[tokio::test]
async fn a_failing_or_dropped_body_frees_its_slot_and_rejections_are_typed() {
    let mut config = RateLimitConfig::per_second(1000.0, 1000);
    config.concurrency = Some(1);
    let layer = RateLimitLayer::new(config).unwrap();
    let mut svc = layer.layer(tower::service_fn(|_req: Request<Empty<Bytes>>| async {
        Ok::<_, Infallible>(Response::new(FailingBody(0)))
    }));
    let req = || {
        let mut r = Request::new(Empty::new());
        r.extensions_mut()
            .insert(PeerAddr("192.0.2.1:1".parse().unwrap()));
        r
    };
    let mut held = svc.ready().await.unwrap().call(req()).await.unwrap();
    assert!(held.body().holds_slot());
    let refused = svc.ready().await.unwrap().call(req()).await.unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        refused.extensions().get::<Denial>().unwrap().reason,
        RejectionReason::ConcurrencyLimited
    );
    // First frame: still in flight; the error ends it.
    assert!(held.body_mut().frame().await.unwrap().is_ok());
    assert!(held.body().holds_slot());
    assert!(held.body_mut().frame().await.unwrap().is_err());
    assert!(!held.body().holds_slot());
    let next = svc.ready().await.unwrap().call(req()).await.unwrap();
    assert_eq!(next.status(), StatusCode::OK);
    // Dropped unread: released too.
    drop(next);
    let last = svc.ready().await.unwrap().call(req()).await.unwrap();
    assert_eq!(last.status(), StatusCode::OK);
}

#[test]
fn zero_stream_caps_are_refused_with_the_key() {
    for yaml in [
        "streams: { per_session: 0 }",
        "streams: { per_principal: 0 }",
    ] {
        let c: RateLimitConfig = serde_yaml_ng::from_str(yaml).unwrap();
        let e = RateLimitLayer::new(c).unwrap_err().to_string();
        assert!(e.contains("streams.per_"), "{e}");
    }
    let c: RateLimitConfig =
        serde_yaml_ng::from_str("streams: { per_session: null, per_client: null }").unwrap();
    assert_eq!(c.streams, StreamLimits::off());
    assert!(serde_yaml_ng::from_str::<RateLimitConfig>("streams: { per_stream: 1 }").is_err());
}

/// With the Redis backend the quotas are shared, and the in-flight slot (per replica) is
/// still held by the body: the slot goes through the backend's asynchronous check to the
/// response body.
#[cfg(feature = "redis")]
#[tokio::test]
async fn with_redis_the_slot_is_held_by_the_body_too() {
    let redis = mcp_testkit::RedisServer::start();
    let end = Arc::new(Semaphore::new(0));
    let mut config = caps(Some(1), StreamLimits::default());
    config.redis = Some(mcp_ratelimit::RedisConfig::new(redis.url()).timeout_ms(500));
    let addr = gateway(config, end.clone()).await;
    let c = client();
    // The layer connects in the background: wait until a call passes.
    let first = {
        let mut got = None;
        for _ in 0..100 {
            let r = open(&c, addr, "POST", "alice", None).await;
            if r.status() == StatusCode::OK {
                got = Some(r);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        got.expect("the Redis backend never let a call through")
    };
    let second = open(&c, addr, "POST", "alice", None).await;
    assert_eq!(second.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(second.headers()["retry-after"], "1");
    end.add_permits(1);
    let _ = first.into_body().collect().await.unwrap();
    assert_eq!(
        open(&c, addr, "POST", "alice", None).await.status(),
        StatusCode::OK
    );
    end.add_permits(1);
}
