//! The reverse proxy: Streamable HTTP to one upstream MCP server.
//!
//! - `POST`, `GET` and `DELETE` are forwarded; JSON and SSE responses are streamed back
//!   frame by frame as they arrive (the response body is hyper's `Incoming`, never
//!   collected).
//! - Hop-by-hop headers are removed both ways; the client's credentials (every header of
//!   mcp-auth's credential list: `Authorization`, the API key header, `Cookie`,
//!   `Proxy-Authorization`, ...) and `Origin` are never forwarded (MCP forbids token
//!   passthrough; the gateway checked `Origin` itself); nor are identity, client-address,
//!   routing and override headers (mcp-core's `UntrustedHeaders`): the gateway sets
//!   `X-Forwarded-For` and its principal header itself; per-upstream headers (credentials
//!   for the upstream) are injected.
//! - A client's `Connection` header removes only headers the gateway neither checked nor
//!   sets (never `Content-Type`, `Accept`, `Mcp-*`, `Last-Event-Id`, `X-Request-Id`,
//!   ...: [`PROTECTED_FROM_CONNECTION`]); `Expect` is answered by the gateway's HTTP
//!   server and never forwarded; client headers whose name holds `_` are dropped (a
//!   CGI-minded upstream reads `X_Forwarded_User` as `X-Forwarded-User`).
//! - The upstream URL is the operator's: a client's query is not forwarded, except the
//!   parameters `forwardQuery` names ([`ForwardQuery`]), after the URL's own; a client
//!   parameter that stands for one of the URL's, under any spelling
//!   ([`query_param_name`]), is refused (400, `rule=upstream_query`).
//! - Upstream response headers (and trailers) that speak for the upstream's origin are
//!   removed (mcp-core's `UpstreamResponseHeaders`: CORS, challenges, redirects,
//!   `Set-Cookie`, `Alt-Svc`, HSTS, ...); the gateway's layers outside add their own.
//! - Connect and response-header timeouts. An answer that is not an SSE stream (JSON)
//!   is bounded in its body too ([`mcp_core::TimeoutBody`]): its first data within the
//!   response timeout of the request (or the body idle timeout after the headers),
//!   pauses of at most the body idle timeout, and its end within the response deadline
//!   of the request. Its first [`PREFETCH_BYTES`] are read before the head is passed
//!   on, so a stall there is a JSON-RPC 504 (a body broken there, a 502); past it the
//!   stream is ended and the response's [`mcp_core::BodyStallSlot`] tells the audit
//!   trail why. An SSE stream answering a `POST` pauses at most the SSE idle timeout;
//!   `GET` streams live as long as the upstream keeps them open. Stalls are counted in
//!   `mcp_gateway_upstream_stalls_total{upstream, stall}`.
//! - Upstream failures are a 502 (or 504 on timeout) with a JSON-RPC error body and a
//!   typed [`mcp_core::Denial`] for the audit and metrics layers; so is a status outside
//!   200-599 (`mcp_gateway_upstream_bad_status_total{upstream}`), never passed on.
//! - A client request body that fails while it is forwarded (with every layer off the
//!   body streams through) is the client's error: 400 when it ends before its declared
//!   length, 408 when it has not arrived within the request body timeout; not a 502.
//! - Sessions the session binding evicts or expires are ended at their upstream with a
//!   `DELETE` ([`spawn_session_ender`]), outside the principals' upstream shares and
//!   retried ([`Proxy::end_session`]).
//! - A request that can create a session (a `POST` without `Mcp-Session-Id`) is sent in
//!   a task of its own that runs until the upstream's response headers arrive (within
//!   the response timeout), whether or not the client is still there: when the client
//!   has gone and the answer issues a session, that session is ended at the upstream at
//!   once (`reason="client_gone"`), so a client that drops its connection after sending
//!   `initialize` leaves no session the gateway never bound.
//! - A request in a session whose client goes away before its response ended (the body
//!   dropped early) is cancelled at the upstream: `notifications/cancelled` with its id
//!   and reason `client disconnected`, in the same session, best effort
//!   ([`CANCEL_CONCURRENCY`] at once).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Request, Response, Uri};
use http_body_util::BodyExt as _;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use mcp_audit::AuditUpstream;
use mcp_core::headers::{
    UntrustedHeaders, UpstreamResponseHeaders, header_name_in, principal_value, xfcc_value,
};
use mcp_core::{ClientAddr, McpRequest, Principal, Rejection, RejectionReason, TlsInfo};

/// Headers that are never forwarded upstream, whatever the configuration.
const ALWAYS_STRIPPED: &[&str] = &[
    // hop-by-hop (RFC 9110 7.6.1); `Expect` is answered by the gateway's own server
    "connection",
    "expect",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    // set by the client for the upstream's authority / body
    "host",
    "content-length",
    // client credentials: never passed through (MCP security best practices)
    "authorization",
    "proxy-authorization",
    "cookie",
    // checked by the gateway; the upstream sees a server-to-server request
    "origin",
    // replaced by the gateway's own (the other forwarding headers are untrusted headers)
    "x-forwarded-for",
];

/// Request headers a client's `Connection` header cannot remove (RFC 9110 §7.6.1 lets
/// it name any header): those the gateway checked, relies on or sets. Headers starting
/// with `mcp-` are protected too.
pub const PROTECTED_FROM_CONNECTION: &[&str] = &[
    "content-type",
    "content-length",
    "accept",
    "last-event-id",
    "x-request-id",
    "x-forwarded-for",
    "host",
];

/// TLS settings for an `https` upstream.
#[derive(Debug, Clone, Default)]
pub struct UpstreamTls {
    /// PEM CA bundle to trust instead of the web PKI roots.
    pub ca_file: Option<std::path::PathBuf>,
    /// PEM client certificate chain (mTLS to the upstream).
    pub cert_file: Option<std::path::PathBuf>,
    /// PEM private key of the client certificate.
    pub key_file: Option<std::path::PathBuf>,
}

/// One upstream as the proxy needs it.
#[derive(Clone)]
pub struct UpstreamSpec {
    /// Name (metrics label).
    pub name: String,
    /// The upstream MCP endpoint.
    pub url: Uri,
    /// Headers injected into every forwarded request (credentials for the upstream).
    pub inject: Vec<(HeaderName, HeaderValue)>,
    /// Request headers carrying credentials, never forwarded (the API key header, ...).
    pub strip: Vec<HeaderName>,
    /// Client headers never forwarded (identity, address, routing, overrides).
    pub untrusted: UntrustedHeaders,
    /// Upstream response headers (and trailers) never passed to the client.
    pub response_headers: Arc<UpstreamResponseHeaders>,
    /// The client query parameters forwarded.
    pub forward_query: ForwardQuery,
    /// The header set to the verified principal's id, if any.
    pub principal_header: Option<HeaderName>,
    /// The header set to the verified client certificate (XFCC format), if any.
    pub client_cert_header: Option<HeaderName>,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Time allowed until the upstream's response headers arrive (and, for an answer
    /// that is not an SSE stream, its first body data: at the latest this long after the
    /// request was sent, or `body_idle_timeout` after the headers).
    pub response_timeout: Duration,
    /// Longest pause in the body of an answer that is not an SSE stream (JSON).
    pub body_idle_timeout: Duration,
    /// Time allowed for an answer that is not an SSE stream to end, counted from the
    /// request being sent.
    pub response_deadline: Duration,
    /// Longest pause in an SSE stream answering a `POST`; none: no bound (`GET` streams
    /// are never bounded: a server with nothing to say says nothing).
    pub sse_idle_timeout: Option<Duration>,
    /// Time allowed for the client's request body (when it is streamed through, as with
    /// every layer off) before the request is answered 408.
    pub request_body_timeout: Duration,
    /// TLS settings.
    pub tls: UpstreamTls,
    /// Admission towards the upstream (`upstreams[].maxConnections` and
    /// `maxConnectionsPerPrincipal`, see `caps.rs`); none: every request is sent.
    pub admit: Option<Admit>,
    /// Most requests open towards the upstream at once (sizes the idle pool).
    pub max_connections: Option<u32>,
}

/// Admission of a request towards the upstream: a permit held until the response body
/// ends (streams included), or the refusal to answer instead.
pub type Admit = Arc<
    dyn Fn(
            &Request<Body>,
            Option<mcp_core::JsonRpcId>,
        ) -> Result<mcp_ratelimit::ConcurrencyPermit, Box<Response<Body>>>
        + Send
        + Sync,
>;

impl std::fmt::Debug for UpstreamSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamSpec")
            .field("name", &self.name)
            .field("url", &display_url(&self.url))
            .field(
                "inject",
                &self.inject.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .field("forward_query", &self.forward_query)
            .field("connect_timeout", &self.connect_timeout)
            .field("response_timeout", &self.response_timeout)
            .field("body_idle_timeout", &self.body_idle_timeout)
            .field("response_deadline", &self.response_deadline)
            .field("sse_idle_timeout", &self.sse_idle_timeout)
            .field("request_body_timeout", &self.request_body_timeout)
            .field("max_connections", &self.max_connections)
            .finish()
    }
}

/// The proxy to one upstream (cheap to clone: the pooled client is shared).
#[derive(Clone)]
pub struct Proxy {
    inner: Arc<ProxyInner>,
}

struct ProxyInner {
    audit_name: Arc<str>,
    /// The [`query_param_name`]s of the URL's own parameters.
    operator_params: Vec<String>,
    spec: UpstreamSpec,
    client: Client<HttpsConnector<HttpConnector>, Body>,
    /// Bounds the `notifications/cancelled` in flight ([`CANCEL_CONCURRENCY`]).
    cancels: Arc<tokio::sync::Semaphore>,
}

/// Why building a proxy failed.
#[derive(Debug, thiserror::Error)]
pub enum ProxyBuildError {
    /// A file could not be read or parsed.
    #[error("upstream `{upstream}`: {what}")]
    Tls {
        /// The upstream's name.
        upstream: String,
        /// What went wrong.
        what: String,
    },
}

fn tls_config(spec: &UpstreamSpec) -> Result<rustls::ClientConfig, ProxyBuildError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let err = |what: String| ProxyBuildError::Tls {
        upstream: spec.name.clone(),
        what,
    };
    let mut roots = rustls::RootCertStore::empty();
    match &spec.tls.ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| err(format!("tls.caFile {}: {e}", path.display())))?;
            for c in certs {
                let c = c.map_err(|e| err(format!("tls.caFile {}: {e}", path.display())))?;
                roots
                    .add(c)
                    .map_err(|e| err(format!("tls.caFile {}: {e}", path.display())))?;
            }
        }
        None => roots.extend(webpki_roots_iter()),
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| err(e.to_string()))?
        .with_root_certificates(roots);
    let config = match (&spec.tls.cert_file, &spec.tls.key_file) {
        (Some(cert), Some(key)) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                .map_err(|e| err(format!("tls.certFile {}: {e}", cert.display())))?
                .collect::<Result<_, _>>()
                .map_err(|e| err(format!("tls.certFile {}: {e}", cert.display())))?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|_| {
                err(format!(
                    "tls.keyFile {}: no readable private key",
                    key.display()
                ))
            })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| err(format!("client certificate: {e}")))?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => {
            return Err(err(
                "tls.certFile and tls.keyFile must be given together".into()
            ));
        }
    };
    Ok(config)
}

fn webpki_roots_iter() -> impl Iterator<Item = rustls_pki_types::TrustAnchor<'static>> {
    webpki_roots::TLS_SERVER_ROOTS.iter().cloned()
}

impl Proxy {
    /// Builds the proxy and its connection pool.
    pub fn new(spec: UpstreamSpec) -> Result<Self, ProxyBuildError> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(spec.connect_timeout));
        http.set_nodelay(true);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls_config(&spec)?)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            // Without a timer the idle timeout is only checked when a connection is
            // taken from the pool; with one, idle connections are closed when it passes.
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            // Never more idle connections than requests may be open at once.
            .pool_max_idle_per_host(spec.max_connections.map_or(256, |n| n.min(256) as usize))
            .build(https);
        Ok(Self {
            inner: Arc::new(ProxyInner {
                audit_name: spec.name.as_str().into(),
                operator_params: operator_params(&spec.url),
                spec,
                client,
                cancels: Arc::new(tokio::sync::Semaphore::new(CANCEL_CONCURRENCY)),
            }),
        })
    }

    /// The upstream's name.
    pub fn name(&self) -> &str {
        &self.inner.spec.name
    }

    /// Forwards a request and streams the response back; the response carries the
    /// upstream's name ([`AuditUpstream`]) in its extensions.
    pub async fn forward(&self, req: Request<Body>) -> Response<Body> {
        let mut resp = self.forward_inner(req, true).await;
        resp.extensions_mut()
            .insert(AuditUpstream(self.inner.audit_name.clone()));
        resp
    }

    /// `admit`: whether the request takes an upstream permit (the principals' shares);
    /// the gateway's own session-ending `DELETE`s do not (they have their own bound).
    async fn forward_inner(&self, req: Request<Body>, admit: bool) -> Response<Body> {
        let spec = &self.inner.spec;
        let id = req
            .extensions()
            .get::<McpRequest>()
            .and_then(|m| m.id().cloned());
        let client_ip = req.extensions().get::<ClientAddr>().map(|c| c.ip());
        let principal = spec.principal_header.as_ref().and_then(|name| {
            let p = req.extensions().get::<Principal>()?;
            p.is_authenticated()
                .then(|| (name.clone(), principal_value(p.qualified_id())))
        });
        let client_cert = spec.client_cert_header.as_ref().and_then(|name| {
            let id = req.extensions().get::<TlsInfo>()?.client.as_ref()?;
            let v = HeaderValue::from_str(&xfcc_value(id)).ok()?;
            Some((name.clone(), v))
        });
        let Ok(uri) = upstream_uri(
            &spec.url,
            req.uri().query(),
            &spec.forward_query,
            &self.inner.operator_params,
        ) else {
            return Rejection::new(RejectionReason::InvalidRequest)
                .with_id(id)
                .with_message(
                    "Invalid Request: a query parameter stands for one the gateway sets for the upstream",
                )
                .with_detail("rule=upstream_query")
                .into_response();
        };
        // Held until the response body ends (streams included): released on end, error,
        // client disconnect, or here when the upstream fails.
        let permit = match spec.admit.as_ref().filter(|_| admit) {
            Some(admit) => match admit(&req, id.clone()) {
                Ok(p) => Some(p),
                Err(refused) => return *refused,
            },
            None => None,
        };
        let cancel = self.cancel_info(&req);
        let (parts, body) = req.into_parts();
        let mut out = Request::new(body);
        *out.method_mut() = parts.method.clone();
        *out.uri_mut() = uri;
        let headers = out.headers_mut();
        copy_request_headers(&parts.headers, headers, &spec.strip, &spec.untrusted);
        if let Some((name, Some(value))) = principal {
            headers.insert(name, value);
        }
        if let Some((name, value)) = client_cert {
            headers.insert(name, value);
        }
        if let Some(ip) = client_ip
            && let Ok(v) = HeaderValue::from_str(&ip.to_string())
        {
            headers.insert(HeaderName::from_static("x-forwarded-for"), v);
        }
        for (k, v) in &spec.inject {
            headers.insert(k.clone(), v.clone());
        }
        // A request that can create a session runs until the upstream's answer arrives
        // even when the client goes away (its future dropped), so that a session it
        // issues is never left unbound: see [`Proxy::client_gone`].
        let creates_session = out.method() == http::Method::POST
            && !out
                .headers()
                .contains_key(mcp_core::request::header::MCP_SESSION_ID);
        let client_body = ClientBodyState::default();
        let method = out.method().clone();
        let out = out.map(|b| {
            Body::new(ClientBody {
                inner: mcp_core::TimeoutBody::new(b).deadline_after(spec.request_body_timeout),
                state: client_body.clone(),
            })
        });
        let exchange = self.clone().exchange(out, method);
        let (result, permit) = if creates_session {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let proxy = self.clone();
            tokio::spawn(async move {
                let result = exchange.await;
                if let Err((result, permit)) = tx.send((result, permit)) {
                    proxy
                        .client_gone_boxed(result.session_id(), permit, "client_gone")
                        .await;
                }
            });
            match rx.await {
                Ok(r) => r,
                Err(_) => {
                    tracing::error!(upstream = %spec.name, "upstream exchange task ended without an answer");
                    return Rejection::new(RejectionReason::UpstreamError)
                        .with_id(id)
                        .with_detail(spec.name.clone())
                        .into_response();
                }
            }
        } else {
            (exchange.await, permit)
        };
        match result {
            Exchange::Answer(resp) => {
                let (parts, body) = resp.into_parts();
                let body = match permit {
                    Some(p) => Body::new(mcp_ratelimit::InFlightBody::with_permit(body, p)),
                    None => body,
                };
                let body = match cancel {
                    Some(c) => Body::new(CancelOnAbandon {
                        inner: body,
                        armed: Some(c),
                    }),
                    None => body,
                };
                Response::from_parts(parts, body)
            }
            Exchange::Failed {
                reason,
                detail,
                session,
            } => {
                // An answer that issued a session and then failed: no one will bind it.
                if creates_session && session.is_some() {
                    let proxy = self.clone();
                    tokio::spawn(async move {
                        proxy
                            .client_gone_boxed(session, permit, "upstream_failed")
                            .await;
                    });
                } else {
                    drop(permit);
                }
                Rejection::new(reason)
                    .with_id(id)
                    .with_detail(detail)
                    .into_response()
            }
            Exchange::Error(e) => {
                drop(permit);
                // The client's own body failed: the client's fault, not the upstream's.
                if let Some(cut) = client_body.failure() {
                    tracing::debug!(upstream = %spec.name, error = %error_chain(&e), "the client's request body failed while forwarded");
                    return cut.rejection(id);
                }
                let timed_out = is_connect_timeout(&e);
                tracing::warn!(upstream = %spec.name, error = %error_chain(&e), "upstream request failed");
                let reason = if timed_out {
                    RejectionReason::UpstreamTimeout
                } else {
                    RejectionReason::UpstreamError
                };
                Rejection::new(reason)
                    .with_id(id)
                    .with_detail(spec.name.clone())
                    .into_response()
            }
            Exchange::TimedOut => {
                drop(permit);
                if let Some(cut) = client_body.failure() {
                    return cut.rejection(id);
                }
                tracing::warn!(upstream = %spec.name, "upstream response timed out");
                Rejection::new(RejectionReason::UpstreamTimeout)
                    .with_id(id)
                    .with_detail(spec.name.clone())
                    .into_response()
            }
        }
    }

    /// Sends `out` and receives the answer: its headers within the response timeout, a
    /// status the gateway can pass on, and for an answer that is not an SSE stream, its
    /// first [`PREFETCH_BYTES`] (or all of it, when shorter) before the head is passed
    /// on, so that a stall there is still a clean 504. What follows is streamed, bounded
    /// by the idle timeout and the deadline (non-SSE) or the SSE idle timeout (`POST`);
    /// a stall there ends the stream (the head is sent), recorded in the response's
    /// [`mcp_core::BodyStallSlot`] for the audit trail.
    async fn exchange(self, out: Request<Body>, method: http::Method) -> Exchange {
        let spec = &self.inner.spec;
        let sent_at = tokio::time::Instant::now();
        let resp = match tokio::time::timeout(spec.response_timeout, self.inner.client.request(out))
            .await
        {
            Ok(Ok(resp)) => resp,
            Ok(Err(e)) => return Exchange::Error(e),
            Err(_) => return Exchange::TimedOut,
        };
        let session = resp
            .headers()
            .get(mcp_core::request::header::MCP_SESSION_ID)
            .cloned();
        let status = resp.status().as_u16();
        if !(200..=599).contains(&status) {
            tracing::warn!(upstream = %spec.name, status, "upstream answered a status the gateway does not pass on");
            metrics::counter!("mcp_gateway_upstream_bad_status_total", "upstream" => spec.name.clone())
                .increment(1);
            return Exchange::Failed {
                reason: RejectionReason::UpstreamError,
                detail: format!("{}: status {status}", spec.name),
                session,
            };
        }
        let (mut parts, incoming) = resp.into_parts();
        spec.response_headers.remove_from(&mut parts.headers);
        let filter = spec.response_headers.clone();
        let body = incoming.map_frame(move |frame| match frame.into_trailers() {
            Ok(mut trailers) => {
                filter.remove_from(&mut trailers);
                http_body::Frame::trailers(trailers)
            }
            Err(frame) => frame,
        });
        let sse = is_event_stream(&parts.headers);
        let slot = mcp_core::BodyStallSlot::new();
        let timed = mcp_core::TimeoutBody::new(body).report_to(slot.clone());
        let timed = if sse {
            match spec
                .sse_idle_timeout
                .filter(|_| method == http::Method::POST)
            {
                Some(idle) => timed.idle(idle),
                None => timed,
            }
        } else {
            let now = tokio::time::Instant::now();
            timed
                .first_frame_by((sent_at + spec.response_timeout).max(now + spec.body_idle_timeout))
                .idle(spec.body_idle_timeout)
                .deadline(sent_at + spec.response_deadline)
        };
        let name = spec.name.clone();
        let mut body = Body::new(timed.map_err(move |e| {
            if let Some(t) = mcp_core::BodyTimeout::find(&*e) {
                tracing::warn!(upstream = %name, stall = %t.0, "upstream response body stalled");
                metrics::counter!("mcp_gateway_upstream_stalls_total", "upstream" => name.clone(), "stall" => t.0.as_str())
                    .increment(1);
            }
            e
        }));
        parts.extensions.insert(slot.clone());
        if sse {
            return Exchange::Answer(Response::from_parts(parts, body));
        }
        // Whether the upstream declared the length (`Content-Length`): only then is the
        // length of what was read ahead exact (a chunked answer may end in trailers).
        let declared = http_body::Body::size_hint(&body).exact().is_some();
        let mut frames = std::collections::VecDeque::new();
        let mut held = 0usize;
        let ended = loop {
            if held >= PREFETCH_BYTES {
                break false;
            }
            match body.frame().await {
                None => break true,
                Some(Ok(f)) => {
                    held += f.data_ref().map_or(0, |d| d.len());
                    frames.push_back(f);
                }
                Some(Err(e)) => {
                    let (reason, what) = match slot.get() {
                        Some(stall) => (RejectionReason::UpstreamTimeout, stall.as_str()),
                        None => {
                            tracing::warn!(upstream = %spec.name, error = %error_chain(&e), "upstream response body failed");
                            (RejectionReason::UpstreamError, "body_failed")
                        }
                    };
                    return Exchange::Failed {
                        reason,
                        detail: format!("{}: {what}", spec.name),
                        session,
                    };
                }
            }
        };
        let body = Body::new(Replay {
            frames,
            rest: (!ended).then_some(body),
            declared,
        });
        Exchange::Answer(Response::from_parts(parts, body))
    }

    /// Ends a session at the upstream: a `DELETE` with its `Mcp-Session-Id` (and the
    /// upstream's injected headers), each try answered within [`SESSION_END_TIMEOUT`],
    /// tried up to [`SESSION_END_TRIES`] times with a growing pause between tries. A 2xx,
    /// or a 404 / 400 (the upstream no longer holds it), is success. It takes no upstream
    /// permit: the principals' shares (`maxConnections`, `maxConnectionsPerPrincipal`)
    /// never refuse it; its callers bound how many run at once.
    pub async fn end_session(&self, id: &HeaderValue) -> bool {
        for attempt in 0..SESSION_END_TRIES {
            if attempt > 0 {
                tokio::time::sleep(SESSION_END_BACKOFF * (1 << (attempt - 1))).await;
            }
            if self.end_session_once(id).await {
                return true;
            }
        }
        false
    }

    async fn end_session_once(&self, id: &HeaderValue) -> bool {
        let mut req = Request::new(Body::empty());
        *req.method_mut() = http::Method::DELETE;
        let mut id = id.clone();
        id.set_sensitive(true);
        req.headers_mut()
            .insert(HeaderName::from_static("mcp-session-id"), id);
        let ended = async {
            let resp = self.forward_inner(req, false).await;
            let status = resp.status();
            // Read (and bound) the answer so that the connection goes back to the pool.
            let _ = http_body_util::Limited::new(resp.into_body(), 64 * 1024)
                .collect()
                .await;
            status.is_success()
                || status == http::StatusCode::NOT_FOUND
                || status == http::StatusCode::BAD_REQUEST
        };
        tokio::time::timeout(SESSION_END_TIMEOUT, ended)
            .await
            .unwrap_or(false)
    }

    /// The upstream answered a request whose client has gone (`sid`: the answer's
    /// `Mcp-Session-Id`, if any): when the answer issues a
    /// session (`Mcp-Session-Id`), no one will bind or end it, so it is ended at once,
    /// while the request's upstream permit (its principal's share) is still held: a
    /// principal that keeps dropping `initialize`s waits on its own share. Counted in
    /// `mcp_gateway_sessions_ended_total{reason="client_gone"}` (`reason="upstream_failed"`
    /// for an answer that issued a session and then failed: stalled, cut short).
    /// [`Proxy::client_gone`], boxed: ending a session forwards a request, which may spawn
    /// this (the future's type would otherwise contain itself).
    fn client_gone_boxed(
        self,
        sid: Option<HeaderValue>,
        permit: Option<mcp_ratelimit::ConcurrencyPermit>,
        reason: &'static str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        Box::pin(async move { self.client_gone(sid, permit, reason).await })
    }

    async fn client_gone(
        &self,
        sid: Option<HeaderValue>,
        permit: Option<mcp_ratelimit::ConcurrencyPermit>,
        reason: &'static str,
    ) {
        let Some(sid) = sid else {
            return;
        };
        let ok = self.end_session(&sid).await;
        drop(permit);
        let outcome = if ok { "ok" } else { "failed" };
        tracing::debug!(
            upstream = %self.name(),
            outcome,
            reason,
            "a session no client will use (the client went away, or its answer failed): ended at the upstream"
        );
        metrics::counter!("mcp_gateway_sessions_ended_total", "reason" => reason, "outcome" => outcome)
            .increment(1);
    }

    /// What [`CancelOnAbandon`] needs to cancel `req` at the upstream: a single JSON-RPC
    /// request (not `initialize`) sent in a session.
    fn cancel_info(&self, req: &Request<Body>) -> Option<Abandoned> {
        use mcp_core::request::header::{MCP_PROTOCOL_VERSION, MCP_SESSION_ID};
        if req.method() != http::Method::POST {
            return None;
        }
        let m = req.extensions().get::<McpRequest>()?;
        if m.is_batch()
            || m.kind() != mcp_core::request::MessageKind::Request
            || m.method() == Some("initialize")
        {
            return None;
        }
        Some(Abandoned {
            proxy: self.clone(),
            request_id: m.id()?.clone(),
            session_id: req.headers().get(MCP_SESSION_ID)?.clone(),
            protocol_version: req.headers().get(MCP_PROTOCOL_VERSION).cloned(),
            principal: req.extensions().get::<Principal>().cloned(),
            client_addr: req.extensions().get::<ClientAddr>().copied(),
        })
    }

    /// Sends the upstream `notifications/cancelled` for a request whose client went away
    /// before its response ended (best effort: one try within [`SESSION_END_TIMEOUT`],
    /// no upstream permit, at most [`CANCEL_CONCURRENCY`] at once per upstream; beyond,
    /// dropped). Counted in `mcp_gateway_upstream_cancelled_total{upstream, outcome}`
    /// (`outcome`: `sent`, `failed`, `dropped`).
    fn send_cancelled(a: Abandoned) {
        let count = |name: &str, outcome: &'static str| {
            metrics::counter!("mcp_gateway_upstream_cancelled_total", "upstream" => name.to_owned(), "outcome" => outcome)
                .increment(1);
        };
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let Ok(permit) = a.proxy.inner.cancels.clone().try_acquire_owned() else {
            count(a.proxy.name(), "dropped");
            return;
        };
        handle.spawn(async move {
            use mcp_core::request::header::{MCP_PROTOCOL_VERSION, MCP_SESSION_ID};
            let body = serde_json::json!({
                "jsonrpc": "2.0",
                "method": "notifications/cancelled",
                "params": {"requestId": a.request_id, "reason": "client disconnected"},
            })
            .to_string();
            let mut req = Request::new(Body::from(body));
            *req.method_mut() = http::Method::POST;
            let h = req.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            h.insert(
                header::ACCEPT,
                HeaderValue::from_static("application/json, text/event-stream"),
            );
            let mut sid = a.session_id;
            sid.set_sensitive(true);
            h.insert(MCP_SESSION_ID, sid);
            if let Some(v) = a.protocol_version {
                h.insert(MCP_PROTOCOL_VERSION, v);
            }
            if let Some(p) = a.principal {
                req.extensions_mut().insert(p);
            }
            if let Some(c) = a.client_addr {
                req.extensions_mut().insert(c);
            }
            let proxy = a.proxy;
            let sent = async {
                let resp = proxy.forward_inner_boxed(req).await;
                let status = resp.status();
                let _ = http_body_util::Limited::new(resp.into_body(), 64 * 1024)
                    .collect()
                    .await;
                status.is_success()
            };
            let ok = tokio::time::timeout(SESSION_END_TIMEOUT, sent)
                .await
                .unwrap_or(false);
            count(proxy.name(), if ok { "sent" } else { "failed" });
            drop(permit);
        });
    }

    /// [`Proxy::forward_inner`] without an upstream permit, boxed (it is called from a
    /// body's drop, inside the future type of `forward_inner` itself).
    fn forward_inner_boxed(
        &self,
        req: Request<Body>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Response<Body>> + Send + '_>> {
        Box::pin(self.forward_inner(req, false))
    }

    /// Whether the upstream accepts TCP connections (for `/readyz`).
    pub async fn reachable(&self) -> bool {
        let url = &self.inner.spec.url;
        let Some(host) = url.host() else {
            return false;
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = url
            .port_u16()
            .unwrap_or(if url.scheme_str() == Some("https") {
                443
            } else {
                80
            });
        matches!(
            tokio::time::timeout(
                self.inner.spec.connect_timeout,
                tokio::net::TcpStream::connect((host, port))
            )
            .await,
            Ok(Ok(_))
        )
    }
}

/// How much of an answer that is not an SSE stream is read before its head is passed on
/// (all of it when shorter): a stall within it is answered 504 rather than cut.
pub const PREFETCH_BYTES: usize = 64 * 1024;

/// What [`Proxy::exchange`] got from the upstream.
enum Exchange {
    /// The answer to pass on (headers filtered, body bounded).
    Answer(Response<Body>),
    /// The upstream answered and then failed (a status outside 200-599, a body that
    /// stalled or broke before its head was passed on): `session`, the session its
    /// headers issued, if any.
    Failed {
        reason: RejectionReason,
        detail: String,
        session: Option<HeaderValue>,
    },
    /// The request failed (connect, send, the upstream's head).
    Error(hyper_util::client::legacy::Error),
    /// No response headers within the response timeout.
    TimedOut,
}

impl Exchange {
    /// The `Mcp-Session-Id` the upstream issued, if it answered.
    fn session_id(&self) -> Option<HeaderValue> {
        match self {
            Self::Answer(r) => r
                .headers()
                .get(mcp_core::request::header::MCP_SESSION_ID)
                .cloned(),
            Self::Failed { session, .. } => session.clone(),
            Self::Error(_) | Self::TimedOut => None,
        }
    }
}

/// Whether a response is an SSE stream (`Content-Type: text/event-stream`).
fn is_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("text/event-stream"))
}

/// The frames read ahead ([`PREFETCH_BYTES`]), then the rest of the body, if any.
struct Replay {
    frames: std::collections::VecDeque<http_body::Frame<bytes::Bytes>>,
    rest: Option<Body>,
    /// The upstream declared the body's length: its size is passed on as exact.
    declared: bool,
}

impl http_body::Body for Replay {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        if let Some(f) = self.frames.pop_front() {
            return std::task::Poll::Ready(Some(Ok(f)));
        }
        match self.rest.as_mut() {
            Some(rest) => std::pin::Pin::new(rest).poll_frame(cx),
            None => std::task::Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_empty() && self.rest.as_ref().is_none_or(|r| r.is_end_stream())
    }

    fn size_hint(&self) -> http_body::SizeHint {
        let held: u64 = self
            .frames
            .iter()
            .filter_map(|f| f.data_ref().map(|d| d.len() as u64))
            .sum();
        match &self.rest {
            None if self.declared => http_body::SizeHint::with_exact(held),
            None => {
                let mut h = http_body::SizeHint::new();
                h.set_lower(held);
                h
            }
            Some(rest) => {
                let r = rest.size_hint();
                let mut h = http_body::SizeHint::new();
                h.set_lower(r.lower().saturating_add(held));
                if let Some(u) = r.upper() {
                    h.set_upper(u.saturating_add(held));
                }
                h
            }
        }
    }
}

/// How the client's request body failed while it was forwarded, if it did.
#[derive(Clone, Default)]
struct ClientBodyState(Arc<std::sync::atomic::AtomicU8>);

/// A failure of the client's request body ([`ClientBodyState`]).
#[derive(Clone, Copy)]
enum ClientBodyFailure {
    /// It ended before its declared length (the connection closed, or was reset).
    CutShort,
    /// It did not arrive within the request body timeout.
    TimedOut,
}

impl ClientBodyState {
    fn record(&self, f: ClientBodyFailure) {
        let code = match f {
            ClientBodyFailure::CutShort => 1,
            ClientBodyFailure::TimedOut => 2,
        };
        let _ = self.0.compare_exchange(
            0,
            code,
            std::sync::atomic::Ordering::AcqRel,
            std::sync::atomic::Ordering::Acquire,
        );
    }

    fn failure(&self) -> Option<ClientBodyFailure> {
        match self.0.load(std::sync::atomic::Ordering::Acquire) {
            1 => Some(ClientBodyFailure::CutShort),
            2 => Some(ClientBodyFailure::TimedOut),
            _ => None,
        }
    }
}

impl ClientBodyFailure {
    /// The client's error: 400 for a body cut short, 408 for one that did not arrive in
    /// time (as `mcp_core::ParseLayer` answers a body it reads itself).
    fn rejection(self, id: Option<mcp_core::JsonRpcId>) -> Response<Body> {
        let r = match self {
            Self::CutShort => Rejection::new(RejectionReason::InvalidRequest)
                .with_message("Invalid Request: the request body ended before its declared length")
                .with_detail("rule=body_incomplete"),
            Self::TimedOut => Rejection::new(RejectionReason::BodyTimeout),
        };
        let mut resp = r.with_id(id).into_response();
        // The rest of the body may still be on its way: the connection cannot be reused.
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        resp
    }
}

/// The client's request body as forwarded: bounded by the request body timeout, and any
/// failure noted in its [`ClientBodyState`].
struct ClientBody {
    inner: mcp_core::TimeoutBody<Body>,
    state: ClientBodyState,
}

impl http_body::Body for ClientBody {
    type Data = bytes::Bytes;
    type Error = mcp_core::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let polled = std::pin::Pin::new(&mut this.inner).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Err(e))) = &polled {
            this.state
                .record(if mcp_core::BodyTimeout::find(&**e).is_some() {
                    ClientBodyFailure::TimedOut
                } else {
                    ClientBodyFailure::CutShort
                });
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Most `notifications/cancelled` sent to one upstream at once.
pub const CANCEL_CONCURRENCY: usize = 16;

/// A request in a session whose response the client may abandon.
struct Abandoned {
    proxy: Proxy,
    request_id: mcp_core::JsonRpcId,
    session_id: HeaderValue,
    protocol_version: Option<HeaderValue>,
    principal: Option<Principal>,
    client_addr: Option<ClientAddr>,
}

/// A response body that, dropped before its end (the client went away), tells the
/// upstream the request is cancelled ([`Proxy::send_cancelled`]): MCP does not read a
/// disconnect as a cancellation, so a server would otherwise keep working for no one.
struct CancelOnAbandon {
    inner: Body,
    armed: Option<Abandoned>,
}

impl http_body::Body for CancelOnAbandon {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let polled = std::pin::Pin::new(&mut this.inner).poll_frame(cx);
        // The end, or an upstream failure: nothing left to cancel.
        if let std::task::Poll::Ready(None | Some(Err(_))) = &polled {
            this.armed = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for CancelOnAbandon {
    fn drop(&mut self) {
        if let Some(a) = self.armed.take()
            && !http_body::Body::is_end_stream(&self.inner)
        {
            Proxy::send_cancelled(a);
        }
    }
}

/// How many sessions are ended at the upstreams at once.
pub const SESSION_END_CONCURRENCY: usize = 8;

/// Time allowed for one ending `DELETE`, answer included.
pub const SESSION_END_TIMEOUT: Duration = Duration::from_secs(10);

/// How many times an ending `DELETE` is tried before it is counted failed.
pub const SESSION_END_TRIES: u32 = 3;

/// Pause before the second try of an ending `DELETE` (doubled before each further one).
pub const SESSION_END_BACKOFF: Duration = Duration::from_millis(500);

/// Sends each session the session binding ends (evicted by a cap, expired when idle) a
/// `DELETE` at its upstream (the [`mcp_auth::session::SessionRoute`] the gateway set
/// when it was created, the upstream's name), [`SESSION_END_CONCURRENCY`] at a time,
/// outside the principals' upstream shares, each tried up to [`SESSION_END_TRIES`]
/// times ([`Proxy::end_session`]); a
/// session that waits longer than the queue allows is dropped and counted. Counted in
/// `mcp_gateway_sessions_ended_total{reason, outcome}` (`outcome`: `ok`, `failed`,
/// `dropped`, `no_upstream`). Runs for the life of the process (it holds the layer, to
/// read its dropped count).
pub fn spawn_session_ender(
    sessions: mcp_auth::SessionBindingLayer,
    proxies: Vec<Proxy>,
) -> Option<tokio::task::JoinHandle<()>> {
    let mut ended = sessions.ended_sessions()?;
    let limit = Arc::new(tokio::sync::Semaphore::new(SESSION_END_CONCURRENCY));
    // Warned once when ending starts failing, and once when it works again (not per
    // session: an upstream that is down would flood the log).
    let failing = Arc::new(std::sync::atomic::AtomicBool::new(false));
    Some(tokio::spawn(async move {
        let count = |reason: &'static str, outcome: &'static str| {
            metrics::counter!("mcp_gateway_sessions_ended_total", "reason" => reason, "outcome" => outcome)
                .increment(1);
        };
        let mut dropped = 0;
        while let Some(e) = ended.recv().await {
            let reason = e.reason().as_str();
            let now = sessions.ended_dropped();
            if now > dropped {
                metrics::counter!("mcp_gateway_sessions_ended_total", "reason" => "any", "outcome" => "dropped")
                    .increment(now - dropped);
                tracing::warn!(
                    dropped = now - dropped,
                    "sessions to end at the upstream dropped (queue full): the upstream expires them"
                );
                dropped = now;
            }
            let proxy = match e.route() {
                Some(r) => proxies.iter().find(|p| p.name() == r),
                None if proxies.len() == 1 => proxies.first(),
                None => None,
            };
            let Some(proxy) = proxy.cloned() else {
                count(reason, "no_upstream");
                continue;
            };
            let Ok(permit) = limit.clone().acquire_owned().await else {
                break;
            };
            let failing = failing.clone();
            tokio::spawn(async move {
                use std::sync::atomic::Ordering;
                let ok = proxy.end_session(e.session_id()).await;
                let (session, upstream) = (e.id_hash(), proxy.name());
                if ok {
                    tracing::debug!(upstream, session, reason, "session ended at the upstream");
                    count(reason, "ok");
                    if failing.swap(false, Ordering::Relaxed) {
                        tracing::info!(upstream, "ending sessions at the upstream works again");
                    }
                } else {
                    tracing::debug!(
                        upstream,
                        session,
                        reason,
                        "ending a session at the upstream failed"
                    );
                    count(reason, "failed");
                    if !failing.swap(true, Ordering::Relaxed) {
                        tracing::warn!(
                            upstream,
                            "ending a session at the upstream failed: such sessions are left to the upstream's expiry (counted in mcp_gateway_sessions_ended_total{{outcome=\"failed\"}})"
                        );
                    }
                }
                drop(permit);
            });
        }
    }))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

fn is_connect_timeout(e: &hyper_util::client::legacy::Error) -> bool {
    let mut src: Option<&dyn std::error::Error> = Some(e);
    while let Some(err) = src {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::TimedOut
        {
            return true;
        }
        if err.to_string().contains("timed out") {
            return true;
        }
        src = err.source();
    }
    false
}

/// Which client query parameters reach the upstream (`upstreams[].forwardQuery`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ForwardQuery {
    /// None (the default): Streamable HTTP needs no client query.
    #[default]
    Nothing,
    /// Parameters with these names ([`query_param_name`] form).
    Names(Vec<String>),
    /// Every parameter.
    All,
}

/// How many rounds of percent-decoding [`query_param_name`] applies (a name encoded
/// twice, `%2574enant`, is read as `tenant` by a framework that decodes twice).
const DECODE_ROUNDS: usize = 3;

/// The name a query parameter `raw` (as written, before `=`) stands for in the
/// frameworks an upstream may use: `+` as space, percent-decoded (`%XX`, and ASP.NET's
/// `%uXXXX`; up to three rounds, `+` read as space after each), cut at the first `[`
/// (PHP and Rails read `tenant[]` and `tenant[x]` as `tenant`) and at a NUL, spaces
/// trimmed, `.` and space read as `_` (PHP), lower case. It reads more spellings as one
/// name than any one framework does: a client parameter is refused when any reader
/// could take it for an operator's.
pub fn query_param_name(raw: &str) -> String {
    let bytes = decoded_param_name(raw);
    let end = bytes
        .iter()
        .position(|&b| b == b'[' || b == 0)
        .unwrap_or(bytes.len());
    fold_param_name(&bytes[..end])
}

/// The other name a parameter may be read as, when it differs from
/// [`query_param_name`]'s: PHP reads a `[` with no `]` after it as `_` and keeps what
/// follows (`tenant[id` is `tenant_id`).
pub fn query_param_php_name(raw: &str) -> Option<String> {
    let mut bytes = decoded_param_name(raw);
    if let Some(nul) = bytes.iter().position(|&b| b == 0) {
        bytes.truncate(nul);
    }
    let open = bytes.iter().position(|&b| b == b'[')?;
    if bytes[open..].contains(&b']') {
        return None;
    }
    bytes[open] = b'_';
    Some(fold_param_name(&bytes))
}

/// Every name a parameter may be read as ([`query_param_name`], and
/// [`query_param_php_name`] when there is one).
fn query_param_readings(raw: &str) -> impl Iterator<Item = String> {
    std::iter::once(query_param_name(raw)).chain(query_param_php_name(raw))
}

/// `raw` percent-decoded (up to three rounds, `+` read as space after each).
fn decoded_param_name(raw: &str) -> Vec<u8> {
    let plus = |b: u8| if b == b'+' { b' ' } else { b };
    let mut bytes: Vec<u8> = raw.bytes().map(plus).collect();
    for _ in 0..DECODE_ROUNDS {
        if !bytes.contains(&b'%') {
            break;
        }
        let decoded: Vec<u8> = percent_decode(&bytes).into_iter().map(plus).collect();
        if decoded == bytes {
            break;
        }
        bytes = decoded;
    }
    bytes
}

/// Spaces trimmed, `.` and space read as `_` (PHP), lower case.
fn fold_param_name(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .trim()
        .chars()
        .map(|c| match c {
            '.' | ' ' => '_',
            c => c.to_ascii_lowercase(),
        })
        .collect()
}

fn percent_decode(b: &[u8]) -> Vec<u8> {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        // ASP.NET's `%uXXXX` (a UTF-16 code unit; surrogates left as they are).
        if b[i] == b'%'
            && i + 5 < b.len()
            && matches!(b[i + 1], b'u' | b'U')
            && let Some(c) = b[i + 2..i + 6]
                .iter()
                .try_fold(0u32, |acc, &d| Some(acc << 4 | u32::from(hex(d)?)))
                .and_then(char::from_u32)
        {
            let mut utf8 = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
            i += 6;
        } else if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push(h << 4 | l);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// The parameters of a query as (raw text, [`query_param_name`]): split at `&` and `;`
/// (some frameworks read `;` as a separator), empty ones left out.
fn query_params(q: &str) -> impl Iterator<Item = (&str, String)> {
    q.split(['&', ';']).filter(|p| !p.is_empty()).map(|p| {
        let name = p.split_once('=').map_or(p, |(n, _)| n);
        (p, query_param_name(name))
    })
}

/// The upstream request target: the configured URL, then the client parameters `forward`
/// lets through (as the client wrote them). `Err` when a client parameter stands for one
/// of the configured URL's (`operator`, [`query_param_name`] form), under any spelling.
fn upstream_uri(
    base: &Uri,
    query: Option<&str>,
    forward: &ForwardQuery,
    operator: &[String],
) -> Result<Uri, ()> {
    let Some(q) = query.filter(|_| *forward != ForwardQuery::Nothing) else {
        return Ok(base.clone());
    };
    let mut kept: Vec<&str> = Vec::new();
    for (raw, name) in query_params(q) {
        let param = raw.split_once('=').map_or(raw, |(n, _)| n);
        if query_param_readings(param).any(|n| operator.contains(&n)) {
            return Err(());
        }
        let pass = !name.is_empty()
            && match forward {
                ForwardQuery::All => true,
                ForwardQuery::Names(n) => n.contains(&name),
                ForwardQuery::Nothing => false,
            };
        if pass {
            kept.push(raw);
        }
    }
    if kept.is_empty() {
        return Ok(base.clone());
    }
    let client = kept.join("&");
    let pq = match base.query() {
        Some(bq) => format!("{}?{bq}&{client}", base.path()),
        None => format!("{}?{client}", base.path()),
    };
    let mut parts = base.clone().into_parts();
    parts.path_and_query = Some(pq.parse().map_err(|_| ())?);
    Uri::from_parts(parts).map_err(|_| ())
}

/// Every name the configured URL's parameters may be read as ([`query_param_name`] and
/// [`query_param_php_name`] forms).
pub fn operator_params(url: &Uri) -> Vec<String> {
    url.query()
        .map(|q| {
            query_params(q)
                .flat_map(|(raw, _)| {
                    query_param_readings(raw.split_once('=').map_or(raw, |(n, _)| n))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `url` fit for logs and errors: without user info, each query value shown as `***`.
pub fn display_url(url: &Uri) -> String {
    let mut out = String::new();
    if let Some(scheme) = url.scheme_str() {
        out.push_str(scheme);
        out.push_str("://");
    }
    if let Some(a) = url.authority() {
        let host = a.as_str().rsplit_once('@').map_or(a.as_str(), |(_, h)| h);
        out.push_str(host);
    }
    out.push_str(url.path());
    if let Some(q) = url.query() {
        out.push('?');
        let masked: Vec<String> = q
            .split('&')
            .map(|p| match p.split_once('=') {
                Some((k, _)) => format!("{k}=***"),
                None => p.to_owned(),
            })
            .collect();
        out.push_str(&masked.join("&"));
    }
    out
}

/// [`display_url`] of a URL written in the configuration (`<invalid URL>` when it does
/// not parse: the text itself may hold a secret).
pub fn display_url_str(url: &str) -> String {
    url.parse::<Uri>()
        .map(|u| display_url(&u))
        .unwrap_or_else(|_| "<invalid URL>".to_owned())
}

/// Copies the request headers that may go upstream: not hop-by-hop, not a credential
/// (`strip`, compared with `_` read as `-`), not `untrusted`. A header named by the
/// client's `Connection` is dropped unless it is in [`PROTECTED_FROM_CONNECTION`] or an
/// `mcp-*` header.
pub fn copy_request_headers(
    from: &HeaderMap,
    to: &mut HeaderMap,
    strip: &[HeaderName],
    untrusted: &UntrustedHeaders,
) {
    // Headers named in `Connection` are hop-by-hop too.
    let connection_named: Vec<String> = from
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect();
    for (name, value) in from {
        let n = name.as_str();
        let protected = PROTECTED_FROM_CONNECTION.contains(&n) || n.starts_with("mcp-");
        if ALWAYS_STRIPPED.contains(&n)
            || header_name_in(n, strip)
            || untrusted.matches(name)
            || (!protected && connection_named.iter().any(|c| c == n))
        {
            continue;
        }
        to.append(name.clone(), value.clone());
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn credentials_and_hop_by_hop_are_not_forwarded() {
        let mut from = HeaderMap::new();
        for (k, v) in [
            ("authorization", "Bearer secret"),
            ("proxy-authorization", "Basic x"),
            ("cookie", "session=1"),
            ("x-api-key", "k"),
            ("connection", "keep-alive, x-custom-hop"),
            ("x-custom-hop", "1"),
            ("te", "trailers"),
            ("origin", "http://localhost"),
            ("x-forwarded-for", "6.6.6.6"),
            ("mcp-session-id", "abc"),
            ("mcp-protocol-version", "2025-11-25"),
            ("mcp-method", "tools/call"),
            ("mcp-name", "echo"),
            ("last-event-id", "s_1"),
            ("accept", "application/json, text/event-stream"),
            ("content-type", "application/json"),
        ] {
            from.append(k, HeaderValue::from_static(v));
        }
        let mut to = HeaderMap::new();
        copy_request_headers(
            &from,
            &mut to,
            &[HeaderName::from_static("x-api-key")],
            &UntrustedHeaders::default(),
        );
        for gone in [
            "authorization",
            "proxy-authorization",
            "cookie",
            "x-api-key",
            "connection",
            "x-custom-hop",
            "te",
            "origin",
            "x-forwarded-for",
        ] {
            assert!(!to.contains_key(gone), "{gone} was forwarded");
        }
        for kept in [
            "mcp-session-id",
            "mcp-protocol-version",
            "mcp-method",
            "mcp-name",
            "last-event-id",
            "accept",
            "content-type",
        ] {
            assert!(to.contains_key(kept), "{kept} was dropped");
        }
    }

    #[test]
    fn connection_cannot_remove_what_the_gateway_relies_on() {
        let mut from = HeaderMap::new();
        for (k, v) in [
            (
                "connection",
                "close, x-request-id, mcp-protocol-version, content-type, accept, last-event-id, mcp-session-id, x-custom-hop",
            ),
            ("x-request-id", "r-1"),
            ("mcp-protocol-version", "2025-06-18"),
            ("mcp-session-id", "s"),
            ("content-type", "application/json"),
            ("accept", "application/json"),
            ("last-event-id", "e-1"),
            ("x-custom-hop", "1"),
            ("expect", "100-continue"),
            ("x_api_key", "k"),
            ("x-mcp_key", "k"),
            ("x_custom", "1"),
        ] {
            from.append(k, HeaderValue::from_static(v));
        }
        let mut to = HeaderMap::new();
        let strip = [
            HeaderName::from_static("x-api-key"),
            HeaderName::from_static("x-mcp-key"),
        ];
        copy_request_headers(&from, &mut to, &strip, &UntrustedHeaders::default());
        for kept in [
            "x-request-id",
            "mcp-protocol-version",
            "mcp-session-id",
            "content-type",
            "accept",
            "last-event-id",
        ] {
            assert!(to.contains_key(kept), "{kept} was dropped");
        }
        for gone in [
            "x-custom-hop",
            "expect",
            "connection",
            "x_api_key",
            "x-mcp_key",
            "x_custom",
        ] {
            assert!(!to.contains_key(gone), "{gone} was forwarded");
        }
        // Without the blanket underscore drop, credential names still match `_` as `-`.
        let mut to = HeaderMap::new();
        copy_request_headers(
            &from,
            &mut to,
            &strip,
            &UntrustedHeaders::default().strip_underscored(false),
        );
        assert!(!to.contains_key("x_api_key") && !to.contains_key("x-mcp_key"));
        assert!(to.contains_key("x_custom"));
    }

    #[test]
    fn urls_are_displayed_without_secrets() {
        let u: Uri = "http://svc:pw-7f3a@10.0.0.1:8080/mcp?api_key=k-7f3a&x=1&flag"
            .parse()
            .unwrap();
        let d = display_url(&u);
        assert_eq!(d, "http://10.0.0.1:8080/mcp?api_key=***&x=***&flag");
        assert_eq!(display_url_str("https://h/mcp"), "https://h/mcp");
        assert_eq!(display_url_str("http://a b@"), "<invalid URL>");
        let spec = UpstreamSpec {
            name: "u".into(),
            url: u,
            inject: Vec::new(),
            strip: Vec::new(),
            untrusted: UntrustedHeaders::default(),
            response_headers: Arc::default(),
            forward_query: ForwardQuery::Nothing,
            principal_header: None,
            client_cert_header: None,
            connect_timeout: Duration::from_secs(1),
            response_timeout: Duration::from_secs(1),
            body_idle_timeout: Duration::from_secs(1),
            response_deadline: Duration::from_secs(1),
            sse_idle_timeout: None,
            request_body_timeout: Duration::from_secs(1),
            tls: UpstreamTls::default(),
            admit: None,
            max_connections: None,
        };
        let dbg = format!("{spec:?}");
        assert!(!dbg.contains("7f3a"), "{dbg}");
    }

    #[test]
    fn a_client_query_is_not_forwarded_by_default() {
        let base: Uri = "http://127.0.0.1:9000/mcp?tenant=acme".parse().unwrap();
        let op = operator_params(&base);
        assert_eq!(op, ["tenant"]);
        for q in [None, Some("a=1"), Some("tenant=evil")] {
            assert_eq!(
                upstream_uri(&base, q, &ForwardQuery::Nothing, &op),
                Ok(base.clone())
            );
        }
    }

    #[test]
    fn forwarded_parameters_follow_the_operators_and_never_override_them() {
        let base: Uri = "http://127.0.0.1:9000/mcp?tenant=acme&role_id=r"
            .parse()
            .unwrap();
        let op = operator_params(&base);
        let names = ForwardQuery::Names(vec!["page".into()]);
        let uri = |q: &str, f: &ForwardQuery| upstream_uri(&base, Some(q), f, &op);
        assert_eq!(
            uri("page=2&x=1", &names).unwrap().to_string(),
            "http://127.0.0.1:9000/mcp?tenant=acme&role_id=r&page=2"
        );
        assert_eq!(
            uri("x=1;page=%32", &ForwardQuery::All).unwrap().to_string(),
            "http://127.0.0.1:9000/mcp?tenant=acme&role_id=r&x=1&page=%32"
        );
        assert_eq!(uri("x=1", &names), Ok(base.clone()));
        for q in [
            "tenant=evil",
            "TeNaNt=evil",
            "%74enant=evil",
            "%2574enant=evil",
            "tenant[]=evil",
            "tenant%5B0%5D=evil",
            "page=1;tenant=evil",
            "+tenant+=evil",
            "tenant%00x=evil",
            "role.id=admin",
            "role+id=admin",
            "role%2eid=admin",
            "tenant",
            "role[id=admin",
            "role%5Bid=admin",
            "role%255Bid=admin",
        ] {
            assert_eq!(uri(q, &names), Err(()), "{q}");
            assert_eq!(uri(q, &ForwardQuery::All), Err(()), "{q}");
        }
    }

    #[test]
    fn query_param_names() {
        for (raw, name) in [
            ("Tenant", "tenant"),
            ("%2574enant", "tenant"),
            ("%252574enant", "tenant"),
            ("a%5Bb%5D", "a"),
            ("a.b c", "a_b_c"),
            ("%2Btenant", "tenant"),
            ("%252Btenant", "tenant"),
            ("%u0074enant", "tenant"),
            ("%U0054ENANT", "tenant"),
            ("%25u0074enant", "tenant"),
            ("%uD800x", "%ud800x"),
            ("%", "%"),
            ("%zz", "%zz"),
            ("", ""),
        ] {
            assert_eq!(query_param_name(raw), name, "{raw}");
        }
        // PHP reads an unmatched `[` as `_`.
        for (raw, php) in [
            ("tenant[id", Some("tenant_id")),
            ("tenant%5Bid", Some("tenant_id")),
            ("role[name", Some("role_name")),
            ("a[b.c", Some("a_b_c")),
            ("a[b]", None),
            ("a[]", None),
            ("tenant", None),
        ] {
            assert_eq!(query_param_php_name(raw).as_deref(), php, "{raw}");
        }
    }
}
