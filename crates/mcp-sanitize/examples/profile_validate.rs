//! Validates the bench's `tools/call` body N times, for instruction counts under
//! callgrind: `profile_validate <parse|validate|both> <bytes> <n>`.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use bytes::Bytes;
use mcp_core::{McpHeaders, McpRequest};
use mcp_sanitize::{SanitizeConfig, SanitizeLayer};
use serde_json::Value;

#[path = "../benches/support/body.rs"]
mod support;
use support::body;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).map_or("validate", String::as_str);
    let size: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1024);
    let n: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(1000);
    let layer = SanitizeLayer::new(SanitizeConfig::default()).unwrap();
    let raw = Bytes::from(body(size));
    let parsed = McpRequest::parse(raw.clone(), McpHeaders::default()).unwrap();
    assert!(layer.validate(&parsed).unwrap().is_none());
    for _ in 0..n {
        match mode {
            "parse" => {
                black_box(serde_json::from_slice::<Value>(black_box(&raw)).unwrap());
            }
            "mcp_parse" => {
                black_box(
                    McpRequest::parse(black_box(raw.clone()), McpHeaders::default()).unwrap(),
                );
            }
            "both" => {
                let req = McpRequest::parse(black_box(raw.clone()), McpHeaders::default()).unwrap();
                black_box(layer.validate(&req).unwrap());
            }
            _ => {
                black_box(layer.validate(black_box(&parsed)).unwrap());
            }
        }
    }
}
