//! No credential in Debug output, logs, errors or responses: every configuration and
//! authenticator type is formatted and searched for the secrets it was built with, and
//! the logs written while building and serving are captured and searched too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use common::*;
use jsonwebtoken::Algorithm;
use mcp_auth::basic::hash_password;
use mcp_auth::credentials::decode_basic;
use mcp_auth::{
    ApiKeyAuthenticator, AuthConfig, AuthLayer, BasicAuthenticator, BasicUser,
    BearerTokenAuthenticator, ClientCertAuthenticator, CredentialEntry, JwtAuthenticator,
    JwtIssuer, NewSecret, SecretStore,
};
use serde_json::json;
use tower::{Service, ServiceExt};

const API_KEY: &str = "Leak1!@#Leak1!@#Leak1";
const TOKEN: &str = "LeakTokenLeakTokenLeakTokenLeakToken0123";
const PASSWORD: &str = "leak-password-plain";
const JWT_SECRET: &str = "leak-jwt-secret-0123456789abcdef0123";
const SECRETS: &[&str] = &[
    API_KEY,
    TOKEN,
    PASSWORD,
    JWT_SECRET,
    "Leak1",
    "LeakToken",
    "leak-password",
    "leak-jwt",
];

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn assert_clean(what: &str, text: &str) {
    for s in SECRETS {
        assert!(!text.contains(s), "{what} contains a secret ({s}): {text}");
    }
}

#[tokio::test]
async fn debug_logs_errors_and_responses_hold_no_secret() {
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let params = argon2::Params::new(256, 1, 1, None).unwrap();
    let store = SecretStore::new();
    let (_, stored) = store.generate(NewSecret::api_key("stored")).unwrap();

    let entry = CredentialEntry::new("k", API_KEY);
    let api = ApiKeyAuthenticator::builder()
        .key(entry.clone())
        .store(store.clone())
        .build()
        .unwrap();
    let bearer = BearerTokenAuthenticator::builder()
        .token(CredentialEntry::new("t", TOKEN))
        .build()
        .unwrap();
    let user = BasicUser::plaintext("admin", PASSWORD);
    let basic = BasicAuthenticator::builder()
        .argon2_params(params.clone())
        .user(user.clone())
        .build()
        .unwrap();
    let phc = hash_password(PASSWORD, Some(params)).unwrap();
    let basic_phc = BasicAuthenticator::builder()
        .user(BasicUser::phc("other", phc.clone()))
        .build()
        .unwrap();
    let issuer = JwtIssuer::new("https://i").hmac_secret(Algorithm::HS256, JWT_SECRET);
    let issuer_dbg = format!("{issuer:?}");
    let jwt = JwtAuthenticator::builder().issuer(issuer).build().unwrap();
    let mtls = ClientCertAuthenticator::builder().build().unwrap();
    let cfg: AuthConfig = serde_json::from_value(json!({
        "enabled": true, "mode": ["apikey", "bearer", "basic"],
        "apiKey": API_KEY, "bearerToken": TOKEN, "username": "admin", "password": PASSWORD,
        "jwtSecret": JWT_SECRET, "jwtAlgorithm": "HS256",
        "apiKeys": [{"id": "x", "key": "Leak1!@#Leak1!@#Leak2"}],
        "users": [{"username": "u2", "password": "leak-password-two"}, {"username": "u3", "passwordHash": phc}]
    }))
    .unwrap();
    let layer = cfg.build().unwrap();
    let full = AuthLayer::builder()
        .authenticator(api.clone())
        .authenticator(bearer.clone())
        .authenticator(basic.clone())
        .authenticator(jwt.clone())
        .authenticator(mtls.clone())
        .build()
        .unwrap();

    for (what, text) in [
        ("CredentialEntry", format!("{entry:?}")),
        ("ApiKeyAuthenticator", format!("{api:?}")),
        ("BearerTokenAuthenticator", format!("{bearer:?}")),
        ("BasicUser", format!("{user:?}")),
        ("BasicAuthenticator", format!("{basic:?} {basic_phc:?}")),
        ("JwtIssuer", issuer_dbg),
        ("JwtAuthenticator", format!("{jwt:?}")),
        ("ClientCertAuthenticator", format!("{mtls:?}")),
        ("AuthConfig", format!("{cfg:?}")),
        ("AuthLayer from config", format!("{layer:?}")),
        ("AuthLayer", format!("{full:?}")),
        ("SecretStore", format!("{store:?} {:?}", store.list())),
        (
            "BasicCredentials",
            format!(
                "{:?}",
                decode_basic(
                    &base64::engine::general_purpose::STANDARD.encode(format!("admin:{PASSWORD}"))
                )
                .unwrap()
            ),
        ),
    ] {
        assert_clean(what, &text);
        assert!(!text.contains(stored.expose()), "{what} shows a stored key");
        assert!(!text.contains(&phc), "{what} shows a password hash");
    }

    // errors made from secrets
    let weak = ApiKeyAuthenticator::builder()
        .key(CredentialEntry::new("w", "leak1leak1leak1leak"))
        .build()
        .unwrap_err();
    assert!(!weak.to_string().contains("leak1leak1"));
    let short = JwtAuthenticator::builder()
        .issuer(JwtIssuer::any().hmac_secret(Algorithm::HS256, "leak-jwt-short"))
        .build()
        .unwrap_err();
    assert_clean("jwt error", &short.to_string());
    assert!(!short.to_string().contains("leak-jwt-short"));

    // responses and denials for wrong and right credentials
    let mut svc = tower::ServiceBuilder::new()
        .map_response(inspect)
        .layer(full)
        .service_fn(|_req: http::Request<mcp_core::Body>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(mcp_core::Body::empty()))
        });
    let wrong_key = "Leak1!@#Leak1!@#LeakX";
    for (h, v) in [
        ("x-api-key", wrong_key.to_owned()),
        ("authorization", format!("Bearer {TOKEN}x")),
        (
            "authorization",
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("admin:{PASSWORD}x"))
            ),
        ),
        (
            "authorization",
            format!(
                "Bearer {}.{}.{}",
                b64(b"{\"alg\":\"HS256\"}"),
                b64(b"{}"),
                b64(JWT_SECRET.as_bytes())
            ),
        ),
    ] {
        let req = http::Request::builder()
            .header(h, &v)
            .body(mcp_core::Body::empty())
            .unwrap();
        let res = svc.ready().await.unwrap().call(req).await.unwrap();
        assert_eq!(res.status(), 401);
        let headers = format!("{:?}", res.headers());
        assert_clean("response headers", &headers);
        assert!(!headers.contains(wrong_key));
        let body = http_body_util::BodyExt::collect(res.into_body())
            .await
            .unwrap()
            .to_bytes();
        assert_clean("response body", &String::from_utf8_lossy(&body));
    }

    // the logs written meanwhile (including the plaintext password warning)
    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("PLAINTEXT PASSWORD"),
        "the plaintext warning is loud: {logs}"
    );
    assert_clean("logs", &logs);
    assert!(!logs.contains("leak-password-two"));
}
