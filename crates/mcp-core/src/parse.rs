//! [`ParseLayer`]: check the transport, read the body once, bounded, parse it once, and
//! hand the same bytes on.
//!
//! First, for every method, the transport checks of [`crate::transport`] (on by default,
//! [`ParseLayer::transport`] to configure them): a method other than `POST`, `GET` and
//! `DELETE` gets 405 with `Allow`; a `GET` or `DELETE` with a body gets 400, and one
//! without is handed on with an empty body; MCP headers sent twice or outside visible
//! ASCII get 400; `MCP-Protocol-Version`, `Content-Type` (415) and `Accept` (406) are
//! checked. Nothing reads a body before they pass.
//!
//! For a `POST`, the layer then refuses a `Content-Length` over the limit with 413 before
//! reading anything, reads a body of unknown length (chunked) only up to the limit and
//! answers 413 as soon as it runs over, parses the bytes as JSON once, puts the
//! [`McpRequest`] in the request extensions, and calls the inner service with the same
//! bytes as body. An over-limit or unreadable body is answered with `Connection: close`
//! over HTTP/1.x, since the rest of it was not read. A body that has not arrived whole
//! within the body timeout (default [`DEFAULT_BODY_TIMEOUT`], 60 s) gets 408 with
//! JSON-RPC -32600 and `Connection: close`, so a client that trickles its body (a
//! slow-POST attack) cannot hold a connection and a task for as long as it likes; the
//! timeout needs tokio's timer, which `#[tokio::main]` and axum's `serve` have. Invalid
//! JSON gets 400 with JSON-RPC -32700 (or, with `reject_invalid_json(false)`, is passed
//! on). JSON that parsers read differently (duplicate keys anywhere, case variants of the
//! MCP keys, NUL in a key; see [`crate::json`]) gets 400 with -32600, whatever
//! `reject_invalid_json` says: the bytes are forwarded as they are, so what the layers
//! after this one check must be what the server behind them reads. `Mcp-Method` /
//! `Mcp-Name` that disagree with the body get 400 with -32600 (with the transport checks).
//!
//! The [`McpRequest`] is also copied into the response extensions, so that a layer placed
//! outside (audit, metrics) can record the method and tool of the request it served.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum_core::body::Body;
use bytes::{Bytes, BytesMut};
use http::{Method, Request, Response, header::CONTENT_LENGTH};
use http_body::Body as _;
use http_body_util::BodyExt;
use tower_layer::Layer;
use tower_service::Service;

use crate::json::JsonError;
use crate::rejection::{Rejection, RejectionReason};
use crate::request::{HeaderMismatch, McpHeaders, McpRequest};
use crate::transport::TransportChecks;

/// The rejection of a request whose method, tool / prompt name, resource URI or
/// completion reference holds a control character ([`McpRequest::control_char_in_name`]):
/// 400, -32600, the id echoed (not for a batch), detail `rule=control_chars_in_name`.
/// [`ParseLayer`] sends it whatever else is configured.
pub fn control_char_rejection(req: &McpRequest) -> Rejection {
    Rejection::new(RejectionReason::InvalidRequest)
        .with_message(
            "Invalid Request: the method, params.name, params.uri and params.ref must be \
             strings without control characters",
        )
        .with_detail("rule=control_chars_in_name")
        .with_id(if req.is_batch() {
            None
        } else {
            req.id().cloned()
        })
}

/// The rejection of a request whose `Mcp-Method` / `Mcp-Name` disagree with its body: 400,
/// -32600, the id echoed (not for a batch), detail `header=Mcp-Name` (or `Mcp-Method`).
pub fn header_mismatch_rejection(req: &McpRequest, m: HeaderMismatch) -> Rejection {
    let r = Rejection::new(RejectionReason::HeaderMismatch);
    let r = match m {
        HeaderMismatch::ProtocolVersion => r.with_message(
            "MCP-Protocol-Version header does not match the protocol version in the body's _meta",
        ),
        _ => r,
    };
    r.with_id(if req.is_batch() {
        None
    } else {
        req.id().cloned()
    })
    .with_detail(format!("header={}", m.header()))
}

/// Boxed error type of bodies handed to the layer.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The default body limit: 4 MiB.
pub const DEFAULT_BODY_LIMIT: usize = 4 * 1024 * 1024;

/// The default time a `POST` body has to arrive whole: 60 s.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(60);

/// Configuration of [`Parse`]: the body limit, the body timeout and what invalid JSON
/// gets.
///
/// ```
/// use axum::{Router, routing::post};
/// use mcp_core::{McpRequest, ParseLayer};
///
/// async fn handler(req: McpRequest) -> String {
///     req.method().unwrap_or("none").to_owned()
/// }
///
/// let app: Router = Router::new()
///     .route("/mcp", post(handler))
///     .layer(ParseLayer::new().max_body_bytes(64 * 1024));
/// ```
#[derive(Debug, Clone)]
pub struct ParseLayer {
    body: BodyConfig,
    transport: TransportChecks,
}

/// What the body read needs (copied into each request's future).
#[derive(Debug, Clone, Copy)]
struct BodyConfig {
    limit: usize,
    body_timeout: Duration,
    reject_invalid_json: bool,
}

impl Default for ParseLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl ParseLayer {
    /// A layer with the default limit ([`DEFAULT_BODY_LIMIT`]) and body timeout
    /// ([`DEFAULT_BODY_TIMEOUT`]) that rejects invalid JSON.
    /// The transport checks are all on ([`TransportChecks::new`]).
    pub const fn new() -> Self {
        Self {
            body: BodyConfig {
                limit: DEFAULT_BODY_LIMIT,
                body_timeout: DEFAULT_BODY_TIMEOUT,
                reject_invalid_json: true,
            },
            transport: TransportChecks::new(),
        }
    }

    /// Sets the transport checks applied before the body is read (default: all of them,
    /// [`TransportChecks::new`]).
    pub fn transport(mut self, checks: TransportChecks) -> Self {
        self.transport = checks;
        self
    }

    /// Turns every transport check on (the default) or off
    /// ([`TransportChecks::disabled`]: for a service that does them itself; other methods
    /// and bodies on GET and DELETE then reach it). The checks of the parsed body
    /// (ambiguous JSON) stay on.
    pub fn transport_checks(self, on: bool) -> Self {
        self.transport(if on {
            TransportChecks::new()
        } else {
            TransportChecks::disabled()
        })
    }

    /// The transport checks.
    pub fn transport_config(&self) -> &TransportChecks {
        &self.transport
    }

    /// Sets the time a `POST` body has to arrive whole, from when the layer starts
    /// reading it; past it, 408 (a zero duration is taken as the default).
    pub const fn body_timeout(mut self, timeout: Duration) -> Self {
        self.body.body_timeout = if timeout.is_zero() {
            DEFAULT_BODY_TIMEOUT
        } else {
            timeout
        };
        self
    }

    /// Sets the body limit in bytes.
    pub const fn max_body_bytes(mut self, limit: usize) -> Self {
        self.body.limit = limit;
        self
    }

    /// Whether invalid JSON is rejected with 400 / -32700 (the default) or passed on
    /// without an [`McpRequest`] in the extensions.
    pub const fn reject_invalid_json(mut self, reject: bool) -> Self {
        self.body.reject_invalid_json = reject;
        self
    }

    /// The configured body limit.
    pub const fn limit(&self) -> usize {
        self.body.limit
    }
}

impl<S> Layer<S> for ParseLayer {
    type Service = Parse<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Parse {
            inner,
            config: self.clone(),
        }
    }
}

/// The service made by [`ParseLayer`].
#[derive(Debug, Clone)]
pub struct Parse<S> {
    inner: S,
    config: ParseLayer,
}

impl<S> Parse<S> {
    /// Wraps `inner` with the default configuration.
    pub fn new(inner: S) -> Self {
        ParseLayer::new().layer(inner)
    }

    /// A [`ParseLayer`] with the default configuration.
    pub fn layer() -> ParseLayer {
        ParseLayer::new()
    }
}

/// Why [`read_body`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadBodyError {
    /// The body is larger than the limit.
    #[error("request body larger than {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: usize,
    },
    /// The body stream failed (client went away, malformed chunking).
    #[error("request body could not be read")]
    Body(#[source] BoxError),
}

impl ReadBodyError {
    /// The rejection this error gets: 413 for too large, 400 for a broken body.
    pub fn rejection(&self) -> Rejection {
        match self {
            Self::TooLarge { .. } => Rejection::new(RejectionReason::TooLarge),
            Self::Body(_) => Rejection::new(RejectionReason::InvalidRequest)
                .with_message("Request body could not be read"),
        }
    }
}

/// Reads a body into memory, never buffering more than `limit` bytes: a `Content-Length`
/// above the limit fails before anything is read, and a body of unknown length fails as
/// soon as it runs over.
///
/// A body that arrives in one data frame is returned as that frame's `Bytes` (no copy);
/// from a second frame on, the frames are copied into one buffer (sized from the body's
/// size hint) that never holds more than the limit. Trailers are ignored.
pub async fn read_body<B>(
    headers: &http::HeaderMap,
    body: B,
    limit: usize,
) -> Result<Bytes, ReadBodyError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    if let Some(len) = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse::<u64>().ok())
        && len > limit as u64
    {
        return Err(ReadBodyError::TooLarge { limit });
    }
    // The first data frame is kept as it is (no copy): a small body usually arrives in one.
    // Only a second frame starts a buffer.
    let mut body = std::pin::pin!(body);
    let mut first: Option<Bytes> = None;
    let mut buf: Option<BytesMut> = None;
    let mut len: usize = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ReadBodyError::Body(e.into()))?;
        // Trailers carry nothing of the body.
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if data.is_empty() {
            continue;
        }
        len = match len.checked_add(data.len()) {
            Some(n) if n <= limit => n,
            _ => return Err(ReadBodyError::TooLarge { limit }),
        };
        if let Some(b) = buf.as_mut() {
            b.extend_from_slice(&data);
        } else if let Some(f) = first.take() {
            let hint = usize::try_from(body.size_hint().lower()).unwrap_or(0);
            let mut b = BytesMut::with_capacity(len.saturating_add(hint).min(limit));
            b.extend_from_slice(&f);
            b.extend_from_slice(&data);
            buf = Some(b);
        } else {
            first = Some(data);
        }
    }
    Ok(match (buf, first) {
        (Some(b), _) => b.freeze(),
        (None, Some(f)) => f,
        (None, None) => Bytes::new(),
    })
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S, B, ResBody> Service<Request<B>> for Parse<S>
where
    S: Service<Request<Body>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    ResBody: From<Bytes> + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Response<ResBody>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // Take the service that was driven to readiness, leave a clone in its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let config = self.config.body;
        let transport = &self.config.transport;

        if let Err(rejection) = transport.check_request(&req) {
            return Box::pin(async move { Ok(rejection.into_response()) });
        }
        if req.method() != Method::POST {
            // GET and DELETE take no body (checked above); any other method reaches here
            // only with the checks off and is handed on as it came.
            let req = if transport.is_enabled() {
                req.map(|_| Body::empty())
            } else {
                req.map(Body::new)
            };
            return Box::pin(inner.call(req));
        }
        let check_headers = transport.is_enabled();

        Box::pin(async move {
            let (mut parts, body) = req.into_parts();
            let read = read_body(&parts.headers, body, config.limit);
            let read = match tokio::time::timeout(config.body_timeout, read).await {
                Ok(r) => r.map_err(|e| e.rejection()),
                Err(_) => Err(Rejection::new(RejectionReason::BodyTimeout)),
            };
            let bytes = match read {
                Ok(b) => b,
                Err(mut rejection) => {
                    // The rest of the body was not read: over HTTP/1.x the connection
                    // cannot carry another request, so tell the client not to reuse it.
                    if parts.version <= http::Version::HTTP_11 {
                        rejection = rejection.with_header(http::header::CONNECTION, "close");
                    }
                    return Ok(rejection.into_response());
                }
            };
            let headers = McpHeaders::from_headers(&parts.headers);
            let parsed = match McpRequest::parse(bytes.clone(), headers) {
                Ok(p) => Some(p),
                // Ambiguous JSON is refused whatever `reject_invalid_json` says.
                Err(e @ JsonError::Ambiguous(_)) => return Ok(e.rejection().into_response()),
                Err(e) if config.reject_invalid_json => return Ok(e.rejection().into_response()),
                Err(_) => None,
            };
            if check_headers
                && let Some(p) = &parsed
                && let Some(m) = p.header_mismatch()
            {
                return Ok(header_mismatch_rejection(p, m).into_response());
            }
            if let Some(p) = &parsed
                && p.control_char_in_name().is_some()
            {
                // The audit trail still records what was refused.
                crate::RequestFacts::note_request(&parts.extensions, p);
                let mut response = control_char_rejection(p).into_response();
                response.extensions_mut().insert(p.clone());
                return Ok(response);
            }
            if let Some(p) = &parsed {
                crate::RequestFacts::note_request(&parts.extensions, p);
                parts.extensions.insert(p.clone());
            }
            let req = Request::from_parts(parts, Body::from(bytes));
            let mut response = inner.call(req).await?;
            if let Some(p) = parsed {
                response.extensions_mut().insert(p);
            }
            Ok(response)
        })
    }
}
