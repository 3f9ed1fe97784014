//! Attack tests for the audit store through the real gateway process (issue "Hardening
//! III", item 1: the query API and the trail's disk use):
//!
//! - `GET /api/audit/query?limit=1000` over large rows built the whole page in memory
//!   (380 MB of JSON, +1 GB RSS): the page is now bounded in bytes (`query.maxPageBytes`)
//!   and streamed chunk by chunk, so the gateway's peak RSS (`VmHWM`) stays within a
//!   bound however large the rows, however many queries run at once, and however slowly
//!   their clients read;
//! - queries beyond `query.maxConcurrent` are refused with 503, `Retry-After` and a
//!   JSON-RPC error;
//! - cursor and limit abuse is refused (400) or answered with a valid, bounded page;
//! - the SQLite trail stays within `database.maxBytes` (plus the documented slack) while
//!   far more is written through the gateway, `audit verify` still says intact (from the
//!   pruned range's anchor), and the query API still answers.
//!
//! Large rows are written with the SQLite sink itself before the gateway starts (the
//! gateway caps what a request can put in a row; an operator's caps may be larger).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use mcp_audit::event::{IndexColumns, SinkEvent};
use mcp_audit::sink::AuditSink;
use mcp_audit::sink::sqlite::SqliteSink;
use mcp_audit::{AuditRecord, EventKind, Outcome};
use serde_json::{Value, json};

const MIB: u64 = 1024 * 1024;

/// Writes `n` records of about `event_bytes` each (alice's `echo` calls) to the trail at
/// `db` with the SQLite sink, then releases it.
async fn prefill(db: &Path, n: usize, event_bytes: usize) {
    let mut sink = SqliteSink::open(db, 0).unwrap();
    let blob = "x".repeat(event_bytes);
    for start in (0..n).step_by(8) {
        let batch: Vec<SinkEvent> = (start..n.min(start + 8))
            .map(|i| {
                let rec = AuditRecord {
                    event_id: format!("prefill-{i}"),
                    timestamp: "2026-12-01T08:00:00.000000Z".into(),
                    kind: Some(EventKind::Request),
                    user: Some("apikey:alice".into()),
                    tool: Some("echo".into()),
                    mcp_method: Some("tools/call".into()),
                    params: Some(json!({"arguments": {"message": blob}})),
                    status: Some(Outcome::Success),
                    http_status: Some(200),
                    ..Default::default()
                };
                SinkEvent {
                    json: serde_json::to_string(&rec).unwrap().into(),
                    columns: IndexColumns::of(&rec),
                }
            })
            .collect();
        sink.write_batch(Arc::from(batch)).await.unwrap();
    }
}

fn vm_hwm_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// A gateway over a trail prefilled with `n` rows of `event_bytes`, `audit_extra` added
/// to its `audit:` section (indented two spaces).
async fn gateway_over_large_rows(
    dir: &Path,
    n: usize,
    event_bytes: usize,
    audit_extra: &str,
) -> (Proc, Proc, String) {
    let db = dir.join("a.db");
    prefill(&db, n, event_bytes).await;
    let (up, upstream) = start_upstream(dir);
    let yaml = base_config(&upstream, &db, "").replacen(
        "audit:\n  enabled: true\n",
        &format!("audit:\n  enabled: true\n{audit_extra}"),
        1,
    );
    let (gw, base) = start_gateway(dir, &yaml);
    (up, gw, base)
}

async fn raw_query(base: &str, query: &str) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let r = client()
        .get(format!("{base}/api/audit/query?{query}"))
        .header("x-api-key", KEY)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let body = r.bytes().await.unwrap().to_vec();
    (status, headers, body)
}

/// Warms the gateway up (a small query), then returns its peak RSS.
async fn baseline(base: &str, pid: u32) -> u64 {
    let (s, _, _) = raw_query(base, "limit=1").await;
    assert_eq!(s, 200);
    vm_hwm_kib(pid)
}

/// A client that sends a query and stops reading once the status line arrived.
fn slow_reader(base: &str, query: &str) -> std::net::TcpStream {
    let addr = base.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET /api/audit/query?{query} HTTP/1.1\r\nHost: {addr}\r\nX-API-Key: {KEY}\r\n\r\n"
    )
    .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut head = [0u8; 64];
    let n = s.read(&mut head).unwrap();
    assert!(
        String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head[..n])
    );
    s
}

// ---------------------------------------------------------------------------------------
// A page is bounded in bytes; memory per query is bounded.
// ---------------------------------------------------------------------------------------

/// The example, scaled: 48 rows of 1 MiB, `limit=1000` (and the configured
/// maximum): each page is at most the 8 MiB budget, valid JSON, marked truncated with a
/// cursor, and paging through the cursor reads every row exactly once; the gateway's peak
/// RSS grows by far less than the 48 MiB the unbounded page held (several times over).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_rows_give_pages_bounded_in_bytes_and_memory() {
    let dir = tempdir();
    let (_up, gw, base) = gateway_over_large_rows(dir.path(), 48, 1 << 20, "").await;
    let before = baseline(&base, gw.pid()).await;

    for q in [
        "limit=1000",
        "limit=1000&user=apikey:alice",
        "limit=1000&tool=echo&status=success&since=1970-01-01T00:00:00Z",
        "limit=4294967296",
    ] {
        let (status, headers, body) = raw_query(&base, q).await;
        assert_eq!(status, 200, "{q}");
        assert_eq!(headers["content-type"], "application/json");
        assert!(body.len() as u64 <= 8 * MIB, "{q}: {} bytes", body.len());
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["truncated"], true, "{q}");
        let n = v["count"].as_u64().unwrap();
        assert!((1..48).contains(&n), "{q}: {n}");
        assert_eq!(v["events"].as_array().unwrap().len() as u64, n);
        assert!(v["next_cursor"].is_string(), "{q}");
    }

    // Paging through the cursor reads every row once, newest first.
    let mut cursor: Option<String> = None;
    let mut seqs = Vec::new();
    for _ in 0..48 {
        let q = match &cursor {
            Some(c) => format!("limit=1000&tool=echo&cursor={c}"),
            None => "limit=1000&tool=echo".to_owned(),
        };
        let (status, _, body) = raw_query(&base, &q).await;
        assert_eq!(status, 200);
        assert!(body.len() as u64 <= 8 * MIB);
        let v: Value = serde_json::from_slice(&body).unwrap();
        for e in v["events"].as_array().unwrap() {
            assert_eq!(
                e["event"]["params"]["arguments"]["message"]
                    .as_str()
                    .unwrap()
                    .len(),
                1 << 20
            );
            seqs.push(e["seq"].as_i64().unwrap());
        }
        match v["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seqs, (1..=48).rev().collect::<Vec<i64>>());

    let grown = vm_hwm_kib(gw.pid()).saturating_sub(before);
    eprintln!("figure: 48 x 1 MiB rows, 5 + 7 pages of limit=1000: VmHWM +{grown} KiB");
    assert!(grown < 40 * 1024, "peak RSS grew by {grown} KiB");
}

/// A record larger than the page budget is sent without its event (`elided_bytes`), so
/// paging moves past it; the page stays within the budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_larger_than_a_page_is_elided_not_sent() {
    let dir = tempdir();
    let (_up, _gw, base) =
        gateway_over_large_rows(dir.path(), 3, 3 << 20, "  query: {maxPageBytes: 1048576}\n").await;
    let (status, _, body) = raw_query(&base, "limit=10&tool=echo").await;
    assert_eq!(status, 200);
    assert!(body.len() as u64 <= MIB, "{} bytes", body.len());
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["count"], 3, "{v}");
    assert_eq!(v["truncated"], false);
    assert!(v["next_cursor"].is_null());
    for e in v["events"].as_array().unwrap() {
        assert!(e["event"].is_null());
        assert!(e["elided_bytes"].as_u64().unwrap() > 3 << 20);
        assert_eq!(e["hash"].as_str().unwrap().len(), 64);
    }
}

// ---------------------------------------------------------------------------------------
// Concurrency and slow readers.
// ---------------------------------------------------------------------------------------

/// Clients that start a large page and stop reading hold the query slots (each streamed
/// a chunk at a time: the gateway holds a chunk or two for each, not the page), so
/// a further query is refused with 503, `Retry-After` and a JSON-RPC error; once they
/// go, queries are served again. With a 64 MiB page budget, six stalled readers of a
/// 48 MiB page grow the peak RSS by far less than one page each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_readers_hold_a_chunk_not_a_page_and_extra_queries_get_503() {
    let dir = tempdir();
    let (_up, gw, base) = gateway_over_large_rows(
        dir.path(),
        48,
        1 << 20,
        "  query: {maxPageBytes: 67108864, maxConcurrent: 6}\n",
    )
    .await;
    let before = baseline(&base, gw.pid()).await;
    let stalled: Vec<_> = (0..6).map(|_| slow_reader(&base, "limit=1000")).collect();
    // Every slot is taken: the next query is refused before any store access.
    let mut refused = None;
    for _ in 0..100 {
        let r = client()
            .get(format!("{base}/api/audit/query?limit=1"))
            .header("x-api-key", KEY)
            .send()
            .await
            .unwrap();
        if r.status() == 503 {
            refused = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = refused.expect("a seventh query is refused while six are stalled");
    assert_eq!(retry_after(&r), 1);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["jsonrpc"], "2.0");
    assert!(body["error"]["code"].is_i64(), "{body}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let grown = vm_hwm_kib(gw.pid()).saturating_sub(before);
    eprintln!("figure: six stalled readers of a 48 MiB page: VmHWM +{grown} KiB");
    assert!(
        grown < 96 * 1024,
        "six stalled readers grew peak RSS by {grown} KiB"
    );

    drop(stalled);
    let mut served = false;
    for _ in 0..100 {
        let (status, _, _) = raw_query(&base, "limit=1").await;
        if status == 200 {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served, "slots come back once the stalled clients go");
}

/// Sixteen full queries at once: each is a bounded, valid page or a 503 with
/// `Retry-After`; at least one is served, and the peak RSS stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_queries_are_served_or_refused_within_bounds() {
    let dir = tempdir();
    let (_up, gw, base) = gateway_over_large_rows(dir.path(), 32, 1 << 20, "").await;
    let before = baseline(&base, gw.pid()).await;
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let base = base.clone();
            tokio::spawn(async move { raw_query(&base, "limit=1000").await })
        })
        .collect();
    let mut served = 0;
    for t in tasks {
        let (status, headers, body) = t.await.unwrap();
        match status {
            200 => {
                served += 1;
                assert!(body.len() as u64 <= 8 * MIB);
                let v: Value = serde_json::from_slice(&body).unwrap();
                assert!(v["count"].as_u64().unwrap() >= 1);
            }
            503 => {
                assert_eq!(headers["retry-after"], "1");
                let v: Value = serde_json::from_slice(&body).unwrap();
                assert!(v["error"]["code"].is_i64());
            }
            s => panic!("status {s}"),
        }
    }
    assert!(served >= 1);
    let grown = vm_hwm_kib(gw.pid()).saturating_sub(before);
    eprintln!("figure: 16 concurrent limit=1000 queries ({served} served): VmHWM +{grown} KiB");
    assert!(grown < 64 * 1024, "peak RSS grew by {grown} KiB");
}

// ---------------------------------------------------------------------------------------
// Cursor, limit and filter abuse.
// ---------------------------------------------------------------------------------------

/// Offsets, negative or huge numbers and non-numeric values are refused with 400 and a
/// JSON-RPC error naming the parameter; a well-formed cursor past the end answers an
/// empty page; a cursor beyond every row answers from the newest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursor_and_limit_abuse_is_refused_or_bounded() {
    let dir = tempdir();
    let (_up, _gw, base) = gateway_over_large_rows(dir.path(), 8, 4096, "").await;
    for q in [
        "offset=100000000",
        "limit=-1",
        "limit=0",
        "limit=abc",
        "limit=1e9",
        "limit=99999999999999999999999",
        "cursor=-1",
        "cursor=abc",
        "cursor=99999999999999999999",
        // base64url of "v1:-5", "v1:0" and "v1:abc"
        "cursor=djE6LTU",
        "cursor=djE6MA",
        "cursor=djE6YWJj",
        "limit=1&limit=2",
        "since=-1",
        "status=*",
    ] {
        let (status, headers, body) = raw_query(&base, q).await;
        assert_eq!(status, 400, "{q}");
        assert!(
            headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/json")
        );
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert!(v["error"]["code"].is_i64(), "{q}: {v}");
    }
    // Cursor "v1:9223372036854775807": every row is older.
    let (status, _, body) =
        raw_query(&base, "tool=echo&cursor=djE6OTIyMzM3MjAzNjg1NDc3NTgwNw").await;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["count"], 8);
    // Cursor "v1:1": nothing is older than the first row.
    let (status, _, body) = raw_query(&base, "cursor=djE6MQ").await;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["count"], 0);
    assert!(v["next_cursor"].is_null());
}

// ---------------------------------------------------------------------------------------
// The trail's disk use.
// ---------------------------------------------------------------------------------------

fn head_seq(db: &Path) -> i64 {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.query_row("SELECT coalesce(max(seq), 0) FROM audit_events", [], |r| {
        r.get(0)
    })
    .unwrap()
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map_or(0, |m| m.len())
}

/// With `database.maxBytes: 4 MiB`, about 24 MB of 40 KB tool calls through the gateway
/// leave the database and its WAL within the budget plus the documented slack (the WAL
/// limit, 4 MiB, and a few batches); `audit verify` says intact from the pruned range's
/// anchor, and the query API answers with the newest rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sqlite_trail_stays_within_its_byte_budget() {
    let dir = tempdir();
    let db = dir.path().join("a.db");
    let (_up, upstream) = start_upstream(dir.path());
    // Records of about 40 KB: the params cap (`audit.limits.paramsBytes`, 16 KiB by
    // default) raised above them.
    let yaml = base_config(&upstream, &db, "sanitization:\n  max_length: 100000\n")
        .replacen(
            "    sqlitePath:",
            "    maxBytes: 4194304\n    sqlitePath:",
            1,
        )
        .replacen(
            "audit:\n  enabled: true\n",
            "audit:\n  enabled: true\n  limits: {paramsBytes: 65536}\n",
            1,
        );
    let (mut gw, base) = start_gateway(dir.path(), &yaml);
    let message = "m".repeat(40_000);
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let (base, message, db, peak) =
                (base.clone(), message.clone(), db.clone(), Arc::clone(&peak));
            tokio::spawn(async move {
                let c = client();
                for i in 0..75 {
                    let r = call_tool(
                        &c,
                        &format!("{base}/mcp"),
                        "echo",
                        json!({"message": format!("{t}-{i}-{message}")}),
                    )
                    .header("x-api-key", KEY)
                    .send()
                    .await
                    .unwrap();
                    assert_eq!(r.status(), 200);
                    let _ = r.bytes().await;
                    let wal = db.with_file_name("a.db-wal");
                    let size = file_len(&db) + file_len(&wal);
                    peak.fetch_max(size, std::sync::atomic::Ordering::Relaxed);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    // Everything written, then measured once more.
    let done = eventually(|| head_seq(&db) > 600).await;
    assert!(done, "the trail holds the last requests");
    let wal = db.with_file_name("a.db-wal");
    let size = file_len(&db) + file_len(&wal);
    let peak = peak.load(std::sync::atomic::Ordering::Relaxed).max(size);
    eprintln!("figure: 600 x 40 KB calls, maxBytes 4 MiB: database + WAL peak {peak} bytes");
    assert!(
        peak <= 4 * MIB + 4 * MIB + 3 * MIB,
        "database + WAL reached {peak} bytes"
    );

    let (status, _, body) = raw_query(&base, "limit=5").await;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["count"], 5);
    assert!(v["events"][0]["seq"].as_i64().unwrap() > 600);

    gw.terminate();
    assert!(gw.wait_exit(30).is_some());
    let (code, out, err) = run(
        &["audit", "verify", "--db", db.to_str().unwrap()],
        dir.path(),
        &[],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("intact"), "{out}");
    assert!(out.contains("pruned"), "{out}");
}

/// A client that stops reading holds its query slot for `query.stallTimeoutMs` at most:
/// the response is then aborted (the connection ends without the last chunk, never as a
/// complete page), and the slot serves the next query although the client's connection
/// is still open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_page_is_aborted_after_the_stall_timeout_never_ended_as_complete() {
    let dir = tempdir();
    let (_up, _gw, base) = gateway_over_large_rows(
        dir.path(),
        24,
        1 << 20,
        "  query: {maxConcurrent: 1, stallTimeoutMs: 1000}\n",
    )
    .await;
    let mut stalled = slow_reader(&base, "limit=1000");
    let (status, _, _) = raw_query(&base, "limit=1").await;
    assert_eq!(status, 503, "the only slot is held by the stalled page");
    // Once the stall timeout passed, the slot is free again.
    let mut served = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (status, _, body) = raw_query(&base, "limit=1").await;
        if status == 200 {
            let v: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v["count"], 1);
            served = true;
            break;
        }
    }
    assert!(served, "the stalled page gave its slot back");
    // The stalled client, reading now, finds its page cut: no final chunk.
    let mut rest = Vec::new();
    let _ = stalled.read_to_end(&mut rest);
    assert!(
        !rest.ends_with(b"0\r\n\r\n"),
        "an aborted page ended as complete"
    );
    assert!(rest.len() < 8 << 20);
}
