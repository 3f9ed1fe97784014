//! [`QueryCredentialsLayer`]: refuse credentials in the URL query, with or without
//! authentication.
//!
//! URLs end up in logs, browser histories and `Referer` headers, and an upstream that
//! reads `?access_token=` would take a token the gateway never checked. [`AuthLayer`]
//! refuses them before authenticating; this layer does the same check on its own, for
//! stacks where authentication is off or done elsewhere, or in front of everything.
//! A request whose query names a credential ([`refused_query_param`]: the defaults
//! [`DEFAULT_REFUSED_QUERY_PARAMS`], every credential header name, and any spelling a
//! PHP, ASP.NET or CGI reader takes for one of them) gets 400 `invalid_request` with a
//! JSON-RPC error body and a [`mcp_core::Denial`] (reason `auth_failed`, detail naming
//! the parameter, never its value).
//!
//! ```
//! use axum::{Router, routing::post};
//! use mcp_auth::QueryCredentialsLayer;
//!
//! let app: Router = Router::new()
//!     .route("/mcp", post(|| async { "ok" }))
//!     .layer(QueryCredentialsLayer::new().credential_headers([http::HeaderName::from_static("x-mcp-key")]));
//! ```
//!
//! [`AuthLayer`]: crate::AuthLayer

use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderName, Request, Response, StatusCode};
use mcp_core::headers::DEFAULT_CREDENTIAL_HEADERS;
use mcp_core::{Rejection, RejectionReason};
use tower_layer::Layer;
use tower_service::Service;

use crate::credentials::{DEFAULT_REFUSED_QUERY_PARAMS, refused_query_param};
use crate::future::ResponseFuture;

/// Refuses requests carrying a credential in the URL query (see the
/// [module documentation](self)).
#[derive(Debug, Clone)]
pub struct QueryCredentialsLayer {
    refused: Arc<[String]>,
}

impl Default for QueryCredentialsLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl QueryCredentialsLayer {
    /// Refuses [`DEFAULT_REFUSED_QUERY_PARAMS`] and the names of
    /// [`DEFAULT_CREDENTIAL_HEADERS`].
    pub fn new() -> Self {
        let refused: Vec<String> = DEFAULT_REFUSED_QUERY_PARAMS
            .iter()
            .chain(DEFAULT_CREDENTIAL_HEADERS)
            .map(|s| (*s).to_owned())
            .collect();
        Self {
            refused: refused.into(),
        }
    }

    /// Also refuses these parameter names (compared as [`refused_query_param`] does).
    pub fn refuse<I, T>(self, names: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        let mut refused = self.refused.to_vec();
        for n in names {
            let n = n.into();
            if !refused.iter().any(|r| r.eq_ignore_ascii_case(&n)) {
                refused.push(n);
            }
        }
        Self {
            refused: refused.into(),
        }
    }

    /// Also refuses the name of each of these credential headers (give it
    /// [`AuthLayer::credential_headers`](crate::AuthLayer::credential_headers)).
    pub fn credential_headers(self, names: impl IntoIterator<Item = HeaderName>) -> Self {
        self.refuse(names.into_iter().map(|n| n.as_str().to_owned()))
    }

    /// The refused names.
    pub fn refused(&self) -> &[String] {
        &self.refused
    }

    /// The rejection for a request with this query, if it names a credential.
    pub fn check(&self, query: Option<&str>) -> Option<Rejection> {
        let name = refused_query_param(query?, &self.refused)?;
        Some(query_rejection(name))
    }
}

/// The 400 for a credential in query parameter `name`.
pub(crate) fn query_rejection(name: &str) -> Rejection {
    Rejection::new(RejectionReason::AuthFailed)
        .with_status(StatusCode::BAD_REQUEST)
        .with_message("Credentials in the URL query are not accepted")
        .with_detail(format!("credential in query parameter {name:?}"))
}

impl<S> Layer<S> for QueryCredentialsLayer {
    type Service = QueryCredentials<S>;

    fn layer(&self, inner: S) -> QueryCredentials<S> {
        QueryCredentials {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service made by [`QueryCredentialsLayer`].
#[derive(Debug, Clone)]
pub struct QueryCredentials<S> {
    inner: S,
    layer: QueryCredentialsLayer,
}

impl<S, B, ResBody> Service<Request<B>> for QueryCredentials<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    ResBody: From<Bytes>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        match self.layer.check(req.uri().query()) {
            Some(r) => ResponseFuture::ready(r.into_response()),
            None => ResponseFuture::inner(self.inner.call(req), None),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use tower::{ServiceExt, service_fn};

    async fn status(layer: &QueryCredentialsLayer, uri: &str) -> (StatusCode, Option<String>) {
        let svc = layer.layer(service_fn(|_req: Request<()>| async {
            Ok::<_, Infallible>(Response::new(Bytes::from_static(b"ok")))
        }));
        let r = svc
            .oneshot(Request::post(uri).body(()).unwrap())
            .await
            .unwrap();
        let detail = r
            .extensions()
            .get::<mcp_core::Denial>()
            .and_then(|d| d.detail.clone().map(|d| d.to_string()));
        (r.status(), detail)
    }

    #[tokio::test]
    async fn refuses_credentials_in_the_query_on_its_own() {
        let layer =
            QueryCredentialsLayer::new().credential_headers([HeaderName::from_static("x-mcp-key")]);
        for uri in [
            "/mcp?access_token=S",
            "/mcp?a=1&access.token=S",
            "/mcp?access%u005Ftoken=S",
            "/mcp?x_api_key=S",
            "/mcp?x_mcp_key=S",
            "/mcp?Authorization=Bearer%20x",
            "/mcp?cookie=a",
        ] {
            let (s, detail) = status(&layer, uri).await;
            assert_eq!(s, StatusCode::BAD_REQUEST, "{uri}");
            assert!(!detail.unwrap_or_default().contains("=S"), "{uri}");
        }
        for uri in ["/mcp", "/mcp?a=1", "/mcp?tokens=1&page=2"] {
            assert_eq!(status(&layer, uri).await.0, StatusCode::OK, "{uri}");
        }
    }
}
