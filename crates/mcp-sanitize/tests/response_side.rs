//! The response side over real sockets: SecurityHeadersLayer and ResultScanLayer, with an
//! SSE upstream the test feeds chunk by chunk.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::response::Response;
use axum::routing::get;
use common::*;
use http_body::Frame;
use http_body_util::BodyExt;
use mcp_core::TlsInfo;
use mcp_sanitize::{
    NamedPattern, OverBudget, ResultScanConfig, ResultScanLayer, SecurityHeadersLayer,
};
use tokio::sync::mpsc;

/// A body fed by the test through a channel.
struct ChanBody(mpsc::Receiver<Bytes>);

impl http_body::Body for ChanBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

type Slot = Arc<Mutex<Option<mpsc::Receiver<Bytes>>>>;

fn sse_app(slot: Slot, scan: ResultScanConfig) -> Router {
    let json_slot = slot.clone();
    Router::new()
        .route(
            "/sse",
            get(move || {
                let slot = slot.clone();
                async move {
                    let rx = slot.lock().unwrap().take().unwrap();
                    Response::builder()
                        .header("content-type", "text/event-stream")
                        .body(Body::new(ChanBody(rx)))
                        .unwrap()
                }
            }),
        )
        .route(
            "/json",
            get(|| async {
                axum::Json(serde_json::json!({
                    "jsonrpc": "2.0", "id": 1,
                    "result": {"content": [{"type": "text",
                        "text": "token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U and mail ann@example.org\n-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIBkg\n-----END EC PRIVATE KEY-----\n"}]}
                }))
            }),
        )
        .route(
            "/json-chunks",
            get(move || {
                let slot = json_slot.clone();
                async move {
                    let rx = slot.lock().unwrap().take().unwrap();
                    Response::builder()
                        .header("content-type", "application/json; charset=utf-8")
                        .body(Body::new(ChanBody(rx)))
                        .unwrap()
                }
            }),
        )
        .route("/text", get(|| async { "AKIAIOSFODNN7EXAMPLE in plain text is scanned too" }))
        .route(
            "/gzip",
            get(|| async {
                Response::builder()
                    .header("content-type", "application/json")
                    .header("content-encoding", "gzip")
                    .body(Body::from("{\"k\":\"AKIAIOSFODNN7EXAMPLE\"}"))
                    .unwrap()
            }),
        )
        .layer(ResultScanLayer::new(&scan).unwrap())
}

fn scan_config() -> ResultScanConfig {
    ResultScanConfig {
        pii_patterns: vec![NamedPattern {
            name: "email".into(),
            regex: r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}".into(),
        }],
        ..Default::default()
    }
}

fn get_path(path: &str, headers: &[(&str, &str)]) -> http::Request<http_body_util::Full<Bytes>> {
    let mut req = bare("GET", headers);
    *req.uri_mut() = path.parse().unwrap();
    req
}

/// Reads frames until `needle` has been seen (bounded wait, so a buffering bug fails
/// instead of hanging).
async fn read_until(body: &mut hyper::body::Incoming, got: &mut Vec<u8>, needle: &[u8]) {
    while !got.windows(needle.len()).any(|w| w == needle) {
        let frame = tokio::time::timeout(Duration::from_secs(20), body.frame())
            .await
            .expect("the event was not forwarded while the stream is still open")
            .expect("stream ended early")
            .expect("body error");
        if let Ok(d) = frame.into_data() {
            got.extend_from_slice(&d);
        }
    }
}

#[tokio::test]
async fn sse_secrets_split_across_chunks_are_redacted_event_by_event() {
    let (tx, rx) = mpsc::channel(16);
    let slot: Slot = Arc::new(Mutex::new(Some(rx)));
    let addr = spawn(sse_app(slot, scan_config())).await;
    let resp = send_streaming(addr, get_path("/sse", &[("accept-encoding", "gzip")])).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("content-length").is_none());
    let mut body = resp.into_body();

    // Event 1: an AWS key split in the middle, and the blank line split too.
    for part in [
        "event: message\ndata: {\"k\":\"AKIAIOSF",
        "ODNN7EXAMPLE\"}\n",
        "\n",
    ] {
        tx.send(Bytes::from(part)).await.unwrap();
    }
    let mut got = Vec::new();
    read_until(&mut body, &mut got, b"}\n\n").await;
    let text = String::from_utf8(got.clone()).unwrap();
    assert_eq!(
        text,
        "event: message\ndata: {\"k\":\"[REDACTED:aws_access_key]\"}\n\n"
    );

    // Event 2 (CRLF): a PEM key in three chunks, the separator split across two.
    let parts = [
        "data: -----BEGIN RSA PRIVATE",
        " KEY-----\\nMIIEpAIBAAKCAQEA7\\nabc",
        "=\\n-----END RSA PRIVATE KEY----- bob@example.com\r\n",
        "\r",
        "\n",
    ];
    for p in parts {
        tx.send(Bytes::from(p)).await.unwrap();
    }
    let mut got2 = Vec::new();
    read_until(&mut body, &mut got2, b"\r\n\r\n").await;
    assert_eq!(
        String::from_utf8(got2).unwrap(),
        "data: [REDACTED:private_key] [REDACTED:email]\r\n\r\n"
    );

    // A trailing event without a blank line is flushed at the end of the stream.
    tx.send(Bytes::from(
        "data: ghp_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    ))
    .await
    .unwrap();
    drop(tx);
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(&rest[..], b"data: [REDACTED:github_token]");
}

#[tokio::test]
async fn an_oversized_event_ends_the_stream_instead_of_passing_unscanned() {
    let (tx, rx) = mpsc::channel(16);
    let slot: Slot = Arc::new(Mutex::new(Some(rx)));
    let cfg = ResultScanConfig {
        max_event_bytes: 64,
        ..Default::default()
    };
    let addr = spawn(sse_app(slot, cfg)).await;
    let resp = send_streaming(addr, get_path("/sse", &[])).await;
    let mut body = resp.into_body();
    tx.send(Bytes::from("data: ok\n\n")).await.unwrap();
    let mut got = Vec::new();
    read_until(&mut body, &mut got, b"ok\n\n").await;
    tx.send(Bytes::from(format!("data: {}", "x".repeat(100))))
        .await
        .unwrap();
    let mut rest = Vec::new();
    let mut errored = false;
    loop {
        match tokio::time::timeout(Duration::from_secs(20), body.frame())
            .await
            .unwrap()
        {
            Some(Ok(f)) => {
                if let Ok(d) = f.into_data() {
                    rest.extend_from_slice(&d);
                }
            }
            Some(Err(_)) => {
                errored = true;
                break;
            }
            None => break,
        }
    }
    assert!(errored, "the stream should end with an error");
    assert!(!String::from_utf8_lossy(&rest).contains("xxxx"));
}

#[tokio::test]
async fn json_results_are_redacted_and_stay_valid_json() {
    let slot: Slot = Arc::new(Mutex::new(None));
    let addr = spawn(sse_app(slot, scan_config())).await;
    let r = send(addr, get_path("/json", &[])).await;
    assert_eq!(r.status, 200);
    let v: serde_json::Value = serde_json::from_slice(&r.body).expect("still valid JSON");
    let text = v["result"]["content"][0]["text"].as_str().unwrap();
    assert_eq!(
        text,
        "token [REDACTED:jwt] and mail [REDACTED:email]\n[REDACTED:private_key]\n"
    );
    // Small and of a known length: collected and redacted before the head goes out, sent
    // with its exact new length.
    let len = r
        .header("content-length")
        .expect("a small JSON result keeps a Content-Length");
    assert_eq!(len.parse::<usize>().unwrap(), r.body.len());
    // Other content types are scanned too.
    let mut req = bare("GET", &[]);
    *req.uri_mut() = "/text".parse().unwrap();
    let r = send(addr, req).await;
    assert_eq!(
        String::from_utf8_lossy(&r.body),
        "[REDACTED:aws_access_key] in plain text is scanned too"
    );
}

#[tokio::test]
async fn security_headers_over_the_wire() {
    let app = Router::new()
        .route(
            "/",
            get(|| async {
                Response::builder()
                    .header("server", "upstream/1.2.3")
                    .header("x-powered-by", "Express")
                    .body(Body::from("ok"))
                    .unwrap()
            }),
        )
        .layer(SecurityHeadersLayer::default());
    // The same app behind a stand-in for the TLS accept loop, which puts TlsInfo in the
    // request extensions.
    let tls_app = app.clone().layer(axum::middleware::map_request(
        |mut req: axum::extract::Request| async move {
            req.extensions_mut().insert(TlsInfo::default());
            req
        },
    ));
    let plain = spawn(app).await;
    let tls = spawn(tls_app).await;
    let mut req = bare("GET", &[]);
    *req.uri_mut() = "/".parse().unwrap();
    let r = send(plain, req).await;
    assert_eq!(r.header("x-frame-options"), Some("DENY"));
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(r.header("referrer-policy"), Some("no-referrer"));
    assert_eq!(
        r.header("content-security-policy"),
        Some("default-src 'none'; frame-ancestors 'none'")
    );
    assert_eq!(r.header("server"), None);
    assert_eq!(r.header("x-powered-by"), None);
    assert_eq!(r.header("strict-transport-security"), None);
    let mut req = bare("GET", &[]);
    *req.uri_mut() = "/".parse().unwrap();
    let r = send(tls, req).await;
    assert_eq!(
        r.header("strict-transport-security"),
        Some("max-age=31536000; includeSubDomains")
    );
}

#[tokio::test]
async fn a_json_result_in_pieces_is_redacted_across_them_and_streamed() {
    let (tx, rx) = mpsc::channel(16);
    let slot: Slot = Arc::new(Mutex::new(Some(rx)));
    let addr = spawn(sse_app(slot, scan_config())).await;
    for part in [
        "{\"jsonrpc\":\"2.0\",\"id\":7,\"result\":{\"text\":\"key AKIAIOSF",
        "ODNN7EXAMPLE, mail ann@exa",
        "mple.org\"}}",
    ] {
        tx.send(Bytes::from(part)).await.unwrap();
    }
    drop(tx);
    let r = send(addr, get_path("/json-chunks", &[])).await;
    assert_eq!(r.status, 200);
    let body = String::from_utf8(r.body.to_vec()).unwrap();
    assert_eq!(
        body,
        "{\"jsonrpc\":\"2.0\",\"id\":7,\"result\":{\"text\":\"key [REDACTED:aws_access_key], mail [REDACTED:email]\"}}"
    );
    // Of unknown length: streamed, so no Content-Length.
    assert_eq!(r.header("content-length"), None);
}

/// A JSON result far longer than any former collection bound streams through redacted:
/// the first part reaches the client while the upstream is still sending.
#[tokio::test]
async fn a_long_json_result_streams_redacted_while_the_upstream_still_sends() {
    let (tx, rx) = mpsc::channel(16);
    let slot: Slot = Arc::new(Mutex::new(Some(rx)));
    let addr = spawn(sse_app(slot, scan_config())).await;
    let resp = send_streaming(addr, get_path("/json-chunks", &[])).await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    tx.send(Bytes::from(
        "{\"a\":\"AKIAIOSFODNN7EXAMPLE\",\"b\":\"AKIAIOSF",
    ))
    .await
    .unwrap();
    let mut got = Vec::new();
    // The first string ends at the quote after it: sent before the rest exists.
    read_until(&mut body, &mut got, b"[REDACTED:aws_access_key]").await;
    tx.send(Bytes::from("ODNN7EXAMPLE\"}")).await.unwrap();
    drop(tx);
    let rest = body.collect().await.unwrap().to_bytes();
    got.extend_from_slice(&rest);
    assert_eq!(
        String::from_utf8(got).unwrap(),
        "{\"a\":\"[REDACTED:aws_access_key]\",\"b\":\"[REDACTED:aws_access_key]\"}"
    );
}

#[tokio::test]
async fn a_compressed_result_is_refused_with_a_502_unless_over_budget_is_pass() {
    let slot: Slot = Arc::new(Mutex::new(None));
    let addr = spawn(sse_app(slot, scan_config())).await;
    let r = send(addr, get_path("/gzip", &[])).await;
    assert_eq!(r.status, 502);
    let v: serde_json::Value = serde_json::from_slice(&r.body).expect("a JSON-RPC error");
    assert_eq!(v["jsonrpc"], "2.0");
    assert!(v["error"]["code"].is_i64());
    assert!(!String::from_utf8_lossy(&r.body).contains("AKIA"));
    // Explicitly weakened: passed on as it came.
    let slot: Slot = Arc::new(Mutex::new(None));
    let cfg = ResultScanConfig {
        over_budget: OverBudget::Pass,
        ..scan_config()
    };
    let addr = spawn(sse_app(slot, cfg)).await;
    let r = send(addr, get_path("/gzip", &[])).await;
    assert_eq!(r.status, 200);
    assert_eq!(&r.body[..], b"{\"k\":\"AKIAIOSFODNN7EXAMPLE\"}");
}

/// `over_budget: pass`: an SSE event over `max_event_bytes` goes on unscanned to its end,
/// and scanning resumes at the next event.
#[tokio::test]
async fn an_oversized_event_passes_unscanned_to_its_end_with_over_budget_pass() {
    let (tx, rx) = mpsc::channel(16);
    let slot: Slot = Arc::new(Mutex::new(Some(rx)));
    let cfg = ResultScanConfig {
        max_event_bytes: 64,
        over_budget: OverBudget::Pass,
        ..Default::default()
    };
    let addr = spawn(sse_app(slot, cfg)).await;
    let resp = send_streaming(addr, get_path("/sse", &[])).await;
    let body = resp.into_body();
    let big = format!("data: AKIAIOSFODNN7EXAMPLE {}", "x".repeat(100));
    for part in [
        "data: AKIAIOSFODNN7EXAMPLE\n\n",
        big.as_str(),
        "yyy\n",
        "\ndata: AKIAIOSFODNN7EXAMPLE\n\n",
    ] {
        tx.send(Bytes::from(part.to_owned())).await.unwrap();
    }
    drop(tx);
    let all = body.collect().await.unwrap().to_bytes();
    assert_eq!(
        String::from_utf8_lossy(&all),
        format!(
            "data: [REDACTED:aws_access_key]\n\n{big}yyy\n\ndata: [REDACTED:aws_access_key]\n\n"
        )
    );
}

/// A small clean JSON result in one frame (kept as it came, not copied or rewritten) goes
/// out byte for byte with its length; the same body with a secret in it is redacted.
#[tokio::test]
async fn a_clean_json_result_in_one_frame_goes_out_unchanged_with_its_length() {
    const CLEAN: &str = r#"{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"hello from wrk"}],"isError":false}}"#;
    let app = Router::new()
        .route(
            "/clean",
            get(|| async {
                Response::builder()
                    .header("content-type", "Application/JSON")
                    .header("content-length", CLEAN.len())
                    .body(Body::from(Bytes::from_static(CLEAN.as_bytes())))
                    .unwrap()
            }),
        )
        .route(
            "/secret",
            get(|| async {
                Response::builder()
                    .header("content-type", "application/vnd.example+json")
                    .body(Body::from(CLEAN.replace("hello", "AKIAIOSFODNN7EXAMPLE")))
                    .unwrap()
            }),
        )
        .layer(ResultScanLayer::new(&scan_config()).unwrap());
    let addr = spawn(app).await;
    let r = send(addr, get_path("/clean", &[])).await;
    assert_eq!(r.status, 200);
    assert_eq!(&r.body[..], CLEAN.as_bytes());
    assert_eq!(r.header("content-length"), Some(&*CLEAN.len().to_string()));
    let r = send(addr, get_path("/secret", &[])).await;
    assert_eq!(r.status, 200);
    let expected = CLEAN.replace("hello", "[REDACTED:aws_access_key]");
    assert_eq!(String::from_utf8_lossy(&r.body), expected);
    assert_eq!(
        r.header("content-length"),
        Some(&*expected.len().to_string())
    );
}
