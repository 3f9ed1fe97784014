//! OAuth 2.0 Protected Resource Metadata (RFC 9728), as MCP authorization (revision
//! 2025-06-18 and later) asks of an MCP server.
//!
//! The server publishes, at `/.well-known/oauth-protected-resource` and at the
//! path-suffixed form `/.well-known/oauth-protected-resource/<resource path>`
//! (RFC 9728 §3.1), which authorization servers issue tokens for it and which scopes it
//! knows. Its 401 challenges point there with `resource_metadata`
//! ([`AuthLayerBuilder::resource_metadata`](crate::AuthLayerBuilder::resource_metadata)),
//! and tokens must name the resource in their audience
//! ([`JwtAuthenticatorBuilder::resource`](crate::JwtAuthenticatorBuilder::resource)).
//!
//! ```
//! use mcp_auth::ProtectedResourceMetadata;
//! let meta = ProtectedResourceMetadata::new("https://mcp.example.com/mcp")
//!     .authorization_server("https://auth.example.com")
//!     .scopes_supported(["mcp:tools", "mcp:resources"]);
//! meta.validate().unwrap();
//! assert_eq!(
//!     meta.metadata_url(),
//!     "https://mcp.example.com/.well-known/oauth-protected-resource/mcp"
//! );
//! let router: axum::Router = meta.router();
//! # let _ = router;
//! ```

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{ACCESS_CONTROL_ALLOW_ORIGIN, ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use serde::{Deserialize, Serialize};
use tower_service::Service;

use crate::error::ConfigError;

/// The well-known path prefix (RFC 9728 §3).
pub const WELL_KNOWN_PATH: &str = "/.well-known/oauth-protected-resource";

fn default_bearer_methods() -> Vec<String> {
    vec!["header".to_owned()]
}

/// The metadata document (RFC 9728 §2). Field names are those of the RFC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProtectedResourceMetadata {
    /// The resource identifier: the MCP server's canonical URI.
    pub resource: String,
    /// Issuer identifiers of the authorization servers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub authorization_servers: Vec<String>,
    /// Scopes used in authorization requests for this resource.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes_supported: Vec<String>,
    /// How bearer tokens may be sent: only `header` (never the query or a form body).
    #[serde(default = "default_bearer_methods")]
    pub bearer_methods_supported: Vec<String>,
    /// A human-readable name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_name: Option<String>,
    /// A page of documentation for developers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_documentation: Option<String>,
}

impl ProtectedResourceMetadata {
    /// Metadata for the resource `resource` (an absolute `https` URL, no fragment).
    pub fn new(resource: impl Into<String>) -> Self {
        Self {
            resource: resource.into(),
            authorization_servers: Vec::new(),
            scopes_supported: Vec::new(),
            bearer_methods_supported: default_bearer_methods(),
            resource_name: None,
            resource_documentation: None,
        }
    }

    /// Adds an authorization server (its issuer URL).
    pub fn authorization_server(mut self, issuer: impl Into<String>) -> Self {
        self.authorization_servers.push(issuer.into());
        self
    }

    /// Sets the supported scopes.
    pub fn scopes_supported<I, T>(mut self, scopes: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.scopes_supported = scopes.into_iter().map(Into::into).collect();
        self
    }

    /// Sets the human-readable name.
    pub fn resource_name(mut self, name: impl Into<String>) -> Self {
        self.resource_name = Some(name.into());
        self
    }

    /// Checks the URLs: the resource must be absolute, `https` (or `http` on loopback),
    /// without a fragment; authorization servers must be absolute `https` URLs (or
    /// loopback `http`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let check = |key: &str, s: &str| -> Result<url::Url, ConfigError> {
            let u = url::Url::parse(s)
                .map_err(|_| ConfigError::invalid(key, "must be an absolute URL"))?;
            let loopback = matches!(u.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"));
            if u.scheme() != "https" && !(u.scheme() == "http" && loopback) {
                return Err(ConfigError::invalid(
                    key,
                    "must be https (http only on loopback)",
                ));
            }
            if u.fragment().is_some() {
                return Err(ConfigError::invalid(key, "must not have a fragment"));
            }
            if s.contains('"') || s.contains('\\') {
                return Err(ConfigError::invalid(
                    key,
                    "must not contain quotes or backslashes",
                ));
            }
            Ok(u)
        };
        check("auth.resource.resource", &self.resource)?;
        for (i, a) in self.authorization_servers.iter().enumerate() {
            check(&format!("auth.resource.authorizationServers[{i}]"), a)?;
        }
        Ok(())
    }

    fn resource_path(&self) -> String {
        url::Url::parse(&self.resource)
            .map(|u| u.path().trim_end_matches('/').to_owned())
            .unwrap_or_default()
    }

    /// The path of the metadata, path-suffixed when the resource has a path
    /// (`/.well-known/oauth-protected-resource/mcp` for `https://host/mcp`).
    pub fn well_known_path(&self) -> String {
        format!("{WELL_KNOWN_PATH}{}", self.resource_path())
    }

    /// The absolute URL of the metadata, for `resource_metadata` in challenges.
    pub fn metadata_url(&self) -> String {
        match url::Url::parse(&self.resource) {
            Ok(u) => format!(
                "{}{}",
                u.origin().ascii_serialization(),
                self.well_known_path()
            ),
            Err(_) => String::new(),
        }
    }

    /// The JSON document.
    pub fn to_json(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }

    /// A tower service answering `GET`/`HEAD` at both well-known paths (404 elsewhere,
    /// 405 for other methods). Mount it at `/.well-known/` or in front of your router.
    pub fn service(&self) -> MetadataService {
        MetadataService {
            body: self.to_json(),
            paths: [WELL_KNOWN_PATH.to_owned(), self.well_known_path()],
        }
    }

    /// An axum router serving the document at both well-known paths; merge it into your
    /// app, outside the authentication layer (the metadata is public).
    #[cfg(feature = "axum")]
    pub fn router<S: Clone + Send + Sync + 'static>(&self) -> axum::Router<S> {
        let svc = self.service();
        // The suffixed path is matched by the service itself (404 for other suffixes), so
        // no route is built from the configured URL (axum treats `{`, `}` and `*` in
        // route paths as syntax).
        axum::Router::new()
            .route_service(WELL_KNOWN_PATH, svc.clone())
            .route_service(&format!("{WELL_KNOWN_PATH}/{{*suffix}}"), svc)
    }
}

/// The service made by [`ProtectedResourceMetadata::service`].
#[derive(Debug, Clone)]
pub struct MetadataService {
    body: Bytes,
    paths: [String; 2],
}

impl<B> Service<Request<B>> for MetadataService {
    type Response = Response<axum_body::Body>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let path = req.uri().path();
        let response = if !self.paths.iter().any(|p| p == path) {
            status(StatusCode::NOT_FOUND)
        } else if req.method() == Method::GET || req.method() == Method::HEAD {
            let body = if req.method() == Method::GET {
                self.body.clone()
            } else {
                Bytes::new()
            };
            let mut r = Response::new(axum_body::Body::from(body));
            let h = r.headers_mut();
            h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            h.insert(CACHE_CONTROL, HeaderValue::from_static("max-age=3600"));
            h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
            r
        } else {
            let mut r = status(StatusCode::METHOD_NOT_ALLOWED);
            r.headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
            r
        };
        ready(Ok(response))
    }
}

fn status(code: StatusCode) -> Response<axum_body::Body> {
    let mut r = Response::new(axum_body::Body::empty());
    *r.status_mut() = code;
    r
}

mod axum_body {
    pub(crate) use mcp_core::Body;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_validation() {
        let m = ProtectedResourceMetadata::new("https://h.example/mcp/");
        assert_eq!(
            m.well_known_path(),
            "/.well-known/oauth-protected-resource/mcp"
        );
        let root = ProtectedResourceMetadata::new("https://h.example");
        assert_eq!(root.well_known_path(), WELL_KNOWN_PATH);
        assert_eq!(
            root.metadata_url(),
            "https://h.example/.well-known/oauth-protected-resource"
        );
        assert!(
            ProtectedResourceMetadata::new("http://h.example/mcp")
                .validate()
                .is_err()
        );
        assert!(
            ProtectedResourceMetadata::new("http://127.0.0.1:8080/mcp")
                .validate()
                .is_ok()
        );
        assert!(
            ProtectedResourceMetadata::new("https://h/x#f")
                .validate()
                .is_err()
        );
        assert!(ProtectedResourceMetadata::new("mcp").validate().is_err());
        let v: serde_json::Value = serde_json::from_slice(
            &ProtectedResourceMetadata::new("https://h/mcp")
                .authorization_server("https://as")
                .to_json(),
        )
        .unwrap();
        assert_eq!(v["resource"], "https://h/mcp");
        assert_eq!(v["authorization_servers"][0], "https://as");
        assert_eq!(v["bearer_methods_supported"][0], "header");
    }

    #[test]
    fn router_does_not_panic_on_route_syntax_in_the_resource() {
        for r in ["https://h/a{b}/*c", "https://h/{*x}", "https://h/:id"] {
            let m = ProtectedResourceMetadata::new(r);
            let _router: axum::Router = m.router();
        }
    }
}
