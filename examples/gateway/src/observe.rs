//! Metrics: a layer recording every request's outcome through the `metrics` facade, and
//! the Prometheus recorder behind `/metrics`.
//!
//! - `mcp_gateway_requests_total{upstream, http_method, mcp_method, tool, status}`;
//!   `status` is the HTTP status, or `cancelled` for a request abandoned before its
//!   response (the client hung up while the upstream worked; nginx logs these as 499),
//!   labelled with the method and tool the inner layers noted in the
//!   [`mcp_core::RequestFacts`]
//! - `mcp_gateway_denials_total{upstream, reason}` (from [`mcp_core::Denial`] in the
//!   response extensions)
//! - `mcp_gateway_request_duration_seconds{upstream, mcp_method}` (time to the response
//!   headers; SSE streams are not timed to their end)
//!
//! Label values are never taken from what a client sends: the MCP method is one of the
//! known methods (else `other`), and the tool is one the upstream named in a
//! `tools/list` answer ([`KnownTools`], at most [`MAX_TOOL_LABELS`] per upstream, the
//! first listed; names longer than 64 bytes or outside `[A-Za-z0-9_./:-]` are not taken).
//! Any other tool name counts as `other`, so a client calling hundreds of invented tools
//! cannot take the labels of real ones. A tool counts under its name once an answer to
//! `tools/list` through the gateway named it since the gateway started.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::{Body, HttpBody};
use bytes::Bytes;
use http::{Request, Response};
use mcp_core::{Denial, McpRequest, RequestFacts};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tower_layer::Layer;
use tower_service::Service;

/// Tool names kept as label values per upstream (the first the upstream lists).
pub const MAX_TOOL_LABELS: usize = 200;

/// The most bytes of one `tools/list` answer read for tool names (4 MiB); past it, the
/// rest of that answer is passed on unread.
pub const MAX_LIST_BYTES: usize = 4 * 1024 * 1024;

/// The tool names an upstream listed, shared by every router of the process (one per
/// worker thread): the label values of the `tool` label.
#[derive(Debug, Default)]
pub struct KnownTools {
    names: std::sync::RwLock<HashSet<Arc<str>>>,
}

impl KnownTools {
    /// The known tools of `upstream` (created empty on first use).
    pub fn of(upstream: &str) -> Arc<KnownTools> {
        static ALL: std::sync::OnceLock<Mutex<HashMap<String, Arc<KnownTools>>>> =
            std::sync::OnceLock::new();
        let mut all = ALL
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        Arc::clone(all.entry(upstream.to_owned()).or_default())
    }

    /// The label of `tool`: its name when the upstream listed it, else `other`.
    fn label(&self, tool: &str) -> ToolLabel {
        let names = self.names.read().unwrap_or_else(|e| e.into_inner());
        match names.get(tool) {
            Some(t) => ToolLabel::Name(Arc::clone(t)),
            None => ToolLabel::Other,
        }
    }

    /// Takes the tool names of a JSON-RPC answer (or batch) to `tools/list`.
    fn learn(&self, answer: &serde_json::Value) {
        let answers = match answer {
            serde_json::Value::Array(a) => a.as_slice(),
            one => std::slice::from_ref(one),
        };
        for a in answers {
            let Some(tools) = a
                .get("result")
                .and_then(|r| r.get("tools"))
                .and_then(serde_json::Value::as_array)
            else {
                continue;
            };
            let mut names = self.names.write().unwrap_or_else(|e| e.into_inner());
            for name in tools
                .iter()
                .filter_map(|t| t.get("name").and_then(serde_json::Value::as_str))
            {
                if names.len() >= MAX_TOOL_LABELS {
                    return;
                }
                let label_safe = !name.is_empty()
                    && name.len() <= 64
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"_-./:".contains(&b));
                if label_safe && !names.contains(name) {
                    names.insert(name.into());
                }
            }
        }
    }

    /// How many tool names are known.
    pub fn count(&self) -> usize {
        self.names.read().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// Reads the tool names of a `tools/list` answer as it passes (JSON or SSE), without
/// holding it back; at most [`MAX_LIST_BYTES`] are kept.
struct ListTap {
    known: Arc<KnownTools>,
    sse: bool,
    buf: Vec<u8>,
}

impl ListTap {
    fn push(&mut self, data: &[u8]) -> bool {
        if self.buf.len() + data.len() > MAX_LIST_BYTES {
            return false;
        }
        self.buf.extend_from_slice(data);
        if self.sse {
            // Each complete event: its data lines are one JSON-RPC message.
            while let Some((end, sep)) = find_event_end(&self.buf) {
                let event: Vec<u8> = self.buf.drain(..end + sep).collect();
                self.learn_event(&event[..end]);
            }
        }
        true
    }

    fn learn_event(&self, event: &[u8]) {
        let mut data = Vec::new();
        for line in event.split(|b| *b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if let Some(d) = line.strip_prefix(b"data:") {
                if !data.is_empty() {
                    data.push(b'\n');
                }
                data.extend_from_slice(d.strip_prefix(b" ").unwrap_or(d));
            }
        }
        if let Ok(v) = serde_json::from_slice(&data) {
            self.known.learn(&v);
        }
    }
}

impl Drop for ListTap {
    fn drop(&mut self) {
        // A JSON answer is read whole when its body is done (or dropped: then it does
        // not parse, unless it was complete).
        if self.sse {
            let rest = std::mem::take(&mut self.buf);
            self.learn_event(&rest);
        } else if let Ok(v) = serde_json::from_slice(&self.buf) {
            self.known.learn(&v);
        }
    }
}

/// The end of the first complete SSE event in `buf` and the length of its separator.
fn find_event_end(buf: &[u8]) -> Option<(usize, usize)> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2));
    let crlf = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

/// A response body passed on unchanged while its tool names are read.
struct LearnBody {
    inner: Body,
    tap: Option<ListTap>,
}

impl HttpBody for LearnBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
            && let Some(tap) = &mut this.tap
            && !tap.push(data)
        {
            // Too long to read for names: pass the rest on unread.
            if let Some(mut tap) = this.tap.take() {
                tap.buf = Vec::new();
                tap.sse = true;
            }
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

const KNOWN_METHODS: &[&str] = &[
    "initialize",
    "ping",
    "server/discover",
    "tools/list",
    "tools/call",
    "resources/list",
    "resources/templates/list",
    "resources/read",
    "resources/subscribe",
    "resources/unsubscribe",
    "prompts/list",
    "prompts/get",
    "completion/complete",
    "logging/setLevel",
    "subscriptions/listen",
    "notifications/initialized",
    "notifications/cancelled",
    "notifications/progress",
    "notifications/roots/list_changed",
];

/// Installs the global Prometheus recorder. Returns `None` if one is already installed.
pub fn install_recorder() -> Option<PrometheusHandle> {
    let builder = PrometheusBuilder::new()
        .set_buckets(&[
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ])
        .ok()?;
    let handle = builder.install_recorder().ok()?;
    metrics::describe_counter!(
        "mcp_gateway_requests_total",
        "Requests served, by upstream, HTTP method, MCP method, tool and status"
    );
    metrics::describe_counter!(
        "mcp_gateway_denials_total",
        "Requests refused by a layer, by reason"
    );
    metrics::describe_counter!(
        "mcp_gateway_auth_failure_alerts_total",
        "Clients that reached monitoring.auth_failure_threshold"
    );
    metrics::describe_gauge!(
        "mcp_gateway_connections_open",
        "Client connections open now, TLS handshakes included (every worker together)"
    );
    metrics::describe_gauge!(
        "mcp_gateway_connections_max",
        "server.maxConnections: at this many open connections, new ones wait"
    );
    metrics::describe_counter!(
        "mcp_gateway_connections_accepted_total",
        "Client connections accepted"
    );
    metrics::describe_counter!(
        "mcp_gateway_connections_idle_closed_total",
        "Connections closed after server.idleTimeoutSeconds with no request in progress"
    );
    metrics::describe_counter!(
        "mcp_gateway_connections_write_timed_out_total",
        "Connections closed after a response waited server.writeTimeoutSeconds with no write \
         progress (the client stopped reading)"
    );
    metrics::describe_counter!(
        "mcp_gateway_http2_streams_write_timed_out_total",
        "HTTP/2 streams reset (RST_STREAM CANCEL) after their response waited \
         server.streamWriteTimeoutSeconds with no write progress (the client kept its \
         window shut); their connection went on"
    );
    metrics::describe_counter!(
        "mcp_gateway_connections_per_client_refused_total",
        "Connections closed at accept: their client address had \
         server.maxConnectionsPerClient open"
    );
    metrics::describe_counter!(
        "mcp_gateway_http2_streams_refused_over_budget_total",
        "HTTP/2 streams refused (REFUSED_STREAM): their connection had used up \
         server.connectionMemoryBytes"
    );
    metrics::describe_counter!(
        "mcp_gateway_request_bodies_over_budget_total",
        "Request body reads refused (400): they would have gone over their connection's \
         server.connectionMemoryBytes"
    );
    metrics::describe_gauge!(
        "mcp_gateway_connections_max_per_client",
        "server.maxConnectionsPerClient"
    );
    metrics::describe_counter!(
        "mcp_gateway_tls_handshake_failures_total",
        "TLS handshakes that failed or timed out, by reason"
    );
    metrics::describe_counter!(
        "mcp_gateway_tls_sni_ignored_total",
        "TLS handshakes whose client sent an IP address (reason=ip_address) or a malformed \
         name (reason=invalid) as SNI, served as without one"
    );
    metrics::describe_counter!(
        "mcp_gateway_tls_reloads_total",
        "Reads of server.tls's files after a change to them or the periodic check, by \
         outcome: reloaded (new bytes), unchanged, failed (the certificate in use stays)"
    );
    metrics::describe_histogram!(
        "mcp_gateway_request_duration_seconds",
        metrics::Unit::Seconds,
        "Time until the response headers"
    );
    describe_audit();
    Some(handle)
}

/// The help text of the audit trail's series (see mcp-audit's README for each one's
/// exact meaning).
fn describe_audit() {
    metrics::describe_counter!(
        "mcp_audit_events_queued_total",
        "Audit events put into the queue, counted as they are queued"
    );
    metrics::describe_gauge!(
        "mcp_audit_queue_depth",
        "Audit events queued and not yet written by every storage nor dropped: in the \
         queue, being rendered, or in a storage's backlog"
    );
    metrics::describe_gauge!(
        "mcp_audit_queue_bytes",
        "Bytes of the audit queue in use (audit.queue.maxBytes): events not yet taken by \
         the writer"
    );
    metrics::describe_counter!(
        "mcp_audit_events_written_total",
        "Audit records written, by storage"
    );
    metrics::describe_gauge!(
        "mcp_audit_sink_backlog",
        "Audit records handed to a storage and not yet written or given up on"
    );
    metrics::describe_gauge!(
        "mcp_audit_sink_backlog_bytes",
        "Bytes of the audit records in a storage's backlog"
    );
    metrics::describe_gauge!(
        "mcp_audit_sink_up",
        "1 while an audit storage writes; 0 from a failed write (or one in progress for \
         10 s) until a write succeeds"
    );
    metrics::describe_counter!(
        "mcp_audit_sink_errors_total",
        "Failed writes of an audit storage (each retried)"
    );
    metrics::describe_counter!(
        "mcp_audit_sink_backlog_dropped_total",
        "Audit records a storage lost: its backlog was full while it failed"
    );
    metrics::describe_counter!(
        "mcp_audit_events_dropped_total",
        "Audit events not queued (queue_full, closed) or records not written by every \
         storage (sink_failed)"
    );
}

/// Runs the recorder's upkeep (draining histogram samples) periodically, so that memory
/// stays bounded even when `/metrics` is never scraped.
pub fn spawn_upkeep(handle: PrometheusHandle) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            tick.tick().await;
            handle.run_upkeep();
        }
    });
}

/// Records metrics for the requests of one upstream (or endpoint).
///
/// The metric handles of each label set are kept once registered, so that a request does
/// not build its label set and look it up in the registry again (bounded by
/// [`MAX_CACHED_HANDLES`]; past that, handles are looked up each time).
#[derive(Debug, Clone)]
pub struct MetricsLayer {
    upstream: metrics::SharedString,
    state: Arc<Mutex<LabelState>>,
    known: Arc<KnownTools>,
}

/// Cached label sets with their metric handles kept per upstream.
pub const MAX_CACHED_HANDLES: usize = 4096;

#[derive(Debug, Default)]
struct LabelState {
    requests: HashMap<RequestLabels, metrics::Counter>,
    durations: HashMap<&'static str, metrics::Histogram>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct RequestLabels {
    http_method: &'static str,
    mcp_method: &'static str,
    tool: ToolLabel,
    status: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum ToolLabel {
    None,
    Other,
    Name(Arc<str>),
}

impl ToolLabel {
    fn shared(&self) -> metrics::SharedString {
        match self {
            ToolLabel::None => metrics::SharedString::const_str("-"),
            ToolLabel::Other => metrics::SharedString::const_str("other"),
            ToolLabel::Name(t) => metrics::SharedString::from(t.clone()),
        }
    }
}

impl MetricsLayer {
    /// A layer labelling with `upstream`, whose tool labels are those `upstream` lists
    /// ([`KnownTools::of`]).
    pub fn new(upstream: &str) -> Self {
        let name: Arc<str> = upstream.into();
        Self {
            upstream: metrics::SharedString::from(name),
            state: Arc::new(Mutex::new(LabelState::default())),
            known: KnownTools::of(upstream),
        }
    }
}

impl<S> Layer<S> for MetricsLayer {
    type Service = Metrics<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Metrics {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service of [`MetricsLayer`].
#[derive(Debug, Clone)]
pub struct Metrics<S> {
    inner: S,
    layer: MetricsLayer,
}

impl<S, B, RB> Service<Request<B>> for Metrics<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    RB: HttpBody<Data = Bytes> + Send + 'static,
    RB::Error: Into<axum::BoxError>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let start = Instant::now();
        let http_method = static_method(req.method());
        let facts = RequestFacts::get_or_insert(req.extensions_mut());
        let mut pending = Pending {
            layer: self.layer.clone(),
            http_method,
            facts: Some(facts),
        };
        let fut = self.inner.call(req);
        Box::pin(async move {
            let result = fut.await;
            // Answered (or failed): not a cancellation.
            pending.facts = None;
            if let Ok(resp) = &result {
                let ext = resp.extensions();
                record(
                    &pending.layer,
                    http_method,
                    ext.get::<McpRequest>(),
                    static_status(resp.status()),
                    Some(start.elapsed().as_secs_f64()),
                );
                if let Some(d) = ext.get::<Denial>() {
                    metrics::counter!("mcp_gateway_denials_total",
                        "upstream" => pending.layer.upstream.clone(), "reason" => d.reason.as_str())
                    .increment(1);
                }
            }
            result.map(|resp| learn_tools(&pending.layer.known, resp))
        })
    }
}

/// The response, its body read for tool names when it answers a `tools/list` with 200.
fn learn_tools<RB>(known: &Arc<KnownTools>, resp: Response<RB>) -> Response<Body>
where
    RB: HttpBody<Data = Bytes> + Send + 'static,
    RB::Error: Into<axum::BoxError>,
{
    let listing = resp.status() == http::StatusCode::OK
        && resp
            .extensions()
            .get::<McpRequest>()
            .is_some_and(|m| !m.is_batch() && m.method() == Some("tools/list"));
    let resp = resp.map(Body::new);
    if !listing || known.count() >= MAX_TOOL_LABELS {
        return resp;
    }
    let media = resp
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        });
    let sse = match media.as_deref() {
        Some("text/event-stream") => true,
        Some("application/json") => false,
        _ => return resp,
    };
    resp.map(|inner| {
        Body::new(LearnBody {
            inner,
            tap: Some(ListTap {
                known: Arc::clone(known),
                sse,
                buf: Vec::new(),
            }),
        })
    })
}

/// Counts a request dropped before its response (its future dropped while still
/// pending) as `status="cancelled"`.
struct Pending {
    layer: MetricsLayer,
    http_method: &'static str,
    facts: Option<RequestFacts>,
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(facts) = self.facts.take() {
            let mcp = facts.request();
            record(
                &self.layer,
                self.http_method,
                mcp.as_ref(),
                "cancelled",
                None,
            );
        }
    }
}

fn static_method(m: &http::Method) -> &'static str {
    match *m {
        http::Method::POST => "POST",
        http::Method::GET => "GET",
        http::Method::DELETE => "DELETE",
        http::Method::PUT => "PUT",
        http::Method::HEAD => "HEAD",
        http::Method::OPTIONS => "OPTIONS",
        http::Method::PATCH => "PATCH",
        _ => "other",
    }
}

fn static_status(s: http::StatusCode) -> &'static str {
    match s.as_u16() {
        200 => "200",
        202 => "202",
        204 => "204",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        405 => "405",
        406 => "406",
        409 => "409",
        413 => "413",
        415 => "415",
        429 => "429",
        431 => "431",
        500 => "500",
        502 => "502",
        503 => "503",
        504 => "504",
        other => match other / 100 {
            1 => "1xx",
            2 => "2xx",
            3 => "3xx",
            4 => "4xx",
            _ => "5xx",
        },
    }
}

/// Counts one request; `elapsed` (seconds to the response headers) is `None` for a
/// cancelled one, which had no response.
fn record(
    layer: &MetricsLayer,
    http_method: &'static str,
    mcp: Option<&McpRequest>,
    status: &'static str,
    elapsed: Option<f64>,
) {
    let method: &'static str = match mcp.and_then(McpRequest::method) {
        Some(m) => KNOWN_METHODS
            .iter()
            .find(|k| **k == m)
            .copied()
            .unwrap_or("other"),
        None => "-",
    };
    let tool = match mcp.and_then(McpRequest::tool_name) {
        Some(t) => layer.known.label(t),
        None => ToolLabel::None,
    };
    let mut state = layer.state.lock().unwrap_or_else(|e| e.into_inner());
    let labels = RequestLabels {
        http_method,
        mcp_method: method,
        tool,
        status,
    };
    let cacheable = state.requests.len() + state.durations.len() < MAX_CACHED_HANDLES;
    match state.requests.get(&labels) {
        Some(c) => c.increment(1),
        None => {
            let c = metrics::counter!("mcp_gateway_requests_total",
                "upstream" => layer.upstream.clone(), "http_method" => http_method,
                "mcp_method" => method, "tool" => labels.tool.shared(), "status" => status);
            c.increment(1);
            if cacheable {
                state.requests.insert(labels, c);
            }
        }
    }
    let Some(elapsed) = elapsed else {
        return;
    };
    match state.durations.get(method) {
        Some(h) => h.record(elapsed),
        None => {
            let h = metrics::histogram!("mcp_gateway_request_duration_seconds",
                "upstream" => layer.upstream.clone(), "mcp_method" => method);
            h.record(elapsed);
            if cacheable {
                state.durations.insert(method, h);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use metrics_exporter_prometheus::PrometheusBuilder;

    fn mcp(tool: &str) -> McpRequest {
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"{tool}"}}}}"#
        );
        McpRequest::parse(body.into(), mcp_core::McpHeaders::default()).unwrap()
    }

    fn served(layer: &MetricsLayer, tool: &str, status: &'static str) {
        record(layer, "POST", Some(&mcp(tool)), status, Some(0.001));
    }

    #[test]
    fn a_request_dropped_before_its_response_counts_as_cancelled_with_its_tool() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let layer = MetricsLayer::new("unit-cancelled");
        layer
            .known
            .learn(&serde_json::json!({"jsonrpc": "2.0", "id": 1,
            "result": {"tools": [{"name": "slow_count"}]}}));
        metrics::with_local_recorder(&recorder, || {
            let facts = RequestFacts::new();
            let mut ext = http::Extensions::new();
            ext.insert(facts.clone());
            RequestFacts::note_request(&ext, &mcp("slow_count"));
            drop(Pending {
                layer: layer.clone(),
                http_method: "POST",
                facts: Some(facts),
            });
            // Answered: `facts` taken, nothing counted by the drop.
            drop(Pending {
                layer: layer.clone(),
                http_method: "POST",
                facts: None,
            });
        });
        let text = handle.render();
        let lines: Vec<_> = text
            .lines()
            .filter(|l| l.starts_with("mcp_gateway_requests_total"))
            .collect();
        assert_eq!(lines.len(), 1, "{text}");
        assert!(
            lines[0].contains(r#"tool="slow_count",status="cancelled""#)
                && lines[0].ends_with(" 1"),
            "{text}"
        );
        assert!(
            !text.contains("mcp_gateway_request_duration_seconds_count"),
            "{text}"
        );
    }

    #[test]
    fn tool_labels_are_the_listed_tools_and_stay_bounded() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let layer = MetricsLayer::new("unit-bounded");
        // Invented names before any list: `other`, and they take no label.
        metrics::with_local_recorder(&recorder, || {
            for i in 0..MAX_TOOL_LABELS + 5 {
                served(&layer, &format!("t{i}"), "200");
            }
        });
        assert_eq!(layer.known.count(), 0);
        // An upstream listing 10,000 tools: the first MAX_TOOL_LABELS label-safe ones.
        let tools: Vec<_> = std::iter::once(serde_json::json!({"name": "bad name"}))
            .chain((0..10_000).map(|i| serde_json::json!({"name": format!("tool_{i}")})))
            .collect();
        layer
            .known
            .learn(&serde_json::json!({"jsonrpc": "2.0", "id": 1, "result": {"tools": tools}}));
        assert_eq!(layer.known.count(), MAX_TOOL_LABELS);
        metrics::with_local_recorder(&recorder, || {
            for _ in 0..3 {
                served(&layer, "tool_0", "200");
            }
            served(&layer, "tool_0", "429");
            served(&layer, "tool_9999", "200");
            served(&layer, "bad name", "200");
        });
        let text = handle.render();
        let line = |needle: &str| {
            text.lines()
                .find(|l| l.starts_with("mcp_gateway_requests_total") && l.contains(needle))
                .unwrap_or_else(|| panic!("no line with {needle} in\n{text}"))
                .to_owned()
        };
        assert!(line(r#"tool="tool_0",status="200""#).ends_with(" 3"));
        assert!(line(r#"tool="tool_0",status="429""#).ends_with(" 1"));
        // The 205 invented names, the 10,000th tool and the name with a space.
        assert!(line(r#"tool="other""#).ends_with(" 207"), "{text}");
        assert!(!text.contains("t17\""));
        assert!(layer.state.lock().unwrap().requests.len() <= MAX_CACHED_HANDLES);
    }

    #[test]
    fn tool_names_are_read_from_json_and_sse_answers_in_any_chunking() {
        let answer =
            r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"alpha"},{"name":"beta"}]}}"#;
        let sse = format!("event: message\r\ndata: {answer}\r\n\r\n: keepalive\n\n");
        for chunk in [1, 3, 7, 64, 4096] {
            for (sse_mode, body) in [(false, answer.to_owned()), (true, sse.clone())] {
                let known = Arc::new(KnownTools::default());
                {
                    let mut tap = ListTap {
                        known: Arc::clone(&known),
                        sse: sse_mode,
                        buf: Vec::new(),
                    };
                    for piece in body.as_bytes().chunks(chunk) {
                        assert!(tap.push(piece));
                    }
                    if sse_mode {
                        // An SSE answer is read event by event, before the stream ends.
                        assert_eq!(known.count(), 2, "chunk {chunk}");
                    }
                }
                assert_eq!(known.count(), 2, "chunk {chunk}, sse {sse_mode}");
                assert!(matches!(known.label("beta"), ToolLabel::Name(_)));
                assert!(matches!(known.label("gamma"), ToolLabel::Other));
            }
        }
        // A truncated JSON answer teaches nothing; an oversized one is not kept.
        let known = Arc::new(KnownTools::default());
        drop(ListTap {
            known: Arc::clone(&known),
            sse: false,
            buf: answer.as_bytes()[..answer.len() - 3].to_vec(),
        });
        assert_eq!(known.count(), 0);
        let mut tap = ListTap {
            known: Arc::clone(&known),
            sse: false,
            buf: Vec::new(),
        };
        assert!(!tap.push(&vec![b' '; MAX_LIST_BYTES + 1]));
    }
}
