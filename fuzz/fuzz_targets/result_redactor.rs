//! The result scanner (`ResultScanLayer`) over SSE and JSON responses cut at arbitrary
//! chunk boundaries, and the `Redactor` itself.
//!
//! Input: 8 control bytes (media type, then the chunk sizes), then the body.
//! Properties: no panic or hang; the bytes a client receives do not depend on how the
//! upstream chunked the body; a redacted text holds nothing the redactor would redact
//! again (no detector match survives redaction); the streamed redaction
//! (`StreamRedactor`, with the default window and a small one) gives the same bytes for
//! any chunking, and exactly `Redactor::redact_escaped` of the whole body when no segment
//! is longer than the window.
#![no_main]

use std::convert::Infallible;
use std::sync::LazyLock;

use bytes::Bytes;
use futures_util::stream;
use http::{Request, Response, header};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use libfuzzer_sys::fuzz_target;
use mcp_sanitize::scan::{NamedPattern, Redactor, ResultScanConfig, ResultScanLayer};
use mcp_security_fuzz::{chunks, ready, split_control};
use std::sync::Arc;
use tower::{Layer, ServiceExt, service_fn};

fn config() -> ResultScanConfig {
    ResultScanConfig {
        pii_patterns: vec![NamedPattern {
            name: "email".to_owned(),
            regex: r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}".to_owned(),
        }],
        ..ResultScanConfig::default()
    }
}

static LAYER: LazyLock<ResultScanLayer> =
    LazyLock::new(|| ResultScanLayer::new(&config()).expect("valid configuration"));
static REDACTOR: LazyLock<Arc<Redactor>> =
    LazyLock::new(|| Arc::new(Redactor::new(&config()).expect("valid configuration")));
/// The smallest window the built-in detectors allow: long segments are common.
static SMALL_WINDOW: LazyLock<Arc<Redactor>> = LazyLock::new(|| {
    Arc::new(
        Redactor::new(&ResultScanConfig {
            max_match_bytes: 266,
            ..config()
        })
        .expect("valid configuration"),
    )
});

/// The body streamed through a `StreamRedactor` in these pieces.
fn streamed(redactor: &Arc<Redactor>, parts: &[&[u8]]) -> Vec<u8> {
    let mut s = redactor.stream();
    let mut out: Vec<Bytes> = Vec::new();
    for p in parts {
        s.push(Bytes::copy_from_slice(p), &mut out);
        assert!(s.held_back() <= 2 * redactor.max_match_bytes() + p.len() + 1);
    }
    s.finish(&mut out);
    out.concat()
}

/// Whether no segment of `body` (from one `"` to the next) is longer than `window`.
fn segments_fit(body: &[u8], window: usize) -> bool {
    let mut start = 0;
    for (i, b) in body.iter().enumerate().skip(1) {
        if *b == b'"' {
            if i - start > window {
                return false;
            }
            start = i;
        }
    }
    body.len() - start <= window
}

/// What a client receives: the status and the body bytes, or the error that cut it.
fn through_layer(content_type: &str, parts: &[&[u8]]) -> (u16, Result<Vec<u8>, String>) {
    let frames: Vec<Bytes> = parts.iter().map(|p| Bytes::copy_from_slice(p)).collect();
    let content_type = content_type.to_owned();
    let upstream = service_fn(move |_req: Request<()>| {
        let body = StreamBody::new(stream::iter(
            frames
                .clone()
                .into_iter()
                .map(|b| Ok::<_, Infallible>(Frame::data(b))),
        ));
        let resp = Response::builder()
            .header(header::CONTENT_TYPE, content_type.as_str())
            .body(body)
            .expect("valid response");
        async move { Ok::<_, Infallible>(resp) }
    });
    let svc = LAYER.clone().layer(upstream);
    let resp = match ready(svc.oneshot(Request::new(()))) {
        Ok(r) => r,
        Err(e) => match e {},
    };
    let status = resp.status().as_u16();
    let body = ready(resp.into_body().collect())
        .map(|c| c.to_bytes().to_vec())
        .map_err(|e| e.to_string());
    (status, body)
}

fuzz_target!(|data: &[u8]| {
    let (ctl, body) = split_control::<8>(data);
    let content_type = match ctl[0] % 4 {
        0 | 1 => "text/event-stream",
        2 => "application/json",
        _ => "application/vnd.example+json; charset=utf-8",
    };
    let whole = through_layer(content_type, &[body]);
    let cut = through_layer(content_type, &chunks(body, &ctl[1..]));
    let bytewise = through_layer(content_type, &chunks(body, &[1]));
    assert_eq!(whole, cut, "the output depends on the chunk boundaries");
    assert_eq!(
        whole, bytewise,
        "the output depends on the chunk boundaries (1 byte)"
    );

    let parts = chunks(body, &ctl[1..]);
    for r in [&*REDACTOR, &*SMALL_WINDOW] {
        let whole = streamed(r, &[body]);
        assert_eq!(
            whole,
            streamed(r, &parts),
            "streamed redaction depends on the chunks"
        );
        assert_eq!(
            whole,
            streamed(r, &chunks(body, &[1])),
            "streamed redaction depends on the chunks (1 byte)"
        );
        if segments_fit(body, r.max_match_bytes()) {
            assert_eq!(
                whole,
                r.redact_escaped(body).into_owned(),
                "streamed differs from whole-body redaction"
            );
        }
    }

    let once = REDACTOR.redact(body).into_owned();
    let twice = REDACTOR.redact(&once).into_owned();
    assert!(
        once == twice,
        "a detector still matches after redaction: {:?} -> {:?}",
        String::from_utf8_lossy(&once),
        String::from_utf8_lossy(&twice)
    );
});
