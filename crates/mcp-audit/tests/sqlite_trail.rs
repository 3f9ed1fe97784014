//! The audit layer over real sockets into a real SQLite file (and a JSON lines file).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::field_reassign_with_default
)]

mod common;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use mcp_audit::chain::Tampering;
use mcp_audit::sink::sqlite::SqliteSink;
use mcp_audit::sink::{AuditSink, BoxFuture, SinkError};
use mcp_audit::{
    AuditConfig, AuditEvent, AuditRecord, Auditor, OverflowPolicy, Storage, StorageList,
    verify_jsonl, verify_sqlite,
};
use rusqlite::Connection;

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

fn records(db: &Path) -> Vec<AuditRecord> {
    let c = Connection::open(db).unwrap();
    let mut s = c
        .prepare("SELECT event FROM audit_events ORDER BY seq")
        .unwrap();
    s.query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .map(|j| serde_json::from_str(&j.unwrap()).unwrap())
        .collect()
}

fn requests(recs: &[AuditRecord]) -> Vec<&AuditRecord> {
    recs.iter().filter(|r| r.http_status.is_some()).collect()
}

fn files_bytes(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            let b = std::fs::read(&p).unwrap();
            (p, b)
        })
        .collect()
}

/// Deletes the oldest kept row behind the writer's back: verification must find it
/// (the anchor left by retention makes the first kept row checkable too).
fn delete_oldest_is_found(c: &Connection, db: &Path) {
    c.execute(
        "DELETE FROM audit_events WHERE seq = (SELECT min(seq) FROM audit_events)",
        [],
    )
    .unwrap();
    assert!(matches!(
        verify_sqlite(db).unwrap().problem,
        Some(Tampering::Deleted { .. })
    ));
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_produce_exactly_n_rows_with_reasons() {
    let dir = tempfile::tempdir().unwrap();
    // One row per request, refusals included: their aggregation is tested in
    // tests/refusal_aggregation.rs.
    let mut cfg = config(dir.path());
    cfg.aggregate_refusals.enabled = false;
    let auditor = Auditor::from_config(cfg).await.unwrap();
    let addr = serve(app(&auditor)).await;
    let c = client();
    const N: usize = 240;
    let mut tasks = Vec::new();
    for i in 0..N {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let (user, deny) = match i % 8 {
                0 => ("", None),            // no credential: auth_failed
                1 => ("bob", Some("rate")), // rate_limited
                2 => ("bob", Some("rule")), // blocked_by_rule
                3 => ("carol", None),
                _ => ("alice", None),
            };
            let r = send(&c, call(addr, user, i, deny)).await;
            (
                i,
                r.status.as_u16(),
                r.headers["x-request-id"].to_str().unwrap().to_owned(),
            )
        }));
    }
    let mut ids = HashMap::new();
    for t in tasks {
        let (i, status, rid) = t.await.unwrap();
        ids.insert(rid, (i, status));
    }
    assert_eq!(ids.len(), N, "every response has its own request id");
    wait_written(&auditor, N as u64).await;
    auditor.shutdown().await;

    let recs = records(&dir.path().join("audit.db"));
    let reqs = requests(&recs);
    assert_eq!(reqs.len(), N, "exactly one row per request");
    let mut by_reason: HashMap<Option<String>, usize> = HashMap::new();
    let mut seen = HashSet::new();
    for r in &reqs {
        *by_reason.entry(r.reason.clone()).or_default() += 1;
        let rid = r.request_id.clone().unwrap();
        let (i, status) = ids[&rid];
        assert!(seen.insert(rid), "one row per request id");
        assert_eq!(r.http_status, Some(status));
        assert_eq!(r.client_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(r.http_method.as_deref(), Some("POST"));
        assert_eq!(r.path.as_deref(), Some("/mcp"));
        assert_ne!(
            r.user.as_deref(),
            Some("mallory"),
            "never the X-User-ID header"
        );
        match i % 8 {
            0 => {
                assert_eq!(r.kind, Some(mcp_audit::EventKind::AuthFailure));
                assert_eq!(r.reason.as_deref(), Some("auth_failed"));
                assert_eq!(r.jsonrpc_error_code, Some(-32001));
                assert_eq!(r.user, None);
                assert_eq!(r.status, Some(mcp_audit::Outcome::Denied));
            }
            1 => {
                assert_eq!(r.reason.as_deref(), Some("rate_limited"));
                assert_eq!(r.user.as_deref(), Some("bearer:bob"));
                assert_eq!(r.tool.as_deref(), Some("search"));
            }
            2 => {
                assert_eq!(r.reason.as_deref(), Some("blocked_by_rule"));
                assert_eq!(r.detail.as_deref(), Some("no-shell-metachars"));
                assert_eq!(r.jsonrpc_error_code, Some(-32602));
            }
            _ => {
                assert_eq!(r.status, Some(mcp_audit::Outcome::Success));
                assert_eq!(r.kind, Some(mcp_audit::EventKind::Request));
                assert_eq!(r.mcp_method.as_deref(), Some("tools/call"));
                assert_eq!(r.tool.as_deref(), Some("search"));
                assert_eq!(r.upstream.as_deref(), Some("upstream-a"));
                assert_eq!(r.auth_method.as_deref(), Some("bearer_token"));
                assert_eq!(r.credential_id.as_deref(), Some("token-1"));
                assert!(r.bytes_in.unwrap() > 100);
                assert!(r.bytes_out.unwrap() > 10);
                assert!(r.duration_ms.is_some());
                let args = &r.params.as_ref().unwrap()["arguments"];
                assert_eq!(args["q"], format!("query {i}"));
                assert_eq!(args["password"], "***REDACTED***");
                assert_eq!(args["nested"][0]["deeper"]["apiKey"], "***REDACTED***");
                assert_eq!(args["nested"][1], "***REDACTED***");
            }
        }
    }
    assert_eq!(by_reason[&Some("auth_failed".to_owned())], N / 8);
    assert_eq!(by_reason[&Some("rate_limited".to_owned())], N / 8);
    assert_eq!(by_reason[&Some("blocked_by_rule".to_owned())], N / 8);
    assert_eq!(by_reason[&None], N - 3 * N / 8);
    // The shutdown event is there too, and both trails verify.
    assert!(
        recs.iter()
            .any(|r| r.kind == Some(mcp_audit::EventKind::Shutdown))
    );
    assert!(
        verify_sqlite(dir.path().join("audit.db"))
            .unwrap()
            .is_intact()
    );
    let v = verify_jsonl(dir.path().join("audit.jsonl")).unwrap();
    assert!(v.is_intact());
    assert_eq!(v.records as usize, recs.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_bytes_anywhere_in_the_trail_files() {
    let dir = tempfile::tempdir().unwrap();
    let auditor = Auditor::from_config(config(dir.path())).await.unwrap();
    let addr = serve(app(&auditor)).await;
    let c = client();
    for i in 0..20 {
        let deny = [None, Some("rule")][i % 2];
        send(&c, call(addr, "alice", i, deny)).await;
    }
    send(&c, call(addr, "", 99, None)).await;
    wait_written(&auditor, 21).await;
    // Check before shutdown too, while the WAL holds the data.
    let mut checked = 0;
    for (p, bytes) in files_bytes(dir.path()) {
        for s in [
            SECRET_PASSWORD,
            SECRET_HEADER,
            SECRET_APIKEY,
            "AKIAIOSFODNN7EXAMPLE",
        ] {
            assert!(!contains(&bytes, s), "{s} found in {}", p.display());
        }
        checked += 1;
    }
    assert!(
        checked >= 3,
        "database, its WAL and the JSON lines file were read"
    );
    let wal = std::fs::read(dir.path().join("audit.db-wal")).unwrap();
    assert!(contains(&wal, "***REDACTED***"), "events did reach the WAL");
    auditor.shutdown().await;
    for (p, bytes) in files_bytes(dir.path()) {
        for s in [SECRET_PASSWORD, SECRET_HEADER, SECRET_APIKEY] {
            assert!(!contains(&bytes, s), "{s} found in {}", p.display());
        }
    }
    // Headers are recorded, with the sensitive ones redacted, in both sinks.
    let recs = records(&dir.path().join("audit.db"));
    let h = requests(&recs)[0].headers.clone().unwrap();
    assert_eq!(h["cookie"], "***REDACTED***");
    assert_eq!(h["x-api-key"], "***REDACTED***");
    assert_eq!(h["authorization"], "***REDACTED***");
    assert_eq!(h["content-type"], "application/json");
    let jsonl = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap();
    assert!(jsonl.contains(r#""x-api-key":"***REDACTED***""#));
}

#[tokio::test]
async fn request_ids_are_generated_unless_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let auditor = Auditor::from_config(config(dir.path())).await.unwrap();
    let addr = serve(app(&auditor)).await;
    let mut req = call(addr, "alice", 1, None);
    req.headers_mut()
        .insert("x-request-id", "client-chosen".parse().unwrap());
    let r = send(&client(), req).await;
    let rid = r.headers["x-request-id"].to_str().unwrap().to_owned();
    assert_ne!(rid, "client-chosen");
    assert_eq!(uuid::Uuid::parse_str(&rid).unwrap().get_version_num(), 7);
    auditor.shutdown().await;

    let dir2 = tempfile::tempdir().unwrap();
    let mut cfg = config(dir2.path());
    cfg.trust_request_id = true;
    let auditor = Auditor::from_config(cfg).await.unwrap();
    // Trusted, but the peer is not known to be a trusted proxy: not believed.
    let bare = serve(app(&auditor)).await;
    // The peer (127.0.0.1) is not a trusted proxy: not believed either.
    let untrusted = serve(app(&auditor).layer(mcp_core::ClientAddrLayer::new(
        mcp_core::TrustedProxies::new(["10.0.0.0/8".parse().unwrap()]),
    )))
    .await;
    for addr in [bare, untrusted] {
        let mut req = call(addr, "alice", 1, None);
        req.headers_mut()
            .insert("x-request-id", "client-forged-7".parse().unwrap());
        let r = send(&client(), req).await;
        assert_ne!(r.headers["x-request-id"], "client-forged-7");
        assert_eq!(r.headers["x-request-id"].len(), 36);
    }
    // From a trusted proxy (the peer, 127.0.0.1, is one): believed.
    let addr = serve(app(&auditor).layer(mcp_core::ClientAddrLayer::new(
        mcp_core::TrustedProxies::new(["127.0.0.0/8".parse().unwrap()]),
    )))
    .await;
    let mut req = call(addr, "alice", 1, None);
    req.headers_mut()
        .insert("x-request-id", "proxy-set-42".parse().unwrap());
    let r = send(&client(), req).await;
    assert_eq!(r.headers["x-request-id"], "proxy-set-42");
    let mut req = call(addr, "alice", 1, None);
    req.headers_mut()
        .insert("x-request-id", "x".repeat(200).parse().unwrap());
    let r = send(&client(), req).await;
    assert_eq!(r.headers["x-request-id"].len(), 36, "overlong id replaced");
    wait_written(&auditor, 4).await;
    auditor.shutdown().await;
    let recs = records(&dir2.path().join("audit.db"));
    let ids: Vec<_> = requests(&recs)
        .iter()
        .map(|r| r.request_id.clone().unwrap())
        .collect();
    assert!(ids.iter().any(|i| i == "proxy-set-42"), "{ids:?}");
    assert!(!ids.iter().any(|i| i == "client-forged-7"), "{ids:?}");
}

#[tokio::test]
async fn streamed_response_counted_in_full() {
    let dir = tempfile::tempdir().unwrap();
    let auditor = Auditor::from_config(config(dir.path())).await.unwrap();
    let addr = serve(app(&auditor)).await;
    let req = http::Request::get(format!("http://{addr}/sse"))
        .header("authorization", "Bearer user-alice")
        .body(full(""))
        .unwrap();
    let r = send(&client(), req).await;
    assert_eq!(r.body.matches("data: chunk-").count(), 5);
    wait_written(&auditor, 1).await;
    auditor.shutdown().await;
    let recs = records(&dir.path().join("audit.db"));
    let ev = requests(&recs)[0];
    assert_eq!(ev.bytes_out, Some(r.body.len() as u64));
    // Five chunks 5 ms apart: the duration covers the stream, not just the headers.
    assert!(ev.duration_ms.unwrap() >= 20.0, "{:?}", ev.duration_ms);
}

#[tokio::test]
async fn lifecycle_and_auth_failure_events() {
    let dir = tempfile::tempdir().unwrap();
    let auditor = Auditor::from_config(config(dir.path())).await.unwrap();
    let h = auditor.handle();
    h.record(AuditEvent::startup().with_message("mcp-gateway 0.1.0"))
        .await;
    h.record(
        AuditEvent::config_reload()
            .with_data(serde_json::json!({"changed": ["auth"], "token": "should-not-appear"})),
    )
    .await;
    h.record(
        AuditEvent::auth_failure()
            .with_detail("certificate_expired")
            .with_client_ip("192.0.2.7".parse().unwrap()),
    )
    .await;
    auditor.shutdown().await;
    let recs = records(&dir.path().join("audit.db"));
    let kinds: Vec<_> = recs.iter().map(|r| r.kind.unwrap().as_str()).collect();
    assert_eq!(
        kinds,
        ["startup", "config_reload", "auth_failure", "shutdown"]
    );
    assert_eq!(recs[1].data.as_ref().unwrap()["token"], "***REDACTED***");
    assert_eq!(recs[2].reason.as_deref(), Some("auth_failed"));
    assert_eq!(recs[2].detail.as_deref(), Some("certificate_expired"));
    assert_eq!(recs[2].client_ip.as_deref(), Some("192.0.2.7"));
}

fn copy_db(src: &Path, dst: &Path) {
    let c = Connection::open(src).unwrap();
    c.execute("VACUUM INTO ?1", [dst.to_str().unwrap()])
        .unwrap();
}

#[tokio::test]
async fn verify_finds_deleted_inserted_and_edited_rows() {
    let dir = tempfile::tempdir().unwrap();
    let auditor = Auditor::from_config(config(dir.path())).await.unwrap();
    for i in 0..10 {
        auditor
            .handle()
            .record(AuditEvent::config_reload().with_message(format!("reload {i}")))
            .await;
    }
    auditor.shutdown().await;
    let db = dir.path().join("audit.db");
    assert!(verify_sqlite(&db).unwrap().is_intact());

    let tamper = |name: &str, sql: &str| {
        let p = dir.path().join(name);
        copy_db(&db, &p);
        Connection::open(&p).unwrap().execute_batch(sql).unwrap();
        verify_sqlite(&p).unwrap().problem
    };
    assert_eq!(
        tamper("del.db", "DELETE FROM audit_events WHERE seq = 4"),
        Some(Tampering::Deleted {
            first: 4,
            last: 4,
            next: 5
        })
    );
    assert_eq!(
        tamper(
            "edit.db",
            "UPDATE audit_events SET event = replace(event, 'reload 6', 'reload X') WHERE seq = 7"
        ),
        Some(Tampering::Altered { seq: 7 })
    );
    assert_eq!(
        tamper(
            "col.db",
            "UPDATE audit_events SET user_id = 'alice' WHERE seq = 3"
        ),
        Some(Tampering::Altered { seq: 3 })
    );
    // An inserted row, renumbering the ones after it.
    assert_eq!(
        tamper(
            "ins.db",
            "UPDATE audit_events SET seq = seq + 100 WHERE seq > 5;
             UPDATE audit_events SET seq = seq - 99 WHERE seq > 100;
             INSERT INTO audit_events SELECT 6, 'evil', ts_us, kind, request_id, user_id, tool,
               mcp_method, outcome, http_status, reason, event, hash, hash, jsonrpc_id FROM audit_events WHERE seq = 5;"
        )
        .map(|t| matches!(t, Tampering::Inserted { seq: 6 } | Tampering::Altered { seq: 6 })),
        Some(true)
    );
    // The file trail too.
    let jsonl = dir.path().join("audit.jsonl");
    assert!(verify_jsonl(&jsonl).unwrap().is_intact());
    let text = std::fs::read_to_string(&jsonl).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut cut = lines.clone();
    cut.remove(2);
    std::fs::write(&jsonl, cut.join("\n") + "\n").unwrap();
    assert_eq!(
        verify_jsonl(&jsonl).unwrap().problem,
        Some(Tampering::Deleted {
            first: 3,
            last: 3,
            next: 4
        })
    );
    let edited = text.replace("reload 2", "reload 9");
    std::fs::write(&jsonl, edited).unwrap();
    assert_eq!(
        verify_jsonl(&jsonl).unwrap().problem,
        Some(Tampering::Altered { seq: 3 })
    );
}

#[tokio::test]
async fn retention_prunes_and_keeps_verification_meaningful() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.storage = StorageList::One(Storage::Database);
    cfg.database.max_records = 10;
    cfg.queue.batch_size = 4;
    let auditor = Auditor::from_config(cfg.clone()).await.unwrap();
    for i in 0..34 {
        auditor
            .handle()
            .record(AuditEvent::config_reload().with_message(format!("r{i}")))
            .await;
    }
    auditor.shutdown().await;
    let db = dir.path().join("audit.db");
    let c = Connection::open(&db).unwrap();
    let n: i64 = c
        .query_row("SELECT count(*) FROM audit_events", [], |r| r.get(0))
        .unwrap();
    assert!((10..14).contains(&n), "{n} rows kept");
    let report = verify_sqlite(&db).unwrap();
    assert!(report.is_intact(), "{report:?}");
    let anchor = report.anchor.unwrap();
    assert_eq!(report.head.seq, 35);
    assert_eq!(anchor.seq + n, 35);
    // Deleting the oldest kept row is still found, thanks to the anchor.
    delete_oldest_is_found(&c, &db);
    drop(c);
    // A restarted writer resumes the chain.
    let mut cfg2 = cfg;
    cfg2.database.max_records = 0;
    let p2 = dir.path().join("resume.db");
    cfg2.database.sqlite_path = p2.clone();
    for _ in 0..2 {
        let a = Auditor::from_config(cfg2.clone()).await.unwrap();
        a.handle().record(AuditEvent::startup()).await;
        a.shutdown().await;
    }
    let r = verify_sqlite(&p2).unwrap();
    assert!(r.is_intact());
    assert_eq!(r.records, 4);
}

/// Retention prunes in bulk: the table never holds `maxRecords + prune_slack` rows or
/// more, is cut back to exactly `maxRecords`, the anchor moves with each cut, and the
/// trail verifies after every batch, across prunes and across a restart of the writer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_retention_stays_bounded_and_verifies_across_prunes() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.db");
    let mut cfg = config(dir.path());
    cfg.storage = StorageList::One(Storage::Database);
    cfg.database.max_records = 2_000;
    cfg.queue.batch_size = 64;
    let max = 2_000i64;
    let slack = mcp_audit::sink::prune_slack(2_000) as i64;
    assert_eq!(slack, 200);
    let count = |c: &Connection| -> i64 {
        c.query_row("SELECT count(*) FROM audit_events", [], |r| r.get(0))
            .unwrap()
    };
    let mut anchors = Vec::new();
    let mut sent = 0i64;
    for round in 0..2 {
        let auditor = Auditor::from_config(cfg.clone()).await.unwrap();
        for step in 0..25 {
            for i in 0..97 {
                auditor
                    .handle()
                    .record(AuditEvent::config_reload().with_message(format!("{round}/{step}/{i}")))
                    .await;
            }
            sent += 97;
            auditor.flush().await;
            let c = Connection::open(&db).unwrap();
            let n = count(&c);
            assert!(n < max + slack, "{n} rows kept");
            let report = verify_sqlite(&db).unwrap();
            assert!(report.is_intact(), "round {round} step {step}: {report:?}");
            assert_eq!(report.records as i64, n);
            match &report.anchor {
                Some(a) => {
                    assert_eq!(a.seq + n, report.head.seq);
                    if anchors.last() != Some(&a.seq) {
                        // Right after a cut exactly max records are kept.
                        assert!(n < max + 97, "{n} rows right after a cut");
                        anchors.push(a.seq);
                    }
                }
                None => assert_eq!(n, report.head.seq),
            }
        }
        auditor.shutdown().await;
        sent += 1; // the shutdown event
    }
    let c = Connection::open(&db).unwrap();
    let report = verify_sqlite(&db).unwrap();
    assert!(report.is_intact(), "{report:?}");
    assert_eq!(report.head.seq, sent);
    // Several cuts happened, each by at least the slack.
    assert!(anchors.len() >= 10, "{anchors:?}");
    assert!(
        anchors.windows(2).all(|w| w[1] - w[0] >= slack),
        "{anchors:?}"
    );
    // The first kept record still cannot be deleted unseen.
    delete_oldest_is_found(&c, &db);
}

/// A sink that fails its first `failures` writes, then writes to SQLite.
struct Flaky {
    inner: SqliteSink,
    failures: Arc<AtomicUsize>,
}

impl AuditSink for Flaky {
    fn name(&self) -> &str {
        "flaky"
    }
    fn write_batch(
        &mut self,
        batch: Arc<[mcp_audit::event::SinkEvent]>,
    ) -> BoxFuture<'_, Result<(), SinkError>> {
        if self
            .failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Box::pin(async { Err(SinkError::new("flaky", "disk full")) });
        }
        self.inner.write_batch(batch)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_sink_loses_nothing_within_the_queue_bound() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("flaky.db");
    let failures = Arc::new(AtomicUsize::new(6));
    let mut cfg = AuditConfig::default();
    cfg.queue.capacity = 1000;
    cfg.queue.overflow = OverflowPolicy::Drop;
    let auditor = Auditor::builder(cfg)
        .sink(Flaky {
            inner: SqliteSink::open(&db, 0).unwrap(),
            failures: Arc::clone(&failures),
        })
        .start()
        .unwrap();
    let addr = serve(app(&auditor)).await;
    let c = client();
    const N: usize = 300;
    let mut tasks = Vec::new();
    for i in 0..N {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            send(&c, call(addr, "alice", i, None)).await.status
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200, "the request path is not affected");
    }
    wait_written(&auditor, N as u64).await;
    auditor.shutdown().await;
    assert_eq!(failures.load(Ordering::SeqCst), 0);
    assert!(auditor.stats().sink_errors() >= 6);
    assert_eq!(auditor.stats().dropped(), 0);
    assert_eq!(requests(&records(&db)).len(), N);
    assert!(verify_sqlite(&db).unwrap().is_intact());
}

/// A sink that blocks until released, then writes to SQLite.
struct Gate {
    inner: SqliteSink,
    open: Arc<tokio::sync::Semaphore>,
}

impl AuditSink for Gate {
    fn name(&self) -> &str {
        "gate"
    }
    fn write_batch(
        &mut self,
        batch: Arc<[mcp_audit::event::SinkEvent]>,
    ) -> BoxFuture<'_, Result<(), SinkError>> {
        let open = Arc::clone(&self.open);
        Box::pin(async move {
            let _p = open.acquire().await.unwrap();
            self.inner.write_batch(batch).await
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_drop_policy_counts_losses_and_never_blocks_requests() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("gate.db");
    let open = Arc::new(tokio::sync::Semaphore::new(0));
    let mut cfg = AuditConfig::default();
    cfg.queue.capacity = 4;
    cfg.queue.batch_size = 2;
    cfg.queue.overflow = OverflowPolicy::Drop;
    let auditor = Auditor::builder(cfg)
        .sink(Gate {
            inner: SqliteSink::open(&db, 0).unwrap(),
            open: Arc::clone(&open),
        })
        .start()
        .unwrap();
    let addr = serve(app(&auditor)).await;
    let c = client();
    const N: usize = 60;
    for i in 0..N {
        // The sink is stuck: requests are still served.
        assert_eq!(send(&c, call(addr, "alice", i, None)).await.status, 200);
    }
    let dropped = auditor.stats().dropped();
    assert!(dropped > 0, "a full queue under the drop policy drops");
    open.add_permits(1_000_000);
    // Drops plus writes account for every request.
    for _ in 0..2000 {
        auditor.flush().await;
        if auditor.stats().written() + auditor.stats().dropped() >= N as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    auditor.shutdown().await;
    let rows = requests(&records(&db)).len() as u64;
    assert_eq!(rows + auditor.stats().dropped(), N as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_wait_policy_loses_nothing_when_the_sink_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("wait.db");
    let open = Arc::new(tokio::sync::Semaphore::new(0));
    let mut cfg = AuditConfig::default();
    cfg.queue.capacity = 2;
    cfg.queue.batch_size = 2;
    cfg.queue.overflow = OverflowPolicy::Wait;
    cfg.queue.max_wait_ms = 60_000;
    let auditor = Auditor::builder(cfg)
        .sink(Gate {
            inner: SqliteSink::open(&db, 0).unwrap(),
            open: Arc::clone(&open),
        })
        .start()
        .unwrap();
    let addr = serve(app(&auditor)).await;
    let c = client();
    const N: usize = 40;
    let mut tasks = Vec::new();
    for i in 0..N {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            send(&c, call(addr, "alice", i, None)).await.status
        }));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    open.add_permits(1_000_000);
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    wait_written(&auditor, N as u64).await;
    auditor.shutdown().await;
    assert_eq!(auditor.stats().dropped(), 0);
    assert_eq!(requests(&records(&db)).len(), N);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_under_load_flushes_every_event() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("load.db");
    let mut cfg = AuditConfig::default();
    cfg.queue.capacity = 100_000;
    cfg.queue.batch_size = 8;
    // The sink is held closed during the load, so everything is still queued when the
    // shutdown starts.
    let open = Arc::new(tokio::sync::Semaphore::new(0));
    let auditor = Auditor::builder(cfg)
        .sink(Gate {
            inner: SqliteSink::open(&db, 0).unwrap(),
            open: Arc::clone(&open),
        })
        .start()
        .unwrap();
    // Count the requests that enter the audit layer.
    let entered = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&entered);
    let app = app(&auditor).layer(axum::middleware::from_fn(
        move |req: axum::extract::Request, next: axum::middleware::Next| {
            counter.fetch_add(1, Ordering::SeqCst);
            next.run(req)
        },
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .with_graceful_shutdown(async {
            let _ = stop_rx.await;
        })
        .await
        .unwrap();
    });
    // Load: 8 clients sending as fast as they can until the server goes away.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for k in 0..8 {
        let stop = Arc::clone(&stop);
        clients.push(tokio::spawn(async move {
            let c = client();
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                if c.request(call(addr, "alice", k * 100_000 + i, None))
                    .await
                    .is_err()
                {
                    break;
                }
                i += 1;
            }
        }));
    }
    while entered.load(Ordering::SeqCst) < 300 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // SIGTERM: the server drains, then the auditor flushes.
    let _ = stop_tx.send(());
    stop.store(true, Ordering::SeqCst);
    server.await.unwrap();
    for c in clients {
        let _ = c.await;
    }
    assert_eq!(
        auditor.stats().written(),
        0,
        "the backlog is whole at shutdown"
    );
    let shutdown = tokio::spawn({
        let a = auditor.clone();
        async move { a.shutdown().await }
    });
    open.add_permits(1_000_000);
    shutdown.await.unwrap();
    let n = entered.load(Ordering::SeqCst);
    assert_eq!(requests(&records(&db)).len(), n, "every event flushed");
    assert_eq!(auditor.stats().dropped(), 0);
    assert!(verify_sqlite(&db).unwrap().is_intact());
}

#[tokio::test]
async fn warn_level_keeps_only_refusals_failures_and_lifecycle() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.level = mcp_audit::AuditLevel::Warn;
    let auditor = Auditor::from_config(cfg).await.unwrap();
    let addr = serve(app(&auditor)).await;
    let c = client();
    for i in 0..6 {
        send(&c, call(addr, "alice", i, None)).await;
    }
    send(&c, call(addr, "alice", 7, Some("rate"))).await;
    send(&c, call(addr, "", 8, None)).await;
    auditor.handle().record(AuditEvent::startup()).await;
    wait_written(&auditor, 3).await;
    auditor.shutdown().await;
    let recs = records(&dir.path().join("audit.db"));
    let reasons: Vec<_> = requests(&recs)
        .iter()
        .map(|r| r.reason.clone().unwrap())
        .collect();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(reasons.contains(&"rate_limited".to_owned()));
    assert!(reasons.contains(&"auth_failed".to_owned()));
    assert_eq!(recs.len(), 4, "plus startup and shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_gone_mid_stream_is_still_recorded() {
    use http_body_util::BodyExt;
    let dir = tempfile::tempdir().unwrap();
    let auditor = Auditor::from_config(config(dir.path())).await.unwrap();
    let addr = serve(app(&auditor)).await;
    // A GET stream (server notifications) and a POST answered as a stream (a tool call's
    // progress, then its result): the client goes away after the first event of each.
    let mut firsts = Vec::new();
    for method in [http::Method::GET, http::Method::POST] {
        let body = if method == http::Method::POST {
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"count"}}"#
        } else {
            ""
        };
        let req = http::Request::builder()
            .method(method)
            .uri(format!("http://{addr}/sse"))
            .header("authorization", "Bearer user-alice")
            .header("content-type", "application/json")
            .body(full(body))
            .unwrap();
        let resp = client().request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let mut body = resp.into_body();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert!(first.starts_with(b"data: chunk-0"));
        drop(body);
        firsts.push(first.len() as u64);
        wait_written(&auditor, firsts.len() as u64).await;
    }
    auditor.shutdown().await;
    let recs = records(&dir.path().join("audit.db"));
    let reqs = requests(&recs);
    assert_eq!(reqs.len(), 2);
    for (ev, first) in reqs.iter().zip(&firsts) {
        assert_eq!(ev.user.as_deref(), Some("bearer:alice"));
        assert_eq!(ev.http_status, Some(200));
        let sent = ev.bytes_out.unwrap();
        assert!(sent >= *first, "{sent}");
        assert!(sent < 5 * first, "only part of the stream was sent: {sent}");
    }
    // A GET stream normally ends when the client leaves; a POST's answer was not taken
    // whole, so its outcome says so.
    assert_eq!(reqs[0].http_method.as_deref(), Some("GET"));
    assert_eq!(reqs[0].status, Some(mcp_audit::Outcome::Success));
    assert_eq!(reqs[1].http_method.as_deref(), Some("POST"));
    assert_eq!(reqs[1].status, Some(mcp_audit::Outcome::Cancelled));
}

/// Attack: a client starts a tool call and hangs up before the answer, hoping to leave an
/// anonymous record while the upstream runs the call. The record names the caller, the
/// tool and its (masked) arguments, with the outcome `cancelled`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_abandoned_before_its_response_is_recorded_with_caller_and_tool() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let auditor = Auditor::from_config(config(dir.path())).await.unwrap();
    let addr = serve(app(&auditor)).await;
    let (head, body) = call(addr, "alice", 7, Some("hang")).into_parts();
    let body = http_body_util::BodyExt::collect(body)
        .await
        .unwrap()
        .to_bytes();
    let mut raw = format!("POST /mcp HTTP/1.1\r\nhost: {addr}\r\n");
    for (k, v) in &head.headers {
        raw.push_str(&format!("{k}: {}\r\n", v.to_str().unwrap()));
    }
    raw.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(raw.as_bytes()).await.unwrap();
    s.write_all(&body).await.unwrap();
    // The request reaches the handler that never answers; then the client is gone.
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(s);
    wait_written(&auditor, 1).await;
    auditor.shutdown().await;
    let recs = records(&dir.path().join("audit.db"));
    let ev: Vec<_> = recs
        .iter()
        .filter(|r| r.kind == Some(mcp_audit::event::EventKind::Request))
        .collect();
    assert_eq!(ev.len(), 1, "{recs:?}");
    let ev = ev[0];
    assert_eq!(ev.status, Some(mcp_audit::Outcome::Cancelled));
    assert_eq!(ev.http_status, None);
    assert_eq!(ev.user.as_deref(), Some("bearer:alice"));
    assert_eq!(ev.tool.as_deref(), Some("search"));
    assert_eq!(ev.mcp_method.as_deref(), Some("tools/call"));
    let params = ev.params.as_ref().unwrap().to_string();
    assert!(params.contains("query 7"), "{params}");
    assert!(!params.contains(SECRET_PASSWORD), "{params}");
    // The query API finds it under its own status, not under `failed`.
    let store = mcp_audit::sink::sqlite::SqliteStore::open(dir.path().join("audit.db")).unwrap();
    let q = mcp_audit::query::parse_query(Some("status=cancelled"), 100).unwrap();
    let page = mcp_audit::query::AuditStore::query(&store, q)
        .await
        .unwrap();
    assert_eq!(page.records.len(), 1);
    let q = mcp_audit::query::parse_query(Some("status=failed"), 100).unwrap();
    let page = mcp_audit::query::AuditStore::query(&store, q)
        .await
        .unwrap();
    assert_eq!(page.records.len(), 0);
}

/// A trail written before the `jsonrpc_id` column verifies as it is, and the sink adds
/// the column when it opens it, then chains on with ids in the column.
#[tokio::test]
async fn a_trail_without_the_jsonrpc_id_column_is_migrated_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.db");
    let auditor = Auditor::from_config(config(dir.path())).await.unwrap();
    for i in 0..3 {
        auditor
            .handle()
            .record(AuditEvent::config_reload().with_message(format!("r{i}")))
            .await;
    }
    auditor.shutdown().await;
    let columns = |db: &Path| -> Vec<String> {
        let c = Connection::open(db).unwrap();
        let mut s = c
            .prepare("SELECT name FROM pragma_table_info('audit_events')")
            .unwrap();
        s.query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    Connection::open(&db)
        .unwrap()
        .execute_batch("ALTER TABLE audit_events DROP COLUMN jsonrpc_id")
        .unwrap();
    assert!(!columns(&db).contains(&"jsonrpc_id".to_owned()));
    assert!(verify_sqlite(&db).unwrap().is_intact());

    let auditor = Auditor::from_config(config(dir.path())).await.unwrap();
    assert!(columns(&db).contains(&"jsonrpc_id".to_owned()));
    let addr = serve(app(&auditor)).await;
    let c = client();
    for i in [41, 42] {
        send(&c, call(addr, "alice", i, None)).await;
    }
    wait_written(&auditor, 2).await;
    auditor.shutdown().await;
    let conn = Connection::open(&db).unwrap();
    let ids: Vec<Option<String>> = conn
        .prepare("SELECT jsonrpc_id FROM audit_events WHERE kind = 'request' ORDER BY seq")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(ids, [Some("41".to_owned()), Some("42".to_owned())]);
    let report = verify_sqlite(&db).unwrap();
    assert!(report.is_intact(), "{report:?}");
}
