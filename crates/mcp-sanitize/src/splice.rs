//! The bytes of a rewritten message: the original bytes with only the strings (and keys)
//! a strip changed replaced, so that numbers (big integers, long decimals, `-0.0`), the
//! `id`, key order, whitespace and every untouched message of a batch keep their bytes.

use bytes::Bytes;
use mcp_core::{Rejection, RejectionReason};
use serde_json::Value;

use crate::text::strip_control;

/// Deeper than this, splicing gives up (the parser stops at 128 levels anyway).
const MAX_SPLICE_DEPTH: usize = 256;

/// The forwarded bytes of a rewrite: `raw` with the changed strings spliced in, or, if
/// `raw` does not mirror `new` (never expected), `new` serialized.
pub(crate) fn rewritten_bytes(raw: &[u8], new: &Value) -> Result<Bytes, Rejection> {
    if let Some(v) = splice(raw, new) {
        return Ok(Bytes::from(v));
    }
    serde_json::to_vec(new)
        .map(Bytes::from)
        .map_err(|_| Rejection::new(RejectionReason::Internal).with_detail("reserialize"))
}

/// `raw` (a JSON text) with each string that differs in `new` replaced by its JSON form;
/// `None` if the structures do not agree.
pub(crate) fn splice(raw: &[u8], new: &Value) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(raw.len());
    let end = value(raw, skip_ws(raw, 0, &mut out), new, &mut out, 0)?;
    let end = skip_ws(raw, end, &mut out);
    (end == raw.len()).then_some(out)
}

/// Copies whitespace from `i`; returns the index after it.
fn skip_ws(raw: &[u8], mut i: usize, out: &mut Vec<u8>) -> usize {
    while let Some(&c) = raw.get(i) {
        if !matches!(c, b' ' | b'\t' | b'\n' | b'\r') {
            break;
        }
        out.push(c);
        i += 1;
    }
    i
}

/// The end (exclusive) of the string token starting at `raw[i] == '"'`.
fn string_end(raw: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    loop {
        match raw.get(j)? {
            b'\\' => j += 2,
            b'"' => return Some(j + 1),
            _ => j += 1,
        }
    }
}

fn expect(raw: &[u8], i: usize, c: u8, out: &mut Vec<u8>) -> Option<usize> {
    (raw.get(i) == Some(&c)).then(|| {
        out.push(c);
        i + 1
    })
}

/// Writes the value at `raw[i..]` mirrored by `new`; returns the index after it.
fn value(raw: &[u8], i: usize, new: &Value, out: &mut Vec<u8>, depth: usize) -> Option<usize> {
    if depth > MAX_SPLICE_DEPTH {
        return None;
    }
    match (raw.get(i)?, new) {
        (b'{', Value::Object(map)) => {
            out.push(b'{');
            let mut i = skip_ws(raw, i + 1, out);
            if raw.get(i) == Some(&b'}') {
                out.push(b'}');
                return Some(i + 1);
            }
            let mut seen = 0usize;
            loop {
                let kend = string_end(raw, i)?;
                let key: String = serde_json::from_slice(&raw[i..kend]).ok()?;
                let (new_key, child) = match map.get_key_value(&key) {
                    Some(kv) => kv,
                    // A key whose control characters were stripped.
                    None => map.get_key_value(strip_control(&key).as_ref())?,
                };
                if *new_key == key {
                    out.extend_from_slice(&raw[i..kend]);
                } else {
                    out.extend_from_slice(&serde_json::to_vec(new_key).ok()?);
                }
                seen += 1;
                i = skip_ws(raw, kend, out);
                i = expect(raw, i, b':', out)?;
                i = skip_ws(raw, i, out);
                i = value(raw, i, child, out, depth + 1)?;
                i = skip_ws(raw, i, out);
                match raw.get(i)? {
                    b',' => {
                        out.push(b',');
                        i = skip_ws(raw, i + 1, out);
                    }
                    b'}' => {
                        out.push(b'}');
                        return (seen == map.len()).then_some(i + 1);
                    }
                    _ => return None,
                }
            }
        }
        (b'[', Value::Array(items)) => {
            out.push(b'[');
            let mut i = skip_ws(raw, i + 1, out);
            if raw.get(i) == Some(&b']') {
                out.push(b']');
                return items.is_empty().then_some(i + 1);
            }
            let mut it = items.iter();
            loop {
                i = value(raw, i, it.next()?, out, depth + 1)?;
                i = skip_ws(raw, i, out);
                match raw.get(i)? {
                    b',' => {
                        out.push(b',');
                        i = skip_ws(raw, i + 1, out);
                    }
                    b']' => {
                        out.push(b']');
                        return it.next().is_none().then_some(i + 1);
                    }
                    _ => return None,
                }
            }
        }
        (b'"', Value::String(s)) => {
            let end = string_end(raw, i)?;
            let old: String = serde_json::from_slice(&raw[i..end]).ok()?;
            if old == *s {
                out.extend_from_slice(&raw[i..end]);
            } else {
                out.extend_from_slice(&serde_json::to_vec(s).ok()?);
            }
            Some(end)
        }
        (c, Value::Number(_) | Value::Bool(_) | Value::Null)
            if c.is_ascii_digit() || matches!(c, b'-' | b't' | b'f' | b'n') =>
        {
            let mut end = i;
            while raw
                .get(end)
                .is_some_and(|b| !matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'))
            {
                end += 1;
            }
            out.extend_from_slice(&raw[i..end]);
            Some(end)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn untouched_values_keep_their_bytes() {
        let raw = br#"{"jsonrpc":"2.0","id":123456789012345678901234567890, "method":"tools/call","params":{"name":"t","arguments":{"memo":"<script>x","account":123456789012345678901234567890,"amount":1.0000000000000000001,"z":-0.0,"a":[1e400, true,null]}}}"#;
        // serde_json would not parse 1e400; build the rewritten value by hand.
        let raw_ok = String::from_utf8_lossy(raw).replace("1e400", "1e300");
        let mut v: Value = serde_json::from_str(&raw_ok).unwrap();
        v["params"]["arguments"]["memo"] = Value::from("x");
        let out = splice(raw_ok.as_bytes(), &v).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            raw_ok.replace(r#""<script>x""#, r#""x""#)
        );
    }

    #[test]
    fn stripped_keys_and_escapes() {
        let raw = r#"[ {"a\u0001":"x\u0000y", "b":"\u00e9"} , {"c":2} ]"#;
        let v = serde_json::json!([{"a":"xy","b":"é"},{"c":2}]);
        let out = String::from_utf8(splice(raw.as_bytes(), &v).unwrap()).unwrap();
        assert_eq!(out, r#"[ {"a":"xy", "b":"\u00e9"} , {"c":2} ]"#);
        // A structure that does not agree is not spliced.
        assert!(splice(raw.as_bytes(), &serde_json::json!([{"a":"xy"}])).is_none());
        assert!(splice(b"{\"a\":1}", &serde_json::json!({"b":1})).is_none());
    }

    proptest::proptest! {
        /// Splicing a value into its own bytes gives the bytes back.
        #[test]
        fn splice_of_itself_is_identity(v in arb_json()) {
            let raw = serde_json::to_vec_pretty(&v).unwrap();
            proptest::prop_assert_eq!(splice(&raw, &v), Some(raw));
        }
    }

    fn arb_json() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            "\\PC{0,8}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                proptest::collection::btree_map("[a-z\\\\\"]{0,4}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }
}
