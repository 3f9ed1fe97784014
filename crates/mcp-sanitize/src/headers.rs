//! [`SecurityHeadersLayer`]: security response headers, HSTS only over TLS, and removal of
//! headers that reveal the server.
//!
//! Defaults (suited to a JSON API, which is never framed, sniffed or rendered):
//!
//! | header | value |
//! |---|---|
//! | `X-Frame-Options` | `DENY` |
//! | `X-Content-Type-Options` | `nosniff` |
//! | `Referrer-Policy` | `no-referrer` |
//! | `Content-Security-Policy` | `default-src 'none'; frame-ancestors 'none'` |
//! | `Cross-Origin-Resource-Policy` | `same-origin` |
//! | `Cache-Control` | not set (an MCP server may cache; add it to `headers` if wanted) |
//! | `Strict-Transport-Security` | `max-age=31536000; includeSubDomains`, only when the request carries `mcp_core::TlsInfo` |
//!
//! and `Server` and `X-Powered-By` are removed. The seeds' `security.headers` map sets or
//! replaces headers; a `Strict-Transport-Security` entry there becomes the HSTS value
//! (still only sent over TLS: HSTS over plain HTTP is ignored by browsers and misleading).
//! Deliberate difference from the seeds: `X-XSS-Protection: 1; mode=block` is not sent by
//! default (the filter it enables is gone from browsers and could introduce leaks);
//! `default-src 'self'` is replaced by `'none'` since a JSON API loads nothing.
//!
//! ```
//! use axum::{Router, routing::get};
//! use mcp_sanitize::{SecurityHeadersConfig, SecurityHeadersLayer};
//!
//! let mut cfg = SecurityHeadersConfig::default();
//! cfg.headers.insert("Permissions-Policy".into(), "interest-cohort=()".into());
//! let app: Router = Router::new()
//!     .route("/", get(|| async { "ok" }))
//!     .layer(SecurityHeadersLayer::new(&cfg).unwrap());
//! ```

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::{HeaderName, HeaderValue, STRICT_TRANSPORT_SECURITY};
use http::{Request, Response};
use mcp_core::TlsInfo;
use pin_project_lite::pin_project;
use serde::{Deserialize, Serialize};
use tower_layer::Layer;
use tower_service::Service;

use crate::config::ConfigError;

/// The default HSTS value.
pub const DEFAULT_HSTS: &str = "max-age=31536000; includeSubDomains";

/// Configuration of [`SecurityHeadersLayer`] (the seeds' `security.headers` plus removal).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecurityHeadersConfig {
    /// Headers to set (name → value). Starts with the defaults listed in the module docs.
    pub headers: BTreeMap<String, String>,
    /// The HSTS value sent over TLS; `None` disables HSTS.
    pub hsts: Option<String>,
    /// Headers removed from every response (default `Server`, `X-Powered-By`).
    pub remove: Vec<String>,
    /// Replace a header the inner service already set (default true); when false, only
    /// missing headers are added.
    pub override_existing: bool,
}

impl Default for SecurityHeadersConfig {
    fn default() -> Self {
        let headers = [
            ("X-Frame-Options", "DENY"),
            ("X-Content-Type-Options", "nosniff"),
            ("Referrer-Policy", "no-referrer"),
            (
                "Content-Security-Policy",
                "default-src 'none'; frame-ancestors 'none'",
            ),
            ("Cross-Origin-Resource-Policy", "same-origin"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        Self {
            headers,
            hsts: Some(DEFAULT_HSTS.to_owned()),
            remove: vec!["server".into(), "x-powered-by".into()],
            override_existing: true,
        }
    }
}

#[derive(Debug)]
struct Compiled {
    set: Vec<(HeaderName, HeaderValue)>,
    hsts: Option<HeaderValue>,
    remove: Vec<HeaderName>,
    override_existing: bool,
}

/// The security headers layer.
#[derive(Debug, Clone)]
pub struct SecurityHeadersLayer {
    compiled: Arc<Compiled>,
}

impl Default for SecurityHeadersLayer {
    fn default() -> Self {
        Self {
            compiled: Arc::new(Compiled {
                set: SecurityHeadersConfig::default()
                    .headers
                    .iter()
                    .filter_map(|(k, v)| {
                        Some((
                            HeaderName::try_from(k.as_str()).ok()?,
                            HeaderValue::try_from(v.as_str()).ok()?,
                        ))
                    })
                    .collect(),
                hsts: Some(HeaderValue::from_static(DEFAULT_HSTS)),
                remove: vec![
                    http::header::SERVER,
                    HeaderName::from_static("x-powered-by"),
                ],
                override_existing: true,
            }),
        }
    }
}

impl SecurityHeadersLayer {
    /// Builds the layer; header names and values are validated.
    pub fn new(config: &SecurityHeadersConfig) -> Result<Self, ConfigError> {
        let mut set = Vec::new();
        let mut hsts =
            match &config.hsts {
                Some(v) => Some(HeaderValue::try_from(v.as_str()).map_err(|_| {
                    ConfigError::invalid("security.hsts", "not a valid header value")
                })?),
                None => None,
            };
        for (k, v) in &config.headers {
            let key = format!("security.headers.{k}");
            let name = HeaderName::try_from(k.as_str())
                .map_err(|_| ConfigError::invalid(key.clone(), "not a valid header name"))?;
            let value = HeaderValue::try_from(v.as_str())
                .map_err(|_| ConfigError::invalid(key, "not a valid header value"))?;
            if name == STRICT_TRANSPORT_SECURITY {
                hsts = Some(value);
            } else {
                set.push((name, value));
            }
        }
        let mut remove = Vec::new();
        for (i, r) in config.remove.iter().enumerate() {
            remove.push(HeaderName::try_from(r.as_str()).map_err(|_| {
                ConfigError::invalid(format!("security.remove[{i}]"), "not a valid header name")
            })?);
        }
        Ok(Self {
            compiled: Arc::new(Compiled {
                set,
                hsts,
                remove,
                override_existing: config.override_existing,
            }),
        })
    }
}

impl<S> Layer<S> for SecurityHeadersLayer {
    type Service = SecurityHeaders<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SecurityHeaders {
            inner,
            compiled: self.compiled.clone(),
        }
    }
}

/// The service made by [`SecurityHeadersLayer`].
#[derive(Debug, Clone)]
pub struct SecurityHeaders<S> {
    inner: S,
    compiled: Arc<Compiled>,
}

impl<S, B, ResBody> Service<Request<B>> for SecurityHeaders<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = HeadersFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let tls = req.extensions().get::<TlsInfo>().is_some();
        HeadersFuture {
            future: self.inner.call(req),
            compiled: self.compiled.clone(),
            tls,
        }
    }
}

pin_project! {
    /// Response future of [`SecurityHeaders`].
    pub struct HeadersFuture<F> {
        #[pin]
        future: F,
        compiled: Arc<Compiled>,
        tls: bool,
    }
}

impl<F, ResBody, E> Future for HeadersFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = Result<Response<ResBody>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = match this.future.poll(cx) {
            Poll::Ready(Ok(r)) => r,
            other => return other,
        };
        let c = &**this.compiled;
        let headers = response.headers_mut();
        for name in &c.remove {
            headers.remove(name);
        }
        for (name, value) in &c.set {
            if c.override_existing || !headers.contains_key(name) {
                headers.insert(name.clone(), value.clone());
            }
        }
        if *this.tls {
            if let Some(h) = &c.hsts
                && (c.override_existing || !headers.contains_key(STRICT_TRANSPORT_SECURITY))
            {
                headers.insert(STRICT_TRANSPORT_SECURITY, h.clone());
            }
        } else {
            // HSTS over plain HTTP is meaningless; never let an upstream's through.
            headers.remove(STRICT_TRANSPORT_SECURITY);
        }
        Poll::Ready(Ok(response))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use tower::{ServiceExt, service_fn};

    async fn run(layer: SecurityHeadersLayer, tls: bool) -> Response<String> {
        let svc = layer.layer(service_fn(|_req: Request<()>| async {
            let mut r = Response::new(String::new());
            r.headers_mut()
                .insert("server", HeaderValue::from_static("upstream/1.0"));
            r.headers_mut()
                .insert("x-powered-by", HeaderValue::from_static("php"));
            r.headers_mut()
                .insert("x-frame-options", HeaderValue::from_static("SAMEORIGIN"));
            r.headers_mut().insert(
                "strict-transport-security",
                HeaderValue::from_static("max-age=1"),
            );
            Ok::<_, Infallible>(r)
        }));
        let mut req = Request::new(());
        if tls {
            req.extensions_mut().insert(TlsInfo::default());
        }
        svc.oneshot(req).await.unwrap()
    }

    #[tokio::test]
    async fn defaults_plain_http() {
        let r = run(SecurityHeadersLayer::default(), false).await;
        let h = r.headers();
        assert_eq!(h["x-frame-options"], "DENY");
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert_eq!(h["referrer-policy"], "no-referrer");
        assert_eq!(
            h["content-security-policy"],
            "default-src 'none'; frame-ancestors 'none'"
        );
        assert!(!h.contains_key("server"));
        assert!(!h.contains_key("x-powered-by"));
        assert!(!h.contains_key("strict-transport-security"));
    }

    #[tokio::test]
    async fn hsts_only_over_tls() {
        let r = run(SecurityHeadersLayer::default(), true).await;
        assert_eq!(r.headers()["strict-transport-security"], DEFAULT_HSTS);
    }

    #[tokio::test]
    async fn seeds_map_and_keep_existing() {
        let mut cfg = SecurityHeadersConfig::default();
        cfg.headers
            .insert("X-XSS-Protection".into(), "1; mode=block".into());
        cfg.headers
            .insert("Strict-Transport-Security".into(), "max-age=60".into());
        cfg.remove.push("x-debug".into());
        cfg.override_existing = false;
        let layer = SecurityHeadersLayer::new(&cfg).unwrap();
        let r = run(layer.clone(), true).await;
        assert_eq!(r.headers()["x-xss-protection"], "1; mode=block");
        assert_eq!(r.headers()["x-frame-options"], "SAMEORIGIN");
        assert_eq!(r.headers()["strict-transport-security"], "max-age=1");
        let r = run(layer, false).await;
        assert!(!r.headers().contains_key("strict-transport-security"));
    }

    #[test]
    fn bad_config_names_key() {
        let mut cfg = SecurityHeadersConfig::default();
        cfg.headers.insert("Bad Name".into(), "x".into());
        assert_eq!(
            SecurityHeadersLayer::new(&cfg).unwrap_err().key,
            "security.headers.Bad Name"
        );
        let mut cfg = SecurityHeadersConfig::default();
        cfg.headers.insert("X-Ok".into(), "bad\nvalue".into());
        assert!(SecurityHeadersLayer::new(&cfg).is_err());
    }
}
