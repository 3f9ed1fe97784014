//! Result redaction with bounded memory (issue "Hardening III", item 2): a large JSON
//! result streams through the gateway redacted, with its secrets at chunk boundaries,
//! without the gateway holding the body; escaped secrets are found; a compressed result is
//! refused; an SSE event over its bound ends the stream. Real processes and sockets: the
//! gateway binary, an upstream on loopback, reqwest as the client.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::*;
use serde_json::json;
use tokio::sync::{mpsc, oneshot};

/// The secret the upstream leaks.
const SECRET: &str = "AKIAIOSFODNN7EXAMPLE";
const CHUNK: usize = 64 * 1024;
const BODY_MB: usize = 50;

/// What the upstream answers: a body from a channel (sent as it comes), with a content
/// type and maybe a content encoding.
struct Answer {
    content_type: &'static str,
    encoding: Option<&'static str>,
    chunks: mpsc::Receiver<Bytes>,
}

type Next = Arc<Mutex<Vec<Answer>>>;

/// An upstream on loopback that answers each POST with the next prepared answer.
async fn upstream(next: Next) -> String {
    let app = axum::Router::new().route(
        "/mcp",
        axum::routing::post(move || {
            let next = next.clone();
            async move {
                let a = next.lock().unwrap().remove(0);
                let stream = futures_util::stream::unfold(a.chunks, |mut rx| async move {
                    rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
                });
                let mut resp =
                    axum::response::Response::builder().header("content-type", a.content_type);
                if let Some(e) = a.encoding {
                    resp = resp.header("content-encoding", e);
                }
                resp.body(axum::body::Body::from_stream(stream)).unwrap()
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    format!("http://{addr}/mcp")
}

fn vm_hwm_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// One chunk of the big body: a JSON text item, then the start of the next one, cut so
/// that a secret straddles the end of the chunk at offset `split` into it.
fn big_chunks(n: usize) -> Vec<Bytes> {
    let mut out = Vec::with_capacity(n);
    let head = r#"{"jsonrpc":"2.0","id":1,"result":{"content":["#;
    let mut text = String::from(head);
    let mut pending = String::new();
    for i in 0..n {
        let mut chunk = std::mem::take(&mut pending);
        if i == 0 {
            chunk.push_str(&text);
            text.clear();
        }
        // Items of filler (with an escaped quote and slash) up to near the chunk's end.
        while chunk.len() < CHUNK - 200 {
            chunk.push_str(r#"{"type":"text","text":"log line with \"quotes\" and a\/path, nothing secret here"},"#);
        }
        if i + 1 == n {
            // The secret at the very end of the body.
            chunk.push_str(&format!(r#"{{"type":"text","text":"last {SECRET}"}}]}}}}"#));
        } else {
            // A secret cut across the chunk boundary, at a point that moves.
            let item = format!(r#"{{"type":"text","text":"key {SECRET} k"}},"#);
            let cut = 22 + i % 24;
            chunk.push_str(&item[..cut]);
            pending.push_str(&item[cut..]);
        }
        out.push(Bytes::from(chunk));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_50_mb_json_result_streams_redacted_with_bounded_gateway_memory() {
    let dir = tempdir();
    let next: Next = Arc::default();
    let url = upstream(next.clone()).await;
    let (gw, base) = start_gateway(dir.path(), &base_config(&url, &dir.path().join("a.db"), ""));
    let c = client();

    // A first small call, so that the gateway's own start-up memory is in the baseline.
    let (tx, rx) = mpsc::channel(4);
    next.lock().unwrap().push(Answer {
        content_type: "application/json",
        encoding: None,
        chunks: rx,
    });
    tx.send(Bytes::from(
        r#"{"jsonrpc":"2.0","id":1,"result":{"content":[]}}"#,
    ))
    .await
    .unwrap();
    drop(tx);
    let r = call_tool(&c, &format!("{base}/mcp"), "echo", json!({}))
        .header("x-api-key", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap();
    let before = vm_hwm_kib(gw.pid());

    let n = BODY_MB * 1024 * 1024 / CHUNK;
    let chunks = big_chunks(n);
    let total: usize = chunks.iter().map(Bytes::len).sum();
    let (tx, rx) = mpsc::channel(2);
    next.lock().unwrap().push(Answer {
        content_type: "application/json",
        encoding: None,
        chunks: rx,
    });
    let (first_seen_tx, first_seen_rx) = oneshot::channel::<()>();
    // The upstream sends the first tenth, then waits until the client has read redacted
    // bytes: if the gateway held the body, the client would never see any and this would
    // stop at the liveness deadline below.
    let sender = tokio::spawn(async move {
        let mut first_seen = Some(first_seen_rx);
        for (i, ch) in chunks.into_iter().enumerate() {
            if i == n / 10
                && let Some(rx) = first_seen.take()
            {
                rx.await.unwrap();
            }
            tx.send(ch).await.unwrap();
        }
    });
    let mut resp = call_tool(&c, &format!("{base}/mcp"), "echo", json!({}))
        .header("x-api-key", KEY)
        .timeout(std::time::Duration::from_secs(600))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers().get("content-length"), None);
    let mut got: Vec<u8> = Vec::with_capacity(total);
    let mut first_seen_tx = Some(first_seen_tx);
    while let Some(b) = tokio::time::timeout(std::time::Duration::from_secs(120), resp.chunk())
        .await
        .expect("the gateway forwards the result while the upstream still sends")
        .unwrap()
    {
        got.extend_from_slice(&b);
        if got.len() > 1024 * 1024
            && let Some(t) = first_seen_tx.take()
        {
            let _ = t.send(());
        }
    }
    sender.await.unwrap();
    let after = vm_hwm_kib(gw.pid());

    let text = String::from_utf8(got).unwrap();
    assert!(
        !text.contains("AKIA") && !text.contains("IOSFODNN7EXAMPLE"),
        "a secret passed"
    );
    assert_eq!(text.matches("[REDACTED:aws_access_key]").count(), n);
    let v: serde_json::Value = serde_json::from_str(&text).expect("still valid JSON");
    assert!(v["result"]["content"].as_array().unwrap().len() > n);
    let growth_mb = after.saturating_sub(before) / 1024;
    eprintln!("body {total} bytes; gateway VmHWM {before} KiB -> {after} KiB (+{growth_mb} MiB)");
    assert!(
        growth_mb < (BODY_MB / 2) as u64,
        "the gateway's peak memory grew {growth_mb} MiB for a {BODY_MB} MiB body"
    );
}

/// Secrets split into 1-byte chunks, at the very end, and written with JSON escapes (in a
/// value and in a key): all redacted, the result still valid JSON.
#[tokio::test]
async fn secrets_in_one_byte_chunks_at_the_end_and_escaped_are_redacted() {
    let dir = tempdir();
    let next: Next = Arc::default();
    let url = upstream(next.clone()).await;
    let (_gw, base) = start_gateway(dir.path(), &base_config(&url, &dir.path().join("a.db"), ""));
    let c = client();
    let cases: &[(&str, &str)] = &[
        (
            r#"{"jsonrpc":"2.0","id":1,"result":{"text":"a AKIAIOSFODNN7EXAMPLE b"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"result":{"text":"a [REDACTED:aws_access_key] b"}}"#,
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"result":{"text":"AKIA\u0049OSFODNN7EXAMPLE"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"result":{"text":"[REDACTED:aws_access_key]"}}"#,
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"result":{"AKIA\u0049OSFODNN7EXAMPLE":"x","u":"https:\/\/h\/ghp_\u0061bcdefghijklmnopqrstuvwxyz0123456789"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"result":{"[REDACTED:aws_access_key]":"x","u":"https://h/[REDACTED:github_token]"}}"#,
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"result":{"text":"end"}} AKIAIOSFODNN7EXAMPLE"#,
            r#"{"jsonrpc":"2.0","id":1,"result":{"text":"end"}} [REDACTED:aws_access_key]"#,
        ),
    ];
    for (body, want) in cases {
        for one_byte in [true, false] {
            let (tx, rx) = mpsc::channel(body.len() + 1);
            next.lock().unwrap().push(Answer {
                content_type: "application/json",
                encoding: None,
                chunks: rx,
            });
            if one_byte {
                for b in body.as_bytes() {
                    tx.send(Bytes::copy_from_slice(&[*b])).await.unwrap();
                }
            } else {
                tx.send(Bytes::from(body.to_string())).await.unwrap();
            }
            drop(tx);
            let r = call_tool(&c, &format!("{base}/mcp"), "echo", json!({}))
                .header("x-api-key", KEY)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            let out = r.text().await.unwrap();
            assert_eq!(&out, want, "{body} (1-byte chunks: {one_byte})");
        }
    }
}

/// A compressed result cannot be scanned: 502 with a JSON-RPC error, audited as an
/// upstream error; nothing of it reaches the client.
#[tokio::test]
async fn a_compressed_result_is_refused() {
    let dir = tempdir();
    let next: Next = Arc::default();
    let url = upstream(next.clone()).await;
    let (_gw, base) = start_gateway(dir.path(), &base_config(&url, &dir.path().join("a.db"), ""));
    let c = client();
    for encoding in ["gzip", "br", "x-custom"] {
        let (tx, rx) = mpsc::channel(2);
        next.lock().unwrap().push(Answer {
            content_type: "application/json",
            encoding: Some(encoding),
            chunks: rx,
        });
        tx.send(Bytes::from(format!(
            r#"{{"jsonrpc":"2.0","id":1,"result":{{"text":"{SECRET}"}}}}"#
        )))
        .await
        .unwrap();
        drop(tx);
        let r = call_tool(&c, &format!("{base}/mcp"), "echo", json!({}))
            .header("x-api-key", KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 502, "{encoding}");
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["id"], 1, "{encoding}");
        assert!(v["error"]["code"].is_i64());
        assert!(!v.to_string().contains("AKIA"));
    }
}

/// An SSE event longer than `max_event_bytes` ends the stream (its head was sent already)
/// and none of the event reaches the client; the events before it arrive redacted.
#[tokio::test]
async fn an_sse_event_over_its_bound_ends_the_stream() {
    let dir = tempdir();
    let next: Next = Arc::default();
    let url = upstream(next.clone()).await;
    let extra = "result_redaction:\n  max_event_bytes: 65536\n";
    let (_gw, base) = start_gateway(
        dir.path(),
        &base_config(&url, &dir.path().join("a.db"), extra),
    );
    let c = client();
    let (tx, rx) = mpsc::channel(64);
    next.lock().unwrap().push(Answer {
        content_type: "text/event-stream",
        encoding: None,
        chunks: rx,
    });
    tx.send(Bytes::from(format!("event: message\ndata: {SECRET}\n\n")))
        .await
        .unwrap();
    tx.send(Bytes::from(format!("data: {SECRET} ")))
        .await
        .unwrap();
    for _ in 0..40 {
        tx.send(Bytes::from("x".repeat(4096))).await.unwrap();
    }
    drop(tx);
    let mut r = call_tool(&c, &format!("{base}/mcp"), "echo", json!({}))
        .header("x-api-key", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut got = Vec::new();
    let mut failed = false;
    loop {
        match r.chunk().await {
            Ok(Some(b)) => got.extend_from_slice(&b),
            Ok(None) => break,
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&got);
    assert!(failed, "the stream should end with an error: {text}");
    assert!(
        text.starts_with("event: message\ndata: [REDACTED:aws_access_key]\n\n"),
        "{text}"
    );
    assert!(!text.contains("AKIA") && !text.contains("xxxx"), "{text}");
}

/// The keys as the gateway maps them: a window smaller than a detector's longest match is
/// refused by `check`, naming the key; `over_budget: pass` is explicit and lets a
/// compressed result through unscanned.
#[tokio::test]
async fn the_window_and_the_budget_are_configured_under_result_redaction() {
    let dir = tempdir();
    let next: Next = Arc::default();
    let url = upstream(next.clone()).await;
    let bad = base_config(
        &url,
        &dir.path().join("a.db"),
        "result_redaction:\n  max_match_bytes: 100\n",
    );
    let path = dir.path().join("bad.yaml");
    std::fs::write(&path, bad).unwrap();
    let (code, _, err) = run(
        &["check", "--config", path.to_str().unwrap()],
        dir.path(),
        &[],
    );
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("max_match_bytes"), "{err}");

    let extra = "result_redaction:\n  over_budget: pass\n  max_match_bytes: 8192\n";
    let (_gw, base) = start_gateway(
        dir.path(),
        &base_config(&url, &dir.path().join("a.db"), extra),
    );
    let c = client();
    let (tx, rx) = mpsc::channel(2);
    next.lock().unwrap().push(Answer {
        content_type: "application/json",
        encoding: Some("gzip"),
        chunks: rx,
    });
    let body = format!(r#"{{"jsonrpc":"2.0","id":1,"result":{{"text":"{SECRET}"}}}}"#);
    tx.send(Bytes::from(body.clone())).await.unwrap();
    drop(tx);
    let r = call_tool(&c, &format!("{base}/mcp"), "echo", json!({}))
        .header("x-api-key", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), body.as_bytes());
}
