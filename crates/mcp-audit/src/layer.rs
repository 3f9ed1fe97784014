//! [`AuditLayer`]: one event per request, served or refused.
//!
//! Place it outermost. For each request it:
//!
//! 1. sets the request id: the incoming `x-request-id` when configured to trust it, the
//!    request comes from a trusted proxy (see [`AuditLayer::trust_request_id`]: never
//!    without a [`ClientAddr`] or trusted proxies) and the id is 1 to 128 visible ASCII
//!    characters, else a fresh UUIDv7, which replaces the
//!    client's header; the [`RequestId`] goes into the request extensions and onto the
//!    response as `x-request-id`;
//! 2. calls the inner service, then reads what the inner layers left in the response
//!    extensions: the [`Denial`] of a refusal (typed reason, JSON-RPC code, safe detail),
//!    the [`Principal`] (mirrored by the authentication layer), the [`McpRequest`]
//!    (mirrored by [`mcp_core::ParseLayer`]) and the [`AuditUpstream`] set by the proxy;
//! 3. wraps the response body to count the bytes actually sent, and hands the event to
//!    the writer when the body ends or is dropped, so a streamed (SSE) response is counted
//!    in full and `duration_ms` covers the whole stream.
//!
//! A request abandoned before its response (the client disconnected, or the connection
//! or a timeout dropped it while the upstream was still working) is recorded too, with
//! the outcome `cancelled`; so is a successful `POST` whose response body the client did
//! not take to its end (it hung up during an SSE stream), with its HTTP status. Its
//! caller and call come from the [`RequestFacts`] this layer puts in the request
//! extensions, where the suite's authentication and parse layers note the [`Principal`]
//! and the [`McpRequest`] as they establish them: a client that starts a tool call and
//! hangs up cannot leave an anonymous record.
//!
//! Under a server that reports on its connections (mcp-tls's accept loop puts a
//! [`ConnectionEvents`] in the request extensions), a response is recorded once the
//! connection has written it, not when its body was handed to the server's buffers: a
//! response the server cut because the client took none of it for the write timeout is
//! recorded with the outcome `error` and the reason `write_timeout` (its HTTP status
//! and the bytes handed to the connection kept), whether it was JSON or an SSE stream,
//! ended in the buffers or still streaming. A request cut before its response is
//! `cancelled` with that reason. Under another server, records are written at the end
//! of the body, as described above.
//!
//! The client IP is the [`ClientAddr`] in the request extensions (set by
//! [`mcp_core::ClientAddrLayer`] outside this layer), else the peer address
//! ([`mcp_core::PeerAddr`] or axum's `ConnectInfo`) resolved through the
//! [`TrustedProxies`] given to [`AuditLayer::trusted_proxies`], else the peer itself.
//! The user is the principal's id, never a client header such as `X-User-ID`.
//!
//! With a [`RefusalAggregator`] ([`AuditLayer::aggregate_refusals`]; the
//! [`crate::Auditor`]'s layer has one unless `aggregateRefusals.enabled` is false), a
//! refusal of a client already refused in the interval is counted instead of recorded
//! (see [`crate::refusals`]).
//!
//! The request path only collects references (`Arc`s, `Bytes`) and moves one boxed event
//! into the queue; masking and serialization happen on the background writer.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Instant, SystemTime};

use bytes::Buf;
use http::header::CONTENT_LENGTH;
use http::{HeaderName, HeaderValue, Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use mcp_core::{
    BodyStallSlot, ClientAddr, CloseReason, ConnectionEvents, Denial, McpRequest, Principal,
    RejectionReason, RequestFacts, TrustedProxies,
};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::capture::RequestText;
use crate::event::{EventData, EventKind, Outcome};
use crate::pipeline::{AuditHandle, Reserved, TrySend};
use crate::refusals::RefusalAggregator;

/// The `x-request-id` header.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The request id, in the request extensions (set by [`AuditLayer`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequestId(HeaderValue);

impl RequestId {
    /// A fresh UUIDv7.
    pub fn generate() -> Self {
        let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
        let s = fast_uuid_v7().hyphenated().encode_lower(&mut buf);
        // A hyphenated UUID is always a valid header value.
        Self(HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("invalid")))
    }

    /// Accepts a client-supplied id: 1 to 128 visible ASCII characters.
    pub fn from_header(v: &HeaderValue) -> Option<Self> {
        let b = v.as_bytes();
        (!b.is_empty() && b.len() <= 128 && b.iter().all(|c| (0x21..=0x7e).contains(c)))
            .then(|| Self(v.clone()))
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        self.0.to_str().unwrap_or("")
    }

    /// The id as a header value.
    pub fn header_value(&self) -> &HeaderValue {
        &self.0
    }
}

/// Whether the request came from a trusted proxy: its [`ClientAddr`] says so, or without
/// one, its peer address is in `proxies`. Neither known: no (warned once).
fn from_trusted_proxy<B>(req: &Request<B>, proxies: Option<&TrustedProxies>) -> bool {
    if let Some(a) = req.extensions().get::<ClientAddr>() {
        return a.peer_is_trusted_proxy();
    }
    match (proxies, mcp_core::client_addr::peer_addr(req)) {
        (Some(p), Some(peer)) => p.is_trusted(peer.ip()),
        _ => {
            static WARNED: std::sync::Once = std::sync::Once::new();
            WARNED.call_once(|| {
                tracing::warn!(
                    "audit: trust_request_id is on but the request carries no ClientAddr (add mcp_core::ClientAddrLayer outside the audit layer) and no peer address with trusted proxies: client request ids are not believed"
                );
            });
            false
        }
    }
}

/// A UUIDv7 (RFC 9562): the Unix time in milliseconds and 74 random bits from the
/// thread-local generator of `rand` (a CSPRNG seeded from the OS), without the system
/// call per id that `Uuid::now_v7` makes.
pub(crate) fn fast_uuid_v7() -> uuid::Uuid {
    use rand::RngCore;
    let ms = SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let mut random = [0u8; 10];
    rand::rng().fill_bytes(&mut random);
    uuid::Builder::from_unix_timestamp_millis(ms, &random).into_uuid()
}

/// The upstream that served a request: the gateway's proxy puts it in the response
/// extensions, the audit layer records it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AuditUpstream(pub Arc<str>);

#[derive(Debug, Clone)]
struct LayerConfig {
    trust_request_id: bool,
    header: HeaderName,
    record_headers: bool,
    proxies: Option<TrustedProxies>,
    refusals: Option<RefusalAggregator>,
    ipv6_prefix: u8,
}

/// The audit layer (configuration only). Build it with [`crate::Auditor::layer`].
#[derive(Debug, Clone)]
pub struct AuditLayer {
    handle: AuditHandle,
    cfg: Arc<LayerConfig>,
}

impl AuditLayer {
    /// A layer sending to `handle`: request ids generated, headers recorded.
    pub fn new(handle: AuditHandle) -> Self {
        Self {
            handle,
            cfg: Arc::new(LayerConfig {
                trust_request_id: false,
                header: X_REQUEST_ID,
                record_headers: true,
                proxies: None,
                refusals: None,
                ipv6_prefix: mcp_core::client_addr::DEFAULT_IPV6_PREFIX,
            }),
        }
    }

    fn cfg_mut(&mut self) -> &mut LayerConfig {
        if Arc::get_mut(&mut self.cfg).is_none() {
            self.cfg = Arc::new((*self.cfg).clone());
        }
        match Arc::get_mut(&mut self.cfg) {
            Some(c) => c,
            None => unreachable!("a freshly made Arc is unique"),
        }
    }

    /// Believe the incoming request id header **from trusted proxies only**: the header is
    /// kept when the request's [`ClientAddr`] (set by [`mcp_core::ClientAddrLayer`] outside
    /// this layer) says the TCP peer is a trusted proxy, or, without a `ClientAddr`, when
    /// the peer address ([`mcp_core::PeerAddr`] or axum's `ConnectInfo`) is in the
    /// [`AuditLayer::trusted_proxies`]. **Without either, the header is never believed**
    /// (a fresh id replaces it, and a warning is logged once): any client could otherwise
    /// give its request another request's id. Default false.
    pub fn trust_request_id(mut self, trust: bool) -> Self {
        self.cfg_mut().trust_request_id = trust;
        self
    }

    /// Uses another header than `x-request-id`.
    pub fn request_id_header(mut self, name: HeaderName) -> Self {
        self.cfg_mut().header = name;
        self
    }

    /// Records request headers (sensitive ones redacted) in events.
    pub fn record_headers(mut self, record: bool) -> Self {
        self.cfg_mut().record_headers = record;
        self
    }

    /// Counts the refusals of clients already refused through `aggregator` instead of
    /// recording each (see [`crate::refusals`]); [`crate::Auditor::layer`] sets the
    /// auditor's.
    pub fn aggregate_refusals(mut self, aggregator: RefusalAggregator) -> Self {
        self.cfg_mut().refusals = Some(aggregator);
        self
    }

    /// IPv6 clients' refusals are counted together per network of this prefix length
    /// (default [`mcp_core::client_addr::DEFAULT_IPV6_PREFIX`], /64), as the server
    /// counts connections and rate limits: the holder of a network does not escape
    /// aggregation by changing address.
    pub fn client_ipv6_prefix(mut self, prefix: u8) -> Self {
        self.cfg_mut().ipv6_prefix = prefix.min(128);
        self
    }

    /// Resolves the client IP through these proxies when no [`ClientAddr`] is in the
    /// request extensions.
    pub fn trusted_proxies(mut self, proxies: TrustedProxies) -> Self {
        self.cfg_mut().proxies = Some(proxies);
        self
    }
}

impl<S> Layer<S> for AuditLayer {
    type Service = Audit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Audit {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service made by [`AuditLayer`].
#[derive(Debug, Clone)]
pub struct Audit<S> {
    inner: S,
    layer: AuditLayer,
}

impl<S> Audit<S> {
    /// Wraps a service.
    pub fn new(inner: S, layer: AuditLayer) -> Self {
        Self { inner, layer }
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Audit<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: HttpBody,
{
    type Response = Response<AuditBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let start = Instant::now();
        let cfg = &self.layer.cfg;
        let rid = (cfg.trust_request_id && from_trusted_proxy(&req, cfg.proxies.as_ref()))
            .then(|| {
                req.headers()
                    .get(&cfg.header)
                    .and_then(RequestId::from_header)
            })
            .flatten()
            .unwrap_or_else(RequestId::generate);
        req.headers_mut().insert(cfg.header.clone(), rid.0.clone());
        req.extensions_mut().insert(rid.clone());
        // Shared with an outer layer that put one there already (the gateway's metrics).
        let facts = RequestFacts::get_or_insert(req.extensions_mut());
        let client_ip = match req.extensions().get::<ClientAddr>() {
            Some(a) => Some(a.ip()),
            None => mcp_core::client_addr::peer_addr(&req).map(|peer| match &cfg.proxies {
                Some(p) => p.resolve(peer, req.headers()).ip(),
                None => peer.ip().to_canonical(),
            }),
        };
        let events = req.extensions().get::<ConnectionEvents>().cloned();
        let bytes_in = req
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.parse().ok());
        let data = Box::new(EventData {
            kind: Some(EventKind::Request),
            at: Some(SystemTime::now()),
            request_id: Some(rid),
            principal: req.extensions().get::<Principal>().cloned(),
            client_ip,
            http_method: Some(req.method().clone()),
            bytes_in,
            request: Some(RequestText::capture(
                Some(req.uri().path()),
                cfg.record_headers.then(|| req.headers()),
            )),
            ..EventData::default()
        });
        ResponseFuture {
            inner: self.inner.call(req),
            state: Some(BodyState {
                event: Some(data),
                facts: Some(facts),
                length: None,
                held: None,
                handle: self.layer.handle.clone(),
                start,
                bytes: 0,
                wait: None,
                done: false,
                events,
                stall: None,
            }),
            header: cfg.header.clone(),
            refusals: cfg.refusals.clone().map(|r| (r, cfg.ipv6_prefix)),
        }
    }
}

pin_project! {
    /// The future of [`Audit`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        state: Option<BodyState>,
        header: HeaderName,
        refusals: Option<(RefusalAggregator, u8)>,
    }
}

fn outcome_of(status: u16, denial: Option<&Denial>) -> Outcome {
    match denial {
        Some(d) => match d.reason {
            RejectionReason::UpstreamError
            | RejectionReason::UpstreamTimeout
            | RejectionReason::Unavailable
            | RejectionReason::Internal => Outcome::Error,
            _ => Outcome::Denied,
        },
        None if status >= 400 => Outcome::Error,
        None => Outcome::Success,
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: HttpBody,
{
    type Output = Result<Response<AuditBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let mut state = this.state.take();
        match result {
            Ok(mut resp) => {
                // The response extensions are what the layers ended with; the facts are
                // only for a request that never gets this far.
                let facts = state.as_mut().and_then(|s| s.facts.take());
                if let Some(ev) = state.as_mut().and_then(|s| s.event.as_mut()) {
                    let ext = resp.extensions();
                    let status = resp.status().as_u16();
                    ev.status = Some(status);
                    ev.denial = ext.get::<Denial>().cloned();
                    ev.outcome = Some(outcome_of(status, ev.denial.as_ref()));
                    if let Some(p) = ext.get::<Principal>() {
                        ev.principal = Some(p.clone());
                    }
                    if let Some(m) = ext.get::<McpRequest>() {
                        if ev.bytes_in.is_none() {
                            ev.bytes_in = Some(m.raw().len() as u64);
                        }
                        ev.mcp = Some(m.clone());
                    }
                    if let Some(f) = &facts {
                        fill_from_facts(ev, f);
                    }
                    if let Some(AuditUpstream(u)) = ext.get::<AuditUpstream>() {
                        ev.upstream = Some(Arc::clone(u));
                    }
                    if let Some(a) = ext.get::<ClientAddr>() {
                        ev.client_ip = Some(a.ip());
                    }
                    if let Some(rid) = &ev.request_id {
                        resp.headers_mut()
                            .insert(this.header.clone(), rid.0.clone());
                    }
                }
                // A refusal of a client already refused is counted, not recorded.
                if let (Some(st), Some((agg, prefix))) = (state.as_mut(), this.refusals.as_ref())
                    && st.event.as_ref().is_some_and(|ev| !agg.admit(ev, *prefix))
                {
                    st.event = None;
                }
                if let Some(st) = state.as_mut() {
                    st.length = resp.body().size_hint().exact();
                    st.stall = resp.extensions().get::<BodyStallSlot>().cloned();
                }
                Poll::Ready(Ok(resp.map(|inner| AuditBody { inner, state })))
            }
            Err(e) => {
                if let Some(ev) = state.as_mut().and_then(|s| s.event.as_mut()) {
                    ev.outcome = Some(Outcome::Error);
                }
                // Dropping the state emits the event.
                drop(state);
                Poll::Ready(Err(e))
            }
        }
    }
}

/// Fills from the noted facts what the response extensions did not say (or, with no
/// response, everything).
fn fill_from_facts(ev: &mut EventData, facts: &RequestFacts) {
    if ev.principal.is_none() {
        ev.principal = facts.principal();
    }
    if ev.mcp.is_none() {
        ev.mcp = facts.request();
    }
}

type WaitFuture = Pin<Box<dyn Future<Output = Option<Reserved>> + Send>>;

struct BodyState {
    event: Option<Box<EventData>>,
    /// Until the response arrives: what the inner layers noted.
    facts: Option<RequestFacts>,
    /// The response body's length, when known in advance: a server may stop polling
    /// such a body once it has sent that many bytes, without seeing its end.
    length: Option<u64>,
    held: Option<Box<EventData>>,
    handle: AuditHandle,
    start: Instant,
    bytes: u64,
    wait: Option<WaitFuture>,
    done: bool,
    /// The connection's events, under a server that reports them.
    events: Option<ConnectionEvents>,
    /// Where the response body records that it stalled (a [`BodyStallSlot`] in the
    /// response extensions: the upstream's body, cut by the proxy's timeouts).
    stall: Option<BodyStallSlot>,
}

/// Records that the server cut the response (or, with no response yet, the request).
fn mark_cut(ev: &mut EventData, reason: CloseReason, responded: bool) {
    if responded {
        ev.outcome = Some(Outcome::Error);
    }
    ev.note = Some((reason.as_str(), reason.detail()));
}

/// Hands `ev` to the writer once the connection has written what it was handed, or
/// closed: cut when it closed for a reason first.
fn send_when_written(events: &ConnectionEvents, handle: &AuditHandle, ev: Box<EventData>) {
    let h = handle.clone();
    let then: mcp_core::OnWritten = Box::new(move |closed| {
        let mut ev = ev;
        if let Some(reason) = closed {
            mark_cut(&mut ev, reason, true);
        }
        h.send_detached(ev);
    });
    if let Err(then) = events.when_written(then) {
        then(events.closed());
    }
}

impl BodyState {
    /// Records a stall of the response body, if it was cut for one: the outcome `error`
    /// with its reason (`body_idle_timeout`, ...), the HTTP status sent kept.
    fn note_stall(&mut self) {
        let Some(stall) = self.stall.as_ref().and_then(BodyStallSlot::get) else {
            return;
        };
        if let Some(ev) = self.event.as_mut() {
            ev.outcome = Some(Outcome::Error);
            ev.note = Some((stall.as_str(), stall.detail()));
        }
    }

    fn take_finished(&mut self) -> Option<Box<EventData>> {
        let mut ev = self.event.take()?;
        if let Some(facts) = self.facts.take() {
            // No response: an inner service error, or the request was abandoned.
            fill_from_facts(&mut ev, &facts);
            ev.outcome.get_or_insert(Outcome::Cancelled);
        }
        ev.duration = Some(self.start.elapsed());
        ev.bytes_out = Some(self.bytes);
        Some(ev)
    }

    /// The body ended: queue the event (once the connection wrote the response, when it
    /// reports that), or start waiting for room.
    fn finish(&mut self) {
        let Some(ev) = self.take_finished() else {
            return;
        };
        if let Some(events) = &self.events {
            send_when_written(events, &self.handle, ev);
            return;
        }
        if let TrySend::Full(ev, n) = self.handle.try_send(ev) {
            let h = self.handle.clone();
            let wait = self.handle.max_wait();
            self.held = Some(ev);
            self.wait = Some(Box::pin(async move { h.reserve(n, wait).await }));
        }
    }

    fn poll_wait(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(fut) = self.wait.as_mut() else {
            return Poll::Ready(());
        };
        let permit = ready!(fut.as_mut().poll(cx));
        self.wait = None;
        match (permit, self.held.take()) {
            (Some(r), Some(ev)) => r.send(ev),
            (None, Some(_)) => self.handle.count_drop("queue_full"),
            _ => {}
        }
        Poll::Ready(())
    }
}

impl Drop for BodyState {
    fn drop(&mut self) {
        // A body dropped before its end (client gone, HEAD, error): the event is still
        // recorded, with the bytes sent so far. A `POST` answered with success whose
        // answer the client did not take whole (it hung up during an SSE stream, before
        // the JSON-RPC response at its end) is `cancelled`, its HTTP status kept. A `GET`
        // stream normally ends this way and keeps its outcome.
        //
        // Dropped because the server cut the connection: the response (or, with none yet,
        // the request) is recorded as cut. Dropped once taken whole on a connection still
        // open: recorded once the connection wrote it.
        self.note_stall();
        let taken_whole = self.length == Some(self.bytes);
        let cut = self.events.as_ref().and_then(ConnectionEvents::closed);
        let responded = self.facts.is_none();
        if let Some(ev) = self.event.as_mut() {
            if let Some(reason) = cut {
                mark_cut(ev, reason, responded);
            } else if responded
                && !taken_whole
                && ev.outcome == Some(Outcome::Success)
                && ev.http_method == Some(http::Method::POST)
            {
                ev.outcome = Some(Outcome::Cancelled);
            }
        }
        let defer = responded && taken_whole && cut.is_none();
        if let Some(ev) = self.take_finished() {
            match &self.events {
                Some(events) if defer => send_when_written(events, &self.handle, ev),
                _ => self.handle.send_detached(ev),
            }
        }
        if let Some(ev) = self.held.take() {
            self.handle.send_detached(ev);
        }
    }
}

pin_project! {
    /// The response body of [`Audit`]: counts bytes sent and emits the event at its end.
    pub struct AuditBody<B> {
        #[pin]
        inner: B,
        state: Option<BodyState>,
    }
}

impl<B> AuditBody<B> {
    /// Wraps a body without auditing (for responses made outside the layer).
    pub fn plain(inner: B) -> Self {
        Self { inner, state: None }
    }
}

impl<B: HttpBody> HttpBody for AuditBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let Some(st) = this.state.as_mut() else {
            return this.inner.poll_frame(cx);
        };
        if st.wait.is_some() {
            ready!(st.poll_wait(cx));
            return Poll::Ready(None);
        }
        if st.done {
            return Poll::Ready(None);
        }
        match ready!(this.inner.poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let Some(d) = frame.data_ref() {
                    st.bytes += d.remaining() as u64;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => {
                if let Some(ev) = st.event.as_mut() {
                    ev.outcome = Some(Outcome::Error);
                }
                st.note_stall();
                st.done = true;
                if let Some(ev) = st.take_finished() {
                    st.handle.send_detached(ev);
                }
                Poll::Ready(Some(Err(e)))
            }
            None => {
                st.done = true;
                st.finish();
                if st.wait.is_some() {
                    ready!(st.poll_wait(cx));
                }
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.state {
            // Not ended until the event is handed over, so that the end is polled.
            Some(st) => st.done && st.wait.is_none(),
            None => self.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_id_validation() {
        assert!(RequestId::from_header(&HeaderValue::from_static("abc-123")).is_some());
        assert!(RequestId::from_header(&HeaderValue::from_static("")).is_none());
        assert!(RequestId::from_header(&HeaderValue::from_static("a b")).is_none());
        let long = "a".repeat(129);
        assert!(RequestId::from_header(&HeaderValue::from_str(&long).unwrap()).is_none());
        let g = RequestId::generate();
        assert_eq!(g.as_str().len(), 36);
        assert_ne!(g, RequestId::generate());
    }

    #[test]
    fn outcomes() {
        assert_eq!(outcome_of(200, None), Outcome::Success);
        assert_eq!(outcome_of(404, None), Outcome::Error);
        let d = mcp_core::Rejection::new(RejectionReason::RateLimited).denial();
        assert_eq!(outcome_of(429, Some(&d)), Outcome::Denied);
        let d = mcp_core::Rejection::new(RejectionReason::UpstreamError).denial();
        assert_eq!(outcome_of(502, Some(&d)), Outcome::Error);
    }
}
