//! The audit metrics while the PostgreSQL trail is down, through the real gateway
//! process and a real PostgreSQL (crates/mcp-testkit), read from `/metrics` during the
//! outage (issue "Reliability II", item 2):
//!
//! - `mcp_audit_queue_depth` read 0 every second of a 15 s outage with 32,000 events
//!   waiting, and `mcp_audit_events_queued_total` stopped growing: both were set by the
//!   writer after it had handed a batch to every sink. Now the depth holds the failing
//!   sink's backlog as it grows, and every event is counted as queued when it is queued;
//! - the PostgreSQL sink is reported down (`mcp_audit_sink_up`) with its backlog
//!   (`mcp_audit_sink_backlog`) while the stdout sink keeps writing;
//! - when PostgreSQL is back, the backlog drains, the depth returns to 0, and the table
//!   holds one row per request.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use mcp_testkit::PostgresServer;
use serde_json::json;

/// Starts a gateway whose configuration sets `server.adminAddr` (its `/metrics` is not
/// audited: reading it adds no event): (process, public base, admin base).
fn start_with_admin(dir: &Path, yaml: &str) -> (Proc, String, String) {
    let path = dir.join("gateway.yaml");
    std::fs::write(&path, yaml).unwrap();
    let mut p = spawn_args(&["--config", path.to_str().unwrap()], dir);
    let admin = wait_line(&mut p, "admin listener on")
        .rsplit(' ')
        .next()
        .unwrap()
        .to_owned();
    let base = wait_line(&mut p, "mcp-gateway listening on")
        .rsplit(' ')
        .next()
        .unwrap()
        .to_owned();
    (p, base, admin)
}

async fn metrics(admin: &str) -> String {
    client()
        .get(format!("{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

fn value(text: &str, series: &str) -> f64 {
    metric_value(text, series).unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

/// Polls `/metrics` until `cond` holds; the deadline only avoids a hang.
async fn until(admin: &str, what: &str, cond: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = metrics(admin).await;
        if cond(&text) {
            return text;
        }
        assert!(Instant::now() < deadline, "never: {what}\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Audit records the gateway printed on stdout so far (the stdout sink's lines).
fn stdout_records(p: &Proc, seen: &mut usize) -> usize {
    *seen += p
        .lines
        .try_iter()
        .filter(|l| l.starts_with("{\"seq\":"))
        .count();
    *seen
}

async fn echo(base: &str, i: usize) {
    let r = call_tool(
        &client(),
        &format!("{base}/mcp"),
        "echo",
        json!({"message": format!("m{i}")}),
    )
    .header("x-api-key", KEY)
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 200, "served whatever the trail does");
}

async fn request_rows(url: &str) -> i64 {
    let (db, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    db.query_one(
        "SELECT count(*) FROM audit_events WHERE kind = 'request' AND tool = 'echo'",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_metrics_tell_the_truth_while_postgres_is_down() {
    let mut pg = tokio::task::spawn_blocking(PostgresServer::start)
        .await
        .unwrap();
    let url = pg.url();
    let dir = tempdir();
    let (_up, upstream) = start_upstream(dir.path());
    let yaml = base_config(&upstream, &dir.path().join("unused.db"), "").replace(
        "  storage: database\n  database:\n    type: sqlite\n",
        &format!(
            "  storage: [database, stdout]\n  database:\n    type: postgres\n    \
             postgresUrl: \"{url}\"\n    writerId: \"gw\"\n"
        ),
    );
    let yaml = with_server_keys(
        &yaml,
        "  adminAddr: \"127.0.0.1:0\"\n  opsRateLimit: {requests_per_second: 1000, burst: 1000}\n",
    );
    let (gw, base, admin) = start_with_admin(dir.path(), &yaml);
    let pg_up = "mcp_audit_sink_up{sink=\"postgres\"}";
    let pg_backlog = "mcp_audit_sink_backlog{sink=\"postgres\"}";
    let pg_written = "mcp_audit_events_written_total{sink=\"postgres\"}";
    let out_written = "mcp_audit_events_written_total{sink=\"stdout\"}";
    let depth = "mcp_audit_queue_depth";
    let queued = "mcp_audit_events_queued_total";

    // Traffic flows into both sinks.
    const BEFORE: usize = 5;
    for i in 0..BEFORE {
        echo(&base, i).await;
    }
    let text = until(&admin, "the first requests are written", |t| {
        metric_value(t, pg_written) >= Some(BEFORE as f64) && metric_value(t, depth) == Some(0.0)
    })
    .await;
    assert_eq!(value(&text, pg_up), 1.0);
    assert_eq!(value(&text, "mcp_audit_sink_up{sink=\"stdout\"}"), 1.0);
    let queued0 = value(&text, queued);
    let pg0 = value(&text, pg_written);
    let out0 = value(&text, out_written);
    let mut seen = 0;
    let lines0 = stdout_records(&gw, &mut seen);

    // PostgreSQL stops (fast shutdown); N requests are served during the outage.
    tokio::task::block_in_place(|| pg.stop());
    const N: usize = 200;
    for i in 0..N {
        echo(&base, BEFORE + i).await;
    }
    // Each request's event is queued as its response ends.
    let text = until(&admin, "the outage's events are counted as queued", |t| {
        metric_value(t, queued) >= Some(queued0 + N as f64)
    })
    .await;
    assert_eq!(value(&text, queued), queued0 + N as f64, "{text}");
    // The stdout sink keeps writing; PostgreSQL is reported down with the backlog.
    until(&admin, "stdout writes the outage's events", |t| {
        metric_value(t, out_written) == Some(out0 + N as f64)
    })
    .await;
    until(&admin, "the PostgreSQL sink is reported down", |t| {
        metric_value(t, pg_up) == Some(0.0)
    })
    .await;
    // Read during the outage, a few times over a second and a half: the depth and the
    // backlog show the events waiting, nothing reached PostgreSQL, and nothing is
    // counted twice.
    for _ in 0..6 {
        let text = metrics(&admin).await;
        assert!(value(&text, depth) >= N as f64, "{text}");
        assert_eq!(value(&text, pg_backlog), N as f64, "{text}");
        assert_eq!(value(&text, pg_up), 0.0, "{text}");
        assert_eq!(value(&text, pg_written), pg0, "{text}");
        assert_eq!(value(&text, queued), queued0 + N as f64, "{text}");
        assert!(value(&text, "mcp_audit_sink_errors_total{sink=\"postgres\"}") > 0.0);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(stdout_records(&gw, &mut seen) >= lines0 + N);

    // PostgreSQL is back: the backlog drains, the depth returns to 0.
    tokio::task::block_in_place(|| pg.restart());
    let text = until(&admin, "the backlog drains", |t| {
        metric_value(t, depth) == Some(0.0)
            && metric_value(t, pg_backlog) == Some(0.0)
            && metric_value(t, pg_up) == Some(1.0)
    })
    .await;
    assert_eq!(value(&text, pg_written), pg0 + N as f64, "{text}");
    assert_eq!(request_rows(&url).await, (BEFORE + N) as i64);
    assert_eq!(
        metric_value(
            &text,
            "mcp_audit_events_dropped_total{reason=\"sink_failed\"}"
        ),
        None,
        "nothing dropped: {text}"
    );
}
