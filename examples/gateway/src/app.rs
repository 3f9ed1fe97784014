//! Assembling the gateway: configuration -> layers -> reverse proxy, plus the
//! operational endpoints.
//!
//! Request path (outermost first), as in the design:
//!
//! ```text
//! TLS accept (mcp-tls: PeerAddr, TlsInfo) -> client address (trusted proxies only)
//!   -> metrics -> request id + audit -> security headers -> transport checks
//!   -> Origin/Host guard
//!   -> rate limit by IP -> authentication failure monitor -> authenticate
//!   -> body limit + parse once + sanitize -> session binding -> session guard
//!   -> rate limit by principal, method and tool -> authorize tool -> reverse proxy
//! ```

use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use http::header::{HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use mcp_core::{ClientAddrLayer, TrustedProxies};
use metrics_exporter_prometheus::PrometheusHandle;
use tower::ServiceBuilder;
use tower::util::{BoxCloneSyncService, option_layer};

use crate::config::{Config, Loaded};
use crate::layers::Layers;
use crate::observe::MetricsLayer;
use crate::proxy::{ForwardQuery, Proxy, UpstreamSpec, UpstreamTls};

/// Paths the gateway serves itself.
pub const RESERVED_PATHS: &[&str] = &["/healthz", "/readyz", "/metrics", "/api/audit/query"];

/// What `/metrics` renders: the recorder, and the connection counts of the accept loops
/// (read when scraped).
#[derive(Clone)]
pub struct Exported {
    /// The Prometheus recorder's handle.
    pub handle: PrometheusHandle,
    /// The connection limit every worker's accept loop shares.
    pub connections: mcp_tls::ConnectionLimit,
    /// The TLS acceptor, once started (its reload counts).
    pub tls: std::sync::Arc<std::sync::OnceLock<mcp_tls::TlsAcceptor>>,
}

impl Exported {
    /// Sets the connection series from the accept loops' counts, then renders.
    pub(crate) fn render(&self) -> String {
        let s = self.connections.stats();
        metrics::gauge!("mcp_gateway_connections_open").set(s.open as f64);
        metrics::gauge!("mcp_gateway_connections_max").set(s.max as f64);
        metrics::counter!("mcp_gateway_connections_accepted_total").absolute(s.accepted);
        metrics::counter!("mcp_gateway_connections_idle_closed_total").absolute(s.idle_closed);
        metrics::counter!("mcp_gateway_connections_write_timed_out_total")
            .absolute(s.write_timed_out);
        metrics::counter!("mcp_gateway_http2_streams_write_timed_out_total")
            .absolute(s.streams_write_timed_out);
        metrics::counter!("mcp_gateway_connections_per_client_refused_total")
            .absolute(s.per_client_refused);
        metrics::counter!("mcp_gateway_http2_streams_refused_over_budget_total")
            .absolute(s.streams_refused_over_budget);
        metrics::counter!("mcp_gateway_request_bodies_over_budget_total")
            .absolute(s.request_bodies_over_budget);
        metrics::gauge!("mcp_gateway_connections_max_per_client").set(s.max_per_client as f64);
        metrics::counter!("mcp_gateway_tls_handshake_failures_total", "reason" => "failed")
            .absolute(s.tls_handshake_failed);
        metrics::counter!("mcp_gateway_tls_handshake_failures_total", "reason" => "timed_out")
            .absolute(s.tls_handshake_timed_out);
        metrics::counter!("mcp_gateway_tls_sni_ignored_total", "reason" => "ip_address")
            .absolute(s.tls_sni_ip_address);
        metrics::counter!("mcp_gateway_tls_sni_ignored_total", "reason" => "invalid")
            .absolute(s.tls_sni_invalid);
        if let Some(tls) = self.tls.get() {
            let t = tls.stats();
            metrics::counter!("mcp_gateway_tls_reloads_total", "outcome" => "reloaded")
                .absolute(t.reloaded);
            metrics::counter!("mcp_gateway_tls_reloads_total", "outcome" => "failed")
                .absolute(t.reload_failed);
            metrics::counter!("mcp_gateway_tls_reloads_total", "outcome" => "unchanged").absolute(
                t.reload_checks
                    .saturating_sub(t.reloaded)
                    .saturating_sub(t.reload_failed),
            );
        }
        self.handle.render()
    }
}

/// Builds the proxies for the configured upstreams: each strips every credential header
/// and every untrusted client header of `layers`, and sets its principal header.
pub fn build_proxies(
    loaded: &Loaded,
    layers: &Layers,
) -> Result<Vec<Proxy>, crate::config::ConfigError> {
    let cfg = &loaded.config;
    let strip: Vec<HeaderName> = layers.credential_headers.clone();
    let mut proxies = Vec::new();
    for (i, up) in cfg.upstreams.iter().enumerate() {
        let key = |k: &str| format!("upstreams[{i}].{k}");
        let url: Uri = up
            .url
            .parse()
            .map_err(|_| loaded.error(&key("url"), "not a valid URL"))?;
        match url.scheme_str() {
            Some("http" | "https") => {}
            _ => return Err(loaded.error(&key("url"), "must be an http:// or https:// URL")),
        }
        if url.host().is_none() {
            return Err(loaded.error(&key("url"), "must name a host"));
        }
        // User info is never sent (the HTTP client does not turn it into credentials):
        // dropped here so that no connection pool key or trace line holds it.
        let url = match url.authority().map(|a| a.as_str()) {
            Some(a) if a.contains('@') => {
                tracing::warn!(
                    upstream = %up.name,
                    "upstreams[{i}].url: the user info is ignored (not sent upstream); use upstreams[{i}].headers for credentials"
                );
                let host = a.rsplit_once('@').map_or(a, |(_, h)| h);
                let mut parts = url.clone().into_parts();
                parts.authority = host.parse().ok();
                Uri::from_parts(parts).map_err(|_| loaded.error(&key("url"), "not a valid URL"))?
            }
            _ => url,
        };
        let mut inject = Vec::new();
        for (name, value) in &up.headers {
            let n = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                loaded.error(
                    &key("headers"),
                    format!("`{name}` is not a valid header name"),
                )
            })?;
            // The principal and client-certificate headers are the gateway's word: an
            // injected value would stand for every caller.
            if [&layers.principal_header, &layers.client_cert_header]
                .into_iter()
                .flatten()
                .any(|own| mcp_core::headers::same_header_name(own.as_str(), n.as_str()))
            {
                return Err(loaded.error(
                    &key("headers"),
                    format!("`{name}` is the header the gateway sets to the verified caller (security.upstreamHeaders)"),
                ));
            }
            let mut v = HeaderValue::from_str(value.expose()).map_err(|_| {
                loaded.error(
                    &key("headers"),
                    format!("the value of `{name}` is not a valid header value (not shown)"),
                )
            })?;
            v.set_sensitive(true);
            inject.push((n, v));
        }
        let forward_query = forward_query(loaded, i, &url)?;
        let tls = up.tls.clone().unwrap_or_default();
        let spec = UpstreamSpec {
            name: up.name.clone(),
            url,
            inject,
            strip: strip.clone(),
            untrusted: layers.untrusted.clone(),
            response_headers: layers.response_headers.clone(),
            forward_query,
            principal_header: layers.principal_header.clone(),
            client_cert_header: layers.client_cert_header.clone(),
            connect_timeout: Duration::from_millis(up.connect_timeout_ms.unwrap_or(5_000)),
            response_timeout: Duration::from_millis(
                up.response_timeout_ms
                    .unwrap_or(crate::config::DEFAULT_RESPONSE_TIMEOUT_MS),
            ),
            body_idle_timeout: Duration::from_millis(
                up.body_idle_timeout_ms
                    .unwrap_or(crate::config::DEFAULT_BODY_IDLE_TIMEOUT_MS),
            ),
            response_deadline: Duration::from_millis(
                up.response_deadline_ms
                    .unwrap_or(crate::config::DEFAULT_RESPONSE_DEADLINE_MS),
            ),
            sse_idle_timeout: match up
                .sse_idle_timeout_ms
                .unwrap_or(crate::config::DEFAULT_SSE_IDLE_TIMEOUT_MS)
            {
                0 => None,
                ms => Some(Duration::from_millis(ms)),
            },
            request_body_timeout: Duration::from_secs(loaded.config.server.body_timeout_seconds),
            tls: UpstreamTls {
                ca_file: tls.ca_file,
                cert_file: tls.cert_file,
                key_file: tls.key_file,
            },
            admit: layers
                .upstream_caps
                .get(i)
                .map(|cap| crate::caps::admit(cap.clone(), up.name.clone())),
            max_connections: layers.upstream_caps.get(i).map(|c| c.limits().0),
        };
        proxies.push(Proxy::new(spec).map_err(|e| loaded.error(&key("tls"), e.to_string()))?);
    }
    Ok(proxies)
}

/// `upstreams[i].forwardQuery`: the client query parameters forwarded (logged when any).
fn forward_query(
    loaded: &Loaded,
    i: usize,
    url: &Uri,
) -> Result<ForwardQuery, crate::config::ConfigError> {
    let up = &loaded.config.upstreams[i];
    let key = format!("upstreams[{i}].forwardQuery");
    if up.forward_query.is_empty() {
        return Ok(ForwardQuery::Nothing);
    }
    let operator = crate::proxy::operator_params(url);
    let forward = if up.forward_query.iter().any(|n| n == "*") {
        if up.forward_query.len() > 1 {
            return Err(loaded.error(&key, "\"*\" stands alone"));
        }
        ForwardQuery::All
    } else {
        let mut names = Vec::new();
        for n in &up.forward_query {
            if n.is_empty()
                || n.bytes().any(|b| {
                    !(0x21..=0x7e).contains(&b)
                        || matches!(b, b'=' | b'&' | b';' | b'%' | b'[' | b']' | b'+' | b'#')
                })
            {
                return Err(loaded.error(
                    &key,
                    format!("`{n}` is not a parameter name (written plainly, without =, &, ;, %, [, ], +, # or spaces)"),
                ));
            }
            let canonical = crate::proxy::query_param_name(n);
            if operator.contains(&canonical) {
                return Err(loaded.error(
                    &key,
                    format!(
                        "`{n}` is a parameter of upstreams[{i}].url: a client can never set it"
                    ),
                ));
            }
            names.push(canonical);
        }
        ForwardQuery::Names(names)
    };
    tracing::warn!(
        upstream = %up.name,
        "upstreams[{i}].forwardQuery: client query parameters {:?} are forwarded to the upstream (after the URL's own, which a client can never set)",
        up.forward_query
    );
    Ok(forward)
}

/// Builds a router over already built layers, with upstream connection pools of its
/// own: each worker thread serves one, so that a request and its upstream connection
/// are handled on the same thread. The layers' state (rate limits, audit trail, keys)
/// is shared by every router built from the same [`Layers`].
pub fn router(
    loaded: &Loaded,
    layers: &Layers,
    metrics: Option<Exported>,
) -> Result<Router, crate::config::ConfigError> {
    let cfg: &Config = &loaded.config;
    let proxies = build_proxies(loaded, layers)?;
    let trusted = TrustedProxies::new(cfg.server.trusted_proxies.iter().copied())
        .with_header(cfg.server.forwarded_header);

    // Credentials in the query are refused whatever authentication says: with it on,
    // the authentication layer refuses them (with its challenges); with it off, this.
    let query_guard = layers.auth.is_none().then(|| {
        mcp_auth::QueryCredentialsLayer::new().credential_headers(layers.credential_headers.clone())
    });
    let mut router: Router = Router::new();
    for (proxy, up) in proxies.iter().zip(&cfg.upstreams) {
        let p = proxy.clone();
        let svc = tower::service_fn(move |req: Request<Body>| {
            let p = p.clone();
            async move { Ok::<_, Infallible>(p.forward(req).await) }
        });
        // Result redaction wraps the proxy; its body is boxed back into axum's Body so
        // that every layer outside sees one response type.
        let svc: BoxCloneSyncService<Request<Body>, Response<Body>, Infallible> =
            match layers.result_scan.clone() {
                Some(scan) => BoxCloneSyncService::new(
                    ServiceBuilder::new()
                        .map_response(|r: Response<_>| r.map(Body::new))
                        .layer(scan)
                        .service(svc),
                ),
                None => BoxCloneSyncService::new(svc),
            };
        let stack = ServiceBuilder::new()
            .layer(MetricsLayer::new(&up.name))
            .layer(layers.audit_slot(&trusted))
            .layer(option_layer(layers.security_headers.clone()))
            .layer(option_layer(layers.transport.clone()))
            .layer(option_layer(layers.origin.clone()))
            .layer(option_layer(crate::caps::limit_slot(&layers.ip_limit)))
            .layer(option_layer(layers.auth_monitor.clone()))
            .layer(option_layer(layers.auth.clone()))
            .layer(option_layer(query_guard.clone()))
            .layer(option_layer(layers.held_bodies.clone()))
            .layer(option_layer(layers.parse.clone()))
            // The session binding keeps the upstream with each session, to end it there.
            .layer(tower::util::MapRequestLayer::new({
                let route = mcp_auth::SessionRoute(up.name.as_str().into());
                move |mut req: Request<Body>| {
                    req.extensions_mut().insert(route.clone());
                    req
                }
            }))
            .layer(option_layer(layers.sessions.clone()))
            // After the binding: a session of another principal is a 404 there, before
            // this layer answers anything about it.
            .layer(option_layer(layers.session_guard.clone().map(|g| {
                ServiceBuilder::new()
                    .map_response(|r: Response<mcp_sanitize::GuardBody<Body>>| r.map(Body::new))
                    .layer(g)
                    .into_inner()
            })))
            // After parsing: per-method and per-tool quotas and costs read the parsed
            // request (before it, every request cost 1 and no tool quota applied).
            .layer(option_layer(crate::caps::limit_slot(
                &layers.principal_limit,
            )))
            .layer(option_layer(layers.authorize.clone()))
            .service(svc);
        router = router.route_service(&up.path, stack);
    }

    // /healthz, /readyz and (without an admin listener) /metrics: see crate::ops.
    let ops = match &layers.ops {
        Some(ops) => ops.clone(),
        None => crate::ops::Ops::build(loaded, layers)?,
    };
    router = router.merge(ops.routes(crate::ops::Listener::Public, layers, metrics, &trusted));
    if let Some(query) = layers.auditor.as_ref().and_then(|a| a.query_service()) {
        // Authenticated, and the query service itself requires the audit scope.
        let stack = ServiceBuilder::new()
            .layer(MetricsLayer::new("audit-query"))
            .layer(layers.audit_slot(&trusted))
            .layer(option_layer(layers.security_headers.clone()))
            .layer(option_layer(crate::caps::limit_slot(&layers.ip_limit)))
            .layer(option_layer(layers.auth_monitor.clone()))
            .layer(option_layer(layers.auth.clone()))
            .service(query);
        router = router.route_service("/api/audit/query", stack);
    }
    // So does the 404 of a path the gateway does not serve.
    let router = router.fallback_service(
        ServiceBuilder::new()
            .layer(option_layer(layers.security_headers.clone()))
            .service_fn(not_found),
    );
    // Outermost: every credential header's value is marked sensitive, so that no log of
    // the request (a trace layer, a Debug print) shows it.
    // Every spelling too (`X_API_Key`), and every header whose name suggests a secret.
    let names: std::sync::Arc<[HeaderName]> = layers.credential_headers.clone().into();
    Ok(router
        .layer(ClientAddrLayer::new(trusted))
        .layer(mcp_audit::sensitive_headers_layer(
            layers.credential_headers.clone(),
        ))
        .layer(tower::util::MapRequestLayer::new(
            move |mut req: Request<Body>| {
                mcp_audit::headers::mark_sensitive(req.headers_mut(), &names);
                req
            },
        )))
}

/// The answer to a path the gateway does not serve.
async fn not_found(_: Request<Body>) -> Result<Response<Body>, Infallible> {
    let mut r = Response::new(Body::from("not found\n"));
    *r.status_mut() = StatusCode::NOT_FOUND;
    Ok(r)
}
