//! JSON-RPC structure checks, limits and argument rules on the parsed value.
//!
//! The walk is iterative (an explicit stack), so no input depth can overflow the thread's
//! stack; the depth limit is checked as the walk descends. Strings are checked once for
//! length, control characters, the rules and URLs (every member of every message but
//! `jsonrpc`: see the zones below).

use std::borrow::Cow;
use std::collections::HashMap;

use mcp_core::{
    JsonRpcId, McpMessage, McpRequest, MessageKind, Rejection, RejectionReason, Target,
};
use serde_json::{Map, Value};

use crate::config::{ConfigError, ControlCharPolicy, SanitizeConfig};
use crate::rules::{self, Category, RuleEngine, RuleSet, ScanResult};
use crate::ssrf::{UrlPolicy, UrlViolation};
use crate::text::{has_control_inline, has_forbidden_control, strip_control};

/// A value that broke a check: what, where, and which rejection it gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The typed reason (`InvalidRequest`, `InvalidParams`, `BlockedByRule`).
    pub reason: RejectionReason,
    /// The rule name (`max_depth`, `control_chars`, `sql_injection`, `ssrf`, ...).
    pub rule: Cow<'static, str>,
    /// The JSON path of the value (`$.params.arguments.query`). Object keys that are not
    /// plain identifiers (`[A-Za-z0-9_-]{1,64}`) are written `#n`, their position in the
    /// object, so that no client-supplied text other than plain key names is echoed.
    pub path: String,
}

impl Violation {
    /// The rejection for this violation, echoing `id`.
    pub fn rejection(&self, id: Option<JsonRpcId>) -> Rejection {
        let message = match self.reason {
            RejectionReason::BlockedByRule => {
                format!("Argument rejected by rule {} at {}", self.rule, self.path)
            }
            _ => format!("Invalid value ({}) at {}", self.rule, self.path),
        };
        Rejection::new(self.reason)
            .with_id(id)
            .with_message(message)
            .with_detail(format!("rule={} path={}", self.rule, self.path))
            .with_data(serde_json::json!({ "rule": self.rule, "path": self.path }))
    }
}

/// Where a value sits in a message, which decides which checks apply.
///
/// The content rules see every string a client controls, keys and values, in every
/// message whatever its method (unknown, custom and case-variant methods and
/// notifications included): every member of the message but `jsonrpc` (a fixed `"2.0"`),
/// and all of `params`. Zones only decide which URL schemes are accepted and where a
/// per-tool / per-prompt exemption applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Zone {
    /// The message object itself.
    Message,
    /// `jsonrpc`: the structure check already requires `"2.0"`; no rules.
    Other,
    /// The other members of the message (`method`, `id`, unknown members): rules apply.
    Head,
    /// `params`.
    Params,
    /// `params.arguments` of `tools/call` / `prompts/get`: the only zone where the
    /// tool's or prompt's `tool_overrides` / `prompt_overrides` exemptions apply.
    Args,
    /// Anywhere else under `params` (`name`, `_meta`, `cursor`, `task`, completion
    /// `argument` / `context` / `ref.name`, `clientInfo`, unknown members): the rules and
    /// URLs with the configured schemes.
    InParams,
    /// Client answers: `result` / `error` of a JSON-RPC response a client sends, and
    /// `params.inputResponses` / `params.requestState` of a retried request (2026-07-28),
    /// and `params` of `initialize` (client icons may be `data:` URIs): as `InParams`,
    /// but any URL scheme is accepted (a roots answer holds `file:` URIs).
    Reply,
    /// A resource URI (`params.uri` of `resources/*`, `params.ref.uri` of
    /// `completion/complete`): rules apply, and the host check (any scheme).
    Uri,
    /// `params.ref` of `completion/complete`.
    Ref,
}

impl Zone {
    fn in_params(self) -> bool {
        !matches!(self, Zone::Message | Zone::Other | Zone::Head)
    }

    /// Whether the content rules apply to the strings (and keys) of this zone.
    fn scanned(self) -> bool {
        !matches!(self, Zone::Message | Zone::Other | Zone::Params)
    }
}

/// What kind of method a message has, for the argument scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    Arguments,
    Completion,
    Uri,
    Initialize,
    /// A JSON-RPC response (or error) the client sends to a server's request.
    Response,
    None,
}

fn scope_of(msg: Option<&McpMessage>) -> Scope {
    let Some(msg) = msg else {
        return Scope::None;
    };
    match msg.method() {
        Some("tools/call" | "prompts/get") => Scope::Arguments,
        Some("completion/complete") => Scope::Completion,
        Some("resources/read" | "resources/subscribe" | "resources/unsubscribe") => Scope::Uri,
        Some("initialize") => Scope::Initialize,
        Some(_) => Scope::None,
        None if msg.kind() == MessageKind::Response => Scope::Response,
        None => Scope::None,
    }
}

fn child_zone(parent: Zone, key: Option<&str>, scope: Scope) -> Zone {
    match (parent, key) {
        (Zone::Message, Some("params")) if scope == Scope::Initialize => Zone::Reply,
        (Zone::Message, Some("params")) => Zone::Params,
        (Zone::Message, Some("result" | "error")) if scope == Scope::Response => Zone::Reply,
        (Zone::Message, Some("jsonrpc")) => Zone::Other,
        (Zone::Message, _) => Zone::Head,
        (Zone::Params, Some("arguments")) if scope == Scope::Arguments => Zone::Args,
        (Zone::Params, Some("uri")) if scope == Scope::Uri => Zone::Uri,
        (Zone::Params, Some("ref")) if scope == Scope::Completion => Zone::Ref,
        (Zone::Params, Some("inputResponses" | "requestState")) => Zone::Reply,
        (Zone::Ref, Some("uri")) => Zone::Uri,
        (Zone::Params | Zone::Ref, _) => Zone::InParams,
        (Zone::Uri, _) => Zone::InParams,
        (z, _) => z,
    }
}

/// A path segment, borrowed during the read-only walk.
#[derive(Debug, Clone, Copy)]
enum Seg<'a> {
    Root,
    Key(&'a str, usize),
    Index(usize),
}

/// A path segment, owned during the rewriting walk.
#[derive(Debug, Clone)]
enum OwnedSeg {
    Root,
    Key(String, usize),
    Index(usize),
}

/// Whether `path` (from the message's root) is one of the message's identifiers: `id`,
/// `method`, `params.name`, `params.uri`, `params.ref.name`, `params.ref.uri`.
fn is_identifier_path(path: &[OwnedSeg]) -> bool {
    let keys: Vec<&str> = path
        .iter()
        .filter_map(|seg| match seg {
            OwnedSeg::Key(k, _) => Some(k.as_str()),
            _ => None,
        })
        .collect();
    if path.iter().any(|seg| matches!(seg, OwnedSeg::Index(_))) {
        return false;
    }
    matches!(
        keys.as_slice(),
        ["id"] | ["method"] | ["params", "name" | "uri"] | ["params", "ref", "name" | "uri"]
    )
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

fn render_path<'a>(batch: Option<usize>, segs: impl Iterator<Item = Seg<'a>>) -> String {
    let mut out = String::from("$");
    if let Some(i) = batch {
        push_index(&mut out, i);
    }
    for s in segs {
        match s {
            Seg::Root => {}
            Seg::Key(k, p) => push_key(&mut out, k, p),
            Seg::Index(i) => push_index(&mut out, i),
        }
    }
    out
}

fn render_owned_path(batch: Option<usize>, segs: &[OwnedSeg]) -> String {
    render_path(
        batch,
        segs.iter().map(|s| match s {
            OwnedSeg::Root => Seg::Root,
            OwnedSeg::Key(k, p) => Seg::Key(k.as_str(), *p),
            OwnedSeg::Index(i) => Seg::Index(*i),
        }),
    )
}

enum FrameIter<'a> {
    Obj(serde_json::map::Iter<'a>, usize),
    Arr(std::slice::Iter<'a, Value>, usize),
}

/// One level of the walk (120 bytes on x86-64).
struct Frame<'a> {
    seg: Seg<'a>,
    zone: Zone,
    iter: FrameIter<'a>,
}

/// The facts about one message the walk needs.
struct MessageCtx<'a> {
    batch: Option<usize>,
    scope: Scope,
    exempt: Option<&'a RuleSet>,
}

/// The result of a validation that asks for a rewrite.
#[derive(Debug)]
pub(crate) struct Rewrite {
    pub(crate) value: Value,
    pub(crate) stripped: Vec<Cow<'static, str>>,
}

/// The compiled request checks.
#[derive(Debug)]
pub(crate) struct Validator {
    enabled: bool,
    max_depth: usize,
    max_length: usize,
    max_object_keys: usize,
    max_array_items: usize,
    control: ControlCharPolicy,
    allow_batch: bool,
    pub(crate) engine: RuleEngine,
    urls: UrlPolicy,
    tool_exempt: HashMap<String, RuleSet>,
    prompt_exempt: HashMap<String, RuleSet>,
}

fn compile_overrides(
    key: &str,
    map: &std::collections::BTreeMap<String, crate::config::RuleOverride>,
    engine: &RuleEngine,
) -> Result<HashMap<String, RuleSet>, ConfigError> {
    let mut out = HashMap::new();
    for (name, o) in map {
        let mut set = RuleSet::default();
        for (i, rule) in o.exempt.iter().enumerate() {
            match engine.index_of(rule) {
                Some(idx) => set.insert(idx),
                // A built-in category that is switched off: nothing to exempt from.
                None if Category::ALL.iter().any(|c| c.name() == rule) => {}
                None => {
                    return Err(ConfigError::invalid(
                        format!("{key}.{name}.exempt[{i}]"),
                        "unknown rule name",
                    ));
                }
            }
        }
        out.insert(name.clone(), set);
    }
    Ok(out)
}

impl Validator {
    pub(crate) fn new(cfg: &SanitizeConfig) -> Result<Self, ConfigError> {
        cfg.check_limits()?;
        let engine = RuleEngine::new(
            &cfg.rules,
            &cfg.blocked_patterns,
            cfg.blocked_patterns_action,
        )?;
        let urls = UrlPolicy::new(&cfg.allowed_protocols, cfg.max_url_length, &cfg.ssrf)?;
        let tool_exempt = compile_overrides("tool_overrides", &cfg.tool_overrides, &engine)?;
        let prompt_exempt = compile_overrides("prompt_overrides", &cfg.prompt_overrides, &engine)?;
        Ok(Self {
            enabled: cfg.enabled,
            max_depth: cfg.max_depth,
            max_length: cfg.max_length,
            max_object_keys: cfg.max_object_keys,
            max_array_items: cfg.max_array_items,
            control: cfg.control_chars,
            allow_batch: cfg.allow_batch,
            engine,
            urls,
            tool_exempt,
            prompt_exempt,
        })
    }

    fn exempt_for(&self, msg: &McpMessage) -> Option<&RuleSet> {
        match msg.target()? {
            Target::Tool(t) => self.tool_exempt.get(t),
            Target::Prompt(p) => self.prompt_exempt.get(p),
            Target::Resource(_) => None,
        }
    }

    /// Validates a parsed request: `Ok(None)` to forward it as is, `Ok(Some(rewrite))` to
    /// forward a cleaned body, `Err` to refuse it.
    pub(crate) fn validate(&self, req: &McpRequest) -> Result<Option<Rewrite>, Rejection> {
        // The id is copied only into a rejection (a string id is an allocation).
        let id = || {
            if req.is_batch() {
                None
            } else {
                req.id().cloned()
            }
        };
        let value = req.value();
        let mut needs_rewrite = false;
        match value {
            Value::Array(items) => {
                if !self.allow_batch {
                    return Err(Rejection::new(RejectionReason::InvalidRequest)
                        .with_message("Batch requests are not supported")
                        .with_detail("rule=batch path=$"));
                }
                if items.is_empty() {
                    return Err(Rejection::new(RejectionReason::InvalidRequest)
                        .with_message("Empty batch")
                        .with_detail("rule=batch path=$"));
                }
                if items.len() > self.max_array_items {
                    return Err(Violation {
                        reason: RejectionReason::InvalidRequest,
                        rule: "max_array_items".into(),
                        path: "$".into(),
                    }
                    .rejection(None));
                }
                for (i, item) in items.iter().enumerate() {
                    let msg = req.messages().get(i);
                    let item_id = msg.and_then(McpMessage::id).cloned();
                    check_structure(item, Some(i)).map_err(|r| r.with_id(item_id.clone()))?;
                    let ctx = MessageCtx {
                        batch: Some(i),
                        scope: scope_of(msg),
                        exempt: msg.and_then(|m| self.exempt_for(m)),
                    };
                    needs_rewrite |= self
                        .walk(item, 2, &ctx)
                        .map_err(|v| v.rejection(item_id.clone()))?;
                }
            }
            single => {
                check_structure(single, None).map_err(|r| r.with_id(id()))?;
                let msg = req.first();
                let ctx = MessageCtx {
                    batch: None,
                    scope: scope_of(req.first()),
                    exempt: msg.and_then(|m| self.exempt_for(m)),
                };
                needs_rewrite = self.walk(single, 1, &ctx).map_err(|v| v.rejection(id()))?;
            }
        }
        if !needs_rewrite {
            return Ok(None);
        }
        let mut value = value.clone();
        let mut stripped = RuleSet::default();
        let mut control_stripped = false;
        match &mut value {
            Value::Array(items) => {
                for (i, item) in items.iter_mut().enumerate() {
                    let msg = req.messages().get(i);
                    let ctx = MessageCtx {
                        batch: Some(i),
                        scope: scope_of(msg),
                        exempt: msg.and_then(|m| self.exempt_for(m)),
                    };
                    self.rewrite(item, &ctx, &mut stripped, &mut control_stripped)
                        .map_err(|v| v.rejection(msg.and_then(McpMessage::id).cloned()))?;
                }
            }
            single => {
                let ctx = MessageCtx {
                    batch: None,
                    scope: scope_of(req.first()),
                    exempt: req.first().and_then(|m| self.exempt_for(m)),
                };
                self.rewrite(single, &ctx, &mut stripped, &mut control_stripped)
                    .map_err(|v| v.rejection(id()))?;
            }
        }
        let mut names: Vec<Cow<'static, str>> = stripped
            .iter()
            .filter_map(|i| self.engine.rules.get(i).map(|r| r.name.clone()))
            .collect();
        if control_stripped {
            names.push(Cow::Borrowed("control_chars"));
        }
        Ok(Some(Rewrite {
            value,
            stripped: names,
        }))
    }

    fn limit_reason(zone: Zone) -> RejectionReason {
        if zone.in_params() {
            RejectionReason::InvalidParams
        } else {
            RejectionReason::InvalidRequest
        }
    }

    /// The exemptions that apply in `zone`: a tool's or prompt's own arguments only.
    fn exempt_in<'c>(ctx: &MessageCtx<'c>, zone: Zone) -> Option<&'c RuleSet> {
        if zone == Zone::Args { ctx.exempt } else { None }
    }

    fn exempt(ctx: &MessageCtx<'_>, zone: Zone, rule: usize) -> bool {
        Self::exempt_in(ctx, zone).is_some_and(|e| e.contains(rule))
    }

    /// URL rules on a string of the argument scope.
    /// `single` is where the only `:` of `s` that may end a scheme is, when known.
    fn check_urls(
        &self,
        s: &str,
        zone: Zone,
        ctx: &MessageCtx<'_>,
        single: Option<usize>,
    ) -> Result<(), &'static str> {
        let exempt_of = |v: UrlViolation| {
            if zone == Zone::Reply && v == UrlViolation::Scheme {
                return true;
            }
            let idx = match v {
                UrlViolation::Scheme => rules::URL_SCHEME,
                UrlViolation::TooLong => rules::URL_LENGTH,
                UrlViolation::Invalid => rules::URL_INVALID,
                UrlViolation::Ssrf(_) => rules::SSRF,
            };
            Self::exempt(ctx, zone, idx)
        };
        if zone == Zone::Uri {
            if let Err(v) = self.urls.check_host_only(s)
                && !exempt_of(v)
            {
                return Err(v.rule());
            }
            return Ok(());
        }
        // From the only `:` that may end a scheme, when known.
        self.urls
            .check_value_with(s, single.unwrap_or(0), exempt_of)
            .map_err(UrlViolation::rule)
    }

    fn too_long(&self, s: &str) -> bool {
        s.len() > self.max_length && s.chars().count() > self.max_length
    }

    /// Checks one node; pushes a frame for a container. Returns the rule broken, if any.
    #[inline(always)]
    fn check_node<'a>(
        &self,
        value: &'a Value,
        zone: Zone,
        depth: usize,
        ctx: &MessageCtx<'_>,
        needs_rewrite: &mut bool,
    ) -> Result<Option<FrameIter<'a>>, (RejectionReason, Cow<'static, str>)> {
        if depth > self.max_depth {
            return Err((Self::limit_reason(zone), "max_depth".into()));
        }
        match value {
            Value::Object(map) => {
                if map.len() > self.max_object_keys {
                    return Err((Self::limit_reason(zone), "max_object_keys".into()));
                }
                Ok(Some(FrameIter::Obj(map.iter(), 0)))
            }
            Value::Array(items) => {
                if items.len() > self.max_array_items {
                    return Err((Self::limit_reason(zone), "max_array_items".into()));
                }
                Ok(Some(FrameIter::Arr(items.iter(), 0)))
            }
            Value::String(s) => self
                .check_string(s, zone, ctx, needs_rewrite)
                .map(|()| None),
            Value::Null | Value::Bool(_) | Value::Number(_) => Ok(None),
        }
    }

    /// Checks a string: length, control characters, and in the argument scope the rules
    /// and URLs, with one pass over its bytes.
    fn check_string(
        &self,
        s: &str,
        zone: Zone,
        ctx: &MessageCtx<'_>,
        needs_rewrite: &mut bool,
    ) -> Result<(), (RejectionReason, Cow<'static, str>)> {
        if self.too_long(s) {
            return Err((Self::limit_reason(zone), "max_length".into()));
        }
        if !(self.enabled && zone.scanned()) {
            if self.control != ControlCharPolicy::Allow && has_forbidden_control(s) {
                if self.control == ControlCharPolicy::Reject {
                    return Err((Self::limit_reason(zone), "control_chars".into()));
                }
                *needs_rewrite = true;
            }
            return Ok(());
        }
        // One pass for the rules, control characters and URL candidates; the
        // checks then apply in the same order as apart.
        let scan = self.engine.scan_value(s, Self::exempt_in(ctx, zone));
        if self.control != ControlCharPolicy::Allow && scan.facts.control {
            if self.control == ControlCharPolicy::Reject {
                return Err((Self::limit_reason(zone), "control_chars".into()));
            }
            *needs_rewrite = true;
        }
        match scan.result {
            ScanResult::Clean => {}
            ScanResult::Reject(r) => {
                let name = self
                    .engine
                    .rules
                    .get(r)
                    .map_or(Cow::Borrowed("blocked"), |m| m.name.clone());
                return Err((RejectionReason::BlockedByRule, name));
            }
            ScanResult::Strip(_) => *needs_rewrite = true,
        }
        // Without a `:` that may end a scheme, an argument holds no URL candidate but in
        // a network-path reference or a decoded view.
        if zone == Zone::Uri
            || scan.facts.url
            || scan.facts.view
            || crate::ssrf::may_hold_url_form(s)
        {
            self.check_urls(s, zone, ctx, scan.facts.single_url)
                .map_err(|rule| (RejectionReason::BlockedByRule, Cow::Borrowed(rule)))?;
        }
        Ok(())
    }

    #[inline(always)]
    fn check_key(
        &self,
        k: &str,
        zone: Zone,
        ctx: &MessageCtx<'_>,
        needs_rewrite: &mut bool,
    ) -> Result<(), (RejectionReason, Cow<'static, str>)> {
        if self.too_long(k) {
            return Err((Self::limit_reason(zone), "max_length".into()));
        }
        if self.control != ControlCharPolicy::Allow && has_control_inline(k) {
            if self.control == ControlCharPolicy::Reject {
                return Err((Self::limit_reason(zone), "control_chars".into()));
            }
            *needs_rewrite = true;
        }
        if self.enabled && zone.scanned() {
            self.scan_key(k, zone, ctx)?;
        }
        Ok(())
    }

    /// The content and URL rules on an object key of a scanned zone. A key is never
    /// rewritten: a stripping rule that matches refuses it too.
    fn scan_key(
        &self,
        k: &str,
        zone: Zone,
        ctx: &MessageCtx<'_>,
    ) -> Result<(), (RejectionReason, Cow<'static, str>)> {
        let scan = self.engine.scan_value(k, Self::exempt_in(ctx, zone));
        let rule = match scan.result {
            ScanResult::Clean => None,
            ScanResult::Reject(r) => Some(r),
            ScanResult::Strip(set) => set.iter().next(),
        };
        if let Some(r) = rule {
            let name = self
                .engine
                .rules
                .get(r)
                .map_or(Cow::Borrowed("blocked"), |m| m.name.clone());
            return Err((RejectionReason::BlockedByRule, name));
        }
        // A key is never a resource URI: only the URL rules of arguments apply.
        let zone = if zone == Zone::Uri {
            Zone::InParams
        } else {
            zone
        };
        if scan.facts.url || scan.facts.view || crate::ssrf::may_hold_url_form(k) {
            self.check_urls(k, zone, ctx, scan.facts.single_url)
                .map_err(|rule| (RejectionReason::BlockedByRule, Cow::Borrowed(rule)))?;
        }
        Ok(())
    }

    /// The read-only walk of one message. Returns whether a rewrite is needed.
    fn walk(
        &self,
        msg: &Value,
        base_depth: usize,
        ctx: &MessageCtx<'_>,
    ) -> Result<bool, Violation> {
        let mut needs_rewrite = false;
        // Room for the usual depth up front (message, params, arguments and five more
        // levels): no reallocation as the walk descends, and small enough (960 bytes) for
        // the allocator's per-thread cache.
        let mut stack: Vec<Frame<'_>> = Vec::with_capacity(8);
        let violation =
            |stack: &[Frame<'_>],
             last: Option<Seg<'_>>,
             (reason, rule): (RejectionReason, Cow<'static, str>)| Violation {
                reason,
                rule,
                path: render_path(ctx.batch, stack.iter().map(|f| f.seg).chain(last)),
            };
        match self.check_node(msg, Zone::Message, base_depth, ctx, &mut needs_rewrite) {
            Ok(Some(iter)) => stack.push(Frame {
                seg: Seg::Root,
                zone: Zone::Message,
                iter,
            }),
            Ok(None) => {}
            Err(e) => return Err(violation(&stack, None, e)),
        }
        while let Some(top) = stack.last_mut() {
            let parent_zone = top.zone;
            let next = match &mut top.iter {
                FrameIter::Obj(it, pos) => it.next().map(|(k, v)| {
                    let p = *pos;
                    *pos += 1;
                    (Seg::Key(k.as_str(), p), Some(k.as_str()), v)
                }),
                FrameIter::Arr(it, i) => it.next().map(|v| {
                    let p = *i;
                    *i += 1;
                    (Seg::Index(p), None, v)
                }),
            };
            let Some((seg, key, child)) = next else {
                stack.pop();
                continue;
            };
            let zone = child_zone(parent_zone, key, ctx.scope);
            if let Some(k) = key
                && let Err(e) = self.check_key(k, zone, ctx, &mut needs_rewrite)
            {
                return Err(violation(&stack, Some(seg), e));
            }
            let depth = base_depth + stack.len();
            match self.check_node(child, zone, depth, ctx, &mut needs_rewrite) {
                Ok(Some(iter)) => stack.push(Frame { seg, zone, iter }),
                Ok(None) => {}
                Err(e) => return Err(violation(&stack, Some(seg), e)),
            }
        }
        Ok(needs_rewrite)
    }

    /// Strips control characters from the keys of an object; refuses a collision.
    fn strip_keys(map: &mut Map<String, Value>) -> Result<bool, ()> {
        if !map.keys().any(|k| has_forbidden_control(k)) {
            return Ok(false);
        }
        let old = std::mem::take(map);
        let len = old.len();
        for (k, v) in old {
            map.insert(strip_control(&k).into_owned(), v);
        }
        if map.len() != len { Err(()) } else { Ok(true) }
    }

    /// The rewriting walk of one message (a clone): strips control characters and applies
    /// the stripping rules, then checks the URL rules again on what changed.
    fn rewrite(
        &self,
        msg: &mut Value,
        ctx: &MessageCtx<'_>,
        stripped: &mut RuleSet,
        control_stripped: &mut bool,
    ) -> Result<(), Violation> {
        enum IterMut<'a> {
            Obj(serde_json::map::IterMut<'a>, usize),
            Arr(std::slice::IterMut<'a, Value>, usize),
        }
        let strip_ctrl = self.control == ControlCharPolicy::Strip;
        let mut stack: Vec<(IterMut<'_>, Zone)> = Vec::new();
        let mut path: Vec<OwnedSeg> = vec![OwnedSeg::Root];
        let fail = |path: &[OwnedSeg], reason, rule: Cow<'static, str>| Violation {
            reason,
            rule,
            path: render_owned_path(ctx.batch, path),
        };

        // Each pending node: the value, its zone; `path` holds its segment last.
        let mut pending: Option<(&mut Value, Zone)> = Some((msg, Zone::Message));
        loop {
            if let Some((value, zone)) = pending.take() {
                match value {
                    Value::Object(map) => {
                        if strip_ctrl {
                            match Self::strip_keys(map) {
                                Ok(changed) => {
                                    *control_stripped |= changed;
                                    if changed && self.enabled {
                                        for k in map.keys() {
                                            let kz = child_zone(zone, Some(k), ctx.scope);
                                            if kz.scanned()
                                                && let Err((reason, rule)) =
                                                    self.scan_key(k, kz, ctx)
                                            {
                                                return Err(fail(&path, reason, rule));
                                            }
                                        }
                                    }
                                }
                                Err(()) => {
                                    return Err(fail(
                                        &path,
                                        Self::limit_reason(zone),
                                        "control_chars".into(),
                                    ));
                                }
                            }
                        }
                        stack.push((IterMut::Obj(map.iter_mut(), 0), zone));
                    }
                    Value::Array(items) => stack.push((IterMut::Arr(items.iter_mut(), 0), zone)),
                    Value::String(s) => {
                        if strip_ctrl && has_forbidden_control(s) {
                            *s = strip_control(s).into_owned();
                            *control_stripped = true;
                        }
                        if self.enabled && zone.scanned() {
                            let mut applied = RuleSet::default();
                            match self.engine.strip_tracking(
                                s,
                                Self::exempt_in(ctx, zone),
                                &mut applied,
                            ) {
                                Ok(Some(clean)) => {
                                    // An identifier is not rewritten: a stripped `id`
                                    // would answer an id the client never sent, a
                                    // stripped `method`, `params.name` or `params.uri`
                                    // would name another target than the `Mcp-Method` /
                                    // `Mcp-Name` headers forwarded with it.
                                    if is_identifier_path(&path) {
                                        let name = applied
                                            .iter()
                                            .next()
                                            .and_then(|i| self.engine.rules.get(i))
                                            .map_or(Cow::Borrowed("blocked"), |m| m.name.clone());
                                        return Err(fail(
                                            &path,
                                            RejectionReason::BlockedByRule,
                                            name,
                                        ));
                                    }
                                    for i in applied.iter() {
                                        stripped.insert(i);
                                    }
                                    *s = clean;
                                    // Removing characters can assemble a URL: check again.
                                    if let Err(rule) = self.check_urls(s, zone, ctx, None) {
                                        return Err(fail(
                                            &path,
                                            RejectionReason::BlockedByRule,
                                            rule.into(),
                                        ));
                                    }
                                }
                                Ok(None) => {}
                                Err(r) => {
                                    let name = self
                                        .engine
                                        .rules
                                        .get(r)
                                        .map_or(Cow::Borrowed("blocked"), |m| m.name.clone());
                                    return Err(fail(&path, RejectionReason::BlockedByRule, name));
                                }
                            }
                        }
                        path.pop();
                    }
                    _ => {
                        path.pop();
                    }
                }
                continue;
            }
            let Some((top, parent_zone)) = stack.last_mut() else {
                break;
            };
            let parent_zone = *parent_zone;
            let next = match top {
                IterMut::Obj(it, pos) => it.next().map(|(k, v)| {
                    let p = *pos;
                    *pos += 1;
                    (OwnedSeg::Key(k.clone(), p), Some(k.clone()), v)
                }),
                IterMut::Arr(it, i) => it.next().map(|v| {
                    let p = *i;
                    *i += 1;
                    (OwnedSeg::Index(p), None, v)
                }),
            };
            match next {
                Some((seg, key, child)) => {
                    let zone = child_zone(parent_zone, key.as_deref(), ctx.scope);
                    path.push(seg);
                    pending = Some((child, zone));
                }
                None => {
                    stack.pop();
                    path.pop();
                }
            }
        }
        Ok(())
    }
}

/// The members of an object the structure checks read, found in one pass over it (a
/// message: `jsonrpc`, `method`, `id`, `result`, `error`, `params`; its params: `name`,
/// `arguments`, `uri`).
#[derive(Default)]
struct Members<'a> {
    jsonrpc: Option<&'a Value>,
    method: Option<&'a Value>,
    id: Option<&'a Value>,
    result: Option<&'a Value>,
    error: Option<&'a Value>,
    params: Option<&'a Value>,
    name: Option<&'a Value>,
    arguments: Option<&'a Value>,
    uri: Option<&'a Value>,
}

impl<'a> Members<'a> {
    fn of(obj: &'a Map<String, Value>) -> Self {
        let mut m = Self::default();
        for (k, v) in obj {
            let slot = match k.as_str() {
                "jsonrpc" => &mut m.jsonrpc,
                "method" => &mut m.method,
                "id" => &mut m.id,
                "result" => &mut m.result,
                "error" => &mut m.error,
                "params" => &mut m.params,
                "name" => &mut m.name,
                "arguments" => &mut m.arguments,
                "uri" => &mut m.uri,
                _ => continue,
            };
            *slot = Some(v);
        }
        m
    }
}

/// JSON-RPC 2.0 / MCP structure of one message.
fn check_structure(v: &Value, batch: Option<usize>) -> Result<(), Rejection> {
    let invalid = |what: &'static str, reason: RejectionReason| {
        let path = render_path(batch, std::iter::empty());
        Rejection::new(reason)
            .with_message(what)
            .with_detail(format!("rule=jsonrpc path={path}"))
    };
    let req = RejectionReason::InvalidRequest;
    let params_err = RejectionReason::InvalidParams;
    let Value::Object(obj) = v else {
        return Err(invalid("A JSON-RPC message must be an object", req));
    };
    let m = Members::of(obj);
    if m.jsonrpc.and_then(Value::as_str) != Some("2.0") {
        return Err(invalid("jsonrpc must be \"2.0\"", req));
    }
    if let Some(method) = m.method {
        let Some(method) = method.as_str() else {
            return Err(invalid("method must be a string", req));
        };
        if method.is_empty() {
            return Err(invalid("method must not be empty", req));
        }
        if let Some(id) = m.id
            && !(id.is_string() || id.is_number())
        {
            return Err(invalid("id must be a string or a number", req));
        }
        if m.result.is_some() || m.error.is_some() {
            return Err(invalid("a request must not carry result or error", req));
        }
        let params = match m.params {
            None => None,
            Some(Value::Object(p)) => Some(Members::of(p)),
            Some(_) => return Err(invalid("params must be an object", params_err)),
        };
        match method {
            "tools/call" | "prompts/get" => {
                if params
                    .as_ref()
                    .and_then(|p| p.name)
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
                {
                    return Err(invalid(
                        "params.name must be a non-empty string",
                        params_err,
                    ));
                }
                match params.as_ref().and_then(|p| p.arguments) {
                    None | Some(Value::Object(_)) => {}
                    Some(_) => {
                        return Err(invalid("params.arguments must be an object", params_err));
                    }
                }
            }
            "resources/read" | "resources/subscribe" | "resources/unsubscribe"
                if params
                    .as_ref()
                    .and_then(|p| p.uri)
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty) =>
            {
                return Err(invalid("params.uri must be a non-empty string", params_err));
            }
            _ => {}
        }
        return Ok(());
    }
    // A response (to a server-initiated request).
    let has_result = m.result.is_some();
    let error = m.error;
    if has_result == error.is_some() {
        return Err(invalid(
            "a message needs a method, or exactly one of result and error",
            req,
        ));
    }
    match m.id {
        Some(Value::String(_) | Value::Number(_)) => {}
        Some(Value::Null) if error.is_some() => {}
        _ => return Err(invalid("a response needs a string or number id", req)),
    }
    if let Some(e) = error {
        let ok = e.get("code").is_some_and(|c| c.is_i64())
            && e.get("message").is_some_and(Value::is_string);
        if !ok {
            return Err(invalid(
                "error needs an integer code and a string message",
                req,
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::RuleAction;
    use bytes::Bytes;
    use mcp_core::McpHeaders;

    fn req(s: &str) -> McpRequest {
        McpRequest::parse(Bytes::copy_from_slice(s.as_bytes()), McpHeaders::default()).unwrap()
    }

    fn v(cfg: &SanitizeConfig, s: &str) -> Result<Option<Rewrite>, Rejection> {
        Validator::new(cfg).unwrap().validate(&req(s))
    }

    fn detail(r: Result<Option<Rewrite>, Rejection>) -> String {
        r.unwrap_err().detail().unwrap_or_default().to_owned()
    }

    fn call(args: &str) -> String {
        format!(
            r#"{{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{{"name":"t","arguments":{args}}}}}"#
        )
    }

    #[test]
    fn structure() {
        let c = SanitizeConfig::default();
        assert!(
            v(&c, r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#)
                .unwrap()
                .is_none()
        );
        assert!(
            v(
                &c,
                r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#
            )
            .unwrap()
            .is_none()
        );
        assert!(
            v(&c, r#"{"jsonrpc":"2.0","id":"a","result":{}}"#)
                .unwrap()
                .is_none()
        );
        assert!(
            v(
                &c,
                r#"{"jsonrpc":"2.0","id":null,"error":{"code":-1,"message":"x"}}"#
            )
            .unwrap()
            .is_none()
        );
        for (bad, code) in [
            (r#"{"id":1,"method":"ping"}"#, -32600),
            (r#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#, -32600),
            (r#"{"jsonrpc":"2.0","id":null,"method":"ping"}"#, -32600),
            (r#"{"jsonrpc":"2.0","id":{},"method":"ping"}"#, -32600),
            (r#"{"jsonrpc":"2.0","id":1,"method":5}"#, -32600),
            (r#"{"jsonrpc":"2.0","id":1,"method":""}"#, -32600),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"ping","params":[1]}"#,
                -32602,
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{}}"#,
                -32602,
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":[1]}}"#,
                -32602,
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":5}}"#,
                -32602,
            ),
            (r#"{"jsonrpc":"2.0","id":1}"#, -32600),
            (
                r#"{"jsonrpc":"2.0","id":1,"result":1,"error":{"code":1,"message":"m"}}"#,
                -32600,
            ),
            (r#"{"jsonrpc":"2.0","result":1}"#, -32600),
            (
                r#"{"jsonrpc":"2.0","id":1,"error":{"code":"x","message":"m"}}"#,
                -32600,
            ),
            (r#""just a string""#, -32600),
            (r#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#, -32600),
        ] {
            let r = v(&c, bad).unwrap_err();
            assert_eq!(r.code(), code, "{bad}");
            assert_eq!(r.status(), http::StatusCode::BAD_REQUEST, "{bad}");
        }
        // The id is echoed.
        let r = v(
            &c,
            r#"{"jsonrpc":"2.0","id":"x9","method":"ping","params":1}"#,
        )
        .unwrap_err();
        assert_eq!(r.id(), Some(&JsonRpcId::from("x9")));
    }

    #[test]
    fn batches_by_option() {
        let c = SanitizeConfig {
            allow_batch: true,
            ..Default::default()
        };
        let ok = r#"[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","method":"n"}]"#;
        assert!(v(&c, ok).unwrap().is_none());
        assert!(v(&c, "[]").is_err());
        let bad = r#"[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"t","arguments":{"q":"' OR '1'='1"}}}]"#;
        let r = v(&c, bad).unwrap_err();
        assert_eq!(r.id(), Some(&JsonRpcId::from(2)));
        assert_eq!(
            r.detail(),
            Some("rule=sql_injection path=$[1].params.arguments.q")
        );
    }

    #[test]
    fn limits() {
        let c = SanitizeConfig {
            max_depth: 6,
            max_length: 10,
            max_object_keys: 4,
            max_array_items: 2,
            ..Default::default()
        };
        assert!(v(&c, &call(r#"{"a":"1234567890"}"#)).unwrap().is_none());
        assert_eq!(
            detail(v(&c, &call(r#"{"a":"12345678901"}"#))),
            "rule=max_length path=$.params.arguments.a"
        );
        assert!(v(&c, &call(r#"{"a":"éééééééééé"}"#)).unwrap().is_none());
        assert_eq!(
            detail(v(&c, &call(r#"{"abcdefghijk":1}"#))),
            "rule=max_length path=$.params.arguments.abcdefghijk"
        );
        assert_eq!(
            detail(v(&c, &call(r#"{"a":1,"b":2,"c":3,"d":4,"e":5}"#))),
            "rule=max_object_keys path=$.params.arguments"
        );
        assert_eq!(
            detail(v(&c, &call(r#"{"a":[1,2,3]}"#))),
            "rule=max_array_items path=$.params.arguments.a"
        );
        // depth: message 1, params 2, arguments 3, a 4, [] 5, [] 6, [] 7
        assert!(v(&c, &call(r#"{"a":[[1]]}"#)).unwrap().is_none());
        assert_eq!(
            detail(v(&c, &call(r#"{"a":[[[1]]]}"#))),
            "rule=max_depth path=$.params.arguments.a[0][0][0]"
        );
        let r = v(&c, &call(r#"{"a":"12345678901"}"#)).unwrap_err();
        assert_eq!(r.code(), -32602);
        // outside params, -32600
        let r = v(
            &c,
            r#"{"jsonrpc":"2.0","id":1,"method":"ping","_meta":"12345678901"}"#,
        )
        .unwrap_err();
        assert_eq!(r.code(), -32600);
    }

    #[test]
    fn deep_nesting_does_not_recurse() {
        // Built directly (serde_json's parser stops at 128 levels).
        let mut deep = Value::from(1);
        for _ in 0..100_000 {
            deep = Value::Array(vec![deep]);
        }
        // Assembled by hand: `json!` would serialize `deep` recursively.
        let mut msg = serde_json::json!({"jsonrpc":"2.0","id":1,"method":"tools/call",
            "params":{"name":"t","arguments":{}}});
        if let Some(Value::Object(args)) = msg.pointer_mut("/params/arguments") {
            args.insert("x".into(), deep);
        }
        let r = McpRequest::from_parts(Bytes::new(), msg, McpHeaders::default());
        let e = Validator::new(&SanitizeConfig::default())
            .unwrap()
            .validate(&r)
            .unwrap_err();
        assert!(e.detail().unwrap().starts_with("rule=max_depth"));
        // Dropping a 100,000-level value recurses in serde_json's Drop; the real path
        // never holds one (the parser stops at 128 levels), so the test leaks it.
        std::mem::forget(r);
    }

    #[test]
    fn control_policy() {
        let body = call(r#"{"a":"x\u0000y","b\u0001":"ok"}"#);
        let c = SanitizeConfig::default();
        assert_eq!(
            detail(v(&c, &body)),
            "rule=control_chars path=$.params.arguments.a"
        );
        assert_eq!(
            detail(v(&c, &call(r#"{"b\u0001":"ok"}"#))),
            "rule=control_chars path=$.params.arguments.#0"
        );
        let strip = SanitizeConfig {
            control_chars: ControlCharPolicy::Strip,
            ..Default::default()
        };
        let rw = v(&strip, &body).unwrap().unwrap();
        assert_eq!(rw.value["params"]["arguments"]["a"], "xy");
        assert_eq!(rw.value["params"]["arguments"]["b"], "ok");
        assert_eq!(rw.stripped, vec![Cow::Borrowed("control_chars")]);
        let allow = SanitizeConfig {
            control_chars: ControlCharPolicy::Allow,
            ..Default::default()
        };
        assert!(v(&allow, &body).unwrap().is_none());
        // A collision after stripping is refused (a NUL in a key is refused earlier, by
        // the parse: mcp_core::json).
        assert!(v(&strip, &call(r#"{"a\u0001":"1","a":"2"}"#)).is_err());
    }

    #[test]
    fn rules_in_scope_only() {
        let c = SanitizeConfig::default();
        let bad = "' OR '1'='1";
        assert_eq!(
            detail(v(
                &c,
                &call(&format!(r#"{{"deep":{{"list":["ok","{bad}"]}}}}"#))
            )),
            "rule=sql_injection path=$.params.arguments.deep.list[1]"
        );
        // Every param of every method is in scope: a cursor too.
        let other = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{{"cursor":"{bad}"}}}}"#
        );
        assert_eq!(
            detail(v(&c, &other)),
            "rule=sql_injection path=$.params.cursor"
        );
        // Prompt arguments and resource URIs are in scope.
        let prompt = r#"{"jsonrpc":"2.0","id":1,"method":"prompts/get","params":{"name":"p","arguments":{"x":"<script>x</script>"}}}"#;
        assert_eq!(detail(v(&c, prompt)), "rule=xss path=$.params.arguments.x");
        let res = r#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"file:///srv/../../etc/passwd"}}"#;
        assert_eq!(detail(v(&c, res)), "rule=path_traversal path=$.params.uri");
        let res_ssrf = r#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"http://169.254.169.254/"}}"#;
        assert_eq!(detail(v(&c, res_ssrf)), "rule=ssrf path=$.params.uri");
        let res_ok = r#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"postgres://db.example.com/x"}}"#;
        assert!(v(&c, res_ok).unwrap().is_none());
        // Disabled: no rules.
        let off = SanitizeConfig {
            enabled: false,
            ..Default::default()
        };
        assert!(
            v(&off, &call(&format!(r#"{{"q":"{bad}"}}"#)))
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn urls_in_arguments() {
        let c = SanitizeConfig::default();
        assert!(
            v(&c, &call(r#"{"url":"https://example.com/a?b=c"}"#))
                .unwrap()
                .is_none()
        );
        assert_eq!(
            detail(v(&c, &call(r#"{"url":"http://[::ffff:7f00:1]/"}"#))),
            "rule=ssrf path=$.params.arguments.url"
        );
        assert_eq!(
            detail(v(
                &c,
                &call(r#"{"text":"fetch ftp://example.com/x please"}"#)
            )),
            "rule=url_scheme path=$.params.arguments.text"
        );
        let long = format!(r#"{{"u":"https://e.com/{}"}}"#, "a".repeat(900));
        let c2 = SanitizeConfig {
            max_url_length: 100,
            ..Default::default()
        };
        assert_eq!(
            detail(v(&c2, &call(&long))),
            "rule=url_length path=$.params.arguments.u"
        );
        assert_eq!(
            detail(v(&c, &call(r#"{"u":"http://[zz]/"}"#))),
            "rule=url_invalid path=$.params.arguments.u"
        );
    }

    #[test]
    fn overrides_exempt_one_rule_only() {
        let mut c = SanitizeConfig::default();
        c.tool_overrides.insert(
            "t".into(),
            crate::config::RuleOverride {
                exempt: vec!["command_injection".into(), "ssrf".into()],
            },
        );
        assert!(
            v(&c, &call(r#"{"cmd":"ls | grep x && echo ok"}"#))
                .unwrap()
                .is_none()
        );
        assert!(
            v(&c, &call(r#"{"u":"http://127.0.0.1/"}"#))
                .unwrap()
                .is_none()
        );
        // Still subject to the other rules.
        assert_eq!(
            detail(v(&c, &call(r#"{"cmd":"<script>"}"#))),
            "rule=xss path=$.params.arguments.cmd"
        );
        assert_eq!(
            detail(v(&c, &call(r#"{"u":"file:///x"}"#))),
            "rule=url_scheme path=$.params.arguments.u"
        );
        // Another tool is not exempt.
        let other = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"u","arguments":{"cmd":"a && rm -rf /"}}}"#;
        assert_eq!(
            detail(v(&c, other)),
            "rule=command_injection path=$.params.arguments.cmd"
        );
        // Unknown rule names are a configuration error naming the key.
        let mut bad = SanitizeConfig::default();
        bad.tool_overrides.insert(
            "t".into(),
            crate::config::RuleOverride {
                exempt: vec!["nope".into()],
            },
        );
        assert_eq!(
            Validator::new(&bad).unwrap_err().key,
            "tool_overrides.t.exempt[0]"
        );
    }

    #[test]
    fn strip_rewrites() {
        let mut c = SanitizeConfig::default();
        c.rules.sql_injection.action = RuleAction::Strip;
        c.blocked_patterns = vec![crate::rules::BlockedPattern::Detailed {
            name: Some("secret_word".into()),
            literal: Some("xyzzy".into()),
            regex: None,
            action: Some(RuleAction::Strip),
        }];
        let rw = v(
            &c,
            &call(r#"{"q":"'; DROP TABLE users; --","n":{"w":"say XYZZY now"}}"#),
        )
        .unwrap()
        .unwrap();
        assert_eq!(rw.value["params"]["arguments"]["q"], " DROP TABLE users ");
        assert_eq!(rw.value["params"]["arguments"]["n"]["w"], "say  now");
        assert!(rw.stripped.contains(&Cow::Borrowed("sql_injection")));
        assert!(rw.stripped.contains(&Cow::Borrowed("secret_word")));
        // A strip that assembles a forbidden URL is refused.
        let r = v(&c, &call(r#"{"q":"x'; http:;//127.0.0.1/"}"#)).unwrap_err();
        assert_eq!(r.detail(), Some("rule=ssrf path=$.params.arguments.q"));
        // Reject rules still reject alongside strip rules.
        assert_eq!(
            detail(v(&c, &call(r#"{"q":"<script>"}"#))),
            "rule=xss path=$.params.arguments.q"
        );
    }

    /// A strip rule never rewrites an identifier: the message's `id` and `method`, the
    /// target's `params.name` / `params.uri` (and a completion's `ref`); such a match is
    /// refused, while the same match in an argument is stripped.
    #[test]
    fn identifiers_are_refused_not_stripped() {
        let mut c = SanitizeConfig::default();
        c.rules.xss.action = RuleAction::Strip;
        for body in [
            r#"{"jsonrpc":"2.0","id":"a<script>","method":"tools/call","params":{"name":"echo","arguments":{}}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"run<script>_shell","arguments":{}}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"file:///a<script>b"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"ref":{"type":"ref/prompt","name":"p<script>"},"argument":{"name":"a","value":"v"}}}"#,
        ] {
            let r = v(&c, body);
            assert!(r.is_err(), "{body}: {r:?}");
        }
        let rw = v(&c, &call(r#"{"q":"a<script>b"}"#)).unwrap().unwrap();
        assert_eq!(rw.value["params"]["arguments"]["q"], "ab");
    }

    #[test]
    fn odd_keys_are_not_echoed() {
        let c = SanitizeConfig::default();
        let d = detail(v(&c, &call(r#"{"my secret key!":"' OR '1'='1"}"#)));
        assert_eq!(d, "rule=sql_injection path=$.params.arguments.#0");
    }

    /// Every client string is in the scope of the rules: keys at any depth, completion
    /// values, `_meta`, responses a client POSTs; the path names the key by position.
    #[test]
    fn every_client_string_is_scanned() {
        let c = SanitizeConfig::default();
        let d = detail(v(
            &c,
            &call(r#"{"filters":{"name'; DROP TABLE users; --":"x"}}"#),
        ));
        assert_eq!(d, "rule=sql_injection path=$.params.arguments.filters.#0");
        let d = detail(v(&c, &call(r#"{"ok":1,"$(id)":{"a":1}}"#)));
        assert_eq!(d, "rule=command_injection path=$.params.arguments.#0");
        let complete = r#"{"jsonrpc":"2.0","id":2,"method":"completion/complete","params":{"ref":{"type":"ref/prompt","name":"p"},"argument":{"name":"q","value":"x | id"}}}"#;
        assert_eq!(
            detail(v(&c, complete)),
            "rule=command_injection path=$.params.argument.value"
        );
        let ctx = r#"{"jsonrpc":"2.0","id":2,"method":"completion/complete","params":{"ref":{"type":"ref/prompt","name":"p"},"argument":{"name":"q","value":"ok"},"context":{"arguments":{"d":"/etc//passwd"}}}}"#;
        assert_eq!(
            detail(v(&c, ctx)),
            "rule=path_traversal path=$.params.context.arguments.d"
        );
        let meta = r#"{"jsonrpc":"2.0","id":3,"method":"tools/list","params":{"_meta":{"x":"<svg/onload=alert(1)>"}}}"#;
        assert_eq!(detail(v(&c, meta)), "rule=xss path=$.params._meta.x");
        let resp = r#"{"jsonrpc":"2.0","id":"e1","result":{"action":"accept","content":{"n":"a; rm -rf /"}}}"#;
        assert_eq!(
            detail(v(&c, resp)),
            "rule=command_injection path=$.result.content.n"
        );
        let err = r#"{"jsonrpc":"2.0","id":"e1","error":{"code":-1,"message":"x","data":{"p":"../../etc/passwd"}}}"#;
        assert_eq!(
            detail(v(&c, err)),
            "rule=path_traversal path=$.error.data.p"
        );
        // A key matched by a stripping rule is refused (keys are never rewritten).
        let mut strip = SanitizeConfig::default();
        strip.rules.sql_injection.action = RuleAction::Strip;
        let d = detail(v(&strip, &call(r#"{"a' OR '1'='1":1}"#)));
        assert_eq!(d, "rule=sql_injection path=$.params.arguments.#0");
        // Ordinary keys and values pass in each place.
        for ok in [
            call(r#"{"first name":"Ann","select":"all","notes":"drop me a line"}"#),
            r#"{"jsonrpc":"2.0","id":2,"method":"completion/complete","params":{"ref":{"type":"ref/prompt","name":"p"},"argument":{"name":"q","value":"sel"}}}"#.into(),
            r#"{"jsonrpc":"2.0","id":"e1","result":{"action":"accept","content":{"name":"Ann"}}}"#.into(),
            // A roots/list answer: `file:` URIs are what roots are.
            r#"{"jsonrpc":"2.0","id":"r1","result":{"roots":[{"uri":"file:///home/ann/project","name":"project"}]}}"#.into(),
            r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"a | b","version":"1"}}}"#.into(),
        ] {
            assert!(v(&c, &ok).unwrap().is_none(), "{ok}");
        }
    }

    /// Every string of `params` of every message is scanned, whatever the method: the
    /// 2026-07-28 retried-request answers, completion references, unknown, custom and
    /// case-variant methods, notifications, `initialize`, other `tools/call` members, and
    /// the top-level `id` and `method`.
    #[test]
    fn all_params_of_every_method_are_scanned() {
        let c = SanitizeConfig::default();
        let payloads = [
            ("http://169.254.169.254/latest/meta-data/", "ssrf"),
            ("<script>alert(1)</script>", "xss"),
            ("x; rm -rf / #", "command_injection"),
            ("../../../../etc/passwd", "path_traversal"),
            ("1' OR '1'='1", "sql_injection"),
        ];
        let shapes: &[(&str, &str)] = &[
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"m":"hi"},"inputResponses":{"confirm":{"action":"accept","content":{"v":"P"}}}}}"#,
                "$.params.inputResponses.confirm.content.v",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"prompts/get","params":{"name":"p","inputResponses":{"s":{"role":"assistant","content":{"type":"text","text":"P"}}}}}"#,
                "$.params.inputResponses.s.content.text",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"file:///a","inputResponses":{"r":{"roots":[{"uri":"file:///x","name":"P"}]}}}}"#,
                "$.params.inputResponses.r.roots[0].name",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","requestState":"P"}}"#,
                "$.params.requestState",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","task":{"ttl":1,"note":"P"}}}"#,
                "$.params.task.note",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"ref":{"type":"ref/prompt","name":"P"},"argument":{"name":"q","value":"v"}}}"#,
                "$.params.ref.name",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"x/custom","params":{"deep":["P"]}}"#,
                "$.params.deep[0]",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"TOOLS/CALL","params":{"name":"echo","arguments":{"m":"P"}}}"#,
                "$.params.arguments.m",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call ","params":{"name":"echo","arguments":{"m":"P"}}}"#,
                "$.params.arguments.m",
            ),
            (
                r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":1,"reason":"P"}}"#,
                "$.params.reason",
            ),
            (
                r#"{"jsonrpc":"2.0","method":"notifications/x","params":{"P":1}}"#,
                "$.params.#0",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"P","version":"1"}}}"#,
                "$.params.clientInfo.name",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"logging/setLevel","params":{"level":"P"}}"#,
                "$.params.level",
            ),
            (r#"{"jsonrpc":"2.0","id":"P","method":"ping"}"#, "$.id"),
        ];
        for (shape, path) in shapes {
            for (p, rule) in payloads {
                let body = shape.replace('P', &p.replace('"', "\\\""));
                // A payload in a key is checked where the key is: the path names it by
                // position. The SSRF payload holds no `P`.
                assert_eq!(
                    detail(v(&c, &body)),
                    format!("rule={rule} path={path}"),
                    "{body}"
                );
            }
        }
        // Completion references to resources get the resource URI check.
        let r = r#"{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"ref":{"type":"ref/resource","uri":"http://169.254.169.254/latest/{x}"},"argument":{"name":"x","value":"a"}}}"#;
        assert_eq!(detail(v(&c, r)), "rule=ssrf path=$.params.ref.uri");
        // Benign shapes pass: roots with file: URIs in a retried request, resource
        // templates of any scheme, client icons as data: URIs, opaque cursors.
        for ok in [
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"e","arguments":{},"inputResponses":{"r":{"roots":[{"uri":"file:///home/ann/project","name":"project"}]}},"requestState":"eyJ0IjoxfQ=="}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"ref":{"type":"ref/resource","uri":"file:///{path}"},"argument":{"name":"path","value":"src/"}}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{"roots":{"listChanged":true}},"clientInfo":{"name":"Claude Code","version":"2.1.0","websiteUrl":"https://example.com","icons":[{"src":"data:image/png;base64,iVBORw0KGgo=","mimeType":"image/png"}]}}}"#,
            r#"{"jsonrpc":"2.0","id":"5f0c-4b1a","method":"tools/list","params":{"cursor":"eyJvZmZzZXQiOjUwfQ=="}}"#,
            r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":"r-1","reason":"User requested cancellation"}}"#,
        ] {
            assert!(v(&c, ok).unwrap().is_none(), "{ok}");
        }
    }

    /// A tool's exemptions cover its own arguments only, not the other members of its
    /// call (`_meta`, answers to its elicitations, `task`).
    #[test]
    fn exemptions_stay_in_the_arguments() {
        let mut c = SanitizeConfig::default();
        c.tool_overrides.insert(
            "t".into(),
            crate::config::RuleOverride {
                exempt: vec!["command_injection".into()],
            },
        );
        assert!(v(&c, &call(r#"{"cmd":"a; rm -rf /"}"#)).unwrap().is_none());
        for (extra, path) in [
            (r#""_meta":{"x":"a; rm -rf /"}"#, "$.params._meta.x"),
            (
                r#""inputResponses":{"c":{"action":"accept","content":{"x":"a; rm -rf /"}}}"#,
                "$.params.inputResponses.c.content.x",
            ),
            (r#""task":{"x":"a; rm -rf /"}"#, "$.params.task.x"),
        ] {
            let body = format!(
                r#"{{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{{"name":"t","arguments":{{}},{extra}}}}}"#
            );
            assert_eq!(
                detail(v(&c, &body)),
                format!("rule=command_injection path={path}"),
                "{body}"
            );
        }
    }
}
