//! The request side over real sockets: ParseLayer + SanitizeLayer (and OriginGuardLayer)
//! in an axum server on 127.0.0.1:0, driven by a real HTTP/1.1 client or a raw socket.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::routing::post;
use common::*;
use mcp_core::ParseLayer;
use mcp_sanitize::{
    Category, ControlCharPolicy, OriginConfig, OriginGuardLayer, RuleAction, SanitizeConfig,
    SanitizeLayer,
};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn routes() -> Router {
    Router::new().route(
        "/mcp",
        post(echo)
            .get(|| async { "stream" })
            .delete(|| async { "bye" }),
    )
}

async fn server(layer: SanitizeLayer) -> std::net::SocketAddr {
    spawn(routes().layer(layer.with_parse())).await
}

async fn default_server() -> std::net::SocketAddr {
    server(SanitizeLayer::new(SanitizeConfig::default()).unwrap()).await
}

fn error_code(r: &Resp) -> i64 {
    r.json()["error"]["code"].as_i64().unwrap_or_default()
}

#[tokio::test]
async fn a_valid_call_passes_untouched() {
    let addr = default_server().await;
    let body = tools_call(
        "search",
        json!({"q": "rust tower layers", "url": "https://docs.rs/tower"}),
    );
    let r = send(addr, post_json(body.clone(), &[])).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let v = r.json();
    assert_eq!(v["body"].as_str().unwrap().as_bytes(), &body[..]);
    assert_eq!(v["mcp_raw"].as_str().unwrap().as_bytes(), &body[..]);
}

#[tokio::test]
async fn content_type_is_required_on_post() {
    let addr = default_server().await;
    let body = tools_call("t", json!({}));
    let mut req = post_json(body.clone(), &[]);
    req.headers_mut()
        .insert("content-type", "text/plain".parse().unwrap());
    let r = send(addr, req).await;
    assert_eq!(r.status, 415);
    assert_eq!(r.header("x-denial-reason"), Some("unsupported_media_type"));
    let mut req = post_json(body.clone(), &[]);
    req.headers_mut().remove("content-type");
    assert_eq!(send(addr, req).await.status, 415);
    let mut req = post_json(body, &[]);
    req.headers_mut().insert(
        "content-type",
        "application/json; charset=utf-8".parse().unwrap(),
    );
    assert_eq!(send(addr, req).await.status, 200);
    // GET needs no content type.
    assert_eq!(send(addr, bare("GET", &[])).await.status, 200);
}

#[tokio::test]
async fn invalid_json_and_invalid_utf8_get_parse_error() {
    let addr = default_server().await;
    for body in [
        &b"{not json"[..],
        b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"\xff\xfe\"}",
        br#"{"a":"\ud800"}"#,
    ] {
        let r = send(addr, post_json(body.to_vec(), &[])).await;
        assert_eq!(r.status, 400);
        assert_eq!(error_code(&r), -32700);
    }
}

#[tokio::test]
async fn nesting_of_100_000_levels_is_refused_without_overflow() {
    let addr = default_server().await;
    let depth = 100_000;
    let mut body = String::from(
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":{"x":"#,
    );
    body.push_str(&"[".repeat(depth));
    body.push_str(&"]".repeat(depth));
    body.push_str("}}}");
    let r = send(addr, post_json(body, &[])).await;
    assert_eq!(r.status, 400);
    // serde_json stops at 128 levels with a parse error.
    assert_eq!(error_code(&r), -32700);
    // Objects too.
    let mut body = String::new();
    for _ in 0..depth {
        body.push_str(r#"{"a":"#);
    }
    body.push('1');
    body.push_str(&"}".repeat(depth));
    assert_eq!(send(addr, post_json(body, &[])).await.status, 400);
    // Deeper than our limit (64) but within serde_json's: our iterative check answers.
    let mut body = String::from(
        r#"{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"t","arguments":{"x":"#,
    );
    body.push_str(&"[".repeat(100));
    body.push_str(&"]".repeat(100));
    body.push_str("}}}");
    let r = send(addr, post_json(body, &[])).await;
    assert_eq!(r.status, 400);
    assert_eq!(error_code(&r), -32602);
    assert_eq!(r.json()["id"], 9);
    assert!(
        r.header("x-denial-detail")
            .unwrap()
            .starts_with("rule=max_depth path=$.params.arguments.x[0]")
    );
    // The server is still alive.
    let ok = send(addr, post_json(tools_call("t", json!({})), &[])).await;
    assert_eq!(ok.status, 200);
}

#[tokio::test]
async fn a_100_mb_chunked_body_is_refused_early() {
    let cfg = SanitizeConfig {
        max_body_bytes: 1024 * 1024,
        ..Default::default()
    };
    let addr = server(SanitizeLayer::new(cfg).unwrap()).await;
    const TOTAL: u64 = 100 * 1024 * 1024;
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let sent = Arc::new(AtomicU64::new(0));
    let sent_w = sent.clone();
    let writer = tokio::spawn(async move {
        let head = "POST /mcp HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
        if wr.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        let chunk = vec![b' '; 64 * 1024];
        let frame_head = format!("{:x}\r\n", chunk.len());
        while sent_w.load(Ordering::SeqCst) < TOTAL {
            if wr.write_all(frame_head.as_bytes()).await.is_err()
                || wr.write_all(&chunk).await.is_err()
                || wr.write_all(b"\r\n").await.is_err()
            {
                return;
            }
            sent_w.fetch_add(chunk.len() as u64, Ordering::SeqCst);
        }
        let _ = wr.write_all(b"0\r\n\r\n").await;
    });
    // Read the response head.
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = rd.read(&mut buf).await.unwrap();
        assert!(n > 0, "connection closed without a response");
        got.extend_from_slice(&buf[..n]);
    }
    let at_response = sent.load(Ordering::SeqCst);
    writer.abort();
    let head = String::from_utf8_lossy(&got);
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert!(
        at_response < TOTAL / 4,
        "the server read {at_response} bytes before answering"
    );
}

#[tokio::test]
async fn a_declared_oversized_body_is_refused_before_it_is_sent() {
    let cfg = SanitizeConfig {
        max_body_bytes: 1024,
        ..Default::default()
    };
    let addr = server(SanitizeLayer::new(cfg).unwrap()).await;
    let out = raw(
        addr,
        b"POST /mcp HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 104857600\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");
}

#[tokio::test]
async fn methods_outside_streamable_http_are_refused() {
    let addr = default_server().await;
    for method in [
        "PUT", "PATCH", "HEAD", "OPTIONS", "TRACE", "CONNECT", "PROPFIND",
    ] {
        let r = send(addr, bare(method, &[])).await;
        assert_eq!(r.status, 405, "{method}");
        assert_eq!(r.header("allow"), Some("GET, POST, DELETE"), "{method}");
        assert_eq!(
            r.header("x-denial-reason"),
            Some("method_not_allowed"),
            "{method}"
        );
        if method != "HEAD" {
            assert_eq!(error_code(&r), -32600, "{method}: {:?}", r.body);
        }
    }
    for method in ["GET", "DELETE"] {
        assert_eq!(send(addr, bare(method, &[])).await.status, 200, "{method}");
    }
}

#[tokio::test]
async fn origin_attacks_are_refused_for_every_method() {
    let addr = default_server().await;
    for method in ["GET", "DELETE"] {
        let r = send(addr, bare(method, &[("origin", "https://evil.example")])).await;
        assert_eq!(r.status, 403, "{method}");
        assert_eq!(r.header("x-denial-reason"), Some("origin_not_allowed"));
        assert_eq!(send(addr, bare(method, &[])).await.status, 200);
    }
    let body = tools_call("t", json!({}));
    for origin in [
        "https://evil.example",
        "null",
        "http://localhost.evil.example",
        "file://",
        "garbage",
    ] {
        let r = send(addr, post_json(body.clone(), &[("origin", origin)])).await;
        assert_eq!(r.status, 403, "{origin}");
    }
    // A loopback page talking to a loopback server is fine.
    let r = send(
        addr,
        post_json(body.clone(), &[("origin", "http://localhost:6274")]),
    )
    .await;
    assert_eq!(r.status, 200);
    // DNS rebinding: the attacker's name is in Host and Origin.
    let mut req = post_json(
        body.clone(),
        &[("origin", "http://rebind.evil.example:8080")],
    );
    req.headers_mut()
        .insert("host", "rebind.evil.example:8080".parse().unwrap());
    assert_eq!(send(addr, req).await.status, 403);
    // Two Origin headers.
    let mut req = post_json(body, &[("origin", "http://localhost")]);
    req.headers_mut()
        .append("origin", "https://evil.example".parse().unwrap());
    assert_eq!(send(addr, req).await.status, 403);
}

#[tokio::test]
async fn host_allow_list_and_allowed_origins() {
    let guard = OriginGuardLayer::new(&OriginConfig {
        allowed_origins: vec!["https://app.example.com".into()],
        allowed_hosts: vec!["mcp.example.com".into(), "localhost".into()],
        allow_loopback_origins: false,
    })
    .unwrap();
    // The gateway's arrangement: guard outermost, then parse, then sanitize.
    let sanitize = SanitizeLayer::new(SanitizeConfig::default()).unwrap();
    let app = routes()
        .layer(sanitize)
        .layer(ParseLayer::new())
        .layer(guard);
    let addr = spawn(app).await;
    let body = tools_call("t", json!({}));
    let with_host = |host: &str, origin: Option<&str>| {
        let mut req = post_json(body.clone(), &[]);
        req.headers_mut().insert("host", host.parse().unwrap());
        if let Some(o) = origin {
            req.headers_mut().insert("origin", o.parse().unwrap());
        }
        req
    };
    assert_eq!(
        send(addr, with_host("mcp.example.com", None)).await.status,
        200
    );
    assert_eq!(
        send(addr, with_host("localhost:9999", None)).await.status,
        200
    );
    assert_eq!(
        send(
            addr,
            with_host("mcp.example.com", Some("https://app.example.com"))
        )
        .await
        .status,
        200
    );
    let r = send(addr, with_host("attacker.example", None)).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.header("x-denial-reason"), Some("host_not_allowed"));
    assert_eq!(send(addr, with_host("127.0.0.1", None)).await.status, 403);
    assert_eq!(
        send(
            addr,
            with_host("mcp.example.com", Some("https://other.example.com"))
        )
        .await
        .status,
        403
    );
    assert_eq!(
        send(addr, with_host("localhost", Some("http://localhost:3000")))
            .await
            .status,
        403
    );
    // GET is guarded too.
    let mut get = bare("GET", &[]);
    get.headers_mut()
        .insert("host", "attacker.example".parse().unwrap());
    assert_eq!(send(addr, get).await.status, 403);
}

#[tokio::test]
async fn protocol_version_header() {
    let addr = default_server().await;
    let body = tools_call("t", json!({}));
    for v in [
        "2024-11-05",
        "2025-03-26",
        "2025-06-18",
        "2025-11-25",
        "2026-07-28",
    ] {
        let r = send(
            addr,
            post_json(body.clone(), &[("mcp-protocol-version", v)]),
        )
        .await;
        assert_eq!(r.status, 200, "{v}");
    }
    for v in ["2023-01-01", "latest", ""] {
        let r = send(
            addr,
            post_json(body.clone(), &[("mcp-protocol-version", v)]),
        )
        .await;
        assert_eq!(r.status, 400, "{v:?}");
        assert_eq!(
            r.header("x-denial-reason"),
            Some("unsupported_protocol_version")
        );
    }
    let r = send(addr, bare("GET", &[("mcp-protocol-version", "1999-01-01")])).await;
    assert_eq!(r.status, 400);
}

#[tokio::test]
async fn mcp_method_and_name_headers_must_agree() {
    let addr = default_server().await;
    let body = tools_call("search", json!({}));
    let ok = send(
        addr,
        post_json(
            body.clone(),
            &[("mcp-method", "tools/call"), ("mcp-name", "search")],
        ),
    )
    .await;
    assert_eq!(ok.status, 200);
    let r = send(
        addr,
        post_json(body.clone(), &[("mcp-method", "tools/list")]),
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["id"], 42);
    assert_eq!(r.header("x-denial-reason"), Some("header_mismatch"));
    let r = send(addr, post_json(body, &[("mcp-name", "delete_everything")])).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.header("x-denial-detail"), Some("header=Mcp-Name"));
}

#[tokio::test]
async fn jsonrpc_structure_and_batches() {
    let addr = default_server().await;
    let cases = [
        (json!({"jsonrpc": "1.0", "id": 1, "method": "ping"}), -32600),
        (
            json!({"jsonrpc": "2.0", "id": null, "method": "ping"}),
            -32600,
        ),
        (
            json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"arguments": {}}}),
            -32602,
        ),
        (
            json!({"jsonrpc": "2.0", "id": 3, "method": "ping", "params": [1]}),
            -32602,
        ),
        (
            json!([{"jsonrpc": "2.0", "id": 1, "method": "ping"}]),
            -32600,
        ),
    ];
    for (body, code) in cases {
        let r = send(addr, post_json(serde_json::to_vec(&body).unwrap(), &[])).await;
        assert_eq!(r.status, 400, "{body}");
        assert_eq!(error_code(&r), code, "{body}");
    }
    let r = send(
        addr,
        post_json(
            serde_json::to_vec(&json!({"jsonrpc":"2.0","id":"abc","method":"ping","params":5}))
                .unwrap(),
            &[],
        ),
    )
    .await;
    assert_eq!(r.json()["id"], "abc");
    // Notifications and responses are accepted.
    for body in [
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        json!({"jsonrpc": "2.0", "id": 5, "result": {}}),
    ] {
        assert_eq!(
            send(addr, post_json(serde_json::to_vec(&body).unwrap(), &[]))
                .await
                .status,
            200
        );
    }
    // Batches by option.
    let cfg = SanitizeConfig {
        allow_batch: true,
        ..Default::default()
    };
    let addr = server(SanitizeLayer::new(cfg).unwrap()).await;
    let batch = json!([{"jsonrpc": "2.0", "id": 1, "method": "ping"}, {"jsonrpc": "2.0", "method": "notifications/x"}]);
    assert_eq!(
        send(addr, post_json(serde_json::to_vec(&batch).unwrap(), &[]))
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn each_builtin_rule_rejects_without_echoing_the_value() {
    let addr = default_server().await;
    let cases = [
        ("sql_injection", "1' OR '1'='1", "1' OR 'a'='a"),
        (
            "command_injection",
            "report.txt; rm -rf / #zz9",
            "report.txt && curl evil",
        ),
        (
            "xss",
            "<script>document.cookie</script>zz9",
            "<img src=x onerror=alert(1)>",
        ),
        (
            "path_traversal",
            "../../../../etc/passwd#zz9",
            "..%2f..%2fetc%2fpasswd",
        ),
    ];
    for (rule, a, b) in cases {
        for value in [a, b] {
            let r = send(
                addr,
                post_json(
                    tools_call("t", json!({"nested": {"items": ["fine", value]}})),
                    &[],
                ),
            )
            .await;
            assert_eq!(r.status, 400, "{rule} {value}");
            assert_eq!(error_code(&r), -32602);
            assert_eq!(r.json()["id"], 42);
            let expected = format!("rule={rule} path=$.params.arguments.nested.items[1]");
            assert_eq!(r.header("x-denial-detail"), Some(expected.as_str()));
            assert_eq!(r.header("x-denial-reason"), Some("blocked_by_rule"));
            let text = String::from_utf8_lossy(&r.body);
            assert!(text.contains(rule), "{text}");
            assert!(
                !text.contains("zz9") && !text.contains("passwd") && !text.contains("evil"),
                "{text}"
            );
        }
        // The same rule lets plain text through.
        let ok = send(
            addr,
            post_json(
                tools_call("t", json!({"q": "an ordinary sentence, isn't it"})),
                &[],
            ),
        )
        .await;
        assert_eq!(ok.status, 200);
    }
}

#[tokio::test]
async fn blocked_patterns_from_the_seeds() {
    let cfg: SanitizeConfig = serde_json::from_value(json!({
        "rules": {"sql_injection": {"enabled": false}, "command_injection": {"enabled": false},
                  "xss": {"enabled": false}, "path_traversal": {"enabled": false}},
        "blocked_patterns": ["';", "DROP TABLE", "rm -rf", "<script>",
                             {"name": "card", "regex": "\\b4[0-9]{15}\\b"}]
    }))
    .unwrap();
    let addr = server(SanitizeLayer::new(cfg).unwrap()).await;
    for (value, rule) in [
        ("x';", "blocked_pattern[0]"),
        ("please drop table now", "blocked_pattern[1]"),
        ("RM -RF /", "blocked_pattern[2]"),
        ("<SCRIPT>", "blocked_pattern[3]"),
        ("pay 4111111111111111", "card"),
    ] {
        let r = send(addr, post_json(tools_call("t", json!({"v": value})), &[])).await;
        assert_eq!(r.status, 400, "{value}");
        assert_eq!(
            r.header("x-denial-detail"),
            Some(format!("rule={rule} path=$.params.arguments.v").as_str())
        );
    }
    assert_eq!(
        send(
            addr,
            post_json(tools_call("t", json!({"v": "drop the table"})), &[])
        )
        .await
        .status,
        200
    );
}

#[tokio::test]
async fn every_ssrf_form_is_refused_in_arguments() {
    let addr = default_server().await;
    let forms = [
        "http://127.0.0.1/",
        "http://localhost:8080/admin",
        "http://2130706433/",
        "http://0177.0.0.1/",
        "http://0x7f.0.0.1/",
        "http://0x7f000001/",
        "http://127.1/",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://[::ffff:7f00:1]/",
        "http://[::127.0.0.1]/",
        "http://[64:ff9b::7f00:1]/",
        "http://10.1.2.3/",
        "http://172.16.0.1/",
        "http://192.168.0.1/",
        "http://169.254.10.10/",
        "http://100.64.1.1/",
        "http://[fc00::1]/",
        "http://[fd00::1]/",
        "http://[fe80::1]/",
        "http://169.254.169.254/latest/meta-data/iam",
        "http://[fd00:ec2::254]/",
        "http://100.100.100.200/",
        "http://metadata.google.internal/",
        "http://metadata/",
        "http://instance-data/",
        "http://0.0.0.0:22/",
        "https://user@127.0.0.1/",
        "http://%31%32%37.0.0.1/",
        "http://0251.0376.0251.0376/",
        "http://[::ffff:a9fe:a9fe]/",
    ];
    for url in forms {
        let r = send(
            addr,
            post_json(tools_call("fetch", json!({"url": url})), &[]),
        )
        .await;
        assert_eq!(r.status, 400, "{url}");
        assert_eq!(
            r.header("x-denial-detail"),
            Some("rule=ssrf path=$.params.arguments.url"),
            "{url}"
        );
        // Embedded in prose, too.
        let r = send(
            addr,
            post_json(
                tools_call("fetch", json!({"text": format!("please GET {url} now")})),
                &[],
            ),
        )
        .await;
        assert_eq!(r.status, 400, "{url} in text");
    }
    for url in [
        "https://example.com/",
        "http://93.184.215.14/",
        "http://[2606:4700::1111]/",
    ] {
        let r = send(
            addr,
            post_json(tools_call("fetch", json!({"url": url})), &[]),
        )
        .await;
        assert_eq!(r.status, 200, "{url}");
    }
    let r = send(
        addr,
        post_json(
            tools_call("fetch", json!({"url": "gopher://example.com/"})),
            &[],
        ),
    )
    .await;
    assert_eq!(
        r.header("x-denial-detail"),
        Some("rule=url_scheme path=$.params.arguments.url")
    );
}

#[tokio::test]
async fn per_tool_override_exempts_one_rule_only() {
    let layer = SanitizeLayer::builder()
        .exempt_tool("run_shell", "command_injection")
        .build()
        .unwrap();
    let addr = server(layer).await;
    let shell = json!({"cmd": "ls -la | grep x && echo done"});
    assert_eq!(
        send(addr, post_json(tools_call("run_shell", shell.clone()), &[]))
            .await
            .status,
        200
    );
    assert_eq!(
        send(addr, post_json(tools_call("other", shell), &[]))
            .await
            .status,
        400
    );
    let r = send(
        addr,
        post_json(
            tools_call("run_shell", json!({"cmd": "cat ../../etc/shadow"})),
            &[],
        ),
    )
    .await;
    assert_eq!(
        r.header("x-denial-detail"),
        Some("rule=path_traversal path=$.params.arguments.cmd")
    );
}

#[tokio::test]
async fn strip_rewrites_the_forwarded_body_and_content_length() {
    let layer = SanitizeLayer::builder()
        .rule(Category::SqlInjection, RuleAction::Strip)
        .rule(Category::Xss, RuleAction::Strip)
        .control_chars(ControlCharPolicy::Strip)
        .build()
        .unwrap();
    let addr = server(layer).await;
    let body = tools_call(
        "q",
        json!({"filter": "'; DROP TABLE users; --", "note": "hi<script>x</script>\u{0}!"}),
    );
    let r = send(addr, post_json(body, &[])).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let v = r.json();
    let forwarded = v["body"].as_str().unwrap();
    let fv: serde_json::Value = serde_json::from_str(forwarded).unwrap();
    assert_eq!(fv["params"]["arguments"]["filter"], " DROP TABLE users ");
    assert_eq!(fv["params"]["arguments"]["note"], "hix!");
    assert_eq!(
        v["content_length"].as_str().unwrap(),
        forwarded.len().to_string()
    );
    assert_eq!(v["mcp_raw"].as_str().unwrap(), forwarded);
    assert_eq!(v["mcp_value"], fv);
}

#[tokio::test]
async fn control_characters_rejected_by_default() {
    let addr = default_server().await;
    let r = send(
        addr,
        post_json(tools_call("t", json!({"a": "x\u{0}y"})), &[]),
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.header("x-denial-detail"),
        Some("rule=control_chars path=$.params.arguments.a")
    );
    let r = send(
        addr,
        post_json(tools_call("t", json!({"a": "x\u{85}y"})), &[]),
    )
    .await;
    assert_eq!(r.status, 400);
}

#[tokio::test]
async fn string_length_limit_counts_characters() {
    let addr = default_server().await;
    let ok = "é".repeat(1000);
    assert_eq!(
        send(addr, post_json(tools_call("t", json!({"a": ok})), &[]))
            .await
            .status,
        200
    );
    let long = "a".repeat(1001);
    let r = send(addr, post_json(tools_call("t", json!({"a": long})), &[])).await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.header("x-denial-detail"),
        Some("rule=max_length path=$.params.arguments.a")
    );
}

#[tokio::test]
async fn without_parse_layer_a_post_is_a_configuration_error() {
    let app = routes().layer(SanitizeLayer::new(SanitizeConfig::default()).unwrap());
    let addr = spawn(app).await;
    let r = send(addr, post_json(tools_call("t", json!({})), &[])).await;
    assert_eq!(r.status, 500);
    assert_eq!(r.header("x-denial-detail"), Some("parse_layer_missing"));
    // GET does not need a parsed body.
    assert_eq!(send(addr, bare("GET", &[])).await.status, 200);
}
