//! [`InFlightBody`]: a response body that holds in-flight slots until it ends.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::inflight::InFlightGuard;

pin_project! {
    /// A response body wrapper that holds the slots a response counts against (the
    /// layer's in-flight cap and stream caps, a [`ConcurrencyCap`](crate::ConcurrencyCap)
    /// permit) until the body ends: its last frame was read, it failed, or it was dropped
    /// (a client that disconnects, a connection cut by a write timeout). A streamed
    /// response (SSE) therefore holds its slot as long as it streams.
    ///
    /// It wraps any body type; frames, size hint and end of stream are the inner body's.
    pub struct InFlightBody<B> {
        #[pin]
        inner: B,
        held: Vec<InFlightGuard>,
    }
}

impl<B> InFlightBody<B> {
    /// Wraps `inner`, holding nothing.
    pub fn new(inner: B) -> Self {
        Self {
            inner,
            held: Vec::new(),
        }
    }

    /// Wraps `inner`, holding `permit` until the body ends.
    pub fn with_permit(inner: B, permit: crate::ConcurrencyPermit) -> Self {
        Self {
            inner,
            held: permit.into_guards(),
        }
    }

    pub(crate) fn holding(inner: B, held: Vec<InFlightGuard>) -> Self {
        Self { inner, held }
    }

    /// Whether the body still holds a slot (it has not ended).
    pub fn holds_slot(&self) -> bool {
        !self.held.is_empty()
    }

    /// The inner body; the slots are released.
    pub fn into_inner(self) -> B {
        self.inner
    }
}

impl<B: Default> Default for InFlightBody<B> {
    fn default() -> Self {
        Self::new(B::default())
    }
}

impl<B: From<Bytes>> From<Bytes> for InFlightBody<B> {
    fn from(b: Bytes) -> Self {
        Self::new(B::from(b))
    }
}

impl<B> fmt::Debug for InFlightBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InFlightBody")
            .field("slots", &self.held.len())
            .finish_non_exhaustive()
    }
}

impl<B: Body> Body for InFlightBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let out = this.inner.poll_frame(cx);
        if let Poll::Ready(None | Some(Err(_))) = &out {
            // Ended or failed: nothing more will be sent, the slots are free.
            this.held.clear();
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
