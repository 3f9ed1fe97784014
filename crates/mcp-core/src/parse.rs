//! [`ParseLayer`]: read the body once, bounded, parse it once, and hand the same bytes on.
//!
//! For a `POST`, the layer refuses a `Content-Length` over the limit with 413 before
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
//! on). Other methods (`GET`, `DELETE`, ...) pass through untouched.
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

use crate::rejection::{Rejection, RejectionReason};
use crate::request::{McpHeaders, McpRequest};

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
#[derive(Debug, Clone, Copy)]
pub struct ParseLayer {
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
    pub const fn new() -> Self {
        Self {
            limit: DEFAULT_BODY_LIMIT,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            reject_invalid_json: true,
        }
    }

    /// Sets the time a `POST` body has to arrive whole, from when the layer starts
    /// reading it; past it, 408 (a zero duration is taken as the default).
    pub const fn body_timeout(mut self, timeout: Duration) -> Self {
        self.body_timeout = if timeout.is_zero() {
            DEFAULT_BODY_TIMEOUT
        } else {
            timeout
        };
        self
    }

    /// Sets the body limit in bytes.
    pub const fn max_body_bytes(mut self, limit: usize) -> Self {
        self.limit = limit;
        self
    }

    /// Whether invalid JSON is rejected with 400 / -32700 (the default) or passed on
    /// without an [`McpRequest`] in the extensions.
    pub const fn reject_invalid_json(mut self, reject: bool) -> Self {
        self.reject_invalid_json = reject;
        self
    }

    /// The configured body limit.
    pub const fn limit(&self) -> usize {
        self.limit
    }
}

impl<S> Layer<S> for ParseLayer {
    type Service = Parse<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Parse {
            inner,
            config: *self,
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
        let config = self.config;

        if req.method() != Method::POST {
            let req = req.map(Body::new);
            return Box::pin(inner.call(req));
        }

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
                Err(_) if config.reject_invalid_json => {
                    return Ok(Rejection::new(RejectionReason::InvalidJson).into_response());
                }
                Err(_) => None,
            };
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
