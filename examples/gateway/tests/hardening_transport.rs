//! Attacks on what the gateway checks against what it forwards, end to end: the gateway
//! process in front of a recording upstream (a real HTTP server on loopback that keeps
//! every request it receives), with a policy that denies one tool. Every attack below
//! carries a `tools/call` of the denied tool; it must never reach the upstream, with
//! `sanitization.enabled` true or false.
//!
//! - methods other than POST (GET and DELETE with a body, PUT, PATCH, `post`, `Post`,
//!   OPTIONS, a custom method), over HTTP/1.1, and an HTTP/2 GET whose body follows its
//!   headers;
//! - bodies that another JSON parser reads differently: duplicate keys (envelope, params,
//!   deep in the arguments, in a batch element) and case variants of the MCP keys
//!   (`NAME`, `Params`, `paramſ`, `argumentſ`);
//! - MCP headers sent twice or with bytes outside visible ASCII.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::any;
use common::*;
use http::{HeaderMap, Method, StatusCode};
use serde_json::{Value, json};

/// What the recording upstream received: method, headers and body of each request.
#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    headers: HeaderMap,
    body: Bytes,
}

type Log = Arc<Mutex<Vec<Seen>>>;

async fn record(
    State(log): State<Log>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    log.lock().unwrap().push(Seen {
        method,
        headers,
        body,
    });
    let mut r = axum::response::Response::new(axum::body::Body::from(
        json!({"jsonrpc": "2.0", "id": 1, "result": {"content": [{"type": "text", "text": "ran"}]}})
            .to_string(),
    ));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

/// A recording upstream on a free loopback port, served on a thread of its own (the
/// tests are synchronous around the gateway process).
fn recording_upstream() -> (String, Log) {
    let log: Log = Arc::default();
    let app = Router::new()
        .route("/mcp", any(record))
        .with_state(log.clone());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
    });
    let addr: SocketAddr = rx.recv_timeout(Duration::from_secs(30)).unwrap();
    (format!("http://{addr}/mcp"), log)
}

/// The gateway in front of the recording upstream: tools allowed except `denied_tool`,
/// sanitization on or off, batches allowed (so that a batch element is checked too).
fn gateway(dir: &std::path::Path, sanitize: bool) -> (Proc, String, Log) {
    let (upstream, log) = recording_upstream();
    let extra = format!(
        r#"policy:
  allow:
    - {{name: everything, methods: ["*"]}}
  deny:
    - {{name: no-denied, tools: ["denied_tool"]}}
sanitization:
  enabled: {sanitize}
  allow_batch: true
"#
    );
    let yaml = per_request_audit(&base_config(&upstream, &dir.join("a.db"), &extra));
    let (gw, base) = start_gateway(dir, &yaml);
    (gw, format!("{base}/mcp"), log)
}

fn denied_call() -> String {
    json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
           "params": {"name": "denied_tool", "arguments": {}}})
    .to_string()
}

/// Whether the upstream received anything that names the denied tool.
fn reached(log: &Log) -> Vec<String> {
    log.lock()
        .unwrap()
        .iter()
        .filter(|s| {
            String::from_utf8_lossy(&s.body).contains("denied_tool")
                || s.headers
                    .get_all("mcp-name")
                    .iter()
                    .any(|v| v.as_bytes().windows(11).any(|w| w == b"denied_tool"))
        })
        .map(|s| format!("{} {:?}", s.method, String::from_utf8_lossy(&s.body)))
        .collect()
}

fn post(c: &reqwest::Client, url: &str, body: impl Into<reqwest::Body>) -> reqwest::RequestBuilder {
    c.post(url)
        .header("x-api-key", KEY)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(body)
}

async fn json_error(r: reqwest::Response) -> (StatusCode, HeaderMap, Value) {
    let status = r.status();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap();
    let v: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{status}: not a JSON-RPC error ({e}): {text}"));
    assert_eq!(v["jsonrpc"], "2.0", "{v}");
    (status, headers, v)
}

/// The control: an allowed call reaches the recording upstream (so that "nothing reached
/// it" below means something), and the denied call sent as a plain POST is refused.
async fn control(c: &reqwest::Client, url: &str, log: &Log) {
    let ok = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                    "params": {"name": "echo", "arguments": {"message": "hi"}}});
    let r = post(c, url, ok.to_string()).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        log.lock().unwrap().len(),
        1,
        "the allowed call was forwarded"
    );
    let r = post(c, url, denied_call()).send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert!(reached(log).is_empty());
}

async fn methods_with_a_denied_body(sanitize: bool) {
    let dir = tempdir();
    let (_gw, url, log) = gateway(dir.path(), sanitize);
    let c = client();
    control(&c, &url, &log).await;
    // GET and DELETE: Streamable HTTP gives them no body.
    for m in [Method::GET, Method::DELETE] {
        let r = c
            .request(m.clone(), &url)
            .header("x-api-key", KEY)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(denied_call())
            .send()
            .await
            .unwrap();
        let (status, _, v) = json_error(r).await;
        assert_eq!(status, 400, "{m} with a body (sanitize {sanitize}): {v}");
        assert_eq!(v["error"]["code"], -32600, "{v}");
    }
    // Every other method, exactly compared: 405 with Allow.
    for m in ["PUT", "PATCH", "post", "Post", "OPTIONS", "FOO", "PROPFIND"] {
        let method = Method::from_bytes(m.as_bytes()).unwrap();
        let r = c
            .request(method, &url)
            .header("x-api-key", KEY)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(denied_call())
            .send()
            .await
            .unwrap();
        let (status, headers, v) = json_error(r).await;
        assert_eq!(status, 405, "{m} (sanitize {sanitize}): {v}");
        assert_eq!(headers["allow"], "GET, POST, DELETE", "{m}");
    }
    // A GET and a DELETE without a body still pass (the upstream answers them).
    for m in [Method::GET, Method::DELETE] {
        let r = c
            .request(m.clone(), &url)
            .header("x-api-key", KEY)
            .header("accept", "text/event-stream")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{m} without a body");
    }
    let seen = reached(&log);
    assert!(seen.is_empty(), "reached the upstream: {seen:?}");
    // Nothing the upstream got on GET or DELETE had a body.
    for s in log.lock().unwrap().iter() {
        if s.method != Method::POST {
            assert!(s.body.is_empty(), "{} forwarded with a body", s.method);
        }
    }
}

#[tokio::test]
async fn methods_other_than_post_never_carry_a_call_upstream_sanitize_on() {
    methods_with_a_denied_body(true).await;
}

#[tokio::test]
async fn methods_other_than_post_never_carry_a_call_upstream_sanitize_off() {
    methods_with_a_denied_body(false).await;
}

/// HTTP/2 (cleartext, prior knowledge): a GET whose HEADERS frame does not end the stream
/// and whose DATA frames carry the denied call, without Content-Length.
async fn http2_get_with_a_body(sanitize: bool) {
    use http_body_util::{BodyExt, StreamBody};
    use hyper::body::Frame;
    let dir = tempdir();
    let (_gw, url, log) = gateway(dir.path(), sanitize);
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> =
        vec![Ok(Frame::data(Bytes::from(denied_call())))];
    let body = StreamBody::new(futures_util::stream::iter(frames)).boxed();
    let req = http::Request::get(&url)
        .header("x-api-key", KEY)
        .header("accept", "text/event-stream")
        .body(body)
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let status = resp.status();
    let text = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&text));
    let seen = reached(&log);
    assert!(seen.is_empty(), "reached the upstream: {seen:?}");
}

#[tokio::test]
async fn http2_get_with_a_body_is_refused_sanitize_on() {
    http2_get_with_a_body(true).await;
}

#[tokio::test]
async fn http2_get_with_a_body_is_refused_sanitize_off() {
    http2_get_with_a_body(false).await;
}

/// Bodies that a parser keeping the first duplicate, or matching keys case-insensitively
/// (Go's encoding/json, as mcp-go servers use it), reads as a call of the denied tool.
fn ambiguous_bodies() -> Vec<(&'static str, String)> {
    vec![
        (
            "duplicate name in params",
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"denied_tool","name":"echo","arguments":{}}}"#.into(),
        ),
        (
            "duplicate params in the envelope",
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"denied_tool","arguments":{}},"params":{"name":"echo","arguments":{}}}"#.into(),
        ),
        (
            "duplicate method in the envelope",
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","method":"tools/list","params":{"name":"denied_tool"}}"#.into(),
        ),
        (
            "duplicate key deep inside the arguments",
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"a":{"b":[{"tool":"denied_tool","tool":"x"}]}}}}"#.into(),
        ),
        (
            "duplicate key in a batch element",
            r#"[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"denied_tool","name":"echo"}}]"#.into(),
        ),
        (
            "NAME beside name",
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","NAME":"denied_tool","arguments":{}}}"#.into(),
        ),
        (
            "Params beside params",
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo"},"Params":{"name":"denied_tool"}}"#.into(),
        ),
        (
            "paramſ (U+017F folds to s)",
            "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"echo\"},\"param\u{17f}\":{\"name\":\"denied_tool\"}}".into(),
        ),
        (
            "argumentſ (U+017F folds to s)",
            "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"echo\",\"arguments\":{},\"argument\u{17f}\":{\"denied_tool\":true}}}".into(),
        ),
        (
            "METHOD beside method",
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","METHOD":"tools/call","params":{"name":"denied_tool"}}"#.into(),
        ),
        (
            "escaped duplicate (n\\u0061me)",
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"denied_tool","n\u0061me":"echo"}}"#.into(),
        ),
    ]
}

async fn ambiguous_bodies_are_refused(sanitize: bool) {
    let dir = tempdir();
    let (_gw, url, log) = gateway(dir.path(), sanitize);
    let c = client();
    control(&c, &url, &log).await;
    for (what, body) in ambiguous_bodies() {
        let r = post(&c, &url, body.clone()).send().await.unwrap();
        let (status, _, v) = json_error(r).await;
        assert_eq!(status, 400, "{what} (sanitize {sanitize}): {v}");
        assert_eq!(v["error"]["code"], -32600, "{what}: {v}");
    }
    let seen = reached(&log);
    assert!(seen.is_empty(), "reached the upstream: {seen:?}");
    // The audit trail says why.
    let db = dir.path().join("a.db");
    assert!(
        eventually(|| {
            request_rows(&db)
                .iter()
                .any(|r| r.event.to_string().contains("rule=duplicate_key"))
                && request_rows(&db)
                    .iter()
                    .any(|r| r.event.to_string().contains("rule=key_case_variant"))
        })
        .await,
        "{:#?}",
        request_rows(&db)
            .iter()
            .map(|r| r.event.clone())
            .collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn duplicate_and_case_variant_keys_are_refused_sanitize_on() {
    ambiguous_bodies_are_refused(true).await;
}

#[tokio::test]
async fn duplicate_and_case_variant_keys_are_refused_sanitize_off() {
    ambiguous_bodies_are_refused(false).await;
}

async fn mcp_headers_twice_or_not_ascii(sanitize: bool) {
    let dir = tempdir();
    let (_gw, url, log) = gateway(dir.path(), sanitize);
    let c = client();
    control(&c, &url, &log).await;
    let echo = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                      "params": {"name": "echo", "arguments": {"message": "x"}}})
    .to_string();
    // Two Mcp-Name headers: the first agrees with the body, the second names the denied
    // tool (an upstream routing on the last one would pick it).
    let r = post(&c, &url, echo.clone())
        .header("mcp-method", "tools/call")
        .header("mcp-name", "echo")
        .header("mcp-name", "denied_tool")
        .send()
        .await
        .unwrap();
    let (status, _, v) = json_error(r).await;
    assert_eq!(status, 400, "two Mcp-Name: {v}");
    // Two Mcp-Method headers.
    let r = post(&c, &url, echo.clone())
        .header("mcp-method", "tools/call")
        .header("mcp-method", "tools/list")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "two Mcp-Method");
    // Two MCP-Protocol-Version headers.
    let r = post(&c, &url, echo.clone())
        .header("mcp-protocol-version", "2025-11-25")
        .header("mcp-protocol-version", "2025-06-18")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "two MCP-Protocol-Version");
    // Bytes outside visible ASCII (obs-text, a tab) in an MCP header.
    for (name, value) in [
        ("mcp-name", &b"ech\xe9"[..]),
        ("mcp-method", &b"tools/call\tx"[..]),
        ("mcp-session-id", &b"abc\xff"[..]),
    ] {
        let r = post(&c, &url, echo.clone())
            .header(name, http::HeaderValue::from_bytes(value).unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{name}: {value:?}");
    }
    // GET carries Mcp-Session-Id and Last-Event-ID: the same rules.
    for (name, values) in [
        ("mcp-session-id", vec![&b"a"[..], &b"b"[..]]),
        ("last-event-id", vec![&b"1"[..], &b"2"[..]]),
        ("last-event-id", vec![&b"\xc3\xa9"[..]]),
    ] {
        let mut b = c
            .get(&url)
            .header("x-api-key", KEY)
            .header("accept", "text/event-stream");
        for v in values {
            b = b.header(name, http::HeaderValue::from_bytes(v).unwrap());
        }
        let r = b.send().await.unwrap();
        assert_eq!(r.status(), 400, "GET with {name}");
    }
    let seen = reached(&log);
    assert!(seen.is_empty(), "reached the upstream: {seen:?}");
    // Only the control call reached the upstream.
    assert_eq!(log.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn mcp_headers_twice_or_outside_visible_ascii_are_refused_sanitize_on() {
    mcp_headers_twice_or_not_ascii(true).await;
}

#[tokio::test]
async fn mcp_headers_twice_or_outside_visible_ascii_are_refused_sanitize_off() {
    mcp_headers_twice_or_not_ascii(false).await;
}

/// A body the gateway checks as UTF-8 but that the upstream's parser reads in another
/// charset: Express's `body-parser` (the TypeScript MCP SDK's `createMcpExpressApp`)
/// honours `charset=utf-7`, where `denied+AF8-tool` is `denied_tool`. Any charset other
/// than UTF-8, a charset named twice, an RFC 2231 `charset*`, a malformed parameter, and
/// two `Content-Type` headers are refused with 415 before anything reaches the upstream.
async fn other_charsets(sanitize: bool) {
    let dir = tempdir();
    let (_gw, url, log) = gateway(dir.path(), sanitize);
    let c = client();
    control(&c, &url, &log).await;
    let utf7 = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"denied+AF8-tool","arguments":{}}}"#;
    for ct in [
        "application/json; charset=utf-7",
        "application/json; charset=UTF-7",
        "application/json; charset=\"utf-7\"",
        "application/json;charset=utf7",
        "application/json; charset=utf-16",
        "application/json; charset=iso-8859-1",
        "application/json; charset=utf-8; charset=utf-7",
        "application/json; charset*=utf-8''utf-7",
        "application/json; charset = utf-7",
        "application/json; charset=utf-8, charset=utf-7",
    ] {
        let r = c
            .post(&url)
            .header("x-api-key", KEY)
            .header("content-type", ct)
            .header("accept", "application/json, text/event-stream")
            .body(utf7)
            .send()
            .await
            .unwrap();
        let (status, _, v) = json_error(r).await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{ct}: {v}");
    }
    // Two Content-Type headers: which one a parser reads differs.
    let r = c
        .post(&url)
        .header("x-api-key", KEY)
        .header("content-type", "application/json")
        .header("content-type", "application/json; charset=utf-7")
        .header("accept", "application/json, text/event-stream")
        .body(utf7)
        .send()
        .await
        .unwrap();
    let (status, _, v) = json_error(r).await;
    assert_eq!(
        status,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "two headers: {v}"
    );
    let clean = log
        .lock()
        .unwrap()
        .iter()
        .all(|s| !String::from_utf8_lossy(&s.body).contains("denied"));
    assert!(clean, "a request in another charset reached the upstream");
    // A content coding the upstream would undo: Express's body-parser (the TypeScript
    // SDK's servers) inflates gzip, deflate and br bodies the gateway never parsed.
    for enc in [
        "gzip",
        "deflate",
        "br",
        "x-gzip",
        "zstd",
        "compress",
        "gzip, identity",
        "identity, gzip",
        "identity;q=1",
        "",
    ] {
        let r = c
            .post(&url)
            .header("x-api-key", KEY)
            .header("content-type", "application/json")
            .header("content-encoding", enc)
            .header("accept", "application/json, text/event-stream")
            .body(denied_call())
            .send()
            .await
            .unwrap();
        let (status, _, v) = json_error(r).await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{enc:?}: {v}");
    }
    let r = c
        .post(&url)
        .header("x-api-key", KEY)
        .header("content-type", "application/json")
        .header("content-encoding", "identity")
        .header("content-encoding", "gzip")
        .header("accept", "application/json, text/event-stream")
        .body(denied_call())
        .send()
        .await
        .unwrap();
    let (status, _, v) = json_error(r).await;
    assert_eq!(
        status,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "identity then gzip: {v}"
    );
    assert!(reached(&log).is_empty());
    // UTF-8 named as such, with the identity coding, still passes.
    let ok = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                    "params": {"name": "echo", "arguments": {"message": "hi"}}});
    let r = c
        .post(&url)
        .header("x-api-key", KEY)
        .header("content-type", "application/json; charset=\"UTF-8\"")
        .header("content-encoding", "Identity")
        .header("accept", "application/json, text/event-stream")
        .body(ok.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn a_body_in_another_charset_never_reaches_the_upstream_sanitize_on() {
    other_charsets(true).await;
}

#[tokio::test]
async fn a_body_in_another_charset_never_reaches_the_upstream_sanitize_off() {
    other_charsets(false).await;
}
