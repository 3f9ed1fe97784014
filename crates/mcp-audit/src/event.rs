//! Audit events: what the request path hands over ([`AuditEvent`], cheap to build) and
//! what the sinks write ([`AuditRecord`], masked and serialized by the background writer).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderName, Method};
use mcp_core::{Denial, McpMessage, McpRequest, MessageKind, Principal, RejectionReason, Target};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::capture::{Entry, RequestText};
use crate::config::LimitsConfig;
use crate::layer::RequestId;
use crate::mask::Masker;

/// The kind of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A request that went through the [`crate::AuditLayer`] (served or refused).
    Request,
    /// A refused authentication (a request refused with `auth_failed`, or one reported
    /// through [`AuditEvent::auth_failure`], e.g. a failed TLS client certificate).
    AuthFailure,
    /// The gateway started.
    Startup,
    /// The gateway is shutting down.
    Shutdown,
    /// The configuration was reloaded.
    ConfigReload,
    /// Connections the server refused before any request (over the per-client cap),
    /// aggregated per client address: `data.refused` counts them (see
    /// [`crate::ConnectionAudit`]).
    Connection,
    /// Refusals of one client (an address, or a principal) for one reason, counted over
    /// an interval after the first, which is recorded in full: `data.refused` counts
    /// them, `data.first` / `data.last` (RFC 3339) say when (see
    /// [`crate::refusals`]).
    Refusals,
}

impl EventKind {
    /// The stable snake_case name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Request => "request",
            Self::AuthFailure => "auth_failure",
            Self::Startup => "startup",
            Self::Shutdown => "shutdown",
            Self::ConfigReload => "config_reload",
            Self::Connection => "connection",
            Self::Refusals => "refusals",
        }
    }
}

/// What happened to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Served (HTTP status below 400, no denial).
    Success,
    /// Refused by a layer (a [`Denial`] in the response extensions).
    Denied,
    /// Failed: an upstream or internal error, an error status without a denial, a body
    /// that failed while streaming, an inner service error, or a response the server cut
    /// (reason `write_timeout`: the client took none of it for the write timeout, so the
    /// server closed the connection with the response not all written; the HTTP status
    /// sent is kept).
    Error,
    /// Abandoned before its response: the client disconnected, or the connection or a
    /// timeout dropped the request, while an inner service (the upstream) was still
    /// working on it. The record still names the caller and the call, from the
    /// `mcp_core::RequestFacts` the inner layers noted. Also a successful `POST` whose
    /// response body the client did not take to its end (the HTTP status is kept).
    Cancelled,
}

impl Outcome {
    /// The stable snake_case name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Denied => "denied",
            Self::Error => "error",
            Self::Cancelled => "cancelled",
        }
    }
}

/// The data of an event as collected on the request path: references to values that
/// already exist (`Arc`s, `Bytes`), no masking, no formatting.
#[derive(Default)]
pub(crate) struct EventData {
    pub(crate) kind: Option<EventKind>,
    pub(crate) at: Option<SystemTime>,
    pub(crate) request_id: Option<RequestId>,
    pub(crate) principal: Option<Principal>,
    pub(crate) client_ip: Option<IpAddr>,
    pub(crate) http_method: Option<Method>,
    pub(crate) mcp: Option<McpRequest>,
    pub(crate) status: Option<u16>,
    pub(crate) denial: Option<Denial>,
    pub(crate) outcome: Option<Outcome>,
    pub(crate) duration: Option<Duration>,
    pub(crate) upstream: Option<Arc<str>>,
    pub(crate) bytes_in: Option<u64>,
    pub(crate) bytes_out: Option<u64>,
    /// The path and (when recorded) the headers, copied from the request.
    pub(crate) request: Option<RequestText>,
    /// Tests: the request's path and headers, for the reference renderer (the event holds
    /// their copy in `request`).
    #[cfg(test)]
    pub(crate) orig_path: Option<http::Uri>,
    #[cfg(test)]
    pub(crate) orig_headers: Option<http::HeaderMap>,
    pub(crate) message: Option<Cow<'static, str>>,
    pub(crate) data: Option<Value>,
    /// A reason and detail of the connection layer (a cut response, refused
    /// connections), recorded instead of the denial's.
    pub(crate) note: Option<(&'static str, &'static str)>,
}

/// An event handed to the writer. Request events are built by [`crate::AuditLayer`];
/// lifecycle and authentication-failure events by the constructors here, then recorded
/// with [`crate::AuditHandle::record`].
///
/// ```
/// use mcp_audit::AuditEvent;
///
/// let ev = AuditEvent::config_reload()
///     .with_message("reloaded from /etc/mcp/gateway.yaml")
///     .with_data(serde_json::json!({"changed": ["auth.apiKeys"]}));
/// # drop(ev);
/// ```
pub struct AuditEvent(pub(crate) Box<EventData>);

impl fmt::Debug for AuditEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditEvent")
            .field("kind", &self.0.kind)
            .field("request_id", &self.0.request_id)
            .field("status", &self.0.status)
            .finish_non_exhaustive()
    }
}

impl AuditEvent {
    fn of(kind: EventKind) -> Self {
        Self(Box::new(EventData {
            kind: Some(kind),
            at: Some(SystemTime::now()),
            ..EventData::default()
        }))
    }

    /// The gateway started.
    pub fn startup() -> Self {
        Self::of(EventKind::Startup)
    }

    /// The gateway is shutting down.
    pub fn shutdown() -> Self {
        Self::of(EventKind::Shutdown)
    }

    /// The configuration was reloaded.
    pub fn config_reload() -> Self {
        Self::of(EventKind::ConfigReload)
    }

    /// An authentication failure that did not go through the [`crate::AuditLayer`] (a
    /// TLS handshake that refused a client certificate, for example). Requests refused
    /// with `auth_failed` are recorded with this kind by the layer itself.
    pub fn auth_failure() -> Self {
        let mut e = Self::of(EventKind::AuthFailure);
        e.0.outcome = Some(Outcome::Denied);
        e.0.denial = Some(Denial {
            reason: RejectionReason::AuthFailed,
            code: RejectionReason::AuthFailed.default_code(),
            detail: None,
        });
        e
    }

    /// A free-form message (never put a secret in it; it is still pattern-masked).
    pub fn with_message(mut self, message: impl Into<Cow<'static, str>>) -> Self {
        self.0.message = Some(message.into());
        self
    }

    /// Structured data (masked like parameters).
    pub fn with_data(mut self, data: Value) -> Self {
        self.0.data = Some(data);
        self
    }

    /// The client IP.
    pub fn with_client_ip(mut self, ip: IpAddr) -> Self {
        self.0.client_ip = Some(ip);
        self
    }

    /// The principal concerned.
    pub fn with_principal(mut self, principal: Principal) -> Self {
        self.0.principal = Some(principal);
        self
    }

    /// A safe detail for an authentication failure (e.g. `certificate_expired`).
    pub fn with_detail(mut self, detail: impl Into<Cow<'static, str>>) -> Self {
        let d = self.0.denial.get_or_insert(Denial {
            reason: RejectionReason::AuthFailed,
            code: RejectionReason::AuthFailed.default_code(),
            detail: None,
        });
        d.detail = Some(detail.into());
        self
    }

    /// The kind.
    pub fn kind(&self) -> EventKind {
        self.0.kind.unwrap_or(EventKind::Request)
    }

    /// The outcome, once known.
    pub fn outcome(&self) -> Option<Outcome> {
        self.0.outcome
    }
}

/// A record as written by the sinks (the `event` of each row or line), after masking.
/// Field names follow the seeds' log format (`timestamp`, `request_id`, `user`, `tool`,
/// `params`, `duration_ms`, `status`) plus the suite's own.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Unique id of the event (UUIDv7, assigned by the writer).
    pub event_id: String,
    /// RFC 3339 UTC, microseconds.
    pub timestamp: String,
    /// The kind.
    pub kind: Option<EventKind>,
    /// The request id (returned to the client as `x-request-id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// The principal's qualified id (`apikey:ops`, `jwt:<issuer>#<sub>`, `mtls:<identity>`,
    /// see `mcp_core::Principal::qualified_id`), never a client-supplied header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// How the principal was authenticated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_method: Option<String>,
    /// The configured id of the credential that matched (never its value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_id: Option<String>,
    /// The client IP (through trusted proxies only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<String>,
    /// The HTTP method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_method: Option<String>,
    /// The request path (without the query string, which may carry secrets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The JSON-RPC method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcp_method: Option<String>,
    /// What the JSON-RPC message is: `request`, `notification`, `response` (a client's
    /// answer to a server request, e.g. an elicitation result) or `invalid`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_type: Option<String>,
    /// The JSON-RPC id (number or string) of a request, or the id a response answers.
    /// A string id is masked and capped like any client text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jsonrpc_id: Option<Value>,
    /// The id of the request another message refers to: `params.requestId` of
    /// `notifications/cancelled`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub related_id: Option<Value>,
    /// The tool of a `tools/call`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    /// The resource URI of a `resources/*` call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// The prompt of a `prompts/get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// Number of messages of a batch body: each message of a batch is one record, all
    /// with the same `request_id` and `batch_size`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<usize>,
    /// The position of this record's message in its batch (from 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_index: Option<usize>,
    /// The message's params, masked, or `{"truncated":true,"bytes":N}` over the cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<Value>,
    /// The content of a client's response (`{"result":...}` or `{"error":...}`), masked,
    /// or `{"truncated":true,"bytes":N}` over the cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<Value>,
    /// The outcome: `success`, `denied`, `error` or `cancelled` (the seeds' `status`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Outcome>,
    /// The HTTP status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    /// The JSON-RPC error code sent with a refusal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jsonrpc_error_code: Option<i64>,
    /// The typed reason of a refusal (`auth_failed`, `rate_limited`, ...), or of the
    /// connection layer: `write_timeout`, `certificate_expired`, `certificate_refused` (a
    /// response cut when its connection was closed for that), `too_many_connections`
    /// (connections refused, kind `connection`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A safe detail of the refusal (rule name, scope), or a fixed description of the
    /// connection layer's reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Time from the request to the end of the response body (streams included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<f64>,
    /// The upstream that served the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    /// Request body bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_in: Option<u64>,
    /// Response body bytes actually sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_out: Option<u64>,
    /// Request headers, sensitive ones redacted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<BTreeMap<String, String>>,
    /// A message (lifecycle events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Structured data (lifecycle events), masked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
    /// The fields cut to their cap ([`crate::LimitsConfig`]), sorted:
    /// `path`, `headers.<name>` (one value cut), `headers` (headers left out past the
    /// total cap), `params`, `response`, `data`, or the name of any other field cut
    /// (`tool`, `jsonrpc_id`, `detail`, ...). Absent when nothing was cut.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncated: Option<Vec<String>>,
}

/// The indexed columns of a stored record, derived from the record (verification checks
/// that they agree with it).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IndexColumns {
    /// Microseconds since the Unix epoch.
    pub ts_us: i64,
    /// The kind.
    pub kind: String,
    /// The event id.
    pub event_id: String,
    /// The request id.
    pub request_id: Option<String>,
    /// The principal's qualified id.
    pub user: Option<String>,
    /// The tool (or resource, or prompt) name.
    pub tool: Option<String>,
    /// The JSON-RPC method.
    pub mcp_method: Option<String>,
    /// The outcome.
    pub outcome: Option<String>,
    /// The HTTP status.
    pub http_status: Option<i32>,
    /// The denial reason.
    pub reason: Option<String>,
    /// The JSON text of the JSON-RPC id (`7`, `"abc"`): the record's `jsonrpc_id`, or
    /// else its `related_id` (the request a `notifications/cancelled` cancels), so that
    /// the rows of one exchange share it.
    pub jsonrpc_id: Option<String>,
}

impl IndexColumns {
    /// Derives the columns from a record.
    pub fn of(r: &AuditRecord) -> Self {
        let ts_us = time::OffsetDateTime::parse(
            &r.timestamp,
            &time::format_description::well_known::Rfc3339,
        )
        .map(|t| (t.unix_timestamp_nanos() / 1000) as i64)
        .unwrap_or(0);
        Self::with_ts(r, ts_us)
    }

    fn with_ts(r: &AuditRecord, ts_us: i64) -> Self {
        // As the renderer writes them: controls spelled as JSON escapes.
        Self::spelled(r, ts_us, crate::mask::escape_display_controls)
    }

    /// The columns of `r` with client text spelled by `escape`.
    pub(crate) fn spelled(r: &AuditRecord, ts_us: i64, escape: fn(&str) -> Cow<'_, str>) -> Self {
        let col = |s: &Option<String>| s.as_deref().map(|s| escape(s).into_owned());
        Self {
            ts_us,
            kind: r.kind.unwrap_or(EventKind::Request).as_str().to_owned(),
            event_id: r.event_id.clone(),
            request_id: col(&r.request_id),
            user: col(&r.user),
            tool: col(&r.tool)
                .or_else(|| col(&r.resource))
                .or_else(|| col(&r.prompt)),
            mcp_method: col(&r.mcp_method),
            outcome: r.status.map(|o| o.as_str().to_owned()),
            http_status: r.http_status.map(i32::from),
            reason: col(&r.reason),
            jsonrpc_id: r.jsonrpc_id.as_ref().or(r.related_id.as_ref()).map(id_text),
        }
    }
}

/// The column text of a JSON-RPC id: its JSON, display controls escaped.
fn id_text(v: &Value) -> String {
    let mut out = Vec::new();
    match v {
        Value::String(s) => crate::mask::write_json_str(&mut out, s),
        other => crate::mask::write_json(&mut out, other),
    }
    String::from_utf8(out).unwrap_or_default()
}

/// A masked, serialized event ready for the sinks.
#[derive(Debug, Clone)]
pub struct SinkEvent {
    /// The canonical JSON of the [`AuditRecord`]: exactly these bytes are stored and
    /// hashed.
    pub json: Arc<str>,
    /// The indexed columns.
    pub columns: IndexColumns,
}

/// What the writer needs to render events.
#[derive(Debug, Clone)]
pub(crate) struct Renderer {
    pub(crate) masker: Masker,
    pub(crate) sensitive_headers: Arc<[HeaderName]>,
    pub(crate) limits: LimitsConfig,
    /// The output buffer, reused from one event to the next.
    pub(crate) buf: Vec<u8>,
    /// Scratch space to sort the headers, reused from one event to the next.
    pub(crate) header_order: Vec<Entry>,
}

/// The RFC 3339 UTC timestamp with microseconds (`2023-11-14T22:13:20.123456Z`) of
/// `at`, and the microseconds since the Unix epoch. Times outside 1970..=9999 are
/// rendered as the epoch.
fn rfc3339(at: SystemTime) -> ([u8; 27], i64) {
    let d = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let us = i64::try_from(d.as_micros()).unwrap_or(i64::MAX);
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let mut out = *b"0000-00-00T00:00:00.000000Z";
    let mut put = |at: usize, width: usize, mut v: u32| {
        for slot in out[at..at + width].iter_mut().rev() {
            *slot = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, 4, t.year().clamp(0, 9999) as u32);
    put(5, 2, u32::from(u8::from(t.month())));
    put(8, 2, u32::from(t.day()));
    put(11, 2, u32::from(t.hour()));
    put(14, 2, u32::from(t.minute()));
    put(17, 2, u32::from(t.second()));
    put(20, 6, t.microsecond());
    (out, us)
}

/// Serializes with `Display` (no intermediate `String`).
struct Shown<T>(T);

impl<T: fmt::Display> Serialize for Shown<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

/// Writes a JSON object member by member, byte for byte as serde_json's compact
/// serializer writes a struct (`{"a":1,"b":"x"}`). Member names are plain ASCII.
struct ObjectWriter<'a> {
    out: &'a mut Vec<u8>,
    empty: bool,
}

impl<'a> ObjectWriter<'a> {
    fn new(out: &'a mut Vec<u8>) -> Self {
        out.push(b'{');
        Self { out, empty: true }
    }

    fn key(&mut self, name: &str) -> &mut Vec<u8> {
        if !self.empty {
            self.out.push(b',');
        }
        self.empty = false;
        self.out.push(b'"');
        self.out.extend_from_slice(name.as_bytes());
        self.out.extend_from_slice(b"\":");
        self.out
    }

    fn field<T: Serialize + ?Sized>(&mut self, name: &str, v: &T) {
        // Writing to a Vec cannot fail, and these values always serialize.
        let _ = serde_json::to_writer(self.key(name), v);
    }

    fn text(&mut self, name: &str, v: Option<&str>) {
        if let Some(v) = v {
            crate::mask::write_json_str(self.key(name), v);
        }
    }

    fn opt<T: Serialize>(&mut self, name: &str, v: Option<T>) {
        if let Some(v) = v {
            self.field(name, &v);
        }
    }

    fn end(self) {
        self.out.push(b'}');
    }
}

/// The message of a body at `index` (the body itself when not a batch).
fn message_value(mcp: &McpRequest, index: usize) -> Option<&Value> {
    if mcp.is_batch() {
        mcp.value().as_array()?.get(index)
    } else if index == 0 {
        Some(mcp.value())
    } else {
        None
    }
}

/// The stable name of a message kind.
fn message_type(k: MessageKind) -> &'static str {
    match k {
        MessageKind::Request => "request",
        MessageKind::Notification => "notification",
        MessageKind::Response => "response",
        MessageKind::Invalid => "invalid",
    }
}

/// Collects the names of the fields cut while an event is rendered.
struct Cuts<'a> {
    names: &'a mut Vec<String>,
}

impl Cuts<'_> {
    /// `s` cut to `max` bytes; `name` noted when cut.
    fn text<'s>(&mut self, name: &str, max: usize, s: Cow<'s, str>) -> Cow<'s, str> {
        let (s, cut) = crate::mask::cap_text(s, max);
        if cut {
            self.names.push(name.to_owned());
        }
        s
    }
}

/// A JSON-RPC id as recorded: a number as is, a string masked and capped.
fn write_id(
    out: &mut Vec<u8>,
    masker: &Masker,
    id: &Value,
    max: usize,
    cuts: &mut Cuts<'_>,
    name: &str,
) {
    match id {
        Value::String(s) => {
            let s = cuts.text(name, max, masker.mask_str(s));
            crate::mask::write_json_str(out, &s);
        }
        Value::Number(n) => {
            let text = n.to_string();
            if text.len() <= max {
                out.extend_from_slice(text.as_bytes());
            } else {
                let s = cuts.text(name, max, Cow::Owned(text));
                crate::mask::write_json_str(out, &s);
            }
        }
        // Not an id (the message is invalid): its kind only.
        other => {
            let _ = serde_json::to_writer(&mut *out, &json_type(other));
        }
    }
}

/// The JSON type name of a value (`null`, `boolean`, `array`, `object`).
fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

impl Renderer {
    /// A renderer.
    pub(crate) fn new(
        masker: Masker,
        sensitive_headers: Arc<[HeaderName]>,
        limits: LimitsConfig,
    ) -> Self {
        Self {
            masker,
            sensitive_headers,
            limits,
            buf: Vec::with_capacity(2048),
            header_order: Vec::new(),
        }
    }

    /// Renders an event as records pushed on `out`: one for an event, or one per message
    /// of a batch body (all with the event's request id, `batch_size` and their
    /// `batch_index`; the headers and `data` on the first only).
    pub(crate) fn render_into(&mut self, e: &mut EventData, out: &mut Vec<SinkEvent>) {
        let data = e.data.take();
        let n = e
            .mcp
            .as_ref()
            .filter(|m| m.is_batch())
            .map_or(0, |m| m.messages().len());
        if n == 0 {
            out.push(self.render_row(e, None, data.as_ref()));
            return;
        }
        out.reserve(n);
        for i in 0..n {
            let data = if i == 0 { data.as_ref() } else { None };
            out.push(self.render_row(e, Some(i), data));
        }
    }

    /// Renders an event (the first message of a batch: tests).
    #[cfg(test)]
    pub(crate) fn render(&mut self, e: &mut EventData) -> SinkEvent {
        let mut out = Vec::new();
        self.render_into(e, &mut out);
        out.swap_remove(0)
    }

    /// Masks and serializes one record of an event, straight into the output buffer:
    /// masked values are written as they are masked (no copy of the params), unmasked
    /// strings are borrowed from the event. Each field is masked, then capped. The bytes
    /// are exactly those of `serde_json::to_string` of the [`AuditRecord`] built field by
    /// field (a test compares both).
    fn render_row(
        &mut self,
        e: &EventData,
        batch_index: Option<usize>,
        data: Option<&Value>,
    ) -> SinkEvent {
        let (timestamp, ts_us) = rfc3339(e.at.unwrap_or_else(SystemTime::now));
        let timestamp = std::str::from_utf8(&timestamp).unwrap_or_default();
        let mut kind = e.kind.unwrap_or(EventKind::Request);
        if kind == EventKind::Request
            && e.denial
                .as_ref()
                .is_some_and(|d| d.reason == RejectionReason::AuthFailed)
        {
            kind = EventKind::AuthFailure;
        }
        let limits = &self.limits;
        let field_max = limits.field_bytes;
        let mut cut_names = Vec::new();
        let mut cuts = Cuts {
            names: &mut cut_names,
        };
        let masker = &self.masker;
        let ms = |s| masker.mask_str(s);
        let mut id_buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
        let event_id: &str = crate::layer::fast_uuid_v7()
            .hyphenated()
            .encode_lower(&mut id_buf);
        let request_id = e
            .request_id
            .as_ref()
            .map(|r| cuts.text("request_id", field_max, ms(r.as_str())));
        let user = e
            .principal
            .as_ref()
            .map(|p| cuts.text("user", field_max, ms(p.qualified_id())));
        let credential_id = e
            .principal
            .as_ref()
            .and_then(|p| p.credential_id())
            .map(|c| cuts.text("credential_id", field_max, ms(c)));
        let request = e.request.as_ref();
        let path = request
            .and_then(RequestText::path)
            .map(|p| cuts.text("path", limits.path_bytes, ms(p)));
        let mcp = e.mcp.as_ref();
        let index = batch_index.unwrap_or(0);
        let msg = mcp.and_then(|m| m.messages().get(index));
        let msg_value = mcp.and_then(|m| message_value(m, index));
        let mcp_method = msg
            .and_then(McpMessage::method)
            .map(|m| cuts.text("mcp_method", field_max, ms(m)));
        let target = msg.and_then(McpMessage::target).map(|t| match t {
            Target::Tool(n) => (t, cuts.text("tool", field_max, ms(n))),
            Target::Resource(n) => (t, cuts.text("resource", field_max, ms(n))),
            Target::Prompt(n) => (t, cuts.text("prompt", field_max, ms(n))),
        });
        let target_of =
            |want: fn(&Target) -> bool| target.as_ref().filter(|(t, _)| want(t)).map(|(_, n)| &**n);
        let reason = e
            .note
            .map(|(reason, _)| reason)
            .or_else(|| e.denial.as_ref().map(|d| d.reason.as_str()));
        let msg_kind = msg.map(McpMessage::kind);
        // The id of the message (requests and responses), and the request a
        // cancellation names.
        let own_id = msg_value
            .filter(|_| matches!(msg_kind, Some(MessageKind::Request | MessageKind::Response)))
            .and_then(|v| v.get("id"));
        let related_id = msg_value
            .filter(|_| msg.and_then(McpMessage::method) == Some("notifications/cancelled"))
            .and_then(|v| v.get("params"))
            .and_then(|p| p.get("requestId"))
            .filter(|v| v.is_string() || v.is_number());

        let out = &mut self.buf;
        out.clear();
        let mut w = ObjectWriter::new(out);
        w.text("event_id", Some(event_id));
        w.text("timestamp", Some(timestamp));
        w.text("kind", Some(kind.as_str()));
        w.text("request_id", request_id.as_deref());
        w.text("user", user.as_deref());
        w.text(
            "auth_method",
            e.principal.as_ref().map(|p| p.method().as_str()),
        );
        w.text("credential_id", credential_id.as_deref());
        w.opt("client_ip", e.client_ip.map(Shown));
        w.text("http_method", e.http_method.as_ref().map(Method::as_str));
        w.text("path", path.as_deref());
        w.text("mcp_method", mcp_method.as_deref());
        w.text("message_type", msg_kind.map(message_type));
        let mut id_col = None;
        if let Some(id) = own_id {
            let out = w.key("jsonrpc_id");
            let start = out.len();
            write_id(out, masker, id, field_max, &mut cuts, "jsonrpc_id");
            id_col = Some(start..out.len());
        }
        if let Some(id) = related_id {
            let out = w.key("related_id");
            let start = out.len();
            write_id(out, masker, id, field_max, &mut cuts, "related_id");
            if id_col.is_none() {
                id_col = Some(start..out.len());
            }
        }
        let id_col = id_col
            .and_then(|r| w.out.get(r))
            .map(|b| String::from_utf8_lossy(b).into_owned());
        w.text("tool", target_of(|t| matches!(t, Target::Tool(_))));
        w.text("resource", target_of(|t| matches!(t, Target::Resource(_))));
        w.text("prompt", target_of(|t| matches!(t, Target::Prompt(_))));
        if let (Some(mcp), Some(i)) = (mcp, batch_index) {
            w.field("batch_size", &mcp.messages().len());
            w.field("batch_index", &i);
        }
        if let Some(v) = mcp.and_then(|m| m.params_at(index)) {
            let out = w.key("params");
            if write_capped(out, limits.params_bytes, |out| masker.write_masked(out, v)) {
                cuts.names.push("params".to_owned());
            }
        }
        if msg_kind == Some(MessageKind::Response)
            && let Some(Value::Object(obj)) = msg_value
        {
            let out = w.key("response");
            let capped = write_capped(out, limits.params_bytes, |out| {
                out.push(b'{');
                let mut first = true;
                for key in ["error", "result"] {
                    if let Some(v) = obj.get(key) {
                        if !first {
                            out.push(b',');
                        }
                        first = false;
                        crate::mask::write_json_str(out, key);
                        out.push(b':');
                        masker.write_masked(out, v);
                    }
                }
                out.push(b'}');
            });
            if capped {
                cuts.names.push("response".to_owned());
            }
        }
        w.text("status", e.outcome.map(Outcome::as_str));
        w.opt("http_status", e.status);
        w.opt("jsonrpc_error_code", e.denial.as_ref().map(|d| d.code));
        w.text("reason", reason);
        match e.note {
            Some((_, detail)) => w.text("detail", Some(detail)),
            None => w.text(
                "detail",
                e.denial
                    .as_ref()
                    .and_then(|d| d.detail.as_deref())
                    .map(|d| cuts.text("detail", field_max, ms(d)))
                    .as_deref(),
            ),
        }
        w.opt(
            "duration_ms",
            e.duration.map(|d| (d.as_micros() as f64) / 1000.0),
        );
        w.text(
            "upstream",
            e.upstream
                .as_deref()
                .map(|u| cuts.text("upstream", field_max, ms(u)))
                .as_deref(),
        );
        w.opt("bytes_in", e.bytes_in);
        w.opt("bytes_out", e.bytes_out);
        if let Some(req) = request.filter(|r| r.has_headers() && batch_index.unwrap_or(0) == 0) {
            masker.write_headers(
                w.key("headers"),
                req,
                &self.sensitive_headers,
                &mut self.header_order,
                (limits.header_value_bytes, limits.headers_bytes),
                cuts.names,
            );
        }
        w.text(
            "message",
            e.message
                .as_deref()
                .map(|m| cuts.text("message", field_max, ms(m)))
                .as_deref(),
        );
        if let Some(d) = data
            && write_capped(w.key("data"), limits.params_bytes, |out| {
                masker.write_masked(out, d);
            })
        {
            cuts.names.push("data".to_owned());
        }
        if !cut_names.is_empty() {
            cut_names.sort_unstable();
            cut_names.dedup();
            w.field("truncated", &cut_names);
        }
        w.end();

        // Client text in the indexed columns: controls spelled as JSON escapes.
        let col = |s: Cow<'_, str>| crate::mask::escape_display_controls(&s).into_owned();
        let columns = IndexColumns {
            ts_us,
            kind: kind.as_str().to_owned(),
            event_id: event_id.to_owned(),
            request_id: request_id.map(col),
            user: user.map(col),
            tool: target.map(|(_, n)| col(n)),
            mcp_method: mcp_method.map(col),
            outcome: e.outcome.map(|o| o.as_str().to_owned()),
            http_status: e.status.map(i32::from),
            reason: reason.map(|r| col(Cow::Borrowed(r))),
            jsonrpc_id: id_col,
        };
        let json: Arc<str> = match std::str::from_utf8(&self.buf) {
            Ok(s) => Arc::from(s),
            // serde_json writes UTF-8; keep a minimal record if that ever failed.
            Err(_) => Arc::from(format!(
                "{{\"event_id\":\"{event_id}\",\"timestamp\":\"{timestamp}\",\"kind\":\"{}\"}}",
                kind.as_str()
            )),
        };
        if self.buf.capacity() > MAX_KEPT_BUFFER {
            // Do not keep the memory of an unusually large event.
            self.buf = Vec::with_capacity(2048);
        }
        SinkEvent { json, columns }
    }
}

/// The largest output buffer kept from one event to the next.
const MAX_KEPT_BUFFER: usize = 64 * 1024;

/// Writes a value with `write`, then replaces it with `{"bytes":N,"truncated":true}` when
/// its `N` bytes exceed `max`; whether it did.
fn write_capped(out: &mut Vec<u8>, max: usize, write: impl FnOnce(&mut Vec<u8>)) -> bool {
    let start = out.len();
    write(out);
    let len = out.len() - start;
    if len > max {
        out.truncate(start);
        let _ = serde_json::to_writer(out, &serde_json::json!({"truncated": true, "bytes": len}));
        true
    } else {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MaskingConfig;
    use http::HeaderMap;
    use mcp_core::{AuthMethod, McpHeaders};

    fn renderer() -> Renderer {
        Renderer::new(
            Masker::new(&MaskingConfig::default()).unwrap(),
            crate::AuditConfig::default().sensitive_headers().into(),
            LimitsConfig::default().params_bytes(1024),
        )
    }

    /// The timestamp as formatted by the `time` crate (what records always held).
    fn reference_rfc3339(us: i64) -> String {
        let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1000)
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
        let fmt = time::macros::format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
        );
        t.format(&fmt).unwrap()
    }

    /// The record as the writer always built it: an owned [`AuditRecord`] (params copied
    /// and masked in place, headers in a map), then `serde_json::to_string`; each field
    /// masked, then capped.
    fn reference(
        r: &Renderer,
        e: &mut EventData,
        event_id: &str,
        batch_index: Option<usize>,
    ) -> (String, IndexColumns) {
        let d =
            e.at.unwrap_or(UNIX_EPOCH)
                .duration_since(UNIX_EPOCH)
                .unwrap();
        let ts_us = d.as_micros() as i64;
        let mut kind = e.kind.unwrap_or(EventKind::Request);
        if kind == EventKind::Request
            && e.denial
                .as_ref()
                .is_some_and(|d| d.reason == RejectionReason::AuthFailed)
        {
            kind = EventKind::AuthFailure;
        }
        let masker = &r.masker;
        let l = &r.limits;
        let truncated: std::cell::RefCell<Vec<String>> = std::cell::RefCell::new(Vec::new());
        let cut = |name: &str, max: usize, s: String| -> String {
            if s.len() <= max {
                return s;
            }
            truncated.borrow_mut().push(name.to_owned());
            let mut end = max;
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            s[..end].to_owned()
        };
        let ms = |s: &str| masker.mask_str(s).into_owned();
        let capv = |v: Value, name: &str| {
            let len =
                crate::mask::escape_display_controls(&serde_json::to_string(&v).unwrap()).len();
            if len > l.params_bytes {
                truncated.borrow_mut().push(name.to_owned());
                serde_json::json!({"truncated": true, "bytes": len})
            } else {
                v
            }
        };
        let fm = l.field_bytes;
        let mut rec = AuditRecord {
            event_id: event_id.to_owned(),
            timestamp: reference_rfc3339(ts_us),
            kind: Some(kind),
            request_id: e
                .request_id
                .as_ref()
                .map(|r| cut("request_id", fm, ms(r.as_str()))),
            user: e
                .principal
                .as_ref()
                .map(|p| cut("user", fm, ms(p.qualified_id()))),
            auth_method: e.principal.as_ref().map(|p| p.method().as_str().to_owned()),
            credential_id: e
                .principal
                .as_ref()
                .and_then(|p| p.credential_id())
                .map(|c| cut("credential_id", fm, ms(c))),
            client_ip: e.client_ip.map(|ip| ip.to_string()),
            http_method: e.http_method.as_ref().map(|m| m.as_str().to_owned()),
            path: e
                .orig_path
                .as_ref()
                .map(|u| cut("path", l.path_bytes, ms(u.path()))),
            status: e.outcome,
            http_status: e.status,
            jsonrpc_error_code: e.denial.as_ref().map(|d| d.code),
            reason: e
                .note
                .map(|(r, _)| r.to_owned())
                .or_else(|| e.denial.as_ref().map(|d| d.reason.as_str().to_owned())),
            ..AuditRecord::default()
        };
        let index = batch_index.unwrap_or(0);
        if let Some(mcp) = &e.mcp {
            let msg = &mcp.messages()[index];
            let value = if mcp.is_batch() {
                mcp.value()[index].clone()
            } else {
                mcp.value().clone()
            };
            rec.mcp_method = msg.method().map(|m| cut("mcp_method", fm, ms(m)));
            rec.message_type = Some(message_type(msg.kind()).to_owned());
            let id_of = |v: &Value, name: &str, cut: &dyn Fn(&str, usize, String) -> String| match v
            {
                Value::String(s) => Value::String(cut(name, fm, ms(s))),
                Value::Number(n) if n.to_string().len() <= fm => v.clone(),
                Value::Number(n) => Value::String(cut(name, fm, n.to_string())),
                other => Value::String(json_type(other).to_owned()),
            };
            if matches!(msg.kind(), MessageKind::Request | MessageKind::Response) {
                rec.jsonrpc_id = value.get("id").map(|v| id_of(v, "jsonrpc_id", &cut));
            }
            if msg.method() == Some("notifications/cancelled") {
                rec.related_id = value
                    .get("params")
                    .and_then(|p| p.get("requestId"))
                    .filter(|v| v.is_string() || v.is_number())
                    .map(|v| id_of(v, "related_id", &cut));
            }
            match msg.target() {
                Some(Target::Tool(t)) => rec.tool = Some(cut("tool", fm, ms(t))),
                Some(Target::Resource(x)) => rec.resource = Some(cut("resource", fm, ms(x))),
                Some(Target::Prompt(p)) => rec.prompt = Some(cut("prompt", fm, ms(p))),
                None => {}
            }
            if mcp.is_batch() {
                rec.batch_size = Some(mcp.messages().len());
                rec.batch_index = Some(index);
            }
            rec.params = mcp.params_at(index).cloned().map(|mut p| {
                masker.mask_value(&mut p);
                capv(p, "params")
            });
            if msg.kind() == MessageKind::Response
                && let Value::Object(obj) = &value
            {
                let mut m = serde_json::Map::new();
                for k in ["error", "result"] {
                    if let Some(v) = obj.get(k) {
                        m.insert(k.to_owned(), v.clone());
                    }
                }
                let mut v = Value::Object(m);
                masker.mask_value(&mut v);
                rec.response = Some(capv(v, "response"));
            }
        }
        rec.detail = match e.note {
            Some((_, d)) => Some(d.to_owned()),
            None => e
                .denial
                .as_ref()
                .and_then(|d| d.detail.as_deref())
                .map(|d| cut("detail", fm, ms(d))),
        };
        rec.duration_ms = e.duration.map(|d| (d.as_micros() as f64) / 1000.0);
        rec.upstream = e.upstream.as_deref().map(|u| cut("upstream", fm, ms(u)));
        rec.bytes_in = e.bytes_in;
        rec.bytes_out = e.bytes_out;
        if index == 0 {
            rec.headers = e.orig_headers.as_ref().map(|h| {
                crate::mask::cap_headers(
                    masker.render_headers(h, &r.sensitive_headers),
                    (l.header_value_bytes, l.headers_bytes),
                    &mut truncated.borrow_mut(),
                )
            });
        }
        rec.message = e.message.as_deref().map(|m| cut("message", fm, ms(m)));
        if index == 0 {
            rec.data = e.data.clone().map(|mut d| {
                masker.mask_value(&mut d);
                capv(d, "data")
            });
        }
        let mut truncated = truncated.into_inner();
        truncated.sort_unstable();
        truncated.dedup();
        rec.truncated = (!truncated.is_empty()).then_some(truncated);
        let columns = IndexColumns::with_ts(&rec, ts_us);
        // Display controls are written as escapes, which serde_json does not do.
        let json = serde_json::to_string(&rec).unwrap();
        (
            crate::mask::escape_display_controls(&json).into_owned(),
            columns,
        )
    }

    /// Renders `e` both ways and checks that the bytes and the columns are the same.
    fn same_as_reference(r: &mut Renderer, mut e: EventData) -> SinkEvent {
        e.at.get_or_insert(UNIX_EPOCH + Duration::from_secs(1_700_000_000));
        let mut copy = EventData {
            kind: e.kind,
            at: e.at,
            request_id: e.request_id.clone(),
            principal: e.principal.clone(),
            client_ip: e.client_ip,
            http_method: e.http_method.clone(),
            mcp: e.mcp.clone(),
            status: e.status,
            denial: e.denial.clone(),
            outcome: e.outcome,
            duration: e.duration,
            upstream: e.upstream.clone(),
            bytes_in: e.bytes_in,
            bytes_out: e.bytes_out,
            message: e.message.clone(),
            data: e.data.clone(),
            note: e.note,
            request: None,
            orig_path: e.orig_path.clone(),
            orig_headers: e.orig_headers.clone(),
        };
        let mut e = e;
        // What the layer captures.
        if e.orig_path.is_some() || e.orig_headers.is_some() {
            e.request = Some(RequestText::capture(
                e.orig_path.as_ref().map(http::Uri::path),
                e.orig_headers.as_ref(),
            ));
        }
        let mut rows = Vec::new();
        r.render_into(&mut e, &mut rows);
        let batch = copy.mcp.as_ref().is_some_and(McpRequest::is_batch);
        for (i, got) in rows.iter().enumerate() {
            let (want, cols) = reference(r, &mut copy, &got.columns.event_id, batch.then_some(i));
            assert_eq!(&*got.json, want);
            assert_eq!(got.columns, cols);
            assert_eq!(
                IndexColumns::of(&serde_json::from_str(&got.json).unwrap()),
                got.columns
            );
        }
        rows.swap_remove(0)
    }

    fn full_event(body: &'static [u8]) -> EventData {
        let mcp =
            McpRequest::parse(bytes::Bytes::from_static(body), McpHeaders::default()).unwrap();
        let mut h = HeaderMap::new();
        h.insert("authorization", "Bearer sekrit-token-1".parse().unwrap());
        h.insert("x-api-key", "k-1".parse().unwrap());
        h.insert("user-agent", "ua \"quoted\" \\ é".parse().unwrap());
        h.append("cookie", "a=1".parse().unwrap());
        h.append("cookie", "b=2".parse().unwrap());
        h.append("accept", "text/html".parse().unwrap());
        h.append("accept", "Bearer abcdefghijkl".parse().unwrap());
        h.insert("x-bin", http::HeaderValue::from_bytes(b"\xff\xfe").unwrap());
        let mut sens = http::HeaderValue::from_static("plain");
        sens.set_sensitive(true);
        h.insert("x-marked", sens);
        h.insert(
            "x-jwt",
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln".parse().unwrap(),
        );
        EventData {
            kind: Some(EventKind::Request),
            at: Some(UNIX_EPOCH + Duration::from_micros(1_763_700_000_000_007)),
            request_id: Some(RequestId::generate()),
            principal: Some(
                Principal::new("alice\u{1}\"x", AuthMethod::ApiKey).with_credential_id("key-1"),
            ),
            client_ip: Some("2001:db8::1".parse().unwrap()),
            http_method: Some(Method::POST),
            orig_path: Some("/mcp/AKIAIOSFODNN7EXAMPLE?token=x".parse().unwrap()),
            mcp: Some(mcp),
            status: Some(403),
            denial: Some(Denial {
                reason: RejectionReason::Forbidden,
                code: -32003,
                detail: Some("rule sk-abcdefghijklmnopqrstuvwxyz".into()),
            }),
            outcome: Some(Outcome::Denied),
            duration: Some(Duration::from_micros(12_345)),
            upstream: Some(Arc::from("http://u:pw@upstream")),
            bytes_in: Some(10),
            bytes_out: Some(0),
            orig_headers: Some(h),
            message: Some("note with Bearer abcdefghijklmnop".into()),
            data: Some(serde_json::json!({"password": "x", "n": [1, 2.5, null, true]})),
            ..EventData::default()
        }
    }

    #[test]
    fn render_is_byte_for_byte_the_record_serialization() {
        let mut r = renderer();
        for body in [
            &br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"s\u00e9arch","arguments":{"q":"x\n\"y\"","password":"hunter2","nested":[{"apiKey":"k"},{"AKIAIOSFODNN7EXAMPLE":{"token":1}},"eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln"],"n":1.5e300,"f":-0.0,"big":18446744073709551615}}}"#[..],
            br#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"file:///x?Bearer abcdefghijkl"}}"#,
            br#"{"jsonrpc":"2.0","id":1,"method":"prompts/get","params":{"name":"p"}}"#,
            br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#,
            br#"[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","arguments":{"secret":"s"}}},{"jsonrpc":"2.0","id":2,"method":"ping"},{"jsonrpc":"2.0","method":"notifications/initialized","params":{}}]"#,
        ] {
            same_as_reference(&mut r, full_event(body));
        }
        // Lifecycle events, an empty one, an authentication failure.
        same_as_reference(
            &mut r,
            AuditEvent::config_reload()
                .with_message("reloaded")
                .with_data(serde_json::json!({"changed": ["a"], "token": "t"}))
                .0
                .as_ref()
                .clone_data(),
        );
        same_as_reference(&mut r, EventData::default());
        same_as_reference(
            &mut r,
            AuditEvent::auth_failure()
                .with_detail("certificate_expired")
                .0
                .as_ref()
                .clone_data(),
        );
        // Over the cap: params and data replaced, exactly as before.
        let mut small = renderer();
        small.limits.params_bytes = 20;
        let s = same_as_reference(&mut small, full_event(br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":{"x":"a long enough value"}}}"#));
        assert!(s.json.contains(r#""params":{"bytes":"#), "{}", s.json);
        // Headers with nothing in them.
        let mut e = full_event(br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#);
        e.orig_headers = Some(HeaderMap::new());
        same_as_reference(&mut r, e);
    }

    impl EventData {
        fn clone_data(&self) -> Self {
            Self {
                kind: self.kind,
                at: self.at,
                principal: self.principal.clone(),
                outcome: self.outcome,
                denial: self.denial.clone(),
                message: self.message.clone(),
                data: self.data.clone(),
                ..Self::default()
            }
        }
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn arb_json() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(|n| serde_json::json!(n)),
                any::<f64>().prop_map(|n| serde_json::json!(n)),
                "\\PC{0,12}".prop_map(Value::String),
                prop_oneof![
                    Just("AKIAIOSFODNN7EXAMPLE"),
                    Just("Bearer abcdefghijkl"),
                    Just("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln"),
                ]
                .prop_map(|s| Value::String(s.to_owned())),
            ];
            let key = prop_oneof![
                "[a-zA-Z_\\-]{0,10}",
                "\\PC{0,6}",
                prop::sample::select(vec![
                    "password",
                    "Api_Key",
                    "accessToken",
                    "tokens_used",
                    "AKIAIOSFODNN7EXAMPLE",
                    "AKIAIOSFODNN7EXAMPLE_",
                    "x-auth-token",
                    "ÄPI_KEY",
                    "Ωsecret",
                ])
                .prop_map(str::to_owned),
            ];
            leaf.prop_recursive(4, 48, 6, move |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                    prop::collection::btree_map(key.clone(), inner, 0..5)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        proptest! {
            #[test]
            fn masked_view_serializes_as_the_masked_copy(v in arb_json(), enabled in any::<bool>()) {
                let m = Masker::new(&MaskingConfig { enabled, ..MaskingConfig::default() }).unwrap();
                let mut copy = v.clone();
                m.mask_value(&mut copy);
                prop_assert_eq!(
                    {
                        let mut out = Vec::new();
                        m.write_masked(&mut out, &v);
                        String::from_utf8(out).unwrap()
                    },
                    crate::mask::escape_display_controls(&serde_json::to_string(&copy).unwrap()).into_owned()
                );
            }

            #[test]
            fn timestamp_matches_the_time_crate(us in 0i64..253_402_300_799_999_999) {
                let (ts, got_us) = rfc3339(UNIX_EPOCH + Duration::from_micros(us as u64));
                prop_assert_eq!(got_us, us);
                prop_assert_eq!(std::str::from_utf8(&ts).unwrap(), reference_rfc3339(us));
            }

            #[test]
            fn headers_render_as_before(
                entries in prop::collection::vec(
                    (
                        prop::sample::select(vec![
                            "accept", "authorization", "cookie", "x-api-key", "user-agent",
                            "a", "b-", "x-custom-token", "z", "accept-encoding", "host",
                        ]),
                        prop_oneof![
                            "[ -~\t]{0,16}",
                            prop::sample::select(vec![
                                "Bearer abcdefghijkl",
                                "AKIAIOSFODNN7EXAMPLE",
                                "x \"q\" \\ y",
                                "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln",
                            ]).prop_map(str::to_owned),
                        ].prop_map(String::into_bytes),
                        prop::collection::vec(0x80u8..=0xff, 0..3),
                        any::<bool>(),
                        any::<bool>(),
                    ),
                    0..14,
                ),
                path in "/[a-zA-Z0-9/._~%-]{0,24}",
            ) {
                let mut h = http::HeaderMap::new();
                for (name, mut value, high, sensitive, append) in entries {
                    value.extend(high);
                    let Ok(mut v) = http::HeaderValue::from_bytes(&value) else { continue };
                    v.set_sensitive(sensitive);
                    let name = http::HeaderName::from_static(name);
                    if append { h.append(name, v); } else { h.insert(name, v); }
                }
                let mut r = renderer();
                same_as_reference(&mut r, EventData {
                    orig_path: Some(path.parse().unwrap()),
                    orig_headers: Some(h),
                    ..EventData::default()
                });
            }

            #[test]
            fn capped_headers_and_path_render_as_the_reference(
                values in prop::collection::vec("[ -~]{0,300}", 0..12),
                path in "/[a-zA-Z0-9/._~%-]{0,300}",
                value_cap in 64usize..200,
                extra in 0usize..400,
            ) {
                let mut h = http::HeaderMap::new();
                for (i, v) in values.iter().enumerate() {
                    let Ok(v) = http::HeaderValue::from_str(v) else { continue };
                    h.append(if i % 3 == 0 { "x-a" } else { "x-b" }, v);
                }
                let mut r = renderer();
                r.limits.header_value_bytes = value_cap;
                r.limits.headers_bytes = value_cap + extra;
                r.limits.path_bytes = 64;
                let s = same_as_reference(&mut r, EventData {
                    orig_path: Some(path.parse().unwrap()),
                    orig_headers: Some(h),
                    ..EventData::default()
                });
                let rec: AuditRecord = serde_json::from_str(&s.json).unwrap();
                prop_assert!(rec.path.unwrap().len() <= 64);
                let hs = rec.headers.unwrap();
                prop_assert!(hs.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>() <= value_cap + extra);
            }

            #[test]
            fn params_render_as_before(args in arb_json(), cap in 0usize..400) {
                let body = serde_json::json!({
                    "jsonrpc": "2.0", "id": 1, "method": "tools/call",
                    "params": {"name": "t", "arguments": args}
                });
                let mcp = McpRequest::parse(
                    bytes::Bytes::from(body.to_string()), McpHeaders::default()).unwrap();
                let mut r = renderer();
                r.limits.params_bytes = cap;
                same_as_reference(&mut r, EventData { mcp: Some(mcp), ..EventData::default() });
            }
        }
    }

    #[test]
    fn request_event_renders_seed_fields_and_masks() {
        let body = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search","arguments":{"q":"x","password":"hunter2"}}}"#;
        let mcp =
            McpRequest::parse(bytes::Bytes::from_static(body), McpHeaders::default()).unwrap();
        let mut h = HeaderMap::new();
        h.insert("authorization", "Bearer sekrit-token-1".parse().unwrap());
        let mut e = EventData {
            kind: Some(EventKind::Request),
            at: Some(UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456)),
            principal: Some(Principal::new("alice", AuthMethod::ApiKey)),
            mcp: Some(mcp),
            status: Some(200),
            outcome: Some(Outcome::Success),
            duration: Some(Duration::from_micros(1500)),
            request: Some(RequestText::capture(Some("/mcp"), Some(&h))),
            ..EventData::default()
        };
        let s = renderer().render(&mut e);
        assert!(!s.json.contains("hunter2") && !s.json.contains("sekrit"));
        let r: AuditRecord = serde_json::from_str(&s.json).unwrap();
        assert_eq!(r.timestamp, "2023-11-14T22:13:20.123456Z");
        assert_eq!(r.user.as_deref(), Some("apikey:alice"));
        assert_eq!(r.tool.as_deref(), Some("search"));
        assert_eq!(r.status, Some(Outcome::Success));
        assert_eq!(r.duration_ms, Some(1.5));
        assert_eq!(s.columns.ts_us, 1_700_000_000_123_456);
        assert_eq!(s.columns.tool.as_deref(), Some("search"));
    }

    #[test]
    fn auth_failed_denial_is_an_auth_failure_event() {
        let mut e = EventData {
            kind: Some(EventKind::Request),
            denial: Some(mcp_core::Rejection::new(RejectionReason::AuthFailed).denial()),
            outcome: Some(Outcome::Denied),
            status: Some(401),
            ..EventData::default()
        };
        let s = renderer().render(&mut e);
        assert_eq!(s.columns.kind, "auth_failure");
        assert_eq!(s.columns.reason.as_deref(), Some("auth_failed"));
    }

    #[test]
    fn a_large_event_does_not_keep_its_buffer() {
        let mut r = renderer();
        r.limits.params_bytes = 1 << 20;
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"t","arguments":{{"x":"{}"}}}}}}"#,
            "a".repeat(200_000)
        );
        let mcp = McpRequest::parse(bytes::Bytes::from(body), McpHeaders::default()).unwrap();
        let s = r.render(&mut EventData {
            mcp: Some(mcp),
            ..EventData::default()
        });
        assert!(s.json.len() > 200_000);
        assert!(r.buf.capacity() <= MAX_KEPT_BUFFER);
    }

    fn small_caps() -> Renderer {
        let mut r = renderer();
        r.limits = LimitsConfig {
            header_value_bytes: 100,
            headers_bytes: 300,
            path_bytes: 80,
            params_bytes: 200,
            field_bytes: 64,
        };
        r
    }

    #[test]
    fn every_field_is_capped_and_named() {
        let mut r = small_caps();
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":"{}","method":"tools/call","params":{{"name":"{}","arguments":{{"x":"{}"}}}}}}"#,
            "i".repeat(500),
            "t".repeat(500),
            "a".repeat(500)
        );
        let mcp = McpRequest::parse(bytes::Bytes::from(body), McpHeaders::default()).unwrap();
        let mut h = HeaderMap::new();
        h.insert("user-agent", "u".repeat(5000).parse().unwrap());
        for i in 0..10 {
            h.insert(
                http::HeaderName::from_bytes(format!("x-h{i}").as_bytes()).unwrap(),
                "v".repeat(90).parse().unwrap(),
            );
        }
        let e = EventData {
            kind: Some(EventKind::Request),
            orig_path: Some(format!("/mcp/{}", "p".repeat(5000)).parse().unwrap()),
            orig_headers: Some(h),
            mcp: Some(mcp),
            denial: Some(Denial {
                reason: RejectionReason::Forbidden,
                code: -32003,
                detail: Some("d".repeat(500).into()),
            }),
            upstream: Some(Arc::from("u".repeat(500))),
            ..EventData::default()
        };
        let s = same_as_reference(&mut r, e);
        let rec: AuditRecord = serde_json::from_str(&s.json).unwrap();
        assert_eq!(rec.path.as_ref().unwrap().len(), 80);
        assert_eq!(rec.tool.as_ref().unwrap().len(), 64);
        assert_eq!(rec.detail.as_ref().unwrap().len(), 64);
        assert_eq!(rec.upstream.as_ref().unwrap().len(), 64);
        assert_eq!(rec.jsonrpc_id.as_ref().unwrap().as_str().unwrap().len(), 64);
        let headers = rec.headers.as_ref().unwrap();
        let total: usize = headers.iter().map(|(k, v)| k.len() + v.len()).sum();
        assert!(
            total <= 300 && headers.values().all(|v| v.len() <= 100),
            "{headers:?}"
        );
        let cut = rec.truncated.unwrap();
        for f in [
            "path",
            "mcp_method",
            "jsonrpc_id",
            "tool",
            "params",
            "detail",
            "upstream",
            "headers",
        ] {
            assert_eq!(
                cut.contains(&f.to_owned()),
                f != "mcp_method",
                "{f}: {cut:?}"
            );
        }
        assert!(s.json.len() < 1500, "{}", s.json.len());
    }

    #[test]
    fn a_secret_straddling_a_cap_is_masked_before_the_cut() {
        // Every position of the secret around the cut, in the path, a header and a name.
        for at in 60..=90 {
            let mut r = small_caps();
            let path = format!("/{}/AKIAIOSFODNN7EXAMPLE/x", "p".repeat(at - 2));
            let mut h = HeaderMap::new();
            h.insert(
                "x-note",
                format!("{} Bearer abcdefghijklmnopqrstuvwxyz", "v".repeat(at + 20))
                    .parse()
                    .unwrap(),
            );
            let body = format!(
                r#"{{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{{"uri":"demo://{}/ghp_abcdefghijklmnopqrstuvwxyz0123456789"}}}}"#,
                "r".repeat(at.saturating_sub(40))
            );
            let mcp = McpRequest::parse(bytes::Bytes::from(body), McpHeaders::default()).unwrap();
            let e = EventData {
                orig_path: Some(path.parse().unwrap()),
                orig_headers: Some(h),
                mcp: Some(mcp),
                ..EventData::default()
            };
            let s = same_as_reference(&mut r, e);
            for prefix in ["AKIA", "abcdefgh", "ghp_"] {
                assert!(!s.json.contains(prefix), "{prefix} at {at}: {}", s.json);
            }
        }
    }

    #[test]
    fn a_batch_is_one_record_per_message_and_responses_are_recorded() {
        let mut r = renderer();
        let body = br#"[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","id":"a","method":"tools/call","params":{"name":"echo","arguments":{}}},{"jsonrpc":"2.0","id":5,"result":{"token":"t","ok":true}},{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":"a"}},3]"#;
        let mcp =
            McpRequest::parse(bytes::Bytes::from_static(body), McpHeaders::default()).unwrap();
        let mut e = full_event(b"{}");
        e.mcp = Some(mcp);
        same_as_reference(&mut r, e);
        let mut e = full_event(b"{}");
        e.mcp = Some(
            McpRequest::parse(bytes::Bytes::from_static(body), McpHeaders::default()).unwrap(),
        );
        let mut rows = Vec::new();
        r.render_into(&mut e, &mut rows);
        let recs: Vec<AuditRecord> = rows
            .iter()
            .map(|s| serde_json::from_str(&s.json).unwrap())
            .collect();
        assert_eq!(recs.len(), 5);
        assert_eq!(recs[1].tool.as_deref(), Some("echo"));
        assert_eq!(rows[1].columns.jsonrpc_id.as_deref(), Some("\"a\""));
        assert_eq!(recs[2].message_type.as_deref(), Some("response"));
        assert_eq!(
            recs[2].response,
            Some(serde_json::json!({"result": {"ok": true, "token": "***REDACTED***"}}))
        );
        assert_eq!(rows[3].columns.jsonrpc_id.as_deref(), Some("\"a\""));
        assert_eq!(recs[4].message_type.as_deref(), Some("invalid"));
        assert!(
            recs.iter()
                .skip(1)
                .all(|r| r.headers.is_none() && r.data.is_none())
        );
    }

    #[test]
    fn oversized_params_are_replaced() {
        let big = "a".repeat(5000);
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"t","arguments":{{"x":"{big}"}}}}}}"#
        );
        let mcp = McpRequest::parse(bytes::Bytes::from(body), McpHeaders::default()).unwrap();
        let mut e = EventData {
            mcp: Some(mcp),
            ..EventData::default()
        };
        let s = renderer().render(&mut e);
        assert!(s.json.contains("\"truncated\":true"));
    }
}
