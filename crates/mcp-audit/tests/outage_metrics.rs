//! The pipeline's metrics while a real PostgreSQL sink is down (crates/mcp-testkit starts
//! it on a free loopback port): the depth shows the backlog as it grows, every queued
//! event is counted when it is queued, the failing sink is reported down while the file
//! sink keeps writing, and everything drains when the database is back.
//! Run with `cargo test -p mcp-audit --all-features --test outage_metrics`.
//!
//! One test in this binary: the metrics are process-wide (one global recorder).
#![cfg(feature = "postgres")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::field_reassign_with_default
)]

use std::time::{Duration, Instant};

use mcp_audit::{AuditConfig, AuditEvent, Auditor, DatabaseType, SecretUrl, Storage, StorageList};
use mcp_testkit::PostgresServer;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio_postgres::NoTls;

/// The value of the series `name` (with exactly these labels, e.g. `{sink="file"}`, or
/// none), or `None` when it is not exported.
fn value(text: &str, name: &str, labels: &str) -> Option<f64> {
    let series = format!("{name}{labels} ");
    text.lines()
        .find(|l| l.starts_with(&series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn get(h: &PrometheusHandle, name: &str, labels: &str) -> f64 {
    let text = h.render();
    value(&text, name, labels).unwrap_or_else(|| panic!("{name}{labels} not in\n{text}"))
}

/// Polls `cond` on the rendered metrics until it holds; the deadline only avoids a hang.
async fn until(h: &PrometheusHandle, what: &str, cond: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = h.render();
        if cond(&text) {
            return;
        }
        assert!(Instant::now() < deadline, "never: {what}\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn lines(path: &std::path::Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |s| s.lines().count())
}

async fn rows(url: &str) -> i64 {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await.unwrap();
    tokio::spawn(conn);
    client
        .query_one(
            "SELECT count(*) FROM audit_events WHERE kind = 'config_reload'",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_tell_the_truth_while_postgres_is_down() {
    let recorder = PrometheusBuilder::new().build_recorder();
    let h = recorder.handle();
    metrics::set_global_recorder(recorder).unwrap();

    let mut server = tokio::task::spawn_blocking(PostgresServer::start)
        .await
        .unwrap();
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("audit.jsonl");
    let mut cfg = AuditConfig::default();
    cfg.storage = StorageList::Many(vec![Storage::Database, Storage::File]);
    cfg.database.kind = DatabaseType::Postgres;
    cfg.database.postgres_url = Some(SecretUrl(url.clone()));
    cfg.database.max_records = 0;
    cfg.file.path = file.clone();
    cfg.queue.batch_size = 50;
    let auditor = Auditor::from_config(cfg).await.unwrap();
    let reload = |i: usize| AuditEvent::config_reload().with_message(format!("r{i}"));

    // Traffic flows.
    const BEFORE: usize = 20;
    for i in 0..BEFORE {
        auditor.handle().record(reload(i)).await;
    }
    auditor.flush().await;
    assert_eq!(auditor.stats().written(), BEFORE as u64);
    assert_eq!(get(&h, "mcp_audit_queue_depth", ""), 0.0);
    assert_eq!(get(&h, "mcp_audit_sink_up", "{sink=\"postgres\"}"), 1.0);
    assert_eq!(get(&h, "mcp_audit_sink_up", "{sink=\"file\"}"), 1.0);
    let queued0 = get(&h, "mcp_audit_events_queued_total", "");
    let file0 = get(&h, "mcp_audit_events_written_total", "{sink=\"file\"}");
    let pg0 = get(&h, "mcp_audit_events_written_total", "{sink=\"postgres\"}");
    assert_eq!(queued0, BEFORE as f64);

    // The database stops (fast shutdown): N events during the outage.
    tokio::task::block_in_place(|| server.stop());
    const N: usize = 600;
    for i in 0..N {
        auditor.handle().try_record(reload(BEFORE + i));
    }
    // Counted as queued when queued, not when the writer gets round to them.
    assert_eq!(
        get(&h, "mcp_audit_events_queued_total", "") - queued0,
        N as f64
    );
    // The file sink keeps writing; the database's backlog holds the N events.
    until(&h, "the file sink writes the outage's events", |t| {
        value(t, "mcp_audit_events_written_total", "{sink=\"file\"}") == Some(file0 + N as f64)
    })
    .await;
    assert_eq!(lines(&file), BEFORE + N);
    until(&h, "the database sink is reported down", |t| {
        value(t, "mcp_audit_sink_up", "{sink=\"postgres\"}") == Some(0.0)
    })
    .await;
    // Read during the outage, a few times: the depth shows the backlog.
    for _ in 0..5 {
        let text = h.render();
        let depth = value(&text, "mcp_audit_queue_depth", "").unwrap();
        let backlog = value(&text, "mcp_audit_sink_backlog", "{sink=\"postgres\"}").unwrap();
        assert!(depth >= N as f64, "depth {depth} during the outage\n{text}");
        assert_eq!(backlog, N as f64, "{text}");
        assert_eq!(
            value(
                &text,
                "mcp_audit_events_written_total",
                "{sink=\"postgres\"}"
            ),
            Some(pg0)
        );
        assert_eq!(
            value(&text, "mcp_audit_sink_up", "{sink=\"file\"}"),
            Some(1.0)
        );
        assert!(value(&text, "mcp_audit_sink_errors_total", "{sink=\"postgres\"}").unwrap() > 0.0);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(auditor.stats().depth(), N as u64);
    let pg_status = auditor
        .sinks()
        .into_iter()
        .find(|s| s.name == "postgres")
        .unwrap();
    assert!(!pg_status.up);
    assert_eq!(pg_status.backlog, N as u64);
    assert_eq!(auditor.stats().queued(), (BEFORE + N) as u64);

    // The database is back: the backlog drains.
    tokio::task::block_in_place(|| server.restart());
    until(&h, "the backlog drains", |t| {
        value(t, "mcp_audit_queue_depth", "") == Some(0.0)
            && value(t, "mcp_audit_sink_backlog", "{sink=\"postgres\"}") == Some(0.0)
            && value(t, "mcp_audit_sink_up", "{sink=\"postgres\"}") == Some(1.0)
    })
    .await;
    assert_eq!(
        get(&h, "mcp_audit_events_written_total", "{sink=\"postgres\"}"),
        pg0 + N as f64
    );
    assert_eq!(rows(&url).await, (BEFORE + N) as i64);
    assert_eq!(auditor.stats().dropped(), 0);
    assert_eq!(
        get(&h, "mcp_audit_events_queued_total", ""),
        (BEFORE + N) as f64
    );
}
