//! The MCP request, parsed once.
//!
//! [`McpRequest`] is what [`ParseLayer`](crate::ParseLayer) puts in the request extensions:
//! the raw body bytes as received, the JSON value parsed from them, one [`McpMessage`] per
//! JSON-RPC message (one, or several for a batch array), and the MCP transport headers
//! ([`McpHeaders`]). It is cheap to clone (one `Arc`).

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderName};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::json::JsonError;

/// `MCP-Protocol-Version` request header.
pub const MCP_PROTOCOL_VERSION: &str = "mcp-protocol-version";
/// `Mcp-Session-Id` request and response header.
pub const MCP_SESSION_ID: &str = "mcp-session-id";
/// `Mcp-Method` request header (2026-07-28 revision): mirrors the JSON-RPC method.
pub const MCP_METHOD: &str = "mcp-method";
/// `Mcp-Name` request header (2026-07-28 revision): mirrors `params.name` or `params.uri`.
pub const MCP_NAME: &str = "mcp-name";

/// The MCP transport header names as [`HeaderName`]s: a lookup with one of these hashes the
/// name directly, where a lookup by `&str` first parses and validates it.
///
/// ```
/// use http::HeaderMap;
/// use mcp_core::request::header;
///
/// let mut h = HeaderMap::new();
/// h.insert("MCP-Protocol-Version", "2025-11-25".parse().unwrap());
/// assert_eq!(h.get(header::MCP_PROTOCOL_VERSION).unwrap(), "2025-11-25");
/// ```
pub mod header {
    use http::HeaderName;

    /// `MCP-Protocol-Version`.
    pub const MCP_PROTOCOL_VERSION: HeaderName =
        HeaderName::from_static(super::MCP_PROTOCOL_VERSION);
    /// `Mcp-Session-Id`.
    pub const MCP_SESSION_ID: HeaderName = HeaderName::from_static(super::MCP_SESSION_ID);
    /// `Mcp-Method`.
    pub const MCP_METHOD: HeaderName = HeaderName::from_static(super::MCP_METHOD);
    /// `Mcp-Name`.
    pub const MCP_NAME: HeaderName = HeaderName::from_static(super::MCP_NAME);
}

/// The method names of the MCP specification, so that a message with one of them keeps a
/// `&'static str` rather than a copy of the body's string.
const KNOWN_METHODS: &[&str] = &[
    "tools/call",
    "tools/list",
    "initialize",
    "ping",
    "resources/read",
    "resources/list",
    "resources/templates/list",
    "resources/subscribe",
    "resources/unsubscribe",
    "prompts/get",
    "prompts/list",
    "completion/complete",
    "logging/setLevel",
    "sampling/createMessage",
    "elicitation/create",
    "roots/list",
    "notifications/initialized",
    "notifications/cancelled",
    "notifications/progress",
    "notifications/message",
    "notifications/roots/list_changed",
    "notifications/tools/list_changed",
    "notifications/prompts/list_changed",
    "notifications/resources/list_changed",
    "notifications/resources/updated",
    "notifications/elicitation/complete",
];

fn method_name(s: &str) -> Cow<'static, str> {
    match KNOWN_METHODS.iter().find(|m| **m == s) {
        Some(m) => Cow::Borrowed(m),
        None => Cow::Owned(s.to_owned()),
    }
}

/// A JSON-RPC 2.0 id: a string or a number (never null for a request).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum JsonRpcId {
    /// A numeric id, kept exactly as sent (integer or not).
    Number(serde_json::Number),
    /// A string id.
    String(String),
}

impl JsonRpcId {
    /// Reads an id from a JSON value: `Some` for a string or a number, `None` otherwise.
    pub fn from_value(value: &Value) -> Option<Self> {
        match value {
            Value::Number(n) => Some(Self::Number(n.clone())),
            Value::String(s) => Some(Self::String(s.clone())),
            _ => None,
        }
    }
}

impl From<i64> for JsonRpcId {
    fn from(n: i64) -> Self {
        Self::Number(n.into())
    }
}

impl From<&str> for JsonRpcId {
    fn from(s: &str) -> Self {
        Self::String(s.to_owned())
    }
}

impl From<String> for JsonRpcId {
    fn from(s: String) -> Self {
        Self::String(s)
    }
}

impl fmt::Display for JsonRpcId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Number(n) => write!(f, "{n}"),
            Self::String(s) => write!(f, "{s:?}"),
        }
    }
}

/// What kind of JSON-RPC message a body element is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageKind {
    /// A `method` with an `id`: expects a response.
    Request,
    /// A `method` without an `id`.
    Notification,
    /// A `result` or an `error` with an `id`: a client's answer to a server request.
    Response,
    /// Valid JSON that is none of the above (not an object, or missing members).
    Invalid,
}

/// The object an MCP method acts on, read from the params.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// `tools/call`: `params.name`.
    Tool(String),
    /// `resources/read`, `resources/subscribe`, `resources/unsubscribe`: `params.uri`.
    Resource(String),
    /// `prompts/get`: `params.name`.
    Prompt(String),
}

impl Target {
    /// The tool name, resource URI or prompt name.
    pub fn name(&self) -> &str {
        match self {
            Self::Tool(s) | Self::Resource(s) | Self::Prompt(s) => s,
        }
    }
}

/// One JSON-RPC message of a body, with the facts the layers need already extracted.
#[derive(Debug, Clone, PartialEq)]
pub struct McpMessage {
    kind: MessageKind,
    id: Option<JsonRpcId>,
    method: Option<Cow<'static, str>>,
    target: Option<Target>,
    index: Option<usize>,
}

impl McpMessage {
    fn from_value(value: &Value, index: Option<usize>) -> Self {
        let Value::Object(obj) = value else {
            return Self {
                kind: MessageKind::Invalid,
                id: None,
                method: None,
                target: None,
                index,
            };
        };
        let id = obj.get("id").and_then(JsonRpcId::from_value);
        let method = obj.get("method").and_then(Value::as_str).map(method_name);
        let kind = match (&method, obj.contains_key("id")) {
            (Some(_), true) => MessageKind::Request,
            (Some(_), false) => MessageKind::Notification,
            (None, true) if obj.contains_key("result") || obj.contains_key("error") => {
                MessageKind::Response
            }
            _ => MessageKind::Invalid,
        };
        let params = obj.get("params");
        let str_param = |key: &str| {
            params
                .and_then(|p| p.get(key))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        let target = match method.as_deref() {
            Some("tools/call") => str_param("name").map(Target::Tool),
            Some("prompts/get") => str_param("name").map(Target::Prompt),
            Some("resources/read" | "resources/subscribe" | "resources/unsubscribe") => {
                str_param("uri").map(Target::Resource)
            }
            _ => None,
        };
        Self {
            kind,
            id,
            method,
            target,
            index,
        }
    }

    /// Request, notification, response or invalid.
    pub fn kind(&self) -> MessageKind {
        self.kind
    }

    /// The id, when it is a string or a number.
    pub fn id(&self) -> Option<&JsonRpcId> {
        self.id.as_ref()
    }

    /// The JSON-RPC method, when it is a string.
    pub fn method(&self) -> Option<&str> {
        self.method.as_deref()
    }

    /// The tool, resource or prompt the method acts on.
    pub fn target(&self) -> Option<&Target> {
        self.target.as_ref()
    }

    /// `params.name` of a `tools/call`.
    pub fn tool_name(&self) -> Option<&str> {
        match &self.target {
            Some(Target::Tool(s)) => Some(s),
            _ => None,
        }
    }

    /// `params.uri` of `resources/read`, `resources/subscribe` or `resources/unsubscribe`.
    pub fn resource_uri(&self) -> Option<&str> {
        match &self.target {
            Some(Target::Resource(s)) => Some(s),
            _ => None,
        }
    }

    /// `params.name` of a `prompts/get`.
    pub fn prompt_name(&self) -> Option<&str> {
        match &self.target {
            Some(Target::Prompt(s)) => Some(s),
            _ => None,
        }
    }

    /// The position in the batch array, or `None` for a single message.
    pub fn batch_index(&self) -> Option<usize> {
        self.index
    }
}

/// The MCP transport headers of a request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct McpHeaders {
    /// `MCP-Protocol-Version`.
    pub protocol_version: Option<String>,
    /// `Mcp-Session-Id`.
    pub session_id: Option<String>,
    /// `Mcp-Method` (2026-07-28).
    pub method: Option<String>,
    /// `Mcp-Name` (2026-07-28).
    pub name: Option<String>,
}

impl McpHeaders {
    /// Reads the MCP headers, trimmed. A header whose value is not visible ASCII reads as
    /// absent, and a repeated header keeps its first value.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let get = |name: HeaderName| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(|s| s.trim().to_owned())
        };
        Self {
            protocol_version: get(header::MCP_PROTOCOL_VERSION),
            session_id: get(header::MCP_SESSION_ID),
            method: get(header::MCP_METHOD),
            name: get(header::MCP_NAME),
        }
    }
}

/// Whether `s` holds a control character (Unicode `Cc`: C0, DEL, C1).
fn has_control(s: &str) -> bool {
    s.chars().any(char::is_control)
}

/// The name an `Mcp-Name` value carries: the value itself, or, for the 2026-07-28
/// revision's `=?base64?{Base64}?=` form (how a client sends a name outside printable
/// ASCII), the UTF-8 text of the standard Base64 (padded) between the markers. `None` when
/// that form does not decode.
///
/// ```
/// use mcp_core::request::decode_name_header;
///
/// assert_eq!(decode_name_header("echo").as_deref(), Some("echo"));
/// assert_eq!(decode_name_header("=?base64?w6ljaG8=?=").as_deref(), Some("écho"));
/// assert_eq!(decode_name_header("=?base64?w6ljaG8?="), None);
/// ```
pub fn decode_name_header(value: &str) -> Option<Cow<'_, str>> {
    let Some(inner) = value
        .strip_prefix("=?base64?")
        .and_then(|r| r.strip_suffix("?="))
    else {
        return Some(Cow::Borrowed(value));
    };
    let bytes = decode_base64(inner.as_bytes())?;
    String::from_utf8(bytes).ok().map(Cow::Owned)
}

/// Strict standard Base64: padded to a multiple of 4, the standard alphabet, and the
/// unused bits of the last symbol zero (one text per byte string).
fn decode_base64(s: &[u8]) -> Option<Vec<u8>> {
    fn val(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    if !s.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    let chunks = s.len() / 4;
    for (i, c) in s.chunks_exact(4).enumerate() {
        let last = i + 1 == chunks;
        let pad = match (c[2], c[3]) {
            (b'=', b'=') if last => 2,
            (_, b'=') if last => 1,
            _ => 0,
        };
        let mut n = 0u32;
        for (j, &b) in c.iter().enumerate() {
            let v = if j >= 4 - pad { 0 } else { val(b)? };
            n = (n << 6) | v;
        }
        // Unused bits must be zero.
        if (pad == 2 && n & 0xffff != 0) || (pad == 1 && n & 0xff != 0) {
            return None;
        }
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..4 - pad]);
    }
    Some(out)
}

/// The `params._meta` key in which a 2026-07-28 request names its protocol revision.
pub const PROTOCOL_VERSION_META: &str = "io.modelcontextprotocol/protocolVersion";

/// Which MCP header disagrees with the body, as found by [`McpRequest::header_mismatch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderMismatch {
    /// `Mcp-Method` differs from the body's `method` (or the body has none).
    Method,
    /// `Mcp-Name` differs from `params.name` / `params.uri` (or the body has none).
    Name,
    /// `Mcp-Method` or `Mcp-Name` was sent with a batch, which they cannot describe.
    Batch,
    /// The body's `params._meta["io.modelcontextprotocol/protocolVersion"]` (2026-07-28:
    /// every request names its revision) differs from `MCP-Protocol-Version`, or the
    /// header is absent (that revision requires it on every request).
    ProtocolVersion,
}

impl HeaderMismatch {
    /// The header's name.
    pub fn header(self) -> &'static str {
        match self {
            Self::Method | Self::Batch => "Mcp-Method",
            Self::Name => "Mcp-Name",
            Self::ProtocolVersion => "MCP-Protocol-Version",
        }
    }
}

/// The messages of a body: a single message is kept inline (no second allocation).
enum Messages {
    One(McpMessage),
    Batch(Vec<McpMessage>),
}

impl Messages {
    fn as_slice(&self) -> &[McpMessage] {
        match self {
            Self::One(m) => std::slice::from_ref(m),
            Self::Batch(v) => v,
        }
    }
}

struct Inner {
    raw: Bytes,
    value: Value,
    messages: Messages,
    batch: bool,
    headers: McpHeaders,
}

/// A request body parsed once as JSON-RPC 2.0, with the MCP headers.
///
/// ```
/// use mcp_core::{McpHeaders, McpRequest, MessageKind};
///
/// let body = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call",
///                 "params":{"name":"search","arguments":{"q":"rust"}}}"#;
/// let req = McpRequest::parse(bytes::Bytes::from_static(body), McpHeaders::default()).unwrap();
/// assert_eq!(req.method(), Some("tools/call"));
/// assert_eq!(req.tool_name(), Some("search"));
/// assert_eq!(req.kind(), MessageKind::Request);
/// assert_eq!(req.arguments().unwrap()["q"], "rust");
/// ```
#[derive(Clone)]
pub struct McpRequest(Arc<Inner>);

impl fmt::Debug for McpRequest {
    // The body may carry secrets in arguments: Debug shows only the extracted facts.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("McpRequest")
            .field("batch", &self.0.batch)
            .field("messages", &self.0.messages.as_slice())
            .field("headers", &self.0.headers)
            .field("body_len", &self.0.raw.len())
            .finish()
    }
}

impl McpRequest {
    /// Parses a body. Fails when the bytes are not JSON (JSON-RPC -32700), or are JSON
    /// that parsers read differently (-32600; duplicate keys anywhere, case variants of
    /// the MCP keys, NUL in a key: see [`crate::json`]). Valid JSON that is not a valid
    /// JSON-RPC message is kept and reported as [`MessageKind::Invalid`] so that a
    /// validator can answer -32600 with the id. [`JsonError::rejection`] gives the answer.
    pub fn parse(raw: Bytes, headers: McpHeaders) -> Result<Self, JsonError> {
        let value = crate::json::from_slice(&raw)?;
        crate::json::check_message_keys(&value).map_err(JsonError::Ambiguous)?;
        Ok(Self::from_parts(raw, value, headers))
    }

    /// Builds the model from bytes and the value already parsed from them (used by a layer
    /// that rewrites the body, so that it does not parse again).
    pub fn from_parts(raw: Bytes, value: Value, headers: McpHeaders) -> Self {
        let (messages, batch) = match &value {
            Value::Array(items) => (
                Messages::Batch(
                    items
                        .iter()
                        .enumerate()
                        .map(|(i, v)| McpMessage::from_value(v, Some(i)))
                        .collect(),
                ),
                true,
            ),
            other => (Messages::One(McpMessage::from_value(other, None)), false),
        };
        Self(Arc::new(Inner {
            raw,
            value,
            messages,
            batch,
            headers,
        }))
    }

    /// The body bytes exactly as received (or as rewritten by a layer).
    pub fn raw(&self) -> &Bytes {
        &self.0.raw
    }

    /// The parsed JSON value.
    pub fn value(&self) -> &Value {
        &self.0.value
    }

    /// The messages: one for a single message, one per element for a batch.
    pub fn messages(&self) -> &[McpMessage] {
        self.0.messages.as_slice()
    }

    /// Whether the body is a batch array.
    pub fn is_batch(&self) -> bool {
        self.0.batch
    }

    /// The MCP transport headers.
    pub fn headers(&self) -> &McpHeaders {
        &self.0.headers
    }

    /// The first message (the only one unless the body is a batch). `None` only for an
    /// empty batch array.
    pub fn first(&self) -> Option<&McpMessage> {
        self.messages().first()
    }

    /// The kind of the single message; for a batch, the kind of its first element, or
    /// [`MessageKind::Invalid`] for an empty batch.
    pub fn kind(&self) -> MessageKind {
        self.first().map_or(MessageKind::Invalid, McpMessage::kind)
    }

    /// The id of the single message (the first for a batch).
    pub fn id(&self) -> Option<&JsonRpcId> {
        self.first().and_then(McpMessage::id)
    }

    /// The method of the single message (the first for a batch).
    pub fn method(&self) -> Option<&str> {
        self.first().and_then(McpMessage::method)
    }

    /// The target of the single message (the first for a batch).
    pub fn target(&self) -> Option<&Target> {
        self.first().and_then(McpMessage::target)
    }

    /// The tool name of a `tools/call`.
    pub fn tool_name(&self) -> Option<&str> {
        self.first().and_then(McpMessage::tool_name)
    }

    /// The resource URI of `resources/read`, `subscribe` or `unsubscribe`.
    pub fn resource_uri(&self) -> Option<&str> {
        self.first().and_then(McpMessage::resource_uri)
    }

    /// The prompt name of a `prompts/get`.
    pub fn prompt_name(&self) -> Option<&str> {
        self.first().and_then(McpMessage::prompt_name)
    }

    /// The `params` of the message at `index` (0 for a single message).
    pub fn params_at(&self, index: usize) -> Option<&Value> {
        let msg = if self.0.batch {
            self.0.value.as_array()?.get(index)?
        } else if index == 0 {
            &self.0.value
        } else {
            return None;
        };
        msg.get("params")
    }

    /// The index of the first message whose method, target name (`params.name` of a
    /// `tools/call` / `prompts/get`, `params.uri` of a resource request) or completion
    /// reference (`params.ref.name` / `params.ref.uri` of `completion/complete`) holds a
    /// control character (C0 including TAB, CR and LF, DEL, C1): names that no rule can
    /// match as written and that read differently in logs. [`crate::ParseLayer`] refuses
    /// such a request whatever else is configured.
    ///
    /// ```
    /// use mcp_core::{McpHeaders, McpRequest};
    /// let body = bytes::Bytes::from_static(br#"{"id":1,"method":"tools/call","params":{"name":"ec\nho"}}"#);
    /// let req = McpRequest::parse(body, McpHeaders::default()).unwrap();
    /// assert_eq!(req.control_char_in_name(), Some(0));
    /// ```
    pub fn control_char_in_name(&self) -> Option<usize> {
        let bad = |v: Option<&Value>| v.and_then(Value::as_str).is_some_and(has_control);
        (0..self.messages().len()).find(|&i| {
            let msg = if self.0.batch {
                self.0.value.as_array().and_then(|a| a.get(i))
            } else {
                Some(&self.0.value)
            };
            let Some(msg) = msg else { return false };
            let completion_ref = (msg.get("method").and_then(Value::as_str)
                == Some("completion/complete"))
            .then(|| msg.get("params").and_then(|p| p.get("ref")))
            .flatten();
            bad(msg.get("method"))
                || bad(completion_ref.and_then(|r| r.get("name")))
                || bad(completion_ref.and_then(|r| r.get("uri")))
                || self
                    .messages()
                    .get(i)
                    .and_then(McpMessage::target)
                    .is_some_and(|t| has_control(t.name()))
        })
    }

    /// The `params` of the single message (the first for a batch).
    pub fn params(&self) -> Option<&Value> {
        self.params_at(0)
    }

    /// `params.arguments` of a `tools/call` or `prompts/get` (the first message of a batch).
    pub fn arguments(&self) -> Option<&Value> {
        match self.method() {
            Some("tools/call" | "prompts/get") => self.params()?.get("arguments"),
            _ => None,
        }
    }

    /// Whether `Mcp-Method` / `Mcp-Name` (2026-07-28 revision) disagree with the body.
    /// Absent headers never disagree. `Mcp-Name` is compared with `params.name`, or
    /// `params.uri` when there is no name, as clients set it.
    ///
    /// A message whose `params._meta` names its revision
    /// ([`PROTOCOL_VERSION_META`], 2026-07-28 and later) must carry the same
    /// `MCP-Protocol-Version` header: a different or absent header disagrees
    /// ([`HeaderMismatch::ProtocolVersion`]), as that revision's transport requires.
    pub fn header_mismatch(&self) -> Option<HeaderMismatch> {
        let h = &self.0.headers;
        for i in 0..self.messages().len() {
            let meta = self
                .params_at(i)
                .and_then(|p| p.get("_meta"))
                .and_then(|m| m.get(PROTOCOL_VERSION_META));
            if let Some(v) = meta
                && (v.as_str().is_none() || v.as_str() != h.protocol_version.as_deref())
            {
                return Some(HeaderMismatch::ProtocolVersion);
            }
        }
        if h.method.is_none() && h.name.is_none() {
            return None;
        }
        if self.0.batch {
            return Some(HeaderMismatch::Batch);
        }
        if let Some(m) = &h.method
            && self.method() != Some(m.as_str())
        {
            return Some(HeaderMismatch::Method);
        }
        if let Some(n) = &h.name {
            // The `=?base64?...?=` form carries a name outside ASCII: compared decoded; a
            // form that does not decode disagrees.
            let Some(n) = decode_name_header(n) else {
                return Some(HeaderMismatch::Name);
            };
            // A tool or prompt target is `params.name` read already, and `params.name`
            // comes first: no second lookup in the params.
            let body_name = match self.target() {
                Some(Target::Tool(name) | Target::Prompt(name)) => Some(name.as_str()),
                _ => self.body_name(),
            };
            if body_name != Some(&*n) {
                return Some(HeaderMismatch::Name);
            }
        }
        None
    }

    /// `params.name`, or `params.uri` when there is no name, as strings: what `Mcp-Name`
    /// mirrors.
    fn body_name(&self) -> Option<&str> {
        let params = self.params();
        params
            .and_then(|p| p.get("name"))
            .and_then(Value::as_str)
            .or_else(|| params.and_then(|p| p.get("uri")).and_then(Value::as_str))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> McpRequest {
        McpRequest::parse(Bytes::copy_from_slice(s.as_bytes()), McpHeaders::default()).unwrap()
    }

    fn with_headers(s: &str, method: Option<&str>, name: Option<&str>) -> McpRequest {
        McpRequest::parse(
            Bytes::copy_from_slice(s.as_bytes()),
            McpHeaders {
                method: method.map(str::to_owned),
                name: name.map(str::to_owned),
                ..Default::default()
            },
        )
        .unwrap()
    }

    #[test]
    fn request_kinds() {
        assert_eq!(
            parse(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#).kind(),
            MessageKind::Request
        );
        assert_eq!(
            parse(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#).kind(),
            MessageKind::Notification
        );
        assert_eq!(
            parse(r#"{"jsonrpc":"2.0","id":"a","result":{}}"#).kind(),
            MessageKind::Response
        );
        assert_eq!(
            parse(r#"{"jsonrpc":"2.0","id":"a","error":{"code":1,"message":"x"}}"#).kind(),
            MessageKind::Response
        );
        assert_eq!(parse(r#"[1,2]"#).kind(), MessageKind::Invalid);
        assert_eq!(parse(r#""str""#).kind(), MessageKind::Invalid);
        assert_eq!(parse(r#"[]"#).kind(), MessageKind::Invalid);
        assert!(parse(r#"[]"#).is_batch());
    }

    #[test]
    fn ids_keep_their_type() {
        assert_eq!(
            parse(r#"{"id":7,"method":"x"}"#).id(),
            Some(&JsonRpcId::from(7))
        );
        assert_eq!(
            parse(r#"{"id":"7","method":"x"}"#).id(),
            Some(&JsonRpcId::from("7"))
        );
        assert_eq!(parse(r#"{"id":null,"method":"x"}"#).id(), None);
        let big = parse(r#"{"id":1.5,"method":"x"}"#);
        assert_eq!(serde_json::to_string(big.id().unwrap()).unwrap(), "1.5");
    }

    #[test]
    fn control_characters_in_names() {
        for body in [
            r#"{"id":1,"method":"tools/call","params":{"name":"ec\nho"}}"#,
            r#"{"id":1,"method":"tools/call","params":{"name":"echo\r"}}"#,
            r#"{"id":1,"method":"prompts/get","params":{"name":"p\t"}}"#,
            r#"{"id":1,"method":"resources/read","params":{"uri":"file:///x\u007f"}}"#,
            r#"{"id":1,"method":"tools/list\n"}"#,
            r#"{"method":"notifications/x\u0085"}"#,
            r#"{"id":1,"method":"completion/complete","params":{"ref":{"type":"ref/prompt","name":"p\u001b"}}}"#,
            r#"{"id":1,"method":"completion/complete","params":{"ref":{"type":"ref/resource","uri":"u\u0000"}}}"#,
        ] {
            assert_eq!(parse(body).control_char_in_name(), Some(0), "{body}");
        }
        let batch = parse(
            r#"[{"id":1,"method":"tools/list"},{"id":2,"method":"tools/call","params":{"name":"a\tb"}}]"#,
        );
        assert_eq!(batch.control_char_in_name(), Some(1));
        for body in [
            r#"{"id":1,"method":"tools/call","params":{"name":"echo","arguments":{"a":"x\ny"}}}"#,
            r#"{"id":1,"method":"tools/call","params":{"name":"\u00e9cho\u202e"}}"#,
            r#"{"id":1,"method":"initialize","params":{"clientInfo":{"name":"a\nb"}}}"#,
            r#"{"id":1,"result":{"name":"a\nb"}}"#,
        ] {
            assert_eq!(parse(body).control_char_in_name(), None, "{body}");
        }
    }

    #[test]
    fn targets() {
        let r =
            parse(r#"{"id":1,"method":"tools/call","params":{"name":"t","arguments":{"a":1}}}"#);
        assert_eq!(r.tool_name(), Some("t"));
        assert_eq!(r.arguments().unwrap()["a"], 1);
        let r = parse(r#"{"id":1,"method":"resources/read","params":{"uri":"file:///x"}}"#);
        assert_eq!(r.resource_uri(), Some("file:///x"));
        assert_eq!(r.tool_name(), None);
        for m in ["resources/subscribe", "resources/unsubscribe"] {
            let r = parse(&format!(
                r#"{{"id":1,"method":"{m}","params":{{"uri":"u"}}}}"#
            ));
            assert_eq!(r.resource_uri(), Some("u"));
        }
        let r =
            parse(r#"{"id":1,"method":"prompts/get","params":{"name":"p","arguments":{"x":"y"}}}"#);
        assert_eq!(r.prompt_name(), Some("p"));
        assert_eq!(r.arguments().unwrap()["x"], "y");
        let r = parse(r#"{"id":1,"method":"tools/list","params":{"name":"t"}}"#);
        assert_eq!(r.target(), None);
        assert_eq!(r.arguments(), None);
    }

    #[test]
    fn batch_messages() {
        let r = parse(
            r#"[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a"}},
                {"jsonrpc":"2.0","method":"notifications/x"}]"#,
        );
        assert!(r.is_batch());
        assert_eq!(r.messages().len(), 2);
        assert_eq!(r.messages()[1].kind(), MessageKind::Notification);
        assert_eq!(r.messages()[1].batch_index(), Some(1));
        assert_eq!(r.params_at(0).unwrap()["name"], "a");
        assert_eq!(r.params_at(1), None);
    }

    #[test]
    fn protocol_version_meta_must_match_the_header() {
        let body = r#"{"id":1,"method":"tools/list","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}"#;
        let with = |v: Option<&str>| {
            McpRequest::parse(
                Bytes::copy_from_slice(body.as_bytes()),
                McpHeaders {
                    protocol_version: v.map(str::to_owned),
                    ..Default::default()
                },
            )
            .unwrap()
            .header_mismatch()
        };
        assert_eq!(with(Some("2026-07-28")), None);
        for v in [None, Some("2025-11-25"), Some("2026-07-28 "), Some("")] {
            assert_eq!(with(v), Some(HeaderMismatch::ProtocolVersion), "{v:?}");
        }
        // Not a string; in the second message of a batch.
        let odd = r#"{"id":1,"method":"ping","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":20260728}}}"#;
        let r = McpRequest::parse(
            Bytes::copy_from_slice(odd.as_bytes()),
            McpHeaders::default(),
        )
        .unwrap();
        assert_eq!(r.header_mismatch(), Some(HeaderMismatch::ProtocolVersion));
        let batch = r#"[{"id":1,"method":"ping"},{"id":2,"method":"ping","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}]"#;
        let r = McpRequest::parse(
            Bytes::copy_from_slice(batch.as_bytes()),
            McpHeaders::default(),
        )
        .unwrap();
        assert_eq!(r.header_mismatch(), Some(HeaderMismatch::ProtocolVersion));
        // Without the key, nothing to compare.
        assert_eq!(
            parse(r#"{"id":1,"method":"ping","params":{"_meta":{}}}"#).header_mismatch(),
            None
        );
    }

    #[test]
    fn header_mismatch() {
        let body = r#"{"id":1,"method":"tools/call","params":{"name":"t"}}"#;
        assert_eq!(with_headers(body, None, None).header_mismatch(), None);
        assert_eq!(
            with_headers(body, Some("tools/call"), Some("t")).header_mismatch(),
            None
        );
        assert_eq!(
            with_headers(body, Some("tools/list"), None).header_mismatch(),
            Some(HeaderMismatch::Method)
        );
        assert_eq!(
            with_headers(body, Some("tools/call"), Some("other")).header_mismatch(),
            Some(HeaderMismatch::Name)
        );
        let res = r#"{"id":1,"method":"resources/read","params":{"uri":"file:///a"}}"#;
        assert_eq!(
            with_headers(res, None, Some("file:///a")).header_mismatch(),
            None
        );
        assert_eq!(
            with_headers(res, None, Some("file:///b")).header_mismatch(),
            Some(HeaderMismatch::Name)
        );
        assert_eq!(
            with_headers(r#"[{"id":1,"method":"x"}]"#, Some("x"), None).header_mismatch(),
            Some(HeaderMismatch::Batch)
        );
        // A name header with no name in the body disagrees.
        assert_eq!(
            with_headers(r#"{"id":1,"method":"ping"}"#, None, Some("t")).header_mismatch(),
            Some(HeaderMismatch::Name)
        );
    }

    #[test]
    fn headers_are_read_case_insensitively() {
        let mut h = HeaderMap::new();
        h.insert("MCP-Protocol-Version", "2025-11-25".parse().unwrap());
        h.insert("mcp-session-id", "abc".parse().unwrap());
        h.insert("Mcp-Method", "tools/call".parse().unwrap());
        h.insert("MCP-NAME", "t".parse().unwrap());
        let m = McpHeaders::from_headers(&h);
        assert_eq!(m.protocol_version.as_deref(), Some("2025-11-25"));
        assert_eq!(m.session_id.as_deref(), Some("abc"));
        assert_eq!(m.method.as_deref(), Some("tools/call"));
        assert_eq!(m.name.as_deref(), Some("t"));
    }

    fn arb_params() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let field = prop_oneof![
            Just(None),
            Just(Some(Value::Null)),
            Just(Some(Value::from(3))),
            prop::sample::select(vec!["t", "u", "file:///a", ""])
                .prop_map(|s| Some(Value::from(s))),
        ];
        (field.clone(), field, any::<bool>()).prop_map(|(name, uri, obj)| {
            if !obj {
                return Value::from("not an object");
            }
            let mut m = serde_json::Map::new();
            if let Some(n) = name {
                m.insert("name".into(), n);
            }
            if let Some(u) = uri {
                m.insert("uri".into(), u);
            }
            Value::Object(m)
        })
    }

    proptest::proptest! {
        /// The name check reads the target where there is one and the params otherwise:
        /// it always agrees with reading `params.name`, else `params.uri`.
        #[test]
        fn name_mismatch_agrees_with_reading_the_params(
            method in proptest::sample::select(vec!["tools/call", "prompts/get", "resources/read", "resources/subscribe", "ping"]),
            params in arb_params(),
            header in proptest::sample::select(vec!["t", "u", "file:///a", "", "3"]),
        ) {
            let body = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
            let r = with_headers(&body.to_string(), None, Some(header));
            let reference = r.body_name() != Some(header);
            proptest::prop_assert_eq!(r.header_mismatch() == Some(HeaderMismatch::Name), reference);
            let p = body.get("params");
            let by_hand = p.and_then(|p| p.get("name")).and_then(Value::as_str)
                .or_else(|| p.and_then(|p| p.get("uri")).and_then(Value::as_str));
            proptest::prop_assert_eq!(r.body_name(), by_hand);
        }
    }

    #[test]
    fn header_names_are_the_str_constants() {
        assert_eq!(header::MCP_PROTOCOL_VERSION.as_str(), MCP_PROTOCOL_VERSION);
        assert_eq!(header::MCP_SESSION_ID.as_str(), MCP_SESSION_ID);
        assert_eq!(header::MCP_METHOD.as_str(), MCP_METHOD);
        assert_eq!(header::MCP_NAME.as_str(), MCP_NAME);
    }

    #[test]
    fn known_and_unknown_methods_read_the_same() {
        let unknown = [
            "tools/calls",
            "Tools/call",
            "tools/call ",
            "",
            "x",
            r"ping\u0000",
        ];
        for m in KNOWN_METHODS.iter().copied().chain(unknown) {
            let r = parse(&format!(r#"{{"jsonrpc":"2.0","id":1,"method":"{m}"}}"#));
            let expected = serde_json::from_str::<String>(&format!("\"{m}\"")).unwrap();
            assert_eq!(r.method(), Some(expected.as_str()));
            assert_eq!(
                matches!(r.first().unwrap().method, Some(Cow::Borrowed(_))),
                KNOWN_METHODS.contains(&expected.as_str()),
                "{m}"
            );
            assert!(format!("{r:?}").contains(&format!("{:?}", expected)));
        }
    }

    #[test]
    fn a_single_message_and_a_batch_of_one_differ() {
        let one = parse(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#);
        let batch = parse(r#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#);
        assert_eq!(one.messages().len(), 1);
        assert_eq!(batch.messages().len(), 1);
        assert_eq!(one.messages()[0].batch_index(), None);
        assert_eq!(batch.messages()[0].batch_index(), Some(0));
        assert!(!one.is_batch() && batch.is_batch());
    }

    #[test]
    fn debug_never_shows_arguments() {
        let r = parse(
            r#"{"id":1,"method":"tools/call","params":{"name":"t","arguments":{"password":"hunter2"}}}"#,
        );
        assert!(!format!("{r:?}").contains("hunter2"));
    }
}
