//! JWT over plain hyper (real TCP): every algorithm accepted, and the attacks refused:
//! alg none, algorithm confusion, expired, future nbf, wrong aud and iss, unknown kid,
//! tampered signature and payload, bad base64, oversized token, token in the query.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;

use common::*;
use http::{Request, Response};
use jsonwebtoken::{Algorithm, EncodingKey};
use mcp_auth::{AuthLayer, JwtAuthenticator, JwtIssuer};
use mcp_core::{Body, Principal};
use serde_json::{Value, json};
use tower::ServiceBuilder;

const ISS: &str = "https://issuer.test";
const AUD: &str = "mcp-server";
const HS256: &str = "hs256-secret-0123456789abcdef0123";
const HS384: &str = "hs384-secret-0123456789abcdef0123456789abcdef0123";
const HS512: &str = "hs512-secret-0123456789abcdef0123456789abcdef0123456789abcdef01234";

async fn handler(req: Request<hyper::body::Incoming>) -> Result<Response<Body>, Infallible> {
    let p = req.extensions().get::<Principal>().cloned();
    let text = match p {
        Some(p) => format!(
            "{} {}",
            p.id(),
            p.scopes().iter().cloned().collect::<Vec<_>>().join(",")
        ),
        None => "no principal".into(),
    };
    Ok(Response::new(Body::from(text)))
}

struct Keys {
    es256: (String, String),
    es384: (String, String),
    ed: (String, String),
}

async fn server(keys: &Keys) -> SocketAddr {
    let issuer = JwtIssuer::new(ISS)
        .audiences([AUD, "other-audience"])
        .hmac_secret(Algorithm::HS256, HS256)
        .hmac_secret(Algorithm::HS384, HS384)
        .hmac_secret(Algorithm::HS512, HS512)
        .public_key_pem(Algorithm::RS256, RSA1_PUB)
        .key_id("rsa1")
        .public_key_pem(Algorithm::RS384, RSA1_PUB)
        .public_key_pem(Algorithm::RS512, RSA1_PUB)
        .public_key_pem(Algorithm::PS256, RSA1_PUB)
        .public_key_pem(Algorithm::PS384, RSA1_PUB)
        .public_key_pem(Algorithm::PS512, RSA1_PUB)
        .public_key_pem(Algorithm::ES256, keys.es256.1.clone())
        .public_key_pem(Algorithm::ES384, keys.es384.1.clone())
        .public_key_pem(Algorithm::EdDSA, keys.ed.1.clone())
        .require_claims(["email"]);
    let second = JwtIssuer::new("https://second.test")
        .audience(AUD)
        .public_key_pem(Algorithm::RS256, RSA2_PUB);
    let jwt = JwtAuthenticator::builder()
        .issuer(issuer)
        .issuer(second)
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .map_response(inspect)
        .layer(AuthLayer::new(jwt))
        .service_fn(handler);
    serve_hyper(svc).await
}

fn keys() -> Keys {
    Keys {
        es256: rcgen_pair(&rcgen::PKCS_ECDSA_P256_SHA256),
        es384: rcgen_pair(&rcgen::PKCS_ECDSA_P384_SHA384),
        ed: rcgen_pair(&rcgen::PKCS_ED25519),
    }
}

fn claims() -> Value {
    json!({"sub": "alice", "iss": ISS, "aud": AUD, "exp": now() + 600, "email": "a@example.com", "scope": "mcp:tools mcp:read"})
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
async fn every_algorithm_is_accepted_with_its_pinned_key() {
    let k = keys();
    let addr = server(&k).await;
    let c = claims();
    let tokens = [
        (
            "HS256",
            sign(
                Algorithm::HS256,
                &EncodingKey::from_secret(HS256.as_bytes()),
                None,
                &c,
            ),
        ),
        (
            "HS384",
            sign(
                Algorithm::HS384,
                &EncodingKey::from_secret(HS384.as_bytes()),
                None,
                &c,
            ),
        ),
        (
            "HS512",
            sign(
                Algorithm::HS512,
                &EncodingKey::from_secret(HS512.as_bytes()),
                None,
                &c,
            ),
        ),
        ("RS256", sign(Algorithm::RS256, &rsa1(), Some("rsa1"), &c)),
        ("RS384", sign(Algorithm::RS384, &rsa1(), None, &c)),
        ("RS512", sign(Algorithm::RS512, &rsa1(), None, &c)),
        ("PS256", sign(Algorithm::PS256, &rsa1(), None, &c)),
        ("PS384", sign(Algorithm::PS384, &rsa1(), None, &c)),
        ("PS512", sign(Algorithm::PS512, &rsa1(), None, &c)),
        (
            "ES256",
            sign(
                Algorithm::ES256,
                &EncodingKey::from_ec_pem(k.es256.0.as_bytes()).unwrap(),
                None,
                &c,
            ),
        ),
        (
            "ES384",
            sign(
                Algorithm::ES384,
                &EncodingKey::from_ec_pem(k.es384.0.as_bytes()).unwrap(),
                None,
                &c,
            ),
        ),
        (
            "EdDSA",
            sign(
                Algorithm::EdDSA,
                &EncodingKey::from_ed_pem(k.ed.0.as_bytes()).unwrap(),
                None,
                &c,
            ),
        ),
    ];
    for (name, t) in &tokens {
        let r = call(addr, t).await;
        assert_eq!(r.status, 200, "{name}: {:?}", r.header(SEEN_DETAIL));
        assert_eq!(r.text(), "alice mcp:read,mcp:tools", "{name}");
        assert_eq!(r.header(SEEN_PRINCIPAL), Some("alice"));
        // again, from the cache
        assert_eq!(call(addr, t).await.status, 200, "{name} cached");
    }
    // several issuers: the second one's key verifies its tokens
    let mut c2 = claims();
    c2["iss"] = json!("https://second.test");
    c2["sub"] = json!("bob");
    let r = call(addr, &sign(Algorithm::RS256, &rsa2(), None, &c2)).await;
    assert_eq!(r.status, 200, "{:?}", r.header(SEEN_DETAIL));
    // ...but not the first issuer's
    let mut c3 = claims();
    c3["iss"] = json!("https://second.test");
    let r = call(addr, &sign(Algorithm::RS256, &rsa1(), None, &c3)).await;
    assert_eq!(r.status, 401);
    // scp as an array
    let mut c4 = claims();
    c4.as_object_mut().unwrap().remove("scope");
    c4["scp"] = json!(["a", "b"]);
    let r = call(addr, &sign(Algorithm::RS256, &rsa1(), None, &c4)).await;
    assert_eq!(r.text(), "alice a,b");
}

fn assert_refused(r: &Resp, status: u16, detail: &str, what: &str) {
    assert_eq!(r.status, status, "{what}: {:?}", r.header(SEEN_DETAIL));
    let d = r.header(SEEN_DETAIL).unwrap_or_default();
    assert!(
        d.contains(detail),
        "{what}: detail {d:?} should contain {detail:?}"
    );
    assert!(r.header(SEEN_PRINCIPAL).is_none(), "{what}");
    assert_eq!(r.json()["error"]["code"], -32001, "{what}");
    if status == 401 {
        assert_eq!(
            r.challenges(),
            vec![r#"Bearer realm="mcp", error="invalid_token""#],
            "{what}"
        );
    }
}

#[tokio::test]
async fn attacks_are_refused() {
    let k = keys();
    let addr = server(&k).await;
    let hs = EncodingKey::from_secret(HS256.as_bytes());

    // alg none: unsigned token
    let header = b64(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = b64(claims().to_string().as_bytes());
    let none = format!("{header}.{payload}.");
    assert_refused(&call(addr, &none).await, 401, "jwt header", "alg none");
    let none_sig = format!("{header}.{payload}.{}", b64(b"x"));
    assert_refused(
        &call(addr, &none_sig).await,
        401,
        "jwt header",
        "alg none with signature",
    );

    // algorithm confusion: HS256 "signed" with the RSA public key PEM as the secret
    let confused = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(RSA1_PUB.as_bytes()),
        Some("rsa1"),
        &claims(),
    );
    assert_refused(
        &call(addr, &confused).await,
        401,
        "jwt",
        "HS256 with the RSA public key",
    );
    let confused_nokid = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(RSA1_PUB.as_bytes()),
        None,
        &claims(),
    );
    assert_refused(
        &call(addr, &confused_nokid).await,
        401,
        "signature invalid",
        "HS256 with the RSA public key, no kid",
    );

    // claims
    let mut c = claims();
    c["exp"] = json!(now() - 3600);
    assert_refused(
        &call(addr, &sign(Algorithm::HS256, &hs, None, &c)).await,
        401,
        "expired",
        "expired",
    );
    let mut c = claims();
    c["nbf"] = json!(now() + 3600);
    assert_refused(
        &call(addr, &sign(Algorithm::HS256, &hs, None, &c)).await,
        401,
        "not yet valid",
        "future nbf",
    );
    let mut c = claims();
    c["aud"] = json!("someone-else");
    assert_refused(
        &call(addr, &sign(Algorithm::HS256, &hs, None, &c)).await,
        401,
        "audience",
        "wrong aud",
    );
    let mut c = claims();
    c["aud"] = json!(["x", "y"]);
    assert_refused(
        &call(addr, &sign(Algorithm::HS256, &hs, None, &c)).await,
        401,
        "audience",
        "wrong aud list",
    );
    let mut c = claims();
    c["aud"] = json!(["x", AUD]);
    assert_eq!(
        call(addr, &sign(Algorithm::HS256, &hs, None, &c))
            .await
            .status,
        200,
        "aud list containing ours"
    );
    let mut c = claims();
    c["iss"] = json!("https://evil.test");
    assert_refused(
        &call(addr, &sign(Algorithm::HS256, &hs, None, &c)).await,
        401,
        "issuer",
        "wrong iss",
    );
    let mut c = claims();
    c.as_object_mut().unwrap().remove("exp");
    assert_refused(
        &call(addr, &sign(Algorithm::HS256, &hs, None, &c)).await,
        401,
        "exp",
        "no exp",
    );
    let mut c = claims();
    c.as_object_mut().unwrap().remove("email");
    assert_refused(
        &call(addr, &sign(Algorithm::HS256, &hs, None, &c)).await,
        401,
        "email",
        "required claim missing",
    );

    // unknown kid (the RS256 key is pinned to kid rsa1)
    let t = sign(Algorithm::RS256, &rsa1(), Some("no-such-kid"), &claims());
    assert_refused(&call(addr, &t).await, 401, "kid unknown", "unknown kid");

    // a key pinned to RS256 does not verify RS256 from another key, nor RS384 claims with kid rsa1
    let t = sign(Algorithm::RS256, &rsa2(), Some("rsa1"), &claims());
    assert_refused(
        &call(addr, &t).await,
        401,
        "signature invalid",
        "wrong RSA key",
    );

    // a key embedded in the header (jwk) or pointed at by it (jku, x5u) is never used
    mcp_auth::jwt::install_crypto_provider();
    let mut h = jsonwebtoken::Header::new(Algorithm::RS256);
    h.kid = Some("rsa1".into());
    h.jwk = Some(jsonwebtoken::jwk::Jwk::from_encoding_key(&rsa2(), Algorithm::RS256).unwrap());
    h.jku = Some("http://127.0.0.1:9/jwks.json".into());
    h.x5u = Some("http://127.0.0.1:9/cert.pem".into());
    let injected = jsonwebtoken::encode(&h, &claims(), &rsa2()).unwrap();
    assert_refused(
        &call(addr, &injected).await,
        401,
        "signature invalid",
        "embedded jwk / jku",
    );

    // tampered signature and payload
    let good = sign(Algorithm::RS256, &rsa1(), Some("rsa1"), &claims());
    let (head, sig) = good.rsplit_once('.').unwrap();
    let mut sig_bytes = sig.as_bytes().to_vec();
    sig_bytes[10] = if sig_bytes[10] == b'A' { b'B' } else { b'A' };
    let tampered = format!("{head}.{}", String::from_utf8(sig_bytes).unwrap());
    assert_refused(
        &call(addr, &tampered).await,
        401,
        "signature invalid",
        "tampered signature",
    );
    let parts: Vec<&str> = good.split('.').collect();
    let mut evil = claims();
    evil["sub"] = json!("admin");
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        b64(evil.to_string().as_bytes()),
        parts[2]
    );
    assert_refused(
        &call(addr, &forged).await,
        401,
        "signature invalid",
        "tampered payload",
    );
    assert_eq!(
        call(addr, &good).await.status,
        200,
        "the untampered token works"
    );

    // bad base64 (token68 characters that are not base64url), and not-token68 at all
    assert_refused(
        &call(addr, "ab+/.cd+/.ef+/").await,
        401,
        "jwt header",
        "bad base64",
    );
    let bad_payload = format!("{}.%%%.{}", parts[0], parts[2]);
    let r = get(
        addr,
        "/mcp",
        &[("authorization", &format!("Bearer {bad_payload}"))],
    )
    .await;
    assert_eq!(r.status, 400, "not a token68 at all");
    assert_refused(
        &call(addr, "not-a-jwt-at-all").await,
        401,
        "not a jwt",
        "no dots",
    );

    // oversized token: refused before any work
    let huge = format!("{}.{}.{}", parts[0], "A".repeat(9000), parts[2]);
    assert_refused(
        &call(addr, &huge).await,
        401,
        "longer than the limit",
        "oversized",
    );

    // the token in the query string is refused, not read
    let r = get(addr, &format!("/mcp?access_token={good}"), &[]).await;
    assert_eq!(r.status, 400);
    assert!(r.challenges()[0].contains(r#"error="invalid_request""#));
    assert!(r.header(SEEN_PRINCIPAL).is_none());

    // nothing of the token in any answer
    for t in [&good, &tampered, &confused] {
        let r = call(addr, t).await;
        let sig = t.rsplit('.').next().unwrap();
        assert!(!r.text().contains(sig));
        assert!(!r.header(SEEN_DETAIL).unwrap_or_default().contains(sig));
    }
}

#[tokio::test]
async fn resource_audience_is_required() {
    // MCP authorization: the token must name this server's resource URI in aud.
    let resource = "https://mcp.example.com/mcp";
    let jwt = JwtAuthenticator::builder()
        .issuer(
            JwtIssuer::new(ISS)
                .audience("ignored-when-resource-set")
                .public_key_pem(Algorithm::RS256, RSA1_PUB),
        )
        .resource(resource)
        .blocking_verifications(0) // RSA checks inline on the executor: the other path
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .map_response(inspect)
        .layer(AuthLayer::new(jwt))
        .service_fn(handler);
    let addr = serve_hyper(svc).await;
    let mut c = claims();
    c["aud"] = json!(resource);
    assert_eq!(
        call(addr, &sign(Algorithm::RS256, &rsa1(), None, &c))
            .await
            .status,
        200
    );
    c["aud"] = json!("ignored-when-resource-set");
    assert_eq!(
        call(addr, &sign(Algorithm::RS256, &rsa1(), None, &c))
            .await
            .status,
        401
    );
    c.as_object_mut().unwrap().remove("aud");
    assert_eq!(
        call(addr, &sign(Algorithm::RS256, &rsa1(), None, &c))
            .await
            .status,
        401
    );
}
