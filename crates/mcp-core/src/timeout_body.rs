//! [`TimeoutBody`]: a body that fails when its data stalls.
//!
//! A response body from a peer that may be hostile (an upstream MCP server) can send its
//! headers and then nothing, stop one byte short of its `Content-Length`, stall in the
//! middle of a chunk, or trickle a byte a second for ever. A timeout on the response
//! headers covers none of these. [`TimeoutBody`] bounds three things, each optional:
//!
//! - the wait for the **first** frame (`first_frame_by`: an instant, so that it can
//!   share a budget with the wait for the headers);
//! - the **idle** gap between two frames (`idle`), counted while the body is polled and
//!   waiting: time its reader spent elsewhere (a slow client) is not a stall;
//! - the **deadline** by which the whole body has ended (`deadline`).
//!
//! When one passes, the body yields a [`BodyTimeout`] error (boxed, [`BoxError`]) saying
//! which ([`BodyStall`]), and records it in the [`BodyStallSlot`] given to
//! [`TimeoutBody::report_to`], which outer layers (an audit trail) read from the response
//! extensions to learn why a response they already started was cut. `tower_http`'s
//! `TimeoutBody` resets one timer per frame (the idle bound only); this one also bounds
//! the whole body, so that a trickle cannot keep it open.
//!
//! ```
//! use std::time::Duration;
//! use http_body_util::{BodyExt, Full};
//! use mcp_core::timeout_body::{BodyStall, BodyTimeout, TimeoutBody};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let body = TimeoutBody::new(Full::new(bytes::Bytes::from_static(b"{}")))
//!     .idle(Duration::from_secs(30))
//!     .deadline_after(Duration::from_secs(300));
//! assert_eq!(body.collect().await.unwrap().to_bytes(), "{}");
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http_body::{Body as HttpBody, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use crate::parse::BoxError;

/// Which bound a [`TimeoutBody`] hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BodyStall {
    /// No first frame by the instant given to [`TimeoutBody::first_frame_by`].
    FirstFrame,
    /// No frame for the idle timeout ([`TimeoutBody::idle`]).
    Idle,
    /// The body had not ended by its deadline ([`TimeoutBody::deadline`]).
    Deadline,
}

impl BodyStall {
    /// The stable snake_case name (`body_idle_timeout`), for logs, metrics and audit rows.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::FirstFrame => "body_first_frame_timeout",
            Self::Idle => "body_idle_timeout",
            Self::Deadline => "body_deadline",
        }
    }

    /// A safe, fixed description for audit rows.
    pub const fn detail(self) -> &'static str {
        match self {
            Self::FirstFrame => "response cut: the upstream sent no body data in time",
            Self::Idle => "response cut: the upstream sent no body data for the idle timeout",
            Self::Deadline => "response cut: the upstream body had not ended by its deadline",
        }
    }

    const fn code(self) -> u8 {
        match self {
            Self::FirstFrame => 1,
            Self::Idle => 2,
            Self::Deadline => 3,
        }
    }

    const fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Self::FirstFrame),
            2 => Some(Self::Idle),
            3 => Some(Self::Deadline),
            _ => None,
        }
    }
}

impl fmt::Display for BodyStall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error a [`TimeoutBody`] yields when a bound passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("body stalled: {0}")]
pub struct BodyTimeout(pub BodyStall);

impl BodyTimeout {
    /// The [`BodyTimeout`] in an error's source chain, if any.
    pub fn find(e: &(dyn std::error::Error + 'static)) -> Option<BodyTimeout> {
        let mut cur = Some(e);
        while let Some(err) = cur {
            if let Some(t) = err.downcast_ref::<BodyTimeout>() {
                return Some(*t);
            }
            cur = err.source();
        }
        None
    }
}

/// Where a [`TimeoutBody`] records that it stalled; cheap to clone (shared). A layer that
/// makes such a body puts a clone in the response extensions; an outer layer (the audit
/// trail) keeps one and reads it when the body fails or is dropped.
#[derive(Debug, Clone, Default)]
pub struct BodyStallSlot(Arc<AtomicU8>);

impl BodyStallSlot {
    /// An empty slot.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records `stall` (the first one recorded is kept).
    pub fn record(&self, stall: BodyStall) {
        let _ = self
            .0
            .compare_exchange(0, stall.code(), Ordering::AcqRel, Ordering::Acquire);
    }

    /// The stall recorded, if any.
    pub fn get(&self) -> Option<BodyStall> {
        BodyStall::from_code(self.0.load(Ordering::Acquire))
    }
}

pin_project! {
    /// A body that fails with [`BodyTimeout`] when its first frame, a gap between frames
    /// or its whole length takes longer than allowed (see the [module](self)). Each bound
    /// is off until set. Needs a tokio runtime with the time driver.
    pub struct TimeoutBody<B> {
        #[pin]
        inner: B,
        first_frame_by: Option<Instant>,
        idle: Option<Duration>,
        deadline: Option<Instant>,
        seen_frame: bool,
        // Since when the body has waited for its inner body with no frame: the idle gap
        // counts only time spent waiting, not time the body was not polled (a client
        // reading slowly pauses its reader).
        waiting_since: Option<Instant>,
        done: bool,
        sleep: Option<Pin<Box<Sleep>>>,
        slot: Option<BodyStallSlot>,
    }
}

impl<B> TimeoutBody<B> {
    /// Wraps `inner` with no bound set.
    pub fn new(inner: B) -> Self {
        Self {
            inner,
            first_frame_by: None,
            idle: None,
            deadline: None,
            seen_frame: false,
            waiting_since: None,
            done: false,
            sleep: None,
            slot: None,
        }
    }

    /// The first frame must arrive by `at` (instead of the idle timeout, for the first).
    pub fn first_frame_by(mut self, at: Instant) -> Self {
        self.first_frame_by = Some(at);
        self
    }

    /// At most `idle` between two frames (and before the first, unless
    /// [`first_frame_by`](Self::first_frame_by) is set).
    pub fn idle(mut self, idle: Duration) -> Self {
        self.idle = Some(idle);
        self
    }

    /// The body must have ended by `at`.
    pub fn deadline(mut self, at: Instant) -> Self {
        self.deadline = Some(at);
        self
    }

    /// The body must have ended `after` from now.
    pub fn deadline_after(self, after: Duration) -> Self {
        let at = Instant::now() + after;
        self.deadline(at)
    }

    /// Records a stall in `slot` too.
    pub fn report_to(mut self, slot: BodyStallSlot) -> Self {
        self.slot = Some(slot);
        self
    }

    /// The wrapped body.
    pub fn into_inner(self) -> B {
        self.inner
    }

    /// The next instant a bound passes, and which bound it is.
    fn next_bound(
        first_frame_by: Option<Instant>,
        idle: Option<Duration>,
        deadline: Option<Instant>,
        seen_frame: bool,
        waiting_since: Instant,
    ) -> Option<(Instant, BodyStall)> {
        let gap = match (seen_frame, first_frame_by) {
            (false, Some(at)) => Some((at, BodyStall::FirstFrame)),
            _ => idle.map(|d| (waiting_since + d, BodyStall::Idle)),
        };
        match (gap, deadline) {
            (Some(g), Some(d)) if d <= g.0 => Some((d, BodyStall::Deadline)),
            (None, Some(d)) => Some((d, BodyStall::Deadline)),
            (g, _) => g,
        }
    }
}

impl<B> HttpBody for TimeoutBody<B>
where
    B: HttpBody,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        if *this.done {
            return Poll::Ready(None);
        }
        if let Poll::Ready(polled) = this.inner.poll_frame(cx) {
            // Any frame restarts the idle clock.
            *this.waiting_since = None;
            *this.seen_frame = true;
            return Poll::Ready(match polled {
                Some(Ok(frame)) => Some(Ok(frame)),
                Some(Err(e)) => {
                    *this.done = true;
                    Some(Err(e.into()))
                }
                None => {
                    *this.done = true;
                    None
                }
            });
        }
        let Some((at, stall)) = Self::next_bound(
            *this.first_frame_by,
            *this.idle,
            *this.deadline,
            *this.seen_frame,
            *this.waiting_since.get_or_insert_with(Instant::now),
        ) else {
            return Poll::Pending;
        };
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
        if sleep.deadline() != at {
            sleep.as_mut().reset(at);
        }
        ready!(sleep.as_mut().poll(cx));
        *this.done = true;
        if let Some(slot) = this.slot.as_ref() {
            slot.record(stall);
        }
        Poll::Ready(Some(Err(Box::new(BodyTimeout(stall)))))
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> fmt::Debug for TimeoutBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimeoutBody")
            .field("first_frame_by", &self.first_frame_by)
            .field("idle", &self.idle)
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::BodyExt as _;
    use http_body_util::StreamBody;
    use std::convert::Infallible;

    /// A body fed frame by frame through a channel (a sender kept open: a stall).
    fn channel_body() -> (
        tokio::sync::mpsc::Sender<Result<Frame<Bytes>, Infallible>>,
        StreamBody<tokio_stream_shim::Receiver>,
    ) {
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        (tx, StreamBody::new(tokio_stream_shim::Receiver(rx)))
    }

    /// A `Stream` over an mpsc receiver (without a tokio-stream dependency).
    mod tokio_stream_shim {
        use super::*;
        pub struct Receiver(pub tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, Infallible>>);
        impl futures_util::Stream for Receiver {
            type Item = Result<Frame<Bytes>, Infallible>;
            fn poll_next(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
            ) -> Poll<Option<Self::Item>> {
                self.0.poll_recv(cx)
            }
        }
    }

    fn data(s: &'static str) -> Result<Frame<Bytes>, Infallible> {
        Ok(Frame::data(Bytes::from_static(s.as_bytes())))
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_ends_in_time_passes_whole() {
        let (tx, rx) = channel_body();
        let slot = BodyStallSlot::new();
        let body = TimeoutBody::new(rx)
            .idle(Duration::from_secs(30))
            .deadline_after(Duration::from_secs(300))
            .report_to(slot.clone());
        tokio::spawn(async move {
            for part in ["{\"a\"", ":", "1}"] {
                tokio::time::sleep(Duration::from_secs(29)).await;
                tx.send(data(part)).await.unwrap();
            }
        });
        assert_eq!(body.collect().await.unwrap().to_bytes(), "{\"a\":1}");
        assert_eq!(slot.get(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn headers_then_nothing_hits_the_first_frame_bound() {
        let (_tx, rx) = channel_body();
        let slot = BodyStallSlot::new();
        let start = Instant::now();
        let body = TimeoutBody::new(rx)
            .first_frame_by(start + Duration::from_secs(5))
            .idle(Duration::from_secs(30))
            .report_to(slot.clone());
        let e = body.collect().await.expect_err("stalled");
        assert_eq!(
            BodyTimeout::find(&*e),
            Some(BodyTimeout(BodyStall::FirstFrame))
        );
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        assert_eq!(slot.get(), Some(BodyStall::FirstFrame));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stall_after_some_data_hits_the_idle_bound() {
        let (tx, rx) = channel_body();
        let start = Instant::now();
        let body = TimeoutBody::new(rx).idle(Duration::from_secs(30));
        tx.send(data("{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":"))
            .await
            .unwrap();
        let mut body = std::pin::pin!(body);
        let first = body.frame().await.unwrap().unwrap();
        assert!(first.is_data());
        // Not polled for 10 s (a slow reader): not counted.
        tokio::time::sleep(Duration::from_secs(10)).await;
        let e = body.frame().await.unwrap().expect_err("stalled");
        assert_eq!(BodyTimeout::find(&*e), Some(BodyTimeout(BodyStall::Idle)));
        assert_eq!(start.elapsed(), Duration::from_secs(40));
        // Ended: nothing more.
        assert!(body.is_end_stream());
        assert!(body.frame().await.is_none());
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickle_hits_the_deadline() {
        let (tx, rx) = channel_body();
        let start = Instant::now();
        let slot = BodyStallSlot::new();
        let body = TimeoutBody::new(rx)
            .idle(Duration::from_secs(30))
            .deadline_after(Duration::from_secs(100))
            .report_to(slot.clone());
        tokio::spawn(async move {
            loop {
                if tx.send(data("x")).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        let e = body.collect().await.expect_err("cut");
        assert_eq!(
            BodyTimeout::find(&*e),
            Some(BodyTimeout(BodyStall::Deadline))
        );
        assert_eq!(start.elapsed(), Duration::from_secs(100));
        assert_eq!(slot.get(), Some(BodyStall::Deadline));
    }

    #[tokio::test(start_paused = true)]
    async fn no_bound_set_waits() {
        let (_tx, rx) = channel_body();
        let body = TimeoutBody::new(rx);
        let r = tokio::time::timeout(Duration::from_secs(3600), body.collect()).await;
        assert!(r.is_err(), "no bound: the body waits");
    }

    #[test]
    fn the_slot_keeps_the_first_stall() {
        let s = BodyStallSlot::new();
        assert_eq!(s.get(), None);
        s.record(BodyStall::Idle);
        s.clone().record(BodyStall::Deadline);
        assert_eq!(s.get(), Some(BodyStall::Idle));
        for k in [BodyStall::FirstFrame, BodyStall::Idle, BodyStall::Deadline] {
            assert_eq!(BodyStall::from_code(k.code()), Some(k));
            assert!(k.detail().starts_with("response cut"));
        }
    }
}
