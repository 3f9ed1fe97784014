//! Full validation plus rules on 1 KiB and 64 KiB `tools/call` bodies, against
//! `serde_json::from_slice::<serde_json::Value>` alone on the same bytes, in the same run.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::hint::black_box;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use http::{Request, Response};
use http_body_util::Full;
use mcp_core::{Body, McpHeaders, McpRequest, ParseLayer};
use mcp_sanitize::{SanitizeConfig, SanitizeLayer};
use serde_json::{Value, json};
use tower::{Layer, ServiceExt, service_fn};

const WORDS: &[&str] = &[
    "the",
    "gateway",
    "forwards",
    "tool",
    "arguments",
    "to",
    "an",
    "upstream",
    "server",
    "which",
    "queries",
    "a",
    "database",
    "and",
    "returns",
    "rows",
    "of",
    "results",
    "café",
    "naïve",
    "résumé",
    "über",
    "select",
    "from",
    "where",
    "order",
    "by",
    "limit",
    "user's",
    "report",
    "2024-05-01",
    "42",
    "3.14",
    "(draft)",
    "e-mail",
    "path/to/file.txt",
];

/// A realistic `tools/call` body of about `target` bytes: nested arguments, prose strings
/// under the 1000-character limit, some URLs and numbers.
fn body(target: usize) -> Vec<u8> {
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut sentence = |len: usize| {
        let mut s = String::new();
        while s.len() < len {
            if !s.is_empty() {
                s.push(' ');
            }
            s.push_str(WORDS[(next() % WORDS.len() as u64) as usize]);
        }
        s
    };
    let mut docs = Vec::new();
    let mut i = 0;
    loop {
        let doc = json!({
            "id": i,
            "title": sentence(40),
            "url": format!("https://docs.example.com/articles/{i}?ref=search&page=2"),
            "text": sentence(600),
            "tags": ["alpha", "beta", format!("t{i}")],
            "meta": {"score": 0.75, "visible": true, "author": sentence(12)}
        });
        docs.push(doc);
        i += 1;
        let v = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "index_documents", "arguments": {"collection": "kb", "documents": docs}}});
        let bytes = serde_json::to_vec(&v).unwrap();
        if bytes.len() >= target {
            return bytes;
        }
    }
}

fn bench(c: &mut Criterion) {
    let layer = SanitizeLayer::new(SanitizeConfig::default()).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    for (label, size) in [("1KiB", 1024), ("64KiB", 64 * 1024)] {
        let raw = Bytes::from(body(size));
        // The bodies must pass every rule, or the bench would measure rejections.
        let parsed = McpRequest::parse(raw.clone(), McpHeaders::default()).unwrap();
        assert!(
            layer.validate(&parsed).unwrap().is_none(),
            "bench body must pass"
        );

        let mut g = c.benchmark_group(format!("tools_call_{label}"));
        g.throughput(Throughput::Bytes(raw.len() as u64));
        g.bench_function(BenchmarkId::new("serde_json_parse_only", raw.len()), |b| {
            b.iter(|| black_box(serde_json::from_slice::<Value>(black_box(&raw)).unwrap()))
        });
        g.bench_function(BenchmarkId::new("mcp_request_parse_only", raw.len()), |b| {
            b.iter(|| {
                black_box(McpRequest::parse(black_box(raw.clone()), McpHeaders::default()).unwrap())
            })
        });
        g.bench_function(BenchmarkId::new("validate_parsed", raw.len()), |b| {
            b.iter(|| black_box(layer.validate(black_box(&parsed)).unwrap()))
        });
        g.bench_function(BenchmarkId::new("parse_plus_validate", raw.len()), |b| {
            b.iter(|| {
                let req = McpRequest::parse(black_box(raw.clone()), McpHeaders::default()).unwrap();
                black_box(layer.validate(&req).unwrap())
            })
        });
        // Through tower: ParseLayer alone, and ParseLayer + SanitizeLayer (with_parse).
        let ok = service_fn(|_req: Request<Body>| async {
            Ok::<_, Infallible>(Response::new(Body::empty()))
        });
        let parse_only = ParseLayer::new().layer(ok);
        let full = layer.clone().with_parse().layer(ok);
        let request = || {
            Request::post("/mcp")
                .header("host", "localhost")
                .header("content-type", "application/json")
                .body(Full::new(raw.clone()))
                .unwrap()
        };
        g.bench_function(BenchmarkId::new("tower_parse_layer_only", raw.len()), |b| {
            b.iter(|| rt.block_on(parse_only.clone().oneshot(request())).unwrap())
        });
        g.bench_function(
            BenchmarkId::new("tower_parse_plus_sanitize", raw.len()),
            |b| b.iter(|| rt.block_on(full.clone().oneshot(request())).unwrap()),
        );
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
