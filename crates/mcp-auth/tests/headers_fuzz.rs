//! Property tests through the whole AuthLayer: arbitrary Authorization, API key and query
//! values never authenticate, never panic, and never get a 5xx.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::convert::Infallible;

use jsonwebtoken::Algorithm;
use mcp_auth::{
    ApiKeyAuthenticator, AuthLayer, BearerTokenAuthenticator, CredentialEntry, JwtAuthenticator,
    JwtIssuer,
};
use mcp_core::Body;
use proptest::prelude::*;
use tower::{Service, ServiceBuilder, ServiceExt};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn layer() -> AuthLayer {
    AuthLayer::builder()
        .authenticator(
            ApiKeyAuthenticator::builder()
                .key(CredentialEntry::new("k", "Abc123!@#Xyz789!@#"))
                .build()
                .unwrap(),
        )
        .authenticator(
            BearerTokenAuthenticator::builder()
                .token(CredentialEntry::new(
                    "t",
                    "q8Jx2mV7pL0sN4tR9wY3zB6cF1hK5dG8aE2uI7oP0",
                ))
                .build()
                .unwrap(),
        )
        .authenticator(
            JwtAuthenticator::builder()
                .issuer(
                    JwtIssuer::any()
                        .hmac_secret(Algorithm::HS256, "0123456789abcdef0123456789abcdef"),
                )
                .build()
                .unwrap(),
        )
        .build()
        .unwrap()
}

fn status(
    rt: &tokio::runtime::Runtime,
    layer: &AuthLayer,
    uri: &str,
    headers: &[(&str, &[u8])],
) -> Option<u16> {
    let mut b = http::Request::builder().uri(uri);
    for (k, v) in headers {
        let Ok(v) = http::HeaderValue::from_bytes(v) else {
            return None;
        };
        b = b.header(*k, v);
    }
    let req = b.body(Body::empty()).ok()?;
    let mut svc =
        ServiceBuilder::new()
            .layer(layer.clone())
            .service_fn(|_r: http::Request<Body>| async {
                Ok::<_, Infallible>(http::Response::new(Body::empty()))
            });
    Some(rt.block_on(async {
        svc.ready()
            .await
            .unwrap()
            .call(req)
            .await
            .unwrap()
            .status()
            .as_u16()
    }))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_authorization_never_authenticates(v in proptest::collection::vec(any::<u8>(), 0..300)) {
        let rt = runtime();
        let l = layer();
        if let Some(s) = status(&rt, &l, "/mcp", &[("authorization", &v)]) {
            prop_assert!(s == 400 || s == 401, "status {}", s);
        }
    }

    #[test]
    fn arbitrary_scheme_and_token(scheme in "(?i)(bearer|basic|digest|apikey)", token in "[ -~]{0,200}") {
        let rt = runtime();
        let l = layer();
        let value = format!("{scheme} {token}");
        if let Some(s) = status(&rt, &l, "/mcp", &[("authorization", value.as_bytes())]) {
            prop_assert!(s == 400 || s == 401, "status {}", s);
        }
    }

    #[test]
    fn arbitrary_api_key_header(v in proptest::collection::vec(any::<u8>(), 0..600)) {
        let rt = runtime();
        let l = layer();
        if let Some(s) = status(&rt, &l, "/mcp", &[("x-api-key", &v)]) {
            prop_assert!(s == 400 || s == 401, "status {}", s);
        }
    }

    #[test]
    fn arbitrary_query(q in "[a-zA-Z0-9_%=&.+-]{0,100}") {
        let rt = runtime();
        let l = layer();
        if let Some(s) = status(&rt, &l, &format!("/mcp?{q}"), &[("x-api-key", b"Abc123!@#Xyz789!@#")]) {
            prop_assert!(s == 200 || s == 400, "status {}", s);
        }
    }
}
