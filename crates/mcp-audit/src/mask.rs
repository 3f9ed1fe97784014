//! Masking of parameters and header values.
//!
//! Two mechanisms, both applied by the background writer (never on the request path):
//!
//! - **Field names.** A JSON object member whose name, folded (lowercased, with everything
//!   but letters and digits removed, so `apiKey`, `api_key`, `API-KEY` are all `apikey`),
//!   equals or ends with a configured name (`password`, `token`, `apiKey`, `secret`,
//!   `authorization`, ... plus `masking.fields`) has its whole value replaced by the mask,
//!   at any depth, inside arrays too. `accessToken`, `client_secret` and `db_password` are
//!   masked; `tokens_used` is not.
//! - **Value patterns.** Every string (and object key) is searched for JWTs, `Bearer` /
//!   `Basic` credentials, PEM private keys, cloud access keys (AWS `AKIA...`, Google
//!   `AIza...`), GitHub / Slack / `sk-` style tokens, passwords in URLs, plus
//!   `masking.patterns`; each match is replaced by the mask wherever it appears.
//!
//! ```
//! use mcp_audit::{Masker, MaskingConfig};
//! use serde_json::json;
//!
//! let masker = Masker::new(&MaskingConfig::default()).unwrap();
//! let mut v = json!({"user": "bob", "nested": [{"API_KEY": "k-123"}],
//!                    "note": "use Bearer abcdefghijkl please"});
//! masker.mask_value(&mut v);
//! assert_eq!(v["nested"][0]["API_KEY"], "***REDACTED***");
//! assert_eq!(v["note"], "use ***REDACTED*** please");
//! assert_eq!(v["user"], "bob");
//! ```

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue};
use regex::Regex;
use serde_json::Value;

use crate::config::{ConfigError, DEFAULT_MASKED_FIELDS, MaskingConfig};

/// The built-in value patterns. Word boundaries are ASCII (`(?-u:\b)`), which keeps the
/// regex engine on its fast automaton for any input.
pub const BUILTIN_PATTERNS: &[&str] = &[
    // JSON Web Tokens (JWS compact form; the header is base64url JSON, so starts "eyJ").
    r"eyJ[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]*",
    // HTTP credentials: "Bearer <token>", "Basic <base64>".
    r"(?i)(?-u:\b)(?:bearer|basic)\s+[A-Za-z0-9._~+/=-]{6,}",
    // PEM private keys (RSA, EC, OpenSSH, encrypted, PKCS#8), even when cut off.
    r"-----BEGIN[A-Z0-9 ]*PRIVATE KEY-----(?s:.*?)(?:-----END[A-Z0-9 ]*PRIVATE KEY-----|\z)",
    // AWS access key ids.
    r"(?-u:\b)(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[A-Z0-9]{16}(?-u:\b)",
    // Google API keys.
    r"(?-u:\b)AIza[0-9A-Za-z_-]{35}",
    // GitHub tokens.
    r"(?-u:\b)(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{30,}",
    r"(?-u:\b)github_pat_[A-Za-z0-9_]{22,}",
    // Slack tokens.
    r"(?-u:\b)xox[abprs]-[A-Za-z0-9-]{10,}",
    // "sk-..." API keys and Stripe-style live keys.
    r"(?-u:\b)sk-[A-Za-z0-9_-]{20,}",
    r"(?-u:\b)[rs]k_live_[A-Za-z0-9]{16,}",
    // Passwords in URLs: scheme://user:password@
    r"(?i)(?-u:\b)[a-z][a-z0-9+.-]*://[^/\s:@]+:[^/\s@]+@",
];

/// Folds a field name: lowercase, letters and digits only.
pub fn fold(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    fold_into(name, &mut out);
    out
}

fn fold_into(name: &str, out: &mut String) {
    out.clear();
    if name.is_ascii() {
        out.extend(
            name.bytes()
                .filter(u8::is_ascii_alphanumeric)
                .map(|b| char::from(b.to_ascii_lowercase())),
        );
        return;
    }
    for c in name.chars() {
        if c.is_alphanumeric() {
            out.extend(c.to_lowercase());
        }
    }
}

struct Inner {
    enabled: bool,
    fields: Vec<String>,
    mask: Arc<str>,
    patterns: Regex,
}

/// Masks parameters and header values (see the module documentation). Cheap to clone.
#[derive(Clone)]
pub struct Masker(Arc<Inner>);

impl fmt::Debug for Masker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Masker")
            .field("enabled", &self.0.enabled)
            .field("fields", &self.0.fields)
            .finish_non_exhaustive()
    }
}

impl Masker {
    /// Builds a masker; fails on an invalid pattern.
    pub fn new(cfg: &MaskingConfig) -> Result<Self, ConfigError> {
        let mut fields: Vec<String> = DEFAULT_MASKED_FIELDS
            .iter()
            .map(|f| fold(f))
            .chain(cfg.fields.iter().map(|f| fold(f)))
            .filter(|f| !f.is_empty())
            .collect();
        fields.sort();
        fields.dedup();
        let mut alternatives: Vec<String> = BUILTIN_PATTERNS
            .iter()
            .map(|p| format!("(?:{p})"))
            .collect();
        for p in &cfg.patterns {
            if Regex::new(p).is_err() {
                return Err(ConfigError::new(
                    "audit.masking.patterns",
                    "entries must be valid regular expressions",
                ));
            }
            alternatives.push(format!("(?:{p})"));
        }
        let patterns = Regex::new(&alternatives.join("|")).map_err(|_| {
            ConfigError::new(
                "audit.masking.patterns",
                "entries must be valid regular expressions",
            )
        })?;
        if cfg.mask_value.is_empty() {
            return Err(ConfigError::new(
                "audit.masking.maskValue",
                "must not be empty",
            ));
        }
        Ok(Self(Arc::new(Inner {
            enabled: cfg.enabled,
            fields,
            mask: Arc::from(cfg.mask_value.as_str()),
            patterns,
        })))
    }

    /// The replacement text.
    pub fn mask(&self) -> &str {
        &self.0.mask
    }

    /// Whether a field name is masked.
    pub fn is_sensitive_field(&self, name: &str) -> bool {
        let mut buf = String::new();
        self.sensitive_folded(name, &mut buf)
    }

    fn sensitive_folded(&self, name: &str, buf: &mut String) -> bool {
        fold_into(name, buf);
        !buf.is_empty()
            && self
                .0
                .fields
                .iter()
                .any(|f| buf == f || buf.ends_with(f.as_str()))
    }

    /// Replaces every value pattern found in `s` with the mask (always applied, even when
    /// field masking is off: these are credentials wherever they appear).
    pub fn mask_str<'a>(&self, s: &'a str) -> Cow<'a, str> {
        if self.0.patterns.is_match(s) {
            Cow::Owned(
                self.0
                    .patterns
                    .replace_all(s, regex::NoExpand(&self.0.mask))
                    .into_owned(),
            )
        } else {
            Cow::Borrowed(s)
        }
    }

    /// Masks a JSON value in place: sensitive members (when masking is enabled) and
    /// value patterns everywhere.
    pub fn mask_value(&self, v: &mut Value) {
        let mut buf = String::new();
        self.mask_rec(v, &mut buf);
    }

    fn mask_rec(&self, v: &mut Value, buf: &mut String) {
        match v {
            Value::String(s) => {
                if let Cow::Owned(m) = self.mask_str(s) {
                    *s = m;
                }
            }
            Value::Array(items) => {
                for item in items {
                    self.mask_rec(item, buf);
                }
            }
            Value::Object(map) => {
                // Keys holding a credential pattern are renamed first.
                let bad_keys: Vec<String> = map
                    .keys()
                    .filter(|k| self.0.patterns.is_match(k))
                    .cloned()
                    .collect();
                for k in bad_keys {
                    if let Some(val) = map.remove(&k) {
                        let mut new_key = self.mask_str(&k).into_owned();
                        while map.contains_key(&new_key) {
                            new_key.push('_');
                        }
                        map.insert(new_key, val);
                    }
                }
                for (k, val) in map.iter_mut() {
                    if self.0.enabled && self.sensitive_folded(k, buf) {
                        *val = Value::String(self.0.mask.to_string());
                    } else {
                        self.mask_rec(val, buf);
                    }
                }
            }
            _ => {}
        }
    }

    /// Whether a field name is masked, without allocating for ASCII names of up to 64
    /// bytes (the same answer as [`Masker::is_sensitive_field`]).
    fn is_sensitive_key(&self, name: &str) -> bool {
        let mut buf = [0u8; 64];
        if name.len() > buf.len() || !name.is_ascii() {
            return self.is_sensitive_field(name);
        }
        let mut n = 0;
        for (slot, b) in buf
            .iter_mut()
            .zip(name.bytes().filter(u8::is_ascii_alphanumeric))
        {
            *slot = b.to_ascii_lowercase();
            n += 1;
        }
        let folded = &buf[..n];
        n > 0 && self.0.fields.iter().any(|f| folded.ends_with(f.as_bytes()))
    }

    /// Writes `v` as compact JSON, masked exactly as [`Masker::mask_value`] would leave
    /// it, without copying it (an object whose keys hold a credential pattern, which must
    /// be renamed, is copied and masked). The bytes are those of `serde_json`.
    pub(crate) fn write_masked(&self, out: &mut Vec<u8>, v: &Value) {
        match v {
            Value::String(s) => write_json_str(out, &self.mask_str(s)),
            Value::Array(items) => {
                out.push(b'[');
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    self.write_masked(out, v);
                }
                out.push(b']');
            }
            Value::Object(map) => {
                if map.keys().any(|k| self.0.patterns.is_match(k)) {
                    // Keys to rename: exactly what mask_value does, on a copy.
                    let mut copy = v.clone();
                    self.mask_value(&mut copy);
                    let _ = serde_json::to_writer(&mut *out, &copy);
                    return;
                }
                out.push(b'{');
                for (i, (k, v)) in map.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    write_json_str(out, k);
                    out.push(b':');
                    if self.0.enabled && self.is_sensitive_key(k) {
                        write_json_str(out, &self.0.mask);
                    } else {
                        self.write_masked(out, v);
                    }
                }
                out.push(b'}');
            }
            // Numbers, booleans, null: serde_json's own formatting.
            other => {
                let _ = serde_json::to_writer(&mut *out, other);
            }
        }
    }

    /// One header value as rendered in events.
    fn header_value<'a>(
        &'a self,
        name: &HeaderName,
        value: &'a HeaderValue,
        sensitive: &[HeaderName],
    ) -> Cow<'a, str> {
        if value.is_sensitive() || sensitive.contains(name) {
            Cow::Borrowed(&*self.0.mask)
        } else {
            match value.to_str() {
                Ok(s) => self.mask_str(s),
                Err(_) => Cow::Borrowed("<binary>"),
            }
        }
    }

    /// Writes [`Masker::render_headers`] as a JSON object, byte for byte as serde_json
    /// serializes the map, without building it.
    pub(crate) fn write_headers(
        &self,
        out: &mut Vec<u8>,
        headers: &HeaderMap,
        sensitive: &[HeaderName],
    ) {
        let mut all: Vec<(&HeaderName, &HeaderValue)> = headers.iter().collect();
        // Stable: the values of a repeated header keep their order.
        all.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
        out.push(b'{');
        let mut i = 0;
        while let Some(&(name, value)) = all.get(i) {
            if i > 0 {
                out.push(b',');
            }
            write_json_str(out, name.as_str());
            out.push(b':');
            let first = self.header_value(name, value, sensitive);
            let mut j = i + 1;
            match all.get(j) {
                Some((next, _)) if *next == name => {
                    let mut joined = first.into_owned();
                    while let Some(&(n, v)) = all.get(j).filter(|(n, _)| *n == name) {
                        joined.push_str(", ");
                        joined.push_str(&self.header_value(n, v, sensitive));
                        j += 1;
                    }
                    write_json_str(out, &joined);
                }
                _ => write_json_str(out, &first),
            }
            i = j;
        }
        out.push(b'}');
    }

    /// Renders headers for an event: sensitive headers as the mask, other values with
    /// value patterns masked, non-UTF-8 values as `<binary>`; repeated headers joined with
    /// `, `.
    pub fn render_headers(
        &self,
        headers: &HeaderMap,
        sensitive: &[HeaderName],
    ) -> BTreeMap<String, String> {
        let mut out: BTreeMap<String, String> = BTreeMap::new();
        for (name, value) in headers {
            let rendered = self.header_value(name, value, sensitive);
            out.entry(name.as_str().to_owned())
                .and_modify(|e| {
                    e.push_str(", ");
                    e.push_str(&rendered);
                })
                .or_insert_with(|| rendered.into_owned());
        }
        out
    }
}

/// Writes `s` as a JSON string, byte for byte as serde_json does (which escapes only
/// `"`, `\` and control characters): strings with nothing to escape are copied as is.
pub(crate) fn write_json_str(out: &mut Vec<u8>, s: &str) {
    // No early exit, so that the check vectorizes.
    let plain = s
        .bytes()
        .fold(true, |ok, b| ok & (b >= 0x20) & (b != b'"') & (b != b'\\'));
    if plain {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        let _ = serde_json::to_writer(&mut *out, s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn m() -> Masker {
        Masker::new(&MaskingConfig {
            fields: vec!["ssn".into()],
            ..MaskingConfig::default()
        })
        .unwrap()
    }

    #[test]
    fn folding_matches_case_and_separators() {
        let m = m();
        for k in [
            "password",
            "PASSWORD",
            "apiKey",
            "api_key",
            "API-KEY",
            "x-api-key",
            "accessToken",
            "refresh_token",
            "client_secret",
            "Authorization",
            "SSN",
            "user_ssn",
        ] {
            assert!(m.is_sensitive_field(k), "{k}");
        }
        for k in ["user", "tokens_used", "name", "query", "_", ""] {
            assert!(!m.is_sensitive_field(k), "{k}");
        }
    }

    #[test]
    fn masks_at_depth_and_in_arrays() {
        let m = m();
        let mut v = json!({
            "a": {"b": {"c": [{"d": {"Password": "p1"}}, {"e": [{"apiKey": {"x": "p2"}}]}]}},
            "list": [["ok", {"token": 5}]],
            "keep": "value"
        });
        m.mask_value(&mut v);
        let s = v.to_string();
        assert!(!s.contains("p1") && !s.contains("p2"), "{s}");
        assert_eq!(v["list"][0][1]["token"], "***REDACTED***");
        assert_eq!(v["a"]["b"]["c"][1]["e"][0]["apiKey"], "***REDACTED***");
        assert_eq!(v["keep"], "value");
    }

    #[test]
    fn value_patterns() {
        let m = m();
        let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0.c2lnbmF0dXJlX2hlcmU";
        let cases = [
            format!("token is {jwt}!"),
            "Authorization: Bearer abc.def-ghi_jkl".to_owned(),
            "basic dXNlcjpwYXNzd29yZA==".to_owned(),
            "key AKIAIOSFODNN7EXAMPLE here".to_owned(),
            "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----".to_owned(),
            "-----BEGIN PRIVATE KEY-----\nMIIE truncated".to_owned(),
            "ghp_0123456789abcdefghijABCDEFGHIJ012345".to_owned(),
            "postgres://app:s3cr3tpw@db:5432/x".to_owned(),
            "sk-ant-api03-abcdefghijklmnopqrstuvwxyz".to_owned(),
        ];
        let secrets = [
            jwt,
            "abc.def-ghi_jkl",
            "dXNlcjpwYXNzd29yZA==",
            "AKIAIOSFODNN7EXAMPLE",
            "MIIEow",
            "MIIE truncated",
            "ghp_0123456789",
            "s3cr3tpw",
            "abcdefghijklmnopqrstuvwxyz",
        ];
        for (c, s) in cases.iter().zip(secrets) {
            let out = m.mask_str(c);
            assert!(!out.contains(s), "{c} -> {out}");
            assert!(out.contains("***REDACTED***"));
        }
        assert!(matches!(m.mask_str("plain text"), Cow::Borrowed(_)));
        // Patterns apply even with field masking disabled.
        let off = Masker::new(&MaskingConfig {
            enabled: false,
            ..MaskingConfig::default()
        })
        .unwrap();
        let mut v = json!({"password": "kept", "s": "AKIAIOSFODNN7EXAMPLE"});
        off.mask_value(&mut v);
        assert_eq!(v["password"], "kept");
        assert_eq!(v["s"], "***REDACTED***");
    }

    #[test]
    fn secret_in_key_is_masked() {
        let m = m();
        let mut v = json!({"AKIAIOSFODNN7EXAMPLE": 1});
        m.mask_value(&mut v);
        assert!(!v.to_string().contains("AKIAIOSFODNN7EXAMPLE"));
    }

    #[test]
    fn headers_rendered_redacted() {
        let m = m();
        let mut h = HeaderMap::new();
        h.insert("authorization", "Bearer topsecret123".parse().unwrap());
        h.insert("x-custom-token", "zzz".parse().unwrap());
        h.insert("user-agent", "curl".parse().unwrap());
        h.append("cookie", "a=1".parse().unwrap());
        h.append("cookie", "b=2".parse().unwrap());
        h.insert(
            "x-note",
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln".parse().unwrap(),
        );
        let sensitive = crate::AuditConfig::default().sensitive_headers();
        let r = m.render_headers(&h, &sensitive);
        assert_eq!(r["authorization"], "***REDACTED***");
        assert_eq!(r["cookie"], "***REDACTED***, ***REDACTED***");
        assert_eq!(r["user-agent"], "curl");
        assert_eq!(r["x-note"], "***REDACTED***");
        assert_eq!(r["x-custom-token"], "zzz");
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            "[a-z ]{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("[a-zA-Z_]{1,8}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn secret_under_sensitive_key_never_survives(
            base in arb_json(),
            path in prop::collection::vec(0usize..3, 0..5),
            key in prop::sample::select(vec!["password", "Api_Key", "accessToken", "SECRET", "authorization"]),
        ) {
            let secret = "Zq9SecretValueXy";
            // Wrap the secret at a random depth, alternating objects and arrays.
            let mut v = json!({ key: secret });
            for (i, p) in path.iter().enumerate() {
                v = if i % 2 == 0 { json!([base.clone(), v, p]) } else { json!({"k": v, "o": base.clone()}) };
            }
            m().mask_value(&mut v);
            prop_assert!(!v.to_string().contains(secret));
        }

        #[test]
        fn masking_is_idempotent_and_total(v in arb_json()) {
            let m = m();
            let mut a = v.clone();
            m.mask_value(&mut a);
            let mut b = a.clone();
            m.mask_value(&mut b);
            prop_assert_eq!(a, b);
        }

        #[test]
        fn json_strings_are_written_as_serde_json_writes_them(s in "(\\PC|[\\x00-\\x1f\"\\\\\\x7f])*") {
            let mut out = Vec::new();
            write_json_str(&mut out, &s);
            prop_assert_eq!(String::from_utf8(out).unwrap(), serde_json::to_string(&s).unwrap());
        }

        #[test]
        fn fold_is_stable(s in "\\PC{0,20}") {
            let f = fold(&s);
            prop_assert_eq!(fold(&f), f);
        }
    }
}
