//! The classes behind the findings of attack_headers.rs, in more variants: header names
//! compared with `_` read as `-` and underscore names never forwarded, secret-looking
//! header names masked in the audit trail, query credentials refused in every spelling
//! with authentication off, `Expect` kept at the gateway, boundary header names that
//! cannot work refused by `check`, upstream URLs never printed with their secrets.
//!
//! Run: `cargo test -p mcp-gateway --test attack_headers_classes`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{Read, Write};

use common::*;

fn tools_list(c: &reqwest::Client, url: &str) -> reqwest::RequestBuilder {
    c.post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-06-18")
        .body(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{}}"#)
}

/// `base_config` with the API key read from `X-MCP-Key`.
fn mcp_key_config(upstream: &str, db: &std::path::Path) -> String {
    base_config(upstream, db, "").replacen(
        "  mode: apikey\n",
        "  mode: apikey\n  apiKeyHeader: X-MCP-Key\n",
        1,
    )
}

/// Every underscore spelling of a configured credential header, of a header whose name
/// suggests a secret and of any other name is dropped before the upstream; none of
/// their values reaches the audit trail in clear (the configured list is matched with
/// `_` as `-`, and names with token / secret / signature / ... are masked unlisted).
#[tokio::test]
async fn secret_headers_in_any_spelling_are_neither_forwarded_nor_stored() {
    let dir = tempdir();
    let db = dir.path().join("a.db");
    let (upstream, seen) = recording_upstream().await;
    let (_gw, base) = start_gateway(dir.path(), &mcp_key_config(&upstream, &db));
    let c = client();
    let secrets = [
        ("X_MCP_Key", "clear-mcp-key-7f3a01"),
        ("x-mcp_key", "clear-mcp-key-7f3a02"),
        ("X_Api_Key", "clear-api-key-7f3a03"),
        ("Proxy_Authorization", "Basic clear-7f3a04"),
        ("X-Vault-Token", "clear-vault-7f3a05"),
        ("Api-Key", "clear-apikey-7f3a06"),
        ("X-Amz-Security-Token", "clear-amz-7f3a07"),
        ("X-Hub-Signature-256", "clear-sig-7f3a08"),
        ("X-Client-Secret", "clear-secret-7f3a09"),
        ("X_Custom_Session", "clear-session-7f3a10"),
    ];
    let mut req = tools_list(&c, &format!("{base}/mcp"))
        .header("x-mcp-key", KEY)
        .header("X_Custom_Note", "plain-note");
    for (n, v) in secrets {
        req = req.header(n, v);
    }
    let r = req.send().await.unwrap();
    assert_eq!(r.status(), 200);
    let (_, h) = seen.lock().unwrap().pop().unwrap();
    let all = dump_headers(&h);
    for n in [
        "x_mcp_key",
        "x-mcp_key",
        "x_api_key",
        "proxy_authorization",
        "x_custom_session",
        "x_custom_note",
    ] {
        assert!(!h.contains_key(n), "{n} forwarded:\n{all}");
    }
    assert!(!all.contains(KEY), "{all}");
    assert!(eventually(|| !request_rows(&db).is_empty()).await);
    let rows: String = request_rows(&db)
        .iter()
        .map(|r| r.event.to_string())
        .collect();
    let clear: Vec<&str> = secrets
        .iter()
        .filter(|(_, v)| rows.contains(v))
        .map(|(n, _)| *n)
        .collect();
    assert!(clear.is_empty(), "stored in clear: {clear:?}\n{rows}");
    assert!(!rows.contains(KEY));
    // A header that suggests nothing secret is still recorded as sent.
    assert!(rows.contains("plain-note"), "{rows}");
}

/// `Expect: 100-continue` is answered by the gateway and not forwarded; a client's
/// `Connection` header cannot remove `Accept`, `Last-Event-Id` or any `Mcp-*` header,
/// but still removes a header of its own.
#[tokio::test]
async fn expect_stays_at_the_gateway_and_connection_removes_only_hop_headers() {
    let dir = tempdir();
    let db = dir.path().join("a.db");
    let (upstream, seen) = recording_upstream().await;
    let (_gw, base) = start_gateway(dir.path(), &base_config(&upstream, &db, ""));
    let addr = base.trim_start_matches("http://").to_owned();
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{}}"#;
    let req = format!(
        "POST /mcp HTTP/1.1\r\nHost: {addr}\r\nX-API-Key: {KEY}\r\n\
         Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\n\
         Mcp-Protocol-Version: 2025-06-18\r\nExpect: 100-continue\r\nX-Hop: 1\r\n\
         Connection: close, accept, mcp-protocol-version, last-event-id, x-hop, x-forwarded-for\r\n\
         Last-Event-Id: e-1\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let out = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(60)))
            .unwrap();
        s.write_all(req.as_bytes()).unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    })
    .await
    .unwrap();
    assert!(out.lines().any(|l| l.starts_with("HTTP/1.1 200")), "{out}");
    let (_, h) = seen.lock().unwrap().pop().unwrap();
    let all = dump_headers(&h);
    assert!(!h.contains_key("expect"), "{all}");
    assert!(!h.contains_key("x-hop"), "{all}");
    for n in [
        "accept",
        "mcp-protocol-version",
        "last-event-id",
        "x-forwarded-for",
        "x-request-id",
    ] {
        assert!(h.contains_key(n), "{n} removed:\n{all}");
    }
    assert_eq!(h.get("x-forwarded-for").unwrap(), "127.0.0.1");
}

/// With authentication off, every spelling of a credential name in the query is
/// refused (400, recorded in the audit trail) and never reaches the upstream; other
/// parameters pass.
#[tokio::test]
async fn query_credentials_are_refused_in_every_spelling_with_authentication_off() {
    let dir = tempdir();
    let db = dir.path().join("a.db");
    let (upstream, seen) = recording_upstream().await;
    let yaml = format!(
        r#"server:
  addr: "127.0.0.1:0"
auth:
  enabled: false
  credentialHeaders: [X-Upstream-Token]
audit:
  enabled: true
  storage: database
  database: {{type: sqlite, sqlitePath: "{}"}}
upstreams:
  - name: rec
    path: /mcp
    url: "{upstream}"
"#,
        db.display()
    );
    let yaml = per_request_audit(&yaml);
    let (_gw, base) = start_gateway(dir.path(), &yaml);
    let c = client();
    let mut passed = Vec::new();
    for q in [
        "access_token=S",
        "ACCESS.TOKEN=S",
        "access%u005Ftoken=S",
        "a=1;api+key=S",
        "x_api_key=S",
        "x-auth-token=S",
        "authorization=S",
        "x_upstream_token=S",
        "X.Upstream[Token=S",
        "token[]=S",
    ] {
        let r = tools_list(&c, &format!("{base}/mcp?{q}"))
            .send()
            .await
            .unwrap();
        if r.status() != 400 {
            passed.push((q, r.status().as_u16()));
        }
    }
    assert!(passed.is_empty(), "not refused: {passed:?}");
    assert!(seen.lock().unwrap().is_empty(), "the upstream was reached");
    let r = tools_list(&c, &format!("{base}/mcp?page=2&tokens_used=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(seen.lock().unwrap().len(), 1);
    assert!(eventually(|| request_rows(&db).len() >= 11).await);
    let rows: String = request_rows(&db)
        .iter()
        .map(|r| r.event.to_string())
        .collect();
    assert!(rows.contains("credential in query parameter"), "{rows}");
}

/// `check` refuses, naming the key: gateway header names that are framing, hop-by-hop,
/// routing or MCP headers (in any spelling), the principal and client-certificate
/// headers under one name, a `*` in credentialHeaders, an upstream header that sets the
/// principal header, and allowing a header the gateway sets itself or an underscore
/// name.
#[test]
fn check_refuses_boundary_names_that_cannot_work() {
    let dir = tempdir();
    let db = dir.path().join("a.db");
    let up = "http://127.0.0.1:9/mcp";
    let refused = |yaml: &str, key: &str| {
        let path = dir.path().join("bad.yaml");
        std::fs::write(&path, yaml).unwrap();
        let (code, _, err) = run(
            &["check", "--config", path.to_str().unwrap()],
            dir.path(),
            &[],
        );
        assert_ne!(code, 0, "check accepted:\n{yaml}");
        assert!(err.contains(key), "{key} not named: {err}");
    };
    for (k, v) in [
        ("principalHeader", "Keep-Alive"),
        ("principalHeader", "TE"),
        ("principalHeader", "Upgrade"),
        ("principalHeader", "Trailer"),
        ("principalHeader", "Proxy-Status"),
        ("principalHeader", "Content-Type"),
        ("principalHeader", "Mcp-Session-Id"),
        ("principalHeader", "X_Forwarded_For"),
        ("principalHeader", "X-Request-Id"),
        ("principalHeader", "X_API_Key"),
        ("clientCertHeader", "Host"),
        ("clientCertHeader", "mcp-protocol-version"),
    ] {
        let extra = format!("security:\n  upstreamHeaders:\n    {k}: {v}\n");
        let yaml = base_config(up, &db, &extra);
        assert_check_refuses(
            dir.path(),
            &yaml,
            &format!("{k}: {v}"),
            &format!("security.upstreamHeaders.{k}"),
        );
    }
    refused(
        &base_config(
            up,
            &db,
            "security:\n  upstreamHeaders:\n    principalHeader: X-Who\n    clientCertHeader: X_Who\n",
        ),
        "security.upstreamHeaders.clientCertHeader",
    );
    for a in [
        "X-MCP-Principal",
        "x_mcp_principal",
        "X-Forwarded-For",
        "X_Custom",
    ] {
        refused(
            &base_config(
                up,
                &db,
                &format!("security:\n  upstreamHeaders:\n    allow: [\"{a}\"]\n"),
            ),
            "security.upstreamHeaders.allow",
        );
    }
    let yaml = base_config(up, &db, "").replacen(
        "  mode: apikey\n",
        "  mode: apikey\n  credentialHeaders: [\"X-Token-*\"]\n",
        1,
    );
    refused(&yaml, "auth.credentialHeaders");
    for h in ["X-MCP-Principal", "x_mcp_principal"] {
        let yaml = base_config(up, &db, "").replacen(
            &format!("    url: \"{up}\"\n"),
            &format!("    url: \"{up}\"\n    headers:\n      {h}: admin\n"),
            1,
        );
        refused(&yaml, "upstreams[0].headers");
    }
    // A name of its own is accepted.
    let yaml = base_config(
        up,
        &db,
        "security:\n  upstreamHeaders:\n    principalHeader: X-Gateway-Principal\n",
    );
    let path = dir.path().join("good.yaml");
    std::fs::write(&path, yaml).unwrap();
    let (code, _, err) = run(
        &["check", "--config", path.to_str().unwrap()],
        dir.path(),
        &[],
    );
    assert_eq!(code, 0, "{err}");
}

/// The upstream URL's user info and query values appear neither in `check`'s output nor
/// in the gateway's log when the upstream cannot be reached.
#[tokio::test]
async fn upstream_url_secrets_stay_out_of_check_and_error_logs() {
    let dir = tempdir();
    let db = dir.path().join("a.db");
    let url = "http://svc:url-password-7f3a@127.0.0.1:9/mcp?api_key=url-query-secret-7f3a";
    let yaml = base_config(url, &db, "");
    let path = dir.path().join("c.yaml");
    std::fs::write(&path, &yaml).unwrap();
    let (code, out, err) = run(
        &["check", "--config", path.to_str().unwrap()],
        dir.path(),
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let (gw, base) = start_gateway_env(dir.path(), &yaml, &[("MCP_GATEWAY_LOG", "debug")]);
    let r = tools_list(&client(), &format!("{base}/mcp"))
        .header("x-api-key", KEY)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_server_error(), "{}", r.status());
    std::thread::sleep(std::time::Duration::from_millis(300));
    let log = gw.stderr_text();
    assert!(log.contains("127.0.0.1:9"), "{log}");
    for secret in ["url-password-7f3a", "url-query-secret-7f3a"] {
        for (what, text) in [
            ("check stdout", &out),
            ("check stderr", &err),
            ("log", &log),
        ] {
            assert!(!text.contains(secret), "{secret} in the {what}:\n{text}");
        }
    }
    // A reachable upstream with user info, logging at trace (the HTTP client's pool
    // prints its connection key): served, the user info in no log line and not sent.
    let (upstream, seen) = recording_upstream().await;
    let url = upstream.replacen("http://", "http://svc:url-password-7f3a@", 1);
    // Its own trail: the first gateway still holds the first one's writer lock.
    let db2 = dir.path().join("b.db");
    let (gw, base) = start_gateway_env(
        dir.path(),
        &base_config(&url, &db2, ""),
        &[("MCP_GATEWAY_LOG", "trace")],
    );
    let r = tools_list(&client(), &format!("{base}/mcp"))
        .header("x-api-key", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (_, h) = seen.lock().unwrap().pop().unwrap();
    let all = dump_headers(&h);
    assert!(
        !all.contains("url-password-7f3a") && !h.contains_key("authorization"),
        "{all}"
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    let log = gw.stderr_text();
    assert!(
        !log.contains("url-password-7f3a"),
        "user info in the trace log"
    );
}
