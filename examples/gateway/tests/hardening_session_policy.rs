//! Who may hold an MCP session, and how many it holds at the upstream.
//!
//! - A principal the policy lets call nothing (no allow rule matches any method other
//!   than the lifecycle ones) is refused `initialize` (403, JSON-RPC error, audited), and
//!   GET streams and DELETEs (policy.sessions).
//! - A session the gateway evicts (per-principal cap, global cap) or expires (idle) is
//!   ended at the upstream with a DELETE: one flooding principal holds at most its cap of
//!   sessions at the upstream, and another principal's `initialize` still succeeds.
//! - Replicas sharing Redis end each evicted or expired session once.
//!
//! Against a counting test upstream, the demo upstream and the reference server
//! (`@modelcontextprotocol/server-everything`, when installed under .tools).
//!
//! Figure (recorded in BENCHMARKS.md; `FLOOD_SESSIONS=N` sets the flood's size, default
//! 200): a principal opening N sessions with `maxSessionsPerPrincipal: 5` holds at most 5
//! at the upstream once the ending DELETEs have run, and never more than the cap plus the
//! DELETEs in flight and queued (the test allows 64).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::routing::any;
use bytes::Bytes;
use common::*;
use http::{HeaderMap, Method, StatusCode};
use serde_json::{Value, json};

const LEGACY: &str = "2025-11-25";
/// A key whose principal holds no scope.
const KEY3: &str = "Qwe456!@#Rty654!@#Third";

fn init_body(id: u64) -> String {
    json!({"jsonrpc": "2.0", "id": id, "method": "initialize", "params": {
        "protocolVersion": LEGACY, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}})
    .to_string()
}

fn init(c: &reqwest::Client, url: &str, key: &str) -> reqwest::RequestBuilder {
    c.post(url)
        .header("x-api-key", key)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(init_body(7))
}

/// `initialize` as the holder of `key`: the session id the upstream issued.
async fn initialize(c: &reqwest::Client, url: &str, key: &str) -> String {
    let r = init(c, url, key).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let sid = r.headers()["mcp-session-id"].to_str().unwrap().to_owned();
    let _ = r.text().await;
    sid
}

fn ping_in(c: &reqwest::Client, url: &str, key: &str, sid: &str) -> reqwest::RequestBuilder {
    c.post(url)
        .header("x-api-key", key)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", LEGACY)
        .header("mcp-session-id", sid)
        .body(json!({"jsonrpc": "2.0", "id": 3, "method": "ping"}).to_string())
}

fn get_stream(
    c: &reqwest::Client,
    url: &str,
    key: &str,
    sid: Option<&str>,
) -> reqwest::RequestBuilder {
    let mut b = c
        .get(url)
        .header("x-api-key", key)
        .header("accept", "text/event-stream")
        .header("mcp-protocol-version", LEGACY);
    if let Some(sid) = sid {
        b = b.header("mcp-session-id", sid);
    }
    b
}

fn delete(c: &reqwest::Client, url: &str, key: &str, sid: Option<&str>) -> reqwest::RequestBuilder {
    let mut b = c
        .delete(url)
        .header("x-api-key", key)
        .header("mcp-protocol-version", LEGACY);
    if let Some(sid) = sid {
        b = b.header("mcp-session-id", sid);
    }
    b
}

/// A refusal with one of `statuses` and a JSON-RPC error body; the body.
async fn assert_refused(r: reqwest::Response, statuses: &[u16], what: &str) -> Value {
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
    v
}

/// Alice (tools, metrics), Bob (tools), Carol (no scope); a policy that lets the holders
/// of `mcp:tools` call tools, and nothing else; `extra` appended (top-level sections).
fn config(upstream: &str, db: &Path, policy_extra: &str, extra: &str) -> String {
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
    - id: carol
      key: "{KEY3}"
      scopes: []
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
{policy_extra}upstreams:
  - name: up
    path: /mcp
    url: "{upstream}"
{extra}"#,
        db.display()
    )
}

/// What the counting upstream saw: live sessions, and each DELETE's session id.
#[derive(Default)]
struct Counted {
    live: HashSet<String>,
    deleted: Vec<String>,
    created: usize,
    max_live: usize,
}

/// An MCP upstream that issues a session on `initialize`, ends it on `DELETE` and
/// answers 404 for an unknown session; it counts what it holds.
async fn counting_upstream() -> (String, Arc<Mutex<Counted>>) {
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
                let mut st = state.lock().unwrap();
                if method == Method::POST && v["method"] == "initialize" {
                    st.created += 1;
                    let new = format!("sess-{:08}-{:016x}", st.created, rand_u64());
                    st.live.insert(new.clone());
                    st.max_live = st.max_live.max(st.live.len());
                    let result = json!({"jsonrpc": "2.0", "id": id, "result": {
                        "protocolVersion": LEGACY, "capabilities": {"tools": {}},
                        "serverInfo": {"name": "counting", "version": "1"}}});
                    return reply(StatusCode::OK, Some(&new), result.to_string());
                }
                let known = sid.as_ref().is_some_and(|s| st.live.contains(s));
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
                if method == Method::DELETE {
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

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id().into());
    h.finish()
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

#[tokio::test]
async fn a_principal_that_may_call_nothing_cannot_open_stream_or_end_a_session() {
    let dir = tempdir();
    let db = dir.path().join("a.db");
    let (_up, upstream) = start_upstream(dir.path());
    let (_gw, base) = start_gateway(dir.path(), &config(&upstream, &db, "", ""));
    let url = format!("{base}/mcp");
    let c = client();

    // Carol holds no scope: tools/list is refused, and so is a session.
    let v = assert_refused(
        init(&c, &url, KEY3).send().await.unwrap(),
        &[403],
        "Carol's initialize",
    )
    .await;
    assert_eq!(v["id"], 7, "the JSON-RPC id is echoed: {v}");
    // The 2026-07-28 form of the handshake-less client: a tools/list without a session.
    let r = modern(&c, &url, "tools/list", None, json!({}))
        .header("x-api-key", KEY3)
        .send()
        .await
        .unwrap();
    assert_refused(r, &[403], "Carol's tools/list").await;
    // A GET stream without a session, and DELETE without one.
    let r = get_stream(&c, &url, KEY3, None).send().await.unwrap();
    assert_refused(r, &[403], "Carol's GET without a session").await;
    let r = delete(&c, &url, KEY3, None).send().await.unwrap();
    assert_refused(r, &[403], "Carol's DELETE without a session").await;

    // Alice's session: Carol can neither stream from it nor end it.
    let sid = initialize(&c, &url, KEY).await;
    let r = get_stream(&c, &url, KEY3, Some(&sid)).send().await.unwrap();
    assert_refused(r, &[403, 404], "Carol's GET of Alice's session").await;
    let r = delete(&c, &url, KEY3, Some(&sid)).send().await.unwrap();
    assert_refused(r, &[403, 404], "Carol's DELETE of Alice's session").await;
    // Bob may call tools: he may hold a session, but not end Alice's.
    let bob = initialize(&c, &url, KEY2).await;
    let r = delete(&c, &url, KEY2, Some(&sid)).send().await.unwrap();
    assert_refused(r, &[404], "Bob's DELETE of Alice's session").await;
    let r = ping_in(&c, &url, KEY, &sid).send().await.unwrap();
    assert_eq!(r.status(), 200, "Alice's session is intact");
    // The owner ends her own session.
    let r = delete(&c, &url, KEY, Some(&sid)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = delete(&c, &url, KEY2, Some(&bob)).send().await.unwrap();
    assert_eq!(r.status(), 200);

    // The refusals are audited with their reason: initialize, GET and DELETE.
    let refused = |http: &str, rows: &[AuditRow]| {
        rows.iter().any(|r| {
            r.user.as_deref() == Some("apikey:carol")
                && r.status == Some(403)
                && r.reason.as_deref() == Some("forbidden")
                && r.event["http_method"] == http
                && r.event["detail"]
                    .as_str()
                    .is_some_and(|d| d.starts_with("rule=sessions"))
        })
    };
    assert!(
        eventually(|| {
            let rows = request_rows(&db);
            refused("POST", &rows) && refused("GET", &rows) && refused("DELETE", &rows)
        })
        .await,
        "{:?}",
        request_rows(&db)
    );
}

#[tokio::test]
async fn who_may_open_a_session_is_configurable() {
    let dir = tempdir();
    let db = dir.path().join("a.db");
    let (upstream, _counted) = counting_upstream().await;
    // A scope required: Bob (tools only) gets 403 insufficient_scope with a challenge,
    // Alice is given the scope by a key of her own below.
    let (_gw, base) = start_gateway(
        dir.path(),
        &config(
            &upstream,
            &db,
            "  sessions:\n    scopes: [\"metrics:read\"]\n",
            "",
        ),
    );
    let url = format!("{base}/mcp");
    let c = client();
    let r = init(&c, &url, KEY2).send().await.unwrap();
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("insufficient_scope"),
        "{:?}",
        r.headers()
    );
    assert_refused(r, &[403], "Bob's initialize without metrics:read").await;
    let r = get_stream(&c, &url, KEY2, None).send().await.unwrap();
    assert_refused(r, &[403], "Bob's GET without metrics:read").await;
    initialize(&c, &url, KEY).await;

    // `require: anyone` lets Carol in (an explicit weakening, logged at start).
    let dir2 = tempdir();
    let (gw, base) = start_gateway(
        dir2.path(),
        &config(
            &upstream,
            &dir2.path().join("a.db"),
            "  sessions:\n    require: anyone\n",
            "",
        ),
    );
    initialize(&c, &format!("{base}/mcp"), KEY3).await;
    assert!(
        gw.stderr_text().contains("policy.sessions"),
        "{}",
        gw.stderr_text()
    );

    // An unknown value is refused by `check`, naming the key.
    let yaml = config(&upstream, &db, "  sessions:\n    require: everybody\n", "");
    let path = dir.path().join("bad.yaml");
    std::fs::write(&path, yaml).unwrap();
    let (code, _, err) = run(
        &["check", "--config", path.to_str().unwrap()],
        dir.path(),
        &[],
    );
    assert_ne!(code, 0);
    assert!(err.contains("sessions"), "{err}");
}

/// Bob opens many more sessions than his cap: the upstream never holds more than the
/// cap (plus the DELETEs in flight), and Alice's `initialize` still succeeds.
#[tokio::test]
async fn a_flood_of_sessions_leaves_at_most_the_cap_at_the_upstream() {
    let dir = tempdir();
    let db = dir.path().join("a.db");
    let (upstream, up) = counting_upstream().await;
    let (gw, base) = start_gateway(
        dir.path(),
        &config(
            &upstream,
            &db,
            "",
            "sessions:\n  maxSessionsPerPrincipal: 5\n",
        ),
    );
    let url = format!("{base}/mcp");
    let c = client();
    let alice = initialize(&c, &url, KEY).await;
    // FLOOD_SESSIONS sets the size of the flood for a measurement run (default 200).
    let n: usize = std::env::var("FLOOD_SESSIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200)
        .max(10);
    let started = std::time::Instant::now();
    let mut bob = Vec::new();
    for _ in 0..n {
        bob.push(initialize(&c, &url, KEY2).await);
    }
    let elapsed = started.elapsed();
    // Eventually (the DELETEs are sent in the background) Bob holds at most his cap.
    let ok = within(30, || st_live(&up, &alice).0 <= 5).await;
    let (bobs_live, alice_live) = st_live(&up, &alice);
    assert!(ok, "Bob holds {bobs_live} sessions at the upstream");
    assert!(alice_live, "Alice's session is not ended by Bob's flood");
    let max_live = up.lock().unwrap().max_live;
    eprintln!(
        "figure: {n} sessions opened by one principal in {elapsed:?} (maxSessionsPerPrincipal 5): \
         at most {max_live} live at the upstream at any time (Alice's included), {bobs_live} of Bob's at the end"
    );
    assert!(
        max_live <= 1 + 5 + 64,
        "at most the cap plus the DELETEs in flight at any time: {max_live}"
    );
    // Bob's last five sessions are the live ones, and work.
    for sid in &bob[n - 5..] {
        let r = ping_in(&c, &url, KEY2, sid).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    // An evicted one is gone at the gateway and at the upstream.
    let r = ping_in(&c, &url, KEY2, &bob[0]).send().await.unwrap();
    assert_refused(r, &[404], "an evicted session").await;
    // Alice can still open a session, and use hers.
    let second = initialize(&c, &url, KEY).await;
    for sid in [&alice, &second] {
        let r = ping_in(&c, &url, KEY, sid).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    // Every DELETE ended one of Bob's sessions, once each.
    let deleted = up.lock().unwrap().deleted.clone();
    let once: HashSet<&String> = deleted.iter().collect();
    assert_eq!(once.len(), deleted.len(), "no session ended twice");
    assert!(deleted.len() >= n - 5, "{}", deleted.len());
    // Counted in /metrics.
    let m = metrics_text(&base).await;
    let sent = metric_value(
        &m,
        "mcp_gateway_sessions_ended_total{reason=\"principal_cap\",outcome=\"ok\"}",
    );
    assert!(sent.is_some_and(|s| s >= (n - 5) as f64), "{m}");
    // The session ids never reach the log.
    let log = gw.stderr_text();
    assert!(!log.contains(&bob[0]), "{log}");
}

/// (Bob's live sessions at the upstream, whether Alice's `sid` is live.)
fn st_live(st: &Arc<Mutex<Counted>>, alice: &str) -> (usize, bool) {
    let st = st.lock().unwrap();
    let alice_live = st.live.contains(alice);
    (st.live.len() - usize::from(alice_live), alice_live)
}

/// Behind two upstreams, each ended session gets its DELETE at the upstream that issued
/// it (the per-principal cap counts the principal's sessions at both).
#[tokio::test]
async fn each_session_is_ended_at_the_upstream_that_issued_it() {
    let dir = tempdir();
    let db = dir.path().join("a.db");
    let (url_a, up_a) = counting_upstream().await;
    let (url_b, up_b) = counting_upstream().await;
    let extra = format!(
        "  - name: second\n    path: /b\n    url: \"{url_b}\"\nsessions:\n  maxSessionsPerPrincipal: 2\n"
    );
    let (_gw, base) = start_gateway(dir.path(), &config(&url_a, &db, "", &extra));
    let (gw_a, gw_b) = (format!("{base}/mcp"), format!("{base}/b"));
    let c = client();
    let alice = initialize(&c, &gw_a, KEY).await;
    let bob_a: Vec<String> = vec![
        initialize(&c, &gw_a, KEY2).await,
        initialize(&c, &gw_a, KEY2).await,
    ];
    let mut bob_b = Vec::new();
    for _ in 0..10 {
        bob_b.push(initialize(&c, &gw_b, KEY2).await);
    }
    assert!(
        within(30, || {
            up_a.lock().unwrap().deleted.len() == 2 && up_b.lock().unwrap().deleted.len() == 8
        })
        .await,
        "A ended {:?}, B ended {:?}",
        up_a.lock().unwrap().deleted,
        up_b.lock().unwrap().deleted
    );
    let a = up_a.lock().unwrap();
    let b = up_b.lock().unwrap();
    let set = |v: &[String]| v.iter().cloned().collect::<HashSet<String>>();
    assert_eq!(
        set(&a.deleted),
        set(&bob_a),
        "Bob's sessions at A ended at A"
    );
    assert_eq!(
        set(&b.deleted),
        set(&bob_b[..8]),
        "his oldest at B ended at B"
    );
    assert!(a.live.contains(&alice) && a.live.len() == 1);
    assert_eq!(b.live.len(), 2);
}

/// The global cap (`maxSessions`) evicts too, and ends what it evicts.
#[tokio::test]
async fn the_global_cap_ends_what_it_evicts() {
    let dir = tempdir();
    let db = dir.path().join("a.db");
    let (upstream, up) = counting_upstream().await;
    let (_gw, base) = start_gateway(
        dir.path(),
        &config(
            &upstream,
            &db,
            "",
            "sessions:\n  maxSessions: 16\n  maxSessionsPerPrincipal: 1000\n",
        ),
    );
    let url = format!("{base}/mcp");
    let c = client();
    for _ in 0..100 {
        initialize(&c, &url, KEY2).await;
    }
    assert!(
        within(30, || up.lock().unwrap().live.len() <= 16).await,
        "{} live",
        up.lock().unwrap().live.len()
    );
    assert!(up.lock().unwrap().deleted.len() >= 84);
}

/// A session idle past `idleTimeoutSeconds` is ended at the upstream by the gateway's
/// sweep, without any request.
#[tokio::test]
async fn idle_sessions_are_ended_at_the_upstream() {
    let dir = tempdir();
    let db = dir.path().join("a.db");
    let (upstream, up) = counting_upstream().await;
    let (_gw, base) = start_gateway(
        dir.path(),
        &config(&upstream, &db, "", "sessions:\n  idleTimeoutSeconds: 2\n"),
    );
    let url = format!("{base}/mcp");
    let c = client();
    let mut ids = Vec::new();
    for key in [KEY, KEY2, KEY] {
        ids.push(initialize(&c, &url, key).await);
    }
    assert_eq!(up.lock().unwrap().live.len(), 3);
    assert!(
        within(30, || up.lock().unwrap().live.is_empty()).await,
        "the idle sessions are ended at the upstream"
    );
    let deleted: HashSet<String> = up.lock().unwrap().deleted.iter().cloned().collect();
    assert_eq!(deleted, ids.iter().cloned().collect::<HashSet<_>>());
    let r = ping_in(&c, &url, KEY, &ids[0]).send().await.unwrap();
    assert_refused(r, &[404], "an expired session").await;
    let m = metrics_text(&base).await;
    assert_eq!(
        metric_value(
            &m,
            "mcp_gateway_sessions_ended_total{reason=\"idle\",outcome=\"ok\"}"
        ),
        Some(3.0),
        "{m}"
    );
}

/// Two replicas sharing Redis: the per-principal cap holds across them, evicted and
/// idle sessions are ended at the upstream, each once.
#[tokio::test]
async fn replicas_sharing_redis_end_evicted_and_idle_sessions_once() {
    let redis = mcp_testkit::RedisServer::start();
    let dir = tempdir();
    let (upstream, up) = counting_upstream().await;
    let extra = format!(
        "sessions:\n  maxSessionsPerPrincipal: 3\n  idleTimeoutSeconds: 3\n  redis:\n    url: \"{}\"\n    prefix: \"policy-e2e\"\n",
        redis.url()
    );
    let (_a, base_a) = start_gateway(
        dir.path(),
        &config(&upstream, &dir.path().join("a.db"), "", &extra),
    );
    let (_b, base_b) = start_gateway(
        dir.path(),
        &config(&upstream, &dir.path().join("b.db"), "", &extra),
    );
    let urls = [format!("{base_a}/mcp"), format!("{base_b}/mcp")];
    let c = client();
    let mut bob = Vec::new();
    for i in 0..40 {
        bob.push(initialize(&c, &urls[i % 2], KEY2).await);
    }
    assert!(
        within(30, || up.lock().unwrap().live.len() <= 3).await,
        "{} live",
        up.lock().unwrap().live.len()
    );
    // The survivors work on either replica.
    for (i, sid) in bob[37..].iter().enumerate() {
        let r = ping_in(&c, &urls[i % 2], KEY2, sid).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    // Then idle: every session ended, each exactly once, by one replica or the other.
    assert!(
        within(30, || up.lock().unwrap().live.is_empty()).await,
        "{} live",
        up.lock().unwrap().live.len()
    );
    let st = up.lock().unwrap();
    let mut counts: HashMap<&String, usize> = HashMap::new();
    for d in &st.deleted {
        *counts.entry(d).or_default() += 1;
    }
    assert_eq!(counts.len(), 40, "every session ended");
    assert!(counts.values().all(|n| *n == 1), "each once: {counts:?}");
}

// --- the reference server (server-everything), when installed -------------------

fn everything_dir() -> Option<std::path::PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../.tools/node_modules/@modelcontextprotocol/server-everything/dist/index.js");
    p.exists().then_some(p)
}

struct Node(std::process::Child);
impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// server-everything in its Streamable HTTP mode on a free port.
async fn start_everything(dir: &Path) -> Option<(Node, String)> {
    let Some(index) = everything_dir() else {
        eprintln!("server-everything is not installed under .tools: skipped");
        return None;
    };
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let log = std::fs::File::create(dir.join("everything.log")).unwrap();
    let child = std::process::Command::new("node")
        .arg(index)
        .arg("streamableHttp")
        .env("PORT", port.to_string())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("node");
    let node = Node(child);
    let up = format!("http://127.0.0.1:{port}/mcp");
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Some((node, up));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("server-everything did not start");
}

/// Whether the reference server still holds `sid` (asked directly, not through the
/// gateway): it answers 400 "No valid session ID" for a session it does not hold.
async fn everything_holds(c: &reqwest::Client, upstream: &str, sid: &str) -> bool {
    let r = c
        .post(upstream)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", LEGACY)
        .header("mcp-session-id", sid)
        .body(json!({"jsonrpc": "2.0", "id": 9, "method": "ping"}).to_string())
        .send()
        .await
        .unwrap();
    let ok = r.status().is_success();
    let _ = r.text().await;
    ok
}

#[tokio::test]
async fn against_the_reference_server_no_scope_no_session_and_evicted_sessions_end() {
    let dir = tempdir();
    let Some((_node, upstream)) = start_everything(dir.path()).await else {
        return;
    };
    let db = dir.path().join("a.db");
    let (_gw, base) = start_gateway(
        dir.path(),
        &config(
            &upstream,
            &db,
            "",
            "sessions:\n  maxSessionsPerPrincipal: 3\n",
        ),
    );
    let url = format!("{base}/mcp");
    let c = client();
    assert_refused(
        init(&c, &url, KEY3).send().await.unwrap(),
        &[403],
        "Carol's initialize at server-everything",
    )
    .await;
    let r = get_stream(&c, &url, KEY3, None).send().await.unwrap();
    assert_refused(r, &[403], "Carol's GET at server-everything").await;
    let alice = initialize(&c, &url, KEY).await;
    let mut bob = Vec::new();
    for _ in 0..20 {
        bob.push(initialize(&c, &url, KEY2).await);
    }
    // Bob's 17 oldest sessions are ended at the reference server; his last 3 and
    // Alice's are held.
    let mut ended = 0;
    for sid in &bob[..17] {
        let mut gone = false;
        for _ in 0..100 {
            if !everything_holds(&c, &upstream, sid).await {
                gone = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        ended += usize::from(gone);
    }
    assert_eq!(ended, 17, "evicted sessions ended at the reference server");
    for sid in bob[17..].iter().chain([&alice]) {
        assert!(everything_holds(&c, &upstream, sid).await);
    }
    let r = delete(&c, &url, KEY3, Some(&alice)).send().await.unwrap();
    assert_refused(r, &[403, 404], "Carol's DELETE of Alice's session").await;
    assert!(everything_holds(&c, &upstream, &alice).await);
}
