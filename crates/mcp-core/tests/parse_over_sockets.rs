//! ParseLayer and ClientAddrLayer over real TCP sockets, through axum and through plain
//! hyper: over-limit bodies (declared and chunked) get 413 without being buffered, invalid
//! JSON gets -32700, GET and DELETE without a body pass, and the parsed request reaches
//! the handler and the response extensions. The transport checks themselves are in
//! transport_over_sockets.rs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::extract::ConnectInfo;
use axum::routing::{get, post};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mcp_core::{ClientAddr, ClientAddrLayer, McpRequest, ParseLayer, TrustedProxies, read_body};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceBuilder;

const LIMIT: usize = 1024;

async fn describe(req: McpRequest) -> String {
    format!(
        "{}|{}|{}",
        req.method().unwrap_or("-"),
        req.tool_name().unwrap_or("-"),
        req.raw().len()
    )
}

async fn spawn_axum(proxies: TrustedProxies) -> SocketAddr {
    let app = Router::new()
        .route(
            "/mcp",
            post(describe)
                .get(|| async { "get ok" })
                .delete(|| async { "deleted" }),
        )
        .route(
            "/ip",
            get(|addr: ClientAddr| async move { addr.ip().to_string() }),
        )
        .route(
            "/peer",
            get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.to_string() }),
        )
        .layer(
            ServiceBuilder::new()
                .layer(ClientAddrLayer::new(proxies))
                .layer(ParseLayer::new().max_body_bytes(LIMIT)),
        );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
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

type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::combinators::BoxBody<Bytes, Infallible>,
>;

fn client() -> Client {
    hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http()
}

fn full(s: impl Into<Bytes>) -> http_body_util::combinators::BoxBody<Bytes, Infallible> {
    Full::new(s.into()).boxed()
}

async fn send(
    c: &Client,
    req: Request<http_body_util::combinators::BoxBody<Bytes, Infallible>>,
) -> (StatusCode, http::HeaderMap, serde_json::Value, String) {
    let resp = c.request(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    (status, headers, json, text)
}

#[tokio::test]
async fn parsed_request_reaches_handler() {
    let addr = spawn_axum(TrustedProxies::none()).await;
    let body =
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{}}}"#;
    let req = Request::post(format!("http://{addr}/mcp"))
        .header("content-type", "application/json")
        .body(full(body))
        .unwrap();
    let (status, _, _, text) = send(&client(), req).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(text, format!("tools/call|echo|{}", body.len()));
}

#[tokio::test]
async fn declared_oversized_body_gets_413_with_jsonrpc_error() {
    let addr = spawn_axum(TrustedProxies::none()).await;
    let req = Request::post(format!("http://{addr}/mcp"))
        .header("content-type", "application/json")
        .body(full(vec![b' '; LIMIT + 1]))
        .unwrap();
    let (status, headers, json, _) = send(&client(), req).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(
        headers["connection"], "close",
        "the unread body poisons the connection"
    );
    assert_eq!(json["error"]["code"], mcp_core::codes::TOO_LARGE);
    assert!(json["id"].is_null());
}

#[tokio::test]
async fn body_exactly_at_limit_is_accepted() {
    let addr = spawn_axum(TrustedProxies::none()).await;
    let prefix = r#"{"jsonrpc":"2.0","id":1,"method":"ping","pad":""#;
    let pad = LIMIT - prefix.len() - 2;
    let body = format!("{prefix}{}\"}}", "x".repeat(pad));
    assert_eq!(body.len(), LIMIT);
    let req = Request::post(format!("http://{addr}/mcp"))
        .header("content-type", "application/json")
        .body(full(body))
        .unwrap();
    let (status, _, _, text) = send(&client(), req).await;
    assert_eq!(status, StatusCode::OK, "{text}");
}

/// A chunked body that never ends: the server must answer 413 once the limit is passed,
/// without waiting for (or buffering) the rest.
#[tokio::test]
async fn chunked_body_running_over_gets_413_before_it_ends() {
    let addr = spawn_axum(TrustedProxies::none()).await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            b"POST /mcp HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n",
        )
        .await
        .unwrap();
    // Send 4 x 512 bytes (twice the limit) and then keep the body open.
    for _ in 0..4 {
        stream.write_all(b"200\r\n").await.unwrap();
        stream.write_all(&[b' '; 512]).await.unwrap();
        stream.write_all(b"\r\n").await.unwrap();
    }
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(std::time::Duration::from_secs(10), stream.read(&mut buf))
        .await
        .expect("the server answered while the body was still open")
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
}

#[tokio::test]
async fn chunked_body_under_limit_is_parsed() {
    let addr = spawn_axum(TrustedProxies::none()).await;
    let chunks: Vec<Result<Frame<Bytes>, Infallible>> = vec![
        Ok(Frame::data(Bytes::from_static(
            br#"{"jsonrpc":"2.0","id":"a","#,
        ))),
        Ok(Frame::data(Bytes::from_static(
            br#""method":"tools/list"}"#,
        ))),
    ];
    let body = StreamBody::new(futures_util::stream::iter(chunks)).boxed();
    let req = Request::post(format!("http://{addr}/mcp"))
        .header("content-type", "application/json")
        .body(body)
        .unwrap();
    let (status, _, _, text) = send(&client(), req).await;
    assert_eq!(status, StatusCode::OK);
    assert!(text.starts_with("tools/list|-|"), "{text}");
}

/// A body in many small chunks: read whole at exactly the limit (joined in order), 413 at
/// one byte more.
#[tokio::test]
async fn many_chunks_up_to_the_limit_are_joined_in_order() {
    let addr = spawn_axum(TrustedProxies::none()).await;
    let head = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":{"pad":""#;
    let tail = r#""}}}"#;
    let pad: String = (0..LIMIT - head.len() - tail.len())
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let exact = format!("{head}{pad}{tail}");
    assert_eq!(exact.len(), LIMIT);
    for (body, ok) in [
        (exact.clone(), true),
        (format!("{head}{pad}b{tail}"), false),
    ] {
        let chunks: Vec<Result<Frame<Bytes>, Infallible>> = body
            .as_bytes()
            .chunks(7)
            .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
            .collect();
        let stream = StreamBody::new(futures_util::stream::iter(chunks)).boxed();
        let req = Request::post(format!("http://{addr}/mcp"))
            .header("content-type", "application/json")
            .body(stream)
            .unwrap();
        let (status, _, _, text) = send(&client(), req).await;
        if ok {
            assert_eq!(status, StatusCode::OK);
            assert_eq!(text, format!("tools/call|t|{LIMIT}"));
        } else {
            assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        }
    }
}

#[tokio::test]
async fn invalid_json_gets_parse_error() {
    let addr = spawn_axum(TrustedProxies::none()).await;
    for bad in ["{", "", "\u{0}", "{\"id\":1,}", "[1,2"] {
        let req = Request::post(format!("http://{addr}/mcp"))
            .header("content-type", "application/json")
            .body(full(bad))
            .unwrap();
        let (status, _, json, _) = send(&client(), req).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad:?}");
        assert_eq!(json["error"]["code"], -32700);
    }
    // Invalid UTF-8 inside a JSON string is not JSON.
    let req = Request::post(format!("http://{addr}/mcp"))
        .header("content-type", "application/json")
        .body(full(Bytes::from_static(b"{\"a\":\"\xff\"}")))
        .unwrap();
    let (status, _, json, _) = send(&client(), req).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(json["error"]["code"], -32700);
}

#[tokio::test]
async fn get_and_delete_without_a_body_pass_and_with_one_are_refused() {
    let addr = spawn_axum(TrustedProxies::none()).await;
    let c = client();
    let req = Request::get(format!("http://{addr}/mcp"))
        .body(full(""))
        .unwrap();
    assert_eq!(send(&c, req).await.3, "get ok");
    let req = Request::delete(format!("http://{addr}/mcp"))
        .body(full(""))
        .unwrap();
    assert_eq!(send(&c, req).await.3, "deleted");
    // A body on a DELETE is refused (400) without being read, even over the limit.
    let req = Request::delete(format!("http://{addr}/mcp"))
        .body(full(vec![b'x'; LIMIT * 2]))
        .unwrap();
    let (status, _, json, _) = send(&c, req).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(json["error"]["code"], -32600);
}

#[tokio::test]
async fn forwarded_headers_only_from_trusted_proxies() {
    let c = client();
    // Loopback is not trusted: the header is ignored.
    let addr = spawn_axum(TrustedProxies::none()).await;
    let req = Request::get(format!("http://{addr}/ip"))
        .header("x-forwarded-for", "198.51.100.9")
        .body(full(""))
        .unwrap();
    assert_eq!(send(&c, req).await.3, "127.0.0.1");
    // Loopback trusted: the rightmost untrusted address is the client.
    let addr = spawn_axum(TrustedProxies::new(["127.0.0.0/8".parse().unwrap()])).await;
    let req = Request::get(format!("http://{addr}/ip"))
        .header("x-forwarded-for", "6.6.6.6, 198.51.100.9, 127.0.0.5")
        .body(full(""))
        .unwrap();
    assert_eq!(send(&c, req).await.3, "198.51.100.9");
}

/// The same layers in front of a plain hyper service (no axum router), with the parsed
/// request mirrored into the response extensions for outer layers.
#[tokio::test]
async fn plain_hyper_service_and_response_extensions() {
    let seen = Arc::new(AtomicUsize::new(0));
    let seen2 = seen.clone();
    let inner = tower::service_fn(move |req: Request<mcp_core::Body>| {
        let seen = seen2.clone();
        async move {
            let parsed = req.extensions().get::<McpRequest>().cloned();
            let (parts, body) = req.into_parts();
            let bytes = read_body(&parts.headers, body, LIMIT).await.unwrap();
            if let Some(p) = parsed {
                assert_eq!(p.raw(), &bytes, "the same bytes are handed on");
                seen.fetch_add(1, Ordering::SeqCst);
            }
            Ok::<_, Infallible>(Response::new(mcp_core::Body::from(bytes)))
        }
    });
    // An outer service that reads the response extensions, as an audit layer would.
    let svc = ServiceBuilder::new()
        .map_response(|mut resp: Response<mcp_core::Body>| {
            let method = resp
                .extensions()
                .get::<McpRequest>()
                .and_then(|r| r.method().map(str::to_owned))
                .unwrap_or_default();
            resp.headers_mut()
                .insert("x-seen-method", method.parse().unwrap());
            resp
        })
        .layer(ParseLayer::new().max_body_bytes(LIMIT))
        .service(inner);

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let svc = svc.clone();
            tokio::spawn(async move {
                let hyper_svc = hyper_util::service::TowerToHyperService::new(svc);
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), hyper_svc)
                    .await;
            });
        }
    });
    let body = r#"{"jsonrpc":"2.0","id":3,"method":"resources/read","params":{"uri":"file:///a"}}"#;
    let req = Request::post(format!("http://{addr}/"))
        .header("content-type", "application/json")
        .body(full(body))
        .unwrap();
    let (status, headers, _, text) = send(&client(), req).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(text, body);
    assert_eq!(headers["x-seen-method"], "resources/read");
    assert_eq!(seen.load(Ordering::SeqCst), 1);
}

/// Attack (slow POST): a body that trickles in, one byte at a time, never finishing
/// within the body timeout, gets 408 with a JSON-RPC error and `Connection: close`; a
/// slow body that does finish in time is served.
#[tokio::test]
async fn a_body_trickling_past_the_body_timeout_gets_408() {
    let app = Router::new().route("/mcp", post(describe)).layer(
        ParseLayer::new()
            .max_body_bytes(LIMIT)
            .body_timeout(std::time::Duration::from_millis(1000)),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let body = br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#;
    let head = format!(
        "POST /mcp HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    // One byte every 100 ms: the whole body would take about 4.6 s.
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    wr.write_all(head.as_bytes()).await.unwrap();
    let trickle = tokio::spawn(async move {
        for b in body {
            if wr.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    });
    let mut out = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(20), rd.read_to_end(&mut out))
        .await
        .expect("the server waited for the trickling body")
        .unwrap();
    trickle.abort();
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
    assert!(text.contains("-32600"), "{text}");

    // Slow but in time: two halves 150 ms apart (well within the timeout, so that a
    // loaded machine does not turn it into a late body).
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(
        head.replace("\r\n\r\n", "\r\nconnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    s.write_all(&body[..10]).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    s.write_all(&body[10..]).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(
        out.ends_with(&format!("tools/list|-|{}", body.len())),
        "{out}"
    );
}

/// The checks can be turned off one by one, for a service that knows what it does.
#[tokio::test]
async fn transport_checks_opt_out() {
    let log: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let seen = log.clone();
    let app = Router::new()
        .route(
            "/mcp",
            axum::routing::any(move |m: http::Method| {
                let seen = seen.clone();
                async move {
                    seen.lock().unwrap().push(m.to_string());
                    "reached"
                }
            }),
        )
        .layer(ParseLayer::new().transport_checks(false));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let c = client();
    let req = Request::builder()
        .method("PUT")
        .uri(format!("http://{addr}/mcp"))
        .body(full(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#))
        .unwrap();
    assert_eq!(send(&c, req).await.0, StatusCode::OK);
    // The body's own checks (duplicate keys) stay on: they are about what was parsed.
    let req = Request::post(format!("http://{addr}/mcp"))
        .body(full(r#"{"jsonrpc":"2.0","id":1,"id":2,"method":"ping"}"#))
        .unwrap();
    assert_eq!(send(&c, req).await.0, StatusCode::BAD_REQUEST);
    assert_eq!(log.lock().unwrap().len(), 1);
}
