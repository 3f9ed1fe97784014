//! Attack tests for the size of audit records and for what they record, through the real
//! gateway process over real sockets:
//!
//! - no recorded field grows with what a client sends: one huge header (refused with 401
//!   and accepted), many medium headers, a huge path, a huge query, a huge user agent, a
//!   huge tool argument, a huge JSON-RPC id: each stored record (SQLite and stdout) stays
//!   within the `audit.limits` caps and names the fields it cut in `truncated`;
//! - masking runs before the cut: a secret straddling the cap leaves no prefix behind;
//! - every JSON-RPC message is in the trail: ids of requests, a client's response (the id
//!   it answers and its masked content), the `requestId` of `notifications/cancelled`,
//!   and each message of a batch (found by the query API's `tool=` and `method=`);
//! - the hash chain verifies with the new column, and a trail written before it is
//!   migrated when the gateway opens it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::path::Path;
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

/// The base configuration with one audit row per refused request (these tests count
/// the rows of refusals; the default aggregates a refused client's refusals).
fn base_config(upstream: &str, audit_db: &std::path::Path, extra: &str) -> String {
    per_request_audit(&common::base_config(upstream, audit_db, extra))
}

/// The default caps (`audit.limits`).
const HEADER_VALUE: usize = 4096;
const HEADERS: usize = 16 * 1024;
const PATH: usize = 2048;
const FIELD: usize = 1024;
/// A generous bound on a whole stored record with the default caps.
const RECORD: usize = 48 * 1024;

fn verify(dir: &Path, db: &Path) -> (i32, String, String) {
    run(&["audit", "verify", "--db", db.to_str().unwrap()], dir, &[])
}

/// The gateway with its trail in SQLite (dir/a.db) and on stdout.
fn start(dir: &Path, extra: &str) -> (Proc, Proc, String) {
    let (up, upstream) = start_upstream(dir);
    let yaml = base_config(&upstream, &dir.join("a.db"), extra)
        .replace("  storage: database\n", "  storage: [database, stdout]\n");
    let (gw, base) = start_gateway(dir, &yaml);
    (up, gw, base)
}

/// The audit records the gateway wrote on stdout so far (waits up to 10 s for `want`).
fn stdout_records(gw: &Proc, seen: &mut Vec<Value>, want: impl Fn(&[Value]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !want(seen) {
        let left = deadline.saturating_duration_since(Instant::now());
        match gw.lines.recv_timeout(left.max(Duration::from_millis(1))) {
            Ok(line) => {
                // `{"seq":..,"prev_hash":..,"hash":..,"event":{..}}`
                if line.starts_with('{')
                    && let Ok(v) = serde_json::from_str::<Value>(&line)
                    && v["event"].get("event_id").is_some()
                {
                    seen.push(v["event"].clone());
                }
            }
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
        }
        if Instant::now() >= deadline {
            break;
        }
    }
}

fn truncated(ev: &Value) -> Vec<String> {
    ev["truncated"]
        .as_array()
        .map(|a| a.iter().map(|s| s.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

/// Every field of a stored record within its cap.
fn assert_within_caps(ev: &Value, raw_len: usize) {
    assert!(raw_len <= RECORD, "record of {raw_len} bytes");
    if let Some(p) = ev["path"].as_str() {
        assert!(p.len() <= PATH, "path of {}", p.len());
    }
    if let Some(h) = ev["headers"].as_object() {
        let mut total = 0;
        for (k, v) in h {
            let v = v.as_str().unwrap();
            assert!(v.len() <= HEADER_VALUE, "header {k} of {}", v.len());
            total += k.len() + v.len();
        }
        assert!(total <= HEADERS, "headers of {total}");
    }
    for f in [
        "tool",
        "resource",
        "prompt",
        "mcp_method",
        "request_id",
        "detail",
    ] {
        if let Some(s) = ev[f].as_str() {
            assert!(s.len() <= FIELD, "{f} of {}", s.len());
        }
    }
    if let Some(s) = ev["jsonrpc_id"].as_str() {
        assert!(s.len() <= FIELD, "jsonrpc_id of {}", s.len());
    }
}

/// The stored rows of requests (kind request or auth_failure), as (event, raw length).
fn rows_with_len(db: &Path) -> Vec<(Value, usize, Option<String>)> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT event, jsonrpc_id FROM audit_events \
             WHERE kind IN ('request', 'auth_failure') ORDER BY seq",
        )
        .unwrap();
    stmt.query_map([], |r| {
        let s: String = r.get(0)?;
        Ok((serde_json::from_str(&s).unwrap(), s.len(), r.get(1)?))
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

fn big(c: char, n: usize) -> String {
    std::iter::repeat_n(c, n).collect()
}

#[tokio::test]
async fn oversized_requests_are_recorded_within_the_caps_and_marked() {
    let dir = tempdir();
    let db = dir.path().join("a.db");
    let (_up, gw, base) = start(dir.path(), "");
    let c = client();
    let huge = big('h', 380 * 1024);

    // One ~380 KB header: refused (no credential) and accepted (alice).
    let r = c
        .get(format!("{base}/mcp"))
        .header("x-big", &huge)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .get(format!("{base}/api/audit/query?limit=1"))
        .header("x-api-key", KEY)
        .header("x-big", &huge)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = call_tool(&c, &format!("{base}/mcp"), "echo", json!({"message": "hi"}))
        .header("x-api-key", KEY)
        .header("x-big", &huge)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let _ = r.text().await;
    // Many medium headers (3 KB each, 60 of them: hyper refuses over 100 headers).
    let mut b = c.get(format!("{base}/mcp"));
    for i in 0..60 {
        b = b.header(format!("x-medium-{i:03}"), big('m', 3000));
    }
    assert_eq!(b.send().await.unwrap().status(), 401);
    // A huge path (answered 404 outside the audited routes: not recorded at all), a huge
    // query (never recorded).
    let r = c
        .get(format!("{base}/mcp/{}", big('p', 60_000)))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_client_error(), "{}", r.status());
    let r = c
        .get(format!("{base}/mcp?q={}", big('q', 60_000)))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_client_error(), "{}", r.status());
    // A huge user agent.
    let r = c
        .get(format!("{base}/mcp"))
        .header("user-agent", big('u', 300_000))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // A huge tool argument (under the body limit) and a huge JSON-RPC id.
    let r = call_tool(
        &c,
        &format!("{base}/mcp"),
        "echo",
        json!({"message": big('a', 600_000)}),
    )
    .header("x-api-key", KEY)
    .send()
    .await
    .unwrap();
    let _ = r.text().await;
    let body = json!({"jsonrpc": "2.0", "id": big('i', 200_000), "method": "tools/call",
        "params": {"name": "echo", "arguments": {"message": "x"}, "_meta": modern_meta()}});
    let r = c
        .post(format!("{base}/mcp"))
        .header("x-api-key", KEY)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "tools/call")
        .header("mcp-name", "echo")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let _ = r.text().await;

    assert!(
        eventually(|| rows_with_len(&db).len() >= 8).await,
        "{:?}",
        rows_with_len(&db)
            .iter()
            .map(|r| (
                r.0["http_status"].clone(),
                r.0["tool"].clone(),
                truncated(&r.0)
            ))
            .collect::<Vec<_>>()
    );
    let rows = rows_with_len(&db);
    for (ev, len, _) in &rows {
        assert_within_caps(ev, *len);
        assert!(
            !ev.to_string().contains(&big('q', 100)),
            "the query is recorded"
        );
    }
    let with = |f: &dyn Fn(&Value) -> bool| rows.iter().filter(|(e, _, _)| f(e)).count();
    // The huge header: cut and marked, three times (401, 200 query, 200 call).
    assert_eq!(
        with(&|e| truncated(e).contains(&"headers.x-big".to_owned())),
        3,
        "{:?}",
        rows.iter().map(|r| truncated(&r.0)).collect::<Vec<_>>()
    );
    assert!(rows.iter().any(|(e, _, _)| e["http_status"] == 401
        && e["headers"]["x-big"].as_str().unwrap().len() == HEADER_VALUE));
    // Many medium headers: the total cap left some out.
    assert_eq!(with(&|e| truncated(e).contains(&"headers".to_owned())), 1);
    // The user agent.
    assert_eq!(
        with(&|e| truncated(e).contains(&"headers.user-agent".to_owned())),
        1
    );
    // The tool argument: params replaced by the marker.
    assert!(
        rows.iter()
            .any(|(e, _, _)| truncated(e).contains(&"params".to_owned())
                && e["params"]["truncated"] == true
                && e["tool"] == "echo")
    );
    // The JSON-RPC id: cut, in the record and the column.
    let id_row = rows
        .iter()
        .find(|(e, _, _)| truncated(e).contains(&"jsonrpc_id".to_owned()))
        .expect("the huge id is marked");
    assert_eq!(id_row.0["jsonrpc_id"].as_str().unwrap().len(), FIELD);
    assert!(id_row.2.as_ref().unwrap().len() <= FIELD + 2);

    // The stdout sink wrote the same bounded records.
    let mut out = Vec::new();
    stdout_records(&gw, &mut out, |s| {
        s.iter()
            .filter(|e| e["kind"] == "request" || e["kind"] == "auth_failure")
            .count()
            >= 8
    });
    let reqs: Vec<&Value> = out
        .iter()
        .filter(|e| e["kind"] == "request" || e["kind"] == "auth_failure")
        .collect();
    assert!(reqs.len() >= 8, "{} records on stdout", reqs.len());
    for e in &reqs {
        assert_within_caps(e, e.to_string().len());
    }
    assert!(
        reqs.iter()
            .any(|e| truncated(e).contains(&"headers.x-big".to_owned()))
    );
    assert_eq!(verify(dir.path(), &db).0, 0);
}

#[tokio::test]
async fn a_secret_cut_by_a_cap_is_masked_first() {
    let dir = tempdir();
    let db = dir.path().join("a.db");
    let (_up, _gw, base) = start(dir.path(), "");
    let c = client();
    // A bearer credential in a header value, straddling the 4 KiB cut; an access key in a
    // resource URI, straddling the 1 KiB cut. (The path is capped the same way: unit
    // tests in mcp-audit, since the gateway records no path but its routes.)
    let token = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGH";
    for at in [HEADER_VALUE - 20, HEADER_VALUE - 8, HEADER_VALUE - 3] {
        let value = format!("{} Bearer {token}", big('v', at - 1));
        let r = c
            .get(format!("{base}/mcp"))
            .header("x-note", value)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
    }
    let uri = format!("demo://x/{}/AKIAIOSFODNN7EXAMPLE", big('r', FIELD - 15));
    let r = modern(
        &c,
        &format!("{base}/mcp"),
        "resources/read",
        None,
        json!({"uri": uri}),
    )
    .header("x-api-key", KEY)
    .send()
    .await
    .unwrap();
    let _ = r.text().await;
    assert!(
        eventually(|| rows_with_len(&db).len() >= 4).await,
        "{:?}",
        rows_with_len(&db)
            .iter()
            .map(|r| (
                r.0["http_status"].clone(),
                r.0["path"].as_str().map(str::len),
                truncated(&r.0)
            ))
            .collect::<Vec<_>>()
    );
    let rows = rows_with_len(&db);
    for (ev, len, _) in &rows {
        assert_within_caps(ev, *len);
        let text = ev.to_string();
        for prefix in ["abcdefgh", "AKIAIOSF", "AKIA"] {
            assert!(
                !text.contains(prefix),
                "{prefix} leaked: {}",
                truncated(ev).join(",")
            );
        }
    }
    // The masked value of the first is under the cap; the other two are cut.
    assert!(
        rows.iter()
            .filter(|(e, _, _)| truncated(e).contains(&"headers.x-note".to_owned()))
            .count()
            >= 2
    );
    assert!(
        rows.iter()
            .any(|(e, _, _)| truncated(e).contains(&"resource".to_owned()))
    );
}

async fn post_raw(base: &str, body: &Value) -> reqwest::Response {
    client()
        .post(format!("{base}/mcp"))
        .header("x-api-key", KEY)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-06-18")
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn ids_responses_and_cancellations_are_recorded_and_link() {
    let dir = tempdir();
    let db = dir.path().join("a.db");
    let (_up, _gw, base) = start(dir.path(), "");
    // A request with a numeric id, one with a string id, a notification, a client's
    // response to a server request (an elicitation answer holding a secret), and the
    // cancellation of request 7.
    let r = call_tool(
        &client(),
        &format!("{base}/mcp"),
        "echo",
        json!({"message": "x"}),
    )
    .header("x-api-key", KEY)
    .send()
    .await
    .unwrap();
    let _ = r.text().await;
    for body in [
        json!({"jsonrpc": "2.0", "id": 7, "method": "ping"}),
        json!({"jsonrpc": "2.0", "id": "req-α", "method": "ping"}),
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        json!({"jsonrpc": "2.0", "id": "srv-1", "result": {"action": "accept",
            "content": {"password": "hunter2", "note": "Bearer abcdefghijklmnopqrstuvwxyz"}}}),
        json!({"jsonrpc": "2.0", "id": 9, "error": {"code": -1, "message": "declined"}}),
        json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
            "params": {"requestId": 7, "reason": "user"}}),
    ] {
        let _ = post_raw(&base, &body).await.text().await;
    }
    assert!(eventually(|| rows_with_len(&db).len() >= 7).await);
    let rows = rows_with_len(&db);
    let find = |f: &dyn Fn(&Value) -> bool| {
        rows.iter()
            .find(|(e, _, _)| f(e))
            .unwrap_or_else(|| panic!("{:?}", rows.iter().map(|r| &r.0).collect::<Vec<_>>()))
            .clone()
    };
    let (e, _, col) = find(&|e| e["tool"] == "echo");
    assert_eq!(
        (e["jsonrpc_id"].clone(), e["message_type"].clone()),
        (json!(1), json!("request"))
    );
    assert_eq!(col.as_deref(), Some("1"));
    let (e, _, col) = find(&|e| e["jsonrpc_id"] == json!(7));
    assert_eq!(e["mcp_method"], "ping");
    assert_eq!(col.as_deref(), Some("7"));
    let (_, _, col) = find(&|e| e["jsonrpc_id"] == json!("req-α"));
    assert_eq!(col.as_deref(), Some("\"req-α\""));
    let (e, _, col) = find(&|e| e["mcp_method"] == "notifications/initialized");
    assert_eq!(e["message_type"], "notification");
    assert!(e.get("jsonrpc_id").is_none() && col.is_none());
    let (e, _, col) = find(&|e| e["jsonrpc_id"] == json!("srv-1"));
    assert_eq!(e["message_type"], "response");
    assert_eq!(col.as_deref(), Some("\"srv-1\""));
    assert_eq!(e["response"]["result"]["action"], "accept");
    assert_eq!(
        e["response"]["result"]["content"]["password"],
        "***REDACTED***"
    );
    let text = e.to_string();
    assert!(
        !text.contains("hunter2") && !text.contains("abcdefghijkl"),
        "{text}"
    );
    let (e, _, _) = find(&|e| e["jsonrpc_id"] == json!(9));
    assert_eq!(
        (
            e["message_type"].clone(),
            e["response"]["error"]["message"].clone()
        ),
        (json!("response"), json!("declined"))
    );
    let (e, _, col) = find(&|e| e["mcp_method"] == "notifications/cancelled");
    assert_eq!(e["related_id"], json!(7));
    assert_eq!(col.as_deref(), Some("7"));

    // The query API links them: the request and its cancellation.
    let page = audit_query(&base, "jsonrpc_id=7").await;
    let methods: Vec<&str> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["event"]["mcp_method"].as_str().unwrap())
        .collect();
    assert_eq!(methods, ["notifications/cancelled", "ping"]);
    let page = audit_query(&base, "jsonrpc_id=%22srv-1%22").await;
    assert_eq!(page["count"], 1);
    assert_eq!(verify(dir.path(), &db).0, 0);
}

#[tokio::test]
async fn every_message_of_a_batch_is_a_record() {
    let dir = tempdir();
    let db = dir.path().join("a.db");
    let (_up, _gw, base) = start(dir.path(), "sanitization:\n  allow_batch: true\n");
    let batch = json!([
        {"jsonrpc": "2.0", "id": 1, "method": "ping"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
         "params": {"name": "echo", "arguments": {"message": "in a batch", "token": "t0ps3cret"}}},
        {"jsonrpc": "2.0", "method": "notifications/initialized"}
    ]);
    let r = post_raw(&base, &batch).await;
    let status = r.status();
    let _ = r.text().await;
    assert!(
        eventually(|| rows_with_len(&db).len() >= 3).await,
        "{status}"
    );
    let rows = rows_with_len(&db);
    assert_eq!(rows.len(), 3, "{rows:?}");
    let rid = rows[0].0["request_id"].clone();
    for (i, (e, _, _)) in rows.iter().enumerate() {
        assert_eq!(e["batch_size"], 3);
        assert_eq!(e["batch_index"], i);
        assert_eq!(e["request_id"], rid);
        assert_eq!(e.get("headers").is_some(), i == 0);
    }
    assert_eq!(rows[0].0["mcp_method"], "ping");
    assert_eq!(rows[1].0["tool"], "echo");
    assert_eq!(rows[1].0["params"]["arguments"]["token"], "***REDACTED***");
    assert_eq!(rows[1].2.as_deref(), Some("2"));
    assert_eq!(rows[2].0["message_type"], "notification");
    // SQLite: the columns index every message.
    let rows_sql = audit_rows(&db);
    assert!(
        rows_sql
            .iter()
            .any(|r| r.tool.as_deref() == Some("echo") && r.method.as_deref() == Some("tools/call"))
    );
    // The query API finds echo and ping in the batch.
    let page = audit_query(&base, "tool=echo").await;
    assert_eq!(page["count"], 1, "{page}");
    assert_eq!(page["events"][0]["event"]["batch_index"], 1);
    let page = audit_query(&base, "method=ping").await;
    assert_eq!(page["count"], 1, "{page}");
    let page = audit_query(&base, "method=tools%2Fcall").await;
    assert_eq!(page["count"], 1, "{page}");
    assert_eq!(verify(dir.path(), &db).0, 0);
}

#[tokio::test]
async fn a_trail_written_before_the_id_column_is_migrated_and_verifies() {
    let dir = tempdir();
    let db = dir.path().join("a.db");
    {
        let (_up, mut gw, _base) = start(dir.path(), "");
        gw.terminate();
        assert!(gw.wait_exit(30).is_some());
    }
    // Make it a trail of the older schema: no jsonrpc_id column (its records, startup
    // and shutdown, hold no id).
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch("ALTER TABLE audit_events DROP COLUMN jsonrpc_id;")
        .unwrap();
    let cols = |db: &Path| -> Vec<String> {
        let conn = rusqlite::Connection::open(db).unwrap();
        let mut s = conn
            .prepare("SELECT name FROM pragma_table_info('audit_events')")
            .unwrap();
        s.query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    assert!(!cols(&db).contains(&"jsonrpc_id".to_owned()));
    // The older trail verifies as it is.
    let (code, out, err) = verify(dir.path(), &db);
    assert_eq!(code, 0, "{out}{err}");
    // A gateway of this version opens it, adds the column and chains on.
    let (_up, mut gw, base) = start(dir.path(), "");
    assert!(cols(&db).contains(&"jsonrpc_id".to_owned()));
    let r = call_tool(
        &client(),
        &format!("{base}/mcp"),
        "echo",
        json!({"message": "new"}),
    )
    .header("x-api-key", KEY)
    .send()
    .await
    .unwrap();
    let _ = r.text().await;
    assert!(
        eventually(|| rows_with_len(&db)
            .iter()
            .any(|r| r.2.as_deref() == Some("1")))
        .await
    );
    gw.terminate();
    assert!(gw.wait_exit(30).is_some());
    let (code, out, err) = verify(dir.path(), &db);
    assert_eq!(code, 0, "{out}{err}");
    // Tampering with the new column is still found.
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch("UPDATE audit_events SET jsonrpc_id = '2' WHERE jsonrpc_id = '1';")
        .unwrap();
    assert_ne!(verify(dir.path(), &db).0, 0);
}
