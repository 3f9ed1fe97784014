//! [`OriginGuardLayer`]: the Origin and Host guard against DNS rebinding, for every method.
//!
//! The MCP Streamable HTTP transport requires servers to validate `Origin` so that a web
//! page cannot drive a local or internal MCP server through the victim's browser. The
//! rules are those of [`OriginConfig`]. The gateway places this layer before
//! authentication; [`SanitizeLayer`](crate::SanitizeLayer) applies the same rules again,
//! which is cheap and harmless.
//!
//! ```
//! use axum::{Router, routing::post};
//! use mcp_sanitize::{OriginConfig, OriginGuardLayer};
//!
//! let guard = OriginGuardLayer::new(&OriginConfig {
//!     allowed_origins: vec!["https://app.example.com".into()],
//!     allowed_hosts: vec!["mcp.example.com".into()],
//!     ..Default::default()
//! })
//! .unwrap();
//! let app: Router = Router::new().route("/mcp", post(|| async { "ok" })).layer(guard);
//! ```

use std::net::IpAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{HOST, ORIGIN};
use http::{HeaderMap, Request, Response, Uri};
use mcp_core::{Rejection, RejectionReason};
use tower_layer::Layer;
use tower_service::Service;

use crate::config::{ConfigError, OriginConfig};
use crate::future::ResponseFuture;

#[derive(Debug)]
struct HostRule {
    host: String,
    port: Option<u16>,
}

/// Compiled Origin and Host rules.
#[derive(Debug)]
pub(crate) struct OriginPolicy {
    origins: Vec<String>,
    loopback: bool,
    hosts: Vec<HostRule>,
}

/// Splits `host[:port]` (with `[v6]` brackets), lowercasing and dropping trailing dots.
fn split_host_port(s: &str) -> Option<(String, Option<u16>)> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let end = rest.find(']')?;
        let host = &s[..end + 2];
        let after = &rest[end + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.parse::<u16>().ok()?),
            None if after.is_empty() => None,
            None => return None,
        };
        (host, port)
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p.parse::<u16>().ok()?)),
            None => (s, None),
        }
    };
    if host.is_empty()
        || host
            .bytes()
            .any(|b| b.is_ascii_whitespace() || matches!(b, b'/' | b'@' | b'?' | b'#'))
    {
        return None;
    }
    Some((host.trim_end_matches('.').to_ascii_lowercase(), port))
}

/// Normalises an origin: `scheme://host[:port]` with lowercase scheme and host and the
/// default port removed, or `None` if it is not a tuple origin.
fn normalize_origin(s: &str) -> Option<String> {
    let url = url::Url::parse(s.trim()).ok()?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return None;
    }
    if url.path() != "/" && !url.path().is_empty() || url.query().is_some() {
        return None;
    }
    let o = url.origin();
    o.is_tuple().then(|| o.ascii_serialization())
}

fn is_loopback_host(host: &str) -> bool {
    let h = host.trim_end_matches('.');
    if h.eq_ignore_ascii_case("localhost") {
        return true;
    }
    let bare = h
        .strip_prefix('[')
        .and_then(|x| x.strip_suffix(']'))
        .unwrap_or(h);
    bare.parse::<IpAddr>()
        .is_ok_and(|ip| ip.to_canonical().is_loopback())
}

impl OriginPolicy {
    pub(crate) fn new(cfg: &OriginConfig) -> Result<Self, ConfigError> {
        let mut origins = Vec::new();
        for (i, o) in cfg.allowed_origins.iter().enumerate() {
            let key = format!("origin.allowed_origins[{i}]");
            if o.contains('*') {
                return Err(ConfigError::invalid(key, "wildcards are not allowed"));
            }
            let n = normalize_origin(o).ok_or_else(|| {
                ConfigError::invalid(
                    key,
                    "must be an http(s) origin such as https://app.example.com",
                )
            })?;
            origins.push(n);
        }
        let mut hosts = Vec::new();
        for (i, h) in cfg.allowed_hosts.iter().enumerate() {
            let (host, port) = split_host_port(h).ok_or_else(|| {
                ConfigError::invalid(
                    format!("origin.allowed_hosts[{i}]"),
                    "must be host or host:port",
                )
            })?;
            hosts.push(HostRule { host, port });
        }
        Ok(Self {
            origins,
            loopback: cfg.allow_loopback_origins,
            hosts,
        })
    }

    fn request_host<'a>(headers: &'a HeaderMap, uri: &'a Uri) -> Option<&'a str> {
        match headers.get(HOST) {
            Some(v) => v.to_str().ok(),
            None => uri.authority().map(|a| a.as_str()),
        }
    }

    /// Checks the Host and Origin of a request.
    pub(crate) fn check(&self, headers: &HeaderMap, uri: &Uri) -> Result<(), Rejection> {
        let host = Self::request_host(headers, uri);
        if headers.get_all(HOST).iter().count() > 1 {
            return Err(
                Rejection::new(RejectionReason::HostNotAllowed).with_detail("host_repeated")
            );
        }
        if !self.hosts.is_empty() {
            let allowed = host.and_then(split_host_port).is_some_and(|(h, p)| {
                self.hosts
                    .iter()
                    .any(|r| r.host == h && (r.port.is_none() || r.port == p))
            });
            if !allowed {
                return Err(Rejection::new(RejectionReason::HostNotAllowed));
            }
        }
        let mut origins = headers.get_all(ORIGIN).iter();
        let Some(origin) = origins.next() else {
            return Ok(());
        };
        if origins.next().is_some() {
            return Err(
                Rejection::new(RejectionReason::OriginNotAllowed).with_detail("origin_repeated")
            );
        }
        let refused = || Rejection::new(RejectionReason::OriginNotAllowed);
        let origin = origin.to_str().map_err(|_| refused())?;
        let normalized = normalize_origin(origin).ok_or_else(refused)?;
        if self.origins.contains(&normalized) {
            return Ok(());
        }
        if self.loopback {
            let origin_host = url::Url::parse(&normalized)
                .ok()
                .and_then(|u| u.host_str().map(str::to_owned));
            let request_loopback = host
                .and_then(split_host_port)
                .is_some_and(|(h, _)| is_loopback_host(&h));
            if request_loopback && origin_host.is_some_and(|h| is_loopback_host(&h)) {
                return Ok(());
            }
        }
        Err(refused())
    }
}

/// Put in the request extensions by [`OriginGuard`] once a request passed it, so that
/// [`SanitizeLayer`](crate::SanitizeLayer) further in does not check Origin and Host again
/// (with a configuration that may differ).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OriginChecked;

/// A layer refusing requests whose `Origin` or `Host` is not allowed (403), whatever the
/// method.
#[derive(Debug, Clone)]
pub struct OriginGuardLayer {
    policy: Arc<OriginPolicy>,
}

impl OriginGuardLayer {
    /// Builds the layer, validating the configuration.
    pub fn new(config: &OriginConfig) -> Result<Self, ConfigError> {
        Ok(Self {
            policy: Arc::new(OriginPolicy::new(config)?),
        })
    }
}

impl<S> Layer<S> for OriginGuardLayer {
    type Service = OriginGuard<S>;

    fn layer(&self, inner: S) -> Self::Service {
        OriginGuard {
            inner,
            policy: self.policy.clone(),
        }
    }
}

/// The service made by [`OriginGuardLayer`].
#[derive(Debug, Clone)]
pub struct OriginGuard<S> {
    inner: S,
    policy: Arc<OriginPolicy>,
}

impl<S> OriginGuard<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, config: &OriginConfig) -> Result<Self, ConfigError> {
        Ok(OriginGuardLayer::new(config)?.layer(inner))
    }
}

impl<S, B, ResBody> Service<Request<B>> for OriginGuard<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    ResBody: From<Bytes>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        match self.policy.check(req.headers(), req.uri()) {
            Ok(()) => {
                req.extensions_mut().insert(OriginChecked);
                ResponseFuture::inner(self.inner.call(req), None)
            }
            Err(rejection) => ResponseFuture::rejected(rejection.into_response()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(cfg: &OriginConfig, host: Option<&str>, origin: Option<&str>) -> bool {
        let p = OriginPolicy::new(cfg).unwrap();
        let mut h = HeaderMap::new();
        if let Some(x) = host {
            h.insert(HOST, x.parse().unwrap());
        }
        if let Some(o) = origin {
            h.insert(ORIGIN, o.parse().unwrap());
        }
        p.check(&h, &Uri::from_static("/mcp")).is_ok()
    }

    #[test]
    fn origins() {
        let cfg = OriginConfig {
            allowed_origins: vec!["https://App.Example.com:443".into()],
            ..Default::default()
        };
        assert!(check(&cfg, Some("mcp.example.com"), None));
        assert!(check(
            &cfg,
            Some("mcp.example.com"),
            Some("https://app.example.com")
        ));
        assert!(check(
            &cfg,
            Some("mcp.example.com"),
            Some("HTTPS://APP.EXAMPLE.COM")
        ));
        assert!(!check(
            &cfg,
            Some("mcp.example.com"),
            Some("https://app.example.com:8443")
        ));
        assert!(!check(
            &cfg,
            Some("mcp.example.com"),
            Some("http://app.example.com")
        ));
        assert!(!check(
            &cfg,
            Some("mcp.example.com"),
            Some("https://evil.com")
        ));
        assert!(!check(
            &cfg,
            Some("mcp.example.com"),
            Some("https://app.example.com.evil.com")
        ));
        assert!(!check(&cfg, Some("mcp.example.com"), Some("null")));
        assert!(!check(&cfg, Some("mcp.example.com"), Some("file://")));
    }

    #[test]
    fn loopback_origins_only_with_loopback_host() {
        let cfg = OriginConfig::default();
        assert!(check(
            &cfg,
            Some("localhost:8080"),
            Some("http://localhost:6274")
        ));
        assert!(check(
            &cfg,
            Some("127.0.0.1:8080"),
            Some("http://127.0.0.1:8080")
        ));
        assert!(check(&cfg, Some("[::1]:8080"), Some("http://[::1]:3000")));
        // DNS rebinding: the page's name is in Host.
        assert!(!check(
            &cfg,
            Some("rebind.evil.com:8080"),
            Some("http://rebind.evil.com:8080")
        ));
        assert!(!check(
            &cfg,
            Some("localhost:8080"),
            Some("http://evil.com")
        ));
        assert!(!check(&cfg, Some("evil.com"), Some("http://localhost")));
        let strict = OriginConfig {
            allow_loopback_origins: false,
            ..Default::default()
        };
        assert!(!check(
            &strict,
            Some("localhost:8080"),
            Some("http://localhost:6274")
        ));
    }

    #[test]
    fn hosts() {
        let cfg = OriginConfig {
            allowed_hosts: vec![
                "mcp.example.com".into(),
                "localhost:8080".into(),
                "[::1]".into(),
            ],
            ..Default::default()
        };
        assert!(check(&cfg, Some("mcp.example.com"), None));
        assert!(check(&cfg, Some("MCP.example.com.:443"), None));
        assert!(check(&cfg, Some("localhost:8080"), None));
        assert!(check(&cfg, Some("[::1]:9"), None));
        assert!(!check(&cfg, Some("localhost:8081"), None));
        assert!(!check(&cfg, Some("localhost"), None));
        assert!(!check(&cfg, Some("evil.com"), None));
        assert!(!check(&cfg, Some("mcp.example.com@evil.com"), None));
        assert!(!check(&cfg, None, None));
    }

    #[test]
    fn bad_config() {
        for o in [
            "*",
            "https://*.example.com",
            "not a url",
            "https://a.com/path",
        ] {
            let cfg = OriginConfig {
                allowed_origins: vec![o.into()],
                ..Default::default()
            };
            let e = OriginPolicy::new(&cfg).unwrap_err();
            assert_eq!(e.key, "origin.allowed_origins[0]");
        }
        let cfg = OriginConfig {
            allowed_hosts: vec!["a b".into()],
            ..Default::default()
        };
        assert!(OriginPolicy::new(&cfg).is_err());
    }
}
