//! The shared PostgreSQL trail against a real server started on a free loopback port
//! (crates/mcp-testkit). Needs PostgreSQL installed (scripts/test.sh installs it; on
//! Debian: `apt-get install -y postgresql`); the tests fail when it is missing.
//! Run with `cargo test -p mcp-audit --all-features`.
#![cfg(feature = "postgres")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::field_reassign_with_default
)]

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use mcp_audit::chain::Tampering;
use mcp_audit::{
    AuditConfig, AuditEvent, AuditRecord, Auditor, DatabaseType, SecretUrl, Storage, StorageList,
    verify_postgres,
};
use mcp_testkit::PostgresServer;
use tokio_postgres::NoTls;

async fn start_pg() -> PostgresServer {
    tokio::task::spawn_blocking(PostgresServer::start)
        .await
        .unwrap()
}

fn config(url: &str, writer: &str) -> AuditConfig {
    let mut c = AuditConfig::default();
    c.storage = StorageList::One(Storage::Database);
    c.database.kind = DatabaseType::Postgres;
    c.database.postgres_url = Some(SecretUrl(url.to_owned()));
    c.database.writer_id = Some(writer.to_owned());
    // These tests count one row per refused request.
    c.aggregate_refusals.enabled = false;
    c
}

async fn pg(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await.unwrap();
    tokio::spawn(conn);
    client
}

async fn wait_written(a: &Auditor, n: u64) {
    for _ in 0..3000 {
        a.flush().await;
        if a.stats().written() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("only {} of {n} events written", a.stats().written());
}

async fn request_records(c: &tokio_postgres::Client) -> Vec<AuditRecord> {
    c.query(
        "SELECT event FROM audit_events WHERE kind IN ('request', 'auth_failure') ORDER BY seq",
        &[],
    )
    .await
    .unwrap()
    .into_iter()
    .map(|r| serde_json::from_str(r.get::<_, &str>(0)).unwrap())
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_into_postgres_exactly_n_rows_and_query() {
    let server = start_pg().await;
    let url = server.url();
    let auditor = Auditor::from_config(config(&url, "replica-a"))
        .await
        .unwrap();
    let svc = auditor.query_service().unwrap();
    let extra = axum::Router::new()
        .route_service("/api/audit/query", svc)
        .layer(axum::middleware::from_fn(fake_auth));
    let addr = serve(app_with(&auditor, extra)).await;
    let c = client();
    const N: usize = 200;
    let mut tasks = Vec::new();
    for i in 0..N {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let (user, deny) = match i % 5 {
                0 => ("", None),
                1 => ("bob", Some("rate")),
                _ => ("alice", None),
            };
            send(&c, call(addr, user, i, deny)).await.status
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    wait_written(&auditor, N as u64).await;
    let db = pg(&url).await;
    let recs = request_records(&db).await;
    assert_eq!(recs.len(), N);
    let ids: HashSet<_> = recs.iter().map(|r| r.request_id.clone().unwrap()).collect();
    assert_eq!(ids.len(), N);
    assert_eq!(
        recs.iter()
            .filter(|r| r.reason.as_deref() == Some("auth_failed"))
            .count(),
        N / 5
    );
    assert_eq!(
        recs.iter()
            .filter(|r| r.reason.as_deref() == Some("rate_limited"))
            .count(),
        N / 5
    );
    // No secret in the table.
    let dump: String = db
        .query_one("SELECT string_agg(event, '') FROM audit_events", &[])
        .await
        .unwrap()
        .get(0);
    for s in [SECRET_PASSWORD, SECRET_HEADER, SECRET_APIKEY] {
        assert!(!dump.contains(s), "{s} stored in PostgreSQL");
    }

    // The query API over PostgreSQL, paginated.
    let mut cursor: Option<String> = None;
    let mut seen = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/audit/query?user=bearer:alice&limit=50&cursor={c}"),
            None => "/api/audit/query?user=bearer:alice&limit=50".to_owned(),
        };
        let r = send(
            &c,
            http::Request::get(format!("http://{addr}{path}"))
                .header("authorization", "Bearer user-auditor:audit:read")
                .body(full(""))
                .unwrap(),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.body);
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        seen += v["count"].as_u64().unwrap();
        match v["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen as usize, N - 2 * N / 5);
    let r = send(
        &c,
        http::Request::get(format!(
            "http://{addr}/api/audit/query?status=denied&tool=search"
        ))
        .header("authorization", "Bearer user-auditor:audit:read")
        .body(full(""))
        .unwrap(),
    )
    .await;
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["count"].as_u64().unwrap() as usize, N / 5);
    auditor.shutdown().await;
    assert!(verify_postgres(&db).await.unwrap().is_intact());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_writers_share_one_verifiable_chain() {
    let server = start_pg().await;
    let url = server.url();
    let mut cfg_a = config(&url, "replica-a");
    let mut cfg_b = config(&url, "replica-b");
    cfg_a.queue.batch_size = 16;
    cfg_b.queue.batch_size = 16;
    // Both start at once: the schema creation is serialized too.
    let (a, b) = tokio::join!(Auditor::from_config(cfg_a), Auditor::from_config(cfg_b));
    let (a, b) = (a.unwrap(), b.unwrap());
    const PER: usize = 600;
    let wa = {
        let a = a.clone();
        tokio::spawn(async move {
            for i in 0..PER {
                a.handle()
                    .record(AuditEvent::config_reload().with_message(format!("a{i}")))
                    .await;
            }
        })
    };
    let wb = {
        let b = b.clone();
        tokio::spawn(async move {
            for i in 0..PER {
                b.handle()
                    .record(AuditEvent::config_reload().with_message(format!("b{i}")))
                    .await;
            }
        })
    };
    wa.await.unwrap();
    wb.await.unwrap();
    a.shutdown().await;
    b.shutdown().await;
    let db = pg(&url).await;
    let report = verify_postgres(&db).await.unwrap();
    assert!(report.is_intact(), "{report:?}");
    assert_eq!(report.records as usize, 2 * PER + 2);
    let rows = db
        .query(
            "SELECT writer, count(*) FROM audit_events GROUP BY writer ORDER BY writer",
            &[],
        )
        .await
        .unwrap();
    let counts: Vec<(String, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        counts,
        vec![
            ("replica-a".to_owned(), PER as i64 + 1),
            ("replica-b".to_owned(), PER as i64 + 1)
        ]
    );
    // The two writers' batches interleave in the one chain.
    let writers: Vec<String> = db
        .query("SELECT writer FROM audit_events ORDER BY seq", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let switches = writers.windows(2).filter(|w| w[0] != w[1]).count();
    assert!(switches >= 1);

    // Tampering is found: an edited row, then (edit undone) a deleted one.
    db.batch_execute(
        "UPDATE audit_events SET event = replace(event, 'config_reload', 'config_reloaX') \
         WHERE seq = 50",
    )
    .await
    .unwrap();
    assert_eq!(
        verify_postgres(&db).await.unwrap().problem,
        Some(Tampering::Altered { seq: 50 })
    );
    db.batch_execute(
        "UPDATE audit_events SET event = replace(event, 'config_reloaX', 'config_reload') \
         WHERE seq = 50",
    )
    .await
    .unwrap();
    assert!(verify_postgres(&db).await.unwrap().is_intact());
    db.execute("DELETE FROM audit_events WHERE seq = 10", &[])
        .await
        .unwrap();
    assert_eq!(
        verify_postgres(&db).await.unwrap().problem,
        Some(Tampering::Deleted {
            first: 10,
            last: 10,
            next: 11
        })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_down_for_a_while_loses_nothing() {
    let mut server = start_pg().await;
    let url = server.url();
    let mut cfg = config(&url, "replica-a");
    cfg.queue.capacity = 10_000;
    cfg.database.max_records = 0;
    let auditor = Auditor::from_config(cfg).await.unwrap();
    let addr = serve(app(&auditor)).await;
    let c = client();
    for i in 0..20 {
        assert_eq!(send(&c, call(addr, "alice", i, None)).await.status, 200);
    }
    wait_written(&auditor, 20).await;
    // Let the server's WAL writer persist the last commits before the crash.
    tokio::time::sleep(Duration::from_millis(700)).await;
    tokio::task::block_in_place(|| server.kill());

    const DOWN: usize = 150;
    for i in 0..DOWN {
        // The database is down: requests are served regardless.
        assert_eq!(
            send(&c, call(addr, "alice", 1000 + i, None)).await.status,
            200
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(auditor.stats().sink_errors() > 0, "the outage was noticed");
    tokio::task::block_in_place(|| server.restart());
    wait_written(&auditor, 20 + DOWN as u64).await;
    auditor.shutdown().await;
    assert_eq!(auditor.stats().dropped(), 0);
    let db = pg(&url).await;
    let recs = request_records(&db).await;
    assert_eq!(
        recs.len(),
        20 + DOWN,
        "every event of the outage was written once"
    );
    let report = verify_postgres(&db).await.unwrap();
    assert!(report.is_intact(), "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_retention_keeps_an_anchor() {
    let server = start_pg().await;
    let url = server.url();
    let mut cfg = config(&url, "replica-a");
    cfg.database.max_records = 25;
    cfg.queue.batch_size = 10;
    let auditor = Auditor::from_config(cfg).await.unwrap();
    for i in 0..99 {
        auditor
            .handle()
            .record(AuditEvent::config_reload().with_message(format!("r{i}")))
            .await;
    }
    auditor.shutdown().await;
    let db = pg(&url).await;
    let n: i64 = db
        .query_one("SELECT count(*) FROM audit_events", &[])
        .await
        .unwrap()
        .get(0);
    assert!((25..35).contains(&n), "{n}");
    let report = verify_postgres(&db).await.unwrap();
    assert!(report.is_intact(), "{report:?}");
    assert_eq!(report.head.seq, 100);
    assert_eq!(report.anchor.unwrap().seq + n, 100);
    db.execute(
        "DELETE FROM audit_events WHERE seq = (SELECT min(seq) FROM audit_events)",
        &[],
    )
    .await
    .unwrap();
    assert!(matches!(
        verify_postgres(&db).await.unwrap().problem,
        Some(Tampering::Deleted { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_records_jsonrpc_ids_and_migrates_an_older_table() {
    let server = start_pg().await;
    let url = server.url();
    // A table of the older schema: no jsonrpc_id column, a lifecycle record in it.
    let auditor = Auditor::from_config(config(&url, "replica-a"))
        .await
        .unwrap();
    auditor
        .handle()
        .record(AuditEvent::config_reload().with_message("old"))
        .await;
    auditor.shutdown().await;
    let db = pg(&url).await;
    db.batch_execute("ALTER TABLE audit_events DROP COLUMN jsonrpc_id")
        .await
        .unwrap();
    // This version opens it, adds the column and chains on.
    let auditor = Auditor::from_config(config(&url, "replica-a"))
        .await
        .unwrap();
    let addr = serve(app_with(&auditor, axum::Router::new())).await;
    let c = client();
    for i in [7, 8] {
        send(&c, call(addr, "alice", i, None)).await;
    }
    wait_written(&auditor, 2).await;
    auditor.shutdown().await;
    let rows = db
        .query(
            "SELECT jsonrpc_id, event FROM audit_events WHERE kind = 'request' ORDER BY seq",
            &[],
        )
        .await
        .unwrap();
    let ids: Vec<Option<String>> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(ids, [Some("7".to_owned()), Some("8".to_owned())]);
    let rec: AuditRecord = serde_json::from_str(rows[0].get::<_, &str>(1)).unwrap();
    assert_eq!(rec.jsonrpc_id, Some(serde_json::json!(7)));
    assert_eq!(rec.message_type.as_deref(), Some("request"));
    let report = verify_postgres(&db).await.unwrap();
    assert!(report.is_intact(), "{report:?}");
    // The column is checked against the record.
    db.batch_execute("UPDATE audit_events SET jsonrpc_id = '9' WHERE jsonrpc_id = '8'")
        .await
        .unwrap();
    assert!(!verify_postgres(&db).await.unwrap().is_intact());
}

/// The query API's byte budget over PostgreSQL: 12 records of 300 KiB, a 1 MiB page
/// budget: every page is within it, marked truncated with a cursor, and paging reads each
/// record once; the index reports each event's size without reading it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_pages_over_postgres_are_bounded_in_bytes() {
    use http_body_util::BodyExt;
    use mcp_audit::event::{IndexColumns, SinkEvent};
    use mcp_audit::query::{AuditQuery, AuditStore};
    use mcp_audit::sink::AuditSink;
    use mcp_audit::sink::postgres::{PostgresSink, PostgresStore};
    use mcp_core::{AuthMethod, Principal};
    use tower::ServiceExt;

    let server = start_pg().await;
    let url = server.url();
    let mut sink = PostgresSink::connect(&url, "w", 0).await.unwrap();
    let blob = "p".repeat(300 * 1024);
    let batch: Vec<SinkEvent> = (0..12)
        .map(|i| {
            let rec = AuditRecord {
                event_id: format!("big-{i}"),
                timestamp: "2026-12-01T08:00:00.000000Z".into(),
                kind: Some(mcp_audit::EventKind::Request),
                user: Some("apikey:alice".into()),
                params: Some(serde_json::json!({ "blob": blob })),
                ..Default::default()
            };
            SinkEvent {
                json: serde_json::to_string(&rec).unwrap().into(),
                columns: IndexColumns::of(&rec),
            }
        })
        .collect();
    sink.write_batch(batch.into()).await.unwrap();

    let store = std::sync::Arc::new(PostgresStore::new(&url));
    let index = store
        .index(AuditQuery {
            limit: 100,
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(index.len(), 12);
    assert!(index.iter().all(|r| r.event_bytes > 300 * 1024));

    let svc = mcp_audit::AuditQueryService::new(store).max_page_bytes(1024 * 1024);
    let who = Principal::new("auditor", AuthMethod::ApiKey).with_scopes(["audit:read"]);
    let mut cursor: Option<String> = None;
    let mut seqs = Vec::new();
    for _ in 0..12 {
        let uri = match &cursor {
            Some(c) => format!("/api/audit/query?limit=1000&cursor={c}"),
            None => "/api/audit/query?limit=1000".to_owned(),
        };
        let mut req = http::Request::get(uri).body(()).unwrap();
        req.extensions_mut().insert(who.clone());
        let resp = svc.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert!(body.len() <= 1024 * 1024, "{} bytes", body.len());
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        for e in v["events"].as_array().unwrap() {
            seqs.push(e["seq"].as_i64().unwrap());
        }
        match v["next_cursor"].as_str() {
            Some(c) => {
                assert_eq!(v["truncated"], true);
                cursor = Some(c.to_owned());
            }
            None => break,
        }
    }
    assert_eq!(seqs, (1..=12).rev().collect::<Vec<i64>>());
}
