//! Audit events: what the request path hands over ([`AuditEvent`], cheap to build) and
//! what the sinks write ([`AuditRecord`], masked and serialized by the background writer).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, Method};
use mcp_core::{Denial, McpRequest, Principal, RejectionReason, Target};
use serde::{Deserialize, Serialize};
use serde_json::Value;

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
    /// that failed while streaming, or an inner service error.
    Error,
}

impl Outcome {
    /// The stable snake_case name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Denied => "denied",
            Self::Error => "error",
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
    pub(crate) path: Option<http::Uri>,
    pub(crate) mcp: Option<McpRequest>,
    pub(crate) status: Option<u16>,
    pub(crate) denial: Option<Denial>,
    pub(crate) outcome: Option<Outcome>,
    pub(crate) duration: Option<Duration>,
    pub(crate) upstream: Option<Arc<str>>,
    pub(crate) bytes_in: Option<u64>,
    pub(crate) bytes_out: Option<u64>,
    pub(crate) headers: Option<HeaderMap>,
    pub(crate) message: Option<Cow<'static, str>>,
    pub(crate) data: Option<Value>,
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
    /// The principal's id (never a client-supplied header).
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
    /// The tool of a `tools/call`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    /// The resource URI of a `resources/*` call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// The prompt of a `prompts/get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// Number of messages of a batch body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<usize>,
    /// The params, masked (an array of them for a batch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<Value>,
    /// The outcome: `success`, `denied` or `error` (the seeds' `status`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Outcome>,
    /// The HTTP status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    /// The JSON-RPC error code sent with a refusal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jsonrpc_error_code: Option<i64>,
    /// The typed reason of a refusal (`auth_failed`, `rate_limited`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A safe detail of the refusal (rule name, scope).
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
    /// The principal's id.
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
        Self {
            ts_us,
            kind: r.kind.unwrap_or(EventKind::Request).as_str().to_owned(),
            event_id: r.event_id.clone(),
            request_id: r.request_id.clone(),
            user: r.user.clone(),
            tool: r
                .tool
                .clone()
                .or_else(|| r.resource.clone())
                .or_else(|| r.prompt.clone()),
            mcp_method: r.mcp_method.clone(),
            outcome: r.status.map(|o| o.as_str().to_owned()),
            http_status: r.http_status.map(i32::from),
            reason: r.reason.clone(),
        }
    }
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
    pub(crate) max_params_bytes: usize,
}

fn rfc3339(at: SystemTime) -> (String, i64) {
    let d = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let us = i64::try_from(d.as_micros()).unwrap_or(i64::MAX);
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
    );
    (t.format(&fmt).unwrap_or_default(), us)
}

impl Renderer {
    /// Masks and serializes an event.
    pub(crate) fn render(&self, e: &mut EventData) -> SinkEvent {
        let (timestamp, ts_us) = rfc3339(e.at.unwrap_or_else(SystemTime::now));
        let mut kind = e.kind.unwrap_or(EventKind::Request);
        if kind == EventKind::Request
            && e.denial
                .as_ref()
                .is_some_and(|d| d.reason == RejectionReason::AuthFailed)
        {
            kind = EventKind::AuthFailure;
        }
        let masker = &self.masker;
        let ms = |s: &str| masker.mask_str(s).into_owned();
        let mut rec = AuditRecord {
            event_id: crate::layer::fast_uuid_v7().to_string(),
            timestamp,
            kind: Some(kind),
            request_id: e.request_id.as_ref().map(|r| ms(r.as_str())),
            user: e.principal.as_ref().map(|p| ms(p.id())),
            auth_method: e.principal.as_ref().map(|p| p.method().as_str().to_owned()),
            credential_id: e.principal.as_ref().and_then(|p| p.credential_id()).map(ms),
            client_ip: e.client_ip.map(|ip| ip.to_string()),
            http_method: e.http_method.as_ref().map(|m| m.as_str().to_owned()),
            path: e.path.as_ref().map(|u| ms(u.path())),
            status: e.outcome,
            http_status: e.status,
            jsonrpc_error_code: e.denial.as_ref().map(|d| d.code),
            reason: e.denial.as_ref().map(|d| d.reason.as_str().to_owned()),
            detail: e.denial.as_ref().and_then(|d| d.detail.as_deref()).map(ms),
            duration_ms: e.duration.map(|d| (d.as_micros() as f64) / 1000.0),
            upstream: e.upstream.as_deref().map(ms),
            bytes_in: e.bytes_in,
            bytes_out: e.bytes_out,
            headers: e
                .headers
                .as_ref()
                .map(|h| masker.render_headers(h, &self.sensitive_headers)),
            message: e.message.as_deref().map(ms),
            data: e.data.take().map(|mut d| {
                masker.mask_value(&mut d);
                self.cap(d)
            }),
            ..AuditRecord::default()
        };
        if let Some(mcp) = &e.mcp {
            rec.mcp_method = mcp.method().map(ms);
            match mcp.target() {
                Some(Target::Tool(t)) => rec.tool = Some(ms(t)),
                Some(Target::Resource(r)) => rec.resource = Some(ms(r)),
                Some(Target::Prompt(p)) => rec.prompt = Some(ms(p)),
                None => {}
            }
            let params = if mcp.is_batch() {
                rec.batch_size = Some(mcp.messages().len());
                let all: Vec<Value> = (0..mcp.messages().len())
                    .map(|i| mcp.params_at(i).cloned().unwrap_or(Value::Null))
                    .collect();
                Some(Value::Array(all))
            } else {
                mcp.params_at(0).cloned()
            };
            rec.params = params.map(|mut p| {
                masker.mask_value(&mut p);
                self.cap(p)
            });
        }
        let columns = IndexColumns::with_ts(&rec, ts_us);
        let json = serde_json::to_string(&rec).unwrap_or_else(|_| {
            // Plain data cannot fail to serialize; keep a minimal record if it ever did.
            format!(
                "{{\"event_id\":\"{}\",\"timestamp\":\"{}\",\"kind\":\"{}\"}}",
                rec.event_id,
                rec.timestamp,
                kind.as_str()
            )
        });
        SinkEvent {
            json: Arc::from(json),
            columns,
        }
    }

    fn cap(&self, v: Value) -> Value {
        // Count the serialized length without building it.
        struct Count(usize);
        impl std::io::Write for Count {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0 += b.len();
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut c = Count(0);
        let len = match serde_json::to_writer(&mut c, &v) {
            Ok(()) => c.0,
            Err(_) => usize::MAX,
        };
        if len > self.max_params_bytes {
            serde_json::json!({"truncated": true, "bytes": len})
        } else {
            v
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MaskingConfig;
    use mcp_core::{AuthMethod, McpHeaders};

    fn renderer() -> Renderer {
        Renderer {
            masker: Masker::new(&MaskingConfig::default()).unwrap(),
            sensitive_headers: crate::AuditConfig::default().sensitive_headers().into(),
            max_params_bytes: 1024,
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
            headers: Some(h),
            ..EventData::default()
        };
        let s = renderer().render(&mut e);
        assert!(!s.json.contains("hunter2") && !s.json.contains("sekrit"));
        let r: AuditRecord = serde_json::from_str(&s.json).unwrap();
        assert_eq!(r.timestamp, "2023-11-14T22:13:20.123456Z");
        assert_eq!(r.user.as_deref(), Some("alice"));
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
