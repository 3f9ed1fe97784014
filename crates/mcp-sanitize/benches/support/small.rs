//! The small `tools/call` request of the gateway's load test, and the stack it goes
//! through, shared by the `small_request` bench and the `profile_small` example.
#![allow(dead_code)]

use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use mcp_core::Body;
use mcp_sanitize::{ResultScanConfig, ResultScanLayer, SanitizeConfig, SanitizeLayer};
use tower::{Layer, Service, ServiceExt, service_fn};

/// The body wrk sends to the example gateway.
pub const REQUEST: &[u8] = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"message":"hello from wrk"},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}}}"#;

/// A small tools/call result, as the echo upstream answers.
pub const RESULT: &[u8] = br#"{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"hello from wrk"}],"isError":false}}"#;

/// The request with the headers wrk sends.
pub fn request() -> Request<Full<Bytes>> {
    Request::post("/mcp")
        .header("host", "localhost")
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "tools/call")
        .header("mcp-name", "echo")
        .header("x-api-key", "k-0123456789abcdef0123456789abcdef")
        .body(Full::new(Bytes::from_static(REQUEST)))
        .expect("request")
}

/// The upstream: a small JSON result in one frame, with its length.
pub fn upstream() -> impl Service<
    Request<Body>,
    Response = Response<Body>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<Body>, Infallible>> + Send,
> + Clone
+ Send
+ 'static {
    service_fn(|_req: Request<Body>| async {
        Ok::<_, Infallible>(
            Response::builder()
                .header("content-type", "application/json")
                .header("content-length", RESULT.len())
                .body(Body::from(Bytes::from_static(RESULT)))
                .expect("response"),
        )
    })
}

/// ParseLayer + SanitizeLayer (`with_parse`) around ResultScanLayer around the upstream,
/// as in the gateway (which boxes the scanned body back into axum's `Body`).
pub fn stack()
-> impl Service<Request<Full<Bytes>>, Response = Response<Body>, Error = Infallible, Future: Send>
+ Clone {
    let sanitize = SanitizeLayer::new(SanitizeConfig::default()).expect("sanitize");
    let scan = ResultScanLayer::new(&ResultScanConfig::default()).expect("scan");
    let scanned = tower::ServiceBuilder::new()
        .map_response(|r: Response<_>| r.map(Body::new))
        .layer(scan)
        .service(upstream());
    sanitize.with_parse().layer(scanned)
}

/// One request through the stack, the response body read to the end (as hyper would).
pub async fn one<S>(svc: &S) -> Bytes
where
    S: Service<Request<Full<Bytes>>, Response = Response<Body>, Error = Infallible> + Clone,
{
    let resp = svc.clone().oneshot(request()).await.expect("infallible");
    assert_eq!(resp.status(), 200);
    resp.into_body().collect().await.expect("body").to_bytes()
}
