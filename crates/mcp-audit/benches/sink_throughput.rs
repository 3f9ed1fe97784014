//! Sustained events per second through the whole pipeline (queue, writer: masking,
//! serialization, hashing; batched transactional inserts) into SQLite and PostgreSQL,
//! against what a user would otherwise write: one autocommitted INSERT per event.
//!
//! Each measured run records `iters` events and waits for the writer to flush them all.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::field_reassign_with_default,
    missing_docs
)]

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mcp_audit::{AuditConfig, AuditEvent, Auditor, Storage, StorageList};
use mcp_core::{AuthMethod, Principal};

#[path = "support/common.rs"]
mod common;
use common::{cpu_seconds, sqlite_setup};

fn event(i: u64) -> AuditEvent {
    AuditEvent::auth_failure()
        .with_principal(Principal::new("alice", AuthMethod::ApiKey))
        .with_client_ip("198.51.100.7".parse().unwrap())
        .with_message("tools/call search")
        .with_data(serde_json::json!({
            "name": "search",
            "arguments": {"q": format!("query {i}"), "limit": 10,
                          "auth": {"password": "hunter2", "apiKey": "k-123"}}
        }))
}

fn record_json(i: u64) -> String {
    serde_json::json!({
        "timestamp": "2026-01-01T00:00:00Z", "user": "alice", "tool": "search",
        "params": {"q": format!("query {i}"), "limit": 10, "auth": "***REDACTED***"},
        "status": "success"
    })
    .to_string()
}

async fn run(auditor: &Auditor, iters: u64) -> Duration {
    let start = Instant::now();
    for i in 0..iters {
        auditor.handle().record(event(i)).await;
    }
    auditor.flush().await;
    start.elapsed()
}

fn sqlite(c: &mut Criterion) {
    let (rt, dir, _db, mut cfg) = sqlite_setup("bench.db", 0);
    cfg.storage = StorageList::One(Storage::Database);
    let auditor = rt.block_on(Auditor::from_config(cfg)).unwrap();
    let mut g = c.benchmark_group("sqlite");
    g.throughput(Throughput::Elements(1));
    g.bench_function("auditor_batched", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let a = auditor.clone();
            async move { run(&a, iters).await }
        })
    });
    let conn = rusqlite::Connection::open(dir.path().join("naive.db")).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    conn.pragma_update(None, "synchronous", "NORMAL").unwrap();
    conn.execute_batch(
        "CREATE TABLE audit (id INTEGER PRIMARY KEY, ts TEXT, user TEXT, tool TEXT, event TEXT)",
    )
    .unwrap();
    g.bench_function("naive_insert_per_event", |b| {
        let mut i = 0;
        b.iter(|| {
            i += 1;
            conn.execute(
                "INSERT INTO audit (ts, user, tool, event) VALUES ('t', 'alice', 'search', ?1)",
                [record_json(i)],
            )
            .unwrap()
        })
    });
    g.finish();
    rt.block_on(auditor.shutdown());
}

#[cfg(feature = "postgres")]
fn postgres(c: &mut Criterion) {
    use mcp_audit::{DatabaseType, SecretUrl};
    let server = mcp_testkit::PostgresServer::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut cfg = AuditConfig::default();
    cfg.storage = StorageList::One(Storage::Database);
    cfg.database.kind = DatabaseType::Postgres;
    cfg.database.postgres_url = Some(SecretUrl(server.url()));
    cfg.database.max_records = 0;
    let auditor = rt.block_on(Auditor::from_config(cfg)).unwrap();
    let mut g = c.benchmark_group("postgres");
    g.throughput(Throughput::Elements(1));
    g.bench_function("auditor_batched", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let a = auditor.clone();
            async move { run(&a, iters).await }
        })
    });
    let client = rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(&server.url(), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
            .batch_execute(
                "CREATE TABLE naive (id BIGSERIAL PRIMARY KEY, ts TEXT, user_id TEXT, tool TEXT, event TEXT)",
            )
            .await
            .unwrap();
        client
    });
    g.bench_function("naive_insert_per_event", |b| {
        let mut i = 0;
        b.to_async(&rt).iter(|| {
            i += 1;
            let json = record_json(i);
            let client = &client;
            async move {
                client
                    .execute(
                        "INSERT INTO naive (ts, user_id, tool, event) VALUES ('t', 'alice', 'search', $1)",
                        &[&json],
                    )
                    .await
                    .unwrap()
            }
        })
    });
    g.finish();
    rt.block_on(auditor.shutdown());
}

#[cfg(not(feature = "postgres"))]
fn postgres(_c: &mut Criterion) {
    eprintln!("postgres benches need `--features postgres`");
}

/// A load run outside criterion: 200,000 events into SQLite, wall clock and CPU time.
fn load_run(_c: &mut Criterion) {
    let (rt, _dir, _db, mut cfg) = sqlite_setup("load.db", 100_000);
    cfg.storage = StorageList::One(Storage::Database);
    let auditor = rt.block_on(Auditor::from_config(cfg)).unwrap();
    const N: u64 = 200_000;
    let cpu0 = cpu_seconds();
    let wall = rt.block_on(run(&auditor, N));
    let cpu = cpu_seconds() - cpu0;
    rt.block_on(auditor.shutdown());
    assert_eq!(auditor.stats().dropped(), 0, "the load run lost events");
    eprintln!(
        "load run: {N} events into SQLite (maxRecords 100000) in {:.2} s wall = {:.0} events/s; \
         process CPU {:.2} s = {:.1} us CPU per event (producer, writer and SQLite together)",
        wall.as_secs_f64(),
        N as f64 / wall.as_secs_f64(),
        cpu,
        cpu * 1e6 / N as f64
    );
}

criterion_group!(benches, load_run, sqlite, postgres);
criterion_main!(benches);
