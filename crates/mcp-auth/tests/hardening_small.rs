//! Attacks on JWT token types and dates, on JWKS refetches and on the Basic verification
//! queue, over real TCP:
//! - a token of another type (`JOSE+JSON`, `id_token`, `secevent+jwt`, ...) whose `aud`
//!   matches is refused; the RFC 9068 spellings and `JWT` / no `typ` are accepted by
//!   default, and an issuer can insist on `at+jwt`;
//! - `exp`, `nbf` and `iat` that are not integer NumericDates (fractions, strings, huge
//!   or negative values) are refused unless fractions are allowed;
//! - a token naming an unknown `kid` makes the JWKS be fetched again, but an unchanged
//!   key set keeps every user's verified tokens cached;
//! - a flood of wrong Basic passwords fills a bounded queue: the excess is refused at
//!   once with 503 and `Retry-After`, and a user whose credentials verified before is
//!   served from the cache while the queue is full.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::routing::get as get_route;
use base64::Engine as _;
use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use mcp_auth::{AuthLayer, BasicAuthenticator, BasicUser, JwtAuthenticator, JwtIssuer};
use serde_json::{Value, json};
use tower::util::MapResponseLayer;

const ISS: &str = "https://issuer.test";
const AUD: &str = "mcp";
const SECRET: &str = "0123456789abcdef0123456789abcdef";

async fn protected_by(jwt: JwtAuthenticator) -> SocketAddr {
    let app = Router::new()
        .route("/mcp", get_route(whoami))
        .layer(AuthLayer::new(jwt))
        .layer(MapResponseLayer::new(inspect));
    serve(app).await
}

fn hs_issuer() -> JwtIssuer {
    JwtIssuer::new(ISS)
        .audience(AUD)
        .hmac_secret(Algorithm::HS256, SECRET)
}

/// An HS256 token with this `typ` (none when `None`) and these claims.
fn typed(typ: Option<&str>, claims: &Value) -> String {
    // With both JWT backends compiled in (--all-features), jsonwebtoken has no default.
    mcp_auth::jwt::install_crypto_provider();
    let mut h = Header::new(Algorithm::HS256);
    h.typ = typ.map(str::to_owned);
    jsonwebtoken::encode(&h, claims, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap()
}

/// A token whose payload is exactly `payload` (numbers written as given), signed HS256.
fn raw_payload(payload: &str) -> String {
    use hmac::{Hmac, Mac};
    let b = |s: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let signing = format!(
        "{}.{}",
        b(br#"{"alg":"HS256","typ":"JWT"}"#),
        b(payload.as_bytes())
    );
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(signing.as_bytes());
    format!("{signing}.{}", b(&mac.finalize().into_bytes()))
}

fn claims(sub: &str) -> Value {
    json!({"sub": sub, "iss": ISS, "aud": AUD, "exp": now() + 600})
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
async fn tokens_of_another_type_are_refused_when_their_aud_matches() {
    let jwt = JwtAuthenticator::builder()
        .issuer(hs_issuer())
        .build()
        .unwrap();
    let addr = protected_by(jwt).await;
    for typ in [
        "JOSE+JSON",
        "JOSE",
        "id_token",
        "id+jwt",
        "secevent+jwt",
        "logout+jwt",
        "dpop+jwt",
        "application/jose",
        "at+jwt extra",
        "",
    ] {
        let r = call(addr, &typed(Some(typ), &claims("mallory"))).await;
        assert_eq!(r.status, 401, "typ {typ:?} accepted");
        assert!(
            r.header(SEEN_DETAIL).unwrap().contains("typ"),
            "{typ:?}: {:?}",
            r.header(SEEN_DETAIL)
        );
    }
    // Access tokens: the RFC 9068 spellings (media types compare case-insensitively,
    // `application/` optional), `JWT`, and no typ at all by default.
    for typ in [
        Some("at+jwt"),
        Some("application/at+jwt"),
        Some("AT+JWT"),
        Some("JWT"),
        Some("jwt"),
        None,
    ] {
        let r = call(addr, &typed(typ, &claims("alice"))).await;
        assert_eq!(r.status, 200, "{typ:?}: {:?}", r.header(SEEN_DETAIL));
    }
}

#[tokio::test]
async fn an_issuer_can_insist_on_access_token_types() {
    let jwt = JwtAuthenticator::builder()
        .issuer(hs_issuer().token_types(["at+jwt"]).allow_untyped(false))
        .build()
        .unwrap();
    let addr = protected_by(jwt).await;
    // An ID token of the same issuer, typed JWT or untyped, with the API as audience.
    for typ in [Some("JWT"), None, Some("JOSE+JSON")] {
        let r = call(addr, &typed(typ, &claims("mallory"))).await;
        assert_eq!(r.status, 401, "{typ:?} accepted");
    }
    for typ in ["at+jwt", "application/at+jwt", "At+Jwt"] {
        let r = call(addr, &typed(Some(typ), &claims("alice"))).await;
        assert_eq!(r.status, 200, "{typ}: {:?}", r.header(SEEN_DETAIL));
    }
}

#[test]
fn token_type_configuration_is_validated() {
    for bad in [vec![], vec![""], vec!["at+jwt", "a b"], vec!["t\u{7f}"]] {
        let e = JwtAuthenticator::builder()
            .issuer(hs_issuer().token_types(bad.clone()).allow_untyped(false))
            .build()
            .unwrap_err();
        assert!(e.to_string().contains("tokenTypes"), "{bad:?}: {e}");
    }
}

#[tokio::test]
async fn dates_that_are_not_integers_are_refused() {
    let jwt = JwtAuthenticator::builder()
        .issuer(hs_issuer())
        .build()
        .unwrap();
    let addr = protected_by(jwt).await;
    let now = now();
    let exp = now + 600;
    let base = format!(r#""sub":"mallory","iss":"{ISS}","aud":"{AUD}""#);
    let cases = [
        format!(r#"{{{base},"exp":{exp}.5}}"#),
        format!(r#"{{{base},"exp":{exp}e0}}"#),
        format!(r#"{{{base},"exp":1e300}}"#),
        format!(r#"{{{base},"exp":18446744073709551615}}"#),
        format!(r#"{{{base},"exp":253402300800}}"#),
        format!(r#"{{{base},"exp":"{exp}"}}"#),
        format!(r#"{{{base},"exp":{exp},"nbf":{}.25}}"#, now - 10),
        format!(r#"{{{base},"exp":{exp},"nbf":"{}"}}"#, now - 10),
        format!(r#"{{{base},"exp":{exp},"iat":{}.75}}"#, now - 10),
        format!(r#"{{{base},"exp":{exp},"iat":"{}"}}"#, now - 10),
        format!(r#"{{{base},"exp":{exp},"iat":-1}}"#),
        format!(r#"{{{base},"exp":{exp},"iat":1e300}}"#),
        format!(r#"{{{base},"exp":{exp},"iat":null}}"#),
        format!(r#"{{{base},"exp":{exp},"nbf":true}}"#),
    ];
    for payload in &cases {
        let r = call(addr, &raw_payload(payload)).await;
        assert_eq!(r.status, 401, "accepted: {payload}");
    }
    let ok = format!(
        r#"{{{base},"exp":{exp},"nbf":{},"iat":{}}}"#,
        now - 10,
        now - 10
    );
    assert_eq!(call(addr, &raw_payload(&ok)).await.status, 200);
}

#[tokio::test]
async fn fractional_dates_only_when_allowed() {
    let jwt = JwtAuthenticator::builder()
        .issuer(hs_issuer().allow_fractional_dates(true))
        .build()
        .unwrap();
    let addr = protected_by(jwt).await;
    let now = now();
    let base = format!(r#""sub":"alice","iss":"{ISS}","aud":"{AUD}""#);
    let ok = format!(
        r#"{{{base},"exp":{}.5,"nbf":{}.25,"iat":{}.75}}"#,
        now + 600,
        now - 10,
        now - 10
    );
    assert_eq!(call(addr, &raw_payload(&ok)).await.status, 200);
    // Strings, huge and negative values stay refused.
    for bad in [
        format!(r#"{{{base},"exp":"{}"}}"#, now + 600),
        format!(r#"{{{base},"exp":1e300}}"#),
        format!(r#"{{{base},"exp":{},"iat":-5.5}}"#, now + 600),
    ] {
        assert_eq!(call(addr, &raw_payload(&bad)).await.status, 401, "{bad}");
    }
    // An expired fractional exp is expired.
    let expired = format!(r#"{{{base},"exp":{}.5}}"#, now - 3600);
    assert_eq!(call(addr, &raw_payload(&expired)).await.status, 401);
}

#[derive(Clone, Default)]
struct Jwks {
    doc: Arc<Mutex<Value>>,
    fetches: Arc<AtomicUsize>,
}

async fn jwks(State(s): State<Jwks>) -> axum::Json<Value> {
    s.fetches.fetch_add(1, Ordering::SeqCst);
    axum::Json(s.doc.lock().unwrap().clone())
}

fn rs_token(key: &EncodingKey, kid: &str, sub: &str) -> String {
    sign(
        Algorithm::RS256,
        key,
        Some(kid),
        &json!({"sub": sub, "iss": ISS, "aud": AUD, "exp": now() + 600}),
    )
}

#[tokio::test]
async fn unknown_kids_refetch_the_jwks_but_keep_the_verified_cache() {
    let state = Jwks::default();
    *state.doc.lock().unwrap() = json!({"keys": [rsa_jwk(RSA1_KEY, "k1", Algorithm::RS256)]});
    let jwks_addr = serve(
        Router::new()
            .route("/jwks", get_route(jwks))
            .with_state(state.clone()),
    )
    .await;
    let interval = Duration::from_millis(200);
    let jwt = JwtAuthenticator::builder()
        .issuer(
            JwtIssuer::new(ISS)
                .audience(AUD)
                .jwks_url(format!("http://{jwks_addr}/jwks"))
                .allow_http_jwks(true)
                .jwks_refresh_interval(interval)
                .jwks_ttl(Duration::from_secs(3600)),
        )
        .build()
        .unwrap();
    let addr = protected_by(jwt.clone()).await;
    let alice = rs_token(&rsa1(), "k1", "alice");
    assert_eq!(call(addr, &alice).await.status, 200);
    let changes = jwt.key_set_changes();

    // Tokens naming kids nobody published, one per interval: each refetches the same
    // key set, which must not empty the cache.
    for i in 0..4 {
        tokio::time::sleep(interval + Duration::from_millis(100)).await;
        let r = call(addr, &rs_token(&rsa2(), &format!("nope{i}"), "mallory")).await;
        assert_eq!(r.status, 401);
    }
    assert!(state.fetches.load(Ordering::SeqCst) >= 4, "refetched");
    assert_eq!(
        jwt.key_set_changes(),
        changes,
        "an unchanged key set emptied the verified-token cache"
    );
    assert_eq!(call(addr, &alice).await.status, 200);

    // The same keys in another order, with members the keys do not depend on: same set.
    *state.doc.lock().unwrap() = json!({"keys": [
        rsa_jwk(RSA1_KEY, "k1", Algorithm::RS256),
    ], "extra": 1});
    tokio::time::sleep(interval + Duration::from_millis(100)).await;
    assert_eq!(
        call(addr, &rs_token(&rsa2(), "nope9", "m")).await.status,
        401
    );
    assert_eq!(jwt.key_set_changes(), changes);

    // A real change (same kid, other key material): the cache is emptied, and alice's
    // token, signed by the old key, is refused.
    *state.doc.lock().unwrap() = json!({"keys": [rsa_jwk(RSA2_KEY, "k1", Algorithm::RS256)]});
    tokio::time::sleep(interval + Duration::from_millis(100)).await;
    assert_eq!(call(addr, &rs_token(&rsa2(), "k9", "m")).await.status, 401);
    assert!(
        jwt.key_set_changes() > changes,
        "a changed key set went unnoticed"
    );
    assert_eq!(call(addr, &alice).await.status, 401);
    assert_eq!(
        call(addr, &rs_token(&rsa2(), "k1", "bob")).await.status,
        200
    );
}

fn basic(user: &str, pass: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_flood_is_refused_past_the_queue_and_cached_users_pass() {
    let b = BasicAuthenticator::builder()
        .user(BasicUser::plaintext("alice", "alice-password"))
        .user(BasicUser::plaintext("bob", "bob-password"))
        // Hashes costly enough that the flood arrives while the first verifications run
        // (the test counts refusals; it measures nothing).
        .argon2_params(argon2::Params::new(8192, 2, 1, None).unwrap())
        .max_concurrent(1)
        .max_queued(4)
        .build()
        .unwrap();
    let app = Router::new()
        .route("/mcp", get_route(whoami))
        .layer(AuthLayer::new(b))
        .layer(MapResponseLayer::new(inspect));
    let addr = serve(app).await;
    // alice logs in once: her credentials are cached.
    let alice = basic("alice", "alice-password");
    let r = get(addr, "/mcp", &[("authorization", &alice)]).await;
    assert_eq!(r.status, 200);

    // 60 clients with wrong passwords at once.
    let mut flood = Vec::new();
    for i in 0..60 {
        flood.push(tokio::spawn(async move {
            let h = basic("bob", &format!("wrong-{i}"));
            get(addr, "/mcp", &[("authorization", &h)]).await
        }));
    }
    // While the flood is queued, alice's cached login is served (many times).
    let mut alice_ok = 0;
    for _ in 0..20 {
        let r = get(addr, "/mcp", &[("authorization", &alice)]).await;
        assert_eq!(r.status, 200, "{:?}", r.header(SEEN_DETAIL));
        alice_ok += 1;
    }
    assert_eq!(alice_ok, 20);
    let mut refused = 0;
    let mut invalid = 0;
    for t in flood {
        let r = t.await.unwrap();
        match r.status.as_u16() {
            503 => {
                refused += 1;
                assert!(r.header("retry-after").is_some(), "503 without Retry-After");
            }
            401 => invalid += 1,
            s => panic!("unexpected {s}"),
        }
    }
    assert_eq!(refused + invalid, 60);
    // At most 1 running and 4 waiting at any time: most of the 60 are refused at once.
    assert!(refused > 0, "the queue is unbounded: every attempt waited");
    assert!(invalid >= 5, "{invalid}");
}

#[test]
fn the_queue_bound_is_configurable_and_zero_means_no_wait() {
    // Zero is allowed (refuse whenever every verifier is busy).
    BasicAuthenticator::builder()
        .user(BasicUser::plaintext("alice", "alice-password"))
        .max_queued(0)
        .build()
        .unwrap();
    assert_eq!(mcp_auth::basic::DEFAULT_MAX_QUEUED_VERIFICATIONS, 16);
}
