//! The Streamable HTTP transport checks: what a request's method and headers must be
//! before its body is read, for every method.
//!
//! [`ParseLayer`](crate::ParseLayer) applies them by default, before it reads a body, so
//! that a user of `ParseLayer` alone gets them; they are protocol correctness, not
//! optional sanitizing. [`TransportLayer`] applies them alone (for a stack that wants them
//! before authentication, say). They read only the method, the headers and whether a body
//! follows; they never read the body.
//!
//! | request | answer |
//! |---|---|
//! | a method other than `POST`, `GET`, `DELETE` (compared exactly: `post` is not `POST`) | 405, `Allow: GET, POST, DELETE` |
//! | `Mcp-Method`, `Mcp-Name`, `MCP-Protocol-Version`, `Mcp-Session-Id` or `Last-Event-ID` sent twice, empty, or with a byte outside visible ASCII (`Mcp-Name` may hold spaces inside: printable ASCII, as the 2026-07-28 revision sends plain names) | 400, -32600 |
//! | `Last-Event-ID` longer than [`DEFAULT_MAX_LAST_EVENT_ID_LEN`] (256) bytes, or with a byte outside `A-Z a-z 0-9 - _ . : / + =` | 400, -32600 |
//! | `MCP-Protocol-Version` not in the supported list (absent is accepted) | 400, -32600 |
//! | `GET` or `DELETE` with a body: `Content-Length` other than 0, any `Transfer-Encoding`, or a body not at its end (an HTTP/2 HEADERS frame without END_STREAM) | 400, -32600 |
//! | `POST` without one `Content-Type: application/json` (a `charset` parameter only `utf-8`, once; parameters well-formed) | 415 |
//! | `POST` with a `Content-Encoding` other than `identity` (the upstream would decode what the gateway never parsed) | 415 |
//! | `POST` whose `Accept` allows neither `application/json` nor `text/event-stream` | 406 |
//! | `GET` whose `Accept` does not allow `text/event-stream` | 406 |
//! | more than one `Host`; or a `Host` that differs from the request target's authority (HTTP/2 `:authority`, an HTTP/1.1 absolute-form target) | 400, -32600 |
//!
//! `Host` and the target's authority are compared as RFC 9110 section 4.2.3 compares
//! URIs: the host case-insensitively and byte for byte otherwise (`localhost.` is not
//! `localhost`), an absent or empty port read as the scheme's default (`localhost` is
//! `localhost:443` under `https`); user info in either is refused. RFC 9113 section
//! 8.3.1 lets a server treat such an HTTP/2 request as malformed, and RFC 9112 section
//! 3.2.2 makes an HTTP/1.1 server ignore `Host` for an absolute-form target: here both
//! are refused, so that no layer (an Origin/Host guard reading `Host`, a router reading
//! the URI) sees another authority than the next. A request with only one of them is
//! checked on that one by the layers that read it.
//!
//! `Accept` is read as HTTP reads it: an absent header accepts anything, `*/*` and
//! `type/*` ranges count, and a range with `q=0` refuses. The specification asks clients
//! to list both types on `POST`; a server that honours `Accept` (as the reference servers
//! in JSON mode do) answers a client that lists one in that type, so one is enough here:
//! the check refuses what no MCP server can answer. `DELETE` carries no `Accept`
//! rule and may carry a `Content-Type` (the Python SDK sends one). An OPTIONS preflight is
//! refused like any other method: a CORS layer, if the service has one, answers it
//! outside this one.
//!
//! `Last-Event-ID` is a cursor the server chose (WHATWG SSE lets an event id hold any
//! character but LF, CR and NUL); the servers in use choose UUIDs, counters or
//! `stream-id/number` forms. The check keeps a strict subset (letters, digits and
//! `-_.:/+=`, at most 256 bytes; [`TransportChecks::max_last_event_id_len`]), so that a
//! client cannot hand an upstream's event store or log a long or odd made-up value.
//!
//! Every refusal is a [`Rejection`] whose detail names the rule
//! (`rule=method`, `rule=mcp_header header=mcp-name`, `rule=protocol_version`,
//! `rule=last_event_id`,
//! `rule=authority`,
//! `rule=body_not_allowed`, `rule=content_type`, `rule=accept`), for the audit trail. A
//! GET or DELETE that passes is handed on with an empty body by `ParseLayer`, so that
//! nothing can follow it to the service.
//!
//! ```
//! use axum::{Router, routing::any};
//! use mcp_core::transport::{TransportChecks, TransportLayer};
//!
//! let checks = TransportChecks::new().protocol_versions(["2025-11-25", "2026-07-28"]);
//! let app: Router = Router::new()
//!     .route("/mcp", any(|| async { "ok" }))
//!     .layer(TransportLayer::new(checks));
//! ```

use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{
    ACCEPT, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, HOST, TRANSFER_ENCODING,
};
use http::{HeaderMap, HeaderName, Method, Request, Response, Uri};
use tower_layer::Layer;
use tower_service::Service;

use crate::rejection::{Rejection, RejectionReason};
use crate::request::header;

/// The `MCP-Protocol-Version` values supported by default.
pub const DEFAULT_PROTOCOL_VERSIONS: [&str; 5] = [
    "2024-11-05",
    "2025-03-26",
    "2025-06-18",
    "2025-11-25",
    "2026-07-28",
];

/// The `Allow` header of a 405: the methods of the Streamable HTTP transport.
pub const ALLOWED_METHODS: &str = "GET, POST, DELETE";

/// `Last-Event-ID` (a GET that resumes a stream).
pub const LAST_EVENT_ID: HeaderName = HeaderName::from_static("last-event-id");

/// The longest `Last-Event-ID` accepted by default, in bytes.
pub const DEFAULT_MAX_LAST_EVENT_ID_LEN: usize = 256;

/// Whether `b` may appear in a `Last-Event-ID`: letters, digits and `-_.:/+=`.
fn event_id_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'/' | b'+' | b'=')
}

/// The MCP headers that must come once and in visible ASCII.
const MCP_HEADERS: [(HeaderName, Printable); 5] = [
    (header::MCP_METHOD, Printable::Visible),
    (header::MCP_NAME, Printable::WithSpaces),
    (header::MCP_PROTOCOL_VERSION, Printable::Visible),
    (header::MCP_SESSION_ID, Printable::Visible),
    (LAST_EVENT_ID, Printable::Visible),
];

#[derive(Clone, Copy)]
enum Printable {
    /// 0x21 to 0x7E.
    Visible,
    /// 0x20 to 0x7E.
    WithSpaces,
}

#[derive(Debug, Clone)]
enum Versions {
    Default,
    List(Arc<[Box<str>]>),
}

/// Which transport checks apply (see the [module documentation](self)). Every check is on
/// by default; [`TransportChecks::disabled`] turns all of them off.
///
/// ```
/// use mcp_core::transport::TransportChecks;
///
/// let checks = TransportChecks::new()
///     .protocol_versions(["2025-11-25"])
///     .accept(false);
/// # let _ = checks;
/// ```
#[derive(Debug, Clone)]
pub struct TransportChecks {
    enabled: bool,
    content_type: bool,
    accept: bool,
    versions: Versions,
    max_last_event_id_len: usize,
}

impl Default for TransportChecks {
    fn default() -> Self {
        Self::new()
    }
}

impl TransportChecks {
    /// Every check, with [`DEFAULT_PROTOCOL_VERSIONS`].
    pub const fn new() -> Self {
        Self {
            enabled: true,
            content_type: true,
            accept: true,
            versions: Versions::Default,
            max_last_event_id_len: DEFAULT_MAX_LAST_EVENT_ID_LEN,
        }
    }

    /// No check at all (for a service that does them itself). Weakens the default: the
    /// method, a body on GET or DELETE and the MCP headers reach the inner service
    /// unchecked.
    pub const fn disabled() -> Self {
        Self {
            enabled: false,
            content_type: true,
            accept: true,
            versions: Versions::Default,
            max_last_event_id_len: DEFAULT_MAX_LAST_EVENT_ID_LEN,
        }
    }

    /// Whether any check applies.
    pub const fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// Whether a `POST` must carry `Content-Type: application/json` (default true).
    pub const fn content_type(mut self, on: bool) -> Self {
        self.content_type = on;
        self
    }

    /// The longest `Last-Event-ID` accepted, in bytes (default
    /// [`DEFAULT_MAX_LAST_EVENT_ID_LEN`]); longer is refused with 400. The character set is
    /// fixed (see the [module documentation](self)).
    pub const fn max_last_event_id_len(mut self, len: usize) -> Self {
        self.max_last_event_id_len = len;
        self
    }

    /// Whether `Accept` is checked on `POST` and `GET` (default true).
    pub const fn accept(mut self, on: bool) -> Self {
        self.accept = on;
        self
    }

    /// The supported `MCP-Protocol-Version` values (default
    /// [`DEFAULT_PROTOCOL_VERSIONS`]); an absent header is accepted.
    pub fn protocol_versions<I, T>(mut self, versions: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: AsRef<str>,
    {
        self.versions = Versions::List(
            versions
                .into_iter()
                .map(|v| Box::from(v.as_ref()))
                .collect(),
        );
        self
    }

    fn supports(&self, version: &str) -> bool {
        match &self.versions {
            Versions::Default => DEFAULT_PROTOCOL_VERSIONS.contains(&version),
            Versions::List(l) => l.iter().any(|v| &**v == version),
        }
    }

    /// Checks a request's head: `Ok` to go on, the rejection otherwise. `body_at_end`
    /// tells whether the body is known to be empty (`http_body::Body::is_end_stream`).
    pub fn check(
        &self,
        method: &Method,
        headers: &HeaderMap,
        body_at_end: bool,
    ) -> Result<(), Rejection> {
        if !self.enabled {
            return Ok(());
        }
        let post = *method == Method::POST;
        let get = *method == Method::GET;
        if !(post || get || *method == Method::DELETE) {
            return Err(Rejection::new(RejectionReason::MethodNotAllowed)
                .with_header(http::header::ALLOW, ALLOWED_METHODS)
                .with_detail("rule=method"));
        }
        check_mcp_headers(headers)?;
        if let Some(v) = headers.get(LAST_EVENT_ID) {
            let b = v.as_bytes();
            if b.len() > self.max_last_event_id_len || !b.iter().all(|&c| event_id_byte(c)) {
                return Err(Rejection::new(RejectionReason::InvalidRequest)
                    .with_message(
                        "Invalid Request: Last-Event-ID is too long or holds a character outside A-Z a-z 0-9 - _ . : / + =",
                    )
                    .with_detail("rule=last_event_id"));
            }
        }
        if let Some(v) = headers.get(header::MCP_PROTOCOL_VERSION)
            && !v.to_str().is_ok_and(|v| self.supports(v.trim()))
        {
            return Err(Rejection::new(RejectionReason::UnsupportedProtocolVersion)
                .with_detail("rule=protocol_version"));
        }
        if !post {
            if has_body(headers, body_at_end) {
                return Err(Rejection::new(RejectionReason::InvalidRequest)
                    .with_message("Invalid Request: GET and DELETE take no body")
                    .with_detail("rule=body_not_allowed"));
            }
            if get && self.accept && !accepts(headers, &[("text", "event-stream")]) {
                return Err(Rejection::new(RejectionReason::NotAcceptable)
                    .with_message("Not Acceptable: Accept must allow text/event-stream")
                    .with_detail("rule=accept"));
            }
            return Ok(());
        }
        if self.content_type && {
            // One `Content-Type`: with two, parsers differ on which one they read.
            let mut all = headers.get_all(CONTENT_TYPE).iter();
            let first = all.next();
            all.next().is_some()
                || !first
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(is_json_content_type)
        } {
            return Err(Rejection::new(RejectionReason::UnsupportedMediaType)
                .with_detail("rule=content_type"));
        }
        // The body is checked as it came: a content coding the upstream would undo
        // (gzip, deflate, br, a list, anything but `identity`) would let it read bytes the
        // gateway never parsed. RFC 9110 §15.5.16: 415 for an unsupported coding.
        if headers.get_all(CONTENT_ENCODING).iter().any(|v| {
            !v.to_str()
                .is_ok_and(|s| s.trim().eq_ignore_ascii_case("identity"))
        }) {
            return Err(Rejection::new(RejectionReason::UnsupportedMediaType)
                .with_message("Unsupported Media Type: the body must not be content-coded")
                .with_detail("rule=content_encoding"));
        }
        if self.accept
            && !accepts(headers, &[("application", "json")])
            && !accepts(headers, &[("text", "event-stream")])
        {
            return Err(Rejection::new(RejectionReason::NotAcceptable)
                .with_message(
                    "Not Acceptable: Accept must allow application/json or text/event-stream",
                )
                .with_detail("rule=accept"));
        }
        Ok(())
    }

    /// [`TransportChecks::check_authority`], then [`TransportChecks::check`], on a
    /// request.
    pub fn check_request<B: http_body::Body>(&self, req: &Request<B>) -> Result<(), Rejection> {
        self.check_authority(req.uri(), req.headers())?;
        self.check(req.method(), req.headers(), req.body().is_end_stream())
    }

    /// Refuses (400, `rule=authority`) more than one `Host` header, and a `Host` that
    /// differs from the authority of the request target `uri` (HTTP/2 `:authority`, an
    /// HTTP/1.1 absolute-form target), compared as the [module documentation](self)
    /// says. [`TransportChecks::check_request`] applies it; call it where only
    /// [`TransportChecks::check`] is called.
    ///
    /// ```
    /// use http::{HeaderMap, Uri};
    /// use mcp_core::transport::TransportChecks;
    ///
    /// let checks = TransportChecks::new();
    /// let mut h = HeaderMap::new();
    /// h.insert("host", "localhost".parse().unwrap());
    /// let uri: Uri = "https://evil.example/mcp".parse().unwrap();
    /// assert!(checks.check_authority(&uri, &h).is_err());
    /// let uri: Uri = "https://LOCALHOST:443/mcp".parse().unwrap();
    /// assert!(checks.check_authority(&uri, &h).is_ok());
    /// ```
    pub fn check_authority(&self, uri: &Uri, headers: &HeaderMap) -> Result<(), Rejection> {
        if !self.enabled {
            return Ok(());
        }
        let refuse = |why: &str| {
            Rejection::new(RejectionReason::InvalidRequest)
                .with_message(format!("Invalid Request: {why}"))
                .with_detail("rule=authority")
        };
        let mut hosts = headers.get_all(HOST).iter();
        let host = hosts.next();
        if hosts.next().is_some() {
            return Err(refuse("Host header sent more than once"));
        }
        let (Some(host), Some(authority)) = (host, uri.authority()) else {
            return Ok(());
        };
        let default_port = match uri.scheme_str() {
            Some(s) if s.eq_ignore_ascii_case("https") => Some(443),
            Some(s) if s.eq_ignore_ascii_case("http") => Some(80),
            _ => None,
        };
        let target = split_authority(authority.as_str(), default_port);
        let host = host
            .to_str()
            .ok()
            .and_then(|h| split_authority(h, default_port));
        match (target, host) {
            (Some(t), Some(h)) if t == h => Ok(()),
            _ => Err(refuse("Host differs from the request target's authority")),
        }
    }
}

/// `host[:port]` as (lower-case host, port or `default_port`); `None` when it is not
/// one (user info, spaces, a port that is not 1 to 5 digits, an empty host).
fn split_authority(s: &str, default_port: Option<u16>) -> Option<(String, Option<u16>)> {
    if s.is_empty() || s.bytes().any(|b| b <= 0x20 || b >= 0x7f || b == b'@') {
        return None;
    }
    let (host, port) = match s.strip_prefix('[') {
        Some(rest) => {
            let end = rest.find(']')?;
            let after = &rest[end + 1..];
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':')?),
            };
            (&s[..end + 2], port)
        }
        None => match s.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        },
    };
    if host.is_empty() {
        return None;
    }
    let port = match port {
        None | Some("") => default_port,
        Some(p) if p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => {
            Some(p.parse::<u16>().ok()?)
        }
        Some(_) => return None,
    };
    Some((host.to_ascii_lowercase(), port))
}

/// Refuses an MCP header sent twice, empty, or with a byte outside (visible) ASCII.
fn check_mcp_headers(headers: &HeaderMap) -> Result<(), Rejection> {
    for (name, printable) in &MCP_HEADERS {
        let mut values = headers.get_all(name).iter();
        let Some(v) = values.next() else { continue };
        let bad = if values.next().is_some() {
            Some("sent more than once")
        } else {
            let low = match printable {
                Printable::Visible => 0x21,
                Printable::WithSpaces => 0x20,
            };
            let b = v.as_bytes();
            (b.is_empty() || !b.iter().all(|c| (low..=0x7e).contains(c)))
                .then_some("not visible ASCII")
        };
        if let Some(why) = bad {
            // The version header keeps its own reason (same status and code).
            let reason = if *name == header::MCP_PROTOCOL_VERSION {
                RejectionReason::UnsupportedProtocolVersion
            } else {
                RejectionReason::InvalidRequest
            };
            return Err(Rejection::new(reason)
                .with_message(format!("Invalid Request: {name} header {why}"))
                .with_detail(format!("rule=mcp_header header={name}")));
        }
    }
    Ok(())
}

/// Whether a request declares or may carry a body: any `Transfer-Encoding`, a
/// `Content-Length` other than 0, or a body not known to be at its end (`body_at_end`:
/// `http_body::Body::is_end_stream`, false for an HTTP/2 HEADERS frame without
/// END_STREAM).
pub fn has_body(headers: &HeaderMap, body_at_end: bool) -> bool {
    if headers.contains_key(TRANSFER_ENCODING) {
        return true;
    }
    let declared = headers
        .get_all(CONTENT_LENGTH)
        .iter()
        .any(|v| v.to_str().map_or(true, |s| s.trim() != "0"));
    declared || !body_at_end
}

/// Whether a `Content-Type` value is `application/json` (case-insensitive) whose body is
/// read as UTF-8 by every parser: parameters are well-formed `name=value` pairs (value a
/// token or a quoted string), and a `charset` parameter, if present, comes once and is
/// `utf-8` (or `utf8`). Any other charset is refused: the gateway checks the body as
/// UTF-8, and a parser that honours `charset=utf-7` (Express's `body-parser`, which the
/// TypeScript MCP SDK uses) or `utf-16` / `iso-8859-1` would read another request (`+ADw-`
/// is `<` in UTF-7). `charset*` (RFC 2231) is refused for the same reason.
pub fn is_json_content_type(v: &str) -> bool {
    let (essence, mut rest) = v.split_once(';').unwrap_or((v, ""));
    if !essence.trim().eq_ignore_ascii_case("application/json") {
        return false;
    }
    let mut charset_seen = false;
    loop {
        rest = rest.trim_start_matches([' ', '\t']);
        if rest.is_empty() {
            return true;
        }
        // name
        let name_len = rest
            .bytes()
            .position(|b| !is_token_byte(b))
            .unwrap_or(rest.len());
        let (name, after) = rest.split_at(name_len);
        let Some(after) = after.strip_prefix('=') else {
            // `;` with nothing after it (`application/json;`) is tolerated; anything
            // else without `=` is malformed.
            if name.is_empty() && after.trim_start_matches([' ', '\t']).is_empty() {
                return true;
            }
            return false;
        };
        if name.is_empty() {
            return false;
        }
        // value: a quoted string or a token
        let (value, after) = if let Some(q) = after.strip_prefix('"') {
            let mut out = String::new();
            let mut chars = q.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '"' => {
                        end = Some(i + 1);
                        break;
                    }
                    '\\' => match chars.next() {
                        Some((_, e)) => out.push(e),
                        None => return false,
                    },
                    c => out.push(c),
                }
            }
            let Some(end) = end else { return false };
            (out, &q[end..])
        } else {
            let len = after
                .bytes()
                .position(|b| !is_token_byte(b))
                .unwrap_or(after.len());
            if len == 0 {
                return false;
            }
            (after[..len].to_owned(), &after[len..])
        };
        if name.eq_ignore_ascii_case("charset*") {
            return false;
        }
        if name.eq_ignore_ascii_case("charset") {
            if charset_seen
                || !(value.eq_ignore_ascii_case("utf-8") || value.eq_ignore_ascii_case("utf8"))
            {
                return false;
            }
            charset_seen = true;
        }
        let after = after.trim_start_matches([' ', '\t']);
        if after.is_empty() {
            return true;
        }
        let Some(next) = after.strip_prefix(';') else {
            return false;
        };
        rest = next;
    }
}

/// RFC 9110 `tchar`.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Whether the `Accept` headers allow every one of `wanted` (type, subtype): an absent
/// header allows anything; the most specific matching range decides, and `q=0` refuses.
fn accepts(headers: &HeaderMap, wanted: &[(&str, &str)]) -> bool {
    let mut any = false;
    // (specificity, q > 0) of the best match so far, per wanted type.
    let mut best = [(-1i8, false); 2];
    for value in headers.get_all(ACCEPT) {
        let Ok(value) = value.to_str() else { continue };
        for range in value.split(',') {
            let mut parts = range.split(';');
            let media = parts.next().unwrap_or("").trim();
            let Some((t, s)) = media.split_once('/') else {
                continue;
            };
            let (t, s) = (t.trim(), s.trim());
            if t.is_empty() || s.is_empty() {
                continue;
            }
            any = true;
            let q_positive = parts
                .filter_map(|p| p.split_once('='))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
                .is_none_or(|(_, q)| {
                    q.trim()
                        .parse::<f32>()
                        .is_ok_and(|q| q > 0.0 && q.is_finite())
                });
            for (i, (wt, ws)) in wanted.iter().enumerate().take(best.len()) {
                let specificity = if t == "*" && s == "*" {
                    0
                } else if t.eq_ignore_ascii_case(wt) && s == "*" {
                    1
                } else if t.eq_ignore_ascii_case(wt) && s.eq_ignore_ascii_case(ws) {
                    2
                } else {
                    continue;
                };
                let slot = &mut best[i];
                if specificity > slot.0 || (specificity == slot.0 && q_positive) {
                    *slot = (specificity, q_positive);
                }
            }
        }
    }
    !any || best
        .iter()
        .take(wanted.len())
        .all(|(spec, ok)| *spec >= 0 && *ok)
}

/// Applies [`TransportChecks`] to every request, before anything reads the body (see the
/// [module documentation](self)). `ParseLayer` applies them too; this layer is for a
/// stack that wants them earlier (before authentication, say), or without `ParseLayer`.
#[derive(Debug, Clone, Default)]
pub struct TransportLayer {
    checks: Arc<TransportChecks>,
}

impl TransportLayer {
    /// A layer applying `checks`.
    pub fn new(checks: TransportChecks) -> Self {
        Self {
            checks: Arc::new(checks),
        }
    }
}

impl<S> Layer<S> for TransportLayer {
    type Service = Transport<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Transport {
            inner,
            checks: self.checks.clone(),
        }
    }
}

/// The service made by [`TransportLayer`].
#[derive(Debug, Clone)]
pub struct Transport<S> {
    inner: S,
    checks: Arc<TransportChecks>,
}

impl<S, B, ResBody> Service<Request<B>> for Transport<S>
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
        match self.checks.check_request(&req) {
            Ok(()) => ResponseFuture::inner(self.inner.call(req)),
            Err(r) => ResponseFuture::rejected(r.into_response()),
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`Transport`]: the inner service's, or a ready rejection.
    pub struct ResponseFuture<F, B, E> {
        #[pin]
        inner: Option<F>,
        rejected: Option<Response<B>>,
        _error: std::marker::PhantomData<fn() -> E>,
    }
}

impl<F, B, E> ResponseFuture<F, B, E> {
    fn inner(f: F) -> Self {
        Self {
            inner: Some(f),
            rejected: None,
            _error: std::marker::PhantomData,
        }
    }

    fn rejected(r: Response<B>) -> Self {
        Self {
            inner: None,
            rejected: Some(r),
            _error: std::marker::PhantomData,
        }
    }
}

impl<F, B, E> std::future::Future for ResponseFuture<F, B, E>
where
    F: std::future::Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Some(f) = this.inner.as_pin_mut() {
            return f.poll(cx);
        }
        match this.rejected.take() {
            Some(r) => Poll::Ready(Ok(r)),
            // Polled again after it completed.
            None => Poll::Pending,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn accept(values: &[&str], wanted: &[(&str, &str)]) -> bool {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(ACCEPT, v.parse().unwrap());
        }
        accepts(&h, wanted)
    }

    const BOTH: &[(&str, &str)] = &[("application", "json"), ("text", "event-stream")];

    #[test]
    fn accept_ranges() {
        assert!(accept(&[], BOTH));
        assert!(accept(&["application/json, text/event-stream"], BOTH));
        assert!(accept(&["text/event-stream, application/json"], BOTH));
        assert!(accept(&["application/json", "text/event-stream"], BOTH));
        assert!(accept(&["*/*"], BOTH));
        assert!(accept(&["application/*;q=0.5, TEXT/*"], BOTH));
        assert!(accept(&["*/*;q=0.1, text/event-stream;q=1"], BOTH));
        assert!(!accept(&["application/json"], BOTH));
        assert!(!accept(&["text/event-stream"], BOTH));
        assert!(!accept(&["text/html"], BOTH));
        assert!(!accept(&["application/json, text/event-stream;q=0"], BOTH));
        assert!(!accept(&["*/*, text/event-stream;q=0.0"], BOTH));
        assert!(accept(
            &["text/event-stream;q=0, text/event-stream"],
            &[("text", "event-stream")]
        ));
        assert!(accept(&["text/event-stream"], &[("text", "event-stream")]));
        assert!(!accept(&["application/json"], &[("text", "event-stream")]));
    }

    #[test]
    fn bodies_on_get_and_delete() {
        let mut h = HeaderMap::new();
        assert!(!has_body(&h, true));
        assert!(has_body(&h, false));
        h.insert(CONTENT_LENGTH, "0".parse().unwrap());
        assert!(!has_body(&h, true));
        h.insert(CONTENT_LENGTH, "12".parse().unwrap());
        assert!(has_body(&h, true));
        let mut h = HeaderMap::new();
        h.insert(TRANSFER_ENCODING, "chunked".parse().unwrap());
        assert!(has_body(&h, true));
    }

    #[test]
    fn methods_are_compared_exactly() {
        let c = TransportChecks::new();
        let h = HeaderMap::new();
        for m in ["post", "Post", "PUT", "OPTIONS", "HEAD"] {
            let r = c
                .check(&Method::from_bytes(m.as_bytes()).unwrap(), &h, true)
                .unwrap_err();
            assert_eq!(r.status(), http::StatusCode::METHOD_NOT_ALLOWED, "{m}");
        }
        assert!(
            TransportChecks::disabled()
                .check(&Method::PUT, &h, false)
                .is_ok()
        );
    }

    #[test]
    fn protocol_versions() {
        let mut h = HeaderMap::new();
        h.insert(header::MCP_PROTOCOL_VERSION, "2025-11-25".parse().unwrap());
        assert!(TransportChecks::new().check(&Method::GET, &h, true).is_ok());
        let only = TransportChecks::new().protocol_versions(["2026-07-28"]);
        assert!(only.check(&Method::GET, &h, true).is_err());
    }

    #[test]
    fn last_event_ids() {
        let c = TransportChecks::new();
        let check = |c: &TransportChecks, v: &[u8]| {
            let mut h = HeaderMap::new();
            h.insert(LAST_EVENT_ID, http::HeaderValue::from_bytes(v).unwrap());
            c.check(&Method::GET, &h, true)
        };
        for ok in [
            &b"0"[..],
            b"42",
            b"0190a3c2-7b1e-7cc0-8f2e-3a1b2c3d4e5f",
            b"stream-1/17",
            b"c3RyZWFt:12",
            b"a_b.c+d=",
        ] {
            assert!(check(&c, ok).is_ok(), "{ok:?}");
        }
        assert!(check(&c, "x".repeat(256).as_bytes()).is_ok());
        let long = "x".repeat(257);
        let mut bad: Vec<&[u8]> = vec![
            long.as_bytes(),
            b"a b",
            b"a\tb",
            b"a\x7fb",
            b"a\xc3\xa9",
            b"<script>",
            b"a;b",
            b"a,b",
            b"\"q\"",
            b"%0a",
        ];
        bad.push(b"a\x01b");
        for v in bad {
            if http::HeaderValue::from_bytes(v).is_err() {
                continue;
            }
            let r = check(&c, v).unwrap_err();
            assert_eq!(r.status(), http::StatusCode::BAD_REQUEST, "{v:?}");
        }
        let short = TransportChecks::new().max_last_event_id_len(8);
        assert!(check(&short, b"12345678").is_ok());
        assert!(check(&short, b"123456789").is_err());
        assert!(check(&TransportChecks::disabled(), long.as_bytes()).is_ok());
    }

    #[test]
    fn host_and_authority_agree() {
        let c = TransportChecks::new();
        let check = |uri: &str, hosts: &[&str]| {
            let mut h = HeaderMap::new();
            for v in hosts {
                h.append(HOST, v.parse().unwrap());
            }
            c.check_authority(&uri.parse().unwrap(), &h)
        };
        for (uri, hosts) in [
            ("http://evil.example/mcp", &["localhost"][..]),
            ("http://localhost:8080/mcp", &["localhost"]),
            ("http://localhost:8080/mcp", &["localhost:8081"]),
            ("http://localhost:8080/mcp", &["127.0.0.1:8080"]),
            ("http://localhost/mcp", &["localhost."]),
            ("https://localhost/mcp", &["localhost:80"]),
            ("http://localhost/mcp", &["u@localhost"]),
            ("http://localhost/mcp", &["localhost:+80"]),
            ("http://localhost/mcp", &["localhost:080x"]),
            ("http://localhost/mcp", &[""]),
            ("http://[::1]:8080/mcp", &["[::1]:8081"]),
            ("/mcp", &["localhost", "localhost"]),
            ("http://localhost/mcp", &["localhost", "localhost"]),
        ] {
            let r = check(uri, hosts).unwrap_err();
            assert_eq!(r.status(), http::StatusCode::BAD_REQUEST, "{uri} {hosts:?}");
        }
        for (uri, hosts) in [
            ("http://localhost:8080/mcp", &["localhost:8080"][..]),
            ("http://LocalHost:8080/mcp", &["localhost:8080"]),
            ("http://localhost/mcp", &["localhost:80"]),
            ("http://localhost:/mcp", &["localhost"]),
            ("https://localhost:443/mcp", &["LOCALHOST"]),
            ("http://[::1]:8080/mcp", &["[::1]:8080"]),
            ("http://localhost/mcp", &[]),
            ("/mcp", &["anything"]),
        ] {
            assert!(check(uri, hosts).is_ok(), "{uri} {hosts:?}");
        }
        let mut h = HeaderMap::new();
        h.append(HOST, "a".parse().unwrap());
        h.append(HOST, "b".parse().unwrap());
        assert!(
            TransportChecks::disabled()
                .check_authority(&"http://c/".parse().unwrap(), &h)
                .is_ok()
        );
    }

    #[test]
    fn content_types() {
        assert!(is_json_content_type("application/json"));
        assert!(is_json_content_type("Application/JSON; charset=utf-8"));
        assert!(is_json_content_type(" application/json ;charset=UTF-8"));
        assert!(!is_json_content_type("text/plain"));
        assert!(!is_json_content_type("application/json-patch+json"));
        assert!(!is_json_content_type("application/jsonx"));
        assert!(!is_json_content_type(""));
        // Only UTF-8, named once; parameters well-formed.
        for ok in [
            "application/json;",
            "application/json; charset=\"utf-8\"",
            "application/json;charset=utf8",
            "application/json; foo=bar; charset=UTF-8",
            "application/json ; charset=utf-8 ",
        ] {
            assert!(is_json_content_type(ok), "{ok}");
        }
        for bad in [
            "application/json; charset=utf-7",
            "application/json; charset=UTF-16",
            "application/json; charset=utf-16le",
            "application/json; charset=iso-8859-1",
            "application/json; charset=\"utf-7\"",
            "application/json; charset=utf-8; charset=utf-7",
            "application/json; charset=utf-8; charset=utf-8",
            "application/json; charset*=utf-8''utf-7",
            "application/json; charset = utf-7",
            "application/json; charset",
            "application/json; =utf-8",
            "application/json; charset=utf-8 x",
            "application/json; charset=\"utf-8",
            "application/json, text/plain",
            "application/json; charset=utf-8, charset=utf-7",
        ] {
            assert!(!is_json_content_type(bad), "{bad}");
        }
    }

    proptest::proptest! {
        /// An accepted `Content-Type` never names a charset other than UTF-8: every
        /// `charset` in it (any case, quoted or not) is followed by `=utf-8` or `=utf8`.
        #[test]
        fn an_accepted_content_type_names_only_utf8(
            params in proptest::collection::vec(
                (
                    proptest::sample::select(vec!["charset", "CharSet", "charset*", "foo", "", "x"]),
                    proptest::sample::select(vec!["=", " = ", "", "=\""]),
                    proptest::sample::select(vec!["utf-8", "UTF-8", "utf8", "utf-7", "utf-16", "\"utf-7\"", "\"utf-8\"", "latin1", ""]),
                    proptest::sample::select(vec![";", "; ", ",", " ", ""]),
                ),
                0..4,
            ),
        ) {
            let mut v = String::from("application/json");
            for (name, eq, value, sep) in &params {
                v.push_str(sep);
                v.push_str(name);
                v.push_str(eq);
                v.push_str(value);
            }
            if is_json_content_type(&v) {
                // Every parameter named `charset` (as a parser splitting at `;` and `=`
                // reads it) is UTF-8; none is `charset*`.
                for part in v.split(';').skip(1) {
                    let (name, value) = part.split_once('=').unwrap_or((part, ""));
                    let name = name.trim();
                    proptest::prop_assert!(!name.eq_ignore_ascii_case("charset*"), "{v}");
                    if name.eq_ignore_ascii_case("charset") {
                        let value = value.trim().trim_matches('"');
                        proptest::prop_assert!(
                            value.eq_ignore_ascii_case("utf-8") || value.eq_ignore_ascii_case("utf8"),
                            "{v}"
                        );
                    }
                }
            }
        }
    }
}
