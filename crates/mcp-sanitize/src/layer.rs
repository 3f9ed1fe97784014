//! [`SanitizeLayer`]: transport checks, JSON-RPC validation, limits and argument rules on
//! the request parsed once by `mcp_core::ParseLayer`.
//!
//! Two ways to install it:
//!
//! - **After `ParseLayer`** (the gateway's way): `SanitizeLayer` reads the
//!   [`McpRequest`] from the request extensions and never parses the body again. A `POST`
//!   without an `McpRequest` is a configuration error: 500, logged once.
//! - **Alone, with [`SanitizeLayer::with_parse`]**: one layer that checks Origin/Host
//!   *before* reading the body, then applies `ParseLayer` with the configured body limit
//!   (413) and transport checks (method, body on GET/DELETE, MCP headers,
//!   `MCP-Protocol-Version` from [`SanitizeConfig::protocol_versions`], `Content-Type`
//!   per [`SanitizeConfig::require_json_content_type`], `Accept`), then validates.
//!
//! The transport checks are `mcp_core::transport`'s, not this crate's: `ParseLayer`
//! applies them whether or not a `SanitizeLayer` is installed. Used after a `ParseLayer`,
//! this layer applies them again with its own configuration (both must pass).
//!
//! For every method: the Origin/Host guard (403, skipped when an
//! [`OriginGuardLayer`](crate::OriginGuardLayer) outside already passed the request). For
//! `POST`: `Mcp-Method` / `Mcp-Name` agreement (400), JSON-RPC structure (-32600 / -32602), limits, control characters,
//! argument rules and URL rules. A rewrite (strip action, control characters stripped)
//! replaces the body, the `McpRequest` in the extensions (built with
//! `McpRequest::from_parts`, no second parse) and `Content-Length`, and leaves a
//! [`SanitizeOutcome`] in the response extensions.
//!
//! ```
//! use axum::{Router, routing::post};
//! use mcp_core::{McpRequest, ParseLayer};
//! use mcp_sanitize::{SanitizeConfig, SanitizeLayer};
//!
//! async fn handler(req: McpRequest) -> String {
//!     req.tool_name().unwrap_or_default().to_owned()
//! }
//!
//! let sanitize = SanitizeLayer::new(SanitizeConfig::default()).unwrap();
//! // Layers apply outside-in from the last: ParseLayer runs first, then SanitizeLayer.
//! let app: Router = Router::new()
//!     .route("/mcp", post(handler))
//!     .layer(sanitize.clone())
//!     .layer(ParseLayer::new().max_body_bytes(sanitize.config().max_body_bytes));
//!
//! // Or one layer doing both:
//! let app2: Router = Router::new()
//!     .route("/mcp", post(|| async { "ok" }))
//!     .layer(sanitize.with_parse());
//! ```

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, HeaderValue};
use http::{HeaderMap, Method, Request, Response, Uri};
use mcp_core::{McpRequest, Parse, ParseLayer, Rejection, RejectionReason, TransportChecks};
use tower_layer::Layer;
use tower_service::Service;

use crate::config::{ConfigError, ControlCharPolicy, OriginConfig, SanitizeConfig};
use crate::future::ResponseFuture;
use crate::origin::{OriginChecked, OriginPolicy};
use crate::rules::{BlockedPattern, BuiltinRule, Category, RuleAction};
use crate::ssrf::SsrfConfig;
use crate::validate::Validator;

/// What [`Sanitize`] changed in a request it forwarded, put in the response extensions
/// when the body was rewritten.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SanitizeOutcome {
    /// The rules whose strip action changed the body (`control_chars` for control
    /// characters removed).
    pub stripped: Vec<Cow<'static, str>>,
}

#[derive(Debug)]
struct Shared {
    config: SanitizeConfig,
    validator: Validator,
    origin: OriginPolicy,
    transport: TransportChecks,
    warned_missing: AtomicBool,
}

impl Shared {
    /// Checks that need only the head: the Origin/Host guard, and, when `transport` is
    /// set (the layer used after a `ParseLayer` of its own), the transport checks of
    /// `mcp_core::transport` with this configuration's protocol versions and Content-Type
    /// rule. [`SanitizeLayer::with_parse`] leaves those to the `ParseLayer` it includes.
    fn check_headers(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        extensions: &http::Extensions,
        transport: bool,
    ) -> Result<(), Rejection> {
        if transport {
            // Before the Origin/Host guard, which reads `Host` first.
            self.transport.check_authority(uri, headers)?;
        }
        if extensions.get::<OriginChecked>().is_none() {
            self.origin.check(headers, uri)?;
        }
        if transport {
            // The body was read by the ParseLayer outside: a GET or DELETE that reached
            // this far carries none.
            self.transport.check(method, headers, true)?;
        }
        Ok(())
    }

    /// Checks the parsed body; rewrites the request when a strip applies.
    fn check_body<B: From<Bytes>>(
        &self,
        req: &mut Request<B>,
    ) -> Result<Option<SanitizeOutcome>, Rejection> {
        if req.method() != Method::POST {
            return Ok(None);
        }
        let Some(mcp) = req.extensions().get::<McpRequest>() else {
            if !self.warned_missing.swap(true, Ordering::Relaxed) {
                tracing::error!(
                    "mcp-sanitize: POST without McpRequest in the extensions; install \
                     mcp_core::ParseLayer outside SanitizeLayer, or use SanitizeLayer::with_parse"
                );
            }
            return Err(
                Rejection::new(RejectionReason::Internal).with_detail("parse_layer_missing")
            );
        };
        if let Some(m) = mcp.header_mismatch() {
            return Err(mcp_core::header_mismatch_rejection(mcp, m));
        }
        let Some(rewrite) = self.validator.validate(mcp)? else {
            return Ok(None);
        };
        // Only the strings the strip changed are replaced: every other byte is kept.
        let bytes = crate::splice::rewritten_bytes(mcp.raw(), &rewrite.value)?;
        let new = McpRequest::from_parts(bytes.clone(), rewrite.value, mcp.headers().clone());
        mcp_core::RequestFacts::note_request(req.extensions(), &new);
        req.extensions_mut().insert(new);
        req.headers_mut()
            .insert(CONTENT_LENGTH, HeaderValue::from(bytes.len()));
        *req.body_mut() = B::from(bytes);
        Ok(Some(SanitizeOutcome {
            stripped: rewrite.stripped,
        }))
    }
}

pub use mcp_core::transport::is_json_content_type;

/// The request validation layer. Cheap to clone (one `Arc`).
#[derive(Debug, Clone)]
pub struct SanitizeLayer {
    shared: Arc<Shared>,
}

impl SanitizeLayer {
    /// Builds the layer, compiling and validating the configuration.
    pub fn new(config: SanitizeConfig) -> Result<Self, ConfigError> {
        let validator = Validator::new(&config)?;
        let origin = OriginPolicy::new(&config.origin)?;
        let transport = config.transport_checks();
        Ok(Self {
            shared: Arc::new(Shared {
                config,
                validator,
                origin,
                transport,
                warned_missing: AtomicBool::new(false),
            }),
        })
    }

    /// A builder starting from the defaults.
    pub fn builder() -> SanitizeBuilder {
        SanitizeBuilder::default()
    }

    /// The configuration the layer was built from.
    pub fn config(&self) -> &SanitizeConfig {
        &self.shared.config
    }

    /// Validates a parsed request outside of a tower stack (JSON-RPC structure, limits,
    /// control characters, argument and URL rules; not the HTTP headers): `Ok(None)` when
    /// it passes as is, `Ok(Some(rewritten))` when a strip action changed it, `Err` with the
    /// rejection otherwise.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use mcp_core::{McpHeaders, McpRequest};
    /// use mcp_sanitize::{SanitizeConfig, SanitizeLayer};
    ///
    /// let layer = SanitizeLayer::new(SanitizeConfig::default()).unwrap();
    /// let body = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"fetch","arguments":{"url":"http://169.254.169.254/"}}}"#;
    /// let req = McpRequest::parse(Bytes::from_static(body), McpHeaders::default()).unwrap();
    /// let err = layer.validate(&req).unwrap_err();
    /// assert_eq!(err.detail(), Some("rule=ssrf path=$.params.arguments.url"));
    /// ```
    pub fn validate(&self, req: &McpRequest) -> Result<Option<McpRequest>, Rejection> {
        let Some(rewrite) = self.shared.validator.validate(req)? else {
            return Ok(None);
        };
        let bytes = crate::splice::rewritten_bytes(req.raw(), &rewrite.value)?;
        Ok(Some(McpRequest::from_parts(
            bytes,
            rewrite.value,
            req.headers().clone(),
        )))
    }

    /// One layer that checks the headers before the body is read, applies
    /// `mcp_core::ParseLayer` with [`SanitizeConfig::max_body_bytes`] (and the body
    /// timeout set by [`ParseSanitizeLayer::body_timeout`], by default
    /// `mcp_core::DEFAULT_BODY_TIMEOUT`), then validates.
    pub fn with_parse(self) -> ParseSanitizeLayer {
        ParseSanitizeLayer {
            sanitize: self,
            body_timeout: mcp_core::DEFAULT_BODY_TIMEOUT,
        }
    }
}

impl<S> Layer<S> for SanitizeLayer {
    type Service = Sanitize<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Sanitize {
            inner,
            shared: self.shared.clone(),
            check_headers: true,
        }
    }
}

/// The service made by [`SanitizeLayer`].
#[derive(Debug, Clone)]
pub struct Sanitize<S> {
    inner: S,
    shared: Arc<Shared>,
    check_headers: bool,
}

impl<S, B, ResBody> Service<Request<B>> for Sanitize<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    B: From<Bytes>,
    ResBody: From<Bytes>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        if self.check_headers
            && let Err(r) = self.shared.check_headers(
                req.method(),
                req.uri(),
                req.headers(),
                req.extensions(),
                true,
            )
        {
            return ResponseFuture::rejected(r.into_response());
        }
        match self.shared.check_body(&mut req) {
            Ok(outcome) => ResponseFuture::inner(self.inner.call(req), outcome),
            Err(r) => ResponseFuture::rejected(r.into_response()),
        }
    }
}

/// [`SanitizeLayer`] with `mcp_core::ParseLayer` included, made by
/// [`SanitizeLayer::with_parse`].
#[derive(Debug, Clone)]
pub struct ParseSanitizeLayer {
    sanitize: SanitizeLayer,
    body_timeout: Duration,
}

impl ParseSanitizeLayer {
    /// Sets the time a `POST` body has to arrive whole; past it, 408 with
    /// `RejectionReason::BodyTimeout` (see `mcp_core::ParseLayer::body_timeout`; a zero
    /// duration is taken as the default).
    ///
    /// ```
    /// use std::time::Duration;
    /// use mcp_sanitize::{SanitizeConfig, SanitizeLayer};
    ///
    /// let layer = SanitizeLayer::new(SanitizeConfig::default())
    ///     .unwrap()
    ///     .with_parse()
    ///     .body_timeout(Duration::from_secs(10));
    /// # let _ = layer;
    /// ```
    pub fn body_timeout(mut self, timeout: Duration) -> Self {
        self.body_timeout = timeout;
        self
    }
}

impl<S> Layer<S> for ParseSanitizeLayer {
    type Service = Precheck<Parse<Sanitize<S>>>;

    fn layer(&self, inner: S) -> Self::Service {
        let shared = self.sanitize.shared.clone();
        let body = Sanitize {
            inner,
            shared: shared.clone(),
            check_headers: false,
        };
        let parse = ParseLayer::new()
            .max_body_bytes(shared.config.max_body_bytes)
            .body_timeout(self.body_timeout)
            .transport(shared.transport.clone())
            .layer(body);
        Precheck {
            inner: parse,
            shared,
        }
    }
}

/// The header checks of [`SanitizeLayer`] run before the body is read (outermost service
/// of [`ParseSanitizeLayer`]). Generic over any request body.
#[derive(Debug, Clone)]
pub struct Precheck<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S, B, ResBody> Service<Request<B>> for Precheck<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    ResBody: From<Bytes>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        match self.shared.check_headers(
            req.method(),
            req.uri(),
            req.headers(),
            req.extensions(),
            false,
        ) {
            Ok(()) => ResponseFuture::inner(self.inner.call(req), None),
            Err(r) => ResponseFuture::rejected(r.into_response()),
        }
    }
}

/// A builder for [`SanitizeLayer`] over [`SanitizeConfig`].
///
/// ```
/// use mcp_sanitize::{Category, RuleAction, SanitizeLayer};
///
/// let layer = SanitizeLayer::builder()
///     .max_length(4096)
///     .rule(Category::SqlInjection, RuleAction::Strip)
///     .disable_rule(Category::Xss)
///     .blocked_literal("rm -rf")
///     .exempt_tool("run_shell", "command_injection")
///     .allowed_origin("https://app.example.com")
///     .build()
///     .unwrap();
/// assert_eq!(layer.config().max_length, 4096);
/// ```
#[derive(Debug, Clone, Default)]
pub struct SanitizeBuilder {
    config: SanitizeConfig,
}

impl SanitizeBuilder {
    /// Starts from a configuration.
    pub fn from_config(config: SanitizeConfig) -> Self {
        Self { config }
    }

    /// Body size limit in bytes.
    pub fn max_body_bytes(mut self, n: usize) -> Self {
        self.config.max_body_bytes = n;
        self
    }

    /// Maximum nesting depth.
    pub fn max_depth(mut self, n: usize) -> Self {
        self.config.max_depth = n;
        self
    }

    /// Maximum string length in characters.
    pub fn max_length(mut self, n: usize) -> Self {
        self.config.max_length = n;
        self
    }

    /// Maximum members per object.
    pub fn max_object_keys(mut self, n: usize) -> Self {
        self.config.max_object_keys = n;
        self
    }

    /// Maximum items per array.
    pub fn max_array_items(mut self, n: usize) -> Self {
        self.config.max_array_items = n;
        self
    }

    /// Control character policy.
    pub fn control_chars(mut self, p: ControlCharPolicy) -> Self {
        self.config.control_chars = p;
        self
    }

    /// Accept batch arrays.
    pub fn allow_batch(mut self, allow: bool) -> Self {
        self.config.allow_batch = allow;
        self
    }

    /// Enables a built-in rule set with an action.
    pub fn rule(mut self, c: Category, action: RuleAction) -> Self {
        *self.config.rules.get_mut(c) = BuiltinRule {
            enabled: true,
            action,
        };
        self
    }

    /// Disables a built-in rule set.
    pub fn disable_rule(mut self, c: Category) -> Self {
        self.config.rules.get_mut(c).enabled = false;
        self
    }

    /// Adds a literal blocked pattern (ASCII case-insensitive).
    pub fn blocked_literal(mut self, s: impl Into<String>) -> Self {
        self.config
            .blocked_patterns
            .push(BlockedPattern::Literal(s.into()));
        self
    }

    /// Adds a named regex blocked pattern with an action.
    pub fn blocked_regex(
        mut self,
        name: impl Into<String>,
        regex: impl Into<String>,
        action: RuleAction,
    ) -> Self {
        self.config.blocked_patterns.push(BlockedPattern::Detailed {
            name: Some(name.into()),
            literal: None,
            regex: Some(regex.into()),
            action: Some(action),
        });
        self
    }

    /// Exempts a tool from one rule.
    pub fn exempt_tool(mut self, tool: impl Into<String>, rule: impl Into<String>) -> Self {
        self.config
            .tool_overrides
            .entry(tool.into())
            .or_default()
            .exempt
            .push(rule.into());
        self
    }

    /// Exempts a prompt from one rule.
    pub fn exempt_prompt(mut self, prompt: impl Into<String>, rule: impl Into<String>) -> Self {
        self.config
            .prompt_overrides
            .entry(prompt.into())
            .or_default()
            .exempt
            .push(rule.into());
        self
    }

    /// Allowed URL schemes in arguments.
    pub fn allowed_protocols<I, T>(mut self, schemes: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.config.allowed_protocols = schemes.into_iter().map(Into::into).collect();
        self
    }

    /// SSRF rules.
    pub fn ssrf(mut self, ssrf: SsrfConfig) -> Self {
        self.config.ssrf = ssrf;
        self
    }

    /// Adds an allowed origin.
    pub fn allowed_origin(mut self, origin: impl Into<String>) -> Self {
        self.config.origin.allowed_origins.push(origin.into());
        self
    }

    /// Adds an allowed Host.
    pub fn allowed_host(mut self, host: impl Into<String>) -> Self {
        self.config.origin.allowed_hosts.push(host.into());
        self
    }

    /// Origin and Host rules.
    pub fn origin(mut self, origin: OriginConfig) -> Self {
        self.config.origin = origin;
        self
    }

    /// Supported protocol versions.
    pub fn protocol_versions<I, T>(mut self, versions: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.config.protocol_versions = versions.into_iter().map(Into::into).collect();
        self
    }

    /// Builds the layer.
    pub fn build(self) -> Result<SanitizeLayer, ConfigError> {
        SanitizeLayer::new(self.config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::CONTENT_TYPE;

    #[tokio::test]
    async fn a_rewrite_is_noted_in_the_request_facts() {
        use mcp_core::{Body, McpHeaders, RequestFacts};
        use tower::ServiceExt;
        let layer = SanitizeLayer::builder()
            .rule(Category::SqlInjection, RuleAction::Strip)
            .build()
            .unwrap();
        let svc = layer.layer(tower::service_fn(|_req: Request<Body>| async {
            Ok::<_, std::convert::Infallible>(Response::new(Body::empty()))
        }));
        let raw = Bytes::from_static(
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"q","arguments":{"f":"'; DROP TABLE users; --"}}}"#,
        );
        let parsed = McpRequest::parse(raw.clone(), McpHeaders::default()).unwrap();
        let facts = RequestFacts::new();
        let mut req = Request::post("/mcp")
            .header(CONTENT_TYPE, "application/json")
            .body(Body::from(raw))
            .unwrap();
        req.extensions_mut().insert(facts.clone());
        req.extensions_mut().insert(parsed);
        let resp = svc.oneshot(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let noted = facts.request().expect("the rewrite is noted");
        assert_eq!(
            noted.arguments().unwrap()["f"],
            " DROP TABLE users ",
            "the noted request is the rewritten one"
        );
    }

    #[test]
    fn content_types_are_mcp_core_s() {
        assert!(is_json_content_type("Application/JSON; charset=utf-8"));
        assert!(!is_json_content_type("application/json-patch+json"));
    }

    #[test]
    fn config_errors() {
        let e = SanitizeLayer::builder().max_depth(0).build().unwrap_err();
        assert_eq!(e.key, "max_depth");
        let e = SanitizeLayer::builder()
            .allowed_origin("*")
            .build()
            .unwrap_err();
        assert_eq!(e.key, "origin.allowed_origins[0]");
        let e = SanitizeLayer::builder()
            .blocked_regex("x", "(", RuleAction::Reject)
            .build()
            .unwrap_err();
        assert_eq!(e.key, "blocked_patterns[0]");
    }

    #[test]
    fn config_from_yaml_like_json() {
        let cfg: SanitizeConfig = serde_json::from_value(serde_json::json!({
            "max_length": 1000,
            "allowed_protocols": ["http", "https"],
            "blocked_patterns": ["';", "DROP TABLE", "rm -rf", "<script>",
                {"name": "ssn", "regex": "\\d{3}-\\d{2}-\\d{4}", "action": "strip"}],
            "rules": {"xss": {"action": "strip"}},
            "tool_overrides": {"shell": {"exempt": ["command_injection"]}},
            "control_chars": "strip",
            "origin": {"allowed_hosts": ["localhost"]}
        }))
        .unwrap();
        assert!(SanitizeLayer::new(cfg).is_ok());
        let bad: Result<SanitizeConfig, _> =
            serde_json::from_value(serde_json::json!({"max_lenght": 3}));
        assert!(bad.is_err());
    }
}
