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
use serde_json::Value;
use tower::{Layer, ServiceExt, service_fn};

#[path = "support/body.rs"]
mod support;
use support::body;

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
