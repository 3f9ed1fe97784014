//! Every authentication mode, end to end through the gateway process.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use serde_json::json;

fn config(upstream: &str, db: &std::path::Path, auth: &str, extra: &str) -> String {
    format!(
        r#"server:
  addr: "127.0.0.1:0"
auth:
{auth}
audit:
  enabled: true
  database:
    sqlitePath: "{}"
upstreams:
  - name: demo
    path: /mcp
    url: "{upstream}"
{extra}"#,
        db.display()
    )
}

async fn tools_list(
    c: &reqwest::Client,
    url: &str,
    header: Option<(&str, String)>,
) -> (u16, String) {
    let mut b = modern(c, url, "tools/list", None, json!({}));
    if let Some((k, v)) = header {
        b = b.header(k, v);
    }
    let r = b.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.text().await.unwrap())
}

#[tokio::test]
async fn api_key_mode() {
    let dir = tempdir();
    let (_up, _gw, base) = start_default(dir.path());
    let url = format!("{base}/mcp");
    let c = client();
    let (s, body) = tools_list(&c, &url, Some(("x-api-key", KEY.into()))).await;
    assert_eq!(s, 200, "{body}");
    assert!(last(&body)["result"]["tools"].as_array().unwrap().len() > 3);
    // Missing, wrong, and near-miss keys are refused with 401 and a challenge.
    for h in [
        None,
        Some(("x-api-key", "Wrong123!@#Wrong123!@#".to_owned())),
        Some(("x-api-key", format!("{KEY}x"))),
        Some(("x-api-key", KEY[..KEY.len() - 1].to_owned())),
        // The key in the wrong place.
        Some(("authorization", format!("Bearer {KEY}"))),
    ] {
        let r = {
            let mut b = modern(&c, &url, "tools/list", None, json!({}));
            if let Some((k, v)) = &h {
                b = b.header(*k, v);
            }
            b.send().await.unwrap()
        };
        assert_eq!(r.status(), 401, "{h:?}");
        assert!(r.headers().contains_key("www-authenticate"));
        let body = r.text().await.unwrap();
        assert_eq!(last(&body)["error"]["code"], -32001);
        assert!(!body.contains("Wrong123"));
    }
}

#[tokio::test]
async fn bearer_static_token_mode() {
    let dir = tempdir();
    let (_up, upstream) = start_upstream(dir.path());
    let token = "s3cr3tT0kenValueThatIsLongEnough_0123456789";
    let auth = format!("  enabled: true\n  mode: bearer\n  bearerToken: \"{token}\"\n");
    let (_gw, base) = start_gateway(
        dir.path(),
        &config(&upstream, &dir.path().join("a.db"), &auth, ""),
    );
    let url = format!("{base}/mcp");
    let c = client();
    assert_eq!(
        tools_list(&c, &url, Some(("authorization", format!("Bearer {token}"))))
            .await
            .0,
        200
    );
    assert_eq!(
        tools_list(
            &c,
            &url,
            Some(("authorization", format!("Bearer {token}x")))
        )
        .await
        .0,
        401
    );
    assert_eq!(
        tools_list(&c, &url, Some(("authorization", format!("Basic {token}"))))
            .await
            .0,
        401
    );
    assert_eq!(tools_list(&c, &url, None).await.0, 401);
}

#[tokio::test]
async fn basic_mode() {
    let dir = tempdir();
    let (_up, upstream) = start_upstream(dir.path());
    // The Basic settings (verification bound, verified-credential cache) are accepted.
    let auth = "  enabled: true\n  mode: basic\n  username: admin\n  password: \"correct horse battery staple\"\n  basic: {maxConcurrent: 2, cacheCapacity: 16, cacheMaxTtlSeconds: 60}\n";
    let (_gw, base) = start_gateway(
        dir.path(),
        &config(&upstream, &dir.path().join("a.db"), auth, ""),
    );
    let url = format!("{base}/mcp");
    let c = client();
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    assert_eq!(
        tools_list(
            &c,
            &url,
            Some((
                "authorization",
                format!("Basic {}", b64("admin:correct horse battery staple"))
            ))
        )
        .await
        .0,
        200
    );
    // Repeats are served from the verified-credential cache; a wrong password after a
    // success is still refused (only the exact pair is cached).
    for _ in 0..3 {
        let good = format!("Basic {}", b64("admin:correct horse battery staple"));
        assert_eq!(
            tools_list(&c, &url, Some(("authorization", good))).await.0,
            200
        );
    }
    for wrong in ["admin:wrong", "admin:correct horse battery stapl", "admin:"] {
        assert_eq!(
            tools_list(
                &c,
                &url,
                Some(("authorization", format!("Basic {}", b64(wrong))))
            )
            .await
            .0,
            401,
            "{wrong}"
        );
    }
    assert_eq!(
        tools_list(
            &c,
            &url,
            Some((
                "authorization",
                format!("Basic {}", b64("root:correct horse battery staple"))
            ))
        )
        .await
        .0,
        401
    );
}

fn hs256(secret: &str, claims: serde_json::Value) -> String {
    // With both JWT backends compiled in (--all-features), jsonwebtoken has no default.
    mcp_auth::jwt::install_crypto_provider();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn jwt_hs256_mode() {
    let dir = tempdir();
    let (_up, upstream) = start_upstream(dir.path());
    let secret = "a-jwt-secret-of-at-least-32-bytes-0123456789";
    let auth =
        "  enabled: true\n  mode: jwt\n  jwtSecret: \"${JWT_SECRET}\"\n  jwtAlgorithm: HS256\n";
    let (_gw, base) = start_gateway_env(
        dir.path(),
        &config(&upstream, &dir.path().join("a.db"), auth, ""),
        &[("JWT_SECRET", secret)],
    );
    let url = format!("{base}/mcp");
    let c = client();
    let good = hs256(
        secret,
        json!({"sub": "carol", "exp": now() + 600, "scope": "mcp:tools"}),
    );
    let (s, body) = tools_list(&c, &url, Some(("authorization", format!("Bearer {good}")))).await;
    assert_eq!(s, 200, "{body}");
    // Expired, wrong key, alg none: refused.
    let expired = hs256(secret, json!({"sub": "carol", "exp": now() - 3600}));
    let forged = hs256(
        "another-secret-of-at-least-32-bytes-xxxxxx",
        json!({"sub": "carol", "exp": now() + 600}),
    );
    let none_alg = {
        use base64::Engine;
        let e = |v: serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        format!(
            "{}.{}.",
            e(json!({"alg": "none", "typ": "JWT"})),
            e(json!({"sub": "carol", "exp": now() + 600}))
        )
    };
    for bad in [expired, forged, none_alg] {
        assert_eq!(
            tools_list(&c, &url, Some(("authorization", format!("Bearer {bad}"))))
                .await
                .0,
            401
        );
    }
}

#[tokio::test]
async fn policy_scopes_restrict_tools_and_audit_query() {
    let dir = tempdir();
    let (_up, upstream) = start_upstream(dir.path());
    let policy = r#"policy:
  allow:
    - name: tools
      scopes: ["mcp:tools"]
      methods: ["tools/*", "initialize", "server/discover"]
      tools: ["echo", "add"]
"#;
    let db = dir.path().join("a.db");
    let (_gw, base) = start_gateway(dir.path(), &base_config(&upstream, &db, policy));
    let url = format!("{base}/mcp");
    let c = client();
    let r = call_tool(&c, &url, "echo", json!({"message": "hi"}))
        .header("x-api-key", KEY2)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = call_tool(&c, &url, "get_demo_credentials", json!({}))
        .header("x-api-key", KEY2)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = modern(&c, &url, "prompts/list", None, json!({}))
        .header("x-api-key", KEY2)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // The audit query needs the audit scope: bob (tools only) is refused, alice is served.
    let r = c
        .get(format!("{base}/api/audit/query?limit=5"))
        .header("x-api-key", KEY2)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = c
        .get(format!("{base}/api/audit/query?limit=5"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let ok = eventually(|| request_rows(&db).len() >= 3).await;
    assert!(ok);
    let r = c
        .get(format!("{base}/api/audit/query?limit=50"))
        .header("x-api-key", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert!(v["count"].as_u64().unwrap() >= 3, "{v}");
}

#[tokio::test]
async fn env_overrides_set_the_api_key() {
    let dir = tempdir();
    let (_up, upstream) = start_upstream(dir.path());
    let yaml = format!(
        "server:\n  addr: \"127.0.0.1:0\"\nauth:\n  enabled: false\naudit:\n  enabled: false\nupstreams:\n  - name: demo\n    path: /mcp\n    url: \"{upstream}\"\n"
    );
    let (_gw, base) = start_gateway_env(
        dir.path(),
        &yaml,
        &[
            ("MCP_AUTH_ENABLED", "true"),
            ("MCP_AUTH_MODE", "apikey"),
            ("MCP_AUTH_API_KEY", KEY),
        ],
    );
    let url = format!("{base}/mcp");
    let c = client();
    assert_eq!(tools_list(&c, &url, None).await.0, 401);
    assert_eq!(
        tools_list(&c, &url, Some(("x-api-key", KEY.into())))
            .await
            .0,
        200
    );
}

async fn status_with_key(c: &reqwest::Client, url: &str, key: &str) -> reqwest::Response {
    modern(c, url, "tools/list", None, json!({}))
        .header("x-api-key", key)
        .send()
        .await
        .unwrap()
}

fn threshold_alerts(db: &std::path::Path) -> Vec<serde_json::Value> {
    audit_rows(db)
        .into_iter()
        .filter(|r| r.kind == "auth_failure" && r.event["detail"] == "threshold_reached")
        .map(|r| r.event)
        .collect()
}

/// `monitoring.auth_failure_threshold` / `auth_failure_window` (the seed's keys) and
/// `auth_failure_block_seconds` (ours). Attack case: a client guessing keys is refused
/// before authentication once it reached the threshold, even with the right key, until
/// the block ends.
#[tokio::test]
async fn auth_failure_threshold_alerts_and_blocks() {
    let dir = tempdir();
    let (_up, upstream) = start_upstream(dir.path());
    let db = dir.path().join("a.db");
    let monitoring = "monitoring:\n  auth_failure_threshold: 3\n  auth_failure_window: 60\n  auth_failure_block_seconds: 2\n";
    let (_gw, base) = start_gateway(dir.path(), &base_config(&upstream, &db, monitoring));
    let url = format!("{base}/mcp");
    let c = client();
    assert_eq!(status_with_key(&c, &url, KEY).await.status(), 200);
    for _ in 0..3 {
        let r = status_with_key(&c, &url, "Wrong123!@#Wrong123!@#").await;
        assert_eq!(r.status(), 401);
    }
    // Blocked: the right key too, and the audit query endpoint.
    let r = status_with_key(&c, &url, KEY).await;
    assert_eq!(r.status(), 429);
    let retry = retry_after(&r);
    assert!((1..=2).contains(&retry), "{retry}");
    let body = r.text().await.unwrap();
    assert_eq!(last(&body)["error"]["code"], -32029, "{body}");
    let q = c
        .get(format!("{base}/api/audit/query?limit=1"))
        .header("x-api-key", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(q.status(), 429);
    // One alert: in the audit trail (address, counts; no key) and in the metrics.
    assert!(eventually(|| threshold_alerts(&db).len() == 1).await);
    let alert = &threshold_alerts(&db)[0];
    assert_eq!(alert["client_ip"], "127.0.0.1", "{alert}");
    assert_eq!(alert["data"]["failures"], 3, "{alert}");
    assert_eq!(alert["data"]["blocked_seconds"], 2, "{alert}");
    assert!(!alert.to_string().contains("Wrong123"), "{alert}");
    // The refusals are in the trail too, as rate limited.
    assert!(
        eventually(|| audit_rows(&db)
            .iter()
            .any(|r| r.reason.as_deref() == Some("rate_limited")))
        .await
    );
    // The block ends; the right key works again.
    let mut served = false;
    for _ in 0..60 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        if status_with_key(&c, &url, KEY).await.status() == 200 {
            served = true;
            break;
        }
    }
    assert!(served, "still refused after the block");
    // The alert is counted in the metrics (read with a credential once the block is over:
    // a blocked address is refused on /metrics too).
    let metrics = metrics_text(&base).await;
    assert!(
        metrics
            .lines()
            .any(|l| l == "mcp_gateway_auth_failure_alerts_total 1"),
        "{metrics}"
    );
}

/// Without `auth_failure_block_seconds` the threshold raises one alert per window and
/// refuses nobody.
#[tokio::test]
async fn auth_failure_threshold_alone_only_alerts() {
    let dir = tempdir();
    let (_up, upstream) = start_upstream(dir.path());
    let db = dir.path().join("a.db");
    let monitoring = "monitoring:\n  auth_failure_threshold: 2\n";
    let (_gw, base) = start_gateway(dir.path(), &base_config(&upstream, &db, monitoring));
    let url = format!("{base}/mcp");
    let c = client();
    for _ in 0..6 {
        assert_eq!(status_with_key(&c, &url, "Wrong").await.status(), 401);
    }
    assert_eq!(status_with_key(&c, &url, KEY).await.status(), 200);
    assert!(eventually(|| threshold_alerts(&db).len() == 1).await);
    let alert = &threshold_alerts(&db)[0];
    assert_eq!(alert["data"]["failures"], 2, "{alert}");
    assert_eq!(alert["data"]["window_seconds"], 300, "{alert}");
    assert_eq!(alert["data"]["blocked_seconds"], 0, "{alert}");
    // Still one (the writer has caught up: the 200 above is in the trail).
    assert!(eventually(|| request_rows(&db).iter().any(|r| r.status == Some(200))).await);
    assert_eq!(threshold_alerts(&db).len(), 1);
    // Out-of-range settings are refused, naming the key and its line.
    for (bad, key) in [
        ("auth_failure_window: 0", "monitoring.auth_failure_window"),
        (
            "auth_failure_block_seconds: 90000",
            "monitoring.auth_failure_block_seconds",
        ),
    ] {
        let yaml = base_config(
            &upstream,
            &db,
            &format!("monitoring:\n  auth_failure_threshold: 2\n  {bad}\n"),
        );
        assert_check_refuses(dir.path(), &yaml, bad, key);
    }
}
