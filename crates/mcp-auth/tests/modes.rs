//! Each authentication mode accepted and refused over real TCP (axum::serve), with the
//! right status, challenges and JSON-RPC body; the Principal and the Denial are seen by
//! an outer layer in the response extensions.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::routing::{get as get_route, post as post_route};
use base64::Engine as _;
use common::*;
use mcp_auth::basic::hash_password;
use mcp_auth::{
    ApiKeyAuthenticator, AuthLayer, BasicAuthenticator, BasicUser, BearerTokenAuthenticator,
    ClientCertAuthenticator, CredentialEntry, NewSecret, SecretKind, SecretStore,
};
use mcp_core::{ClientCertIdentity, TlsInfo};
use tower::util::MapResponseLayer;

const KEY: &str = "Abc123!@#Xyz789!@#";
const KEY2: &str = "Zyx987$%^Cba321&*(";
const TOKEN: &str = "q8Jx2mV7pL0sN4tR9wY3zB6cF1hK5dG8aE2uI7oP0";

fn app(auth: AuthLayer) -> Router {
    Router::new()
        .route("/mcp", post_route(whoami).get(whoami))
        .route("/whoami", get_route(whoami))
        .layer(auth)
        .layer(MapResponseLayer::new(inspect))
}

fn assert_jsonrpc_error(r: &Resp, code: i64) {
    let v = r.json();
    assert_eq!(v["jsonrpc"], "2.0", "{}", r.text());
    assert_eq!(v["error"]["code"], code, "{}", r.text());
    assert!(v["id"].is_null());
    assert_eq!(r.header("content-type"), Some("application/json"));
}

async fn api_key_server() -> std::net::SocketAddr {
    let auth = AuthLayer::builder()
        .realm("tests")
        .authenticator(
            ApiKeyAuthenticator::builder()
                .key(
                    CredentialEntry::new("k1", KEY)
                        .principal("alice")
                        .scopes(["mcp:tools"]),
                )
                .key(
                    CredentialEntry::new("k2", KEY2)
                        .expires_at(SystemTime::now() - Duration::from_secs(5)),
                )
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    serve(app(auth)).await
}

#[tokio::test]
async fn api_key_accepted_in_any_header_case() {
    let addr = api_key_server().await;
    for name in ["X-API-Key", "x-api-key", "X-Api-KEY"] {
        let r = post(addr, "/mcp", &[(name, KEY)], "{}").await;
        assert_eq!(r.status, 200, "{name}");
        assert_eq!(r.text(), "alice api_key mcp:tools");
        assert_eq!(
            r.header(SEEN_PRINCIPAL),
            Some("alice"),
            "principal in response extensions"
        );
    }
}

#[tokio::test]
async fn api_key_missing_wrong_expired_repeated() {
    let addr = api_key_server().await;
    let none = post(addr, "/mcp", &[], "{}").await;
    assert_eq!(none.status, 401);
    assert_eq!(
        none.challenges(),
        vec![r#"ApiKey realm="tests", header="X-Api-Key""#]
    );
    assert_jsonrpc_error(&none, -32001);
    assert_eq!(none.header(SEEN_DENIAL), Some("auth_failed"));
    assert_eq!(none.header(SEEN_DETAIL), Some("no credentials"));

    let wrong = post(addr, "/mcp", &[("x-api-key", "Abc123!@#Xyz789!@?")], "{}").await;
    assert_eq!(wrong.status, 401);
    assert_eq!(
        wrong.challenges(),
        vec![r#"ApiKey realm="tests", header="X-Api-Key", error="invalid_key""#]
    );
    assert_eq!(wrong.header(SEEN_DETAIL), Some("unknown api key"));
    assert!(!wrong.text().contains("Abc123"));

    let expired = post(addr, "/mcp", &[("x-api-key", KEY2)], "{}").await;
    assert_eq!(expired.status, 401);
    assert!(expired.header(SEEN_DETAIL).unwrap().contains("expired"));
    assert!(!expired.header(SEEN_DETAIL).unwrap().contains(KEY2));

    // two keys: ambiguous, refused as malformed
    let twice = post(
        addr,
        "/mcp",
        &[("x-api-key", KEY), ("X-API-KEY", KEY)],
        "{}",
    )
    .await;
    assert_eq!(twice.status, 400);
    assert!(twice.header(SEEN_DETAIL).unwrap().contains("repeated"));

    // a key sent as a bearer token is not an API key
    let bearer = post(
        addr,
        "/mcp",
        &[("authorization", &format!("Bearer {KEY}"))],
        "{}",
    )
    .await;
    assert_eq!(bearer.status, 401);
}

#[tokio::test]
async fn api_key_in_query_string_is_refused_not_read() {
    let addr = api_key_server().await;
    let enc = KEY
        .replace('#', "%23")
        .replace('!', "%21")
        .replace('@', "%40");
    for q in [
        format!("/whoami?api_key={enc}"),
        format!("/whoami?X-API-KEY={enc}"),
        format!("/whoami?access_token={enc}"),
        format!("/whoami?a=1&apikey={enc}"),
    ] {
        let r = get(addr, &q, &[]).await;
        assert_eq!(r.status, 400, "{q}");
        assert!(
            r.header(SEEN_DETAIL).unwrap().contains("query parameter"),
            "{q}"
        );
        assert!(r.header(SEEN_PRINCIPAL).is_none());
        // refused even with a valid header: the key has leaked into a URL
        let r = get(addr, &q, &[("x-api-key", KEY)]).await;
        assert_eq!(r.status, 400, "{q}");
    }
    // other query parameters are fine
    assert_eq!(
        get(addr, "/whoami?cursor=abc", &[("x-api-key", KEY)])
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn required_scope_missing_is_403_insufficient_scope() {
    let auth = AuthLayer::builder()
        .authenticator(
            BearerTokenAuthenticator::builder()
                .token(CredentialEntry::new("t", TOKEN).scopes(["mcp:read"]))
                .build()
                .unwrap(),
        )
        .require_scopes(["mcp:tools"])
        .build()
        .unwrap();
    let addr = serve(app(auth)).await;
    let r = post(
        addr,
        "/mcp",
        &[("authorization", &format!("Bearer {TOKEN}"))],
        "{}",
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(
        r.challenges(),
        vec![r#"Bearer realm="mcp", error="insufficient_scope", scope="mcp:tools""#]
    );
    assert_jsonrpc_error(&r, -32003);
    assert_eq!(r.header(SEEN_DENIAL), Some("insufficient_scope"));
    assert_eq!(
        r.header(SEEN_PRINCIPAL),
        Some("t"),
        "outer layers still learn who it was"
    );
    // 401 challenge advertises the scope
    let r = post(addr, "/mcp", &[], "{}").await;
    assert_eq!(
        r.challenges(),
        vec![r#"Bearer realm="mcp", scope="mcp:tools""#]
    );
}

#[tokio::test]
async fn static_bearer_tokens() {
    let auth =
        AuthLayer::bearer_tokens([CredentialEntry::new("deploy", TOKEN).principal("ci")]).unwrap();
    let addr = serve(app(auth)).await;
    let ok = get(
        addr,
        "/whoami",
        &[("authorization", &format!("Bearer {TOKEN}"))],
    )
    .await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.text(), "ci bearer_token ");
    let lower = get(
        addr,
        "/whoami",
        &[("authorization", &format!("bearer {TOKEN}"))],
    )
    .await;
    assert_eq!(lower.status, 200, "scheme is case-insensitive");
    let none = get(addr, "/whoami", &[]).await;
    assert_eq!(none.status, 401);
    assert_eq!(
        none.challenges(),
        vec![r#"Bearer realm="mcp""#],
        "no error without a token (RFC 6750 3.1)"
    );
    let bad = get(
        addr,
        "/whoami",
        &[("authorization", &format!("Bearer {TOKEN}A"))],
    )
    .await;
    assert_eq!(bad.status, 401);
    assert_eq!(
        bad.challenges(),
        vec![r#"Bearer realm="mcp", error="invalid_token""#]
    );
    let malformed = get(addr, "/whoami", &[("authorization", "Bearer a b c")]).await;
    assert_eq!(malformed.status, 400);
    assert_eq!(
        malformed.challenges(),
        vec![r#"Bearer realm="mcp", error="invalid_request""#]
    );
    let q = get(addr, &format!("/whoami?access_token={TOKEN}"), &[]).await;
    assert_eq!(q.status, 400);
    assert!(q.challenges()[0].contains(r#"error="invalid_request""#));
}

fn small_params() -> argon2::Params {
    argon2::Params::new(256, 1, 1, None).unwrap()
}

fn basic(user: &str, pass: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    )
}

#[tokio::test]
async fn basic_auth() {
    let phc = hash_password("open:sesame", Some(small_params())).unwrap();
    let auth = AuthLayer::new(
        BasicAuthenticator::builder()
            .user(BasicUser::phc("aladdin", phc).scopes(["lamp"]))
            .user(BasicUser::phc(
                "jösé",
                hash_password("pässwörd", Some(small_params())).unwrap(),
            ))
            .build()
            .unwrap(),
    );
    let addr = serve(app(auth)).await;
    let ok = get(
        addr,
        "/whoami",
        &[("authorization", &basic("aladdin", "open:sesame"))],
    )
    .await;
    assert_eq!(ok.status, 200, "colon inside the password");
    assert_eq!(ok.text(), "aladdin basic lamp");
    assert_eq!(ok.header(SEEN_PRINCIPAL), Some("aladdin"));
    let utf8 = get(
        addr,
        "/whoami",
        &[("authorization", &basic("jösé", "pässwörd"))],
    )
    .await;
    assert_eq!(utf8.status, 200, "UTF-8 user and password");

    let none = get(addr, "/whoami", &[]).await;
    assert_eq!(none.status, 401);
    assert_eq!(
        none.challenges(),
        vec![r#"Basic realm="mcp", charset="UTF-8""#]
    );
    let wrong = get(
        addr,
        "/whoami",
        &[("authorization", &basic("aladdin", "open"))],
    )
    .await;
    let unknown = get(
        addr,
        "/whoami",
        &[("authorization", &basic("mallory", "open:sesame"))],
    )
    .await;
    assert_eq!(wrong.status, 401);
    assert_eq!(unknown.status, 401);
    assert_eq!(
        wrong.body, unknown.body,
        "same answer whether the user exists or not"
    );
    assert_eq!(wrong.header(SEEN_DETAIL), unknown.header(SEEN_DETAIL));
    assert_eq!(wrong.challenges(), unknown.challenges());
    let bad64 = get(addr, "/whoami", &[("authorization", "Basic !!!!")]).await;
    assert_eq!(bad64.status, 400);
    let nocolon = get(
        addr,
        "/whoami",
        &[(
            "authorization",
            &format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode("nocolon")
            ),
        )],
    )
    .await;
    assert_eq!(nocolon.status, 400);
}

#[tokio::test]
async fn modes_tried_in_order_and_all_challenges_sent() {
    let phc = hash_password("pw", Some(small_params())).unwrap();
    let auth = AuthLayer::builder()
        .authenticator(
            ApiKeyAuthenticator::builder()
                .key(CredentialEntry::new("k", KEY))
                .build()
                .unwrap(),
        )
        .authenticator(
            BearerTokenAuthenticator::builder()
                .token(CredentialEntry::new("t", TOKEN))
                .build()
                .unwrap(),
        )
        .authenticator(
            BasicAuthenticator::builder()
                .user(BasicUser::phc("u", phc))
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let addr = serve(app(auth)).await;
    let none = get(addr, "/whoami", &[]).await;
    assert_eq!(none.status, 401);
    assert_eq!(
        none.challenges(),
        vec![
            r#"ApiKey realm="mcp", header="X-Api-Key""#.to_owned(),
            r#"Bearer realm="mcp""#.to_owned(),
            r#"Basic realm="mcp", charset="UTF-8""#.to_owned(),
        ]
    );
    assert_eq!(
        get(addr, "/whoami", &[("x-api-key", KEY)]).await.status,
        200
    );
    assert_eq!(
        get(
            addr,
            "/whoami",
            &[("authorization", &format!("Bearer {TOKEN}"))]
        )
        .await
        .status,
        200
    );
    assert_eq!(
        get(addr, "/whoami", &[("authorization", &basic("u", "pw"))])
            .await
            .status,
        200
    );
    // a wrong API key does not stop a valid bearer token from authenticating
    let r = get(
        addr,
        "/whoami",
        &[
            ("x-api-key", "nope"),
            ("authorization", &format!("Bearer {TOKEN}")),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "t bearer_token ");
    // only the presented scheme gets an error
    let r = get(
        addr,
        "/whoami",
        &[("authorization", "Bearer wrongwrongwrong")],
    )
    .await;
    let c = r.challenges();
    assert!(c[0].starts_with("ApiKey") && !c[0].contains("error"));
    assert!(c[1].contains(r#"error="invalid_token""#));
}

#[tokio::test]
async fn client_certificate_from_tls_info() {
    let cert = |cn: &str, uris: &[&str]| ClientCertIdentity {
        common_name: Some(cn.to_owned()),
        subject: format!("CN={cn}"),
        issuer: "CN=test-ca".into(),
        dns_names: vec![],
        uris: uris.iter().map(|s| s.to_string()).collect(),
        serial: "01".into(),
        fingerprint_sha256: [9; 32],
        der: bytes::Bytes::new(),
    };
    let mtls = ClientCertAuthenticator::builder()
        .allow_san("spiffe://test/agent")
        .scopes_for("spiffe://test/agent", ["mcp:tools"])
        .build()
        .unwrap();
    // The accept loop puts TlsInfo in the request extensions; this layer plays its part,
    // choosing the certificate from a test header.
    let tls = tower::util::MapRequestLayer::new(move |mut req: http::Request<axum::body::Body>| {
        let client = match req
            .headers()
            .get("x-test-cert")
            .and_then(|v| v.to_str().ok())
        {
            Some("agent") => Some(Arc::new(cert("agent", &["spiffe://test/agent"]))),
            Some("other") => Some(Arc::new(cert("other", &["spiffe://test/other"]))),
            _ => None,
        };
        req.extensions_mut().insert(TlsInfo {
            protocol: Some("TLSv1.3"),
            client,
            ..TlsInfo::default()
        });
        req
    });
    let app = Router::new()
        .route("/whoami", get_route(whoami))
        .layer(AuthLayer::new(mtls))
        .layer(tls)
        .layer(MapResponseLayer::new(inspect));
    let addr = serve(app).await;
    let ok = get(addr, "/whoami", &[("x-test-cert", "agent")]).await;
    assert_eq!(ok.status, 200);
    assert_eq!(
        ok.text(),
        "spiffe://test/agent client_certificate mcp:tools"
    );
    let other = get(addr, "/whoami", &[("x-test-cert", "other")]).await;
    assert_eq!(
        other.status, 403,
        "no HTTP challenge exists for a TLS credential"
    );
    assert_eq!(other.header(SEEN_DENIAL), Some("auth_failed"));
    assert!(other.header(SEEN_DETAIL).unwrap().contains("allow list"));
    assert!(
        other.challenges().is_empty(),
        "no HTTP challenge for a TLS credential"
    );
    assert_eq!(get(addr, "/whoami", &[]).await.status, 403);
}

#[tokio::test]
async fn store_backed_keys_rotate_without_rebuilding_the_layer() {
    let store = SecretStore::new();
    let (info, old) = store
        .generate(
            NewSecret::api_key("svc")
                .principal("svc-bot")
                .scopes(["mcp:tools"]),
        )
        .unwrap();
    let auth = AuthLayer::new(
        ApiKeyAuthenticator::builder()
            .store(store.clone())
            .build()
            .unwrap(),
    );
    let addr = serve(app(auth)).await;
    let r = get(addr, "/whoami", &[("x-api-key", old.expose())]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "svc-bot api_key mcp:tools");

    // rotation with an overlap: both work
    let (_, new) = store.rotate(&info.id, Duration::from_secs(3600)).unwrap();
    assert_eq!(
        get(addr, "/whoami", &[("x-api-key", old.expose())])
            .await
            .status,
        200
    );
    assert_eq!(
        get(addr, "/whoami", &[("x-api-key", new.expose())])
            .await
            .status,
        200
    );

    // overlap over: only the newest works
    let (_, newest) = store.rotate(&info.id, Duration::ZERO).unwrap();
    assert_eq!(
        get(addr, "/whoami", &[("x-api-key", old.expose())])
            .await
            .status,
        401
    );
    assert_eq!(
        get(addr, "/whoami", &[("x-api-key", new.expose())])
            .await
            .status,
        401
    );
    assert_eq!(
        get(addr, "/whoami", &[("x-api-key", newest.expose())])
            .await
            .status,
        200
    );

    // a short overlap ends by itself
    let (_, last) = store.rotate(&info.id, Duration::from_millis(300)).unwrap();
    assert_eq!(
        get(addr, "/whoami", &[("x-api-key", newest.expose())])
            .await
            .status,
        200
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        get(addr, "/whoami", &[("x-api-key", newest.expose())])
            .await
            .status,
        401
    );
    assert_eq!(
        get(addr, "/whoami", &[("x-api-key", last.expose())])
            .await
            .status,
        200
    );

    // an expired secret never authenticates; a revoked one neither
    let (_, short) = store
        .generate(NewSecret::api_key("short").ttl(Duration::from_millis(200)))
        .unwrap();
    assert_eq!(
        get(addr, "/whoami", &[("x-api-key", short.expose())])
            .await
            .status,
        200
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        get(addr, "/whoami", &[("x-api-key", short.expose())])
            .await
            .status,
        401
    );
    assert!(store.verify(SecretKind::ApiKey, short.expose()).is_none());
    assert!(store.revoke(&info.id));
    assert_eq!(
        get(addr, "/whoami", &[("x-api-key", last.expose())])
            .await
            .status,
        401
    );
}

#[tokio::test]
async fn disabled_auth_gives_anonymous() {
    let addr = serve(app(AuthLayer::disabled())).await;
    let r = get(addr, "/whoami", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "anonymous anonymous ");
}
