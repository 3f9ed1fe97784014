//! JSON-RPC parsing (`mcp_core::json`, `McpRequest::parse`) and the request validator with
//! its argument and URL rules (`SanitizeLayer::validate`).
//!
//! Properties: no panic; parse -> serialize -> parse gives the same value (floats within
//! an ulp or two: serde_json's parsing precision) and the same verdict; verdicts are deterministic; a body rewritten by a strip action passes the
//! validator as it is forwarded (what goes upstream was checked).
#![no_main]

use std::sync::LazyLock;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use mcp_core::{McpHeaders, McpRequest};
use mcp_sanitize::rules::{Category, RuleAction};
use mcp_sanitize::{SanitizeConfig, SanitizeLayer};

/// The defaults (every built-in rule rejects) plus blocked patterns.
static REJECT: LazyLock<SanitizeLayer> = LazyLock::new(|| {
    SanitizeLayer::builder()
        .blocked_literal("DROP TABLE")
        .blocked_regex("union_select", "(?i)union\\s+select", RuleAction::Reject)
        .build()
        .expect("valid configuration")
});

/// Every built-in content rule set to strip.
static STRIP: LazyLock<SanitizeLayer> = LazyLock::new(|| {
    let mut b = SanitizeLayer::builder();
    for c in Category::ALL {
        b = b.rule(c, RuleAction::Strip);
    }
    b.build().expect("valid configuration")
});

static DEFAULT: LazyLock<SanitizeLayer> =
    LazyLock::new(|| SanitizeLayer::new(SanitizeConfig::default()).expect("valid defaults"));

/// The verdict, comparable: passes as is, rewritten to these bytes, or refused with this
/// status, code and detail.
fn verdict(layer: &SanitizeLayer, req: &McpRequest) -> String {
    match layer.validate(req) {
        Ok(None) => "pass".to_owned(),
        Ok(Some(r)) => format!("rewrite {:?}", r.raw()),
        Err(e) => format!("refuse {:?} {:?}", e.status(), e.detail()),
    }
}

/// Equal values, floats within a few ulps: serde_json (without its `float_roundtrip`
/// feature, as in the suite) parses decimal floats to within an ulp, so a float may move
/// by one when a body is reserialized (FUZZING.md, findings).
fn same(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
            match (x.as_f64(), y.as_f64()) {
                (Some(x), Some(y)) => x == y || (x - y).abs() <= x.abs().max(y.abs()) * 1e-15,
                _ => false,
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(value) = mcp_core::json::from_slice(data) else {
        // McpRequest::parse must refuse what the JSON reader refuses.
        assert!(McpRequest::parse(Bytes::copy_from_slice(data), McpHeaders::default()).is_err());
        return;
    };
    let again = serde_json::to_vec(&value).expect("a Value serializes");
    let reparsed = mcp_core::json::from_slice(&again).expect("serialized JSON parses again");
    assert!(
        same(&value, &reparsed),
        "parse -> serialize -> parse changed the value: {value} -> {reparsed}"
    );

    let Ok(req) = McpRequest::parse(Bytes::copy_from_slice(data), McpHeaders::default()) else {
        return;
    };
    let req2 = McpRequest::parse(Bytes::from(again), McpHeaders::default())
        .expect("the reserialized request parses");
    for layer in [&*DEFAULT, &*REJECT, &*STRIP] {
        let v = verdict(layer, &req);
        assert_eq!(v, verdict(layer, &req), "verdict not deterministic");
        // The same message in other bytes (serde_json's compact form): the same decision.
        let v2 = verdict(layer, &req2);
        assert_eq!(
            v.split(' ').next(),
            v2.split(' ').next(),
            "verdict depends on formatting"
        );
        if let Ok(Some(rewritten)) = layer.validate(&req) {
            match layer.validate(&rewritten) {
                Ok(None) | Ok(Some(_)) => {}
                Err(e) => panic!(
                    "a rewritten body is refused by the same validator: {:?} {:?}",
                    e.status(),
                    e.detail()
                ),
            }
        }
    }
});
