//! Result redaction of a large JSON body: `Redactor::redact` over the whole body, and
//! `ResultScanLayer` over the body as an upstream sends it (16 KiB frames), collected by
//! the client. The body is a `tools/call` result of 1 MiB of text, clean or with a secret
//! every 64 KiB.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::hint::black_box;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use http::{Request, Response, header};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use mcp_sanitize::{Redactor, ResultScanConfig, ResultScanLayer};
use tower::{Layer, ServiceExt, service_fn};

/// A JSON-RPC result of about `len` bytes: many text items, with an AWS key id in one item
/// out of `secret_every` (none when 0).
fn body(len: usize, secret_every: usize) -> Vec<u8> {
    let mut items = Vec::new();
    let mut n = 0;
    let mut i = 0;
    while n < len {
        let text = if secret_every > 0 && i % secret_every == 0 {
            format!("line {i}: key AKIAIOSFODNN7EXAMPLE in the logs of the build step")
        } else {
            format!("line {i}: the build step finished in 12 seconds with no warnings at all")
        };
        n += text.len() + 30;
        items.push(serde_json::json!({"type": "text", "text": text}));
        i += 1;
    }
    serde_json::to_vec(
        &serde_json::json!({"jsonrpc": "2.0", "id": 1, "result": {"content": items}}),
    )
    .unwrap()
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let redactor = Redactor::new(&ResultScanConfig::default()).unwrap();
    let scan = ResultScanLayer::new(&ResultScanConfig::default()).unwrap();
    let mut g = c.benchmark_group("redact_body");
    for (name, every) in [("clean", 0), ("secret_every_64k", 800)] {
        let raw = Bytes::from(body(1024 * 1024, every));
        g.throughput(Throughput::Bytes(raw.len() as u64));
        g.bench_function(BenchmarkId::new("redactor_whole", name), |b| {
            b.iter(|| black_box(redactor.redact(black_box(&raw)).len()))
        });
        let frames: Vec<Bytes> = raw.chunks(16 * 1024).map(Bytes::copy_from_slice).collect();
        let svc = scan.clone().layer(service_fn(move |_req: Request<()>| {
            let body = StreamBody::new(futures_util::stream::iter(
                frames
                    .clone()
                    .into_iter()
                    .map(|b| Ok::<_, Infallible>(Frame::data(b))),
            ));
            let resp = Response::builder()
                .header(header::CONTENT_TYPE, "application/json")
                .body(body)
                .unwrap();
            async move { Ok::<_, Infallible>(resp) }
        }));
        g.bench_function(BenchmarkId::new("layer_16k_frames", name), |b| {
            b.iter(|| {
                rt.block_on(async {
                    let resp = svc.clone().oneshot(Request::new(())).await.unwrap();
                    black_box(resp.into_body().collect().await.unwrap().to_bytes().len())
                })
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
