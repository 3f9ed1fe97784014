//! [`Rejection`]: the one way every layer of the suite says no.
//!
//! A rejection is an HTTP status, a JSON-RPC 2.0 error body that echoes the request id
//! when it is known, and the headers the RFCs ask for (`WWW-Authenticate`, `Retry-After`,
//! `RateLimit-*`). When it is turned into a response, a [`Denial`] carrying the typed
//! [`RejectionReason`] is put in the response extensions so that outer layers (audit,
//! metrics) learn why without parsing the body.

use std::borrow::Cow;
use std::fmt;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use http::{HeaderMap, Response, StatusCode};
use serde::Serialize;

use crate::request::JsonRpcId;

/// JSON-RPC 2.0 and MCP error codes used by the suite.
pub mod codes {
    /// Invalid JSON was received.
    pub const PARSE_ERROR: i64 = -32700;
    /// The JSON sent is not a valid request object.
    pub const INVALID_REQUEST: i64 = -32600;
    /// The method does not exist or is not available.
    pub const METHOD_NOT_FOUND: i64 = -32601;
    /// Invalid method parameters.
    pub const INVALID_PARAMS: i64 = -32602;
    /// Internal JSON-RPC error.
    pub const INTERNAL_ERROR: i64 = -32603;
    /// Implementation-defined server error: the caller is not authenticated.
    pub const UNAUTHENTICATED: i64 = -32001;
    /// Implementation-defined server error: the caller is not allowed to do this.
    pub const FORBIDDEN: i64 = -32003;
    /// Implementation-defined server error: the request was rate limited.
    pub const RATE_LIMITED: i64 = -32029;
    /// Implementation-defined server error: the request body is too large.
    pub const TOO_LARGE: i64 = -32013;
    /// Implementation-defined server error: the upstream failed or timed out.
    pub const UPSTREAM_ERROR: i64 = -32002;
    /// Implementation-defined server error: a dependency is unavailable.
    pub const UNAVAILABLE: i64 = -32004;
    /// The code the MCP SDKs send with a 404 for an unknown `Mcp-Session-Id` (the same
    /// number as [`UNAUTHENTICATED`]: a session the caller does not own looks unknown).
    pub const SESSION_NOT_FOUND: i64 = -32001;
}

/// Why a request was refused. Outer layers read it from the response extensions through
/// [`Denial`]; [`RejectionReason::as_str`] gives the stable snake_case name used in audit
/// records and metrics labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RejectionReason {
    /// No credential, or a credential that did not verify (401).
    AuthFailed,
    /// Authenticated, but the principal lacks a scope (403 `insufficient_scope`).
    InsufficientScope,
    /// The authorization policy refuses this method, tool, resource or prompt (403).
    Forbidden,
    /// The client is over its quota (429).
    RateLimited,
    /// The client address is on a deny list (403).
    DeniedByList,
    /// Too many requests in flight for this client (429).
    ConcurrencyLimited,
    /// An argument rule (blocked pattern, injection rule, SSRF rule) matched (400).
    BlockedByRule,
    /// The body is larger than the configured limit (413).
    TooLarge,
    /// The request headers are too large (431).
    HeadersTooLarge,
    /// The body did not arrive within the body timeout (408, -32600).
    BodyTimeout,
    /// The body is not valid JSON (400, -32700).
    InvalidJson,
    /// The body is JSON but not a valid JSON-RPC 2.0 / MCP message (400, -32600).
    InvalidRequest,
    /// The parameters are invalid (400, -32602).
    InvalidParams,
    /// The `Content-Type` is not `application/json` (415).
    UnsupportedMediaType,
    /// The `Accept` header does not allow any response the server can send (406).
    NotAcceptable,
    /// An `Origin` header is present and not allowed (403, DNS rebinding guard).
    OriginNotAllowed,
    /// The `Host` header is not on the allow list (403).
    HostNotAllowed,
    /// The `MCP-Protocol-Version` header names an unsupported revision (400).
    UnsupportedProtocolVersion,
    /// `Mcp-Method` / `Mcp-Name` headers disagree with the body (400).
    HeaderMismatch,
    /// The HTTP method is not allowed on this endpoint (405).
    MethodNotAllowed,
    /// No such endpoint (404).
    NotFound,
    /// The `Mcp-Session-Id` is not a session of this principal: bound to another one, or
    /// unknown (404, `-32001` "Session not found", as for an unknown session).
    SessionNotOwned,
    /// The upstream MCP server failed (502).
    UpstreamError,
    /// The upstream MCP server did not answer in time (504).
    UpstreamTimeout,
    /// A dependency of the layer (Redis, a JWKS endpoint) is unavailable (503).
    Unavailable,
    /// An unexpected internal error (500).
    Internal,
}

impl RejectionReason {
    /// The stable snake_case name (`"auth_failed"`, `"rate_limited"`, ...).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::AuthFailed => "auth_failed",
            Self::InsufficientScope => "insufficient_scope",
            Self::Forbidden => "forbidden",
            Self::RateLimited => "rate_limited",
            Self::DeniedByList => "denied_by_list",
            Self::ConcurrencyLimited => "concurrency_limited",
            Self::BlockedByRule => "blocked_by_rule",
            Self::TooLarge => "too_large",
            Self::HeadersTooLarge => "headers_too_large",
            Self::BodyTimeout => "body_timeout",
            Self::InvalidJson => "invalid_json",
            Self::InvalidRequest => "invalid_request",
            Self::InvalidParams => "invalid_params",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::NotAcceptable => "not_acceptable",
            Self::OriginNotAllowed => "origin_not_allowed",
            Self::HostNotAllowed => "host_not_allowed",
            Self::UnsupportedProtocolVersion => "unsupported_protocol_version",
            Self::HeaderMismatch => "header_mismatch",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::NotFound => "not_found",
            Self::SessionNotOwned => "session_not_owned",
            Self::UpstreamError => "upstream_error",
            Self::UpstreamTimeout => "upstream_timeout",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
        }
    }

    /// The HTTP status this reason gets unless a layer chooses another.
    pub const fn default_status(self) -> StatusCode {
        match self {
            Self::AuthFailed => StatusCode::UNAUTHORIZED,
            Self::InsufficientScope | Self::Forbidden | Self::DeniedByList => StatusCode::FORBIDDEN,
            Self::OriginNotAllowed | Self::HostNotAllowed => StatusCode::FORBIDDEN,
            Self::RateLimited | Self::ConcurrencyLimited => StatusCode::TOO_MANY_REQUESTS,
            Self::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::BlockedByRule
            | Self::InvalidJson
            | Self::InvalidRequest
            | Self::InvalidParams
            | Self::UnsupportedProtocolVersion
            | Self::HeaderMismatch => StatusCode::BAD_REQUEST,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::NotAcceptable => StatusCode::NOT_ACCEPTABLE,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::NotFound | Self::SessionNotOwned => StatusCode::NOT_FOUND,
            Self::UpstreamError => StatusCode::BAD_GATEWAY,
            Self::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The JSON-RPC error code this reason gets unless a layer chooses another.
    pub const fn default_code(self) -> i64 {
        match self {
            Self::InvalidJson => codes::PARSE_ERROR,
            Self::InvalidRequest
            | Self::UnsupportedProtocolVersion
            | Self::HeaderMismatch
            | Self::UnsupportedMediaType
            | Self::NotAcceptable
            | Self::MethodNotAllowed
            | Self::BodyTimeout => codes::INVALID_REQUEST,
            Self::InvalidParams | Self::BlockedByRule => codes::INVALID_PARAMS,
            Self::NotFound => codes::METHOD_NOT_FOUND,
            Self::SessionNotOwned => codes::SESSION_NOT_FOUND,
            Self::AuthFailed => codes::UNAUTHENTICATED,
            Self::InsufficientScope
            | Self::Forbidden
            | Self::DeniedByList
            | Self::OriginNotAllowed
            | Self::HostNotAllowed => codes::FORBIDDEN,
            Self::RateLimited | Self::ConcurrencyLimited => codes::RATE_LIMITED,
            Self::TooLarge | Self::HeadersTooLarge => codes::TOO_LARGE,
            Self::UpstreamError | Self::UpstreamTimeout => codes::UPSTREAM_ERROR,
            Self::Unavailable => codes::UNAVAILABLE,
            Self::Internal => codes::INTERNAL_ERROR,
        }
    }

    /// A short, fixed, human-readable message that never contains request data.
    pub const fn default_message(self) -> &'static str {
        match self {
            Self::AuthFailed => "Authentication required",
            Self::InsufficientScope => "Insufficient scope",
            Self::Forbidden => "Forbidden",
            Self::RateLimited => "Rate limit exceeded",
            Self::DeniedByList => "Forbidden",
            Self::ConcurrencyLimited => "Too many concurrent requests",
            Self::BlockedByRule => "Invalid params: blocked by rule",
            Self::TooLarge => "Request body too large",
            Self::HeadersTooLarge => "Request header fields too large",
            Self::BodyTimeout => "Request body not received in time",
            Self::InvalidJson => "Parse error",
            Self::InvalidRequest => "Invalid Request",
            Self::InvalidParams => "Invalid params",
            Self::UnsupportedMediaType => "Content-Type must be application/json",
            Self::NotAcceptable => "Not Acceptable",
            Self::OriginNotAllowed => "Origin not allowed",
            Self::HostNotAllowed => "Host not allowed",
            Self::UnsupportedProtocolVersion => "Unsupported MCP-Protocol-Version",
            Self::HeaderMismatch => "Mcp-Method or Mcp-Name header does not match the body",
            Self::MethodNotAllowed => "Method not allowed",
            Self::NotFound => "Not found",
            Self::SessionNotOwned => "Session not found",
            Self::UpstreamError => "Upstream MCP server error",
            Self::UpstreamTimeout => "Upstream MCP server timed out",
            Self::Unavailable => "Service unavailable",
            Self::Internal => "Internal error",
        }
    }
}

impl fmt::Display for RejectionReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What outer layers find in the response extensions of a refused request.
///
/// ```
/// use mcp_core::{Denial, Rejection, RejectionReason};
///
/// let response: http::Response<axum_core::body::Body> =
///     Rejection::new(RejectionReason::RateLimited).into_response();
/// let denial = response.extensions().get::<Denial>().unwrap();
/// assert_eq!(denial.reason, RejectionReason::RateLimited);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// Why the request was refused.
    pub reason: RejectionReason,
    /// The JSON-RPC error code sent to the client.
    pub code: i64,
    /// A detail that is safe to record (a rule name, a JSON path, a scope), never a secret
    /// or a client-supplied value.
    pub detail: Option<Cow<'static, str>>,
}

/// An HTTP status, a JSON-RPC error body and headers: the one way every layer says no.
///
/// The body is
/// `{"jsonrpc":"2.0","id":<id or null>,"error":{"code":..,"message":..,"data":..}}`,
/// sent as `application/json`.
///
/// ```
/// use http::StatusCode;
/// use mcp_core::{JsonRpcId, Rejection, RejectionReason};
///
/// let response: http::Response<axum_core::body::Body> = Rejection::new(RejectionReason::AuthFailed)
///     .with_id(Some(JsonRpcId::from(7)))
///     .with_header(http::header::WWW_AUTHENTICATE, "Bearer realm=\"mcp\"")
///     .into_response();
/// assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
/// assert!(response.headers().contains_key("www-authenticate"));
/// ```
///
/// It is one pointer wide (the fields live behind a `Box`), so `Result<_, Rejection>` stays
/// small on the paths that succeed.
#[derive(Clone)]
pub struct Rejection(Box<Inner>);

#[derive(Clone)]
struct Inner {
    status: StatusCode,
    reason: RejectionReason,
    code: i64,
    message: Cow<'static, str>,
    detail: Option<Cow<'static, str>>,
    data: Option<serde_json::Value>,
    id: Option<JsonRpcId>,
    headers: HeaderMap,
}

impl fmt::Debug for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Header values may carry challenge parameters but never credentials; they are
        // still left out so that a Rejection can be logged without thought.
        f.debug_struct("Rejection")
            .field("status", &self.0.status)
            .field("reason", &self.0.reason)
            .field("code", &self.0.code)
            .field("message", &self.0.message)
            .field("detail", &self.0.detail)
            .field("id", &self.0.id)
            .field("headers", &self.0.headers.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}): {}",
            self.0.status.as_u16(),
            self.0.reason,
            self.0.message
        )
    }
}

impl std::error::Error for Rejection {}

#[derive(Serialize)]
struct ErrorObject<'a> {
    code: i64,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a serde_json::Value>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    jsonrpc: &'static str,
    id: Option<&'a JsonRpcId>,
    error: ErrorObject<'a>,
}

impl Rejection {
    /// A rejection with the reason's default status, code and message.
    pub fn new(reason: RejectionReason) -> Self {
        Self(Box::new(Inner {
            status: reason.default_status(),
            reason,
            code: reason.default_code(),
            message: Cow::Borrowed(reason.default_message()),
            detail: None,
            data: None,
            id: None,
            headers: HeaderMap::new(),
        }))
    }

    /// Sets the HTTP status.
    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.0.status = status;
        self
    }

    /// Sets the JSON-RPC error code.
    pub fn with_code(mut self, code: i64) -> Self {
        self.0.code = code;
        self
    }

    /// Sets the JSON-RPC error message. It is sent to the client: never put a secret or an
    /// unescaped client value in it.
    pub fn with_message(mut self, message: impl Into<Cow<'static, str>>) -> Self {
        self.0.message = message.into();
        self
    }

    /// Sets a detail that is safe to record (rule name, JSON path, scope). It is exposed to
    /// outer layers through [`Denial::detail`] and not sent to the client unless also put
    /// in [`Rejection::with_data`].
    pub fn with_detail(mut self, detail: impl Into<Cow<'static, str>>) -> Self {
        self.0.detail = Some(detail.into());
        self
    }

    /// Sets the JSON-RPC error `data` member.
    pub fn with_data(mut self, data: serde_json::Value) -> Self {
        self.0.data = Some(data);
        self
    }

    /// Sets the JSON-RPC id to echo (`null` when `None`).
    pub fn with_id(mut self, id: Option<JsonRpcId>) -> Self {
        self.0.id = id;
        self
    }

    /// Adds a header to the response. Values that are not valid header values are ignored
    /// (they cannot come from configuration validated at build time).
    pub fn with_header<K, V>(mut self, name: K, value: V) -> Self
    where
        K: TryInto<HeaderName>,
        V: TryInto<HeaderValue>,
    {
        if let (Ok(name), Ok(value)) = (name.try_into(), value.try_into()) {
            self.0.headers.append(name, value);
        }
        self
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.0.status
    }

    /// The typed reason.
    pub fn reason(&self) -> RejectionReason {
        self.0.reason
    }

    /// The JSON-RPC error code.
    pub fn code(&self) -> i64 {
        self.0.code
    }

    /// The JSON-RPC error message.
    pub fn message(&self) -> &str {
        &self.0.message
    }

    /// The recorded detail, if any.
    pub fn detail(&self) -> Option<&str> {
        self.0.detail.as_deref()
    }

    /// The JSON-RPC id echoed.
    pub fn id(&self) -> Option<&JsonRpcId> {
        self.0.id.as_ref()
    }

    /// The extra headers.
    pub fn headers(&self) -> &HeaderMap {
        &self.0.headers
    }

    /// The JSON-RPC error body as bytes.
    pub fn body_bytes(&self) -> Bytes {
        let body = ErrorBody {
            jsonrpc: "2.0",
            id: self.0.id.as_ref(),
            error: ErrorObject {
                code: self.0.code,
                message: &self.0.message,
                data: self.0.data.as_ref(),
            },
        };
        // Serializing this fixed shape of plain values cannot fail; fall back to a
        // constant body rather than panic if it ever did.
        match serde_json::to_vec(&body) {
            Ok(v) => Bytes::from(v),
            Err(_) => Bytes::from_static(
                br#"{"jsonrpc":"2.0","id":null,"error":{"code":-32603,"message":"Internal error"}}"#,
            ),
        }
    }

    /// The [`Denial`] that [`Rejection::into_response`] puts in the response extensions.
    pub fn denial(&self) -> Denial {
        Denial {
            reason: self.0.reason,
            code: self.0.code,
            detail: self.0.detail.clone(),
        }
    }

    /// Builds the response: status, headers, `Content-Type: application/json`, the
    /// JSON-RPC error body, and a [`Denial`] in the extensions.
    pub fn into_response<B: From<Bytes>>(self) -> Response<B> {
        let denial = self.denial();
        let body = self.body_bytes();
        let mut response = Response::new(B::from(body));
        *response.status_mut() = self.0.status;
        let headers = response.headers_mut();
        *headers = self.0.headers;
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        response.extensions_mut().insert(denial);
        response
    }
}

impl From<RejectionReason> for Rejection {
    fn from(reason: RejectionReason) -> Self {
        Self::new(reason)
    }
}

#[cfg(feature = "axum")]
impl axum::response::IntoResponse for Rejection {
    fn into_response(self) -> axum::response::Response {
        Rejection::into_response(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_echoes_id_and_code() {
        let r = Rejection::new(RejectionReason::InvalidJson).with_id(Some(JsonRpcId::from("abc")));
        let v: serde_json::Value = serde_json::from_slice(&r.body_bytes()).unwrap();
        assert_eq!(v["jsonrpc"], "2.0");
        assert_eq!(v["id"], "abc");
        assert_eq!(v["error"]["code"], -32700);
        assert_eq!(v["error"]["message"], "Parse error");
        assert!(v["error"].get("data").is_none());
    }

    #[test]
    fn null_id_when_unknown() {
        let r = Rejection::new(RejectionReason::TooLarge);
        let v: serde_json::Value = serde_json::from_slice(&r.body_bytes()).unwrap();
        assert!(v["id"].is_null());
    }

    #[test]
    fn response_carries_denial_and_headers() {
        let r = Rejection::new(RejectionReason::RateLimited)
            .with_detail("tools/call:expensive")
            .with_header(http::header::RETRY_AFTER, "3");
        let resp: Response<axum_core::body::Body> = r.into_response();
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(resp.headers()[http::header::RETRY_AFTER], "3");
        assert_eq!(resp.headers()[CONTENT_TYPE], "application/json");
        let d = resp.extensions().get::<Denial>().unwrap();
        assert_eq!(d.reason, RejectionReason::RateLimited);
        assert_eq!(d.detail.as_deref(), Some("tools/call:expensive"));
    }

    #[test]
    fn invalid_header_value_is_ignored_not_panicking() {
        let r = Rejection::new(RejectionReason::Forbidden).with_header("x-bad", "a\nb");
        assert!(r.headers().is_empty());
    }

    #[test]
    fn every_reason_has_a_distinct_name() {
        use RejectionReason::*;
        let all = [
            AuthFailed,
            InsufficientScope,
            Forbidden,
            RateLimited,
            DeniedByList,
            ConcurrencyLimited,
            BlockedByRule,
            TooLarge,
            HeadersTooLarge,
            BodyTimeout,
            InvalidJson,
            InvalidRequest,
            InvalidParams,
            UnsupportedMediaType,
            NotAcceptable,
            OriginNotAllowed,
            HostNotAllowed,
            UnsupportedProtocolVersion,
            HeaderMismatch,
            MethodNotAllowed,
            NotFound,
            SessionNotOwned,
            UpstreamError,
            UpstreamTimeout,
            Unavailable,
            Internal,
        ];
        let names: std::collections::HashSet<_> = all.iter().map(|r| r.as_str()).collect();
        assert_eq!(names.len(), all.len());
        for r in all {
            assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
        }
    }
}
