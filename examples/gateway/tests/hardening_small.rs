//! The smaller holes of the third hardening round, end to end through the gateway
//! process:
//! - metrics blinding: tool labels come from the tools the upstream lists, so a client
//!   sending hundreds of invented tool names cannot make a real tool count as `other`;
//! - audit output injection: C1, bidi and line separator characters a client sends reach
//!   neither the SQLite trail, the JSON lines file, the query API nor the logs raw;
//! - the audit query's own-rows scope (`audit:read:own`);
//! - JWT token types and NumericDates (`auth.jwt.issuers[].tokenTypes`, `allowUntyped`,
//!   `allowFractionalDates`);
//! - the bounded Basic verification queue (`auth.basic.maxQueued`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use serde_json::{Value, json};

async fn tool_call(c: &reqwest::Client, url: &str, key: &str, tool: &str, args: Value) -> u16 {
    call_tool(c, url, tool, args)
        .header("x-api-key", key)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn invented_tool_names_never_take_the_labels_of_real_tools() {
    let dir = tempdir();
    let (_up, _gw, base) = start_default(dir.path());
    let url = format!("{base}/mcp");
    let c = client();
    // bob (tools only) calls 205 tools that do not exist, before anyone listed them and
    // again after; then with names that only look like tools.
    for i in 0..205 {
        tool_call(&c, &url, KEY2, &format!("nope-{i}"), json!({})).await;
    }
    let r = modern(&c, &url, "tools/list", None, json!({}))
        .header("x-api-key", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let listed = last(&r.text().await.unwrap())["result"]["tools"]
        .as_array()
        .unwrap()
        .len();
    assert!(listed > 3);
    for i in 0..20 {
        tool_call(&c, &url, KEY2, &format!("later-{i}"), json!({})).await;
    }
    assert_eq!(
        tool_call(&c, &url, KEY, "echo", json!({"message": "hi"})).await,
        200
    );
    let m = metrics_text(&base).await;
    assert!(
        has_requests_line(&m, &[r#"tool="echo""#, r#"status="200""#]),
        "the real tool counts as other:\n{m}"
    );
    for l in m
        .lines()
        .filter(|l| l.starts_with("mcp_gateway_requests_total{"))
    {
        assert!(
            !l.contains("tool=\"nope-") && !l.contains("tool=\"later-"),
            "a client's name became a label: {l}"
        );
    }
    // Every invented name shares `other`.
    let other: f64 = m
        .lines()
        .filter(|l| l.starts_with("mcp_gateway_requests_total{") && l.contains(r#"tool="other""#))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(other >= 225.0, "{other}\n{m}");
}

const HOSTILE: &[char] = &[
    '\u{80}', '\u{85}', '\u{9b}', '\u{9f}', '\u{202a}', '\u{202e}', '\u{2066}', '\u{2069}',
    '\u{200e}', '\u{200f}', '\u{061c}', '\u{2028}', '\u{2029}',
];

fn hostile(prefix: &str) -> String {
    let mut s = String::from(prefix);
    for c in HOSTILE {
        s.push(*c);
        s.push('_');
    }
    s
}

fn assert_clean(what: &str, text: &str) {
    for c in HOSTILE {
        assert!(!text.contains(*c), "{what} holds U+{:04X} raw", *c as u32);
    }
}

#[tokio::test]
async fn hostile_characters_reach_no_audit_output_or_log_raw() {
    let dir = tempdir();
    let (_up, upstream) = start_upstream(dir.path());
    let db = dir.path().join("a.db");
    let jsonl = dir.path().join("audit.jsonl");
    let yaml = base_config(&upstream, &db, "").replace(
        "  storage: database\n",
        &format!(
            "  storage: [database, file, tracing]\n  file:\n    path: \"{}\"\n",
            jsonl.display()
        ),
    );
    let (mut gw, base) = start_gateway_env(dir.path(), &yaml, &[("MCP_GATEWAY_LOG", "debug")]);
    let url = format!("{base}/mcp");
    let c = client();
    // Arguments, argument keys, and a tool name (the upstream refuses it; recorded all
    // the same).
    let s = tool_call(
        &c,
        &url,
        KEY,
        "echo",
        json!({"message": hostile("m"), hostile("k"): [hostile("v")]}),
    )
    .await;
    // Refused by the argument rules (control characters) or served: recorded either way.
    assert!(s == 200 || s == 400, "{s}");
    tool_call(&c, &url, KEY, &hostile("tool"), json!({"message": "x"})).await;
    assert!(eventually(|| request_rows(&db).len() >= 2).await);
    assert!(
        eventually(|| std::fs::read_to_string(&jsonl).is_ok_and(|t| t.lines().count() >= 3)).await
    );

    for row in audit_rows(&db) {
        // (The event decodes to the raw characters: it is checked as stored, below.)
        assert_clean("tool column", row.tool.as_deref().unwrap_or(""));
        assert_clean("user column", row.user.as_deref().unwrap_or(""));
    }
    let raw = rusqlite_events(&db);
    assert!(raw.iter().any(|e| e.contains("\\u202e")), "{raw:?}");
    for e in &raw {
        assert_clean("stored event", e);
    }
    let text = std::fs::read_to_string(&jsonl).unwrap();
    assert_clean("JSON lines file", &text);
    let q = client()
        .get(format!("{base}/api/audit/query?limit=100"))
        .header("x-api-key", KEY)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_clean("query answer", &q);
    let v: Value = serde_json::from_str(&q).unwrap();
    assert!(
        v["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["event"]["params"]["arguments"]["message"] == hostile("m")),
        "the escaped JSON decodes to what was sent: {v}"
    );
    gw.terminate();
    gw.wait_exit(30);
    let log = gw.stderr_text();
    assert_clean("gateway log", &log);
    assert!(
        log.contains("\\u202e"),
        "the tracing sink wrote the escaped records"
    );
}

/// The raw `event` column of every row.
fn rusqlite_events(db: &std::path::Path) -> Vec<String> {
    let out = std::process::Command::new("sqlite3")
        .arg(db)
        .arg("SELECT event FROM audit_events")
        .output();
    match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(str::to_owned)
            .collect(),
        // Without the sqlite3 tool, the rows as the helper reads them.
        _ => audit_rows(db).iter().map(|r| r.event.to_string()).collect(),
    }
}

#[tokio::test]
async fn the_own_rows_scope_reads_nobody_elses_rows() {
    let dir = tempdir();
    let (_up, upstream) = start_upstream(dir.path());
    let db = dir.path().join("a.db");
    let yaml = base_config(&upstream, &db, "").replace(
        "      scopes: [\"mcp:tools\"]\n",
        "      scopes: [\"mcp:tools\", \"audit:read:own\"]\n",
    );
    let (_gw, base) = start_gateway(dir.path(), &yaml);
    let url = format!("{base}/mcp");
    let c = client();
    for _ in 0..3 {
        tool_call(&c, &url, KEY, "echo", json!({"message": "alice"})).await;
        tool_call(&c, &url, KEY2, "echo", json!({"message": "bob"})).await;
    }
    assert!(eventually(|| request_rows(&db).len() >= 6).await);
    let get = |q: &str, key: &str| {
        c.get(format!("{base}/api/audit/query?{q}"))
            .header("x-api-key", key)
            .send()
    };
    let r = get("limit=100", KEY2).await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let events = v["events"].as_array().unwrap();
    assert!(events.len() >= 3, "{v}");
    for e in events {
        assert_eq!(e["event"]["user"], "apikey:bob", "{e}");
    }
    for q in ["user=apikey:alice", "user=anonymous"] {
        assert_eq!(get(q, KEY2).await.unwrap().status(), 403, "{q}");
    }
    // alice (audit:read) reads every row.
    let v: Value = get("user=apikey:bob", KEY)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(v["count"].as_u64().unwrap() >= 3, "{v}");
}

#[test]
fn check_refuses_bad_query_scopes_and_token_types() {
    let dir = tempdir();
    let base = base_config("http://127.0.0.1:9", &dir.path().join("a.db"), "");
    let yaml = base.replace(
        "  storage: database\n",
        "  storage: database\n  query:\n    ownScope: \"\"\n",
    );
    refused_naming(dir.path(), &yaml, "ownScope: \"\"", "audit.query.ownScope");
    let jwt = jwt_config(
        "http://127.0.0.1:9",
        &dir.path().join("a.db"),
        "tokenTypes: [\"a b\"]",
    );
    refused_naming(
        dir.path(),
        &jwt,
        "tokenTypes: [\"a b\"]",
        "auth.jwt.issuers[0].tokenTypes",
    );
    let basic = basic_config(
        "http://127.0.0.1:9",
        &dir.path().join("a.db"),
        "maxQueued: -1",
    );
    let path = dir.path().join("basic.yaml");
    std::fs::write(&path, basic).unwrap();
    let (code, _, err) = run(
        &["check", "--config", path.to_str().unwrap()],
        dir.path(),
        &[],
    );
    assert_ne!(code, 0, "{err}");
}

/// `check` refuses `yaml`, naming the file, the line whose trimmed text is `bad_line` (or
/// that of its top-level section, where a crate's builder refused it: `audit: ...`), and
/// `key`.
fn refused_naming(dir: &std::path::Path, yaml: &str, bad_line: &str, key: &str) {
    let path = dir.join("bad.yaml");
    std::fs::write(&path, yaml).unwrap();
    let line = yaml.lines().position(|l| l.trim() == bad_line).unwrap() + 1;
    let (code, _, err) = run(&["check", "--config", path.to_str().unwrap()], dir, &[]);
    assert_ne!(code, 0, "check accepted {bad_line:?}");
    // The line of the key, or of its section when a crate's builder refused it.
    let section = yaml
        .lines()
        .take(line)
        .enumerate()
        .filter(|(_, l)| !l.starts_with(' ') && !l.is_empty())
        .map(|(i, _)| i + 1)
        .last()
        .unwrap();
    assert!(
        (err.contains(&format!("bad.yaml:{line}:"))
            || err.contains(&format!("bad.yaml:{section}:")))
            && err.contains(key),
        "{err}"
    );
}

const SECRET: &str = "a-jwt-secret-of-at-least-32-bytes-0123456789";

fn jwt_config(upstream: &str, db: &std::path::Path, extra: &str) -> String {
    format!(
        r#"server:
  addr: "127.0.0.1:0"
auth:
  enabled: true
  mode: jwt
  jwt:
    issuers:
      - issuer: "https://idp.test"
        audiences: ["mcp"]
        secret: "{SECRET}"
        {extra}
audit:
  enabled: true
  database:
    sqlitePath: "{}"
upstreams:
  - name: demo
    path: /mcp
    url: "{upstream}"
"#,
        db.display()
    )
}

fn jwt(typ: Option<&str>, claims: Value) -> String {
    // With both JWT backends compiled in (--all-features), jsonwebtoken has no default.
    mcp_auth::jwt::install_crypto_provider();
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    h.typ = typ.map(str::to_owned);
    jsonwebtoken::encode(
        &h,
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

async fn list_with(c: &reqwest::Client, url: &str, token: &str) -> u16 {
    modern(c, url, "tools/list", None, json!({}))
        .header("authorization", format!("Bearer {token}"))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn jwt_types_and_dates_are_checked() {
    let dir = tempdir();
    let (_up, upstream) = start_upstream(dir.path());
    let claims = |exp: Value| json!({"sub": "carol", "iss": "https://idp.test", "aud": "mcp", "exp": exp, "scope": "mcp:tools"});
    let exp = now() + 600;
    {
        let (_gw, base) = start_gateway(
            dir.path(),
            &jwt_config(&upstream, &dir.path().join("a.db"), ""),
        );
        let url = format!("{base}/mcp");
        let c = client();
        for typ in ["JOSE+JSON", "secevent+jwt", "id_token"] {
            assert_eq!(
                list_with(&c, &url, &jwt(Some(typ), claims(json!(exp)))).await,
                401,
                "{typ}"
            );
        }
        for exp in [
            json!(exp as f64 + 0.5),
            json!(exp.to_string()),
            json!(1e300),
        ] {
            assert_eq!(
                list_with(&c, &url, &jwt(None, claims(exp.clone()))).await,
                401,
                "{exp}"
            );
        }
        for typ in [
            Some("at+jwt"),
            Some("application/at+jwt"),
            Some("JWT"),
            None,
        ] {
            assert_eq!(
                list_with(&c, &url, &jwt(typ, claims(json!(exp)))).await,
                200,
                "{typ:?}"
            );
        }
    }
    // An issuer that types its access tokens: ID tokens (JWT, untyped) are refused.
    let dir2 = tempdir();
    let (_gw, base) = start_gateway(
        dir2.path(),
        &jwt_config(
            &upstream,
            &dir2.path().join("a.db"),
            "tokenTypes: [at+jwt]\n        allowUntyped: false\n        allowFractionalDates: true",
        ),
    );
    let url = format!("{base}/mcp");
    let c = client();
    for typ in [Some("JWT"), None] {
        assert_eq!(
            list_with(&c, &url, &jwt(typ, claims(json!(exp)))).await,
            401,
            "{typ:?}"
        );
    }
    assert_eq!(
        list_with(&c, &url, &jwt(Some("at+jwt"), claims(json!(exp)))).await,
        200
    );
    assert_eq!(
        list_with(
            &c,
            &url,
            &jwt(Some("at+jwt"), claims(json!(exp as f64 + 0.5)))
        )
        .await,
        200
    );
}

fn basic_config(upstream: &str, db: &std::path::Path, basic: &str) -> String {
    format!(
        r#"server:
  addr: "127.0.0.1:0"
auth:
  enabled: true
  mode: basic
  users:
    - {{username: alice, password: "correct horse battery staple", scopes: ["mcp:tools"]}}
    - {{username: bob, password: "another horse battery staple", scopes: ["mcp:tools"]}}
  basic: {{maxConcurrent: 1, {basic}}}
ratelimit:
  enabled: false
ip_ratelimit:
  requests_per_second: 100000
  burst: 100000
monitoring:
  auth_failure_threshold: 100000
audit:
  enabled: true
  database:
    sqlitePath: "{}"
upstreams:
  - name: demo
    path: /mcp
    url: "{upstream}"
"#,
        db.display()
    )
}

fn basic(user: &str, pass: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    )
}

#[tokio::test]
async fn a_wrong_password_flood_is_refused_past_the_queue_while_known_users_pass() {
    let dir = tempdir();
    let (_up, upstream) = start_upstream(dir.path());
    let (_gw, base) = start_gateway(
        dir.path(),
        &basic_config(&upstream, &dir.path().join("a.db"), "maxQueued: 2"),
    );
    let url = format!("{base}/mcp");
    let c = client();
    let alice = basic("alice", "correct horse battery staple");
    let list = |h: String| {
        let c = c.clone();
        let url = url.clone();
        async move {
            modern(&c, &url, "tools/list", None, json!({}))
                .header("authorization", h)
                .send()
                .await
                .unwrap()
        }
    };
    assert_eq!(list(alice.clone()).await.status(), 200);
    let mut flood = Vec::new();
    for i in 0..60 {
        flood.push(tokio::spawn(list(basic("bob", &format!("wrong-{i}")))));
    }
    for _ in 0..10 {
        assert_eq!(list(alice.clone()).await.status(), 200);
    }
    let (mut refused, mut invalid) = (0, 0);
    for f in flood {
        let r = f.await.unwrap();
        match r.status().as_u16() {
            503 => {
                assert!(r.headers().contains_key("retry-after"));
                refused += 1;
            }
            401 => invalid += 1,
            s => panic!("{s}"),
        }
    }
    assert!(refused > 0, "no attempt refused: the queue is unbounded");
    assert!(invalid >= 3, "{invalid}");
}
