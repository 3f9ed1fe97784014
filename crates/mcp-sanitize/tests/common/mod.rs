//! Helpers for the integration tests: a real server on 127.0.0.1:0 and a real HTTP/1.1
//! client (hyper) or raw socket.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;

use axum::Router;
use axum::body::Bytes;
use axum::extract::Request;
use axum::response::Response;
use http::HeaderMap;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use mcp_core::{Denial, McpRequest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Starts `app` on a free loopback port.
pub async fn spawn(app: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // Expose the typed Denial to the client as a header, so tests see what audit sees.
    let app = app.layer(axum::middleware::map_response(
        |mut r: Response| async move {
            if let Some(d) = r.extensions().get::<Denial>().cloned() {
                r.headers_mut()
                    .insert("x-denial-reason", d.reason.as_str().parse().unwrap());
                if let Some(detail) = d.detail
                    && let Ok(v) = detail.parse()
                {
                    r.headers_mut().insert("x-denial-detail", v);
                }
            }
            r
        },
    ));
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    addr
}

/// The echo handler: returns what it received, and what the McpRequest says.
pub async fn echo(req: Request) -> axum::Json<serde_json::Value> {
    let (parts, body) = req.into_parts();
    let mcp = parts.extensions.get::<McpRequest>().cloned();
    let body = body.collect().await.unwrap().to_bytes();
    axum::Json(serde_json::json!({
        "body": String::from_utf8_lossy(&body),
        "content_length": parts.headers.get("content-length").and_then(|v| v.to_str().ok()),
        "mcp_raw": mcp.as_ref().map(|m| String::from_utf8_lossy(m.raw()).into_owned()),
        "mcp_value": mcp.as_ref().map(|m| m.value().clone()),
    }))
}

/// A response read over the wire.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Opens an HTTP/1.1 connection with hyper.
pub async fn connect(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
}

/// Sends one request and returns the streaming response.
pub async fn send_streaming(
    addr: SocketAddr,
    req: http::Request<Full<Bytes>>,
) -> http::Response<Incoming> {
    let mut sender = connect(addr).await;
    sender.send_request(req).await.unwrap()
}

/// Sends one request and reads the whole response.
pub async fn send(addr: SocketAddr, req: http::Request<Full<Bytes>>) -> Resp {
    let resp = send_streaming(addr, req).await;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Resp {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    }
}

/// A POST of `body` to /mcp with `Content-Type: application/json` and extra headers.
pub fn post_json(body: impl Into<Bytes>, headers: &[(&str, &str)]) -> http::Request<Full<Bytes>> {
    let mut b = http::Request::post("/mcp")
        .header("host", "localhost")
        .header("content-type", "application/json");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(body.into())).unwrap()
}

/// A request with a method and no body.
pub fn bare(method: &str, headers: &[(&str, &str)]) -> http::Request<Full<Bytes>> {
    let mut b = http::Request::builder()
        .method(method)
        .uri("/mcp")
        .header("host", "localhost");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(Bytes::new())).unwrap()
}

/// A tools/call body with the given arguments JSON.
pub fn tools_call(tool: &str, args: serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "jsonrpc": "2.0", "id": 42, "method": "tools/call",
        "params": {"name": tool, "arguments": args}
    }))
    .unwrap()
}

/// Sends raw bytes and reads the raw response until the server closes or `limit` bytes.
pub async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}
