//! Shared helpers: an axum app with tiny stand-ins for the inner layers, a real server on
//! a free loopback port, and an HTTP client.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper_util::rt::TokioExecutor;
use mcp_audit::{AuditUpstream, Auditor};
use mcp_core::{AuthMethod, ParseLayer, Principal, Rejection, RejectionReason};

/// Stand-in for the authentication layer: `authorization: Bearer user-<id>[:scope]`
/// authenticates `<id>`; anything else is refused with `auth_failed`. Like mcp-auth, it
/// notes the principal in the `RequestFacts` and puts it into the request and the
/// response extensions.
pub async fn fake_auth(mut req: Request, next: Next) -> Response {
    let token = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer user-"))
        .map(str::to_owned);
    let Some(token) = token else {
        return Rejection::new(RejectionReason::AuthFailed)
            .with_header("www-authenticate", "Bearer")
            .into_response();
    };
    let (id, scope) = match token.split_once(':') {
        Some((i, s)) => (i.to_owned(), Some(s.to_owned())),
        None => (token.clone(), None),
    };
    let p = Principal::new(id, AuthMethod::BearerToken)
        .with_credential_id("token-1")
        .with_scopes(scope);
    mcp_core::RequestFacts::note_principal(req.extensions(), &p);
    req.extensions_mut().insert(p.clone());
    let mut resp = next.run(req).await;
    resp.extensions_mut().insert(p);
    resp
}

/// Stand-in for inner refusing layers: `x-test-deny: rate|rule`; `x-test-deny: hang`
/// never answers (an upstream still working when the client gives up).
async fn fake_deny(req: Request, next: Next) -> Response {
    match req.headers().get("x-test-deny").map(|v| v.as_bytes()) {
        Some(b"hang") => std::future::pending().await,
        Some(b"rate") => Rejection::new(RejectionReason::RateLimited)
            .with_header("retry-after", "1")
            .into_response(),
        Some(b"rule") => Rejection::new(RejectionReason::BlockedByRule)
            .with_detail("no-shell-metachars")
            .into_response(),
        _ => next.run(req).await,
    }
}

async fn mcp_handler() -> Response {
    let mut r = axum::Json(serde_json::json!({"jsonrpc":"2.0","id":1,"result":{"ok":true}}))
        .into_response();
    r.extensions_mut()
        .insert(AuditUpstream("upstream-a".into()));
    r
}

async fn sse_handler() -> Response {
    let chunks = (0..5).map(|i| Ok::<_, Infallible>(Bytes::from(format!("data: chunk-{i}\n\n"))));
    let stream = futures_util::stream::iter(chunks).then(|c| async move {
        tokio::time::sleep(Duration::from_millis(5)).await;
        c
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(axum::body::Body::from_stream(stream))
        .unwrap()
}

use futures_util::StreamExt;

/// The app: audit outermost (inside the header redaction), then auth, parse, deny.
pub fn app(auditor: &Auditor) -> Router {
    app_with(auditor, Router::new())
}

pub fn app_with(auditor: &Auditor, extra: Router) -> Router {
    Router::new()
        .route("/mcp", post(mcp_handler))
        .route("/sse", get(sse_handler).post(sse_handler))
        .layer(middleware::from_fn(fake_deny))
        .layer(ParseLayer::new())
        .layer(middleware::from_fn(fake_auth))
        .merge(extra)
        .layer(auditor.layer())
        .layer(auditor.sensitive_headers_layer())
}

/// Serves `app` on a free loopback port.
pub async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    addr
}

pub type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    BoxBody<Bytes, Infallible>,
>;

pub fn client() -> Client {
    hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http()
}

pub fn full(s: impl Into<Bytes>) -> BoxBody<Bytes, Infallible> {
    Full::new(s.into()).boxed()
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: String,
}

pub async fn send(c: &Client, req: http::Request<BoxBody<Bytes, Infallible>>) -> Reply {
    let resp = c.request(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

pub const SECRET_PASSWORD: &str = "pw-Zk83hQ-very-secret";
pub const SECRET_HEADER: &str = "hdr-Qm29xV-secret-cookie";
pub const SECRET_APIKEY: &str = "key-Lp47sW-secret-apikey";

/// A tools/call with secrets at depth, in arrays, and in headers.
pub fn call(
    addr: SocketAddr,
    user: &str,
    i: usize,
    deny: Option<&str>,
) -> http::Request<BoxBody<Bytes, Infallible>> {
    let body = serde_json::json!({
        "jsonrpc": "2.0", "id": i, "method": "tools/call",
        "params": {"name": "search", "arguments": {
            "q": format!("query {i}"),
            "password": SECRET_PASSWORD,
            "nested": [{"deeper": {"apiKey": SECRET_APIKEY}}, "AKIAIOSFODNN7EXAMPLE"],
        }}
    });
    let mut b = http::Request::post(format!("http://{addr}/mcp"))
        .header("content-type", "application/json")
        .header("cookie", format!("session={SECRET_HEADER}"))
        .header("x-api-key", SECRET_HEADER)
        .header("x-user-id", "mallory");
    if !user.is_empty() {
        b = b.header("authorization", format!("Bearer user-{user}"));
    }
    if let Some(d) = deny {
        b = b.header("x-test-deny", d);
    }
    b.body(full(body.to_string())).unwrap()
}
