//! Several gateway replicas sharing state through real servers, as an operator runs them
//! behind a load balancer: one rate-limit budget in Redis, one audit trail in PostgreSQL.
//! Each test starts its own redis-server / PostgreSQL on a free loopback port
//! (mcp-testkit), and two gateway processes from config files.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use common::*;
use serde_json::{Value, json};

#[tokio::test]
async fn two_replicas_share_one_rate_limit_budget_in_redis() {
    let redis = mcp_testkit::RedisServer::start();
    let dir = tempdir();
    let (_up, upstream) = start_upstream(dir.path());
    let replica = |name: &str| {
        base_config(&upstream, &dir.path().join(format!("{name}.db")), "").replace(
            "  requests_per_second: 1000\n  burst: 1000\n",
            &format!(
                "  requests_per_second: 0.05\n  burst: 4\n  redis:\n    url: \"{}\"\n    prefix: \"e2e\"\n    failure_mode: closed\n    timeout_ms: 5000\n",
                redis.url()
            ),
        )
    };
    let (_a, base_a) = start_gateway(dir.path(), &replica("a"));
    let (_b, base_b) = start_gateway(dir.path(), &replica("b"));
    let c = client();
    let call = |base: &str| {
        call_tool(&c, &format!("{base}/mcp"), "echo", json!({"message": "m"}))
            .header("x-api-key", KEY)
    };
    // The burst of 4 is spent across both replicas: 2 + 2, then both refuse. (A Redis
    // timeout well above a loaded machine's round trip: failure_mode closed answers 503.)
    let mut statuses = Vec::new();
    for base in [&base_a, &base_b, &base_a, &base_b, &base_a, &base_b] {
        statuses.push(call(base).send().await.unwrap().status().as_u16());
    }
    assert_eq!(
        statuses,
        [200, 200, 200, 200, 429, 429],
        "one budget for both replicas"
    );
}

#[tokio::test]
async fn two_replicas_write_one_verifiable_audit_trail_in_postgres() {
    let pg = mcp_testkit::PostgresServer::start();
    let dir = tempdir();
    let (_up, upstream) = start_upstream(dir.path());
    let replica = |name: &str| {
        base_config(&upstream, &dir.path().join("unused.db"), "").replace(
            "    type: sqlite\n",
            &format!(
                "    type: postgres\n    postgresUrl: \"{}\"\n    writerId: \"{name}\"\n",
                pg.url()
            ),
        )
    };
    let (mut a, base_a) = start_gateway(dir.path(), &replica("a"));
    let (mut b, base_b) = start_gateway(dir.path(), &replica("b"));
    let c = client();
    for i in 0..5 {
        for base in [&base_a, &base_b] {
            let r = call_tool(
                &c,
                &format!("{base}/mcp"),
                "echo",
                json!({"message": format!("m{i}"), "password": "hunter2-secret"}),
            )
            .header("x-api-key", KEY)
            .send()
            .await
            .unwrap();
            assert_eq!(r.status(), 200);
        }
    }
    // Refused requests are in the shared trail too.
    let r = call_tool(
        &c,
        &format!("{base_b}/mcp"),
        "echo",
        json!({"message": "x"}),
    )
    .header("x-api-key", "Wrong123!@#Wrong123!@#")
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 401);

    // Each replica flushes its queue on SIGTERM.
    a.terminate();
    b.terminate();
    assert!(a.wait_exit(30).is_some() && b.wait_exit(30).is_some());

    // A third replica answers queries over the whole shared trail.
    let (_q, base_q) = start_gateway(dir.path(), &replica("q"));
    let rows = audit_query(&base_q, "limit=100").await;
    let text = rows.to_string();
    assert!(
        !text.contains("hunter2-secret"),
        "params are masked: {text}"
    );
    let events = rows["events"]
        .as_array()
        .unwrap_or_else(|| panic!("no event list in {text}"));
    let kind = |e: &Value, k: &str| e["event"]["kind"] == k;
    let served = events
        .iter()
        .filter(|e| kind(e, "request") && e["event"]["tool"] == "echo")
        .count();
    assert_eq!(served, 10, "10 served calls from two replicas: {text}");
    // The refused request was not parsed (its body is never read before authentication),
    // so it is recorded as an authentication failure without a tool.
    let refused: Vec<_> = events.iter().filter(|e| kind(e, "auth_failure")).collect();
    assert_eq!(refused.len(), 1, "{text}");
    assert_eq!(refused[0]["event"]["reason"], "auth_failed");
    // Lifecycle events of both replicas are in the one trail.
    assert!(
        events.iter().filter(|e| kind(e, "startup")).count() >= 2,
        "{text}"
    );
    assert_eq!(
        events.iter().filter(|e| kind(e, "shutdown")).count(),
        2,
        "{text}"
    );

    // The chain written by both replicas verifies.
    let cfg = dir.path().join("verify.yaml");
    std::fs::write(&cfg, replica("v")).unwrap();
    let (code, out, err) = run(
        &["audit", "verify", "--config", cfg.to_str().unwrap()],
        dir.path(),
        &[],
    );
    assert_eq!(code, 0, "verify failed: {out}{err}");
}
