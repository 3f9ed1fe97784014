//! [`AuthorizeLayer`]: which principals and scopes may call which MCP methods, tools,
//! resources and prompts.
//!
//! Place it after [`mcp_core::ParseLayer`] (it reads the parsed [`McpRequest`]) and
//! after the [`AuthLayer`](crate::AuthLayer) (it reads the [`Principal`]).
//!
//! A [`Policy`] is a list of allow rules and a list of deny rules. A message is allowed
//! when an allow rule matches it and no deny rule does: **deny wins**, and anything no
//! allow rule names is denied. A rule matches when
//!
//! - the principal matches one of `principals` (any principal when empty): entries are
//!   patterns over [qualified ids](mcp_core::Principal::qualified_id) (`apikey:ops`,
//!   `jwt:https://idp.example#alice`, `mtls:spiffe://example.org/*`, `*`), or `*:<id>`
//!   for a bare id proven by any method (logged as a warning at build). A bare entry
//!   (`ops`) is resolved at build by [`PolicyBuilder::principal_sources`]: it is accepted
//!   only when exactly one configured authentication method can produce it, and refused
//!   otherwise (and always when no sources are given), so a certificate `CN=ops` never
//!   gets the rule written for the API key `ops`,
//! - the principal holds **all** of `scopes` (no requirement when empty),
//! - the method matches one of `methods`; when `methods` is empty, `tools` implies
//!   `tools/call`, `resources` implies `resources/read|subscribe|unsubscribe` and
//!   `prompts` implies `prompts/get`, and a rule naming none of them matches any method,
//! - and the tool name, resource URI or prompt name matches the rule's list for that
//!   kind (any when that list is empty).
//!
//! Patterns are literal strings where `*` matches any run of characters
//! (`"read_*"`, `"file:///public/*"`, `"*"`).
//!
//! Lifecycle messages (`initialize`, `ping`, `notifications/*`) are allowed unless a deny
//! rule matches them ([`PolicyBuilder::allow_lifecycle`] turns this off), and JSON-RPC
//! responses sent by the client (answers to server requests) are allowed. In a batch,
//! every message must be allowed.
//!
//! **Who may hold a session** ([`SessionRule`], `sessions` in the configuration): an
//! `initialize` opens a session at the upstream, which holds it (memory, often for an
//! hour) whatever the principal may do in it. By default
//! ([`SessionRequirement::AnyMethod`]) a principal that no allow rule lets call any method
//! other than the lifecycle ones (and that no deny rule denies everything) is refused
//! `initialize`, and so are its `GET` (SSE stream) and `DELETE` requests: 403 with a
//! JSON-RPC error, detail `rule=sessions`. [`SessionRule::scopes`] adds scopes a
//! principal must hold to open a session (403 `insufficient_scope` with a challenge when
//! missing); [`SessionRequirement::Anyone`] drops the first requirement. `GET` and
//! `DELETE` of a session are further held to its owner by
//! [`SessionBindingLayer`](crate::SessionBindingLayer).
//!
//! A denied call gets 403 and a JSON-RPC error echoing the message's id; the
//! [`mcp_core::Denial`] detail names the rule. When the only thing missing was a scope,
//! the answer is 403 `insufficient_scope` with a `WWW-Authenticate: Bearer` challenge
//! naming the scopes (as MCP authorization asks).
//!
//! ```
//! use mcp_auth::{AuthorizeLayer, Policy, Rule};
//! let policy = Policy::builder()
//!     .allow(Rule::new("discover").methods(["tools/list", "resources/list", "prompts/list"]))
//!     .allow(Rule::new("search").tools(["search", "read_*"]).scopes(["mcp:tools"]))
//!     .allow(Rule::new("admin").principals(["jwt:https://idp.example#admin@example.com"]).methods(["*"]))
//!     .deny(Rule::new("no-shell").tools(["shell*"]))
//!     .build()
//!     .unwrap();
//! let layer = AuthorizeLayer::new(policy);
//! # let _ = layer;
//! ```

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::WWW_AUTHENTICATE;
use http::{Method, Request, Response};
use mcp_core::{
    McpMessage, McpRequest, MessageKind, Principal, PrincipalEntry, PrincipalSources, Rejection,
    RejectionReason, Target,
};
use serde::Deserialize;
use tower_layer::Layer;
use tower_service::Service;

use crate::error::ConfigError;
use crate::future::ResponseFuture;

/// Matches `text` against `pattern`, where `*` matches any run of characters.
///
/// ```
/// use mcp_auth::authorize::glob_match;
/// assert!(glob_match("read_*", "read_file"));
/// assert!(glob_match("*", ""));
/// assert!(!glob_match("read_*", "write_file"));
/// ```
pub fn glob_match(pattern: &str, text: &str) -> bool {
    mcp_core::principal::glob_match(pattern, text)
}

/// One rule (see the [module documentation](self)). Deserializes from the gateway's
/// configuration with camelCase keys.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    /// The rule's name, recorded when it decides.
    pub name: String,
    /// Principal patterns (any principal when empty): qualified (`apikey:ops`), `*:<id>`
    /// for any method, or bare when exactly one configured method can produce it (see the
    /// [module documentation](self)).
    pub principals: Vec<String>,
    /// Scopes the principal must all hold.
    pub scopes: Vec<String>,
    /// Method patterns.
    pub methods: Vec<String>,
    /// Tool name patterns (`tools/call`).
    pub tools: Vec<String>,
    /// Resource URI patterns (`resources/read`, `subscribe`, `unsubscribe`).
    pub resources: Vec<String>,
    /// Prompt name patterns (`prompts/get`).
    pub prompts: Vec<String>,
}

fn strings<I: IntoIterator<Item = T>, T: Into<String>>(i: I) -> Vec<String> {
    i.into_iter().map(Into::into).collect()
}

fn any(patterns: &[String], text: &str) -> bool {
    patterns.iter().any(|p| glob_match(p, text))
}

const RESOURCE_METHODS: &[&str] = &[
    "resources/read",
    "resources/subscribe",
    "resources/unsubscribe",
];

/// Whether `method` acts on a named target (`params.name` or `params.uri`).
fn needs_target(method: &str) -> bool {
    method == "tools/call" || method == "prompts/get" || RESOURCE_METHODS.contains(&method)
}

/// Whether the rules cannot judge `msg`: a method or a target with a control character
/// (a reader that stops at NUL, or trims, reads another name than the rules saw), or a
/// method that acts on a target without a string one (an array `name`, positional
/// params: a deny rule naming tools would not match it, and an upstream may still read a
/// target from it). Such a message is refused whatever the rules say.
fn unjudgeable(msg: &McpMessage) -> bool {
    let Some(method) = msg.method() else {
        return false;
    };
    if method.chars().any(char::is_control) {
        return true;
    }
    match msg.target() {
        Some(t) => t.name().chars().any(char::is_control),
        None => needs_target(method),
    }
}

impl Rule {
    /// An empty rule named `name` (matching everything until narrowed).
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ..Self::default()
        }
    }

    /// Principal patterns (qualified ids, `*:<id>`, or bare; see [`Rule::principals`]).
    pub fn principals<I: IntoIterator<Item = T>, T: Into<String>>(mut self, p: I) -> Self {
        self.principals = strings(p);
        self
    }

    /// Required scopes (all of them).
    pub fn scopes<I: IntoIterator<Item = T>, T: Into<String>>(mut self, s: I) -> Self {
        self.scopes = strings(s);
        self
    }

    /// Method patterns.
    pub fn methods<I: IntoIterator<Item = T>, T: Into<String>>(mut self, m: I) -> Self {
        self.methods = strings(m);
        self
    }

    /// Tool name patterns.
    pub fn tools<I: IntoIterator<Item = T>, T: Into<String>>(mut self, t: I) -> Self {
        self.tools = strings(t);
        self
    }

    /// Resource URI patterns.
    pub fn resources<I: IntoIterator<Item = T>, T: Into<String>>(mut self, r: I) -> Self {
        self.resources = strings(r);
        self
    }

    /// Prompt name patterns.
    pub fn prompts<I: IntoIterator<Item = T>, T: Into<String>>(mut self, p: I) -> Self {
        self.prompts = strings(p);
        self
    }

    fn has_scopes(&self, p: &Principal) -> bool {
        self.scopes.iter().all(|s| p.has_scope(s))
    }

    fn matches_method(&self, method: &str) -> bool {
        if !self.methods.is_empty() {
            return any(&self.methods, method);
        }
        let (t, r, p) = (
            !self.tools.is_empty(),
            !self.resources.is_empty(),
            !self.prompts.is_empty(),
        );
        if !(t || r || p) {
            return true;
        }
        (t && method == "tools/call")
            || (r && RESOURCE_METHODS.contains(&method))
            || (p && method == "prompts/get")
    }

    fn matches_target(&self, method: &str, target: Option<&Target>) -> bool {
        match target {
            Some(Target::Tool(n)) => self.tools.is_empty() || any(&self.tools, n),
            Some(Target::Resource(u)) => self.resources.is_empty() || any(&self.resources, u),
            Some(Target::Prompt(n)) => self.prompts.is_empty() || any(&self.prompts, n),
            // A call whose target is missing cannot satisfy a rule that names targets.
            None => match method {
                "tools/call" => self.tools.is_empty(),
                "prompts/get" => self.prompts.is_empty(),
                m if RESOURCE_METHODS.contains(&m) => self.resources.is_empty(),
                _ => true,
            },
        }
    }

    pub(crate) fn matches_call(&self, msg: &McpMessage) -> bool {
        let Some(method) = msg.method() else {
            return false;
        };
        self.matches_method(method) && self.matches_target(method, msg.target())
    }
}

/// What a principal needs to open an MCP session (see [`SessionRule`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum SessionRequirement {
    /// `anyMethod` (the default): some allow rule lets the principal call a method other
    /// than `initialize`, `ping` and `notifications/*`, and no deny rule denies it
    /// everything.
    #[default]
    AnyMethod,
    /// `anyone`: every authenticated principal (only [`SessionRule::scopes`] apply). A
    /// principal that may call nothing can then hold sessions at the upstream.
    Anyone,
}

/// `sessions`: who may open an MCP session (`initialize`) and send `GET` (SSE stream) and
/// `DELETE` requests (see the [module documentation](self)).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct SessionRule {
    /// `anyMethod` (default) or `anyone`.
    pub require: SessionRequirement,
    /// Scopes the principal must all hold as well (none by default), such as
    /// `mcp:session`.
    pub scopes: Vec<String>,
}

impl SessionRule {
    /// Whether this rule lets a principal that may call nothing open sessions
    /// (`require: anyone` without scopes): a weakening a deployment should log.
    pub fn is_open_to_anyone(&self) -> bool {
        self.require == SessionRequirement::Anyone && self.scopes.is_empty()
    }
}

/// Allow and deny rules, as deserialized from configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyConfig {
    /// Allow rules.
    pub allow: Vec<Rule>,
    /// Deny rules (they win).
    pub deny: Vec<Rule>,
    /// Allow `initialize`, `ping` and `notifications/*` without a rule (default true).
    pub allow_lifecycle: Option<bool>,
    /// Who may open a session (default: a principal that may call some method).
    pub sessions: SessionRule,
}

impl PolicyConfig {
    /// Validates and builds the policy; bare principal entries are refused (see
    /// [`build_for`](Self::build_for)).
    pub fn build(&self) -> Result<Policy, ConfigError> {
        self.build_with(None)
    }

    /// Validates and builds the policy, resolving bare principal entries against what the
    /// configured authentication can produce (`AuthConfig::principal_sources`).
    pub fn build_for(&self, sources: &PrincipalSources) -> Result<Policy, ConfigError> {
        self.build_with(Some(sources))
    }

    fn build_with(&self, sources: Option<&PrincipalSources>) -> Result<Policy, ConfigError> {
        let mut b = Policy::builder()
            .allow_lifecycle(self.allow_lifecycle.unwrap_or(true))
            .sessions(self.sessions.clone());
        if let Some(s) = sources {
            b = b.principal_sources(s.clone());
        }
        for r in &self.allow {
            b = b.allow(r.clone());
        }
        for r in &self.deny {
            b = b.deny(r.clone());
        }
        b.build()
    }
}

/// A validated authorization policy. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Policy {
    inner: Arc<PolicyInner>,
}

/// A rule with its principal entries resolved.
#[derive(Debug)]
struct Compiled {
    rule: Rule,
    principals: Vec<PrincipalEntry>,
}

impl Compiled {
    fn matches_principal(&self, p: &Principal) -> bool {
        self.rule.principals.is_empty() || self.principals.iter().any(|e| e.matches(p))
    }
}

#[derive(Debug)]
struct PolicyInner {
    allow: Vec<Compiled>,
    deny: Vec<Compiled>,
    allow_lifecycle: bool,
    sessions: SessionRule,
}

/// Builder of [`Policy`].
#[derive(Debug)]
pub struct PolicyBuilder {
    allow: Vec<Rule>,
    deny: Vec<Rule>,
    allow_lifecycle: bool,
    sessions: SessionRule,
    sources: Option<PrincipalSources>,
}

impl PolicyBuilder {
    /// Adds an allow rule.
    pub fn allow(mut self, rule: Rule) -> Self {
        self.allow.push(rule);
        self
    }

    /// Adds a deny rule.
    pub fn deny(mut self, rule: Rule) -> Self {
        self.deny.push(rule);
        self
    }

    /// Whether `initialize`, `ping` and `notifications/*` are allowed without an allow
    /// rule (default `true`; deny rules still apply).
    pub fn allow_lifecycle(mut self, allow: bool) -> Self {
        self.allow_lifecycle = allow;
        self
    }

    /// Who may open a session (default [`SessionRequirement::AnyMethod`], no scopes).
    pub fn sessions(mut self, rule: SessionRule) -> Self {
        self.sessions = rule;
        self
    }

    /// What the configured authentication can produce: bare principal entries are
    /// resolved against it (accepted when exactly one method can produce them). Without
    /// it, bare entries are refused.
    pub fn principal_sources(mut self, sources: PrincipalSources) -> Self {
        self.sources = Some(sources);
        self
    }

    /// Resolves the principal entries of one rule.
    fn compile(&self, key: &str, rule: Rule) -> Result<Compiled, ConfigError> {
        let mut principals = Vec::with_capacity(rule.principals.len());
        for (i, entry) in rule.principals.iter().enumerate() {
            let key = format!("{key}.principals[{i}]");
            let resolved = match &self.sources {
                Some(s) => s.resolve(entry),
                None => match mcp_core::principal::split_qualified(entry) {
                    Some(_) => Ok(PrincipalEntry::Qualified(entry.clone())),
                    None if entry == "*" => Ok(PrincipalEntry::Qualified(entry.clone())),
                    None => match entry.strip_prefix("*:") {
                        Some(rest) if !rest.is_empty() => {
                            Ok(PrincipalEntry::AnySource(rest.to_owned()))
                        }
                        _ => Err(format!(
                            "{entry:?} does not say how the principal is proven: write \
                             apikey:{entry}, bearer:{entry}, jwt:<issuer>#{entry}, \
                             basic:{entry}, mtls:{entry}, or *:{entry} for any method"
                        )),
                    },
                },
            }
            .map_err(|rule| ConfigError::invalid(key.clone(), rule))?;
            if let PrincipalEntry::AnySource(id) = &resolved {
                tracing::warn!(
                    key = %key,
                    "principal entry *:{id} matches the id {id:?} proven by any \
                     authentication method (API key, JWT, Basic, certificate)"
                );
            }
            principals.push(resolved);
        }
        Ok(Compiled { rule, principals })
    }

    /// Validates (names present and unique, patterns non-empty, principal entries
    /// resolved) and builds.
    pub fn build(self) -> Result<Policy, ConfigError> {
        let mut names = std::collections::HashSet::new();
        for (list, rules) in [("allow", &self.allow), ("deny", &self.deny)] {
            for (i, r) in rules.iter().enumerate() {
                let key = format!("authorization.{list}[{i}]");
                if r.name.trim().is_empty() {
                    return Err(ConfigError::invalid(
                        format!("{key}.name"),
                        "must not be empty",
                    ));
                }
                if !names.insert(r.name.clone()) {
                    return Err(ConfigError::invalid(
                        format!("{key}.name"),
                        "duplicate rule name",
                    ));
                }
                for (field, pats) in [
                    ("principals", &r.principals),
                    ("scopes", &r.scopes),
                    ("methods", &r.methods),
                    ("tools", &r.tools),
                    ("resources", &r.resources),
                    ("prompts", &r.prompts),
                ] {
                    if pats.iter().any(|p| p.is_empty()) {
                        return Err(ConfigError::invalid(
                            format!("{key}.{field}"),
                            "empty pattern",
                        ));
                    }
                }
            }
        }
        let compile = |list: &str, rules: &[Rule]| {
            rules
                .iter()
                .enumerate()
                .map(|(i, r)| self.compile(&format!("authorization.{list}[{i}]"), r.clone()))
                .collect::<Result<Vec<_>, _>>()
        };
        if self.sessions.scopes.iter().any(|s| s.trim().is_empty()) {
            return Err(ConfigError::invalid(
                "authorization.sessions.scopes",
                "empty scope",
            ));
        }
        let allow = compile("allow", &self.allow)?;
        let deny = compile("deny", &self.deny)?;
        Ok(Policy {
            inner: Arc::new(PolicyInner {
                allow,
                deny,
                allow_lifecycle: self.allow_lifecycle,
                sessions: self.sessions,
            }),
        })
    }
}

/// The verdict of the policy on one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Allowed (by the named rule, or `"lifecycle"` / `"response"`).
    Allow(String),
    /// Denied by a deny rule, or by no allow rule (`None`).
    Deny(Option<String>),
    /// The principal may not hold a session ([`SessionRule`]): it may call no method
    /// other than the lifecycle ones. Given for `initialize` and by
    /// [`Policy::check_session`].
    SessionRefused,
    /// An allow rule would match but the principal lacks its scopes (for the session
    /// rule, the rule is named `sessions`).
    MissingScopes {
        /// The rule.
        rule: String,
        /// Its scopes.
        scopes: Vec<String>,
    },
}

fn is_lifecycle(method: &str) -> bool {
    method == "initialize" || method == "ping" || method.starts_with("notifications/")
}

/// Whether a rule lets its holder call some method other than the lifecycle ones: it
/// names no method (any method, or tools, resources, prompts), or a method pattern that
/// is not only a lifecycle name (`notifications/*` is; `*` and `init*` are not).
fn reaches_beyond_lifecycle(rule: &Rule) -> bool {
    rule.methods.is_empty() || rule.methods.iter().any(|m| !is_lifecycle(m))
}

/// Whether a deny rule denies every method and target.
fn denies_everything(rule: &Rule) -> bool {
    (rule.methods.is_empty() || rule.methods.iter().any(|m| m == "*"))
        && rule.tools.is_empty()
        && rule.resources.is_empty()
        && rule.prompts.is_empty()
}

impl Policy {
    /// A builder.
    pub fn builder() -> PolicyBuilder {
        PolicyBuilder {
            allow: Vec::new(),
            deny: Vec::new(),
            allow_lifecycle: true,
            sessions: SessionRule::default(),
            sources: None,
        }
    }

    /// The session rule: whether `principal` may open a session (`initialize`), open a
    /// `GET` stream or send a `DELETE` ([`Verdict::Allow`] with rule `sessions`,
    /// [`Verdict::SessionRefused`] or [`Verdict::MissingScopes`]).
    pub fn check_session(&self, principal: &Principal) -> Verdict {
        let p = &self.inner;
        let s = &p.sessions;
        if !s.scopes.iter().all(|x| principal.has_scope(x)) {
            return Verdict::MissingScopes {
                rule: "sessions".into(),
                scopes: s.scopes.clone(),
            };
        }
        if s.require == SessionRequirement::AnyMethod {
            let denied_all = p.deny.iter().any(|c| {
                c.matches_principal(principal)
                    && c.rule.has_scopes(principal)
                    && denies_everything(&c.rule)
            });
            let may_call = p.allow.iter().any(|c| {
                c.matches_principal(principal)
                    && c.rule.has_scopes(principal)
                    && reaches_beyond_lifecycle(&c.rule)
            });
            if denied_all || !may_call {
                return Verdict::SessionRefused;
            }
        }
        Verdict::Allow("sessions".into())
    }

    /// The verdict on one message for one principal.
    pub fn check(&self, principal: &Principal, msg: &McpMessage) -> Verdict {
        match msg.kind() {
            MessageKind::Response => return Verdict::Allow("response".into()),
            MessageKind::Invalid => return Verdict::Deny(None),
            MessageKind::Request | MessageKind::Notification => {}
        }
        if unjudgeable(msg) {
            return Verdict::Deny(None);
        }
        let p = &self.inner;
        if let Some(c) = p.deny.iter().find(|c| {
            c.matches_principal(principal)
                && c.rule.has_scopes(principal)
                && c.rule.matches_call(msg)
        }) {
            return Verdict::Deny(Some(c.rule.name.clone()));
        }
        let method = msg.method().unwrap_or_default();
        if method == "initialize" {
            match self.check_session(principal) {
                Verdict::Allow(_) => {}
                refused => return refused,
            }
        }
        if p.allow_lifecycle && is_lifecycle(method) {
            return Verdict::Allow("lifecycle".into());
        }
        let mut scope_miss = None;
        for c in &p.allow {
            let r = &c.rule;
            if c.matches_principal(principal) && r.matches_call(msg) {
                if r.has_scopes(principal) {
                    return Verdict::Allow(r.name.clone());
                }
                scope_miss.get_or_insert(r);
            }
        }
        match scope_miss {
            Some(r) => Verdict::MissingScopes {
                rule: r.name.clone(),
                scopes: r.scopes.clone(),
            },
            None => Verdict::Deny(None),
        }
    }
}

/// Enforces a [`Policy`] (see the [module documentation](self)).
///
/// It fails closed on what it cannot judge: a `POST` without a parsed [`McpRequest`] in
/// the extensions (no `ParseLayer` outside: a configuration error) gets 500, logged once;
/// a `GET` or `DELETE` without one (they carry no message) is judged by the session rule
/// ([`Policy::check_session`]); any other method without one gets 405 with
/// `Allow: GET, POST, DELETE`. A request that carries a parsed
/// message is judged by it, whatever its method.
#[derive(Debug, Clone)]
pub struct AuthorizeLayer {
    policy: Policy,
    resource_metadata: Option<Arc<str>>,
    warned_missing: Arc<AtomicBool>,
}

impl AuthorizeLayer {
    /// A layer enforcing `policy`.
    pub fn new(policy: Policy) -> Self {
        Self {
            policy,
            resource_metadata: None,
            warned_missing: Arc::default(),
        }
    }

    /// The `resource_metadata` URL put in `insufficient_scope` challenges.
    pub fn resource_metadata(mut self, url: impl Into<String>) -> Self {
        self.resource_metadata = Some(url.into().into());
        self
    }
}

impl<S> Layer<S> for AuthorizeLayer {
    type Service = Authorize<S>;

    fn layer(&self, inner: S) -> Authorize<S> {
        Authorize {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service made by [`AuthorizeLayer`].
#[derive(Debug, Clone)]
pub struct Authorize<S> {
    inner: S,
    layer: AuthorizeLayer,
}

fn shorten(s: &str) -> String {
    let mut out: String = s.chars().take(128).flat_map(char::escape_default).collect();
    if s.chars().count() > 128 {
        out.push_str("...");
    }
    out
}

impl AuthorizeLayer {
    fn decide(
        &self,
        principal: Option<&Principal>,
        req: Option<&McpRequest>,
        method: &Method,
        has_body: bool,
    ) -> Option<Rejection> {
        let Some(principal) = principal else {
            return Some(Rejection::new(RejectionReason::AuthFailed).with_detail(
                "no principal: the authentication layer must run before authorization",
            ));
        };
        let Some(req) = req else {
            // Fail closed. A POST always carries a message: without the parsed request a
            // parse layer is missing (a configuration error). GET and DELETE carry none
            // (the transport checks of `ParseLayer` refuse a body on them). Any other
            // method is not part of the transport: it is refused, whatever it carries.
            if method == Method::POST {
                if !self.warned_missing.swap(true, Ordering::Relaxed) {
                    tracing::error!(
                        "mcp-auth: POST without McpRequest in the extensions; install \
                         mcp_core::ParseLayer outside AuthorizeLayer"
                    );
                }
                return Some(
                    Rejection::new(RejectionReason::Internal).with_detail("parse_layer_missing"),
                );
            }
            if method == Method::GET || method == Method::DELETE {
                // No message to judge, unless a body came along, which no parse layer read.
                if has_body {
                    return Some(
                        Rejection::new(RejectionReason::InvalidRequest)
                            .with_message("Invalid Request: GET and DELETE take no body")
                            .with_detail("rule=body_not_allowed"),
                    );
                }
                // A stream or the end of a session: for principals that may hold one.
                let what = || method.as_str().to_owned();
                return self.refusal(self.policy.check_session(principal), None, what);
            }
            return Some(
                Rejection::new(RejectionReason::MethodNotAllowed)
                    .with_header(http::header::ALLOW, "GET, POST, DELETE")
                    .with_detail("rule=method"),
            );
        };
        if req.messages().is_empty() {
            return Some(Rejection::new(RejectionReason::Forbidden).with_detail("empty batch"));
        }
        for msg in req.messages() {
            let what = || {
                let method = msg
                    .method()
                    .map_or_else(|| "(no method)".to_owned(), shorten);
                match msg.target() {
                    Some(t) => format!("{method} {}", shorten(t.name())),
                    None => method,
                }
            };
            if unjudgeable(msg) {
                // Fail closed whatever the rules say (with sanitization off nothing else
                // checks the params' shape or control characters).
                return Some(
                    Rejection::new(RejectionReason::InvalidParams)
                        .with_id(msg.id().cloned())
                        .with_message(
                            "Invalid params: the method and params.name (params.uri for \
                             resources) must be strings without control characters",
                        )
                        .with_detail(format!("rule=unjudgeable_target {}", what())),
                );
            }
            let verdict = self.policy.check(principal, msg);
            if let Some(r) = self.refusal(verdict, msg.id().cloned(), what) {
                return Some(r);
            }
        }
        None
    }
}

impl AuthorizeLayer {
    /// The refusal for a verdict (`None` when it allows); `what` names the message.
    fn refusal(
        &self,
        verdict: Verdict,
        id: Option<mcp_core::JsonRpcId>,
        what: impl Fn() -> String,
    ) -> Option<Rejection> {
        match verdict {
            Verdict::Allow(_) => None,
            Verdict::Deny(rule) => {
                let detail = match rule {
                    Some(r) => format!("deny rule {r:?} matches {}", what()),
                    None => format!("no allow rule matches {}", what()),
                };
                Some(
                    Rejection::new(RejectionReason::Forbidden)
                        .with_id(id)
                        .with_detail(detail),
                )
            }
            Verdict::SessionRefused => Some(
                Rejection::new(RejectionReason::Forbidden)
                    .with_id(id)
                    .with_message(
                        "Forbidden: this principal may call no method, so it may not hold a session",
                    )
                    .with_detail(format!("rule=sessions {}", what())),
            ),
            Verdict::MissingScopes { rule, scopes } => {
                let scope = scopes.join(" ");
                let mut challenge =
                    format!("Bearer error=\"insufficient_scope\", scope=\"{scope}\"");
                if let Some(u) = &self.resource_metadata {
                    challenge.push_str(&format!(", resource_metadata=\"{u}\""));
                }
                Some(
                    Rejection::new(RejectionReason::InsufficientScope)
                        .with_id(id)
                        .with_detail(format!("rule {rule:?} needs scope {scope} for {}", what()))
                        .with_header(WWW_AUTHENTICATE, challenge),
                )
            }
        }
    }
}

impl<S, B, ResBody> Service<Request<B>> for Authorize<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    B: http_body::Body,
    ResBody: From<Bytes>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let ext = req.extensions();
        let mcp = ext.get::<McpRequest>();
        // Only looked at without a parsed request (a GET or DELETE, or no parse layer).
        let has_body = mcp.is_none()
            && mcp_core::transport::has_body(req.headers(), req.body().is_end_stream());
        match self
            .layer
            .decide(ext.get::<Principal>(), mcp, req.method(), has_body)
        {
            None => ResponseFuture::inner(self.inner.call(req), None),
            Some(r) => ResponseFuture::ready(r.into_response()),
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Allow(r) => write!(f, "allowed by {r:?}"),
            Self::Deny(Some(r)) => write!(f, "denied by {r:?}"),
            Self::Deny(None) => f.write_str("denied: no allow rule"),
            Self::SessionRefused => f.write_str("denied: may not hold a session"),
            Self::MissingScopes { rule, scopes } => {
                write!(f, "rule {rule:?} needs {}", scopes.join(" "))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mcp_core::{AuthMethod, McpHeaders};
    use proptest::prelude::*;

    fn msg(body: &str) -> McpRequest {
        McpRequest::parse(Bytes::from(body.to_owned()), McpHeaders::default()).unwrap()
    }

    fn call(tool: &str) -> McpRequest {
        msg(&format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"{tool}"}}}}"#
        ))
    }

    fn policy() -> Policy {
        Policy::builder()
            .allow(Rule::new("list").methods(["tools/list"]))
            .allow(
                Rule::new("search")
                    .tools(["search", "read_*"])
                    .scopes(["mcp:tools"]),
            )
            .allow(
                Rule::new("admin")
                    .principals(["apikey:admin"])
                    .methods(["*"]),
            )
            .allow(Rule::new("public").resources(["file:///public/*"]))
            .deny(Rule::new("no-shell").tools(["shell*"]))
            .build()
            .unwrap()
    }

    fn user(scopes: &[&str]) -> Principal {
        Principal::new("u", AuthMethod::Jwt).with_scopes(scopes.iter().copied())
    }

    /// A call whose target is not a string (an array, a number, null, positional params,
    /// no params) is judged by no rule: an allow-everything rule does not let it through
    /// past a deny rule that names the tool, for every method that acts on a target.
    #[test]
    fn calls_without_a_string_target_or_with_control_characters_are_denied() {
        let p = Policy::builder()
            .allow(Rule::new("all").methods(["*"]))
            .deny(Rule::new("no-danger").tools(["dangerous"]))
            .build()
            .unwrap();
        let who = Principal::new("admin", AuthMethod::ApiKey);
        for method in [
            "tools/call",
            "prompts/get",
            "resources/read",
            "resources/subscribe",
            "resources/unsubscribe",
        ] {
            for params in [
                r#""params":{"name":["dangerous"],"uri":["dangerous"]}"#,
                r#""params":{"name":1,"uri":1}"#,
                r#""params":{"name":null,"uri":null}"#,
                r#""params":{"name":{"x":"dangerous"},"uri":{}}"#,
                r#""params":["dangerous",{}]"#,
                r#""params":{"tool":"dangerous"}"#,
                r#""x":1"#,
                r#""params":{"name":"dangerous\u0000x","uri":"dangerous\u0000x"}"#,
                r#""params":{"name":"dangerous\n","uri":"dangerous\t"}"#,
            ] {
                let r = msg(&format!(
                    r#"{{"jsonrpc":"2.0","id":1,"method":"{method}",{params}}}"#
                ));
                assert_eq!(
                    p.check(&who, &r.messages()[0]),
                    Verdict::Deny(None),
                    "{method} {params}"
                );
                let refusal = AuthorizeLayer::new(p.clone())
                    .decide(Some(&who), Some(&r), &Method::POST, true)
                    .expect("refused");
                assert_eq!(
                    refusal.reason(),
                    RejectionReason::InvalidParams,
                    "{method} {params}"
                );
            }
        }
        // A method with a control character is not judged either.
        let r =
            msg(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call\u0000","params":{"name":"echo"}}"#);
        assert_eq!(p.check(&who, &r.messages()[0]), Verdict::Deny(None));
        // A string target is judged by the rules as before.
        assert_eq!(
            p.check(&who, &call("echo").messages()[0]),
            Verdict::Allow("all".into())
        );
        assert_eq!(
            p.check(&who, &call("dangerous").messages()[0]),
            Verdict::Deny(Some("no-danger".into()))
        );
    }

    #[test]
    fn verdicts() {
        let p = policy();
        let v = |who: &Principal, r: &McpRequest| p.check(who, &r.messages()[0]);
        let u = user(&["mcp:tools"]);
        assert_eq!(v(&u, &call("search")), Verdict::Allow("search".into()));
        assert_eq!(v(&u, &call("read_file")), Verdict::Allow("search".into()));
        assert_eq!(v(&u, &call("write_file")), Verdict::Deny(None));
        assert!(matches!(
            v(&user(&[]), &call("search")),
            Verdict::MissingScopes { .. }
        ));
        let admin = Principal::new("admin", AuthMethod::ApiKey);
        assert_eq!(
            v(&admin, &call("write_file")),
            Verdict::Allow("admin".into())
        );
        assert_eq!(
            v(&admin, &call("shell_exec")),
            Verdict::Deny(Some("no-shell".into())),
            "deny wins"
        );
        // The rule is the API key admin's: a certificate or a JWT sub named admin is not.
        for m in [
            AuthMethod::ClientCertificate,
            AuthMethod::Jwt,
            AuthMethod::Basic,
        ] {
            assert_eq!(
                v(&Principal::new("admin", m), &call("write_file")),
                Verdict::Deny(None)
            );
        }
        let list = msg(r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#);
        assert_eq!(v(&user(&[]), &list), Verdict::Allow("list".into()));
        let read = |uri: &str| {
            msg(&format!(
                r#"{{"jsonrpc":"2.0","id":3,"method":"resources/read","params":{{"uri":"{uri}"}}}}"#
            ))
        };
        assert!(matches!(
            v(&u, &read("file:///public/a.txt")),
            Verdict::Allow(_)
        ));
        assert_eq!(v(&u, &read("file:///etc/passwd")), Verdict::Deny(None));
        // the "search" rule names tools, so it does not allow other methods
        let prompt =
            msg(r#"{"jsonrpc":"2.0","id":4,"method":"prompts/get","params":{"name":"x"}}"#);
        assert_eq!(v(&u, &prompt), Verdict::Deny(None));
        let no_name = msg(r#"{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{}}"#);
        assert_eq!(v(&u, &no_name), Verdict::Deny(None));
        let init = msg(r#"{"jsonrpc":"2.0","id":6,"method":"initialize","params":{}}"#);
        assert_eq!(v(&user(&[]), &init), Verdict::Allow("lifecycle".into()));
        let resp = msg(r#"{"jsonrpc":"2.0","id":7,"result":{}}"#);
        assert_eq!(v(&user(&[]), &resp), Verdict::Allow("response".into()));
    }

    /// A principal that may call nothing may not hold a session: `initialize`, GET and
    /// DELETE are refused; `scopes` and `require: anyone` change who may.
    #[test]
    fn who_may_hold_a_session() {
        let init = msg(r#"{"jsonrpc":"2.0","id":6,"method":"initialize","params":{}}"#);
        let ping = msg(r#"{"jsonrpc":"2.0","id":6,"method":"ping"}"#);
        let base = || {
            Policy::builder()
                .allow(
                    Rule::new("tools")
                        .methods(["tools/*"])
                        .scopes(["mcp:tools"]),
                )
                .allow(Rule::new("hello").methods(["initialize", "notifications/*", "ping"]))
                .allow(
                    Rule::new("ops-list")
                        .principals(["apikey:ops"])
                        .tools(["list_*"]),
                )
                .deny(Rule::new("banned").principals(["apikey:banned"]))
        };
        let p = base().build().unwrap();
        let none = user(&[]);
        let tools = user(&["mcp:tools"]);
        let ops = Principal::new("ops", AuthMethod::ApiKey);
        let banned = Principal::new("banned", AuthMethod::ApiKey).with_scopes(["mcp:tools"]);
        // Nothing but lifecycle rules match: refused, and for GET and DELETE too.
        assert_eq!(p.check(&none, &init.messages()[0]), Verdict::SessionRefused);
        assert_eq!(p.check_session(&none), Verdict::SessionRefused);
        // Other lifecycle messages are not session openers.
        assert_eq!(
            p.check(&none, &ping.messages()[0]),
            Verdict::Allow("lifecycle".into())
        );
        assert_eq!(
            p.check(&tools, &init.messages()[0]),
            Verdict::Allow("lifecycle".into())
        );
        assert_eq!(p.check_session(&ops), Verdict::Allow("sessions".into()));
        // A deny rule that denies everything: no session.
        assert_eq!(p.check_session(&banned), Verdict::SessionRefused);
        for method in [Method::GET, Method::DELETE] {
            let layer = AuthorizeLayer::new(p.clone());
            let r = layer
                .decide(Some(&none), None, &method, false)
                .expect("refused");
            assert_eq!(r.reason(), RejectionReason::Forbidden, "{method}");
            assert!(layer.decide(Some(&tools), None, &method, false).is_none());
        }
        let r = AuthorizeLayer::new(p.clone())
            .decide(Some(&none), Some(&init), &Method::POST, true)
            .expect("refused");
        assert_eq!(r.reason(), RejectionReason::Forbidden);

        // Scopes required as well: insufficient_scope naming them.
        let p = base()
            .sessions(SessionRule {
                scopes: vec!["mcp:session".into()],
                ..SessionRule::default()
            })
            .build()
            .unwrap();
        assert_eq!(
            p.check(&tools, &init.messages()[0]),
            Verdict::MissingScopes {
                rule: "sessions".into(),
                scopes: vec!["mcp:session".into()]
            }
        );
        let both = user(&["mcp:tools", "mcp:session"]);
        assert!(matches!(p.check_session(&both), Verdict::Allow(_)));
        let r = AuthorizeLayer::new(p.clone())
            .decide(Some(&tools), None, &Method::GET, false)
            .expect("refused");
        assert_eq!(r.reason(), RejectionReason::InsufficientScope);

        // `anyone`: every principal; `anyone` with a scope: the scope only.
        let cfg: PolicyConfig = serde_json::from_str(
            r#"{"allow":[{"name":"t","methods":["tools/list"],"scopes":["x"]}],
                "sessions":{"require":"anyone"}}"#,
        )
        .unwrap();
        assert!(cfg.sessions.is_open_to_anyone());
        let p = cfg.build().unwrap();
        assert!(matches!(p.check_session(&none), Verdict::Allow(_)));
        let cfg: PolicyConfig =
            serde_json::from_str(r#"{"sessions":{"require":"anyone","scopes":["mcp:session"]}}"#)
                .unwrap();
        assert!(!cfg.sessions.is_open_to_anyone());
        let p = cfg.build().unwrap();
        assert!(matches!(
            p.check_session(&none),
            Verdict::MissingScopes { .. }
        ));
        assert!(matches!(
            p.check_session(&user(&["mcp:session"])),
            Verdict::Allow(_)
        ));
        // Unknown values and empty scopes are refused.
        assert!(serde_json::from_str::<PolicyConfig>(r#"{"sessions":{"require":"all"}}"#).is_err());
        let e = serde_json::from_str::<PolicyConfig>(r#"{"sessions":{"scopes":[""]}}"#)
            .unwrap()
            .build()
            .unwrap_err();
        assert_eq!(e.key(), "authorization.sessions.scopes");
    }

    /// Fail closed: without a parsed request, a POST is a configuration error (500), a
    /// GET or DELETE passes only without a body, any other method is refused (405).
    #[tokio::test]
    async fn fails_closed_without_a_parsed_request() {
        use tower::{Layer as _, ServiceExt as _};
        let svc = AuthorizeLayer::new(policy()).layer(tower::service_fn(
            |_r: Request<http_body_util::Full<Bytes>>| async {
                Ok::<_, std::convert::Infallible>(Response::new(Bytes::from_static(b"ran")))
            },
        ));
        let run = |method: &str, body: &'static str, parsed: Option<McpRequest>| {
            let svc = svc.clone();
            let mut req = Request::builder()
                .method(method)
                .body(http_body_util::Full::new(Bytes::from_static(
                    body.as_bytes(),
                )))
                .unwrap();
            req.extensions_mut().insert(user(&["mcp:tools"]));
            if let Some(p) = parsed {
                req.extensions_mut().insert(p);
            }
            async move {
                let r = svc.oneshot(req).await.unwrap();
                let detail = r
                    .extensions()
                    .get::<mcp_core::Denial>()
                    .and_then(|d| d.detail.clone());
                (r.status().as_u16(), detail)
            }
        };
        assert_eq!(
            run("POST", "{}", None).await,
            (500, Some("parse_layer_missing".into()))
        );
        assert_eq!(run("GET", "", None).await.0, 200);
        assert_eq!(run("DELETE", "", None).await.0, 200);
        assert_eq!(run("GET", "{}", None).await.0, 400);
        assert_eq!(run("DELETE", "{}", None).await.0, 400);
        for m in ["PUT", "PATCH", "post", "OPTIONS", "FOO"] {
            assert_eq!(run(m, "{}", None).await.0, 405, "{m}");
            assert_eq!(run(m, "", None).await.0, 405, "{m}");
        }
        // With a parsed request the message decides, whatever the method.
        assert_eq!(run("PUT", "", Some(call("shell_exec"))).await.0, 403);
        assert_eq!(run("POST", "", Some(call("search"))).await.0, 200);
    }

    #[test]
    fn config_and_errors() {
        let cfg: PolicyConfig = serde_json::from_str(
            r#"{"allow":[{"name":"a","tools":["x"],"scopes":["s"]}],"deny":[{"name":"d","principals":["evil*"]}]}"#,
        )
        .unwrap();
        // A bare entry needs the sources to be resolved.
        let e = cfg.build().unwrap_err();
        assert_eq!(e.key(), "authorization.deny[0].principals[0]");
        assert!(e.to_string().contains("apikey:evil*"), "{e}");
        let keys = PrincipalSources::new().with_ids(AuthMethod::ApiKey, ["evil-1", "ok"]);
        let p = cfg.build_for(&keys).unwrap();
        let x = call("x");
        let evil = Principal::new("evil-1", AuthMethod::ApiKey).with_scopes(["s"]);
        let evil_cert = Principal::new("evil-1", AuthMethod::ClientCertificate).with_scopes(["s"]);
        assert_eq!(
            p.check(&evil, &x.messages()[0]),
            Verdict::Deny(Some("d".into()))
        );
        assert_eq!(
            p.check(&evil_cert, &x.messages()[0]),
            Verdict::Allow("a".into())
        );
        let both = keys.clone().with_any_id(AuthMethod::ClientCertificate);
        assert_eq!(
            cfg.build_for(&both).unwrap_err().key(),
            "authorization.deny[0].principals[0]"
        );
        // Written on purpose: any method.
        let any_method: PolicyConfig =
            serde_json::from_str(r#"{"deny":[{"name":"d","principals":["*:evil*"]}]}"#).unwrap();
        let p = any_method.build_for(&both).unwrap();
        assert_eq!(
            p.check(&evil_cert, &x.messages()[0]),
            Verdict::Deny(Some("d".into()))
        );
        assert!(Policy::builder().allow(Rule::new("")).build().is_err());
        assert!(
            Policy::builder()
                .allow(Rule::new("a"))
                .deny(Rule::new("a"))
                .build()
                .is_err()
        );
        assert!(
            Policy::builder()
                .allow(Rule::new("a").tools([""]))
                .build()
                .is_err()
        );
        assert!(serde_json::from_str::<PolicyConfig>(r#"{"allow":[{"nam":"a"}]}"#).is_err());
    }

    #[test]
    fn glob() {
        assert!(glob_match("a*b*c", "aXXbYYc"));
        assert!(glob_match("a*b*c", "abc"));
        assert!(!glob_match("a*b*c", "acb"));
        assert!(glob_match("**", "x"));
        assert!(!glob_match("", "x"));
        assert!(glob_match("", ""));
        assert!(glob_match("tools/*", "tools/call"));
    }

    fn naive(p: &[u8], t: &[u8]) -> bool {
        match (p.first(), t.first()) {
            (None, None) => true,
            (None, Some(_)) => false,
            (Some(b'*'), _) => naive(&p[1..], t) || (!t.is_empty() && naive(p, &t[1..])),
            (Some(c), Some(d)) if c == d => naive(&p[1..], &t[1..]),
            _ => false,
        }
    }

    proptest! {
        #[test]
        fn glob_agrees_with_naive(p in "[ab*]{0,8}", t in "[ab]{0,10}") {
            prop_assert_eq!(glob_match(&p, &t), naive(p.as_bytes(), t.as_bytes()));
        }
    }
}
