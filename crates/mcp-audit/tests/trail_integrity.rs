//! The trail cannot be wedged: one writer per SQLite trail, a failing or hanging sink
//! holds up neither the other sinks nor the shutdown, a write conflict re-reads the
//! chain head, and a configuration check writes nothing.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::field_reassign_with_default
)]

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use mcp_audit::sink::sqlite::SqliteSink;
use mcp_audit::sink::{AuditSink, BoxFuture, SinkError};
use mcp_audit::{AuditConfig, AuditEvent, Auditor, Storage, StorageList, verify_sqlite};
use rusqlite::Connection;

/// Keeps every event it is given (a real in-memory destination).
#[derive(Clone, Default)]
struct Memory(Arc<Mutex<Vec<String>>>);

impl AuditSink for Memory {
    fn name(&self) -> &str {
        "memory"
    }
    fn write_batch(
        &mut self,
        batch: Arc<[mcp_audit::event::SinkEvent]>,
    ) -> BoxFuture<'_, Result<(), SinkError>> {
        self.0
            .lock()
            .unwrap()
            .extend(batch.iter().map(|e| e.json.to_string()));
        Box::pin(async { Ok(()) })
    }
}

/// Fails every write, as a full disk or a revoked database would.
struct Broken;

impl AuditSink for Broken {
    fn name(&self) -> &str {
        "broken"
    }
    fn write_batch(
        &mut self,
        _batch: Arc<[mcp_audit::event::SinkEvent]>,
    ) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async { Err(SinkError::new("broken", "disk full")) })
    }
}

/// Never completes a write (a pipe nobody reads, a hung network file system).
struct Hung;

impl AuditSink for Hung {
    fn name(&self) -> &str {
        "hung"
    }
    fn write_batch(
        &mut self,
        _batch: Arc<[mcp_audit::event::SinkEvent]>,
    ) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(std::future::pending())
    }
}

fn cfg(shutdown_ms: u64) -> AuditConfig {
    let mut c = AuditConfig::default();
    c.storage = StorageList::One(Storage::Tracing);
    c.queue.shutdown_timeout_ms = shutdown_ms;
    c
}

async fn wait_for(mut f: impl FnMut() -> bool) -> bool {
    for _ in 0..1200 {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    false
}

/// Runs `shutdown` on a separate task and waits for it, up to a wide margin.
async fn shutdown_ends(a: &Auditor) -> bool {
    let a = a.clone();
    let t = tokio::spawn(async move { a.shutdown().await });
    tokio::time::timeout(Duration::from_secs(60), t)
        .await
        .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_sink_does_not_stall_the_others() {
    let mem = Memory::default();
    let auditor = Auditor::builder(cfg(1000))
        .sink(Broken)
        .sink(mem.clone())
        .start()
        .unwrap();
    let addr = serve(app(&auditor)).await;
    let c = client();
    for i in 0..20 {
        assert_eq!(send(&c, call(addr, "alice", i, None)).await.status, 200);
    }
    assert!(
        wait_for(|| mem.0.lock().unwrap().len() >= 20).await,
        "the healthy sink got {} of 20 events",
        mem.0.lock().unwrap().len()
    );
    assert!(auditor.stats().sink_errors() > 0);
    assert!(shutdown_ends(&auditor).await, "shutdown never ended");
    // Every event reached the healthy sink, the shutdown event included; the broken
    // sink's losses are counted.
    assert!(mem.0.lock().unwrap().iter().any(|e| e.contains("shutdown")));
    let lost: u64 = auditor
        .lost_by_sink()
        .into_iter()
        .filter(|(n, _)| n == "broken")
        .map(|(_, l)| l)
        .sum();
    assert!(lost >= 21, "lost {lost}");
    assert!(auditor.stats().dropped() >= 21);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_sink_does_not_stall_the_others_nor_the_shutdown() {
    let mem = Memory::default();
    let auditor = Auditor::builder(cfg(500))
        .sink(Hung)
        .sink(mem.clone())
        .start()
        .unwrap();
    for _ in 0..10 {
        auditor.handle().record(AuditEvent::startup()).await;
    }
    assert!(wait_for(|| mem.0.lock().unwrap().len() >= 10).await);
    assert!(shutdown_ends(&auditor).await, "shutdown never ended");
    assert!(mem.0.lock().unwrap().iter().any(|e| e.contains("shutdown")));
}

/// Batches queued before the shutdown (the sink already retrying them) are held to the
/// shutdown's deadline too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shutdown_deadline_holds_for_batches_queued_before_it() {
    let auditor = Auditor::builder(cfg(300)).sink(Broken).start().unwrap();
    for _ in 0..5 {
        auditor.handle().record(AuditEvent::startup()).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The writer is deep in its backoff on the first batches.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(shutdown_ends(&auditor).await, "shutdown never ended");
    assert!(auditor.stats().dropped() >= 6, "{:?}", auditor.stats());
}

#[test]
fn a_second_sqlite_writer_fails_at_once_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("trail.db");
    let first = SqliteSink::open(&db, 0).unwrap();
    let err = SqliteSink::open(&db, 0).unwrap_err().to_string();
    assert!(err.contains(db.to_str().unwrap()), "{err}");
    assert!(err.contains("another writer"), "{err}");
    // Through a relative spelling of the same file too.
    let rel = dir.path().join(".").join("trail.db");
    assert!(SqliteSink::open(&rel, 0).is_err());
    // Readers are not writers: the verifier reads while the sink holds the trail.
    assert!(verify_sqlite(&db).unwrap().is_intact());
    drop(first);
    drop(SqliteSink::open(&db, 0).unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_auditor_on_one_trail_fails_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = AuditConfig::default();
    c.database.sqlite_path = dir.path().join("a.db");
    let first = Auditor::from_config(c.clone()).await.unwrap();
    let err = Auditor::from_config(c.clone())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("a.db"), "{err}");
    first.shutdown().await;
    drop(first);
    let again = Auditor::from_config(c).await.unwrap();
    again.shutdown().await;
}

/// A row appended behind the sink's back: the next write conflicts on `seq`; the sink
/// re-reads the head and the retry lands after the foreign row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_conflict_rereads_the_chain_head() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.db");
    let mut c = AuditConfig::default();
    c.database.sqlite_path = db.clone();
    let auditor = Auditor::from_config(c).await.unwrap();
    auditor.handle().record(AuditEvent::startup()).await;
    auditor.flush().await;
    foreign_row(&db);
    auditor.handle().record(AuditEvent::startup()).await;
    let done = tokio::time::timeout(Duration::from_secs(60), auditor.flush()).await;
    assert!(done.is_ok(), "the sink never wrote again");
    assert!(shutdown_ends(&auditor).await);
    let conn = Connection::open(&db).unwrap();
    let kinds: Vec<String> = conn
        .prepare("SELECT event_id FROM audit_events ORDER BY seq")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(kinds.len(), 4, "{kinds:?}");
    assert_eq!(kinds[1], "foreign");
    // The foreign row is not on the chain: the verifier says so.
    assert!(!verify_sqlite(&db).unwrap().is_intact());
}

fn foreign_row(db: &Path) {
    let conn = Connection::open(db).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    let (seq, hash): (i64, String) = conn
        .query_row(
            "SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    conn.execute(
        "INSERT INTO audit_events (seq, event_id, ts_us, kind, event, prev_hash, hash) \
         VALUES (?1, 'foreign', 0, 'shutdown', '{}', ?2, 'ffff')",
        rusqlite::params![seq + 1, hash],
    )
    .unwrap();
}

/// `without_storage` validates, opens nothing and writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_storage_opens_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = AuditConfig::default();
    c.storage = StorageList::Many(vec![Storage::Database, Storage::File]);
    c.database.sqlite_path = dir.path().join("a.db");
    c.file.path = dir.path().join("a.jsonl");
    let a = Auditor::without_storage(c.clone()).unwrap();
    a.handle().record(AuditEvent::startup()).await;
    a.shutdown().await;
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    assert!(a.query_service().is_none());
    // It validates as from_config does.
    c.format = "xml".into();
    assert!(Auditor::without_storage(c).is_err());
    // And a live writer on the trail is not disturbed by it.
    let mut live = AuditConfig::default();
    live.database.sqlite_path = dir.path().join("live.db");
    let running = Auditor::from_config(live.clone()).await.unwrap();
    let check = Auditor::without_storage(live).unwrap();
    check.shutdown().await;
    running.handle().record(AuditEvent::startup()).await;
    running.shutdown().await;
    assert!(
        verify_sqlite(dir.path().join("live.db"))
            .unwrap()
            .is_intact()
    );
}
