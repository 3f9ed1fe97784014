//! The smaller MCP-level holes, over real sockets, against the demo upstream and the
//! reference MCP server (`@modelcontextprotocol/server-everything` from the npm registry):
//! a client-chosen request id believed from any peer, `MCP-Protocol-Version` switched or
//! dropped inside a session, made-up `Last-Event-ID` values, unbounded
//! `resources/subscribe` entries per session, and non-ASCII `Mcp-Name` values.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use common::everything::start_everything;
use common::*;
use serde_json::{Value, json};

/// The base configuration with one audit row per refused request (these tests count
/// the rows of refusals; the default aggregates a refused client's refusals).
fn base_config(upstream: &str, audit_db: &std::path::Path, extra: &str) -> String {
    per_request_audit(&common::base_config(upstream, audit_db, extra))
}

fn start_default(dir: &std::path::Path) -> (Proc, Proc, String) {
    let (up, upstream) = start_upstream(dir);
    let (gw, base) = start_gateway(dir, &base_config(&upstream, &dir.join("a.db"), ""));
    (up, gw, base)
}

const ACCEPT_BOTH: &str = "application/json, text/event-stream";

fn init_body(version: &str) -> String {
    json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": version, "capabilities": {},
        "clientInfo": {"name": "hardening", "version": "1"}}})
    .to_string()
}

/// `initialize` asking for `version`, as the holder of `key`: (session id, the version
/// the upstream answered).
async fn initialize(c: &reqwest::Client, url: &str, key: &str, version: &str) -> (String, String) {
    let r = c
        .post(url)
        .header("x-api-key", key)
        .header("content-type", "application/json")
        .header("accept", ACCEPT_BOTH)
        .body(init_body(version))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let sid = r.headers()["mcp-session-id"].to_str().unwrap().to_owned();
    let v = last(&r.text().await.unwrap())["result"]["protocolVersion"]
        .as_str()
        .unwrap()
        .to_owned();
    (sid, v)
}

/// A POST of `body` in session `sid`, with `MCP-Protocol-Version: version` when given.
fn post_in(
    c: &reqwest::Client,
    url: &str,
    sid: &str,
    version: Option<&str>,
    body: Value,
) -> reqwest::RequestBuilder {
    let mut b = c
        .post(url)
        .header("x-api-key", KEY)
        .header("content-type", "application/json")
        .header("accept", ACCEPT_BOTH)
        .header("mcp-session-id", sid)
        .body(body.to_string());
    if let Some(v) = version {
        b = b.header("mcp-protocol-version", v);
    }
    b
}

fn tools_list(id: i64) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/list", "params": {}})
}

fn get_in(
    c: &reqwest::Client,
    url: &str,
    sid: &str,
    version: Option<&str>,
) -> reqwest::RequestBuilder {
    let mut b = c
        .get(url)
        .header("x-api-key", KEY)
        .header("accept", "text/event-stream")
        .header("mcp-session-id", sid);
    if let Some(v) = version {
        b = b.header("mcp-protocol-version", v);
    }
    b
}

fn delete_in(
    c: &reqwest::Client,
    url: &str,
    sid: &str,
    version: Option<&str>,
) -> reqwest::RequestBuilder {
    let mut b = c
        .delete(url)
        .header("x-api-key", KEY)
        .header("mcp-session-id", sid);
    if let Some(v) = version {
        b = b.header("mcp-protocol-version", v);
    }
    b
}

/// A refusal: `status`, a JSON-RPC error body echoing `id` (when given).
async fn assert_refused(r: reqwest::Response, status: u16, id: Option<i64>, what: &str) -> Value {
    assert_eq!(r.status().as_u16(), status, "{what}");
    assert_eq!(r.headers()["content-type"], "application/json", "{what}");
    let v: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(v["jsonrpc"], "2.0", "{what}");
    assert!(v["error"]["code"].is_i64(), "{what}: {v}");
    if let Some(id) = id {
        assert_eq!(v["id"], id, "{what}: the id echoed");
    }
    v
}

/// Rows of refusals with `reason`.
fn rows_with_reason(db: &std::path::Path, reason: &str) -> usize {
    request_rows(db)
        .iter()
        .filter(|r| r.reason.as_deref() == Some(reason))
        .count()
}

// ---------------------------------------------------------------------------------------
// audit.trustRequestId: only from trusted proxies.

#[tokio::test]
async fn a_client_request_id_is_believed_only_from_a_trusted_proxy() {
    let dir = tempdir();
    let db = dir.path().join("a.db");
    let (_up, upstream) = start_upstream(dir.path());
    let trusting = base_config(&upstream, &db, "").replace(
        "audit:\n  enabled: true\n",
        "audit:\n  enabled: true\n  trustRequestId: true\n",
    );
    assert!(trusting.contains("trustRequestId"));
    let c = client();

    // No trusted proxies: every peer is a client; its id is replaced.
    let (gw, base) = start_gateway(dir.path(), &trusting);
    let url = format!("{base}/mcp");
    // Bob's request gets an id; Alice tries to pass hers off as his.
    let r = call_tool(&c, &url, "echo", json!({"message": "bob"}))
        .header("x-api-key", KEY2)
        .send()
        .await
        .unwrap();
    let bobs = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    for forged in [
        bobs.as_str(),
        "forged-request-id-1",
        "0190a3c2-7b1e-7cc0-8f2e-3a1b2c3d4e5f",
    ] {
        for xff in [None, Some("10.0.0.1")] {
            let mut b = call_tool(&c, &url, "echo", json!({"message": "alice"}))
                .header("x-api-key", KEY)
                .header("x-request-id", forged);
            if let Some(x) = xff {
                b = b.header("x-forwarded-for", x);
            }
            let r = b.send().await.unwrap();
            assert_eq!(r.status(), 200);
            assert_ne!(
                r.headers()["x-request-id"],
                forged,
                "{forged} believed from a client"
            );
        }
    }
    drop(gw);

    // A trusted proxy elsewhere (10.0.0.0/8): the test client (127.0.0.1) is still a client.
    let db2 = dir.path().join("b.db");
    let cfg = with_server_keys(
        &base_config(&upstream, &db2, "").replace(
            "audit:\n  enabled: true\n",
            "audit:\n  enabled: true\n  trustRequestId: true\n",
        ),
        "  trustedProxies: [\"10.0.0.0/8\"]\n",
    );
    let (gw, base) = start_gateway(dir.path(), &cfg);
    let r = call_tool(&c, &format!("{base}/mcp"), "echo", json!({"message": "x"}))
        .header("x-api-key", KEY)
        .header("x-request-id", "forged-request-id-2")
        .header("x-forwarded-for", "10.0.0.7")
        .send()
        .await
        .unwrap();
    assert_ne!(r.headers()["x-request-id"], "forged-request-id-2");
    drop(gw);

    // The peer is a trusted proxy (loopback): its id is kept, in the response and the trail.
    let db3 = dir.path().join("c.db");
    let cfg = with_server_keys(
        &base_config(&upstream, &db3, "").replace(
            "audit:\n  enabled: true\n",
            "audit:\n  enabled: true\n  trustRequestId: true\n",
        ),
        "  trustedProxies: [\"127.0.0.0/8\"]\n",
    );
    let (_gw, base) = start_gateway(dir.path(), &cfg);
    let r = call_tool(&c, &format!("{base}/mcp"), "echo", json!({"message": "x"}))
        .header("x-api-key", KEY)
        .header("x-request-id", "proxy-set-id-3")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "proxy-set-id-3");
    assert!(
        eventually(|| request_rows(&db3)
            .iter()
            .any(|r| r.event["request_id"] == "proxy-set-id-3"))
        .await
    );
    let ids: Vec<String> = request_rows(&db)
        .iter()
        .filter_map(|r| r.event["request_id"].as_str().map(str::to_owned))
        .collect();
    assert!(!ids.iter().any(|i| i.starts_with("forged-")), "{ids:?}");
    assert_eq!(ids.iter().filter(|i| **i == bobs).count(), 1, "{ids:?}");
}

// ---------------------------------------------------------------------------------------
// MCP-Protocol-Version: the version negotiated for the session.

/// `pin_protocol_version: exact` (the default is `at_most`).
const EXACT: &str = "sanitization:\n  sessions:\n    pin_protocol_version: exact\n";

#[tokio::test]
async fn protocol_version_is_the_one_negotiated_for_the_session() {
    let dir = tempdir();
    let db = dir.path().join("a.db");
    let (_up, upstream) = start_upstream(dir.path());
    let (_gw, base) = start_gateway(dir.path(), &base_config(&upstream, &db, EXACT));
    let url = format!("{base}/mcp");
    let c = client();
    let (sid, v) = initialize(&c, &url, KEY, "2025-11-25").await;
    assert_eq!(v, "2025-11-25");

    let r = post_in(&c, &url, &sid, Some("2025-11-25"), tools_list(2))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Another supported version, an older one, the stateless revision, and none.
    for (i, other) in [
        Some("2025-06-18"),
        Some("2024-11-05"),
        Some("2025-03-26"),
        Some("2026-07-28"),
        None,
    ]
    .into_iter()
    .enumerate()
    {
        let id = 10 + i as i64;
        let r = post_in(&c, &url, &sid, other, tools_list(id))
            .send()
            .await
            .unwrap();
        assert_refused(
            r,
            400,
            Some(id),
            &format!("POST with {other:?} in a 2025-11-25 session"),
        )
        .await;
    }
    // A notification, a GET stream and a DELETE too.
    let r = post_in(
        &c,
        &url,
        &sid,
        Some("2025-06-18"),
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
    )
    .send()
    .await
    .unwrap();
    assert_refused(r, 400, None, "notification with another version").await;
    for v in [Some("2025-03-26"), None] {
        let r = get_in(&c, &url, &sid, v).send().await.unwrap();
        assert_refused(r, 400, None, &format!("GET with {v:?}")).await;
        let r = delete_in(&c, &url, &sid, v).send().await.unwrap();
        assert_refused(r, 400, None, &format!("DELETE with {v:?}")).await;
    }
    // The session still works with its version, and ends with it.
    let r = post_in(&c, &url, &sid, Some("2025-11-25"), tools_list(3))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = delete_in(&c, &url, &sid, Some("2025-11-25"))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());

    // A 2025-03-26 session: the header may be absent (that revision had none), but not
    // another version.
    let (old, v) = initialize(&c, &url, KEY, "2025-03-26").await;
    assert_eq!(v, "2025-03-26");
    let r = post_in(&c, &url, &old, None, tools_list(4))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = post_in(&c, &url, &old, Some("2025-03-26"), tools_list(5))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = post_in(&c, &url, &old, Some("2025-11-25"), tools_list(6))
        .send()
        .await
        .unwrap();
    assert_refused(r, 400, Some(6), "2025-11-25 in a 2025-03-26 session").await;

    assert!(eventually(|| rows_with_reason(&db, "unsupported_protocol_version") >= 11).await);
}

#[tokio::test]
async fn a_2026_request_carries_the_version_of_its_body_in_the_header() {
    let dir = tempdir();
    // An upstream that answers everything: the gateway alone must refuse.
    let (upstream, seen) = recording_upstream().await;
    let (_gw, base) = start_gateway(
        dir.path(),
        &base_config(&upstream, &dir.path().join("a.db"), ""),
    );
    let url = format!("{base}/mcp");
    let c = client();
    let body = |id: i64| {
        json!({"jsonrpc": "2.0", "id": id, "method": "tools/list", "params": {"_meta": modern_meta()}})
            .to_string()
    };
    let send = |version: Option<&'static str>, id: i64| {
        let mut b = c
            .post(&url)
            .header("x-api-key", KEY)
            .header("content-type", "application/json")
            .header("accept", ACCEPT_BOTH)
            .header("mcp-method", "tools/list")
            .body(body(id));
        if let Some(v) = version {
            b = b.header("mcp-protocol-version", v);
        }
        b.send()
    };
    assert_eq!(send(Some("2026-07-28"), 1).await.unwrap().status(), 200);
    for (i, v) in [
        None,
        Some("2025-11-25"),
        Some("2025-03-26"),
        Some("2025-06-18"),
    ]
    .into_iter()
    .enumerate()
    {
        let id = 2 + i as i64;
        let r = send(v, id).await.unwrap();
        assert_refused(
            r,
            400,
            Some(id),
            &format!("_meta 2026-07-28 with header {v:?}"),
        )
        .await;
    }
    assert_eq!(
        seen.lock().unwrap().len(),
        1,
        "only the agreeing request reached the upstream"
    );
}

#[tokio::test]
async fn protocol_version_pinned_in_server_everything_sessions() {
    let dir = tempdir();
    let db = dir.path().join("a.db");
    let (_ev, upstream) = start_everything(dir.path());
    let (_gw, base) = start_gateway(dir.path(), &base_config(&upstream, &db, EXACT));
    let url = format!("{base}/mcp");
    let c = client();
    // Asks for the stateless revision; the reference server answers with its latest
    // (over SSE): the session's version is the answer's, not the request's.
    let (sid, v) = initialize(&c, &url, KEY, "2026-07-28").await;
    assert_ne!(v, "2026-07-28");
    let r = post_in(
        &c,
        &url,
        &sid,
        Some(&v),
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 202);
    let r = post_in(&c, &url, &sid, Some(&v), tools_list(2))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(last(&r.text().await.unwrap())["result"]["tools"].is_array());
    for (i, other) in [
        Some("2026-07-28"),
        Some("2025-06-18"),
        Some("2025-03-26"),
        None,
    ]
    .into_iter()
    .enumerate()
    {
        let id = 10 + i as i64;
        let r = post_in(&c, &url, &sid, other, tools_list(id))
            .send()
            .await
            .unwrap();
        assert_refused(r, 400, Some(id), &format!("{other:?} in a {v} session")).await;
    }
    let r = get_in(&c, &url, &sid, Some("2025-06-18"))
        .send()
        .await
        .unwrap();
    assert_refused(r, 400, None, "GET with another version").await;
    let r = delete_in(&c, &url, &sid, None).send().await.unwrap();
    assert_refused(r, 400, None, "DELETE without the version").await;
    let r = delete_in(&c, &url, &sid, Some(&v)).send().await.unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    assert!(eventually(|| rows_with_reason(&db, "unsupported_protocol_version") >= 6).await);
}

// ---------------------------------------------------------------------------------------
// Last-Event-ID: bounded length and charset.

fn bad_event_ids() -> Vec<String> {
    vec![
        "1".repeat(8000),
        "a".repeat(257),
        "abc def".into(),
        "<script>alert(1)</script>".into(),
        "id;rm -rf".into(),
        "\"quoted\"".into(),
        "a,b".into(),
        "%0d%0a".into(),
    ]
}

#[tokio::test]
async fn last_event_id_is_bounded_in_length_and_charset() {
    let dir = tempdir();
    let db = dir.path().join("a.db");
    let (_up, _gw, base) = start_default(dir.path());
    let url = format!("{base}/mcp");
    let c = client();
    let (sid, v) = initialize(&c, &url, KEY, "2025-11-25").await;
    for bad in bad_event_ids() {
        let r = get_in(&c, &url, &sid, Some(&v))
            .header("last-event-id", &bad)
            .send()
            .await
            .unwrap();
        assert_refused(
            r,
            400,
            None,
            &format!("Last-Event-ID of {} bytes", bad.len()),
        )
        .await;
    }
    // Non-ASCII bytes (not a str for reqwest): refused too.
    let r = get_in(&c, &url, &sid, Some(&v))
        .header(
            "last-event-id",
            reqwest::header::HeaderValue::from_bytes("é1".as_bytes()).unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_refused(r, 400, None, "non-ASCII Last-Event-ID").await;
    // Ids as servers make them pass (a UUID, a counter, `stream/number`, 256 bytes) and
    // reach the upstream, which knows none of these streams (its own 404 answers).
    let long = format!("{}_1", "7".repeat(254));
    for good in [
        "0190a3c2-7b1e-7cc0-8f2e-3a1b2c3d4e5f_0",
        "s_42",
        "stream-1/17_2",
        long.as_str(),
    ] {
        let (sid, v) = initialize(&c, &url, KEY, "2025-11-25").await;
        let r = get_in(&c, &url, &sid, Some(&v))
            .header("last-event-id", good)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "Last-Event-ID {good}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(
            body["error"]["message"], "Unknown Last-Event-ID",
            "{good}: the upstream's answer"
        );
    }
    let refused = || {
        request_rows(&db)
            .iter()
            .filter(|r| {
                r.status == Some(400)
                    && (r.event["detail"] == "rule=last_event_id"
                        || r.event["detail"] == "rule=mcp_header header=last-event-id")
            })
            .count()
    };
    // Audited with the rule: the charset and length rule, or (spaces, non-ASCII) the
    // visible-ASCII rule of every MCP header.
    assert!(
        eventually(|| refused() >= 9).await,
        "{} rows: {:?}",
        refused(),
        request_rows(&db)
            .iter()
            .filter(|r| r.status == Some(400))
            .map(|r| r.event.to_string())
            .collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn server_everything_never_sees_a_made_up_last_event_id() {
    let dir = tempdir();
    let db = dir.path().join("a.db");
    let (ev, upstream) = start_everything(dir.path());
    let (_gw, base) = start_gateway(dir.path(), &base_config(&upstream, &db, ""));
    let url = format!("{base}/mcp");
    let c = client();
    let (sid, v) = initialize(&c, &url, KEY, "2025-11-25").await;
    for bad in bad_event_ids() {
        let r = get_in(&c, &url, &sid, Some(&v))
            .header("last-event-id", &bad)
            .send()
            .await
            .unwrap();
        assert_refused(
            r,
            400,
            None,
            &format!("Last-Event-ID of {} bytes", bad.len()),
        )
        .await;
    }
    // A well-formed id reaches it (its log line names it).
    let r = get_in(&c, &url, &sid, Some(&v))
        .header("last-event-id", "0190a3c2-7b1e-7cc0-8f2e-3a1b2c3d4e5f")
        .send()
        .await
        .unwrap();
    assert_ne!(r.status(), 400);
    drop(r);
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        match ev.lines.recv_timeout(std::time::Duration::from_millis(200)) {
            Ok(l) if l.contains("Last-Event-ID") => {
                seen.push(l.clone());
                if l.contains("0190a3c2") {
                    break;
                }
            }
            _ => {}
        }
    }
    assert_eq!(
        seen.len(),
        1,
        "only the well-formed id reached the upstream: {seen:?}"
    );
}

// ---------------------------------------------------------------------------------------
// resources/subscribe entries per session.

fn subscribe(id: i64, method: &str, uri: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": {"uri": uri}})
}

#[tokio::test]
async fn resources_subscribe_entries_per_session_are_capped() {
    let dir = tempdir();
    let db = dir.path().join("a.db");
    let (_up, upstream) = start_upstream(dir.path());
    let cfg = base_config(
        &upstream,
        &db,
        "sanitization:\n  sessions:\n    max_subscriptions: 3\n",
    );
    let (_gw, base) = start_gateway(dir.path(), &cfg);
    let url = format!("{base}/mcp");
    let c = client();
    let (sid, v) = initialize(&c, &url, KEY, "2025-11-25").await;
    let send = |body: Value| post_in(&c, &url, &sid, Some(&v), body).send();
    for i in 0..3 {
        let r = send(subscribe(
            i,
            "resources/subscribe",
            &format!("demo://greeting/u{i}"),
        ))
        .await
        .unwrap();
        assert_eq!(r.status(), 200, "subscription {i}");
    }
    let r = send(subscribe(7, "resources/subscribe", "demo://greeting/u3"))
        .await
        .unwrap();
    let e = assert_refused(r, 429, Some(7), "the fourth subscription").await;
    assert_eq!(e["error"]["code"], -32029);
    // The same URI again takes no more room.
    let r = send(subscribe(8, "resources/subscribe", "demo://greeting/u0"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Unsubscribing URIs never subscribed frees nothing.
    for i in 0..5 {
        let r = send(subscribe(
            20 + i,
            "resources/unsubscribe",
            &format!("demo://made-up/{i}"),
        ))
        .await
        .unwrap();
        assert_eq!(r.status(), 200);
    }
    let r = send(subscribe(9, "resources/subscribe", "demo://greeting/u3"))
        .await
        .unwrap();
    assert_refused(r, 429, Some(9), "still full").await;
    // Unsubscribing a real one does.
    let r = send(subscribe(10, "resources/unsubscribe", "demo://greeting/u1"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = send(subscribe(11, "resources/subscribe", "demo://greeting/u3"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Another session of the same principal has its own room.
    let (sid2, _) = initialize(&c, &url, KEY, "2025-11-25").await;
    let r = post_in(
        &c,
        &url,
        &sid2,
        Some(&v),
        subscribe(12, "resources/subscribe", "demo://greeting/x"),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    assert!(eventually(|| rows_with_reason(&db, "concurrency_limited") >= 2).await);
}

#[tokio::test]
async fn server_everything_holds_at_most_the_default_cap_of_subscriptions_per_session() {
    let dir = tempdir();
    let db = dir.path().join("a.db");
    let (_ev, upstream) = start_everything(dir.path());
    let (_gw, base) = start_gateway(dir.path(), &base_config(&upstream, &db, ""));
    let url = format!("{base}/mcp");
    let c = client();
    let (sid, v) = initialize(&c, &url, KEY, "2025-11-25").await;
    let mut ok = 0;
    let mut refused = 0;
    for i in 0..300i64 {
        let r = post_in(
            &c,
            &url,
            &sid,
            Some(&v),
            subscribe(
                i,
                "resources/subscribe",
                &format!("demo://resource/static/document/{i}"),
            ),
        )
        .send()
        .await
        .unwrap();
        match r.status().as_u16() {
            200 => {
                let _ = r.text().await;
                ok += 1;
            }
            429 => {
                assert_refused(r, 429, Some(i), "past the cap").await;
                refused += 1;
            }
            s => panic!("status {s}"),
        }
    }
    assert_eq!((ok, refused), (256, 44));
    assert!(eventually(|| rows_with_reason(&db, "concurrency_limited") >= 44).await);
}

// ---------------------------------------------------------------------------------------
// Mcp-Name: the `=?base64?...?=` form reaches non-ASCII names; raw non-ASCII is refused.

#[tokio::test]
async fn non_ascii_names_travel_base64_encoded_and_never_raw() {
    let dir = tempdir();
    let (_up, _gw, base) = start_default(dir.path());
    let url = format!("{base}/mcp");
    let c = client();
    let uri = "demo://greeting/José";
    // "demo://greeting/José" in standard Base64.
    let encoded = "=?base64?ZGVtbzovL2dyZWV0aW5nL0pvc8Op?=";
    let r = modern(&c, &url, "resources/read", None, json!({"uri": uri}))
        .header("x-api-key", KEY)
        .header("mcp-name", encoded)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        last(&r.text().await.unwrap())["result"]["contents"][0]["text"],
        "Hello, José!"
    );
    // The encoded form of another name disagrees with the body.
    let r = modern(&c, &url, "resources/read", None, json!({"uri": uri}))
        .header("x-api-key", KEY)
        .header("mcp-name", "=?base64?ZGVtbzovL2dyZWV0aW5nL0pvc2U=?=")
        .send()
        .await
        .unwrap();
    assert_refused(r, 400, Some(1), "encoded name of another resource").await;
    // Raw UTF-8 and Latin-1 bytes, and a form that does not decode: refused, never forwarded.
    for raw in [
        uri.as_bytes().to_vec(),
        b"demo://greeting/Jos\xe9".to_vec(),
        b"=?base64?!!!?=".to_vec(),
    ] {
        let r = modern(&c, &url, "resources/read", None, json!({"uri": uri}))
            .header("x-api-key", KEY)
            .header(
                "mcp-name",
                reqwest::header::HeaderValue::from_bytes(&raw).unwrap(),
            )
            .send()
            .await
            .unwrap();
        assert_refused(r, 400, None, &format!("Mcp-Name {raw:?}")).await;
    }
}

#[tokio::test]
async fn by_default_older_revisions_are_admitted_never_newer_ones() {
    let dir = tempdir();
    let db = dir.path().join("a.db");
    let (_up, upstream) = start_upstream(dir.path());
    // The default is at_most (the transport says a client SHOULD send the negotiated
    // version; the official conformance suite sends an older one in SSE scenarios).
    let cfg = base_config(&upstream, &db, "");
    let (_gw, base) = start_gateway(dir.path(), &cfg);
    let url = format!("{base}/mcp");
    let c = client();
    let (sid, _) = initialize(&c, &url, KEY, "2025-06-18").await;
    for older in ["2025-06-18", "2025-03-26"] {
        let r = post_in(&c, &url, &sid, Some(older), tools_list(2))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{older} in a 2025-06-18 session");
    }
    for (i, newer) in [Some("2025-11-25"), Some("2026-07-28"), None]
        .into_iter()
        .enumerate()
    {
        let id = 10 + i as i64;
        let r = post_in(&c, &url, &sid, newer, tools_list(id))
            .send()
            .await
            .unwrap();
        assert_refused(
            r,
            400,
            Some(id),
            &format!("{newer:?} in a 2025-06-18 session"),
        )
        .await;
    }
}
