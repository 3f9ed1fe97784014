//! The parse-once layer against `serde_json::from_slice::<serde_json::Value>` alone on the
//! same 1 KiB and 64 KiB tools/call bodies, in the same run.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::convert::Infallible;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use http::{Request, Response};
use mcp_core::{Body, McpHeaders, McpRequest, ParseLayer};
use tower::{Layer, ServiceExt};

/// A tools/call body of about `size` bytes with varied argument types.
pub fn tools_call_body(size: usize) -> Bytes {
    let mut items = Vec::new();
    let mut i = 0;
    let mut len = 0;
    while len < size.saturating_sub(120) {
        let item = serde_json::json!({
            "id": i, "name": format!("item-{i}"), "enabled": i % 2 == 0,
            "score": (i as f64) * 1.25, "tags": ["alpha", "beta"],
            "note": "the quick brown fox jumps over the lazy dog"
        });
        len += item.to_string().len() + 1;
        items.push(item);
        i += 1;
    }
    let body = serde_json::json!({
        "jsonrpc": "2.0", "id": 42, "method": "tools/call",
        "params": {"name": "search", "arguments": {"query": "rust tower", "items": items}}
    });
    Bytes::from(serde_json::to_vec(&body).unwrap())
}

fn bench(c: &mut Criterion) {
    // The timer: ParseLayer's body timeout needs it.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("parse_once");
    for size in [1024usize, 64 * 1024] {
        let body = tools_call_body(size);
        group.throughput(Throughput::Bytes(body.len() as u64));
        let label = format!("{}KiB", size / 1024);

        group.bench_with_input(
            BenchmarkId::new("serde_json_value", &label),
            &body,
            |b, body| b.iter(|| serde_json::from_slice::<serde_json::Value>(body).unwrap()),
        );

        group.bench_with_input(
            BenchmarkId::new("mcp_request_parse", &label),
            &body,
            |b, body| b.iter(|| McpRequest::parse(body.clone(), McpHeaders::default()).unwrap()),
        );

        // The whole layer: read the body, parse, insert into extensions, call the inner
        // service, mirror into the response.
        let inner = tower::service_fn(|req: Request<Body>| async move {
            let ok = req.extensions().get::<McpRequest>().is_some();
            Ok::<_, Infallible>(Response::new(Body::from(if ok { "ok" } else { "no" })))
        });
        let svc = ParseLayer::new().layer(inner);
        group.bench_with_input(BenchmarkId::new("parse_layer", &label), &body, |b, body| {
            b.iter(|| {
                let req = Request::post("/mcp")
                    .header("content-type", "application/json")
                    .body(http_body_util::Full::new(body.clone()))
                    .unwrap();
                rt.block_on(svc.clone().oneshot(req)).unwrap()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
