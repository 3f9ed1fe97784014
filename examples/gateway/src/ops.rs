//! The operational endpoints: `/healthz` (liveness), `/readyz` (upstreams reachable, the
//! probe's result reused for `server.readinessCacheSeconds`), `/metrics` (Prometheus),
//! each rate limited per client address (`server.opsRateLimit`).
//!
//! `/metrics` lists the tool names callers used and the gateway's inner counts: on the
//! public listener it needs an authenticated principal with `monitoring.metrics_scope`
//! (through the same IP shield, failure monitor, authentication and audit trail as the
//! MCP endpoint), unless `monitoring.metrics_public` or authentication is off. With
//! `server.adminAddr`, it is served on that listener instead (openly on a loopback
//! address, else with the same credential check), and not on the public one.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use http::header::{ALLOW, CONTENT_TYPE, HeaderValue, WWW_AUTHENTICATE};
use http::{Method, Request, Response, StatusCode};
use mcp_core::{Principal, Rejection, RejectionReason, TrustedProxies};
use mcp_ratelimit::{KeySpec, RateLimitConfig, RateLimitLayer};
use tower::ServiceBuilder;
use tower::util::option_layer;

use crate::app::Exported;
use crate::config::{ConfigError, Loaded};
use crate::layers::Layers;
use crate::proxy::Proxy;

/// The state of the operational endpoints, shared by every worker's router and the admin
/// listener: one readiness cache and one rate limit for all of them.
#[derive(Clone)]
pub struct Ops {
    readiness: Readiness,
    limit: RateLimitLayer,
    metrics_scope: Arc<str>,
    metrics_public: bool,
    auth_on: bool,
    admin: Option<SocketAddr>,
}

/// Which listener a set of routes is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// `server.addr`: `/metrics` only when there is no admin listener.
    Public,
    /// `server.adminAddr`.
    Admin,
}

impl Ops {
    /// Builds the shared state from the configuration (keys named in errors).
    /// The upstream probes use proxies built with `layers`' header lists (they forward
    /// nothing, but no proxy is built without them).
    pub fn build(loaded: &Loaded, layers: &crate::layers::Layers) -> Result<Self, ConfigError> {
        let cfg = &loaded.config;
        let proxies = crate::app::build_proxies(loaded, layers)?;
        // A burst left out is the rate rounded up, as in every ratelimit section.
        let rl = RateLimitConfig {
            requests_per_second: cfg.server.ops_rate_limit.requests_per_second,
            burst: cfg.server.ops_rate_limit.burst,
            ipv6_prefix: cfg.server.client_ipv6_prefix,
            ..RateLimitConfig::default()
        }
        .with_name("ops")
        .with_key(KeySpec::ip());
        let limit = RateLimitLayer::new(rl).map_err(|e| {
            let msg = e.to_string();
            let key = if msg.contains("burst") {
                "server.opsRateLimit.burst"
            } else {
                "server.opsRateLimit.requests_per_second"
            };
            loaded.error(key, msg)
        })?;
        let admin = cfg
            .server
            .admin_addr
            .as_deref()
            .map(|a| {
                a.parse::<SocketAddr>()
                    .map_err(|_| loaded.error("server.adminAddr", "must be an IP address and port"))
            })
            .transpose()?;
        Ok(Self {
            readiness: Readiness::new(
                proxies,
                Duration::from_secs(cfg.server.readiness_cache_seconds.max(1)),
            ),
            limit,
            metrics_scope: Arc::from(cfg.monitoring.metrics_scope.as_str()),
            metrics_public: cfg.monitoring.metrics_public,
            auth_on: cfg.auth.enabled && cfg.layers.enabled,
            admin,
        })
    }

    /// The admin listener's address, if configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
    }

    /// Whether `/metrics` on `listener` is served without a credential.
    fn metrics_open(&self, listener: Listener) -> bool {
        self.metrics_public
            || !self.auth_on
            || (listener == Listener::Admin && self.admin.is_some_and(|a| a.ip().is_loopback()))
    }

    /// Warnings for the start: `/metrics` open where it could be read by others.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.metrics_public {
            out.push(
                "monitoring.metrics_public: /metrics is served without a credential (it lists \
                 the tool names callers used)"
                    .to_owned(),
            );
        }
        out
    }

    /// The routes of `listener`: `/healthz`, `/readyz`, and `/metrics` where it belongs,
    /// rate limited per client address and with the security headers.
    pub fn routes(
        &self,
        listener: Listener,
        layers: &Layers,
        metrics: Option<Exported>,
        trusted: &TrustedProxies,
    ) -> Router {
        let readiness = self.readiness.clone();
        let mut router: Router = Router::new()
            .route("/healthz", get(|| async { "ok\n" }))
            .route(
                "/readyz",
                get(move || {
                    let r = readiness.clone();
                    async move { r.response().await }
                }),
            );
        if listener == Listener::Admin || self.admin.is_none() {
            let scope = (!self.metrics_open(listener)).then(|| self.metrics_scope.clone());
            let svc = tower::service_fn(move |req: Request<Body>| {
                let m = metrics.clone();
                let scope = scope.clone();
                async move { Ok::<_, Infallible>(metrics_response(&req, m.as_ref(), scope)) }
            });
            if self.metrics_open(listener) {
                router = router.route_service("/metrics", svc);
            } else {
                // The MCP endpoint's checks: IP shield, failure monitor, authentication,
                // every outcome in the audit trail.
                let stack = ServiceBuilder::new()
                    .layer(layers.audit_slot(trusted))
                    .layer(option_layer(crate::caps::limit_slot(&layers.ip_limit)))
                    .layer(option_layer(layers.auth_monitor.clone()))
                    .layer(option_layer(layers.auth.clone()))
                    .service(svc);
                router = router.route_service("/metrics", stack);
            }
        }
        router
            .layer(self.limit.clone())
            // The operational endpoints (and their 405s) carry the security headers too.
            .layer(option_layer(layers.security_headers.clone()))
    }
}

/// The admin listener's router (`server.adminAddr`), client addresses resolved as on the
/// public listener.
pub fn admin_router(
    loaded: &Loaded,
    layers: &Layers,
    ops: &Ops,
    metrics: Option<Exported>,
) -> Router {
    let cfg = &loaded.config;
    let trusted = TrustedProxies::new(cfg.server.trusted_proxies.iter().copied())
        .with_header(cfg.server.forwarded_header);
    ops.routes(Listener::Admin, layers, metrics, &trusted)
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
        .layer(mcp_core::ClientAddrLayer::new(trusted))
}

/// `/metrics`: GET only; with a scope, an authenticated principal holding it.
fn metrics_response(
    req: &Request<Body>,
    exported: Option<&Exported>,
    scope: Option<Arc<str>>,
) -> Response<Body> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Rejection::new(RejectionReason::MethodNotAllowed)
            .with_header(ALLOW, "GET, HEAD")
            .into_response();
    }
    if let Some(scope) = scope {
        let principal = req
            .extensions()
            .get::<Principal>()
            .filter(|p| p.is_authenticated());
        let Some(p) = principal else {
            return Rejection::new(RejectionReason::AuthFailed)
                .with_header(WWW_AUTHENTICATE, "Bearer realm=\"mcp-gateway\"")
                .into_response();
        };
        if !p.has_scope(&scope) {
            return Rejection::new(RejectionReason::InsufficientScope)
                .with_detail(scope.to_string())
                .with_header(
                    WWW_AUTHENTICATE,
                    format!(
                        "Bearer realm=\"mcp-gateway\", error=\"insufficient_scope\", scope=\"{scope}\""
                    ),
                )
                .into_response();
        }
    }
    match exported {
        Some(h) => {
            let mut r = Response::new(Body::from(h.render()));
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
        }
        None => {
            let mut r = Response::new(Body::from("metrics disabled\n"));
            *r.status_mut() = StatusCode::NOT_FOUND;
            r
        }
    }
}

/// Whether the upstreams accept connections, probed at most once per interval: callers
/// within the interval get the last result, and callers that arrive while a probe runs
/// wait for it (one probe in flight, never one per caller).
#[derive(Clone)]
pub struct Readiness {
    inner: Arc<ReadinessInner>,
}

struct ReadinessInner {
    proxies: Vec<Proxy>,
    ttl: Duration,
    /// The last result and when its probe ended; held across a probe, so that concurrent
    /// callers share it.
    last: tokio::sync::Mutex<Option<(Instant, Arc<[String]>)>>,
}

impl Readiness {
    fn new(proxies: Vec<Proxy>, ttl: Duration) -> Self {
        Self {
            inner: Arc::new(ReadinessInner {
                proxies,
                ttl,
                last: tokio::sync::Mutex::new(None),
            }),
        }
    }

    /// The names of the upstreams that did not accept a connection (empty: ready).
    pub async fn unreachable(&self) -> Arc<[String]> {
        let mut last = self.inner.last.lock().await;
        if let Some((at, down)) = last.as_ref()
            && at.elapsed() < self.inner.ttl
        {
            return down.clone();
        }
        let probes = self
            .inner
            .proxies
            .iter()
            .map(|p| async move { (!p.reachable().await).then(|| p.name().to_owned()) });
        let down: Arc<[String]> = futures_util::future::join_all(probes)
            .await
            .into_iter()
            .flatten()
            .collect();
        *last = Some((Instant::now(), down.clone()));
        down
    }

    /// The `/readyz` response: 200 `{"ready": true}`, or 503 with the unreachable names.
    pub async fn response(&self) -> Response<Body> {
        let down = self.unreachable().await;
        let (status, body) = if down.is_empty() {
            (StatusCode::OK, serde_json::json!({"ready": true}))
        } else {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({"ready": false, "unreachable": &*down}),
            )
        };
        let mut r = Response::new(Body::from(body.to_string()));
        *r.status_mut() = status;
        r.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        r
    }
}
