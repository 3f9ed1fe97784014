//! Request validation, argument rules, URL/SSRF rules, the Origin/Host guard, security
//! response headers and result redaction for MCP servers and gateways.
//!
//! MCP tool arguments flow from a model into shell commands, SQL, URLs and file paths;
//! this crate is the filter for them. It works on the request parsed once by
//! `mcp_core::ParseLayer` (an [`mcp_core::McpRequest`] in the request extensions) and
//! never parses the body again.
//!
//! | layer | what it does |
//! |---|---|
//! | [`SanitizeLayer`] | Origin/Host guard, `mcp_core`'s transport checks (method, MCP headers, `MCP-Protocol-Version`, `Content-Type` 415, `Accept` 406; `ParseLayer` applies them too), `Mcp-Method`/`Mcp-Name` agreement, JSON-RPC 2.0 structure, limits (depth, string length, keys, items), control characters, argument rules and URL/SSRF rules, strip rewrites |
//! | [`SanitizeLayer::with_parse`] | the same, with `ParseLayer` (body limit 413, parse once) inside, header checks before the body is read |
//! | [`OriginGuardLayer`] | the Origin/Host guard alone, for every method (the gateway puts it before authentication) |
//! | [`SecurityHeadersLayer`] | security response headers, HSTS over TLS only, `Server`/`X-Powered-By` removed |
//! | [`SessionGuardLayer`] | per MCP session: `MCP-Protocol-Version` pinned to the version negotiated at `initialize`, `resources/subscribe` entries capped |
//! | [`ResultScanLayer`] | redaction of secrets and PII in responses as they stream: SSE event by event, other bodies segment by segment with bounded memory |
//!
//! The plain functions of the seeds are in [`text`] (`sanitize_filter_value`,
//! `sanitize_json_path`, `sanitize_identifier`, `sanitize_query`, `validate_string`,
//! `validate_identifier`), the URL rules in [`ssrf`].
//!
//! Rejections are built with [`mcp_core::Rejection`]: 400 with JSON-RPC -32600 (invalid
//! request), -32602 (invalid params, and rule matches: `BlockedByRule`), 403 (Origin,
//! Host), 413 (body size, from `ParseLayer`), 415 (`Content-Type`). A rule match names the
//! rule and the JSON path in the error message and in the `Denial` detail recorded by
//! audit (`rule=ssrf path=$.params.arguments.url`), never the value.
//!
//! # Where the rules apply, and their limits
//!
//! - Content rules (built-in sets, blocked patterns) and URL rules apply to string values
//!   under `params.arguments` of `tools/call` and `prompts/get` (at any depth) and to
//!   `params.uri` of `resources/read|subscribe|unsubscribe`. Object keys get the length
//!   and control-character checks, not the content rules. Other methods get the
//!   structure, limit and control-character checks only.
//! - URLs are found as `scheme://...` anywhere in a value (also inside prose). A bare
//!   address without a scheme (`"169.254.169.254"`) or a protocol-relative `//host` is not
//!   treated as a URL. Resource URIs get the SSRF host check but not the scheme list (their
//!   schemes are the server's own).
//! - No DNS resolution happens on the request path: a name that resolves to a private
//!   address, or changes its answer later (DNS rebinding), passes. The fetching component
//!   must check the address it connects to with [`UrlPolicy::check_ip`].
//! - The built-in rule sets are heuristics for model-generated arguments, anchored on
//!   syntax (quotes, separators, `..` segments, tags); they are no substitute for
//!   parameterised queries, argument vectors instead of shell strings, and path
//!   canonicalisation in the tool itself. A tool that legitimately takes such syntax is
//!   exempted from one rule with `tool_overrides`.
//! - Invalid UTF-8 and lone surrogate escapes never reach the rules: `serde_json` refuses
//!   them, so `ParseLayer` answers -32700. The control-character policy (`reject`, `strip`,
//!   `allow`) covers NUL, the other C0 controls except tab / LF / CR, DEL and C1.
//! - Nesting: `serde_json` refuses more than 128 levels while parsing (-32700, without
//!   recursion trouble); below that, `max_depth` (default 64) is checked by an iterative
//!   walk.
//!
//! ```
//! use axum::{Router, routing::post};
//! use mcp_sanitize::{SanitizeLayer, SecurityHeadersLayer};
//!
//! let sanitize = SanitizeLayer::builder()
//!     .allowed_host("localhost:8080")
//!     .exempt_tool("run_shell", "command_injection")
//!     .build()
//!     .unwrap();
//! let app: Router = Router::new()
//!     .route("/mcp", post(|| async { "ok" }))
//!     .layer(sanitize.with_parse())
//!     .layer(SecurityHeadersLayer::default());
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

mod classify;
pub mod config;
mod future;
pub mod headers;
pub mod layer;
pub mod origin;
pub mod rules;
pub mod scan;
pub mod session_guard;
pub mod shell;
mod splice;
pub mod ssrf;
mod supplement;
pub mod text;
pub mod validate;

pub use config::{
    ConfigError, ControlCharPolicy, DEFAULT_PROTOCOL_VERSIONS, OriginConfig, RuleOverride,
    SanitizeConfig,
};
pub use future::ResponseFuture;
pub use headers::{SecurityHeaders, SecurityHeadersConfig, SecurityHeadersLayer};
pub use layer::{
    ParseSanitizeLayer, Precheck, Sanitize, SanitizeBuilder, SanitizeLayer, SanitizeOutcome,
    is_json_content_type,
};
pub use origin::{OriginChecked, OriginGuard, OriginGuardLayer};
pub use rules::{BlockedPattern, BuiltinRule, BuiltinRules, Category, RuleAction};
pub use scan::{
    DEFAULT_MAX_MATCH_BYTES, NamedPattern, OVER_WINDOW_MARKER, OverBudget, Redactor, ResultScan,
    ResultScanConfig, ResultScanLayer, ScanBody, SecretKind, StreamRedactor,
};
pub use session_guard::{
    GuardBody, GuardFuture, SessionGuard, SessionGuardConfig, SessionGuardLayer, VersionPin,
};
pub use ssrf::{AddressClass, ResolveConfig, SsrfConfig, UrlPolicy, UrlViolation};
pub use validate::Violation;
