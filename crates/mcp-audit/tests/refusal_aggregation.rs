//! Refusals of a client already refused, over real sockets into a real SQLite trail:
//! the first of each interval in full, the rest counted, the totals exact, whatever the
//! client varies (path, headers, body, the claimed user).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;

use common::*;
use mcp_audit::{AuditConfig, AuditRecord, Auditor, Storage, StorageList};
use rusqlite::Connection;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_of_a_refused_client_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = AuditConfig {
        storage: StorageList::One(Storage::Database),
        ..AuditConfig::default()
    };
    cfg.database.sqlite_path = dir.path().join("audit.db");
    let auditor = Auditor::from_config(cfg).await.unwrap();
    let addr = serve(app(&auditor)).await;
    let c = client();
    const N: usize = 300;
    for i in 0..N {
        // No credential (auth_failed), bob over his quota (rate_limited, keyed by the
        // principal), bob refused by a rule (recorded in full), alice served.
        let (user, deny) = match i % 4 {
            0 => ("", None),
            1 => ("bob", Some("rate")),
            2 => ("bob", Some("rule")),
            _ => ("alice", None),
        };
        let mut req = call(addr, user, i, deny);
        // What a client varies: a header, the claimed user, the path's query.
        req.headers_mut()
            .insert("x-user-id", format!("user-{i}").parse().unwrap());
        *req.uri_mut() = format!("http://{addr}/mcp?v={i}").parse().unwrap();
        let r = send(&c, req).await;
        assert!(r.status.as_u16() < 500);
    }
    auditor.shutdown().await;
    let recs = records(&dir.path().join("audit.db"));
    let reqs: Vec<_> = recs.iter().filter(|r| r.http_status.is_some()).collect();
    let kind = |r: &AuditRecord| r.kind.map(|k| k.as_str()).unwrap_or("");
    let full = reqs.iter().filter(|r| kind(r) != "refusals").count();
    let counts: Vec<_> = reqs.iter().filter(|r| kind(r) == "refusals").collect();
    let counted: u64 = counts
        .iter()
        .map(|r| r.data.as_ref().unwrap()["refused"].as_u64().unwrap())
        .sum();
    assert_eq!(full as u64 + counted, N as u64, "{recs:#?}");
    // Served and rule-refused: every one in full; the others: one each in full.
    let of = |reason: &str| {
        reqs.iter()
            .filter(|r| kind(r) != "refusals" && r.reason.as_deref() == Some(reason))
            .count()
    };
    assert_eq!(of("blocked_by_rule"), N / 4);
    assert!(
        (1..=2).contains(&of("auth_failed")),
        "{}",
        of("auth_failed")
    );
    assert!((1..=2).contains(&of("rate_limited")));
    let bob = counts
        .iter()
        .find(|r| r.reason.as_deref() == Some("rate_limited"))
        .unwrap();
    assert!(
        bob.user.as_deref().is_some_and(|u| u.ends_with(":bob")),
        "{bob:#?}"
    );
    let anon = counts
        .iter()
        .find(|r| r.reason.as_deref() == Some("auth_failed"))
        .unwrap();
    assert_eq!(anon.client_ip.as_deref(), Some("127.0.0.1"));
    assert_eq!(anon.user, None);
    assert_eq!(anon.http_status, Some(401));
    // The trail verifies.
    assert!(
        mcp_audit::verify_sqlite(dir.path().join("audit.db"))
            .unwrap()
            .is_intact()
    );
}
