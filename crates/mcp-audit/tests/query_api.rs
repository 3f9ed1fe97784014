//! GET /api/audit/query over a real socket, on the SQLite trail: authentication and scope
//! required, filters, limit cap, keyset pagination.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::field_reassign_with_default
)]

mod common;

use std::collections::HashSet;
use std::time::Duration;

use axum::Router;
use axum::middleware;
use common::*;
use mcp_audit::{AuditConfig, Auditor, Storage, StorageList};

async fn get(
    addr: std::net::SocketAddr,
    path: &str,
    auth: Option<&str>,
) -> (u16, serde_json::Value, http::HeaderMap) {
    let mut b = http::Request::get(format!("http://{addr}{path}"));
    if let Some(a) = auth {
        b = b.header("authorization", format!("Bearer user-{a}"));
    }
    let r = send(&client(), b.body(full("")).unwrap()).await;
    (
        r.status.as_u16(),
        serde_json::from_str(&r.body).unwrap_or(serde_json::Value::Null),
        r.headers,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_requires_scope_and_pages_by_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = AuditConfig::default();
    cfg.storage = StorageList::One(Storage::Database);
    cfg.database.sqlite_path = dir.path().join("audit.db");
    cfg.query.max_limit = 25;
    let auditor = Auditor::from_config(cfg).await.unwrap();
    let svc = auditor.query_service().unwrap();
    let extra = Router::new()
        .route_service("/api/audit/query", svc.clone())
        .layer(middleware::from_fn(fake_auth))
        .route_service("/unauthenticated/query", svc);
    let addr = serve(app_with(&auditor, extra)).await;

    let c = client();
    for i in 0..30 {
        send(&c, call(addr, "alice", i, None)).await;
    }
    for i in 0..10 {
        send(
            &c,
            call(addr, "bob", i, if i % 2 == 0 { Some("rule") } else { None }),
        )
        .await;
    }
    for _ in 0..300 {
        auditor.flush().await;
        if auditor.stats().written() >= 40 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // No principal: 401 with a challenge and a JSON-RPC error body.
    let (status, body, headers) = get(addr, "/unauthenticated/query?limit=5", None).await;
    assert_eq!(status, 401);
    assert!(headers.contains_key("www-authenticate"));
    assert_eq!(body["error"]["code"], -32001);
    // A principal without the audit scope: 403.
    let (status, _, headers) = get(addr, "/api/audit/query", Some("bob")).await;
    assert_eq!(status, 403);
    assert!(
        headers["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("insufficient_scope")
    );
    // Someone claiming the user in a header gets nothing either.
    let r = send(
        &c,
        http::Request::get(format!("http://{addr}/unauthenticated/query"))
            .header("x-user-id", "admin")
            .body(full(""))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 401);

    // With the scope: every alice record, newest first, in pages of 7.
    let mut seen = HashSet::new();
    let mut last_seq = i64::MAX;
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/audit/query?user=bearer:alice&limit=7&cursor={c}"),
            None => "/api/audit/query?user=bearer:alice&limit=7".to_owned(),
        };
        let (status, body, _) = get(addr, &path, Some("auditor:audit:read")).await;
        assert_eq!(status, 200, "{body}");
        pages += 1;
        for e in body["events"].as_array().unwrap() {
            let seq = e["seq"].as_i64().unwrap();
            assert!(seq < last_seq, "newest first, no overlap");
            last_seq = seq;
            assert_eq!(e["event"]["user"], "bearer:alice");
            assert_eq!(
                e["event"]["params"]["arguments"]["password"],
                "***REDACTED***"
            );
            assert_eq!(e["hash"].as_str().unwrap().len(), 64);
            assert!(seen.insert(seq));
        }
        match body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 30);
    assert_eq!(pages, 5);

    // Filters: tool + status, the seeds' `status=failed`, time bounds, the limit cap.
    let (_, body, _) = get(
        addr,
        "/api/audit/query?tool=search&status=denied",
        Some("auditor:audit:read"),
    )
    .await;
    assert_eq!(body["count"], 5);
    for e in body["events"].as_array().unwrap() {
        assert_eq!(e["event"]["reason"], "blocked_by_rule");
        assert_eq!(e["event"]["user"], "bearer:bob");
    }
    let (_, body, _) = get(
        addr,
        "/api/audit/query?user=bearer:bob&status=failed",
        Some("auditor:audit:read"),
    )
    .await;
    assert!(body["count"].as_u64().unwrap() >= 5);
    let (_, body, _) = get(
        addr,
        "/api/audit/query?since=2999-01-01T00:00:00Z",
        Some("auditor:audit:read"),
    )
    .await;
    assert_eq!(body["count"], 0);
    let (_, body, _) = get(
        addr,
        "/api/audit/query?until=2000-01-01T00:00:00Z",
        Some("auditor:audit:read"),
    )
    .await;
    assert_eq!(body["count"], 0);
    let (_, body, _) = get(
        addr,
        "/api/audit/query?since=2000-01-01T00:00:00Z&until=2999-01-01T00:00:00Z&limit=100000",
        Some("auditor:audit:read"),
    )
    .await;
    assert_eq!(body["count"], 25, "limit capped at maxLimit");
    assert!(body["next_cursor"].is_string());

    // Bad parameters: 400 naming the parameter, never echoing the value.
    let (status, body, _) = get(
        addr,
        "/api/audit/query?since=%3Cscript%3E",
        Some("auditor:audit:read"),
    )
    .await;
    assert_eq!(status, 400);
    assert!(!body.to_string().contains("<script>"));
    let (status, _, _) = get(
        addr,
        "/api/audit/query?user=bearer:a&user=bearer:b",
        Some("auditor:audit:read"),
    )
    .await;
    assert_eq!(status, 400);
    // The trail records qualified ids: a bare one is refused rather than matching nothing.
    let (status, _, _) = get(
        addr,
        "/api/audit/query?user=alice",
        Some("auditor:audit:read"),
    )
    .await;
    assert_eq!(status, 400);
    let (status, _, _) = get(
        addr,
        "/api/audit/query?cursor=forged",
        Some("auditor:audit:read"),
    )
    .await;
    assert_eq!(status, 400);
    // Only GET.
    let r = send(
        &c,
        http::Request::delete(format!("http://{addr}/api/audit/query"))
            .header("authorization", "Bearer user-auditor:audit:read")
            .body(full(""))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 405);
    assert_eq!(r.headers["allow"], "GET");
    auditor.shutdown().await;
}
