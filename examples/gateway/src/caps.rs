//! Caps on what one principal holds open: the rate limiters' in-flight and stream slots
//! (held by the response body until it ends), and each upstream's requests in flight,
//! in total and per principal (`upstreams[].maxConnections`,
//! `upstreams[].maxConnectionsPerPrincipal`).
//!
//! The upstream cap bounds the requests the proxy has open towards an upstream at once,
//! streams included, hence its connections to it: an HTTP/1.1 connection carries one
//! request at a time, so the pool never holds more connections than the cap (idle ones
//! included: `pool_max_idle_per_host` is set to it). One principal, or one HTTP/2 client
//! connection of many streams, gets at most its share. The counts are per replica.

use axum::body::Body;
use http::header::RETRY_AFTER;
use http::{Request, Response};
use mcp_core::{ClientAddr, JsonRpcId, Principal, Rejection, RejectionReason};
use mcp_ratelimit::{CapExceeded, ConcurrencyCap, ConcurrencyPermit, InFlightBody, RateLimitLayer};
use tower::layer::util::Stack;
use tower::util::MapResponseLayer;

use crate::config::{ConfigError, Loaded};

/// Default of `upstreams[].maxConnections`.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 256;
/// Default of `upstreams[].maxConnectionsPerPrincipal`.
pub const DEFAULT_MAX_CONNECTIONS_PER_PRINCIPAL: u32 = 64;
/// Largest value either key takes.
const MAX_CONNECTIONS_LIMIT: u32 = 100_000;

fn to_body(r: Response<InFlightBody<Body>>) -> Response<Body> {
    r.map(Body::new)
}

/// A rate limit layer whose response body (an [`InFlightBody`] holding its slots until
/// it ends) is boxed back into axum's `Body`, so that every layer outside sees one type.
pub type LimitSlot =
    Stack<RateLimitLayer, MapResponseLayer<fn(Response<InFlightBody<Body>>) -> Response<Body>>>;

/// [`LimitSlot`] of a configured limiter.
pub fn limit_slot(limit: &Option<RateLimitLayer>) -> Option<LimitSlot> {
    limit.clone().map(|l| {
        Stack::new(
            l,
            MapResponseLayer::new(to_body as fn(Response<InFlightBody<Body>>) -> Response<Body>),
        )
    })
}

/// A rate limit configuration error, named by its key under `section` when it has one
/// (`ratelimit.streams.per_session`).
pub fn ratelimit_error(
    loaded: &Loaded,
    section: &str,
    e: mcp_ratelimit::ConfigError,
) -> ConfigError {
    use mcp_ratelimit::ConfigError as E;
    let key = match &e {
        E::InvalidRate { key, .. }
        | E::InvalidBurst { key }
        | E::InvalidCost { key }
        | E::InvalidNetwork { key, .. }
        | E::OutOfRange { key, .. }
        | E::InvalidName { key, .. }
        | E::InvalidPrincipal { key, .. } => Some(key.clone()),
        _ => None,
    };
    match key {
        Some(k) => {
            let msg = e.to_string();
            let prefix = format!("`{k}` ");
            let msg = msg.strip_prefix(&prefix).unwrap_or(&msg).to_owned();
            loaded.error(&format!("{section}.{k}"), msg)
        }
        None => loaded.error(section, e.to_string()),
    }
}

/// The cap of each upstream, in the order of `upstreams` (shared by every worker's
/// router). Logged at start when an operator raised a default.
pub fn upstream_caps(loaded: &Loaded) -> Result<Vec<ConcurrencyCap>, ConfigError> {
    let mut out = Vec::new();
    for (i, up) in loaded.config.upstreams.iter().enumerate() {
        let key = |k: &str| format!("upstreams[{i}].{k}");
        let total = up.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS);
        if total == 0 || total > MAX_CONNECTIONS_LIMIT {
            return Err(loaded.error(&key("maxConnections"), "must be between 1 and 100000"));
        }
        let per = up
            .max_connections_per_principal
            .unwrap_or(DEFAULT_MAX_CONNECTIONS_PER_PRINCIPAL.min(total));
        if per == 0 || per > total {
            return Err(loaded.error(
                &key("maxConnectionsPerPrincipal"),
                "must be at least 1 and at most maxConnections",
            ));
        }
        if up
            .max_connections_per_principal
            .is_some_and(|p| p > DEFAULT_MAX_CONNECTIONS_PER_PRINCIPAL)
        {
            tracing::warn!(
                upstream = %up.name,
                "upstreams[{i}].maxConnectionsPerPrincipal: one principal may hold {per} requests to this upstream at once (default {DEFAULT_MAX_CONNECTIONS_PER_PRINCIPAL})"
            );
        }
        let cap = ConcurrencyCap::new(total, per)
            .map_err(|e| loaded.error(&key("maxConnections"), e.to_string()))?;
        out.push(cap);
    }
    Ok(out)
}

/// Whose share a request takes: the authenticated principal's qualified id, else the
/// client address (authentication off or anonymous), else one shared `unknown` share.
pub fn share_key<B>(req: &Request<B>) -> String {
    let ext = req.extensions();
    match (ext.get::<Principal>(), ext.get::<ClientAddr>()) {
        (Some(p), _) if p.is_authenticated() => format!("p:{}", p.qualified_id()),
        (_, Some(a)) => format!("ip:{}", a.ip()),
        _ => "unknown".to_owned(),
    }
}

/// The proxy's admission towards `upstream` ([`acquire`] with its cap).
pub fn admit(cap: ConcurrencyCap, upstream: String) -> crate::proxy::Admit {
    std::sync::Arc::new(move |req, id| acquire(&cap, &upstream, req, id))
}

/// Takes an upstream permit for the request, or the refusal: 429 when the principal holds
/// its share (`ConcurrencyLimited`), 503 when the upstream's cap is reached
/// (`Unavailable`); both with `Retry-After: 1`, a JSON-RPC error echoing the id, and a
/// typed reason (detail `upstream_per_principal:<name>` / `upstream_connections:<name>`)
/// for the audit trail; counted in `mcp_gateway_upstream_limited_total`.
pub fn acquire<B>(
    cap: &ConcurrencyCap,
    upstream: &str,
    req: &Request<B>,
    id: Option<JsonRpcId>,
) -> Result<ConcurrencyPermit, Box<Response<Body>>> {
    match cap.try_acquire(&share_key(req)) {
        Ok(p) => Ok(p),
        Err(e) => {
            let (scope, r) = match e {
                CapExceeded::PerKey => (
                    "principal",
                    Rejection::new(RejectionReason::ConcurrencyLimited)
                        .with_message(
                            "Too many concurrent requests to this upstream for this principal",
                        )
                        .with_detail(format!("upstream_per_principal:{upstream}")),
                ),
                CapExceeded::Total => (
                    "upstream",
                    Rejection::new(RejectionReason::Unavailable)
                        .with_message("Upstream busy: too many concurrent requests")
                        .with_detail(format!("upstream_connections:{upstream}")),
                ),
            };
            metrics::counter!(
                "mcp_gateway_upstream_limited_total",
                "upstream" => upstream.to_owned(),
                "scope" => scope
            )
            .increment(1);
            Err(Box::new(
                r.with_id(id).with_header(RETRY_AFTER, "1").into_response(),
            ))
        }
    }
}
