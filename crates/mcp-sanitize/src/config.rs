//! Configuration: plain serde structs, validated when a layer is built.
//!
//! The keys follow the seeds' `sanitization` section (`enabled`, `max_length`,
//! `allowed_protocols`, `blocked_patterns`) and add the ones the suite needs. A YAML
//! example of every key with its default:
//!
//! ```yaml
//! sanitization:
//!   enabled: true                 # argument rules and URL rules (structure checks stay on)
//!   max_body_bytes: 4194304       # 413 above (ParseLayer's limit, passed on by with_parse)
//!   max_depth: 64                 # nesting depth of the whole body
//!   max_length: 1000              # characters per string (keys and values)
//!   max_object_keys: 1000
//!   max_array_items: 10000
//!   control_chars: reject         # reject | strip | allow  (NUL, C0, DEL, C1; not \t \n \r)
//!   allow_batch: false
//!   require_json_content_type: true
//!   protocol_versions: [2024-11-05, 2025-03-26, 2025-06-18, 2025-11-25, 2026-07-28]
//!   max_last_event_id_length: 256 # bytes; letters, digits and -_.:/+= only (400 otherwise)
//!   allowed_protocols: [http, https]
//!   max_url_length: 2048
//!   ssrf: { enabled: true, allow: [], allowed_hosts: [], allowed_networks: [] }
//!   rules:
//!     sql_injection: { enabled: true, action: reject }     # or strip
//!     command_injection: { enabled: true, action: reject }
//!     xss: { enabled: true, action: reject }
//!     path_traversal: { enabled: true, action: reject }
//!   blocked_patterns: ["';", "DROP TABLE", "rm -rf", "<script>",
//!                      { name: ssn, regex: '\b\d{3}-\d{2}-\d{4}\b', action: strip }]
//!   blocked_patterns_action: reject
//!   tool_overrides: { run_shell: { exempt: [command_injection] } }
//!   prompt_overrides: {}
//!   origin:
//!     allowed_origins: []         # exact origins, e.g. https://app.example.com
//!     allow_loopback_origins: true
//!     allowed_hosts: []           # empty: any Host
//!   sessions:                     # SessionGuardLayer (a layer of its own, after the session binding)
//!     enabled: true
//!     pin_protocol_version: at_most # at_most | exact | off: MCP-Protocol-Version vs the version negotiated at initialize
//!     max_subscriptions: 256      # resources/subscribe entries per session (429 above)
//!     max_sessions: 100000
//!     max_tracked_subscriptions: 1048576
//!     idle_timeout_seconds: 3600
//! ```

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::rules::{BlockedPattern, BuiltinRules, RuleAction};
use crate::ssrf::{DEFAULT_MAX_URL_LENGTH, SsrfConfig};

/// An invalid configuration: the key and the rule it breaks (never a secret).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration `{key}`: {rule}")]
pub struct ConfigError {
    /// The configuration key (`max_depth`, `blocked_patterns[2]`, ...).
    pub key: String,
    /// The rule the value breaks.
    pub rule: Cow<'static, str>,
}

impl ConfigError {
    /// A new error for `key`.
    pub fn invalid(key: impl Into<String>, rule: impl Into<Cow<'static, str>>) -> Self {
        Self {
            key: key.into(),
            rule: rule.into(),
        }
    }
}

/// What to do with control characters (NUL, C0 except tab / LF / CR, DEL, C1) in strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ControlCharPolicy {
    /// Refuse the request (400).
    #[default]
    Reject,
    /// Remove them and forward the rewritten body.
    Strip,
    /// Let them through.
    Allow,
}

/// A per-tool (or per-prompt) exemption from named rules, and only those.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct RuleOverride {
    /// Rule names the tool is exempt from: `sql_injection`, `command_injection`, `xss`,
    /// `path_traversal`, a blocked pattern's name, `url_scheme`, `url_length`,
    /// `url_invalid`, `ssrf`.
    pub exempt: Vec<String>,
}

/// The `MCP-Protocol-Version` values supported by default (`mcp_core`'s).
pub use mcp_core::transport::DEFAULT_PROTOCOL_VERSIONS;

/// Origin and Host rules (DNS rebinding protection), shared by
/// [`OriginGuardLayer`](crate::OriginGuardLayer) and [`SanitizeLayer`](crate::SanitizeLayer).
///
/// - A request without `Origin` passes (non-browser clients do not send it).
/// - A request with an `Origin` passes if the origin is in `allowed_origins` (compared
///   after normalisation: lowercase scheme and host, default port removed), or if
///   `allow_loopback_origins` is on and both the origin's host and the request's `Host`
///   are loopback (`localhost`, `127.0.0.0/8`, `[::1]`; any port: a local tool such as an
///   inspector page on another port). A DNS rebinding page has the attacker's name in
///   `Host`, never a loopback literal, so it is refused. `Origin: null` is refused.
/// - With a non-empty `allowed_hosts`, the `Host` header (or the URI authority for HTTP/2)
///   must be on it (`host` matches any port, `host:port` only that port).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OriginConfig {
    /// Allowed origins, e.g. `https://app.example.com`. No wildcard.
    pub allowed_origins: Vec<String>,
    /// Allow loopback origins when the request's Host is loopback (default true).
    pub allow_loopback_origins: bool,
    /// Allowed `Host` values; empty allows any (set it when the server has known names).
    pub allowed_hosts: Vec<String>,
}

impl Default for OriginConfig {
    fn default() -> Self {
        Self {
            allowed_origins: Vec::new(),
            allow_loopback_origins: true,
            allowed_hosts: Vec::new(),
        }
    }
}

/// The configuration of [`SanitizeLayer`](crate::SanitizeLayer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SanitizeConfig {
    /// The seeds' switch: when false the argument rules and URL rules are off; transport,
    /// JSON-RPC and limit checks stay on.
    pub enabled: bool,
    /// Body size limit in bytes (413 above). Enforced by `mcp_core::ParseLayer`;
    /// [`SanitizeLayer::with_parse`](crate::SanitizeLayer::with_parse) passes it on.
    pub max_body_bytes: usize,
    /// Maximum nesting depth of the body (a scalar at top level is depth 1).
    pub max_depth: usize,
    /// Maximum string length in characters (keys and values), the seeds' `max_length`.
    pub max_length: usize,
    /// Maximum members of one object.
    pub max_object_keys: usize,
    /// Maximum items of one array (a batch included).
    pub max_array_items: usize,
    /// Control characters in strings.
    pub control_chars: ControlCharPolicy,
    /// Accept JSON-RPC batch arrays (removed from MCP in 2025-06-18).
    pub allow_batch: bool,
    /// POST must carry `Content-Type: application/json` (415 otherwise). A transport
    /// check of `mcp_core::ParseLayer`, which [`SanitizeLayer::with_parse`](crate::SanitizeLayer::with_parse) configures with it.
    pub require_json_content_type: bool,
    /// Supported `MCP-Protocol-Version` values; an absent header is accepted. A transport
    /// check of `mcp_core::ParseLayer`, configured with it as `require_json_content_type`.
    pub protocol_versions: Vec<String>,
    /// The longest `Last-Event-ID` accepted, in bytes (default 256); longer, or with a
    /// character outside letters, digits and `-_.:/+=`, is refused with 400. A transport
    /// check of `mcp_core::ParseLayer`, configured with it as `require_json_content_type`.
    pub max_last_event_id_length: usize,
    /// URL schemes allowed in arguments (the seeds' `allowed_protocols`).
    pub allowed_protocols: Vec<String>,
    /// Maximum URL length.
    pub max_url_length: usize,
    /// SSRF rules.
    pub ssrf: SsrfConfig,
    /// Built-in rule sets.
    pub rules: BuiltinRules,
    /// The seeds' `blocked_patterns`: literal strings or `{name, literal|regex, action}`.
    pub blocked_patterns: Vec<BlockedPattern>,
    /// The action of blocked patterns that do not name one.
    pub blocked_patterns_action: RuleAction,
    /// Per-tool exemptions, by tool name: they apply to `params.arguments` of a
    /// `tools/call` of that tool only (not to its `_meta`, `inputResponses`, `task`, nor to
    /// other methods).
    pub tool_overrides: BTreeMap<String, RuleOverride>,
    /// Per-prompt exemptions, by prompt name: `params.arguments` of a `prompts/get` of
    /// that prompt only.
    pub prompt_overrides: BTreeMap<String, RuleOverride>,
    /// Origin and Host rules.
    pub origin: OriginConfig,
    /// Per-session rules ([`SessionGuardLayer`](crate::SessionGuardLayer), built
    /// separately with [`SessionGuardLayer::new`](crate::SessionGuardLayer::new): it
    /// belongs after the session binding, which [`SanitizeLayer`](crate::SanitizeLayer)
    /// does not know about).
    pub sessions: crate::session_guard::SessionGuardConfig,
}

impl Default for SanitizeConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_body_bytes: mcp_core::DEFAULT_BODY_LIMIT,
            max_depth: 64,
            max_length: crate::text::MAX_LENGTH,
            max_object_keys: 1000,
            max_array_items: 10_000,
            control_chars: ControlCharPolicy::Reject,
            allow_batch: false,
            require_json_content_type: true,
            protocol_versions: DEFAULT_PROTOCOL_VERSIONS
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            max_last_event_id_length: mcp_core::transport::DEFAULT_MAX_LAST_EVENT_ID_LEN,
            allowed_protocols: vec!["http".into(), "https".into()],
            max_url_length: DEFAULT_MAX_URL_LENGTH,
            ssrf: SsrfConfig::default(),
            rules: BuiltinRules::default(),
            blocked_patterns: Vec::new(),
            blocked_patterns_action: RuleAction::Reject,
            tool_overrides: BTreeMap::new(),
            prompt_overrides: BTreeMap::new(),
            origin: OriginConfig::default(),
            sessions: crate::session_guard::SessionGuardConfig::default(),
        }
    }
}

impl SanitizeConfig {
    /// The transport checks this configuration asks for (`protocol_versions`,
    /// `require_json_content_type`; every other check on), for a `mcp_core::ParseLayer`
    /// used with [`SanitizeLayer`](crate::SanitizeLayer).
    pub fn transport_checks(&self) -> mcp_core::TransportChecks {
        mcp_core::TransportChecks::new()
            .protocol_versions(&self.protocol_versions)
            .content_type(self.require_json_content_type)
            .max_last_event_id_len(self.max_last_event_id_length)
    }

    /// Checks the plain limits (the rules, URL policy and origins are checked when
    /// compiled by [`SanitizeLayer::new`](crate::SanitizeLayer::new)).
    pub(crate) fn check_limits(&self) -> Result<(), ConfigError> {
        let positive = [
            ("max_body_bytes", self.max_body_bytes),
            ("max_depth", self.max_depth),
            ("max_length", self.max_length),
            ("max_object_keys", self.max_object_keys),
            ("max_array_items", self.max_array_items),
            ("max_last_event_id_length", self.max_last_event_id_length),
        ];
        for (key, v) in positive {
            if v == 0 {
                return Err(ConfigError::invalid(key, "must be greater than 0"));
            }
        }
        if self.max_depth < 3 {
            // A JSON-RPC request with params is three levels deep.
            return Err(ConfigError::invalid("max_depth", "must be at least 3"));
        }
        if self.max_depth > 10_000 {
            return Err(ConfigError::invalid("max_depth", "must be at most 10000"));
        }
        self.sessions
            .validate()
            .map_err(|e| ConfigError::invalid(format!("sessions.{}", e.key), e.rule))?;
        for (i, v) in self.protocol_versions.iter().enumerate() {
            if v.is_empty() || !v.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(ConfigError::invalid(
                    format!("protocol_versions[{i}]"),
                    "must be visible ASCII, e.g. 2025-06-18",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The README lists every key with its default: parsed, it is the default.
    #[test]
    fn readme_lists_the_defaults() {
        let readme = include_str!("../README.md");
        let block = mcp_testkit::fenced_block(readme, "with its default:", "yaml");
        let mut doc: serde_yaml_ng::Mapping = serde_yaml_ng::from_str(block).unwrap();
        let section = doc.remove("sanitization").unwrap();
        let parsed: SanitizeConfig = serde_yaml_ng::from_value(section).unwrap();
        assert_eq!(parsed, SanitizeConfig::default());
    }
}
