//! JSON that every parser reads alike: the strict parse behind [`McpRequest::parse`](crate::McpRequest::parse).
//!
//! A gateway authorizes what its own parser read and forwards the bytes; the server
//! behind it parses them again, perhaps with another library. Where two parsers disagree
//! on the same bytes, the gateway checked one message and the server runs another. This
//! module refuses the bytes on which the common parsers are known to disagree:
//!
//! - **Duplicate object keys, anywhere in the message.** `serde_json` (and Python's
//!   `json`, JavaScript's `JSON.parse`, Go's `encoding/json`) keep the last duplicate;
//!   others keep the first (Jackson can be configured either way, many streaming readers
//!   act on the first). `{"name":"denied_tool","name":"echo"}` is refused. Escapes are
//!   decoded before keys are compared (`"n\u0061me"` is `"name"`).
//! - **Case variants of the MCP keys** in a message object and in its `params`:
//!   `jsonrpc`, `id`, `method`, `params`, `result`, `error`, `name`, `arguments`, `uri`,
//!   `_meta`. Go's `encoding/json` (mcp-go servers) matches object keys to struct fields
//!   case-insensitively with Unicode simple case folding, so `NAME`, `Params`, `paramſ`
//!   (U+017F LATIN SMALL LETTER LONG S folds to `s`) and keys with U+212A KELVIN SIGN (folds
//!   to `k`) or U+0131 DOTLESS I (Go folds it with `I`) reach the same field. A key that
//!   folds to one of these names without being it exactly is refused. Keys below
//!   `params` (inside `arguments`, say) are not: no parser maps them onto an MCP field.
//! - **A NUL (`\u0000`) in any key**: a reader built on C strings stops at it.
//!
//! What `serde_json` itself refuses is refused whole (invalid JSON, -32700): a byte order
//! mark, lone surrogate escapes (`"\ud800"`), invalid UTF-8, control characters inside
//! strings, `NaN` / `Infinity`, comments, trailing commas, trailing data, numbers out of
//! range, and more than 128 levels of nesting.
//!
//! The parse builds the same [`Value`] `serde_json::from_slice` does (property-tested), in
//! one pass: a duplicate is found when the key is inserted (the map reports the key it
//! already held), so a duplicate-free body costs what `serde_json` costs. The recursion
//! is `serde_json`'s, bounded by its nesting limit (128), so no input overflows the stack.
//!
//! ```
//! use mcp_core::json::{Ambiguity, JsonError, from_slice};
//!
//! let v = from_slice(br#"{"a":[1,{"b":2}]}"#).unwrap();
//! assert_eq!(v["a"][1]["b"], 2);
//!
//! let err = from_slice(br#"{"params":{"name":"x","name":"y"}}"#).unwrap_err();
//! assert!(matches!(err, JsonError::Ambiguous(Ambiguity::DuplicateKey { .. })));
//! assert_eq!(err.path(), Some("$.params.name"));
//! ```

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use crate::rejection::{Rejection, RejectionReason};

/// Why [`from_slice`] refused bytes that `serde_json` alone would have accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ambiguity {
    /// An object holds the same key twice.
    DuplicateKey {
        /// Where: a JSON path such as `$.params.name` (keys that are not plain
        /// identifiers are written `#n`, their position in the object).
        path: String,
    },
    /// A key of a message or of its `params` folds to an MCP key without being it.
    KeyCaseVariant {
        /// Where, as for [`Ambiguity::DuplicateKey`].
        path: String,
        /// The MCP key it folds to (`name`, `params`, ...).
        key: &'static str,
    },
    /// A key contains U+0000.
    NulInKey {
        /// Where, as for [`Ambiguity::DuplicateKey`].
        path: String,
    },
}

impl Ambiguity {
    /// The rule's name, as recorded in a rejection's detail: `duplicate_key`,
    /// `key_case_variant` or `nul_in_key`.
    pub const fn rule(&self) -> &'static str {
        match self {
            Self::DuplicateKey { .. } => "duplicate_key",
            Self::KeyCaseVariant { .. } => "key_case_variant",
            Self::NulInKey { .. } => "nul_in_key",
        }
    }

    /// The JSON path of the key.
    pub fn path(&self) -> &str {
        match self {
            Self::DuplicateKey { path }
            | Self::KeyCaseVariant { path, .. }
            | Self::NulInKey { path } => path,
        }
    }
}

impl fmt::Display for Ambiguity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::DuplicateKey { path } => write!(f, "duplicate key at {path}"),
            Self::KeyCaseVariant { path, key } => {
                write!(f, "key at {path} is a case variant of `{key}`")
            }
            Self::NulInKey { path } => write!(f, "NUL in the key at {path}"),
        }
    }
}

/// Why [`from_slice`] failed.
#[derive(Debug, thiserror::Error)]
pub enum JsonError {
    /// Not JSON (JSON-RPC -32700).
    #[error("invalid JSON: {0}")]
    Invalid(#[source] serde_json::Error),
    /// JSON that parsers read differently (JSON-RPC -32600).
    #[error("ambiguous JSON: {0}")]
    Ambiguous(Ambiguity),
}

impl JsonError {
    /// The JSON path of an ambiguous key, `None` for invalid JSON.
    pub fn path(&self) -> Option<&str> {
        match self {
            Self::Invalid(_) => None,
            Self::Ambiguous(a) => Some(a.path()),
        }
    }

    /// The rejection this error gets: 400 with -32700 for invalid JSON; 400 with -32600
    /// (`RejectionReason::InvalidRequest`) for ambiguous JSON, the rule and the path in
    /// the message and in the detail (`rule=duplicate_key path=$.params.name`). The id
    /// is not echoed: the body that carries it is the one in doubt.
    pub fn rejection(&self) -> Rejection {
        match self {
            Self::Invalid(_) => Rejection::new(RejectionReason::InvalidJson),
            Self::Ambiguous(a) => Rejection::new(RejectionReason::InvalidRequest)
                .with_message(format!(
                    "Invalid Request: ambiguous JSON ({}) at {}",
                    a.rule(),
                    a.path()
                ))
                .with_detail(format!("rule={} path={}", a.rule(), a.path())),
        }
    }
}

/// Parses bytes into a [`Value`] as `serde_json::from_slice` does, refusing duplicate
/// keys anywhere and NUL in keys (see the [module documentation](self)). The MCP key case
/// variants are checked by [`check_message_keys`], which knows where messages are.
pub fn from_slice(bytes: &[u8]) -> Result<Value, JsonError> {
    let mut state = State::default();
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = match (ValueSeed { state: &mut state }).deserialize(&mut de) {
        Ok(v) => v,
        Err(e) => return Err(state.into_error(e)),
    };
    de.end().map_err(JsonError::Invalid)?;
    Ok(value)
}

/// The keys an MCP reader maps onto its fields: in a message object and in its `params`.
pub const MCP_KEYS: [&str; 10] = [
    "jsonrpc",
    "id",
    "method",
    "params",
    "result",
    "error",
    "name",
    "arguments",
    "uri",
    "_meta",
];

/// Refuses, in each message of a body (the value itself, or each element of a batch
/// array) and in its `params` object, a key that folds to one of [`MCP_KEYS`] (Unicode
/// simple case folding, as Go's `encoding/json` compares keys) without being it.
pub fn check_message_keys(value: &Value) -> Result<(), Ambiguity> {
    match value {
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                check_message(item, Some(i))?;
            }
            Ok(())
        }
        other => check_message(other, None),
    }
}

fn check_message(msg: &Value, batch: Option<usize>) -> Result<(), Ambiguity> {
    let Value::Object(obj) = msg else {
        return Ok(());
    };
    let at = |inner: Option<(&str, usize)>, key: &str, pos: usize| {
        let mut p = String::from("$");
        if let Some(i) = batch {
            push_index(&mut p, i);
        }
        if let Some((k, kp)) = inner {
            push_key(&mut p, k, kp);
        }
        push_key(&mut p, key, pos);
        p
    };
    for (pos, key) in obj.keys().enumerate() {
        if let Some(canon) = case_variant_of(key) {
            return Err(Ambiguity::KeyCaseVariant {
                path: at(None, key, pos),
                key: canon,
            });
        }
    }
    if let Some(Value::Object(params)) = obj.get("params") {
        let ppos = obj.keys().position(|k| k == "params").unwrap_or(0);
        for (pos, key) in params.keys().enumerate() {
            if let Some(canon) = case_variant_of(key) {
                return Err(Ambiguity::KeyCaseVariant {
                    path: at(Some(("params", ppos)), key, pos),
                    key: canon,
                });
            }
        }
    }
    Ok(())
}

/// The MCP key `key` folds to without being it, if any.
fn case_variant_of(key: &str) -> Option<&'static str> {
    // Every MCP key is 2 to 9 ASCII bytes; a folding character takes 2 or 3 bytes.
    if key.len() < 2 || key.len() > 27 {
        return None;
    }
    MCP_KEYS
        .iter()
        .copied()
        .find(|canon| *canon != key && folds_to(key, canon))
}

/// The ASCII letter (lowercase) a character folds to, by Unicode simple case folding or
/// by the case mappings readers use for it (U+0131 DOTLESS I and U+0130 CAPITAL I WITH DOT
/// ABOVE fold to `i` in Go and in a Turkish locale); the character itself otherwise.
fn fold(c: char) -> char {
    match c {
        'A'..='Z' => c.to_ascii_lowercase(),
        '\u{17f}' => 's',
        '\u{212a}' => 'k',
        '\u{131}' | '\u{130}' => 'i',
        _ => c,
    }
}

/// Whether `key` folds, character by character, to the ASCII `canon` (lowercase).
fn folds_to(key: &str, canon: &str) -> bool {
    let mut want = canon.chars();
    for c in key.chars() {
        match want.next() {
            Some(w) if fold(c) == w => {}
            _ => return false,
        }
    }
    want.next().is_none()
}

fn is_plain_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 64
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn push_key(out: &mut String, k: &str, pos: usize) {
    use std::fmt::Write;
    if is_plain_key(k) {
        out.push('.');
        out.push_str(k);
    } else {
        let _ = write!(out, ".#{pos}");
    }
}

fn push_index(out: &mut String, i: usize) {
    use std::fmt::Write;
    let _ = write!(out, "[{i}]");
}

/// One step of the path to a refused key, collected while the error unwinds (nothing is
/// kept on the way down: a body that parses pays nothing for the path).
enum Seg {
    Key(String, usize),
    Index(usize),
}

#[derive(Default)]
struct State {
    /// The refusal, once found; the segments are pushed innermost first.
    found: Option<(AmbiguityKind, Vec<Seg>)>,
}

#[derive(Clone, Copy)]
enum AmbiguityKind {
    Duplicate,
    Nul,
}

impl State {
    fn into_error(self, e: serde_json::Error) -> JsonError {
        let Some((kind, segs)) = self.found else {
            return JsonError::Invalid(e);
        };
        let mut path = String::from("$");
        for s in segs.iter().rev() {
            match s {
                Seg::Key(k, p) => push_key(&mut path, k, *p),
                Seg::Index(i) => push_index(&mut path, *i),
            }
        }
        JsonError::Ambiguous(match kind {
            AmbiguityKind::Duplicate => Ambiguity::DuplicateKey { path },
            AmbiguityKind::Nul => Ambiguity::NulInKey { path },
        })
    }

    fn note(&mut self, seg: Seg) {
        if let Some((_, segs)) = &mut self.found {
            segs.push(seg);
        }
    }
}

struct ValueSeed<'a> {
    state: &'a mut State,
}

impl<'de> DeserializeSeed<'de> for ValueSeed<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any valid JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        ValueSeed { state: self.state }.deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        loop {
            match seq.next_element_seed(ValueSeed {
                state: &mut *self.state,
            }) {
                Ok(Some(v)) => out.push(v),
                Ok(None) => break,
                Err(e) => {
                    self.state.note(Seg::Index(out.len()));
                    return Err(e);
                }
            }
        }
        Ok(Value::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        let mut pos = 0usize;
        while let Some(key) = map.next_key::<String>()? {
            if key.contains('\0') {
                self.state.found = Some((AmbiguityKind::Nul, vec![Seg::Key(key, pos)]));
                return Err(de::Error::custom("NUL in an object key"));
            }
            let value = match map.next_value_seed(ValueSeed {
                state: &mut *self.state,
            }) {
                Ok(v) => v,
                Err(e) => {
                    self.state.note(Seg::Key(key, pos));
                    return Err(e);
                }
            };
            match out.entry(key) {
                serde_json::map::Entry::Vacant(v) => {
                    v.insert(value);
                }
                serde_json::map::Entry::Occupied(o) => {
                    let key = o.key().clone();
                    self.state.found = Some((AmbiguityKind::Duplicate, vec![Seg::Key(key, pos)]));
                    return Err(de::Error::custom("duplicate object key"));
                }
            }
            pos += 1;
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn refused(s: &str) -> Ambiguity {
        match from_slice(s.as_bytes()) {
            Err(JsonError::Ambiguous(a)) => a,
            other => panic!("{s}: {other:?}"),
        }
    }

    #[test]
    fn duplicates_anywhere_with_their_path() {
        let a = refused(r#"{"params":{"name":"x","name":"y"}}"#);
        assert_eq!(a.rule(), "duplicate_key");
        assert_eq!(a.path(), "$.params.name");
        assert_eq!(refused(r#"{"a":1,"a":2}"#).path(), "$.a");
        assert_eq!(
            refused(r#"[{"a":1},{"b":[0,{"c":1,"c":1}]}]"#).path(),
            "$[1].b[1].c"
        );
        assert_eq!(
            refused(r#"{"x y":{"n\u0061me":1,"name":2}}"#).path(),
            "$.#0.name"
        );
        assert_eq!(refused("{\"a\":1,\"a\\u0000\":2}").rule(), "nul_in_key");
        // Not duplicates: the same key in sibling objects, keys differing in case.
        assert!(from_slice(br#"[{"a":1},{"a":1}]"#).is_ok());
        assert!(from_slice(br#"{"a":1,"A":2}"#).is_ok());
    }

    #[test]
    fn invalid_json_stays_invalid_json() {
        for s in [
            "",
            "{",
            "{\"a\":1}x",
            "\u{feff}{}",
            r#"{"a":"\ud800"}"#,
            r#"{"a":"\udc00"}"#,
            "[NaN]",
            "{\"a\":1,}",
            "1e400",
        ] {
            assert!(
                matches!(from_slice(s.as_bytes()), Err(JsonError::Invalid(_))),
                "{s:?}"
            );
        }
        assert!(matches!(
            from_slice(b"{\"a\":\"\xff\"}"),
            Err(JsonError::Invalid(_))
        ));
    }

    /// Deep nesting ends in serde_json's recursion limit, not a stack overflow.
    #[test]
    fn deep_nesting_is_refused_without_overflow() {
        for open in ["[", "{\"a\":"] {
            let s = open.repeat(100_000);
            assert!(matches!(
                from_slice(s.as_bytes()),
                Err(JsonError::Invalid(_))
            ));
        }
        let ok = format!("{}{}", "[".repeat(100), "]".repeat(100));
        assert!(from_slice(ok.as_bytes()).is_ok());
    }

    #[test]
    fn case_variants_of_the_mcp_keys() {
        let check = |s: &str| check_message_keys(&from_slice(s.as_bytes()).unwrap());
        for (s, key) in [
            (r#"{"NAME":1}"#, "name"),
            (r#"{"Params":{}}"#, "params"),
            ("{\"param\u{17f}\":{}}", "params"),
            ("{\"params\":{\"argument\u{17f}\":{}}}", "arguments"),
            ("{\"params\":{\"\u{131}d\":1}}", "id"),
            (r#"{"params":{"URI":"x"}}"#, "uri"),
            (r#"[{},{"_Meta":{}}]"#, "_meta"),
            (r#"{"Error":{}}"#, "error"),
        ] {
            match check(s) {
                Err(Ambiguity::KeyCaseVariant { key: k, .. }) => assert_eq!(k, key, "{s}"),
                other => panic!("{s}: {other:?}"),
            }
        }
        assert_eq!(
            check(r#"{"params":{"NAME":1}}"#).unwrap_err().path(),
            "$.params.NAME"
        );
        assert_eq!(
            check(r#"[1,{"a":1,"Id":2}]"#).unwrap_err().path(),
            "$[1].Id"
        );
        // The exact keys, other keys, and keys below params pass.
        for s in [
            r#"{"jsonrpc":"2.0","id":1,"method":"m","params":{"name":"n","arguments":{"NAME":1},"uri":"u","_meta":{}}}"#,
            r#"{"params":{"Cursor":1,"protocolVersion":"x"},"Other":1}"#,
            "{\"params\":{\"\u{212a}ind\":1}}",
            r#"{"params":[{"NAME":1}]}"#,
            r#""NAME""#,
        ] {
            assert_eq!(check(s), Ok(()), "{s}");
        }
    }

    #[test]
    fn the_folds() {
        assert!(folds_to("\u{212a}", "k"));
        assert!(folds_to("ARGUMENT\u{17f}", "arguments"));
        assert!(!folds_to("name ", "name"));
        assert!(!folds_to("nam", "name"));
        assert!(!folds_to("nåme", "name"));
        // Every character outside ASCII whose case mappings reach an ASCII letter is
        // folded (the table above is complete for the letters of the MCP keys).
        for c in (0x80u32..0x11_0000).filter_map(char::from_u32) {
            let maps: Vec<String> = vec![c.to_lowercase().collect(), c.to_uppercase().collect()];
            let to_ascii = maps
                .iter()
                .any(|m| m.chars().count() == 1 && m.chars().all(|x| x.is_ascii_alphabetic()));
            if to_ascii {
                assert!(fold(c).is_ascii_lowercase(), "{c:?} U+{:04X}", c as u32);
            }
        }
    }
}
