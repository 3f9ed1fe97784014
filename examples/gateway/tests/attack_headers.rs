//! Attacks on the upstream boundary found by a security review (credential headers,
//! untrusted identity headers, the principal header, query credentials, the upstream
//! URL in logs). Each test states the behaviour the README promises and failed before
//! its fix; the `FINDING n` comments say what got through.
//!
//! Run: `cargo test -p mcp-gateway --test attack_headers`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{Read, Write};

use common::*;
use serde_json::json;

const JWT_SECRET: &str = "0123456789abcdef0123456789abcdef0123456789";

/// A gateway in JWT mode (HS256, JWT_SECRET) in front of `upstream`.
fn jwt_config(upstream: &str, db: &std::path::Path, extra: &str) -> String {
    format!(
        r#"server:
  addr: "127.0.0.1:0"
auth:
  enabled: true
  mode: jwt
  jwtSecret: "{JWT_SECRET}"
audit:
  enabled: true
  storage: database
  database: {{type: sqlite, sqlitePath: "{}"}}
upstreams:
  - name: rec
    path: /mcp
    url: "{upstream}"
{extra}"#,
        db.display()
    )
}

fn jwt_for(sub: &str) -> String {
    // With both JWT backends compiled in (--all-features), jsonwebtoken has no default.
    mcp_auth::jwt::install_crypto_provider();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": sub, "iat": now, "exp": now + 3600, "scope": "mcp:tools"}),
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap()
}

/// A plain tools/list (2025-06-18 headers) to `url`.
fn tools_list(c: &reqwest::Client, url: &str) -> reqwest::RequestBuilder {
    c.post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-06-18")
        .body(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{}}"#)
}

/// FINDING 1. Header names with `_` instead of `-` are forwarded: `X_Forwarded_User`,
/// `X_MCP_Principal`, `X_Remote_User`, `X_Forwarded_For`. CGI/WSGI servers (Python's
/// wsgiref, older gunicorn, PHP's $_SERVER, nginx with underscores_in_headers on) map
/// both spellings to the same HTTP_X_MCP_PRINCIPAL variable: wsgiref behind the gateway
/// sees HTTP_X_MCP_PRINCIPAL="admin,alice" and HTTP_X_FORWARDED_USER="admin".
#[tokio::test]
async fn underscore_spellings_of_untrusted_headers_do_not_reach_the_upstream() {
    let dir = tempdir();
    let db = dir.path().join("a.db");
    let (upstream, seen) = recording_upstream().await;
    let (_gw, base) = start_gateway(dir.path(), &base_config(&upstream, &db, ""));
    let c = client();
    let spoofed = [
        "X_MCP_Principal",
        "X_Forwarded_User",
        "X_Forwarded_For",
        "X_Remote_User",
        "X_Auth_Request_User",
        "X_SSL_Client_S_DN",
        "X_HTTP_Method_Override",
    ];
    let mut req = tools_list(&c, &format!("{base}/mcp")).header("x-api-key", KEY);
    for n in spoofed {
        req = req.header(n, "admin");
    }
    let r = req.send().await.unwrap();
    assert_eq!(r.status(), 200);
    let (_, h) = seen.lock().unwrap().pop().unwrap();
    let all = dump_headers(&h);
    let leaked: Vec<&str> = spoofed
        .iter()
        .copied()
        .filter(|n| h.contains_key(*n))
        .collect();
    assert!(
        leaked.is_empty(),
        "underscore aliases reached the upstream: {leaked:?}\n{all}"
    );
}

/// FINDING 2. The real API key sent under an underscore alias of the API key header
/// (`X_API_Key`) is forwarded to the upstream and stored in clear in the audit trail
/// (and served by /api/audit/query); a token passthrough to any upstream that maps `_`
/// to `-`.
#[tokio::test]
async fn an_underscore_alias_of_a_credential_header_is_neither_forwarded_nor_stored() {
    let dir = tempdir();
    let db = dir.path().join("a.db");
    let (upstream, seen) = recording_upstream().await;
    let (_gw, base) = start_gateway(dir.path(), &base_config(&upstream, &db, ""));
    let c = client();
    let r = tools_list(&c, &format!("{base}/mcp"))
        .header("x-api-key", KEY)
        .header("X_API_Key", KEY2)
        .header("X_Auth_Token", "secret-underscore-token-7f3a")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (_, h) = seen.lock().unwrap().pop().unwrap();
    let all = dump_headers(&h);
    assert!(eventually(|| !request_rows(&db).is_empty()).await);
    let audit = audit_query(&base, "limit=50").await.to_string();
    let rows: String = request_rows(&db)
        .iter()
        .map(|r| r.event.to_string())
        .collect();
    let mut problems = Vec::new();
    if all.contains(KEY2) || all.contains("secret-underscore-token") {
        problems.push(format!("forwarded to the upstream:\n{all}"));
    }
    if rows.contains(KEY2) || rows.contains("secret-underscore-token") {
        problems.push("stored in clear in the SQLite audit trail".to_owned());
    }
    if audit.contains(KEY2) {
        problems.push("served in clear by /api/audit/query".to_owned());
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

/// FINDING 3. Headers the gateway itself classifies as token-bearing (its untrusted
/// list: X-Access-Token, X-Id-Token, X-Auth-Request-Access-Token,
/// X-Amzn-Oidc-Accesstoken, ...) are stripped before the upstream but recorded
/// unmasked in the audit trail: they are not in the credential list that drives masking.
#[tokio::test]
async fn token_headers_of_the_untrusted_list_are_masked_in_the_audit_trail() {
    let dir = tempdir();
    let db = dir.path().join("a.db");
    let (upstream, _seen) = recording_upstream().await;
    let (_gw, base) = start_gateway(dir.path(), &base_config(&upstream, &db, ""));
    let c = client();
    let tokens = [
        ("X-Access-Token", "opaque-access-7f3a9c01"),
        ("X-Id-Token", "opaque-id-7f3a9c02"),
        ("X-Auth-Request-Access-Token", "ya29.opaque-7f3a9c03"),
        ("X-Amzn-Oidc-Accesstoken", "opaque-amzn-7f3a9c04"),
    ];
    let mut req = tools_list(&c, &format!("{base}/mcp")).header("x-api-key", KEY);
    for (n, v) in tokens {
        req = req.header(n, v);
    }
    assert_eq!(req.send().await.unwrap().status(), 200);
    assert!(eventually(|| !request_rows(&db).is_empty()).await);
    let rows: String = request_rows(&db)
        .iter()
        .map(|r| r.event.to_string())
        .collect();
    let clear: Vec<&str> = tokens
        .iter()
        .filter(|(_, v)| rows.contains(v))
        .map(|(n, _)| *n)
        .collect();
    assert!(clear.is_empty(), "tokens stored in clear: {clear:?}");
}

/// FINDING 4. With authentication off (allowed on loopback), query credentials are not
/// refused at all (the check lives in the authentication layer): `?access_token=` goes
/// to the upstream. The README says they are refused "before authentication".
#[tokio::test]
async fn query_credentials_are_refused_with_authentication_off() {
    let dir = tempdir();
    let db = dir.path().join("a.db");
    let (upstream, seen) = recording_upstream().await;
    let yaml = format!(
        r#"server:
  addr: "127.0.0.1:0"
auth:
  enabled: false
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
    let (_gw, base) = start_gateway(dir.path(), &yaml);
    let c = client();
    let r = tools_list(&c, &format!("{base}/mcp?access_token=secret-query-7f3a"))
        .send()
        .await
        .unwrap();
    let status = r.status();
    let forwarded: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|(u, _)| u.clone())
        .collect();
    assert_eq!(status, 400, "forwarded: {forwarded:?}");
}

/// FINDING 5. Query parameter names that PHP reads as `access_token` are not refused:
/// PHP turns `.`, ` ` (and `+`) and an unclosed `[` in names into `_`
/// (`?access.token=` is $_GET['access_token']); `x_api_key` / `x_mcp_key` (the header
/// names with `_`, as a CGI-minded upstream spells them) pass too.
#[tokio::test]
async fn query_credential_names_in_php_spellings_are_refused() {
    let dir = tempdir();
    let db = dir.path().join("a.db");
    let (upstream, seen) = recording_upstream().await;
    let (_gw, base) = start_gateway(dir.path(), &base_config(&upstream, &db, ""));
    let c = client();
    let mut passed = Vec::new();
    for q in [
        "access.token=S",
        "access+token=S",
        "access%20token=S",
        "access%2Etoken=S",
        "access[token=S",
        "api.key=S",
        "x_api_key=S",
        // ASP.NET (System.Web) decodes %uXXXX: access_token
        "access%u005Ftoken=S",
    ] {
        let r = tools_list(&c, &format!("{base}/mcp?{q}"))
            .header("x-api-key", KEY)
            .send()
            .await
            .unwrap();
        if r.status() != 400 {
            passed.push((q, r.status().as_u16()));
        }
    }
    let forwarded: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|(u, _)| u.clone())
        .collect();
    assert!(
        passed.is_empty(),
        "not refused: {passed:?}; upstream got {forwarded:?}"
    );
}

/// FINDING 6. The principal header is not injective: surrounding spaces are trimmed, so
/// the JWT subjects "admin " and " admin" reach the upstream as X-MCP-Principal: admin
/// (a different principal for the gateway's policy, limits and audit); a subject of
/// spaces only sends no principal header at all (anonymous to the upstream) although
/// the request was authenticated; commas are not encoded, so "alice, admin" reads as a
/// two-element list to an upstream that splits the field. A subject of spaces only names
/// nobody: it is refused as an invalid credential (401), never sent anonymously.
#[tokio::test]
async fn the_principal_header_identifies_one_principal() {
    let dir = tempdir();
    let db = dir.path().join("a.db");
    let (upstream, seen) = recording_upstream().await;
    let (_gw, base) = start_gateway(dir.path(), &jwt_config(&upstream, &db, ""));
    let c = client();
    let mut got = Vec::new();
    let blank = tools_list(&c, &format!("{base}/mcp"))
        .bearer_auth(jwt_for("   "))
        .send()
        .await
        .unwrap();
    assert_eq!(blank.status(), 401, "a blank subject is not a principal");
    for sub in ["admin", "admin ", " admin", "alice, admin", "admin\t"] {
        let r = tools_list(&c, &format!("{base}/mcp"))
            .bearer_auth(jwt_for(sub))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{sub:?}");
        let (_, h) = seen.lock().unwrap().pop().unwrap();
        got.push((
            sub,
            h.get("x-mcp-principal")
                .map(|v| v.to_str().unwrap().to_owned()),
        ));
    }
    let admin = got[0].1.clone();
    let mut problems = Vec::new();
    for (sub, v) in &got[1..] {
        if *v == admin {
            problems.push(format!(
                "{sub:?} reaches the upstream as {v:?}, as \"admin\" does"
            ));
        }
        match v {
            None => problems.push(format!("{sub:?} authenticated, but no principal header")),
            Some(v) if v.contains(',') => {
                problems.push(format!("{sub:?} reaches the upstream as a list: {v:?}"));
            }
            _ => {}
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

/// FINDING 7. A client's `Connection` header removes headers the gateway set or checked
/// (RFC 9110 hop-by-hop removal applied after the gateway's own headers are in the
/// map): the gateway's X-Request-Id (the audit trail's correlation id) and the
/// Mcp-Protocol-Version / Content-Type the gateway validated never reach the upstream.
#[tokio::test]
async fn a_connection_header_does_not_remove_the_gateways_own_headers() {
    let dir = tempdir();
    let db = dir.path().join("a.db");
    let (upstream, seen) = recording_upstream().await;
    let (_gw, base) = start_gateway(dir.path(), &base_config(&upstream, &db, ""));
    let addr = base.trim_start_matches("http://").to_owned();
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{}}"#;
    let req = format!(
        "POST /mcp HTTP/1.1\r\nHost: {addr}\r\nX-API-Key: {KEY}\r\n\
         Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\n\
         Mcp-Protocol-Version: 2025-06-18\r\n\
         Connection: close, x-request-id, mcp-protocol-version, content-type\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let status = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        s.write_all(req.as_bytes()).unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out.lines().next().unwrap_or_default().to_owned()
    })
    .await
    .unwrap();
    assert!(status.contains("200"), "{status}");
    let (_, h) = seen.lock().unwrap().pop().unwrap();
    let all = dump_headers(&h);
    for n in ["x-request-id", "mcp-protocol-version", "content-type"] {
        assert!(
            h.contains_key(n),
            "{n} removed by the client's Connection header:\n{all}"
        );
    }
}

/// FINDING 8. Identity / address headers of common authenticating front ends are not in
/// the default untrusted list and reach the upstream: Authelia's Remote-Groups /
/// Remote-Email / Remote-Name (Remote-User is stripped), authentik's X-authentik-*,
/// Cloudflare Access, Pomerium, Google IAP's real header name X-Goog-IAP-JWT-Assertion
/// (the list has `x-iap-jwt-assertion`), Client-IP (read first by many PHP "real IP"
/// helpers), Kubernetes' Impersonate-*.
#[tokio::test]
async fn identity_headers_of_common_front_ends_do_not_reach_the_upstream() {
    let dir = tempdir();
    let db = dir.path().join("a.db");
    let (upstream, seen) = recording_upstream().await;
    let (_gw, base) = start_gateway(dir.path(), &base_config(&upstream, &db, ""));
    let c = client();
    let spoofed = [
        "Remote-Groups",
        "Remote-Email",
        "Remote-Name",
        "X-authentik-username",
        "X-authentik-groups",
        "Cf-Access-Authenticated-User-Email",
        "Cf-Access-Jwt-Assertion",
        "X-Pomerium-Jwt-Assertion",
        "X-Goog-IAP-JWT-Assertion",
        "Client-IP",
        "Impersonate-User",
        "Impersonate-Group",
        "X-MS-Token-AAD-ID-Token",
        "SSL-Client-Subject-DN",
        "X-Client-Cert-DN",
        "X-Client-Certificate-Subject",
    ];
    let mut req = tools_list(&c, &format!("{base}/mcp")).header("x-api-key", KEY);
    for n in spoofed {
        req = req.header(n, "admin");
    }
    assert_eq!(req.send().await.unwrap().status(), 200);
    let (_, h) = seen.lock().unwrap().pop().unwrap();
    let leaked: Vec<&str> = spoofed
        .iter()
        .copied()
        .filter(|n| h.contains_key(*n))
        .collect();
    assert!(leaked.is_empty(), "reached the upstream: {leaked:?}");
}

/// FINDING 9. Configuration validation: names that cannot work are accepted by `check`.
/// `principalHeader` / `clientCertHeader` may be a framing or hop-by-hop header
/// (Content-Length: a JWT subject "5" truncates the forwarded body to 5 bytes;
/// Host, Transfer-Encoding, Connection), X-Forwarded-For (overwritten by the gateway),
/// or both the same name; `credentialHeaders: ["X-Secret-*"]` is taken as the literal
/// name `x-secret-*` (while `upstreamHeaders.strip` reads `*` as a prefix), so
/// X-Secret-Foo is forwarded and stored in clear.
#[test]
fn odd_boundary_header_names_are_refused_by_check() {
    let dir = tempdir();
    let db = dir.path().join("a.db");
    let mut accepted = Vec::new();
    for extra in [
        "security:\n  upstreamHeaders: {principalHeader: Content-Length}\n",
        "security:\n  upstreamHeaders: {principalHeader: Host}\n",
        "security:\n  upstreamHeaders: {principalHeader: Transfer-Encoding}\n",
        "security:\n  upstreamHeaders: {principalHeader: Connection}\n",
        "security:\n  upstreamHeaders: {principalHeader: X-Forwarded-For}\n",
        "security:\n  upstreamHeaders: {principalHeader: X-Same, clientCertHeader: X-Same}\n",
        "security:\n  upstreamHeaders: {clientCertHeader: Content-Length}\n",
    ] {
        let yaml = base_config("http://127.0.0.1:9/mcp", &db, extra);
        let path = dir.path().join("odd.yaml");
        std::fs::write(&path, &yaml).unwrap();
        let (code, _, _) = run(
            &["check", "--config", path.to_str().unwrap()],
            dir.path(),
            &[],
        );
        if code == 0 {
            accepted.push(extra.trim().to_owned());
        }
    }
    let yaml = base_config("http://127.0.0.1:9/mcp", &db, "").replacen(
        "  mode: apikey\n",
        "  mode: apikey\n  credentialHeaders: [\"X-Secret-*\"]\n",
        1,
    );
    let path = dir.path().join("odd.yaml");
    std::fs::write(&path, &yaml).unwrap();
    let (code, _, _) = run(
        &["check", "--config", path.to_str().unwrap()],
        dir.path(),
        &[],
    );
    if code == 0 {
        accepted.push("auth.credentialHeaders: [\"X-Secret-*\"]".to_owned());
    }
    assert!(accepted.is_empty(), "accepted: {accepted:#?}");
}

/// FINDING 10. The upstream URL is logged in full at INFO on every start
/// (`upstream upstream=.. path=.. url=..`): a key in its query
/// (`?api_key=${UPSTREAM_KEY}`, as hosted MCP servers often take it) or user info
/// (`http://user:password@host`) goes to the log in clear; hyper's pool also prints the
/// authority with the user info at trace level.
#[tokio::test]
async fn secrets_in_the_upstream_url_are_not_logged() {
    let dir = tempdir();
    let db = dir.path().join("a.db");
    let (upstream, _seen) = recording_upstream().await;
    let url = upstream.replacen("http://", "http://svc:url-password-7f3a@", 1)
        + "?api_key=url-query-secret-7f3a";
    let (gw, _base) = start_gateway(dir.path(), &base_config(&url, &db, ""));
    std::thread::sleep(std::time::Duration::from_millis(300));
    let log = gw.stderr_text();
    for secret in ["url-password-7f3a", "url-query-secret-7f3a"] {
        assert!(
            !log.contains(secret),
            "{secret} in the log:\n{}",
            log.lines()
                .filter(|l| l.contains(secret))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}
