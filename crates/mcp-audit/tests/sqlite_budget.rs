//! The SQLite trail's byte budget (`database.maxBytes`), on a real SQLite file written by
//! the sink: the database and its WAL stay within the budget plus the documented slack
//! while many times the budget is written, the chain verifies from the pruned range's
//! anchor, a reader holding an old snapshot only delays the WAL's truncation, and the
//! query store reads the remaining records.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::sync::Arc;

use mcp_audit::event::{IndexColumns, SinkEvent};
use mcp_audit::query::{AuditQuery, AuditStore};
use mcp_audit::sink::AuditSink;
use mcp_audit::sink::sqlite::{SqliteSink, SqliteStore, wal_limit};
use mcp_audit::{AuditRecord, EventKind, verify_sqlite};

const MIB: u64 = 1024 * 1024;
const BUDGET: u64 = 2 * MIB;

fn batch(start: usize, n: usize, bytes: usize) -> Arc<[SinkEvent]> {
    let blob = "z".repeat(bytes);
    (start..start + n)
        .map(|i| {
            let rec = AuditRecord {
                event_id: format!("e-{i}"),
                timestamp: "2026-12-01T08:00:00.000000Z".into(),
                kind: Some(EventKind::Request),
                user: Some(format!("apikey:u{}", i % 7)),
                tool: Some(format!("t{}", i % 3)),
                params: Some(serde_json::json!({ "blob": blob, "i": i })),
                http_status: Some(200),
                ..Default::default()
            };
            SinkEvent {
                json: serde_json::to_string(&rec).unwrap().into(),
                columns: IndexColumns::of(&rec),
            }
        })
        .collect()
}

fn on_disk(db: &Path) -> u64 {
    let len = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
    len(db) + len(&db.with_file_name("t.db-wal"))
}

/// Sixteen times the budget, in batches of 32 records of 8 KiB (256 KiB a batch): the
/// files never exceed the budget, the WAL limit and two batches; the chain is intact
/// from its anchor; the newest records are all there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trail_stays_within_its_byte_budget_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("t.db");
    let mut sink = SqliteSink::open(&db, 0).unwrap().max_bytes(BUDGET);
    let slack = wal_limit(BUDGET) + 2 * 32 * 9 * 1024;
    let mut peak = 0;
    let mut written = 0;
    while (written as u64) * 8 * 1024 < 16 * BUDGET {
        sink.write_batch(batch(written, 32, 8 * 1024))
            .await
            .unwrap();
        written += 32;
        peak = peak.max(on_disk(&db));
    }
    eprintln!("figure: 32 MiB written, maxBytes 2 MiB: database + WAL peak {peak} bytes");
    assert!(
        peak <= BUDGET + slack,
        "database + WAL reached {peak} bytes (budget {BUDGET}, slack {slack})"
    );
    drop(sink);
    let report = verify_sqlite(&db).unwrap();
    assert!(report.is_intact(), "{report:?}");
    assert_eq!(report.head.seq, written as i64);
    let anchor = report.anchor.clone().expect("pruned, with an anchor");
    assert_eq!(anchor.seq + report.records as i64, written as i64);
    // Pruned down to about 7/8 of the budget, not to nothing.
    assert!(report.records >= 100, "{report:?}");

    // The store reads what is left, newest first.
    let store = SqliteStore::open(db.clone()).unwrap();
    let page = store
        .query(AuditQuery {
            limit: 10,
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(page.records[0].seq, written as i64);
    let index = store
        .index(AuditQuery {
            limit: 5000,
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(index.len() as u64, report.records);
    assert!(index.iter().all(|r| r.event_bytes > 8 * 1024));
}

/// A reader holding a snapshot keeps the WAL from being reset, so it grows meanwhile;
/// once the reader goes, the next batch checkpoints and truncates it to the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_only_delays_the_wal_truncation() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("t.db");
    let mut sink = SqliteSink::open(&db, 0).unwrap().max_bytes(BUDGET);
    sink.write_batch(batch(0, 32, 8 * 1024)).await.unwrap();
    let reader = rusqlite::Connection::open(&db).unwrap();
    reader.execute_batch("BEGIN").unwrap();
    let _: i64 = reader
        .query_row("SELECT count(*) FROM audit_events", [], |r| r.get(0))
        .unwrap();
    let mut n = 32;
    for _ in 0..40 {
        sink.write_batch(batch(n, 32, 8 * 1024)).await.unwrap();
        n += 32;
    }
    reader.execute_batch("COMMIT").unwrap();
    drop(reader);
    sink.write_batch(batch(n, 32, 8 * 1024)).await.unwrap();
    let wal = std::fs::metadata(db.with_file_name("t.db-wal")).map_or(0, |m| m.len());
    assert!(
        wal <= wal_limit(BUDGET),
        "WAL {wal} bytes after the reader left"
    );
    drop(sink);
    assert!(verify_sqlite(&db).unwrap().is_intact());
}
