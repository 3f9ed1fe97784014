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
        Some(engine) => !engine.any_match(s) && !engine.view_match(s),
        // The built-in rules are constants tested at build time; if they ever failed to
        // compile, refuse rather than accept unchecked input.
        None => false,
    }
}

/// Most rounds of percent and HTML-entity decoding in [`normalize_for_rules`]: enough for
/// double and triple encodings (`%252e`, `&amp;#x3c;`), bounded so that a value cannot
/// make the view's cost grow with its nesting.
pub const MAX_DECODE_ROUNDS: usize = 4;

/// The view of a value that the argument rules match, besides the value itself (which is
/// what is forwarded, unchanged): percent escapes (`%2e`, `%u002e`, overlong `%c0%ae`)
/// and HTML character references (named, decimal, hex, with and without `;`, as browsers
/// decode them) decoded, repeatedly up to [`MAX_DECODE_ROUNDS`]; then Unicode NFKC
/// (fullwidth and compatibility forms to ASCII), default-ignorable characters (zero-width
/// spaces, joiners, bidi controls, soft hyphen) removed and other Unicode spaces made
/// ASCII spaces; then path separators normalized: runs of `/` or `\` folded to one and
/// `.` segments removed (`..` is kept). `Cow::Borrowed` when nothing changes, which is
/// the case for any ASCII value without `%`, `&` or such separators.
///
/// ```
/// use mcp_sanitize::text::normalize_for_rules;
///
/// assert_eq!(normalize_for_rules("/etc//./passwd"), "/etc/passwd");
/// assert_eq!(normalize_for_rules("..%252f"), "../");
/// assert_eq!(normalize_for_rules("java&#x09;script&colon;"), "java\tscript:");
/// assert_eq!(normalize_for_rules("\u{ff0f}etc\u{ff0f}passwd"), "/etc/passwd");
/// assert_eq!(normalize_for_rules("DROP\u{200b}\u{a0}TABLE"), "DROP TABLE");
/// assert!(matches!(normalize_for_rules("plain text"), std::borrow::Cow::Borrowed(_)));
/// ```
pub fn normalize_for_rules(s: &str) -> Cow<'_, str> {
    let mut cur: Cow<'_, str> = Cow::Borrowed(s);
    for _ in 0..MAX_DECODE_ROUNDS {
        let mut changed = false;
        if let Some(d) = percent_decode(&cur) {
            cur = Cow::Owned(d);
            changed = true;
        }
        if cur.contains('&') {
            let d = htmlize::unescape(&*cur);
            if d != *cur {
                let d = d.into_owned();
                cur = Cow::Owned(d);
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    if !cur.is_ascii() && unicode_view_differs(&cur) {
        let u = unicode_view(&cur);
        cur = Cow::Owned(u);
    }
    if let Some(p) = collapse_path(&cur) {
        cur = Cow::Owned(p);
    }
    cur
}

/// Whitespace runs (any Unicode white space) folded to one ASCII space: the view the
/// configured blocked patterns also see, so that `DROP\tTABLE` and `DROP  TABLE` match a
/// `DROP TABLE` pattern.
///
/// ```
/// use mcp_sanitize::text::fold_whitespace;
///
/// assert_eq!(fold_whitespace("DROP\t \n TABLE"), "DROP TABLE");
/// ```
pub fn fold_whitespace(s: &str) -> Cow<'_, str> {
    let b = s.as_bytes();
    let needs = s
        .char_indices()
        .any(|(i, c)| c.is_whitespace() && (c != ' ' || b.get(i + 1) == Some(&b' ')));
    if !needs {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut in_space = false;
    for c in s.chars() {
        if c.is_whitespace() {
            if !in_space {
                out.push(' ');
            }
            in_space = true;
        } else {
            out.push(c);
            in_space = false;
        }
    }
    Cow::Owned(out)
}

/// Default-ignorable code points (Unicode `Default_Ignorable_Code_Point`): invisible, so
/// a pattern must match as if they were not there.
fn is_default_ignorable(c: char) -> bool {
    matches!(
        c,
        '\u{ad}'
            | '\u{34f}'
            | '\u{61c}'
            | '\u{115f}'
            | '\u{1160}'
            | '\u{17b4}'
            | '\u{17b5}'
            | '\u{180b}'..='\u{180f}'
            | '\u{200b}'..='\u{200f}'
            | '\u{202a}'..='\u{202e}'
            | '\u{2060}'..='\u{206f}'
            | '\u{3164}'
            | '\u{fe00}'..='\u{fe0f}'
            | '\u{feff}'
            | '\u{ffa0}'
            | '\u{fff0}'..='\u{fff8}'
            | '\u{1bca0}'..='\u{1bca3}'
            | '\u{1d173}'..='\u{1d17a}'
            | '\u{e0000}'..='\u{e0fff}'
    )
}

/// Whether [`unicode_view`] may change `s`: not already NFKC by the quick check, or a
/// default-ignorable character or a non-ASCII space. Text in precomposed scripts (`café`,
/// `naïve`, CJK) is usually NFKC already and is then not copied.
pub(crate) fn unicode_view_differs(s: &str) -> bool {
    use unicode_normalization::{IsNormalized, is_nfkc_quick};
    // Most non-ASCII text is ASCII plus precomposed letters that NFKC keeps, none of them
    // a combining mark, a space or invisible: decided without the normalization tables.
    if ascii_or_stable_letters(s) {
        return false;
    }
    is_nfkc_quick(s.chars()) != IsNormalized::Yes
        || s.chars()
            .any(|c| is_default_ignorable(c) || (c.is_whitespace() && !c.is_ascii()))
}

/// Whether every character of `s` is ASCII or a [`nfkc_stable_letter`]: ASCII runs are
/// skipped eight bytes at a time, only the other characters are decoded.
fn ascii_or_stable_letters(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if let Some(w) = b.get(i..).and_then(|r| r.first_chunk::<8>()) {
            let w = u64::from_le_bytes(*w);
            if w & 0x8080_8080_8080_8080 == 0 {
                i += 8;
                continue;
            }
            // The first non-ASCII byte of the word (little endian: the lowest set bit).
            i += (w & 0x8080_8080_8080_8080).trailing_zeros() as usize / 8;
        } else if b[i].is_ascii() {
            i += 1;
            continue;
        }
        // `i` is at the lead byte of a non-ASCII character (ASCII bytes and whole
        // characters were skipped), so a character boundary.
        match s.get(i..).and_then(|r| r.chars().next()) {
            Some(c) if nfkc_stable_letter(c) => i += c.len_utf8(),
            _ => return false,
        }
    }
    true
}

/// Letters that are NFKC, start no composition and are neither spaces nor invisible:
/// Latin-1 letters (U+00C0..U+00FF), Latin Extended-A but its compatibility characters,
/// basic Cyrillic, Hiragana, Katakana, CJK unified ideographs and Hangul syllables; and
/// the typographic dashes and quotes, the bullet and the euro sign of ordinary prose.
fn nfkc_stable_letter(c: char) -> bool {
    matches!(c,
        '\u{c0}'..='\u{ff}'
        | '\u{2013}'
        | '\u{2014}'
        | '\u{2018}'
        | '\u{2019}'
        | '\u{201c}'
        | '\u{201d}'
        | '\u{2022}'
        | '\u{20ac}'
        | '\u{100}'..='\u{131}'
        | '\u{134}'..='\u{13e}'
        | '\u{141}'..='\u{148}'
        | '\u{14a}'..='\u{17e}'
        | '\u{410}'..='\u{44f}'
        | '\u{3041}'..='\u{3096}'
        | '\u{30a1}'..='\u{30fa}'
        | '\u{4e00}'..='\u{9fff}'
        | '\u{ac00}'..='\u{d7a3}')
}

/// NFKC, default-ignorable characters removed, Unicode spaces as ASCII spaces.
fn unicode_view(s: &str) -> String {
    use unicode_normalization::UnicodeNormalization;
    s.chars()
        .filter(|&c| !is_default_ignorable(c))
        .nfkc()
        .filter(|&c| !is_default_ignorable(c))
        .map(|c| {
            if c.is_whitespace() && !c.is_ascii() {
                ' '
            } else {
                c
            }
        })
        .collect()
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// One round of percent decoding: `%XX`, `%uXXXX`, and overlong two-byte UTF-8 forms of
/// ASCII (`%c0%ae` is `.`), which some decoders accept. `None` when nothing decodes.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    memchr::memchr(b'%', b)?;
    let mut out: Vec<u8> = Vec::with_capacity(b.len());
    let mut i = 0;
    let mut changed = false;
    while i < b.len() {
        if b[i] == b'%' {
            if let (Some(h), Some(l)) = (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            ) {
                out.push(h << 4 | l);
                i += 3;
                changed = true;
                continue;
            }
            if matches!(b.get(i + 1), Some(b'u' | b'U'))
                && let Some(digits) = b.get(i + 2..i + 6)
                && let Some(cp) = digits
                    .iter()
                    .try_fold(0u32, |acc, &d| hex(d).map(|v| acc << 4 | u32::from(v)))
                && let Some(c) = char::from_u32(cp)
            {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                i += 6;
                changed = true;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    if !changed {
        return None;
    }
    // Overlong two-byte forms of ASCII (0xC0 or 0xC1, then a continuation byte).
    let mut fixed = Vec::with_capacity(out.len());
    let mut j = 0;
    while j < out.len() {
        match (out[j], out.get(j + 1)) {
            (lead @ (0xc0 | 0xc1), Some(&cont)) if cont & 0xc0 == 0x80 => {
                fixed.push(((lead & 0x1f) << 6) | (cont & 0x3f));
                j += 2;
            }
            (c, _) => {
                fixed.push(c);
                j += 1;
            }
        }
    }
    Some(String::from_utf8_lossy(&fixed).into_owned())
}

fn is_sep(b: u8) -> bool {
    b == b'/' || b == b'\\'
}

/// Folds runs of path separators to one and removes `.` segments after a separator.
/// `None` when nothing changes.
pub(crate) fn collapse_path(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let needs = memchr::memchr2_iter(b'/', b'\\', b)
        .any(|i| b.get(i + 1).is_some_and(|&n| is_sep(n) || n == b'.'));
    if !needs {
        return None;
    }
    let mut out: Vec<u8> = Vec::with_capacity(b.len());
    let mut i = 0;
    let mut changed = false;
    while i < b.len() {
        let c = b[i];
        out.push(c);
        i += 1;
        if !is_sep(c) {
            continue;
        }
        loop {
            match b.get(i) {
                Some(&n) if is_sep(n) => i += 1,
                Some(b'.') if b.get(i + 1).is_none_or(|&n| is_sep(n)) => i += 1,
                _ => break,
            }
            changed = true;
        }
    }
    if !changed {
        return None;
    }
    // Only ASCII bytes were removed: the rest is still valid UTF-8.
    String::from_utf8(out).ok()
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

        /// The word-at-a-time check equals the check of every character, on ASCII with
        /// letters NFKC keeps and characters it does not, at every alignment.
        #[test]
        fn stable_check_equals_char_check(
            s in "[a-z /%&\u{e9}\u{fc}\u{416}\u{3042}\u{4e2d}\u{d55c}\u{301}\u{ff0f}\u{200b}\u{a0}\u{fb01}\u{1f600}]{0,40}"
        ) {
            let by_char = s.chars().all(|c| c.is_ascii() || nfkc_stable_letter(c));
            proptest::prop_assert_eq!(ascii_or_stable_letters(&s), by_char, "{:?}", s);
        }

        #[test]
        fn stable_check_equals_char_check_on_any_string(s in proptest::prelude::any::<String>()) {
            let by_char = s.chars().all(|c| c.is_ascii() || nfkc_stable_letter(c));
            proptest::prop_assert_eq!(ascii_or_stable_letters(&s), by_char, "{:?}", s);
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

    /// The letters taken as NFKC without the tables are NFKC, alone and after ASCII.
    #[test]
    fn stable_letters_are_nfkc() {
        use unicode_normalization::UnicodeNormalization;
        for c in (0x80u32..0x1_0000).filter_map(char::from_u32) {
            if super::nfkc_stable_letter(c) {
                let s = format!("a{c}b{c}");
                assert_eq!(s.nfkc().collect::<String>(), s, "{c:?}");
                assert!(
                    !c.is_whitespace() && !super::is_default_ignorable(c),
                    "{c:?}"
                );
            }
        }
    }
}
