//! The full chain over real TCP: AuthLayer -> ParseLayer -> AuthorizeLayer -> handler;
//! policy decisions per method, tool, resource and prompt, batches, deny-wins, and the
//! reasons seen by an outer layer. Also the RFC 9728 metadata and the MCP challenge.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;

use axum::Router;
use axum::routing::post as post_route;
use common::*;
use jsonwebtoken::Algorithm;
use mcp_auth::{
    ApiKeyAuthenticator, AuthConfig, AuthLayer, AuthorizeLayer, CredentialEntry, JwtAuthenticator,
    JwtIssuer, Policy, ProtectedResourceMetadata, Rule,
};
use mcp_core::{McpRequest, ParseLayer, Principal};
use serde_json::json;
use tower::util::MapResponseLayer;

const ADMIN: &str = "Adm1n!@#Adm1n!@#Key";
const USER: &str = "Us3r!@#Us3r!@#Key";
const READER: &str = "R3ader!@#Kq7vLm2&Wz";

async fn handler(p: Principal, req: McpRequest) -> String {
    format!("{} {}", p.id(), req.method().unwrap_or("batch"))
}

async fn server() -> SocketAddr {
    let auth = AuthLayer::new(
        ApiKeyAuthenticator::builder()
            .key(CredentialEntry::new("admin", ADMIN).scopes(["mcp:tools", "mcp:admin"]))
            .key(CredentialEntry::new("user", USER).scopes(["mcp:tools"]))
            .key(CredentialEntry::new("reader", READER))
            .build()
            .unwrap(),
    );
    let policy = Policy::builder()
        .allow(Rule::new("discover").methods(["tools/list", "resources/list", "prompts/list"]))
        .allow(
            Rule::new("tools")
                .tools(["search", "read_*"])
                .scopes(["mcp:tools"]),
        )
        .allow(
            Rule::new("admin-all")
                .principals(["apikey:admin"])
                .scopes(["mcp:admin"])
                .methods(["*"]),
        )
        .allow(Rule::new("public-files").resources(["file:///public/*"]))
        .allow(Rule::new("greeting").prompts(["greet"]))
        .deny(Rule::new("no-shell").tools(["shell*", "exec"]))
        .build()
        .unwrap();
    let app = Router::new()
        .route("/mcp", post_route(handler))
        .layer(
            AuthorizeLayer::new(policy)
                .resource_metadata("https://mcp.test/.well-known/oauth-protected-resource/mcp"),
        )
        .layer(ParseLayer::new())
        .layer(auth)
        .layer(MapResponseLayer::new(inspect));
    serve(app).await
}

fn call_tool(id: i64, name: &str) -> String {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": name, "arguments": {}}}).to_string()
}

#[tokio::test]
async fn policy_over_tcp() {
    let addr = server().await;
    let k = |key: &'static str| [("x-api-key", key)];

    // allowed
    let r = post(addr, "/mcp", &k(USER), &call_tool(1, "search")).await;
    assert_eq!(r.status, 200, "{:?}", r.header(SEEN_DETAIL));
    assert_eq!(r.text(), "user tools/call");
    let r = post(
        addr,
        "/mcp",
        &k(READER),
        r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#,
    )
    .await;
    assert_eq!(r.status, 200);
    let r = post(addr, "/mcp", &k(READER), r#"{"jsonrpc":"2.0","id":"r","method":"resources/read","params":{"uri":"file:///public/readme.md"}}"#).await;
    assert_eq!(r.status, 200);
    let r = post(
        addr,
        "/mcp",
        &k(READER),
        r#"{"jsonrpc":"2.0","id":3,"method":"prompts/get","params":{"name":"greet"}}"#,
    )
    .await;
    assert_eq!(r.status, 200);
    let r = post(
        addr,
        "/mcp",
        &k(READER),
        r#"{"jsonrpc":"2.0","id":4,"method":"initialize","params":{}}"#,
    )
    .await;
    assert_eq!(r.status, 200, "lifecycle is allowed");
    let r = post(addr, "/mcp", &k(ADMIN), &call_tool(5, "delete_everything")).await;
    assert_eq!(r.status, 200, "admin scope allows any method");

    // denied: no allow rule; the JSON-RPC error echoes the id; the reason reaches outer layers
    let r = post(addr, "/mcp", &k(USER), &call_tool(42, "delete_everything")).await;
    assert_eq!(r.status, 403);
    let v = r.json();
    assert_eq!(v["id"], 42);
    assert_eq!(v["error"]["code"], -32003);
    assert_eq!(r.header(SEEN_DENIAL), Some("forbidden"));
    assert_eq!(
        r.header(SEEN_DETAIL),
        Some("no allow rule matches tools/call delete_everything")
    );
    assert_eq!(
        r.header(SEEN_PRINCIPAL),
        Some("user"),
        "the auth layer's principal is still seen"
    );

    // deny wins, even for the admin
    let r = post(addr, "/mcp", &k(ADMIN), &call_tool(7, "shell_exec")).await;
    assert_eq!(r.status, 403);
    assert_eq!(
        r.header(SEEN_DETAIL),
        Some("deny rule \"no-shell\" matches tools/call shell_exec")
    );
    assert_eq!(r.json()["id"], 7);

    // a missing scope: 403 insufficient_scope with a challenge naming the scope
    let r = post(addr, "/mcp", &k(READER), &call_tool(8, "search")).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.header(SEEN_DENIAL), Some("insufficient_scope"));
    assert_eq!(
        r.challenges(),
        vec![
            r#"Bearer error="insufficient_scope", scope="mcp:tools", resource_metadata="https://mcp.test/.well-known/oauth-protected-resource/mcp""#
        ]
    );
    assert!(r.header(SEEN_DETAIL).unwrap().contains("\"tools\""));

    // resources outside the allowed prefix
    let r = post(addr, "/mcp", &k(READER), r#"{"jsonrpc":"2.0","id":9,"method":"resources/read","params":{"uri":"file:///etc/passwd"}}"#).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["id"], 9);

    // batches: every message must be allowed; the denied one's id is echoed
    let batch = format!("[{},{}]", call_tool(10, "search"), call_tool(11, "exec"));
    let r = post(addr, "/mcp", &k(USER), &batch).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["id"], 11);
    assert!(r.header(SEEN_DETAIL).unwrap().contains("no-shell"));
    let ok_batch = format!(
        "[{},{}]",
        call_tool(12, "search"),
        call_tool(13, "read_file")
    );
    assert_eq!(post(addr, "/mcp", &k(USER), &ok_batch).await.status, 200);

    // unauthenticated requests never reach the policy
    let r = post(addr, "/mcp", &[], &call_tool(14, "search")).await;
    assert_eq!(r.status, 401);
}

#[tokio::test]
async fn protected_resource_metadata_and_mcp_challenge() {
    let meta = ProtectedResourceMetadata::new("http://127.0.0.1:1/mcp")
        .authorization_server("https://auth.test")
        .scopes_supported(["mcp:tools", "mcp:read"])
        .resource_name("test server");
    meta.validate().unwrap();
    let jwt = JwtAuthenticator::builder()
        .issuer(JwtIssuer::new("https://auth.test").public_key_pem(Algorithm::RS256, RSA1_PUB))
        .resource(meta.resource.clone())
        .build()
        .unwrap();
    let auth = AuthLayer::builder()
        .authenticator(jwt)
        .resource_metadata(meta.metadata_url())
        .challenge_scopes(meta.scopes_supported.clone())
        .build()
        .unwrap();
    let app = Router::new()
        .route("/mcp", post_route(whoami))
        .layer(auth)
        .merge(meta.router())
        .layer(MapResponseLayer::new(inspect));
    let addr = serve(app).await;

    for path in [
        "/.well-known/oauth-protected-resource",
        "/.well-known/oauth-protected-resource/mcp",
    ] {
        let r = get(addr, path, &[]).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.header("content-type"), Some("application/json"));
        let v = r.json();
        assert_eq!(v["resource"], "http://127.0.0.1:1/mcp");
        assert_eq!(v["authorization_servers"], json!(["https://auth.test"]));
        assert_eq!(v["scopes_supported"], json!(["mcp:tools", "mcp:read"]));
        assert_eq!(v["bearer_methods_supported"], json!(["header"]));
    }
    assert_eq!(
        get(addr, "/.well-known/oauth-protected-resource/other", &[])
            .await
            .status,
        404
    );
    assert_eq!(
        post(addr, "/.well-known/oauth-protected-resource", &[], "{}")
            .await
            .status,
        405
    );

    let r = post(addr, "/mcp", &[], "{}").await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.challenges(),
        vec![
            r#"Bearer realm="mcp", scope="mcp:tools mcp:read", resource_metadata="http://127.0.0.1:1/.well-known/oauth-protected-resource/mcp""#
        ]
    );

    let claims = |aud: &str| json!({"sub": "agent", "iss": "https://auth.test", "aud": aud, "exp": now() + 600});
    let good = sign(
        Algorithm::RS256,
        &rsa1(),
        None,
        &claims("http://127.0.0.1:1/mcp"),
    );
    let r = post(
        addr,
        "/mcp",
        &[("authorization", &format!("Bearer {good}"))],
        "{}",
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.header(SEEN_DETAIL));
    let other = sign(
        Algorithm::RS256,
        &rsa1(),
        None,
        &claims("https://other-server.test/mcp"),
    );
    let r = post(
        addr,
        "/mcp",
        &[("authorization", &format!("Bearer {other}"))],
        "{}",
    )
    .await;
    assert_eq!(r.status, 401, "a token for another resource is refused");
    assert!(r.challenges()[0].starts_with(r#"Bearer realm="mcp", error="invalid_token", scope="#));
}

#[tokio::test]
async fn gateway_config_with_resource_and_jwt() {
    let dir = tempfile::tempdir().unwrap();
    let pem = dir.path().join("rsa1.pub");
    std::fs::write(&pem, RSA1_PUB).unwrap();
    let cfg: AuthConfig = serde_json::from_value(json!({
        "enabled": true,
        "mode": ["apikey", "jwt"],
        "apiKey": ADMIN,
        "jwt": {"issuers": [{"issuer": "https://auth.test", "publicKeyFile": pem, "publicKeyAlgorithm": "RS256"}]},
        "resource": {"resource": "https://mcp.test/mcp", "authorization_servers": ["https://auth.test"]}
    }))
    .unwrap();
    let app = Router::new()
        .route("/mcp", post_route(whoami))
        .layer(cfg.build().unwrap());
    let addr = serve(app).await;
    assert_eq!(
        post(addr, "/mcp", &[("x-api-key", ADMIN)], "{}")
            .await
            .status,
        200
    );
    let t = sign(
        Algorithm::RS256,
        &rsa1(),
        None,
        &json!({"sub": "agent", "iss": "https://auth.test", "aud": "https://mcp.test/mcp", "exp": now() + 600}),
    );
    assert_eq!(
        post(
            addr,
            "/mcp",
            &[("authorization", &format!("Bearer {t}"))],
            "{}"
        )
        .await
        .status,
        200
    );
    let r = post(addr, "/mcp", &[], "{}").await;
    assert_eq!(r.status, 401);
    assert_eq!(r.challenges().len(), 2);
    assert!(r.challenges()[1].contains(
        "resource_metadata=\"https://mcp.test/.well-known/oauth-protected-resource/mcp\""
    ));
}

/// A server whose handler answers any method, behind authentication and authorization,
/// with or without `ParseLayer` between them (without it: a misconfiguration).
async fn any_method_server(with_parse: bool) -> SocketAddr {
    let auth = AuthLayer::new(
        ApiKeyAuthenticator::builder()
            .key(CredentialEntry::new("admin", ADMIN).scopes(["mcp:admin"]))
            .build()
            .unwrap(),
    );
    let policy = Policy::builder()
        .allow(Rule::new("everything").methods(["*"]))
        .deny(Rule::new("no-shell").tools(["shell*"]))
        .build()
        .unwrap();
    let app = Router::new()
        .route(
            "/mcp",
            axum::routing::any(|m: http::Method, body: axum::body::Bytes| async move {
                format!("ran {m} {}", String::from_utf8_lossy(&body))
            }),
        )
        .layer(AuthorizeLayer::new(policy));
    let app = if with_parse {
        app.layer(ParseLayer::new())
    } else {
        app
    };
    serve(app.layer(auth).layer(MapResponseLayer::new(inspect))).await
}

/// Attack: a call of a denied tool sent with a method other than POST. With ParseLayer it
/// never reaches the handler, whatever the method; without it (a stack missing its parse
/// layer), authorization fails closed instead of letting an unparsed body through.
#[tokio::test]
async fn authorization_applies_whatever_the_method() {
    let denied = call_tool(1, "shell_exec");
    let key = [("x-api-key", ADMIN), ("content-type", "application/json")];
    for with_parse in [true, false] {
        let addr = any_method_server(with_parse).await;
        for m in [
            "GET", "DELETE", "PUT", "PATCH", "post", "Post", "OPTIONS", "FOO",
        ] {
            let r = send(addr, m, "/mcp", &key, &denied).await;
            assert!(
                !r.text().contains("ran"),
                "{m} (parse layer {with_parse}): {} {}",
                r.status,
                r.text()
            );
            // GET and DELETE take no body: refused by ParseLayer's transport checks, and
            // by authorization itself when no parse layer ran.
            let expected = if m == "GET" || m == "DELETE" {
                400
            } else {
                405
            };
            assert_eq!(r.status, expected, "{m} (parse layer {with_parse})");
            if expected == 405 {
                assert_eq!(r.header("allow"), Some("GET, POST, DELETE"), "{m}");
            }
        }
        // POST: judged by the policy with the parse layer; a configuration error
        // without it.
        let r = post(addr, "/mcp", &[("x-api-key", ADMIN)], &denied).await;
        if with_parse {
            assert_eq!(r.status, 403);
        } else {
            assert_eq!(r.status, 500);
            assert_eq!(r.header(SEEN_DETAIL), Some("parse_layer_missing"));
        }
        // GET and DELETE without a body pass.
        for m in ["GET", "DELETE"] {
            let r = send(addr, m, "/mcp", &[("x-api-key", ADMIN)], "").await;
            assert_eq!(r.status, 200, "{m}");
            assert_eq!(r.text(), format!("ran {m} "));
        }
    }
}
