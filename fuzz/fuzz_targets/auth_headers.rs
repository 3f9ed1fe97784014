//! Credential parsing of mcp-auth: `Authorization` (scheme split, Bearer, Basic), API key
//! headers, refused query parameters, and the static token, API key and HS256 JWT
//! authenticators on those headers.
//!
//! Input: one control byte, then header values separated by `\n` (the first byte of each
//! picks the header: Authorization, X-Api-Key, or another one).
//! Properties: no panic; a static token or API key authenticates exactly when one header
//! carries it byte for byte; a JWT authenticates only when its header and claims are the
//! ones signed with the configured secret (no forgery, no `alg` confusion); decoded Basic
//! credentials encode back to the same credentials; outcomes are deterministic.
#![no_main]

use std::sync::LazyLock;

use base64::Engine as _;
use http::{HeaderMap, HeaderName, HeaderValue, Request, header};
use libfuzzer_sys::fuzz_target;
use mcp_auth::credentials::{self, DEFAULT_REFUSED_QUERY_PARAMS};
use mcp_auth::jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use mcp_auth::{
    ApiKeyAuthenticator, AuthFuture, Authenticator, BearerTokenAuthenticator, CredentialEntry,
    JwtAuthenticator, JwtIssuer, Outcome,
};

const TOKEN: &str = "Tk-9aB3xQ7mZ2pL5vR8sW1yC4dF6gH0j";
const API_KEY: &str = "Ak_7Rq2Wz9Lm4Xp!";
const JWT_SECRET: &str = "fuzz-0123456789abcdef0123456789abcdef";

static BEARER: LazyLock<BearerTokenAuthenticator> = LazyLock::new(|| {
    BearerTokenAuthenticator::builder()
        .token(CredentialEntry::new("t1", TOKEN))
        .build()
        .expect("valid token")
});
static API: LazyLock<ApiKeyAuthenticator> = LazyLock::new(|| {
    ApiKeyAuthenticator::builder()
        .header("x-api-key")
        .key(CredentialEntry::new("k1", API_KEY))
        .build()
        .expect("valid key")
});
static JWT: LazyLock<JwtAuthenticator> = LazyLock::new(|| {
    JwtAuthenticator::builder()
        .issuer(
            JwtIssuer::new("https://issuer.example")
                .audience("mcp")
                .hmac_secret(Algorithm::HS256, JWT_SECRET),
        )
        .build()
        .expect("valid issuer")
});
/// The one token signed with the secret (the seed corpus holds it).
static SIGNED: LazyLock<String> = LazyLock::new(|| {
    let claims = serde_json::json!({
        "iss": "https://issuer.example", "aud": "mcp", "sub": "fuzz", "exp": 4_102_444_800u64
    });
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .expect("signs")
});
static RT: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
});

fn outcome(f: AuthFuture<'_>) -> Outcome {
    match f {
        AuthFuture::Ready(o) => o,
        AuthFuture::Pending(f) => RT.block_on(f),
    }
}

fn kind(o: &Outcome) -> String {
    match o {
        Outcome::NoCredential => "none".to_owned(),
        Outcome::Authenticated(p) => format!("ok {}", p.id()),
        Outcome::Failed(f) => format!("failed {:?}", f.kind),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    let mut headers = HeaderMap::new();
    for line in rest.split(|&b| b == b'\n') {
        let Some((&pick, value)) = line.split_first() else {
            continue;
        };
        let Ok(value) = HeaderValue::from_bytes(value) else {
            continue;
        };
        let name = match pick % 4 {
            0 | 1 => header::AUTHORIZATION,
            2 => HeaderName::from_static("x-api-key"),
            _ => HeaderName::from_static("x-other"),
        };
        headers.append(name, value);
    }

    // The parsers.
    let auth = credentials::authorization(&headers);
    if let Ok(Some((scheme, rest))) = auth {
        assert!(!scheme.contains([' ', '\t']));
        assert_eq!(
            credentials::split_scheme(&format!("{scheme} {rest}")).0,
            scheme
        );
    }
    let _ = credentials::bearer_token(&headers);
    if let Ok(Some(c)) = credentials::basic_credentials(&headers) {
        let again = base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            c.username,
            c.password.expose()
        ));
        assert_eq!(credentials::decode_basic(&again).ok(), Some(c));
    }
    if let Ok(s) = std::str::from_utf8(rest) {
        let _ = credentials::is_token68(s);
        let _ = credentials::decode_basic(s);
        let refused: Vec<String> = DEFAULT_REFUSED_QUERY_PARAMS
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        let _ = credentials::refused_query_param(s, &refused);
        let _ = credentials::query_name_skeleton(s);
    }
    let name = HeaderName::from_static("x-api-key");
    let _ = credentials::api_key(&headers, &name, usize::from(ctl) * 4);

    // Static bearer token: authenticated exactly when the single Authorization header is
    // `Bearer <TOKEN>` (scheme in any case, spaces or tabs around).
    let b = BEARER.check(&headers);
    let auth_values: Vec<&HeaderValue> = headers.get_all(header::AUTHORIZATION).iter().collect();
    let expected = auth_values.len() == 1
        && auth_values[0].to_str().ok().is_some_and(|v| {
            let (scheme, rest) = credentials::split_scheme(v);
            scheme.eq_ignore_ascii_case("bearer") && rest == TOKEN
        });
    assert_eq!(
        matches!(b, Outcome::Authenticated(_)),
        expected,
        "bearer outcome {}",
        kind(&b)
    );
    assert_eq!(kind(&b), kind(&BEARER.check(&headers)), "not deterministic");

    // API key.
    let a = API.check(&headers);
    let key_values: Vec<&HeaderValue> = headers.get_all("x-api-key").iter().collect();
    let expected = key_values.len() == 1
        && key_values[0]
            .to_str()
            .ok()
            .is_some_and(|v| v.trim_matches([' ', '\t']) == API_KEY);
    assert_eq!(
        matches!(a, Outcome::Authenticated(_)),
        expected,
        "api key outcome {}",
        kind(&a)
    );

    // JWT: only the signed header and claims verify.
    let mut req = Request::new(());
    *req.headers_mut() = headers;
    let (parts, ()) = req.into_parts();
    let j = outcome(JWT.authenticate(&parts));
    if matches!(j, Outcome::Authenticated(_)) {
        let token = credentials::bearer_token(&parts.headers)
            .ok()
            .flatten()
            .unwrap_or_default();
        let signed_message = SIGNED.rsplit_once('.').map(|(m, _)| m);
        assert_eq!(
            token.rsplit_once('.').map(|(m, _)| m),
            signed_message,
            "a JWT other than the signed one verified: {token}"
        );
    }
});
