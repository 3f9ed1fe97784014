//! Sends the gateway's small `tools/call` request through the layer stack N times, for
//! instruction counts under callgrind: `profile_small <mode> <n>` with mode `upstream`
//! (the request built and sent to the upstream alone, response read: the harness), `serde`
//! (`serde_json::from_slice::<Value>` of the body), `mcp_parse` (`McpRequest::parse`),
//! `parse_layer` (`ParseLayer` to the upstream), `scan` (`ResultScanLayer` around the
//! upstream, response read to the end), `sanitize` (`SanitizeLayer::with_parse` to the
//! upstream) or `stack` (`with_parse` around `ResultScanLayer` around the upstream). With
//! mimalloc as the global allocator, as in the example gateway.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use bytes::Bytes;
use http_body_util::BodyExt;
use mcp_core::{McpHeaders, McpRequest, ParseLayer};
use mcp_sanitize::{ResultScanConfig, ResultScanLayer, SanitizeConfig, SanitizeLayer};
use serde_json::Value;
use tower::{Layer, ServiceExt};

/// The example gateway's allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "../benches/support/small.rs"]
mod small;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).map_or("stack", String::as_str).to_owned();
    let n: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async move {
        let stack = small::stack();
        let parse = ParseLayer::new().layer(small::upstream());
        let scan = ResultScanLayer::new(&ResultScanConfig::default())
            .unwrap()
            .layer(small::upstream());
        let sanitize = SanitizeLayer::new(SanitizeConfig::default())
            .unwrap()
            .with_parse()
            .layer(small::upstream());
        // Warm up (lazy statics, allocator caches) outside the counted loop.
        black_box(small::one(&stack).await);
        for _ in 0..n {
            match mode.as_str() {
                "serde" => {
                    black_box(serde_json::from_slice::<Value>(black_box(small::REQUEST)).unwrap());
                }
                "mcp_parse" => {
                    black_box(
                        McpRequest::parse(
                            black_box(Bytes::from_static(small::REQUEST)),
                            McpHeaders::default(),
                        )
                        .unwrap(),
                    );
                }
                "parse_layer" => {
                    let resp = parse.clone().oneshot(small::request()).await.unwrap();
                    black_box(resp.into_body().collect().await.unwrap());
                }
                "upstream" => {
                    let req = small::request().map(mcp_core::Body::new);
                    let resp = small::upstream().oneshot(req).await.unwrap();
                    black_box(resp.into_body().collect().await.unwrap());
                }
                "scan" => {
                    let req = small::request().map(mcp_core::Body::new);
                    let resp = scan.clone().oneshot(req).await.unwrap();
                    black_box(resp.into_body().collect().await.unwrap());
                }
                "sanitize" => {
                    let resp = sanitize.clone().oneshot(small::request()).await.unwrap();
                    black_box(resp.into_body().collect().await.unwrap());
                }
                _ => {
                    black_box(small::one(&stack).await);
                }
            }
        }
    });
}
