//! The layer with the in-memory backend, over real sockets (and in-process where the test
//! needs a forged peer address).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::field_reassign_with_default
)]

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::post;
use common::*;
use http::{Request, Response, StatusCode};
use mcp_core::{
    AuthMethod, ClientAddrLayer, Denial, ForwardedHeader, ParseLayer, PeerAddr, Principal,
    RejectionReason, TrustedProxies,
};
use mcp_ratelimit::{
    HeaderStyle, KeySpec, Limit, MissingKey, MockClock, RateLimitConfig, RateLimitLayer, RuleLimit,
};
use tower::{Layer, Service, ServiceExt};

fn app(layer: RateLimitLayer, proxies: TrustedProxies) -> Router {
    ok_router()
        .layer(layer)
        .layer(ParseLayer::new())
        .layer(ClientAddrLayer::new(proxies))
}

/// A stand-in for the authentication layer: `x-user: NAME` becomes an authenticated
/// principal (`anonymous` stays anonymous).
fn fake_auth(router: Router) -> Router {
    router.layer(tower::util::MapRequestLayer::new(
        |mut req: Request<Body>| {
            if let Some(u) = req.headers().get("x-user").and_then(|v| v.to_str().ok()) {
                let p = if u == "anonymous" {
                    Principal::anonymous()
                } else {
                    Principal::new(u, AuthMethod::ApiKey).with_credential_id(format!("key-{u}"))
                };
                req.extensions_mut().insert(p);
            }
            req
        },
    ))
}

#[tokio::test]
async fn burst_then_429_at_the_exact_boundary() {
    let clock = MockClock::new();
    let layer = RateLimitLayer::with_clock(RateLimitConfig::per_second(1.0, 3), clock).unwrap();
    let addr = serve(app(layer, TrustedProxies::none())).await;
    for i in 0..3 {
        let r = post_mcp(addr, &[], &ping(i)).await;
        assert_eq!(r.status, StatusCode::OK, "request {i}");
    }
    let r = post_mcp(addr, &[], &ping(42)).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(r.header("ratelimit-limit"), Some("3"));
    assert_eq!(r.header("ratelimit-remaining"), Some("0"));
    assert_eq!(r.header("ratelimit-reset"), Some("3"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    let body = r.json();
    assert_eq!(body["jsonrpc"], "2.0");
    assert_eq!(body["id"], 42);
    assert_eq!(body["error"]["code"], mcp_core::codes::RATE_LIMITED);
    // A string id is echoed too.
    let r = post_mcp(addr, &[], r#"{"jsonrpc":"2.0","id":"abc","method":"ping"}"#).await;
    assert_eq!(r.json()["id"], "abc");
}

#[tokio::test]
async fn refill_follows_the_mock_clock() {
    let clock = MockClock::new();
    // One request every 2 s, burst 2.
    let layer =
        RateLimitLayer::with_clock(RateLimitConfig::per_second(0.5, 2), clock.clone()).unwrap();
    let addr = serve(app(layer, TrustedProxies::none())).await;
    assert_eq!(post_mcp(addr, &[], &ping(1)).await.status, StatusCode::OK);
    assert_eq!(post_mcp(addr, &[], &ping(2)).await.status, StatusCode::OK);
    let r = post_mcp(addr, &[], &ping(3)).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.header("retry-after"), Some("2"));
    clock.advance(Duration::from_millis(1999));
    let r = post_mcp(addr, &[], &ping(4)).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    // 1 ms left: Retry-After is rounded up to a whole second, never 0.
    assert_eq!(r.header("retry-after"), Some("1"));
    clock.advance(Duration::from_millis(1));
    assert_eq!(post_mcp(addr, &[], &ping(5)).await.status, StatusCode::OK);
    assert_eq!(
        post_mcp(addr, &[], &ping(6)).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    // A long pause refills the burst, not more.
    clock.advance(Duration::from_secs(3600));
    assert_eq!(post_mcp(addr, &[], &ping(7)).await.status, StatusCode::OK);
    assert_eq!(post_mcp(addr, &[], &ping(8)).await.status, StatusCode::OK);
    assert_eq!(
        post_mcp(addr, &[], &ping(9)).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn tiers_default_authenticated_and_principal_override() {
    let mut config = RateLimitConfig::per_second(1.0, 1)
        .with_key(KeySpec::new([mcp_ratelimit::KeyPart::Principal]));
    config.missing_key = MissingKey::Ip;
    config.client_limits.authenticated = Some(Limit {
        requests_per_second: 1.0,
        burst: Some(3),
    });
    config.client_limits.principals.insert(
        "apikey:vip".into(),
        Limit {
            requests_per_second: 1.0,
            burst: Some(5),
        },
    );
    let layer = RateLimitLayer::with_clock(config, MockClock::new()).unwrap();
    let addr = serve(fake_auth(app(layer, TrustedProxies::none()))).await;
    let allowed = |user: &'static str| async move {
        let mut n = 0;
        for i in 0..10 {
            let h: Vec<(&str, &str)> = if user.is_empty() {
                vec![]
            } else {
                vec![("x-user", user)]
            };
            if post_mcp(addr, &h, &ping(i)).await.status == StatusCode::OK {
                n += 1;
            }
        }
        n
    };
    // No principal: keyed by IP (missing_key: ip), default tier.
    assert_eq!(allowed("").await, 1);
    // The anonymous principal is not authenticated: default tier, its own key.
    assert_eq!(allowed("anonymous").await, 1);
    assert_eq!(allowed("alice").await, 3);
    assert_eq!(allowed("bob").await, 3);
    assert_eq!(allowed("vip").await, 5);
}

#[test]
fn per_principal_keys_say_how_the_principal_was_proven() {
    let limit = Limit {
        requests_per_second: 1.0,
        burst: Some(5),
    };
    let mut config = RateLimitConfig::per_second(1.0, 1);
    config.client_limits.principals.insert("vip".into(), limit);
    let e = RateLimitLayer::new(config.clone()).unwrap_err();
    assert!(
        e.to_string().contains("client_limits.principals.vip"),
        "{e}"
    );
    assert!(e.to_string().contains("apikey:vip"), "{e}");
    // Resolved against what authentication can produce: only the API key vip.
    let keys = mcp_core::PrincipalSources::new().with_ids(AuthMethod::ApiKey, ["vip"]);
    let mut ok = config.clone();
    ok.client_limits.resolve_principals(&keys).unwrap();
    assert!(ok.client_limits.principals.contains_key("apikey:vip"));
    RateLimitLayer::new(ok).unwrap();
    // With client certificates too, `vip` could be either.
    let both = keys.with_any_id(AuthMethod::ClientCertificate);
    let mut ambiguous = config;
    assert!(ambiguous.client_limits.resolve_principals(&both).is_err());
}

#[tokio::test]
async fn per_tool_quota_and_cost() {
    let mut config = RateLimitConfig::per_second(1.0, 10);
    config.per_tool.insert(
        "expensive".into(),
        RuleLimit {
            requests_per_second: Some(1.0),
            burst: Some(1),
            cost: Some(4),
        },
    );
    config.per_method.insert(
        "resources/read".into(),
        RuleLimit {
            requests_per_second: Some(1.0),
            burst: Some(2),
            cost: None,
        },
    );
    config.headers.style = HeaderStyle::Combined;
    let layer = RateLimitLayer::with_clock(config, MockClock::new()).unwrap();
    let addr = serve(app(layer, TrustedProxies::none())).await;

    assert_eq!(
        post_mcp(addr, &[], &call(1, "expensive")).await.status,
        StatusCode::OK
    );
    let r = post_mcp(addr, &[], &call(2, "expensive")).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.json()["id"], 2);
    assert_eq!(
        r.header("ratelimit-policy"),
        Some("\"default.tool.expensive\";q=1;w=1")
    );
    assert_eq!(
        r.header("ratelimit"),
        Some("\"default.tool.expensive\";r=0;t=1")
    );
    // Other tools are not held back by the expensive one's quota...
    assert_eq!(
        post_mcp(addr, &[], &call(3, "cheap")).await.status,
        StatusCode::OK
    );
    // ...but the expensive call cost 4 units of the client's 10 (and the refused one
    // cost nothing from it): 10 - 4 - 1 = 5 left.
    for i in 0..5 {
        assert_eq!(
            post_mcp(addr, &[], &call(10 + i, "cheap")).await.status,
            StatusCode::OK
        );
    }
    let r = post_mcp(addr, &[], &call(20, "cheap")).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.header("ratelimit-policy"), Some("\"default\";q=10;w=10"));
}

#[tokio::test]
async fn per_method_quota_and_batches_count_per_message() {
    let mut config = RateLimitConfig::per_second(1.0, 100);
    config.per_method.insert(
        "resources/read".into(),
        RuleLimit {
            requests_per_second: Some(1.0),
            burst: Some(2),
            cost: None,
        },
    );
    let layer = RateLimitLayer::with_clock(config, MockClock::new()).unwrap();
    let addr = serve(app(layer, TrustedProxies::none())).await;
    let read = |id: i64| {
        format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"resources/read","params":{{"uri":"file:///a"}}}}"#
        )
    };
    // A batch is charged per message: three reads in one body. A charge above the burst
    // (3 > 2) never fits: refused whole (413, no Retry-After), never clamped to the burst.
    let batch = format!("[{},{},{}]", read(1), read(2), read(3));
    let r = post_mcp(addr, &[], &batch).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(r.header("retry-after"), None);
    assert_eq!(r.json()["error"]["data"]["limit"], 2);
    assert_eq!(r.json()["error"]["data"]["cost"], 3);
    assert_eq!(
        r.json()["error"]["data"]["policy"],
        "default.method.resources/read"
    );
    // Nothing was taken: two reads fit...
    let pair = format!("[{},{}]", read(1), read(2));
    assert_eq!(post_mcp(addr, &[], &pair).await.status, StatusCode::OK);
    // ...and leave nothing.
    let r = post_mcp(addr, &[], &read(4)).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.json()["id"], 4);
    assert!(r.header("retry-after").is_some());
    // Other methods are only under the client quota.
    assert_eq!(post_mcp(addr, &[], &ping(7)).await.status, StatusCode::OK);
}

/// A batch larger than the client quota's burst (no rules) or than a per-principal tier's
/// burst is refused whole too, and its refusal names the quota; the audit sees a
/// rate-limit denial.
#[tokio::test]
async fn a_batch_above_the_client_or_principal_burst_is_refused_whole() {
    let mut config = RateLimitConfig::per_second(1.0, 4);
    config.client_limits.principals.insert(
        "apikey:bob".into(),
        Limit {
            requests_per_second: 1.0,
            burst: Some(2),
        },
    );
    let layer = RateLimitLayer::with_clock(config, MockClock::new()).unwrap();
    let addr = serve(fake_auth(app(layer, TrustedProxies::none()))).await;
    let batch = |n: i64| format!("[{}]", (0..n).map(ping).collect::<Vec<_>>().join(","));
    let r = post_mcp(addr, &[], &batch(5)).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(r.json()["error"]["code"], mcp_core::codes::RATE_LIMITED);
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("batch")
    );
    let r = post_mcp(addr, &[("x-user", "bob")], &batch(3)).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(r.json()["error"]["data"]["limit"], 2);
    assert_eq!(
        post_mcp(addr, &[("x-user", "bob")], &batch(2)).await.status,
        StatusCode::OK
    );
    assert_eq!(post_mcp(addr, &[], &batch(4)).await.status, StatusCode::OK);
    assert_eq!(
        post_mcp(addr, &[], &ping(9)).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
}

/// In process, with a manual clock: whatever the burst and however the calls of a tool
/// are split into batches, at most `burst` calls pass before the clock moves, and at most
/// `burst` more per full refill.
mod batch_property {
    use super::*;
    use proptest::prelude::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn run(burst: u32, batches: Vec<usize>) -> Result<(), TestCaseError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let clock = MockClock::new();
            let mut config = RateLimitConfig::per_second(1000.0, 1000);
            config.per_tool.insert(
                "add".into(),
                RuleLimit {
                    requests_per_second: Some(1.0),
                    burst: Some(burst),
                    cost: None,
                },
            );
            let layer = RateLimitLayer::with_clock(config, clock.clone()).unwrap();
            let passed = Arc::new(AtomicUsize::new(0));
            let p2 = passed.clone();
            let inner = tower::service_fn(move |req: Request<Body>| {
                let n = req
                    .extensions()
                    .get::<mcp_core::McpRequest>()
                    .map_or(0, |m| {
                        m.messages()
                            .iter()
                            .filter(|x| x.tool_name() == Some("add"))
                            .count()
                    });
                p2.fetch_add(n, Ordering::SeqCst);
                async { Ok::<_, Infallible>(Response::new(Body::from("ok"))) }
            });
            let svc = ParseLayer::new().layer(layer.layer(inner));
            let peer = SocketAddr::from(([192, 0, 2, 1], 4000));
            for (round, sizes) in batches.chunks(4).enumerate() {
                let before = passed.load(Ordering::SeqCst);
                for &n in sizes {
                    let body = format!(
                        "[{}]",
                        (0..n as i64)
                            .map(|i| call(i, "add"))
                            .collect::<Vec<_>>()
                            .join(",")
                    );
                    let mut req = Request::post("/mcp")
                        .header("content-type", "application/json")
                        .header("accept", "application/json, text/event-stream")
                        .body(Body::from(body))
                        .unwrap();
                    req.extensions_mut().insert(PeerAddr(peer));
                    let status = svc.clone().oneshot(req).await.unwrap().status();
                    prop_assert!([200, 413, 429].contains(&status.as_u16()), "{status}");
                    if n as u32 > burst {
                        prop_assert_eq!(status.as_u16(), 413);
                    }
                }
                let got = passed.load(Ordering::SeqCst) - before;
                prop_assert!(
                    got <= burst as usize,
                    "round {}: {} calls passed a burst of {}",
                    round,
                    got,
                    burst
                );
                clock.advance(Duration::from_secs(u64::from(burst)));
            }
            Ok(())
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn at_most_burst_calls_of_a_tool_pass_per_refill(
            burst in 1u32..8,
            batches in proptest::collection::vec(1usize..20, 1..12),
        ) {
            run(burst, batches)?;
        }
    }
}

#[tokio::test]
async fn deny_list_ipv4_and_ipv6_over_sockets() {
    let mut config = RateLimitConfig::per_second(100.0, 100);
    config.blacklist = vec!["127.0.0.0/8".into()];
    let layer = RateLimitLayer::new(config).unwrap();
    let v4 = serve(app(layer.clone(), TrustedProxies::none())).await;
    let r = post_mcp(v4, &[], &ping(9)).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.json()["id"], 9);
    assert_eq!(r.json()["error"]["code"], mcp_core::codes::FORBIDDEN);

    let mut config = RateLimitConfig::per_second(100.0, 100);
    config.blacklist = vec!["::1/128".into()];
    let layer = RateLimitLayer::new(config).unwrap();
    let v6 = serve_on("[::1]:0", app(layer.clone(), TrustedProxies::none())).await;
    assert_eq!(
        post_mcp(v6, &[], &ping(1)).await.status,
        StatusCode::FORBIDDEN
    );
    let v4 = serve(app(layer, TrustedProxies::none())).await;
    assert_eq!(post_mcp(v4, &[], &ping(1)).await.status, StatusCode::OK);
}

#[tokio::test]
async fn allow_list_bypasses_limits_ipv4_and_ipv6() {
    let mut config = RateLimitConfig::per_second(1.0, 1);
    config.whitelist = vec!["::1".into()];
    let layer = RateLimitLayer::with_clock(config, MockClock::new()).unwrap();
    let v6 = serve_on("[::1]:0", app(layer.clone(), TrustedProxies::none())).await;
    for i in 0..5 {
        assert_eq!(post_mcp(v6, &[], &ping(i)).await.status, StatusCode::OK);
    }
    // 127.0.0.1 is not listed: limited.
    let v4 = serve(app(layer, TrustedProxies::none())).await;
    assert_eq!(post_mcp(v4, &[], &ping(1)).await.status, StatusCode::OK);
    assert_eq!(
        post_mcp(v4, &[], &ping(2)).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );

    let mut config = RateLimitConfig::per_second(1.0, 1);
    config.whitelist = vec!["127.0.0.0/8".into()];
    let layer = RateLimitLayer::with_clock(config, MockClock::new()).unwrap();
    let v4 = serve(app(layer, TrustedProxies::none())).await;
    for i in 0..5 {
        assert_eq!(post_mcp(v4, &[], &ping(i)).await.status, StatusCode::OK);
    }
}

/// In-process with forged peers: lists over documentation ranges, v4 and v6.
#[tokio::test]
async fn lists_in_process_with_peer_addr() {
    let mut config = RateLimitConfig::per_second(1.0, 1);
    config.whitelist = vec!["192.0.2.0/24".into(), "2001:db8:a::/48".into()];
    config.blacklist = vec!["198.51.100.0/24".into(), "2001:db8:bad::/48".into()];
    let layer = RateLimitLayer::with_clock(config, MockClock::new()).unwrap();
    let svc = layer.layer(tower::service_fn(|_req: Request<Body>| async {
        Ok::<_, Infallible>(Response::new(Body::from("ok")))
    }));
    let status = |peer: &str| {
        let peer: SocketAddr = peer.parse().unwrap();
        let svc = svc.clone();
        async move {
            let mut req = Request::new(Body::empty());
            req.extensions_mut().insert(PeerAddr(peer));
            let resp = svc.oneshot(req).await.unwrap();
            if let Some(d) = resp.extensions().get::<Denial>() {
                assert!(matches!(
                    d.reason,
                    RejectionReason::DeniedByList | RejectionReason::RateLimited
                ));
            }
            resp.status()
        }
    };
    assert_eq!(status("198.51.100.20:1").await, StatusCode::FORBIDDEN);
    assert_eq!(status("[2001:db8:bad::1]:1").await, StatusCode::FORBIDDEN);
    // IPv4-mapped IPv6 peers are matched as IPv4.
    assert_eq!(
        status("[::ffff:198.51.100.20]:1").await,
        StatusCode::FORBIDDEN
    );
    for _ in 0..3 {
        assert_eq!(status("192.0.2.1:1").await, StatusCode::OK);
        assert_eq!(status("[2001:db8:a::9]:1").await, StatusCode::OK);
    }
    assert_eq!(status("203.0.113.1:1").await, StatusCode::OK);
    assert_eq!(status("203.0.113.1:2").await, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(status("[2001:db8:c::1]:1").await, StatusCode::OK);
    assert_eq!(
        status("[2001:db8:c::1]:1").await,
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn forwarded_headers_from_an_untrusted_peer_do_not_change_the_key() {
    let layer =
        RateLimitLayer::with_clock(RateLimitConfig::per_second(1.0, 1), MockClock::new()).unwrap();
    // Only 10.0.0.0/8 is trusted; the test client connects from 127.0.0.1.
    let proxies = TrustedProxies::new(["10.0.0.0/8".parse().unwrap()]);
    let addr = serve(app(layer.clone(), proxies.clone())).await;
    assert_eq!(
        post_mcp(addr, &[("x-forwarded-for", "198.51.100.1")], &ping(1))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        post_mcp(addr, &[("x-forwarded-for", "198.51.100.2")], &ping(2))
            .await
            .status,
        StatusCode::TOO_MANY_REQUESTS
    );
    let fwd = serve(app(
        RateLimitLayer::with_clock(RateLimitConfig::per_second(1.0, 1), MockClock::new()).unwrap(),
        proxies.with_header(ForwardedHeader::Forwarded),
    ))
    .await;
    assert_eq!(
        post_mcp(fwd, &[("forwarded", "for=198.51.100.1")], &ping(1))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        post_mcp(fwd, &[("forwarded", "for=198.51.100.2")], &ping(2))
            .await
            .status,
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn forwarded_headers_from_a_trusted_proxy_set_the_key_rightmost_untrusted() {
    let mut config = RateLimitConfig::per_second(1.0, 1);
    config.blacklist = vec!["203.0.113.0/24".into()];
    let layer = RateLimitLayer::with_clock(config, MockClock::new()).unwrap();
    let proxies = TrustedProxies::new([
        "127.0.0.0/8".parse().unwrap(),
        "10.0.0.0/8".parse().unwrap(),
    ]);
    let addr = serve(app(layer, proxies.clone())).await;
    let xff = |v: &'static str, id| async move {
        post_mcp(addr, &[("x-forwarded-for", v)], &ping(id))
            .await
            .status
    };
    assert_eq!(xff("198.51.100.1", 1).await, StatusCode::OK);
    assert_eq!(xff("198.51.100.2", 2).await, StatusCode::OK);
    assert_eq!(xff("198.51.100.1", 3).await, StatusCode::TOO_MANY_REQUESTS);
    // The client forged a leftmost address; the rightmost untrusted one is the key.
    assert_eq!(
        xff("6.6.6.6, 198.51.100.3, 10.0.0.7", 4).await,
        StatusCode::OK
    );
    assert_eq!(
        xff("7.7.7.7, 198.51.100.3", 5).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    // A forged leftmost address cannot escape the deny list either.
    assert_eq!(
        xff("198.51.100.9, 203.0.113.5", 6).await,
        StatusCode::FORBIDDEN
    );

    let mut config = RateLimitConfig::per_second(1.0, 1);
    config.blacklist = vec!["2001:db8:bad::/48".into()];
    let fwd = serve(app(
        RateLimitLayer::with_clock(config, MockClock::new()).unwrap(),
        proxies.with_header(ForwardedHeader::Forwarded),
    ))
    .await;
    let f = |v: &'static str, id| async move {
        post_mcp(fwd, &[("forwarded", v)], &ping(id)).await.status
    };
    assert_eq!(f("for=198.51.100.1", 1).await, StatusCode::OK);
    assert_eq!(f("for=198.51.100.2", 2).await, StatusCode::OK);
    assert_eq!(
        f("for=6.6.6.6, for=198.51.100.1", 3).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        f(r#"for="[2001:db8:bad::1]:443""#, 4).await,
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn eviction_keeps_the_key_count_under_the_cap() {
    let clock = MockClock::new();
    let mut config = RateLimitConfig::per_second(10.0, 10);
    config.max_keys = 1000;
    let layer = RateLimitLayer::with_clock(config, clock.clone()).unwrap();
    let svc = layer.layer(tower::service_fn(|_req: Request<Body>| async {
        Ok::<_, Infallible>(Response::new(Body::from("ok")))
    }));
    let mut limited = 0;
    for i in 0..20_000u32 {
        let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i);
        let mut req = Request::new(Body::empty());
        req.extensions_mut()
            .insert(PeerAddr(SocketAddr::from((ip, 1))));
        if svc.clone().oneshot(req).await.unwrap().status() == StatusCode::TOO_MANY_REQUESTS {
            limited += 1;
        }
        assert!(layer.key_count() <= 1000);
    }
    assert_eq!(layer.key_count(), 1000);
    // Keys beyond the cap shared one overflow bucket of 10.
    assert_eq!(limited, 19_000 - 10);
    clock.advance(Duration::from_secs(5));
    layer.cleanup_now();
    assert_eq!(layer.key_count(), 0);
}

#[tokio::test]
async fn missing_key_shared_or_rejected() {
    let config = RateLimitConfig::per_second(1.0, 1).with_key(KeySpec::principal());
    let layer = RateLimitLayer::with_clock(config, MockClock::new()).unwrap();
    let addr = serve(fake_auth(app(layer, TrustedProxies::none()))).await;
    // Without a principal, everyone shares the `unknown` bucket.
    assert_eq!(post_mcp(addr, &[], &ping(1)).await.status, StatusCode::OK);
    assert_eq!(
        post_mcp(addr, &[], &ping(2)).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        post_mcp(addr, &[("x-user", "a")], &ping(3)).await.status,
        StatusCode::OK
    );

    let mut config = RateLimitConfig::per_second(1.0, 1).with_key(KeySpec::new([
        mcp_ratelimit::KeyPart::Header(http::HeaderName::from_static("x-tenant")),
    ]));
    config.missing_key = MissingKey::Reject;
    let layer = RateLimitLayer::with_clock(config, MockClock::new()).unwrap();
    let addr = serve(app(layer, TrustedProxies::none())).await;
    let r = post_mcp(addr, &[], &ping(5)).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.json()["id"], 5);
    assert_eq!(
        post_mcp(addr, &[("x-tenant", "t1")], &ping(6)).await.status,
        StatusCode::OK
    );
    assert_eq!(
        post_mcp(addr, &[("x-tenant", "t2")], &ping(7)).await.status,
        StatusCode::OK
    );
    assert_eq!(
        post_mcp(addr, &[("x-tenant", "t1")], &ping(8)).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn credential_and_combined_keys() {
    let config = RateLimitConfig::per_second(1.0, 1).with_key(KeySpec::new([
        mcp_ratelimit::KeyPart::Principal,
        mcp_ratelimit::KeyPart::Ip,
    ]));
    let layer = RateLimitLayer::with_clock(config, MockClock::new()).unwrap();
    let v4 = serve(fake_auth(app(layer.clone(), TrustedProxies::none()))).await;
    let v6 = serve_on("[::1]:0", fake_auth(app(layer, TrustedProxies::none()))).await;
    // Same principal from two addresses: two buckets.
    assert_eq!(
        post_mcp(v4, &[("x-user", "a")], &ping(1)).await.status,
        StatusCode::OK
    );
    assert_eq!(
        post_mcp(v6, &[("x-user", "a")], &ping(2)).await.status,
        StatusCode::OK
    );
    assert_eq!(
        post_mcp(v4, &[("x-user", "a")], &ping(3)).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn concurrency_cap_released_on_completion_and_on_drop() {
    let mut config = RateLimitConfig::per_second(1000.0, 1000);
    config.concurrency = Some(1);
    let layer = RateLimitLayer::new(config).unwrap();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let g = gate.clone();
    let mut svc = layer.layer(tower::service_fn(move |_req: Request<Body>| {
        let g = g.clone();
        async move {
            let _permit = g.acquire().await.unwrap();
            Ok::<_, Infallible>(Response::new(Body::from("ok")))
        }
    }));
    let req = || {
        let mut r = Request::new(Body::empty());
        r.extensions_mut()
            .insert(PeerAddr("192.0.2.1:1".parse().unwrap()));
        r
    };
    let first = svc.ready().await.unwrap().call(req());
    let second = svc.ready().await.unwrap().call(req()).await.unwrap();
    assert_eq!(second.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        second.extensions().get::<Denial>().unwrap().reason,
        RejectionReason::ConcurrencyLimited
    );
    assert_eq!(second.headers()["retry-after"], "1");
    // Another client is not affected.
    let mut other = Request::new(Body::empty());
    other
        .extensions_mut()
        .insert(PeerAddr("192.0.2.2:1".parse().unwrap()));
    let other = svc.ready().await.unwrap().call(other);
    gate.add_permits(2);
    assert_eq!(first.await.unwrap().status(), StatusCode::OK);
    assert_eq!(other.await.unwrap().status(), StatusCode::OK);
    // Completed: the slot is free again.
    let third = svc.ready().await.unwrap().call(req());
    // Dropped before completion: the slot is released too.
    drop(third);
    let fourth = svc.ready().await.unwrap().call(req());
    gate.add_permits(1);
    assert_eq!(fourth.await.unwrap().status(), StatusCode::OK);
}

#[tokio::test]
async fn headers_on_allowed_responses_combined_and_legacy() {
    let mut config = RateLimitConfig::per_second(10.0, 20).with_name("ip");
    config.headers.style = HeaderStyle::Combined;
    config.headers.legacy = true;
    config.headers.on_allowed = true;
    let layer = RateLimitLayer::with_clock(config, MockClock::new()).unwrap();
    let addr = serve(app(layer, TrustedProxies::none())).await;
    let r = post_mcp(addr, &[], &ping(1)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("ratelimit-policy"), Some("\"ip\";q=20;w=2"));
    assert_eq!(r.header("ratelimit"), Some("\"ip\";r=19;t=1"));
    assert_eq!(r.header("x-ratelimit-limit"), Some("20"));
    assert_eq!(r.header("x-ratelimit-remaining"), Some("19"));
    assert!(r.header("ratelimit-limit").is_none());

    // Two limiters: the combined form lists both policies.
    let mut inner = RateLimitConfig::per_second(1.0, 5).with_name("principal");
    inner.headers.style = HeaderStyle::Combined;
    inner.headers.on_allowed = true;
    let mut outer = RateLimitConfig::per_second(10.0, 20).with_name("ip");
    outer.headers = inner.headers;
    let router = ok_router()
        .layer(RateLimitLayer::with_clock(inner, MockClock::new()).unwrap())
        .layer(RateLimitLayer::with_clock(outer, MockClock::new()).unwrap())
        .layer(ClientAddrLayer::new(TrustedProxies::none()));
    let addr = serve(router).await;
    let r = post_mcp(addr, &[], &ping(1)).await;
    let policies: Vec<_> = r.headers.get_all("ratelimit-policy").iter().collect();
    assert_eq!(policies.len(), 2);
}

#[tokio::test]
async fn disabled_layer_passes_everything() {
    let mut config = RateLimitConfig::per_second(1.0, 1);
    config.enabled = false;
    config.blacklist = vec!["127.0.0.1".into()];
    let layer = RateLimitLayer::new(config).unwrap();
    let addr = serve(app(layer, TrustedProxies::none())).await;
    for i in 0..3 {
        assert_eq!(post_mcp(addr, &[], &ping(i)).await.status, StatusCode::OK);
    }
}

#[tokio::test]
async fn works_without_parse_layer_and_without_peer() {
    // Outside ParseLayer: no McpRequest, cost 1, id null.
    let layer =
        RateLimitLayer::with_clock(RateLimitConfig::per_second(1.0, 1), MockClock::new()).unwrap();
    let router = Router::new()
        .route("/mcp", post(|| async { "ok" }))
        .layer(layer.clone());
    let addr = serve(router).await;
    assert_eq!(post_mcp(addr, &[], &ping(1)).await.status, StatusCode::OK);
    let r = post_mcp(addr, &[], &ping(2)).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(r.json()["id"].is_null());
    // No peer address at all (not served by axum): the shared bucket, never a 500.
    let svc = layer.layer(tower::service_fn(|_req: Request<Body>| async {
        Ok::<_, Infallible>(Response::new(Body::from("ok")))
    }));
    assert_eq!(
        svc.clone()
            .oneshot(Request::new(Body::empty()))
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        svc.oneshot(Request::new(Body::empty()))
            .await
            .unwrap()
            .status(),
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[test]
fn invalid_configuration_names_the_key() {
    let mut c = RateLimitConfig::default();
    c.blacklist = vec!["malicious.example.com".into()];
    let e = RateLimitLayer::new(c).unwrap_err().to_string();
    assert!(e.contains("blacklist[0]") && e.contains("host name"), "{e}");

    let mut c = RateLimitConfig::default();
    c.client_limits.authenticated = Some(Limit {
        requests_per_second: 0.0,
        burst: None,
    });
    let e = RateLimitLayer::new(c).unwrap_err().to_string();
    assert!(
        e.contains("client_limits.authenticated.requests_per_second"),
        "{e}"
    );

    let mut c = RateLimitConfig::default();
    c.per_tool.insert(
        "x".into(),
        RuleLimit {
            requests_per_second: None,
            burst: Some(2),
            cost: None,
        },
    );
    let e = RateLimitLayer::new(c).unwrap_err().to_string();
    assert!(e.contains("per_tool.x.burst"), "{e}");

    let mut c = RateLimitConfig::default();
    c.burst = Some(0);
    assert!(
        RateLimitLayer::new(c)
            .unwrap_err()
            .to_string()
            .contains("`burst`")
    );

    let mut c = RateLimitConfig::default();
    c.max_keys = 0;
    assert!(
        RateLimitLayer::new(c)
            .unwrap_err()
            .to_string()
            .contains("max_keys")
    );

    let mut c = RateLimitConfig::default();
    c.requests_per_second = f64::NAN;
    assert!(RateLimitLayer::new(c).is_err());

    #[cfg(not(feature = "redis"))]
    {
        let mut c = RateLimitConfig::default();
        c.redis = Some(mcp_ratelimit::RedisConfig::new("redis://:pw@127.0.0.1/"));
        let e = RateLimitLayer::new(c).unwrap_err().to_string();
        assert!(e.contains("redis") && !e.contains("pw"), "{e}");
    }
}

/// The gateway's order: an IP shield before authentication, a principal limit after it.
#[tokio::test]
async fn ip_shield_then_principal_limit_as_in_the_gateway() {
    let shield = RateLimitLayer::with_clock(
        RateLimitConfig::per_second(1.0, 5).with_name("ip"),
        MockClock::new(),
    )
    .unwrap();
    let per_principal = RateLimitLayer::with_clock(
        RateLimitConfig::per_second(1.0, 2)
            .with_name("principal")
            .with_key(KeySpec::principal()),
        MockClock::new(),
    )
    .unwrap();
    let router = fake_auth(ok_router().layer(per_principal).layer(ParseLayer::new()))
        .layer(shield)
        .layer(ClientAddrLayer::new(TrustedProxies::none()));
    let addr = serve(router).await;
    let a = [("x-user", "a")];
    let b = [("x-user", "b")];
    assert_eq!(post_mcp(addr, &a, &ping(1)).await.status, StatusCode::OK);
    assert_eq!(post_mcp(addr, &a, &ping(2)).await.status, StatusCode::OK);
    // a's own quota is spent; b still has its own.
    let r = post_mcp(addr, &a, &ping(3)).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.header("ratelimit-limit"), Some("2"));
    assert_eq!(post_mcp(addr, &b, &ping(4)).await.status, StatusCode::OK);
    assert_eq!(post_mcp(addr, &b, &ping(5)).await.status, StatusCode::OK);
    // Five requests from this address: the shield refuses before authentication, with
    // its own policy (and no id: it runs before the body is parsed).
    let r = post_mcp(addr, &[("x-user", "c")], &ping(6)).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.header("ratelimit-limit"), Some("5"));
    assert!(r.json()["id"].is_null());
}

#[tokio::test]
async fn a_batch_costs_one_unit_per_message_without_rules_too() {
    let layer =
        RateLimitLayer::with_clock(RateLimitConfig::per_second(1.0, 4), MockClock::new()).unwrap();
    let addr = serve(app(layer, TrustedProxies::none())).await;
    let batch = format!("[{},{},{}]", ping(1), ping(2), ping(3));
    assert_eq!(post_mcp(addr, &[], &batch).await.status, StatusCode::OK);
    assert_eq!(post_mcp(addr, &[], &ping(4)).await.status, StatusCode::OK);
    assert_eq!(
        post_mcp(addr, &[], &ping(5)).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
}

/// IPv6 clients are keyed by their /64 (`ipv6_prefix`): the holder of one /64 cannot get
/// a fresh bucket by moving to another of its 2^64 addresses. IPv4 stays per address.
/// Both the straight path (keyed by IP alone) and the general one (lists, combined keys).
#[tokio::test]
async fn ipv6_clients_are_keyed_by_prefix() {
    let status = |svc: mcp_ratelimit::RateLimit<_>, ip: &'static str| async move {
        let peer = SocketAddr::new(ip.parse().unwrap(), 4000);
        let mut req = Request::new(Body::empty());
        req.extensions_mut()
            .insert(mcp_core::ClientAddr::direct(peer));
        req.extensions_mut()
            .insert(Principal::new("alice", AuthMethod::ApiKey));
        let svc: mcp_ratelimit::RateLimit<_> = svc;
        svc.oneshot(req).await.unwrap().status()
    };
    let ok = || {
        tower::service_fn(|_req: Request<Body>| async {
            Ok::<_, Infallible>(Response::new(Body::from("ok")))
        })
    };
    let straight = RateLimitConfig::per_second(1.0, 1);
    let mut with_list = RateLimitConfig::per_second(1.0, 1);
    with_list.blacklist = vec!["203.0.113.0/24".into()];
    let combined = RateLimitConfig::per_second(1.0, 1).with_key(KeySpec::new([
        mcp_ratelimit::KeyPart::Principal,
        mcp_ratelimit::KeyPart::Ip,
    ]));
    for config in [straight, with_list, combined] {
        let layer = RateLimitLayer::with_clock(config.clone(), MockClock::new()).unwrap();
        let svc = layer.layer(ok());
        // Several /128s of one /64: one bucket.
        assert_eq!(status(svc.clone(), "2001:db8:1:2::1").await, StatusCode::OK);
        for other in [
            "2001:db8:1:2::2",
            "2001:db8:1:2:ffff:ffff:ffff:ffff",
            "2001:db8:1:2:1234:5678::",
        ] {
            assert_eq!(
                status(svc.clone(), other).await,
                StatusCode::TOO_MANY_REQUESTS,
                "{other} in the same /64 ({config:?})"
            );
        }
        // The next /64 is another client.
        assert_eq!(status(svc.clone(), "2001:db8:1:3::1").await, StatusCode::OK);
        // IPv4 per address, mapped or not.
        assert_eq!(status(svc.clone(), "198.51.100.1").await, StatusCode::OK);
        assert_eq!(status(svc.clone(), "198.51.100.2").await, StatusCode::OK);
        assert_eq!(
            status(svc.clone(), "::ffff:198.51.100.2").await,
            StatusCode::TOO_MANY_REQUESTS
        );

        // ipv6_prefix: 128 keys every address; 48 groups wider.
        let mut per_address = config.clone();
        per_address.ipv6_prefix = 128;
        let svc = RateLimitLayer::with_clock(per_address, MockClock::new())
            .unwrap()
            .layer(ok());
        assert_eq!(status(svc.clone(), "2001:db8:1:2::1").await, StatusCode::OK);
        assert_eq!(status(svc.clone(), "2001:db8:1:2::2").await, StatusCode::OK);
        let mut wide = config.clone();
        wide.ipv6_prefix = 48;
        let svc = RateLimitLayer::with_clock(wide, MockClock::new())
            .unwrap()
            .layer(ok());
        assert_eq!(status(svc.clone(), "2001:db8:1:2::1").await, StatusCode::OK);
        assert_eq!(
            status(svc.clone(), "2001:db8:1:ffff::1").await,
            StatusCode::TOO_MANY_REQUESTS
        );
    }
}

#[test]
fn ipv6_prefix_is_validated() {
    let mut c = RateLimitConfig::default();
    c.ipv6_prefix = 129;
    let e = RateLimitLayer::new(c).unwrap_err().to_string();
    assert!(e.contains("ipv6_prefix"), "{e}");
    let c: RateLimitConfig = serde_yaml_ng::from_str("ipv6_prefix: 56").unwrap();
    assert_eq!(c.ipv6_prefix, 56);
    assert_eq!(RateLimitConfig::default().ipv6_prefix, 64);
}
