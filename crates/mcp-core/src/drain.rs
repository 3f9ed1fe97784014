//! Keeps an HTTP/1.x connection usable after a response that left the request body
//! unread, or says `Connection: close` before it is closed (RFC 9112 section 9.6).
//!
//! A layer that refuses a request before reading its body (401, 403, 405, 415, 429,
//! 503, ...) drops the body. Over HTTP/1.x the rest of that body is still on the
//! connection, in front of the client's next request: hyper then closes the connection
//! after the response, without saying so in it when the response head is written before
//! it notices. A client that wrote the head and the body in separate writes (Python's
//! `http.client` and many other libraries) sends its next request into a closed socket
//! and loses it.
//!
//! [`DrainLayer`] does what production proxies do: once the inner service has answered,
//! if the body was dropped unread, it reads and discards what is left of it, up to a
//! small cap ([`DrainLayer::max_bytes`], default [`DEFAULT_DRAIN_BYTES`] = 64 KiB) and
//! within a short deadline ([`DrainLayer::timeout`], default [`DEFAULT_DRAIN_TIMEOUT`] =
//! 1 s), and only then hands the response on. A body drained whole leaves the connection
//! usable for the next request. A larger body (a declared `Content-Length` over the cap
//! is not read at all), a slower one, or a broken one: the response gets
//! `Connection: close`, and the client knows not to reuse the connection. The drain never
//! holds more than one frame in memory and never reads more than the cap, so it is no
//! slow-read or memory vector: a client trickling its body holds the response back for at
//! most the deadline.
//!
//! Not drained: HTTP/2 and later (an unread stream is reset on its own; the connection
//! is unaffected), a request that asked to close the connection anyway (HTTP/1.1
//! `Connection: close`, HTTP/1.0 without `keep-alive`), a body the inner service still
//! holds when it answers (streamed elsewhere), one it took out with
//! [`DrainBody::into_inner`], and an `Expect: 100-continue` request whose body nobody
//! asked for: reading it would send `100 Continue` for a refused request, so its response
//! says `Connection: close` instead.
//!
//! The layer must be outside every layer that refuses (outermost, or just inside the
//! server). The inner service sees [`DrainBody<B>`]; `B` must be `Unpin` (hyper's
//! `Incoming` and axum's `Body` are).
//!
//! ```
//! use axum::{Router, routing::post};
//! use mcp_core::DrainLayer;
//! use std::time::Duration;
//!
//! let app: Router = Router::new()
//!     .route("/mcp", post(|| async { "ok" }))
//!     .layer(DrainLayer::new().max_bytes(64 * 1024).timeout(Duration::from_secs(1)));
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Buf;
use http::header::{CONNECTION, EXPECT};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tower_layer::Layer;
use tower_service::Service;

/// The default [`DrainLayer::max_bytes`]: 64 KiB.
pub const DEFAULT_DRAIN_BYTES: u64 = 64 * 1024;

/// The default [`DrainLayer::timeout`]: 1 s.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

/// Drains the unread rest of a request body after the response (see the
/// [module docs](self)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainLayer {
    max_bytes: u64,
    timeout: Duration,
}

impl Default for DrainLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl DrainLayer {
    /// The defaults: at most 64 KiB within 1 s.
    pub fn new() -> Self {
        Self {
            max_bytes: DEFAULT_DRAIN_BYTES,
            timeout: DEFAULT_DRAIN_TIMEOUT,
        }
    }

    /// The most body bytes read and discarded after a response (0: none; every response
    /// that leaves a body unread says `Connection: close`).
    pub fn max_bytes(mut self, n: u64) -> Self {
        self.max_bytes = n;
        self
    }

    /// How long the drain may take; past it, the response says `Connection: close`.
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }
}

impl<S> Layer<S> for DrainLayer {
    type Service = Drain<S>;

    fn layer(&self, inner: S) -> Drain<S> {
        Drain {
            inner,
            config: *self,
        }
    }
}

/// The service of [`DrainLayer`].
#[derive(Debug, Clone)]
pub struct Drain<S> {
    inner: S,
    config: DrainLayer,
}

impl<S> Drain<S> {
    /// Wraps `inner` with the defaults.
    pub fn new(inner: S) -> Self {
        DrainLayer::new().layer(inner)
    }

    /// Wraps `inner` with `config`.
    pub fn with(inner: S, config: DrainLayer) -> Self {
        config.layer(inner)
    }
}

/// What became of a request body, as the service left it.
enum Left<B> {
    /// Still held (or never dropped).
    InUse,
    /// Read to its end.
    Ended,
    /// Dropped before its end; `polled`: someone asked it for data (so a
    /// `100 Continue` went out).
    Unread { body: B, polled: bool },
    /// Taken out with [`DrainBody::into_inner`].
    Detached,
}

type Slot<B> = Arc<Mutex<Left<B>>>;

/// The request body [`Drain`] hands to its inner service: the body as it came, which
/// hands itself back when dropped unread, for the drain.
pub struct DrainBody<B> {
    inner: Option<B>,
    slot: Slot<B>,
    polled: bool,
    ended: bool,
}

impl<B> std::fmt::Debug for DrainBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DrainBody")
            .field("polled", &self.polled)
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

impl<B: Body> DrainBody<B> {
    fn new(body: B) -> (Self, Slot<B>) {
        let ended = body.is_end_stream();
        let slot = Arc::new(Mutex::new(if ended { Left::Ended } else { Left::InUse }));
        (
            Self {
                inner: Some(body),
                slot: slot.clone(),
                polled: false,
                ended,
            },
            slot,
        )
    }

    /// The body as it came; it is no longer drained (whoever takes it reads it, or the
    /// connection closes as hyper decides).
    pub fn into_inner(mut self) -> B {
        *self.slot.lock().unwrap_or_else(PoisonError::into_inner) = Left::Detached;
        match self.inner.take() {
            Some(b) => b,
            // `inner` is only taken here and in `drop`.
            None => unreachable_body(),
        }
    }
}

#[cold]
fn unreachable_body() -> ! {
    unreachable!("a DrainBody's body is taken only once")
}

impl<B> Drop for DrainBody<B> {
    fn drop(&mut self) {
        let Some(body) = self.inner.take() else {
            return;
        };
        let mut left = self.slot.lock().unwrap_or_else(PoisonError::into_inner);
        if matches!(*left, Left::InUse) {
            // (A body read to its declared length is at its end without a last poll;
            // `settle` checks `is_end_stream` before reading.)
            *left = if self.ended {
                Left::Ended
            } else {
                Left::Unread {
                    body,
                    polled: self.polled,
                }
            };
        }
    }
}

impl<B: Body + Unpin> Body for DrainBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        this.polled = true;
        let frame = ready!(Pin::new(inner).poll_frame(cx));
        if frame.is_none() {
            this.ended = true;
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

/// Whether the connection stays open after this request as far as the client asked:
/// HTTP/1.1 unless `Connection: close`, HTTP/1.0 only with `Connection: keep-alive`.
fn client_keeps_alive(version: Version, headers: &HeaderMap) -> bool {
    let has = |token: &str| {
        headers.get_all(CONNECTION).iter().any(|v| {
            v.to_str()
                .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    match version {
        Version::HTTP_11 => !has("close"),
        Version::HTTP_10 => has("keep-alive"),
        _ => false,
    }
}

fn says_close(headers: &HeaderMap) -> bool {
    headers.get_all(CONNECTION).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")))
    })
}

/// Reads and discards `body` to its end: false once more than `max` data bytes came,
/// or on an error.
async fn discard<B: Body + Unpin>(body: &mut B, max: u64) -> bool {
    let mut seen: u64 = 0;
    loop {
        match body.frame().await {
            None => return true,
            Some(Err(_)) => return false,
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    seen = seen.saturating_add(data.remaining() as u64);
                    if seen > max {
                        return false;
                    }
                }
            }
        }
    }
}

/// What to do with the body left after the response: `true` when the response must say
/// `Connection: close`.
async fn settle<B: Body + Unpin>(left: Left<B>, expect_continue: bool, config: DrainLayer) -> bool {
    let Left::Unread { mut body, polled } = left else {
        return false;
    };
    if body.is_end_stream() {
        return false;
    }
    if expect_continue && !polled {
        // Nobody asked for the body: reading it now would send `100 Continue` for a
        // request already answered.
        tracing::debug!(
            "body of a refused Expect: 100-continue request not asked for: Connection: close"
        );
        return true;
    }
    if body.size_hint().lower() > config.max_bytes {
        tracing::debug!(
            max = config.max_bytes,
            "unread request body over the drain cap: Connection: close"
        );
        return true;
    }
    match tokio::time::timeout(config.timeout, discard(&mut body, config.max_bytes)).await {
        Ok(true) => false,
        Ok(false) => {
            tracing::debug!(
                max = config.max_bytes,
                "unread request body over the drain cap or broken: Connection: close"
            );
            true
        }
        Err(_) => {
            tracing::debug!("unread request body not drained in time: Connection: close");
            true
        }
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S, B, ResBody> Service<Request<B>> for Drain<S>
where
    S: Service<Request<DrainBody<B>>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    B: Body + Unpin + Send + 'static,
    ResBody: Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Response<ResBody>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let config = self.config;
        // Only HTTP/1.x connections that are to stay open carry a next request behind
        // this body.
        let watch =
            req.version() <= Version::HTTP_11 && client_keeps_alive(req.version(), req.headers());
        let expect_continue = req
            .headers()
            .get(EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        let (parts, body) = req.into_parts();
        let (body, slot) = DrainBody::new(body);
        let fut = self.inner.call(Request::from_parts(parts, body));
        Box::pin(async move {
            let mut response = fut.await?;
            if !watch
                || response.status() == StatusCode::SWITCHING_PROTOCOLS
                || says_close(response.headers())
            {
                return Ok(response);
            }
            let left = std::mem::replace(
                &mut *slot.lock().unwrap_or_else(PoisonError::into_inner),
                Left::Detached,
            );
            if settle(left, expect_continue, config).await {
                response
                    .headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use bytes::Bytes;
    use http_body_util::{Full, StreamBody};
    use std::convert::Infallible;
    use tower::{ServiceExt, service_fn};

    type Frames = StreamBody<
        futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>,
    >;

    fn frames(sizes: &[usize]) -> Frames {
        let v: Vec<_> = sizes
            .iter()
            .map(|n| Ok(Frame::data(Bytes::from(vec![b'x'; *n]))))
            .collect();
        StreamBody::new(futures_util::stream::iter(v))
    }

    /// A service that refuses without reading the body.
    async fn refuse<B>(_req: Request<B>) -> Result<Response<String>, Infallible> {
        Ok(Response::builder().status(401).body(String::new()).unwrap())
    }

    /// A service that reads the body whole.
    async fn read_all<B: Body + Unpin>(req: Request<B>) -> Result<Response<String>, Infallible> {
        let _ = req.into_body().collect().await;
        Ok(Response::new(String::new()))
    }

    fn closes<B>(r: &Response<B>) -> bool {
        says_close(r.headers())
    }

    async fn call_with<B>(layer: DrainLayer, req: Request<B>, read: bool) -> Response<String>
    where
        B: Body<Data = Bytes> + Unpin + Send + 'static,
    {
        if read {
            layer
                .layer(service_fn(read_all))
                .oneshot(req)
                .await
                .unwrap()
        } else {
            layer.layer(service_fn(refuse)).oneshot(req).await.unwrap()
        }
    }

    #[tokio::test]
    async fn a_small_unread_body_is_drained_and_the_connection_kept() {
        let r = call_with(
            DrainLayer::new(),
            Request::new(frames(&[1000, 1000, 1000])),
            false,
        )
        .await;
        assert_eq!(r.status(), 401);
        assert!(!closes(&r));
    }

    #[tokio::test]
    async fn a_body_over_the_cap_gets_connection_close() {
        // Streamed (no length known): read up to the cap, then close.
        let r = call_with(
            DrainLayer::new().max_bytes(2500),
            Request::new(frames(&[1000; 3])),
            false,
        )
        .await;
        assert!(closes(&r));
        // A body of exactly the cap is drained.
        let r = call_with(
            DrainLayer::new().max_bytes(3000),
            Request::new(frames(&[1000; 3])),
            false,
        )
        .await;
        assert!(!closes(&r));
        // A known length over the cap is not read at all.
        let r = call_with(
            DrainLayer::new().max_bytes(10),
            Request::new(Full::new(Bytes::from_static(b"0123456789ab"))),
            false,
        )
        .await;
        assert!(closes(&r));
        // Zero: nothing is read; a body left unread means close.
        let r = call_with(
            DrainLayer::new().max_bytes(0),
            Request::new(frames(&[1])),
            false,
        )
        .await;
        assert!(closes(&r));
    }

    #[tokio::test]
    async fn a_body_read_whole_or_empty_is_left_alone() {
        let r = call_with(
            DrainLayer::new().max_bytes(0),
            Request::new(frames(&[5000])),
            true,
        )
        .await;
        assert!(!closes(&r));
        let r = call_with(
            DrainLayer::new().max_bytes(0),
            Request::new(Full::new(Bytes::new())),
            false,
        )
        .await;
        assert!(!closes(&r));
    }

    #[tokio::test]
    async fn a_body_that_does_not_come_in_time_gets_connection_close() {
        let body = StreamBody::new(futures_util::stream::pending::<
            Result<Frame<Bytes>, Infallible>,
        >());
        let r = call_with(
            DrainLayer::new().timeout(Duration::from_millis(50)),
            Request::new(body),
            false,
        )
        .await;
        assert!(closes(&r));
    }

    #[tokio::test]
    async fn an_unasked_expect_continue_body_is_not_read() {
        let req = Request::builder()
            .header(EXPECT, "100-continue")
            .body(frames(&[10]))
            .unwrap();
        let r = call_with(DrainLayer::new(), req, false).await;
        assert!(closes(&r));
    }

    #[tokio::test]
    async fn http2_and_closing_requests_are_left_to_the_server() {
        let req = Request::builder()
            .version(Version::HTTP_2)
            .body(frames(&[10]))
            .unwrap();
        assert!(!closes(
            &call_with(DrainLayer::new().max_bytes(0), req, false).await
        ));
        let req = Request::builder()
            .version(Version::HTTP_10)
            .body(frames(&[10]))
            .unwrap();
        assert!(!closes(
            &call_with(DrainLayer::new().max_bytes(0), req, false).await
        ));
        let req = Request::builder()
            .version(Version::HTTP_10)
            .header(CONNECTION, "keep-alive")
            .body(frames(&[10]))
            .unwrap();
        assert!(closes(
            &call_with(DrainLayer::new().max_bytes(0), req, false).await
        ));
    }
}
