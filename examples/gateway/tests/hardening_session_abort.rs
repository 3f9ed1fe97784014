//! Sessions the gateway could lose track of, and the DELETEs that end sessions.
//!
//! - A client that closes its connection after its `initialize` was forwarded, before
//!   the upstream answered, leaves no session at the upstream: the exchange runs to its
//!   end and the session it issued is ended at once (`reason="client_gone"`).
//! - The gateway's own session-ending DELETEs take no share of the principals' upstream
//!   caps (`maxConnectionsPerPrincipal`), and a slow upstream still gets every one; one
//!   that fails is tried again.
//! - A request in a session whose client goes away before its response ended is
//!   cancelled at the upstream (`notifications/cancelled` in that session); one that
//!   ended is not.
//!
//! Against a counting upstream that answers `initialize` and `DELETE` slowly, over real
//! sockets.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::routing::any;
use bytes::Bytes;
use common::*;
use http::{HeaderMap, Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

const LEGACY: &str = "2025-11-25";

fn init_body(id: u64) -> String {
    json!({"jsonrpc": "2.0", "id": id, "method": "initialize", "params": {
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
        .body(init_body(7))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let sid = r.headers()["mcp-session-id"].to_str().unwrap().to_owned();
    let _ = r.text().await;
    sid
}

/// Alice (tools, metrics), Bob (tools); `upstream_extra` appended to the upstream's
/// entry, `extra` to the file.
fn config(upstream: &str, db: &Path, upstream_extra: &str, extra: &str) -> String {
    format!(
        r#"server:
  addr: "127.0.0.1:0"
auth:
  enabled: true
  mode: apikey
  apiKeys:
    - id: alice
      key: "{KEY}"
      scopes: ["mcp:tools", "metrics:read"]
    - id: bob
      key: "{KEY2}"
      scopes: ["mcp:tools"]
ratelimit:
  enabled: true
  requests_per_second: 1000
  burst: 1000
audit:
  enabled: true
  storage: database
  database:
    type: sqlite
    sqlitePath: "{}"
policy:
  allow:
    - name: tools
      scopes: ["mcp:tools"]
      methods: ["tools/*"]
upstreams:
  - name: up
    path: /mcp
    url: "{upstream}"
{upstream_extra}{extra}"#,
        db.display()
    )
}

/// What the counting upstream saw.
#[derive(Default)]
struct Counted {
    live: HashSet<String>,
    deleted: Vec<String>,
    created: usize,
    /// DELETEs being answered now, and the most at once.
    deleting: usize,
    max_deleting: usize,
    /// Answer the first `DELETE` of each session 503 (counting each attempt).
    fail_first_delete: bool,
    delete_attempts: Vec<String>,
    /// `notifications/cancelled` received: (requestId, reason, session, protocol version).
    cancelled: Vec<(Value, Value, String, String)>,
}

/// An MCP upstream that issues a session on `initialize` after `init_delay`, ends it on
/// `DELETE` after `delete_delay(n)` (n: the DELETE's number), and answers 404 for an
/// unknown session.
async fn slow_upstream(
    init_delay: Duration,
    delete_delay: fn(usize) -> Duration,
) -> (String, Arc<Mutex<Counted>>) {
    let state: Arc<Mutex<Counted>> = Arc::default();
    let s2 = state.clone();
    let app = Router::new().route(
        "/mcp",
        any(move |method: Method, headers: HeaderMap, body: Bytes| {
            let state = s2.clone();
            async move {
                let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let id = v.get("id").cloned().unwrap_or(Value::Null);
                let sid = headers
                    .get("mcp-session-id")
                    .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned());
                if method == Method::POST && v["method"] == "initialize" {
                    tokio::time::sleep(init_delay).await;
                    let mut st = state.lock().unwrap();
                    st.created += 1;
                    let new = format!("sess-{:08}", st.created);
                    st.live.insert(new.clone());
                    let result = json!({"jsonrpc": "2.0", "id": id, "result": {
                        "protocolVersion": LEGACY, "capabilities": {"tools": {}},
                        "serverInfo": {"name": "slow", "version": "1"}}});
                    return reply(StatusCode::OK, Some(&new), result.to_string());
                }
                let known = {
                    let st = state.lock().unwrap();
                    sid.as_ref().is_some_and(|s| st.live.contains(s))
                };
                if !known {
                    return reply(
                        StatusCode::NOT_FOUND,
                        None,
                        json!({"jsonrpc": "2.0", "id": id,
                            "error": {"code": -32001, "message": "Session not found"}})
                        .to_string(),
                    );
                }
                let sid = sid.unwrap_or_default();
                if v["method"] == "notifications/cancelled" {
                    let pv = headers
                        .get("mcp-protocol-version")
                        .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
                        .unwrap_or_default();
                    let p = &v["params"];
                    state.lock().unwrap().cancelled.push((
                        p["requestId"].clone(),
                        p["reason"].clone(),
                        sid,
                        pv,
                    ));
                    return reply(StatusCode::ACCEPTED, None, String::new());
                }
                if v["method"] == "tools/call" && v["params"]["name"] == "silent" {
                    // A long operation that writes nothing until it is done (never).
                    return http::Response::builder()
                        .status(StatusCode::OK)
                        .header("content-type", "text/event-stream")
                        .body(axum::body::Body::from_stream(
                            futures_util::stream::pending::<Result<Bytes, std::io::Error>>(),
                        ))
                        .unwrap();
                }
                if method == Method::DELETE {
                    let mut st = state.lock().unwrap();
                    let first = !st.delete_attempts.contains(&sid);
                    st.delete_attempts.push(sid.clone());
                    if st.fail_first_delete && first {
                        return reply(StatusCode::SERVICE_UNAVAILABLE, None, String::new());
                    }
                    drop(st);
                }
                if method == Method::DELETE {
                    let n = {
                        let mut st = state.lock().unwrap();
                        st.deleting += 1;
                        st.max_deleting = st.max_deleting.max(st.deleting);
                        st.deleted.len() + st.deleting
                    };
                    tokio::time::sleep(delete_delay(n)).await;
                    let mut st = state.lock().unwrap();
                    st.deleting -= 1;
                    st.live.remove(&sid);
                    st.deleted.push(sid);
                    return reply(StatusCode::OK, None, String::new());
                }
                reply(
                    StatusCode::OK,
                    None,
                    json!({"jsonrpc": "2.0", "id": id, "result": {}}).to_string(),
                )
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (format!("http://{addr}/mcp"), state)
}

fn reply(status: StatusCode, sid: Option<&str>, body: String) -> http::Response<axum::body::Body> {
    let mut b = http::Response::builder()
        .status(status)
        .header("content-type", "application/json");
    if let Some(sid) = sid {
        b = b.header("mcp-session-id", sid);
    }
    b.body(axum::body::Body::from(body)).unwrap()
}

/// Polls until `f` is true, up to `secs` seconds (a liveness bound, not a timing
/// assertion).
async fn within(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    for _ in 0..secs * 20 {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    f()
}

/// How a client abandons its `initialize`.
#[derive(Clone, Copy, Debug)]
enum Abort {
    /// Closes the socket once the request is sent.
    Close,
    /// Shuts down its writing half, then closes.
    HalfCloseThenClose,
    /// Sends the request on a kept-alive connection, then drops it.
    KeepAliveDrop,
}

/// Sends Bob's `initialize` over raw HTTP/1.1 to the gateway and abandons it after
/// `after`, before the upstream's answer.
async fn aborted_initialize(addr: &str, how: Abort, after: Duration) {
    let body = init_body(11);
    let conn = match how {
        Abort::KeepAliveDrop => "keep-alive",
        _ => "close",
    };
    let req = format!(
        "POST /mcp HTTP/1.1\r\nHost: {addr}\r\nx-api-key: {KEY2}\r\ncontent-type: application/json\r\n\
         accept: application/json, text/event-stream\r\nconnection: {conn}\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    tokio::time::sleep(after).await;
    if let Abort::HalfCloseThenClose = how {
        let _ = s.shutdown().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(s);
}

#[tokio::test]
async fn initializes_abandoned_before_the_answer_leave_no_session_at_the_upstream() {
    let dir = tempdir();
    let db = dir.path().join("a.db");
    let (upstream, up) = slow_upstream(Duration::from_millis(500), |_| Duration::ZERO).await;
    let (_gw, base) = start_gateway(
        dir.path(),
        &config(
            &upstream,
            &db,
            "",
            "sessions:\n  maxSessionsPerPrincipal: 4\n",
        ),
    );
    let url = format!("{base}/mcp");
    let addr = base.trim_start_matches("http://").to_owned();
    // A session of Alice's, which must survive.
    let c = client();
    let alice = initialize(&c, &url, KEY).await;
    let per_kind = 6;
    let mut tasks = Vec::new();
    for how in [
        Abort::Close,
        Abort::HalfCloseThenClose,
        Abort::KeepAliveDrop,
    ] {
        for i in 0..per_kind {
            let addr = addr.clone();
            // Abandoned 20 to 270 ms after sending: always before the answer (500 ms).
            let after = Duration::from_millis(20 + 50 * i as u64);
            tasks.push(tokio::spawn(aborted_initialize_owned(addr, how, after)));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    let n = 3 * per_kind;
    // Every abandoned initialize reached the upstream and got a session...
    assert!(
        within(30, || up.lock().unwrap().created == n + 1).await,
        "{} sessions created",
        up.lock().unwrap().created
    );
    // ... and each of them is ended at the upstream, Alice's kept.
    let ended = within(30, || {
        let st = up.lock().unwrap();
        st.live.len() == 1 && st.live.contains(&alice)
    })
    .await;
    let st_live = up.lock().unwrap().live.len();
    assert!(
        ended,
        "{st_live} sessions live at the upstream (1 expected)"
    );
    let deleted = up.lock().unwrap().deleted.clone();
    assert_eq!(deleted.len(), n, "one DELETE per abandoned session");
    // Counted.
    let m = metrics_text(&base).await;
    let ok = metric_value(
        &m,
        "mcp_gateway_sessions_ended_total{reason=\"client_gone\",outcome=\"ok\"}",
    );
    assert_eq!(ok, Some(n as f64), "{m}");
    // Bob still opens sessions; Alice's still works.
    let bob = initialize(&c, &url, KEY2).await;
    assert!(up.lock().unwrap().live.contains(&bob));
}

async fn aborted_initialize_owned(addr: String, how: Abort, after: Duration) {
    aborted_initialize(&addr, how, after).await;
}

#[tokio::test]
async fn ending_deletes_take_no_share_of_the_principals_upstream_caps() {
    let dir = tempdir();
    let db = dir.path().join("a.db");
    // Each DELETE is answered after 1 to 3 s.
    let (upstream, up) = slow_upstream(Duration::ZERO, |n| {
        Duration::from_millis(1000 + 1000 * (n % 3) as u64)
    })
    .await;
    let (_gw, base) = start_gateway(
        dir.path(),
        &config(
            &upstream,
            &db,
            "    maxConnectionsPerPrincipal: 3\n",
            "sessions:\n  maxSessionsPerPrincipal: 2\n",
        ),
    );
    let url = format!("{base}/mcp");
    // Two principals churn sessions at once.
    let per = 12;
    let churn = |key: &'static str| {
        let url = url.clone();
        tokio::spawn(async move {
            let c = client();
            let mut out = Vec::new();
            for _ in 0..per {
                out.push(initialize(&c, &url, key).await);
            }
            out
        })
    };
    let (a, b) = (churn(KEY), churn(KEY2));
    let (alice, bob) = (a.await.unwrap(), b.await.unwrap());
    let evicted: HashSet<String> = alice[..per - 2]
        .iter()
        .chain(&bob[..per - 2])
        .cloned()
        .collect();
    // Every evicted session gets its DELETE (within a generous liveness bound).
    let all = within(90, || {
        let st = up.lock().unwrap();
        evicted.iter().all(|s| st.deleted.contains(s))
    })
    .await;
    let max = {
        let st = up.lock().unwrap();
        let got = evicted.iter().filter(|s| st.deleted.contains(*s)).count();
        assert!(
            all,
            "{got} of {} evicted sessions got their DELETE",
            evicted.len()
        );
        // The kept ones were not ended.
        for s in alice[per - 2..].iter().chain(&bob[per - 2..]) {
            assert!(st.live.contains(s), "a kept session was ended");
        }
        // More DELETEs ran at once than one principal's share: they are not charged to it;
        // never more than the ender's bound.
        st.max_deleting
    };
    assert!(max > 3, "at most {max} DELETEs at once");
    assert!(max <= 8, "at most {max} DELETEs at once");
    let m = metrics_text(&base).await;
    let failed = metric_value(
        &m,
        "mcp_gateway_sessions_ended_total{reason=\"principal_cap\",outcome=\"failed\"}",
    );
    assert_eq!(failed, None, "{m}");
    let ok = metric_value(
        &m,
        "mcp_gateway_sessions_ended_total{reason=\"principal_cap\",outcome=\"ok\"}",
    );
    assert_eq!(ok, Some(evicted.len() as f64), "{m}");
}

#[tokio::test]
async fn an_ending_delete_that_fails_is_tried_again() {
    let dir = tempdir();
    let db = dir.path().join("a.db");
    let (upstream, up) = slow_upstream(Duration::ZERO, |_| Duration::ZERO).await;
    up.lock().unwrap().fail_first_delete = true;
    let (_gw, base) = start_gateway(
        dir.path(),
        &config(
            &upstream,
            &db,
            "",
            "sessions:\n  maxSessionsPerPrincipal: 2\n",
        ),
    );
    let url = format!("{base}/mcp");
    let c = client();
    let mut bob = Vec::new();
    for _ in 0..8 {
        bob.push(initialize(&c, &url, KEY2).await);
    }
    let evicted = &bob[..6];
    let all = within(60, || {
        let st = up.lock().unwrap();
        evicted.iter().all(|s| st.deleted.contains(s))
    })
    .await;
    let (deleted, attempts) = {
        let st = up.lock().unwrap();
        (st.deleted.clone(), st.delete_attempts.clone())
    };
    assert!(all, "ended: {deleted:?}");
    for s in evicted {
        assert_eq!(
            attempts.iter().filter(|a| *a == s).count(),
            2,
            "refused once, then ended"
        );
    }
    let m = metrics_text(&base).await;
    let ok = metric_value(
        &m,
        "mcp_gateway_sessions_ended_total{reason=\"principal_cap\",outcome=\"ok\"}",
    );
    assert_eq!(ok, Some(6.0), "{m}");
    let failed = metric_value(
        &m,
        "mcp_gateway_sessions_ended_total{reason=\"principal_cap\",outcome=\"failed\"}",
    );
    assert_eq!(failed, None, "{m}");
}

fn call_in(
    c: &reqwest::Client,
    url: &str,
    sid: &str,
    id: Value,
    tool: &str,
) -> reqwest::RequestBuilder {
    c.post(url)
        .header("x-api-key", KEY)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", LEGACY)
        .header("mcp-session-id", sid)
        .body(
            json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
                "params": {"name": tool, "arguments": {}}})
            .to_string(),
        )
}

#[tokio::test]
async fn abandoned_requests_are_cancelled_at_the_upstream() {
    let dir = tempdir();
    let db = dir.path().join("a.db");
    let (upstream, up) = slow_upstream(Duration::ZERO, |_| Duration::ZERO).await;
    let (_gw, base) = start_gateway(dir.path(), &config(&upstream, &db, "", ""));
    let url = format!("{base}/mcp");
    let c = client();
    let sid = initialize(&c, &url, KEY).await;
    // Silent long calls, abandoned once their response started: numeric and string ids,
    // from one pooled client and from another.
    let other = client();
    let ids = [
        json!(101),
        json!(102),
        json!("s-1"),
        json!("s-2"),
        json!(103.5),
        json!(104),
    ];
    for (i, id) in ids.iter().enumerate() {
        let client = if i % 2 == 0 { &c } else { &other };
        let r = call_in(client, &url, &sid, id.clone(), "silent")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        drop(r);
    }
    // A call that ends is not cancelled.
    let r = call_in(&c, &url, &sid, json!(900), "quick")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let _ = r.text().await.unwrap();
    let all = within(30, || up.lock().unwrap().cancelled.len() >= ids.len()).await;
    let got = up.lock().unwrap().cancelled.clone();
    assert!(all, "cancelled received: {got:?}");
    for id in &ids {
        let n = got.iter().filter(|(r, ..)| r == id).count();
        assert_eq!(n, 1, "{id}: {got:?}");
    }
    for (_, reason, s, pv) in &got {
        assert_eq!(reason, "client disconnected");
        assert_eq!(s, &sid, "in the request's session");
        assert_eq!(pv, LEGACY);
    }
    assert!(!got.iter().any(|(r, ..)| r == &json!(900)), "{got:?}");
    let m = metrics_text(&base).await;
    let sent = metric_value(
        &m,
        "mcp_gateway_upstream_cancelled_total{upstream=\"up\",outcome=\"sent\"}",
    );
    assert_eq!(sent, Some(ids.len() as f64), "{m}");
}
