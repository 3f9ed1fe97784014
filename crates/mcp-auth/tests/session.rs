//! SessionBindingLayer in a Tower stack after real authentication (two API keys, and a
//! Basic user with the same id as an API key), in memory and shared through a real
//! redis-server (feature `redis`) that is stopped and started again.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use mcp_auth::{
    ApiKeyAuthenticator, AuthLayer, BasicAuthenticator, BasicUser, CredentialEntry,
    SessionBindingLayer, SessionConfig,
};
use mcp_core::{Body, Denial, ParseLayer, RejectionReason};
use tower::util::BoxCloneSyncService;
use tower::{ServiceBuilder, ServiceExt};

const ALICE: &str = "Abc123!@#Xyz789!@#Alice";
const BOB: &str = "Zyx987!@#Cba321!@#Bob";
const BASIC_BOB: &str = "Ym9iOmNvcnJlY3QtaG9yc2UtYmF0dGVyeS0x"; // bob:correct-horse-battery-1

type Svc = BoxCloneSyncService<Request<Body>, Response<Body>, Infallible>;

/// A stack: authentication (API keys alice and bob, Basic user bob), parse, the session
/// binding, then an MCP server that issues a new session id to each `initialize`.
fn stack(sessions: SessionBindingLayer, counter: Arc<AtomicU64>) -> Svc {
    let keys = ApiKeyAuthenticator::builder()
        .key(CredentialEntry::new("alice", ALICE))
        .key(CredentialEntry::new("bob", BOB))
        .build()
        .unwrap();
    let basic = BasicAuthenticator::builder()
        .user(BasicUser::plaintext("bob", "correct-horse-battery-1"))
        .build()
        .unwrap();
    let auth = AuthLayer::builder()
        .authenticator(keys)
        .authenticator(basic)
        .build()
        .unwrap();
    let server = tower::service_fn(move |req: Request<Body>| {
        let counter = counter.clone();
        async move {
            let initialize = req
                .extensions()
                .get::<mcp_core::McpRequest>()
                .is_some_and(|m| m.method() == Some("initialize"));
            let mut r = Response::new(Body::from("{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}"));
            if initialize {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                r.headers_mut().insert(
                    "mcp-session-id",
                    format!("session-{n:04}-{:x}", std::process::id())
                        .parse()
                        .unwrap(),
                );
            }
            Ok::<_, Infallible>(r)
        }
    });
    BoxCloneSyncService::new(
        ServiceBuilder::new()
            .layer(auth)
            .layer(ParseLayer::new())
            .layer(sessions)
            .service(server),
    )
}

fn request(method: Method, auth: (&str, &str), sid: Option<&str>, body: &str) -> Request<Body> {
    let mut b = Request::builder()
        .method(method)
        .uri("/mcp")
        .header(auth.0, auth.1)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream");
    if let Some(s) = sid {
        b = b.header("mcp-session-id", s);
    }
    b.body(Body::from(body.to_owned())).unwrap()
}

const INIT: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#;
const CALL: &str =
    r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"add","arguments":{}}}"#;

fn alice() -> (&'static str, &'static str) {
    ("x-api-key", ALICE)
}
fn bob() -> (&'static str, &'static str) {
    ("x-api-key", BOB)
}
fn basic_bob() -> (&'static str, String) {
    ("authorization", format!("Basic {BASIC_BOB}"))
}

async fn send(
    svc: &Svc,
    req: Request<Body>,
) -> (StatusCode, Option<Denial>, Option<String>, Bytes) {
    let r = svc.clone().oneshot(req).await.unwrap();
    let status = r.status();
    let denial = r.extensions().get::<Denial>().cloned();
    let sid = r
        .headers()
        .get("mcp-session-id")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = r.into_body().collect().await.unwrap().to_bytes();
    (status, denial, sid, body)
}

async fn initialize(svc: &Svc, who: (&str, &str)) -> String {
    let (status, _, sid, _) = send(svc, request(Method::POST, who, None, INIT)).await;
    assert_eq!(status, 200);
    sid.expect("a session id")
}

async fn assert_refused(svc: &Svc, req: Request<Body>, detail: &str) {
    let (status, denial, _, body) = send(svc, req).await;
    assert_eq!(status, 404);
    let d = denial.expect("a denial");
    assert_eq!(d.reason, RejectionReason::SessionNotOwned);
    assert_eq!(d.detail.as_deref(), Some(detail));
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"]["code"], -32001);
    assert_eq!(v["error"]["message"], "Session not found");
}

async fn every_method_is_bound(a: &Svc, b: &Svc) {
    let sid = initialize(a, alice()).await;
    for svc in [a, b] {
        // Bob by API key, and a Basic user also named bob: neither owns it.
        assert_refused(
            svc,
            request(Method::POST, bob(), Some(&sid), CALL),
            "other_principal",
        )
        .await;
        let (h, v) = basic_bob();
        assert_refused(
            svc,
            request(Method::POST, (h, &v), Some(&sid), CALL),
            "other_principal",
        )
        .await;
        assert_refused(
            svc,
            request(Method::GET, bob(), Some(&sid), ""),
            "other_principal",
        )
        .await;
        assert_refused(
            svc,
            request(Method::DELETE, bob(), Some(&sid), ""),
            "other_principal",
        )
        .await;
        let (status, denial, _, _) =
            send(svc, request(Method::POST, alice(), Some(&sid), CALL)).await;
        assert_eq!(
            (status, denial),
            (StatusCode::OK, None),
            "the owner still works"
        );
    }
    // The JSON-RPC id is echoed.
    let (_, _, _, body) = send(b, request(Method::POST, bob(), Some(&sid), CALL)).await;
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&body).unwrap()["id"],
        7
    );
    // Unknown ids, case variants: 404 for everyone.
    for v in [sid.to_uppercase(), format!("{sid}x"), "unknown".into()] {
        assert_refused(
            a,
            request(Method::POST, alice(), Some(&v), CALL),
            "unknown_session",
        )
        .await;
    }
    // Two session headers: 400.
    let mut req = request(Method::POST, bob(), Some(&sid), CALL);
    req.headers_mut()
        .append("mcp-session-id", "other".parse().unwrap());
    assert_eq!(send(a, req).await.0, 400);
    // The owner's DELETE ends the binding, on every replica.
    let (status, _, _, _) = send(b, request(Method::DELETE, alice(), Some(&sid), "")).await;
    assert_eq!(status, 200);
    for svc in [a, b] {
        assert_refused(
            svc,
            request(Method::POST, alice(), Some(&sid), CALL),
            "unknown_session",
        )
        .await;
    }
    // Bob's own session is Bob's (API key), not the Basic user bob's.
    let bob_sid = initialize(b, bob()).await;
    assert_eq!(
        send(a, request(Method::POST, bob(), Some(&bob_sid), CALL))
            .await
            .0,
        200
    );
    let (h, v) = basic_bob();
    assert_refused(
        a,
        request(Method::POST, (h, &v), Some(&bob_sid), CALL),
        "other_principal",
    )
    .await;
}

#[tokio::test]
async fn in_memory_sessions_belong_to_their_principal() {
    let layer = SessionBindingLayer::new(&SessionConfig::default()).unwrap();
    let counter = Arc::new(AtomicU64::new(0));
    // Two stacks from one layer share the bindings (as a server's workers do).
    let a = stack(layer.clone(), counter.clone());
    let b = stack(layer, counter);
    every_method_is_bound(&a, &b).await;
}

#[tokio::test]
async fn without_a_principal_the_layer_refuses_loudly() {
    let svc = ServiceBuilder::new()
        .layer(SessionBindingLayer::default())
        .service(tower::service_fn(|_r: Request<Body>| async {
            Ok::<_, Infallible>(Response::new(Body::empty()))
        }));
    let r = svc
        .oneshot(request(Method::POST, alice(), None, CALL))
        .await
        .unwrap();
    assert_eq!(r.status(), 500);
}

#[cfg(feature = "redis")]
mod redis {
    use super::*;
    use mcp_auth::SessionRedisConfig;
    use mcp_testkit::RedisServer;

    fn layer(redis: &RedisServer) -> SessionBindingLayer {
        SessionBindingLayer::new(
            &SessionConfig::default().redis(
                SessionRedisConfig::new(redis.url())
                    .prefix("t")
                    .timeout_ms(500),
            ),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn replicas_sharing_redis_agree_and_an_outage_fails_closed() {
        let mut redis = RedisServer::start();
        let counter = Arc::new(AtomicU64::new(0));
        // Two layers, two stores: two replicas.
        let a = stack(layer(&redis), counter.clone());
        let b = stack(layer(&redis), counter);
        every_method_is_bound(&a, &b).await;

        // Redis keeps the hash of the id, never the id (nobody ends sessions upstream here).
        let sid = initialize(&a, alice()).await;
        let client = ::redis::Client::open(redis.url()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let keys: Vec<String> = ::redis::cmd("KEYS")
            .arg("*")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(!keys.is_empty());
        for k in &keys {
            assert!(k.starts_with("t:") && !k.contains(&sid), "{k}");
            assert_ne!(k, "t:ends", "ids are kept only to end sessions");
            if k.starts_with("t:owner:") || k == "t:idle" {
                // The owner's and the idle index: hashes of the ids, never the ids.
                let ids: Vec<String> = ::redis::cmd("ZRANGE")
                    .arg(k)
                    .arg(0)
                    .arg(-1)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                assert!(!ids.is_empty() && ids.iter().all(|i| i.len() == 64 && !i.contains(&sid)));
                continue;
            }
            let v: String = ::redis::cmd("GET")
                .arg(k)
                .query_async(&mut conn)
                .await
                .unwrap();
            assert!(!v.contains("alice"), "owners are hashed: {v}");
            let ttl: i64 = ::redis::cmd("PTTL")
                .arg(k)
                .query_async(&mut conn)
                .await
                .unwrap();
            assert!(ttl > 0 && ttl <= 3_600_000, "{ttl}");
        }
        drop(conn);

        redis.kill();
        for svc in [&a, &b] {
            let (status, denial, _, _) =
                send(svc, request(Method::POST, alice(), Some(&sid), CALL)).await;
            assert_eq!(status, 503, "the owner cannot be checked");
            assert_eq!(denial.unwrap().reason, RejectionReason::Unavailable);
            let (status, _, _, _) = send(svc, request(Method::POST, bob(), Some(&sid), CALL)).await;
            assert_eq!(status, 503);
            // A new session cannot be bound, so it is not handed out.
            let (status, _, issued, _) =
                send(svc, request(Method::POST, alice(), None, INIT)).await;
            assert_eq!((status, issued), (StatusCode::SERVICE_UNAVAILABLE, None));
            // Requests without a session never need the store.
            let (status, _, _, _) = send(svc, request(Method::POST, alice(), None, CALL)).await;
            assert_eq!(status, 200);
        }

        // Back, empty: the id is unknown (the client starts a new session).
        redis.restart();
        let mut status = StatusCode::SERVICE_UNAVAILABLE;
        for _ in 0..100 {
            status = send(&a, request(Method::POST, alice(), Some(&sid), CALL))
                .await
                .0;
            if status != StatusCode::SERVICE_UNAVAILABLE {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert_eq!(status, 404);
        let sid = initialize(&b, alice()).await;
        assert_eq!(
            send(&a, request(Method::POST, alice(), Some(&sid), CALL))
                .await
                .0,
            200
        );
        assert_refused(
            &a,
            request(Method::POST, bob(), Some(&sid), CALL),
            "other_principal",
        )
        .await;
    }
}

/// A Redis that hangs (SIGSTOP): requests carrying a session id are refused with 503 at
/// once, not each after the call timeout; the store is found again when Redis answers.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_redis_fails_closed_without_waiting_for_each_request() {
    use mcp_auth::SessionRedisConfig;
    use mcp_testkit::RedisServer;
    use std::time::{Duration, Instant};

    let mut redis = RedisServer::start();
    let timeout_ms = 500;
    let svc = stack(
        SessionBindingLayer::new(
            &SessionConfig::default()
                .redis(SessionRedisConfig::new(redis.url()).timeout_ms(timeout_ms)),
        )
        .unwrap(),
        Arc::new(AtomicU64::new(0)),
    );
    let sid = initialize(&svc, alice()).await;
    redis.pause();
    let (clients, window) = (8u64, Duration::from_secs(2));
    let end = Instant::now() + window;
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (svc, sid) = (svc.clone(), sid.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < end {
                let (status, denial, _, _) =
                    send(&svc, request(Method::POST, alice(), Some(&sid), CALL)).await;
                assert_eq!(status, 503);
                assert_eq!(denial.unwrap().reason, RejectionReason::Unavailable);
                n += 1;
            }
            n
        }));
    }
    let mut refused = 0;
    for t in tasks {
        refused += t.await.unwrap();
    }
    // Were each request to wait for its call's timeout, a client could complete at most
    // window / timeout of them (plus the one under way at the end).
    let waiting_each = clients * (window.as_millis() as u64 / timeout_ms + 1);
    eprintln!(
        "hung redis: {refused} requests refused in {window:?} ({waiting_each} if each waited)"
    );
    assert!(
        refused >= 4 * waiting_each,
        "{refused} requests refused in {window:?}; waiting for each: at most {waiting_each}"
    );
    redis.resume();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, _, _, _) = send(&svc, request(Method::POST, alice(), Some(&sid), CALL)).await;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the store never came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One principal's sessions never evict another's: at its cap, a principal loses its own
/// least recently used binding (in memory, and through Redis shared by two replicas).
async fn the_per_principal_cap_evicts_only_the_owners_own(a: &Svc, b: &Svc) {
    let alice_sid = initialize(a, alice()).await;
    let mut bobs = Vec::new();
    for i in 0..10 {
        bobs.push(initialize(if i % 2 == 0 { a } else { b }, bob()).await);
    }
    for svc in [a, b] {
        let (status, _, _, _) =
            send(svc, request(Method::POST, alice(), Some(&alice_sid), CALL)).await;
        assert_eq!(status, 200, "Alice's session survives Bob's ten");
    }
    // Cap 4: Bob's first six are gone, his last four work.
    for sid in &bobs[..6] {
        assert_refused(
            a,
            request(Method::POST, bob(), Some(sid), CALL),
            "unknown_session",
        )
        .await;
    }
    for sid in &bobs[6..] {
        let (status, _, _, _) = send(b, request(Method::POST, bob(), Some(sid), CALL)).await;
        assert_eq!(status, 200);
    }
    // Basic bob is another owner, with a cap of his own.
    let basic = initialize(a, (basic_bob().0, &basic_bob().1)).await;
    let (status, _, _, _) = send(b, request(Method::POST, bob(), Some(&bobs[9]), CALL)).await;
    assert_eq!(status, 200);
    let (status, _, _, _) = send(
        a,
        request(
            Method::POST,
            (basic_bob().0, &basic_bob().1),
            Some(&basic),
            CALL,
        ),
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn in_memory_one_principal_cannot_evict_another() {
    let counter = Arc::new(AtomicU64::new(0));
    let layer = SessionBindingLayer::new(
        &SessionConfig::default()
            .max_sessions(100)
            .max_sessions_per_principal(4),
    )
    .unwrap();
    let svc = stack(layer, counter);
    the_per_principal_cap_evicts_only_the_owners_own(&svc, &svc).await;
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn through_redis_one_principal_cannot_evict_another() {
    use mcp_auth::SessionRedisConfig;
    let redis = mcp_testkit::RedisServer::start();
    let counter = Arc::new(AtomicU64::new(0));
    let layer = || {
        SessionBindingLayer::new(
            &SessionConfig::default()
                .max_sessions_per_principal(4)
                .redis(
                    SessionRedisConfig::new(redis.url())
                        .prefix("c")
                        .timeout_ms(500),
                ),
        )
        .unwrap()
    };
    let a = stack(layer(), counter.clone());
    let b = stack(layer(), counter);
    the_per_principal_cap_evicts_only_the_owners_own(&a, &b).await;
    // Bob's index holds his four live ids.
    let client = ::redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = ::redis::cmd("KEYS")
        .arg("c:owner:*")
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut sizes = Vec::new();
    for k in &keys {
        let n: usize = ::redis::cmd("ZCARD")
            .arg(k)
            .query_async(&mut conn)
            .await
            .unwrap();
        sizes.push(n);
    }
    sizes.sort_unstable();
    assert_eq!(sizes, [1, 1, 4], "alice, basic bob, bob");
}

/// Replicas sharing Redis hand over each session they end exactly once: evictions by
/// the replica that evicts, idle expiries by the one whose sweep claims them.
#[cfg(feature = "redis")]
#[tokio::test]
async fn through_redis_each_ended_session_is_handed_over_once() {
    use mcp_auth::{EndReason, SessionRedisConfig, SessionRoute};
    use std::collections::HashMap;
    let redis = mcp_testkit::RedisServer::start();
    let counter = Arc::new(AtomicU64::new(0));
    let layer = || {
        SessionBindingLayer::new(
            &SessionConfig::default()
                .max_sessions_per_principal(2)
                .idle_timeout_seconds(1)
                .redis(
                    SessionRedisConfig::new(redis.url())
                        .prefix("e")
                        .timeout_ms(500),
                ),
        )
        .unwrap()
    };
    let (la, lb) = (layer(), layer());
    let mut ended = vec![la.ended_sessions().unwrap(), lb.ended_sessions().unwrap()];
    assert!(la.ended_sessions().is_none(), "one receiver");
    // The route travels with the session.
    let route = |svc: Svc| -> Svc {
        BoxCloneSyncService::new(
            ServiceBuilder::new()
                .map_request(|mut r: Request<Body>| {
                    r.extensions_mut().insert(SessionRoute("up-1".into()));
                    r
                })
                .service(svc),
        )
    };
    let a = route(stack(la.clone(), counter.clone()));
    let b = route(stack(lb.clone(), counter));
    let mut issued = Vec::new();
    for i in 0..6 {
        issued.push(initialize(if i % 2 == 0 { &a } else { &b }, alice()).await);
    }
    // Ids are kept in `e:ends` only, to end the sessions.
    let client = ::redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let kept: HashMap<String, String> = ::redis::cmd("HGETALL")
        .arg("e:ends")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(kept.len(), 2, "the two live sessions: {kept:?}");
    let mut seen: HashMap<String, Vec<EndReason>> = HashMap::new();
    let take = |ended: &mut Vec<mcp_auth::EndedSessions>,
                seen: &mut HashMap<String, Vec<EndReason>>| {
        for rx in ended.iter_mut() {
            while let Some(Some(e)) = rx_now(rx) {
                assert_eq!(e.route(), Some("up-1"));
                seen.entry(e.session_id().to_str().unwrap().to_owned())
                    .or_default()
                    .push(e.reason());
            }
        }
    };
    take(&mut ended, &mut seen);
    // The four oldest were evicted by the cap, each handed over once.
    for sid in &issued[..4] {
        assert_eq!(
            seen.get(sid),
            Some(&vec![EndReason::PrincipalCap]),
            "{sid}: {seen:?}"
        );
    }
    // Then idle: the two live ones, once each (two replicas sweep).
    for _ in 0..100 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        take(&mut ended, &mut seen);
        if issued[4..].iter().all(|s| seen.contains_key(s)) {
            break;
        }
    }
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    take(&mut ended, &mut seen);
    for sid in &issued[4..] {
        assert_eq!(
            seen.get(sid),
            Some(&vec![EndReason::Idle]),
            "{sid}: {seen:?}"
        );
    }
    assert_eq!(seen.len(), 6);
    let kept: HashMap<String, String> = ::redis::cmd("HGETALL")
        .arg("e:ends")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(kept.is_empty(), "nothing kept once ended: {kept:?}");
}

/// The next ended session if one is ready.
#[cfg(feature = "redis")]
fn rx_now(rx: &mut mcp_auth::EndedSessions) -> Option<Option<mcp_auth::EndedSession>> {
    use std::future::Future;
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let fut = std::pin::pin!(rx.recv());
    match fut.poll(&mut cx) {
        std::task::Poll::Ready(v) => Some(v),
        std::task::Poll::Pending => None,
    }
}
