//! Instruction counts of the body parse, for callgrind (criterion cannot resolve small
//! differences on a loaded machine):
//!
//! ```text
//! cargo build --release -p mcp-core --example profile_parse
//! valgrind --tool=callgrind target/release/examples/profile_parse serde 1024
//! valgrind --tool=callgrind target/release/examples/profile_parse strict 1024
//! valgrind --tool=callgrind target/release/examples/profile_parse mcp 1024
//! ```
//!
//! `serde`: `serde_json::from_slice::<Value>`; `strict`: `mcp_core::json::from_slice`
//! (duplicate keys refused) and the MCP key check; `mcp`: `McpRequest::parse`. The body
//! is the parse bench's `tools/call` of about SIZE bytes, parsed 1,000 times.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;

use bytes::Bytes;
use mcp_core::{McpHeaders, McpRequest};

fn body(size: usize) -> Bytes {
    let mut items = Vec::new();
    let (mut i, mut len) = (0, 0);
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

fn main() {
    let mut args = std::env::args().skip(1);
    let what = args.next().unwrap_or_else(|| "mcp".into());
    let size: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(1024);
    let raw = body(size);
    for _ in 0..1000 {
        match what.as_str() {
            "serde" => {
                black_box(serde_json::from_slice::<serde_json::Value>(black_box(&raw)).unwrap());
            }
            "strict" => {
                let v = mcp_core::json::from_slice(black_box(&raw)).unwrap();
                mcp_core::json::check_message_keys(&v).unwrap();
                black_box(v);
            }
            _ => {
                black_box(
                    McpRequest::parse(black_box(raw.clone()), McpHeaders::default()).unwrap(),
                );
            }
        }
    }
}
