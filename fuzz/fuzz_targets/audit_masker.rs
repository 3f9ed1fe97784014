//! The audit masker (`mcp_audit::Masker`): JSON parameters and header values.
//!
//! Input: one control byte, then a JSON document (or, if it is not JSON, text used as a
//! string and as header values, one per line).
//! Properties: no panic; the configured secret pattern never appears in what is written,
//! in values or in keys; every member with a sensitive name holds the mask; sensitive
//! headers are written as the mask only; masking a masked text changes nothing (no
//! pattern match survives); deterministic.
#![no_main]

use std::sync::LazyLock;

use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use mcp_audit::{Masker, MaskingConfig};
use regex::Regex;
use serde_json::Value;

const SECRET_PATTERN: &str = "CANARY-[0-9a-f]{8}";

static MASKER: LazyLock<Masker> = LazyLock::new(|| {
    Masker::new(&MaskingConfig {
        fields: vec!["sessionKey".to_owned()],
        patterns: vec![SECRET_PATTERN.to_owned()],
        headers: vec!["x-session".to_owned()],
        ..MaskingConfig::default()
    })
    .expect("valid masking configuration")
});
static SECRET: LazyLock<Regex> = LazyLock::new(|| Regex::new(SECRET_PATTERN).expect("regex"));

fn check_members(m: &Masker, v: &Value) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                if m.is_sensitive_field(k) {
                    assert_eq!(
                        v,
                        &Value::String(m.mask().to_owned()),
                        "member {k:?} not masked"
                    );
                } else {
                    check_members(m, v);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|i| check_members(m, i)),
        _ => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&_ctl, rest)) = data.split_first() else {
        return;
    };
    let m = &*MASKER;
    let text = String::from_utf8_lossy(rest);
    let mut value: Value =
        serde_json::from_slice(rest).unwrap_or_else(|_| Value::String(text.clone().into_owned()));
    let mut again = value.clone();
    m.mask_value(&mut value);
    m.mask_value(&mut again);
    assert_eq!(value, again, "not deterministic");
    let written = serde_json::to_string(&value).expect("serializes");
    assert!(
        !SECRET.is_match(&written),
        "the secret pattern is written: {written}"
    );
    check_members(m, &value);
    let mut twice = value.clone();
    m.mask_value(&mut twice);
    assert_eq!(value, twice, "a pattern still matches after masking");

    let once = m.mask_str(&text);
    assert!(!SECRET.is_match(&once), "mask_str wrote the secret: {once}");
    let twice = m.mask_str(&once);
    assert_eq!(once, twice, "a pattern still matches after mask_str");

    // Header values, one a line, under names picked by their first byte.
    let names = [
        "authorization",
        "cookie",
        "x-api-key",
        "x-session",
        "x-note",
        "user-agent",
    ];
    let mut headers = HeaderMap::new();
    for line in rest.split(|&b| b == b'\n') {
        let Some((&pick, v)) = line.split_first() else {
            continue;
        };
        if let Ok(v) = HeaderValue::from_bytes(v) {
            let name = names[usize::from(pick) % names.len()];
            headers.append(HeaderName::from_static(name), v);
        }
    }
    let sensitive: Vec<HeaderName> = mcp_audit::config::DEFAULT_SENSITIVE_HEADERS
        .iter()
        .map(|h| HeaderName::from_static(h))
        .chain([HeaderName::from_static("x-session")])
        .collect();
    let rendered = m.render_headers(&headers, &sensitive);
    for (name, v) in &rendered {
        assert!(
            !SECRET.is_match(v),
            "header {name} written with the secret: {v}"
        );
        if ["authorization", "cookie", "x-api-key", "x-session"].contains(&name.as_str()) {
            assert!(
                v.split(", ").all(|p| p == m.mask()),
                "sensitive header {name} written as {v:?}"
            );
        }
    }
});
