//! [`HeldBodiesLayer`]: a cap on the request bodies one principal has in progress (not yet
//! read whole), across all its connections and client addresses.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::RETRY_AFTER;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use mcp_core::{Principal, Rejection, RejectionReason};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::inflight::{InFlight, InFlightGuard};
use crate::key::Key;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The default [`HeldBodiesLayer`] cap: 64 request bodies in progress per principal.
pub const DEFAULT_HELD_BODIES_PER_PRINCIPAL: u32 = 64;

/// The default number of principals tracked at once (beyond it, the rest share one
/// counter with the same cap).
const DEFAULT_MAX_KEYS: usize = 100_000;

/// Caps the request bodies each authenticated principal has in progress: requests whose
/// body has not been read whole (it ended, failed, or was dropped), across every
/// connection and client address the principal uses. A client that opens many streams
/// and sends each a part of its body, never the end, holds what the body layer has read
/// of each (up to its body limit) and a task for the body timeout; per connection and
/// per client address the accept loop's memory budgets bound that, but a principal with
/// many connections from many addresses escapes both. This layer bounds it per
/// principal: at most `max` bodies in progress, so at most `max` times the body limit.
///
/// Put it after authentication (it reads the [`Principal`] from the request's
/// extensions) and before the layer that reads the body. A request without a principal,
/// or whose body is empty (`Body::is_end_stream`), is not counted. Over the cap the
/// request is refused before its body is read: 429 (`RejectionReason::ConcurrencyLimited`,
/// detail `held_bodies`) with `Retry-After: 1` and a JSON-RPC error (no id: the body is
/// not parsed yet). Memory is bounded: a principal holds an entry only while it has
/// bodies in progress, at most 100,000 entries (set with
/// [`with_max_keys`](Self::with_max_keys); beyond, the rest share one
/// counter with the same cap). Cheap to clone; the counts are shared by the clones.
///
/// ```
/// use mcp_ratelimit::HeldBodiesLayer;
/// let layer = HeldBodiesLayer::new(8).unwrap();
/// assert_eq!(layer.held_by("apikey:alice"), 0);
/// ```
#[derive(Clone)]
pub struct HeldBodiesLayer {
    shared: Arc<Shared>,
}

struct Shared {
    held: Arc<InFlight>,
    max: u32,
    refused: AtomicU64,
}

impl fmt::Debug for HeldBodiesLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeldBodiesLayer")
            .field("max", &self.shared.max)
            .finish_non_exhaustive()
    }
}

impl HeldBodiesLayer {
    /// At most `max` request bodies in progress per principal (1 to 1,000,000; the error
    /// names `max`).
    pub fn new(max: u32) -> Result<Self, crate::ConfigError> {
        Self::with_max_keys(max, DEFAULT_MAX_KEYS)
    }

    /// As [`new`](Self::new), tracking at most `max_keys` principals at once (at least
    /// 1): beyond them, the other principals share one counter with the same cap.
    pub fn with_max_keys(max: u32, max_keys: usize) -> Result<Self, crate::ConfigError> {
        if !(1..=1_000_000).contains(&max) {
            return Err(crate::ConfigError::OutOfRange {
                key: "max".into(),
                rule: "must be 1 to 1000000",
            });
        }
        Ok(Self {
            shared: Arc::new(Shared {
                held: Arc::new(InFlight::new(max, max_keys.max(1))),
                max,
                refused: AtomicU64::new(0),
            }),
        })
    }

    /// The cap.
    pub fn max(&self) -> u32 {
        self.shared.max
    }

    /// Bodies in progress of the principal with this qualified id
    /// ([`Principal::qualified_id`]).
    pub fn held_by(&self, qualified_id: &str) -> u32 {
        self.shared.held.held(&principal_key(qualified_id))
    }

    /// Requests refused over the cap since the layer was built.
    pub fn refused(&self) -> u64 {
        self.shared.refused.load(Ordering::Relaxed)
    }
}

fn principal_key(qualified_id: &str) -> Key {
    let mut s = String::with_capacity(qualified_id.len().min(80) + 4);
    crate::key::encode_part(&mut s, 'p', qualified_id);
    Key::Text(s.into())
}

impl<S> Layer<S> for HeldBodiesLayer {
    type Service = HeldBodies<S>;

    fn layer(&self, inner: S) -> Self::Service {
        HeldBodies {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service of [`HeldBodiesLayer`]. The inner service gets the body as an
/// `axum::body::Body` wrapping a [`HeldBody`].
#[derive(Clone, Debug)]
pub struct HeldBodies<S> {
    inner: S,
    layer: HeldBodiesLayer,
}

impl<S, B, ResB> Service<Request<B>> for HeldBodies<S>
where
    S: Service<Request<axum::body::Body>, Response = Response<ResB>>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    ResB: From<Bytes>,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = HeldBodiesFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let key = match req.extensions().get::<Principal>() {
            Some(p) if !req.body().is_end_stream() => Some(principal_key(p.qualified_id())),
            _ => None,
        };
        let guard = match key {
            None => None,
            Some(key) => match self.layer.shared.held.acquire(&key) {
                Some(g) => Some(g),
                None => {
                    self.layer.shared.refused.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(
                        max = self.layer.shared.max,
                        "request refused: its principal has the most request bodies in progress"
                    );
                    let rejection = Rejection::new(RejectionReason::ConcurrencyLimited)
                        .with_message(
                            "Too many request bodies in progress for this principal: send \
                             the ones open first",
                        )
                        .with_detail("held_bodies")
                        .with_header(RETRY_AFTER, "1");
                    return HeldBodiesFuture::refused(rejection);
                }
            },
        };
        let req = req.map(|inner| {
            axum::body::Body::new(HeldBody {
                inner,
                guard: guard.map(|g| Held { _guard: g }),
            })
        });
        HeldBodiesFuture::inner(self.inner.call(req))
    }
}

pin_project! {
    /// The response future of [`HeldBodies`].
    pub struct HeldBodiesFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Inner { #[pin] fut: F },
        Refused { rejection: Option<Box<Rejection>> },
    }
}

impl<F> HeldBodiesFuture<F> {
    fn inner(fut: F) -> Self {
        Self {
            state: State::Inner { fut },
        }
    }

    fn refused(rejection: Rejection) -> Self {
        Self {
            state: State::Refused {
                rejection: Some(Box::new(rejection)),
            },
        }
    }
}

impl<F, ResB, E> Future for HeldBodiesFuture<F>
where
    F: Future<Output = Result<Response<ResB>, E>>,
    ResB: From<Bytes>,
{
    type Output = Result<Response<ResB>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Inner { fut } => fut.poll(cx),
            StateProj::Refused { rejection } => Poll::Ready(Ok(rejection
                .take()
                .map(|r| r.into_response())
                .unwrap_or_else(|| {
                    Rejection::new(RejectionReason::ConcurrencyLimited).into_response()
                }))),
        }
    }
}

/// A principal's place among its bodies in progress, given back when dropped.
struct Held {
    _guard: InFlightGuard,
}

impl fmt::Debug for Held {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Held")
    }
}

pin_project! {
    /// A request body that holds its principal's place (see [`HeldBodiesLayer`]) until
    /// it is read whole, fails, or is dropped.
    #[derive(Debug)]
    pub struct HeldBody<B> {
        #[pin]
        inner: B,
        guard: Option<Held>,
    }
}

impl<B: Body> Body for HeldBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let out = this.inner.as_mut().poll_frame(cx);
        match &out {
            Poll::Ready(None | Some(Err(_))) => {
                this.guard.take();
            }
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => {
                this.guard.take();
            }
            _ => {}
        }
        out
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use http_body_util::BodyExt;
    use mcp_core::AuthMethod;
    use std::convert::Infallible;
    use tokio::sync::mpsc;
    use tower::ServiceExt;

    /// A body whose frames arrive through a channel: it ends when the sender is dropped.
    struct Upload(mpsc::Receiver<Bytes>);

    impl Body for Upload {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
        }
    }

    fn upload() -> (mpsc::Sender<Bytes>, axum::body::Body) {
        let (tx, rx) = mpsc::channel(1);
        (tx, axum::body::Body::new(Upload(rx)))
    }

    fn request(who: Option<&str>, body: axum::body::Body) -> Request<axum::body::Body> {
        let mut r = Request::post("/mcp").body(body).unwrap();
        if let Some(id) = who {
            r.extensions_mut()
                .insert(Principal::new(id, AuthMethod::ApiKey));
        }
        r
    }

    #[tokio::test]
    async fn bodies_in_progress_are_capped_per_principal_and_released_when_read() {
        let layer = HeldBodiesLayer::new(2).unwrap();
        // The inner service keeps each body unread, as a layer waiting for a slow
        // upload would.
        let (tx, mut rx) = mpsc::unbounded_channel();
        let svc = layer.layer(tower::service_fn(move |req: Request<axum::body::Body>| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(req.into_body());
                Ok::<_, Infallible>(Response::new(axum::body::Body::empty()))
            }
        }));
        let call = |who: Option<&'static str>, body| svc.clone().oneshot(request(who, body));
        let (s1, b1) = upload();
        let (_s2, b2) = upload();
        assert_eq!(call(Some("alice"), b1).await.unwrap().status(), 200);
        assert_eq!(call(Some("alice"), b2).await.unwrap().status(), 200);
        let alice = Principal::new("alice", AuthMethod::ApiKey);
        assert_eq!(layer.held_by(alice.qualified_id()), 2);
        // A third body of alice's is refused; bob's and an anonymous one are not.
        let (_s3, b3) = upload();
        let refused = call(Some("alice"), b3).await.unwrap();
        assert_eq!(refused.status(), 429);
        assert_eq!(refused.headers()[RETRY_AFTER], "1");
        let body = refused.into_body().collect().await.unwrap().to_bytes();
        assert!(String::from_utf8_lossy(&body).contains("\"jsonrpc\""));
        let (_s4, b4) = upload();
        assert_eq!(call(Some("bob"), b4).await.unwrap().status(), 200);
        let (_s5, b5) = upload();
        assert_eq!(call(None, b5).await.unwrap().status(), 200);
        // An empty body is not counted.
        let empty = call(Some("alice"), axum::body::Body::empty())
            .await
            .unwrap();
        assert_eq!(empty.status(), 200);
        assert_eq!(layer.refused(), 1);
        // Alice's first body ends (read whole): her place is free again.
        let first = rx.recv().await.unwrap();
        s1.send(Bytes::from_static(b"{}")).await.unwrap();
        drop(s1);
        let read = first.collect().await.unwrap().to_bytes();
        assert_eq!(&read[..], b"{}");
        assert_eq!(layer.held_by(alice.qualified_id()), 1);
        let (_s6, b6) = upload();
        assert_eq!(call(Some("alice"), b6).await.unwrap().status(), 200);
        // Bodies dropped unread give their places back too.
        drop(rx);
        assert_eq!(layer.held_by(alice.qualified_id()), 0);
        let bob = Principal::new("bob", AuthMethod::ApiKey);
        assert_eq!(layer.held_by(bob.qualified_id()), 0);
    }

    #[test]
    fn the_cap_is_validated() {
        assert!(HeldBodiesLayer::new(0).is_err());
        assert!(HeldBodiesLayer::new(1_000_001).is_err());
        assert_eq!(HeldBodiesLayer::new(16).unwrap().max(), 16);
    }
}
