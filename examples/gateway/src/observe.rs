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
//! Label values that come from clients (method, tool) are bounded: known MCP methods
//! only, and at most [`MAX_TOOL_LABELS`] tool names per upstream, the rest as `other`.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use http::{Request, Response};
use mcp_core::{Denial, McpRequest, RequestFacts};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tower_layer::Layer;
use tower_service::Service;

/// Tool names kept as label values per upstream.
pub const MAX_TOOL_LABELS: usize = 200;

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
        "mcp_gateway_connections_per_client_refused_total",
        "Connections closed at accept: their client address had \
         server.maxConnectionsPerClient open"
    );
    metrics::describe_gauge!(
        "mcp_gateway_connections_max_per_client",
        "server.maxConnectionsPerClient"
    );
    metrics::describe_counter!(
        "mcp_gateway_tls_handshake_failures_total",
        "TLS handshakes that failed or timed out, by reason"
    );
    metrics::describe_histogram!(
        "mcp_gateway_request_duration_seconds",
        metrics::Unit::Seconds,
        "Time until the response headers"
    );
    Some(handle)
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
}

/// Cached label sets with their metric handles kept per upstream.
pub const MAX_CACHED_HANDLES: usize = 4096;

#[derive(Debug, Default)]
struct LabelState {
    tools: HashSet<Arc<str>>,
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
    /// A layer labelling with `upstream`.
    pub fn new(upstream: &str) -> Self {
        let name: Arc<str> = upstream.into();
        Self {
            upstream: metrics::SharedString::from(name),
            state: Arc::new(Mutex::new(LabelState::default())),
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
    RB: Send + 'static,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<RB>, S::Error>> + Send>>;

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
            result
        })
    }
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
    let mut state = layer.state.lock().unwrap_or_else(|e| e.into_inner());
    let tool = match mcp.and_then(McpRequest::tool_name) {
        Some(t) => bounded_tool(&mut state.tools, t),
        None => ToolLabel::None,
    };
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

fn bounded_tool(tools: &mut HashSet<Arc<str>>, tool: &str) -> ToolLabel {
    if let Some(t) = tools.get(tool) {
        return ToolLabel::Name(t.clone());
    }
    let printable = tool.len() <= 64
        && tool
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-./:".contains(&b));
    if printable && tools.len() < MAX_TOOL_LABELS {
        let t: Arc<str> = tool.into();
        tools.insert(t.clone());
        ToolLabel::Name(t)
    } else {
        ToolLabel::Other
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
        let layer = MetricsLayer::new("demo");
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
    fn cached_handles_keep_counting_and_tool_labels_stay_bounded() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let layer = MetricsLayer::new("demo");
        metrics::with_local_recorder(&recorder, || {
            for _ in 0..3 {
                served(&layer, "echo", "200");
            }
            served(&layer, "echo", "429");
            for i in 0..MAX_TOOL_LABELS + 5 {
                served(&layer, &format!("t{i}"), "200");
            }
        });
        let text = handle.render();
        let line = |needle: &str| {
            text.lines()
                .find(|l| l.starts_with("mcp_gateway_requests_total") && l.contains(needle))
                .unwrap_or_else(|| panic!("no line with {needle} in\n{text}"))
                .to_owned()
        };
        assert!(line(r#"tool="echo",status="200""#).ends_with(" 3"));
        assert!(line(r#"tool="echo",status="429""#).ends_with(" 1"));
        // "echo" took one of the tool labels: the last 6 names share "other".
        assert!(line(r#"tool="other""#).ends_with(" 6"));
        let state = layer.state.lock().unwrap();
        assert_eq!(state.tools.len(), MAX_TOOL_LABELS);
        assert!(state.requests.len() <= MAX_CACHED_HANDLES);
        drop(state);
        assert!(text.contains(r#"mcp_gateway_request_duration_seconds_count{upstream="demo",mcp_method="tools/call"} 209"#), "{text}");
    }
}
