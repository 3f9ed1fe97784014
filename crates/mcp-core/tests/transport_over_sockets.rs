//! ParseLayer's transport checks over real TCP sockets (HTTP/1.1 through a client and as
//! raw bytes, HTTP/2 cleartext): every method other than POST, GET and DELETE is refused
//! with 405 and `Allow`; GET and DELETE with a body get 400 and never reach the service
//! with one; `Content-Type`, `Accept` and `MCP-Protocol-Version`; MCP headers sent twice
//! or with bytes outside visible ASCII; bodies that another JSON parser would read
//! differently (duplicate keys anywhere, case variants of the MCP keys). A user of
//! `ParseLayer` alone gets all of it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::routing::any;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioExecutor;
use mcp_core::ParseLayer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What reached the service behind the layer: method and body.
type Log = Arc<Mutex<Vec<(Method, Bytes)>>>;

async fn record(State(log): State<Log>, method: Method, body: Bytes) -> &'static str {
    log.lock().unwrap().push((method, body));
    "reached"
}

async fn spawn(layer: ParseLayer) -> (SocketAddr, Log) {
    let log: Log = Arc::default();
    let app = Router::new()
        .route("/mcp", any(record))
        .with_state(log.clone())
        .layer(layer);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, log)
}

type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    BoxBody<Bytes, Infallible>,
>;

fn client() -> Client {
    hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http()
}

fn h2_client() -> Client {
    hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

fn full(s: impl Into<Bytes>) -> BoxBody<Bytes, Infallible> {
    Full::new(s.into()).boxed()
}

const CALL: &str = r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"denied_tool","arguments":{}}}"#;

struct Resp {
    status: StatusCode,
    headers: HeaderMap,
    json: serde_json::Value,
    text: String,
}

async fn send(c: &Client, req: Request<BoxBody<Bytes, Infallible>>) -> Resp {
    let resp = c.request(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    Resp {
        status,
        headers,
        json: serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
        text: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

fn post(addr: SocketAddr, body: impl Into<Bytes>) -> http::request::Builder {
    let _ = body;
    Request::post(format!("http://{addr}/mcp"))
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
}

async fn post_body(c: &Client, addr: SocketAddr, body: &str) -> Resp {
    send(c, post(addr, "").body(full(body.to_owned())).unwrap()).await
}

/// Sends raw bytes and returns what the server answered (up to its first response).
async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut buf = vec![0u8; 8192];
    let n = tokio::time::timeout(std::time::Duration::from_secs(20), s.read(&mut buf))
        .await
        .expect("an answer")
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test]
async fn methods_other_than_post_get_delete_get_405_with_allow() {
    let (addr, log) = spawn(ParseLayer::new()).await;
    let c = client();
    for m in [
        "PUT", "PATCH", "post", "Post", "OPTIONS", "HEAD", "TRACE", "FOO", "CONNECTX",
    ] {
        let method = Method::from_bytes(m.as_bytes()).unwrap();
        let req = Request::builder()
            .method(method)
            .uri(format!("http://{addr}/mcp"))
            .header("content-type", "application/json")
            .body(full(CALL))
            .unwrap();
        let r = send(&c, req).await;
        assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{m}: {}", r.text);
        assert_eq!(r.headers["allow"], "GET, POST, DELETE", "{m}");
        if m != "HEAD" {
            assert_eq!(r.json["error"]["code"], -32600, "{m}: {}", r.text);
        }
    }
    assert!(log.lock().unwrap().is_empty(), "{:?}", log.lock().unwrap());
}

#[tokio::test]
async fn get_and_delete_with_a_body_get_400_and_never_reach_the_service() {
    let (addr, log) = spawn(ParseLayer::new()).await;
    let c = client();
    for m in [Method::GET, Method::DELETE] {
        // A Content-Length body.
        let req = Request::builder()
            .method(m.clone())
            .uri(format!("http://{addr}/mcp"))
            .body(full(CALL))
            .unwrap();
        let r = send(&c, req).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{m}: {}", r.text);
        assert_eq!(r.json["error"]["code"], -32600);
        // (hyper's client sends no body at all with a GET or DELETE whose length it does
        // not know: chunked framing is sent as raw bytes below.)
        // As raw bytes: Content-Length and Transfer-Encoding.
        let head = raw(
            addr,
            format!(
                "{m} /mcp HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n{CALL}",
                CALL.len()
            )
            .as_bytes(),
        )
        .await;
        assert!(head.starts_with("HTTP/1.1 400"), "{head}");
        let head = raw(
            addr,
            format!(
                "{m} /mcp HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{CALL}\r\n0\r\n\r\n",
                CALL.len()
            )
            .as_bytes(),
        )
        .await;
        assert!(head.starts_with("HTTP/1.1 400"), "{head}");
        // An empty chunked body is still a body framing the service would read.
        let head = raw(
            addr,
            format!("{m} /mcp HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n")
                .as_bytes(),
        )
        .await;
        assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    }
    assert!(log.lock().unwrap().is_empty(), "{:?}", log.lock().unwrap());
    // Without a body (and with `Content-Length: 0`) they pass, with an empty body.
    for m in [Method::GET, Method::DELETE] {
        let req = Request::builder()
            .method(m.clone())
            .uri(format!("http://{addr}/mcp"))
            .header("accept", "text/event-stream")
            .body(full(""))
            .unwrap();
        let r = send(&c, req).await;
        assert_eq!(r.status, StatusCode::OK, "{m}: {}", r.text);
        let head = raw(
            addr,
            format!("{m} /mcp HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n").as_bytes(),
        )
        .await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    }
    let log = log.lock().unwrap();
    assert_eq!(log.len(), 4);
    assert!(log.iter().all(|(_, b)| b.is_empty()));
}

#[tokio::test]
async fn http2_get_and_delete_with_a_body_get_400() {
    let (addr, log) = spawn(ParseLayer::new()).await;
    let c = h2_client();
    for m in [Method::GET, Method::DELETE] {
        // DATA frames after a HEADERS frame that does not end the stream, no length.
        let frames: Vec<Result<Frame<Bytes>, Infallible>> =
            vec![Ok(Frame::data(Bytes::from_static(CALL.as_bytes())))];
        let req = Request::builder()
            .method(m.clone())
            .uri(format!("http://{addr}/mcp"))
            .body(StreamBody::new(futures_util::stream::iter(frames)).boxed())
            .unwrap();
        let resp = c.request(req).await.unwrap();
        assert_eq!(resp.version(), http::Version::HTTP_2);
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{m}");
        // With a length.
        let req = Request::builder()
            .method(m.clone())
            .uri(format!("http://{addr}/mcp"))
            .body(full(CALL))
            .unwrap();
        assert_eq!(send(&c, req).await.status, StatusCode::BAD_REQUEST, "{m}");
        // Without a body: END_STREAM on HEADERS.
        let req = Request::builder()
            .method(m.clone())
            .uri(format!("http://{addr}/mcp"))
            .body(full(""))
            .unwrap();
        assert_eq!(send(&c, req).await.status, StatusCode::OK, "{m}");
    }
    let log = log.lock().unwrap();
    assert_eq!(log.len(), 2);
    assert!(log.iter().all(|(_, b)| b.is_empty()));
}

#[tokio::test]
async fn content_type_accept_and_protocol_version() {
    let (addr, log) = spawn(ParseLayer::new()).await;
    let c = client();
    let ok = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
    let with = |ct: Option<&str>, accept: Option<&str>, version: Option<&str>| {
        let mut b = Request::post(format!("http://{addr}/mcp"));
        if let Some(v) = ct {
            b = b.header("content-type", v);
        }
        if let Some(v) = accept {
            b = b.header("accept", v);
        }
        if let Some(v) = version {
            b = b.header("mcp-protocol-version", v);
        }
        b.body(full(ok)).unwrap()
    };
    let cases = [
        // (content-type, accept, protocol version, expected status)
        (
            Some("application/json"),
            Some("application/json, text/event-stream"),
            None,
            200,
        ),
        (
            Some("Application/JSON; charset=utf-8"),
            Some("*/*"),
            Some("2025-11-25"),
            200,
        ),
        (Some("application/json"), None, Some("2026-07-28"), 200),
        (
            Some("application/json"),
            Some("application/*, text/*"),
            None,
            200,
        ),
        (None, Some("application/json, text/event-stream"), None, 415),
        (Some("text/plain"), None, None, 415),
        (Some("application/json-patch+json"), None, None, 415),
        // One of the two is enough: a server that honours Accept answers in that type.
        (
            Some("application/json"),
            Some("application/json"),
            None,
            200,
        ),
        (
            Some("application/json"),
            Some("text/event-stream"),
            None,
            200,
        ),
        (Some("application/json"), Some("text/html"), None, 406),
        (
            Some("application/json"),
            Some("application/json;q=0, text/event-stream;q=0"),
            None,
            406,
        ),
        (
            Some("application/json"),
            Some("text/*;q=0, application/xml"),
            None,
            406,
        ),
        (Some("application/json"), None, Some("1999-01-01"), 400),
    ];
    for (ct, accept, version, expected) in cases {
        let r = send(&c, with(ct, accept, version)).await;
        assert_eq!(
            r.status.as_u16(),
            expected,
            "{ct:?} {accept:?} {version:?}: {}",
            r.text
        );
        if expected != 200 {
            assert_eq!(r.json["error"]["code"], -32600, "{}", r.text);
        }
    }
    // GET: the answer is an event stream.
    for (accept, expected) in [
        (Some("text/event-stream"), 200),
        (Some("*/*"), 200),
        (None, 200),
        (Some("application/json"), 406),
    ] {
        let mut b = Request::get(format!("http://{addr}/mcp"));
        if let Some(a) = accept {
            b = b.header("accept", a);
        }
        let r = send(&c, b.body(full("")).unwrap()).await;
        assert_eq!(r.status.as_u16(), expected, "GET {accept:?}");
    }
    // DELETE carries Content-Type (the Python SDK sends it) and no Accept rule.
    let r = send(
        &c,
        Request::delete(format!("http://{addr}/mcp"))
            .header("content-type", "application/json")
            .header("accept", "text/html")
            .body(full(""))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(log.lock().unwrap().len(), 6 + 3 + 1);
}

#[tokio::test]
async fn mcp_headers_twice_or_outside_visible_ascii_get_400_on_every_method() {
    let (addr, log) = spawn(ParseLayer::new()).await;
    let c = client();
    let echo = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo"}}"#;
    let names = [
        "mcp-method",
        "mcp-name",
        "mcp-protocol-version",
        "mcp-session-id",
        "last-event-id",
    ];
    for m in [Method::POST, Method::GET, Method::DELETE] {
        for name in names {
            let good: &[u8] = match name {
                "mcp-method" => b"tools/call",
                "mcp-name" => b"echo",
                "mcp-protocol-version" => b"2025-11-25",
                _ => b"abc",
            };
            let bad_values: [&[&[u8]]; 4] =
                [&[good, good], &[b"ech\xe9"], &[b"a\tb"], &[b"\x80abc"]];
            for values in bad_values {
                let mut b = Request::builder()
                    .method(m.clone())
                    .uri(format!("http://{addr}/mcp"))
                    .header("content-type", "application/json")
                    .header("accept", "application/json, text/event-stream");
                for v in values {
                    b = b.header(name, http::HeaderValue::from_bytes(v).unwrap());
                }
                let body = if m == Method::POST { echo } else { "" };
                let r = send(&c, b.body(full(body)).unwrap()).await;
                assert_eq!(
                    r.status,
                    StatusCode::BAD_REQUEST,
                    "{m} {name} {values:?}: {}",
                    r.text
                );
            }
        }
    }
    assert!(log.lock().unwrap().is_empty());
    // One of each, visible ASCII (a space inside a name is printable): passes.
    let r = send(
        &c,
        post(addr, "")
            .header("mcp-method", "tools/call")
            .header("mcp-name", "echo")
            .header("mcp-session-id", "abc")
            .header("mcp-protocol-version", "2025-11-25")
            .body(full(echo))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
}

#[tokio::test]
async fn mcp_headers_that_disagree_with_the_body_get_400() {
    let (addr, log) = spawn(ParseLayer::new()).await;
    let c = client();
    let echo = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo"}}"#;
    let accented = r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"écho"}}"#;
    for (method, name, body, expected) in [
        ("tools/call", "echo", echo, 200),
        ("tools/list", "echo", echo, 400),
        ("tools/call", "denied_tool", echo, 400),
        // The 2026-07-28 form for names outside ASCII: base64 of the UTF-8 bytes.
        ("tools/call", "=?base64?w6ljaG8=?=", accented, 200),
        ("tools/call", "=?base64?ZWNobw==?=", echo, 200),
        ("tools/call", "=?base64?w6ljaG8=?=", echo, 400),
        ("tools/call", "=?base64?not base64?=", echo, 400),
    ] {
        let r = send(
            &c,
            post(addr, "")
                .header("mcp-method", method)
                .header("mcp-name", name)
                .body(full(body))
                .unwrap(),
        )
        .await;
        assert_eq!(r.status.as_u16(), expected, "{method} {name}: {}", r.text);
        if expected == 400 {
            assert_eq!(r.json["error"]["code"], -32600);
        }
    }
    assert_eq!(log.lock().unwrap().len(), 3);
}

/// Bodies another parser reads as something else than serde_json does.
#[tokio::test]
async fn duplicate_and_case_variant_keys_get_400() {
    let (addr, log) = spawn(ParseLayer::new()).await;
    let c = client();
    let refused = [
        // Duplicates: serde_json keeps the last, many parsers the first.
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"denied_tool","name":"echo"}}"#,
            "duplicate_key",
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"id":2,"method":"ping"}"#,
            "duplicate_key",
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"denied_tool"},"params":{"name":"echo"}}"#,
            "duplicate_key",
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"a":[1,{"b":{"c":1,"c":2}}]}}}"#,
            "duplicate_key",
        ),
        (
            r#"[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"denied_tool","name":"echo"}}]"#,
            "duplicate_key",
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"denied_tool","n\u0061me":"echo"}}"#,
            "duplicate_key",
        ),
        // Case variants of the MCP keys: Go's encoding/json matches them.
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","NAME":"denied_tool"}}"#,
            "key_case_variant",
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"Name":"denied_tool"}}"#,
            "key_case_variant",
        ),
        (
            r#"{"jsonrpc":"2.0","ID":1,"method":"ping"}"#,
            "key_case_variant",
        ),
        (
            r#"{"JSONRPC":"2.0","id":1,"method":"ping"}"#,
            "key_case_variant",
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"Method":"tools/call","method":"ping"}"#,
            "key_case_variant",
        ),
        (
            "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"echo\"},\"param\u{17f}\":{\"name\":\"denied_tool\"}}",
            "key_case_variant",
        ),
        (
            "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"echo\",\"argument\u{17f}\":{}}}",
            "key_case_variant",
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"URI":"file:///etc/passwd","uri":"file:///ok"}}"#,
            "key_case_variant",
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","_META":{}}}"#,
            "key_case_variant",
        ),
        (
            r#"[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo","Arguments":{}}}]"#,
            "key_case_variant",
        ),
        // A NUL in a key: C-string based readers stop at it.
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","name\u0000":"denied_tool"}}"#,
            "nul_in_key",
        ),
    ];
    for (body, rule) in refused {
        let r = post_body(&c, addr, body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.text);
        assert_eq!(r.json["error"]["code"], -32600, "{body}: {}", r.text);
        let _ = rule;
    }
    // What every parser reads alike passes: case variants of other keys, and MCP key
    // names below params (an argument may be called NAME).
    let passed = [
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"NAME":"x","name":"y","Uri":1}}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"c","version":"1"}}}"#,
        "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"echo\",\"\u{212a}ey\":1}}",
    ];
    for body in passed {
        let r = post_body(&c, addr, body).await;
        assert_eq!(r.status, StatusCode::OK, "{body}: {}", r.text);
    }
    assert_eq!(log.lock().unwrap().len(), passed.len());
    // What serde_json refuses is refused whole (-32700): a BOM, a lone surrogate.
    for body in [
        "\u{feff}{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}",
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"\ud800"}}"#,
    ] {
        let r = post_body(&c, addr, body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(r.json["error"]["code"], -32700, "{body}");
    }
}
