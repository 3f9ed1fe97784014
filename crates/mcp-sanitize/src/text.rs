//! The seeds' plain sanitization functions, UTF-8 safe.
//!
//! These functions work on `&str` and never cut inside a character: removals are of ASCII
//! characters or ASCII tokens (which cannot start inside a multi-byte UTF-8 sequence), and
//! truncation counts characters, not bytes.
//!
//! ```
//! use mcp_sanitize::text::{sanitize_filter_value, sanitize_json_path, validate_string};
//!
//! assert_eq!(sanitize_filter_value("'; DROP TABLE users; --"), " DROP TABLE users ");
//! assert_eq!(sanitize_json_path("$.data[*].name; rm -rf /"), "$.data[*].name rm -rf ");
//! assert!(validate_string("normal input"));
//! assert!(!validate_string("<script>alert(1)</script>"));
//! ```
//!
//! Where these functions deliberately differ from the seeds:
//!
//! - Removal is repeated until the value no longer changes, so that removing one token
//!   cannot assemble another (`"-/**/-"` does not become `"--"`).
//! - The XSS tokens (`<script>`, `javascript:`, `onload=`, `onerror=`) are matched without
//!   regard to ASCII case and with optional spaces (`< SCRIPT`, `javascript :`).
//! - [`validate_string`] also refuses control characters (other than tab, line feed and
//!   carriage return) and anything the built-in SQL injection, command injection, XSS and
//!   path traversal rules match, not only over-long strings.
//! - [`sanitize_json_path`] keeps JSONPath syntax (`$ . [ ] * ? @ ( ) = ! < > ' " , :`) and
//!   drops the rest of the punctuation, which is how the seed's example
//!   (`"$.data[*].name; rm -rf /"` gives `"$.data[*].name rm -rf "`) behaves.

use std::borrow::Cow;

/// The seeds' default maximum string length, in characters.
pub const MAX_LENGTH: usize = 1000;

/// The maximum length of an identifier, in characters (a DNS subdomain name's limit, as
/// Kubernetes uses for object names).
pub const MAX_IDENTIFIER_LENGTH: usize = 253;

/// Characters removed as SQL injection vectors (with the tokens `--`, `/*`, `*/`).
pub const SQL_CHARS: &[char] = &[';', '\'', '"'];
/// Tokens removed as SQL injection vectors.
pub const SQL_TOKENS: &[&str] = &["--", "/*", "*/"];
/// Characters removed as command injection vectors.
pub const COMMAND_CHARS: &[char] = &['|', '&', '$', '(', ')', '<', '>', '`', '\\'];
/// Tokens removed as XSS vectors (matched ignoring ASCII case).
pub const XSS_TOKENS: &[&str] = &[
    "<script>",
    "</script>",
    "javascript:",
    "onload=",
    "onerror=",
];

/// Truncates to at most `max` characters, never inside a character.
pub fn truncate_chars(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    match s.char_indices().nth(max) {
        Some((idx, _)) => &s[..idx],
        None => s,
    }
}

/// Whether a character is a control character the suite refuses in strings: every Unicode
/// `Cc` character (C0, DEL, C1) except tab, line feed and carriage return.
pub fn is_forbidden_control(c: char) -> bool {
    c.is_control() && !matches!(c, '\t' | '\n' | '\r')
}

/// Whether `s` contains a forbidden control character ([`is_forbidden_control`]). Fast on
/// ASCII: it looks at bytes and decodes only around bytes that may start a C1 character.
pub fn has_forbidden_control(s: &str) -> bool {
    has_control_inline(s)
}

/// [`has_forbidden_control`], inlined where it is called for every key.
#[inline(always)]
pub(crate) fn has_control_inline(s: &str) -> bool {
    use crate::classify::{CHUNK, control_at, long_has_control, short_has_control_lead};
    let b = s.as_bytes();
    if b.len() < CHUNK {
        // Keys and short values: one or two words at once, then the exact check.
        short_has_control_lead(b) && (0..b.len()).any(|p| control_at(b, p))
    } else {
        long_has_control(b)
    }
}

/// Removes forbidden control characters ([`is_forbidden_control`]).
pub fn strip_control(s: &str) -> Cow<'_, str> {
    if has_forbidden_control(s) {
        Cow::Owned(s.chars().filter(|c| !is_forbidden_control(*c)).collect())
    } else {
        Cow::Borrowed(s)
    }
}

/// Removes every occurrence of `token`, ignoring ASCII case and allowing ASCII spaces after
/// `<` and before a trailing `:` or `=` (so `< script>` and `javascript :` are removed).
fn remove_token_ci(s: &str, token: &str) -> Option<String> {
    let tok = token.as_bytes();
    let bytes = s.as_bytes();
    let mut out: Option<String> = None;
    let mut last = 0;
    let mut i = 0;
    while i < bytes.len() {
        if let Some(end) = match_token_at(bytes, i, tok) {
            let o = out.get_or_insert_with(|| String::with_capacity(s.len()));
            o.push_str(&s[last..i]);
            last = end;
            i = end;
        } else {
            i += 1;
        }
    }
    let mut o = out?;
    o.push_str(&s[last..]);
    Some(o)
}

/// Matches `tok` at `i` ignoring ASCII case; spaces are allowed after a leading `<` and
/// before a trailing `:` / `=`. Returns the end index. Both `tok` and the matched bytes
/// are ASCII, so the returned indices are character boundaries.
fn match_token_at(bytes: &[u8], i: usize, tok: &[u8]) -> Option<usize> {
    let mut j = i;
    for (k, &t) in tok.iter().enumerate() {
        if k > 0 && (tok[k - 1] == b'<' || (k == tok.len() - 1 && matches!(t, b':' | b'='))) {
            while bytes.get(j) == Some(&b' ') {
                j += 1;
            }
        }
        let b = *bytes.get(j)?;
        if !b.eq_ignore_ascii_case(&t) {
            return None;
        }
        j += 1;
    }
    Some(j)
}

fn remove_chars_and_tokens(s: &str, chars: &[char], tokens: &[&str], ci_tokens: &[&str]) -> String {
    let mut cur = s.to_owned();
    loop {
        let before = cur.len();
        for t in ci_tokens {
            if let Some(next) = remove_token_ci(&cur, t) {
                cur = next;
            }
        }
        for t in tokens {
            if cur.contains(t) {
                cur = cur.replace(t, "");
            }
        }
        if cur.contains(chars) {
            cur.retain(|c| !chars.contains(&c));
        }
        if cur.len() == before {
            return cur;
        }
    }
}

/// Removes the seeds' injection vectors from a filter value: the XSS tokens (`<script>`,
/// `javascript:`, `onload=`, `onerror=`), the SQL tokens (`--`, `/*`, `*/`, `;`, `'`, `"`)
/// and the command characters (`|`, `&`, `$`, `(`, `)`, `<`, `>`, `` ` ``, `\`), then
/// truncates to [`MAX_LENGTH`] characters.
///
/// ```
/// use mcp_sanitize::text::sanitize_filter_value;
/// assert_eq!(sanitize_filter_value("'; DROP TABLE users; --"), " DROP TABLE users ");
/// assert_eq!(sanitize_filter_value("app=web|nginx"), "app=webnginx");
/// assert_eq!(sanitize_filter_value("名前='値'"), "名前=値");
/// ```
pub fn sanitize_filter_value(s: &str) -> String {
    let mut chars: Vec<char> = SQL_CHARS.to_vec();
    chars.extend_from_slice(COMMAND_CHARS);
    let cleaned = remove_chars_and_tokens(s, &chars, SQL_TOKENS, XSS_TOKENS);
    let cleaned = strip_control(&cleaned).into_owned();
    truncate_chars(&cleaned, MAX_LENGTH).to_owned()
}

/// Keeps what a JSONPath expression needs (letters and digits of any script, space,
/// `$ . [ ] * ? @ ( ) = ! < > ' " , : _ - ~`) and drops every other character (`;`, `|`,
/// `&`, `` ` ``, `/`, `\`, `{`, `}`, `#`, `%`, controls, ...), then truncates to
/// [`MAX_LENGTH`] characters.
///
/// ```
/// use mcp_sanitize::text::sanitize_json_path;
/// assert_eq!(sanitize_json_path("$.data[*].name; rm -rf /"), "$.data[*].name rm -rf ");
/// assert_eq!(sanitize_json_path("$.items[?(@.price < 10)]"), "$.items[?(@.price < 10)]");
/// ```
pub fn sanitize_json_path(s: &str) -> String {
    let kept: String = s
        .chars()
        .filter(|&c| {
            c.is_alphanumeric()
                || matches!(
                    c,
                    ' ' | '$'
                        | '.'
                        | '['
                        | ']'
                        | '*'
                        | '?'
                        | '@'
                        | '('
                        | ')'
                        | '='
                        | '!'
                        | '<'
                        | '>'
                        | '\''
                        | '"'
                        | ','
                        | ':'
                        | '_'
                        | '-'
                        | '~'
                )
        })
        .collect();
    truncate_chars(&kept, MAX_LENGTH).to_owned()
}

fn is_identifier_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')
}

/// Keeps ASCII letters, digits, `_`, `-` and `.`, drops everything else, and truncates to
/// [`MAX_IDENTIFIER_LENGTH`] characters.
///
/// ```
/// use mcp_sanitize::text::sanitize_identifier;
/// assert_eq!(sanitize_identifier("my-pod_1; rm -rf /"), "my-pod_1rm-rf");
/// ```
pub fn sanitize_identifier(s: &str) -> String {
    let kept: String = s.chars().filter(|&c| is_identifier_char(c)).collect();
    truncate_chars(&kept, MAX_IDENTIFIER_LENGTH).to_owned()
}

/// Whether `s` is an identifier: 1 to [`MAX_IDENTIFIER_LENGTH`] characters, ASCII letters,
/// digits, `_`, `-` and `.`, starting and ending with a letter or digit, and not `.` or
/// `..` anywhere as a segment.
///
/// ```
/// use mcp_sanitize::text::validate_identifier;
/// assert!(validate_identifier("kube-system"));
/// assert!(!validate_identifier("../etc"));
/// assert!(!validate_identifier("a b"));
/// ```
pub fn validate_identifier(s: &str) -> bool {
    let len = s.len();
    if len == 0 || len > MAX_IDENTIFIER_LENGTH {
        return false;
    }
    let bytes = s.as_bytes();
    if !bytes[0].is_ascii_alphanumeric() || !bytes[len - 1].is_ascii_alphanumeric() {
        return false;
    }
    s.chars().all(is_identifier_char) && !s.contains("..")
}

/// Cleans a free-text search query: removes control characters, the SQL tokens (`;`, `'`,
/// `"`, `--`, `/*`, `*/`) and backslashes and backticks, collapses runs of whitespace into
/// one space, trims, and truncates to [`MAX_LENGTH`] characters. Letters of every script
/// and ordinary punctuation are kept.
///
/// ```
/// use mcp_sanitize::text::sanitize_query;
/// assert_eq!(sanitize_query("  rust   async\n'; DROP--"), "rust async DROP");
/// ```
pub fn sanitize_query(s: &str) -> String {
    let removed = remove_chars_and_tokens(s, &[';', '\'', '"', '\\', '`'], SQL_TOKENS, &[]);
    let no_ctrl = strip_control(&removed);
    let collapsed = no_ctrl.split_whitespace().collect::<Vec<_>>().join(" ");
    truncate_chars(&collapsed, MAX_LENGTH).to_owned()
}

/// Whether a string is acceptable input: at most [`MAX_LENGTH`] characters, no forbidden
/// control character, and no match of the built-in SQL injection, command injection, XSS
/// or path traversal rules (see [`crate::rules::Category`]).
///
/// ```
/// use mcp_sanitize::text::validate_string;
/// assert!(validate_string("normal input"));
/// assert!(validate_string("l'été à Paris"));
/// assert!(!validate_string("x' OR '1'='1"));
/// assert!(!validate_string("a\0b"));
/// ```
pub fn validate_string(s: &str) -> bool {
    if s.len() > MAX_LENGTH && s.chars().count() > MAX_LENGTH {
        return false;
    }
    if has_forbidden_control(s) {
        return false;
    }
    match crate::rules::builtin_engine() {
        Some(engine) => !engine.any_match(s),
        // The built-in rules are constants tested at build time; if they ever failed to
        // compile, refuse rather than accept unchecked input.
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_examples() {
        assert_eq!(
            sanitize_filter_value("'; DROP TABLE users; --"),
            " DROP TABLE users "
        );
        assert_eq!(
            sanitize_json_path("$.data[*].name; rm -rf /"),
            "$.data[*].name rm -rf "
        );
        assert!(validate_string("normal input"));
    }

    #[test]
    fn filter_value_removes_every_listed_vector() {
        assert_eq!(sanitize_filter_value("a;b'c\"d--e/*f*/g"), "abcdefg");
        assert_eq!(sanitize_filter_value("a|b&c$d(e)f<g>h`i\\j"), "abcdefghij");
        assert_eq!(
            sanitize_filter_value("<ScRiPt>x</script> JavaScript :y onLoad =z onerror=w"),
            "x y z w"
        );
        // Removal cannot assemble a new token.
        assert_eq!(sanitize_filter_value("-/**/-"), "");
        // The tokens go, then the characters: only the harmless word is left.
        assert_eq!(sanitize_filter_value("<scr<script>ipt>"), "script");
        assert_eq!(sanitize_filter_value("harmless text"), "harmless text");
    }

    #[test]
    fn truncation_never_cuts_a_character() {
        let s = "é".repeat(MAX_LENGTH + 10);
        let out = sanitize_filter_value(&s);
        assert_eq!(out.chars().count(), MAX_LENGTH);
        assert_eq!(truncate_chars("日本語", 2), "日本");
        assert_eq!(truncate_chars("abc", 10), "abc");
        let q = sanitize_query(&"😀".repeat(2000));
        assert_eq!(q.chars().count(), MAX_LENGTH);
    }

    #[test]
    fn json_path() {
        assert_eq!(sanitize_json_path("$.a|b&c`d`\\e{f}"), "$.abcdef");
        assert_eq!(sanitize_json_path("$['名前']"), "$['名前']");
    }

    #[test]
    fn identifiers() {
        assert_eq!(sanitize_identifier("Ünïcode-name"), "ncode-name");
        assert!(validate_identifier("a"));
        assert!(validate_identifier("a.b-c_d9"));
        assert!(!validate_identifier(""));
        assert!(!validate_identifier("-a"));
        assert!(!validate_identifier("a-"));
        assert!(!validate_identifier("a..b"));
        assert!(!validate_identifier("é"));
        assert!(!validate_identifier(&"a".repeat(MAX_IDENTIFIER_LENGTH + 1)));
        assert!(validate_identifier(&"a".repeat(MAX_IDENTIFIER_LENGTH)));
    }

    #[test]
    fn query() {
        assert_eq!(sanitize_query("a\u{0}b\u{85}c"), "abc");
        assert_eq!(sanitize_query("  x \t y  "), "x y");
    }

    #[test]
    fn validate() {
        assert!(!validate_string(&"a".repeat(MAX_LENGTH + 1)));
        assert!(validate_string(&"é".repeat(MAX_LENGTH)));
        assert!(!validate_string("x\u{7f}"));
        assert!(!validate_string("x\u{9b}"));
        assert!(validate_string("tab\tand\nnewline"));
        assert!(!validate_string("; rm -rf /"));
        assert!(!validate_string("../../etc/passwd"));
        assert!(!validate_string("javascript:alert(1)"));
    }

    fn by_chars(s: &str) -> bool {
        s.chars().any(is_forbidden_control)
    }

    #[test]
    fn prefilter_matches_the_char_definition() {
        // Every byte at every position of short values (read as two overlapping halves)
        // and of values with an overlapping last chunk.
        for len in [1, 3, 4, 7, 8, 15, 16, 17, 31, 33] {
            for pos in 0..len {
                for b in 0u8..0x80 {
                    let mut v = vec![b'a'; len];
                    v[pos] = b;
                    let s = std::str::from_utf8(&v).unwrap();
                    assert_eq!(
                        has_forbidden_control(s),
                        by_chars(s),
                        "{b:#x} at {pos}/{len}"
                    );
                }
                for c in [
                    '\u{80}', '\u{85}', '\u{9f}', '\u{a0}', '\u{bf}', 'é', '\u{100}',
                ] {
                    let mut s: String = "a".repeat(len - 1);
                    s.insert(pos.min(len - 1), c);
                    assert_eq!(has_forbidden_control(&s), by_chars(&s), "{c:?} in {s:?}");
                }
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn control_check_equals_char_definition(s in "(\\PC|[\\x00-\\x1f\\x7f\\u{80}-\\u{a0}]){0,70}") {
            proptest::prop_assert_eq!(has_forbidden_control(&s), by_chars(&s));
        }
    }

    #[test]
    fn control_detection() {
        assert!(has_forbidden_control("\u{1}"));
        assert!(has_forbidden_control("\u{80}"));
        assert!(has_forbidden_control("\u{9f}"));
        assert!(!has_forbidden_control("\u{a0}é"));
        assert_eq!(strip_control("a\u{0}\u{9f}b\n"), "ab\n");
    }
}
