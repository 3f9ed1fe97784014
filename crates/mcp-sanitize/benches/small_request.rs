//! The gateway's small `tools/call` request (wrk's body and headers) through the real layer
//! stack as a tower service — `SanitizeLayer::with_parse` (header checks, `ParseLayer`,
//! validation) around `ResultScanLayer` around an upstream answering a small JSON result —
//! against what a user would do otherwise, in the same run: `serde_json::from_slice` of the
//! body into a `Value`, and the upstream alone (the request built and its response read,
//! which every row below also pays).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http_body_util::BodyExt;
use mcp_core::{McpHeaders, McpRequest, ParseLayer};
use mcp_sanitize::{ResultScanConfig, ResultScanLayer};
use serde_json::Value;
use tower::{Layer, ServiceExt};

/// The example gateway's allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "support/small.rs"]
mod small;

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let stack = small::stack();
    assert_eq!(rt.block_on(small::one(&stack)), small::RESULT);
    let parse = ParseLayer::new().layer(small::upstream());
    let scan = ResultScanLayer::new(&ResultScanConfig::default())
        .unwrap()
        .layer(small::upstream());

    let mut g = c.benchmark_group("small_tools_call");
    g.bench_function("serde_json_parse_only", |b| {
        b.iter(|| black_box(serde_json::from_slice::<Value>(black_box(small::REQUEST)).unwrap()))
    });
    g.bench_function("mcp_request_parse_only", |b| {
        b.iter(|| {
            black_box(
                McpRequest::parse(Bytes::from_static(small::REQUEST), McpHeaders::default())
                    .unwrap(),
            )
        })
    });
    g.bench_function("upstream_alone", |b| {
        b.iter(|| {
            rt.block_on(async {
                let req = small::request().map(mcp_core::Body::new);
                let resp = small::upstream().oneshot(req).await.unwrap();
                black_box(resp.into_body().collect().await.unwrap())
            })
        })
    });
    g.bench_function("parse_layer", |b| {
        b.iter(|| {
            rt.block_on(async {
                let resp = parse.clone().oneshot(small::request()).await.unwrap();
                black_box(resp.into_body().collect().await.unwrap())
            })
        })
    });
    g.bench_function("result_scan_layer", |b| {
        b.iter(|| {
            rt.block_on(async {
                let req = small::request().map(mcp_core::Body::new);
                let resp = scan.clone().oneshot(req).await.unwrap();
                black_box(resp.into_body().collect().await.unwrap())
            })
        })
    });
    g.bench_function("full_stack", |b| b.iter(|| rt.block_on(small::one(&stack))));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
