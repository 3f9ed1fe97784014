//! API key and static bearer through AuthLayer vs tower-http's
//! ValidateRequestHeaderLayer::bearer; JWT HS256 / RS256 first sight and cached vs a plain
//! `jsonwebtoken::decode` per request; Basic with the verified-credential cache vs an
//! Argon2 verification per request and vs tower-http's plaintext
//! ValidateRequestHeaderLayer::basic. All in-process tower services, same requests.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::convert::Infallible;
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use mcp_auth::{
    AuthLayer, BasicAuthenticator, BasicUser, BearerTokenAuthenticator, CredentialEntry,
    JwtAuthenticator, JwtIssuer,
};
use mcp_core::Body;
use serde_json::{Map, Value, json};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_http::validate_request::ValidateRequestHeaderLayer;

const KEY: &str = "Abc123!@#Xyz789!@#Q7w";
const TOKEN: &str = "q8Jx2mV7pL0sN4tR9wY3zB6cF1hK5dG8aE2uI7oP0";
const HS_SECRET: &str = "0123456789abcdef0123456789abcdef";
const RSA_KEY: &str = include_str!("../tests/fixtures/rsa1.key");
const RSA_PUB: &str = include_str!("../tests/fixtures/rsa1.pub");

async fn ok(_req: Request<Body>) -> Result<Response<Body>, Infallible> {
    Ok(Response::new(Body::empty()))
}

fn req(header: &'static str, value: &str) -> Request<Body> {
    Request::builder()
        .method("POST")
        .uri("/mcp")
        .header(header, value)
        .body(Body::empty())
        .unwrap()
}

/// The baseline the comparison asks for (tower-http marks it deprecated as "too basic";
/// it compares the plaintext header with `==`).
#[allow(deprecated)]
fn tower_http_bearer()
-> ValidateRequestHeaderLayer<tower_http::auth::require_authorization::Bearer<Body>> {
    ValidateRequestHeaderLayer::bearer(TOKEN)
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

macro_rules! bench_service {
    ($group:expr, $rt:expr, $name:expr, $svc:expr, $mkreq:expr) => {{
        let svc = $svc;
        // sanity: the request is accepted
        let status = $rt.block_on(svc.clone().oneshot($mkreq)).unwrap().status();
        assert_eq!(status, 200, "{}", $name);
        $group.bench_function($name, |b| {
            b.to_async(&$rt).iter(|| {
                let mut s = svc.clone();
                let request = $mkreq;
                async move {
                    let r = s.ready().await.unwrap().call(request).await.unwrap();
                    black_box(r.status())
                }
            })
        });
    }};
}

fn static_credentials(c: &mut Criterion) {
    let rt = rt();
    let bearer_value = format!("Bearer {TOKEN}");
    let mut g = c.benchmark_group("static_credentials");

    bench_service!(
        g,
        rt,
        "tower_http_validate_bearer",
        ServiceBuilder::new()
            .layer(tower_http_bearer())
            .service_fn(ok),
        req("authorization", &bearer_value)
    );
    bench_service!(
        g,
        rt,
        "mcp_auth_static_bearer",
        ServiceBuilder::new()
            .layer(AuthLayer::new(
                BearerTokenAuthenticator::builder()
                    .token(CredentialEntry::new("t", TOKEN))
                    .build()
                    .unwrap()
            ))
            .service_fn(ok),
        req("authorization", &bearer_value)
    );
    bench_service!(
        g,
        rt,
        "mcp_auth_api_key",
        ServiceBuilder::new()
            .layer(AuthLayer::api_keys([CredentialEntry::new("k", KEY)]).unwrap())
            .service_fn(ok),
        req("x-api-key", KEY)
    );
    bench_service!(
        g,
        rt,
        "mcp_auth_layer_only_fixed_principal",
        ServiceBuilder::new()
            .layer(AuthLayer::new(Fixed(mcp_core::Principal::new(
                "p",
                mcp_core::AuthMethod::ApiKey
            ))))
            .service_fn(ok),
        req("x-api-key", KEY)
    );
    let many: Vec<CredentialEntry> = (0..1000)
        .map(|i| CredentialEntry::new(format!("k{i}"), format!("Abc123!@#Xyz789!@#{i:04}")))
        .chain([CredentialEntry::new("k", KEY)])
        .collect();
    bench_service!(
        g,
        rt,
        "mcp_auth_api_key_1001_keys",
        ServiceBuilder::new()
            .layer(AuthLayer::api_keys(many).unwrap())
            .service_fn(ok),
        req("x-api-key", KEY)
    );
    g.finish();
}

/// An authenticator that does no work: measures the layer itself (two extension inserts).
#[derive(Debug)]
struct Fixed(mcp_core::Principal);

impl mcp_auth::Authenticator for Fixed {
    fn scheme(&self) -> mcp_auth::Scheme {
        mcp_auth::Scheme::Bearer
    }
    fn authenticate<'a>(&'a self, _: &'a http::request::Parts) -> mcp_auth::AuthFuture<'a> {
        mcp_auth::AuthFuture::Ready(mcp_auth::Outcome::Authenticated(self.0.clone()))
    }
}

fn claims() -> Value {
    json!({"sub": "alice", "iss": "https://issuer.test", "aud": "mcp", "exp": jsonwebtoken::get_current_timestamp() + 3600, "scope": "mcp:tools mcp:read"})
}

fn jwt(c: &mut Criterion) {
    // The backend of the build (aws-lc-rs with the `aws-lc-rs` feature) before signing.
    mcp_auth::jwt::install_crypto_provider();
    let rt = rt();
    for (alg, enc, dec_pem) in [
        (
            Algorithm::HS256,
            EncodingKey::from_secret(HS_SECRET.as_bytes()),
            None,
        ),
        (
            Algorithm::RS256,
            EncodingKey::from_rsa_pem(RSA_KEY.as_bytes()).unwrap(),
            Some(RSA_PUB),
        ),
    ] {
        let name = format!("{alg:?}");
        let token = jsonwebtoken::encode(&Header::new(alg), &claims(), &enc).unwrap();
        let value = format!("Bearer {token}");
        let issuer = || {
            let i = JwtIssuer::new("https://issuer.test").audience("mcp");
            match dec_pem {
                None => i.hmac_secret(alg, HS_SECRET),
                Some(pem) => i.public_key_pem(alg, pem),
            }
        };
        let mut g = c.benchmark_group(format!("jwt_{name}"));

        // What a user would write instead: decode the token on every request.
        let key = match dec_pem {
            None => DecodingKey::from_secret(HS_SECRET.as_bytes()),
            Some(pem) => DecodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
        };
        let mut validation = Validation::new(alg);
        validation.set_issuer(&["https://issuer.test"]);
        validation.set_audience(&["mcp"]);
        g.bench_function("jsonwebtoken_decode", |b| {
            b.iter(|| {
                black_box(
                    jsonwebtoken::decode::<Map<String, Value>>(
                        black_box(&token),
                        &key,
                        &validation,
                    )
                    .unwrap(),
                )
            })
        });

        // The per-token work a first-sight verification does besides the signature check:
        // once each per request (three times each on the offloaded path before 2026-12-08;
        // the digest only with the cache on).
        g.bench_function("component_decode_header", |b| {
            b.iter(|| black_box(jsonwebtoken::decode_header(black_box(&token)).unwrap()))
        });
        g.bench_function("component_token_sha256", |b| {
            use sha2::Digest as _;
            b.iter(|| black_box(sha2::Sha256::digest(black_box(token.as_bytes()))))
        });

        bench_service!(
            g,
            rt,
            "mcp_auth_first_sight",
            ServiceBuilder::new()
                .layer(AuthLayer::new(
                    JwtAuthenticator::builder()
                        .issuer(issuer())
                        .cache_capacity(0)
                        .build()
                        .unwrap()
                ))
                .service_fn(ok),
            req("authorization", &value)
        );
        bench_service!(
            g,
            rt,
            "mcp_auth_cached",
            ServiceBuilder::new()
                .layer(AuthLayer::new(
                    JwtAuthenticator::builder()
                        .issuer(issuer())
                        .build()
                        .unwrap()
                ))
                .service_fn(ok),
            req("authorization", &value)
        );
        g.finish();
    }
}

const BASIC_USER: &str = "alice";
const BASIC_PASS: &str = "correct horse battery staple";

/// tower-http's Basic check (deprecated there as "too basic"): plaintext `==`.
#[allow(deprecated)]
fn tower_http_basic()
-> ValidateRequestHeaderLayer<tower_http::auth::require_authorization::Basic<Body>> {
    ValidateRequestHeaderLayer::basic(BASIC_USER, BASIC_PASS)
}

fn basic(c: &mut Criterion) {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    use base64::Engine as _;
    let rt = rt();
    // The argon2 crate's default parameters (m=19456 KiB, t=2, p=1), as a user would hash.
    let phc = mcp_auth::basic::hash_password(BASIC_PASS, None).unwrap();
    let value = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{BASIC_USER}:{BASIC_PASS}"))
    );
    let user = || BasicUser::phc(BASIC_USER, phc.clone());
    let mut g = c.benchmark_group("basic");

    bench_service!(
        g,
        rt,
        "tower_http_validate_basic_plaintext",
        ServiceBuilder::new()
            .layer(tower_http_basic())
            .service_fn(ok),
        req("authorization", &value)
    );
    bench_service!(
        g,
        rt,
        "mcp_auth_basic_cached",
        ServiceBuilder::new()
            .layer(AuthLayer::new(
                BasicAuthenticator::builder().user(user()).build().unwrap()
            ))
            .service_fn(ok),
        req("authorization", &value)
    );

    // Argon2 per request: few samples, each takes tens of milliseconds.
    g.sample_size(10);
    let parsed = PasswordHash::new(&phc).unwrap();
    g.bench_function("argon2_verify_per_request", |b| {
        b.iter(|| {
            black_box(
                argon2::Argon2::default()
                    .verify_password(black_box(BASIC_PASS.as_bytes()), &parsed)
                    .is_ok(),
            )
        })
    });
    bench_service!(
        g,
        rt,
        "mcp_auth_basic_uncached",
        ServiceBuilder::new()
            .layer(AuthLayer::new(
                BasicAuthenticator::builder()
                    .user(user())
                    .cache_capacity(0)
                    .build()
                    .unwrap()
            ))
            .service_fn(ok),
        req("authorization", &value)
    );
    g.finish();
}

criterion_group!(benches, static_credentials, jwt, basic);
criterion_main!(benches);
