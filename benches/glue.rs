//! The in-process cost of each layer of the suite against the glue a user composes by hand
//! in a fresh axum 0.8 service, in the same run, on the same request: one criterion group
//! per row, `ours` beside `glue`, both an axum `Router` (same handler) called through
//! `tower::ServiceExt::oneshot`, the response body read to its end.
//!
//! | group | ours | the glue |
//! |---|---|---|
//! | `api_key` | `AuthLayer::api_keys` | tower-http `ValidateRequestHeaderLayer::custom` + `subtle` |
//! | `jwt_HS256`, `jwt_RS256`, `jwt_ES256` | `AuthLayer` + `JwtAuthenticator` | a `jsonwebtoken::decode` per request in `ValidateRequestHeaderLayer::custom` |
//! | `rate_limit_ip` | `RateLimitLayer` by client IP | `tower_governor` by peer IP |
//! | `sanitize` | `SanitizeLayer::with_parse` | read the body, `serde_json` into a `Value`, a `RegexSet` over the argument strings |
//! | `stack` | audit, IP limit, API key, sanitize | `TraceLayer`, `tower_governor`, the API key check, the sanitize glue |
//! | `stack_stdout` | the same with `StdoutSink` | the same with a `tracing-subscriber` fmt layer on stdout |
//!
//! Work ours does that the glue does not (so a ratio above 1.0x there is the price of it):
//! - API key: the presented key is hashed (SHA-256) and looked up by digest, so keys are
//!   stored hashed and the comparison time does not depend on the key; a `Principal` is
//!   published in the request extensions.
//! - JWT: pinned algorithms per key, `typ`, `kid` selection, integer NumericDates,
//!   required claims, the principal (scopes, issuer, claims) in the extensions. With the
//!   default verified-token cache a repeated token skips the signature check (`ours_cached`);
//!   `ours` is the cache off, the same work as the glue. RSA and ECDSA checks run on the
//!   blocking pool by default (`ours`); `ours_inline` runs them on the executor as the
//!   glue does.
//! - Sanitize: the transport checks (method, `Content-Type`, `Accept`,
//!   `MCP-Protocol-Version`, `Mcp-Method` / `Mcp-Name` agreeing with the body, one `Host`),
//!   duplicate keys refused, the JSON-RPC 2.0 structure, limits on depth, string length,
//!   object keys and array items, control characters, the four built-in rule sets on each
//!   string and on its normalized views (NFKC, HTML references, folded whitespace), the URL
//!   and SSRF rules, and the parsed `McpRequest` left for later layers. The glue parses,
//!   checks `jsonrpc` and `method`, and runs one `RegexSet` over the argument strings.
//! - Audit: one masked, hash-chained event per request, written off the request path; the
//!   glue's `TraceLayer` records a span and two events.
//!
//! The stdout rows write one line per request on both sides: run them with stdout sent
//! elsewhere (`cargo bench --bench glue -- stack_stdout > /dev/null`) and read the figures
//! from `target/criterion`.
// `result_large_err`: tower-http's `ValidateRequestHeaderLayer::custom` takes a closure
// returning `Result<(), Response>`; the glue is written as its users write it.
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::result_large_err
)]

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use criterion::{
    BenchmarkGroup, Criterion, criterion_group, criterion_main, measurement::WallTime,
};
use http::StatusCode;
use http_body_util::BodyExt;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use mcp_security::audit::{AuditConfig, Auditor, sink::StdoutSink};
use mcp_security::auth::{AuthLayer, CredentialEntry, JwtAuthenticator, JwtIssuer};
use mcp_security::ratelimit::{RateLimitConfig, RateLimitLayer};
use mcp_security::sanitize::{SanitizeConfig, SanitizeLayer};
use regex::RegexSet;
use serde_json::{Map, Value};
use subtle::ConstantTimeEq;
use tower::ServiceExt;
use tower_governor::GovernorLayer;
use tower_governor::governor::GovernorConfigBuilder;
use tower_governor::key_extractor::PeerIpKeyExtractor;
use tower_http::trace::TraceLayer;
use tower_http::validate_request::ValidateRequestHeaderLayer;

/// The gateway's small load-test request (a `tools/call` of 225 bytes).
const BODY: &[u8] = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"message":"hello from wrk"},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}}}"#;
const RESULT: &str = r#"{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"hello from wrk"}],"isError":false}}"#;
const API_KEY: &str = "k-0123456789abcdef0123456789abcdef";
const HS_SECRET: &str = "0123456789abcdef0123456789abcdef";
const ISSUER: &str = "https://issuer.test";
const AUDIENCE: &str = "mcp";
const RSA_KEY: &str = include_str!("../crates/mcp-auth/tests/fixtures/rsa1.key");
const RSA_PUB: &str = include_str!("../crates/mcp-auth/tests/fixtures/rsa1.pub");
const EC_KEY: &str = include_str!("../crates/mcp-auth/tests/fixtures/ec1.key");
const EC_PUB: &str = include_str!("../crates/mcp-auth/tests/fixtures/ec1.pub");
/// Both rate limits: so large that nothing is limited.
const BURST: u32 = 1_000_000_000;
const MAX_BODY: usize = 4 * 1024 * 1024;

/// The JWT backend compiled in (the root feature `aws-lc-rs` selects aws-lc-rs).
const BACKEND: &str = if cfg!(feature = "aws-lc-rs") {
    "aws_lc_rs"
} else {
    "rust_crypto"
};

async fn handler() -> Response {
    ([(http::header::CONTENT_TYPE, "application/json")], RESULT).into_response()
}

fn app() -> Router {
    Router::new().route("/mcp", post(handler))
}

/// The request every row sends: the headers the gateway's load test sends, and the peer
/// address axum's `ConnectInfo` would carry.
fn request(authorization: Option<&str>) -> Request {
    let mut b = http::Request::post("/mcp")
        .header("host", "localhost")
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "tools/call")
        .header("mcp-name", "echo")
        .header("x-api-key", API_KEY)
        .extension(ConnectInfo(SocketAddr::from(([192, 0, 2, 7], 40_000))));
    if let Some(a) = authorization {
        b = b.header("authorization", a);
    }
    b.body(Body::from(Bytes::from_static(BODY))).unwrap()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn one(app: &Router, authorization: Option<&str>) -> (StatusCode, Bytes) {
    let resp = app.clone().oneshot(request(authorization)).await.unwrap();
    let status = resp.status();
    (status, resp.into_body().collect().await.unwrap().to_bytes())
}

/// Benches `app` as `name` in `g`, after checking that it answers the handler's result.
fn row(
    g: &mut BenchmarkGroup<'_, WallTime>,
    rt: &tokio::runtime::Runtime,
    name: &str,
    app: Router,
    authorization: Option<&str>,
) {
    let (status, body) = rt.block_on(one(&app, authorization));
    assert_eq!(status, StatusCode::OK, "{name}: {body:?}");
    assert_eq!(body, RESULT.as_bytes(), "{name}");
    g.bench_function(name, |b| {
        b.to_async(rt)
            .iter(|| async { black_box(one(&app, authorization).await) })
    });
}

// ---- the glue ------------------------------------------------------------------------

fn unauthorized() -> Response {
    StatusCode::UNAUTHORIZED.into_response()
}

/// An API key check with `subtle`, as tower-http's docs suggest for custom checks.
fn glue_api_key(
    key: &'static str,
) -> ValidateRequestHeaderLayer<impl FnMut(&mut Request) -> Result<(), Response> + Clone> {
    ValidateRequestHeaderLayer::custom(move |req: &mut Request| {
        let ok = req
            .headers()
            .get("x-api-key")
            .is_some_and(|v| bool::from(v.as_bytes().ct_eq(key.as_bytes())));
        if ok { Ok(()) } else { Err(unauthorized()) }
    })
}

/// A hand-written JWT check: `jsonwebtoken::decode` of the bearer token on each request,
/// the claims put in the request extensions.
fn glue_jwt(
    key: DecodingKey,
    alg: Algorithm,
) -> ValidateRequestHeaderLayer<impl FnMut(&mut Request) -> Result<(), Response> + Clone> {
    let mut validation = Validation::new(alg);
    validation.set_issuer(&[ISSUER]);
    validation.set_audience(&[AUDIENCE]);
    let state = Arc::new((key, validation));
    ValidateRequestHeaderLayer::custom(move |req: &mut Request| {
        let token = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(unauthorized)?;
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &state.0, &state.1)
            .map_err(|_| unauthorized())?;
        req.extensions_mut().insert(data.claims);
        Ok(())
    })
}

fn governor() -> GovernorLayer<
    PeerIpKeyExtractor,
    governor::middleware::NoOpMiddleware<governor::clock::QuantaInstant>,
    Body,
> {
    let config = GovernorConfigBuilder::default()
        .per_nanosecond(1000)
        .burst_size(BURST)
        .finish()
        .unwrap();
    GovernorLayer::new(config)
}

/// Patterns of the four kinds of injection our built-in rules look for.
fn glue_regexes() -> Arc<RegexSet> {
    Arc::new(
        RegexSet::new([
            r"(?i)\b(union\s+(all\s+)?select|select\s+.+\s+from|insert\s+into|drop\s+table|delete\s+from|or\s+1\s*=\s*1)\b",
            r"(?i)(;|&&|\|\||\||`|\$\()\s*(rm|cat|curl|wget|sh|bash|nc|python)\b",
            r"(?i)(<\s*script|javascript:|on(error|load|click)\s*=|<\s*iframe)",
            r"(\.\./|\.\.\\|%2e%2e%2f)",
        ])
        .unwrap(),
    )
}

fn any_string_matches(v: &Value, set: &RegexSet) -> bool {
    match v {
        Value::String(s) => set.is_match(s),
        Value::Array(a) => a.iter().any(|v| any_string_matches(v, set)),
        Value::Object(o) => o.values().any(|v| any_string_matches(v, set)),
        _ => false,
    }
}

/// A hand-written sanitizer: read the body (bounded), parse it, check it is a JSON-RPC
/// request, match the tool arguments against a `RegexSet`, pass the body on.
async fn glue_sanitize(State(set): State<Arc<RegexSet>>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY).await else {
        return StatusCode::PAYLOAD_TOO_LARGE.into_response();
    };
    let Ok(v) = serde_json::from_slice::<Value>(&bytes) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    if v.get("jsonrpc").and_then(Value::as_str) != Some("2.0")
        || !v.get("method").is_some_and(Value::is_string)
    {
        return StatusCode::BAD_REQUEST.into_response();
    }
    if v.pointer("/params/arguments")
        .is_some_and(|a| any_string_matches(a, &set))
    {
        return StatusCode::BAD_REQUEST.into_response();
    }
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

// ---- ours ----------------------------------------------------------------------------

fn ours_api_key() -> AuthLayer {
    AuthLayer::api_keys([CredentialEntry::new("k", API_KEY)]).unwrap()
}

fn ours_rate_limit() -> RateLimitLayer {
    RateLimitLayer::new(RateLimitConfig::per_second(1_000_000.0, BURST)).unwrap()
}

fn ours_sanitize() -> mcp_security::sanitize::ParseSanitizeLayer {
    SanitizeLayer::new(SanitizeConfig::default())
        .unwrap()
        .with_parse()
}

// ---- the rows ------------------------------------------------------------------------

fn api_key(c: &mut Criterion) {
    let rt = rt();
    let mut g = c.benchmark_group("api_key");
    row(
        &mut g,
        &rt,
        "glue",
        app().layer(glue_api_key(API_KEY)),
        None,
    );
    row(&mut g, &rt, "ours", app().layer(ours_api_key()), None);
    g.finish();
}

fn jwt(c: &mut Criterion) {
    // The backend of the build (aws-lc-rs with the `aws-lc-rs` feature) before signing.
    mcp_security::auth::jwt::install_crypto_provider();
    let rt = rt();
    let claims = serde_json::json!({
        "sub": "alice", "iss": ISSUER, "aud": AUDIENCE,
        "exp": jsonwebtoken::get_current_timestamp() + 24 * 3600, "scope": "mcp:tools mcp:read"
    });
    let keys = [
        (
            Algorithm::HS256,
            EncodingKey::from_secret(HS_SECRET.as_bytes()),
            DecodingKey::from_secret(HS_SECRET.as_bytes()),
        ),
        (
            Algorithm::RS256,
            EncodingKey::from_rsa_pem(RSA_KEY.as_bytes()).unwrap(),
            DecodingKey::from_rsa_pem(RSA_PUB.as_bytes()).unwrap(),
        ),
        (
            Algorithm::ES256,
            EncodingKey::from_ec_pem(EC_KEY.as_bytes()).unwrap(),
            DecodingKey::from_ec_pem(EC_PUB.as_bytes()).unwrap(),
        ),
    ];
    for (alg, enc, dec) in keys {
        let token = jsonwebtoken::encode(&Header::new(alg), &claims, &enc).unwrap();
        let bearer = format!("Bearer {token}");
        let issuer = || {
            let i = JwtIssuer::new(ISSUER).audience(AUDIENCE);
            match alg {
                Algorithm::HS256 => i.hmac_secret(alg, HS_SECRET),
                Algorithm::RS256 => i.public_key_pem(alg, RSA_PUB),
                _ => i.public_key_pem(alg, EC_PUB),
            }
        };
        let ours = |cache: usize, blocking: usize| {
            AuthLayer::new(
                JwtAuthenticator::builder()
                    .issuer(issuer())
                    .cache_capacity(cache)
                    .blocking_verifications(blocking)
                    .build()
                    .unwrap(),
            )
        };
        let mut g = c.benchmark_group(format!("jwt_{alg:?}_{BACKEND}"));
        let auth = Some(bearer.as_str());
        row(&mut g, &rt, "glue", app().layer(glue_jwt(dec, alg)), auth);
        row(&mut g, &rt, "ours", app().layer(ours(0, 8)), auth);
        if alg != Algorithm::HS256 {
            row(&mut g, &rt, "ours_inline", app().layer(ours(0, 0)), auth);
        }
        row(
            &mut g,
            &rt,
            "ours_cached",
            app().layer(ours(10_000, 8)),
            auth,
        );
        g.finish();
    }
}

fn rate_limit(c: &mut Criterion) {
    let rt = rt();
    let mut g = c.benchmark_group("rate_limit_ip");
    row(&mut g, &rt, "glue", app().layer(governor()), None);
    row(&mut g, &rt, "ours", app().layer(ours_rate_limit()), None);
    g.finish();
}

fn sanitize(c: &mut Criterion) {
    let rt = rt();
    let mut g = c.benchmark_group("sanitize");
    let glue = app().layer(from_fn_with_state(glue_regexes(), glue_sanitize));
    row(&mut g, &rt, "glue", glue, None);
    row(&mut g, &rt, "ours", app().layer(ours_sanitize()), None);
    g.finish();
}

/// The glue stack, outermost first: trace, rate limit by IP, API key, sanitize.
fn glue_stack() -> Router {
    app()
        .layer(from_fn_with_state(glue_regexes(), glue_sanitize))
        .layer(glue_api_key(API_KEY))
        .layer(governor())
        .layer(TraceLayer::new_for_http())
}

/// Ours, outermost first: audit, rate limit by IP, API key, sanitize.
fn ours_stack(auditor: &Auditor) -> Router {
    app()
        .layer(ours_sanitize())
        .layer(ours_api_key())
        .layer(ours_rate_limit())
        .layer(auditor.layer())
}

fn stack(c: &mut Criterion) {
    let rt = rt();
    let mut g = c.benchmark_group("stack");
    row(&mut g, &rt, "glue", glue_stack(), None);
    let auditor = rt.block_on(async { Auditor::builder(AuditConfig::default()).start() });
    let auditor = auditor.unwrap();
    row(&mut g, &rt, "ours", ours_stack(&auditor), None);
    g.finish();
}

fn stack_stdout(c: &mut Criterion) {
    let rt = rt();
    let mut g = c.benchmark_group("stack_stdout");
    {
        // TraceLayer's span and events (DEBUG) as JSON-less text lines on stdout; the
        // benches run on this thread (current-thread runtime).
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("tower_http=debug"))
            .with_writer(std::io::stdout)
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        row(&mut g, &rt, "glue", glue_stack(), None);
    }
    let auditor = rt.block_on(async {
        Auditor::builder(AuditConfig::default())
            .sink(StdoutSink::new())
            .start()
    });
    let auditor = auditor.unwrap();
    row(&mut g, &rt, "ours", ours_stack(&auditor), None);
    g.finish();
}

criterion_group!(
    benches,
    api_key,
    jwt,
    rate_limit,
    sanitize,
    stack,
    stack_stdout
);
criterion_main!(benches);
