//! MCP sessions belong to the principal that created them: another principal using,
//! streaming from or deleting a session gets 404 (as for an unknown session), the audit
//! trail records why without the session id, and replicas sharing Redis agree.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::routing::any;
use bytes::Bytes;
use common::*;
use http::{HeaderMap, Method, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const LEGACY: &str = "2025-11-25";

fn init_body() -> String {
    json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": LEGACY, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}})
    .to_string()
}

/// `initialize` as the holder of `key`: the session id the upstream issued.
async fn initialize(c: &reqwest::Client, url: &str, key: &str) -> String {
    let r = c
        .post(url)
        .header("x-api-key", key)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(init_body())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.headers()["mcp-session-id"].to_str().unwrap().to_owned()
}

/// A 2025-11-25 `tools/call` of `add` in session `sid`.
fn add_in(c: &reqwest::Client, url: &str, key: &str, sid: &str) -> reqwest::RequestBuilder {
    c.post(url)
        .header("x-api-key", key)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", LEGACY)
        .header("mcp-session-id", sid)
        .body(
            json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                "params": {"name": "add", "arguments": {"a": 2, "b": 40}}})
            .to_string(),
        )
}

fn get_stream(c: &reqwest::Client, url: &str, key: &str, sid: &str) -> reqwest::RequestBuilder {
    c.get(url)
        .header("x-api-key", key)
        .header("accept", "text/event-stream")
        .header("mcp-protocol-version", LEGACY)
        .header("mcp-session-id", sid)
}

fn delete(c: &reqwest::Client, url: &str, key: &str, sid: &str) -> reqwest::RequestBuilder {
    c.delete(url)
        .header("x-api-key", key)
        .header("mcp-protocol-version", LEGACY)
        .header("mcp-session-id", sid)
}

/// A 404 with the JSON-RPC error body of an unknown session.
async fn assert_session_404(r: reqwest::Response, what: &str) {
    assert_refused(r, &[404], what).await;
}

/// A refusal with one of `statuses` and a JSON-RPC error body.
async fn assert_refused(r: reqwest::Response, statuses: &[u16], what: &str) {
    assert!(
        statuses.contains(&r.status().as_u16()),
        "{what}: {} not in {statuses:?}",
        r.status()
    );
    assert_eq!(
        r.headers()["content-type"],
        "application/json",
        "{what}: a JSON-RPC error body"
    );
    let v: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(v["jsonrpc"], "2.0", "{what}");
    assert!(v["error"]["code"].is_i64(), "{what}: {v}");
}

/// The prefix of the session id's SHA-256 that audit rows show instead of the id.
fn sid_hash(sid: &str) -> String {
    format!(
        "sha256:{}",
        &hex::encode(Sha256::digest(sid.as_bytes()))[..16]
    )
}

/// Alice's calls in her own session still work.
async fn assert_alice_session_works(c: &reqwest::Client, url: &str, sid: &str) {
    let r = add_in(c, url, KEY, sid).send().await.unwrap();
    assert_eq!(r.status(), 200, "Alice's session still works");
    assert_eq!(
        last(&r.text().await.unwrap())["result"]["content"][0]["text"],
        "42"
    );
}

#[tokio::test]
async fn another_principal_cannot_call_stream_or_delete_a_session() {
    let dir = tempdir();
    let db = dir.path().join("a.db");
    let (_up, upstream) = start_upstream(dir.path());
    let (gw, base) = start_gateway(
        dir.path(),
        &per_request_audit(&base_config(&upstream, &db, "")),
    );
    let url = format!("{base}/mcp");
    let c = client();
    let sid = initialize(&c, &url, KEY).await;

    // Bob, with his own valid key.
    let r = add_in(&c, &url, KEY2, &sid).send().await.unwrap();
    assert_session_404(r, "Bob's tools/call in Alice's session").await;
    let r = get_stream(&c, &url, KEY2, &sid).send().await.unwrap();
    assert_session_404(r, "Bob's GET stream of Alice's session").await;
    let r = delete(&c, &url, KEY2, &sid).send().await.unwrap();
    assert_session_404(r, "Bob's DELETE of Alice's session").await;
    // A notification too (the upstream would answer 202).
    let r = c
        .post(&url)
        .header("x-api-key", KEY2)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", LEGACY)
        .header("mcp-session-id", &sid)
        .body(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}).to_string())
        .send()
        .await
        .unwrap();
    assert_session_404(r, "Bob's notification in Alice's session").await;

    // Alice's session is intact: call, stream, then her own DELETE ends it.
    assert_alice_session_works(&c, &url, &sid).await;
    let get = get_stream(&c, &url, KEY, &sid).send().await.unwrap();
    assert_eq!(get.status(), 200);
    drop(get);
    let r = delete(&c, &url, KEY, &sid).send().await.unwrap();
    assert_eq!(r.status(), 200, "Alice may end her session");
    let r = add_in(&c, &url, KEY, &sid).send().await.unwrap();
    assert_session_404(r, "the ended session").await;

    // Bob's own session works for Bob and not for Alice.
    let bob_sid = initialize(&c, &url, KEY2).await;
    let r = add_in(&c, &url, KEY2, &bob_sid).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = add_in(&c, &url, KEY, &bob_sid).send().await.unwrap();
    assert_session_404(r, "Alice in Bob's session").await;

    // The audit trail records each refusal and why, never the session id.
    let hash = sid_hash(&sid);
    assert!(
        eventually(|| {
            request_rows(&db)
                .iter()
                .filter(|r| r.reason.as_deref() == Some("session_not_owned"))
                .count()
                >= 6
        })
        .await,
        "{:#?}",
        request_rows(&db)
    );
    let rows = request_rows(&db);
    let refused: Vec<_> = rows
        .iter()
        .filter(|r| r.reason.as_deref() == Some("session_not_owned"))
        .collect();
    let bob_refused: Vec<_> = refused
        .iter()
        .filter(|r| r.user.as_deref() == Some("apikey:bob"))
        .collect();
    assert_eq!(bob_refused.len(), 4, "{refused:#?}");
    for r in &bob_refused {
        assert_eq!(r.status, Some(404));
        assert_eq!(r.outcome.as_deref(), Some("denied"), "{r:#?}");
        assert_eq!(
            r.event["headers"]["mcp-session-id"], hash,
            "rows show the id's hash: {r:#?}"
        );
    }
    for r in &rows {
        let text = r.event.to_string();
        assert!(
            !text.contains(&sid),
            "clear session id in an audit row: {text}"
        );
        assert!(
            !text.contains(&bob_sid),
            "clear session id in an audit row: {text}"
        );
    }
    // Nor in the gateway's log.
    let log = gw.stderr_text();
    assert!(log.contains("session"), "the refusals are logged: {log}");
    assert!(!log.contains(&sid) && !log.contains(&bob_sid), "{log}");
}

/// An upstream that finds sessions by the id trimmed and lowercased (as some do): an id
/// the gateway does not know must not reach it, or a variant of Alice's id would reach
/// her session.
async fn lenient_upstream() -> (String, Arc<Mutex<Vec<(String, String)>>>) {
    let sessions: Arc<Mutex<HashMap<String, ()>>> = Arc::default();
    let seen: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let (s2, seen2) = (sessions.clone(), seen.clone());
    let app = Router::new().route(
        "/mcp",
        any(move |method: Method, headers: HeaderMap, body: Bytes| {
            let (sessions, seen) = (s2.clone(), seen2.clone());
            async move {
                let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let id = v.get("id").cloned().unwrap_or(Value::Null);
                let sid = headers
                    .get("mcp-session-id")
                    .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned());
                seen.lock()
                    .unwrap()
                    .push((method.to_string(), sid.clone().unwrap_or_default()));
                if v["method"] == "initialize" {
                    let new = format!("Sess-{:016x}", rand_u64());
                    sessions.lock().unwrap().insert(new.to_lowercase(), ());
                    let result = json!({"jsonrpc": "2.0", "id": id, "result": {
                        "protocolVersion": LEGACY, "capabilities": {"tools": {}},
                        "serverInfo": {"name": "lenient", "version": "1"}}});
                    return reply(StatusCode::OK, Some(&new), result);
                }
                let known = sid
                    .map(|s| s.trim().to_lowercase())
                    .is_some_and(|s| sessions.lock().unwrap().contains_key(&s));
                if !known {
                    return reply(
                        StatusCode::NOT_FOUND,
                        None,
                        json!({"jsonrpc": "2.0", "id": id,
                            "error": {"code": -32001, "message": "Session not found"}}),
                    );
                }
                reply(
                    StatusCode::OK,
                    None,
                    json!({"jsonrpc": "2.0", "id": id,
                        "result": {"content": [{"type": "text", "text": "42"}]}}),
                )
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (format!("http://{addr}/mcp"), seen)
}

/// A JSON answer of the lenient upstream, marked `x-lenient` (a session id when given).
fn reply(status: StatusCode, sid: Option<&str>, body: Value) -> http::Response<axum::body::Body> {
    let mut b = http::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("x-lenient", "1");
    if let Some(sid) = sid {
        b = b.header("mcp-session-id", sid);
    }
    b.body(axum::body::Body::from(body.to_string())).unwrap()
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id().into());
    h.finish()
}

#[tokio::test]
async fn unknown_and_altered_session_ids_never_reach_the_upstream() {
    let dir = tempdir();
    let db = dir.path().join("a.db");
    let (upstream, seen) = lenient_upstream().await;
    let (_gw, base) = start_gateway(dir.path(), &base_config(&upstream, &db, ""));
    let url = format!("{base}/mcp");
    let c = client();
    let sid = initialize(&c, &url, KEY).await;
    assert_alice_session_works(&c, &url, &sid).await;
    let upstream_saw = seen.lock().unwrap().len();

    // Variants an upstream may read as Alice's id: unknown to the gateway, so 404 for
    // anyone, without reaching the upstream.
    let altered = [
        sid.to_uppercase(),
        sid.to_lowercase(),
        format!("{sid}x"),
        format!("{sid}, {sid}"),
        "00000000000000000000000000000000".to_owned(),
        "not-a-session".to_owned(),
    ];
    // Whitespace around the id, which HTTP itself may trim back to Alice's id: 404 for
    // Bob either way.
    let spaced = [format!(" {sid}"), format!("{sid} "), format!("{sid}\t")];
    let mut cases: Vec<(&str, &String)> = Vec::new();
    for v in &altered {
        cases.push((KEY2, v));
        cases.push((KEY, v));
    }
    for v in &spaced {
        cases.push((KEY2, v));
    }
    for (key, v) in cases {
        // A value with a space or a comma inside is not visible ASCII: the transport
        // checks refuse it (400) before the session binding sees it (404).
        let statuses: &[u16] = if v.trim().contains([' ', ',']) {
            &[400, 404]
        } else {
            &[404]
        };
        let r = add_in(&c, &url, key, v).send().await.unwrap();
        assert!(
            !r.headers().contains_key("x-lenient"),
            "{v:?}: an id the gateway does not know reached the upstream"
        );
        assert_refused(r, statuses, &format!("id {v:?}")).await;
        let r = get_stream(&c, &url, key, v).send().await.unwrap();
        assert_refused(r, statuses, &format!("GET with id {v:?}")).await;
        let r = delete(&c, &url, key, v).send().await.unwrap();
        assert_refused(r, statuses, &format!("DELETE with id {v:?}")).await;
    }
    // Two Mcp-Session-Id headers (Bob's own and Alice's): refused, whichever the
    // upstream would read.
    let bob_sid = initialize(&c, &url, KEY2).await;
    for (first, second) in [(&bob_sid, &sid), (&sid, &bob_sid)] {
        let r = c
            .post(&url)
            .header("x-api-key", KEY2)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", LEGACY)
            .header("mcp-session-id", first.as_str())
            .header("mcp-session-id", second.as_str())
            .body(json!({"jsonrpc": "2.0", "id": 3, "method": "tools/list"}).to_string())
            .send()
            .await
            .unwrap();
        assert!(!r.headers().contains_key("x-lenient"));
        assert!(
            r.status() == 400 || r.status() == 404,
            "two session ids: {}",
            r.status()
        );
    }
    assert_eq!(
        seen.lock().unwrap().len(),
        upstream_saw + 1,
        "only Bob's initialize reached the upstream: {:?}",
        seen.lock().unwrap()
    );
    assert_alice_session_works(&c, &url, &sid).await;
    // Unknown ids are recorded with their own detail.
    assert!(
        eventually(|| request_rows(&db)
            .iter()
            .any(|r| r.reason.as_deref() == Some("session_not_owned")))
        .await
    );
}

/// Gateways on one Redis (the rate limiter's, `ratelimit.redis`).
fn replica_config(upstream: &str, db: &std::path::Path, redis_url: &str) -> String {
    base_config(upstream, db, "").replace(
        "  requests_per_second: 1000\n  burst: 1000\n",
        &format!(
            "  requests_per_second: 1000\n  burst: 1000\n  redis:\n    url: \"{redis_url}\"\n    prefix: \"e2e\"\n    failure_mode: open\n"
        ),
    )
}

#[tokio::test]
async fn a_second_replica_sharing_redis_refuses_bob_too() {
    let redis = mcp_testkit::RedisServer::start();
    let dir = tempdir();
    let (_up, upstream) = start_upstream(dir.path());
    let (_a, base_a) = start_gateway(
        dir.path(),
        &replica_config(&upstream, &dir.path().join("a.db"), &redis.url()),
    );
    let (_b, base_b) = start_gateway(
        dir.path(),
        &replica_config(&upstream, &dir.path().join("b.db"), &redis.url()),
    );
    let (url_a, url_b) = (format!("{base_a}/mcp"), format!("{base_b}/mcp"));
    let c = client();
    let sid = initialize(&c, &url_a, KEY).await;
    // Replica B knows the binding replica A made.
    assert_alice_session_works(&c, &url_b, &sid).await;
    for url in [&url_a, &url_b] {
        let r = add_in(&c, url, KEY2, &sid).send().await.unwrap();
        assert_session_404(r, "Bob's tools/call").await;
        let r = get_stream(&c, url, KEY2, &sid).send().await.unwrap();
        assert_session_404(r, "Bob's GET").await;
        let r = delete(&c, url, KEY2, &sid).send().await.unwrap();
        assert_session_404(r, "Bob's DELETE").await;
    }
    assert_alice_session_works(&c, &url_a, &sid).await;
    // Alice's DELETE on B removes the binding for A too.
    let r = delete(&c, &url_b, KEY, &sid).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = add_in(&c, &url_a, KEY, &sid).send().await.unwrap();
    assert_session_404(r, "the ended session on the other replica").await;

    // Redis keys are hashes, never the id itself (the id is a value of `prefix:ends`
    // only, kept so that any replica can end the session at the upstream).
    let (code, out, _) = {
        let o = std::process::Command::new("redis-cli")
            .args(["-p", &redis.port().to_string(), "--scan"])
            .output();
        match o {
            Ok(o) => (
                o.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&o.stdout).into_owned(),
                (),
            ),
            Err(_) => (-1, String::new(), ()),
        }
    };
    if code == 0 {
        assert!(!out.contains(&sid), "{out}");
    }
}

#[tokio::test]
async fn a_redis_outage_refuses_session_requests_with_503() {
    let mut redis = mcp_testkit::RedisServer::start();
    let dir = tempdir();
    let (_up, upstream) = start_upstream(dir.path());
    let (_gw, base) = start_gateway(
        dir.path(),
        &replica_config(&upstream, &dir.path().join("a.db"), &redis.url()),
    );
    let url = format!("{base}/mcp");
    let c = client();
    let sid = initialize(&c, &url, KEY).await;
    assert_alice_session_works(&c, &url, &sid).await;
    redis.kill();
    // Neither owner nor anyone else: the binding cannot be read.
    for key in [KEY, KEY2] {
        let r = add_in(&c, &url, key, &sid).send().await.unwrap();
        assert_eq!(r.status(), 503, "Redis down");
    }
    // A new session cannot be bound: refused too (the upstream's session is not handed out).
    let r = c
        .post(&url)
        .header("x-api-key", KEY)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(init_body())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(!r.headers().contains_key("mcp-session-id"));
    // Requests without a session (2026-07-28) do not need Redis.
    let r = call_tool(&c, &url, "echo", json!({"message": "m"}))
        .header("x-api-key", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Redis back, empty: the binding is gone, so the id is unknown (404: re-initialize).
    redis.restart();
    let mut status = 0;
    for _ in 0..100 {
        status = add_in(&c, &url, KEY, &sid)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
        if status != 503 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(status, 404);
    let sid = initialize(&c, &url, KEY).await;
    assert_alice_session_works(&c, &url, &sid).await;
}

#[tokio::test]
async fn sessions_configuration_is_checked() {
    let dir = tempdir();
    let base = base_config("http://127.0.0.1:9/mcp", &dir.path().join("a.db"), "");
    assert_check_refuses(
        dir.path(),
        &format!("{base}sessions:\n  maxSessions: 0\n"),
        "maxSessions: 0",
        "sessions.maxSessions",
    );
    assert_check_refuses(
        dir.path(),
        &format!("{base}sessions:\n  idleTimeoutSeconds: 0\n"),
        "idleTimeoutSeconds: 0",
        "sessions.idleTimeoutSeconds",
    );
    assert_check_refuses(
        dir.path(),
        &format!("{base}sessions:\n  maxSesions: 10\n"),
        "maxSesions: 10",
        "sessions",
    );
    // The circuit breakers in front of Redis: the session store's (camelCase, as its
    // section) and the rate limits' (snake_case, as the seed's `ratelimit`).
    assert_check_refuses(
        dir.path(),
        &format!(
            "{base}sessions:\n  redis:\n    url: \"redis://127.0.0.1:9/\"\n    breaker:\n      failureThreshold: 0\n"
        ),
        "failureThreshold: 0",
        "sessions.redis.breaker.failureThreshold",
    );
    assert_check_refuses(
        dir.path(),
        &base.replace(
            "  burst: 1000\n",
            "  burst: 1000\n  redis:\n    url: \"redis://127.0.0.1:9/\"\n    breaker:\n      backoff_initial_ms: 800\n      backoff_max_ms: 400\n",
        ),
        "backoff_max_ms: 400",
        "ratelimit.redis.breaker.backoff_max_ms",
    );
}
