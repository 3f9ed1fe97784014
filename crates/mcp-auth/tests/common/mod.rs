//! Test support: servers on 127.0.0.1:0 (axum and plain hyper), a client, keys, tokens.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::convert::Infallible;
use std::net::SocketAddr;

use axum::Router;
use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use mcp_core::{Body, Denial, Principal};
use serde_json::Value;
use tokio::net::TcpListener;
use tower::{Service, ServiceExt};

pub const RSA1_KEY: &str = include_str!("../fixtures/rsa1.key");
pub const RSA1_PUB: &str = include_str!("../fixtures/rsa1.pub");
pub const RSA2_KEY: &str = include_str!("../fixtures/rsa2.key");
pub const RSA2_PUB: &str = include_str!("../fixtures/rsa2.pub");

/// Serves an axum router with `axum::serve` on a free loopback port.
pub async fn serve(app: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    addr
}

/// Serves a tower service with plain hyper (auto HTTP/1 + HTTP/2) on a free loopback port.
pub async fn serve_hyper<S>(svc: S) -> SocketAddr
where
    S: Service<Request<hyper::body::Incoming>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let svc = svc.clone();
            tokio::spawn(async move {
                let hyper_svc = hyper::service::service_fn(move |req| svc.clone().oneshot(req));
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), hyper_svc)
                    .await;
            });
        }
    });
    addr
}

/// What the inspector (an outer layer) saw in the response extensions, as headers.
pub const SEEN_PRINCIPAL: &str = "x-seen-principal";
pub const SEEN_DENIAL: &str = "x-seen-denial";
pub const SEEN_DETAIL: &str = "x-seen-detail";

/// An outer layer that copies the Principal and Denial of the response extensions into
/// headers, as an audit layer would read them.
pub fn inspect(mut res: Response<Body>) -> Response<Body> {
    let p = res
        .extensions()
        .get::<Principal>()
        .map(|p| p.id().to_owned());
    let d = res.extensions().get::<Denial>().map(|d| {
        (
            d.reason.as_str().to_owned(),
            d.detail.clone().unwrap_or_default(),
        )
    });
    if let Some(p) = p {
        res.headers_mut().insert(SEEN_PRINCIPAL, p.parse().unwrap());
    }
    if let Some((reason, detail)) = d {
        res.headers_mut()
            .insert(SEEN_DENIAL, reason.parse().unwrap());
        let safe: String = detail
            .chars()
            .filter(|c| c.is_ascii_graphic() || *c == ' ')
            .collect();
        res.headers_mut().insert(SEEN_DETAIL, safe.parse().unwrap());
    }
    res
}

/// A response, read whole.
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    pub fn challenges(&self) -> Vec<String> {
        self.headers
            .get_all("www-authenticate")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    }
}

/// Sends a request over a fresh HTTP/1 connection.
pub async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Resp {
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let mut b = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b.body(Full::new(Bytes::from(body.to_owned()))).unwrap();
    let res = client.request(req).await.unwrap();
    let (parts, body) = res.into_parts();
    Resp {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

pub async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Resp {
    send(addr, "GET", path, headers, "").await
}

pub async fn post(addr: SocketAddr, path: &str, headers: &[(&str, &str)], body: &str) -> Resp {
    let mut h = headers.to_vec();
    h.push(("content-type", "application/json"));
    send(addr, "POST", path, &h, body).await
}

/// The handler: who am I.
pub async fn whoami(p: Principal) -> String {
    format!(
        "{} {} {}",
        p.id(),
        p.method(),
        p.scopes().iter().cloned().collect::<Vec<_>>().join(",")
    )
}

pub fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

/// Signs `claims` with `key` under `alg`, with an optional kid.
pub fn sign(alg: Algorithm, key: &EncodingKey, kid: Option<&str>, claims: &Value) -> String {
    // With both JWT backends compiled in (--all-features), jsonwebtoken has no default.
    mcp_auth::jwt::install_crypto_provider();
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&h, claims, key).unwrap()
}

pub fn rsa1() -> EncodingKey {
    EncodingKey::from_rsa_pem(RSA1_KEY.as_bytes()).unwrap()
}

pub fn rsa2() -> EncodingKey {
    EncodingKey::from_rsa_pem(RSA2_KEY.as_bytes()).unwrap()
}

/// (private PKCS#8 PEM, public SPKI PEM) made by rcgen.
pub fn rcgen_pair(alg: &'static rcgen::SignatureAlgorithm) -> (String, String) {
    let kp = rcgen::KeyPair::generate_for(alg).unwrap();
    (kp.serialize_pem(), kp.public_key_pem())
}

/// A JWK (JSON) for an RSA private key PEM, with a kid.
pub fn rsa_jwk(private_pem: &str, kid: &str, alg: Algorithm) -> Value {
    mcp_auth::jwt::install_crypto_provider();
    let key = EncodingKey::from_rsa_pem(private_pem.as_bytes()).unwrap();
    let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&key, alg).unwrap();
    jwk.common.key_id = Some(kid.to_owned());
    serde_json::to_value(jwk).unwrap()
}

/// base64url without padding.
pub fn b64(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}
