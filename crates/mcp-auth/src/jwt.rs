//! JSON Web Tokens (RFC 7519) as bearer tokens, verified with `jsonwebtoken`.
//!
//! - **Algorithms are pinned per key.** Each key carries the algorithms it may verify (an
//!   HMAC secret: the HS algorithm it was configured with; a PEM key: the algorithm it
//!   was configured with; a JWK: its `alg`, or the one its key type and curve imply,
//!   intersected with the issuer's allowed list). The token header only selects among
//!   those: `alg: none` is not even an algorithm here, and an HS256 token "signed" with an
//!   RSA public key fails because no HMAC key exists for it (HMAC keys never come from a
//!   JWKS or a PEM).
//! - **Token types:** the header's `typ` must be one the issuer accepts (default: RFC
//!   9068's `at+jwt`, `JWT`, or none; compared as media types), so a token of another
//!   kind (`JOSE+JSON`, `secevent+jwt`, `dpop+jwt`, ...) whose `aud` matches is refused;
//!   see [`JwtIssuer::token_types`] for issuers whose ID tokens must be kept out too.
//! - **Claims:** `iss` (one per issuer), `aud` (several allowed), `exp` required by
//!   default, `nbf` checked when present, a leeway, extra required claims. `exp`, `nbf`
//!   and `iat` must be integer NumericDates up to the year 9999 (fractions only with
//!   [`JwtIssuer::allow_fractional_dates`]). Scopes come
//!   from `scope` (space separated) and `scp` (array or space separated string). The
//!   principal id is `sub` (configurable); its qualified id is `jwt:<issuer>#<sub>`, the
//!   issuer being the configured one (empty for an issuer configured without a fixed
//!   `iss`, whose tokens may claim any), so one `sub` from two issuers is two principals.
//! - **Keys:** shared secrets, PEM public keys (inline or files), local JWKS (inline or
//!   files), and JWKS URLs: cached with a TTL and refreshed in the background when stale,
//!   refetched on an unknown `kid` at most once per refresh interval, each fetch bounded
//!   by a timeout and a size limit, and the known keys kept when a refresh fails.
//!   Several issuers at once, chosen by the token's `iss`.
//! - **Cache:** a bounded cache of verified tokens, keyed by the SHA-256 of the token
//!   (never the token), whose entries are never used past the token's `exp` nor after the
//!   key set changed, so a repeated token skips the signature check. With the cache off
//!   (capacity 0) the token is not hashed at all.
//! - Tokens longer than the limit (8 KiB by default) are refused before any work. The
//!   header is decoded once per request and the token hashed at most once, also when the
//!   signature check moves to the blocking pool.
//! - First-sight RSA, ECDSA and EdDSA signature checks (about 0.3 ms for RS256 with the
//!   pure-Rust backend) run on Tokio's blocking pool, a bounded number at once, so they
//!   never stall the executor; HMAC checks and cache hits run inline.
//! - **Backend:** jsonwebtoken's pure-Rust (RustCrypto) backend by default; the
//!   `aws-lc-rs` cargo feature selects its aws-lc-rs backend, whose RSA and ECDSA checks
//!   cost a fraction of the pure-Rust ones (figures in the crate's BENCHMARKS.md). See
//!   [`install_crypto_provider`].

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http::request::Parts;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use mcp_core::{AuthMethod, Principal};
use serde_json::{Map, Value};

use crate::authenticator::{AuthFuture, Authenticator, Failure, Outcome, Scheme};
use crate::cache::{VerifiedCache, now_unix};
use crate::credentials;
use crate::error::ConfigError;
use crate::secret::{SecretBytes, sha256};

/// The default limit on a token's length (8 KiB).
pub const DEFAULT_MAX_TOKEN_BYTES: usize = 8 * 1024;
/// The default capacity of the verified-token cache.
pub const DEFAULT_CACHE_CAPACITY: usize = 10_000;
/// The default longest time a verified token is served from the cache (5 minutes).
pub const DEFAULT_CACHE_MAX_TTL: Duration = Duration::from_secs(300);
/// The default JWKS cache TTL (10 minutes).
pub const DEFAULT_JWKS_TTL: Duration = Duration::from_secs(600);
/// The default minimum interval between two JWKS fetches (30 seconds).
pub const DEFAULT_JWKS_REFRESH_INTERVAL: Duration = Duration::from_secs(30);
/// The default JWKS fetch timeout (5 seconds).
pub const DEFAULT_JWKS_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest JWKS document accepted (256 KiB).
pub const MAX_JWKS_BYTES: usize = 256 * 1024;
/// The most keys taken from one JWKS document.
pub const MAX_JWKS_KEYS: usize = 64;
/// The token types (`typ`) an issuer accepts by default: RFC 9068's `at+jwt` and the
/// generic `JWT` (tokens without `typ` too, see [`JwtIssuer::allow_untyped`]).
pub const DEFAULT_TOKEN_TYPES: &[&str] = &["at+jwt", "JWT"];
/// The latest NumericDate accepted in `exp`, `nbf` and `iat`: 9999-12-31T23:59:59Z.
pub const MAX_NUMERIC_DATE: u64 = 253_402_300_799;

const ASYMMETRIC: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// Parses an algorithm name (`"HS256"`, `"RS256"`, `"EdDSA"`, ...); `none` and unknown
/// names are errors.
pub fn parse_algorithm(name: &str) -> Result<Algorithm, ConfigError> {
    Algorithm::from_str(name.trim())
        .map_err(|_| ConfigError::invalid("auth.jwtAlgorithm", ALGORITHMS_RULE))
}

/// The rule an unknown algorithm name breaks.
pub(crate) const ALGORITHMS_RULE: &str =
    "must be one of HS256 HS384 HS512 RS256 RS384 RS512 PS256 PS384 PS512 ES256 ES384 EdDSA";

fn family(alg: Algorithm) -> AlgorithmFamily {
    match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => AlgorithmFamily::Hmac,
        Algorithm::ES256 | Algorithm::ES384 => AlgorithmFamily::Ec,
        Algorithm::EdDSA => AlgorithmFamily::Ed,
        _ => AlgorithmFamily::Rsa,
    }
}

enum KeySpec {
    Secret {
        alg: Algorithm,
        secret: SecretBytes,
        kid: Option<String>,
    },
    Pem {
        alg: Algorithm,
        pem: Vec<u8>,
        kid: Option<String>,
    },
    PemFile {
        alg: Algorithm,
        path: PathBuf,
        kid: Option<String>,
    },
    JwksJson(String),
    JwksFile(PathBuf),
}

impl fmt::Debug for KeySpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Secret { alg, kid, .. } => f
                .debug_struct("Secret")
                .field("alg", alg)
                .field("kid", kid)
                .finish_non_exhaustive(),
            Self::Pem { alg, kid, pem } => f
                .debug_struct("Pem")
                .field("alg", alg)
                .field("kid", kid)
                .field("bytes", &pem.len())
                .finish(),
            Self::PemFile { alg, path, kid } => f
                .debug_struct("PemFile")
                .field("alg", alg)
                .field("path", path)
                .field("kid", kid)
                .finish(),
            Self::JwksJson(s) => f.debug_tuple("JwksJson").field(&s.len()).finish(),
            Self::JwksFile(p) => f.debug_tuple("JwksFile").field(p).finish(),
        }
    }
}

/// One token issuer: its `iss`, accepted audiences, keys and claim rules.
///
/// ```
/// use std::time::Duration;
/// use mcp_auth::{JwtIssuer, jsonwebtoken::Algorithm};
///
/// let issuer = JwtIssuer::new("https://auth.example.com")
///     .audiences(["mcp-gateway", "https://mcp.example.com/mcp"])
///     .jwks_url("https://auth.example.com/.well-known/jwks.json")
///     .leeway(Duration::from_secs(30))
///     .require_claims(["email"]);
/// let shared = JwtIssuer::any().hmac_secret(Algorithm::HS256, "a-shared-secret-of-at-least-32-bytes!!");
/// # let _ = (issuer, shared);
/// ```
#[derive(Debug)]
pub struct JwtIssuer {
    issuer: Option<String>,
    audiences: Vec<String>,
    algorithms: Option<Vec<Algorithm>>,
    keys: Vec<KeySpec>,
    jwks_url: Option<String>,
    jwks_ttl: Duration,
    jwks_refresh_interval: Duration,
    jwks_timeout: Duration,
    allow_http_jwks: bool,
    jwks_ca_pem: Option<PemBundle>,
    leeway: Duration,
    require_exp: bool,
    required_claims: Vec<String>,
    principal_claim: String,
    token_types: Vec<String>,
    allow_untyped: bool,
    allow_fractional_dates: bool,
    /// Where the issuer is configured, for error messages (default `auth.jwt.issuers[i]`).
    config_key: Option<String>,
}

impl JwtIssuer {
    /// Tokens whose `iss` is `issuer` (required in the token).
    pub fn new(issuer: impl Into<String>) -> Self {
        Self {
            issuer: Some(issuer.into()),
            ..Self::any()
        }
    }

    /// Tokens with any (or no) `iss`. Only sensible with a key nobody else holds.
    pub fn any() -> Self {
        Self {
            issuer: None,
            audiences: Vec::new(),
            algorithms: None,
            keys: Vec::new(),
            jwks_url: None,
            jwks_ttl: DEFAULT_JWKS_TTL,
            jwks_refresh_interval: DEFAULT_JWKS_REFRESH_INTERVAL,
            jwks_timeout: DEFAULT_JWKS_TIMEOUT,
            allow_http_jwks: false,
            jwks_ca_pem: None,
            leeway: Duration::from_secs(60),
            require_exp: true,
            required_claims: Vec::new(),
            principal_claim: "sub".into(),
            token_types: DEFAULT_TOKEN_TYPES
                .iter()
                .map(|t| (*t).to_owned())
                .collect(),
            allow_untyped: true,
            allow_fractional_dates: false,
            config_key: None,
        }
    }

    /// Adds an accepted audience (`aud` must then contain one of them).
    pub fn audience(mut self, aud: impl Into<String>) -> Self {
        self.audiences.push(aud.into());
        self
    }

    /// Adds accepted audiences.
    pub fn audiences<I, T>(mut self, auds: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.audiences.extend(auds.into_iter().map(Into::into));
        self
    }

    /// Restricts the algorithms accepted from this issuer (default: those of the
    /// configured keys; for JWKS keys, every asymmetric algorithm).
    pub fn algorithms(mut self, algs: impl IntoIterator<Item = Algorithm>) -> Self {
        self.algorithms = Some(algs.into_iter().collect());
        self
    }

    /// Adds a shared secret for an HMAC algorithm (at least as long as the hash output:
    /// 32, 48 or 64 bytes, RFC 7518 §3.2): raw bytes (`Vec<u8>`, `&[u8]`, `[u8; N]`, as a
    /// KMS gives them) or text (`&str`, `String`, [`SecretString`](crate::SecretString): its UTF-8 bytes).
    ///
    /// ```
    /// use mcp_auth::{JwtIssuer, jsonwebtoken::Algorithm};
    /// let from_kms: Vec<u8> = vec![0x9c; 32]; // the bytes a KMS decrypted
    /// let issuer = JwtIssuer::any().hmac_secret(Algorithm::HS256, from_kms);
    /// # let _ = issuer;
    /// ```
    pub fn hmac_secret(mut self, alg: Algorithm, secret: impl Into<SecretBytes>) -> Self {
        self.keys.push(KeySpec::Secret {
            alg,
            secret: secret.into(),
            kid: None,
        });
        self
    }

    /// Adds a PEM public key (RSA, EC or Ed25519) for `alg`.
    pub fn public_key_pem(mut self, alg: Algorithm, pem: impl Into<Vec<u8>>) -> Self {
        self.keys.push(KeySpec::Pem {
            alg,
            pem: pem.into(),
            kid: None,
        });
        self
    }

    /// Adds a PEM public key read from a file at build time.
    pub fn public_key_pem_file(mut self, alg: Algorithm, path: impl Into<PathBuf>) -> Self {
        self.keys.push(KeySpec::PemFile {
            alg,
            path: path.into(),
            kid: None,
        });
        self
    }

    /// Sets the `kid` of the key added last (secret or PEM); tokens naming another `kid`
    /// will not be tried with it. Keys without a `kid` are tried for any token.
    pub fn key_id(mut self, kid: impl Into<String>) -> Self {
        if let Some(
            KeySpec::Secret { kid: k, .. }
            | KeySpec::Pem { kid: k, .. }
            | KeySpec::PemFile { kid: k, .. },
        ) = self.keys.last_mut()
        {
            *k = Some(kid.into());
        }
        self
    }

    /// Adds the keys of a JWKS document given inline.
    pub fn jwks_json(mut self, json: impl Into<String>) -> Self {
        self.keys.push(KeySpec::JwksJson(json.into()));
        self
    }

    /// Adds the keys of a JWKS file read at build time.
    pub fn jwks_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.keys.push(KeySpec::JwksFile(path.into()));
        self
    }

    /// Fetches keys from a JWKS URL (`https`, unless [`JwtIssuer::allow_http_jwks`]).
    pub fn jwks_url(mut self, url: impl Into<String>) -> Self {
        self.jwks_url = Some(url.into());
        self
    }

    /// Trusts only these CA certificates (PEM bundle) for the JWKS URL instead of the
    /// Mozilla roots: for an identity provider behind a private PKI.
    pub fn jwks_root_certificates_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.jwks_ca_pem = Some(PemBundle(pem.into()));
        self
    }

    /// How long fetched keys are fresh (default 10 minutes).
    pub fn jwks_ttl(mut self, ttl: Duration) -> Self {
        self.jwks_ttl = ttl;
        self
    }

    /// The minimum interval between two fetches, whatever asks for them (default 30 s).
    pub fn jwks_refresh_interval(mut self, interval: Duration) -> Self {
        self.jwks_refresh_interval = interval;
        self
    }

    /// The timeout of one fetch (default 5 s).
    pub fn jwks_timeout(mut self, timeout: Duration) -> Self {
        self.jwks_timeout = timeout;
        self
    }

    /// Allows an `http://` JWKS URL (tests, or a sidecar on loopback). Off by default:
    /// keys fetched without TLS can be replaced by anyone on the path.
    pub fn allow_http_jwks(mut self, allow: bool) -> Self {
        self.allow_http_jwks = allow;
        self
    }

    /// Clock skew allowed on `exp` and `nbf` (default 60 s).
    pub fn leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway;
        self
    }

    /// Whether `exp` must be present (default `true`). A present `exp` is always checked.
    pub fn require_exp(mut self, require: bool) -> Self {
        self.require_exp = require;
        self
    }

    /// Claims that must be present (any value but `null`).
    pub fn require_claims<I, T>(mut self, claims: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.required_claims
            .extend(claims.into_iter().map(Into::into));
        self
    }

    /// The claim holding the principal id (default `sub`).
    pub fn principal_claim(mut self, claim: impl Into<String>) -> Self {
        self.principal_claim = claim.into();
        self
    }

    /// The accepted values of the token header's `typ` (default [`DEFAULT_TOKEN_TYPES`]:
    /// `at+jwt`, RFC 9068's access token type, and `JWT`). Compared as media types:
    /// case-insensitively, with or without `application/`. Tokens of any other type
    /// (`JOSE+JSON`, `secevent+jwt`, `dpop+jwt`, ...) are refused even when their `aud`
    /// matches. An issuer that types its access tokens should accept `at+jwt` only (and
    /// [`allow_untyped(false)`](Self::allow_untyped)): its ID tokens, typed `JWT` or not
    /// at all, are then refused too.
    pub fn token_types<I, T>(mut self, types: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.token_types = types.into_iter().map(Into::into).collect();
        self
    }

    /// Whether a token without `typ` is accepted (default `true`, for issuers that do not
    /// type their tokens).
    pub fn allow_untyped(mut self, allow: bool) -> Self {
        self.allow_untyped = allow;
        self
    }

    /// Whether `exp`, `nbf` and `iat` may hold a fraction of a second (default `false`:
    /// each must be an integer number of seconds). Strings, negative values and values
    /// past the year 9999 are refused whatever this says.
    pub fn allow_fractional_dates(mut self, allow: bool) -> Self {
        self.allow_fractional_dates = allow;
        self
    }

    /// Names the configuration key of this issuer in build errors.
    pub(crate) fn config_key(mut self, key: impl Into<String>) -> Self {
        self.config_key = Some(key.into());
        self
    }
}

/// A PEM certificate bundle (public data; `Debug` shows its size only).
struct PemBundle(Vec<u8>);

impl fmt::Debug for PemBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PemBundle({} bytes)", self.0.len())
    }
}

/// What a [`Validation`] needs, per issuer.
#[derive(Debug, Clone)]
struct Rules {
    issuer: Option<String>,
    audiences: Vec<String>,
    leeway: u64,
    require_exp: bool,
}

impl Rules {
    fn validation(&self, algs: &[Algorithm]) -> Validation {
        let mut v = Validation::new(algs.first().copied().unwrap_or(Algorithm::RS256));
        v.algorithms = algs.to_vec();
        v.leeway = self.leeway;
        v.validate_exp = true;
        v.validate_nbf = true;
        let mut required = Vec::new();
        if self.require_exp {
            required.push("exp");
        }
        if let Some(iss) = &self.issuer {
            v.set_issuer(&[iss]);
            required.push("iss");
        }
        if self.audiences.is_empty() {
            v.validate_aud = false;
        } else {
            v.set_audience(&self.audiences);
            required.push("aud");
        }
        v.set_required_spec_claims(&required);
        v
    }
}

struct VerifyKey {
    kid: Option<String>,
    algs: Vec<Algorithm>,
    key: DecodingKey,
    validation: Validation,
}

#[derive(Default)]
struct KeySet {
    keys: Vec<VerifyKey>,
    /// The SHA-256 of the keys' ids, algorithms and key material, sorted: equal for two
    /// documents holding the same keys (whatever their order or other members).
    fingerprint: [u8; 32],
}

impl fmt::Debug for KeySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.keys.iter().map(|k| (&k.kid, &k.algs)))
            .finish()
    }
}

impl KeySet {
    /// Keys that may verify a token with this `kid` and `alg`.
    fn candidates<'a>(
        &'a self,
        kid: Option<&'a str>,
        alg: Algorithm,
    ) -> impl Iterator<Item = &'a VerifyKey> + 'a {
        self.keys.iter().filter(move |k| {
            k.algs.contains(&alg)
                && match (kid, k.kid.as_deref()) {
                    (Some(t), Some(k)) => t == k,
                    _ => true,
                }
        })
    }

    fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }

    fn from_jwks(
        json: &[u8],
        allowed: &[Algorithm],
        rules: &Rules,
        key: &str,
    ) -> Result<Self, String> {
        #[derive(serde::Deserialize)]
        struct Doc {
            keys: Vec<Value>,
        }
        let doc: Doc =
            serde_json::from_slice(json).map_err(|e| format!("{key}: not a JWKS document: {e}"))?;
        let mut set = KeySet::default();
        let mut prints: Vec<Vec<u8>> = Vec::new();
        for v in doc.keys.into_iter().take(MAX_JWKS_KEYS) {
            if let Some((k, print)) = key_from_jwk(v, allowed, rules) {
                set.keys.push(k);
                prints.push(print);
            }
        }
        prints.sort_unstable();
        prints.dedup();
        let mut all = Vec::new();
        for p in &prints {
            all.extend_from_slice(&(p.len() as u64).to_le_bytes());
            all.extend_from_slice(p);
        }
        set.fingerprint = sha256(&all);
        Ok(set)
    }
}

/// A key of a JWKS document, and what identifies it (kid, algorithms, key material).
fn key_from_jwk(v: Value, allowed: &[Algorithm], rules: &Rules) -> Option<(VerifyKey, Vec<u8>)> {
    let jwk: Jwk = serde_json::from_value(v).ok()?;
    if matches!(
        jwk.common.public_key_use,
        Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_))
    ) {
        return None;
    }
    let implied: &[Algorithm] = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => AlgorithmFamily::Rsa.algorithms(),
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => &[Algorithm::ES256],
            EllipticCurve::P384 => &[Algorithm::ES384],
            _ => &[],
        },
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            &[Algorithm::EdDSA]
        }
        // Symmetric keys never come from a JWKS: a published HMAC key verifies nothing.
        _ => &[],
    };
    let algs: Vec<Algorithm> = match jwk.common.key_algorithm {
        Some(ka) => {
            let alg = Algorithm::from_str(&ka.to_string()).ok()?;
            if implied.contains(&alg) && allowed.contains(&alg) {
                vec![alg]
            } else {
                return None;
            }
        }
        None => implied
            .iter()
            .copied()
            .filter(|a| allowed.contains(a))
            .collect(),
    };
    if algs.is_empty() {
        return None;
    }
    let key = DecodingKey::from_jwk(&jwk).ok()?;
    let print =
        serde_json::to_vec(&(&jwk.common.key_id, format!("{algs:?}"), &jwk.algorithm)).ok()?;
    Some((
        VerifyKey {
            kid: jwk.common.key_id.clone(),
            validation: rules.validation(&algs),
            algs,
            key,
        },
        print,
    ))
}

type HttpClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    http_body_util::Empty<Bytes>,
>;

fn http_client(roots_pem: Option<&[u8]>, key: &str) -> Result<HttpClient, ConfigError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls_error = |e: rustls::Error| ConfigError::invalid(key, format!("TLS setup: {e}"));
    let builder = hyper_rustls::HttpsConnectorBuilder::new();
    let builder = match roots_pem {
        None => builder
            .with_provider_and_webpki_roots(provider)
            .map_err(tls_error)?,
        Some(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert =
                    cert.map_err(|_| ConfigError::invalid(key, "not a PEM certificate bundle"))?;
                roots.add(cert).map_err(|_| {
                    ConfigError::invalid(key, "a certificate of the bundle is invalid")
                })?;
            }
            if roots.is_empty() {
                return Err(ConfigError::invalid(
                    key,
                    "the CA bundle holds no certificate",
                ));
            }
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(tls_error)?
                .with_root_certificates(roots)
                .with_no_client_auth();
            builder.with_tls_config(config)
        }
    };
    let https = builder.https_or_http().enable_http1().build();
    Ok(
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(https),
    )
}

#[derive(Default)]
struct RemoteState {
    keys: Option<Arc<KeySet>>,
    fetched_at: Option<Instant>,
    last_attempt: Option<Instant>,
}

struct RemoteJwks {
    url: http::Uri,
    ttl: Duration,
    min_interval: Duration,
    timeout: Duration,
    allowed: Vec<Algorithm>,
    rules: Rules,
    state: RwLock<RemoteState>,
    fetch_lock: tokio::sync::Mutex<()>,
    refreshing: AtomicBool,
    client: HttpClient,
    epoch: Arc<AtomicU64>,
}

impl fmt::Debug for RemoteJwks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteJwks")
            .field("url", &self.url)
            .field("ttl", &self.ttl)
            .field("min_interval", &self.min_interval)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl RemoteJwks {
    fn state(&self) -> std::sync::RwLockReadGuard<'_, RemoteState> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn may_fetch(&self) -> bool {
        self.state()
            .last_attempt
            .is_none_or(|t| t.elapsed() >= self.min_interval)
    }

    /// The current keys, and whether they are stale.
    fn current(&self) -> (Option<Arc<KeySet>>, bool) {
        let st = self.state();
        let stale = st.fetched_at.is_none_or(|t| t.elapsed() >= self.ttl);
        (st.keys.clone(), stale)
    }

    fn spawn_refresh(self: &Arc<Self>) {
        if !self.may_fetch() || self.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                let this = Arc::clone(self);
                handle.spawn(async move {
                    this.refresh().await;
                    this.refreshing.store(false, Ordering::Release);
                });
            }
            Err(_) => self.refreshing.store(false, Ordering::Release),
        }
    }

    /// Fetches the keys, unless another fetch happened within the minimum interval.
    async fn refresh(&self) {
        let _guard = self.fetch_lock.lock().await;
        if !self.may_fetch() {
            return;
        }
        self.state
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .last_attempt = Some(Instant::now());
        let result = match tokio::time::timeout(self.timeout, self.fetch()).await {
            Ok(r) => r,
            Err(_) => Err("timed out".to_owned()),
        };
        match result {
            Ok(set) => {
                let mut st = self.state.write().unwrap_or_else(|e| e.into_inner());
                // Only a changed key set empties the verified-token cache (of every user):
                // a refetch for an unknown kid that brings the same keys keeps it.
                let changed = st
                    .keys
                    .as_ref()
                    .is_some_and(|old| old.fingerprint != set.fingerprint);
                tracing::debug!(url = %self.url, keys = set.keys.len(), changed, "JWKS fetched");
                st.keys = Some(Arc::new(set));
                st.fetched_at = Some(Instant::now());
                if changed {
                    self.epoch.fetch_add(1, Ordering::AcqRel);
                }
            }
            Err(error) => {
                tracing::warn!(url = %self.url, %error, "JWKS fetch failed; keeping the keys already known");
            }
        }
    }

    async fn fetch(&self) -> Result<KeySet, String> {
        use http_body_util::BodyExt;
        let req = http::Request::get(self.url.clone())
            .header(http::header::ACCEPT, "application/json")
            .body(http_body_util::Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let resp = self.client.request(req).await.map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("HTTP status {}", resp.status()));
        }
        let body = http_body_util::Limited::new(resp.into_body(), MAX_JWKS_BYTES)
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        KeySet::from_jwks(&body, &self.allowed, &self.rules, "jwks")
    }
}

enum Keys {
    Static(Arc<KeySet>),
    Remote(Arc<RemoteJwks>, Arc<KeySet>),
}

struct IssuerState {
    name: Option<String>,
    keys: Keys,
    required_claims: Vec<String>,
    principal_claim: String,
    /// Accepted `typ` values, normalized ([`normalize_typ`]).
    token_types: Vec<String>,
    allow_untyped: bool,
    allow_fractional_dates: bool,
}

impl fmt::Debug for IssuerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Issuer");
        d.field("iss", &self.name);
        match &self.keys {
            Keys::Static(k) => d.field("keys", k),
            Keys::Remote(r, k) => d.field("jwks", r).field("local_keys", k),
        };
        d.field("required_claims", &self.required_claims)
            .field("principal_claim", &self.principal_claim)
            .field("token_types", &self.token_types)
            .field("allow_untyped", &self.allow_untyped)
            .field("allow_fractional_dates", &self.allow_fractional_dates)
            .finish()
    }
}

struct JwtInner {
    issuers: Vec<IssuerState>,
    offload: Option<Arc<tokio::sync::Semaphore>>,
    cache: Option<VerifiedCache>,
    max_token_bytes: usize,
    epoch: Arc<AtomicU64>,
    /// How often the per-token work ran (unit tests count it).
    #[cfg(test)]
    work: WorkCounts,
}

/// Counts of the per-token work: token digests and header decodes.
#[cfg(test)]
#[derive(Default)]
struct WorkCounts {
    digests: std::sync::atomic::AtomicUsize,
    headers: std::sync::atomic::AtomicUsize,
}

/// Authenticates JWT bearer tokens (see the [module documentation](self)). Cheap to
/// clone.
///
/// ```
/// use mcp_auth::{JwtAuthenticator, JwtIssuer, jsonwebtoken::Algorithm};
/// let jwt = JwtAuthenticator::builder()
///     .issuer(JwtIssuer::new("https://auth.example.com")
///         .audience("mcp")
///         .hmac_secret(Algorithm::HS256, "0123456789abcdef0123456789abcdef"))
///     .build()
///     .unwrap();
/// # let _ = jwt;
/// ```
#[derive(Clone)]
pub struct JwtAuthenticator {
    inner: Arc<JwtInner>,
}

impl fmt::Debug for JwtAuthenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtAuthenticator")
            .field("issuers", &self.inner.issuers)
            .field("cache", &self.inner.cache.as_ref().map(|c| c.capacity()))
            .field("max_token_bytes", &self.inner.max_token_bytes)
            .finish()
    }
}

/// Builder of [`JwtAuthenticator`].
#[derive(Debug)]
pub struct JwtAuthenticatorBuilder {
    issuers: Vec<JwtIssuer>,
    cache_capacity: usize,
    cache_max_ttl: Duration,
    max_token_bytes: usize,
    resource: Option<String>,
    blocking_verifications: usize,
}

/// The default bound on concurrent asymmetric signature checks on the blocking pool.
pub const DEFAULT_BLOCKING_VERIFICATIONS: usize = 8;

impl Default for JwtAuthenticatorBuilder {
    fn default() -> Self {
        Self {
            issuers: Vec::new(),
            cache_capacity: DEFAULT_CACHE_CAPACITY,
            cache_max_ttl: DEFAULT_CACHE_MAX_TTL,
            max_token_bytes: DEFAULT_MAX_TOKEN_BYTES,
            resource: None,
            blocking_verifications: DEFAULT_BLOCKING_VERIFICATIONS,
        }
    }
}

enum Step {
    Done(Outcome),
    /// The signature check is costly (asymmetric): run it on the blocking pool, with what
    /// was learnt of the token so far.
    Offload(Box<Checked>),
    /// The keys of issuer `i` must be fetched first.
    Fetch(Arc<RemoteJwks>),
}

/// What the checks before the signature learnt of a token: handed to the signature check
/// (on the blocking pool, for asymmetric keys) so that the header is decoded and the
/// token hashed once per request.
struct Checked {
    /// The SHA-256 of the token, computed only when the verified-token cache is on.
    digest: Option<[u8; 32]>,
    epoch: u64,
    now: u64,
    /// Index of the issuer in [`JwtInner::issuers`].
    issuer: usize,
    alg: Algorithm,
    kid: Option<String>,
    /// The keys to try: the issuer's (fetched or static) and, for a JWKS URL, its local
    /// keys.
    set: Arc<KeySet>,
    local: Option<Arc<KeySet>>,
}

fn refused(detail: impl Into<std::borrow::Cow<'static, str>>) -> Outcome {
    Outcome::Failed(Failure::invalid(Scheme::Bearer, detail))
}

fn fail(detail: impl Into<std::borrow::Cow<'static, str>>) -> Step {
    Step::Done(refused(detail))
}

fn describe(kind: &ErrorKind) -> String {
    match kind {
        ErrorKind::ExpiredSignature => "jwt expired".into(),
        ErrorKind::ImmatureSignature => "jwt not yet valid (nbf)".into(),
        ErrorKind::InvalidAudience => "jwt audience not accepted".into(),
        ErrorKind::InvalidIssuer => "jwt issuer not accepted".into(),
        ErrorKind::InvalidSignature => "jwt signature invalid".into(),
        ErrorKind::InvalidAlgorithm => "jwt algorithm not allowed for the key".into(),
        ErrorKind::MissingRequiredClaim(c) => format!("jwt lacks required claim {c:?}"),
        ErrorKind::InvalidClaimFormat(c) => format!("jwt claim {c:?} malformed"),
        _ => "jwt malformed".into(),
    }
}

/// A `typ` value as compared: lower case, without the optional `application/`
/// (RFC 7515 section 4.1.9).
fn normalize_typ(t: &str) -> String {
    let t = t.trim().to_ascii_lowercase();
    match t.strip_prefix("application/") {
        Some(rest) if !rest.contains('/') => rest.to_owned(),
        _ => t,
    }
}

/// The seconds of a NumericDate claim (rounded down), or `None` when it is not one: a
/// non-negative integer up to [`MAX_NUMERIC_DATE`], or, when `fractional`, a finite
/// non-negative number up to it.
fn numeric_date(v: &Value, fractional: bool) -> Option<u64> {
    let Value::Number(n) = v else { return None };
    if let Some(t) = n.as_u64() {
        return (t <= MAX_NUMERIC_DATE).then_some(t);
    }
    if n.is_i64() || !fractional {
        return None;
    }
    let f = n.as_f64()?;
    // 253402300799 is exact in an f64.
    #[allow(clippy::cast_precision_loss)]
    let max = MAX_NUMERIC_DATE as f64;
    if !(f.is_finite() && (0.0..=max).contains(&f)) {
        return None;
    }
    // In range: the whole seconds convert exactly.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let secs = f.floor() as u64;
    Some(secs)
}

/// Reads the `iss` of a token without verifying it, to choose the issuer whose keys will
/// verify it.
fn peek_iss(token: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Iss {
        iss: Option<String>,
    }
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice::<Iss>(&bytes).ok()?.iss
}

fn scopes_of(claims: &Map<String, Value>) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(Value::String(s)) = claims.get("scope") {
        out.extend(s.split_whitespace().map(str::to_owned));
    }
    match claims.get("scp") {
        Some(Value::String(s)) => out.extend(s.split_whitespace().map(str::to_owned)),
        Some(Value::Array(a)) => out.extend(a.iter().filter_map(Value::as_str).map(str::to_owned)),
        _ => {}
    }
    out
}

impl JwtInner {
    /// The index of the issuer whose keys verify `token`.
    fn route(&self, token: &str) -> Option<usize> {
        if self.issuers.len() == 1 {
            return Some(0);
        }
        let iss = peek_iss(token);
        self.issuers
            .iter()
            .position(|i| i.name.is_some() && i.name == iss)
            .or_else(|| self.issuers.iter().position(|i| i.name.is_none()))
    }

    /// The SHA-256 of `token`, the key of the verified-token cache.
    fn digest(&self, token: &str) -> [u8; 32] {
        #[cfg(test)]
        self.work.digests.fetch_add(1, Ordering::Relaxed);
        sha256(token.as_bytes())
    }

    fn header(&self, token: &str) -> jsonwebtoken::errors::Result<jsonwebtoken::Header> {
        #[cfg(test)]
        self.work.headers.fetch_add(1, Ordering::Relaxed);
        jsonwebtoken::decode_header(token)
    }

    fn try_verify(&self, token: &str, may_fetch: bool, may_offload: bool) -> Step {
        if token.len() > self.max_token_bytes {
            return fail("jwt longer than the limit");
        }
        if token.bytes().filter(|b| *b == b'.').count() != 2 {
            return fail("not a jwt");
        }
        let epoch = self.epoch.load(Ordering::Acquire);
        let now = now_unix();
        // The digest only serves the cache: without one, the token is not hashed.
        let digest = match &self.cache {
            Some(cache) => {
                let digest = self.digest(token);
                if let Some(p) = cache.get(&digest, epoch, now) {
                    return Step::Done(Outcome::Authenticated(p));
                }
                Some(digest)
            }
            None => None,
        };
        let header = match self.header(token) {
            Ok(h) => h,
            Err(e) => return fail(format!("jwt header: {}", describe(e.kind()))),
        };
        let Some(index) = self.route(token) else {
            return fail("jwt issuer not accepted");
        };
        let issuer = &self.issuers[index];
        match header.typ.as_deref() {
            None if issuer.allow_untyped => {}
            None => return fail("jwt typ missing (this issuer requires one)"),
            Some(t) => {
                let t = normalize_typ(t);
                if !issuer.token_types.contains(&t) {
                    return fail("jwt typ not accepted (not an access token type)");
                }
            }
        }
        let kid = header.kid;
        let alg = header.alg;
        let (set, remote) = match &issuer.keys {
            Keys::Static(k) => (Arc::clone(k), None),
            Keys::Remote(r, local) => {
                let (keys, stale) = r.current();
                match keys {
                    Some(k) => {
                        if stale {
                            r.spawn_refresh();
                        }
                        (k, Some((r, local)))
                    }
                    None if may_fetch && r.may_fetch() => return Step::Fetch(Arc::clone(r)),
                    None if local.keys.is_empty() => {
                        return Step::Done(Outcome::Failed(Failure::unavailable(
                            Scheme::Bearer,
                            "jwks unavailable",
                        )));
                    }
                    None => (Arc::new(KeySet::default()), Some((r, local))),
                }
            }
        };
        let local = remote.map(|(_, l)| l);
        let candidates = set.candidates(kid.as_deref(), alg).count()
            + local.map_or(0, |l| l.candidates(kid.as_deref(), alg).count());
        if candidates == 0 {
            if let (Some(kid), Some((r, _))) = (kid.as_deref(), remote)
                && !set.has_kid(kid)
                && may_fetch
                && r.may_fetch()
            {
                return Step::Fetch(Arc::clone(r));
            }
            return fail(if kid.as_deref().is_some_and(|k| !set.has_kid(k)) {
                "jwt kid unknown"
            } else {
                "jwt algorithm not allowed"
            });
        }
        if kid.is_none() && remote.is_some() && candidates > 1 {
            return fail("jwt without kid, several keys");
        }
        let checked = Checked {
            digest,
            epoch,
            now,
            issuer: index,
            alg,
            kid,
            set,
            local: local.map(Arc::clone),
        };
        if may_offload && self.offload.is_some() && family(alg) != AlgorithmFamily::Hmac {
            return Step::Offload(Box::new(checked));
        }
        Step::Done(self.verify_signature(token, &checked))
    }

    /// Checks the signature and the claims of `token` with the keys `checked` selected.
    fn verify_signature(&self, token: &str, checked: &Checked) -> Outcome {
        let Some(issuer) = self.issuers.get(checked.issuer) else {
            return refused("jwt issuer not accepted");
        };
        let kid = checked.kid.as_deref();
        let candidates = checked.set.candidates(kid, checked.alg).chain(
            checked
                .local
                .iter()
                .flat_map(move |l| l.candidates(kid, checked.alg)),
        );
        let mut last = String::from("jwt signature invalid");
        for key in candidates {
            match jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &key.validation) {
                Ok(data) => return self.accept(issuer, key, data.claims, checked),
                Err(e) => {
                    let signature = matches!(e.kind(), ErrorKind::InvalidSignature);
                    last = describe(e.kind());
                    if !signature {
                        break;
                    }
                }
            }
        }
        refused(last)
    }

    fn accept(
        &self,
        issuer: &IssuerState,
        key: &VerifyKey,
        claims: Map<String, Value>,
        checked: &Checked,
    ) -> Outcome {
        for c in &issuer.required_claims {
            if claims.get(c).is_none_or(Value::is_null) {
                return refused(format!("jwt lacks required claim {c:?}"));
            }
        }
        let id = match claims.get(&issuer.principal_claim) {
            // An empty or blank id names nobody: refused as an invalid credential.
            Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
            _ => {
                return refused(format!(
                    "jwt lacks the principal claim {:?} (or it is blank)",
                    issuer.principal_claim
                ));
            }
        };
        let mut exp = None;
        for name in ["exp", "nbf", "iat"] {
            let Some(v) = claims.get(name) else { continue };
            match numeric_date(v, issuer.allow_fractional_dates) {
                Some(t) if name == "exp" => exp = Some(t),
                Some(_) => {}
                None => {
                    return refused(if issuer.allow_fractional_dates {
                        format!("jwt claim {name:?} is not a NumericDate")
                    } else {
                        format!("jwt claim {name:?} is not an integer NumericDate")
                    });
                }
            }
        }
        let mut principal = Principal::new(id, AuthMethod::Jwt).with_scopes(scopes_of(&claims));
        // The configured issuer, not the token's word: an issuer configured without a fixed
        // `iss` accepts any, so its principals are `jwt:#<sub>` whatever `iss` they carry.
        if let Some(name) = &issuer.name {
            principal = principal.with_issuer(name.clone());
        }
        if let Some(kid) = &key.kid {
            principal = principal.with_credential_id(kid.clone());
        }
        let principal = principal.with_claims(claims);
        if let (Some(cache), Some(digest)) = (&self.cache, checked.digest) {
            cache.insert(digest, principal.clone(), exp, checked.epoch, checked.now);
        }
        Outcome::Authenticated(principal)
    }
}

impl JwtAuthenticatorBuilder {
    /// Adds an issuer.
    pub fn issuer(mut self, issuer: JwtIssuer) -> Self {
        self.issuers.push(issuer);
        self
    }

    /// The capacity of the verified-token cache (default 10 000; 0 disables it).
    pub fn cache_capacity(mut self, capacity: usize) -> Self {
        self.cache_capacity = capacity;
        self
    }

    /// The longest time a verified token is served from the cache (default 5 minutes;
    /// never past its `exp`).
    pub fn cache_max_ttl(mut self, ttl: Duration) -> Self {
        self.cache_max_ttl = ttl;
        self
    }

    /// The longest token accepted (default 8 KiB); longer ones are refused unread.
    pub fn max_token_bytes(mut self, max: usize) -> Self {
        self.max_token_bytes = max;
        self
    }

    /// How many first-sight RSA, ECDSA and EdDSA signature checks may run at once on
    /// Tokio's blocking pool (default 8). An RS256 check costs about 0.3 ms of CPU with
    /// the pure-Rust backend: run on the executor it would stall other requests. 0 runs
    /// them inline instead. HMAC checks and cache hits always run inline.
    pub fn blocking_verifications(mut self, n: usize) -> Self {
        self.blocking_verifications = n;
        self
    }

    /// The MCP resource URI this server is (RFC 8707 / MCP authorization): tokens must
    /// name it in `aud`. It replaces the issuers' audience lists.
    pub fn resource(mut self, resource: impl Into<String>) -> Self {
        self.resource = Some(resource.into());
        self
    }

    /// Validates and builds: reads key files, checks secrets and algorithms.
    pub fn build(self) -> Result<JwtAuthenticator, ConfigError> {
        install_crypto_provider();
        if self.issuers.is_empty() {
            return Err(ConfigError::invalid(
                "auth.jwt.issuers",
                "at least one issuer is required",
            ));
        }
        if self.max_token_bytes == 0 {
            return Err(ConfigError::invalid(
                "auth.jwt.maxTokenBytes",
                "must be positive",
            ));
        }
        let epoch = Arc::new(AtomicU64::new(0));
        let mut names = std::collections::HashSet::new();
        let mut issuers = Vec::new();
        for (i, spec) in self.issuers.into_iter().enumerate() {
            let key = spec
                .config_key
                .clone()
                .unwrap_or_else(|| format!("auth.jwt.issuers[{i}]"));
            if !names.insert(spec.issuer.clone()) {
                return Err(ConfigError::invalid(key, "two issuers have the same iss"));
            }
            issuers.push(build_issuer(spec, &key, self.resource.as_deref(), &epoch)?);
        }
        Ok(JwtAuthenticator {
            inner: Arc::new(JwtInner {
                issuers,
                offload: (self.blocking_verifications > 0)
                    .then(|| Arc::new(tokio::sync::Semaphore::new(self.blocking_verifications))),
                cache: (self.cache_capacity > 0)
                    .then(|| VerifiedCache::new(self.cache_capacity, self.cache_max_ttl)),
                max_token_bytes: self.max_token_bytes,
                epoch,
                #[cfg(test)]
                work: WorkCounts::default(),
            }),
        })
    }
}

/// Makes the JWT backend this crate was built with jsonwebtoken's process-wide default,
/// unless the process chose one already: aws-lc-rs with the `aws-lc-rs` feature, the
/// pure-Rust RustCrypto backend otherwise. [`JwtAuthenticatorBuilder::build`] calls it.
///
/// When both backends are compiled in (the `aws-lc-rs` feature, or another crate enabling
/// jsonwebtoken's second backend), jsonwebtoken has no default of its own and panics on
/// first use: call this before using `jsonwebtoken` directly (to sign a token, say)
/// ahead of building an authenticator.
pub fn install_crypto_provider() {
    #[cfg(feature = "aws-lc-rs")]
    let provider = &jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER;
    #[cfg(not(feature = "aws-lc-rs"))]
    let provider = &jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER;
    // Err: a provider was installed before (by the application, or an earlier call).
    let _ = provider.install_default();
}

/// Why a shared secret cannot verify tokens of an algorithm.
pub(crate) struct SecretProblem {
    /// The algorithm is not HMAC (the algorithm is at fault, not the secret).
    pub(crate) wrong_algorithm: bool,
    /// What is wrong, without the secret.
    pub(crate) message: String,
}

/// Whether `alg` can verify with a shared secret `len` bytes long: the problem if not.
pub(crate) fn shared_secret_problem(alg: Algorithm, len: usize) -> Option<SecretProblem> {
    if family(alg) != AlgorithmFamily::Hmac {
        return Some(SecretProblem {
            wrong_algorithm: true,
            message: format!(
                "{alg:?} verifies with a public key, not a shared secret: use HS256, HS384 \
                 or HS512 with a secret, or a PEM key or JWKS for {alg:?}"
            ),
        });
    }
    (len < min_secret_len(alg)).then(|| SecretProblem {
        wrong_algorithm: false,
        message: format!(
            "the {alg:?} secret must be at least {} bytes (RFC 7518 section 3.2)",
            min_secret_len(alg)
        ),
    })
}

fn min_secret_len(alg: Algorithm) -> usize {
    match alg {
        Algorithm::HS384 => 48,
        Algorithm::HS512 => 64,
        _ => 32,
    }
}

fn build_issuer(
    spec: JwtIssuer,
    key: &str,
    resource: Option<&str>,
    epoch: &Arc<AtomicU64>,
) -> Result<IssuerState, ConfigError> {
    if spec.principal_claim.is_empty() {
        return Err(ConfigError::invalid(
            format!("{key}.principalClaim"),
            "must not be empty",
        ));
    }
    if spec.issuer.as_deref() == Some("") {
        // Its principals would share `jwt:#<sub>` with an issuer accepting any `iss`.
        return Err(ConfigError::invalid(
            format!("{key}.issuer"),
            "must not be empty (leave it out to accept any iss)",
        ));
    }
    let audiences = match resource {
        Some(r) => vec![r.to_owned()],
        None => spec.audiences.clone(),
    };
    let rules = Rules {
        issuer: spec.issuer.clone(),
        audiences,
        leeway: spec.leeway.as_secs(),
        require_exp: spec.require_exp,
    };
    let allowed: Vec<Algorithm> = spec.algorithms.clone().unwrap_or_else(|| {
        let mut a: Vec<Algorithm> = spec
            .keys
            .iter()
            .filter_map(|k| match k {
                KeySpec::Secret { alg, .. }
                | KeySpec::Pem { alg, .. }
                | KeySpec::PemFile { alg, .. } => Some(*alg),
                _ => None,
            })
            .collect();
        if spec.jwks_url.is_some()
            || spec
                .keys
                .iter()
                .any(|k| matches!(k, KeySpec::JwksJson(_) | KeySpec::JwksFile(_)))
        {
            a.extend_from_slice(ASYMMETRIC);
        }
        a
    });
    if allowed.is_empty() {
        return Err(ConfigError::invalid(
            format!("{key}.keys"),
            "at least one key (secret, PEM, JWKS file or JWKS URL) is required",
        ));
    }
    let mut set = KeySet::default();
    for (j, k) in spec.keys.into_iter().enumerate() {
        let kkey = format!("{key}.keys[{j}]");
        match k {
            KeySpec::Secret { alg, secret, kid } => {
                if let Some(problem) = shared_secret_problem(alg, secret.len()) {
                    return Err(ConfigError::invalid(kkey, problem.message));
                }
                push_key(
                    &mut set,
                    &allowed,
                    &rules,
                    alg,
                    DecodingKey::from_secret(secret.expose()),
                    kid,
                    &kkey,
                )?;
            }
            KeySpec::Pem { alg, pem, kid } => {
                let dk = pem_key(alg, &pem, &kkey)?;
                push_key(&mut set, &allowed, &rules, alg, dk, kid, &kkey)?;
            }
            KeySpec::PemFile { alg, path, kid } => {
                let pem = std::fs::read(&path).map_err(|source| ConfigError::Io {
                    key: kkey.clone(),
                    path: path.display().to_string(),
                    source,
                })?;
                let dk = pem_key(alg, &pem, &kkey)?;
                push_key(&mut set, &allowed, &rules, alg, dk, kid, &kkey)?;
            }
            KeySpec::JwksJson(json) => {
                let s = KeySet::from_jwks(json.as_bytes(), &allowed, &rules, &kkey)
                    .map_err(|e| ConfigError::invalid(kkey.clone(), e))?;
                if s.keys.is_empty() {
                    return Err(ConfigError::invalid(
                        kkey,
                        "the JWKS has no usable signature key",
                    ));
                }
                set.keys.extend(s.keys);
            }
            KeySpec::JwksFile(path) => {
                let json = std::fs::read(&path).map_err(|source| ConfigError::Io {
                    key: kkey.clone(),
                    path: path.display().to_string(),
                    source,
                })?;
                let s = KeySet::from_jwks(&json, &allowed, &rules, &kkey)
                    .map_err(|e| ConfigError::invalid(kkey.clone(), e))?;
                if s.keys.is_empty() {
                    return Err(ConfigError::invalid(
                        kkey,
                        "the JWKS has no usable signature key",
                    ));
                }
                set.keys.extend(s.keys);
            }
        }
    }
    let keys = match spec.jwks_url {
        Some(url) => {
            let ukey = format!("{key}.jwksUrl");
            let uri: http::Uri = url
                .parse()
                .map_err(|_| ConfigError::invalid(ukey.clone(), "not a valid URL"))?;
            match uri.scheme_str() {
                Some("https") => {}
                Some("http") if spec.allow_http_jwks => {}
                Some("http") => {
                    return Err(ConfigError::invalid(
                        ukey,
                        "must be https (allow_http_jwks to permit http)",
                    ));
                }
                _ => return Err(ConfigError::invalid(ukey, "must be an absolute https URL")),
            }
            if spec.jwks_timeout.is_zero() {
                return Err(ConfigError::invalid(
                    format!("{key}.jwksTimeout"),
                    "must be positive",
                ));
            }
            Keys::Remote(
                Arc::new(RemoteJwks {
                    url: uri,
                    ttl: spec.jwks_ttl,
                    min_interval: spec.jwks_refresh_interval,
                    timeout: spec.jwks_timeout,
                    allowed: allowed.clone(),
                    rules: rules.clone(),
                    state: RwLock::new(RemoteState::default()),
                    fetch_lock: tokio::sync::Mutex::new(()),
                    refreshing: AtomicBool::new(false),
                    client: http_client(
                        spec.jwks_ca_pem.as_ref().map(|p| p.0.as_slice()),
                        &format!("{key}.jwksCaFile"),
                    )?,
                    epoch: Arc::clone(epoch),
                }),
                Arc::new(set),
            )
        }
        None => {
            if set.keys.is_empty() {
                return Err(ConfigError::invalid(format!("{key}.keys"), "no usable key"));
            }
            Keys::Static(Arc::new(set))
        }
    };
    let tkey = format!("{key}.tokenTypes");
    let mut token_types = Vec::new();
    for t in &spec.token_types {
        if t.is_empty() || !t.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ConfigError::invalid(
                tkey,
                "each token type is a media type such as at+jwt (printable ASCII, no spaces)",
            ));
        }
        token_types.push(normalize_typ(t));
    }
    if token_types.is_empty() && !spec.allow_untyped {
        return Err(ConfigError::invalid(
            tkey,
            "no token would be accepted: list a type (at+jwt) or allow untyped tokens",
        ));
    }
    let permissive: Vec<&str> = token_types
        .iter()
        .map(String::as_str)
        .filter(|t| *t != "at+jwt")
        .collect();
    if !permissive.is_empty() || spec.allow_untyped {
        tracing::info!(
            issuer = %key,
            accepted_types = ?permissive,
            untyped = spec.allow_untyped,
            "JWT issuer accepts tokens not typed as access tokens (at+jwt): any token of this \
             issuer whose aud matches passes, ID tokens too when they name this audience; an \
             issuer that types its access tokens (RFC 9068) should set tokenTypes [at+jwt] \
             and allowUntyped false"
        );
    }
    if spec.allow_fractional_dates {
        tracing::info!(issuer = %key, "JWT issuer: fractional exp, nbf and iat accepted");
    }
    Ok(IssuerState {
        name: spec.issuer,
        keys,
        required_claims: spec.required_claims,
        principal_claim: spec.principal_claim,
        token_types,
        allow_untyped: spec.allow_untyped,
        allow_fractional_dates: spec.allow_fractional_dates,
    })
}

fn pem_key(alg: Algorithm, pem: &[u8], key: &str) -> Result<DecodingKey, ConfigError> {
    let r = match family(alg) {
        AlgorithmFamily::Rsa => DecodingKey::from_rsa_pem(pem),
        AlgorithmFamily::Ec => DecodingKey::from_ec_pem(pem),
        AlgorithmFamily::Ed => DecodingKey::from_ed_pem(pem),
        AlgorithmFamily::Hmac => {
            return Err(ConfigError::invalid(
                key,
                "a PEM key cannot be used with an HMAC algorithm (algorithm confusion)",
            ));
        }
    };
    r.map_err(|_| ConfigError::invalid(key, format!("not a PEM public key usable with {alg:?}")))
}

fn push_key(
    set: &mut KeySet,
    allowed: &[Algorithm],
    rules: &Rules,
    alg: Algorithm,
    key: DecodingKey,
    kid: Option<String>,
    ckey: &str,
) -> Result<(), ConfigError> {
    if !allowed.contains(&alg) {
        return Err(ConfigError::invalid(
            ckey,
            format!("{alg:?} is not in the issuer's algorithms"),
        ));
    }
    let algs = vec![alg];
    set.keys.push(VerifyKey {
        kid,
        validation: rules.validation(&algs),
        algs,
        key,
    });
    Ok(())
}

impl JwtAuthenticator {
    /// A builder.
    pub fn builder() -> JwtAuthenticatorBuilder {
        JwtAuthenticatorBuilder::default()
    }

    /// Verifies a token (the work [`Authenticator::authenticate`] does after reading the
    /// `Authorization` header), fetching JWKS keys when needed.
    pub async fn verify(&self, token: &str) -> Outcome {
        self.finish(token, self.inner.try_verify(token, true, true))
            .await
    }

    /// Carries a verification on from the step [`JwtInner::try_verify`] stopped at: a
    /// JWKS fetch (then the checks run again, once, with the fetched keys) or a signature
    /// check on the blocking pool.
    async fn finish(&self, token: &str, mut step: Step) -> Outcome {
        let mut fetched = false;
        loop {
            match step {
                Step::Done(o) => return o,
                Step::Fetch(remote) if !fetched => {
                    remote.refresh().await;
                    fetched = true;
                    step = self.inner.try_verify(token, false, true);
                }
                Step::Fetch(_) => {
                    return Outcome::Failed(Failure::unavailable(
                        Scheme::Bearer,
                        "jwks unavailable",
                    ));
                }
                Step::Offload(checked) => return self.verify_offloaded(token, *checked).await,
            }
        }
    }

    /// Verifies the signature on the blocking pool, at most `n` at once (the permits),
    /// so that a flood of first-sight RSA/EC tokens cannot starve the executor. The
    /// header decoded and the digest computed before are handed over, not redone.
    async fn verify_offloaded(&self, token: &str, checked: Checked) -> Outcome {
        let Some(permits) = &self.inner.offload else {
            return self.inner.verify_signature(token, &checked);
        };
        let Ok(permit) = Arc::clone(permits).acquire_owned().await else {
            return self.inner.verify_signature(token, &checked);
        };
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return self.inner.verify_signature(token, &checked);
        };
        let inner = Arc::clone(&self.inner);
        let owned = token.to_owned();
        let result = handle
            .spawn_blocking(move || {
                let _permit = permit;
                inner.verify_signature(&owned, &checked)
            })
            .await;
        result.unwrap_or_else(|_| {
            Outcome::Failed(Failure::unavailable(Scheme::Bearer, "jwt verifier failed"))
        })
    }

    /// Fetches the keys of every JWKS URL now (to warm up before serving).
    pub async fn prefetch(&self) {
        for i in &self.inner.issuers {
            if let Keys::Remote(r, _) = &i.keys {
                r.refresh().await;
            }
        }
    }

    /// How many times a fetched key set differed from the keys known before it (each
    /// change empties the verified-token cache, for every user).
    pub fn key_set_changes(&self) -> u64 {
        self.inner.epoch.load(Ordering::Acquire)
    }

    /// How many verified tokens are cached.
    pub fn cached_tokens(&self) -> usize {
        self.inner.cache.as_ref().map_or(0, VerifiedCache::len)
    }
}

impl Authenticator for JwtAuthenticator {
    fn scheme(&self) -> Scheme {
        Scheme::Bearer
    }

    fn authenticate<'a>(&'a self, req: &'a Parts) -> AuthFuture<'a> {
        let token = match credentials::bearer_token(&req.headers) {
            Ok(None) => return AuthFuture::Ready(Outcome::NoCredential),
            Err(e) => return AuthFuture::Ready(crate::api_key::malformed(Scheme::Bearer, e)),
            Ok(Some(t)) => t,
        };
        match self.inner.try_verify(token, true, true) {
            Step::Done(o) => AuthFuture::Ready(o),
            step => AuthFuture::Pending(Box::pin(self.finish(token, step))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn hs(claims: Value) -> String {
        install_crypto_provider();
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    }

    fn auth() -> JwtAuthenticator {
        JwtAuthenticator::builder()
            .issuer(
                JwtIssuer::new("iss-a")
                    .audiences(["a1", "a2"])
                    .hmac_secret(Algorithm::HS256, SECRET),
            )
            .build()
            .unwrap()
    }

    fn block<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    /// A shared secret from a KMS is bytes, not text: it is taken as given.
    #[test]
    fn hmac_secret_accepts_raw_bytes() {
        let raw: Vec<u8> = (0u8..48).map(|i| i.wrapping_mul(37) ^ 0xff).collect();
        assert!(std::str::from_utf8(&raw).is_err());
        let a = JwtAuthenticator::builder()
            .issuer(JwtIssuer::any().hmac_secret(Algorithm::HS256, raw.clone()))
            .build()
            .unwrap();
        let exp = now_unix() + 600;
        let t = encode(
            &Header::new(Algorithm::HS256),
            &json!({"sub":"kms","exp":exp}),
            &EncodingKey::from_secret(&raw),
        )
        .unwrap();
        assert!(matches!(block(a.verify(&t)), Outcome::Authenticated(_)));
        // The length rule counts bytes.
        let short = JwtAuthenticator::builder()
            .issuer(JwtIssuer::any().hmac_secret(Algorithm::HS256, &raw[..31]))
            .build();
        assert!(short.is_err());
        let debug = format!("{:?}", JwtIssuer::any().hmac_secret(Algorithm::HS256, raw));
        assert!(!debug.contains("255"), "{debug}");
    }

    #[test]
    fn accepts_and_caches() {
        let a = auth();
        let exp = now_unix() + 600;
        let t =
            hs(json!({"sub":"u1","iss":"iss-a","aud":"a2","exp":exp,"scope":"x y","scp":["z"]}));
        let o = block(a.verify(&t));
        let Outcome::Authenticated(p) = o else {
            panic!("{o:?}")
        };
        assert_eq!(p.id(), "u1");
        assert!(p.has_scope("x") && p.has_scope("y") && p.has_scope("z"));
        assert_eq!(a.cached_tokens(), 1);
        assert!(matches!(block(a.verify(&t)), Outcome::Authenticated(_)));
    }

    #[test]
    fn refuses_claim_violations() {
        let a = auth();
        let now = now_unix();
        let cases = [
            (
                json!({"sub":"u","iss":"iss-a","aud":"a1","exp":now - 3600}),
                "expired",
            ),
            (
                json!({"sub":"u","iss":"iss-a","aud":"a1","exp":now + 600, "nbf": now + 3600}),
                "nbf",
            ),
            (
                json!({"sub":"u","iss":"iss-a","aud":"zz","exp":now + 600}),
                "audience",
            ),
            (
                json!({"sub":"u","iss":"other","aud":"a1","exp":now + 600}),
                "issuer",
            ),
            (json!({"sub":"u","iss":"iss-a","aud":"a1"}), "exp"),
            (json!({"sub":"u","aud":"a1","exp":now + 600}), "iss"),
            (
                json!({"iss":"iss-a","aud":"a1","exp":now + 600}),
                "principal claim",
            ),
            // An empty or blank subject names nobody.
            (
                json!({"sub":"","iss":"iss-a","aud":"a1","exp":now + 600}),
                "principal claim",
            ),
            (
                json!({"sub":"   ","iss":"iss-a","aud":"a1","exp":now + 600}),
                "principal claim",
            ),
            (
                json!({"sub":"\t\u{a0}","iss":"iss-a","aud":"a1","exp":now + 600}),
                "principal claim",
            ),
            (
                json!({"sub":42,"iss":"iss-a","aud":"a1","exp":now + 600}),
                "principal claim",
            ),
        ];
        for (claims, want) in cases {
            match block(a.verify(&hs(claims.clone()))) {
                Outcome::Failed(f) => assert!(f.detail.contains(want), "{claims} -> {}", f.detail),
                o => panic!("{claims} -> {o:?}"),
            }
        }
        assert_eq!(a.cached_tokens(), 0);
    }

    #[test]
    fn config_rules() {
        let short = JwtAuthenticator::builder()
            .issuer(JwtIssuer::any().hmac_secret(Algorithm::HS256, "short-secret"))
            .build()
            .unwrap_err();
        assert!(short.to_string().contains("32 bytes"));
        assert!(!short.to_string().contains("short-secret"));
        let pem_hmac = JwtAuthenticator::builder()
            .issuer(
                JwtIssuer::any()
                    .public_key_pem(Algorithm::HS256, b"-----BEGIN PUBLIC KEY-----".to_vec()),
            )
            .build()
            .unwrap_err();
        assert!(pem_hmac.to_string().contains("HMAC"));
        let secret_rsa = JwtAuthenticator::builder()
            .issuer(JwtIssuer::any().hmac_secret(Algorithm::RS256, SECRET))
            .build()
            .unwrap_err();
        assert!(secret_rsa.to_string().contains("HS256"));
        let http = JwtAuthenticator::builder()
            .issuer(JwtIssuer::any().jwks_url("http://127.0.0.1:1/jwks"))
            .build()
            .unwrap_err();
        assert!(http.to_string().contains("https"));
        assert!(parse_algorithm("none").is_err());
        assert_eq!(parse_algorithm("EdDSA").unwrap(), Algorithm::EdDSA);
        let dbg = format!(
            "{:?}",
            JwtIssuer::any().hmac_secret(Algorithm::HS256, SECRET)
        );
        assert!(!dbg.contains(SECRET));
        assert!(!format!("{:?}", auth()).contains(SECRET));
    }

    #[test]
    fn peek_and_scopes() {
        let t = hs(json!({"iss":"x"}));
        assert_eq!(peek_iss(&t).as_deref(), Some("x"));
        assert_eq!(peek_iss("a.!!!.c"), None);
        let mut m = Map::new();
        m.insert("scp".into(), json!("a b"));
        assert_eq!(scopes_of(&m), vec!["a", "b"]);
    }

    /// Verifies `token` the way `AuthLayer` does (through `Authenticator::authenticate`)
    /// and returns the outcome with the digests and header decodes it took.
    fn work_of(a: &JwtAuthenticator, token: &str) -> (Outcome, usize, usize) {
        let req = http::Request::builder()
            .header("authorization", format!("Bearer {token}"))
            .body(())
            .unwrap();
        let (parts, ()) = req.into_parts();
        let before = (
            a.inner.work.digests.load(Ordering::Relaxed),
            a.inner.work.headers.load(Ordering::Relaxed),
        );
        let o = block(async { a.authenticate(&parts).await });
        (
            o,
            a.inner.work.digests.load(Ordering::Relaxed) - before.0,
            a.inner.work.headers.load(Ordering::Relaxed) - before.1,
        )
    }

    #[test]
    fn each_token_is_hashed_and_its_header_decoded_at_most_once() {
        const RSA_KEY: &str = include_str!("../tests/fixtures/rsa1.key");
        const RSA_PUB: &str = include_str!("../tests/fixtures/rsa1.pub");
        let exp = now_unix() + 600;
        let claims = json!({"sub":"u1","iss":"iss-a","aud":"a1","exp":exp});
        install_crypto_provider();
        let rs = encode(
            &Header::new(Algorithm::RS256),
            &claims,
            &EncodingKey::from_rsa_pem(RSA_KEY.as_bytes()).unwrap(),
        )
        .unwrap();
        let build = |cache: usize, blocking: usize| {
            JwtAuthenticator::builder()
                .issuer(
                    JwtIssuer::new("iss-a")
                        .audience("a1")
                        .hmac_secret(Algorithm::HS256, SECRET)
                        .public_key_pem(Algorithm::RS256, RSA_PUB),
                )
                .cache_capacity(cache)
                .blocking_verifications(blocking)
                .build()
                .unwrap()
        };
        for (cache, blocking) in [(0, 8), (0, 0), (16, 8), (16, 0)] {
            for token in [rs.clone(), hs(claims.clone())] {
                let a = build(cache, blocking);
                let (o, digests, headers) = work_of(&a, &token);
                assert!(matches!(o, Outcome::Authenticated(_)), "{o:?}");
                let case = format!("cache {cache}, blocking {blocking}, {}", &token[..20]);
                // Without a cache, the digest has no use.
                assert_eq!(digests, usize::from(cache > 0), "digests: {case}");
                assert_eq!(headers, 1, "header decodes: {case}");
                // A cache hit: one digest, no header.
                let (o, digests, headers) = work_of(&a, &token);
                assert!(matches!(o, Outcome::Authenticated(_)), "{o:?}");
                assert_eq!(
                    (digests, headers),
                    if cache > 0 { (1, 0) } else { (0, 1) },
                    "second sight: {case}"
                );
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn verify_is_total(s in "[A-Za-z0-9._=-]{0,300}") {
            let a = auth();
            let o = block(a.verify(&s));
            proptest::prop_assert!(!matches!(o, Outcome::Authenticated(_)));
        }
    }
}
