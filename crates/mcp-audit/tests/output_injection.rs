//! Audit output injection and the query API's read scope, over real sockets:
//! - C1 controls (U+0080-U+009F), bidi controls (U+202A-U+202E, U+2066-U+2069, U+200E,
//!   U+200F, U+061C), the line and paragraph separators (U+2028, U+2029), C0 controls,
//!   DEL and the invisible format characters (U+200B-U+200D, U+2060-U+2064, U+FEFF) sent by a
//!   client in a tool name, arguments, argument keys, headers and the path never reach
//!   the SQLite trail, the JSON lines file, stdout or the query API raw: they are written
//!   as JSON `\uXXXX` escapes (the JSON stays valid and decodes to what was sent), and the
//!   indexed columns hold the same escaped spelling, which the `tool` and `user` filters
//!   match;
//! - the query API's own-rows scope: a holder of `audit:read:own` reads its own rows
//!   only, whatever `user` it asks for; `audit:read` still reads every row.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::field_reassign_with_default
)]

mod common;

use std::path::Path;
use std::time::Duration;

use axum::Router;
use axum::middleware;
use common::*;
use mcp_audit::{AuditConfig, AuditEvent, Auditor, Storage, StorageList};
use rusqlite::Connection;

/// Every character that must never be written raw.
const HOSTILE: &[char] = &[
    '\u{80}', '\u{85}', '\u{9b}', '\u{9f}', '\u{202a}', '\u{202b}', '\u{202c}', '\u{202d}',
    '\u{202e}', '\u{2066}', '\u{2067}', '\u{2068}', '\u{2069}', '\u{200e}', '\u{200f}', '\u{061c}',
    '\u{2028}', '\u{2029}', '\u{1b}', '\u{7}', '\u{7f}', '\u{feff}', '\u{200b}', '\u{200c}',
    '\u{200d}', '\u{2060}', '\u{2064}',
];

/// [`hostile_text`] without control characters (C0, DEL, C1): a name the gateway's
/// parse layer lets through.
fn hostile_name(prefix: &str) -> String {
    hostile_text(prefix)
        .chars()
        .filter(|c| !c.is_control())
        .collect()
}

/// A column as trails written before C0 controls, DEL and the invisible format
/// characters were escaped spelled it: only C1, bidi and U+2028/2029 escaped.
fn v1_spelling(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '\u{80}'..='\u{9f}'
            | '\u{61c}'
            | '\u{200e}'
            | '\u{200f}'
            | '\u{2028}'
            | '\u{2029}'
            | '\u{202a}'..='\u{202e}'
            | '\u{2066}'..='\u{2069}' => format!("\\u{:04x}", c as u32),
            c => c.to_string(),
        })
        .collect()
}

fn hostile_text(prefix: &str) -> String {
    let mut s = String::from(prefix);
    for c in HOSTILE {
        s.push(*c);
        s.push('x');
    }
    s
}

fn assert_clean(what: &str, text: &str) {
    for c in HOSTILE {
        assert!(
            !text.contains(*c),
            "{what} holds U+{:04X} raw: {text:?}",
            *c as u32
        );
    }
}

fn config(dir: &Path) -> AuditConfig {
    let mut c = AuditConfig::default();
    c.storage = StorageList::Many(vec![Storage::Database, Storage::File]);
    c.database.sqlite_path = dir.join("audit.db");
    c.file.path = dir.join("audit.jsonl");
    c
}

async fn wait_written(a: &Auditor, n: u64) {
    for _ in 0..2000 {
        a.flush().await;
        if a.stats().written() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("only {} of {n} events written", a.stats().written());
}

fn hostile_call(addr: std::net::SocketAddr, user: &str) -> http::Request<BodyOf> {
    let body = serde_json::json!({
        "jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": hostile_name("tool"), "arguments": {
            "q": hostile_text("arg"),
            hostile_text("key"): [hostile_text("deep")],
        }}
    });
    http::Request::post(format!("http://{addr}/mcp"))
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer user-{user}"))
        .header(
            "user-agent",
            http::HeaderValue::from_bytes("agent\u{202e}\u{85}".as_bytes()).unwrap(),
        )
        .body(full(body.to_string()))
        .unwrap()
}

type BodyOf = http_body_util::combinators::BoxBody<bytes::Bytes, std::convert::Infallible>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_characters_are_escaped_in_every_output() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.query.max_limit = 100;
    let auditor = Auditor::from_config(cfg).await.unwrap();
    let svc = auditor.query_service().unwrap();
    let extra = Router::new()
        .route_service("/api/audit/query", svc)
        .layer(middleware::from_fn(fake_auth));
    let addr = serve(app_with(&auditor, extra)).await;
    let c = client();
    let r = send(&c, hostile_call(addr, "alice")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    // An event recorded by code with hostile data and message.
    auditor
        .handle()
        .record(
            AuditEvent::config_reload()
                .with_message(hostile_text("msg"))
                .with_data(serde_json::json!({ hostile_text("k"): hostile_text("v") })),
        )
        .await;
    wait_written(&auditor, 2).await;

    // SQLite: the event JSON and every indexed column.
    let conn = Connection::open(dir.path().join("audit.db")).unwrap();
    let mut s = conn
        .prepare(
            "SELECT event, coalesce(tool, ''), coalesce(user_id, ''), coalesce(mcp_method, '') \
             FROM audit_events ORDER BY seq",
        )
        .unwrap();
    let rows: Vec<(String, String, String, String)> = s
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let mut saw_tool = false;
    for (event, tool, user, method) in &rows {
        assert_clean("sqlite event", event);
        assert_clean("sqlite tool column", tool);
        assert_clean("sqlite user column", user);
        assert_clean("sqlite mcp_method column", method);
        // Valid JSON, decoding to exactly what was sent.
        let v: serde_json::Value = serde_json::from_str(event).unwrap();
        if v["tool"].is_string() {
            saw_tool = true;
            assert_eq!(v["tool"], hostile_name("tool"));
            assert_eq!(v["params"]["arguments"]["q"], hostile_text("arg"));
            assert_eq!(
                v["params"]["arguments"][hostile_text("key")][0],
                hostile_text("deep")
            );
            assert!(tool.contains("\\u202e"), "{tool}");
        }
    }
    assert!(saw_tool, "{rows:?}");
    let text = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap();
    assert_clean("JSON lines file", &text);
    assert!(
        text.contains("\\u202e") && text.contains("\\u0085"),
        "{text}"
    );
    for line in text.lines() {
        serde_json::from_str::<serde_json::Value>(line).unwrap();
    }
    assert!(
        mcp_audit::verify_jsonl(dir.path().join("audit.jsonl"))
            .unwrap()
            .is_intact()
    );

    // The query API answers the escaped text, and the tool filter finds the row by the
    // name the client sent.
    let tool_q: String =
        url::form_urlencoded::byte_serialize(hostile_name("tool").as_bytes()).collect();
    let r = send(
        &c,
        http::Request::get(format!("http://{addr}/api/audit/query?tool={tool_q}"))
            .header("authorization", "Bearer user-auditor:audit:read")
            .body(full(""))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_clean("query answer", &r.body);
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["count"], 1, "{v}");
    assert_eq!(v["events"][0]["event"]["tool"], hostile_name("tool"));
    auditor.shutdown().await;

    // The escaped columns verify; so do the raw ones of a trail written before they
    // were escaped; a column that says something else is still found.
    let db = dir.path().join("audit.db");
    assert!(mcp_audit::verify_sqlite(&db).unwrap().is_intact());
    let conn = Connection::open(&db).unwrap();
    let set = |tool: &str| {
        conn.execute(
            "UPDATE audit_events SET tool = ?1 WHERE tool IS NOT NULL",
            [tool],
        )
        .unwrap()
    };
    assert_eq!(set(&hostile_name("tool")), 1);
    assert!(mcp_audit::verify_sqlite(&db).unwrap().is_intact());
    // And those of a trail written when only C1, bidi and U+2028/2029 were escaped.
    assert_eq!(set(&v1_spelling(&hostile_name("tool"))), 1);
    assert!(mcp_audit::verify_sqlite(&db).unwrap().is_intact());
    set("another-tool");
    assert!(!mcp_audit::verify_sqlite(&db).unwrap().is_intact());
}

const CHILD: &str = "MCP_AUDIT_INJECTION_CHILD";

#[tokio::test]
async fn stdout_lines_carry_no_hostile_character() {
    if std::env::var_os(CHILD).is_some() {
        let mut cfg = AuditConfig::default();
        cfg.storage = StorageList::One(Storage::Stdout);
        let auditor = Auditor::from_config(cfg).await.unwrap();
        auditor
            .handle()
            .record(
                AuditEvent::config_reload()
                    .with_message(hostile_text("msg"))
                    .with_detail(hostile_text("detail"))
                    .with_data(serde_json::json!({
                        hostile_text("k"): [hostile_text("v"), {"password": hostile_text("p")}],
                        // Keys that hold a credential pattern are renamed on a copy.
                        "AKIAIOSFODNN7EXAMPLE": hostile_text("aws"),
                    })),
            )
            .await;
        auditor.shutdown().await;
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new(exe)
        .args([
            "--exact",
            "stdout_lines_carry_no_hostile_character",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text
        .lines()
        .filter_map(|l| l.find("{\"seq\":").map(|i| &l[i..]))
        .collect();
    assert!(!lines.is_empty(), "{text}");
    for l in &lines {
        assert_clean("stdout line", l);
        serde_json::from_str::<serde_json::Value>(l).unwrap();
    }
    let all = lines.join("\n");
    assert!(all.contains("\\u2028") && all.contains("\\u009b"), "{all}");
}

async fn q(addr: std::net::SocketAddr, path: &str, who: &str) -> (u16, serde_json::Value) {
    let r = send(
        &client(),
        http::Request::get(format!("http://{addr}/api/audit/query{path}"))
            .header("authorization", format!("Bearer user-{who}"))
            .body(full(""))
            .unwrap(),
    )
    .await;
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap_or(serde_json::Value::Null);
    (r.status.as_u16(), v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_scope_reads_own_rows_only() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = AuditConfig::default();
    cfg.storage = StorageList::One(Storage::Database);
    cfg.database.sqlite_path = dir.path().join("audit.db");
    let auditor = Auditor::from_config(cfg).await.unwrap();
    let svc = auditor.query_service().unwrap();
    let extra = Router::new()
        .route_service("/api/audit/query", svc)
        .layer(middleware::from_fn(fake_auth));
    let addr = serve(app_with(&auditor, extra)).await;
    let c = client();
    for i in 0..3 {
        send(&c, call(addr, "alice", i, None)).await;
        send(&c, call(addr, "bob", i, None)).await;
    }
    // carol (own scope) makes two calls of her own; the token carries her scope.
    for i in 0..2 {
        send(&c, call(addr, "carol:audit:read:own", i, None)).await;
    }
    wait_written(&auditor, 8).await;
    // Own scope, no filter: carol's rows only (her queries are recorded too).
    let (s, v) = q(addr, "?limit=100", "carol:audit:read:own").await;
    assert_eq!(s, 200, "{v}");
    let events = v["events"].as_array().unwrap();
    assert!(events.len() >= 2, "{v}");
    for e in events {
        assert_eq!(e["event"]["user"], "bearer:carol", "{e}");
    }
    // Own scope asking for another user's rows, or for rows of nobody: refused.
    for path in [
        "?user=bearer:alice",
        "?user=anonymous",
        "?user=bearer:alice&limit=5",
    ] {
        let (s, v) = q(addr, path, "carol:audit:read:own").await;
        assert_eq!(s, 403, "{path}: {v}");
    }
    // Naming herself is fine.
    let (s, v) = q(addr, "?user=bearer:carol", "carol:audit:read:own").await;
    assert_eq!(s, 200);
    assert!(v["count"].as_u64().unwrap() >= 2);
    // The full scope still reads everybody's rows.
    let (s, v) = q(addr, "?user=bearer:alice", "auditor:audit:read").await;
    assert_eq!(s, 200);
    assert_eq!(v["count"], 3);
    // No audit scope at all: 403.
    let (s, _) = q(addr, "", "dave").await;
    assert_eq!(s, 403);
    auditor.shutdown().await;
}
