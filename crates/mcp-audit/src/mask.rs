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

use crate::capture::{CapturedHeader, Entry, RequestText, is_hashed};
use crate::config::{ConfigError, DEFAULT_MASKED_FIELDS, MaskingConfig};
use mcp_core::headers::header_name_in;

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

/// The bytes at which [`may_hold_builtin`] looks around: one rare byte of each literal
/// below.
const TRIGGERS: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    let bytes = b"JbBA_xk:";
    while i < bytes.len() {
        t[bytes[i] as usize] = true;
        i += 1;
    }
    t
};

/// Whether `s` may hold a match of one of [`BUILTIN_PATTERNS`]: `false` proves that none
/// of them matches anywhere in `s`, so the regular expression need not run. Every match
/// of each pattern contains one of these literals (the byte looked for in brackets):
///
/// - JWT: `eyJ` (`J`);
/// - `bearer` / `basic`, case-insensitive in Unicode mode, where `s` also matches
///   U+017F (`ſ`, UTF-8 `C5 BF`) and no other letter of these words has a non-ASCII
///   equivalent (a test checks this against the regex crate): `bearer` in any ASCII case,
///   or `ba`, then `s`, `S` or `ſ`, then `ic`, in any ASCII case (`b`, `B`);
/// - PEM: `-----BEGIN` (`B`);
/// - AWS (`AKIA`, `ASIA`, `ABIA`, `ACCA`, `AGPA`, `AIDA`, `AROA`, `ANPA`, `ANVA`, `AIPA`)
///   and Google (`AIza`) keys: `A` then an ASCII capital (`A`);
/// - GitHub: `gh` then one of `pousr` then `_`, or `github_` (`_`);
/// - Stripe-style: `k_live_` (`_`); Slack: `xox` (`x`); `sk-` (`k`);
/// - passwords in URLs: `://` (`:`).
///
/// Property tests check the claim against the regular expression.
pub(crate) fn may_hold_builtin(s: &[u8]) -> bool {
    s.iter()
        .enumerate()
        .any(|(i, &b)| TRIGGERS[usize::from(b)] && literal_at(s, i, b))
}

/// Whether one of the literals of [`may_hold_builtin`] is around `b`, the byte at `i`.
#[inline]
fn literal_at(s: &[u8], i: usize, b: u8) -> bool {
    let before = s.get(..i).unwrap_or_default();
    let rest = s.get(i + 1..).unwrap_or_default();
    let ci = |at: usize, lit: &[u8]| {
        rest.get(at..at + lit.len())
            .is_some_and(|r| r.eq_ignore_ascii_case(lit))
    };
    match b {
        b'J' => before.ends_with(b"ey"),
        b'b' | b'B' => {
            ci(0, b"earer")
                || (ci(0, b"a")
                    && ((ci(1, b"s") && ci(2, b"ic"))
                        || (rest.get(1..3) == Some(&[0xc5, 0xbf][..]) && ci(3, b"ic"))))
                || (before.ends_with(b"-----") && rest.starts_with(b"EGIN"))
        }
        b'A' => rest.first().is_some_and(u8::is_ascii_uppercase),
        b'_' => {
            matches!(before, [.., b'g', b'h', b'p' | b'o' | b'u' | b's' | b'r'])
                || before.ends_with(b"github")
                || (before.ends_with(b"k") && rest.starts_with(b"live_"))
        }
        b'x' => rest.starts_with(b"ox"),
        b'k' => before.ends_with(b"s") && rest.starts_with(b"-"),
        b':' => rest.starts_with(b"//"),
        _ => false,
    }
}

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
    /// The built-in and configured patterns, as one alternation.
    patterns: Regex,
    /// The configured patterns alone, when there are any (see [`Masker::has_pattern`]).
    custom: Option<Regex>,
}

/// How a [`HASHED_HEADERS`](crate::config::HASHED_HEADERS) value is shown: `sha256:` and
/// the first 16 hex digits of the SHA-256 of its bytes.
pub fn hash_prefix(value: &[u8]) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(value);
    format!("sha256:{}", hex::encode(&d[..8]))
}

/// How many passes [`Masker::mask_str`] makes at most before it masks a string whole.
pub const MAX_MASK_PASSES: usize = 8;

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
        let invalid = || {
            ConfigError::new(
                "audit.masking.patterns",
                "entries must be valid regular expressions",
            )
        };
        let mut custom = Vec::new();
        for p in &cfg.patterns {
            if Regex::new(p).is_err() {
                return Err(invalid());
            }
            custom.push(format!("(?:{p})"));
        }
        alternatives.extend(custom.iter().cloned());
        let patterns = Regex::new(&alternatives.join("|")).map_err(|_| invalid())?;
        let custom = if custom.is_empty() {
            None
        } else {
            Some(Regex::new(&custom.join("|")).map_err(|_| invalid())?)
        };
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
            custom,
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

    /// Whether a value pattern matches somewhere in `s`: the same answer as the regular
    /// expression of all patterns, which runs only when [`may_hold_builtin`] (or one of
    /// the configured patterns, searched alone) says that it can match.
    fn has_pattern(&self, s: &str) -> bool {
        (may_hold_builtin(s.as_bytes()) || self.0.custom.as_ref().is_some_and(|c| c.is_match(s)))
            && self.0.patterns.is_match(s)
    }

    /// Replaces every value pattern found in `s` with the mask (always applied, even when
    /// field masking is off: these are credentials wherever they appear).
    ///
    /// A replacement can complete another match (a credential glued to another one gets
    /// the boundary its pattern needs), so the replacement repeats until no pattern
    /// matches; after [`MAX_MASK_PASSES`] passes a string that still matches is replaced
    /// by the mask whole.
    pub fn mask_str<'a>(&self, s: &'a str) -> Cow<'a, str> {
        if !self.has_pattern(s) {
            return Cow::Borrowed(s);
        }
        let mut cur = s.to_owned();
        for _ in 0..MAX_MASK_PASSES {
            cur = self
                .0
                .patterns
                .replace_all(&cur, regex::NoExpand(&self.0.mask))
                .into_owned();
            if !self.has_pattern(&cur) {
                return Cow::Owned(cur);
            }
        }
        Cow::Owned(self.0.mask.to_string())
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
                    .filter(|k| self.has_pattern(k))
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
                if map.keys().any(|k| self.has_pattern(k)) {
                    // Keys to rename: exactly what mask_value does, on a copy.
                    let mut copy = v.clone();
                    self.mask_value(&mut copy);
                    write_json(out, &copy);
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
        if header_name_in(name.as_str(), sensitive) {
            Cow::Borrowed(&*self.0.mask)
        } else if is_hashed(name.as_str()) {
            Cow::Owned(hash_prefix(value.as_bytes()))
        } else if value.is_sensitive() || header_name_suggests_secret(name.as_str()) {
            Cow::Borrowed(&*self.0.mask)
        } else {
            match value.to_str() {
                Ok(s) => self.mask_str(s),
                Err(_) => Cow::Borrowed("<binary>"),
            }
        }
    }

    /// One captured header value as rendered in events: the same as
    /// [`Masker::render_headers`] renders the value it was copied from.
    fn captured_value<'a>(
        &'a self,
        h: CapturedHeader<'a>,
        sensitive: &[HeaderName],
    ) -> Cow<'a, str> {
        // Listed names match `_` as `-` (`X_API_Key` is `x-api-key` to a CGI reader).
        if header_name_in(h.name, sensitive) {
            return Cow::Borrowed(&*self.0.mask);
        }
        if is_hashed(h.name) {
            return match h.value {
                Some(v) => Cow::Owned(hash_prefix(v.as_bytes())),
                None => Cow::Borrowed(&*self.0.mask),
            };
        }
        if h.sensitive || header_name_suggests_secret(h.name) {
            return Cow::Borrowed(&*self.0.mask);
        }
        match h.value {
            Some(s) => self.mask_str(s),
            None => Cow::Borrowed("<binary>"),
        }
    }

    /// Writes [`Masker::render_headers`] of the captured headers as a JSON object, byte
    /// for byte as serde_json serializes the map, without building it, capped by
    /// [`cap_headers`]: each value (masked first) cut to `value_cap` bytes
    /// (`headers.<name>` pushed on `truncated`), and the headers, in name order, left out
    /// from the first one that would take names and values past `total_cap` bytes
    /// (`headers` pushed). `order` is scratch space.
    pub(crate) fn write_headers(
        &self,
        out: &mut Vec<u8>,
        req: &RequestText,
        sensitive: &[HeaderName],
        order: &mut Vec<Entry>,
        (value_cap, total_cap): (usize, usize),
        truncated: &mut Vec<String>,
    ) {
        req.sorted_headers(order);
        out.push(b'{');
        let mut i = 0;
        let mut total = 0usize;
        let mut written = 0;
        while let Some(&entry) = order.get(i) {
            let h = req.header(entry);
            let first = self.captured_value(h, sensitive);
            let mut j = i + 1;
            let value = match order.get(j) {
                Some(&next) if req.name(next) == h.name => {
                    let mut joined = first.into_owned();
                    while let Some(&next) = order.get(j).filter(|e| req.name(**e) == h.name) {
                        joined.push_str(", ");
                        joined.push_str(&self.captured_value(req.header(next), sensitive));
                        j += 1;
                    }
                    Cow::Owned(joined)
                }
                _ => first,
            };
            let (value, cut) = cap_text(value, value_cap);
            total = total.saturating_add(h.name.len() + value.len());
            if total > total_cap {
                truncated.push("headers".to_owned());
                break;
            }
            if cut {
                truncated.push(format!("headers.{}", h.name));
            }
            if written > 0 {
                out.push(b',');
            }
            written += 1;
            write_json_str(out, h.name);
            out.push(b':');
            write_json_str(out, &value);
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

/// `s` cut to at most `max` bytes at a character boundary, and whether it was cut.
pub(crate) fn cap_text(s: Cow<'_, str>, max: usize) -> (Cow<'_, str>, bool) {
    if s.len() <= max {
        return (s, false);
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let cut = match s {
        Cow::Borrowed(b) => Cow::Borrowed(b.get(..end).unwrap_or_default()),
        Cow::Owned(mut o) => {
            o.truncate(end);
            Cow::Owned(o)
        }
    };
    (cut, true)
}

/// Caps rendered headers as events write them: each value cut to `value_cap` bytes
/// (`headers.<name>` pushed on `truncated`), and, in name order, the headers from the
/// first that would take names and values past `total_cap` bytes left out (`headers`
/// pushed). Values must already be masked.
pub fn cap_headers(
    headers: BTreeMap<String, String>,
    (value_cap, total_cap): (usize, usize),
    truncated: &mut Vec<String>,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut total = 0usize;
    for (name, value) in headers {
        let (v, cut) = cap_text(Cow::Owned(value), value_cap);
        total = total.saturating_add(name.len() + v.len());
        if total > total_cap {
            truncated.push("headers".to_owned());
            break;
        }
        if cut {
            truncated.push(format!("headers.{name}"));
        }
        out.insert(name, v.into_owned());
    }
    out
}

/// Whether `s` holds a byte that JSON escapes: `"`, `\` or a control character below
/// 0x20. Eight bytes at a time (SWAR): in each test below, a byte that is below 0x20, or
/// equal to `"` or `\` after the XOR, always sets its high bit, so no such byte is
/// missed; a high bit set by a borrow, without such a byte, only sends the string to
/// serde_json's escaping, which writes the same bytes.
fn needs_escape(s: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let has_zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    let special = |w: [u8; 8]| {
        let x = u64::from_le_bytes(w);
        let below_space = x.wrapping_sub(ONES * 0x20) & !x & HIGH;
        let quote = has_zero(x ^ (ONES * u64::from(b'"')));
        let backslash = has_zero(x ^ (ONES * u64::from(b'\\')));
        below_space | quote | backslash != 0
    };
    let mut chunks = s.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        if special(w) {
            return true;
        }
    }
    // The last 0 to 7 bytes, padded with a byte that is never escaped.
    let rest = chunks.remainder();
    let mut w = [b'a'; 8];
    if let Some(head) = w.get_mut(..rest.len()) {
        head.copy_from_slice(rest);
    }
    special(w)
}

/// Whether `c` is written as a `\uXXXX` escape in every audit output (events, indexed
/// columns, query answers), on top of what JSON itself escapes: DEL and the C1 controls
/// (U+007F-U+009F: NEL, CSI, ... act on terminals and log viewers), the bidirectional
/// controls (U+202A-U+202E, U+2066-U+2069, U+200E, U+200F, U+061C: they reorder what a
/// reader sees), the line and paragraph separators (U+2028, U+2029: line breaks for
/// some readers) and the invisible format characters (U+200B-U+200D, U+2060-U+2064,
/// U+FEFF: text that reads as something else). JSON escapes keep the value: a JSON
/// reader decodes exactly what the client sent.
///
/// ```
/// assert!(mcp_audit::mask::is_display_control('\u{202e}'));
/// assert!(mcp_audit::mask::is_display_control('\u{85}'));
/// assert!(mcp_audit::mask::is_display_control('\u{feff}'));
/// assert!(!mcp_audit::mask::is_display_control('é'));
/// ```
pub fn is_display_control(c: char) -> bool {
    matches!(c,
        '\u{7f}'..='\u{9f}'
        | '\u{61c}'
        | '\u{200b}'..='\u{200f}'
        | '\u{2028}'
        | '\u{2029}'
        | '\u{202a}'..='\u{202e}'
        | '\u{2060}'..='\u{2064}'
        | '\u{2066}'..='\u{2069}'
        | '\u{feff}')
}

fn has_display_control(s: &str) -> bool {
    s.bytes().any(|b| b == 0x7f || !b.is_ascii()) && s.chars().any(is_display_control)
}

/// Whether `c` is escaped in the indexed columns of the SQL trails: the C0 controls
/// (NUL, TAB, CR, LF, ESC, ...), which JSON escapes in the events, and every
/// [`is_display_control`] character.
fn is_column_control(c: char) -> bool {
    c < ' ' || is_display_control(c)
}

/// `s` with every C0 control character (NUL, TAB, CR, LF, ESC, ...) and every
/// [`is_display_control`] character replaced by its JSON escape spelled out (`\u202e`,
/// `\u000a`): how the indexed columns of the SQL trails hold client text, and how the
/// query API's `user` and `tool` filters are matched against them. No terminal shows
/// such a column with escapes acting or with a broken line.
///
/// ```
/// assert_eq!(mcp_audit::mask::escape_display_controls("a\u{202e}b"), "a\\u202eb");
/// assert_eq!(mcp_audit::mask::escape_display_controls("a\r\n\u{1b}b"), "a\\u000d\\u000a\\u001bb");
/// assert_eq!(mcp_audit::mask::escape_display_controls("plain"), "plain");
/// ```
pub fn escape_display_controls(s: &str) -> Cow<'_, str> {
    escape_chars(s, is_column_control)
}

/// The characters the indexed columns escaped before C0 controls, DEL and the invisible
/// format characters were: trails written then hold those raw.
fn is_display_control_v1(c: char) -> bool {
    matches!(c,
        '\u{80}'..='\u{9f}'
        | '\u{61c}'
        | '\u{200e}'
        | '\u{200f}'
        | '\u{2028}'
        | '\u{2029}'
        | '\u{202a}'..='\u{202e}'
        | '\u{2066}'..='\u{2069}')
}

/// A column as trails written before [`escape_display_controls`] escaped C0 controls,
/// DEL and the invisible format characters spelled it (for verifying those trails).
pub(crate) fn escape_display_controls_v1(s: &str) -> Cow<'_, str> {
    escape_chars(s, is_display_control_v1)
}

fn escape_chars(s: &str, escaped: fn(char) -> bool) -> Cow<'_, str> {
    if !s.chars().any(escaped) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if escaped(c) {
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// serde_json's compact formatter, with [`is_display_control`] characters escaped.
struct SafeFormatter;

impl serde_json::ser::Formatter for SafeFormatter {
    fn write_string_fragment<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        fragment: &str,
    ) -> std::io::Result<()> {
        let mut start = 0;
        for (i, c) in fragment.char_indices() {
            if is_display_control(c) {
                w.write_all(fragment.as_bytes().get(start..i).unwrap_or_default())?;
                write!(w, "\\u{:04x}", c as u32)?;
                start = i + c.len_utf8();
            }
        }
        w.write_all(fragment.as_bytes().get(start..).unwrap_or_default())
    }
}

/// Writes `v` as compact JSON with [`is_display_control`] characters escaped.
pub(crate) fn write_json<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, v: &T) {
    let mut ser = serde_json::Serializer::with_formatter(out, SafeFormatter);
    // Writing to a Vec cannot fail, and JSON values always serialize.
    let _ = v.serialize(&mut ser);
}

/// Writes `s` as a JSON string, byte for byte as serde_json does (which escapes only
/// `"`, `\` and control characters), and [`is_display_control`] characters as `\uXXXX`:
/// strings with nothing to escape are copied as is.
pub(crate) fn write_json_str(out: &mut Vec<u8>, s: &str) {
    if needs_escape(s.as_bytes()) || has_display_control(s) {
        write_json(out, s);
    } else {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    }
}

/// The words that make a header name sensitive whatever the configuration
/// ([`header_name_suggests_secret`]), with separators removed.
pub const SECRET_HEADER_WORDS: &[&str] = &[
    "token",
    "secret",
    "password",
    "passwd",
    "apikey",
    "auth",
    "credential",
    "assertion",
    "signature",
    "session",
    "cookie",
    "jwt",
];

/// Whether a header name suggests a secret: lower-cased with `-` and `_` removed, it
/// contains one of [`SECRET_HEADER_WORDS`] (`X-Access-Token`, `X-Amzn-Oidc-Accesstoken`,
/// `Api-Key`, `X_Vault_Token`, `X-Goog-IAP-JWT-Assertion`, ...). Audit events show such
/// a header as the mask, in addition to the configured list; `mcp-session-id` keeps its
/// hash prefix ([`HASHED_HEADERS`](crate::config::HASHED_HEADERS)).
///
/// ```
/// use mcp_audit::mask::header_name_suggests_secret;
/// assert!(header_name_suggests_secret("X-Amz-Security-Token"));
/// assert!(header_name_suggests_secret("api_key"));
/// assert!(!header_name_suggests_secret("user-agent"));
/// ```
pub fn header_name_suggests_secret(name: &str) -> bool {
    let mut folded = [0u8; 128];
    let mut n = 0;
    for b in name.bytes() {
        if b == b'-' || b == b'_' {
            continue;
        }
        if n == folded.len() {
            // A longer name is compared by allocation (rare).
            let f: String = name
                .bytes()
                .filter(|b| *b != b'-' && *b != b'_')
                .map(|b| b.to_ascii_lowercase() as char)
                .collect();
            return SECRET_HEADER_WORDS.iter().any(|w| f.contains(w));
        }
        folded[n] = b.to_ascii_lowercase();
        n += 1;
    }
    let f = &folded[..n];
    SECRET_HEADER_WORDS
        .iter()
        .any(|w| f.windows(w.len()).any(|x| x == w.as_bytes()))
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

    /// A replacement can give a credential glued to a secret the boundary its pattern
    /// needs (`CANARY-...Basic ...`: `\bbasic` matches only once the secret before it is
    /// the mask): masking repeats until nothing matches. Found by the `audit_masker` fuzz
    /// target.
    #[test]
    fn masking_leaves_no_match_behind() {
        let m = Masker::new(&MaskingConfig {
            patterns: vec!["CANARY-[0-9a-f]{8}".into()],
            ..MaskingConfig::default()
        })
        .unwrap();
        for s in [
            "Note CANARY-00000001Basic dXNBasic authorizatNz",
            "CANARY-0000000aCANARY-0000000bBearer abcdefghijklmnop",
            "xCANARY-00000001bearer  abcdefgh CANARY-00000002basic QWxhZGRpbjpvcGVu",
        ] {
            let once = m.mask_str(s).into_owned();
            assert!(!m.has_pattern(&once), "{once:?}");
            assert!(!once.contains("CANARY-"), "{once:?}");
            assert_eq!(m.mask_str(&once), once);
        }
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
        // A name that suggests a secret is masked without being listed.
        assert_eq!(r["x-custom-token"], "***REDACTED***");
    }

    #[test]
    fn secret_looking_and_underscore_names_are_masked() {
        let m = m();
        let mut cfg = crate::AuditConfig::default();
        cfg.masking.headers.push("X-MCP-Key".into());
        let sensitive = cfg.sensitive_headers();
        let masked = [
            "X-Access-Token",
            "X-Id-Token",
            "X-Auth-Request-Access-Token",
            "X-Amzn-Oidc-Accesstoken",
            "Api-Key",
            "X-Vault-Token",
            "X-Amz-Security-Token",
            "X_API_Key",
            "X_Auth_Token",
            "x_mcp_key",
            "X-MCP_Key",
            "Proxy_Authorization",
            "X-Client-Secret",
            "X-Db-Passwd",
            "X-Goog-IAP-JWT-Assertion",
            "X-Hub-Signature-256",
            "X-Session",
            "X-Credential",
            "Authorization2",
            "X-Apikey",
        ];
        let mut h = HeaderMap::new();
        for n in masked {
            h.insert(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                "clear-7f3a".parse().unwrap(),
            );
        }
        h.insert("user-agent", "curl-7f3a".parse().unwrap());
        h.insert("x-forwarded-host", "example.org".parse().unwrap());
        let r = m.render_headers(&h, &sensitive);
        let captured = RequestText::capture(None, Some(&h));
        let mut out = Vec::new();
        m.write_headers(
            &mut out,
            &captured,
            &sensitive,
            &mut Vec::new(),
            (usize::MAX, usize::MAX),
            &mut Vec::new(),
        );
        let written = String::from_utf8(out).unwrap();
        for n in masked {
            let k = n.to_ascii_lowercase();
            assert_eq!(r[&k], "***REDACTED***", "{n}");
        }
        assert!(!written.contains("clear-7f3a"), "{written}");
        assert_eq!(r["user-agent"], "curl-7f3a");
        assert_eq!(r["x-forwarded-host"], "example.org");
        assert!(written.contains("curl-7f3a"));
        for n in [
            "accept",
            "content-type",
            "x-request-id",
            "mcp-protocol-version",
            "user-agent",
        ] {
            assert!(!header_name_suggests_secret(n), "{n}");
        }
        let long = format!("x-{}-token", "a".repeat(200));
        assert!(header_name_suggests_secret(&long));
    }

    #[test]
    fn session_ids_are_shown_as_a_hash_prefix() {
        let m = m();
        let sid = "0f2d6c1e9b8a4f7e8d6c5b4a39281706";
        let want = hash_prefix(sid.as_bytes());
        assert!(want.starts_with("sha256:") && want.len() == 23, "{want}");
        let mut h = HeaderMap::new();
        h.insert("mcp-session-id", sid.parse().unwrap());
        let sensitive = crate::AuditConfig::default().sensitive_headers();
        // The map renderer and the writer's renderer (from the captured text), also when
        // an outer layer marked the value sensitive.
        for marked in [false, true] {
            let mut h = h.clone();
            if let Some(v) = h.get_mut("mcp-session-id") {
                v.set_sensitive(marked);
            }
            assert_eq!(m.render_headers(&h, &sensitive)["mcp-session-id"], want);
            let captured = RequestText::capture(None, Some(&h));
            let mut out = Vec::new();
            m.write_headers(
                &mut out,
                &captured,
                &sensitive,
                &mut Vec::new(),
                (usize::MAX, usize::MAX),
                &mut Vec::new(),
            );
            let text = String::from_utf8(out).unwrap();
            assert_eq!(text, format!("{{\"mcp-session-id\":\"{want}\"}}"));
        }
        // Listed in masking.headers: masked entirely.
        let mut cfg = crate::AuditConfig::default();
        cfg.masking.headers.push("Mcp-Session-Id".into());
        let r = m.render_headers(&h, &cfg.sensitive_headers());
        assert_eq!(r["mcp-session-id"], "***REDACTED***");
        // And tracing never prints it.
        assert!(
            crate::headers::default_sensitive_headers()
                .iter()
                .any(|n| n == "mcp-session-id")
        );
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

    /// The built-in patterns alone, as one regular expression (what the prefilter must
    /// never hide a match of).
    fn builtin_regex() -> Regex {
        let alts: Vec<String> = BUILTIN_PATTERNS
            .iter()
            .map(|p| format!("(?:{p})"))
            .collect();
        Regex::new(&alts.join("|")).unwrap()
    }

    fn prefilter_sound_on(re: &Regex, s: &str) -> Result<(), TestCaseError> {
        if !may_hold_builtin(s.as_bytes()) {
            prop_assert!(!re.is_match(s), "prefilter hides a match in {:?}", s);
        }
        Ok(())
    }

    #[test]
    fn case_insensitive_letters_of_bearer_and_basic_have_no_other_equivalent_than_long_s() {
        // Every scalar value once, then the characters `(?i)x` matches for each letter.
        let all: String = (0u32..=0x10_ffff).filter_map(char::from_u32).collect();
        for letter in "bearsic".chars() {
            let re = Regex::new(&format!("(?i){letter}")).unwrap();
            let mut got: Vec<char> = re
                .find_iter(&all)
                .filter_map(|m| m.as_str().chars().next())
                .collect();
            got.sort_unstable();
            let mut want = vec![letter.to_ascii_uppercase(), letter];
            if letter == 's' {
                want.push('\u{17f}');
            }
            assert_eq!(got, want, "{letter}");
        }
    }

    #[test]
    fn prefilter_lets_every_builtin_example_through() {
        let re = builtin_regex();
        for s in [
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln",
            "Bearer abcdefghijkl",
            "BEARER\tabcdefghijkl",
            "basic dXNlcjpwYXNzd29yZA==",
            "BAſIC dXNlcjpwYXNzd29yZA==",
            "baſic dXNlcjpwYXNzd29yZA==",
            "-----BEGIN RSA PRIVATE KEY-----\nMIIE",
            "AKIAIOSFODNN7EXAMPLE",
            "ANVAIOSFODNN7EXAMPLE",
            "AIzaSyA-abcdefghijklmnopqrstuvwxyz01234",
            "ghp_0123456789abcdefghijABCDEFGHIJ012345",
            "github_pat_0123456789abcdefghijkl",
            "xoxb-0123456789-abc",
            "sk-ant-api03-abcdefghijklmnopqrstuvwxyz",
            "rk_live_0123456789abcdef",
            "postgres://app:s3cr3tpw@db:5432/x",
        ] {
            assert!(re.is_match(s), "{s}");
            assert!(may_hold_builtin(s.as_bytes()), "{s}");
        }
        for s in [
            "",
            "plain text",
            "search_documents",
            "alice@example.com",
            "/mcp",
            "tools/call",
        ] {
            assert!(!may_hold_builtin(s.as_bytes()), "{s}");
        }
    }

    #[test]
    fn configured_patterns_are_still_searched() {
        let m = Masker::new(&MaskingConfig {
            patterns: vec!["internal-[0-9]{4}".into(), "(?i)hunter2".into()],
            ..MaskingConfig::default()
        })
        .unwrap();
        assert_eq!(m.mask_str("id internal-1234 x"), "id ***REDACTED*** x");
        assert_eq!(m.mask_str("HUNTER2"), "***REDACTED***");
        assert_eq!(
            m.mask_str("HUNTER2 and Bearer abcdefghijkl"),
            "***REDACTED*** and ***REDACTED***"
        );
        assert!(matches!(m.mask_str("internal-12"), Cow::Borrowed(_)));
        let mut v = json!({"internal-9999": 1});
        m.mask_value(&mut v);
        assert!(!v.to_string().contains("9999"));
    }

    #[test]
    fn escape_check_finds_each_special_byte_at_each_position() {
        for special in (0u8..0x20).chain([b'"', b'\\']) {
            for len in 1..20 {
                for at in 0..len {
                    let mut b = vec![b'a'; len];
                    b[at] = special;
                    let s = String::from_utf8(b).unwrap();
                    let mut out = Vec::new();
                    write_json_str(&mut out, &s);
                    assert_eq!(
                        String::from_utf8(out).unwrap(),
                        serde_json::to_string(&s).unwrap()
                    );
                }
            }
        }
        // Bytes next to the special ones (borrows, 0x7f, UTF-8) are copied as they are.
        for s in [
            "\u{7f}!#[]]^_`\u{1f600}é\u{2028}",
            "!!!!!!!!!!!!!!!!!",
            "  !!  ## [] \u{a0}",
        ] {
            assert!(!needs_escape(s.as_bytes()), "{s:?}");
        }
    }

    proptest! {
        /// Strings made of fragments of every pattern (and near misses): the prefilter
        /// never says "no match" where the regular expression finds one.
        #[test]
        fn prefilter_never_hides_a_match_in_fragment_soup(
            words in prop::collection::vec(prop::sample::select(vec![
                "eyJ", "ey", "J", "e", "y", "hbGci", ".", "_", "-", "Bearer", "bearer", "BeArEr",
                "b", "B", "ba", "BA", "s", "S", "\u{17f}", "ic", "IC", "earer", "basic", " ", "\t",
                "\u{a0}", "\u{2003}", "\n", "abcdefgh", "0123456789",
                "abcdefghijklmnopqrstuvwxyz0123456789", "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", "=", "/", "+", "~",
                "-----", "BEGIN", "-----BEGIN", " PRIVATE KEY-----", "RSA", "-----END",
                "AKIA", "ASIA", "ABIA", "ACCA", "AGPA", "AIDA", "AROA", "ANPA", "ANVA", "AIPA",
                "A", "AI", "za", "AIza", "IOSFODNN7EXAMPLE", "ABCDEFGHIJKLMNOP", "gh", "g", "h",
                "ghp", "ghp_", "gho_", "github", "github_pat_", "xox", "xo", "x", "o", "xoxb-",
                "xoxp-", "sk", "k", "sk-", "k_", "_live_", "sk_live_", "rk_live_", "live",
                "://", ":/", ":", "//", "@", "http", "postgres", "user", "pw", "é", "\u{1f600}",
            ]), 0..14)
        ) {
            let re = builtin_regex();
            prefilter_sound_on(&re, &words.concat())?;
        }

        /// Strings built to match each pattern (from simplified copies of the patterns,
        /// without the word boundaries), between random text: wherever the regular
        /// expression finds a match, the prefilter lets the string through.
        #[test]
        fn prefilter_lets_generated_matches_through(
            pre in "[a-z .:/@_-]{0,6}",
            m in prop_oneof![
                "eyJ[A-Za-z0-9_-]{2,6}[.][A-Za-z0-9_-]{2,6}[.][A-Za-z0-9_-]{0,6}",
                "(?i:bearer|basic)[ \t\u{a0}\u{2003}]{1,2}[A-Za-z0-9._~+/=-]{6,10}",
                "-----BEGIN[A-Z0-9 ]{0,6}PRIVATE KEY-----[a-zA-Z0-9\n]{0,8}",
                "(AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[A-Z0-9]{16}",
                "AIza[0-9A-Za-z_-]{35}",
                "(ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{30,34}",
                "github_pat_[A-Za-z0-9_]{22,26}",
                "xox[abprs]-[A-Za-z0-9-]{10,14}",
                "sk-[A-Za-z0-9_-]{20,24}",
                "[rs]k_live_[A-Za-z0-9]{16,20}",
                "(?i:[a-z][a-z0-9+.-]{0,5})://[^/\\s:@]{1,5}:[^/\\s@]{1,5}@",
            ],
            post in "[a-z .:/@_-]{0,6}",
        ) {
            let s = format!("{pre}{m}{post}");
            prefilter_sound_on(&builtin_regex(), &s)?;
        }

        #[test]
        fn prefilter_never_hides_a_match_in_any_string(s in any::<String>()) {
            prefilter_sound_on(&builtin_regex(), &s)?;
        }

        #[test]
        fn prefilter_never_hides_a_match_in_pattern_alphabet(
            s in "[a-zA-Z0-9_:/@. \t\u{17f}=+~-]{0,48}"
        ) {
            prefilter_sound_on(&builtin_regex(), &s)?;
        }

        /// With and without configured patterns, masking gives what the plain regular
        /// expression gives.
        #[test]
        fn mask_str_is_the_plain_replacement(
            words in prop::collection::vec(prop::sample::select(vec![
                "Bearer ", "abcdefghijkl", "AKIA", "IOSFODNN7EXAMPLE", "internal-", "1234",
                "x", " ", "://", "u:p@", "eyJ", "a.b.", "hunter2", "HUNTER2", "sk-",
            ]), 0..10),
            custom in any::<bool>(),
        ) {
            let cfg = MaskingConfig {
                patterns: if custom { vec!["internal-[0-9]{4}".into(), "(?i)hunter2".into()] } else { vec![] },
                ..MaskingConfig::default()
            };
            let m = Masker::new(&cfg).unwrap();
            let s = words.concat();
            let mut plain = s.clone();
            for _ in 0..MAX_MASK_PASSES {
                if !m.0.patterns.is_match(&plain) {
                    break;
                }
                plain = m.0.patterns.replace_all(&plain, regex::NoExpand("***REDACTED***")).into_owned();
            }
            if m.0.patterns.is_match(&plain) {
                plain = "***REDACTED***".to_owned();
            }
            prop_assert_eq!(m.mask_str(&s), plain);
        }
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
            let out = String::from_utf8(out).unwrap();
            if s.chars().any(is_display_control) {
                prop_assert!(!out.chars().any(is_display_control));
                prop_assert_eq!(serde_json::from_str::<String>(&out).unwrap(), s);
            } else {
                prop_assert_eq!(out, serde_json::to_string(&s).unwrap());
            }
        }

        #[test]
        fn display_controls_are_escaped_and_decode_to_the_input(
            s in "([a-z\"\\\\\\x00-\\x1f]|[\\u{80}-\\u{9f}\\u{61c}\\u{200e}\\u{200f}\\u{2028}-\\u{202e}\\u{2066}-\\u{2069}]|\\PC)*"
        ) {
            let mut out = Vec::new();
            write_json_str(&mut out, &s);
            let out = String::from_utf8(out).unwrap();
            prop_assert!(!out.chars().any(is_display_control), "{}", out);
            prop_assert_eq!(serde_json::from_str::<String>(&out).unwrap(), s.clone());
            // Inside any value too, keys included.
            let v = serde_json::json!({ s.clone(): [s.clone()] });
            let mut out = Vec::new();
            write_json(&mut out, &v);
            let text = String::from_utf8(out).unwrap();
            prop_assert!(!text.chars().any(is_display_control));
            prop_assert_eq!(serde_json::from_str::<serde_json::Value>(&text).unwrap(), v);
            let col = escape_display_controls(&s);
            prop_assert!(!col.chars().any(is_display_control));
        }

        #[test]
        fn fold_is_stable(s in "\\PC{0,20}") {
            let f = fold(&s);
            prop_assert_eq!(fold(&f), f);
        }
    }
}
