//! Attack tests for control characters in the names a request is judged and recorded by,
//! through the real gateway process over real sockets:
//!
//! - a method, tool / prompt name, resource URI or completion reference holding any
//!   control character (C0 including TAB, CR and LF, DEL, C1) is refused with 400 and
//!   -32600 without a `policy:` section, with sanitization on and off;
//! - the audit trail's text columns (SQLite) and the stdout records hold no raw control,
//!   bidirectional or invisible format character, whatever the client sent, and the
//!   hash chain still verifies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

/// Characters no audit column or stdout record may hold raw: C0, DEL, C1, the bidi
/// controls, U+2028/2029 and the invisible format characters.
fn unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{61c}'
            | '\u{200b}'..='\u{200f}'
            | '\u{2028}'..='\u{202e}'
            | '\u{2060}'..='\u{2069}'
            | '\u{feff}')
}

/// A 2025-11-25 session with the gateway: (base URL, session id).
struct Session(String, String);

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

impl Session {
    fn open(base: &str) -> Self {
        block_on(async {
            let body = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "protocolVersion": "2025-11-25", "capabilities": {},
                "clientInfo": {"name": "attack", "version": "1"}}});
            let r = client()
                .post(format!("{base}/mcp"))
                .header("x-api-key", KEY)
                .header("content-type", "application/json")
                .header("accept", "application/json, text/event-stream")
                .body(body.to_string())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            let sid = r.headers()["mcp-session-id"].to_str().unwrap().to_owned();
            Self(base.to_owned(), sid)
        })
    }
}

/// Sends a request with this method and params in the session; returns the HTTP status
/// and the body.
fn send(s: &Session, method: &str, params: Value) -> (u16, String) {
    block_on(async {
        let body = json!({"jsonrpc": "2.0", "id": 7, "method": method, "params": params});
        let r = client()
            .post(format!("{}/mcp", s.0))
            .header("x-api-key", KEY)
            .header("mcp-session-id", &s.1)
            .header("mcp-protocol-version", "2025-11-25")
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.text().await.unwrap())
    })
}

/// The requests that carry a control character in a name the gateway judges by.
fn control_named() -> Vec<(&'static str, Value)> {
    let mut v = Vec::new();
    for name in [
        "ec\nho",
        "echo\r",
        "ec\tho",
        "echo\r\nX: y",
        "ec\u{7f}ho",
        "ec\u{85}ho",
        "ec\u{1b}ho",
        "ec\u{0}ho",
    ] {
        v.push(("tools/call", json!({"name": name, "arguments": {}})));
        v.push(("prompts/get", json!({"name": name})));
    }
    for uri in ["demo://x\n", "demo://x\t", "demo://\u{9b}x"] {
        v.push(("resources/read", json!({"uri": uri})));
    }
    v.push((
        "completion/complete",
        json!({"ref": {"type": "ref/prompt", "name": "p\n"}, "argument": {"name": "a", "value": ""}}),
    ));
    v.push((
        "completion/complete",
        json!({"ref": {"type": "ref/resource", "uri": "demo://\tx"}, "argument": {"name": "a", "value": ""}}),
    ));
    v
}

fn refused_without_policy(extra: &str) {
    let dir = tempdir();
    let (_up, upstream) = start_upstream(dir.path());
    let yaml = base_config(&upstream, &dir.path().join("a.db"), extra);
    assert!(!yaml.contains("policy:"));
    let (_gw, base) = start_gateway(dir.path(), &yaml);
    let base = Session::open(&base);
    // The same request with a clean name goes through.
    let (st, _b) = send(
        &base,
        "tools/call",
        json!({"name": "echo", "arguments": {"message": "hi"}}),
    );
    assert_eq!(st, 200, "{_b}");
    let mut through = Vec::new();
    let mut methods: Vec<(String, Value)> = control_named()
        .into_iter()
        .map(|(m, p)| (m.to_owned(), p))
        .collect();
    for m in [
        "tools/list\n",
        "tools/list\r",
        "tools/\tlist",
        "tools/list\u{7f}",
        "ping\u{85}",
    ] {
        methods.push((m.to_owned(), json!({})));
    }
    for (method, params) in methods {
        let (st, body) = send(&base, &method, params.clone());
        let code = (st == 400)
            .then(|| last(&body)["error"]["code"].as_i64())
            .flatten();
        if st != 400 || code != Some(-32600) {
            through.push(format!("{method:?} {params} -> {st} {body}"));
        }
    }
    assert!(through.is_empty(), "{extra:?}: not refused: {through:#?}");
}

#[test]
fn control_characters_in_names_are_refused_without_policy() {
    refused_without_policy("");
}

#[test]
fn control_characters_in_names_are_refused_with_sanitization_off() {
    refused_without_policy("sanitization:\n  enabled: false\n");
}

/// The records the gateway wrote on stdout until `want` of them name a test request
/// (waits up to 20 s).
fn stdout_lines(gw: &Proc, want: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut out = Vec::new();
    while out.iter().filter(|l: &&String| l.contains("INJ")).count() < want {
        let left = deadline.saturating_duration_since(Instant::now());
        match gw.lines.recv_timeout(left.max(Duration::from_millis(1))) {
            Ok(line) if line.starts_with('{') && line.contains("\"prev_hash\"") => out.push(line),
            Ok(_) => {}
            Err(_) => break,
        }
    }
    out
}

fn audit_columns_hold_no_raw_controls(extra: &str) {
    let dir = tempdir();
    let db = dir.path().join("a.db");
    let (_up, upstream) = start_upstream(dir.path());
    let yaml = per_request_audit(&base_config(&upstream, &db, extra))
        .replace("  storage: database\n", "  storage: [database, stdout]\n");
    let (gw, base) = start_gateway(dir.path(), &yaml);
    let base = Session::open(&base);
    let names = [
        "INJ\u{1b}[31mRED",
        "INJ\r\nFAKE: line",
        "INJ\u{0}NUL",
        "\u{feff}INJ",
        "INJ\u{7f}\t\u{200b}\u{2060}",
        "INJ\u{202e}\u{2028}\u{85}",
    ];
    let mut sent = 0;
    for name in names {
        send(&base, "tools/call", json!({"name": name, "arguments": {}}));
        send(&base, &format!("tools/list{name}"), json!({}));
        send(&base, "prompts/get", json!({"name": name}));
        sent += 3;
    }
    let lines = stdout_lines(&gw, sent);
    let deadline = Instant::now() + Duration::from_secs(20);
    let inj_rows = |db: &std::path::Path| {
        request_rows(db)
            .into_iter()
            .filter(|r| r.event.to_string().contains("INJ"))
            .collect::<Vec<_>>()
    };
    let mut rows = inj_rows(&db);
    while rows.len() < sent && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        rows = inj_rows(&db);
    }
    assert_eq!(rows.len(), sent, "rows for {sent} requests");
    let conn = rusqlite::Connection::open(&db).unwrap();
    let mut stmt = conn
        .prepare("SELECT * FROM audit_events ORDER BY seq")
        .unwrap();
    let ncols = stmt.column_count();
    let names_of: Vec<String> = stmt.column_names().iter().map(|s| s.to_string()).collect();
    let mut bad = Vec::new();
    let mut seen_inj = 0;
    let mut q = stmt.query([]).unwrap();
    while let Some(r) = q.next().unwrap() {
        for (i, col) in names_of.iter().enumerate().take(ncols) {
            if let Ok(Some(s)) = r.get::<_, Option<String>>(i) {
                if s.contains("INJ") && col != "event" {
                    seen_inj += 1;
                }
                if s.chars().any(unsafe_char) {
                    bad.push(format!("{col}: {s:?}"));
                }
            }
        }
    }
    assert!(
        seen_inj >= names.len(),
        "the columns name the requests ({seen_inj})"
    );
    assert!(
        bad.is_empty(),
        "raw control characters in columns: {bad:#?}"
    );
    let inj_lines = lines.iter().filter(|l| l.contains("INJ")).count();
    assert!(
        inj_lines >= sent,
        "{inj_lines} stdout records name the requests"
    );
    let bad_lines: Vec<_> = lines
        .iter()
        .filter(|l| l.chars().any(unsafe_char))
        .collect();
    assert!(
        bad_lines.is_empty(),
        "raw control characters on stdout: {bad_lines:#?}"
    );
    // The JSON still decodes to exactly what the client sent.
    assert!(
        rows.iter()
            .any(|r| r.event.to_string().contains("INJ\\r\\nFAKE: line")
                || r.event["tool"] == "INJ\r\nFAKE: line"),
        "the event keeps the name"
    );
    let (code, out, err) = run(
        &["audit", "verify", "--db", db.to_str().unwrap()],
        dir.path(),
        &[],
    );
    assert_eq!(code, 0, "verify: {out} {err}");
}

#[test]
fn audit_columns_and_stdout_hold_no_raw_controls() {
    audit_columns_hold_no_raw_controls("");
}

#[test]
fn audit_columns_hold_no_raw_controls_with_sanitization_off() {
    audit_columns_hold_no_raw_controls("sanitization:\n  enabled: false\n");
}
