//! JWKS served by a local axum server: first fetch, key rotation mid-test (a new kid
//! appears, the old one is removed), refetch on an unknown kid at most once per
//! interval, stale keys kept when the endpoint fails, timeouts, and 503 when no keys
//! were ever fetched.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::routing::get as get_route;
use common::*;
use http::StatusCode;
use jsonwebtoken::Algorithm;
use mcp_auth::{AuthLayer, JwtAuthenticator, JwtIssuer};
use serde_json::{Value, json};
use tower::util::MapResponseLayer;

const ISS: &str = "https://issuer.test";

#[derive(Clone, Default)]
struct Jwks {
    doc: Arc<Mutex<Value>>,
    fetches: Arc<AtomicUsize>,
    fail: Arc<AtomicBool>,
    slow: Arc<AtomicBool>,
}

async fn jwks(State(s): State<Jwks>) -> Result<axum::Json<Value>, StatusCode> {
    s.fetches.fetch_add(1, Ordering::SeqCst);
    if s.slow.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    if s.fail.load(Ordering::SeqCst) {
        return Err(StatusCode::INTERNAL_SERVER_ERROR);
    }
    Ok(axum::Json(s.doc.lock().unwrap().clone()))
}

async fn jwks_server(state: Jwks) -> SocketAddr {
    serve(
        Router::new()
            .route("/jwks", get_route(jwks))
            .with_state(state),
    )
    .await
}

fn issuer(jwks_addr: SocketAddr, interval: Duration, ttl: Duration) -> JwtIssuer {
    JwtIssuer::new(ISS)
        .audience("mcp")
        .jwks_url(format!("http://{jwks_addr}/jwks"))
        .allow_http_jwks(true)
        .jwks_refresh_interval(interval)
        .jwks_ttl(ttl)
        .jwks_timeout(Duration::from_millis(500))
}

async fn protected(issuer: JwtIssuer) -> SocketAddr {
    let jwt = JwtAuthenticator::builder().issuer(issuer).build().unwrap();
    let app = Router::new()
        .route("/mcp", get_route(whoami))
        .layer(AuthLayer::new(jwt))
        .layer(MapResponseLayer::new(inspect));
    serve(app).await
}

fn token(key: &jsonwebtoken::EncodingKey, kid: &str, sub: &str) -> String {
    sign(
        Algorithm::RS256,
        key,
        Some(kid),
        &json!({"sub": sub, "iss": ISS, "aud": "mcp", "exp": now() + 600}),
    )
}

async fn call(addr: SocketAddr, token: &str) -> Resp {
    get(
        addr,
        "/mcp",
        &[("authorization", &format!("Bearer {token}"))],
    )
    .await
}

#[tokio::test]
async fn key_rotation_mid_test() {
    let state = Jwks::default();
    *state.doc.lock().unwrap() = json!({"keys": [rsa_jwk(RSA1_KEY, "k1", Algorithm::RS256)]});
    let jwks_addr = jwks_server(state.clone()).await;
    let interval = Duration::from_millis(1000);
    let addr = protected(issuer(jwks_addr, interval, Duration::from_secs(3600))).await;

    let t1 = token(&rsa1(), "k1", "alice");
    let r = call(addr, &t1).await;
    assert_eq!(r.status, 200, "{:?}", r.header(SEEN_DETAIL));
    assert_eq!(r.text(), "alice jwt ");
    assert_eq!(
        state.fetches.load(Ordering::SeqCst),
        1,
        "first sight fetches the JWKS"
    );
    assert_eq!(call(addr, &t1).await.status, 200);
    assert_eq!(state.fetches.load(Ordering::SeqCst), 1, "keys are cached");

    // A token with a kid not yet published: refused. Many of them within one interval
    // cause at most one refetch.
    let t2 = token(&rsa2(), "k2", "bob");
    tokio::time::sleep(interval + Duration::from_millis(100)).await;
    for _ in 0..10 {
        let r = call(addr, &t2).await;
        assert_eq!(r.status, 401);
        assert!(r.header(SEEN_DETAIL).unwrap().contains("kid unknown"));
    }
    assert_eq!(
        state.fetches.load(Ordering::SeqCst),
        2,
        "one refetch per interval, not one per request"
    );

    // Rotation: k2 appears, k1 is removed.
    *state.doc.lock().unwrap() = json!({"keys": [rsa_jwk(RSA2_KEY, "k2", Algorithm::RS256)]});
    tokio::time::sleep(interval + Duration::from_millis(100)).await;
    let r = call(addr, &t2).await;
    assert_eq!(
        r.status,
        200,
        "the new kid triggers a refetch: {:?}",
        r.header(SEEN_DETAIL)
    );
    assert_eq!(r.text(), "bob jwt ");
    assert_eq!(state.fetches.load(Ordering::SeqCst), 3);
    // The old key is gone: even the previously cached token is refused now.
    let r = call(addr, &t1).await;
    assert_eq!(
        r.status, 401,
        "cached verification dropped when the key set changed"
    );
    assert!(r.header(SEEN_DETAIL).unwrap().contains("kid unknown"));
    // A forged token naming the new kid but signed with the old key fails too.
    let r = call(addr, &token(&rsa1(), "k2", "mallory")).await;
    assert_eq!(r.status, 401);
    assert!(r.header(SEEN_DETAIL).unwrap().contains("signature"));
}

#[tokio::test]
async fn stale_keys_are_kept_when_refresh_fails() {
    let state = Jwks::default();
    *state.doc.lock().unwrap() = json!({"keys": [rsa_jwk(RSA1_KEY, "k1", Algorithm::RS256)]});
    let jwks_addr = jwks_server(state.clone()).await;
    // A short TTL: the keys go stale quickly and are refreshed in the background.
    let addr = protected(issuer(
        jwks_addr,
        Duration::from_millis(100),
        Duration::from_millis(200),
    ))
    .await;
    let t1 = token(&rsa1(), "k1", "alice");
    assert_eq!(call(addr, &t1).await.status, 200);

    state.fail.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = state.fetches.load(Ordering::SeqCst);
    // Stale: each of these may start a background refresh (which fails); the known keys
    // keep verifying. A fresh token (not in the verified cache) proves the keys are used.
    for i in 0..3 {
        let fresh = token(&rsa1(), "k1", &format!("user{i}"));
        let r = call(addr, &fresh).await;
        assert_eq!(r.status, 200, "{:?}", r.header(SEEN_DETAIL));
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert!(
        state.fetches.load(Ordering::SeqCst) > before,
        "a refresh was attempted"
    );

    // A slow endpoint: the fetch times out, the keys are still kept.
    state.fail.store(false, Ordering::SeqCst);
    state.slow.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(150)).await;
    let r = call(addr, &token(&rsa1(), "k1", "late")).await;
    assert_eq!(r.status, 200);
    // An unknown kid while the endpoint hangs: refused after the timeout, not stuck.
    let r = call(addr, &token(&rsa2(), "k9", "x")).await;
    assert_eq!(r.status, 401);
}

#[tokio::test]
async fn unavailable_jwks_without_keys_is_503() {
    // a port with nothing listening
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = listener.local_addr().unwrap();
    drop(listener);
    let addr = protected(issuer(
        dead,
        Duration::from_secs(30),
        Duration::from_secs(60),
    ))
    .await;
    let r = call(addr, &token(&rsa1(), "k1", "alice")).await;
    assert_eq!(r.status, 503, "{:?}", r.header(SEEN_DETAIL));
    assert_eq!(r.header("retry-after"), Some("5"));
    assert_eq!(r.header(SEEN_DENIAL), Some("unavailable"));
    // within the interval, no new fetch is attempted; still 503
    let r = call(addr, &token(&rsa1(), "k1", "alice")).await;
    assert_eq!(r.status, 503);
}

#[tokio::test]
async fn local_jwks_file_and_pem_file() {
    let dir = tempfile::tempdir().unwrap();
    let jwks_path = dir.path().join("jwks.json");
    std::fs::write(&jwks_path, json!({"keys": [rsa_jwk(RSA1_KEY, "k1", Algorithm::RS256), {"kty": "oct", "k": "c2VjcmV0", "kid": "sym"}]}).to_string()).unwrap();
    let pem_path = dir.path().join("rsa2.pub");
    std::fs::write(&pem_path, RSA2_PUB).unwrap();
    let issuer = JwtIssuer::new(ISS)
        .audience("mcp")
        .jwks_file(&jwks_path)
        .public_key_pem_file(Algorithm::RS256, &pem_path);
    let addr = protected(issuer).await;
    assert_eq!(call(addr, &token(&rsa1(), "k1", "a")).await.status, 200);
    assert_eq!(call(addr, &token(&rsa2(), "any", "b")).await.status, 200);
    // the symmetric key in the JWKS is ignored: an HS256 token with kid "sym" fails
    let hs = sign(
        Algorithm::HS256,
        &jsonwebtoken::EncodingKey::from_secret(b"secret"),
        Some("sym"),
        &json!({"sub": "x", "iss": ISS, "aud": "mcp", "exp": now() + 600}),
    );
    assert_eq!(call(addr, &hs).await.status, 401);
    // a missing file is a build error naming the key
    let e = JwtAuthenticator::builder()
        .issuer(JwtIssuer::new(ISS).jwks_file(dir.path().join("missing.json")))
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("auth.jwt.issuers[0].keys[0]"), "{e}");
}

/// A JWKS endpoint over HTTPS with a certificate from a private CA (rcgen), served by
/// tokio-rustls + hyper on a loopback port.
async fn https_jwks_server(state: Jwks) -> (SocketAddr, String) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
    use tower::ServiceExt;
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "mcp-auth test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let srv_key = KeyPair::generate().unwrap();
    let mut srv_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    srv_params
        .subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    let srv_cert = srv_params.signed_by(&srv_key, &issuer).unwrap();

    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![srv_cert.der().clone()],
        rustls::pki_types::PrivateKeyDer::try_from(srv_key.serialize_der()).unwrap(),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let router = Router::new()
        .route("/jwks", get_route(jwks))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let router = router.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        router.clone().oneshot(req.map(axum::body::Body::new))
                    });
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                .await;
            });
        }
    });
    (addr, ca_cert.pem())
}

#[tokio::test]
async fn https_jwks_with_a_private_ca() {
    let state = Jwks::default();
    *state.doc.lock().unwrap() = json!({"keys": [rsa_jwk(RSA1_KEY, "k1", Algorithm::RS256)]});
    let (jwks_addr, ca_pem) = https_jwks_server(state.clone()).await;
    let url = format!("https://127.0.0.1:{}/jwks", jwks_addr.port());
    let t = token(&rsa1(), "k1", "alice");

    // trusting the private CA: keys fetched over TLS
    let trusted = JwtIssuer::new(ISS)
        .audience("mcp")
        .jwks_url(url.clone())
        .jwks_root_certificates_pem(ca_pem.clone());
    assert!(!format!("{trusted:?}").contains("BEGIN CERTIFICATE"));
    let addr = protected(trusted).await;
    let r = call(addr, &t).await;
    assert_eq!(r.status, 200, "{:?}", r.header(SEEN_DETAIL));
    assert_eq!(state.fetches.load(Ordering::SeqCst), 1);

    // with the default (Mozilla) roots the private CA is not trusted: no keys, 503
    let untrusted = JwtIssuer::new(ISS).audience("mcp").jwks_url(url);
    let addr = protected(untrusted).await;
    let r = call(addr, &t).await;
    assert_eq!(r.status, 503);
    assert_eq!(
        state.fetches.load(Ordering::SeqCst),
        1,
        "the handshake failed before any request"
    );

    // a bundle that is not PEM is a build error naming the key
    let e = JwtAuthenticator::builder()
        .issuer(
            JwtIssuer::new(ISS)
                .jwks_url("https://127.0.0.1:1/jwks")
                .jwks_root_certificates_pem("nope"),
        )
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("jwksCaFile"), "{e}");
}
